//! Configuration: defaults, the TOML file, and the overrides the command line
//! and environment give (flags win over env, env over the file).
//!
//! `config/warren.toml` is the documented default; it is embedded in the
//! binary and written to the data directory on first run when no config file
//! is named, so a user has one file to edit.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The default configuration file, every key commented.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../config/warren.toml");

/// The broker's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Addresses the AMQP listeners bind to (one listener each). The
    /// default is both loopbacks, 127.0.0.1 and ::1, so clients that
    /// resolve `localhost` to either find warren.
    #[serde(deserialize_with = "one_or_many")]
    pub bind: Vec<IpAddr>,
    /// AMQP port.
    pub port: u16,
    /// Management HTTP API (and /metrics) port.
    pub http_port: u16,
    /// Addresses the HTTP listener binds to (default: the same as `bind`).
    #[serde(default, deserialize_with = "one_or_many_opt")]
    pub http_bind: Option<Vec<IpAddr>>,
    /// Data directory (definitions, messages, the generated config).
    pub data_dir: PathBuf,
    /// Log filter (tracing's env-filter syntax: "info", "warren=debug", ...).
    pub log_level: String,
    /// A definitions file (RabbitMQ's JSON format) imported at start.
    pub load_definitions: Option<PathBuf>,
    /// Protocol limits and timers.
    pub amqp: AmqpConfig,
    /// The user and vhost that exist from the start.
    pub defaults: Defaults,
    /// Authentication rules.
    pub auth: AuthConfig,
    /// Message store.
    pub storage: StorageConfig,
    /// Memory and disk alarms.
    pub alarms: AlarmsConfig,
    /// Resource limits (0 = unlimited).
    pub limits: LimitsConfig,
    /// The TLS ("amqps") listener.
    pub tls: TlsConfig,
    /// Limits of the management HTTP API's connections and requests.
    pub http: HttpConfig,
    /// The RabbitMQ Stream protocol listener.
    pub stream: StreamConfig,
    /// Clustering (off unless `node_id` is set).
    pub cluster: ClusterConfig,
}

/// A cluster of warren nodes (see docs/operations.md, "Clustering").
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's id in `nodes` (0: not clustered).
    pub node_id: u64,
    /// Every node of the cluster, this one included, as
    /// "ID@HOST:PORT" (the node's inter-node address; it listens there).
    pub nodes: Vec<String>,
    /// The secret every node shares (proved on each inter-node connection).
    pub secret: Option<String>,
    /// A file holding the secret instead (its first line).
    pub secret_file: Option<PathBuf>,
    /// Inter-node connections use TLS with `[tls]`'s certificate and key,
    /// each side verifying the other's certificate against `[tls] ca`.
    pub tls: bool,
}

impl ClusterConfig {
    /// Whether this node is part of a cluster.
    pub fn enabled(&self) -> bool {
        self.node_id != 0
    }

    /// The nodes, by id, with their inter-node addresses.
    pub fn members(&self) -> Result<Vec<(u64, String)>, String> {
        let mut out: Vec<(u64, String)> = Vec::new();
        for n in &self.nodes {
            let (id, addr) = n
                .split_once('@')
                .ok_or_else(|| format!("[cluster] nodes: '{n}' is not of the form ID@HOST:PORT"))?;
            let id: u64 = id.trim().parse().ok().filter(|i| *i > 0).ok_or_else(|| {
                format!("[cluster] nodes: '{id}' in '{n}' is not a node id (1, 2, ...)")
            })?;
            if addr
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
            {
                return Err(format!("[cluster] nodes: '{addr}' in '{n}' has no port"));
            }
            if out.iter().any(|(i, _)| *i == id) {
                return Err(format!("[cluster] nodes: node id {id} is listed twice"));
            }
            out.push((id, addr.trim().to_owned()));
        }
        Ok(out)
    }

    /// Where this node listens for its peers: its own address in `nodes`.
    pub fn listen_addr(&self, own: &str) -> Result<String, String> {
        Ok(own.to_owned())
    }

    /// The shared secret.
    pub fn secret(&self) -> Result<String, String> {
        if let Some(s) = &self.secret {
            return Ok(s.clone());
        }
        if let Some(p) = &self.secret_file {
            let text = std::fs::read_to_string(p)
                .map_err(|e| format!("[cluster] secret_file {}: {e}", p.display()))?;
            return Ok(text.lines().next().unwrap_or_default().to_owned());
        }
        Err("[cluster] needs a secret (secret or secret_file) shared by every node".into())
    }
}

/// The RabbitMQ Stream protocol listener (RabbitMQ's `stream.*` settings).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamConfig {
    /// Port (RabbitMQ's default: 5552); 0 disables the listener. It binds
    /// to the same addresses as AMQP (`bind`).
    pub port: u16,
    /// Port of the stream protocol over TLS (RabbitMQ's default: 5551),
    /// on when `[tls]` has a certificate and key; 0 disables it.
    pub tls_port: u16,
    /// Host name the Metadata command gives clients for this node (the
    /// host they connect to for a stream's leader). Default: the first
    /// `bind` address, or the machine's host name when that address is
    /// a wildcard.
    pub advertised_host: Option<String>,
    /// Port the Metadata command gives clients (default: `port`).
    pub advertised_port: Option<u16>,
    /// Port the Metadata command gives clients connected over TLS
    /// (default: `tls_port`).
    pub advertised_tls_port: Option<u16>,
    /// Largest frame the server proposes in Tune, in bytes (0: no limit).
    pub frame_max: u32,
    /// Heartbeat interval the server proposes in Tune, in seconds (0:
    /// none).
    pub heartbeat: u32,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            port: 5552,
            tls_port: 5551,
            advertised_host: None,
            advertised_port: None,
            advertised_tls_port: None,
            frame_max: 1_048_576,
            heartbeat: 60,
        }
    }
}

/// Limits of the management HTTP API (RabbitMQ's `management.http.*` and
/// `management.tcp.*`): what one client may hold open or send.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Largest request body in bytes; beyond it, 413 before the body is
    /// read. The timeouts below are in seconds, 0 for none.
    pub max_body_size: usize,
    /// Seconds a connection may go without sending a complete request
    /// header: covers idle keep-alive connections and slow headers.
    pub idle_timeout: u64,
    /// Seconds a client has to send a whole request body.
    pub body_timeout: u64,
    /// Seconds a response write may stall (a client that does not read).
    pub send_timeout: u64,
    /// Open HTTP connections; beyond it, new ones wait in the listen queue
    /// (0: unlimited).
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_body_size: 20 * 1024 * 1024,
            idle_timeout: 60,
            body_timeout: 60,
            send_timeout: 60,
            max_connections: 256,
        }
    }
}

/// The TLS listener (RabbitMQ's `listeners.ssl` and `ssl_options`). It is
/// enabled when both `cert` and `key` are set.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Port of the TLS listener (RabbitMQ's default: 5671).
    pub port: u16,
    /// The server's certificate chain (PEM, leaf first).
    pub cert: Option<PathBuf>,
    /// The server's private key (PEM: PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates are verified against.
    pub ca: Option<PathBuf>,
    /// Ask clients for a certificate and verify it against `ca`.
    pub verify_peer: bool,
    /// With `verify_peer`, refuse clients that present no certificate.
    pub fail_if_no_peer_cert: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            port: 5671,
            cert: None,
            key: None,
            ca: None,
            verify_peer: false,
            fail_if_no_peer_cert: false,
        }
    }
}

impl TlsConfig {
    /// Whether the TLS listener is configured.
    pub fn enabled(&self) -> bool {
        self.cert.is_some() && self.key.is_some()
    }
}

/// Resource limits; 0 means unlimited. Refusals use RabbitMQ's codes. The
/// defaults protect a broker nobody configured (see config/warren.toml).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Open connections on this node (connection.open beyond: 530).
    pub max_connections: u32,
    /// Open connections per vhost (connection.open beyond: 530).
    pub max_connections_per_vhost: u32,
    /// Queues per vhost (queue.declare beyond: 406).
    pub max_queues_per_vhost: u32,
    /// Consumers per channel (basic.consume beyond: 530).
    pub max_consumers_per_channel: u32,
    /// Consumers per queue (basic.consume beyond: channel error 406).
    pub max_consumers_per_queue: u32,
    /// Milliseconds a delivery may stay unacked before its channel is
    /// closed with 406 and the message requeued (RabbitMQ's
    /// consumer_timeout, 30 minutes); 0 disables.
    pub consumer_timeout: u64,
    /// Bytes of messages (published, and delivered then settled) one
    /// transaction may hold until commit (beyond: channel error 406).
    pub max_tx_bytes: u64,
    /// Connections accepted but not yet through connection.open (counted
    /// from accept; beyond it, new sockets are closed at once).
    pub max_handshaking_connections: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 0,
            max_connections_per_vhost: 0,
            max_queues_per_vhost: 0,
            max_consumers_per_channel: 10_000,
            max_consumers_per_queue: 50_000,
            consumer_timeout: 1_800_000,
            max_tx_bytes: 64 * 1024 * 1024,
            max_handshaking_connections: 1000,
        }
    }
}

/// Memory and disk alarm thresholds (RabbitMQ's vm_memory_high_watermark
/// and disk_free_limit).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlarmsConfig {
    /// Fraction of physical memory above which publishers are blocked.
    pub memory_high_watermark: f64,
    /// Absolute limit in bytes; overrides the fraction when set.
    pub memory_high_watermark_bytes: Option<u64>,
    /// Free bytes on the data directory's disk below which publishers are blocked.
    pub disk_free_limit: u64,
    /// How often to check, in milliseconds.
    pub check_interval_ms: u64,
}

impl Default for AlarmsConfig {
    fn default() -> Self {
        AlarmsConfig {
            memory_high_watermark: 0.4,
            memory_high_watermark_bytes: None,
            disk_free_limit: 50_000_000,
            check_interval_ms: 500,
        }
    }
}

/// Message store settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// fsync before confirming persistent messages (power-loss safe). With
    /// false, confirms follow the write to the OS: safe against a crash of
    /// warren, not against losing power.
    pub fsync: bool,
    /// Bytes of message data one queue keeps in memory; beyond it, the
    /// queue pages its newest messages to disk.
    pub queue_memory_limit: usize,
    /// Size of one message store segment file, in bytes.
    pub segment_size: u64,
}

/// `[storage] segment_size` unless configured: 64 MiB.
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 * 1024 * 1024;

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            fsync: true,
            queue_memory_limit: 64 * 1024 * 1024,
            segment_size: DEFAULT_SEGMENT_SIZE,
        }
    }
}

/// Authentication rules.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Users that may only connect from loopback addresses (RabbitMQ's
    /// `loopback_users`; by default the well-known guest user).
    pub loopback_users: Vec<String>,
    /// Failed logins per client address and user name that are refused at
    /// once; each further one is refused only after a growing delay. A
    /// correct login is always accepted at once (0 disables the delays).
    pub max_failed_logins: u32,
    /// Seconds after its last failure that an address and user's failures
    /// are forgotten (0 disables the delays).
    pub failed_login_window: u64,
    /// Longest delay of a refused login, in milliseconds (0 disables the delays).
    pub failed_login_max_delay_ms: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            loopback_users: vec!["guest".into()],
            max_failed_logins: 5,
            failed_login_window: 60,
            failed_login_max_delay_ms: 5000,
        }
    }
}

/// Connection negotiation limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpConfig {
    /// Highest channel number a client may use.
    pub channel_max: u16,
    /// Largest frame, in bytes, including the frame header and end octet.
    pub frame_max: u32,
    /// Heartbeat interval the server proposes, in seconds (0 disables).
    pub heartbeat: u16,
    /// Seconds a client has to finish the handshake.
    pub handshake_timeout: u64,
    /// Largest message body accepted, in bytes.
    pub max_message_size: u64,
}

/// The default user and vhost.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Defaults {
    /// Default user name.
    pub user: String,
    /// Default user's password.
    pub password: String,
    /// Default virtual host.
    pub vhost: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: default_bind(),
            port: 5672,
            http_port: 15672,
            http_bind: None,
            data_dir: default_data_dir(),
            log_level: "info".into(),
            load_definitions: None,
            amqp: AmqpConfig::default(),
            defaults: Defaults::default(),
            auth: AuthConfig::default(),
            storage: StorageConfig::default(),
            alarms: AlarmsConfig::default(),
            limits: LimitsConfig::default(),
            tls: TlsConfig::default(),
            http: HttpConfig::default(),
            stream: StreamConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            channel_max: 2047,
            frame_max: 131072,
            heartbeat: 60,
            handshake_timeout: 10,
            max_message_size: 128 * 1024 * 1024,
        }
    }
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            user: "guest".into(),
            password: "guest".into(),
            vhost: "/".into(),
        }
    }
}

/// Both loopback addresses: 127.0.0.1 and ::1.
pub fn default_bind() -> Vec<IpAddr> {
    vec![
        IpAddr::from([127, 0, 0, 1]),
        IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
    ]
}

/// An address or a list of addresses (`bind = "::1"` or `bind = ["127.0.0.1", "::1"]`).
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(IpAddr),
    Many(Vec<IpAddr>),
}

impl From<OneOrMany> for Vec<IpAddr> {
    fn from(v: OneOrMany) -> Self {
        match v {
            OneOrMany::One(a) => vec![a],
            OneOrMany::Many(v) => v,
        }
    }
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<IpAddr>, D::Error> {
    OneOrMany::deserialize(d).map(Vec::from)
}

fn one_or_many_opt<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<IpAddr>>, D::Error> {
    OneOrMany::deserialize(d).map(|v| Some(Vec::from(v)))
}

/// Parses a list of addresses separated by commas or spaces, as
/// `--bind` and `WARREN_BIND` take them ("127.0.0.1,::1").
pub fn parse_bind_list(text: &str) -> Result<Vec<IpAddr>, String> {
    let addrs: Vec<IpAddr> = text
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(|s| {
            // Accept the bracketed IPv6 form too: [::1]
            let s = s
                .strip_prefix('[')
                .and_then(|t| t.strip_suffix(']'))
                .unwrap_or(s);
            s.parse::<IpAddr>()
                .map_err(|_| format!("'{s}' is not an IP address"))
        })
        .collect::<Result<_, _>>()?;
    if addrs.is_empty() {
        return Err("no address given".into());
    }
    Ok(addrs)
}

/// `$XDG_DATA_HOME/warren`, else `~/.local/share/warren`, else `./warren-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("warren");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".local/share/warren");
    }
    PathBuf::from("warren-data")
}

/// Overrides from the command line or environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Config file to read instead of `<data_dir>/warren.toml`.
    pub config: Option<PathBuf>,
    /// Listener addresses.
    pub bind: Option<Vec<IpAddr>>,
    /// Listener port.
    pub port: Option<u16>,
    /// HTTP API port.
    pub http_port: Option<u16>,
    /// TLS listener port.
    pub tls_port: Option<u16>,
    /// Stream protocol port (0: disabled).
    pub stream_port: Option<u16>,
    /// Stream protocol over TLS port (0: disabled).
    pub stream_tls_port: Option<u16>,
    /// Data directory.
    pub data_dir: Option<PathBuf>,
    /// Log filter.
    pub log_level: Option<String>,
}

impl Config {
    /// Parses a config file's text.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Loads the configuration: the named file, or `<data_dir>/warren.toml`
    /// (created from the embedded default on first run), then the overrides.
    pub fn load(o: &Overrides) -> Result<Config, String> {
        let mut cfg = match &o.config {
            Some(path) => read(path)?,
            None => {
                let dir = o.data_dir.clone().unwrap_or_else(default_data_dir);
                let path = dir.join("warren.toml");
                if !path.exists() {
                    std::fs::create_dir_all(&dir).map_err(|e| {
                        format!("cannot create data directory {}: {e}", dir.display())
                    })?;
                    std::fs::write(&path, DEFAULT_CONFIG_TOML)
                        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                }
                let mut cfg = read(&path)?;
                // The config found in a data directory describes that directory.
                if o.data_dir.is_some() || cfg.data_dir == Config::default().data_dir {
                    cfg.data_dir = dir;
                }
                cfg
            }
        };
        if let Some(v) = &o.bind {
            cfg.bind = v.clone();
        }
        if let Some(v) = o.port {
            cfg.port = v;
        }
        if let Some(v) = o.http_port {
            cfg.http_port = v;
        }
        if let Some(v) = o.tls_port {
            cfg.tls.port = v;
        }
        if let Some(v) = o.stream_port {
            cfg.stream.port = v;
        }
        if let Some(v) = o.stream_tls_port {
            cfg.stream.tls_port = v;
        }
        if let Some(v) = &o.data_dir {
            cfg.data_dir = v.clone();
        }
        if let Some(v) = &o.log_level {
            cfg.log_level = v.clone();
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// The addresses the HTTP API listens on.
    pub fn http_addrs(&self) -> Vec<std::net::SocketAddr> {
        let addrs = self.http_bind.as_ref().unwrap_or(&self.bind);
        addrs
            .iter()
            .map(|a| std::net::SocketAddr::new(*a, self.http_port))
            .collect()
    }

    /// Checks values a typo could make nonsensical.
    pub fn validate(&self) -> Result<(), String> {
        if self.amqp.frame_max != 0 && self.amqp.frame_max < crate::protocol::codec::FRAME_MIN_SIZE
        {
            return Err(format!(
                "amqp.frame_max must be at least {}",
                crate::protocol::codec::FRAME_MIN_SIZE
            ));
        }
        if self.storage.segment_size < 64 * 1024 {
            return Err("storage.segment_size must be at least 65536 bytes".into());
        }
        if self.bind.is_empty() {
            return Err("bind must name at least one address".into());
        }
        if self.http_bind.as_ref().is_some_and(Vec::is_empty) {
            return Err("http_bind must name at least one address".into());
        }
        if self.amqp.handshake_timeout == 0 {
            return Err("amqp.handshake_timeout must be at least 1 second".into());
        }
        let t = &self.tls;
        if t.cert.is_some() != t.key.is_some() {
            return Err("tls.cert and tls.key must be set together".into());
        }
        if t.enabled() {
            if t.verify_peer && t.ca.is_none() {
                return Err(
                    "tls.verify_peer needs tls.ca (the CA that signs client certificates)".into(),
                );
            }
            if t.fail_if_no_peer_cert && !t.verify_peer {
                return Err("tls.fail_if_no_peer_cert needs tls.verify_peer = true".into());
            }
        }
        Ok(())
    }
}

fn read(path: &Path) -> Result<Config, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    Config::from_toml(&text).map_err(|e| format!("invalid config file {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_config_parses_to_the_defaults() {
        let c = Config::from_toml(DEFAULT_CONFIG_TOML).unwrap();
        let d = Config::default();
        assert_eq!(c.port, d.port);
        assert_eq!(c.http_port, 15672);
        assert_eq!(c.http_bind, None);
        assert_eq!(c.bind, d.bind);
        assert_eq!(c.amqp.channel_max, 2047);
        assert_eq!(c.amqp.frame_max, 131072);
        assert_eq!(c.amqp.heartbeat, 60);
        assert_eq!(c.defaults.user, "guest");
        assert_eq!(c.limits.max_connections, 0);
        assert_eq!(c.limits.max_connections_per_vhost, 0);
        assert_eq!(c.limits.max_queues_per_vhost, 0);
        assert_eq!(c.limits.max_consumers_per_channel, 10_000);
        assert_eq!(c.limits.max_consumers_per_queue, 50_000);
        assert_eq!(c.limits.max_tx_bytes, d.limits.max_tx_bytes);
        assert_eq!(
            c.limits.max_handshaking_connections,
            d.limits.max_handshaking_connections
        );
        assert_eq!(c.auth.max_failed_logins, d.auth.max_failed_logins);
        assert_eq!(c.auth.failed_login_window, d.auth.failed_login_window);
        assert_eq!(c.tls.port, 5671);
        assert!(!c.tls.enabled());
        assert!(!c.tls.verify_peer);
        assert!(!c.tls.fail_if_no_peer_cert);
    }

    #[test]
    fn tls_settings_are_checked() {
        let c = Config::from_toml("[tls]\ncert = \"/c.pem\"").unwrap();
        assert!(c.validate().unwrap_err().contains("tls.key"));
        let c =
            Config::from_toml("[tls]\ncert = \"/c\"\nkey = \"/k\"\nverify_peer = true").unwrap();
        assert!(c.validate().unwrap_err().contains("tls.ca"));
        let c =
            Config::from_toml("[tls]\ncert = \"/c\"\nkey = \"/k\"\nfail_if_no_peer_cert = true")
                .unwrap();
        assert!(c.validate().unwrap_err().contains("verify_peer"));
        let c = Config::from_toml("[tls]\ncert = \"/c\"\nkey = \"/k\"").unwrap();
        assert!(c.validate().is_ok());
        assert!(c.tls.enabled());
    }

    #[test]
    fn bind_takes_one_address_or_a_list() {
        let c = Config::from_toml("bind = \"::1\"").unwrap();
        assert_eq!(c.bind, vec![IpAddr::from(std::net::Ipv6Addr::LOCALHOST)]);
        let c =
            Config::from_toml("bind = [\"127.0.0.1\", \"::1\"]\nhttp_bind = \"0.0.0.0\"").unwrap();
        assert_eq!(c.bind, default_bind());
        assert_eq!(c.http_bind, Some(vec![IpAddr::from([0, 0, 0, 0])]));
        assert_eq!(parse_bind_list("127.0.0.1, [::1]").unwrap(), default_bind());
        assert!(parse_bind_list("localhost").is_err());
        assert!(parse_bind_list(" , ").is_err());
    }

    #[test]
    fn an_unknown_key_is_an_error() {
        assert!(Config::from_toml("prot = 5").is_err());
    }
}
