//! Merges as a store sees them (see `replica::merge`): freezes made durable by a flush,
//! merged replicas dropped and their Raft state cleared, frozen ranges thawed once
//! their merge can no longer happen, and what a crash or a snapshot left half done.

use shale_rpc::{Epoch, KvError, RangeDescriptor, RangeId};
use tracing::{info, warn};

use super::{RaftSender, Store, StoreMsg, StuckMerge};
use crate::command::{Command, MergeTarget, RangeState, ReplicaState};
use crate::engine::{Cf, Durability};
use crate::keys;
use crate::replica::Replica;

/// How often (in ticks) frozen leaders check whether their merge can still happen.
pub(super) const ROLLBACK_CHECK_TICKS: u64 = 50;

impl<S: RaftSender> Store<S> {
    /// After a round: replicas that froze wait for a flush to count as frozen on disk,
    /// and replicas other ranges took over go now (their state is tombstoned in the
    /// round's apply batch), their Raft state cleared once that batch is flushed.
    pub(super) fn after_merges(&mut self, froze: Vec<RangeId>, merged: Vec<RangeId>) {
        for id in &merged {
            if self.replicas.remove(id).is_some() {
                self.unsynced.forget(*id);
                self.awake.remove(id);
                info!(
                    store_id = self.store_id,
                    range_id = id,
                    "merged replica dropped"
                );
            }
        }
        if froze.is_empty() && merged.is_empty() {
            return;
        }
        self.flush_off_loop("merge", move |result| StoreMsg::MergesFlushed {
            froze,
            merged,
            result,
        });
    }

    /// The flush `after_merges` asked for is done.
    pub(super) fn on_merges_flushed(
        &mut self,
        froze: Vec<RangeId>,
        merged: Vec<RangeId>,
        result: Result<(), String>,
    ) {
        if let Err(e) = result {
            // A freeze reported before it is on disk could let a merge take over data a
            // crash then changes.
            panic!("store {}: flushing a merge failed: {e}", self.store_id);
        }
        for id in froze {
            if let Some(r) = self.replicas.get_mut(&id) {
                r.mark_frozen_on_disk();
            }
        }
        for id in merged {
            self.clear_raft_state(id);
        }
    }

    /// Deletes the Raft log and state of a range whose replica here is gone for good
    /// (its tombstone is on disk).
    fn clear_raft_state(&mut self, range_id: RangeId) {
        let mut batch = self.engine.batch();
        let (start, end) = keys::raft_bounds(range_id);
        batch.delete_range(Cf::Raft, &start, &end);
        if let Err(e) = self.engine.write(batch, Durability::Wal) {
            warn!(store_id = self.store_id, range_id, error = %e, "clearing a merged range's log failed");
        }
    }

    /// Frozen replicas here that `range` covers and that were frozen for it: a snapshot
    /// of `range` (taken after its merge) replaces them.
    pub(super) fn frozen_covered_by(&self, range: &RangeDescriptor) -> Vec<RangeId> {
        let covers = |o: &RangeDescriptor| {
            o.start_key >= range.start_key
                && (range.end_key.is_empty()
                    || (!o.end_key.is_empty() && o.end_key <= range.end_key))
        };
        self.replicas
            .values()
            .filter(|o| o.frozen().is_some_and(|t| t.range_id == range.id) && covers(&o.range))
            .map(|o| o.range.id)
            .collect()
    }

    /// After a round in which `ids` took snapshots: a frozen replica such a snapshot now
    /// covers was merged (the snapshot is of the range after its merge) and goes.
    pub(super) fn drop_merged_by_snapshots(&mut self, ids: &[RangeId]) {
        let covered: Vec<RangeId> = ids
            .iter()
            .filter_map(|id| self.replicas.get(id))
            .flat_map(|r| self.frozen_covered_by(&r.range))
            .collect();
        for id in covered {
            info!(
                store_id = self.store_id,
                range_id = id,
                "frozen replica merged by a snapshot of its target"
            );
            self.destroy_replica(id);
        }
    }

    /// At start: a frozen replica whose target here covers it already was merged before
    /// a crash that left its own tombstone unwritten (the snapshot case above).
    pub(super) fn tidy_merged(&mut self) {
        let targets: Vec<RangeDescriptor> = self
            .replicas
            .values()
            .filter(|r| r.frozen().is_none() && !r.is_uninitialized())
            .map(|r| r.range.clone())
            .collect();
        for range in targets {
            for id in self.frozen_covered_by(&range) {
                info!(
                    store_id = self.store_id,
                    range_id = id,
                    "frozen replica was merged before a restart"
                );
                self.destroy_replica(id);
            }
        }
    }

    /// Whether `r` is frozen for a target whose replica here may still take it over
    /// (it is at the epoch the merge named): then it must stay, whatever placement says.
    pub(super) fn may_yet_be_merged(&self, r: &Replica) -> bool {
        r.frozen().is_some_and(|t| {
            self.replicas.get(&t.range_id).is_some_and(|target| {
                !target.is_uninitialized() && !target.range.epoch.is_newer_than(&t.epoch)
            })
        })
    }

    /// The epoch at which the frozen range `range_id`, led here, may be thawed: its
    /// target's replica on this store moved past the epoch the merge named, without
    /// taking this range over (that would have dropped this replica), so the merge's
    /// commit can never apply anywhere. A target replica gone from this store (merged
    /// into its own left neighbour, or removed) counts by the state its tombstone keeps.
    pub(super) fn may_roll_back(&self, range_id: RangeId) -> Result<Epoch, KvError> {
        let invalid = |reason: &str| KvError::InvalidMerge {
            range_id,
            reason: reason.into(),
        };
        let r = self
            .replicas
            .get(&range_id)
            .ok_or(KvError::RangeNotFound { range_id })?;
        if !r.is_leader() {
            return Err(r.not_leader());
        }
        let target = r
            .frozen()
            .ok_or_else(|| invalid("it is not frozen for a merge"))?;
        let moved = match self.replicas.get(&target.range_id) {
            Some(t) => t.range.epoch.is_newer_than(&target.epoch),
            None => self.left_past(target),
        };
        if !moved {
            return Err(invalid(
                "its target has not changed since the merge began, so the merge may still commit",
            ));
        }
        Ok(r.range.epoch)
    }

    /// A merge's first half names its target as the coordinator saw it: refused unless
    /// this store's replica of the target is at that very epoch. A target already
    /// changed or merged away here would leave the range frozen for nothing until the
    /// rollback noticed. Refused too while the target is frozen for a merge of its own,
    /// or while a range here (a neighbour's replicas share the source's stores) is
    /// frozen to merge into the source.
    pub(super) fn check_merge_target(
        &self,
        source: RangeId,
        command: &Command,
    ) -> Result<(), KvError> {
        let Command::PrepareMerge { target, .. } = command else {
            return Ok(());
        };
        if !self.replicas.get(&source).is_some_and(|r| r.is_leader()) {
            // Not led here: the proposal says so, and the caller asks the leader.
            return Ok(());
        }
        let refuse =
            |range_id: RangeId, reason: String| Err(KvError::InvalidMerge { range_id, reason });
        let Some(here) = self.replicas.get(&target.id) else {
            return refuse(
                target.id,
                format!("it has no replica on store {}", self.store_id),
            );
        };
        if here.range.epoch != target.epoch {
            return refuse(
                target.id,
                format!(
                    "its replica on store {} is at epoch {:?}, not {:?} as the merge names",
                    self.store_id, here.range.epoch, target.epoch
                ),
            );
        }
        // Either would leave a range frozen for a merge that can never commit, until
        // its rollback: refused before anything freezes.
        if let Some(away) = here.frozen() {
            return refuse(
                target.id,
                format!(
                    "it is frozen for its own merge into range {}",
                    away.range_id
                ),
            );
        }
        if let Some(pending) = self
            .replicas
            .values()
            .find(|r| r.frozen().is_some_and(|f| f.range_id == source))
        {
            return refuse(
                source,
                format!(
                    "range {} is frozen to merge into it (on store {}); that merge goes first",
                    pending.range.id, self.store_id
                ),
            );
        }
        Ok(())
    }

    /// Whether `target`'s replica here is gone, having applied a change past the merge's
    /// epoch before it went (its tombstone's descriptor is what it had applied): its
    /// log holds no commit of the merge before that change, so none can ever apply.
    /// Without a tombstone, or one at the merge's epoch or older, nothing is known.
    fn left_past(&self, target: MergeTarget) -> bool {
        match self
            .engine
            .get(Cf::Meta, &keys::range_state_key(target.range_id))
        {
            Ok(Some(bytes)) => RangeState::decode(&bytes).is_ok_and(|s| {
                s.state == ReplicaState::Tombstone
                    && s.descriptor.epoch.is_newer_than(&target.epoch)
            }),
            Ok(None) => false,
            Err(e) => {
                warn!(store_id = self.store_id, error = %e, "reading a merge target's state failed");
                false
            }
        }
    }

    /// Frozen ranges led here for longer than `older_than` whose target's replica here is
    /// still at the merge's epoch (so the merge may still commit): their coordinator
    /// went away (a client interrupted, a step that failed), and the target's leader is
    /// asked to commit or give the merge up, so no range stays frozen for good.
    pub(super) fn stuck_merges(&self, older_than: std::time::Duration) -> Vec<StuckMerge> {
        self.replicas
            .values()
            .filter(|r| r.is_leader() && r.time_frozen().is_some_and(|d| d >= older_than))
            .filter_map(|r| {
                let t = r.frozen()?;
                let target = self.replicas.get(&t.range_id)?;
                (target.range.epoch == t.epoch).then(|| StuckMerge {
                    source: r.range.clone(),
                    target: t.range_id,
                    target_leader: target.leader_store(),
                })
            })
            .collect()
    }

    /// Every so often: frozen leaders whose merge can no longer happen thaw.
    pub(super) fn roll_back_stale_merges(&mut self) {
        let stale: Vec<(RangeId, Epoch)> = self
            .replicas
            .values()
            .filter(|r| r.frozen().is_some() && r.is_leader())
            .filter_map(|r| Some((r.range.id, self.may_roll_back(r.range.id).ok()?)))
            .collect();
        for (range_id, epoch) in stale {
            info!(
                store_id = self.store_id,
                range_id, "its merge's target moved on: rolling back"
            );
            let (reply, _) = tokio::sync::oneshot::channel();
            if let Some(r) = self.replicas.get_mut(&range_id) {
                r.propose_command(Command::RollbackMerge { epoch }, reply);
                self.active.insert(range_id);
            }
        }
    }
}
