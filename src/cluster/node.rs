//! One node of a cluster: its identity, its peers, the inter-node listener
//! and the Raft groups it runs, and the one way to change a group's state,
//! `propose`, which works on any node (a follower forwards the command to
//! the leader it knows of and then waits until its own machine has applied
//! it, so what it says next reflects the change).

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::{BasicNode, Raft};
use parking_lot::Mutex;

use super::TypeConfig;
use super::log::RaftLog;
use super::machine::{Machine, StateMachine};
use super::net::{
    AddressBook, Groups, Link, MemberChange, Network, Proposal, change_here, propose_here, serve,
};
use crate::store::disk::Disk;

/// Raft timings of every group. A leader heartbeats every 200 ms; a
/// follower that hears none for 1–2 s stands for election, so a dead
/// leader is usually replaced within 2.5 s while a busy machine (two cores
/// shared by three nodes in the tests) does not start needless elections.
pub fn raft_config() -> Arc<openraft::Config> {
    Arc::new(
        openraft::Config {
            cluster_name: "warren".into(),
            heartbeat_interval: 200,
            election_timeout_min: 1000,
            election_timeout_max: 2000,
            // Entries are held in memory until a snapshot lets them go
            // (an entry can be a batch of messages): snapshot often, keep
            // few behind it.
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(300),
            max_in_snapshot_log_to_keep: 50,
            ..Default::default()
        }
        .validate()
        .expect("the Raft timings are consistent"),
    )
}

/// Why a proposal did not take effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProposeError {
    /// No leader answered in time (no majority reachable, or an election
    /// that did not end).
    NoQuorum(String),
    /// This node does not run the group.
    NoGroup(String),
    /// The group refused it.
    Failed(String),
}

impl std::fmt::Display for ProposeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProposeError::NoQuorum(g) => write!(
                f,
                "no leader of {g} could be reached in time: a majority of the cluster's nodes is unavailable"
            ),
            ProposeError::NoGroup(g) => write!(f, "this node does not run {g}"),
            ProposeError::Failed(e) => write!(f, "the cluster refused the change: {e}"),
        }
    }
}

/// Links used to forward proposals, by group and leader.
type Links = Mutex<HashMap<(String, u64), Arc<tokio::sync::Mutex<Link>>>>;

/// A running node.
pub struct Node {
    /// This node's id.
    pub id: u64,
    /// The nodes of this node's config (this one too), by id: they form
    /// the cluster the first time.
    pub configured: BTreeMap<u64, BasicNode>,
    /// Where each node is reached.
    pub book: AddressBook,
    secret: Arc<super::net::Peering>,
    groups: Groups,
    disk: Arc<dyn Disk>,
    links: Links,
    /// Nodes that did not answer `await_applied_everywhere`, and until when
    /// they are not asked again.
    unanswered: Mutex<HashMap<u64, Instant>>,
    server: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .field("configured", &self.configured)
            .finish()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Node {
    /// Starts node `id` whose config lists `configured` (itself among
    /// them), answering its peers on `listener`.
    pub fn start(
        id: u64,
        configured: BTreeMap<u64, BasicNode>,
        secret: super::net::Peering,
        listener: tokio::net::TcpListener,
        disk: Arc<dyn Disk>,
    ) -> Node {
        let secret = Arc::new(secret);
        let groups = Groups::default();
        let server = tokio::spawn(serve(listener, groups.clone(), secret.clone()));
        let book = AddressBook::configured(configured.iter().map(|(i, n)| (*i, n.addr.clone())));
        Node {
            id,
            configured,
            book,
            secret,
            groups,
            disk,
            links: Mutex::default(),
            unanswered: Mutex::default(),
            server,
        }
    }

    /// Opens group `name` with its files in `dir` and `machine` as its
    /// state, and registers it with the listener. Committed entries on disk
    /// are applied to the machine before this returns. The first time, the
    /// lowest-numbered of `initial` creates the group with `initial` as its
    /// voters; a node not among them (or with `initial` empty) waits to be
    /// added by the group's leader.
    pub async fn open_group<M: Machine>(
        &self,
        name: &str,
        dir: &Path,
        machine: M,
        initial: &BTreeMap<u64, BasicNode>,
    ) -> io::Result<(Raft<TypeConfig>, StateMachine<M>)> {
        let log = RaftLog::open(self.disk.clone(), dir)?;
        let sm = StateMachine::open(self.disk.clone(), dir, machine)?;
        let raft = Raft::new(
            self.id,
            raft_config(),
            Network::with_addrs(self.secret.clone(), name, self.book.clone()),
            log,
            sm.clone(),
        )
        .await
        .map_err(io::Error::other)?;
        self.groups.insert(name, raft.clone());
        let fresh = raft
            .is_initialized()
            .await
            .map(|i| !i)
            .map_err(io::Error::other)?;
        if fresh && initial.keys().next() == Some(&self.id) {
            // Refused when another start already did it: that is fine.
            if let Err(e) = raft.initialize(initial.clone()).await {
                tracing::debug!("group {name} not initialized here: {e}");
            }
        }
        Ok((raft, sm))
    }

    /// Sets who takes data connections from other nodes.
    pub fn set_data_handler(&self, h: super::net::DataHandler) {
        self.groups.set_data_handler(h);
    }

    /// The secret the nodes share.
    pub fn secret(&self) -> Arc<super::net::Peering> {
        self.secret.clone()
    }

    /// Group `name`, if this node runs it.
    pub fn group(&self, name: &str) -> Option<Raft<TypeConfig>> {
        self.groups.get(name)
    }

    /// Writes `cmd` to group `name` through its leader, wherever it is,
    /// and waits until this node's machine has applied it: the machine's
    /// reply. Gives up after `limit` without a leader.
    ///
    /// A forwarded proposal whose answer is lost is sent again, so a
    /// command may be applied twice: commands must be idempotent.
    pub async fn propose(
        &self,
        name: &str,
        cmd: Vec<u8>,
        limit: Duration,
    ) -> Result<Vec<u8>, ProposeError> {
        self.propose_at(name, cmd, limit).await.map(|(_, r)| r)
    }

    /// `propose`, with the log index the command was applied at.
    pub async fn propose_at(
        &self,
        name: &str,
        cmd: Vec<u8>,
        limit: Duration,
    ) -> Result<(u64, Vec<u8>), ProposeError> {
        let raft = self
            .groups
            .get(name)
            .ok_or_else(|| ProposeError::NoGroup(name.to_owned()))?;
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ProposeError::NoQuorum(name.to_owned()));
            }
            let leader = raft.metrics().borrow().current_leader;
            let outcome = match leader {
                Some(l) if l == self.id => {
                    tokio::time::timeout(left, propose_here(&raft, cmd.clone()))
                        .await
                        .unwrap_or(Proposal::NotLeader(None))
                }
                Some(l) => match self.address(&raft, l) {
                    Some(addr) => self.forward(name, l, &addr, cmd.clone(), left).await,
                    None => Proposal::NotLeader(None),
                },
                None => Proposal::NotLeader(None),
            };
            match outcome {
                Proposal::Applied(index, reply) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    raft.wait(Some(left.max(Duration::from_secs(1))))
                        .applied_index_at_least(Some(index), "a proposal to apply here")
                        .await
                        .map_err(|_| ProposeError::NoQuorum(name.to_owned()))?;
                    return Ok((index, reply));
                }
                Proposal::Failed(e) => return Err(ProposeError::Failed(e)),
                Proposal::NotLeader(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Where node `id` is reached: the address book, else the group's
    /// membership.
    fn address(&self, raft: &Raft<TypeConfig>, id: u64) -> Option<String> {
        self.book.get(id).or_else(|| {
            raft.metrics()
                .borrow()
                .membership_config
                .nodes()
                .find(|(n, _)| **n == id)
                .map(|(_, n)| n.addr.clone())
        })
    }

    /// The link for group `name` to node `to` at `addr`.
    fn link(&self, name: &str, to: u64, addr: &str) -> Arc<tokio::sync::Mutex<Link>> {
        self.links
            .lock()
            .entry((name.to_owned(), to))
            .or_insert_with(|| {
                Arc::new(tokio::sync::Mutex::new(Link::new(
                    to,
                    addr,
                    self.secret.clone(),
                    name,
                )))
            })
            .clone()
    }

    /// Makes `change` to group `name`'s members through its leader: the
    /// one this node knows of, else whichever node of the address book
    /// names it (so a node that does not run the group, or has not joined
    /// it yet, can ask). Gives up after `limit`.
    pub async fn change_members(
        &self,
        name: &str,
        change: MemberChange,
        limit: Duration,
    ) -> Result<(), ProposeError> {
        let deadline = Instant::now() + limit;
        let mut hint: Option<(u64, String)> = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ProposeError::NoQuorum(name.to_owned()));
            }
            let local = self.groups.get(name);
            let leader = local
                .as_ref()
                .and_then(|r| r.metrics().borrow().current_leader);
            let mut outcome = Proposal::NotLeader(None);
            if leader == Some(self.id)
                && let Some(raft) = &local
            {
                outcome = tokio::time::timeout(left, change_here(raft, change.clone()))
                    .await
                    .unwrap_or(Proposal::NotLeader(None));
            } else {
                let mut targets: Vec<(u64, String)> = Vec::new();
                if let Some(h) = hint.take() {
                    targets.push(h);
                }
                if let (Some(l), Some(raft)) = (leader, &local)
                    && let Some(addr) = self.address(raft, l)
                {
                    targets.push((l, addr));
                }
                for (id, addr) in self.book.all() {
                    if id != self.id && !targets.iter().any(|(t, _)| *t == id) {
                        targets.push((id, addr));
                    }
                }
                for (id, addr) in targets {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let link = self.link(name, id, &addr);
                    let mut link = link.lock().await;
                    match link.change_members(change.clone(), left).await {
                        Ok(Proposal::NotLeader(Some(h))) => {
                            hint = Some(h);
                            break;
                        }
                        Ok(Proposal::NotLeader(None)) | Err(_) => continue,
                        Ok(p) => {
                            outcome = p;
                            break;
                        }
                    }
                }
            }
            match outcome {
                Proposal::Applied(..) => return Ok(()),
                Proposal::Failed(e) => return Err(ProposeError::Failed(e)),
                Proposal::NotLeader(_) => {
                    if hint.is_none() {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
    }

    /// Waits (up to `limit`) until every other voter of group `name` that
    /// answers has applied its log up to `index`, so what a client was
    /// just told is done is seen on whichever node it uses next (as
    /// RabbitMQ's metadata changes are on every running node when
    /// answered). A node that does not answer is left out, and for a
    /// while after not asked again.
    pub async fn await_applied_everywhere(&self, name: &str, index: u64, limit: Duration) {
        let Some(raft) = self.groups.get(name) else {
            return;
        };
        let voters: Vec<u64> = raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .filter(|v| *v != self.id)
            .collect();
        let now = Instant::now();
        let mut waits = tokio::task::JoinSet::new();
        for id in voters {
            if self
                .unanswered
                .lock()
                .get(&id)
                .is_some_and(|until| *until > now)
            {
                continue;
            }
            let Some(addr) = self.address(&raft, id) else {
                continue;
            };
            // Its own link: a wait must not hold up forwarded proposals.
            let link = self
                .links
                .lock()
                .entry((format!("{name}#applied"), id))
                .or_insert_with(|| {
                    Arc::new(tokio::sync::Mutex::new(Link::new(
                        id,
                        &addr,
                        self.secret.clone(),
                        name,
                    )))
                })
                .clone();
            waits.spawn(async move {
                let mut link = link.lock().await;
                (id, matches!(link.applied(index, limit).await, Ok(true)))
            });
        }
        let deadline = tokio::time::Instant::now() + limit + Duration::from_millis(600);
        while let Ok(Some(done)) = tokio::time::timeout_at(deadline, waits.join_next()).await {
            if let Ok((id, false)) = done {
                self.unanswered
                    .lock()
                    .insert(id, Instant::now() + Duration::from_secs(30));
            }
        }
        // Those still waiting did not answer in time.
        waits.abort_all();
    }

    /// Which node leads group `name`: as this node's own copy of the group
    /// knows, else as the first of `members` that answers says.
    pub async fn leader_of(&self, name: &str, members: &[u64]) -> Option<u64> {
        if let Some(raft) = self.groups.get(name)
            && let Some(l) = raft.metrics().borrow().current_leader
        {
            return Some(l);
        }
        for &id in members {
            if id == self.id {
                continue;
            }
            let Some(addr) = self.book.get(id) else {
                continue;
            };
            let link = self.link(name, id, &addr);
            let mut link = link.lock().await;
            if let Ok(Some(l)) = link.leader(Duration::from_millis(500)).await {
                return Some(l);
            }
        }
        None
    }

    async fn forward(
        &self,
        name: &str,
        leader: u64,
        addr: &str,
        cmd: Vec<u8>,
        ttl: Duration,
    ) -> Proposal {
        let link = self.link(name, leader, addr);
        let mut link = link.lock().await;
        match link.propose(cmd, ttl).await {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!("forwarding a proposal for {name} to node {leader}: {e}");
                Proposal::NotLeader(None)
            }
        }
    }

    /// Stops group `name` here and forgets it.
    pub async fn close_group(&self, name: &str) {
        if let Some(raft) = self.groups.remove(name) {
            let _ = raft.shutdown().await;
        }
    }

    /// Stops every group this node runs.
    pub async fn shutdown(&self) {
        for name in self.groups.names() {
            if let Some(raft) = self.groups.remove(&name) {
                let _ = raft.shutdown().await;
            }
        }
        self.server.abort();
    }
}
