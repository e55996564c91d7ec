//! A queue: its ready messages, its consumers, and round-robin dispatch.
//!
//! The queue's state sits behind a mutex held for microseconds, never
//! across disk I/O. Whoever changes the queue (a publisher's task
//! enqueueing, a connection acking and freeing prefetch, a consumer
//! arriving, a paging thread that read messages back) runs `dispatch`,
//! which hands ready messages to consumers in turn, within their prefetch
//! limits.
//!
//! Owns: one queue's messages and consumers: arguments (`args`), the ready
//! list with priorities (`ready`) and paging to disk (`paging`). May use:
//! `store`, `message`, `protocol`, `ops`.

pub mod args;
pub mod consumer;
pub mod paging;
pub mod quorum;
pub mod ready;
pub mod remote;
pub mod stream;
pub mod timers;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use amq_protocol::types::FieldTable;
use parking_lot::Mutex;

use crate::message::Message;
use crate::protocol::error::{AmqpError, AmqpResult, code};
use crate::store::{MessageStore, RecoveredMessage};
use consumer::{Consumer, ConsumerChannel, QueuedMessage};

use crate::ops::clock::now_ms;
use crate::queue::args::{Overflow, QueueArgs};
use crate::queue::paging::{Front, PagingConfig, ReadDone};
use crate::queue::ready::ReadyQueue;
use timers::Kind;

/// A queue with consumers and at least this many ready messages asks its
/// publishers to slow down: their connections stop reading until the backlog
/// drops below `FLOW_LOW`. A publisher faster than its consumers thus turns
/// into TCP back-pressure instead of an ever-growing queue. Queues without
/// consumers are not throttled here (memory alarms cover them).
pub const FLOW_HIGH: usize = 32 * 1024;
/// See `FLOW_HIGH`.
pub const FLOW_LOW: usize = FLOW_HIGH / 2;

/// How often a queue tries again to dead-letter the messages it holds
/// because no queue took them (at least once; RabbitMQ 3.10 waits minutes).
const HELD_RETRY_MS: u64 = 1_000;

#[derive(Debug, Default)]
struct QueueState {
    /// A publisher is waiting for the backlog to drain.
    flow_waiting: bool,
    ready: ReadyQueue,
    consumers: Vec<Arc<Consumer>>,
    next_consumer: usize,
    next_seq: u64,
    had_consumers: bool,
    /// Effective TTL, limits and dead-lettering (arguments and policy).
    args: QueueArgs,
    /// Messages that left by expiry or a length limit, to dead-letter once
    /// the lock is released.
    dead: Vec<(QueuedMessage, Reason)>,
    /// Messages that left the same way from disk, unread (nothing to
    /// dead-letter): their store ids, and whether they expired.
    dropped: Vec<(Option<u64>, Reason)>,
    /// When the armed message timer fires (0: none armed).
    timer_at: u64,
    /// Dead-lettered messages of an at-least-once queue that no queue has
    /// taken yet, with their store ids (kept on disk until one has).
    held: std::collections::VecDeque<(Message, Reason, Option<u64>)>,
    /// Body bytes of `held`.
    held_bytes: u64,
    /// A retry of `held` is scheduled.
    held_retry: bool,
}

/// A queue's declared properties.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Survives a restart.
    pub durable: bool,
    /// Owned by one connection (its id).
    pub exclusive_owner: Option<u64>,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// x-arguments as declared.
    pub arguments: FieldTable,
}

/// A queue.
#[derive(Debug)]
pub struct Queue {
    /// Queue name.
    pub name: String,
    /// Its virtual host's name.
    pub vhost: Arc<str>,
    /// Declared properties.
    pub config: QueueConfig,
    state: Mutex<QueueState>,
    deleted: AtomicBool,
    drained: tokio::sync::Notify,
    /// Messages were read back from disk (a basic.get waiting for its
    /// head to load tries again).
    loaded: tokio::sync::Notify,
    store: Option<Arc<MessageStore>>,
    /// Message counters (management API, metrics).
    pub stats: crate::ops::stats::QueueStats,
    /// Its virtual host (dead-lettering, expiry).
    owner: Weak<dyn QueueOwner>,
    /// When it was last used (`ops::clock::now_ms`), for x-expires.
    last_used: AtomicU64,
    /// x-consumer-timeout (or the policy's consumer-timeout), ms; 0: the
    /// broker's `[limits] consumer_timeout`.
    consumer_timeout: AtomicU64,
    /// Most unacked body bytes a channel may hold before this queue stops
    /// delivering to it (`[storage] queue_memory_limit`; 0: no limit).
    unacked_budget: usize,
    /// A stream queue's log and cursors (its messages are there, not in
    /// `state`).
    stream: Option<Arc<stream::Stream>>,
    /// A quorum queue (`quorum`): deliveries carry x-delivery-count,
    /// returned messages go to the back (or past x-delivery-limit, out),
    /// and every message is stored whatever its delivery mode.
    quorum: bool,
    /// Set when the queue lives on another node of the cluster: this is
    /// its stub here (see `remote`).
    remote: std::sync::OnceLock<Arc<dyn remote::RemoteQueue>>,
    /// For a stub: the queue's ready, unacked and consumer counts as its
    /// node last reported them (every 5 s), for listings.
    reported: parking_lot::Mutex<Option<[u32; 3]>>,
    /// A stub's basic.get asking the queue's node: `FETCH_*`.
    fetch: std::sync::atomic::AtomicU8,
}

const FETCH_IDLE: u8 = 0;
const FETCH_WAITING: u8 = 1;
const FETCH_EMPTY: u8 = 2;

/// The shortest x-consumer-timeout any queue was ever given (ms; 0: none):
/// channels look only at deliveries older than this or the default.
static SHORTEST_QUEUE_TIMEOUT: AtomicU64 = AtomicU64::new(0);

/// The shortest consumer timeout that may apply to any delivery: the
/// broker default or a shorter per-queue one (0: none at all).
pub fn shortest_consumer_timeout(default: u64) -> u64 {
    match (SHORTEST_QUEUE_TIMEOUT.load(Ordering::Relaxed), default) {
        (0, d) => d,
        (q, 0) => q,
        (q, d) => q.min(d),
    }
}

fn note_queue_timeout(t: Option<u64>) {
    if let Some(t) = t.filter(|t| *t > 0) {
        let _ = SHORTEST_QUEUE_TIMEOUT.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |cur| {
            (cur == 0 || t < cur).then_some(t)
        });
    }
}

/// What enqueueing a message did.
#[derive(Debug, Default)]
pub struct Enqueued {
    /// The store sequence a confirm must wait for, if the message was stored.
    pub sync_seq: Option<u64>,
    /// A queue asking its publishers to slow down.
    pub pressured: Option<Arc<Queue>>,
    /// A queue refused it (x-overflow reject-publish): confirm with a nack.
    pub rejected: bool,
    /// Queues that took it.
    pub accepted: usize,
    /// Streams it was appended to, with its offset in each: a confirm
    /// waits until each stream has made that offset durable.
    pub streams: Vec<(Arc<stream::Stream>, u64)>,
    /// Queues of other nodes it was sent to: a confirm waits for each
    /// ticket (a nack if one is refused).
    pub remote: Vec<Arc<remote::Ticket>>,
}

/// Why a message was dead-lettered (the `reason` of its x-death entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// basic.reject or basic.nack with requeue=false.
    Rejected,
    /// Its TTL ran out.
    Expired,
    /// A length limit pushed it out (or refused it).
    Maxlen,
    /// A quorum queue's x-delivery-limit: returned once too often.
    DeliveryLimit,
}

impl Reason {
    /// Its code in the message store's records.
    pub fn code(self) -> u8 {
        match self {
            Reason::Rejected => 0,
            Reason::Expired => 1,
            Reason::Maxlen => 2,
            Reason::DeliveryLimit => 3,
        }
    }

    /// The reason with this store code (an unknown one reads as rejected).
    pub fn from_code(code: u8) -> Reason {
        match code {
            1 => Reason::Expired,
            2 => Reason::Maxlen,
            3 => Reason::DeliveryLimit,
            _ => Reason::Rejected,
        }
    }

    /// RabbitMQ's name for the reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Rejected => "rejected",
            Reason::Expired => "expired",
            Reason::Maxlen => "maxlen",
            Reason::DeliveryLimit => "delivery_limit",
        }
    }
}

/// What a queue asks of whoever holds it (its vhost): the queue layer
/// defines it so that a queue never imports its vhost.
pub trait QueueOwner: Send + Sync {
    /// Dead-letters messages that left `queue` (their store records already
    /// settled), per the queue's dead-letter arguments.
    /// Returns, for each, whether a queue took it. `retry`: these were
    /// dead-lettered before and held (at least once).
    fn dead_letter(
        &self,
        queue: &Arc<Queue>,
        items: Vec<(Message, Reason)>,
        retry: bool,
    ) -> Vec<bool>;

    /// Removes `queue`, unused past its x-expires, the way every queue is
    /// removed; false if it was no longer registered.
    fn remove_expired(&self, queue: &Arc<Queue>) -> bool;
}

/// What basic.get found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Got {
    /// A message, sent to the channel.
    Message,
    /// Nothing (the channel sends get-empty).
    Empty,
    /// The next message is being read back from disk.
    Loading,
}

/// What was left of a queue when it was deleted.
#[derive(Debug)]
pub struct Deleted {
    /// Ready messages dropped.
    pub message_count: u32,
    /// Consumers that were attached.
    pub consumers: Vec<Arc<Consumer>>,
}

impl Queue {
    /// A new, empty queue; `store` keeps its persistent messages (durable
    /// queues), `args` are its effective TTL, limits and dead-lettering.
    pub fn new(
        name: String,
        vhost: Arc<str>,
        owner: Weak<dyn QueueOwner>,
        config: QueueConfig,
        store: Option<Arc<MessageStore>>,
        paging: Option<PagingConfig>,
        args: QueueArgs,
    ) -> Arc<Queue> {
        Self::build(name, vhost, owner, config, store, paging, args, None)
    }

    /// A stream queue over `stream` (see `stream`).
    pub fn new_stream(
        name: String,
        vhost: Arc<str>,
        owner: Weak<dyn QueueOwner>,
        config: QueueConfig,
        stream: Arc<stream::Stream>,
    ) -> Arc<Queue> {
        let args = QueueArgs::default();
        Self::build(name, vhost, owner, config, None, None, args, Some(stream))
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        name: String,
        vhost: Arc<str>,
        owner: Weak<dyn QueueOwner>,
        config: QueueConfig,
        store: Option<Arc<MessageStore>>,
        paging: Option<PagingConfig>,
        args: QueueArgs,
        stream: Option<Arc<stream::Stream>>,
    ) -> Arc<Queue> {
        let levels = max_priority(&config.arguments);
        let quorum = config
            .arguments
            .inner()
            .get("x-queue-type")
            .and_then(crate::protocol::fields::string)
            .is_some_and(|t| t == "quorum");
        note_queue_timeout(args.consumer_timeout);
        let consumer_timeout = AtomicU64::new(args.consumer_timeout.unwrap_or(0));
        let unacked_budget = paging.as_ref().map_or(0, |p| p.limit);
        let q = Arc::new_cyclic(|me: &Weak<Queue>| {
            let me = me.clone();
            let on_read = Arc::new(move |done: ReadDone| {
                if let Some(q) = me.upgrade() {
                    q.page_in_done(done);
                }
            });
            Queue {
                name,
                vhost,
                config,
                state: Mutex::new(QueueState {
                    ready: ReadyQueue::new(paging, levels, on_read),
                    args,
                    ..Default::default()
                }),
                deleted: AtomicBool::new(false),
                drained: tokio::sync::Notify::new(),
                loaded: tokio::sync::Notify::new(),
                store,
                stats: Default::default(),
                owner,
                last_used: AtomicU64::new(now_ms()),
                consumer_timeout,
                unacked_budget,
                stream,
                quorum,
                remote: std::sync::OnceLock::new(),
                reported: parking_lot::Mutex::new(None),
                fetch: std::sync::atomic::AtomicU8::new(FETCH_IDLE),
            }
        });
        if let Some(s) = &q.stream {
            s.attach(Arc::downgrade(&q));
        }
        q.arm_expiry();
        q
    }

    /// Most unacked body bytes a channel may hold before this queue stops
    /// delivering to it (0: no limit).
    pub fn unacked_budget(&self) -> usize {
        self.unacked_budget
    }

    /// The queue's effective arguments.
    pub fn args(&self) -> QueueArgs {
        self.state.lock().args.clone()
    }

    /// Applies new effective arguments (a policy changed).
    pub fn set_args(self: &Arc<Self>, args: QueueArgs) {
        let mut st = self.state.lock();
        let expiry_changed = st.args.expires != args.expires;
        note_queue_timeout(args.consumer_timeout);
        self.consumer_timeout
            .store(args.consumer_timeout.unwrap_or(0), Ordering::Relaxed);
        st.args = args;
        self.enforce_limits(&mut st, now_ms());
        self.finish(st);
        if expiry_changed {
            self.arm_expiry();
        }
    }

    /// Its own consumer timeout in ms (0: the broker's default applies).
    pub fn consumer_timeout(&self) -> u64 {
        self.consumer_timeout.load(Ordering::Relaxed)
    }

    /// Dead-letter exchange and routing key, if the queue has one.
    pub fn dead_letter_target(&self) -> Option<(String, Option<String>)> {
        let st = self.state.lock();
        Some((st.args.dlx.clone()?, st.args.dlrk.clone()))
    }

    /// Marks the queue used (x-expires counts from the last use).
    pub fn touch(&self) {
        self.last_used.store(now_ms(), Ordering::Relaxed);
    }

    fn arm_expiry(self: &Arc<Self>) {
        let expires = self.state.lock().args.expires;
        if let Some(ms) = expires {
            let at = self.last_used.load(Ordering::Relaxed) + ms;
            timers::schedule(at, Kind::QueueExpiry, Arc::downgrade(self));
        }
    }

    /// A timer set by this queue fell due.
    pub fn on_timer(self: &Arc<Self>, kind: Kind) {
        // A stub's queue expires, and expires messages, on its own node
        // (a replicated quorum queue: on its leader).
        if self.is_deleted() || !self.served_here() {
            return;
        }
        match kind {
            Kind::DeadLetterRetry => {
                let held = {
                    let mut st = self.state.lock();
                    st.held_retry = false;
                    st.held_bytes = 0;
                    std::mem::take(&mut st.held)
                };
                self.try_dead_letter(held.into(), true);
            }
            Kind::StreamOffsets => {
                if let Some(s) = &self.stream {
                    s.flush_offsets();
                }
            }
            Kind::MessageTtl => {
                let mut st = self.state.lock();
                st.timer_at = 0;
                self.expire_head(&mut st, now_ms(), true);
                self.finish(st);
            }
            Kind::QueueExpiry => {
                let (expires, busy) = {
                    let st = self.state.lock();
                    (st.args.expires, !st.consumers.is_empty())
                };
                let Some(ms) = expires else { return };
                let now = now_ms();
                if busy {
                    self.last_used.store(now, Ordering::Relaxed);
                }
                let due = self.last_used.load(Ordering::Relaxed) + ms;
                if due > now {
                    timers::schedule(due, Kind::QueueExpiry, Arc::downgrade(self));
                    return;
                }
                if let Some(owner) = self.owner.upgrade()
                    && owner.remove_expired(self)
                {
                    tracing::info!(queue = %self.name.escape_debug(), vhost = %self.vhost.escape_debug(), "queue expired (x-expires {ms} ms unused); deleted");
                }
            }
        }
    }

    /// Moves expired messages at the head to the dead list. `inclusive`:
    /// a message due exactly now counts as expired (not so while
    /// dispatching, so a TTL of 0 still reaches a waiting consumer).
    fn expire_head(&self, st: &mut QueueState, now: u64, inclusive: bool) {
        loop {
            let d = st.ready.front_deadline();
            if d == 0 || d > now || (d == now && !inclusive) {
                return;
            }
            if !Self::take_head(st, Reason::Expired) {
                return;
            }
        }
    }

    /// Takes the head message for `why` (dead-lettered if the queue has a
    /// dead-letter exchange, else dropped, unread if it is on disk); false
    /// if the list is empty or its head is loading.
    fn take_head(st: &mut QueueState, why: Reason) -> bool {
        match st.ready.take_front(st.args.dlx.is_some()) {
            Front::Msg(r) => st.dead.push((r, why)),
            Front::Dropped(id) => st.dropped.push((id, why)),
            Front::Loading | Front::Empty => return false,
        }
        true
    }

    /// Messages were read back from disk (on a paging I/O thread): they
    /// take their place, and what waited for them goes on.
    fn page_in_done(self: &Arc<Self>, done: ReadDone) {
        let mut st = self.state.lock();
        st.ready.install(done);
        self.enforce_limits(&mut st, 0);
        self.dispatch_locked(&mut st);
        self.finish(st);
        self.loaded.notify_waiters();
    }

    /// Completes when messages were read back from disk (register with
    /// `Notified::enable` before checking `is_loading`).
    pub fn loaded(&self) -> tokio::sync::futures::Notified<'_> {
        self.loaded.notified()
    }

    /// Whether the next message is being read back from disk.
    pub fn is_loading(&self) -> bool {
        self.fetch.load(Ordering::Acquire) == FETCH_WAITING || self.state.lock().ready.is_loading()
    }

    /// Drops (or dead-letters) head messages beyond x-max-length and
    /// x-max-length-bytes, then expired ones. `now` is the time if the
    /// caller has read the clock, else 0 (read here only if needed).
    fn enforce_limits(&self, st: &mut QueueState, now: u64) {
        // reject-publish refuses new messages instead: nothing queued is
        // dropped (a quorum queue may be one over, a lowered limit more).
        let drop_head = st.args.overflow == Overflow::DropHead;
        if let Some(max) = st.args.max_length.filter(|_| drop_head) {
            while st.ready.len() as u64 > max {
                if !Self::take_head(st, Reason::Maxlen) {
                    break;
                }
            }
        }
        if let Some(max) = st.args.max_length_bytes.filter(|_| drop_head) {
            while st.ready.body_bytes() as u64 > max {
                if !Self::take_head(st, Reason::Maxlen) {
                    break;
                }
            }
        }
        if st.ready.front_deadline() != 0 {
            let now = if now == 0 { now_ms() } else { now };
            self.expire_head(st, now, true);
        }
    }

    /// Ends an operation: arms the message timer for the head, releases
    /// the lock, then settles what left the queue (store records and
    /// dead-lettering run without the lock: they may enqueue here again).
    fn finish(self: &Arc<Self>, mut st: parking_lot::MutexGuard<'_, QueueState>) {
        let d = st.ready.front_deadline();
        if d != 0 && (st.timer_at == 0 || d < st.timer_at) {
            st.timer_at = d;
            timers::schedule(d, Kind::MessageTtl, Arc::downgrade(self));
        }
        if st.dead.is_empty() && st.dropped.is_empty() {
            return;
        }
        let dead = std::mem::take(&mut st.dead);
        let dropped = std::mem::take(&mut st.dropped);
        if st.flow_waiting && st.ready.len() < FLOW_LOW {
            st.flow_waiting = false;
            self.drained.notify_waiters();
        }
        drop(st);
        let ids: Vec<u64> = dropped.iter().filter_map(|(id, _)| *id).collect();
        self.store_ack(&ids);
        let expired = dead
            .iter()
            .map(|(_, w)| w)
            .chain(dropped.iter().map(|(_, w)| w))
            .filter(|w| **w == Reason::Expired)
            .count();
        self.stats
            .expired
            .fetch_add(expired as u64, Ordering::Relaxed);
        self.dead_letter_stored(
            dead.into_iter()
                .map(|(r, why)| (r.msg, why, r.stored))
                .collect(),
        );
    }

    /// Whether it is a quorum queue.
    pub fn is_quorum(&self) -> bool {
        self.quorum
    }

    /// The message as a delivery from this queue carries it: from a quorum
    /// queue, with its delivery count (0 until it is first returned).
    pub fn for_delivery(&self, msg: Message) -> Message {
        if !self.quorum {
            return msg;
        }
        use crate::message::{Put, header_put_long};
        match header_put_long(msg.header(), quorum::DELIVERY_COUNT, 0, false) {
            Put::Kept => msg,
            Put::Spliced(h) => {
                Message::new(msg.exchange(), msg.routing_key(), &h, msg.body_bytes())
            }
            Put::Fallback if quorum::has_delivery_count(&msg) => msg,
            Put::Fallback => quorum::with_delivery_count(&msg, Some(0)),
        }
    }

    /// Dead-letters messages that left this queue (their store records
    /// already settled): at most once.
    pub fn dead_letter(self: &Arc<Self>, items: Vec<(Message, Reason)>) {
        if items.is_empty() {
            return;
        }
        let items = items
            .into_iter()
            .map(|(m, r)| (self.as_dead(m), r))
            .collect();
        if let Some(owner) = self.owner.upgrade() {
            owner.dead_letter(self, items, false);
        }
    }

    /// The message as it is dead-lettered: RabbitMQ drops a quorum
    /// queue's delivery count.
    fn as_dead(&self, m: Message) -> Message {
        if self.quorum {
            quorum::with_delivery_count(&m, None)
        } else {
            m
        }
    }

    /// Whether messages leaving the queue are dead-lettered at least once:
    /// a quorum queue with x-dead-letter-strategy at-least-once,
    /// x-overflow reject-publish and a dead-letter exchange (RabbitMQ's
    /// conditions; otherwise at most once).
    fn at_least_once(&self, args: &QueueArgs) -> bool {
        self.quorum
            && args.dead_letter_at_least_once
            && args.overflow == Overflow::RejectPublish
            && args.dlx.is_some()
    }

    /// Dead-letters messages that left this queue, with their store ids.
    /// At most once, the records are settled first. At least once, each
    /// record is settled only once a queue has taken the message (that
    /// queue's record is written to the store before the settle, so a
    /// crash in between leaves a copy in both, never in neither); what no
    /// queue takes is held and tried again every `HELD_RETRY_MS`.
    pub fn dead_letter_stored(self: &Arc<Self>, items: Vec<(Message, Reason, Option<u64>)>) {
        if items.is_empty() {
            return;
        }
        if !self.at_least_once(&self.state.lock().args) {
            let ids: Vec<u64> = items.iter().filter_map(|i| i.2).collect();
            self.store_ack(&ids);
            self.dead_letter(items.into_iter().map(|(m, r, _)| (m, r)).collect());
            return;
        }
        let items = items
            .into_iter()
            .map(|(m, r, id)| (self.as_dead(m), r, id))
            .collect();
        self.try_dead_letter(items, false);
    }

    /// One attempt at dead-lettering held (or newly dead) messages at
    /// least once.
    fn try_dead_letter(self: &Arc<Self>, items: Vec<(Message, Reason, Option<u64>)>, retry: bool) {
        let Some(owner) = self.owner.upgrade() else {
            return;
        };
        let msgs = items.iter().map(|(m, r, _)| (m.clone(), *r)).collect();
        let taken = owner.dead_letter(self, msgs, retry);
        let mut ids = Vec::new();
        let mut newly_held = Vec::new();
        let mut st = self.state.lock();
        for ((m, r, id), taken) in items.into_iter().zip(taken) {
            if taken || self.is_deleted() {
                ids.extend(id);
            } else {
                if !retry && let Some(id) = id {
                    newly_held.push((id, r.code()));
                }
                st.held_bytes += m.body_len() as u64;
                st.held.push_back((m, r, id));
            }
        }
        // Held across a restart too (the record goes in while the queue's
        // lock keeps the messages from being settled before it).
        if let (Some(store), false) = (&self.store, newly_held.is_empty()) {
            store.discarded(&self.vhost, &self.name, &newly_held);
        }
        if !st.held.is_empty() && !st.held_retry {
            st.held_retry = true;
            timers::schedule(
                now_ms() + HELD_RETRY_MS,
                Kind::DeadLetterRetry,
                Arc::downgrade(self),
            );
        }
        drop(st);
        self.store_ack(&ids);
    }

    /// Dead-lettered messages held until a queue takes them (at least
    /// once), and their body bytes.
    pub fn held_dead_letters(&self) -> (u64, u64) {
        let st = self.state.lock();
        (st.held.len() as u64, st.held_bytes)
    }

    /// Whether the queue has been deleted.
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// Enqueues a message and delivers what consumers can take.
    ///
    /// Returns true when the publisher should slow down: the queue has
    /// consumers but they are not keeping up (see `FLOW_HIGH`).
    /// `ttl` is the message's own expiration, if it has one. With
    /// x-overflow reject-publish a full queue refuses the message: the
    /// result's `rejected` is set.
    pub fn publish(
        self: &Arc<Self>,
        msg: Message,
        stored: Option<u64>,
        ttl: Option<u64>,
    ) -> Enqueued {
        if let Some(r) = self.remote.get() {
            if self.is_deleted() {
                return Enqueued::default();
            }
            self.stats.publish.fetch_add(1, Ordering::Relaxed);
            return Enqueued {
                remote: vec![r.forward(msg)],
                ..Enqueued::default()
            };
        }
        if let Some(s) = &self.stream {
            if self.is_deleted() {
                return Enqueued::default();
            }
            let offset = s.publish(&msg);
            self.stats.publish.fetch_add(1, Ordering::Relaxed);
            return Enqueued {
                streams: vec![(s.clone(), offset)],
                ..Enqueued::default()
            };
        }
        let mut st = self.state.lock();
        if self.is_deleted() {
            // Deleted a moment ago: the stored copy is not this queue's.
            drop(st);
            if let Some(id) = stored {
                self.store_ack(&[id]);
            }
            return Enqueued::default();
        }
        let ttl = match (st.args.message_ttl, ttl) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let now = if ttl.is_some() { now_ms() } else { 0 };
        if st.args.overflow != Overflow::DropHead && self.is_full(&st, &msg) {
            let dlx = st.args.overflow == Overflow::RejectPublishDlx;
            drop(st);
            if let Some(id) = stored {
                self.store_ack(&[id]);
            }
            if dlx {
                self.dead_letter(vec![(msg, Reason::Maxlen)]);
            }
            return Enqueued {
                rejected: true,
                ..Enqueued::default()
            };
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        st.ready.push_back(QueuedMessage {
            msg,
            seq,
            redelivered: false,
            stored,
            deadline: ttl.map_or(0, |t| now.saturating_add(t)),
        });
        self.stats.publish.fetch_add(1, Ordering::Relaxed);
        self.dispatch_locked(&mut st);
        if st.args.max_length.is_some() || st.args.max_length_bytes.is_some() || ttl.is_some() {
            self.enforce_limits(&mut st, now);
        }
        let pressured = st.ready.len() >= FLOW_HIGH && !st.consumers.is_empty();
        if pressured {
            st.flow_waiting = true;
        }
        self.finish(st);
        Enqueued {
            pressured: pressured.then(|| self.clone()),
            ..Enqueued::default()
        }
    }

    /// Whether one more message would exceed the queue's length limits. A
    /// quorum queue, as in RabbitMQ 3.10, refuses only once it is already
    /// over a limit (so it takes one message beyond it).
    fn is_full(&self, st: &QueueState, msg: &Message) -> bool {
        if self.quorum {
            return st
                .args
                .max_length
                .is_some_and(|m| st.ready.len() as u64 > m)
                || st
                    .args
                    .max_length_bytes
                    .is_some_and(|m| st.ready.body_bytes() as u64 > m);
        }
        st.args
            .max_length
            .is_some_and(|m| st.ready.len() as u64 >= m)
            || st
                .args
                .max_length_bytes
                .is_some_and(|m| (st.ready.body_bytes() + msg.body_len()) as u64 > m)
    }

    /// Whether publishers to this queue should still hold back.
    pub fn is_pressured(&self) -> bool {
        let st = self.state.lock();
        st.ready.len() >= FLOW_LOW && !st.consumers.is_empty() && !self.is_deleted()
    }

    /// Completes when the queue's backlog has drained below `FLOW_LOW`
    /// (register with `Notified::enable` before checking `is_pressured`).
    pub fn drained(&self) -> tokio::sync::futures::Notified<'_> {
        self.drained.notified()
    }

    /// Delivers ready messages to consumers that can take them.
    pub fn dispatch(self: &Arc<Self>) {
        if let Some(s) = &self.stream {
            s.dispatch(self);
            return;
        }
        let mut st = self.state.lock();
        self.dispatch_locked(&mut st);
        self.finish(st);
    }

    fn dispatch_locked(self: &Arc<Self>, st: &mut QueueState) {
        let n = st.consumers.len();
        if n == 0 {
            return;
        }
        if st.args.single_active {
            // Only the first consumer attached (still attached) receives.
            self.dispatch_to(st, 1);
        } else if st.consumers[0].priority() != st.consumers[n - 1].priority() {
            self.dispatch_by_priority(st);
        } else {
            self.dispatch_to(st, n);
        }
        if st.flow_waiting && st.ready.len() < FLOW_LOW {
            st.flow_waiting = false;
            self.drained.notify_waiters();
        }
    }

    /// Drops expired messages at the head; false when nothing is ready
    /// (or the head is being read back from disk: its arrival dispatches).
    fn ready_head(&self, st: &mut QueueState, now: &mut u64) -> bool {
        if st.ready.front_deadline() != 0 {
            if *now == 0 {
                *now = now_ms();
            }
            self.expire_head(st, *now, false);
        }
        st.ready.head_ready()
    }

    /// Consumers of mixed priorities: each message goes to the highest
    /// priority that can take it, round robin within a priority.
    fn dispatch_by_priority(self: &Arc<Self>, st: &mut QueueState) {
        let mut now = 0;
        while self.ready_head(st, &mut now) {
            let QueueState {
                ready,
                consumers,
                next_consumer,
                ..
            } = &mut *st;
            let mut delivered = false;
            let mut start = 0;
            while start < consumers.len() && !delivered {
                let p = consumers[start].priority();
                let len = consumers[start..]
                    .iter()
                    .take_while(|c| c.priority() == p)
                    .count();
                for k in 0..len {
                    let i = start + (*next_consumer + k) % len;
                    if consumers[i].try_deliver(self, || ready.pop_front()) {
                        *next_consumer = next_consumer.wrapping_add(k + 1);
                        delivered = true;
                        break;
                    }
                }
                start += len;
            }
            if !delivered {
                return;
            }
        }
    }

    /// Round robin over the first `n` consumers.
    fn dispatch_to(self: &Arc<Self>, st: &mut QueueState, n: usize) {
        let mut misses = 0;
        let mut now = 0;
        while misses < n && self.ready_head(st, &mut now) {
            if st.next_consumer >= n {
                st.next_consumer = 0;
            }
            let i = st.next_consumer;
            st.next_consumer += 1;
            let QueueState {
                ready, consumers, ..
            } = &mut *st;
            // None only if the rest of `ready` could not be read from disk.
            let delivered = consumers[i].try_deliver(self, || ready.pop_front());
            if delivered {
                misses = 0;
            } else {
                misses += 1;
            }
        }
    }

    /// basic.get: hands the next message to `channel` (`Got`), or finds
    /// the queue empty, or finds its next message being read back from
    /// disk (`Loading`: try again when `loaded` fires).
    pub fn get(self: &Arc<Self>, channel: &dyn ConsumerChannel, no_ack: bool) -> Got {
        if self.is_remote() && self.state.lock().ready.is_empty() {
            // A stub asks the queue's node for one.
            return match self.fetch.swap(FETCH_WAITING, Ordering::AcqRel) {
                FETCH_EMPTY => {
                    self.fetch.store(FETCH_IDLE, Ordering::Release);
                    self.stats.get_empty.fetch_add(1, Ordering::Relaxed);
                    Got::Empty
                }
                FETCH_WAITING => Got::Loading,
                _ => {
                    if let Some(r) = self.remote.get() {
                        r.fetch();
                    }
                    Got::Loading
                }
            };
        }
        let mut st = self.state.lock();
        if st.args.expires.is_some() {
            self.touch();
        }
        if st.ready.front_deadline() != 0 {
            self.expire_head(&mut st, now_ms(), true);
        }
        let r = match st.ready.take_front(true) {
            Front::Msg(r) => r,
            Front::Loading => {
                self.finish(st);
                return Got::Loading;
            }
            Front::Dropped(_) | Front::Empty => {
                self.stats.get_empty.fetch_add(1, Ordering::Relaxed);
                self.finish(st);
                return Got::Empty;
            }
        };
        let remaining = st.ready.len() as u32;
        if !channel.deliver_get(self, &r, no_ack, remaining) {
            st.ready.push_front(r);
            self.finish(st);
            return Got::Empty;
        }
        self.finish(st);
        Got::Message
    }

    /// Puts messages back at their original positions, flagged redelivered,
    /// and delivers again.
    pub fn requeue(self: &Arc<Self>, mut items: Vec<QueuedMessage>) {
        if let Some(r) = self.remote.get() {
            // They go back to the queue on its node.
            r.settle(Vec::new(), items.iter().filter_map(|i| i.stored).collect());
            return;
        }
        if items.is_empty() || self.stream.is_some() {
            // A stream keeps every message: nothing goes back.
            return;
        }
        let mut st = self.state.lock();
        if self.is_deleted() {
            drop(st);
            let ids: Vec<u64> = items.iter().filter_map(|i| i.stored).collect();
            self.store_ack(&ids);
            return;
        }
        if self.quorum {
            self.return_to_back(&mut st, items);
            self.dispatch_locked(&mut st);
            self.finish(st);
            return;
        }
        // Highest seq first, so the common case (all older than what is ready)
        // is a run of push_front.
        items.sort_unstable_by_key(|r| std::cmp::Reverse(r.seq));
        for mut r in items {
            r.redelivered = true;
            st.ready.put_back(r);
        }
        if st.ready.front_deadline() != 0 {
            // A message whose TTL ran out while it was unacked dies now.
            self.expire_head(&mut st, now_ms(), true);
        }
        self.dispatch_locked(&mut st);
        self.finish(st);
    }

    /// A quorum queue's returns: each message's delivery count goes up by
    /// one; past x-delivery-limit it is dead-lettered (reason
    /// `delivery_limit`) or dropped, otherwise it joins the back of the
    /// queue, as RabbitMQ 3.10 puts returned messages.
    fn return_to_back(&self, st: &mut QueueState, mut items: Vec<QueuedMessage>) {
        items.sort_unstable_by_key(|r| r.seq);
        let limit = st.args.delivery_limit;
        let mut returned = Vec::new();
        for mut r in items {
            let count = quorum::delivery_count(&r.msg) + 1;
            if limit.is_some_and(|l| count > l) {
                st.dead.push((r, Reason::DeliveryLimit));
                continue;
            }
            r.msg = quorum::with_delivery_count(&r.msg, Some(count));
            r.redelivered = true;
            r.seq = st.next_seq;
            st.next_seq += 1;
            returned.extend(r.stored);
            st.ready.push_back(r);
        }
        // The count survives a restart: recovery counts these records.
        if let (Some(store), false) = (&self.store, returned.is_empty()) {
            store.returned(&self.vhost, &self.name, &returned);
        }
        if st.ready.front_deadline() != 0 {
            self.expire_head(st, now_ms(), true);
        }
    }

    /// Attaches a consumer, enforcing exclusive consumers as RabbitMQ does.
    pub fn add_consumer(self: &Arc<Self>, consumer: Arc<Consumer>) -> AmqpResult<()> {
        self.add_consumer_at(consumer, stream::args::Start::default(), None)
    }

    /// Attaches a consumer; a stream's consumer starts at `start` (other
    /// queues ignore it).
    pub fn add_consumer_at(
        self: &Arc<Self>,
        consumer: Arc<Consumer>,
        start: stream::args::Start,
        filter: Option<stream::Filter>,
    ) -> AmqpResult<()> {
        if let Some(s) = &self.stream {
            if self.is_deleted() {
                return Err(AmqpError::no_queue(&self.name, &self.vhost));
            }
            // Exclusive consumers are not exclusive on a stream (RabbitMQ).
            s.add_consumer(self, consumer, start, filter);
            self.touch();
            return Ok(());
        }
        let mut st = self.state.lock();
        if self.is_deleted() {
            return Err(AmqpError::no_queue(&self.name, &self.vhost));
        }
        if st.consumers.iter().any(|c| c.exclusive)
            || (consumer.exclusive && !st.consumers.is_empty())
        {
            return Err(AmqpError::channel(
                code::ACCESS_REFUSED,
                format!(
                    "queue '{}' in vhost '{}' in exclusive use",
                    self.name, self.vhost
                ),
            ));
        }
        // Highest priority first; in arrival order within a priority. A
        // single active consumer queue keeps plain arrival order: the
        // active consumer stays active whatever joins after it.
        let at = if st.args.single_active {
            st.consumers.len()
        } else {
            st.consumers
                .partition_point(|c| c.priority() >= consumer.priority())
        };
        st.consumers.insert(at, consumer);
        st.had_consumers = true;
        let count = st.consumers.len();
        let top = Self::top_priority(&st);
        self.dispatch_locked(&mut st);
        self.finish(st);
        self.touch();
        if let Some(r) = self.remote.get() {
            r.consumers_changed(count, top);
        }
        Ok(())
    }

    /// The highest x-priority of the queue's consumers (0 without any).
    fn top_priority(st: &QueueState) -> i32 {
        st.consumers.iter().map(|c| c.priority()).max().unwrap_or(0)
    }

    /// The highest x-priority of its consumers (0 without any).
    pub fn consumers_top_priority(&self) -> i32 {
        Self::top_priority(&self.state.lock())
    }

    /// Gives consumer `c` priority `p` and puts it in its place (a link
    /// from another node whose consumers there changed).
    pub fn reprioritize(self: &Arc<Self>, c: &Arc<Consumer>, p: i32) {
        let mut st = self.state.lock();
        if c.priority() == p {
            return;
        }
        c.set_priority(p);
        if !st.args.single_active {
            // Stable: arrival order within a priority is kept.
            st.consumers
                .sort_by_key(|c| std::cmp::Reverse(c.priority()));
        }
        self.dispatch_locked(&mut st);
        self.finish(st);
    }

    /// Detaches a consumer. Returns true if the queue is auto-delete and has
    /// just lost its last consumer, so the caller should delete it.
    pub fn remove_consumer(&self, consumer: &Arc<Consumer>) -> bool {
        if let Some(s) = &self.stream {
            s.remove_consumer(consumer);
            return false;
        }
        let mut st = self.state.lock();
        let before = st.consumers.len();
        st.consumers.retain(|c| !Arc::ptr_eq(c, consumer));
        let removed = st.consumers.len() != before;
        if removed && st.consumers.is_empty() {
            self.touch();
        }
        if let Some(r) = self.remote.get().filter(|_| removed) {
            let count = st.consumers.len();
            let top = Self::top_priority(&st);
            drop(st);
            r.consumers_changed(count, top);
            // The queue's own node deletes it when auto-delete says so.
            return false;
        }
        removed && self.config.auto_delete && st.consumers.is_empty() && st.had_consumers
    }

    /// Makes this queue the stub of a queue that lives on another node:
    /// from now on its publishes, settlements and consumers go to `link`.
    pub fn set_remote(&self, link: Arc<dyn remote::RemoteQueue>) {
        let _ = self.remote.set(link);
    }

    /// Whether this queue lives on another node (this is its stub).
    pub fn is_remote(&self) -> bool {
        self.remote.get().is_some_and(|r| !r.serves_here())
    }

    /// A replicated queue's current leader (node id), if it is one and
    /// has a leader.
    pub fn replicated_leader(&self) -> Option<u64> {
        self.remote.get().and_then(|r| r.leader())
    }

    /// Whether this queue's contents are kept elsewhere (another node, or
    /// a replicated queue's Raft group): its publishes and settlements go
    /// through its `RemoteQueue`.
    pub fn is_linked(&self) -> bool {
        self.remote.get().is_some()
    }

    /// Its messages are served by this node: a local queue, or a
    /// replicated quorum queue this node leads (whose settlements go to
    /// its group).
    pub fn served_here(&self) -> bool {
        self.remote.get().is_none_or(|r| r.serves_here())
    }

    /// A message the queue's node delivered for this stub's consumers:
    /// it waits in the ready list with `tag` (the home node's delivery
    /// tag) where a local message keeps its store id.
    pub fn push_from_home(self: &Arc<Self>, msg: Message, tag: u64, redelivered: bool) -> bool {
        let mut st = self.state.lock();
        if self.is_deleted() {
            return false;
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        st.ready.push_back(QueuedMessage {
            msg,
            seq,
            redelivered,
            stored: Some(tag),
            deadline: 0,
        });
        self.dispatch_locked(&mut st);
        self.finish(st);
        if self
            .fetch
            .compare_exchange(
                FETCH_WAITING,
                FETCH_IDLE,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        {
            self.loaded.notify_waiters();
        }
        true
    }

    /// A message of a replicated quorum queue this node leads, put in the
    /// ready list as its group applies it (`tag`: its id in the group;
    /// `enqueued_at`: when the leader took it, wall clock, for TTLs). The queue's
    /// length limits (drop-head) and TTLs apply as to a local queue: what
    /// leaves is settled in the group (and dead-lettered) through the
    /// handle.
    pub fn push_replicated(
        self: &Arc<Self>,
        msg: Message,
        tag: u64,
        redelivered: bool,
        enqueued_at: u64,
    ) -> bool {
        let mut st = self.state.lock();
        if self.is_deleted() {
            return false;
        }
        let own = msg.expiration().and_then(Result::ok);
        let ttl = match (st.args.message_ttl, own) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let seq = st.next_seq;
        st.next_seq += 1;
        st.ready.push_back(QueuedMessage {
            msg,
            seq,
            redelivered,
            stored: Some(tag),
            deadline: ttl.map_or(0, |t| {
                crate::ops::clock::local_of_wall(enqueued_at.saturating_add(t))
            }),
        });
        let limited =
            st.args.max_length.is_some() || st.args.max_length_bytes.is_some() || ttl.is_some();
        if limited {
            self.enforce_limits(&mut st, now_ms());
        }
        self.dispatch_locked(&mut st);
        self.finish(st);
        true
    }

    /// Whether a replicated quorum queue this node leads refuses `msg`
    /// (x-overflow reject-publish, already over a limit); with
    /// reject-publish-dlx the message is dead-lettered.
    pub fn refuses_replicated(self: &Arc<Self>, msg: &Message) -> bool {
        let st = self.state.lock();
        if st.args.overflow == Overflow::DropHead || !self.is_full(&st, msg) {
            return false;
        }
        let dlx = st.args.overflow == Overflow::RejectPublishDlx;
        drop(st);
        if dlx {
            self.dead_letter(vec![(msg.clone(), Reason::Maxlen)]);
        }
        true
    }

    /// Records what the queue's node reported of it (a stub): ready,
    /// unacked, consumers.
    pub fn set_reported(&self, counts: [u32; 3]) {
        *self.reported.lock() = Some(counts);
    }

    /// Ready and unacked messages and consumers as listings show them: a
    /// stub's as its node last reported them (its own until then), else
    /// its own.
    pub fn listing_counts(&self) -> [u64; 3] {
        if !self.served_here()
            && let Some([ready, unacked, consumers]) = *self.reported.lock()
        {
            return [ready.into(), unacked.into(), consumers.into()];
        }
        [
            self.message_count().into(),
            self.stats.unacked(),
            self.consumer_count().into(),
        ]
    }

    /// A stub's ready-message count, asked of the queue's node (None if it
    /// did not answer in 5 s). None for a queue that is not a stub.
    pub fn count_at_home(&self) -> Option<impl std::future::Future<Output = Option<u32>> + use<>> {
        self.ask_home(|r, done| r.count(done))
    }

    /// A stub's purge, done on the queue's node: how many ready messages
    /// went (None: the node did not answer in 5 s). None for a queue that
    /// is not a stub.
    pub fn purge_at_home(&self) -> Option<impl std::future::Future<Output = Option<u32>> + use<>> {
        self.ask_home(|r, done| r.purge(done))
    }

    /// Asks the queue's node (through `ask`) for a count; None for a queue
    /// served here.
    fn ask_home(
        &self,
        ask: fn(&dyn remote::RemoteQueue, remote::CountDone),
    ) -> Option<impl std::future::Future<Output = Option<u32>> + use<>> {
        let r = self.remote.get().filter(|r| !r.serves_here())?.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        ask(
            &*r,
            Box::new(move |n| {
                let _ = tx.send(n);
            }),
        );
        Some(async move {
            tokio::time::timeout(std::time::Duration::from_secs(5), rx)
                .await
                .ok()
                .and_then(Result::ok)
                .flatten()
        })
    }

    /// The queue's node had no message for this stub's basic.get.
    pub fn fetched_empty(&self) {
        if self
            .fetch
            .compare_exchange(
                FETCH_WAITING,
                FETCH_EMPTY,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        {
            self.loaded.notify_waiters();
        }
    }

    /// Drops all ready messages; returns how many.
    pub fn purge(&self) -> u32 {
        if !self.served_here() {
            // What waits here is on its way to consumers; the queue's own
            // node purges its ready messages.
            return 0;
        }
        let mut st = self.state.lock();
        let n = st.ready.len() as u32;
        let ids = st.ready.stored_ids();
        st.ready.clear();
        self.store_ack(&ids);
        self.drained.notify_waiters();
        n
    }

    /// Ready messages (what queue.declare-ok reports).
    pub fn message_count(&self) -> u32 {
        if let Some(s) = &self.stream {
            return u32::try_from(s.message_count()).unwrap_or(u32::MAX);
        }
        self.state.lock().ready.len() as u32
    }

    /// The store id of its oldest ready persistent message, if any (see
    /// `ReadyList::oldest_stored`; unacked deliveries are the channels').
    pub fn oldest_ready_stored(&self) -> Option<u64> {
        self.state.lock().ready.oldest_stored()
    }

    /// The store this queue keeps its persistent messages in (durable queues).
    pub fn store(&self) -> Option<&Arc<MessageStore>> {
        self.store.as_ref()
    }

    /// Attached consumers.
    pub fn consumer_count(&self) -> u32 {
        if let Some(s) = &self.stream {
            return s.consumers().len() as u32;
        }
        self.state.lock().consumers.len() as u32
    }

    /// Attached consumers (for listings).
    pub fn consumers(&self) -> Vec<Arc<Consumer>> {
        if let Some(s) = &self.stream {
            return s.consumers();
        }
        self.state.lock().consumers.clone()
    }

    /// Removes up to `n` messages from the head of the queue, with their
    /// positions and redelivered flags (the management API's "get"; put them
    /// back with `requeue`).
    pub fn take(&self, n: usize) -> Vec<QueuedMessage> {
        let mut st = self.state.lock();
        let n = n.min(st.ready.len());
        let out: Vec<_> = (0..n).map_while(|_| st.ready.pop_front()).collect();
        if st.flow_waiting && st.ready.len() < FLOW_LOW {
            st.flow_waiting = false;
            self.drained.notify_waiters();
        }
        out
    }

    /// `take`, waiting (up to `wait` in all) for messages being read back
    /// from disk rather than returning fewer.
    pub async fn take_loaded(&self, n: usize, wait: std::time::Duration) -> Vec<QueuedMessage> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut out = Vec::new();
        loop {
            let loaded = self.loaded();
            tokio::pin!(loaded);
            loaded.as_mut().enable();
            out.extend(self.take(n - out.len()));
            if out.len() >= n || !self.is_loading() {
                return out;
            }
            if tokio::time::timeout_at(deadline, loaded).await.is_err() {
                return out;
            }
        }
    }

    /// Marks the queue deleted and empties it.
    pub fn mark_deleted(&self) -> Deleted {
        if let Some(s) = &self.stream {
            self.deleted.store(true, Ordering::Release);
            return Deleted {
                message_count: 0,
                consumers: s.delete(),
            };
        }
        let mut st = self.state.lock();
        self.deleted.store(true, Ordering::Release);
        self.drained.notify_waiters();
        let message_count = st.ready.len() as u32;
        if let Some(store) = &self.store {
            let mut ids = st.ready.stored_ids();
            ids.extend(st.held.iter().filter_map(|h| h.2));
            store.drop_queue(&self.vhost, &self.name, &ids);
        }
        st.ready.clear();
        st.held.clear();
        st.held_bytes = 0;
        let consumers = std::mem::take(&mut st.consumers);
        Deleted {
            message_count,
            consumers,
        }
    }

    /// The stream, if this is a stream queue.
    pub fn stream(&self) -> Option<&Arc<stream::Stream>> {
        self.stream.as_ref()
    }

    /// Whether the queue keeps persistent messages on disk (durable, not exclusive).
    pub fn is_persistent(&self) -> bool {
        self.config.durable && self.config.exclusive_owner.is_none()
    }

    /// Records that this queue is done with stored messages.
    pub fn store_ack(&self, ids: &[u64]) {
        if let Some(r) = self.remote.get() {
            if !ids.is_empty() {
                r.settle(ids.to_vec(), Vec::new());
            }
            return;
        }
        if let (Some(store), false) = (&self.store, ids.is_empty()) {
            store.ack(&self.vhost, &self.name, ids);
        }
    }

    /// Records a delivery of a stored message (an ack right away for no-ack).
    pub fn store_delivered(&self, id: u64, no_ack: bool, redelivered: bool) {
        if let Some(r) = self.remote.get() {
            if no_ack {
                r.settle(vec![id], Vec::new());
            }
            return;
        }
        if let Some(store) = &self.store {
            if no_ack {
                store.ack(&self.vhost, &self.name, &[id]);
            } else if !redelivered {
                store.delivered(&self.vhost, &self.name, &[id]);
            }
        }
    }

    /// Puts messages recovered from the store into the queue, in order.
    /// They stay in the store's segments until the queue's head reaches
    /// them. Recovered messages get the queue's TTL and their own
    /// expiration afresh (the store does not keep enqueue times).
    pub fn recover(self: &Arc<Self>, msgs: Vec<RecoveredMessage>) {
        let mut st = self.state.lock();
        let now = now_ms();
        let queue_ttl = st.args.message_ttl;
        let Some(store) = self.store.clone() else {
            return;
        };
        for m in msgs {
            let seq = st.next_seq;
            st.next_seq += 1;
            // The queue's TTL and the message's own expiration run again
            // from the restart, the shorter one winning as at publish.
            let ttl = match (queue_ttl, m.expiration) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let deadline = ttl.map_or(0, |t| now.saturating_add(t));
            // A dead letter held before the stop is held again.
            if let Some(code) = m.discarded
                && let Some(msg) = self.read_recovered(&store, &m)
            {
                st.held_bytes += msg.body_len() as u64;
                st.held
                    .push_back((msg, Reason::from_code(code), Some(m.id)));
                continue;
            }
            // A quorum queue's message returned before the stop is read
            // now, to carry its delivery count.
            if self.quorum
                && m.returns > 0
                && let Some(msg) = self.read_recovered(&store, &m)
            {
                st.ready.push_back(QueuedMessage {
                    msg: quorum::with_delivery_count(&msg, Some(u64::from(m.returns))),
                    seq,
                    redelivered: true,
                    stored: Some(m.id),
                    deadline,
                });
                continue;
            }
            st.ready
                .push_stored(&store, m.loc, m.priority, seq, m.id, m.delivered, deadline);
        }
        if !st.held.is_empty() && !st.held_retry {
            st.held_retry = true;
            timers::schedule(now_ms(), Kind::DeadLetterRetry, Arc::downgrade(self));
        }
        self.enforce_limits(&mut st, now_ms());
        self.finish(st);
    }

    /// A recovered message read back from the store now (None, logged, if
    /// it cannot be: it is then left to be read when the queue reaches it).
    fn read_recovered(&self, store: &MessageStore, m: &RecoveredMessage) -> Option<Message> {
        let got = store
            .read_span(m.loc.seg, m.loc.offset, m.loc.len as usize)
            .ok()
            .and_then(|d| paging::io::decode_message(&d));
        if got.is_none() {
            tracing::warn!(
                queue = %self.name.escape_debug(),
                "cannot read back stored message {} at recovery; its delivery count starts again",
                m.id
            );
        }
        got
    }

    /// Whether this queue stores a message (persistent or not) in the
    /// message store.
    fn keeps_on_disk(&self, persistent: bool) -> bool {
        self.is_persistent()
            && self.stream.is_none()
            && self.remote.get().is_none()
            && (persistent || self.quorum)
    }

    /// Whether `conn` may use this queue (exclusive queues belong to one connection).
    pub fn check_exclusive(&self, conn: u64) -> AmqpResult<()> {
        match self.config.exclusive_owner {
            Some(owner) if owner != conn => Err(Self::locked_error(&self.name, &self.vhost)),
            _ => Ok(()),
        }
    }

    /// 405 RESOURCE_LOCKED for an exclusive queue, in RabbitMQ's words.
    pub fn locked_error(name: &str, vhost: &str) -> AmqpError {
        AmqpError::channel(
            code::RESOURCE_LOCKED,
            format!(
                "cannot obtain exclusive access to locked queue '{name}' in vhost '{vhost}'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration."
            ),
        )
    }
}

/// x-max-priority of a queue's arguments (validated at declare: 0-255).
fn max_priority(args: &FieldTable) -> Option<u8> {
    let n = crate::queue::args::integer(args.inner().get("x-max-priority")?)?;
    u8::try_from(n).ok()
}

/// Enqueues a routed message in its queues. A persistent message for durable
/// queues is first appended to the message store. Returns the store sequence
/// a confirm must wait for (if stored) and a queue asking its publishers to
/// slow down (if any).
pub fn enqueue_routed(
    queues: &[Arc<Queue>],
    msg: &Message,
    store: Option<&Arc<MessageStore>>,
    ttl: Option<u64>,
) -> Enqueued {
    let mut stored = None;
    let mut sync_seq = None;
    let persistent = msg.is_persistent();
    if let Some(store) = store
        && (persistent || queues.iter().any(|q| q.quorum))
    {
        // Streams keep their messages in their own logs; quorum queues
        // keep every message, whatever its delivery mode.
        let durable: Vec<(&str, &str)> = queues
            .iter()
            .filter(|q| q.keeps_on_disk(persistent))
            .map(|q| (&*q.vhost, q.name.as_str()))
            .collect();
        if !durable.is_empty() {
            let (id, seq) = store.enqueue(&durable, msg);
            stored = Some(id);
            sync_seq = Some(seq);
        }
    }
    let mut out = Enqueued {
        sync_seq,
        ..Enqueued::default()
    };
    for q in queues {
        let id = if q.keeps_on_disk(persistent) {
            stored
        } else {
            None
        };
        let e = q.publish(msg.clone(), id, ttl);
        out.streams.extend(e.streams);
        out.remote.extend(e.remote);
        out.rejected |= e.rejected;
        out.accepted += usize::from(!e.rejected);
        if e.pressured.is_some() {
            out.pressured = e.pressured;
        }
    }
    out
}

#[cfg(test)]
mod tests;
