//! Queues longer than their memory limit page messages to disk and give
//! them all back, in order.

mod common;

use common::*;
use futures_lite::StreamExt;
use lapin::BasicProperties;
use lapin::options::*;
use lapin::types::FieldTable;

fn page_bytes(w: &Warren) -> u64 {
    std::fs::read_dir(w.dir.path().join("paging"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn a_queue_over_its_memory_limit_pages_to_disk_and_is_consumed_back_completely() {
    let w = Warren::start_with("[storage]\nqueue_memory_limit = 1000000");
    let (_c, ch) = w.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch.queue_declare(
        "long".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let n = 20_000;
    for i in 0..n {
        let mut body = format!("{i:08}").into_bytes();
        body.resize(1024, b'.');
        let props = if i % 3 == 0 {
            BasicProperties::default().with_delivery_mode(2)
        } else {
            BasicProperties::default()
        };
        ch.basic_publish(
            "".into(),
            "long".into(),
            BasicPublishOptions::default(),
            &body,
            props,
        )
        .await
        .unwrap();
    }
    ch.wait_for_confirms().await.unwrap();
    // ~20 MB of bodies against a 1 MB limit: most of it is on disk.
    assert!(
        page_bytes(&w) > 15_000_000,
        "page files hold {} bytes",
        page_bytes(&w)
    );

    ch.basic_qos(500, BasicQosOptions::default()).await.unwrap();
    let mut consumer = ch
        .basic_consume(
            "long".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for i in 0..n {
        let d = tokio::time::timeout(std::time::Duration::from_secs(10), consumer.next())
            .await
            .expect("a delivery")
            .unwrap()
            .unwrap();
        assert_eq!(&d.data[..8], format!("{i:08}").as_bytes());
        assert_eq!(d.data.len(), 1024);
        if i % 100 == 99 {
            d.acker
                .ack(BasicAckOptions { multiple: true })
                .await
                .unwrap();
        }
    }
    // Drained: the page file is emptied.
    assert_eq!(page_bytes(&w), 0);
}

#[tokio::test]
async fn a_standing_backlog_with_traffic_flowing_through_keeps_the_paging_directory_small() {
    // 256 KiB in memory per queue; page files are then 256 KiB chunks.
    let w = Warren::start_with("[storage]\nqueue_memory_limit = 262144");
    let (_c, ch) = w.channel().await;
    ch.queue_declare(
        "standing".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let publish = |i: u32| {
        let ch = ch.clone();
        async move {
            let mut body = format!("{i:08}").into_bytes();
            body.resize(1024, b'.');
            ch.basic_publish(
                "".into(),
                "standing".into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default(),
            )
            .await
            .unwrap();
        }
    };
    // A standing backlog of 4,000 messages (about 4.5 MB with their
    // records: several read-back batches, so it is never all read back).
    let backlog = 4_000u32;
    for i in 0..backlog {
        publish(i).await;
    }
    let (_cc, cch) = w.channel().await;
    cch.basic_qos(100, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = cch
        .basic_consume(
            "standing".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    // Ten times the backlog flows through: 1,000 in, 1,000 out, so the
    // backlog stays between 4,000 and 5,000.
    let through = 40_000u32;
    let mut next_in = backlog;
    let mut next_out = 0u32;
    let mut peak = 0u64;
    while next_in < backlog + through {
        for _ in 0..1000 {
            publish(next_in).await;
            next_in += 1;
        }
        peak = peak.max(page_bytes(&w));
        for _ in 0..1000 {
            let d = tokio::time::timeout(std::time::Duration::from_secs(10), consumer.next())
                .await
                .expect("a delivery")
                .unwrap()
                .unwrap();
            assert_eq!(
                &d.data[..8],
                format!("{next_out:08}").as_bytes(),
                "lost or out of order"
            );
            next_out += 1;
            d.acker.ack(BasicAckOptions::default()).await.unwrap();
        }
        peak = peak.max(page_bytes(&w));
    }
    // The bound: the paged backlog (at most 5,000 records of ~1.1 KiB,
    // 5.6 MB) plus a chunk being written and one being read (256 KiB
    // each) and slack; the 45 MB that flowed through would not fit.
    assert!(
        peak < 7_000_000,
        "the paging directory peaked at {peak} bytes"
    );
    for _ in 0..backlog {
        let d = tokio::time::timeout(std::time::Duration::from_secs(10), consumer.next())
            .await
            .expect("a delivery")
            .unwrap()
            .unwrap();
        assert_eq!(&d.data[..8], format!("{next_out:08}").as_bytes());
        next_out += 1;
        d.acker.ack(BasicAckOptions::default()).await.unwrap();
    }
    assert_eq!(next_out, backlog + through);
    // Drained: no page file is left.
    assert_eq!(page_bytes(&w), 0);
}
