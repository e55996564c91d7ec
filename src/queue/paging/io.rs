//! The paging I/O threads: every read and write of a queue's page files,
//! the deletion of page files, and the reads of recovered messages from
//! the message store's segments run here, never on a tokio worker and
//! never under a queue's lock.
//!
//! A ready list sends its jobs to one thread (chosen by the list's id), so
//! its writes, reads and deletions run in the order it sent them. A write
//! hands its buffer over and the list goes on at once: until the thread
//! has written it, the list reads those records from the buffer itself
//! (`PageWrite`). A read calls back with the decoded messages; the queue
//! then locks itself, installs them and delivers (`Queue::page_in_done`).
//!
//! Bytes handed over and not yet written are counted (`backlog`): while
//! they pass `BACKLOG_MAX`, publishing connections are not read, as for the
//! message store's writer, so a disk slower than the publishers turns into
//! back-pressure rather than memory.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::message::Message;
use crate::store::MessageStore;
use crate::store::disk::{AppendFile, Disk, ReadFile};
use crate::store::record::{self, Next, Record};

/// Threads doing paging I/O.
const THREADS: usize = 2;

/// Bytes handed to the paging threads and not yet written beyond which
/// publishers are held back.
pub const BACKLOG_MAX: usize = 64 << 20;

/// Bytes handed to the paging threads and not yet written.
static BACKLOG: AtomicUsize = AtomicUsize::new(0);

/// Whether publishers should pause for the paging threads to catch up.
pub fn is_backlogged() -> bool {
    BACKLOG.load(Ordering::Relaxed) > BACKLOG_MAX
}

/// Bytes waiting for the paging threads.
pub fn backlog_bytes() -> usize {
    BACKLOG.load(Ordering::Relaxed)
}

/// A buffer of page-file records handed to a paging thread: it holds the
/// data until the thread has written it (then frees it), or keeps it if
/// the write failed, so the records can always be read back from here
/// meanwhile.
#[derive(Debug)]
pub struct PageWrite {
    /// The page file (chunk) it goes to.
    pub chunk: u32,
    /// Offset of the buffer in the page file.
    pub at: u64,
    /// Its length.
    pub len: u64,
    state: Mutex<WriteState>,
}

#[derive(Debug)]
enum WriteState {
    Pending(Bytes),
    Written,
    Failed(Bytes),
}

impl PageWrite {
    /// The record at `offset..offset + len` of the page file, if this
    /// buffer holds it and has not been written out (or failed to be).
    pub fn record(&self, offset: u64, len: u64) -> Option<Bytes> {
        if offset < self.at || offset + len > self.at + self.len {
            return None;
        }
        let from = (offset - self.at) as usize;
        match &*self.state.lock() {
            WriteState::Pending(b) | WriteState::Failed(b) => {
                Some(b.slice(from..from + len as usize))
            }
            WriteState::Written => None,
        }
    }

    /// Written out (its memory is freed).
    pub fn is_written(&self) -> bool {
        matches!(*self.state.lock(), WriteState::Written)
    }

    /// The write failed (the buffer stays the records' only copy).
    pub fn has_failed(&self) -> bool {
        matches!(*self.state.lock(), WriteState::Failed(_))
    }
}

/// Where a read-back run is read from.
pub enum Source {
    /// A page file.
    Page(Arc<dyn Disk>, PathBuf),
    /// A segment of the message store.
    Store(Arc<MessageStore>, u32),
}

/// What a read brought back: one message (or `None`: unreadable) per
/// record asked for, in order, and the error of the run's read if it failed.
pub struct ReadDone {
    /// The list that asked.
    pub list: u64,
    /// Its request number.
    pub ticket: u64,
    /// One per record asked for.
    pub msgs: Vec<Option<Message>>,
    /// The run's read failed (each record was then read on its own).
    pub err: Option<std::io::Error>,
}

/// Where a completed read goes.
pub type OnRead = Arc<dyn Fn(ReadDone) + Send + Sync>;

enum Job {
    Write {
        disk: Arc<dyn Disk>,
        path: PathBuf,
        buf: Arc<PageWrite>,
    },
    Read(ReadRequest),
    Delete {
        disk: Arc<dyn Disk>,
        path: PathBuf,
    },
}

struct Pool {
    senders: Vec<mpsc::Sender<Job>>,
}

static POOL: OnceLock<Pool> = OnceLock::new();

fn pool() -> &'static Pool {
    POOL.get_or_init(|| {
        let senders = (0..THREADS)
            .map(|i| {
                let (tx, rx) = mpsc::channel();
                std::thread::Builder::new()
                    .name(format!("warren-page-io-{i}"))
                    .spawn(move || {
                        crate::store::supervised("paging I/O", move || run(rx));
                    })
                    .expect("cannot start a paging I/O thread");
                tx
            })
            .collect();
        Pool { senders }
    })
}

fn send(list: u64, job: Job) {
    let p = pool();
    let tx = &p.senders[(list as usize) % p.senders.len()];
    // The threads never stop (a panic aborts the process).
    let _ = tx.send(job);
}

/// Hands `buf` to list `list`'s paging thread, to be appended to `path`.
pub fn write(
    list: u64,
    disk: Arc<dyn Disk>,
    path: PathBuf,
    chunk: u32,
    at: u64,
    data: Bytes,
) -> Arc<PageWrite> {
    let buf = Arc::new(PageWrite {
        chunk,
        at,
        len: data.len() as u64,
        state: Mutex::new(WriteState::Pending(data)),
    });
    BACKLOG.fetch_add(buf.len as usize, Ordering::Relaxed);
    send(
        list,
        Job::Write {
            disk,
            path,
            buf: buf.clone(),
        },
    );
    buf
}

/// A read back for a paging thread: `records` (offset, length), all
/// within `first..end` of `source`; `done` gets them.
pub struct ReadRequest {
    /// Where the records are.
    pub source: Source,
    /// The span the run covers.
    pub first: u32,
    /// Its end.
    pub end: u64,
    /// Each record's offset and length.
    pub records: Vec<(u32, u32)>,
    /// The list that asks (its thread is chosen by it).
    pub list: u64,
    /// The list's request number.
    pub ticket: u64,
    /// Called with the result on the paging thread.
    pub done: OnRead,
}

/// Hands `req` to its list's paging thread.
pub fn read(req: ReadRequest) {
    send(req.list, Job::Read(req));
}

/// Deletes page file `path` (after the list's earlier jobs).
pub fn delete(list: u64, disk: Arc<dyn Disk>, path: PathBuf) {
    send(list, Job::Delete { disk, path });
}

/// Open page files of one thread.
#[derive(Default)]
struct Files {
    append: HashMap<PathBuf, Box<dyn AppendFile>>,
    read: HashMap<PathBuf, Arc<dyn ReadFile>>,
    /// Page files a write failed on: later writes to them fail too (their
    /// offsets would no longer match), so their records stay in memory.
    broken: HashSet<PathBuf>,
}

fn run(rx: mpsc::Receiver<Job>) {
    let mut files = Files::default();
    while let Ok(job) = rx.recv() {
        match job {
            Job::Write { disk, path, buf } => files.write(&*disk, &path, &buf),
            Job::Read(r) => {
                let (msgs, err) = files.read_run(&r.source, r.first, r.end, &r.records);
                (r.done)(ReadDone {
                    list: r.list,
                    ticket: r.ticket,
                    msgs,
                    err,
                });
            }
            Job::Delete { disk, path } => {
                files.append.remove(&path);
                files.read.remove(&path);
                files.broken.remove(&path);
                if let Err(e) = disk.remove(&path)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!("cannot delete page file {}: {e}", path.display());
                }
            }
        }
    }
}

impl Files {
    fn write(&mut self, disk: &dyn Disk, path: &Path, buf: &PageWrite) {
        let data = match &*buf.state.lock() {
            WriteState::Pending(b) => b.clone(),
            _ => return,
        };
        let result = self.append_to(disk, path, &data);
        BACKLOG.fetch_sub(buf.len as usize, Ordering::Relaxed);
        let mut st = buf.state.lock();
        *st = match result {
            Ok(()) => WriteState::Written,
            Err(e) => {
                tracing::error!(
                    "cannot page queue messages to {}: {e}; keeping them in memory",
                    path.display()
                );
                // A partly written file is not written again.
                self.append.remove(path);
                self.broken.insert(path.to_owned());
                WriteState::Failed(data)
            }
        };
    }

    fn append_to(&mut self, disk: &dyn Disk, path: &Path, data: &[u8]) -> std::io::Result<()> {
        if self.broken.contains(path) {
            return Err(std::io::Error::other(
                "an earlier write to this page file failed",
            ));
        }
        if !self.append.contains_key(path) {
            if let Some(dir) = path.parent() {
                disk.create_dir_all(dir)?;
            }
            let f = disk.open_append(path)?;
            self.append.insert(path.to_owned(), f);
        }
        match self.append.get_mut(path) {
            Some(f) => f.write_all(data),
            None => Err(std::io::Error::other("page file not open")),
        }
    }

    fn read_at(&mut self, source: &Source, offset: u32, len: usize) -> std::io::Result<Bytes> {
        match source {
            Source::Store(store, seg) => store.read_span(*seg, offset, len),
            Source::Page(disk, path) => {
                let f = match self.read.get(path) {
                    Some(f) => f.clone(),
                    None => {
                        let f: Arc<dyn ReadFile> = Arc::from(disk.open_read(path)?);
                        self.read.insert(path.clone(), f.clone());
                        f
                    }
                };
                let mut buf = vec![0u8; len];
                f.read_exact_at(&mut buf, u64::from(offset))?;
                Ok(Bytes::from(buf))
            }
        }
    }

    /// Reads a run with one read; when that fails, each record on its own,
    /// so a bad spot costs only the records on it.
    fn read_run(
        &mut self,
        source: &Source,
        first: u32,
        end: u64,
        records: &[(u32, u32)],
    ) -> (Vec<Option<Message>>, Option<std::io::Error>) {
        let data = self.read_at(source, first, (end - u64::from(first)) as usize);
        let msgs = records
            .iter()
            .map(|&(offset, len)| match &data {
                Ok(d) => decode_message(
                    &d.slice((offset - first) as usize..(offset - first + len) as usize),
                ),
                Err(_) => self
                    .read_at(source, offset, len as usize)
                    .ok()
                    .and_then(|d| decode_message(&d)),
            })
            .collect();
        (msgs, data.err())
    }
}

/// The message in an enqueue record.
pub fn decode_message(data: &Bytes) -> Option<Message> {
    match record::next(data) {
        Next::Record(
            Record::Enqueue {
                exchange,
                routing_key,
                header,
                body,
                ..
            },
            _,
        ) => Some(Message::new(
            &exchange,
            &routing_key,
            &header,
            Bytes::copy_from_slice(&body),
        )),
        _ => None,
    }
}
