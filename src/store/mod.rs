//! The message store: persistent messages of durable queues, on disk.
//!
//! One append-only log for the whole broker, cut into segment files of at
//! most `SEGMENT_MAX` bytes under `<data_dir>/messages/`. Publishers and
//! ackers append encoded records (`record`) to an in-memory buffer; one
//! writer thread (`writer`) writes the buffer, fsyncs once for everything
//! it holds (group commit) and then advances the durable sequence number
//! that publisher confirms wait for. The live set (`live`) tracks which
//! messages queues still hold and which older segments each segment's
//! ack, delivery and drop records depend on; reclaim (`reclaim`) deletes
//! any segment, wherever it sits, once nothing live is in it and the
//! segments it depends on are gone, and a compactor copies the few live
//! messages out of mostly dead segments so those go too. Disk use thus
//! returns to near zero when queues drain. Recovery (`recovery`) rebuilds
//! all of this from the segments at startup. See docs/architecture.md
//! ("Durability").
//!
//! This file holds the store's handle and its public operations: open,
//! append (enqueue, ack, delivered, drop queue), read back, and the
//! durable sequence.
//!
//! Owns: the message log and the definitions log (`meta`) on disk. May use:
//! `schema`, `message`, `protocol`, `ops`; it knows nothing of queues,
//! vhosts or the broker.

pub mod disk;
mod live;
pub mod meta;
mod reclaim;
pub mod record;
mod recovery;
pub mod stream;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

use crate::message::Message;
use disk::{Disk, ReadFile};
use live::Live;
use record::{ACK, DELIVERED, DISCARDED, DROP_QUEUE, QueueKey, RETURNED};

/// Bytes waiting for the writer beyond which publishers pause.
const BACKLOG_MAX: usize = 32 * 1024 * 1024;

/// A segment file is closed and a new one started beyond this size.
pub const SEGMENT_MAX: u64 = crate::ops::config::DEFAULT_SEGMENT_SIZE;

/// What publishers and ackers appended and the writer has not taken yet.
#[derive(Debug, Default)]
struct Pending {
    buf: BytesMut,
    /// Sequence number of the last record appended.
    seq: u64,
    /// The next message id. Ids are taken under this lock, so they increase
    /// in log order and every segment holds one contiguous range of them
    /// (copies written by compaction aside: those are tracked as `strays`).
    next_id: u64,
    /// Message ids the ack, delivery and drop records in `buf` name (their
    /// segments become the dependencies of the segment `buf` lands in;
    /// resolved when it is written, when every earlier buffer is placed).
    named: Vec<u64>,
    /// Records copied forward by compaction, written ahead of `buf` (so
    /// that on a full disk the few bytes that free a whole segment can go
    /// out before the rest), and no confirm waits for them.
    copies: BytesMut,
    /// The messages in `copies`: (id, segment copied from).
    moved: Vec<(u64, u64)>,
}

/// The wall clock in milliseconds since the Unix epoch.
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Where a message's record is: segment, offset and length. Recovered
/// messages stay on disk until their queue reaches them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    /// Segment number.
    pub seg: u32,
    /// Offset of the record in the segment.
    pub offset: u32,
    /// Record length, header included.
    pub len: u32,
}

/// A message recovered from disk for one queue.
#[derive(Debug)]
pub struct RecoveredMessage {
    /// Store id.
    pub id: u64,
    /// Where its record is.
    pub loc: Loc,
    /// Its priority property (priority queues place it by this).
    pub priority: u8,
    /// It had been delivered (and not acked) before the stop.
    pub delivered: bool,
    /// Its expiration property, in milliseconds: per-message TTL runs
    /// again from the restart (the store keeps no enqueue time).
    pub expiration: Option<u64>,
    /// Times it was returned to its queue (`returned`): a quorum queue's
    /// delivery count.
    pub returns: u32,
    /// Held as a dead letter no queue took yet (`discarded`): the reason's
    /// code.
    pub discarded: Option<u8>,
}

/// What recovery found: each durable queue's messages, in order.
pub type Recovered = HashMap<QueueKey, Vec<RecoveredMessage>>;

/// The message store.
#[derive(Debug)]
pub struct MessageStore {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    fsync: bool,
    /// How long the writer waits before retrying a failed write.
    retry_delay: Duration,
    /// Segment size (`SEGMENT_MAX` outside tests).
    segment_max: u64,
    /// Called when an fsync fails: the data's fate is unknown, so the
    /// process must stop and recover (as PostgreSQL does); tests record it.
    on_fatal: OnFatal,
    /// An fsync failed: nothing more is confirmed.
    failed: AtomicBool,
    pending: Mutex<Pending>,
    wake: Condvar,
    durable: watch::Sender<u64>,
    /// Bytes appended and not yet taken by the writer.
    backlog: std::sync::atomic::AtomicUsize,
    live: Mutex<Live>,
    /// The segment file last read from (recovered messages).
    reader: Mutex<Option<(u32, Arc<dyn ReadFile>)>>,
    stopping: AtomicBool,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    compactor: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Wakes the compactor early (at shutdown).
    compact_wake: Condvar,
    /// How often the compactor looks for a segment to compact.
    compact_interval: Duration,
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:010}.seg"))
}

/// What the store does when an fsync fails.
pub type FatalHook = Box<dyn Fn(&std::io::Error) + Send + Sync>;

/// How a store runs.
pub struct StoreOptions {
    /// Sync before advancing the durable sequence.
    pub fsync: bool,
    /// Called when an fsync fails (the default logs and aborts the process).
    pub on_fatal: FatalHook,
    /// Delay between retries of a failed write.
    pub retry_delay: Duration,
    /// Segment size.
    pub segment_max: u64,
    /// How often the compactor looks for a mostly dead segment.
    pub compact_interval: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            fsync: true,
            on_fatal: Box::new(abort_on_fsync_failure),
            retry_delay: Duration::from_millis(500),
            segment_max: SEGMENT_MAX,
            compact_interval: Duration::from_secs(1),
        }
    }
}

struct OnFatal(FatalHook);

impl std::fmt::Debug for OnFatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnFatal")
    }
}

/// What happens when an fsync fails in a running broker: log and abort, so
/// that recovery (which trusts only what reads back) runs at the next start.
fn abort_on_fsync_failure(e: &std::io::Error) {
    tracing::error!(
        "message store: fsync failed ({e}); what was written since the last sync may not be on disk. \
         Stopping warren so that recovery can run from what is on disk."
    );
    std::process::abort();
}

/// Runs a thread the broker cannot do without. If it panics, nothing would
/// be confirmed (or reclaimed) again while the broker looked alive: log
/// and abort instead, so that recovery runs at the next start.
pub(crate) fn supervised(what: &str, f: impl FnOnce()) {
    if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        let why = e
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| e.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(
            "the {what} thread panicked ({why}); stopping warren so that recovery runs"
        );
        std::process::abort();
    }
}

fn list_segments(disk: &dyn Disk, dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut v = Vec::new();
    for name in disk.list(dir)? {
        if let Some(n) = name
            .strip_suffix(".seg")
            .and_then(|s| s.parse::<u64>().ok())
        {
            v.push(n);
        }
    }
    v.sort_unstable();
    Ok(v)
}

impl MessageStore {
    /// Opens the store in `dir` (created if missing) on `disk`, recovering
    /// what the segments hold (see `recovery`). Torn tails are truncated;
    /// corrupt records are skipped and reported.
    pub fn open_on(
        disk: Arc<dyn Disk>,
        dir: &Path,
        options: StoreOptions,
    ) -> std::io::Result<(Arc<MessageStore>, Recovered)> {
        let StoreOptions {
            fsync,
            on_fatal,
            retry_delay,
            segment_max,
            compact_interval,
        } = options;
        let recovery::Recovery {
            live,
            recovered,
            max_id,
        } = recovery::recover(&*disk, dir)?;
        let (durable, _) = watch::channel(0);
        // The new segment exists on disk (its directory entry synced) before
        // anything is written to it.
        let current_path = segment_path(dir, live.current);
        let file = disk.open_append(&current_path)?;
        disk.sync_dir(dir)?;
        let store = Arc::new(MessageStore {
            disk,
            dir: dir.to_owned(),
            fsync,
            retry_delay,
            segment_max,
            on_fatal: OnFatal(on_fatal),
            failed: AtomicBool::new(false),
            pending: Mutex::new(Pending {
                next_id: max_id + 1,
                ..Pending::default()
            }),
            wake: Condvar::new(),
            durable,
            backlog: Default::default(),
            reader: Mutex::new(None),
            live: Mutex::new(live),
            stopping: AtomicBool::new(false),
            writer: Mutex::new(None),
            compactor: Mutex::new(None),
            compact_wake: Condvar::new(),
            compact_interval,
        });
        store.spawn_threads(file)?;
        Ok((store, recovered))
    }

    /// Appends a message for the given durable queues; returns its id and
    /// the sequence number a confirm must wait for.
    pub fn enqueue(&self, queues: &[(&str, &str)], msg: &Message) -> (u64, u64) {
        let mut p = self.pending.lock();
        let id = p.next_id;
        p.next_id += 1;
        self.live.lock().add(id, queues.len() as u32);
        record::encode_enqueue(
            &mut p.buf,
            id,
            queues,
            msg.exchange(),
            msg.routing_key(),
            msg.header(),
            msg.body(),
        );
        p.seq += 1;
        let seq = p.seq;
        self.backlog.store(p.buf.len(), Ordering::Relaxed);
        drop(p);
        self.wake.notify_one();
        (id, seq)
    }

    /// Records that a queue is done with messages (acked, dropped, purged).
    pub fn ack(&self, vhost: &str, queue: &str, ids: &[u64]) -> u64 {
        self.append_op(ACK, vhost, queue, ids, ids, &[])
    }

    /// Records that messages were delivered (for redelivered=true after a restart).
    pub fn delivered(&self, vhost: &str, queue: &str, ids: &[u64]) -> u64 {
        self.append_op(DELIVERED, vhost, queue, ids, &[], ids)
    }

    /// Records that messages of `queue` were dead-lettered at least once
    /// and that no queue took them: (id, the reason's code). They come back
    /// held (`RecoveredMessage::discarded`) until acked.
    pub fn discarded(&self, vhost: &str, queue: &str, items: &[(u64, u8)]) -> u64 {
        let mut p = self.pending.lock();
        if items.is_empty() {
            return p.seq;
        }
        let ids: Vec<u64> = items.iter().map(|i| i.0).collect();
        let pairs: Vec<u64> = items
            .iter()
            .flat_map(|&(id, r)| [id, u64::from(r)])
            .collect();
        let seq = self.append_op_locked(&mut p, DISCARDED, vhost, queue, &pairs, &[], &ids);
        let mut live = self.live.lock();
        for &(id, reason) in items {
            if live.is_live(id) {
                let key = QueueKey {
                    vhost: vhost.to_owned(),
                    queue: queue.to_owned(),
                };
                live.discarded.insert(id, (key, reason));
            }
        }
        seq
    }

    /// Records that messages went back to their queue once more (a quorum
    /// queue's delivery count, recovered as `RecoveredMessage::returns`).
    /// The live set keeps the count too, so that compaction writes it again
    /// with a copy it makes (under the same lock: no copy misses one).
    pub fn returned(&self, vhost: &str, queue: &str, ids: &[u64]) -> u64 {
        let mut p = self.pending.lock();
        if ids.is_empty() {
            return p.seq;
        }
        let seq = self.append_op_locked(&mut p, RETURNED, vhost, queue, ids, &[], ids);
        let mut live = self.live.lock();
        for &id in ids {
            if live.is_live(id) {
                let e = live.returns.entry(id).or_insert_with(|| {
                    (
                        QueueKey {
                            vhost: vhost.to_owned(),
                            queue: queue.to_owned(),
                        },
                        0,
                    )
                });
                e.1 = e.1.saturating_add(1);
            }
        }
        seq
    }

    /// Records that a queue was deleted: all its stored messages up to now
    /// are gone. `held` are the ids it still held (their references are released).
    pub fn drop_queue(&self, vhost: &str, queue: &str, held: &[u64]) -> u64 {
        let mut p = self.pending.lock();
        let upto = p.next_id;
        self.append_op_locked(&mut p, DROP_QUEUE, vhost, queue, &[upto], held, &[])
    }

    /// Appends a queue operation; `release` are ids whose reference this
    /// queue gives up, `names` further ids the record refers to (the
    /// segments of both must outlive the record's). Releasing and
    /// appending happen under the append lock, so compaction never copies
    /// a message between the two.
    fn append_op(
        &self,
        kind: u8,
        vhost: &str,
        queue: &str,
        ids: &[u64],
        release: &[u64],
        names: &[u64],
    ) -> u64 {
        let mut p = self.pending.lock();
        if ids.is_empty() {
            return p.seq;
        }
        self.append_op_locked(&mut p, kind, vhost, queue, ids, release, names)
    }

    #[allow(clippy::too_many_arguments)]
    fn append_op_locked(
        &self,
        p: &mut Pending,
        kind: u8,
        vhost: &str,
        queue: &str,
        ids: &[u64],
        release: &[u64],
        names: &[u64],
    ) -> u64 {
        p.named.extend_from_slice(names);
        p.named.extend_from_slice(release);
        if !release.is_empty() {
            let mut live = self.live.lock();
            for &id in release {
                live.release(id);
            }
        }
        record::encode_queue_op(&mut p.buf, kind, vhost, queue, ids);
        p.seq += 1;
        let seq = p.seq;
        self.backlog.store(p.buf.len(), Ordering::Relaxed);
        self.wake.notify_one();
        seq
    }

    /// Reads `len` bytes at `offset` of segment `seg` (recovered messages
    /// are read back when their queue reaches them).
    pub fn read_span(&self, seg: u32, offset: u32, len: usize) -> std::io::Result<Bytes> {
        // The lock covers only the choice of file: the read itself (pread,
        // safe on a shared descriptor) runs without it, so queues reading
        // recovered messages do not wait for each other's disk reads.
        let cached = match &*self.reader.lock() {
            Some((s, f)) if *s == seg => Some(f.clone()),
            _ => None,
        };
        let f = match cached {
            Some(f) => f,
            None => {
                let f: Arc<dyn ReadFile> =
                    Arc::from(self.disk.open_read(&segment_path(&self.dir, seg as u64))?);
                *self.reader.lock() = Some((seg, f.clone()));
                f
            }
        };
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, offset as u64)?;
        Ok(Bytes::from(buf))
    }

    /// Whether more is waiting for the writer than it should: publishers
    /// then pause until it catches up, so a disk slower than the publishers
    /// turns into back-pressure instead of a growing buffer.
    pub fn is_backlogged(&self) -> bool {
        self.backlog.load(Ordering::Relaxed) > BACKLOG_MAX
    }

    /// Bytes waiting for the writer.
    pub fn backlog_bytes(&self) -> usize {
        self.backlog.load(Ordering::Relaxed)
    }

    /// The most bytes that wait for the writer before publishers pause.
    pub const BACKLOG_MAX: usize = BACKLOG_MAX;

    /// The highest sequence number that is on disk (and synced, if fsync is on).
    pub fn durable_seq(&self) -> u64 {
        *self.durable.borrow()
    }

    /// Notified whenever the durable sequence advances.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.durable.subscribe()
    }

    /// When stored message `id` was written to disk (wall-clock ms since
    /// the epoch, to the second), if it is still held; `None` while it is
    /// still in the writer's buffer or once no queue holds it. One lock and
    /// O(log segments), for listings, never per message.
    pub fn stored_at_ms(&self, id: u64) -> Option<u64> {
        self.live.lock().stored_at(id)
    }

    /// Segment files on disk, and when the oldest of them was started
    /// (wall-clock ms; `None` while nothing is written).
    pub fn segments(&self) -> (usize, Option<u64>) {
        let live = self.live.lock();
        (live.segments.len(), live.oldest_segment_ms())
    }

    /// The segments' bookkeeping, for test failure messages.
    #[cfg(test)]
    pub(crate) fn debug_segments(&self) -> String {
        let live = self.live.lock();
        let mut out = format!("current {} placed {}; ", live.current, live.placed);
        for (seg, s) in &live.segments {
            out.push_str(&format!(
                "[{seg}: live {} total {} deps {:?} all_older {} compacted_at {}] ",
                s.live, s.total, s.deps, s.after_all_older, s.compacted_at
            ));
        }
        out
    }

    /// An fsync failed: the store stopped confirming (the broker aborts).
    #[cfg(test)]
    pub(crate) fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Writes and syncs everything appended so far, then stops the writer.
    pub fn close(&self) {
        self.stopping.store(true, Ordering::Release);
        {
            let _p = self.pending.lock();
            self.wake.notify_one();
            self.compact_wake.notify_one();
        }
        if let Some(h) = self.compactor.lock().take() {
            let _ = h.join();
        }
        if let Some(h) = self.writer.lock().take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod sim_tests;
