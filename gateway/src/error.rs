//! Gateway errors and their one mapping to S3 error codes.

use s3s::{S3Error, S3ErrorCode};
use shale_rpc::client::ClientError;

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
    #[error("Content-MD5 is not a base64 MD5 digest")]
    InvalidDigest,
    #[error("the object is larger than {max} bytes")]
    EntityTooLarge { max: u64 },
    #[error("the request body ended early: {0}")]
    IncompleteBody(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
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
            GwError::EntityTooLarge { .. } => S3ErrorCode::EntityTooLarge,
            GwError::IncompleteBody(_) => S3ErrorCode::IncompleteBody,
            GwError::Corrupt(_) => S3ErrorCode::InternalError,
            GwError::Cluster(ClientError::Unavailable { .. }) => S3ErrorCode::SlowDown,
            GwError::Cluster(_) => S3ErrorCode::InternalError,
        };
        if matches!(e, GwError::Corrupt(_) | GwError::Cluster(_)) {
            tracing::warn!(error = %e, "request failed");
        }
        S3Error::with_message(code, e.to_string())
    }
}
