//! `shale bench s3`: PUT, GET and LIST against one or more S3 endpoints, requests signed
//! as presigned URLs (rusty-s3) and sent with hyper. Any S3 endpoint works.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::{Rng, SeedableRng};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use serde::Serialize;

use crate::stats::{OpStats, ProcessUsage, Recorder};

/// What to run.
#[derive(Debug, Clone)]
pub struct S3BenchOptions {
    pub endpoints: Vec<String>,
    pub access_key: String,
    pub secret_key: String,
    pub bucket: String,
    pub object_bytes: usize,
    pub concurrency: usize,
    pub duration: Duration,
    /// Keys listed per LIST request.
    pub list_keys: usize,
    /// The cluster runs in this process: report each phase's CPU and disk writes per
    /// payload byte too.
    pub local_cluster: bool,
    /// Run the GET phase after the PUT phase.
    pub get: bool,
    /// Run the LIST phase last.
    pub list: bool,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct S3BenchReport {
    pub object_bytes: usize,
    pub phases: Vec<OpStats>,
}

const SIGNED_FOR: Duration = Duration::from_secs(3600);

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// A minimal S3 client: presigned requests (rusty-s3) over hyper, for tools that move
/// or measure data through any S3 endpoint.
pub struct Target {
    bucket: Bucket,
    creds: Credentials,
    http: HttpClient,
}

impl Target {
    /// A client of `bucket` at `endpoint` (path-style).
    pub fn new(
        endpoint: &str,
        bucket: &str,
        access_key: &str,
        secret_key: &str,
        connections: usize,
    ) -> anyhow::Result<Target> {
        let url: url::Url = endpoint
            .parse()
            .with_context(|| format!("endpoint {endpoint:?}"))?;
        Ok(Target {
            bucket: Bucket::new(url, UrlStyle::Path, bucket.to_string(), "us-east-1")
                .context("bucket URL")?,
            creds: Credentials::new(access_key, secret_key),
            http: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(connections)
                .build_http(),
        })
    }

    /// Creates the bucket; an existing one is fine.
    pub async fn ensure_bucket(&self) -> anyhow::Result<()> {
        let url = self.bucket.create_bucket(&self.creds).sign(SIGNED_FOR);
        match self.send(hyper::Method::PUT, url, Bytes::new()).await? {
            (200 | 409, _) => Ok(()),
            (status, _) => bail!("create bucket {}: HTTP {status}", self.bucket.name()),
        }
    }

    /// Size and ETag (without quotes) of an object, if it exists.
    pub async fn head(&self, key: &str) -> anyhow::Result<Option<(u64, String)>> {
        let url = self
            .bucket
            .head_object(Some(&self.creds), key)
            .sign(SIGNED_FOR);
        let resp = self.call(hyper::Method::HEAD, url, Bytes::new()).await?;
        match resp.status().as_u16() {
            200 => {
                let h = resp.headers();
                let size = h
                    .get("content-length")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let etag = h
                    .get("etag")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .trim_matches('"')
                    .to_string();
                Ok(Some((size, etag)))
            }
            404 => Ok(None),
            status => bail!("HEAD {key}: HTTP {status}"),
        }
    }

    async fn send(
        &self,
        method: hyper::Method,
        url: url::Url,
        body: Bytes,
    ) -> anyhow::Result<(u16, usize)> {
        let resp = self.call(method, url, body).await?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let mut bytes = 0;
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame?.data_ref() {
                bytes += data.len();
            }
        }
        Ok((status, bytes))
    }

    /// Sends one request; the answer's body is left to the caller.
    async fn call(
        &self,
        method: hyper::Method,
        url: url::Url,
        body: Bytes,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        let req = hyper::Request::builder()
            .method(method)
            .uri(url.as_str())
            .body(Full::new(body))?;
        Ok(self.http.request(req).await?)
    }

    /// A request and its whole answer: status, headers, body.
    async fn exchange(
        &self,
        method: hyper::Method,
        url: url::Url,
        body: Bytes,
    ) -> anyhow::Result<(u16, hyper::HeaderMap, Bytes)> {
        let resp = self.call(method, url, body).await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, headers, body))
    }

    /// Starts a multipart upload of `key`; returns its upload id.
    pub async fn create_upload(&self, key: &str) -> anyhow::Result<String> {
        let url = self
            .bucket
            .create_multipart_upload(Some(&self.creds), key)
            .sign(SIGNED_FOR);
        match self
            .exchange(hyper::Method::POST, url, Bytes::new())
            .await?
        {
            (200, _, body) => {
                let text = std::str::from_utf8(&body).context("answer is not UTF-8")?;
                let created = rusty_s3::actions::CreateMultipartUpload::parse_response(text)
                    .map_err(|e| anyhow::anyhow!("CreateMultipartUpload answer: {e}"))?;
                Ok(created.upload_id().to_string())
            }
            (status, _, _) => bail!("CreateMultipartUpload {key}: HTTP {status}"),
        }
    }

    /// Stores part `number` of an upload; returns its ETag (unquoted).
    pub async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u16,
        body: Bytes,
    ) -> anyhow::Result<String> {
        let url = self
            .bucket
            .upload_part(Some(&self.creds), key, number, upload_id)
            .sign(SIGNED_FOR);
        match self.exchange(hyper::Method::PUT, url, body).await? {
            (200, headers, _) => Ok(headers
                .get("etag")
                .and_then(|v| v.to_str().ok())
                .context("UploadPart answered without an ETag")?
                .trim_matches('"')
                .to_string()),
            (status, _, _) => bail!("UploadPart {key} #{number}: HTTP {status}"),
        }
    }

    /// Publishes an upload from its parts' ETags, in part order.
    pub async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        etags: &[String],
    ) -> anyhow::Result<()> {
        let action = self.bucket.complete_multipart_upload(
            Some(&self.creds),
            key,
            upload_id,
            etags.iter().map(String::as_str),
        );
        let url = action.sign(SIGNED_FOR);
        let body = Bytes::from(action.body());
        match self.exchange(hyper::Method::POST, url, body).await? {
            (200, _, _) => Ok(()),
            (status, _, _) => bail!("CompleteMultipartUpload {key}: HTTP {status}"),
        }
    }

    /// Drops an upload and its parts (best effort: the gateway also collects
    /// abandoned uploads).
    pub async fn abort_upload(&self, key: &str, upload_id: &str) {
        let url = self
            .bucket
            .abort_multipart_upload(Some(&self.creds), key, upload_id)
            .sign(SIGNED_FOR);
        let _ = self
            .exchange(hyper::Method::DELETE, url, Bytes::new())
            .await;
    }

    /// Stores `body` as `key`; returns its length.
    pub async fn put(&self, key: &str, body: Bytes) -> anyhow::Result<usize> {
        let len = body.len();
        let url = self
            .bucket
            .put_object(Some(&self.creds), key)
            .sign(SIGNED_FOR);
        match self.send(hyper::Method::PUT, url, body).await? {
            (200, _) => Ok(len),
            (status, _) => bail!("PUT {key}: HTTP {status}"),
        }
    }

    /// Reads `key` to its end; returns its length.
    pub async fn get(&self, key: &str) -> anyhow::Result<usize> {
        let url = self
            .bucket
            .get_object(Some(&self.creds), key)
            .sign(SIGNED_FOR);
        match self.send(hyper::Method::GET, url, Bytes::new()).await? {
            (200, n) => Ok(n),
            (status, _) => bail!("GET {key}: HTTP {status}"),
        }
    }

    /// One LIST page of up to `max` keys under `prefix` after `start_after`; returns
    /// how many keys it held and its size in bytes.
    pub async fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        max: usize,
    ) -> anyhow::Result<(usize, usize)> {
        let mut action = self.bucket.list_objects_v2(Some(&self.creds));
        action.with_prefix(prefix);
        if let Some(after) = start_after {
            action.with_start_after(after);
        }
        action.with_max_keys(max);
        let url = action.sign(SIGNED_FOR);
        let (status, _, body) = self.exchange(hyper::Method::GET, url, Bytes::new()).await?;
        if status != 200 {
            bail!("LIST {prefix}: HTTP {status}");
        }
        let text = std::str::from_utf8(&body).context("LIST answer is not UTF-8")?;
        let page = rusty_s3::actions::ListObjectsV2::parse_response(text)
            .map_err(|e| anyhow::anyhow!("LIST answer: {e}"))?;
        Ok((page.contents.len(), body.len()))
    }

    async fn list(&self, prefix: &str, max: usize) -> anyhow::Result<usize> {
        let mut action = self.bucket.list_objects_v2(Some(&self.creds));
        action.with_prefix(prefix);
        action.with_max_keys(max);
        let url = action.sign(SIGNED_FOR);
        match self.send(hyper::Method::GET, url, Bytes::new()).await? {
            (200, n) => Ok(n),
            (status, _) => bail!("LIST {prefix}: HTTP {status}"),
        }
    }
}

fn targets(opts: &S3BenchOptions) -> anyhow::Result<Vec<Arc<Target>>> {
    opts.endpoints
        .iter()
        .map(|e| {
            Ok(Arc::new(Target::new(
                e,
                &opts.bucket,
                &opts.access_key,
                &opts.secret_key,
                opts.concurrency,
            )?))
        })
        .collect()
}

/// Runs `op(worker, seq, target)` from `concurrency` tasks spread over the targets:
/// each starts operations until `duration` has passed and finishes the one it is in.
/// Rates are over the time until the last one finished, so large objects do not make
/// the result move in steps of one object.
async fn phase<F, Fut>(
    name: &str,
    targets: &[Arc<Target>],
    opts: &S3BenchOptions,
    concurrency: usize,
    op: F,
) -> OpStats
where
    F: Fn(usize, u64, Arc<Target>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<usize>> + Send,
{
    let op = Arc::new(op);
    let usage = opts
        .local_cluster
        .then(ProcessUsage::now)
        .and_then(Result::ok);
    let started = Instant::now();
    let stop_at = started + opts.duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|w| {
            let (op, target) = (op.clone(), targets[w % targets.len()].clone());
            tokio::spawn(async move {
                let mut rec = Recorder::starting_at(started);
                let mut seq = 0u64;
                while Instant::now() < stop_at {
                    let t = Instant::now();
                    match op(w, seq, target.clone()).await {
                        Ok(bytes) => rec.record(t.elapsed(), bytes),
                        Err(e) => {
                            rec.errors += 1;
                            if rec.errors == 1 {
                                tracing::warn!(error = %e, "bench request failed");
                            }
                        }
                    }
                    seq += 1;
                }
                rec
            })
        })
        .collect();
    let mut total = Recorder::starting_at(started);
    for t in tasks {
        if let Ok(rec) = t.await {
            total.merge(&rec);
        }
    }
    let mut stats = total.finish(name, concurrency, started.elapsed());
    if let Some(before) = usage {
        stats.cost = ProcessUsage::cost_since(&before, total.bytes).ok();
    }
    stats
}

/// PUT for the duration, then GET the objects written, then LIST.
pub async fn run(opts: &S3BenchOptions) -> anyhow::Result<S3BenchReport> {
    anyhow::ensure!(
        !opts.endpoints.is_empty() && opts.concurrency > 0,
        "need an endpoint and a positive concurrency"
    );
    let targets = targets(opts)?;
    let create = targets[0]
        .bucket
        .create_bucket(&targets[0].creds)
        .sign(SIGNED_FOR);
    match targets[0]
        .send(hyper::Method::PUT, create, Bytes::new())
        .await?
    {
        (200 | 409, _) => {}
        (status, _) => bail!("create bucket {}: HTTP {status}", opts.bucket),
    }
    let body = Bytes::from(
        (0..opts.object_bytes)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>(),
    );
    let written: Arc<Vec<AtomicU64>> =
        Arc::new((0..opts.concurrency).map(|_| AtomicU64::new(0)).collect());
    let size = opts.object_bytes;
    let mut phases = Vec::new();
    let (w2, b2) = (written.clone(), body.clone());
    phases.push(
        phase(
            &format!("s3 put {}", human(size)),
            &targets,
            opts,
            opts.concurrency,
            move |w, seq, t| {
                let (written, body) = (w2.clone(), b2.clone());
                async move {
                    let n = t.put(&format!("bench/{w:04}/{seq:010}"), body).await?;
                    written[w].fetch_max(seq + 1, Ordering::Relaxed);
                    Ok(n)
                }
            },
        )
        .await,
    );
    let workers = opts.concurrency;
    if opts.get {
        let w3 = written.clone();
        phases.push(
            phase(
                &format!("s3 get {}", human(size)),
                &targets,
                opts,
                opts.concurrency,
                move |w, seq, t| {
                    let written = w3.clone();
                    async move {
                        let mut rng = rand::rngs::StdRng::seed_from_u64((w as u64) << 32 | seq);
                        let owner = rng.gen_range(0..workers);
                        let count = written[owner].load(Ordering::Relaxed).max(1);
                        t.get(&format!("bench/{owner:04}/{:010}", rng.gen_range(0..count)))
                            .await
                    }
                },
            )
            .await,
        );
    }
    if opts.list {
        let list_keys = opts.list_keys;
        phases.push(
            phase(
                &format!("s3 list {list_keys} keys"),
                &targets,
                opts,
                opts.concurrency.min(8),
                move |w, _, t| async move {
                    t.list(&format!("bench/{:04}/", w % workers), list_keys)
                        .await
                },
            )
            .await,
        );
    }
    Ok(S3BenchReport {
        object_bytes: size,
        phases,
    })
}

pub fn human(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}
