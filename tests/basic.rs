//! The basic class: messaging patterns (point-to-point, publish/subscribe),
//! ordering, prefetch, redelivery, confirms, transactions, returns,
//! consumers, basic.get, acknowledgements and recovery.

mod common;
mod raw;
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{AMQPClass, basic, confirm, queue};
use common::*;
use futures_lite::StreamExt;
use lapin::Confirmation;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, ExchangeKind};
use support::*;

fn body_index(d: &[u8]) -> usize {
    std::str::from_utf8(d).unwrap().parse().unwrap()
}

async fn qos(ch: &Channel, count: u16, global: bool) {
    within(
        "basic.qos-ok",
        ch.basic_qos(count, BasicQosOptions { global }),
    )
    .await
    .expect("basic.qos");
}

// ---------------------------------------------------------------- patterns

#[tokio::test]
async fn point_to_point() {
    let w = Warren::start();
    let (_pc, publisher) = w.channel().await;
    let (_ac, ach) = w.channel().await;
    let (_bc, bch) = w.channel().await;
    let q = unique("p2p");
    declare(&publisher, &q).await;
    let mut a = consume(&ach, &q, true).await;
    let mut b = consume(&bch, &q, true).await;

    const N: usize = 100;
    for i in 0..N {
        publish(&publisher, "", &q, i.to_string().as_bytes()).await;
    }
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    within("all point-to-point deliveries", async {
        while got_a.len() + got_b.len() < N {
            tokio::select! {
                d = a.next() => got_a.push(body_index(&d.expect("stream a ended").unwrap().data)),
                d = b.next() => got_b.push(body_index(&d.expect("stream b ended").unwrap().data)),
            }
        }
    })
    .await;
    let sa: BTreeSet<usize> = got_a.iter().copied().collect();
    let sb: BTreeSet<usize> = got_b.iter().copied().collect();
    assert_eq!(sa.len(), got_a.len(), "consumer a got duplicates");
    assert_eq!(sb.len(), got_b.len(), "consumer b got duplicates");
    assert!(sa.is_disjoint(&sb), "a message went to both consumers");
    let all: BTreeSet<usize> = sa.union(&sb).copied().collect();
    assert_eq!(all, (0..N).collect(), "some messages were not delivered");
    // Round-robin: each consumer gets every other message.
    assert_eq!(
        got_a.len(),
        N / 2,
        "split {} / {}",
        got_a.len(),
        got_b.len()
    );
    let parity = got_a[0] % 2;
    assert!(
        got_a.iter().all(|i| i % 2 == parity) && got_b.iter().all(|i| i % 2 != parity),
        "deliveries do not alternate: a={got_a:?} b={got_b:?}"
    );
    // Each consumer sees its share in publish order.
    assert!(got_a.windows(2).all(|w| w[0] < w[1]));
    assert!(got_b.windows(2).all(|w| w[0] < w[1]));
    // Nothing extra arrives (the quiet period is only an upper bound check).
    assert_quiet(&mut a, Duration::from_millis(100)).await;
}

#[tokio::test]
async fn publish_subscribe() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    let x = unique("pubsub");
    within(
        "exchange.declare-ok",
        ch.exchange_declare(
            x.as_str().into(),
            ExchangeKind::Fanout,
            Default::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    let mut subs = Vec::new();
    for _ in 0..3 {
        let (c, sch) = w.channel().await;
        let q = declare_anon(&sch).await;
        bind(&sch, &q, &x, "ignored").await;
        let consumer = consume(&sch, &q, true).await;
        subs.push((c, sch, consumer));
    }
    const N: usize = 50;
    for i in 0..N {
        publish(&ch, &x, &format!("key{i}"), i.to_string().as_bytes()).await;
    }
    for (i, (_, _, consumer)) in subs.iter_mut().enumerate() {
        let mut got = Vec::new();
        for _ in 0..N {
            got.push(body_index(&next(consumer).await.data));
        }
        assert_eq!(got, (0..N).collect::<Vec<_>>(), "subscriber {i}");
        assert_quiet(consumer, Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn ordering() {
    let w = Warren::start();
    let (_pc, publisher) = w.channel().await;
    let (_cc, cch) = w.channel().await;
    let q = unique("order");
    declare(&publisher, &q).await;
    let mut consumer = consume(&cch, &q, true).await;
    const N: u32 = 10_000;
    let collector = tokio::spawn(async move {
        let mut out = Vec::with_capacity(N as usize);
        while out.len() < N as usize {
            match consumer.next().await {
                Some(Ok(d)) => out.push(u32::from_be_bytes(d.data[..4].try_into().unwrap())),
                other => panic!("consumer ended early: {other:?}"),
            }
        }
        out
    });
    for i in 0..N {
        publisher
            .basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                &i.to_be_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap();
    }
    let got = tokio::time::timeout(Duration::from_secs(60), collector)
        .await
        .expect("10,000 messages did not arrive in time")
        .unwrap();
    let first_bad = got.iter().enumerate().find(|(i, v)| *i as u32 != **v);
    assert!(
        first_bad.is_none(),
        "out of order at position {:?}",
        first_bad
    );
}

#[tokio::test]
async fn prefetch() {
    let w = Warren::start();
    let (_pc, publisher) = w.channel().await;
    let (_cc, cch) = w.channel().await;
    let q = unique("prefetch");
    declare(&publisher, &q).await;
    for i in 0..30 {
        publish(&publisher, "", &q, i.to_string().as_bytes()).await;
    }
    qos(&cch, 10, false).await;
    let mut consumer = consume(&cch, &q, false).await;
    let first = collect_for(&mut consumer, Duration::from_millis(500), 30).await;
    assert_eq!(
        first.len(),
        10,
        "prefetch 10 must cap unacked deliveries at 10"
    );
    assert_eq!(
        first
            .iter()
            .map(|d| body_index(&d.data))
            .collect::<Vec<_>>(),
        (0..10).collect::<Vec<_>>()
    );
    first[0].ack(BasicAckOptions::default()).await.unwrap();
    let more = collect_for(&mut consumer, Duration::from_millis(500), 30).await;
    assert_eq!(more.len(), 1, "one ack frees exactly one slot");
    assert_eq!(body_index(&more[0].data), 10);
    // Acking several (multiple) frees as many.
    within(
        "basic.ack",
        cch.basic_ack(more[0].delivery_tag, BasicAckOptions { multiple: true }),
    )
    .await
    .unwrap();
    let rest = collect_for(&mut consumer, Duration::from_millis(500), 30).await;
    assert_eq!(rest.len(), 10, "ten acked (multiple) -> ten more");
}

#[tokio::test]
async fn redelivery() {
    let w = Warren::start();
    let (_pc, publisher) = w.channel().await;
    let c1 = w.connect().await;
    let ch1 = c1.create_channel().await.unwrap();
    let q = unique("redeliver");
    declare(&publisher, &q).await;
    for i in 0..5 {
        publish(&publisher, "", &q, i.to_string().as_bytes()).await;
    }
    let mut first = consume(&ch1, &q, false).await;
    for i in 0..5 {
        let d = next(&mut first).await;
        assert_eq!(body_index(&d.data), i);
        assert!(!d.redelivered);
    }
    let (_c2, ch2) = w.channel().await;
    let mut second = consume(&ch2, &q, false).await;
    assert_quiet(&mut second, Duration::from_millis(100)).await;

    within("channel.close-ok", ch1.close(200, "bye".into()))
        .await
        .unwrap();
    for i in 0..5 {
        let d = next(&mut second).await;
        assert_eq!(body_index(&d.data), i, "redelivered in the original order");
        assert!(d.redelivered, "message {i} must be flagged redelivered");
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
}

#[tokio::test]
async fn redelivery_after_the_connection_closes() {
    let w = Warren::start();
    let (_pc, publisher) = w.channel().await;
    let q = unique("redeliver-conn");
    declare(&publisher, &q).await;
    publish(&publisher, "", &q, b"0").await;
    {
        let (c1, ch1) = w.channel().await;
        let mut first = consume(&ch1, &q, false).await;
        next(&mut first).await;
        within("connection.close-ok", c1.close(200, "bye".into()))
            .await
            .unwrap();
    }
    let m = get(&publisher, &q)
        .await
        .expect("the unacked message is back");
    assert!(m.delivery.redelivered);
    assert_eq!(m.delivery.data, b"0");
}

#[tokio::test]
async fn confirms() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    let q = unique("confirms");
    declare(&ch, &q).await;
    within("confirm.select-ok", ch.confirm_select(Default::default()))
        .await
        .unwrap();
    const N: usize = 1000;
    let mut pending = Vec::with_capacity(N);
    for i in 0..N {
        pending.push(
            ch.basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                i.to_string().as_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap(),
        );
    }
    for (i, p) in pending.into_iter().enumerate() {
        let c = within("a publisher confirm", p)
            .await
            .unwrap_or_else(|e| panic!("confirm {i}: {e:?}"));
        assert_eq!(c, Confirmation::Ack(None), "publish {i}");
    }
    assert!(ch.status().connected(), "no bogus acks closed the channel");
    let d = within(
        "declare-ok",
        ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(d.message_count(), N as u32);
}

/// Raw check that each publish is confirmed exactly once (lapin would hide a
/// duplicate ack for a tag it already resolved).
#[test]
fn confirms_cover_every_publish_exactly_once() {
    let w = Warren::start();
    let mut s = raw::connect(w.port);
    raw::open_channel(&mut s, 1);
    raw::send_method(
        &mut s,
        1,
        &AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
            nowait: false,
        })),
    );
    match raw::read_method(&mut s) {
        (1, AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(_))) => {}
        other => panic!("expected confirm.select-ok, got {other:?}"),
    }
    const N: usize = 1000;
    // Unroutable and routable publishes both get acked.
    for i in 0..N {
        let key = if i % 3 == 0 {
            "nowhere"
        } else {
            "also-nowhere"
        };
        raw::publish(&mut s, 1, "amq.direct", key, i.to_string().as_bytes());
    }
    let mut acked = vec![false; N + 1];
    let mut left = N;
    while left > 0 {
        match raw::read_method(&mut s) {
            (1, AMQPClass::Basic(basic::AMQPMethod::Ack(a))) => {
                let tag = a.delivery_tag as usize;
                assert!((1..=N).contains(&tag), "ack for unknown tag {tag}");
                assert!(!acked[tag], "tag {tag} acked twice");
                if a.multiple {
                    for slot in acked.iter_mut().take(tag + 1).skip(1) {
                        if !*slot {
                            *slot = true;
                            left -= 1;
                        }
                    }
                } else {
                    acked[tag] = true;
                    left -= 1;
                }
            }
            (1, AMQPClass::Basic(basic::AMQPMethod::Nack(n))) => panic!("nack {n:?}"),
            other => panic!("unexpected {other:?}"),
        }
    }
    // Sync point: anything sent before declare-ok would be a duplicate.
    raw::send_method(
        &mut s,
        1,
        &AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "sync".into(),
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: Default::default(),
        })),
    );
    match raw::read_method(&mut s) {
        (1, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))) => {}
        other => panic!("expected declare-ok after the last ack, got {other:?}"),
    }
}

#[tokio::test]
async fn tx_rollback() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    let (_oc, observer) = w.channel().await;
    let q = unique("tx");
    declare(&ch, &q).await;
    within("tx.select-ok", ch.tx_select()).await.unwrap();
    publish(&ch, "", &q, b"rolled-back-1").await;
    publish(&ch, "", &q, b"rolled-back-2").await;
    within("tx.rollback-ok", ch.tx_rollback()).await.unwrap();
    publish(&ch, "", &q, b"committed-1").await;
    publish(&ch, "", &q, b"committed-2").await;
    // Not visible before commit.
    let d = within(
        "declare-ok",
        observer.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(d.message_count(), 0, "uncommitted publishes are invisible");
    within("tx.commit-ok", ch.tx_commit()).await.unwrap();
    assert_eq!(
        drain_strings(&observer, &q).await,
        ["committed-1", "committed-2"]
    );
}

#[tokio::test]
async fn tx_acks_take_effect_only_on_commit() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    let q = unique("tx-ack");
    declare(&ch, &q).await;
    publish(&ch, "", &q, b"m").await;
    within("tx.select-ok", ch.tx_select()).await.unwrap();
    let m = get(&ch, &q).await.expect("a message");
    within(
        "basic.ack",
        ch.basic_ack(m.delivery.delivery_tag, Default::default()),
    )
    .await
    .unwrap();
    within("tx.rollback-ok", ch.tx_rollback()).await.unwrap();
    // The ack was rolled back: the message is still unacked on this channel,
    // and acking it again (then committing) settles it.
    within(
        "basic.ack",
        ch.basic_ack(m.delivery.delivery_tag, Default::default()),
    )
    .await
    .unwrap();
    within("tx.commit-ok", ch.tx_commit()).await.unwrap();
    assert!(ch.status().connected());
    within("channel.close-ok", ch.close(200, "bye".into()))
        .await
        .unwrap();
    let (_c2, ch2) = w.channel().await;
    assert!(
        get(&ch2, &q).await.is_none(),
        "the committed ack settled it"
    );
}

#[tokio::test]
async fn tx_commit_without_select_is_406() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    let err = within("tx.commit reply", ch.tx_commit())
        .await
        .expect_err("commit without select");
    assert_eq!(reply_code(&err), Some(406));
    assert_eq!(
        reply_text(&err),
        "PRECONDITION_FAILED - channel is not transactional"
    );
}

// ---------------------------------------------------------------- returns

#[test]
fn an_unroutable_mandatory_message_is_returned_with_312() {
    let w = Warren::start();
    let mut s = raw::connect(w.port);
    raw::open_channel(&mut s, 1);
    let mut out = raw::encode(&AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "amq.direct".into(),
            routing_key: "nokey".into(),
            mandatory: true,
            immediate: false,
        })),
    ));
    out.extend(raw::encode(&raw::content_header(1, 5)));
    out.extend(raw::encode(&AMQPFrame::Body(1, b"hello".to_vec())));
    raw::send_raw(&mut s, &out);
    match raw::read_method(&mut s) {
        (1, AMQPClass::Basic(basic::AMQPMethod::Return(r))) => {
            assert_eq!(r.reply_code, 312);
            assert_eq!(r.reply_text.as_str(), "NO_ROUTE");
            assert_eq!(r.exchange.as_str(), "amq.direct");
            assert_eq!(r.routing_key.as_str(), "nokey");
        }
        other => panic!("expected basic.return, got {other:?}"),
    }
    match raw::read_frame(&mut s) {
        AMQPFrame::Header(1, h) => assert_eq!(h.body_size, 5),
        other => panic!("expected the returned content header, got {other:?}"),
    }
    match raw::read_frame(&mut s) {
        AMQPFrame::Body(1, b) => assert_eq!(b, b"hello"),
        other => panic!("expected the returned body, got {other:?}"),
    }
}

#[tokio::test]
async fn an_unroutable_mandatory_message_is_returned_and_still_acked_in_confirm_mode() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    within("confirm.select-ok", ch.confirm_select(Default::default()))
        .await
        .unwrap();
    let confirm = ch
        .basic_publish(
            "amq.direct".into(),
            "nokey".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"bounce",
            BasicProperties::default().with_message_id("m1".into()),
        )
        .await
        .unwrap();
    let c = within("the publisher confirm", confirm).await.unwrap();
    assert!(
        c.is_ack(),
        "unroutable messages are acked, never nacked: {c:?}"
    );
    let ret = c
        .take_message()
        .expect("the basic.return reached the confirm");
    assert_eq!(ret.reply_code, 312);
    assert_eq!(ret.reply_text.as_str(), "NO_ROUTE");
    assert_eq!(ret.delivery.data, b"bounce");
    assert_eq!(ret.delivery.routing_key.as_str(), "nokey");
    assert_eq!(
        ret.delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some("m1"),
        "the returned message keeps its properties"
    );

    // Non-mandatory unroutable: acked, nothing returned.
    let confirm = ch
        .basic_publish(
            "amq.direct".into(),
            "nokey".into(),
            BasicPublishOptions::default(),
            b"dropped",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        within("the publisher confirm", confirm).await.unwrap(),
        Confirmation::Ack(None)
    );
}

#[test]
fn publishing_with_immediate_closes_the_connection_with_540() {
    let w = Warren::start();
    let mut s = raw::connect(w.port);
    raw::open_channel(&mut s, 1);
    let mut out = raw::encode(&AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: "q".into(),
            mandatory: false,
            immediate: true,
        })),
    ));
    out.extend(raw::encode(&raw::content_header(1, 1)));
    out.extend(raw::encode(&AMQPFrame::Body(1, b"x".to_vec())));
    raw::send_raw(&mut s, &out);
    let c = raw::expect_close_full(&mut s);
    assert_eq!(c.reply_code, 540);
    assert_eq!(c.reply_text.as_str(), "NOT_IMPLEMENTED - immediate=true");
    assert_eq!((c.class_id, c.method_id), (60, 40));
}

#[tokio::test]
async fn publishing_with_immediate_fails_the_lapin_connection_with_540() {
    let w = Warren::start();
    let (c, ch) = w.channel().await;
    let mut ev = watch(&c);
    let _ = ch
        .basic_publish(
            "".into(),
            "q".into(),
            BasicPublishOptions {
                immediate: true,
                ..Default::default()
            },
            b"x",
            BasicProperties::default(),
        )
        .await;
    let err = channel_error(&ch, &mut ev).await;
    assert_eq!(reply_code(&err), Some(540), "{err:?}");
    assert!(!c.status().connected(), "540 is a connection error");
}

// ---------------------------------------------------------------- consumers

#[tokio::test]
async fn an_exclusive_consume_on_a_queue_with_a_consumer_is_403() {
    let w = Warren::start();
    let (c, ch) = w.channel().await;
    let q = unique("excl-consume");
    declare(&ch, &q).await;
    let _first = consume(&ch, &q, true).await;
    let ch2 = c.create_channel().await.unwrap();
    let err = within(
        "basic.consume reply",
        ch2.basic_consume(
            q.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect_err("exclusive consume on a queue with a consumer");
    assert_eq!(reply_code(&err), Some(403), "{err:?}");
    assert_eq!(
        reply_text(&err),
        format!("ACCESS_REFUSED - queue '{q}' in vhost '/' in exclusive use")
    );

    // And any consume on a queue with an exclusive consumer, from anywhere.
    let q2 = unique("has-excl");
    declare(&ch, &q2).await;
    let _exclusive_consumer = within(
        "basic.consume-ok",
        ch.basic_consume(
            q2.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    let (_oc, other) = w.channel().await;
    let err = within(
        "basic.consume reply",
        other.basic_consume(
            q2.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect_err("consume on a queue with an exclusive consumer");
    assert_eq!(reply_code(&err), Some(403), "{err:?}");
}

fn consume_method(q: &str, tag: &str) -> AMQPClass {
    AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
        queue: q.into(),
        consumer_tag: tag.into(),
        no_local: false,
        no_ack: false,
        exclusive: false,
        nowait: false,
        arguments: Default::default(),
    }))
}

#[test]
fn a_duplicate_consumer_tag_on_one_channel_closes_the_connection_with_530() {
    let w = Warren::start();
    let mut s = raw::connect(w.port);
    raw::open_channel(&mut s, 1);
    raw::open_channel(&mut s, 2);
    raw::send_method(
        &mut s,
        1,
        &AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "dupq".into(),
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: Default::default(),
        })),
    );
    raw::read_method(&mut s);
    for ch in [1, 2] {
        // The same tag on two channels is fine.
        raw::send_method(&mut s, ch, &consume_method("dupq", "dup"));
        match raw::read_method(&mut s) {
            (c, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(ok))) if c == ch => {
                assert_eq!(ok.consumer_tag.as_str(), "dup")
            }
            other => panic!("expected consume-ok on {ch}, got {other:?}"),
        }
    }
    raw::send_method(&mut s, 1, &consume_method("dupq", "dup"));
    let c = raw::expect_close_full(&mut s);
    assert_eq!(c.reply_code, 530);
    assert_eq!(
        c.reply_text.as_str(),
        "NOT_ALLOWED - attempt to reuse consumer tag 'dup'"
    );
    assert_eq!((c.class_id, c.method_id), (60, 20));
}

#[tokio::test]
async fn server_generated_consumer_tags_start_with_amq_ctag() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    let q = unique("ctag");
    declare(&ch, &q).await;
    let a = consume(&ch, &q, true).await;
    let b = consume(&ch, &q, true).await;
    for t in [a.tag(), b.tag()] {
        let t = t.as_str();
        assert!(t.starts_with("amq.ctag-"), "{t}");
        assert_eq!(t.len(), 31, "amq.ctag- + 22 characters: {t}");
    }
    assert_ne!(a.tag(), b.tag());
}

#[tokio::test]
async fn a_cancelled_consumer_gets_nothing_more_and_messages_stay_queued() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    let q = unique("cancel");
    declare(&ch, &q).await;
    let mut consumer = consume(&ch, &q, true).await;
    publish(&ch, "", &q, b"before").await;
    assert_eq!(next(&mut consumer).await.data, b"before");
    within(
        "basic.cancel-ok",
        ch.basic_cancel(consumer.tag(), Default::default()),
    )
    .await
    .unwrap();
    publish(&ch, "", &q, b"after").await;
    let end = within("the consumer stream to end", consumer.next()).await;
    assert!(end.is_none(), "a cancelled consumer's stream ends: {end:?}");
    assert_eq!(drain_strings(&ch, &q).await, ["after"]);
    // Cancelling an unknown tag is fine.
    within(
        "basic.cancel-ok",
        ch.basic_cancel("no-such-tag".into(), Default::default()),
    )
    .await
    .expect("cancel of an unknown tag");
}

#[tokio::test]
async fn a_no_ack_consumer_gets_everything_regardless_of_prefetch() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    let q = unique("noack");
    declare(&ch, &q).await;
    qos(&ch, 1, false).await;
    qos(&ch, 1, true).await;
    for i in 0..50 {
        publish(&ch, "", &q, i.to_string().as_bytes()).await;
    }
    let mut consumer = consume(&ch, &q, true).await;
    let mut got = Vec::new();
    for _ in 0..50 {
        got.push(body_index(&next(&mut consumer).await.data));
    }
    assert_eq!(got, (0..50).collect::<Vec<_>>());
    let d = within(
        "declare-ok",
        ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(d.message_count(), 0);
}

// ---------------------------------------------------------------- basic.get

#[tokio::test]
async fn basic_get_returns_get_ok_with_message_count_then_get_empty() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    let q = unique("get");
    declare(&ch, &q).await;
    assert!(get(&ch, &q).await.is_none(), "get-empty on an empty queue");
    for i in 0..3 {
        publish(&ch, "", &q, i.to_string().as_bytes()).await;
    }
    for i in 0..3 {
        let m = get(&ch, &q).await.expect("get-ok");
        assert_eq!(body_index(&m.delivery.data), i);
        assert_eq!(m.message_count, 2 - i as u32, "messages left after get {i}");
        assert!(!m.delivery.redelivered);
        assert_eq!(m.delivery.routing_key.as_str(), q);
        assert_eq!(m.delivery.exchange.as_str(), "");
        m.delivery.ack(Default::default()).await.unwrap();
    }
    assert!(get(&ch, &q).await.is_none());
    let err = within(
        "basic.get reply",
        ch.basic_get("missing".into(), Default::default()),
    )
    .await
    .expect_err("get from a missing queue");
    assert_eq!(reply_code(&err), Some(404));
}

#[tokio::test]
async fn prefetch_does_not_limit_basic_get() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    let q = unique("get-prefetch");
    declare(&ch, &q).await;
    qos(&ch, 1, false).await;
    qos(&ch, 1, true).await;
    for i in 0..3 {
        publish(&ch, "", &q, i.to_string().as_bytes()).await;
    }
    for i in 0..3 {
        let m = get(&ch, &q).await.expect("get-ok despite prefetch");
        assert_eq!(body_index(&m.delivery.data), i);
    }
}

// ---------------------------------------------------------------- acks

#[tokio::test]
async fn ack_nack_and_reject_settle_single_and_multiple_with_and_without_requeue() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    let q = unique("settle");
    declare(&ch, &q).await;
    for i in 0..6 {
        publish(&ch, "", &q, format!("m{i}").as_bytes()).await;
    }
    let mut tags = Vec::new();
    for _ in 0..6 {
        tags.push(get(&ch, &q).await.unwrap().delivery.delivery_tag);
    }
    let t = |i: usize| tags[i];
    ch.basic_ack(t(0), BasicAckOptions { multiple: false })
        .await
        .unwrap();
    ch.basic_reject(t(1), BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    ch.basic_nack(
        t(3),
        BasicNackOptions {
            multiple: true,
            requeue: true,
        },
    )
    .await
    .unwrap(); // m2, m3
    ch.basic_nack(
        t(5),
        BasicNackOptions {
            multiple: false,
            requeue: true,
        },
    )
    .await
    .unwrap(); // m5
    ch.basic_ack(t(4), BasicAckOptions { multiple: true })
        .await
        .unwrap(); // m4

    let mut back = Vec::new();
    while let Some(m) = get(&ch, &q).await {
        assert!(m.delivery.redelivered, "requeued messages are redelivered");
        back.push(String::from_utf8(m.delivery.data.clone()).unwrap());
        m.delivery.ack(Default::default()).await.unwrap();
    }
    assert_eq!(back, ["m2", "m3", "m5"], "requeued in original order");

    // reject with requeue, nack multiple without requeue.
    for i in 6..9 {
        publish(&ch, "", &q, format!("m{i}").as_bytes()).await;
    }
    let a = get(&ch, &q).await.unwrap();
    let b = get(&ch, &q).await.unwrap();
    let c = get(&ch, &q).await.unwrap();
    ch.basic_reject(
        b.delivery.delivery_tag,
        BasicRejectOptions { requeue: true },
    )
    .await
    .unwrap();
    ch.basic_nack(
        c.delivery.delivery_tag,
        BasicNackOptions {
            multiple: true,
            requeue: false,
        },
    )
    .await
    .unwrap(); // drops m6 and m8
    let _ = a;
    let m = get(&ch, &q)
        .await
        .expect("the rejected-with-requeue message");
    assert_eq!(m.delivery.data, b"m7");
    assert!(m.delivery.redelivered);
    m.delivery.ack(Default::default()).await.unwrap();
    assert!(get(&ch, &q).await.is_none());
    assert!(ch.status().connected());
}

#[tokio::test]
async fn requeued_messages_return_to_their_original_position() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    let q = unique("requeue-pos");
    declare(&ch, &q).await;
    for i in 0..4 {
        publish(&ch, "", &q, format!("m{i}").as_bytes()).await;
    }
    let m0 = get(&ch, &q).await.unwrap();
    let m1 = get(&ch, &q).await.unwrap();
    // m2, m3 still ready. Requeue m1 then m0: both go back ahead of m2.
    ch.basic_reject(
        m1.delivery.delivery_tag,
        BasicRejectOptions { requeue: true },
    )
    .await
    .unwrap();
    ch.basic_reject(
        m0.delivery.delivery_tag,
        BasicRejectOptions { requeue: true },
    )
    .await
    .unwrap();
    let order: Vec<(String, bool)> = {
        let mut v = Vec::new();
        while let Some(m) = get(&ch, &q).await {
            v.push((
                String::from_utf8(m.delivery.data.clone()).unwrap(),
                m.delivery.redelivered,
            ));
            m.delivery.ack(Default::default()).await.unwrap();
        }
        v
    };
    assert_eq!(
        order,
        [
            ("m0".to_string(), true),
            ("m1".to_string(), true),
            ("m2".to_string(), false),
            ("m3".to_string(), false)
        ]
    );
}

#[tokio::test]
async fn acking_an_unknown_delivery_tag_closes_the_channel_with_406() {
    let w = Warren::start();
    let (c, ch) = w.channel().await;
    let mut ev = watch(&c);
    ch.basic_ack(42, BasicAckOptions::default()).await.unwrap();
    let err = channel_error(&ch, &mut ev).await;
    assert_eq!(reply_code(&err), Some(406), "{err:?}");
    assert_eq!(
        reply_text(&err),
        "PRECONDITION_FAILED - unknown delivery tag 42"
    );
    assert!(c.status().connected(), "a channel error only");
}

#[tokio::test]
async fn acking_a_delivery_twice_closes_the_channel_with_406() {
    let w = Warren::start();
    let (c, ch) = w.channel().await;
    let mut ev = watch(&c);
    let q = unique("double-ack");
    declare(&ch, &q).await;
    publish(&ch, "", &q, b"x").await;
    let m = get(&ch, &q).await.unwrap();
    let tag = m.delivery.delivery_tag;
    ch.basic_ack(tag, BasicAckOptions::default()).await.unwrap();
    ch.basic_ack(tag, BasicAckOptions::default()).await.unwrap();
    let err = channel_error(&ch, &mut ev).await;
    assert_eq!(reply_code(&err), Some(406), "{err:?}");
    assert_eq!(
        reply_text(&err),
        format!("PRECONDITION_FAILED - unknown delivery tag {tag}")
    );
}

#[tokio::test]
async fn nack_and_reject_of_unknown_tags_are_406() {
    let w = Warren::start();
    let (c, ch) = w.channel().await;
    let mut ev = watch(&c);
    ch.basic_nack(7, Default::default()).await.unwrap();
    let err = channel_error(&ch, &mut ev).await;
    assert_eq!(reply_code(&err), Some(406), "{err:?}");
    assert_eq!(
        reply_text(&err),
        "PRECONDITION_FAILED - unknown delivery tag 7"
    );
    let (c, ch) = w.channel().await;
    let mut ev = watch(&c);
    ch.basic_reject(7, Default::default()).await.unwrap();
    let err = channel_error(&ch, &mut ev).await;
    assert_eq!(reply_code(&err), Some(406), "{err:?}");
    assert_eq!(
        reply_text(&err),
        "PRECONDITION_FAILED - unknown delivery tag 7"
    );
    // ack(0, multiple) means "everything outstanding" and is fine even when
    // nothing is.
    let ch = c.create_channel().await.unwrap();
    ch.basic_ack(0, BasicAckOptions { multiple: true })
        .await
        .unwrap();
    within("basic.qos-ok", ch.basic_qos(0, Default::default()))
        .await
        .expect("ack(0, multiple=true) with nothing outstanding is not an error");
}

#[tokio::test]
async fn basic_recover_requeues_unacked_messages_to_the_consumer() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    let q = unique("recover");
    declare(&ch, &q).await;
    for i in 0..3 {
        publish(&ch, "", &q, i.to_string().as_bytes()).await;
    }
    let mut consumer = consume(&ch, &q, false).await;
    let mut first_tags = Vec::new();
    for i in 0..3 {
        let d = next(&mut consumer).await;
        assert_eq!(body_index(&d.data), i);
        first_tags.push(d.delivery_tag);
    }
    within(
        "basic.recover-ok",
        ch.basic_recover(BasicRecoverOptions { requeue: true }),
    )
    .await
    .unwrap();
    for i in 0..3 {
        let d = next(&mut consumer).await;
        assert_eq!(body_index(&d.data), i);
        assert!(d.redelivered, "recovered messages are redelivered");
        assert!(
            !first_tags.contains(&d.delivery_tag),
            "delivery tags are never reused"
        );
        d.ack(Default::default()).await.unwrap();
    }
}

#[test]
fn basic_recover_ok_comes_before_the_redeliveries() {
    // RabbitMQ: recover-ok, then basic.deliver(redelivered=true)
    // (conformance/RABBITMQ_BEHAVIOUR.md row 99). Clients such as lapin drop
    // buffered deliveries when recover-ok arrives, so the order matters.
    let w = Warren::start();
    let mut s = raw::connect(w.port);
    raw::open_channel(&mut s, 1);
    raw::send_method(
        &mut s,
        1,
        &AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "rq".into(),
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: Default::default(),
        })),
    );
    raw::read_method(&mut s);
    raw::publish(&mut s, 1, "", "rq", b"x");
    raw::send_method(&mut s, 1, &consume_method("rq", "c"));
    let mut saw_consume_ok = false;
    let mut saw_deliver = false;
    while !(saw_consume_ok && saw_deliver) {
        match raw::read_frame(&mut s) {
            AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_))) => {
                saw_consume_ok = true
            }
            AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::Deliver(d))) => {
                assert!(saw_consume_ok, "deliver before consume-ok");
                assert!(!d.redelivered);
                saw_deliver = true;
            }
            AMQPFrame::Header(..) | AMQPFrame::Body(..) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    // Content of the first delivery.
    raw::read_frame(&mut s);
    raw::read_frame(&mut s);
    raw::send_method(
        &mut s,
        1,
        &AMQPClass::Basic(basic::AMQPMethod::Recover(basic::Recover { requeue: true })),
    );
    match raw::read_frame(&mut s) {
        AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::RecoverOk(_))) => {}
        other => panic!("expected basic.recover-ok first, got {other:?}"),
    }
    match raw::read_frame(&mut s) {
        AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::Deliver(d))) => {
            assert!(d.redelivered);
            assert_eq!(d.delivery_tag, 2);
        }
        other => panic!("expected the redelivery after recover-ok, got {other:?}"),
    }
}

#[test]
fn basic_recover_with_requeue_false_is_540() {
    let w = Warren::start();
    let mut s = raw::connect(w.port);
    raw::open_channel(&mut s, 1);
    raw::send_method(
        &mut s,
        1,
        &AMQPClass::Basic(basic::AMQPMethod::Recover(basic::Recover {
            requeue: false,
        })),
    );
    let c = raw::expect_close_full(&mut s);
    assert_eq!(c.reply_code, 540);
    assert_eq!(c.reply_text.as_str(), "NOT_IMPLEMENTED - requeue=false");
    assert_eq!((c.class_id, c.method_id), (60, 110));
}

// ---------------------------------------------------------------- qos

#[tokio::test]
async fn qos_global_limits_the_channel_across_two_consumers() {
    let w = Warren::start();
    let (_pc, publisher) = w.channel().await;
    let (_c, ch) = w.channel().await;
    let q1 = unique("global-a");
    let q2 = unique("global-b");
    declare(&publisher, &q1).await;
    declare(&publisher, &q2).await;
    for i in 0..10 {
        publish(&publisher, "", &q1, format!("a{i}").as_bytes()).await;
        publish(&publisher, "", &q2, format!("b{i}").as_bytes()).await;
    }
    qos(&ch, 3, true).await;
    let mut a = consume(&ch, &q1, false).await;
    let mut b = consume(&ch, &q2, false).await;
    let got_a = collect_for(&mut a, Duration::from_millis(400), 10).await;
    let got_b = collect_for(&mut b, Duration::from_millis(100), 10).await;
    assert_eq!(
        got_a.len() + got_b.len(),
        3,
        "global prefetch 3 is shared by the channel's consumers ({} + {})",
        got_a.len(),
        got_b.len()
    );
    // One ack frees one slot for the channel.
    let first = got_a.first().or(got_b.first()).unwrap();
    first.ack(Default::default()).await.unwrap();
    let more_a = collect_for(&mut a, Duration::from_millis(300), 10).await;
    let more_b = collect_for(&mut b, Duration::from_millis(100), 10).await;
    assert_eq!(more_a.len() + more_b.len(), 1);
}

#[tokio::test]
async fn qos_per_consumer_and_global_limits_combine_as_in_rabbitmq() {
    // Measured on RabbitMQ (conformance/RABBITMQ_BEHAVIOUR.md rows 107-110).
    let w = Warren::start();
    let (_pc, publisher) = w.channel().await;
    for (per_consumer, global, expected) in [
        (Some(2), None, 4),
        (Some(2), Some(3), 3),
        (None, Some(3), 3),
    ] {
        let (_c, ch) = w.channel().await;
        let q = unique("qos-mix");
        declare(&publisher, &q).await;
        for i in 0..10 {
            publish(&publisher, "", &q, i.to_string().as_bytes()).await;
        }
        if let Some(n) = per_consumer {
            qos(&ch, n, false).await;
        }
        if let Some(n) = global {
            qos(&ch, n, true).await;
        }
        let mut a = consume(&ch, &q, false).await;
        let mut b = consume(&ch, &q, false).await;
        let ga = collect_for(&mut a, Duration::from_millis(400), 10)
            .await
            .len();
        let gb = collect_for(&mut b, Duration::from_millis(100), 10)
            .await
            .len();
        assert_eq!(
            ga + gb,
            expected,
            "per-consumer {per_consumer:?}, global {global:?}: {ga} + {gb}"
        );
    }
}

#[tokio::test]
async fn qos_applies_only_to_consumers_created_after_it() {
    let w = Warren::start();
    let (_pc, publisher) = w.channel().await;
    let (_c, ch) = w.channel().await;
    let q = unique("qos-late");
    declare(&publisher, &q).await;
    let mut consumer = consume(&ch, &q, false).await;
    qos(&ch, 1, false).await;
    for i in 0..5 {
        publish(&publisher, "", &q, i.to_string().as_bytes()).await;
    }
    let got = collect_for(&mut consumer, Duration::from_millis(500), 5).await;
    assert_eq!(got.len(), 5, "the existing consumer is not limited");
}

// consumer_timeout, as RabbitMQ: a delivery left unacked too long closes the
// channel with 406 and the message is requeued (issue 13).
#[tokio::test]
async fn a_delivery_unacked_past_the_consumer_timeout_closes_the_channel_and_is_requeued() {
    let w = Warren::start_with("[limits]\nconsumer_timeout = 1500");
    let conn = w.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let mut watch = watch(&conn);
    declare(&ch, "slow-ack").await;
    publish(&ch, "", "slow-ack", b"take your time").await;
    let mut c = consume(&ch, "slow-ack", false).await;
    let d = next(&mut c).await;
    assert!(!d.redelivered);
    let err = broker_error(&mut watch).await;
    assert_eq!(common::reply_code(&err), Some(406), "{err:?}");
    let text = common::reply_text(&err);
    assert!(
        text.contains(&format!(
            "delivery acknowledgement on channel {} timed out. Timeout value used: 1500 ms. This timeout value can be configured, see consumers doc guide to learn more",
            ch.id()
        )),
        "{text}"
    );
    // The message is back in the queue, marked redelivered.
    let ch2 = conn.create_channel().await.unwrap();
    let m = get_eventually(&ch2, "slow-ack").await;
    assert!(m.delivery.redelivered);
    assert_eq!(m.delivery.data, b"take your time");
}

#[tokio::test]
async fn x_consumer_timeout_on_a_queue_overrides_the_default() {
    let w = Warren::start();
    let conn = w.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let mut watch = watch(&conn);
    let mut args = FieldTable::default();
    args.insert("x-consumer-timeout".into(), AMQPValue::LongLongInt(1000));
    ch.queue_declare("quick-ack".into(), QueueDeclareOptions::default(), args)
        .await
        .unwrap();
    publish(&ch, "", "quick-ack", b"hurry").await;
    let mut c = consume(&ch, "quick-ack", false).await;
    let _d = next(&mut c).await;
    let err = broker_error(&mut watch).await;
    assert_eq!(common::reply_code(&err), Some(406), "{err:?}");
    assert!(common::reply_text(&err).contains("Timeout value used: 1000 ms"));
}

#[tokio::test]
async fn acked_deliveries_never_time_out() {
    let w = Warren::start_with("[limits]\nconsumer_timeout = 1000");
    let (_c, ch) = w.channel().await;
    declare(&ch, "prompt").await;
    let mut c = consume(&ch, "prompt", false).await;
    for i in 0..3 {
        publish(&ch, "", "prompt", format!("m{i}").as_bytes()).await;
        let d = next(&mut c).await;
        d.ack(BasicAckOptions::default()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    // Still open after more than the timeout in total.
    declare(&ch, "prompt-2").await;
}
