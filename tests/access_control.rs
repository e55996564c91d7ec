//! Users, vhosts and permissions: who gets in where, and what they may do.
//! Users come from a definitions file in RabbitMQ's format loaded at start.

mod common;
mod support;

use common::*;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use support::within;

fn start_with_bob() -> Warren {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.keep().join("defs.json");
    let defs = serde_json::json!({
        "users": [{"name": "bob", "password_hash": warren::auth::hash_password("s3cret"),
                   "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": "management"}],
        "vhosts": [{"name": "app"}],
        "permissions": [{"user": "bob", "vhost": "app",
                         "configure": "^bob-.*", "write": "^bob-.*|^amq\\.default$", "read": "^bob-.*"}],
        "queues": [{"name": "shared", "vhost": "app", "durable": true, "auto_delete": false, "arguments": {}}]
    });
    std::fs::write(&path, defs.to_string()).unwrap();
    Warren::start_with(&format!("load_definitions = {:?}", path.to_str().unwrap()))
}

async fn connect(w: &Warren, user: &str, pass: &str, vhost: &str) -> lapin::Result<Connection> {
    let url = format!(
        "amqp://{user}:{pass}@127.0.0.1:{}/{}",
        w.port,
        vhost.replace('/', "%2f")
    );
    Connection::connect(&url, ConnectionProperties::default()).await
}

#[tokio::test]
async fn a_user_from_definitions_logs_in_to_a_vhost_it_has_permissions_on() {
    let w = start_with_bob();
    let c = within("connect", connect(&w, "bob", "s3cret", "app"))
        .await
        .unwrap();
    let ch = c.create_channel().await.unwrap();
    ch.queue_declare(
        "bob-q".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_wrong_password_is_refused() {
    let w = start_with_bob();
    assert!(
        within("connect", connect(&w, "bob", "wrong", "app"))
            .await
            .is_err()
    );
    assert!(
        within("connect", connect(&w, "nobody", "s3cret", "app"))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn opening_a_vhost_without_permissions_is_530() {
    let w = start_with_bob();
    let e = within("connect", connect(&w, "bob", "s3cret", "/"))
        .await
        .unwrap_err();
    assert_eq!(reply_code(&e), Some(530), "{e:?}");
    assert_eq!(
        reply_text(&e),
        "NOT_ALLOWED - access to vhost '/' refused for user 'bob'"
    );
}

#[tokio::test]
async fn declaring_outside_the_configure_pattern_is_403_naming_user_resource_and_permission() {
    let w = start_with_bob();
    let c = connect(&w, "bob", "s3cret", "app").await.unwrap();
    let ch = c.create_channel().await.unwrap();
    let e = ch
        .queue_declare(
            "orders".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(reply_code(&e), Some(403));
    assert_eq!(
        reply_text(&e),
        "ACCESS_REFUSED - configure access to queue 'orders' in vhost 'app' refused for user 'bob'"
    );
}

#[tokio::test]
async fn consuming_without_read_permission_is_403() {
    let w = start_with_bob();
    let c = connect(&w, "bob", "s3cret", "app").await.unwrap();
    let ch = c.create_channel().await.unwrap();
    let e = ch
        .basic_consume(
            "shared".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(reply_code(&e), Some(403));
    assert_eq!(
        reply_text(&e),
        "ACCESS_REFUSED - read access to queue 'shared' in vhost 'app' refused for user 'bob'"
    );
    let ch = c.create_channel().await.unwrap();
    let e = ch
        .basic_get("shared".into(), BasicGetOptions::default())
        .await
        .unwrap_err();
    assert_eq!(reply_code(&e), Some(403));
}

#[tokio::test]
async fn publishing_needs_write_on_the_exchange() {
    let w = start_with_bob();
    let c = connect(&w, "bob", "s3cret", "app").await.unwrap();
    let ch = c.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch.queue_declare(
        "bob-in".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    // The default exchange is checked as amq.default, which bob may write.
    ch.basic_publish(
        "".into(),
        "bob-in".into(),
        BasicPublishOptions::default(),
        b"ok",
        BasicProperties::default(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let got = ch
        .basic_get("bob-in".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap();
    assert_eq!(got.unwrap().delivery.data, b"ok");
    // amq.direct is outside bob's write pattern.
    let mut watch = support::watch(&c);
    let _ = ch
        .basic_publish(
            "amq.direct".into(),
            "x".into(),
            BasicPublishOptions::default(),
            b"no",
            BasicProperties::default(),
        )
        .await;
    let e = support::channel_error(&ch, &mut watch).await;
    assert_eq!(reply_code(&e), Some(403));
    assert_eq!(
        reply_text(&e),
        "ACCESS_REFUSED - write access to exchange 'amq.direct' in vhost 'app' refused for user 'bob'"
    );
}

#[tokio::test]
async fn binding_needs_write_on_the_queue_and_read_on_the_exchange() {
    let w = start_with_bob();
    let c = connect(&w, "bob", "s3cret", "app").await.unwrap();
    let ch = c.create_channel().await.unwrap();
    ch.queue_declare(
        "bob-b".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let e = ch
        .queue_bind(
            "bob-b".into(),
            "amq.topic".into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        reply_text(&e),
        "ACCESS_REFUSED - read access to exchange 'amq.topic' in vhost 'app' refused for user 'bob'"
    );
}

#[tokio::test]
async fn the_default_user_keeps_full_access_to_the_default_vhost() {
    let w = start_with_bob();
    let (_c, ch) = w.channel().await;
    ch.queue_declare(
        "anything".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
}
