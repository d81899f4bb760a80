//! `shale bench`: measured, never asserted. Every run prints its baseline beside it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use shale_bench::kv::{cluster_phases, report, rocksdb_baseline, KvBenchOptions, Phases};
use shale_bench::ranges::{idle_ranges, range_scaling};
use shale_bench::s3::S3BenchOptions;
use shale_bench::stats::{svg_chart, table, timeline_table, OpStats};
use shale_gateway::{Gateway, GatewayConfig};
use shale_storage::cluster::LocalCluster;

use crate::cluster_file::ClusterFile;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Replicated KV put/get against a cluster, beside raw RocksDB synced puts.
    Kv(KvBenchArgs),
    /// The standing cost of many idle ranges: memory and CPU of a local cluster.
    Idle(IdleBenchArgs),
    /// S3 PUT, GET and LIST throughput and latency against any S3 endpoint(s).
    S3(S3BenchArgs),
    /// One placement scheduling pass over a large simulated cluster (pure, no I/O).
    Schedule(ScheduleBenchArgs),
    /// raft-rs alone (in memory, one thread): cost per put when puts share entries, as
    /// on one busy range, beside one entry per put, as on many ranges.
    RaftCore(RaftCoreBenchArgs),
    /// LIST one page from a bucket of a million objects, beside a bucket of one page.
    List(ListBenchArgs),
    /// Range leader loss: kill -9 the leader's store process again and again while
    /// clients write; how long until writes are served again, beside the election alone.
    Failover(FailoverBenchArgs),
}

#[derive(Args)]
pub struct FailoverBenchArgs {
    /// Leader kills to measure.
    #[arg(long, default_value_t = 20)]
    trials: usize,
    /// Concurrent writers.
    #[arg(long, default_value_t = 8)]
    writers: usize,
    /// Folder for the stores (default: a temp folder).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

async fn failover_bench(args: FailoverBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.trials > 0 && args.writers > 0,
        "trials and writers must be positive"
    );
    let temp = tempfile::Builder::new()
        .prefix("shale-bench-failover-")
        .tempdir_in(args.dir.clone().unwrap_or_else(std::env::temp_dir))?;
    let rep = crate::failover::run(temp.path(), args.trials, args.writers).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rep)?);
    } else {
        println!(
            "{} leader kills, {} writers, 3 store processes",
            rep.trials.len(),
            rep.writers
        );
        println!(
            "{:<32} {:>8} {:>8} {:>8}",
            "ms after kill -9", "p50", "p99", "max"
        );
        for (name, s) in [
            ("new leader (baseline: Raft)", &rep.new_leader_ms),
            ("first writer acknowledged", &rep.first_write_ms),
            ("every writer acknowledged", &rep.all_writers_ms),
        ] {
            println!("{name:<32} {:>8.0} {:>8.0} {:>8.0}", s.p50, s.p99, s.max);
        }
        println!(
            "acknowledged writes: {}, lost: {}",
            rep.acknowledged_writes, rep.lost_writes
        );
    }
    anyhow::ensure!(
        rep.lost_writes == 0,
        "{} acknowledged writes were lost",
        rep.lost_writes
    );
    Ok(())
}

#[derive(Args)]
pub struct ScheduleBenchArgs {
    #[arg(long, default_value_t = 100_000)]
    ranges: u64,
    #[arg(long, default_value_t = 100)]
    stores: u64,
    /// Passes timed per scenario.
    #[arg(long, default_value_t = 10)]
    passes: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct RaftCoreBenchArgs {
    /// Groups of the many-ranges case, each with one put an entry.
    #[arg(long, default_value_t = 64)]
    groups: usize,
    /// Puts sharing an entry in the one-range baseline.
    #[arg(long, default_value_t = 8)]
    batched: usize,
    /// About how many puts each case makes.
    #[arg(long, default_value_t = 200_000)]
    puts: usize,
    #[arg(long, default_value_t = 1024)]
    value_bytes: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn raft_core_bench(args: RaftCoreBenchArgs) -> anyhow::Result<()> {
    let results =
        shale_bench::raft_core::run(args.groups, args.batched, args.puts, args.value_bytes)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
        return Ok(());
    }
    println!(
        "{:<28} {:>9} {:>10} {:>14} {:>14}",
        "scenario", "puts", "us/put", "entries/put", "messages/put"
    );
    for r in &results {
        println!(
            "{:<28} {:>9} {:>10.2} {:>14.2} {:>14.2}",
            r.scenario, r.puts, r.us_per_put, r.entries_per_put, r.messages_per_put
        );
    }
    if let [base, many] = &results[..] {
        println!(
            "raft-rs per put: {:.2} us at one put an entry, {:.2} us at {} puts an entry ({:.2}x)",
            many.us_per_put,
            base.us_per_put,
            base.puts_per_entry,
            many.us_per_put / base.us_per_put
        );
    }
    Ok(())
}

fn schedule_bench(args: ScheduleBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.stores > 10 && args.ranges > 0 && args.passes > 0,
        "need more than 10 stores, and ranges and passes above 0"
    );
    let results = shale_bench::schedule::run(args.ranges, args.stores, args.passes);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
        return Ok(());
    }
    println!(
        "{:<30} {:>8} {:>7} {:>10} {:>10} {:>10} {:>18}",
        "scenario", "ranges", "stores", "operators", "p50 ms", "max ms", "baseline walk ms"
    );
    for r in results {
        println!(
            "{:<30} {:>8} {:>7} {:>10} {:>10.2} {:>10.2} {:>18.2}",
            r.scenario,
            r.ranges,
            r.stores,
            r.operators,
            r.pass_ms_p50,
            r.pass_ms_max,
            r.baseline_walk_ms
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct S3BenchArgs {
    /// S3 endpoint(s) to spread clients over (repeatable); without one, a local 3-store
    /// cluster and gateway are started in a temp folder.
    #[arg(long = "endpoint")]
    endpoints: Vec<String>,
    #[arg(long, env = "AWS_ACCESS_KEY_ID")]
    access_key: Option<String>,
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    secret_key: Option<String>,
    /// Bucket to use (created if missing).
    #[arg(long, default_value = "shale-bench")]
    bucket: String,
    /// Object size: bytes, or with KiB/MiB (e.g. 4KiB, 64MiB).
    #[arg(long, default_value = "4KiB", value_parser = parse_size)]
    size: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Measured seconds per phase.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Keys per LIST request.
    #[arg(long, default_value_t = 1000)]
    list_keys: usize,
    /// Phases after the PUT phase (which always runs: it writes what they read),
    /// comma-separated: get, list; `none` for neither.
    #[arg(long, default_value = "get,list")]
    then: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write an SVG chart of throughput and p99 latency over time to this file.
    #[arg(long)]
    chart: Option<PathBuf>,
}

pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("MiB") {
        (n, 1 << 20)
    } else if let Some(n) = s.strip_suffix("KiB") {
        (n, 1 << 10)
    } else {
        (s, 1)
    };
    num.trim()
        .parse::<usize>()
        .map(|n| n * mult)
        .map_err(|e| format!("size {s:?}: {e}"))
}

async fn s3(args: S3BenchArgs) -> anyhow::Result<()> {
    let then: Vec<&str> = args.then.split(',').map(str::trim).collect();
    if let Some(bad) = then.iter().find(|p| !["get", "list", "none"].contains(p)) {
        bail!("--then: unknown phase {bad:?} (get, list or none)");
    }
    let mut local = None;
    let temp = tempfile::Builder::new()
        .prefix("shale-bench-s3-")
        .tempdir()?;
    let (endpoints, access_key, secret_key) = if args.endpoints.is_empty() {
        let s3 = LocalS3::start(temp.path()).await?;
        let endpoint = s3.endpoint.clone();
        local = Some(s3);
        (vec![endpoint], LOCAL_ACCESS.into(), LOCAL_SECRET.into())
    } else {
        let access = args
            .access_key
            .context("--access-key or AWS_ACCESS_KEY_ID")?;
        let secret = args
            .secret_key
            .context("--secret-key or AWS_SECRET_ACCESS_KEY")?;
        (args.endpoints.clone(), access, secret)
    };
    let opts = S3BenchOptions {
        endpoints,
        access_key,
        secret_key,
        bucket: args.bucket,
        object_bytes: args.size,
        concurrency: args.concurrency,
        duration: Duration::from_secs(args.duration_secs),
        list_keys: args.list_keys,
        local_cluster: local.is_some(),
        get: then.contains(&"get"),
        list: then.contains(&"list"),
    };
    let rep = shale_bench::s3::run(&opts).await;
    if let Some(s3) = local {
        s3.shutdown().await;
    }
    let rep = rep?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rep)?);
    } else {
        print!("{}", table(&rep.phases));
        print!("{}", timeline_table(&rep.phases));
    }
    write_chart(args.chart.as_deref(), &rep.phases)
}

/// Writes the phases' SVG chart to `path`, if one was asked for.
fn write_chart(path: Option<&std::path::Path>, phases: &[OpStats]) -> anyhow::Result<()> {
    let Some(path) = path else { return Ok(()) };
    std::fs::write(path, svg_chart(phases))
        .with_context(|| format!("write chart {}", path.display()))?;
    eprintln!("chart written to {}", path.display());
    Ok(())
}

const LOCAL_ACCESS: &str = "bench-access";
const LOCAL_SECRET: &str = "bench-secret";

/// A 3-store cluster and a gateway in this process, for benchmarks without an endpoint.
struct LocalS3 {
    cluster: LocalCluster,
    gateway: Gateway,
    endpoint: String,
}

impl LocalS3 {
    async fn start(dir: &std::path::Path) -> anyhow::Result<LocalS3> {
        let cluster = LocalCluster::start_new(&dir.join("cluster"), 3, |_| {}).await?;
        cluster
            .wait_leader(Duration::from_secs(10))
            .await
            .context("no leader")?;
        let config = GatewayConfig {
            listen_addr: "127.0.0.1:0".into(),
            access_key: LOCAL_ACCESS.into(),
            secret_key: LOCAL_SECRET.into(),
            host: None,
            ..GatewayConfig::default()
        };
        let local = Some(crate::local_chunks::of(&cluster));
        let kv = cluster.client()?;
        kv.transport().call_locally(cluster.local_services());
        let gateway = Gateway::start_with_local(&config, Arc::new(kv), local).await?;
        let endpoint = format!("http://{}", gateway.addr());
        Ok(LocalS3 {
            cluster,
            gateway,
            endpoint,
        })
    }

    async fn shutdown(self) {
        self.gateway.shutdown().await;
        self.cluster.shutdown().await;
    }
}

#[derive(Args)]
pub struct ListBenchArgs {
    /// Objects in the big bucket.
    #[arg(long, default_value_t = 1_000_000)]
    objects: u64,
    /// Keys per LIST page.
    #[arg(long, default_value_t = 1000)]
    page: usize,
    /// LIST requests timed per bucket (one at a time).
    #[arg(long, default_value_t = 100)]
    requests: usize,
    /// Folder for the local cluster (default: a temp folder).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

async fn list_bench(args: ListBenchArgs) -> anyhow::Result<()> {
    let temp = tempfile::Builder::new()
        .prefix("shale-bench-list-")
        .tempdir_in(args.dir.clone().unwrap_or_else(std::env::temp_dir))?;
    let s3 = LocalS3::start(temp.path()).await?;
    let kv = Arc::new(s3.cluster.client()?);
    let rep = shale_bench::listing::run(
        kv,
        &s3.endpoint,
        LOCAL_ACCESS,
        LOCAL_SECRET,
        args.objects,
        args.page,
        args.requests,
    )
    .await;
    s3.shutdown().await;
    let rep = rep?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rep)?);
    } else {
        println!(
            "{} object records written in {:.1} s; LIST of {} keys at random places:",
            rep.objects, rep.fill_seconds, rep.page_keys
        );
        print!(
            "{}",
            table(&[rep.big_bucket.clone(), rep.one_page_bucket.clone()])
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct IdleBenchArgs {
    /// Ranges to create (by splitting) before measuring.
    #[arg(long, default_value_t = 10_000)]
    ranges: u64,
    /// Stores in the local cluster (each holds a replica of every range).
    #[arg(long, default_value_t = 3)]
    stores: usize,
    /// Seconds to measure once every range is idle.
    #[arg(long, default_value_t = 10)]
    measure_secs: u64,
    /// Run a placement node too, as a real cluster does: each store then sends a
    /// heartbeat every second (reporting the ranges it leads whose state changed) and
    /// placement balances leaders before the measurement (which waits until no
    /// operator is in flight). Its CPU and memory count with the stores'.
    #[arg(long)]
    placement: bool,
    /// Folder for the local cluster (default: a temp folder).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
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
    /// Also measure puts on fresh local clusters pre-split into each of these range
    /// counts, comma-separated (e.g. `1,64`), with the same clients and concurrency;
    /// each count's line gives what a put cost (CPU split by thread: store loops, fsync
    /// threads, RocksDB flushes and compactions, the rest) and how many cores were busy.
    #[arg(long)]
    ranges: Option<String>,
    /// Rounds of `--ranges` measurements, alternating the order of the counts; the
    /// median of each count is reported (the machine's noise shows between rounds).
    #[arg(long, default_value_t = 1)]
    range_trials: usize,
    /// With `--ranges`: run each trial's three stores as processes of their own (as on
    /// separate machines) with the ranges' leaders spread over them (as placement
    /// balances them), and report each store's CPU per put (the busiest sets the pace
    /// on real machines), instead of three stores in this process.
    #[arg(long, requires = "ranges")]
    processes: bool,
    /// With `--processes`: leave every range's leader on the store that led the first
    /// range (where pre-splitting puts them) instead of spreading them.
    #[arg(long, requires = "processes")]
    leaders_together: bool,
    /// Phases to run, comma-separated: single-put, put, get, baseline.
    #[arg(long, default_value = "single-put,put,get,baseline")]
    phases: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write an SVG chart of throughput and p99 latency over time to this file.
    #[arg(long)]
    chart: Option<PathBuf>,
}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Kv(args) => kv(args).await,
        BenchCommand::Idle(args) => idle(args).await,
        BenchCommand::S3(args) => s3(args).await,
        BenchCommand::Schedule(args) => schedule_bench(args),
        BenchCommand::RaftCore(args) => raft_core_bench(args),
        BenchCommand::Failover(args) => failover_bench(args).await,
        BenchCommand::List(args) => list_bench(args).await,
    }
}

async fn idle(args: IdleBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.ranges > 0 && args.stores > 0,
        "ranges and stores must be positive"
    );
    let temp = tempfile::Builder::new()
        .prefix("shale-bench-idle-")
        .tempdir_in(args.dir.clone().unwrap_or_else(std::env::temp_dir))?;
    let rep = idle_ranges(
        temp.path(),
        args.stores,
        args.ranges,
        args.placement,
        Duration::from_secs(args.measure_secs),
    )
    .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rep)?);
    } else {
        println!(
            "{} idle ranges on {} stores{} (set up in {:.1} s)",
            rep.ranges,
            rep.stores,
            if rep.placement {
                " and a placement node"
            } else {
                ""
            },
            rep.setup_seconds
        );
        println!(
            "  settled in {:.1} s{}",
            rep.settle_seconds,
            match rep.operators_in_flight {
                Some(n) => format!("; placement operators in flight at the end: {n}"),
                None => String::new(),
            }
        );
        println!(
            "  hibernating replicas: {} of {}",
            rep.hibernating_replicas, rep.replicas
        );
        println!(
            "  resident memory: {:.0} MiB in all, {:.0} MiB per store",
            rep.rss_bytes as f64 / 1048576.0,
            rep.rss_bytes_per_store as f64 / 1048576.0
        );
        println!(
            "  CPU while idle: {:.2}% of a core in all, {:.2}% per store (over {:.0} s)",
            rep.cpu_percent, rep.cpu_percent_per_store, rep.measured_seconds
        );
    }
    Ok(())
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
    let mut rep = report(&opts, phases, baseline);
    let mut proc_medians = Vec::new();
    if let Some(list) = &args.ranges {
        let counts = list
            .split(',')
            .map(|c| {
                c.trim()
                    .parse::<u64>()
                    .context("--ranges takes comma-separated counts")
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(
            counts.iter().all(|&c| c > 0),
            "range counts must be positive"
        );
        if args.processes {
            let (phases, medians) = crate::range_procs::range_scaling_in_processes(
                temp.path(),
                &counts,
                args.range_trials,
                &opts,
                if args.leaders_together {
                    crate::range_procs::Leaders::Together
                } else {
                    crate::range_procs::Leaders::Spread
                },
            )
            .await?;
            rep.phases.extend(phases);
            proc_medians = medians;
        } else {
            let (phases, medians) =
                range_scaling(temp.path(), &counts, args.range_trials, &opts).await?;
            rep.phases.extend(phases);
            rep.range_medians = medians;
        }
    }
    if args.json {
        let mut json = serde_json::to_value(&rep)?;
        if !proc_medians.is_empty() {
            json["range_medians_store_processes"] = serde_json::to_value(&proc_medians)?;
        }
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        print!("{}", table(&rep.phases));
        if let Some(r) = rep.put_vs_rocksdb {
            println!("replicated put / raw RocksDB synced put: {r:.2}");
        }
        if let Some(r) = rep.get_vs_put {
            println!("linearizable get / replicated put:       {r:.2}");
        }
        for m in &rep.range_medians {
            let by = &m.per_put.cpu_us_by_thread;
            println!(
                "put with {} range(s): median {:.0} ops/s over {} trial(s); per put: {:.0} us CPU \
                 (store loops {:.0}, fsync threads {:.0}, RocksDB flushes and compactions {:.0}, \
                 the rest {:.0}), {:.2} raft messages, {:.2} log entries, {:.2} store rounds, \
                 {:.2} fsyncs; {:.2} cores busy",
                m.ranges,
                m.median_ops_per_sec,
                m.trials,
                m.per_put.cpu_us,
                by.store_loops,
                by.fsync,
                by.rocksdb_background,
                by.other,
                m.per_put.raft_messages,
                m.per_put.log_entries,
                m.per_put.rounds,
                m.per_put.fsyncs,
                m.cores_busy
            );
        }
        for m in &proc_medians {
            let by: Vec<String> = m
                .store_cpu_us_by_store
                .iter()
                .map(|us| format!("{us:.0}"))
                .collect();
            let leaders: Vec<String> = m.leaders_by_store.iter().map(|n| n.to_string()).collect();
            println!(
                "put with {} range(s), store processes (leaders by store: {}): median {:.0} \
                 ops/s over {} trial(s); per put: {:.0} us of store CPU (by store, busiest \
                 first: {}), {:.2} raft messages, {:.2} log entries, {:.2} store rounds, \
                 {:.2} fsyncs",
                m.ranges,
                leaders.join("/"),
                m.median_ops_per_sec,
                m.trials,
                m.store_cpu_us,
                by.join(", "),
                m.raft_messages,
                m.log_entries,
                m.rounds,
                m.fsyncs
            );
        }
        print!("{}", timeline_table(&rep.phases));
    }
    write_chart(args.chart.as_deref(), &rep.phases)
}
