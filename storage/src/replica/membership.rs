//! Membership on a replica: proposing a change, and a leader promoting its learners. A
//! replica joins its range as a learner: it gets the log (or a snapshot) but neither
//! votes nor counts toward a quorum until it has caught up, so adding a replica on a
//! store that is slow, down or cut off never costs the range a failure it could
//! otherwise survive (as CockroachDB and TiKV do it).

use std::time::{Duration, Instant};

use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2};
use raft::ProgressState;
use shale_rpc::{KvError, RangeDescriptor, ReplicaId, StoreId};
use tokio::sync::oneshot;
use tracing::info;

use super::{Proposal, Replica, WriteReply};
use crate::metrics::METRICS;

/// A learner is promoted once it has acknowledged a log that reaches the leader's
/// commit index within this many entries and the start of the leader's log (what it
/// lacks needs no snapshot), and is not waiting for a snapshot. (Not only
/// while the leader streams it entries: a learner caught up by a snapshot of an idle
/// range may stay in the probing state, its log complete, until the next write.)
pub const LEARNER_LAG_MAX: u64 = 64;

/// Whether a learner whose progress is `state` with `matched` acknowledged may vote,
/// the leader's log starting after `truncated` and committed through `committed`.
fn caught_up(state: ProgressState, matched: u64, truncated: u64, committed: u64) -> bool {
    state != ProgressState::Snapshot
        && matched > 0
        && matched >= truncated
        && matched + LEARNER_LAG_MAX >= committed
}

/// A change of one replica's membership (`kind`: add as a learner, make a voter, remove).
pub fn single_change(kind: ConfChangeType, replica_id: ReplicaId) -> ConfChangeV2 {
    let mut single = ConfChangeSingle::default();
    single.set_change_type(kind);
    single.node_id = replica_id;
    let mut change = ConfChangeV2::default();
    change.mut_changes().push(single);
    change
}

impl Replica {
    /// Proposes a membership change; answered once applied.
    pub fn propose_conf_change(
        &mut self,
        change: ConfChangeV2,
        new_range: RangeDescriptor,
        reply: WriteReply,
    ) {
        self.wake();
        let range_id = self.range.id;
        let refuse = |reason: &str| KvError::InvalidConfChange {
            range_id,
            reason: reason.into(),
        };
        let err = if !self.is_leader() {
            Some(self.not_leader())
        } else if new_range.epoch.conf_ver != self.range.epoch.conf_ver + 1
            || new_range.epoch.version != self.range.epoch.version
        {
            Some(KvError::EpochNotMatch {
                current: vec![self.range.clone()],
            })
        } else if self.node.raft.has_pending_conf() {
            Some(refuse("another membership change is in progress"))
        } else if self.frozen().is_some() || self.merge_in_flight() {
            Some(refuse("a merge of the range is under way"))
        } else {
            None
        };
        if let Some(e) = err {
            let _ = reply.send(Err(e));
            return;
        }
        // The new descriptor, then the addresses of its stores that this store knows:
        // every replica's store learns them as it applies the change, so the others can
        // reach a store new to them (to ask the new member's vote once the leader is
        // gone, say) before it has said a word to them. Older stores read the
        // descriptor alone.
        let addresses: Vec<(StoreId, String)> = {
            let book = self.addresses.read().expect("address book lock");
            new_range
                .replicas
                .iter()
                .filter_map(|r| book.get(&r.store_id).map(|a| (r.store_id, a.clone())))
                .collect()
        };
        let context = postcard::to_stdvec(&(&new_range, addresses)).expect("descriptor encodes");
        let before = self.node.raft.raft_log.last_index();
        match self.node.propose_conf_change(context, change) {
            Ok(()) if self.node.raft.raft_log.last_index() == before + 1 => {
                self.proposals.push_back(Proposal {
                    index: before + 1,
                    term: self.node.raft.term,
                    replies: vec![reply],
                });
            }
            Ok(()) => {
                let _ = reply.send(Err(refuse("raft did not take the change")));
            }
            Err(e) => {
                let _ = reply.send(Err(refuse(&e.to_string())));
            }
        }
    }

    /// The range's learners as this replica applied its membership, in id order.
    pub fn learners(&self) -> Vec<ReplicaId> {
        let mut ids: Vec<ReplicaId> = self
            .node
            .raft
            .prs()
            .conf()
            .learners()
            .iter()
            .copied()
            .collect();
        ids.sort_unstable();
        ids
    }

    pub fn learner_count(&self) -> usize {
        self.node.raft.prs().conf().learners().len()
    }

    pub fn is_learner(&self, replica_id: ReplicaId) -> bool {
        self.node.raft.prs().conf().learners().contains(&replica_id)
    }

    /// Notes a message from replica `from` (only learners are tracked, on a leader).
    pub(super) fn heard_from(&mut self, from: ReplicaId) {
        if let Some(heard) = self.heard_learners.iter_mut().find(|(id, _)| *id == from) {
            heard.1 = Instant::now();
        }
    }

    /// On the leader, each tick: tracks the learners of the applied membership, a new
    /// one as heard from now.
    pub(super) fn track_learners(&mut self) {
        let learners = self.node.raft.prs().conf().learners();
        if learners.is_empty() && self.heard_learners.is_empty() {
            return;
        }
        self.heard_learners.retain(|(id, _)| learners.contains(id));
        for &id in learners {
            if !self.heard_learners.iter().any(|(h, _)| *h == id) {
                self.heard_learners.push((id, Instant::now()));
            }
        }
    }

    /// On the leader: learners not heard from for `after` (each heartbeat asks for an
    /// answer, so one that gives none is cut off from this store or down). A learner
    /// taking a long snapshot still answers heartbeats. Empty on a follower.
    pub fn silent_learners(&self, after: Duration) -> Vec<ReplicaId> {
        if !self.is_leader() {
            return Vec::new();
        }
        let mut ids: Vec<ReplicaId> = (self.heard_learners.iter())
            .filter(|(_, at)| at.elapsed() >= after)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// On the leader, each tick: proposes making a caught-up learner a voter, one at a
    /// time and with no other membership change in flight. The descriptor keeps its
    /// replicas; its `conf_ver` rises.
    pub(super) fn maybe_promote_learner(&mut self) {
        let raft = &self.node.raft;
        if !self.is_leader() || raft.has_pending_conf() {
            return;
        }
        let (committed, truncated) = (raft.raft_log.committed, raft.raft_log.first_index() - 1);
        let caught_up = raft
            .prs()
            .conf()
            .learners()
            .iter()
            .copied()
            .filter(|id| {
                raft.prs()
                    .get(*id)
                    .is_some_and(|p| caught_up(p.state, p.matched, truncated, committed))
            })
            .min();
        let Some(id) = caught_up else {
            return;
        };
        let mut new_range = self.range.clone();
        new_range.epoch.conf_ver += 1;
        info!(
            range_id = self.range.id,
            replica_id = id,
            "promoting a caught-up learner to voter"
        );
        METRICS.learners_promoted.inc();
        // Nobody waits on this answer: whoever added the learner watches its status.
        let (reply, _) = oneshot::channel();
        self.propose_conf_change(single_change(ConfChangeType::AddNode, id), new_range, reply);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ProgressState::{Probe, Replicate, Snapshot};

    #[test]
    fn a_learner_votes_once_its_acknowledged_log_is_near_the_commit_and_needs_no_snapshot() {
        // Caught up, whether raft replicates to it or still probes (a learner caught up
        // by a snapshot of an idle range probes until the next write).
        assert!(caught_up(Replicate, 100, 50, 100));
        assert!(caught_up(Probe, 100, 50, 100));
        assert!(caught_up(Replicate, 100 - LEARNER_LAG_MAX, 0, 100));
        // Too far behind, waiting for a snapshot, or behind the log's start.
        assert!(!caught_up(Replicate, 99 - LEARNER_LAG_MAX, 0, 100));
        assert!(!caught_up(Snapshot, 100, 50, 100));
        assert!(!caught_up(Probe, 40, 50, 60));
        // Nothing acknowledged (cut off since it was added): never, even when the
        // commit index is young enough for zero to be "within the lag".
        assert!(!caught_up(Probe, 0, 0, 20));
        assert!(!caught_up(Replicate, 0, 0, 0));
    }
}
