//! A client's map of ranges, ordered by start key, with the leader it last reached for
//! each. Filled lazily and corrected from `EpochNotMatch`, `NotLeader` and
//! `KeyNotInRange` answers; pure data, no I/O.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bytes::Bytes;

use crate::{RangeDescriptor, RangeId};

/// A cached range and where its leader was last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedRange {
    pub range: RangeDescriptor,
    pub leader: Option<SocketAddr>,
}

/// Ranges by start key; entries never overlap.
#[derive(Debug, Default)]
pub struct RangeCache {
    by_start: BTreeMap<Bytes, CachedRange>,
}

impl RangeCache {
    /// The cached range holding `key`.
    pub fn find(&self, key: &[u8]) -> Option<&CachedRange> {
        let (_, cached) = self
            .by_start
            .range(..=Bytes::copy_from_slice(key))
            .next_back()?;
        cached.range.contains(key).then_some(cached)
    }

    /// Adds `range`, dropping cached ranges it overlaps, unless the cache already knows
    /// a newer version of the same range.
    pub fn insert(&mut self, range: RangeDescriptor) {
        let stale = self
            .by_start
            .values()
            .any(|c| c.range.id == range.id && c.range.epoch > range.epoch);
        if stale {
            return;
        }
        let overlapping: Vec<Bytes> = self
            .by_start
            .values()
            .filter(|c| c.range.overlaps(&range.start_key, &range.end_key))
            .map(|c| c.range.start_key.clone())
            .collect();
        let mut leader = None;
        for start in overlapping {
            if let Some(old) = self.by_start.remove(&start) {
                if old.range.id == range.id {
                    leader = old.leader;
                }
            }
        }
        self.by_start
            .insert(range.start_key.clone(), CachedRange { range, leader });
    }

    /// Forgets the range with this id.
    pub fn remove(&mut self, range_id: RangeId) {
        self.by_start.retain(|_, c| c.range.id != range_id);
    }

    /// Records (or forgets) where the leader of `range_id` is.
    pub fn set_leader(&mut self, range_id: RangeId, leader: Option<SocketAddr>) {
        if let Some(c) = self.by_start.values_mut().find(|c| c.range.id == range_id) {
            c.leader = leader;
        }
    }

    pub fn len(&self) -> usize {
        self.by_start.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_start.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Epoch;

    fn range(id: RangeId, start: &str, end: &str, version: u64) -> RangeDescriptor {
        RangeDescriptor {
            id,
            start_key: Bytes::copy_from_slice(start.as_bytes()),
            end_key: Bytes::copy_from_slice(end.as_bytes()),
            epoch: Epoch {
                conf_ver: 1,
                version,
            },
            replicas: Vec::new(),
        }
    }

    #[test]
    fn finds_the_range_holding_a_key() {
        let mut cache = RangeCache::default();
        cache.insert(range(1, "", "m", 2));
        cache.insert(range(2, "m", "", 2));
        assert_eq!(cache.find(b"a").unwrap().range.id, 1);
        assert_eq!(cache.find(b"m").unwrap().range.id, 2);
        assert_eq!(cache.find(b"zzz").unwrap().range.id, 2);
        assert_eq!(cache.find(b"").unwrap().range.id, 1);
    }

    #[test]
    fn a_split_replaces_the_wider_range_and_keeps_its_leader() {
        let mut cache = RangeCache::default();
        cache.insert(range(1, "", "", 1));
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        cache.set_leader(1, Some(addr));
        cache.insert(range(1, "", "k", 2));
        assert_eq!(cache.find(b"a").unwrap().leader, Some(addr));
        assert!(
            cache.find(b"z").is_none(),
            "the right half is unknown until learned"
        );
        cache.insert(range(7, "k", "", 2));
        assert_eq!(cache.find(b"z").unwrap().range.id, 7);
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn stale_descriptors_do_not_replace_newer_ones() {
        let mut cache = RangeCache::default();
        cache.insert(range(1, "", "k", 2));
        cache.insert(range(7, "k", "", 2));
        cache.insert(range(1, "", "", 1));
        assert_eq!(cache.find(b"z").unwrap().range.id, 7);
        assert_eq!(cache.len(), 2);
    }
}
