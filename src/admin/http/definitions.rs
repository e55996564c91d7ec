//! `/api/definitions` and `/api/definitions/{vhost}`: export (GET) and
//! import (POST) in RabbitMQ's definitions format, through
//! `crate::broker::definitions`. A vhost's definitions leave out users, vhosts and
//! permissions and the items' `vhost` fields, as RabbitMQ's do.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::routing::get;
use serde_json::Value;

use super::{
    ApiError, ApiResult, AppState, Auth, Q, RABBITMQ_COMPAT_VERSION, RequestBody, St, no_content,
    vhost_or_404,
};
use crate::broker::definitions;

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/definitions", get(export).post(import))
        .route(
            "/api/definitions/{vhost}",
            get(export_vhost).post(import_vhost),
        )
}

/// Lists of a definitions document that belong to a vhost.
const VHOST_LISTS: &[&str] = &["policies", "queues", "exchanges", "bindings"];

fn exported(s: &AppState) -> Value {
    let mut v = serde_json::to_value(definitions::export(&s.broker)).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        m.insert("rabbitmq_version".into(), RABBITMQ_COMPAT_VERSION.into());
        m.insert("product_name".into(), "warren".into());
        m.insert("product_version".into(), env!("CARGO_PKG_VERSION").into());
    }
    v
}

fn respond(v: Value, q: &std::collections::HashMap<String, String>) -> ApiResult {
    let mut r = super::json_response(axum::http::StatusCode::OK, &v);
    if let Some(file) = q.get("download").filter(|f| !f.is_empty()) {
        let safe: String = file
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || "._-".contains(*c))
            .collect();
        if let Ok(h) = HeaderValue::from_str(&format!("attachment; filename=\"{safe}\"")) {
            r.headers_mut().insert(header::CONTENT_DISPOSITION, h);
        }
    }
    Ok(r)
}

async fn export(State(s): St, auth: Auth, Query(q): Q) -> ApiResult {
    auth.require_admin()?;
    respond(exported(&s), &q)
}

async fn export_vhost(
    State(s): St,
    auth: Auth,
    Path(vhost): Path<String>,
    Query(q): Q,
) -> ApiResult {
    auth.require_admin()?;
    vhost_or_404(&s.broker, &vhost)?;
    let mut all = exported(&s);
    let Some(m) = all.as_object_mut() else {
        return Err(ApiError::bad_request("export failed"));
    };
    for k in [
        "users",
        "vhosts",
        "permissions",
        "topic_permissions",
        "global_parameters",
    ] {
        m.remove(k);
    }
    m.insert("parameters".into(), Value::Array(Vec::new()));
    for k in VHOST_LISTS {
        if let Some(Value::Array(items)) = m.get_mut(*k) {
            items.retain(|i| i["vhost"] == vhost.as_str());
            for i in items.iter_mut() {
                if let Some(o) = i.as_object_mut() {
                    o.remove("vhost");
                }
            }
        }
    }
    respond(all, &q)
}

/// Imports a document on a blocking thread: a large import must not hold
/// up the runtime that serves AMQP connections.
async fn apply(s: Arc<AppState>, doc: serde_json::Map<String, Value>) -> ApiResult {
    // The import's changes still count as this request's (see
    // `durable_before_reply`).
    let own = crate::store::meta::REQUEST_CHANGES
        .try_with(Arc::clone)
        .ok();
    let problems = tokio::task::spawn_blocking(move || {
        let defs: crate::schema::Definitions = serde_json::from_value(Value::Object(doc))
            .map_err(|e| ApiError::bad_request(format!("invalid definitions: {e}")))?;
        let import = || definitions::import(&s.broker, &defs);
        Ok::<_, ApiError>(match own {
            Some(own) => crate::store::meta::REQUEST_CHANGES.sync_scope(own, import),
            None => import(),
        })
    })
    .await
    .map_err(|_| ApiError::bad_request("definitions import failed"))??;
    if problems.is_empty() {
        no_content()
    } else {
        Err(ApiError::bad_request(problems.join("; ")))
    }
}

async fn import(State(s): St, auth: Auth, body: RequestBody) -> ApiResult {
    auth.require_admin()?;
    apply(s, body.object().await?).await
}

async fn import_vhost(
    State(s): St,
    auth: Auth,
    Path(vhost): Path<String>,
    body: RequestBody,
) -> ApiResult {
    auth.require_admin()?;
    vhost_or_404(&s.broker, &vhost)?;
    let mut m = body.object().await?;
    // Only the vhost's own kinds of definitions, all placed in this vhost.
    m.retain(|k, _| VHOST_LISTS.contains(&k.as_str()));
    for k in VHOST_LISTS {
        if let Some(Value::Array(items)) = m.get_mut(*k) {
            for i in items.iter_mut() {
                if let Some(o) = i.as_object_mut() {
                    o.insert("vhost".into(), vhost.clone().into());
                }
            }
        }
    }
    apply(s, m).await
}
