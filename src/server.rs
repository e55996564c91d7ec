//! The AMQP listener: accepts TCP connections and runs one task per client.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::broker::Broker;
use crate::connection;

/// Binds the AMQP listener at the configured address.
pub async fn bind(broker: &Broker) -> std::io::Result<TcpListener> {
    let addr = SocketAddr::new(broker.config.bind, broker.config.port);
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
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}
