//! `[limits]`: connections per node and per vhost, queues per vhost,
//! consumers per channel, bytes per transaction, connections still in
//! their handshake; each refused with RabbitMQ's code and a clear text,
//! without disturbing what is already open.

mod common;
mod raw;
mod support;

use std::time::Duration;

use common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};

/// Publishes one message to `queue` and reads it back with basic.consume.
async fn round_trip(ch: &Channel, queue: &str) {
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    ch.basic_publish(
        "".into(),
        queue.into(),
        BasicPublishOptions::default(),
        b"hello",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("a delivery")
        .unwrap()
        .unwrap();
    assert_eq!(d.data, b"hello");
    ch.basic_cancel(
        consumer.tag().as_str().into(),
        BasicCancelOptions::default(),
    )
    .await
    .unwrap();
}

/// Runs the raw handshake up to connection.open and returns the close the
/// broker answers open with.
fn refused_open(port: u16, vhost: &str) -> (u16, String, u16, u16) {
    let (mut s, _) = raw::start(port);
    raw::start_ok(&mut s, "PLAIN", &raw::plain("guest", "guest"));
    let t = raw::expect_tune(&mut s);
    raw::tune_ok(&mut s, t.channel_max, t.frame_max, 0);
    raw::open(&mut s, vhost);
    let c = raw::expect_close_full(&mut s);
    (
        c.reply_code,
        c.reply_text.as_str().to_owned(),
        c.class_id,
        c.method_id,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_connections_are_refused_with_530() {
    let w = Warren::start_with("[limits]\nmax_connections = 3\n");
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(w.channel().await);
    }
    let port = w.port;
    let (code, text, class, method) = tokio::task::spawn_blocking(move || refused_open(port, "/"))
        .await
        .unwrap();
    assert_eq!(code, 530);
    assert_eq!(text, "NOT_ALLOWED - connection limit (3) is reached");
    assert_eq!((class, method), (10, 40));
    // lapin sees the same refusal.
    let Err(e) = lapin::Connection::connect(&w.url(), lapin::ConnectionProperties::default()).await
    else {
        panic!("the fourth connection is accepted");
    };
    assert_eq!(reply_code(&e), Some(530), "{e}");
    // The first three keep working.
    for (i, (_c, ch)) in open.iter().enumerate() {
        round_trip(ch, &unique(&format!("limit-conn-{i}"))).await;
    }
    // Closing one frees a slot.
    let (c, ch) = open.pop().unwrap();
    drop(ch);
    let _ = c.close(200, "bye".into()).await;
    // The broker forgets the connection just after close-ok.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let conn = loop {
        match lapin::Connection::connect(&w.url(), lapin::ConnectionProperties::default()).await {
            Ok(c) => break c,
            Err(e) if std::time::Instant::now() < deadline => {
                assert_eq!(reply_code(&e), Some(530), "{e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no slot after closing a connection: {e}"),
        }
    };
    let ch = conn.create_channel().await.unwrap();
    round_trip(&ch, &unique("limit-conn-again")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_connections_per_vhost_are_refused_with_530() {
    let w = Warren::start_with("[limits]\nmax_connections_per_vhost = 2\n");
    let (s, _) = w.api("PUT", "/api/vhosts/other", None);
    assert!(s == 201 || s == 204, "create vhost: {s}");
    let (s, _) = w.api(
        "PUT",
        "/api/permissions/other/guest",
        Some(&serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"})),
    );
    assert!(s == 201 || s == 204, "set permissions: {s}");
    let a = w.channel().await;
    let b = w.channel().await;
    let port = w.port;
    let (code, text, _, _) = tokio::task::spawn_blocking(move || refused_open(port, "/"))
        .await
        .unwrap();
    assert_eq!(code, 530);
    assert_eq!(
        text,
        "NOT_ALLOWED - access to vhost '/' refused: connection limit (2) is reached"
    );
    // Another vhost has its own count.
    let other = lapin::Connection::connect(
        &format!("amqp://guest:guest@127.0.0.1:{}/other", w.port),
        lapin::ConnectionProperties::default(),
    )
    .await
    .expect("a connection to another vhost");
    let och = other.create_channel().await.unwrap();
    round_trip(&och, "in-other").await;
    round_trip(&a.1, &unique("vh-a")).await;
    round_trip(&b.1, &unique("vh-b")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_beyond_max_queues_per_vhost_are_refused_with_406() {
    let w = Warren::start_with("[limits]\nmax_queues_per_vhost = 2\n");
    let (_c, ch) = w.channel().await;
    for q in ["lq1", "lq2"] {
        ch.queue_declare(
            q.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    // Redeclaring an existing queue is fine at the limit.
    ch.queue_declare(
        "lq1".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let e = ch
        .queue_declare(
            "lq3".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(reply_code(&e), Some(406), "{e}");
    assert_eq!(
        reply_text(&e),
        "PRECONDITION_FAILED - cannot declare queue 'lq3': queue limit in vhost '/' (2) is reached"
    );
    // Only the channel closed; deleting a queue frees a slot.
    let ch = _c.create_channel().await.unwrap();
    ch.queue_delete("lq2".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    ch.queue_declare(
        "lq3".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_beyond_max_consumers_per_channel_are_refused_with_530() {
    let w = Warren::start_with("[limits]\nmax_consumers_per_channel = 2\n");
    let (other_conn, other) = w.channel().await;
    let (c, ch) = w.channel().await;
    ch.queue_declare(
        "cq".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut consumers = Vec::new();
    for _ in 0..2 {
        consumers.push(
            ch.basic_consume(
                "cq".into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap(),
        );
    }
    let e = ch
        .basic_consume(
            "cq".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(reply_code(&e), Some(530), "{e}");
    assert_eq!(
        reply_text(&e),
        "NOT_ALLOWED - reached maximum (2) of consumers per channel"
    );
    drop(c);
    // Other connections are unaffected, and a channel's limit is its own.
    round_trip(&other, &unique("cons-other")).await;
    let ch2 = other_conn.create_channel().await.unwrap();
    round_trip(&ch2, &unique("cons-other-2")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_beyond_max_consumers_per_queue_are_refused_with_406() {
    let w = Warren::start_with("[limits]\nmax_consumers_per_queue = 3\n");
    let queue = unique("perq");
    let (_c1, ch1) = w.channel().await;
    let (c2, ch2) = w.channel().await;
    support::declare(&ch1, &queue).await;
    // Three consumers from two connections fill the queue's limit.
    let mut consumers = Vec::new();
    for ch in [&ch1, &ch1, &ch2] {
        consumers.push(
            ch.basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap(),
        );
    }
    let ch3 = c2.create_channel().await.unwrap();
    let e = ch3
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(reply_code(&e), Some(406), "{e}");
    assert_eq!(
        reply_text(&e),
        format!(
            "PRECONDITION_FAILED - reached maximum (3) of consumers on queue '{queue}' in vhost '/'"
        )
    );
    // A channel error: the connection goes on, and a cancelled consumer
    // makes room.
    ch2.basic_cancel(consumers[2].tag(), BasicCancelOptions::default())
        .await
        .unwrap();
    let ch4 = c2.create_channel().await.unwrap();
    ch4.basic_consume(
        queue.as_str().into(),
        "".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("a consumer after one was cancelled");
    // Another queue is not affected.
    round_trip(&ch1, &unique("perq-other")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_over_max_tx_bytes_is_closed_with_406_and_rolled_back() {
    let w = Warren::start_with("[limits]\nmax_tx_bytes = 1048576\n");
    let (c, ch) = w.channel().await;
    let q = unique("big-tx");
    support::declare(&ch, &q).await;
    let mut watch = support::watch(&c);
    support::within("tx.select-ok", ch.tx_select())
        .await
        .unwrap();
    // Ten 200 KiB messages: the sixth takes the transaction past 1 MiB.
    let body = vec![3u8; 200 * 1024];
    for _ in 0..10 {
        if ch
            .basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default(),
            )
            .await
            .is_err()
        {
            break;
        }
    }
    let e = support::channel_error(&ch, &mut watch).await;
    assert_eq!(reply_code(&e), Some(406));
    assert_eq!(
        reply_text(&e),
        "PRECONDITION_FAILED - transaction holds more than 1048576 bytes of messages (limits.max_tx_bytes); commit smaller transactions"
    );
    // Nothing of it was published, and the connection goes on.
    let ch2 = c.create_channel().await.unwrap();
    assert!(support::get(&ch2, &q).await.is_none());
    support::within("tx.select-ok", ch2.tx_select())
        .await
        .unwrap();
    support::publish(&ch2, "", &q, &body[..1000]).await;
    support::within("tx.commit-ok", ch2.tx_commit())
        .await
        .unwrap();
    assert!(support::get(&ch2, &q).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_that_never_finish_the_handshake_are_capped_from_accept_on() {
    let w = Warren::start_with("[limits]\nmax_handshaking_connections = 50\n");
    let (_c, ch) = w.channel().await;
    let port = w.port;
    // 50 sockets that connect and never send a byte, and 1 more.
    let (idle, mut extra) = tokio::task::spawn_blocking(move || {
        let idle: Vec<_> = (0..50).map(|_| raw::tcp(port)).collect();
        std::thread::sleep(Duration::from_millis(200));
        (idle, raw::tcp(port))
    })
    .await
    .unwrap();
    // The 51st is closed at once, before any connection.start.
    let closed = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut b = [0u8; 1];
        matches!(extra.read(&mut b), Ok(0))
            || matches!(extra.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
    })
    .await
    .unwrap();
    assert!(closed, "a socket beyond the cap was served");
    // Connections already open are not affected.
    round_trip(&ch, "still-open").await;
    // Once the idle sockets go, new connections are served again.
    drop(idle);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match lapin::Connection::connect(&w.url(), lapin::ConnectionProperties::default()).await {
            Ok(c) => {
                let ch = c.create_channel().await.unwrap();
                round_trip(&ch, "after-idle").await;
                break;
            }
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no connection after the idle sockets closed: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
