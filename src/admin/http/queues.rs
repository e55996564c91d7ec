//! `/api/queues[/{vhost}[/{name}]]` (list, declare, delete),
//! `/api/queues/{vhost}/{name}/contents` (purge) and
//! `/api/queues/{vhost}/{name}/get` (fetch messages for debugging).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::routing::{delete, get, post};
use base64::Engine;
use serde_json::{Map, Value, json};

use super::connections::{conn_name, consumer_json};
use super::rates::{self, QUEUE_FIELDS};
use super::store_age::StoreAges;
use super::{
    ApiError, ApiResult, AppState, Auth, Q, RequestBody, St, bool_field, created_or_updated,
    list_lazy, no_content, ok, short_string, str_field, table_field, vhost_or_404,
};
use crate::auth::{Access, Resource};
use crate::protocol::fields::table_to_json;
use crate::queue::consumer::QueuedMessage;
use crate::queue::{Queue, QueueConfig};

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/queues", get(all))
        .route("/api/queues/{vhost}", get(in_vhost))
        .route(
            "/api/queues/{vhost}/{name}",
            get(one).put(declare).delete(remove),
        )
        .route("/api/queues/{vhost}/{name}/contents", delete(purge))
        .route("/api/queues/{vhost}/{name}/get", post(get_messages))
}

/// A queue as RabbitMQ lists it, with live counts and sampled rates, and
/// warren's `oldest_stored_message_age_seconds`.
pub fn queue_json(
    s: &AppState,
    q: &Arc<Queue>,
    ages: &StoreAges,
    policies: &QueuePolicies,
) -> Value {
    let r = s.rates.queue(q);
    let consumers = q.listing_counts()[2];
    let mut m = Map::new();
    m.insert("name".into(), q.name.clone().into());
    m.insert("vhost".into(), q.vhost.to_string().into());
    m.insert("durable".into(), q.config.durable.into());
    m.insert("auto_delete".into(), q.config.auto_delete.into());
    m.insert(
        "exclusive".into(),
        q.config.exclusive_owner.is_some().into(),
    );
    m.insert(
        "arguments".into(),
        Value::Object(table_to_json(&q.config.arguments)),
    );
    // In a cluster, a queue of another node is listed with that node.
    let node = s
        .broker
        .vhost(&q.vhost)
        .and_then(|v| v.remote_home(&q.name))
        .and_then(|home| Some(s.broker.cluster()?.member_name(home)))
        .unwrap_or_else(|| s.node.clone());
    m.insert("node".into(), node.clone().into());
    m.insert("state".into(), "running".into());
    let kind = if q.stream().is_some() {
        "stream"
    } else if q.is_quorum() {
        match s.broker.cluster() {
            // Replicated on every node; one leads.
            Some(c) => {
                let leader = q.replicated_leader().map(|l| c.member_name(l));
                let members: Vec<String> = s
                    .broker
                    .quorum_placement(&q.vhost, &q.name)
                    .map(|(_, m)| m)
                    .unwrap_or_default()
                    .iter()
                    .map(|id| c.member_name(*id))
                    .collect();
                m.insert("leader".into(), leader.clone().into());
                if let Some(l) = leader {
                    m.insert("node".into(), l.into());
                }
                m.insert("members".into(), json!(members));
            }
            // On one node, it leads alone.
            None => {
                m.insert("leader".into(), node.clone().into());
                m.insert("members".into(), json!([node.clone()]));
                m.insert("online".into(), json!([node]));
            }
        }
        let (held, held_bytes) = q.held_dead_letters();
        m.insert("messages_dlx".into(), held.into());
        m.insert("message_bytes_dlx".into(), held_bytes.into());
        "quorum"
    } else {
        "classic"
    };
    m.insert("type".into(), kind.into());
    m.insert("consumers".into(), consumers.into());
    m.insert(
        "consumer_utilisation".into(),
        if consumers > 0 { 1.0 } else { 0.0 }.into(),
    );
    match policies.for_queue(&q.name) {
        Some(p) => {
            m.insert("policy".into(), p.name.clone().into());
            m.insert(
                "effective_policy_definition".into(),
                Value::Object(p.definition.clone()),
            );
        }
        None => {
            m.insert("policy".into(), Value::Null);
            m.insert("effective_policy_definition".into(), json!({}));
        }
    }
    m.insert("exclusive_consumer_tag".into(), Value::Null);
    if let Some(owner) = q.config.exclusive_owner
        && let Some(c) = s
            .broker
            .connection::<crate::session::outbound::ConnectionHandle>(owner)
        && let Some(i) = c.info.get()
    {
        m.insert(
            "owner_pid_details".into(),
            json!({"name": conn_name(&s.broker, i), "peer_host": i.peer.ip().to_string(), "peer_port": i.peer.port()}),
        );
    }
    rates::put_depth(&mut m, rates::queue_depth(q), &r);
    m.insert(
        "oldest_stored_message_age_seconds".into(),
        ages.queue_age_seconds(q).into(),
    );
    m.insert(
        "message_stats".into(),
        rates::message_stats(&q.stats.snapshot(), &r, QUEUE_FIELDS),
    );
    Value::Object(m)
}

/// A vhost's policies that may apply to queues, their patterns compiled
/// once for a whole listing.
pub struct QueuePolicies(Vec<(regex::Regex, crate::vhost::Policy)>);

impl QueuePolicies {
    /// The policies of `vh`.
    pub fn of(vh: &crate::vhost::VHost) -> QueuePolicies {
        let mut ps: Vec<_> = vh
            .policies()
            .into_iter()
            .filter(|p| p.apply_to != "exchanges")
            .filter_map(|p| Some((regex::Regex::new(&p.pattern).ok()?, p)))
            .collect();
        ps.sort_by(|a, b| a.1.name.cmp(&b.1.name));
        QueuePolicies(ps)
    }

    /// The policy in effect for queue `name`, picked as the vhost picks it
    /// (`VHost::queue_policy`): the matching one of highest priority, ties
    /// to the first by name.
    pub fn for_queue(&self, name: &str) -> Option<&crate::vhost::Policy> {
        let mut best: Option<&crate::vhost::Policy> = None;
        for (re, p) in &self.0 {
            if re.is_match(name) && best.is_none_or(|b| p.priority > b.priority) {
                best = Some(p);
            }
        }
        best
    }
}

/// The queues of the vhosts the user sees (or of `only`), with each
/// vhost's policies, in RabbitMQ's order (vhost, then name).
fn queues(
    s: &AppState,
    auth: &Auth,
    only: Option<&str>,
) -> (Vec<Arc<Queue>>, HashMap<String, QueuePolicies>) {
    let b = &s.broker;
    let mut all = Vec::new();
    let mut policies = HashMap::new();
    for vh in b.vhosts() {
        if only.is_some_and(|o| o != &*vh.name) || !auth.can_see_vhost(b, &vh.name) {
            continue;
        }
        all.extend(vh.queues());
        policies.insert(vh.name.to_string(), QueuePolicies::of(&vh));
    }
    // Sorted before they become JSON: comparing names is cheap, looking
    // them up in 10,000 JSON objects is not.
    all.sort_unstable_by(|a, b| (&*a.vhost, &a.name).cmp(&(&*b.vhost, &b.name)));
    (all, policies)
}

/// Lists queues; only those on the page asked for become JSON (unless
/// sorted by a field).
fn list_queues(
    s: &AppState,
    auth: &Auth,
    only: Option<&str>,
    q: &HashMap<String, String>,
) -> ApiResult {
    let (all, policies) = queues(s, auth, only);
    let ages = StoreAges::collect(&s.broker);
    let none = QueuePolicies(Vec::new());
    list_lazy(
        all,
        q,
        |q| q.name.as_str(),
        |q| queue_json(s, q, &ages, policies.get(&*q.vhost).unwrap_or(&none)),
    )
}

async fn all(State(s): St, auth: Auth, Query(q): Q) -> ApiResult {
    list_queues(&s, &auth, None, &q)
}

async fn in_vhost(State(s): St, auth: Auth, Path(vhost): Path<String>, Query(q): Q) -> ApiResult {
    vhost_or_404(&s.broker, &vhost)?;
    auth.check_see_vhost(&s.broker, &vhost)?;
    list_queues(&s, &auth, Some(&vhost), &q)
}

/// The queue a path names, for a user who may see its vhost: as RabbitMQ,
/// a vhost the user has no access to is refused (401) whether or not the
/// queue exists, so a refusal reveals nothing about what the vhost holds.
fn lookup(s: &AppState, auth: &Auth, vhost: &str, name: &str) -> Result<Arc<Queue>, ApiError> {
    let vh = vhost_or_404(&s.broker, vhost)?;
    auth.check_see_vhost(&s.broker, vhost)?;
    vh.queue(name).ok_or_else(ApiError::not_found)
}

/// Refuses (405 RESOURCE_LOCKED, answered as 400 as RabbitMQ does) an
/// operation on another connection's exclusive queue: the HTTP API is no
/// connection, so it owns none.
fn check_not_exclusive(q: &Queue) -> Result<(), crate::protocol::error::AmqpError> {
    if q.config.exclusive_owner.is_some() {
        return Err(crate::protocol::error::AmqpError::channel(
            crate::protocol::error::code::RESOURCE_LOCKED,
            format!(
                "cannot obtain exclusive access to locked queue '{}' in vhost '{}'. \
                 It could be originally declared on another connection or the exclusive \
                 property value does not match that of the original declaration.",
                q.name, q.vhost
            ),
        ));
    }
    Ok(())
}

async fn one(
    State(s): St,
    auth: Auth,
    Path((vhost, name)): Path<(String, String)>,
    Query(query): Q,
) -> ApiResult {
    let q = lookup(&s, &auth, &vhost, &name)?;
    let policies = s
        .broker
        .vhost(&vhost)
        .map_or(QueuePolicies(Vec::new()), |vh| QueuePolicies::of(&vh));
    let mut v = queue_json(&s, &q, &StoreAges::collect(&s.broker), &policies);
    let samples = rates::SampleQuery::parse(&query);
    if samples.any() {
        // Kept from now on, for charts of this queue.
        s.rates.watch(&q);
        let mut stats = v["message_stats"].take();
        samples.add(&s.rates.queue_history(&q), &mut stats, &mut v);
        v["message_stats"] = stats;
    }
    let details: Vec<Value> = q
        .consumers()
        .iter()
        .map(|c| consumer_json(&s, &q, c))
        .collect();
    v["consumer_details"] = Value::Array(details);
    ok(v)
}

async fn declare(
    State(s): St,
    auth: Auth,
    Path((vhost, name)): Path<(String, String)>,
    body: RequestBody,
) -> ApiResult {
    let vh = vhost_or_404(&s.broker, &vhost)?;
    auth.check(&s.broker, &vhost, Access::Configure, Resource::Queue(&name))?;
    if name.is_empty() {
        return Err(ApiError::bad_request("queue name must not be empty"));
    }
    short_string("queue", &name)?;
    let m = body.object().await?;
    if bool_field(&m, "exclusive", false)? {
        return Err(ApiError::bad_request(
            "exclusive queues cannot be declared over HTTP",
        ));
    }
    let config = QueueConfig {
        durable: bool_field(&m, "durable", true)?,
        exclusive_owner: None,
        auto_delete: bool_field(&m, "auto_delete", false)?,
        arguments: table_field(&m, "arguments")?,
    };
    auth.check_exchange_argument(&s.broker, &vhost, Resource::Queue(&name), &config.arguments)?;
    s.broker.check_queue_limit(&vh, &name)?;
    let (_, created) = vh.declare_queue(&name, false, false, config, 0)?;
    created_or_updated(created)
}

async fn remove(
    State(s): St,
    auth: Auth,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Q,
) -> ApiResult {
    let vh = vhost_or_404(&s.broker, &vhost)?;
    let queue = lookup(&s, &auth, &vhost, &name)?;
    auth.check(&s.broker, &vhost, Access::Configure, Resource::Queue(&name))?;
    check_not_exclusive(&queue)?;
    let flag = |k: &str| q.get(k).is_some_and(|v| v == "true");
    match vh.delete_queue(&name, flag("if-unused"), flag("if-empty"), 0)? {
        Some(_) => no_content(),
        None => Err(ApiError::not_found()),
    }
}

async fn purge(State(s): St, auth: Auth, Path((vhost, name)): Path<(String, String)>) -> ApiResult {
    let q = lookup(&s, &auth, &vhost, &name)?;
    auth.check(&s.broker, &vhost, Access::Read, Resource::Queue(&name))?;
    check_not_exclusive(&q)?;
    if let Some(at_home) = q.purge_at_home() {
        // A queue of another node: purged there.
        return match at_home.await {
            Some(_) => no_content(),
            None => Err(ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "queue_unavailable",
                format!("queue '{name}': its node did not answer the purge"),
            )),
        };
    }
    if !q.served_here() {
        return Err(ApiError::new(
            axum::http::StatusCode::NOT_IMPLEMENTED,
            "not_implemented",
            format!(
                "queue '{name}' is replicated across the cluster; purging it is not supported yet"
            ),
        ));
    }
    q.purge();
    no_content()
}

async fn get_messages(
    State(s): St,
    auth: Auth,
    Path((vhost, name)): Path<(String, String)>,
    body: RequestBody,
) -> ApiResult {
    let q = lookup(&s, &auth, &vhost, &name)?;
    auth.check(&s.broker, &vhost, Access::Read, Resource::Queue(&name))?;
    // RabbitMQ's answer here keeps the AMQP code in the reason.
    check_not_exclusive(&q).map_err(ApiError::with_reply_code)?;
    let req = GetRequest::parse(&body.object().await?)?;
    let taken = q
        .take_loaded(req.count, std::time::Duration::from_secs(5))
        .await;
    let mut remaining = q.message_count() as usize + taken.len();
    let mut out = Vec::with_capacity(taken.len());
    for r in &taken {
        remaining -= 1;
        // Counted as a basic.get settled at once (acked, or requeued).
        q.stats.delivered(true, false, r.redelivered);
        q.stats.settled();
        if req.ackmode == "ack_requeue_false" {
            q.stats
                .ack
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        out.push(fetched_message_json(r, remaining, &req));
    }
    settle_fetched(&q, taken, &req);
    ok(Value::Array(out))
}

/// The body of `POST /api/queues/{vhost}/{name}/get`.
struct GetRequest {
    /// How many messages to take.
    count: usize,
    /// One of RabbitMQ's four ack modes.
    ackmode: String,
    /// Whether the ack mode puts the messages back.
    requeue: bool,
    /// "auto" (text when UTF-8) or "base64".
    encoding: String,
    /// Bytes of each payload to show, if limited.
    truncate: Option<usize>,
}

impl GetRequest {
    /// Reads and checks the request, field by field as RabbitMQ does.
    fn parse(m: &Map<String, Value>) -> Result<GetRequest, ApiError> {
        let count = match m.get("count") {
            None => 1,
            Some(v) => v
                .as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .ok_or_else(|| ApiError::bad_request("count must be a non-negative integer"))?,
        } as usize;
        let ackmode = str_field(m, "ackmode", "")?;
        let requeue = match ackmode.as_str() {
            "ack_requeue_true" | "reject_requeue_true" => true,
            "ack_requeue_false" | "reject_requeue_false" => false,
            other => {
                return Err(ApiError::bad_request(format!(
                    "ackmode must be one of ack_requeue_true, ack_requeue_false, \
                     reject_requeue_true, reject_requeue_false, not '{other}'"
                )));
            }
        };
        let encoding = str_field(m, "encoding", "auto")?;
        if encoding != "auto" && encoding != "base64" {
            return Err(ApiError::bad_request("encoding must be auto or base64"));
        }
        let truncate = m
            .get("truncate")
            .and_then(Value::as_u64)
            .map(|n| n as usize);
        Ok(GetRequest {
            count,
            ackmode,
            requeue,
            encoding,
            truncate,
        })
    }
}

/// One fetched message as RabbitMQ shows it, with `remaining` messages
/// left behind it.
fn fetched_message_json(r: &QueuedMessage, remaining: usize, req: &GetRequest) -> Value {
    let (msg, redelivered) = (&r.msg, &r.redelivered);
    let body = msg.body();
    let shown = &body[..req.truncate.map_or(body.len(), |t| t.min(body.len()))];
    let (payload, enc) = match std::str::from_utf8(shown) {
        Ok(text) if req.encoding == "auto" => (text.to_owned(), "string"),
        _ => (
            base64::engine::general_purpose::STANDARD.encode(shown),
            "base64",
        ),
    };
    let props = msg
        .properties()
        .map_or_else(|| json!({}), |p| super::exchanges::properties_to_json(&p));
    json!({
        "payload_bytes": body.len(),
        "redelivered": redelivered,
        "exchange": String::from_utf8_lossy(msg.exchange()),
        "routing_key": String::from_utf8_lossy(msg.routing_key()),
        "message_count": remaining,
        "properties": props,
        "payload": payload,
        "payload_encoding": enc,
    })
}

/// Settles fetched messages as the ack mode says: requeued, or acked in
/// the store (and dead-lettered when rejected).
fn settle_fetched(q: &Arc<Queue>, taken: Vec<QueuedMessage>, req: &GetRequest) {
    if req.requeue {
        q.requeue(taken);
    } else if req.ackmode == "reject_requeue_false" {
        q.dead_letter_stored(
            taken
                .into_iter()
                .map(|r| (r.msg, crate::vhost::deadletter::Reason::Rejected, r.stored))
                .collect(),
        );
    } else {
        let ids: Vec<u64> = taken.iter().filter_map(|r| r.stored).collect();
        q.store_ack(&ids);
    }
}
