//! A queue that lives on another node of the cluster, as this node holds
//! it: a stub whose publishes, settlements and consumers are handed to the
//! link to the queue's node (`RemoteQueue`, built by the broker layer).
//! Messages the queue's node delivers to this node's consumers wait in the
//! stub's ready list, each carrying the home node's delivery tag where a
//! local queue keeps its store id, so acks, rejects and returns find their
//! way back through the same paths a local queue's take.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::message::Message;

/// The outcome of a publish forwarded to the queue's node.
#[derive(Debug, Default)]
pub struct Ticket(AtomicU8);

const PENDING: u8 = 0;
const TAKEN: u8 = 1;
const REFUSED: u8 = 2;

impl Ticket {
    /// A ticket waiting for its answer.
    pub fn new() -> Arc<Ticket> {
        Arc::new(Ticket(AtomicU8::new(PENDING)))
    }

    /// Records the answer: taken (made durable there) or refused.
    pub fn done(&self, taken: bool) {
        let _ = self.0.compare_exchange(
            PENDING,
            if taken { TAKEN } else { REFUSED },
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// None while waiting; then whether the queue's node took it.
    pub fn outcome(&self) -> Option<bool> {
        match self.0.load(Ordering::Acquire) {
            PENDING => None,
            s => Some(s == TAKEN),
        }
    }
}

/// Where a count asked of a queue's node goes (None: no answer).
pub type CountDone = Box<dyn FnOnce(Option<u32>) + Send>;

/// The link behind a stub queue.
pub trait RemoteQueue: Send + Sync + std::fmt::Debug {
    /// Sends a message to the queue on its node.
    fn forward(&self, msg: Message) -> Arc<Ticket>;
    /// Settles messages the queue's node delivered here, by its delivery
    /// tags: `acked` are done with, `requeued` go back to the queue.
    fn settle(&self, acked: Vec<u64>, requeued: Vec<u64>);
    /// The stub's consumers changed (`count`, the highest x-priority
    /// among them `top`): the link starts or stops taking deliveries from
    /// the queue's node for it, at that priority.
    fn consumers_changed(&self, count: usize, top: i32);
    /// Whether this node serves the queue itself (a replicated queue's
    /// leader): other nodes' links deliver from it here.
    fn serves_here(&self) -> bool {
        false
    }
    /// Asks the queue's node for one message for a basic.get here: it
    /// arrives in the stub's ready list (`Queue::push_from_home`), or the
    /// node says it has none (`Queue::fetched_empty`).
    fn fetch(&self) {}
    /// Purges the queue on its node; `done` gets how many ready messages
    /// went (None: the node did not answer).
    fn purge(&self, done: Box<dyn FnOnce(Option<u32>) + Send>) {
        done(None);
    }
    /// Asks the queue's node how many ready messages it has; `done` gets
    /// the count (None: the node did not answer).
    fn count(&self, done: Box<dyn FnOnce(Option<u32>) + Send>) {
        done(None);
    }
    /// A replicated queue's current leader (node id), if known.
    fn leader(&self) -> Option<u64> {
        None
    }
}
