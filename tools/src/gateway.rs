//! `shale gateway`: an S3 endpoint in front of a running cluster. Gateways keep no
//! state; run as many as you like against the same cluster.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use shale_gateway::{Gateway, GatewayConfig};
use tracing::info;

use crate::cluster_file::ClusterFile;
use crate::store::wait_for_shutdown_signal;

#[derive(Args)]
pub struct GatewayArgs {
    /// The cluster file: store addresses and the client certificate to reach them.
    #[arg(long)]
    cluster: PathBuf,
    /// TCP address of the S3 endpoint.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: String,
    /// An access key that always works, besides those kept in the cluster (`shale ctl
    /// keys create`); optional.
    #[arg(long, env = "SHALE_ACCESS_KEY")]
    access_key: Option<String>,
    /// The secret of that access key.
    #[arg(long, env = "SHALE_SECRET_KEY", hide_env_values = true)]
    secret_key: Option<String>,
    /// Public host (with port) for virtual-host-style requests, e.g. s3.example.com:9000.
    #[arg(long)]
    host: Option<String>,
}

pub async fn run(args: GatewayArgs) -> anyhow::Result<()> {
    let file = ClusterFile::load(&args.cluster)?;
    let config = GatewayConfig {
        listen_addr: args.listen,
        access_key: args.access_key.unwrap_or_default(),
        secret_key: args.secret_key.unwrap_or_default(),
        host: args.host,
        ..GatewayConfig::default()
    };
    let gateway = Gateway::start(&config, file.client()?)
        .await
        .context("start the S3 endpoint")?;
    info!(endpoint = %format!("http://{}", gateway.addr()), "gateway ready");
    wait_for_shutdown_signal().await?;
    info!("shutting down");
    gateway.shutdown().await;
    Ok(())
}
