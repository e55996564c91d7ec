//! The warren broker.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing_subscriber::EnvFilter;
use warren::Broker;
use warren::ops::config::{Config, Overrides};

/// warren: an AMQP 0-9-1 message broker that speaks to RabbitMQ's clients.
///
/// Settings come from the config file (default: <data-dir>/warren.toml,
/// created on first run); flags win over environment variables, which win
/// over the file.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// Config file to read instead of <data-dir>/warren.toml.
    #[arg(long, env = "WARREN_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Addresses to listen on, comma-separated [default: 127.0.0.1,::1].
    #[arg(long, env = "WARREN_BIND", value_name = "ADDRS", value_parser = parse_bind)]
    bind: Option<BindList>,
    /// AMQP port [default: 5672].
    #[arg(long, env = "WARREN_PORT", value_name = "N")]
    port: Option<u16>,
    /// Management HTTP API and /metrics port [default: 15672].
    #[arg(long, env = "WARREN_HTTP_PORT", value_name = "N")]
    http_port: Option<u16>,
    /// TLS (amqps) port, used when [tls] cert and key are set [default: 5671].
    #[arg(long, env = "WARREN_TLS_PORT", value_name = "N")]
    tls_port: Option<u16>,
    /// RabbitMQ Stream protocol port; 0 disables it [default: 5552].
    #[arg(long, env = "WARREN_STREAM_PORT", value_name = "N")]
    stream_port: Option<u16>,
    /// RabbitMQ Stream protocol over TLS port, used when [tls] cert and key
    /// are set; 0 disables it [default: 5551].
    #[arg(long, env = "WARREN_STREAM_TLS_PORT", value_name = "N")]
    stream_tls_port: Option<u16>,
    /// Data directory [default: ~/.local/share/warren].
    #[arg(long, env = "WARREN_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Log level or filter: error, warn, info, debug, trace [default: info].
    #[arg(long, env = "WARREN_LOG", value_name = "LEVEL")]
    log_level: Option<String>,
}

/// One `--bind` value: a list of addresses (a newtype, so that clap takes
/// the whole list from one value instead of one address per value).
#[derive(Debug, Clone)]
struct BindList(Vec<IpAddr>);

fn parse_bind(text: &str) -> Result<BindList, String> {
    warren::ops::config::parse_bind_list(text).map(BindList)
}

fn main() -> ExitCode {
    // Everything warren creates (the data directory, definitions with
    // password hashes, message segments, the generated config) is for its
    // own user only: directories 0700, files 0600.
    // SAFETY: umask only sets the process's file mode mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
    let config = match Config::load(&overrides(Args::parse())) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("warren: {e}");
            return ExitCode::from(2);
        }
    };
    // A bad certificate or key stops warren here, naming the file.
    let tls = if config.tls.enabled() {
        match warren::session::tls::acceptor(&config.tls) {
            Ok(a) => Some(a),
            Err(e) => {
                eprintln!("warren: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        None
    };
    init_logging(&config.log_level);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("warren: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config, tls))
}

/// The command line's settings, to lay over the environment and the file.
fn overrides(args: Args) -> Overrides {
    Overrides {
        config: args.config,
        bind: args.bind.map(|b| b.0),
        port: args.port,
        http_port: args.http_port,
        tls_port: args.tls_port,
        stream_port: args.stream_port,
        stream_tls_port: args.stream_tls_port,
        data_dir: args.data_dir,
        log_level: args.log_level,
    }
}

/// Logs to stderr at the configured level (info if it does not parse),
/// coloured only on a terminal.
fn init_logging(log_level: &str) {
    // openraft reports every failed heartbeat to an unreachable peer; warren
    // logs what an operator needs (leader changes) itself. Name openraft in
    // the filter to see its own lines.
    let log_level = if log_level.contains("openraft") {
        log_level.to_owned()
    } else {
        format!("{log_level},openraft=off")
    };
    let filter =
        EnvFilter::try_new(&log_level).unwrap_or_else(|_| EnvFilter::new("info,openraft=off"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

/// Opens the broker, binds every listener and serves until a signal, then
/// shuts down.
async fn run(config: Config, tls: Option<TlsAcceptor>) -> ExitCode {
    let opened = if config.cluster.enabled() {
        warren::Broker::open_clustered(config, std::time::Duration::from_secs(10)).await
    } else {
        warren::Broker::open(config)
    };
    let broker = match opened {
        Ok(b) => b,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = load_definitions(&broker) {
        tracing::error!("{e}");
        return ExitCode::FAILURE;
    }
    warren::ops::alarms::spawn_monitor(
        broker.config.alarms.clone(),
        broker.config.data_dir.clone(),
        broker.alarms.clone(),
    );
    let listeners = match bind_amqp(&broker) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let stream_tls = tls.clone();
    let tls_listeners = match tls {
        Some(acceptor) => match bind_amqps(&broker) {
            Ok(ls) => Some((ls, acceptor)),
            Err(e) => {
                tracing::error!("TLS: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let http = match bind_http(&broker) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("HTTP: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokio::spawn(warren::admin::http::serve(broker.clone(), http));
    if broker.config.stream.port != 0 {
        match bind_stream(&broker) {
            Ok(ls) => {
                tokio::spawn(warren::streamproto::serve(broker.clone(), ls));
            }
            Err(e) => {
                tracing::error!("stream protocol: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if let Some(acceptor) = stream_tls
        && broker.config.stream.port != 0
        && broker.config.stream.tls_port != 0
    {
        match bind_stream_tls(&broker) {
            Ok(ls) => {
                tokio::spawn(warren::streamproto::serve_tls(broker.clone(), ls, acceptor));
            }
            Err(e) => {
                tracing::error!("stream protocol over TLS: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    serve_until_signal(&broker, listeners, tls_listeners).await;
    // The listeners are closed now: no new connections.
    tracing::info!("shutting down: closing client connections and syncing the message store");
    broker.shutdown(std::time::Duration::from_secs(5)).await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// Imports the config's `load_definitions` file, if any, logging each
/// problem; an unreadable or unparsable file is an error.
fn load_definitions(broker: &Broker) -> Result<(), String> {
    if let Some(path) = broker.config.load_definitions.clone() {
        let problems = warren::broker::definitions::load_file(broker, &path)?;
        for p in &problems {
            tracing::warn!("definitions {}: {}", path.display(), p.escape_debug());
        }
        tracing::info!("imported definitions from {}", path.display());
    }
    Ok(())
}

/// Binds the AMQP listeners and logs each address.
fn bind_amqp(broker: &Broker) -> Result<Vec<TcpListener>, String> {
    let listeners = warren::session::server::bind(broker)?;
    for l in &listeners {
        if let Ok(addr) = l.local_addr() {
            tracing::info!(
                "warren {} listening for AMQP on {addr} (data dir {})",
                env!("CARGO_PKG_VERSION"),
                broker.config.data_dir.display()
            );
        }
    }
    Ok(listeners)
}

/// Binds the AMQP-over-TLS listeners and logs each address.
fn bind_amqps(broker: &Broker) -> Result<Vec<TcpListener>, String> {
    let ls = warren::session::server::bind_tls(broker)?;
    for l in &ls {
        if let Ok(addr) = l.local_addr() {
            tracing::info!(
                "listening for AMQP over TLS on {addr}{}",
                if broker.config.tls.verify_peer {
                    " (client certificates verified; EXTERNAL offered)"
                } else {
                    ""
                }
            );
        }
    }
    Ok(ls)
}

/// Binds the stream protocol listeners (the AMQP addresses, `[stream]
/// port`) and logs each address.
fn bind_stream(broker: &Broker) -> Result<Vec<TcpListener>, String> {
    let ls = warren::session::server::bind_all(&broker.config.bind, broker.config.stream.port)?;
    for l in &ls {
        if let Ok(addr) = l.local_addr() {
            tracing::info!("listening for the RabbitMQ Stream protocol on {addr}");
        }
    }
    Ok(ls)
}

/// Binds the stream protocol's TLS listeners (the AMQP addresses, `[stream]
/// tls_port`) and logs each address.
fn bind_stream_tls(broker: &Broker) -> Result<Vec<TcpListener>, String> {
    let ls = warren::session::server::bind_all(&broker.config.bind, broker.config.stream.tls_port)?;
    for l in &ls {
        if let Ok(addr) = l.local_addr() {
            tracing::info!("listening for the RabbitMQ Stream protocol over TLS on {addr}");
        }
    }
    Ok(ls)
}

/// Binds the management API and metrics listeners (`http_bind`, else the
/// AMQP addresses) and logs each address.
fn bind_http(broker: &Broker) -> Result<Vec<TcpListener>, String> {
    let http = warren::session::server::bind_all(
        broker
            .config
            .http_bind
            .as_deref()
            .unwrap_or(&broker.config.bind),
        broker.config.http_port,
    )?;
    for l in &http {
        if let Ok(addr) = l.local_addr() {
            tracing::info!("management API and metrics on http://{addr}/");
        }
    }
    Ok(http)
}

/// Serves AMQP (and AMQPS, if bound) until a listener fails or SIGTERM or
/// SIGINT arrives; the listeners are dropped on return.
async fn serve_until_signal(
    broker: &Arc<Broker>,
    listeners: Vec<TcpListener>,
    tls_listeners: Option<(Vec<TcpListener>, TlsAcceptor)>,
) {
    let amqps = async {
        match tls_listeners {
            Some((l, acceptor)) => {
                warren::session::server::serve_tls(broker.clone(), l, acceptor).await
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = warren::session::server::serve(broker.clone(), listeners) => {}
        _ = amqps => {}
        _ = shutdown_signal() => {}
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => std::future::pending::<()>().await,
    }
}
