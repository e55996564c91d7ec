//! The management API cannot be used to exhaust the broker: idle,
//! slow-header and slow-body connections are closed, HTTP connections are
//! capped so AMQP clients still get in, bodies are bounded and read only
//! for a user allowed to make the request, and browsers cannot be made to
//! send requests for another site (issue 11). Timeouts are set to a second
//! or two here; the defaults are in config/warren.toml.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use serde_json::json;

const SHORT: &str = "[http]\nidle_timeout = 1\nbody_timeout = 1\nsend_timeout = 1\n";

fn basic(user: &str, pass: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
}

fn http_socket(w: &Warren) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", w.http_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Reads until the server closes the connection (or 20 s pass); returns
/// what arrived.
fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one response's status line and headers.
fn read_head(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while !out.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => out.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether a new AMQP client completes its handshake.
fn amqp_connects(w: &Warren) -> bool {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), w.connect())
            .await
            .is_ok()
    })
}

#[test]
fn idle_and_slow_header_connections_are_closed_after_the_timeout_while_amqp_keeps_accepting() {
    let w = Warren::start_with(SHORT);
    let mut idle = http_socket(&w);
    let mut slow = http_socket(&w);
    slow.write_all(b"GET /api/overview HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    let trickle = std::thread::spawn(move || {
        // One header byte every 200 ms never completes the header in time.
        let started = Instant::now();
        for b in b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            if slow.write_all(&[*b]).is_err() {
                return (started.elapsed(), String::new());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        (started.elapsed(), read_to_close(&mut slow))
    });
    assert!(amqp_connects(&w));
    let started = Instant::now();
    let got = read_to_close(&mut idle);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "idle connection kept open"
    );
    assert!(!got.contains("200 OK"), "{got}");
    let (lasted, got) = trickle.join().unwrap();
    assert!(
        lasted < Duration::from_secs(8),
        "slow header kept open for {lasted:?}"
    );
    assert!(!got.contains("200 OK"), "{got}");
    assert!(amqp_connects(&w));
}

#[test]
fn a_keep_alive_connection_is_closed_once_idle_for_the_timeout() {
    let w = Warren::start_with(SHORT);
    let mut s = http_socket(&w);
    let req = format!(
        "GET /api/whoami HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {}\r\n\r\n",
        basic("guest", "guest")
    );
    s.write_all(req.as_bytes()).unwrap();
    let started = Instant::now();
    let got = read_to_close(&mut s);
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_body_that_does_not_arrive_in_time_is_answered_408() {
    let w = Warren::start_with(SHORT);
    let mut s = http_socket(&w);
    let req = format!(
        "PUT /api/queues/%2F/slow HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"dur",
        basic("guest", "guest")
    );
    s.write_all(req.as_bytes()).unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert_eq!(w.api("GET", "/api/queues/%2F/slow", None).0, 404);
}

#[test]
fn http_connections_beyond_the_cap_wait_and_amqp_clients_still_get_in() {
    let w = Warren::start_with("[http]\nidle_timeout = 3\nmax_connections = 2\n");
    let held: Vec<TcpStream> = (0..2).map(|_| http_socket(&w)).collect();
    // Give the server time to accept both.
    std::thread::sleep(Duration::from_millis(300));
    assert!(amqp_connects(&w));
    // A third HTTP client is served once a held connection times out.
    let started = Instant::now();
    assert_eq!(w.api("GET", "/api/whoami", None).0, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "served while both slots were held"
    );
    drop(held);
}

#[test]
fn a_body_larger_than_the_limit_is_refused_with_413_before_it_is_sent() {
    let w = Warren::start_with("[http]\nmax_body_size = 4096\n");
    let mut s = http_socket(&w);
    // Announces 100 MB and sends none of it: the answer comes at once.
    let req = format!(
        "PUT /api/queues/%2F/big HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100000000\r\n\r\n",
        basic("guest", "guest")
    );
    s.write_all(req.as_bytes()).unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    // A larger body sent whole is refused the same way.
    let big = json!({"arguments": {"x": "y".repeat(10_000)}}).to_string();
    let (status, _, text) = http(
        &w.http_url(),
        Some(("guest", "guest")),
        "PUT",
        "/api/queues/%2F/big",
        Some(&serde_json::from_str(&big).unwrap()),
    );
    assert_eq!(status, 413, "{text}");
    assert_eq!(w.api("GET", "/api/queues/%2F/big", None).0, 404);
    assert_eq!(
        w.api("PUT", "/api/queues/%2F/small", Some(&json!({}))).0,
        201
    );
}

#[test]
fn the_body_of_a_request_the_user_may_not_make_is_never_read() {
    let w = Warren::start();
    w.api(
        "PUT",
        "/api/users/nobody",
        Some(&json!({"password": "pw", "tags": "management"})),
    );
    for (user, pass) in [("nobody", "pw"), ("guest", "wrong")] {
        let mut s = http_socket(&w);
        let req = format!(
            "POST /api/definitions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {}\r\n\
             Content-Type: application/json\r\nContent-Length: 10000000\r\n\r\n",
            basic(user, pass)
        );
        s.write_all(req.as_bytes()).unwrap();
        // Answered without sending a byte of the (default-limit) body.
        let head = read_head(&mut s);
        assert!(head.starts_with("HTTP/1.1 401"), "{user}: {head}");
    }
}

#[test]
fn json_bodies_must_be_sent_as_application_json() {
    let w = Warren::start();
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let mut s = http_socket(&w);
        let body = "{}";
        let req = format!(
            "PUT /api/queues/%2F/csrf HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {}\r\n\
             Content-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            basic("guest", "guest"),
            body.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        let got = read_to_close(&mut s);
        assert!(got.starts_with("HTTP/1.1 415"), "{ct}: {got}");
    }
    assert_eq!(w.api("GET", "/api/queues/%2F/csrf", None).0, 404);
}

/// Sends one request with extra headers; returns the status code.
fn status_with(w: &Warren, method: &str, path: &str, headers: &str) -> u16 {
    let mut s = http_socket(w);
    let body = if method == "GET" { "" } else { "{}" };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nAuthorization: Basic {}\r\n{headers}\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        basic("guest", "guest"),
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let got = read_to_close(&mut s);
    got.get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status: {got}"))
}

#[test]
fn a_request_from_a_page_of_another_site_is_refused() {
    let w = Warren::start();
    let host = format!("127.0.0.1:{}", w.http_port);
    let h = |origin: &str| format!("Host: {host}\r\nOrigin: {origin}\r\n");
    assert_eq!(
        status_with(&w, "PUT", "/api/queues/%2F/x", &h("http://evil.example")),
        403
    );
    assert_eq!(status_with(&w, "PUT", "/api/queues/%2F/x", &h("null")), 403);
    assert_eq!(w.api("GET", "/api/queues/%2F/x", None).0, 404);
    // The API's own origin (a page it serves) is fine, as are clients
    // that send no Origin.
    assert_eq!(
        status_with(
            &w,
            "PUT",
            "/api/queues/%2F/x",
            &h(&format!("http://{host}"))
        ),
        201
    );
    assert_eq!(
        status_with(&w, "GET", "/api/whoami", &format!("Host: {host}\r\n")),
        200
    );
}

#[test]
fn guest_is_refused_under_a_host_name_that_is_not_loopback() {
    let w = Warren::start();
    // A DNS-rebinding page reaches 127.0.0.1 under its own name.
    assert_eq!(
        status_with(&w, "GET", "/api/whoami", "Host: evil.example:15672\r\n"),
        401
    );
    for host in ["localhost:15672", "127.0.0.1", "[::1]:15672"] {
        assert_eq!(
            status_with(&w, "GET", "/api/whoami", &format!("Host: {host}\r\n")),
            200,
            "{host}"
        );
    }
}
