//! Keys per range, as the last size check counted them.
//!
//! Counting on every write would need a read before each put (is the key new?); instead
//! the size check that already scans a range off the loop thread (after enough writes,
//! see `run_split_checks`) counts its keys. A leader range without a count for its
//! current span asks for a check when it is next reported. A count belongs to one span
//! of keys (one epoch version); a split makes it stale.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use shale_rpc::{RangeDescriptor, RangeId, RangeStatus};
use tokio::sync::mpsc::Sender;

pub struct KeyCounts {
    /// Range id → (epoch version counted at, keys).
    counted: Mutex<HashMap<RangeId, (u64, u64)>>,
    /// Ranges asked for and not checked yet, so each is queued once.
    pending: Mutex<HashSet<RangeId>>,
    checks: Sender<RangeDescriptor>,
}

impl KeyCounts {
    pub fn new(checks: Sender<RangeDescriptor>) -> Self {
        KeyCounts {
            counted: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashSet::new()),
            checks,
        }
    }

    pub fn record(&self, range: &RangeDescriptor, keys: u64) {
        self.counted
            .lock()
            .expect("key counts lock")
            .insert(range.id, (range.epoch.version, keys));
    }

    /// The count for `range`'s current span, if one was made.
    pub fn get(&self, range: &RangeDescriptor) -> Option<u64> {
        let counted = self.counted.lock().expect("key counts lock");
        match counted.get(&range.id) {
            Some(&(version, keys)) if version == range.epoch.version => Some(keys),
            _ => None,
        }
    }

    /// Asks for a count of `range` in the background; dropped when checks are queued up
    /// (the next report asks again).
    pub fn request(&self, range: &RangeDescriptor) {
        let mut pending = self.pending.lock().expect("pending counts lock");
        if pending.insert(range.id) && self.checks.try_send(range.clone()).is_err() {
            pending.remove(&range.id);
        }
    }

    /// A check of `range_id` ended (counted or not): it may be asked for again.
    pub fn checked(&self, range_id: RangeId) {
        self.pending
            .lock()
            .expect("pending counts lock")
            .remove(&range_id);
    }

    /// Fills in the counts of a store's status (all its replicas): asks for counts of
    /// led ranges that have none, and forgets ranges the store no longer holds.
    pub fn annotate(&self, ranges: &mut [RangeStatus]) {
        let held: HashSet<RangeId> = ranges.iter().map(|s| s.range.id).collect();
        self.counted
            .lock()
            .expect("key counts lock")
            .retain(|id, _| held.contains(id));
        for s in ranges {
            s.key_count = self.get(&s.range);
            if s.key_count.is_none() && s.is_leader {
                self.request(&s.range);
            }
        }
    }
}
