//! Presigned URLs made by the SDK, fetched over plain HTTP.

use super::*;

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
