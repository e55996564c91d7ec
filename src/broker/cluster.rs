//! The broker in a cluster: its definitions are the state machine of one
//! Raft group, `meta`, run by every node (see docs/architecture.md,
//! "Clustering").
//!
//! A change of definitions (a vhost, user, permission, policy, durable
//! exchange or queue, or a binding between durable ends) is not made where
//! it is asked for: it is
//! proposed to the group as a `Command`, and every node, the one that asked
//! among them, makes it when the group has committed it, in the group's
//! order, through the same code a single node runs. The node that asked
//! answers its client with the outcome its own machine computed, so two
//! clients on two nodes declaring the same queue at once see what they
//! would on one node: one creates it, the other finds it.
//!
//! A durable queue belongs to the node that declared it (its home), as in
//! RabbitMQ; the other nodes know it by name. Exclusive and non-durable
//! queues, non-durable exchanges and bindings to or from them are not
//! replicated yet: they live and die with their node and its connections.
//!
//! In a cluster the group's log and snapshots are the durable record of the
//! definitions, so the node-local definitions log is not kept.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Broker;
use super::definitions;
use crate::cluster::machine::Machine;
use crate::cluster::node::{Node, ProposeError};
use crate::protocol::error::{AmqpError, AmqpResult, Scope, code};
use crate::protocol::fields::table_from_json;
use crate::queue::{Queue, QueueConfig};
use crate::schema::{BindingDef, Definitions, ExchangeDef, QueueDef};
use crate::store::meta::MetaOp;
use crate::vhost::{DestName, ExchangeDeclare};

/// The definitions group's name.
pub const META: &str = "meta";

/// How long a change waits for the group to commit it.
const PROPOSE_LIMIT: Duration = Duration::from_secs(10);

/// How long a change waits for the other nodes to have applied it.
const APPLIED_WAIT: Duration = Duration::from_secs(2);

/// How long adding a node may take (it catches up first).
const JOIN_LIMIT: Duration = Duration::from_secs(60);

/// A change of definitions, as the group's log holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    /// Creates the default vhost and user, once in the group's life.
    Init {
        /// Default vhost.
        vhost: String,
        /// Default user.
        user: String,
        /// Its password hash.
        password_hash: String,
    },
    /// A user, vhost, permission or policy change (applied as is).
    Op(MetaOp),
    /// exchange.declare (not passive).
    DeclareExchange(ExchangeDef),
    /// exchange.delete.
    DeleteExchange {
        /// Vhost.
        vhost: String,
        /// Name.
        name: String,
        /// Only if it has no bindings.
        if_unused: bool,
    },
    /// queue.declare of a durable, non-exclusive queue (not passive).
    DeclareQueue {
        /// The queue.
        def: QueueDef,
        /// The node it lives on.
        home: u64,
        /// The cluster's nodes when it was proposed: a quorum queue's
        /// members are chosen among them (`quorum::choose_members`).
        /// Empty in logs written before members were chosen: every
        /// configured node.
        #[serde(default)]
        voters: Vec<u64>,
    },
    /// queue.delete.
    DeleteQueue {
        /// Vhost.
        vhost: String,
        /// Name.
        name: String,
        /// Only without consumers.
        if_unused: bool,
        /// Only without messages.
        if_empty: bool,
    },
    /// queue.bind / exchange.bind.
    Bind(BindingDef),
    /// queue.unbind / exchange.unbind.
    Unbind(BindingDef),
    /// A definitions import.
    Import(Definitions),
    /// Changes already made on node `from` alone (the HTTP API, the stream
    /// protocol, queues deleting themselves), in the order it made them.
    Ops {
        /// The node that made them (home of the queues they declare).
        from: u64,
        /// The changes.
        ops: Vec<MetaOp>,
        /// The cluster's nodes when they were proposed (see `DeclareQueue`).
        #[serde(default)]
        voters: Vec<u64>,
    },
    /// The members of a quorum queue's group are now `members`.
    QuorumMembers {
        /// Vhost.
        vhost: String,
        /// Queue.
        name: String,
        /// Its members.
        members: Vec<u64>,
    },
    /// Node `node` is leaving the cluster: the queues that live on it
    /// (classic queues and streams) go with it, as with RabbitMQ's
    /// forget_cluster_node.
    Forget {
        /// The node.
        node: u64,
    },
}

/// What a command did: a count (messages deleted with a queue) or the
/// error a client gets, with its scope.
pub type Outcome = Result<u32, (bool, u16, String)>;

fn refusal(e: AmqpError) -> (bool, u16, String) {
    (e.scope == Scope::Connection, e.code, e.text)
}

/// The client's error for a refused outcome.
pub fn outcome_error((connection, code, text): (bool, u16, String)) -> AmqpError {
    let mut e = if connection {
        AmqpError::connection(code, "")
    } else {
        AmqpError::channel(code, "")
    };
    e.text = text;
    e
}

/// Makes `cmd` on this node's broker (every node does, in log order).
pub fn apply(broker: &Broker, index: u64, cmd: Command) -> Outcome {
    let vhost = |v: &str| {
        broker.vhost(v).ok_or_else(|| {
            refusal(AmqpError::connection(
                code::NOT_ALLOWED,
                format!("vhost '{v}' not found"),
            ))
        })
    };
    match cmd {
        Command::Init {
            vhost: v,
            user,
            password_hash,
        } => {
            if broker.cluster_initialized() {
                return Ok(0);
            }
            broker.add_vhost(&v);
            broker.put_user(crate::auth::User {
                name: user.clone(),
                password_hash,
                tags: vec!["administrator".into()],
            });
            broker.set_permissions(&user, &v, crate::auth::Permissions::all());
            broker.set_cluster_initialized();
            Ok(0)
        }
        Command::Op(op) => {
            definitions::apply_logged(broker, op);
            Ok(0)
        }
        Command::DeclareExchange(x) => {
            let arguments = table_from_json(&x.arguments)
                .map_err(|e| refusal(AmqpError::channel(code::PRECONDITION_FAILED, e)))?;
            vhost(&x.vhost)?
                .declare_exchange(&ExchangeDeclare {
                    name: x.name,
                    kind: x.kind,
                    passive: false,
                    durable: x.durable,
                    auto_delete: x.auto_delete,
                    internal: x.internal,
                    arguments,
                })
                .map_err(refusal)?;
            Ok(0)
        }
        Command::DeleteExchange {
            vhost: v,
            name,
            if_unused,
        } => {
            vhost(&v)?
                .delete_exchange(&name, if_unused)
                .map_err(refusal)?;
            Ok(0)
        }
        Command::DeclareQueue { def, home, voters } => {
            let vh = vhost(&def.vhost)?;
            let arguments = table_from_json(&def.arguments)
                .map_err(|e| refusal(AmqpError::channel(code::PRECONDITION_FAILED, e)))?;
            let config = QueueConfig {
                durable: def.durable,
                exclusive_owner: None,
                auto_delete: def.auto_delete,
                arguments,
            };
            let (_, created) = vh
                .declare_queue(&def.name, false, false, config, 0)
                .map_err(refusal)?;
            if created {
                broker.tie_queue(&vh, &def.name, home, index, Members::Among(&voters));
            }
            Ok(0)
        }
        Command::DeleteQueue {
            vhost: v,
            name,
            if_unused,
            if_empty,
        } => {
            let vh = vhost(&v)?;
            let deleted = vh
                .delete_queue(&name, if_unused, if_empty, 0)
                .map_err(refusal)?;
            vh.set_remote_home(&name, 0);
            broker
                .quorum_groups
                .lock()
                .remove(&(v.clone(), name.clone()));
            Ok(deleted.map_or(0, |d| d.message_count))
        }
        Command::Bind(b) => {
            let args = table_from_json(&b.arguments)
                .map_err(|e| refusal(AmqpError::channel(code::PRECONDITION_FAILED, e)))?;
            vhost(&b.vhost)?
                .bind(&b.source, dest(&b), &b.routing_key, &args, 0)
                .map_err(refusal)?;
            Ok(0)
        }
        Command::Unbind(b) => {
            let args = table_from_json(&b.arguments)
                .map_err(|e| refusal(AmqpError::channel(code::PRECONDITION_FAILED, e)))?;
            vhost(&b.vhost)?
                .unbind(&b.source, dest(&b), &b.routing_key, &args, 0)
                .map_err(refusal)?;
            Ok(0)
        }
        Command::Ops { from, ops, voters } => {
            for op in ops {
                let home = match &op {
                    MetaOp::DeclareQueue(q) => Some((q.vhost.clone(), q.name.clone(), from)),
                    MetaOp::DeleteQueue(v, n) => Some((v.clone(), n.clone(), 0)),
                    _ => None,
                };
                let fresh = home.as_ref().is_some_and(|(v, n, _)| {
                    broker.vhost(v).is_none_or(|vh| vh.queue(n).is_none())
                });
                definitions::apply_logged(broker, op);
                if let Some((v, n, home)) = home
                    && let Some(vh) = broker.vhost(&v)
                {
                    if home == 0 {
                        vh.set_remote_home(&n, 0);
                        broker.quorum_groups.lock().remove(&(v.clone(), n.clone()));
                    } else if fresh {
                        broker.tie_queue(&vh, &n, home, index, Members::Among(&voters));
                    }
                }
            }
            Ok(0)
        }
        Command::QuorumMembers {
            vhost,
            name,
            members,
        } => {
            if let Some(p) = broker.quorum_groups.lock().get_mut(&(vhost, name)) {
                p.members = members.clone();
                if let Some(h) = &p.handle {
                    h.set_members(members);
                }
            }
            Ok(0)
        }
        Command::Forget { node } => {
            let me = broker.config.cluster.node_id;
            let mut gone = 0;
            for vh in broker.vhosts() {
                let only_on_it = |q: &Queue| {
                    broker
                        .quorum_groups
                        .lock()
                        .get(&(vh.name.to_string(), q.name.clone()))
                        .is_some_and(|p| p.members == [node])
                };
                let names: Vec<String> = vh
                    .queues()
                    .iter()
                    .filter(|q| {
                        only_on_it(q)
                            || !q.is_quorum()
                                && q.config.durable
                                && q.config.exclusive_owner.is_none()
                                && match vh.remote_home(&q.name) {
                                    Some(home) => home == node,
                                    None => node == me,
                                }
                    })
                    .map(|q| q.name.clone())
                    .collect();
                for name in names {
                    if let Ok(d) = vh.delete_queue(&name, false, false, 0) {
                        gone += d.map_or(0, |d| d.message_count);
                    }
                    vh.set_remote_home(&name, 0);
                    broker
                        .quorum_groups
                        .lock()
                        .remove(&(vh.name.to_string(), name.clone()));
                }
            }
            Ok(gone)
        }
        Command::Import(d) => {
            let problems = definitions::import(broker, &d);
            if problems.is_empty() {
                Ok(0)
            } else {
                Err((false, 400, problems.join("; ")))
            }
        }
    }
}

fn dest(b: &BindingDef) -> DestName<'_> {
    if b.destination_type == "exchange" {
        DestName::Exchange(&b.destination)
    } else {
        DestName::Queue(&b.destination)
    }
}

/// How a quorum queue's members are known when it is tied to its group.
#[derive(Clone, Copy)]
enum Members<'a> {
    /// Chosen among these nodes (`quorum::choose_members`).
    Among(&'a [u64]),
    /// These.
    Exactly(&'a [u64]),
}

/// The definitions group's machine: the broker's definitions.
pub struct MetaMachine {
    broker: Weak<Broker>,
    node: u64,
}

/// A snapshot of the definitions group.
#[derive(Serialize, Deserialize)]
struct MetaSnapshot {
    initialized: bool,
    definitions: Definitions,
    /// Durable queues by home node (vhost, name, home).
    homes: Vec<(String, String, u64)>,
    /// Quorum queues with the definitions entry that declared them.
    #[serde(default)]
    quorum: Vec<(String, String, u64)>,
    /// Quorum queues with their members.
    #[serde(default)]
    quorum_members: Vec<(String, String, Vec<u64>)>,
    /// Non-durable exchanges (replicated, as in RabbitMQ).
    #[serde(default)]
    transient_exchanges: Vec<ExchangeDef>,
    /// Bindings with a non-durable exchange at one end.
    #[serde(default)]
    transient_bindings: Vec<BindingDef>,
}

impl Machine for MetaMachine {
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8> {
        let Some(broker) = self.broker.upgrade() else {
            return Vec::new();
        };
        let outcome: Outcome = match serde_json::from_slice::<Command>(command) {
            Ok(cmd) => crate::vhost::Durability::applying_committed(|| apply(&broker, index, cmd)),
            Err(e) => Err((
                false,
                code::INTERNAL_ERROR,
                format!("unreadable command: {e}"),
            )),
        };
        serde_json::to_vec(&outcome).unwrap_or_default()
    }

    fn snapshot(&self) -> Vec<u8> {
        let Some(broker) = self.broker.upgrade() else {
            return Vec::new();
        };
        let mut homes = Vec::new();
        for vh in broker.vhosts() {
            for (name, home) in vh.remote_homes() {
                homes.push((vh.name.to_string(), name, home));
            }
            // This node's own queues: a node restoring the snapshot must
            // know they live here, not take them for its own.
            for q in vh.queues() {
                if q.config.durable
                    && q.config.exclusive_owner.is_none()
                    && !q.is_quorum()
                    && vh.remote_home(&q.name).is_none()
                {
                    homes.push((vh.name.to_string(), q.name.clone(), self.node));
                }
            }
        }
        let (quorum, quorum_members) = broker
            .quorum_groups
            .lock()
            .iter()
            .map(|((v, n), p)| {
                (
                    (v.clone(), n.clone(), p.index),
                    (v.clone(), n.clone(), p.members.clone()),
                )
            })
            .unzip();
        let (transient_exchanges, transient_bindings) = definitions::export_transient(&broker);
        let snap = MetaSnapshot {
            initialized: broker.cluster_initialized(),
            definitions: replicated(&broker),
            homes,
            quorum,
            quorum_members,
            transient_exchanges,
            transient_bindings,
        };
        serde_json::to_vec(&snap).unwrap_or_default()
    }

    fn restore(&mut self, snapshot: &[u8]) -> std::io::Result<()> {
        let Some(broker) = self.broker.upgrade() else {
            return Ok(());
        };
        let snap: MetaSnapshot = serde_json::from_slice(snapshot).map_err(std::io::Error::other)?;
        crate::vhost::Durability::applying_committed(|| {
            replace_definitions(&broker, &snap.definitions);
            replace_transient(&broker, &snap.transient_exchanges, &snap.transient_bindings);
        });
        for (v, name, home) in snap.homes {
            if let Some(vh) = broker.vhost(&v)
                && home != self.node
                && vh.queue(&name).is_some_and(|q| !q.is_linked())
            {
                broker.mark_remote(&vh, &name, home);
            }
        }
        let mut members: std::collections::HashMap<(String, String), Vec<u64>> = snap
            .quorum_members
            .into_iter()
            .map(|(v, n, m)| ((v, n), m))
            .collect();
        for (v, name, index) in snap.quorum {
            let chosen = members.remove(&(v.clone(), name.clone()));
            if let Some(vh) = broker.vhost(&v)
                && vh.queue(&name).is_some_and(|q| !q.is_linked())
            {
                let m = match &chosen {
                    Some(m) => Members::Exactly(m),
                    None => Members::Among(&[]),
                };
                broker.tie_queue(&vh, &name, 0, index, m);
            }
        }
        if snap.initialized {
            broker.set_cluster_initialized();
        }
        Ok(())
    }
}

/// The definitions the group replicates: what an export holds (users,
/// vhosts, permissions, policies, durable exchanges and queues, bindings
/// between durable ends).
fn replicated(broker: &Broker) -> Definitions {
    definitions::export(broker)
}

/// Makes the broker's replicated definitions exactly `d` (a snapshot
/// installed from the leader): what `d` lacks goes, the rest is imported.
fn replace_definitions(broker: &Broker, d: &Definitions) {
    let now = replicated(broker);
    let keep_vhosts: Vec<&str> = d.vhosts.iter().map(|v| v.name.as_str()).collect();
    for v in &now.vhosts {
        if !keep_vhosts.contains(&v.name.as_str()) {
            broker.delete_vhost(&v.name);
        }
    }
    for u in &now.users {
        if !d.users.iter().any(|k| k.name == u.name) {
            broker.delete_user(&u.name);
        }
    }
    for b in &now.bindings {
        if !d.bindings.contains(b) {
            definitions::apply_logged(broker, MetaOp::Unbind(b.clone()));
        }
    }
    for q in &now.queues {
        if !d
            .queues
            .iter()
            .any(|k| k.vhost == q.vhost && k.name == q.name)
        {
            definitions::apply_logged(broker, MetaOp::DeleteQueue(q.vhost.clone(), q.name.clone()));
        }
    }
    for x in &now.exchanges {
        if !d
            .exchanges
            .iter()
            .any(|k| k.vhost == x.vhost && k.name == x.name)
        {
            definitions::apply_logged(
                broker,
                MetaOp::DeleteExchange(x.vhost.clone(), x.name.clone()),
            );
        }
    }
    for p in definitions::restore(broker, d) {
        tracing::warn!("installing the cluster's definitions: {}", p.escape_debug());
    }
}

/// Makes the broker's non-durable exchanges those of a snapshot, with its
/// bindings that have one at either end.
fn replace_transient(broker: &Broker, exchanges: &[ExchangeDef], bindings: &[BindingDef]) {
    for vh in broker.vhosts() {
        for x in vh.exchanges() {
            let keep = x.durable
                || x.name.is_empty()
                || x.name.starts_with("amq.")
                || exchanges
                    .iter()
                    .any(|k| k.vhost == *vh.name && k.name == x.name);
            if !keep {
                let _ = vh.delete_exchange(&x.name, false);
            }
        }
    }
    for x in exchanges {
        let Some(vh) = broker.vhost(&x.vhost) else {
            continue;
        };
        let Ok(arguments) = table_from_json(&x.arguments) else {
            continue;
        };
        let _ = vh.declare_exchange(&ExchangeDeclare {
            name: x.name.clone(),
            kind: x.kind.clone(),
            passive: false,
            durable: false,
            auto_delete: x.auto_delete,
            internal: x.internal,
            arguments,
        });
    }
    for b in bindings {
        if let (Some(vh), Ok(args)) = (broker.vhost(&b.vhost), table_from_json(&b.arguments)) {
            let _ = vh.bind(&b.source, dest(b), &b.routing_key, &args, 0);
        }
    }
}

/// This node's part in its cluster.
#[derive(Debug)]
pub struct Clustered {
    /// The node.
    pub node: Node,
    /// Changes made on this node alone, queued for the cluster.
    replicator: Replicator,
}

/// Hands changes made on this node alone (not proposed first: the HTTP
/// API, the stream protocol, queues that delete themselves) to the cluster,
/// in order, batched: each batch is one `Command::Ops`.
#[derive(Debug)]
struct Replicator {
    /// Changes queued so far.
    queued: Arc<std::sync::atomic::AtomicU64>,
    /// Changes the cluster has committed so far.
    committed: tokio::sync::watch::Sender<u64>,
}

/// One node of the cluster as this node sees it.
#[derive(Debug, Clone)]
pub struct MemberStatus {
    /// Its id.
    pub id: u64,
    /// Its name: `warren-ID@HOST` (HOST from its inter-node address).
    pub name: String,
    /// Its inter-node address.
    pub address: String,
    /// It is this node.
    pub this: bool,
    /// It answered a connection on its inter-node address just now.
    pub running: bool,
    /// It leads the definitions group (as far as this node knows).
    pub leader: bool,
}

/// A node's name: `warren-ID@HOST`.
pub fn node_name(id: u64, address: &str) -> String {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    format!(
        "warren-{id}@{}",
        host.trim_start_matches('[').trim_end_matches(']')
    )
}

impl Clustered {
    /// This node's name (`node_name`).
    pub fn name(&self) -> String {
        self.member_name(self.node.id)
    }

    /// The name of node `id` (`node_name`).
    pub fn member_name(&self, id: u64) -> String {
        node_name(id, &self.node.book.get(id).unwrap_or_default())
    }

    /// The nodes of the cluster by id, with their addresses: the members
    /// (voters and learners) of the definitions group, or the configured
    /// nodes before it has any.
    pub fn nodes(&self) -> BTreeMap<u64, String> {
        let from_group: BTreeMap<u64, String> = self
            .node
            .group(META)
            .map(|r| {
                r.metrics()
                    .borrow()
                    .membership_config
                    .nodes()
                    .map(|(id, n)| (*id, self.node.book.get(*id).unwrap_or(n.addr.clone())))
                    .collect()
            })
            .unwrap_or_default();
        if from_group.is_empty() {
            self.node
                .configured
                .iter()
                .map(|(id, n)| (*id, n.addr.clone()))
                .collect()
        } else {
            from_group
        }
    }

    /// The voters of the definitions group (every node that has joined).
    pub fn voters(&self) -> Vec<u64> {
        self.node
            .group(META)
            .map(|r| {
                r.metrics()
                    .borrow()
                    .membership_config
                    .membership()
                    .voter_ids()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every node of the cluster, probed now (a connection to each other
    /// node's inter-node address, 300 ms at most).
    pub async fn members(&self) -> Vec<MemberStatus> {
        let leader = self
            .node
            .group(META)
            .and_then(|r| r.metrics().borrow().current_leader);
        let mut out = Vec::new();
        for (id, addr) in self.nodes() {
            let this = id == self.node.id;
            let running = this
                || matches!(
                    tokio::time::timeout(
                        Duration::from_millis(300),
                        tokio::net::TcpStream::connect(&addr)
                    )
                    .await,
                    Ok(Ok(_))
                );
            out.push(MemberStatus {
                id,
                name: node_name(id, &addr),
                address: addr,
                this,
                running,
                leader: leader == Some(id),
            });
        }
        out
    }

    /// Adds node `id`, reached at `addr`, to the cluster: the definitions
    /// group takes it as a learner, sends it everything, then makes it a
    /// voter. Quorum queues do not grow onto it by themselves (as in
    /// RabbitMQ: `warrenctl queues grow`).
    pub async fn add_node(&self, id: u64, addr: &str) -> Result<(), ProposeError> {
        self.node
            .change_members(
                META,
                crate::cluster::net::MemberChange::Add(id, addr.to_owned()),
                JOIN_LIMIT,
            )
            .await
    }

    /// The id of the node named `name`: `warren-ID@HOST` or the id alone.
    pub fn node_id_of(&self, name: &str) -> Option<u64> {
        let id = name
            .strip_prefix("warren-")
            .and_then(|r| r.split_once('@'))
            .map_or(name, |(id, _)| id)
            .parse::<u64>()
            .ok()?;
        self.nodes().contains_key(&id).then_some(id)
    }

    /// Whether this node is a voter of the definitions group.
    pub fn is_member(&self) -> bool {
        self.voters().contains(&self.node.id)
    }

    /// Joins the cluster node `id` at `addr` belongs to (a node that has
    /// not joined or formed one yet).
    pub async fn join_via(&self, id: u64, addr: &str) -> Result<(), String> {
        if !self.nodes_in_group().is_empty() {
            return Err(format!(
                "this node is already a member of a cluster of {} node(s); to join another, stop it and empty its data directory first",
                self.nodes_in_group().len()
            ));
        }
        if id == self.node.id {
            return Err(format!("node {id} is this node"));
        }
        self.node.book.learn(id, addr);
        let me = self.node.book.get(self.node.id).unwrap_or_default();
        self.add_node(self.node.id, &me)
            .await
            .map_err(|e| e.to_string())
    }

    /// The members of the definitions group (empty before this node has
    /// joined or formed a cluster).
    fn nodes_in_group(&self) -> Vec<u64> {
        self.node
            .group(META)
            .map(|r| {
                r.metrics()
                    .borrow()
                    .membership_config
                    .nodes()
                    .map(|(id, _)| *id)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits (up to `limit`) until every change queued for the cluster so
    /// far is committed; false if they are not.
    pub async fn replicated(&self, limit: Duration) -> bool {
        let target = self
            .replicator
            .queued
            .load(std::sync::atomic::Ordering::Acquire);
        let mut rx = self.replicator.committed.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|c| *c >= target))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Proposes queued changes, as many at once as are waiting, until the
/// broker goes.
async fn replicate(
    broker: Weak<Broker>,
    from: u64,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<MetaOp>,
    committed: tokio::sync::watch::Sender<u64>,
) {
    while let Some(first) = rx.recv().await {
        let mut ops = vec![first];
        while let Ok(op) = rx.try_recv() {
            ops.push(op);
        }
        let n = ops.len() as u64;
        let voters = broker
            .upgrade()
            .and_then(|b| b.cluster().map(Clustered::voters))
            .unwrap_or_default();
        let cmd = Command::Ops { from, ops, voters };
        loop {
            let Some(b) = broker.upgrade() else {
                return;
            };
            match b.define(cmd.clone()).await {
                Ok(_) => break,
                Err(e) if e.code == code::RESOURCE_ERROR => {
                    tracing::warn!(
                        "cluster: changes made on this node wait to be replicated: {}",
                        e.text
                    );
                    drop(b);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => {
                    tracing::warn!(
                        "cluster: a change made on this node was refused: {}",
                        e.text
                    );
                    break;
                }
            }
        }
        committed.send_modify(|c| *c += n);
    }
}

impl Broker {
    /// Joins the cluster `[cluster]` describes: starts the inter-node
    /// listener and the definitions group (whose committed changes, on disk
    /// from an earlier run, are applied before this returns), and makes
    /// sure the defaults exist once the group has a leader.
    pub async fn join_cluster(self: &Arc<Self>) -> Result<(), String> {
        let c = &self.config.cluster;
        let members: BTreeMap<u64, openraft::BasicNode> = c
            .members()?
            .into_iter()
            .map(|(id, addr)| (id, openraft::BasicNode::new(addr)))
            .collect();
        let me = members.get(&c.node_id).ok_or_else(|| {
            format!(
                "[cluster] node_id {} is not one of the nodes listed",
                c.node_id
            )
        })?;
        let listen = c.listen_addr(&me.addr)?;
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .map_err(|e| format!("cannot listen for cluster peers on {listen}: {e}"))?;
        let node = Node::start(
            c.node_id,
            members,
            crate::cluster::net::Peering {
                secret: c.secret()?.into_bytes(),
                tls: if c.tls {
                    Some(crate::cluster::tls::Tls::from_config(&self.config.tls)?)
                } else {
                    None
                },
            },
            listener,
            Arc::new(crate::store::disk::RealDisk),
        );
        let links = super::link::Links::new(
            c.node_id,
            node.book.clone(),
            node.secret(),
            Arc::downgrade(self),
        );
        let _ = self.links.set(links.clone());
        links.poll_stats();
        node.set_data_handler(Arc::new(move |stream, from| {
            Box::pin(links.clone().serve(stream, from))
        }));
        let dir = self.config.data_dir.join("cluster").join(META);
        let machine = MetaMachine {
            broker: Arc::downgrade(self),
            node: c.node_id,
        };
        let initial = node.configured.clone();
        node.open_group(META, Path::new(&dir), machine, &initial)
            .await
            .map_err(|e| {
                format!(
                    "cannot open the cluster's definitions in {}: {e}",
                    dir.display()
                )
            })?;
        if let Some(raft) = node.group(META) {
            tokio::spawn(log_leaders(raft));
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let queued = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let committed = tokio::sync::watch::Sender::new(0);
        tokio::spawn(replicate(
            Arc::downgrade(self),
            c.node_id,
            rx,
            committed.clone(),
        ));
        let hook_tx = tx;
        let hook_queued = queued.clone();
        let _ = self
            .durability
            .replicate
            .set(crate::vhost::ReplicateHook(Box::new(move |op| {
                hook_queued.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                let _ = hook_tx.send(op);
            })));
        let meta = node.group(META);
        let _ = self.cluster.set(Clustered {
            node,
            replicator: Replicator { queued, committed },
        });
        if let Some(raft) = meta {
            tokio::spawn(watch_members(Arc::downgrade(self), raft));
        }
        let broker = self.clone();
        tokio::spawn(async move {
            let d = broker.config.defaults.clone();
            let init = Command::Init {
                vhost: d.vhost,
                user: d.user,
                password_hash: crate::auth::hash_password(&d.password),
            };
            while !broker.cluster_initialized() {
                if broker.define(init.clone()).await.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        Ok(())
    }

    /// Waits (up to `limit`) until the definitions group has a leader and
    /// this node has applied every entry it holds: it has caught up with
    /// what the cluster decided while it was away.
    pub async fn wait_caught_up(&self, limit: Duration) {
        let Some(raft) = self.cluster().and_then(|c| c.node.group(META)) else {
            return;
        };
        let caught_up = raft
            .wait(Some(limit))
            .metrics(
                |m| {
                    m.current_leader.is_some()
                        && m.last_applied.map(|l| l.index) >= m.last_log_index
                },
                "the definitions to catch up",
            )
            .await;
        if caught_up.is_err() {
            tracing::warn!(
                "no leader of the cluster's definitions within {} s: starting with what this node has",
                limit.as_secs()
            );
        }
    }

    /// Makes queue `name` of `vh` the stub of the queue that lives on
    /// node `home`.
    fn mark_remote(&self, vh: &crate::vhost::VHost, name: &str, home: u64) {
        vh.set_remote_home(name, home);
        if let (Some(q), Some(links)) = (vh.queue(name), self.links.get()) {
            q.set_remote(links.stub(home, &vh.name, name, &q));
        }
    }

    /// Ties a queue the cluster just declared (definitions entry `index`)
    /// to where it lives: a quorum queue to its Raft group, any other
    /// queue of another node to its node.
    fn tie_queue(
        &self,
        vh: &crate::vhost::VHost,
        name: &str,
        home: u64,
        index: u64,
        members: Members<'_>,
    ) {
        let Some(q) = vh.queue(name) else { return };
        if q.is_quorum() && self.links.get().is_some() {
            let members = match members {
                Members::Exactly(m) => m.to_vec(),
                // Logs from before members were chosen: every node.
                Members::Among([]) => self
                    .cluster()
                    .map(|c| c.node.configured.keys().copied().collect())
                    .unwrap_or_default(),
                Members::Among(voters) => super::quorum::choose_members(
                    voters,
                    home,
                    q.config
                        .arguments
                        .inner()
                        .get("x-quorum-initial-group-size")
                        .and_then(crate::queue::args::integer)
                        .map(|v| v.clamp(0, i64::MAX as i128) as i64),
                ),
            };
            let handle = super::quorum::attach(self, &vh.name, &q, index, members.clone());
            self.quorum_groups.lock().insert(
                (vh.name.to_string(), name.to_owned()),
                super::quorum::Placement {
                    index,
                    members,
                    handle,
                },
            );
        } else if home != self.config.cluster.node_id {
            self.mark_remote(vh, name, home);
        }
    }

    /// Removes node `id` from the cluster (RabbitMQ's forget_cluster_node):
    /// from every quorum queue's group this node knows, then the queues
    /// that live on it go (`Command::Forget`), then it leaves the
    /// definitions group. The node may be down; if it is this node, it
    /// stops taking part.
    pub async fn forget_node(&self, id: u64) -> Result<(), String> {
        let Some(c) = self.cluster() else {
            return Err("this node is not in a cluster".into());
        };
        if !c.nodes().contains_key(&id) {
            return Err(format!("node {id} is not a member of the cluster"));
        }
        if c.voters() == [id] {
            return Err(format!("node {id} is the cluster's last node"));
        }
        let replicated: Vec<(String, String)> = self
            .quorum_groups
            .lock()
            .iter()
            .filter(|(_, p)| p.members.contains(&id) && p.members.len() > 1)
            .map(|(k, _)| k.clone())
            .collect();
        for (v, n) in replicated {
            self.quorum_delete_member(&v, &n, id).await.map_err(|e| {
                format!("removing node {id} from quorum queue '{n}' in vhost '{v}': {e}")
            })?;
        }
        self.define(Command::Forget { node: id })
            .await
            .map_err(|e| e.text)?;
        c.node
            .change_members(
                META,
                crate::cluster::net::MemberChange::Remove(id),
                JOIN_LIMIT,
            )
            .await
            .map_err(|e| e.to_string())
    }

    /// Quorum queue `name` of `vhost`: its group's name and members.
    pub fn quorum_placement(&self, vhost: &str, name: &str) -> Option<(String, Vec<u64>)> {
        self.quorum_groups
            .lock()
            .get(&(vhost.to_owned(), name.to_owned()))
            .map(|p| {
                (
                    super::quorum::group_name(vhost, name, p.index),
                    p.members.clone(),
                )
            })
    }

    /// This node's cluster and quorum queue `name`'s group and members, for
    /// a change of its members.
    fn quorum_target(
        &self,
        vhost: &str,
        name: &str,
    ) -> Result<(&Clustered, String, Vec<u64>), String> {
        let c = self.cluster().ok_or("this node is not in a cluster")?;
        let (group, members) = self
            .quorum_placement(vhost, name)
            .ok_or_else(|| format!("no quorum queue '{name}' in vhost '{vhost}'"))?;
        Ok((c, group, members))
    }

    /// Every replicated quorum queue: (vhost, name, members).
    pub fn quorum_queues(&self) -> Vec<(String, String, Vec<u64>)> {
        let mut all: Vec<_> = self
            .quorum_groups
            .lock()
            .iter()
            .map(|((v, n), p)| (v.clone(), n.clone(), p.members.clone()))
            .collect();
        all.sort();
        all
    }

    /// Adds node `node` to quorum queue `name`'s members (RabbitMQ's
    /// add_member): the definitions name it first, so it opens the group,
    /// then the group's leader takes it as a learner and, once it has
    /// caught up, as a voter.
    pub async fn quorum_add_member(
        &self,
        vhost: &str,
        name: &str,
        node: u64,
    ) -> Result<(), String> {
        let (c, group, members) = self.quorum_target(vhost, name)?;
        if !c.voters().contains(&node) {
            return Err(format!("node {node} is not a member of the cluster"));
        }
        if !members.contains(&node) {
            let mut grown = members;
            grown.push(node);
            grown.sort_unstable();
            self.define(Command::QuorumMembers {
                vhost: vhost.to_owned(),
                name: name.to_owned(),
                members: grown,
            })
            .await
            .map_err(|e| e.text)?;
        }
        let addr = c.node.book.get(node).unwrap_or_default();
        c.node
            .change_members(
                &group,
                crate::cluster::net::MemberChange::Add(node, addr),
                JOIN_LIMIT,
            )
            .await
            .map_err(|e| e.to_string())
    }

    /// Removes node `node` from quorum queue `name`'s members (RabbitMQ's
    /// delete_member): the group lets it go first, then the definitions,
    /// and the node closes its copy.
    pub async fn quorum_delete_member(
        &self,
        vhost: &str,
        name: &str,
        node: u64,
    ) -> Result<(), String> {
        let (c, group, members) = self.quorum_target(vhost, name)?;
        if !members.contains(&node) {
            return Ok(());
        }
        if members.len() == 1 {
            return Err(format!("node {node} is the queue's only member"));
        }
        c.node
            .change_members(
                &group,
                crate::cluster::net::MemberChange::Remove(node),
                PROPOSE_LIMIT,
            )
            .await
            .map_err(|e| e.to_string())?;
        self.define(Command::QuorumMembers {
            vhost: vhost.to_owned(),
            name: name.to_owned(),
            members: members.into_iter().filter(|m| *m != node).collect(),
        })
        .await
        .map_err(|e| e.text)?;
        Ok(())
    }

    /// This node's cluster, if it is in one.
    pub fn cluster(&self) -> Option<&Clustered> {
        self.cluster.get()
    }

    /// Makes a change of definitions: at once on a single node, through
    /// the definitions group in a cluster (waiting until it is committed
    /// and made here).
    pub async fn define(&self, cmd: Command) -> AmqpResult<u32> {
        let outcome = match self.cluster() {
            None => apply(self, 0, cmd),
            Some(c) => {
                let bytes = serde_json::to_vec(&cmd).map_err(|e| {
                    AmqpError::connection(code::INTERNAL_ERROR, format!("encoding a change: {e}"))
                })?;
                let (index, reply) = c
                    .node
                    .propose_at(META, bytes, PROPOSE_LIMIT)
                    .await
                    .map_err(no_quorum)?;
                // As RabbitMQ's, a change is on every running node when
                // answered: a client declaring on one node and publishing
                // on another finds what it declared.
                c.node
                    .await_applied_everywhere(META, index, APPLIED_WAIT)
                    .await;
                serde_json::from_slice(&reply).map_err(|e| {
                    AmqpError::connection(
                        code::INTERNAL_ERROR,
                        format!("reading the cluster's answer: {e}"),
                    )
                })?
            }
        };
        outcome.map_err(outcome_error)
    }
}

/// Follows the definitions group's membership: learns the addresses of
/// nodes that joined, asks to join if this node is not a member yet (its
/// config names other nodes and it did not form the cluster), and says so
/// when this node has been removed.
async fn watch_members(broker: Weak<Broker>, raft: openraft::Raft<crate::cluster::TypeConfig>) {
    let mut metrics = raft.metrics();
    let mut was_member = false;
    let mut next_join = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let Some(b) = broker.upgrade() else { return };
        let Some(c) = b.cluster() else { return };
        let me = c.node.id;
        let (member, nodes) = {
            let m = metrics.borrow_and_update();
            let nodes: Vec<(u64, String)> = m
                .membership_config
                .nodes()
                .map(|(id, n)| (*id, n.addr.clone()))
                .collect();
            let member = m
                .membership_config
                .membership()
                .voter_ids()
                .any(|v| v == me);
            (member, nodes)
        };
        for (id, addr) in &nodes {
            c.node.book.learn(*id, addr);
        }
        let listed = nodes.iter().any(|(id, _)| *id == me);
        if member {
            was_member = true;
        } else if !nodes.is_empty() && !listed {
            if was_member {
                tracing::warn!(
                    "cluster: this node was removed from the cluster; stop it and empty its data directory before it joins again"
                );
            }
            was_member = false;
        } else if nodes.is_empty() && tokio::time::Instant::now() >= next_join {
            // A fresh node that did not form the cluster: ask the nodes
            // it knows of to add it.
            let addr = c.node.book.get(me).unwrap_or_default();
            match c.add_node(me, &addr).await {
                Ok(()) => tracing::info!("cluster: this node joined the cluster"),
                Err(e) => tracing::info!("cluster: waiting to join: {e}"),
            }
            next_join = tokio::time::Instant::now() + Duration::from_secs(2);
        }
        drop(b);
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Logs each change of the definitions group's leader.
async fn log_leaders(raft: openraft::Raft<crate::cluster::TypeConfig>) {
    let mut metrics = raft.metrics();
    let mut last = None;
    loop {
        let (leader, term) = {
            let m = metrics.borrow_and_update();
            (m.current_leader, m.current_term)
        };
        if leader != last {
            match leader {
                Some(l) => tracing::info!("cluster: node {l} leads the definitions (term {term})"),
                None => tracing::warn!("cluster: the definitions have no leader (term {term})"),
            }
            last = leader;
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

fn no_quorum(e: ProposeError) -> AmqpError {
    AmqpError::channel(code::RESOURCE_ERROR, e)
}
