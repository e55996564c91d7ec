//! A Raft group's log on disk (openraft's `RaftLogStorage`).
//!
//! One append-only file, `log-<generation>.wal`, of checksummed records
//! (`super::frame`): the vote, a batch of entries, a truncation (entries
//! from an index on are gone), a purge (entries up to a log id are gone),
//! the committed id. Each write is synced before it counts: `save_vote`
//! and `truncate` return, and `append` calls openraft's callback, only
//! then. At open the records are replayed; a torn or damaged tail (a
//! write a crash cut short, never acknowledged) is cut off.
//!
//! Entries are kept in memory (a group's log stays short: it is purged up
//! to each snapshot). When the file holds much more than the live state,
//! it is rewritten as generation n+1 (vote, committed, purged id, live
//! entries, then a SEALED record), synced, and only then is generation n
//! removed; at open a newest generation without its SEALED record (a
//! crash mid-rewrite) is removed and the one before it is used.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, RaftLogReader, StorageIOError, Vote};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::{LogId, StorageError, TypeConfig, frame, numbered, unframe};
use crate::store::disk::{AppendFile, Disk};

/// A file this many times larger than its live state (and over
/// `REWRITE_MIN`) is rewritten, after a purge or a truncation.
const REWRITE_RATIO: u64 = 4;
const REWRITE_MIN: u64 = 1 << 20;

#[derive(Serialize, Deserialize)]
enum Rec {
    Vote(Vote<u64>),
    Entries(Vec<Entry<TypeConfig>>),
    /// Entries from this index on are gone.
    Truncate(u64),
    /// Entries up to this id are gone.
    Purge(LogId),
    Committed(Option<LogId>),
    /// A rewrite is complete.
    Sealed,
}

/// What the log holds.
#[derive(Default)]
struct State {
    vote: Option<Vote<u64>>,
    committed: Option<LogId>,
    purged: Option<LogId>,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
}

impl State {
    fn apply(&mut self, r: Rec) {
        match r {
            Rec::Vote(v) => self.vote = Some(v),
            Rec::Entries(es) => {
                for e in es {
                    self.entries.insert(e.log_id.index, e);
                }
            }
            Rec::Truncate(from) => {
                self.entries.split_off(&from);
            }
            Rec::Purge(id) => {
                self.entries = self.entries.split_off(&(id.index + 1));
                self.purged = Some(id);
            }
            Rec::Committed(c) => self.committed = c,
            Rec::Sealed => {}
        }
    }

    /// The records that rebuild this state.
    fn records(&self) -> Vec<Rec> {
        let mut out = Vec::new();
        if let Some(v) = self.vote {
            out.push(Rec::Vote(v));
        }
        if let Some(p) = self.purged {
            out.push(Rec::Purge(p));
        }
        out.push(Rec::Committed(self.committed));
        out.push(Rec::Entries(self.entries.values().cloned().collect()));
        out
    }
}

struct Inner {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    generation: u64,
    file: Box<dyn AppendFile>,
    /// Bytes in the file.
    len: u64,
    state: State,
}

/// A Raft group's durable log. Clones share it (one is the log reader).
#[derive(Clone)]
pub struct RaftLog {
    inner: Arc<Mutex<Inner>>,
}

impl Debug for RaftLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = self.inner.lock();
        f.debug_struct("RaftLog")
            .field("dir", &i.dir)
            .field("generation", &i.generation)
            .finish_non_exhaustive()
    }
}

fn path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("log-{generation}.wal"))
}

fn encode(r: &Rec) -> io::Result<Vec<u8>> {
    Ok(frame(&super::encode(r)?))
}

impl RaftLog {
    /// Opens (creating if missing) the log in `dir`, replaying what is
    /// there.
    pub fn open(disk: Arc<dyn Disk>, dir: &Path) -> io::Result<RaftLog> {
        disk.create_dir_all(dir)?;
        let mut gens = numbered(&*disk, dir, "log-", ".wal")?;
        let mut chosen = None;
        while let Some(g) = gens.first().copied() {
            let data = disk.read(&path(dir, g))?;
            let (bodies, good) = unframe(&data);
            let recs: Vec<Rec> = bodies.iter().map_while(|b| super::decode(b).ok()).collect();
            let sealed = recs.iter().any(|r| matches!(r, Rec::Sealed));
            // Generation 0 is written record by record from empty; a later
            // one counts only once its rewrite was sealed.
            if sealed || g == 0 || gens.len() == 1 {
                if good < data.len() {
                    tracing::warn!(
                        "raft log {}: cutting a torn or damaged tail of {} bytes",
                        path(dir, g).display(),
                        data.len() - good
                    );
                    disk.truncate(&path(dir, g), good as u64)?;
                }
                chosen = Some((g, recs, good as u64));
                break;
            }
            disk.remove(&path(dir, g))?;
            disk.sync_dir(dir)?;
            gens.remove(0);
        }
        let (generation, recs, len) = chosen.unwrap_or((0, Vec::new(), 0));
        let mut state = State::default();
        for r in recs {
            state.apply(r);
        }
        for old in gens.iter().skip(1) {
            disk.remove(&path(dir, *old))?;
        }
        let file = disk.open_append(&path(dir, generation))?;
        disk.sync_dir(dir)?;
        Ok(RaftLog {
            inner: Arc::new(Mutex::new(Inner {
                disk,
                dir: dir.to_owned(),
                generation,
                file,
                len,
                state,
            })),
        })
    }

    /// Writes and syncs records, then applies them to the state.
    fn write(&self, recs: Vec<Rec>) -> io::Result<()> {
        let mut i = self.inner.lock();
        let mut buf = Vec::new();
        for r in &recs {
            buf.extend(encode(r)?);
        }
        if let Err(e) = i.file.write_all(&buf).and_then(|_| i.file.sync_data()) {
            // Nothing written counts: cut back what may have gone in.
            let len = i.len;
            let _ = i.file.set_len(len);
            return Err(e);
        }
        i.len += buf.len() as u64;
        // Only a purge or a truncation shrinks what is live.
        let shrunk = recs
            .iter()
            .any(|r| matches!(r, Rec::Purge(_) | Rec::Truncate(_)));
        for r in recs {
            i.state.apply(r);
        }
        if shrunk && i.len >= REWRITE_MIN {
            // The write above is done and durable whatever happens here: a
            // failed rewrite leaves the current generation in use.
            let next = path(&i.dir, i.generation + 1);
            if let Err(e) = Self::rewrite(&mut i) {
                tracing::warn!(
                    "raft log {}: rewriting it failed ({e}); going on with the current file",
                    i.dir.display()
                );
                let _ = i.disk.remove(&next);
            }
        }
        Ok(())
    }

    /// Rewrites the file as the next generation when it is mostly dead.
    fn rewrite(i: &mut Inner) -> io::Result<()> {
        let mut buf = Vec::new();
        for r in i.state.records() {
            buf.extend(encode(&r)?);
        }
        if i.len < REWRITE_RATIO * buf.len() as u64 {
            return Ok(());
        }
        buf.extend(encode(&Rec::Sealed)?);
        let next = i.generation + 1;
        let new_path = path(&i.dir, next);
        let mut f = i.disk.open_append(&new_path)?;
        f.write_all(&buf)?;
        f.sync_data()?;
        i.disk.sync_dir(&i.dir)?;
        let old = path(&i.dir, i.generation);
        i.file = f;
        i.generation = next;
        i.len = buf.len() as u64;
        i.disk.remove(&old)?;
        i.disk.sync_dir(&i.dir)
    }

    /// The file generation in use (tests).
    pub fn generation(&self) -> u64 {
        self.inner.lock().generation
    }
}

impl RaftLogReader<TypeConfig> for RaftLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let i = self.inner.lock();
        Ok(i.state
            .entries
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for RaftLog {
    type LogReader = RaftLog;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let i = self.inner.lock();
        let last = i.state.entries.values().next_back().map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: i.state.purged,
            last_log_id: last.or(i.state.purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError> {
        self.write(vec![Rec::Vote(*vote)])
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError> {
        Ok(self.inner.lock().state.vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.write(vec![Rec::Committed(committed)])
            .map_err(|e| StorageIOError::write(&e).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.inner.lock().state.committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        match self.write(vec![Rec::Entries(entries)]) {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let err = StorageIOError::write_logs(&e).into();
                callback.log_io_completed(Err(e));
                Err(err)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.write(vec![Rec::Truncate(log_id.index)])
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.write(vec![Rec::Purge(log_id)])
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }
}
