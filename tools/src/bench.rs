//! `shale bench`: measured, never asserted. Every run prints its baseline beside it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use shale_bench::kv::{cluster_phases, report, rocksdb_baseline, KvBenchOptions, Phases};
use shale_bench::stats::table;
use shale_storage::cluster::LocalCluster;

use crate::cluster_file::ClusterFile;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Replicated KV put/get against a cluster, beside raw RocksDB synced puts.
    Kv(KvBenchArgs),
}

#[derive(Args)]
pub struct KvBenchArgs {
    /// Cluster to measure; without it a 3-store cluster is started in a temp folder.
    #[arg(long)]
    cluster: Option<PathBuf>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Measured seconds per phase.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Unmeasured seconds before each phase.
    #[arg(long, default_value_t = 1)]
    warmup_secs: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 1024)]
    value_bytes: usize,
    /// Distinct keys written and read.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Folder for the local cluster and the baseline DB (default: a temp folder).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Phases to run, comma-separated: single-put, put, get, baseline.
    #[arg(long, default_value = "single-put,put,get,baseline")]
    phases: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Kv(args) => kv(args).await,
    }
}

async fn kv(args: KvBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.concurrency > 0 && args.keys > 0,
        "concurrency and keys must be positive"
    );
    let opts = KvBenchOptions {
        concurrency: args.concurrency,
        duration: Duration::from_secs(args.duration_secs),
        warmup: Duration::from_secs(args.warmup_secs),
        value_bytes: args.value_bytes,
        keys: args.keys,
        phases: Phases::parse(&args.phases).map_err(anyhow::Error::msg)?,
    };
    let temp = tempfile::Builder::new()
        .prefix("shale-bench-")
        .tempdir_in(args.dir.clone().unwrap_or_else(std::env::temp_dir))?;
    let (phases, local) = match &args.cluster {
        Some(path) => (
            cluster_phases(ClusterFile::load(path)?.client()?, &opts).await,
            None,
        ),
        None => {
            let cluster = LocalCluster::start_new(&temp.path().join("cluster"), 3, |_| {})
                .await
                .context("start local cluster")?;
            cluster
                .wait_leader(Duration::from_secs(10))
                .await
                .context("no leader elected")?;
            let client = Arc::new(cluster.client()?);
            (cluster_phases(client, &opts).await, Some(cluster))
        }
    };
    if let Some(cluster) = local {
        cluster.shutdown().await;
    }
    let baseline = if opts.phases.baseline {
        let baseline_dir = temp.path().join("baseline");
        let baseline_opts = opts.clone();
        Some(
            tokio::task::spawn_blocking(move || rocksdb_baseline(&baseline_dir, &baseline_opts))
                .await??,
        )
    } else {
        None
    };
    let rep = report(&opts, phases, baseline);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rep)?);
    } else {
        print!("{}", table(&rep.phases));
        println!(
            "replicated put / raw RocksDB synced put: {:.2}",
            rep.put_vs_rocksdb
        );
        println!(
            "linearizable get / replicated put:       {:.2}",
            rep.get_vs_put
        );
    }
    Ok(())
}
