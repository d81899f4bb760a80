//! Background collection: multipart uploads nobody finished, and chunks no object or
//! part points at (left by a gateway that died mid-upload, by a drop that failed, or
//! by two writers racing on one key).
//!
//! The chunk collector is a mark and sweep. It first reads every part record, then
//! every object record, keeping the body versions they name; then it walks the chunk
//! keys (keys only) and deletes those of versions it did not see that are older than
//! the orphan age. Parts are read before objects because completing an upload writes
//! the object before it deletes the part records, so a version moving from one to the
//! other is seen in at least one. A version created after the walk began is younger
//! than the age, and a body must be written within half the age (see
//! [`ObjectStore::with_body_deadline_ms`]), so a chunk whose object is still being
//! written is never taken.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::error::GwError;
use crate::layout::{self, Body, ObjectMeta, PartMeta};
use crate::metrics::METRICS;
use crate::objects::{now_ms, ObjectStore};

/// Keys read per page while marking and sweeping.
const PAGE: u32 = 1000;
/// Orphan chunks deleted at once.
const DELETES_IN_FLIGHT: usize = 8;

/// What one chunk sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Body versions some object or part points at.
    pub live_versions: usize,
    pub chunks_seen: u64,
    pub chunks_deleted: u64,
}

impl ObjectStore {
    /// Every body version an object or a part record points at.
    async fn live_versions(&self) -> Result<HashSet<u128>, GwError> {
        let mut live = HashSet::new();
        let (start, end) = layout::all_part_bounds();
        self.walk(start, end, |_, v| {
            let part = PartMeta::decode(v).map_err(GwError::Corrupt)?;
            live.insert(part.version);
            Ok(())
        })
        .await?;
        let (start, end) = layout::all_object_bounds();
        self.walk(start, end, |_, v| {
            let meta = ObjectMeta::decode(v).map_err(GwError::Corrupt)?;
            match &meta.body {
                Body::Inline(_) => {}
                Body::Chunks { version, .. } => {
                    live.insert(*version);
                }
                Body::Parts(parts) => live.extend(parts.iter().map(|p| p.version)),
            }
            Ok(())
        })
        .await?;
        Ok(live)
    }

    /// Calls `each` on every pair in `[start, end)`, a page at a time.
    async fn walk(
        &self,
        start: Bytes,
        end: Bytes,
        mut each: impl FnMut(&[u8], &[u8]) -> Result<(), GwError>,
    ) -> Result<(), GwError> {
        let mut next = start;
        loop {
            let page = self.kv().scan(next, end.clone(), PAGE).await?;
            for (k, v) in &page.pairs {
                each(k, v)?;
            }
            match page.resume_key {
                Some(k) if k < end => next = k,
                _ => return Ok(()),
            }
        }
    }

    /// One mark and sweep: deletes every chunk older than `age_ms` that no object or
    /// part points at.
    pub async fn sweep_orphan_chunks(&self, age_ms: u64) -> Result<Sweep, GwError> {
        let cutoff = now_ms().saturating_sub(age_ms);
        let live = self.live_versions().await?;
        let mut sweep = Sweep {
            live_versions: live.len(),
            ..Sweep::default()
        };
        for (start, end) in layout::chunk_bounds() {
            self.sweep_chunk_span(start, end, &live, cutoff, &mut sweep)
                .await?;
        }
        Ok(sweep)
    }

    /// The orphan sweep over the chunk keys in `[next, end)`.
    async fn sweep_chunk_span(
        &self,
        mut next: Bytes,
        end: Bytes,
        live: &HashSet<u128>,
        cutoff: u64,
        sweep: &mut Sweep,
    ) -> Result<(), GwError> {
        loop {
            let page = self.kv().scan_keys(next, end.clone(), PAGE).await?;
            sweep.chunks_seen += page.pairs.len() as u64;
            let orphans: Vec<Bytes> = page
                .pairs
                .into_iter()
                .map(|(k, _)| k)
                .filter(|k| {
                    layout::version_of_chunk(k)
                        .is_some_and(|v| !live.contains(&v) && layout::version_time_ms(v) < cutoff)
                })
                .collect();
            let kv = self.kv();
            let mut deletes = futures::stream::iter(orphans)
                .map(|k| kv.delete(k))
                .buffer_unordered(DELETES_IN_FLIGHT);
            while let Some(done) = deletes.next().await {
                done?;
                sweep.chunks_deleted += 1;
                METRICS.orphan_chunks_collected.inc();
            }
            match page.resume_key {
                Some(k) if k < end => next = k,
                _ => return Ok(()),
            }
        }
    }

    /// Aborts every multipart upload started before `cutoff_ms`; returns how many.
    pub async fn abort_uploads_before(&self, cutoff_ms: u64) -> Result<u64, GwError> {
        let mut aborted = 0;
        for (bucket, _) in self.list_buckets().await? {
            let Ok(uploads) = self.list_uploads(&bucket).await else {
                continue;
            };
            for (key, upload_id, _) in uploads
                .into_iter()
                .filter(|(_, _, started)| *started < cutoff_ms)
            {
                match self.abort_upload(&bucket, &key, &upload_id).await {
                    Ok(()) => {
                        aborted += 1;
                        METRICS.uploads_collected.inc();
                        info!(%bucket, %key, %upload_id, "aborted an abandoned upload");
                    }
                    Err(e) => debug!(%bucket, %key, error = %e, "upload GC: abort failed"),
                }
            }
        }
        Ok(aborted)
    }
}

/// When and what the collector collects.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Multipart uploads older than this are aborted.
    pub upload_age_ms: u64,
    pub upload_interval: Duration,
    /// Unreferenced chunks older than this are deleted.
    pub chunk_age_ms: u64,
    /// How often some gateway sweeps chunks (each gateway skips a sweep another
    /// gateway finished within this time).
    pub chunk_interval: Duration,
    /// How often some gateway applies lifecycle rules (likewise skipped when recent).
    pub lifecycle_interval: Duration,
}

/// Runs both collectors until `stopped` changes.
pub async fn run(objects: ObjectStore, schedule: Schedule, mut stopped: watch::Receiver<bool>) {
    let mut uploads = tokio::time::interval(schedule.upload_interval);
    let mut chunks = tokio::time::interval(schedule.chunk_interval);
    let mut lifecycles = tokio::time::interval(schedule.lifecycle_interval);
    // None runs at start: a gateway restarted in a loop must not sweep in a loop.
    uploads.tick().await;
    chunks.tick().await;
    lifecycles.tick().await;
    loop {
        tokio::select! {
            _ = uploads.tick() => {
                let cutoff = now_ms().saturating_sub(schedule.upload_age_ms);
                if let Err(e) = objects.abort_uploads_before(cutoff).await {
                    debug!(error = %e, "upload GC: cannot list uploads");
                }
            }
            _ = chunks.tick() => {
                if let Err(e) = sweep_unless_recent(&objects, &schedule).await {
                    warn!(error = %e, "chunk sweep failed; it runs again next interval");
                }
            }
            _ = lifecycles.tick() => {
                if let Err(e) = lifecycles_unless_recent(&objects, &schedule).await {
                    warn!(error = %e, "lifecycle sweep failed; it runs again next interval");
                }
            }
            _ = stopped.changed() => return,
        }
    }
}

/// Whether some gateway finished the sweep noted at `marker` within `interval`.
async fn swept_lately(
    objects: &ObjectStore,
    marker: Bytes,
    interval: Duration,
) -> Result<bool, GwError> {
    let last = objects
        .kv()
        .get(marker)
        .await?
        .and_then(|v| <[u8; 8]>::try_from(&v[..]).ok())
        .map_or(0, u64::from_be_bytes);
    Ok(now_ms().saturating_sub(last) < interval.as_millis() as u64)
}

/// Notes at `marker` that a sweep finished now.
async fn note_swept(objects: &ObjectStore, marker: Bytes) -> Result<(), GwError> {
    let now = Bytes::copy_from_slice(&now_ms().to_be_bytes());
    objects.kv().put(marker, now).await?;
    Ok(())
}

/// Applies lifecycle rules unless some gateway did within the interval.
async fn lifecycles_unless_recent(
    objects: &ObjectStore,
    schedule: &Schedule,
) -> Result<(), GwError> {
    let marker = layout::lifecycle_sweep_key();
    if swept_lately(objects, marker.clone(), schedule.lifecycle_interval).await? {
        return Ok(());
    }
    let swept = objects.sweep_lifecycles(now_ms()).await?;
    if swept != Default::default() {
        info!(
            objects = swept.objects_expired,
            uploads = swept.uploads_aborted,
            "lifecycle sweep expired objects"
        );
    }
    note_swept(objects, marker).await
}

/// Sweeps unless some gateway finished a sweep within the interval, and notes the end.
async fn sweep_unless_recent(objects: &ObjectStore, schedule: &Schedule) -> Result<(), GwError> {
    let marker = layout::chunk_sweep_key();
    if swept_lately(objects, marker.clone(), schedule.chunk_interval).await? {
        return Ok(());
    }
    let sweep = objects.sweep_orphan_chunks(schedule.chunk_age_ms).await?;
    info!(
        live_versions = sweep.live_versions,
        chunks = sweep.chunks_seen,
        deleted = sweep.chunks_deleted,
        "chunk sweep done"
    );
    note_swept(objects, marker).await
}
