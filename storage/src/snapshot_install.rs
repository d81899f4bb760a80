//! Installing a received snapshot without stalling the store loop or holding it in
//! memory: its pairs are checked and written to an SST file as their chunks arrive (on a
//! thread of the transfer's own), and the loop ingests that file in place of writing
//! every pair in its round.
//!
//! The order that keeps a crash harmless: the replica's new state goes into the round's
//! batch with a marker naming the file, and is synced; only then is the file ingested
//! (RocksDB makes it durable), and the marker deleted. A replica that finds its marker at
//! start ingests the file if it is still there (an ingest takes the file away).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use serde::Deserialize;
use shale_rpc::{RangeDescriptor, RangeId, StoreId};
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::command::ApplyState;
use crate::engine::{Cf, Durability, Engine, KeyCursor, SstSink};
use crate::keys;
use crate::replica::span_end;
use crate::snapshot::{SnapshotChunk, SnapshotHeader, RECEIVE_IDLE_MAX, SNAPSHOT_BYTES_MAX};
use crate::staging::sync_dir;
use crate::StorageError;

/// A received snapshot's data in an SST file, ready for its replica to ingest. The file
/// is removed when this is dropped unused.
#[derive(Debug)]
pub struct PreparedSnapshot {
    pub range_id: RangeId,
    pub index: u64,
    pub term: u64,
    /// The file also deletes the keys of the range this store held at this applied
    /// index (none: it held none then). Used only if the replica is still there.
    pub deletes_held_at: Option<u64>,
    /// None when there was nothing to write: no pairs, and nothing held to delete.
    path: Option<PathBuf>,
}

impl PreparedSnapshot {
    /// Hands the file over (if there is one): it is no longer removed on drop.
    pub fn into_path(mut self) -> Option<PathBuf> {
        self.path.take()
    }
}

impl Drop for PreparedSnapshot {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A whole snapshot, checked and written: its Raft message (a `SnapshotHeader` for
/// data) for the store loop, and its file.
#[derive(Debug)]
pub struct Received {
    pub message: Bytes,
    pub prepared: PreparedSnapshot,
}

/// What the writer answers to one chunk: `Some` once the last is written.
pub type ChunkResult = Result<Option<Received>, String>;

struct Piece {
    /// A batch of pairs (empty for chunk 0).
    pairs: Bytes,
    last: bool,
    reply: oneshot::Sender<ChunkResult>,
}

/// A snapshot being received: a thread of its own checks each chunk's pairs and writes
/// them to the snapshot's file as they come, merged with deletes of the keys the store
/// holds in the range's span (read through a cursor), so the receiver holds one chunk
/// at a time, not the snapshot.
pub struct Incoming {
    pub from_store: StoreId,
    pub range_id: RangeId,
    next_seq: u32,
    touched: Instant,
    pieces: SyncSender<Piece>,
}

impl Incoming {
    /// Checks a transfer's chunk 0, decoded by [`first_chunk`], and starts its writer.
    /// Nothing is read or written before the first chunk is added. `outdated_view` is a
    /// fault for tests (see `Faults`).
    pub fn start(
        engine: Arc<Engine>,
        first: &SnapshotChunk,
        (m, header): (Message, SnapshotHeader),
        outdated_view: bool,
    ) -> Result<Incoming, String> {
        if header.bytes > SNAPSHOT_BYTES_MAX as u64 {
            return Err(format!(
                "a snapshot of {} bytes (at most {SNAPSHOT_BYTES_MAX})",
                header.bytes
            ));
        }
        let meta = m.get_snapshot().get_metadata();
        let stream = Stream {
            message: first.data.clone(),
            index: meta.index,
            term: meta.term,
            header,
            outdated_view,
            deletes_held_at: None,
            last_key: None,
            pairs: 0,
            bytes: 0,
        };
        let (pieces, rx) = sync_channel(1);
        std::thread::Builder::new()
            .name(format!("snap-in-{}", first.range_id))
            .spawn(move || receive(&engine, stream, rx))
            .map_err(|e| format!("starting the snapshot writer: {e}"))?;
        Ok(Incoming {
            from_store: first.from_store,
            range_id: first.range_id,
            next_seq: 0,
            touched: Instant::now(),
            pieces,
        })
    }

    /// Hands `chunk` (the next of this transfer, chunk 0 included) to the writer, whose
    /// answer comes on the returned channel. One chunk at a time: the sender waits for
    /// each answer.
    pub fn add(&mut self, chunk: SnapshotChunk) -> Result<oneshot::Receiver<ChunkResult>, String> {
        if chunk.seq != self.next_seq {
            return Err(format!(
                "snapshot chunk {} where {} was due",
                chunk.seq, self.next_seq
            ));
        }
        let (reply, answer) = oneshot::channel();
        let pairs = if chunk.seq == 0 {
            Bytes::new()
        } else {
            chunk.data
        };
        self.pieces
            .try_send(Piece {
                pairs,
                last: chunk.last,
                reply,
            })
            .map_err(|_| "a snapshot chunk came before the last was answered".to_string())?;
        self.next_seq += 1;
        self.touched = Instant::now();
        Ok(answer)
    }

    /// No chunk for `RECEIVE_IDLE_MAX`: the sender is gone (dropping this stops the
    /// writer and removes its file).
    pub fn is_stale(&self) -> bool {
        self.touched.elapsed() >= RECEIVE_IDLE_MAX
    }
}

/// A transfer's chunk 0 decoded: the Raft snapshot message, and its data's header,
/// which must name the chunk's range.
pub fn first_chunk(first: &SnapshotChunk) -> Result<(Message, SnapshotHeader), String> {
    let m = Message::parse_from_carllerche_bytes(&first.data).map_err(|e| e.to_string())?;
    if m.get_msg_type() != MessageType::MsgSnapshot {
        return Err(format!(
            "a {:?} message on the snapshot stream",
            m.get_msg_type()
        ));
    }
    let header = SnapshotHeader::decode(&m.get_snapshot().data).map_err(|e| e.to_string())?;
    if header.range.id != first.range_id {
        return Err(format!(
            "a snapshot of range {} sent as range {}",
            header.range.id, first.range_id
        ));
    }
    Ok((m, header))
}

/// Names files so that two snapshots of one range at one index never share one.
static NEXT_FILE: AtomicU64 = AtomicU64::new(0);

/// The writer thread: takes pieces until the last (or an error, or the sender going
/// quiet), answering each. The file is removed unless it ends in a `PreparedSnapshot`,
/// before the last answer goes.
fn receive(engine: &Engine, mut stream: Stream, pieces: Receiver<Piece>) {
    let Ok(first) = pieces.recv_timeout(RECEIVE_IDLE_MAX) else {
        return;
    };
    let range = stream.header.range.id;
    let n = NEXT_FILE.fetch_add(1, Ordering::Relaxed);
    let path = engine
        .snapshot_dir()
        .join(format!("{range}-{}-{}-{n}.sst", stream.term, stream.index));
    let span = stream.header.range.clone();
    let last = Engine::with_sst_writer(&path, |sink| {
        // The keys to delete come from one view, with the applied index they are at.
        let held = engine.with_keys_and_meta(
            Cf::Data,
            &span.start_key,
            &span_end(&span),
            &keys::apply_state_key(range),
            |apply, held| {
                if let Err(reason) = stream.note_held(apply, held) {
                    return Some((first.reply, Err(reason)));
                }
                let mut piece = first;
                loop {
                    let step = stream.take(sink, held, &piece.pairs).and_then(|()| {
                        if piece.last {
                            stream.finish(sink, held, engine, &path).map(Some)
                        } else {
                            Ok(None)
                        }
                    });
                    if !matches!(step, Ok(None)) {
                        return Some((piece.reply, step));
                    }
                    let _ = piece.reply.send(step);
                    piece = match pieces.recv_timeout(RECEIVE_IDLE_MAX) {
                        Ok(p) => p,
                        Err(_) => {
                            info!(range_id = range, "snapshot transfer abandoned");
                            return None;
                        }
                    };
                }
            },
        );
        // A failed read of the view drops the first chunk's answer: the server then
        // refuses the transfer.
        held.unwrap_or_else(|e| {
            warn!(range_id = range, error = %e, "reading the keys a snapshot replaces failed");
            None
        })
    });
    if let Some((reply, step)) = last {
        if let Err(reason) = &step {
            warn!(range_id = range, %reason, "snapshot refused");
        }
        let _ = reply.send(step);
    }
}

/// One chunk's batch of pairs, decoded as slices of the chunk.
#[derive(Deserialize)]
struct PairBatch(#[serde(deserialize_with = "shale_rpc::shared::pairs")] Vec<(Bytes, Bytes)>);

/// The checks and merge of one transfer's pairs.
struct Stream {
    message: Bytes,
    index: u64,
    term: u64,
    header: SnapshotHeader,
    /// A fault for tests: delete none of the keys the store holds.
    outdated_view: bool,
    deletes_held_at: Option<u64>,
    last_key: Option<Bytes>,
    pairs: u64,
    bytes: u64,
}

impl Stream {
    /// Notes what the keys the store holds in the range's span (`held`, those the
    /// snapshot lacks are deleted by the file) were read at: the replica's applied
    /// index, from `apply`.
    fn note_held(&mut self, apply: Option<Vec<u8>>, held: &KeyCursor<'_>) -> Result<(), String> {
        held.status().map_err(|e| e.to_string())?;
        self.deletes_held_at = if self.outdated_view {
            Some(u64::MAX)
        } else if held.key().is_none() {
            None
        } else {
            match apply {
                None => Some(0),
                Some(a) => Some(
                    ApplyState::decode(&a)
                        .map_err(|e| e.to_string())?
                        .applied_index,
                ),
            }
        };
        Ok(())
    }

    /// Deletes the held keys below `key` (all, for none), and skips `key` itself.
    fn delete_held(
        &self,
        sink: &mut SstSink<'_>,
        held: &mut KeyCursor<'_>,
        key: Option<&[u8]>,
    ) -> Result<(), String> {
        if self.outdated_view {
            return Ok(());
        }
        while let Some(d) = held.key() {
            if key.is_some_and(|k| d >= k) {
                break;
            }
            sink.delete(d).map_err(|e| e.to_string())?;
            held.advance();
        }
        if key.is_some() && held.key() == key {
            held.advance();
        }
        held.status().map_err(|e| e.to_string())
    }

    /// Checks a batch (keys ascending across the transfer, inside the range, no more
    /// than the header said) and writes it, with deletes of the held keys it passes.
    fn take(
        &mut self,
        sink: &mut SstSink<'_>,
        held: &mut KeyCursor<'_>,
        batch: &Bytes,
    ) -> Result<(), String> {
        if batch.is_empty() {
            return Ok(());
        }
        let PairBatch(pairs) = shale_rpc::shared::decode(batch).map_err(|e| e.to_string())?;
        for (k, v) in pairs {
            if self.last_key.as_ref().is_some_and(|last| *last >= k) {
                return Err(format!("snapshot keys out of order at {k:?}"));
            }
            if !self.header.range.contains(&k) {
                return Err(format!(
                    "snapshot key {k:?} outside range {}",
                    self.header.range.id
                ));
            }
            self.pairs += 1;
            self.bytes += (k.len() + v.len()) as u64;
            if self.pairs > self.header.pairs || self.bytes > self.header.bytes {
                return Err("more snapshot pairs than its header said".into());
            }
            self.delete_held(sink, held, Some(&k))?;
            sink.put(&k, &v).map_err(|e| e.to_string())?;
            self.last_key = Some(k);
        }
        Ok(())
    }

    /// After the last chunk: checks the count, deletes the held keys past the last
    /// pair, and closes and syncs the file.
    fn finish(
        &mut self,
        sink: &mut SstSink<'_>,
        held: &mut KeyCursor<'_>,
        engine: &Engine,
        path: &Path,
    ) -> Result<Received, String> {
        if (self.pairs, self.bytes) != (self.header.pairs, self.header.bytes) {
            return Err(format!(
                "snapshot ended after {} of {} pairs ({} of {} bytes)",
                self.pairs, self.header.pairs, self.bytes, self.header.bytes
            ));
        }
        self.delete_held(sink, held, None)?;
        let written = sink.finish().map_err(|e| e.to_string())?;
        let prepared = PreparedSnapshot {
            range_id: self.header.range.id,
            index: self.index,
            term: self.term,
            deletes_held_at: self.deletes_held_at,
            path: written.then(|| path.to_owned()),
        };
        if written {
            // The marker naming it may be synced soon: the file's name must be on disk
            // first.
            let dir = engine.snapshot_dir();
            sync_dir(dir).map_err(|e| format!("sync {}: {e}", dir.display()))?;
        }
        Ok(Received {
            message: self.message.clone(),
            prepared,
        })
    }
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

    type Pairs<'a> = &'a [(&'a str, &'a str)];

    /// Sends a snapshot of `range` at 50/3 in chunks of `batches` (the header counting
    /// `claimed` pairs, or as many as there are) and returns the last answer, or the
    /// first refusal.
    fn transfer(
        engine: &Arc<Engine>,
        range: &RangeDescriptor,
        batches: &[Pairs<'_>],
        claimed: Option<u64>,
    ) -> ChunkResult {
        let all: Vec<(&str, &str)> = batches.iter().flat_map(|b| b.iter().copied()).collect();
        let header = SnapshotHeader {
            range: range.clone(),
            pairs: claimed.unwrap_or(all.len() as u64),
            bytes: all.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum(),
            frozen: None,
        };
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgSnapshot);
        m.mut_snapshot().data = Bytes::from(postcard::to_allocvec(&header).unwrap());
        m.mut_snapshot().mut_metadata().index = 50;
        m.mut_snapshot().mut_metadata().term = 3;
        let chunk = |seq: usize, data: Bytes| SnapshotChunk {
            from_store: 1,
            to_store: 2,
            range_id: range.id,
            transfer_id: 5,
            seq: seq as u32,
            last: seq == batches.len(),
            data,
        };
        let first = chunk(0, Bytes::from(m.write_to_bytes().unwrap()));
        let mut incoming = Incoming::start(engine.clone(), &first, first_chunk(&first)?, false)?;
        let mut answer = incoming.add(first)?.blocking_recv().unwrap()?;
        for (i, batch) in batches.iter().enumerate() {
            let pairs: Vec<(Bytes, Bytes)> = batch
                .iter()
                .map(|(k, v)| (Bytes::from(k.to_string()), Bytes::from(v.to_string())))
                .collect();
            let data = Bytes::from(postcard::to_allocvec(&pairs).unwrap());
            answer = incoming.add(chunk(i + 1, data))?.blocking_recv().unwrap()?;
        }
        Ok(answer)
    }

    fn file_of(answer: ChunkResult) -> PreparedSnapshot {
        answer.unwrap().expect("the last chunk's answer").prepared
    }

    fn files(engine: &Engine) -> usize {
        std::fs::read_dir(engine.snapshot_dir()).unwrap().count()
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
        let engine = Arc::new(Engine::open(dir.path(), &EngineConfig::default()).unwrap());
        let range = range(7);
        let mut batch = engine.batch();
        for (k, v) in [
            ("a1", "old"),
            ("b2", "old"),
            ("c3", "old"),
            ("k9", "old"),
            ("z9", "other"),
        ] {
            batch.put(Cf::Data, k.as_bytes(), v.as_bytes());
        }
        let applied = ApplyState {
            applied_index: 31,
            applied_term: 2,
        };
        batch.put(Cf::Meta, &keys::apply_state_key(7), &applied.encode());
        engine.write(batch, Durability::NoWal).unwrap();

        let batches: [Pairs<'_>; 2] = [&[("b2", "new"), ("b3", "new")], &[("d4", "new")]];
        let prepared = file_of(transfer(&engine, &range, &batches, None));
        assert_eq!((prepared.index, prepared.term), (50, 3));
        assert_eq!(prepared.deletes_held_at, Some(31));
        let path = prepared.into_path().unwrap();
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
        let engine = Arc::new(Engine::open(fresh.path(), &EngineConfig::default()).unwrap());
        let prepared = file_of(transfer(&engine, &range, &batches, None));
        assert_eq!(prepared.deletes_held_at, None);
        ingest(&engine, 7, &prepared.into_path().unwrap()).unwrap();
        assert_eq!(
            data(&engine),
            pairs(&[("b2", "new"), ("b3", "new"), ("d4", "new")])
        );
        // An empty snapshot needs a file only to delete what the store holds.
        let elsewhere = RangeDescriptor {
            start_key: Bytes::from_static(b"n"),
            end_key: Bytes::from_static(b"p"),
            ..range.clone()
        };
        assert!(file_of(transfer(&engine, &elsewhere, &[], None))
            .into_path()
            .is_none());
        let path = file_of(transfer(&engine, &range, &[], None))
            .into_path()
            .unwrap();
        ingest(&engine, 7, &path).unwrap();
        assert!(data(&engine).is_empty());
    }

    /// A transfer whose pairs do not add up to a snapshot of its range is refused, and
    /// leaves no file; an unused prepared file is removed.
    #[test]
    fn bad_transfers_are_refused_and_leave_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Arc::new(Engine::open(dir.path(), &EngineConfig::default()).unwrap());
        let range = range(7);
        let prepared = file_of(transfer(&engine, &range, &[&[("b", "1")]], None));
        assert_eq!(files(&engine), 1);
        drop(prepared);
        assert_eq!(files(&engine), 0);
        let refusals: [(&[Pairs<'_>], Option<u64>, &str); 5] = [
            (&[&[("c", "1"), ("b", "2")]], None, "out of order"),
            (&[&[("c", "1")], &[("c", "2")]], None, "out of order"),
            (&[&[("b", "1"), ("n", "2")]], None, "outside range"),
            (
                &[&[("b", "1")], &[("c", "2")]],
                Some(1),
                "more snapshot pairs",
            ),
            (&[&[("b", "1")]], Some(2), "ended after 1 of 2 pairs"),
        ];
        for (batches, claimed, why) in refusals {
            let err = transfer(&engine, &range, batches, claimed).unwrap_err();
            assert!(err.contains(why), "{err} (expected {why})");
            assert_eq!(
                files(&engine),
                0,
                "{why}: the file is gone before the answer"
            );
        }
        assert!(
            data(&engine).is_empty(),
            "nothing was written to the engine"
        );
    }
}
