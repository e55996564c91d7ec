//! Direct reply-to (RabbitMQ's `amq.rabbitmq.reply-to`): an RPC client
//! consumes from the pseudo-queue `amq.rabbitmq.reply-to` in no-ack mode and
//! publishes requests with that name as their `reply_to`; the broker rewrites
//! it to `amq.rabbitmq.reply-to.<key>`, and a reply published to the default
//! exchange with that routing key goes straight to the client's consumer,
//! with no queue in between.

use std::sync::{Arc, Weak};

use ahash::AHashMap as HashMap;
use bytes::Bytes;
use parking_lot::Mutex;

use crate::message::Message;
use crate::queue::consumer::ConsumerChannel;

/// The pseudo-queue name clients consume from and put in `reply_to`.
pub const QUEUE: &str = "amq.rabbitmq.reply-to";
/// Prefix of the routing keys replies are published with.
pub const PREFIX: &str = "amq.rabbitmq.reply-to.";

/// The reply consumers of one vhost, by key.
#[derive(Debug, Default)]
pub struct Replies {
    consumers: Mutex<HashMap<String, ReplyConsumer>>,
}

/// A channel's reply consumer: where replies go, and its consumer tag.
#[derive(Debug, Clone)]
struct ReplyConsumer {
    channel: Weak<dyn ConsumerChannel>,
    tag: Bytes,
}

impl Replies {
    /// Registers a channel's reply consumer; returns its key.
    pub fn register<C: ConsumerChannel + 'static>(
        &self,
        channel: &Arc<C>,
        consumer_tag: Bytes,
    ) -> String {
        let channel: Weak<dyn ConsumerChannel> =
            Arc::downgrade(channel) as Weak<dyn ConsumerChannel>;
        let mut raw = [0u8; 16];
        let _ = getrandom::fill(&mut raw);
        let key: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        self.consumers.lock().insert(
            key.clone(),
            ReplyConsumer {
                channel,
                tag: consumer_tag,
            },
        );
        key
    }

    /// Removes a reply consumer.
    pub fn unregister(&self, key: &str) {
        self.consumers.lock().remove(key);
    }

    /// Delivers a reply published with routing key `PREFIX<key>`; returns
    /// the channel it was written to, or None if no such consumer exists
    /// (any more). The publisher pauses while that channel's connection is
    /// over its outbound cap, so a client that does not read its replies
    /// cannot grow the broker's memory.
    pub fn deliver(&self, routing_key: &str, msg: &Message) -> Option<Arc<dyn ConsumerChannel>> {
        let key = routing_key.strip_prefix(PREFIX)?;
        let ReplyConsumer { channel, tag } = self.consumers.lock().get(key).cloned()?;
        match channel.upgrade() {
            Some(ch) => ch.deliver_direct(&tag, msg).then_some(ch),
            None => {
                self.unregister(key);
                None
            }
        }
    }
}
