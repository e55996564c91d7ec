//! Priority queues (x-max-priority): higher priorities are delivered first,
//! FIFO within a priority, priorities above the maximum count as the
//! maximum, and the order survives requeues and a restart.

mod common;
mod support;

use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use support::*;

fn max_priority(n: i32) -> FieldTable {
    let mut t = FieldTable::default();
    t.insert("x-max-priority".into(), AMQPValue::LongInt(n));
    t
}

async fn publish_prio(ch: &Channel, q: &str, body: &str, priority: Option<u8>, persistent: bool) {
    let mut p = BasicProperties::default();
    if let Some(pr) = priority {
        p = p.with_priority(pr);
    }
    if persistent {
        p = p.with_delivery_mode(2);
    }
    within(
        "basic.publish",
        ch.basic_publish(
            "".into(),
            q.into(),
            BasicPublishOptions::default(),
            body.as_bytes(),
            p,
        ),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn higher_priorities_are_delivered_first() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    let q = unique("prio");
    within(
        "declare-ok",
        ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions::default(),
            max_priority(5),
        ),
    )
    .await
    .unwrap();
    for (body, p) in [
        ("none-1", None),
        ("p3-1", Some(3)),
        ("p9", Some(9)),
        ("p3-2", Some(3)),
        ("p0", Some(0)),
        ("p5", Some(5)),
        ("none-2", None),
    ] {
        publish_prio(&ch, &q, body, p, false).await;
    }
    // 9 counts as the maximum, 5, and comes before the 5 published after it.
    assert_eq!(
        drain_strings(&ch, &q).await,
        ["p9", "p5", "p3-1", "p3-2", "none-1", "p0", "none-2"]
    );
}

#[tokio::test]
async fn a_requeued_message_keeps_its_place_among_its_priority() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    let q = unique("prio-requeue");
    ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions::default(),
        max_priority(2),
    )
    .await
    .unwrap();
    for (body, p) in [("low", 0), ("high-1", 2), ("high-2", 2)] {
        publish_prio(&ch, &q, body, Some(p), false).await;
    }
    let m = get(&ch, &q).await.unwrap();
    assert_eq!(m.delivery.data, b"high-1");
    m.delivery
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(drain_strings(&ch, &q).await, ["high-1", "high-2", "low"]);
}

#[tokio::test]
async fn a_durable_priority_queue_recovers_in_priority_order() {
    let mut w = Warren::start();
    {
        let (_c, ch) = w.channel().await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        ch.queue_declare(
            "prio-durable".into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            max_priority(3),
        )
        .await
        .unwrap();
        for (body, p) in [("a0", 0), ("b2", 2), ("c1", 1), ("d2", 2), ("e3", 3)] {
            publish_prio(&ch, "prio-durable", body, Some(p), true).await;
        }
        ch.wait_for_confirms().await.unwrap();
    }
    w.kill();
    w.restart();
    let (_c, ch) = w.channel().await;
    assert_eq!(
        drain_strings(&ch, "prio-durable").await,
        ["e3", "b2", "d2", "c1", "a0"]
    );
}
