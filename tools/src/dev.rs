//! `shale dev`: a whole cluster on loopback in one process, data in one folder,
//! certificates created on first start, the same cluster again on the next start.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use shale_rpc::certs::{
    init_ca_dir, issue_node_cert, load_ca_dir, write_pair, TlsIdentity, CA_CERT_FILE,
};
use shale_storage::cluster::{cluster_configs, LocalCluster};

use crate::cluster_file::ClusterFile;
use crate::store::wait_for_shutdown_signal;

#[derive(Args)]
pub struct DevArgs {
    /// Folder for every store's data, the certificates and `dev.json`.
    #[arg(long, default_value = "./shale-data")]
    data_dir: PathBuf,
    /// How many stores to run (each holds a replica of every range).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=7))]
    stores: u16,
    /// First store's UDP port; store N listens on port-base + N - 1.
    #[arg(long, default_value_t = 7101)]
    port_base: u16,
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("create {}", args.data_dir.display()))?;
    let data_dir = args.data_dir.canonicalize()?;
    let certs = data_dir.join("certs");
    let identity = dev_identity(&certs)?;
    let ports: Vec<u16> = (0..args.stores).map(|i| args.port_base + i).collect();
    let configs = cluster_configs(&data_dir, &ports);
    if let Some(existing) = existing_store_count(&data_dir) {
        if existing != configs.len() {
            bail!(
                "{} holds {existing} stores but --stores is {}; use the same count or a new --data-dir",
                data_dir.display(),
                configs.len()
            );
        }
    }
    let cluster = LocalCluster::start(&data_dir, identity, configs)
        .await
        .context("start the stores")?;
    let file = ClusterFile {
        stores: cluster.store_addrs(),
        ca_cert: certs.join(CA_CERT_FILE),
        cert: certs.join("client.pem"),
        key: certs.join("client.key"),
    };
    let cluster_path = data_dir.join("dev.json");
    file.save(&cluster_path)?;
    print_banner(&file, &cluster_path);
    wait_for_shutdown_signal().await?;
    eprintln!("shutting down...");
    cluster.shutdown().await;
    Ok(())
}

/// Loads the dev CA and node certificate, creating them on first start.
fn dev_identity(certs: &Path) -> anyhow::Result<TlsIdentity> {
    if !certs.join(CA_CERT_FILE).exists() {
        let ca = init_ca_dir(certs).context("create the dev cluster CA")?;
        let sans = ["localhost".to_string(), "127.0.0.1".to_string()];
        write_pair(certs, "node", &issue_node_cert(&ca, "dev-node", &sans)?)?;
        write_pair(certs, "client", &issue_node_cert(&ca, "dev-client", &[])?)?;
    }
    load_ca_dir(certs).context("load the dev cluster CA")?;
    TlsIdentity::from_files(
        &certs.join(CA_CERT_FILE),
        &certs.join("node.pem"),
        &certs.join("node.key"),
    )
    .context("load the dev node certificate")
}

fn existing_store_count(data_dir: &Path) -> Option<usize> {
    let n = std::fs::read_dir(data_dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("store-"))
        .count();
    (n > 0).then_some(n)
}

fn print_banner(file: &ClusterFile, cluster_path: &Path) {
    println!(
        "Shale dev cluster is up: {} stores, replication {}",
        file.stores.len(),
        file.stores.len()
    );
    for s in &file.stores {
        println!("  store {} at {} (QUIC, mutual TLS)", s.store_id, s.addr);
    }
    println!("cluster file: {}", cluster_path.display());
    println!();
    println!("try it:");
    println!(
        "  shale kv --cluster {} put hello world",
        cluster_path.display()
    );
    println!("  shale kv --cluster {} get hello", cluster_path.display());
    println!(
        "  shale bench kv --cluster {} --duration-secs 5",
        cluster_path.display()
    );
    println!();
    println!("Ctrl-C stops the cluster; starting again on the same --data-dir keeps every key.");
}
