//! Messages between the nodes of a cluster: a client on one node uses a
//! queue that lives on another (its home).
//!
//! Each node keeps one data connection to each other node it sends to
//! (opened on first use over the inter-node listener, after the same
//! secret challenge as the Raft links; see cluster/net.rs). On it:
//!
//! - **Publishing.** A message routed to a stub queue goes to the queue's
//!   node as `Publish` with an id; the home node enqueues it as any
//!   publish (stored if persistent, limits applied) and answers
//!   `Published` once it is durable there, or refused. A confirm-mode
//!   publisher's confirm waits for that answer (`queue::remote::Ticket`); a
//!   lost connection refuses every publish waiting (a nack: the publisher
//!   sends again, so a message may arrive twice, never silently not).
//! - **Consuming.** While a stub has consumers, the node asks the home
//!   node to `Consume` the queue for it, with a window of `WINDOW`
//!   unacknowledged messages. The home node delivers to it like to any
//!   consumer (`Deliver`, with its own delivery tag) and keeps each
//!   delivery until the stub's node settles it (`Settle`: acked, or
//!   requeued). On this node a delivered message waits in the stub's ready
//!   list for its consumers, carrying the home tag, so acks, rejects and
//!   channel closes send the settlement home through the queue's usual
//!   paths. When the stub's last consumer goes, what waits in it goes back
//!   home and the consumption is cancelled. A lost connection makes the
//!   home node return every delivery it kept for the link to its queue (as
//!   a closed channel does); this node drops what waited in its stubs and
//!   asks again once connected.
//!
//! Frames: `[u32 length][u32 JSON length][JSON Wire][raw bytes]`, the raw
//! bytes being a message's exchange, routing key, content header and body.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::Broker;
use crate::message::Message;
use crate::queue::Queue;
use crate::queue::consumer::{Consumer, ConsumerChannel, QueuedMessage};
use crate::queue::remote::{RemoteQueue, Ticket};

/// Unacknowledged messages a home node sends a stub's node for one queue.
const WINDOW: u16 = 1000;

/// How long a node that could not be reached counts as down before the
/// next attempt (publishes to its queues are refused meanwhile).
const RETRY: Duration = Duration::from_millis(500);

/// The largest frame taken (a message is at most `[amqp]
/// max_message_size`, 128 MiB by default, plus its header).
const FRAME_MAX: usize = 1 << 30;

#[derive(Debug, Serialize, Deserialize)]
enum Wire {
    /// Enqueue the message that follows (raw) in the queue.
    Publish {
        id: u64,
        vhost: String,
        queue: String,
        lens: [u32; 3],
    },
    /// The answer to `Publish` `id`.
    Published { id: u64, taken: bool },
    /// Deliver the queue's messages to the sender, `window` unacked at
    /// most, as a consumer of x-priority `priority` (the highest of the
    /// sender's consumers; sent again when that changes).
    Consume {
        vhost: String,
        queue: String,
        window: u16,
        #[serde(default)]
        priority: i32,
    },
    /// Stop delivering; what was delivered and not settled goes back.
    Cancel { vhost: String, queue: String },
    /// Deliveries settled: done with, or back to the queue.
    Settle {
        vhost: String,
        queue: String,
        acked: Vec<u64>,
        requeued: Vec<u64>,
    },
    /// A delivery (the message follows, raw).
    Deliver {
        vhost: String,
        queue: String,
        tag: u64,
        redelivered: bool,
        lens: [u32; 3],
    },
    /// The home node ended a consumption (the queue is gone).
    Cancelled { vhost: String, queue: String },
    /// One message for a basic.get (sent as a `Deliver`), or `GetEmpty`.
    Get { vhost: String, queue: String },
    /// No message for a `Get`.
    GetEmpty { vhost: String, queue: String },
    /// Purge the queue; answered by `Purged` with the same id.
    Purge {
        id: u64,
        vhost: String,
        queue: String,
    },
    /// How many ready messages a `Purge` removed.
    Purged { id: u64, count: u32 },
    /// How many ready messages the queue has; answered by `Purged` with
    /// the same id (a count either way).
    Count {
        id: u64,
        vhost: String,
        queue: String,
    },
    /// The counts of every queue the node serves; answered by `StatsOf`.
    Stats,
    /// (vhost, queue, ready, unacked, consumers) of each queue served there.
    StatsOf {
        queues: Vec<(String, String, u32, u32, u32)>,
    },
}

/// How often a node asks the others for the counts of their queues (for
/// its listings of their stubs; RabbitMQ's statistics interval).
const STATS_EVERY: Duration = Duration::from_secs(5);

fn frame(w: &Wire, msg: Option<&Message>) -> Vec<u8> {
    let json = serde_json::to_vec(w).unwrap_or_default();
    let raw_len = msg.map_or(0, |m| {
        m.exchange().len() + m.routing_key().len() + m.header().len() + m.body_len()
    });
    let mut out = Vec::with_capacity(8 + json.len() + raw_len);
    out.extend_from_slice(&((4 + json.len() + raw_len) as u32).to_be_bytes());
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
    if let Some(m) = msg {
        out.extend_from_slice(m.exchange());
        out.extend_from_slice(m.routing_key());
        out.extend_from_slice(m.header());
        out.extend_from_slice(&m.body_bytes());
    }
    out
}

fn lens(m: &Message) -> [u32; 3] {
    [
        m.exchange().len() as u32,
        m.routing_key().len() as u32,
        m.header().len() as u32,
    ]
}

fn message(raw: Bytes, [x, rk, h]: [u32; 3]) -> Option<Message> {
    let (x, rk, h) = (x as usize, rk as usize, h as usize);
    if raw.len() < x + rk + h {
        return None;
    }
    let body = raw.slice(x + rk + h..);
    Some(Message::new(
        &raw[..x],
        &raw[x..x + rk],
        &raw[x + rk..x + rk + h],
        body,
    ))
}

async fn read_frame(rd: &mut (impl AsyncReadExt + Unpin)) -> std::io::Result<(Wire, Bytes)> {
    let len = rd.read_u32().await? as usize;
    if !(4..=FRAME_MAX).contains(&len) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("data link frame of {len} bytes"),
        ));
    }
    let mut buf = BytesMut::zeroed(len);
    rd.read_exact(&mut buf).await?;
    let buf = buf.freeze();
    let json_len = u32::from_be_bytes(buf[..4].try_into().unwrap_or_default()) as usize;
    let json = buf.get(4..4 + json_len).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "short data link frame")
    })?;
    let w = serde_json::from_slice(json)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    Ok((w, buf.slice(4 + json_len..)))
}

/// Writes queued frames, as many as wait at once per write.
async fn write_frames(
    mut wr: impl AsyncWriteExt + Unpin,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    while let Some(f) = rx.recv().await {
        buf.clear();
        buf.extend_from_slice(&f);
        while buf.len() < (1 << 20)
            && let Ok(f) = rx.try_recv()
        {
            buf.extend_from_slice(&f);
        }
        wr.write_all(&buf).await?;
    }
    Ok(())
}

/// This node's data links to the other nodes.
pub struct Links {
    me: u64,
    secret: Arc<crate::cluster::net::Peering>,
    addrs: crate::cluster::net::AddressBook,
    broker: Weak<Broker>,
    peers: Mutex<HashMap<u64, Arc<Peer>>>,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links").field("me", &self.me).finish()
    }
}

/// What a purge's answer goes to.
type PurgeDone = Box<dyn FnOnce(Option<u32>) + Send>;

/// The link to one other node.
struct Peer {
    id: u64,
    tx: mpsc::UnboundedSender<Vec<u8>>,
    /// Publishes sent and not answered, by id.
    pending: Mutex<HashMap<u64, Arc<Ticket>>>,
    next_id: AtomicU64,
    /// Stubs consuming from this node, by (vhost, queue).
    consuming: Mutex<HashMap<(String, String), Weak<Queue>>>,
    /// Purges waiting for their answer, by id.
    purges: Mutex<HashMap<u64, PurgeDone>>,
    /// Until when (`clock::now_ms`) the node counts as unreachable: the
    /// last connection attempt failed, and publishes are refused at once.
    down_until: AtomicU64,
}

impl Peer {
    fn send(&self, w: &Wire, msg: Option<&Message>) -> bool {
        self.tx.send(frame(w, msg)).is_ok()
    }

    /// Refuses every publish waiting for an answer (and ends the purges
    /// waiting, unanswered).
    fn fail_pending(&self) {
        let purges: Vec<PurgeDone> = self.purges.lock().drain().map(|(_, d)| d).collect();
        for d in purges {
            d(None);
        }
        let waiting: Vec<Arc<Ticket>> = self.pending.lock().drain().map(|(_, t)| t).collect();
        for t in &waiting {
            t.done(false);
        }
        if !waiting.is_empty() {
            crate::queue::stream::note_durable();
        }
    }
}

impl Links {
    /// The links of node `me`, whose peers are at `addrs` and share `secret`.
    pub fn new(
        me: u64,
        addrs: crate::cluster::net::AddressBook,
        secret: Arc<crate::cluster::net::Peering>,
        broker: Weak<Broker>,
    ) -> Arc<Links> {
        Arc::new(Links {
            me,
            secret,
            addrs,
            broker,
            peers: Mutex::default(),
        })
    }

    /// The stub link for queue `name` of `vhost` whose home is `home`.
    pub fn stub(
        self: &Arc<Self>,
        home: u64,
        vhost: &str,
        name: &str,
        queue: &Arc<Queue>,
    ) -> Arc<dyn RemoteQueue> {
        Arc::new(Stub {
            peer: self.peer(home),
            vhost: vhost.to_owned(),
            name: name.to_owned(),
            queue: Arc::downgrade(queue),
            priority: std::sync::atomic::AtomicI32::new(0),
        })
    }

    fn peer(self: &Arc<Self>, id: u64) -> Arc<Peer> {
        let mut peers = self.peers.lock();
        if let Some(p) = peers.get(&id) {
            return p.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let p = Arc::new(Peer {
            id,
            tx,
            pending: Mutex::default(),
            next_id: AtomicU64::new(1),
            consuming: Mutex::default(),
            purges: Mutex::default(),
            down_until: AtomicU64::new(0),
        });
        peers.insert(id, p.clone());
        tokio::spawn(run_peer(Arc::downgrade(self), p.clone(), rx));
        p
    }

    /// Asks every other node for the counts of its queues, every
    /// `STATS_EVERY`, until the links go.
    pub fn poll_stats(self: &Arc<Self>) {
        let links = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(STATS_EVERY);
            loop {
                tick.tick().await;
                let Some(l) = links.upgrade() else { return };
                for id in l.addrs.all().into_keys().filter(|id| *id != l.me) {
                    let peer = l.peer(id);
                    if peer.down_until.load(Ordering::Acquire) <= crate::ops::clock::now_ms() {
                        peer.send(&Wire::Stats, None);
                    }
                }
            }
        });
    }

    /// The broker the links serve.
    pub fn broker(&self) -> Weak<Broker> {
        self.broker.clone()
    }

    /// Takes over a data connection from node `from`.
    pub async fn serve(self: Arc<Self>, stream: crate::cluster::net::Conn, from: u64) {
        let Some(broker) = self.broker.upgrade() else {
            return;
        };
        serve_peer(broker, stream, from).await;
    }
}

/// Keeps the connection to one node: connects when there is something to
/// send (or stubs consuming from it), writes, reads its answers and
/// deliveries, and starts over after any failure.
async fn run_peer(links: Weak<Links>, peer: Arc<Peer>, mut rx: mpsc::UnboundedReceiver<Vec<u8>>) {
    let mut first: Option<Vec<u8>> = None;
    loop {
        if first.is_none() && peer.consuming.lock().is_empty() {
            match rx.recv().await {
                Some(f) => first = Some(f),
                None => return,
            }
        }
        let Some(l) = links.upgrade() else { return };
        let (addr, secret, me) = (
            l.addrs.get(peer.id).unwrap_or_default(),
            l.secret.clone(),
            l.me,
        );
        drop(l);
        let stream = match crate::cluster::net::connect_data(&addr, &secret, me).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("data link to node {}: {e}", peer.id);
                peer.down_until.store(
                    crate::ops::clock::now_ms() + RETRY.as_millis() as u64,
                    Ordering::Release,
                );
                first = None;
                while rx.try_recv().is_ok() {}
                peer.fail_pending();
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        peer.down_until.store(0, Ordering::Release);
        let (rd, mut wr) = tokio::io::split(stream);
        // Consumption survives a lost connection: ask again.
        let consuming: Vec<((String, String), Weak<Queue>)> = peer
            .consuming
            .lock()
            .iter()
            .map(|(k, q)| (k.clone(), q.clone()))
            .collect();
        let mut hello = Vec::new();
        for ((vhost, queue), q) in consuming {
            let priority = q.upgrade().map_or(0, |q| q.consumers_top_priority());
            hello.extend(frame(
                &Wire::Consume {
                    vhost,
                    queue,
                    window: WINDOW,
                    priority,
                },
                None,
            ));
        }
        hello.extend(first.take().unwrap_or_default());
        if wr.write_all(&hello).await.is_err() {
            peer.fail_pending();
            continue;
        }
        let reader = tokio::spawn(read_home(links.clone(), peer.clone(), rd));
        let (wtx, wrx) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write_frames(wr, wrx));
        // Pass frames on until either side ends.
        let mut reader = reader;
        loop {
            tokio::select! {
                f = rx.recv() => match f {
                    Some(f) => {
                        if wtx.send(f).is_err() {
                            break;
                        }
                    }
                    None => {
                        reader.abort();
                        writer.abort();
                        return;
                    }
                },
                _ = &mut reader => break,
            }
        }
        reader.abort();
        writer.abort();
        peer.fail_pending();
        // The home node takes back what it delivered on that connection.
        let stubs: Vec<Weak<Queue>> = peer.consuming.lock().values().cloned().collect();
        for q in stubs.iter().filter_map(Weak::upgrade) {
            drop(q.take(usize::MAX));
        }
        tracing::warn!("data link to node {} lost; reconnecting", peer.id);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reads what a home node sends: answers to publishes, deliveries.
async fn read_home(
    links: Weak<Links>,
    peer: Arc<Peer>,
    mut rd: tokio::io::ReadHalf<crate::cluster::net::Conn>,
) {
    loop {
        let Ok((w, raw)) = read_frame(&mut rd).await else {
            return;
        };
        match w {
            Wire::Published { id, taken } => {
                if let Some(t) = peer.pending.lock().remove(&id) {
                    t.done(taken);
                    crate::queue::stream::note_durable();
                }
            }
            Wire::Deliver {
                vhost,
                queue,
                tag,
                redelivered,
                lens,
            } => {
                let stub = links
                    .upgrade()
                    .and_then(|l| l.broker.upgrade())
                    .and_then(|b| b.vhost(&vhost))
                    .and_then(|v| v.queue(&queue))
                    .filter(|q| q.is_remote());
                let pushed = match (stub, message(raw, lens)) {
                    (Some(q), Some(m)) => q.push_from_home(m, tag, redelivered),
                    _ => false,
                };
                if !pushed {
                    peer.send(
                        &Wire::Settle {
                            vhost,
                            queue,
                            acked: Vec::new(),
                            requeued: vec![tag],
                        },
                        None,
                    );
                }
            }
            Wire::Cancelled { vhost, queue } => {
                peer.consuming.lock().remove(&(vhost, queue));
            }
            Wire::Purged { id, count } => {
                if let Some(d) = peer.purges.lock().remove(&id) {
                    d(Some(count));
                }
            }
            Wire::StatsOf { queues } => {
                let Some(b) = links.upgrade().and_then(|l| l.broker.upgrade()) else {
                    continue;
                };
                for (v, n, ready, unacked, consumers) in queues {
                    if let Some(q) = b.vhost(&v).and_then(|vh| vh.queue(&n))
                        && !q.served_here()
                    {
                        q.set_reported([ready, unacked, consumers]);
                    }
                }
            }
            Wire::GetEmpty { vhost, queue } => {
                if let Some(q) = links
                    .upgrade()
                    .and_then(|l| l.broker.upgrade())
                    .and_then(|b| b.vhost(&vhost))
                    .and_then(|v| v.queue(&queue))
                {
                    q.fetched_empty();
                }
            }
            other => tracing::debug!("data link from node {}: unexpected {other:?}", peer.id),
        }
    }
}

/// A stub queue's link to its home node.
#[derive(Debug)]
struct Stub {
    peer: Arc<Peer>,
    vhost: String,
    name: String,
    queue: Weak<Queue>,
    /// The priority the queue's node was last told for this link.
    priority: std::sync::atomic::AtomicI32,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer").field("id", &self.id).finish()
    }
}

impl Stub {
    /// Sends request `w` (id `id`, its answer awaited in `purges`); a
    /// node that is down, or a link that is gone, answers None at once.
    fn ask(&self, id: u64, w: &Wire) {
        let up = self.peer.down_until.load(Ordering::Acquire) <= crate::ops::clock::now_ms();
        if (!up || !self.peer.send(w, None))
            && let Some(d) = self.peer.purges.lock().remove(&id)
        {
            d(None);
        }
    }
}

impl RemoteQueue for Stub {
    fn forward(&self, msg: Message) -> Arc<Ticket> {
        let t = Ticket::new();
        if self.peer.down_until.load(Ordering::Acquire) > crate::ops::clock::now_ms() {
            t.done(false);
            return t;
        }
        let id = self.peer.next_id.fetch_add(1, Ordering::Relaxed);
        self.peer.pending.lock().insert(id, t.clone());
        let w = Wire::Publish {
            id,
            vhost: self.vhost.clone(),
            queue: self.name.clone(),
            lens: lens(&msg),
        };
        if !self.peer.send(&w, Some(&msg)) {
            self.peer.pending.lock().remove(&id);
            t.done(false);
        }
        t
    }

    fn settle(&self, acked: Vec<u64>, requeued: Vec<u64>) {
        if acked.is_empty() && requeued.is_empty() {
            return;
        }
        self.peer.send(
            &Wire::Settle {
                vhost: self.vhost.clone(),
                queue: self.name.clone(),
                acked,
                requeued,
            },
            None,
        );
    }

    fn fetch(&self) {
        let sent = self.peer.down_until.load(Ordering::Acquire) <= crate::ops::clock::now_ms()
            && self.peer.send(
                &Wire::Get {
                    vhost: self.vhost.clone(),
                    queue: self.name.clone(),
                },
                None,
            );
        let queue = self.queue.clone();
        if !sent {
            if let Some(q) = queue.upgrade() {
                q.fetched_empty();
            }
            return;
        }
        // A node that does not answer: the get ends empty.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            if let Some(q) = queue.upgrade() {
                q.fetched_empty();
            }
        });
    }

    fn purge(&self, done: PurgeDone) {
        let id = self.peer.next_id.fetch_add(1, Ordering::Relaxed);
        self.peer.purges.lock().insert(id, done);
        let w = Wire::Purge {
            id,
            vhost: self.vhost.clone(),
            queue: self.name.clone(),
        };
        self.ask(id, &w);
    }

    fn count(&self, done: PurgeDone) {
        let id = self.peer.next_id.fetch_add(1, Ordering::Relaxed);
        self.peer.purges.lock().insert(id, done);
        let w = Wire::Count {
            id,
            vhost: self.vhost.clone(),
            queue: self.name.clone(),
        };
        self.ask(id, &w);
    }

    fn consumers_changed(&self, count: usize, top: i32) {
        let key = (self.vhost.clone(), self.name.clone());
        if count > 0 {
            let new = self
                .peer
                .consuming
                .lock()
                .insert(key, self.queue.clone())
                .is_none();
            // The queue's node serves this link at the priority of its
            // best consumer here: told again when that changes.
            let before = self.priority.swap(top, Ordering::AcqRel);
            if new || before != top {
                self.peer.send(
                    &Wire::Consume {
                        vhost: self.vhost.clone(),
                        queue: self.name.clone(),
                        window: WINDOW,
                        priority: top,
                    },
                    None,
                );
            }
            return;
        }
        if self.peer.consuming.lock().remove(&key).is_none() {
            return;
        }
        self.peer.send(
            &Wire::Cancel {
                vhost: self.vhost.clone(),
                queue: self.name.clone(),
            },
            None,
        );
        // What waited here for consumers goes back.
        if let Some(q) = self.queue.upgrade() {
            let back: Vec<u64> = q.take(usize::MAX).iter().filter_map(|m| m.stored).collect();
            self.settle(Vec::new(), back);
        }
    }
}

/// A home node's side of a data connection from node `from`.
struct Session {
    from: u64,
    tx: mpsc::UnboundedSender<Vec<u8>>,
    /// The link's consumer of each queue it consumes.
    consumers: Mutex<HashMap<(String, String), LinkConsumer>>,
    /// Deliveries not settled yet, by tag.
    unacked: Mutex<HashMap<u64, Delivered>>,
}

/// A queue the link consumes and its consumer there.
type LinkConsumer = (Arc<Queue>, Arc<Consumer>);

struct Delivered {
    queue: Arc<Queue>,
    consumer: Arc<Consumer>,
    msg: QueuedMessage,
}

/// Delivery tags of home nodes: unique in the process, so a settlement
/// from a connection that is gone never matches a newer delivery; from
/// 2^63 up, so they never equal a replicated quorum queue's message ids
/// (below 2^63), which travel in the same place.
static NEXT_TAG: AtomicU64 = AtomicU64::new(1 << 63);

async fn serve_peer(broker: Arc<Broker>, stream: crate::cluster::net::Conn, from: u64) {
    let (mut rd, wr) = tokio::io::split(stream);
    let (tx, rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write_frames(wr, rx));
    let session = Arc::new(Session {
        from,
        tx,
        consumers: Mutex::default(),
        unacked: Mutex::default(),
    });
    while let Ok((w, raw)) = read_frame(&mut rd).await {
        match w {
            Wire::Publish {
                id,
                vhost,
                queue,
                lens,
            } => take_publish(&broker, &session, id, &vhost, &queue, message(raw, lens)),
            Wire::Consume {
                vhost,
                queue,
                window,
                priority,
            } => consume(&broker, &session, vhost, queue, window, priority),
            Wire::Cancel { vhost, queue } => {
                let c = session.consumers.lock().remove(&(vhost, queue));
                if let Some((q, c)) = c {
                    end_consumer(&broker, &session, &q, &c);
                }
            }
            Wire::Settle {
                acked, requeued, ..
            } => settle(&session, &acked, &requeued),
            Wire::Get { vhost, queue } => {
                tokio::spawn(give_one(broker.clone(), session.clone(), vhost, queue));
            }
            Wire::Purge { id, vhost, queue } => {
                let count = broker
                    .vhost(&vhost)
                    .and_then(|v| v.queue(&queue))
                    .filter(|q| q.served_here())
                    .map_or(0, |q| q.purge());
                let _ = session.tx.send(frame(&Wire::Purged { id, count }, None));
            }
            Wire::Stats => {
                let mut queues = Vec::new();
                for vh in broker.vhosts() {
                    for q in vh.queues() {
                        if q.served_here() && q.config.durable && q.config.exclusive_owner.is_none()
                        {
                            let [ready, unacked, consumers] = q.listing_counts();
                            let n = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
                            queues.push((
                                vh.name.to_string(),
                                q.name.clone(),
                                n(ready),
                                n(unacked),
                                n(consumers),
                            ));
                        }
                    }
                }
                let _ = session.tx.send(frame(&Wire::StatsOf { queues }, None));
            }
            Wire::Count { id, vhost, queue } => {
                let count = broker
                    .vhost(&vhost)
                    .and_then(|v| v.queue(&queue))
                    .filter(|q| q.served_here())
                    .map_or(0, |q| q.message_count());
                let _ = session.tx.send(frame(&Wire::Purged { id, count }, None));
            }
            other => tracing::debug!("data link from node {from}: unexpected {other:?}"),
        }
    }
    let consumers: Vec<LinkConsumer> = session.consumers.lock().drain().map(|(_, c)| c).collect();
    for (q, c) in &consumers {
        end_consumer(&broker, &session, q, c);
    }
    // What was fetched for basic.get and not settled goes back too.
    let rest: Vec<u64> = session.unacked.lock().keys().copied().collect();
    settle(&session, &[], &rest);
    writer.abort();
}

/// Enqueues a forwarded publish and answers once it is durable here.
fn take_publish(
    broker: &Arc<Broker>,
    session: &Arc<Session>,
    id: u64,
    vhost: &str,
    queue: &str,
    msg: Option<Message>,
) {
    let q = broker
        .vhost(vhost)
        .and_then(|v| v.queue(queue))
        .filter(|q| !q.is_remote());
    let (Some(q), Some(msg)) = (q, msg) else {
        let _ = session
            .tx
            .send(frame(&Wire::Published { id, taken: false }, None));
        return;
    };
    let ttl = msg.expiration().and_then(Result::ok);
    let store = broker.durability.store().cloned();
    let e = crate::queue::enqueue_routed(&[q], &msg, store.as_ref(), ttl);
    let taken = e.accepted > 0 && !e.rejected;
    let tx = session.tx.clone();
    let answer_tx = tx.clone();
    let answer = move || {
        let tx = answer_tx;
        let _ = tx.send(frame(&Wire::Published { id, taken }, None));
    };
    if e.sync_seq.is_none() && e.streams.is_empty() && e.remote.is_empty() {
        answer();
        return;
    }
    tokio::spawn(async move {
        if let (Some(seq), Some(store)) = (e.sync_seq, store) {
            let mut rx = store.subscribe();
            while store.durable_seq() < seq {
                if rx.changed().await.is_err() {
                    return;
                }
            }
        }
        // Streams, and replicated queues (their Raft group committing it),
        // tell the same watch.
        let mut rx = crate::queue::stream::durable_watch();
        while !e.streams.iter().all(|(s, o)| s.is_settled(*o))
            || e.remote.iter().any(|t| t.outcome().is_none())
        {
            if rx.changed().await.is_err() {
                return;
            }
        }
        if e.remote.iter().any(|t| t.outcome() == Some(false)) {
            let _ = tx.send(frame(&Wire::Published { id, taken: false }, None));
            return;
        }
        answer();
    });
}

/// Answers a `Get`: one message of the queue, kept until settled, or
/// `GetEmpty`.
async fn give_one(broker: Arc<Broker>, session: Arc<Session>, vhost: String, queue: String) {
    let q = broker
        .vhost(&vhost)
        .and_then(|v| v.queue(&queue))
        .filter(|q| !q.is_remote() && q.stream().is_none());
    let m = match &q {
        Some(q) => q.take_loaded(1, Duration::from_secs(2)).await.pop(),
        None => None,
    };
    let (Some(q), Some(mut m)) = (q, m) else {
        let _ = session
            .tx
            .send(frame(&Wire::GetEmpty { vhost, queue }, None));
        return;
    };
    m.msg = q.for_delivery(m.msg);
    if let Some(id) = m.stored {
        q.store_delivered(id, false, m.redelivered);
    }
    q.stats.delivered(true, false, m.redelivered);
    let tag = NEXT_TAG.fetch_add(1, Ordering::Relaxed);
    let w = Wire::Deliver {
        vhost,
        queue,
        tag,
        redelivered: m.redelivered,
        lens: lens(&m.msg),
    };
    let bytes = frame(&w, Some(&m.msg));
    // A consumer of its own, attached to no queue, so settling finds it.
    let getter = Consumer::new(
        Bytes::from_static(b"basic.get"),
        Arc::new(Sink {
            session: Arc::downgrade(&session),
            vhost: String::new(),
            queue: String::new(),
        }),
        false,
        false,
        0,
    );
    getter.unacked.fetch_add(1, Ordering::Relaxed);
    session.unacked.lock().insert(
        tag,
        Delivered {
            queue: q,
            consumer: getter,
            msg: m,
        },
    );
    let _ = session.tx.send(bytes);
}

/// Starts delivering queue `queue` to the link.
fn consume(
    broker: &Arc<Broker>,
    session: &Arc<Session>,
    vhost: String,
    queue: String,
    window: u16,
    priority: i32,
) {
    let q = broker
        .vhost(&vhost)
        .and_then(|v| v.queue(&queue))
        .filter(|q| !q.is_remote() && q.stream().is_none());
    let key = (vhost.clone(), queue.clone());
    let Some(q) = q else {
        let _ = session
            .tx
            .send(frame(&Wire::Cancelled { vhost, queue }, None));
        return;
    };
    let existing = session.consumers.lock().get(&key).map(|(_, c)| c.clone());
    if let Some(c) = existing {
        // Its consumers there changed: the link's place among ours too.
        q.reprioritize(&c, priority);
        return;
    }
    let sink = Arc::new(Sink {
        session: Arc::downgrade(session),
        vhost: vhost.clone(),
        queue: queue.clone(),
    });
    let tag = Bytes::from(format!("warren-node-{}", session.from));
    let c = Consumer::with_priority(tag, sink, false, false, window, priority);
    if q.add_consumer(c.clone()).is_err() {
        let _ = session
            .tx
            .send(frame(&Wire::Cancelled { vhost, queue }, None));
        return;
    }
    session.consumers.lock().insert(key, (q, c));
}

/// Detaches the link's consumer and returns its unsettled deliveries.
fn end_consumer(broker: &Broker, session: &Session, q: &Arc<Queue>, c: &Arc<Consumer>) {
    c.deactivate();
    let back: Vec<Delivered> = {
        let mut u = session.unacked.lock();
        let tags: Vec<u64> = u
            .iter()
            .filter(|(_, d)| Arc::ptr_eq(&d.consumer, c))
            .map(|(t, _)| *t)
            .collect();
        tags.iter().filter_map(|t| u.remove(t)).collect()
    };
    for d in &back {
        d.queue.stats.settled();
    }
    let mut items: Vec<QueuedMessage> = back.into_iter().map(|d| d.msg).collect();
    for m in &mut items {
        m.redelivered = true;
    }
    q.requeue(items);
    if q.remove_consumer(c)
        && let Some(vh) = broker.vhost(&q.vhost)
    {
        // An auto-delete queue whose last consumer was the link.
        vh.remove_queue(q);
    }
}

/// Settles deliveries of the link.
fn settle(session: &Session, acked: &[u64], requeued: &[u64]) {
    let (done, back): (Vec<Delivered>, Vec<Delivered>) = {
        let mut u = session.unacked.lock();
        (
            acked.iter().filter_map(|t| u.remove(t)).collect(),
            requeued.iter().filter_map(|t| u.remove(t)).collect(),
        )
    };
    let mut wake: Vec<Arc<Queue>> = Vec::new();
    for d in &done {
        d.consumer.unacked.fetch_sub(1, Ordering::Relaxed);
        d.queue.stats.settled();
        d.queue.stats.ack.fetch_add(1, Ordering::Relaxed);
        if let Some(id) = d.msg.stored {
            d.queue.store_ack(&[id]);
        }
        if !wake.iter().any(|q| Arc::ptr_eq(q, &d.queue)) {
            wake.push(d.queue.clone());
        }
    }
    let mut by_queue: Vec<(Arc<Queue>, Vec<QueuedMessage>)> = Vec::new();
    for d in back {
        d.consumer.unacked.fetch_sub(1, Ordering::Relaxed);
        d.queue.stats.settled();
        let mut m = d.msg;
        m.redelivered = true;
        match by_queue.iter_mut().find(|(q, _)| Arc::ptr_eq(q, &d.queue)) {
            Some((_, v)) => v.push(m),
            None => by_queue.push((d.queue, vec![m])),
        }
    }
    for (q, items) in by_queue {
        q.requeue(items);
    }
    for q in wake {
        q.dispatch();
    }
}

/// Detaches the other nodes' links from queue `q` (this node stopped
/// serving it: a replicated queue whose leadership moved). Each is told
/// its consumption ended; what they had not settled is forgotten here (the
/// new leader delivers it again).
pub fn detach_links(q: &Arc<Queue>) {
    for c in q.consumers() {
        let Some(sink) = c.channel.as_any().downcast_ref::<Sink>() else {
            continue;
        };
        c.deactivate();
        q.remove_consumer(&c);
        if let Some(session) = sink.session.upgrade() {
            session
                .consumers
                .lock()
                .remove(&(sink.vhost.clone(), sink.queue.clone()));
            let mut u = session.unacked.lock();
            let mine: Vec<u64> = u
                .iter()
                .filter(|(_, d)| Arc::ptr_eq(&d.consumer, &c))
                .map(|(t, _)| *t)
                .collect();
            for t in mine {
                if let Some(d) = u.remove(&t) {
                    d.queue.stats.settled();
                }
            }
        }
        sink.notify_cancel(&c.tag);
    }
}

/// Where a home node's queue delivers the link's messages.
#[derive(Debug)]
struct Sink {
    session: Weak<Session>,
    vhost: String,
    queue: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("from", &self.from).finish()
    }
}

impl ConsumerChannel for Sink {
    fn try_deliver(
        &self,
        consumer: &Arc<Consumer>,
        queue: &Arc<Queue>,
        take: &mut dyn FnMut() -> Option<QueuedMessage>,
    ) -> bool {
        let Some(session) = self.session.upgrade() else {
            return false;
        };
        if !consumer.is_active()
            || consumer.unacked.load(Ordering::Relaxed) >= consumer.prefetch as u32
        {
            return false;
        }
        let Some(mut m) = take() else {
            return false;
        };
        m.msg = queue.for_delivery(m.msg);
        if let Some(id) = m.stored {
            queue.store_delivered(id, false, m.redelivered);
        }
        let tag = NEXT_TAG.fetch_add(1, Ordering::Relaxed);
        consumer.unacked.fetch_add(1, Ordering::Relaxed);
        queue.stats.delivered(false, false, m.redelivered);
        let w = Wire::Deliver {
            vhost: self.vhost.clone(),
            queue: self.queue.clone(),
            tag,
            redelivered: m.redelivered,
            lens: lens(&m.msg),
        };
        let bytes = frame(&w, Some(&m.msg));
        session.unacked.lock().insert(
            tag,
            Delivered {
                queue: queue.clone(),
                consumer: consumer.clone(),
                msg: m,
            },
        );
        let _ = session.tx.send(bytes);
        true
    }

    fn deliver_get(&self, _: &Arc<Queue>, _: &QueuedMessage, _: bool, _: u32) -> bool {
        false
    }

    fn deliver_direct(&self, _: &[u8], _: &Message) -> bool {
        false
    }

    fn notify_cancel(&self, _: &[u8]) {
        if let Some(s) = self.session.upgrade() {
            let _ = s.tx.send(frame(
                &Wire::Cancelled {
                    vhost: self.vhost.clone(),
                    queue: self.queue.clone(),
                },
                None,
            ));
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
