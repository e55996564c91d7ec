//! Quorum queues (`x-queue-type: quorum`) on one node, as RabbitMQ 3.10.8
//! answers its clients (conformance/probe_quorum.py and
//! RABBITMQ_BEHAVIOUR.md, "Quorum queues"): declare refusals, the
//! x-delivery-count header, x-delivery-limit with dead-lettering (reason
//! delivery_limit), returns to the back of the queue, global QoS refused,
//! reject-publish one over the limit, and transient messages kept across a
//! crash.

mod common;
mod support;

use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel};
use support::*;

fn qq(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    t.insert("x-queue-type".into(), s("quorum"));
    for (k, v) in pairs {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v.as_bytes().to_vec()))
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

async fn declare(
    ch: &Channel,
    name: &str,
    opts: QueueDeclareOptions,
    args: FieldTable,
) -> Result<lapin::Queue, lapin::Error> {
    within(
        "queue.declare reply",
        ch.queue_declare(name.into(), opts, args),
    )
    .await
}

/// The refusal a declare gets: (code, text).
async fn refusal(
    w: &Warren,
    name: &str,
    opts: QueueDeclareOptions,
    args: FieldTable,
) -> (u16, String) {
    let conn = w.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let e = declare(&ch, name, opts, args).await.expect_err("refused");
    (reply_code(&e).unwrap_or(0), reply_text(&e))
}

fn delivery_count(props: &BasicProperties) -> Option<i64> {
    match props.headers().as_ref()?.inner().get("x-delivery-count")? {
        AMQPValue::LongLongInt(n) => Some(*n),
        other => panic!("x-delivery-count of type {other:?}"),
    }
}

async fn publish_with(ch: &Channel, queue: &str, body: &[u8], props: BasicProperties) {
    within(
        "basic.publish",
        ch.basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            props,
        ),
    )
    .await
    .expect("publish")
    .await
    .expect("confirm");
}

async fn confirm_channel(conn: &lapin::Connection) -> Channel {
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch
}

#[tokio::test]
async fn declarations_are_checked_as_rabbitmq_checks_quorum_queues() {
    let w = Warren::start();
    let cases: Vec<(QueueDeclareOptions, FieldTable, &str)> = vec![
        (
            QueueDeclareOptions::default(),
            qq(&[]),
            "PRECONDITION_FAILED - invalid property 'non-durable' for queue 'q1' in vhost '/'",
        ),
        (
            QueueDeclareOptions {
                exclusive: true,
                ..durable()
            },
            qq(&[]),
            "PRECONDITION_FAILED - invalid property 'exclusive-owner' for queue 'q1' in vhost '/'",
        ),
        (
            QueueDeclareOptions {
                auto_delete: true,
                ..durable()
            },
            qq(&[]),
            "PRECONDITION_FAILED - invalid property 'auto-delete' for queue 'q1' in vhost '/'",
        ),
        (
            durable(),
            qq(&[("x-max-priority", AMQPValue::LongInt(5))]),
            "PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue 'q1' in vhost '/' of queue type rabbit_quorum_queue",
        ),
        (
            durable(),
            qq(&[("x-queue-mode", s("lazy"))]),
            "PRECONDITION_FAILED - invalid arg 'x-queue-mode' for queue 'q1' in vhost '/' of queue type rabbit_quorum_queue",
        ),
        (
            durable(),
            qq(&[("x-dead-letter-strategy", s("bogus"))]),
            "PRECONDITION_FAILED - invalid arg 'x-dead-letter-strategy' for queue 'q1' in vhost '/': invalid_dlx_strategy",
        ),
        (
            durable(),
            qq(&[("x-quorum-initial-group-size", AMQPValue::LongInt(0))]),
            "PRECONDITION_FAILED - invalid arg 'x-quorum-initial-group-size' for queue 'q1' in vhost '/': {value_zero,0}",
        ),
    ];
    for (opts, args, text) in cases {
        assert_eq!(refusal(&w, "q1", opts, args).await, (406, text.to_owned()));
    }
    let (code, text) = refusal(&w, "", durable(), qq(&[])).await;
    assert_eq!(
        (code, text.as_str()),
        (
            406,
            "PRECONDITION_FAILED - Cannot declare a server-named queue for type rabbit_quorum_queue"
        )
    );

    // What RabbitMQ accepts, and the arguments it compares on redeclare.
    let conn = w.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let ok = qq(&[
        ("x-delivery-limit", AMQPValue::LongInt(3)),
        ("x-dead-letter-strategy", s("at-least-once")),
        ("x-quorum-initial-group-size", AMQPValue::LongInt(3)),
        ("x-overflow", s("reject-publish")),
        ("x-single-active-consumer", AMQPValue::Boolean(true)),
    ]);
    declare(&ch, "q2", durable(), ok.clone()).await.unwrap();
    declare(&ch, "q2", durable(), ok).await.unwrap();
    let e = declare(
        &ch,
        "q2",
        durable(),
        qq(&[("x-delivery-limit", AMQPValue::LongInt(4))]),
    )
    .await
    .unwrap_err();
    assert_eq!(reply_code(&e), Some(406));
    assert!(
        reply_text(&e)
            .starts_with("PRECONDITION_FAILED - inequivalent arg 'x-dead-letter-strategy'")
            || reply_text(&e)
                .starts_with("PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit'"),
        "{}",
        reply_text(&e)
    );
    let (_, v) = w.api("GET", "/api/queues/%2f/q2", None);
    assert_eq!(v["type"], "quorum", "{v}");
    assert_eq!(v["members"].as_array().map(Vec::len), Some(1), "{v}");
}

#[tokio::test]
async fn deliveries_count_returns_and_the_delivery_limit_dead_letters_without_the_count() {
    let w = Warren::start();
    let conn = w.connect().await;
    let ch = confirm_channel(&conn).await;
    declare(&ch, "dlq", durable(), FieldTable::default())
        .await
        .unwrap();
    let args = qq(&[
        ("x-delivery-limit", AMQPValue::LongInt(2)),
        ("x-dead-letter-exchange", s("")),
        ("x-dead-letter-routing-key", s("dlq")),
    ]);
    declare(&ch, "limited", durable(), args).await.unwrap();
    publish_with(&ch, "limited", b"x", BasicProperties::default()).await;
    // Delivered with counts 0, 1, 2 (redelivered after the first), then the
    // third return passes the limit of 2.
    for n in 0..3 {
        let m = get_eventually(&ch, "limited").await;
        assert_eq!(delivery_count(&m.delivery.properties), Some(n));
        assert_eq!(m.delivery.redelivered, n > 0);
        m.delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await
            .unwrap();
    }
    let dead = get_eventually(&ch, "dlq").await;
    assert_eq!(dead.delivery.data, b"x");
    let headers = dead.delivery.properties.headers().clone().unwrap();
    assert!(
        !headers.inner().contains_key("x-delivery-count"),
        "{headers:?}"
    );
    assert_eq!(
        headers.inner().get("x-first-death-reason"),
        Some(&s("delivery_limit"))
    );
    let AMQPValue::FieldArray(deaths) = headers.inner().get("x-death").unwrap() else {
        panic!("x-death");
    };
    let AMQPValue::FieldTable(d) = &deaths.as_slice()[0] else {
        panic!("x-death entry");
    };
    assert_eq!(d.inner().get("reason"), Some(&s("delivery_limit")));
    assert_eq!(d.inner().get("queue"), Some(&s("limited")));
    assert!(get(&ch, "limited").await.is_none());

    // Without a dead-letter exchange the message is dropped; a channel
    // closing with it unacked counts as a return too.
    declare(
        &ch,
        "limit1",
        durable(),
        qq(&[("x-delivery-limit", AMQPValue::LongInt(1))]),
    )
    .await
    .unwrap();
    publish_with(&ch, "limit1", b"y", BasicProperties::default()).await;
    let m = get_eventually(&ch, "limit1").await;
    m.delivery
        .reject(BasicRejectOptions { requeue: true })
        .await
        .unwrap();
    let other = conn.create_channel().await.unwrap();
    let m = get_eventually(&other, "limit1").await;
    assert_eq!(delivery_count(&m.delivery.properties), Some(1));
    other.close(200, "bye".into()).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(get(&ch, "limit1").await.is_none(), "dropped past the limit");
}

#[tokio::test]
async fn a_returned_message_goes_to_the_back_and_priorities_are_ignored() {
    let w = Warren::start();
    let conn = w.connect().await;
    let ch = confirm_channel(&conn).await;
    declare(&ch, "order", durable(), qq(&[])).await.unwrap();
    for (body, p) in [(b"r0", 1u8), (b"r1", 9), (b"r2", 5)] {
        let props = BasicProperties::default().with_priority(p);
        publish_with(&ch, "order", body, props).await;
    }
    let first = get_eventually(&ch, "order").await;
    assert_eq!(first.delivery.data, b"r0");
    first
        .delivery
        .nack(BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        })
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Some(m) = get(&ch, "order").await {
        got.push(String::from_utf8(m.delivery.data.clone()).unwrap());
        m.delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    assert_eq!(got, ["r1", "r2", "r0"]);
}

#[tokio::test]
async fn consuming_with_a_global_prefetch_closes_the_connection_with_540() {
    let w = Warren::start();
    let conn = w.connect().await;
    let ch = conn.create_channel().await.unwrap();
    declare(&ch, "gq", durable(), qq(&[])).await.unwrap();
    ch.basic_qos(5, BasicQosOptions { global: true })
        .await
        .unwrap();
    let e = within(
        "basic.consume reply",
        ch.basic_consume(
            "gq".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect_err("refused");
    assert_eq!(reply_code(&e), Some(540));
    assert_eq!(
        reply_text(&e),
        "NOT_IMPLEMENTED - queue 'gq' in vhost '/' does not support global qos"
    );
    // The broker goes on serving others.
    let conn = w.connect().await;
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(5, BasicQosOptions { global: false })
        .await
        .unwrap();
    ch.basic_consume(
        "gq".into(),
        "".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("a per-consumer prefetch is fine");
}

#[tokio::test]
async fn reject_publish_takes_one_message_over_the_limit_as_rabbitmq_does() {
    let w = Warren::start();
    let conn = w.connect().await;
    let ch = confirm_channel(&conn).await;
    let args = qq(&[
        ("x-max-length", AMQPValue::LongInt(2)),
        ("x-overflow", s("reject-publish")),
    ]);
    declare(&ch, "rp", durable(), args).await.unwrap();
    let mut acks = Vec::new();
    for i in 0..5 {
        let c = ch
            .basic_publish(
                "".into(),
                "rp".into(),
                BasicPublishOptions::default(),
                format!("m{i}").as_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        acks.push(c.is_ack());
    }
    assert_eq!(acks, [true, true, true, false, false]);
    let q = declare(
        &ch,
        "rp",
        QueueDeclareOptions {
            passive: true,
            ..durable()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    assert_eq!(q.message_count(), 3);
}

#[tokio::test]
async fn transient_messages_in_a_quorum_queue_survive_a_crash() {
    let mut w = Warren::start();
    {
        let conn = w.connect().await;
        let ch = confirm_channel(&conn).await;
        declare(&ch, "keep", durable(), qq(&[])).await.unwrap();
        declare(&ch, "classic", durable(), FieldTable::default())
            .await
            .unwrap();
        for q in ["keep", "classic"] {
            for i in 0..50 {
                // delivery_mode 1: a classic queue forgets these at a restart.
                let props = BasicProperties::default().with_delivery_mode(1);
                publish_with(&ch, q, format!("{q}{i}").as_bytes(), props).await;
            }
        }
    }
    w.kill();
    w.restart();
    let conn = w.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let mut got = Vec::new();
    while let Some(m) = get(&ch, "keep").await {
        got.push(String::from_utf8(m.delivery.data.clone()).unwrap());
        assert_eq!(delivery_count(&m.delivery.properties), Some(0));
        m.delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    let want: Vec<String> = (0..50).map(|i| format!("keep{i}")).collect();
    assert_eq!(got, want);
    assert!(get(&ch, "classic").await.is_none());
}

/// Declares durable queue `queue` and binds it to `exchange`.
async fn declare_bound(ch: &Channel, queue: &str, exchange: &str) {
    declare(ch, queue, durable(), FieldTable::default())
        .await
        .unwrap();
    within(
        "queue.bind",
        ch.queue_bind(
            queue.into(),
            exchange.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
}

/// The queue's HTTP listing as JSON.
fn queue_info(w: &Warren, name: &str) -> serde_json::Value {
    let (status, _, body) = http(
        &w.http_url(),
        Some(("guest", "guest")),
        "GET",
        &format!("/api/queues/%2F/{name}"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// At-least-once dead-lettering, as RabbitMQ 3.10.8 does it (probed:
/// RABBITMQ_BEHAVIOUR.md, "At-least-once dead-lettering"): with
/// x-dead-letter-strategy at-least-once and x-overflow reject-publish, a
/// rejected or expired message that no queue takes stays with its queue
/// (not ready: declare-ok does not count it; `messages_dlx` does) until a
/// queue takes it; without reject-publish the strategy falls back to at
/// most once and such a message is dropped.
#[tokio::test]
async fn at_least_once_dead_letters_wait_for_a_queue_to_take_them() {
    let w = Warren::start();
    let conn = w.connect().await;
    let ch = confirm_channel(&conn).await;
    within(
        "exchange.declare",
        ch.exchange_declare(
            "alo.dlx".into(),
            lapin::ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    let dlx = |extra: &[(&str, AMQPValue)]| {
        let mut a = vec![
            ("x-dead-letter-exchange", s("alo.dlx")),
            ("x-dead-letter-strategy", s("at-least-once")),
        ];
        a.extend(extra.iter().cloned());
        qq(&a)
    };
    let reject_publish = ("x-overflow", s("reject-publish"));
    declare(
        &ch,
        "alo.src",
        durable(),
        dlx(std::slice::from_ref(&reject_publish)),
    )
    .await
    .unwrap();
    declare(
        &ch,
        "alo.ttl",
        durable(),
        dlx(&[reject_publish, ("x-message-ttl", AMQPValue::LongInt(50))]),
    )
    .await
    .unwrap();
    declare(&ch, "amo.src", durable(), dlx(&[])).await.unwrap();
    for q in ["alo.src", "amo.src"] {
        for i in 0..3 {
            publish_with(
                &ch,
                q,
                format!("{q}-{i}").as_bytes(),
                BasicProperties::default(),
            )
            .await;
        }
        for _ in 0..3 {
            let m = get_eventually(&ch, q).await;
            m.delivery
                .reject(BasicRejectOptions { requeue: false })
                .await
                .unwrap();
        }
    }
    publish_with(&ch, "alo.ttl", b"alo.ttl-0", BasicProperties::default()).await;

    // Nowhere to go: held by the at-least-once queues, gone from the other.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (a, t) = (queue_info(&w, "alo.src"), queue_info(&w, "alo.ttl"));
        if a["messages_dlx"] == 3 && t["messages_dlx"] == 1 {
            assert_eq!(a["messages"], 3);
            assert_eq!(a["messages_ready"], 0);
            assert_eq!(a["message_bytes_dlx"], 3 * "alo.src-0".len());
            break;
        }
        assert!(std::time::Instant::now() < deadline, "held: {a} {t}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let passive = QueueDeclareOptions {
        passive: true,
        ..durable()
    };
    let q = declare(&ch, "alo.src", passive, FieldTable::default())
        .await
        .unwrap();
    assert_eq!(q.message_count(), 0, "held messages are not ready");
    assert_eq!(queue_info(&w, "amo.src")["messages"], 0);

    // A queue appears: the held messages reach it, once each, with their
    // x-death, and leave their queue.
    declare_bound(&ch, "alo.dlq", "alo.dlx").await;
    let mut got = Vec::new();
    for _ in 0..4 {
        let m = get_eventually(&ch, "alo.dlq").await;
        let h = m.delivery.properties.headers().clone().unwrap();
        got.push((
            String::from_utf8(m.delivery.data.clone()).unwrap(),
            h.inner().get("x-first-death-reason").cloned(),
        ));
        m.delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let want: Vec<(String, Option<AMQPValue>)> = ["alo.src-0", "alo.src-1", "alo.src-2"]
        .iter()
        .map(|b| (b.to_string(), Some(s("rejected"))))
        .chain([("alo.ttl-0".to_string(), Some(s("expired")))])
        .collect();
    assert_eq!(got, want);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(get(&ch, "alo.dlq").await.is_none(), "each once");
    for q in ["alo.src", "alo.ttl"] {
        let i = queue_info(&w, q);
        assert_eq!(
            (i["messages"].clone(), i["messages_dlx"].clone()),
            (0.into(), 0.into()),
            "{q}"
        );
    }
}

/// Held dead letters are on disk with their queue: after a crash they are
/// still held (not delivered to the queue's consumers), and reach a queue
/// once one is bound, as RabbitMQ keeps them in its Raft log.
#[tokio::test]
async fn held_dead_letters_stay_held_across_a_crash() {
    let mut w = Warren::start();
    {
        let conn = w.connect().await;
        let ch = confirm_channel(&conn).await;
        let args = qq(&[
            ("x-dead-letter-exchange", s("nowhere")),
            ("x-dead-letter-strategy", s("at-least-once")),
            ("x-overflow", s("reject-publish")),
        ]);
        declare(&ch, "held", durable(), args).await.unwrap();
        for i in 0..5 {
            publish_with(
                &ch,
                "held",
                format!("m{i}").as_bytes(),
                BasicProperties::default(),
            )
            .await;
        }
        for i in 0..5 {
            let m = get_eventually(&ch, "held").await;
            if i == 4 {
                // basic.nack without requeue: rejected too.
                m.delivery
                    .nack(BasicNackOptions {
                        requeue: false,
                        ..Default::default()
                    })
                    .await
                    .unwrap();
            } else {
                m.delivery
                    .reject(BasicRejectOptions { requeue: false })
                    .await
                    .unwrap();
            }
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while queue_info(&w, "held")["messages_dlx"] != 5 {
            assert!(
                std::time::Instant::now() < deadline,
                "{}",
                queue_info(&w, "held")
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        // A confirmed publish after them: their records are on disk.
        declare(&ch, "held.marker", durable(), FieldTable::default())
            .await
            .unwrap();
        publish_with(
            &ch,
            "held.marker",
            b"m",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await;
    }
    w.kill();
    w.restart();
    let conn = w.connect().await;
    let ch = conn.create_channel().await.unwrap();
    assert!(get(&ch, "held").await.is_none(), "still held, not ready");
    let info = queue_info(&w, "held");
    assert_eq!(
        (info["messages_dlx"].clone(), info["messages"].clone()),
        (5.into(), 5.into())
    );
    within(
        "exchange.declare",
        ch.exchange_declare(
            "nowhere".into(),
            lapin::ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    declare_bound(&ch, "held.dlq", "nowhere").await;
    let mut got = Vec::new();
    for _ in 0..5 {
        let m = get_eventually(&ch, "held.dlq").await;
        let h = m.delivery.properties.headers().clone().unwrap();
        assert_eq!(h.inner().get("x-first-death-reason"), Some(&s("rejected")));
        got.push(String::from_utf8(m.delivery.data.clone()).unwrap());
        m.delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    got.sort();
    assert_eq!(got, ["m0", "m1", "m2", "m3", "m4"]);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(queue_info(&w, "held")["messages"], 0);
}

/// The delivery count is kept on disk: after a crash a returned message
/// comes back with its count (and redelivered), and the delivery limit
/// goes on counting from there, as RabbitMQ's Raft log keeps it.
#[tokio::test]
async fn the_delivery_count_survives_a_crash_and_the_limit_counts_on() {
    let mut w = Warren::start();
    let args = || {
        qq(&[
            ("x-delivery-limit", AMQPValue::LongInt(2)),
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s("counted.dlq")),
        ])
    };
    {
        let conn = w.connect().await;
        let ch = confirm_channel(&conn).await;
        declare(&ch, "counted.dlq", durable(), FieldTable::default())
            .await
            .unwrap();
        declare(&ch, "counted", durable(), args()).await.unwrap();
        publish_with(&ch, "counted", b"c", BasicProperties::default()).await;
        publish_with(&ch, "counted", b"fresh", BasicProperties::default()).await;
        for n in 0..2 {
            let m = get_eventually(&ch, "counted").await;
            assert_eq!(m.delivery.data, b"c");
            assert_eq!(delivery_count(&m.delivery.properties), Some(n));
            m.delivery
                .reject(BasicRejectOptions { requeue: true })
                .await
                .unwrap();
            // The returned message goes behind "fresh": take that one
            // round too, with an ack.
            if n == 0 {
                let f = get_eventually(&ch, "counted").await;
                assert_eq!(f.delivery.data, b"fresh");
                f.delivery.ack(BasicAckOptions::default()).await.unwrap();
            }
        }
        // A confirmed publish after the returns: the store's log is one
        // ordered file, so its confirm means the returns are on disk.
        declare(&ch, "counted.marker", durable(), FieldTable::default())
            .await
            .unwrap();
        let props = BasicProperties::default().with_delivery_mode(2);
        publish_with(&ch, "counted.marker", b"m", props).await;
    }
    w.kill();
    w.restart();
    let conn = w.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let m = get_eventually(&ch, "counted").await;
    assert_eq!(m.delivery.data, b"c");
    assert_eq!(delivery_count(&m.delivery.properties), Some(2));
    assert!(m.delivery.redelivered);
    // A third return passes the limit of 2: dead-lettered.
    m.delivery
        .reject(BasicRejectOptions { requeue: true })
        .await
        .unwrap();
    let dead = get_eventually(&ch, "counted.dlq").await;
    assert_eq!(dead.delivery.data, b"c");
    assert!(get(&ch, "counted").await.is_none());
}
