//! `/api/vhosts`, `/api/users`, `/api/permissions` and `/api/policies`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use serde_json::{Map, Value, json};

use super::rates::{self, ALL_FIELDS};
use super::{
    ApiError, ApiResult, AppState, Auth, Q, RequestBody, St, created_or_updated, list, no_content,
    ok, short_string, vhost_or_404,
};
use crate::auth::{HASHING_ALGORITHM, Permissions, User, hash_password};
use crate::schema::Tags;
use crate::vhost::Policy;

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/vhosts", get(vhosts))
        .route(
            "/api/vhosts/{vhost}",
            get(vhost).put(put_vhost).delete(delete_vhost),
        )
        .route("/api/vhosts/{vhost}/permissions", get(vhost_permissions))
        .route("/api/users", get(users))
        .route(
            "/api/users/{user}",
            get(user).put(put_user).delete(delete_user),
        )
        .route("/api/users/{user}/permissions", get(user_permissions))
        .route("/api/permissions", get(permissions))
        .route(
            "/api/permissions/{vhost}/{user}",
            get(permission)
                .put(put_permission)
                .delete(delete_permission),
        )
        .route("/api/policies", get(policies))
        .route("/api/policies/{vhost}", get(vhost_policies))
        .route(
            "/api/policies/{vhost}/{name}",
            get(policy).put(put_policy).delete(delete_policy),
        )
}

fn vhost_json(s: &AppState, vh: &crate::vhost::VHost) -> Value {
    let r = s.rates.vhost(&vh.name);
    let mut depth = [0u64; 3];
    for q in vh.queues() {
        let d = rates::queue_depth(&q);
        rates::add_depth(&mut depth, d);
    }
    let mut m = Map::new();
    m.insert("name".into(), vh.name.to_string().into());
    m.insert("description".into(), "".into());
    m.insert("tags".into(), json!([]));
    m.insert("metadata".into(), json!({"description": "", "tags": []}));
    m.insert("default_queue_type".into(), "classic".into());
    m.insert("tracing".into(), false.into());
    m.insert("cluster_state".into(), json!({ s.node.clone(): "running" }));
    m.insert(
        "message_stats".into(),
        rates::message_stats(&vh.queue_totals(), &r, ALL_FIELDS),
    );
    rates::put_depth(&mut m, depth, &r);
    Value::Object(m)
}

async fn vhosts(State(s): St, auth: Auth, Query(q): Q) -> ApiResult {
    let b = &s.broker;
    let mut items: Vec<Value> = b
        .vhosts()
        .iter()
        .filter(|v| auth.can_see_vhost(b, &v.name))
        .map(|v| vhost_json(&s, v))
        .collect();
    super::sort_by_vhost_name(&mut items);
    list(items, &q)
}

async fn vhost(State(s): St, auth: Auth, Path(name): Path<String>) -> ApiResult {
    let vh = vhost_or_404(&s.broker, &name)?;
    auth.check_see_vhost(&s.broker, &name)?;
    ok(vhost_json(&s, &vh))
}

async fn put_vhost(
    State(s): St,
    auth: Auth,
    Path(name): Path<String>,
    body: RequestBody,
) -> ApiResult {
    auth.require_admin()?;
    if name.is_empty() {
        return Err(ApiError::bad_request("vhost name must not be empty"));
    }
    // connection.open names the vhost in a short string: a longer name
    // could never be used.
    short_string("vhost", &name)?;
    body.object().await?;
    let created = s.broker.add_vhost(&name);
    if created {
        // As RabbitMQ: whoever creates a vhost may use it at once.
        s.broker
            .set_permissions(&auth.user.name, &name, Permissions::all());
    }
    created_or_updated(created)
}

async fn delete_vhost(State(s): St, auth: Auth, Path(name): Path<String>) -> ApiResult {
    auth.require_admin()?;
    if !s.broker.delete_vhost(&name) {
        return Err(ApiError::not_found());
    }
    no_content()
}

fn permission_json(user: &str, vhost: &str, p: &Permissions) -> Value {
    json!({"user": user, "vhost": vhost, "configure": p.configure, "write": p.write, "read": p.read})
}

fn sorted_permissions(s: &AppState, keep: impl Fn(&str, &str) -> bool) -> Vec<Value> {
    let mut all = s.broker.all_permissions();
    all.retain(|(u, v, _)| keep(u, v));
    all.sort_by(|a, b| (&a.1, &a.0).cmp(&(&b.1, &b.0)));
    all.iter()
        .map(|(u, v, p)| permission_json(u, v, p))
        .collect()
}

async fn vhost_permissions(State(s): St, auth: Auth, Path(vhost): Path<String>) -> ApiResult {
    auth.require_admin()?;
    vhost_or_404(&s.broker, &vhost)?;
    ok(Value::Array(sorted_permissions(&s, |_, v| v == vhost)))
}

fn user_json(u: &User) -> Value {
    json!({
        "name": u.name,
        "password_hash": u.password_hash,
        "hashing_algorithm": HASHING_ALGORITHM,
        "tags": u.tags,
        "limits": {},
    })
}

async fn users(State(s): St, auth: Auth, Query(q): Q) -> ApiResult {
    auth.require_admin()?;
    let mut us = s.broker.users();
    us.sort_by(|a, b| a.name.cmp(&b.name));
    list(us.iter().map(user_json).collect(), &q)
}

async fn user(State(s): St, auth: Auth, Path(name): Path<String>) -> ApiResult {
    auth.require_admin()?;
    let u = s.broker.user(&name).ok_or_else(ApiError::not_found)?;
    ok(user_json(&u))
}

async fn put_user(
    State(s): St,
    auth: Auth,
    Path(name): Path<String>,
    body: RequestBody,
) -> ApiResult {
    auth.require_admin()?;
    if name.is_empty() {
        return Err(ApiError::bad_request("user name must not be empty"));
    }
    let m = body.object().await?;
    let existing = s.broker.user(&name);
    // As RabbitMQ: tags are required, so a PUT meant to change a password
    // cannot silently strip a user's tags.
    let tags = match m.get("tags") {
        None => return Err(ApiError::bad_request("tags_not_present")),
        Some(Value::Null) => Vec::new(),
        Some(v) => serde_json::from_value::<Tags>(v.clone())
            .map_err(|_| ApiError::bad_request("tags must be a string or a list of strings"))?
            .to_vec(),
    };
    if let Some(a) = m.get("hashing_algorithm").and_then(Value::as_str)
        && a != HASHING_ALGORITHM
    {
        return Err(ApiError::bad_request(format!(
            "unsupported hashing algorithm '{a}' (only {HASHING_ALGORITHM})"
        )));
    }
    let password_hash = match (m.get("password"), m.get("password_hash")) {
        (Some(Value::String(p)), _) => hash_password(p),
        (_, Some(Value::String(h))) => {
            if !h.is_empty() {
                use base64::Engine;
                let ok = base64::engine::general_purpose::STANDARD
                    .decode(h)
                    .is_ok_and(|raw| raw.len() == 36);
                if !ok {
                    return Err(ApiError::bad_request(
                        "password_hash must be a base64 rabbit_password_hashing_sha256 hash",
                    ));
                }
            }
            h.clone()
        }
        // Neither: keep the current password (or none for a new user).
        _ => existing
            .as_ref()
            .map(|u| u.password_hash.clone())
            .unwrap_or_default(),
    };
    s.broker.put_user(User {
        name,
        password_hash,
        tags,
    });
    created_or_updated(existing.is_none())
}

async fn delete_user(State(s): St, auth: Auth, Path(name): Path<String>) -> ApiResult {
    auth.require_admin()?;
    if !s.broker.delete_user(&name) {
        return Err(ApiError::not_found());
    }
    no_content()
}

async fn user_permissions(State(s): St, auth: Auth, Path(name): Path<String>) -> ApiResult {
    auth.require_admin()?;
    s.broker.user(&name).ok_or_else(ApiError::not_found)?;
    ok(Value::Array(sorted_permissions(&s, |u, _| u == name)))
}

async fn permissions(State(s): St, auth: Auth, Query(q): Q) -> ApiResult {
    auth.require_admin()?;
    list(sorted_permissions(&s, |_, _| true), &q)
}

async fn permission(
    State(s): St,
    auth: Auth,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult {
    auth.require_admin()?;
    let p = s
        .broker
        .permissions(&user, &vhost)
        .ok_or_else(ApiError::not_found)?;
    ok(permission_json(&user, &vhost, &p))
}

async fn put_permission(
    State(s): St,
    auth: Auth,
    Path((vhost, user)): Path<(String, String)>,
    body: RequestBody,
) -> ApiResult {
    auth.require_admin()?;
    if s.broker.vhost(&vhost).is_none() {
        return Err(ApiError::bad_request(format!("no vhost '{vhost}'")));
    }
    if s.broker.user(&user).is_none() {
        return Err(ApiError::bad_request(format!("no user '{user}'")));
    }
    let m = body.object().await?;
    let field = |k: &str| -> Result<String, ApiError> {
        match m.get(k) {
            Some(Value::String(s)) => Ok(s.clone()),
            _ => Err(ApiError::bad_request(format!(
                "{k} is required (a regular expression)"
            ))),
        }
    };
    let p = Permissions::new(&field("configure")?, &field("write")?, &field("read")?)
        .map_err(ApiError::bad_request)?;
    let existed = s.broker.permissions(&user, &vhost).is_some();
    s.broker.set_permissions(&user, &vhost, p);
    created_or_updated(!existed)
}

async fn delete_permission(
    State(s): St,
    auth: Auth,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult {
    auth.require_admin()?;
    if !s.broker.clear_permissions(&user, &vhost) {
        return Err(ApiError::not_found());
    }
    no_content()
}

/// A policy as RabbitMQ writes it.
pub fn policy_json(vhost: &str, p: &Policy) -> Value {
    json!({
        "vhost": vhost,
        "name": p.name,
        "pattern": p.pattern,
        "apply-to": p.apply_to,
        "definition": p.definition,
        "priority": p.priority,
    })
}

fn policies_of(s: &AppState, auth: &Auth, only: Option<&str>) -> Vec<Value> {
    let b = &s.broker;
    let mut vhs = b.vhosts();
    vhs.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = Vec::new();
    for vh in vhs {
        if only.is_some_and(|o| o != &*vh.name) || !auth.can_see_vhost(b, &vh.name) {
            continue;
        }
        for p in vh.policies() {
            out.push(policy_json(&vh.name, &p));
        }
    }
    out
}

async fn policies(State(s): St, auth: Auth, Query(q): Q) -> ApiResult {
    list(policies_of(&s, &auth, None), &q)
}

async fn vhost_policies(
    State(s): St,
    auth: Auth,
    Path(vhost): Path<String>,
    Query(q): Q,
) -> ApiResult {
    vhost_or_404(&s.broker, &vhost)?;
    auth.check_see_vhost(&s.broker, &vhost)?;
    list(policies_of(&s, &auth, Some(&vhost)), &q)
}

async fn policy(
    State(s): St,
    auth: Auth,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    // As RabbitMQ: listings show policies to every management user, a
    // single policy only to policymakers and administrators.
    if !auth.is_admin() && !auth.user.has_tag("policymaker") {
        return Err(ApiError::unauthorised(
            "User not authorised to access object",
        ));
    }
    let vh = vhost_or_404(&s.broker, &vhost)?;
    auth.check_see_vhost(&s.broker, &vhost)?;
    let p = vh
        .policies()
        .into_iter()
        .find(|p| p.name == name)
        .ok_or_else(ApiError::not_found)?;
    ok(policy_json(&vhost, &p))
}

async fn put_policy(
    State(s): St,
    auth: Auth,
    Path((vhost, name)): Path<(String, String)>,
    body: RequestBody,
) -> ApiResult {
    auth.require_policymaker()?;
    let vh = vhost_or_404(&s.broker, &vhost)?;
    auth.vhost_permissions(&s.broker, &vhost)?;
    let m = body.object().await?;
    let pattern = match m.get("pattern") {
        Some(Value::String(p)) => p.clone(),
        _ => return Err(ApiError::bad_request("pattern is required")),
    };
    let definition = match m.get("definition") {
        Some(Value::Object(d)) => d.clone(),
        _ => return Err(ApiError::bad_request("definition is required (an object)")),
    };
    let priority = match m.get("priority") {
        None | Some(Value::Null) => 0,
        Some(v) => v
            .as_i64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .ok_or_else(|| ApiError::bad_request("priority must be an integer"))?,
    };
    let apply_to = super::str_field(&m, "apply-to", "all")?;
    let existed = vh.policies().iter().any(|p| p.name == name);
    vh.put_policy(Policy {
        name,
        pattern,
        apply_to,
        definition,
        priority,
    })
    .map_err(ApiError::bad_request)?;
    created_or_updated(!existed)
}

async fn delete_policy(
    State(s): St,
    auth: Auth,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    auth.require_policymaker()?;
    let vh = vhost_or_404(&s.broker, &vhost)?;
    auth.vhost_permissions(&s.broker, &vhost)?;
    if !vh.delete_policy(&name) {
        return Err(ApiError::not_found());
    }
    no_content()
}
