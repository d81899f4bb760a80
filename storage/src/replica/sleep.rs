//! A replica's clock and sleep: ticking while awake, hibernating when idle (a leader
//! whose followers have its whole log, and followers on its signal), waking on any
//! request or message, and how long it has gone without a word from a leader (which
//! has placement check its membership).

use std::time::{Duration, Instant};

use super::{Replica, SNAPSHOT_UNTAKEN_MAX};
use shale_rpc::StoreId;

/// A follower asleep all along has placement check its membership again after this
/// many times the wait before its first check (10 min for the default 30 s).
const ASLEEP_RECHECK_FACTOR: u32 = 20;

impl Replica {
    /// Advances Raft's clock, unless hibernating. Returns whether it ticked.
    pub fn tick(&mut self) -> bool {
        if self.hibernating {
            return false;
        }
        self.idle_ticks += 1;
        self.node.tick();
        if self.node.raft.leader_id == raft::INVALID_ID {
            self.leaderless_ticks += 1;
        } else {
            self.leaderless_ticks = 0;
        }
        if self.is_leader() {
            self.node.mut_store().expire_snapshot(SNAPSHOT_UNTAKEN_MAX);
            self.track_learners();
            self.maybe_promote_learner();
        } else {
            self.node.mut_store().drop_snapshot();
        }
        // Transfers under way hold the file on their own.
        if !self.is_leader()
            || self
                .built
                .as_ref()
                .is_some_and(|(_, at)| at.elapsed() > SNAPSHOT_UNTAKEN_MAX)
        {
            self.built = None;
        }
        true
    }

    /// Back to ticking (any request or message does this).
    pub fn wake(&mut self) {
        if self.hibernating {
            // Asleep, it asked nobody for an answer: silence counts from now.
            let now = Instant::now();
            self.heard_learners.iter_mut().for_each(|h| h.1 = now);
        }
        self.hibernating = false;
        self.asleep_since = None;
        self.membership_checked_at = None;
        self.idle_ticks = 0;
    }

    pub fn is_hibernating(&self) -> bool {
        self.hibernating
    }

    /// A leader with nothing in flight whose followers all have its whole log stops
    /// ticking (no heartbeats) after `after_ticks` idle ticks. True when it just did.
    pub fn try_hibernate(&mut self, after_ticks: u64) -> bool {
        if self.hibernating || !self.is_leader() || self.idle_ticks < after_ticks {
            return false;
        }
        let busy = !self.write_batch.is_empty()
            || !self.proposals.is_empty()
            || !self.reads.is_idle()
            || self.node.raft.has_pending_conf()
            || self.node.raft.lead_transferee.is_some()
            || self.node.has_ready();
        let last = self.node.raft.raft_log.last_index();
        let caught_up = self.commit_index() == last
            && self.apply.applied_index == last
            && self.node.raft.prs().iter().all(|(_, p)| p.matched == last);
        if busy || !caught_up {
            return false;
        }
        self.hibernating = true;
        self.asleep_since = Some(Instant::now());
        // Every follower has the whole log: no snapshot is needed.
        self.built = None;
        true
    }

    /// The stores of this range's other replicas.
    pub fn follower_stores(&self) -> Vec<StoreId> {
        self.range
            .replicas
            .iter()
            .filter(|r| r.id != self.replica_id)
            .map(|r| r.store_id)
            .collect()
    }

    /// The leader on `from_store` went idle: sleep too if this replica has its whole log.
    pub fn hibernate_on_signal(&mut self, from_store: StoreId) {
        let last = self.node.raft.raft_log.last_index();
        if !self.is_leader()
            && self.leader_store() == Some(from_store)
            && self.commit_index() == last
            && self.apply.applied_index == last
        {
            self.hibernating = true;
            self.asleep_since = Some(Instant::now());
        }
    }

    /// How long this replica has gone without a word from a leader: ticks without a
    /// known one, or, for a sleeping follower, the time asleep.
    pub fn leader_missing(&self, tick: Duration) -> Duration {
        let ticks = u32::try_from(self.leaderless_ticks).unwrap_or(u32::MAX);
        let leaderless = tick.saturating_mul(ticks);
        match self.asleep_since {
            Some(since) if !self.is_leader() => leaderless.max(since.elapsed()),
            _ => leaderless,
        }
    }

    /// Whether to have placement check this sleeping follower's membership now: asleep
    /// `after` or longer and not checked for `ASLEEP_RECHECK_FACTOR` times that. Noted as
    /// checked.
    pub fn membership_check_due(&mut self, after: Duration, now: Instant) -> bool {
        let due = !self.is_leader()
            && self
                .asleep_since
                .is_some_and(|s| now.duration_since(s) >= after)
            && self.membership_checked_at.is_none_or(|at| {
                now.duration_since(at) >= after.saturating_mul(ASLEEP_RECHECK_FACTOR)
            });
        if due {
            self.membership_checked_at = Some(now);
        }
        due
    }
}
