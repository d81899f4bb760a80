//! `shale bench kv`: replicated put and get throughput and latency against a cluster,
//! beside raw RocksDB synced writes at the same concurrency, in the same run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use shale_rpc::client::KvClient;
use shale_storage::engine::{Cf, Durability, Engine, EngineConfig};

use crate::stats::{OpStats, Recorder};

/// What to run.
#[derive(Debug, Clone)]
pub struct KvBenchOptions {
    pub concurrency: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub value_bytes: usize,
    /// Distinct keys the workload touches.
    pub keys: u64,
    /// Which phases to run.
    pub phases: Phases,
}

/// The phases of a KV benchmark run; all on by default.
#[derive(Debug, Clone, Copy)]
pub struct Phases {
    /// Put latency from one client.
    pub single_put: bool,
    /// Put throughput from `concurrency` clients.
    pub put: bool,
    /// Linearizable get throughput from `concurrency` clients.
    pub get: bool,
    /// Raw RocksDB synced puts at the same concurrency.
    pub baseline: bool,
}

impl Default for Phases {
    fn default() -> Self {
        Phases {
            single_put: true,
            put: true,
            get: true,
            baseline: true,
        }
    }
}

impl Phases {
    /// Parses a comma-separated list of `single-put`, `put`, `get`, `baseline`.
    pub fn parse(list: &str) -> Result<Phases, String> {
        let mut p = Phases {
            single_put: false,
            put: false,
            get: false,
            baseline: false,
        };
        for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match name {
                "single-put" => p.single_put = true,
                "put" => p.put = true,
                "get" => p.get = true,
                "baseline" => p.baseline = true,
                other => {
                    return Err(format!(
                        "unknown phase {other:?}; phases are single-put, put, get, baseline"
                    ))
                }
            }
        }
        Ok(p)
    }
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct KvBenchReport {
    pub value_bytes: usize,
    pub phases: Vec<OpStats>,
    /// Replicated put throughput over raw RocksDB synced puts at the same concurrency
    /// (null unless both phases ran).
    pub put_vs_rocksdb: Option<f64>,
    /// Linearizable get throughput over replicated put throughput (null unless both ran).
    pub get_vs_put: Option<f64>,
    /// With `--ranges`: each range count's median put throughput over its trials.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub range_medians: Vec<crate::ranges::RangeMedian>,
}

/// The key a benchmark uses for item `i`.
pub fn key_of(i: u64) -> Bytes {
    Bytes::from(format!("bench/{i:012}"))
}

/// Runs `op` from `concurrency` tasks for `duration`, after a warm-up.
async fn phase<F, Fut>(
    name: &str,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    op: F,
) -> OpStats
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<usize, String>> + Send,
{
    let op = Arc::new(op);
    let started = Instant::now();
    let measure_from = started + warmup;
    let stop_at = measure_from + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|w| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut rec = Recorder::starting_at(measure_from);
                let mut rng = rand::rngs::StdRng::seed_from_u64(w as u64);
                loop {
                    let t = Instant::now();
                    if t >= stop_at {
                        break;
                    }
                    let result = op(rng.gen()).await;
                    if t >= measure_from {
                        match result {
                            Ok(bytes) => rec.record(t.elapsed(), bytes),
                            Err(_) => rec.errors += 1,
                        }
                    }
                }
                rec
            })
        })
        .collect();
    let mut total = Recorder::starting_at(measure_from);
    for t in tasks {
        if let Ok(rec) = t.await {
            total.merge(&rec);
        }
    }
    total.finish(name, concurrency, duration)
}

/// Replicated phases against a cluster through `client`.
pub async fn cluster_phases(client: Arc<KvClient>, opts: &KvBenchOptions) -> Vec<OpStats> {
    let value = Bytes::from(vec![0x5a; opts.value_bytes]);
    let keys = opts.keys;
    let mut out = Vec::new();
    let put = |client: Arc<KvClient>, value: Bytes| {
        move |r: u64| {
            let client = client.clone();
            let value = value.clone();
            async move {
                let len = value.len();
                client
                    .put(key_of(r % keys), value)
                    .await
                    .map(|_| len)
                    .map_err(|e| e.to_string())
            }
        }
    };
    if opts.phases.single_put {
        out.push(
            phase(
                "shale put (1 client)",
                1,
                opts.warmup,
                opts.duration,
                put(client.clone(), value.clone()),
            )
            .await,
        );
    }
    if opts.phases.put || opts.phases.get {
        // Gets read keys that exist: the put phase (or this short fill) wrote them.
        let name = if opts.phases.put { "shale put" } else { "fill" };
        out.push(
            phase(
                name,
                opts.concurrency,
                opts.warmup,
                opts.duration,
                put(client.clone(), value.clone()),
            )
            .await,
        );
        if !opts.phases.put {
            out.pop();
        }
    }
    if !opts.phases.get {
        return out;
    }
    let get_client = client.clone();
    out.push(
        phase(
            "shale get (linearizable)",
            opts.concurrency,
            opts.warmup,
            opts.duration,
            move |r: u64| {
                let client = get_client.clone();
                async move {
                    match client.get(key_of(r % keys)).await {
                        Ok(v) => Ok(v.map_or(0, |v| v.len())),
                        Err(e) => Err(e.to_string()),
                    }
                }
            },
        )
        .await,
    );
    out
}

/// Raw RocksDB synced puts (WAL fsync per write group) from `concurrency` threads.
pub fn rocksdb_baseline(dir: &std::path::Path, opts: &KvBenchOptions) -> anyhow::Result<OpStats> {
    let engine =
        Arc::new(Engine::open(dir, &EngineConfig::default()).context("open baseline RocksDB")?);
    let value = vec![0x5a; opts.value_bytes];
    let warm_until = Instant::now() + opts.warmup;
    let stop_at = warm_until + opts.duration;
    let threads: Vec<_> = (0..opts.concurrency)
        .map(|w| {
            let engine = engine.clone();
            let value = value.clone();
            let keys = opts.keys;
            std::thread::spawn(move || {
                let mut rec = Recorder::starting_at(warm_until);
                let mut rng = rand::rngs::StdRng::seed_from_u64(w as u64);
                loop {
                    let t = Instant::now();
                    if t >= stop_at {
                        break;
                    }
                    let mut batch = engine.batch();
                    batch.put(Cf::Data, &key_of(rng.gen::<u64>() % keys), &value);
                    let ok = engine.write(batch, Durability::Sync).is_ok();
                    if t >= warm_until {
                        if ok {
                            rec.record(t.elapsed(), value.len());
                        } else {
                            rec.errors += 1;
                        }
                    }
                }
                rec
            })
        })
        .collect();
    let mut total = Recorder::starting_at(warm_until);
    for t in threads {
        let rec = t
            .join()
            .map_err(|_| anyhow::anyhow!("baseline thread panicked"))?;
        total.merge(&rec);
    }
    Ok(total.finish(
        "rocksdb put, sync (baseline)",
        opts.concurrency,
        opts.duration,
    ))
}

/// Puts the phases together into a report with the ratios the targets speak of.
pub fn report(
    opts: &KvBenchOptions,
    mut cluster: Vec<OpStats>,
    baseline: Option<OpStats>,
) -> KvBenchReport {
    let find = |rows: &[OpStats], name: &str| {
        rows.iter()
            .find(|r| r.name == name && r.ops_per_sec > 0.0)
            .map(|r| r.ops_per_sec)
    };
    let put = find(&cluster, "shale put");
    let get = find(&cluster, "shale get (linearizable)");
    let base = baseline
        .as_ref()
        .map(|b| b.ops_per_sec)
        .filter(|b| *b > 0.0);
    let ratio = |a: Option<f64>, b: Option<f64>| Some(a? / b?);
    let put_vs_rocksdb = ratio(put, base);
    let get_vs_put = ratio(get, put);
    cluster.extend(baseline);
    KvBenchReport {
        value_bytes: opts.value_bytes,
        phases: cluster,
        put_vs_rocksdb,
        get_vs_put,
        range_medians: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(name: &str, ops: u32) -> OpStats {
        let mut rec = Recorder::starting_at(Instant::now());
        for _ in 0..ops {
            rec.record(Duration::from_millis(1), 10);
        }
        rec.finish(name, 1, Duration::from_secs(1))
    }

    #[test]
    fn ratios_are_given_only_for_phases_that_ran() {
        let opts = KvBenchOptions {
            concurrency: 1,
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            value_bytes: 10,
            keys: 10,
            phases: Phases {
                single_put: false,
                put: true,
                get: false,
                baseline: false,
            },
        };
        let only_put = report(&opts, vec![phase("shale put", 100)], None);
        assert_eq!((only_put.put_vs_rocksdb, only_put.get_vs_put), (None, None));
        let all = report(
            &opts,
            vec![
                phase("shale put", 100),
                phase("shale get (linearizable)", 300),
            ],
            Some(phase("raw RocksDB synced put", 400)),
        );
        assert_eq!(all.put_vs_rocksdb, Some(0.25));
        assert_eq!(all.get_vs_put, Some(3.0));
    }
}
