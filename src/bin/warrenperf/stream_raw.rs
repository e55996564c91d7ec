//! `stream-raw`: the stream fill-drain measurement with a lean client of
//! warrenperf's own that speaks the RabbitMQ Stream protocol directly on a
//! socket. It counts confirms and delivered records without decoding any
//! message, so that the broker, not the client, is what is measured (with
//! RabbitMQ's Rust client both brokers top out near a million messages a
//! second on two cores, the client's own limit). It needs no command newer
//! than RabbitMQ 3.9, so it runs against RabbitMQ 3.10 as well.
//!
//! It deletes and creates the stream, appends M messages (AMQP 1.0 data
//! sections of `size` bytes) in Publish frames of `batch` messages with at
//! most `window` unconfirmed, waits for every confirm, then C consumers on
//! their own connections each read the whole stream from `first` with
//! chunk credit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::stats;
use crate::stream::{Measured, StreamTarget};

/// `stream-raw` options.
#[derive(Args, Debug, Clone)]
pub struct StreamRaw {
    #[command(flatten)]
    pub target: StreamTarget,
    /// Messages to append.
    #[arg(long, short = 'm', default_value_t = 1_000_000)]
    pub messages: u64,
    /// Body size in bytes (at most 255).
    #[arg(long, short = 's', default_value_t = 16)]
    pub size: u8,
    /// Messages per Publish frame.
    #[arg(long, default_value_t = 100)]
    pub batch: u32,
    /// Most messages sent and not yet confirmed.
    #[arg(long, default_value_t = 20_000)]
    pub window: u64,
    /// Consumers, each reading the whole stream from `first`.
    #[arg(long, short = 'y', default_value_t = 1)]
    pub consumers: u64,
    /// Stream name.
    #[arg(long, default_value = "warrenperf-raw")]
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

const PUBLISH: u16 = 0x0002;
const PUBLISH_CONFIRM: u16 = 0x0003;
const PUBLISH_ERROR: u16 = 0x0004;
const DECLARE_PUBLISHER: u16 = 0x0001;
const SUBSCRIBE: u16 = 0x0007;
const DELIVER: u16 = 0x0008;
const CREDIT: u16 = 0x0009;
const CREATE: u16 = 0x000d;
const DELETE: u16 = 0x000e;
const PEER_PROPERTIES: u16 = 0x0011;
const SASL_HANDSHAKE: u16 = 0x0012;
const SASL_AUTHENTICATE: u16 = 0x0013;
const TUNE: u16 = 0x0014;
const OPEN: u16 = 0x0015;
const HEARTBEAT: u16 = 0x0017;

/// A frame being built: key, version, then fields.
struct Frame(Vec<u8>);

impl Frame {
    fn new(key: u16) -> Frame {
        let mut b = Vec::with_capacity(64);
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&key.to_be_bytes());
        b.extend_from_slice(&1u16.to_be_bytes());
        Frame(b)
    }
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn string(mut self, s: &str) -> Self {
        self.0.extend_from_slice(&(s.len() as u16).to_be_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(&(b.len() as u32).to_be_bytes());
        self.0.extend_from_slice(b);
        self
    }
    fn done(mut self) -> Vec<u8> {
        let n = (self.0.len() - 4) as u32;
        self.0[..4].copy_from_slice(&n.to_be_bytes());
        self.0
    }
}

/// One connection: the write half buffered, the read half framed.
struct Conn {
    r: BufReader<OwnedReadHalf>,
    w: BufWriter<OwnedWriteHalf>,
    corr: u32,
}

impl Conn {
    async fn open(f: &StreamRaw) -> Result<Conn, String> {
        let f = &f.target;
        let s = TcpStream::connect((f.host.as_str(), f.port))
            .await
            .map_err(|e| format!("connect {}:{}: {e}", f.host, f.port))?;
        let _ = s.set_nodelay(true);
        let (r, w) = s.into_split();
        let mut c = Conn {
            r: BufReader::with_capacity(1 << 20, r),
            w: BufWriter::with_capacity(1 << 20, w),
            corr: 0,
        };
        let corr = c.next_corr();
        c.call(Frame::new(PEER_PROPERTIES).u32(corr).u32(0).done())
            .await?;
        let corr = c.next_corr();
        c.call(Frame::new(SASL_HANDSHAKE).u32(corr).done()).await?;
        let mut plain = vec![0u8];
        plain.extend_from_slice(f.user.as_bytes());
        plain.push(0);
        plain.extend_from_slice(f.password.as_bytes());
        let corr = c.next_corr();
        let auth = Frame::new(SASL_AUTHENTICATE)
            .u32(corr)
            .string("PLAIN")
            .bytes(&plain);
        c.call(auth.done()).await?;
        // Tune: take the server's frame max, no heartbeats.
        let tune = c.read_frame().await?;
        let (_, body) = split(&tune)?;
        let frame_max = be32(body, 0)?;
        c.send(&Frame::new(TUNE).u32(frame_max).u32(0).done())
            .await?;
        let corr = c.next_corr();
        c.call(Frame::new(OPEN).u32(corr).string(&f.vhost).done())
            .await?;
        Ok(c)
    }

    fn next_corr(&mut self) -> u32 {
        self.corr += 1;
        self.corr
    }

    async fn send(&mut self, frame: &[u8]) -> Result<(), String> {
        self.w.write_all(frame).await.map_err(|e| e.to_string())?;
        self.w.flush().await.map_err(|e| e.to_string())
    }

    async fn read_frame(&mut self) -> Result<Vec<u8>, String> {
        let n = self.r.read_u32().await.map_err(|e| e.to_string())? as usize;
        let mut b = vec![0u8; n];
        self.r.read_exact(&mut b).await.map_err(|e| e.to_string())?;
        Ok(b)
    }

    /// Sends a request and waits for its response (skipping heartbeats),
    /// failing unless its code is OK. Returns the response's fields after
    /// the code.
    async fn call(&mut self, frame: Vec<u8>) -> Result<Vec<u8>, String> {
        let key = u16::from_be_bytes([frame[4], frame[5]]);
        self.send(&frame).await?;
        loop {
            let resp = self.read_frame().await?;
            let (k, body) = split(&resp)?;
            if k == HEARTBEAT {
                continue;
            }
            if k != key | 0x8000 {
                return Err(format!("expected the response to {key:#06x}, got {k:#06x}"));
            }
            let code = be16(body, 4)?;
            if code != 1 {
                return Err(format!("command {key:#06x} answered with code {code:#06x}"));
            }
            return Ok(body[6..].to_vec());
        }
    }
}

fn split(frame: &[u8]) -> Result<(u16, &[u8]), String> {
    let k = be16(frame, 0)?;
    Ok((k, frame.get(4..).unwrap_or_default()))
}

fn be16(b: &[u8], at: usize) -> Result<u16, String> {
    b.get(at..at + 2)
        .map(|s| u16::from_be_bytes([s[0], s[1]]))
        .ok_or_else(|| "short frame".to_owned())
}

fn be32(b: &[u8], at: usize) -> Result<u32, String> {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| "short frame".to_owned())
}

/// Runs the measurement and prints its summary.
pub async fn run(f: StreamRaw) -> Result<(), String> {
    let mut admin = Conn::open(&f).await?;
    let corr = admin.next_corr();
    let _ = admin
        .call(Frame::new(DELETE).u32(corr).string(&f.stream).done())
        .await;
    let corr = admin.next_corr();
    admin
        .call(Frame::new(CREATE).u32(corr).string(&f.stream).u32(0).done())
        .await?;
    let rss = || f.broker_pid.and_then(stats::rss_bytes);
    let rss_before = rss();
    let fill_s = fill(&f).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_full = rss();
    let drain_s = drain(&f).await?;
    let corr = admin.next_corr();
    admin
        .call(Frame::new(DELETE).u32(corr).string(&f.stream).done())
        .await?;
    let m = Measured {
        mode: "stream-raw",
        messages: f.messages,
        size: u64::from(f.size),
        consumers: f.consumers.max(1),
        fill_s,
        drain_s,
        rss_before,
        rss_full,
    };
    m.report(
        serde_json::json!({"batch": f.batch, "window": f.window}),
        f.json,
    );
    Ok(())
}

/// Appends every message with at most `window` unconfirmed; returns the
/// seconds from the first send to the last confirm.
async fn fill(f: &StreamRaw) -> Result<f64, String> {
    let mut c = Conn::open(f).await?;
    let corr = c.next_corr();
    let declare = Frame::new(DECLARE_PUBLISHER)
        .u32(corr)
        .u8(0)
        .string("")
        .string(&f.stream);
    c.call(declare.done()).await?;
    let Conn { mut r, mut w, .. } = c;
    // An AMQP 1.0 message: one data section of `size` bytes.
    let mut msg = vec![0x00, 0x53, 0x75, 0xa0, f.size];
    msg.extend(std::iter::repeat_n(7u8, f.size as usize));
    let confirmed = Arc::new(AtomicU64::new(0));
    let total = f.messages;
    let counter = confirmed.clone();
    let reader = tokio::spawn(async move {
        while counter.load(Ordering::Relaxed) < total {
            let n = r.read_u32().await.map_err(|e| e.to_string())? as usize;
            let mut b = vec![0u8; n];
            r.read_exact(&mut b).await.map_err(|e| e.to_string())?;
            match be16(&b, 0)? {
                PUBLISH_CONFIRM => {
                    let ids = be32(&b, 5)?;
                    counter.fetch_add(u64::from(ids), Ordering::Relaxed);
                }
                PUBLISH_ERROR => return Err("a publish was refused".to_owned()),
                _ => {}
            }
        }
        Ok::<(), String>(())
    });
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(f.timeout);
    let mut sent = 0u64;
    let mut frame = Vec::new();
    while sent < total {
        while sent - confirmed.load(Ordering::Relaxed) >= f.window {
            if Instant::now() > deadline || reader.is_finished() {
                return Err(format!(
                    "{} confirmed after {} s",
                    confirmed.load(Ordering::Relaxed),
                    f.timeout
                ));
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let n = (total - sent).min(u64::from(f.batch)) as u32;
        frame.clear();
        frame.extend_from_slice(&[0; 4]);
        frame.extend_from_slice(&PUBLISH.to_be_bytes());
        frame.extend_from_slice(&1u16.to_be_bytes());
        frame.push(0);
        frame.extend_from_slice(&n.to_be_bytes());
        for i in 0..u64::from(n) {
            frame.extend_from_slice(&(sent + i + 1).to_be_bytes());
            frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
            frame.extend_from_slice(&msg);
        }
        let len = (frame.len() - 4) as u32;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        w.write_all(&frame).await.map_err(|e| e.to_string())?;
        sent += u64::from(n);
        if sent - confirmed.load(Ordering::Relaxed) >= f.window / 2 || sent == total {
            w.flush().await.map_err(|e| e.to_string())?;
        }
    }
    w.flush().await.map_err(|e| e.to_string())?;
    let left = deadline.saturating_duration_since(Instant::now());
    tokio::time::timeout(left, reader)
        .await
        .map_err(|_| {
            format!(
                "{} of {total} confirmed after {} s",
                confirmed.load(Ordering::Relaxed),
                f.timeout
            )
        })?
        .map_err(|e| e.to_string())??;
    Ok(t0.elapsed().as_secs_f64())
}

/// Each consumer reads the whole stream from `first` on its own
/// connection; returns the seconds until the last has every record.
async fn drain(f: &StreamRaw) -> Result<f64, String> {
    let mut conns = Vec::new();
    for _ in 0..f.consumers.max(1) {
        conns.push(Conn::open(f).await?);
    }
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for mut c in conns {
        let (stream, total) = (f.stream.clone(), f.messages);
        tasks.push(tokio::spawn(async move {
            let corr = c.next_corr();
            let sub = Frame::new(SUBSCRIBE)
                .u32(corr)
                .u8(0)
                .string(&stream)
                .u16(1)
                .u16(10)
                .u32(0);
            c.call(sub.done()).await?;
            let credit = Frame::new(CREDIT).u8(0).u16(1).done();
            let mut got = 0u64;
            while got < total {
                let b = c.read_frame().await?;
                if be16(&b, 0)? != DELIVER {
                    continue;
                }
                // subscription id, then the chunk header: magic and
                // version, chunk type, entries (u16), records (u32).
                got += u64::from(be32(&b, 9)?);
                c.w.write_all(&credit).await.map_err(|e| e.to_string())?;
                if c.r.buffer().is_empty() {
                    c.w.flush().await.map_err(|e| e.to_string())?;
                }
            }
            Ok::<(), String>(())
        }));
    }
    let limit = Duration::from_secs(f.timeout);
    for t in tasks {
        tokio::time::timeout(limit, t)
            .await
            .map_err(|_| format!("the drain took over {} s", f.timeout))?
            .map_err(|e| e.to_string())??;
    }
    Ok(t0.elapsed().as_secs_f64())
}
