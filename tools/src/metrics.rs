//! Serves the process's Prometheus metrics (store and gateway) at `/metrics`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tracing::debug;

/// Binds `addr` and serves the metrics until the process ends; returns the bound address.
pub async fn serve(addr: &str) -> anyhow::Result<SocketAddr> {
    let mut registry = Registry::default();
    shale_storage::metrics::register(&mut registry);
    shale_gateway::metrics::register(&mut registry);
    let registry = Arc::new(registry);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind metrics endpoint {addr}"))?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let registry = registry.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req| {
                    let registry = registry.clone();
                    async move {
                        let mut text = String::new();
                        if let Err(e) =
                            prometheus_client::encoding::text::encode(&mut text, &registry)
                        {
                            text = format!("# encoding failed: {e}\n");
                        }
                        let resp = hyper::Response::builder()
                            .header(
                                "content-type",
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )
                            .body(Full::new(Bytes::from(text)))
                            .expect("static response parts");
                        Ok::<_, Infallible>(resp)
                    }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    debug!(error = %e, "metrics connection ended");
                }
            });
        }
    });
    Ok(bound)
}
