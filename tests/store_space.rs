//! The message store gives disk space back: one message that stays on disk
//! (parked in a queue nobody consumes) does not keep the segments written
//! after it, however much traffic flows past it (issue 13).

mod common;
mod support;

use std::time::{Duration, Instant};

use common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use support::{get_eventually, within};

const SEGMENT: u64 = 4 << 20;

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

fn messages_dir_bytes(w: &Warren) -> u64 {
    std::fs::read_dir(w.dir.path().join("messages"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

async fn publish_confirmed(ch: &Channel, queue: &str, body: &[u8]) {
    ch.basic_publish(
        "".into(),
        queue.into(),
        BasicPublishOptions::default(),
        body,
        BasicProperties::default().with_delivery_mode(2),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

#[tokio::test]
async fn a_parked_message_does_not_keep_a_gigabyte_of_later_traffic_on_disk() {
    let mut w = Warren::start_with(&format!("[storage]\nsegment_size = {SEGMENT}"));
    let (c, ch) = w.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for q in ["parked", "flow"] {
        ch.queue_declare(q.into(), durable(), FieldTable::default())
            .await
            .unwrap();
    }
    publish_confirmed(&ch, "parked", b"still here").await;

    // 1 GiB of persistent, confirmed messages through "flow", consumed and
    // acked as they come.
    let consumer_conn = w.connect().await;
    let cch = consumer_conn.create_channel().await.unwrap();
    cch.basic_qos(200, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = cch
        .basic_consume(
            "flow".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let total: u64 = 1 << 30;
    let size = 64 * 1024;
    let count = total / size as u64;
    let consumed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let acked = consumed.clone();
    let acker = tokio::spawn(async move {
        let mut n = 0u64;
        while n < count {
            let d = within("a delivery", consumer.next())
                .await
                .expect("consumer open")
                .expect("delivery");
            d.ack(BasicAckOptions::default()).await.unwrap();
            n += 1;
            acked.store(n, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let body = vec![b'x'; size];
    let mut peak = 0u64;
    let mut pending = Vec::new();
    for i in 0..count {
        // At most 256 messages (16 MiB) unconsumed at a time, so what the
        // store holds beyond that is what it failed to give back.
        let stalled = Instant::now();
        while i.saturating_sub(consumed.load(std::sync::atomic::Ordering::Relaxed)) > 256 {
            assert!(
                stalled.elapsed() < Duration::from_secs(20) && !acker.is_finished(),
                "the consumer stopped at {} of {count}",
                consumed.load(std::sync::atomic::Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        pending.push(
            ch.basic_publish(
                "".into(),
                "flow".into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap(),
        );
        if pending.len() == 64 {
            for p in pending.drain(..) {
                p.await.unwrap();
            }
        }
        if i % 512 == 0 {
            peak = peak.max(messages_dir_bytes(&w));
        }
    }
    for p in pending.drain(..) {
        p.await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(300), acker)
        .await
        .expect("all acked in time")
        .unwrap();
    // While the gigabyte flowed, the store stayed within a few segments:
    // the 16 MiB unconsumed at any moment, the segment being written, and
    // segments whose acks are not written yet. Without reclaiming past the
    // parked message it would have kept all of it.
    assert!(
        peak <= 10 * SEGMENT,
        "the message store reached {peak} bytes while 1 GiB flowed past one parked message"
    );
    // Once the traffic is consumed it shrinks back to a couple of segments.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = messages_dir_bytes(&w);
        if now <= 3 * SEGMENT {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the message store still holds {now} bytes after the traffic was consumed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("peak {peak} bytes for 1 GiB of traffic");
    consumer_conn.close(200, "bye".into()).await.unwrap();
    c.close(200, "bye".into()).await.unwrap();

    // The parked message survives, exactly once, a crash and a restart.
    w.kill();
    w.restart();
    let (_c, ch) = w.channel().await;
    let m = get_eventually(&ch, "parked").await;
    assert_eq!(m.delivery.data, b"still here");
    m.delivery.ack(BasicAckOptions::default()).await.unwrap();
    let again = ch
        .basic_get("parked".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap();
    assert!(again.is_none(), "the parked message came back twice");
}
