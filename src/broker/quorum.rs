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
//! is dead-lettered (reason `delivery_limit`) by the leader. queue.purge
//! is done by the leader: its ready messages are settled in one entry.
//! Length limits and TTLs are the leader's queue object's, as on one node:
//! drop-head and expiry take ready messages from the head (dead-lettered,
//! then settled in the group), reject-publish refuses a publish while the
//! queue is over a limit. TTLs count from when the leader took the message
//! (`Msg::at`), so a new leader expires on the same schedule.

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
    /// When the leader took it (wall clock, ms since the epoch): TTLs
    /// count from here, on whichever node leads later.
    at: u64,
}

impl Msg {
    fn of(m: &Message) -> Msg {
        Msg {
            exchange: m.exchange().to_vec(),
            routing_key: m.routing_key().to_vec(),
            header: m.header().to_vec(),
            body: m.body_bytes().to_vec(),
            at: crate::ops::clock::wall_ms(),
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
                        q.push_replicated(msg.message(0), id, false, msg.at);
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
                        q.push_replicated(k.msg.message(k.count), id, true, k.msg.at);
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
    /// The nodes that run the group (from the definitions).
    members: Mutex<Vec<u64>>,
    /// Set when `members` changes.
    members_changed: tokio::sync::Notify,
    /// On a node that does not run the group: the leader the members name.
    remote_leader: Mutex<Option<u64>>,
    /// The runtime its work runs on (settlements can come from the timer
    /// thread: TTL expiry).
    rt: tokio::runtime::Handle,
}

/// Where a quorum queue's group runs: the definitions entry that declared
/// it (its group's name) and its members.
#[derive(Debug, Clone)]
pub struct Placement {
    /// The declaring definitions entry.
    pub index: u64,
    /// The nodes that run the group.
    pub members: Vec<u64>,
    /// The queue's handle on this node.
    pub(super) handle: Option<Arc<Handle>>,
}

/// Replicas a quorum queue gets when declared without
/// x-quorum-initial-group-size (RabbitMQ's quorum_cluster_size).
pub const DEFAULT_GROUP_SIZE: usize = 3;

/// The members of a new quorum queue: its declaring node `home` first,
/// then the nodes after it by id, `size` (or `DEFAULT_GROUP_SIZE`) of
/// `voters` at most.
pub fn choose_members(voters: &[u64], home: u64, size: Option<i64>) -> Vec<u64> {
    let mut v: Vec<u64> = voters.to_vec();
    v.sort_unstable();
    v.dedup();
    if v.is_empty() {
        return v;
    }
    let start = v.iter().position(|n| *n >= home).unwrap_or(0);
    v.rotate_left(start);
    let n = size
        .map_or(DEFAULT_GROUP_SIZE, |s| s.max(1) as usize)
        .min(v.len());
    v.truncate(n);
    v
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
    /// The group's members changed (the definitions say so).
    pub fn set_members(&self, members: Vec<u64>) {
        *self.members.lock() = members;
        self.members_changed.notify_one();
    }

    fn is_member(&self) -> bool {
        self.members.lock().contains(&self.me)
    }

    /// The leader as this node knows it: its own copy of the group, else
    /// what a member last said.
    fn known_leader(&self) -> Option<u64> {
        self.raft()
            .and_then(|r| r.metrics().borrow().current_leader)
            .or(*self.remote_leader.lock())
    }

    /// Asks the members which node leads (on a node that does not run
    /// the group).
    async fn ask_leader(&self, broker: &Weak<Broker>) {
        if self
            .raft()
            .is_some_and(|r| r.metrics().borrow().current_leader.is_some())
        {
            *self.remote_leader.lock() = None;
            return;
        }
        let members = self.members.lock().clone();
        let Some(b) = broker.upgrade() else { return };
        let Some(c) = b.cluster() else { return };
        let leader = c.node.leader_of(&self.group_name, &members).await;
        *self.remote_leader.lock() = leader;
    }

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
        self.rt.spawn(async move {
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
            old.consumers_changed(0, 0);
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
                q.push_replicated(k.msg.message(k.count), *id, true, k.msg.at);
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
            old.consumers_changed(0, 0);
        }
        let consumers = q.consumer_count() as usize;
        if let (Some(s), true) = (stub, consumers > 0) {
            s.consumers_changed(consumers, q.consumers_top_priority());
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

    fn consumers_changed(&self, count: usize, top: i32) {
        if !self.leading.load(Ordering::Acquire)
            && let Some(f) = self.follower.lock().clone()
        {
            f.consumers_changed(count, top);
        }
    }

    fn serves_here(&self) -> bool {
        self.leading.load(Ordering::Acquire)
    }

    fn count(&self, done: Box<dyn FnOnce(Option<u32>) + Send>) {
        if self.leading.load(Ordering::Acquire) {
            done(self.queue.upgrade().map(|q| q.message_count()));
        } else if let Some(f) = self.follower.lock().clone() {
            f.count(done);
        } else {
            done(None);
        }
    }

    fn purge(&self, done: Box<dyn FnOnce(Option<u32>) + Send>) {
        if self.leading.load(Ordering::Acquire) {
            // The ready messages leave the queue object here and the
            // group (one Settle).
            done(self.queue.upgrade().map(|q| q.purge()));
        } else if let Some(f) = self.follower.lock().clone() {
            f.purge(done);
        } else {
            done(None);
        }
    }

    fn leader(&self) -> Option<u64> {
        (*self.role.lock()).flatten()
    }
}

/// Ties quorum queue `q` of `vhost`, declared by definitions entry
/// `index`, to its group (opened in the background; publishes wait for it
/// and for a leader).
pub fn attach(
    broker: &Broker,
    vhost: &str,
    q: &Arc<Queue>,
    index: u64,
    members: Vec<u64>,
) -> Option<Arc<Handle>> {
    let links = broker.links.get().cloned()?;
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
        members: Mutex::new(members),
        members_changed: tokio::sync::Notify::new(),
        remote_leader: Mutex::new(None),
        rt: tokio::runtime::Handle::current(),
    });
    q.set_remote(handle.clone());
    tokio::spawn(run(weak, handle.clone(), rx));
    Some(handle)
}

/// Runs the queue's part on this node until it is deleted: the group (on
/// a member) or the leader the members name (elsewhere) is followed, and
/// publishes are proposed or forwarded. A change of members opens or
/// closes the group here.
async fn run(
    broker: Weak<Broker>,
    handle: Arc<Handle>,
    mut publishes: mpsc::UnboundedReceiver<(Message, Arc<Ticket>)>,
) {
    // The node is set once the definitions are open (this may run while
    // they are replayed at start).
    loop {
        let Some(b) = broker.upgrade() else { return };
        if b.cluster().is_some() {
            break;
        }
        drop(b);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut metrics: Option<tokio::sync::watch::Receiver<_>> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let member = handle.is_member();
        if member && metrics.is_none() {
            match open(&broker, &handle).await {
                Some(raft) => metrics = Some(raft.metrics()),
                None => return,
            }
        } else if !member && metrics.is_some() {
            metrics = None;
            close(&broker, &handle).await;
            handle.ask_leader(&broker).await;
        }
        if let Some(m) = &mut metrics {
            m.borrow_and_update();
        }
        handle.observe(handle.known_leader());
        tokio::select! {
            () = handle.members_changed.notified() => {}
            changed = async {
                match &mut metrics {
                    Some(m) => m.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            } => {
                if !changed {
                    return;
                }
            }
            _ = tick.tick() => {
                handle.ask_leader(&broker).await;
            }
            p = publishes.recv() => {
                let Some(first) = p else { return };
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH
                    && let Ok(p) = publishes.try_recv()
                {
                    batch.push(p);
                }
                send(&broker, &handle, batch).await;
            }
        }
        if handle.queue.upgrade().is_none_or(|q| q.is_deleted()) {
            // The queue is gone: so is its group, here.
            close(&broker, &handle).await;
            return;
        }
    }
}

/// Opens the group on this node (a member): created by the lowest member
/// the first time, else it waits for the leader to reach it.
async fn open(broker: &Weak<Broker>, handle: &Handle) -> Option<openraft::Raft<TypeConfig>> {
    let b = broker.upgrade()?;
    let c = b.cluster()?;
    let group = &handle.group_name;
    let dir = group_dir(&b, group);
    let machine = QqMachine {
        msgs: BTreeMap::new(),
        queue: handle.queue.clone(),
        live: None,
    };
    let initial: BTreeMap<u64, openraft::BasicNode> = handle
        .members
        .lock()
        .iter()
        .map(|id| {
            let addr = c.node.book.get(*id).unwrap_or_default();
            (*id, openraft::BasicNode::new(addr))
        })
        .collect();
    match c.node.open_group(group, &dir, machine, &initial).await {
        Ok((raft, sm)) => {
            *handle.group.lock() = Some((raft.clone(), sm));
            Some(raft)
        }
        Err(e) => {
            tracing::error!("quorum queue group {group}: {e}");
            None
        }
    }
}

/// Stops the group here and removes its files (the queue is gone, or this
/// node is no longer a member).
async fn close(broker: &Weak<Broker>, handle: &Handle) {
    let had = handle.group.lock().take().is_some();
    if let Some(b) = broker.upgrade()
        && let Some(c) = b.cluster()
    {
        c.node.close_group(&handle.group_name).await;
        if had {
            let _ = std::fs::remove_dir_all(group_dir(&b, &handle.group_name));
        }
    }
}

/// Sends publishes where the queue is served: proposed here if this node
/// leads, else forwarded to the leader (waiting for one, up to
/// `LEADER_WAIT`).
async fn send(broker: &Weak<Broker>, handle: &Handle, batch: Vec<(Message, Arc<Ticket>)>) {
    let deadline = tokio::time::Instant::now() + LEADER_WAIT;
    loop {
        let leader = handle.known_leader();
        if let Some(raft) = handle.raft()
            && leader == Some(handle.me)
            && handle.leading.load(Ordering::Acquire)
        {
            // x-overflow reject-publish: a queue over its limit refuses.
            let batch: Vec<(Message, Arc<Ticket>)> = match handle.queue.upgrade() {
                Some(q) => batch
                    .into_iter()
                    .filter(|(m, t)| {
                        let refused = q.refuses_replicated(m);
                        if refused {
                            t.done(false);
                        }
                        !refused
                    })
                    .collect(),
                None => batch,
            };
            if batch.is_empty() {
                crate::queue::stream::note_durable();
                return;
            }
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
        if tokio::time::Instant::now() >= deadline {
            let tickets: Vec<Arc<Ticket>> = batch.into_iter().map(|(_, t)| t).collect();
            refuse(&tickets);
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if leader.is_none() {
            handle.ask_leader(broker).await;
        }
        handle.observe(handle.known_leader());
    }
}

fn refuse(tickets: &[Arc<Ticket>]) {
    for t in tickets {
        t.done(false);
    }
    crate::queue::stream::note_durable();
}
