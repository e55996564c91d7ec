//! A real warren whose data directory is on a small tmpfs that fills up
//! (issue 13): while the message store's writes fail for lack of space,
//! publishers are not confirmed; consumers still get and ack messages, the
//! acked segments are deleted meanwhile, which makes room, and the waiting
//! publishes are confirmed with no restart. Nothing confirmed is lost.
//!
//! Mounting a tmpfs needs root; without it the test says so and passes.

mod common;
mod support;

use std::process::Command;
use std::time::Duration;

use common::*;
use futures_lite::StreamExt;
use lapin::PublisherConfirm;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(Tmpfs(dir))
    }
}

impl Tmpfs {
    /// `mount`, or None (the test then passes, saying it was skipped) where
    /// mounting is not allowed.
    fn mount_or_skip(size: &str) -> Option<Tmpfs> {
        match Tmpfs::mount(size) {
            Ok(fs) => Some(fs),
            Err(why) => {
                eprintln!(
                    "skipped: cannot mount a tmpfs to fill ({why}); run as root to test a full disk"
                );
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

async fn publish(ch: &Channel, queue: &str, i: u32, size: usize) -> PublisherConfirm {
    let mut body = format!("{i:08}").into_bytes();
    body.resize(size, b'.');
    ch.basic_publish(
        "".into(),
        queue.into(),
        BasicPublishOptions::default(),
        &body,
        BasicProperties::default().with_delivery_mode(2),
    )
    .await
    .unwrap()
}

/// Waits for the confirms in order, each an ack, removing those that came.
async fn settle(confirms: &mut Vec<PublisherConfirm>) {
    while let Some(c) = confirms.first_mut() {
        assert!(c.await.unwrap().is_ack(), "nacked");
        confirms.remove(0);
    }
}

async fn message_count(ch: &Channel, queue: &str) -> u32 {
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            passive: true,
            ..durable()
        },
        FieldTable::default(),
    )
    .await
    .unwrap()
    .message_count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_holds_confirms_until_acked_space_is_reclaimed_and_loses_nothing_confirmed() {
    let Some(fs) = Tmpfs::mount_or_skip("24m") else {
        return;
    };
    let data = tempfile::tempdir_in(fs.0.path()).expect("a data directory on the tmpfs");
    // No disk alarm: the store itself meets the full disk.
    let mut w = Warren::start_in(
        data,
        "[storage]\nsegment_size = 1048576\n[alarms]\ndisk_free_limit = 0",
    );
    let (_pc, pub_ch) = w.channel().await;
    pub_ch
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for q in ["kept", "backlog", "waiting"] {
        pub_ch
            .queue_declare(q.into(), durable(), FieldTable::default())
            .await
            .unwrap();
    }
    for i in 0..20 {
        assert!(
            publish(&pub_ch, "kept", i, 1024)
                .await
                .await
                .unwrap()
                .is_ack()
        );
    }

    // Fill the disk with a backlog, 1 MiB at a time, until confirms stop.
    let size = 16 * 1024;
    let mut backlog = 0u32;
    let mut unconfirmed: Vec<PublisherConfirm> = Vec::new();
    let mut full = false;
    for _window in 0..64 {
        let mut window = Vec::new();
        for _ in 0..64 {
            window.push(publish(&pub_ch, "backlog", backlog, size).await);
            backlog += 1;
        }
        let done = tokio::time::timeout(Duration::from_secs(3), settle(&mut window)).await;
        if done.is_err() {
            unconfirmed = window;
            full = true;
            break;
        }
    }
    assert!(full, "24 MiB of tmpfs never filled");

    // Meanwhile, nothing new is confirmed.
    let mut waiting = Vec::new();
    for i in 0..20 {
        waiting.push(publish(&pub_ch, "waiting", i, 1024).await);
    }
    let early = tokio::time::timeout(Duration::from_millis(1500), settle(&mut waiting)).await;
    assert!(early.is_err(), "confirmed while the disk is full");
    assert!(w.is_running(), "a full disk stopped warren");

    // A consumer takes and acks the whole backlog (on its own connection,
    // as consumers are never held back).
    let (_cc, cons_ch) = w.channel().await;
    cons_ch
        .basic_qos(200, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = cons_ch
        .basic_consume(
            "backlog".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for i in 0..backlog {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("a backlog delivery")
            .unwrap()
            .unwrap();
        assert_eq!(&d.data[..8], format!("{i:08}").as_bytes());
        d.acker.ack(BasicAckOptions::default()).await.unwrap();
    }

    // The acked segments go, and the waiting publishes are confirmed: no
    // restart, no operator.
    assert_eq!(waiting.len(), 20, "confirmed while the disk was full");
    unconfirmed.append(&mut waiting);
    tokio::time::timeout(Duration::from_secs(20), settle(&mut unconfirmed))
        .await
        .expect("confirms once acked space was reclaimed");
    // One more confirmed publish: every ack before it is on disk too.
    assert!(
        publish(&pub_ch, "kept", 20, 1024)
            .await
            .await
            .unwrap()
            .is_ack()
    );

    // A crash now loses nothing that was confirmed.
    w.kill();
    w.restart();
    let (_c, ch) = w.channel().await;
    assert_eq!(message_count(&ch, "kept").await, 21);
    assert_eq!(message_count(&ch, "waiting").await, 20);
    assert_eq!(message_count(&ch, "backlog").await, 0);
}

/// Writes `path` until the file system is full.
fn fill(path: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("the filler file");
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
}

/// A definitions change the log cannot write (the disk is full) is refused
/// and undone: 541 INTERNAL_ERROR over AMQP, 500 over HTTP, and the queue
/// does not exist afterwards, in memory or after a restart. Once there is
/// room again, changes go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_definition_that_cannot_be_written_is_refused_and_undone() {
    let Some(fs) = Tmpfs::mount_or_skip("8m") else {
        return;
    };
    let data = tempfile::tempdir_in(fs.0.path()).expect("a data directory on the tmpfs");
    let mut w = Warren::start_in(data, "[alarms]\ndisk_free_limit = 0");
    let filler = fs.0.path().join("filler");
    fill(&filler);

    let (_c, ch) = w.channel().await;
    let e = ch
        .queue_declare("refused".into(), durable(), FieldTable::default())
        .await
        .expect_err("declare-ok for a queue that is not on disk");
    assert_eq!(reply_code(&e), Some(541), "{e:?}");
    assert!(
        reply_text(&e).contains("cannot write definitions"),
        "{}",
        reply_text(&e)
    );

    // A nowait declaration has no reply to hold back, but the connection
    // must still hear of it: its next reply is replaced by the 541.
    let (_c, ch) = w.channel().await;
    ch.queue_declare(
        "refused-nowait".into(),
        QueueDeclareOptions {
            nowait: true,
            ..durable()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let e = ch
        .basic_qos(10, BasicQosOptions::default())
        .await
        .expect_err("qos-ok after a nowait declaration that was undone");
    assert_eq!(reply_code(&e), Some(541), "{e:?}");

    let (status, body) = w.api(
        "PUT",
        "/api/queues/%2f/refused-http",
        Some(&serde_json::json!({"durable": true})),
    );
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"], "internal_error");

    // Undone: neither queue exists.
    for q in ["refused", "refused-nowait", "refused-http"] {
        let (status, _) = w.api("GET", &format!("/api/queues/%2f/{q}"), None);
        assert_eq!(status, 404, "{q} exists after its declaration failed");
    }
    assert!(w.is_running(), "a full disk stopped warren");

    // Room again: the same declaration goes through and survives a restart.
    std::fs::remove_file(&filler).unwrap();
    let (_c, ch) = w.channel().await;
    ch.queue_declare("refused".into(), durable(), FieldTable::default())
        .await
        .expect("declare once there is room");
    w.kill();
    w.restart();
    for (q, want) in [("refused", 200), ("refused-http", 404)] {
        let (status, _) = w.api("GET", &format!("/api/queues/%2f/{q}"), None);
        assert_eq!(status, want, "{q} after a restart");
    }
}
