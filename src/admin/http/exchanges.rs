//! `/api/exchanges[/{vhost}[/{name}]]` (list, declare, delete) and
//! `/api/exchanges/{vhost}/{name}/publish`, with the message property
//! conversions the publish and get endpoints share.

use std::sync::Arc;

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{AMQPValue, FieldTable, ShortString};
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use base64::Engine;
use serde_json::{Map, Value, json};

use super::{
    ApiError, ApiResult, AppState, Auth, Q, RequestBody, St, bool_field, created_or_updated, list,
    no_content, object_field, ok, short_string, str_field, table_field, vhost_or_404,
};
use crate::auth::{Access, Resource};
use crate::message::Message;
use crate::protocol::fields::{table_to_json, value_to_json};
use crate::routing::exchange::Exchange;
use crate::vhost::ExchangeDeclare;

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/exchanges", get(all))
        .route("/api/exchanges/{vhost}", get(in_vhost))
        .route(
            "/api/exchanges/{vhost}/{name}",
            get(one).put(declare).delete(delete),
        )
        .route("/api/exchanges/{vhost}/{name}/publish", post(publish))
}

/// The exchange a path names: RabbitMQ's API calls the default exchange
/// `amq.default`, since "" cannot be a path segment.
pub fn path_name(name: &str) -> &str {
    if name == "amq.default" { "" } else { name }
}

/// An exchange as RabbitMQ lists it.
pub fn exchange_json(vhost: &str, x: &Exchange) -> Value {
    json!({
        "name": x.name,
        "vhost": vhost,
        "type": x.kind.as_str(),
        "durable": x.durable,
        "auto_delete": x.auto_delete,
        "internal": x.internal,
        "arguments": table_to_json(&x.arguments),
        "policy": null,
        "user_who_performed_action": "",
    })
}

fn exchanges(s: &AppState, auth: &Auth, only: Option<&str>) -> Vec<Value> {
    let b = &s.broker;
    let mut out = Vec::new();
    for vh in b.vhosts() {
        if only.is_some_and(|o| o != &*vh.name) || !auth.can_see_vhost(b, &vh.name) {
            continue;
        }
        for x in vh.exchanges() {
            out.push(exchange_json(&vh.name, &x));
        }
    }
    super::sort_by_vhost_name(&mut out);
    out
}

async fn all(State(s): St, auth: Auth, Query(q): Q) -> ApiResult {
    list(exchanges(&s, &auth, None), &q)
}

async fn in_vhost(State(s): St, auth: Auth, Path(vhost): Path<String>, Query(q): Q) -> ApiResult {
    vhost_or_404(&s.broker, &vhost)?;
    auth.check_see_vhost(&s.broker, &vhost)?;
    list(exchanges(&s, &auth, Some(&vhost)), &q)
}

async fn one(State(s): St, auth: Auth, Path((vhost, name)): Path<(String, String)>) -> ApiResult {
    let vh = vhost_or_404(&s.broker, &vhost)?;
    auth.check_see_vhost(&s.broker, &vhost)?;
    let x = vh
        .exchange(path_name(&name))
        .ok_or_else(ApiError::not_found)?;
    ok(exchange_json(&vhost, &x))
}

async fn declare(
    State(s): St,
    auth: Auth,
    Path((vhost, name)): Path<(String, String)>,
    body: RequestBody,
) -> ApiResult {
    let vh = vhost_or_404(&s.broker, &vhost)?;
    auth.check(
        &s.broker,
        &vhost,
        Access::Configure,
        Resource::Exchange(&name),
    )?;
    short_string("exchange", &name)?;
    let m = body.object().await?;
    let kind = match m.get("type") {
        Some(Value::String(t)) => t.clone(),
        _ => return Err(ApiError::bad_request("type is required")),
    };
    if crate::routing::exchange::ExchangeKind::parse(&kind).is_none() {
        return Err(ApiError::bad_request(format!(
            "unknown exchange type '{kind}'"
        )));
    }
    let d = ExchangeDeclare {
        name: name.clone(),
        kind,
        passive: false,
        durable: bool_field(&m, "durable", true)?,
        auto_delete: bool_field(&m, "auto_delete", false)?,
        internal: bool_field(&m, "internal", false)?,
        arguments: table_field(&m, "arguments")?,
    };
    auth.check_exchange_argument(&s.broker, &vhost, Resource::Exchange(&name), &d.arguments)?;
    let existed = vh.exchange(&name).is_some();
    if s.broker.cluster().is_some() && !d.durable && !existed {
        // A non-durable exchange is the cluster's too (a durable one is
        // replicated as a definitions change once made here).
        let def = crate::schema::ExchangeDef {
            name: d.name.clone(),
            vhost: vhost.clone(),
            kind: d.kind.clone(),
            durable: false,
            auto_delete: d.auto_delete,
            internal: d.internal,
            arguments: crate::protocol::fields::table_to_json(&d.arguments),
        };
        s.broker
            .define(crate::broker::cluster::Command::DeclareExchange(def))
            .await?;
        return created_or_updated(true);
    }
    vh.declare_exchange(&d)?;
    created_or_updated(!existed)
}

async fn delete(
    State(s): St,
    auth: Auth,
    Path((vhost, name)): Path<(String, String)>,
    Query(q): Q,
) -> ApiResult {
    let vh = vhost_or_404(&s.broker, &vhost)?;
    auth.check(
        &s.broker,
        &vhost,
        Access::Configure,
        Resource::Exchange(&name),
    )?;
    if vh.exchange(&name).is_none() {
        return Err(ApiError::not_found());
    }
    let if_unused = q.get("if-unused").is_some_and(|v| v == "true");
    if s.broker.cluster().is_some() && vh.exchange(&name).is_some_and(|x| !x.durable) {
        s.broker
            .define(crate::broker::cluster::Command::DeleteExchange {
                vhost: vhost.clone(),
                name: name.clone(),
                if_unused,
            })
            .await?;
        return no_content();
    }
    vh.delete_exchange(&name, if_unused)?;
    no_content()
}

fn short(m: &Map<String, Value>, k: &str) -> Result<Option<ShortString>, ApiError> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() <= 255 => Ok(Some(s.as_str().into())),
        Some(Value::Number(n)) => Ok(Some(n.to_string().as_str().into())),
        Some(_) => Err(ApiError::bad_request(format!(
            "property {k} must be a short string"
        ))),
    }
}

fn octet(m: &Map<String, Value>, k: &str) -> Result<Option<u8>, ApiError> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|n| *n <= 255)
            .map(|n| Some(n as u8))
            .ok_or_else(|| ApiError::bad_request(format!("property {k} must be 0..255"))),
    }
}

/// Message properties from RabbitMQ's JSON form.
pub fn properties_from_json(m: &Map<String, Value>) -> Result<BasicProperties, ApiError> {
    let mut p = BasicProperties::default();
    if let Some(v) = short(m, "content_type")? {
        p = p.with_content_type(v);
    }
    if let Some(v) = short(m, "content_encoding")? {
        p = p.with_content_encoding(v);
    }
    if let Some(v) = m.get("headers") {
        match v {
            Value::Object(h) => {
                let t = crate::protocol::fields::table_from_json(h)
                    .map_err(|e| ApiError::bad_request(format!("headers: {e}")))?;
                p = p.with_headers(t)
            }
            Value::Null => {}
            _ => return Err(ApiError::bad_request("headers must be an object")),
        }
    }
    if let Some(v) = octet(m, "delivery_mode")? {
        p = p.with_delivery_mode(v);
    }
    if let Some(v) = octet(m, "priority")? {
        p = p.with_priority(v);
    }
    if let Some(v) = short(m, "correlation_id")? {
        p = p.with_correlation_id(v);
    }
    if let Some(v) = short(m, "reply_to")? {
        p = p.with_reply_to(v);
    }
    if let Some(v) = short(m, "expiration")? {
        p = p.with_expiration(v);
    }
    if let Some(v) = short(m, "message_id")? {
        p = p.with_message_id(v);
    }
    if let Some(v) = m.get("timestamp").and_then(Value::as_u64) {
        p = p.with_timestamp(v);
    }
    if let Some(v) = short(m, "type")? {
        p = p.with_type(v);
    }
    if let Some(v) = short(m, "user_id")? {
        p = p.with_user_id(v);
    }
    if let Some(v) = short(m, "app_id")? {
        p = p.with_app_id(v);
    }
    Ok(p)
}

/// Message properties in RabbitMQ's JSON form (only those set).
pub fn properties_to_json(p: &BasicProperties) -> Value {
    let mut m = Map::new();
    let mut s = |k: &str, v: &Option<ShortString>| {
        if let Some(v) = v {
            m.insert(k.into(), v.as_str().into());
        }
    };
    s("content_type", p.content_type());
    s("content_encoding", p.content_encoding());
    s("correlation_id", p.correlation_id());
    s("reply_to", p.reply_to());
    s("expiration", p.expiration());
    s("message_id", p.message_id());
    s("type", p.kind());
    s("user_id", p.user_id());
    s("app_id", p.app_id());
    if let Some(h) = p.headers() {
        m.insert("headers".into(), Value::Object(table_to_json(h)));
    }
    if let Some(v) = p.delivery_mode() {
        m.insert("delivery_mode".into(), (*v).into());
    }
    if let Some(v) = p.priority() {
        m.insert("priority".into(), (*v).into());
    }
    if let Some(v) = p.timestamp() {
        m.insert("timestamp".into(), value_to_json(&AMQPValue::Timestamp(*v)));
    }
    Value::Object(m)
}

/// The raw content header payload for a body of `size` bytes with the
/// properties given in RabbitMQ's JSON form.
pub fn content_header(props: &Map<String, Value>, size: u64) -> Result<Vec<u8>, ApiError> {
    let p = properties_from_json(props)?;
    crate::message::content_header(&p, size)
        .ok_or_else(|| ApiError::bad_request("cannot encode properties"))
}

async fn publish(
    State(s): St,
    auth: Auth,
    Path((vhost, name)): Path<(String, String)>,
    body: RequestBody,
) -> ApiResult {
    let b = &s.broker;
    let vh = vhost_or_404(b, &vhost)?;
    let name = path_name(&name).to_owned();
    auth.check(b, &vhost, Access::Write, Resource::Exchange(&name))?;
    let x = vh.exchange_or_404(&name)?;
    let m = body.object().await?;
    if x.internal {
        return Err(ApiError::bad_request(format!(
            "cannot publish to internal exchange '{name}' in vhost '{vhost}'"
        )));
    }
    let routing_key = str_field(&m, "routing_key", "")?;
    short_string("routing_key", &routing_key)?;
    let payload = match m.get("payload") {
        Some(Value::String(p)) => p.clone(),
        _ => return Err(ApiError::bad_request("payload is required (a string)")),
    };
    let body = match str_field(&m, "payload_encoding", "string")?.as_str() {
        "string" => payload.into_bytes(),
        "base64" => base64::engine::general_purpose::STANDARD
            .decode(payload.as_bytes())
            .map_err(|_| ApiError::bad_request("payload is not valid base64"))?,
        other => {
            return Err(ApiError::bad_request(format!(
                "payload_encoding must be string or base64, not '{other}'"
            )));
        }
    };
    if body.len() as u64 > b.config.amqp.max_message_size {
        return Err(ApiError::bad_request(format!(
            "message size {} is larger than configured max size {}",
            body.len(),
            b.config.amqp.max_message_size
        )));
    }
    let props = object_field(&m, "properties")?;
    if let Some(claimed) = short(&props, "user_id")? {
        crate::auth::check_user_id(Some(&auth.user), &auth.user.name, claimed.as_str())
            .map_err(ApiError::with_reply_code)?;
    }
    let header = content_header(&props, body.len() as u64)?;
    let msg = Message::new(
        name.as_bytes(),
        routing_key.as_bytes(),
        &header,
        bytes::Bytes::from(body),
    );
    let mut headers =
        || -> Option<FieldTable> { msg.properties().and_then(|p| p.headers().clone()) };
    let mut queues = Vec::new();
    vh.route(&x, &routing_key, &mut headers, &mut queues);
    b.stats
        .http_published
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let ttl = match msg.expiration() {
        Some(Err(why)) => return Err(ApiError::bad_request(why)),
        Some(Ok(t)) => Some(t),
        None => None,
    };
    crate::queue::enqueue_routed(&queues, &msg, b.durability.store(), ttl);
    ok(json!({"routed": !queues.is_empty()}))
}
