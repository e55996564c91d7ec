//! The management HTTP API: RabbitMQ's management plugin paths and JSON
//! shapes (`/api/overview`, `/api/queues`, `/api/definitions`, ...), so the
//! tools and scripts written for RabbitMQ work against warren, plus
//! Prometheus metrics at `/metrics`.
//!
//! It runs on the broker's tokio runtime (axum). Every `/api` request needs
//! HTTP basic auth by a user tagged `administrator`, `monitoring`,
//! `management` or `policymaker`, with RabbitMQ's rules: administrators do
//! everything; monitoring users read everything; management users see and
//! change only the vhosts they have permissions in, and only their own
//! connections. Changes to exchanges, queues and bindings also pass the same
//! configure/write/read permission checks as over AMQP. Errors are JSON
//! `{"error": ..., "reason": ...}` with RabbitMQ's statuses.
//!
//! One file per resource area: `overview` (overview, whoami, nodes, health
//! checks), `vhosts_users` (vhosts, users, permissions, policies),
//! `exchanges`, `queues`, `bindings`, `connections` (connections, channels,
//! consumers), `definitions`, `metrics`; `rates` samples counters into
//! message rates; `shovel` moves messages between queues (RabbitMQ's
//! one-off shovel); `ui` serves the web UI (at `/`), a client of this API.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use amq_protocol::types::FieldTable;
use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Map, Value, json};

use crate::auth::{Access, Permissions, Resource, User};
use crate::broker::Broker;
use crate::protocol::error::{AmqpError, code};

mod bindings;
mod body;
mod cluster;
mod connections;
mod definitions;
mod exchanges;
mod metrics;
mod overview;
mod queues;
pub mod rates;
mod serve;
mod shovel;
mod store_age;
pub mod system;
pub mod ui;
mod vhosts_users;

pub use body::RequestBody;

pub use crate::protocol::RABBITMQ_COMPAT_VERSION;

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    /// The broker.
    pub broker: Arc<Broker>,
    /// Message rates, sampled in the background.
    pub rates: rates::Rates,
    /// This node's name (`warren@host`).
    pub node: String,
}

/// The shared state as handlers take it.
pub type St = axum::extract::State<Arc<AppState>>;

/// A handler's result.
pub type ApiResult = Result<Response, ApiError>;

impl AppState {
    /// State for a broker.
    pub fn new(broker: Arc<Broker>) -> Arc<AppState> {
        Arc::new(AppState {
            rates: rates::Rates::default(),
            node: match broker.cluster() {
                Some(c) => c.name(),
                None => format!("warren@{}", system::hostname()),
            },
            broker,
        })
    }
}

/// Serves the HTTP API on every listener until the task is dropped, within
/// the connection limits of `[http]` (see `serve`).
pub async fn serve(broker: Arc<Broker>, listeners: Vec<tokio::net::TcpListener>) {
    let limits = broker.config.http.clone();
    let state = AppState::new(broker);
    tokio::spawn(rates::run(state.clone()));
    serve::run(router(state), listeners, limits).await;
}

/// The whole API.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .merge(ui::routes())
        .merge(overview::routes())
        .merge(vhosts_users::routes())
        .merge(exchanges::routes())
        .merge(queues::routes())
        .merge(bindings::routes())
        .merge(connections::routes())
        .merge(definitions::routes())
        .merge(shovel::routes())
        .merge(metrics::routes())
        .merge(cluster::routes())
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method Not Allowed",
                "Method Not Allowed",
            )
        })
        .layer(axum::middleware::from_fn(same_origin))
        .layer(axum::middleware::from_fn(ui::no_browser_login_prompt))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            durable_before_reply,
        ))
        .layer(DefaultBodyLimit::max(
            state.broker.config.http.max_body_size,
        ))
        .with_state(state)
}

/// A request that changed definitions is answered once the change is on
/// disk (the definitions log group-commits; see store/meta.rs). If a change
/// made while the request ran could not be written, it has been undone and
/// the answer is 500 internal_error instead.
async fn durable_before_reply(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let changes = !matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    );
    if changes && let Some(c) = state.broker.cluster() {
        // In a cluster the change is made here and replicated after: the
        // answer waits until the cluster has committed it.
        let resp = next.run(req).await;
        if !c.replicated(std::time::Duration::from_secs(10)).await {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "cluster_unavailable",
                "the change is made on this node but a majority of the cluster's nodes did not \
                 commit it within 10 s; it is replicated once they are reachable",
            )
            .into_response();
        }
        return resp;
    }
    let meta = state.broker.durability.meta.get().filter(|_| changes);
    let Some(m) = meta else {
        return next.run(req).await;
    };
    // The changes this request's own task appends (not other clients').
    let own = Arc::new(parking_lot::Mutex::new((0u64, 0u64)));
    let resp = crate::store::meta::REQUEST_CHANGES
        .scope(own.clone(), next.run(req))
        .await;
    // Whatever was appended while the request ran is settled before the
    // answer; only the request's own changes can make it a 500.
    m.wait_settled(m.appended_seq()).await;
    let (first, last) = *own.lock();
    if last > 0
        && let Some(e) = m.failure(first, last)
    {
        return ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            crate::store::meta::refusal(&e),
        )
        .into_response();
    }
    resp
}

/// An error in RabbitMQ's JSON shape.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: String,
    reason: String,
}

impl ApiError {
    /// Any error.
    pub fn new(status: StatusCode, error: &str, reason: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error: error.to_owned(),
            reason: reason.into(),
        }
    }

    /// 404, worded as RabbitMQ does.
    pub fn not_found() -> ApiError {
        Self::new(StatusCode::NOT_FOUND, "Object Not Found", "Not Found")
    }

    /// 400 bad_request.
    pub fn bad_request(reason: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", reason)
    }

    /// 401 not_authorised (RabbitMQ answers every refusal with 401).
    pub fn unauthorised(reason: impl Into<String>) -> ApiError {
        Self::new(StatusCode::UNAUTHORIZED, "not_authorised", reason)
    }

    /// 400 with the AMQP error's code and text ("406 PRECONDITION_FAILED -
    /// ..."), as RabbitMQ answers errors of its publish and get endpoints.
    pub fn with_reply_code(e: AmqpError) -> ApiError {
        Self::bad_request(format!("{} {}", e.code, e.text))
    }

    /// The refusal for a vhost the user has no permissions in.
    pub fn vhost_refused() -> ApiError {
        Self::unauthorised("User not authorised to access virtual host")
    }
}

impl From<AmqpError> for ApiError {
    /// An AMQP error from a broker operation: refusals are 401, anything
    /// else the client asked for wrongly is 400, with the AMQP text.
    fn from(e: AmqpError) -> ApiError {
        let prefix = format!("{} - ", crate::protocol::error::code_name(e.code));
        let reason = e.text.strip_prefix(&prefix).unwrap_or(&e.text).to_owned();
        match e.code {
            code::ACCESS_REFUSED => Self::unauthorised(reason),
            code::NOT_FOUND => Self::bad_request(e.text),
            _ => Self::bad_request(reason),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.error, "reason": self.reason});
        let mut r = json_response(self.status, &body);
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"RabbitMQ Management\""),
            );
        }
        r
    }
}

/// A JSON response with status 200.
pub fn ok(v: Value) -> ApiResult {
    Ok(json_response(StatusCode::OK, &v))
}

/// A JSON response. Serialised with `Value`'s `Display`, which is compiled
/// (optimised) inside serde_json, rather than a generic serializer
/// instantiated here: big listings stay fast in debug builds too.
pub fn json_response(status: StatusCode, v: &Value) -> Response {
    let mut r = (status, v.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// 201 Created, no body.
pub fn created() -> ApiResult {
    Ok(StatusCode::CREATED.into_response())
}

/// 204 No Content.
pub fn no_content() -> ApiResult {
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// 201 if something was created, else 204 (RabbitMQ's PUT answers).
pub fn created_or_updated(created: bool) -> ApiResult {
    if created {
        self::created()
    } else {
        no_content()
    }
}

/// Refuses requests a browser sends on behalf of another site (CSRF): one
/// whose `Origin` is not the server it is sent to (`Host`). Clients that
/// are not browsers send no `Origin` and are not affected.
async fn same_origin(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let h = req.headers();
    if let Some(origin) = h.get(header::ORIGIN) {
        let host = h.get(header::HOST).and_then(|v| v.to_str().ok());
        let from = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .map(|(_, authority)| authority);
        let same = matches!((from, host), (Some(f), Some(h)) if f.eq_ignore_ascii_case(h));
        if !same {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "cross-origin requests are not accepted",
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// The `arguments` (or other table) field of a body as an AMQP table,
/// within the limits of AMQP tables (400 beyond them).
pub fn table_field(m: &Map<String, Value>, k: &str) -> Result<FieldTable, ApiError> {
    crate::protocol::fields::table_from_json(&object_field(m, k)?)
        .map_err(|e| ApiError::bad_request(format!("{k}: {e}")))
}

/// Refuses a name, routing key or other short string longer than AMQP
/// can carry (400), instead of truncating it.
pub fn short_string(what: &str, s: &str) -> Result<(), ApiError> {
    crate::protocol::table_guard::check_short_string(what, s).map_err(ApiError::bad_request)
}

/// A boolean field of a body (absent: `default`).
pub fn bool_field(m: &Map<String, Value>, k: &str, default: bool) -> Result<bool, ApiError> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s == "true" || s == "false" => Ok(s == "true"),
        Some(v) => Err(ApiError::bad_request(format!(
            "{k} must be true or false, not {v}"
        ))),
    }
}

/// An object field of a body (absent: empty).
pub fn object_field(m: &Map<String, Value>, k: &str) -> Result<Map<String, Value>, ApiError> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(o)) => Ok(o.clone()),
        Some(_) => Err(ApiError::bad_request(format!("{k} must be an object"))),
    }
}

/// A string field of a body (absent: `default`).
pub fn str_field(m: &Map<String, Value>, k: &str, default: &str) -> Result<String, ApiError> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(default.to_owned()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(ApiError::bad_request(format!("{k} must be a string"))),
    }
}

/// The authenticated user of a request.
#[derive(Debug, Clone)]
pub struct Auth {
    /// The user.
    pub user: User,
}

const MANAGEMENT_TAGS: &[&str] = &["administrator", "monitoring", "management", "policymaker"];

impl FromRequestParts<Arc<AppState>> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let failed = || ApiError::new(StatusCode::UNAUTHORIZED, "not_authorized", "Login failed");
        let (name, password) = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Basic "))
            .and_then(|b| {
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()
            })
            .and_then(|raw| String::from_utf8(raw).ok())
            .and_then(|s| s.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned())))
            .ok_or_else(failed)?;
        let broker = &state.broker;
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_canonical());
        let Some(user) = broker.authenticate(&name, &password) else {
            // Slowed down like AMQP logins, per address and user name.
            if let Some(ip) = peer {
                let r = broker.failed_logins.record_failure(ip, &name);
                if r.first_delayed {
                    tracing::warn!(user = %name.escape_debug(),
                        "{} failed HTTP API logins in a row from {ip} for this user: refusals are now delayed", r.failures);
                }
                if !r.delay.is_zero() {
                    tokio::time::sleep(r.delay).await;
                }
            }
            tracing::debug!(user = %name.escape_debug(), "HTTP API login failed");
            return Err(failed());
        };
        if let Some(ip) = peer {
            broker.failed_logins.record_success(ip, &name);
        }
        // A loopback-only user (guest) must also name a loopback host: a web
        // page whose name was re-pointed at 127.0.0.1 (DNS rebinding) sends
        // its own name as Host and cannot use guest through a browser.
        if broker.config.auth.loopback_users.contains(&user.name)
            && (peer.is_some_and(|ip| !ip.is_loopback()) || !loopback_host(&parts.headers))
        {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "not_authorized",
                "User can only log in via localhost",
            ));
        }
        if !MANAGEMENT_TAGS.iter().any(|t| user.has_tag(t)) {
            return Err(ApiError::unauthorised("Not management user"));
        }
        Ok(Auth { user })
    }
}

/// Whether the request's `Host` names this machine's loopback interface
/// (`localhost` or a loopback address), or is absent (HTTP/1.0).
fn loopback_host(headers: &axum::http::HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Auth {
    /// Tagged administrator.
    pub fn is_admin(&self) -> bool {
        self.user.has_tag("administrator")
    }

    /// Reads everything (administrator or monitoring).
    pub fn sees_all(&self) -> bool {
        self.is_admin() || self.user.has_tag("monitoring")
    }

    /// Fails unless the user is an administrator.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::unauthorised("Not administrator user"))
        }
    }

    /// Fails unless the user may manage policies (policymaker or administrator).
    pub fn require_policymaker(&self) -> Result<(), ApiError> {
        if self.is_admin() || self.user.has_tag("policymaker") {
            Ok(())
        } else {
            Err(ApiError::unauthorised("Not policymaker user"))
        }
    }

    /// Whether listings show objects of `vhost` to this user.
    pub fn can_see_vhost(&self, b: &Broker, vhost: &str) -> bool {
        self.sees_all() || b.permissions(&self.user.name, vhost).is_some()
    }

    /// Fails unless the user may read objects of `vhost`.
    pub fn check_see_vhost(&self, b: &Broker, vhost: &str) -> Result<(), ApiError> {
        if self.can_see_vhost(b, vhost) {
            Ok(())
        } else {
            Err(ApiError::vhost_refused())
        }
    }

    /// The user's permissions in `vhost`, required for changing anything in
    /// it (as in RabbitMQ, administrators too).
    pub fn vhost_permissions(&self, b: &Broker, vhost: &str) -> Result<Arc<Permissions>, ApiError> {
        b.permissions(&self.user.name, vhost)
            .ok_or_else(ApiError::vhost_refused)
    }

    /// Checks one AMQP permission, as a client doing the same would.
    pub fn check(
        &self,
        b: &Broker,
        vhost: &str,
        access: Access,
        resource: Resource<'_>,
    ) -> Result<(), ApiError> {
        let p = self.vhost_permissions(b, vhost)?;
        crate::auth::check(Some(&p), &self.user.name, vhost, access, resource)?;
        Ok(())
    }

    /// Checks the permissions a declaration naming a dead-letter or
    /// alternate exchange needs, as over AMQP.
    pub fn check_exchange_argument(
        &self,
        b: &Broker,
        vhost: &str,
        declared: Resource<'_>,
        arguments: &FieldTable,
    ) -> Result<(), ApiError> {
        let p = self.vhost_permissions(b, vhost)?;
        crate::auth::check_exchange_argument(
            Some(&p),
            &self.user.name,
            vhost,
            declared,
            arguments,
        )?;
        Ok(())
    }

    /// Whether the user sees a connection of `user` (own ones only, unless
    /// monitoring or administrator).
    pub fn sees_connection_of(&self, user: &str) -> bool {
        self.sees_all() || self.user.name == user
    }
}

/// The query string, as a map.
pub type Q = axum::extract::Query<HashMap<String, String>>;

/// Looks up a vhost or answers 404.
pub fn vhost_or_404(b: &Broker, name: &str) -> Result<Arc<crate::vhost::VHost>, ApiError> {
    b.vhost(name).ok_or_else(ApiError::not_found)
}

/// Answers a listing the way RabbitMQ does: `name` (+ `use_regex`) filters,
/// `sort`/`sort_reverse` order, `columns` picks fields, `page`/`page_size`
/// pages (and then the answer is a page object instead of an array).
pub fn list(items: Vec<Value>, q: &HashMap<String, String>) -> ApiResult {
    list_by(items, q, "name")
}

/// `list`, with `name` filtering on another (dotted) field, for listings
/// whose items have no name (consumers: `queue.name`).
pub fn list_by(mut items: Vec<Value>, q: &HashMap<String, String>, key: &str) -> ApiResult {
    let total = items.len();
    if let Some(keep) = name_filter(q)? {
        items.retain(|v| pick(v, key).as_str().is_some_and(&keep));
    }
    if let Some(key) = q.get("sort").filter(|k| !k.is_empty()) {
        items.sort_by(|a, b| cmp_json(pick(a, key), pick(b, key)));
    }
    if q.get("sort_reverse").is_some_and(|v| v == "true") {
        items.reverse();
    }
    if let Some(cols) = q.get("columns").filter(|c| !c.is_empty()) {
        let cols: Vec<&str> = cols.split(',').map(str::trim).collect();
        items = items.into_iter().map(|v| keep_columns(&v, &cols)).collect();
    }
    let Some((page, page_size)) = paging(q)? else {
        return ok(Value::Array(items));
    };
    let filtered = items.len();
    let (skip, page_count) = page_bounds(page, page_size, filtered)?;
    let chunk: Vec<Value> = items.into_iter().skip(skip).take(page_size).collect();
    ok(page_json(
        chunk, page, page_count, page_size, filtered, total,
    ))
}

/// `list` for items already in their default order (vhost, then name),
/// which become JSON only if shown: unsorted or sorted by name, a page of
/// 10,000 queues turns only its 100 into JSON. `name_of` is what `name`
/// filters and sorts by.
pub fn list_lazy<T>(
    mut items: Vec<T>,
    q: &HashMap<String, String>,
    name_of: impl Fn(&T) -> &str,
    to_json: impl Fn(&T) -> Value,
) -> ApiResult {
    let total = items.len();
    if let Some(keep) = name_filter(q)? {
        items.retain(|t| keep(name_of(t)));
    }
    // Sorting by name needs no JSON either (a stable sort, as the JSON
    // sort is, so equal names stay in vhost order).
    let sort = q.get("sort").map_or("", String::as_str);
    if sort == "name" {
        items.sort_by(|a, b| name_of(a).cmp(name_of(b)));
    }
    let sorted = !sort.is_empty() && sort != "name";
    let paged = paging(q)?;
    let Some((page, page_size)) = paged.filter(|_| !sorted) else {
        // Sorting (or no paging) needs every item's JSON.
        let all = json_items(&items, &to_json, q);
        let Some((page, page_size)) = paged else {
            return ok(Value::Array(all));
        };
        let filtered = all.len();
        let (skip, page_count) = page_bounds(page, page_size, filtered)?;
        let chunk = all.into_iter().skip(skip).take(page_size).collect();
        return ok(page_json(
            chunk, page, page_count, page_size, filtered, total,
        ));
    };
    if q.get("sort_reverse").is_some_and(|v| v == "true") {
        items.reverse();
    }
    let filtered = items.len();
    let (skip, page_count) = page_bounds(page, page_size, filtered)?;
    let cols: Option<Vec<&str>> = q
        .get("columns")
        .filter(|c| !c.is_empty())
        .map(|c| c.split(',').map(str::trim).collect());
    let chunk: Vec<Value> = items
        .iter()
        .skip(skip)
        .take(page_size)
        .map(|t| {
            let v = to_json(t);
            match &cols {
                Some(c) => keep_columns(&v, c),
                None => v,
            }
        })
        .collect();
    ok(page_json(
        chunk, page, page_count, page_size, filtered, total,
    ))
}

/// Every item's JSON, sorted and with columns picked as `q` asks (no
/// paging).
fn json_items<T>(
    items: &[T],
    to_json: impl Fn(&T) -> Value,
    q: &HashMap<String, String>,
) -> Vec<Value> {
    let mut all = items.iter().map(to_json).collect::<Vec<_>>();
    if let Some(key) = q.get("sort").filter(|k| !k.is_empty()) {
        all.sort_by(|a, b| cmp_json(pick(a, key), pick(b, key)));
    }
    if q.get("sort_reverse").is_some_and(|v| v == "true") {
        all.reverse();
    }
    if let Some(cols) = q.get("columns").filter(|c| !c.is_empty()) {
        let cols: Vec<&str> = cols.split(',').map(str::trim).collect();
        all = all.into_iter().map(|v| keep_columns(&v, &cols)).collect();
    }
    all
}

/// Whether a name passes a listing's filter.
type NameFilter = Box<dyn Fn(&str) -> bool>;

/// The `name` filter of a listing: a regex with `use_regex=true`, else a
/// case-insensitive substring; `None` without one.
fn name_filter(q: &HashMap<String, String>) -> Result<Option<NameFilter>, ApiError> {
    let Some(pat) = q.get("name").filter(|p| !p.is_empty()) else {
        return Ok(None);
    };
    if q.get("use_regex").is_some_and(|v| v == "true") {
        let re = regex::Regex::new(pat)
            .map_err(|e| ApiError::bad_request(format!("invalid regex '{pat}': {e}")))?;
        Ok(Some(Box::new(move |n: &str| re.is_match(n))))
    } else {
        let pat = pat.to_lowercase();
        Ok(Some(Box::new(move |n: &str| {
            n.to_lowercase().contains(&pat)
        })))
    }
}

/// `page` and `page_size` (default 100, at most 500), if paged.
fn paging(q: &HashMap<String, String>) -> Result<Option<(usize, usize)>, ApiError> {
    let Some(page) = q.get("page") else {
        return Ok(None);
    };
    let page: usize = page
        .parse()
        .ok()
        .filter(|p| *p >= 1)
        .ok_or_else(|| ApiError::bad_request("page must be a positive integer"))?;
    let page_size: usize = match q.get("page_size") {
        None => 100,
        Some(s) => s
            .parse()
            .ok()
            .filter(|n| (1..=500).contains(n))
            .ok_or_else(|| ApiError::bad_request("page_size must be between 1 and 500"))?,
    };
    Ok(Some((page, page_size)))
}

/// Items to skip and the page count, or 400 for a page past the end.
fn page_bounds(page: usize, page_size: usize, filtered: usize) -> Result<(usize, usize), ApiError> {
    let page_count = filtered.div_ceil(page_size).max(1);
    if page > page_count {
        return Err(ApiError::bad_request(format!(
            "page out of range: page {page} of {page_count}"
        )));
    }
    Ok(((page - 1) * page_size, page_count))
}

fn page_json(
    chunk: Vec<Value>,
    page: usize,
    page_count: usize,
    page_size: usize,
    filtered: usize,
    total: usize,
) -> Value {
    json!({
        "filtered_count": filtered,
        "item_count": chunk.len(),
        "items": chunk,
        "page": page,
        "page_count": page_count,
        "page_size": page_size,
        "total_count": total,
    })
}

fn pick<'a>(v: &'a Value, dotted: &str) -> &'a Value {
    dotted.split('.').fold(v, |v, k| &v[k])
}

fn cmp_json(a: &Value, b: &Value) -> std::cmp::Ordering {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .unwrap_or(0.0)
            .total_cmp(&y.as_f64().unwrap_or(0.0)),
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Null, Value::Null) => std::cmp::Ordering::Equal,
        (Value::Null, _) => std::cmp::Ordering::Less,
        (_, Value::Null) => std::cmp::Ordering::Greater,
        _ => a.to_string().cmp(&b.to_string()),
    }
}

fn keep_columns(v: &Value, cols: &[&str]) -> Value {
    let mut out = Map::new();
    for c in cols {
        let val = pick(v, c);
        if val.is_null() {
            continue;
        }
        // "a.b" keeps {"a": {"b": ...}}.
        let mut parts = c.split('.').peekable();
        let mut cur = &mut out;
        while let Some(p) = parts.next() {
            if parts.peek().is_none() {
                cur.insert(p.to_owned(), val.clone());
            } else {
                let e = cur
                    .entry(p.to_owned())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !e.is_object() {
                    *e = Value::Object(Map::new());
                }
                cur = e.as_object_mut().expect("just made an object");
            }
        }
    }
    Value::Object(out)
}

/// Sorts listing items by vhost, then name (RabbitMQ's order).
pub fn sort_by_vhost_name(items: &mut [Value]) {
    items.sort_by(|a, b| {
        fn k(v: &Value) -> (&str, &str) {
            (
                v.get("vhost").and_then(Value::as_str).unwrap_or(""),
                v.get("name").and_then(Value::as_str).unwrap_or(""),
            )
        }
        k(a).cmp(&k(b))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_keep_nested_fields() {
        let v = json!({"name": "q", "message_stats": {"publish": 3, "ack": 1}, "x": 1});
        assert_eq!(
            keep_columns(&v, &["name", "message_stats.publish"]),
            json!({"name": "q", "message_stats": {"publish": 3}})
        );
    }

    #[test]
    fn amqp_errors_map_to_rabbitmq_statuses() {
        let e: ApiError = AmqpError::channel(code::PRECONDITION_FAILED, "inequivalent arg").into();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.reason, "inequivalent arg");
        let e: ApiError = AmqpError::channel(code::ACCESS_REFUSED, "no").into();
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);
    }
}
