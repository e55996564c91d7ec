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
use hdrhistogram::Histogram;
use parking_lot::Mutex;

mod client;

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
    /// Ack with multiple=true every N messages (1: ack each); keep it below the prefetch.
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

    let (mut sr, mut sw) = client::connect(&t.uri).await?;
    // A leftover queue from an earlier run would skew the figures.
    client::delete_queue(&mut sr, &mut sw, &t.queue).await?;
    client::declare_queue(&mut sr, &mut sw, &t.queue, t.persistent).await?;

    let mut tasks = Vec::new();
    for _ in 0..t.consumers {
        let (mut r, mut w) = client::connect(&t.uri).await?;
        client::consume(&mut r, &mut w, &t.queue, t.prefetch, t.auto_ack).await?;
        tasks.push(tokio::spawn(consume(r, w, t.clone(), stats.clone())));
    }
    for _ in 0..t.publishers {
        let (mut r, mut w) = client::connect(&t.uri).await?;
        if t.confirm > 0 {
            client::confirm_select(&mut r, &mut w).await?;
        }
        tasks.push(tokio::spawn(publish(r, w, t.clone(), stats.clone(), size)));
    }

    let start = Instant::now();
    let (mut last_p, mut last_c) = (0, 0);
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
        last_p = p;
        last_c = c;
        for task in &tasks {
            if task.is_finished() {
                stats.stop.store(true, Ordering::Relaxed);
            }
        }
        if stats.stop.load(Ordering::Relaxed) {
            break;
        }
    }
    stats.stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    let published = stats.published.load(Ordering::Relaxed);
    let consumed = stats.consumed.load(Ordering::Relaxed);
    let mut failure = None;
    for task in tasks {
        if task.is_finished() {
            if let Ok(Err(e)) = task.await {
                failure = Some(e);
            }
        } else {
            task.abort();
        }
    }
    if let Some(e) = failure {
        return Err(e);
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
    let _ = client::delete_queue(&mut sr, &mut sw, &t.queue).await;
    Ok(())
}

async fn publish(
    mut r: client::Reader,
    mut w: client::Writer,
    t: Throughput,
    stats: Arc<Stats>,
    size: usize,
) -> Result<(), String> {
    // Confirms (and any close) arrive on the reader, counted by its own task.
    let confirmed = Arc::new(AtomicU64::new(0));
    let wake = Arc::new(tokio::sync::Notify::new());
    let reader = {
        let (confirmed, wake) = (confirmed.clone(), wake.clone());
        tokio::spawn(async move {
            loop {
                match r.method().await? {
                    amq_protocol::protocol::AMQPClass::Basic(
                        amq_protocol::protocol::basic::AMQPMethod::Ack(a),
                    ) => {
                        confirmed.fetch_max(a.delivery_tag, Ordering::Relaxed);
                        wake.notify_one();
                    }
                    amq_protocol::protocol::AMQPClass::Basic(
                        amq_protocol::protocol::basic::AMQPMethod::Nack(n),
                    ) => {
                        return Err::<(), String>(format!(
                            "broker nacked publish {}",
                            n.delivery_tag
                        ));
                    }
                    _ => {}
                }
            }
        })
    };
    let mut body = vec![0u8; size];
    let per_pub_rate = if t.rate == 0 {
        0
    } else {
        (t.rate / t.publishers as u64).max(1)
    };
    let started = Instant::now();
    let mut sent: u64 = 0;
    let rk = t.queue.as_bytes().to_vec();
    const BATCH: u64 = 64;
    while !stats.stop.load(Ordering::Relaxed) {
        if reader.is_finished() {
            return match reader.await {
                Ok(Err(e)) => Err(e),
                _ => Err("publisher connection closed".into()),
            };
        }
        let mut n = BATCH;
        if per_pub_rate > 0 {
            let due_total = started.elapsed().as_nanos() as u64 * per_pub_rate / 1_000_000_000 + 1;
            if due_total <= sent {
                let next = started + Duration::from_nanos(sent * 1_000_000_000 / per_pub_rate);
                tokio::time::sleep_until(next.into()).await;
                continue;
            }
            n = n.min(due_total - sent);
        }
        if t.confirm > 0 {
            let window = t.confirm as u64;
            while sent - confirmed.load(Ordering::Relaxed) + n > window.max(n) {
                if reader.is_finished() || stats.stop.load(Ordering::Relaxed) {
                    break;
                }
                let _ = tokio::time::timeout(Duration::from_millis(100), wake.notified()).await;
            }
        }
        let ts = now_ns(stats.origin).to_le_bytes();
        body[..8].copy_from_slice(&ts);
        for _ in 0..n {
            w.publish(&rk, t.persistent, &body);
        }
        w.flush().await?;
        sent += n;
        stats.published.fetch_add(n, Ordering::Relaxed);
    }
    reader.abort();
    Ok(())
}

async fn consume(
    mut r: client::Reader,
    mut w: client::Writer,
    t: Throughput,
    stats: Arc<Stats>,
) -> Result<(), String> {
    let mut n: u64 = 0;
    let mut local = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    let every = t.multi_ack.max(1);
    loop {
        let client::Incoming::Delivery { tag, body } = client::next_delivery(&mut r).await? else {
            continue;
        };
        if body.len() >= 8 {
            let mut ts = [0u8; 8];
            ts.copy_from_slice(&body[..8]);
            let _ = local.record(now_ns(stats.origin).saturating_sub(u64::from_le_bytes(ts)));
        }
        n += 1;
        stats.consumed.fetch_add(1, Ordering::Relaxed);
        if !t.auto_ack && n.is_multiple_of(every) {
            w.ack(tag, every > 1);
            w.flush().await?;
        }
        if n.is_multiple_of(128) {
            stats.latency.lock().add(&local).ok();
            local.reset();
        }
    }
}
