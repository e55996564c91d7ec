//! The AMQP handshake, one step per function: connection.start (server
//! properties and mechanisms), SASL (PLAIN, AMQPLAIN, EXTERNAL; failed-login
//! delays, loopback-only users), connection.tune (frame_max, channel_max,
//! heartbeat) and connection.open (vhost, permissions, connection limits,
//! registration with the broker).
//!
//! Owns: everything between the protocol header and open-ok. It reads
//! through the connection's `Reader` and hands the frame loop a `Handshake`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use amq_protocol::protocol::{AMQPClass, connection as conn_m};
use amq_protocol::types::{AMQPValue, FieldTable};
use tokio::io::AsyncRead;

use crate::broker::Broker;
use crate::ops::config::AmqpConfig;
use crate::protocol::codec::FRAME_MIN_SIZE;
use crate::protocol::error::{AmqpError, AmqpResult, code};
use crate::protocol::methods::write_method;
use crate::session::method_ids::{CONNECTION_OPEN, InMethod};
use crate::session::outbound::{ConnInfo, ConnectionHandle};
use crate::session::reader::Reader;
use crate::session::tls::TlsSession;
use crate::vhost::VHost;

/// What an opened connection's frame loop starts from.
pub(super) struct Handshake {
    /// The vhost connection.open named.
    pub(super) vhost: Arc<VHost>,
    /// The authenticated user.
    pub(super) user: String,
    /// The negotiated channel_max (`u16::MAX` for "no limit").
    pub(super) channel_max: u16,
    /// The negotiated heartbeat, in seconds (0: none).
    pub(super) heartbeat: u16,
}

/// The two ends of a client's TCP connection.
#[derive(Clone, Copy)]
pub(super) struct Peer {
    /// The client's address.
    pub(super) peer: SocketAddr,
    /// The local address it connected to.
    pub(super) local: SocketAddr,
}

/// A successful login: who, and by which SASL mechanism.
struct Login {
    user: String,
    mechanism: String,
    /// start-ok's client properties.
    client_properties: FieldTable,
}

/// What connection.tune-ok settled.
struct Tuned {
    channel_max: u16,
    heartbeat: u16,
}

/// connection.start's server-properties: RabbitMQ 3.10's capabilities.
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
    let s = crate::protocol::fields::long_string;
    p.insert("capabilities".into(), AMQPValue::FieldTable(caps));
    // Clients and their test suites decide behaviour by these two (kombu
    // picks RabbitMQ's per-consumer prefetch semantics from them,
    // amqp091-go's RabbitMQ-specific tests gate on them): warren behaves as
    // RabbitMQ 3.10 and says so, as its HTTP API does with
    // rabbitmq_version. warren's own name and version follow.
    p.insert("product".into(), s("RabbitMQ"));
    p.insert(
        "version".into(),
        s(crate::protocol::RABBITMQ_COMPAT_VERSION),
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

/// Whether the client's properties announce capability `name`.
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
            let get = |k: &str| {
                table
                    .inner()
                    .get(k)
                    .and_then(crate::protocol::fields::string)
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
pub(super) async fn handshake<R: AsyncRead + Unpin>(
    broker: &Broker,
    handle: &Arc<ConnectionHandle>,
    reader: &mut Reader<R>,
    ends: Peer,
    tls: Option<&TlsSession>,
) -> AmqpResult<Option<Handshake>> {
    let start_ok = start(handle, reader, tls).await?;
    let Some(login) = authenticate(broker, ends.peer, tls, start_ok).await? else {
        return Ok(None);
    };
    handle.cancel_notify.store(
        capability(&login.client_properties, "consumer_cancel_notify"),
        Ordering::Relaxed,
    );
    handle.blocked_notify.store(
        capability(&login.client_properties, "connection.blocked"),
        Ordering::Relaxed,
    );
    let tuned = tune(broker, handle, reader).await?;
    open(broker, handle, reader, ends, tls, login, tuned)
        .await
        .map(Some)
}

/// connection.start, answered by connection.start-ok.
async fn start<R: AsyncRead + Unpin>(
    handle: &ConnectionHandle,
    reader: &mut Reader<R>,
    tls: Option<&TlsSession>,
) -> AmqpResult<conn_m::StartOk> {
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
    Ok(start_ok)
}

/// SASL: checks start-ok's credentials (or the client certificate, for
/// EXTERNAL) and the loopback-only rule. `Ok(None)`: refused without a
/// close frame (the client did not ask for authentication_failure_close).
async fn authenticate(
    broker: &Broker,
    peer: SocketAddr,
    tls: Option<&TlsSession>,
    start_ok: conn_m::StartOk,
) -> AmqpResult<Option<Login>> {
    let failure_close = capability(&start_ok.client_properties, "authentication_failure_close");
    let ip = peer.ip().to_canonical();
    let mechanism = start_ok.mechanism.as_str().to_owned();
    let (user, authenticated) = if mechanism == "EXTERNAL" {
        external_user(broker, peer, tls)?
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
            delay_failed_login(broker, peer, &user).await;
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
    Ok(Some(Login {
        user,
        mechanism,
        client_properties: start_ok.client_properties,
    }))
}

/// EXTERNAL: the user is the verified client certificate's CN; it must
/// exist, its password is not checked (RabbitMQ's rabbit_auth_mechanism_ssl).
/// Returns (user, whether it exists).
fn external_user(
    broker: &Broker,
    peer: SocketAddr,
    tls: Option<&TlsSession>,
) -> AmqpResult<(String, bool)> {
    let Some(session) = tls.filter(|t| t.has_peer_cert()) else {
        return Err(AmqpError::connection(
            code::COMMAND_INVALID,
            "invalid authentication mechanism 'EXTERNAL'",
        ));
    };
    Ok(match &session.peer_cn {
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
    })
}

/// Wrong logins are slowed down, per address and user name; the right
/// password is never held up (login_limit.rs).
async fn delay_failed_login(broker: &Broker, peer: SocketAddr, user: &str) {
    let ip = peer.ip().to_canonical();
    let r = broker.failed_logins.record_failure(ip, user);
    if r.first_delayed {
        tracing::warn!(%peer, user = %user.escape_debug(),
            "{} failed logins in a row from {ip} for this user: refusals are now delayed", r.failures);
    }
    if !r.delay.is_zero() {
        tokio::time::sleep(r.delay).await;
    }
}

/// connection.tune, answered by connection.tune-ok; applies the
/// negotiated frame_max to the reader and the writer.
async fn tune<R: AsyncRead + Unpin>(
    broker: &Broker,
    handle: &ConnectionHandle,
    reader: &mut Reader<R>,
) -> AmqpResult<Tuned> {
    let limits = &broker.config.amqp;
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
    check_tune_ok(limits, &tune)?;
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
    Ok(Tuned {
        channel_max,
        heartbeat: tune.heartbeat,
    })
}

/// As RabbitMQ: a client may lower the server's limits but not raise them.
fn check_tune_ok(limits: &AmqpConfig, tune: &conn_m::TuneOk) -> AmqpResult<()> {
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
    Ok(())
}

/// connection.open: the vhost must exist and the user have permissions on
/// it; within the connection limits, the connection is registered with
/// the broker and gets open-ok.
async fn open<R: AsyncRead + Unpin>(
    broker: &Broker,
    handle: &Arc<ConnectionHandle>,
    reader: &mut Reader<R>,
    ends: Peer,
    tls: Option<&TlsSession>,
    login: Login,
    tuned: Tuned,
) -> AmqpResult<Handshake> {
    let Some(AMQPClass::Connection(conn_m::AMQPMethod::Open(open))) =
        reader.expect_method().await?
    else {
        return Err(AmqpError::connection(
            code::COMMAND_INVALID,
            "expected connection.open",
        ));
    };
    let Login {
        user,
        mechanism,
        client_properties,
    } = login;
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
    let _ = handle.info.set(ConnInfo {
        peer: ends.peer,
        local: ends.local,
        user: user.clone(),
        vhost: vhost_name.to_owned(),
        client_properties,
        connected_at: std::time::SystemTime::now(),
        channel_max: tuned.channel_max,
        heartbeat: tuned.heartbeat,
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
    Ok(Handshake {
        vhost,
        user,
        channel_max: tuned.channel_max,
        heartbeat: tuned.heartbeat,
    })
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
    let open = broker.connections::<ConnectionHandle>();
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
