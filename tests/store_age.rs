//! An operator sees a pin: each queue reports how long ago its oldest
//! stored message was written (`oldest_stored_message_age_seconds` in
//! GET /api/queues, a gauge per queue in /metrics), and /metrics the age
//! of the oldest message-store segment still on disk (issue 13).

mod common;
mod support;

use std::time::Duration;

use common::*;
use lapin::BasicProperties;
use lapin::options::*;
use lapin::types::FieldTable;
use serde_json::Value;

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

/// The queue's `oldest_stored_message_age_seconds` (Null for none).
fn api_age(w: &Warren, queue: &str) -> Value {
    let (s, v) = w.api("GET", &format!("/api/queues/%2F/{queue}"), None);
    assert_eq!(s, 200, "{v}");
    v.get("oldest_stored_message_age_seconds")
        .cloned()
        .unwrap_or_else(|| panic!("no oldest_stored_message_age_seconds in {v}"))
}

/// The value of the metric line that starts with `series`.
fn metric(w: &Warren, series: &str) -> u64 {
    let (_, _, text) = http(&w.http_url(), None, "GET", "/metrics", None);
    let line = text
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"));
    line[series.len() + 1..].trim().parse().unwrap()
}

fn queue_metric(w: &Warren, queue: &str) -> u64 {
    metric(
        w,
        &format!("warren_queue_oldest_stored_message_age_seconds{{vhost=\"/\",queue=\"{queue}\"}}"),
    )
}

#[tokio::test]
async fn a_parked_persistent_message_shows_a_growing_age_and_an_empty_queue_none() {
    let mut w = Warren::start();
    let (c, ch) = w.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for q in ["parked", "empty"] {
        ch.queue_declare(q.into(), durable(), FieldTable::default())
            .await
            .unwrap();
    }
    assert_eq!(api_age(&w, "parked"), Value::Null);
    ch.basic_publish(
        "".into(),
        "parked".into(),
        BasicPublishOptions::default(),
        b"parked",
        BasicProperties::default().with_delivery_mode(2),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    // Transient messages are not in the store and do not count.
    ch.basic_publish(
        "".into(),
        "empty".into(),
        BasicPublishOptions::default(),
        b"transient",
        BasicProperties::default(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let first = api_age(&w, "parked").as_u64().expect("an age");
    assert!(first <= 1, "a message just stored is {first} s old");

    tokio::time::sleep(Duration::from_millis(2500)).await;
    let later = api_age(&w, "parked").as_u64().expect("an age");
    assert!((2..=4).contains(&later), "after 2.5 s: {later} s");
    assert_eq!(api_age(&w, "empty"), Value::Null);
    assert!(queue_metric(&w, "parked") >= 2);
    assert_eq!(queue_metric(&w, "empty"), 0);
    assert!(metric(&w, "warren_store_oldest_segment_age_seconds") >= 2);

    // Delivered and not acked, it still pins the store, and still counts.
    let get = ch
        .basic_get("parked".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .expect("the parked message");
    let unacked = api_age(&w, "parked")
        .as_u64()
        .expect("an age while unacked");
    assert!(unacked >= later, "{unacked} < {later}");
    get.ack(BasicAckOptions::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(api_age(&w, "parked"), Value::Null, "acked: nothing stored");
    assert_eq!(queue_metric(&w, "parked"), 0);

    // A message parked before a restart is still at least as old after it
    // (a recovered segment is dated by its file's last write).
    ch.basic_publish(
        "".into(),
        "parked".into(),
        BasicPublishOptions::default(),
        b"across a restart",
        BasicProperties::default().with_delivery_mode(2),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let before = api_age(&w, "parked").as_u64().expect("an age");
    drop(c);
    w.terminate();
    w.restart();
    let after = api_age(&w, "parked")
        .as_u64()
        .expect("an age after restart");
    assert!(
        after >= before,
        "{after} s after the restart, {before} s before"
    );
}
