//! Merging small, cold neighbours: ranges split for size or load that since shrank or
//! cooled would otherwise stay apart forever, each costing its stores a Raft group.

use shale_rpc::placement::RangeStep;

use super::Planner;
use crate::view::RangeView;

impl Planner<'_> {
    /// Has the left of each pair of small, cold, settled neighbours on the same stores
    /// take the right one over (`RangeStep::Merge`). Neighbours on different stores are
    /// left to the balancer: they merge once their replicas happen to line up.
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
            if !self.may_merge(left, right) {
                continue;
            }
            let step = RangeStep::Merge {
                range_id: left.range.id,
                source: right.range.id,
                end_key: right.range.end_key.clone(),
            };
            self.push(left, "merge-small", vec![step]);
        }
    }

    fn may_merge(&self, left: &RangeView, right: &RangeView) -> bool {
        let config = self.config;
        let settled = |r: &RangeView| {
            r.leader.is_some()
                && !self.busy.ranges.contains(&r.range.id)
                && r.hot_since_ms.is_none()
                && r.learners.is_empty()
                && r.diverged.is_empty()
                && r.span_since_ms > 0
                && self.now_ms.saturating_sub(r.span_since_ms) >= config.merge_after_split_ms
                && r.range.replicas.len() == config.replicas
        };
        !left.range.end_key.is_empty()
            && left.range.end_key == right.range.start_key
            && settled(left)
            && settled(right)
            && left.size_bytes.saturating_add(right.size_bytes) <= config.merge_size_bytes_max
            && left.ops_per_sec + right.ops_per_sec <= config.merge_ops_per_sec_max
            && left.range.store_ids() == right.range.store_ids()
            && left
                .range
                .store_ids()
                .iter()
                .all(|&s| self.is_up(s) && !self.low(s))
    }
}
