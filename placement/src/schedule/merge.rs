//! Merging small, cold neighbours: ranges split for size or load that since shrank or
//! cooled would otherwise stay apart forever, each costing its stores a Raft group. A
//! merge moves no data, so neighbours on different stores are lined up first: the
//! smaller one's replicas move, one at a time, to the other's stores.

use shale_rpc::placement::RangeStep;

use super::Planner;
use crate::view::RangeView;

impl Planner<'_> {
    /// Has the left of each pair of small, cold, settled neighbours take the right one
    /// over (`RangeStep::Merge`), or, with their replicas on different stores, moves one
    /// of the smaller one's replicas to a store of the other.
    pub(super) fn merge_small(&mut self) {
        if self.config.merge_size_bytes_max == 0 {
            return;
        }
        let view = self.view;
        let ordered = view.scan(b"", usize::MAX);
        for pair in ordered.windows(2) {
            if self.full() {
                return;
            }
            let (left, right) = (pair[0], pair[1]);
            let busy = |r: &RangeView| self.busy.ranges.contains(&r.range.id);
            if busy(left) || busy(right) {
                // One of them may be lining up: the balancer must not move the other's
                // replicas meanwhile, or the two never meet.
                if self.small_cold_neighbours(left, right) {
                    self.busy.ranges.insert(left.range.id);
                    self.busy.ranges.insert(right.range.id);
                }
                continue;
            }
            if !self.may_merge(left, right) {
                continue;
            }
            if left.range.store_ids() == right.range.store_ids() {
                let step = RangeStep::Merge {
                    range_id: left.range.id,
                    source: right.range.id,
                    end_key: right.range.end_key.clone(),
                };
                self.push(left, "merge-small", vec![step]);
                continue;
            }
            // The smaller one moves: a new replica is a snapshot of it.
            let (mover, other) = match left.size_bytes < right.size_bytes {
                true => (left, right),
                false => (right, left),
            };
            if let Some(steps) = self.line_up(mover, other) {
                self.push(mover, "merge-line-up", steps);
                self.busy.ranges.insert(other.range.id);
            }
        }
    }

    /// Moves one replica of `mover` from a store `other` does not use to one it does.
    fn line_up(&self, mover: &RangeView, other: &RangeView) -> Option<Vec<RangeStep>> {
        let from = mover
            .range
            .store_ids()
            .into_iter()
            .find(|&s| other.range.replica_on(s).is_none())?;
        let to = other.range.store_ids().into_iter().find(|&s| {
            mover.range.replica_on(s).is_none()
                && self.is_up(s)
                && self.has_room(s)
                && self.has_room(from)
                && !(self.shunned(s) || self.low(s) || self.nearly_full(s))
                && self.zone_allows(mover, from, s)
        })?;
        let remove = RangeStep::RemoveReplica {
            range_id: mover.range.id,
            store_id: from,
        };
        Some(vec![self.add_step(mover, to), remove])
    }

    /// Whether `left` may take `right` over now (once on the same stores).
    fn may_merge(&self, left: &RangeView, right: &RangeView) -> bool {
        let config = self.config;
        let settled = |r: &RangeView| {
            r.leader.is_some()
                && !self.busy.ranges.contains(&r.range.id)
                && r.learners.is_empty()
                && r.diverged.is_empty()
                && r.span_since_ms > 0
                && self.now_ms.saturating_sub(r.span_since_ms) >= config.merge_after_split_ms
                && r.range.replicas.len() == config.replicas
        };
        self.small_cold_neighbours(left, right)
            && settled(left)
            && settled(right)
            && left
                .range
                .store_ids()
                .iter()
                .all(|&s| self.is_up(s) && !self.low(s))
            && right.range.store_ids().iter().all(|&s| self.is_up(s))
    }

    /// Neighbours small and cold enough together to be one range.
    fn small_cold_neighbours(&self, left: &RangeView, right: &RangeView) -> bool {
        !left.range.end_key.is_empty()
            && left.range.end_key == right.range.start_key
            && left.hot_since_ms.is_none()
            && right.hot_since_ms.is_none()
            && left.size_bytes.saturating_add(right.size_bytes) <= self.config.merge_size_bytes_max
            && left.ops_per_sec + right.ops_per_sec <= self.config.merge_ops_per_sec_max
    }
}
