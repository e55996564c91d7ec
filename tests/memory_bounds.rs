//! Hostile clients against warren's memory bounds (issue 14): each test has
//! a client do what would make a naive broker buffer without limit (ask for
//! messages or replies and never read them, flood returns, hold messages
//! unacked or in a transaction, open sockets and never log in), checks that
//! the broker's resident memory stays within a stated bound, and that a
//! well-behaved client on another connection keeps publishing and consuming
//! meanwhile. docs/architecture.md ("Memory bounds") lists the bounds.

mod common;
mod raw;
mod support;

use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{AMQPClass, basic};
use common::*;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Consumer};
use support::*;

const MIB: u64 = 1 << 20;

/// The broker's resident memory in bytes.
fn rss(w: &Warren) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{}/status", w.pid())).expect("read status");
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kb * 1024
}

/// This process's limit of open files (the soft one).
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}

/// A lapin connection that publishes to and consumes from its own queue.
struct Witness {
    _conn: lapin::Connection,
    ch: Channel,
    consumer: Consumer,
    queue: String,
    n: u64,
}

impl Witness {
    async fn start(w: &Warren) -> Witness {
        let (conn, ch) = w.channel().await;
        let queue = unique("witness");
        declare(&ch, &queue).await;
        let consumer = consume(&ch, &queue, false).await;
        Witness {
            _conn: conn,
            ch,
            consumer,
            queue,
            n: 0,
        }
    }

    /// Publishes one message and waits for its delivery.
    async fn round_trip(&mut self) {
        self.n += 1;
        let body = format!("m{}", self.n);
        publish(&self.ch, "", &self.queue, body.as_bytes()).await;
        let d = next(&mut self.consumer).await;
        assert_eq!(d.data, body.as_bytes());
        d.ack(BasicAckOptions::default()).await.unwrap();
    }

    /// Round trips `gap` apart until `stop` is set; returns their times.
    async fn sample_until(
        &mut self,
        stop: &std::sync::atomic::AtomicBool,
        gap: Duration,
    ) -> Vec<Duration> {
        let mut took = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Acquire) {
            let t = std::time::Instant::now();
            self.round_trip().await;
            took.push(t.elapsed());
            tokio::time::sleep(gap).await;
        }
        took.sort();
        took
    }

    /// Round trips for `d`, sampling the broker's RSS; returns the peak.
    /// Prints the round trips' latency (for docs/benchmarks.md; debug
    /// builds under test load, so it is not asserted).
    async fn keep_going(&mut self, w: &Warren, d: Duration) -> u64 {
        let until = tokio::time::Instant::now() + d;
        let mut peak = rss(w);
        let mut took = Vec::new();
        while tokio::time::Instant::now() < until {
            let t = std::time::Instant::now();
            self.round_trip().await;
            took.push(t.elapsed());
            peak = peak.max(rss(w));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        took.sort();
        if let Some(max) = took.last() {
            println!(
                "witness: {} round trips, p50 {:?}, p99 {:?}, max {max:?}",
                took.len(),
                took[took.len() / 2],
                took[took.len() * 99 / 100]
            );
        }
        peak
    }
}

/// Frames of a basic.publish of `body` (split at the default frame_max).
fn publish_frames(
    channel: u16,
    routing_key: &str,
    mandatory: bool,
    props: basic::AMQPProperties,
    body: &[u8],
) -> Vec<u8> {
    let mut out = raw::encode(&AMQPFrame::Method(
        channel,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: routing_key.into(),
            mandatory,
            immediate: false,
        })),
    ));
    out.extend(raw::encode(&AMQPFrame::Header(
        channel,
        AMQPContentHeader {
            class_id: 60,
            body_size: body.len() as u64,
            properties: props,
        },
    )));
    for chunk in body.chunks(131_072 - 8) {
        out.extend(raw::encode(&AMQPFrame::Body(channel, chunk.to_vec())));
    }
    out
}

/// A raw client, logged in, with channel 1 open.
fn raw_client(port: u16) -> TcpStream {
    let mut s = raw::connect(port);
    raw::open_channel(&mut s, 1);
    s
}

/// Writes `bytes` from a thread, so that a broker that stops reading
/// blocks the thread and not the test; shutting the socket ends it.
fn write_in_background(s: &TcpStream, bytes: Vec<u8>) -> std::thread::JoinHandle<()> {
    let mut w = s.try_clone().expect("clone socket");
    std::thread::spawn(move || {
        use std::io::Write;
        let _ = w.write_all(&bytes);
    })
}

async fn fill(ch: &Channel, queue: &str, n: usize, size: usize) {
    let body = vec![7u8; size];
    for _ in 0..n {
        publish(ch, "", queue, &body).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let q = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("passive declare");
        if q.message_count() as usize == n {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "fill stalled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A small paging budget, so a queue of big messages costs little RAM
/// and what the tests measure is the outbound side.
/// Messages (of 1 MiB) in the paged queues of the unacked cases: 150 by
/// default, `WARREN_HOSTILE_QUEUE_MIB=1024` for the 1 GiB run recorded in
/// docs/benchmarks.md.
fn paged_mib() -> usize {
    std::env::var("WARREN_HOSTILE_QUEUE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150)
}

const SMALL_QUEUES: &str = "[storage]\nqueue_memory_limit = 4194304\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_basic_get_from_a_client_that_never_reads_stops_at_the_outbound_cap() {
    let w = Warren::start_with(SMALL_QUEUES);
    let (_c, ch) = w.channel().await;
    let queue = unique("hoard");
    declare(&ch, &queue).await;
    fill(&ch, &queue, 120, MIB as usize).await;
    let mut witness = Witness::start(&w).await;
    witness.round_trip().await;
    let before = rss(&w);

    // 120 basic.get (no-ack) in one write, then never a read: 120 MiB of
    // get-ok frames if the broker answered them all.
    let s = raw_client(w.port);
    let mut gets = Vec::new();
    for _ in 0..120 {
        gets.extend(raw::encode(&AMQPFrame::Method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
                queue: queue.as_str().into(),
                no_ack: true,
            })),
        )));
    }
    let writer = write_in_background(&s, gets);
    let peak = witness.keep_going(&w, Duration::from_secs(3)).await;
    let grown = peak.saturating_sub(before);
    println!("broker RSS grew {} MiB", grown / MIB);
    assert!(
        grown < 40 * MIB,
        "the broker grew {} MiB for a client that never reads",
        grown / MIB
    );
    let _ = s.shutdown(Shutdown::Both);
    writer.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mandatory_flood_to_nowhere_from_a_client_that_never_reads_stops_at_the_outbound_cap() {
    let w = Warren::start();
    let mut witness = Witness::start(&w).await;
    witness.round_trip().await;
    let before = rss(&w);

    // 150 mandatory 1 MiB messages nobody routes: each comes back whole
    // as basic.return, to a client that reads nothing.
    let s = raw_client(w.port);
    let one = publish_frames(
        1,
        "nowhere",
        true,
        basic::AMQPProperties::default(),
        &vec![1u8; MIB as usize],
    );
    let flood: Vec<u8> = one.iter().copied().cycle().take(one.len() * 150).collect();
    let writer = write_in_background(&s, flood);
    let peak = witness.keep_going(&w, Duration::from_secs(3)).await;
    let grown = peak.saturating_sub(before);
    println!("broker RSS grew {} MiB", grown / MIB);
    assert!(
        grown < 40 * MIB,
        "the broker grew {} MiB returning messages nobody reads",
        grown / MIB
    );
    let _ = s.shutdown(Shutdown::Both);
    writer.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_of_direct_replies_pauses_the_replier_instead_of_growing_the_broker() {
    let w = Warren::start();
    let (_c, ch) = w.channel().await;
    let requests = unique("requests");
    declare(&ch, &requests).await;

    // The RPC client: consumes its direct replies, sends one request, and
    // then reads nothing more.
    let mut s = raw_client(w.port);
    raw::send_method(
        &mut s,
        1,
        &AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: "amq.rabbitmq.reply-to".into(),
            consumer_tag: "rpc".into(),
            no_local: false,
            no_ack: true,
            exclusive: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    );
    match raw::read_method(&mut s) {
        (1, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_))) => {}
        other => panic!("expected basic.consume-ok, got {other:?}"),
    }
    let props = basic::AMQPProperties::default().with_reply_to("amq.rabbitmq.reply-to".into());
    raw::send_raw(&mut s, &publish_frames(1, &requests, false, props, b"ping"));
    let request = get_eventually(&ch, &requests).await;
    let reply_to = request
        .delivery
        .properties
        .reply_to()
        .as_ref()
        .expect("reply_to")
        .to_string();

    let mut witness = Witness::start(&w).await;
    witness.round_trip().await;
    let before = rss(&w);
    // The server: 150 replies of 1 MiB to a client that reads none.
    let replier = w.connect().await;
    let rch = replier.create_channel().await.unwrap();
    let server = tokio::spawn(async move {
        let body = vec![2u8; MIB as usize];
        for _ in 0..150 {
            let sent = rch
                .basic_publish(
                    "".into(),
                    reply_to.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default(),
                )
                .await;
            if sent.is_err() {
                return;
            }
        }
    });
    let peak = witness.keep_going(&w, Duration::from_secs(3)).await;
    let grown = peak.saturating_sub(before);
    println!("broker RSS grew {} MiB", grown / MIB);
    assert!(
        grown < 40 * MIB,
        "the broker grew {} MiB holding replies nobody reads",
        grown / MIB
    );
    server.abort();
    let _ = s.shutdown(Shutdown::Both);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefetch_0_consumer_that_never_acks_holds_at_most_the_queue_memory_budget() {
    let w = Warren::start_with(SMALL_QUEUES);
    let (_c, ch) = w.channel().await;
    let queue = unique("paged");
    declare(&ch, &queue).await;
    let n = paged_mib();
    fill(&ch, &queue, n, MIB as usize).await;
    let mut witness = Witness::start(&w).await;
    witness.round_trip().await;
    let before = rss(&w);

    // Prefetch 0 (no limit), and no acks: every message of the queue would
    // be read back from its page file and held unacked in RAM.
    let (_hog, hch) = w.channel().await;
    let mut hog = consume(&hch, &queue, false).await;
    let peak = witness.keep_going(&w, Duration::from_secs(3)).await;
    let grown = peak.saturating_sub(before);
    println!("broker RSS grew {} MiB", grown / MIB);
    assert!(
        grown < 40 * MIB,
        "the broker grew {} MiB for a consumer that never acks",
        grown / MIB
    );
    let held = collect_for(&mut hog, Duration::from_millis(500), n).await;
    assert!(
        !held.is_empty() && held.len() < 20,
        "{} messages delivered unacked, expected about the 4 MiB budget",
        held.len()
    );
    // Acking makes room: deliveries go on.
    let last = held.last().unwrap().delivery_tag;
    hch.basic_ack(last, BasicAckOptions { multiple: true })
        .await
        .unwrap();
    let more = collect_for(&mut hog, Duration::from_secs(5), 1).await;
    assert_eq!(more.len(), 1, "no delivery after the ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_basic_get_client_that_never_acks_holds_at_most_the_queue_memory_budget() {
    let w = Warren::start_with(SMALL_QUEUES);
    let (_c, ch) = w.channel().await;
    let queue = unique("gets");
    declare(&ch, &queue).await;
    let n = paged_mib();
    fill(&ch, &queue, n, MIB as usize).await;
    let mut witness = Witness::start(&w).await;
    witness.round_trip().await;
    let before = rss(&w);

    // basic.get with manual ack, read, never acked: every message of the
    // queue would be read back and held unacked in RAM.
    let (_hog, hch) = w.channel().await;
    let mut got = Vec::new();
    let peak = tokio::select! {
        peak = witness.keep_going(&w, Duration::from_secs(3)) => peak,
        _ = async {
            while let Some(m) = hch
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
                .await
                .unwrap()
            {
                got.push(m.delivery.delivery_tag);
            }
            std::future::pending::<()>().await
        } => unreachable!(),
    };
    let grown = peak.saturating_sub(before);
    println!(
        "broker RSS grew {} MiB; {} gets answered",
        grown / MIB,
        got.len()
    );
    assert!(
        grown < 40 * MIB,
        "the broker grew {} MiB for a get client that never acks",
        grown / MIB
    );
    assert!(
        !got.is_empty() && got.len() < 20,
        "{} messages got unacked, expected about the 4 MiB budget",
        got.len()
    );
    // The rest is still queued, and acking makes room for the next get.
    let last = *got.last().unwrap();
    hch.basic_ack(last, BasicAckOptions { multiple: true })
        .await
        .unwrap();
    let more = hch
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("a message after the ack");
    assert_eq!(
        more.message_count as usize,
        n - got.len() - 1,
        "messages left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_sockets_that_stop_after_the_protocol_header_cost_at_most_the_handshake_cap() {
    // The shipped default: max_handshaking_connections = 1000.
    let w = Warren::start();
    let mut witness = Witness::start(&w).await;
    witness.round_trip().await;
    let before = rss(&w);
    let port = w.port;
    // Fewer where this process may not open that many files (other tests
    // may share the process under `cargo test`).
    let count = open_files_limit().map_or(1000, |l| (l / 2).min(10_000));
    // Each sends the protocol header (so the broker sets the connection
    // up and sends connection.start) and then nothing.
    let opener = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut open = Vec::new();
        for _ in 0..count {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                let _ = s.write_all(raw::PROTOCOL_HEADER);
                open.push(s);
            }
        }
        open
    });
    let peak = witness.keep_going(&w, Duration::from_secs(4)).await;
    let sockets = opener.await.unwrap();
    let peak = peak.max(witness.keep_going(&w, Duration::from_secs(1)).await);
    let grown = peak.saturating_sub(before);
    println!("broker RSS grew {} MiB", grown / MIB);
    assert!(
        grown < 60 * MIB,
        "the broker grew {} MiB for {} half-open connections",
        grown / MIB,
        sockets.len()
    );
    drop(sockets);
    witness.round_trip().await;
}

/// Messages ready in `queue`.
async fn ready(ch: &Channel, queue: &str) -> u32 {
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("passive declare")
    .message_count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_altogether_is_dropped_after_two_missed_heartbeats() {
    let w = Warren::start_with(SMALL_QUEUES);
    let (_c, ch) = w.channel().await;
    let queue = unique("unread");
    declare(&ch, &queue).await;
    fill(&ch, &queue, 40, MIB as usize).await;

    // Heartbeat 1 s; 40 basic.get (with ack) and then not a single read:
    // once the socket buffers are full, nothing gets out to it any more.
    let port = w.port;
    let s = tokio::task::spawn_blocking(move || {
        let mut s = raw::handshake(
            port,
            &raw::Handshake {
                heartbeat: 1,
                ..Default::default()
            },
        );
        raw::open_channel(&mut s, 1);
        s
    })
    .await
    .unwrap();
    let mut gets = Vec::new();
    for _ in 0..40 {
        gets.extend(raw::encode(&AMQPFrame::Method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
                queue: queue.as_str().into(),
                no_ack: false,
            })),
        )));
    }
    let writer = write_in_background(&s, gets);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while ready(&ch, &queue).await == 40 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no basic.get served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The broker gives up on it like on a peer that missed two heartbeats:
    // the connection ends and what it got unacked is back in the queue.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while ready(&ch, &queue).await < 40 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a client that reads nothing is still connected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = s.shutdown(Shutdown::Both);
    writer.join().unwrap();
}

/// p50 / p99 / max of sorted round trips, for the printout.
fn percentiles(took: &[Duration]) -> String {
    let at = |q: usize| took[(took.len() * q / 100).min(took.len() - 1)];
    format!(
        "n {}, p50 {:?}, p99 {:?}, max {:?}",
        took.len(),
        at(50),
        at(99),
        took[took.len() - 1]
    )
}

/// 1,000 durable queues declared from 50 connections at once: each
/// declaration is a definitions-log write with an fsync, group-committed
/// on the definitions thread, so the storm must not park the tokio workers
/// that serve a client on another connection. The round trips are printed
/// (docs/benchmarks.md records a release run); the test asserts the
/// witness kept going during the storm and every queue exists after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_durable_declarations_leaves_other_clients_served() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let w = Warren::start();
    let mut witness = Witness::start(&w).await;
    witness.round_trip().await;
    let stop = Arc::new(AtomicBool::new(false));
    let timer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            stop.store(true, Ordering::Release);
        })
    };
    let before = witness.sample_until(&stop, Duration::from_millis(1)).await;
    timer.await.unwrap();

    let mut clients = Vec::new();
    for _ in 0..50 {
        clients.push(w.channel().await);
    }
    let storm_done = Arc::new(AtomicBool::new(false));
    let storm = {
        let done = storm_done.clone();
        let prefix = unique("storm");
        let chans: Vec<Channel> = clients.iter().map(|(_, ch)| ch.clone()).collect();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let mut all = Vec::new();
            for (i, ch) in chans.into_iter().enumerate() {
                let prefix = prefix.clone();
                all.push(tokio::spawn(async move {
                    for j in 0..20 {
                        let opts = QueueDeclareOptions {
                            durable: true,
                            ..Default::default()
                        };
                        let name = format!("{prefix}-{i}-{j}");
                        ch.queue_declare(name.as_str().into(), opts, FieldTable::default())
                            .await
                            .expect("durable queue.declare");
                    }
                }));
            }
            for t in all {
                t.await.unwrap();
            }
            done.store(true, Ordering::Release);
            (started.elapsed(), prefix)
        })
    };
    let during = witness
        .sample_until(&storm_done, Duration::from_millis(1))
        .await;
    let (took, prefix) = storm.await.unwrap();
    println!("1000 durable queues from 50 connections in {took:?}");
    println!("witness before: {}", percentiles(&before));
    println!("witness during: {}", percentiles(&during));
    assert!(
        !during.is_empty(),
        "no round trip completed during the storm"
    );
    let (_c, ch) = w.channel().await;
    for i in 0..50 {
        for j in 0..20 {
            let opts = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            let name = format!("{prefix}-{i}-{j}");
            ch.queue_declare(name.as_str().into(), opts, FieldTable::default())
                .await
                .expect("a declared queue exists");
        }
    }
    witness.round_trip().await;
}
