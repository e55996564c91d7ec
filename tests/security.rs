//! What an ordinary login must not be able to do, over AMQP and HTTP alike:
//! wipe the stored definitions, reach exchanges it may not write to through
//! a dead-letter or alternate exchange, impersonate another user, log in
//! without a password, touch another connection's exclusive queue, or slip
//! names AMQP cannot carry past the API (issue 11).

mod common;
mod raw;
mod support;

use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{Value, json};
use support::within;

/// bob: management tag, everything under `bob-` in vhost `app`, plus
/// writing to the default exchange; `shared` is a queue he may not read.
fn start_with_bob(extra_config: &str) -> Warren {
    let w = Warren::start_with(extra_config);
    for (path, body) in [
        ("/api/vhosts/app", json!({})),
        (
            "/api/users/bob",
            json!({"password": "s3cret", "tags": "management"}),
        ),
        (
            "/api/permissions/app/bob",
            json!({"configure": "^bob-", "write": "^bob-|^amq\\.default$", "read": "^bob-"}),
        ),
        (
            "/api/permissions/app/guest",
            json!({"configure": ".*", "write": ".*", "read": ".*"}),
        ),
        ("/api/queues/app/shared", json!({})),
    ] {
        let (s, v) = w.api("PUT", path, Some(&body));
        assert!(s == 201 || s == 204, "PUT {path}: {s} {v}");
    }
    w
}

async fn connect(w: &Warren, user: &str, pass: &str, vhost: &str) -> lapin::Result<Connection> {
    let url = format!(
        "amqp://{user}:{pass}@127.0.0.1:{}/{}",
        w.port,
        vhost.replace('/', "%2f")
    );
    within(
        "connect",
        Connection::connect(&url, ConnectionProperties::default()),
    )
    .await
}

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
    let mut w = start_with_bob("");
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
    let mut w = start_with_bob("");
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
    let mut w = start_with_bob("");
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
    let w = start_with_bob("");
    let c = connect(&w, "bob", "s3cret", "app").await.unwrap();
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
    let w = start_with_bob("");
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
    let c = connect(&w, "carl", "pw", "app").await.unwrap();
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
    let w = start_with_bob("");
    let c = connect(&w, "bob", "s3cret", "app").await.unwrap();
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
    let w = start_with_bob("");
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
    let w = start_with_bob("");
    let c = connect(&w, "bob", "s3cret", "app").await.unwrap();
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
    let c2 = connect(&w, "bob", "s3cret", "app").await.unwrap();
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
    let w = start_with_bob("");
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
    let w = start_with_bob("");
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
    assert!(connect(&w, "blank", "", "app").await.is_err());
    assert_eq!(w.api_as("blank", "", "GET", "/api/whoami", None).0, 401);
}

// ---- exclusive queues ----

#[tokio::test]
async fn http_get_purge_and_delete_refuse_another_connections_exclusive_queue() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    ch.queue_declare(
        "mine".into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    support::publish(&ch, "", "mine", b"private").await;
    let locked = "cannot obtain exclusive access to locked queue 'mine' in vhost '/'. It could be \
                  originally declared on another connection or the exclusive property value does \
                  not match that of the original declaration.";
    let (s, v) = w.api(
        "POST",
        "/api/queues/%2F/mine/get",
        Some(&json!({"count": 1, "ackmode": "ack_requeue_false", "encoding": "auto"})),
    );
    assert_eq!(
        (s, v["reason"].as_str().unwrap()),
        (400, &*format!("405 RESOURCE_LOCKED - {locked}"))
    );
    for (method, path) in [
        ("DELETE", "/api/queues/%2F/mine/contents"),
        ("DELETE", "/api/queues/%2F/mine"),
    ] {
        let (s, v) = w.api(method, path, None);
        assert_eq!(
            (s, v["reason"].as_str().unwrap()),
            (400, locked),
            "{method} {path}"
        );
    }
    assert_eq!(support::drain_strings(&ch, "mine").await, ["private"]);
}

// ---- names AMQP cannot carry ----

#[tokio::test]
async fn names_routing_keys_and_keys_over_255_bytes_are_refused_over_http_not_truncated() {
    let w = Warren::start();
    let long = "n".repeat(256);
    assert_eq!(w.api("PUT", "/api/queues/%2F/q", Some(&json!({}))).0, 201);
    let (s, v) = w.api("PUT", &format!("/api/queues/%2F/{long}"), Some(&json!({})));
    assert_eq!(
        (s, v["reason"].as_str().unwrap()),
        (400, "queue should be less than 255 bytes, actually was 256")
    );
    assert_eq!(
        w.api(
            "PUT",
            &format!("/api/queues/%2F/{}", "n".repeat(255)),
            Some(&json!({}))
        )
        .0,
        201
    );
    for (method, path, body) in [
        (
            "PUT",
            format!("/api/exchanges/%2F/{long}"),
            json!({"type": "direct"}),
        ),
        ("PUT", format!("/api/vhosts/{long}"), json!({})),
        (
            "POST",
            "/api/exchanges/%2F/amq.default/publish".into(),
            json!({"routing_key": long, "payload": "x", "payload_encoding": "string"}),
        ),
        (
            "POST",
            "/api/exchanges/%2F/amq.default/publish".into(),
            json!({"routing_key": "q", "payload": "x", "payload_encoding": "string",
                   "properties": {"headers": {long.clone(): 1}}}),
        ),
        (
            "PUT",
            "/api/queues/%2F/q".into(),
            json!({"arguments": {long.clone(): 1}}),
        ),
        (
            "POST",
            "/api/bindings/%2F/e/amq.direct/q/q".into(),
            json!({"routing_key": long}),
        ),
    ] {
        let (s, v) = w.api(method, &path, Some(&body));
        assert_eq!(s, 400, "{method} {}: {v}", &path[..40.min(path.len())]);
        assert!(
            v["reason"]
                .as_str()
                .unwrap()
                .contains("less than 255 bytes"),
            "{v}"
        );
    }
    // The broker is fine, and a definitions import with a long name is
    // refused for that item without leaving later changes unsynced.
    let (s, v) = w.api(
        "POST",
        "/api/definitions",
        Some(&json!({"queues": [{"name": long, "vhost": "/"}, {"name": "fine", "vhost": "/"}]})),
    );
    assert_eq!(s, 400, "{v}");
    assert_eq!(w.api("GET", "/api/queues/%2F/fine", None).0, 200);
    let (_c, ch) = w.channel().await;
    support::declare(&ch, "after").await;
}

// ---- lower-severity findings ----

#[test]
fn http_declarations_honour_max_queues_per_vhost() {
    let w = Warren::start_with("[limits]\nmax_queues_per_vhost = 1");
    assert_eq!(w.api("PUT", "/api/queues/%2F/one", Some(&json!({}))).0, 201);
    let (s, v) = w.api("PUT", "/api/queues/%2F/two", Some(&json!({})));
    assert_eq!(s, 400);
    assert_eq!(
        v["reason"],
        "cannot declare queue 'two': queue limit in vhost '/' (1) is reached"
    );
    // Redeclaring an existing queue is not a new one.
    assert_eq!(w.api("PUT", "/api/queues/%2F/one", Some(&json!({}))).0, 204);
}

#[test]
fn the_aliveness_test_needs_the_users_permissions_in_the_vhost() {
    let w = start_with_bob("");
    let (s, v) = w.api_as("bob", "s3cret", "GET", "/api/aliveness-test/app", None);
    assert_eq!(s, 401);
    assert_eq!(
        v["reason"],
        "ACCESS_REFUSED - configure access to queue 'aliveness-test' in vhost 'app' refused for user 'bob'"
    );
    let (s, v) = w.api_as("bob", "s3cret", "GET", "/api/aliveness-test/%2F", None);
    assert_eq!(
        (s, v["reason"].as_str()),
        (401, Some("User not authorised to access virtual host"))
    );
    assert_eq!(w.api("GET", "/api/aliveness-test/app", None).0, 200);
}

#[tokio::test]
async fn imported_permissions_for_missing_users_or_vhosts_are_refused_not_kept_for_later() {
    let w = Warren::start();
    let (s, v) = w.api(
        "POST",
        "/api/definitions",
        Some(&json!({"permissions": [
            {"user": "later", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"},
            {"user": "guest", "vhost": "later", "configure": ".*", "write": ".*", "read": ".*"}
        ]})),
    );
    assert_eq!(s, 400, "{v}");
    assert!(
        v["reason"].as_str().unwrap().contains("no user 'later'"),
        "{v}"
    );
    w.api(
        "PUT",
        "/api/users/later",
        Some(&json!({"password": "pw", "tags": ""})),
    );
    assert_eq!(w.api("GET", "/api/permissions/%2F/later", None).0, 404);
    assert!(connect(&w, "later", "pw", "/").await.is_err());
}

#[test]
fn put_user_without_tags_is_400_as_in_rabbitmq() {
    let w = start_with_bob("");
    let (s, v) = w.api("PUT", "/api/users/bob", Some(&json!({"password": "new"})));
    assert_eq!((s, v["reason"].as_str()), (400, Some("tags_not_present")));
    let (_, v) = w.api("GET", "/api/users/bob", None);
    assert_eq!(v["tags"], json!(["management"]));
}

#[test]
fn management_users_list_policies_but_read_one_only_as_policymakers() {
    let w = start_with_bob("");
    let policy = json!({"pattern": "^bob-", "definition": {"max-length": 5}});
    assert_eq!(w.api("PUT", "/api/policies/app/p", Some(&policy)).0, 201);
    let (s, v) = w.api_as("bob", "s3cret", "GET", "/api/policies/app", None);
    assert_eq!((s, v.as_array().map(Vec::len)), (200, Some(1)));
    let (s, v) = w.api_as("bob", "s3cret", "GET", "/api/policies/app/p", None);
    assert_eq!(
        (s, v["reason"].as_str()),
        (401, Some("User not authorised to access object"))
    );
    w.api(
        "PUT",
        "/api/users/bob",
        Some(&json!({"tags": "policymaker"})),
    );
    assert_eq!(
        w.api_as("bob", "s3cret", "GET", "/api/policies/app/p", None)
            .0,
        200
    );
}

#[test]
fn a_vhost_the_user_cannot_see_answers_401_whether_or_not_the_object_exists() {
    let w = start_with_bob("");
    w.api("PUT", "/api/queues/%2F/secret", Some(&json!({})));
    for path in [
        "/api/queues/%2F/secret",
        "/api/queues/%2F/missing",
        "/api/queues/%2F/secret/bindings",
        "/api/queues/%2F/missing/bindings",
        "/api/bindings/%2F/e/amq.direct/q/secret",
        "/api/bindings/%2F/e/amq.direct/q/missing",
    ] {
        assert_eq!(
            w.api_as("bob", "s3cret", "GET", path, None).0,
            401,
            "{path}"
        );
    }
    assert_eq!(
        w.api_as("bob", "s3cret", "GET", "/api/queues/nohost/x", None)
            .0,
        404
    );
}

#[test]
fn a_user_name_with_newlines_cannot_forge_log_lines() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
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
