//! `shale store`: one store process of a cluster.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use shale_rpc::certs::TlsIdentity;
use shale_storage::config::TlsPaths;
use shale_storage::{StoreConfig, StoreNode};
use tracing::info;

#[derive(Args)]
pub struct StoreArgs {
    /// The store's TOML config (`shale config example` prints one with every default).
    #[arg(long)]
    config: PathBuf,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9101).
    #[arg(long)]
    metrics_addr: Option<String>,
}

pub async fn run(args: StoreArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("read store config {}", args.config.display()))?;
    let config = StoreConfig::from_toml(&text).context("parse store config")?;
    config.validate().context("check store config")?;
    let identity = load_identity(&config.tls)?;
    let node = StoreNode::start(config, &identity)
        .await
        .context("start store")?;
    serve_until_signal(args.metrics_addr.as_deref()).await?;
    node.shutdown().await;
    Ok(())
}

/// The node's certificates, as its config names them.
pub fn load_identity(tls: &TlsPaths) -> anyhow::Result<TlsIdentity> {
    TlsIdentity::from_files(&tls.ca_cert, &tls.cert, &tls.key)
        .context("load TLS certificates (create them with `shale certs`)")
}

/// Serves metrics at `metrics_addr` (if given) and returns on SIGTERM or Ctrl-C.
pub async fn serve_until_signal(metrics_addr: Option<&str>) -> anyhow::Result<()> {
    if let Some(addr) = metrics_addr {
        let bound = crate::metrics::serve(addr).await?;
        info!(%bound, "metrics endpoint listening");
    }
    wait_for_shutdown_signal().await?;
    info!("shutting down");
    Ok(())
}

/// Returns on SIGTERM or Ctrl-C.
pub async fn wait_for_shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("install SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r.context("wait for Ctrl-C")?,
    }
    Ok(())
}

/// A store config with every field at its default, as TOML.
pub fn example_config() -> String {
    let body = toml::to_string(&StoreConfig::default()).expect("default config serializes");
    format!(
        "# Shale store configuration. Every field is optional; shown here at its default.\n\
         # initial-peers lists the stores of a new cluster's first range, e.g.\n\
         # [[initial-peers]]\n# store-id = 1\n# addr = \"10.0.0.1:7101\"\n\n{body}"
    )
}
