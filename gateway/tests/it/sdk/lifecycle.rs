//! Bucket lifecycle rules through the SDK: kept and listed back, refused when they ask
//! for what Shale does not do, and applied by the gateway's sweep: expired objects go,
//! the others stay.

use aws_sdk_s3::types::{
    BucketLifecycleConfiguration, ExpirationStatus, LifecycleExpiration, LifecycleRule,
    LifecycleRuleFilter, Transition, TransitionStorageClass,
};

use super::*;

fn rule(id: &str, prefix: &str, expiration: LifecycleExpiration) -> LifecycleRule {
    LifecycleRule::builder()
        .id(id)
        .status(ExpirationStatus::Enabled)
        .filter(LifecycleRuleFilter::builder().prefix(prefix).build())
        .expiration(expiration)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lifecycle_rules_expire_objects_under_their_prefix() {
    let h = Harness::start_with(1, |c| c.lifecycle_interval_secs = 1).await;
    let s3 = &h.s3;
    let b = "sdk-lifecycle";
    s3.create_bucket().bucket(b).send().await.unwrap();
    assert_eq!(
        fails(
            s3.get_bucket_lifecycle_configuration()
                .bucket(b)
                .send()
                .await
        ),
        (404, "NoSuchLifecycleConfiguration".into())
    );
    for key in ["logs/a", "logs/b", "keep/c", "tmp/d"] {
        let body = if key == "logs/b" {
            data(5 << 20, 7) // chunked: its chunks go too
        } else {
            key.as_bytes().to_vec()
        };
        s3.put_object()
            .bucket(b)
            .key(key)
            .body(ByteStream::from(body))
            .send()
            .await
            .unwrap();
    }

    // Storage classes are not Shale's: refused, naming why.
    let transition = LifecycleRule::builder()
        .id("cold")
        .status(ExpirationStatus::Enabled)
        .filter(LifecycleRuleFilter::builder().prefix("").build())
        .transitions(
            Transition::builder()
                .days(30)
                .storage_class(TransitionStorageClass::Glacier)
                .build(),
        )
        .build()
        .unwrap();
    let refused = s3
        .put_bucket_lifecycle_configuration()
        .bucket(b)
        .lifecycle_configuration(
            BucketLifecycleConfiguration::builder()
                .rules(transition)
                .build()
                .unwrap(),
        )
        .send()
        .await;
    assert_eq!(fails(refused), (501, "NotImplemented".into()));

    let yesterday = DateTime::from_secs(now_secs() - 86_400);
    let past = LifecycleExpiration::builder().date(yesterday).build();
    let later = LifecycleExpiration::builder().days(1).build();
    let config = BucketLifecycleConfiguration::builder()
        .rules(rule("old-logs", "logs/", past))
        .rules(rule("tmp", "tmp/", later))
        .build()
        .unwrap();
    s3.put_bucket_lifecycle_configuration()
        .bucket(b)
        .lifecycle_configuration(config)
        .send()
        .await
        .unwrap();
    let got = s3
        .get_bucket_lifecycle_configuration()
        .bucket(b)
        .send()
        .await
        .unwrap();
    let ids: Vec<_> = got.rules().iter().filter_map(|r| r.id()).collect();
    assert_eq!(ids, ["old-logs", "tmp"]);
    assert_eq!(got.rules()[1].expiration().and_then(|e| e.days()), Some(1));

    // The sweep (every second here) takes the expired logs and nothing else.
    let started = std::time::Instant::now();
    loop {
        let listed = s3.list_objects_v2().bucket(b).send().await.unwrap();
        let keys: Vec<_> = listed.contents().iter().filter_map(|o| o.key()).collect();
        if keys == ["keep/c", "tmp/d"] {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "still listed: {keys:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let kept = s3
        .get_object()
        .bucket(b)
        .key("keep/c")
        .send()
        .await
        .unwrap();
    assert_eq!(read(kept.body).await, b"keep/c");

    s3.delete_bucket_lifecycle().bucket(b).send().await.unwrap();
    assert_eq!(
        fails(
            s3.get_bucket_lifecycle_configuration()
                .bucket(b)
                .send()
                .await
        )
        .0,
        404
    );
    h.stop().await;
}
