//! Buckets, objects, ranges, conditional requests, copies and errors through the SDK.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sdk_buckets_objects_conditions_copies_and_errors() {
    let h = Harness::start(1).await;
    let s3 = &h.s3;
    let b = "sdk-objects";

    // Buckets.
    s3.create_bucket().bucket(b).send().await.unwrap();
    assert_eq!(
        fails(s3.create_bucket().bucket(b).send().await),
        (409, "BucketAlreadyOwnedByYou".into())
    );
    assert_eq!(
        fails(s3.create_bucket().bucket("no_under-scores").send().await),
        (400, "InvalidBucketName".into())
    );
    let buckets = s3.list_buckets().send().await.unwrap();
    assert!(buckets.buckets().iter().any(|x| x.name() == Some(b)));
    s3.head_bucket().bucket(b).send().await.unwrap();
    assert_eq!(
        fails(s3.head_bucket().bucket("absent-bucket").send().await).0,
        404
    );
    s3.get_bucket_location().bucket(b).send().await.unwrap();
    assert_eq!(
        fails(
            s3.put_object()
                .bucket("absent-bucket")
                .key("k")
                .send()
                .await
        ),
        (404, "NoSuchBucket".into())
    );

    // PUT and GET of a chunked object, with content type and user metadata.
    let body = data((3 << 20) + 123, 1);
    let put = s3
        .put_object()
        .bucket(b)
        .key("dir/big.bin")
        .content_type("application/x-test")
        .metadata("colour", "blue")
        .body(ByteStream::from(body.clone()))
        .send()
        .await
        .unwrap();
    let etag = put.e_tag().unwrap().to_string();
    assert_eq!(etag, format!("\"{}\"", hex(&md5(&body))), "ETag is the MD5");
    let got = s3
        .get_object()
        .bucket(b)
        .key("dir/big.bin")
        .send()
        .await
        .unwrap();
    assert_eq!(got.content_type(), Some("application/x-test"));
    assert_eq!(got.content_length(), Some(body.len() as i64));
    assert_eq!(
        got.metadata().unwrap().get("colour").map(String::as_str),
        Some("blue")
    );
    assert_eq!(read(got.body).await, body);
    let head = s3
        .head_object()
        .bucket(b)
        .key("dir/big.bin")
        .send()
        .await
        .unwrap();
    assert_eq!(head.e_tag(), Some(etag.as_str()));
    assert_eq!(head.content_length(), Some(body.len() as i64));

    // Ranges, across a chunk boundary and from the end.
    let get_range = |range: &'static str| s3.get_object().bucket(b).key("dir/big.bin").range(range);
    let got = get_range("bytes=1048000-1049999").send().await.unwrap();
    assert_eq!(
        got.content_range(),
        Some(format!("bytes 1048000-1049999/{}", body.len()).as_str())
    );
    assert_eq!(read(got.body).await, body[1_048_000..1_050_000]);
    let got = get_range("bytes=-500").send().await.unwrap();
    assert_eq!(read(got.body).await, body[body.len() - 500..]);
    assert_eq!(
        fails(get_range("bytes=99999999-").send().await),
        (416, "InvalidRange".into())
    );

    // Conditional GETs.
    let get = || s3.get_object().bucket(b).key("dir/big.bin");
    get().if_match(&etag).send().await.unwrap();
    assert_eq!(
        fails(get().if_match("\"0000\"").send().await),
        (412, "PreconditionFailed".into())
    );
    assert_eq!(fails(get().if_none_match(&etag).send().await).0, 304);
    get().if_none_match("\"0000\"").send().await.unwrap();
    let (past, future) = (
        DateTime::from_secs(now_secs() - 3600),
        DateTime::from_secs(now_secs() + 3600),
    );
    assert_eq!(fails(get().if_modified_since(future).send().await).0, 304);
    get().if_modified_since(past).send().await.unwrap();
    assert_eq!(
        fails(get().if_unmodified_since(past).send().await),
        (412, "PreconditionFailed".into())
    );
    get().if_unmodified_since(future).send().await.unwrap();

    // Conditional PUTs.
    let put_small = |key: &'static str, body: &'static [u8]| {
        s3.put_object()
            .bucket(b)
            .key(key)
            .body(ByteStream::from_static(body))
    };
    assert_eq!(
        fails(
            put_small("dir/big.bin", b"x")
                .if_none_match("*")
                .send()
                .await
        ),
        (412, "PreconditionFailed".into())
    );
    let created = put_small("new", b"first")
        .if_none_match("*")
        .send()
        .await
        .unwrap();
    assert_eq!(
        fails(
            put_small("new", b"second")
                .if_match("\"0000\"")
                .send()
                .await
        ),
        (412, "PreconditionFailed".into())
    );
    put_small("new", b"second")
        .if_match(created.e_tag().unwrap())
        .send()
        .await
        .unwrap();
    let got = s3.get_object().bucket(b).key("new").send().await.unwrap();
    assert_eq!(read(got.body).await, b"second");

    // Content-MD5: a wrong digest stores nothing and keeps the old object.
    let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(md5(d));
    put_small("md5", b"right")
        .content_md5(b64(b"right"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        fails(
            put_small("md5", b"wrong")
                .content_md5(b64(b"other"))
                .send()
                .await
        ),
        (400, "BadDigest".into())
    );
    let got = s3.get_object().bucket(b).key("md5").send().await.unwrap();
    assert_eq!(read(got.body).await, b"right");

    // Copies: metadata copied, or replaced.
    let copied = s3
        .copy_object()
        .bucket(b)
        .key("copy")
        .copy_source(format!("{b}/dir/big.bin"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        copied.copy_object_result().unwrap().e_tag(),
        Some(etag.as_str())
    );
    let head = s3.head_object().bucket(b).key("copy").send().await.unwrap();
    assert_eq!(head.content_type(), Some("application/x-test"));
    assert_eq!(
        head.metadata().unwrap().get("colour").map(String::as_str),
        Some("blue")
    );
    s3.copy_object()
        .bucket(b)
        .key("copy")
        .copy_source(format!("{b}/copy"))
        .metadata_directive(MetadataDirective::Replace)
        .content_type("text/plain")
        .metadata("colour", "red")
        .send()
        .await
        .unwrap();
    let got = s3.get_object().bucket(b).key("copy").send().await.unwrap();
    assert_eq!(got.content_type(), Some("text/plain"));
    assert_eq!(
        got.metadata().unwrap().get("colour").map(String::as_str),
        Some("red")
    );
    assert_eq!(read(got.body).await, body);
    assert_eq!(
        fails(
            s3.copy_object()
                .bucket(b)
                .key("copy")
                .copy_source(format!("{b}/copy"))
                .send()
                .await
        ),
        (400, "InvalidRequest".into())
    );

    // Keys at S3's length limit work; one byte more is refused.
    let longest = "k".repeat(1024);
    s3.put_object()
        .bucket(b)
        .key(&longest)
        .body(ByteStream::from_static(b"long"))
        .send()
        .await
        .unwrap();
    let got = s3
        .get_object()
        .bucket(b)
        .key(&longest)
        .send()
        .await
        .unwrap();
    assert_eq!(read(got.body).await, b"long");
    assert_eq!(
        fails(
            s3.put_object()
                .bucket(b)
                .key("k".repeat(1025))
                .body(ByteStream::from_static(b"x"))
                .send()
                .await
        ),
        (400, "KeyTooLongError".into())
    );

    // A wrong secret is refused.
    let intruder = client(&endpoint(&h.gateways[0]), ACCESS, "not-the-secret");
    assert_eq!(
        fails(intruder.list_buckets().send().await),
        (403, "SignatureDoesNotMatch".into())
    );
    assert_eq!(
        fails(intruder.get_object().bucket(b).key("new").send().await),
        (403, "SignatureDoesNotMatch".into())
    );

    // Deletes: one, then many; a bucket goes only once empty.
    s3.delete_object()
        .bucket(b)
        .key("dir/big.bin")
        .send()
        .await
        .unwrap();
    assert_eq!(
        fails(s3.get_object().bucket(b).key("dir/big.bin").send().await),
        (404, "NoSuchKey".into())
    );
    assert_eq!(
        fails(s3.delete_bucket().bucket(b).send().await),
        (409, "BucketNotEmpty".into())
    );
    let ids = ["copy", "new", "md5", longest.as_str()]
        .iter()
        .map(|k| ObjectIdentifier::builder().key(*k).build().unwrap())
        .collect::<Vec<_>>();
    let deleted = s3
        .delete_objects()
        .bucket(b)
        .delete(Delete::builder().set_objects(Some(ids)).build().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.deleted().len(), 4);
    assert!(deleted.errors().is_empty());
    let left = s3.list_objects_v2().bucket(b).send().await.unwrap();
    assert_eq!(left.key_count(), Some(0));
    s3.delete_bucket().bucket(b).send().await.unwrap();
    assert_eq!(fails(s3.head_bucket().bucket(b).send().await).0, 404);
    h.stop().await;
}

/// Sets every store's disk reserve and waits until each has read its space since.
async fn set_reserve(h: &Harness, bytes: u64, low: bool) {
    for i in 0..3 {
        h.cluster.node(i).unwrap().space().set_reserve(bytes);
    }
    let started = std::time::Instant::now();
    while !(0..3).all(|i| h.cluster.node(i).unwrap().space().is_low() == low) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "stores did not notice"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_low_on_space_answers_503_and_keeps_objects_readable_and_deletable() {
    let h = Harness::start(1).await;
    let s3 = &h.s3;
    let b = "sdk-space";
    s3.create_bucket().bucket(b).send().await.unwrap();
    let big = data((5 << 20) + 9, 3);
    for (key, body) in [("small", b"tiny".to_vec()), ("big", big.clone())] {
        s3.put_object()
            .bucket(b)
            .key(key)
            .body(ByteStream::from(body))
            .send()
            .await
            .unwrap();
    }

    // Every disk below its reserve: new objects are refused with a 503 that says why.
    set_reserve(&h, u64::MAX / 2, true).await;
    for body in [b"more".to_vec(), data(6 << 20, 4)] {
        let refused = s3
            .put_object()
            .bucket(b)
            .key("new")
            .body(ByteStream::from(body))
            .send()
            .await;
        let err = refused.as_ref().expect_err("a put on a full cluster");
        let message = err.message().unwrap_or_default().to_string();
        assert!(message.contains("low on disk space"), "{message}");
        assert_eq!(fails(refused), (503, "ServiceUnavailable".into()));
    }
    assert_eq!(
        fails(s3.head_object().bucket(b).key("new").send().await).0,
        404,
        "a refused put leaves nothing"
    );
    // What is stored reads back whole, and deletes (which free space) work.
    let got = s3.get_object().bucket(b).key("big").send().await.unwrap();
    assert_eq!(read(got.body).await, big);
    s3.delete_object()
        .bucket(b)
        .key("small")
        .send()
        .await
        .unwrap();
    assert_eq!(
        fails(s3.head_object().bucket(b).key("small").send().await).0,
        404
    );

    // Room again: puts work.
    set_reserve(&h, 0, false).await;
    s3.put_object()
        .bucket(b)
        .key("new")
        .body(ByteStream::from(b"more".to_vec()))
        .send()
        .await
        .unwrap();
    h.stop().await;
}

/// Puts `bodies[i]` at `key` from as many clients at once, each with `condition`
/// applied to its request; returns which succeeded and the statuses of the others.
async fn racing_puts(
    h: &Harness,
    bucket: &str,
    key: &str,
    bodies: &[Vec<u8>],
    condition: impl Fn(
        aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder,
    ) -> aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder,
) -> (Vec<usize>, Vec<(u16, String)>) {
    let puts: Vec<_> = bodies
        .iter()
        .map(|body| {
            condition(h.s3.put_object().bucket(bucket).key(key))
                .body(ByteStream::from(body.clone()))
                .send()
        })
        .collect();
    let results = futures::future::join_all(puts).await;
    let mut won = Vec::new();
    let mut lost = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(_) => won.push(i),
            Err(e) => lost.push(fails::<(), _>(Err(e))),
        }
    }
    (won, lost)
}

/// Exactly one of the racing puts won, the others got 412, and the object is the
/// winner's body.
async fn one_won(
    h: &Harness,
    bucket: &str,
    key: &str,
    bodies: &[Vec<u8>],
    (won, lost): (Vec<usize>, Vec<(u16, String)>),
) {
    assert_eq!(won.len(), 1, "winners {won:?}, losers {lost:?}");
    assert!(lost.iter().all(|l| l.0 == 412), "{lost:?}");
    let got = h.s3.get_object().bucket(bucket).key(key).send().await;
    assert_eq!(read(got.unwrap().body).await, bodies[won[0]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_racing_conditional_puts_exactly_one_wins() {
    let h = Harness::start(1).await;
    let b = "sdk-races";
    h.s3.create_bucket().bucket(b).send().await.unwrap();
    // Bodies of a few chunks: each upload takes a while, so the requests overlap.
    let bodies: Vec<Vec<u8>> = (0..8).map(|i| data((2 << 20) + i, i as u8 + 1)).collect();

    // If-None-Match: * creates the object once.
    let outcome = racing_puts(&h, b, "lock", &bodies, |p| p.if_none_match("*")).await;
    one_won(&h, b, "lock", &bodies, outcome).await;

    // If-Match on the current ETag: one of the writers that read it replaces it.
    let etag =
        h.s3.head_object()
            .bucket(b)
            .key("lock")
            .send()
            .await
            .unwrap();
    let etag = etag.e_tag().unwrap().to_string();
    let next: Vec<Vec<u8>> = (0..8).map(|i| data((2 << 20) + i, i as u8 + 20)).collect();
    let outcome = racing_puts(&h, b, "lock", &next, |p| p.if_match(etag.clone())).await;
    one_won(&h, b, "lock", &next, outcome).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_conditional_multipart_completion_is_refused_and_can_be_completed_again() {
    let h = Harness::start(1).await;
    let s3 = &h.s3;
    let (b, k) = ("sdk-cond-mpu", "obj");
    s3.create_bucket().bucket(b).send().await.unwrap();
    s3.put_object()
        .bucket(b)
        .key(k)
        .body(ByteStream::from(b"first".to_vec()))
        .send()
        .await
        .unwrap();
    let upload = s3.create_multipart_upload().bucket(b).key(k).send().await;
    let upload_id = upload.unwrap().upload_id().unwrap().to_string();
    let body = data(1 << 20, 9);
    let part = s3
        .upload_part()
        .bucket(b)
        .key(k)
        .upload_id(&upload_id)
        .part_number(1)
        .body(ByteStream::from(body.clone()))
        .send()
        .await
        .unwrap();
    let parts = CompletedMultipartUpload::builder()
        .parts(
            CompletedPart::builder()
                .part_number(1)
                .e_tag(part.e_tag().unwrap())
                .build(),
        )
        .build();
    let complete = || {
        s3.complete_multipart_upload()
            .bucket(b)
            .key(k)
            .upload_id(&upload_id)
            .multipart_upload(parts.clone())
    };
    // The object exists: If-None-Match: * refuses, and the upload stays.
    assert_eq!(fails(complete().if_none_match("*").send().await).0, 412);
    let still = s3.get_object().bucket(b).key(k).send().await.unwrap();
    assert_eq!(read(still.body).await, b"first");
    // If-Match on the object's ETag completes it.
    let etag = s3.head_object().bucket(b).key(k).send().await.unwrap();
    complete()
        .if_match(etag.e_tag().unwrap())
        .send()
        .await
        .unwrap();
    let got = s3.get_object().bucket(b).key(k).send().await.unwrap();
    assert_eq!(read(got.body).await, body);
    h.stop().await;
}
