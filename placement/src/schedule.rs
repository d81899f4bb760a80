//! The schedulers: a pure function from the cluster view (and what is already in
//! flight) to new operators. Repair comes first (replicas on down or draining stores,
//! missing or extra replicas, zones), then replica balance, leader balance and splits
//! of hot ranges. Every decision respects per-store and per-pass limits.

use serde::{Deserialize, Serialize};
use shale_rpc::placement::{RangeStep, StoreState};
use shale_rpc::{RangeId, StoreId};

use crate::ids::IdMap;
use crate::operator::{Busy, Operator};
use crate::view::{ClusterView, HotThresholds, RangeView, StoreView};

/// Sources (and targets) a balance step tries before giving up for this pass.
const BALANCE_PAIRS_TRIED: usize = 8;

/// How much fuller than the emptiest store a store past `space-high-ratio` must be to
/// take no balance moves.
const SPACE_RATIO_SLACK: f64 = 0.05;

/// The used fraction of a store's file system, if it reported its size.
fn used_ratio(s: &StoreView) -> Option<f64> {
    (s.capacity_bytes > 0).then(|| {
        s.capacity_bytes.saturating_sub(s.available_bytes) as f64 / s.capacity_bytes as f64
    })
}

/// How long after a leader reported a silent learner on a store no new replica is
/// planned there.
const SILENT_LEARNER_SHUN_MS: u64 = 60_000;

/// How the schedulers behave.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Replicas every range should have.
    pub replicas: usize,
    /// A store silent this long is down; its replicas are re-created elsewhere.
    pub store_down_after_ms: u64,
    /// Milliseconds between scheduling passes.
    pub interval_ms: u64,
    /// An operator not done after this long is dropped (the next pass plans again).
    pub operator_timeout_ms: u64,
    /// A step handed to a leader is handed out again after this long if not done.
    pub step_retry_ms: u64,
    /// Operators moving replicas to or from one store at once.
    pub store_operators_max: u32,
    /// New operators one pass may start.
    pub operators_per_pass_max: usize,
    /// Stores within this fraction of the mean replica (or leader) count are balanced.
    pub balance_tolerance_ratio: f64,
    /// A range serving this many requests per second...
    pub hot_ops_per_sec: f64,
    /// ...or this many bytes per second...
    pub hot_bytes_per_sec: f64,
    /// ...for this long is split in two.
    pub hot_window_ms: u64,
    /// A store whose file system is fuller than this (used over size) takes no replicas
    /// moved for balance, and new replicas go elsewhere when they can: replica counts
    /// alone would fill small disks first.
    pub space_high_ratio: f64,
    /// Neighbouring ranges holding this many bytes or fewer together are merged into
    /// one, once cold (see below); 0 turns merging off. Keep it well under the stores'
    /// `split.size-bytes-max` (96 MiB by default) so merged ranges are not split again.
    pub merge_size_bytes_max: u64,
    /// Neighbours serving more requests per second than this together are left apart.
    pub merge_ops_per_sec_max: f64,
    /// A range is merged only once its key span has stayed as it is this long (a split
    /// just made is not undone at once).
    pub merge_after_split_ms: u64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            replicas: 3,
            store_down_after_ms: 30 * 60 * 1000,
            interval_ms: 1000,
            operator_timeout_ms: 10 * 60 * 1000,
            step_retry_ms: 10_000,
            store_operators_max: 4,
            operators_per_pass_max: 64,
            balance_tolerance_ratio: 0.05,
            hot_ops_per_sec: 5000.0,
            hot_bytes_per_sec: 64.0 * 1024.0 * 1024.0,
            hot_window_ms: 60_000,
            space_high_ratio: 0.8,
            merge_size_bytes_max: 20 << 20,
            merge_ops_per_sec_max: 100.0,
            merge_after_split_ms: 10 * 60 * 1000,
        }
    }
}

impl ScheduleConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.replicas == 0 || self.replicas > 7 {
            return Err("schedule.replicas must be 1..=7".into());
        }
        if self.interval_ms == 0 || self.step_retry_ms == 0 || self.operators_per_pass_max == 0 {
            return Err("schedule intervals and limits must be above 0".into());
        }
        if !(0.0..1.0).contains(&self.balance_tolerance_ratio) {
            return Err("schedule.balance-tolerance-ratio must be in [0, 1)".into());
        }
        if !(self.space_high_ratio > 0.0 && self.space_high_ratio <= 1.0) {
            return Err("schedule.space-high-ratio must be in (0, 1]".into());
        }
        Ok(())
    }

    pub fn hot(&self) -> HotThresholds {
        HotThresholds {
            ops_per_sec: self.hot_ops_per_sec,
            bytes_per_sec: self.hot_bytes_per_sec,
        }
    }
}

/// Plans new operators for one pass. `paused` stops everything but repair.
pub fn schedule(
    view: &ClusterView,
    busy: &Busy,
    config: &ScheduleConfig,
    now_ms: u64,
    paused: bool,
) -> Vec<Operator> {
    let mut plan = Planner::new(view, busy, config, now_ms);
    plan.repair();
    if !paused {
        plan.relieve_low_space();
        // Before balancing: ranges being merged are not moved for balance meanwhile.
        plan.merge_small();
        plan.balance_replicas();
        plan.balance_leaders();
        plan.split_hot();
    }
    plan.operators
}

struct Planner<'a> {
    view: &'a ClusterView,
    busy: Busy,
    config: &'a ScheduleConfig,
    now_ms: u64,
    states: IdMap<StoreState>,
    /// Replica and leader counts per store, updated as operators are planned.
    replicas: IdMap<i64>,
    leaders: IdMap<i64>,
    operators: Vec<Operator>,
    /// Zone of each store with a `zone` label.
    zones: IdMap<u32>,
    /// Each store's ranges (as the view has them, before this pass's plans).
    by_store: IdMap<Vec<RangeId>>,
    /// Ranges repair must look at, by id.
    needs_repair: Vec<RangeId>,
    /// The lowest used fraction of an up store's file system (1 when none is known).
    emptiest: f64,
}

impl<'a> Planner<'a> {
    fn new(view: &'a ClusterView, busy: &Busy, config: &'a ScheduleConfig, now_ms: u64) -> Self {
        let states: IdMap<StoreState> = view
            .stores
            .values()
            .map(|s| {
                (
                    s.id,
                    view.store_state(s, now_ms, config.store_down_after_ms),
                )
            })
            .collect();
        let mut names: Vec<&str> = Vec::new();
        let mut zones: IdMap<u32> = IdMap::default();
        for s in view.stores.values() {
            if let Some(z) = s.zone() {
                let n = names.iter().position(|&x| x == z).unwrap_or_else(|| {
                    names.push(z);
                    names.len() - 1
                });
                zones.insert(s.id, n as u32);
            }
        }
        // One walk over every range: counts, each store's ranges, and the ranges repair
        // must look at (a replica not on an up store, a wrong count, a zone shared).
        let mut replicas: IdMap<i64> = view.stores.keys().map(|&s| (s, 0)).collect();
        let mut leaders = replicas.clone();
        let mut by_store: IdMap<Vec<RangeId>> = IdMap::default();
        let mut needs_repair = Vec::new();
        let up = |s: &StoreId| states.get(s) == Some(&StoreState::Up);
        for r in view.ranges.values() {
            let reps = &r.range.replicas;
            for rep in reps {
                *replicas.entry(rep.store_id).or_default() += 1;
                by_store.entry(rep.store_id).or_default().push(r.range.id);
            }
            if let Some(l) = r.leader {
                *leaders.entry(l).or_default() += 1;
            }
            let zone_at = |i: usize| zones.get(&reps[i].store_id);
            let suspect = reps.len() != config.replicas
                || !reps.iter().all(|rep| up(&rep.store_id))
                || !r.silent_learners.is_empty()
                || !r.diverged.is_empty()
                || (0..reps.len())
                    .any(|i| zone_at(i).is_some() && (0..i).any(|j| zone_at(j) == zone_at(i)));
            if suspect && r.leader.is_some() && !busy.ranges.contains(&r.range.id) {
                needs_repair.push(r.range.id);
            }
        }
        needs_repair.sort_unstable();
        // Count what operators in flight will have done, so that a pass does not plan
        // again what the last one already set going.
        for (store, delta) in &busy.replica_delta {
            *replicas.entry(*store).or_default() += delta;
        }
        for (range_id, to) in &busy.transfers {
            if let Some(from) = view.ranges.get(range_id).and_then(|r| r.leader) {
                *leaders.entry(from).or_default() -= 1;
                *leaders.entry(*to).or_default() += 1;
            }
        }
        let emptiest = view
            .stores
            .values()
            .filter(|s| states.get(&s.id) == Some(&StoreState::Up))
            .filter_map(used_ratio)
            .fold(1.0, f64::min);
        Planner {
            emptiest,
            zones,
            by_store,
            needs_repair,
            view,
            busy: busy.clone(),
            config,
            now_ms,
            states,
            replicas,
            leaders,
            operators: Vec::new(),
        }
    }

    fn full(&self) -> bool {
        self.operators.len() >= self.config.operators_per_pass_max
    }

    fn state(&self, store: StoreId) -> StoreState {
        self.states.get(&store).copied().unwrap_or(StoreState::Down)
    }

    fn is_up(&self, store: StoreId) -> bool {
        self.state(store) == StoreState::Up
    }

    /// True for a store some leader reported a silent learner on in the last
    /// `SILENT_LEARNER_SHUN_MS`: new replicas go elsewhere, or an add given up there
    /// would be planned there again at once.
    fn shunned(&self, store: StoreId) -> bool {
        self.store(store)
            .and_then(|s| s.silent_learner_ms)
            .is_some_and(|t| self.now_ms.saturating_sub(t) < SILENT_LEARNER_SHUN_MS)
    }

    /// True for a store that says it is low on disk space: nothing new goes there, and
    /// its leaders and replicas move away.
    fn low(&self, store: StoreId) -> bool {
        self.store(store).is_some_and(|s| s.low_space)
    }

    /// True for a store whose file system is fuller than `space-high-ratio` and than
    /// the emptiest up store by more than `SPACE_RATIO_SLACK`: stores equally full (or
    /// sharing a disk) are balanced by counts as usual.
    fn nearly_full(&self, store: StoreId) -> bool {
        self.store(store).and_then(used_ratio).is_some_and(|r| {
            r > self.config.space_high_ratio && r > self.emptiest + SPACE_RATIO_SLACK
        })
    }

    /// True when `store` may take the lead of `range`.
    fn may_lead(&self, range: &RangeView, store: StoreId) -> bool {
        self.is_up(store) && !self.low(store) && range.may_lead_on(store)
    }

    fn has_room(&self, store: StoreId) -> bool {
        self.busy.stores.get(&store).copied().unwrap_or(0) < self.config.store_operators_max
    }

    fn store(&self, id: StoreId) -> Option<&StoreView> {
        self.view.stores.get(&id)
    }

    /// The store's zone, as a small number (zones are interned once per pass).
    fn zone(&self, id: StoreId) -> Option<u32> {
        self.zones.get(&id).copied()
    }

    fn push(&mut self, range: &RangeView, reason: &'static str, steps: Vec<RangeStep>) {
        for step in &steps {
            match step {
                RangeStep::AddReplica { store_id, .. } => {
                    *self.replicas.entry(*store_id).or_default() += 1;
                    *self.busy.stores.entry(*store_id).or_default() += 1;
                }
                RangeStep::RemoveReplica { store_id, .. } => {
                    *self.replicas.entry(*store_id).or_default() -= 1;
                    *self.busy.stores.entry(*store_id).or_default() += 1;
                }
                RangeStep::TransferLeader { to_store, .. } => {
                    *self.leaders.entry(*to_store).or_default() += 1;
                    if let Some(from) = range.leader {
                        *self.leaders.entry(from).or_default() -= 1;
                    }
                }
                RangeStep::Split { .. } => {}
                RangeStep::Merge { source, .. } => {
                    self.busy.ranges.insert(*source);
                    for r in &range.range.replicas {
                        *self.replicas.entry(r.store_id).or_default() -= 1;
                    }
                }
            }
        }
        self.busy.ranges.insert(range.range.id);
        self.operators
            .push(Operator::new(range, reason, steps, self.now_ms));
    }

    /// The best up store to take a new replica of `range`: not holding one, room for
    /// work, a zone the range does not use yet if there is one, then fewest replicas.
    fn pick_target(&self, range: &RangeView, ignoring: Option<StoreId>) -> Option<StoreId> {
        let used_zones: Vec<u32> = range
            .range
            .replicas
            .iter()
            .filter(|r| Some(r.store_id) != ignoring && self.is_up(r.store_id))
            .filter_map(|r| self.zone(r.store_id))
            .collect();
        self.view
            .stores
            .values()
            .filter(|s| self.is_up(s.id) && self.has_room(s.id) && !self.shunned(s.id))
            .filter(|s| !self.low(s.id) && range.range.replica_on(s.id).is_none())
            .min_by_key(|s| {
                let zone_taken = self.zone(s.id).is_some_and(|z| used_zones.contains(&z));
                (
                    zone_taken,
                    self.nearly_full(s.id),
                    self.replicas.get(&s.id).copied().unwrap_or(0),
                    s.used_bytes,
                    s.id,
                )
            })
            .map(|s| s.id)
    }

    fn add_step(&self, range: &RangeView, store: StoreId) -> RangeStep {
        RangeStep::AddReplica {
            range_id: range.range.id,
            store_id: store,
            addr: self
                .store(store)
                .map(|s| s.addr.clone())
                .unwrap_or_default(),
        }
    }

    /// Which replica of a range with too many to drop: one on a store that is not up,
    /// then one a consistency check found diverged, then a silent learner (its leader
    /// cannot reach it), then a learner (it adds no
    /// safety yet), then one sharing its zone with another, then the one on the fullest
    /// store.
    fn pick_extra(&self, range: &RangeView) -> Option<StoreId> {
        let stores: Vec<StoreId> = range.range.replicas.iter().map(|r| r.store_id).collect();
        let zone_dups = |s: StoreId| {
            let z = self.zone(s);
            z.is_some() && stores.iter().filter(|&&o| self.zone(o) == z).count() > 1
        };
        stores
            .iter()
            .copied()
            .filter(|&s| self.has_room(s) || !self.is_up(s))
            .max_by_key(|&s| {
                (
                    !self.is_up(s),
                    range.diverged_on(s),
                    range.silent_learner_on(s),
                    range.learner_on(s),
                    zone_dups(s),
                    self.replicas.get(&s).copied().unwrap_or(0),
                    s,
                )
            })
    }

    /// A store holding a diverged replica of `range` that can go before a sound copy is
    /// added elsewhere: the `healthy` sound replicas left are a majority without it.
    fn diverged_to_drop(&self, range: &RangeView, healthy: usize) -> Option<StoreId> {
        let left = range.range.replicas.len().checked_sub(1)?;
        if healthy * 2 <= left {
            return None;
        }
        range
            .range
            .replicas
            .iter()
            .find(|r| range.diverged.contains(&r.id))
            .map(|r| r.store_id)
    }

    /// True while `range` has had learners for less than the operator timeout, one of
    /// them still heard from by its leader.
    fn learner_settling(&self, range: &RangeView) -> bool {
        range.has_live_learner()
            && range.learners_since_ms.is_some_and(|since| {
                self.now_ms.saturating_sub(since) < self.config.operator_timeout_ms
            })
    }

    /// Replicas on stores that are down or draining are replaced; missing ones added;
    /// extra ones removed; a range with two replicas in one zone gets one in another.
    fn repair(&mut self) {
        let target = self.config.replicas;
        let view = self.view;
        for id in std::mem::take(&mut self.needs_repair) {
            let range = &view.ranges[&id];
            if self.full() {
                return;
            }
            if self.busy.ranges.contains(&id) {
                continue;
            }
            if range.leader.is_none() {
                continue;
            }
            // A learner its leader cannot hear counts no more than one on a down store.
            let healthy = range
                .range
                .replicas
                .iter()
                .filter(|r| self.is_up(r.store_id) && range.is_sound(r.id))
                .count();
            if healthy < target {
                if let Some(to) = self.pick_target(range, None) {
                    let step = self.add_step(range, to);
                    self.push(range, "repair", vec![step]);
                } else if let Some(from) = self.diverged_to_drop(range, healthy) {
                    // No store to add a sound copy on first: the diverged copy goes,
                    // and the next pass adds one where it was.
                    let step = RangeStep::RemoveReplica {
                        range_id: id,
                        store_id: from,
                    };
                    self.push(range, "diverged", vec![step]);
                }
                continue;
            }
            if range.range.replicas.len() > target {
                if let Some(from) = self.pick_extra(range) {
                    // A learner catching up is an add under way (perhaps of an operator
                    // a restarted placement lost): it gets the operator timeout before
                    // it, or a voter on an up store, goes.
                    if self.is_up(from) && self.learner_settling(range) {
                        continue;
                    }
                    let step = RangeStep::RemoveReplica {
                        range_id: id,
                        store_id: from,
                    };
                    self.push(range, "repair", vec![step]);
                }
                continue;
            }
            if let Some(to) = self.zone_fix(range) {
                let step = self.add_step(range, to);
                self.push(range, "zone", vec![step]);
            }
        }
    }

    /// A store in a zone `range` does not use, when two of its replicas share a zone.
    fn zone_fix(&self, range: &RangeView) -> Option<StoreId> {
        let replicas = &range.range.replicas;
        let zone_at = |i: usize| self.zone(replicas[i].store_id);
        let dup = (0..replicas.len())
            .any(|i| zone_at(i).is_some() && (0..i).any(|j| zone_at(j) == zone_at(i)));
        if !dup {
            return None;
        }
        let to = self.pick_target(range, None)?;
        let zone = self.zone(to);
        (zone.is_some() && !(0..replicas.len()).any(|i| zone_at(i) == zone)).then_some(to)
    }

    /// Moves leaders, then replicas, off up stores low on disk space (the lowest first),
    /// to stores that are not, as far as per-store limits allow. A leader goes first: a
    /// low store refuses new data for the ranges it leads.
    fn relieve_low_space(&mut self) {
        let view = self.view;
        let mut low: Vec<&StoreView> = view
            .stores
            .values()
            .filter(|s| s.low_space && self.is_up(s.id))
            .collect();
        low.sort_unstable_by_key(|s| (s.available_bytes, s.id));
        for store in low {
            for id in self.ranges_of(store.id).to_vec() {
                if self.full() || !self.has_room(store.id) {
                    break;
                }
                let range = &view.ranges[&id];
                if self.busy.ranges.contains(&id)
                    || range.leader.is_none()
                    || range.range.replicas.len() != self.config.replicas
                {
                    continue;
                }
                if range.leader == Some(store.id) {
                    let to = range
                        .range
                        .replicas
                        .iter()
                        .map(|r| r.store_id)
                        .filter(|&s| s != store.id && self.may_lead(range, s))
                        .min_by_key(|s| (self.leaders.get(s).copied().unwrap_or(0), *s));
                    if let Some(to_store) = to {
                        let step = RangeStep::TransferLeader {
                            range_id: id,
                            to_store,
                        };
                        self.push(range, "low-space", vec![step]);
                    }
                    continue;
                }
                let Some(to) = self
                    .pick_target(range, Some(store.id))
                    .filter(|&to| self.zone_allows(range, store.id, to))
                else {
                    continue;
                };
                let remove = RangeStep::RemoveReplica {
                    range_id: id,
                    store_id: store.id,
                };
                let steps = vec![self.add_step(range, to), remove];
                self.push(range, "low-space", steps);
            }
        }
    }

    /// Up stores with room for work, by `counts` (fewest first), and the mean count over
    /// all up stores.
    fn ranked(&self, counts: &IdMap<i64>) -> Option<(Vec<(i64, StoreId)>, f64)> {
        let up: Vec<(i64, StoreId)> = self
            .view
            .stores
            .keys()
            .filter(|&&s| self.is_up(s))
            .map(|&s| (counts.get(&s).copied().unwrap_or(0), s))
            .collect();
        if up.len() < 2 {
            return None;
        }
        let mean = up.iter().map(|(c, _)| *c as f64).sum::<f64>() / up.len() as f64;
        let mut ranked: Vec<(i64, StoreId)> =
            up.into_iter().filter(|(_, s)| self.has_room(*s)).collect();
        ranked.sort_unstable();
        Some((ranked, mean))
    }

    fn tolerance(&self, mean: f64) -> i64 {
        ((mean * self.config.balance_tolerance_ratio).ceil() as i64).max(1)
    }

    /// Plans one move from a store with many (replicas or leaders, per `counts`) to one
    /// with few: the fullest sources and emptiest targets are tried in turn, since zones
    /// or existing replicas may rule a pair out. False when nothing is worth moving.
    fn balance_step(&mut self, leaders: bool) -> bool {
        let counts = if leaders {
            &self.leaders
        } else {
            &self.replicas
        };
        let Some((ranked, mean)) = self.ranked(counts) else {
            return false;
        };
        let tolerance = self.tolerance(mean);
        for &(most, from) in ranked.iter().rev().take(BALANCE_PAIRS_TRIED) {
            if leaders {
                if let Some((range, to)) = self.leader_candidate(from, most - tolerance) {
                    let step = RangeStep::TransferLeader {
                        range_id: range.range.id,
                        to_store: to,
                    };
                    self.push(range, "balance-leaders", vec![step]);
                    return true;
                }
                continue;
            }
            for &(fewest, to) in ranked.iter().take(BALANCE_PAIRS_TRIED) {
                if most - fewest <= tolerance {
                    break;
                }
                if self.shunned(to) || self.low(to) || self.nearly_full(to) {
                    continue;
                }
                let Some(range) = self.replica_candidate(from, to) else {
                    continue;
                };
                let remove = RangeStep::RemoveReplica {
                    range_id: range.range.id,
                    store_id: from,
                };
                let steps = vec![self.add_step(range, to), remove];
                self.push(range, "balance-replicas", steps);
                return true;
            }
        }
        false
    }

    /// The store's ranges as the view had them at the start of the pass.
    fn ranges_of(&self, store: StoreId) -> &[RangeId] {
        self.by_store
            .get(&store)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// A range on `from` whose replica can move to `to`; followers first (no leader
    /// transfer needed).
    fn replica_candidate(&self, from: StoreId, to: StoreId) -> Option<&'a RangeView> {
        let view = self.view;
        let ids = self.ranges_of(from);
        let movable = |r: &&RangeView| {
            !self.busy.ranges.contains(&r.range.id)
                && r.leader.is_some()
                && r.range.replica_on(to).is_none()
                && r.range.replicas.len() == self.config.replicas
                && self.zone_allows(r, from, to)
        };
        let mut candidates = ids.iter().map(|id| &view.ranges[id]).filter(movable);
        let first = candidates.next()?;
        if first.leader != Some(from) {
            return Some(first);
        }
        candidates.find(|r| r.leader != Some(from)).or(Some(first))
    }

    /// A range led by `from` with a replica on an up store leading fewer than `below`
    /// ranges, and that store (the one leading fewest).
    fn leader_candidate(&self, from: StoreId, below: i64) -> Option<(&'a RangeView, StoreId)> {
        let view = self.view;
        let ids = self.ranges_of(from);
        ids.iter()
            .map(|id| &view.ranges[id])
            .filter(|r| r.leader == Some(from) && !self.busy.ranges.contains(&r.range.id))
            .find_map(|r| {
                let to = r
                    .range
                    .replicas
                    .iter()
                    .map(|rep| rep.store_id)
                    .filter(|&s| s != from && self.may_lead(r, s))
                    .min_by_key(|s| (self.leaders.get(s).copied().unwrap_or(0), *s))?;
                (self.leaders.get(&to).copied().unwrap_or(0) < below).then_some((r, to))
            })
    }

    /// Moves replicas from stores with the most to stores with the fewest until they are
    /// within the tolerance.
    fn balance_replicas(&mut self) {
        while !self.full() && self.balance_step(false) {}
    }

    /// True when replacing the replica on `from` with one on `to` keeps zones apart.
    fn zone_allows(&self, range: &RangeView, from: StoreId, to: StoreId) -> bool {
        let Some(zone) = self.zone(to) else {
            return true;
        };
        if self.zone(from) == Some(zone) {
            return true;
        }
        !range
            .range
            .replicas
            .iter()
            .any(|r| r.store_id != from && self.zone(r.store_id) == Some(zone))
    }

    /// Moves leadership from stores leading the most ranges to ones leading fewest.
    fn balance_leaders(&mut self) {
        while !self.full() && self.balance_step(true) {}
    }

    /// Splits ranges hot for the whole window, then spreads the leaders of hot ranges
    /// so no store leads two while a replica holder leads none.
    fn split_hot(&mut self) {
        let view = self.view;
        let mut hot: Vec<&RangeView> = view
            .ranges
            .values()
            .filter(|r| r.hot_since_ms.is_some() && r.leader.is_some())
            .collect();
        hot.sort_unstable_by_key(|r| r.range.id);
        for range in &hot {
            if self.full() {
                return;
            }
            let since = range.hot_since_ms.unwrap_or(self.now_ms);
            if self.now_ms.saturating_sub(since) >= self.config.hot_window_ms
                && !self.busy.ranges.contains(&range.range.id)
            {
                let step = RangeStep::Split {
                    range_id: range.range.id,
                    split_key: None,
                };
                self.push(range, "split-hot", vec![step]);
            }
        }
        let mut hot_leaders: IdMap<usize> = IdMap::default();
        for r in &hot {
            *hot_leaders.entry(r.leader.unwrap_or(0)).or_default() += 1;
        }
        for range in &hot {
            if self.full() || self.busy.ranges.contains(&range.range.id) {
                continue;
            }
            let from = range.leader.unwrap_or(0);
            if hot_leaders.get(&from).copied().unwrap_or(0) < 2 {
                continue;
            }
            let to = range
                .range
                .replicas
                .iter()
                .map(|r| r.store_id)
                .filter(|&s| s != from && self.may_lead(range, s))
                .min_by_key(|s| (hot_leaders.get(s).copied().unwrap_or(0), *s));
            let Some(to) = to else { continue };
            if hot_leaders.get(&to).copied().unwrap_or(0) + 1 >= hot_leaders[&from] {
                continue;
            }
            *hot_leaders.entry(from).or_default() -= 1;
            *hot_leaders.entry(to).or_default() += 1;
            let step = RangeStep::TransferLeader {
                range_id: range.range.id,
                to_store: to,
            };
            self.push(range, "spread-hot-leaders", vec![step]);
        }
    }
}

mod merge;
#[cfg(test)]
mod tests;
