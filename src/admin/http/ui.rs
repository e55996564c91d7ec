//! The management web UI: plain ES modules, a stylesheet and one HTML page
//! (under `ui/`), compiled into the binary with `include_str!` and served
//! at `/` and `/ui/...`. The UI is a client of the JSON API under `/api`
//! like any other (HTTP basic auth, the user's tags decide what it offers),
//! so the API stays the one source of truth.
//!
//! Assets are answered with a strong `ETag` (a hash of their content) and
//! `Cache-Control: no-cache`: a browser keeps them and revalidates each
//! with a conditional request answered `304 Not Modified` until a new build
//! changes them. A strict Content-Security-Policy allows only the UI's own
//! scripts, styles and API (no inline script, no other origin).

use std::sync::{Arc, LazyLock};

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

use super::AppState;

/// One embedded file.
pub struct Asset {
    /// Its path under `/ui/` (or `index.html`, served at `/`).
    pub name: &'static str,
    /// Its MIME type.
    pub mime: &'static str,
    /// Its content.
    pub body: &'static str,
}

macro_rules! asset {
    ($name:literal, $mime:expr) => {
        Asset {
            name: $name,
            mime: $mime,
            body: include_str!(concat!("ui/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file of the UI.
pub const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("chart.js", JS),
    asset!("list.js", JS),
    asset!("overview.js", JS),
    asset!("pages.js", JS),
    asset!("queue.js", JS),
    asset!("forms.js", JS),
    asset!("admin.js", JS),
    asset!("favicon.svg", "image/svg+xml"),
];

/// Each asset's ETag, computed once.
static ETAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            let h = Sha256::digest(a.body.as_bytes());
            let hex: String = h[..12].iter().map(|b| format!("{b:02x}")).collect();
            format!("\"{hex}\"")
        })
        .collect()
});

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   img-src 'self' data: blob:; connect-src 'self'; form-action 'self'; \
                   base-uri 'none'; frame-ancestors 'none'";

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(index))
        .route("/ui/{file}", get(file))
}

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

async fn file(Path(name): Path<String>, headers: HeaderMap) -> Response {
    if name == "index.html" {
        return super::ApiError::not_found().into_response();
    }
    serve(&name, &headers)
}

fn serve(name: &str, headers: &HeaderMap) -> Response {
    let Some(i) = ASSETS.iter().position(|a| a.name == name) else {
        return super::ApiError::not_found().into_response();
    };
    let (asset, etag) = (&ASSETS[i], &ETAGS[i]);
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut r = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (StatusCode::OK, asset.body).into_response()
    };
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.mime));
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    r
}

/// A request made by the UI's scripts (`X-Requested-With: XMLHttpRequest`)
/// gets its 401 without `WWW-Authenticate`, so that a failed login shows
/// the UI's own message instead of the browser's password dialog (as
/// RabbitMQ's UI avoids it). Other clients see no difference.
pub(super) async fn no_browser_login_prompt(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let scripted = req
        .headers()
        .get("x-requested-with")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"XMLHttpRequest"));
    let mut r = next.run(req).await;
    if scripted {
        r.headers_mut().remove(header::WWW_AUTHENTICATE);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_the_page_imports_is_embedded() {
        // Each `from "./x.js"` in an embedded script names an embedded file.
        for a in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
            for part in a.body.split("from \"./").skip(1) {
                let target = part.split('"').next().unwrap_or("");
                assert!(
                    ASSETS.iter().any(|b| b.name == target),
                    "{} imports {target}, which is not embedded",
                    a.name
                );
            }
        }
        let index = ASSETS.iter().find(|a| a.name == "index.html").unwrap();
        assert!(index.body.contains("/ui/app.js"));
        assert!(!index.body.contains("http://") && !index.body.contains("https://"));
    }
}
