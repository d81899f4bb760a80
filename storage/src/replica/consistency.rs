//! A replica's part in consistency checks (see `crate::consistency`): summing its data
//! when it applies a check's entry, taking the other replicas' sums, judging, and, as
//! leader, proposing checks on its interval.

use std::sync::mpsc::TryRecvError;

use shale_rpc::{CheckOutcome, SumReport};

use super::*;
use crate::consistency::{self, Check, Settled};

/// A replica's consistency-check state.
#[derive(Debug, Default)]
pub(super) struct Consistency {
    /// The check under way, if any (only the newest one is followed).
    check: Option<Check>,
    /// This replica's own sum being computed off the loop, and the check's index.
    summing: Option<(
        u64,
        std::sync::mpsc::Receiver<Result<shale_rpc::RangeSum, String>>,
    )>,
    /// The last check this replica saw judged.
    last: Option<CheckOutcome>,
    /// When this replica, as leader, proposes its next periodic check.
    next_at: Option<Instant>,
}

impl Consistency {
    /// The check at `index`, begun now if it is newer than the one followed (or none
    /// is); `None` for an older check, which is no longer followed.
    fn check_at(&mut self, index: u64, now: Instant) -> Option<&mut Check> {
        if self.check.as_ref().is_none_or(|check| check.index < index) {
            self.check = Some(Check::new(index, now));
        }
        self.check.as_mut().filter(|check| check.index == index)
    }
}

impl Replica {
    /// Applies a check's entry at `index`: writes out what the round applied so far and
    /// sums the data as it stands then, off the loop.
    pub(super) fn apply_compute_checksum(
        &mut self,
        index: u64,
        batch: &mut WriteBatch<'_>,
    ) -> ApplyResult {
        write_out_applied(self.range.id, batch);
        let now = Instant::now();
        let replicas = self.range.replicas.iter().map(|r| r.id).collect();
        if let Some(check) = self.consistency.check_at(index, now) {
            check.expect(replicas, now);
        }
        let sum = consistency::spawn_sum(self.engine.clone(), self.range.clone(), index);
        self.consistency.summing = Some((index, sum));
        Ok(Applied::CheckStarted { index })
    }

    /// True while this replica's own sum is being computed.
    pub fn is_summing(&self) -> bool {
        self.consistency.summing.is_some()
    }

    /// This replica's own sum, once computed: recorded here, and returned for the
    /// other replicas. A sum that could not even start (no thread) gives no answer, so
    /// the others count this replica missing rather than diverged.
    pub fn poll_sum(&mut self, now: Instant) -> Option<SumReport> {
        let (index, rx) = self.consistency.summing.as_ref()?;
        let index = *index;
        let sum = match rx.try_recv() {
            Ok(sum) => sum,
            Err(TryRecvError::Empty) => return None,
            Err(TryRecvError::Disconnected) => {
                warn!(
                    range_id = self.range.id,
                    index, "the range's sum never ran; no answer to the check"
                );
                self.consistency.summing = None;
                return None;
            }
        };
        self.consistency.summing = None;
        let report = SumReport {
            range_id: self.range.id,
            index,
            replica_id: self.replica_id,
            sum,
        };
        self.record_sum(report.clone(), now);
        Some(report)
    }

    /// Takes a replica's answer to a check (this one's own, or another's).
    pub fn record_sum(&mut self, report: SumReport, now: Instant) {
        // Answers may come before this replica applies the entry.
        if let Some(check) = self.consistency.check_at(report.index, now) {
            check.record(report.replica_id, report.sum);
        }
        self.settle_check(now);
    }

    /// Judges the check under way if every replica answered or the wait is over.
    pub fn settle_check(&mut self, now: Instant) {
        let Some(check) = &self.consistency.check else {
            return;
        };
        match check.settle(now) {
            Settled::Pending => return,
            Settled::Abandoned => {}
            Settled::Done(outcome) => {
                if self.is_leader() {
                    self.report_outcome(&outcome);
                }
                self.consistency.last = Some(outcome);
            }
        }
        self.consistency.check = None;
    }

    fn report_outcome(&self, outcome: &CheckOutcome) {
        let range_id = self.range.id;
        let stores = |ids: &[ReplicaId]| -> Vec<StoreId> {
            ids.iter().filter_map(|id| self.store_of(*id)).collect()
        };
        let kind = if !outcome.agreed {
            warn!(range_id, index = outcome.index, sums = ?outcome.sums, missing = ?stores(&outcome.missing),
                "consistency check: no majority of the replicas agrees on the range's data");
            "no_majority"
        } else if !outcome.diverged.is_empty() {
            warn!(range_id, index = outcome.index, diverged_stores = ?stores(&outcome.diverged), sums = ?outcome.sums,
                "consistency check: replicas diverged from the majority; they will be replaced");
            "diverged"
        } else {
            debug!(range_id, index = outcome.index, missing = ?stores(&outcome.missing), "consistency check: replicas agree");
            "agreed"
        };
        METRICS.consistency_checks(kind);
    }

    /// The last check this replica saw judged.
    pub fn last_check(&self) -> Option<&CheckOutcome> {
        self.consistency.last.as_ref()
    }

    /// The outcome of the check at `index` (or a later one) once judged; with `so_far`,
    /// while that check still waits on replicas, its answers as they stand.
    pub fn check_outcome(&self, index: u64, so_far: bool) -> Option<CheckOutcome> {
        let c = &self.consistency;
        if let Some(last) = c.last.as_ref().filter(|last| last.index >= index) {
            return Some(last.clone());
        }
        c.check
            .as_ref()
            .filter(|check| so_far && check.index == index)
            .and_then(Check::so_far)
    }

    /// Replicas still in the range that the last check found diverged.
    pub fn diverged(&self) -> Vec<ReplicaId> {
        self.consistency
            .last
            .as_ref()
            .map_or_else(Vec::new, |last| {
                last.diverged
                    .iter()
                    .copied()
                    .filter(|id| self.range.replica(*id).is_some())
                    .collect()
            })
    }

    /// As leader, proposes a check when the interval since the last one is over and
    /// no check is under way here. Returns whether it proposed one.
    pub fn maybe_propose_check(&mut self, interval: Option<Duration>, now: Instant) -> bool {
        let (Some(interval), true) = (interval, self.is_leader()) else {
            self.consistency.next_at = None;
            return false;
        };
        let next_at = *self
            .consistency
            .next_at
            .get_or_insert_with(|| consistency::first_check_at(self.range.id, interval, now));
        if now < next_at || self.consistency.check.is_some() || self.is_summing() {
            return false;
        }
        if !consistency::room_for_a_sum() {
            return false;
        }
        self.consistency.next_at = Some(now + interval);
        let (reply, _) = oneshot::channel();
        self.propose_command(Command::ComputeChecksum, reply);
        true
    }
}
