//! What an ordinary login must not be able to do, over AMQP and HTTP alike:
//! wipe the stored definitions, reach exchanges it may not write to through
//! a dead-letter or alternate exchange, impersonate another user, log in
//! without a password, or forge log lines (issue 11). The HTTP API's own
//! rules are in http_security.rs, its limits in http_limits.rs.

mod common;
mod raw;
mod support;

use common::*;
use lapin::BasicProperties;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use serde_json::{Value, json};

fn args(key: &str, value: &str) -> FieldTable {
    let mut t = FieldTable::default();
    t.insert(
        ShortString::from(key),
        AMQPValue::LongString(LongString::from(value)),
    );
    t
}

/// `{"k": {"k": ... {}}}` with `depth` levels below the top.
fn nested(depth: usize) -> Value {
    let mut v = json!({});
    for _ in 0..depth {
        v = json!({ "k": v });
    }
    v
}

// ---- the stored definitions cannot be wiped ----

#[test]
fn arguments_nested_deeper_than_amqp_tables_are_refused_over_http_with_400() {
    let w = Warren::start();
    let deep = nested(65);
    for (method, path, body) in [
        ("PUT", "/api/queues/%2F/deep", json!({"arguments": deep})),
        (
            "PUT",
            "/api/exchanges/%2F/deep",
            json!({"type": "direct", "arguments": deep}),
        ),
        (
            "PUT",
            "/api/policies/%2F/deep",
            json!({"pattern": "^deep$", "definition": deep}),
        ),
        (
            "POST",
            "/api/exchanges/%2F/amq.default/publish",
            json!({"routing_key": "x", "payload": "", "payload_encoding": "string",
                   "properties": {"headers": deep}}),
        ),
    ] {
        let (s, v) = w.api(method, path, Some(&body));
        assert_eq!(s, 400, "{method} {path}: {v}");
        assert!(
            v["reason"]
                .as_str()
                .unwrap()
                .contains("deeper than 64 levels"),
            "{v}"
        );
    }
    let (s, v) = w.api(
        "POST",
        "/api/definitions",
        Some(&json!({"queues": [{"name": "deep", "vhost": "/", "arguments": deep}]})),
    );
    assert_eq!(s, 400, "{v}");
    assert_eq!(w.api("GET", "/api/queues/%2F/deep", None).0, 404);
}

#[test]
fn the_nesting_that_used_to_wipe_every_definition_is_refused_and_two_restarts_keep_everything() {
    let mut w = start_with_restricted_user("");
    // 123 levels were accepted and made the second restart drop the snapshot.
    let (s, _) = w.api(
        "PUT",
        "/api/queues/app/bob-deep",
        Some(&json!({"arguments": nested(123)})),
    );
    assert_eq!(s, 400);
    // The deepest table AMQP accepts is accepted, stored and read back.
    let (s, v) = w.api_as(
        "bob",
        "s3cret",
        "PUT",
        "/api/queues/app/bob-deepest",
        Some(&json!({"arguments": nested(64)})),
    );
    assert_eq!(s, 201, "{v}");
    for _ in 0..2 {
        assert!(w.terminate().success());
        w.restart();
    }
    let (s, v) = w.api("GET", "/api/queues/app/bob-deepest", None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["arguments"], nested(64));
    for path in [
        "/api/users/bob",
        "/api/vhosts/app",
        "/api/permissions/app/bob",
    ] {
        assert_eq!(w.api("GET", path, None).0, 200, "{path}");
    }
}

/// Runs warren once more on `w`'s data directory (after it stopped) and
/// returns its exit status and standard error; a warren still running
/// after 20 s (it started) is killed and reported as such.
fn start_again(w: &Warren) -> (std::process::ExitStatus, String) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["--stream-port", "0"])
        .arg("--config")
        .arg(w.dir.path().join("test.toml"))
        .arg("--port")
        .arg(free_port().to_string())
        .arg("--http-port")
        .arg(free_port().to_string())
        .arg("--data-dir")
        .arg(w.dir.path())
        .env("WARREN_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run warren");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("warren started although its definitions could not be read");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("warren's output");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_snapshot_that_cannot_be_read_stops_the_start_and_is_left_untouched() {
    let mut w = start_with_restricted_user("");
    assert!(w.terminate().success());
    let snapshot = w.dir.path().join("definitions.json");
    let text = std::fs::read_to_string(&snapshot).unwrap();
    // Damaged by hand, say: cut in the middle.
    let damaged = &text[..text.len() / 2];
    std::fs::write(&snapshot, damaged).unwrap();
    let (status, stderr) = start_again(&w);
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("definitions.json"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&snapshot).unwrap(), damaged);
}

#[test]
fn a_log_line_that_cannot_be_read_stops_the_start_but_a_torn_last_line_does_not() {
    let mut w = start_with_restricted_user("");
    let log = w.dir.path().join("definitions.log");
    w.api(
        "PUT",
        "/api/queues/app/bob-after-snapshot",
        Some(&json!({})),
    );
    w.kill();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("bob-after-snapshot"));
    // A torn append (no newline) is what a crash leaves: skipped.
    std::fs::write(&log, format!("{text}{{\"put_vhost\":\"to")).unwrap();
    w.restart();
    assert_eq!(
        w.api("GET", "/api/queues/app/bob-after-snapshot", None).0,
        200
    );
    w.api("PUT", "/api/queues/app/bob-later", Some(&json!({})));
    w.kill();
    // A damaged line in the middle is not.
    let text = std::fs::read_to_string(&log).unwrap();
    let damaged = format!("garbage\n{text}");
    std::fs::write(&log, &damaged).unwrap();
    let (status, stderr) = start_again(&w);
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("definitions.log") && stderr.contains("line 1"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&log).unwrap(), damaged);
}

#[test]
fn the_data_directory_and_the_definitions_are_private_to_the_broker_user() {
    use std::os::unix::fs::PermissionsExt;
    let mut w = Warren::start();
    assert!(w.terminate().success());
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(w.dir.path()), 0o700);
    assert_eq!(mode(&w.dir.path().join("messages")), 0o700);
    for f in ["definitions.json", "definitions.log"] {
        assert_eq!(mode(&w.dir.path().join(f)), 0o600, "{f}");
    }
}

// ---- dead-letter and alternate exchanges need write permission ----

#[tokio::test]
async fn a_dead_letter_exchange_needs_write_permission_on_it_over_amqp() {
    let w = start_with_restricted_user("");
    let c = connect_as(&w, "bob", "s3cret", "app").await.unwrap();
    let ch = c.create_channel().await.unwrap();
    let e = ch
        .queue_declare(
            "bob-q".into(),
            QueueDeclareOptions::default(),
            args("x-dead-letter-exchange", "amq.direct"),
        )
        .await
        .unwrap_err();
    assert_eq!(reply_code(&e), Some(403));
    assert_eq!(
        reply_text(&e),
        "ACCESS_REFUSED - write access to exchange 'amq.direct' in vhost 'app' refused for user 'bob'"
    );
    // Not declared.
    assert!(!support::queue_exists(&c, "bob-q").await);
    let ch = c.create_channel().await.unwrap();
    ch.queue_declare(
        "bob-q".into(),
        QueueDeclareOptions::default(),
        args("x-dead-letter-exchange", "bob-dlx"),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_dead_letter_exchange_also_needs_read_permission_on_the_queue_over_amqp() {
    let w = start_with_restricted_user("");
    w.api(
        "PUT",
        "/api/users/carl",
        Some(&json!({"password": "pw", "tags": ""})),
    );
    w.api(
        "PUT",
        "/api/permissions/app/carl",
        Some(&json!({"configure": ".*", "write": ".*", "read": ""})),
    );
    let c = connect_as(&w, "carl", "pw", "app").await.unwrap();
    let ch = c.create_channel().await.unwrap();
    let e = ch
        .queue_declare(
            "carl-q".into(),
            QueueDeclareOptions::default(),
            args("x-dead-letter-exchange", ""),
        )
        .await
        .unwrap_err();
    assert_eq!(reply_code(&e), Some(403));
    assert_eq!(
        reply_text(&e),
        "ACCESS_REFUSED - read access to queue 'carl-q' in vhost 'app' refused for user 'carl'"
    );
}

#[tokio::test]
async fn an_alternate_exchange_needs_write_permission_on_it_over_amqp() {
    let w = start_with_restricted_user("");
    let c = connect_as(&w, "bob", "s3cret", "app").await.unwrap();
    let ch = c.create_channel().await.unwrap();
    let e = ch
        .exchange_declare(
            "bob-x".into(),
            lapin::ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            args("alternate-exchange", "amq.fanout"),
        )
        .await
        .unwrap_err();
    assert_eq!(reply_code(&e), Some(403));
    assert_eq!(
        reply_text(&e),
        "ACCESS_REFUSED - write access to exchange 'amq.fanout' in vhost 'app' refused for user 'bob'"
    );
    assert!(!support::exchange_exists(&c, "bob-x").await);
}

#[tokio::test]
async fn dead_letter_and_alternate_exchanges_need_write_permission_over_http() {
    let w = start_with_restricted_user("");
    let (s, v) = w.api_as(
        "bob",
        "s3cret",
        "PUT",
        "/api/queues/app/bob-q",
        Some(&json!({"arguments": {"x-dead-letter-exchange": "amq.direct", "x-message-ttl": 0}})),
    );
    assert_eq!(s, 401, "{v}");
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("exchange 'amq.direct'"),
        "{v}"
    );
    let (s, v) = w.api_as(
        "bob",
        "s3cret",
        "PUT",
        "/api/exchanges/app/bob-x",
        Some(&json!({"type": "fanout", "arguments": {"alternate-exchange": "amq.direct"}})),
    );
    assert_eq!(s, 401, "{v}");
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("exchange 'amq.direct'"),
        "{v}"
    );
    assert_eq!(w.api("GET", "/api/queues/app/bob-q", None).0, 404);
    assert_eq!(w.api("GET", "/api/exchanges/app/bob-x", None).0, 404);
    // Pointing at an exchange bob may write to is fine.
    let (s, _) = w.api_as(
        "bob",
        "s3cret",
        "PUT",
        "/api/queues/app/bob-q",
        Some(&json!({"arguments": {"x-dead-letter-exchange": "bob-dlx"}})),
    );
    assert_eq!(s, 201);
}

// ---- user_id ----

#[tokio::test]
async fn a_user_id_naming_another_user_is_refused_with_406_unless_impersonator() {
    let w = start_with_restricted_user("");
    let c = connect_as(&w, "bob", "s3cret", "app").await.unwrap();
    let ch = c.create_channel().await.unwrap();
    let mut watch = support::watch(&c);
    ch.basic_publish(
        "".into(),
        "bob-q".into(),
        BasicPublishOptions::default(),
        b"x",
        BasicProperties::default().with_user_id("guest".into()),
    )
    .await
    .unwrap();
    let e = support::channel_error(&ch, &mut watch).await;
    assert_eq!(reply_code(&e), Some(406));
    assert_eq!(
        reply_text(&e),
        "PRECONDITION_FAILED - user_id property set to 'guest' but authenticated user was 'bob'"
    );
    // Its own name passes; an impersonator may use any.
    let ch = c.create_channel().await.unwrap();
    support::declare(&ch, "bob-q").await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch.basic_publish(
        "".into(),
        "bob-q".into(),
        BasicPublishOptions::default(),
        b"mine",
        BasicProperties::default().with_user_id("bob".into()),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    w.api(
        "PUT",
        "/api/users/bob",
        Some(&json!({"tags": "management,impersonator"})),
    );
    let c2 = connect_as(&w, "bob", "s3cret", "app").await.unwrap();
    let ch2 = c2.create_channel().await.unwrap();
    ch2.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch2.basic_publish(
        "".into(),
        "bob-q".into(),
        BasicPublishOptions::default(),
        b"theirs",
        BasicProperties::default().with_user_id("guest".into()),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    assert_eq!(
        support::drain_strings(&ch2, "bob-q").await,
        ["mine", "theirs"]
    );
}

#[test]
fn a_user_id_naming_another_user_is_refused_over_http_publish() {
    let w = start_with_restricted_user("");
    let (s, v) = w.api_as(
        "bob",
        "s3cret",
        "POST",
        "/api/exchanges/app/amq.default/publish",
        Some(
            &json!({"routing_key": "shared", "payload": "x", "payload_encoding": "string",
                     "properties": {"user_id": "guest"}}),
        ),
    );
    assert_eq!(s, 400);
    assert_eq!(
        v["reason"],
        "406 PRECONDITION_FAILED - user_id property set to 'guest' but authenticated user was 'bob'"
    );
    let (_, v) = w.api("GET", "/api/queues/app/shared", None);
    assert_eq!(v["messages"], 0);
}

// ---- blank passwords ----

#[tokio::test]
async fn a_blank_password_never_logs_in() {
    let w = start_with_restricted_user("");
    // RabbitMQ creates the user; the blank password just cannot log in.
    let (s, _) = w.api(
        "PUT",
        "/api/users/blank",
        Some(&json!({"password": "", "tags": "management"})),
    );
    assert_eq!(s, 201);
    w.api(
        "PUT",
        "/api/permissions/app/blank",
        Some(&json!({"configure": ".*", "write": ".*", "read": ".*"})),
    );
    assert!(connect_as(&w, "blank", "", "app").await.is_err());
    assert_eq!(w.api_as("blank", "", "GET", "/api/whoami", None).0, 401);
}

#[test]
fn a_user_name_with_newlines_cannot_forge_log_lines() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["--stream-port", "0"])
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--port")
        .arg(port.to_string())
        .arg("--http-port")
        .arg(free_port().to_string())
        .env("WARREN_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run warren");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "warren did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (mut s, _) = raw::start(port);
    let forged = "x\n2026-01-01T00:00:00Z  INFO FORGED connection opened user=admin\u{1b}[2J";
    raw::start_ok(&mut s, "PLAIN", &raw::plain(forged, "wrong"));
    let _ = raw::try_read_frame(&mut s);
    drop(s);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(log.contains("authentication failed"), "{log}");
    assert!(
        !log.lines()
            .any(|l| l.contains("FORGED") && !l.contains("authentication failed")),
        "{log}"
    );
    assert!(!log.contains('\u{1b}'), "{log}");
}

#[test]
fn queues_the_broker_stored_come_back_even_after_the_queue_limit_was_lowered() {
    let mut w = Warren::start();
    for q in ["a", "b", "c"] {
        assert_eq!(
            w.api("PUT", &format!("/api/queues/%2F/{q}"), Some(&json!({})))
                .0,
            201
        );
    }
    assert!(w.terminate().success());
    let config = w.dir.path().join("test.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("max_queues_per_vhost = 0"), "{text}");
    std::fs::write(
        &config,
        text.replace("max_queues_per_vhost = 0", "max_queues_per_vhost = 1"),
    )
    .unwrap();
    w.restart();
    for q in ["a", "b", "c"] {
        assert_eq!(
            w.api("GET", &format!("/api/queues/%2F/{q}"), None).0,
            200,
            "{q}"
        );
    }
    assert_eq!(w.api("PUT", "/api/queues/%2F/d", Some(&json!({}))).0, 400);
}

#[test]
fn arguments_an_older_version_stored_beyond_the_depth_limit_are_still_recovered() {
    let mut w = Warren::start();
    assert!(w.terminate().success());
    let snapshot = w.dir.path().join("definitions.json");
    let mut d: Value = serde_json::from_str(&std::fs::read_to_string(&snapshot).unwrap()).unwrap();
    d["queues"].as_array_mut().unwrap().push(json!({
        "name": "legacy", "vhost": "/", "durable": true, "auto_delete": false,
        "arguments": nested(100)
    }));
    std::fs::write(&snapshot, d.to_string()).unwrap();
    for _ in 0..2 {
        w.restart();
        let (s, v) = w.api("GET", "/api/queues/%2F/legacy?columns=name", None);
        assert_eq!((s, v["name"].as_str()), (200, Some("legacy")));
        assert!(w.terminate().success());
    }
}
