//! Request bodies: read only once a handler has checked the login and the
//! request's permissions, within `[http] max_body_size` and
//! `body_timeout`, as JSON sent as `application/json`, and parsed off the
//! runtime when large.

use std::sync::Arc;

use axum::extract::FromRequest;
use axum::http::{HeaderValue, StatusCode, header};
use serde_json::{Map, Value};

use super::{ApiError, AppState};

/// A request body not read yet. Handlers read it (`object`) after the
/// login and the permissions of the request are checked, so a client that
/// may not make the request cannot make the broker read or parse a body;
/// it is then read within `[http] max_body_size` and `body_timeout`.
pub struct RequestBody {
    body: axum::body::Body,
    content_type: Option<HeaderValue>,
    max_size: usize,
    timeout: u64,
}

impl FromRequest<Arc<AppState>> for RequestBody {
    type Rejection = ApiError;

    async fn from_request(
        req: axum::extract::Request,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let limits = &state.broker.config.http;
        let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
        Ok(RequestBody {
            body: req.into_body(),
            content_type,
            max_size: limits.max_body_size,
            timeout: limits.body_timeout,
        })
    }
}

/// Bodies from this size on are parsed on a blocking thread, not on the
/// runtime that serves AMQP connections.
const PARSE_INLINE_MAX: usize = 64 * 1024;

impl RequestBody {
    /// Reads the body and parses it as a JSON object; an empty body is `{}`.
    /// A body that is not `application/json` is refused (415: a browser
    /// cannot send JSON to another site without asking first), one larger
    /// than the limit is 413 before it is read whole.
    pub async fn object(self) -> Result<Map<String, Value>, ApiError> {
        use axum::body::HttpBody as _;
        let hint = self.body.size_hint();
        if hint.upper() != Some(0) && !self.is_json() {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "request bodies must be JSON sent as application/json",
            ));
        }
        let max = self.max_size;
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("request body larger than the limit of {max} bytes ([http] max_body_size)"),
            )
        };
        if hint.lower() > max as u64 {
            return Err(too_large());
        }
        let read = async {
            let mut stream = self.body.into_data_stream();
            let mut bytes = Vec::new();
            while let Some(chunk) = futures_lite::StreamExt::next(&mut stream).await {
                let chunk =
                    chunk.map_err(|_| ApiError::bad_request("cannot read the request body"))?;
                if bytes.len() + chunk.len() > max {
                    return Err(too_large());
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok(bytes)
        };
        let bytes = match self.timeout {
            0 => read.await?,
            t => tokio::time::timeout(std::time::Duration::from_secs(t), read)
                .await
                .map_err(|_| {
                    ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "request_timeout",
                        "the request body did not arrive in time",
                    )
                })??,
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Map::new());
        }
        if bytes.len() < PARSE_INLINE_MAX {
            return parse_object(&bytes);
        }
        tokio::task::spawn_blocking(move || parse_object(&bytes))
            .await
            .map_err(|_| ApiError::bad_request("not_json"))?
    }

    /// Whether the body is declared as JSON (or not declared at all, which
    /// no browser does for a body).
    fn is_json(&self) -> bool {
        self.content_type
            .as_ref()
            .map(|v| v.to_str().unwrap_or(""))
            .is_none_or(|v| {
                v.split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
            })
    }
}

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(ApiError::bad_request("not_json")),
    }
}
