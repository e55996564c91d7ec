//! `/api/bindings[/{vhost}]`, `/api/bindings/{vhost}/e/{source}/{q|e}/{dest}`
//! (list, create) and `.../{props}` (show, delete), and the per-exchange and
//! per-queue binding lists. Like RabbitMQ, listings include the implicit
//! binding of every queue to the default exchange.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use base64::Engine;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::{
    ApiError, ApiResult, AppState, Auth, Q, RequestBody, St, list, no_content, object_field, ok,
    short_string, str_field, table_field, vhost_or_404,
};
use crate::auth::{Access, Resource};
use crate::protocol::fields::table_to_json;
use crate::routing::exchange::Dest;
use crate::vhost::{DestName, VHost};

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/bindings", get(all))
        .route("/api/bindings/{vhost}", get(in_vhost))
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{dest}",
            get(between).post(create),
        )
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{dest}/{props}",
            get(one).delete(remove),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/source",
            get(from_exchange),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/destination",
            get(to_exchange),
        )
        .route("/api/queues/{vhost}/{name}/bindings", get(to_queue))
}

/// Escapes a binding key part as RabbitMQ does (mochiweb's quote_plus, with
/// `~` escaped too, since it separates the key from the arguments hash).
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The key that names one binding between a source and a destination:
/// the escaped routing key, plus `~` and a hash of the arguments if any.
pub fn properties_key(routing_key: &str, args: &Map<String, Value>) -> String {
    if args.is_empty() {
        return if routing_key.is_empty() {
            "~".into()
        } else {
            quote(routing_key)
        };
    }
    let canonical = serde_json::to_string(&Value::Object(args.clone())).unwrap_or_default();
    let digest = Sha256::digest(canonical.as_bytes());
    let hash = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..12]);
    format!("{}~{}", quote(routing_key), quote(&hash))
}

/// One binding as RabbitMQ lists it.
fn binding_json(
    vhost: &str,
    source: &str,
    dest: &str,
    dest_type: &str,
    rk: &str,
    args: Map<String, Value>,
) -> Value {
    let key = properties_key(rk, &args);
    json!({
        "source": source,
        "vhost": vhost,
        "destination": dest,
        "destination_type": dest_type,
        "routing_key": rk,
        "arguments": args,
        "properties_key": key,
    })
}

/// Every binding of a vhost, default-exchange ones first.
fn vhost_bindings(vh: &VHost) -> Vec<Value> {
    let v = &*vh.name;
    let mut queues = vh.queues();
    queues.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out: Vec<Value> = queues
        .iter()
        .map(|q| binding_json(v, "", &q.name, "queue", &q.name, Map::new()))
        .collect();
    let mut xs = vh.exchanges();
    xs.sort_by(|a, b| a.name.cmp(&b.name));
    let mut rest = Vec::new();
    for x in xs.iter().filter(|x| !x.name.is_empty()) {
        for (d, b) in x.bindings() {
            let (name, kind) = match &d {
                Dest::Queue(q) => (q.name.as_str(), "queue"),
                Dest::Exchange(x2) => (x2.name.as_str(), "exchange"),
            };
            rest.push(binding_json(
                v,
                &x.name,
                name,
                kind,
                &b.routing_key,
                table_to_json(&b.arguments),
            ));
        }
    }
    let key = |b: &Value| {
        [
            "source",
            "destination_type",
            "destination",
            "properties_key",
        ]
        .map(|k| b[k].as_str().unwrap_or("").to_owned())
    };
    rest.sort_by_key(key);
    out.extend(rest);
    out
}

async fn all(State(s): St, auth: Auth, Query(q): Q) -> ApiResult {
    let b = &s.broker;
    let mut vhs = b.vhosts();
    vhs.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = Vec::new();
    for vh in vhs.iter().filter(|v| auth.can_see_vhost(b, &v.name)) {
        out.extend(vhost_bindings(vh));
    }
    list(out, &q)
}

async fn in_vhost(State(s): St, auth: Auth, Path(vhost): Path<String>, Query(q): Q) -> ApiResult {
    let vh = vhost_or_404(&s.broker, &vhost)?;
    auth.check_see_vhost(&s.broker, &vhost)?;
    list(vhost_bindings(&vh), &q)
}

fn filtered(
    s: &AppState,
    auth: &Auth,
    vhost: &str,
    keep: impl Fn(&Value) -> bool,
) -> Result<Vec<Value>, ApiError> {
    let vh = vhost_or_404(&s.broker, vhost)?;
    auth.check_see_vhost(&s.broker, vhost)?;
    Ok(vhost_bindings(&vh).into_iter().filter(keep).collect())
}

fn dest_type(kind: &str) -> Result<&'static str, ApiError> {
    match kind {
        "q" => Ok("queue"),
        "e" => Ok("exchange"),
        _ => Err(ApiError::not_found()),
    }
}

/// Checks that both ends exist (404 otherwise).
fn ends_exist(vh: &VHost, source: &str, dtype: &str, dest: &str) -> Result<(), ApiError> {
    let dest_ok = match dtype {
        "queue" => vh.queue(dest).is_some(),
        _ => vh.exchange(dest).is_some(),
    };
    if vh.exchange(source).is_none() || !dest_ok {
        return Err(ApiError::not_found());
    }
    Ok(())
}

type EndsPath = Path<(String, String, String, String)>;

async fn between(
    State(s): St,
    auth: Auth,
    Path((vhost, source, kind, dest)): EndsPath,
) -> ApiResult {
    let dtype = dest_type(&kind)?;
    let vh = vhost_or_404(&s.broker, &vhost)?;
    // A vhost the user cannot see is refused before anything in it is looked up.
    auth.check_see_vhost(&s.broker, &vhost)?;
    ends_exist(&vh, &source, dtype, &dest)?;
    let items = filtered(&s, &auth, &vhost, |b| {
        b["source"] == source.as_str()
            && b["destination"] == dest.as_str()
            && b["destination_type"] == dtype
    })?;
    ok(Value::Array(items))
}

async fn one(
    State(s): St,
    auth: Auth,
    Path((vhost, source, kind, dest, props)): Path<(String, String, String, String, String)>,
) -> ApiResult {
    let dtype = dest_type(&kind)?;
    let items = filtered(&s, &auth, &vhost, |b| {
        b["source"] == source.as_str()
            && b["destination"] == dest.as_str()
            && b["destination_type"] == dtype
            && b["properties_key"] == props.as_str()
    })?;
    items
        .into_iter()
        .next()
        .map_or_else(|| Err(ApiError::not_found()), ok)
}

fn check_bind_permissions(
    s: &AppState,
    auth: &Auth,
    vhost: &str,
    source: &str,
    dtype: &str,
    dest: &str,
) -> Result<(), ApiError> {
    let b = &s.broker;
    let d = match dtype {
        "queue" => Resource::Queue(dest),
        _ => Resource::Exchange(dest),
    };
    auth.check(b, vhost, Access::Write, d)?;
    auth.check(b, vhost, Access::Read, Resource::Exchange(source))
}

async fn create(
    State(s): St,
    auth: Auth,
    Path((vhost, source, kind, dest)): EndsPath,
    body: RequestBody,
) -> ApiResult {
    let dtype = dest_type(&kind)?;
    let source = super::exchanges::path_name(&source).to_owned();
    let vh = vhost_or_404(&s.broker, &vhost)?;
    // A vhost the user cannot see is refused before anything in it is looked up.
    auth.check_see_vhost(&s.broker, &vhost)?;
    ends_exist(&vh, &source, dtype, &dest)?;
    check_bind_permissions(&s, &auth, &vhost, &source, dtype, &dest)?;
    let m = body.object().await?;
    let rk = str_field(&m, "routing_key", "")?;
    short_string("routing_key", &rk)?;
    let args = object_field(&m, "arguments")?;
    let table = table_field(&m, "arguments")?;
    let d = match dtype {
        "queue" => DestName::Queue(&dest),
        _ => DestName::Exchange(&dest),
    };
    vh.bind(&source, d, &rk, &table, 0)?;
    let location = format!("{}/{}", quote(&dest), quote(&properties_key(&rk, &args)));
    let mut r = StatusCode::CREATED.into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    Ok(r)
}

async fn remove(
    State(s): St,
    auth: Auth,
    Path((vhost, source, kind, dest, props)): Path<(String, String, String, String, String)>,
) -> ApiResult {
    let dtype = dest_type(&kind)?;
    let vh = vhost_or_404(&s.broker, &vhost)?;
    // A vhost the user cannot see is refused before anything in it is looked up.
    auth.check_see_vhost(&s.broker, &vhost)?;
    check_bind_permissions(&s, &auth, &vhost, &source, dtype, &dest)?;
    let found = vhost_bindings(&vh).into_iter().find(|b| {
        b["source"] == source.as_str()
            && b["destination"] == dest.as_str()
            && b["destination_type"] == dtype
            && b["properties_key"] == props.as_str()
    });
    let Some(found) = found else {
        return Err(ApiError::not_found());
    };
    if source.is_empty() {
        return Err(ApiError::unauthorised(
            "operation not permitted on the default exchange",
        ));
    }
    let rk = found["routing_key"].as_str().unwrap_or("");
    let args = found["arguments"].as_object().cloned().unwrap_or_default();
    let d = match dtype {
        "queue" => DestName::Queue(&dest),
        _ => DestName::Exchange(&dest),
    };
    let table = crate::protocol::fields::table_from_json(&args).map_err(ApiError::bad_request)?;
    vh.unbind(&source, d, rk, &table, 0)?;
    no_content()
}

async fn from_exchange(
    State(s): St,
    auth: Auth,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    let vh = vhost_or_404(&s.broker, &vhost)?;
    // A vhost the user cannot see is refused before anything in it is looked up.
    auth.check_see_vhost(&s.broker, &vhost)?;
    vh.exchange(&name).ok_or_else(ApiError::not_found)?;
    ok(Value::Array(filtered(&s, &auth, &vhost, |b| {
        b["source"] == name.as_str()
    })?))
}

async fn to_exchange(
    State(s): St,
    auth: Auth,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    let vh = vhost_or_404(&s.broker, &vhost)?;
    // A vhost the user cannot see is refused before anything in it is looked up.
    auth.check_see_vhost(&s.broker, &vhost)?;
    vh.exchange(&name).ok_or_else(ApiError::not_found)?;
    ok(Value::Array(filtered(&s, &auth, &vhost, |b| {
        b["destination"] == name.as_str() && b["destination_type"] == "exchange"
    })?))
}

async fn to_queue(
    State(s): St,
    auth: Auth,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    let vh = vhost_or_404(&s.broker, &vhost)?;
    // A vhost the user cannot see is refused before anything in it is looked up.
    auth.check_see_vhost(&s.broker, &vhost)?;
    vh.queue(&name).ok_or_else(ApiError::not_found)?;
    ok(Value::Array(filtered(&s, &auth, &vhost, |b| {
        b["destination"] == name.as_str() && b["destination_type"] == "queue"
    })?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_keys_look_like_rabbitmqs() {
        assert_eq!(properties_key("a.#", &Map::new()), "a.%23");
        assert_eq!(properties_key("", &Map::new()), "~");
        let mut args = Map::new();
        args.insert("x-match".into(), "all".into());
        let k = properties_key("k", &args);
        assert!(k.starts_with("k~") && k.len() > 3, "{k}");
    }
}
