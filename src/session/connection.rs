//! One client connection: the handshake, the frame loop, heartbeats, and
//! closing (in both directions).
//!
//! The connection's task reads frames, keeps per-channel state (`Channel`)
//! and runs the method handlers in `channel` and `handlers`. Outbound frames
//! go through the shared `ConnectionHandle`, whose writer task batches them.

use ahash::AHashMap as HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use amq_protocol::protocol::{AMQPClass, connection as conn_m};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use crate::broker::Broker;
use crate::protocol::codec::{FRAME_MIN_SIZE, Frame, HEARTBEAT, PROTOCOL_HEADER, parse_frame};
use crate::protocol::error::{AmqpError, AmqpResult, Scope, code};
use crate::protocol::methods::{Method, decode, ids, write_method};
use crate::session::channel::Channel;
use crate::session::context::ConnCtx;
use crate::session::method_ids::{
    BASIC_PUBLISH, CHANNEL_CLOSE, CHANNEL_CLOSE_OK, CONNECTION_CLOSE, CONNECTION_CLOSE_OK,
    CONNECTION_OPEN, InMethod,
};
use crate::session::outbound::{ConnEvent, ConnectionHandle};
use crate::session::server::HandshakeSlot;
use crate::session::tls::TlsSession;
use crate::vhost::VHost;

/// Longest a publishing connection pauses for one flow-control wait.
const FLOW_PAUSE_MAX: Duration = Duration::from_millis(20);

/// How often a connection looks for deliveries past their consumer timeout.
const CONSUMER_TIMEOUT_CHECK: Duration = Duration::from_secs(1);

/// How long warren waits for connection.close-ok after sending connection.close.
const CLOSE_OK_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a closed connection's socket stays open for the client to read
/// the last frames and close its side.
const LINGER: Duration = Duration::from_secs(3);

/// How long the writer may take to flush the last frames once lingering ends.
const WRITER_GRACE: Duration = Duration::from_secs(2);

fn close_ok_method() -> AMQPClass {
    AMQPClass::Connection(conn_m::AMQPMethod::CloseOk(conn_m::CloseOk {}))
}

/// Serves one plain TCP client connection until it closes.
/// `slot` counts it against `[limits] max_handshaking_connections` until
/// connection.open.
pub async fn serve(broker: Arc<Broker>, stream: TcpStream, peer: SocketAddr, slot: HandshakeSlot) {
    let _ = stream.set_nodelay(true);
    let Ok(local) = stream.local_addr() else {
        return;
    };
    // The socket's own halves: no lock between the reader and the writer task.
    let (rd, wr) = stream.into_split();
    serve_stream(broker, rd, wr, Peer { peer, local }, None, slot).await;
}

/// Serves one TLS client connection: the TLS handshake (within the AMQP
/// handshake timeout), then the same as `serve`.
pub async fn serve_tls(
    broker: Arc<Broker>,
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    slot: HandshakeSlot,
) {
    let _ = stream.set_nodelay(true);
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let timeout = Duration::from_secs(broker.config.amqp.handshake_timeout);
    let tls = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::info!(%peer, "TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let session = crate::session::tls::session(tls.get_ref().1);
    tracing::debug!(%peer, protocol = %session.protocol, cipher = %session.cipher,
        peer_cert = ?session.peer_cert_subject, "TLS established");
    let (rd, wr) = tokio::io::split(tls);
    serve_stream(broker, rd, wr, Peer { peer, local }, Some(session), slot).await;
}

/// The two ends of a client's TCP connection.
#[derive(Clone, Copy)]
struct Peer {
    peer: SocketAddr,
    local: SocketAddr,
}

/// Runs the AMQP connection over any byte stream (a TCP socket's halves, or
/// a TLS stream's); generic, so the plain TCP path has no indirection.
async fn serve_stream<R, W>(
    broker: Arc<Broker>,
    mut rd: R,
    mut wr: W,
    ends: Peer,
    tls: Option<TlsSession>,
    slot: HandshakeSlot,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let id = broker.next_connection_id();
    let peer = ends.peer;
    let timeout = Duration::from_secs(broker.config.amqp.handshake_timeout);

    // The protocol header comes before anything else.
    let mut header = [0u8; 8];
    match tokio::time::timeout(timeout, rd.read_exact(&mut header)).await {
        // The second form is the 0-9 header some old clients send; RabbitMQ accepts it.
        Ok(Ok(_)) if &header == PROTOCOL_HEADER || &header == b"AMQP\x01\x01\x00\x09" => {}
        Ok(Ok(_)) => {
            tracing::info!(%peer, "bad protocol header {:?}; closing", String::from_utf8_lossy(&header));
            let _ = wr.write_all(PROTOCOL_HEADER).await;
            let _ = wr.shutdown().await;
            return;
        }
        _ => return,
    }

    let (handle, events) = ConnectionHandle::new(id, FRAME_MIN_SIZE);
    let meta = broker.durability.meta.get().map(|m| m.subscribe());
    let writer = tokio::spawn(handle.clone().run_writer(wr, meta));
    let mut reader = Reader {
        rd,
        buf: BytesMut::with_capacity(64 * 1024),
        frame_max: FRAME_MIN_SIZE,
    };
    let hs = tokio::time::timeout(
        timeout,
        handshake(&broker, &handle, &mut reader, ends, tls.as_ref()),
    )
    .await;
    drop(slot);
    let linger = match hs {
        Ok(Ok(Some(hs))) => {
            tracing::info!(%peer, id, user = %hs.user.escape_debug(), vhost = %hs.vhost.name.escape_debug(), "connection opened");
            let mut conn = Connection {
                ctx: ConnCtx::new(broker.clone(), handle.clone(), hs.vhost, hs.user),
                channels: HashMap::new(),
                channel_max: hs.channel_max,
                heartbeat: hs.heartbeat,
                reader,
                peer,
            };
            let peer_alive = conn.run(events).await;
            conn.cleanup();
            broker.unregister(id);
            tracing::info!(%peer, id, "connection closed");
            peer_alive.then_some(conn.reader)
        }
        // A refused login without authentication_failure_close: the
        // socket just closes, as from RabbitMQ.
        Ok(Ok(None)) => None,
        Ok(Err(e)) => {
            tracing::info!(%peer, "handshake failed: {}", e.to_string().escape_debug());
            handle.write(|out| write_method(out, 0, &close_method(&e)));
            // As after any connection.close warren sends: the client answers
            // close-ok before it lets go of the socket.
            let linger = reader.await_close_ok(&handle).await;
            linger.then_some(reader)
        }
        Err(_) => {
            tracing::info!(%peer, "handshake timed out");
            None
        }
    };
    finish(&handle, writer, linger).await;
}

/// Closes a connection's socket without destroying what is in flight.
///
/// As RabbitMQ does, the socket stays open after close-ok until the client
/// closes its side, for at most `LINGER`: whatever the client still sends
/// is read and discarded, and every further connection.close is answered
/// with close-ok (a client closing from several threads at once waits for
/// one close-ok per close). Then the writer flushes and shuts the socket.
/// Closing a socket with unread bytes in its receive buffer makes the
/// kernel send a reset, which can destroy a close-ok the client has not
/// read yet (clients then report EOF or EPIPE instead of a clean close).
/// `reader` is `None` when the peer is known to be gone.
async fn finish<R: AsyncRead + Unpin>(
    handle: &ConnectionHandle,
    writer: tokio::task::JoinHandle<()>,
    reader: Option<Reader<R>>,
) {
    if let Some(mut r) = reader {
        let _ = tokio::time::timeout(LINGER, r.linger(handle)).await;
    }
    handle.close_writer();
    let abort = writer.abort_handle();
    if tokio::time::timeout(WRITER_GRACE, writer).await.is_err() {
        // A client that reads nothing: give up on it.
        abort.abort();
    }
}

/// Buffered frame reader.
struct Reader<R> {
    rd: R,
    buf: BytesMut,
    frame_max: u32,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// Reads more bytes; returns false on end of stream or error.
    async fn fill(&mut self) -> bool {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(64 * 1024);
        }
        matches!(self.rd.read_buf(&mut self.buf).await, Ok(n) if n > 0)
    }

    fn next_buffered(&mut self) -> AmqpResult<Option<Frame>> {
        parse_frame(&mut self.buf, self.frame_max)
    }

    /// Reads the next frame, waiting for bytes as needed.
    async fn next(&mut self) -> AmqpResult<Option<Frame>> {
        loop {
            if let Some(f) = self.next_buffered()? {
                return Ok(Some(f));
            }
            if !self.fill().await {
                return Ok(None);
            }
        }
    }

    /// After a close: reads and drops whatever arrives until the peer
    /// closes its side (or the socket fails), answering connection.close
    /// with close-ok.
    async fn linger(&mut self, handle: &ConnectionHandle) {
        loop {
            match self.next().await {
                Ok(Some(Frame::Method {
                    channel: 0,
                    payload,
                })) if ids(&payload) == CONNECTION_CLOSE => {
                    handle.write(|out| write_method(out, 0, &close_ok_method()));
                }
                Ok(Some(_)) => {}
                Ok(None) => return,
                Err(_) => break,
            }
        }
        // Unparseable bytes: keep reading them away until the client closes.
        loop {
            self.buf.clear();
            if !self.fill().await {
                return;
            }
        }
    }

    /// After warren sent connection.close: reads until the client's
    /// close-ok, discarding everything else (spec 4.2.2), for at most
    /// `CLOSE_OK_TIMEOUT`. A connection.close crossing ours is answered with
    /// close-ok. Returns whether the socket is worth lingering on: not once
    /// the client sent close-ok (it sends nothing more; RabbitMQ closes at
    /// once too), nor when it is silent or gone.
    async fn await_close_ok(&mut self, handle: &ConnectionHandle) -> bool {
        let wait = async {
            loop {
                match self.next().await {
                    Ok(Some(Frame::Method {
                        channel: 0,
                        payload,
                    })) if ids(&payload) == CONNECTION_CLOSE_OK => return false,
                    Ok(Some(Frame::Method {
                        channel: 0,
                        payload,
                    })) if ids(&payload) == CONNECTION_CLOSE => {
                        handle.write(|out| write_method(out, 0, &close_ok_method()));
                        return true;
                    }
                    Ok(Some(_)) => continue,
                    _ => return false,
                }
            }
        };
        tokio::time::timeout(CLOSE_OK_TIMEOUT, wait)
            .await
            .unwrap_or(false)
    }

    /// Reads the next method on channel 0 during the handshake.
    async fn expect_method(&mut self) -> AmqpResult<Option<AMQPClass>> {
        loop {
            match self.next().await? {
                None => return Ok(None),
                Some(Frame::Heartbeat { .. }) => continue,
                Some(Frame::Method {
                    channel: 0,
                    payload,
                }) => {
                    return match decode(payload)? {
                        Method::Other(c) => Ok(Some(c)),
                        _ => Err(AmqpError::connection(
                            code::COMMAND_INVALID,
                            "expected a connection method during the handshake",
                        )),
                    };
                }
                Some(_) => {
                    return Err(AmqpError::connection(
                        code::UNEXPECTED_FRAME,
                        "expected a connection method on channel 0 during the handshake",
                    ));
                }
            }
        }
    }
}

struct Handshake {
    vhost: Arc<VHost>,
    user: String,
    channel_max: u16,
    heartbeat: u16,
}

fn server_properties() -> FieldTable {
    let mut caps = FieldTable::default();
    for c in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
        "per_consumer_qos",
        "direct_reply_to",
        "consumer_priorities",
    ] {
        caps.insert(c.into(), AMQPValue::Boolean(true));
    }
    let mut p = FieldTable::default();
    let s = |v: &str| AMQPValue::LongString(LongString::from(v.as_bytes().to_vec()));
    p.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    // Clients and their test suites decide behaviour by these two (kombu
    // picks RabbitMQ's per-consumer prefetch semantics from them,
    // amqp091-go's RabbitMQ-specific tests gate on them): warren behaves as
    // RabbitMQ 3.10 and says so, as its HTTP API does with
    // rabbitmq_version. warren's own name and version follow.
    p.insert("product".into(), s("RabbitMQ"));
    p.insert(
        "version".into(),
        s(crate::admin::http::RABBITMQ_COMPAT_VERSION),
    );
    p.insert("warren_version".into(), s(env!("CARGO_PKG_VERSION")));
    p.insert(
        "platform".into(),
        s(&format!(
            "Rust ({} {})",
            std::env::consts::OS,
            std::env::consts::ARCH
        )),
    );
    p.insert(
        "information".into(),
        s("warren, an AMQP 0-9-1 message broker compatible with RabbitMQ 3.10"),
    );
    p.insert("copyright".into(), s("The warren authors"));
    p.insert("cluster_name".into(), s("warren"));
    p
}

fn capability(props: &FieldTable, name: &str) -> bool {
    match props.inner().get("capabilities") {
        Some(AMQPValue::FieldTable(t)) => {
            matches!(t.inner().get(name), Some(AMQPValue::Boolean(true)))
        }
        _ => false,
    }
}

/// Extracts (user, password) from a SASL response.
fn sasl_credentials(mechanism: &str, response: &[u8]) -> AmqpResult<(String, String)> {
    let refused = || {
        AmqpError::connection(
            code::ACCESS_REFUSED,
            format!("malformed {mechanism} response"),
        )
    };
    match mechanism {
        "PLAIN" => {
            let mut parts = response.split(|b| *b == 0);
            let (_authz, user, pass) = (parts.next(), parts.next(), parts.next());
            match (user, pass, parts.next()) {
                (Some(u), Some(p), None) => Ok((
                    String::from_utf8_lossy(u).into_owned(),
                    String::from_utf8_lossy(p).into_owned(),
                )),
                _ => Err(refused()),
            }
        }
        "AMQPLAIN" => {
            // A field table without its length prefix.
            let mut framed = (response.len() as u32).to_be_bytes().to_vec();
            framed.extend_from_slice(response);
            // Checked before anyone is authenticated: the library's decoder
            // recurses once per nesting level and would overflow the stack.
            crate::protocol::table_guard::check_field_table(&framed)?;
            let (_, table) = amq_protocol::types::parsing::parse_field_table(&framed[..])
                .map_err(|_| refused())?;
            let get = |k: &str| match table.inner().get(k) {
                Some(AMQPValue::LongString(s)) => {
                    Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                }
                Some(AMQPValue::ShortString(s)) => Some(s.as_str().to_owned()),
                _ => None,
            };
            match (get("LOGIN"), get("PASSWORD")) {
                (Some(u), Some(p)) => Ok((u, p)),
                _ => Err(refused()),
            }
        }
        other => Err(AmqpError::connection(
            code::COMMAND_INVALID,
            format!("unknown authentication mechanism '{other}'"),
        )),
    }
}

/// Runs connection.start .. connection.open-ok. `Ok(None)`: the peer left
/// (or was refused without a close frame, as RabbitMQ does).
async fn handshake<R: AsyncRead + Unpin>(
    broker: &Broker,
    handle: &Arc<ConnectionHandle>,
    reader: &mut Reader<R>,
    ends: Peer,
    tls: Option<&TlsSession>,
) -> AmqpResult<Option<Handshake>> {
    let peer = ends.peer;
    let limits = &broker.config.amqp;
    // EXTERNAL only where a verified client certificate names the user.
    let mechanisms = if tls.is_some_and(TlsSession::has_peer_cert) {
        "PLAIN AMQPLAIN EXTERNAL"
    } else {
        "PLAIN AMQPLAIN"
    };
    handle.write(|out| {
        write_method(
            out,
            0,
            &AMQPClass::Connection(conn_m::AMQPMethod::Start(conn_m::Start {
                version_major: 0,
                version_minor: 9,
                server_properties: server_properties(),
                mechanisms: mechanisms.into(),
                locales: "en_US".into(),
            })),
        )
    });
    let Some(AMQPClass::Connection(conn_m::AMQPMethod::StartOk(start_ok))) =
        reader.expect_method().await?
    else {
        return Err(AmqpError::connection(
            code::COMMAND_INVALID,
            "expected connection.start-ok",
        ));
    };
    let failure_close = capability(&start_ok.client_properties, "authentication_failure_close");
    let ip = peer.ip().to_canonical();
    let mechanism = start_ok.mechanism.as_str().to_owned();
    let (user, authenticated) = if mechanism == "EXTERNAL" {
        // The user is the verified client certificate's CN; it must exist,
        // its password is not checked (RabbitMQ's rabbit_auth_mechanism_ssl).
        let Some(session) = tls.filter(|t| t.has_peer_cert()) else {
            return Err(AmqpError::connection(
                code::COMMAND_INVALID,
                "invalid authentication mechanism 'EXTERNAL'",
            ));
        };
        match &session.peer_cn {
            Some(cn) => {
                let exists = broker.user(cn).is_some();
                if !exists {
                    tracing::warn!(%peer, user = %cn.escape_debug(),
                        "authentication failed (EXTERNAL): no user '{}' (the client certificate's CN)", cn.escape_debug());
                }
                (cn.clone(), exists)
            }
            None => {
                tracing::warn!(%peer, subject = ?session.peer_cert_subject,
                    "authentication failed (EXTERNAL): the client certificate's subject has no CN");
                (String::new(), false)
            }
        }
    } else {
        let (user, password) = sasl_credentials(&mechanism, start_ok.response.as_bytes())?;
        let ok = broker.authenticate(&user, &password).is_some();
        if !ok {
            // Escaped: a pre-login name could otherwise forge log lines.
            tracing::warn!(%peer, user = %user.escape_debug(), "authentication failed ({})", mechanism.escape_debug());
        }
        (user, ok)
    };
    let loopback_only = broker.config.auth.loopback_users.contains(&user);
    if !authenticated || (loopback_only && !ip.is_loopback()) {
        if authenticated {
            tracing::warn!(%peer, user = %user.escape_debug(), "login refused: the user can only connect via localhost");
        } else {
            // Wrong logins are slowed down, per address and user name;
            // the right password is never held up (login_limit.rs).
            let r = broker.failed_logins.record_failure(ip, &user);
            if r.first_delayed {
                tracing::warn!(%peer, user = %user.escape_debug(),
                    "{} failed logins in a row from {ip} for this user: refusals are now delayed", r.failures);
            }
            if !r.delay.is_zero() {
                tokio::time::sleep(r.delay).await;
            }
        }
        if failure_close {
            return Err(AmqpError::connection(
                code::ACCESS_REFUSED,
                format!(
                    "Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
                ),
            ));
        }
        return Ok(None);
    }
    broker.failed_logins.record_success(ip, &user);
    handle.cancel_notify.store(
        capability(&start_ok.client_properties, "consumer_cancel_notify"),
        Ordering::Relaxed,
    );
    handle.blocked_notify.store(
        capability(&start_ok.client_properties, "connection.blocked"),
        Ordering::Relaxed,
    );

    handle.write(|out| {
        write_method(
            out,
            0,
            &AMQPClass::Connection(conn_m::AMQPMethod::Tune(conn_m::Tune {
                channel_max: limits.channel_max,
                frame_max: limits.frame_max,
                heartbeat: limits.heartbeat,
            })),
        )
    });
    let Some(AMQPClass::Connection(conn_m::AMQPMethod::TuneOk(tune))) =
        reader.expect_method().await?
    else {
        return Err(AmqpError::connection(
            code::COMMAND_INVALID,
            "expected connection.tune-ok",
        ));
    };
    // As RabbitMQ: a client may lower the server's limits but not raise them.
    if limits.frame_max != 0 && tune.frame_max > limits.frame_max {
        return Err(AmqpError::connection(
            code::NOT_ALLOWED,
            format!(
                "frame_max={} > {} max size",
                tune.frame_max, limits.frame_max
            ),
        ));
    }
    if tune.frame_max != 0 && tune.frame_max < FRAME_MIN_SIZE {
        return Err(AmqpError::connection(
            code::NOT_ALLOWED,
            format!("frame_max={} < {} min size", tune.frame_max, FRAME_MIN_SIZE),
        ));
    }
    if limits.channel_max != 0 && tune.channel_max > limits.channel_max {
        return Err(AmqpError::connection(
            code::NOT_ALLOWED,
            format!(
                "channel_max={} > {} max allowed",
                tune.channel_max, limits.channel_max
            ),
        ));
    }
    // 0 means "no limit", which is more than a limited server allows.
    if tune.frame_max == 0 && limits.frame_max != 0 {
        return Err(AmqpError::connection(
            code::NOT_ALLOWED,
            format!("frame_max=0 (unlimited) > {} max size", limits.frame_max),
        ));
    }
    if tune.channel_max == 0 && limits.channel_max != 0 {
        return Err(AmqpError::connection(
            code::NOT_ALLOWED,
            format!(
                "channel_max=0 (unlimited) > {} max allowed",
                limits.channel_max
            ),
        ));
    }
    let frame_max = tune.frame_max;
    let channel_max = if tune.channel_max == 0 {
        u16::MAX
    } else {
        tune.channel_max
    };
    reader.frame_max = frame_max;
    handle.frame_max.store(
        if frame_max == 0 { u32::MAX } else { frame_max },
        Ordering::Relaxed,
    );

    let Some(AMQPClass::Connection(conn_m::AMQPMethod::Open(open))) =
        reader.expect_method().await?
    else {
        return Err(AmqpError::connection(
            code::COMMAND_INVALID,
            "expected connection.open",
        ));
    };
    let vhost_name = open.virtual_host.as_str();
    let Some(vhost) = broker.vhost(vhost_name) else {
        return Err(AmqpError::connection(
            code::NOT_ALLOWED,
            format!("vhost {vhost_name} not found"),
        )
        .in_method(CONNECTION_OPEN));
    };
    if broker.permissions(&user, vhost_name).is_none() {
        return Err(AmqpError::connection(
            code::NOT_ALLOWED,
            format!("access to vhost '{vhost_name}' refused for user '{user}'"),
        )
        .in_method(CONNECTION_OPEN));
    }
    // The limit check and the registration happen under one lock, so two
    // connections opening at once cannot both take the last slot.
    let admission = ADMISSION.lock().unwrap_or_else(|e| e.into_inner());
    check_connection_limits(broker, vhost_name)?;
    let _ = handle.info.set(crate::session::outbound::ConnInfo {
        peer,
        local: ends.local,
        user: user.clone(),
        vhost: vhost_name.to_owned(),
        client_properties: start_ok.client_properties.clone(),
        connected_at: std::time::SystemTime::now(),
        channel_max,
        heartbeat: tune.heartbeat,
        auth_mechanism: mechanism,
        tls: tls.cloned(),
    });
    broker.register(handle.clone());
    drop(admission);
    handle.write(|out| {
        write_method(
            out,
            0,
            &AMQPClass::Connection(conn_m::AMQPMethod::OpenOk(conn_m::OpenOk {})),
        )
    });
    Ok(Some(Handshake {
        vhost,
        user,
        channel_max,
        heartbeat: tune.heartbeat,
    }))
}

/// Serialises connection-limit checks with registration.
static ADMISSION: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `[limits]` max_connections and max_connections_per_vhost, checked at
/// connection.open (530 NOT_ALLOWED, as RabbitMQ's vhost connection limit).
fn check_connection_limits(broker: &Broker, vhost: &str) -> AmqpResult<()> {
    let limits = &broker.config.limits;
    if limits.max_connections == 0 && limits.max_connections_per_vhost == 0 {
        return Ok(());
    }
    let open = broker.connections();
    let max = limits.max_connections as usize;
    if max != 0 && open.len() >= max {
        return Err(AmqpError::connection(
            code::NOT_ALLOWED,
            format!("connection limit ({max}) is reached"),
        )
        .in_method(CONNECTION_OPEN));
    }
    let max = limits.max_connections_per_vhost as usize;
    if max != 0
        && open
            .iter()
            .filter(|c| c.info.get().is_some_and(|i| i.vhost == vhost))
            .count()
            >= max
    {
        return Err(AmqpError::connection(
            code::NOT_ALLOWED,
            format!("access to vhost '{vhost}' refused: connection limit ({max}) is reached"),
        )
        .in_method(CONNECTION_OPEN));
    }
    Ok(())
}

/// connection.close for an error.
pub fn close_method(e: &AmqpError) -> AMQPClass {
    AMQPClass::Connection(conn_m::AMQPMethod::Close(conn_m::Close {
        reply_code: e.code,
        reply_text: e.text.as_str().into(),
        class_id: e.class_id,
        method_id: e.method_id,
    }))
}

struct Connection<R> {
    ctx: ConnCtx,
    channels: HashMap<u16, Channel>,
    channel_max: u16,
    heartbeat: u16,
    reader: Reader<R>,
    peer: SocketAddr,
}

/// How the frame loop ended.
enum End {
    /// The client closed the connection (close-ok already sent).
    Closed,
    /// The peer went away: end of stream, a failed write, missed heartbeats.
    Gone,
    /// Warren closes the connection with this error.
    Error(AmqpError),
}

impl<R: AsyncRead + Unpin> Connection<R> {
    /// Runs the connection until it ends; returns whether the peer may
    /// still be there (so its last frames are worth draining).
    async fn run(&mut self, mut events: mpsc::UnboundedReceiver<ConnEvent>) -> bool {
        match self.frame_loop(&mut events).await {
            End::Closed => true,
            End::Gone => false,
            End::Error(e) => {
                tracing::info!(peer = %self.peer, "closing connection: {}", e.text.escape_debug());
                self.ctx.send(0, close_method(&e));
                self.reader.await_close_ok(&self.ctx.handle).await
            }
        }
    }

    async fn frame_loop(&mut self, events: &mut mpsc::UnboundedReceiver<ConnEvent>) -> End {
        let hb = self.heartbeat as u64;
        let tick = if hb == 0 {
            Duration::from_secs(3600)
        } else {
            Duration::from_millis(hb * 500)
        };
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut timeout_check = tokio::time::interval(CONSUMER_TIMEOUT_CHECK);
        timeout_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_recv = Instant::now();
        let mut written_at_tick = 0u64;
        let mut durable_rx = self.ctx.broker.durability.store().map(|s| s.subscribe());
        let mut backlog_rx = self.ctx.broker.durability.store().map(|s| s.subscribe());
        let mut alarms = self.ctx.broker.alarms.subscribe();
        let mut blocked = false;
        // The connection whose backlog holds reading back (see `hold`).
        let mut hold: Option<Arc<ConnectionHandle>> = None;
        let mut written_while_held = 0u64;
        loop {
            hold = match hold.take() {
                Some(h) if !h.is_drained() => Some(h),
                _ => self.hold(),
            };
            // Handle every complete frame already buffered, then flush
            // confirms; stop early once a reply fills a backlog.
            while hold.is_none() {
                match self.reader.next_buffered() {
                    Ok(Some(frame)) => match self.handle_frame_gated(frame) {
                        Ok(true) => {}
                        Ok(false) => return End::Closed,
                        Err(e) => return End::Error(e),
                    },
                    Ok(None) => break,
                    Err(e) => return End::Error(e),
                }
                hold = self.hold();
            }
            self.flush_confirms();
            self.ctx
                .handle
                .channel_count
                .store(self.channels.len() as u32, Ordering::Relaxed);
            if let Some(q) = self.ctx.flow_wait.take() {
                // Flow control: don't read more publishes until the queue's
                // consumers catch up. Bounded, so a connection that also
                // consumes from that queue still gets to read its acks.
                let drained = q.drained();
                tokio::pin!(drained);
                drained.as_mut().enable();
                if q.is_pressured() {
                    let _ = tokio::time::timeout(FLOW_PAUSE_MAX, drained).await;
                }
            }
            // The message store's writer is behind (a disk slower than the
            // publishers): a connection that publishes reads nothing more
            // until it has caught up, so the writer's buffer is bounded.
            let store_held = self.ctx.published
                && self
                    .ctx
                    .broker
                    .durability
                    .store()
                    .is_some_and(|s| s.is_backlogged());
            let waiting_for_store = !self.ctx.confirms_due.is_empty() && durable_rx.is_some();
            // Alarms: a connection that publishes is not read from while an
            // alarm is on (RabbitMQ's connection.blocked); consumers go on.
            let alarm = *alarms.borrow_and_update();
            let should_block = alarm.any() && self.ctx.published;
            if should_block != blocked {
                blocked = should_block;
                if self.ctx.handle.blocked_notify.load(Ordering::Relaxed) {
                    let m = if blocked {
                        conn_m::AMQPMethod::Blocked(conn_m::Blocked {
                            reason: alarm.reason().into(),
                        })
                    } else {
                        conn_m::AMQPMethod::Unblocked(conn_m::Unblocked {})
                    };
                    self.ctx.send(0, AMQPClass::Connection(m));
                }
                tracing::info!(peer = %self.peer, "connection {}", if blocked { "blocked" } else { "unblocked" });
            }
            let own_hold = hold
                .as_ref()
                .is_some_and(|h| Arc::ptr_eq(h, &self.ctx.handle));
            if own_hold {
                // Not reading because the peer does not read: it counts as
                // alive while the writer gets bytes out to it, so a peer
                // that is gone is still noticed after two heartbeats.
                let written = self.ctx.handle.bytes_written();
                if written != written_while_held {
                    written_while_held = written;
                    last_recv = Instant::now();
                }
            } else if blocked || hold.is_some() || store_held {
                // Not reading: the peer's heartbeats wait in the socket.
                last_recv = Instant::now();
            }
            tokio::select! {
                biased;
                synced = async {
                    match durable_rx.as_mut() {
                        Some(rx) => rx.changed().await.is_ok(),
                        None => std::future::pending().await,
                    }
                }, if waiting_for_store => {
                    if !synced {
                        durable_rx = None;
                    }
                }
                ev = events.recv() => match ev {
                    Some(ConnEvent::Writable) => self.redispatch_all(),
                    Some(ConnEvent::WriteFailed) | None => return End::Gone,
                    Some(ConnEvent::Close(code, text)) => return End::Error(AmqpError::connection(code, text)),
                },
                _ = async {
                    if let Some(h) = &hold {
                        h.drained(Duration::from_secs(1)).await;
                    }
                }, if hold.is_some() => {}
                _ = async {
                    match backlog_rx.as_mut() {
                        Some(rx) => {
                            let _ = tokio::time::timeout(Duration::from_millis(50), rx.changed()).await;
                        }
                        None => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }, if store_held => {}
                ok = self.reader.fill(), if !blocked && hold.is_none() && !store_held => {
                    if !ok {
                        return End::Gone;
                    }
                    last_recv = Instant::now();
                }
                _ = timeout_check.tick(), if self.has_unacked() => {
                    if let Err(e) = self.check_consumer_timeouts() {
                        return End::Error(e);
                    }
                }
                changed = alarms.changed() => {
                    if changed.is_err() {
                        return End::Gone;
                    }
                }
                _ = ticker.tick() => {
                    if hb > 0 {
                        if last_recv.elapsed() > Duration::from_secs(hb * 2) {
                            tracing::warn!(peer = %self.peer, "missed heartbeats from client, timeout: {hb}s");
                            return End::Gone;
                        }
                        let written = self.ctx.handle.bytes_written();
                        if written == written_at_tick && self.ctx.handle.pending_bytes() == 0 {
                            self.ctx.handle.write(|out| out.extend_from_slice(&HEARTBEAT));
                        }
                        written_at_tick = self.ctx.handle.bytes_written();
                    }
                }
            }
        }
    }

    /// `handle_frame`, forgetting afterwards which definitions change this
    /// thread appended (its replies were gated on it; see outbound.rs).
    fn handle_frame_gated(&mut self, frame: Frame) -> AmqpResult<bool> {
        crate::store::meta::take_appended();
        let r = self.handle_frame(frame);
        crate::store::meta::take_appended();
        r
    }

    /// Handles one frame. `Ok(false)`: the connection is closed.
    fn handle_frame(&mut self, frame: Frame) -> AmqpResult<bool> {
        match frame {
            Frame::Heartbeat { channel: 0 } => Ok(true),
            Frame::Heartbeat { channel } => Err(AmqpError::connection(
                code::UNEXPECTED_FRAME,
                format!("heartbeat frame on channel {channel}; heartbeats belong on channel 0"),
            )),
            Frame::Method {
                channel: 0,
                payload,
            } => self.connection_method(payload),
            Frame::Method { channel, payload } => {
                let (class_id, method_id) = ids(&payload);
                if let Some(ch) = self.channels.get_mut(&channel)
                    && ch.closing
                {
                    // Only close and close-ok matter on a closing channel (spec 4.2.2).
                    match (class_id, method_id) {
                        CHANNEL_CLOSE_OK => {
                            self.channels.remove(&channel);
                        }
                        CHANNEL_CLOSE => {
                            self.ctx.send(channel, crate::session::channel::close_ok());
                        }
                        _ => {}
                    }
                    return Ok(true);
                }
                let method = decode(payload)?;
                if (class_id, method_id) == CHANNEL_CLOSE
                    && let Some(mut ch) = self.channels.remove(&channel)
                {
                    ch.flush_confirms(&self.ctx);
                    ch.shutdown(&mut self.ctx);
                    self.ctx.send(channel, crate::session::channel::close_ok());
                    return Ok(true);
                }
                if !self.channels.contains_key(&channel) {
                    self.check_channel_count()?;
                    return self
                        .open_channel(channel, method)
                        .map_err(|e| e.with_method(class_id, method_id));
                }
                let result = match self.channels.get_mut(&channel) {
                    Some(ch) => ch.handle_method(&mut self.ctx, method),
                    None => Ok(()),
                };
                self.after_channel_result(
                    channel,
                    result.map_err(|e| e.with_method(class_id, method_id)),
                )
            }
            Frame::Header { channel, payload } => match self.channels.get_mut(&channel) {
                Some(ch) if ch.closing => Ok(true),
                Some(ch) => {
                    let r = ch
                        .handle_header(&mut self.ctx, payload)
                        .map_err(|e| e.in_method(BASIC_PUBLISH));
                    self.after_channel_result(channel, r)
                }
                None => Err(unexpected_frame("content header", channel)),
            },
            Frame::Body { channel, payload } => match self.channels.get_mut(&channel) {
                Some(ch) if ch.closing => Ok(true),
                Some(ch) => {
                    let r = ch
                        .handle_body(&mut self.ctx, payload)
                        .map_err(|e| e.in_method(BASIC_PUBLISH));
                    self.after_channel_result(channel, r)
                }
                None => Err(unexpected_frame("content body", channel)),
            },
        }
    }

    /// Any channel number from 1 to 65535 may be used; `channel_max` limits
    /// how many channels are open at once (RabbitMQ 3.10's rule: opening
    /// one more is a connection error 530 with class and method 0).
    fn check_channel_count(&self) -> AmqpResult<()> {
        let open = self.channels.len();
        if open >= usize::from(self.channel_max) {
            return Err(AmqpError::connection(
                code::NOT_ALLOWED,
                format!(
                    "number of channels opened ({open}) has reached the negotiated channel_max ({})",
                    self.channel_max
                ),
            ));
        }
        Ok(())
    }

    /// Turns a channel error into channel.close; passes connection errors up.
    fn after_channel_result(&mut self, channel: u16, r: AmqpResult<()>) -> AmqpResult<bool> {
        match r {
            Ok(()) => Ok(true),
            Err(e) if e.scope == Scope::Connection => Err(e),
            Err(e) => {
                tracing::debug!(peer = %self.peer, channel, "channel error: {}", e.text.escape_debug());
                if let Some(ch) = self.channels.get_mut(&channel) {
                    ch.flush_confirms(&self.ctx);
                    ch.shutdown(&mut self.ctx);
                    ch.closing = true;
                }
                self.ctx
                    .send(channel, crate::session::channel::close_method(&e));
                Ok(true)
            }
        }
    }

    fn open_channel(&mut self, channel: u16, method: Method) -> AmqpResult<bool> {
        match method {
            Method::Other(AMQPClass::Channel(
                amq_protocol::protocol::channel::AMQPMethod::Open(_),
            )) => {
                self.channels
                    .insert(channel, Channel::new(channel, self.ctx.handle.clone()));
                self.ctx.send(
                    channel,
                    AMQPClass::Channel(amq_protocol::protocol::channel::AMQPMethod::OpenOk(
                        amq_protocol::protocol::channel::OpenOk {},
                    )),
                );
                Ok(true)
            }
            _ => Err(AmqpError::connection(
                code::CHANNEL_ERROR,
                "expected 'channel.open'",
            )),
        }
    }

    fn connection_method(&mut self, payload: bytes::Bytes) -> AmqpResult<bool> {
        let (class_id, method_id) = ids(&payload);
        match decode(payload)? {
            Method::Other(AMQPClass::Connection(conn_m::AMQPMethod::Close(c))) => {
                tracing::debug!(peer = %self.peer, "client closed the connection: {} {}", c.reply_code, c.reply_text.as_str().escape_debug());
                self.flush_confirms();
                self.cleanup();
                self.ctx.send(0, close_ok_method());
                Ok(false)
            }
            Method::Other(AMQPClass::Connection(conn_m::AMQPMethod::CloseOk(_))) => Ok(false),
            Method::Other(AMQPClass::Connection(conn_m::AMQPMethod::UpdateSecret(_))) => {
                self.ctx.send(
                    0,
                    AMQPClass::Connection(conn_m::AMQPMethod::UpdateSecretOk(
                        conn_m::UpdateSecretOk {},
                    )),
                );
                Ok(true)
            }
            _ => Err(AmqpError::connection(
                code::CHANNEL_ERROR,
                "unexpected method in connection state running",
            )
            .with_method(class_id, method_id)),
        }
    }

    /// Sends due confirms; channels still waiting for the message store
    /// stay in `confirms_due`.
    fn flush_confirms(&mut self) {
        let mut waiting = Vec::new();
        for id in std::mem::take(&mut self.ctx.confirms_due) {
            if let Some(ch) = self.channels.get_mut(&id)
                && ch.flush_confirms(&self.ctx)
            {
                waiting.push(id);
            }
        }
        self.ctx.confirms_due = waiting;
    }

    fn has_unacked(&self) -> bool {
        self.channels
            .values()
            .any(|ch| !ch.closing && ch.shared.unacked_count() > 0)
    }

    /// Closes (406) every channel holding a delivery unacked for longer than
    /// its consumer timeout; its unacked messages are requeued, as when any
    /// channel closes.
    fn check_consumer_timeouts(&mut self) -> AmqpResult<()> {
        let default = self.ctx.broker.config.limits.consumer_timeout;
        let now = crate::ops::timers::coarse_ms();
        let late: Vec<(u16, u64)> = self
            .channels
            .iter()
            .filter(|(_, ch)| !ch.closing)
            .filter_map(|(&id, ch)| ch.shared.timed_out(now, default).map(|t| (id, t)))
            .collect();
        for (channel, limit) in late {
            tracing::warn!(peer = %self.peer, channel,
                "consumer ack timed out on channel {channel} ({limit} ms); closing it");
            let e = AmqpError::channel(
                code::PRECONDITION_FAILED,
                format!(
                    "delivery acknowledgement on channel {channel} timed out. Timeout value used: {limit} ms. This timeout value can be configured, see consumers doc guide to learn more"
                ),
            );
            self.after_channel_result(channel, Err(e))?;
        }
        Ok(())
    }

    /// The outbound cap, for every writer: while this connection's own
    /// backlog (deliveries, basic.get-ok, returns, method replies) or that
    /// of a connection its direct replies go to is over the cap, its
    /// socket is not read, until that backlog is below LOW_WATER.
    fn hold(&mut self) -> Option<Arc<ConnectionHandle>> {
        if self.ctx.handle.over_cap() {
            return Some(self.ctx.handle.clone());
        }
        self.ctx
            .reply_wait
            .take()
            .filter(|t| t.over_cap() && !t.is_closing())
    }

    fn redispatch_all(&mut self) {
        for ch in self.channels.values() {
            ch.redispatch();
        }
    }

    /// Releases everything the connection holds: channels (requeueing unacked
    /// messages) and exclusive queues. Idempotent.
    fn cleanup(&mut self) {
        for (_, mut ch) in self.channels.drain() {
            ch.shutdown(&mut self.ctx);
        }
        for q in std::mem::take(&mut self.ctx.exclusive_queues) {
            if let Some(deleted) = self.ctx.vhost.remove_queue(&q) {
                crate::session::handlers::notify_deleted_consumers(&deleted.consumers);
            }
        }
    }
}

fn unexpected_frame(what: &str, channel: u16) -> AmqpError {
    AmqpError::connection(
        code::UNEXPECTED_FRAME,
        format!("{what} frame on channel {channel}, which is not open"),
    )
}
