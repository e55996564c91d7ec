//! A queue's ready messages by priority (x-max-priority): one ordered
//! `ReadyList` per priority level, highest served first. A queue declared
//! without x-max-priority has a single level and behaves exactly like a
//! plain list.

use std::sync::Arc;

use crate::message::Message;
use crate::queue::consumer::QueuedMessage;
use crate::queue::paging::{Front, OnRead, PagingConfig, ReadDone, ReadyList};
use crate::store::{Loc, MessageStore};

/// Ready messages, per priority level.
///
/// A priority level costs nothing until a message of that priority
/// arrives: its list (and with it its pager and page file) is made then and
/// dropped again when the level drains. So `x-max-priority = 255` costs no
/// more than a plain queue until 256 priorities are actually in use.
pub struct ReadyQueue {
    /// The levels holding messages, lowest first: (level, its list). Level
    /// `p` holds messages of priority `p` (the top level also those above
    /// it). A plain queue has exactly one, level 0, always.
    levels: Vec<(u8, ReadyList)>,
    /// The top level (x-max-priority); None for a plain queue.
    max: Option<u8>,
    /// Paging for a new level's list (its share of the queue's budget).
    paging: Option<PagingConfig>,
    /// Where its lists' reads back complete.
    on_read: OnRead,
}

impl std::fmt::Debug for ReadyQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadyQueue")
            .field("levels", &self.levels)
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl Default for ReadyQueue {
    fn default() -> Self {
        ReadyQueue::new(None, None, std::sync::Arc::new(|_| {}))
    }
}

impl ReadyQueue {
    /// Ready lists for priorities 0..=`max_priority` (one when None); the
    /// paging budget is shared between the levels.
    /// Reads back from disk complete through `on_read` (which hands them
    /// to `install`).
    pub fn new(
        paging: Option<PagingConfig>,
        max_priority: Option<u8>,
        on_read: OnRead,
    ) -> ReadyQueue {
        let n = max_priority.map_or(1, |m| m as usize + 1);
        let paging = paging.map(|mut p| {
            p.limit /= n;
            p
        });
        let levels = match max_priority {
            None => vec![(0, ReadyList::new(paging.clone(), on_read.clone()))],
            Some(_) => Vec::new(),
        };
        ReadyQueue {
            levels,
            max: max_priority,
            paging,
            on_read,
        }
    }

    fn level(&self, priority: u8) -> u8 {
        self.max.map_or(0, |max| priority.min(max))
    }

    fn level_of(&self, m: &Message) -> u8 {
        match self.max {
            None => 0,
            Some(max) => m.priority().min(max),
        }
    }

    /// The list of `level`, made if the level was not in use.
    fn list(&mut self, level: u8) -> &mut ReadyList {
        let i = match self.levels.binary_search_by_key(&level, |(l, _)| *l) {
            Ok(i) => i,
            Err(i) => {
                let list = ReadyList::new(self.paging.clone(), self.on_read.clone());
                self.levels.insert(i, (level, list));
                i
            }
        };
        &mut self.levels[i].1
    }

    /// The highest level holding messages.
    fn top(&self) -> Option<&ReadyList> {
        self.levels
            .iter()
            .rev()
            .map(|(_, l)| l)
            .find(|l| !l.is_empty())
    }

    fn lists(&self) -> impl Iterator<Item = &ReadyList> {
        self.levels.iter().map(|(_, l)| l)
    }

    /// Number of ready messages.
    pub fn len(&self) -> usize {
        match self.levels.as_slice() {
            [(_, one)] => one.len(),
            _ => self.lists().map(ReadyList::len).sum(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.lists().all(ReadyList::is_empty)
    }

    /// Body bytes of the ready messages.
    pub fn body_bytes(&self) -> usize {
        self.lists().map(ReadyList::body_bytes).sum()
    }

    /// Appends a message at the end of its level.
    pub fn push_back(&mut self, m: QueuedMessage) {
        let l = self.level_of(&m.msg);
        self.list(l).push_back(m);
    }

    /// Puts a message back at the head of its level (it was just taken).
    pub fn push_front(&mut self, m: QueuedMessage) {
        let l = self.level_of(&m.msg);
        self.list(l).push_front(m);
    }

    /// Puts a requeued message back at its original position in its level.
    pub fn put_back(&mut self, m: QueuedMessage) {
        let l = self.level_of(&m.msg);
        let list = self.list(l);
        if list.front_seq().is_none_or(|s| s > m.seq) {
            list.push_front(m);
        } else {
            list.insert_by_seq(m);
        }
    }

    /// Expiry of the message that would be delivered next (0: none).
    pub fn front_deadline(&self) -> u64 {
        self.top().map_or(0, ReadyList::front_deadline)
    }

    /// Takes the message to deliver next: the oldest of the highest
    /// priority (see `ReadyList::take_front`). A level whose messages all
    /// turn out unreadable yields to the next; a level that drains is
    /// dropped (a plain queue keeps its one list).
    pub fn take_front(&mut self, need_body: bool) -> Front {
        if self.max.is_none() {
            return match self.levels.first_mut() {
                Some((_, l)) => l.take_front(need_body),
                None => Front::Empty,
            };
        }
        while let Some((_, top)) = self.levels.last_mut() {
            let m = top.take_front(need_body);
            if top.is_empty() {
                self.levels.pop();
            }
            if !matches!(m, Front::Empty) {
                return m;
            }
        }
        Front::Empty
    }

    /// The message to deliver next, if it is in memory (`None`: empty, or
    /// its head is loading).
    pub fn pop_front(&mut self) -> Option<QueuedMessage> {
        match self.take_front(true) {
            Front::Msg(m) => Some(m),
            _ => None,
        }
    }

    /// Whether the message to deliver next is in memory; if it is on disk
    /// it is asked for, and the queue delivers again when it is installed.
    pub fn head_ready(&mut self) -> bool {
        if self.max.is_none() {
            return self.levels.first_mut().is_some_and(|(_, l)| l.head_ready());
        }
        while let Some((_, top)) = self.levels.last_mut() {
            if top.head_ready() {
                return true;
            }
            if !top.is_empty() {
                return false;
            }
            self.levels.pop();
        }
        false
    }

    /// Whether the message to deliver next is being read back.
    pub fn is_loading(&self) -> bool {
        self.top().is_some_and(ReadyList::is_loading)
    }

    /// A read back completed: its list takes the messages.
    pub fn install(&mut self, done: ReadDone) {
        let Some(i) = self.levels.iter().position(|(_, l)| l.id() == done.list) else {
            return; // the level drained and was dropped meanwhile
        };
        self.levels[i].1.install(done);
        if self.max.is_some() && self.levels[i].1.is_empty() {
            self.levels.remove(i);
        }
    }

    /// The oldest store id among the ready messages (see
    /// `ReadyList::oldest_stored`).
    pub fn oldest_stored(&self) -> Option<u64> {
        self.lists().filter_map(ReadyList::oldest_stored).min()
    }

    /// Store ids of all ready messages.
    pub fn stored_ids(&self) -> Vec<u64> {
        match self.levels.as_slice() {
            [(_, one)] => one.stored_ids(),
            _ => self.lists().flat_map(ReadyList::stored_ids).collect(),
        }
    }

    /// Drops everything.
    pub fn clear(&mut self) {
        if self.max.is_some() {
            self.levels.clear();
        } else {
            self.levels.iter_mut().for_each(|(_, l)| l.clear());
        }
    }

    /// Appends a recovered message that stays in the store for now.
    #[allow(clippy::too_many_arguments)]
    pub fn push_stored(
        &mut self,
        store: &Arc<MessageStore>,
        loc: Loc,
        priority: u8,
        seq: u64,
        stored: u64,
        redelivered: bool,
        deadline: u64,
    ) {
        let l = self.level(priority);
        self.list(l)
            .push_stored(store, loc, seq, stored, redelivered, deadline);
    }

    /// Priority levels with a list right now.
    #[cfg(test)]
    fn levels_in_use(&self) -> usize {
        self.levels.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn noop() -> OnRead {
        Arc::new(|_| {})
    }

    fn msg(seq: u64, priority: Option<u8>) -> QueuedMessage {
        let mut h = vec![0, 60, 0, 0];
        h.extend_from_slice(&1u64.to_be_bytes());
        match priority {
            Some(p) => {
                h.extend_from_slice(&0x0800u16.to_be_bytes());
                h.push(p);
            }
            None => h.extend_from_slice(&[0, 0]),
        }
        QueuedMessage {
            msg: Message::new(b"", b"q", &h, Bytes::from_static(b"x")),
            seq,
            redelivered: false,
            stored: None,
            deadline: 0,
        }
    }

    #[test]
    fn higher_priorities_come_first_and_order_holds_within_one() {
        let mut r = ReadyQueue::new(None, Some(5), noop());
        for (seq, p) in [
            (0, None),
            (1, Some(3)),
            (2, Some(9)),
            (3, Some(3)),
            (4, Some(0)),
        ] {
            r.push_back(msg(seq, p));
        }
        assert_eq!(r.len(), 5);
        let order: Vec<u64> = std::iter::from_fn(|| r.pop_front())
            .map(|m| m.seq)
            .collect();
        // 9 is capped at 5; then the two 3s in order; then the 0s in order.
        assert_eq!(order, vec![2, 1, 3, 0, 4]);
    }

    #[test]
    fn a_requeued_message_returns_to_its_place_in_its_level() {
        let mut r = ReadyQueue::new(None, Some(2), noop());
        for seq in 0..3 {
            r.push_back(msg(seq, Some(1)));
        }
        let first = r.pop_front().unwrap();
        let second = r.pop_front().unwrap();
        r.put_back(second);
        r.put_back(first);
        let order: Vec<u64> = std::iter::from_fn(|| r.pop_front())
            .map(|m| m.seq)
            .collect();
        assert_eq!(order, vec![0, 1, 2]);
    }

    #[test]
    fn a_plain_queue_ignores_priorities() {
        let mut r = ReadyQueue::new(None, None, noop());
        r.push_back(msg(0, Some(0)));
        r.push_back(msg(1, Some(9)));
        assert_eq!(r.pop_front().unwrap().seq, 0);
    }

    #[test]
    fn priority_levels_cost_nothing_until_used_and_are_dropped_when_drained() {
        let dir = tempfile::tempdir().unwrap();
        let paging = PagingConfig {
            dir: dir.path().to_owned(),
            limit: 64 << 20,
            disk: Arc::new(crate::store::disk::RealDisk),
        };
        let mut r = ReadyQueue::new(Some(paging), Some(255), noop());
        assert_eq!(
            r.levels_in_use(),
            0,
            "x-max-priority=255 made lists up front"
        );
        assert!(r.is_empty() && r.pop_front().is_none());
        r.push_back(msg(0, Some(7)));
        r.push_back(msg(1, Some(200)));
        r.push_back(msg(2, Some(7)));
        assert_eq!(r.levels_in_use(), 2);
        assert_eq!(r.pop_front().unwrap().seq, 1);
        assert_eq!(r.levels_in_use(), 1, "the drained level 200 is dropped");
        let m = r.pop_front().unwrap();
        r.put_back(m);
        assert_eq!(r.len(), 2);
        r.clear();
        assert_eq!(r.levels_in_use(), 0);
    }
}
