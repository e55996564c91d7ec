//! A virtual host: a namespace of exchanges, queues and bindings, and the
//! operations that change it (declare, delete, bind, unbind) with RabbitMQ's
//! checks and reply texts.
//!
//! Definition changes are serialised by one mutex per vhost; publishing only
//! reads the exchange and queue maps and the exchange's routing table.
//!
//! Owns: the vhost's exchanges, queues, policies, dead-lettering
//! (`deadletter`) and direct reply-to (`direct_reply`). May use: `routing`,
//! `queue`, `store`, `message`, `protocol`, `ops`.

pub mod deadletter;
pub mod direct_reply;

use ahash::AHashMap as HashMap;
use std::sync::{Arc, Weak};

use amq_protocol::types::{AMQPValue, FieldTable};
use parking_lot::{Mutex, RwLock};

use crate::message::Message;
use crate::protocol::error::{AmqpError, AmqpResult, code};
use crate::protocol::fields::table_to_json;
use crate::queue::args::QueueArgs;
use crate::queue::paging::PagingConfig;
use crate::queue::stream::Streams;
use crate::queue::stream::args::{self as stream_args, QueueType, StreamArgs};
use crate::queue::{Deleted, Queue, QueueConfig, QueueOwner, Reason};
use crate::routing::exchange::{Dest, Exchange, ExchangeKind};
use crate::schema::{BindingDef, ExchangeDef, PolicyDef, QueueDef};
use crate::store::MessageStore;
use crate::store::meta::{MetaLog, MetaOp};

/// exchange.declare arguments.
#[derive(Debug, Clone)]
pub struct ExchangeDeclare {
    /// Name.
    pub name: String,
    /// Type name as sent.
    pub kind: String,
    /// Only check that it exists.
    pub passive: bool,
    /// Durable flag.
    pub durable: bool,
    /// Auto-delete flag.
    pub auto_delete: bool,
    /// Internal flag.
    pub internal: bool,
    /// Arguments.
    pub arguments: FieldTable,
}

/// A virtual host.
#[derive(Debug)]
pub struct VHost {
    /// Its name.
    pub name: Arc<str>,
    exchanges: RwLock<HashMap<String, Arc<Exchange>>>,
    queues: RwLock<HashMap<String, Arc<Queue>>>,
    /// In a cluster, the durable queues that live on another node, by name:
    /// their node's id (see broker/cluster.rs).
    remote_homes: RwLock<HashMap<String, u64>>,
    policies: RwLock<std::collections::BTreeMap<String, Policy>>,
    definitions: Mutex<()>,
    durability: Arc<Durability>,
    /// Itself, for the queues it creates.
    me: std::sync::Weak<VHost>,
    /// Direct reply-to consumers.
    pub replies: crate::vhost::direct_reply::Replies,
    /// Message counts of the vhost's deleted queues.
    pub retired: crate::ops::stats::Retired,
}

/// A policy. Its queue keys (message-ttl, expires, max-length(-bytes),
/// overflow, dead-letter-*) apply to matching queues; see `QueueArgs::with_policy`.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Name.
    pub name: String,
    /// Regex over queue/exchange names.
    pub pattern: String,
    /// "queues", "exchanges" or "all".
    pub apply_to: String,
    /// Keys and values.
    pub definition: serde_json::Map<String, serde_json::Value>,
    /// Priority.
    pub priority: i64,
}

/// Arguments whose values must match when a queue is redeclared (as RabbitMQ).
const QUEUE_EQUIVALENCE_ARGS: &[&str] = &[
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-message-ttl",
    "x-overflow",
    "x-queue-mode",
    "x-queue-type",
    "x-single-active-consumer",
];

/// The same for streams (RabbitMQ compares their retention, not the
/// classic arguments, which a new stream refuses anyway).
const STREAM_EQUIVALENCE_ARGS: &[&str] = &[
    "x-max-age",
    "x-max-length-bytes",
    "x-queue-type",
    "x-stream-max-segment-size-bytes",
];

/// The received/current parts of an argument inequivalence, as RabbitMQ
/// words them: plain values when both exist, typed ones when one is missing.
fn describe_args(got: Option<&AMQPValue>, cur: Option<&AMQPValue>) -> (String, String) {
    let typed = |v: Option<&AMQPValue>| match v {
        None => "none".to_owned(),
        Some(v) => format!(
            "the value '{}' of type '{}'",
            describe(Some(v)),
            crate::protocol::fields::erlang_type(v)
        ),
    };
    match (got, cur) {
        (Some(_), Some(_)) => (
            format!("'{}'", describe(got)),
            format!("'{}'", describe(cur)),
        ),
        _ => (typed(got), typed(cur)),
    }
}

fn describe(v: Option<&AMQPValue>) -> String {
    match v {
        None => "none".to_owned(),
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::ShortString(s)) => s.as_str().to_owned(),
        Some(AMQPValue::Boolean(b)) => b.to_string(),
        Some(AMQPValue::ShortShortInt(n)) => n.to_string(),
        Some(AMQPValue::ShortShortUInt(n)) => n.to_string(),
        Some(AMQPValue::ShortInt(n)) => n.to_string(),
        Some(AMQPValue::ShortUInt(n)) => n.to_string(),
        Some(AMQPValue::LongInt(n)) => n.to_string(),
        Some(AMQPValue::LongUInt(n)) => n.to_string(),
        Some(AMQPValue::LongLongInt(n)) => n.to_string(),
        Some(AMQPValue::Timestamp(n)) => n.to_string(),
        Some(other) => format!("{other:?}"),
    }
}

/// Integer-valued arguments compare by value whatever their wire width.
fn as_i128(v: &AMQPValue) -> Option<i128> {
    match v {
        AMQPValue::Timestamp(n) => Some(*n as i128),
        other => crate::queue::args::integer(other),
    }
}

fn same_value(a: Option<&AMQPValue>, b: Option<&AMQPValue>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => match (as_i128(a), as_i128(b)) {
            (Some(x), Some(y)) => x == y,
            _ => describe(Some(a)) == describe(Some(b)) || a == b,
        },
        _ => false,
    }
}

fn inequivalent(
    what: &str,
    arg: &str,
    name: &str,
    vhost: &str,
    got: String,
    cur: String,
) -> AmqpError {
    inequivalent_raw(
        what,
        arg,
        name,
        vhost,
        format!("'{got}'"),
        format!("'{cur}'"),
    )
}

fn inequivalent_raw(
    what: &str,
    arg: &str,
    name: &str,
    vhost: &str,
    got: String,
    cur: String,
) -> AmqpError {
    AmqpError::channel(
        code::PRECONDITION_FAILED,
        format!(
            "inequivalent arg '{arg}' for {what} '{name}' in vhost '{vhost}': received {got} but current is {cur}"
        ),
    )
}

/// Only the server names queues `amq.*` (and recovery, which restores them).
fn check_reserved_name(name: &str, server_named: bool) -> AmqpResult<()> {
    if name.starts_with("amq.") && !server_named {
        return Err(AmqpError::channel(
            code::ACCESS_REFUSED,
            format!("queue name '{name}' contains reserved prefix 'amq.*'"),
        ));
    }
    Ok(())
}

fn default_exchange_refused() -> AmqpError {
    AmqpError::channel(
        code::ACCESS_REFUSED,
        "operation not permitted on the default exchange",
    )
}

impl VHost {
    /// A vhost with the default exchange and the `amq.*` exchanges.
    pub fn new(name: &str) -> Arc<VHost> {
        Self::with_durability(name, Arc::new(Durability::default()))
    }

    /// A vhost whose durable changes go to `durability`.
    pub fn with_durability(name: &str, durability: Arc<Durability>) -> Arc<VHost> {
        let mut exchanges = HashMap::new();
        for (xname, kind) in [
            ("", ExchangeKind::Direct),
            ("amq.direct", ExchangeKind::Direct),
            ("amq.fanout", ExchangeKind::Fanout),
            ("amq.topic", ExchangeKind::Topic),
            ("amq.headers", ExchangeKind::Headers),
            ("amq.match", ExchangeKind::Headers),
        ] {
            exchanges.insert(
                xname.to_owned(),
                Exchange::new(
                    xname.to_owned(),
                    kind,
                    true,
                    false,
                    false,
                    FieldTable::default(),
                ),
            );
        }
        Arc::new_cyclic(|me| VHost {
            name: name.into(),
            exchanges: RwLock::new(exchanges),
            queues: RwLock::new(HashMap::new()),
            remote_homes: RwLock::new(HashMap::new()),
            policies: RwLock::new(Default::default()),
            definitions: Mutex::new(()),
            durability,
            me: me.clone(),
            replies: Default::default(),
            retired: Default::default(),
        })
    }

    /// In a cluster, records that queue `name` lives on node `home`
    /// (0: on this node, or gone).
    pub fn set_remote_home(&self, name: &str, home: u64) {
        let mut h = self.remote_homes.write();
        if home == 0 {
            h.remove(name);
        } else {
            h.insert(name.to_owned(), home);
        }
    }

    /// The node queue `name` lives on, if that is another node.
    pub fn remote_home(&self, name: &str) -> Option<u64> {
        self.remote_homes.read().get(name).copied()
    }

    /// 540 NOT_IMPLEMENTED for `what` on queue `q` when its contents are
    /// kept elsewhere (another node of the cluster, or a replicated
    /// quorum queue's Raft group): not supported there yet.
    pub fn check_local(&self, q: &Queue, what: &str) -> AmqpResult<()> {
        if q.served_here() {
            return Ok(());
        }
        let place = match self.remote_home(&q.name) {
            Some(home) => format!("lives on cluster node {home}"),
            None => "is replicated across the cluster".to_owned(),
        };
        Err(AmqpError::channel(
            code::NOT_IMPLEMENTED,
            format!(
                "queue '{}' in vhost '{}' {place}; {what} on it is not supported yet",
                q.name, self.name
            ),
        ))
    }

    /// The queues that live on other nodes, with their nodes.
    pub fn remote_homes(&self) -> Vec<(String, u64)> {
        self.remote_homes
            .read()
            .iter()
            .map(|(n, h)| (n.clone(), *h))
            .collect()
    }

    /// Looks up an exchange.
    pub fn exchange(&self, name: &str) -> Option<Arc<Exchange>> {
        self.exchanges.read().get(name).cloned()
    }

    /// Looks up a queue.
    pub fn queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.queues.read().get(name).cloned()
    }

    /// Looks up a queue or fails with 404.
    pub fn queue_or_404(&self, name: &str) -> AmqpResult<Arc<Queue>> {
        self.queue(name)
            .ok_or_else(|| AmqpError::no_queue(name, &self.name))
    }

    /// Looks up an exchange or fails with 404.
    pub fn exchange_or_404(&self, name: &str) -> AmqpResult<Arc<Exchange>> {
        self.exchange(name)
            .ok_or_else(|| AmqpError::no_exchange(name, &self.name))
    }

    /// How many queues the vhost has.
    pub fn queue_count(&self) -> usize {
        self.queues.read().len()
    }

    /// All queues (for listings and connection cleanup).
    pub fn queues(&self) -> Vec<Arc<Queue>> {
        self.queues.read().values().cloned().collect()
    }

    /// Message counts of all the vhost's queues, deleted ones included.
    pub fn queue_totals(&self) -> crate::ops::stats::MsgTotals {
        let mut t = self.retired.totals();
        for q in self.queues.read().values() {
            t.add(&q.stats.snapshot());
        }
        t
    }

    /// The message store, when durability is on.
    pub fn store(&self) -> Option<Arc<crate::store::MessageStore>> {
        self.durability.store().cloned()
    }

    /// The policy that applies to queue `name`: the matching one of highest
    /// priority (ties: the first by name), as RabbitMQ picks.
    pub fn queue_policy(&self, name: &str) -> Option<Policy> {
        let policies = self.policies.read();
        let mut best: Option<&Policy> = None;
        for p in policies.values() {
            if p.apply_to == "exchanges" {
                continue;
            }
            let Ok(re) = regex::Regex::new(&p.pattern) else {
                continue;
            };
            if re.is_match(name) && best.is_none_or(|b| p.priority > b.priority) {
                best = Some(p);
            }
        }
        best.cloned()
    }

    /// A stream's effective retention: its arguments, completed by its policy.
    fn effective_stream_args(&self, name: &str, args: &FieldTable) -> StreamArgs {
        let own = stream_args::lenient(args);
        match self.queue_policy(name) {
            Some(p) => own.with_policy(&p.definition),
            None => own,
        }
    }

    /// A queue's effective arguments: its own, completed by its policy.
    fn effective_args(&self, name: &str, args: QueueArgs) -> QueueArgs {
        match self.queue_policy(name) {
            Some(p) => args.with_policy(&p.definition),
            None => args,
        }
    }

    /// Re-applies policies to every queue (after a policy change).
    fn reapply_policies(&self) {
        for q in self.queues() {
            if let Some(s) = q.stream() {
                s.set_args(self.effective_stream_args(&q.name, &q.config.arguments));
                continue;
            }
            let own = QueueArgs::lenient(&q.config.arguments);
            q.set_args(self.effective_args(&q.name, own));
        }
    }

    /// All policies, by name.
    pub fn policies(&self) -> Vec<Policy> {
        self.policies.read().values().cloned().collect()
    }

    /// Creates or replaces a policy (its pattern must be a valid regex).
    pub fn put_policy(&self, p: Policy) -> Result<(), String> {
        crate::protocol::table_guard::check_json(&p.definition)
            .map_err(|e| format!("definition: {e}"))?;
        regex::Regex::new(&p.pattern)
            .map_err(|e| format!("invalid pattern '{}': {e}", p.pattern))?;
        if !matches!(p.apply_to.as_str(), "queues" | "exchanges" | "all") {
            return Err(format!(
                "invalid apply-to '{}': expected queues, exchanges or all",
                p.apply_to
            ));
        }
        // Applied before it is logged: the undo of a failed write (on the
        // log's thread) then always comes after the change.
        let op = MetaOp::PutPolicy(self.policy_def(&p));
        let prior = self.policies.write().insert(p.name.clone(), p);
        self.durability.record_replacing(
            op,
            prior.map(|old| MetaOp::PutPolicy(self.policy_def(&old))),
        );
        self.reapply_policies();
        Ok(())
    }

    /// Deletes a policy; returns false if missing.
    pub fn delete_policy(&self, name: &str) -> bool {
        let removed = self.policies.write().remove(name);
        let existed = removed.is_some();
        if let Some(old) = removed {
            self.durability.record_replacing(
                MetaOp::DeletePolicy(self.name.to_string(), name.to_owned()),
                Some(MetaOp::PutPolicy(self.policy_def(&old))),
            );
            self.reapply_policies();
        }
        existed
    }

    /// A durable exchange as the definitions log and exports write it.
    pub fn exchange_def(&self, x: &Exchange) -> ExchangeDef {
        ExchangeDef {
            name: x.name.clone(),
            vhost: self.name.to_string(),
            kind: x.kind.as_str().into(),
            durable: true,
            auto_delete: x.auto_delete,
            internal: x.internal,
            arguments: table_to_json(&x.arguments),
        }
    }

    /// A durable queue as the definitions log and exports write it.
    pub fn queue_def(&self, name: &str, config: &QueueConfig) -> QueueDef {
        QueueDef {
            name: name.to_owned(),
            vhost: self.name.to_string(),
            durable: true,
            auto_delete: config.auto_delete,
            arguments: table_to_json(&config.arguments),
        }
    }

    /// A policy as the definitions log and exports write it.
    pub fn policy_def(&self, p: &Policy) -> PolicyDef {
        PolicyDef {
            vhost: self.name.to_string(),
            name: p.name.clone(),
            pattern: p.pattern.clone(),
            apply_to: p.apply_to.clone(),
            definition: p.definition.clone(),
            priority: p.priority,
        }
    }

    /// All exchanges.
    pub fn exchanges(&self) -> Vec<Arc<Exchange>> {
        self.exchanges.read().values().cloned().collect()
    }

    /// exchange.declare.
    pub fn declare_exchange(&self, d: &ExchangeDeclare) -> AmqpResult<Arc<Exchange>> {
        if d.name.is_empty() {
            return Err(default_exchange_refused());
        }
        if d.passive {
            return self.exchange_or_404(&d.name);
        }
        let kind = ExchangeKind::parse(&d.kind).ok_or_else(|| {
            AmqpError::connection(
                code::COMMAND_INVALID,
                format!("{} exchange type '{}'", unknown_or_invalid(&d.kind), d.kind),
            )
        })?;
        let _defs = self.definitions.lock();
        match self.exchange(&d.name) {
            Some(x) => {
                self.check_exchange_equivalent(&x, d, kind)?;
                Ok(x)
            }
            None => self.create_exchange_locked(d, kind),
        }
    }

    /// Creates a declared exchange that does not exist yet (refusing the
    /// reserved `amq.` prefix) and logs it if durable. The caller holds the
    /// definitions lock.
    fn create_exchange_locked(
        &self,
        d: &ExchangeDeclare,
        kind: ExchangeKind,
    ) -> AmqpResult<Arc<Exchange>> {
        if d.name.starts_with("amq.") {
            return Err(AmqpError::channel(
                code::ACCESS_REFUSED,
                format!(
                    "exchange name '{}' contains reserved prefix 'amq.*'",
                    d.name
                ),
            ));
        }
        let x = Exchange::new(
            d.name.clone(),
            kind,
            d.durable,
            d.auto_delete,
            d.internal,
            d.arguments.clone(),
        );
        self.exchanges.write().insert(d.name.clone(), x.clone());
        if x.durable {
            self.durability
                .record(MetaOp::DeclareExchange(self.exchange_def(&x)));
        }
        Ok(x)
    }

    /// A redeclaration must match the existing exchange's type, flags and
    /// alternate exchange; otherwise RabbitMQ's "inequivalent arg" error.
    fn check_exchange_equivalent(
        &self,
        x: &Exchange,
        d: &ExchangeDeclare,
        kind: ExchangeKind,
    ) -> AmqpResult<()> {
        let what = "exchange";
        let (n, v) = (&d.name, &*self.name);
        if x.kind != kind {
            return Err(inequivalent(
                what,
                "type",
                n,
                v,
                d.kind.clone(),
                x.kind.as_str().into(),
            ));
        }
        for (field, got, cur) in [
            ("durable", d.durable, x.durable),
            ("auto_delete", d.auto_delete, x.auto_delete),
            ("internal", d.internal, x.internal),
        ] {
            if got != cur {
                return Err(inequivalent(
                    what,
                    field,
                    n,
                    v,
                    got.to_string(),
                    cur.to_string(),
                ));
            }
        }
        let (got, cur) = (
            d.arguments.inner().get("alternate-exchange"),
            x.arguments.inner().get("alternate-exchange"),
        );
        if !same_value(got, cur) {
            let a = describe_args(got, cur);
            return Err(inequivalent_raw(what, "alternate-exchange", n, v, a.0, a.1));
        }
        Ok(())
    }

    /// exchange.delete.
    pub fn delete_exchange(&self, name: &str, if_unused: bool) -> AmqpResult<()> {
        if name.is_empty() {
            return Err(default_exchange_refused());
        }
        if name.starts_with("amq.") {
            return Err(AmqpError::channel(
                code::ACCESS_REFUSED,
                format!(
                    "deletion of system exchange '{name}' in vhost '{}' not allowed",
                    self.name
                ),
            ));
        }
        let _defs = self.definitions.lock();
        let Some(x) = self.exchange(name) else {
            // RabbitMQ treats deleting a missing exchange as success.
            return Ok(());
        };
        if if_unused && x.binding_count() > 0 {
            return Err(AmqpError::channel(
                code::PRECONDITION_FAILED,
                format!("exchange '{name}' in vhost '{}' in use", self.name),
            ));
        }
        self.remove_exchange_locked(&x);
        Ok(())
    }

    fn remove_exchange_locked(&self, x: &Arc<Exchange>) {
        self.exchanges.write().remove(&x.name);
        x.mark_deleted();
        if x.durable {
            let prior = MetaOp::DeclareExchange(self.exchange_def(x));
            self.durability.record_replacing(
                MetaOp::DeleteExchange(self.name.to_string(), x.name.clone()),
                Some(prior),
            );
        }
        let dest = Dest::Exchange(x.clone());
        for other in self.exchanges() {
            if other.unbind_all(&dest) > 0 {
                self.auto_delete_exchange_locked(&other);
            }
        }
    }

    fn auto_delete_exchange_locked(&self, x: &Arc<Exchange>) {
        if x.auto_delete && !x.is_deleted() && x.binding_count() == 0 {
            self.remove_exchange_locked(x);
        }
    }

    /// queue.declare. Returns the queue and whether it was created now.
    /// `server_named` queues may use the reserved `amq.` prefix.
    pub fn declare_queue(
        &self,
        name: &str,
        server_named: bool,
        passive: bool,
        config: QueueConfig,
        conn_id: u64,
    ) -> AmqpResult<(Arc<Queue>, bool)> {
        if passive {
            let q = self.queue_or_404(name)?;
            q.check_exclusive(conn_id)?;
            // A passive declare renews an x-expires lease, as in RabbitMQ.
            q.touch();
            return Ok((q, false));
        }
        let kind = stream_args::queue_type(&config.arguments, name, &self.name)?;
        // A stream's arguments are checked when it is created: a redeclare
        // is only compared (as RabbitMQ does).
        let args = match kind {
            QueueType::Stream => None,
            _ => Some(QueueArgs::parse(&config.arguments, name, &self.name)?),
        };
        let _defs = self.definitions.lock();
        if kind == QueueType::Quorum && self.queue(name).is_none() {
            crate::queue::quorum::check_declare(
                name,
                &self.name,
                config.durable,
                config.exclusive_owner.is_some(),
                config.auto_delete,
                &config.arguments,
            )?;
        }
        if let Some(q) = self.queue(name) {
            q.check_exclusive(conn_id)?;
            self.check_queue_equivalent(&q, name, &config)?;
            q.touch();
            return Ok((q, false));
        }
        let q = match args {
            Some(args) => self.create_queue_locked(name, server_named, config, args)?,
            None => self.create_stream_locked(name, server_named, config)?,
        };
        Ok((q, true))
    }

    /// A redeclaration must match the existing queue's durability,
    /// exclusivity, auto-delete and the arguments RabbitMQ compares.
    fn check_queue_equivalent(
        &self,
        q: &Queue,
        name: &str,
        config: &QueueConfig,
    ) -> AmqpResult<()> {
        let (what, v) = ("queue", &*self.name);
        let c = &q.config;
        if c.durable != config.durable {
            return Err(inequivalent(
                what,
                "durable",
                name,
                v,
                config.durable.to_string(),
                c.durable.to_string(),
            ));
        }
        if config.exclusive_owner.is_some() != c.exclusive_owner.is_some() {
            // RabbitMQ reports an exclusive mismatch as a lock, not an inequivalence.
            return Err(Queue::locked_error(name, v));
        }
        if c.auto_delete != config.auto_delete {
            return Err(inequivalent(
                what,
                "auto_delete",
                name,
                v,
                config.auto_delete.to_string(),
                c.auto_delete.to_string(),
            ));
        }
        let args = if q.stream().is_some() {
            STREAM_EQUIVALENCE_ARGS
        } else if q.is_quorum() {
            crate::queue::quorum::EQUIVALENCE_ARGS
        } else {
            QUEUE_EQUIVALENCE_ARGS
        };
        for arg in args {
            let (got, cur) = (
                config.arguments.inner().get(*arg),
                c.arguments.inner().get(*arg),
            );
            if !same_value(got, cur) {
                let a = describe_args(got, cur);
                return Err(inequivalent_raw(what, arg, name, v, a.0, a.1));
            }
        }
        Ok(())
    }

    /// Creates a declared queue that does not exist yet (refusing the
    /// reserved `amq.` prefix unless server-named), logs it if it is to
    /// persist, and applies policies to its arguments. The caller holds the
    /// definitions lock.
    fn create_queue_locked(
        &self,
        name: &str,
        server_named: bool,
        config: QueueConfig,
        args: QueueArgs,
    ) -> AmqpResult<Arc<Queue>> {
        check_reserved_name(name, server_named)?;
        let persistent = config.durable && config.exclusive_owner.is_none();
        let store = self.durability.store().filter(|_| persistent).cloned();
        if persistent {
            self.durability
                .record(MetaOp::DeclareQueue(self.queue_def(name, &config)));
        }
        let paging = self.durability.paging.get().cloned();
        let args = self.effective_args(name, args);
        let owner: Weak<dyn QueueOwner> = self.me.clone();
        let q = Queue::new(
            name.to_owned(),
            self.name.clone(),
            owner,
            config,
            store,
            paging,
            args,
        );
        self.queues.write().insert(name.to_owned(), q.clone());
        Ok(q)
    }

    /// Creates a declared stream that does not exist yet: checks it as
    /// RabbitMQ does, opens (or recovers) its log, logs the declaration.
    /// The caller holds the definitions lock.
    fn create_stream_locked(
        &self,
        name: &str,
        server_named: bool,
        config: QueueConfig,
    ) -> AmqpResult<Arc<Queue>> {
        stream_args::check_declare(
            name,
            &self.name,
            false,
            config.durable,
            config.exclusive_owner.is_some(),
            config.auto_delete,
            &config.arguments,
        )?;
        check_reserved_name(name, server_named)?;
        let Some(streams) = self.durability.streams.get() else {
            return Err(AmqpError::channel(
                code::PRECONDITION_FAILED,
                format!(
                    "cannot declare stream '{name}': this broker runs without a data directory"
                ),
            ));
        };
        let args = self.effective_stream_args(name, &config.arguments);
        let stream = streams.open(&self.name, name, args).map_err(|e| {
            tracing::error!(queue = %name.escape_debug(), "cannot open a stream's log: {e}");
            AmqpError::channel(
                code::INTERNAL_ERROR,
                format!("cannot open the log of stream '{name}': {e}"),
            )
        })?;
        self.durability
            .record(MetaOp::DeclareQueue(self.queue_def(name, &config)));
        let owner: Weak<dyn QueueOwner> = self.me.clone();
        let q = Queue::new_stream(name.to_owned(), self.name.clone(), owner, config, stream);
        self.queues.write().insert(name.to_owned(), q.clone());
        Ok(q)
    }

    /// queue.delete with RabbitMQ's if-unused / if-empty checks. Returns what
    /// the queue held (None if there was no such queue).
    pub fn delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        conn_id: u64,
    ) -> AmqpResult<Option<Deleted>> {
        let _defs = self.definitions.lock();
        let Some(q) = self.queue(name) else {
            return Ok(None);
        };
        q.check_exclusive(conn_id)?;
        // A stream is neither "in use" nor "not empty" here (RabbitMQ).
        let stream = q.stream().is_some();
        if if_unused && !stream && q.consumer_count() > 0 {
            return Err(AmqpError::channel(
                code::PRECONDITION_FAILED,
                format!("queue '{name}' in vhost '{}' in use", self.name),
            ));
        }
        if if_empty && !stream && q.message_count() > 0 {
            return Err(AmqpError::channel(
                code::PRECONDITION_FAILED,
                format!("queue '{name}' in vhost '{}' not empty", self.name),
            ));
        }
        Ok(Some(self.remove_queue_locked(_defs, &q)))
    }

    /// Deletes a queue unconditionally if it is still the one registered
    /// under its name (auto-delete, exclusive owner gone, x-expires, vhost
    /// deletion).
    pub fn remove_queue(&self, q: &Arc<Queue>) -> Option<Deleted> {
        let defs = self.definitions.lock();
        match self.queue(&q.name) {
            Some(cur) if Arc::ptr_eq(&cur, q) => Some(self.remove_queue_locked(defs, q)),
            _ => None,
        }
    }

    /// The one way a queue is removed, whoever asks: it leaves the vhost and
    /// the definitions log, its bindings go (and auto-delete exchanges left
    /// without bindings), its stored messages are released, and then, with
    /// the vhost's definitions lock released, its consumers are cancelled
    /// (basic.cancel to clients that asked to know).
    fn remove_queue_locked(
        &self,
        defs: parking_lot::MutexGuard<'_, ()>,
        q: &Arc<Queue>,
    ) -> Deleted {
        let deleted = self.unregister_queue(q);
        drop(defs);
        for c in &deleted.consumers {
            c.cancel_by_broker();
        }
        deleted
    }

    fn unregister_queue(&self, q: &Arc<Queue>) -> Deleted {
        self.queues.write().remove(&q.name);
        if q.is_persistent() {
            let prior = MetaOp::DeclareQueue(self.queue_def(&q.name, &q.config));
            self.durability.record_replacing(
                MetaOp::DeleteQueue(self.name.to_string(), q.name.clone()),
                Some(prior),
            );
        }
        self.retired.add(&q.stats.snapshot());
        let dest = Dest::Queue(q.clone());
        for x in self.exchanges() {
            if x.unbind_all(&dest) > 0 {
                self.auto_delete_exchange_locked(&x);
            }
        }
        q.mark_deleted()
    }

    /// queue.bind / exchange.bind.
    pub fn bind(
        &self,
        source: &str,
        dest: DestName<'_>,
        routing_key: &str,
        args: &FieldTable,
        conn_id: u64,
    ) -> AmqpResult<()> {
        if source.is_empty() {
            return Err(default_exchange_refused());
        }
        let _defs = self.definitions.lock();
        let x = self.exchange_or_404(source)?;
        let d = self.resolve_dest(dest, conn_id)?;
        let durable = x.durable && dest_durable(&d);
        let def = durable.then(|| binding_def(&self.name, &x, &d, routing_key, args));
        if x.bind(d, routing_key, args)?
            && let Some(def) = def
        {
            self.durability.record(MetaOp::Bind(def));
        }
        Ok(())
    }

    /// queue.unbind / exchange.unbind. Unbinding what is not bound succeeds.
    pub fn unbind(
        &self,
        source: &str,
        dest: DestName<'_>,
        routing_key: &str,
        args: &FieldTable,
        conn_id: u64,
    ) -> AmqpResult<()> {
        if source.is_empty() {
            return Err(default_exchange_refused());
        }
        let _defs = self.definitions.lock();
        // As RabbitMQ: unbinding from or to something missing succeeds.
        let exists = match dest {
            DestName::Queue(n) => self.queue(n).is_some(),
            DestName::Exchange(n) => !n.is_empty() && self.exchange(n).is_some(),
        };
        let Some(x) = self.exchange(source).filter(|_| exists) else {
            return Ok(());
        };
        let d = self.resolve_dest(dest, conn_id)?;
        if x.unbind(&d, routing_key, args) {
            if x.durable && dest_durable(&d) {
                self.durability.record(MetaOp::Unbind(binding_def(
                    &self.name,
                    &x,
                    &d,
                    routing_key,
                    args,
                )));
            }
            self.auto_delete_exchange_locked(&x);
        }
        Ok(())
    }

    fn resolve_dest(&self, dest: DestName<'_>, conn_id: u64) -> AmqpResult<Dest> {
        Ok(match dest {
            DestName::Queue(n) => {
                let q = self.queue_or_404(n)?;
                q.check_exclusive(conn_id)?;
                Dest::Queue(q)
            }
            DestName::Exchange(n) => {
                if n.is_empty() {
                    return Err(default_exchange_refused());
                }
                Dest::Exchange(self.exchange_or_404(n)?)
            }
        })
    }

    /// Routes a message from `x` to queues, following exchange-to-exchange
    /// bindings and alternate exchanges. `out` receives each queue once.
    pub fn route(
        &self,
        x: &Arc<Exchange>,
        routing_key: &str,
        headers: &mut dyn FnMut() -> Option<FieldTable>,
        out: &mut Vec<Arc<Queue>>,
    ) {
        if x.name.is_empty() {
            if let Some(q) = self.queues.read().get(routing_key) {
                out.push(q.clone());
            }
            return;
        }
        let mut pending: Vec<Arc<Exchange>> = vec![x.clone()];
        let mut visited: Vec<usize> = Vec::new();
        let mut dests = Vec::new();
        while let Some(x) = pending.pop() {
            let addr = Arc::as_ptr(&x) as usize;
            if visited.contains(&addr) {
                continue;
            }
            visited.push(addr);
            dests.clear();
            x.route(routing_key, headers, &mut dests);
            if dests.is_empty() {
                if let Some(ae) = x.alternate_exchange().and_then(|n| self.exchange(n)) {
                    pending.push(ae);
                }
                continue;
            }
            for d in dests.drain(..) {
                match d {
                    Dest::Queue(q) => out.push(q),
                    Dest::Exchange(x2) => pending.push(x2),
                }
            }
        }
        if out.len() > 1 {
            out.sort_unstable_by_key(|q| Arc::as_ptr(q) as usize);
            out.dedup_by(|a, b| Arc::ptr_eq(a, b));
        }
    }
}

/// The destination of a bind or unbind, by name.
#[derive(Debug, Clone, Copy)]
pub enum DestName<'a> {
    /// A queue.
    Queue(&'a str),
    /// An exchange.
    Exchange(&'a str),
}

fn dest_durable(d: &Dest) -> bool {
    match d {
        Dest::Queue(q) => q.is_persistent(),
        Dest::Exchange(x) => x.durable,
    }
}

fn binding_def(
    vhost: &str,
    x: &Exchange,
    d: &Dest,
    routing_key: &str,
    args: &FieldTable,
) -> BindingDef {
    let (destination, destination_type) = match d {
        Dest::Queue(q) => (q.name.clone(), "queue"),
        Dest::Exchange(x2) => (x2.name.clone(), "exchange"),
    };
    BindingDef {
        source: x.name.clone(),
        vhost: vhost.to_owned(),
        destination,
        destination_type: destination_type.into(),
        routing_key: routing_key.to_owned(),
        arguments: table_to_json(args),
    }
}

/// RabbitMQ says "invalid exchange type" when the name happens to be an
/// Erlang atom the node already knows (`foo`, the empty name) and
/// "unknown exchange type" otherwise (`ZZwwInvalid`, `x-consistent-hash`
/// without its plugin, `direct ` with a space): recorded in
/// conformance/RABBITMQ_BEHAVIOUR.md. Without an atom table, warren takes
/// short plain lowercase words for atoms.
fn unknown_or_invalid(kind: &str) -> &'static str {
    let atom_like = kind.len() <= 12 && kind.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    if atom_like { "invalid" } else { "unknown" }
}
impl QueueOwner for VHost {
    fn dead_letter(
        &self,
        queue: &Arc<Queue>,
        items: Vec<(Message, Reason)>,
        retry: bool,
    ) -> Vec<bool> {
        deadletter::dead_letter(self, queue, items, retry)
    }

    fn remove_expired(&self, queue: &Arc<Queue>) -> bool {
        self.remove_queue(queue).is_some()
    }
}

/// Where durable state goes: the definitions log and the message store. Both
/// are unset while warren recovers (so replaying does not log again) and in
/// brokers built without a data directory (unit tests).
#[derive(Debug, Default)]
pub struct Durability {
    /// Definitions change log.
    pub meta: std::sync::OnceLock<Arc<MetaLog>>,
    /// Message store.
    pub store: std::sync::OnceLock<Arc<MessageStore>>,
    /// Where and when long queues page messages to disk.
    pub paging: std::sync::OnceLock<PagingConfig>,
    /// Where streams keep their logs.
    pub streams: std::sync::OnceLock<Streams>,
    /// In a cluster, where changes made on this node alone go to be
    /// replicated (see broker/cluster.rs).
    pub replicate: std::sync::OnceLock<ReplicateHook>,
}

/// Takes a definitions change made on this node alone, for the cluster.
pub struct ReplicateHook(pub Box<dyn Fn(MetaOp) + Send + Sync>);

impl std::fmt::Debug for ReplicateHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReplicateHook")
    }
}

thread_local! {
    /// Set while this thread makes a change the cluster committed: that
    /// change is already replicated.
    static APPLYING_COMMITTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Durability {
    /// Logs a definitions change, if logging is on.
    pub fn record(&self, op: MetaOp) {
        self.record_replacing(op, None);
    }

    /// Logs a change that replaced or removed `prior` (the change that
    /// puts it back if this one cannot be written; see `MetaLog`).
    pub fn record_replacing(&self, op: MetaOp, prior: Option<MetaOp>) {
        if let Some(m) = self.meta.get() {
            m.record_replacing(op, prior);
        } else if let Some(r) = self.replicate.get()
            && !APPLYING_COMMITTED.get()
        {
            (r.0)(op);
        }
    }

    /// Runs `f`, which makes changes the cluster has committed (they are
    /// not handed to `replicate` again).
    pub fn applying_committed<T>(f: impl FnOnce() -> T) -> T {
        let was = APPLYING_COMMITTED.replace(true);
        let out = f();
        APPLYING_COMMITTED.set(was);
        out
    }

    /// The message store, if any.
    pub fn store(&self) -> Option<&Arc<MessageStore>> {
        self.store.get()
    }
}

#[cfg(test)]
mod tests;
