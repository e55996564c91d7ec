//! A queue's ready messages by priority (x-max-priority): one ordered
//! `ReadyList` per priority level, highest served first. A queue declared
//! without x-max-priority has a single level and behaves exactly like a
//! plain list.

use std::sync::Arc;

use crate::delivery::QueuedMessage;
use crate::message::Message;
use crate::paging::{PagingConfig, ReadyList};
use crate::store::{Loc, MessageStore};

/// Ready messages, per priority level.
#[derive(Debug)]
pub struct ReadyQueue {
    /// Level `p` holds messages of priority `p` (the top level also those
    /// above it); a plain queue has only level 0.
    levels: Vec<ReadyList>,
}

impl Default for ReadyQueue {
    fn default() -> Self {
        ReadyQueue::new(None, None)
    }
}

impl ReadyQueue {
    /// Ready lists for priorities 0..=`max_priority` (one when None); the
    /// paging budget is shared between the levels.
    pub fn new(paging: Option<PagingConfig>, max_priority: Option<u8>) -> ReadyQueue {
        let n = max_priority.map_or(1, |m| m as usize + 1);
        let paging = paging.map(|mut p| {
            p.limit /= n;
            p
        });
        ReadyQueue {
            levels: (0..n).map(|_| ReadyList::new(paging.clone())).collect(),
        }
    }

    fn level(&self, priority: u8) -> usize {
        (priority as usize).min(self.levels.len() - 1)
    }

    fn level_of(&self, m: &Message) -> usize {
        if self.levels.len() == 1 {
            0
        } else {
            self.level(m.priority())
        }
    }

    /// The highest level holding messages.
    fn top(&self) -> Option<&ReadyList> {
        self.levels.iter().rev().find(|l| !l.is_empty())
    }

    /// Number of ready messages.
    pub fn len(&self) -> usize {
        match self.levels.as_slice() {
            [one] => one.len(),
            all => all.iter().map(ReadyList::len).sum(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.levels.iter().all(ReadyList::is_empty)
    }

    /// Messages paged out (or still in the store).
    pub fn paged(&self) -> usize {
        self.levels.iter().map(ReadyList::paged).sum()
    }

    /// Body bytes of the ready messages.
    pub fn body_bytes(&self) -> usize {
        self.levels.iter().map(ReadyList::body_bytes).sum()
    }

    /// Appends a message at the end of its level.
    pub fn push_back(&mut self, m: QueuedMessage) {
        let l = self.level_of(&m.msg);
        self.levels[l].push_back(m);
    }

    /// Puts a message back at the head of its level (it was just taken).
    pub fn push_front(&mut self, m: QueuedMessage) {
        let l = self.level_of(&m.msg);
        self.levels[l].push_front(m);
    }

    /// Puts a requeued message back at its original position in its level.
    pub fn put_back(&mut self, m: QueuedMessage) {
        let l = self.level_of(&m.msg);
        let list = &mut self.levels[l];
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

    /// Takes the message to deliver next: the oldest of the highest priority.
    /// A level whose messages all turn out unreadable yields to the next.
    pub fn pop_front(&mut self) -> Option<QueuedMessage> {
        self.levels.iter_mut().rev().find_map(ReadyList::pop_front)
    }

    /// Store ids of all ready messages.
    pub fn stored_ids(&self) -> Vec<u64> {
        match self.levels.as_slice() {
            [one] => one.stored_ids(),
            all => all.iter().flat_map(ReadyList::stored_ids).collect(),
        }
    }

    /// Drops everything.
    pub fn clear(&mut self) {
        self.levels.iter_mut().for_each(ReadyList::clear);
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
        self.levels[l].push_stored(store, loc, seq, stored, redelivered, deadline);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

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
        let mut r = ReadyQueue::new(None, Some(5));
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
        let mut r = ReadyQueue::new(None, Some(2));
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
        let mut r = ReadyQueue::new(None, None);
        r.push_back(msg(0, Some(0)));
        r.push_back(msg(1, Some(9)));
        assert_eq!(r.pop_front().unwrap().seq, 0);
    }
}
