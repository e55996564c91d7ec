//! The RabbitMQ Stream protocol (port 5552) against a real warren, with
//! RabbitMQ's Rust stream client: login, streams created and deleted,
//! publishing with confirms and deduplication, the offset
//! specifications, stored offsets, interop with AMQP 0-9-1 both ways, and
//! a consumer far behind.

mod common;
mod support;

use std::time::Duration;

use common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use rabbitmq_stream_client::error::{
    ClientError, ConsumerStoreOffsetError, StreamCreateError, StreamDeleteError,
};
use rabbitmq_stream_client::types::{ByteCapacity, Message, OffsetSpecification, ResponseCode};
use rabbitmq_stream_client::{Consumer, Environment};
use support::within;

async fn env(w: &Warren) -> Environment {
    env_as(w, "guest", "guest", "/").await.expect("connect")
}

async fn env_as(
    w: &Warren,
    user: &str,
    pass: &str,
    vhost: &str,
) -> Result<Environment, ClientError> {
    within(
        "stream connection",
        Environment::builder()
            .host("127.0.0.1")
            .port(w.stream_port)
            .username(user)
            .password(pass)
            .virtual_host(vhost)
            .build(),
    )
    .await
}

/// A low-level client (one connection, every command).
async fn raw_client(w: &Warren) -> rabbitmq_stream_client::Client {
    within(
        "stream client",
        rabbitmq_stream_client::Client::connect(
            rabbitmq_stream_client::ClientOptions::builder()
                .host("127.0.0.1")
                .port(w.stream_port)
                .build(),
        ),
    )
    .await
    .expect("connect a stream client")
}

async fn create(env: &Environment, name: &str) {
    within("create", env.stream_creator().create(name))
        .await
        .expect("create stream");
}

fn msg(body: String) -> Message {
    Message::builder().body(body).build()
}

/// Publishes "m<i>" for i in `range`, each batch confirmed.
async fn publish(env: &Environment, stream: &str, range: std::ops::Range<usize>) {
    let producer = within("producer", env.producer().build(stream))
        .await
        .expect("producer");
    let msgs: Vec<usize> = range.collect();
    for batch in msgs.chunks(500) {
        let batch = batch.iter().map(|i| msg(format!("m{i}"))).collect();
        let st = within("confirms", producer.batch_send_with_confirm(batch))
            .await
            .expect("publish");
        assert!(st.iter().all(|s| s.confirmed()));
    }
    producer.close().await.expect("close producer");
}

async fn consumer(env: &Environment, stream: &str, at: OffsetSpecification) -> Consumer {
    within("consumer", env.consumer().offset(at).build(stream))
        .await
        .expect("consumer")
}

/// The next `n` deliveries: (offset, body).
async fn take(c: &mut Consumer, n: usize) -> Vec<(u64, String)> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let d = within("delivery", c.next())
            .await
            .expect("consumer open")
            .expect("delivery");
        let body = String::from_utf8(d.message().data().unwrap_or_default().to_vec()).unwrap();
        out.push((d.offset(), body));
    }
    out
}

/// No delivery arrives within a short while.
async fn quiet(c: &mut Consumer) {
    let got = tokio::time::timeout(Duration::from_millis(300), c.next()).await;
    assert!(got.is_err(), "unexpected delivery: {got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_in_with_credentials_and_refuses_a_wrong_password() {
    let w = Warren::start();
    let e = env(&w).await;
    create(&e, "s").await;
    let err = env_as(&w, "guest", "wrong", "/")
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(
            err,
            ClientError::RequestError(ResponseCode::AuthenticationFailure)
        ),
        "{err:?}"
    );
    let err = env_as(&w, "guest", "guest", "no-such-vhost")
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(
            err,
            ClientError::RequestError(ResponseCode::VirtualHostAccessFailure)
        ),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_and_deletes_streams_visible_over_amqp() {
    let w = Warren::start();
    let e = env(&w).await;
    let created = e
        .stream_creator()
        .max_length(ByteCapacity::MB(5))
        .max_segment_size(ByteCapacity::MB(1))
        .max_age(Duration::from_secs(3600))
        .create("events")
        .await;
    assert!(created.is_ok(), "{created:?}");
    match e.stream_creator().create("events").await {
        Err(StreamCreateError::Create { status, .. }) => {
            assert_eq!(status, ResponseCode::StreamAlreadyExists)
        }
        other => panic!("{other:?}"),
    }
    // The same stream queue AMQP 0-9-1 declares: a passive declare finds
    // it, and a redeclare with the same arguments is accepted.
    let (_c, ch) = w.channel().await;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    let ok = ch
        .queue_declare(
            "events".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            args,
        )
        .await;
    assert!(ok.is_ok(), "{ok:?}");
    let (status, body) = w.api("GET", "/api/queues/%2f/events", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["type"], "stream", "{body}");
    within("delete", e.delete_stream("events")).await.unwrap();
    match e.delete_stream("events").await {
        Err(StreamDeleteError::Delete { status, .. }) => {
            assert_eq!(status, ResponseCode::StreamDoesNotExist)
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_with_confirms_and_reads_from_each_offset_specification() {
    let w = Warren::start();
    let e = env(&w).await;
    create(&e, "s").await;
    let before = warren_now_ms();
    publish(&e, "s", 0..10).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let middle = warren_now_ms();
    publish(&e, "s", 10..20).await;

    let mut first = consumer(&e, "s", OffsetSpecification::First).await;
    let got = take(&mut first, 20).await;
    let want: Vec<(u64, String)> = (0..20).map(|i| (i as u64, format!("m{i}"))).collect();
    assert_eq!(got, want);

    let mut at = consumer(&e, "s", OffsetSpecification::Offset(15)).await;
    assert_eq!(take(&mut at, 1).await, vec![(15, "m15".to_string())]);

    let mut ts = consumer(&e, "s", OffsetSpecification::Timestamp(middle)).await;
    assert_eq!(take(&mut ts, 1).await, vec![(10, "m10".to_string())]);
    let mut ts0 = consumer(&e, "s", OffsetSpecification::Timestamp(before)).await;
    assert_eq!(take(&mut ts0, 1).await[0].0, 0);

    // Last: the last chunk (the second batch was one chunk or more; its
    // first delivery is at or after offset 10); Next: only what comes after.
    let mut last = consumer(&e, "s", OffsetSpecification::Last).await;
    let l = take(&mut last, 1).await;
    assert!(l[0].0 >= 10 && l[0].0 < 20, "{l:?}");
    let mut next = consumer(&e, "s", OffsetSpecification::Next).await;
    quiet(&mut next).await;
    publish(&e, "s", 20..21).await;
    assert_eq!(take(&mut next, 1).await, vec![(20, "m20".to_string())]);
    assert_eq!(take(&mut first, 1).await, vec![(20, "m20".to_string())]);
}

fn warren_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_producer_is_deduplicated_across_reconnects_and_restarts() {
    let mut w = Warren::start();
    let e = env(&w).await;
    create(&e, "dedup").await;
    let mut p = e.producer().name("app-1").build("dedup").await.unwrap();
    for i in 0..10u64 {
        let m = Message::builder()
            .body(format!("m{i}"))
            .publishing_id(i)
            .build();
        assert!(p.send_with_confirm(m).await.unwrap().confirmed());
    }
    p.close().await.unwrap();

    // Reconnected: the sequence is where it was; ids already stored are
    // confirmed, not stored again.
    let mut p = e.producer().name("app-1").build("dedup").await.unwrap();
    let client = raw_client(&w).await;
    assert_eq!(
        client
            .query_publisher_sequence("app-1", "dedup")
            .await
            .unwrap(),
        9
    );
    let again = Message::builder().body("dup").publishing_id(5).build();
    assert!(p.send_with_confirm(again).await.unwrap().confirmed());
    let new = Message::builder().body("m10").publishing_id(10).build();
    assert!(p.send_with_confirm(new).await.unwrap().confirmed());
    p.close().await.unwrap();
    client.close().await.unwrap();

    let mut c = consumer(&e, "dedup", OffsetSpecification::First).await;
    let got = take(&mut c, 11).await;
    assert_eq!(got.last().unwrap(), &(10, "m10".to_string()));
    assert!(got.iter().all(|(_, b)| b != "dup"));
    quiet(&mut c).await;
    drop(c);
    e.delete_stream("nonexistent").await.ok();

    // Across a clean restart too.
    w.terminate();
    w.restart();
    let e = env(&w).await;
    let mut p = e.producer().name("app-1").build("dedup").await.unwrap();
    let dup = Message::builder().body("dup").publishing_id(10).build();
    assert!(p.send_with_confirm(dup).await.unwrap().confirmed());
    let m = Message::builder().body("m11").publishing_id(11).build();
    assert!(p.send_with_confirm(m).await.unwrap().confirmed());
    p.close().await.unwrap();
    let mut c = consumer(&e, "dedup", OffsetSpecification::Offset(10)).await;
    assert_eq!(
        take(&mut c, 2).await,
        vec![(10, "m10".to_string()), (11, "m11".to_string())]
    );
    quiet(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_and_queries_a_consumer_offset() {
    let mut w = Warren::start();
    let e = env(&w).await;
    create(&e, "track").await;
    publish(&e, "track", 0..5).await;
    let c = e
        .consumer()
        .name("reader")
        .offset(OffsetSpecification::First)
        .build("track")
        .await
        .unwrap();
    match c.query_offset().await {
        Err(ConsumerStoreOffsetError::Client(ClientError::RequestError(code))) => {
            assert_eq!(code, ResponseCode::OffsetNotFound)
        }
        other => panic!("{other:?}"),
    }
    c.store_offset(3).await.unwrap();
    let mut stored = 0;
    for _ in 0..50 {
        if let Ok(n) = c.query_offset().await {
            stored = n;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stored, 3);
    // The stored offset survives a restart.
    c.handle().close().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    w.terminate();
    w.restart();
    let e = env(&w).await;
    let c = e
        .consumer()
        .name("reader")
        .offset(OffsetSpecification::First)
        .build("track")
        .await
        .unwrap();
    assert_eq!(c.query_offset().await.unwrap(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp091_messages_reach_stream_consumers_with_their_properties() {
    let w = Warren::start();
    let e = env(&w).await;
    create(&e, "mixed").await;
    let (_c, ch) = w.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut headers = FieldTable::default();
    headers.insert("colour".into(), AMQPValue::LongString("red".into()));
    headers.insert("n".into(), AMQPValue::LongInt(42));
    let props = lapin::BasicProperties::default()
        .with_content_type("text/plain".into())
        .with_message_id("id-1".into())
        .with_correlation_id("corr".into())
        .with_delivery_mode(2)
        .with_headers(headers);
    ch.basic_publish(
        "".into(),
        "mixed".into(),
        BasicPublishOptions::default(),
        b"hello",
        props,
    )
    .await
    .unwrap()
    .await
    .unwrap();

    let mut c = consumer(&e, "mixed", OffsetSpecification::First).await;
    let d = within("delivery", c.next()).await.unwrap().unwrap();
    let m = d.message();
    assert_eq!(m.data(), Some(&b"hello"[..]));
    let p = m.properties().expect("properties");
    let text = format!("{p:?}");
    assert!(text.contains("text/plain"), "{text}");
    assert!(text.contains("id-1"), "{text}");
    assert!(text.contains("corr"), "{text}");
    let app = format!(
        "{:?}",
        m.application_properties().expect("application properties")
    );
    assert!(app.contains("colour") && app.contains("red"), "{app}");
    assert!(app.contains("42"), "{app}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_messages_reach_amqp091_consumers_with_their_properties() {
    let w = Warren::start();
    let e = env(&w).await;
    create(&e, "mixed").await;
    let producer = e.producer().build("mixed").await.unwrap();
    let m = Message::builder()
        .body("from-stream")
        .properties()
        .content_type("application/json")
        .message_id("mid".to_string())
        .message_builder()
        .application_properties()
        .insert("region", "eu")
        .insert("count", 7i32)
        .message_builder()
        .build();
    assert!(producer.send_with_confirm(m).await.unwrap().confirmed());
    producer.close().await.unwrap();

    let (_c, ch) = w.channel().await;
    ch.basic_qos(10, BasicQosOptions::default()).await.unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString("first".into()),
    );
    let mut cons = ch
        .basic_consume(
            "mixed".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await
        .unwrap();
    let d = within("delivery", cons.next()).await.unwrap().unwrap();
    assert_eq!(&d.data[..], b"from-stream");
    let p = &d.properties;
    assert_eq!(
        p.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(p.message_id().as_ref().map(|s| s.as_str()), Some("mid"));
    let h = p.headers().as_ref().expect("headers").inner();
    assert_eq!(h.get("region"), Some(&AMQPValue::LongString("eu".into())));
    assert_eq!(h.get("count"), Some(&AMQPValue::LongInt(7)));
    assert_eq!(h.get("x-stream-offset"), Some(&AMQPValue::LongLongInt(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_far_behind_reads_everything_in_order() {
    let w = Warren::start();
    let e = env(&w).await;
    create(&e, "big").await;
    const N: usize = 200_000;
    let producer = e.producer().batch_size(1000).build("big").await.unwrap();
    let publish_started = std::time::Instant::now();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for i in 0..N {
        let d = done.clone();
        producer
            .send(msg(format!("m{i}")), move |r| {
                let d = d.clone();
                async move {
                    if r.is_ok_and(|s| s.confirmed()) {
                        d.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            })
            .await
            .unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while done.load(std::sync::atomic::Ordering::Relaxed) < N {
        let n = done.load(std::sync::atomic::Ordering::Relaxed);
        assert!(std::time::Instant::now() < deadline, "confirms: {n}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "published and confirmed {N} in {:?}",
        publish_started.elapsed()
    );
    // Closed, not dropped: the client's Drop blocks on an async lock and
    // can spin forever on a runtime thread.
    within("close producer", producer.close())
        .await
        .expect("close producer");
    let mut c = consumer(&e, "big", OffsetSpecification::First).await;
    let started = std::time::Instant::now();
    for i in 0..N {
        let d = within("delivery", c.next()).await.unwrap().unwrap();
        assert_eq!(d.offset(), i as u64);
        if i % 50_000 == 0 || i == N - 1 {
            assert_eq!(d.message().data(), Some(format!("m{i}").as_bytes()));
        }
    }
    eprintln!("read {N} messages in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_are_checked_as_rabbitmq_checks_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.keep().join("defs.json");
    let defs = serde_json::json!({
        "users": [{"name": "bob", "password_hash": warren::auth::hash_password("s3cret"),
                   "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ""}],
        "vhosts": [{"name": "app"}],
        "permissions": [{"user": "bob", "vhost": "app",
                         "configure": "^bob-.*", "write": "^bob-.*", "read": "^bob-.*"}],
    });
    std::fs::write(&path, defs.to_string()).unwrap();
    let w = Warren::start_with(&format!("load_definitions = {:?}", path.to_str().unwrap()));
    let err = env_as(&w, "bob", "s3cret", "/")
        .await
        .err()
        .expect("no access to /");
    assert!(
        matches!(
            err,
            ClientError::RequestError(ResponseCode::VirtualHostAccessFailure)
        ),
        "{err:?}"
    );
    let e = env_as(&w, "bob", "s3cret", "app").await.unwrap();
    create(&e, "bob-ok").await;
    match e.stream_creator().create("other").await {
        Err(StreamCreateError::Create { status, .. }) => {
            assert_eq!(status, ResponseCode::AccessRefused)
        }
        other => panic!("{other:?}"),
    }
}

// --- Raw frames: what the client library never sends -----------------------

/// A raw stream-protocol connection.
struct Raw(tokio::net::TcpStream);

impl Raw {
    async fn connect(w: &Warren) -> Raw {
        Raw(tokio::net::TcpStream::connect(("127.0.0.1", w.stream_port))
            .await
            .unwrap())
    }

    async fn send(&mut self, key: u16, body: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let mut f = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        f.extend_from_slice(&key.to_be_bytes());
        f.extend_from_slice(&1u16.to_be_bytes());
        f.extend_from_slice(body);
        self.0.write_all(&f).await.unwrap();
    }

    /// The next frame: key and the bytes after the version.
    async fn recv(&mut self) -> Option<(u16, Vec<u8>)> {
        use tokio::io::AsyncReadExt;
        let mut size = [0u8; 4];
        within("frame", self.0.read_exact(&mut size)).await.ok()?;
        let mut f = vec![0u8; u32::from_be_bytes(size) as usize];
        within("frame", self.0.read_exact(&mut f)).await.ok()?;
        Some((u16::from_be_bytes([f[0], f[1]]), f[4..].to_vec()))
    }

    /// Frames until one with `key`.
    async fn until(&mut self, key: u16) -> Vec<u8> {
        loop {
            let (k, body) = self.recv().await.expect("a frame");
            if k == key {
                return body;
            }
        }
    }

    /// Logs in as guest and opens `/`.
    async fn open(w: &Warren) -> Raw {
        Raw::open_vhost(w, "/").await
    }

    /// Logs in as guest and opens `vhost`.
    async fn open_vhost(w: &Warren, vhost: &str) -> Raw {
        let mut r = Raw::connect(w).await;
        r.send(0x0011, &[0, 0, 0, 1, 0, 0, 0, 0]).await;
        r.until(0x8011).await;
        r.send(0x0012, &[0, 0, 0, 2]).await;
        r.until(0x8012).await;
        let mut auth = vec![0, 0, 0, 3, 0, 5];
        auth.extend_from_slice(b"PLAIN");
        let plain = b"\0guest\0guest";
        auth.extend_from_slice(&(plain.len() as u32).to_be_bytes());
        auth.extend_from_slice(plain);
        r.send(0x0013, &auth).await;
        assert_eq!(r.until(0x8013).await[4..6], [0, 1]);
        let tune = r.until(0x0014).await;
        r.send(0x0014, &tune).await;
        let mut open = vec![0, 0, 0, 4, 0, vhost.len() as u8];
        open.extend_from_slice(vhost.as_bytes());
        r.send(0x0015, &open).await;
        assert_eq!(r.until(0x8015).await[4..6], [0, 1]);
        r
    }
}

/// A Close frame's code.
fn close_code(body: &[u8]) -> u16 {
    u16::from_be_bytes([body[4], body[5]])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_close_the_connection_with_the_protocol_codes() {
    let w = Warren::start();
    // Before Open, a frame over 8192 bytes is refused unread.
    let mut r = Raw::connect(&w).await;
    r.0.try_write(&100_000u32.to_be_bytes()).unwrap();
    assert_eq!(close_code(&r.until(0x0016).await), 0x0e);
    // An unknown command.
    let mut r = Raw::open(&w).await;
    r.send(0x0077, &[0, 0, 0, 9]).await;
    assert_eq!(close_code(&r.until(0x0016).await), 0x0d);
    // A truncated command (Create without its stream name).
    let mut r = Raw::open(&w).await;
    r.send(0x000d, &[0, 0, 0, 9, 0, 50]).await;
    assert_eq!(close_code(&r.until(0x0016).await), 0x0d);
    // A command before the handshake is done.
    let mut r = Raw::connect(&w).await;
    r.send(0x000d, &[0, 0, 0, 9, 0, 1, b's', 0, 0, 0, 0]).await;
    assert_eq!(close_code(&r.until(0x0016).await), 0x0d);
    // The broker is still fine.
    let e = env(&w).await;
    create(&e, "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_publishers_and_subscriptions_get_their_error_codes() {
    let w = Warren::start();
    let mut r = Raw::open(&w).await;
    // Publish from publisher 7, never declared: PublishError 0x12 per id.
    let mut publish = vec![7, 0, 0, 0, 1];
    publish.extend_from_slice(&42u64.to_be_bytes());
    publish.extend_from_slice(&[0, 0, 0, 1, 0x40]);
    r.send(0x0002, &publish).await;
    let err = r.until(0x0004).await;
    assert_eq!(err[0], 7);
    assert_eq!(&err[5..13], &42u64.to_be_bytes());
    assert_eq!(&err[13..15], &[0, 0x12]);
    // Credit for subscription 3, never subscribed: the Credit response.
    r.send(0x0009, &[3, 0, 1]).await;
    assert_eq!(r.until(0x8009).await, vec![0, 0x04, 3]);
    // Declaring a publisher on a stream that does not exist: 0x02.
    r.send(0x0001, &[0, 0, 0, 5, 1, 0, 0, 0, 2, b'n', b'o'])
        .await;
    assert_eq!(r.until(0x8001).await, vec![0, 0, 0, 5, 0, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_stream_tells_its_subscribers() {
    let w = Warren::start();
    let e = env(&w).await;
    create(&e, "doomed").await;
    let mut r = Raw::open(&w).await;
    let mut sub = vec![0, 0, 0, 8, 1, 0, 6];
    sub.extend_from_slice(b"doomed");
    sub.extend_from_slice(&[0, 1, 0, 10, 0, 0, 0, 0]);
    r.send(0x0007, &sub).await;
    assert_eq!(r.until(0x8007).await, vec![0, 0, 0, 8, 0, 1]);
    e.delete_stream("doomed").await.unwrap();
    let update = r.until(0x0010).await;
    assert_eq!(&update[..2], &[0, 2]);
    assert_eq!(&update[4..], b"doomed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtering_subscription_skips_chunks_without_its_values() {
    let w = Warren::start();
    let e = env(&w).await;
    create(&e, "colours").await;
    let producer = e
        .producer()
        .filter_value_extractor(|m: &Message| {
            String::from_utf8_lossy(m.data().unwrap_or_default())
                .split('-')
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .build("colours")
        .await
        .unwrap();
    // Each confirmed batch is its own chunk: blue, red, blue.
    for colour in ["blue", "red", "blue"] {
        let batch = (0..3).map(|i| msg(format!("{colour}-{i}"))).collect();
        let st = producer.batch_send_with_confirm(batch).await.unwrap();
        assert!(st.iter().all(|s| s.confirmed()));
    }
    producer.close().await.unwrap();
    let mut c = e
        .consumer()
        .offset(OffsetSpecification::First)
        .filter_input(Some(rabbitmq_stream_client::FilterConfiguration::new(
            vec!["red".into()],
            false,
        )))
        .build("colours")
        .await
        .unwrap();
    let got = take(&mut c, 3).await;
    assert_eq!(
        got,
        vec![
            (3, "red-0".to_string()),
            (4, "red-1".to_string()),
            (5, "red-2".to_string())
        ]
    );
    quiet(&mut c).await;
}

fn routing_key_of(m: &Message) -> String {
    String::from_utf8_lossy(m.data().unwrap_or_default())
        .split(':')
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn super_streams_route_messages_to_their_partitions() {
    use rabbitmq_stream_client::types::{RoutingKeyRoutingStrategy, RoutingStrategy};
    let w = Warren::start();
    let e = env(&w).await;
    within(
        "create super stream",
        e.stream_creator().create_super_stream("orders", 3, None),
    )
    .await
    .unwrap();
    let client = raw_client(&w).await;
    let parts = client.partitions("orders".into()).await.unwrap().streams;
    assert_eq!(parts, vec!["orders-0", "orders-1", "orders-2"]);
    let route = client.route("2".into(), "orders".into()).await.unwrap();
    assert_eq!(route.streams, vec!["orders-2"]);
    let none = client.partitions("nope".into()).await.unwrap();
    assert!(!none.is_ok() && none.streams.is_empty());

    // The routing-key strategy asks Route and publishes to the partition.
    static EXTRACT: fn(&Message) -> String = routing_key_of;
    let mut p = e
        .super_stream_producer(RoutingStrategy::RoutingKeyStrategy(
            RoutingKeyRoutingStrategy {
                routing_extractor: &EXTRACT,
            },
        ))
        .build("orders")
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for m in ["1:a", "2:b", "1:c"] {
        let tx = tx.clone();
        p.send(msg(m.into()), move |r| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(r.is_ok_and(|s| s.confirmed()));
            }
        })
        .await
        .unwrap();
    }
    for _ in 0..3 {
        assert!(within("confirm", rx.recv()).await.unwrap());
    }
    p.close().await.unwrap();
    let mut c1 = consumer(&e, "orders-1", OffsetSpecification::First).await;
    assert_eq!(
        take(&mut c1, 2).await,
        vec![(0, "1:a".to_string()), (1, "1:c".to_string())]
    );
    let mut c2 = consumer(&e, "orders-2", OffsetSpecification::First).await;
    assert_eq!(take(&mut c2, 1).await, vec![(0, "2:b".to_string())]);

    // Deleting the super stream removes the exchange and its partitions.
    within("delete super stream", e.delete_super_stream("orders"))
        .await
        .unwrap();
    let (status, _) = w.api("GET", "/api/exchanges/%2f/orders", None);
    assert_eq!(status, 404);
    let (status, _) = w.api("GET", "/api/queues/%2f/orders-0", None);
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_first_of_a_single_active_consumer_group_receives() {
    let w = Warren::start();
    let e = env(&w).await;
    create(&e, "sac").await;
    let sac = |e: &Environment| {
        e.consumer()
            .name("group")
            .enable_single_active_consumer(true)
            .offset(OffsetSpecification::First)
            .build("sac")
    };
    let mut first = within("first", sac(&e)).await.unwrap();
    let e2 = env(&w).await;
    let mut second = within("second", sac(&e2)).await.unwrap();
    publish(&e, "sac", 0..3).await;
    let got = take(&mut first, 3).await;
    assert_eq!(got[2], (2, "m2".to_string()));
    quiet(&mut second).await;
    // The active one goes: the next is told (ConsumerUpdate) and, as the
    // client answers without a listener, starts at "next".
    first.handle().close().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish(&e, "sac", 3..5).await;
    assert_eq!(
        take(&mut second, 2).await,
        vec![(3, "m3".to_string()), (4, "m4".to_string())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_messages_survive_a_crash() {
    let mut w = Warren::start();
    let e = env(&w).await;
    create(&e, "safe").await;
    publish(&e, "safe", 0..1000).await;
    w.kill();
    w.restart();
    let e = env(&w).await;
    let mut c = consumer(&e, "safe", OffsetSpecification::First).await;
    let got = take(&mut c, 1000).await;
    assert_eq!(got[999], (999, "m999".to_string()));
    quiet(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_vhost_closes_its_stream_connections() {
    let w = Warren::start();
    assert_eq!(w.api("PUT", "/api/vhosts/v2", None).0, 201);
    let perms = serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"});
    w.api("PUT", "/api/permissions/v2/guest", Some(&perms));
    let mut r = Raw::open_vhost(&w, "v2").await;
    assert_eq!(w.api("DELETE", "/api/vhosts/v2", None).0, 204);
    r.until(0x0016).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_a_deduplicating_publisher_keeps_every_confirmed_message_and_its_sequence() {
    let mut w = Warren::start();
    let e = env(&w).await;
    create(&e, "crash").await;
    let confirmed = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let mut p = e.producer().name("crash-p").build("crash").await.unwrap();
    let sink = confirmed.clone();
    let publisher = tokio::spawn(async move {
        let mut next = 1u64;
        loop {
            let batch = (next..next + 200)
                .map(|i| {
                    Message::builder()
                        .body(format!("m{i}"))
                        .publishing_id(i)
                        .build()
                })
                .collect();
            next += 200;
            let cb_sink = sink.clone();
            let sent = p
                .batch_send(batch, move |r| {
                    if let Ok(s) = r
                        && s.confirmed()
                    {
                        cb_sink.lock().unwrap().push(s.publishing_id());
                    }
                    async {}
                })
                .await;
            if sent.is_err() {
                return;
            }
            // Keep a bounded number in flight.
            while next - 1 > confirmed_len(&sink) + 20_000 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
    // Killed while confirms stream in.
    within("confirms", async {
        while confirmed_len(&confirmed) < 30_000 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    w.kill();
    let confirmed: Vec<u64> = confirmed.lock().unwrap().clone();
    let top = *confirmed.iter().max().unwrap();
    publisher.abort();
    drop(e);
    w.restart();

    let e = env(&w).await;
    let client = raw_client(&w).await;
    let seq = client
        .query_publisher_sequence("crash-p", "crash")
        .await
        .unwrap();
    // Every stored message, in order, with the offset it was confirmed at.
    let mut c = consumer(&e, "crash", OffsetSpecification::First).await;
    let mut got = Vec::new();
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(500), c.next()).await {
        let d = d.expect("delivery");
        let body = String::from_utf8(d.message().data().unwrap_or_default().to_vec()).unwrap();
        got.push((d.offset(), body));
    }
    let n = got.len() as u64;
    assert!(n >= top, "{top} confirmed, {n} stored");
    for (k, (offset, body)) in got.iter().enumerate() {
        assert_eq!(*offset, k as u64);
        assert_eq!(body, &format!("m{}", k + 1));
    }
    // The sequence is exactly the highest id stored: lower, and a publisher
    // resuming from it would store messages twice; higher, and it would
    // lose the ones it resends.
    assert_eq!(seq, n, "publisher sequence after the crash");
    let mut p = e.producer().name("crash-p").build("crash").await.unwrap();
    for i in n - 5..n + 5 {
        let m = Message::builder()
            .body(format!("m{i}"))
            .publishing_id(i)
            .build();
        assert!(p.send_with_confirm(m).await.unwrap().confirmed());
    }
    p.close().await.unwrap();
    let more = take(&mut c, 4).await;
    assert_eq!(more.first().unwrap(), &(n, format!("m{}", n + 1)));
    assert_eq!(more.last().unwrap(), &(n + 3, format!("m{}", n + 4)));
    quiet(&mut c).await;
    client.close().await.unwrap();
}

fn confirmed_len(v: &std::sync::Mutex<Vec<u64>>) -> u64 {
    v.lock().unwrap().len() as u64
}

/// Readers of the same chunks share the work of building them (a rendering
/// per chunk, kept by the stream): each subscription still gets every
/// message once, in order, in Deliver frames carrying its own id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_reading_the_same_chunks_each_get_every_message_under_their_own_id() {
    use rabbitmq_stream_client::types::{MessageResult, ResponseKind};
    const N: usize = 20_000;
    let w = Warren::start();
    let e = env(&w).await;
    create(&e, "shared").await;
    publish(&e, "shared", 0..N).await;

    let client = raw_client(&w).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    client
        .set_handler(move |m: MessageResult| {
            let tx = tx.clone();
            async move {
                if let Some(Ok(r)) = m
                    && let ResponseKind::Deliver(d) = r.kind()
                {
                    let bodies: Vec<String> = d
                        .messages
                        .iter()
                        .map(|m| String::from_utf8_lossy(m.data().unwrap_or_default()).into_owned())
                        .collect();
                    let _ = tx.send((d.subscription_id, d.chunk_first_offset, bodies));
                }
                Ok(())
            }
        })
        .await;
    for id in [3u8, 7] {
        let r = within(
            "subscribe",
            client.subscribe(
                id,
                "shared",
                OffsetSpecification::First,
                1,
                Default::default(),
            ),
        )
        .await
        .expect("subscribe");
        assert!(r.is_ok(), "subscribe {id}: {:?}", r.code());
    }
    let mut got: std::collections::HashMap<u8, Vec<(u64, String)>> = Default::default();
    while got.values().map(Vec::len).sum::<usize>() < 2 * N {
        let (id, first, bodies) = within("a chunk", rx.recv()).await.expect("handler");
        assert!(id == 3 || id == 7, "delivered under subscription id {id}");
        let mine = got.entry(id).or_default();
        mine.extend(
            bodies
                .into_iter()
                .enumerate()
                .map(|(k, b)| (first + k as u64, b)),
        );
        within("credit", client.credit(id, 1))
            .await
            .expect("credit");
    }
    for id in [3u8, 7] {
        let mine = &got[&id];
        assert_eq!(mine.len(), N, "subscription {id}");
        for (i, (offset, body)) in mine.iter().enumerate() {
            assert_eq!(
                (*offset, body.as_str()),
                (i as u64, format!("m{i}").as_str())
            );
        }
    }
}
