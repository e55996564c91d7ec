//! warrenperf against a real warren: every subcommand runs briefly with
//! `--json` and must print one valid JSON object with sane figures. These are
//! not benchmarks: the checks are loose (a loaded CI machine is slow), they
//! only catch a load generator that measures nothing or prints garbage.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

/// A warren for warrenperf to measure (the shared test harness).
struct Broker(common::Warren);

impl Broker {
    fn start() -> Broker {
        Broker(common::Warren::start())
    }

    fn uri(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.0.port)
    }

    fn pid(&self) -> String {
        self.0.pid().to_string()
    }
}

/// Runs warrenperf; returns (exit success, stdout, stderr). Killed after 60 s.
fn warrenperf(args: &[&str]) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_warrenperf"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn warrenperf");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("warrenperf {args:?} did not finish in 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.success(), out, err)
}

/// Runs a subcommand with --json against `b` and parses its one line of output.
fn run_json(b: &Broker, sub: &str, extra: &[&str]) -> Value {
    let uri = b.uri();
    let pid = b.pid();
    let mut args = vec![sub, "--uri", &uri, "--json", "--broker-pid", &pid];
    args.extend_from_slice(extra);
    let (ok, out, err) = warrenperf(&args);
    assert!(ok, "warrenperf {args:?} failed: {err}");
    assert_eq!(out.lines().count(), 1, "one JSON line expected, got: {out}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("invalid JSON ({e}): {out}"))
}

fn f(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing or not a number in {v}"))
}

#[test]
fn throughput_reports_rates_latency_and_cpu() {
    let b = Broker::start();
    let v = run_json(&b, "throughput", &["-d", "2", "-s", "32"]);
    assert_eq!(v["mode"], "throughput");
    assert_eq!(v["size"], 32);
    assert!(f(&v, "consume_rate") > 1000.0, "{v}");
    assert!(f(&v, "published") >= f(&v, "consumed"), "{v}");
    let lat = &v["latency_us"];
    assert!(f(lat, "p50") > 0.0 && f(lat, "p50") <= f(lat, "p99"), "{v}");
    assert!(f(lat, "p99") <= f(lat, "max"), "{v}");
    assert!(f(&v, "client_cpu_pct") >= 0.0, "{v}");
    assert!(f(&v, "broker_cpu_pct") >= 0.0, "{v}");
    assert!(f(&v, "broker_rss_bytes") > 1e6, "{v}");
}

#[test]
fn throughput_with_confirms_and_several_queues() {
    let b = Broker::start();
    let v = run_json(
        &b,
        "throughput",
        &[
            "-d",
            "2",
            "-x",
            "2",
            "-q",
            "2",
            "--confirm",
            "200",
            "--persistent",
            "--multi-ack",
            "10",
        ],
    );
    assert_eq!(v["queues"], 2);
    assert_eq!(v["consumers"], 2, "one consumer per queue by default");
    assert_eq!(v["confirm"], 200);
    assert!(f(&v, "consume_rate") > 1000.0, "{v}");
}

#[test]
fn throughput_through_a_direct_exchange_with_auto_ack() {
    let b = Broker::start();
    let v = run_json(
        &b,
        "throughput",
        &["-d", "1", "--exchange-type", "direct", "--auto-ack"],
    );
    assert_eq!(v["exchange_type"], "direct");
    assert_eq!(v["bindings"], 1);
    assert!(f(&v, "consumed") > 1000.0, "{v}");
}

#[test]
fn latency_holds_the_requested_rate() {
    let b = Broker::start();
    let v = run_json(&b, "latency", &["-d", "3", "--rate", "2000"]);
    assert_eq!(v["mode"], "latency");
    assert_eq!(v["target_rate"], 2000);
    assert_eq!(v["warmup_s"], 1);
    let rate = f(&v, "publish_rate");
    assert!((1600.0..2400.0).contains(&rate), "rate {rate}: {v}");
    let lat = &v["latency_us"];
    assert!(f(lat, "samples") > 1000.0, "{v}");
    assert!(f(lat, "p50") > 0.0 && f(lat, "p50") < 1_000_000.0, "{v}");
}

#[test]
fn fanout_delivers_each_message_to_every_queue() {
    let b = Broker::start();
    let v = run_json(&b, "fanout", &["-d", "2", "-q", "3", "--rate", "5000"]);
    assert_eq!(v["exchange_type"], "fanout");
    assert_eq!(v["queues"], 3);
    assert_eq!(v["consumers"], 3);
    let ratio = f(&v, "consumed") / f(&v, "published");
    assert!(
        // Up to a second of deliveries may still be in flight when the run stops.
        (1.5..=3.06).contains(&ratio),
        "deliveries/published {ratio}: {v}"
    );
}

#[test]
fn topic_routes_each_message_to_one_binding() {
    let b = Broker::start();
    let v = run_json(
        &b,
        "topic",
        &["-d", "2", "-b", "300", "-q", "3", "--rate", "5000"],
    );
    assert_eq!(v["exchange_type"], "topic");
    assert_eq!(v["bindings"], 300);
    // The two counters are read a moment apart, so allow a little slack.
    let ratio = f(&v, "consumed") / f(&v, "published");
    assert!(
        (0.8..=1.02).contains(&ratio),
        "routed/published {ratio}: {v}"
    );
}

#[test]
fn fill_drain_reports_rates_and_rss_per_message() {
    let b = Broker::start();
    let v = run_json(&b, "fill-drain", &["-m", "20000"]);
    assert_eq!(v["messages"], 20000);
    assert!(f(&v, "fill_rate") > 1000.0, "{v}");
    assert!(f(&v, "drain_rate") > 1000.0, "{v}");
    assert!(f(&v, "rss_full_bytes") >= f(&v, "rss_before_bytes"), "{v}");
    assert!(v["rss_per_message_bytes"].is_number(), "{v}");
}

#[test]
fn stream_fill_and_drain_over_the_stream_protocol_and_over_amqp() {
    let b = Broker::start();
    // The stream protocol: append with confirms, then 3 consumers from first.
    let port = b.0.stream_port.to_string();
    let pid = b.pid();
    let args = [
        "stream-fill-drain",
        "--port",
        &port,
        "-m",
        "20000",
        "-y",
        "3",
        "--json",
        "--broker-pid",
        &pid,
    ];
    let (ok, out, err) = warrenperf(&args);
    assert!(ok, "warrenperf {args:?} failed: {err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["delivered"], 60000, "{v}");
    assert!(f(&v, "fill_rate") > 1000.0, "{v}");
    assert!(f(&v, "drain_rate") > 1000.0, "{v}");
    // The same with warrenperf's own lean client: every record of every
    // chunk counted by 2 consumers, in frames of 100 with a small window.
    let args = [
        "stream-raw",
        "--port",
        &port,
        "-m",
        "20001",
        "-y",
        "2",
        "--window",
        "1000",
        "--json",
    ];
    let (ok, out, err) = warrenperf(&args);
    assert!(ok, "warrenperf {args:?} failed: {err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["delivered"], 40002, "{v}");
    assert!(f(&v, "fill_rate") > 1000.0, "{v}");
    // AMQP 0-9-1: 4 consumers at spread offsets read 20000 + 15000 + ...
    let v = run_json(
        &b,
        "fill-drain",
        &[
            "-m",
            "20000",
            "--queue-type",
            "stream",
            "-y",
            "4",
            "--stream-spread",
            "--confirm",
            "100",
        ],
    );
    assert_eq!(v["delivered"], 50000, "{v}");
    assert!(f(&v, "drain_rate") > 1000.0, "{v}");
}

#[test]
fn connections_and_queues_report_rss_per_item() {
    let b = Broker::start();
    let v = run_json(&b, "connections", &["-n", "50", "--hold", "0"]);
    assert_eq!(v["connections"], 50);
    assert!(v["rss_per_connection_bytes"].is_number(), "{v}");
    let v = run_json(&b, "queues", &["-n", "300", "--hold", "0"]);
    assert_eq!(v["queues"], 300);
    assert!(f(&v, "declare_rate") > 0.0, "{v}");
    assert!(v["rss_per_queue_bytes"].is_number(), "{v}");
}

#[test]
fn without_a_broker_it_fails_with_a_message() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let uri = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let (ok, _out, err) = warrenperf(&["throughput", "--uri", &uri, "-d", "1", "--json"]);
    assert!(!ok);
    assert!(err.contains("cannot connect"), "{err}");
}
