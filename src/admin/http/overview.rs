//! `/api/overview`, `/api/whoami`, `/api/nodes`, `/api/cluster-name`,
//! `/api/extensions`, the health checks (`/api/health/checks/...`) and
//! `/api/aliveness-test/{vhost}`.

use std::sync::Arc;

use axum::Router;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Map, Value, json};

use super::rates::{self, ALL_FIELDS};
use super::system::{self, Resources};
use super::{ApiError, ApiResult, AppState, Auth, RABBITMQ_COMPAT_VERSION, St, ok};
use crate::queue::QueueConfig;

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/overview", get(overview))
        .route("/api/whoami", get(whoami))
        .route("/api/cluster-name", get(cluster_name))
        .route("/api/extensions", get(extensions))
        .route("/api/nodes", get(nodes))
        .route("/api/nodes/{node}", get(node))
        .route("/api/health/checks/alarms", get(alarms))
        .route("/api/health/checks/local-alarms", get(alarms))
        .route(
            "/api/health/checks/port-listener/{port}",
            get(port_listener),
        )
        .route(
            "/api/health/checks/protocol-listener/{protocol}",
            get(protocol_listener),
        )
        .route("/api/health/checks/virtual-hosts", get(health_ok))
        .route(
            "/api/health/checks/node-is-mirror-sync-critical",
            get(health_ok),
        )
        .route("/api/health/checks/node-is-quorum-critical", get(health_ok))
        .route(
            "/api/health/checks/certificate-expiration/{within}/{unit}",
            get(health_ok),
        )
        .route("/api/aliveness-test/{vhost}", get(aliveness))
}

fn exchange_types() -> Value {
    let d = |n: &str, what: &str| json!({"name": n, "description": format!("AMQP {what} exchange, as per the AMQP specification"), "enabled": true});
    json!([
        d("direct", "direct"),
        d("fanout", "fanout"),
        d("headers", "headers"),
        d("topic", "topic")
    ])
}

fn listeners(s: &AppState) -> Value {
    let c = &s.broker.config;
    let mut l = Vec::new();
    for ip in &c.bind {
        l.push(json!({"node": s.node, "protocol": "amqp", "ip_address": ip.to_string(), "port": c.port}));
    }
    if c.tls.enabled() {
        for ip in &c.bind {
            l.push(json!({"node": s.node, "protocol": "amqp/ssl", "ip_address": ip.to_string(), "port": c.tls.port}));
        }
    }
    if c.stream.port != 0 {
        for ip in &c.bind {
            l.push(json!({"node": s.node, "protocol": "stream", "ip_address": ip.to_string(), "port": c.stream.port}));
        }
        if c.tls.enabled() && c.stream.tls_port != 0 {
            for ip in &c.bind {
                l.push(json!({"node": s.node, "protocol": "stream/ssl", "ip_address": ip.to_string(), "port": c.stream.tls_port}));
            }
        }
    }
    for http in c.http_addrs() {
        l.push(json!({"node": s.node, "protocol": "http", "ip_address": http.ip().to_string(), "port": http.port()}));
        l.push(json!({"node": s.node, "protocol": "http/prometheus", "ip_address": http.ip().to_string(), "port": http.port()}));
    }
    Value::Array(l)
}

async fn overview(
    axum::extract::State(s): St,
    auth: Auth,
    axum::extract::Query(query): super::Q,
) -> ApiResult {
    let b = &s.broker;
    let visible: Vec<_> = b
        .vhosts()
        .into_iter()
        .filter(|v| auth.can_see_vhost(b, &v.name))
        .collect();
    let (mut queues, mut exchanges, mut consumers) = (0u64, 0u64, 0u64);
    let mut depth = [0u64; 3];
    for vh in &visible {
        exchanges += vh.exchanges().len() as u64;
        for q in vh.queues() {
            queues += 1;
            consumers += q.consumer_count() as u64;
            let d = rates::queue_depth(&q);
            rates::add_depth(&mut depth, d);
        }
    }
    let conns: Vec<_> = b
        .connections::<crate::session::outbound::ConnectionHandle>()
        .into_iter()
        .filter(|c| {
            c.info
                .get()
                .is_some_and(|i| auth.sees_connection_of(&i.user))
        })
        .collect();
    let channels: u64 = conns
        .iter()
        .map(|c| c.channel_count.load(std::sync::atomic::Ordering::Relaxed) as u64)
        .sum();
    let r = s.rates.global();
    let mut queue_totals = Map::new();
    rates::put_depth(&mut queue_totals, depth, &r);
    let started = b
        .stats
        .connections_opened
        .load(std::sync::atomic::Ordering::Relaxed);
    let mut message_stats = rates::message_stats(&rates::global_totals(b), &r, ALL_FIELDS);
    let mut queue_totals = Value::Object(queue_totals);
    let samples = rates::SampleQuery::parse(&query);
    if samples.any() {
        if auth.sees_all() {
            let history = s.rates.global_history();
            samples.add(&history, &mut message_stats, &mut queue_totals);
        } else {
            // Rates stay the broker's (as `message_stats` above); queue
            // lengths are those of the user's vhosts.
            let names: Vec<&str> = visible.iter().map(|v| &*v.name).collect();
            let lengths = rates::SampleQuery {
                rates: None,
                ..samples
            };
            let rates_only = rates::SampleQuery {
                lengths: None,
                ..samples
            };
            rates_only.add(
                &s.rates.global_history(),
                &mut message_stats,
                &mut Value::Null,
            );
            lengths.add(
                &s.rates.vhosts_history(&names),
                &mut Value::Null,
                &mut queue_totals,
            );
        }
    }
    ok(json!({
        "management_version": RABBITMQ_COMPAT_VERSION,
        "rabbitmq_version": RABBITMQ_COMPAT_VERSION,
        "product_name": "warren",
        "product_version": env!("CARGO_PKG_VERSION"),
        "rates_mode": "basic",
        "disable_stats": false,
        "enable_queue_totals": true,
        "exchange_types": exchange_types(),
        "cluster_name": s.node,
        "node": s.node,
        "message_stats": message_stats,
        "churn_rates": {"connection_created": started},
        "queue_totals": queue_totals,
        "object_totals": {
            "connections": conns.len(),
            "channels": channels,
            "exchanges": exchanges,
            "queues": queues,
            "consumers": consumers,
        },
        "statistics_db_event_queue": 0,
        "listeners": listeners(&s),
        "contexts": [],
    }))
}

async fn whoami(auth: Auth) -> ApiResult {
    ok(json!({"name": auth.user.name, "tags": auth.user.tags}))
}

async fn cluster_name(axum::extract::State(s): St, _auth: Auth) -> ApiResult {
    ok(json!({"name": s.node}))
}

async fn extensions(_auth: Auth) -> ApiResult {
    ok(json!([]))
}

fn node_json(s: &AppState) -> Value {
    let b = &s.broker;
    let r = Resources::now(b);
    let uptime = b.started_at.elapsed().map_or(0, |d| d.as_millis() as u64);
    json!({
        "name": s.node,
        "type": "disc",
        "running": true,
        "os_pid": std::process::id().to_string(),
        "mem_used": r.mem_used,
        "mem_limit": r.mem_limit,
        "mem_alarm": r.mem_alarm,
        "disk_free": r.disk_free,
        "disk_free_limit": r.disk_free_limit,
        "disk_free_alarm": r.disk_free_alarm,
        "fd_used": r.fd_used,
        "fd_total": r.fd_total,
        "sockets_used": b.connection_count(),
        "uptime": uptime,
        "processors": system::processors(),
        "rates_mode": "basic",
        "exchange_types": exchange_types(),
        "auth_mechanisms": [
            {"name": "PLAIN", "description": "SASL PLAIN authentication mechanism", "enabled": true},
            {"name": "AMQPLAIN", "description": "QPid AMQPLAIN mechanism", "enabled": true},
            {"name": "EXTERNAL", "description": "SASL EXTERNAL authentication mechanism using TLS client certificates", "enabled": b.config.tls.enabled() && b.config.tls.verify_peer},
        ],
        "partitions": [],
        "being_drained": false,
    })
}

async fn nodes(axum::extract::State(s): St, auth: Auth) -> ApiResult {
    if !auth.sees_all() {
        return Err(ApiError::unauthorised("Not monitor user"));
    }
    ok(Value::Array(all_nodes(&s).await))
}

/// This node's object, and in a cluster one for each other node: what this
/// node knows of it (whether it answers on its inter-node address), with
/// warren's cluster fields on each (`cluster_node_id`, `cluster_address`,
/// `definitions_leader`).
async fn all_nodes(s: &AppState) -> Vec<Value> {
    let Some(c) = s.broker.cluster() else {
        return vec![node_json(s)];
    };
    let mut out = Vec::new();
    for m in c.members().await {
        let mut v = if m.this {
            node_json(s)
        } else {
            json!({"name": m.name, "type": "disc", "running": m.running, "partitions": []})
        };
        if let Value::Object(o) = &mut v {
            o.insert("cluster_node_id".into(), m.id.into());
            o.insert("cluster_address".into(), m.address.into());
            o.insert("definitions_leader".into(), m.leader.into());
        }
        out.push(v);
    }
    out
}

async fn node(axum::extract::State(s): St, auth: Auth, Path(name): Path<String>) -> ApiResult {
    if !auth.sees_all() {
        return Err(ApiError::unauthorised("Not monitor user"));
    }
    all_nodes(&s)
        .await
        .into_iter()
        .find(|n| n["name"] == name.as_str())
        .map_or_else(|| Err(ApiError::not_found()), ok)
}

fn failed(reason: &str, mut extra: Map<String, Value>) -> ApiResult {
    extra.insert("status".into(), "failed".into());
    extra.insert("reason".into(), reason.into());
    Ok(super::json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &Value::Object(extra),
    ))
}

async fn alarms(axum::extract::State(s): St, _auth: Auth) -> ApiResult {
    let r = Resources::now(&s.broker);
    let alarms = r.alarms();
    if alarms.is_empty() {
        return ok(json!({"status": "ok"}));
    }
    let list: Vec<Value> = alarms
        .iter()
        .map(|a| json!({"node": s.node, "resource": a}))
        .collect();
    let mut m = Map::new();
    m.insert("alarms".into(), Value::Array(list));
    failed("There are alarms in effect in the cluster", m)
}

async fn port_listener(
    axum::extract::State(s): St,
    _auth: Auth,
    Path(port): Path<String>,
) -> ApiResult {
    let Ok(port) = port.parse::<u16>() else {
        return Err(ApiError::bad_request(format!("invalid port '{port}'")));
    };
    let c = &s.broker.config;
    let mut ports = vec![c.port, c.http_port];
    if c.tls.enabled() {
        ports.push(c.tls.port);
    }
    if ports.contains(&port) {
        return ok(json!({"status": "ok", "port": port}));
    }
    let mut m = Map::new();
    m.insert("missing".into(), port.into());
    m.insert("ports".into(), json!(ports));
    failed("No active listener", m)
}

async fn protocol_listener(
    axum::extract::State(s): St,
    _auth: Auth,
    Path(protocol): Path<String>,
) -> ApiResult {
    let p = protocol.to_ascii_lowercase();
    let tls = s.broker.config.tls.enabled();
    if matches!(
        p.as_str(),
        "amqp" | "amqp091" | "amqp0-9-1" | "amqp0.9.1" | "http" | "prometheus"
    ) || (tls && matches!(p.as_str(), "amqps" | "amqp/ssl"))
    {
        return ok(json!({"status": "ok", "protocol": protocol}));
    }
    let mut m = Map::new();
    m.insert("missing".into(), protocol.into());
    let protocols = if tls {
        json!(["amqp", "amqps", "http", "prometheus"])
    } else {
        json!(["amqp", "http", "prometheus"])
    };
    m.insert("protocols".into(), protocols);
    failed("No active listener", m)
}

async fn health_ok(_auth: Auth) -> ApiResult {
    ok(json!({"status": "ok"}))
}

/// Declares the queue `aliveness-test`, publishes a message to it and gets
/// it back, as RabbitMQ's aliveness test does.
async fn aliveness(
    axum::extract::State(s): St,
    auth: Auth,
    Path(vhost): Path<String>,
) -> ApiResult {
    let b = &s.broker;
    let vh = super::vhost_or_404(b, &vhost)?;
    let perms = auth.vhost_permissions(b, &vhost)?;
    // As RabbitMQ, the test declares, publishes and gets as the user, who
    // needs those permissions in the vhost.
    use crate::auth::{Access, Resource};
    const QUEUE: Resource<'static> = Resource::Queue("aliveness-test");
    for (access, resource) in [
        (Access::Configure, QUEUE),
        (Access::Write, Resource::Exchange("")),
        (Access::Read, QUEUE),
    ] {
        crate::auth::check(Some(&perms), &auth.user.name, &vhost, access, resource)
            .map_err(|e| ApiError::unauthorised(e.text))?;
    }
    let config = QueueConfig {
        durable: false,
        exclusive_owner: None,
        auto_delete: false,
        arguments: Default::default(),
    };
    let (q, _) = vh.declare_queue("aliveness-test", false, false, config, 0)?;
    q.purge();
    let header = super::exchanges::content_header(&Map::new(), 4)?;
    let msg = crate::message::Message::new(
        b"",
        b"aliveness-test",
        &header,
        bytes::Bytes::from_static(b"test"),
    );
    q.publish(msg, None, None);
    let got = q.take(1);
    if got.first().is_some_and(|r| r.msg.body() == b"test") {
        ok(json!({"status": "ok"}))
    } else {
        failed("aliveness test failed", Map::new())
    }
}
