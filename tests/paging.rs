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
