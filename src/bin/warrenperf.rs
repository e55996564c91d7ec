//! warrenperf: load generator for any AMQP 0-9-1 broker (warren or RabbitMQ).
//!
//! `warrenperf throughput` runs P publishers and C consumers, each on its own
//! connection, against one queue, and prints a line a second and a summary
//! (`--json` for one JSON object). Message bodies carry the send time, so
//! consumers measure end-to-end latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use futures_lite::StreamExt;
use hdrhistogram::Histogram;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use parking_lot::Mutex;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Load generator for AMQP 0-9-1 brokers (warren, RabbitMQ, ...)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Publishers and consumers on one queue: rates and latency.
    Throughput(Throughput),
}

#[derive(Args, Debug, Clone)]
struct Throughput {
    /// Broker URI.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    uri: String,
    /// Number of publishers (one connection each).
    #[arg(long, short = 'x', default_value_t = 1)]
    publishers: usize,
    /// Number of consumers (one connection each).
    #[arg(long, short = 'y', default_value_t = 1)]
    consumers: usize,
    /// Message body size in bytes (at least 8: the body carries a timestamp).
    #[arg(long, short = 's', default_value_t = 16)]
    size: usize,
    /// Seconds to run.
    #[arg(long, short = 'd', default_value_t = 10)]
    duration: u64,
    /// Queue name (declared, and deleted at the end).
    #[arg(long, default_value = "warrenperf")]
    queue: String,
    /// Consumer prefetch (basic.qos).
    #[arg(long, default_value_t = 1000)]
    prefetch: u16,
    /// Ack with multiple=true every N messages (1: ack each).
    #[arg(long, default_value_t = 100)]
    multi_ack: u64,
    /// Consumers use no-ack (auto-ack) mode.
    #[arg(long)]
    auto_ack: bool,
    /// Publisher confirms with at most N unconfirmed messages (0: no confirms).
    #[arg(long, default_value_t = 0)]
    confirm: usize,
    /// Publish persistent messages (delivery-mode 2) to a durable queue.
    #[arg(long)]
    persistent: bool,
    /// Total publish rate limit in msg/s (0: unlimited).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

struct Stats {
    published: AtomicU64,
    consumed: AtomicU64,
    latency: Mutex<Histogram<u64>>,
    total_latency: Mutex<Histogram<u64>>,
    stop: AtomicBool,
    origin: Instant,
}

fn now_ns(origin: Instant) -> u64 {
    origin.elapsed().as_nanos() as u64
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Throughput(t) => throughput(t).await,
    };
    if let Err(e) = result {
        eprintln!("warrenperf: {e}");
        std::process::exit(1);
    }
}

async fn connect(uri: &str) -> Result<Connection, String> {
    Connection::connect(uri, ConnectionProperties::default())
        .await
        .map_err(|e| format!("cannot connect to {uri}: {e}"))
}

async fn throughput(t: Throughput) -> Result<(), String> {
    let size = t.size.max(8);
    let stats = Arc::new(Stats {
        published: AtomicU64::new(0),
        consumed: AtomicU64::new(0),
        latency: Mutex::new(Histogram::new(3).map_err(|e| e.to_string())?),
        total_latency: Mutex::new(Histogram::new(3).map_err(|e| e.to_string())?),
        stop: AtomicBool::new(false),
        origin: Instant::now(),
    });

    let setup = connect(&t.uri).await?;
    let ch = setup.create_channel().await.map_err(|e| e.to_string())?;
    let _ = ch
        .queue_delete(t.queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let ch = setup.create_channel().await.map_err(|e| e.to_string())?;
    ch.queue_declare(
        t.queue.as_str().into(),
        QueueDeclareOptions {
            durable: t.persistent,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .map_err(|e| format!("queue.declare: {e}"))?;

    let mut tasks = Vec::new();
    for _ in 0..t.consumers {
        let conn = connect(&t.uri).await?;
        tasks.push(tokio::spawn(consume(conn, t.clone(), stats.clone())));
    }
    // Let consumers attach before publishing starts.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..t.publishers {
        let conn = connect(&t.uri).await?;
        tasks.push(tokio::spawn(publish(
            conn,
            t.clone(),
            stats.clone(),
            i,
            size,
        )));
    }

    let start = Instant::now();
    let (mut last_p, mut last_c) = (0, 0);
    let mut rows = Vec::new();
    for sec in 1..=t.duration {
        tokio::time::sleep_until((start + Duration::from_secs(sec)).into()).await;
        let p = stats.published.load(Ordering::Relaxed);
        let c = stats.consumed.load(Ordering::Relaxed);
        let (p50, p99) = {
            let mut h = stats.latency.lock();
            let r = (h.value_at_quantile(0.5), h.value_at_quantile(0.99));
            stats.total_latency.lock().add(&*h).ok();
            h.reset();
            r
        };
        if !t.json {
            println!(
                "time {sec:>3}s  published {:>9} msg/s  consumed {:>9} msg/s  latency p50 {:>8.1} us  p99 {:>8.1} us",
                p - last_p,
                c - last_c,
                p50 as f64 / 1000.0,
                p99 as f64 / 1000.0
            );
        }
        rows.push((p - last_p, c - last_c));
        last_p = p;
        last_c = c;
    }
    stats.stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    let published = stats.published.load(Ordering::Relaxed);
    let consumed = stats.consumed.load(Ordering::Relaxed);
    for task in tasks {
        task.abort();
    }
    let h = stats.total_latency.lock().clone();
    let q = |x: f64| h.value_at_quantile(x) as f64 / 1000.0;
    let summary = serde_json::json!({
        "publishers": t.publishers,
        "consumers": t.consumers,
        "size": size,
        "duration_s": elapsed,
        "published": published,
        "consumed": consumed,
        "publish_rate": published as f64 / elapsed,
        "consume_rate": consumed as f64 / elapsed,
        "latency_us": {"p50": q(0.5), "p95": q(0.95), "p99": q(0.99), "p999": q(0.999), "max": h.max() as f64 / 1000.0},
        "confirm": t.confirm,
        "persistent": t.persistent,
        "prefetch": t.prefetch,
        "auto_ack": t.auto_ack,
    });
    if t.json {
        println!("{summary}");
    } else {
        println!(
            "summary: published {:.0} msg/s, consumed {:.0} msg/s, latency p50 {:.1} us p99 {:.1} us p99.9 {:.1} us",
            published as f64 / elapsed,
            consumed as f64 / elapsed,
            q(0.5),
            q(0.99),
            q(0.999)
        );
    }
    if let Ok(ch) = setup.create_channel().await {
        let _ = ch
            .queue_delete(t.queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    Ok(())
}

async fn publish(
    conn: Connection,
    t: Throughput,
    stats: Arc<Stats>,
    _id: usize,
    size: usize,
) -> Result<(), String> {
    let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    if t.confirm > 0 {
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| e.to_string())?;
    }
    let props = if t.persistent {
        BasicProperties::default().with_delivery_mode(2)
    } else {
        BasicProperties::default()
    };
    let mut body = vec![0u8; size];
    let mut window = std::collections::VecDeque::new();
    let per_pub_rate = if t.rate == 0 {
        0
    } else {
        (t.rate / t.publishers as u64).max(1)
    };
    let started = Instant::now();
    let mut sent: u64 = 0;
    while !stats.stop.load(Ordering::Relaxed) {
        if per_pub_rate > 0 {
            let due = started + Duration::from_nanos(sent * 1_000_000_000 / per_pub_rate);
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
        }
        body[..8].copy_from_slice(&now_ns(stats.origin).to_le_bytes());
        let confirm = ch
            .basic_publish(
                "".into(),
                t.queue.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                props.clone(),
            )
            .await
            .map_err(|e| e.to_string())?;
        sent += 1;
        if t.confirm > 0 {
            window.push_back(confirm);
            if window.len() >= t.confirm {
                if let Some(c) = window.pop_front() {
                    c.await.map_err(|e| e.to_string())?;
                }
            }
        }
        stats.published.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

async fn consume(conn: Connection, t: Throughput, stats: Arc<Stats>) -> Result<(), String> {
    let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    ch.basic_qos(t.prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let mut consumer = ch
        .basic_consume(
            t.queue.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: t.auto_ack,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut n: u64 = 0;
    let mut local = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    while let Some(d) = consumer.next().await {
        let d = d.map_err(|e| e.to_string())?;
        if d.data.len() >= 8 {
            let mut ts = [0u8; 8];
            ts.copy_from_slice(&d.data[..8]);
            let sent = u64::from_le_bytes(ts);
            let _ = local.record(now_ns(stats.origin).saturating_sub(sent));
        }
        n += 1;
        stats.consumed.fetch_add(1, Ordering::Relaxed);
        if !t.auto_ack && n % t.multi_ack.max(1) == 0 {
            d.acker
                .ack(BasicAckOptions { multiple: true })
                .await
                .map_err(|e| e.to_string())?;
        }
        if n % 256 == 0 {
            stats.latency.lock().add(&local).ok();
            local.reset();
        }
    }
    Ok(())
}
