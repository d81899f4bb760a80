//! Replicas coming and going on a store: created for a message to a new member, started
//! once a split that made them is on disk, and destroyed for good when removed.

use bytes::Bytes;
use raft::eraftpb::{Message, MessageType};
use shale_rpc::{RangeDescriptor, RangeId, ReplicaDescriptor, StoreId};
use tracing::{debug, info, warn};

use super::{RaftSender, Store, StoreMsg};
use crate::command::{RangeState, ReplicaState};
use crate::engine::{Cf, Durability};
use crate::keys;
use crate::replica::Replica;
use crate::spans::unowned_spans;

impl<S: RaftSender> Store<S> {
    /// A leader (or a candidate) talks to a replica this store does not have yet (it was
    /// just added): start it empty so it can take the leader's snapshot. Never for a
    /// removed one. Vote requests count: a member added while its store heard nothing
    /// (down, cut off) may be needed for a quorum once the leader is gone, and a replica
    /// made only by a leader's messages then never came to be (the range stayed
    /// leaderless for good). An empty replica voting is plain Raft: the candidate still
    /// needs a quorum of the configuration.
    pub(super) fn create_from_message(
        &mut self,
        range_id: RangeId,
        m: &Message,
        from_store: StoreId,
    ) -> bool {
        let creates = matches!(
            m.get_msg_type(),
            MessageType::MsgAppend
                | MessageType::MsgHeartbeat
                | MessageType::MsgSnapshot
                | MessageType::MsgRequestVote
                | MessageType::MsgRequestPreVote
        );
        if !creates || m.to == 0 {
            return false;
        }
        match self.engine.get(Cf::Meta, &keys::range_state_key(range_id)) {
            Ok(None) => {}
            // The range was here once and was removed. Replica ids only grow, so a
            // message for an id newer than any the old descriptor knew is for a replica
            // added back since; anything else is for the removed one.
            Ok(Some(b)) => {
                let newer = RangeState::decode(&b).is_ok_and(|s| {
                    s.state == ReplicaState::Tombstone
                        && s.descriptor.replicas.iter().all(|r| r.id < m.to)
                });
                if !newer {
                    debug!(range_id, "message for a removed replica; ignored");
                    return false;
                }
            }
            Err(e) => {
                warn!(range_id, error = %e, "cannot read range state");
                return false;
            }
        }
        let me = ReplicaDescriptor {
            id: m.to,
            store_id: self.store_id,
        };
        match Replica::uninitialized(
            self.engine.clone(),
            range_id,
            me,
            &self.raft,
            self.addresses.clone(),
        ) {
            Ok(mut r) => {
                r.learn_peer(m.from, from_store);
                info!(
                    range_id,
                    replica_id = m.to,
                    "created a replica for a new member; waiting for its snapshot"
                );
                // Held readies of a replica this one replaces mean nothing to it.
                self.unsynced.forget(range_id);
                self.replicas.insert(range_id, r);
                true
            }
            Err(e) => {
                warn!(range_id, error = %e, "cannot create replica");
                false
            }
        }
    }

    /// Starts the ranges that this round's splits created once the splits are on disk.
    /// A split's state skipped the WAL, as all applied state does, but a new range's own
    /// Raft writes (votes, log entries) go through it: a range started at once and then
    /// cut off by a crash before the next flush kept those but lost its descriptor, and
    /// the replica its leader's next message created over them asked for log entries
    /// that never existed (a store loop panic the chaos test found). So applied data is
    /// flushed first, off the loop; meanwhile the leader's first messages wait in
    /// `early`, and later ones are sent again.
    pub(super) fn start_after_flush(&mut self, born: Vec<(RangeState, bool)>) {
        for (state, _) in &born {
            self.unborn
                .insert(state.descriptor.id, state.descriptor.clone());
        }
        self.flush_off_loop("split", move |result| StoreMsg::SplitsFlushed {
            born,
            result,
        });
    }

    /// Flushes applied data on a thread of its own, then hands the loop `then(outcome)`
    /// (splits and merges wait for their state to be on disk this way).
    pub(super) fn flush_off_loop(
        &self,
        what: &str,
        then: impl FnOnce(Result<(), String>) -> StoreMsg + Send + 'static,
    ) {
        let engine = self.engine.clone();
        let tx = self.self_tx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("store-{}-{what}-flush", self.store_id))
            .spawn(move || {
                let result = engine.flush_applied().map_err(|e| e.to_string());
                let _ = tx.send(then(result));
            });
        if let Err(e) = spawned {
            panic!("store {}: cannot start a {what} flush: {e}", self.store_id);
        }
    }

    /// Starts a replica of a range a split created (its state is already on disk). The
    /// parent's leader campaigns at once so the new range serves without waiting out an
    /// election timeout.
    pub(super) fn start_replica(&mut self, state: RangeState, campaign: bool) {
        let range_id = state.descriptor.id;
        match Replica::open(
            self.engine.clone(),
            state,
            self.store_id,
            &self.raft,
            self.addresses.clone(),
        ) {
            Ok(mut r) => {
                if campaign {
                    r.campaign();
                }
                // Its leader may have called already (see `early`).
                for (m, from_store) in self.early.take(range_id) {
                    r.learn_peer(m.from, from_store);
                    r.step(m);
                }
                // Held readies of a replica this one replaces mean nothing to it.
                self.unsynced.forget(range_id);
                self.replicas.insert(range_id, r);
                self.active.insert(range_id);
            }
            Err(e) => panic!(
                "store {}: cannot start range {range_id} after its split: {e}",
                self.store_id
            ),
        }
    }

    /// The parts of `range`'s key span that no other initialized replica on this store
    /// covers, as `[start, end)` pairs.
    pub(super) fn unowned_spans(&self, range: &RangeDescriptor) -> Vec<(Bytes, Bytes)> {
        // Ranges waiting to start after their split own their keys already.
        let others = self
            .replicas
            .values()
            .filter(|o| o.range.id != range.id && !o.is_uninitialized())
            .map(|o| &o.range)
            .chain(self.unborn.values());
        unowned_spans(range, others)
    }

    /// Removes a replica for good: its data and Raft state go, and a tombstone stays so
    /// that no message ever brings it back.
    pub(super) fn destroy_replica(&mut self, range_id: RangeId) {
        let Some(r) = self.replicas.remove(&range_id) else {
            return;
        };
        self.unsynced.forget(range_id);
        let engine = self.engine.clone();
        let mut batch = engine.batch();
        if !r.is_uninitialized() {
            // Only keys no other replica here owns: a removed replica that never applied
            // a split still spans keys the split's right range (maybe here) holds now.
            for (start, end) in self.unowned_spans(&r.range) {
                batch.delete_range(Cf::Data, &start, &end);
            }
        }
        let (start, end) = keys::raft_bounds(range_id);
        batch.delete_range(Cf::Raft, &start, &end);
        batch.delete(Cf::Meta, &keys::apply_state_key(range_id));
        batch.delete(Cf::Meta, &keys::applied_conf_state_key(range_id));
        // The tombstone names the removed replica's own id too, so that only a replica
        // added back later (a newer id) is ever created here again.
        let mut descriptor = r.range.clone();
        if descriptor.replica(r.replica_id).is_none() {
            descriptor.replicas.push(ReplicaDescriptor {
                id: r.replica_id,
                store_id: self.store_id,
            });
        }
        let tombstone = RangeState {
            descriptor,
            state: ReplicaState::Tombstone,
        };
        batch.put(
            Cf::Meta,
            &keys::range_state_key(range_id),
            &tombstone.encode(),
        );
        if let Err(e) = engine.write(batch, Durability::Sync) {
            panic!(
                "store {}: destroying range {range_id} failed: {e}",
                self.store_id
            );
        }
        info!(store_id = self.store_id, range_id, "replica destroyed");
    }
}
