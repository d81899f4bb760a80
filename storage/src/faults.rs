//! Fault injection for tests of a whole cluster in one process: a store can be cut off
//! from Raft traffic (both ways) while clients still reach it, or only for some ranges,
//! its snapshot builds can
//! be held midway, its loop can crash before a snapshot's ingest, and its received
//! snapshots can be made to look older than what its replica applied since, and its
//! notices to removed replicas' stores can be lost.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Longest a snapshot build waits for a hold to be lifted (a test that forgot to lift it
/// still ends).
const HOLD_MAX: Duration = Duration::from_secs(60);

/// Faults a store is told to suffer.
#[derive(Debug, Default)]
pub struct Faults {
    partitioned: AtomicBool,
    ranges_cut: Mutex<HashSet<u64>>,
    snapshot_builds_held: AtomicBool,
    snapshot_builds_waiting: AtomicUsize,
    crash_before_snapshot_ingest: AtomicBool,
    crashed: AtomicBool,
    snapshot_view_outdated: AtomicBool,
    removal_notices_lost: AtomicBool,
}

impl Faults {
    /// Drop (or stop dropping) every Raft message and snapshot to and from this store.
    pub fn set_partitioned(&self, on: bool) {
        self.partitioned.store(on, Ordering::SeqCst);
    }

    pub fn partitioned(&self) -> bool {
        self.partitioned.load(Ordering::Relaxed)
    }

    /// Drop (or stop dropping) the Raft messages of one range to and from this store
    /// (its snapshots too), while its other ranges talk as usual.
    pub fn set_range_cut(&self, range_id: u64, on: bool) {
        let mut cut = self.ranges_cut.lock().expect("faults lock");
        if on {
            cut.insert(range_id);
        } else {
            cut.remove(&range_id);
        }
    }

    /// Whether range `range_id`'s Raft traffic is cut here.
    pub fn range_cut(&self, range_id: u64) -> bool {
        self.ranges_cut
            .lock()
            .expect("faults lock")
            .contains(&range_id)
    }

    /// `batch` without the messages (and sleep notices) of ranges cut here.
    pub fn drop_cut_ranges(&self, batch: &mut shale_rpc::RaftBatch) {
        let cut = self.ranges_cut.lock().expect("faults lock");
        if !cut.is_empty() {
            batch.messages.retain(|e| !cut.contains(&e.range_id));
            batch.hibernate.retain(|id| !cut.contains(id));
            batch.sums.retain(|s| !cut.contains(&s.range_id));
        }
    }

    /// Make snapshot builds wait (or stop waiting) after pinning their view of the
    /// engine and before reading it, as a build of a large range would take long.
    pub fn hold_snapshot_builds(&self, on: bool) {
        self.snapshot_builds_held.store(on, Ordering::SeqCst);
    }

    /// Snapshot builds waiting on the hold now.
    pub fn snapshot_builds_waiting(&self) -> usize {
        self.snapshot_builds_waiting.load(Ordering::SeqCst)
    }

    /// Called by a snapshot build: waits while builds are held (at most `HOLD_MAX`).
    pub fn snapshot_build_may_go(&self) {
        if !self.snapshot_builds_held.load(Ordering::SeqCst) {
            return;
        }
        self.snapshot_builds_waiting.fetch_add(1, Ordering::SeqCst);
        let started = Instant::now();
        while self.snapshot_builds_held.load(Ordering::SeqCst) && started.elapsed() < HOLD_MAX {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.snapshot_builds_waiting.fetch_sub(1, Ordering::SeqCst);
    }

    /// Make the store loop stop as a crash would when a snapshot's state is on disk and
    /// its file not yet ingested (the loop thread panics; restart the store to recover).
    pub fn set_crash_before_snapshot_ingest(&self, on: bool) {
        self.crash_before_snapshot_ingest
            .store(on, Ordering::SeqCst);
    }

    /// Called by the loop before a snapshot's ingest: true if it must crash now.
    pub fn crash_before_snapshot_ingest(&self) -> bool {
        let crash = self.crash_before_snapshot_ingest.load(Ordering::SeqCst);
        if crash {
            self.crashed.store(true, Ordering::SeqCst);
        }
        crash
    }

    /// The loop crashed as `set_crash_before_snapshot_ingest` asked.
    pub fn crashed(&self) -> bool {
        self.crashed.load(Ordering::SeqCst)
    }

    /// Make received snapshots' files delete none of what the store holds, as if the
    /// replica had written all of it after the file was made: the install must then
    /// clear the range's span itself.
    pub fn set_snapshot_view_outdated(&self, on: bool) {
        self.snapshot_view_outdated.store(on, Ordering::SeqCst);
    }

    pub fn snapshot_view_outdated(&self) -> bool {
        self.snapshot_view_outdated.load(Ordering::SeqCst)
    }

    /// Make this store, leading a range that removes a replica, not tell the removed
    /// replica's store directly (as when that call is lost): only placement's checks
    /// then clear the replica.
    pub fn set_removal_notices_lost(&self, on: bool) {
        self.removal_notices_lost.store(on, Ordering::SeqCst);
    }

    pub fn removal_notices_lost(&self) -> bool {
        self.removal_notices_lost.load(Ordering::SeqCst)
    }
}
