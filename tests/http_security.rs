//! The management API refuses what RabbitMQ's refuses, and what AMQP
//! cannot carry (issue 11): another connection's exclusive queue, names and
//! keys over 255 bytes, queues beyond the vhost limit, permissions for users
//! that do not exist; and it tells a user nothing about vhosts it cannot
//! see.

mod common;
mod support;

use common::*;
use lapin::options::*;
use lapin::types::FieldTable;
use serde_json::json;

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
    // A definitions import declares queues too.
    let (s, v) = w.api(
        "POST",
        "/api/definitions",
        Some(&json!({"queues": [{"name": "one", "vhost": "/"}, {"name": "three", "vhost": "/"}]})),
    );
    assert_eq!(s, 400, "{v}");
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("queue limit in vhost '/' (1) is reached"),
        "{v}"
    );
    assert_eq!(w.api("GET", "/api/queues/%2F/three", None).0, 404);
}

#[test]
fn the_aliveness_test_needs_the_users_permissions_in_the_vhost() {
    let w = start_with_restricted_user("");
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
    assert!(connect_as(&w, "later", "pw", "/").await.is_err());
}

#[test]
fn put_user_without_tags_is_400_as_in_rabbitmq() {
    let w = start_with_restricted_user("");
    let (s, v) = w.api("PUT", "/api/users/bob", Some(&json!({"password": "new"})));
    assert_eq!((s, v["reason"].as_str()), (400, Some("tags_not_present")));
    let (_, v) = w.api("GET", "/api/users/bob", None);
    assert_eq!(v["tags"], json!(["management"]));
}

#[test]
fn management_users_list_policies_but_read_one_only_as_policymakers() {
    let w = start_with_restricted_user("");
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
    let w = start_with_restricted_user("");
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
