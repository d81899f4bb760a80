//! Placement's picture of the cluster: stores and ranges as their heartbeats describe
//! them. Pure: time comes in as milliseconds, nothing here does I/O.

use std::collections::BTreeMap;

use bytes::Bytes;
use shale_rpc::placement::{
    is_stale, Labels, LeaderlessReplica, RangeReport, RemovedReplica, Route, StoreInfo, StoreState,
};
use shale_rpc::{Epoch, RangeDescriptor, RangeId, ReplicaId, StoreAddr, StoreId};

use crate::ids::{IdMap, IdSet};

/// Weight of the newest report in a range's smoothed rates.
const RATE_SMOOTHING: f64 = 0.5;

/// Rates below this many requests (or bytes) a second count as none.
const RATE_FLOOR: f64 = 0.01;

/// One store as placement knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreView {
    pub id: StoreId,
    pub addr: String,
    pub labels: Labels,
    pub draining: bool,
    pub capacity_bytes: u64,
    pub available_bytes: u64,
    pub used_bytes: u64,
    /// The store said it has less free space than its reserve (not persisted: each
    /// heartbeat says it again).
    pub low_space: bool,
    /// When the last heartbeat came (placement's clock), if one came since this node
    /// became leader. A store never heard from counts from `since_ms` on.
    pub last_heartbeat_ms: Option<u64>,
    /// When a range leader last reported a silent learner here (placement's clock): a
    /// store some leaders cannot reach, though placement hears it.
    pub silent_learner_ms: Option<u64>,
}

impl StoreView {
    pub fn new(id: StoreId, addr: String, labels: Labels) -> Self {
        StoreView {
            id,
            addr,
            labels,
            draining: false,
            capacity_bytes: 0,
            available_bytes: 0,
            used_bytes: 0,
            low_space: false,
            last_heartbeat_ms: None,
            silent_learner_ms: None,
        }
    }

    pub fn zone(&self) -> Option<&str> {
        self.labels.get("zone").map(String::as_str)
    }
}

/// One range as its leader last reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct RangeView {
    pub range: RangeDescriptor,
    pub leader: Option<StoreId>,
    pub term: u64,
    pub size_bytes: u64,
    pub key_count: Option<u64>,
    pub ops_per_sec: f64,
    pub bytes_per_sec: f64,
    /// Since when the range has been hot without a break.
    pub hot_since_ms: Option<u64>,
    /// Replicas the leader last reported as learners (not yet voting).
    pub learners: Vec<ReplicaId>,
    /// Since when the range has had learners without a break, as placement heard.
    pub learners_since_ms: Option<u64>,
    /// Learners the leader last reported it has heard nothing from for a while.
    pub silent_learners: Vec<ReplicaId>,
    /// Replicas whose data a consistency check found differs from the majority's.
    pub diverged: Vec<ReplicaId>,
    /// Since when the range has had its key span (its version last changed), as
    /// placement heard; 0 until a leader reported it (after a restart of placement).
    pub span_since_ms: u64,
}

impl RangeView {
    /// The id of the range's replica on `store_id`, if it has one.
    fn replica_id_on(&self, store_id: StoreId) -> Option<ReplicaId> {
        self.range.replica_on(store_id).map(|r| r.id)
    }

    /// True when the range has a replica on `store_id` that votes (is not a learner).
    pub fn votes_on(&self, store_id: StoreId) -> bool {
        self.replica_id_on(store_id)
            .is_some_and(|id| !self.learners.contains(&id))
    }

    /// True when the range's replica on `store_id` may be handed leadership: it votes
    /// and no consistency check found its data diverged.
    pub fn may_lead_on(&self, store_id: StoreId) -> bool {
        self.votes_on(store_id) && !self.diverged_on(store_id)
    }

    /// True when the range's replica on `store_id` is a learner.
    pub fn learner_on(&self, store_id: StoreId) -> bool {
        self.replica_id_on(store_id)
            .is_some_and(|id| self.learners.contains(&id))
    }

    /// True when the range's replica on `store_id` is a learner its leader has not
    /// heard from for a while (cut off from the leader, say): it may never catch up.
    pub fn silent_learner_on(&self, store_id: StoreId) -> bool {
        self.replica_id_on(store_id)
            .is_some_and(|id| self.silent_learners.contains(&id))
    }

    /// True when the range's replica on `store_id` holds data a consistency check found
    /// differs from the other replicas': it is to be replaced.
    pub fn diverged_on(&self, store_id: StoreId) -> bool {
        self.replica_id_on(store_id)
            .is_some_and(|id| self.diverged.contains(&id))
    }

    /// True when the replica `id` counts toward the range's replicas: neither a
    /// learner its leader cannot hear nor one holding diverged data.
    pub fn is_sound(&self, id: ReplicaId) -> bool {
        !self.silent_learners.contains(&id) && !self.diverged.contains(&id)
    }

    /// True when some learner of the range is still heard from (catching up).
    pub fn has_live_learner(&self) -> bool {
        self.learners
            .iter()
            .any(|l| !self.silent_learners.contains(l))
    }

    fn rates(&self) -> Rates {
        Rates {
            ops_per_sec: self.ops_per_sec,
            bytes_per_sec: self.bytes_per_sec,
        }
    }
}

/// A range's request rates.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Rates {
    ops_per_sec: f64,
    bytes_per_sec: f64,
}

impl Rates {
    /// These rates moved toward one interval's `sample`; what falls below the floor is 0.
    fn smoothed(self, sample: Rates) -> Rates {
        let mix = |old: f64, new: f64| {
            let r = old * (1.0 - RATE_SMOOTHING) + new * RATE_SMOOTHING;
            if r < RATE_FLOOR {
                0.0
            } else {
                r
            }
        };
        Rates {
            ops_per_sec: mix(self.ops_per_sec, sample.ops_per_sec),
            bytes_per_sec: mix(self.bytes_per_sec, sample.bytes_per_sec),
        }
    }

    fn is_zero(self) -> bool {
        self.ops_per_sec == 0.0 && self.bytes_per_sec == 0.0
    }

    /// Since when a range with these rates has been hot, given since when it was.
    fn hot_since(self, was: Option<u64>, now_ms: u64, hot: HotThresholds) -> Option<u64> {
        let is_hot = self.ops_per_sec >= hot.ops_per_sec || self.bytes_per_sec >= hot.bytes_per_sec;
        is_hot.then(|| was.unwrap_or(now_ms))
    }
}

/// What makes a range hot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HotThresholds {
    pub ops_per_sec: f64,
    pub bytes_per_sec: f64,
}

/// Stores and ranges.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    pub stores: BTreeMap<StoreId, StoreView>,
    pub ranges: IdMap<RangeView>,
    /// Ranges by start key, for routing.
    by_start: BTreeMap<Bytes, RangeId>,
    /// When this view started (placement leadership began), for stores never heard from.
    pub since_ms: u64,
    /// Ranges whose descriptor changed or that were dropped since placement last
    /// persisted them.
    pub dirty: IdSet,
    /// Ranges with a rate above zero: a heartbeat that leaves one out counts as an idle
    /// interval for it (stores report only ranges that changed or saw requests).
    warm: IdSet,
}

impl ClusterView {
    pub fn new(since_ms: u64) -> Self {
        ClusterView {
            since_ms,
            ..ClusterView::default()
        }
    }

    /// A store's state at `now_ms`, given how long silence means down.
    pub fn store_state(&self, store: &StoreView, now_ms: u64, down_after_ms: u64) -> StoreState {
        let heard = store.last_heartbeat_ms.unwrap_or(self.since_ms);
        if now_ms.saturating_sub(heard) > down_after_ms {
            StoreState::Down
        } else if store.draining {
            StoreState::Draining
        } else {
            StoreState::Up
        }
    }

    /// Of the replicas `store` reports leaderless, those removed from their range: the
    /// range's descriptor here is of a newer membership that leaves `store` out. Replica
    /// ids are never reused and a descriptor changes membership only through a committed
    /// change, so such a replica can never serve again. A range unknown here, or whose
    /// descriptor still lists the store, or is no newer than the replica's, is left alone.
    pub fn removed_replicas(
        &self,
        store: StoreId,
        leaderless: &[LeaderlessReplica],
    ) -> Vec<RemovedReplica> {
        leaderless
            .iter()
            .filter_map(|r| {
                let Some(known) = self.ranges.get(&r.range_id).map(|v| &v.range) else {
                    return self.merged_away(r);
                };
                let removed =
                    known.epoch.conf_ver > r.conf_ver && known.replica_on(store).is_none();
                removed.then_some(RemovedReplica {
                    range_id: r.range_id,
                    replica_id: r.replica_id,
                    conf_ver: known.epoch.conf_ver,
                })
            })
            .collect()
    }

    /// A replica of a range placement no longer knows, whose keys a newer range holds
    /// now: the range was merged away and the replica missed it (a frozen one's store
    /// keeps it while its own replica of the target may still commit the merge; see the
    /// store's `Destroy`). Versions only rise as keys change hands, so a range not yet
    /// reported (just split off) is never overlapped by a newer one.
    fn merged_away(&self, r: &LeaderlessReplica) -> Option<RemovedReplica> {
        let span = r.span.as_ref()?;
        let probe = RangeDescriptor {
            id: r.range_id,
            start_key: span.start_key.clone(),
            end_key: span.end_key.clone(),
            epoch: Epoch::default(),
            replicas: Vec::new(),
        };
        let newer = self
            .overlapping(&probe)
            .any(|v| v.range.epoch.version > span.version);
        newer.then_some(RemovedReplica {
            range_id: r.range_id,
            replica_id: r.replica_id,
            // Newer than any membership the replica knows.
            conf_ver: u64::MAX,
        })
    }

    /// Adds or updates a range as loaded from placement's own storage (no leader known).
    pub fn restore_range(&mut self, range: RangeDescriptor) {
        let _ = self.insert_range(RangeView {
            range,
            leader: None,
            term: 0,
            size_bytes: 0,
            key_count: None,
            ops_per_sec: 0.0,
            bytes_per_sec: 0.0,
            hot_since_ms: None,
            learners: Vec::new(),
            learners_since_ms: None,
            silent_learners: Vec::new(),
            diverged: Vec::new(),
            span_since_ms: 0,
        });
    }

    /// Takes a range leader's report unless it is stale. Returns true when the range's
    /// descriptor changed (worth persisting).
    pub fn apply_report(
        &mut self,
        leader: StoreId,
        report: &RangeReport,
        now_ms: u64,
        hot: HotThresholds,
    ) -> bool {
        let id = report.range.id;
        let previous = self.ranges.get(&id);
        if let Some(known) = previous {
            if is_stale(
                (report.range.epoch, report.term),
                (known.range.epoch, known.term),
            ) {
                return false;
            }
        }
        if self.overlapped_by_newer(&report.range) {
            return false;
        }
        let seconds = (report.interval_ms.max(1) as f64) / 1000.0;
        let sample = Rates {
            ops_per_sec: (report.read_ops + report.write_ops) as f64 / seconds,
            bytes_per_sec: (report.read_bytes + report.write_bytes) as f64 / seconds,
        };
        let rates = match previous {
            Some(p) => p.rates().smoothed(sample),
            None => sample,
        };
        let hot_since_ms = rates.hot_since(previous.and_then(|p| p.hot_since_ms), now_ms, hot);
        let changed = previous.is_none_or(|p| p.range != report.range);
        for silent in &report.silent_learners {
            let store = report.range.replica(*silent).map(|r| r.store_id);
            if let Some(s) = store.and_then(|s| self.stores.get_mut(&s)) {
                s.silent_learner_ms = Some(now_ms);
            }
        }
        let dropped = self.insert_range(RangeView {
            range: report.range.clone(),
            leader: Some(leader),
            term: report.term,
            size_bytes: report.size_bytes,
            // A report before the leader counted keeps the count placement had.
            key_count: report.key_count.or(previous
                .filter(|p| p.range == report.range)
                .and_then(|p| p.key_count)),
            ops_per_sec: rates.ops_per_sec,
            bytes_per_sec: rates.bytes_per_sec,
            hot_since_ms,
            learners: report.learners.clone(),
            learners_since_ms: match report.learners.is_empty() {
                true => None,
                false => Some(previous.and_then(|p| p.learners_since_ms).unwrap_or(now_ms)),
            },
            silent_learners: report.silent_learners.clone(),
            diverged: report.diverged.clone(),
            span_since_ms: previous
                .filter(|p| {
                    p.span_since_ms > 0 && p.range.epoch.version == report.range.epoch.version
                })
                .map_or(now_ms, |p| p.span_since_ms),
        });
        if rates.is_zero() {
            self.warm.remove(&id);
        } else {
            self.warm.insert(id);
        }
        for d in &dropped {
            self.warm.remove(d);
        }
        if changed {
            self.dirty.insert(id);
        }
        self.dirty.extend(dropped);
        changed
    }

    /// Counts an idle interval for each range `leader` leads with a rate above zero that
    /// its heartbeat left out (`reported` holds the ids it did report).
    pub fn cool_unreported(
        &mut self,
        leader: StoreId,
        reported: &IdSet,
        now_ms: u64,
        hot: HotThresholds,
    ) {
        let mut cooled = Vec::new();
        for id in &self.warm {
            let Some(v) = self.ranges.get_mut(id) else {
                cooled.push(*id);
                continue;
            };
            if v.leader != Some(leader) || reported.contains(id) {
                continue;
            }
            let rates = v.rates().smoothed(Rates::default());
            v.ops_per_sec = rates.ops_per_sec;
            v.bytes_per_sec = rates.bytes_per_sec;
            v.hot_since_ms = rates.hot_since(v.hot_since_ms, now_ms, hot);
            if rates.is_zero() {
                cooled.push(*id);
            }
        }
        for id in cooled {
            self.warm.remove(&id);
        }
    }

    /// True when another range overlapping `range` has a newer version (a split this
    /// report has not seen yet).
    fn overlapped_by_newer(&self, range: &RangeDescriptor) -> bool {
        self.overlapping(range).any(|other| {
            other.range.id != range.id && other.range.epoch.version > range.epoch.version
        })
    }

    fn overlapping<'a>(
        &'a self,
        range: &'a RangeDescriptor,
    ) -> impl Iterator<Item = &'a RangeView> + 'a {
        // The range starting at or before `start_key`, then every range starting inside.
        let before = self
            .by_start
            .range(..=range.start_key.clone())
            .next_back()
            .map(|(_, id)| *id);
        let upper = if range.end_key.is_empty() {
            std::ops::Bound::Unbounded
        } else {
            std::ops::Bound::Excluded(range.end_key.clone())
        };
        // A malformed (empty or inverted) interval overlaps only what holds its start.
        let well_formed = range.end_key.is_empty() || range.start_key < range.end_key;
        let inside = well_formed
            .then(|| {
                self.by_start
                    .range((std::ops::Bound::Excluded(range.start_key.clone()), upper))
                    .map(|(_, id)| *id)
            })
            .into_iter()
            .flatten();
        before
            .into_iter()
            .chain(inside)
            .filter_map(|id| self.ranges.get(&id))
            .filter(move |v| v.range.overlaps(&range.start_key, &range.end_key))
    }

    /// Inserts `view`, dropping ranges it overlaps; returns the ids of those dropped.
    fn insert_range(&mut self, view: RangeView) -> Vec<RangeId> {
        let stale: Vec<RangeId> = self
            .overlapping(&view.range)
            .map(|v| v.range.id)
            .chain(self.ranges.get(&view.range.id).map(|v| v.range.id))
            .collect();
        for &id in &stale {
            if let Some(old) = self.ranges.remove(&id) {
                if self.by_start.get(&old.range.start_key) == Some(&id) {
                    self.by_start.remove(&old.range.start_key);
                }
            }
        }
        let id = view.range.id;
        self.by_start.insert(view.range.start_key.clone(), id);
        self.ranges.insert(id, view);
        stale.into_iter().filter(|&s| s != id).collect()
    }

    /// The range holding `key`.
    pub fn find(&self, key: &[u8]) -> Option<&RangeView> {
        let (_, id) = self
            .by_start
            .range(..=Bytes::copy_from_slice(key))
            .next_back()?;
        self.ranges.get(id).filter(|v| v.range.contains(key))
    }

    /// Up to `limit` ranges in key order from the one holding `start_key`.
    pub fn scan(&self, start_key: &[u8], limit: usize) -> Vec<&RangeView> {
        let first = self
            .find(start_key)
            .map(|v| v.range.start_key.clone())
            .unwrap_or_else(|| Bytes::copy_from_slice(start_key));
        self.by_start
            .range(first..)
            .filter_map(|(_, id)| self.ranges.get(id))
            .take(limit)
            .collect()
    }

    /// The route to a range: its descriptor, leader and the addresses of its stores.
    pub fn route(&self, view: &RangeView) -> Route {
        Route {
            range: view.range.clone(),
            leader: view.leader,
            stores: view
                .range
                .replicas
                .iter()
                .filter_map(|r| {
                    self.stores.get(&r.store_id).map(|s| StoreAddr {
                        store_id: s.id,
                        addr: s.addr.clone(),
                    })
                })
                .collect(),
            size_bytes: view.size_bytes,
            key_count: view.key_count,
            ops_per_sec: view.ops_per_sec,
            learners: view.learners.clone(),
            silent_learners: view.silent_learners.clone(),
            diverged: view.diverged.clone(),
        }
    }

    /// Replica and leader counts per store.
    pub fn counts(&self) -> IdMap<(u32, u32)> {
        let mut counts: IdMap<(u32, u32)> = IdMap::default();
        for v in self.ranges.values() {
            for r in &v.range.replicas {
                counts.entry(r.store_id).or_default().0 += 1;
            }
            if let Some(l) = v.leader {
                counts.entry(l).or_default().1 += 1;
            }
        }
        counts
    }

    /// Every store as `shale ctl stores` shows it.
    pub fn store_infos(&self, now_ms: u64, down_after_ms: u64) -> Vec<StoreInfo> {
        let counts = self.counts();
        self.stores
            .values()
            .map(|s| {
                let (ranges, leaders) = counts.get(&s.id).copied().unwrap_or_default();
                StoreInfo {
                    id: s.id,
                    addr: s.addr.clone(),
                    state: self.store_state(s, now_ms, down_after_ms),
                    labels: s.labels.clone(),
                    capacity_bytes: s.capacity_bytes,
                    available_bytes: s.available_bytes,
                    used_bytes: s.used_bytes,
                    low_space: s.low_space,
                    ranges,
                    leaders,
                    last_heartbeat_ms_ago: s.last_heartbeat_ms.map(|t| now_ms.saturating_sub(t)),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shale_rpc::placement::KeySpan;
    use shale_rpc::ReplicaDescriptor;

    pub(crate) fn range(id: RangeId, start: &str, end: &str, version: u64) -> RangeDescriptor {
        RangeDescriptor {
            id,
            start_key: Bytes::copy_from_slice(start.as_bytes()),
            end_key: Bytes::copy_from_slice(end.as_bytes()),
            epoch: Epoch {
                conf_ver: 1,
                version,
            },
            replicas: vec![ReplicaDescriptor {
                id: id * 10,
                store_id: 1,
            }],
        }
    }

    fn report(range: RangeDescriptor, term: u64) -> RangeReport {
        RangeReport::quiet(range, term)
    }

    const COLD: HotThresholds = HotThresholds {
        ops_per_sec: 1e9,
        bytes_per_sec: 1e12,
    };

    #[test]
    fn only_replicas_a_newer_membership_leaves_out_are_named_removed() {
        let mut view = ClusterView::new(0);
        let mut a = range(1, "", "m", 1);
        a.epoch.conf_ver = 4;
        a.replicas.push(ReplicaDescriptor {
            id: 11,
            store_id: 2,
        });
        view.restore_range(a);
        let leaderless = |range_id, conf_ver| LeaderlessReplica {
            range_id,
            replica_id: 99,
            conf_ver,
            span: None,
        };
        let removed =
            view.removed_replicas(3, &[leaderless(1, 3), leaderless(1, 4), leaderless(7, 1)]);
        assert_eq!(
            removed,
            vec![RemovedReplica {
                range_id: 1,
                replica_id: 99,
                conf_ver: 4
            }],
            "an older membership without store 3; not the current one, not an unknown range"
        );
        assert!(
            view.removed_replicas(2, &[leaderless(1, 3)]).is_empty(),
            "store 2 is still a member (partitioned, not removed)"
        );
    }

    #[test]
    fn a_replica_of_a_range_merged_away_is_named_removed() {
        let mut view = ClusterView::new(0);
        let mut merged = range(1, "", "", 1);
        merged.epoch.version = 4;
        view.restore_range(merged);
        let frozen = |range_id, version| LeaderlessReplica {
            range_id,
            replica_id: 99,
            conf_ver: 1,
            span: Some(KeySpan {
                start_key: Bytes::from("m"),
                end_key: Bytes::new(),
                version,
            }),
        };
        let removed = view.removed_replicas(3, &[frozen(2, 3)]);
        assert_eq!(removed.len(), 1, "range 1 (version 4) holds its keys now");
        assert!(
            view.removed_replicas(3, &[frozen(2, 4)]).is_empty(),
            "nothing newer holds its keys"
        );
        let empty = LeaderlessReplica {
            span: None,
            ..frozen(2, 3)
        };
        assert!(
            view.removed_replicas(3, &[empty]).is_empty(),
            "a replica without data is never judged by overlap"
        );
    }

    #[test]
    fn split_report_replaces_the_parent_and_stale_parent_is_ignored() {
        let mut view = ClusterView::new(0);
        assert!(view.apply_report(1, &report(range(1, "", "", 1), 1), 0, COLD));
        assert!(view.apply_report(1, &report(range(1, "", "m", 2), 1), 0, COLD));
        assert!(view.apply_report(1, &report(range(2, "m", "", 2), 1), 0, COLD));
        assert_eq!(view.find(b"a").unwrap().range.id, 1);
        assert_eq!(view.find(b"z").unwrap().range.id, 2);
        // A late report of the parent from before the split changes nothing.
        assert!(!view.apply_report(3, &report(range(1, "", "", 1), 5), 0, COLD));
        assert_eq!(view.find(b"z").unwrap().range.id, 2);
        let ids: Vec<_> = view.scan(b"", 10).iter().map(|v| v.range.id).collect();
        assert_eq!(ids, vec![1, 2]);
    }

    #[test]
    fn older_term_with_same_epoch_is_stale() {
        let mut view = ClusterView::new(0);
        view.apply_report(2, &report(range(1, "", "", 1), 5), 0, COLD);
        view.apply_report(3, &report(range(1, "", "", 1), 4), 0, COLD);
        assert_eq!(view.ranges[&1].leader, Some(2));
        view.apply_report(3, &report(range(1, "", "", 1), 6), 0, COLD);
        assert_eq!(view.ranges[&1].leader, Some(3));
    }

    #[test]
    fn a_silent_store_goes_down() {
        let mut view = ClusterView::new(1_000);
        view.stores
            .insert(1, StoreView::new(1, "a".into(), Labels::new()));
        let s = view.stores[&1].clone();
        assert_eq!(view.store_state(&s, 5_000, 10_000), StoreState::Up);
        assert_eq!(view.store_state(&s, 12_000, 10_000), StoreState::Down);
    }
}
