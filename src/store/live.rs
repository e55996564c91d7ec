//! Live-set bookkeeping: which stored messages some queue still holds (a
//! reference count a message, one byte each for the common case), which
//! segment each message's record is in, and what each segment holds and
//! depends on (its live count, the older segments its ack, delivery and
//! drop records name, when its messages were written). The writer updates
//! it as buffers land on disk; reclaim and compaction (`reclaim.rs`)
//! decide from it what can be deleted or copied forward.

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::wall_ms;

/// A segment's share of the live messages.
#[derive(Debug, Clone)]
pub(super) struct Seg {
    /// The first message id written to it (`u64::MAX` until one is).
    pub(super) first_id: u64,
    /// Messages in it that some queue still holds.
    pub(super) live: u64,
    /// Messages written to it (for the compaction policy).
    pub(super) total: u64,
    /// Older segments holding messages that its ack, delivery and drop
    /// records name: it may only be deleted after them, or at recovery
    /// those messages would come back without their acks.
    pub(super) deps: Vec<u64>,
    /// Recovered from disk, where its records were not traced: treated as
    /// depending on every older segment, and never compacted (queues hold
    /// the recovered messages' locations in it).
    pub(super) after_all_older: bool,
    /// `live` when compaction last copied from it (`u64::MAX`: never).
    pub(super) compacted_at: u64,
    /// When its first record was written (wall clock, ms; 0: none yet).
    /// A recovered segment is dated by its file's last write.
    pub(super) started_ms: u64,
    /// (first id, wall-clock ms) of the buffers written to it, at most one
    /// a second and `MAX_MARKS` in all: when its messages were stored, to
    /// the second, for the age of a queue's oldest stored message.
    pub(super) marks: Vec<(u64, u64)>,
}

/// Time marks kept per segment; beyond it every other one is dropped, so
/// a segment filled slowly over days is dated coarser, not with more memory.
const MAX_MARKS: usize = 1024;

impl Seg {
    pub(super) fn new() -> Seg {
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
    pub(super) fn mark(&mut self, first: u64, now: u64) {
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
    pub(super) fn written_at(&self, id: u64) -> u64 {
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
pub(super) struct Live {
    /// Id of `refs[0]`.
    pub(super) base: u64,
    /// Queues holding each message; `OTHER` means "see `other`".
    pub(super) refs: VecDeque<u8>,
    /// Reference counts of 255 and more, and of live messages older than
    /// `base` (moved out when a few old messages would pin a long run).
    pub(super) other: HashMap<u64, u32>,
    /// Ids from recovery whose segment is not the one their id range says
    /// (written by an older warren that took ids outside the append lock).
    pub(super) strays: HashMap<u64, u64>,
    /// Segments, oldest first.
    pub(super) segments: BTreeMap<u64, Seg>,
    /// Messages copied forward by compaction whose older copies' segments
    /// may still exist: id → those segments.
    pub(super) moved_from: HashMap<u64, Vec<u64>>,
    /// Segments by the first message id written to them, for finding a
    /// message's segment in O(log segments).
    pub(super) by_first_id: BTreeMap<u64, u64>,
    /// When messages copied forward by compaction were first written
    /// (wall ms): their copies' segments are younger than they are.
    pub(super) born: HashMap<u64, u64>,
    pub(super) current: u64,
    /// Messages below this id are written to a segment.
    pub(super) placed: u64,
    /// Messages returned to their queue (`MessageStore::returned`): the
    /// queue and how often. Compaction writes the count with the copy.
    pub(super) returns: HashMap<u64, (super::record::QueueKey, u32)>,
    /// Messages held as dead letters (`MessageStore::discarded`): the
    /// queue and the reason's code. Compaction writes them with the copy.
    pub(super) discarded: HashMap<u64, (super::record::QueueKey, u8)>,
}

const OTHER: u8 = u8::MAX;
/// `refs` longer than this with a live head moves its older half's live
/// entries into `other`.
const REFS_COMPACT: usize = 1 << 22;

impl Live {
    /// A new message held by `n` queues; ids arrive in increasing order.
    pub(super) fn add(&mut self, id: u64, n: u32) {
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
    pub(super) fn release(&mut self, id: u64) -> bool {
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
        if !self.returns.is_empty() {
            self.returns.remove(&id);
        }
        if !self.discarded.is_empty() {
            self.discarded.remove(&id);
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
    pub(super) fn is_live(&self, id: u64) -> bool {
        let idx = id.wrapping_sub(self.base) as usize;
        if id >= self.base && idx < self.refs.len() && self.refs[idx] != OTHER {
            self.refs[idx] != 0
        } else {
            self.other.contains_key(&id)
        }
    }

    /// The segment whose id range holds `id`.
    pub(super) fn segment_of(&self, id: u64) -> Option<u64> {
        self.by_first_id
            .range(..=id)
            .next_back()
            .map(|(_, &seg)| seg)
    }

    /// The segment a written message's record is in now (`None` while it
    /// is still in the writer's buffer).
    pub(super) fn location(&self, id: u64) -> Option<u64> {
        if id >= self.placed {
            return None;
        }
        match self.strays.get(&id) {
            Some(&seg) => Some(seg),
            None => self.segment_of(id),
        }
    }

    /// How many queues hold `id`.
    pub(super) fn refs_of(&self, id: u64) -> u32 {
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
    pub(super) fn written(&mut self, next_id: u64, named: &[u64], moved: &[(u64, u64)]) {
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

    /// Forgets a deleted segment.
    pub(super) fn remove_segment(&mut self, seg: u64) {
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
    pub(super) fn place(&mut self, lo: u64, hi: u64) {
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
    pub(super) fn stored_at(&self, id: u64) -> Option<u64> {
        if let Some(&at) = self.born.get(&id) {
            return Some(at);
        }
        let seg = self.location(id)?;
        let s = self.segments.get(&seg)?;
        Some(s.written_at(id)).filter(|&t| t != 0)
    }

    /// When the oldest segment still on disk was started (wall ms).
    pub(super) fn oldest_segment_ms(&self) -> Option<u64> {
        self.segments
            .values()
            .map(|s| s.started_ms)
            .find(|&t| t != 0)
    }
}

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
