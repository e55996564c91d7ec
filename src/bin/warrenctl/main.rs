//! warrenctl: administer a warren broker (or a RabbitMQ with the management
//! plugin) through its management HTTP API.
//!
//! Connection settings come from flags, then the environment
//! (`WARREN_URL`, `WARREN_USER`, `WARREN_PASSWORD`, `WARREN_VHOST`), then a
//! config file (`--config`, `WARRENCTL_CONFIG`, or
//! `~/.config/warren/warrenctl.toml`), then the defaults that work against a
//! local warren: `http://127.0.0.1:15672`, guest/guest, vhost `/`.
//!
//! Exit status: 0 success, 1 the request or check failed, 2 bad usage,
//! 3 warren could not be reached. Failures print one line on stderr.

mod client;
mod commands;
mod table;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use client::{Client, Failure};

/// Administer warren through its management HTTP API.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
pub struct Cli {
    /// Base URL of the HTTP API [default: http://127.0.0.1:15672].
    #[arg(long, env = "WARREN_URL", global = true)]
    url: Option<String>,
    /// User name [default: guest].
    #[arg(long, short = 'u', env = "WARREN_USER", global = true)]
    user: Option<String>,
    /// Password [default: guest].
    #[arg(long, env = "WARREN_PASSWORD", global = true, hide_env_values = true)]
    password: Option<String>,
    /// Virtual host the command works in [default: /].
    #[arg(long, short = 'p', env = "WARREN_VHOST", global = true)]
    vhost: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table", global = true)]
    format: Format,
    /// Config file (TOML with url, user, password, vhost).
    #[arg(long, env = "WARRENCTL_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// The API's JSON, for scripts.
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Broker overview: version, listeners, totals, rates, memory, disk, alarms.
    Status,
    /// Run health checks; exit 1 if one fails.
    Health {
        /// Which check.
        #[arg(value_enum, default_value = "all")]
        check: HealthCheck,
    },
    /// List objects.
    List {
        /// What to list.
        #[arg(value_enum)]
        what: ListWhat,
        /// Across all vhosts (exchanges, queues, bindings, policies, consumers, channels, connections).
        #[arg(long, short = 'a')]
        all_vhosts: bool,
    },
    /// Declare (create or update) an object.
    Declare {
        #[command(subcommand)]
        what: commands::Declare,
    },
    /// Delete an object.
    Delete {
        #[command(subcommand)]
        what: commands::Delete,
    },
    /// Close a client connection.
    Close {
        /// The connection's name (as listed: "127.0.0.1:50412 -> 127.0.0.1:5672").
        name: String,
        /// Reason sent to the client.
        #[arg(long, default_value = "Closed via warrenctl")]
        reason: String,
    },
    /// The cluster this node is part of.
    Cluster {
        #[command(subcommand)]
        what: commands::Cluster,
    },
    /// Replicas of quorum queues in a cluster (RabbitMQ's rabbitmq-queues).
    Quorum {
        #[command(subcommand)]
        what: commands::Quorum,
    },
    /// Drop every ready message of a queue.
    Purge {
        /// Queue name.
        queue: String,
    },
    /// Publish a message (for debugging).
    Publish {
        /// Exchange ("" or omitted: the default exchange).
        #[arg(long, short = 'e', default_value = "")]
        exchange: String,
        /// Routing key.
        #[arg(long, short = 'k', default_value = "")]
        routing_key: String,
        /// Message body; read from standard input when omitted.
        #[arg(long)]
        payload: Option<String>,
        /// A message property, e.g. content_type=text/plain, delivery_mode=2.
        #[arg(long = "property", value_name = "KEY=VALUE")]
        properties: Vec<String>,
        /// A header, e.g. x-trace=on.
        #[arg(long = "header", value_name = "KEY=VALUE")]
        headers: Vec<String>,
    },
    /// Fetch messages from a queue (for debugging).
    Get {
        /// Queue name.
        queue: String,
        /// How many messages.
        #[arg(long, short = 'c', default_value_t = 1)]
        count: u32,
        /// Put them back (as redelivered); false removes them.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        requeue: bool,
    },
    /// Export definitions (RabbitMQ's JSON format) to FILE or standard output.
    Export {
        /// Output file ("-" or omitted: standard output).
        file: Option<PathBuf>,
        /// Only the given vhost's definitions (--vhost).
        #[arg(long)]
        vhost_only: bool,
    },
    /// Import definitions (RabbitMQ's JSON format) from FILE or standard input.
    Import {
        /// Input file ("-": standard input).
        file: PathBuf,
        /// Into the given vhost only (--vhost).
        #[arg(long)]
        vhost_only: bool,
    },
}

/// Health checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HealthCheck {
    /// All of the below.
    All,
    /// No resource alarm in effect.
    Alarms,
    /// The AMQP listener is up.
    Listener,
    /// Every vhost is running.
    Vhosts,
}

/// Listable objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListWhat {
    Exchanges,
    Queues,
    Bindings,
    Vhosts,
    Users,
    Permissions,
    Policies,
    Connections,
    Channels,
    Consumers,
}

/// Settings after flags, environment, file and defaults.
pub struct Settings {
    pub client: Client,
    pub vhost: String,
    pub format: Format,
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    url: Option<String>,
    user: Option<String>,
    password: Option<String>,
    vhost: Option<String>,
}

fn file_config(cli: &Cli) -> Result<FileConfig, Failure> {
    let path = match &cli.config {
        Some(p) => p.clone(),
        None => {
            let base = std::env::var_os("XDG_CONFIG_HOME")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
            match base.map(|b| b.join("warren/warrenctl.toml")) {
                Some(p) if p.exists() => p,
                _ => return Ok(FileConfig::default()),
            }
        }
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Failure::new(format!("cannot read {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| {
        Failure::new(format!(
            "invalid config file {}: {}",
            path.display(),
            e.message()
        ))
    })
}

fn run(cli: Cli) -> Result<(), Failure> {
    let f = file_config(&cli)?;
    let url = cli
        .url
        .clone()
        .or(f.url)
        .unwrap_or_else(|| "http://127.0.0.1:15672".into());
    let user = cli
        .user
        .clone()
        .or(f.user)
        .unwrap_or_else(|| "guest".into());
    let password = cli
        .password
        .clone()
        .or(f.password)
        .unwrap_or_else(|| "guest".into());
    let s = Settings {
        client: Client::new(&url, &user, &password),
        vhost: cli.vhost.clone().or(f.vhost).unwrap_or_else(|| "/".into()),
        format: cli.format,
    };
    commands::run(&s, cli.command)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            let reason = f.reason.replace('\n', " ");
            eprintln!("warrenctl: {reason}");
            ExitCode::from(f.code)
        }
    }
}
