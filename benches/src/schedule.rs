//! The scheduling pass on a large simulated cluster: the pure decision function over
//! 100,000 ranges and 100 stores, beside the floor cost of one walk over the view
//! (counting replicas and leaders per store) measured in the same run.

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use shale_placement::operator::Busy;
use shale_placement::schedule::{schedule, ScheduleConfig};
use shale_placement::view::{ClusterView, StoreView};
use shale_rpc::placement::{Labels, RangeReport};
use shale_rpc::{Epoch, RangeDescriptor, ReplicaDescriptor};

/// One scenario's timings.
#[derive(Debug, Serialize)]
pub struct ScheduleResult {
    pub scenario: &'static str,
    pub ranges: usize,
    pub stores: usize,
    pub operators: usize,
    pub pass_ms_p50: f64,
    pub pass_ms_max: f64,
    /// One walk over every range counting replicas per store: the least a pass must do.
    pub baseline_walk_ms: f64,
}

/// A view of `stores` stores (zones round robin over 3) and `ranges` ranges, replicas
/// placed on the first `filled` stores.
pub fn build_view(stores: u64, filled: u64, ranges: u64) -> ClusterView {
    let mut view = ClusterView::new(0);
    for id in 1..=stores {
        let mut labels = Labels::new();
        labels.insert("zone".into(), format!("z{}", id % 4));
        let mut s = StoreView::new(id, format!("127.0.0.1:{}", 10_000 + id), labels);
        s.last_heartbeat_ms = Some(0);
        view.stores.insert(id, s);
    }
    let config = ScheduleConfig::default();
    let mut replica_id = 1_000_000;
    for i in 0..ranges {
        let key = |n: u64| Bytes::from(format!("k{n:08}"));
        let replicas: Vec<ReplicaDescriptor> = (0..3)
            .map(|j| {
                replica_id += 1;
                ReplicaDescriptor {
                    id: replica_id,
                    // Any three consecutive stores are in different zones.
                    store_id: (i * 3 + j) % filled + 1,
                }
            })
            .collect();
        let leader = replicas[0].store_id;
        let range = RangeDescriptor {
            id: i + 1,
            start_key: if i == 0 { Bytes::new() } else { key(i) },
            end_key: if i + 1 == ranges {
                Bytes::new()
            } else {
                key(i + 1)
            },
            epoch: Epoch {
                conf_ver: 1,
                version: 1,
            },
            replicas,
        };
        let report = RangeReport {
            size_bytes: 64 << 20,
            interval_ms: 10_000,
            ..RangeReport::quiet(range, 1)
        };
        view.apply_report(leader, &report, 0, config.hot());
    }
    view
}

fn time_passes(
    view: &ClusterView,
    config: &ScheduleConfig,
    now_ms: u64,
    passes: usize,
) -> (usize, Vec<Duration>) {
    let mut times = Vec::with_capacity(passes);
    let mut operators = 0;
    for _ in 0..passes {
        let started = Instant::now();
        let ops = schedule(view, &Busy::default(), config, now_ms, false);
        times.push(started.elapsed());
        operators = ops.len();
    }
    times.sort();
    (operators, times)
}

fn walk(view: &ClusterView) -> Duration {
    let started = Instant::now();
    let counts = view.counts();
    std::hint::black_box(counts);
    started.elapsed()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs the scenarios: balanced, scale-out (10 empty stores), and a store down.
pub fn run(ranges: u64, stores: u64, passes: usize) -> Vec<ScheduleResult> {
    let config = ScheduleConfig::default();
    let mut out = Vec::new();
    let scenarios: [(&'static str, u64, Option<u64>); 3] = [
        ("balanced", stores, None),
        ("scale-out (10 empty stores)", stores - 10, None),
        ("one store down", stores, Some(7)),
    ];
    for (name, filled, down) in scenarios {
        let mut view = build_view(stores, filled, ranges);
        let now_ms = 1_000;
        if let Some(d) = down {
            view.stores
                .get_mut(&d)
                .expect("store exists")
                .last_heartbeat_ms = None;
        }
        let now = if down.is_some() {
            config.store_down_after_ms + 10_000
        } else {
            now_ms
        };
        if down.is_some() {
            for s in view
                .stores
                .values_mut()
                .filter(|s| s.last_heartbeat_ms.is_some())
            {
                s.last_heartbeat_ms = Some(now);
            }
        }
        let baseline = (0..passes).map(|_| walk(&view)).min().unwrap_or_default();
        let (operators, times) = time_passes(&view, &config, now, passes);
        out.push(ScheduleResult {
            scenario: name,
            ranges: ranges as usize,
            stores: stores as usize,
            operators,
            pass_ms_p50: ms(times[times.len() / 2]),
            pass_ms_max: ms(*times.last().expect("at least one pass")),
            baseline_walk_ms: ms(baseline),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_plan_what_they_should() {
        // 40 stores: zones (id % 4) of any three consecutive stores differ, wrap included.
        let results = run(4_000, 40, 1);
        assert_eq!(results[0].operators, 0, "a balanced cluster needs nothing");
        assert!(results[1].operators > 0, "empty stores get replicas");
        assert!(
            results[2].operators > 0,
            "a down store's replicas are replaced"
        );
    }
}
