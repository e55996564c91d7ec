//! The file operations the message store uses, behind one small trait, so
//! that tests can run the store on a simulated disk that loses unsynced
//! bytes at a crash and fails any operation on command (`sim`).
//!
//! Only the store's own files go through it; the cost is one dynamic call
//! per group-committed write, nothing per message.

use std::fmt::Debug;
use std::io;
use std::path::Path;

/// An open file the store appends to.
pub trait AppendFile: Send + Debug {
    /// Appends all of `buf` (or fails, having appended any prefix of it).
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Makes everything written so far durable (fdatasync).
    fn sync_data(&mut self) -> io::Result<()>;
    /// Cuts the file to `len` bytes.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
}

/// An open file the store reads records from.
pub trait ReadFile: Send + Sync + Debug {
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

/// A directory of files: the operations the message store needs.
pub trait Disk: Send + Sync + Debug {
    /// Creates `dir` and its parents if missing.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The names of the files in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// A whole file's contents.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Opens `path` for appending, creating it if missing.
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>>;
    /// Opens `path` for reading.
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadFile>>;
    /// Cuts `path` to `len` bytes and syncs it.
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    /// Deletes `path`.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (files created or removed) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// When a file was last written (recovered segments are dated by it);
    /// a disk that does not know says so with an error.
    fn modified(&self, _path: &Path) -> io::Result<std::time::SystemTime> {
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealDisk;

#[derive(Debug)]
struct RealFile(std::fs::File);

impl AppendFile for RealFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        io::Write::write_all(&mut self.0, buf)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}

impl ReadFile for RealFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.0, buf, offset)
    }
}

impl Disk for RealDisk {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(dir)? {
            v.push(e?.file_name().to_string_lossy().into_owned());
        }
        Ok(v)
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Box::new(RealFile(f)))
    }
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadFile>> {
        Ok(Box::new(RealFile(std::fs::File::open(path)?)))
    }
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let f = std::fs::OpenOptions::new().write(true).open(path)?;
        f.set_len(len)?;
        f.sync_all()
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }
    fn modified(&self, path: &Path) -> io::Result<std::time::SystemTime> {
        std::fs::metadata(path)?.modified()
    }
}

/// A disk that stalls on command: the real file system, except that
/// reads and writes of the files it applies to wait while its gate is
/// shut. For fault tests of code that must not wait for the disk (a
/// stalled disk must stall only what is on it).
pub mod gated {
    use super::*;
    use parking_lot::{Condvar, Mutex};
    use std::sync::Arc;

    /// Shut: reads and writes wait until it opens.
    #[derive(Debug, Default)]
    pub struct Gate {
        shut: Mutex<bool>,
        opened: Condvar,
    }

    impl Gate {
        /// Shuts (true) or opens the gate.
        pub fn set_shut(&self, shut: bool) {
            *self.shut.lock() = shut;
            self.opened.notify_all();
        }

        fn pass(&self) {
            let mut shut = self.shut.lock();
            while *shut {
                self.opened.wait(&mut shut);
            }
        }
    }

    /// The real file system, gated for the files whose path has a
    /// component named `only` (every file if None).
    #[derive(Debug)]
    pub struct GatedDisk {
        /// The gate.
        pub gate: Arc<Gate>,
        /// The path component that selects gated files.
        pub only: Option<&'static str>,
    }

    #[derive(Debug)]
    struct Gated<T>(Arc<Gate>, T);

    impl AppendFile for Gated<Box<dyn AppendFile>> {
        fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
            self.0.pass();
            self.1.write_all(buf)
        }
        fn sync_data(&mut self) -> io::Result<()> {
            self.1.sync_data()
        }
        fn set_len(&mut self, len: u64) -> io::Result<()> {
            self.1.set_len(len)
        }
    }

    impl ReadFile for Gated<Box<dyn ReadFile>> {
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            self.0.pass();
            self.1.read_exact_at(buf, offset)
        }
    }

    impl GatedDisk {
        fn applies(&self, path: &Path) -> bool {
            self.only
                .is_none_or(|c| path.components().any(|p| p.as_os_str() == c))
        }
    }

    impl Disk for GatedDisk {
        fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
            RealDisk.create_dir_all(dir)
        }
        fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
            RealDisk.list(dir)
        }
        fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
            RealDisk.read(path)
        }
        fn open_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
            let f = RealDisk.open_append(path)?;
            Ok(if self.applies(path) {
                Box::new(Gated(self.gate.clone(), f))
            } else {
                f
            })
        }
        fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadFile>> {
            let f = RealDisk.open_read(path)?;
            Ok(if self.applies(path) {
                Box::new(Gated(self.gate.clone(), f))
            } else {
                f
            })
        }
        fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
            RealDisk.truncate(path, len)
        }
        fn remove(&self, path: &Path) -> io::Result<()> {
            RealDisk.remove(path)
        }
        fn sync_dir(&self, dir: &Path) -> io::Result<()> {
            RealDisk.sync_dir(dir)
        }
        fn modified(&self, path: &Path) -> io::Result<std::time::SystemTime> {
            RealDisk.modified(path)
        }
    }
}

#[cfg(test)]
pub mod sim {
    //! A simulated disk: files live in memory, split into what was synced
    //! and what was only written. `crash` forgets everything not synced (a
    //! file created or removed since the last directory sync included, and
    //! optionally keeps a torn prefix of the unsynced bytes); any operation
    //! can be made to fail. Seeded, so a failing run replays.

    use super::*;
    use parking_lot::Mutex;
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::PathBuf;
    use std::sync::Arc;

    /// Operations a fault can be injected into.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub enum Op {
        /// `AppendFile::write_all`.
        Write,
        /// `AppendFile::sync_data`.
        Sync,
        /// `Disk::open_append` of a new file.
        Create,
        /// `Disk::remove`.
        Remove,
        /// `Disk::truncate` and `AppendFile::set_len`.
        Truncate,
        /// `Disk::sync_dir`.
        SyncDir,
    }

    #[derive(Debug, Default, Clone)]
    struct File {
        /// Bytes as the running program sees them.
        data: Vec<u8>,
        /// Bytes that survive a crash.
        synced: Vec<u8>,
    }

    #[derive(Debug, Default)]
    struct State {
        files: BTreeMap<PathBuf, File>,
        /// Names that survive a crash (as of the last directory sync).
        durable_names: BTreeSet<PathBuf>,
        /// Synced contents of files removed since the last directory sync.
        removed: BTreeMap<PathBuf, File>,
        /// Failures to inject: op → how many of the next calls fail.
        fail: BTreeMap<Op, u32>,
        /// Writes fail with "no space" while set.
        full: bool,
        /// Bytes all files together may hold: a write beyond it stores what
        /// fits and fails with "no space", as on a real full disk.
        capacity: Option<u64>,
        /// Every operation fails (the machine is "down") until `restart`.
        down: bool,
        rng: u64,
    }

    impl State {
        fn next_rand(&mut self) -> u64 {
            // xorshift64*
            let mut x = self.rng;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.rng = x;
            x.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn check(&mut self, op: Op) -> io::Result<()> {
            if self.down {
                return Err(io::Error::other("simulated machine is down"));
            }
            if let Some(n) = self.fail.get_mut(&op)
                && *n > 0
            {
                *n -= 1;
                return Err(io::Error::other(format!("simulated {op:?} failure")));
            }
            if op == Op::Write && self.full {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "simulated full disk",
                ));
            }
            Ok(())
        }
    }

    /// A simulated disk (cheap to clone: clones share the same files).
    #[derive(Debug, Clone)]
    pub struct SimDisk(Arc<Mutex<State>>);

    impl SimDisk {
        /// An empty disk whose torn writes are decided by `seed`.
        pub fn new(seed: u64) -> SimDisk {
            SimDisk(Arc::new(Mutex::new(State {
                rng: seed | 1,
                ..State::default()
            })))
        }

        /// The next `times` calls of `op` fail.
        pub fn fail(&self, op: Op, times: u32) {
            *self.0.lock().fail.entry(op).or_insert(0) += times;
        }

        /// Writes fail with ENOSPC while `full`.
        pub fn set_full(&self, full: bool) {
            self.0.lock().full = full;
        }

        /// All files together may hold at most `bytes` (None: no limit);
        /// deleting files gives the space back.
        pub fn set_capacity(&self, bytes: Option<u64>) {
            self.0.lock().capacity = bytes;
        }

        /// The machine dies: from now on every operation fails, and what was
        /// not synced is lost. `tear`: a random prefix of each file's
        /// unsynced bytes survives (a torn write), as on a real disk.
        pub fn crash(&self, tear: bool) {
            let mut st = self.0.lock();
            st.down = true;
            let names: Vec<PathBuf> = st.files.keys().cloned().collect();
            for name in names {
                let keep_name = st.durable_names.contains(&name);
                let f = st.files.remove(&name).unwrap_or_default();
                if !keep_name {
                    continue;
                }
                let mut data = f.synced.clone();
                if tear && f.data.len() > f.synced.len() && f.data.starts_with(&f.synced) {
                    let extra = f.data.len() - f.synced.len();
                    let keep = (st.next_rand() % (extra as u64 + 1)) as usize;
                    data.extend_from_slice(&f.data[f.synced.len()..f.synced.len() + keep]);
                }
                st.files.insert(
                    name,
                    File {
                        synced: data.clone(),
                        data,
                    },
                );
            }
            // Files removed without a directory sync come back.
            let removed = std::mem::take(&mut st.removed);
            for (name, f) in removed {
                if st.durable_names.contains(&name) && !st.files.contains_key(&name) {
                    st.files.insert(
                        name,
                        File {
                            data: f.synced.clone(),
                            synced: f.synced,
                        },
                    );
                }
            }
        }

        /// The machine comes back: operations work again, faults are cleared.
        pub fn restart(&self) {
            let mut st = self.0.lock();
            st.down = false;
            st.fail.clear();
            st.full = false;
            st.durable_names = st.files.keys().cloned().collect();
        }

        /// Bytes in all files (as the program sees them).
        pub fn total_bytes(&self) -> u64 {
            self.0
                .lock()
                .files
                .values()
                .map(|f| f.data.len() as u64)
                .sum()
        }
    }

    #[derive(Debug)]
    struct SimFile {
        disk: SimDisk,
        path: PathBuf,
    }

    impl AppendFile for SimFile {
        fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
            let mut st = self.disk.0.lock();
            if let Err(e) = st.check(Op::Write) {
                // A failed write may still have written part of the buffer.
                if !st.down && !buf.is_empty() {
                    let part = (st.next_rand() % buf.len() as u64) as usize;
                    if let Some(f) = st.files.get_mut(&self.path) {
                        f.data.extend_from_slice(&buf[..part]);
                    }
                }
                return Err(e);
            }
            if let Some(cap) = st.capacity {
                let used: u64 = st.files.values().map(|f| f.data.len() as u64).sum();
                let room = cap.saturating_sub(used) as usize;
                if buf.len() > room {
                    if let Some(f) = st.files.get_mut(&self.path) {
                        f.data.extend_from_slice(&buf[..room]);
                    }
                    return Err(io::Error::new(
                        io::ErrorKind::StorageFull,
                        "simulated full disk",
                    ));
                }
            }
            match st.files.get_mut(&self.path) {
                Some(f) => {
                    f.data.extend_from_slice(buf);
                    Ok(())
                }
                None => Err(io::Error::new(io::ErrorKind::NotFound, "file removed")),
            }
        }

        fn sync_data(&mut self) -> io::Result<()> {
            let mut st = self.disk.0.lock();
            st.check(Op::Sync)?;
            if let Some(f) = st.files.get_mut(&self.path) {
                f.synced = f.data.clone();
            }
            Ok(())
        }

        fn set_len(&mut self, len: u64) -> io::Result<()> {
            let mut st = self.disk.0.lock();
            st.check(Op::Truncate)?;
            if let Some(f) = st.files.get_mut(&self.path) {
                f.data.truncate(len as usize);
                if f.synced.len() > len as usize {
                    f.synced.truncate(len as usize);
                }
            }
            Ok(())
        }
    }

    #[derive(Debug)]
    struct SimReader {
        disk: SimDisk,
        path: PathBuf,
    }

    impl ReadFile for SimReader {
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            let st = self.disk.0.lock();
            let f = st
                .files
                .get(&self.path)
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "file removed"))?;
            let at = offset as usize;
            let end = at + buf.len();
            if end > f.data.len() {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short read"));
            }
            buf.copy_from_slice(&f.data[at..end]);
            Ok(())
        }
    }

    impl Disk for SimDisk {
        fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
            let st = self.0.lock();
            if st.down {
                return Err(io::Error::other("simulated machine is down"));
            }
            Ok(())
        }

        fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
            let st = self.0.lock();
            Ok(st
                .files
                .keys()
                .filter(|p| p.parent() == Some(dir))
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect())
        }

        fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
            let st = self.0.lock();
            st.files
                .get(path)
                .map(|f| f.data.clone())
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))
        }

        fn open_append(&self, path: &Path) -> io::Result<Box<dyn AppendFile>> {
            let mut st = self.0.lock();
            if !st.files.contains_key(path) {
                st.check(Op::Create)?;
                st.files.insert(path.to_owned(), File::default());
            } else if st.down {
                return Err(io::Error::other("simulated machine is down"));
            }
            Ok(Box::new(SimFile {
                disk: self.clone(),
                path: path.to_owned(),
            }))
        }

        fn open_read(&self, path: &Path) -> io::Result<Box<dyn ReadFile>> {
            let st = self.0.lock();
            if !st.files.contains_key(path) {
                return Err(io::Error::new(io::ErrorKind::NotFound, "no such file"));
            }
            Ok(Box::new(SimReader {
                disk: self.clone(),
                path: path.to_owned(),
            }))
        }

        fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
            let mut st = self.0.lock();
            st.check(Op::Truncate)?;
            let f = st
                .files
                .get_mut(path)
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))?;
            f.data.truncate(len as usize);
            f.synced = f.data.clone();
            Ok(())
        }

        fn remove(&self, path: &Path) -> io::Result<()> {
            let mut st = self.0.lock();
            st.check(Op::Remove)?;
            let f = st
                .files
                .remove(path)
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))?;
            st.removed.insert(path.to_owned(), f);
            Ok(())
        }

        fn sync_dir(&self, dir: &Path) -> io::Result<()> {
            let mut st = self.0.lock();
            st.check(Op::SyncDir)?;
            let in_dir: Vec<PathBuf> = st
                .files
                .keys()
                .filter(|p| p.parent() == Some(dir))
                .cloned()
                .collect();
            st.durable_names.retain(|p| p.parent() != Some(dir));
            st.durable_names.extend(in_dir);
            st.removed.retain(|p, _| p.parent() != Some(dir));
            Ok(())
        }
    }
}
