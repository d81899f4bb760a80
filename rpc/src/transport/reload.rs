//! Certificates swapped while a node runs. A renewed node certificate, or a new cluster
//! CA rolled out beside the old one, takes effect without a restart: new connections,
//! both ways, use the files as they are now, and a live connection whose peer's
//! certificate the CA file no longer vouches for is closed (the CA that signed it was
//! taken out). Files that do not load (written halfway, a key that does not match its
//! certificate) leave everything as it was.

use std::sync::{Arc, Weak};
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::{client_config, server_config, Transport};
use crate::certs::{TlsIdentity, TlsPaths};
use crate::RpcError;

/// QUIC application close code of a connection whose peer is no longer trusted.
const UNTRUSTED_CLOSE_CODE: u32 = 3;

impl Transport {
    /// Uses `identity` from now on; returns how many live connections it closed because
    /// their peer's certificate is no longer vouched for. On an error (certificates that
    /// do not make a TLS configuration) nothing changes.
    pub fn reload_tls(&self, identity: &TlsIdentity) -> Result<usize, RpcError> {
        let local = self.endpoint.local_addr()?;
        let client = client_config(identity, &self.config, self.config.mtu_bound(local))?;
        let server = match self.serving {
            true => Some(server_config(identity, &self.config, local)?),
            false => None,
        };
        let mut loopback = self.loopback.lock().expect("loopback lock");
        let loopback_client = match loopback.as_ref() {
            Some((endpoint, _)) => {
                let bound = self.config.mtu_bound(endpoint.local_addr()?);
                Some(client_config(identity, &self.config, bound)?)
            }
            None => None,
        };
        // Everything built: swap it all in.
        if let (Some(made), Some(client)) = (loopback.as_mut(), loopback_client) {
            made.1 = client;
        }
        drop(loopback);
        *self.client_config.write().expect("client config lock") = client;
        if let Some(server) = server {
            self.endpoint.set_server_config(Some(server));
        }
        *self.identity.write().expect("identity lock") = identity.clone();
        Ok(self.close_untrusted(identity))
    }

    /// Closes the connections, either way, whose peer `identity`'s CA does not vouch for.
    fn close_untrusted(&self, identity: &TlsIdentity) -> usize {
        let why = |conn: &quinn::Connection, as_server: bool| match peer_chain(conn) {
            Some(chain) => identity.vouches_for(&chain, as_server).err(),
            None => Some("it presented no certificate".to_string()),
        };
        let mut closed = 0;
        self.connections
            .lock()
            .expect("connections lock")
            .retain(|addr, peer| match why(&peer.conn, true) {
                None => true,
                Some(reason) => {
                    warn!(%addr, %reason, "closing a connection to a peer no longer trusted");
                    close_untrusted(&peer.conn);
                    closed += 1;
                    false
                }
            });
        for conn in self.incoming.lock().expect("incoming lock").values() {
            if let Some(reason) = why(conn, false) {
                let addr = conn.remote_address();
                warn!(%addr, %reason, "closing a connection from a peer no longer trusted");
                close_untrusted(conn);
                closed += 1;
            }
        }
        closed
    }

    fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::Relaxed)
    }
}

fn close_untrusted(conn: &quinn::Connection) {
    conn.close(
        UNTRUSTED_CLOSE_CODE.into(),
        b"peer certificate no longer trusted",
    );
}

/// The certificate chain the peer of `conn` presented.
fn peer_chain(conn: &quinn::Connection) -> Option<Vec<CertificateDer<'static>>> {
    conn.peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()
        .map(|chain| *chain)
}

/// Looks at `paths` every `reload-check-secs` and reloads `transports` (a node's
/// serving and calling endpoints) when the files change from what they held at the
/// start. Ends once every transport is closed or dropped; does nothing if
/// `reload-check-secs` is 0 or the files cannot be read now (a node whose certificates
/// did not come from them: tests, or an identity made in memory).
pub fn watch_tls(paths: TlsPaths, transports: &[Arc<Transport>]) -> JoinHandle<()> {
    let transports: Vec<Weak<Transport>> = transports.iter().map(Arc::downgrade).collect();
    tokio::spawn(async move {
        if paths.reload_check_secs == 0 {
            return;
        }
        let every = Duration::from_secs(paths.reload_check_secs);
        // What the node started with (read just before); a change from it is news.
        let read = || TlsIdentity::from_files(&paths.ca_cert, &paths.cert, &paths.key);
        let Ok(mut seen) = read() else {
            return;
        };
        loop {
            tokio::time::sleep(every).await;
            let live: Vec<Arc<Transport>> = transports
                .iter()
                .filter_map(Weak::upgrade)
                .filter(|t| !t.is_closed())
                .collect();
            if live.is_empty() {
                return;
            }
            let identity = match read() {
                Ok(identity) => identity,
                Err(e) => {
                    warn!(error = %e, "cannot read the TLS files; keeping the certificates in use");
                    continue;
                }
            };
            if seen == identity {
                continue;
            }
            // Tried once per change: a broken file is reported once, not every check.
            seen = identity.clone();
            // Each transport builds its settings before swapping any in; all build
            // alike from one identity, so the first error comes before any change.
            let reloaded: Result<Vec<usize>, RpcError> =
                live.iter().map(|t| t.reload_tls(&identity)).collect();
            match reloaded {
                Ok(closed) => info!(
                    cert = %paths.cert.display(),
                    ca = %paths.ca_cert.display(),
                    closed = closed.iter().sum::<usize>(),
                    "TLS certificates reloaded"
                ),
                Err(e) => {
                    warn!(error = %e, "the TLS files changed but make no TLS setup; keeping the certificates in use")
                }
            }
        }
    })
}
