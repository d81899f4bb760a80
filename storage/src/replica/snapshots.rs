//! A leader replica's side of snapshots built off the store loop: what to build when
//! raft asks, and handing the built one back to raft (see `crate::snapshot`); and a
//! follower's received snapshot prepared as an SST file (see `crate::snapshot_install`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use raft::eraftpb::Snapshot;
use raft::ProgressState;

use super::Replica;
use crate::snapshot::{BuildJob, BuiltSnapshot};
use crate::snapshot_install::PreparedSnapshot;

impl Replica {
    /// A received snapshot's file, just after its message was stepped: kept if raft
    /// took that snapshot (it is now raft's pending one, which raft will hand back in
    /// a ready), removed if raft turned it down. One kept before is removed either way
    /// when raft took this one: raft hands back only its latest.
    pub fn offer_prepared_snapshot(&mut self, prepared: PreparedSnapshot) {
        let pending = self
            .node
            .raft
            .raft_log
            .unstable_snapshot()
            .as_ref()
            .map(|s| (s.get_metadata().index, s.get_metadata().term));
        if pending == Some((prepared.index, prepared.term)) {
            self.prepared = Some(prepared);
        }
    }

    /// The SST file of the snapshot this round took, once its state is synced: ingest it
    /// (`snapshot_install::ingest`) before anything else is applied.
    pub fn take_pending_ingest(&mut self) -> Option<PathBuf> {
        self.pending_ingest.take()
    }

    /// A build this replica asked for failed: raft's next request starts another.
    pub fn snapshot_build_failed(&mut self) {
        self.node.mut_store().drop_snapshot();
    }

    /// The file of the snapshot this leader last built, for the transfers raft asks for.
    pub fn built_snapshot(&self) -> Option<Arc<BuiltSnapshot>> {
        self.built.as_ref().map(|(b, _)| b.clone())
    }

    /// What to build the snapshot raft asked for from, if it did and this replica leads.
    /// Call between rounds, when every applied write is in the engine.
    pub fn take_snapshot_job(&mut self) -> Option<BuildJob> {
        // A frozen range's snapshot carries its freeze (`SnapshotHeader::frozen`): a
        // follower that lags that far takes the freeze with the data.
        if !self.is_leader() {
            self.node.mut_store().drop_snapshot();
            return None;
        }
        self.node.mut_store().take_build_job()
    }

    /// Gives raft a snapshot built off the loop and sends it at once to the followers
    /// being probed (one of them asked for it). False if this replica no longer leads.
    pub fn offer_snapshot(&mut self, snapshot: Snapshot, built: Arc<BuiltSnapshot>) -> bool {
        if !self.is_leader() {
            self.node.mut_store().drop_snapshot();
            return false;
        }
        self.built = Some((built, Instant::now()));
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
