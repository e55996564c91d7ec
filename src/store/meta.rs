//! Durable definitions on disk: a snapshot in RabbitMQ's definitions format
//! (`definitions.json`) plus an append-only log of changes since
//! (`definitions.log`, one JSON object per line, synced per change). At start
//! the broker reads both (`read`), applies them, and writes its state back
//! as a fresh snapshot with an empty log (`compact_and_open`). This module
//! only appends and reads operations; it knows nothing of the broker. Each change costs one small append, so declaring 100,000
//! durable queues stays linear.

use std::fs::{self, File, OpenOptions};
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::schema::{
    BindingDef, Definitions, ExchangeDef, PermissionDef, PolicyDef, QueueDef, UserDef,
};

/// One change to durable definitions.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetaOp {
    /// A user was created or changed.
    PutUser(UserDef),
    /// A user was deleted.
    DeleteUser(String),
    /// A vhost was created.
    PutVhost(String),
    /// A vhost was deleted.
    DeleteVhost(String),
    /// Permissions were set.
    SetPermissions(PermissionDef),
    /// Permissions were cleared (user, vhost).
    ClearPermissions(String, String),
    /// A policy was set.
    PutPolicy(PolicyDef),
    /// A policy was deleted (vhost, name).
    DeletePolicy(String, String),
    /// A durable exchange was declared.
    DeclareExchange(ExchangeDef),
    /// A durable exchange was deleted (vhost, name).
    DeleteExchange(String, String),
    /// A durable queue was declared.
    DeclareQueue(QueueDef),
    /// A durable queue was deleted (vhost, name).
    DeleteQueue(String, String),
    /// A durable binding was added.
    Bind(BindingDef),
    /// A durable binding was removed.
    Unbind(BindingDef),
}

/// The definitions log: changes are appended to a buffer that one writer
/// thread writes and syncs for everyone at once (group commit), so many
/// clients declaring durable queues at once cost one fsync per batch and
/// no tokio worker ever waits for the disk. Whoever must not answer before
/// a change is durable waits for `settled_seq` to reach the change's
/// sequence number and then asks `failure` whether it was written:
/// connections gate their outbound bytes on it (`ConnectionHandle::write`)
/// and close with 541 INTERNAL_ERROR when a change of theirs failed; the
/// HTTP API answers 500 then. A change whose write fails (a full disk) is
/// cut back from the file and undone in memory (`set_undo`).
pub struct MetaLog {
    path: PathBuf,
    pending: Mutex<MetaPending>,
    wake: parking_lot::Condvar,
    /// The last change settled: written and synced, or failed and undone.
    settled: tokio::sync::watch::Sender<u64>,
    /// Changes whose write failed (ranges of sequence numbers, most recent
    /// last, at most `FAILED_KEPT`), with the error.
    failed: Mutex<std::collections::VecDeque<Failed>>,
    /// Undoes a change whose write failed (set by the broker).
    undo: std::sync::OnceLock<Box<UndoFn>>,
    stopping: std::sync::atomic::AtomicBool,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for MetaLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaLog")
            .field("path", &self.path)
            .field("settled", &*self.settled.borrow())
            .finish_non_exhaustive()
    }
}

/// Undoes a change (first argument) whose write failed, given what it
/// replaced (second).
type UndoFn = dyn Fn(MetaOp, Option<MetaOp>) + Send + Sync;

/// A change and what it replaced (the change that puts that back).
type Change = (MetaOp, Option<MetaOp>);

/// What a client whose change could not be written is told (541 over
/// AMQP, 500 over HTTP).
pub fn refusal(error: &str) -> String {
    format!("cannot write definitions to disk ({error}); the change was undone")
}

/// A batch of changes the log could not write.
#[derive(Debug, Clone)]
struct Failed {
    first: u64,
    last: u64,
    error: String,
}

/// How many failed batches are remembered for the connections and HTTP
/// requests still waiting on them.
const FAILED_KEPT: usize = 4096;

#[derive(Debug, Default)]
struct MetaPending {
    buf: Vec<u8>,
    seq: u64,
    /// The changes in `buf`, each with what it replaced (for undoing it).
    ops: Vec<Change>,
}

tokio::task_local! {
    /// The changes appended by the task running one HTTP request (first,
    /// last), so that its answer reports its own changes' failure only.
    pub static REQUEST_CHANGES: std::sync::Arc<Mutex<(u64, u64)>>;
}

thread_local! {
    /// The first and last change this thread appended since
    /// `take_appended` ((0, 0): none).
    static APPENDED: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
    /// Set while a failed change is undone: what the undo does is not logged
    /// (the change it reverts never reached the disk).
    static UNDOING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The first and last definitions change this thread appended since the
/// last `take_appended` ((0, 0): none). Connections raise their outbound
/// gate to the last one before writing a reply, and check the range for a
/// failed write.
pub fn appended_on_this_thread() -> (u64, u64) {
    APPENDED.with(std::cell::Cell::get)
}

/// Forgets what this thread appended (a connection, after each frame).
pub fn take_appended() -> (u64, u64) {
    APPENDED.with(|c| c.replace((0, 0)))
}

impl MetaLog {
    fn start(file: File, path: PathBuf) -> std::io::Result<std::sync::Arc<MetaLog>> {
        let (settled, _) = tokio::sync::watch::channel(0);
        let log = std::sync::Arc::new(MetaLog {
            path,
            pending: Mutex::new(MetaPending::default()),
            wake: parking_lot::Condvar::new(),
            settled,
            failed: Mutex::new(std::collections::VecDeque::new()),
            undo: std::sync::OnceLock::new(),
            stopping: Default::default(),
            writer: Mutex::new(None),
        });
        let run = log.clone();
        let handle = std::thread::Builder::new()
            .name("warren-definitions".into())
            .spawn(move || {
                super::supervised("definitions log writer", move || run.run_writer(file))
            })?;
        *log.writer.lock() = Some(handle);
        Ok(log)
    }

    /// Appends a change; returns its sequence number (settled once
    /// `settled_seq` reaches it; `failure` then says whether it was
    /// written). Returns 0 and appends nothing while a failed change is
    /// being undone.
    pub fn record(&self, op: &MetaOp) -> u64 {
        self.record_replacing(op.clone(), None)
    }

    /// `record` for a change that replaced or removed `prior` (the change
    /// that would put it back), so that the change can be undone exactly if
    /// its write fails.
    pub fn record_replacing(&self, op: MetaOp, prior: Option<MetaOp>) -> u64 {
        if UNDOING.with(std::cell::Cell::get) {
            return 0;
        }
        let mut line = match serde_json::to_vec(&op) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("cannot encode definitions change {op:?}: {e}");
                return 0;
            }
        };
        line.push(b'\n');
        let mut p = self.pending.lock();
        p.buf.extend_from_slice(&line);
        p.ops.push((op, prior));
        p.seq += 1;
        let seq = p.seq;
        drop(p);
        APPENDED.with(|c| {
            let (first, _) = c.get();
            c.set((if first == 0 { seq } else { first }, seq));
        });
        let _ = REQUEST_CHANGES.try_with(|r| {
            let mut r = r.lock();
            *r = (if r.0 == 0 { seq } else { r.0 }, seq);
        });
        self.wake.notify_one();
        seq
    }

    /// Sets what undoes a change whose write failed: called with the change
    /// and what it replaced, on the log's writer thread, with logging off.
    pub fn set_undo(&self, undo: impl Fn(MetaOp, Option<MetaOp>) + Send + Sync + 'static) {
        let _ = self.undo.set(Box::new(undo));
    }

    /// The last change appended.
    pub fn appended_seq(&self) -> u64 {
        self.pending.lock().seq
    }

    /// The last change settled: on disk, or failed and undone.
    pub fn settled_seq(&self) -> u64 {
        *self.settled.borrow()
    }

    /// Notified whenever `settled_seq` advances.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.settled.subscribe()
    }

    /// Why a change numbered in `first..=last` could not be written, if one
    /// could not (only meaningful once they are settled).
    pub fn failure(&self, first: u64, last: u64) -> Option<String> {
        let failed = self.failed.lock();
        failed
            .iter()
            .rev()
            .find(|f| f.first <= last && first <= f.last)
            .map(|f| f.error.clone())
    }

    /// Waits until changes up to `seq` are settled.
    pub async fn wait_settled(&self, seq: u64) {
        let mut rx = self.settled.subscribe();
        while *rx.borrow_and_update() < seq {
            if rx.changed().await.is_err() {
                break;
            }
        }
    }

    /// Writes and syncs what is pending, then stops the writer.
    pub fn close(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Release);
        {
            let _p = self.pending.lock();
            self.wake.notify_one();
        }
        if let Some(h) = self.writer.lock().take() {
            let _ = h.join();
        }
    }

    fn run_writer(&self, mut file: File) {
        let mut written = file.metadata().map_or(0, |m| m.len());
        while let Some((buf, seq, ops)) = self.next_batch() {
            let first = seq + 1 - ops.len() as u64;
            if let Err(e) = file.write_all(&buf) {
                self.fail(&mut file, written, first, seq, ops, &e);
                continue;
            }
            // A failed sync leaves unknown what is on disk: stop, as the
            // message store does, so that recovery runs from what is there.
            if let Err(e) = file.sync_data() {
                tracing::error!(
                    "cannot sync {} ({e}): stopping warren so that recovery runs from what is on disk",
                    self.path.display()
                );
                std::process::abort();
            }
            written += buf.len() as u64;
            self.settled.send_replace(seq);
        }
    }

    /// Takes what is pending; None once the log is closed and empty.
    fn next_batch(&self) -> Option<(Vec<u8>, u64, Vec<Change>)> {
        let mut p = self.pending.lock();
        while p.buf.is_empty() {
            if self.stopping.load(std::sync::atomic::Ordering::Acquire) {
                return None;
            }
            self.wake
                .wait_for(&mut p, std::time::Duration::from_millis(100));
        }
        Some((
            std::mem::take(&mut p.buf),
            p.seq,
            std::mem::take(&mut p.ops),
        ))
    }

    /// A batch could not be written: cut the file back to its last whole
    /// change, undo the batch's changes newest first, and settle them as
    /// failed, so that whoever made them is told (541 over AMQP, 500 over
    /// HTTP) instead of being answered as if they were on disk.
    fn fail(
        &self,
        file: &mut File,
        written: u64,
        first: u64,
        last: u64,
        ops: Vec<Change>,
        e: &std::io::Error,
    ) {
        tracing::error!(
            "cannot write {}: {e}; {} definitions change(s) refused and undone",
            self.path.display(),
            ops.len()
        );
        // Cut back what part of the batch reached the file, if any, and
        // put the write position back there (the file is not opened in
        // append mode: cutting alone would leave a hole of zeros before the
        // next batch, and an unreadable log).
        let grew = file.metadata().map_or(true, |m| m.len() != written);
        let cut = if grew {
            file.set_len(written)
                .and_then(|()| file.sync_data())
                .and_then(|()| file.seek(std::io::SeekFrom::Start(written)).map(drop))
        } else {
            file.seek(std::io::SeekFrom::Start(written)).map(drop)
        };
        if let Err(e) = cut {
            tracing::error!(
                "cannot cut {} back after a failed write ({e}): stopping warren so that recovery runs from what is on disk",
                self.path.display()
            );
            std::process::abort();
        }
        if let Some(undo) = self.undo.get() {
            UNDOING.with(|u| u.set(true));
            for (op, prior) in ops.into_iter().rev() {
                undo(op, prior);
            }
            UNDOING.with(|u| u.set(false));
        }
        let mut failed = self.failed.lock();
        if failed.len() == FAILED_KEPT {
            failed.pop_front();
        }
        failed.push_back(Failed {
            first,
            last,
            error: e.to_string(),
        });
        drop(failed);
        self.settled.send_replace(last);
    }
}

fn snapshot_path(dir: &Path) -> PathBuf {
    dir.join("definitions.json")
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join("definitions.log")
}

/// Whether `dir` holds durable definitions from an earlier run.
pub fn exists(dir: &Path) -> bool {
    snapshot_path(dir).exists() || log_path(dir).exists()
}

/// What an earlier run left: the snapshot of definitions (if there was
/// one) and the changes logged after it, in order. The broker applies them
/// (`broker::definitions`); the store only reads and writes them.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The last snapshot.
    pub snapshot: Option<Definitions>,
    /// Changes since the snapshot, oldest first.
    pub changes: Vec<MetaOp>,
}

/// Reads the snapshot and the log. A snapshot or a log line that cannot be
/// read is an error naming the file: the broker must not start without it
/// and then overwrite it with less (only a last log line without its
/// newline, a write torn by a crash, is skipped).
pub fn read(dir: &Path) -> Result<Recovered, String> {
    let mut recovered = Recovered::default();
    let snap = snapshot_path(dir);
    if snap.exists() {
        let text = fs::read_to_string(&snap).map_err(|e| format!("{}: {e}", snap.display()))?;
        recovered.snapshot = Some(crate::schema::parse(&text).map_err(|e| unreadable(&snap, &e))?);
    }
    let log = log_path(dir);
    if log.exists() {
        let text = fs::read_to_string(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        recovered.changes = log_ops(&text).map_err(|e| unreadable(&log, &e))?;
    }
    Ok(recovered)
}

fn unreadable(path: &Path, why: &str) -> String {
    format!(
        "{} cannot be read ({why}); warren will not start without it and has left it \
         untouched: repair or restore the file, or move it away to start without it",
        path.display()
    )
}

/// The changes in a log's text. Only the last line may be unreadable, and
/// only if it lacks its newline (the append a crash interrupted).
fn log_ops(text: &str) -> Result<Vec<MetaOp>, String> {
    let torn_tail = !text.is_empty() && !text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let mut ops = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<MetaOp>(line) {
            Ok(op) => ops.push(op),
            Err(_) if torn_tail && i + 1 == lines.len() => {
                tracing::warn!("definitions log: skipping its unfinished last line (a torn write)");
            }
            Err(e) => return Err(format!("line {}: {e}", i + 1)),
        }
    }
    Ok(ops)
}

/// Options for files only the broker's user may read (0600): the
/// definitions hold password hashes.
fn private_file() -> OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = OpenOptions::new();
    o.mode(0o600);
    o
}

/// Writes `defs` as the fresh snapshot and starts an empty log.
pub fn compact_and_open(
    dir: &Path,
    defs: &Definitions,
) -> std::io::Result<std::sync::Arc<MetaLog>> {
    fs::create_dir_all(dir)?;
    let json = serde_json::to_vec_pretty(defs).map_err(std::io::Error::other)?;
    let tmp = dir.join("definitions.json.tmp");
    {
        let mut f = private_file()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, snapshot_path(dir))?;
    // The new snapshot's name must be durable before the log it replaces
    // is emptied: a crash in between would otherwise lose both.
    File::open(dir)?.sync_all()?;
    let path = log_path(dir);
    let file = private_file()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)?;
    file.sync_all()?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    MetaLog::start(file, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_unfinished_last_log_line_may_be_unreadable() {
        let good = serde_json::to_string(&MetaOp::PutVhost("v".into())).unwrap();
        assert_eq!(log_ops(&format!("{good}\n{good}\n")).unwrap().len(), 2);
        assert_eq!(log_ops(&format!("{good}\n{{\"put_vh")).unwrap().len(), 1);
        assert!(log_ops(&format!("{good}\n{{\"put_vh\n{good}\n")).is_err());
        assert!(log_ops(&format!("{good}\nnot json\n")).is_err());
    }

    fn queue(name: &str) -> QueueDef {
        QueueDef {
            name: name.into(),
            vhost: "/".into(),
            durable: true,
            auto_delete: false,
            arguments: Default::default(),
        }
    }

    /// The log on its own, no broker: what is appended after a snapshot is
    /// read back in order, behind that snapshot, and a new snapshot empties
    /// the log.
    #[test]
    fn logged_changes_are_read_back_in_order_after_their_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!exists(dir.path()));
        let mut snapshot = Definitions::default();
        snapshot.queues.push(queue("kept"));
        let log = compact_and_open(dir.path(), &snapshot).unwrap();
        assert!(exists(dir.path()));
        let first = log.record(&MetaOp::DeclareQueue(queue("q1")));
        let second = log.record(&MetaOp::DeleteQueue("/".into(), "kept".into()));
        assert_eq!(second, first + 1);
        log.close();
        assert_eq!(log.settled_seq(), second);
        assert_eq!(log.failure(first, second), None);

        let read_back = read(dir.path()).unwrap();
        assert_eq!(read_back.snapshot, Some(snapshot));
        let names: Vec<String> = read_back
            .changes
            .iter()
            .map(|op| match op {
                MetaOp::DeclareQueue(q) => format!("declare {}", q.name),
                MetaOp::DeleteQueue(_, n) => format!("delete {n}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(names, ["declare q1", "delete kept"]);

        let empty = Definitions::default();
        compact_and_open(dir.path(), &empty).unwrap().close();
        let after = read(dir.path()).unwrap();
        assert_eq!(after.snapshot, Some(empty));
        assert!(after.changes.is_empty());
    }

    #[test]
    fn an_unreadable_snapshot_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("definitions.json"), "{not json").unwrap();
        let e = read(dir.path()).unwrap_err();
        assert!(e.contains("definitions.json"), "{e}");
    }

    /// A write that fails (here: /dev/full, "no space left on device") is
    /// settled as failed, its changes are undone newest first with what
    /// they replaced, and nothing the undo does is logged again.
    #[test]
    fn a_change_whose_write_fails_is_settled_as_failed_and_undone() {
        let Ok(full) = OpenOptions::new().write(true).open("/dev/full") else {
            eprintln!("skipped: no /dev/full");
            return;
        };
        let log = MetaLog::start(full, PathBuf::from("/dev/full")).unwrap();
        let undone = std::sync::Arc::new(Mutex::new(Vec::new()));
        let seen = undone.clone();
        let relog = log.clone();
        log.set_undo(move |op, prior| {
            // Undoing logs nothing: the change never reached the disk.
            assert_eq!(relog.record(&MetaOp::PutVhost("undo".into())), 0);
            seen.lock().push((op, prior));
        });
        let first = log.record(&MetaOp::DeclareQueue(queue("q1")));
        let second = log.record_replacing(
            MetaOp::DeleteQueue("/".into(), "q0".into()),
            Some(MetaOp::DeclareQueue(queue("q0"))),
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while log.settled_seq() < second {
            assert!(std::time::Instant::now() < deadline, "never settled");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let why = log.failure(first, second).expect("the write failed");
        assert!(why.contains("No space left"), "{why}");
        assert_eq!(log.failure(second + 1, second + 5), None);
        let undone = undone.lock();
        let mut names: Vec<String> = undone
            .iter()
            .map(|(op, prior)| match (op, prior) {
                (MetaOp::DeleteQueue(_, n), Some(MetaOp::DeclareQueue(q))) => {
                    format!("delete {n}, prior {}", q.name)
                }
                (MetaOp::DeclareQueue(q), None) => format!("declare {}", q.name),
                other => format!("{other:?}"),
            })
            .collect();
        // (Newest first within a batch; the two may be written apart.)
        names.sort();
        assert_eq!(names, ["declare q1", "delete q0, prior q0"]);
        drop(undone);
        log.close();
    }

    /// A write that reached the file in part is cut back and the write
    /// position put back too, so the next batch follows the last whole
    /// change with no hole of zeros in between (the log stays readable).
    #[test]
    fn a_partly_written_batch_leaves_no_hole_for_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let log = compact_and_open(dir.path(), &Definitions::default()).unwrap();
        let good = serde_json::to_vec(&MetaOp::PutVhost("a".into())).unwrap();
        let path = log_path(dir.path());
        let mut file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all(&good).unwrap();
        file.write_all(b"\n").unwrap();
        let written = good.len() as u64 + 1;
        file.write_all(b"{\"put_vhost\":\"par").unwrap();
        let err = std::io::Error::from_raw_os_error(28);
        log.fail(&mut file, written, 1, 1, Vec::new(), &err);
        file.write_all(&good).unwrap();
        file.write_all(b"\n").unwrap();
        drop(file);
        log.close();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains('\0'), "a hole in the log: {text:?}");
        assert_eq!(log_ops(&text).unwrap().len(), 2);
    }
}
