//! Message TTL, queue expiry, length limits and dead-lettering, as
//! RabbitMQ does them (conformance/RABBITMQ_BEHAVIOUR.md has the replies
//! these follow): x-message-ttl and the expiration property, x-expires,
//! x-max-length(-bytes) with x-overflow, x-dead-letter-exchange/-routing-key
//! with the x-death history, cycle detection, and the same keys from a policy.

mod common;
mod support;

use std::time::Duration;

use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation};
use support::*;

fn args(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v.as_bytes().to_vec()))
}

async fn declare_args(
    ch: &Channel,
    name: &str,
    a: FieldTable,
) -> Result<lapin::Queue, lapin::Error> {
    within(
        "queue.declare reply",
        ch.queue_declare(name.into(), QueueDeclareOptions::default(), a),
    )
    .await
}

async fn publish_props(ch: &Channel, key: &str, body: &[u8], props: BasicProperties) {
    within(
        "basic.publish",
        ch.basic_publish(
            "".into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            props,
        ),
    )
    .await
    .expect("basic.publish");
}

/// A fanout exchange and a queue bound to it that collects dead letters.
async fn dead_letter_sink(ch: &Channel) -> (String, String) {
    let x = unique("dlx");
    within(
        "exchange.declare-ok",
        ch.exchange_declare(
            x.as_str().into(),
            lapin::ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    let q = unique("dead");
    declare(ch, &q).await;
    bind(ch, &q, &x, "").await;
    (x, q)
}

async fn count(ch: &Channel, q: &str) -> u32 {
    within(
        "declare-ok",
        ch.queue_declare(
            q.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("passive declare")
    .message_count()
}

/// Waits until queue `q` holds `n` ready messages.
async fn wait_count(ch: &Channel, q: &str, n: u32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let c = count(ch, q).await;
        if c == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "queue {q} still holds {c} messages, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn header<'a>(h: &'a FieldTable, k: &str) -> &'a AMQPValue {
    h.inner()
        .get(k)
        .unwrap_or_else(|| panic!("no header {k} in {h:?}"))
}

fn text(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        other => panic!("not a string: {other:?}"),
    }
}

/// The x-death entries of a dead-lettered message, newest first.
fn deaths(p: &BasicProperties) -> Vec<FieldTable> {
    let h = p.headers().as_ref().expect("headers");
    match header(h, "x-death") {
        AMQPValue::FieldArray(a) => a
            .as_slice()
            .iter()
            .map(|v| match v {
                AMQPValue::FieldTable(t) => t.clone(),
                other => panic!("x-death entry is not a table: {other:?}"),
            })
            .collect(),
        other => panic!("x-death is not an array: {other:?}"),
    }
}

#[tokio::test]
async fn a_rejected_message_is_dead_lettered_with_its_history() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    let (dlx, dead) = dead_letter_sink(&ch).await;
    let src = unique("src");
    declare_args(&ch, &src, args(&[("x-dead-letter-exchange", s(&dlx))]))
        .await
        .unwrap();
    let mut h = FieldTable::default();
    h.insert("app".into(), AMQPValue::LongInt(7));
    let props = BasicProperties::default()
        .with_headers(h)
        .with_expiration("60000".into())
        .with_message_id("m-1".into());
    publish_props(&ch, &src, b"body", props).await;
    let m = get(&ch, &src).await.expect("message");
    within(
        "basic.reject",
        m.delivery.reject(BasicRejectOptions { requeue: false }),
    )
    .await
    .unwrap();
    wait_count(&ch, &dead, 1).await;
    let d = get(&ch, &dead).await.expect("dead letter");
    assert_eq!(d.delivery.data, b"body");
    assert_eq!(d.delivery.exchange.as_str(), dlx);
    assert_eq!(d.delivery.routing_key.as_str(), src, "original routing key");
    let p = &d.delivery.properties;
    assert_eq!(p.expiration(), &None, "expiration is removed");
    assert_eq!(p.message_id().as_ref().map(|s| s.as_str()), Some("m-1"));
    let h = p.headers().as_ref().unwrap();
    assert_eq!(header(h, "app"), &AMQPValue::LongInt(7));
    assert_eq!(text(header(h, "x-first-death-reason")), "rejected");
    assert_eq!(text(header(h, "x-first-death-queue")), src);
    assert_eq!(text(header(h, "x-first-death-exchange")), "");
    let x = deaths(p);
    assert_eq!(x.len(), 1);
    let e = &x[0];
    assert_eq!(header(e, "count"), &AMQPValue::LongLongInt(1));
    assert_eq!(text(header(e, "reason")), "rejected");
    assert_eq!(text(header(e, "queue")), src);
    assert_eq!(text(header(e, "exchange")), "");
    assert_eq!(text(header(e, "original-expiration")), "60000");
    assert!(matches!(header(e, "time"), AMQPValue::Timestamp(_)));
    match header(e, "routing-keys") {
        AMQPValue::FieldArray(a) => assert_eq!(a.as_slice(), &[s(&src)]),
        other => panic!("routing-keys: {other:?}"),
    }
}

#[tokio::test]
async fn nack_multiple_without_requeue_dead_letters_each_and_a_second_death_counts() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    let (dlx, dead) = dead_letter_sink(&ch).await;
    let src = unique("src");
    declare_args(&ch, &src, args(&[("x-dead-letter-exchange", s(&dlx))]))
        .await
        .unwrap();
    for i in 0..3 {
        publish(&ch, "", &src, format!("n{i}").as_bytes()).await;
    }
    let mut last = None;
    for _ in 0..3 {
        last = Some(get(&ch, &src).await.expect("message"));
    }
    within(
        "basic.nack",
        last.unwrap().delivery.nack(BasicNackOptions {
            multiple: true,
            requeue: false,
        }),
    )
    .await
    .unwrap();
    wait_count(&ch, &dead, 3).await;
    assert_eq!(count(&ch, &src).await, 0);
    // Move one dead letter back through the source queue: its x-death entry
    // for (src, rejected) is counted up, not repeated.
    let d = get(&ch, &dead).await.unwrap();
    assert_eq!(d.delivery.data, b"n0");
    d.delivery.ack(BasicAckOptions::default()).await.unwrap();
    publish_props(&ch, &src, b"again", d.delivery.properties.clone()).await;
    let m = get(&ch, &src).await.unwrap();
    m.delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    wait_count(&ch, &dead, 3).await;
    let mut found = false;
    while let Some(d) = get(&ch, &dead).await {
        d.delivery.ack(BasicAckOptions::default()).await.unwrap();
        if d.delivery.data == b"again" {
            let x = deaths(&d.delivery.properties);
            assert_eq!(x.len(), 1);
            assert_eq!(header(&x[0], "count"), &AMQPValue::LongLongInt(2));
            found = true;
        }
    }
    assert!(found, "the twice-rejected message was dead-lettered");
}

#[tokio::test]
async fn queue_ttl_expires_messages_without_a_consumer_into_the_dead_letter_exchange() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    let (dlx, dead) = dead_letter_sink(&ch).await;
    let src = unique("ttl");
    declare_args(
        &ch,
        &src,
        args(&[
            ("x-message-ttl", AMQPValue::LongInt(50)),
            ("x-dead-letter-exchange", s(&dlx)),
            ("x-dead-letter-routing-key", s("expired-key")),
        ]),
    )
    .await
    .unwrap();
    for i in 0..5 {
        publish(&ch, "", &src, format!("t{i}").as_bytes()).await;
    }
    wait_count(&ch, &src, 0).await;
    wait_count(&ch, &dead, 5).await;
    let mut bodies = Vec::new();
    while let Some(d) = get(&ch, &dead).await {
        assert_eq!(d.delivery.routing_key.as_str(), "expired-key");
        let x = deaths(&d.delivery.properties);
        assert_eq!(text(header(&x[0], "reason")), "expired");
        assert_eq!(
            text(header(
                d.delivery.properties.headers().as_ref().unwrap(),
                "x-first-death-reason"
            )),
            "expired"
        );
        bodies.push(String::from_utf8(d.delivery.data.clone()).unwrap());
        d.delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    assert_eq!(bodies, ["t0", "t1", "t2", "t3", "t4"], "order kept");
}

#[tokio::test]
async fn per_message_expiration_is_honoured_and_invalid_values_are_refused() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    let q = unique("exp");
    declare(&ch, &q).await;
    publish_props(
        &ch,
        &q,
        b"short",
        BasicProperties::default().with_expiration("30".into()),
    )
    .await;
    publish_props(
        &ch,
        &q,
        b"long",
        BasicProperties::default().with_expiration("600000".into()),
    )
    .await;
    wait_count(&ch, &q, 1).await;
    assert_eq!(drain_strings(&ch, &q).await, ["long"]);

    for (value, why) in [
        ("abc", "no_integer"),
        ("-5", "{value_negative,-5}"),
        ("1.5", "{leftover_string,\".5\"}"),
    ] {
        // A connection per case: each one's events carry only its own close.
        let c = w.connect().await;
        let ch = within("channel.open-ok", c.create_channel()).await.unwrap();
        let mut events = watch(&c);
        publish_props(
            &ch,
            &q,
            b"x",
            BasicProperties::default().with_expiration(value.into()),
        )
        .await;
        let e = channel_error(&ch, &mut events).await;
        assert_eq!(reply_code(&e), Some(406), "{value}");
        assert_eq!(
            reply_text(&e),
            format!("PRECONDITION_FAILED - invalid expiration '{value}': {why}")
        );
    }
}

#[tokio::test]
async fn a_zero_ttl_reaches_a_waiting_consumer_and_is_dropped_otherwise() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    let q = unique("ttl0");
    declare_args(&ch, &q, args(&[("x-message-ttl", AMQPValue::LongInt(0))]))
        .await
        .unwrap();
    publish(&ch, "", &q, b"nobody").await;
    wait_count(&ch, &q, 0).await;
    let mut cons = consume(&ch, &q, true).await;
    publish(&ch, "", &q, b"someone").await;
    let d = next(&mut cons).await;
    assert_eq!(d.data, b"someone");
}

#[tokio::test]
async fn a_message_whose_ttl_ran_out_while_unacked_is_dropped_on_requeue() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    let (dlx, dead) = dead_letter_sink(&ch).await;
    let q = unique("ttl-requeue");
    declare_args(
        &ch,
        &q,
        args(&[
            ("x-message-ttl", AMQPValue::LongInt(100)),
            ("x-dead-letter-exchange", s(&dlx)),
        ]),
    )
    .await
    .unwrap();
    publish(&ch, "", &q, b"late").await;
    let m = get(&ch, &q).await.expect("message");
    // Wait past the TTL (the dead-letter queue sees nothing meanwhile:
    // an unacked message does not expire).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count(&ch, &dead).await, 0);
    m.delivery
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();
    wait_count(&ch, &dead, 1).await;
    assert_eq!(count(&ch, &q).await, 0);
}

#[tokio::test]
async fn max_length_drops_the_oldest_into_the_dead_letter_exchange() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    let (dlx, dead) = dead_letter_sink(&ch).await;
    let q = unique("maxlen");
    declare_args(
        &ch,
        &q,
        args(&[
            ("x-max-length", AMQPValue::LongInt(2)),
            ("x-dead-letter-exchange", s(&dlx)),
        ]),
    )
    .await
    .unwrap();
    for i in 0..5 {
        publish(&ch, "", &q, format!("{i}").as_bytes()).await;
    }
    wait_count(&ch, &dead, 3).await;
    assert_eq!(drain_strings(&ch, &q).await, ["3", "4"]);
    let d = get(&ch, &dead).await.unwrap();
    assert_eq!(d.delivery.data, b"0");
    assert_eq!(
        text(header(&deaths(&d.delivery.properties)[0], "reason")),
        "maxlen"
    );

    let qb = unique("maxbytes");
    declare_args(
        &ch,
        &qb,
        args(&[("x-max-length-bytes", AMQPValue::LongInt(10))]),
    )
    .await
    .unwrap();
    for i in 0..5 {
        publish(&ch, "", &qb, format!("abc{i}").as_bytes()).await;
    }
    assert_eq!(drain_strings(&ch, &qb).await, ["abc3", "abc4"]);
}

#[tokio::test]
async fn reject_publish_nacks_what_a_full_queue_refuses() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    let q = unique("rp");
    declare_args(
        &ch,
        &q,
        args(&[
            ("x-max-length", AMQPValue::LongInt(1)),
            ("x-overflow", s("reject-publish")),
        ]),
    )
    .await
    .unwrap();
    within("confirm.select-ok", ch.confirm_select(Default::default()))
        .await
        .unwrap();
    let mut got = Vec::new();
    for i in 0..3 {
        let p = ch
            .basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                format!("{i}").as_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap();
        got.push(within("a confirm", p).await.unwrap());
    }
    assert_eq!(got[0], Confirmation::Ack(None));
    assert!(matches!(got[1], Confirmation::Nack(_)), "{:?}", got[1]);
    assert!(matches!(got[2], Confirmation::Nack(_)), "{:?}", got[2]);
    assert_eq!(drain_strings(&ch, &q).await, ["0"]);
    // Room again: accepted again.
    let p = ch
        .basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions::default(),
            b"3",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        within("a confirm", p).await.unwrap(),
        Confirmation::Ack(None)
    );
}

#[tokio::test]
async fn x_expires_deletes_a_queue_left_unused_but_not_one_with_a_consumer() {
    let w = Warren::start();
    let c = w.connect().await;
    let ch = within("channel.open-ok", c.create_channel()).await.unwrap();
    let idle = unique("expires-idle");
    let used = unique("expires-used");
    for q in [&idle, &used] {
        declare_args(&ch, q, args(&[("x-expires", AMQPValue::LongInt(100))]))
            .await
            .unwrap();
    }
    let _cons = consume(&ch, &used, true).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        // A passive declare renews the lease (as in RabbitMQ): look less
        // often than the expiry.
        tokio::time::sleep(Duration::from_millis(300)).await;
        if !queue_exists(&c, &idle).await {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{idle} was not deleted"
        );
    }
    assert!(
        queue_exists(&c, &used).await,
        "a queue with a consumer stays"
    );
}

#[tokio::test]
async fn invalid_arguments_are_refused_in_rabbitmq_words() {
    let w = Warren::start();
    let c = w.connect().await;
    let cases: Vec<(&str, AMQPValue, &str)> = vec![
        ("x-expires", AMQPValue::LongInt(0), "{value_zero,0}"),
        ("x-expires", AMQPValue::LongInt(-1), "{value_negative,-1}"),
        (
            "x-message-ttl",
            AMQPValue::LongInt(-1),
            "{value_negative,-1}",
        ),
        ("x-message-ttl", s("x"), "\"expected integer, got longstr\""),
        (
            "x-max-length",
            AMQPValue::LongInt(-1),
            "{value_negative,-1}",
        ),
        ("x-overflow", s("foo"), "invalid_overflow"),
        (
            "x-dead-letter-routing-key",
            s("rk"),
            "routing_key_but_no_dlx_defined",
        ),
        (
            "x-max-priority",
            AMQPValue::LongInt(300),
            "{max_value_exceeded,300}",
        ),
    ];
    for (k, v, why) in cases {
        let ch = within("channel.open-ok", c.create_channel()).await.unwrap();
        let q = unique("inv");
        let e = declare_args(&ch, &q, args(&[(k, v.clone())]))
            .await
            .expect_err(k);
        assert_eq!(reply_code(&e), Some(406), "{k}");
        assert_eq!(
            reply_text(&e),
            format!("PRECONDITION_FAILED - invalid arg '{k}' for queue '{q}' in vhost '/': {why}")
        );
    }
    let ch = within("channel.open-ok", c.create_channel()).await.unwrap();
    let q = unique("inv");
    let e = declare_args(
        &ch,
        &q,
        args(&[("x-dead-letter-exchange", AMQPValue::LongInt(5))]),
    )
    .await
    .expect_err("int dlx");
    assert_eq!(
        reply_text(&e),
        format!(
            "PRECONDITION_FAILED - invalid type 'signedint' for arg 'x-dead-letter-exchange' in queue '{q}' in vhost '/'"
        )
    );
}

#[tokio::test]
async fn an_automatic_dead_letter_cycle_is_cut_but_a_rejection_may_loop() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    let q = unique("cycle");
    declare_args(
        &ch,
        &q,
        args(&[
            ("x-message-ttl", AMQPValue::LongInt(30)),
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s(&q)),
        ]),
    )
    .await
    .unwrap();
    publish(&ch, "", &q, b"round").await;
    wait_count(&ch, &q, 0).await;

    // Rejection back into the same queue is no cycle: the message returns.
    let r = unique("reject-loop");
    declare_args(
        &ch,
        &r,
        args(&[
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s(&r)),
        ]),
    )
    .await
    .unwrap();
    publish(&ch, "", &r, b"again").await;
    let m = get(&ch, &r).await.unwrap();
    m.delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    wait_count(&ch, &r, 1).await;
    let m = get(&ch, &r).await.unwrap();
    assert_eq!(m.delivery.data, b"again");
    assert!(!m.delivery.redelivered, "a dead letter is a new message");
    assert_eq!(
        text(header(&deaths(&m.delivery.properties)[0], "reason")),
        "rejected"
    );
}

#[tokio::test]
async fn a_policy_gives_queues_ttl_limits_and_dead_lettering() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    let (dlx, dead) = dead_letter_sink(&ch).await;
    let body = serde_json::json!({
        "pattern": "^pol-", "apply-to": "queues",
        "definition": {"max-length": 1, "dead-letter-exchange": dlx}
    });
    let (status, _) = w.api("PUT", "/api/policies/%2F/limits", Some(&body));
    assert!(status == 201 || status == 204, "policy PUT: {status}");
    let q = unique("pol");
    declare(&ch, &q).await;
    for i in 0..3 {
        publish(&ch, "", &q, format!("{i}").as_bytes()).await;
    }
    wait_count(&ch, &dead, 2).await;
    assert_eq!(drain_strings(&ch, &q).await, ["2"]);
    // Deleting the policy lifts the limit.
    let (status, _) = w.api("DELETE", "/api/policies/%2F/limits", None);
    assert_eq!(status, 204);
    for i in 0..3 {
        publish(&ch, "", &q, format!("{i}").as_bytes()).await;
    }
    wait_count(&ch, &q, 3).await;
    let (_, _, metrics) = http(&w.http_url(), None, "GET", "/metrics", None);
    let line = metrics
        .lines()
        .find(|l| l.starts_with("rabbitmq_global_messages_dead_lettered_total"))
        .unwrap_or_else(|| panic!("no dead-lettered counter in {metrics}"));
    let n: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 2.0, "{line}");
}

#[tokio::test]
async fn an_x_death_count_of_i64_max_saturates_and_ttl_keeps_working_afterwards() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    let (dlx, dead) = dead_letter_sink(&ch).await;
    let src = unique("ttl-max");
    declare_args(
        &ch,
        &src,
        args(&[
            ("x-message-ttl", AMQPValue::LongInt(20)),
            ("x-dead-letter-exchange", s(&dlx)),
        ]),
    )
    .await
    .unwrap();
    // A client claims this message already expired from `src` i64::MAX times.
    let mut death = FieldTable::default();
    death.insert("queue".into(), s(&src));
    death.insert("reason".into(), s("expired"));
    death.insert("count".into(), AMQPValue::LongLongInt(i64::MAX));
    let mut headers = FieldTable::default();
    headers.insert(
        "x-death".into(),
        AMQPValue::FieldArray(vec![AMQPValue::FieldTable(death)].into()),
    );
    let props = BasicProperties::default().with_headers(headers);
    publish_props(&ch, &src, b"forged", props).await;
    wait_count(&ch, &dead, 1).await;
    let d = get(&ch, &dead).await.expect("the dead-lettered copy");
    let x = deaths(&d.delivery.properties);
    assert_eq!(header(&x[0], "count"), &AMQPValue::LongLongInt(i64::MAX));
    d.delivery.ack(BasicAckOptions::default()).await.unwrap();

    // The timer thread that expired it is still there for everyone else.
    for i in 0..3 {
        publish(&ch, "", &src, format!("after{i}").as_bytes()).await;
    }
    wait_count(&ch, &src, 0).await;
    wait_count(&ch, &dead, 3).await;
}
