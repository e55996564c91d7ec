//! A stream whose disk stops answering: warren runs in this process on a
//! real TCP port with its stream logs on a disk whose writes wait while a
//! gate is shut. A publisher waiting for confirms of messages that never
//! reached the disk must not wait forever when the stream is deleted under
//! it (the messages go with the stream, as for any deleted queue, and are
//! confirmed), and other queues must be served meanwhile.

mod common;

use std::sync::Arc;
use std::time::Duration;

use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Confirmation};
use warren::store::disk::gated::{Gate, GatedDisk};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_waiting_on_a_stalled_stream_are_confirmed_when_it_is_deleted() {
    let data = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    let disk = GatedDisk {
        gate: gate.clone(),
        only: Some("streams"),
    };
    let (_broker, port, server) = common::serve_in_process(data.path(), Arc::new(disk), |_| {});

    let conn = common::connect_in_process(port).await;
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("stream")),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    ch.queue_declare("s".into(), durable, args).await.unwrap();

    // The disk stops: these appends are never written.
    gate.set_shut(true);
    let mut pending = Vec::new();
    for i in 0..20u32 {
        let c = ch
            .basic_publish(
                "".into(),
                "s".into(),
                BasicPublishOptions::default(),
                &i.to_be_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap();
        pending.push(c);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Another connection is served, and deletes the stream.
    let other = common::connect_in_process(port).await;
    let och = other.create_channel().await.unwrap();
    och.queue_declare(
        "side".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        och.queue_delete("s".into(), QueueDeleteOptions::default()),
    )
    .await
    .expect("queue.delete answered while the stream's disk is stalled")
    .unwrap();

    // Every publish is confirmed (ack) although nothing reached the disk.
    for (i, c) in pending.into_iter().enumerate() {
        let got = tokio::time::timeout(Duration::from_secs(10), c)
            .await
            .unwrap_or_else(|_| panic!("publish {i} still waits for its confirm"))
            .unwrap();
        assert!(matches!(got, Confirmation::Ack(_)), "publish {i}: {got:?}");
    }
    gate.set_shut(false);
    server.abort();
}
