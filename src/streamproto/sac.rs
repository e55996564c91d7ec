//! Single active consumer: subscriptions with `single-active-consumer:
//! true` and the same `name` on a stream form a group in which one member
//! at a time receives messages. The broker tells a member it is active with
//! ConsumerUpdate (active = 1); the client answers with the offset
//! specification to start from, and deliveries begin.
//!
//! Which member is active follows RabbitMQ's coordinator:
//! - A plain group (a stream that is not a super stream partition): the
//!   oldest member. When it goes (Unsubscribe, its connection closing, its
//!   stream deleted), the next one is activated.
//! - A group on partition `i` of a super stream (the subscription names it
//!   in its `super-stream` property): member `i % members`, so N consumers
//!   of an N-partition super stream get one partition each. When a join or
//!   a leave moves that choice away from the active member, the active
//!   member is first told to step down (ConsumerUpdate, active = 0; it stops
//!   delivering at once); once its client answers, the chosen one is
//!   activated. A member that leaves while stepping down counts as answered.
//!
//! Each message goes to the member's own connection task through the
//! channel every connection has for this.

use std::collections::HashMap;
use std::sync::LazyLock;

use parking_lot::Mutex;
use tokio::sync::mpsc::UnboundedSender;

/// A group: vhost, stream and consumer name.
pub type GroupKey = (String, String, String);

/// What the group tells one of its subscriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    /// Subscription `sub` (with `token`) is now the active one.
    Activate { sub: u8, token: u64 },
    /// Subscription `sub` must stop delivering and answer; then another
    /// member is activated.
    StepDown { sub: u8, token: u64 },
}

struct Member {
    tx: UnboundedSender<Update>,
    sub: u8,
    token: u64,
}

#[derive(Default)]
struct Group {
    /// Partition index within its super stream; 0 for a plain group (so
    /// the oldest member is the chosen one).
    partition: usize,
    members: Vec<Member>,
    /// The member that delivers (or was told to), by token.
    active: Option<u64>,
    /// The active member was told to step down and has not answered.
    stepping_down: bool,
}

static GROUPS: LazyLock<Mutex<HashMap<GroupKey, Group>>> = LazyLock::new(Default::default);

impl Group {
    /// The member RabbitMQ's rule picks.
    fn chosen(&self) -> Option<u64> {
        let n = self.members.len();
        (n > 0).then(|| self.members[self.partition % n].token)
    }

    fn send(&mut self, token: u64, update: impl Fn(u8, u64) -> Update) -> bool {
        let Some(i) = self.members.iter().position(|m| m.token == token) else {
            return false;
        };
        let m = &self.members[i];
        if m.tx.send(update(m.sub, m.token)).is_ok() {
            return true;
        }
        // Its connection went without leaving: drop it.
        self.members.remove(i);
        false
    }

    /// Brings the active member in line with the choice: activates the
    /// chosen one if none is active, or asks the active one to step down
    /// when the choice has moved.
    fn settle(&mut self) {
        loop {
            if self.stepping_down {
                return;
            }
            let Some(chosen) = self.chosen() else {
                self.active = None;
                return;
            };
            match self.active {
                None => {
                    if self.send(chosen, |sub, token| Update::Activate { sub, token }) {
                        self.active = Some(chosen);
                        return;
                    }
                }
                Some(a) if a == chosen => return,
                Some(a) => {
                    if self.send(a, |sub, token| Update::StepDown { sub, token }) {
                        self.stepping_down = true;
                        return;
                    }
                    self.active = None;
                }
            }
        }
    }
}

/// Adds a subscription to its group (on super stream partition
/// `partition`, or 0 for a plain stream) and settles who is active: the
/// new member may be told it is active through `tx`.
pub fn join(key: GroupKey, partition: usize, tx: UnboundedSender<Update>, sub: u8, token: u64) {
    let mut groups = GROUPS.lock();
    let g = groups.entry(key).or_default();
    g.partition = partition;
    g.members.push(Member { tx, sub, token });
    g.settle();
}

/// Removes a subscription from its group and settles who is active.
pub fn leave(key: &GroupKey, token: u64) {
    let mut groups = GROUPS.lock();
    let Some(g) = groups.get_mut(key) else {
        return;
    };
    let Some(i) = g.members.iter().position(|m| m.token == token) else {
        return;
    };
    g.members.remove(i);
    if g.active == Some(token) {
        g.active = None;
        g.stepping_down = false;
    }
    g.settle();
    if g.members.is_empty() {
        groups.remove(key);
    }
}

/// The client of a member told to step down has answered: activate the
/// chosen member.
pub fn stepped_down(key: &GroupKey, token: u64) {
    let mut groups = GROUPS.lock();
    let Some(g) = groups.get_mut(key) else {
        return;
    };
    if g.active == Some(token) && g.stepping_down {
        g.active = None;
        g.stepping_down = false;
        g.settle();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

    fn key(name: &str) -> GroupKey {
        ("/".into(), "s".into(), name.into())
    }

    fn member() -> (UnboundedSender<Update>, UnboundedReceiver<Update>) {
        unbounded_channel()
    }

    #[test]
    fn a_plain_group_keeps_the_oldest_member_active() {
        let k = key("plain");
        let (a, mut ra) = member();
        let (b, mut rb) = member();
        join(k.clone(), 0, a, 1, 101);
        assert_eq!(ra.try_recv(), Ok(Update::Activate { sub: 1, token: 101 }));
        join(k.clone(), 0, b, 2, 102);
        assert!(ra.try_recv().is_err() && rb.try_recv().is_err());
        leave(&k, 101);
        assert_eq!(rb.try_recv(), Ok(Update::Activate { sub: 2, token: 102 }));
        leave(&k, 102);
        assert!(!GROUPS.lock().contains_key(&k));
    }

    #[test]
    fn a_partition_moves_to_the_member_its_index_picks_after_a_step_down() {
        // Partition 1 of a super stream: with two members the second is
        // chosen, so the first steps down before the second starts.
        let k = key("part1");
        let (a, mut ra) = member();
        let (b, mut rb) = member();
        join(k.clone(), 1, a, 1, 201);
        assert_eq!(ra.try_recv(), Ok(Update::Activate { sub: 1, token: 201 }));
        join(k.clone(), 1, b, 2, 202);
        assert_eq!(ra.try_recv(), Ok(Update::StepDown { sub: 1, token: 201 }));
        assert!(
            rb.try_recv().is_err(),
            "activated before the step-down answer"
        );
        stepped_down(&k, 201);
        assert_eq!(rb.try_recv(), Ok(Update::Activate { sub: 2, token: 202 }));
        // The chosen one leaves: the remaining member takes over at once.
        leave(&k, 202);
        assert_eq!(ra.try_recv(), Ok(Update::Activate { sub: 1, token: 201 }));
        leave(&k, 201);
    }

    #[test]
    fn a_member_leaving_while_stepping_down_counts_as_answered() {
        let k = key("part-leave");
        let (a, mut ra) = member();
        let (b, mut rb) = member();
        join(k.clone(), 1, a, 1, 301);
        join(k.clone(), 1, b, 2, 302);
        assert_eq!(ra.try_recv(), Ok(Update::Activate { sub: 1, token: 301 }));
        assert_eq!(ra.try_recv(), Ok(Update::StepDown { sub: 1, token: 301 }));
        leave(&k, 301);
        assert_eq!(rb.try_recv(), Ok(Update::Activate { sub: 2, token: 302 }));
        leave(&k, 302);
    }

    #[test]
    fn a_member_whose_connection_went_is_skipped() {
        let k = key("gone");
        let (a, ra) = member();
        let (b, mut rb) = member();
        join(k.clone(), 0, a, 1, 401);
        join(k.clone(), 0, b, 2, 402);
        drop(ra);
        // The active member's connection is gone; a leave by it is what a
        // closing connection does, but even a lost one must not stall b.
        leave(&k, 401);
        assert_eq!(rb.try_recv(), Ok(Update::Activate { sub: 2, token: 402 }));
        leave(&k, 402);
    }
}
