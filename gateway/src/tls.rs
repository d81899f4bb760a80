//! HTTPS for the S3 endpoint: a certificate chain and key from PEM files, served with
//! rustls (TLS 1.2 and 1.3, HTTP/1.1). Without them the endpoint speaks plain HTTP.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tokio_rustls::TlsAcceptor;

/// Longest a client may take over its TLS handshake before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the endpoint's certificate and key are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct GatewayTls {
    /// PEM file with the endpoint's certificate, then any intermediates.
    pub cert: PathBuf,
    /// PEM file with its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

fn invalid(path: &Path, what: &str, e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("{what} {}: {e}", path.display()),
    )
}

/// A TLS acceptor serving `tls`'s certificate; a clear error naming the file when one
/// cannot be read or does not hold what it should.
pub fn acceptor(tls: &GatewayTls) -> std::io::Result<TlsAcceptor> {
    let chain = CertificateDer::pem_file_iter(&tls.cert)
        .map_err(|e| invalid(&tls.cert, "TLS certificate", e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(&tls.cert, "TLS certificate", e))?;
    if chain.is_empty() {
        return Err(invalid(
            &tls.cert,
            "TLS certificate",
            "no certificate in it",
        ));
    }
    let key =
        PrivateKeyDer::from_pem_file(&tls.key).map_err(|e| invalid(&tls.key, "TLS key", e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(&tls.cert, "TLS setup for", e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| invalid(&tls.key, "TLS certificate and key", e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
