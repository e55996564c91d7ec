//! The AMQP listeners: accept TCP (and TLS) connections and run one task
//! per client.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::broker::Broker;
use crate::connection;

/// Binds the AMQP listener at the configured address.
pub async fn bind(broker: &Broker) -> std::io::Result<TcpListener> {
    let addr = SocketAddr::new(broker.config.bind, broker.config.port);
    TcpListener::bind(addr).await
}

/// Binds the TLS listener (`[tls] port`) at the configured address.
pub async fn bind_tls(broker: &Broker) -> std::io::Result<TcpListener> {
    let addr = SocketAddr::new(broker.config.bind, broker.config.tls.port);
    TcpListener::bind(addr).await
}

/// Accepts connections until the task is dropped.
pub async fn serve(broker: Arc<Broker>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let broker = broker.clone();
                tokio::spawn(connection::serve(broker, stream, peer));
            }
            Err(e) => accept_failed(e).await,
        }
    }
}

/// Accepts TLS connections until the task is dropped. The TLS handshake
/// runs in the connection's own task, so a slow client delays nobody else.
pub async fn serve_tls(broker: Arc<Broker>, listener: TcpListener, acceptor: TlsAcceptor) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let broker = broker.clone();
                tokio::spawn(connection::serve_tls(
                    broker,
                    acceptor.clone(),
                    stream,
                    peer,
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
