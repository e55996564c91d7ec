//! TLS for the inter-node links (`[cluster] tls = true`): every node
//! presents `[tls]`'s certificate, as server and as client, and verifies
//! the other side's against `[tls] ca`, so only nodes holding a
//! certificate of the cluster's CA (and its secret) take part.

use std::sync::Arc;

use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::ops::config::TlsConfig;
use crate::ops::pem::{read_certs, read_key};

/// Both ends of the inter-node TLS.
#[derive(Clone)]
pub struct Tls {
    /// Takes connections from other nodes.
    pub acceptor: TlsAcceptor,
    /// Opens connections to other nodes.
    pub connector: TlsConnector,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

impl Tls {
    /// Builds both ends from `[tls]` (cert, key and ca all needed).
    pub fn from_config(cfg: &TlsConfig) -> Result<Tls, String> {
        let (Some(cert), Some(key), Some(ca)) = (&cfg.cert, &cfg.key, &cfg.ca) else {
            return Err("[cluster] tls needs [tls] cert, key and ca".into());
        };
        let certs = read_certs(cert, "tls.cert")?;
        let key = read_key(key)?;
        let mut roots = RootCertStore::empty();
        for c in read_certs(ca, "tls.ca")? {
            roots.add(c).map_err(|e| {
                format!("tls.ca {}: not a usable CA certificate: {e}", ca.display())
            })?;
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| format!("tls.ca {}: {e}", ca.display()))?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(|e| format!("tls.cert and tls.key: {e}"))?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(|e| format!("tls.cert and tls.key: {e}"))?;
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
        })
    }

    /// The name a node at `addr` ("HOST:PORT") must have in its
    /// certificate: its host (an IP address or a DNS name).
    pub fn server_name(addr: &str) -> std::io::Result<ServerName<'static>> {
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(host.to_owned()).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("'{host}' is not a host name for TLS: {e}"),
            )
        })
    }
}
