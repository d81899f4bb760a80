//! A leader replica's side of snapshots built off the store loop: what to build when
//! raft asks, and handing the built one back to raft (see `crate::snapshot`).

use std::time::Instant;

use raft::eraftpb::Snapshot;
use raft::ProgressState;

use super::Replica;
use crate::snapshot::BuildJob;

impl Replica {
    /// A build this replica asked for failed: raft's next request starts another.
    pub fn snapshot_build_failed(&mut self) {
        self.node.mut_store().drop_snapshot();
    }

    /// What to build the snapshot raft asked for from, if it did and this replica leads.
    /// Call between rounds, when every applied write is in the engine.
    pub fn take_snapshot_job(&mut self) -> Option<BuildJob> {
        if !self.is_leader() {
            self.node.mut_store().drop_snapshot();
            return None;
        }
        self.node.mut_store().take_build_job()
    }

    /// Gives raft a snapshot built off the loop and sends it at once to the followers
    /// being probed (one of them asked for it). False if this replica no longer leads.
    pub fn offer_snapshot(&mut self, snapshot: Snapshot) -> bool {
        if !self.is_leader() {
            self.node.mut_store().drop_snapshot();
            return false;
        }
        self.node
            .mut_store()
            .offer_snapshot(snapshot, Instant::now());
        let probed: Vec<u64> = self
            .node
            .raft
            .prs()
            .iter()
            .filter(|(id, p)| **id != self.replica_id && p.state == ProgressState::Probe)
            .map(|(id, _)| *id)
            .collect();
        for id in probed {
            self.node.raft.send_append(id);
        }
        true
    }
}
