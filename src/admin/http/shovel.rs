//! Moving messages from one queue to another, as RabbitMQ's UI does it:
//! `PUT /api/parameters/shovel/{vhost}/{name}` with a dynamic shovel whose
//! `src-delete-after` is `"queue-length"` (RabbitMQ's "Move messages"
//! button declares exactly that). warren has no shovel plugin; it accepts
//! this one form, a one-off move between two queues of this broker
//! (`src-uri`/`dest-uri` of `amqp://` with no host), does it at once and
//! answers 201 when done, so no parameter remains to list or delete.
//!
//! The messages ready in the source when the request arrives are moved in
//! their order; each is enqueued in the destination (and its store) before
//! it is acknowledged in the source, so a crash mid-way can duplicate but
//! never lose a message, like a shovel with `ack-mode: on-confirm`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::put;
use serde_json::{Map, Value};

use super::{ApiError, ApiResult, AppState, Auth, RequestBody, St, created, vhost_or_404};
use crate::auth::{Access, Resource};

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/api/parameters/shovel/{vhost}/{name}", put(declare))
}

/// Messages moved per batch.
const BATCH: usize = 1000;

/// The vhost an `amqp://` URI of this broker names: `amqp://` is the
/// default vhost, `amqp:///x` vhost `x` (percent-decoded); a URI with a
/// host (another broker) is refused.
fn local_vhost(uri: &str, default: &str) -> Result<String, ApiError> {
    let rest = uri
        .strip_prefix("amqp://")
        .ok_or_else(|| ApiError::bad_request(format!("unsupported shovel URI '{uri}'")))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    if !host.is_empty() {
        return Err(ApiError::bad_request(format!(
            "warren moves messages only between queues of this broker (a URI with no host, \
             like amqp:///%2F), not to or from '{uri}'"
        )));
    }
    if path.is_empty() {
        return Ok(default.to_owned());
    }
    Ok(percent_encoding::percent_decode_str(path)
        .decode_utf8_lossy()
        .into_owned())
}

fn field<'a>(m: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    m.get(k).and_then(Value::as_str).filter(|s| !s.is_empty())
}

async fn declare(
    State(s): St,
    auth: Auth,
    Path((vhost, _name)): Path<(String, String)>,
    body: RequestBody,
) -> ApiResult {
    let b = &s.broker;
    let vh = vhost_or_404(b, &vhost)?;
    // Parameters are for policymakers and administrators, as in RabbitMQ.
    auth.require_policymaker()?;
    let m = body.object().await?;
    let v = super::object_field(&m, "value")?;
    let default_vhost = "/";
    for (k, want) in [("src-protocol", "amqp091"), ("dest-protocol", "amqp091")] {
        if let Some(p) = field(&v, k).filter(|p| *p != want) {
            return Err(ApiError::bad_request(format!(
                "{k} '{p}' is not supported; only amqp091"
            )));
        }
    }
    for k in ["src-uri", "dest-uri"] {
        let uri = field(&v, k).unwrap_or("amqp://");
        if local_vhost(uri, default_vhost)? != vhost {
            return Err(ApiError::bad_request(format!(
                "{k} must name this vhost ('{vhost}'): warren moves messages within a vhost"
            )));
        }
    }
    if v.get("src-delete-after").and_then(Value::as_str) != Some("queue-length") {
        return Err(ApiError::bad_request(
            "warren supports one form of shovel: a one-off move with src-delete-after \
             \"queue-length\" (RabbitMQ's \"Move messages\"); it has no shovel plugin",
        ));
    }
    let (Some(src), Some(dest)) = (field(&v, "src-queue"), field(&v, "dest-queue")) else {
        return Err(ApiError::bad_request(
            "src-queue and dest-queue are required",
        ));
    };
    if src == dest {
        return Err(ApiError::bad_request(
            "src-queue and dest-queue must differ",
        ));
    }
    // What a shovel connecting as this user would need: read the source,
    // write to the destination through the default exchange.
    auth.check(b, &vhost, Access::Read, Resource::Queue(src))?;
    auth.check(b, &vhost, Access::Write, Resource::Exchange(""))?;
    let missing = |q: &str| ApiError::bad_request(format!("no queue '{q}' in vhost '{vhost}'"));
    let from = vh.queue(src).ok_or_else(|| missing(src))?;
    let to = vh.queue(dest).ok_or_else(|| missing(dest))?;
    for q in [&from, &to] {
        if q.config.exclusive_owner.is_some() {
            return Err(ApiError::bad_request(format!(
                "queue '{}' is exclusive to a connection",
                q.name
            )));
        }
        if q.is_remote() || q.is_linked() || q.stream().is_some() {
            return Err(ApiError::new(
                axum::http::StatusCode::NOT_IMPLEMENTED,
                "not_implemented",
                format!(
                    "queue '{}' is a stream or lives on (or is replicated across) the cluster; \
                     moving messages supports classic and single-node quorum queues",
                    q.name
                ),
            ));
        }
    }
    let store = b.durability.store();
    let mut left = from.message_count() as usize;
    while left > 0 {
        let taken = from
            .take_loaded(left.min(BATCH), std::time::Duration::from_secs(5))
            .await;
        if taken.is_empty() {
            break;
        }
        left -= taken.len().min(left);
        let mut acked = Vec::with_capacity(taken.len());
        for r in &taken {
            // Counted as a delivery acked by the shovel's consumer.
            from.stats.delivered(false, false, r.redelivered);
            from.stats.settled();
            from.stats
                .ack
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let ttl = r.msg.expiration().and_then(Result::ok);
            crate::queue::enqueue_routed(std::slice::from_ref(&to), &r.msg, store, ttl);
            acked.extend(r.stored);
        }
        from.store_ack(&acked);
        // A long queue moves in batches without holding the runtime's
        // thread from AMQP connections.
        tokio::task::yield_now().await;
    }
    created()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_uris_of_this_broker_are_local() {
        assert_eq!(local_vhost("amqp://", "/").unwrap(), "/");
        assert_eq!(local_vhost("amqp:///%2F", "x").unwrap(), "/");
        assert_eq!(local_vhost("amqp:///shop", "/").unwrap(), "shop");
        assert!(local_vhost("amqp://other-host/%2F", "/").is_err());
        assert!(local_vhost("amqps:///%2F", "/").is_err());
    }
}
