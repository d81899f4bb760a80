//! Conditions and byte ranges of S3 requests (pure): If-Match and friends, `Range`-like
//! selections by copy-source range or part number.

use std::ops::Range;

use s3s::dto::{ETagCondition, Timestamp};
use s3s::{s3_error, S3Result};

use crate::layout::{Body, ObjectMeta};

/// Whole seconds, as HTTP dates carry them.
fn modified_secs(meta: &ObjectMeta) -> u64 {
    meta.last_modified_ms / 1000
}

fn ts_secs(ts: &Timestamp) -> u64 {
    let odt: time::OffsetDateTime = ts.clone().into();
    odt.unix_timestamp().max(0) as u64
}

pub fn etag_matches(cond: &ETagCondition, etag: &str) -> bool {
    match cond {
        ETagCondition::Any => true,
        ETagCondition::ETag(e) => e.value() == etag,
    }
}

/// Applies If-Match / If-None-Match / If-(Un)Modified-Since to a GET or HEAD.
pub fn check_preconditions(
    meta: &ObjectMeta,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
    if_modified_since: Option<&Timestamp>,
    if_unmodified_since: Option<&Timestamp>,
) -> S3Result<()> {
    if let Some(c) = if_match {
        if !etag_matches(c, &meta.etag) {
            return Err(s3_error!(
                PreconditionFailed,
                "If-Match does not match the object's ETag"
            ));
        }
    } else if let Some(t) = if_unmodified_since {
        if modified_secs(meta) > ts_secs(t) {
            return Err(s3_error!(
                PreconditionFailed,
                "the object was modified since then"
            ));
        }
    }
    if let Some(c) = if_none_match {
        if etag_matches(c, &meta.etag) {
            return Err(s3_error!(NotModified));
        }
    } else if let Some(t) = if_modified_since {
        if modified_secs(meta) <= ts_secs(t) {
            return Err(s3_error!(NotModified));
        }
    }
    Ok(())
}

/// The bytes `x-amz-copy-source-range: bytes=FIRST-LAST` names (inclusive, both given),
/// or the whole object.
pub fn copy_range(range: Option<&str>, size: u64) -> S3Result<Range<u64>> {
    let Some(range) = range else {
        return Ok(0..size);
    };
    let invalid = || {
        let mut e = s3_error!(
            InvalidArgument,
            "x-amz-copy-source-range must be bytes=FIRST-LAST within the source's {size} bytes"
        );
        e.set_status_code(http::StatusCode::BAD_REQUEST);
        e
    };
    let (first, last) = range
        .trim()
        .strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
        .ok_or_else(invalid)?;
    let first: u64 = first.trim().parse().map_err(|_| invalid())?;
    let last: u64 = last.trim().parse().map_err(|_| invalid())?;
    if first > last || last >= size {
        return Err(invalid());
    }
    Ok(first..last + 1)
}

/// The byte range of part `n` (1-based) of an object; a simple object is one part.
pub fn part_range(meta: &ObjectMeta, n: i32) -> S3Result<Range<u64>> {
    let parts = match &meta.body {
        Body::Parts(parts) => parts.iter().map(|p| p.size).collect::<Vec<_>>(),
        _ => vec![meta.size],
    };
    let index = usize::try_from(n)
        .ok()
        .filter(|&i| i >= 1 && i <= parts.len())
        .ok_or_else(|| {
            let mut e = s3_error!(InvalidRange, "the object has {} part(s)", parts.len());
            e.set_status_code(http::StatusCode::RANGE_NOT_SATISFIABLE);
            e
        })?;
    let start: u64 = parts[..index - 1].iter().sum();
    Ok(start..start + parts[index - 1])
}

pub fn parts_count(meta: &ObjectMeta) -> Option<i32> {
    match &meta.body {
        Body::Parts(parts) => Some(parts.len() as i32),
        _ => None,
    }
}
