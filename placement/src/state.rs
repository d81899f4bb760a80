//! The placement leader's state and what it does with each request: heartbeats update
//! the view and collect steps for the heartbeating store, scheduling passes plan new
//! operators, admin requests add operators by hand. Pure: persistence is the caller's.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use shale_rpc::placement::{
    ClusterId, Labels, PlacementError, PlacementStatus, RangeStep, RemovedReplica, StoreHeartbeat,
    StoreState,
};
use shale_rpc::{RangeId, StoreId};
use tracing::{info, warn};

use crate::ids::{IdMap, IdSet};
use crate::operator::{Busy, Operator};
use crate::schedule::{schedule, ScheduleConfig};
use crate::view::{ClusterView, StoreView};

/// Most ranges one heartbeat answer asks a store to wake.
const ORPHANS_PER_HEARTBEAT_MAX: usize = 4096;

/// Keys of placement's own state in its Raft group.
pub mod keys {
    use bytes::Bytes;

    pub const CLUSTER_ID: &[u8] = b"placement/cluster-id";
    pub const PAUSED: &[u8] = b"placement/paused";
    pub const STORE_PREFIX: &[u8] = b"placement/store/";
    pub const RANGE_PREFIX: &[u8] = b"placement/range/";

    pub fn store(id: u64) -> Bytes {
        [STORE_PREFIX, &id.to_be_bytes()].concat().into()
    }

    pub fn range(id: u64) -> Bytes {
        [RANGE_PREFIX, &id.to_be_bytes()].concat().into()
    }

    /// The first key after every key starting with `prefix`.
    pub fn prefix_end(prefix: &[u8]) -> Bytes {
        let mut end = prefix.to_vec();
        *end.last_mut().expect("prefix is not empty") += 1;
        end.into()
    }
}

/// A store as placement persists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreRecord {
    pub id: StoreId,
    pub addr: String,
    pub labels: Labels,
    pub draining: bool,
}

impl StoreRecord {
    pub fn encode(&self) -> Bytes {
        postcard::to_stdvec(self)
            .expect("store record encodes")
            .into()
    }

    pub fn decode(b: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(b)
    }

    fn of(s: &StoreView) -> Self {
        StoreRecord {
            id: s.id,
            addr: s.addr.clone(),
            labels: s.labels.clone(),
            draining: s.draining,
        }
    }
}

/// What a heartbeat gets back, and the store record to persist if it changed.
pub struct HeartbeatAnswer {
    pub steps: Vec<RangeStep>,
    pub wake: Vec<RangeId>,
    /// Replicas the store reported leaderless that are no longer members of their range.
    pub removed: Vec<RemovedReplica>,
    pub changed: Option<StoreRecord>,
    /// The store's next heartbeat must report every range it leads.
    pub want_full: bool,
    /// Up stores low on disk space.
    pub low_space_stores: Vec<StoreId>,
}

/// What the placement leader holds in memory.
pub struct Leader {
    pub cluster_id: ClusterId,
    pub view: ClusterView,
    pub operators: IdMap<Operator>,
    pub paused: bool,
    /// Per store: ranges it holds whose leader's store is down (refreshed each pass).
    pub orphans: IdMap<Vec<RangeId>>,
    /// Stores that sent a full report since this node became leader; the others are
    /// asked for one (the view began with no leaders known).
    pub full_reports: IdSet,
}

impl Leader {
    pub fn new(cluster_id: ClusterId, since_ms: u64) -> Self {
        Leader {
            cluster_id,
            view: ClusterView::new(since_ms),
            operators: IdMap::default(),
            paused: false,
            orphans: IdMap::default(),
            full_reports: IdSet::default(),
        }
    }

    pub fn restore_store(&mut self, record: StoreRecord) {
        let mut s = StoreView::new(record.id, record.addr, record.labels);
        s.draining = record.draining;
        self.view.stores.insert(s.id, s);
    }

    /// Records a (re-)registered store; returns the record to persist if it changed.
    pub fn register(&mut self, id: StoreId, addr: String, labels: Labels) -> Option<StoreRecord> {
        let before = self.view.stores.get(&id).map(StoreRecord::of);
        let store = self
            .view
            .stores
            .entry(id)
            .or_insert_with(|| StoreView::new(id, addr.clone(), labels.clone()));
        store.addr = addr;
        store.labels = labels;
        let after = StoreRecord::of(store);
        (before.as_ref() != Some(&after)).then_some(after)
    }

    /// Takes a store's heartbeat; returns the steps for ranges it leads and the store
    /// record to persist if its address or labels changed.
    pub fn heartbeat(
        &mut self,
        hb: &StoreHeartbeat,
        now_ms: u64,
        config: &ScheduleConfig,
    ) -> Result<HeartbeatAnswer, PlacementError> {
        if hb.cluster_id != self.cluster_id {
            return Err(PlacementError::WrongCluster {
                expected: self.cluster_id,
                got: hb.cluster_id,
            });
        }
        let Some(store) = self.view.stores.get_mut(&hb.store_id) else {
            return Err(PlacementError::UnknownStore {
                store_id: hb.store_id,
            });
        };
        let before = StoreRecord::of(store);
        store.addr = hb.addr.clone();
        store.labels = hb.labels.clone();
        store.capacity_bytes = hb.capacity_bytes;
        store.available_bytes = hb.available_bytes;
        store.used_bytes = hb.used_bytes;
        if store.low_space != hb.low_space {
            let (store_id, available) = (hb.store_id, hb.available_bytes);
            match hb.low_space {
                true => warn!(
                    store_id,
                    available, "store is low on disk space: moving its data away"
                ),
                false => info!(store_id, available, "store has disk space again"),
            }
        }
        store.low_space = hb.low_space;
        store.last_heartbeat_ms = Some(now_ms);
        let after = StoreRecord::of(store);
        let changed = (before != after).then_some(after);
        let hot = config.hot();
        for report in &hb.ranges {
            self.view.apply_report(hb.store_id, report, now_ms, hot);
        }
        let reported: IdSet = hb.ranges.iter().map(|r| r.range.id).collect();
        self.view
            .cool_unreported(hb.store_id, &reported, now_ms, hot);
        if hb.full {
            self.full_reports.insert(hb.store_id);
        }
        let want_full = !self.full_reports.contains(&hb.store_id);
        // Every operator of a range this store leads may have a step due, whether or
        // not the range was in this (partial) report.
        let view = &self.view;
        let usable = |s: StoreId| {
            view.stores.get(&s).is_some_and(|st| {
                view.store_state(st, now_ms, config.store_down_after_ms) == StoreState::Up
            })
        };
        let mut steps = Vec::new();
        let mut finished = Vec::new();
        for (id, op) in self.operators.iter_mut() {
            let Some(range) = view.ranges.get(id) else {
                continue;
            };
            if range.leader != Some(hb.store_id) {
                continue;
            }
            if op.advance(range) {
                finished.push(*id);
                continue;
            }
            if let Some(step) = op.next_step(range, now_ms, config.step_retry_ms, usable) {
                steps.push(step);
            }
        }
        for id in finished {
            self.operators.remove(&id);
        }
        let wake = self.orphans.remove(&hb.store_id).unwrap_or_default();
        let removed = self.view.removed_replicas(hb.store_id, &hb.leaderless);
        let low_space_stores = view
            .stores
            .values()
            .filter(|s| s.low_space && usable(s.id))
            .map(|s| s.id)
            .collect();
        Ok(HeartbeatAnswer {
            steps,
            wake,
            removed,
            changed,
            want_full,
            low_space_stores,
        })
    }

    /// Drops finished and expired operators, then plans new ones. Returns how many
    /// were added.
    pub fn schedule_pass(&mut self, now_ms: u64, config: &ScheduleConfig) -> usize {
        let view = &self.view;
        let down = |s: StoreId| {
            view.stores.get(&s).is_none_or(|st| {
                view.store_state(st, now_ms, config.store_down_after_ms) == StoreState::Down
            })
        };
        self.operators.retain(|id, op| match view.ranges.get(id) {
            None => false,
            Some(range) => {
                if op.is_expired(now_ms, config.operator_timeout_ms) {
                    tracing::info!(range_id = id, reason = op.reason, steps = ?op.steps, "operator timed out");
                    return false;
                }
                // A step that needs a store that went down can never finish.
                if op.targets().any(down) {
                    tracing::info!(range_id = id, reason = op.reason, steps = ?op.steps, "operator dropped: its target store is down");
                    return false;
                }
                // Nor, likely, one waiting on a learner its leader cannot hear (cut off
                // from it): repair adds one elsewhere and then drops the silent one.
                if op.waits_on_silent_learner(range) {
                    tracing::info!(range_id = id, reason = op.reason, steps = ?op.steps, "operator dropped: the learner it added is silent");
                    return false;
                }
                !op.advance(range)
            }
        });
        self.find_orphans(now_ms, config);
        let busy = Busy::of(self.operators.values());
        let planned = schedule(&self.view, &busy, config, now_ms, self.paused);
        let n = planned.len();
        for op in planned {
            tracing::info!(range_id = op.range_id, reason = op.reason, steps = ?op.steps, "operator planned");
            self.operators.insert(op.range_id, op);
        }
        n
    }

    /// Ranges whose reported leader is on a down store, per live store holding a
    /// replica: their replicas may be hibernating and would never notice.
    fn find_orphans(&mut self, now_ms: u64, config: &ScheduleConfig) {
        let view = &self.view;
        let down = |s: StoreId| {
            view.stores.get(&s).is_none_or(|st| {
                view.store_state(st, now_ms, config.store_down_after_ms) == StoreState::Down
            })
        };
        let mut orphans: IdMap<Vec<RangeId>> = IdMap::default();
        for r in view.ranges.values() {
            let Some(leader) = r.leader else { continue };
            if !down(leader) {
                continue;
            }
            for rep in &r.range.replicas {
                if rep.store_id != leader && !down(rep.store_id) {
                    let list = orphans.entry(rep.store_id).or_default();
                    if list.len() < ORPHANS_PER_HEARTBEAT_MAX {
                        list.push(r.range.id);
                    }
                }
            }
        }
        self.orphans = orphans;
    }

    /// An operator asked for by hand; it replaces whatever the range had in flight.
    pub fn admin_operator(
        &mut self,
        range_id: RangeId,
        steps: Vec<RangeStep>,
        now_ms: u64,
    ) -> Result<(), PlacementError> {
        let range = self
            .view
            .ranges
            .get(&range_id)
            .ok_or(PlacementError::UnknownRange { range_id })?;
        for step in &steps {
            self.check_step(range_id, step)?;
        }
        let op = Operator::new(range, "admin", steps, now_ms);
        self.operators.insert(range_id, op);
        Ok(())
    }

    /// An operator that has `range_id` take over its right neighbour.
    pub fn admin_merge(&mut self, range_id: RangeId, now_ms: u64) -> Result<(), PlacementError> {
        let range = &self
            .view
            .ranges
            .get(&range_id)
            .ok_or(PlacementError::UnknownRange { range_id })?
            .range;
        let right = self
            .view
            .find(&range.end_key)
            .filter(|r| !range.end_key.is_empty() && r.range.start_key == range.end_key)
            .ok_or_else(|| PlacementError::Invalid {
                reason: format!("range {range_id} has no right neighbour to take over"),
            })?;
        if range.store_ids() != right.range.store_ids() {
            return Err(PlacementError::Invalid {
                reason: format!(
                    "ranges {range_id} and {} have replicas on different stores; move them together first",
                    right.range.id
                ),
            });
        }
        let step = RangeStep::Merge {
            range_id,
            source: right.range.id,
            end_key: right.range.end_key.clone(),
        };
        self.admin_operator(range_id, vec![step], now_ms)
    }

    fn check_step(&self, range_id: RangeId, step: &RangeStep) -> Result<(), PlacementError> {
        let range = &self.view.ranges[&range_id].range;
        let invalid = |reason: String| Err(PlacementError::Invalid { reason });
        match step {
            RangeStep::AddReplica { store_id, .. } => {
                if !self.view.stores.contains_key(store_id) {
                    return Err(PlacementError::UnknownStore {
                        store_id: *store_id,
                    });
                }
                if range.replica_on(*store_id).is_some() {
                    return invalid(format!("store {store_id} already holds range {range_id}"));
                }
            }
            RangeStep::RemoveReplica { store_id, .. } => {
                if range.replica_on(*store_id).is_none() {
                    return invalid(format!(
                        "store {store_id} holds no replica of range {range_id}"
                    ));
                }
            }
            RangeStep::TransferLeader { to_store, .. } => {
                if range.replica_on(*to_store).is_none() {
                    return invalid(format!(
                        "store {to_store} holds no replica of range {range_id}"
                    ));
                }
            }
            RangeStep::Split { split_key, .. } => {
                if let Some(k) = split_key {
                    if !range.contains(k) || k == &range.start_key {
                        return invalid(format!("split key is not inside range {range_id}"));
                    }
                }
            }
            RangeStep::Merge { end_key, .. } => {
                if range.end_key.is_empty() || end_key <= &range.end_key && !end_key.is_empty() {
                    return invalid(format!(
                        "range {range_id} has no right neighbour to take over"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Marks a store for decommission or takes it back; returns the record to persist.
    pub fn drain(&mut self, store_id: StoreId, drain: bool) -> Result<StoreRecord, PlacementError> {
        let store = self
            .view
            .stores
            .get_mut(&store_id)
            .ok_or(PlacementError::UnknownStore { store_id })?;
        store.draining = drain;
        Ok(StoreRecord::of(store))
    }

    pub fn status(
        &self,
        leader_node: u64,
        now_ms: u64,
        config: &ScheduleConfig,
    ) -> PlacementStatus {
        let under = self
            .view
            .ranges
            .values()
            .filter(|r| {
                // Voters on stores not down (a learner adds no safety yet, nor does a
                // replica whose data a check found diverged).
                r.range
                    .replicas
                    .iter()
                    .filter(|rep| {
                        !r.learners.contains(&rep.id)
                            && !r.diverged.contains(&rep.id)
                            && self.view.stores.get(&rep.store_id).is_some_and(|s| {
                                self.view.store_state(s, now_ms, config.store_down_after_ms)
                                    != StoreState::Down
                            })
                    })
                    .count()
                    < config.replicas
            })
            .count();
        PlacementStatus {
            cluster_id: self.cluster_id,
            leader_node,
            scheduling_paused: self.paused,
            stores: self.view.stores.len() as u32,
            ranges: self.view.ranges.len() as u32,
            under_replicated_ranges: under as u32,
            operators: self.operators.len() as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shale_rpc::placement::RangeReport;
    use shale_rpc::{Epoch, RangeDescriptor, ReplicaDescriptor};

    fn report(id: RangeId, start: &str, end: &str, ops: u64) -> RangeReport {
        let range = RangeDescriptor {
            id,
            start_key: Bytes::copy_from_slice(start.as_bytes()),
            end_key: Bytes::copy_from_slice(end.as_bytes()),
            epoch: Epoch {
                conf_ver: 1,
                version: 1,
            },
            replicas: vec![
                ReplicaDescriptor {
                    id: id * 10 + 1,
                    store_id: 1,
                },
                ReplicaDescriptor {
                    id: id * 10 + 2,
                    store_id: 2,
                },
            ],
        };
        RangeReport {
            write_ops: ops,
            write_bytes: ops * 100,
            ..RangeReport::quiet(range, 1)
        }
    }

    fn beat(ranges: Vec<RangeReport>, full: bool) -> StoreHeartbeat {
        StoreHeartbeat {
            cluster_id: 7,
            store_id: 1,
            addr: "127.0.0.1:1".into(),
            labels: Labels::new(),
            capacity_bytes: 0,
            available_bytes: 0,
            used_bytes: 0,
            range_count: 2,
            leader_count: 2,
            ranges,
            full,
            leaderless: Vec::new(),
            low_space: false,
        }
    }

    fn leader() -> Leader {
        let mut l = Leader::new(7, 0);
        for id in [1, 2] {
            l.register(id, format!("127.0.0.1:{id}"), Labels::new());
        }
        l
    }

    #[test]
    fn a_range_with_a_diverged_replica_counts_as_under_replicated() {
        let mut l = leader();
        let config = ScheduleConfig {
            replicas: 2,
            ..ScheduleConfig::default()
        };
        let sound = beat(vec![report(1, "", "m", 0), report(2, "m", "", 0)], true);
        l.heartbeat(&sound, 1_000, &config).unwrap();
        assert_eq!(l.status(1, 1_000, &config).under_replicated_ranges, 0);
        let mut diverged = report(2, "m", "", 0);
        diverged.diverged = vec![22];
        let beat2 = beat(vec![report(1, "", "m", 0), diverged], true);
        l.heartbeat(&beat2, 2_000, &config).unwrap();
        assert_eq!(l.status(1, 2_000, &config).under_replicated_ranges, 1);
    }

    #[test]
    fn a_store_is_asked_for_a_full_report_until_it_sends_one() {
        let mut l = leader();
        let config = ScheduleConfig::default();
        let partial = beat(vec![report(1, "", "m", 0)], false);
        assert!(l.heartbeat(&partial, 1_000, &config).unwrap().want_full);
        assert!(l.heartbeat(&partial, 2_000, &config).unwrap().want_full);
        let full = beat(vec![report(1, "", "m", 0), report(2, "m", "", 0)], true);
        assert!(!l.heartbeat(&full, 3_000, &config).unwrap().want_full);
        assert!(!l.heartbeat(&partial, 4_000, &config).unwrap().want_full);
        // A new placement leader knows no store's ranges yet.
        let mut next = leader();
        assert!(next.heartbeat(&partial, 5_000, &config).unwrap().want_full);
    }

    #[test]
    fn ranges_a_heartbeat_leaves_out_keep_their_leader_and_cool_down() {
        let mut l = leader();
        let config = ScheduleConfig {
            hot_ops_per_sec: 100.0,
            ..ScheduleConfig::default()
        };
        let full = beat(vec![report(1, "", "m", 1_000), report(2, "m", "", 0)], true);
        l.heartbeat(&full, 1_000, &config).unwrap();
        assert_eq!(l.view.ranges[&1].ops_per_sec, 1_000.0);
        assert_eq!(l.view.ranges[&1].hot_since_ms, Some(1_000));
        // Only range 2 saw requests; range 1's silence is an idle second.
        let partial = beat(vec![report(2, "m", "", 10)], false);
        l.heartbeat(&partial, 2_000, &config).unwrap();
        assert_eq!(l.view.ranges[&1].ops_per_sec, 500.0);
        assert_eq!(l.view.ranges[&2].ops_per_sec, 5.0);
        for t in 3..40 {
            l.heartbeat(&beat(Vec::new(), false), t * 1_000, &config)
                .unwrap();
        }
        for id in [1, 2] {
            let r = &l.view.ranges[&id];
            assert_eq!(
                (r.leader, r.ops_per_sec, r.hot_since_ms),
                (Some(1), 0.0, None)
            );
            assert_eq!(r.bytes_per_sec, 0.0);
        }
    }

    #[test]
    fn an_operator_gets_its_step_though_its_range_was_not_reported() {
        let mut l = leader();
        let config = ScheduleConfig::default();
        let full = beat(vec![report(1, "", "m", 0), report(2, "m", "", 0)], true);
        l.heartbeat(&full, 1_000, &config).unwrap();
        let step = RangeStep::TransferLeader {
            range_id: 2,
            to_store: 2,
        };
        l.admin_operator(2, vec![step.clone()], 1_000).unwrap();
        let answer = l
            .heartbeat(&beat(Vec::new(), false), 2_000, &config)
            .unwrap();
        assert_eq!(answer.steps, vec![step]);
        // Store 2 reports the range led there at a newer term: the operator is done.
        let mut moved = report(2, "m", "", 0);
        moved.term = 2;
        let mut from_2 = beat(vec![moved], true);
        from_2.store_id = 2;
        l.heartbeat(&from_2, 3_000, &config).unwrap();
        assert!(l.operators.is_empty());
    }
}
