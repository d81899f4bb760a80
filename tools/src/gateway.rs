//! `shale gateway`: an S3 endpoint in front of a running cluster. Gateways keep no
//! state; run as many as you like against the same cluster.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use shale_gateway::{Gateway, GatewayConfig};
use tracing::info;

use crate::cluster_file::ClusterFile;
use crate::store::{serve_until_signal, ShutdownSignal};

#[derive(Args)]
pub struct GatewayArgs {
    /// The cluster file: store addresses and the client certificate to reach them.
    #[arg(long)]
    cluster: PathBuf,
    /// A TOML gateway config (`shale config example --role gateway`); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// TCP address of the S3 endpoint [default: 127.0.0.1:9000].
    #[arg(long)]
    listen: Option<String>,
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
    /// Read object chunks from this store's own replica first (repeatable; in order):
    /// the store on the gateway's host, so bulk bytes stay on the host.
    #[arg(long = "near-store", value_name = "STORE_ID")]
    near_stores: Vec<u64>,
    /// Serve HTTPS with this certificate chain (PEM; give --tls-key too). `shale certs
    /// issue --name s3 --san s3.example.com` makes one signed by the cluster CA (clients
    /// then trust `ca.pem`); a certificate from a public CA works as well.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9102).
    #[arg(long)]
    metrics_addr: Option<String>,
}

/// A gateway config with every field at its default, as TOML.
pub fn example_config() -> String {
    let body = toml::to_string(&GatewayConfig::default()).expect("default config serializes");
    format!("# Shale gateway configuration (shale gateway --cluster FILE --config THIS).\n# Every field is optional; shown here at its default.\n\n{body}")
}

pub async fn run(args: GatewayArgs) -> anyhow::Result<()> {
    let signal = ShutdownSignal::install()?;
    let file = ClusterFile::load(&args.cluster)?;
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("read gateway config {}", path.display()))?;
            toml::from_str::<GatewayConfig>(&text)
                .with_context(|| format!("parse gateway config {}", path.display()))?
        }
        None => GatewayConfig::default(),
    };
    if let Some(listen) = args.listen {
        config.listen_addr = listen;
    }
    if let (Some(ak), Some(sk)) = (args.access_key, args.secret_key) {
        config.access_key = ak;
        config.secret_key = sk;
    }
    if args.host.is_some() {
        config.host = args.host;
    }
    if !args.near_stores.is_empty() {
        config.near_store_ids = args.near_stores;
    }
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        config.tls = Some(shale_gateway::tls::GatewayTls::new(cert, key));
    }
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let client = file.client()?;
    // The client certificate for the cluster is reloaded as stores reload theirs.
    let _tls = shale_rpc::transport::watch_tls(file.tls_paths(), &[client.transport().clone()]);
    let gateway = Gateway::start(&config, client)
        .await
        .context("start the S3 endpoint")?;
    info!(endpoint = %format!("{scheme}://{}", gateway.addr()), "gateway ready");
    serve_until_signal(signal, args.metrics_addr.as_deref()).await?;
    gateway.shutdown().await;
    Ok(())
}
