//! The Rust AWS SDK (`aws-sdk-s3`) against real gateways over a real cluster: every
//! operation the gateway serves, with the SDK's defaults (flexible checksums sent as
//! aws-chunked trailers, SigV4 in headers) and presigned URLs fetched over plain HTTP.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::{ByteStream, DateTime};
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, Delete, EncodingType, MetadataDirective,
    ObjectIdentifier,
};
use aws_sdk_s3::Client;
use base64::Engine;
use bytes::Bytes;
use http_body_util::BodyExt;
use md5::{Digest, Md5};
use shale_gateway::{Gateway, GatewayConfig};
use shale_storage::cluster::LocalCluster;

const ACCESS: &str = "sdk-access";
const SECRET: &str = "sdk-secret-key";

/// A 3-store cluster with gateways in front, and an SDK client of the first.
struct Harness {
    cluster: LocalCluster,
    gateways: Vec<Gateway>,
    s3: Client,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn start(gateways: usize) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let cluster = LocalCluster::start_new(dir.path(), 3, |_| {})
            .await
            .unwrap();
        cluster.wait_leader(Duration::from_secs(10)).await.unwrap();
        let config = GatewayConfig {
            listen_addr: "127.0.0.1:0".into(),
            access_key: ACCESS.into(),
            secret_key: SECRET.into(),
            ..GatewayConfig::default()
        };
        let mut started = Vec::new();
        for _ in 0..gateways {
            let kv = Arc::new(cluster.client().unwrap());
            started.push(Gateway::start(&config, kv).await.unwrap());
        }
        let s3 = client(&endpoint(&started[0]), ACCESS, SECRET);
        Harness {
            cluster,
            gateways: started,
            s3,
            _dir: dir,
        }
    }

    async fn stop(self) {
        for g in self.gateways {
            g.shutdown().await;
        }
        self.cluster.shutdown().await;
    }
}

fn endpoint(gateway: &Gateway) -> String {
    format!("http://{}", gateway.addr())
}

/// An SDK client of `endpoint`, path-style, over plain HTTP.
fn client(endpoint: &str, access: &str, secret: &str) -> Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(access, secret, None, None, "test"))
        .force_path_style(true)
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .build();
    Client::from_conf(config)
}

/// The HTTP status and S3 error code of a request that must fail.
fn fails<T: std::fmt::Debug, E: ProvideErrorMetadata + std::fmt::Debug>(
    result: Result<T, SdkError<E>>,
) -> (u16, String) {
    let err = result.expect_err("the request must fail");
    let status = err.raw_response().map_or(0, |r| r.status().as_u16());
    (status, err.code().unwrap_or("").to_string())
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(seed as u32 * 2 + 1) as u8 ^ (i >> 11) as u8)
        .collect()
}

fn md5(data: &[u8]) -> [u8; 16] {
    Md5::digest(data).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn read(body: ByteStream) -> Vec<u8> {
    body.collect().await.unwrap().into_bytes().to_vec()
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sdk_multipart_uploads_with_copied_parts_and_their_errors() {
    let h = Harness::start(1).await;
    let s3 = &h.s3;
    let b = "sdk-multipart";
    s3.create_bucket().bucket(b).send().await.unwrap();
    let source = data(2 << 20, 9);
    s3.put_object()
        .bucket(b)
        .key("source")
        .body(ByteStream::from(source.clone()))
        .send()
        .await
        .unwrap();

    let upload = s3
        .create_multipart_upload()
        .bucket(b)
        .key("multi")
        .content_type("application/x-multi")
        .metadata("origin", "sdk")
        .send()
        .await
        .unwrap()
        .upload_id()
        .unwrap()
        .to_string();
    let (p1, p2) = (data(5 << 20, 2), data((5 << 20) + 3, 3));
    let mut etags = Vec::new();
    for (number, part) in [(1, &p1), (2, &p2)] {
        let out = s3
            .upload_part()
            .bucket(b)
            .key("multi")
            .upload_id(&upload)
            .part_number(number)
            .body(ByteStream::from(part.clone()))
            .send()
            .await
            .unwrap();
        etags.push(out.e_tag().unwrap().to_string());
    }
    // Part 3 copied from a range of another object.
    let copied = s3
        .upload_part_copy()
        .bucket(b)
        .key("multi")
        .upload_id(&upload)
        .part_number(3)
        .copy_source(format!("{b}/source"))
        .copy_source_range("bytes=100-1048675")
        .send()
        .await
        .unwrap();
    etags.push(
        copied
            .copy_part_result()
            .unwrap()
            .e_tag()
            .unwrap()
            .to_string(),
    );
    let p3 = source[100..1_048_676].to_vec();
    assert_eq!(etags[2], format!("\"{}\"", hex(&md5(&p3))));

    let parts = s3
        .list_parts()
        .bucket(b)
        .key("multi")
        .upload_id(&upload)
        .send()
        .await
        .unwrap();
    let listed: Vec<(i32, i64, String)> = parts
        .parts()
        .iter()
        .map(|p| {
            (
                p.part_number().unwrap(),
                p.size().unwrap(),
                p.e_tag().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        vec![
            (1, p1.len() as i64, etags[0].clone()),
            (2, p2.len() as i64, etags[1].clone()),
            (3, p3.len() as i64, etags[2].clone()),
        ]
    );
    let uploads = s3.list_multipart_uploads().bucket(b).send().await.unwrap();
    assert!(uploads
        .uploads()
        .iter()
        .any(|u| u.key() == Some("multi") && u.upload_id() == Some(upload.as_str())));

    let complete = |numbers: &[i32], etag_of: &dyn Fn(i32) -> String| {
        let parts = numbers
            .iter()
            .map(|n| {
                CompletedPart::builder()
                    .part_number(*n)
                    .e_tag(etag_of(*n))
                    .build()
            })
            .collect::<Vec<_>>();
        CompletedMultipartUpload::builder()
            .set_parts(Some(parts))
            .build()
    };
    let real_etag = |n: i32| etags[n as usize - 1].clone();
    assert_eq!(
        fails(
            s3.complete_multipart_upload()
                .bucket(b)
                .key("multi")
                .upload_id(&upload)
                .multipart_upload(complete(&[2, 1, 3], &real_etag))
                .send()
                .await
        ),
        (400, "InvalidPartOrder".into())
    );
    assert_eq!(
        fails(
            s3.complete_multipart_upload()
                .bucket(b)
                .key("multi")
                .upload_id(&upload)
                .multipart_upload(complete(&[1, 2, 3], &|_| "\"0000\"".into()))
                .send()
                .await
        ),
        (400, "InvalidPart".into())
    );
    let done = s3
        .complete_multipart_upload()
        .bucket(b)
        .key("multi")
        .upload_id(&upload)
        .multipart_upload(complete(&[1, 2, 3], &real_etag))
        .send()
        .await
        .unwrap();
    let mut md5s = Vec::new();
    for part in [&p1, &p2, &p3] {
        md5s.extend_from_slice(&md5(part));
    }
    let want_etag = format!("\"{}-3\"", hex(&md5(&md5s)));
    assert_eq!(done.e_tag(), Some(want_etag.as_str()));

    let got = s3.get_object().bucket(b).key("multi").send().await.unwrap();
    assert_eq!(got.e_tag(), Some(want_etag.as_str()));
    assert_eq!(got.content_type(), Some("application/x-multi"));
    assert_eq!(
        got.metadata().unwrap().get("origin").map(String::as_str),
        Some("sdk")
    );
    let whole = read(got.body).await;
    assert_eq!(whole.len(), p1.len() + p2.len() + p3.len());
    assert!(whole == [p1.as_slice(), p2.as_slice(), p3.as_slice()].concat());
    let second = s3
        .get_object()
        .bucket(b)
        .key("multi")
        .part_number(2)
        .send()
        .await
        .unwrap();
    assert_eq!(second.parts_count(), Some(3));
    assert!(read(second.body).await == p2);
    let ranged = s3
        .get_object()
        .bucket(b)
        .key("multi")
        .range("bytes=5242870-5242889")
        .send()
        .await
        .unwrap();
    assert_eq!(read(ranged.body).await, whole[5_242_870..5_242_890]);
    assert!(s3
        .list_multipart_uploads()
        .bucket(b)
        .send()
        .await
        .unwrap()
        .uploads()
        .is_empty());

    // A small part that is not the last, and an aborted upload.
    let small = s3
        .create_multipart_upload()
        .bucket(b)
        .key("small")
        .send()
        .await
        .unwrap()
        .upload_id()
        .unwrap()
        .to_string();
    let mut small_etags = Vec::new();
    for n in [1, 2] {
        let out = s3
            .upload_part()
            .bucket(b)
            .key("small")
            .upload_id(&small)
            .part_number(n)
            .body(ByteStream::from(data(1000, n as u8)))
            .send()
            .await
            .unwrap();
        small_etags.push(out.e_tag().unwrap().to_string());
    }
    assert_eq!(
        fails(
            s3.complete_multipart_upload()
                .bucket(b)
                .key("small")
                .upload_id(&small)
                .multipart_upload(complete(&[1, 2], &|n| small_etags[n as usize - 1].clone()))
                .send()
                .await
        ),
        (400, "EntityTooSmall".into())
    );
    s3.abort_multipart_upload()
        .bucket(b)
        .key("small")
        .upload_id(&small)
        .send()
        .await
        .unwrap();
    assert_eq!(
        fails(
            s3.list_parts()
                .bucket(b)
                .key("small")
                .upload_id(&small)
                .send()
                .await
        ),
        (404, "NoSuchUpload".into())
    );
    assert_eq!(
        fails(
            s3.upload_part()
                .bucket(b)
                .key("small")
                .upload_id(&small)
                .part_number(3)
                .body(ByteStream::from_static(b"late"))
                .send()
                .await
        ),
        (404, "NoSuchUpload".into())
    );
    assert_eq!(
        fails(s3.head_object().bucket(b).key("small").send().await).0,
        404
    );
    h.stop().await;
}

/// Decodes S3's `encoding-type=url` form of a key.
fn url_decode(s: &str) -> String {
    let mut out = Vec::new();
    let mut bytes = s.bytes();
    while let Some(c) = bytes.next() {
        match c {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = (bytes.next().unwrap() as char).to_digit(16).unwrap();
                let lo = (bytes.next().unwrap() as char).to_digit(16).unwrap();
                out.push((hi * 16 + lo) as u8);
            }
            c => out.push(c),
        }
    }
    String::from_utf8(out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sdk_listing_pages_with_delimiters_markers_and_encoding_from_any_gateway() {
    let h = Harness::start(2).await;
    let s3 = &h.s3;
    let other = client(&endpoint(&h.gateways[1]), ACCESS, SECRET);
    let b = "sdk-listing";
    s3.create_bucket().bucket(b).send().await.unwrap();
    let keys = [
        "a/1",
        "a/2",
        "a/b/3",
        "a/b/4",
        "c/5",
        "dir with space/é.txt",
        "top.txt",
        "z",
    ];
    for k in keys {
        s3.put_object()
            .bucket(b)
            .key(k)
            .body(ByteStream::from(k.as_bytes().to_vec()))
            .send()
            .await
            .unwrap();
        // Read-after-write and list-after-write through the other gateway.
        let got = other.get_object().bucket(b).key(k).send().await.unwrap();
        assert_eq!(read(got.body).await, k.as_bytes());
    }
    let listed = other.list_objects_v2().bucket(b).send().await.unwrap();
    assert_eq!(listed.key_count(), Some(keys.len() as i32));

    // V2, two entries a page, rolled up at "/", following continuation tokens.
    let (mut contents, mut prefixes, mut token, mut pages) = (vec![], vec![], None, 0);
    loop {
        let page = s3
            .list_objects_v2()
            .bucket(b)
            .delimiter("/")
            .max_keys(2)
            .set_continuation_token(token.clone())
            .send()
            .await
            .unwrap();
        pages += 1;
        let entries = page.contents().len() + page.common_prefixes().len();
        assert!(entries <= 2, "page {pages} has {entries} entries");
        contents.extend(page.contents().iter().map(|o| o.key().unwrap().to_string()));
        prefixes.extend(
            page.common_prefixes()
                .iter()
                .map(|p| p.prefix().unwrap().to_string()),
        );
        if page.is_truncated() != Some(true) {
            break;
        }
        token = page.next_continuation_token().map(str::to_string);
        assert!(token.is_some() && pages < 10);
    }
    assert_eq!(contents, ["top.txt", "z"]);
    assert_eq!(prefixes, ["a/", "c/", "dir with space/"]);
    assert_eq!(pages, 3);

    // The SDK's own paginator, one entry a page, under a prefix.
    let mut paginated = Vec::new();
    let mut stream = s3
        .list_objects_v2()
        .bucket(b)
        .prefix("a/")
        .delimiter("/")
        .max_keys(1)
        .into_paginator()
        .send();
    while let Some(page) = stream.next().await {
        let page = page.unwrap();
        paginated.extend(page.contents().iter().map(|o| o.key().unwrap().to_string()));
        paginated.extend(
            page.common_prefixes()
                .iter()
                .map(|p| p.prefix().unwrap().to_string()),
        );
    }
    assert_eq!(paginated, ["a/1", "a/2", "a/b/"]);

    // start-after, and URL-encoded keys.
    let after = s3
        .list_objects_v2()
        .bucket(b)
        .start_after("a/b/3")
        .encoding_type(EncodingType::Url)
        .send()
        .await
        .unwrap();
    let raw: Vec<&str> = after.contents().iter().map(|o| o.key().unwrap()).collect();
    assert!(
        raw.iter().all(|k| !k.contains(' ')),
        "keys come back URL-encoded: {raw:?}"
    );
    let decoded: Vec<String> = raw.iter().map(|k| url_decode(k)).collect();
    assert_eq!(decoded, &keys[3..]);

    // V1 with markers, three a page.
    let (mut all, mut marker) = (Vec::new(), None::<String>);
    for _ in 0..10 {
        let page = s3
            .list_objects()
            .bucket(b)
            .max_keys(3)
            .set_marker(marker.clone())
            .send()
            .await
            .unwrap();
        let got: Vec<String> = page
            .contents()
            .iter()
            .map(|o| o.key().unwrap().to_string())
            .collect();
        assert!(got.len() <= 3);
        marker = got.last().cloned();
        all.extend(got);
        if page.is_truncated() != Some(true) {
            break;
        }
    }
    assert_eq!(all, keys);

    // After a delete neither gateway lists or serves the key.
    s3.delete_object().bucket(b).key("z").send().await.unwrap();
    assert_eq!(
        fails(other.get_object().bucket(b).key("z").send().await),
        (404, "NoSuchKey".into())
    );
    let listed = other.list_objects_v2().bucket(b).send().await.unwrap();
    assert!(!listed.contents().iter().any(|o| o.key() == Some("z")));
    h.stop().await;
}

/// One plain HTTP request (no SDK): the status and the body.
async fn http_request(
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, Vec<u8>) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<Bytes>>();
    let mut req = http::Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(
            req.body(http_body_util::Full::new(Bytes::from(body)))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sdk_presigned_urls_get_and_put_until_they_expire() {
    let h = Harness::start(1).await;
    let s3 = &h.s3;
    let b = "sdk-presign";
    s3.create_bucket().bucket(b).send().await.unwrap();
    let body = data(200_000, 5);
    s3.put_object()
        .bucket(b)
        .key("shared")
        .body(ByteStream::from(body.clone()))
        .send()
        .await
        .unwrap();
    let minute = PresigningConfig::expires_in(Duration::from_secs(60)).unwrap();

    let get = s3
        .get_object()
        .bucket(b)
        .key("shared")
        .presigned(minute.clone())
        .await
        .unwrap();
    let (status, got) = http_request("GET", get.uri(), &[], Vec::new()).await;
    assert_eq!(status, 200);
    assert!(got == body);
    // The signature covers the key: another key with the same query is refused.
    let tampered = get.uri().replacen("/shared?", "/other?", 1);
    let (status, err) = http_request("GET", &tampered, &[], Vec::new()).await;
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&err));
    assert!(String::from_utf8_lossy(&err).contains("SignatureDoesNotMatch"));

    let put = s3
        .put_object()
        .bucket(b)
        .key("uploaded")
        .presigned(minute)
        .await
        .unwrap();
    let headers: Vec<(&str, &str)> = put.headers().collect();
    let (status, err) = http_request("PUT", put.uri(), &headers, b"sent by URL".to_vec()).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&err));
    let got = s3
        .get_object()
        .bucket(b)
        .key("uploaded")
        .send()
        .await
        .unwrap();
    assert_eq!(read(got.body).await, b"sent by URL");

    // An expired URL is refused and changes nothing.
    let second = PresigningConfig::expires_in(Duration::from_secs(1)).unwrap();
    let get = s3
        .get_object()
        .bucket(b)
        .key("shared")
        .presigned(second.clone())
        .await
        .unwrap();
    let put = s3
        .put_object()
        .bucket(b)
        .key("uploaded")
        .presigned(second)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, err) = http_request("GET", get.uri(), &[], Vec::new()).await;
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&err));
    assert!(String::from_utf8_lossy(&err).contains("AccessDenied"));
    let headers: Vec<(&str, &str)> = put.headers().collect();
    let (status, _) = http_request("PUT", put.uri(), &headers, b"too late".to_vec()).await;
    assert_eq!(status, 403);
    let got = s3
        .get_object()
        .bucket(b)
        .key("uploaded")
        .send()
        .await
        .unwrap();
    assert_eq!(read(got.body).await, b"sent by URL");
    h.stop().await;
}
