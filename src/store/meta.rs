//! Durable definitions on disk: a snapshot in RabbitMQ's definitions format
//! (`definitions.json`) plus an append-only log of changes since
//! (`definitions.log`, one JSON object per line, synced per change). At start
//! the snapshot is imported, the log replayed, and both are compacted into a
//! fresh snapshot. Each change costs one small append, so declaring 100,000
//! durable queues stays linear.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::broker::Broker;
use crate::definitions::{
    self, BindingDef, Definitions, ExchangeDef, PermissionDef, PolicyDef, QueueDef, UserDef,
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

/// The definitions log.
#[derive(Debug)]
pub struct MetaLog {
    file: Mutex<File>,
    path: PathBuf,
    /// While set (bulk imports), changes are written but synced only by `sync`.
    deferred: std::sync::atomic::AtomicBool,
}

impl MetaLog {
    /// Appends a change and syncs it.
    pub fn record(&self, op: &MetaOp) {
        let mut line = match serde_json::to_vec(op) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("cannot encode definitions change {op:?}: {e}");
                return;
            }
        };
        line.push(b'\n');
        let mut f = self.file.lock();
        let deferred = self.deferred.load(std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = f
            .write_all(&line)
            .and_then(|_| if deferred { Ok(()) } else { f.sync_data() })
        {
            tracing::error!("cannot write {}: {e}", self.path.display());
        }
    }
}

impl MetaLog {
    /// Defers per-change syncs (on) or syncs what was deferred (off): a bulk
    /// import costs one sync instead of one per definition.
    pub fn defer_sync(&self, on: bool) {
        self.deferred
            .store(on, std::sync::atomic::Ordering::Relaxed);
        if !on && let Err(e) = self.file.lock().sync_data() {
            tracing::error!("cannot sync {}: {e}", self.path.display());
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

/// Loads the snapshot and replays the log into `broker`. A snapshot or a
/// log line that cannot be read is an error naming the file: the broker
/// must not start without it and then overwrite it with less (only a last
/// log line without its newline, a write torn by a crash, is skipped).
pub fn recover(broker: &Broker, dir: &Path) -> Result<(), String> {
    let snap = snapshot_path(dir);
    if snap.exists() {
        let text = fs::read_to_string(&snap).map_err(|e| format!("{}: {e}", snap.display()))?;
        let d = definitions::parse(&text).map_err(|e| unreadable(&snap, &e))?;
        for p in definitions::restore(broker, &d) {
            tracing::warn!("recovering definitions: {}", p.escape_debug());
        }
    }
    let log = log_path(dir);
    if log.exists() {
        let text = fs::read_to_string(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        for op in log_ops(&text).map_err(|e| unreadable(&log, &e))? {
            replay(broker, op);
        }
    }
    Ok(())
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

fn replay(broker: &Broker, op: MetaOp) {
    let mut d = Definitions::default();
    match op {
        MetaOp::PutUser(u) => d.users.push(u),
        MetaOp::DeleteUser(n) => {
            broker.delete_user(&n);
        }
        MetaOp::PutVhost(v) => {
            broker.add_vhost(&v);
        }
        MetaOp::DeleteVhost(v) => {
            broker.delete_vhost(&v);
        }
        MetaOp::SetPermissions(p) => d.permissions.push(p),
        MetaOp::ClearPermissions(u, v) => {
            broker.clear_permissions(&u, &v);
        }
        MetaOp::PutPolicy(p) => d.policies.push(p),
        MetaOp::DeletePolicy(v, n) => {
            if let Some(vh) = broker.vhost(&v) {
                vh.delete_policy(&n);
            }
        }
        MetaOp::DeclareExchange(x) => d.exchanges.push(x),
        MetaOp::DeleteExchange(v, n) => {
            if let Some(vh) = broker.vhost(&v) {
                let _ = vh.delete_exchange(&n, false);
            }
        }
        MetaOp::DeclareQueue(q) => d.queues.push(q),
        MetaOp::DeleteQueue(v, n) => {
            if let Some(vh) = broker.vhost(&v) {
                let _ = vh.delete_queue(&n, false, false, 0);
            }
        }
        MetaOp::Bind(b) => d.bindings.push(b),
        MetaOp::Unbind(b) => {
            if let Some(vh) = broker.vhost(&b.vhost) {
                let dest = if b.destination_type == "exchange" {
                    crate::vhost::DestName::Exchange(&b.destination)
                } else {
                    crate::vhost::DestName::Queue(&b.destination)
                };
                if let Ok(args) = definitions::table_from_json(&b.arguments) {
                    let _ = vh.unbind(&b.source, dest, &b.routing_key, &args, 0);
                }
            }
        }
    }
    for p in definitions::restore(broker, &d) {
        tracing::warn!("replaying definitions log: {}", p.escape_debug());
    }
}

/// Options for files only the broker's user may read (0600): the
/// definitions hold password hashes.
fn private_file() -> OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = OpenOptions::new();
    o.mode(0o600);
    o
}

/// Writes a fresh snapshot of `broker`'s definitions and starts an empty log.
pub fn compact_and_open(broker: &Broker, dir: &Path) -> std::io::Result<MetaLog> {
    fs::create_dir_all(dir)?;
    let defs = definitions::export(broker);
    let json = serde_json::to_vec_pretty(&defs).map_err(std::io::Error::other)?;
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
    Ok(MetaLog {
        file: Mutex::new(file),
        path,
        deferred: Default::default(),
    })
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
}
