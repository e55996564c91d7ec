//! The HTTP API's connection loop: axum's router served by hyper with the
//! limits `[http]` sets, which `axum::serve` has no knobs for: at most
//! `max_connections` connections (further clients wait in the listen queue,
//! so HTTP cannot take the file descriptors AMQP needs), a complete request
//! header within `idle_timeout` (idle keep-alive and slow-header clients are
//! closed), and no response write stalled longer than `send_timeout`.
//! Bodies are bounded where they are read (`RequestBody`).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::ops::config::HttpConfig;

/// Accepts connections on every listener and serves `app` on each, forever;
/// the connection cap is shared by all listeners.
pub async fn run(app: Router, listeners: Vec<TcpListener>, limits: HttpConfig) {
    let fds = super::system::max_fds() as usize;
    if fds > 0 && (limits.max_connections == 0 || limits.max_connections > fds / 2) {
        tracing::warn!(
            "[http] max_connections ({}) leaves AMQP connections few of the {fds} file \
             descriptors this process may open; lower it or raise the limit (ulimit -n)",
            limits.max_connections
        );
    }
    let slots = Arc::new(Semaphore::new(match limits.max_connections {
        0 => Semaphore::MAX_PERMITS,
        n => n,
    }));
    let limits = Arc::new(limits);
    let mut tasks = tokio::task::JoinSet::new();
    for listener in listeners {
        tasks.spawn(accept_loop(
            app.clone(),
            listener,
            limits.clone(),
            slots.clone(),
        ));
    }
    while tasks.join_next().await.is_some() {}
}

async fn accept_loop(
    app: Router,
    listener: TcpListener,
    limits: Arc<HttpConfig>,
    slots: Arc<Semaphore>,
) {
    loop {
        // Waiting for a slot before accepting leaves further clients in the
        // kernel's listen queue, holding no descriptor of ours.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors (or similar): retry later, no busy loop.
                tracing::warn!("HTTP accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(connection(stream, peer, app.clone(), limits.clone(), slot));
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: Arc<HttpConfig>,
    _slot: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(SendTimeout::new(stream, secs(limits.send_timeout)));
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        trim_trailing_slash(&mut req);
        let mut app = app.clone();
        async move {
            let r: Result<_, Infallible> = tower_service::Service::call(&mut app, req).await;
            r
        }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(secs(limits.idle_timeout));
    if let Err(e) = http.serve_connection(io, service).await {
        tracing::debug!("HTTP connection from {peer} ended: {e}");
    }
}

/// `/api/connections/` is `/api/connections`, as RabbitMQ's management API
/// answers both (client test suites list connections with the slash).
fn trim_trailing_slash<B>(req: &mut hyper::Request<B>) {
    let uri = req.uri();
    let path = uri.path();
    if path.len() <= 1 || !path.ends_with('/') {
        return;
    }
    let trimmed = path.trim_end_matches('/');
    let trimmed = if trimmed.is_empty() { "/" } else { trimmed };
    let new = match uri.query() {
        Some(q) => format!("{trimmed}?{q}"),
        None => trimmed.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    if let Ok(pq) = new.parse::<hyper::http::uri::PathAndQuery>() {
        parts.path_and_query = Some(pq);
        if let Ok(u) = hyper::Uri::from_parts(parts) {
            *req.uri_mut() = u;
        }
    }
}

/// `None` (no limit) for 0.
fn secs(n: u64) -> Option<Duration> {
    (n > 0).then(|| Duration::from_secs(n))
}

/// A socket whose writes fail with `TimedOut` once one has waited longer
/// than the limit for the peer to read.
struct SendTimeout {
    inner: TcpStream,
    limit: Option<Duration>,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl SendTimeout {
    fn new(inner: TcpStream, limit: Option<Duration>) -> SendTimeout {
        SendTimeout {
            inner,
            limit,
            stalled: None,
        }
    }

    /// Passes a write's result on, turning a wait past the limit into an error.
    fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if r.is_ready() {
            self.stalled = None;
            return r;
        }
        let Some(limit) = self.limit else {
            return r;
        };
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client did not read the response in time",
            )));
        }
        Poll::Pending
    }
}

impl AsyncRead for SendTimeout {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for SendTimeout {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
