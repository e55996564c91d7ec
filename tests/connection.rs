//! Connection-level behaviour: protocol header, connection.start properties,
//! authentication, tuning, vhosts, heartbeats, handshake timeout and close.

mod common;
mod raw;

use std::io::Read;
use std::time::{Duration, Instant};

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{AMQPClass, connection};
use amq_protocol::types::AMQPValue;
use common::*;
use lapin::{Connection, ConnectionProperties};
use raw::*;

/// Reads everything the server sends until it closes the socket.
fn read_until_closed(s: &mut std::net::TcpStream) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return (got, false);
            }
            Err(_) => return (got, true),
        }
    }
}

#[test]
fn a_wrong_protocol_header_is_answered_with_the_supported_one_and_the_socket_closed() {
    let w = Warren::start();
    for header in [
        &b"AMQP\x00\x00\x09\x02"[..],
        b"HTTP/1.1",
        b"AMQP\x01\x01\x00\x0a",
    ] {
        let mut s = tcp(w.port);
        send_raw(&mut s, header);
        let (got, closed) = read_until_closed(&mut s);
        assert_eq!(
            got,
            b"AMQP\x00\x00\x09\x01",
            "reply to header {:?}",
            String::from_utf8_lossy(header)
        );
        assert!(
            closed,
            "socket left open after header {:?}",
            String::from_utf8_lossy(header)
        );
    }
}

#[test]
fn connection_start_advertises_product_version_platform_and_capabilities() {
    let w = Warren::start();
    let (_s, start) = start(w.port);
    assert_eq!((start.version_major, start.version_minor), (0, 9));
    let mechs = String::from_utf8_lossy(start.mechanisms.as_bytes()).into_owned();
    let mechs: Vec<&str> = mechs.split(' ').collect();
    assert!(mechs.contains(&"PLAIN"), "mechanisms {mechs:?}");
    assert!(mechs.contains(&"AMQPLAIN"), "mechanisms {mechs:?}");
    assert!(
        String::from_utf8_lossy(start.locales.as_bytes()).contains("en_US"),
        "locales {:?}",
        start.locales
    );

    let props = start.server_properties.inner();
    let text = |k: &str| match props.get(k) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::ShortString(s)) => s.as_str().to_owned(),
        other => panic!("server property {k} is {other:?}, expected a string"),
    };
    // As RabbitMQ 3.10, whose behaviour warren follows: clients gate
    // RabbitMQ-specific behaviour on these (kombu's prefetch semantics).
    assert_eq!(text("product"), "RabbitMQ");
    assert_eq!(text("version"), "3.10.8");
    assert!(!text("warren_version").is_empty(), "empty warren_version");
    assert!(!text("platform").is_empty(), "empty platform");

    let Some(AMQPValue::FieldTable(caps)) = props.get("capabilities") else {
        panic!("no capabilities table in {props:?}");
    };
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
        "per_consumer_qos",
    ] {
        assert_eq!(
            caps.inner().get(cap),
            Some(&AMQPValue::Boolean(true)),
            "capability {cap}"
        );
    }
}

#[test]
fn plain_authentication_opens_the_connection() {
    let w = Warren::start();
    let mut s = handshake(w.port, &Handshake::default());
    open_channel(&mut s, 1);
    close_connection(&mut s);
}

#[test]
fn amqplain_authentication_opens_the_connection() {
    let w = Warren::start();
    let mut s = handshake(
        w.port,
        &Handshake {
            mechanism: "AMQPLAIN".into(),
            response: amqplain("guest", "guest"),
            ..Handshake::default()
        },
    );
    open_channel(&mut s, 1);
    close_connection(&mut s);
}

#[test]
fn amqplain_with_a_wrong_password_is_refused_with_403() {
    let w = Warren::start();
    let (mut s, _) = start(w.port);
    start_ok(&mut s, "AMQPLAIN", &amqplain("guest", "nope"));
    let (code, _, _) = expect_close(&mut s);
    assert_eq!(code, 403);
}

#[tokio::test]
async fn a_wrong_password_is_refused() {
    let w = Warren::start();
    let url = format!("amqp://guest:wrong@127.0.0.1:{}/%2f", w.port);
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(&url, ConnectionProperties::default()),
    )
    .await
    .expect("connect with a wrong password did not finish");
    let err = r.expect_err("a wrong password must not open a connection");
    // lapin announces authentication_failure_close, so RabbitMQ (and warren)
    // answer with connection.close 403 ACCESS_REFUSED.
    assert_eq!(reply_code(&err), Some(403), "{err:?}");
}

#[test]
fn a_wrong_password_with_plain_gets_connection_close_403_and_no_tune() {
    let w = Warren::start();
    let (mut s, _) = start(w.port);
    start_ok(&mut s, "PLAIN", &plain("guest", "wrong"));
    let c = expect_close_full(&mut s);
    assert_eq!(c.reply_code, 403);
    assert!(
        c.reply_text.as_str().starts_with("ACCESS_REFUSED - "),
        "{:?}",
        c.reply_text
    );
    assert!(closed_within(&mut s, Duration::from_secs(3)));
}

/// A PLAIN login over a raw socket: `Ok` on connection.tune, else the
/// connection.close the server sent.
fn try_login(port: u16, user: &str, pass: &str) -> Result<(), connection::Close> {
    let (mut s, _) = start(port);
    start_ok(&mut s, "PLAIN", &plain(user, pass));
    match read_method(&mut s) {
        (0, AMQPClass::Connection(connection::AMQPMethod::Tune(_))) => Ok(()),
        (0, AMQPClass::Connection(connection::AMQPMethod::Close(c))) => Err(c),
        other => panic!("expected connection.tune or close, got {other:?}"),
    }
}

/// Two wrong logins per address and user answered at once, then delays of
/// 100, 200, 400, 800, 800, ... ms.
const SLOW_FAILURES: &str =
    "[auth]\nmax_failed_logins = 2\nfailed_login_window = 60\nfailed_login_max_delay_ms = 800";

#[test]
fn after_many_failed_logins_the_right_password_is_accepted_at_once_for_that_user_and_others() {
    let w = Warren::start_with(SLOW_FAILURES);
    let (status, _) = w.api(
        "PUT",
        "/api/users/other",
        Some(&serde_json::json!({"password": "secret", "tags": ""})),
    );
    assert!(status == 201 || status == 204, "{status}");
    let (status, _) = w.api(
        "PUT",
        "/api/permissions/%2f/other",
        Some(&serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"})),
    );
    assert!(status == 201 || status == 204, "{status}");
    for i in 0..6 {
        let c = try_login(w.port, "guest", "wrong").expect_err("a wrong password");
        assert_eq!(c.reply_code, 403, "attempt {i}: {c:?}");
        assert!(c.reply_text.as_str().contains("Login was refused"), "{c:?}");
    }
    // The right password is never held up, for the same user or another,
    // whatever the mechanism; lapin connects as usual.
    try_login(w.port, "guest", "guest").expect("the right password for the same user");
    try_login(w.port, "other", "secret").expect("another user from the same address");
    let (mut s, _) = start(w.port);
    start_ok(&mut s, "AMQPLAIN", &amqplain("guest", "guest"));
    expect_tune(&mut s);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let c = w.connect().await;
        c.close(200, "bye".into()).await.expect("close");
    });
}

#[test]
fn a_password_guessing_loop_is_slowed_down() {
    let w = Warren::start_with(SLOW_FAILURES);
    let t0 = Instant::now();
    for _ in 0..8 {
        assert!(try_login(w.port, "guest", "guess").is_err());
    }
    // 2 free, then 100 + 200 + 400 + 800 + 800 + 800 ms at least.
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(3100),
        "8 wrong guesses took only {took:?}"
    );
}

#[test]
fn a_slowed_down_client_without_authentication_failure_close_is_disconnected() {
    let w = Warren::start_with(SLOW_FAILURES);
    for _ in 0..3 {
        assert!(try_login(w.port, "guest", "wrong").is_err());
    }
    let (mut s, _) = start(w.port);
    // Timed from before the send: the broker's delay may start before this
    // thread runs again after the write.
    let t0 = Instant::now();
    send_method(
        &mut s,
        0,
        &AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties: Default::default(),
            mechanism: "PLAIN".into(),
            response: plain("guest", "wrong").into(),
            locale: "en_US".into(),
        })),
    );
    let (got, closed) = read_until_closed(&mut s);
    assert!(closed, "the socket stayed open");
    assert!(got.is_empty(), "expected no reply, got {got:?}");
    assert!(t0.elapsed() >= Duration::from_millis(200), "not delayed");
}

#[test]
fn failed_http_api_logins_are_slowed_down_and_count_with_amqp_ones() {
    let w = Warren::start_with(SLOW_FAILURES);
    for _ in 0..2 {
        assert_eq!(
            w.api_as("guest", "wrong", "GET", "/api/overview", None).0,
            401
        );
    }
    // The third failure for guest, over HTTP, waits 100 ms; the fourth, over
    // AMQP, 200 ms.
    let t0 = Instant::now();
    assert_eq!(
        w.api_as("guest", "wrong", "GET", "/api/overview", None).0,
        401
    );
    assert!(t0.elapsed() >= Duration::from_millis(100));
    let t0 = Instant::now();
    assert!(try_login(w.port, "guest", "wrong").is_err());
    assert!(t0.elapsed() >= Duration::from_millis(200));
    // The right password works at once, over both.
    assert_eq!(w.api("GET", "/api/overview", None).0, 200);
    try_login(w.port, "guest", "guest").expect("AMQP with the right password");
}

#[test]
fn max_failed_logins_0_disables_the_delays() {
    let w = Warren::start_with("[auth]\nmax_failed_logins = 0");
    for _ in 0..8 {
        assert!(try_login(w.port, "guest", "wrong").is_err());
    }
    try_login(w.port, "guest", "guest").expect("no limit");
}

#[test]
fn malformed_sasl_responses_are_refused() {
    let w = Warren::start_with(SLOW_FAILURES);
    for _ in 0..3 {
        let (mut s, _) = start(w.port);
        start_ok(&mut s, "PLAIN", b"no-separators");
        assert_eq!(expect_close(&mut s).0, 403);
    }
    try_login(w.port, "guest", "guest").expect("the right password");
}

#[test]
fn connection_tune_proposes_rabbitmqs_defaults() {
    let w = Warren::start();
    let (mut s, _) = start(w.port);
    start_ok(&mut s, "PLAIN", &plain("guest", "guest"));
    let t = expect_tune(&mut s);
    assert_eq!(t.channel_max, 2047);
    assert_eq!(t.frame_max, 131072);
    assert_eq!(t.heartbeat, 60);
}

#[test]
fn tune_ok_with_frame_max_above_the_servers_gets_connection_close_530() {
    let w = Warren::start();
    let (mut s, _) = start(w.port);
    start_ok(&mut s, "PLAIN", &plain("guest", "guest"));
    let t = expect_tune(&mut s);
    tune_ok(&mut s, t.channel_max, 131072 + 1, 0);
    open(&mut s, "/");
    let (code, _, _) = expect_close(&mut s);
    assert_eq!(code, 530);
    assert!(closed_within(&mut s, Duration::from_secs(3)));
}

#[test]
fn tune_ok_with_smaller_limits_is_accepted() {
    let w = Warren::start();
    let mut s = handshake(
        w.port,
        &Handshake {
            channel_max: Some(10),
            frame_max: Some(4096),
            ..Handshake::default()
        },
    );
    open_channel(&mut s, 10);
    close_connection(&mut s);
}

#[test]
fn opening_a_missing_vhost_gets_connection_close_530() {
    let w = Warren::start();
    let (mut s, _) = start(w.port);
    start_ok(&mut s, "PLAIN", &plain("guest", "guest"));
    let t = expect_tune(&mut s);
    tune_ok(&mut s, t.channel_max, t.frame_max, 0);
    open(&mut s, "no-such-vhost");
    let c = expect_close_full(&mut s);
    assert_eq!(c.reply_code, 530);
    assert!(
        c.reply_text.as_str().starts_with("NOT_ALLOWED - "),
        "{:?}",
        c.reply_text
    );
    assert_eq!((c.class_id, c.method_id), (10, 40));
}

#[test]
fn the_server_sends_heartbeats_and_drops_a_silent_peer() {
    let w = Warren::start();
    let mut s = handshake(
        w.port,
        &Handshake {
            heartbeat: 1,
            ..Handshake::default()
        },
    );
    let silent_since = Instant::now();
    // With heartbeat=1 the server must send heartbeats (at least once a second).
    let mut heartbeats = 0;
    while heartbeats < 1 && silent_since.elapsed() < Duration::from_millis(1800) {
        match try_read_frame(&mut s) {
            Ok(AMQPFrame::Heartbeat) => heartbeats += 1,
            Ok(other) => panic!("unexpected frame {other:?}"),
            Err(e) => panic!("connection failed before any heartbeat: {e}"),
        }
    }
    assert!(heartbeats >= 1, "no heartbeat from the server");
    // We stay silent: after two missed intervals the server hangs up.
    assert!(
        closed_within(&mut s, Duration::from_secs(5)),
        "a peer silent for >2 heartbeat intervals was not disconnected"
    );
    let t = silent_since.elapsed();
    assert!(
        t >= Duration::from_millis(1500),
        "disconnected after only {t:?} of silence"
    );
}

#[test]
fn a_peer_that_sends_heartbeats_is_kept() {
    let w = Warren::start();
    let mut s = handshake(
        w.port,
        &Handshake {
            heartbeat: 1,
            ..Handshake::default()
        },
    );
    let begin = Instant::now();
    while begin.elapsed() < Duration::from_millis(3500) {
        send_frame(&mut s, &AMQPFrame::Heartbeat);
        std::thread::sleep(Duration::from_millis(400));
    }
    // Still alive: a channel opens.
    open_channel(&mut s, 1);
    close_connection(&mut s);
}

#[test]
fn a_handshake_that_never_completes_is_dropped() {
    let w = Warren::start_with("[amqp]\nhandshake_timeout = 1");
    // Stalls after the protocol header (connection.start unanswered).
    let (mut stalled, _) = start(w.port);
    // Stalls before even sending the protocol header.
    let mut silent = tcp(w.port);
    assert!(
        closed_within(&mut stalled, Duration::from_secs(3)),
        "a connection stalled after connection.start was not dropped"
    );
    assert!(
        closed_within(&mut silent, Duration::from_secs(3)),
        "a connection that never sent the protocol header was not dropped"
    );
}

#[test]
fn client_initiated_connection_close_gets_close_ok_and_the_socket_closes() {
    let w = Warren::start();
    let mut s = connect(w.port);
    open_channel(&mut s, 1);
    send_method(
        &mut s,
        0,
        &AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
    );
    match read_method(&mut s) {
        (0, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))) => {}
        other => panic!("expected connection.close-ok, got {other:?}"),
    }
    // This client never closes its side: warren lingers 3 s for it to
    // (so its close-ok is not lost to a reset), then closes.
    assert!(closed_within(&mut s, Duration::from_secs(6)));
}

#[tokio::test]
async fn lapin_connection_close_completes() {
    let w = Warren::start();
    let (c, _ch) = w.channel().await;
    tokio::time::timeout(Duration::from_secs(5), c.close(200, "bye".into()))
        .await
        .expect("connection.close-ok never came")
        .expect("close");
}

// Clients that resolve `localhost` to ::1 first must find warren there too
// (issue 10): by default warren listens on both loopbacks.
#[tokio::test]
async fn by_default_clients_reach_warren_on_the_ipv6_loopback() {
    let w = Warren::start();
    for host in ["[::1]", "localhost", "127.0.0.1"] {
        let url = format!("amqp://guest:guest@{host}:{}/%2f", w.port);
        let c = Connection::connect(&url, ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
        let ch = c.create_channel().await.expect("channel");
        ch.queue_declare(
            "v6".into(),
            lapin::options::QueueDeclareOptions::default(),
            Default::default(),
        )
        .await
        .expect("declare");
        c.close(200, "bye".into()).await.expect("close");
    }
    // The HTTP API too.
    let (status, _, _) = http(
        &format!("http://[::1]:{}", w.http_port),
        Some(("guest", "guest")),
        "GET",
        "/api/overview",
        None,
    );
    assert_eq!(status, 200);
    // Connections from ::1 are listed with both ends.
    let (_, conns) = w.api("GET", "/api/connections", None);
    let names: Vec<&str> = conns
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert!(names.iter().all(|n| n.contains(" -> ")), "{names:?}");
}

/// Starts the warren binary with `args` (and `env`) on free ports; returns
/// it and its AMQP port once `ready` addresses accept connections.
fn spawn_with(
    args: &[&str],
    env: &[(&str, &str)],
    ready: &[&str],
) -> (std::process::Child, u16, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let http = free_port();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_warren"));
    cmd.args(args)
        .args(["--stream-port", "0"])
        .arg("--port")
        .arg(port.to_string())
        .arg("--http-port")
        .arg(http.to_string())
        .arg("--data-dir")
        .arg(dir.path())
        .env("WARREN_LOG", "warn")
        .stdin(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn warren");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("warren {args:?} {env:?} exited at start: {status}");
        }
        if ready
            .iter()
            .all(|a| std::net::TcpStream::connect(format!("{a}:{port}")).is_ok())
        {
            return (child, port, dir);
        }
        assert!(Instant::now() < deadline, "warren did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// A list given with --bind or WARREN_BIND opens one listener per address
// (a regression once made clap reject any --bind at start).
#[test]
fn bind_and_warren_bind_take_a_list_of_addresses() {
    let (mut w, port, _d) = spawn_with(&["--bind", "127.0.0.1,::1"], &[], &["127.0.0.1", "[::1]"]);
    let _ = w.kill();
    let _ = w.wait();
    let (mut w, port2, _d) = spawn_with(&[], &[("WARREN_BIND", "[::1]")], &["[::1]"]);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port2)).is_err(),
        "WARREN_BIND=[::1] must not listen on 127.0.0.1"
    );
    let _ = w.kill();
    let _ = w.wait();
    let _ = port;
}
