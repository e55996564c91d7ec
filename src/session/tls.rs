//! The TLS ("amqps") listener's configuration: the server certificate and
//! key, and optionally client-certificate verification (RabbitMQ's
//! `ssl_options`: `verify_peer`, `fail_if_no_peer_cert`). rustls with the
//! aws-lc-rs provider; TLS 1.2 and 1.3.

use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig, ServerConnection};

use crate::ops::config::TlsConfig;
use crate::ops::pem::{read_certs, read_key};

/// What a TLS connection negotiated, for the management API and EXTERNAL.
#[derive(Debug, Clone, Default)]
pub struct TlsSession {
    /// "tlsv1.3" or "tlsv1.2" (RabbitMQ's spelling).
    pub protocol: String,
    /// The cipher suite's name.
    pub cipher: String,
    /// The client certificate's subject ("CN=app, O=example"), when the
    /// client presented one (it was verified against `tls.ca`).
    pub peer_cert_subject: Option<String>,
    /// The client certificate's issuer.
    pub peer_cert_issuer: Option<String>,
    /// The client certificate subject's common name (the EXTERNAL user).
    pub peer_cn: Option<String>,
}

impl TlsSession {
    /// Whether the client presented a (verified) certificate.
    pub fn has_peer_cert(&self) -> bool {
        self.peer_cert_subject.is_some()
    }
}

/// Builds the acceptor from `[tls]`; errors name the file at fault.
pub fn acceptor(cfg: &TlsConfig) -> Result<TlsAcceptor, String> {
    let (Some(cert_path), Some(key_path)) = (&cfg.cert, &cfg.key) else {
        return Err("tls.cert and tls.key must both be set".into());
    };
    let certs = read_certs(cert_path, "tls.cert")?;
    let key = read_key(key_path)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = if cfg.verify_peer {
        let Some(ca_path) = &cfg.ca else {
            return Err("tls.verify_peer needs tls.ca".into());
        };
        let mut roots = RootCertStore::empty();
        for c in read_certs(ca_path, "tls.ca")? {
            roots.add(c).map_err(|e| {
                format!(
                    "tls.ca {}: not a usable CA certificate: {e}",
                    ca_path.display()
                )
            })?;
        }
        let mut v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        if !cfg.fail_if_no_peer_cert {
            v = v.allow_unauthenticated();
        }
        let v = v
            .build()
            .map_err(|e| format!("tls.ca {}: {e}", ca_path.display()))?;
        builder.with_client_cert_verifier(v)
    } else {
        builder.with_no_client_auth()
    };
    let config = builder.with_single_cert(certs, key).map_err(|e| {
        let why = match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                "the key does not belong to the certificate".to_owned()
            }
            e => e.to_string(),
        };
        format!(
            "tls.key {} and tls.cert {}: {why}",
            key_path.display(),
            cert_path.display()
        )
    })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// What the handshake negotiated, including the client certificate's names.
pub fn session(conn: &ServerConnection) -> TlsSession {
    let protocol = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "tlsv1.3".to_owned(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "tlsv1.2".to_owned(),
        Some(v) => format!("{v:?}"),
        None => String::new(),
    };
    let cipher = conn
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_default();
    let mut s = TlsSession {
        protocol,
        cipher,
        ..TlsSession::default()
    };
    if let Some(leaf) = conn.peer_certificates().and_then(|c| c.first()) {
        match x509_parser::parse_x509_certificate(leaf.as_ref()) {
            Ok((_, cert)) => {
                s.peer_cert_subject = Some(cert.subject().to_string());
                s.peer_cert_issuer = Some(cert.issuer().to_string());
                s.peer_cn = cert
                    .subject()
                    .iter_common_name()
                    .next()
                    .and_then(|cn| cn.as_str().ok())
                    .map(str::to_owned);
            }
            // rustls verified it, so this should not happen; without a
            // subject EXTERNAL has no user to log in.
            Err(_) => s.peer_cert_subject = Some(String::new()),
        }
    }
    s
}
