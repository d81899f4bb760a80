//! Gateway errors and their one mapping to S3 error codes.

use s3s::{S3Error, S3ErrorCode};
use shale_rpc::client::ClientError;
use shale_rpc::KvError;

/// What an object operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum GwError {
    #[error("the bucket does not exist")]
    NoSuchBucket,
    #[error("the key does not exist")]
    NoSuchKey,
    #[error("the bucket already exists and is yours")]
    BucketExists,
    #[error("the bucket is not empty")]
    BucketNotEmpty,
    #[error("the Content-MD5 does not match the body")]
    BadDigest,
    #[error("the body does not match its {header}")]
    ChecksumMismatch { header: &'static str },
    #[error("the request promised a {header} trailer and sent none")]
    ChecksumMissing { header: &'static str },
    #[error("Content-MD5 is not a base64 MD5 digest")]
    InvalidDigest,
    #[error("the object is larger than {max} bytes")]
    EntityTooLarge { max: u64 },
    #[error("the request body ended early: {0}")]
    IncompleteBody(String),
    #[error("the upload does not exist (it was completed or aborted, or never started)")]
    NoSuchUpload,
    #[error("part {0} was not uploaded or its ETag does not match")]
    InvalidPart(u32),
    #[error("parts must be listed in ascending order of part number")]
    InvalidPartOrder,
    #[error("part {part} is {size} bytes; every part but the last must be at least {min}")]
    EntityTooSmall { part: u32, size: u64, min: u64 },
    #[error("part numbers run from 1 to 10000")]
    InvalidPartNumber,
    #[error("the key is {len} bytes; keys are at most {max}")]
    KeyTooLong { len: usize, max: usize },
    #[error("the body took longer than the gateway allows an upload")]
    RequestTimeout,
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("precondition failed: {0}")]
    PreconditionFailed(String),
    #[error("the object kept changing under a conditional write; try again")]
    Contended,
    #[error("cluster: {0}")]
    Cluster(#[from] ClientError),
}

impl From<GwError> for S3Error {
    fn from(e: GwError) -> S3Error {
        let code = match &e {
            GwError::NoSuchBucket => S3ErrorCode::NoSuchBucket,
            GwError::NoSuchKey => S3ErrorCode::NoSuchKey,
            GwError::BucketExists => S3ErrorCode::BucketAlreadyOwnedByYou,
            GwError::BucketNotEmpty => S3ErrorCode::BucketNotEmpty,
            GwError::BadDigest => S3ErrorCode::BadDigest,
            GwError::InvalidDigest => S3ErrorCode::InvalidDigest,
            GwError::ChecksumMismatch { .. } => S3ErrorCode::BadDigest,
            GwError::ChecksumMissing { .. } => S3ErrorCode::InvalidRequest,
            GwError::EntityTooLarge { .. } => S3ErrorCode::EntityTooLarge,
            GwError::IncompleteBody(_) => S3ErrorCode::IncompleteBody,
            GwError::NoSuchUpload => S3ErrorCode::NoSuchUpload,
            GwError::InvalidPart(_) => S3ErrorCode::InvalidPart,
            GwError::InvalidPartOrder => S3ErrorCode::InvalidPartOrder,
            GwError::EntityTooSmall { .. } => S3ErrorCode::EntityTooSmall,
            GwError::InvalidPartNumber => S3ErrorCode::InvalidArgument,
            GwError::RequestTimeout => S3ErrorCode::RequestTimeout,
            GwError::KeyTooLong { .. } => S3ErrorCode::KeyTooLongError,
            GwError::Corrupt(_) => S3ErrorCode::InternalError,
            GwError::PreconditionFailed(_) => S3ErrorCode::PreconditionFailed,
            GwError::Contended => S3ErrorCode::SlowDown,
            GwError::Cluster(ClientError::Unavailable { .. }) => S3ErrorCode::SlowDown,
            // Stores low on disk space take no new data until space is freed or
            // placement moves data away: a 503 clients retry later.
            GwError::Cluster(ClientError::Kv(KvError::NoSpace { .. })) => {
                S3ErrorCode::ServiceUnavailable
            }
            GwError::Cluster(_) => S3ErrorCode::InternalError,
        };
        if matches!(e, GwError::Corrupt(_) | GwError::Cluster(_)) {
            tracing::warn!(error = %e, "request failed");
        }
        S3Error::with_message(code, e.to_string())
    }
}
