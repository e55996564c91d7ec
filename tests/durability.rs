//! Durability: definitions and persistent messages survive restarts and
//! crashes; confirms are only sent for what is on disk; damaged store files
//! never stop the broker from starting.

mod common;
mod support;

use std::time::Duration;

use common::*;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use support::{drain_strings, within};

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

async fn publish_persistent(ch: &Channel, queue: &str, body: &str) {
    ch.basic_publish(
        "".into(),
        queue.into(),
        BasicPublishOptions::default(),
        body.as_bytes(),
        BasicProperties::default().with_delivery_mode(2),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

async fn confirm_channel(w: &Warren) -> (lapin::Connection, Channel) {
    let (c, ch) = w.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    (c, ch)
}

#[tokio::test]
async fn durable_definitions_survive_a_restart_and_transient_ones_do_not() {
    let mut w = Warren::start();
    {
        let (_c, ch) = w.channel().await;
        ch.exchange_declare(
            "dx".into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.exchange_declare(
            "tx".into(),
            lapin::ExchangeKind::Fanout,
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_declare("dq".into(), durable(), FieldTable::default())
            .await
            .unwrap();
        ch.queue_declare(
            "tq".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_bind(
            "dq".into(),
            "dx".into(),
            "a.#".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    w.kill();
    w.restart();
    let (c, ch) = w.channel().await;
    assert!(support::exchange_exists(&c, "dx").await);
    assert!(support::queue_exists(&c, "dq").await);
    assert!(!support::exchange_exists(&c, "tx").await);
    assert!(!support::queue_exists(&c, "tq").await);
    // The binding came back too.
    ch.basic_publish(
        "dx".into(),
        "a.b".into(),
        Default::default(),
        b"routed",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    let got = within("get", async {
        loop {
            if let Some(m) = support::get(&ch, "dq").await {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(got.delivery.data, b"routed");
}

#[tokio::test]
async fn persistent_messages_survive_a_crash_in_order_and_transient_ones_do_not() {
    let mut w = Warren::start();
    {
        let (_c, ch) = confirm_channel(&w).await;
        ch.queue_declare("orders".into(), durable(), FieldTable::default())
            .await
            .unwrap();
        for i in 0..100 {
            publish_persistent(&ch, "orders", &format!("p{i}")).await;
            // A transient message in between: lost on restart.
            ch.basic_publish(
                "".into(),
                "orders".into(),
                Default::default(),
                b"transient",
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
    }
    w.kill();
    w.restart();
    let (_c, ch) = w.channel().await;
    let got = drain_strings(&ch, "orders").await;
    let want: Vec<String> = (0..100).map(|i| format!("p{i}")).collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn acked_messages_stay_acked_and_unacked_ones_come_back_redelivered() {
    let mut w = Warren::start();
    {
        let (_c, ch) = confirm_channel(&w).await;
        ch.queue_declare("work".into(), durable(), FieldTable::default())
            .await
            .unwrap();
        for i in 0..6 {
            publish_persistent(&ch, "work", &format!("m{i}")).await;
        }
        // m0, m1 acked; m2 delivered but not acked; m3..m5 never delivered.
        for _ in 0..2 {
            let m = support::get(&ch, "work").await.unwrap();
            m.delivery.ack(BasicAckOptions::default()).await.unwrap();
        }
        let _m2 = support::get(&ch, "work").await.unwrap();
        // Let the store write the ack and delivery records.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    w.kill();
    w.restart();
    let (_c, ch) = w.channel().await;
    let mut seen = Vec::new();
    while let Some(m) = support::get(&ch, "work").await {
        seen.push((
            String::from_utf8(m.delivery.data.clone()).unwrap(),
            m.delivery.redelivered,
        ));
    }
    assert_eq!(
        seen,
        vec![
            ("m2".to_string(), true),
            ("m3".to_string(), false),
            ("m4".to_string(), false),
            ("m5".to_string(), false)
        ]
    );
}

#[tokio::test]
async fn a_transaction_commit_is_durable() {
    let mut w = Warren::start();
    {
        let (_c, ch) = w.channel().await;
        ch.queue_declare("txq".into(), durable(), FieldTable::default())
            .await
            .unwrap();
        ch.tx_select().await.unwrap();
        for i in 0..10 {
            ch.basic_publish(
                "".into(),
                "txq".into(),
                Default::default(),
                format!("t{i}").as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap();
        }
        ch.tx_commit().await.unwrap();
    }
    w.kill();
    w.restart();
    let (_c, ch) = w.channel().await;
    assert_eq!(drain_strings(&ch, "txq").await.len(), 10);
}

#[tokio::test]
async fn deleting_a_durable_queue_deletes_its_stored_messages() {
    let mut w = Warren::start();
    {
        let (_c, ch) = confirm_channel(&w).await;
        ch.queue_declare("gone".into(), durable(), FieldTable::default())
            .await
            .unwrap();
        publish_persistent(&ch, "gone", "x").await;
        ch.queue_delete("gone".into(), QueueDeleteOptions::default())
            .await
            .unwrap();
        ch.queue_declare("gone".into(), durable(), FieldTable::default())
            .await
            .unwrap();
        publish_persistent(&ch, "gone", "y").await;
    }
    w.kill();
    w.restart();
    let (_c, ch) = w.channel().await;
    assert_eq!(drain_strings(&ch, "gone").await, vec!["y".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_clients_with_320_and_exits_0() {
    let mut w = Warren::start();
    let c = w.connect().await;
    let mut watch = support::watch(&c);
    // Blocking wait for the process; lapin keeps running on the other worker.
    let status = tokio::task::block_in_place(|| w.terminate());
    assert!(status.success(), "exit status {status}");
    let e = within("connection error", watch.next_error()).await;
    assert_eq!(reply_code(&e), Some(320), "{e:?}");
}

fn segment_files(w: &Warren) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(w.dir.path().join("messages"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn a_torn_tail_and_a_corrupt_record_do_not_stop_the_broker() {
    let mut w = Warren::start();
    {
        let (_c, ch) = confirm_channel(&w).await;
        ch.queue_declare("fragile".into(), durable(), FieldTable::default())
            .await
            .unwrap();
        for i in 0..20 {
            publish_persistent(&ch, "fragile", &format!("{i:02}-{}", "x".repeat(100))).await;
        }
    }
    w.kill();
    let segs = segment_files(&w);
    let last = segs.last().expect("a segment file").clone();
    let mut data = std::fs::read(&last).unwrap();
    let len = data.len();
    // Flip a byte in the middle (one record's checksum fails) and cut the
    // tail mid-record (a torn write).
    data[len / 2] ^= 0xff;
    data.truncate(len - 50);
    std::fs::write(&last, &data).unwrap();
    w.restart();
    assert!(w.is_running());
    let (_c, ch) = w.channel().await;
    let got = drain_strings(&ch, "fragile").await;
    // Two records are lost (the flipped one and the torn last one); the
    // others are served, in order.
    assert_eq!(got.len(), 18, "{got:?}");
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(got, sorted);
    assert!(!got.iter().any(|m| m.starts_with("19-")));
}

#[tokio::test]
async fn segments_are_deleted_once_their_messages_are_acked() {
    let w = Warren::start();
    let (_c, ch) = confirm_channel(&w).await;
    ch.queue_declare("big".into(), durable(), FieldTable::default())
        .await
        .unwrap();
    let body = vec![7u8; 64 * 1024];
    // ~80 MiB: more than one 64 MiB segment.
    for _ in 0..1300 {
        ch.basic_publish(
            "".into(),
            "big".into(),
            Default::default(),
            &body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap();
    }
    ch.wait_for_confirms().await.unwrap();
    assert!(segment_files(&w).len() >= 2, "{:?}", segment_files(&w));
    ch.queue_purge("big".into(), Default::default())
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let total: u64 = segment_files(&w)
            .iter()
            .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
            .sum();
        if segment_files(&w).len() == 1 && total < 80 * 1024 * 1024 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "segments not reclaimed: {:?}",
            segment_files(&w)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn recovered_messages_are_read_back_from_the_store_in_order_across_segments() {
    let mut w = Warren::start();
    let body = |q: usize, i: usize| {
        let mut b = format!("{q}-{i:05}-").into_bytes();
        b.resize(40 * 1024, b'a' + (i % 26) as u8);
        b
    };
    {
        let (_c, ch) = confirm_channel(&w).await;
        for q in ["lazy-a", "lazy-b"] {
            ch.queue_declare(q.into(), durable(), FieldTable::default())
                .await
                .unwrap();
        }
        // Two queues interleaved, ~80 MiB: records of one queue have the
        // other's between them, and the log spans two segments.
        for i in 0..1000 {
            for (q, name) in ["lazy-a", "lazy-b"].iter().enumerate() {
                ch.basic_publish(
                    "".into(),
                    (*name).into(),
                    Default::default(),
                    &body(q, i),
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .unwrap();
            }
        }
        ch.wait_for_confirms().await.unwrap();
        // The first 100 of lazy-a are consumed and acked before the stop.
        for _ in 0..100 {
            let m = ch
                .basic_get("lazy-a".into(), BasicGetOptions::default())
                .await
                .unwrap()
                .expect("a message");
            m.delivery.ack(BasicAckOptions::default()).await.unwrap();
        }
        // A confirmed publish after the acks: the store has synced them too.
        ch.queue_declare("lazy-sync".into(), durable(), FieldTable::default())
            .await
            .unwrap();
        publish_persistent(&ch, "lazy-sync", "sync").await;
    }
    assert!(segment_files(&w).len() >= 2, "{:?}", segment_files(&w));
    w.kill();
    w.restart();
    let (_c, ch) = w.channel().await;
    for (q, name, from) in [(0, "lazy-a", 100), (1, "lazy-b", 0)] {
        let d = ch
            .queue_declare(
                name.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        assert_eq!(d.message_count() as usize, 1000 - from, "{name}");
        for i in from..1000 {
            let m = ch
                .basic_get(name.into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{name} ran out at {i}"));
            assert!(m.delivery.data == body(q, i), "{name} message {i} differs");
        }
    }
}

// The per-message TTL + dead-letter retry pattern must survive a restart: a
// persistent message with an expiration on a queue without a queue TTL used
// to stay forever after a restart (issue 13).
#[tokio::test]
async fn a_persistent_message_with_an_expiration_still_expires_after_a_restart() {
    let mut w = Warren::start();
    {
        let (c, ch) = confirm_channel(&w).await;
        let mut args = FieldTable::default();
        args.insert(
            "x-dead-letter-exchange".into(),
            lapin::types::AMQPValue::LongString("".into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            lapin::types::AMQPValue::LongString("retry-dlq".into()),
        );
        ch.queue_declare("retry-wait".into(), durable(), args)
            .await
            .unwrap();
        ch.queue_declare("retry-dlq".into(), durable(), FieldTable::default())
            .await
            .unwrap();
        ch.basic_publish(
            "".into(),
            "retry-wait".into(),
            BasicPublishOptions::default(),
            b"try again",
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_expiration("1500".into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
        c.close(200, "bye".into()).await.unwrap();
    }
    w.kill();
    w.restart();
    let (_c, ch) = w.channel().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(m) = ch
            .basic_get("retry-dlq".into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            assert_eq!(m.delivery.data, b"try again");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the message never expired after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left = ch
        .basic_get("retry-wait".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap();
    assert!(left.is_none());
}
