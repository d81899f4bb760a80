//! `shale bench kv --ranges ... --processes`: the range-count comparison with each store
//! a process of its own, as on separate machines, and the ranges' leaders spread over
//! the stores as placement's balancing leaves them (or, with `--leaders-together`, all
//! on the store that led the first range, as the in-process comparison has them). Each
//! store's CPU per put is reported on its own: on real machines the busiest store sets
//! the pace.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use shale_bench::kv::{cluster_phases, KvBenchOptions};
use shale_bench::ranges::{alternate_counts, name_trial, presplit, put_only, warm_up, TrialWork};
use shale_bench::stats::OpStats;
use shale_rpc::transport::{Transport, TransportConfig};

use crate::store_procs::{scrape_counters, StoreProcs};

/// Where the ranges' leaders are while puts are measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaders {
    /// Round-robin over the stores in key order, as placement's balancing leaves them.
    Spread,
    /// Where the pre-split left them: every range led by the store that led the first.
    Together,
}

/// Stores of each trial's cluster.
const STORES: usize = 3;

/// The store counters read from each store's metrics, in `ProcWork::counters` order.
const COUNTER_NAMES: [&str; 4] = [
    "shale_store_rounds_total",
    "shale_store_fsyncs_total",
    "shale_store_log_entries_total",
    "shale_store_raft_messages_sent_total",
];

/// What a count's trials cost, summed over its trials.
#[derive(Debug, Clone, Default)]
struct ProcWork {
    /// Rounds, fsyncs, log entries and Raft messages of all stores.
    counters: [f64; 4],
    /// CPU seconds of each store process, in store order.
    cpu_by_store: Vec<f64>,
    /// Ranges each store led while measured (the last trial's), in store order.
    leaders_by_store: Vec<usize>,
}

impl TrialWork for ProcWork {
    fn add(&mut self, other: &Self) {
        for (a, b) in self.counters.iter_mut().zip(other.counters) {
            *a += b;
        }
        self.cpu_by_store
            .resize(other.cpu_by_store.len().max(self.cpu_by_store.len()), 0.0);
        for (a, b) in self.cpu_by_store.iter_mut().zip(&other.cpu_by_store) {
            *a += b;
        }
        self.leaders_by_store.clone_from(&other.leaders_by_store);
    }
}

/// Median put throughput of one range count over its trials, stores as processes.
#[derive(Debug, Clone, Serialize)]
pub struct ProcRangeMedian {
    pub ranges: u64,
    pub trials: usize,
    pub median_ops_per_sec: f64,
    /// Store processes' CPU per put, all stores together (clients not included).
    pub store_cpu_us: f64,
    /// The same by store, busiest first.
    pub store_cpu_us_by_store: Vec<f64>,
    /// Ranges each store led while measured (the last trial's), in store order.
    pub leaders_by_store: Vec<usize>,
    pub raft_messages: f64,
    pub log_entries: f64,
    pub rounds: f64,
    pub fsyncs: f64,
}

/// Put throughput with each range count, each trial on a fresh cluster of three store
/// processes (this binary) under `dir`, the clients in this process.
pub async fn range_scaling_in_processes(
    dir: &std::path::Path,
    counts: &[u64],
    trials: usize,
    opts: &KvBenchOptions,
    leaders: Leaders,
) -> anyhow::Result<(Vec<OpStats>, Vec<ProcRangeMedian>)> {
    let (out, by_count) = alternate_counts(counts, trials, |count, trial| {
        proc_trial(dir, count, trial, trials, opts, leaders)
    })
    .await?;
    let medians = by_count
        .iter()
        .map(|c| {
            let n = c.puts.max(1) as f64;
            let mut by_store: Vec<f64> = c.work.cpu_by_store.iter().map(|s| s * 1e6 / n).collect();
            by_store.sort_by(|a, b| b.total_cmp(a));
            let [rounds, fsyncs, log_entries, messages] = c.work.counters.map(|v| v / n);
            ProcRangeMedian {
                ranges: c.ranges,
                trials: c.rates.len(),
                median_ops_per_sec: c.median_ops_per_sec(),
                store_cpu_us: by_store.iter().sum(),
                store_cpu_us_by_store: by_store,
                leaders_by_store: c.work.leaders_by_store.clone(),
                raft_messages: messages,
                log_entries,
                rounds,
                fsyncs,
            }
        })
        .collect();
    Ok((out, medians))
}

async fn proc_trial(
    dir: &std::path::Path,
    count: u64,
    trial: usize,
    trials: usize,
    opts: &KvBenchOptions,
    leaders: Leaders,
) -> anyhow::Result<(Vec<OpStats>, ProcWork, u64)> {
    let dir = dir.join(format!("procs-{count}-{trial}"));
    std::fs::create_dir_all(&dir)?;
    let mut cluster = StoreProcs::create(&dir, STORES, true)?;
    cluster.start_all()?;
    let client = Arc::new(cluster.client()?);
    let started = Instant::now();
    while client.put("bench/warm", "up").await.is_err() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "no leader elected among the store processes (logs in {})",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    presplit(client.clone(), count, opts.keys, 8).await?;
    let admin = Transport::client(&cluster.identity, TransportConfig::default())?;
    let wait = Duration::from_secs(60);
    if leaders == Leaders::Spread {
        cluster
            .spread_leaders(&admin, wait)
            .await
            .context("spread the leaders")?;
    }
    let leaders_by_store = cluster
        .leaders_by_store(&admin, count as usize, wait)
        .await?;
    warm_up(client.clone(), opts).await;
    let before = measure(&cluster).await?;
    let mut phases = cluster_phases(client, &put_only(opts)).await;
    let after = measure(&cluster).await?;
    let how = match leaders {
        Leaders::Spread => ", store processes",
        Leaders::Together => ", store processes, leaders together",
    };
    name_trial(&mut phases, count, trial, trials, how);
    let work = ProcWork {
        counters: std::array::from_fn(|i| after.counters[i] - before.counters[i]),
        cpu_by_store: after
            .cpu_by_store
            .iter()
            .zip(&before.cpu_by_store)
            .map(|(a, b)| a - b)
            .collect(),
        leaders_by_store,
    };
    let puts = phases.iter().map(|p| p.ops).sum();
    Ok((phases, work, puts))
}

/// The stores' counters and CPU seconds now.
async fn measure(cluster: &StoreProcs) -> anyhow::Result<ProcWork> {
    let mut work = ProcWork::default();
    for p in &cluster.procs {
        work.cpu_by_store.push(p.cpu_seconds()?);
        let addr = p.metrics_addr.context("store started without metrics")?;
        let values = scrape_counters(addr, &COUNTER_NAMES).await?;
        for (a, v) in work.counters.iter_mut().zip(values) {
            *a += v;
        }
    }
    Ok(work)
}
