//! Quorum queues in a cluster: each is a Raft group on every node, whose
//! log is the queue's commands (enqueue, settle, return) and whose machine
//! is its messages. A publish is confirmed once a majority has it in its
//! log on disk; the group's leader serves the queue (its consumers, and
//! the other nodes' links, which reach it like any queue of another node).
//!
//! On every node the queue object is tied to a `Handle`:
//! - on the leader, publishes are proposed to the group in order (batched:
//!   one `Enqueue` per round of what waits), and each committed entry is
//!   put in the queue object's ready list as it is applied, with the
//!   message's id in the group (`tag`) where a local queue keeps its store
//!   id, so acks and rejects come back as `Settle` and returns as `Return`;
//! - on the other nodes, the handle is a link stub to the current leader.
//!
//! When the leader changes, the new leader fills its queue object from the
//! machine: every message not settled, those delivered before flagged
//! redelivered. A delivery made by the old leader and acked after the
//! change is delivered again (at least once, never lost).
//!
//! A return past x-delivery-limit leaves the machine on every member and
//! is dead-lettered (reason `delivery_limit`) by the leader. Not yet on
//! replicated quorum queues: length limits, TTLs, other dead-lettering
//! (rejects are dead-lettered where they happen), queue.purge (540).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::Broker;
use crate::cluster::TypeConfig;
use crate::cluster::machine::{Machine, StateMachine};
use crate::message::Message;
use crate::queue::remote::{RemoteQueue, Ticket};
use crate::queue::{Queue, Reason};

/// Messages in one `Enqueue` entry at most (entries are held in memory
/// until a snapshot lets them go).
const MAX_BATCH: usize = 256;

/// How long a publish waits for the group to have a leader, and then for
/// a majority to take it, before it is refused (nacked: it may still be
/// committed later, as with any nack, it is the publisher's to send again).
const LEADER_WAIT: Duration = Duration::from_secs(5);

/// The group of quorum queue `name` in `vhost` declared by the
/// definitions entry at `index` (a queue declared again after a delete is
/// a new group).
pub fn group_name(vhost: &str, name: &str, index: u64) -> String {
    format!("qq/{index}/{vhost}/{name}")
}

/// Its directory under the cluster's: a hash of the group's name (queue
/// names may hold any character).
fn group_dir(broker: &Broker, group: &str) -> std::path::PathBuf {
    use sha2::Digest;
    let h = sha2::Sha256::digest(group.as_bytes());
    let hex: String = h[..12].iter().map(|b| format!("{b:02x}")).collect();
    broker.config.data_dir.join("cluster").join("qq").join(hex)
}

/// A message as the group's log holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Msg {
    exchange: Vec<u8>,
    routing_key: Vec<u8>,
    header: Vec<u8>,
    body: Vec<u8>,
}

impl Msg {
    fn of(m: &Message) -> Msg {
        Msg {
            exchange: m.exchange().to_vec(),
            routing_key: m.routing_key().to_vec(),
            header: m.header().to_vec(),
            body: m.body_bytes().to_vec(),
        }
    }

    fn message(&self, count: u32) -> Message {
        let m = Message::new(
            &self.exchange,
            &self.routing_key,
            &self.header,
            Bytes::from(self.body.clone()),
        );
        if count == 0 {
            m
        } else {
            crate::queue::quorum::with_delivery_count(&m, Some(count as u64))
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
enum Command {
    /// Messages, in order; the n-th of the entry at index i is
    /// `(i << 16) | n`.
    Enqueue(Vec<Msg>),
    /// Done with these.
    Settle(Vec<u64>),
    /// Back to the queue, delivery count up by one.
    Return(Vec<u64>),
}

/// A message kept by the machine.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Kept {
    msg: Msg,
    /// Returns so far (x-delivery-count).
    count: u32,
}

/// A quorum queue's machine: its messages not settled, by id.
pub struct QqMachine {
    msgs: BTreeMap<u64, Kept>,
    /// The queue object here (for its x-delivery-limit).
    queue: Weak<Queue>,
    /// While this node leads: the queue object its applies fill.
    live: Option<Weak<Queue>>,
}

impl Machine for QqMachine {
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8> {
        let Ok(cmd) = crate::cluster::decode::<Command>(command) else {
            tracing::warn!("quorum queue: an unreadable command at index {index} skipped");
            return Vec::new();
        };
        let live = self.live.as_ref().and_then(Weak::upgrade);
        match cmd {
            Command::Enqueue(batch) => {
                for (n, msg) in batch.into_iter().enumerate() {
                    let id = (index << 16) | n as u64;
                    if let Some(q) = &live {
                        q.push_from_home(msg.message(0), id, false);
                    }
                    self.msgs.insert(id, Kept { msg, count: 0 });
                }
            }
            Command::Settle(ids) => {
                for id in ids {
                    self.msgs.remove(&id);
                }
            }
            Command::Return(ids) => {
                let limit = self.queue.upgrade().and_then(|q| q.args().delivery_limit);
                let mut dead = Vec::new();
                for id in ids {
                    let Some(k) = self.msgs.get_mut(&id) else {
                        continue;
                    };
                    k.count += 1;
                    if limit.is_some_and(|l| u64::from(k.count) > l) {
                        // Past x-delivery-limit: out of the queue on every
                        // member, dead-lettered by the leader.
                        if let Some(k) = self.msgs.remove(&id) {
                            dead.push((k.msg.message(k.count), Reason::DeliveryLimit));
                        }
                        continue;
                    }
                    if let Some(q) = &live {
                        q.push_from_home(k.msg.message(k.count), id, true);
                    }
                }
                if let (Some(q), false) = (&live, dead.is_empty()) {
                    q.dead_letter(dead);
                }
            }
        }
        Vec::new()
    }

    fn snapshot(&self) -> Vec<u8> {
        crate::cluster::encode(&self.msgs).unwrap_or_default()
    }

    fn restore(&mut self, snapshot: &[u8]) -> std::io::Result<()> {
        self.msgs = crate::cluster::decode(snapshot)?;
        Ok(())
    }
}

/// A quorum queue's tie to its group on this node.
pub struct Handle {
    me: u64,
    group_name: String,
    /// The leader the queue object is tied to (None: not tied yet).
    role: Mutex<Option<Option<u64>>>,
    vhost: String,
    name: String,
    queue: Weak<Queue>,
    links: Arc<super::link::Links>,
    group: Mutex<Option<(openraft::Raft<TypeConfig>, StateMachine<QqMachine>)>>,
    leading: AtomicBool,
    /// The link stub to the current leader, on other nodes.
    follower: Mutex<Option<Arc<dyn RemoteQueue>>>,
    /// Publishes, in order, for the proposer.
    publishes: mpsc::UnboundedSender<(Message, Arc<Ticket>)>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("quorum::Handle")
            .field("queue", &self.name)
            .field("leading", &self.leading)
            .finish()
    }
}

impl Handle {
    /// Ties the queue object to `leader`, unless it already is.
    fn observe(&self, leader: Option<u64>) {
        {
            let mut role = self.role.lock();
            if *role == Some(leader) {
                return;
            }
            *role = Some(leader);
        }
        if leader == Some(self.me) {
            self.lead();
        } else {
            self.follow(leader);
        }
    }

    fn raft(&self) -> Option<openraft::Raft<TypeConfig>> {
        self.group.lock().as_ref().map(|(r, _)| r.clone())
    }

    fn propose(&self, cmd: &Command) -> Option<()> {
        let raft = self.raft()?;
        let bytes = crate::cluster::encode(cmd).ok()?;
        tokio::spawn(async move {
            // Without a majority the settlement waits, then is given up:
            // the message is delivered again later (at least once).
            let _ = tokio::time::timeout(Duration::from_secs(30), raft.client_write(bytes)).await;
        });
        Some(())
    }

    /// This node now leads the group: the queue object is filled from the
    /// machine and serves it.
    fn lead(&self) {
        if let Some(old) = self.follower.lock().take() {
            old.consumers_changed(0);
        }
        let Some(q) = self.queue.upgrade() else {
            return;
        };
        let sm = self.group.lock().as_ref().map(|(_, sm)| sm.clone());
        let Some(sm) = sm else { return };
        sm.with_mut(|m| {
            drop(q.take(usize::MAX));
            m.live = Some(Arc::downgrade(&q));
            self.leading.store(true, Ordering::Release);
            for (id, k) in &m.msgs {
                // Delivered before or not, nobody here can say: flagged.
                q.push_from_home(k.msg.message(k.count), *id, true);
            }
        });
        tracing::info!(
            "quorum queue '{}' in vhost '{}': this node leads",
            self.name,
            self.vhost
        );
    }

    /// Node `leader` (another one, or none) leads: the queue object is a
    /// stub to it.
    fn follow(&self, leader: Option<u64>) {
        let sm = self.group.lock().as_ref().map(|(_, sm)| sm.clone());
        if let Some(sm) = sm {
            sm.with_mut(|m| {
                m.live = None;
                self.leading.store(false, Ordering::Release);
            });
        }
        let Some(q) = self.queue.upgrade() else {
            return;
        };
        drop(q.take(usize::MAX));
        let stub = leader.map(|l| self.links.stub(l, &self.vhost, &self.name, &q));
        let old = std::mem::replace(&mut *self.follower.lock(), stub.clone());
        if let Some(old) = old {
            old.consumers_changed(0);
        }
        let consumers = q.consumer_count() as usize;
        if let (Some(s), true) = (stub, consumers > 0) {
            s.consumers_changed(consumers);
        }
    }
}

impl RemoteQueue for Handle {
    fn forward(&self, msg: Message) -> Arc<Ticket> {
        let t = Ticket::new();
        if self.publishes.send((msg, t.clone())).is_err() {
            t.done(false);
        }
        t
    }

    fn settle(&self, acked: Vec<u64>, requeued: Vec<u64>) {
        if self.leading.load(Ordering::Acquire) {
            if !acked.is_empty() {
                self.propose(&Command::Settle(acked));
            }
            if !requeued.is_empty() {
                self.propose(&Command::Return(requeued));
            }
        } else if let Some(f) = self.follower.lock().clone() {
            f.settle(acked, requeued);
        }
    }

    fn fetch(&self) {
        match self.follower.lock().clone() {
            Some(f) => f.fetch(),
            None => {
                if let Some(q) = self.queue.upgrade() {
                    q.fetched_empty();
                }
            }
        }
    }

    fn consumers_changed(&self, count: usize) {
        if !self.leading.load(Ordering::Acquire)
            && let Some(f) = self.follower.lock().clone()
        {
            f.consumers_changed(count);
        }
    }

    fn serves_here(&self) -> bool {
        self.leading.load(Ordering::Acquire)
    }

    fn leader(&self) -> Option<u64> {
        (*self.role.lock()).flatten()
    }
}

/// Ties quorum queue `q` of `vhost`, declared by definitions entry
/// `index`, to its group (opened in the background; publishes wait for it
/// and for a leader).
pub fn attach(broker: &Broker, vhost: &str, q: &Arc<Queue>, index: u64) {
    let Some(links) = broker.links.get().cloned() else {
        return;
    };
    let me = broker.config.cluster.node_id;
    let (tx, rx) = mpsc::unbounded_channel();
    let weak = links.broker();
    let handle = Arc::new(Handle {
        me,
        group_name: group_name(vhost, &q.name, index),
        role: Mutex::new(None),
        vhost: vhost.to_owned(),
        name: q.name.clone(),
        queue: Arc::downgrade(q),
        links,
        group: Mutex::new(None),
        leading: AtomicBool::new(false),
        follower: Mutex::new(None),
        publishes: tx,
    });
    q.set_remote(handle.clone());
    tokio::spawn(run(weak, handle, rx));
}

/// Opens the group, then follows its leader and proposes publishes.
async fn run(
    broker: Weak<Broker>,
    handle: Arc<Handle>,
    mut publishes: mpsc::UnboundedReceiver<(Message, Arc<Ticket>)>,
) {
    let group = handle.group_name.clone();
    // The node is set once the definitions are open (this may run while
    // they are replayed at start).
    let (raft, sm) = loop {
        let Some(b) = broker.upgrade() else { return };
        if let Some(c) = b.cluster() {
            let dir = group_dir(&b, &group);
            let machine = QqMachine {
                msgs: BTreeMap::new(),
                queue: handle.queue.clone(),
                live: None,
            };
            let initial = c.node.configured.clone();
            match c.node.open_group(&group, &dir, machine, &initial).await {
                Ok(g) => break g,
                Err(e) => {
                    tracing::error!("quorum queue group {group}: {e}");
                    return;
                }
            }
        }
        drop(b);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    *handle.group.lock() = Some((raft.clone(), sm));
    let mut metrics = raft.metrics();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let now = metrics.borrow_and_update().current_leader;
        handle.observe(now);
        tokio::select! {
            changed = metrics.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = tick.tick() => {}
            p = publishes.recv() => {
                let Some(first) = p else { return };
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH
                    && let Ok(p) = publishes.try_recv()
                {
                    batch.push(p);
                }
                send(&handle, &raft, &mut metrics, batch).await;
            }
        }
        if handle.queue.upgrade().is_none_or(|q| q.is_deleted()) {
            // The queue is gone: so is its group, here.
            if let Some(b) = broker.upgrade()
                && let Some(c) = b.cluster()
            {
                c.node.close_group(&group).await;
                let _ = std::fs::remove_dir_all(group_dir(&b, &group));
            }
            return;
        }
    }
}

/// Sends publishes where the queue is served: proposed here if this node
/// leads, else forwarded to the leader (waiting for one, up to
/// `LEADER_WAIT`).
async fn send(
    handle: &Handle,
    raft: &openraft::Raft<TypeConfig>,
    metrics: &mut tokio::sync::watch::Receiver<openraft::RaftMetrics<u64, openraft::BasicNode>>,
    batch: Vec<(Message, Arc<Ticket>)>,
) {
    let deadline = tokio::time::Instant::now() + LEADER_WAIT;
    loop {
        let leader = metrics.borrow().current_leader;
        if leader == Some(handle.me) && handle.leading.load(Ordering::Acquire) {
            let msgs: Vec<Msg> = batch.iter().map(|(m, _)| Msg::of(m)).collect();
            let tickets: Vec<Arc<Ticket>> = batch.into_iter().map(|(_, t)| t).collect();
            let Ok(bytes) = crate::cluster::encode(&Command::Enqueue(msgs)) else {
                refuse(&tickets);
                return;
            };
            match raft.client_write_ff(bytes).await {
                Ok(rx) => {
                    tokio::spawn(async move {
                        let ok =
                            matches!(tokio::time::timeout(LEADER_WAIT, rx).await, Ok(Ok(Ok(_))));
                        for t in &tickets {
                            t.done(ok);
                        }
                        crate::queue::stream::note_durable();
                    });
                }
                Err(_) => refuse(&tickets),
            }
            return;
        }
        let stub = handle.follower.lock().clone();
        if let (Some(l), Some(stub)) = (leader, stub)
            && l != handle.me
        {
            for (m, t) in batch {
                let inner = stub.forward(m);
                tokio::spawn(async move {
                    let mut rx = crate::queue::stream::durable_watch();
                    loop {
                        if let Some(ok) = inner.outcome() {
                            t.done(ok);
                            crate::queue::stream::note_durable();
                            return;
                        }
                        if rx.changed().await.is_err() {
                            t.done(false);
                            return;
                        }
                    }
                });
            }
            return;
        }
        if tokio::time::timeout_at(deadline, metrics.changed())
            .await
            .is_err()
        {
            let tickets: Vec<Arc<Ticket>> = batch.into_iter().map(|(_, t)| t).collect();
            refuse(&tickets);
            return;
        }
        let now = metrics.borrow().current_leader;
        handle.observe(now);
    }
}

fn refuse(tickets: &[Arc<Ticket>]) {
    for t in tickets {
        t.done(false);
    }
    crate::queue::stream::note_durable();
}
