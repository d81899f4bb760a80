//! `shale placement`: one placement node (one for a small cluster, three for production).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use shale_placement::{PlacementConfig, PlacementNode};

use crate::store::{load_identity, serve_until_signal, ShutdownSignal};

#[derive(Args)]
pub struct PlacementArgs {
    /// The node's TOML config (`shale config example --role placement` prints one).
    #[arg(long)]
    config: PathBuf,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9102).
    #[arg(long)]
    metrics_addr: Option<String>,
}

pub async fn run(args: PlacementArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("read placement config {}", args.config.display()))?;
    let config: PlacementConfig = toml::from_str(&text).context("parse placement config")?;
    config
        .validate()
        .map_err(anyhow::Error::msg)
        .context("check placement config")?;
    let identity = load_identity(&config.tls)?;
    let mut signal = ShutdownSignal::install()?;
    let node = tokio::select! {
        node = PlacementNode::start(config, &identity) => node.context("start placement node")?,
        () = signal.wait() => {
            tracing::info!("stopped while starting");
            return Ok(());
        }
    };
    serve_until_signal(signal, args.metrics_addr.as_deref()).await?;
    node.shutdown().await;
    Ok(())
}

/// A placement config with every field at its default, as TOML.
pub fn example_config() -> String {
    let mut config = PlacementConfig::default();
    config.peers = vec![shale_placement::PlacementPeer {
        node_id: 1,
        addr: config.listen_addr.clone(),
        raft_addr: config.raft_listen_addr.clone(),
    }];
    let body = toml::to_string(&config).expect("default config serializes");
    format!(
        "# Shale placement node configuration. Every field is optional; shown here at its default.\n\
         # peers lists every placement node (this one included), the same on each node:\n\
         # three for production, one for a small cluster.\n\n{body}"
    )
}
