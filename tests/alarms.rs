//! Memory alarm: above the watermark, publishing connections get
//! connection.blocked and are not read from; consumers keep draining, and
//! publishers are unblocked once memory is back under the watermark.

mod common;

use std::time::Duration;

use common::*;
use futures_lite::StreamExt;
use lapin::BasicProperties;
use lapin::options::*;
use lapin::types::FieldTable;

async fn next_event(
    events: &mut (impl futures_lite::Stream<Item = lapin::Event> + Unpin),
    want: fn(&lapin::Event) -> bool,
    what: &str,
) {
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(e) = events.next().await {
            if want(&e) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "no {what} event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_is_blocked_above_the_memory_watermark_and_unblocked_after_draining() {
    let w = Warren::start_with(
        "[alarms]\nmemory_high_watermark_bytes = 60000000\ncheck_interval_ms = 50",
    );
    let publisher = w.connect().await;
    let mut events = Box::pin(publisher.events_listener());
    let ch = publisher.create_channel().await.unwrap();
    ch.queue_declare(
        "hoard".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let body = vec![1u8; 256 * 1024];
    let pub_task = tokio::spawn(async move {
        // Far more than the watermark; publishing stalls once blocked.
        for _ in 0..600 {
            if ch
                .basic_publish(
                    "".into(),
                    "hoard".into(),
                    Default::default(),
                    &body,
                    BasicProperties::default(),
                )
                .await
                .is_err()
            {
                break;
            }
        }
    });
    next_event(
        &mut events,
        |e| matches!(e, lapin::Event::ConnectionBlocked(_)),
        "connection.blocked",
    )
    .await;

    // A consumer on another connection still works and drains the queue.
    let (_c, cch) = w.channel().await;
    let drainer = tokio::spawn(async move {
        let mut drained = 0u64;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while tokio::time::Instant::now() < deadline && !pub_task.is_finished() {
            while let Some(m) = cch
                .basic_get("hoard".into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
            {
                drop(m);
                drained += 1;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drained
    });
    next_event(
        &mut events,
        |e| matches!(e, lapin::Event::ConnectionUnblocked),
        "connection.unblocked",
    )
    .await;
    let drained = drainer.await.unwrap();
    assert!(drained > 0, "the consumer drained nothing");
}
