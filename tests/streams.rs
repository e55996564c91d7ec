//! Stream queues over AMQP 0-9-1, as RabbitMQ 3.10 has them (probed; see
//! conformance/RABBITMQ_BEHAVIOUR.md, "Stream queues over AMQP 0-9-1"):
//! declare rules, offsets, prefetch as credit, the x-stream-offset header,
//! refused operations, retention, and confirmed messages across a crash.

mod common;
mod support;

use std::time::Duration;

use common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Consumer};
use support::{assert_quiet, collect_for, next, watch, within};

fn stream_args(extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    t.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    for (k, v) in extra {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

async fn declare_stream(ch: &Channel, name: &str, extra: &[(&str, AMQPValue)]) {
    within(
        "queue.declare-ok",
        ch.queue_declare(name.into(), durable(), stream_args(extra)),
    )
    .await
    .expect("declare stream");
}

/// Publishes `n` messages "m<i>" (from `from`) with confirms.
async fn publish_confirmed(ch: &Channel, stream: &str, from: usize, n: usize) {
    let mut pending = Vec::new();
    for i in from..from + n {
        pending.push(
            ch.basic_publish(
                "".into(),
                stream.into(),
                BasicPublishOptions::default(),
                format!("m{i}").as_bytes(),
                BasicProperties::default(),
            )
            .await
            .expect("publish"),
        );
    }
    for p in pending {
        let c = within("publisher confirm", p).await.expect("confirm");
        assert!(c.is_ack(), "publish not confirmed: {c:?}");
    }
}

/// Publishes `n` copies of `body` and waits for each confirm to be an ack.
async fn publish_copies(ch: &Channel, stream: &str, body: &[u8], n: usize) {
    let mut pending = Vec::new();
    for _ in 0..n {
        pending.push(
            ch.basic_publish(
                "".into(),
                stream.into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default(),
            )
            .await
            .expect("publish"),
        );
    }
    for p in pending {
        assert!(p.await.expect("confirm").is_ack());
    }
}

async fn confirm_channel(conn: &lapin::Connection) -> Channel {
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch
}

/// A consumer with prefetch `prefetch` starting at `offset` (None: no
/// x-stream-offset argument).
async fn stream_consumer(
    conn: &lapin::Connection,
    stream: &str,
    prefetch: u16,
    offset: Option<AMQPValue>,
) -> (Channel, Consumer) {
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(prefetch, BasicQosOptions::default())
        .await
        .unwrap();
    let mut args = FieldTable::default();
    if let Some(o) = offset {
        args.insert("x-stream-offset".into(), o);
    }
    let c = within(
        "basic.consume-ok",
        ch.basic_consume(
            stream.into(),
            "".into(),
            BasicConsumeOptions::default(),
            args,
        ),
    )
    .await
    .expect("consume");
    (ch, c)
}

fn offset_of(d: &lapin::message::Delivery) -> i64 {
    let h = d.properties.headers().as_ref().expect("headers");
    match h.inner().get("x-stream-offset") {
        Some(AMQPValue::LongLongInt(n)) => *n,
        other => panic!("x-stream-offset header: {other:?}"),
    }
}

/// Receives `n` deliveries, acking each; returns (offset, body).
async fn take_acked(c: &mut Consumer, n: usize) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let d = next(c).await;
        assert!(!d.redelivered, "stream deliveries are never redelivered");
        out.push((offset_of(&d), String::from_utf8_lossy(&d.data).into_owned()));
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    out
}

fn expected(range: std::ops::Range<usize>) -> Vec<(i64, String)> {
    range.map(|i| (i as i64, format!("m{i}"))).collect()
}

fn ls(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

#[tokio::test]
async fn a_stream_must_be_durable_and_named_and_refuses_classic_arguments() {
    let w = Warren::start();
    let conn = w.connect().await;
    let q = |ch: &Channel, name: &str, opts: QueueDeclareOptions, args: FieldTable| {
        let (ch, name) = (ch.clone(), name.to_owned());
        async move { ch.queue_declare(name.as_str().into(), opts, args).await }
    };
    let cases: Vec<(QueueDeclareOptions, FieldTable, String)> = vec![
        (
            QueueDeclareOptions::default(),
            stream_args(&[]),
            "PRECONDITION_FAILED - invalid property 'non-durable' for queue 's1' in vhost '/'".into(),
        ),
        (
            QueueDeclareOptions {
                durable: true,
                exclusive: true,
                ..Default::default()
            },
            stream_args(&[]),
            "PRECONDITION_FAILED - invalid property 'exclusive-owner' for queue 's1' in vhost '/'".into(),
        ),
        (
            QueueDeclareOptions {
                durable: true,
                auto_delete: true,
                ..Default::default()
            },
            stream_args(&[]),
            "PRECONDITION_FAILED - invalid property 'auto-delete' for queue 's1' in vhost '/'".into(),
        ),
        (
            durable(),
            stream_args(&[("x-max-length", AMQPValue::LongInt(10))]),
            "PRECONDITION_FAILED - invalid arg 'x-max-length' for queue 's1' in vhost '/' of queue type rabbit_stream_queue".into(),
        ),
        (
            durable(),
            stream_args(&[("x-max-age", ls("1.5h"))]),
            "PRECONDITION_FAILED - invalid arg 'x-max-age' for queue 's1' in vhost '/': invalid_max_age".into(),
        ),
    ];
    for (opts, args, text) in cases {
        let ch = conn.create_channel().await.unwrap();
        let e = q(&ch, "s1", opts, args).await.expect_err("refused");
        assert_eq!(reply_code(&e), Some(406));
        assert_eq!(reply_text(&e), text);
    }
    let ch = conn.create_channel().await.unwrap();
    let e = q(&ch, "", durable(), stream_args(&[]))
        .await
        .expect_err("server-named stream refused");
    assert_eq!(
        reply_text(&e),
        "PRECONDITION_FAILED - Cannot declare a server-named queue for type rabbit_stream_queue"
    );
    let ch = conn.create_channel().await.unwrap();
    let e = q(&ch, "s1", durable(), {
        let mut t = FieldTable::default();
        t.insert("x-queue-type".into(), ls("foo"));
        t
    })
    .await
    .expect_err("unknown type refused");
    assert_eq!(
        reply_text(&e),
        "PRECONDITION_FAILED - invalid arg 'x-queue-type' for queue 's1' in vhost '/': \"unsupported queue type 'foo'\""
    );

    // Created with retention; a redeclare is compared, not revalidated.
    let ch = conn.create_channel().await.unwrap();
    declare_stream(&ch, "s1", &[("x-max-age", ls("1h"))]).await;
    declare_stream(
        &ch,
        "s1",
        &[
            ("x-max-age", ls("1h")),
            ("x-message-ttl", AMQPValue::LongInt(5)),
        ],
    )
    .await;
    let e = q(
        &ch,
        "s1",
        durable(),
        stream_args(&[("x-max-age", ls("60m"))]),
    )
    .await
    .expect_err("different age refused");
    assert_eq!(
        reply_text(&e),
        "PRECONDITION_FAILED - inequivalent arg 'x-max-age' for queue 's1' in vhost '/': received '60m' but current is '1h'"
    );
}

#[tokio::test]
async fn each_offset_specification_starts_where_rabbitmq_starts() {
    let w = Warren::start();
    let conn = w.connect().await;
    let ch = confirm_channel(&conn).await;
    declare_stream(&ch, "offsets", &[]).await;
    publish_confirmed(&ch, "offsets", 0, 10).await;

    for spec in [
        ls("first"),
        AMQPValue::LongInt(0),
        AMQPValue::LongLongInt(-1),
        AMQPValue::Timestamp(0),
        ls("1h"),
    ] {
        let (_ch, mut c) = stream_consumer(&conn, "offsets", 100, Some(spec.clone())).await;
        assert_eq!(take_acked(&mut c, 10).await, expected(0..10), "{spec:?}");
        assert_quiet(&mut c, Duration::from_millis(200)).await;
    }
    let (_ch, mut c5) = stream_consumer(&conn, "offsets", 100, Some(AMQPValue::LongInt(5))).await;
    assert_eq!(take_acked(&mut c5, 5).await, expected(5..10));
    let (_ch, mut last) = stream_consumer(&conn, "offsets", 100, Some(ls("last"))).await;
    let got = collect_for(&mut last, Duration::from_millis(500), 100).await;
    let offsets: Vec<i64> = got.iter().map(offset_of).collect();
    assert!(
        !offsets.is_empty() && *offsets.last().unwrap() == 9,
        "last starts at the last chunk, ending with 9: {offsets:?}"
    );
    let later = AMQPValue::Timestamp(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600,
    );
    let mut quiet = Vec::new();
    for spec in [
        None,
        Some(ls("next")),
        Some(AMQPValue::LongInt(10)),
        Some(later),
    ] {
        let (ch, mut c) = stream_consumer(&conn, "offsets", 100, spec).await;
        assert_quiet(&mut c, Duration::from_millis(200)).await;
        quiet.push((ch, c));
    }
    publish_confirmed(&ch, "offsets", 10, 3).await;
    for (_ch, c) in quiet.iter_mut() {
        assert_eq!(take_acked(c, 3).await, expected(10..13));
    }
    assert_eq!(take_acked(&mut c5, 3).await, expected(10..13));
    // Declare-ok counts what the stream holds; consumption does not shorten it.
    let q = ch
        .queue_declare("offsets".into(), durable(), stream_args(&[]))
        .await
        .unwrap();
    assert_eq!(q.message_count(), 13);
    assert_eq!(q.consumer_count(), 0);
}

#[tokio::test]
async fn prefetch_is_credit_that_acks_give_back() {
    let w = Warren::start();
    let conn = w.connect().await;
    let ch = confirm_channel(&conn).await;
    declare_stream(&ch, "credit", &[]).await;
    publish_confirmed(&ch, "credit", 0, 30).await;
    let (_cch, mut c) = stream_consumer(&conn, "credit", 5, Some(ls("first"))).await;
    let got = collect_for(&mut c, Duration::from_millis(500), 30).await;
    assert_eq!(got.len(), 5, "five deliveries for a prefetch of five");
    got[0].ack(BasicAckOptions::default()).await.unwrap();
    let more = collect_for(&mut c, Duration::from_millis(500), 30).await;
    assert_eq!(more.iter().map(offset_of).collect::<Vec<_>>(), vec![5]);
    more[0]
        .ack(BasicAckOptions { multiple: true })
        .await
        .unwrap();
    let rest = collect_for(&mut c, Duration::from_millis(500), 30).await;
    assert_eq!(
        rest.iter().map(offset_of).collect::<Vec<_>>(),
        (6..11).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn consumers_need_a_prefetch_and_manual_acks() {
    let w = Warren::start();
    let conn = w.connect().await;
    let ch = conn.create_channel().await.unwrap();
    declare_stream(&ch, "strict", &[]).await;
    let e = ch
        .basic_consume(
            "strict".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("no prefetch refused");
    assert_eq!(
        reply_text(&e),
        "PRECONDITION_FAILED - consumer prefetch count is not set for 'queue 'strict' in vhost '/''"
    );
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(10, BasicQosOptions::default()).await.unwrap();
    let mut args = FieldTable::default();
    args.insert("x-stream-offset".into(), ls("5"));
    let e = ch
        .basic_consume(
            "strict".into(),
            "".into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await
        .expect_err("string offset refused");
    assert_eq!(
        reply_text(&e),
        "PRECONDITION_FAILED - invalid arg 'x-stream-offset' for queue 'strict' in vhost '/': {invalid_stream_offset_arg,{longstr,<<\"5\">>}}"
    );
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(10, BasicQosOptions::default()).await.unwrap();
    let mut w1 = watch(&conn);
    let _ = ch
        .basic_consume(
            "strict".into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    let e = within("connection.close", w1.next_error()).await;
    assert_eq!(reply_code(&e), Some(540));
    assert_eq!(
        reply_text(&e),
        "NOT_IMPLEMENTED - automatic acknowledgement not supported by stream queues queue 'strict' in vhost '/'"
    );
}

#[tokio::test]
async fn get_purge_and_reject_close_the_connection_as_in_rabbitmq() {
    let w = Warren::start();
    let setup = w.connect().await;
    let ch = confirm_channel(&setup).await;
    declare_stream(&ch, "noget", &[]).await;
    publish_confirmed(&ch, "noget", 0, 2).await;
    let q = "queue 'noget' in vhost '/'";

    let conn = w.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let mut ev = watch(&conn);
    let _ = ch
        .basic_get("noget".into(), BasicGetOptions::default())
        .await;
    let e = within("connection.close", ev.next_error()).await;
    assert_eq!(
        reply_text(&e),
        format!("NOT_IMPLEMENTED - basic.get not supported by stream queues {q}")
    );

    let conn = w.connect().await;
    let ch = conn.create_channel().await.unwrap();
    let mut ev = watch(&conn);
    let _ = ch
        .queue_purge("noget".into(), QueuePurgeOptions::default())
        .await;
    let e = within("connection.close", ev.next_error()).await;
    assert_eq!(
        reply_text(&e),
        format!("NOT_IMPLEMENTED - queue.purge not supported by stream queues {q}")
    );

    let conn = w.connect().await;
    let (_ch, mut c) = stream_consumer(&conn, "noget", 10, Some(ls("first"))).await;
    let d = next(&mut c).await;
    let mut ev = watch(&conn);
    let _ = d.nack(BasicNackOptions::default()).await;
    let e = within("connection.close", ev.next_error()).await;
    assert_eq!(reply_code(&e), Some(540));
    assert_eq!(
        reply_text(&e),
        format!("NOT_IMPLEMENTED - basic.nack and basic.reject not supported by stream queues {q}")
    );
    // The stream still holds both messages for everyone else.
    let conn = w.connect().await;
    let (_ch, mut c) = stream_consumer(&conn, "noget", 10, Some(ls("first"))).await;
    assert_eq!(take_acked(&mut c, 2).await, expected(0..2));
}

#[tokio::test]
async fn deliveries_keep_routing_and_properties_and_add_the_offset_header() {
    let w = Warren::start();
    let conn = w.connect().await;
    let ch = confirm_channel(&conn).await;
    declare_stream(&ch, "props", &[]).await;
    ch.exchange_declare(
        "px".into(),
        lapin::ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        "props".into(),
        "px".into(),
        "k".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut headers = FieldTable::default();
    headers.insert("a".into(), AMQPValue::LongInt(1));
    ch.basic_publish(
        "px".into(),
        "k".into(),
        BasicPublishOptions::default(),
        b"hello",
        BasicProperties::default()
            .with_content_type("text/plain".into())
            .with_message_id("id-1".into())
            .with_headers(headers),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let (_ch, mut c) = stream_consumer(&conn, "props", 10, Some(ls("first"))).await;
    let d = next(&mut c).await;
    assert_eq!(d.exchange.as_str(), "px");
    assert_eq!(d.routing_key.as_str(), "k");
    assert_eq!(&d.data[..], b"hello");
    assert_eq!(
        d.properties.content_type().as_ref().unwrap().as_str(),
        "text/plain"
    );
    assert_eq!(d.properties.message_id().as_ref().unwrap().as_str(), "id-1");
    let h = d.properties.headers().as_ref().unwrap();
    assert_eq!(h.inner().get("a"), Some(&AMQPValue::LongInt(1)));
    assert_eq!(offset_of(&d), 0);
}

#[tokio::test]
async fn confirmed_messages_survive_sigkill_with_their_offsets() {
    let mut w = Warren::start();
    {
        let conn = w.connect().await;
        let ch = confirm_channel(&conn).await;
        declare_stream(&ch, "crash", &[]).await;
        publish_confirmed(&ch, "crash", 0, 500).await;
    }
    w.kill();
    w.restart();
    let conn = w.connect().await;
    let (_ch, mut c) = stream_consumer(&conn, "crash", 1000, Some(ls("first"))).await;
    assert_eq!(take_acked(&mut c, 500).await, expected(0..500));
    // Numbering goes on after the recovered entries.
    let ch = confirm_channel(&conn).await;
    publish_confirmed(&ch, "crash", 500, 1).await;
    assert_eq!(take_acked(&mut c, 1).await, expected(500..501));
}

#[tokio::test]
async fn retention_by_size_removes_whole_old_segments() {
    let w = Warren::start();
    let conn = w.connect().await;
    let ch = confirm_channel(&conn).await;
    declare_stream(
        &ch,
        "small",
        &[
            ("x-max-length-bytes", AMQPValue::LongInt(20_000)),
            ("x-stream-max-segment-size-bytes", AMQPValue::LongInt(5_000)),
        ],
    )
    .await;
    let body = vec![b'x'; 500];
    for _ in 0..20 {
        publish_copies(&ch, "small", &body, 10).await;
    }
    let (_ch, mut c) = stream_consumer(&conn, "small", 1000, Some(ls("first"))).await;
    let got = collect_for(&mut c, Duration::from_millis(800), 1000).await;
    let offsets: Vec<i64> = got.iter().map(offset_of).collect();
    assert!(!offsets.is_empty());
    assert!(
        offsets[0] > 0,
        "the oldest segments were removed: {offsets:?}"
    );
    assert_eq!(*offsets.last().unwrap(), 199, "the newest are kept");
    assert!(
        offsets.windows(2).all(|w| w[1] == w[0] + 1),
        "what is kept is contiguous"
    );
    assert!(
        got.len() < 200 && got.len() * 500 <= 40_000,
        "{} kept",
        got.len()
    );
}

#[tokio::test]
async fn deleting_a_stream_cancels_its_consumers_and_removes_its_files() {
    let w = Warren::start();
    let conn = w.connect().await;
    let ch = confirm_channel(&conn).await;
    declare_stream(&ch, "gone", &[]).await;
    publish_confirmed(&ch, "gone", 0, 3).await;
    let streams = w.dir.path().join("streams");
    let count = || std::fs::read_dir(&streams).map_or(0, |d| d.count());
    assert_eq!(count(), 1);
    let (cch, mut c) = stream_consumer(&conn, "gone", 10, Some(ls("first"))).await;
    take_acked(&mut c, 3).await;
    let n = ch
        .queue_delete("gone".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    assert_eq!(n, 0);
    let end = within("consumer cancelled", c.next()).await;
    assert!(end.is_none(), "consumer ended by basic.cancel");
    assert!(cch.status().connected(), "its channel stays open");
    // The files go on a thread of their own (a stalled disk must not hold
    // queue.delete), a moment after delete-ok.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while count() != 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(count(), 0);
    declare_stream(&ch, "gone", &[]).await;
    let (_ch, mut c) = stream_consumer(&conn, "gone", 10, Some(ls("first"))).await;
    assert_quiet(&mut c, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn retention_by_age_removes_segments_older_than_max_age() {
    let w = Warren::start();
    let conn = w.connect().await;
    let ch = confirm_channel(&conn).await;
    declare_stream(
        &ch,
        "aged",
        &[
            ("x-max-age", ls("1s")),
            ("x-stream-max-segment-size-bytes", AMQPValue::LongInt(2_000)),
        ],
    )
    .await;
    publish_confirmed(&ch, "aged", 0, 300).await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    publish_confirmed(&ch, "aged", 300, 300).await;
    let (_ch, mut c) = stream_consumer(&conn, "aged", 1000, Some(ls("first"))).await;
    let got = collect_for(&mut c, Duration::from_millis(800), 1000).await;
    let offsets: Vec<i64> = got.iter().map(offset_of).collect();
    // Whole segments go: the one holding both the last old messages and
    // the first new ones stays (segments here hold some 40-60 entries).
    assert!(
        offsets.first().is_some_and(|o| (200..=300).contains(o)),
        "segments older than a second are gone: starts at {:?}",
        offsets.first()
    );
    assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1));
    assert_eq!(offsets.last(), Some(&599));
}

#[tokio::test]
async fn a_consumer_far_behind_reads_everything_in_order_while_publishing_goes_on() {
    let w = Warren::start();
    let conn = w.connect().await;
    let ch = confirm_channel(&conn).await;
    declare_stream(&ch, "behind", &[]).await;
    // Enough to leave the writer's tail cache: the first reads hit disk.
    let body = vec![b'b'; 1000];
    let total = 20_000;
    publish_copies(&ch, "behind", &body, total / 2).await;
    let (_cch, mut c) = stream_consumer(&conn, "behind", 500, Some(ls("first"))).await;
    let publisher = {
        let ch = ch.clone();
        let body = body.clone();
        tokio::spawn(async move { publish_copies(&ch, "behind", &body, total / 2).await })
    };
    for i in 0..total as i64 {
        let d = next(&mut c).await;
        assert_eq!(offset_of(&d), i);
        assert_eq!(d.data.len(), 1000);
        if i % 50 == 49 {
            d.ack(BasicAckOptions { multiple: true }).await.unwrap();
        }
    }
    publisher.await.unwrap();
}

/// A tracked consumer with tag `tag` (`x-stream-offset: null` when `null`,
/// else `x-stream-automatic-offset-tracking: true` from `first`).
async fn tracked_consumer(
    conn: &lapin::Connection,
    stream: &str,
    tag: &str,
    null: bool,
) -> (Channel, Consumer) {
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(100, BasicQosOptions::default()).await.unwrap();
    let mut args = FieldTable::default();
    if null {
        args.insert("x-stream-offset".into(), AMQPValue::Void);
    } else {
        args.insert("x-stream-offset".into(), ls("first"));
        args.insert(
            "x-stream-automatic-offset-tracking".into(),
            AMQPValue::Boolean(true),
        );
    }
    let c = within(
        "basic.consume-ok",
        ch.basic_consume(
            stream.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            args,
        ),
    )
    .await
    .expect("consume");
    (ch, c)
}

#[tokio::test]
async fn a_tracked_consumer_resumes_after_its_last_ack_across_restarts() {
    let mut w = Warren::start();
    {
        let conn = w.connect().await;
        let ch = confirm_channel(&conn).await;
        declare_stream(&ch, "tracked", &[]).await;
        publish_confirmed(&ch, "tracked", 0, 20).await;
        for null in [false, true] {
            let tag = if null { "by-null" } else { "by-flag" };
            let (cch, mut c) = tracked_consumer(&conn, "tracked", tag, null).await;
            assert_eq!(take_acked(&mut c, 4).await, expected(0..4));
            // Delivered but not acked: not counted as read.
            let _unacked = next(&mut c).await;
            cch.close(200, "".into()).await.unwrap();
            let (_cch, mut c) = tracked_consumer(&conn, "tracked", tag, null).await;
            assert_eq!(take_acked(&mut c, 3).await, expected(4..7), "{tag}");
        }
        // Another tag starts from the beginning; an untracked consumer of
        // the same tag is not moved.
        let (_cch, mut c) = tracked_consumer(&conn, "tracked", "other", false).await;
        assert_eq!(take_acked(&mut c, 1).await, expected(0..1));
        // Positions are written within a fraction of a second.
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    w.kill();
    w.restart();
    let conn = w.connect().await;
    let (_cch, mut c) = tracked_consumer(&conn, "tracked", "by-flag", false).await;
    assert_eq!(take_acked(&mut c, 2).await, expected(7..9));
    let (cch, mut c) = tracked_consumer(&conn, "tracked", "other", false).await;
    assert_eq!(take_acked(&mut c, 1).await, expected(1..2));
    // A method after the ack on the same channel: once it is answered the
    // broker has handled the ack (a stop could otherwise beat it).
    within(
        "queue.declare-ok",
        cch.queue_declare(
            "tracked".into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("passive declare");
    // A clean stop writes what is pending at once.
    drop(c);
    w.terminate();
    w.restart();
    let conn = w.connect().await;
    let (_cch, mut c) = tracked_consumer(&conn, "tracked", "other", false).await;
    assert_eq!(take_acked(&mut c, 1).await, expected(2..3));
}

#[tokio::test]
async fn filtering_consumers_get_only_the_values_they_ask_for() {
    let w = Warren::start();
    let conn = w.connect().await;
    let ch = confirm_channel(&conn).await;
    declare_stream(&ch, "colours", &[]).await;
    // Batches of one colour each, so most chunks hold one value.
    let colours = [Some("red"), Some("blue"), None, Some("green"), Some("red")];
    let mut n = 0;
    let mut expect: std::collections::HashMap<&str, Vec<i64>> = Default::default();
    for colour in colours {
        let mut pending = Vec::new();
        for _ in 0..20 {
            let mut props = BasicProperties::default();
            if let Some(c) = colour {
                let mut h = FieldTable::default();
                h.insert("x-stream-filter-value".into(), ls(c));
                props = props.with_headers(h);
            }
            pending.push(
                ch.basic_publish(
                    "".into(),
                    "colours".into(),
                    BasicPublishOptions::default(),
                    colour.unwrap_or("none").as_bytes(),
                    props,
                )
                .await
                .unwrap(),
            );
            expect.entry(colour.unwrap_or("none")).or_default().push(n);
            n += 1;
        }
        for p in pending {
            assert!(p.await.unwrap().is_ack());
        }
    }
    let check = |filter: AMQPValue, unfiltered: bool, want: &[&str]| {
        let conn = &conn;
        let mut offsets: Vec<i64> = want.iter().flat_map(|c| expect[c].clone()).collect();
        offsets.sort_unstable();
        let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        async move {
            let ch = conn.create_channel().await.unwrap();
            ch.basic_qos(1000, BasicQosOptions::default())
                .await
                .unwrap();
            let mut args = FieldTable::default();
            args.insert("x-stream-offset".into(), ls("first"));
            args.insert("x-stream-filter".into(), filter);
            if unfiltered {
                args.insert("x-stream-match-unfiltered".into(), AMQPValue::Boolean(true));
            }
            let mut c = ch
                .basic_consume(
                    "colours".into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    args,
                )
                .await
                .unwrap();
            let got = collect_for(&mut c, Duration::from_millis(800), 1000).await;
            let got_offsets: Vec<i64> = got.iter().map(offset_of).collect();
            assert_eq!(got_offsets, offsets, "filter {want:?}");
            for d in &got {
                let body = String::from_utf8_lossy(&d.data).into_owned();
                assert!(want.contains(&body), "{body} delivered to {want:?}");
            }
        }
    };
    check(ls("red"), false, &["red"]).await;
    check(ls("green"), true, &["green", "none"]).await;
    let list = AMQPValue::FieldArray(vec![ls("blue"), ls("red")].into());
    check(list, false, &["blue", "red"]).await;
    // Without a filter, everything.
    let (_ch, mut c) = stream_consumer(&conn, "colours", 1000, Some(ls("first"))).await;
    assert_eq!(
        collect_for(&mut c, Duration::from_millis(800), 1000)
            .await
            .len(),
        100
    );
}

#[tokio::test]
async fn a_policy_sets_retention_and_the_listing_shows_a_stream() {
    let w = Warren::start();
    let body = serde_json::json!({
        "pattern": "^pol$",
        "apply-to": "queues",
        "definition": {"max-length-bytes": 20000, "stream-max-segment-size-bytes": 5000},
    });
    let (status, _) = w.api("PUT", "/api/policies/%2F/streams", Some(&body));
    assert!(status == 201 || status == 204, "policy: {status}");
    let conn = w.connect().await;
    let ch = confirm_channel(&conn).await;
    declare_stream(&ch, "pol", &[]).await;
    let body = vec![b'p'; 500];
    for _ in 0..20 {
        publish_copies(&ch, "pol", &body, 10).await;
    }
    let (_ch, mut c) = stream_consumer(&conn, "pol", 1000, Some(ls("first"))).await;
    let got = collect_for(&mut c, Duration::from_millis(800), 1000).await;
    let first = got.first().map(offset_of);
    assert!(
        first.is_some_and(|o| o > 0),
        "retention by policy: starts at {first:?}"
    );
    assert_eq!(got.last().map(offset_of), Some(199));
    let (status, q) = w.api("GET", "/api/queues/%2F/pol", None);
    assert_eq!(status, 200);
    assert_eq!(q["type"], "stream");
    assert_eq!(q["messages_ready"].as_u64(), Some(got.len() as u64));
}
