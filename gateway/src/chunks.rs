//! Object bodies as chunks: writing a body's chunks a few at a time, and reading each
//! chunk from the nearest copy (a store in this process, a near store, then the range's
//! leader), checked by its crc32.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use shale_rpc::client::KvClient;
use shale_rpc::StoreId;
use tracing::{debug, info, warn};

use crate::error::GwError;
use crate::layout::{self, Segment};
use crate::objects::{hex, now_ms};

/// Chunk writes in flight per upload (memory: this many chunks).
const CHUNK_WRITES_IN_FLIGHT: usize = 1;

/// After a staged chunk write fails (a replica's store down or busy), chunks go through
/// the Raft log for this long before staging is tried again: a quorum suffices there.
const STAGING_PAUSE_MS: u64 = 2_000;

/// A chunk with a corrupt copy has its range checked at most this often per process.
const CHECK_ASK_EVERY: Duration = Duration::from_secs(60);
/// Most chunks remembered as lately checked (more corrupt chunks than this a minute
/// ask for no more checks: the first ones already name their replicas).
const CHECKS_REMEMBERED: usize = 256;

/// Chunk keys whose range this process asked to check lately, and when.
static CHECKS_ASKED: Mutex<Vec<(Bytes, Instant)>> = Mutex::new(Vec::new());

/// Until when (ms since the Unix epoch) chunks skip staging; 0 when they do not.
static STAGING_PAUSED_UNTIL_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Writes one sealed chunk. A large chunk is staged on every replica and ingested
/// ([`KvClient::put_staged`]) while staging works: its bytes reach each replica's disk
/// once, instead of three times (the Raft log, the memtable flush, a compaction), and
/// under its own prefix it is not compacted again. A small one (a small body, a body's
/// short last chunk) goes through the Raft log, which costs it less than staging three
/// files and a second round trip; so does a large one whose staging failed. A chunk key is
/// written once with one value, so a staged attempt that did land after all and the put
/// that follows it agree.
pub async fn write_chunk(
    kv: &KvClient,
    key: Bytes,
    sealed: Bytes,
    large: bool,
) -> Result<(), shale_rpc::client::ClientError> {
    use std::sync::atomic::Ordering::Relaxed;
    if large && STAGING_PAUSED_UNTIL_MS.load(Relaxed) <= now_ms() {
        match kv.put_staged(key.clone(), sealed.clone()).await {
            Ok(()) => {
                crate::metrics::METRICS.chunks_staged.inc();
                return Ok(());
            }
            Err(e) => {
                debug!(error = %e, "staged chunk write failed; writing through the log");
                if !is_route_churn(&e) {
                    STAGING_PAUSED_UNTIL_MS.store(now_ms() + STAGING_PAUSE_MS, Relaxed);
                }
            }
        }
    }
    kv.put(key, sealed).await
}

/// Whether a failed staged write failed only because the range moved under it (split,
/// new leader) rather than because a replica's store cannot stage: the next chunk
/// may well stage, so staging is not paused.
fn is_route_churn(e: &shale_rpc::client::ClientError) -> bool {
    use shale_rpc::KvError;
    matches!(
        e,
        shale_rpc::client::ClientError::Kv(
            KvError::EpochNotMatch { .. }
                | KvError::NotLeader { .. }
                | KvError::KeyNotInRange { .. }
                | KvError::RangeNotFound { .. }
                | KvError::ProposalDropped
        )
    )
}

/// Stores' data in this very process (`shale dev`, benchmarks), read directly by key.
/// Chunk keys are written once and never changed, so any copy found is the chunk (its
/// crc32 is still checked); a copy not found (a replica behind, or none here) is read
/// through the cluster as usual. Bulk bytes then cross neither QUIC nor TLS.
pub trait LocalChunks: Send + Sync {
    /// The stored chunk at `key`, if a store in this process holds it.
    fn get(&self, key: &[u8]) -> Option<Bytes>;
}

/// Where chunks are read before asking a range's leader: stores in this process, then
/// stores close by (on the same host, say). Chunks are written once, so any replica's
/// copy is the chunk once the object's metadata has been read linearizably.
#[derive(Clone, Default)]
pub(crate) struct NearChunks {
    pub(crate) local: Option<Arc<dyn LocalChunks>>,
    pub(crate) stores: Arc<[StoreId]>,
}

/// One piece of a read: a slice of an inline body or of one chunk.
pub(crate) enum Piece {
    Inline(Bytes),
    Chunk {
        version: u128,
        index: u32,
        /// The chunk is a large one (which says where its key is).
        large: bool,
        from: usize,
        to: usize,
    },
}

/// The chunk slices that make up `[start, end)` of a chunked body.
pub(crate) fn chunk_pieces(segments: &[Segment], start: u64, end: u64) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut seg_start = 0u64;
    for seg in segments {
        let seg_end = seg_start + seg.size;
        let (from, to) = (start.max(seg_start), end.min(seg_end));
        let mut pos = from;
        while pos < to {
            let chunk_bytes = u64::from(seg.chunk_bytes.max(1));
            let index = ((pos - seg_start) / chunk_bytes) as u32;
            let chunk_start = seg_start + u64::from(index) * chunk_bytes;
            let chunk_end = (chunk_start + chunk_bytes).min(to);
            pieces.push(Piece::Chunk {
                version: seg.version,
                index,
                large: seg.chunk_is_large(index),
                from: (pos - chunk_start) as usize,
                to: (chunk_end - chunk_start) as usize,
            });
            pos = chunk_end;
        }
        seg_start = seg_end;
    }
    pieces
}

/// Writes the chunks of one body version, a few at a time, in order of index.
pub(crate) struct ChunkWriter {
    kv: Arc<KvClient>,
    pub(crate) version: u128,
    next: u32,
    in_flight: std::collections::VecDeque<
        tokio::task::JoinHandle<Result<(), shale_rpc::client::ClientError>>,
    >,
}

impl ChunkWriter {
    pub(crate) fn new(kv: Arc<KvClient>, version: u128) -> Self {
        ChunkWriter {
            kv,
            version,
            next: 0,
            in_flight: Default::default(),
        }
    }

    /// Chunks started so far (written, or being written).
    pub(crate) fn started(&self) -> u32 {
        self.next
    }

    /// Starts writing `chunk` (sealed in place: give it room for the checksum).
    pub(crate) async fn push(&mut self, chunk: bytes::BytesMut) -> Result<(), GwError> {
        if self.in_flight.len() >= CHUNK_WRITES_IN_FLIGHT {
            self.wait_one().await?;
        }
        crate::metrics::METRICS.chunks_written.inc();
        let large = layout::is_large_chunk(chunk.len());
        let (kv, key) = (
            self.kv.clone(),
            layout::chunk_key(self.version, self.next, large),
        );
        let sealed = layout::seal_chunk_in_place(chunk);
        self.in_flight.push_back(tokio::spawn(async move {
            write_chunk(&kv, key, sealed, large).await
        }));
        self.next += 1;
        Ok(())
    }

    async fn wait_one(&mut self) -> Result<(), GwError> {
        let Some(handle) = self.in_flight.pop_front() else {
            return Ok(());
        };
        match handle.await {
            Ok(result) => result.map_err(GwError::from),
            Err(e) => Err(GwError::Corrupt(format!("chunk write task failed: {e}"))),
        }
    }

    /// Waits for every chunk; the first failure, if any (all are waited for regardless).
    pub(crate) async fn finish(&mut self) -> Result<(), GwError> {
        let mut first = Ok(());
        while !self.in_flight.is_empty() {
            if let Err(e) = self.wait_one().await {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}

impl NearChunks {
    /// The chunk at `key` from a store in this process or a near store, if one has a
    /// copy that passes its checksum.
    async fn get(&self, kv: &Arc<KvClient>, key: &Bytes) -> Option<Bytes> {
        if let Some(local) = self.local.clone() {
            let k = key.clone();
            let found = tokio::task::spawn_blocking(move || local.get(&k))
                .await
                .ok()
                .flatten();
            if let Some(data) = found.and_then(|stored| checked(kv, key, stored, "local")) {
                return Some(data);
            }
        }
        if self.stores.is_empty() {
            return None;
        }
        let replicas = kv.replica_stores(key).await.ok()?;
        for &store_id in self.stores.iter().filter(|s| replicas.contains(s)) {
            match kv.get_on_replica(key.clone(), store_id).await {
                Ok(Some(stored)) => {
                    if let Some(data) = checked(kv, key, stored, "near store") {
                        return Some(data);
                    }
                }
                // Not applied there yet, or the store is away: the leader has it.
                Ok(None) => {}
                Err(e) => {
                    debug!(chunk = %hex(key), store_id, error = %e, "near replica read failed")
                }
            }
        }
        None
    }
}

/// A stored chunk's bytes if its checksum holds; a bad copy is counted, logged and has
/// its range checked.
fn checked(kv: &Arc<KvClient>, key: &[u8], stored: Bytes, whose: &str) -> Option<Bytes> {
    match layout::open_chunk(stored) {
        Ok(data) => Some(data),
        Err(why) => {
            crate::metrics::METRICS.corrupt_chunks.inc();
            warn!(chunk = %hex(key), error = %why, "a {whose} copy of a chunk is corrupt; reading through the leader");
            check_range_of(kv, key);
            None
        }
    }
}

/// A copy of the chunk at `key` failed its checksum: asks for a consistency check of
/// its range (at most once a minute per chunk from this process), which names the
/// replica holding that copy diverged, so placement replaces it from a sound one.
fn check_range_of(kv: &Arc<KvClient>, key: &[u8]) {
    {
        let mut asked = CHECKS_ASKED.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        asked.retain(|(_, at)| now.duration_since(*at) < CHECK_ASK_EVERY);
        if asked.len() >= CHECKS_REMEMBERED || asked.iter().any(|(k, _)| k == key) {
            return;
        }
        asked.push((Bytes::copy_from_slice(key), now));
    }
    let (kv, key) = (kv.clone(), Bytes::copy_from_slice(key));
    tokio::spawn(async move {
        match kv.check_consistency(&key).await {
            Ok(o) if o.diverged.is_empty() => info!(chunk = %hex(&key), agreed = o.agreed,
                "a chunk copy was corrupt; its range's check names no diverged replica"),
            Ok(o) => warn!(chunk = %hex(&key), diverged_replicas = ?o.diverged,
                "a chunk copy was corrupt; its range's check names replicas diverged (placement replaces them)"),
            Err(e) => warn!(chunk = %hex(&key), error = %e,
                "a chunk copy was corrupt; checking its range failed"),
        }
    });
}

/// Reads one chunk: from a store in this process or a near store when one has it, else
/// through its range's leader. A copy that fails its checksum is reported and never
/// returned: the chunk is read from the other replicas' own copies instead (chunks are
/// written once, so any replica's copy is the chunk).
pub(crate) async fn fetch_chunk(
    kv: &Arc<KvClient>,
    near: &NearChunks,
    version: u128,
    index: u32,
    large: bool,
) -> Result<Bytes, String> {
    let key = layout::chunk_key(version, index, large);
    if let Some(data) = near.get(kv, &key).await {
        return Ok(data);
    }
    let (key, stored) = match kv.get(key.clone()).await {
        Ok(Some(stored)) => (key, stored),
        // Written before large chunks had their own prefix, perhaps.
        Ok(None) if large => {
            let legacy = layout::legacy_chunk_key(version, index);
            match kv.get(legacy.clone()).await {
                Ok(Some(stored)) => (legacy, stored),
                Ok(None) => return Err(format!("chunk {index} of the object is missing")),
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(None) => return Err(format!("chunk {index} of the object is missing")),
        Err(e) => return Err(e.to_string()),
    };
    let why = match layout::open_chunk(stored) {
        Ok(data) => return Ok(data),
        Err(why) => why,
    };
    crate::metrics::METRICS.corrupt_chunks.inc();
    warn!(chunk = %hex(&key), error = %why, "the leader's copy of a chunk is corrupt; reading another replica");
    check_range_of(kv, &key);
    let stores = kv.replica_stores(&key).await.map_err(|e| e.to_string())?;
    for store_id in stores {
        match kv.get_on_replica(key.clone(), store_id).await {
            Ok(Some(stored)) => match layout::open_chunk(stored) {
                Ok(data) => return Ok(data),
                Err(e) => warn!(chunk = %hex(&key), store_id, error = %e, "corrupt chunk copy"),
            },
            // Not applied there yet, or the store is away: try the next.
            Ok(None) => {}
            Err(e) => debug!(chunk = %hex(&key), store_id, error = %e, "replica read failed"),
        }
    }
    Err(format!(
        "chunk {index} of the object: no replica holds a healthy copy ({why})"
    ))
}
