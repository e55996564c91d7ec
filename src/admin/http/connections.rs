//! `/api/connections` (list, show, close), `/api/channels`,
//! `/api/consumers`, and their per-vhost and per-connection variants.
//!
//! Connections are named as RabbitMQ names them, `"<peer> -> <listener>"`
//! (e.g. `127.0.0.1:50412 -> 127.0.0.1:5672`), channels `"<connection> (<n>)"`.
//! Management users see only their own connections; monitoring users and
//! administrators see all. Only administrators and the owner may close one.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::get;
use serde_json::{Map, Value, json};

use super::rates::{self, PUBLISHER_FIELDS};
use super::{
    ApiError, ApiResult, AppState, Auth, Q, St, list, list_by, no_content, ok, vhost_or_404,
};
use crate::broker::Broker;
use crate::protocol::fields::{table_to_json, value_to_json};
use crate::queue::Queue;
use crate::queue::consumer::Consumer;
use crate::session::delivery::ChannelShared;
use crate::session::outbound::{ConnEvent, ConnInfo, ConnectionHandle};

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/connections", get(connections))
        .route(
            "/api/connections/{name}",
            get(connection).delete(close_connection),
        )
        .route("/api/connections/{name}/channels", get(connection_channels))
        .route("/api/vhosts/{vhost}/connections", get(vhost_connections))
        .route("/api/channels", get(channels))
        .route("/api/channels/{name}", get(channel))
        .route("/api/vhosts/{vhost}/channels", get(vhost_channels))
        .route("/api/consumers", get(consumers))
        .route("/api/consumers/{vhost}", get(vhost_consumers))
}

/// A connection's name, as RabbitMQ forms it ("peer -> listener address").
pub fn conn_name(_broker: &Broker, i: &ConnInfo) -> String {
    format!("{} -> {}", i.peer, i.local)
}

fn channel_name(b: &Broker, i: &ConnInfo, number: u16) -> String {
    format!("{} ({number})", conn_name(b, i))
}

/// Open connections the user may see, oldest first.
fn visible(s: &AppState, auth: &Auth) -> Vec<(Arc<ConnectionHandle>, ConnInfo)> {
    let mut out: Vec<_> = s
        .broker
        .connections::<ConnectionHandle>()
        .into_iter()
        .filter_map(|c| {
            let i = c.info.get()?.clone();
            auth.sees_connection_of(&i.user).then_some((c, i))
        })
        .collect();
    out.sort_by_key(|(c, _)| c.id);
    out
}

fn connection_json(s: &AppState, c: &ConnectionHandle, i: &ConnInfo) -> Value {
    let b = &s.broker;
    let connected_at = i
        .connected_at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let props = table_to_json(&i.client_properties);
    let mut m = Map::new();
    m.insert("name".into(), conn_name(b, i).into());
    m.insert("node".into(), s.node.clone().into());
    m.insert("vhost".into(), i.vhost.clone().into());
    m.insert("user".into(), i.user.clone().into());
    m.insert(
        "state".into(),
        if c.is_closing() { "closing" } else { "running" }.into(),
    );
    m.insert("type".into(), "network".into());
    m.insert("protocol".into(), "AMQP 0-9-1".into());
    m.insert("host".into(), i.local.ip().to_string().into());
    m.insert("port".into(), i.local.port().into());
    m.insert("peer_host".into(), i.peer.ip().to_string().into());
    m.insert("peer_port".into(), i.peer.port().into());
    m.insert("auth_mechanism".into(), i.auth_mechanism.clone().into());
    m.insert("ssl".into(), i.tls.is_some().into());
    let tls = i.tls.as_ref();
    let opt = |v: Option<&String>| v.map_or(Value::Null, |s| Value::String(s.clone()));
    m.insert("ssl_protocol".into(), opt(tls.map(|t| &t.protocol)));
    m.insert("ssl_cipher".into(), opt(tls.map(|t| &t.cipher)));
    m.insert(
        "peer_cert_subject".into(),
        opt(tls.and_then(|t| t.peer_cert_subject.as_ref())),
    );
    m.insert(
        "peer_cert_issuer".into(),
        opt(tls.and_then(|t| t.peer_cert_issuer.as_ref())),
    );
    m.insert(
        "channels".into(),
        c.channel_count
            .load(std::sync::atomic::Ordering::Relaxed)
            .into(),
    );
    m.insert("channel_max".into(), i.channel_max.into());
    m.insert(
        "frame_max".into(),
        c.frame_max
            .load(std::sync::atomic::Ordering::Relaxed)
            .into(),
    );
    m.insert("timeout".into(), i.heartbeat.into());
    m.insert("connected_at".into(), connected_at.into());
    if let Some(n) = i
        .client_properties
        .inner()
        .get("connection_name")
        .map(value_to_json)
    {
        m.insert("user_provided_name".into(), n);
    }
    m.insert("client_properties".into(), Value::Object(props));
    m.insert("send_oct".into(), c.bytes_written().into());
    m.insert("send_pend".into(), c.pending_bytes().into());
    m.insert(
        "message_stats".into(),
        rates::message_stats(
            &c.stats.snapshot(),
            &s.rates.connection(c.id),
            PUBLISHER_FIELDS,
        ),
    );
    Value::Object(m)
}

async fn connections(State(s): St, auth: Auth, Query(q): Q) -> ApiResult {
    let items = visible(&s, &auth)
        .iter()
        .map(|(c, i)| connection_json(&s, c, i))
        .collect();
    list(items, &q)
}

async fn vhost_connections(
    State(s): St,
    auth: Auth,
    Path(vhost): Path<String>,
    Query(q): Q,
) -> ApiResult {
    vhost_or_404(&s.broker, &vhost)?;
    auth.check_see_vhost(&s.broker, &vhost)?;
    let items = visible(&s, &auth)
        .iter()
        .filter(|(_, i)| i.vhost == vhost)
        .map(|(c, i)| connection_json(&s, c, i))
        .collect();
    list(items, &q)
}

fn find(
    s: &AppState,
    auth: &Auth,
    name: &str,
) -> Result<(Arc<ConnectionHandle>, ConnInfo), ApiError> {
    visible(s, auth)
        .into_iter()
        .find(|(_, i)| conn_name(&s.broker, i) == name)
        .ok_or_else(ApiError::not_found)
}

async fn connection(State(s): St, auth: Auth, Path(name): Path<String>) -> ApiResult {
    let (c, i) = find(&s, &auth, &name)?;
    ok(connection_json(&s, &c, &i))
}

async fn close_connection(
    State(s): St,
    auth: Auth,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let (c, i) = find(&s, &auth, &name)?;
    if !auth.is_admin() && auth.user.name != i.user {
        return Err(ApiError::unauthorised("Not administrator user"));
    }
    let reason = headers
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("Closed via management plugin")
        .to_owned();
    c.send_event(ConnEvent::Close(
        crate::protocol::error::code::CONNECTION_FORCED,
        reason,
    ));
    no_content()
}

/// Consumers per channel, counted once for a listing.
fn consumers_by_channel(b: &Broker) -> HashMap<usize, u32> {
    let mut m = HashMap::new();
    for vh in b.vhosts() {
        for q in vh.queues() {
            for c in q.consumers() {
                *m.entry(Arc::as_ptr(&c.channel) as *const () as usize)
                    .or_insert(0) += 1;
            }
        }
    }
    m
}

fn channel_json(
    s: &AppState,
    i: &ConnInfo,
    ch: &Arc<ChannelShared>,
    counts: &HashMap<usize, u32>,
) -> Value {
    let b = &s.broker;
    let (global_prefetch, prefetch) = {
        let st = ch.state.lock();
        (st.global_prefetch, st.consumer_prefetch)
    };
    json!({
        "name": channel_name(b, i, ch.id),
        "number": ch.id,
        "node": s.node,
        "vhost": i.vhost,
        "user": i.user,
        "state": "running",
        "connection_details": {
            "name": conn_name(b, i),
            "peer_host": i.peer.ip().to_string(),
            "peer_port": i.peer.port(),
        },
        "consumer_count": counts.get(&(Arc::as_ptr(ch) as usize)).copied().unwrap_or(0),
        "messages_unacknowledged": ch.unacked_count(),
        "prefetch_count": prefetch,
        "global_prefetch_count": global_prefetch,
    })
}

fn channel_list(s: &AppState, auth: &Auth, keep: impl Fn(&ConnInfo) -> bool) -> Vec<Value> {
    let counts = consumers_by_channel(&s.broker);
    let mut out = Vec::new();
    for (c, i) in visible(s, auth) {
        if !keep(&i) {
            continue;
        }
        for ch in c.channels() {
            out.push(channel_json(s, &i, &ch, &counts));
        }
    }
    out
}

async fn channels(State(s): St, auth: Auth, Query(q): Q) -> ApiResult {
    list(channel_list(&s, &auth, |_| true), &q)
}

async fn vhost_channels(
    State(s): St,
    auth: Auth,
    Path(vhost): Path<String>,
    Query(q): Q,
) -> ApiResult {
    vhost_or_404(&s.broker, &vhost)?;
    auth.check_see_vhost(&s.broker, &vhost)?;
    list(channel_list(&s, &auth, |i| i.vhost == vhost), &q)
}

async fn connection_channels(
    State(s): St,
    auth: Auth,
    Path(name): Path<String>,
    Query(q): Q,
) -> ApiResult {
    find(&s, &auth, &name)?;
    let b = &s.broker;
    list(channel_list(&s, &auth, |i| conn_name(b, i) == name), &q)
}

async fn channel(State(s): St, auth: Auth, Path(name): Path<String>) -> ApiResult {
    channel_list(&s, &auth, |_| true)
        .into_iter()
        .find(|c| c["name"] == name.as_str())
        .map_or_else(|| Err(ApiError::not_found()), ok)
}

/// A consumer as RabbitMQ lists it.
pub fn consumer_json(s: &AppState, q: &Queue, c: &Consumer) -> Value {
    let b = &s.broker;
    let Some(ch) = c.channel.as_any().downcast_ref::<ChannelShared>() else {
        return Value::Null;
    };
    let details = match ch.conn.info.get() {
        Some(i) => json!({
            "connection_name": conn_name(b, i),
            "name": channel_name(b, i, ch.id),
            "node": s.node,
            "number": ch.id,
            "peer_host": i.peer.ip().to_string(),
            "peer_port": i.peer.port(),
            "user": i.user,
        }),
        None => json!({"number": ch.id}),
    };
    json!({
        "consumer_tag": c.tag_str(),
        "queue": {"name": q.name, "vhost": &*q.vhost},
        "channel_details": details,
        "ack_required": !c.no_ack,
        "exclusive": c.exclusive,
        "prefetch_count": c.prefetch,
        "active": c.is_active(),
        "activity_status": if c.is_active() { "up" } else { "suspended" },
        "arguments": {},
    })
}

fn consumer_list(s: &AppState, auth: &Auth, only: Option<&str>) -> Vec<Value> {
    let b = &s.broker;
    let mut vhs = b.vhosts();
    vhs.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = Vec::new();
    for vh in vhs {
        if only.is_some_and(|o| o != &*vh.name) || !auth.can_see_vhost(b, &vh.name) {
            continue;
        }
        let mut qs = vh.queues();
        qs.sort_by(|a, b| a.name.cmp(&b.name));
        for q in qs {
            for c in q.consumers() {
                let owner = c
                    .channel
                    .as_any()
                    .downcast_ref::<ChannelShared>()
                    .and_then(|ch| ch.conn.info.get())
                    .map(|i| i.user.clone());
                if owner.is_some_and(|u| auth.sees_connection_of(&u)) {
                    out.push(consumer_json(s, &q, &c));
                }
            }
        }
    }
    out
}

async fn consumers(State(s): St, auth: Auth, Query(q): Q) -> ApiResult {
    list_by(consumer_list(&s, &auth, None), &q, "queue.name")
}

async fn vhost_consumers(
    State(s): St,
    auth: Auth,
    Path(vhost): Path<String>,
    Query(q): Q,
) -> ApiResult {
    vhost_or_404(&s.broker, &vhost)?;
    auth.check_see_vhost(&s.broker, &vhost)?;
    list_by(consumer_list(&s, &auth, Some(&vhost)), &q, "queue.name")
}
