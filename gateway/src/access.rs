//! Who may do what: signed requests (s3s has verified their signature against a key the
//! cluster knows) may do anything; anonymous ones may only read buckets marked
//! public-read (canned ACL), and only with read operations.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use s3s::access::{S3Access, S3AccessContext};
use s3s::dto::{
    BucketCannedACL, GetBucketAclOutput, Grant, Grantee, Owner, Permission, PutBucketAclInput, Type,
};
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

/// The canonical id Shale gives the one owner of every bucket.
const OWNER_ID: &str = "shale";

/// The grantee S3 names for everyone, signed or not.
const ALL_USERS: &str = "http://acs.amazonaws.com/groups/global/AllUsers";

/// Whether a canned ACL makes a bucket public-read; ACLs Shale does not keep are refused.
pub fn public_read(acl: Option<&BucketCannedACL>) -> S3Result<bool> {
    match acl.map(BucketCannedACL::as_str) {
        None | Some(BucketCannedACL::PRIVATE) => Ok(false),
        Some(BucketCannedACL::PUBLIC_READ) => Ok(true),
        Some(other) => Err(s3_error!(
            NotImplemented,
            "canned ACL {other:?} is not supported (private or public-read)"
        )),
    }
}

/// The public flag a PutBucketAcl asks for; only canned ACLs are kept.
pub fn canned_public_read(input: &PutBucketAclInput) -> S3Result<bool> {
    if input.access_control_policy.is_some()
        || input.grant_full_control.is_some()
        || input.grant_read.is_some()
        || input.grant_read_acp.is_some()
        || input.grant_write.is_some()
        || input.grant_write_acp.is_some()
    {
        return Err(s3_error!(
            NotImplemented,
            "only canned ACLs (x-amz-acl: private or public-read) are supported"
        ));
    }
    public_read(input.acl.as_ref())
}

/// A bucket's ACL as S3 grants: the owner's full control, and everyone's read when public.
pub fn bucket_acl(public_read: bool) -> GetBucketAclOutput {
    let owner = Owner {
        display_name: Some(OWNER_ID.into()),
        id: Some(OWNER_ID.into()),
    };
    let mut grants = vec![Grant {
        grantee: Some(Grantee {
            display_name: owner.display_name.clone(),
            email_address: None,
            id: owner.id.clone(),
            type_: Type::from_static(Type::CANONICAL_USER),
            uri: None,
        }),
        permission: Some(Permission::from_static(Permission::FULL_CONTROL)),
    }];
    if public_read {
        grants.push(Grant {
            grantee: Some(Grantee {
                display_name: None,
                email_address: None,
                id: None,
                type_: Type::from_static(Type::GROUP),
                uri: Some(ALL_USERS.into()),
            }),
            permission: Some(Permission::from_static(Permission::READ)),
        });
    }
    GetBucketAclOutput {
        grants: Some(grants),
        owner: Some(owner),
    }
}
