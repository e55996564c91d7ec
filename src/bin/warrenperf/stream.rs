//! `stream-fill-drain`: the fill-drain measurement over the RabbitMQ Stream
//! protocol (port 5552), with RabbitMQ's Rust stream client, so warren's
//! and RabbitMQ's stream listeners are measured by the same client.
//!
//! It deletes and creates the stream, appends M messages with confirms
//! (the client batches them), waits for every confirm, then has C consumers
//! each read the whole stream from `first`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use futures_lite::StreamExt;
use rabbitmq_stream_client::Environment;
use rabbitmq_stream_client::types::{Message, OffsetSpecification};

use crate::stats;

/// Where, and as whom, a stream-protocol measurement connects.
#[derive(Args, Debug, Clone)]
pub struct StreamTarget {
    /// Stream protocol host.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Stream protocol port.
    #[arg(long, default_value_t = 5552)]
    pub port: u16,
    /// User name.
    #[arg(long, default_value = "guest")]
    pub user: String,
    /// Password.
    #[arg(long, default_value = "guest")]
    pub password: String,
    /// Virtual host.
    #[arg(long, default_value = "/")]
    pub vhost: String,
}

/// `stream-fill-drain` options.
#[derive(Args, Debug, Clone)]
pub struct StreamFillDrain {
    #[command(flatten)]
    pub target: StreamTarget,
    /// Messages to append.
    #[arg(long, short = 'm', default_value_t = 1_000_000)]
    pub messages: u64,
    /// Body size in bytes.
    #[arg(long, short = 's', default_value_t = 16)]
    pub size: usize,
    /// Messages handed to the client per batch_send.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Consumers, each reading the whole stream from `first`.
    #[arg(long, short = 'y', default_value_t = 1)]
    pub consumers: u64,
    /// Stream name.
    #[arg(long, default_value = "warrenperf-stream")]
    pub stream: String,
    /// Give up after this many seconds per phase.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// The broker's process id: report its RSS.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Runs the measurement and prints its summary.
pub async fn run(f: StreamFillDrain) -> Result<(), String> {
    let t = &f.target;
    let env = Environment::builder()
        .host(&t.host)
        .port(t.port)
        .username(&t.user)
        .password(&t.password)
        .virtual_host(&t.vhost)
        .build()
        .await
        .map_err(err)?;
    let _ = env.delete_stream(&f.stream).await;
    env.stream_creator().create(&f.stream).await.map_err(err)?;
    let rss = || f.broker_pid.and_then(stats::rss_bytes);
    let rss_before = rss();
    let fill_s = fill(&f, &env).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_full = rss();
    let drain_s = drain(&f, &env).await?;
    env.delete_stream(&f.stream).await.map_err(err)?;
    let m = Measured {
        mode: "stream-fill-drain",
        messages: f.messages,
        size: f.size as u64,
        consumers: f.consumers.max(1),
        fill_s,
        drain_s,
        rss_before,
        rss_full,
    };
    m.report(serde_json::json!({}), f.json);
    Ok(())
}

/// What a stream fill-drain measured, and how it is reported.
pub struct Measured {
    pub mode: &'static str,
    pub messages: u64,
    pub size: u64,
    pub consumers: u64,
    pub fill_s: f64,
    pub drain_s: f64,
    pub rss_before: Option<u64>,
    pub rss_full: Option<u64>,
}

impl Measured {
    /// Prints the summary: one JSON object (with `extra`'s fields) or a line.
    pub fn report(&self, extra: serde_json::Value, json: bool) {
        let fill_rate = self.messages as f64 / self.fill_s;
        let delivered = self.messages * self.consumers;
        let drain_rate = delivered as f64 / self.drain_s;
        let mut summary = serde_json::json!({
            "mode": self.mode,
            "messages": self.messages,
            "size": self.size,
            "consumers": self.consumers,
            "fill_s": self.fill_s,
            "fill_rate": fill_rate,
            "drain_s": self.drain_s,
            "drain_rate": drain_rate,
            "delivered": delivered,
            "rss_before_bytes": self.rss_before,
            "rss_full_bytes": self.rss_full,
        });
        if let (Some(s), serde_json::Value::Object(e)) = (summary.as_object_mut(), extra) {
            s.extend(e);
        }
        if json {
            println!("{summary}");
        } else {
            println!(
                "summary: append {fill_rate:.0} msg/s confirmed, consume {drain_rate:.0} msg/s"
            );
        }
    }
}

/// Appends the messages in batches and waits for every confirm; returns
/// the seconds from the first send to the last confirm.
async fn fill(f: &StreamFillDrain, env: &Environment) -> Result<f64, String> {
    let producer = env
        .producer()
        .batch_size(f.batch)
        .build(&f.stream)
        .await
        .map_err(err)?;
    let confirmed = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let body = vec![7u8; f.size];
    let t0 = Instant::now();
    let mut sent = 0u64;
    while sent < f.messages {
        let n = (f.messages - sent).min(f.batch as u64);
        let batch = (0..n)
            .map(|_| Message::builder().body(body.clone()).build())
            .collect();
        let (c, x) = (confirmed.clone(), failed.clone());
        producer
            .batch_send(batch, move |r| {
                let ok = matches!(&r, Ok(s) if s.confirmed());
                let counter = if ok { c.clone() } else { x.clone() };
                async move {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
            .await
            .map_err(err)?;
        sent += n;
    }
    let deadline = t0 + Duration::from_secs(f.timeout);
    while confirmed.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < f.messages {
        if Instant::now() > deadline {
            return Err(format!(
                "{} of {} confirmed after {} s",
                confirmed.load(Ordering::Relaxed),
                f.messages,
                f.timeout
            ));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let fill_s = t0.elapsed().as_secs_f64();
    let _ = producer.close().await;
    match failed.load(Ordering::Relaxed) {
        0 => Ok(fill_s),
        n => Err(format!("{n} messages not confirmed")),
    }
}

/// Each consumer reads the whole stream from `first`; returns the seconds
/// until the last of them has read every message.
async fn drain(f: &StreamFillDrain, env: &Environment) -> Result<f64, String> {
    let mut consumers = Vec::new();
    for _ in 0..f.consumers.max(1) {
        let c = env
            .consumer()
            .offset(OffsetSpecification::First)
            .build(&f.stream)
            .await
            .map_err(err)?;
        consumers.push(c);
    }
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for mut c in consumers {
        let n = f.messages;
        tasks.push(tokio::spawn(async move {
            let mut got = 0u64;
            while got < n {
                match c.next().await {
                    Some(Ok(_)) => got += 1,
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Err(format!("the subscription ended after {got}")),
                }
            }
            let _ = c.handle().close().await;
            Ok(())
        }));
    }
    let limit = Duration::from_secs(f.timeout);
    for t in tasks {
        tokio::time::timeout(limit, t)
            .await
            .map_err(|_| format!("the drain took over {} s", f.timeout))?
            .map_err(err)??;
    }
    Ok(t0.elapsed().as_secs_f64())
}
