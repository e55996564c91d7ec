//! Cluster membership over HTTP (warren's own paths; RabbitMQ does these
//! with rabbitmqctl): `POST /api/cluster/join` makes a fresh node join the
//! cluster of the node named in the body, `DELETE /api/cluster/nodes/{node}`
//! removes a node (RabbitMQ's forget_cluster_node; this node itself for
//! `warrenctl cluster leave`).
//!
//! Quorum queue replicas, at RabbitMQ's paths:
//! `POST /api/queues/quorum/{vhost}/{name}/replicas/add` and
//! `DELETE .../replicas/delete` (body `{"node": NODE}`),
//! `POST /api/queues/quorum/replicas/on/{node}/grow` (body `strategy`
//! all|even, `vhost_pattern`, `queue_pattern`) and
//! `DELETE /api/queues/quorum/replicas/on/{node}/shrink`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, post};

use super::{ApiError, ApiResult, AppState, Auth, RequestBody, St, no_content, str_field};
use crate::broker::cluster::Clustered;

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/cluster/join", post(join))
        .route("/api/cluster/nodes/{node}", delete(forget))
        .route(
            "/api/queues/quorum/{vhost}/{name}/replicas/add",
            post(add_replica),
        )
        .route(
            "/api/queues/quorum/{vhost}/{name}/replicas/delete",
            delete(delete_replica),
        )
        .route("/api/queues/quorum/replicas/on/{node}/grow", post(grow))
        .route(
            "/api/queues/quorum/replicas/on/{node}/shrink",
            delete(shrink),
        )
}

/// The node a body's `node` names (`warren-ID@HOST` or the id).
async fn body_node(c: &Clustered, body: RequestBody) -> Result<u64, ApiError> {
    let m = body.object().await?;
    let node = str_field(&m, "node", "")?;
    c.node_id_of(&node)
        .ok_or_else(|| ApiError::bad_request(format!("node '{node}' is not a node of the cluster")))
}

/// The quorum queue at `vhost`/`name` must exist and be replicated.
fn check_quorum(s: &AppState, vhost: &str, name: &str) -> Result<(), ApiError> {
    let vh = super::vhost_or_404(&s.broker, vhost)?;
    match vh.queue(name) {
        None => Err(ApiError::not_found()),
        Some(q) if !q.is_quorum() => Err(ApiError::bad_request(format!(
            "queue '{name}' in vhost '{vhost}' is not a quorum queue"
        ))),
        Some(_) => Ok(()),
    }
}

async fn add_replica(
    State(s): St,
    auth: Auth,
    Path((vhost, name)): Path<(String, String)>,
    body: RequestBody,
) -> ApiResult {
    auth.require_admin()?;
    let c = clustered(&s)?;
    check_quorum(&s, &vhost, &name)?;
    let node = body_node(c, body).await?;
    s.broker
        .quorum_add_member(&vhost, &name, node)
        .await
        .map_err(unavailable)?;
    no_content()
}

async fn delete_replica(
    State(s): St,
    auth: Auth,
    Path((vhost, name)): Path<(String, String)>,
    body: RequestBody,
) -> ApiResult {
    auth.require_admin()?;
    let c = clustered(&s)?;
    check_quorum(&s, &vhost, &name)?;
    let node = body_node(c, body).await?;
    s.broker
        .quorum_delete_member(&vhost, &name, node)
        .await
        .map_err(unavailable)?;
    accepted()
}

fn accepted() -> ApiResult {
    Ok(axum::response::IntoResponse::into_response(
        StatusCode::ACCEPTED,
    ))
}

/// Adds `node` to every quorum queue whose vhost and name match the
/// patterns (regular expressions; `.*` when absent); strategy `all`, or
/// `even`: only queues with an even number of members.
async fn grow(State(s): St, auth: Auth, Path(node): Path<String>, body: RequestBody) -> ApiResult {
    auth.require_admin()?;
    let c = clustered(&s)?;
    let id = c.node_id_of(&node).ok_or_else(ApiError::not_found)?;
    let m = body.object().await?;
    let strategy = str_field(&m, "strategy", "all")?;
    if strategy != "all" && strategy != "even" {
        return Err(ApiError::bad_request(format!(
            "strategy '{strategy}': it is all or even"
        )));
    }
    let pattern = |k: &str| -> Result<regex::Regex, ApiError> {
        let p = str_field(&m, k, ".*")?;
        regex::Regex::new(&p).map_err(|e| ApiError::bad_request(format!("{k}: {e}")))
    };
    let (vhosts, queues) = (pattern("vhost_pattern")?, pattern("queue_pattern")?);
    for (v, n, members) in s.broker.quorum_queues() {
        if members.contains(&id)
            || !vhosts.is_match(&v)
            || !queues.is_match(&n)
            || (strategy == "even" && members.len() % 2 != 0)
        {
            continue;
        }
        s.broker
            .quorum_add_member(&v, &n, id)
            .await
            .map_err(|e| unavailable(format!("queue '{n}' in vhost '{v}': {e}")))?;
    }
    no_content()
}

/// Removes `node` from every quorum queue that has other members.
async fn shrink(State(s): St, auth: Auth, Path(node): Path<String>) -> ApiResult {
    auth.require_admin()?;
    let c = clustered(&s)?;
    let id = c.node_id_of(&node).ok_or_else(ApiError::not_found)?;
    for (v, n, members) in s.broker.quorum_queues() {
        if members.contains(&id) && members.len() > 1 {
            s.broker
                .quorum_delete_member(&v, &n, id)
                .await
                .map_err(|e| unavailable(format!("queue '{n}' in vhost '{v}': {e}")))?;
        }
    }
    accepted()
}

fn clustered(s: &AppState) -> Result<&Clustered, ApiError> {
    s.broker.cluster().ok_or_else(|| {
        ApiError::bad_request("this node runs alone: set [cluster] node_id and nodes in its config")
    })
}

fn unavailable(reason: String) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "cluster_unavailable",
        reason,
    )
}

/// `{"node": "ID@HOST:PORT"}`: a node of the cluster to join, and where
/// its inter-node listener is.
async fn join(State(s): St, auth: Auth, body: RequestBody) -> ApiResult {
    auth.require_admin()?;
    let c = clustered(&s)?;
    let m = body.object().await?;
    let node = str_field(&m, "node", "")?;
    let (id, addr) = node
        .split_once('@')
        .and_then(|(id, addr)| Some((id.parse::<u64>().ok()?, addr)))
        .filter(|(id, addr)| *id != 0 && addr.contains(':'))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "node '{node}' is not ID@HOST:PORT (a node id and its inter-node address)"
            ))
        })?;
    if c.is_member() || !c.voters().is_empty() {
        return Err(ApiError::bad_request(
            "this node is already a member of a cluster; to join another, stop it and empty its data directory first",
        ));
    }
    c.join_via(id, addr).await.map_err(unavailable)?;
    no_content()
}

async fn forget(State(s): St, auth: Auth, Path(node): Path<String>) -> ApiResult {
    auth.require_admin()?;
    let c = clustered(&s)?;
    let id = c.node_id_of(&node).ok_or_else(ApiError::not_found)?;
    s.broker.forget_node(id).await.map_err(unavailable)?;
    no_content()
}
