//! Queues: declare rules and flags, server-named queues, counts, exclusive
//! and auto-delete lifetimes, bind/unbind, purge, delete, and the consumer
//! cancel notification a queue deletion causes.

mod common;
mod raw;
mod support;

use std::time::Duration;

use common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};
use support::*;

const LOCKED_TEXT: &str = "It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.";

async fn declare_with(
    ch: &Channel,
    name: &str,
    opts: QueueDeclareOptions,
) -> Result<lapin::Queue, lapin::Error> {
    within(
        "queue.declare reply",
        ch.queue_declare(name.into(), opts, FieldTable::default()),
    )
    .await
}

fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..Default::default()
    }
}

fn exclusive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    }
}

async fn fresh(c: &Connection) -> Channel {
    within("channel.open-ok", c.create_channel())
        .await
        .expect("open channel")
}

#[tokio::test]
async fn queues_declare_with_each_flag_and_passive_declare_finds_them() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    for (suffix, opts) in [
        ("plain", QueueDeclareOptions::default()),
        (
            "durable",
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
        ),
        ("exclusive", exclusive()),
        (
            "autodel",
            QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
        ),
    ] {
        let name = unique(&format!("q-{suffix}"));
        let q = declare_with(&ch, &name, opts)
            .await
            .unwrap_or_else(|e| panic!("declare {name}: {e:?}"));
        assert_eq!(q.name().as_str(), name);
        declare_with(&ch, &name, opts)
            .await
            .unwrap_or_else(|e| panic!("identical redeclare of {name}: {e:?}"));
        // Passive declares ignore flags.
        declare_with(&ch, &name, passive())
            .await
            .unwrap_or_else(|e| panic!("passive declare of {name}: {e:?}"));
    }
}

#[tokio::test]
async fn a_server_named_queue_gets_an_amq_gen_name() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    let a = declare_with(&ch, "", exclusive()).await.unwrap();
    let b = declare_with(&ch, "", exclusive()).await.unwrap();
    for q in [&a, &b] {
        let n = q.name().as_str();
        assert!(n.starts_with("amq.gen-"), "{n}");
        assert_eq!(n.len(), 30, "amq.gen- + 22 characters: {n}");
        assert!(
            n["amq.gen-".len()..]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "base64url characters: {n}"
        );
    }
    assert_ne!(a.name(), b.name());
    // The generated name is usable like any other.
    publish(&ch, "", a.name().as_str(), b"hi").await;
    assert_eq!(drain(&ch, a.name().as_str()).await, [b"hi".to_vec()]);
}

#[tokio::test]
async fn declare_ok_reports_message_and_consumer_counts() {
    let w = Warren::start();
    let c = w.connect().await;
    let ch = fresh(&c).await;
    let q = unique("counts");
    let d = declare(&ch, &q).await;
    assert_eq!((d.message_count(), d.consumer_count()), (0, 0));
    for i in 0..3 {
        publish(&ch, "", &q, format!("{i}").as_bytes()).await;
    }
    let d = declare_with(&ch, &q, passive()).await.unwrap();
    assert_eq!((d.message_count(), d.consumer_count()), (3, 0));

    // Two consumers with prefetch 1 each hold one message: one stays ready.
    let mut held = Vec::new();
    for _ in 0..2 {
        let cch = fresh(&c).await;
        within("basic.qos-ok", cch.basic_qos(1, BasicQosOptions::default()))
            .await
            .unwrap();
        let mut consumer = consume(&cch, &q, false).await;
        next(&mut consumer).await;
        held.push((cch, consumer));
    }
    let d = declare_with(&ch, &q, passive()).await.unwrap();
    assert_eq!((d.message_count(), d.consumer_count()), (1, 2));
    // A non-passive redeclare reports the same.
    let d = declare(&ch, &q).await;
    assert_eq!((d.message_count(), d.consumer_count()), (1, 2));
}

#[tokio::test]
async fn declaring_a_queue_with_the_reserved_amq_prefix_is_403() {
    let w = Warren::start();
    let (c, ch) = w.channel().await;
    let err = declare_with(&ch, "amq.foo", QueueDeclareOptions::default())
        .await
        .expect_err("declare amq.foo");
    assert_eq!(reply_code(&err), Some(403), "{err:?}");
    assert_eq!(
        reply_text(&err),
        "ACCESS_REFUSED - queue name 'amq.foo' contains reserved prefix 'amq.*'"
    );
    // A passive declare of a missing amq.* queue is a plain 404.
    let ch = fresh(&c).await;
    let err = declare_with(&ch, "amq.foo", passive())
        .await
        .expect_err("passive declare amq.foo");
    assert_eq!(reply_code(&err), Some(404), "{err:?}");
}

#[tokio::test]
async fn redeclaring_a_queue_with_other_durability_is_406() {
    let w = Warren::start();
    let (c, ch) = w.channel().await;
    let q = unique("redurable");
    declare(&ch, &q).await;
    let err = declare_with(
        &ch,
        &q,
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
    )
    .await
    .expect_err("redeclare durable");
    assert_eq!(reply_code(&err), Some(406), "{err:?}");
    assert_eq!(
        reply_text(&err),
        format!(
            "PRECONDITION_FAILED - inequivalent arg 'durable' for queue '{q}' in vhost '/': received 'true' but current is 'false'"
        )
    );
    // The queue is unchanged.
    let ch = fresh(&c).await;
    declare(&ch, &q).await;
}

#[tokio::test]
async fn redeclaring_a_queue_with_another_exclusive_flag_is_405() {
    // RabbitMQ reports a changed `exclusive` flag as RESOURCE_LOCKED, not as
    // an inequivalent arg (conformance/RABBITMQ_BEHAVIOUR.md rows 28-29).
    let w = Warren::start();
    let (c, ch) = w.channel().await;
    let shared = unique("was-shared");
    declare(&ch, &shared).await;
    let err = declare_with(&ch, &shared, exclusive())
        .await
        .expect_err("redeclare as exclusive");
    assert_eq!(reply_code(&err), Some(405), "{err:?}");

    let ch = fresh(&c).await;
    let excl = unique("was-exclusive");
    declare_with(&ch, &excl, exclusive()).await.unwrap();
    let err = declare_with(&ch, &excl, QueueDeclareOptions::default())
        .await
        .expect_err("redeclare as non-exclusive");
    assert_eq!(reply_code(&err), Some(405), "{err:?}");
}

#[tokio::test]
async fn another_connections_exclusive_queue_is_locked_with_405() {
    let w = Warren::start();
    let (_owner, och) = w.channel().await;
    let q = unique("mine");
    declare_with(&och, &q, exclusive()).await.unwrap();

    let other = w.connect().await;
    let expect_405 = |what: &'static str, r: Result<(), lapin::Error>| {
        let err = r.expect_err(what);
        assert_eq!(reply_code(&err), Some(405), "{what}: {err:?}");
        assert_eq!(
            reply_text(&err),
            format!(
                "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{q}' in vhost '/'. {LOCKED_TEXT}"
            ),
            "{what}"
        );
    };

    let ch = fresh(&other).await;
    expect_405(
        "declare",
        declare_with(&ch, &q, exclusive()).await.map(|_| ()),
    );
    let ch = fresh(&other).await;
    expect_405(
        "non-exclusive declare",
        declare_with(&ch, &q, QueueDeclareOptions::default())
            .await
            .map(|_| ()),
    );
    let ch = fresh(&other).await;
    expect_405(
        "passive declare",
        declare_with(&ch, &q, passive()).await.map(|_| ()),
    );
    let ch = fresh(&other).await;
    expect_405(
        "consume",
        within(
            "basic.consume reply",
            ch.basic_consume(
                q.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
        .map(|_| ()),
    );
    let ch = fresh(&other).await;
    expect_405(
        "get",
        within(
            "basic.get reply",
            ch.basic_get(q.as_str().into(), BasicGetOptions::default()),
        )
        .await
        .map(|_| ()),
    );
    let ch = fresh(&other).await;
    expect_405(
        "purge",
        within(
            "queue.purge reply",
            ch.queue_purge(q.as_str().into(), Default::default()),
        )
        .await
        .map(|_| ()),
    );
    let ch = fresh(&other).await;
    expect_405(
        "delete",
        within(
            "queue.delete reply",
            ch.queue_delete(q.as_str().into(), Default::default()),
        )
        .await
        .map(|_| ()),
    );
    let ch = fresh(&other).await;
    expect_405(
        "bind",
        within(
            "queue.bind reply",
            ch.queue_bind(
                q.as_str().into(),
                "amq.direct".into(),
                "k".into(),
                Default::default(),
                FieldTable::default(),
            ),
        )
        .await,
    );

    // Publishing to it from another connection is allowed.
    let ch = fresh(&other).await;
    publish(&ch, "", &q, b"from outside").await;
    within(
        "basic.qos-ok (sync point)",
        ch.basic_qos(0, Default::default()),
    )
    .await
    .expect("publishing to another connection's exclusive queue is allowed");
    assert_eq!(drain(&och, &q).await, [b"from outside".to_vec()]);
}

#[tokio::test]
async fn an_exclusive_queue_is_deleted_when_its_connection_closes() {
    let w = Warren::start();
    let observer = w.connect().await;
    let q = unique("excl-gone");
    {
        let (owner, ch) = w.channel().await;
        declare_with(&ch, &q, exclusive()).await.unwrap();
        publish(&ch, "", &q, b"lost").await;
        within("connection.close-ok", owner.close(200, "bye".into()))
            .await
            .unwrap();
    }
    // close-ok is sent after cleanup, so the queue is already gone.
    assert!(!queue_exists(&observer, &q).await);
}

#[tokio::test]
async fn an_exclusive_queue_is_deleted_when_its_connection_drops_without_closing() {
    let w = Warren::start();
    let observer = w.connect().await;
    let q = unique("excl-dropped");
    let port = w.port;
    let q2 = q.clone();
    tokio::task::spawn_blocking(move || {
        use amq_protocol::protocol::{AMQPClass, queue};
        let mut s = raw::connect(port);
        raw::open_channel(&mut s, 1);
        raw::send_method(
            &mut s,
            1,
            &AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: q2.as_str().into(),
                passive: false,
                durable: false,
                exclusive: true,
                auto_delete: false,
                nowait: false,
                arguments: Default::default(),
            })),
        );
        match raw::read_method(&mut s) {
            (1, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))) => {}
            other => panic!("expected declare-ok, got {other:?}"),
        }
        // Hang up without connection.close.
        s.shutdown(std::net::Shutdown::Both).unwrap();
    })
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while queue_exists(&observer, &q).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "exclusive queue survived its dropped connection"
        );
        // Polling: there is no event to await for another client's TCP drop.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_auto_delete_queue_is_deleted_when_its_last_consumer_cancels() {
    let w = Warren::start();
    let c = w.connect().await;
    let ch = fresh(&c).await;
    let q = unique("autodel");
    declare_with(
        &ch,
        &q,
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // Never consumed: it stays.
    assert!(queue_exists(&c, &q).await);

    let a = consume(&ch, &q, true).await;
    let b = consume(&ch, &q, true).await;
    within(
        "basic.cancel-ok",
        ch.basic_cancel(a.tag(), Default::default()),
    )
    .await
    .unwrap();
    assert!(queue_exists(&c, &q).await, "one consumer is left");
    within(
        "basic.cancel-ok",
        ch.basic_cancel(b.tag(), Default::default()),
    )
    .await
    .unwrap();
    let err = declare_with(&fresh(&c).await, &q, passive())
        .await
        .expect_err("the auto-delete queue must be gone");
    assert_eq!(reply_code(&err), Some(404), "{err:?}");
}

#[tokio::test]
async fn an_auto_delete_queue_is_deleted_when_its_consumers_channel_closes() {
    let w = Warren::start();
    let c = w.connect().await;
    let ch = fresh(&c).await;
    let q = unique("autodel-chan");
    declare_with(
        &ch,
        &q,
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let cch = fresh(&c).await;
    let _consumer = consume(&cch, &q, true).await;
    within("channel.close-ok", cch.close(200, "bye".into()))
        .await
        .unwrap();
    assert!(!queue_exists(&c, &q).await);
}

#[tokio::test]
async fn bind_and_unbind_control_what_a_queue_receives() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    let q = unique("bindme");
    declare(&ch, &q).await;
    bind(&ch, &q, "amq.direct", "k1").await;
    bind(&ch, &q, "amq.direct", "k2").await;
    bind(&ch, &q, "amq.direct", "k2").await; // idempotent
    publish(&ch, "amq.direct", "k1", b"a").await;
    publish(&ch, "amq.direct", "k2", b"b").await;
    publish(&ch, "amq.direct", "k3", b"c").await;
    assert_eq!(drain_strings(&ch, &q).await, ["a", "b"]);

    within(
        "queue.unbind-ok",
        ch.queue_unbind(
            q.as_str().into(),
            "amq.direct".into(),
            "k1".into(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    // Unbinding what is not bound is fine.
    within(
        "queue.unbind-ok",
        ch.queue_unbind(
            q.as_str().into(),
            "amq.direct".into(),
            "nope".into(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    publish(&ch, "amq.direct", "k1", b"d").await;
    publish(&ch, "amq.direct", "k2", b"e").await;
    assert_eq!(drain_strings(&ch, &q).await, ["e"]);
}

#[tokio::test]
async fn binding_to_a_missing_exchange_or_queue_is_404() {
    let w = Warren::start();
    let c = w.connect().await;
    let ch = fresh(&c).await;
    let q = unique("b404");
    declare(&ch, &q).await;
    let err = within(
        "queue.bind reply",
        ch.queue_bind(
            q.as_str().into(),
            "nox".into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect_err("bind to missing exchange");
    assert_eq!(reply_code(&err), Some(404));
    assert_eq!(
        reply_text(&err),
        "NOT_FOUND - no exchange 'nox' in vhost '/'"
    );

    let ch = fresh(&c).await;
    let err = within(
        "queue.bind reply",
        ch.queue_bind(
            "noq".into(),
            "amq.direct".into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect_err("bind missing queue");
    assert_eq!(reply_code(&err), Some(404));
    assert_eq!(reply_text(&err), "NOT_FOUND - no queue 'noq' in vhost '/'");

    // Both missing: RabbitMQ reports the exchange.
    let ch = fresh(&c).await;
    let err = within(
        "queue.bind reply",
        ch.queue_bind(
            "noq".into(),
            "nox".into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect_err("bind missing queue to missing exchange");
    assert_eq!(
        reply_text(&err),
        "NOT_FOUND - no exchange 'nox' in vhost '/'"
    );
}

#[tokio::test]
async fn purge_returns_the_number_of_messages_purged() {
    let w = Warren::start();
    let c = w.connect().await;
    let ch = fresh(&c).await;
    let q = unique("purge");
    declare(&ch, &q).await;
    for _ in 0..7 {
        publish(&ch, "", &q, b"x").await;
    }
    let n = within(
        "queue.purge-ok",
        ch.queue_purge(q.as_str().into(), Default::default()),
    )
    .await
    .unwrap();
    assert_eq!(n, 7);
    let d = declare_with(&ch, &q, passive()).await.unwrap();
    assert_eq!(d.message_count(), 0);
    let n = within(
        "queue.purge-ok",
        ch.queue_purge(q.as_str().into(), Default::default()),
    )
    .await
    .unwrap();
    assert_eq!(n, 0);
    let err = within(
        "queue.purge reply",
        ch.queue_purge("missing".into(), Default::default()),
    )
    .await
    .expect_err("purge of a missing queue");
    assert_eq!(reply_code(&err), Some(404));
}

#[tokio::test]
async fn deleting_a_consumed_queue_with_if_unused_is_406() {
    let w = Warren::start();
    let c = w.connect().await;
    let ch = fresh(&c).await;
    let q = unique("inuse");
    declare(&ch, &q).await;
    let _consumer = consume(&ch, &q, true).await;
    let dch = fresh(&c).await;
    let err = within(
        "queue.delete reply",
        dch.queue_delete(
            q.as_str().into(),
            QueueDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        ),
    )
    .await
    .expect_err("delete if_unused with a consumer");
    assert_eq!(reply_code(&err), Some(406), "{err:?}");
    assert_eq!(
        reply_text(&err),
        format!("PRECONDITION_FAILED - queue '{q}' in vhost '/' in use")
    );
    assert!(queue_exists(&c, &q).await);
}

#[tokio::test]
async fn deleting_a_non_empty_queue_with_if_empty_is_406() {
    let w = Warren::start();
    let c = w.connect().await;
    let ch = fresh(&c).await;
    let q = unique("full");
    declare(&ch, &q).await;
    publish(&ch, "", &q, b"x").await;
    let err = within(
        "queue.delete reply",
        ch.queue_delete(
            q.as_str().into(),
            QueueDeleteOptions {
                if_empty: true,
                ..Default::default()
            },
        ),
    )
    .await
    .expect_err("delete if_empty with a message");
    assert_eq!(reply_code(&err), Some(406), "{err:?}");
    assert_eq!(
        reply_text(&err),
        format!("PRECONDITION_FAILED - queue '{q}' in vhost '/' not empty")
    );
    let ch = fresh(&c).await;
    let d = declare_with(&ch, &q, passive()).await.unwrap();
    assert_eq!(d.message_count(), 1, "the refused delete kept the message");
}

#[tokio::test]
async fn delete_returns_the_message_count_and_a_missing_queue_deletes_fine() {
    let w = Warren::start();
    let c = w.connect().await;
    let ch = fresh(&c).await;
    let q = unique("deleteme");
    declare(&ch, &q).await;
    publish(&ch, "", &q, b"1").await;
    publish(&ch, "", &q, b"2").await;
    let n = within(
        "queue.delete-ok",
        ch.queue_delete(q.as_str().into(), Default::default()),
    )
    .await
    .unwrap();
    assert_eq!(n, 2);
    assert!(!queue_exists(&c, &q).await);
    let n = within(
        "queue.delete-ok",
        ch.queue_delete(q.as_str().into(), Default::default()),
    )
    .await
    .expect("deleting a missing queue succeeds");
    assert_eq!(n, 0);
}

#[tokio::test]
async fn passive_declare_of_a_missing_queue_is_404() {
    let w = Warren::start();
    let (c, ch) = w.channel().await;
    let err = declare_with(&ch, "orders", passive())
        .await
        .expect_err("passive declare of a missing queue");
    assert_eq!(reply_code(&err), Some(404), "{err:?}");
    assert_eq!(
        reply_text(&err),
        "NOT_FOUND - no queue 'orders' in vhost '/'"
    );
    assert!(c.status().connected());
}

#[tokio::test]
async fn deleting_a_queue_cancels_its_consumers_on_other_connections() {
    let w = Warren::start();
    let (_cc, cch) = w.channel().await;
    let (_dc, dch) = w.channel().await;
    let q = unique("doomed");
    declare(&dch, &q).await;
    let mut consumer = consume(&cch, &q, false).await;
    publish(&dch, "", &q, b"before").await;
    let d = next(&mut consumer).await;
    assert_eq!(d.data, b"before");

    within(
        "queue.delete-ok",
        dch.queue_delete(q.as_str().into(), Default::default()),
    )
    .await
    .unwrap();
    // lapin announces consumer_cancel_notify: the server's basic.cancel
    // ends the consumer stream.
    let end = within(
        "the consumer stream to end (server basic.cancel)",
        consumer.next(),
    )
    .await;
    assert!(end.is_none(), "expected the stream to end, got {end:?}");
    // The consumer's channel stays open and usable.
    assert!(cch.status().connected());
    declare(&cch, &unique("after-cancel")).await;
    // Its consumer tag may be reused now that the server cancelled it.
    let q2 = unique("reuse-tag");
    declare(&cch, &q2).await;
    within(
        "basic.consume-ok",
        cch.basic_consume(
            q2.as_str().into(),
            consumer.tag(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("reuse a server-cancelled consumer tag");
}

#[tokio::test]
async fn an_empty_queue_name_means_the_channels_last_declared_queue() {
    let w = Warren::start();
    let c = w.connect().await;
    let ch = fresh(&c).await;
    let err = within(
        "queue.bind reply",
        ch.queue_bind(
            "".into(),
            "amq.direct".into(),
            "k".into(),
            Default::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect_err("bind with no previously declared queue");
    assert_eq!(reply_code(&err), Some(404));
    assert_eq!(reply_text(&err), "NOT_FOUND - no previously declared queue");

    let ch = fresh(&c).await;
    let q = unique("last");
    declare(&ch, &q).await;
    bind(&ch, "", "amq.direct", "last-key").await;
    publish(&ch, "amq.direct", "last-key", b"found").await;
    assert_eq!(drain_strings(&ch, &q).await, ["found"]);
}

#[tokio::test]
async fn redeclaring_with_a_different_x_message_ttl_is_406() {
    let w = Warren::start();
    let c = w.connect().await;
    let ch = fresh(&c).await;
    let q = unique("ttl");
    let mut args = FieldTable::default();
    args.insert("x-message-ttl".into(), AMQPValue::LongInt(1000));
    within(
        "queue.declare-ok",
        ch.queue_declare(q.as_str().into(), Default::default(), args.clone()),
    )
    .await
    .unwrap();
    // Same value as another integer width is equivalent.
    let mut wide = FieldTable::default();
    wide.insert("x-message-ttl".into(), AMQPValue::LongLongInt(1000));
    within(
        "queue.declare-ok",
        ch.queue_declare(q.as_str().into(), Default::default(), wide),
    )
    .await
    .expect("int64 1000 is equivalent to int32 1000");
    let mut other = FieldTable::default();
    other.insert("x-message-ttl".into(), AMQPValue::LongInt(2000));
    let err = within(
        "queue.declare reply",
        ch.queue_declare(q.as_str().into(), Default::default(), other),
    )
    .await
    .expect_err("redeclare with another ttl");
    assert_eq!(reply_code(&err), Some(406));
    assert_eq!(
        reply_text(&err),
        format!(
            "PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue '{q}' in vhost '/': received '2000' but current is '1000'"
        )
    );
}
