//! warrenperf's `stream-fill-drain` (the same source file) linked with
//! rabbitmq-stream-client 0.3, so one client measures RabbitMQ 3.10's and
//! warren's stream protocol listeners. Usage: the options of
//! `warrenperf stream-fill-drain`.

use clap::Parser;

#[path = "../../../src/bin/warrenperf/stream.rs"]
mod stream;

mod stats {
    /// A process's resident memory in bytes (VmRSS).
    pub fn rss_bytes(pid: u32) -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let l = s.lines().find(|l| l.starts_with("VmRSS:"))?;
        Some(l.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
    }
}

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    options: stream::StreamFillDrain,
}

#[tokio::main]
async fn main() {
    if let Err(e) = stream::run(Cli::parse().options).await {
        eprintln!("stream-bench-compat: {e}");
        std::process::exit(1);
    }
}
