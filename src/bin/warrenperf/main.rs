//! warrenperf: load generator for any AMQP 0-9-1 broker (warren or RabbitMQ).
//!
//! Subcommands:
//! - `throughput`: P publishers and C consumers over Q queues, optionally
//!   through a direct, fanout or topic exchange; rates and latency.
//! - `latency`: the same at a fixed rate (default 10,000 msg/s), reporting
//!   end-to-end latency percentiles.
//! - `fanout`: one fanout exchange to Q queues, a consumer on each.
//! - `topic`: a topic exchange with B wildcard bindings over Q queues.
//! - `fill-drain`: publish M messages with no consumer, then drain them.
//! - `connections`: open N idle connections; broker RSS per connection.
//! - `queues`: declare N queues; broker RSS per queue.
//! - `stream-fill-drain`: append M messages to a stream over the RabbitMQ
//!   Stream protocol with confirms, then read them from `first`.
//!
//! Every subcommand prints a line a second (where it runs for a while) and a
//! summary; `--json` prints the summary as one JSON object instead. Message
//! bodies carry their send time, so consumers measure end-to-end latency.
//! Each publisher and consumer has its own connection; tokio spreads them
//! over `--threads` worker threads (default: one per core).

use clap::{Args, Parser, Subcommand};

mod client;
mod load;
mod memory;
mod stats;
mod stream;
mod stream_raw;

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
    /// Publishers and consumers over one or more queues: rates and latency.
    Throughput(LoadCmd),
    /// End-to-end latency at a fixed publish rate (default 10,000 msg/s).
    Latency(LoadCmd),
    /// A fanout exchange to --queues queues (default 10), a consumer on each.
    Fanout(LoadCmd),
    /// A topic exchange with --bindings wildcard bindings (default 1,000).
    Topic(LoadCmd),
    /// Publish --messages with no consumer, then drain; rates and broker RSS.
    FillDrain(memory::FillDrain),
    /// Open --count idle connections; broker RSS per connection.
    Connections(memory::Connections),
    /// Declare --count queues; broker RSS per queue.
    Queues(memory::Queues),
    /// Append --messages to a stream over the RabbitMQ Stream protocol
    /// (port 5552) with confirms, then read them from `first`.
    StreamFillDrain(stream::StreamFillDrain),
    /// stream-fill-drain with warrenperf's own lean stream-protocol client
    /// (no message decoding), so the broker is what is measured.
    StreamRaw(stream_raw::StreamRaw),
}

/// Options every subcommand takes.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Broker URI.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub uri: String,
    /// Print the summary as one JSON object (and no progress lines).
    #[arg(long)]
    pub json: bool,
    /// The broker's process id: report its RSS and CPU use from /proc.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Worker threads (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// A load subcommand's options.
#[derive(Args, Debug, Clone)]
pub struct LoadCmd {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    load: load::Load,
}

fn main() {
    let cli = Cli::parse();
    let threads = match &cli.command {
        Command::Throughput(c) | Command::Latency(c) | Command::Fanout(c) | Command::Topic(c) => {
            c.common.threads
        }
        Command::FillDrain(c) => c.common.threads,
        Command::Connections(c) => c.common.threads,
        Command::Queues(c) => c.common.threads,
        Command::StreamFillDrain(_) | Command::StreamRaw(_) => None,
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.enable_all().build().expect("tokio runtime");
    let result = rt.block_on(async move {
        match cli.command {
            Command::Throughput(c) => load::run(c.common, c.load, load::Mode::Throughput).await,
            Command::Latency(c) => load::run(c.common, c.load, load::Mode::Latency).await,
            Command::Fanout(c) => load::run(c.common, c.load, load::Mode::Fanout).await,
            Command::Topic(c) => load::run(c.common, c.load, load::Mode::Topic).await,
            Command::FillDrain(c) => memory::fill_drain(c).await,
            Command::Connections(c) => memory::connections(c).await,
            Command::Queues(c) => memory::queues(c).await,
            Command::StreamFillDrain(c) => stream::run(c).await,
            Command::StreamRaw(c) => stream_raw::run(c).await,
        }
    });
    // Tasks still parked on sockets must not hold the process open.
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    if let Err(e) = result {
        eprintln!("warrenperf: {e}");
        std::process::exit(1);
    }
}
