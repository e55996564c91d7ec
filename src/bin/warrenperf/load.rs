//! Publish/consume load: `throughput`, `latency`, `fanout` and `topic`.
//!
//! One engine serves all four: Q queues, optionally behind a direct, fanout
//! or topic exchange, P publishers (each its own connection, publishing in
//! batches, optionally rate-limited and with a confirm window) and C
//! consumers (each its own connection, consumer j on queue j mod Q).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use amq_protocol::protocol::{AMQPClass, basic};
use clap::Args;
use hdrhistogram::Histogram;

use crate::Common;
use crate::client;
use crate::stats::{self, CpuMeter, Stats, r1};

/// What a load subcommand runs.
#[derive(Args, Debug, Clone)]
pub struct Load {
    /// Number of publishers (one connection each).
    #[arg(long, short = 'x', default_value_t = 1)]
    pub publishers: usize,
    /// Number of consumers (one connection each; default: one per queue).
    #[arg(long, short = 'y')]
    pub consumers: Option<usize>,
    /// Message body size in bytes (at least 8: the body carries a timestamp).
    #[arg(long, short = 's', default_value_t = 16)]
    pub size: usize,
    /// Seconds to run.
    #[arg(long, short = 'd', default_value_t = 10)]
    pub duration: u64,
    /// Queue name, or name prefix with several queues (declared, deleted at the end).
    #[arg(long, default_value = "warrenperf")]
    pub queue: String,
    /// Number of queues (default 1; fanout and topic: 10).
    #[arg(long, short = 'q')]
    pub queues: Option<usize>,
    /// Publish through an exchange of this type: direct, fanout or topic
    /// (default: the default exchange, publisher i to queue i mod Q).
    #[arg(long)]
    pub exchange_type: Option<String>,
    /// Routing key for every message (default: per queue, or per topic binding).
    #[arg(long)]
    pub routing_key: Option<String>,
    /// Topic bindings, spread over the queues (default: 1,000 for `topic`).
    #[arg(long, short = 'b')]
    pub bindings: Option<usize>,
    /// x-queue-type argument for declared queues (e.g. classic, quorum).
    #[arg(long)]
    pub queue_type: Option<String>,
    /// Consumer prefetch (basic.qos).
    #[arg(long, default_value_t = 1000)]
    pub prefetch: u16,
    /// Ack with multiple=true every N messages (1: ack each); kept below the prefetch.
    #[arg(long, default_value_t = 100)]
    pub multi_ack: u64,
    /// Consumers use no-ack (auto-ack) mode.
    #[arg(long)]
    pub auto_ack: bool,
    /// Publisher confirms with at most N unconfirmed messages per publisher (0: none).
    #[arg(long, default_value_t = 0)]
    pub confirm: usize,
    /// Publish persistent messages (delivery-mode 2) to durable queues.
    #[arg(long)]
    pub persistent: bool,
    /// Total publish rate in msg/s (0: unlimited; `latency` defaults to 10,000).
    #[arg(long, short = 'r')]
    pub rate: Option<u64>,
    /// Seconds at the start left out of the latency figures (`latency`: 1).
    #[arg(long)]
    pub warmup: Option<u64>,
}

/// Which subcommand is running (it sets the defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `throughput`.
    Throughput,
    /// `latency`.
    Latency,
    /// `fanout`.
    Fanout,
    /// `topic`.
    Topic,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Throughput => "throughput",
            Mode::Latency => "latency",
            Mode::Fanout => "fanout",
            Mode::Topic => "topic",
        }
    }
}

/// Queues, exchange and bindings of a run, and each publisher's keys.
#[derive(Debug)]
pub struct Plan {
    /// Queue names.
    pub queues: Vec<String>,
    /// Exchange to publish to ("" is the default exchange).
    pub exchange: String,
    /// Its type when not the default exchange.
    pub kind: Option<String>,
    /// (queue, binding key) pairs.
    pub bindings: Vec<(String, String)>,
    /// Routing keys of publisher i: `keys(i)`.
    topic_keys: Vec<String>,
    routing_key: Option<String>,
}

impl Plan {
    /// Works out the topology for `l` in `mode`.
    pub fn new(l: &Load, mode: Mode) -> Result<Plan, String> {
        let default_q = if matches!(mode, Mode::Fanout | Mode::Topic) {
            10
        } else {
            1
        };
        let nq = l.queues.unwrap_or(default_q).max(1);
        let queues: Vec<String> = if nq == 1 {
            vec![l.queue.clone()]
        } else {
            (0..nq).map(|i| format!("{}-{i}", l.queue)).collect()
        };
        let kind = match mode {
            Mode::Fanout => Some("fanout".to_owned()),
            Mode::Topic => Some("topic".to_owned()),
            _ => l.exchange_type.clone(),
        };
        let mut bindings = Vec::new();
        let mut topic_keys = Vec::new();
        match kind.as_deref() {
            None => {}
            Some("direct") => bindings = queues.iter().map(|q| (q.clone(), q.clone())).collect(),
            Some("fanout") => {
                bindings = queues.iter().map(|q| (q.clone(), String::new())).collect()
            }
            Some("topic") => {
                let nb = l
                    .bindings
                    .unwrap_or(if mode == Mode::Topic { 1000 } else { nq });
                for b in 0..nb.max(1) {
                    // Three wildcard shapes; key perf.<b>.x matches exactly binding b.
                    let pattern = match b % 3 {
                        0 => format!("perf.{b}.*"),
                        1 => format!("perf.{b}.#"),
                        _ => format!("*.{b}.x"),
                    };
                    bindings.push((queues[b % nq].clone(), pattern));
                    topic_keys.push(format!("perf.{b}.x"));
                }
            }
            Some(other) => return Err(format!("unsupported exchange type {other:?}")),
        }
        let exchange = kind
            .as_ref()
            .map(|k| format!("{}.{k}", l.queue))
            .unwrap_or_default();
        Ok(Plan {
            queues,
            exchange,
            kind,
            bindings,
            topic_keys,
            routing_key: l.routing_key.clone(),
        })
    }

    /// The routing keys publisher `i` of `n` cycles through.
    pub fn keys(&self, i: usize, n: usize) -> Vec<Vec<u8>> {
        if let Some(k) = &self.routing_key {
            return vec![k.clone().into_bytes()];
        }
        match self.kind.as_deref() {
            None | Some("direct") => vec![self.queues[i % self.queues.len()].clone().into_bytes()],
            Some("topic") => {
                let len = self.topic_keys.len();
                let start = i * len / n.max(1);
                (0..len)
                    .map(|j| self.topic_keys[(start + j) % len].clone().into_bytes())
                    .collect()
            }
            _ => vec![Vec::new()],
        }
    }

    /// Declares everything, removing leftovers of an earlier run first.
    async fn setup(
        &self,
        r: &mut client::Reader,
        w: &mut client::Writer,
        l: &Load,
    ) -> client::Result<()> {
        for q in &self.queues {
            client::delete_queue(r, w, q).await?;
            client::declare_queue(r, w, q, l.persistent, l.queue_type.as_deref()).await?;
        }
        if let Some(kind) = &self.kind {
            client::delete_exchange(r, w, &self.exchange).await?;
            client::declare_exchange(r, w, &self.exchange, kind, l.persistent).await?;
            client::bind_all(r, w, &self.exchange, &self.bindings).await?;
        }
        Ok(())
    }

    async fn teardown(&self, r: &mut client::Reader, w: &mut client::Writer) -> client::Result<()> {
        if self.kind.is_some() {
            client::delete_exchange(r, w, &self.exchange).await?;
        }
        for q in &self.queues {
            client::delete_queue(r, w, q).await?;
        }
        Ok(())
    }
}

/// Runs a load subcommand and prints its summary.
pub async fn run(c: Common, mut l: Load, mode: Mode) -> Result<(), String> {
    if mode == Mode::Latency {
        l.rate.get_or_insert(10_000);
        l.warmup.get_or_insert(1);
    }
    let size = l.size.max(8);
    let rate = l.rate.unwrap_or(0);
    let warmup = l.warmup.unwrap_or(0);
    let plan = Plan::new(&l, mode)?;
    let stats = Arc::new(Stats::new());

    let (mut sr, mut sw) = client::connect(&c.uri).await?;
    plan.setup(&mut sr, &mut sw, &l).await?;

    let n_consumers = l.consumers.unwrap_or(plan.queues.len());
    let mut tasks = start_consumers(&c, &l, &plan, n_consumers, &stats).await?;
    start_publishers(&c, &l, &plan, size, rate, &stats, &mut tasks).await?;

    let client_cpu = CpuMeter::start(None);
    let broker_cpu = c.broker_pid.map(|p| CpuMeter::start(Some(p)));
    let sampled = sample_each_second(&c, &l, warmup, &stats, &tasks).await;
    stats.stop.store(true, Ordering::Relaxed);
    let elapsed = sampled.start.elapsed().as_secs_f64();
    let measured_s = (elapsed - warmup as f64).max(1e-9);
    let published = stats.published.load(Ordering::Relaxed);
    let consumed = stats.consumed.load(Ordering::Relaxed);
    let client_pct = client_cpu.percent();
    let broker_pct = broker_cpu.and_then(|m| m.percent());
    let broker_rss = c.broker_pid.and_then(stats::rss_bytes);
    join_or_abort(tasks).await?;
    let publish_rate = (published - sampled.measured_p) as f64 / measured_s;
    let consume_rate = (consumed - sampled.measured_c) as f64 / measured_s;
    let outcome = Outcome {
        n_consumers,
        size,
        rate,
        warmup,
        elapsed,
        published,
        consumed,
        publish_rate,
        consume_rate,
        latency: sampled.total,
        client_pct,
        broker_pct,
        broker_rss,
    };
    print_summary(&c, &l, mode, &plan, &outcome);
    if rate > 0 && publish_rate < rate as f64 * 0.95 {
        eprintln!("warning: published {publish_rate:.0} msg/s, below the target {rate} msg/s");
    }
    let _ = plan.teardown(&mut sr, &mut sw).await;
    client::close(sr, sw).await;
    Ok(())
}

/// A publisher's or consumer's task.
type ClientTask = tokio::task::JoinHandle<Result<(), String>>;

/// Connects the consumers, consumer j on queue j mod Q, and spawns their
/// tasks.
async fn start_consumers(
    c: &Common,
    l: &Load,
    plan: &Plan,
    n_consumers: usize,
    stats: &Arc<Stats>,
) -> Result<Vec<ClientTask>, String> {
    let mut tasks = Vec::new();
    for j in 0..n_consumers {
        let (mut r, mut w) = client::connect(&c.uri).await?;
        let q = &plan.queues[j % plan.queues.len()];
        client::consume(&mut r, &mut w, q, l.prefetch, l.auto_ack).await?;
        tasks.push(tokio::spawn(consume(r, w, l.clone(), stats.clone())));
    }
    Ok(tasks)
}

/// Connects the publishers, each with its share of the total rate, and
/// spawns their tasks after the consumers'.
async fn start_publishers(
    c: &Common,
    l: &Load,
    plan: &Plan,
    size: usize,
    rate: u64,
    stats: &Arc<Stats>,
    tasks: &mut Vec<ClientTask>,
) -> Result<(), String> {
    for i in 0..l.publishers {
        let (mut r, mut w) = client::connect(&c.uri).await?;
        if l.confirm > 0 {
            client::confirm_select(&mut r, &mut w).await?;
        }
        let p = Publisher {
            exchange: plan.exchange.clone().into_bytes(),
            keys: plan.keys(i, l.publishers),
            size,
            rate: if rate == 0 {
                0
            } else {
                (rate / l.publishers as u64).max(1)
            },
            confirm: l.confirm as u64,
            persistent: l.persistent,
        };
        tasks.push(tokio::spawn(publish(r, w, p, stats.clone())));
    }
    Ok(())
}

/// What the once-a-second sampling saw.
struct Sampled {
    /// When sampling started.
    start: Instant,
    /// Latencies after the warm-up.
    total: Histogram<u64>,
    /// Published and consumed counts when the warm-up ended.
    measured_p: u64,
    measured_c: u64,
}

/// Samples the counters and latencies once a second for the run's
/// duration (or until a task ends), printing a line each second unless
/// the output is JSON.
async fn sample_each_second(
    c: &Common,
    l: &Load,
    warmup: u64,
    stats: &Stats,
    tasks: &[ClientTask],
) -> Sampled {
    let start = Instant::now();
    let mut total = stats::histogram();
    let (mut last_p, mut last_c) = (0, 0);
    let (mut measured_p, mut measured_c) = (0, 0);
    for sec in 1..=l.duration {
        tokio::time::sleep_until((start + Duration::from_secs(sec)).into()).await;
        let p = stats.published.load(Ordering::Relaxed);
        let cn = stats.consumed.load(Ordering::Relaxed);
        let window = {
            let mut h = stats.latency.lock();
            let w = h.clone();
            h.reset();
            w
        };
        if sec > warmup {
            total.add(&window).ok();
        }
        if sec == warmup {
            (measured_p, measured_c) = (p, cn);
        }
        if !c.json {
            let q = |x: f64| {
                if window.is_empty() {
                    0.0
                } else {
                    window.value_at_quantile(x) as f64 / 1000.0
                }
            };
            println!(
                "time {sec:>3}s  published {:>9} msg/s  consumed {:>9} msg/s  latency us p50 {:>8.1} p95 {:>8.1} p99 {:>8.1} p99.9 {:>8.1}",
                p - last_p,
                cn - last_c,
                q(0.5),
                q(0.95),
                q(0.99),
                q(0.999)
            );
        }
        (last_p, last_c) = (p, cn);
        if tasks.iter().any(|t| t.is_finished()) {
            break;
        }
    }
    Sampled {
        start,
        total,
        measured_p,
        measured_c,
    }
}

/// Ends the run's tasks: a finished one's error is the run's failure, the
/// others are aborted.
async fn join_or_abort(tasks: Vec<ClientTask>) -> Result<(), String> {
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
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// A finished run's figures, for its summary.
struct Outcome {
    n_consumers: usize,
    size: usize,
    rate: u64,
    warmup: u64,
    elapsed: f64,
    published: u64,
    consumed: u64,
    publish_rate: f64,
    consume_rate: f64,
    latency: Histogram<u64>,
    client_pct: Option<f64>,
    broker_pct: Option<f64>,
    broker_rss: Option<u64>,
}

/// Prints a run's summary, as JSON or as two lines of text.
fn print_summary(c: &Common, l: &Load, mode: Mode, plan: &Plan, o: &Outcome) {
    let (publish_rate, consume_rate) = (o.publish_rate, o.consume_rate);
    let summary = serde_json::json!({
        "mode": mode.name(),
        "publishers": l.publishers,
        "consumers": o.n_consumers,
        "queues": plan.queues.len(),
        "exchange_type": plan.kind,
        "bindings": plan.bindings.len(),
        "size": o.size,
        "duration_s": o.elapsed,
        "warmup_s": o.warmup,
        "published": o.published,
        "consumed": o.consumed,
        "publish_rate": publish_rate,
        "consume_rate": consume_rate,
        "target_rate": o.rate,
        "latency_us": stats::percentiles_us(&o.latency),
        "confirm": l.confirm,
        "persistent": l.persistent,
        "prefetch": l.prefetch,
        "multi_ack": l.multi_ack,
        "auto_ack": l.auto_ack,
        "client_cpu_pct": o.client_pct.map(r1),
        "broker_cpu_pct": o.broker_pct.map(r1),
        "broker_rss_bytes": o.broker_rss,
    });
    if c.json {
        println!("{summary}");
    } else {
        let lat = &summary["latency_us"];
        println!(
            "summary: published {publish_rate:.0} msg/s, consumed {consume_rate:.0} msg/s, latency us p50 {} p95 {} p99 {} p99.9 {} max {}",
            lat["p50"], lat["p95"], lat["p99"], lat["p999"], lat["max"]
        );
        println!(
            "cpu: warrenperf {}%{}",
            o.client_pct.map(r1).unwrap_or(0.0),
            o.broker_pct
                .map(|b| format!(", broker {}%", r1(b)))
                .unwrap_or_default()
        );
    }
}

/// What one publisher sends.
pub struct Publisher {
    /// Exchange name.
    pub exchange: Vec<u8>,
    /// Routing keys, cycled through.
    pub keys: Vec<Vec<u8>>,
    /// Body size.
    pub size: usize,
    /// This publisher's rate limit in msg/s (0: none).
    pub rate: u64,
    /// Confirm window (0: no confirms).
    pub confirm: u64,
    /// delivery-mode 2.
    pub persistent: bool,
}

/// Publishes until `stats.stop` (or `limit` messages, if not 0).
pub async fn publish(
    r: client::Reader,
    w: client::Writer,
    p: Publisher,
    stats: Arc<Stats>,
) -> Result<(), String> {
    publish_n(r, w, p, stats, 0).await
}

/// Publishes until `stats.stop` or until `limit` messages (0: no limit).
pub async fn publish_n(
    r: client::Reader,
    mut w: client::Writer,
    p: Publisher,
    stats: Arc<Stats>,
    limit: u64,
) -> Result<(), String> {
    // Confirms (and any close) arrive on the reader, counted by its own task.
    let confirms = ConfirmReader::spawn(r);
    let mut body = vec![0u8; p.size];
    let started = Instant::now();
    let mut sent: u64 = 0;
    let mut key = 0;
    const BATCH: u64 = 64;
    while !stats.stopped() && (limit == 0 || sent < limit) {
        if confirms.task.is_finished() {
            return match confirms.task.await {
                Ok(Err(e)) => Err(e),
                _ => Err("publisher connection closed".into()),
            };
        }
        let mut n = BATCH;
        if limit > 0 {
            n = n.min(limit - sent);
        }
        if p.rate > 0 {
            let due = started.elapsed().as_nanos() as u64 * p.rate / 1_000_000_000 + 1;
            if due <= sent {
                let next = started + Duration::from_nanos(sent * 1_000_000_000 / p.rate);
                tokio::time::sleep_until(next.into()).await;
                continue;
            }
            n = n.min(due - sent);
        }
        if p.confirm > 0 {
            confirms.wait_for_window(sent, n, p.confirm, &stats).await;
        }
        body[..8].copy_from_slice(&stats.now_ns().to_le_bytes());
        for _ in 0..n {
            w.publish(&p.exchange, &p.keys[key], p.persistent, &body);
            key += 1;
            if key == p.keys.len() {
                key = 0;
            }
        }
        w.flush().await?;
        sent += n;
        stats.published.fetch_add(n, Ordering::Relaxed);
    }
    if p.confirm > 0 {
        // Wait (briefly) for the last confirms, so a counted message was taken.
        confirms.wait_for_all(sent).await;
    }
    confirms.task.abort();
    drop(w);
    Ok(())
}

/// A publisher's reader task: it counts confirms, and ends with an error
/// on a nack (or when the connection closes).
struct ConfirmReader {
    /// Highest delivery tag confirmed.
    confirmed: Arc<AtomicU64>,
    /// Woken on each confirm.
    wake: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

impl ConfirmReader {
    fn spawn(mut r: client::Reader) -> ConfirmReader {
        let confirmed = Arc::new(AtomicU64::new(0));
        let wake = Arc::new(tokio::sync::Notify::new());
        let task = {
            let (confirmed, wake) = (confirmed.clone(), wake.clone());
            tokio::spawn(async move {
                loop {
                    match r.method().await? {
                        AMQPClass::Basic(basic::AMQPMethod::Ack(a)) => {
                            confirmed.fetch_max(a.delivery_tag, Ordering::Relaxed);
                            wake.notify_one();
                        }
                        AMQPClass::Basic(basic::AMQPMethod::Nack(n)) => {
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
        ConfirmReader {
            confirmed,
            wake,
            task,
        }
    }

    /// Waits until `n` more messages after `sent` fit in the confirm
    /// `window` (or the reader ends, or the run stops).
    async fn wait_for_window(&self, sent: u64, n: u64, window: u64, stats: &Stats) {
        while sent - self.confirmed.load(Ordering::Relaxed) + n > window.max(n) {
            if self.task.is_finished() || stats.stopped() {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), self.wake.notified()).await;
        }
    }

    /// Waits up to 5 s for all `sent` messages to be confirmed.
    async fn wait_for_all(&self, sent: u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.confirmed.load(Ordering::Relaxed) < sent
            && Instant::now() < deadline
            && !self.task.is_finished()
        {
            let _ = tokio::time::timeout(Duration::from_millis(50), self.wake.notified()).await;
        }
    }
}

/// Consumes until aborted, recording latency and acking every `multi_ack`.
pub async fn consume(
    mut r: client::Reader,
    mut w: client::Writer,
    l: Load,
    stats: Arc<Stats>,
) -> Result<(), String> {
    let mut n: u64 = 0;
    let mut local = stats::histogram();
    let mut every = l.multi_ack.max(1);
    if l.prefetch > 0 {
        every = every.min((l.prefetch as u64 / 2).max(1));
    }
    loop {
        let client::Incoming::Delivery { tag, body } = client::next_delivery(&mut r).await? else {
            continue;
        };
        if body.len() >= 8 {
            let mut ts = [0u8; 8];
            ts.copy_from_slice(&body[..8]);
            let _ = local.record(stats.now_ns().saturating_sub(u64::from_le_bytes(ts)).max(1));
        }
        n += 1;
        stats.consumed.fetch_add(1, Ordering::Relaxed);
        if !l.auto_ack && n.is_multiple_of(every) {
            w.ack(tag, true);
            w.flush().await?;
        }
        if n.is_multiple_of(128) {
            stats.latency.lock().add(&local).ok();
            local.reset();
        }
        if !r.has_buffered() && !local.is_empty() {
            stats.latency.lock().add(&local).ok();
            local.reset();
        }
    }
}
