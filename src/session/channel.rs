//! A channel's connection-local state: content assembly, publishing,
//! publisher confirms, transactions, and its consumers.
//!
//! The method handlers for the exchange, queue, basic, tx and confirm classes
//! live in `handlers`; this file owns the message path from basic.publish to
//! the queues, and the channel's shutdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use amq_protocol::protocol::{AMQPClass, basic, channel as chan_m, tx};
use bytes::{Bytes, BytesMut};

use crate::auth::{Access, Resource};
use crate::message::{Message, header_class_and_size, properties_valid};
use crate::protocol::error::{AmqpError, AmqpResult, code};
use crate::protocol::methods::{Method, Publish, write_method};
use crate::queue::Queue;
use crate::queue::consumer::{Consumer, QueuedMessage};
use crate::routing::exchange::Exchange;
use crate::session::context::ConnCtx;
use crate::session::delivery::{ChannelShared, Unacked};
use crate::session::method_ids::{BASIC_CLASS, BASIC_PUBLISH, InMethod};
use crate::session::outbound::ConnectionHandle;
use crate::vhost::deadletter::Reason;
use crate::vhost::direct_reply;

/// Where the channel is in receiving a message's content.
#[derive(Debug, Default)]
enum Content {
    /// Not inside a content-bearing method.
    #[default]
    Idle,
    /// basic.publish received; the content header comes next.
    Header(Publish),
    /// Header received; body frames come next.
    Body {
        publish: Publish,
        header: Bytes,
        size: usize,
        first: Option<Bytes>,
        rest: BytesMut,
    },
}

/// The streams a message was appended to, with its offset in each.
type StreamWaits = Vec<(Arc<crate::queue::stream::Stream>, u64)>;

/// A confirm-mode publish waiting for durability.
#[derive(Debug)]
struct Unsynced {
    /// Its publish sequence number (the delivery tag of its confirm).
    publish: u64,
    /// The store sequence it waits for (0: none).
    store: u64,
    /// The stream offsets it waits for.
    streams: StreamWaits,
    /// Its sends to queues of other nodes, each waiting for its answer.
    remote: Vec<Arc<crate::queue::remote::Ticket>>,
}

/// What a settled delivery becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// basic.ack: done with it.
    Ack,
    /// nack/reject with requeue.
    Requeue,
    /// nack/reject without requeue: dropped.
    Discard,
}

/// Work a transaction holds until commit.
#[derive(Debug, Default)]
pub struct Tx {
    /// (exchange, message, its TTL from the expiration property, mandatory).
    publishes: Vec<HeldPublish>,
    settles: Vec<(Unacked, Outcome)>,
    /// Message bytes held (`publishes` and `settles`).
    bytes: u64,
    /// `[limits] max_tx_bytes` (0: none).
    max_bytes: u64,
}

impl Tx {
    /// An empty transaction holding at most `max_bytes` of messages.
    pub fn new(max_bytes: u64) -> Tx {
        Tx {
            max_bytes,
            ..Tx::default()
        }
    }

    /// Counts `n` more bytes held; a channel error once over the limit (the
    /// channel's shutdown then drops the transaction).
    fn hold(&mut self, n: usize) -> AmqpResult<()> {
        self.bytes += n as u64;
        if self.max_bytes != 0 && self.bytes > self.max_bytes {
            return Err(AmqpError::channel(
                code::PRECONDITION_FAILED,
                format!(
                    "transaction holds more than {} bytes of messages (limits.max_tx_bytes); commit smaller transactions",
                    self.max_bytes
                ),
            ));
        }
        Ok(())
    }
}

/// A consumer as its channel knows it.
#[derive(Debug, Clone)]
pub struct ChannelConsumer {
    /// The consumer.
    pub consumer: Arc<Consumer>,
    /// Its queue.
    pub queue: Arc<Queue>,
}

/// One open channel.
#[derive(Debug)]
pub struct Channel {
    /// Channel number.
    pub id: u16,
    /// State shared with queues.
    pub shared: Arc<ChannelShared>,
    /// channel.close was sent; waiting for close-ok.
    pub closing: bool,
    content: Content,
    /// Consumers by tag.
    pub consumers: HashMap<Bytes, ChannelConsumer>,
    /// basic.qos global=false: prefetch for consumers created from now on.
    pub consumer_prefetch: u16,
    /// The last queue declared on this channel (for empty queue names).
    pub last_queue: Option<String>,
    /// confirm.select was received.
    pub confirm: bool,
    publish_seq: u64,
    confirmed: u64,
    /// Published messages waiting for the store or a stream to sync.
    unsynced: std::collections::VecDeque<Unsynced>,
    /// Publish seqs a queue refused (x-overflow reject-publish): nacked.
    refused: std::collections::VecDeque<u64>,
    /// tx.commit-ok waits for this store seq.
    commit_ok_at: Option<u64>,
    /// tx.select was received.
    pub tx: Option<Tx>,
    /// The direct reply-to consumer: (key, consumer tag).
    pub reply_consumer: Option<(String, Bytes)>,
    exchange_cache: Option<(Bytes, Arc<Exchange>, u64)>,
    route_buf: Vec<Arc<Queue>>,
}

/// channel.close for an error.
pub fn close_method(e: &AmqpError) -> AMQPClass {
    AMQPClass::Channel(chan_m::AMQPMethod::Close(chan_m::Close {
        reply_code: e.code,
        reply_text: e.text.as_str().into(),
        class_id: e.class_id,
        method_id: e.method_id,
    }))
}

/// channel.close-ok.
pub fn close_ok() -> AMQPClass {
    AMQPClass::Channel(chan_m::AMQPMethod::CloseOk(chan_m::CloseOk {}))
}

fn unexpected(what: &str, channel: u16) -> AmqpError {
    AmqpError::connection(
        code::UNEXPECTED_FRAME,
        format!("{what} on channel {channel} without a preceding basic.publish"),
    )
}

fn expected_header(got: &str) -> AmqpError {
    AmqpError::connection(
        code::UNEXPECTED_FRAME,
        format!("expected content header for class 60, {got}"),
    )
    .in_method(BASIC_PUBLISH)
}

fn unexpected_in_body() -> AmqpError {
    AmqpError::connection(
        code::UNEXPECTED_FRAME,
        "expected content body, got non content body frame instead",
    )
    .in_method(BASIC_PUBLISH)
}

impl Channel {
    /// A newly opened channel.
    pub fn new(id: u16, conn: Arc<ConnectionHandle>) -> Channel {
        Channel {
            id,
            shared: ChannelShared::new(id, conn),
            closing: false,
            content: Content::Idle,
            consumers: HashMap::new(),
            consumer_prefetch: 0,
            last_queue: None,
            confirm: false,
            publish_seq: 0,
            confirmed: 0,
            unsynced: Default::default(),
            refused: Default::default(),
            commit_ok_at: None,
            tx: None,
            reply_consumer: None,
            exchange_cache: None,
            route_buf: Vec::new(),
        }
    }

    /// Handles a method frame on this (open) channel.
    pub fn handle_method(&mut self, ctx: &mut ConnCtx, method: Method) -> AmqpResult<()> {
        match self.content {
            Content::Idle => {}
            Content::Header(_) => {
                return Err(expected_header("got non content header frame instead"));
            }
            Content::Body { .. } => return Err(unexpected_in_body()),
        }
        match method {
            Method::Publish(p) => {
                ctx.published = true;
                if p.immediate {
                    return Err(AmqpError::connection(
                        code::NOT_IMPLEMENTED,
                        "immediate=true",
                    ));
                }
                self.content = Content::Header(p);
                Ok(())
            }
            Method::Ack {
                delivery_tag,
                multiple,
            } => self.settle(delivery_tag, multiple, Outcome::Ack),
            Method::Other(class) => crate::session::handlers::handle(self, ctx, class),
        }
    }

    /// Handles a content header frame.
    pub fn handle_header(&mut self, ctx: &mut ConnCtx, payload: Bytes) -> AmqpResult<()> {
        let publish = match std::mem::take(&mut self.content) {
            Content::Header(p) => p,
            Content::Idle => return Err(unexpected("content header frame", self.id)),
            Content::Body { .. } => return Err(unexpected_in_body()),
        };
        let Some((class_id, size)) = header_class_and_size(&payload) else {
            return Err(AmqpError::connection(
                code::FRAME_ERROR,
                "content header frame too short",
            ));
        };
        if class_id != BASIC_CLASS {
            return Err(expected_header(&format!(
                "got one for class {class_id} instead"
            )));
        }
        if !properties_valid(&payload) {
            return Err(AmqpError::connection(
                code::SYNTAX_ERROR,
                "malformed message properties in content header",
            ));
        }
        let max = ctx.broker.config.amqp.max_message_size;
        if size > max {
            return Err(AmqpError::channel(
                code::PRECONDITION_FAILED,
                format!("message size {size} is larger than configured max size {max}"),
            )
            .in_method(BASIC_PUBLISH));
        }
        if size == 0 {
            return self.publish(ctx, publish, payload, Bytes::new());
        }
        self.content = Content::Body {
            publish,
            header: payload,
            size: size as usize,
            first: None,
            rest: BytesMut::new(),
        };
        Ok(())
    }

    /// Handles a content body frame.
    pub fn handle_body(&mut self, ctx: &mut ConnCtx, payload: Bytes) -> AmqpResult<()> {
        let Content::Body {
            size, first, rest, ..
        } = &mut self.content
        else {
            if matches!(self.content, Content::Header(_)) {
                return Err(expected_header("got non content header frame instead"));
            }
            return Err(unexpected("content body frame", self.id));
        };
        let have = first.as_ref().map_or(0, Bytes::len) + rest.len() + payload.len();
        if have > *size {
            return Err(AmqpError::connection(
                code::FRAME_ERROR,
                format!("content body exceeds the size announced in its header ({size} bytes)"),
            ));
        }
        if first.is_none() && rest.is_empty() {
            *first = Some(payload);
        } else {
            if let Some(f) = first.take() {
                rest.reserve(*size);
                rest.extend_from_slice(&f);
            }
            rest.extend_from_slice(&payload);
        }
        if have < *size {
            return Ok(());
        }
        let Content::Body {
            publish,
            header,
            first,
            rest,
            ..
        } = std::mem::take(&mut self.content)
        else {
            return Ok(());
        };
        let body = first.unwrap_or_else(|| rest.freeze());
        self.publish(ctx, publish, header, body)
    }

    /// The exchange a publish names, with the user's write permission
    /// checked; cached until the exchange or the permissions change.
    fn resolve_exchange(&mut self, ctx: &mut ConnCtx, name: &Bytes) -> AmqpResult<Arc<Exchange>> {
        let generation = ctx.refresh_permissions();
        if let Some((n, x, g)) = &self.exchange_cache
            && n == name
            && *g == generation
            && !x.is_deleted()
        {
            return Ok(x.clone());
        }
        let s = String::from_utf8_lossy(name);
        ctx.check(Access::Write, Resource::Exchange(&s))?;
        let x = ctx.vhost.exchange_or_404(&s)?;
        self.exchange_cache = Some((name.clone(), x.clone(), generation));
        Ok(x)
    }

    fn publish(
        &mut self,
        ctx: &mut ConnCtx,
        p: Publish,
        header: Bytes,
        body: Bytes,
    ) -> AmqpResult<()> {
        let x = self.resolve_exchange(ctx, &p.exchange)?;
        if x.internal {
            return Err(AmqpError::channel(
                code::ACCESS_REFUSED,
                format!(
                    "cannot publish to internal exchange '{}' in vhost '{}'",
                    x.name, ctx.vhost.name
                ),
            ));
        }
        let msg = Message::new(&p.exchange, &p.routing_key, &header, body);
        if msg.has_user_id() {
            let claimed = msg.properties().and_then(|p| p.user_id().clone());
            if let Some(claimed) = claimed
                && claimed.as_str() != ctx.user
            {
                let user = ctx.broker.user(&ctx.user);
                crate::auth::check_user_id(user.as_ref(), &ctx.user, claimed.as_str())?;
            }
        }
        let ttl = match msg.expiration() {
            None => None,
            Some(Ok(ttl)) => Some(ttl),
            Some(Err(why)) => return Err(AmqpError::channel(code::PRECONDITION_FAILED, why)),
        };
        let msg = if msg.has_reply_to() {
            self.with_reply_address(msg)?
        } else {
            msg
        };
        let (msg, cc) = if msg.may_have_cc() {
            sender_selected(msg)?
        } else {
            (msg, Vec::new())
        };
        ctx.handle.stats.publish.fetch_add(1, Relaxed); // stats
        if let Some(tx) = &mut self.tx {
            let n = msg.body_len() + msg.header().len();
            tx.publishes.push((x, msg, ttl, p.mandatory, cc));
            return tx.hold(n);
        }
        let (stored, refused, streams, remote) =
            self.route_and_enqueue(ctx, &x, msg, ttl, p.mandatory, &cc);
        if self.confirm {
            self.publish_seq += 1;
            if stored.is_some() || !streams.is_empty() || !remote.is_empty() {
                // Confirmed only once the store (and each stream's log)
                // has synced it.
                self.unsynced.push_back(Unsynced {
                    publish: self.publish_seq,
                    store: stored.unwrap_or(0),
                    streams,
                    remote,
                });
            }
            if refused {
                self.refused.push_back(self.publish_seq);
            }
            if !ctx.confirms_due.contains(&self.id) {
                ctx.confirms_due.push(self.id);
            }
        }
        Ok(())
    }

    /// Routes a message and enqueues it; persistent messages for durable
    /// queues go to the message store first. `ttl` is the message's own
    /// (expiration property). Returns the store sequence number a confirm
    /// must wait for, if the message was stored, and whether a queue
    /// refused it (x-overflow reject-publish). `cc` are further routing keys
    /// (the CC and BCC headers), routed like the message's own.
    fn route_and_enqueue(
        &mut self,
        ctx: &mut ConnCtx,
        x: &Arc<Exchange>,
        msg: Message,
        ttl: Option<u64>,
        mandatory: bool,
        cc: &[String],
    ) -> (
        Option<u64>,
        bool,
        StreamWaits,
        Vec<Arc<crate::queue::remote::Ticket>>,
    ) {
        let rk = String::from_utf8_lossy(msg.routing_key());
        if x.name.is_empty()
            && rk.starts_with(direct_reply::PREFIX)
            && let Some(target) = ctx.vhost.replies.deliver(&rk, &msg)
        {
            // A direct reply: straight to the waiting consumer. If that
            // connection's backlog is over the cap, this one stops reading
            // until it drains.
            if let Some(target) = target.as_any().downcast_ref::<ChannelShared>()
                && target.conn.over_cap()
            {
                ctx.reply_wait = Some(target.conn.clone());
            }
            return (None, false, Vec::new(), Vec::new());
        }
        let mut queues = std::mem::take(&mut self.route_buf);
        queues.clear();
        route(ctx, x, &msg, &rk, cc, &mut queues);
        let mut sync_seq = None;
        let mut refused = false;
        let mut streams = Vec::new();
        let mut remote = Vec::new();
        if queues.is_empty() {
            self.unroutable(ctx, &msg, &rk, mandatory);
        } else {
            let e = crate::queue::enqueue_routed(&queues, &msg, ctx.broker.durability.store(), ttl);
            sync_seq = e.sync_seq;
            refused |= e.rejected;
            streams = e.streams;
            remote = e.remote;
            if e.pressured.is_some() {
                ctx.flow_wait = e.pressured;
            }
            queues.clear();
        }
        self.route_buf = queues;
        (sync_seq, refused, streams, remote)
    }

    /// A message no queue takes: counted, and returned to the publisher
    /// (basic.return, 312 NO_ROUTE) if mandatory.
    fn unroutable(&self, ctx: &ConnCtx, msg: &Message, rk: &str, mandatory: bool) {
        let s = &ctx.handle.stats; // stats
        (if mandatory {
            &s.return_unroutable
        } else {
            &s.drop_unroutable
        })
        .fetch_add(1, Relaxed);
        if !mandatory {
            return;
        }
        let frame_max = ctx
            .handle
            .frame_max
            .load(std::sync::atomic::Ordering::Relaxed);
        let ret = AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
            reply_code: code::NO_ROUTE,
            reply_text: "NO_ROUTE".into(),
            exchange: String::from_utf8_lossy(msg.exchange()).as_ref().into(),
            routing_key: rk.into(),
        }));
        ctx.handle.write(|out| {
            write_method(out, self.id, &ret);
            msg.write_content(out, self.id, frame_max);
        });
    }

    /// Sends basic.ack for everything published since the last flush.
    ///
    /// Persistent messages stored for durable queues are confirmed only once
    /// the store reports them synced; confirms go out in order, so one
    /// unsynced message holds back the ones after it. Returns true while
    /// something is still waiting for the store.
    pub fn flush_confirms(&mut self, ctx: &ConnCtx) -> bool {
        let durable = ctx
            .broker
            .durability
            .store()
            .map_or(u64::MAX, |s| s.durable_seq());
        while self.unsynced.front().is_some_and(|u| {
            u.store <= durable
                && u.streams.iter().all(|(s, offset)| s.is_settled(*offset))
                && u.remote.iter().all(|t| t.outcome().is_some())
        }) {
            if let Some(u) = self.unsynced.pop_front()
                && u.remote.iter().any(|t| t.outcome() == Some(false))
            {
                // A queue of another node refused it (or could not be
                // reached): nacked in its turn.
                let at = self.refused.partition_point(|&r| r < u.publish);
                if self.refused.get(at) != Some(&u.publish) {
                    self.refused.insert(at, u.publish);
                }
            }
        }
        if let Some(at) = self.commit_ok_at
            && at <= durable
        {
            self.commit_ok_at = None;
            ctx.send(
                self.id,
                AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})),
            );
        }
        let upto = self
            .unsynced
            .front()
            .map_or(self.publish_seq, |u| u.publish - 1);
        // Refused messages are nacked in their turn: acks up to one, the
        // nack, then on.
        while let Some(&r) = self.refused.front()
            && r <= upto + 1
        {
            self.refused.pop_front();
            if r <= self.confirmed {
                continue;
            }
            if r - 1 > self.confirmed {
                let multiple = r - 1 - self.confirmed > 1;
                ctx.send(
                    self.id,
                    AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                        delivery_tag: r - 1,
                        multiple,
                    })),
                );
            }
            ctx.send(
                self.id,
                AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
                    delivery_tag: r,
                    multiple: false,
                    requeue: false,
                })),
            );
            self.confirmed = r;
        }
        if self.confirm && upto > self.confirmed {
            let multiple = upto - self.confirmed > 1;
            ctx.send(
                self.id,
                AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                    delivery_tag: upto,
                    multiple,
                })),
            );
            self.confirmed = upto;
        }
        !self.unsynced.is_empty() || self.commit_ok_at.is_some()
    }

    /// ack / nack / reject.
    pub fn settle(&mut self, tag: u64, multiple: bool, outcome: Outcome) -> AmqpResult<()> {
        let settled = self.shared.settle(tag, multiple)?;
        if outcome != Outcome::Ack
            && let Some(q) = settled
                .iter()
                .map(|u| &u.queue)
                .find(|q| q.stream().is_some())
        {
            // A stream keeps every message: nothing to reject or requeue.
            let what = "basic.nack and basic.reject";
            return Err(crate::queue::stream::args::not_supported(
                what, &q.name, &q.vhost,
            ));
        }
        if let Some(tx) = &mut self.tx {
            let n = settled.iter().map(|u| u.msg.body_len()).sum();
            tx.settles.extend(settled.into_iter().map(|u| (u, outcome)));
            return tx.hold(n);
        }
        self.apply_settles(settled, outcome);
        Ok(())
    }

    fn apply_settles(&self, settled: Vec<Unacked>, outcome: Outcome) {
        let mut wake: Vec<Arc<Queue>> = Vec::new();
        for u in &settled {
            if outcome == Outcome::Ack {
                u.queue.stats.ack.fetch_add(1, Relaxed); // stats
                if let (Some(s), Some(c)) = (u.queue.stream(), &u.consumer) {
                    s.acked(&u.queue, c, u.seq);
                }
            }
            if u.consumer.is_some() && !wake.iter().any(|q| Arc::ptr_eq(q, &u.queue)) {
                wake.push(u.queue.clone());
            }
        }
        if outcome == Outcome::Requeue {
            requeue(settled);
        } else if outcome == Outcome::Discard {
            // Their store records are settled as their queue dead-letters
            // them (after a queue took each, at least once).
            dead_letter_rejected(settled);
        } else {
            store_ack(&settled);
        }
        let redispatch_all = {
            let mut st = self.shared.state.lock();
            // Either flag: a consumer of any queue may have room again.
            st.take_over_budget() || st.global_prefetch != 0
        };
        if redispatch_all {
            self.redispatch();
        } else {
            for q in wake {
                q.dispatch();
            }
        }
    }

    /// Runs dispatch on the queue of every consumer of this channel.
    pub fn redispatch(&self) {
        for c in self.consumers.values() {
            c.queue.dispatch();
        }
    }

    /// tx.commit: publishes and settles what the transaction held.
    ///
    /// commit-ok is sent once everything the transaction stored is synced:
    /// right away, or by `flush_confirms` when the store catches up.
    pub fn commit(&mut self, ctx: &mut ConnCtx) {
        let Some(tx) = self.tx.as_mut() else { return };
        let publishes = std::mem::take(&mut tx.publishes);
        let settles = std::mem::take(&mut tx.settles);
        tx.bytes = 0;
        let mut last_stored = None;
        for (x, msg, ttl, mandatory, cc) in publishes {
            if let (Some(seq), ..) = self.route_and_enqueue(ctx, &x, msg, ttl, mandatory, &cc) {
                last_stored = Some(seq);
            }
        }
        for (u, outcome) in settles {
            self.apply_settles(vec![u], outcome);
        }
        match last_stored {
            Some(seq) => {
                self.commit_ok_at = Some(seq);
                if !ctx.confirms_due.contains(&self.id) {
                    ctx.confirms_due.push(self.id);
                }
            }
            None => ctx.send(
                self.id,
                AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})),
            ),
        }
    }

    /// tx.rollback: drops held publishes; held settles go back to unacked.
    pub fn rollback(&mut self) {
        let Some(tx) = self.tx.as_mut() else { return };
        tx.publishes.clear();
        tx.bytes = 0;
        let back: Vec<Unacked> = tx.settles.drain(..).map(|(u, _)| u).collect();
        self.shared.unsettle(back);
    }

    /// Closes the channel's deliveries: cancels its consumers (auto-deleting
    /// queues that lose their last one) and requeues everything unacked.
    pub fn shutdown(&mut self, ctx: &mut ConnCtx) {
        self.content = Content::Idle;
        let mut unacked = self.shared.close_deliveries();
        if let Some(tx) = self.tx.take() {
            unacked.extend(tx.settles.into_iter().map(|(u, _)| u));
        }
        for (_, c) in self.consumers.drain() {
            crate::session::handlers::detach_consumer(ctx, &c);
        }
        if let Some((key, _)) = self.reply_consumer.take() {
            ctx.vhost.replies.unregister(&key);
        }
        requeue(unacked);
    }

    /// A publish whose reply_to is `amq.rabbitmq.reply-to` gets this
    /// channel's reply address instead (RabbitMQ's direct reply-to).
    fn with_reply_address(&self, msg: Message) -> AmqpResult<Message> {
        let Some(props) = msg.properties() else {
            return Ok(msg);
        };
        if props.reply_to().as_ref().map(|r| r.as_str()) != Some(direct_reply::QUEUE) {
            return Ok(msg);
        }
        let Some((key, _)) = &self.reply_consumer else {
            return Err(AmqpError::channel(
                code::PRECONDITION_FAILED,
                "fast reply consumer does not exist",
            ));
        };
        let props = props.with_reply_to(format!("{}{key}", direct_reply::PREFIX).into());
        let header = crate::message::content_header(&props, msg.body_len() as u64)
            .ok_or_else(|| AmqpError::channel(code::INTERNAL_ERROR, "cannot encode properties"))?;
        Ok(Message::new(
            msg.exchange(),
            msg.routing_key(),
            &header,
            msg.body_bytes(),
        ))
    }
}

/// The queues `x` routes a message to, by its routing key `rk` and its
/// CC/BCC keys `cc`, into `queues`; a queue reached by several keys is in
/// it once.
fn route(
    ctx: &ConnCtx,
    x: &Arc<Exchange>,
    msg: &Message,
    rk: &str,
    cc: &[String],
    queues: &mut Vec<Arc<Queue>>,
) {
    let mut headers = || msg.properties().and_then(|p| p.headers().clone());
    ctx.vhost.route(x, rk, &mut headers, queues);
    if !cc.is_empty() {
        for key in cc {
            ctx.vhost.route(x, key, &mut headers, queues);
        }
        // A queue reached by several keys gets one copy.
        queues.sort_unstable_by_key(|q| Arc::as_ptr(q) as usize);
        queues.dedup_by(|a, b| Arc::ptr_eq(a, b));
    }
}

/// A publish a transaction holds until commit: exchange, message, its TTL,
/// mandatory, and its CC/BCC routing keys.
type HeldPublish = (Arc<Exchange>, Message, Option<u64>, bool, Vec<String>);

/// RabbitMQ's sender-selected distribution: the `CC` and `BCC` headers, if
/// arrays, add their string elements as routing keys; `BCC` is removed from
/// the message before it is delivered. A `CC` or `BCC` that is not an array
/// is refused as RabbitMQ refuses it.
fn sender_selected(msg: Message) -> AmqpResult<(Message, Vec<String>)> {
    use amq_protocol::types::AMQPValue;
    let Some(props) = msg.properties() else {
        return Ok((msg, Vec::new()));
    };
    let Some(headers) = props.headers().clone() else {
        return Ok((msg, Vec::new()));
    };
    let mut keys = Vec::new();
    for name in ["CC", "BCC"] {
        match headers.inner().get(name) {
            None => {}
            Some(AMQPValue::FieldArray(a)) => {
                for v in a.as_slice() {
                    keys.extend(crate::protocol::fields::string(v));
                }
            }
            Some(other) => {
                return Err(AmqpError::channel(
                    code::PRECONDITION_FAILED,
                    format!(
                        "invalid message: {{unacceptable_type_in_header,\"{name}\",{}}}",
                        crate::protocol::fields::erlang_type(other)
                    ),
                ));
            }
        }
    }
    if !headers.inner().contains_key("BCC") {
        return Ok((msg, keys));
    }
    let mut kept = amq_protocol::types::FieldTable::default();
    for (k, v) in headers.inner() {
        if k.as_str() != "BCC" {
            kept.insert(k.clone(), v.clone());
        }
    }
    let props = props.with_headers(kept);
    let header = crate::message::content_header(&props, msg.body_len() as u64)
        .ok_or_else(|| AmqpError::channel(code::INTERNAL_ERROR, "cannot encode properties"))?;
    let msg = Message::new(msg.exchange(), msg.routing_key(), &header, msg.body_bytes());
    Ok((msg, keys))
}

/// Requeues deliveries to their queues, each at its original position.
pub fn requeue(items: Vec<Unacked>) {
    for (q, items) in by_queue(items, |u| {
        Some(QueuedMessage {
            msg: u.msg,
            seq: u.seq,
            redelivered: true,
            stored: u.stored,
            deadline: u.deadline,
        })
    }) {
        q.requeue(items);
    }
}

/// Dead-letters rejected deliveries (nack/reject with requeue=false).
fn dead_letter_rejected(items: Vec<Unacked>) {
    for (q, msgs) in by_queue(items, |u| Some((u.msg, Reason::Rejected, u.stored))) {
        q.dead_letter_stored(msgs);
    }
}

/// Groups deliveries (owned or borrowed) by their queue, mapping each
/// (None: skipped). The queue handle is cloned once per group.
fn by_queue<U: std::borrow::Borrow<Unacked>, T>(
    items: impl IntoIterator<Item = U>,
    mut f: impl FnMut(U) -> Option<T>,
) -> Vec<(Arc<Queue>, Vec<T>)> {
    let mut out: Vec<(Arc<Queue>, Vec<T>)> = Vec::new();
    for u in items {
        let q = &u.borrow().queue;
        let group = out.iter().position(|(x, _)| Arc::ptr_eq(x, q));
        let new_group = group.is_none().then(|| q.clone());
        let Some(t) = f(u) else { continue };
        match (group, new_group) {
            (Some(i), _) => out[i].1.push(t),
            (None, Some(q)) => out.push((q, vec![t])),
            (None, None) => unreachable!("a new group has its queue"),
        }
    }
    out
}

/// Tells the message store that settled deliveries are done with.
fn store_ack(settled: &[Unacked]) {
    for (q, ids) in by_queue(settled, |u| u.stored) {
        q.store_ack(&ids);
    }
}
