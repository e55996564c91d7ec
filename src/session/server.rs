//! The AMQP listeners: accept TCP (and TLS) connections and run one task
//! per client.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::broker::Broker;
use crate::session::connection;

/// Binds one listener per address, all on `port`.
///
/// An IPv6 socket is made IPv6-only, so `["0.0.0.0", "::"]` binds both
/// families side by side. A listener that cannot bind is an error, except
/// an IPv6 loopback the machine does not have (IPv6 disabled), which is
/// skipped with a warning as long as another address is bound: the default
/// `["127.0.0.1", "::1"]` must work on such a machine.
pub fn bind_all(addrs: &[IpAddr], port: u16) -> Result<Vec<TcpListener>, String> {
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for ip in addrs {
        let addr = SocketAddr::new(*ip, port);
        match bind_one(addr) {
            Ok(l) => out.push(l),
            Err(e) if ip.is_ipv6() && ip.is_loopback() && ipv6_unavailable(&e) => {
                skipped.push((addr, e));
            }
            Err(e) => return Err(format!("cannot listen on {addr}: {e}")),
        }
    }
    if out.is_empty() {
        let why: Vec<String> = skipped.iter().map(|(a, e)| format!("{a}: {e}")).collect();
        return Err(format!("cannot listen on any address ({})", why.join("; ")));
    }
    for (addr, e) in skipped {
        tracing::warn!("not listening on {addr}: {e} (IPv6 is not available on this machine)");
    }
    Ok(out)
}

fn ipv6_unavailable(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EADDRNOTAVAIL) | Some(libc::EAFNOSUPPORT) | Some(libc::EPROTONOSUPPORT)
    )
}

fn bind_one(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Binds the AMQP listeners at the configured addresses.
pub fn bind(broker: &Broker) -> Result<Vec<TcpListener>, String> {
    bind_all(&broker.config.bind, broker.config.port)
}

/// Binds the TLS listeners (`[tls] port`) at the configured addresses.
pub fn bind_tls(broker: &Broker) -> Result<Vec<TcpListener>, String> {
    bind_all(&broker.config.bind, broker.config.tls.port)
}

/// Accepts connections on every listener until the task is dropped.
pub async fn serve(broker: Arc<Broker>, listeners: Vec<TcpListener>) {
    let mut tasks = tokio::task::JoinSet::new();
    for listener in listeners {
        tasks.spawn(serve_one(broker.clone(), listener));
    }
    while tasks.join_next().await.is_some() {}
}

/// One of `[limits] max_handshaking_connections`: taken when a socket is
/// accepted, given back when its connection is open (or ends first).
#[derive(Debug)]
pub struct HandshakeSlot(Arc<Broker>);

impl HandshakeSlot {
    /// Takes a slot, or None when every slot is taken (0: no limit).
    fn take(broker: &Arc<Broker>) -> Option<HandshakeSlot> {
        let max = broker.config.limits.max_handshaking_connections;
        let prev = broker.handshaking.fetch_add(1, Ordering::AcqRel);
        let slot = HandshakeSlot(broker.clone());
        (max == 0 || prev < max).then_some(slot)
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.0.handshaking.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A slot for a newly accepted socket; None (and a warning, at most once a
/// second) when too many connections are still in their handshake: the
/// socket is then closed at once.
fn admit(broker: &Arc<Broker>, peer: SocketAddr) -> Option<HandshakeSlot> {
    static LAST_WARNING: AtomicU64 = AtomicU64::new(0);
    let slot = HandshakeSlot::take(broker);
    if slot.is_none() {
        let now = crate::ops::clock::now_ms();
        let last = LAST_WARNING.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 1000
            && LAST_WARNING
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(%peer,
                "closing a new connection: {} connections are still in their handshake (limits.max_handshaking_connections)",
                broker.config.limits.max_handshaking_connections);
        }
    }
    slot
}

async fn serve_one(broker: Arc<Broker>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let Some(slot) = admit(&broker, peer) else {
                    drop(stream);
                    continue;
                };
                let broker = broker.clone();
                tokio::spawn(connection::serve(broker, stream, peer, slot));
            }
            Err(e) => accept_failed(e).await,
        }
    }
}

/// Accepts TLS connections on every listener until the task is dropped. The
/// TLS handshake runs in the connection's own task, so a slow client delays
/// nobody else.
pub async fn serve_tls(broker: Arc<Broker>, listeners: Vec<TcpListener>, acceptor: TlsAcceptor) {
    let mut tasks = tokio::task::JoinSet::new();
    for listener in listeners {
        tasks.spawn(serve_tls_one(broker.clone(), listener, acceptor.clone()));
    }
    while tasks.join_next().await.is_some() {}
}

async fn serve_tls_one(broker: Arc<Broker>, listener: TcpListener, acceptor: TlsAcceptor) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let Some(slot) = admit(&broker, peer) else {
                    drop(stream);
                    continue;
                };
                let broker = broker.clone();
                tokio::spawn(connection::serve_tls(
                    broker,
                    acceptor.clone(),
                    stream,
                    peer,
                    slot,
                ));
            }
            Err(e) => accept_failed(e).await,
        }
    }
}

async fn accept_failed(e: std::io::Error) {
    // EMFILE and friends: back off instead of spinning.
    tracing::warn!("accept failed: {e}");
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
}
