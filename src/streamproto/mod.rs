//! The RabbitMQ Stream protocol (the binary protocol of RabbitMQ's stream
//! plugin, port 5552) over warren's stream queues.
//!
//! Files:
//! - `codec`: frames on the socket: reading one within the frame max,
//!   parsing fields, building replies.
//! - `handshake`: PeerProperties, SASL PLAIN, Tune, Open (vhost access).
//! - `connection`: the per-connection task: its reader task, the main
//!   loop (commands, confirms, deliveries, heartbeats, back-pressure),
//!   Close both ways.
//! - `manage`: Create, Delete, Metadata, StreamStats, StoreOffset,
//!   QueryOffset.
//! - `publish`: DeclarePublisher, Publish, PublishConfirm / PublishError,
//!   QueryPublisherSequence, DeletePublisher, deduplication.
//! - `subscribe`: Subscribe, Credit, Unsubscribe, Deliver (the osiris chunk
//!   format built from the log's entries).
//! - `sac`: single active consumer groups (ConsumerUpdate).
//! - `superstream`: CreateSuperStream, DeleteSuperStream, Partitions,
//!   Route (a direct exchange with partition streams bound to it).
//!
//! A stream here is a queue of type stream in the vhost's definitions: what
//! one protocol creates the other sees. Entries carry a format byte
//! (`queue::stream::FORMAT_*`); stream clients publish AMQP 1.0 messages,
//! which are stored as sent, and AMQP 0-9-1 entries are converted to AMQP
//! 1.0 when a stream client reads them (`protocol::amqp10_map`).

pub mod codec;
mod connection;
mod handshake;
mod manage;
mod publish;
mod sac;
mod subscribe;
mod superstream;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::broker::Broker;

/// Command keys (requests; responses set the top bit), named as in the
/// protocol's reference.
#[allow(missing_docs)]
pub mod key {
    pub const DECLARE_PUBLISHER: u16 = 0x0001;
    pub const PUBLISH: u16 = 0x0002;
    pub const PUBLISH_CONFIRM: u16 = 0x0003;
    pub const PUBLISH_ERROR: u16 = 0x0004;
    pub const QUERY_PUBLISHER_SEQUENCE: u16 = 0x0005;
    pub const DELETE_PUBLISHER: u16 = 0x0006;
    pub const SUBSCRIBE: u16 = 0x0007;
    pub const DELIVER: u16 = 0x0008;
    pub const CREDIT: u16 = 0x0009;
    pub const STORE_OFFSET: u16 = 0x000a;
    pub const QUERY_OFFSET: u16 = 0x000b;
    pub const UNSUBSCRIBE: u16 = 0x000c;
    pub const CREATE: u16 = 0x000d;
    pub const DELETE: u16 = 0x000e;
    pub const METADATA: u16 = 0x000f;
    pub const METADATA_UPDATE: u16 = 0x0010;
    pub const PEER_PROPERTIES: u16 = 0x0011;
    pub const SASL_HANDSHAKE: u16 = 0x0012;
    pub const SASL_AUTHENTICATE: u16 = 0x0013;
    pub const TUNE: u16 = 0x0014;
    pub const OPEN: u16 = 0x0015;
    pub const CLOSE: u16 = 0x0016;
    pub const HEARTBEAT: u16 = 0x0017;
    pub const ROUTE: u16 = 0x0018;
    pub const CONSUMER_UPDATE: u16 = 0x001a;
    pub const PARTITIONS: u16 = 0x0019;
    pub const EXCHANGE_COMMAND_VERSIONS: u16 = 0x001b;
    pub const STREAM_STATS: u16 = 0x001c;
    pub const CREATE_SUPER_STREAM: u16 = 0x001d;
    pub const DELETE_SUPER_STREAM: u16 = 0x001e;
}

/// Response codes, named as in the protocol's reference.
#[allow(missing_docs)]
pub mod code {
    pub const OK: u16 = 0x01;
    pub const STREAM_DOES_NOT_EXIST: u16 = 0x02;
    pub const SUBSCRIPTION_ID_ALREADY_EXISTS: u16 = 0x03;
    pub const SUBSCRIPTION_ID_DOES_NOT_EXIST: u16 = 0x04;
    pub const STREAM_ALREADY_EXISTS: u16 = 0x05;
    pub const SASL_MECHANISM_NOT_SUPPORTED: u16 = 0x07;
    pub const AUTHENTICATION_FAILURE: u16 = 0x08;
    pub const SASL_ERROR: u16 = 0x09;
    pub const AUTHENTICATION_FAILURE_LOOPBACK: u16 = 0x0b;
    pub const VIRTUAL_HOST_ACCESS_FAILURE: u16 = 0x0c;
    pub const UNKNOWN_FRAME: u16 = 0x0d;
    pub const FRAME_TOO_LARGE: u16 = 0x0e;
    pub const INTERNAL_ERROR: u16 = 0x0f;
    pub const ACCESS_REFUSED: u16 = 0x10;
    pub const PRECONDITION_FAILED: u16 = 0x11;
    pub const PUBLISHER_DOES_NOT_EXIST: u16 = 0x12;
    pub const NO_OFFSET: u16 = 0x13;
}

/// Accepts stream-protocol connections on every listener until dropped.
pub async fn serve(broker: Arc<Broker>, listeners: Vec<TcpListener>) {
    let mut tasks = tokio::task::JoinSet::new();
    for l in listeners {
        tasks.spawn(serve_one(broker.clone(), l, None));
    }
    while tasks.join_next().await.is_some() {}
}

/// Accepts stream-protocol connections over TLS on every listener until
/// dropped; each TLS handshake runs in its connection's own task.
pub async fn serve_tls(broker: Arc<Broker>, listeners: Vec<TcpListener>, acceptor: TlsAcceptor) {
    let mut tasks = tokio::task::JoinSet::new();
    for l in listeners {
        tasks.spawn(serve_one(broker.clone(), l, Some(acceptor.clone())));
    }
    while tasks.join_next().await.is_some() {}
}

async fn serve_one(broker: Arc<Broker>, listener: TcpListener, tls: Option<TlsAcceptor>) {
    loop {
        match listener.accept().await {
            Ok((socket, peer)) => {
                let _ = socket.set_nodelay(true);
                let broker = broker.clone();
                match &tls {
                    None => tokio::spawn(connection::run(broker, socket, peer)),
                    Some(a) => tokio::spawn(connection::run_tls(broker, a.clone(), socket, peer)),
                };
            }
            Err(e) => {
                // Out of file descriptors and the like: wait, go on.
                tracing::warn!("stream listener accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// The host and port Metadata gives clients for this node: the TLS port to
/// clients connected over TLS.
fn advertised(broker: &Broker, tls: bool) -> (String, u32) {
    let s = &broker.config.stream;
    let port = if tls {
        s.advertised_tls_port.unwrap_or(s.tls_port)
    } else {
        s.advertised_port.unwrap_or(s.port)
    } as u32;
    if let Some(h) = &s.advertised_host {
        return (h.clone(), port);
    }
    let host = match broker.config.bind.first() {
        Some(ip) if !ip.is_unspecified() => ip.to_string(),
        _ => host_name(),
    };
    (host, port)
}

fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
