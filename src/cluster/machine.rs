//! A Raft group's state machine (openraft's `RaftStateMachine`) around
//! the group's own `Machine`, with its snapshots on disk.
//!
//! The machine lives in memory; what makes it durable is the log and the
//! newest snapshot. A snapshot is one file, `snapshot-<n>.bin`: a
//! checksummed record of its metadata (last log id, membership, id) and
//! the machine's bytes. It is written whole and synced under a new number
//! before older ones are removed, so a crash leaves the previous one
//! complete. At open the newest complete snapshot restores the machine;
//! openraft then applies the committed entries after it from the log.

use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, RaftSnapshotBuilder, SnapshotMeta, StorageIOError,
    StoredMembership,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::{LogId, StorageError, TypeConfig, frame, numbered, unframe};
use crate::store::disk::Disk;

/// What a group does with its committed commands.
pub trait Machine: Send + Sync + 'static {
    /// Applies the committed command at log index `index`; returns the
    /// reply for its proposer.
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8>;
    /// The whole state as bytes (a snapshot).
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the state with a snapshot's.
    fn restore(&mut self, snapshot: &[u8]) -> io::Result<()>;
}

type Meta = SnapshotMeta<u64, BasicNode>;

#[derive(Serialize, Deserialize)]
struct SnapshotHead {
    meta: Meta,
}

struct Inner<M> {
    machine: M,
    applied: Option<LogId>,
    membership: StoredMembership<u64, BasicNode>,
    /// The newest snapshot: its metadata and bytes.
    current: Option<(Meta, Vec<u8>)>,
    /// Snapshots taken so far (their ids).
    taken: u64,
}

/// A group's state machine. Clones share it (one is the snapshot builder).
pub struct StateMachine<M> {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    inner: Arc<Mutex<Inner<M>>>,
}

impl<M> Clone for StateMachine<M> {
    fn clone(&self) -> Self {
        StateMachine {
            disk: self.disk.clone(),
            dir: self.dir.clone(),
            inner: self.inner.clone(),
        }
    }
}

fn path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("snapshot-{n}.bin"))
}

/// A snapshot file's contents: a record of its metadata, then one of the
/// machine's bytes.
fn encode(meta: &Meta, data: &[u8]) -> io::Result<Vec<u8>> {
    let head = super::encode(&SnapshotHead { meta: meta.clone() })?;
    let mut out = frame(&head);
    out.extend(frame(data));
    Ok(out)
}

fn decode(file: &[u8]) -> Option<(Meta, Vec<u8>)> {
    let (bodies, good) = unframe(file);
    if bodies.len() != 2 || good != file.len() {
        return None;
    }
    let head: SnapshotHead = super::decode(bodies[0]).ok()?;
    Some((head.meta, bodies[1].to_vec()))
}

impl<M: Machine> StateMachine<M> {
    /// Opens the state machine in `dir`: `machine` restored from the newest
    /// complete snapshot there, if any.
    pub fn open(disk: Arc<dyn Disk>, dir: &Path, mut machine: M) -> io::Result<StateMachine<M>> {
        disk.create_dir_all(dir)?;
        let mut current = None;
        let found = numbered(&*disk, dir, "snapshot-", ".bin")?;
        for &n in &found {
            if let Some((meta, data)) = decode(&disk.read(&path(dir, n))?) {
                machine.restore(&data)?;
                current = Some((n, meta, data));
                break;
            }
            tracing::warn!(
                "raft snapshot {} is incomplete; using an older one",
                path(dir, n).display()
            );
        }
        let taken = found.first().copied().unwrap_or(0);
        let (applied, membership, current) = match current {
            Some((_, meta, data)) => (
                meta.last_log_id,
                meta.last_membership.clone(),
                Some((meta, data)),
            ),
            None => (None, StoredMembership::default(), None),
        };
        Ok(StateMachine {
            disk,
            dir: dir.to_owned(),
            inner: Arc::new(Mutex::new(Inner {
                machine,
                applied,
                membership,
                current,
                taken,
            })),
        })
    }

    /// Reads the machine (tests and queries).
    pub fn with<T>(&self, f: impl FnOnce(&M) -> T) -> T {
        f(&self.inner.lock().machine)
    }

    /// Changes the machine outside the log (state that is not replicated,
    /// such as which node serves it), serialised with `apply`.
    pub fn with_mut<T>(&self, f: impl FnOnce(&mut M) -> T) -> T {
        f(&mut self.inner.lock().machine)
    }

    /// Writes a snapshot as the next file and removes the older ones.
    fn save(&self, n: u64, meta: &Meta, data: &[u8]) -> io::Result<()> {
        let bytes = encode(meta, data)?;
        let p = path(&self.dir, n);
        let mut f = self.disk.open_append(&p)?;
        f.set_len(0)?;
        f.write_all(&bytes)?;
        f.sync_data()?;
        self.disk.sync_dir(&self.dir)?;
        for old in numbered(&*self.disk, &self.dir, "snapshot-", ".bin")? {
            if old < n {
                self.disk.remove(&path(&self.dir, old))?;
            }
        }
        self.disk.sync_dir(&self.dir)
    }
}

impl<M: Machine> RaftSnapshotBuilder<TypeConfig> for StateMachine<M> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (meta, data, n) = {
            let mut i = self.inner.lock();
            i.taken += 1;
            let n = i.taken;
            let meta = Meta {
                last_log_id: i.applied,
                last_membership: i.membership.clone(),
                snapshot_id: format!("{}-{n}", i.applied.map_or(0, |l| l.index)),
            };
            (meta, i.machine.snapshot(), n)
        };
        self.save(n, &meta, &data)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        self.inner.lock().current = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl<M: Machine> RaftStateMachine<TypeConfig> for StateMachine<M> {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<u64, BasicNode>), StorageError> {
        let i = self.inner.lock();
        Ok((i.applied, i.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<u8>>, StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut i = self.inner.lock();
        let mut replies = Vec::new();
        for e in entries {
            i.applied = Some(e.log_id);
            match e.payload {
                EntryPayload::Blank => replies.push(Vec::new()),
                EntryPayload::Normal(cmd) => replies.push(i.machine.apply(e.log_id.index, &cmd)),
                EntryPayload::Membership(m) => {
                    i.membership = StoredMembership::new(Some(e.log_id), m);
                    replies.push(Vec::new());
                }
            }
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let n = {
            let mut i = self.inner.lock();
            i.taken += 1;
            i.taken
        };
        self.save(n, meta, &data)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        let mut i = self.inner.lock();
        i.machine
            .restore(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        i.applied = meta.last_log_id;
        i.membership = meta.last_membership.clone();
        i.current = Some((meta.clone(), data));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let i = self.inner.lock();
        Ok(i.current.as_ref().map(|(meta, data)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(data.clone())),
        }))
    }
}
