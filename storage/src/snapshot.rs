//! Range snapshots: what one holds (the range's descriptor and every pair of its data at
//! the snapshot's index), and cutting one into the checksummed chunks it travels in
//! (`snapshot_install` takes them on the receiver).

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft::eraftpb::{ConfState, Snapshot};
use serde::{Deserialize, Serialize};
use shale_rpc::{RangeDescriptor, RangeId, StoreId};

use crate::command::MergeTarget;
use crate::engine::{Cf, Engine};
use crate::faults::Faults;
use crate::StorageError;
use tracing::info;

/// Largest snapshot built or accepted. Ranges split well below it.
pub const SNAPSHOT_BYTES_MAX: usize = 512 << 20;
/// Bytes of snapshot per chunk frame.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// Snapshots being received at once; more are refused (the leader retries).
pub const SNAPSHOTS_RECEIVING_MAX: usize = 4;
/// A snapshot whose next chunk does not come within this long is dropped.
pub const RECEIVE_IDLE_MAX: Duration = Duration::from_secs(60);

/// A built snapshot's pairs on disk, cut into the batches (postcard `Vec<(Bytes, Bytes)>`
/// of up to `SNAPSHOT_CHUNK_BYTES`) that travel as chunks, each with its crc32, checked
/// when it is read back. The leader replica and the transfers of the snapshot share it;
/// the file is removed when the last of them drops it. Its Raft snapshot's data is the
/// header alone.
#[derive(Debug)]
pub struct BuiltSnapshot {
    pub index: u64,
    pub term: u64,
    path: PathBuf,
    file: File,
    /// Where each batch ends in the file, and its crc32.
    batches: Vec<(u64, u32)>,
}

impl BuiltSnapshot {
    pub fn batches(&self) -> usize {
        self.batches.len()
    }

    /// Reads batch `i` (below `batches`) back, checked against its crc32.
    pub fn batch(&self, i: usize) -> Result<Bytes, StorageError> {
        use std::os::unix::fs::FileExt;
        let start = if i == 0 { 0 } else { self.batches[i - 1].0 };
        let (end, crc) = self.batches[i];
        let mut buf = vec![0; (end - start) as usize];
        self.file.read_exact_at(&mut buf, start)?;
        if crc32fast::hash(&buf) != crc {
            return Err(StorageError::Corruption(format!(
                "snapshot file {}: batch {i} fails its crc32",
                self.path.display()
            )));
        }
        Ok(buf.into())
    }
}

impl Drop for BuiltSnapshot {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Cuts pairs, in key order, into a snapshot's encoded batches and writes each to the
/// snapshot's file as it is cut: the build holds one batch, not the range.
pub struct Batcher {
    /// Removes the file if the build stops early.
    built: BuiltSnapshot,
    out: std::io::BufWriter<File>,
    written: u64,
    batch: Vec<(Bytes, Bytes)>,
    batch_bytes: usize,
    pairs: u64,
    bytes: u64,
}

impl Batcher {
    /// Creates the file of the snapshot at `index` and `term` at `path`.
    pub fn create(path: PathBuf, index: u64, term: u64) -> Result<Batcher, StorageError> {
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        let out = std::io::BufWriter::with_capacity(SNAPSHOT_CHUNK_BYTES, file.try_clone()?);
        Ok(Batcher {
            built: BuiltSnapshot {
                index,
                term,
                path,
                file,
                batches: Vec::new(),
            },
            out,
            written: 0,
            batch: Vec::new(),
            batch_bytes: 0,
            pairs: 0,
            bytes: 0,
        })
    }

    /// Key and value bytes taken so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn push(&mut self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        let len = key.len() + value.len();
        if self.batch_bytes > 0 && self.batch_bytes + len > SNAPSHOT_CHUNK_BYTES {
            self.cut()?;
        }
        self.batch
            .push((Bytes::copy_from_slice(key), Bytes::copy_from_slice(value)));
        self.batch_bytes += len;
        self.pairs += 1;
        self.bytes += len as u64;
        Ok(())
    }

    fn cut(&mut self) -> Result<(), StorageError> {
        use std::io::Write;
        let encoded = shale_rpc::codec::to_vec_sized(&self.batch)?;
        self.out.write_all(&encoded)?;
        self.written += encoded.len() as u64;
        self.built
            .batches
            .push((self.written, crc32fast::hash(&encoded)));
        self.batch.clear();
        self.batch_bytes = 0;
        Ok(())
    }

    /// The header of the snapshot of `range`, and its file, written out (not synced: a
    /// restart removes it anyway).
    pub fn finish(
        mut self,
        range: RangeDescriptor,
        frozen: Option<MergeTarget>,
    ) -> Result<(SnapshotHeader, BuiltSnapshot), StorageError> {
        use std::io::Write;
        if !self.batch.is_empty() {
            self.cut()?;
        }
        self.out.flush()?;
        let header = SnapshotHeader {
            range,
            pairs: self.pairs,
            bytes: self.bytes,
            frozen,
        };
        Ok((header, self.built))
    }
}

/// Names snapshot files so that two builds never share one.
static NEXT_BUILD: AtomicU64 = AtomicU64::new(0);

/// Snapshots being built at once on a store. A leader that wants one more waits: raft
/// asks again at its follower's next heartbeat response.
pub const SNAPSHOT_BUILDS_MAX: usize = 2;

/// What a snapshot is built from: the range, its applied point and its membership there,
/// taken from the replica when the build starts.
#[derive(Debug, Clone)]
pub struct BuildJob {
    pub range: RangeDescriptor,
    pub index: u64,
    pub term: u64,
    pub conf_state: ConfState,
    /// The merge the range is frozen for there, if any.
    pub frozen: Option<MergeTarget>,
}

/// Builds a snapshot for `job` on a thread of its own and hands the outcome to `done`.
///
/// Returns once that thread has pinned its view of the engine. Called by the store loop,
/// the only writer of applied data, between rounds (when every applied write is in the
/// engine), that view holds the range exactly as applied at `job.index`, however many
/// rounds the loop runs while the scan goes on. So reading and encoding a range of many
/// MiB never holds up the store's other ranges.
pub fn spawn_build(
    thread_name: String,
    engine: Arc<Engine>,
    faults: Arc<Faults>,
    job: BuildJob,
    done: impl FnOnce(RangeId, Result<(Snapshot, BuiltSnapshot), StorageError>) + Send + 'static,
) -> Result<(), StorageError> {
    let (pinned_tx, pinned_rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name(thread_name)
        .spawn(move || {
            let range_id = job.range.id;
            // `done` must run whatever happens: the loop counts the build until it does.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                build(&engine, job, || {
                    let _ = pinned_tx.send(());
                    faults.snapshot_build_may_go();
                })
            }))
            .unwrap_or_else(|_| {
                Err(StorageError::Engine(format!(
                    "snapshot build of range {range_id} panicked"
                )))
            });
            done(range_id, result);
        })
        .map_err(|e| StorageError::Engine(format!("start a snapshot build: {e}")))?;
    // The thread pins its view first thing; a closed channel means it ended without.
    let _ = pinned_rx.recv();
    Ok(())
}

/// Reads every pair of `job.range` from a view pinned at once (`pinned` runs then) into
/// a Raft snapshot at `job.index` and its file.
fn build(
    engine: &Engine,
    job: BuildJob,
    pinned: impl FnOnce(),
) -> Result<(Snapshot, BuiltSnapshot), StorageError> {
    let started = Instant::now();
    let range = job.range;
    let n = NEXT_BUILD.fetch_add(1, Ordering::Relaxed);
    let path = engine
        .snapshot_dir()
        .join(format!("{}-{}-{}-{n}.out", range.id, job.term, job.index));
    let mut batcher = Batcher::create(path, job.index, job.term)?;
    let mut failed = None;
    engine.scan_pinned(
        Cf::Data,
        &range.start_key,
        &range.end_key,
        pinned,
        |k, v| match batcher.push(k, v) {
            Ok(()) => batcher.bytes() <= SNAPSHOT_BYTES_MAX as u64,
            Err(e) => {
                failed = Some(e);
                false
            }
        },
    )?;
    if let Some(e) = failed {
        return Err(e);
    }
    if batcher.bytes() > SNAPSHOT_BYTES_MAX as u64 {
        return Err(StorageError::Engine(format!(
            "range {} holds more than {SNAPSHOT_BYTES_MAX} bytes; it must split before it can be snapshotted",
            range.id
        )));
    }
    let range_id = range.id;
    let (header, built) = batcher.finish(range, job.frozen)?;
    let mut snapshot = Snapshot {
        data: shale_rpc::codec::to_vec_sized(&header)?.into(),
        ..Default::default()
    };
    let meta = snapshot.mut_metadata();
    meta.index = job.index;
    meta.term = job.term;
    meta.set_conf_state(job.conf_state);
    crate::metrics::METRICS.snapshots_built.inc();
    info!(
        range_id,
        index = job.index,
        pairs = header.pairs,
        bytes = header.bytes,
        ms = started.elapsed().as_millis() as u64,
        "built snapshot"
    );
    Ok((snapshot, built))
}

/// What a snapshot's Raft message carries as its data on the wire, in place of its
/// pairs: they follow in chunks of their own, so neither side holds them all at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    pub range: RangeDescriptor,
    /// Pairs that follow, and their key and value bytes together.
    pub pairs: u64,
    pub bytes: u64,
    /// The merge the range was frozen for at the snapshot's index: the replica that
    /// takes the snapshot is frozen too.
    pub frozen: Option<MergeTarget>,
}

/// The wire version from which a snapshot header carries its range's freeze: a peer
/// of an older one would take a frozen range's snapshot as a thawed one, so it is sent
/// none (as such nodes built none) until the range thaws.
pub const FROZEN_SNAPSHOT_WIRE_VERSION: u8 = 9;

/// A snapshot header as wire version 8 wrote it: without `frozen`.
#[derive(Deserialize)]
struct SnapshotHeaderV8 {
    range: RangeDescriptor,
    pairs: u64,
    bytes: u64,
}

impl SnapshotHeader {
    /// Decodes a snapshot's data (on the leader and on the wire alike), written by this
    /// build or by one of wire version 8, whose headers end where `frozen` begins (a
    /// header of this build always holds it; one cut right there would pass for an old
    /// one, but frames are checksummed).
    pub fn decode(data: &[u8]) -> Result<SnapshotHeader, StorageError> {
        match postcard::from_bytes(data) {
            Err(e @ postcard::Error::DeserializeUnexpectedEnd) => {
                // Only a whole old header: one cut inside `frozen` is no header at all.
                match postcard::take_from_bytes::<SnapshotHeaderV8>(data) {
                    Ok((old, [])) => Ok(SnapshotHeader {
                        range: old.range,
                        pairs: old.pairs,
                        bytes: old.bytes,
                        frozen: None,
                    }),
                    _ => Err(e.into()),
                }
            }
            decoded => Ok(decoded?),
        }
    }
}

/// One chunk of a snapshot transfer on the wire (each frame carries its own crc32).
/// Chunk 0 is the Raft snapshot message, its data a `SnapshotHeader`; each later chunk a
/// batch of the range's pairs (a postcard `Vec<(Bytes, Bytes)>`), keys ascending across
/// the whole transfer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotChunk {
    pub from_store: StoreId,
    pub to_store: StoreId,
    pub range_id: RangeId,
    /// Distinguishes transfers from the same store.
    pub transfer_id: u64,
    pub seq: u32,
    /// The transfer's last chunk (chunk 0 too, when the range holds no pairs).
    pub last: bool,
    pub data: Bytes,
}

/// The receiver's answer to one snapshot chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotAck {
    /// Taken; send the next chunk.
    Next,
    /// The last chunk: the whole snapshot was checked, written as a file and handed to
    /// the store loop, ahead of any Raft message the sender sends after this answer.
    Taken,
    /// The receiver is taking as many transfers as it can: send the same snapshot again
    /// a little later (no chunk of it was kept).
    Busy,
    /// Not taken (malformed, out of order): the transfer is over and the sender's raft
    /// tries again later.
    Refused { reason: String },
}

/// A built snapshot as it goes on the wire: its Raft message (the header for data),
/// then the batches of its file as they are, read back one at a time.
pub struct Transfer {
    from_store: StoreId,
    to_store: StoreId,
    range_id: RangeId,
    transfer_id: u64,
    message: Bytes,
    built: Arc<BuiltSnapshot>,
    /// Whether the header carries a freeze (see `FROZEN_SNAPSHOT_WIRE_VERSION`).
    frozen: bool,
}

impl Transfer {
    /// `message` is a Raft snapshot message; `built` must be that snapshot's file.
    pub fn new(
        from_store: StoreId,
        to_store: StoreId,
        range_id: RangeId,
        transfer_id: u64,
        message: &raft::eraftpb::Message,
        built: Arc<BuiltSnapshot>,
    ) -> Result<Transfer, StorageError> {
        use protobuf::Message as _;
        let meta = message.get_snapshot().get_metadata();
        if (meta.index, meta.term) != (built.index, built.term) {
            return Err(StorageError::Raft(format!(
                "snapshot {}/{} with the file of snapshot {}/{}",
                meta.term, meta.index, built.term, built.index
            )));
        }
        let frozen = SnapshotHeader::decode(&message.get_snapshot().data)?
            .frozen
            .is_some();
        let message = Bytes::from(
            message
                .write_to_bytes()
                .map_err(|e| StorageError::Raft(e.to_string()))?,
        );
        Ok(Transfer {
            frozen,
            from_store,
            to_store,
            range_id,
            transfer_id,
            message,
            built,
        })
    }

    /// Whether the snapshot carries its range's freeze for a merge.
    pub fn frozen(&self) -> bool {
        self.frozen
    }

    /// Chunks in all: the message, then the batches (never none).
    pub fn chunks(&self) -> usize {
        1 + self.built.batches()
    }

    /// Chunk `seq` (below `chunks`); a batch is read from the file (blocking).
    pub fn chunk(&self, seq: usize) -> Result<SnapshotChunk, StorageError> {
        Ok(SnapshotChunk {
            from_store: self.from_store,
            to_store: self.to_store,
            range_id: self.range_id,
            transfer_id: self.transfer_id,
            seq: seq as u32,
            last: seq + 1 == self.chunks(),
            data: match seq {
                0 => self.message.clone(),
                n => self.built.batch(n - 1)?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Durability, EngineConfig};
    use proptest::prelude::*;
    use shale_rpc::Epoch;

    /// Range 7, `[a, m)`.
    fn range_a_to_m() -> RangeDescriptor {
        RangeDescriptor {
            id: 7,
            start_key: Bytes::from_static(b"a"),
            end_key: Bytes::from_static(b"m"),
            epoch: Epoch {
                conf_ver: 2,
                version: 3,
            },
            replicas: Vec::new(),
        }
    }

    /// Headers cross wire versions 8 and 9 both ways: an old header (no freeze) reads
    /// here as thawed, and an old node (which reads only the fields it knows, ignoring
    /// the rest) reads a thawed header of this build. A frozen one never goes to it.
    #[test]
    fn snapshot_headers_read_across_wire_versions_8_and_9() {
        #[derive(Serialize, Deserialize, Debug, PartialEq)]
        struct V8 {
            range: RangeDescriptor,
            pairs: u64,
            bytes: u64,
        }
        let range = range_a_to_m();
        let old = V8 {
            range: range.clone(),
            pairs: 5,
            bytes: 99,
        };
        let read = SnapshotHeader::decode(&postcard::to_allocvec(&old).unwrap()).unwrap();
        let thawed = SnapshotHeader {
            range,
            pairs: 5,
            bytes: 99,
            frozen: None,
        };
        assert_eq!(read, thawed);
        let bytes = postcard::to_allocvec(&thawed).unwrap();
        assert_eq!(postcard::from_bytes::<V8>(&bytes).unwrap(), old);
        let frozen = SnapshotHeader {
            frozen: Some(MergeTarget {
                range_id: 3,
                epoch: Epoch {
                    conf_ver: 1,
                    version: 4,
                },
            }),
            ..thawed
        };
        let bytes = postcard::to_allocvec(&frozen).unwrap();
        assert_eq!(SnapshotHeader::decode(&bytes).unwrap(), frozen);
        // A cut header of this build is no old one.
        assert!(SnapshotHeader::decode(&bytes[..bytes.len() - 3]).is_err());
    }

    /// A build reads the range as it stood when `spawn_build` returned, though the
    /// writes that follow (as the loop's next rounds would make) land before it reads:
    /// it is held until they are in.
    #[test]
    fn a_build_sees_the_range_as_it_was_when_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Arc::new(Engine::open(dir.path(), &EngineConfig::default()).unwrap());
        let write = |puts: &[(&str, &str)], deletes: &[&str]| {
            let mut batch = engine.batch();
            for (k, v) in puts {
                batch.put(Cf::Data, k.as_bytes(), v.as_bytes());
            }
            for k in deletes {
                batch.delete(Cf::Data, k.as_bytes());
            }
            engine.write(batch, Durability::NoWal).unwrap();
        };
        write(
            &[("a1", "old"), ("b2", "old"), ("z9", "another range")],
            &[],
        );
        let range = range_a_to_m();
        let mut conf_state = ConfState::default();
        conf_state.set_voters(vec![1, 2, 3]);
        let job = BuildJob {
            range: range.clone(),
            index: 42,
            term: 6,
            conf_state,
            frozen: None,
        };
        let faults = Arc::new(Faults::default());
        faults.hold_snapshot_builds(true);
        let (tx, rx) = std::sync::mpsc::channel();
        spawn_build(
            "snapshot-test".into(),
            engine.clone(),
            faults.clone(),
            job,
            move |id, result| tx.send((id, result)).unwrap(),
        )
        .unwrap();
        write(&[("a1", "new"), ("c3", "new")], &["b2"]);
        faults.hold_snapshot_builds(false);
        let (id, result) = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        let (snapshot, built) = result.unwrap();
        assert_eq!(id, 7);
        let meta = snapshot.get_metadata();
        assert_eq!((meta.index, meta.term), (42, 6));
        assert_eq!((built.index, built.term), (42, 6));
        assert_eq!(meta.get_conf_state().voters, vec![1, 2, 3]);
        let header = SnapshotHeader::decode(&snapshot.data).unwrap();
        assert_eq!(header.range, range);
        assert_eq!((header.pairs, header.bytes), (2, 10));
        let pairs: Vec<(Bytes, Bytes)> = (0..built.batches())
            .flat_map(|i| {
                postcard::from_bytes::<Vec<(Bytes, Bytes)>>(&built.batch(i).unwrap()).unwrap()
            })
            .collect();
        let b = |s: &'static str| Bytes::from_static(s.as_bytes());
        assert_eq!(
            pairs,
            vec![(b("a1"), b("old")), (b("b2"), b("old"))],
            "the range as it was when the build started, nothing beyond its end"
        );
        assert_eq!(std::fs::read_dir(engine.snapshot_dir()).unwrap().count(), 1);
        drop(built);
        assert_eq!(
            std::fs::read_dir(engine.snapshot_dir()).unwrap().count(),
            0,
            "the file goes with the last holder"
        );
    }

    /// A range `id` over every key.
    fn whole_key_space(id: RangeId) -> RangeDescriptor {
        RangeDescriptor {
            id,
            start_key: Bytes::new(),
            end_key: Bytes::new(),
            epoch: Epoch::default(),
            replicas: Vec::new(),
        }
    }

    /// A batch read back from a snapshot's file that does not match its crc32 is an
    /// error, not a chunk.
    #[test]
    fn a_batch_that_fails_its_crc_is_not_sent() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.out");
        let mut batcher = Batcher::create(path.clone(), 1, 1).unwrap();
        batcher.push(b"key", b"value").unwrap();
        let (_, built) = batcher.finish(whole_key_space(9), None).unwrap();
        assert!(built.batch(0).is_ok());
        let file = File::options().write(true).open(&path).unwrap();
        file.write_at(b"X", 3).unwrap();
        assert!(matches!(built.batch(0), Err(StorageError::Corruption(_))));
    }

    proptest! {
        /// Chunk 0 is the message with a header for data; the batches that follow give
        /// back every pair in order, each batch within the chunk size unless it is one
        /// pair bigger than that.
        #[test]
        fn a_transfer_carries_the_header_then_every_pair(
            sizes in proptest::collection::vec(0usize..(SNAPSHOT_CHUNK_BYTES + 100), 0..12),
        ) {
            use protobuf::Message as _;
            let pairs: Vec<(Bytes, Bytes)> = sizes
                .iter()
                .enumerate()
                .map(|(i, n)| (Bytes::from(format!("k{i:04}")), Bytes::from(vec![i as u8; *n])))
                .collect();
            let dir = tempfile::tempdir().unwrap();
            let mut batcher = Batcher::create(dir.path().join("s.out"), 40, 2).unwrap();
            for (k, v) in &pairs {
                batcher.push(k, v).unwrap();
            }
            let (header, built) = batcher.finish(whole_key_space(9), None).unwrap();
            let mut m = raft::eraftpb::Message::default();
            m.set_msg_type(raft::eraftpb::MessageType::MsgSnapshot);
            m.mut_snapshot().data = shale_rpc::codec::to_vec_sized(&header).unwrap().into();
            m.mut_snapshot().mut_metadata().index = 40;
            m.mut_snapshot().mut_metadata().term = 2;
            let built = Arc::new(built);
            let mut other = m.clone();
            other.mut_snapshot().mut_metadata().index = 41;
            prop_assert!(Transfer::new(1, 2, 9, 77, &other, built.clone()).is_err(), "another snapshot's file");

            let t = Transfer::new(1, 2, 9, 77, &m, built).unwrap();
            let chunks: Vec<SnapshotChunk> = (0..t.chunks()).map(|i| t.chunk(i).unwrap()).collect();
            prop_assert_eq!(chunks.len() == 1, pairs.is_empty());
            for (i, c) in chunks.iter().enumerate() {
                prop_assert_eq!((c.seq as usize, c.last), (i, i + 1 == chunks.len()));
                prop_assert_eq!((c.from_store, c.to_store, c.range_id, c.transfer_id), (1, 2, 9, 77));
            }
            let m = raft::eraftpb::Message::parse_from_bytes(&chunks[0].data).unwrap();
            prop_assert_eq!(m.get_snapshot().get_metadata().index, 40);
            let header = SnapshotHeader::decode(&m.get_snapshot().data).unwrap();
            prop_assert_eq!(header.range.id, 9);
            prop_assert_eq!(header.pairs, pairs.len() as u64);
            prop_assert_eq!(header.bytes, pairs.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum::<u64>());
            let mut got = Vec::new();
            for c in &chunks[1..] {
                let batch: Vec<(Bytes, Bytes)> = postcard::from_bytes(&c.data).unwrap();
                let bytes: usize = batch.iter().map(|(k, v)| k.len() + v.len()).sum();
                prop_assert!(!batch.is_empty());
                prop_assert!(bytes <= SNAPSHOT_CHUNK_BYTES || batch.len() == 1);
                got.extend(batch);
            }
            prop_assert_eq!(got, pairs);
        }
    }
}
