//! Fault injection for tests of a whole cluster in one process: a store can be cut off
//! from Raft traffic (both ways) while clients still reach it.

use std::sync::atomic::{AtomicBool, Ordering};

/// Faults a store is told to suffer.
#[derive(Debug, Default)]
pub struct Faults {
    partitioned: AtomicBool,
}

impl Faults {
    /// Drop (or stop dropping) every Raft message and snapshot to and from this store.
    pub fn set_partitioned(&self, on: bool) {
        self.partitioned.store(on, Ordering::SeqCst);
    }

    pub fn partitioned(&self) -> bool {
        self.partitioned.load(Ordering::Relaxed)
    }
}
