//! A replica's part in merges. Two neighbouring ranges whose replicas sit on the same
//! stores become one without moving data: the right one (the source) is frozen through
//! its own log (`PrepareMerge`), and once it is frozen on disk on every store, the left
//! one (the target) takes its keys through its log (`CommitMerge`); on each store the
//! target's replica then serves what the source's replica there held, and the source's
//! replica is dropped. A merge whose target changed before its commit applied can never
//! happen (the commit names the target's epoch), and the frozen source is thawed
//! (`RollbackMerge`).

use super::*;
use crate::command::MergeTarget;

/// Why `source` cannot merge into `target`, if it cannot: they must be neighbours
/// (`target` on the left) whose replicas are on the same stores.
pub fn check_neighbours(target: &RangeDescriptor, source: &RangeDescriptor) -> Result<(), String> {
    if target.id == source.id {
        return Err("a range cannot merge into itself".into());
    }
    if target.end_key.is_empty() || target.end_key != source.start_key {
        return Err(format!(
            "range {} does not end where range {} starts",
            target.id, source.id
        ));
    }
    if target.store_ids() != source.store_ids() {
        return Err(format!(
            "ranges {} and {} have replicas on different stores ({:?} and {:?}); move them together first",
            target.id,
            source.id,
            target.store_ids(),
            source.store_ids()
        ));
    }
    Ok(())
}

/// Commands a frozen range no longer applies: anything that changes its data or keys.
fn changes_data(command: &Command) -> bool {
    !matches!(
        command,
        Command::CompactLog { .. } | Command::ComputeChecksum | Command::RollbackMerge { .. }
    )
}

/// What a merge state on disk said when the replica was opened.
pub(super) fn frozen_in(state: &ReplicaState) -> Option<MergeTarget> {
    match state {
        ReplicaState::Frozen(target) => Some(*target),
        _ => None,
    }
}

impl Replica {
    /// The range this replica is frozen for, if a merge into it is under way.
    pub fn frozen(&self) -> Option<MergeTarget> {
        self.merge.frozen
    }

    /// How long this replica has been frozen.
    pub fn time_frozen(&self) -> Option<Duration> {
        self.merge.frozen_at.map(|at| at.elapsed())
    }

    /// The same, once the freeze is on disk (flushed): only then may the target take
    /// this range over.
    pub fn frozen_on_disk(&self) -> Option<MergeTarget> {
        self.merge.frozen.filter(|_| self.merge.on_disk)
    }

    /// Takes a freeze (or none) that is durable already: read from disk at a start, or
    /// from a snapshot installed in a round that is synced before anything else runs.
    pub(super) fn set_durable_freeze(&mut self, frozen: Option<MergeTarget>) {
        self.merge.frozen = frozen;
        self.merge.on_disk = frozen.is_some();
        self.merge.frozen_at = frozen.map(|_| Instant::now());
    }

    /// The freeze applied this round (see `take_froze`) is flushed now.
    pub fn mark_frozen_on_disk(&mut self) {
        self.merge.on_disk = self.merge.frozen.is_some();
    }

    /// True once after this replica froze (its store flushes, then marks it on disk).
    pub fn take_froze(&mut self) -> bool {
        std::mem::take(&mut self.merge.froze)
    }

    /// Ranges this replica took over since the last call: their replicas here go.
    pub fn take_merged(&mut self) -> Vec<RangeId> {
        std::mem::take(&mut self.merge.merged)
    }

    /// The error a frozen range answers writes with.
    pub(super) fn frozen_busy(&self) -> Option<KvError> {
        self.merge.frozen.map(|t| KvError::ServerBusy {
            reason: format!(
                "range {} is merging into range {}; retry shortly",
                self.range.id, t.range_id
            ),
        })
    }

    /// Checks a merge command before it is proposed here; `Some` answers it without
    /// proposing (it is done already).
    pub(super) fn check_merge_proposal(
        &self,
        command: &Command,
    ) -> Result<Option<Applied>, KvError> {
        let range_id = self.range.id;
        let invalid = |reason: String| KvError::InvalidMerge { range_id, reason };
        match command {
            Command::PrepareMerge { epoch, target } => {
                match self.merge.frozen {
                    // Asked again (a caller resuming): frozen already.
                    Some(t) if t.range_id == target.id && t.epoch == target.epoch => {
                        return Ok(Some(Applied::Merged {
                            range: Box::new(self.range.clone()),
                        }))
                    }
                    Some(t) => {
                        return Err(invalid(format!(
                            "it is frozen for a merge into range {} at an earlier state of it; \
                             it thaws once that merge is rolled back",
                            t.range_id
                        )))
                    }
                    None => {}
                }
                self.check_epoch(*epoch)?;
                check_neighbours(target, &self.range).map_err(invalid)?;
                if self.node.raft.has_pending_conf() || self.learner_count() > 0 {
                    return Err(invalid("its membership is changing".into()));
                }
                Ok(None)
            }
            Command::CommitMerge { epoch, source } => {
                if let Some(busy) = self.frozen_busy() {
                    return Err(busy);
                }
                self.check_epoch(*epoch)?;
                check_neighbours(&self.range, source).map_err(invalid)?;
                Ok(None)
            }
            Command::AbandonMerge { epoch } => self.check_epoch(*epoch).map(|()| None),
            Command::RollbackMerge { epoch } => match self.merge.frozen {
                None => Err(invalid("it is not frozen for a merge".into())),
                Some(_) => self.check_epoch(*epoch).map(|()| None),
            },
            _ => Ok(None),
        }
    }

    /// A merge entry in the log not yet applied (a membership change must wait for it).
    pub(super) fn merge_in_flight(&self) -> bool {
        self.unapplied_commands().any(|c| {
            matches!(
                c,
                Command::PrepareMerge { .. } | Command::CommitMerge { .. }
            )
        })
    }

    /// The answer a frozen range gives an entry that would change it, if it would.
    pub(super) fn refused_while_frozen(&self, command: &Command) -> Option<Vec<ApplyResult>> {
        let busy = self.frozen_busy().filter(|_| changes_data(command))?;
        let answers = match command {
            Command::Write { writes } => writes.len(),
            _ => 1,
        };
        Some(vec![Err(busy); answers])
    }

    /// Freezes this range for `target`: its version rises (requests at the old epoch are
    /// refused) and it applies nothing that changes its data or keys from here on.
    pub(super) fn apply_prepare_merge(
        &mut self,
        epoch: Epoch,
        target: RangeDescriptor,
        batch: &mut WriteBatch<'_>,
    ) -> ApplyResult {
        let range_id = self.range.id;
        self.check_epoch(epoch)?;
        if let Err(reason) = check_neighbours(&target, &self.range) {
            return Err(KvError::InvalidMerge { range_id, reason });
        }
        let frozen = MergeTarget {
            range_id: target.id,
            epoch: target.epoch,
        };
        self.merge.frozen = Some(frozen);
        self.merge.on_disk = false;
        self.merge.froze = true;
        self.merge.frozen_at = Some(Instant::now());
        info!(range_id, into = target.id, "range frozen for a merge");
        self.raise_version(ReplicaState::Frozen(frozen), batch)
    }

    /// Takes over `source`, whose replica on this store is frozen for this range at
    /// `epoch`: this range's end moves to `source`'s, and `source`'s replica here is
    /// tombstoned in the same batch (its data, already here, is this range's now).
    pub(super) fn apply_commit_merge(
        &mut self,
        epoch: Epoch,
        source: RangeDescriptor,
        batch: &mut WriteBatch<'_>,
    ) -> ApplyResult {
        let range_id = self.range.id;
        self.check_epoch(epoch)?;
        if let Err(reason) = check_neighbours(&self.range, &source) {
            return Err(KvError::InvalidMerge { range_id, reason });
        }
        // The leader checked every store holds the source frozen on disk before it
        // proposed, and nothing thaws it while this range stays at `epoch`: taking over
        // keys whose data is not as frozen would leave the replicas differing.
        let held = match self.engine.get(Cf::Meta, &keys::range_state_key(source.id)) {
            Ok(held) => held.map(|b| RangeState::decode(&b)),
            Err(e) => panic!(
                "range {range_id}: reading merged range {} failed: {e}",
                source.id
            ),
        };
        let frozen_here = matches!(
            &held,
            Some(Ok(RangeState { descriptor, state: ReplicaState::Frozen(t) }))
                if t.range_id == range_id && t.epoch == epoch && descriptor.end_key == source.end_key
        );
        assert!(
            frozen_here,
            "range {range_id}: commits a merge of range {} whose replica here is not frozen for it ({held:?})",
            source.id
        );
        let mut merged = self.range.clone();
        merged.end_key = source.end_key.clone();
        merged.epoch.version = merged.epoch.version.max(source.epoch.version) + 1;
        assert!(
            merged.epoch > self.range.epoch,
            "range {range_id}: epochs only rise"
        );
        let tombstone = RangeState {
            descriptor: source.clone(),
            state: ReplicaState::Tombstone,
        };
        batch.put(
            Cf::Meta,
            &keys::range_state_key(source.id),
            &tombstone.encode(),
        );
        batch.delete(Cf::Meta, &keys::apply_state_key(source.id));
        batch.delete(Cf::Meta, &keys::applied_conf_state_key(source.id));
        self.range = merged;
        self.put_state(ReplicaState::Normal, batch);
        self.merge.merged.push(source.id);
        METRICS.merges.inc();
        info!(range_id, source = source.id, end_key = ?self.range.end_key, "range merged");
        Ok(Applied::Merged {
            range: Box::new(self.range.clone()),
        })
    }

    /// Thaws this range: its merge can no longer happen. Its version rises again.
    pub(super) fn apply_rollback_merge(
        &mut self,
        epoch: Epoch,
        batch: &mut WriteBatch<'_>,
    ) -> ApplyResult {
        let range_id = self.range.id;
        if self.merge.frozen.is_none() {
            return Err(KvError::InvalidMerge {
                range_id,
                reason: "it is not frozen for a merge".into(),
            });
        }
        self.check_epoch(epoch)?;
        self.merge = MergeState::default();
        info!(range_id, "merge rolled back; the range takes writes again");
        self.raise_version(ReplicaState::Normal, batch)
    }

    /// Gives up a merge into this range at `epoch`: the version rises, so its commit
    /// (which names `epoch`) never applies.
    pub(super) fn apply_abandon_merge(
        &mut self,
        epoch: Epoch,
        batch: &mut WriteBatch<'_>,
    ) -> ApplyResult {
        self.check_epoch(epoch)?;
        info!(range_id = self.range.id, "merge abandoned");
        self.raise_version(ReplicaState::Normal, batch)
    }

    /// Refuses a command proposed at another epoch of the range.
    pub(super) fn check_epoch(&self, epoch: Epoch) -> Result<(), KvError> {
        if epoch != self.range.epoch {
            return Err(KvError::EpochNotMatch {
                current: vec![self.range.clone()],
            });
        }
        Ok(())
    }

    /// Raises the range's version and writes its state as `state`: the range after.
    fn raise_version(&mut self, state: ReplicaState, batch: &mut WriteBatch<'_>) -> ApplyResult {
        self.range.epoch.version += 1;
        self.put_state(state, batch);
        Ok(Applied::Merged {
            range: Box::new(self.range.clone()),
        })
    }

    fn put_state(&self, state: ReplicaState, batch: &mut WriteBatch<'_>) {
        let state = RangeState {
            descriptor: self.range.clone(),
            state,
        };
        batch.put(
            Cf::Meta,
            &keys::range_state_key(self.range.id),
            &state.encode(),
        );
    }
}

/// A replica's merge state.
#[derive(Debug, Default)]
pub(super) struct MergeState {
    /// Frozen for this range (and its epoch then).
    pub frozen: Option<MergeTarget>,
    /// The freeze is flushed (a crash cannot take it back).
    pub on_disk: bool,
    /// When this replica froze (or, frozen, was opened).
    pub frozen_at: Option<Instant>,
    /// Froze this round; not yet flushed.
    pub froze: bool,
    /// Ranges merged into this one this round.
    pub merged: Vec<RangeId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(id: RangeId, start: &str, end: &str, stores: &[StoreId]) -> RangeDescriptor {
        RangeDescriptor {
            id,
            start_key: Bytes::copy_from_slice(start.as_bytes()),
            end_key: Bytes::copy_from_slice(end.as_bytes()),
            epoch: Epoch {
                conf_ver: 1,
                version: 1,
            },
            replicas: stores
                .iter()
                .enumerate()
                .map(|(i, &store_id)| ReplicaDescriptor {
                    id: id * 10 + i as u64,
                    store_id,
                })
                .collect(),
        }
    }

    #[test]
    fn only_neighbours_on_the_same_stores_merge() {
        let left = range(1, "a", "m", &[1, 2, 3]);
        assert_eq!(
            check_neighbours(&left, &range(2, "m", "", &[3, 1, 2])),
            Ok(())
        );
        let apart = check_neighbours(&left, &range(2, "n", "", &[1, 2, 3])).unwrap_err();
        assert!(apart.contains("does not end where"), "{apart}");
        let elsewhere = check_neighbours(&left, &range(2, "m", "", &[1, 2, 4])).unwrap_err();
        assert!(elsewhere.contains("different stores"), "{elsewhere}");
        let fewer = check_neighbours(&left, &range(2, "m", "", &[1, 2])).unwrap_err();
        assert!(fewer.contains("different stores"), "{fewer}");
        let last = range(1, "a", "", &[1, 2, 3]);
        assert!(check_neighbours(&last, &range(2, "", "", &[1, 2, 3])).is_err());
        assert!(check_neighbours(&left, &left).is_err());
    }

    #[test]
    fn a_frozen_range_still_compacts_and_checks() {
        assert!(!changes_data(&Command::ComputeChecksum));
        assert!(!changes_data(&Command::CompactLog { index: 1, term: 1 }));
        assert!(changes_data(&Command::Write { writes: vec![] }));
        assert!(changes_data(&Command::AllocIds { count: 1 }));
    }
}
