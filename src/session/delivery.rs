//! What a channel shares with the queues that deliver to it: delivery tags,
//! the unacknowledged messages, prefetch counters and the consumers.
//!
//! Queues deliver from whichever task changed them (usually a publisher's):
//! they lock the consumer's channel state, assign the delivery tag, record the
//! message as unacked and append the frames to the connection's outbound
//! buffer, all under that lock, so delivery tags reach the client in order.
//! Lock order: queue, then channel state, then outbound buffer. The
//! connection's own task never takes a queue lock while holding a channel's.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{BufMut, BytesMut};
use parking_lot::Mutex;

use crate::message::Message;
use crate::protocol::codec::{FRAME_END, FRAME_METHOD, put_frame_header, put_short_str};
use crate::protocol::error::{AmqpError, AmqpResult, code};
use crate::queue::Queue;
use crate::queue::consumer::{Consumer, ConsumerChannel, QueuedMessage};
use crate::session::outbound::ConnectionHandle;

/// A delivery tag, unique and increasing within a channel.
pub type DeliveryTag = u64;

/// The part of a channel that queues and the connection task share.
#[derive(Debug)]
pub struct ChannelShared {
    /// Channel number.
    pub id: u16,
    /// The connection the channel belongs to.
    pub conn: Arc<ConnectionHandle>,
    /// Delivery bookkeeping.
    pub state: Mutex<DeliveryState>,
}

/// Mutable delivery bookkeeping of one channel.
#[derive(Debug)]
pub struct DeliveryState {
    /// False once the channel is closing: queues deliver nothing more to it.
    pub open: bool,
    /// channel.flow: false pauses deliveries.
    pub flow: bool,
    next_tag: DeliveryTag,
    /// Unacked deliveries in tag order.
    pub unacked: VecDeque<Unacked>,
    /// Channel-wide prefetch (basic.qos global=true); 0 means none.
    pub global_prefetch: u16,
    /// Prefetch for new consumers (basic.qos global=false), for listings.
    pub consumer_prefetch: u16,
    /// Unacked deliveries to consumers (what the channel-wide prefetch counts).
    consumer_unacked: u32,
    /// Body bytes of the unacked deliveries (consumers and basic.get).
    unacked_bytes: usize,
    /// A consumer was refused a delivery because `unacked_bytes` was over
    /// its queue's budget: the next settle re-runs dispatch.
    over_budget: bool,
}

impl DeliveryState {
    /// Takes the over-budget mark (set when a consumer was refused for it).
    pub fn take_over_budget(&mut self) -> bool {
        std::mem::take(&mut self.over_budget)
    }

    /// Body bytes of the unacked deliveries (consumers and basic.get).
    pub fn unacked_bytes(&self) -> usize {
        self.unacked_bytes
    }

    fn add_unacked(&mut self, u: Unacked) {
        self.unacked_bytes += u.msg.body_len();
        let pos = self.unacked.partition_point(|x| x.tag < u.tag);
        self.unacked.insert(pos, u);
    }

    fn removed_unacked(&mut self, u: &Unacked) {
        self.unacked_bytes = self.unacked_bytes.saturating_sub(u.msg.body_len());
    }
}

/// A delivered message awaiting ack, nack or reject.
#[derive(Debug)]
pub struct Unacked {
    /// Its delivery tag.
    pub tag: DeliveryTag,
    /// The queue it came from.
    pub queue: Arc<Queue>,
    /// The message.
    pub msg: Message,
    /// Its position in the queue, to requeue it where it was.
    pub seq: u64,
    /// The consumer it went to; `None` for basic.get.
    pub consumer: Option<Arc<Consumer>>,
    /// Message store id (persistent message in a durable queue).
    pub stored: Option<u64>,
    /// Its expiry, kept should it be requeued.
    pub deadline: u64,
    /// When it was delivered (`ops::clock::coarse_ms`), for consumer timeouts.
    pub delivered_at: u64,
}

/// Writes a basic.deliver method frame (hand-encoded: it is the hot path).
pub fn write_deliver(
    out: &mut BytesMut,
    channel: u16,
    consumer_tag: &[u8],
    tag: DeliveryTag,
    redelivered: bool,
    exchange: &[u8],
    routing_key: &[u8],
) {
    let size = 4 + 1 + consumer_tag.len() + 8 + 1 + 1 + exchange.len() + 1 + routing_key.len();
    out.reserve(size + 8);
    put_frame_header(out, FRAME_METHOD, channel, size);
    out.put_u16(60);
    out.put_u16(60);
    put_short_str(out, consumer_tag);
    out.put_u64(tag);
    out.put_u8(redelivered as u8);
    put_short_str(out, exchange);
    put_short_str(out, routing_key);
    out.put_u8(FRAME_END);
}

/// Writes a basic.get-ok method frame.
pub fn write_get_ok(
    out: &mut BytesMut,
    channel: u16,
    tag: DeliveryTag,
    redelivered: bool,
    exchange: &[u8],
    routing_key: &[u8],
    message_count: u32,
) {
    let size = 4 + 8 + 1 + 1 + exchange.len() + 1 + routing_key.len() + 4;
    put_frame_header(out, FRAME_METHOD, channel, size);
    out.put_u16(60);
    out.put_u16(71);
    out.put_u64(tag);
    out.put_u8(redelivered as u8);
    put_short_str(out, exchange);
    put_short_str(out, routing_key);
    out.put_u32(message_count);
    out.put_u8(FRAME_END);
}

impl ChannelShared {
    /// A new, open channel.
    pub fn new(id: u16, conn: Arc<ConnectionHandle>) -> Arc<Self> {
        let ch = Arc::new(ChannelShared {
            id,
            conn: conn.clone(),
            state: Mutex::new(DeliveryState {
                open: true,
                flow: true,
                next_tag: 1,
                unacked: VecDeque::new(),
                global_prefetch: 0,
                consumer_prefetch: 0,
                consumer_unacked: 0,
                unacked_bytes: 0,
                over_budget: false,
            }),
        });
        conn.add_channel(&ch);
        ch
    }

    /// Writes basic.deliver and the message's content frames.
    #[inline]
    fn write_delivery(
        &self,
        consumer_tag: &[u8],
        tag: DeliveryTag,
        redelivered: bool,
        msg: &crate::message::Message,
    ) {
        let frame_max = self.conn.frame_max.load(Ordering::Relaxed);
        self.conn.write(|out| {
            write_deliver(
                out,
                self.id,
                consumer_tag,
                tag,
                redelivered,
                msg.exchange(),
                msg.routing_key(),
            );
            msg.write_content(out, self.id, frame_max);
        });
    }

    /// Removes and returns the deliveries settled by an ack, nack or reject of
    /// `tag` (`multiple`: every tag up to it; tag 0 with multiple: all).
    pub fn settle(&self, tag: DeliveryTag, multiple: bool) -> AmqpResult<Vec<Unacked>> {
        let mut st = self.state.lock();
        let mut out = Vec::new();
        if multiple {
            let upto = if tag == 0 { u64::MAX } else { tag };
            // As RabbitMQ: the tag itself must be unacked (tag 0 means "all").
            if tag != 0 && st.unacked.binary_search_by_key(&tag, |u| u.tag).is_err() {
                return Err(unknown_tag(tag));
            }
            while st.unacked.front().is_some_and(|u| u.tag <= upto) {
                if let Some(u) = st.unacked.pop_front() {
                    out.push(u);
                }
            }
        } else {
            let idx = st
                .unacked
                .binary_search_by_key(&tag, |u| u.tag)
                .map_err(|_| unknown_tag(tag))?;
            if let Some(u) = st.unacked.remove(idx) {
                out.push(u);
            }
        }
        for u in &out {
            u.queue.stats.settled();
            st.removed_unacked(u);
            if let Some(c) = &u.consumer {
                c.unacked.fetch_sub(1, Ordering::Relaxed);
                st.consumer_unacked -= 1;
            }
        }
        Ok(out)
    }

    /// Closes the channel to deliveries and returns everything unacked.
    pub fn close_deliveries(&self) -> Vec<Unacked> {
        let mut st = self.state.lock();
        st.open = false;
        st.consumer_unacked = 0;
        st.unacked_bytes = 0;
        let out: Vec<Unacked> = st.unacked.drain(..).collect();
        for u in &out {
            u.queue.stats.settled();
            if let Some(c) = &u.consumer {
                c.unacked.fetch_sub(1, Ordering::Relaxed);
            }
        }
        out
    }

    /// Takes every unacked delivery (basic.recover).
    pub fn take_all_unacked(&self) -> Vec<Unacked> {
        self.settle(0, true).unwrap_or_default()
    }

    /// Sets the channel-wide prefetch (basic.qos global=true).
    pub fn set_global_prefetch(&self, count: u16) {
        self.state.lock().global_prefetch = count;
    }

    /// The channel's global prefetch (basic.qos global=true; 0: none).
    pub fn global_prefetch(&self) -> u16 {
        self.state.lock().global_prefetch
    }

    /// The consumer timeout (ms) an unacked delivery has outlived, if
    /// any: each delivery's queue's `x-consumer-timeout` (or policy), else
    /// `default`; 0 means none. Deliveries are in delivery order, so only
    /// those older than the shortest timeout in use are looked at.
    pub fn timed_out(&self, now: u64, default: u64) -> Option<u64> {
        let shortest = crate::queue::shortest_consumer_timeout(default);
        if shortest == 0 {
            return None;
        }
        let st = self.state.lock();
        for u in &st.unacked {
            let age = now.saturating_sub(u.delivered_at);
            if age <= shortest {
                break;
            }
            let limit = match u.queue.consumer_timeout() {
                0 => default,
                t => t,
            };
            if limit > 0 && age > limit {
                return Some(limit);
            }
        }
        None
    }

    /// Adds the lowest store id of this channel's unacked deliveries, per
    /// queue (keyed by `Arc::as_ptr` of the queue), to `into`.
    pub fn oldest_unacked_stored(&self, into: &mut std::collections::HashMap<usize, u64>) {
        let st = self.state.lock();
        for u in &st.unacked {
            if let Some(id) = u.stored {
                let k = Arc::as_ptr(&u.queue) as usize;
                into.entry(k)
                    .and_modify(|v| *v = (*v).min(id))
                    .or_insert(id);
            }
        }
    }

    /// Number of unacked deliveries on the channel.
    pub fn unacked_count(&self) -> usize {
        self.state.lock().unacked.len()
    }
}

fn unknown_tag(tag: DeliveryTag) -> AmqpError {
    AmqpError::channel(
        code::PRECONDITION_FAILED,
        format!("unknown delivery tag {tag}"),
    )
}

impl ChannelShared {
    /// Puts settled deliveries back as unacked (tx.rollback).
    pub fn unsettle(&self, items: Vec<Unacked>) {
        let mut st = self.state.lock();
        for u in items {
            u.queue.stats.unacked.fetch_add(1, Ordering::Relaxed);
            if let Some(c) = &u.consumer {
                c.unacked.fetch_add(1, Ordering::Relaxed);
                st.consumer_unacked += 1;
            }
            st.add_unacked(u);
        }
    }
}

impl ConsumerChannel for ChannelShared {
    /// Delivers a direct reply-to message to this channel's reply consumer
    /// (no ack: it is settled on delivery). False if the channel is closing.
    fn deliver_direct(&self, consumer_tag: &[u8], msg: &Message) -> bool {
        let mut st = self.state.lock();
        if !st.open {
            return false;
        }
        let tag = st.next_tag;
        st.next_tag += 1;
        self.write_delivery(consumer_tag, tag, false, msg);
        true
    }

    /// Delivers `msg` if the consumer's prefetch, its channel and its socket
    /// allow; the queue calls this with its own lock held. `take` is called
    /// only when the delivery goes ahead.
    fn try_deliver(
        &self,
        consumer: &Arc<Consumer>,
        queue: &Arc<Queue>,
        take: &mut dyn FnMut() -> Option<QueuedMessage>,
    ) -> bool {
        let ch = self;
        let mut st = ch.state.lock();
        if !st.open || !st.flow || !consumer.is_active() {
            return false;
        }
        if !consumer.no_ack {
            if consumer.prefetch != 0
                && consumer.unacked.load(Ordering::Relaxed) >= consumer.prefetch as u32
            {
                return false;
            }
            if st.global_prefetch != 0 && st.consumer_unacked >= st.global_prefetch as u32 {
                return false;
            }
            // Unacked messages are held in memory: a channel holding more
            // unacked body bytes than the queue's memory budget gets no more
            // until it settles some (an implicit prefetch by size, so that
            // prefetch 0 cannot pull a whole paged queue into RAM).
            let budget = queue.unacked_budget();
            if budget != 0 && st.unacked_bytes >= budget {
                st.over_budget = true;
                return false;
            }
        }
        if !ch.conn.can_accept_deliveries() {
            return false;
        }
        let Some(QueuedMessage {
            msg,
            seq,
            redelivered,
            stored,
            deadline,
        }) = take()
        else {
            // The queue's last messages could not be read back from disk.
            return false;
        };
        let msg = queue.for_delivery(msg);
        if let Some(id) = stored {
            queue.store_delivered(id, consumer.no_ack, redelivered);
        }
        let tag = st.next_tag;
        st.next_tag += 1;
        ch.write_delivery(&consumer.tag, tag, redelivered, &msg);
        queue.stats.delivered(false, consumer.no_ack, redelivered);
        if !consumer.no_ack {
            consumer.unacked.fetch_add(1, Ordering::Relaxed);
            st.consumer_unacked += 1;
            st.unacked_bytes += msg.body_len();
            st.unacked.push_back(Unacked {
                tag,
                queue: queue.clone(),
                msg,
                seq,
                consumer: Some(consumer.clone()),
                stored,
                deadline,
                delivered_at: crate::ops::clock::coarse_ms(),
            });
        }
        true
    }
    /// Hands a message fetched by basic.get to the client; the queue calls
    /// this with its lock held. Returns false if the channel is closing.
    fn deliver_get(
        &self,
        queue: &Arc<Queue>,
        m: &QueuedMessage,
        no_ack: bool,
        remaining: u32,
    ) -> bool {
        let mut st = self.state.lock();
        if !st.open {
            return false;
        }
        let msg = queue.for_delivery(m.msg.clone());
        let (seq, redelivered, stored) = (m.seq, m.redelivered, m.stored);
        if let Some(id) = stored {
            queue.store_delivered(id, no_ack, redelivered);
        }
        let tag = st.next_tag;
        st.next_tag += 1;
        let frame_max = self.conn.frame_max.load(Ordering::Relaxed);
        self.conn.write(|out| {
            write_get_ok(
                out,
                self.id,
                tag,
                redelivered,
                msg.exchange(),
                msg.routing_key(),
                remaining,
            );
            msg.write_content(out, self.id, frame_max);
        });
        queue.stats.delivered(true, no_ack, redelivered);
        if !no_ack {
            st.unacked_bytes += msg.body_len();
            st.unacked.push_back(Unacked {
                tag,
                queue: queue.clone(),
                msg,
                seq,
                consumer: None,
                stored,
                deadline: m.deadline,
                delivered_at: crate::ops::clock::coarse_ms(),
            });
        }
        true
    }

    /// Tells the client its consumer was cancelled by the broker (the queue
    /// was deleted), if the client asked for such notifications.
    fn notify_cancel(&self, consumer_tag: &[u8]) {
        if !self.conn.cancel_notify.load(Ordering::Relaxed) {
            return;
        }
        let st = self.state.lock();
        if !st.open {
            return;
        }
        self.conn.write(|out| {
            let size = 4 + 1 + consumer_tag.len() + 1;
            put_frame_header(out, FRAME_METHOD, self.id, size);
            out.put_u16(60);
            out.put_u16(30);
            put_short_str(out, consumer_tag);
            out.put_u8(1); // nowait: the client sends no cancel-ok
            out.put_u8(FRAME_END);
        });
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
