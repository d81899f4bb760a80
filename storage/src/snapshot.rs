//! Range snapshots: what one holds (the range's descriptor and every pair of its data at
//! the snapshot's index), and reassembling one from the checksummed chunks it travels in.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use raft::eraftpb::{ConfState, Snapshot};
use serde::{Deserialize, Serialize};
use shale_rpc::{RangeDescriptor, RangeId, StoreId};

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
const ASSEMBLY_IDLE_MAX: Duration = Duration::from_secs(60);

/// The payload of a Raft snapshot of a range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotData {
    pub range: RangeDescriptor,
    #[serde(deserialize_with = "shale_rpc::shared::pairs")]
    pub pairs: Vec<(Bytes, Bytes)>,
}

impl SnapshotData {
    /// Decodes a snapshot's data; its pairs are slices of `data`, not copies.
    pub fn decode(data: &Bytes) -> Result<SnapshotData, StorageError> {
        Ok(shale_rpc::shared::decode(data)?)
    }

    /// Decodes only the range descriptor of a snapshot's data (it comes first).
    pub fn decode_range(data: &[u8]) -> Result<RangeDescriptor, StorageError> {
        Ok(postcard::take_from_bytes::<RangeDescriptor>(data)?.0)
    }
}

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
    done: impl FnOnce(RangeId, Result<Snapshot, StorageError>) + Send + 'static,
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
/// a Raft snapshot at `job.index`.
fn build(engine: &Engine, job: BuildJob, pinned: impl FnOnce()) -> Result<Snapshot, StorageError> {
    let started = Instant::now();
    let range = job.range;
    let mut pairs = Vec::new();
    let mut bytes = 0usize;
    engine.scan_pinned(
        Cf::Data,
        &range.start_key,
        &range.end_key,
        pinned,
        |k, v| {
            bytes += k.len() + v.len();
            pairs.push((Bytes::copy_from_slice(k), Bytes::copy_from_slice(v)));
            bytes <= SNAPSHOT_BYTES_MAX
        },
    )?;
    if bytes > SNAPSHOT_BYTES_MAX {
        return Err(StorageError::Engine(format!(
            "range {} holds more than {SNAPSHOT_BYTES_MAX} bytes; it must split before it can be snapshotted",
            range.id
        )));
    }
    let (range_id, count) = (range.id, pairs.len());
    let data = SnapshotData { range, pairs };
    let mut snapshot = Snapshot {
        data: shale_rpc::codec::to_vec_sized(&data)
            .expect("snapshot encodes")
            .into(),
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
        pairs = count,
        bytes,
        ms = started.elapsed().as_millis() as u64,
        "built snapshot"
    );
    Ok(snapshot)
}

/// One chunk of a snapshot message on the wire (each frame carries its own crc32).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotChunk {
    pub from_store: StoreId,
    pub to_store: StoreId,
    pub range_id: RangeId,
    /// Distinguishes transfers from the same store.
    pub transfer_id: u64,
    pub seq: u32,
    pub chunks: u32,
    /// Bytes of the whole Raft message the chunks make up.
    pub total_bytes: u64,
    pub data: Bytes,
}

/// The receiver's answer to one snapshot chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotAck {
    /// Taken; send the next chunk.
    Next,
    /// The last chunk: the whole snapshot was checked and handed to the store loop,
    /// ahead of any Raft message the sender sends after this answer.
    Taken,
    /// The receiver is taking as many transfers as it can: send the same snapshot again
    /// a little later (no chunk of it was kept).
    Busy,
    /// Not taken (malformed, out of order): the transfer is over and the sender's raft
    /// tries again later.
    Refused { reason: String },
}

struct Assembly {
    next_seq: u32,
    buf: BytesMut,
    touched: Instant,
}

/// Reassembles snapshot messages from their chunks, within bounds.
#[derive(Default)]
pub struct Assembler {
    open: HashMap<(StoreId, u64), Assembly>,
}

impl Assembler {
    /// Whether a new transfer would be refused now: as many are open as may be.
    pub fn is_full(&mut self) -> bool {
        self.open
            .retain(|_, a| a.touched.elapsed() < ASSEMBLY_IDLE_MAX);
        self.open.len() >= SNAPSHOTS_RECEIVING_MAX
    }

    /// Takes one chunk; returns the whole Raft message when this was its last chunk.
    pub fn add(&mut self, chunk: SnapshotChunk) -> Result<Option<(RangeId, Bytes)>, String> {
        self.open
            .retain(|_, a| a.touched.elapsed() < ASSEMBLY_IDLE_MAX);
        let key = (chunk.from_store, chunk.transfer_id);
        let total = chunk.total_bytes as usize;
        if total > SNAPSHOT_BYTES_MAX || chunk.chunks == 0 || chunk.seq >= chunk.chunks {
            self.open.remove(&key);
            return Err(format!(
                "bad snapshot chunk header for range {}",
                chunk.range_id
            ));
        }
        if chunk.seq == 0 {
            if self.open.len() >= SNAPSHOTS_RECEIVING_MAX {
                return Err(format!(
                    "already receiving {SNAPSHOTS_RECEIVING_MAX} snapshots"
                ));
            }
            self.open.insert(
                key,
                Assembly {
                    next_seq: 0,
                    buf: BytesMut::with_capacity(total.min(SNAPSHOT_CHUNK_BYTES * 4)),
                    touched: Instant::now(),
                },
            );
        }
        let Some(a) = self.open.get_mut(&key) else {
            return Err(format!(
                "snapshot chunk {} for an unknown transfer",
                chunk.seq
            ));
        };
        if chunk.seq != a.next_seq || a.buf.len() + chunk.data.len() > total {
            self.open.remove(&key);
            return Err("snapshot chunks out of order or past their total".into());
        }
        a.buf.extend_from_slice(&chunk.data);
        a.next_seq += 1;
        a.touched = Instant::now();
        if a.next_seq < chunk.chunks {
            return Ok(None);
        }
        let a = self.open.remove(&key).expect("present");
        if a.buf.len() != total {
            return Err(format!(
                "snapshot of {} bytes, header said {total}",
                a.buf.len()
            ));
        }
        Ok(Some((chunk.range_id, a.buf.freeze())))
    }
}

/// Cuts an encoded Raft message into chunk frames' payloads.
pub fn chunks(
    from_store: StoreId,
    to_store: StoreId,
    range_id: RangeId,
    transfer_id: u64,
    message: &Bytes,
) -> Vec<SnapshotChunk> {
    let n = message.len().div_ceil(SNAPSHOT_CHUNK_BYTES).max(1);
    (0..n)
        .map(|i| SnapshotChunk {
            from_store,
            to_store,
            range_id,
            transfer_id,
            seq: i as u32,
            chunks: n as u32,
            total_bytes: message.len() as u64,
            data: message.slice(
                i * SNAPSHOT_CHUNK_BYTES..((i + 1) * SNAPSHOT_CHUNK_BYTES).min(message.len()),
            ),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Durability, EngineConfig};
    use proptest::prelude::*;
    use shale_rpc::Epoch;

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
        let range = RangeDescriptor {
            id: 7,
            start_key: Bytes::from_static(b"a"),
            end_key: Bytes::from_static(b"m"),
            epoch: Epoch {
                conf_ver: 2,
                version: 3,
            },
            replicas: Vec::new(),
        };
        let mut conf_state = ConfState::default();
        conf_state.set_voters(vec![1, 2, 3]);
        let job = BuildJob {
            range: range.clone(),
            index: 42,
            term: 6,
            conf_state,
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
        let snapshot = result.unwrap();
        assert_eq!(id, 7);
        let meta = snapshot.get_metadata();
        assert_eq!((meta.index, meta.term), (42, 6));
        assert_eq!(meta.get_conf_state().voters, vec![1, 2, 3]);
        let data = SnapshotData::decode(&snapshot.data).unwrap();
        assert_eq!(data.range, range);
        let (base, len) = (snapshot.data.as_ptr() as usize, snapshot.data.len());
        assert!(
            data.pairs.iter().all(|(_, v)| {
                let at = v.as_ptr() as usize;
                at >= base && at + v.len() <= base + len
            }),
            "decoded pairs are slices of the snapshot's data, not copies"
        );
        let pairs: Vec<(&[u8], &[u8])> = data
            .pairs
            .iter()
            .map(|(k, v)| (k.as_ref(), v.as_ref()))
            .collect();
        assert_eq!(
            pairs,
            vec![(&b"a1"[..], &b"old"[..]), (&b"b2"[..], &b"old"[..])],
            "the range as it was when the build started, nothing beyond its end"
        );
    }

    proptest! {
        #[test]
        fn chunks_reassemble(len in 0usize..(3 * SNAPSHOT_CHUNK_BYTES + 7), seed in any::<u8>()) {
            let message = Bytes::from((0..len).map(|i| (i as u8).wrapping_add(seed)).collect::<Vec<_>>());
            let mut a = Assembler::default();
            let parts = chunks(1, 2, 9, 77, &message);
            let last = parts.len() - 1;
            for (i, c) in parts.into_iter().enumerate() {
                let out = a.add(c).unwrap();
                if i == last {
                    prop_assert_eq!(out, Some((9, message.clone())));
                } else {
                    prop_assert!(out.is_none());
                }
            }
        }
    }

    #[test]
    fn out_of_order_and_oversized_chunks_are_refused() {
        let message = Bytes::from(vec![1u8; SNAPSHOT_CHUNK_BYTES * 2]);
        let mut parts = chunks(1, 2, 9, 1, &message);
        let mut a = Assembler::default();
        let second = parts.pop().unwrap();
        assert!(a.add(second).is_err(), "a transfer must start at chunk 0");
        let mut c = chunks(1, 2, 9, 2, &message).remove(0);
        c.total_bytes = (SNAPSHOT_BYTES_MAX + 1) as u64;
        assert!(a.add(c).is_err());
    }
}
