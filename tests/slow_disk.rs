//! A disk slower than the publishers (issue 14): warren runs in this
//! process on a real TCP port with its message store on a disk that writes
//! at about 8 MB/s. A publisher of persistent 64 KiB messages outruns it;
//! the store's write buffer must stay bounded (the publisher's connection is
//! not read while the writer is behind) and a consumer on another
//! connection, and a client that only declares, must be served meanwhile.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::BasicProperties;
use lapin::options::*;
use lapin::types::FieldTable;
use warren::store::MessageStore;
use warren::store::disk::{AppendFile, Disk, ReadFile, RealDisk};

/// Bytes per second the slow disk writes.
const RATE: u64 = 8 * 1024 * 1024;

/// The real file system, with every append taking as long as writing it
/// at `RATE` would.
#[derive(Debug)]
struct SlowDisk;

#[derive(Debug)]
struct SlowFile(Box<dyn AppendFile>);

impl AppendFile for SlowFile {
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        std::thread::sleep(Duration::from_micros(buf.len() as u64 * 1_000_000 / RATE));
        self.0.write_all(buf)
    }
    fn sync_data(&mut self) -> std::io::Result<()> {
        self.0.sync_data()
    }
    fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        self.0.set_len(len)
    }
}

impl Disk for SlowDisk {
    fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
        RealDisk.create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        RealDisk.list(dir)
    }
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        RealDisk.read(path)
    }
    fn open_append(&self, path: &Path) -> std::io::Result<Box<dyn AppendFile>> {
        Ok(Box::new(SlowFile(RealDisk.open_append(path)?)))
    }
    fn open_read(&self, path: &Path) -> std::io::Result<Box<dyn ReadFile>> {
        RealDisk.open_read(path)
    }
    fn truncate(&self, path: &Path, len: u64) -> std::io::Result<()> {
        RealDisk.truncate(path, len)
    }
    fn remove(&self, path: &Path) -> std::io::Result<()> {
        RealDisk.remove(path)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        RealDisk.sync_dir(dir)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_slower_than_the_publishers_bounds_the_write_buffer_and_serves_others() {
    let data = tempfile::tempdir().unwrap();
    let (broker, port, server) = common::serve_in_process(data.path(), Arc::new(SlowDisk), |_| {});
    let store: Arc<MessageStore> = broker.durability.store().unwrap().clone();

    // A transient queue filled before the slow phase, for a consumer.
    let filler = common::connect_in_process(port).await;
    let fch = filler.create_channel().await.unwrap();
    fch.queue_declare(
        "side".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    for i in 0..2000u32 {
        fch.basic_publish(
            "".into(),
            "side".into(),
            BasicPublishOptions::default(),
            &i.to_be_bytes(),
            BasicProperties::default(),
        )
        .await
        .unwrap();
    }
    filler.close(200, "filled".into()).await.unwrap();

    // Watch the store's write buffer.
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicUsize::new(0));
    let watcher = {
        let (stop, peak, store) = (stop.clone(), peak.clone(), store.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(store.backlog_bytes(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };

    // The fast publisher: persistent 64 KiB messages, no confirms, for 4 s.
    let publisher = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let conn = common::connect_in_process(port).await;
            let ch = conn.create_channel().await.unwrap();
            ch.queue_declare(
                "slow".into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
            let body = vec![7u8; 64 * 1024];
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let publish = ch.basic_publish(
                    "".into(),
                    "slow".into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default().with_delivery_mode(2),
                );
                // Held back by the broker, a publish may not complete.
                if tokio::time::timeout(Duration::from_millis(500), publish)
                    .await
                    .is_err()
                {
                    continue;
                }
                sent += 1;
            }
            sent
        })
    };

    // Meanwhile a consumer on its own connection takes the side queue, and
    // a client that never publishes gets its declarations answered.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let consumer_conn = common::connect_in_process(port).await;
    let cch = consumer_conn.create_channel().await.unwrap();
    cch.basic_qos(100, BasicQosOptions::default())
        .await
        .unwrap();
    let mut deliveries = cch
        .basic_consume(
            "side".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let started = Instant::now();
    for i in 0..2000u32 {
        let d = tokio::time::timeout(Duration::from_secs(5), deliveries.next())
            .await
            .expect("a delivery while the disk is slow")
            .unwrap()
            .unwrap();
        assert_eq!(d.data, i.to_be_bytes());
        d.acker.ack(BasicAckOptions::default()).await.unwrap();
    }
    let consumed_in = started.elapsed();

    let other = common::connect_in_process(port).await;
    let och = other.create_channel().await.unwrap();
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let t = Instant::now();
        och.queue_declare(
            format!("other-{i}").as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        slowest = slowest.max(t.elapsed());
    }

    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.store(true, Ordering::Relaxed);
    let sent = publisher.await.unwrap();
    watcher.await.unwrap();
    let peak = peak.load(Ordering::Relaxed);
    eprintln!(
        "published {sent} x 64 KiB; write buffer peak {peak} bytes; side queue consumed in {consumed_in:?}; slowest declare {slowest:?}"
    );
    assert!(
        sent as usize * 64 * 1024 > MessageStore::BACKLOG_MAX,
        "the publisher never outran the disk ({sent} messages)"
    );
    // One frame per publishing connection may arrive after the pause.
    let bound = MessageStore::BACKLOG_MAX + 2 * 1024 * 1024;
    assert!(
        peak <= bound,
        "write buffer reached {peak} bytes (bound {bound})"
    );
    assert!(
        consumed_in < Duration::from_secs(10),
        "consumer starved: {consumed_in:?}"
    );
    assert!(
        slowest < Duration::from_secs(1),
        "declarations starved: {slowest:?}"
    );
    server.abort();
}
