//! Latency and throughput bookkeeping for benchmark phases.

use std::time::{Duration, Instant};

use anyhow::Context;
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
    /// The same, interval by interval through the phase.
    pub timeline: Vec<Interval>,
    /// What the phase cost per payload byte, when the cluster ran in this process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<PhaseCost>,
}

/// One interval of a phase.
#[derive(Debug, Clone, Serialize)]
pub struct Interval {
    /// Seconds from the phase's start to the interval's end.
    pub until_sec: f64,
    pub ops_per_sec: f64,
    pub mb_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Intervals a timeline is cut into (at least a second each).
const TIMELINE_INTERVALS: u32 = 20;

/// Most timeline samples one recorder keeps (12 bytes each); later operations still
/// count in the totals.
const TIMELINE_SAMPLES_MAX: usize = 2_000_000;

/// One operation for the timeline: when it ended, how long it took, bytes moved.
#[derive(Debug, Clone, Copy)]
struct Sample {
    ended_ms: u32,
    latency_us: u32,
    bytes: u32,
}

/// Collects latencies of one worker; merged at the end of a phase.
pub struct Recorder {
    hist: Histogram<u64>,
    pub bytes: u64,
    pub errors: u64,
    /// The phase's start, for the timeline.
    started: Instant,
    samples: Vec<Sample>,
}

impl Recorder {
    /// A recorder for a phase measured from `started`.
    pub fn starting_at(started: Instant) -> Self {
        Recorder {
            hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"),
            bytes: 0,
            errors: 0,
            started,
            samples: Vec::new(),
        }
    }

    pub fn record(&mut self, latency: Duration, bytes: usize) {
        let us = (latency.as_micros() as u64).clamp(1, 60_000_000);
        self.hist.record(us).expect("clamped into bounds");
        self.bytes += bytes as u64;
        if self.samples.len() < TIMELINE_SAMPLES_MAX {
            self.samples.push(Sample {
                ended_ms: self.started.elapsed().as_millis().min(u32::MAX as u128) as u32,
                latency_us: us as u32,
                bytes: bytes.min(u32::MAX as usize) as u32,
            });
        }
    }

    pub fn merge(&mut self, other: &Recorder) {
        self.hist.add(&other.hist).expect("same bounds");
        self.bytes += other.bytes;
        self.errors += other.errors;
        let room = TIMELINE_SAMPLES_MAX.saturating_sub(self.samples.len());
        self.samples.extend(other.samples.iter().take(room));
    }

    /// Cuts the phase into intervals of at least a second. What is left past the last
    /// whole step (operations still finishing after the duration ran out) is folded into
    /// the last interval: a few milliseconds on their own would show one late operation
    /// as a huge rate.
    fn timeline(&self, elapsed: Duration) -> Vec<Interval> {
        let total_ms = elapsed.as_millis().max(1) as u64;
        let step_ms = (total_ms / u64::from(TIMELINE_INTERVALS)).max(1000);
        let count = (total_ms / step_ms).max(1) as usize;
        let mut buckets: Vec<Vec<Sample>> = vec![Vec::new(); count];
        for s in &self.samples {
            let i = ((u64::from(s.ended_ms) / step_ms) as usize).min(count - 1);
            buckets[i].push(*s);
        }
        buckets
            .into_iter()
            .enumerate()
            .map(|(i, mut b)| {
                let until_ms = if i + 1 == count {
                    total_ms
                } else {
                    (i as u64 + 1) * step_ms
                };
                let secs = (until_ms - i as u64 * step_ms).max(1) as f64 / 1000.0;
                b.sort_unstable_by_key(|s| s.latency_us);
                let at = |q: f64| {
                    let n = b.len();
                    let i = ((n as f64 * q).ceil() as usize).clamp(1, n.max(1)) - 1;
                    b.get(i).map_or(0.0, |s| f64::from(s.latency_us) / 1000.0)
                };
                Interval {
                    until_sec: until_ms as f64 / 1000.0,
                    ops_per_sec: b.len() as f64 / secs,
                    mb_per_sec: b.iter().map(|s| u64::from(s.bytes)).sum::<u64>() as f64
                        / secs
                        / 1e6,
                    p50_ms: at(0.50),
                    p99_ms: at(0.99),
                }
            })
            .collect()
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
            timeline: self.timeline(elapsed),
            cost: None,
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
    let costs: Vec<_> = rows
        .iter()
        .filter_map(|r| r.cost.map(|c| (r, c)))
        .filter(|(r, _)| r.mb_per_sec > 0.0)
        .collect();
    if !costs.is_empty() {
        out.push_str(&format!(
            "cost (whole process):\n  {:<32} {:>10} {:>8} {:>16}\n",
            "phase", "CPU ms/MB", "kernel", "disk bytes/byte"
        ));
        for (r, c) in costs {
            out.push_str(&format!(
                "  {:<32} {:>10.2} {:>7.0}% {:>16.2}\n",
                r.name,
                c.cpu_ms_per_mb,
                c.kernel_share * 100.0,
                c.disk_bytes_per_byte
            ));
        }
    }
    out
}

/// Each phase's timeline as text: throughput and latency interval by interval.
pub fn timeline_table(rows: &[OpStats]) -> String {
    let mut out = String::new();
    for r in rows.iter().filter(|r| r.timeline.len() > 1) {
        out.push_str(&format!(
            "{} over time:\n  {:>8} {:>10} {:>9} {:>9} {:>9}\n",
            r.name, "until s", "ops/s", "MB/s", "p50 ms", "p99 ms"
        ));
        for i in &r.timeline {
            out.push_str(&format!(
                "  {:>8.1} {:>10.0} {:>9.2} {:>9.3} {:>9.3}\n",
                i.until_sec, i.ops_per_sec, i.mb_per_sec, i.p50_ms, i.p99_ms
            ));
        }
    }
    out
}

/// An SVG chart: per phase, throughput and p99 latency over time, side by side.
pub fn svg_chart(rows: &[OpStats]) -> String {
    const PANEL_W: f64 = 420.0;
    const PANEL_H: f64 = 120.0;
    const ROW_H: f64 = PANEL_H + 50.0;
    let height = ROW_H * rows.len() as f64 + 10.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" \
         fill=\"white\"/>\n",
        2.0 * PANEL_W + 60.0
    );
    for (row, r) in rows.iter().enumerate() {
        let top = row as f64 * ROW_H + 20.0;
        svg.push_str(&format!(
            "<text x=\"10\" y=\"{}\" font-weight=\"bold\">{}</text>\n",
            top - 5.0,
            escape(&r.name)
        ));
        let series: [(&str, &str, Vec<f64>); 2] = [
            (
                "ops/s",
                "#1f77b4",
                r.timeline.iter().map(|i| i.ops_per_sec).collect(),
            ),
            (
                "p99 ms",
                "#d62728",
                r.timeline.iter().map(|i| i.p99_ms).collect(),
            ),
        ];
        let end_sec = r.timeline.last().map_or(1.0, |i| i.until_sec).max(1e-9);
        for (col, (label, color, values)) in series.iter().enumerate() {
            let left = 20.0 + col as f64 * (PANEL_W + 20.0);
            let max = values.iter().copied().fold(0.0, f64::max).max(1e-9);
            let points: Vec<String> = r
                .timeline
                .iter()
                .zip(values)
                .map(|(i, v)| {
                    let x = left + i.until_sec / end_sec * PANEL_W;
                    let y = top + PANEL_H - v / max * PANEL_H;
                    format!("{x:.1},{y:.1}")
                })
                .collect();
            svg.push_str(&format!(
                "<rect x=\"{left}\" y=\"{top}\" width=\"{PANEL_W}\" height=\"{PANEL_H}\" \
                 fill=\"none\" stroke=\"#999\"/>\n\
                 <polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n\
                 <text x=\"{}\" y=\"{}\">{label} (max {max:.1})</text>\n\
                 <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{end_sec:.0} s</text>\n",
                points.join(" "),
                left + 4.0,
                top + 14.0,
                left + PANEL_W,
                top + PANEL_H + 14.0,
            ));
        }
    }
    svg.push_str("</svg>\n");
    svg
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_cpu_counts_a_named_threads_work_in_its_group() {
        let before = ThreadCpu::now().unwrap();
        // A thread named like a store loop spins for 300 ms of CPU.
        std::thread::Builder::new()
            .name("store-9-raft".into())
            .spawn(move || {
                let t = Instant::now();
                let mut x = 0u64;
                while t.elapsed() < Duration::from_millis(300) {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
                // Still alive while measured: an ended thread's CPU falls to `other`.
                let after = ThreadCpu::now().unwrap().since(&before);
                assert!(after.store_loops >= 0.2, "{after:?}");
                assert!(
                    after.fsync < 0.1 && after.rocksdb_background < 0.1,
                    "{after:?}"
                );
            })
            .unwrap()
            .join()
            .unwrap();
        let (comm, user, system) =
            parse_stat("42 (store-1-sync) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0").unwrap();
        assert_eq!((comm, user, system), ("store-1-sync", 2.5, 0.5));
        let mut cpu = ThreadCpu::default();
        *cpu.group("rocksdb:low") += 1.0;
        *cpu.group("tokio-rt-worker") += 2.0;
        assert_eq!((cpu.rocksdb_background, cpu.other), (1.0, 2.0));
        assert_eq!(cpu.per(4.0, 1e6).other, 500_000.0);
    }

    #[test]
    fn a_timeline_cuts_a_phase_into_intervals_with_their_own_rates() {
        let started = Instant::now() - Duration::from_secs(4);
        let mut rec = Recorder::starting_at(started);
        // Fake samples: 100 fast ops in the first two seconds, 10 slow ones after.
        for i in 0..100 {
            rec.samples.push(Sample {
                ended_ms: i * 20,
                latency_us: 1_000,
                bytes: 1_000,
            });
        }
        for i in 0..10 {
            rec.samples.push(Sample {
                ended_ms: 2_000 + i * 200,
                latency_us: 50_000,
                bytes: 1_000,
            });
        }
        let t = rec.timeline(Duration::from_secs(4));
        assert_eq!(t.len(), 4, "4 s in intervals of a second");
        assert_eq!(t[0].ops_per_sec, 50.0);
        assert_eq!(t[0].p99_ms, 1.0);
        assert_eq!(t[2].ops_per_sec, 5.0);
        assert_eq!(t[3].p50_ms, 50.0);
        assert_eq!(t[3].until_sec, 4.0);
        let svg = svg_chart(&[OpStats {
            name: "put <a>".into(),
            concurrency: 1,
            ops: 110,
            errors: 0,
            seconds: 4.0,
            ops_per_sec: 27.5,
            mb_per_sec: 0.0,
            cost: None,
            latency_ms: LatencyMs {
                p50: 1.0,
                p99: 50.0,
                p999: 50.0,
                max: 50.0,
            },
            timeline: t,
        }]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("put &lt;a&gt;"));
    }

    #[test]
    fn operations_finishing_after_the_last_whole_interval_join_it_rather_than_spike() {
        let mut rec = Recorder::starting_at(Instant::now());
        for i in 0..40 {
            rec.samples.push(Sample {
                ended_ms: i * 100,
                latency_us: 1_000,
                bytes: 1_000_000,
            });
        }
        // One operation still in flight when the duration ran out, done 8 ms later.
        rec.samples.push(Sample {
            ended_ms: 4_005,
            latency_us: 900_000,
            bytes: 1_000_000,
        });
        let t = rec.timeline(Duration::from_millis(4_008));
        assert_eq!(t.len(), 4, "no interval of 8 ms of its own");
        assert_eq!(t[3].until_sec, 4.008);
        assert!(
            (t[3].ops_per_sec - 11.0 / 1.008).abs() < 1e-9,
            "11 ops over 1.008 s, got {}",
            t[3].ops_per_sec
        );
        assert!(t.iter().all(|i| i.mb_per_sec < 11.0), "{t:?}");
        // A phase shorter than one step is one interval over its whole length.
        let t = rec.timeline(Duration::from_millis(500));
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].until_sec, 0.5);
    }
}

/// What this process has used so far (Linux `/proc`): CPU split into user and kernel
/// time, and bytes it sent toward the disks.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessUsage {
    pub user_seconds: f64,
    pub system_seconds: f64,
    /// `write_bytes` of `/proc/self/io`: page-cache bytes this process dirtied.
    pub disk_write_bytes: u64,
}

impl ProcessUsage {
    pub fn now() -> anyhow::Result<ProcessUsage> {
        let (user_seconds, system_seconds) = process_cpu_split()?;
        let io = std::fs::read_to_string("/proc/self/io").context("read /proc/self/io")?;
        let disk_write_bytes = io
            .lines()
            .find_map(|l| l.strip_prefix("write_bytes:"))
            .context("no write_bytes in /proc/self/io")?
            .trim()
            .parse()
            .context("parse write_bytes")?;
        Ok(ProcessUsage {
            user_seconds,
            system_seconds,
            disk_write_bytes,
        })
    }

    /// What a phase that moved `bytes` of payload cost, from `before` to now.
    pub fn cost_since(before: &ProcessUsage, bytes: u64) -> anyhow::Result<PhaseCost> {
        let now = ProcessUsage::now()?;
        let mb = (bytes as f64 / 1e6).max(1e-9);
        let kernel = now.system_seconds - before.system_seconds;
        let cpu = now.user_seconds - before.user_seconds + kernel;
        let written = now.disk_write_bytes.saturating_sub(before.disk_write_bytes);
        Ok(PhaseCost {
            cpu_ms_per_mb: cpu * 1e3 / mb,
            kernel_share: kernel / cpu.max(1e-9),
            disk_bytes_per_byte: written as f64 / bytes.max(1) as f64,
        })
    }
}

/// What a phase cost the whole process per payload byte (meaningful when the cluster
/// runs in the benchmark's own process; clients are counted too).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PhaseCost {
    /// CPU milliseconds (user + kernel, all threads) per MB of payload.
    pub cpu_ms_per_mb: f64,
    /// Fraction of that CPU spent in the kernel.
    pub kernel_share: f64,
    /// Bytes written toward the disks per payload byte (all replicas, all writes).
    pub disk_bytes_per_byte: f64,
}

/// User and kernel CPU seconds of this process (in USER_HZ = 100 ticks).
fn process_cpu_split() -> anyhow::Result<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").context("read /proc/self/stat")?;
    let (_, user, system) = parse_stat(&stat).context("parse /proc/self/stat")?;
    Ok((user, system))
}

/// The command (thread) name and user and kernel CPU seconds of a `/proc/.../stat` line.
fn parse_stat(stat: &str) -> Option<(&str, f64, f64)> {
    let (head, after_comm) = stat.rsplit_once(')')?;
    let (_, comm) = head.split_once('(')?;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are 12 and 13 after the command name.
    let ticks =
        |i: usize| -> Option<f64> { Some(fields.get(i)?.parse::<u64>().ok()? as f64 / 100.0) };
    Some((comm, ticks(11)?, ticks(12)?))
}

/// CPU seconds of this process's threads, grouped by what the storage engine's threads
/// are named: store loops (`store-N-raft`), their fsync threads (`store-N-sync`),
/// RocksDB's flushes and compactions (`rocksdb:*`), and everything else (the async
/// runtime's workers: QUIC, request handling, clients). Threads that ended are counted
/// in `other` (the process total less the named groups).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ThreadCpu {
    pub store_loops: f64,
    pub fsync: f64,
    pub rocksdb_background: f64,
    pub other: f64,
}

impl ThreadCpu {
    pub fn now() -> anyhow::Result<ThreadCpu> {
        let mut cpu = ThreadCpu::default();
        let tasks = std::fs::read_dir("/proc/self/task").context("read /proc/self/task")?;
        for task in tasks.flatten() {
            // A thread that ended since the listing has no stat any more.
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            if let Some((comm, user, system)) = parse_stat(&stat) {
                *cpu.group(comm) += user + system;
            }
        }
        let named = cpu.store_loops + cpu.fsync + cpu.rocksdb_background;
        cpu.other = (process_cpu_seconds()? - named).max(0.0);
        Ok(cpu)
    }

    fn group(&mut self, thread: &str) -> &mut f64 {
        if thread.starts_with("store-") && thread.ends_with("-raft") {
            &mut self.store_loops
        } else if thread.starts_with("store-") && thread.ends_with("-sync") {
            &mut self.fsync
        } else if thread.starts_with("rocksdb:") {
            &mut self.rocksdb_background
        } else {
            &mut self.other
        }
    }

    /// Each group of `self` combined with the same group of `other` by `f`.
    fn zip(&self, other: &ThreadCpu, f: impl Fn(f64, f64) -> f64) -> ThreadCpu {
        ThreadCpu {
            store_loops: f(self.store_loops, other.store_loops),
            fsync: f(self.fsync, other.fsync),
            rocksdb_background: f(self.rocksdb_background, other.rocksdb_background),
            other: f(self.other, other.other),
        }
    }

    pub fn since(&self, before: &ThreadCpu) -> ThreadCpu {
        self.zip(before, |now, then| now - then)
    }

    pub fn add(&mut self, other: &ThreadCpu) {
        *self = self.zip(other, |a, b| a + b);
    }

    pub fn total(&self) -> f64 {
        self.store_loops + self.fsync + self.rocksdb_background + self.other
    }

    /// Each group divided by `n` and scaled by `scale` (e.g. microseconds per put).
    pub fn per(&self, n: f64, scale: f64) -> ThreadCpu {
        self.zip(self, |x, _| x * scale / n.max(1e-9))
    }
}

/// User + kernel CPU seconds of this process.
pub fn process_cpu_seconds() -> anyhow::Result<f64> {
    let (user, system) = process_cpu_split()?;
    Ok(user + system)
}
