//! Listing at scale: one page of LIST from a bucket of a million objects, beside the same
//! page from a bucket holding only that page (the baseline), in one run.
//!
//! The big bucket's object records are written straight through the KV client in
//! batches (as the gateway would write them, without bodies): filling it through S3 PUTs
//! would take far longer than the listing it is there to measure. The LISTs go through
//! the S3 endpoint like any client's.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use shale_gateway::layout::{object_key, Body, ObjectMeta};
use shale_gateway::objects::{now_ms, ObjectStore};
use shale_rpc::client::{ClientError, KvClient};
use shale_rpc::{KvError, WriteOp};

use crate::s3::Target;
use crate::stats::{OpStats, Recorder};

/// Records written per KV batch (a batch must fall in one range; see `write_records`).
const RECORDS_PER_BATCH: usize = 500;

/// Batches written at once while filling.
const FILL_CONCURRENCY: usize = 16;

/// The MD5 of no bytes: every filler object is empty.
const EMPTY_ETAG: &str = "d41d8cd98f00b204e9800998ecf8427e";

#[derive(Debug, Serialize)]
pub struct ListingReport {
    pub objects: u64,
    pub page_keys: usize,
    pub fill_seconds: f64,
    /// LIST of one page at a random place in the big bucket.
    pub big_bucket: OpStats,
    /// The same page size from a bucket holding just one page (baseline).
    pub one_page_bucket: OpStats,
}

/// The name of filler object `i`.
pub fn filler_key(i: u64) -> String {
    format!("obj/{i:010}")
}

/// Fills `bucket` (created if missing) with `count` empty objects named by `filler_key`.
pub async fn fill(kv: &Arc<KvClient>, bucket: &str, count: u64) -> anyhow::Result<()> {
    let objects = ObjectStore::new(kv.clone());
    if objects.bucket(bucket).await?.is_none() {
        objects.create_bucket(bucket, false).await?;
    }
    let record = ObjectMeta {
        size: 0,
        etag: EMPTY_ETAG.into(),
        content_type: None,
        last_modified_ms: now_ms(),
        user_metadata: Vec::new(),
        body: Body::Inline(Bytes::new()),
    }
    .encode();
    let record = Bytes::from(record);
    let batches = count.div_ceil(RECORDS_PER_BATCH as u64);
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let tasks: Vec<_> = (0..FILL_CONCURRENCY)
        .map(|_| {
            let (kv, next, record, bucket) =
                (kv.clone(), next.clone(), record.clone(), bucket.to_string());
            tokio::spawn(async move {
                loop {
                    let b = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if b >= batches {
                        return anyhow::Ok(());
                    }
                    let first = b * RECORDS_PER_BATCH as u64;
                    let last = (first + RECORDS_PER_BATCH as u64).min(count);
                    let ops: Vec<WriteOp> = (first..last)
                        .map(|i| WriteOp::Put {
                            key: object_key(&bucket, &filler_key(i)),
                            value: record.clone(),
                        })
                        .collect();
                    write_records(&kv, ops).await?;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.context("fill task")??;
    }
    Ok(())
}

/// Writes consecutive records as one batch, halving it where it crosses a range boundary.
async fn write_records(kv: &KvClient, ops: Vec<WriteOp>) -> anyhow::Result<()> {
    let mut pending = vec![ops];
    while let Some(ops) = pending.pop() {
        match kv.batch(ops.clone()).await {
            Ok(()) => {}
            Err(ClientError::Kv(KvError::BatchSpansRanges { .. })) if ops.len() > 1 => {
                let mut left = ops;
                let right = left.split_off(left.len() / 2);
                pending.push(right);
                pending.push(left);
            }
            Err(e) => return Err(e).context("write object records"),
        }
    }
    Ok(())
}

/// Times `requests` LISTs of `page` keys, one at a time.
async fn time_lists(
    name: &str,
    target: &Target,
    requests: usize,
    page: usize,
    start_after: impl Fn(usize) -> Option<String>,
) -> anyhow::Result<OpStats> {
    let started = Instant::now();
    let mut rec = Recorder::starting_at(started);
    for r in 0..requests {
        let after = start_after(r);
        let t = Instant::now();
        let (keys, bytes) = target.list_page("obj/", after.as_deref(), page).await?;
        rec.record(t.elapsed(), bytes);
        anyhow::ensure!(
            keys == page,
            "{name}: a LIST after {after:?} returned {keys} keys, not {page}"
        );
    }
    Ok(rec.finish(name, 1, started.elapsed()))
}

/// Fills a bucket of `objects` and one of `page` objects through `kv`, then times LISTs
/// of `page` keys from each through `endpoint`.
pub async fn run(
    kv: Arc<KvClient>,
    endpoint: &str,
    access_key: &str,
    secret_key: &str,
    objects: u64,
    page: usize,
    requests: usize,
) -> anyhow::Result<ListingReport> {
    anyhow::ensure!(
        objects > page as u64 && page > 0 && requests > 0,
        "need more objects than a page, and a positive page and request count"
    );
    let filled = Instant::now();
    fill(&kv, "list-big", objects).await?;
    let fill_seconds = filled.elapsed().as_secs_f64();
    fill(&kv, "list-one-page", page as u64).await?;
    let big = Target::new(endpoint, "list-big", access_key, secret_key, 1)?;
    let small = Target::new(endpoint, "list-one-page", access_key, secret_key, 1)?;
    // Warm both paths (connections, range caches) before timing.
    big.list_page("obj/", None, page).await?;
    small.list_page("obj/", None, page).await?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let starts: Vec<u64> = (0..requests)
        .map(|_| rng.gen_range(0..objects - page as u64))
        .collect();
    let big_bucket = time_lists(
        &format!("list {page} of {objects} keys"),
        &big,
        requests,
        page,
        |r| Some(filler_key(starts[r])),
    )
    .await?;
    let one_page_bucket = time_lists(
        &format!("list {page} of {page} keys (baseline)"),
        &small,
        requests,
        page,
        |_| None,
    )
    .await?;
    Ok(ListingReport {
        objects,
        page_keys: page,
        fill_seconds,
        big_bucket,
        one_page_bucket,
    })
}
