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
/// it holds pairs, writes them as an SST file in `dir`. Pairs not in strictly ascending
/// order are refused: a snapshot is built from a scan.
pub fn receive(message: &Bytes, dir: &Path) -> Result<Option<PreparedSnapshot>, String> {
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
    let meta = snapshot.get_metadata();
    let n = NEXT_FILE.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!(
        "{}-{}-{}-{n}.sst",
        data.range.id, meta.term, meta.index
    ));
    let prepared = PreparedSnapshot {
        range_id: data.range.id,
        index: meta.index,
        term: meta.term,
        path: Some(path.clone()),
    };
    Engine::write_sst(&path, &data.pairs).map_err(|e| e.to_string())?;
    // The marker naming it may be synced soon: the file's name must be on disk first.
    sync_dir(dir).map_err(|e| format!("sync {}: {e}", dir.display()))?;
    Ok(Some(prepared))
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
    let mut batch = engine.batch();
    batch.delete(Cf::Raft, &marker);
    engine.write(batch, Durability::Wal)
}
