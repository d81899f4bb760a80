//! `shale load --ingest`: the bulk-import fast path. Objects are laid out here exactly
//! as a gateway would store them (chunks, then metadata records), sorted, and sent to
//! the ranges as ingests: each replica writes the pairs as SST files and ingests them
//! when the Raft command applies (large chunks one file each, as a gateway stages them).
//! No HTTP, no per-object Raft write, no memtable or compaction of small files on the
//! stores.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use md5::{Digest, Md5};
use shale_gateway::layout::{self, Body, ObjectMeta, Segment, CHUNK_BYTES, INLINE_BYTES_MAX};
use shale_gateway::objects::{now_ms, ObjectStore, KEY_BYTES_MAX, OBJECT_BYTES_MAX};
use shale_rpc::client::KvClient;
use tokio::io::AsyncReadExt;

use crate::load::{generated_body, hex, Item, Progress};
use crate::md5_lanes::md5_each;

/// Body bytes gathered into one batch of ingests (chunks first, then metadata); a file
/// this large or larger is sent on its own, a window at a time.
const BATCH_BYTES: usize = 64 << 20;
const _: () = assert!(
    BATCH_BYTES.is_multiple_of(CHUNK_BYTES),
    "windows hold whole chunks"
);
/// Batches in flight at once (memory: about twice this many batches; a 2.6 GB load of
/// 64 KiB objects peaks at ~350 MB resident). Each batch waits on syncs of its staged
/// files and ingests; four keep the stores busier than two (~10% more MB/s here).
const BATCHES_IN_FLIGHT: usize = 4;

/// One object laid out: its chunk pairs and its metadata record.
struct Laid {
    label: String,
    chunks: Vec<(Bytes, Bytes)>,
    record: (Bytes, Bytes),
    size: u64,
}

/// Objects whose body versions are chosen at once, at most this many bytes of them: they
/// are then loaded in the order of their small chunks' keys (see [`plan`]). Chunk keys
/// are hashed, so the files of the next window overlap this one's and land above the
/// bottom level, to be compacted into it later: the larger the window, the less of a
/// load is written twice. Their versions carry the time the window was planned: at
/// 10 MB/s a window's last chunks land within an hour of it, far inside the orphan-chunk
/// age of a day. The plan holds a version and a few keys per object, not their bytes.
const WINDOW_BYTES: u64 = 32 << 30;

/// How `shale load --ingest` shapes its work.
#[derive(Debug, Clone, Copy)]
pub struct IngestShape {
    /// The size of generated objects.
    pub size: usize,
    /// Batches in flight, at most [`BATCHES_IN_FLIGHT`].
    pub concurrency: usize,
    /// Before each window, ranges are cut so that none would pass this many bytes with
    /// the window's keys in it: cut before the load rather than split under it (a split
    /// in the middle of an ingest refuses its staged files, and they are sent again).
    /// Below the cluster's `split.range-size-bytes-max`, so they are not split again.
    pub range_bytes: u64,
}

/// An object of the load, its body version chosen ahead.
struct Planned {
    item: Item,
    /// The length it is expected to have, if known.
    len: Option<u64>,
    version: u128,
}

/// Chooses body versions for `window` (each with the length it is expected to have) and
/// orders it so that batches of its small chunks are ingested in ascending key order.
/// Chunk keys are hash-spread, so batches taken in list order would each span the whole
/// chunk key space: every ingested file but the first would then overlap earlier ones,
/// land in L0 and be compacted again with all of them. In key order, each file lies
/// above the ones before and goes straight to the bottom level. Objects without a small
/// chunk (inline bodies, whose records hold them, or bodies of large chunks only, which
/// are ingested one file per chunk anyway) come first, in list order.
fn plan(window: Vec<(Item, Option<u64>)>, now_ms: u64) -> Vec<Planned> {
    let mut keyed: Vec<(Option<Bytes>, Planned)> = window
        .into_iter()
        .map(|(item, len)| {
            let version = layout::new_version(now_ms);
            let key = len.and_then(|len| small_chunk_key(len, version));
            (key, Planned { item, len, version })
        })
        .collect();
    // Stable: the unkeyed (`None` sorts first) keep their order.
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    keyed.into_iter().map(|(_, p)| p).collect()
}

/// The keys loading `planned` into `bucket` writes, ascending, each with the bytes it
/// holds: chunks, and the records of inline bodies (which hold them). Bodies of unknown
/// length are left out.
fn planned_keys(bucket: &str, planned: &[Planned]) -> Vec<(Bytes, u64)> {
    let mut keys: Vec<(Bytes, u64)> = Vec::new();
    for p in planned {
        let Some(len) = p.len else { continue };
        if len <= INLINE_BYTES_MAX as u64 {
            keys.push((layout::object_key(bucket, p.item.key()), len));
            continue;
        }
        let run = chunk_run(len, p.version);
        keys.extend((0..run.count).map(|i| {
            let key = layout::chunk_key(run.version, i, run.chunk_is_large(i));
            (key, run.chunk_len(i))
        }));
    }
    keys.sort_unstable();
    keys
}

/// Where to cut ranges before writing `keys` (ascending, with their bytes) so that no
/// range ends up past `share` bytes. `ranges` are the ranges there are, by start key
/// ascending with the bytes each holds; the first starts at the empty key. A range cut
/// in `n` is cut at the keys that share its new bytes out evenly, as its old bytes are
/// taken to be spread like them (chunk keys are hashed).
fn split_points(ranges: &[(Bytes, u64)], keys: &[(Bytes, u64)], share: u64) -> Vec<Bytes> {
    let mut points = Vec::new();
    let mut rest = keys;
    for (i, (_, held)) in ranges.iter().enumerate() {
        let inside = match ranges.get(i + 1) {
            Some((next, _)) => rest.partition_point(|(k, _)| k < next),
            None => rest.len(),
        };
        let (here, after) = rest.split_at(inside);
        rest = after;
        let new: u64 = here.iter().map(|(_, len)| len).sum();
        if new == 0 {
            continue;
        }
        let pieces = (held + new).div_ceil(share.max(1));
        let (mut before, mut cut) = (0, 1);
        for (j, (key, len)) in here.iter().enumerate() {
            // Cut before this key once the bytes before it reach the next share.
            let reached = (before * pieces / new).min(pieces - 1);
            if j > 0 && reached >= cut {
                points.push(key.clone());
                cut = reached + 1;
            }
            before += len;
        }
    }
    points
}

/// Every range by start key with the bytes it holds, as placement last heard; without
/// placement, one range of unknown size (the cuts then count only the load's bytes).
async fn ranges_held(kv: &KvClient) -> Vec<(Bytes, u64)> {
    let routes = match kv.placement() {
        Some(placement) => crate::ctl::all_routes(placement).await,
        None => Ok(Vec::new()),
    };
    match routes {
        Ok(routes) if !routes.is_empty() => routes
            .into_iter()
            .map(|r| (r.range.start_key, r.size_bytes))
            .collect(),
        Ok(_) => vec![(Bytes::new(), 0)],
        Err(e) => {
            tracing::debug!(error = %e, "no range sizes; pre-split counts the load only");
            vec![(Bytes::new(), 0)]
        }
    }
}

/// Cuts ranges at `points` (ascending, none a range's start as the cuts were planned), in
/// the rounds of [`split_rounds`], each round's splits at once. A cut that fails (say, a
/// range split there meanwhile) is left to the stores' own size-based splits: it costs
/// speed, not data.
async fn presplit(kv: &Arc<KvClient>, points: &[Bytes]) {
    /// Splits sent at once.
    const SPLITS_IN_FLIGHT: usize = 16;
    let started = std::time::Instant::now();
    for round in split_rounds(points) {
        for group in round.chunks(SPLITS_IN_FLIGHT) {
            let mut set = tokio::task::JoinSet::new();
            for key in group {
                let (kv, key) = (kv.clone(), key.clone());
                set.spawn(async move { kv.split(key).await });
            }
            while let Some(done) = set.join_next().await {
                match done {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "pre-split failed; the range splits by size instead")
                    }
                    Err(e) => tracing::debug!(error = %e, "pre-split task failed"),
                }
            }
        }
    }
    tracing::debug!(
        points = points.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "pre-split"
    );
}

/// `points` (ascending) in rounds whose splits can run at once: the middle point first,
/// then the middles of the two halves, and so on. No two points of a round lie in one
/// range once the rounds before it are done, so a range cut at `n` points takes about
/// log2(n) round trips of splits instead of `n`, and each split is of a range that has
/// served (a range just cut off is split no sooner than the next round).
fn split_rounds(points: &[Bytes]) -> Vec<Vec<Bytes>> {
    let mut rounds = Vec::new();
    let mut spans = vec![points];
    while !spans.is_empty() {
        let mut round = Vec::new();
        let mut halves = Vec::new();
        for span in spans.into_iter().filter(|s| !s.is_empty()) {
            let mid = span.len() / 2;
            round.push(span[mid].clone());
            halves.extend([&span[..mid], &span[mid + 1..]]);
        }
        if !round.is_empty() {
            rounds.push(round);
        }
        spans = halves;
    }
    rounds
}

/// The key of the one small chunk (its last, under [`layout::LARGE_CHUNK_BYTES_MIN`]) a
/// body of `len` bytes stored as `version` has, if it has one.
fn small_chunk_key(len: u64, version: u128) -> Option<Bytes> {
    if len <= INLINE_BYTES_MAX as u64 {
        return None;
    }
    let run = chunk_run(len, version);
    let last = run.count - 1;
    (!run.chunk_is_large(last)).then(|| layout::chunk_key(version, last, false))
}

/// The chunks a body of `len` bytes (past inline) stored as `version` is cut into.
fn chunk_run(len: u64, version: u128) -> Segment {
    Segment {
        version,
        count: len.div_ceil(CHUNK_BYTES as u64) as u32,
        size: len,
        chunk_bytes: CHUNK_BYTES as u32,
    }
}

/// Objects read before their MD5s are taken side by side ([`md5_each`]), at most this
/// many, or until they pass [`GROUP_BYTES`].
const GROUP_OBJECTS: usize = 64;
const GROUP_BYTES: usize = 16 << 20;

/// Reads (or generates) an item's body.
async fn read_body(item: &Item, size: usize) -> anyhow::Result<Bytes> {
    let key = item.key();
    anyhow::ensure!(
        key.len() <= KEY_BYTES_MAX,
        "the key is {} bytes; S3 keys are at most {KEY_BYTES_MAX}",
        key.len()
    );
    Ok(match item {
        Item::File { path, .. } => {
            let mut file = tokio::fs::File::open(path).await.context("open file")?;
            let len = file.metadata().await.context("read file metadata")?.len();
            read_exact(&mut file, len).await?
        }
        Item::Generated { index, .. } => generated_body(*index, size),
    })
}

/// Reads a group of planned objects (see [`GROUP_OBJECTS`]) and lays out each as the
/// gateway would; `Ok(None)` for one whose same size and ETag are there already.
async fn lay_out_group(
    bucket: &str,
    group: &[Planned],
    size: usize,
    existing: &HashMap<String, (u64, String)>,
) -> Vec<anyhow::Result<Option<Laid>>> {
    let mut bodies = Vec::with_capacity(group.len());
    for p in group {
        bodies.push(read_body(&p.item, size).await);
    }
    let read: Vec<&[u8]> = bodies.iter().flatten().map(|b| &b[..]).collect();
    let mut etags = md5_each(&read).into_iter().map(|d| hex(&d));
    group
        .iter()
        .zip(bodies)
        .map(|(p, body)| {
            let data = body?;
            let etag = etags.next().expect("a digest for every body read");
            Ok(lay_out(bucket, &p.item, p.version, data, etag, existing))
        })
        .collect()
}

/// Lays out `data` as the gateway would (inline up to 64 KiB, else 4 MiB crc-sealed
/// chunks of body `version`); `None` if the same size and ETag are there.
fn lay_out(
    bucket: &str,
    item: &Item,
    version: u128,
    data: Bytes,
    etag: String,
    existing: &HashMap<String, (u64, String)>,
) -> Option<Laid> {
    let key = item.key();
    if existing.get(key) == Some(&(data.len() as u64, etag.clone())) {
        return None;
    }
    let (body, chunks) = if data.len() <= INLINE_BYTES_MAX {
        (Body::Inline(data.clone()), Vec::new())
    } else {
        let chunks: Vec<(Bytes, Bytes)> = data
            .chunks(CHUNK_BYTES)
            .enumerate()
            .map(|(i, c)| {
                let key = layout::chunk_key(version, i as u32, layout::is_large_chunk(c.len()));
                (key, layout::seal_chunk(c))
            })
            .collect();
        let count = chunks.len() as u32;
        let chunk_bytes = CHUNK_BYTES as u32;
        let body = Body::Chunks {
            version,
            count,
            chunk_bytes,
        };
        (body, chunks)
    };
    let meta = ObjectMeta {
        size: data.len() as u64,
        etag,
        content_type: None,
        last_modified_ms: now_ms(),
        user_metadata: Vec::new(),
        body,
    };
    Some(Laid {
        label: item.label(),
        chunks,
        record: (layout::object_key(bucket, key), Bytes::from(meta.encode())),
        size: data.len() as u64,
    })
}

/// The next `len` bytes of `file`; a file that ends sooner is an error.
async fn read_exact(file: &mut tokio::fs::File, len: u64) -> anyhow::Result<Bytes> {
    let mut buf = BytesMut::with_capacity(len as usize);
    while (buf.len() as u64) < len {
        if file.read_buf(&mut buf).await.context("read file")? == 0 {
            anyhow::bail!("the file shrank while it was read");
        }
    }
    Ok(buf.freeze())
}

/// Loads one large file on its own: its MD5 first (to skip it if already there), then
/// its chunks a window at a time, then its metadata record. Returns its size, or `None`
/// if skipped.
async fn load_large(
    kv: &Arc<KvClient>,
    bucket: &str,
    key: &str,
    path: &std::path::Path,
    len: u64,
    existing: &HashMap<String, (u64, String)>,
) -> anyhow::Result<Option<u64>> {
    anyhow::ensure!(
        key.len() <= KEY_BYTES_MAX,
        "the key is {} bytes; S3 keys are at most {KEY_BYTES_MAX}",
        key.len()
    );
    anyhow::ensure!(
        len <= OBJECT_BYTES_MAX,
        "the file is {len} bytes; objects are at most {OBJECT_BYTES_MAX}"
    );
    let mut md5 = Md5::new();
    let mut file = tokio::fs::File::open(path).await.context("open file")?;
    let mut left = len;
    while left > 0 {
        let window = read_exact(&mut file, left.min(BATCH_BYTES as u64)).await?;
        md5.update(&window);
        left -= window.len() as u64;
    }
    let etag = hex(&md5.finalize());
    if existing.get(key) == Some(&(len, etag.clone())) {
        return Ok(None);
    }
    let version = layout::new_version(now_ms());
    let mut file = tokio::fs::File::open(path).await.context("open file")?;
    let (mut index, mut left) = (0u32, len);
    while left > 0 {
        let window = read_exact(&mut file, left.min(BATCH_BYTES as u64)).await?;
        left -= window.len() as u64;
        let mut pairs: Vec<(Bytes, Bytes)> = window
            .chunks(CHUNK_BYTES)
            .map(|c| {
                index += 1;
                let key = layout::chunk_key(version, index - 1, layout::is_large_chunk(c.len()));
                (key, layout::seal_chunk(c))
            })
            .collect();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        ingest_chunks(kv, &pairs).await.context("ingest chunks")?;
    }
    let meta = ObjectMeta {
        size: len,
        etag,
        content_type: None,
        last_modified_ms: now_ms(),
        user_metadata: Vec::new(),
        body: Body::Chunks {
            version,
            count: index,
            chunk_bytes: CHUNK_BYTES as u32,
        },
    };
    let record = (layout::object_key(bucket, key), Bytes::from(meta.encode()));
    kv.ingest(&[record])
        .await
        .context("ingest the object record")?;
    Ok(Some(len))
}

/// The size and ETag of every object under `prefix`, to skip what is already there.
async fn existing_objects(
    kv: &KvClient,
    bucket: &str,
    prefix: &str,
) -> anyhow::Result<HashMap<String, (u64, String)>> {
    let (start, end) = layout::object_bounds(bucket, prefix);
    let pairs = kv.scan_all(start, end, 1000).await?;
    Ok(pairs
        .iter()
        .filter_map(|(k, v)| {
            let key = layout::key_of_object(bucket, k)?;
            let meta = ObjectMeta::decode(v).ok()?;
            Some((key.to_string(), (meta.size, meta.etag)))
        })
        .collect())
}

/// Sends one batch: every chunk, then every metadata record (so no object is visible
/// before its bytes), each sorted and cut at range boundaries by the client.
async fn ingest_batch(kv: &Arc<KvClient>, batch: Vec<Laid>, progress: &Progress) {
    let mut chunks: Vec<(Bytes, Bytes)> = batch.iter().flat_map(|l| l.chunks.clone()).collect();
    chunks.sort_by(|a, b| a.0.cmp(&b.0));
    let mut records: Vec<(Bytes, Bytes)> = batch.iter().map(|l| l.record.clone()).collect();
    records.sort_by(|a, b| a.0.cmp(&b.0));
    let result = async {
        ingest_chunks(kv, &chunks).await.context("ingest chunks")?;
        ingest_parallel(kv, &records)
            .await
            .context("ingest object records")
    }
    .await;
    match result {
        Ok(()) => {
            progress
                .uploaded
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            progress
                .bytes
                .fetch_add(batch.iter().map(|l| l.size).sum::<u64>(), Ordering::Relaxed);
        }
        Err(e) => {
            for l in batch {
                progress.fail(l.label, &e);
            }
        }
    }
}

/// Ingests sorted chunk pairs. Large chunks are written one file each, the way a gateway
/// writes them ([`shale_gateway::write_chunk`]: staged, or through the Raft log when a
/// replica's store cannot stage): a file of many hash-spread chunks would span other
/// large chunks' keys, and RocksDB would then place it above them and compact it again.
/// Small chunks are cut and ingested in pieces.
async fn ingest_chunks(kv: &Arc<KvClient>, pairs: &[(Bytes, Bytes)]) -> anyhow::Result<()> {
    /// Large chunks staged at once.
    const STAGED_IN_FLIGHT: usize = 8;
    let (large, small): (Vec<_>, Vec<_>) = pairs
        .iter()
        .cloned()
        .partition(|(k, _)| layout::is_large_chunk_key(k));
    let mut set = tokio::task::JoinSet::new();
    for (key, value) in large {
        if set.len() >= STAGED_IN_FLIGHT {
            if let Some(done) = set.join_next().await {
                done??;
            }
        }
        let kv = kv.clone();
        set.spawn(async move { shale_gateway::write_chunk(&kv, key, value, true).await });
    }
    while let Some(done) = set.join_next().await {
        done??;
    }
    ingest_parallel(kv, &small).await
}

/// Ingests sorted `pairs` as a few contiguous slices at once (chunk keys spread over
/// every range, so the slices mostly reach different ranges).
async fn ingest_parallel(kv: &Arc<KvClient>, pairs: &[(Bytes, Bytes)]) -> anyhow::Result<()> {
    const SLICES: usize = 8;
    let per = pairs.len().div_ceil(SLICES).max(1);
    let mut set = tokio::task::JoinSet::new();
    for slice in pairs.chunks(per) {
        let (kv, slice) = (kv.clone(), slice.to_vec());
        set.spawn(async move { kv.ingest(&slice).await });
    }
    while let Some(done) = set.join_next().await {
        done??;
    }
    Ok(())
}

/// Loads `items` into `bucket` (created if missing) through `kv`, `concurrency` batches
/// at a time.
pub async fn load(
    kv: Arc<KvClient>,
    bucket: &str,
    prefix: &str,
    items: Vec<Item>,
    shape: IngestShape,
    progress: Arc<Progress>,
) -> anyhow::Result<()> {
    let IngestShape {
        size,
        concurrency,
        range_bytes,
    } = shape;
    let objects = ObjectStore::new(kv.clone());
    if objects.bucket(bucket).await?.is_none() {
        objects
            .create_bucket(bucket, false)
            .await
            .context("create the bucket")?;
    }
    let existing = existing_objects(&kv, bucket, prefix).await?;
    let slots = Arc::new(tokio::sync::Semaphore::new(
        concurrency.clamp(1, BATCHES_IN_FLIGHT),
    ));
    let mut tasks = Vec::new();
    let (mut batch, mut batch_bytes) = (Vec::new(), 0usize);
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        let (mut window, mut window_bytes) = (Vec::new(), 0u64);
        while window_bytes < WINDOW_BYTES {
            let Some(item) = items.next() else { break };
            let len = match &item {
                Item::File { path, .. } => tokio::fs::metadata(path).await.ok().map(|m| m.len()),
                Item::Generated { .. } => Some(size as u64),
            };
            if let (Some(len), Item::File { path, key }) = (len, &item) {
                if len >= BATCH_BYTES as u64 {
                    let outcome = load_large(&kv, bucket, key, path, len, &existing).await;
                    progress.record(|| item.label(), outcome);
                    continue;
                }
            }
            window_bytes += len.unwrap_or(0);
            window.push((item, len));
        }
        let planned = plan(window, now_ms());
        let keys = planned_keys(bucket, &planned);
        presplit(
            &kv,
            &split_points(&ranges_held(&kv).await, &keys, range_bytes),
        )
        .await;
        for group in groups(&planned) {
            for (p, laid) in group
                .iter()
                .zip(lay_out_group(bucket, group, size, &existing).await)
            {
                match laid {
                    Ok(Some(laid)) => {
                        batch_bytes += laid.size as usize + laid.record.1.len();
                        batch.push(laid);
                    }
                    Ok(None) => progress.record(String::new, Ok(None)),
                    Err(e) => progress.fail(p.item.label(), &e),
                }
                if batch_bytes >= BATCH_BYTES {
                    tasks.push(send(&kv, &slots, std::mem::take(&mut batch), &progress).await?);
                    batch_bytes = 0;
                }
            }
        }
    }
    if !batch.is_empty() {
        tasks.push(send(&kv, &slots, batch, &progress).await?);
    }
    for t in tasks {
        t.await?;
    }
    Ok(())
}

/// `planned` cut into groups of at most [`GROUP_OBJECTS`] objects, each group ending once
/// its expected bytes reach [`GROUP_BYTES`].
fn groups(planned: &[Planned]) -> Vec<&[Planned]> {
    let mut groups = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    for (i, p) in planned.iter().enumerate() {
        bytes += p.len.unwrap_or(0);
        if i + 1 - start == GROUP_OBJECTS || bytes >= GROUP_BYTES as u64 {
            groups.push(&planned[start..=i]);
            (start, bytes) = (i + 1, 0);
        }
    }
    if start < planned.len() {
        groups.push(&planned[start..]);
    }
    groups
}

/// Starts sending `batch` once a slot is free.
async fn send(
    kv: &Arc<KvClient>,
    slots: &Arc<tokio::sync::Semaphore>,
    batch: Vec<Laid>,
    progress: &Arc<Progress>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let permit = slots.clone().acquire_owned().await?;
    let (kv, progress) = (kv.clone(), progress.clone());
    Ok(tokio::spawn(async move {
        let _permit = permit;
        ingest_batch(&kv, batch, &progress).await;
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_body_whose_last_chunk_is_small_has_a_small_chunk() {
        let v = 7u128 << 64;
        let mib = 1u64 << 20;
        assert_eq!(small_chunk_key(INLINE_BYTES_MAX as u64, v), None, "inline");
        assert_eq!(
            small_chunk_key(200 << 10, v),
            Some(layout::chunk_key(v, 0, false))
        );
        assert_eq!(small_chunk_key(4 * mib, v), None, "one large chunk");
        assert_eq!(
            small_chunk_key(5 * mib, v),
            None,
            "a 1 MiB last chunk is large"
        );
        assert_eq!(
            small_chunk_key(8 * mib + 100, v),
            Some(layout::chunk_key(v, 2, false))
        );
    }

    #[test]
    fn a_plan_keeps_bodies_without_small_chunks_first_and_orders_the_rest_by_chunk_key() {
        let item = |index: u64| Item::Generated {
            index,
            key: format!("k{index}"),
        };
        let lens = [200 << 10, 10, 300 << 10, 4 << 20, 100 << 10, 70 << 10, 20];
        let window = lens
            .iter()
            .enumerate()
            .map(|(i, len)| (item(i as u64), Some(*len)))
            .chain([(item(99), None)])
            .collect();
        let planned = plan(window, 1_000);
        let order: Vec<u64> = planned
            .iter()
            .map(|p| match p.item {
                Item::Generated { index, .. } => index,
                Item::File { .. } => unreachable!(),
            })
            .collect();
        assert_eq!(order[..4], [1, 3, 6, 99], "unkeyed first, in list order");
        let keys: Vec<Bytes> = planned[4..]
            .iter()
            .map(|p| {
                let Item::Generated { index, .. } = p.item else {
                    unreachable!()
                };
                small_chunk_key(lens[index as usize], p.version).expect("keyed")
            })
            .collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "ascending chunk keys");
        assert!(planned
            .iter()
            .all(|p| layout::version_time_ms(p.version) == 1_000));
    }

    fn mib_keys(lens_mib: &[u64]) -> Vec<(Bytes, u64)> {
        let keys = lens_mib.iter().enumerate();
        keys.map(|(i, len)| (Bytes::from(format!("k{i:03}")), len << 20))
            .collect()
    }

    #[test]
    fn an_empty_cluster_is_cut_every_presplit_share_of_the_load() {
        let empty = [(Bytes::new(), 0)];
        let keys = mib_keys(&[32; 10]);
        let points = split_points(&empty, &keys, 64 << 20);
        let want: Vec<Bytes> = [2, 4, 6, 8].map(|i| keys[i].0.clone()).to_vec();
        assert_eq!(points, want, "320 MiB in five 64 MiB ranges");
        assert!(
            split_points(&empty, &mib_keys(&[1; 60]), 64 << 20).is_empty(),
            "60 MiB fits"
        );
        assert!(split_points(&empty, &[], 64 << 20).is_empty());
    }

    #[test]
    fn a_range_already_holding_data_is_cut_so_that_no_piece_passes_the_share() {
        let keys = mib_keys(&[8; 12]);
        // Three ranges: [.., k004) empty, [k004, k008) holding 100 MiB, [k008, ..) full.
        let ranges = [
            (Bytes::new(), 0),
            (keys[4].0.clone(), 100 << 20),
            (keys[8].0.clone(), 200 << 20),
        ];
        let points = split_points(&ranges, &keys, 64 << 20);
        // 32 MiB new fits the first; 132 MiB is cut in three, each third of its new
        // 32 MiB starting past the share (k006, k007); 232 MiB in four (k009..k011).
        let want: Vec<Bytes> = [6, 7, 9, 10, 11].map(|i| keys[i].0.clone()).to_vec();
        assert_eq!(points, want);
        assert!(
            points.windows(2).all(|w| w[0] < w[1]),
            "ascending, no repeats"
        );
        assert!(
            points
                .iter()
                .all(|p| ranges.iter().all(|(start, _)| start != p)),
            "never at a start a range has already"
        );
    }

    #[test]
    fn split_rounds_take_every_point_once_and_never_two_in_one_range() {
        for n in [0usize, 1, 2, 3, 7, 8, 39, 100] {
            let points: Vec<Bytes> = (0..n).map(|i| Bytes::from(format!("p{i:03}"))).collect();
            let rounds = split_rounds(&points);
            let mut all: Vec<Bytes> = rounds.iter().flatten().cloned().collect();
            all.sort();
            assert_eq!(all, points, "{n} points: each exactly once");
            let depth = (usize::BITS - n.leading_zeros()) as usize;
            assert_eq!(rounds.len(), depth, "{n} points in log2 rounds");
            let mut done: Vec<Bytes> = Vec::new();
            for round in &rounds {
                let mut keys = round.clone();
                keys.sort();
                for pair in keys.windows(2) {
                    assert!(
                        done.iter().any(|d| pair[0] < *d && *d <= pair[1]),
                        "{n} points: {:?} and {:?} split one range at once",
                        pair[0],
                        pair[1]
                    );
                }
                done.extend(round.iter().cloned());
            }
        }
    }

    #[test]
    fn a_range_holding_data_but_getting_none_is_left_to_its_own_split() {
        let keys = mib_keys(&[0, 0, 0]);
        assert!(split_points(&[(Bytes::new(), 500 << 20)], &keys, 64 << 20).is_empty());
    }
}
