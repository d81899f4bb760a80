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
    let mut signal = ShutdownSignal::install()?;
    let node = tokio::select! {
        node = StoreNode::start(config, &identity) => node.context("start store")?,
        () = signal.wait() => {
            // Everything the store wrote so far survives a stop at any point.
            info!("stopped while starting");
            return Ok(());
        }
    };
    serve_until_signal(signal, args.metrics_addr.as_deref()).await?;
    node.shutdown().await;
    Ok(())
}

/// The node's certificates, as its config names them.
pub fn load_identity(tls: &TlsPaths) -> anyhow::Result<TlsIdentity> {
    TlsIdentity::from_files(&tls.ca_cert, &tls.cert, &tls.key)
        .context("load TLS certificates (create them with `shale certs`)")
}

/// Serves metrics at `metrics_addr` (if given) and returns once `signal` comes.
pub async fn serve_until_signal(
    mut signal: ShutdownSignal,
    metrics_addr: Option<&str>,
) -> anyhow::Result<()> {
    if let Some(addr) = metrics_addr {
        let bound = crate::metrics::serve(addr).await?;
        info!(%bound, "metrics endpoint listening");
    }
    signal.wait().await;
    info!("shutting down");
    Ok(())
}

/// SIGTERM and SIGINT (Ctrl-C), caught from the moment this is made: one that comes
/// while a node is still starting is seen by the next `wait`, instead of killing the
/// process with its default action (a stop then exited by signal, not with 0).
pub struct ShutdownSignal {
    term: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl ShutdownSignal {
    pub fn install() -> anyhow::Result<ShutdownSignal> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(ShutdownSignal {
            term: signal(SignalKind::terminate()).context("install SIGTERM handler")?,
            interrupt: signal(SignalKind::interrupt()).context("install SIGINT handler")?,
        })
    }

    /// Returns once either signal has come since `install` (at once if one has).
    pub async fn wait(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
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
