//! Cluster membership over HTTP (warren's own paths; RabbitMQ does these
//! with rabbitmqctl): `POST /api/cluster/join` makes a fresh node join the
//! cluster of the node named in the body, `DELETE /api/cluster/nodes/{node}`
//! removes a node (RabbitMQ's forget_cluster_node; this node itself for
//! `warrenctl cluster leave`).

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
