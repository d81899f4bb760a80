//! Installing a received snapshot without stalling the store loop: its pairs are
//! written to an SST file when it arrives (off the loop), and the loop ingests that file
//! in place of writing every pair in its round.
//!
//! The order that keeps a crash harmless: the replica's new state goes into the round's
//! batch with a marker naming the file, and is synced; only then is the file ingested
//! (RocksDB makes it durable), and the marker deleted. A replica that finds its marker at
//! start ingests the file if it is still there (an ingest takes the file away).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use shale_rpc::{RangeDescriptor, RangeId};
use tracing::info;

use crate::command::ApplyState;
use crate::engine::{Cf, Durability, Engine};
use crate::keys;
use crate::replica::span_end;
use crate::snapshot::SnapshotData;
use crate::staging::sync_dir;
use crate::StorageError;

/// A received snapshot's pairs in an SST file, ready for its replica to ingest. The file
/// is removed when this is dropped unused.
#[derive(Debug)]
pub struct PreparedSnapshot {
    pub range_id: RangeId,
    pub index: u64,
    pub term: u64,
    /// The file also deletes the keys of the range this store held at this applied
    /// index (none: it held none then). Used only if the replica is still there.
    pub deletes_held_at: Option<u64>,
    path: Option<PathBuf>,
}

impl PreparedSnapshot {
    /// Hands the file over: it is no longer removed on drop.
    pub fn into_path(mut self) -> PathBuf {
        self.path.take().unwrap_or_default()
    }
}

impl Drop for PreparedSnapshot {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Names files so that two snapshots of one range at one index never share one.
static NEXT_FILE: AtomicU64 = AtomicU64::new(0);

/// Checks a received snapshot (a well-formed Raft snapshot message of a range) and, when
/// it holds pairs, writes them as an SST file in the engine's snapshot folder, with a
/// delete of every other key the store holds in the range's span (a lagging replica's
/// data), read at one applied index. Pairs not in strictly ascending order are refused:
/// a snapshot is built from a scan.
pub fn receive(message: &Bytes, engine: &Engine) -> Result<Option<PreparedSnapshot>, String> {
    let m = Message::parse_from_carllerche_bytes(message).map_err(|e| e.to_string())?;
    if m.get_msg_type() != MessageType::MsgSnapshot {
        return Err(format!(
            "a {:?} message on the snapshot stream",
            m.get_msg_type()
        ));
    }
    let snapshot = m.get_snapshot();
    let data = SnapshotData::decode(&snapshot.data).map_err(|e| e.to_string())?;
    if data.pairs.is_empty() {
        return Ok(None);
    }
    if let Some(w) = data.pairs.windows(2).find(|w| w[0].0 >= w[1].0) {
        return Err(format!("snapshot keys out of order at {:?}", w[1].0));
    }
    let range = &data.range;
    let (held, apply) = engine
        .keys_with_meta(
            Cf::Data,
            &range.start_key,
            &span_end(range),
            &keys::apply_state_key(range.id),
        )
        .map_err(|e| e.to_string())?;
    let deletes_held_at = match (held.is_empty(), apply) {
        (true, _) => None,
        (false, None) => Some(0),
        (false, Some(a)) => Some(
            ApplyState::decode(&a)
                .map_err(|e| e.to_string())?
                .applied_index,
        ),
    };
    let deletes = not_among(held, &data.pairs);
    let meta = snapshot.get_metadata();
    let n = NEXT_FILE.fetch_add(1, Ordering::Relaxed);
    let dir = engine.snapshot_dir();
    let path = dir.join(format!("{}-{}-{}-{n}.sst", range.id, meta.term, meta.index));
    let prepared = PreparedSnapshot {
        range_id: range.id,
        index: meta.index,
        term: meta.term,
        deletes_held_at,
        path: Some(path.clone()),
    };
    Engine::write_sst_with_deletes(&path, &data.pairs, &deletes).map_err(|e| e.to_string())?;
    // The marker naming it may be synced soon: the file's name must be on disk first.
    sync_dir(dir).map_err(|e| format!("sync {}: {e}", dir.display()))?;
    Ok(Some(prepared))
}

/// The keys of `held` (ascending) that are not keys of `pairs` (ascending).
fn not_among(held: Vec<Bytes>, pairs: &[(Bytes, Bytes)]) -> Vec<Bytes> {
    let mut pairs = pairs.iter().map(|(k, _)| k).peekable();
    held.into_iter()
        .filter(|k| {
            while pairs.next_if(|p| *p < k).is_some() {}
            pairs.peek() != Some(&k)
        })
        .collect()
}

/// Whether `range` holds no key on this store: then a snapshot's file alone is its data
/// (nothing older needs deleting first, which would make the ingest flush memtables).
pub fn span_is_empty(engine: &Engine, range: &RangeDescriptor) -> Result<bool, StorageError> {
    Ok(engine
        .first_key_in(Cf::Data, &range.start_key, &span_end(range))?
        .is_none())
}

/// Ingests the snapshot file a replica's state already counts in, then drops its marker.
pub fn ingest(engine: &Engine, range_id: RangeId, path: &Path) -> Result<(), StorageError> {
    engine.ingest_file(Cf::Data, path)?;
    drop_marker(engine, range_id)
}

/// The snapshot's data is in: a restart has nothing to finish. (Not synced: a marker
/// found without its file after a crash means the same.)
fn drop_marker(engine: &Engine, range_id: RangeId) -> Result<(), StorageError> {
    let mut batch = engine.batch();
    batch.delete(Cf::Raft, &keys::snapshot_ingest_key(range_id));
    engine.write(batch, Durability::Wal)
}

/// At start, before `range` serves: finishes a snapshot ingest a crash cut short. With
/// its marker but no file, the ingest happened, unless the range holds no data at all
/// (the file held pairs), which means the file was lost.
pub fn recover(engine: &Engine, range: &RangeDescriptor) -> Result<(), StorageError> {
    let marker = keys::snapshot_ingest_key(range.id);
    let Some(name) = engine.get(Cf::Raft, &marker)? else {
        return Ok(());
    };
    let name = String::from_utf8_lossy(&name).into_owned();
    let path = engine.snapshot_dir().join(&name);
    if path.exists() {
        info!(range_id = range.id, file = %name, "ingesting a snapshot a restart cut short");
        return ingest(engine, range.id, &path);
    }
    if span_is_empty(engine, range)? {
        return Err(StorageError::Corruption(format!(
            "range {}: snapshot file {name} was never ingested and is gone",
            range.id
        )));
    }
    drop_marker(engine, range.id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineConfig;
    use shale_rpc::Epoch;

    fn range(id: RangeId) -> RangeDescriptor {
        RangeDescriptor {
            id,
            start_key: Bytes::from_static(b"a"),
            end_key: Bytes::from_static(b"m"),
            epoch: Epoch {
                conf_ver: 1,
                version: 1,
            },
            replicas: Vec::new(),
        }
    }

    fn message(range: &RangeDescriptor, pairs: &[(&str, &str)]) -> Bytes {
        let data = SnapshotData {
            range: range.clone(),
            pairs: pairs
                .iter()
                .map(|(k, v)| (Bytes::from(k.to_string()), Bytes::from(v.to_string())))
                .collect(),
        };
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgSnapshot);
        m.mut_snapshot().data = Bytes::from(postcard::to_allocvec(&data).unwrap());
        m.mut_snapshot().mut_metadata().index = 50;
        m.mut_snapshot().mut_metadata().term = 3;
        Bytes::from(m.write_to_bytes().unwrap())
    }

    fn data(engine: &Engine) -> Vec<(String, String)> {
        let mut all = Vec::new();
        engine
            .scan(Cf::Data, b"", b"", |k, v| {
                let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                all.push((s(k), s(v)));
                true
            })
            .unwrap();
        all
    }

    /// A lagging replica's keys the snapshot lacks go with the ingest; keys outside the
    /// range stay.
    #[test]
    fn a_received_snapshots_file_replaces_what_the_store_held_of_the_range() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), &EngineConfig::default()).unwrap();
        let range = range(7);
        let mut batch = engine.batch();
        for (k, v) in [("a1", "old"), ("b2", "old"), ("c3", "old"), ("z9", "other")] {
            batch.put(Cf::Data, k.as_bytes(), v.as_bytes());
        }
        let applied = ApplyState {
            applied_index: 31,
            applied_term: 2,
        };
        batch.put(Cf::Meta, &keys::apply_state_key(7), &applied.encode());
        engine.write(batch, Durability::NoWal).unwrap();

        let snapshot = message(&range, &[("b2", "new"), ("b3", "new"), ("d4", "new")]);
        let prepared = receive(&snapshot, &engine).unwrap().unwrap();
        assert_eq!((prepared.index, prepared.term), (50, 3));
        assert_eq!(prepared.deletes_held_at, Some(31));
        let path = prepared.into_path();
        assert!(path.starts_with(engine.snapshot_dir()));
        ingest(&engine, 7, &path).unwrap();
        assert!(!path.exists(), "the file moved into the engine");
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            data(&engine),
            pairs(&[("b2", "new"), ("b3", "new"), ("d4", "new"), ("z9", "other")])
        );

        // Nothing held: nothing to delete.
        let fresh = tempfile::tempdir().unwrap();
        let engine = Engine::open(fresh.path(), &EngineConfig::default()).unwrap();
        let prepared = receive(&snapshot, &engine).unwrap().unwrap();
        assert_eq!(prepared.deletes_held_at, None);
        let path = prepared.into_path();
        ingest(&engine, 7, &path).unwrap();
        assert_eq!(
            data(&engine),
            pairs(&[("b2", "new"), ("b3", "new"), ("d4", "new")])
        );
    }

    #[test]
    fn an_unused_prepared_file_is_removed_and_unordered_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), &EngineConfig::default()).unwrap();
        let prepared = receive(&message(&range(7), &[("b", "1")]), &engine)
            .unwrap()
            .unwrap();
        assert_eq!(std::fs::read_dir(engine.snapshot_dir()).unwrap().count(), 1);
        drop(prepared);
        assert_eq!(std::fs::read_dir(engine.snapshot_dir()).unwrap().count(), 0);
        let unordered = message(&range(7), &[("c", "1"), ("b", "2")]);
        assert!(receive(&unordered, &engine)
            .unwrap_err()
            .contains("out of order"));
        assert!(receive(&message(&range(7), &[]), &engine)
            .unwrap()
            .is_none());
        assert_eq!(std::fs::read_dir(engine.snapshot_dir()).unwrap().count(), 0);
    }

    #[test]
    fn keys_not_among_the_pairs() {
        let b = |s: &str| Bytes::from(s.to_string());
        let pairs: Vec<(Bytes, Bytes)> = ["b", "d", "e"].iter().map(|k| (b(k), b("v"))).collect();
        let held = ["a", "b", "c", "e", "f"].iter().map(|k| b(k)).collect();
        assert_eq!(not_among(held, &pairs), vec![b("a"), b("c"), b("f")]);
        assert!(not_among(Vec::new(), &pairs).is_empty());
    }
}
