//! The loop's part in snapshots: starting builds that leaders were asked for, and
//! ingesting the files of snapshots its replicas took.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use raft::eraftpb::Message;
use shale_rpc::placement::LEADERLESS_REPORTED_MAX;
use shale_rpc::{RangeDescriptor, RangeId};
use tracing::{info, warn};

use super::{RaftSender, Store, StoreMsg};
use crate::snapshot::{self, SnapshotHeader, SNAPSHOT_BUILDS_MAX};
use crate::snapshot_install;

impl<S: RaftSender> Store<S> {
    /// Starts building the snapshots that leaders among `active` were asked for, each on
    /// a thread of its own, as many as `SNAPSHOT_BUILDS_MAX` allows (the rest are asked
    /// for again). Runs between rounds, when every applied write is in the engine.
    pub(super) fn start_snapshot_builds(&mut self, active: &BTreeSet<RangeId>) {
        for id in active {
            if self.snapshot_builds >= SNAPSHOT_BUILDS_MAX {
                return;
            }
            let Some(job) = self
                .replicas
                .get_mut(id)
                .and_then(|r| r.take_snapshot_job())
            else {
                continue;
            };
            let tx = self.self_tx.clone();
            let started = snapshot::spawn_build(
                format!("store-{}-snap", self.store_id),
                self.engine.clone(),
                self.faults.clone(),
                job,
                move |range_id, result| {
                    let result = result
                        .map(|(snapshot, built)| (snapshot, Arc::new(built)))
                        .map_err(|e| e.to_string());
                    // A closed queue means the loop stopped: nobody needs the snapshot.
                    let _ = tx.send(StoreMsg::SnapshotBuilt { range_id, result });
                },
            );
            match started {
                Ok(()) => self.snapshot_builds += 1,
                Err(error) => {
                    warn!(store_id = self.store_id, range_id = id, %error, "snapshot build not started")
                }
            }
        }
    }

    /// Ingests the files of snapshots that replicas among `ids` took this round, whose
    /// state (with each file's marker) the round just synced.
    pub(super) fn ingest_taken_snapshots(&mut self, ids: impl Iterator<Item = RangeId>) {
        for id in ids {
            let r = self.replicas.get_mut(&id).expect("ready replica exists");
            let Some(path) = r.take_pending_ingest() else {
                continue;
            };
            if self.faults.crash_before_snapshot_ingest() {
                panic!("range {id}: simulated crash before a snapshot's ingest");
            }
            let started = Instant::now();
            if let Err(e) = snapshot_install::ingest(&self.engine, id, &path) {
                panic!("range {id}: ingesting a snapshot's file failed: {e}");
            }
            let ms = started.elapsed().as_secs_f64() * 1e3;
            info!(range_id = id, ms, "ingested a snapshot's file");
        }
    }
}

impl<S: RaftSender> Store<S> {
    /// Another replica on this store whose key span overlaps `range`'s: an initialized
    /// one, or one waiting to start after its split. A snapshot of `range` must wait
    /// while there is one. Such a replica is a parent that has yet to apply the split
    /// that made `range` (or a removed one yet to learn it), and it would go on applying
    /// its older writes over the snapshot's newer data: acknowledged writes lost (the
    /// chaos test found this).
    pub(super) fn overlapping_replica(&self, range: &RangeDescriptor) -> Option<RangeId> {
        // A replica frozen for `range` that it covers was merged into it: the snapshot
        // (of the range after the merge) replaces it (see `drop_merged_by_snapshots`).
        let merged = self.frozen_covered_by(range);
        let overlaps = |o: &RangeDescriptor| {
            o.id != range.id
                && !merged.contains(&o.id)
                && o.overlaps(&range.start_key, &range.end_key)
        };
        self.replicas
            .values()
            .filter(|o| !o.is_uninitialized())
            .map(|o| &o.range)
            .chain(self.unborn.values())
            .find(|o| overlaps(o))
            .map(|o| o.id)
    }

    /// Has the next heartbeat ask placement whether the replica of `range_id` here is
    /// still a member (a few at a time; a range that leads or has yet to start needs no
    /// asking).
    pub(super) fn want_membership_check(&mut self, range_id: RangeId) {
        let asks = self.replicas.get(&range_id).is_some_and(|r| !r.is_leader());
        if asks && self.membership_wanted.len() < LEADERLESS_REPORTED_MAX {
            self.membership_wanted.insert(range_id);
        }
    }

    /// Whether a Raft snapshot message may be stepped now: `Err` names the overlapping
    /// replica (see `overlapping_replica`). One whose data is not a snapshot header
    /// goes on to raft, which turns it down as before.
    pub(super) fn snapshot_fits(&self, m: &Message) -> Result<(), String> {
        let Ok(header) = SnapshotHeader::decode(&m.get_snapshot().data) else {
            return Ok(());
        };
        match self.overlapping_replica(&header.range) {
            None => Ok(()),
            Some(other) => Err(overlap_reason(other)),
        }
    }
}

/// Why a snapshot waits for the replica of range `other` on the receiving store.
pub(crate) fn overlap_reason(other: RangeId) -> String {
    format!(
        "its keys overlap range {other}'s replica on this store, which has yet to apply \
         its split (or learn it was removed)"
    )
}
