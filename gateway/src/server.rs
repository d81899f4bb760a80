//! The HTTP side: binds the S3 endpoint and serves connections until shut down.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::service::S3ServiceBuilder;
use serde::{Deserialize, Serialize};
use shale_rpc::client::KvClient;
use tokio::sync::watch;
use tracing::{debug, info};

use crate::access::PublicReadAccess;
use crate::keys::ClusterAuth;
use crate::objects::{LocalChunks, ObjectStore};
use crate::s3::ShaleS3;
use crate::tls::GatewayTls;

/// What a gateway needs besides its cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct GatewayConfig {
    /// TCP address of the S3 endpoint.
    pub listen_addr: String,
    /// An access key that always works (besides the keys kept in the cluster, which
    /// `shale ctl keys` manages); empty for none.
    pub access_key: String,
    /// Its secret.
    pub secret_key: String,
    /// The endpoint's public host (with port) for virtual-host-style requests, e.g.
    /// `s3.example.com:9000`; path-style requests work without it.
    pub host: Option<String>,
    /// Multipart uploads older than this are aborted in the background (their parts'
    /// chunks dropped). Any gateway may do it; aborting twice is harmless.
    pub abandoned_upload_secs: u64,
    /// How often the gateway looks for abandoned uploads.
    pub upload_gc_interval_secs: u64,
    /// Chunks that no object or part points at (left by a gateway that died mid-upload,
    /// say) are deleted once older than this. A single upload's body must arrive within
    /// half of it, or the upload fails with RequestTimeout. Give every gateway of a
    /// cluster the same value.
    pub orphan_chunk_secs: u64,
    /// How often some gateway sweeps the cluster for such chunks (a full walk of object
    /// records and chunk keys; a gateway skips it if another did it within this time).
    pub chunk_gc_interval_secs: u64,
    /// How often some gateway applies buckets' lifecycle rules (expiring objects,
    /// aborting old uploads); a gateway skips it if another did it within this time.
    pub lifecycle_interval_secs: u64,
    /// Stores to read object chunks from before asking a range's leader, in this order
    /// (those holding the chunk's range): the store on this gateway's host, say, so
    /// bulk bytes stay on the host and reads spread over replicas. Empty: leaders only.
    pub near_store_ids: Vec<u64>,
    /// Serve HTTPS with this certificate and key (`[tls]` with `cert` and `key`, PEM
    /// files); without it, plain HTTP.
    pub tls: Option<GatewayTls>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen_addr: "127.0.0.1:9000".into(),
            access_key: String::new(),
            secret_key: String::new(),
            host: None,
            abandoned_upload_secs: 7 * 24 * 3600,
            upload_gc_interval_secs: 600,
            orphan_chunk_secs: 24 * 3600,
            chunk_gc_interval_secs: 6 * 3600,
            lifecycle_interval_secs: 3600,
            near_store_ids: Vec::new(),
            tls: None,
        }
    }
}

/// A running S3 endpoint.
pub struct Gateway {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Gateway {
    /// Binds the endpoint and starts serving.
    pub async fn start(config: &GatewayConfig, kv: Arc<KvClient>) -> std::io::Result<Gateway> {
        Gateway::start_with_local(config, kv, None).await
    }

    /// As [`Gateway::start`], for a gateway in the same process as stores: chunks are
    /// read from their engines directly when they hold them.
    pub async fn start_with_local(
        config: &GatewayConfig,
        kv: Arc<KvClient>,
        local: Option<Arc<dyn LocalChunks>>,
    ) -> std::io::Result<Gateway> {
        if config.access_key.is_empty() != config.secret_key.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "give both an access key and a secret key, or neither",
            ));
        }
        let bootstrap = (!config.access_key.is_empty())
            .then(|| (config.access_key.clone(), config.secret_key.clone()));
        let objects = ObjectStore::new(kv.clone())
            .with_body_deadline_ms(config.orphan_chunk_secs.saturating_mul(1000) / 2)
            .with_local_chunks(local)
            .with_near_stores(&config.near_store_ids);
        let mut builder = S3ServiceBuilder::new(ShaleS3::new(objects.clone()));
        builder.set_auth(ClusterAuth::new(kv, bootstrap));
        builder.set_access(PublicReadAccess::new(objects.clone()));
        if let Some(host) = &config.host {
            let domain = s3s::host::SingleDomain::new(host).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("host {host:?}: {e}"),
                )
            })?;
            builder.set_host(domain);
        }
        let service = CloseAfterRefusal(builder.build());
        let tls = config.tls.as_ref().map(crate::tls::acceptor).transpose()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let listener = tokio::net::TcpListener::bind(&config.listen_addr).await?;
        let addr = listener.local_addr()?;
        let (stop, mut stopped) = watch::channel(false);
        let schedule = crate::gc::Schedule {
            upload_age_ms: config.abandoned_upload_secs.saturating_mul(1000),
            upload_interval: Duration::from_secs(config.upload_gc_interval_secs.max(1)),
            chunk_age_ms: config.orphan_chunk_secs.saturating_mul(1000),
            chunk_interval: Duration::from_secs(config.chunk_gc_interval_secs.max(1)),
            lifecycle_interval: Duration::from_secs(config.lifecycle_interval_secs.max(1)),
        };
        tokio::spawn(crate::gc::run(objects, schedule, stop.subscribe()));
        let tls = tls.map(|(acceptor, certs)| {
            tokio::spawn(certs.watch(stop.subscribe()));
            acceptor
        });
        let task = tokio::spawn(async move {
            let graceful = hyper_util::server::graceful::GracefulShutdown::new();
            let http = ConnBuilder::new(TokioExecutor::new());
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, peer)) => {
                            // Each connection in its own task, its TLS handshake too, so a
                            // slow or silent client holds up nobody else.
                            let (tls, http, service) = (tls.clone(), http.clone(), service.clone());
                            let watcher = graceful.watcher();
                            tokio::spawn(async move {
                                let served = match tls {
                                    None => {
                                        let conn = http.serve_connection(TokioIo::new(stream), service);
                                        watcher.watch(conn.into_owned()).await
                                    }
                                    Some(acceptor) => match crate::tls::accept(&acceptor, stream).await {
                                        Ok(stream) => {
                                            let conn = http.serve_connection(TokioIo::new(stream), service);
                                            watcher.watch(conn.into_owned()).await
                                        }
                                        Err(e) => {
                                            debug!(%peer, error = %e, "TLS handshake failed");
                                            return;
                                        }
                                    },
                                };
                                if let Err(e) = served {
                                    debug!(error = %e, "S3 connection ended with an error");
                                }
                            });
                        }
                        Err(e) => debug!(error = %e, "accept failed"),
                    },
                    _ = stopped.changed() => break,
                }
            }
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(10), graceful.shutdown()).await;
        });
        info!(%addr, scheme, "S3 endpoint listening");
        Ok(Gateway { addr, stop, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets requests in flight finish (up to 10 s).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// The S3 service, closing the connection after an error answer to a request that
/// declared a body. Such answers often come before the body is read (a refused
/// signature, a missing bucket or upload), and clients disagree on what follows: one
/// waiting for `100 Continue` may send the body anyway, another not at all, so the next
/// request on the connection would be read from the wrong byte. Closing settles it; the
/// client's next request opens a fresh connection.
#[derive(Clone)]
struct CloseAfterRefusal(s3s::service::S3Service);

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for CloseAfterRefusal {
    type Response = s3s::HttpResponse;
    type Error = s3s::HttpError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn call(&self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        let declares_body = declares_body(req.headers());
        let answer = hyper::service::Service::call(&self.0, req);
        Box::pin(async move {
            let mut resp = answer.await?;
            let status = resp.status();
            if declares_body && (status.is_client_error() || status.is_server_error()) {
                resp.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            Ok(resp)
        })
    }
}

/// True when a request's headers announce a body (a length above zero, or chunks).
fn declares_body(headers: &http::HeaderMap) -> bool {
    headers.contains_key(http::header::TRANSFER_ENCODING)
        || headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_through_toml_and_refuses_unknown_fields() {
        let text = toml::to_string(&GatewayConfig::default()).unwrap();
        let back: GatewayConfig = toml::from_str(&text).unwrap();
        assert_eq!(back.listen_addr, GatewayConfig::default().listen_addr);
        assert_eq!(back.abandoned_upload_secs, 7 * 24 * 3600);
        assert!(toml::from_str::<GatewayConfig>("no-such-field = 1").is_err());
    }

    #[test]
    fn requests_with_a_length_or_chunks_declare_a_body() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = http::HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, http::HeaderValue::from_static(v));
            }
            h
        };
        assert!(declares_body(&headers(&[("content-length", "4")])));
        assert!(declares_body(&headers(&[("transfer-encoding", "chunked")])));
        assert!(!declares_body(&headers(&[("content-length", "0")])));
        assert!(!declares_body(&headers(&[])));
    }
}
