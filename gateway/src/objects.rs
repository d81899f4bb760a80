//! Buckets and objects on top of the KV client: the object layout's reads and writes.
//! Bodies stream both ways; a PUT holds at most one chunk in memory, and the metadata
//! write that makes an object visible comes after all of its chunks.

mod publish;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use md5::{Digest, Md5};
use shale_rpc::client::{KvClient, ScanPage};
use shale_rpc::StoreId;

pub use crate::chunks::LocalChunks;
use crate::chunks::{chunk_pieces, fetch_chunk, ChunkWriter, NearChunks, Piece};
use crate::error::GwError;
use crate::layout::{
    self, Body, BucketMeta, ObjectMeta, PartMeta, UploadMeta, CHUNK_BYTES, CHUNK_SEAL_BYTES,
    INLINE_BYTES_MAX,
};
pub use publish::Condition;

/// Largest object a single PUT may store (S3's limit).
pub const OBJECT_BYTES_MAX: u64 = 5 << 30;
/// Object records read per scan page while listing.
const LIST_PAGE: u32 = 1000;
/// Chunks fetched ahead of the client per download.
const CHUNK_READS_AHEAD: usize = 2;
/// Longest object key, in bytes of UTF-8 (S3's limit).
pub const KEY_BYTES_MAX: usize = 1024;
/// Highest part number of a multipart upload (S3's limit).
pub const PARTS_MAX: u32 = 10_000;
/// Smallest part but the last (S3's limit).
pub const PART_BYTES_MIN: u64 = 5 << 20;

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq)]
pub enum Listed {
    Object { key: String, meta: ObjectMeta },
    CommonPrefix(String),
}

/// What a bucket holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct BucketUsage {
    pub objects: u64,
    pub bytes: u64,
}

/// A page of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct ListPage {
    pub entries: Vec<Listed>,
    /// Where the next page starts (opaque to clients), when there is one.
    pub next: Option<String>,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A body arriving from a client, with what it claims about itself.
pub struct Incoming<'a, S, C> {
    pub body: S,
    /// Base64 MD5 from `Content-MD5`, if sent.
    pub content_md5: Option<&'a str>,
    /// Run once the body is read, before anything becomes visible (flexible checksums).
    pub check: C,
}

impl<S> Incoming<'static, S, fn() -> Result<(), GwError>> {
    /// A body that makes no claims: read from the cluster itself (copies), or by tests.
    pub fn unclaimed(body: S) -> Self {
        fn nothing_to_check() -> Result<(), GwError> {
            Ok(())
        }
        Incoming {
            body,
            content_md5: None,
            check: nothing_to_check,
        }
    }
}

/// How long a body may take to arrive, unless the gateway is configured otherwise.
pub const BODY_DEADLINE_MS: u64 = 12 * 3600 * 1000;

/// Object storage over a cluster.
#[derive(Clone)]
pub struct ObjectStore {
    kv: Arc<KvClient>,
    body_deadline_ms: u64,
    near: NearChunks,
}

impl ObjectStore {
    pub fn new(kv: Arc<KvClient>) -> Self {
        ObjectStore {
            kv,
            body_deadline_ms: BODY_DEADLINE_MS,
            near: NearChunks::default(),
        }
    }

    /// Reads chunks from stores in this process first.
    pub fn with_local_chunks(mut self, local: Option<Arc<dyn LocalChunks>>) -> Self {
        self.near.local = local;
        self
    }

    /// Reads chunks from these stores' own replicas (in this order, those that hold the
    /// chunk's range) before asking the range's leader.
    pub fn with_near_stores(mut self, stores: &[StoreId]) -> Self {
        self.near.stores = stores.into();
        self
    }

    /// Fails any upload whose body takes longer than `ms` to arrive. The chunk collector
    /// counts on it: it spares chunks younger than twice this.
    pub fn with_body_deadline_ms(mut self, ms: u64) -> Self {
        self.body_deadline_ms = ms;
        self
    }

    pub(crate) fn kv(&self) -> &KvClient {
        &self.kv
    }

    pub async fn bucket(&self, bucket: &str) -> Result<Option<BucketMeta>, GwError> {
        match self.kv.get(layout::bucket_key(bucket)).await? {
            Some(v) => Ok(Some(BucketMeta::decode(&v).map_err(GwError::Corrupt)?)),
            None => Ok(None),
        }
    }

    /// The bucket's record, or `NoSuchBucket`.
    pub async fn must_bucket(&self, bucket: &str) -> Result<BucketMeta, GwError> {
        self.bucket(bucket).await?.ok_or(GwError::NoSuchBucket)
    }

    pub async fn create_bucket(&self, bucket: &str, public_read: bool) -> Result<(), GwError> {
        if self.bucket(bucket).await?.is_some() {
            return Err(GwError::BucketExists);
        }
        let meta = BucketMeta {
            created_ms: now_ms(),
            public_read,
        };
        self.kv
            .put(layout::bucket_key(bucket), meta.encode())
            .await?;
        Ok(())
    }

    /// Makes a bucket readable by anyone (or by signed requests only again).
    pub async fn set_public_read(&self, bucket: &str, public_read: bool) -> Result<(), GwError> {
        let mut meta = self.must_bucket(bucket).await?;
        meta.public_read = public_read;
        self.kv
            .put(layout::bucket_key(bucket), meta.encode())
            .await?;
        Ok(())
    }

    pub async fn delete_bucket(&self, bucket: &str) -> Result<(), GwError> {
        self.must_bucket(bucket).await?;
        let (start, end) = layout::object_bounds(bucket, "");
        if !self.scan_on(start, end, 1).await?.pairs.is_empty() {
            return Err(GwError::BucketNotEmpty);
        }
        self.kv.delete(layout::lifecycle_key(bucket)).await?;
        self.kv.delete(layout::bucket_key(bucket)).await?;
        Ok(())
    }

    pub async fn list_buckets(&self) -> Result<Vec<(String, BucketMeta)>, GwError> {
        let (start, end) = layout::bucket_bounds();
        let pairs = self.kv.scan_all(start, end, LIST_PAGE).await?;
        pairs
            .iter()
            .filter_map(|(k, v)| Some((layout::bucket_of_key(k)?.to_string(), v)))
            .map(|(name, v)| Ok((name, BucketMeta::decode(v).map_err(GwError::Corrupt)?)))
            .collect()
    }

    /// Objects in `bucket` and their bytes, read page by page (time grows with the
    /// bucket: for operators, not for requests).
    pub async fn bucket_usage(&self, bucket: &str) -> Result<BucketUsage, GwError> {
        self.must_bucket(bucket).await?;
        let (mut cursor, end) = layout::object_bounds(bucket, "");
        let mut usage = BucketUsage::default();
        loop {
            let page = self.kv.scan(cursor, end.clone(), LIST_PAGE).await?;
            for (_, v) in &page.pairs {
                let meta = ObjectMeta::decode(v).map_err(GwError::Corrupt)?;
                usage.objects += 1;
                usage.bytes += meta.size;
            }
            match page.resume_key {
                Some(next) if next < end => cursor = next,
                _ => return Ok(usage),
            }
        }
    }

    /// The object's record, read linearizably. One read when the object exists: a record
    /// implies its bucket (a bucket is deleted only when empty); only a miss reads the
    /// bucket, to tell `NoSuchBucket` from `NoSuchKey`.
    pub async fn head(&self, bucket: &str, key: &str) -> Result<ObjectMeta, GwError> {
        match self.kv.get(layout::object_key(bucket, key)).await? {
            Some(v) => ObjectMeta::decode(&v).map_err(GwError::Corrupt),
            None => {
                self.must_bucket(bucket).await?;
                Err(GwError::NoSuchKey)
            }
        }
    }

    /// Reads `body` to its end: small bodies stay in memory (when `inline` allows), larger
    /// ones go out in chunks of a new version as they arrive. Checks the size bound and
    /// `content_md5`; on any failure the chunks written so far are dropped. A body that
    /// takes longer than the body deadline fails with `RequestTimeout`.
    async fn write_body<S, E>(
        &self,
        mut body: S,
        inline: bool,
        content_md5: Option<&str>,
    ) -> Result<(Body, u64, [u8; 16]), GwError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let expected_md5 = content_md5.map(decode_md5).transpose()?;
        let mut md5 = Md5::new();
        let mut size = 0u64;
        let mut buf = BytesMut::new();
        let started_ms = now_ms();
        let late = || now_ms().saturating_sub(started_ms) > self.body_deadline_ms;
        let mut writer = ChunkWriter::new(self.kv.clone(), layout::new_version(started_ms));
        let keep_inline =
            |chunks: u32, len: usize| inline && chunks == 0 && len <= INLINE_BYTES_MAX;
        let mut failed = loop {
            let piece = match body.next().await {
                None => break None,
                Some(Ok(p)) => p,
                Some(Err(e)) => break Some(GwError::IncompleteBody(e.to_string())),
            };
            size += piece.len() as u64;
            if size > OBJECT_BYTES_MAX {
                break Some(GwError::EntityTooLarge {
                    max: OBJECT_BYTES_MAX,
                });
            }
            md5.update(&piece);
            if late() {
                break Some(GwError::RequestTimeout);
            }
            let mut rest = &piece[..];
            let mut err = None;
            while !rest.is_empty() {
                let take = (CHUNK_BYTES - buf.len()).min(rest.len());
                if buf.capacity() < CHUNK_BYTES + CHUNK_SEAL_BYTES
                    && !keep_inline(writer.started(), buf.len() + take)
                {
                    // Not an inline body: hold whole chunks, with room for the checksum
                    // so sealing one copies nothing.
                    buf.reserve(CHUNK_BYTES + CHUNK_SEAL_BYTES - buf.len());
                }
                buf.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if buf.len() == CHUNK_BYTES {
                    let next = BytesMut::with_capacity(CHUNK_BYTES + CHUNK_SEAL_BYTES);
                    if let Err(e) = writer.push(std::mem::replace(&mut buf, next)).await {
                        err = Some(e);
                        break;
                    }
                }
            }
            if err.is_some() {
                break err;
            }
        };
        let digest: [u8; 16] = md5.finalize().into();
        failed = failed.or_else(|| {
            expected_md5
                .filter(|m| *m != digest)
                .map(|_| GwError::BadDigest)
        });
        let inline_body = failed.is_none() && keep_inline(writer.started(), buf.len());
        if failed.is_none() && !inline_body && (!buf.is_empty() || writer.started() == 0) {
            failed = writer.push(std::mem::take(&mut buf)).await.err();
        }
        let finished = writer.finish().await;
        let (version, count) = (writer.version, writer.started());
        let failed = failed
            .or(finished.err())
            .or_else(|| late().then_some(GwError::RequestTimeout));
        match failed {
            Some(e) => {
                self.drop_chunks(version, count).await;
                Err(e)
            }
            None if inline_body => Ok((Body::Inline(buf.freeze()), size, digest)),
            None => Ok((
                Body::Chunks {
                    version,
                    count,
                    chunk_bytes: CHUNK_BYTES as u32,
                },
                size,
                digest,
            )),
        }
    }

    /// Stores a body from `body`; chunks first, metadata last. `content_md5` (base64) is
    /// checked before anything becomes visible; a failed or cut-off upload leaves the
    /// previous object as it was.
    /// The object is published only if it then meets `condition` (checked atomically
    /// with the write; `Condition::None` for an unconditional put); `PreconditionFailed`
    /// otherwise, and the body is dropped.
    pub async fn put<S, E, C>(
        &self,
        bucket: &str,
        key: &str,
        incoming: Incoming<'_, S, C>,
        content_type: Option<String>,
        user_metadata: Vec<(String, String)>,
        condition: Condition,
    ) -> Result<ObjectMeta, GwError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
        C: FnOnce() -> Result<(), GwError>,
    {
        check_key(key)?;
        self.must_bucket(bucket).await?;
        let (body, size, digest) = self
            .write_body(incoming.body, true, incoming.content_md5)
            .await?;
        if let Err(e) = (incoming.check)() {
            self.drop_body(&ObjectMeta::orphan(body)).await;
            return Err(e);
        }
        let meta = ObjectMeta {
            size,
            etag: hex(&digest),
            content_type,
            last_modified_ms: now_ms(),
            user_metadata,
            body,
        };
        if let Err(e) = self.publish(bucket, key, &meta, &condition).await {
            self.drop_body(&meta).await;
            return Err(e);
        }
        Ok(meta)
    }

    /// Starts a multipart upload; returns its id.
    pub async fn create_upload(
        &self,
        bucket: &str,
        key: &str,
        content_type: Option<String>,
        user_metadata: Vec<(String, String)>,
    ) -> Result<String, GwError> {
        check_key(key)?;
        self.must_bucket(bucket).await?;
        let upload_id = hex(&rand::random::<u128>().to_be_bytes());
        let meta = UploadMeta {
            created_ms: now_ms(),
            content_type,
            user_metadata,
        };
        self.kv
            .put(layout::upload_key(bucket, key, &upload_id), meta.encode())
            .await?;
        Ok(upload_id)
    }

    async fn must_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<UploadMeta, GwError> {
        self.must_bucket(bucket).await?;
        match self
            .kv
            .get(layout::upload_key(bucket, key, upload_id))
            .await?
        {
            Some(v) => UploadMeta::decode(&v).map_err(GwError::Corrupt),
            None => Err(GwError::NoSuchUpload),
        }
    }

    /// Stores one part; a part uploaded again under the same number replaces the old one.
    pub async fn upload_part<S, E, C>(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part_number: i32,
        incoming: Incoming<'_, S, C>,
    ) -> Result<PartMeta, GwError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
        C: FnOnce() -> Result<(), GwError>,
    {
        let Incoming {
            body,
            content_md5,
            check,
        } = incoming;
        let number = u32::try_from(part_number)
            .ok()
            .filter(|n| (1..=PARTS_MAX).contains(n))
            .ok_or(GwError::InvalidPartNumber)?;
        self.must_upload(bucket, key, upload_id).await?;
        let (body, size, digest) = self.write_body(body, false, content_md5).await?;
        if let Err(e) = check() {
            self.drop_body(&ObjectMeta::orphan(body)).await;
            return Err(e);
        }
        let Body::Chunks {
            version,
            count,
            chunk_bytes,
        } = body
        else {
            unreachable!("parts are never inline");
        };
        let part = PartMeta {
            size,
            etag: hex(&digest),
            version,
            count,
            last_modified_ms: now_ms(),
            chunk_bytes,
        };
        let record = layout::part_key(upload_id, number);
        let previous = self.kv.get(record.clone()).await?;
        self.kv.put(record, part.encode()).await?;
        if let Some(Ok(old)) = previous.map(|p| PartMeta::decode(&p)) {
            self.drop_chunks(old.version, old.count).await;
        }
        Ok(part)
    }

    /// The parts uploaded so far, by part number.
    pub async fn list_parts(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<Vec<(u32, PartMeta)>, GwError> {
        self.must_upload(bucket, key, upload_id).await?;
        let (start, end) = layout::part_bounds(upload_id);
        let pairs = self.kv.scan_all(start, end, LIST_PAGE).await?;
        pairs
            .iter()
            .map(|(k, v)| {
                let n = layout::part_number_of_key(k)
                    .ok_or_else(|| GwError::Corrupt("bad part record key".into()))?;
                Ok((n, PartMeta::decode(v).map_err(GwError::Corrupt)?))
            })
            .collect()
    }

    /// Assembles the listed parts (ascending numbers, matching ETags) into the object;
    /// parts uploaded but not listed are dropped.
    /// Completes an upload from the `listed` parts (number, ETag), published only if the
    /// object then meets `condition` (the upload stays, to be completed again, if not).
    pub async fn complete_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        listed: Vec<(u32, String)>,
        condition: &Condition,
    ) -> Result<ObjectMeta, GwError> {
        let upload = self.must_upload(bucket, key, upload_id).await?;
        let uploaded = self.list_parts(bucket, key, upload_id).await?;
        if listed.is_empty() {
            return Err(GwError::InvalidPart(0));
        }
        if listed.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(GwError::InvalidPartOrder);
        }
        let mut segments = Vec::with_capacity(listed.len());
        let mut md5s = Md5::new();
        let mut size = 0u64;
        for (i, (number, etag)) in listed.iter().enumerate() {
            let Some((_, part)) = uploaded
                .iter()
                .find(|(n, p)| n == number && p.etag == etag.trim_matches('"'))
            else {
                return Err(GwError::InvalidPart(*number));
            };
            if i + 1 < listed.len() && part.size < PART_BYTES_MIN {
                return Err(GwError::EntityTooSmall {
                    part: *number,
                    size: part.size,
                    min: PART_BYTES_MIN,
                });
            }
            md5s.update(decode_hex_md5(&part.etag)?);
            size += part.size;
            segments.push(part.segment());
        }
        let digest: [u8; 16] = md5s.finalize().into();
        let meta = ObjectMeta {
            size,
            etag: format!("{}-{}", hex(&digest), listed.len()),
            content_type: upload.content_type,
            last_modified_ms: now_ms(),
            user_metadata: upload.user_metadata,
            body: Body::Parts(segments),
        };
        self.publish(bucket, key, &meta, condition).await?;
        self.kv
            .delete(layout::upload_key(bucket, key, upload_id))
            .await?;
        for (number, part) in &uploaded {
            self.kv.delete(layout::part_key(upload_id, *number)).await?;
            if !listed.iter().any(|(n, _)| n == number) {
                self.drop_chunks(part.version, part.count).await;
            }
        }
        Ok(meta)
    }

    /// Abandons an upload: its parts and their chunks go.
    pub async fn abort_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<(), GwError> {
        for (number, part) in self.list_parts(bucket, key, upload_id).await? {
            self.drop_chunks(part.version, part.count).await;
            self.kv.delete(layout::part_key(upload_id, number)).await?;
        }
        self.kv
            .delete(layout::upload_key(bucket, key, upload_id))
            .await?;
        Ok(())
    }

    /// Uploads in progress in `bucket`: (key, upload id, started).
    pub async fn list_uploads(&self, bucket: &str) -> Result<Vec<(String, String, u64)>, GwError> {
        self.must_bucket(bucket).await?;
        let (start, end) = layout::upload_bounds(bucket);
        let pairs = self.kv.scan_all(start, end, LIST_PAGE).await?;
        pairs
            .iter()
            .filter_map(|(k, v)| {
                layout::upload_of_key(bucket, k)
                    .map(|(key, id)| (key.to_string(), id.to_string(), v))
            })
            .map(|(key, id, v)| {
                Ok((
                    key,
                    id,
                    UploadMeta::decode(v).map_err(GwError::Corrupt)?.created_ms,
                ))
            })
            .collect()
    }

    /// The bytes `[start, end)` of an object, streamed in order with a few chunks fetched
    /// ahead; each chunk's crc32 is checked before its bytes go out.
    pub fn read(
        &self,
        meta: &ObjectMeta,
        start: u64,
        end: u64,
    ) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + Sync + 'static {
        let (kv, near) = (self.kv.clone(), self.near.clone());
        let pieces: Vec<Piece> = match &meta.body {
            Body::Inline(data) => vec![Piece::Inline(data.slice(start as usize..end as usize))],
            body => chunk_pieces(&body.segments(meta.size), start, end),
        };
        futures::stream::iter(pieces)
            .map(move |piece| {
                let (kv, near) = (kv.clone(), near.clone());
                async move {
                    match piece {
                        Piece::Inline(data) => Ok(data),
                        Piece::Chunk {
                            version,
                            index,
                            large,
                            from,
                            to,
                        } => {
                            let data = fetch_chunk(&kv, &near, version, index, large)
                                .await
                                .map_err(std::io::Error::other)?;
                            if data.len() < to {
                                return Err(std::io::Error::other(format!(
                                    "chunk {index} is shorter than the object's metadata says"
                                )));
                            }
                            Ok(data.slice(from..to))
                        }
                    }
                }
            })
            .buffered(CHUNK_READS_AHEAD)
            .inspect(|piece| {
                if let Ok(bytes) = piece {
                    crate::metrics::METRICS
                        .bytes_read
                        .inc_by(bytes.len() as u64);
                }
            })
    }

    /// Deletes an object (a missing one is not an error, as in S3).
    pub async fn delete(&self, bucket: &str, key: &str) -> Result<(), GwError> {
        self.must_bucket(bucket).await?;
        let record = layout::object_key(bucket, key);
        let Some(old) = self.kv.get(record.clone()).await? else {
            return Ok(());
        };
        self.kv.delete(record).await?;
        if let Ok(old) = ObjectMeta::decode(&old) {
            self.drop_body(&old).await;
        }
        Ok(())
    }

    /// Drops every chunk behind a body.
    pub(crate) async fn drop_body(&self, meta: &ObjectMeta) {
        for s in meta.body.segments(meta.size) {
            self.drop_chunks(s.version, s.count).await;
        }
    }

    /// Chunks of a body no metadata points at any more. Failures leave garbage behind,
    /// never a broken object: the metadata that pointed at them is already gone. Every
    /// chunk but the last is large; the last may be either. (Large chunks written before
    /// they had their own prefix are left to the orphan sweep.)
    async fn drop_chunks(&self, version: u128, count: u32) {
        let mut keys: Vec<Bytes> = (0..count)
            .map(|i| layout::chunk_key(version, i, true))
            .collect();
        if let Some(last) = count.checked_sub(1) {
            keys.push(layout::chunk_key(version, last, false));
        }
        for key in keys {
            if let Err(e) = self.kv.delete(key).await {
                tracing::info!(error = %e, "could not delete a dropped chunk; it stays until collected");
                return;
            }
        }
    }

    /// One page of `bucket`'s objects under `prefix`, after `after` (a previous page's
    /// `next`, or a start-after key), rolling keys up to `delimiter` into common prefixes.
    /// A common prefix is skipped over in one step, not scanned key by key.
    pub async fn list(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        after: Option<&str>,
        max: usize,
    ) -> Result<ListPage, GwError> {
        self.must_bucket(bucket).await?;
        let (lower, end) = layout::object_bounds(bucket, prefix);
        let mut cursor = match after.and_then(parse_token) {
            Some(Token::After(key)) => next_key(&layout::object_key(bucket, &key)),
            Some(Token::SkipPrefix(p)) => {
                layout::prefix_end(&layout::object_key(bucket, &p)).unwrap_or(end.clone())
            }
            None => lower.clone(),
        };
        if cursor < lower {
            cursor = lower;
        }
        let mut entries = Vec::new();
        let mut last_token = None;
        while entries.len() < max && cursor < end {
            let page = self
                .scan_on(cursor.clone(), end.clone(), LIST_PAGE.min(max as u32 + 1))
                .await?;
            if page.pairs.is_empty() {
                break;
            }
            let mut jumped = false;
            for (k, v) in &page.pairs {
                let Some(key) = layout::key_of_object(bucket, k) else {
                    continue;
                };
                let rolled = delimiter.filter(|d| !d.is_empty()).and_then(|d| {
                    key[prefix.len()..]
                        .find(d)
                        .map(|pos| key[..prefix.len() + pos + d.len()].to_string())
                });
                if entries.len() == max {
                    return Ok(ListPage {
                        entries,
                        next: last_token,
                    });
                }
                match rolled {
                    Some(common) => {
                        cursor = layout::prefix_end(&layout::object_key(bucket, &common))
                            .unwrap_or(end.clone());
                        last_token = Some(format!("p{common}"));
                        entries.push(Listed::CommonPrefix(common));
                        jumped = true;
                        break;
                    }
                    None => {
                        let meta = ObjectMeta::decode(v).map_err(GwError::Corrupt)?;
                        last_token = Some(format!("k{key}"));
                        entries.push(Listed::Object {
                            key: key.to_string(),
                            meta,
                        });
                        cursor = next_key(k);
                    }
                }
            }
            if !jumped
                && page.pairs.len() < LIST_PAGE.min(max as u32 + 1) as usize
                && page.resume_key.is_none()
            {
                break;
            }
        }
        // More may follow only if the page is full; one look ahead settles it.
        let more = entries.len() == max
            && cursor < end
            && !self.scan_on(cursor, end, 1).await?.pairs.is_empty();
        Ok(ListPage {
            entries,
            next: if more { last_token } else { None },
        })
    }

    /// The first page of `[start, end)` that has pairs in it, going on past ranges that
    /// end with none left (a page stops at its range's end); empty only at `end`.
    async fn scan_on(&self, start: Bytes, end: Bytes, limit: u32) -> Result<ScanPage, GwError> {
        let mut cursor = start;
        loop {
            let page = self.kv.scan(cursor, end.clone(), limit).await?;
            match &page.resume_key {
                Some(next) if page.pairs.is_empty() && (end.is_empty() || *next < end) => {
                    cursor = next.clone();
                }
                _ => return Ok(page),
            }
        }
    }
}

enum Token {
    After(String),
    SkipPrefix(String),
}

/// Continuation tokens are `k<key>` (go on after that key) or `p<prefix>` (go on after
/// every key under that common prefix); a bare key is a start-after.
fn parse_token(token: &str) -> Option<Token> {
    match token.split_at_checked(1) {
        Some(("k", key)) => Some(Token::After(key.to_string())),
        Some(("p", p)) => Some(Token::SkipPrefix(p.to_string())),
        _ => Some(Token::After(token.to_string())),
    }
}

/// Turns a start-after key into a token `list` understands.
pub fn start_after_token(key: &str) -> String {
    format!("k{key}")
}

fn next_key(key: &[u8]) -> Bytes {
    let mut k = key.to_vec();
    k.push(0);
    Bytes::from(k)
}

/// Refuses keys longer than S3 allows.
fn check_key(key: &str) -> Result<(), GwError> {
    if key.len() > KEY_BYTES_MAX {
        return Err(GwError::KeyTooLong {
            len: key.len(),
            max: KEY_BYTES_MAX,
        });
    }
    Ok(())
}

fn decode_hex_md5(etag: &str) -> Result<[u8; 16], GwError> {
    let bytes: Result<Vec<u8>, _> = (0..etag.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(etag.get(i..i + 2).unwrap_or("zz"), 16))
        .collect();
    bytes
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| GwError::Corrupt(format!("part ETag {etag:?} is not an MD5")))
}

fn decode_md5(b64: &str) -> Result<[u8; 16], GwError> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| GwError::InvalidDigest)?;
    raw.try_into().map_err(|_| GwError::InvalidDigest)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
