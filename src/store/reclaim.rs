//! Giving disk space back. Reclaim deletes every segment that no live
//! message and no later record needs, wherever it sits in the log (a
//! segment's ack, delivery and drop records name messages in older
//! segments, so it goes only after those: see `Seg::deps`). Compaction
//! copies the few live messages out of a mostly dead segment to the head
//! of the log, so that a long-lived message does not pin its segment (and,
//! through the records that name it, every later one).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::live::Live;
use super::record::{self, Next, Record};
use super::{MessageStore, segment_path};

/// A segment whose live messages are at most 1/COMPACT_RATIO of those
/// written to it has them copied forward.
const COMPACT_RATIO: u64 = 8;

impl Live {
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
}

impl MessageStore {
    /// Deletes every segment no live message and no later record needs,
    /// wherever it sits (see `Live::deletable`).
    pub(super) fn reclaim(&self) {
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
                        let returns = live.returns.get(&id).cloned();
                        let discarded = live.discarded.get(&id).cloned();
                        drop(live);
                        p.copies.extend_from_slice(&data[at..at + n]);
                        // Its delivery count goes with it: the records
                        // that counted it may go with the old segments.
                        if let Some((q, count)) = returns {
                            let ids = vec![id; count as usize];
                            record::encode_queue_op(
                                &mut p.copies,
                                record::RETURNS,
                                &q.vhost,
                                &q.queue,
                                &ids,
                            );
                        }
                        if let Some((q, reason)) = discarded {
                            record::encode_queue_op(
                                &mut p.copies,
                                record::DISCARDED,
                                &q.vhost,
                                &q.queue,
                                &[id, u64::from(reason)],
                            );
                        }
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

    pub(super) fn run_compactor(self: Arc<Self>) {
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
