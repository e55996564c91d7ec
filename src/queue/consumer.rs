//! A queue's consumers as the queue sees them, and the entry type of its
//! ready list.
//!
//! A consumer delivers through its channel, which belongs to the session
//! layer above; the queue reaches it through the small `ConsumerChannel`
//! trait defined here, so the queue calls straight into the consumer's
//! channel (a publisher's task writes into the consumer's socket buffer)
//! without the queue layer importing the session layer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use bytes::Bytes;

use super::Queue;
use crate::message::Message;

/// What a queue needs from the channel a consumer delivers to. Both
/// delivery methods are called with the queue's lock held.
pub trait ConsumerChannel: Send + Sync + std::fmt::Debug {
    /// Delivers the message `take` yields to `consumer` if the consumer's
    /// prefetch, the channel and its socket allow. `take` is called at most
    /// once, only when the delivery goes ahead. Returns whether it did.
    fn try_deliver(
        &self,
        consumer: &Arc<Consumer>,
        queue: &Arc<Queue>,
        take: &mut dyn FnMut() -> Option<QueuedMessage>,
    ) -> bool;

    /// Hands a message fetched by basic.get to the client. Returns false if
    /// the channel is closing (the queue keeps the message).
    fn deliver_get(
        &self,
        queue: &Arc<Queue>,
        m: &QueuedMessage,
        no_ack: bool,
        remaining: u32,
    ) -> bool;

    /// Writes a direct reply-to message to consumer `consumer_tag` (no
    /// queue, no ack). Returns false if the channel is closing.
    fn deliver_direct(&self, consumer_tag: &[u8], msg: &Message) -> bool;

    /// Tells the client the broker cancelled its consumer `consumer_tag`
    /// (the queue was deleted), if the client asked for such notifications.
    fn notify_cancel(&self, consumer_tag: &[u8]);

    /// The channel as `Any`, for the layer that owns its concrete type.
    fn as_any(&self) -> &dyn std::any::Any;
}

/// A message in a queue, or on its way out of one.
#[derive(Debug)]
pub struct QueuedMessage {
    /// The message.
    pub msg: Message,
    /// Enqueue order; requeued messages go back to their place by it.
    pub seq: u64,
    /// Delivered before (requeued, or recovered after being delivered).
    pub redelivered: bool,
    /// Message store id, for persistent messages in a durable queue.
    pub stored: Option<u64>,
    /// When it expires (`ops::clock::now_ms` clock, per-queue or per-message
    /// TTL); 0 for never.
    pub deadline: u64,
}

/// A consumer attached to a queue.
#[derive(Debug)]
pub struct Consumer {
    /// Consumer tag, as raw short-string bytes.
    pub tag: Bytes,
    /// The channel it delivers to.
    pub channel: Arc<dyn ConsumerChannel>,
    /// Deliveries need no ack.
    pub no_ack: bool,
    /// basic.consume exclusive flag.
    pub exclusive: bool,
    /// Per-consumer prefetch (basic.qos global=false at consume time); 0: none.
    pub prefetch: u16,
    /// x-priority: consumers of higher priority are served first (a link
    /// from another node takes the highest of its consumers there, which
    /// may change).
    priority: std::sync::atomic::AtomicI32,
    /// Its deliveries awaiting ack (kept by its channel, for `prefetch`).
    pub unacked: AtomicU32,
    active: AtomicBool,
}

impl Consumer {
    /// Creates an active consumer of priority 0.
    pub fn new(
        tag: Bytes,
        channel: Arc<dyn ConsumerChannel>,
        no_ack: bool,
        exclusive: bool,
        prefetch: u16,
    ) -> Arc<Self> {
        Self::with_priority(tag, channel, no_ack, exclusive, prefetch, 0)
    }

    /// Creates an active consumer with a priority (basic.consume x-priority).
    pub fn with_priority(
        tag: Bytes,
        channel: Arc<dyn ConsumerChannel>,
        no_ack: bool,
        exclusive: bool,
        prefetch: u16,
        priority: i32,
    ) -> Arc<Self> {
        Arc::new(Consumer {
            tag,
            channel,
            no_ack,
            exclusive,
            prefetch,
            priority: std::sync::atomic::AtomicI32::new(priority),
            unacked: AtomicU32::new(0),
            active: AtomicBool::new(true),
        })
    }

    /// Its x-priority.
    pub fn priority(&self) -> i32 {
        self.priority.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Changes its x-priority (the queue re-sorts: `Queue::reprioritize`).
    pub fn set_priority(&self, p: i32) {
        self.priority.store(p, std::sync::atomic::Ordering::Relaxed);
    }

    /// The tag as text, for logs and errors.
    pub fn tag_str(&self) -> String {
        String::from_utf8_lossy(&self.tag).into_owned()
    }

    /// Stops deliveries to this consumer.
    pub fn deactivate(&self) {
        self.active.store(false, Ordering::Release);
    }

    /// Lets deliveries to this consumer begin.
    pub fn activate(&self) {
        self.active.store(true, Ordering::Release);
    }

    /// Whether the consumer still takes deliveries.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }
}

impl Consumer {
    /// Delivers the message `take` yields through the consumer's channel,
    /// if its prefetch, the channel and the socket allow (queue lock held).
    pub fn try_deliver(
        self: &Arc<Self>,
        queue: &Arc<Queue>,
        take: impl FnOnce() -> Option<QueuedMessage>,
    ) -> bool {
        let mut take = Some(take);
        self.channel
            .try_deliver(self, queue, &mut || take.take().and_then(|f| f()))
    }

    /// Cancels the consumer from the broker's side: no more deliveries, and
    /// the client is told (basic.cancel) if it asked to be.
    pub fn cancel_by_broker(&self) {
        self.deactivate();
        self.channel.notify_cancel(&self.tag);
    }
}
