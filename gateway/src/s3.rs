//! The S3 operations, as s3s hands them over: each turns into object store calls.

use std::time::{Duration, UNIX_EPOCH};

use s3s::dto::{
    AbortMultipartUploadInput, AbortMultipartUploadOutput, Bucket, CommonPrefix,
    CompleteMultipartUploadInput, CompleteMultipartUploadOutput, CopyObjectInput, CopyObjectOutput,
    CopyObjectResult, CopyPartResult, CopySource, CreateBucketInput, CreateBucketOutput,
    CreateMultipartUploadInput, CreateMultipartUploadOutput, DeleteBucketInput, DeleteBucketOutput,
    DeleteObjectInput, DeleteObjectOutput, DeleteObjectsInput, DeleteObjectsOutput, DeletedObject,
    ETag, ETagCondition, GetBucketAclInput, GetBucketAclOutput, GetBucketLocationInput,
    GetBucketLocationOutput, GetObjectInput, GetObjectOutput, HeadBucketInput, HeadBucketOutput,
    HeadObjectInput, HeadObjectOutput, ListBucketsInput, ListBucketsOutput,
    ListMultipartUploadsInput, ListMultipartUploadsOutput, ListObjectsInput, ListObjectsOutput,
    ListObjectsV2Input, ListObjectsV2Output, ListPartsInput, ListPartsOutput, MetadataDirective,
    MultipartUpload, Part, PutBucketAclInput, PutBucketAclOutput, PutObjectInput, PutObjectOutput,
    StreamingBlob, Timestamp, UploadPartCopyInput, UploadPartCopyOutput, UploadPartInput,
    UploadPartOutput,
};
use s3s::{s3_error, S3Request, S3Response, S3Result, S3};

use crate::access::{bucket_acl, canned_public_read, public_read};
use crate::checksum::Claims;
use crate::conditions::{check_preconditions, copy_range, etag_matches, part_range, parts_count};
use crate::layout::ObjectMeta;
use crate::objects::{start_after_token, Condition, Incoming, Listed, ObjectStore};

/// Most keys one listing page returns (S3's own limit).
const LIST_KEYS_MAX: i32 = 1000;

/// The S3 face of an object store.
pub struct ShaleS3 {
    objects: ObjectStore,
}

impl ShaleS3 {
    pub fn new(objects: ObjectStore) -> Self {
        ShaleS3 { objects }
    }

    /// The object a copy reads, once its `x-amz-copy-source-if-*` conditions hold.
    async fn copy_source(
        &self,
        source: &CopySource,
        if_match: Option<&ETagCondition>,
        if_none_match: Option<&ETagCondition>,
    ) -> S3Result<(String, String, ObjectMeta)> {
        let (bucket, key) = match source {
            CopySource::Bucket { bucket, key, .. } => (bucket.to_string(), key.to_string()),
            _ => {
                return Err(s3_error!(
                    NotImplemented,
                    "only bucket/key copy sources are supported"
                ))
            }
        };
        let src = self.objects.head(&bucket, &key).await?;
        if if_match.is_some_and(|c| !etag_matches(c, &src.etag)) {
            return Err(s3_error!(
                PreconditionFailed,
                "x-amz-copy-source-if-match does not match"
            ));
        }
        if if_none_match.is_some_and(|c| etag_matches(c, &src.etag)) {
            return Err(s3_error!(
                PreconditionFailed,
                "x-amz-copy-source-if-none-match matches"
            ));
        }
        Ok((bucket, key, src))
    }

    /// An object's metadata, once the GET/HEAD preconditions hold for it.
    async fn checked_head(
        &self,
        bucket: &str,
        key: &str,
        if_match: Option<&ETagCondition>,
        if_none_match: Option<&ETagCondition>,
        if_modified_since: Option<&Timestamp>,
        if_unmodified_since: Option<&Timestamp>,
    ) -> S3Result<ObjectMeta> {
        let meta = self.objects.head(bucket, key).await?;
        check_preconditions(
            &meta,
            if_match,
            if_none_match,
            if_modified_since,
            if_unmodified_since,
        )?;
        Ok(meta)
    }
}

/// The condition a write's `If-None-Match` and `If-Match` headers set (S3 takes only `*`
/// for `If-None-Match` on writes; anything else there is ignored, as before).
fn write_condition(
    if_none_match: Option<&ETagCondition>,
    if_match: Option<&ETagCondition>,
) -> Condition {
    match (if_none_match, if_match) {
        (Some(ETagCondition::Any), _) => Condition::Absent,
        (_, Some(ETagCondition::Any)) => Condition::Exists,
        (_, Some(ETagCondition::ETag(e))) => Condition::ETag(e.value().to_string()),
        _ => Condition::None,
    }
}

fn timestamp(ms: u64) -> Timestamp {
    Timestamp::from(UNIX_EPOCH + Duration::from_millis(ms))
}

fn user_metadata(meta: &ObjectMeta) -> Option<s3s::dto::Metadata> {
    (!meta.user_metadata.is_empty()).then(|| meta.user_metadata.iter().cloned().collect())
}

#[async_trait::async_trait]
impl S3 for ShaleS3 {
    async fn list_buckets(
        &self,
        _req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let buckets = self
            .objects
            .list_buckets()
            .await?
            .into_iter()
            .map(|(name, meta)| Bucket {
                name: Some(name),
                creation_date: Some(timestamp(meta.created_ms)),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(buckets),
            ..Default::default()
        }))
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let public_read = public_read(req.input.acl.as_ref())?;
        self.objects
            .create_bucket(&req.input.bucket, public_read)
            .await?;
        Ok(S3Response::new(CreateBucketOutput {
            location: Some(format!("/{}", req.input.bucket)),
        }))
    }

    async fn put_bucket_acl(
        &self,
        req: S3Request<PutBucketAclInput>,
    ) -> S3Result<S3Response<PutBucketAclOutput>> {
        let public = canned_public_read(&req.input)?;
        self.objects
            .set_public_read(&req.input.bucket, public)
            .await?;
        Ok(S3Response::new(PutBucketAclOutput::default()))
    }

    async fn put_bucket_lifecycle_configuration(
        &self,
        req: S3Request<s3s::dto::PutBucketLifecycleConfigurationInput>,
    ) -> S3Result<S3Response<s3s::dto::PutBucketLifecycleConfigurationOutput>> {
        use crate::lifecycle::Refused;
        use s3s::{S3Error, S3ErrorCode};
        let input = req.input;
        let config = input
            .lifecycle_configuration
            .ok_or_else(|| s3_error!(MalformedXML, "no lifecycle configuration"))?;
        let lifecycle = crate::lifecycle::from_s3(config).map_err(|r| match r {
            Refused::Unsupported(m) => S3Error::with_message(S3ErrorCode::NotImplemented, m),
            Refused::Invalid(m) => S3Error::with_message(S3ErrorCode::InvalidArgument, m),
        })?;
        self.objects
            .put_lifecycle(&input.bucket, &lifecycle)
            .await?;
        Ok(S3Response::new(Default::default()))
    }

    async fn get_bucket_lifecycle_configuration(
        &self,
        req: S3Request<s3s::dto::GetBucketLifecycleConfigurationInput>,
    ) -> S3Result<S3Response<s3s::dto::GetBucketLifecycleConfigurationOutput>> {
        match self.objects.lifecycle(&req.input.bucket).await? {
            Some(l) => Ok(S3Response::new(
                s3s::dto::GetBucketLifecycleConfigurationOutput {
                    rules: Some(crate::lifecycle::to_s3(&l)),
                    ..Default::default()
                },
            )),
            None => Err(s3_error!(
                NoSuchLifecycleConfiguration,
                "the bucket has no lifecycle configuration"
            )),
        }
    }

    async fn delete_bucket_lifecycle(
        &self,
        req: S3Request<s3s::dto::DeleteBucketLifecycleInput>,
    ) -> S3Result<S3Response<s3s::dto::DeleteBucketLifecycleOutput>> {
        self.objects.delete_lifecycle(&req.input.bucket).await?;
        Ok(S3Response::new(Default::default()))
    }

    async fn get_bucket_acl(
        &self,
        req: S3Request<GetBucketAclInput>,
    ) -> S3Result<S3Response<GetBucketAclOutput>> {
        let bucket = self.objects.must_bucket(&req.input.bucket).await?;
        Ok(S3Response::new(bucket_acl(bucket.public_read)))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.objects.must_bucket(&req.input.bucket).await?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        self.objects.delete_bucket(&req.input.bucket).await?;
        Ok(S3Response::new(DeleteBucketOutput {}))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.objects.must_bucket(&req.input.bucket).await?;
        Ok(S3Response::new(GetBucketLocationOutput::default()))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let claims = Claims::from_request(&req.headers, req.trailing_headers.clone());
        let input = req.input;
        let condition = write_condition(input.if_none_match.as_ref(), input.if_match.as_ref());
        if condition != Condition::None {
            // Checked now, so a doomed upload is refused before its body is read, and
            // again atomically as the object is published.
            let etag = self.objects.head(&input.bucket, &input.key).await.ok();
            condition.check(etag.as_ref().map(|m| m.etag.as_str()))?;
        }
        let body = input
            .body
            .ok_or_else(|| s3_error!(IncompleteBody, "a PUT needs a body"))?;
        let (body, check) = claims.watch(body);
        let metadata: Vec<(String, String)> = input
            .metadata
            .map(|m| m.into_iter().collect())
            .unwrap_or_default();
        let meta = self
            .objects
            .put(
                &input.bucket,
                &input.key,
                Incoming {
                    body,
                    content_md5: input.content_md5.as_deref(),
                    check,
                },
                input.content_type,
                metadata,
                condition,
            )
            .await?;
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(ETag::Strong(meta.etag)),
            size: Some(meta.size as i64),
            ..Default::default()
        }))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        let meta = self
            .checked_head(
                &input.bucket,
                &input.key,
                input.if_match.as_ref(),
                input.if_none_match.as_ref(),
                input.if_modified_since.as_ref(),
                input.if_unmodified_since.as_ref(),
            )
            .await?;
        let (range, content_range) = match (input.part_number, input.range) {
            (Some(_), Some(_)) => {
                return Err(s3_error!(
                    InvalidRequest,
                    "partNumber and Range cannot be combined"
                ))
            }
            (Some(n), None) => {
                let r = part_range(&meta, n)?;
                let cr = format!(
                    "bytes {}-{}/{}",
                    r.start,
                    r.end.saturating_sub(1),
                    meta.size
                );
                (r, Some(cr))
            }
            (None, Some(r)) => {
                let r = r.check(meta.size)?;
                let cr = format!(
                    "bytes {}-{}/{}",
                    r.start,
                    r.end.saturating_sub(1),
                    meta.size
                );
                (r, Some(cr))
            }
            (None, None) => (0..meta.size, None),
        };
        let parts_count = parts_count(&meta);
        let stream = self.objects.read(&meta, range.start, range.end);
        Ok(S3Response::new(GetObjectOutput {
            body: Some(StreamingBlob::wrap(stream)),
            content_length: Some((range.end - range.start) as i64),
            content_range,
            content_type: meta.content_type.clone(),
            e_tag: Some(ETag::Strong(meta.etag.clone())),
            last_modified: Some(timestamp(meta.last_modified_ms)),
            metadata: user_metadata(&meta),
            accept_ranges: Some("bytes".into()),
            parts_count,
            ..Default::default()
        }))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let input = req.input;
        let meta = self
            .checked_head(
                &input.bucket,
                &input.key,
                input.if_match.as_ref(),
                input.if_none_match.as_ref(),
                input.if_modified_since.as_ref(),
                input.if_unmodified_since.as_ref(),
            )
            .await?;
        Ok(S3Response::new(HeadObjectOutput {
            content_length: Some(match input.part_number {
                Some(n) => {
                    let r = part_range(&meta, n)?;
                    (r.end - r.start) as i64
                }
                None => meta.size as i64,
            }),
            parts_count: parts_count(&meta),
            content_type: meta.content_type.clone(),
            e_tag: Some(ETag::Strong(meta.etag.clone())),
            last_modified: Some(timestamp(meta.last_modified_ms)),
            metadata: user_metadata(&meta),
            accept_ranges: Some("bytes".into()),
            ..Default::default()
        }))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        self.objects
            .delete(&req.input.bucket, &req.input.key)
            .await?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let bucket = req.input.bucket;
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        for obj in req.input.delete.objects {
            match self.objects.delete(&bucket, &obj.key).await {
                Ok(()) => deleted.push(DeletedObject {
                    key: Some(obj.key),
                    ..Default::default()
                }),
                Err(e) => errors.push(s3s::dto::Error {
                    code: Some("InternalError".into()),
                    key: Some(obj.key),
                    message: Some(e.to_string()),
                    ..Default::default()
                }),
            }
        }
        let quiet = req.input.delete.quiet.unwrap_or(false);
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: (!quiet).then_some(deleted),
            errors: Some(errors),
            ..Default::default()
        }))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = req.input;
        let max = input
            .max_keys
            .unwrap_or(LIST_KEYS_MAX)
            .clamp(0, LIST_KEYS_MAX) as usize;
        let prefix = input.prefix.clone().unwrap_or_default();
        let after = input
            .continuation_token
            .clone()
            .or_else(|| input.start_after.as_deref().map(start_after_token));
        let page = if max == 0 {
            crate::objects::ListPage {
                entries: Vec::new(),
                next: None,
            }
        } else {
            self.objects
                .list(
                    &input.bucket,
                    &prefix,
                    input.delimiter.as_deref(),
                    after.as_deref(),
                    max,
                )
                .await?
        };
        let url = input
            .encoding_type
            .as_ref()
            .is_some_and(|e| e.as_str() == "url");
        let (contents, common_prefixes) = split_listing(page.entries, url);
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: input.prefix,
            delimiter: input.delimiter,
            max_keys: Some(max as i32),
            key_count: Some((contents.len() + common_prefixes.len()) as i32),
            continuation_token: input.continuation_token,
            start_after: input.start_after,
            is_truncated: Some(page.next.is_some()),
            next_continuation_token: page.next,
            contents: Some(contents),
            common_prefixes: Some(common_prefixes),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let input = req.input;
        let max = input
            .max_keys
            .unwrap_or(LIST_KEYS_MAX)
            .clamp(0, LIST_KEYS_MAX) as usize;
        let prefix = input.prefix.clone().unwrap_or_default();
        let after = input.marker.as_deref().map(start_after_token);
        let page = self
            .objects
            .list(
                &input.bucket,
                &prefix,
                input.delimiter.as_deref(),
                after.as_deref(),
                max.max(1),
            )
            .await?;
        let truncated = page.next.is_some();
        let url = input
            .encoding_type
            .as_ref()
            .is_some_and(|e| e.as_str() == "url");
        // V1's next marker is the last key or common prefix returned.
        let next_marker = page.entries.last().map(|e| match e {
            Listed::Object { key, .. } => key.clone(),
            Listed::CommonPrefix(p) => p.clone(),
        });
        let (contents, common_prefixes) = split_listing(page.entries, url);
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(input.bucket),
            prefix: input.prefix,
            marker: input.marker,
            delimiter: input.delimiter,
            max_keys: Some(max as i32),
            is_truncated: Some(truncated),
            next_marker: if truncated { next_marker } else { None },
            contents: Some(contents),
            common_prefixes: Some(common_prefixes),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let input = req.input;
        let metadata: Vec<(String, String)> = input
            .metadata
            .map(|m| m.into_iter().collect())
            .unwrap_or_default();
        let upload_id = self
            .objects
            .create_upload(&input.bucket, &input.key, input.content_type, metadata)
            .await?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(upload_id),
            ..Default::default()
        }))
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let claims = Claims::from_request(&req.headers, req.trailing_headers.clone());
        let input = req.input;
        let body = input
            .body
            .ok_or_else(|| s3_error!(IncompleteBody, "a part needs a body"))?;
        let (body, check) = claims.watch(body);
        let part = self
            .objects
            .upload_part(
                &input.bucket,
                &input.key,
                &input.upload_id,
                input.part_number,
                Incoming {
                    body,
                    content_md5: input.content_md5.as_deref(),
                    check,
                },
            )
            .await?;
        Ok(S3Response::new(UploadPartOutput {
            e_tag: Some(ETag::Strong(part.etag)),
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let input = req.input;
        let listed = input
            .multipart_upload
            .and_then(|m| m.parts)
            .unwrap_or_default()
            .into_iter()
            .map(|p| {
                let number = p
                    .part_number
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| s3_error!(InvalidPart, "a part has no number"))?;
                let etag = p.e_tag.map(|e| e.value().to_string()).unwrap_or_default();
                Ok((number, etag))
            })
            .collect::<S3Result<Vec<_>>>()?;
        let condition = write_condition(input.if_none_match.as_ref(), input.if_match.as_ref());
        let meta = self
            .objects
            .complete_upload(
                &input.bucket,
                &input.key,
                &input.upload_id,
                listed,
                &condition,
            )
            .await?;
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            location: Some(format!("/{}/{}", input.bucket, input.key)),
            bucket: Some(input.bucket),
            key: Some(input.key),
            e_tag: Some(ETag::Strong(meta.etag)),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let input = req.input;
        self.objects
            .abort_upload(&input.bucket, &input.key, &input.upload_id)
            .await?;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        let input = req.input;
        let marker = input.part_number_marker.unwrap_or(0).max(0) as u32;
        let max = input.max_parts.unwrap_or(1000).clamp(1, 1000) as usize;
        let all = self
            .objects
            .list_parts(&input.bucket, &input.key, &input.upload_id)
            .await?;
        let mut rest = all.into_iter().filter(|(n, _)| *n > marker).peekable();
        let mut parts = Vec::new();
        while parts.len() < max {
            let Some((n, p)) = rest.next() else { break };
            parts.push(Part {
                part_number: Some(n as i32),
                size: Some(p.size as i64),
                e_tag: Some(ETag::Strong(p.etag)),
                last_modified: Some(timestamp(p.last_modified_ms)),
                ..Default::default()
            });
        }
        let truncated = rest.peek().is_some();
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(input.upload_id),
            max_parts: Some(max as i32),
            is_truncated: Some(truncated),
            next_part_number_marker: if truncated {
                parts.last().and_then(|p| p.part_number)
            } else {
                None
            },
            parts: Some(parts),
            ..Default::default()
        }))
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let input = req.input;
        let prefix = input.prefix.clone().unwrap_or_default();
        let uploads = self
            .objects
            .list_uploads(&input.bucket)
            .await?
            .into_iter()
            .filter(|(key, _, _)| key.starts_with(&prefix))
            .map(|(key, id, started)| MultipartUpload {
                key: Some(key),
                upload_id: Some(id),
                initiated: Some(timestamp(started)),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: input.prefix,
            is_truncated: Some(false),
            uploads: Some(uploads),
            ..Default::default()
        }))
    }

    /// A part cut from an existing object: the source range streams through the gateway.
    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        let input = req.input;
        let (_, _, src) = self
            .copy_source(
                &input.copy_source,
                input.copy_source_if_match.as_ref(),
                input.copy_source_if_none_match.as_ref(),
            )
            .await?;
        let range = copy_range(input.copy_source_range.as_deref(), src.size)?;
        let body = Box::pin(self.objects.read(&src, range.start, range.end));
        let part = self
            .objects
            .upload_part(
                &input.bucket,
                &input.key,
                &input.upload_id,
                input.part_number,
                Incoming::unclaimed(body),
            )
            .await?;
        Ok(S3Response::new(UploadPartCopyOutput {
            copy_part_result: Some(CopyPartResult {
                e_tag: Some(ETag::Strong(part.etag)),
                last_modified: Some(timestamp(part.last_modified_ms)),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    /// Server-side copy: the source streams through the gateway into a new object.
    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let input = req.input;
        let (src_bucket, src_key, src) = self
            .copy_source(
                &input.copy_source,
                input.copy_source_if_match.as_ref(),
                input.copy_source_if_none_match.as_ref(),
            )
            .await?;
        let replace = input
            .metadata_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        if !replace && src_bucket == input.bucket && src_key == input.key {
            return Err(s3_error!(
                InvalidRequest,
                "copying an object onto itself needs x-amz-metadata-directive: REPLACE"
            ));
        }
        let (content_type, metadata) = if replace {
            (
                input.content_type,
                input
                    .metadata
                    .map(|m| m.into_iter().collect())
                    .unwrap_or_default(),
            )
        } else {
            (src.content_type.clone(), src.user_metadata.clone())
        };
        let body = Box::pin(self.objects.read(&src, 0, src.size));
        let meta = self
            .objects
            .put(
                &input.bucket,
                &input.key,
                Incoming::unclaimed(body),
                content_type,
                metadata,
                Condition::None,
            )
            .await?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(ETag::Strong(meta.etag)),
                last_modified: Some(timestamp(meta.last_modified_ms)),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }
}

fn encode_key(key: String, url: bool) -> String {
    if !url {
        return key;
    }
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn split_listing(entries: Vec<Listed>, url: bool) -> (Vec<s3s::dto::Object>, Vec<CommonPrefix>) {
    let mut contents = Vec::new();
    let mut prefixes = Vec::new();
    for e in entries {
        match e {
            Listed::Object { key, meta } => contents.push(s3s::dto::Object {
                key: Some(encode_key(key, url)),
                size: Some(meta.size as i64),
                e_tag: Some(ETag::Strong(meta.etag)),
                last_modified: Some(timestamp(meta.last_modified_ms)),
                ..Default::default()
            }),
            Listed::CommonPrefix(p) => prefixes.push(CommonPrefix {
                prefix: Some(encode_key(p, url)),
            }),
        }
    }
    (contents, prefixes)
}
