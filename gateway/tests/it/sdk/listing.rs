//! Listing through the SDK: pages, delimiters, tokens, markers, URL encoding, two gateways.

use super::*;

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
