//! Server-side offset tracking for named stream consumers (as LavinMQ has
//! it over AMQP 0-9-1): a consumer that asks for it by
//! `x-stream-automatic-offset-tracking: true` (or `x-stream-offset: null`)
//! resumes, under the same consumer tag, after the last message it acked.
//!
//! The positions are kept in memory and written, at most every
//! `FLUSH_DELAY_MS` while they change, to a small file in the stream's
//! directory: each write is a whole new generation (`offsets.<n>`, with a
//! CRC), synced before the previous one is removed, so a crash leaves the
//! last complete generation. Acks of the last moments before a crash may
//! thus be forgotten: the consumer then gets those messages again, never
//! loses one.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::store::disk::Disk;

/// How long acks gather before their positions are written.
pub const FLUSH_DELAY_MS: u64 = 200;

const MAGIC: &[u8; 4] = b"WOF1";

/// The tracked positions of one stream.
#[derive(Debug)]
pub struct Tracked {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    /// Consumer tag -> the next offset it will read.
    pub next: HashMap<String, u64>,
    /// Changed since the last write.
    pub dirty: bool,
    /// A write is scheduled.
    pub scheduled: bool,
    generation: u64,
}

impl Tracked {
    /// Reads the newest complete generation in `dir` (none: nothing tracked).
    pub fn open(disk: Arc<dyn Disk>, dir: &Path) -> Tracked {
        let mut gens: Vec<u64> = disk
            .list(dir)
            .unwrap_or_default()
            .iter()
            .filter_map(|n| n.strip_prefix("offsets.")?.parse().ok())
            .collect();
        gens.sort_unstable();
        let mut t = Tracked {
            disk,
            dir: dir.to_owned(),
            next: HashMap::new(),
            dirty: false,
            scheduled: false,
            generation: gens.last().copied().unwrap_or(0),
        };
        for g in gens.iter().rev() {
            let read = t.disk.read(&t.path(*g)).ok().and_then(|b| decode(&b));
            if let Some(map) = read {
                t.next = map;
                break;
            }
            tracing::warn!(dir = %dir.display(), "stream offsets generation {g} unreadable; trying an older one");
        }
        t
    }

    fn path(&self, generation: u64) -> PathBuf {
        self.dir.join(format!("offsets.{generation}"))
    }

    /// What to write next: the bytes and where, and what to remove after.
    pub fn snapshot(&mut self) -> Snapshot {
        self.dirty = false;
        self.generation += 1;
        Snapshot {
            disk: self.disk.clone(),
            path: self.path(self.generation),
            older: (self.generation > 1).then(|| self.path(self.generation - 1)),
            dir: self.dir.clone(),
            bytes: encode(&self.next),
        }
    }
}

/// A generation to write (off the queue's locks).
#[derive(Debug)]
pub struct Snapshot {
    disk: Arc<dyn Disk>,
    path: PathBuf,
    older: Option<PathBuf>,
    dir: PathBuf,
    bytes: Vec<u8>,
}

impl Snapshot {
    /// Writes and syncs the new generation, then removes the previous one.
    pub fn write(self) -> io::Result<()> {
        let mut f = self.disk.open_append(&self.path)?;
        let done = f.write_all(&self.bytes).and_then(|()| f.sync_data());
        if let Err(e) = done {
            let _ = self.disk.remove(&self.path);
            return Err(e);
        }
        self.disk.sync_dir(&self.dir)?;
        if let Some(old) = self.older {
            match self.disk.remove(&old) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }
}

fn encode(map: &HashMap<String, u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + map.len() * 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(map.len() as u32).to_be_bytes());
    for (tag, next) in map {
        let tag = &tag.as_bytes()[..tag.len().min(255)];
        out.push(tag.len() as u8);
        out.extend_from_slice(tag);
        out.extend_from_slice(&next.to_be_bytes());
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

fn decode(b: &[u8]) -> Option<HashMap<String, u64>> {
    let (body, crc) = b.split_at_checked(b.len().checked_sub(4)?)?;
    if crc32fast::hash(body) != u32::from_be_bytes(crc.try_into().ok()?) {
        return None;
    }
    let rest = body.strip_prefix(MAGIC)?;
    let (n, mut rest) = rest.split_at_checked(4)?;
    let n = u32::from_be_bytes(n.try_into().ok()?);
    let mut map = HashMap::new();
    for _ in 0..n {
        let (&len, r) = rest.split_first()?;
        let (tag, r) = r.split_at_checked(len as usize)?;
        let (next, r) = r.split_at_checked(8)?;
        map.insert(
            String::from_utf8_lossy(tag).into_owned(),
            u64::from_be_bytes(next.try_into().ok()?),
        );
        rest = r;
    }
    rest.is_empty().then_some(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::disk::sim::{Op, SimDisk};

    #[test]
    fn positions_survive_a_crash_as_their_last_complete_generation() {
        let disk = SimDisk::new(7);
        let d: Arc<dyn Disk> = Arc::new(disk.clone());
        let dir = Path::new("/s");
        d.create_dir_all(dir).unwrap();
        let mut t = Tracked::open(d.clone(), dir);
        assert!(t.next.is_empty());
        t.next.insert("a".into(), 10);
        t.next.insert("b".into(), 3);
        t.snapshot().write().unwrap();
        t.next.insert("a".into(), 20);
        // This generation's write fails: the previous one stays.
        disk.fail(Op::Write, 1);
        assert!(t.snapshot().write().is_err());
        disk.crash(true);
        disk.restart();
        let t = Tracked::open(d.clone(), dir);
        assert_eq!(t.next.get("a"), Some(&10));
        assert_eq!(t.next.get("b"), Some(&3));
        let mut t = t;
        t.next.insert("a".into(), 30);
        t.snapshot().write().unwrap();
        let t = Tracked::open(d, dir);
        assert_eq!(t.next.get("a"), Some(&30));
    }

    #[test]
    fn a_damaged_generation_is_not_believed() {
        let mut m = HashMap::new();
        m.insert("tag".to_owned(), 5u64);
        let mut b = encode(&m);
        assert_eq!(decode(&b), Some(m));
        b[6] ^= 1;
        assert_eq!(decode(&b), None);
        assert_eq!(decode(&b[..3]), None);
    }
}
