//! The loop's part in snapshots: starting builds that leaders were asked for, and
//! ingesting the files of snapshots its replicas took.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use shale_rpc::RangeId;
use tracing::{info, warn};

use super::{RaftSender, Store, StoreMsg};
use crate::snapshot::{self, SNAPSHOT_BUILDS_MAX};
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
