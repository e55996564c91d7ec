//! Memory-oriented subcommands: `fill-drain`, `connections` and `queues`.
//!
//! Each reads the broker's RSS (VmRSS in /proc/PID/status, given
//! `--broker-pid`) before, at the peak and after, and reports the growth per
//! message, connection or queue. Without `--broker-pid` they still report
//! rates and counts, with the RSS fields null.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Args;
use tokio::task::JoinSet;

use crate::Common;
use crate::client;
use crate::load::{self, Load, Publisher};
use crate::stats::{self, Stats, r1};

/// `fill-drain` options.
#[derive(Args, Debug, Clone)]
pub struct FillDrain {
    #[command(flatten)]
    pub common: Common,
    /// Messages to publish before anyone consumes.
    #[arg(long, short = 'm', default_value_t = 1_000_000)]
    pub messages: u64,
    /// Message body size in bytes (at least 8).
    #[arg(long, short = 's', default_value_t = 16)]
    pub size: usize,
    /// Publishers (the messages are split between them).
    #[arg(long, short = 'x', default_value_t = 1)]
    pub publishers: usize,
    /// Consumers for the drain.
    #[arg(long, short = 'y', default_value_t = 1)]
    pub consumers: usize,
    /// Queue name.
    #[arg(long, default_value = "warrenperf-fill")]
    pub queue: String,
    /// Consumer prefetch.
    #[arg(long, default_value_t = 1000)]
    pub prefetch: u16,
    /// Ack with multiple=true every N messages.
    #[arg(long, default_value_t = 100)]
    pub multi_ack: u64,
    /// Publisher confirms with this window (0: none).
    #[arg(long, default_value_t = 0)]
    pub confirm: usize,
    /// Persistent messages to a durable queue.
    #[arg(long)]
    pub persistent: bool,
    /// Give up after this many seconds per phase.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// x-queue-type of the queue (e.g. `stream`: declared durable, and
    /// drained from x-stream-offset `first`).
    #[arg(long)]
    pub queue_type: Option<String>,
    /// With a stream: consumer i of N starts at offset i*M/N instead of
    /// `first`, so the drain's consumers read at different offsets (the
    /// drain rate then counts every delivery, M*(N+1)/2 in all).
    #[arg(long)]
    pub stream_spread: bool,
    /// Stop after the fill and leave the queue full (e.g. to measure a
    /// broker's recovery of it after a restart).
    #[arg(long)]
    pub fill_only: bool,
}

/// `connections` options.
#[derive(Args, Debug, Clone)]
pub struct Connections {
    #[command(flatten)]
    pub common: Common,
    /// Idle connections to open (each with channel 1 open). Raise `ulimit -n`
    /// for both warrenperf and the broker above ~1,000.
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub count: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Seconds to hold them open before reading the broker's RSS.
    #[arg(long, default_value_t = 2)]
    pub hold: u64,
}

/// `queues` options.
#[derive(Args, Debug, Clone)]
pub struct Queues {
    #[command(flatten)]
    pub common: Common,
    /// Queues to declare.
    #[arg(long, short = 'n', default_value_t = 10_000)]
    pub count: usize,
    /// Declares sent before waiting for their replies.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Queue name prefix.
    #[arg(long, default_value = "warrenperf-q")]
    pub prefix: String,
    /// Seconds to wait before reading the broker's RSS.
    #[arg(long, default_value_t = 1)]
    pub hold: u64,
}

fn rss(c: &Common) -> Option<u64> {
    c.broker_pid.and_then(stats::rss_bytes)
}

fn per(full: Option<u64>, before: Option<u64>, n: u64) -> Option<f64> {
    Some(r1((full? as f64 - before? as f64) / n.max(1) as f64))
}

fn say(c: &Common, line: String) {
    if !c.json {
        println!("{line}");
    }
}

fn mib(b: Option<u64>) -> String {
    b.map(|b| format!("{:.1} MiB", b as f64 / (1 << 20) as f64))
        .unwrap_or_else(|| "? (no --broker-pid)".into())
}

/// Publishes M messages with no consumer, then drains them.
pub async fn fill_drain(f: FillDrain) -> Result<(), String> {
    let c = &f.common;
    let (mut sr, mut sw) = client::connect(&c.uri).await?;
    client::delete_queue(&mut sr, &mut sw, &f.queue).await?;
    let durable = f.persistent || f.queue_type.as_deref() == Some("stream");
    let kind = f.queue_type.as_deref();
    client::declare_queue(&mut sr, &mut sw, &f.queue, durable, kind).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss(c);
    let stats = Arc::new(Stats::new());

    let fill_s = fill(&f, &stats, &mut sr, &mut sw).await?;
    let fill_rate = f.messages as f64 / fill_s;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_full = rss(c);
    say(
        c,
        format!(
            "broker RSS: empty {}, full {}",
            mib(rss_before),
            mib(rss_full)
        ),
    );
    if f.fill_only {
        if c.json {
            println!(
                "{}",
                serde_json::json!({
                    "mode": "fill",
                    "messages": f.messages,
                    "fill_s": fill_s,
                    "fill_rate": fill_rate,
                    "rss_before_bytes": rss_before,
                    "rss_full_bytes": rss_full,
                })
            );
        }
        return Ok(());
    }

    let (drain_s, delivered) = drain(&f, &stats).await?;
    client::delete_queue(&mut sr, &mut sw, &f.queue).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = rss(c);
    print_fill_drain_summary(
        &f,
        FillDrainMeasured {
            fill_s,
            drain_s,
            delivered,
            rss_before,
            rss_full,
            rss_after,
        },
    );
    client::close(sr, sw).await;
    Ok(())
}

/// The fill phase: the publishers send their shares of the messages, then
/// the queue is polled until it holds them all. Returns the seconds taken.
async fn fill(
    f: &FillDrain,
    stats: &Arc<Stats>,
    sr: &mut client::Reader,
    sw: &mut client::Writer,
) -> Result<f64, String> {
    let c = &f.common;
    let timeout = Duration::from_secs(f.timeout);
    let t0 = Instant::now();
    let np = f.publishers.max(1) as u64;
    let mut pubs = JoinSet::new();
    for i in 0..np {
        let (mut r, mut w) = client::connect(&c.uri).await?;
        if f.confirm > 0 {
            client::confirm_select(&mut r, &mut w).await?;
        }
        let share = f.messages / np + u64::from(i < f.messages % np);
        let p = Publisher {
            exchange: Vec::new(),
            keys: vec![f.queue.clone().into_bytes()],
            size: f.size.max(8),
            rate: 0,
            confirm: f.confirm as u64,
            persistent: f.persistent,
        };
        pubs.spawn(load::publish_n(r, w, p, stats.clone(), share));
    }
    while let Some(res) = pubs.join_next().await {
        res.map_err(|e| e.to_string())??;
    }
    let sent_s = t0.elapsed().as_secs_f64();
    // The broker may still be taking in what is in flight: wait until it holds all.
    let mut count = 0;
    while t0.elapsed() < timeout {
        count = client::message_count(sr, sw, &f.queue).await?;
        if count as u64 >= f.messages {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if (count as u64) < f.messages {
        return Err(format!(
            "the queue holds {count} of {} messages after {}s",
            f.messages, f.timeout
        ));
    }
    let fill_s = t0.elapsed().as_secs_f64();
    let fill_rate = f.messages as f64 / fill_s;
    say(
        c,
        format!(
            "filled {} messages in {fill_s:.2} s ({fill_rate:.0} msg/s; sent in {sent_s:.2} s)",
            f.messages
        ),
    );
    Ok(fill_s)
}

/// The drain phase: consumers take every message from the queue. Returns
/// the seconds taken and the deliveries made.
async fn drain(f: &FillDrain, stats: &Arc<Stats>) -> Result<(f64, u64), String> {
    let c = &f.common;
    let timeout = Duration::from_secs(f.timeout);
    let consume_opts = drain_options(f);
    let mut consumers = Vec::new();
    let n = f.consumers.max(1) as u64;
    let stream = f.queue_type.as_deref() == Some("stream");
    // What the drain must deliver: each stream consumer reads from its
    // start to the end; a queue's consumers share the messages.
    let mut expected = if stream { 0 } else { f.messages };
    for i in 0..n {
        let (mut r, mut w) = client::connect(&c.uri).await?;
        let mut args = amq_protocol::types::FieldTable::default();
        if stream {
            use amq_protocol::types::AMQPValue;
            let start = if f.stream_spread {
                i * f.messages / n
            } else {
                0
            };
            expected += f.messages - start;
            let offset = if f.stream_spread {
                AMQPValue::LongLongInt(start as i64)
            } else {
                AMQPValue::LongString("first".into())
            };
            args.insert("x-stream-offset".into(), offset);
        }
        client::consume_with(&mut r, &mut w, &f.queue, f.prefetch, false, args).await?;
        consumers.push(tokio::spawn(load::consume(
            r,
            w,
            consume_opts.clone(),
            stats.clone(),
        )));
    }
    let t1 = Instant::now();
    while stats.consumed.load(Ordering::Relaxed) < expected {
        if t1.elapsed() > timeout || consumers.iter().any(|t| t.is_finished()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drain_s = t1.elapsed().as_secs_f64();
    let drained = stats.consumed.load(Ordering::Relaxed);
    for t in consumers {
        t.abort();
    }
    if drained < expected {
        return Err(format!("drained only {drained} of {expected} messages"));
    }
    let drain_rate = expected as f64 / drain_s;
    say(
        c,
        format!("drained {expected} messages in {drain_s:.2} s ({drain_rate:.0} msg/s)"),
    );
    Ok((drain_s, expected))
}

/// The consumers' options for the drain (no publishers, no deadline).
fn drain_options(f: &FillDrain) -> Load {
    Load {
        publishers: 0,
        consumers: Some(f.consumers),
        size: f.size,
        duration: 0,
        queue: f.queue.clone(),
        queues: None,
        exchange_type: None,
        routing_key: None,
        bindings: None,
        queue_type: None,
        prefetch: f.prefetch,
        multi_ack: f.multi_ack,
        auto_ack: false,
        confirm: 0,
        persistent: false,
        rate: None,
        warmup: None,
    }
}

/// What a fill-drain run measured.
struct FillDrainMeasured {
    fill_s: f64,
    drain_s: f64,
    /// Deliveries in the drain (more than the messages when several
    /// stream consumers each read the stream).
    delivered: u64,
    rss_before: Option<u64>,
    rss_full: Option<u64>,
    rss_after: Option<u64>,
}

/// Prints a fill-drain run's summary, as JSON or one line of text.
fn print_fill_drain_summary(f: &FillDrain, m: FillDrainMeasured) {
    let FillDrainMeasured {
        fill_s,
        drain_s,
        delivered,
        rss_before,
        rss_full,
        rss_after,
    } = m;
    let fill_rate = f.messages as f64 / fill_s;
    let drain_rate = delivered as f64 / drain_s;
    let per_msg = per(rss_full, rss_before, f.messages);
    let summary = serde_json::json!({
        "mode": "fill-drain",
        "messages": f.messages,
        "size": f.size.max(8),
        "publishers": f.publishers.max(1) as u64,
        "consumers": f.consumers.max(1),
        "fill_s": fill_s,
        "fill_rate": fill_rate,
        "drain_s": drain_s,
        "drain_rate": drain_rate,
        "delivered": delivered,
        "rss_before_bytes": rss_before,
        "rss_full_bytes": rss_full,
        "rss_after_bytes": rss_after,
        "rss_per_message_bytes": per_msg,
    });
    if f.common.json {
        println!("{summary}");
    } else {
        println!(
            "summary: fill {fill_rate:.0} msg/s, drain {drain_rate:.0} msg/s; broker RSS {} before, {} full, {} after: {} bytes per message",
            mib(rss_before),
            mib(rss_full),
            mib(rss_after),
            per_msg.map(|b| b.to_string()).unwrap_or_else(|| "?".into())
        );
    }
}

/// Opens N idle connections and reports the broker's RSS per connection.
pub async fn connections(o: Connections) -> Result<(), String> {
    let c = &o.common;
    let rss_before = rss(c);
    let t0 = Instant::now();
    let mut open = Vec::with_capacity(o.count);
    let mut set = JoinSet::new();
    let mut started = 0;
    while open.len() < o.count {
        while started < o.count && set.len() < o.concurrency.max(1) {
            let uri = c.uri.clone();
            set.spawn(async move {
                // A broker out of descriptors stops accepting: fail, don't hang.
                tokio::time::timeout(Duration::from_secs(15), client::connect_with(&uri, 4096))
                    .await
                    .unwrap_or_else(|_| Err("connection handshake timed out after 15 s".into()))
            });
            started += 1;
        }
        let Some(res) = set.join_next().await else {
            break;
        };
        let conn = res.map_err(|e| e.to_string())?.map_err(|e| {
            format!(
                "after {} connections: {e} (raise `ulimit -n` for warrenperf and the broker)",
                open.len()
            )
        })?;
        open.push(conn);
    }
    let open_s = t0.elapsed().as_secs_f64();
    say(
        c,
        format!("opened {} connections in {open_s:.2} s", open.len()),
    );
    tokio::time::sleep(Duration::from_secs(o.hold)).await;
    let rss_full = rss(c);
    let n = open.len();
    let mut closing = JoinSet::new();
    for (r, w) in open {
        closing.spawn(client::close(r, w));
        while closing.len() >= o.concurrency.max(1) * 4 {
            closing.join_next().await;
        }
    }
    while closing.join_next().await.is_some() {}
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = rss(c);
    let per_conn = per(rss_full, rss_before, n as u64);
    let summary = serde_json::json!({
        "mode": "connections",
        "connections": n,
        "open_s": open_s,
        "open_rate": n as f64 / open_s,
        "rss_before_bytes": rss_before,
        "rss_full_bytes": rss_full,
        "rss_after_bytes": rss_after,
        "rss_per_connection_bytes": per_conn,
    });
    if c.json {
        println!("{summary}");
    } else {
        println!(
            "summary: {n} connections; broker RSS {} before, {} open, {} after: {} bytes per connection",
            mib(rss_before),
            mib(rss_full),
            mib(rss_after),
            per_conn
                .map(|b| b.to_string())
                .unwrap_or_else(|| "?".into())
        );
    }
    Ok(())
}

/// Declares N queues and reports the broker's RSS per queue.
pub async fn queues(o: Queues) -> Result<(), String> {
    let c = &o.common;
    let (mut r, mut w) = client::connect(&c.uri).await?;
    let names: Vec<String> = (0..o.count).map(|i| format!("{}-{i}", o.prefix)).collect();
    // Leftovers of an aborted run would distort the figure.
    for batch in names.chunks(o.batch.max(1)) {
        for q in batch {
            w.method(1, client::queue_delete(q));
        }
        w.flush().await?;
        for _ in batch {
            client::expect_delete_ok(&mut r).await?;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss(c);
    let t0 = Instant::now();
    for batch in names.chunks(o.batch.max(1)) {
        for q in batch {
            w.method(1, client::queue_declare(q, false, false, None));
        }
        w.flush().await?;
        for _ in batch {
            client::expect_declare_ok(&mut r).await?;
        }
    }
    let declare_s = t0.elapsed().as_secs_f64();
    say(
        c,
        format!("declared {} queues in {declare_s:.2} s", o.count),
    );
    tokio::time::sleep(Duration::from_secs(o.hold)).await;
    let rss_full = rss(c);
    let t1 = Instant::now();
    for batch in names.chunks(o.batch.max(1)) {
        for q in batch {
            w.method(1, client::queue_delete(q));
        }
        w.flush().await?;
        for _ in batch {
            client::expect_delete_ok(&mut r).await?;
        }
    }
    let delete_s = t1.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = rss(c);
    let per_q = per(rss_full, rss_before, o.count as u64);
    let summary = serde_json::json!({
        "mode": "queues",
        "queues": o.count,
        "declare_s": declare_s,
        "declare_rate": o.count as f64 / declare_s,
        "delete_s": delete_s,
        "rss_before_bytes": rss_before,
        "rss_full_bytes": rss_full,
        "rss_after_bytes": rss_after,
        "rss_per_queue_bytes": per_q,
    });
    if c.json {
        println!("{summary}");
    } else {
        println!(
            "summary: {} queues declared at {:.0}/s; broker RSS {} before, {} declared, {} after: {} bytes per queue",
            o.count,
            o.count as f64 / declare_s,
            mib(rss_before),
            mib(rss_full),
            mib(rss_after),
            per_q.map(|b| b.to_string()).unwrap_or_else(|| "?".into())
        );
    }
    client::close(r, w).await;
    Ok(())
}
