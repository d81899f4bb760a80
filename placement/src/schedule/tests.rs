//! The schedulers driven against a simulated cluster: every step handed out is applied
//! to the view as a store would, until nothing more is planned.

use std::collections::HashMap;

use bytes::Bytes;
use shale_rpc::placement::{Labels, RangeReport};
use shale_rpc::{Epoch, RangeDescriptor, ReplicaDescriptor};

use super::*;

struct Sim {
    view: ClusterView,
    operators: HashMap<RangeId, Operator>,
    config: ScheduleConfig,
    now_ms: u64,
    next_id: u64,
}

impl Sim {
    /// `stores` stores (zones from `zone_of`), `ranges` ranges spread over the first
    /// `on` stores, three replicas each, leaders round robin.
    fn new(
        stores: u64,
        on: u64,
        ranges: u64,
        zone_of: impl Fn(u64) -> Option<&'static str>,
    ) -> Self {
        let mut view = ClusterView::new(0);
        for id in 1..=stores {
            let mut labels = Labels::new();
            if let Some(z) = zone_of(id) {
                labels.insert("zone".into(), z.into());
            }
            let mut s = StoreView::new(id, format!("127.0.0.1:{id}"), labels);
            s.last_heartbeat_ms = Some(0);
            view.stores.insert(id, s);
        }
        let mut next_id = 1000;
        for i in 0..ranges {
            let start = if i == 0 {
                Bytes::new()
            } else {
                Bytes::from(format!("k{i:06}"))
            };
            let end = if i + 1 == ranges {
                Bytes::new()
            } else {
                Bytes::from(format!("k{:06}", i + 1))
            };
            let replicas = (0..3)
                .map(|j| {
                    next_id += 1;
                    ReplicaDescriptor {
                        id: next_id,
                        store_id: (i + j) % on + 1,
                    }
                })
                .collect::<Vec<_>>();
            let leader = replicas[0].store_id;
            let range = RangeDescriptor {
                id: i + 1,
                start_key: start,
                end_key: end,
                epoch: Epoch {
                    conf_ver: 1,
                    version: 1,
                },
                replicas,
            };
            let report = RangeReport {
                size_bytes: 1 << 20,
                ..RangeReport::quiet(range, 1)
            };
            let config = ScheduleConfig::default();
            view.apply_report(leader, &report, 0, config.hot());
        }
        Sim {
            view,
            operators: HashMap::new(),
            config: ScheduleConfig {
                store_down_after_ms: 5_000,
                ..ScheduleConfig::default()
            },
            now_ms: 0,
            next_id,
        }
    }

    /// Every live store heartbeats.
    fn heartbeat(&mut self, except: &[StoreId]) {
        for s in self.view.stores.values_mut() {
            if !except.contains(&s.id) {
                s.last_heartbeat_ms = Some(self.now_ms);
            }
        }
    }

    /// One pass: plan, hand out steps, apply them. Returns how many steps ran.
    fn pass(&mut self, dead: &[StoreId]) -> usize {
        self.now_ms += 1000;
        self.heartbeat(dead);
        // As placement does: drop finished operators, then plan.
        let view = &self.view;
        self.operators
            .retain(|id, op| view.ranges.get(id).is_some_and(|r| !op.advance(r)));
        let busy = Busy::of(self.operators.values());
        for op in schedule(&self.view, &busy, &self.config, self.now_ms, false) {
            self.operators.insert(op.range_id, op);
        }
        let mut ran = 0;
        let ids: Vec<RangeId> = self.operators.keys().copied().collect();
        for id in ids {
            let Some(range) = self.view.ranges.get(&id).cloned() else {
                self.operators.remove(&id);
                continue;
            };
            let op = self.operators.get_mut(&id).unwrap();
            if op.advance(&range) {
                self.operators.remove(&id);
                continue;
            }
            let dead = dead.to_vec();
            if let Some(step) = op.next_step(&range, self.now_ms, 1, |s| !dead.contains(&s)) {
                self.apply(&range, step);
                ran += 1;
            }
        }
        ran
    }

    fn apply(&mut self, range: &RangeView, step: RangeStep) {
        let mut r = range.range.clone();
        let mut leader = range.leader.unwrap();
        let mut extra = None;
        let mut size_bytes = range.size_bytes;
        match step {
            RangeStep::AddReplica { store_id, .. } => {
                self.next_id += 1;
                r.replicas.push(ReplicaDescriptor {
                    id: self.next_id,
                    store_id,
                });
                r.epoch.conf_ver += 1;
            }
            RangeStep::RemoveReplica { store_id, .. } => {
                assert_ne!(store_id, leader, "a leader is never asked to remove itself");
                r.replicas.retain(|x| x.store_id != store_id);
                r.epoch.conf_ver += 1;
            }
            RangeStep::TransferLeader { to_store, .. } => leader = to_store,
            RangeStep::Split { .. } => {
                let key = Bytes::from(format!("{}~", String::from_utf8_lossy(&r.start_key)));
                if !r.contains(&key) {
                    return;
                }
                self.next_id += 1;
                let mut right = r.clone();
                right.id = self.next_id;
                right.start_key = key;
                r.end_key = right.start_key.clone();
                r.epoch.version += 1;
                right.epoch.version += 1;
                extra = Some(right);
            }
            RangeStep::Merge { source, .. } => {
                let Some(right) = self.view.ranges.get(&source).cloned() else {
                    return;
                };
                assert_eq!(r.end_key, right.range.start_key, "only neighbours merge");
                r.end_key = right.range.end_key.clone();
                r.epoch.version = r.epoch.version.max(right.range.epoch.version) + 1;
                size_bytes += right.size_bytes;
            }
        }
        for d in [Some(r), extra].into_iter().flatten() {
            let report = RangeReport {
                size_bytes,
                ..RangeReport::quiet(d, range.term + 1)
            };
            self.view
                .apply_report(leader, &report, self.now_ms, self.config.hot());
        }
    }

    fn run(&mut self, dead: &[StoreId], passes_max: usize) -> usize {
        for pass in 0..passes_max {
            if self.pass(dead) == 0 && self.operators.is_empty() {
                return pass;
            }
        }
        panic!("no convergence in {passes_max} passes");
    }

    fn counts(&self, store: StoreId) -> (u32, u32) {
        self.view.counts().get(&store).copied().unwrap_or_default()
    }
}

fn no_zone(_: u64) -> Option<&'static str> {
    None
}

#[test]
fn scale_out_converges_within_ten_percent() {
    let mut sim = Sim::new(5, 3, 120, no_zone);
    sim.run(&[], 500);
    let mean_replicas = 120.0 * 3.0 / 5.0;
    let mean_leaders = 120.0 / 5.0;
    for s in 1..=5 {
        let (r, l) = sim.counts(s);
        assert!(
            (r as f64 - mean_replicas).abs() <= mean_replicas * 0.1,
            "store {s}: {r} replicas"
        );
        assert!(
            (l as f64 - mean_leaders).abs() <= mean_leaders * 0.1 + 1.0,
            "store {s}: {l} leaders"
        );
    }
    for r in sim.view.ranges.values() {
        assert_eq!(r.range.replicas.len(), 3);
    }
}

#[test]
fn replicas_on_a_down_store_are_recreated_elsewhere() {
    let mut sim = Sim::new(4, 4, 40, no_zone);
    sim.run(&[], 200);
    // Store 2 stops heartbeating; nothing moves until the down time has passed.
    for _ in 0..5 {
        assert_eq!(sim.pass(&[2]), 0, "acted before store 2 was down");
    }
    sim.run(&[2], 500);
    for r in sim.view.ranges.values() {
        assert_eq!(r.range.replicas.len(), 3, "range {}", r.range.id);
        assert!(
            r.range.replica_on(2).is_none(),
            "range {} still on store 2",
            r.range.id
        );
        assert_ne!(r.leader, Some(2));
    }
}

#[test]
fn a_draining_store_ends_empty() {
    let mut sim = Sim::new(4, 4, 30, no_zone);
    sim.view.stores.get_mut(&1).unwrap().draining = true;
    sim.run(&[], 500);
    assert_eq!(sim.counts(1), (0, 0));
    for r in sim.view.ranges.values() {
        assert_eq!(r.range.replicas.len(), 3);
    }
}

#[test]
fn replicas_end_in_distinct_zones() {
    // Stores 1-3 in zone a, 4 in b, 5 in c: every range starts with all replicas in a.
    let zone = |s: u64| {
        Some(match s {
            1..=3 => "a",
            4 => "b",
            _ => "c",
        })
    };
    let mut sim = Sim::new(5, 3, 30, zone);
    sim.run(&[], 500);
    for r in sim.view.ranges.values() {
        let mut zones: Vec<_> = r.range.replicas.iter().map(|x| zone(x.store_id)).collect();
        zones.sort();
        zones.dedup();
        assert_eq!(
            zones.len(),
            3,
            "range {} zones {:?}",
            r.range.id,
            r.range.replicas
        );
    }
}

#[test]
fn a_hot_range_splits_after_its_window_and_leaders_spread() {
    let mut sim = Sim::new(3, 3, 1, no_zone);
    sim.config.hot_window_ms = 3000;
    sim.config.hot_ops_per_sec = 100.0;
    let hot = |sim: &mut Sim| {
        for r in sim.view.ranges.clone().values() {
            let report = RangeReport {
                size_bytes: r.size_bytes,
                write_ops: 1000,
                ..RangeReport::quiet(r.range.clone(), r.term)
            };
            let hot = sim.config.hot();
            sim.view
                .apply_report(r.leader.unwrap(), &report, sim.now_ms, hot);
        }
    };
    for _ in 0..2 {
        hot(&mut sim);
        sim.pass(&[]);
    }
    assert_eq!(sim.view.ranges.len(), 1, "not split before the window ends");
    for _ in 0..4 {
        hot(&mut sim);
        sim.pass(&[]);
    }
    assert!(sim.view.ranges.len() >= 2, "the hot range split");
    let mut leaders: Vec<_> = sim.view.ranges.values().map(|r| r.leader).collect();
    leaders.sort();
    leaders.dedup();
    assert!(
        leaders.len() >= 2,
        "halves led from different stores: {leaders:?}"
    );
}

#[test]
fn paused_scheduling_still_repairs() {
    let mut sim = Sim::new(4, 3, 10, no_zone);
    sim.now_ms = 10_000;
    sim.heartbeat(&[3]);
    let busy = Busy::default();
    let ops = schedule(&sim.view, &busy, &sim.config, sim.now_ms, true);
    assert!(!ops.is_empty());
    assert!(ops.iter().all(|o| o.reason == "repair"), "{ops:?}");
}

#[test]
fn per_store_limits_hold() {
    let mut sim = Sim::new(5, 3, 200, no_zone);
    sim.config.store_operators_max = 2;
    let ops = schedule(&sim.view, &Busy::default(), &sim.config, 1000, false);
    let busy = Busy::of(ops.iter());
    assert!(!ops.is_empty());
    assert!(busy.stores.values().all(|&n| n <= 2), "{:?}", busy.stores);
    sim.now_ms = 0;
}

#[test]
fn a_learner_catching_up_is_given_the_operator_timeout_before_it_goes() {
    let mut sim = Sim::new(4, 3, 1, no_zone);
    let mut range = sim.view.ranges.values().next().unwrap().clone();
    // A fourth replica (on store 4) still a learner: an add placement lost track of.
    range.range.replicas.push(ReplicaDescriptor {
        id: 5000,
        store_id: 4,
    });
    range.range.epoch.conf_ver += 1;
    let report = |now_ms| {
        let report = RangeReport {
            learners: vec![5000],
            ..RangeReport::quiet(range.range.clone(), range.term)
        };
        (report, now_ms)
    };
    let removals = |sim: &mut Sim, now_ms: u64| {
        let (report, now_ms) = report(now_ms);
        sim.now_ms = now_ms;
        sim.heartbeat(&[]);
        let hot = sim.config.hot();
        sim.view
            .apply_report(range.leader.unwrap(), &report, now_ms, hot);
        schedule(&sim.view, &Busy::default(), &sim.config, now_ms, false)
            .into_iter()
            .flat_map(|op| op.steps)
            .filter(|s| matches!(s, RangeStep::RemoveReplica { .. }))
            .collect::<Vec<_>>()
    };
    assert_eq!(removals(&mut sim, 1000), vec![], "the learner is settling");
    let timeout = sim.config.operator_timeout_ms;
    assert_eq!(
        removals(&mut sim, timeout),
        vec![],
        "still within the timeout"
    );
    assert_eq!(
        removals(&mut sim, timeout + 2000),
        vec![RangeStep::RemoveReplica {
            range_id: range.range.id,
            store_id: 4
        }],
        "past the timeout the learner goes first"
    );
}

/// Plans of one pass after the range's leader reported `report` at `now_ms` (`down`
/// stores silent), as steps.
fn steps_after(sim: &mut Sim, report: &RangeReport, down: &[u64], now_ms: u64) -> Vec<RangeStep> {
    sim.now_ms = now_ms;
    sim.heartbeat(down);
    let hot = sim.config.hot();
    let leader = report.range.replicas[0].store_id;
    sim.view.apply_report(leader, report, now_ms, hot);
    schedule(&sim.view, &Busy::default(), &sim.config, now_ms, false)
        .into_iter()
        .flat_map(|op| op.steps)
        .collect()
}

#[test]
fn a_learner_its_leader_cannot_hear_goes_at_once_or_is_replaced_elsewhere() {
    // Voters on stores 1-3, a learner on store 4 the leader reports silent.
    let mut sim = Sim::new(5, 3, 1, no_zone);
    let mut range = sim.view.ranges.values().next().unwrap().range.clone();
    range.replicas.push(ReplicaDescriptor {
        id: 5000,
        store_id: 4,
    });
    range.epoch.conf_ver += 1;
    let report = |range: &RangeDescriptor, silent: bool| RangeReport {
        learners: vec![5000],
        silent_learners: if silent { vec![5000] } else { vec![] },
        ..RangeReport::quiet(range.clone(), 1)
    };
    assert_eq!(
        steps_after(&mut sim, &report(&range, false), &[], 1000),
        vec![],
        "a learner still heard from is settling"
    );
    let remove_4 = RangeStep::RemoveReplica {
        range_id: range.id,
        store_id: 4,
    };
    assert_eq!(
        steps_after(&mut sim, &report(&range, true), &[], 2000),
        vec![remove_4.clone()],
        "a silent one goes at once, not after the operator timeout"
    );

    // Store 3 down too: the silent learner does not count as the third replica, so
    // one is added on store 5 (the only store left), before anything goes.
    let down_at = 2000 + sim.config.store_down_after_ms + 1000;
    let steps = steps_after(&mut sim, &report(&range, true), &[3], down_at);
    assert!(
        matches!(steps[..], [RangeStep::AddReplica { store_id: 5, .. }]),
        "{steps:?}"
    );
    // Once it votes, the replica on the down store goes first, then the silent learner.
    range.replicas.push(ReplicaDescriptor {
        id: 5001,
        store_id: 5,
    });
    range.epoch.conf_ver += 1;
    let steps = steps_after(&mut sim, &report(&range, true), &[3], down_at + 200);
    assert_eq!(
        steps,
        vec![RangeStep::RemoveReplica {
            range_id: range.id,
            store_id: 3
        }]
    );
    range.replicas.retain(|r| r.store_id != 3);
    range.epoch.conf_ver += 1;
    let steps = steps_after(&mut sim, &report(&range, true), &[3], down_at + 400);
    assert_eq!(steps, vec![remove_4]);

    // Back on stores 1, 2 and 5, store 1 is lost too: store 4, the only store left,
    // gets nothing while its silent learner is recent, then a replica.
    range.replicas.retain(|r| r.store_id != 4);
    range.epoch.conf_ver += 1;
    range.replicas.rotate_left(1); // store 2 leads
    let quiet = |range: &RangeDescriptor| RangeReport::quiet(range.clone(), 2);
    let lost_at = down_at + 400 + sim.config.store_down_after_ms + 1000;
    let steps = steps_after(&mut sim, &quiet(&range), &[1, 3], lost_at);
    assert_eq!(steps, vec![], "store 4 is shunned");
    let steps = steps_after(&mut sim, &quiet(&range), &[1, 3], down_at + 400 + 60_000);
    assert!(
        matches!(steps[..], [RangeStep::AddReplica { store_id: 4, .. }]),
        "a minute after its learner was silent store 4 is a target again: {steps:?}"
    );
}

#[test]
fn a_diverged_replica_is_replaced_elsewhere_or_dropped_first_when_no_store_is_free() {
    // Replicas on stores 1-3 (1 leads); a check found the one on store 2 diverged.
    let mut sim = Sim::new(4, 3, 1, no_zone);
    let mut range = sim.view.ranges.values().next().unwrap().range.clone();
    let on_2 = range.replica_on(2).unwrap().id;
    let report = |range: &RangeDescriptor, diverged: Vec<u64>| RangeReport {
        diverged,
        ..RangeReport::quiet(range.clone(), 1)
    };
    let steps = steps_after(&mut sim, &report(&range, vec![on_2]), &[], 1000);
    assert!(
        matches!(steps[..], [RangeStep::AddReplica { store_id: 4, .. }]),
        "a sound copy is added on the free store first: {steps:?}"
    );
    range.replicas.push(ReplicaDescriptor {
        id: 5000,
        store_id: 4,
    });
    range.epoch.conf_ver += 1;
    let remove_2 = RangeStep::RemoveReplica {
        range_id: range.id,
        store_id: 2,
    };
    let steps = steps_after(&mut sim, &report(&range, vec![on_2]), &[], 1200);
    assert_eq!(steps, vec![remove_2.clone()], "then the diverged copy goes");

    // Three stores, none free: the diverged copy goes first (the two sound ones are a
    // majority without it), and the next pass adds a fresh one where it was.
    let mut sim = Sim::new(3, 3, 1, no_zone);
    let mut range = sim.view.ranges.values().next().unwrap().range.clone();
    let on_2 = range.replica_on(2).unwrap().id;
    let steps = steps_after(&mut sim, &report(&range, vec![on_2]), &[], 1000);
    assert_eq!(steps, vec![remove_2]);
    range.replicas.retain(|r| r.store_id != 2);
    range.epoch.conf_ver += 1;
    let steps = steps_after(&mut sim, &report(&range, vec![]), &[], 1200);
    assert!(
        matches!(steps[..], [RangeStep::AddReplica { store_id: 2, .. }]),
        "{steps:?}"
    );

    // Two of three diverged (no sound majority would be left): nothing is dropped.
    let mut sim = Sim::new(3, 3, 1, no_zone);
    let range = sim.view.ranges.values().next().unwrap().range.clone();
    let two: Vec<u64> = range.replicas[1..].iter().map(|r| r.id).collect();
    assert_eq!(
        steps_after(&mut sim, &report(&range, two), &[], 1000),
        vec![]
    );
}

#[test]
fn a_store_low_on_space_sheds_leaders_then_replicas_and_takes_none_back() {
    let mut sim = Sim::new(5, 3, 30, no_zone);
    sim.view.stores.get_mut(&1).unwrap().low_space = true;
    sim.run(&[], 500);
    assert_eq!(sim.counts(1), (0, 0), "store 1 still holds data");
    for r in sim.view.ranges.values() {
        assert_eq!(r.range.replicas.len(), 3, "range {}", r.range.id);
    }
    // Space again: balance brings replicas back.
    sim.view.stores.get_mut(&1).unwrap().low_space = false;
    sim.run(&[], 500);
    let (replicas, leaders) = sim.counts(1);
    assert!(
        replicas >= 15 && leaders >= 4,
        "store 1 got {replicas} / {leaders}"
    );
}

#[test]
fn with_nowhere_to_go_only_leaders_leave_a_low_store() {
    let mut sim = Sim::new(3, 3, 12, no_zone);
    sim.run(&[], 100);
    sim.view.stores.get_mut(&2).unwrap().low_space = true;
    sim.run(&[], 100);
    assert_eq!(sim.counts(2), (12, 0));
    // Every store low: nothing to gain by moving anything.
    for s in sim.view.stores.values_mut() {
        s.low_space = true;
    }
    assert_eq!(sim.pass(&[]), 0);
}

#[test]
fn a_nearly_full_store_takes_no_replicas_for_balance() {
    let mut sim = Sim::new(5, 3, 60, no_zone);
    for (id, available) in [(4, 10), (5, 90)] {
        let s = sim.view.stores.get_mut(&id).unwrap();
        s.capacity_bytes = 100;
        s.available_bytes = available;
    }
    sim.run(&[], 500);
    assert_eq!(sim.counts(4).0, 0, "store 4 is 90% full");
    assert!(sim.counts(5).0 >= 30, "store 5 got {:?}", sim.counts(5));
    // Room again: store 4 takes replicas.
    sim.view.stores.get_mut(&4).unwrap().available_bytes = 50;
    sim.run(&[], 500);
    assert!(sim.counts(4).0 > 0, "room again: balance uses store 4");
}

#[test]
fn stores_sharing_a_full_disk_still_balance() {
    let mut sim = Sim::new(5, 3, 60, no_zone);
    for s in sim.view.stores.values_mut() {
        s.capacity_bytes = 100;
        s.available_bytes = 5;
    }
    sim.run(&[], 500);
    assert!(sim.counts(4).0 >= 30 && sim.counts(5).0 >= 30);
}

/// Every range reports again (quiet), as leaders do: placement learns since when each
/// has had its key span.
fn report_all(sim: &mut Sim) {
    for r in sim.view.ranges.clone().values() {
        let report = RangeReport {
            size_bytes: r.size_bytes,
            ..RangeReport::quiet(r.range.clone(), r.term)
        };
        let hot = sim.config.hot();
        sim.view
            .apply_report(r.leader.unwrap(), &report, sim.now_ms, hot);
    }
}

#[test]
fn small_cold_neighbours_merge_once_settled_up_to_the_size_bound() {
    let mut sim = Sim::new(3, 3, 6, no_zone);
    sim.config.merge_after_split_ms = 5_000;
    sim.config.merge_size_bytes_max = 4 << 20;
    sim.now_ms = 1000;
    report_all(&mut sim);
    for _ in 0..3 {
        sim.pass(&[]);
    }
    assert_eq!(sim.view.ranges.len(), 6, "none merges before it settled");
    // Merged ranges settle again before they merge on (passes a second apart).
    for _ in 0..40 {
        sim.pass(&[]);
    }
    let mut ranges: Vec<&RangeView> = sim.view.ranges.values().collect();
    ranges.sort_by(|a, b| a.range.start_key.cmp(&b.range.start_key));
    let sizes: Vec<u64> = ranges.iter().map(|r| r.size_bytes >> 20).collect();
    assert_eq!(
        sizes,
        vec![4, 2],
        "1 MiB ranges merge in pairs, then pairs of pairs"
    );
    assert!(ranges[0].range.start_key.is_empty() && ranges[1].range.end_key.is_empty());
    assert_eq!(ranges[0].range.end_key, ranges[1].range.start_key);
}

#[test]
fn scattered_neighbours_line_up_then_merge() {
    // Four ranges over four stores: no two neighbours share their stores.
    let mut sim = Sim::new(4, 4, 4, no_zone);
    sim.config.merge_after_split_ms = 0;
    sim.config.merge_size_bytes_max = 0;
    sim.now_ms = 1000;
    report_all(&mut sim);
    for _ in 0..20 {
        sim.pass(&[]);
    }
    assert_eq!(sim.view.ranges.len(), 4, "with merging off they stay apart");
    sim.config.merge_size_bytes_max = 20 << 20;
    for _ in 0..60 {
        sim.pass(&[]);
    }
    assert_eq!(
        sim.view.ranges.len(),
        1,
        "lined up one replica at a time, then merged"
    );
    let only = sim.view.ranges.values().next().unwrap();
    assert_eq!(only.range.replicas.len(), 3);
    assert_eq!(only.size_bytes, 4 << 20);
}

#[test]
fn the_smaller_neighbour_moves_to_line_up() {
    let mut sim = Sim::new(4, 4, 2, no_zone);
    sim.config.merge_after_split_ms = 0;
    sim.now_ms = 1000;
    let ranges: Vec<RangeView> = sim.view.ranges.values().cloned().collect();
    for (r, size) in ranges.iter().zip([8u64 << 20, 1 << 20]) {
        let report = RangeReport {
            size_bytes: size,
            ..RangeReport::quiet(r.range.clone(), r.term)
        };
        let hot = sim.config.hot();
        sim.view
            .apply_report(r.leader.unwrap(), &report, sim.now_ms, hot);
    }
    let big = ranges
        .iter()
        .find(|r| r.range.start_key.is_empty())
        .unwrap();
    let big_stores = big.range.store_ids();
    sim.pass(&[]);
    let moving: Vec<&Operator> = sim.operators.values().collect();
    assert_eq!(moving.len(), 1, "{moving:?}");
    assert_ne!(
        moving[0].range_id, big.range.id,
        "the 1 MiB range moves, not the 8 MiB one"
    );
    for _ in 0..20 {
        sim.pass(&[]);
    }
    assert_eq!(sim.view.ranges.len(), 1);
    let only = sim.view.ranges.values().next().unwrap();
    assert_eq!(
        only.range.store_ids(),
        big_stores,
        "merged where the larger one was"
    );
}

#[test]
fn busy_neighbours_stay_apart() {
    let mut sim = Sim::new(3, 3, 2, no_zone);
    sim.config.merge_after_split_ms = 0;
    sim.config.merge_ops_per_sec_max = 10.0;
    sim.now_ms = 1000;
    for r in sim.view.ranges.clone().values() {
        let report = RangeReport {
            write_ops: 100,
            ..RangeReport::quiet(r.range.clone(), r.term)
        };
        let hot = sim.config.hot();
        sim.view
            .apply_report(r.leader.unwrap(), &report, sim.now_ms, hot);
    }
    sim.pass(&[]);
    assert_eq!(sim.view.ranges.len(), 2, "busy neighbours stay apart");
    // Quiet again, they merge; with merging off they would not.
    sim.config.merge_ops_per_sec_max = 1000.0;
    sim.pass(&[]);
    sim.pass(&[]);
    assert_eq!(sim.view.ranges.len(), 1);
}
