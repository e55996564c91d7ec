//! The HTTP client: one blocking request per call, basic auth, and errors
//! turned into one-line reasons.

use std::time::Duration;

use base64::Engine;
use serde_json::Value;

/// Where and as whom to talk to warren.
pub struct Client {
    agent: ureq::Agent,
    base: String,
    auth: String,
}

/// A failed command: its one-line reason and the exit status.
#[derive(Debug)]
pub struct Failure {
    /// What went wrong.
    pub reason: String,
    /// Exit status: 1 the request failed, 3 warren could not be reached.
    pub code: u8,
}

impl Failure {
    pub fn new(reason: impl Into<String>) -> Failure {
        Failure {
            reason: reason.into(),
            code: 1,
        }
    }
}

/// Percent-encodes one path segment (a vhost `/` becomes `%2F`).
pub fn seg(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

impl Client {
    pub fn new(url: &str, user: &str, password: &str) -> Client {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .timeout_connect(Some(Duration::from_secs(5)))
            .build();
        let raw = format!("{user}:{password}");
        Client {
            agent: config.into(),
            base: url.trim_end_matches('/').to_owned(),
            auth: format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(raw)
            ),
        }
    }

    /// Sends a request; returns the status and the body parsed as JSON
    /// (`Null` when empty). Statuses other than 2xx become failures.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, Failure> {
        let (status, v) = self.call_status(method, path, body)?;
        if (200..300).contains(&status) {
            return Ok(v);
        }
        Err(Failure::new(describe_error(status, &v)))
    }

    /// Like `call`, but returns any HTTP status with its body.
    pub fn call_status(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), Failure> {
        self.request(method, path, body, None)
    }

    /// DELETE with an `X-Reason` header (closing a connection).
    pub fn delete_with_reason(&self, path: &str, reason: &str) -> Result<Value, Failure> {
        let (status, v) = self.request("DELETE", path, None, Some(reason))?;
        if (200..300).contains(&status) {
            return Ok(v);
        }
        Err(Failure::new(describe_error(status, &v)))
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        reason: Option<&str>,
    ) -> Result<(u16, Value), Failure> {
        let url = format!("{}{path}", self.base);
        let unreachable = |e: ureq::Error| Failure {
            reason: format!("cannot reach warren at {}: {}", self.base, short_io(&e)),
            code: 3,
        };
        let text = body.map(|b| b.to_string());
        let resp = match (method, text) {
            ("GET", _) => self
                .agent
                .get(&url)
                .header("Authorization", &self.auth)
                .call(),
            ("DELETE", Some(t)) => self
                .agent
                .delete(&url)
                .force_send_body()
                .header("Authorization", &self.auth)
                .header("Content-Type", "application/json")
                .send(t.as_str()),
            ("DELETE", None) => self
                .agent
                .delete(&url)
                .header("Authorization", &self.auth)
                .header("X-Reason", reason.unwrap_or("Closed via warrenctl"))
                .call(),
            (m, t) => {
                let t = t.unwrap_or_else(|| "{}".into());
                let req = match m {
                    "PUT" => self.agent.put(&url),
                    _ => self.agent.post(&url),
                };
                req.header("Authorization", &self.auth)
                    .header("Content-Type", "application/json")
                    .send(t.as_str())
            }
        };
        let mut resp = resp.map_err(unreachable)?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_string()
            .map_err(unreachable)?;
        let v = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok((status, v))
    }
}

fn short_io(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Io(io) => io.to_string().to_lowercase(),
        other => other.to_string(),
    }
}

/// "not found (404)", "access refused: Not administrator user (401)", ...
fn describe_error(status: u16, v: &Value) -> String {
    let reason = v["reason"].as_str().unwrap_or("");
    let what = match status {
        401 => "access refused",
        404 => "not found",
        400 => "bad request",
        405 => "method not allowed",
        503 => "failed",
        _ => "error",
    };
    if reason.is_empty() || reason == "Not Found" {
        format!("{what} (HTTP {status})")
    } else {
        format!("{what}: {reason} (HTTP {status})")
    }
}
