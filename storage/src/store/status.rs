//! What the store loop answers about its replicas: every replica's status (admin), and
//! the narrower one a placement heartbeat needs.

use shale_rpc::RangeStatus;

use super::{HeartbeatStatus, RaftSender, Store};
use crate::engine::Cf;
use crate::replica::{key_space_end, span_end, Replica};

impl<S: RaftSender> Store<S> {
    pub(super) fn status(&self) -> Vec<RangeStatus> {
        self.replicas.values().map(|r| self.status_of(r)).collect()
    }

    /// Only led and long leaderless replicas' status: with thousands of ranges, building
    /// every replica's each second was most of an idle store's heartbeat cost.
    pub(super) fn heartbeat_status(&self, leaderless_after_ms: u64) -> HeartbeatStatus {
        let tick_ms = self.tick.as_millis() as u64;
        let statuses = self
            .replicas
            .values()
            .filter(|r| {
                r.is_leader() || r.leaderless_ticks().saturating_mul(tick_ms) >= leaderless_after_ms
            })
            .map(|r| self.status_of(r))
            .collect();
        HeartbeatStatus {
            statuses,
            held: self.replicas.keys().copied().collect(),
            used_bytes: self
                .engine
                .approximate_size_bytes(Cf::Data, b"", &key_space_end()),
        }
    }

    fn status_of(&self, r: &Replica) -> RangeStatus {
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
            leader_missing_ms: r.leaderless_ticks() * self.tick.as_millis() as u64,
        }
    }
}
