//! What the store loop answers about its replicas: every replica's status (admin), and
//! the narrower one a placement heartbeat needs.

use std::time::{Duration, Instant};

use shale_rpc::placement::LEADERLESS_REPORTED_MAX;
use shale_rpc::RangeStatus;

use super::{HeartbeatStatus, RaftSender, Store};
use crate::engine::Cf;
use crate::replica::{key_space_end, span_end, Replica};

impl<S: RaftSender> Store<S> {
    pub(super) fn status(&self) -> Vec<RangeStatus> {
        self.replicas.values().map(|r| self.status_of(r)).collect()
    }

    /// Only led and long leaderless replicas' status: with thousands of ranges, building
    /// every replica's each second was most of an idle store's heartbeat cost. Followers
    /// asleep that long are included too, each once per 20 times that (and at most
    /// `LEADERLESS_REPORTED_MAX` a heartbeat), for placement to check they are still
    /// members: one removed while asleep that missed the news would never wake to learn.
    pub(super) fn heartbeat_status(&mut self, leaderless_after_ms: u64) -> HeartbeatStatus {
        let (tick, after) = (self.tick, Duration::from_millis(leaderless_after_ms));
        let now = Instant::now();
        let mut asleep_checks = 0;
        let mut reported = Vec::new();
        let wanted = std::mem::take(&mut self.membership_wanted);
        for (id, r) in self.replicas.iter_mut() {
            let awake_leaderless = !r.is_hibernating() && r.leader_missing(tick) >= after;
            let mut report = r.is_leader() || awake_leaderless || wanted.contains(id);
            if !report
                && asleep_checks < LEADERLESS_REPORTED_MAX
                && r.membership_check_due(after, now)
            {
                asleep_checks += 1;
                report = true;
            }
            if report {
                reported.push(*id);
            }
        }
        let statuses = reported
            .iter()
            .filter_map(|id| self.replicas.get(id))
            .map(|r| self.status_of(r))
            .collect();
        HeartbeatStatus {
            statuses,
            membership_wanted: wanted.into_iter().collect(),
            held: self.replicas.keys().copied().collect(),
            used_bytes: self
                .engine
                .approximate_size_bytes(Cf::Data, b"", &key_space_end()),
        }
    }

    pub(super) fn status_of(&self, r: &Replica) -> RangeStatus {
        RangeStatus {
            range: r.range.clone(),
            replica_id: r.replica_id,
            is_leader: r.is_leader(),
            leader_store: r.leader_store(),
            term: r.term(),
            commit_index: r.commit_index(),
            applied_index: r.applied_index(),
            truncated_index: r.truncated_index(),
            last_index: r.last_index(),
            hibernating: r.is_hibernating(),
            size_bytes: self.engine.approximate_size_bytes(
                Cf::Data,
                &r.range.start_key,
                &span_end(&r.range),
            ),
            key_count: None,
            leader_missing_ms: r.leader_missing(self.tick).as_millis() as u64,
            learners: r.learners(),
            silent_learners: r.silent_learners(self.raft.learner_silent_after()),
            last_check: r.last_check().cloned(),
            diverged: r.diverged(),
            frozen_for: r.frozen_on_disk().map(|t| (t.range_id, t.epoch)),
        }
    }
}
