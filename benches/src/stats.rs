//! Latency and throughput bookkeeping for benchmark phases.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyMs {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// What one phase of a benchmark measured.
#[derive(Debug, Clone, Serialize)]
pub struct OpStats {
    pub name: String,
    pub concurrency: usize,
    pub ops: u64,
    pub errors: u64,
    pub seconds: f64,
    pub ops_per_sec: f64,
    pub mb_per_sec: f64,
    pub latency_ms: LatencyMs,
}

/// Collects latencies of one worker; merged at the end of a phase.
pub struct Recorder {
    hist: Histogram<u64>,
    pub bytes: u64,
    pub errors: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"),
            bytes: 0,
            errors: 0,
        }
    }
}

impl Recorder {
    pub fn record(&mut self, latency: Duration, bytes: usize) {
        let us = (latency.as_micros() as u64).clamp(1, 60_000_000);
        self.hist.record(us).expect("clamped into bounds");
        self.bytes += bytes as u64;
    }

    pub fn merge(&mut self, other: &Recorder) {
        self.hist.add(&other.hist).expect("same bounds");
        self.bytes += other.bytes;
        self.errors += other.errors;
    }

    pub fn finish(&self, name: &str, concurrency: usize, elapsed: Duration) -> OpStats {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let ms = |q: f64| self.hist.value_at_quantile(q) as f64 / 1000.0;
        OpStats {
            name: name.to_string(),
            concurrency,
            ops: self.hist.len(),
            errors: self.errors,
            seconds: secs,
            ops_per_sec: self.hist.len() as f64 / secs,
            mb_per_sec: self.bytes as f64 / secs / 1e6,
            latency_ms: LatencyMs {
                p50: ms(0.5),
                p99: ms(0.99),
                p999: ms(0.999),
                max: self.hist.max() as f64 / 1000.0,
            },
        }
    }
}

/// A human table of phases.
pub fn table(rows: &[OpStats]) -> String {
    let mut out = format!(
        "{:<34} {:>5} {:>10} {:>9} {:>9} {:>9} {:>9} {:>7}\n",
        "phase", "conc", "ops/s", "MB/s", "p50 ms", "p99 ms", "p999 ms", "errors"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<34} {:>5} {:>10.0} {:>9.2} {:>9.3} {:>9.3} {:>9.3} {:>7}\n",
            r.name,
            r.concurrency,
            r.ops_per_sec,
            r.mb_per_sec,
            r.latency_ms.p50,
            r.latency_ms.p99,
            r.latency_ms.p999,
            r.errors
        ));
    }
    out
}
