//! The cluster CA and node certificates: creating them (`shale certs`) and loading them
//! into rustls configurations for mutual TLS. Every node presents a certificate signed by
//! the cluster CA and accepts only peers that do the same.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde::{Deserialize, Serialize};

use crate::RpcError;

/// The name every node certificate carries and every client asks for in TLS. Nodes are
/// identified by the cluster CA's signature, not by their host names, so a node can
/// move between addresses without new certificates.
pub const NODE_SERVER_NAME: &str = "shale-node";
/// The wire version of Shale's node-to-node protocol this build speaks best. Nodes name
/// the versions they speak as ALPN protocol ids (`shale/N`) in the TLS handshake, and a
/// connection speaks the newest both sides name; nodes with none in common refuse each
/// other at the handshake ("no application protocol") instead of misreading each
/// other's frames. Messages are postcard, which carries no field tags: any change to a
/// message's form is a new version, and a build also speaks the version before its own
/// (`WIRE_VERSION_OLDEST`), writing to a peer of that version only what it can read, so
/// a cluster upgrades one node at a time.
///
/// Version 2: the snapshot transfer of session 23 (a header, then batches of pairs).
/// Version 3: a removed replica's destroy notice names the replica (session 25). Version
/// 4: range status and leader reports name the range's learners (session 26). Version 5:
/// they name its silent learners too (session 27). Version 6: replicas exchange their
/// data's checksums in Raft batches, and reports name diverged replicas (session 28).
/// Version 7: heartbeats say whether a store is low on disk space, placement's answers
/// name the low stores, and `KvError::NoSpace` (session 29). Version 8: merges — new
/// Raft log commands an older store could not apply, merge admin requests and placement
/// steps, frozen replicas in status and leaderless reports (session 30). Version 9: a
/// snapshot header carries its range's freeze for a merge (session 31); a peer of
/// version 8 is sent no snapshot of a frozen range, as version 8 built none.
pub const WIRE_VERSION: u8 = 9;
/// The oldest wire version this build still speaks.
pub const WIRE_VERSION_OLDEST: u8 = 8;

/// The ALPN protocol id of wire version `version`.
pub fn alpn(version: u8) -> Vec<u8> {
    format!("shale/{version}").into_bytes()
}

/// The ALPN ids a node whose newest wire version is `newest` offers, newest first (a
/// TLS server picks the first of its own list that the client offers too).
pub fn alpn_offered(newest: u8) -> Vec<Vec<u8>> {
    (WIRE_VERSION_OLDEST..=newest.min(WIRE_VERSION))
        .rev()
        .map(alpn)
        .collect()
}

/// The wire version an ALPN id names, if it is one this build speaks.
pub fn version_of_alpn(id: &[u8]) -> Option<u8> {
    (WIRE_VERSION_OLDEST..=WIRE_VERSION).find(|&v| alpn(v) == id)
}

const CA_COMMON_NAME: &str = "Shale cluster CA";
/// File names inside a certificate directory.
pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";

/// A certificate and its private key, PEM-encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PemPair {
    pub cert_pem: String,
    pub key_pem: String,
}

fn rcgen_err(e: rcgen::Error) -> RpcError {
    RpcError::Certs(e.to_string())
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    dn.push(DnType::OrganizationName, "Shale");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    params
}

/// Creates a new cluster CA.
pub fn generate_ca() -> Result<PemPair, RpcError> {
    let key = KeyPair::generate().map_err(rcgen_err)?;
    let cert = ca_params().self_signed(&key).map_err(rcgen_err)?;
    Ok(PemPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Issues a node certificate (usable as TLS server and client) signed by the CA. `names`
/// are extra DNS names or IP addresses to put in it besides [`NODE_SERVER_NAME`].
pub fn issue_node_cert(
    ca: &PemPair,
    common_name: &str,
    names: &[String],
) -> Result<PemPair, RpcError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(rcgen_err)?;
    let issuer = Issuer::new(ca_params(), ca_key);
    let mut sans = vec![NODE_SERVER_NAME.to_string()];
    sans.extend(names.iter().cloned());
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans
        .iter()
        .map(|name| match name.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => name
                .clone()
                .try_into()
                .map(SanType::DnsName)
                .map_err(rcgen_err),
        })
        .collect::<Result<_, _>>()?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    let key = KeyPair::generate().map_err(rcgen_err)?;
    let cert = params.signed_by(&key, &issuer).map_err(rcgen_err)?;
    Ok(PemPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Writes `ca.pem`/`ca.key` into `dir`, refusing to overwrite an existing CA.
pub fn init_ca_dir(dir: &Path) -> Result<PemPair, RpcError> {
    let cert_path = dir.join(CA_CERT_FILE);
    if cert_path.exists() {
        return Err(RpcError::Certs(format!(
            "{} already exists; refusing to replace the cluster CA",
            cert_path.display()
        )));
    }
    std::fs::create_dir_all(dir)?;
    let ca = generate_ca()?;
    write_pair(dir, "ca", &ca)?;
    Ok(ca)
}

/// Reads the CA pair from `dir`.
pub fn load_ca_dir(dir: &Path) -> Result<PemPair, RpcError> {
    read_pair(&dir.join(CA_CERT_FILE), &dir.join(CA_KEY_FILE))
}

/// Writes `NAME.pem` and `NAME.key` (the key readable by the owner only).
pub fn write_pair(dir: &Path, name: &str, pair: &PemPair) -> Result<(), RpcError> {
    std::fs::write(dir.join(format!("{name}.pem")), &pair.cert_pem)?;
    let key_path = dir.join(format!("{name}.key"));
    std::fs::write(&key_path, &pair.key_pem)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

fn read_pair(cert: &Path, key: &Path) -> Result<PemPair, RpcError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .map_err(|e| RpcError::Certs(format!("read {}: {e}", p.display())))
    };
    Ok(PemPair {
        cert_pem: read(cert)?,
        key_pem: read(key)?,
    })
}

/// Paths of a node's PEM files for mutual TLS (`[tls]` in its config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct TlsPaths {
    /// The cluster CA certificate(s); peers must present certificates one of them
    /// signed. During a CA rotation it holds the old CA and the new one.
    pub ca_cert: PathBuf,
    /// This node's certificate, signed by the cluster CA.
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
    /// Seconds between looks at the three files: once they change (and load), new
    /// connections use them, and live ones with a peer whose certificate the CA file no
    /// longer vouches for are closed. 0: read only at start.
    pub reload_check_secs: u64,
}

impl Default for TlsPaths {
    fn default() -> Self {
        TlsPaths {
            ca_cert: PathBuf::from("certs/ca.pem"),
            cert: PathBuf::from("certs/node.pem"),
            key: PathBuf::from("certs/node.key"),
            reload_check_secs: 10,
        }
    }
}

/// What a node needs for mutual TLS: the cluster CA certificate and its own pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsIdentity {
    pub ca_cert_pem: String,
    pub node: PemPair,
}

impl TlsIdentity {
    /// Loads the CA certificate and the node's certificate and key from files.
    pub fn from_files(ca_cert: &Path, cert: &Path, key: &Path) -> Result<Self, RpcError> {
        let ca_cert_pem = std::fs::read_to_string(ca_cert).map_err(|e| {
            RpcError::Certs(format!("read CA certificate {}: {e}", ca_cert.display()))
        })?;
        Ok(TlsIdentity {
            ca_cert_pem,
            node: read_pair(cert, key)?,
        })
    }

    /// A fresh CA and one node certificate signed by it, all in memory (tests, `shale dev`).
    pub fn generate_cluster() -> Result<(PemPair, TlsIdentity), RpcError> {
        let ca = generate_ca()?;
        let node = issue_node_cert(&ca, "node", &["localhost".into(), "127.0.0.1".into()])?;
        let identity = TlsIdentity {
            ca_cert_pem: ca.cert_pem.clone(),
            node,
        };
        Ok((ca, identity))
    }

    fn roots(&self) -> Result<rustls::RootCertStore, RpcError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_cert_pem.as_bytes()) {
            let cert = cert.map_err(|e| RpcError::Certs(format!("CA certificate PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| RpcError::Certs(format!("CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(RpcError::Certs(
                "CA certificate file holds no certificate".into(),
            ));
        }
        Ok(roots)
    }

    fn chain_and_key(
        &self,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), RpcError> {
        let chain = CertificateDer::pem_slice_iter(self.node.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| RpcError::Certs(format!("node certificate PEM: {e}")))?;
        if chain.is_empty() {
            return Err(RpcError::Certs(
                "node certificate file holds no certificate".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(self.node.key_pem.as_bytes())
            .map_err(|e| RpcError::Certs(format!("node key PEM: {e}")))?;
        Ok((chain, key))
    }

    /// Whether the CA certificates vouch for a peer's certificate `chain` (its own
    /// first): as a server's (`as_server`, the name every node carries) or a client's.
    /// Why not, if they do not.
    pub fn vouches_for(&self, chain: &[CertificateDer<'_>], as_server: bool) -> Result<(), String> {
        let (end, intermediates) = chain
            .split_first()
            .ok_or_else(|| "no certificate presented".to_string())?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = Arc::new(self.roots().map_err(|e| e.to_string())?);
        let now = UnixTime::now();
        if as_server {
            let verifier =
                rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| e.to_string())?;
            let name = ServerName::try_from(NODE_SERVER_NAME).map_err(|e| e.to_string())?;
            rustls::client::danger::ServerCertVerifier::verify_server_cert(
                verifier.as_ref(),
                end,
                intermediates,
                &name,
                &[],
                now,
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
        } else {
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| e.to_string())?;
            rustls::server::danger::ClientCertVerifier::verify_client_cert(
                verifier.as_ref(),
                end,
                intermediates,
                now,
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
        }
    }

    /// TLS server side: requires a client certificate signed by the cluster CA.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, RpcError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(self.roots()?),
            provider.clone(),
        )
        .build()
        .map_err(|e| RpcError::Tls(e.to_string()))?;
        let (chain, key) = self.chain_and_key()?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| RpcError::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| RpcError::Tls(e.to_string()))?;
        config.alpn_protocols = alpn_offered(WIRE_VERSION);
        Ok(config)
    }

    /// TLS client side: presents the node certificate, trusts only the cluster CA.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, RpcError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (chain, key) = self.chain_and_key()?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| RpcError::Tls(e.to_string()))?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(chain, key)
            .map_err(|e| RpcError::Tls(e.to_string()))?;
        config.alpn_protocols = alpn_offered(WIRE_VERSION);
        Ok(config)
    }
}
