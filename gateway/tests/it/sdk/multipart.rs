//! Multipart uploads through the SDK: parts, a copied part, listing, completion and errors.

use super::*;
use aws_sdk_s3::operation::complete_multipart_upload::builders::CompleteMultipartUploadFluentBuilder;

/// A CompleteMultipartUpload of `upload` listing `numbers` with the ETags `etag_of` gives.
fn complete(
    s3: &Client,
    bucket: &str,
    key: &str,
    upload: &str,
    numbers: &[i32],
    etag_of: &dyn Fn(i32) -> String,
) -> CompleteMultipartUploadFluentBuilder {
    let parts = numbers
        .iter()
        .map(|n| {
            CompletedPart::builder()
                .part_number(*n)
                .e_tag(etag_of(*n))
                .build()
        })
        .collect::<Vec<_>>();
    s3.complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
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

    let real_etag = |n: i32| etags[n as usize - 1].clone();
    assert_eq!(
        fails(
            complete(s3, b, "multi", &upload, &[2, 1, 3], &real_etag)
                .send()
                .await
        ),
        (400, "InvalidPartOrder".into())
    );
    assert_eq!(
        fails(
            complete(s3, b, "multi", &upload, &[1, 2, 3], &|_| "\"0000\"".into())
                .send()
                .await
        ),
        (400, "InvalidPart".into())
    );
    let done = complete(s3, b, "multi", &upload, &[1, 2, 3], &real_etag)
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
            complete(s3, b, "small", &small, &[1, 2], &|n| small_etags
                [n as usize - 1]
                .clone())
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
