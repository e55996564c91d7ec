//! Counters shared by publishers and consumers, latency histograms, and
//! what /proc says about the broker's and warrenperf's own memory and CPU.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use hdrhistogram::Histogram;
use parking_lot::Mutex;

/// Live counters of one run.
pub struct Stats {
    /// Messages published (sent to the socket).
    pub published: AtomicU64,
    /// Messages delivered to consumers.
    pub consumed: AtomicU64,
    /// Latency samples (ns) since the last progress line.
    pub latency: Mutex<Histogram<u64>>,
    /// Tells every task to stop.
    pub stop: AtomicBool,
    /// The clock message timestamps count from.
    pub origin: Instant,
}

impl Stats {
    /// Fresh counters.
    pub fn new() -> Stats {
        Stats {
            published: AtomicU64::new(0),
            consumed: AtomicU64::new(0),
            latency: Mutex::new(histogram()),
            stop: AtomicBool::new(false),
            origin: Instant::now(),
        }
    }

    /// Nanoseconds since `origin` (what a message body carries).
    pub fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    /// Whether tasks should stop.
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// A latency histogram: 1 ns to 1 hour, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

/// Percentiles in microseconds, as JSON.
pub fn percentiles_us(h: &Histogram<u64>) -> serde_json::Value {
    let q = |x: f64| {
        if h.is_empty() {
            0.0
        } else {
            h.value_at_quantile(x) as f64 / 1000.0
        }
    };
    serde_json::json!({
        "p50": q(0.5), "p95": q(0.95), "p99": q(0.99), "p999": q(0.999),
        "max": h.max() as f64 / 1000.0, "samples": h.len(),
    })
}

/// A process's resident set size in bytes (VmRSS in /proc/PID/status).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// CPU seconds (user + system) a process has used; `None` pid: warrenperf.
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let s = std::fs::read_to_string(path).ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields overall, in clock ticks (100 Hz on Linux).
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// Measures a process's CPU use over an interval, in percent of one core.
pub struct CpuMeter {
    pid: Option<u32>,
    start: Option<f64>,
    at: Instant,
}

impl CpuMeter {
    /// Starts measuring `pid` (`None`: warrenperf itself).
    pub fn start(pid: Option<u32>) -> CpuMeter {
        CpuMeter {
            pid,
            start: cpu_seconds(pid),
            at: Instant::now(),
        }
    }

    /// CPU use since `start`, in percent of one core (200 = two cores busy).
    pub fn percent(&self) -> Option<f64> {
        let used = cpu_seconds(self.pid)? - self.start?;
        Some(100.0 * used / self.at.elapsed().as_secs_f64())
    }
}

/// Rounds to one decimal for JSON.
pub fn r1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}
