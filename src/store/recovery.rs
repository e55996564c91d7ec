//! Recovery: rebuilding the store's state from its segments at startup.
//!
//! Four steps, in order: scan every segment (truncating a torn tail,
//! skipping corrupt records) and replay its records into per-queue lists
//! and per-message reference counts; turn those into each queue's
//! recovered messages and the live set (`live.rs`); reclaim the leading
//! segments that hold nothing live; then `open_on` starts a fresh segment
//! and spawns the writer. Recovered segments are not traced for the
//! records in them, so each is treated as depending on every older one.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use bytes::Bytes;

use super::disk::Disk;
use super::live::{Live, Seg};
use super::record::{self, ACK, DELIVERED, DISCARDED, Next, QueueKey, RETURNED, RETURNS, Record};
use super::{Loc, Recovered, RecoveredMessage, list_segments, segment_path, wall_ms};

/// One queue's messages during recovery, in id order: (id, location,
/// delivered, acked, priority, expiration).
#[derive(Default)]
struct QueueScan {
    msgs: Vec<Scanned>,
    sorted: bool,
    /// Acked entries still in `msgs`.
    acked: usize,
}

/// A message of a queue, as the scan has replayed it so far.
#[derive(Debug, Clone, Copy)]
struct Scanned {
    id: u64,
    loc: Loc,
    delivered: bool,
    acked: bool,
    priority: u8,
    expiration: Option<u64>,
    /// RETURNED records: times it went back to its queue.
    returns: u32,
    /// A DISCARDED record: held as a dead letter (the reason's code).
    discarded: Option<u8>,
}

/// DELIVERED and RETURNED records for a message the scan has not seen
/// (its enqueue's segment is gone; compaction copied it further on).
#[derive(Debug, Clone, Copy, Default)]
struct Early {
    delivered: bool,
    returns: u32,
    discarded: Option<u8>,
}

impl QueueScan {
    fn find(&mut self, id: u64) -> Option<usize> {
        if !self.sorted {
            self.msgs.sort_unstable_by_key(|m| m.id);
            self.sorted = true;
        }
        self.msgs.binary_search_by_key(&id, |m| m.id).ok()
    }

    /// The queue was deleted: its messages below `upto` are gone (those
    /// not acked yet release their reference in `msgs`).
    fn drop_below(&mut self, upto: u64, msgs: &mut IdRefs) {
        self.find(0);
        let mut dropped = Vec::new();
        self.msgs.retain(|m| {
            if m.id < upto {
                if !m.acked {
                    dropped.push(m.id);
                }
                false
            } else {
                true
            }
        });
        self.acked = self.msgs.iter().filter(|m| m.acked).count();
        for id in dropped {
            msgs.release(id);
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

/// What scanning the segments found.
#[derive(Default)]
struct Scan {
    /// Each queue's messages.
    queues: HashMap<QueueKey, QueueScan>,
    /// (id, segment, queues holding it), in id order once sorted.
    msgs: IdRefs,
    /// The highest message id seen.
    max_id: u64,
    /// Each segment's first new id: its id range starts there.
    first_ids: HashMap<u64, u64>,
    /// Enqueue records in each segment.
    totals: HashMap<u64, u64>,
    /// DELIVERED and RETURNED records that came before their message.
    early: HashMap<QueueKey, HashMap<u64, Early>>,
}

/// The store's state after recovery.
pub(super) struct Recovery {
    /// The live set, its current segment the one after the last on disk
    /// (not created yet).
    pub(super) live: Live,
    /// Each durable queue's messages, in order.
    pub(super) recovered: Recovered,
    /// The highest message id in the log (0: none).
    pub(super) max_id: u64,
}

/// Recovers what the segments in `dir` (created if missing) hold: scan,
/// live set, reclaim.
pub(super) fn recover(disk: &dyn Disk, dir: &Path) -> std::io::Result<Recovery> {
    disk.create_dir_all(dir)?;
    let segments = list_segments(disk, dir)?;
    let last = segments.last().copied();
    let mut scan = Scan::default();
    for &seg in &segments {
        scan_segment(disk, dir, seg, Some(seg) == last, &mut scan)?;
    }
    let recovered = recovered_lists(std::mem::take(&mut scan.queues));
    let max_id = scan.max_id;
    let mut live = live_set(disk, dir, &segments, scan);
    // Delivery counts and held dead letters go on with the messages
    // (compaction writes them).
    for (key, msgs) in &recovered {
        for m in msgs {
            if m.returns > 0 {
                live.returns.insert(m.id, (key.clone(), m.returns));
            }
            if let Some(reason) = m.discarded {
                live.discarded.insert(m.id, (key.clone(), reason));
            }
        }
    }
    reclaim_leading(disk, dir, &mut live)?;
    live.current = last.map_or(1, |l| l + 1);
    live.segments.insert(live.current, Seg::new());
    Ok(Recovery {
        live,
        recovered,
        max_id,
    })
}

/// Replays the records of segment `seg` into `scan`. A torn tail of the
/// last segment (a write cut short by a crash) is truncated; damage
/// anywhere else is skipped to the next intact record, and reported.
fn scan_segment(
    disk: &dyn Disk,
    dir: &Path,
    seg: u64,
    is_last: bool,
    scan: &mut Scan,
) -> std::io::Result<()> {
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
                if is_last {
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
                scan.record(r, seg, at, n);
                at += n;
            }
        }
    }
    if corrupt > 0 {
        tracing::error!(
            "message store: {corrupt} corrupt record(s) in {} skipped (checksum mismatch); the other records were recovered",
            path.display()
        );
    }
    Ok(())
}

impl Scan {
    /// Replays record `r`, `n` bytes at `at` in segment `seg`.
    fn record(&mut self, r: Record, seg: u64, at: usize, n: usize) {
        if let Record::Enqueue { id, .. } = &r {
            // A segment's id range starts at its first new id; older ids
            // in it are copies (strays).
            if *id > self.max_id {
                self.first_ids.entry(seg).or_insert(*id);
            }
            *self.totals.entry(seg).or_insert(0) += 1;
        }
        let loc = Loc {
            seg: seg as u32,
            offset: at as u32,
            len: n as u32,
        };
        match r {
            Record::Enqueue {
                id, queues, header, ..
            } => self.enqueue(id, queues, &header, loc),
            Record::QueueOp { kind, queue, ids } => self.queue_op(kind, &queue, ids),
        }
    }

    /// A message stored for `qs`.
    fn enqueue(&mut self, id: u64, qs: Vec<QueueKey>, header: &Bytes, loc: Loc) {
        // The same message twice (a copy written again, or a write
        // repeated after a failure on an older warren): keep the first.
        if id <= self.max_id && self.msgs.contains(id) {
            return;
        }
        self.max_id = self.max_id.max(id);
        let priority = crate::message::header_priority(header);
        let expiration = crate::message::header_expiration(header).and_then(Result::ok);
        self.msgs.push(id, loc.seg, qs.len() as u32);
        for k in qs {
            let early = self
                .early
                .get_mut(&k)
                .and_then(|e| e.remove(&id))
                .unwrap_or_default();
            let q = self.queues.entry(k).or_insert_with(|| QueueScan {
                sorted: true,
                ..Default::default()
            });
            if q.msgs.last().is_some_and(|l| l.id > id) {
                q.sorted = false;
            }
            q.msgs.push(Scanned {
                id,
                loc,
                delivered: early.delivered,
                acked: false,
                priority,
                expiration,
                returns: early.returns,
                discarded: early.discarded,
            });
        }
    }

    /// A DELIVERED, RETURNED or RETURNS record: the message was delivered
    /// (and returned once more, or this many times in all). One the scan
    /// has not seen yet is noted for when it comes (compaction copied it
    /// past this record).
    fn delivered(&mut self, kind: u8, queue: &QueueKey, ids: Vec<u64>) {
        let mut counted: Vec<(u64, u32)> = Vec::new();
        for id in ids {
            match counted.last_mut() {
                Some((last, n)) if *last == id => *n += 1,
                _ => counted.push((id, 1)),
            }
        }
        for (id, n) in counted {
            let apply = |delivered: &mut bool, returns: &mut u32| {
                *delivered = true;
                match kind {
                    RETURNED => *returns = returns.saturating_add(n),
                    RETURNS => *returns = (*returns).max(n),
                    _ => {}
                }
            };
            if let Some(q) = self.queues.get_mut(queue)
                && let Some(i) = q.find(id)
            {
                let m = &mut q.msgs[i];
                apply(&mut m.delivered, &mut m.returns);
                continue;
            }
            let e = self
                .early
                .entry(queue.clone())
                .or_default()
                .entry(id)
                .or_default();
            apply(&mut e.delivered, &mut e.returns);
        }
    }

    /// An ack, delivery or drop record for `queue`.
    fn queue_op(&mut self, kind: u8, queue: &QueueKey, ids: Vec<u64>) {
        if matches!(kind, DELIVERED | RETURNED | RETURNS) {
            self.delivered(kind, queue, ids);
            return;
        }
        if kind == DISCARDED {
            for pair in ids.chunks_exact(2) {
                let (id, reason) = (pair[0], pair[1] as u8);
                if let Some(q) = self.queues.get_mut(queue)
                    && let Some(i) = q.find(id)
                {
                    q.msgs[i].discarded = Some(reason);
                    continue;
                }
                let e = self.early.entry(queue.clone()).or_default();
                e.entry(id).or_default().discarded = Some(reason);
            }
            return;
        }
        let Some(q) = self.queues.get_mut(queue) else {
            return;
        };
        let msgs = &mut self.msgs;
        match kind {
            ACK => {
                for id in ids {
                    if let Some(i) = q.find(id)
                        && !q.msgs[i].acked
                    {
                        q.msgs[i].acked = true;
                        q.acked += 1;
                        msgs.release(id);
                    }
                }
            }

            // DROP_QUEUE, the only other kind a record decodes with.
            _ => q.drop_below(ids.first().copied().unwrap_or(0), msgs),
        }
        // Acked entries are dropped once they are half the list, so a
        // long log of publishes and acks does not pile up.
        if q.acked > 1024 && q.acked > q.msgs.len() / 2 {
            q.msgs.retain(|m| !m.acked);
            q.acked = 0;
        }
    }
}

/// Each queue's unacked messages, in id order.
fn recovered_lists(queues: HashMap<QueueKey, QueueScan>) -> Recovered {
    let mut recovered: Recovered = HashMap::new();
    for (key, mut q) in queues {
        q.find(0);
        let list: Vec<RecoveredMessage> = q
            .msgs
            .into_iter()
            .filter(|m| !m.acked)
            .map(|m| RecoveredMessage {
                id: m.id,
                loc: m.loc,
                delivered: m.delivered,
                priority: m.priority,
                expiration: m.expiration,
                returns: m.returns,
                discarded: m.discarded,
            })
            .collect();
        if !list.is_empty() {
            recovered.insert(key, list);
        }
    }
    recovered
}

/// The live set the scan found: every segment on disk (each depending on
/// all older ones), and the reference counts of the messages still held.
fn live_set(disk: &dyn Disk, dir: &Path, segments: &[u64], mut scan: Scan) -> Live {
    let mut live = Live::default();
    scan.msgs.sort();
    let held: Vec<(u64, u64, u32)> = std::mem::take(&mut scan.msgs.v)
        .into_iter()
        .filter(|m| m.2 > 0)
        .map(|(id, seg, refs)| (id, seg as u64, refs))
        .collect();
    live.segments = recovered_segments(disk, dir, segments, &scan.first_ids);
    for (&seg, s) in &live.segments {
        if s.first_id != u64::MAX {
            live.by_first_id.insert(s.first_id, seg);
        }
    }
    for (seg, n) in scan.totals {
        if let Some(s) = live.segments.get_mut(&seg) {
            s.total = n;
        }
    }
    count_held(&mut live, &held, scan.max_id);
    live
}

/// The segments on disk, as the live set tracks them: dated by each
/// file's last write (their messages are at least that old; the time each
/// was written is not recorded), and depending on every older segment.
fn recovered_segments(
    disk: &dyn Disk,
    dir: &Path,
    segments: &[u64],
    first_ids: &HashMap<u64, u64>,
) -> BTreeMap<u64, Seg> {
    let recovered_at = wall_ms();
    let mut out = BTreeMap::new();
    for &seg in segments {
        let started_ms = disk
            .modified(&segment_path(dir, seg))
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(recovered_at, |d| d.as_millis() as u64);
        out.insert(
            seg,
            Seg {
                first_id: first_ids.get(&seg).copied().unwrap_or(u64::MAX),
                after_all_older: true,
                started_ms,
                ..Seg::new()
            },
        );
    }
    out
}

/// Counts the `held` messages ((id, segment, queues holding it), in id
/// order) into `live`, and places every id up to `max_id`.
fn count_held(live: &mut Live, held: &[(u64, u64, u32)], max_id: u64) {
    let mut next = held.first().map_or(0, |h| h.0);
    for &(id, seg, refs) in held {
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
}

/// Deletes the segments before the first one holding a live message:
/// nothing in them is needed any more.
fn reclaim_leading(disk: &dyn Disk, dir: &Path, live: &mut Live) -> std::io::Result<()> {
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
    Ok(())
}
