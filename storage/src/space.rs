//! Disk space: a store keeps `space.reserve-bytes` free on the file system of its data.
//! Below that it is low on space: it takes no new data it would lead (puts, bulk loads,
//! staged chunks) nor snapshots, and says so in its heartbeats; deletes still pass, so
//! space can be freed. Placement moves leaders and replicas off low stores and places
//! nothing new there, and tells leaders which stores are low: a leader refuses puts to a
//! range most of whose replicas are on low stores (their Raft log would fill the reserve).
//! A low follower of a range with a sound majority still appends, from its reserve,
//! until its replica moves; below half its reserve it drops appends of new entries
//! (the range goes on with its other replicas; this one catches up once it has room).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use raft::eraftpb::{Entry, EntryType};
use serde::{Deserialize, Serialize};
use shale_rpc::{KvError, RangeDescriptor, StoreId, WriteOp};

use crate::command::Command;
use crate::metrics::METRICS;

/// How often a store reads its free space.
pub const SPACE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How long placement's list of low stores holds: a store that heard nothing newer
/// (placement down) stops refusing on the word of others, not on its own.
const LOW_STORES_TTL: Duration = Duration::from_secs(30);

/// Free space a store keeps.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct SpaceConfig {
    /// Free bytes kept on the data folder's file system: below this the store takes
    /// only deletes as a leader (0: no reserve). Leave room for the Raft logs of the
    /// ranges it follows until placement moves them.
    pub reserve_bytes: u64,
}

impl Default for SpaceConfig {
    fn default() -> Self {
        SpaceConfig {
            reserve_bytes: 1 << 30,
        }
    }
}

/// Whether a store is low on space, given whether it `was` and what it has now. Once low
/// it stays so until 5% of the reserve more is free, so it does not flap at the edge.
pub fn is_low(was: bool, available: u64, reserve: u64) -> bool {
    if reserve == 0 {
        return false;
    }
    let bound = if was {
        reserve.saturating_add(reserve / 20)
    } else {
        reserve
    };
    available < bound
}

/// Whether a store is so low on space that it takes no more Raft log as a follower:
/// below half its reserve (what a low follower appends comes out of the reserve).
pub fn is_critical(available: u64, reserve: u64) -> bool {
    reserve > 0 && available < reserve / 2
}

/// Whether Raft `entries` bring new data: a write with a put, or a bulk load through the
/// log. A follower below half its reserve drops appends that do; deletes, membership
/// changes, splits and the like still pass, so space can be freed and replicas moved.
pub fn brings_data(entries: &[Entry]) -> bool {
    entries.iter().any(|e| {
        e.get_entry_type() == EntryType::EntryNormal
            && !e.data.is_empty()
            && match Command::decode(&e.data) {
                Ok(Command::Write { writes }) => writes
                    .iter()
                    .flatten()
                    .any(|op| matches!(op, WriteOp::Put { .. })),
                Ok(Command::Ingest { .. })
                | Ok(Command::CompareAndSet { value: Some(_), .. })
                | Err(_) => true,
                Ok(_) => false,
            }
    })
}

/// One store's space as last read, and which other stores placement says are low.
#[derive(Debug)]
pub struct Space {
    store_id: StoreId,
    reserve: AtomicU64,
    available: AtomicU64,
    capacity: AtomicU64,
    low: AtomicBool,
    critical: AtomicBool,
    /// This store or a store placement named is low: writes look closer.
    any_low: AtomicBool,
    others: Mutex<(Vec<StoreId>, Option<Instant>)>,
}

impl Space {
    pub fn new(store_id: StoreId, config: &SpaceConfig) -> Space {
        Space {
            store_id,
            reserve: AtomicU64::new(config.reserve_bytes),
            available: AtomicU64::new(0),
            capacity: AtomicU64::new(0),
            low: AtomicBool::new(false),
            critical: AtomicBool::new(false),
            any_low: AtomicBool::new(false),
            others: Mutex::new((Vec::new(), None)),
        }
    }

    /// Changes the reserve (tests, or an operator through a restart with a new config);
    /// takes effect at the next reading.
    pub fn set_reserve(&self, bytes: u64) {
        self.reserve.store(bytes, Ordering::Relaxed);
    }

    pub fn reserve(&self) -> u64 {
        self.reserve.load(Ordering::Relaxed)
    }

    pub fn available(&self) -> u64 {
        self.available.load(Ordering::Relaxed)
    }

    pub fn capacity(&self) -> u64 {
        self.capacity.load(Ordering::Relaxed)
    }

    /// This store, or one placement named, is low on space: writes must look closer.
    pub fn any_low(&self) -> bool {
        self.any_low.load(Ordering::Relaxed)
    }

    /// This store is low on space.
    pub fn is_low(&self) -> bool {
        self.low.load(Ordering::Relaxed)
    }

    /// This store is below half its reserve: as a follower it appends no more log
    /// (see `is_critical`).
    pub fn is_critical(&self) -> bool {
        self.critical.load(Ordering::Relaxed)
    }

    /// Takes a reading of the file system (`capacity`, `available`; zeros when it could
    /// not be read, which counts as plenty: an unreadable statvfs must not stop writes).
    pub fn record(&self, capacity: u64, available: u64) {
        self.capacity.store(capacity, Ordering::Relaxed);
        self.available.store(available, Ordering::Relaxed);
        let free = if capacity == 0 { u64::MAX } else { available };
        let was = self.is_low();
        let low = is_low(was, free, self.reserve());
        if low != was {
            let store_id = self.store_id;
            if low {
                tracing::warn!(
                    store_id,
                    available,
                    reserve = self.reserve(),
                    "store is low on disk space: refusing new data until space is freed"
                );
            } else {
                tracing::info!(store_id, available, "store has disk space again");
            }
        }
        self.low.store(low, Ordering::Relaxed);
        let critical = is_critical(free, self.reserve());
        if critical && !self.critical.load(Ordering::Relaxed) {
            tracing::warn!(
                store_id = self.store_id,
                available,
                "store is below half its disk reserve: its followers take no more log"
            );
        }
        self.critical.store(critical, Ordering::Relaxed);
        let label = vec![("store".to_string(), self.store_id.to_string())];
        METRICS
            .available_bytes
            .get_or_create(&label)
            .set(available.min(i64::MAX as u64) as i64);
        METRICS.low_space.get_or_create(&label).set(i64::from(low));
        self.refresh_any();
    }

    /// Reads the file system holding `dir`.
    pub fn read(&self, dir: &std::path::Path) {
        let (capacity, available) = disk_space(dir);
        self.record(capacity, available);
    }

    /// The stores placement last said are low (this one aside).
    pub fn set_low_stores(&self, stores: Vec<StoreId>) {
        let me = self.store_id;
        let stores = stores.into_iter().filter(|&s| s != me).collect();
        *self.others.lock().expect("space lock") = (stores, Some(Instant::now()));
        self.refresh_any();
    }

    fn low_others(&self) -> Vec<StoreId> {
        let others = self.others.lock().expect("space lock");
        match others.1 {
            Some(at) if at.elapsed() < LOW_STORES_TTL => others.0.clone(),
            _ => Vec::new(),
        }
    }

    fn refresh_any(&self) {
        let any = self.is_low() || !self.low_others().is_empty();
        self.any_low.store(any, Ordering::Relaxed);
    }

    /// Why a write bringing new data to `range`, led here, must be refused, if it must:
    /// this store is low, or most of the range's replicas are on low stores.
    pub fn refusal(&self, range: &RangeDescriptor) -> Option<KvError> {
        if !self.any_low() {
            return None;
        }
        let me = self.store_id;
        if self.is_low() {
            return Some(self.own_refusal());
        }
        let others = self.low_others();
        let low: Vec<StoreId> = range
            .replicas
            .iter()
            .map(|r| r.store_id)
            .filter(|s| *s != me && others.contains(s))
            .collect();
        if low.len() * 2 <= range.replicas.len() {
            return None;
        }
        METRICS.writes_refused_no_space.inc();
        Some(KvError::NoSpace {
            store_id: low[0],
            detail: format!(
                "{} of range {}'s {} replicas are on stores low on space",
                low.len(),
                range.id,
                range.replicas.len()
            ),
        })
    }

    /// The refusal of new data by this store itself, if it is low.
    pub fn own_refusal_if_low(&self) -> Option<KvError> {
        self.is_low().then(|| self.own_refusal())
    }

    fn own_refusal(&self) -> KvError {
        METRICS.writes_refused_no_space.inc();
        KvError::NoSpace {
            store_id: self.store_id,
            detail: format!(
                "{} bytes free, {} kept in reserve",
                self.available(),
                self.reserve()
            ),
        }
    }
}

/// Size and free space of the file system holding `dir`; zeros when unknown.
pub fn disk_space(dir: &std::path::Path) -> (u64, u64) {
    match rustix::fs::statvfs(dir) {
        Ok(s) => (
            s.f_blocks.saturating_mul(s.f_frsize),
            s.f_bavail.saturating_mul(s.f_frsize),
        ),
        Err(_) => (0, 0),
    }
}

/// Reads the store's free space every `SPACE_CHECK_INTERVAL` until aborted.
pub async fn watch(space: std::sync::Arc<Space>, dir: std::path::PathBuf) {
    loop {
        let (s, d) = (space.clone(), dir.clone());
        let _ = tokio::task::spawn_blocking(move || s.read(&d)).await;
        tokio::time::sleep(SPACE_CHECK_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use shale_rpc::{Epoch, ReplicaDescriptor};

    fn range(stores: &[StoreId]) -> RangeDescriptor {
        RangeDescriptor {
            id: 7,
            start_key: Bytes::new(),
            end_key: Bytes::new(),
            epoch: Epoch {
                conf_ver: 1,
                version: 1,
            },
            replicas: stores
                .iter()
                .map(|&s| ReplicaDescriptor {
                    id: s * 10,
                    store_id: s,
                })
                .collect(),
        }
    }

    #[test]
    fn low_below_the_reserve_and_back_only_past_a_margin() {
        assert!(!is_low(false, 100, 0), "no reserve: never low");
        assert!(is_low(false, 99, 100));
        assert!(!is_low(false, 100, 100));
        assert!(is_low(true, 104, 100), "stays low inside the margin");
        assert!(!is_low(true, 105, 100));
    }

    #[test]
    fn only_entries_with_puts_or_loads_bring_data() {
        let entry = |c: Option<Command>| {
            let mut e = Entry::default();
            if let Some(c) = c {
                e.data = c.encode().into();
            }
            e
        };
        let put = WriteOp::Put {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
        };
        let delete = WriteOp::Delete {
            key: Bytes::from_static(b"k"),
        };
        let deletes = entry(Some(Command::Write {
            writes: vec![vec![delete.clone()], vec![delete.clone()]],
        }));
        let quiet = [
            entry(None),
            deletes,
            entry(Some(Command::CompactLog { index: 9, term: 2 })),
            entry(Some(Command::ComputeChecksum)),
        ];
        assert!(!brings_data(&quiet));
        let mixed = entry(Some(Command::Write {
            writes: vec![vec![delete], vec![put]],
        }));
        assert!(brings_data(&[quiet[0].clone(), mixed]));
        let load = entry(Some(Command::Ingest { pairs: Vec::new() }));
        assert!(brings_data(&[load]));
        let garbage = Entry {
            data: vec![0xff; 9].into(),
            ..Default::default()
        };
        assert!(
            brings_data(&[garbage]),
            "what cannot be read counts as data"
        );
    }

    #[test]
    fn critical_below_half_the_reserve() {
        assert!(!is_critical(0, 0));
        assert!(is_critical(49, 100));
        assert!(!is_critical(50, 100));
        let space = Space::new(1, &SpaceConfig { reserve_bytes: 100 });
        space.record(1000, 70);
        assert!(space.is_low() && !space.is_critical());
        space.record(1000, 10);
        assert!(space.is_critical());
        space.record(1000, 500);
        assert!(!space.is_low() && !space.is_critical());
    }

    #[test]
    fn an_unreadable_file_system_counts_as_plenty() {
        let space = Space::new(1, &SpaceConfig { reserve_bytes: 10 });
        space.record(0, 0);
        assert!(!space.is_low());
        space.record(1000, 5);
        assert!(space.is_low());
        assert!(matches!(
            space.refusal(&range(&[1, 2, 3])),
            Some(KvError::NoSpace { store_id: 1, .. })
        ));
    }

    #[test]
    fn refuses_when_most_replicas_are_on_low_stores() {
        let space = Space::new(1, &SpaceConfig { reserve_bytes: 10 });
        space.record(1000, 500);
        assert_eq!(space.refusal(&range(&[1, 2, 3])), None);
        space.set_low_stores(vec![2]);
        assert_eq!(space.refusal(&range(&[1, 2, 3])), None, "a minority is low");
        space.set_low_stores(vec![2, 3, 1]);
        match space.refusal(&range(&[1, 2, 3])) {
            Some(KvError::NoSpace { store_id, detail }) => {
                assert_eq!(store_id, 2);
                assert!(detail.contains("2 of range 7's 3 replicas"), "{detail}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(space.refusal(&range(&[1, 4, 5])), None, "other ranges");
        space.set_low_stores(Vec::new());
        assert_eq!(space.refusal(&range(&[1, 2, 3])), None);
    }

    #[test]
    fn placements_word_expires() {
        let space = Space::new(1, &SpaceConfig { reserve_bytes: 10 });
        space.set_low_stores(vec![2, 3]);
        space.others.lock().unwrap().1 = Some(Instant::now() - LOW_STORES_TTL);
        assert_eq!(space.refusal(&range(&[1, 2, 3])), None);
    }
}
