//! Who may do what: signed requests (s3s has verified their signature against a key the
//! cluster knows) may do anything; anonymous ones may only read buckets marked
//! public-read (canned ACL), and only with read operations.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use s3s::access::{S3Access, S3AccessContext};
use s3s::path::S3Path;
use s3s::{s3_error, S3Result};

use crate::objects::ObjectStore;

/// How long a bucket's public flag is trusted before it is read again.
const PUBLIC_CACHE_TTL: Duration = Duration::from_secs(2);

/// Most buckets whose flag is cached; past it the cache starts over (anonymous callers
/// choose the names asked for).
const PUBLIC_CACHE_MAX: usize = 10_000;

/// What an anonymous caller may do on a public-read bucket.
const ANONYMOUS_OPS: &[&str] = &[
    "GetObject",
    "HeadObject",
    "HeadBucket",
    "ListObjects",
    "ListObjectsV2",
    "GetBucketLocation",
];

pub struct PublicReadAccess {
    objects: ObjectStore,
    cache: Mutex<HashMap<String, (bool, Instant)>>,
}

impl PublicReadAccess {
    pub fn new(objects: ObjectStore) -> Self {
        PublicReadAccess {
            objects,
            cache: Mutex::new(HashMap::new()),
        }
    }

    async fn is_public(&self, bucket: &str) -> S3Result<bool> {
        let cached = self
            .cache
            .lock()
            .expect("public cache lock")
            .get(bucket)
            .copied();
        if let Some((public, at)) = cached {
            if at.elapsed() < PUBLIC_CACHE_TTL {
                return Ok(public);
            }
        }
        let public = self
            .objects
            .bucket(bucket)
            .await
            .map_err(|e| s3_error!(ServiceUnavailable, "bucket lookup: {}", e))?
            .is_some_and(|b| b.public_read);
        let mut cache = self.cache.lock().expect("public cache lock");
        if cache.len() >= PUBLIC_CACHE_MAX {
            cache.clear();
        }
        cache.insert(bucket.to_string(), (public, Instant::now()));
        Ok(public)
    }
}

#[async_trait::async_trait]
impl S3Access for PublicReadAccess {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        if cx.credentials().is_some() {
            return Ok(());
        }
        let bucket = match cx.s3_path() {
            S3Path::Bucket { bucket } | S3Path::Object { bucket, .. } => bucket.to_string(),
            S3Path::Root => return Err(s3_error!(AccessDenied, "a signature is required")),
        };
        if ANONYMOUS_OPS.contains(&cx.s3_op().name()) && self.is_public(&bucket).await? {
            return Ok(());
        }
        Err(s3_error!(
            AccessDenied,
            "a signature is required (the bucket is not public-read, or the operation writes)"
        ))
    }
}
