//! Range-count benchmarks: put throughput over 1 range against many ranges in one run
//! (batching across ranges should make many no slower), and the standing cost of many
//! idle ranges (resident memory and CPU while nothing happens).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use serde::Serialize;
use shale_placement::cluster::PlacedCluster;
use shale_rpc::client::KvClient;
use shale_rpc::placement::{PlacementReply, PlacementRequest};
use shale_storage::cluster::LocalCluster;
use shale_storage::node::StoreNode;

use crate::kv::{cluster_phases, key_of, KvBenchOptions, Phases};
use crate::stats::{process_cpu_seconds, OpStats, ThreadCpu};

/// Splits the cluster into `ranges` ranges over the key space `0..keys` of `key_of`,
/// `concurrency` splits at a time (splits of the same range retry on the new epoch).
pub async fn presplit(
    client: Arc<KvClient>,
    ranges: u64,
    keys: u64,
    concurrency: usize,
) -> anyhow::Result<()> {
    // Bisection order (middle first, then the middles of each half, ...) so concurrent
    // splits mostly land on different ranges instead of queueing on one.
    let mut order = Vec::with_capacity(ranges as usize);
    let mut spans = std::collections::VecDeque::from([(1u64, ranges)]);
    while let Some((lo, hi)) = spans.pop_front() {
        if lo >= hi {
            continue;
        }
        let mid = lo + (hi - lo) / 2;
        order.push(mid);
        spans.push_back((lo, mid));
        spans.push_back((mid + 1, hi));
    }
    let points: Vec<Bytes> = order
        .into_iter()
        .map(|j| key_of(keys * j / ranges))
        .collect();
    let points = Arc::new(std::sync::Mutex::new(points.into_iter()));
    let tasks: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (client, points) = (client.clone(), points.clone());
            tokio::spawn(async move {
                loop {
                    let Some(point) = points.lock().expect("split points").next() else {
                        return Ok::<(), anyhow::Error>(());
                    };
                    client
                        .split(point.clone())
                        .await
                        .with_context(|| format!("split at {point:?}"))?;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Median put throughput of one range count over its trials.
#[derive(Debug, Clone, Serialize)]
pub struct RangeMedian {
    pub ranges: u64,
    pub trials: usize,
    pub median_ops_per_sec: f64,
    pub per_put: PerPut,
    /// CPU time of the whole process over wall time while the trials were measured:
    /// near the machine's core count when puts are CPU-bound, well under it
    /// when they wait on latency (rounds, fsyncs, hand-offs).
    pub cores_busy: f64,
}

/// Work a trial measured besides its throughput, summed over a count's trials.
pub trait TrialWork: Default {
    fn add(&mut self, other: &Self);
}

/// One range count's trials: each trial's throughput and their summed work and puts.
pub struct CountTrials<W> {
    pub ranges: u64,
    pub rates: Vec<f64>,
    pub work: W,
    pub puts: u64,
}

impl<W> CountTrials<W> {
    /// The median trial's throughput (the upper one of an even count).
    pub fn median_ops_per_sec(&self) -> f64 {
        let mut rates = self.rates.clone();
        rates.sort_by(f64::total_cmp);
        rates.get(rates.len() / 2).copied().unwrap_or(0.0)
    }
}

/// Runs `run(count, trial)` for every count in `trials` rounds that alternate the
/// order of the counts (so neither is always the one run on a warmer or busier
/// machine). `run` gives the trial's phases, its work and its puts.
pub async fn alternate_counts<W, F, Fut>(
    counts: &[u64],
    trials: usize,
    mut run: F,
) -> anyhow::Result<(Vec<OpStats>, Vec<CountTrials<W>>)>
where
    W: TrialWork,
    F: FnMut(u64, usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(Vec<OpStats>, W, u64)>>,
{
    let mut out = Vec::new();
    let mut by_count: Vec<CountTrials<W>> = counts
        .iter()
        .map(|&ranges| CountTrials {
            ranges,
            rates: Vec::new(),
            work: W::default(),
            puts: 0,
        })
        .collect();
    for trial in 0..trials.max(1) {
        let mut order: Vec<usize> = (0..counts.len()).collect();
        if trial % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let (stats, work, puts) = run(counts[i], trial).await?;
            let c = &mut by_count[i];
            c.work.add(&work);
            c.puts += puts;
            c.rates.extend(stats.iter().map(|s| s.ops_per_sec));
            out.extend(stats);
        }
    }
    Ok((out, by_count))
}

/// Names a trial's put phase by its range count (and trial, when there are several).
pub fn name_trial(phases: &mut [OpStats], count: u64, trial: usize, trials: usize, how: &str) {
    for p in phases {
        p.name = format!(
            "shale put, {count} range{}{how}{}",
            if count == 1 { "" } else { "s" },
            if trials > 1 {
                format!(", trial {}", trial + 1)
            } else {
                String::new()
            }
        );
    }
}

/// The put phase of `opts` alone, without its warm-up: `warm_up` runs that first, so
/// that the work counted from after it is only the measured puts'.
pub fn put_only(opts: &KvBenchOptions) -> KvBenchOptions {
    KvBenchOptions {
        phases: Phases {
            single_put: false,
            put: true,
            get: false,
            baseline: false,
        },
        warmup: Duration::ZERO,
        ..opts.clone()
    }
}

/// Puts for `opts.warmup`, unmeasured (the warm-up of `put_only`'s phase).
pub async fn warm_up(client: Arc<KvClient>, opts: &KvBenchOptions) {
    if !opts.warmup.is_zero() {
        let warm = KvBenchOptions {
            duration: opts.warmup,
            ..put_only(opts)
        };
        cluster_phases(client, &warm).await;
    }
}

/// Put throughput with each range count, each on a fresh local 3-store cluster in this
/// process, over `trials` alternating rounds; with the median of each count.
pub async fn range_scaling(
    dir: &std::path::Path,
    counts: &[u64],
    trials: usize,
    opts: &KvBenchOptions,
) -> anyhow::Result<(Vec<OpStats>, Vec<RangeMedian>)> {
    let (out, by_count) = alternate_counts(counts, trials, |count, trial| {
        range_trial(dir, count, trial, trials, opts)
    })
    .await?;
    let medians = by_count
        .iter()
        .map(|c| RangeMedian {
            ranges: c.ranges,
            trials: c.rates.len(),
            median_ops_per_sec: c.median_ops_per_sec(),
            per_put: PerPut::of(&c.work, c.puts),
            cores_busy: c.work.cores_busy(),
        })
        .collect();
    Ok((out, medians))
}

async fn range_trial(
    dir: &std::path::Path,
    count: u64,
    trial: usize,
    trials: usize,
    opts: &KvBenchOptions,
) -> anyhow::Result<(Vec<OpStats>, RaftWork, u64)> {
    let cluster =
        LocalCluster::start_new(&dir.join(format!("ranges-{count}-{trial}")), 3, |_| {}).await?;
    cluster
        .wait_leader(Duration::from_secs(10))
        .await
        .context("no leader")?;
    let client = Arc::new(cluster.client()?);
    presplit(client.clone(), count, opts.keys, 8).await?;
    warm_up(client.clone(), opts).await;
    let before = RaftWork::now()?;
    let started = Instant::now();
    let mut phases = cluster_phases(client, &put_only(opts)).await;
    let mut work = RaftWork::now()?.since(&before);
    work.wall_seconds = started.elapsed().as_secs_f64();
    name_trial(&mut phases, count, trial, trials, "");
    cluster.shutdown().await;
    let puts = phases.iter().map(|p| p.ops).sum();
    Ok((phases, work, puts))
}

/// Counters of the stores' Raft work (all stores of the process) and its CPU time.
#[derive(Debug, Clone, Copy, Default)]
struct RaftWork {
    rounds: u64,
    fsyncs: u64,
    log_entries: u64,
    messages: u64,
    /// CPU time of the whole process, by thread group.
    cpu: ThreadCpu,
    /// Wall time the counters were taken over (set by the caller of `since`).
    wall_seconds: f64,
}

impl RaftWork {
    fn now() -> anyhow::Result<RaftWork> {
        let m = &shale_storage::metrics::METRICS;
        Ok(RaftWork {
            rounds: m.rounds.get(),
            fsyncs: m.fsyncs.get(),
            log_entries: m.log_entries.get(),
            messages: m.raft_messages_sent.get(),
            cpu: ThreadCpu::now()?,
            wall_seconds: 0.0,
        })
    }

    fn since(&self, before: &RaftWork) -> RaftWork {
        RaftWork {
            rounds: self.rounds - before.rounds,
            fsyncs: self.fsyncs - before.fsyncs,
            log_entries: self.log_entries - before.log_entries,
            messages: self.messages - before.messages,
            cpu: self.cpu.since(&before.cpu),
            wall_seconds: 0.0,
        }
    }

    /// Cores' worth of CPU the process used on average (0 without a wall time).
    fn cores_busy(&self) -> f64 {
        if self.wall_seconds > 0.0 {
            self.cpu.total() / self.wall_seconds
        } else {
            0.0
        }
    }
}

impl TrialWork for RaftWork {
    fn add(&mut self, other: &Self) {
        self.rounds += other.rounds;
        self.fsyncs += other.fsyncs;
        self.log_entries += other.log_entries;
        self.messages += other.messages;
        self.cpu.add(&other.cpu);
        self.wall_seconds += other.wall_seconds;
    }
}

/// What one put cost, summed over the three stores, averaged over a range count's
/// trials (the whole process's CPU, clients included).
#[derive(Debug, Clone, Serialize)]
pub struct PerPut {
    pub cpu_us: f64,
    /// `cpu_us` by thread group: where the extra CPU of more ranges goes.
    pub cpu_us_by_thread: ThreadCpu,
    pub raft_messages: f64,
    pub log_entries: f64,
    pub rounds: f64,
    pub fsyncs: f64,
}

impl PerPut {
    fn of(work: &RaftWork, puts: u64) -> PerPut {
        let n = puts.max(1) as f64;
        PerPut {
            cpu_us: work.cpu.total() * 1e6 / n,
            cpu_us_by_thread: work.cpu.per(n, 1e6),
            raft_messages: work.messages as f64 / n,
            log_entries: work.log_entries as f64 / n,
            rounds: work.rounds as f64 / n,
            fsyncs: work.fsyncs as f64 / n,
        }
    }
}

/// What many idle ranges cost.
#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    pub stores: usize,
    pub ranges: u64,
    /// A placement node ran too (its CPU and memory are counted with the stores').
    pub placement: bool,
    pub setup_seconds: f64,
    pub measured_seconds: f64,
    pub hibernating_replicas: usize,
    pub replicas: usize,
    /// Seconds waited after setup for the ranges to go idle (and, with placement, for
    /// its leader moves to end).
    pub settle_seconds: f64,
    /// Placement's operators in flight when the measurement ended (none: no placement).
    pub operators_in_flight: Option<u32>,
    /// Resident memory of the whole process (all stores) after setup.
    pub rss_bytes: u64,
    pub rss_bytes_per_store: u64,
    /// CPU used while idle, in percent of one core, whole process and per store.
    pub cpu_percent: f64,
    pub cpu_percent_per_store: f64,
}

/// The cluster an idle measurement runs on: stores alone, or stores with a placement
/// node (heartbeats every second, leaders balanced), as a real cluster runs.
enum IdleCluster {
    Local(LocalCluster),
    Placed(PlacedCluster),
}

impl IdleCluster {
    fn client(&self) -> anyhow::Result<KvClient> {
        Ok(match self {
            IdleCluster::Local(c) => c.client()?,
            IdleCluster::Placed(c) => c.client()?,
        })
    }

    fn store(&self, i: usize) -> Option<&StoreNode> {
        match self {
            IdleCluster::Local(c) => c.node(i),
            IdleCluster::Placed(c) => c.store(i),
        }
    }

    async fn shutdown(self) {
        match self {
            IdleCluster::Local(c) => c.shutdown().await,
            IdleCluster::Placed(c) => c.shutdown().await,
        }
    }

    /// Placement's operators in flight (none without placement; an unanswered call
    /// counts as some).
    async fn operators(&self) -> Option<u32> {
        let IdleCluster::Placed(c) = self else {
            return None;
        };
        match c.call(&PlacementRequest::Status).await {
            Ok(PlacementReply::Status(s)) => Some(s.operators),
            _ => Some(u32::MAX),
        }
    }

    /// Replicas in all, and how many of them hibernate.
    async fn hibernating(&self, stores: usize) -> (usize, usize) {
        let (mut replicas, mut hibernating) = (0, 0);
        for i in 0..stores {
            if let Some(node) = self.store(i) {
                let status = node.status().await;
                replicas += status.len();
                hibernating += status.iter().filter(|s| s.hibernating).count();
            }
        }
        (replicas, hibernating)
    }
}

/// Longest wait for the ranges to go idle (with placement, for its leader moves to end:
/// 10,000 ranges led by one store take about two minutes to balance).
const SETTLE_MAX: Duration = Duration::from_secs(300);

/// Starts `stores` stores (with a placement node if `placement`), splits into `ranges`
/// ranges, lets them go idle, and measures memory and CPU over `measure`.
pub async fn idle_ranges(
    dir: &std::path::Path,
    stores: usize,
    ranges: u64,
    placement: bool,
    measure: Duration,
) -> anyhow::Result<IdleReport> {
    let started = Instant::now();
    let cluster = if placement {
        IdleCluster::Placed(
            PlacedCluster::start_new(dir, 1, stores, stores.min(3), |_| {}, |_, _| {}).await?,
        )
    } else {
        let cluster = LocalCluster::start_new(dir, stores, |_| {}).await?;
        cluster
            .wait_leader(Duration::from_secs(10))
            .await
            .context("no leader")?;
        IdleCluster::Local(cluster)
    };
    let client = Arc::new(cluster.client()?);
    presplit(client, ranges, 1_000_000_000, 16).await?;
    let setup_seconds = started.elapsed().as_secs_f64();
    // Give every range time to go idle and hibernate (with placement, its leader moves
    // wake ranges for a while): until placement has nothing in flight and 99.9% of the
    // replicas sleep, then 5 s more. Measuring while leaders still moved counted the
    // balancing (64 transfers a second) as idle cost.
    // Placement plans in passes (one a second), so "nothing in flight" must hold a few
    // seconds in a row: between passes it is briefly true while balancing goes on.
    let settling = Instant::now();
    let mut quiet = 0;
    while settling.elapsed() < SETTLE_MAX {
        let (replicas, hibernating) = cluster.hibernating(stores).await;
        let moving = cluster.operators().await.unwrap_or(0);
        quiet = if moving == 0 { quiet + 1 } else { 0 };
        // Nearly every replica asleep: the last pass's moves settle too.
        if quiet >= 5 && hibernating * 1000 >= replicas * 999 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let settle_seconds = settling.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let cpu_before = process_cpu_seconds()?;
    let t = Instant::now();
    tokio::time::sleep(measure).await;
    let cpu = process_cpu_seconds()? - cpu_before;
    let measured_seconds = t.elapsed().as_secs_f64();
    let rss_bytes = process_rss_bytes()?;
    let (replicas, hibernating_replicas) = cluster.hibernating(stores).await;
    let operators_in_flight = cluster.operators().await;
    cluster.shutdown().await;
    let cpu_percent = cpu / measured_seconds * 100.0;
    Ok(IdleReport {
        stores,
        ranges,
        placement,
        setup_seconds,
        settle_seconds,
        operators_in_flight,
        measured_seconds,
        hibernating_replicas,
        replicas,
        rss_bytes,
        rss_bytes_per_store: rss_bytes / stores as u64,
        cpu_percent,
        cpu_percent_per_store: cpu_percent / stores as f64,
    })
}

/// Resident set size of this process.
pub fn process_rss_bytes() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status").context("read /proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?;
    Ok(kib * 1024)
}
