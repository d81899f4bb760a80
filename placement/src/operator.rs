//! An operator: the steps placement wants one range to go through (add a replica, then
//! remove another...), handed one at a time to the range's leader with its heartbeat
//! answers, each checked off when a later report shows it done. Pure.

use std::collections::VecDeque;

use shale_rpc::placement::{OperatorInfo, RangeStep};
use shale_rpc::{RangeId, StoreId};

use crate::ids::{IdMap, IdSet};
use crate::view::RangeView;

/// Steps for one range, the current one first.
#[derive(Debug, Clone, PartialEq)]
pub struct Operator {
    pub range_id: RangeId,
    pub reason: &'static str,
    pub steps: VecDeque<RangeStep>,
    /// The range's `epoch.version` when the operator began (a split raises it).
    pub base_version: u64,
    pub created_ms: u64,
    /// When the current step was last handed out.
    pub delivered_ms: Option<u64>,
}

impl Operator {
    pub fn new(
        range: &RangeView,
        reason: &'static str,
        steps: Vec<RangeStep>,
        now_ms: u64,
    ) -> Self {
        Operator {
            range_id: range.range.id,
            reason,
            steps: steps.into(),
            base_version: range.range.epoch.version,
            created_ms: now_ms,
            delivered_ms: None,
        }
    }

    /// Checks off the steps `range` shows done; true when nothing is left.
    pub fn advance(&mut self, range: &RangeView) -> bool {
        while let Some(step) = self.steps.front() {
            if !step_done(step, range, self.base_version) {
                break;
            }
            self.steps.pop_front();
            self.delivered_ms = None;
        }
        self.steps.is_empty()
    }

    /// The step to hand the range's leader now: the current one, unless it was handed
    /// out less than `retry_ms` ago. Removing the leader's own replica first moves
    /// leadership to a replica on a store `usable` accepts.
    pub fn next_step(
        &mut self,
        range: &RangeView,
        now_ms: u64,
        retry_ms: u64,
        usable: impl Fn(StoreId) -> bool,
    ) -> Option<RangeStep> {
        let step = self.steps.front()?.clone();
        if self
            .delivered_ms
            .is_some_and(|t| now_ms.saturating_sub(t) < retry_ms)
        {
            return None;
        }
        self.delivered_ms = Some(now_ms);
        match step {
            RangeStep::RemoveReplica { range_id, store_id } if range.leader == Some(store_id) => {
                let to = range
                    .range
                    .replicas
                    .iter()
                    .map(|r| r.store_id)
                    .find(|&s| s != store_id && range.may_lead_on(s) && usable(s))?;
                Some(RangeStep::TransferLeader {
                    range_id,
                    to_store: to,
                })
            }
            step => Some(step),
        }
    }

    /// True when the current step adds a replica that `range`'s leader reports as a
    /// silent learner.
    pub fn waits_on_silent_learner(&self, range: &RangeView) -> bool {
        matches!(
            self.steps.front(),
            Some(RangeStep::AddReplica { store_id, .. }) if range.silent_learner_on(*store_id)
        )
    }

    pub fn is_expired(&self, now_ms: u64, timeout_ms: u64) -> bool {
        now_ms.saturating_sub(self.created_ms) > timeout_ms
    }

    /// Stores that must be up for the remaining steps: new replicas' and new leaders'.
    pub fn targets(&self) -> impl Iterator<Item = StoreId> + '_ {
        self.steps.iter().filter_map(|s| match s {
            RangeStep::AddReplica { store_id, .. } => Some(*store_id),
            RangeStep::TransferLeader { to_store, .. } => Some(*to_store),
            _ => None,
        })
    }

    /// Stores this operator is still moving data to or from.
    pub fn stores(&self) -> impl Iterator<Item = StoreId> + '_ {
        self.steps.iter().filter_map(|s| match s {
            RangeStep::AddReplica { store_id, .. } | RangeStep::RemoveReplica { store_id, .. } => {
                Some(*store_id)
            }
            _ => None,
        })
    }

    pub fn info(&self, now_ms: u64) -> OperatorInfo {
        OperatorInfo {
            range_id: self.range_id,
            reason: self.reason.to_string(),
            steps: self.steps.iter().cloned().collect(),
            age_ms: now_ms.saturating_sub(self.created_ms),
        }
    }
}

fn step_done(step: &RangeStep, range: &RangeView, base_version: u64) -> bool {
    match step {
        // Added means voting: a learner still catching up counts toward no quorum.
        RangeStep::AddReplica { store_id, .. } => range.votes_on(*store_id),
        RangeStep::RemoveReplica { store_id, .. } => range.range.replica_on(*store_id).is_none(),
        RangeStep::TransferLeader { to_store, .. } => {
            range.leader == Some(*to_store) || range.range.replica_on(*to_store).is_none()
        }
        RangeStep::Split { .. } => range.range.epoch.version > base_version,
        RangeStep::Merge { end_key, .. } => range.range.end_key == *end_key,
    }
}

/// What operators in flight keep busy: their ranges, and per store how many.
#[derive(Debug, Default, Clone)]
pub struct Busy {
    pub ranges: IdSet,
    pub stores: IdMap<u32>,
    /// Replicas each store gains (or loses) once the operators finish.
    pub replica_delta: IdMap<i64>,
    /// Leadership moves still to happen: range and target store.
    pub transfers: Vec<(RangeId, StoreId)>,
}

impl Busy {
    pub fn of<'a>(operators: impl Iterator<Item = &'a Operator>) -> Self {
        let mut busy = Busy::default();
        for op in operators {
            busy.ranges.insert(op.range_id);
            for s in op.stores() {
                *busy.stores.entry(s).or_default() += 1;
            }
            for step in &op.steps {
                match step {
                    RangeStep::AddReplica { store_id, .. } => {
                        *busy.replica_delta.entry(*store_id).or_default() += 1;
                    }
                    RangeStep::RemoveReplica { store_id, .. } => {
                        *busy.replica_delta.entry(*store_id).or_default() -= 1;
                    }
                    RangeStep::TransferLeader { to_store, .. } => {
                        busy.transfers.push((op.range_id, *to_store));
                    }
                    RangeStep::Split { .. } => {}
                    // The range taken over must not be moved or split meanwhile.
                    RangeStep::Merge { source, .. } => {
                        busy.ranges.insert(*source);
                    }
                }
            }
        }
        busy
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use shale_rpc::{Epoch, RangeDescriptor, ReplicaDescriptor};

    fn view(stores: &[StoreId], leader: StoreId) -> RangeView {
        RangeView {
            range: RangeDescriptor {
                id: 7,
                start_key: Bytes::new(),
                end_key: Bytes::new(),
                epoch: Epoch {
                    conf_ver: 1,
                    version: 1,
                },
                replicas: stores
                    .iter()
                    .map(|&s| ReplicaDescriptor {
                        id: s * 100,
                        store_id: s,
                    })
                    .collect(),
            },
            leader: Some(leader),
            term: 1,
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
        }
    }

    /// Range 7's replica on store 1 moves to store 4.
    fn move_from_1_to_4() -> Vec<RangeStep> {
        vec![
            RangeStep::AddReplica {
                range_id: 7,
                store_id: 4,
                addr: "x".into(),
            },
            RangeStep::RemoveReplica {
                range_id: 7,
                store_id: 1,
            },
        ]
    }

    #[test]
    fn an_added_replica_is_done_once_it_votes_and_a_learner_is_never_handed_leadership() {
        let steps = move_from_1_to_4();
        let mut op = Operator::new(&view(&[1, 2, 3], 1), "test", steps.clone(), 0);
        let mut learning = view(&[1, 2, 3, 4], 1);
        learning.learners = vec![400];
        assert!(!op.advance(&learning));
        assert_eq!(
            op.next_step(&learning, 0, 1000, |_| true),
            Some(steps[0].clone()),
            "the add stays the step while its replica is a learner"
        );
        assert!(!op.waits_on_silent_learner(&learning));
        learning.silent_learners = vec![400];
        assert!(
            op.waits_on_silent_learner(&learning),
            "an add whose learner the leader cannot hear is given up"
        );
        // Store 4 votes now; the one on store 3 is a learner (added by hand, say): the
        // leader's replica goes only once leadership moves to a voter.
        let mut added = view(&[1, 2, 3, 4], 1);
        added.learners = vec![300];
        assert!(!op.advance(&added));
        assert_eq!(
            op.next_step(&added, 1100, 1000, |s| s != 2),
            Some(RangeStep::TransferLeader {
                range_id: 7,
                to_store: 4
            })
        );
        assert_eq!(
            op.next_step(&added, 2200, 1000, |s| s == 3),
            None,
            "no usable voter to lead"
        );
    }

    #[test]
    fn a_diverged_leaders_replica_goes_after_leadership_moves_to_a_sound_voter() {
        // Five replicas; the leader's (store 1) and store 2's were found diverged.
        let mut range = view(&[1, 2, 3, 4, 5], 1);
        range.diverged = vec![100, 200];
        let remove = vec![RangeStep::RemoveReplica {
            range_id: 7,
            store_id: 1,
        }];
        let mut op = Operator::new(&range, "diverged", remove, 0);
        assert_eq!(
            op.next_step(&range, 0, 1000, |_| true),
            Some(RangeStep::TransferLeader {
                range_id: 7,
                to_store: 3
            }),
            "not to store 2, whose copy diverged too"
        );
    }

    #[test]
    fn a_move_adds_then_moves_leadership_off_then_removes() {
        let before = view(&[1, 2, 3], 1);
        let steps = move_from_1_to_4();
        let mut op = Operator::new(&before, "test", steps.clone(), 0);
        assert!(!op.advance(&before));
        assert_eq!(
            op.next_step(&before, 0, 1000, |_| true),
            Some(steps[0].clone())
        );
        // Not handed out again while it runs.
        assert_eq!(op.next_step(&before, 500, 1000, |_| true), None);
        let added = view(&[1, 2, 3, 4], 1);
        assert!(!op.advance(&added));
        assert_eq!(
            op.next_step(&added, 600, 1000, |s| s != 2),
            Some(RangeStep::TransferLeader {
                range_id: 7,
                to_store: 3
            })
        );
        let moved = view(&[1, 2, 3, 4], 3);
        assert_eq!(
            op.next_step(&moved, 1700, 1000, |_| true),
            Some(steps[1].clone())
        );
        assert!(op.advance(&view(&[2, 3, 4], 3)));
    }
}
