//! A disk that stops answering under a paged queue (issue 14): warren runs
//! in this process on a real TCP port, its page files on a disk whose
//! reads and writes wait while a gate is shut. Paging I/O must never hold
//! the queue's lock or a tokio worker: while the disk is stalled the queue
//! still answers queue.declare, takes publishes, and other queues and
//! connections are served; a consumer and a basic.get waiting for paged
//! messages get them, in order, once the disk moves again.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use warren::store::disk::gated::{Gate, GatedDisk};

async fn publish(ch: &Channel, queue: &str, body: &[u8]) {
    ch.basic_publish(
        "".into(),
        queue.into(),
        BasicPublishOptions::default(),
        body,
        BasicProperties::default(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

/// The message number in a body.
fn number(body: &[u8]) -> u32 {
    u32::from_be_bytes(body[..4].try_into().unwrap())
}

fn body(i: u32) -> Vec<u8> {
    let mut b = i.to_be_bytes().to_vec();
    b.resize(1024, b'p');
    b
}

const N: u32 = 8000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_page_disk_stalls_only_the_messages_on_it() {
    let data = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    // Page files are under <data>/paging.
    let disk = GatedDisk {
        gate: gate.clone(),
        only: Some("paging"),
    };
    let (_broker, port, server) = common::serve_in_process(data.path(), Arc::new(disk), |c| {
        c.storage.queue_memory_limit = 256 * 1024;
    });

    // 8 MB of 1 KiB messages through a 256 KiB memory limit: most are paged.
    let conn = common::connect_in_process(port).await;
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for q in ["deep", "side"] {
        ch.queue_declare(
            q.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    for i in 0..N {
        publish(&ch, "deep", &body(i)).await;
    }
    let t = Instant::now();
    while warren::queue::paging::io::backlog_bytes() > 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "page writes never finished"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The disk stops. A consumer gets the messages in memory, then waits.
    gate.set_shut(true);
    let cconn = common::connect_in_process(port).await;
    let cch = cconn.create_channel().await.unwrap();
    cch.basic_qos(50, BasicQosOptions::default()).await.unwrap();
    let mut deliveries = cch
        .basic_consume(
            "deep".into(),
            "stalled".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Ok(Some(d)) =
        tokio::time::timeout(Duration::from_millis(500), deliveries.next()).await
    {
        let d = d.unwrap();
        got.push(number(&d.data));
        d.acker.ack(BasicAckOptions::default()).await.unwrap();
    }
    assert!(
        !got.is_empty() && (got.len() as u32) < N / 2,
        "{} delivered before the paged ones were needed",
        got.len()
    );

    // A basic.get on another connection waits for the disk too.
    let gconn = common::connect_in_process(port).await;
    let gch = gconn.create_channel().await.unwrap();
    let get = tokio::spawn(async move {
        let m = gch
            .basic_get("deep".into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .expect("a message, not get-empty");
        (number(&m.delivery.data), gconn)
    });

    // Meanwhile the queue itself answers and takes publishes, and another
    // queue is served with short round trips.
    let other = common::connect_in_process(port).await;
    let och = other.create_channel().await.unwrap();
    let t = Instant::now();
    let declared = tokio::time::timeout(
        Duration::from_secs(2),
        och.queue_declare(
            "deep".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("queue.declare on the stalled queue answered")
    .unwrap();
    assert!(declared.message_count() > 0);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "declare took {:?}",
        t.elapsed()
    );
    och.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for i in N..N + 500 {
        tokio::time::timeout(Duration::from_secs(2), publish(&och, "deep", &body(i)))
            .await
            .expect("a publish to the stalled queue confirmed");
    }
    let mut worst = Duration::ZERO;
    for i in 0..200u32 {
        let t = Instant::now();
        publish(&och, "side", &body(i)).await;
        let m = och
            .basic_get("side".into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .expect("the side message");
        assert_eq!(number(&m.delivery.data), i);
        worst = worst.max(t.elapsed());
    }
    assert!(
        worst < Duration::from_millis(200),
        "a side round trip took {worst:?}"
    );
    assert!(
        !get.is_finished(),
        "basic.get answered while its message was on a stalled disk"
    );

    // The disk moves again: everything arrives, in order, nothing lost.
    gate.set_shut(false);
    let (first, _gconn) = tokio::time::timeout(Duration::from_secs(10), get)
        .await
        .expect("the basic.get answered once the disk moved")
        .unwrap();
    let total = N + 500;
    while got.len() as u32 + 1 < total {
        let d = tokio::time::timeout(Duration::from_secs(10), deliveries.next())
            .await
            .expect("the consumer goes on once the disk moves")
            .unwrap()
            .unwrap();
        got.push(number(&d.data));
        d.acker.ack(BasicAckOptions::default()).await.unwrap();
    }
    got.push(first);
    got.sort_unstable();
    assert_eq!(got, (0..total).collect::<Vec<_>>(), "every message once");
    server.abort();
}
