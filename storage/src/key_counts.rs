//! Keys and bytes per range, as the last size check counted them.
//!
//! Counting on every write would need a read before each put (is the key new?); instead
//! the size check that already scans a range off the loop thread (after enough writes,
//! see `run_split_checks`) counts its keys and bytes. A leader range without a count for
//! its current span asks for a check when it is next reported. A count belongs to one
//! span of keys (one epoch version); a split makes it stale, except that the check that
//! split a range records what it counted on each side.
//!
//! The byte count also spares most scans: writes since a count can only grow a range by
//! what they wrote, so while the count plus the bytes written since stays under the
//! split bound, a check needs no scan (see `grow`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use shale_rpc::{RangeDescriptor, RangeId, RangeStatus};
use tokio::sync::mpsc::Sender;

/// Why a size check of a range is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckDue {
    /// The range took this many bytes of writes since its previous check.
    Written(u64),
    /// Its count is missing or old: scan, whatever the estimate says.
    Stale,
}

/// A request for a size check of one range.
#[derive(Debug, Clone)]
pub struct CheckRequest {
    pub range: RangeDescriptor,
    pub due: CheckDue,
}

/// What one check counted in one span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    pub keys: u64,
    /// Bytes of keys and values: exact when the scan covered the span, else a bound
    /// from below; grown by the writes reported since.
    pub bytes: u64,
}

pub struct KeyCounts {
    /// Range id → (epoch version counted at, count).
    counted: Mutex<HashMap<RangeId, (u64, Counted)>>,
    /// Ranges asked for and not checked yet, so each is queued once.
    pending: Mutex<HashSet<RangeId>>,
    checks: Sender<CheckRequest>,
    /// Checks made, and how many of them scanned (this store's, for tests and reports).
    made: AtomicU64,
    scanned: AtomicU64,
}

impl KeyCounts {
    pub fn new(checks: Sender<CheckRequest>) -> Self {
        KeyCounts {
            counted: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashSet::new()),
            checks,
            made: AtomicU64::new(0),
            scanned: AtomicU64::new(0),
        }
    }

    pub fn record(&self, range: &RangeDescriptor, count: Counted) {
        self.counted
            .lock()
            .expect("key counts lock")
            .insert(range.id, (range.epoch.version, count));
    }

    /// The key count for `range`'s current span, if one was made.
    pub fn get(&self, range: &RangeDescriptor) -> Option<u64> {
        let counted = self.counted.lock().expect("key counts lock");
        match counted.get(&range.id) {
            Some(&(version, count)) if version == range.epoch.version => Some(count.keys),
            _ => None,
        }
    }

    /// True when a later span of `range` (after a split) has been counted: a check
    /// asked for before the split would scan keys the range no longer holds.
    pub fn is_outdated(&self, range: &RangeDescriptor) -> bool {
        let counted = self.counted.lock().expect("key counts lock");
        counted
            .get(&range.id)
            .is_some_and(|(version, _)| *version > range.epoch.version)
    }

    /// Adds `written` bytes to `range`'s byte count and returns the new count: at least
    /// the range's size (puts add at most their bytes, overwrites and deletes less), so
    /// under the split bound no scan is needed. `None` without a count of this span.
    pub fn grow(&self, range: &RangeDescriptor, written: u64) -> Option<u64> {
        let mut counted = self.counted.lock().expect("key counts lock");
        match counted.get_mut(&range.id) {
            Some((version, count)) if *version == range.epoch.version => {
                count.bytes = count.bytes.saturating_add(written);
                Some(count.bytes)
            }
            _ => None,
        }
    }

    /// Asks for a count of `range` in the background; dropped when checks are queued up
    /// (the next report asks again).
    pub fn request(&self, range: &RangeDescriptor) {
        let mut pending = self.pending.lock().expect("pending counts lock");
        let request = CheckRequest {
            range: range.clone(),
            due: CheckDue::Stale,
        };
        if pending.insert(range.id) && self.checks.try_send(request).is_err() {
            pending.remove(&range.id);
        }
    }

    /// Counts a check made, `scanned` or spared by the estimate.
    pub fn note_check(&self, scanned: bool) {
        self.made.fetch_add(1, Ordering::Relaxed);
        crate::metrics::METRICS.size_checks.inc();
        if scanned {
            self.scanned.fetch_add(1, Ordering::Relaxed);
            crate::metrics::METRICS.size_check_scans.inc();
        }
    }

    /// Checks made so far and how many of them scanned.
    pub fn check_stats(&self) -> (u64, u64) {
        (
            self.made.load(Ordering::Relaxed),
            self.scanned.load(Ordering::Relaxed),
        )
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
    pub fn annotate_all(&self, ranges: &mut [RangeStatus]) {
        self.forget_unheld(ranges.iter().map(|s| s.range.id));
        self.annotate(ranges);
    }

    /// Forgets the counts of ranges not in `held` (every range the store holds).
    pub fn forget_unheld(&self, held: impl IntoIterator<Item = RangeId>) {
        let held: HashSet<RangeId> = held.into_iter().collect();
        self.counted
            .lock()
            .expect("key counts lock")
            .retain(|id, _| held.contains(id));
    }

    /// Fills in the counts of these replicas' ranges; asks for counts of led ranges that
    /// have none.
    pub fn annotate(&self, ranges: &mut [RangeStatus]) {
        for s in ranges {
            s.key_count = self.get(&s.range);
            if s.key_count.is_none() && s.is_leader {
                self.request(&s.range);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use shale_rpc::Epoch;

    fn range(version: u64) -> RangeDescriptor {
        RangeDescriptor {
            id: 7,
            start_key: Bytes::from_static(b"a"),
            end_key: Bytes::from_static(b"m"),
            epoch: Epoch {
                conf_ver: 1,
                version,
            },
            replicas: Vec::new(),
        }
    }

    fn counts() -> KeyCounts {
        KeyCounts::new(tokio::sync::mpsc::channel(4).0)
    }

    #[test]
    fn writes_grow_the_count_of_the_span_they_went_to() {
        let counts = counts();
        assert_eq!(counts.grow(&range(1), 100), None, "nothing counted yet");
        counts.record(
            &range(1),
            Counted {
                keys: 3,
                bytes: 1_000,
            },
        );
        assert_eq!(counts.grow(&range(1), 100), Some(1_100));
        assert_eq!(counts.grow(&range(1), 50), Some(1_150));
        assert_eq!(counts.get(&range(1)), Some(3), "keys stay as counted");
        // Another span of the range (after a split) has a count of its own.
        assert_eq!(counts.grow(&range(2), 10), None);
        assert_eq!(counts.get(&range(2)), None);
    }

    #[test]
    fn a_check_asked_for_before_a_split_is_outdated_once_the_split_is_counted() {
        let counts = counts();
        assert!(!counts.is_outdated(&range(1)));
        counts.record(&range(1), Counted { keys: 1, bytes: 1 });
        assert!(!counts.is_outdated(&range(1)));
        counts.record(&range(2), Counted { keys: 1, bytes: 1 });
        assert!(counts.is_outdated(&range(1)));
        assert!(!counts.is_outdated(&range(2)));
    }
}
