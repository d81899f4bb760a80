//! `shale load`: bulk upload of a directory tree (or a generated dataset) through one or
//! more S3 endpoints, in parallel, resumable, with every failure reported by path.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Args;
use md5::{Digest, Md5};
use shale_bench::s3::Target;

use crate::cluster_file::ClusterFile;

/// Most parts one multipart upload may have (S3's limit).
const PARTS_MAX: u64 = 10_000;

#[derive(Args)]
pub struct LoadArgs {
    /// `SRC s3://BUCKET[/PREFIX]`, or just the destination with `--generate`.
    #[arg(num_args = 1..=2, required = true)]
    paths: Vec<String>,
    /// S3 endpoint(s); uploads are spread over them (repeatable).
    #[arg(long = "endpoint", required_unless_present = "ingest")]
    endpoints: Vec<String>,
    #[arg(long, env = "AWS_ACCESS_KEY_ID")]
    access_key: Option<String>,
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    secret_key: Option<String>,
    /// Bulk-import path: lay the objects out here, stage them as SST files on every
    /// replica's store and ingest those through small Raft entries (the bytes never enter
    /// the Raft log), straight to the cluster named by --cluster rather than through a
    /// gateway. On one 2-core machine about 2x the S3 path's MB/s for 200 KiB files, and
    /// no faster than it for files of several MiB, whose large chunks the gateway stages too
    /// (README).
    #[arg(long, requires = "cluster")]
    ingest: bool,
    /// The cluster file (e.g. DATA_DIR/dev.json) for --ingest.
    #[arg(long)]
    cluster: Option<PathBuf>,
    /// With --ingest: ranges are cut ahead of the load so that none passes this size;
    /// keep it below the cluster's split.range-size-bytes-max (96 MiB by default).
    #[arg(long, default_value = "64MiB", value_parser = crate::bench::parse_size)]
    ingest_range_bytes: usize,
    /// Uploads in flight at once (with --ingest: 64 MiB batches in flight, at most 4).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Instead of a directory, upload this many generated objects...
    #[arg(long)]
    generate: Option<u64>,
    /// ...of this size (bytes, or with KiB/MiB).
    #[arg(long, default_value = "64KiB", value_parser = crate::bench::parse_size)]
    size: usize,
    /// Files this large or larger go up as multipart uploads, a part at a time...
    #[arg(long, default_value = "64MiB", value_parser = crate::bench::parse_size)]
    multipart_threshold: usize,
    /// ...of this size (at least 5 MiB; raised if a file would need over 10,000 parts).
    #[arg(long, default_value = "16MiB", value_parser = crate::bench::parse_size)]
    part_size: usize,
}

/// How files are cut for upload.
#[derive(Debug, Clone, Copy)]
struct Parts {
    threshold: u64,
    size: u64,
}

impl Parts {
    /// The part size for a file of `len` bytes, or `None` for a single PUT.
    fn for_len(&self, len: u64) -> Option<u64> {
        (len >= self.threshold).then(|| self.size.max(len.div_ceil(PARTS_MAX)))
    }
}

/// What one item of the load is.
pub(crate) enum Item {
    File { path: PathBuf, key: String },
    Generated { index: u64, key: String },
}

impl Item {
    pub(crate) fn key(&self) -> &str {
        match self {
            Item::File { key, .. } | Item::Generated { key, .. } => key,
        }
    }

    pub(crate) fn label(&self) -> String {
        match self {
            Item::File { path, .. } => path.display().to_string(),
            Item::Generated { key, .. } => key.clone(),
        }
    }
}

#[derive(Default)]
pub(crate) struct Progress {
    pub(crate) uploaded: AtomicU64,
    pub(crate) skipped: AtomicU64,
    pub(crate) bytes: AtomicU64,
    pub(crate) failures: Mutex<Vec<(String, String)>>,
}

impl Progress {
    /// Counts one object's outcome: loaded (its bytes), already there, or failed.
    pub(crate) fn record(
        &self,
        label: impl FnOnce() -> String,
        outcome: anyhow::Result<Option<u64>>,
    ) {
        match outcome {
            Ok(Some(bytes)) => {
                self.uploaded.fetch_add(1, Ordering::Relaxed);
                self.bytes.fetch_add(bytes, Ordering::Relaxed);
            }
            Ok(None) => {
                self.skipped.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.fail(label(), &e),
        }
    }

    pub(crate) fn fail(&self, label: String, e: &anyhow::Error) {
        self.failures
            .lock()
            .expect("failures lock")
            .push((label, format!("{e:#}")));
    }
}

fn parse_dest(dest: &str) -> anyhow::Result<(String, String)> {
    let rest = dest
        .strip_prefix("s3://")
        .context("the destination looks like s3://BUCKET[/PREFIX]")?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        bail!("the destination names no bucket");
    }
    let prefix = if prefix.is_empty() || prefix.ends_with('/') {
        prefix.to_string()
    } else {
        format!("{prefix}/")
    };
    Ok((bucket.to_string(), prefix))
}

/// Every entry below `root` that is not a directory (files, and links that may be broken:
/// those are reported when they cannot be read, never skipped silently).
fn walk(root: &Path, dir: &Path, prefix: &str, out: &mut Vec<Item>) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("read directory {}", dir.display()))?
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        if e.file_type()?.is_dir() {
            walk(root, &path, prefix, out)?;
            continue;
        }
        let rel = path
            .strip_prefix(root)
            .expect("below root")
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        out.push(Item::File {
            key: format!("{prefix}{rel}"),
            path,
        });
    }
    Ok(())
}

/// The body of generated object `index`: byte `i` is `seed[i % 8] ^ (i as u8)`, the
/// seed being the index's bytes. That repeats every 256 bytes, so one period is laid out
/// and copied: generating must not cost more than the load it stands in for.
pub(crate) fn generated_body(index: u64, size: usize) -> Bytes {
    const PERIOD: usize = 256;
    let seed = index.to_be_bytes();
    let period: Vec<u8> = (0..PERIOD).map(|i| seed[i % 8] ^ (i as u8)).collect();
    let mut body = Vec::with_capacity(size);
    while body.len() < size {
        body.extend_from_slice(&period[..(size - body.len()).min(PERIOD)]);
    }
    Bytes::from(body)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A file read front to back, one part at a time.
struct PartReader {
    file: tokio::fs::File,
    left: u64,
    part: u64,
}

impl PartReader {
    async fn open(path: &Path, len: u64, part: u64) -> anyhow::Result<PartReader> {
        let file = tokio::fs::File::open(path).await.context("open file")?;
        Ok(PartReader {
            file,
            left: len,
            part,
        })
    }

    /// The next part, or `None` at the end.
    async fn next(&mut self) -> anyhow::Result<Option<Bytes>> {
        use tokio::io::AsyncReadExt;
        if self.left == 0 {
            return Ok(None);
        }
        let len = self.part.min(self.left);
        let mut buf = Vec::with_capacity(len as usize);
        (&mut self.file)
            .take(len)
            .read_to_end(&mut buf)
            .await
            .context("read file")?;
        anyhow::ensure!(buf.len() as u64 == len, "the file shrank while it was read");
        self.left -= len;
        Ok(Some(Bytes::from(buf)))
    }
}

/// The ETag S3 gives a multipart upload of the file: MD5 of the parts' MD5s, "-count".
async fn multipart_etag(path: &Path, len: u64, part: u64) -> anyhow::Result<String> {
    let mut parts = PartReader::open(path, len, part).await?;
    let (mut digests, mut count) = (Vec::new(), 0);
    while let Some(piece) = parts.next().await? {
        digests.extend_from_slice(&Md5::digest(&piece));
        count += 1;
    }
    Ok(format!("{}-{count}", hex(&Md5::digest(&digests))))
}

/// Uploads a large file a part at a time (one part in memory), unless the bucket
/// already holds it with the same size and multipart ETag.
async fn load_multipart(
    target: &Target,
    key: &str,
    path: &Path,
    len: u64,
    part: u64,
) -> anyhow::Result<Option<u64>> {
    // The file is hashed only when an object of its size is already there to compare.
    if let Some((have, existing)) = target.head(key).await? {
        if have == len && existing == multipart_etag(path, len, part).await? {
            return Ok(None);
        }
    }
    let upload = target.create_upload(key).await?;
    let sent = async {
        let mut parts = PartReader::open(path, len, part).await?;
        let mut etags = Vec::new();
        while let Some(piece) = parts.next().await? {
            let want = hex(&Md5::digest(&piece));
            let number = u16::try_from(etags.len() + 1).context("too many parts")?;
            let got = target.upload_part(key, &upload, number, piece).await?;
            anyhow::ensure!(
                got == want,
                "part {number}: the gateway stored ETag {got}, the file's part hashes to {want}"
            );
            etags.push(got);
        }
        target.complete_upload(key, &upload, &etags).await
    }
    .await;
    if let Err(e) = sent {
        target.abort_upload(key, &upload).await;
        return Err(e);
    }
    Ok(Some(len))
}

async fn load_one(
    target: &Target,
    item: &Item,
    size: usize,
    parts: Parts,
) -> anyhow::Result<Option<u64>> {
    let body = match item {
        Item::File { path, key } => {
            let meta = tokio::fs::metadata(path)
                .await
                .context("read file metadata")?;
            if let Some(part) = parts.for_len(meta.len()) {
                return load_multipart(target, key, path, meta.len(), part).await;
            }
            Bytes::from(tokio::fs::read(path).await.context("read file")?)
        }
        Item::Generated { index, .. } => generated_body(*index, size),
    };
    let etag = hex(&Md5::digest(&body));
    if let Some((len, existing)) = target.head(item.key()).await? {
        if len == body.len() as u64 && existing == etag {
            return Ok(None);
        }
    }
    let len = target.put(item.key(), body).await?;
    Ok(Some(len as u64))
}

pub async fn run(args: LoadArgs) -> anyhow::Result<()> {
    let (src, dest) = match (args.paths.as_slice(), args.generate) {
        ([dest], Some(_)) => (None, dest.clone()),
        ([src, dest], None) => (Some(PathBuf::from(src)), dest.clone()),
        _ => {
            bail!("give SRC and s3://BUCKET[/PREFIX], or --generate COUNT and s3://BUCKET[/PREFIX]")
        }
    };
    anyhow::ensure!(args.concurrency > 0, "concurrency must be positive");
    anyhow::ensure!(
        args.part_size >= 5 << 20,
        "--part-size must be at least 5 MiB (S3's smallest part)"
    );
    let parts = Parts {
        threshold: args.multipart_threshold as u64,
        size: args.part_size as u64,
    };
    let (bucket, prefix) = parse_dest(&dest)?;
    let mut items = Vec::new();
    match (&src, args.generate) {
        (Some(root), _) => walk(root, root, &prefix, &mut items)?,
        (None, Some(n)) => items.extend((0..n).map(|index| Item::Generated {
            index,
            key: format!("{prefix}{index:012}"),
        })),
        (None, None) => unreachable!("checked above"),
    }
    let total = items.len() as u64;
    let progress = Arc::new(Progress::default());
    let started = Instant::now();
    if let (true, Some(cluster)) = (args.ingest, &args.cluster) {
        let kv = ClusterFile::load(cluster)?.client()?;
        let ticker = tokio::spawn(show_progress(progress.clone(), total, started));
        let loaded = crate::load_ingest::load(
            kv,
            &bucket,
            &prefix,
            items,
            crate::load_ingest::IngestShape {
                size: args.size,
                concurrency: args.concurrency,
                range_bytes: args.ingest_range_bytes as u64,
            },
            progress.clone(),
        )
        .await;
        ticker.abort();
        loaded?;
        return summarize(&progress, total, started);
    }
    let (Some(access_key), Some(secret_key)) = (&args.access_key, &args.secret_key) else {
        bail!("give credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or --access-key and --secret-key");
    };
    let targets: Vec<Arc<Target>> = args
        .endpoints
        .iter()
        .map(|e| Target::new(e, &bucket, access_key, secret_key, args.concurrency).map(Arc::new))
        .collect::<anyhow::Result<_>>()?;
    targets[0]
        .ensure_bucket()
        .await
        .context("create the bucket")?;
    let ticker = tokio::spawn(show_progress(progress.clone(), total, started));
    let slots = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let mut tasks = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let permit = slots.clone().acquire_owned().await?;
        let (target, progress, size) = (
            targets[i % targets.len()].clone(),
            progress.clone(),
            args.size,
        );
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let outcome = load_one(&target, &item, size, parts).await;
            progress.record(|| item.label(), outcome);
        }));
    }
    for t in tasks {
        t.await?;
    }
    ticker.abort();
    summarize(&progress, total, started)
}

/// Prints the summary and every failure; an error if anything failed.
fn summarize(progress: &Progress, total: u64, started: Instant) -> anyhow::Result<()> {
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    let (uploaded, skipped, bytes) = (
        progress.uploaded.load(Ordering::Relaxed),
        progress.skipped.load(Ordering::Relaxed),
        progress.bytes.load(Ordering::Relaxed),
    );
    let failures = progress.failures.lock().expect("failures lock").clone();
    eprintln!();
    println!(
        "loaded {uploaded} objects ({:.1} MB) in {secs:.1} s: {:.0} objects/s, {:.1} MB/s; {skipped} already present, {} failed",
        bytes as f64 / 1e6,
        uploaded as f64 / secs,
        bytes as f64 / 1e6 / secs,
        failures.len()
    );
    for (path, reason) in &failures {
        eprintln!("failed: {path}: {reason}");
    }
    if !failures.is_empty() {
        bail!(
            "{} of {total} objects failed (listed above); run again to retry them",
            failures.len()
        );
    }
    Ok(())
}

async fn show_progress(progress: Arc<Progress>, total: u64, started: Instant) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let done =
            progress.uploaded.load(Ordering::Relaxed) + progress.skipped.load(Ordering::Relaxed);
        let failed = progress.failures.lock().expect("failures lock").len() as u64;
        let secs = started.elapsed().as_secs_f64();
        let rate = (done + failed) as f64 / secs.max(1e-3);
        let eta = if rate > 0.0 {
            (total.saturating_sub(done + failed)) as f64 / rate
        } else {
            0.0
        };
        let mb = progress.bytes.load(Ordering::Relaxed) as f64 / 1e6 / secs.max(1e-3);
        eprint!("\r{done}/{total} objects, {failed} failed, {rate:.0} objects/s, {mb:.1} MB/s, ETA {eta:.0} s   ");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_files_go_multipart_with_at_most_ten_thousand_parts() {
        let parts = Parts {
            threshold: 64 << 20,
            size: 16 << 20,
        };
        assert_eq!(parts.for_len(0), None);
        assert_eq!(parts.for_len((64 << 20) - 1), None);
        assert_eq!(parts.for_len(64 << 20), Some(16 << 20));
        // 1 TiB in 16 MiB parts would be 65,536 parts: the part grows instead.
        let part = parts.for_len(1 << 40).unwrap();
        assert!(part > 16 << 20 && (1u64 << 40).div_ceil(part) <= PARTS_MAX);
    }

    #[test]
    fn generated_bodies_keep_their_bytes() {
        // A rerun of a generated load skips what is there by ETag: the bytes never change.
        for (index, size) in [
            (0u64, 0usize),
            (7, 1),
            (0x0102_0304_0506_0708, 255),
            (9, 70_000),
        ] {
            let seed = index.to_be_bytes();
            let want: Vec<u8> = (0..size).map(|i| seed[i % 8] ^ (i as u8)).collect();
            assert_eq!(
                generated_body(index, size),
                want,
                "object {index}, {size} bytes"
            );
        }
    }
}
