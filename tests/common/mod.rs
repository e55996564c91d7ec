//! Test support: a real warren process on a free loopback port, and lapin
//! helpers. Each test gets its own broker and data directory.
#![allow(dead_code)]

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lapin::{Channel, Connection, ConnectionProperties};

/// A running warren, killed when dropped.
pub struct Warren {
    child: Child,
    /// Its AMQP port.
    pub port: u16,
    /// Its management HTTP API port.
    pub http_port: u16,
    /// Its TLS (amqps) port, when started with `start_tls`.
    pub tls_port: Option<u16>,
    /// Its stream protocol over TLS port, when started with `start_tls`.
    pub stream_tls_port: Option<u16>,
    /// Its RabbitMQ Stream protocol port (a free one of its own).
    pub stream_port: u16,
    /// Its data directory.
    pub dir: tempfile::TempDir,
    config_path: std::path::PathBuf,
}

/// A lapin connection as guest to a warren run in the test's own process
/// (`Broker::open_on`) on `port`.
pub async fn connect_in_process(port: u16) -> Connection {
    Connection::connect(
        &format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
        ConnectionProperties::default(),
    )
    .await
    .expect("connect to the in-process warren")
}

/// A warren run in this test's process with its data in `data` on `disk`
/// (one that is slow or fails on command), listening for AMQP on a free
/// loopback port; `tune` adjusts its config first. Returns the broker, the
/// port and the listener task. Call it inside a tokio runtime.
pub fn serve_in_process(
    data: &std::path::Path,
    disk: std::sync::Arc<dyn warren::store::disk::Disk>,
    tune: impl FnOnce(&mut warren::Config),
) -> (
    std::sync::Arc<warren::Broker>,
    u16,
    tokio::task::JoinHandle<()>,
) {
    let mut config = warren::Config {
        data_dir: data.to_path_buf(),
        bind: vec!["127.0.0.1".parse().unwrap()],
        port: 0,
        ..Default::default()
    };
    tune(&mut config);
    let broker = warren::Broker::open_on(config, disk).expect("open warren");
    let listeners = warren::session::server::bind(&broker).expect("bind");
    let port = listeners[0].local_addr().unwrap().port();
    let server = tokio::spawn(warren::session::server::serve(broker.clone(), listeners));
    (broker, port, server)
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

impl Warren {
    /// Starts warren with its defaults plus `extra_config` (TOML appended to
    /// the shipped config file).
    pub fn start_with(extra_config: &str) -> Warren {
        Self::start_inner(extra_config, false)
    }

    /// Like `start_with`, also listening for TLS on a free port (passed as
    /// --tls-port); `extra_config` must set `[tls] cert` and `key`.
    pub fn start_tls(extra_config: &str) -> Warren {
        Self::start_inner(extra_config, true)
    }

    /// Like `start_with`, with its data directory in `dir` (say, on a
    /// small file system of the test's own).
    pub fn start_in(dir: tempfile::TempDir, extra_config: &str) -> Warren {
        Self::start_inner_in(dir, extra_config, false)
    }

    fn start_inner(extra_config: &str, tls: bool) -> Warren {
        Self::start_inner_in(tempfile::tempdir().expect("temp dir"), extra_config, tls)
    }

    fn start_inner_in(dir: tempfile::TempDir, extra_config: &str, tls: bool) -> Warren {
        let config_path = dir.path().join("test.toml");
        let base =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/warren.toml"))
                .expect("read config/warren.toml");
        std::fs::write(&config_path, merge_toml(&base, extra_config)).expect("write test config");
        let (child, [port, http_port, stream_port], tls_ports) =
            spawn(&config_path, dir.path(), None, tls);
        Warren {
            child,
            port,
            http_port,
            tls_port: tls_ports.map(|p| p[0]),
            stream_tls_port: tls_ports.map(|p| p[1]),
            stream_port,
            dir,
            config_path,
        }
    }

    /// Kills warren with SIGKILL (a crash) and waits for it to go.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops warren with SIGTERM and returns its exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return self.child.wait().expect("wait for warren");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts warren again on the same data directory and port (after
    /// `kill` or `terminate`).
    pub fn restart(&mut self) {
        let tls_ports = self.tls_port.zip(self.stream_tls_port).map(|(a, b)| [a, b]);
        let (child, [port, http_port, stream_port], tls_ports) = spawn(
            &self.config_path,
            self.dir.path(),
            Some(([self.port, self.http_port, self.stream_port], tls_ports)),
            self.tls_port.is_some(),
        );
        self.tls_port = tls_ports.map(|p| p[0]);
        self.stream_tls_port = tls_ports.map(|p| p[1]);
        self.child = child;
        self.port = port;
        self.http_port = http_port;
        self.stream_port = stream_port;
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    /// Starts warren with its default configuration.
    pub fn start() -> Warren {
        Self::start_with("")
    }

    /// The AMQP URI for guest.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// A new lapin connection.
    pub async fn connect(&self) -> Connection {
        Connection::connect(&self.url(), ConnectionProperties::default())
            .await
            .expect("connect to warren")
    }

    /// A new connection and a channel on it.
    pub async fn channel(&self) -> (Connection, Channel) {
        let c = self.connect().await;
        let ch = c.create_channel().await.expect("open channel");
        (c, ch)
    }

    /// The base URL of the HTTP API.
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// Calls the HTTP API as guest; returns the status and the JSON body
    /// (`Null` when empty).
    pub fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        self.api_as("guest", "guest", method, path, body)
    }

    /// Calls the HTTP API as `user`.
    pub fn api_as(
        &self,
        user: &str,
        password: &str,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let (status, _, text) = http(&self.http_url(), Some((user, password)), method, path, body);
        let v = if text.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"))
        };
        (status, v)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Warren {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns warren and waits until it accepts connections; tries other ports
/// if one is taken (unless `port` is given). With `tls`, also picks TLS
/// ports for AMQP and the stream protocol.
fn spawn(
    config_path: &std::path::Path,
    data_dir: &std::path::Path,
    ports: Option<([u16; 3], Option<[u16; 2]>)>,
    tls: bool,
) -> (Child, [u16; 3], Option<[u16; 2]>) {
    for _attempt in 0..5 {
        let ([port, http_port, stream_port], tls_ports) = ports.unwrap_or_else(|| {
            (
                [free_port(), free_port(), free_port()],
                tls.then(|| [free_port(), free_port()]),
            )
        });
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_warren"));
        if let Some([amqps, streams]) = tls_ports {
            cmd.arg("--tls-port").arg(amqps.to_string());
            cmd.arg("--stream-tls-port").arg(streams.to_string());
        }
        let mut child = cmd
            .arg("--config")
            .arg(config_path)
            .arg("--port")
            .arg(port.to_string())
            .arg("--http-port")
            .arg(http_port.to_string())
            .arg("--stream-port")
            .arg(stream_port.to_string())
            .arg("--data-dir")
            .arg(data_dir)
            .env(
                "WARREN_LOG",
                std::env::var("WARREN_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn warren");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break; // port taken between our probe and its bind: retry
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok()
                && TcpStream::connect(("127.0.0.1", http_port)).is_ok()
                && TcpStream::connect(("127.0.0.1", stream_port)).is_ok()
                && tls_ports.is_none_or(|ps| {
                    ps.iter()
                        .all(|p| TcpStream::connect(("127.0.0.1", *p)).is_ok())
                })
            {
                return (child, [port, http_port, stream_port], tls_ports);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("warren did not start");
}

/// Appends `extra` to `base`, replacing keys `extra` sets in the same table.
fn merge_toml(base: &str, extra: &str) -> String {
    let mut doc: toml::Table = base.parse().expect("base config parses");
    let add: toml::Table = extra.parse().expect("extra config parses");
    for (k, v) in add {
        match (doc.get_mut(&k), v) {
            (Some(toml::Value::Table(t)), toml::Value::Table(a)) => t.extend(a),
            (_, v) => {
                doc.insert(k, v);
            }
        }
    }
    toml::to_string(&doc).expect("serialise config")
}

/// The AMQP reply code carried by a lapin error, if it is a protocol error.
pub fn reply_code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(p) => Some(p.get_id()),
        _ => None,
    }
}

/// The reply text carried by a lapin error.
pub fn reply_text(e: &lapin::Error) -> String {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(p) => p.get_message().to_string(),
        other => format!("{other:?}"),
    }
}

/// A unique name for this test run.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// One HTTP request with an optional basic-auth login; returns the status,
/// the headers and the body text.
pub fn http(
    base: &str,
    login: Option<(&str, &str)>,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> (u16, Vec<(String, String)>, String) {
    use base64::Engine;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let url = format!("{base}{path}");
    let auth = login.map(|(u, p)| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )
    });
    let resp = match method {
        "DELETE" if body.is_some() => {
            // RabbitMQ's replicas/delete takes a body with DELETE.
            let mut r = agent.delete(&url).force_send_body();
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            let text = body.map_or_else(String::new, |b| b.to_string());
            r.header("Content-Type", "application/json")
                .send(text.as_str())
        }
        "GET" | "DELETE" => {
            let mut r = if method == "GET" {
                agent.get(&url)
            } else {
                agent.delete(&url)
            };
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            r.call()
        }
        _ => {
            let mut r = if method == "PUT" {
                agent.put(&url)
            } else {
                agent.post(&url)
            };
            if let Some(a) = &auth {
                r = r.header("Authorization", a);
            }
            let text = body.map_or_else(String::new, |b| b.to_string());
            r.header("Content-Type", "application/json")
                .send(text.as_str())
        }
    };
    let mut resp = resp.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let text = resp
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_string()
        .unwrap_or_default();
    (status, headers, text)
}

/// Starts warren with a restricted user, as an attacker with an ordinary
/// login: bob (password s3cret), tagged management, may do everything under
/// `bob-` in vhost `app` and write to its default exchange; `shared` is a
/// queue of `app` he may not read. guest has full permissions in `app`.
pub fn start_with_restricted_user(extra_config: &str) -> Warren {
    let w = Warren::start_with(extra_config);
    for (path, body) in [
        ("/api/vhosts/app", serde_json::json!({})),
        (
            "/api/users/bob",
            serde_json::json!({"password": "s3cret", "tags": "management"}),
        ),
        (
            "/api/permissions/app/bob",
            serde_json::json!({"configure": "^bob-", "write": "^bob-|^amq\\.default$", "read": "^bob-"}),
        ),
        (
            "/api/permissions/app/guest",
            serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"}),
        ),
        ("/api/queues/app/shared", serde_json::json!({})),
    ] {
        let (s, v) = w.api("PUT", path, Some(&body));
        assert!(s == 201 || s == 204, "PUT {path}: {s} {v}");
    }
    w
}

/// Connects to `vhost` as `user` (an error if the broker refuses).
pub async fn connect_as(
    w: &Warren,
    user: &str,
    pass: &str,
    vhost: &str,
) -> lapin::Result<Connection> {
    let url = format!(
        "amqp://{user}:{pass}@127.0.0.1:{}/{}",
        w.port,
        vhost.replace('/', "%2f")
    );
    tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(&url, ConnectionProperties::default()),
    )
    .await
    .expect("connect within 10 s")
}
