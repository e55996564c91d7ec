//! Reading PEM certificates and keys for the TLS listeners and the
//! cluster's inter-node links, with errors that name the file at fault.

use std::path::Path;

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
}

/// The certificates in PEM file `path` (`what` names it in errors).
pub fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_file(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} {}: invalid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {}: no PEM certificate (BEGIN CERTIFICATE) found",
            path.display()
        ));
    }
    Ok(certs)
}

/// The private key in PEM file `path` (tls.key).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read_file(path, "tls.key")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        format!(
            "tls.key {}: no usable PEM private key (PKCS#8, RSA or EC): {e}",
            path.display()
        )
    })
}
