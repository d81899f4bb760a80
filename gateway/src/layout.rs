//! How objects live in the key space (pure). Bucket records and object metadata are
//! ordered by (bucket, key), so listing is a range scan; large bodies are cut into
//! chunks whose keys are spread by a hash so one upload loads many ranges; each chunk
//! carries a crc32 that is checked on every read.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// Bodies up to this size are stored inline with their metadata (one Raft write a PUT).
pub const INLINE_BYTES_MAX: usize = 64 << 10;
/// Size of every chunk of a body written now but the last. Each chunk costs a staged
/// file and an ingest on every replica, so fewer, larger chunks move bulk bytes with far
/// less CPU (4 MiB: 108 MB/s for 64 MiB PUTs where 1 MiB chunks gave 72); a ranged read
/// fetches at most one extra chunk at each end.
pub const CHUNK_BYTES: usize = 4 << 20;
/// Chunk size of bodies recorded before chunk sizes were (their records say nothing).
pub const LEGACY_CHUNK_BYTES: u32 = 1 << 20;
/// Chunks of at least this many bytes are large: staged on every replica and ingested,
/// under their own prefix. Smaller ones go through the Raft log.
pub const LARGE_CHUNK_BYTES_MIN: usize = 1 << 20;

/// Whether a chunk of `len` bytes is a large one (which says where its key is).
pub fn is_large_chunk(len: usize) -> bool {
    len >= LARGE_CHUNK_BYTES_MIN
}

const BUCKET_PREFIX: u8 = b'B';
const OBJECT_PREFIX: u8 = b'O';
/// Chunks smaller than [`LARGE_CHUNK_BYTES_MIN`] (a body's last, a small body's only
/// one), and large chunks written before they had a prefix of their own.
const CHUNK_PREFIX: u8 = b'C';
/// Large chunks. They are staged on every replica and ingested as one-key SST files, and
/// this prefix sorts above every other record's (keep it the highest): no file of other
/// records, whose keys are written in batches and flushed together, spans their keys, so
/// RocksDB puts each ingested chunk straight into the bottom level and need not compact
/// it again.
const LARGE_CHUNK_PREFIX: u8 = b'~';

/// What a bucket record holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketMeta {
    pub created_ms: u64,
    /// Anyone, signed or not, may read its objects and list it (canned ACL public-read).
    pub public_read: bool,
}

/// A bucket record as written before buckets had an ACL.
#[derive(Deserialize)]
struct BucketMetaV1 {
    created_ms: u64,
}

/// Where an object's bytes are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "BodyRecord", into = "BodyRecord")]
pub enum Body {
    Inline(Bytes),
    /// `count` chunks of `version`, each of `chunk_bytes` but perhaps the last; chunk `i`
    /// is at [`chunk_key`]`(version, i, large)`.
    Chunks {
        version: u128,
        count: u32,
        chunk_bytes: u32,
    },
    /// A completed multipart upload: its parts' chunks, in order.
    Parts(Vec<Segment>),
}

/// A run of chunks holding `size` bytes (one part of a multipart object), each of
/// `chunk_bytes` but perhaps the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub version: u128,
    pub count: u32,
    pub size: u64,
    pub chunk_bytes: u32,
}

impl Segment {
    /// Chunk `index`'s length.
    pub fn chunk_len(&self, index: u32) -> u64 {
        let start = u64::from(index) * u64::from(self.chunk_bytes);
        self.size
            .saturating_sub(start)
            .min(u64::from(self.chunk_bytes))
    }

    /// Whether chunk `index` is a large one (which says where its key is).
    pub fn chunk_is_large(&self, index: u32) -> bool {
        is_large_chunk(self.chunk_len(index) as usize)
    }
}

impl Body {
    /// The chunk runs behind the body (none for an inline body).
    pub fn segments(&self, size: u64) -> Vec<Segment> {
        match self {
            Body::Inline(_) => Vec::new(),
            &Body::Chunks {
                version,
                count,
                chunk_bytes,
            } => vec![Segment {
                version,
                count,
                size,
                chunk_bytes,
            }],
            Body::Parts(parts) => parts.clone(),
        }
    }
}

/// A body as its record holds it. The first three forms are those written before chunk
/// sizes were recorded (their chunks hold [`LEGACY_CHUNK_BYTES`]); they still decode.
#[derive(Serialize, Deserialize)]
enum BodyRecord {
    Inline(Bytes),
    Chunks {
        version: u128,
        count: u32,
    },
    Parts(Vec<SegmentV1>),
    SizedChunks {
        version: u128,
        count: u32,
        chunk_bytes: u32,
    },
    SizedParts(Vec<Segment>),
}

/// A segment as recorded before chunk sizes were.
#[derive(Serialize, Deserialize)]
struct SegmentV1 {
    version: u128,
    count: u32,
    size: u64,
}

/// `meta` encoded the way builds before chunk sizes were recorded wrote it (its chunks
/// must hold [`LEGACY_CHUNK_BYTES`]): for tests that read such records back.
#[doc(hidden)]
pub fn encode_legacy_object_record(meta: &ObjectMeta) -> Vec<u8> {
    #[derive(Serialize)]
    struct Legacy<'a> {
        size: u64,
        etag: &'a str,
        content_type: &'a Option<String>,
        last_modified_ms: u64,
        user_metadata: &'a [(String, String)],
        body: BodyRecord,
    }
    let legacy = |chunk_bytes: u32| assert_eq!(chunk_bytes, LEGACY_CHUNK_BYTES);
    let body = match &meta.body {
        Body::Inline(data) => BodyRecord::Inline(data.clone()),
        &Body::Chunks {
            version,
            count,
            chunk_bytes,
        } => {
            legacy(chunk_bytes);
            BodyRecord::Chunks { version, count }
        }
        Body::Parts(parts) => BodyRecord::Parts(
            parts
                .iter()
                .map(|p| {
                    legacy(p.chunk_bytes);
                    SegmentV1 {
                        version: p.version,
                        count: p.count,
                        size: p.size,
                    }
                })
                .collect(),
        ),
    };
    postcard::to_stdvec(&Legacy {
        size: meta.size,
        etag: &meta.etag,
        content_type: &meta.content_type,
        last_modified_ms: meta.last_modified_ms,
        user_metadata: &meta.user_metadata,
        body,
    })
    .expect("object metadata encodes")
}

impl From<BodyRecord> for Body {
    fn from(record: BodyRecord) -> Body {
        match record {
            BodyRecord::Inline(data) => Body::Inline(data),
            BodyRecord::Chunks { version, count } => Body::Chunks {
                version,
                count,
                chunk_bytes: LEGACY_CHUNK_BYTES,
            },
            BodyRecord::Parts(parts) => Body::Parts(
                parts
                    .into_iter()
                    .map(|p| Segment {
                        version: p.version,
                        count: p.count,
                        size: p.size,
                        chunk_bytes: LEGACY_CHUNK_BYTES,
                    })
                    .collect(),
            ),
            BodyRecord::SizedChunks {
                version,
                count,
                chunk_bytes,
            } => Body::Chunks {
                version,
                count,
                chunk_bytes,
            },
            BodyRecord::SizedParts(parts) => Body::Parts(parts),
        }
    }
}

impl From<Body> for BodyRecord {
    fn from(body: Body) -> BodyRecord {
        match body {
            Body::Inline(data) => BodyRecord::Inline(data),
            Body::Chunks {
                version,
                count,
                chunk_bytes,
            } => BodyRecord::SizedChunks {
                version,
                count,
                chunk_bytes,
            },
            Body::Parts(parts) => BodyRecord::SizedParts(parts),
        }
    }
}

/// An upload in progress (multipart).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadMeta {
    pub created_ms: u64,
    pub content_type: Option<String>,
    pub user_metadata: Vec<(String, String)>,
}

/// One uploaded part of a multipart upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartMeta {
    pub size: u64,
    /// Hex MD5 of the part, as its ETag.
    pub etag: String,
    pub version: u128,
    pub count: u32,
    pub last_modified_ms: u64,
    pub chunk_bytes: u32,
}

/// A part record as written before chunk sizes were recorded.
#[derive(Deserialize)]
struct PartMetaV1 {
    size: u64,
    etag: String,
    version: u128,
    count: u32,
    last_modified_ms: u64,
}

const UPLOAD_PREFIX: u8 = b'U';
const PART_PREFIX: u8 = b'P';

/// The record of upload `upload_id` of `key` in `bucket`.
pub fn upload_key(bucket: &str, key: &str, upload_id: &str) -> Bytes {
    let mut k = BytesMut::with_capacity(3 + bucket.len() + key.len() + upload_id.len());
    k.put_u8(UPLOAD_PREFIX);
    k.put_slice(bucket.as_bytes());
    k.put_u8(0);
    k.put_slice(key.as_bytes());
    k.put_u8(0);
    k.put_slice(upload_id.as_bytes());
    k.freeze()
}

/// `[start, end)` of every upload record in `bucket`.
pub fn upload_bounds(bucket: &str) -> (Bytes, Bytes) {
    let mut start = BytesMut::new();
    start.put_u8(UPLOAD_PREFIX);
    start.put_slice(bucket.as_bytes());
    start.put_u8(0);
    let start = start.freeze();
    let end = prefix_end(&start).expect("ends in a zero byte");
    (start, end)
}

/// The (key, upload id) an upload record key names, given its bucket.
pub fn upload_of_key<'a>(bucket: &str, record: &'a [u8]) -> Option<(&'a str, &'a str)> {
    let rest = record
        .strip_prefix(&[UPLOAD_PREFIX])?
        .strip_prefix(bucket.as_bytes())?
        .strip_prefix(&[0])?;
    let split = rest.iter().rposition(|&b| b == 0)?;
    Some((
        std::str::from_utf8(&rest[..split]).ok()?,
        std::str::from_utf8(&rest[split + 1..]).ok()?,
    ))
}

/// The record of part `part_number` of upload `upload_id`.
pub fn part_key(upload_id: &str, part_number: u32) -> Bytes {
    let mut k = BytesMut::with_capacity(6 + upload_id.len());
    k.put_u8(PART_PREFIX);
    k.put_slice(upload_id.as_bytes());
    k.put_u8(0);
    k.put_u32(part_number);
    k.freeze()
}

/// `[start, end)` of every part record of upload `upload_id`.
pub fn part_bounds(upload_id: &str) -> (Bytes, Bytes) {
    let mut prefix = BytesMut::new();
    prefix.put_u8(PART_PREFIX);
    prefix.put_slice(upload_id.as_bytes());
    prefix.put_u8(0);
    let end = prefix_end(&prefix).expect("ends in a zero byte");
    (prefix.freeze(), end)
}

/// The part number a part record key names.
pub fn part_number_of_key(record: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(
        record
            .get(record.len().checked_sub(4)?..)?
            .try_into()
            .ok()?,
    ))
}

impl UploadMeta {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("upload record encodes")
    }

    pub fn decode(data: &[u8]) -> Result<UploadMeta, String> {
        postcard::from_bytes(data).map_err(|e| format!("upload record: {e}"))
    }
}

impl PartMeta {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("part record encodes")
    }

    pub fn decode(data: &[u8]) -> Result<PartMeta, String> {
        // A record of the older form ends where the chunk size would start.
        match postcard::from_bytes::<PartMeta>(data) {
            Ok(part) => Ok(part),
            Err(e) => match postcard::from_bytes::<PartMetaV1>(data) {
                Ok(old) => Ok(PartMeta {
                    size: old.size,
                    etag: old.etag,
                    version: old.version,
                    count: old.count,
                    last_modified_ms: old.last_modified_ms,
                    chunk_bytes: LEGACY_CHUNK_BYTES,
                }),
                Err(_) => Err(format!("part record: {e}")),
            },
        }
    }

    /// The part's chunks as a run of the object it becomes part of.
    pub fn segment(&self) -> Segment {
        Segment {
            version: self.version,
            count: self.count,
            size: self.size,
            chunk_bytes: self.chunk_bytes,
        }
    }
}

/// An object's metadata record: written last, it makes the object visible.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    pub size: u64,
    /// The ETag as S3 computes it, without quotes.
    pub etag: String,
    pub content_type: Option<String>,
    pub last_modified_ms: u64,
    pub user_metadata: Vec<(String, String)>,
    pub body: Body,
}

impl ObjectMeta {
    /// A stand-in record for a body no object points at (to drop its chunks).
    pub fn orphan(body: Body) -> ObjectMeta {
        let size = body.segments(0).iter().map(|s| s.size).sum();
        ObjectMeta {
            size,
            etag: String::new(),
            content_type: None,
            last_modified_ms: 0,
            user_metadata: Vec::new(),
            body,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("object metadata encodes")
    }

    pub fn decode(data: &[u8]) -> Result<ObjectMeta, String> {
        postcard::from_bytes(data).map_err(|e| format!("object metadata: {e}"))
    }
}

impl BucketMeta {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("bucket record encodes")
    }

    pub fn decode(data: &[u8]) -> Result<BucketMeta, String> {
        match postcard::from_bytes::<BucketMeta>(data) {
            Ok(meta) => Ok(meta),
            Err(e) => match postcard::from_bytes::<BucketMetaV1>(data) {
                Ok(old) => Ok(BucketMeta {
                    created_ms: old.created_ms,
                    public_read: false,
                }),
                Err(_) => Err(format!("bucket record: {e}")),
            },
        }
    }
}

pub fn bucket_key(bucket: &str) -> Bytes {
    let mut k = BytesMut::with_capacity(1 + bucket.len());
    k.put_u8(BUCKET_PREFIX);
    k.put_slice(bucket.as_bytes());
    k.freeze()
}

/// `[start, end)` of every bucket record.
pub fn bucket_bounds() -> (Bytes, Bytes) {
    (
        Bytes::from_static(&[BUCKET_PREFIX]),
        Bytes::from_static(&[BUCKET_PREFIX + 1]),
    )
}

/// The bucket name a bucket record key names.
pub fn bucket_of_key(key: &[u8]) -> Option<&str> {
    std::str::from_utf8(key.strip_prefix(&[BUCKET_PREFIX])?).ok()
}

fn object_prefix(bucket: &str) -> BytesMut {
    let mut k = BytesMut::with_capacity(2 + bucket.len() + 64);
    k.put_u8(OBJECT_PREFIX);
    k.put_slice(bucket.as_bytes());
    k.put_u8(0);
    k
}

pub fn object_key(bucket: &str, key: &str) -> Bytes {
    let mut k = object_prefix(bucket);
    k.put_slice(key.as_bytes());
    k.freeze()
}

/// `[start, end)` of the object records of `bucket` whose keys start with `prefix`.
pub fn object_bounds(bucket: &str, prefix: &str) -> (Bytes, Bytes) {
    let mut start = object_prefix(bucket);
    start.put_slice(prefix.as_bytes());
    let start = start.freeze();
    let end = prefix_end(&start).unwrap_or_else(|| {
        let mut e = object_prefix(bucket);
        let last = e.len() - 1;
        e[last] = 1;
        e.freeze()
    });
    (start, end)
}

/// The object key an object record key names, given its bucket.
pub fn key_of_object<'a>(bucket: &str, record: &'a [u8]) -> Option<&'a str> {
    let rest = record
        .strip_prefix(&[OBJECT_PREFIX])?
        .strip_prefix(bucket.as_bytes())?
        .strip_prefix(&[0])?;
    std::str::from_utf8(rest).ok()
}

/// The first key after every key that starts with `prefix` (`None`: no such key).
pub fn prefix_end(prefix: &[u8]) -> Option<Bytes> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.last_mut() {
        if *last < 0xff {
            *last += 1;
            return Some(Bytes::from(end));
        }
        end.pop();
    }
    None
}

/// A new body version: its creation time in milliseconds above 64 random bits, so
/// a chunk's key tells its age (the orphan-chunk collector spares young chunks).
pub fn new_version(now_ms: u64) -> u128 {
    (u128::from(now_ms) << 64) | u128::from(rand::random::<u64>())
}

/// When `version` was created, in milliseconds (meaningless for versions made before
/// versions carried their time: those read as far in the future, so are never old).
pub fn version_time_ms(version: u128) -> u64 {
    (version >> 64) as u64
}

/// `[start, end)` of each span of chunk keys: small (and older large) chunks, and large
/// chunks.
pub fn chunk_bounds() -> [(Bytes, Bytes); 2] {
    [
        (
            Bytes::from_static(&[CHUNK_PREFIX]),
            Bytes::from_static(&[CHUNK_PREFIX + 1]),
        ),
        (
            Bytes::from_static(&[LARGE_CHUNK_PREFIX]),
            Bytes::from_static(&[LARGE_CHUNK_PREFIX + 1]),
        ),
    ]
}

/// `[start, end)` of every object record, in every bucket.
pub fn all_object_bounds() -> (Bytes, Bytes) {
    (
        Bytes::from_static(&[OBJECT_PREFIX]),
        Bytes::from_static(&[OBJECT_PREFIX + 1]),
    )
}

/// `[start, end)` of every part record, of every upload.
pub fn all_part_bounds() -> (Bytes, Bytes) {
    (
        Bytes::from_static(&[PART_PREFIX]),
        Bytes::from_static(&[PART_PREFIX + 1]),
    )
}

/// The body version a chunk key names.
pub fn version_of_chunk(key: &[u8]) -> Option<u128> {
    let rest = key
        .strip_prefix(&[CHUNK_PREFIX])
        .or_else(|| key.strip_prefix(&[LARGE_CHUNK_PREFIX]))?;
    if rest.len() != 4 + 16 + 4 {
        return None;
    }
    Some(u128::from_be_bytes(rest.get(4..20)?.try_into().ok()?))
}

/// Where the orphan-chunk collector notes when a sweep last finished (any gateway's).
pub fn chunk_sweep_key() -> Bytes {
    Bytes::from_static(b"Mchunk-sweep")
}

/// Where the lifecycle sweep notes when it last finished (any gateway's).
pub fn lifecycle_sweep_key() -> Bytes {
    Bytes::from_static(b"Mlifecycle-sweep")
}

const LIFECYCLE_PREFIX: u8 = b'L';

/// Where a bucket's lifecycle rules are kept.
pub fn lifecycle_key(bucket: &str) -> Bytes {
    let mut k = BytesMut::with_capacity(1 + bucket.len());
    k.put_u8(LIFECYCLE_PREFIX);
    k.put_slice(bucket.as_bytes());
    k.freeze()
}

/// Where chunk `index` of body version `version` lives (`large`: it holds at least
/// [`LARGE_CHUNK_BYTES_MIN`]): a hash first, so consecutive chunks (and concurrent
/// uploads) land on different ranges.
pub fn chunk_key(version: u128, index: u32, large: bool) -> Bytes {
    chunk_key_under(
        if large {
            LARGE_CHUNK_PREFIX
        } else {
            CHUNK_PREFIX
        },
        version,
        index,
    )
}

/// Whether `key` is a large chunk's.
pub fn is_large_chunk_key(key: &[u8]) -> bool {
    key.first() == Some(&LARGE_CHUNK_PREFIX) && version_of_chunk(key).is_some()
}

/// Where a large chunk lived when it was written before large chunks had their own
/// prefix: reads that miss a large chunk look there too.
pub fn legacy_chunk_key(version: u128, index: u32) -> Bytes {
    chunk_key_under(CHUNK_PREFIX, version, index)
}

fn chunk_key_under(prefix: u8, version: u128, index: u32) -> Bytes {
    let mut h = crc32fast::Hasher::new();
    h.update(&version.to_be_bytes());
    h.update(&index.to_be_bytes());
    let mut k = BytesMut::with_capacity(1 + 4 + 16 + 4);
    k.put_u8(prefix);
    k.put_u32(h.finalize());
    k.put_u128(version);
    k.put_u32(index);
    k.freeze()
}

/// Bytes a stored chunk has past its data: the crc32.
pub const CHUNK_SEAL_BYTES: usize = 4;

/// A chunk as stored: its bytes followed by their crc32.
pub fn seal_chunk(data: &[u8]) -> Bytes {
    let mut v = BytesMut::with_capacity(data.len() + CHUNK_SEAL_BYTES);
    v.put_slice(data);
    seal_chunk_in_place(v)
}

/// [`seal_chunk`] without a copy when `data` has room for the checksum.
pub fn seal_chunk_in_place(mut data: BytesMut) -> Bytes {
    let crc = crc32fast::hash(&data);
    data.put_u32(crc);
    data.freeze()
}

/// Checks a stored chunk's crc32 and returns its bytes.
pub fn open_chunk(mut stored: Bytes) -> Result<Bytes, String> {
    if stored.len() < 4 {
        return Err(format!("chunk of {} bytes has no checksum", stored.len()));
    }
    let crc_at = stored.len() - 4;
    let expected = u32::from_be_bytes(stored[crc_at..].try_into().expect("four bytes"));
    stored.truncate(crc_at);
    let actual = crc32fast::hash(&stored);
    if expected != actual {
        return Err(format!(
            "chunk checksum mismatch: stored {expected:#010x}, data {actual:#010x}"
        ));
    }
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_chunk_key_tells_its_version_and_age() {
        let v = new_version(1_700_000_000_123);
        assert_eq!(version_time_ms(v), 1_700_000_000_123);
        assert_ne!(
            new_version(5),
            new_version(5),
            "versions of one moment differ"
        );
        let [small_span, large_span] = chunk_bounds();
        for (large, span) in [(false, &small_span), (true, &large_span)] {
            let key = chunk_key(v, 7, large);
            assert_eq!(version_of_chunk(&key), Some(v));
            assert!(span.0 <= key && key < span.1);
        }
        let key = chunk_key(v, 7, false);
        assert!(is_large_chunk_key(&chunk_key(v, 7, true)));
        assert!(!is_large_chunk_key(&key));
        assert!(!is_large_chunk_key(&legacy_chunk_key(v, 7)));
        assert_eq!(version_of_chunk(&legacy_chunk_key(v, 7)), Some(v));
        assert_eq!(version_of_chunk(&object_key("b", "k")), None);
        assert_eq!(version_of_chunk(&key[..key.len() - 1]), None);
    }

    #[test]
    fn bucket_records_written_before_acls_read_as_private() {
        #[derive(Serialize)]
        struct Old {
            created_ms: u64,
        }
        let old = postcard::to_stdvec(&Old { created_ms: 42 }).unwrap();
        assert_eq!(
            BucketMeta::decode(&old).unwrap(),
            BucketMeta {
                created_ms: 42,
                public_read: false
            }
        );
        let new = BucketMeta {
            created_ms: 7,
            public_read: true,
        };
        assert_eq!(BucketMeta::decode(&new.encode()).unwrap(), new);
        assert!(BucketMeta::decode(b"").is_err());
    }

    proptest! {
        #[test]
        fn object_keys_order_by_bucket_then_key(b1 in "[a-z]{3,8}", k1 in "[ -~]{0,20}", b2 in "[a-z]{3,8}", k2 in "[ -~]{0,20}") {
            let (o1, o2) = (object_key(&b1, &k1), object_key(&b2, &k2));
            prop_assert_eq!((b1.as_str(), k1.as_str()).cmp(&(b2.as_str(), k2.as_str())), o1.cmp(&o2));
            prop_assert_eq!(key_of_object(&b1, &o1), Some(k1.as_str()));
        }

        #[test]
        fn prefix_bounds_hold_exactly_the_prefixed_keys(bucket in "[a-z]{3,8}", prefix in "[a-c/]{0,4}", key in "[a-c/]{0,6}") {
            let (start, end) = object_bounds(&bucket, &prefix);
            let k = object_key(&bucket, &key);
            prop_assert_eq!(k >= start && k < end, key.starts_with(&prefix));
        }

        #[test]
        fn chunks_round_trip_and_any_flip_is_caught(data in proptest::collection::vec(any::<u8>(), 0..300), flip in any::<usize>()) {
            let sealed = seal_chunk(&data);
            prop_assert_eq!(open_chunk(sealed.clone()).unwrap(), Bytes::from(data.clone()));
            let mut bad = sealed.to_vec();
            let bit = flip % (bad.len() * 8);
            bad[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(open_chunk(Bytes::from(bad)).is_err());
        }
    }

    #[test]
    fn chunk_keys_spread_and_differ() {
        let a = chunk_key(7, 0, true);
        let b = chunk_key(7, 1, true);
        assert_ne!(a[1..5], b[1..5], "consecutive chunks hash apart");
        assert_ne!(chunk_key(7, 0, true), chunk_key(8, 0, true));
        assert_ne!(chunk_key(7, 0, true), chunk_key(7, 0, false));
        assert_eq!(legacy_chunk_key(7, 0), chunk_key(7, 0, false));
    }

    #[test]
    fn large_chunks_sort_above_every_other_record() {
        let [(_, small_end), (large_start, _)] = chunk_bounds();
        let others = [
            bucket_key("zzz"),
            object_key("zzz", "\u{10ffff}"),
            upload_key("zzz", "k", "u"),
            part_key("u", u32::MAX),
            chunk_sweep_key(),
            small_end,
            crate::keys::record_key("zzz"),
        ];
        for other in others {
            assert!(other < large_start, "{other:?} sorts below large chunks");
        }
    }

    #[test]
    fn a_runs_chunks_are_large_unless_a_short_last_one() {
        let seg = |size, chunk_bytes| Segment {
            version: 1,
            count: 0,
            size,
            chunk_bytes,
        };
        let four = 4 << 20;
        let run = seg(3 * four as u64 + 5, four);
        assert!((0..3).all(|i| run.chunk_is_large(i) && run.chunk_len(i) == four as u64));
        assert_eq!(run.chunk_len(3), 5);
        assert!(!run.chunk_is_large(3));
        // A last chunk of 1 MiB or more is large too; so is every legacy 1 MiB chunk.
        let run = seg(four as u64 + (1 << 20), four);
        assert!(run.chunk_is_large(1));
        assert!(!seg((1 << 20) - 1, four).chunk_is_large(0));
        let legacy = seg(3 << 20, LEGACY_CHUNK_BYTES);
        assert!((0..3).all(|i| legacy.chunk_is_large(i)));
        assert!(!seg(10, four).chunk_is_large(0));
    }

    #[test]
    fn bodies_recorded_before_chunk_sizes_read_as_legacy_chunks() {
        #[derive(Serialize)]
        struct OldMeta {
            size: u64,
            etag: String,
            content_type: Option<String>,
            last_modified_ms: u64,
            user_metadata: Vec<(String, String)>,
            body: OldBody,
        }
        #[derive(Serialize)]
        #[allow(dead_code)]
        enum OldBody {
            Inline(Bytes),
            Chunks { version: u128, count: u32 },
            Parts(Vec<(u128, u32, u64)>),
        }
        let old = |body| {
            let meta = OldMeta {
                size: 3 << 20,
                etag: "e".into(),
                content_type: None,
                last_modified_ms: 1,
                user_metadata: vec![("a".into(), "b".into())],
                body,
            };
            let bytes = postcard::to_stdvec(&meta).unwrap();
            let decoded = ObjectMeta::decode(&bytes).unwrap();
            assert_eq!(encode_legacy_object_record(&decoded), bytes);
            decoded
        };
        let meta = old(OldBody::Chunks {
            version: 9,
            count: 3,
        });
        assert_eq!(meta.user_metadata, vec![("a".into(), "b".into())]);
        assert_eq!(
            meta.body,
            Body::Chunks {
                version: 9,
                count: 3,
                chunk_bytes: LEGACY_CHUNK_BYTES
            }
        );
        let meta = old(OldBody::Parts(vec![(9, 2, 2 << 20), (10, 1, 1 << 20)]));
        assert_eq!(
            meta.body.segments(meta.size)[1],
            Segment {
                version: 10,
                count: 1,
                size: 1 << 20,
                chunk_bytes: LEGACY_CHUNK_BYTES
            }
        );
        // New records keep their chunk size.
        let mut new = meta.clone();
        new.body = Body::Chunks {
            version: 9,
            count: 1,
            chunk_bytes: CHUNK_BYTES as u32,
        };
        assert_eq!(ObjectMeta::decode(&new.encode()).unwrap(), new);
        new.body = Body::Parts(new.body.segments(3 << 20));
        assert_eq!(ObjectMeta::decode(&new.encode()).unwrap(), new);

        #[derive(Serialize)]
        struct OldPart {
            size: u64,
            etag: String,
            version: u128,
            count: u32,
            last_modified_ms: u64,
        }
        let bytes = postcard::to_stdvec(&OldPart {
            size: 5 << 20,
            etag: "p".into(),
            version: 4,
            count: 5,
            last_modified_ms: 2,
        })
        .unwrap();
        let part = PartMeta::decode(&bytes).unwrap();
        assert_eq!((part.count, part.chunk_bytes), (5, LEGACY_CHUNK_BYTES));
        let part = PartMeta {
            chunk_bytes: CHUNK_BYTES as u32,
            ..part
        };
        assert_eq!(PartMeta::decode(&part.encode()).unwrap(), part);
        assert!(PartMeta::decode(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn other_buckets_are_outside_a_buckets_bounds() {
        let (start, end) = object_bounds("abc", "");
        assert!(object_key("abcd", "x") >= end || object_key("abcd", "x") < start);
        assert!(object_key("abc", "\u{10FFFF}") < end);
    }
}
