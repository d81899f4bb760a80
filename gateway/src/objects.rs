//! Buckets and objects on top of the KV client: the object layout's reads and writes.
//! Bodies stream both ways; a PUT holds at most one chunk in memory, and the metadata
//! write that makes an object visible comes after all of its chunks.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use md5::{Digest, Md5};
use shale_rpc::client::KvClient;

use crate::error::GwError;
use crate::layout::{self, Body, BucketMeta, ObjectMeta, CHUNK_BYTES, INLINE_BYTES_MAX};

/// Largest object a single PUT may store (S3's limit).
pub const OBJECT_BYTES_MAX: u64 = 5 << 30;
/// Object records read per scan page while listing.
const LIST_PAGE: u32 = 1000;

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq)]
pub enum Listed {
    Object { key: String, meta: ObjectMeta },
    CommonPrefix(String),
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

/// Object storage over a cluster.
#[derive(Clone)]
pub struct ObjectStore {
    kv: Arc<KvClient>,
}

impl ObjectStore {
    pub fn new(kv: Arc<KvClient>) -> Self {
        ObjectStore { kv }
    }

    pub async fn bucket(&self, bucket: &str) -> Result<Option<BucketMeta>, GwError> {
        match self.kv.get(layout::bucket_key(bucket)).await? {
            Some(v) => Ok(Some(BucketMeta::decode(&v).map_err(GwError::Corrupt)?)),
            None => Ok(None),
        }
    }

    async fn must_bucket(&self, bucket: &str) -> Result<BucketMeta, GwError> {
        self.bucket(bucket).await?.ok_or(GwError::NoSuchBucket)
    }

    pub async fn create_bucket(&self, bucket: &str) -> Result<(), GwError> {
        if self.bucket(bucket).await?.is_some() {
            return Err(GwError::BucketExists);
        }
        let meta = BucketMeta {
            created_ms: now_ms(),
        };
        self.kv
            .put(layout::bucket_key(bucket), meta.encode())
            .await?;
        Ok(())
    }

    pub async fn delete_bucket(&self, bucket: &str) -> Result<(), GwError> {
        self.must_bucket(bucket).await?;
        let (start, end) = layout::object_bounds(bucket, "");
        if !self.kv.scan(start, end, 1).await?.pairs.is_empty() {
            return Err(GwError::BucketNotEmpty);
        }
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

    pub async fn head(&self, bucket: &str, key: &str) -> Result<ObjectMeta, GwError> {
        self.must_bucket(bucket).await?;
        match self.kv.get(layout::object_key(bucket, key)).await? {
            Some(v) => ObjectMeta::decode(&v).map_err(GwError::Corrupt),
            None => Err(GwError::NoSuchKey),
        }
    }

    /// Stores a body from `body`; chunks first, metadata last. `content_md5` (base64) is
    /// checked before anything becomes visible; a failed or cut-off upload leaves the
    /// previous object as it was.
    pub async fn put<S, E>(
        &self,
        bucket: &str,
        key: &str,
        mut body: S,
        content_type: Option<String>,
        user_metadata: Vec<(String, String)>,
        content_md5: Option<&str>,
    ) -> Result<ObjectMeta, GwError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        self.must_bucket(bucket).await?;
        let expected_md5 = content_md5.map(decode_md5).transpose()?;
        let mut md5 = Md5::new();
        let mut size = 0u64;
        let mut buf = BytesMut::new();
        let version: u128 = rand::random();
        let mut chunks = 0u32;
        while let Some(piece) = body.next().await {
            let piece = match piece {
                Ok(p) => p,
                Err(e) => {
                    self.drop_chunks(version, chunks).await;
                    return Err(GwError::IncompleteBody(e.to_string()));
                }
            };
            size += piece.len() as u64;
            if size > OBJECT_BYTES_MAX {
                self.drop_chunks(version, chunks).await;
                return Err(GwError::EntityTooLarge {
                    max: OBJECT_BYTES_MAX,
                });
            }
            md5.update(&piece);
            buf.extend_from_slice(&piece);
            while buf.len() >= CHUNK_BYTES && (chunks > 0 || buf.len() > INLINE_BYTES_MAX) {
                let chunk = buf.split_to(CHUNK_BYTES);
                if let Err(e) = self
                    .kv
                    .put(
                        layout::chunk_key(version, chunks),
                        layout::seal_chunk(&chunk),
                    )
                    .await
                {
                    self.drop_chunks(version, chunks).await;
                    return Err(e.into());
                }
                chunks += 1;
            }
        }
        let digest: [u8; 16] = md5.finalize().into();
        if expected_md5.is_some_and(|m| m != digest) {
            self.drop_chunks(version, chunks).await;
            return Err(GwError::BadDigest);
        }
        let body = if chunks == 0 && buf.len() <= INLINE_BYTES_MAX {
            Body::Inline(buf.freeze())
        } else {
            if !buf.is_empty() {
                let chunk = buf.split();
                if let Err(e) = self
                    .kv
                    .put(
                        layout::chunk_key(version, chunks),
                        layout::seal_chunk(&chunk),
                    )
                    .await
                {
                    self.drop_chunks(version, chunks).await;
                    return Err(e.into());
                }
                chunks += 1;
            }
            Body::Chunks {
                version,
                count: chunks,
            }
        };
        let meta = ObjectMeta {
            size,
            etag: hex(&digest),
            content_type,
            last_modified_ms: now_ms(),
            user_metadata,
            body,
        };
        let record = layout::object_key(bucket, key);
        let previous = self.kv.get(record.clone()).await?;
        self.kv.put(record, meta.encode()).await?;
        if let Some(Ok(ObjectMeta {
            body: Body::Chunks { version, count },
            ..
        })) = previous.map(|p| ObjectMeta::decode(&p))
        {
            self.drop_chunks(version, count).await;
        }
        Ok(meta)
    }

    /// The bytes `[start, end)` of an object, streamed chunk by chunk, each checked.
    pub fn read(
        &self,
        meta: &ObjectMeta,
        start: u64,
        end: u64,
    ) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + Sync + 'static {
        let kv = self.kv.clone();
        let body = meta.body.clone();
        futures::stream::unfold(start, move |pos| {
            let (kv, body) = (kv.clone(), body.clone());
            async move {
                if pos >= end {
                    return None;
                }
                let result = match body {
                    Body::Inline(data) => Ok(data.slice(pos as usize..end as usize)),
                    Body::Chunks { version, .. } => {
                        let index = (pos / CHUNK_BYTES as u64) as u32;
                        let chunk_start = index as u64 * CHUNK_BYTES as u64;
                        fetch_chunk(&kv, version, index).await.map(|data| {
                            let from = (pos - chunk_start) as usize;
                            let to = ((end - chunk_start) as usize).min(data.len());
                            data.slice(from..to.max(from))
                        })
                    }
                };
                match result {
                    Ok(piece) if piece.is_empty() => Some((
                        Err(std::io::Error::other(
                            "object is shorter than its metadata says",
                        )),
                        end,
                    )),
                    Ok(piece) => {
                        let next = pos + piece.len() as u64;
                        Some((Ok(piece), next))
                    }
                    Err(e) => Some((Err(std::io::Error::other(e)), end)),
                }
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
        if let Ok(ObjectMeta {
            body: Body::Chunks { version, count },
            ..
        }) = ObjectMeta::decode(&old)
        {
            self.drop_chunks(version, count).await;
        }
        Ok(())
    }

    /// Chunks of a body no metadata points at any more. Failures leave garbage behind,
    /// never a broken object: the metadata that pointed at them is already gone.
    async fn drop_chunks(&self, version: u128, count: u32) {
        for i in 0..count {
            if let Err(e) = self.kv.delete(layout::chunk_key(version, i)).await {
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
                .kv
                .scan(cursor.clone(), end.clone(), LIST_PAGE.min(max as u32 + 1))
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
            && !self.kv.scan(cursor, end, 1).await?.pairs.is_empty();
        Ok(ListPage {
            entries,
            next: if more { last_token } else { None },
        })
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

async fn fetch_chunk(kv: &KvClient, version: u128, index: u32) -> Result<Bytes, String> {
    match kv.get(layout::chunk_key(version, index)).await {
        Ok(Some(stored)) => layout::open_chunk(stored),
        Ok(None) => Err(format!("chunk {index} of the object is missing")),
        Err(e) => Err(e.to_string()),
    }
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
