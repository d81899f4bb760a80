//! HTTPS for the S3 endpoint: a certificate chain and key from PEM files, served with
//! rustls (TLS 1.2 and 1.3, HTTP/1.1). Without them the endpoint speaks plain HTTP. The
//! files are read again every `reload-check-secs`: a renewed certificate is served to
//! new connections without a restart; files that do not load keep the one in use.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

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
    /// Seconds between looks at the two files for a renewed certificate.
    #[serde(default = "default_reload_check_secs")]
    pub reload_check_secs: u64,
}

fn default_reload_check_secs() -> u64 {
    10
}

impl GatewayTls {
    /// The files at `cert` and `key`, looked at again every 10 s.
    pub fn new(cert: PathBuf, key: PathBuf) -> GatewayTls {
        GatewayTls {
            cert,
            key,
            reload_check_secs: default_reload_check_secs(),
        }
    }
}

fn invalid(path: &Path, what: &str, e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("{what} {}: {e}", path.display()),
    )
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate and key served, and the bytes of the two files they came from.
#[derive(Debug)]
struct Served {
    files: [Vec<u8>; 2],
    key: Arc<CertifiedKey>,
}

/// The certificate and key in `tls`'s files; errors name the file at fault.
fn load(tls: &GatewayTls) -> std::io::Result<Served> {
    let read = |p: &Path, what| std::fs::read(p).map_err(|e| invalid(p, what, e));
    let (cert_pem, key_pem) = (
        read(&tls.cert, "TLS certificate")?,
        read(&tls.key, "TLS key")?,
    );
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
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
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| invalid(&tls.key, "TLS key", e))?;
    let certified = CertifiedKey::from_der(chain, key, &provider())
        .map_err(|e| invalid(&tls.key, "TLS certificate and key", e))?;
    Ok(Served {
        files: [cert_pem, key_pem],
        key: Arc::new(certified),
    })
}

/// The certificate served, swapped when its files change.
#[derive(Debug)]
pub struct Certificates {
    tls: GatewayTls,
    current: RwLock<Served>,
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("certificate lock").key.clone())
    }
}

impl Certificates {
    /// Loads the files again if they changed; keeps the certificate in use if they do
    /// not load (a renewal written halfway, say). True when it swapped.
    pub fn reload(&self) -> bool {
        match load(&self.tls) {
            Ok(loaded) => {
                let mut current = self.current.write().expect("certificate lock");
                if current.files == loaded.files {
                    return false;
                }
                *current = loaded;
                info!(cert = %self.tls.cert.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                warn!(error = %e, "TLS certificate files changed but do not load; keeping the current one");
                false
            }
        }
    }

    /// Looks at the files every `reload-check-secs` until `stop` changes.
    pub async fn watch(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let every = Duration::from_secs(self.tls.reload_check_secs.max(1));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => return,
            }
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || me.reload()).await;
        }
    }
}

/// The TLS side of a new connection, or why it failed (including a client that took
/// longer than `HANDSHAKE_TIMEOUT`).
pub async fn accept(
    acceptor: &TlsAcceptor,
    stream: tokio::net::TcpStream,
) -> std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(done) => done,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "TLS handshake timed out",
        )),
    }
}

/// A TLS acceptor serving `tls`'s certificate, and the handle that reloads it; a clear
/// error naming the file when one cannot be read or does not hold what it should.
pub fn acceptor(tls: &GatewayTls) -> std::io::Result<(TlsAcceptor, Arc<Certificates>)> {
    let certs = Arc::new(Certificates {
        tls: tls.clone(),
        current: RwLock::new(load(tls)?),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(&tls.cert, "TLS setup for", e))?
        .with_no_client_auth()
        .with_cert_resolver(certs.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((TlsAcceptor::from(Arc::new(config)), certs))
}
