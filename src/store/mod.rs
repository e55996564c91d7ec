//! The message store: persistent messages of durable queues, on disk.
//!
//! One append-only log for the whole broker, cut into segment files of at
//! most `SEGMENT_MAX` bytes under `<data_dir>/messages/`. Publishers and
//! ackers append encoded records to an in-memory buffer; one writer thread
//! writes the buffer, fsyncs once for everything it holds (group commit) and
//! then advances the durable sequence number that publisher confirms wait
//! for. A segment is deleted once it and every older segment hold no live
//! message, so disk use returns to near zero when queues drain. See
//! docs/architecture.md ("Durability").

pub mod disk;
pub mod meta;
pub mod record;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

use crate::message::Message;
use disk::{AppendFile, Disk, ReadFile, RealDisk};
use record::{ACK, DELIVERED, DROP_QUEUE, Next, QueueKey, Record};

/// Bytes waiting for the writer beyond which publishers pause.
const BACKLOG_MAX: usize = 32 * 1024 * 1024;

/// A segment file is closed and a new one started beyond this size.
pub const SEGMENT_MAX: u64 = crate::ops::config::DEFAULT_SEGMENT_SIZE;

/// A segment whose live messages are at most 1/COMPACT_RATIO of those
/// written to it has them copied forward.
const COMPACT_RATIO: u64 = 8;

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

/// A segment's share of the live messages.
#[derive(Debug, Clone)]
struct Seg {
    /// The first message id written to it (`u64::MAX` until one is).
    first_id: u64,
    /// Messages in it that some queue still holds.
    live: u64,
    /// Messages written to it (for the compaction policy).
    total: u64,
    /// Older segments holding messages that its ack, delivery and drop
    /// records name: it may only be deleted after them, or at recovery
    /// those messages would come back without their acks.
    deps: Vec<u64>,
    /// Recovered from disk, where its records were not traced: treated as
    /// depending on every older segment, and never compacted (queues hold
    /// the recovered messages' locations in it).
    after_all_older: bool,
    /// `live` when compaction last copied from it (`u64::MAX`: never).
    compacted_at: u64,
    /// When its first record was written (wall clock, ms; 0: none yet).
    /// A recovered segment is dated by its file's last write.
    started_ms: u64,
    /// (first id, wall-clock ms) of the buffers written to it, at most one
    /// a second and `MAX_MARKS` in all: when its messages were stored, to
    /// the second, for the age of a queue's oldest stored message.
    marks: Vec<(u64, u64)>,
}

/// Time marks kept per segment; beyond it every other one is dropped, so
/// a segment filled slowly over days is dated coarser, not with more memory.
const MAX_MARKS: usize = 1024;

/// The wall clock in milliseconds since the Unix epoch.
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Seg {
    fn new() -> Seg {
        Seg {
            first_id: u64::MAX,
            live: 0,
            total: 0,
            deps: Vec::new(),
            after_all_older: false,
            compacted_at: u64::MAX,
            started_ms: 0,
            marks: Vec::new(),
        }
    }

    /// Notes that ids from `first` on were written at `now` (wall ms).
    fn mark(&mut self, first: u64, now: u64) {
        if self.started_ms == 0 {
            self.started_ms = now;
        }
        if self.marks.last().is_some_and(|&(_, t)| now < t + 1000) {
            return;
        }
        if self.marks.len() >= MAX_MARKS {
            let mut i = 0;
            self.marks.retain(|_| {
                i += 1;
                i % 2 == 1
            });
        }
        self.marks.push((first, now));
    }

    /// When message `id` (whose record is here) was written, to the second:
    /// the last mark at or before it, else the segment's start.
    fn written_at(&self, id: u64) -> u64 {
        let i = self.marks.partition_point(|&(first, _)| first <= id);
        match i {
            0 => self.started_ms,
            _ => self.marks[i - 1].1,
        }
    }
}

/// Which stored messages are still held, and by how many queues: one byte a
/// message from the oldest one that may be live, so a store of millions of
/// messages costs megabytes, not hundreds of them.
#[derive(Debug, Default)]
struct Live {
    /// Id of `refs[0]`.
    base: u64,
    /// Queues holding each message; `OTHER` means "see `other`".
    refs: std::collections::VecDeque<u8>,
    /// Reference counts of 255 and more, and of live messages older than
    /// `base` (moved out when a few old messages would pin a long run).
    other: HashMap<u64, u32>,
    /// Ids from recovery whose segment is not the one their id range says
    /// (written by an older warren that took ids outside the append lock).
    strays: HashMap<u64, u64>,
    /// Segments, oldest first.
    segments: BTreeMap<u64, Seg>,
    /// Messages copied forward by compaction whose older copies' segments
    /// may still exist: id → those segments.
    moved_from: HashMap<u64, Vec<u64>>,
    /// Segments by the first message id written to them, for finding a
    /// message's segment in O(log segments).
    by_first_id: BTreeMap<u64, u64>,
    /// When messages copied forward by compaction were first written
    /// (wall ms): their copies' segments are younger than they are.
    born: HashMap<u64, u64>,
    current: u64,
    /// Messages below this id are written to a segment.
    placed: u64,
}

const OTHER: u8 = u8::MAX;
/// `refs` longer than this with a live head moves its older half's live
/// entries into `other`.
const REFS_COMPACT: usize = 1 << 22;

impl Live {
    /// A new message held by `n` queues; ids arrive in increasing order.
    fn add(&mut self, id: u64, n: u32) {
        if self.refs.is_empty() {
            self.base = id;
        }
        debug_assert_eq!(id, self.base + self.refs.len() as u64);
        if n >= OTHER as u32 {
            self.other.insert(id, n);
            self.refs.push_back(OTHER);
        } else {
            self.refs.push_back(n as u8);
        }
        if self.refs.len() > REFS_COMPACT {
            let half = self.refs.len() / 2;
            for (i, r) in self.refs.drain(..half).enumerate() {
                let id = self.base + i as u64;
                if r != 0 && r != OTHER {
                    self.other.insert(id, r as u32);
                }
            }
            self.base += half as u64;
        }
    }

    /// Drops one queue's hold on `id`; true when no queue holds it any more.
    fn release(&mut self, id: u64) -> bool {
        let idx = id.wrapping_sub(self.base) as usize;
        let gone = if id < self.base || idx >= self.refs.len() || self.refs[idx] == OTHER {
            match self.other.get_mut(&id) {
                Some(n) => {
                    *n -= 1;
                    *n == 0
                }
                None => false,
            }
        } else if self.refs[idx] == 0 {
            false
        } else {
            self.refs[idx] -= 1;
            self.refs[idx] == 0
        };
        if !gone {
            return false;
        }
        self.other.remove(&id);
        if id >= self.base && idx < self.refs.len() {
            self.refs[idx] = 0;
        }
        while self.refs.front() == Some(&0) {
            self.refs.pop_front();
            self.base += 1;
        }
        if !self.born.is_empty() {
            self.born.remove(&id);
        }
        if id < self.placed {
            let seg = match self.strays.remove(&id) {
                Some(seg) => Some(seg),
                None => self.segment_of(id),
            };
            if let Some(s) = seg.and_then(|seg| self.segments.get_mut(&seg)) {
                s.live = s.live.saturating_sub(1);
            }
        }
        true
    }

    /// Whether `id` is still held.
    fn is_live(&self, id: u64) -> bool {
        let idx = id.wrapping_sub(self.base) as usize;
        if id >= self.base && idx < self.refs.len() && self.refs[idx] != OTHER {
            self.refs[idx] != 0
        } else {
            self.other.contains_key(&id)
        }
    }

    /// The segment whose id range holds `id`.
    fn segment_of(&self, id: u64) -> Option<u64> {
        self.by_first_id
            .range(..=id)
            .next_back()
            .map(|(_, &seg)| seg)
    }

    /// The segment a written message's record is in now (`None` while it
    /// is still in the writer's buffer).
    fn location(&self, id: u64) -> Option<u64> {
        if id >= self.placed {
            return None;
        }
        match self.strays.get(&id) {
            Some(&seg) => Some(seg),
            None => self.segment_of(id),
        }
    }

    /// How many queues hold `id`.
    fn refs_of(&self, id: u64) -> u32 {
        let idx = id.wrapping_sub(self.base) as usize;
        if id >= self.base && idx < self.refs.len() && self.refs[idx] != OTHER {
            u32::from(self.refs[idx])
        } else {
            self.other.get(&id).copied().unwrap_or(0)
        }
    }

    /// A buffer was written to the current segment: its new ids are placed
    /// there, the messages it copied forward now live there, and the
    /// segments holding a copy of a message its records name become its
    /// dependencies.
    fn written(&mut self, next_id: u64, named: &[u64], moved: &[(u64, u64)]) {
        let lo = self.placed;
        self.place(lo, next_id);
        let cur = self.current;
        let mut moved_live = 0;
        for &(id, from) in moved {
            if self.location(id) != Some(from) {
                continue; // copied twice before the first copy was written
            }
            // The old copy stays until its segment goes: records naming
            // the id must outlive it too.
            self.moved_from.entry(id).or_default().push(from);
            let live = self.is_live(id);
            if live && let Some(at) = self.stored_at(id) {
                self.born.insert(id, at);
            }
            self.strays.insert(id, cur);
            if live {
                if let Some(s) = self.segments.get_mut(&from) {
                    s.live = s.live.saturating_sub(1);
                }
                moved_live += 1;
            }
        }
        let mut deps: Vec<u64> = Vec::new();
        for &id in named {
            if let Some(seg) = self.location(id) {
                deps.push(seg);
            }
            if let Some(older) = self.moved_from.get(&id) {
                deps.extend_from_slice(older);
            }
        }
        deps.sort_unstable();
        deps.dedup();
        deps.retain(|&d| d != cur && self.segments.contains_key(&d));
        if let Some(s) = self.segments.get_mut(&cur) {
            if !moved.is_empty() && s.started_ms == 0 {
                s.started_ms = wall_ms();
            }
            for d in deps {
                if let Err(i) = s.deps.binary_search(&d) {
                    s.deps.insert(i, d);
                }
            }
            s.live += moved_live;
            s.total += moved.len() as u64;
        }
    }

    /// Segments that may be deleted now, oldest first: not the current one,
    /// no live message, and every segment whose messages their records name
    /// deleted (or deleted in this same pass) first.
    fn deletable(&self) -> Vec<u64> {
        let mut out: Vec<u64> = Vec::new();
        let mut all_older_gone = true;
        for (&seg, s) in &self.segments {
            if seg == self.current {
                break;
            }
            let deps_gone = if s.after_all_older {
                all_older_gone
            } else {
                s.deps
                    .iter()
                    .all(|d| !self.segments.contains_key(d) || out.contains(d))
            };
            if s.live == 0 && deps_gone {
                out.push(seg);
            } else {
                all_older_gone = false;
            }
        }
        out
    }

    /// A segment worth compacting: old, mostly dead, with live messages
    /// that pin it (and, through the records that name them, the segments
    /// after it), not already compacted at its present live count.
    fn compaction_candidate(&self) -> Option<u64> {
        self.segments
            .iter()
            .filter(|(seg, s)| {
                // Recovered segments are left alone: queues read recovered
                // messages back from where recovery found them.
                **seg + 1 < self.current
                    && !s.after_all_older
                    && s.live > 0
                    // (a small segment holding one live message counts
                    // as mostly dead too: it may pin every later one)
                    && s.live.saturating_mul(COMPACT_RATIO) <= s.total.max(COMPACT_RATIO)
                    && s.compacted_at != s.live
            })
            .map(|(seg, _)| *seg)
            .next()
    }

    /// Forgets a deleted segment.
    fn remove_segment(&mut self, seg: u64) {
        if !self.moved_from.is_empty() {
            self.moved_from.retain(|_, v| {
                v.retain(|&s| s != seg);
                !v.is_empty()
            });
        }
        if let Some(s) = self.segments.remove(&seg)
            && s.first_id != u64::MAX
            && self.by_first_id.get(&s.first_id) == Some(&seg)
        {
            self.by_first_id.remove(&s.first_id);
        }
    }

    /// Ids `lo..hi` were written to the current segment.
    fn place(&mut self, lo: u64, hi: u64) {
        if lo >= hi {
            return;
        }
        let live = (lo..hi).filter(|&id| self.is_live(id)).count() as u64;
        let cur = self.current;
        let s = self.segments.entry(cur).or_insert(Seg::new());
        if s.first_id == u64::MAX {
            s.first_id = lo;
            self.by_first_id.insert(lo, cur);
        }
        s.live += live;
        s.total += hi - lo;
        s.mark(lo, wall_ms());
        self.placed = hi;
    }

    /// When stored message `id` was written (wall ms), if it is on disk
    /// and still held.
    fn stored_at(&self, id: u64) -> Option<u64> {
        if let Some(&at) = self.born.get(&id) {
            return Some(at);
        }
        let seg = self.location(id)?;
        let s = self.segments.get(&seg)?;
        Some(s.written_at(id)).filter(|&t| t != 0)
    }

    /// When the oldest segment still on disk was started (wall ms).
    fn oldest_segment_ms(&self) -> Option<u64> {
        self.segments
            .values()
            .map(|s| s.started_ms)
            .find(|&t| t != 0)
    }
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
}

/// One queue's messages during recovery, in id order: (id, location,
/// delivered, acked, priority, expiration).
#[derive(Default)]
struct QueueScan {
    msgs: Vec<(u64, Loc, bool, bool, u8, Option<u64>)>,
    sorted: bool,
    /// Acked entries still in `msgs`.
    acked: usize,
}

impl QueueScan {
    fn find(&mut self, id: u64) -> Option<usize> {
        if !self.sorted {
            self.msgs.sort_unstable_by_key(|m| m.0);
            self.sorted = true;
        }
        self.msgs.binary_search_by_key(&id, |m| m.0).ok()
    }
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
    reader: Mutex<Option<(u32, Box<dyn ReadFile>)>>,
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
    /// Opens the store in `dir` (created if missing), recovering what the
    /// segments hold. Torn tails are truncated; corrupt records are skipped
    /// and reported. `fsync`: sync before advancing the durable sequence.
    pub fn open(dir: &Path, fsync: bool) -> std::io::Result<(Arc<MessageStore>, Recovered)> {
        Self::open_on(
            Arc::new(RealDisk),
            dir,
            StoreOptions {
                fsync,
                ..StoreOptions::default()
            },
        )
    }

    /// `open` on any `Disk`, with explicit options.
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
        disk.create_dir_all(dir)?;
        let segments = list_segments(&*disk, dir)?;
        let mut queues: HashMap<QueueKey, QueueScan> = HashMap::new();
        // (id, segment, queues holding it), in id order once sorted.
        let mut msgs = IdRefs::default();
        let mut max_id = 0u64;
        let mut first_ids: HashMap<u64, u64> = HashMap::new();
        let mut totals: HashMap<u64, u64> = HashMap::new();
        let last = segments.last().copied();
        for &seg in &segments {
            let path = segment_path(dir, seg);
            let data = Bytes::from(disk.read(&path)?);
            let mut at = 0usize;
            let mut corrupt = 0usize;
            loop {
                match record::next(&data.slice(at..)) {
                    Next::End => break,
                    Next::Torn if resync(&data, at).is_some() => {
                        // A damaged length field, not the end: skip to the
                        // next record whose checksum holds.
                        let to = resync(&data, at).unwrap_or(data.len());
                        corrupt += 1;
                        tracing::error!(
                            "message store: {} has {} unreadable bytes at {at}; skipped to the next good record",
                            path.display(),
                            to - at
                        );
                        at = to;
                    }
                    Next::Torn => {
                        let dropped = data.len() - at;
                        if Some(seg) == last {
                            tracing::warn!(
                                "message store: {} ends with an incomplete record ({dropped} bytes, a write cut short by a crash); truncating it at byte {at}",
                                path.display()
                            );
                            disk.truncate(&path, at as u64)?;
                        } else {
                            tracing::error!(
                                "message store: {} is damaged from byte {at} on ({dropped} bytes unreadable); keeping the {at} bytes before",
                                path.display()
                            );
                        }
                        break;
                    }
                    Next::Corrupt(n) => {
                        corrupt += 1;
                        // The length may be damaged too: continue at the next
                        // good record, which is normally exactly `n` ahead.
                        at = match record::next(&data.slice(at + n..)) {
                            Next::Record(..) | Next::End => at + n,
                            _ => resync(&data, at).unwrap_or(at + n),
                        };
                    }
                    Next::Record(r, n) => {
                        if let Record::Enqueue { id, .. } = &r {
                            // A segment's id range starts at its first new
                            // id; older ids in it are copies (strays).
                            if *id > max_id {
                                first_ids.entry(seg).or_insert(*id);
                            }
                            *totals.entry(seg).or_insert(0) += 1;
                        }
                        let loc = Loc {
                            seg: seg as u32,
                            offset: at as u32,
                            len: n as u32,
                        };
                        at += n;
                        apply(r, loc, &mut queues, &mut msgs, &mut max_id);
                    }
                }
            }
            if corrupt > 0 {
                tracing::error!(
                    "message store: {corrupt} corrupt record(s) in {} skipped (checksum mismatch); the other records were recovered",
                    path.display()
                );
            }
        }

        let mut live = Live::default();
        let mut recovered: Recovered = HashMap::new();
        for (key, mut q) in queues {
            q.find(0);
            let list: Vec<RecoveredMessage> = q
                .msgs
                .into_iter()
                .filter(|m| !m.3)
                .map(
                    |(id, loc, delivered, _, priority, expiration)| RecoveredMessage {
                        id,
                        loc,
                        delivered,
                        priority,
                        expiration,
                    },
                )
                .collect();
            if !list.is_empty() {
                recovered.insert(key, list);
            }
        }
        msgs.sort();
        let held: Vec<(u64, u64, u32)> = msgs
            .v
            .into_iter()
            .filter(|m| m.2 > 0)
            .map(|(id, seg, refs)| (id, seg as u64, refs))
            .collect();
        let recovered_at = wall_ms();
        for &seg in &segments {
            // Dated by the file's last write: its messages are at least
            // that old (the time each was written is not recorded).
            let started_ms = disk
                .modified(&segment_path(dir, seg))
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(recovered_at, |d| d.as_millis() as u64);
            live.segments.insert(
                seg,
                Seg {
                    first_id: first_ids.get(&seg).copied().unwrap_or(u64::MAX),
                    after_all_older: true,
                    started_ms,
                    ..Seg::new()
                },
            );
        }
        for (&seg, s) in &live.segments {
            if s.first_id != u64::MAX {
                live.by_first_id.insert(s.first_id, seg);
            }
        }
        let mut next = held.first().map_or(0, |h| h.0);
        for &(id, seg, refs) in &held {
            while next < id {
                live.add(next, 0);
                next += 1;
            }
            live.add(id, refs);
            next = id + 1;
            if live.segment_of(id) != Some(seg) {
                live.strays.insert(id, seg);
            }
            if let Some(s) = live.segments.get_mut(&seg) {
                s.live += 1;
            }
        }
        for (seg, n) in totals {
            if let Some(s) = live.segments.get_mut(&seg) {
                s.total = n;
            }
        }
        // Ids after the last live one were all acked: `refs` must still run
        // up to the next id handed out, or new ids would land at the wrong
        // index (and release the wrong messages).
        if !held.is_empty() {
            while next <= max_id {
                live.add(next, 0);
                next += 1;
            }
        }
        live.placed = max_id + 1;
        // Segments before the first live one hold nothing needed any more.
        let mut removed_any = false;
        while let Some((&seg, s)) = live.segments.iter().next() {
            if s.live != 0 {
                break;
            }
            match disk.remove(&segment_path(dir, seg)) {
                Ok(()) => removed_any = true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!("message store: cannot delete segment {seg}: {e}");
                    break;
                }
            }
            live.remove_segment(seg);
        }
        if removed_any {
            disk.sync_dir(dir)?;
        }
        live.current = last.map_or(1, |l| l + 1);
        live.segments.insert(live.current, Seg::new());
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
        let s = store.clone();
        let handle = std::thread::Builder::new()
            .name("warren-store".into())
            .spawn(move || supervised("message store writer", move || s.run_writer(file, 0)))?;
        *store.writer.lock() = Some(handle);
        let s = store.clone();
        let handle = std::thread::Builder::new()
            .name("warren-compact".into())
            .spawn(move || supervised("message store compactor", move || s.run_compactor()))?;
        *store.compactor.lock() = Some(handle);
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
        let mut cache = self.reader.lock();
        let f = match cache.take() {
            Some((s, f)) if s == seg => f,
            _ => self.disk.open_read(&segment_path(&self.dir, seg as u64))?,
        };
        let mut buf = vec![0u8; len];
        let r = f.read_exact_at(&mut buf, offset as u64);
        *cache = Some((seg, f));
        r?;
        Ok(Bytes::from(buf))
    }

    /// Whether more is waiting for the writer than it should: publishers
    /// then pause until it catches up, so a disk slower than the publishers
    /// turns into back-pressure instead of a growing buffer.
    pub fn is_backlogged(&self) -> bool {
        self.backlog.load(Ordering::Relaxed) > BACKLOG_MAX
    }

    /// The highest sequence number that is on disk (and synced, if fsync is on).
    pub fn durable_seq(&self) -> u64 {
        *self.durable.borrow()
    }

    /// Notified whenever the durable sequence advances.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.durable.subscribe()
    }

    /// Bytes in segment files.
    pub fn disk_bytes(&self) -> u64 {
        list_segments(&*self.disk, &self.dir)
            .unwrap_or_default()
            .iter()
            .filter_map(|n| self.disk.len(&segment_path(&self.dir, *n)).ok())
            .sum()
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
    pub fn has_failed(&self) -> bool {
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

    fn run_writer(self: Arc<Self>, mut file: Box<dyn AppendFile>, mut written: u64) {
        loop {
            let (buf, seq, next_id, named) = {
                let mut p = self.pending.lock();
                if p.buf.is_empty() && p.copies.is_empty() {
                    if self.stopping.load(Ordering::Acquire) {
                        break;
                    }
                    self.wake.wait_for(&mut p, Duration::from_millis(100));
                    if p.buf.is_empty() && p.copies.is_empty() {
                        drop(p);
                        self.reclaim();
                        continue;
                    }
                }
                self.backlog.store(0, Ordering::Relaxed);
                (
                    std::mem::take(&mut p.buf),
                    p.seq,
                    p.next_id,
                    std::mem::take(&mut p.named),
                )
            };
            if !self.write_copies(&mut *file, &mut written) {
                return;
            }
            if buf.is_empty() {
                continue;
            }
            // A failed write may have written part of the buffer: cut the
            // file back to the last good record before trying again, so the
            // log never holds a partial or doubled copy. Confirms wait
            // meanwhile; reclaiming goes on, so acked space is freed even
            // while the disk is full.
            while let Err(e) = file.write_all(&buf) {
                tracing::error!(
                    "message store: cannot write to {}: {e}; retrying",
                    self.dir.display()
                );
                // Never append after a tail of unknown content: retry the
                // cut until it works.
                while let Err(e) = file.set_len(written) {
                    tracing::error!(
                        "message store: cannot cut the segment back after a failed write: {e}; retrying"
                    );
                    if self.stopping.load(Ordering::Acquire) {
                        return;
                    }
                    std::thread::sleep(self.retry_delay);
                }
                if self.stopping.load(Ordering::Acquire) {
                    return;
                }
                // Move on to a fresh segment, so that the one just cut back
                // stops being the current one and can be deleted as soon as
                // what it holds is acked: on a full disk, that may be where
                // the only reclaimable space is.
                if written > 0
                    && file.sync_data().is_ok()
                    && let Some(f) = self.start_next_segment()
                {
                    file = f;
                    written = 0;
                }
                self.reclaim();
                // Copies may fit where the buffer does not, and free a
                // whole segment once written.
                if !self.write_copies(&mut *file, &mut written) {
                    return;
                }
                self.reclaim();
                std::thread::sleep(self.retry_delay);
            }
            // An fsync error is never retried: the kernel may have dropped
            // the dirty pages already, so a later successful fsync proves
            // nothing. Stop confirming and let the process recover.
            if self.fsync
                && let Err(e) = file.sync_data()
            {
                self.failed.store(true, Ordering::Release);
                (self.on_fatal.0)(&e);
                return;
            }
            written += buf.len() as u64;
            self.live.lock().written(next_id, &named, &[]);
            self.durable.send_replace(seq);
            if written >= self.segment_max
                && let Some(f) = self.start_next_segment()
            {
                file = f;
                written = 0;
            }
            self.reclaim();
        }
        if self.fsync
            && let Err(e) = file.sync_data()
        {
            self.failed.store(true, Ordering::Release);
            (self.on_fatal.0)(&e);
        }
    }

    /// Writes and syncs the records compaction copied forward, ahead of
    /// the rest; then the messages count as living in the current segment.
    /// A failed write is cut back and the copies dropped (their segments
    /// will be compacted again). Returns false after a fatal fsync error.
    fn write_copies(&self, file: &mut dyn AppendFile, written: &mut u64) -> bool {
        let (copies, moved) = {
            let mut p = self.pending.lock();
            if p.copies.is_empty() {
                return true;
            }
            (std::mem::take(&mut p.copies), std::mem::take(&mut p.moved))
        };
        if file.write_all(&copies).is_err() {
            // Never append after a tail of unknown content.
            while file.set_len(*written).is_err() {
                if self.stopping.load(Ordering::Acquire) {
                    return false;
                }
                std::thread::sleep(self.retry_delay);
            }
            let mut live = self.live.lock();
            for (_, from) in moved {
                if let Some(s) = live.segments.get_mut(&from) {
                    s.compacted_at = u64::MAX;
                }
            }
            return true;
        }
        if self.fsync
            && let Err(e) = file.sync_data()
        {
            self.failed.store(true, Ordering::Release);
            (self.on_fatal.0)(&e);
            return false;
        }
        *written += copies.len() as u64;
        let mut live = self.live.lock();
        let placed = live.placed;
        live.written(placed, &[], &moved);
        true
    }

    /// Opens the next segment and makes it the current one. The file is
    /// created, and its directory entry synced, before any id goes to it;
    /// if that fails (no file descriptors, no space) the current segment
    /// stays current and `None` is returned.
    fn start_next_segment(&self) -> Option<Box<dyn AppendFile>> {
        let next = self.live.lock().current + 1;
        let path = segment_path(&self.dir, next);
        match self
            .disk
            .open_append(&path)
            .and_then(|f| self.disk.sync_dir(&self.dir).map(|()| f))
        {
            Ok(f) => {
                let mut live = self.live.lock();
                live.current = next;
                live.segments.insert(next, Seg::new());
                drop(live);
                // A segment just became old enough to compact.
                self.compact_wake.notify_one();
                Some(f)
            }
            Err(e) => {
                tracing::error!(
                    "message store: cannot start segment {next}: {e}; still writing to the current one"
                );
                None
            }
        }
    }

    /// Deletes every segment no live message and no later record needs,
    /// wherever it sits (see `Live::deletable`).
    fn reclaim(&self) {
        let doomed = self.live.lock().deletable();
        if doomed.is_empty() {
            return;
        }
        let mut removed = false;
        for seg in doomed {
            match self.disk.remove(&segment_path(&self.dir, seg)) {
                Ok(()) => removed = true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    // Later ones may depend on it: stop here, retry later.
                    tracing::warn!("message store: cannot delete segment {seg}: {e}");
                    break;
                }
            }
            self.live.lock().remove_segment(seg);
        }
        if removed && let Err(e) = self.disk.sync_dir(&self.dir) {
            tracing::warn!("message store: cannot sync {}: {e}", self.dir.display());
        }
    }

    /// Copies the live messages of one mostly dead segment to the head of
    /// the log (the same record, the same id), so that once the copies are
    /// written the old segment holds nothing live and can be deleted.
    /// Recovery keeps one copy of an id seen twice. Returns whether it
    /// found a segment to compact.
    fn compact_once(&self) -> bool {
        let Some(seg) = self.live.lock().compaction_candidate() else {
            return false;
        };
        let data = match self.disk.read(&segment_path(&self.dir, seg)) {
            Ok(d) => Bytes::from(d),
            Err(e) => {
                tracing::warn!("message store: cannot read segment {seg} to compact it: {e}");
                if let Some(s) = self.live.lock().segments.get_mut(&seg) {
                    s.compacted_at = s.live;
                }
                return true;
            }
        };
        let mut at = 0usize;
        let mut copied = 0usize;
        loop {
            match record::next(&data.slice(at..)) {
                Next::Record(Record::Enqueue { id, queues, .. }, n) => {
                    let mut p = self.pending.lock();
                    let live = self.live.lock();
                    // Only messages every queue it was stored for still
                    // holds: the copy names those queues again, and no
                    // ack for any of them may precede it.
                    if live.is_live(id)
                        && live.refs_of(id) == queues.len() as u32
                        && live.location(id) == Some(seg)
                    {
                        drop(live);
                        p.copies.extend_from_slice(&data[at..at + n]);
                        p.moved.push((id, seg));
                        copied += 1;
                    }
                    at += n;
                }
                Next::Record(_, n) | Next::Corrupt(n) => at += n,
                Next::End | Next::Torn => break,
            }
        }
        if let Some(s) = self.live.lock().segments.get_mut(&seg) {
            s.compacted_at = s.live;
        }
        if copied > 0 {
            tracing::debug!("message store: copied {copied} live message(s) out of segment {seg}");
            self.wake.notify_one();
        }
        true
    }

    fn run_compactor(self: Arc<Self>) {
        while !self.stopping.load(Ordering::Acquire) {
            if !self.compact_once() {
                let mut p = self.pending.lock();
                if self.stopping.load(Ordering::Acquire) {
                    break;
                }
                self.compact_wake.wait_for(&mut p, self.compact_interval);
            }
        }
    }
}

/// The offset of the next intact record after a damaged one at `at`, if any.
fn resync(data: &Bytes, at: usize) -> Option<usize> {
    (at + 1..data.len().saturating_sub(record::HEADER_LEN))
        .find(|&off| matches!(record::next(&data.slice(off..)), Next::Record(..)))
}

/// Reference counts of messages during recovery, by id.
#[derive(Default)]
struct IdRefs {
    /// (id, segment, queues holding it).
    v: Vec<(u64, u32, u32)>,
    sorted: bool,
}

impl IdRefs {
    fn sort(&mut self) {
        if !self.sorted {
            self.v.sort_unstable_by_key(|m| m.0);
            self.sorted = true;
        }
    }

    fn push(&mut self, id: u64, seg: u32, refs: u32) {
        if self.v.last().is_some_and(|l| l.0 > id) {
            self.sorted = false;
        }
        self.v.push((id, seg, refs));
    }

    fn contains(&mut self, id: u64) -> bool {
        self.sort();
        self.v.binary_search_by_key(&id, |m| m.0).is_ok()
    }

    fn release(&mut self, id: u64) {
        self.sort();
        if let Ok(i) = self.v.binary_search_by_key(&id, |m| m.0) {
            self.v[i].2 = self.v[i].2.saturating_sub(1);
        }
    }
}

fn apply(
    r: Record,
    loc: Loc,
    queues: &mut HashMap<QueueKey, QueueScan>,
    msgs: &mut IdRefs,
    max_id: &mut u64,
) {
    match r {
        Record::Enqueue {
            id,
            queues: qs,
            header,
            ..
        } => {
            // The same message twice (a copy written again, or a write
            // repeated after a failure on an older warren): keep the first.
            if id <= *max_id && msgs.contains(id) {
                return;
            }
            *max_id = (*max_id).max(id);
            let priority = crate::message::header_priority(&header);
            let expiration = crate::message::header_expiration(&header).and_then(Result::ok);
            msgs.push(id, loc.seg, qs.len() as u32);
            for k in qs {
                let q = queues.entry(k).or_insert_with(|| QueueScan {
                    sorted: true,
                    ..Default::default()
                });
                if q.msgs.last().is_some_and(|l| l.0 > id) {
                    q.sorted = false;
                }
                q.msgs.push((id, loc, false, false, priority, expiration));
            }
        }
        Record::QueueOp { kind, queue, ids } => {
            let Some(q) = queues.get_mut(&queue) else {
                return;
            };
            match kind {
                ACK => {
                    for id in ids {
                        if let Some(i) = q.find(id)
                            && !q.msgs[i].3
                        {
                            q.msgs[i].3 = true;
                            q.acked += 1;
                            msgs.release(id);
                        }
                    }
                }
                DELIVERED => {
                    for id in ids {
                        if let Some(i) = q.find(id) {
                            q.msgs[i].2 = true;
                        }
                    }
                }
                _ => {
                    let upto = ids.first().copied().unwrap_or(0);
                    q.find(0);
                    let mut dropped = Vec::new();
                    q.msgs.retain(|m| {
                        if m.0 < upto {
                            if !m.3 {
                                dropped.push(m.0);
                            }
                            false
                        } else {
                            true
                        }
                    });
                    q.acked = q.msgs.iter().filter(|m| m.3).count();
                    for id in dropped {
                        msgs.release(id);
                    }
                }
            }
            // Acked entries are dropped once they are half the list, so a
            // long log of publishes and acks does not pile up.
            if q.acked > 1024 && q.acked > q.msgs.len() / 2 {
                q.msgs.retain(|m| !m.3);
                q.acked = 0;
            }
        }
    }
}

#[cfg(test)]
mod sim_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn live_with_segments() -> Live {
        let mut l = Live::default();
        l.segments.insert(1, Seg::new());
        l.current = 1;
        l
    }

    #[test]
    fn segments_count_their_live_messages_down_to_zero() {
        let mut l = live_with_segments();
        for id in 1..=10 {
            l.add(id, if id == 5 { 2 } else { 1 });
        }
        l.place(1, 6);
        l.current = 2;
        l.segments.insert(2, Seg::new());
        // 7 is acked before it is written: segment 2 never counts it.
        assert!(l.release(7));
        l.place(6, 11);
        assert_eq!(l.segments[&1].live, 5);
        assert_eq!(l.segments[&2].live, 4);
        for id in 1..=4 {
            assert!(l.release(id));
        }
        assert!(!l.release(5), "still held by a second queue");
        assert!(l.release(5));
        assert!(!l.release(5), "released twice");
        assert_eq!(l.segments[&1].live, 0);
        assert_eq!(l.base, 6, "the released head is dropped");
        for id in [6, 8, 9, 10] {
            assert!(l.release(id));
        }
        assert_eq!(l.segments[&2].live, 0);
        assert!(l.refs.is_empty());
    }

    #[test]
    fn a_long_run_behind_an_old_live_message_is_compacted() {
        let mut l = live_with_segments();
        let n = REFS_COMPACT as u64 + 10;
        for id in 1..=n {
            l.add(id, 1);
            if id > 1 && id % 2 == 0 {
                l.release(id);
            }
        }
        assert!(l.refs.len() <= REFS_COMPACT);
        assert!(l.is_live(1), "the old message is kept in `other`");
        assert!(l.is_live(3));
        assert!(!l.is_live(2));
        assert!(l.release(1));
        assert!(!l.is_live(1));
    }

    #[test]
    fn a_segment_dates_its_messages_to_the_second_in_bounded_memory() {
        let mut s = Seg::new();
        s.mark(10, 5_000);
        s.mark(20, 5_500); // within the same second: no new mark
        s.mark(30, 7_000);
        assert_eq!(s.written_at(10), 5_000);
        assert_eq!(s.written_at(25), 5_000);
        assert_eq!(s.written_at(30), 7_000);
        assert_eq!(s.written_at(99), 7_000);
        for i in 0..10 * MAX_MARKS as u64 {
            s.mark(100 + i, 10_000 + i * 1000);
        }
        assert!(s.marks.len() <= MAX_MARKS);
        assert_eq!(s.started_ms, 5_000, "its start is kept");
        let t = s.written_at(100 + 5 * MAX_MARKS as u64);
        assert!(
            t <= 10_000 + 5 * MAX_MARKS as u64 * 1000,
            "never dated younger"
        );
    }

    #[test]
    fn a_message_copied_forward_keeps_the_age_of_its_first_write() {
        let mut l = live_with_segments();
        l.add(1, 1);
        l.place(1, 2);
        let first = l.stored_at(1).unwrap();
        l.segments.get_mut(&1).unwrap().marks = vec![(1, first - 60_000)];
        l.current = 2;
        l.segments.insert(2, Seg::new());
        l.written(2, &[], &[(1, 1)]);
        assert_eq!(l.location(1), Some(2));
        assert_eq!(l.stored_at(1), Some(first - 60_000));
        assert!(l.release(1));
        assert!(l.born.is_empty(), "forgotten once released");
    }

    #[test]
    fn heavy_fanout_counts_beyond_a_byte() {
        let mut l = live_with_segments();
        l.add(1, 300);
        for _ in 0..299 {
            assert!(!l.release(1));
        }
        assert!(l.release(1));
        assert!(l.refs.is_empty());
    }
}
