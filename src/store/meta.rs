//! Durable definitions on disk: a snapshot in RabbitMQ's definitions format
//! (`definitions.json`) plus an append-only log of changes since
//! (`definitions.log`, one JSON object per line, synced per change). At start
//! the broker reads both (`read`), applies them, and writes its state back
//! as a fresh snapshot with an empty log (`compact_and_open`). This module
//! only appends and reads operations; it knows nothing of the broker. Each change costs one small append, so declaring 100,000
//! durable queues stays linear.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
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
/// a change is durable waits for `durable_seq` to reach the change's
/// sequence number: connections gate their outbound bytes on it
/// (`ConnectionHandle::write`), the HTTP API awaits it before replying.
#[derive(Debug)]
pub struct MetaLog {
    path: PathBuf,
    pending: Mutex<MetaPending>,
    wake: parking_lot::Condvar,
    durable: tokio::sync::watch::Sender<u64>,
    stopping: std::sync::atomic::AtomicBool,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

#[derive(Debug, Default)]
struct MetaPending {
    buf: Vec<u8>,
    seq: u64,
}

thread_local! {
    /// The last change this thread appended (0: none since `take_appended`).
    static APPENDED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The sequence number of the last definitions change this thread appended
/// since the last `take_appended` (0: none). Connections raise their
/// outbound gate to it before writing a reply.
pub fn appended_on_this_thread() -> u64 {
    APPENDED.with(std::cell::Cell::get)
}

/// Forgets what this thread appended (a connection, after each frame).
pub fn take_appended() -> u64 {
    APPENDED.with(|c| c.replace(0))
}

impl MetaLog {
    fn start(file: File, path: PathBuf) -> std::io::Result<std::sync::Arc<MetaLog>> {
        let (durable, _) = tokio::sync::watch::channel(0);
        let log = std::sync::Arc::new(MetaLog {
            path,
            pending: Mutex::new(MetaPending::default()),
            wake: parking_lot::Condvar::new(),
            durable,
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

    /// Appends a change; returns its sequence number (durable once
    /// `durable_seq` reaches it).
    pub fn record(&self, op: &MetaOp) -> u64 {
        let mut line = match serde_json::to_vec(op) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("cannot encode definitions change {op:?}: {e}");
                return 0;
            }
        };
        line.push(b'\n');
        let mut p = self.pending.lock();
        p.buf.extend_from_slice(&line);
        p.seq += 1;
        let seq = p.seq;
        drop(p);
        APPENDED.with(|c| c.set(seq));
        self.wake.notify_one();
        seq
    }

    /// The last change appended.
    pub fn appended_seq(&self) -> u64 {
        self.pending.lock().seq
    }

    /// The last change on disk (synced).
    pub fn durable_seq(&self) -> u64 {
        *self.durable.borrow()
    }

    /// Notified whenever `durable_seq` advances.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.durable.subscribe()
    }

    /// Waits until change `seq` is on disk.
    pub async fn wait_durable(&self, seq: u64) {
        let mut rx = self.durable.subscribe();
        while *rx.borrow_and_update() < seq {
            if rx.changed().await.is_err() {
                return;
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
        loop {
            let (buf, seq) = {
                let mut p = self.pending.lock();
                while p.buf.is_empty() {
                    if self.stopping.load(std::sync::atomic::Ordering::Acquire) {
                        return;
                    }
                    self.wake
                        .wait_for(&mut p, std::time::Duration::from_millis(100));
                }
                (std::mem::take(&mut p.buf), p.seq)
            };
            // A failed write is cut back and retried (replies wait); a
            // failed sync is fatal, as for the message store.
            while let Err(e) = file.write_all(&buf) {
                tracing::error!("cannot write {}: {e}; retrying", self.path.display());
                while let Err(e) = file.set_len(written) {
                    tracing::error!("cannot cut {} back: {e}; retrying", self.path.display());
                    std::thread::sleep(std::time::Duration::from_millis(500));
                }
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
            if let Err(e) = file.sync_data() {
                tracing::error!(
                    "cannot sync {} ({e}): stopping warren so that recovery runs from what is on disk",
                    self.path.display()
                );
                std::process::abort();
            }
            written += buf.len() as u64;
            self.durable.send_replace(seq);
        }
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
        assert_eq!(log.durable_seq(), second);

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
}
