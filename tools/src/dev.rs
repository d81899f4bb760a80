//! `shale dev`: a whole cluster on loopback in one process, data in one folder,
//! certificates created on first start, the same cluster again on the next start.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use shale_rpc::certs::{
    init_ca_dir, issue_node_cert, load_ca_dir, write_pair, TlsIdentity, CA_CERT_FILE,
};
use shale_storage::cluster::{cluster_configs, LocalCluster};

use crate::cluster_file::{ClusterFile, S3Endpoint};
use crate::store::ShutdownSignal;
use shale_gateway::{Gateway, GatewayConfig};
use shale_placement::{PlacementConfig, PlacementNode, PlacementPeer};

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
    /// UDP port of the placement node's API; its Raft port is the next one. Default:
    /// port-base - 100 (7001).
    #[arg(long)]
    placement_port: Option<u16>,
    /// TCP port of the S3 endpoint on 127.0.0.1.
    #[arg(long, default_value_t = 9000)]
    s3_port: u16,
    /// TCP port of the Prometheus metrics endpoint on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 9101)]
    metrics_port: u16,
    /// S3 access key; generated on first start (and kept in DATA_DIR/credentials.json).
    #[arg(long, env = "SHALE_ACCESS_KEY")]
    access_key: Option<String>,
    /// S3 secret key; generated on first start (and kept in DATA_DIR/credentials.json).
    #[arg(long, env = "SHALE_SECRET_KEY")]
    secret_key: Option<String>,
}

/// The dev cluster's S3 credentials, kept across restarts.
#[derive(serde::Serialize, serde::Deserialize)]
struct Credentials {
    access_key: String,
    secret_key: String,
}

/// Pinned by flags, else the ones kept in the data dir, else new random ones.
fn dev_credentials(
    data_dir: &Path,
    access: Option<String>,
    secret: Option<String>,
) -> anyhow::Result<Credentials> {
    let path = data_dir.join("credentials.json");
    let kept: Option<Credentials> = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let random = |n: usize| -> String {
        use rand::Rng;
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        let mut rng = rand::thread_rng();
        (0..n)
            .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
            .collect()
    };
    let creds = Credentials {
        access_key: access
            .or_else(|| kept.as_ref().map(|k| k.access_key.clone()))
            .unwrap_or_else(|| format!("SHALE{}", random(15))),
        secret_key: secret
            .or_else(|| kept.as_ref().map(|k| k.secret_key.clone()))
            .unwrap_or_else(|| random(40)),
    };
    std::fs::write(&path, serde_json::to_string_pretty(&creds)? + "\n")
        .with_context(|| format!("write {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(creds)
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    // Caught from here on: Ctrl-C while the cluster starts stops it once started.
    let mut signal = ShutdownSignal::install()?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("create {}", args.data_dir.display()))?;
    let data_dir = args.data_dir.canonicalize()?;
    let certs = data_dir.join("certs");
    let identity = dev_identity(&certs)?;
    let ports: Vec<u16> = (0..args.stores).map(|i| args.port_base + i).collect();
    let placement_port = match args.placement_port {
        Some(p) => p,
        None => args
            .port_base
            .checked_sub(100)
            .context("--port-base below 100: give --placement-port")?,
    };
    let placement_config = dev_placement_config(&data_dir, placement_port);
    let placement_addr = placement_config.listen_addr.clone();
    let mut configs = cluster_configs(&data_dir, &ports);
    for c in &mut configs {
        c.placement.addrs = vec![placement_addr.clone()];
    }
    if let Some(existing) = existing_store_count(&data_dir) {
        if existing != configs.len() {
            bail!(
                "{} holds {existing} stores but --stores is {}; use the same count or a new --data-dir",
                data_dir.display(),
                configs.len()
            );
        }
    }
    let placement = PlacementNode::start(placement_config, &identity)
        .await
        .with_context(|| format!("start the placement node on {placement_addr} (is the port free? see --placement-port)"))?;
    let cluster = LocalCluster::start(&data_dir, identity, configs)
        .await
        .context("start the stores")?;
    let creds = dev_credentials(&data_dir, args.access_key, args.secret_key)?;
    let mut file = ClusterFile {
        stores: cluster.store_addrs(),
        placement: vec![placement_addr],
        ca_cert: certs.join(CA_CERT_FILE),
        cert: certs.join("client.pem"),
        key: certs.join("client.key"),
        s3: None,
        metrics: None,
    };
    let gateway_config = GatewayConfig {
        listen_addr: format!("127.0.0.1:{}", args.s3_port),
        access_key: creds.access_key.clone(),
        secret_key: creds.secret_key.clone(),
        host: None,
        ..GatewayConfig::default()
    };
    let local = Some(crate::local_chunks::of(&cluster));
    let kv = file.client()?;
    kv.transport().call_locally(cluster.local_services());
    let gateway = Gateway::start_with_local(&gateway_config, kv, local)
        .await
        .with_context(|| {
            format!(
                "start the S3 endpoint on {} (is the port free? see --s3-port)",
                gateway_config.listen_addr
            )
        })?;
    file.s3 = Some(S3Endpoint {
        endpoint: format!("http://{}", gateway.addr()),
        access_key: creds.access_key,
        secret_key: creds.secret_key,
        region: "us-east-1".into(),
    });
    let metrics = crate::metrics::serve(&format!("127.0.0.1:{}", args.metrics_port)).await?;
    file.metrics = Some(format!("http://{metrics}/metrics"));
    let cluster_path = data_dir.join("dev.json");
    file.save(&cluster_path)?;
    print_banner(&file, &cluster_path);
    signal.wait().await;
    eprintln!("shutting down...");
    gateway.shutdown().await;
    cluster.shutdown().await;
    placement.shutdown().await;
    Ok(())
}

/// One placement node for the dev cluster, data beside the stores'.
fn dev_placement_config(data_dir: &Path, port: u16) -> PlacementConfig {
    let peer = PlacementPeer {
        node_id: 1,
        addr: format!("127.0.0.1:{port}"),
        raft_addr: format!("127.0.0.1:{}", port + 1),
    };
    PlacementConfig {
        node_id: 1,
        listen_addr: peer.addr.clone(),
        raft_listen_addr: peer.raft_addr.clone(),
        data_dir: data_dir.join("placement-1"),
        peers: vec![peer],
        ..PlacementConfig::default()
    }
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
    for p in &file.placement {
        println!("  placement at {p}");
    }
    if let Some(s3) = &file.s3 {
        println!();
        println!("S3 endpoint: {}", s3.endpoint);
        println!("  access key: {}", s3.access_key);
        println!("  secret key: {}", s3.secret_key);
        println!("  region:     {}", s3.region);
        println!();
        println!("try it:");
        println!(
            "  export AWS_ACCESS_KEY_ID={} AWS_SECRET_ACCESS_KEY={} AWS_DEFAULT_REGION={}",
            s3.access_key, s3.secret_key, s3.region
        );
        println!("  aws --endpoint-url {} s3 mb s3://demo", s3.endpoint);
        println!(
            "  aws --endpoint-url {} s3 cp ./README.md s3://demo/",
            s3.endpoint
        );
        println!("  aws --endpoint-url {} s3 ls s3://demo/", s3.endpoint);
    }
    if let Some(m) = &file.metrics {
        println!("metrics (Prometheus): {m}");
    }
    println!();
    println!(
        "key-value access: shale kv --cluster {} put hello world",
        cluster_path.display()
    );
    println!(
        "cluster file (stores, certificates, S3 endpoint and keys): {}",
        cluster_path.display()
    );
    println!("Ctrl-C stops the cluster; starting again on the same --data-dir keeps everything.");
}
