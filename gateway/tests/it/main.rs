//! The gateway in front of a real in-process cluster (RocksDB, QUIC), driven by a real
//! S3 client (boto3, installed by scripts/test.sh).

mod https;
mod sdk;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use shale_gateway::objects::Condition;
use shale_gateway::{Gateway, GatewayConfig};
use shale_storage::cluster::LocalCluster;

/// The Python with boto3 that scripts/test.sh prepared.
fn python() -> String {
    std::env::var("SHALE_PYTHON").unwrap_or_else(|_| {
        panic!("SHALE_PYTHON is not set: run the tests with scripts/test.sh, which installs boto3 into a venv")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn boto3_drives_buckets_objects_listing_and_auth() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start_new(dir.path(), 3, |_| {})
        .await
        .unwrap();
    cluster.wait_leader(Duration::from_secs(10)).await.unwrap();
    let config = GatewayConfig {
        listen_addr: "127.0.0.1:0".into(),
        access_key: "test-access".into(),
        secret_key: "test-secret-key".into(),
        host: None,
        ..GatewayConfig::default()
    };
    let gateway = Gateway::start(&config, Arc::new(cluster.client().unwrap()))
        .await
        .unwrap();
    let second = Gateway::start(&config, Arc::new(cluster.client().unwrap()))
        .await
        .unwrap();
    let endpoint_b = format!("http://{}", second.addr());
    let endpoint = format!("http://{}", gateway.addr());
    let script = test_script("s3_client.py");
    let (python, endpoint2) = (python(), endpoint.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .args([
                script.as_str(),
                &endpoint2,
                "test-access",
                "test-secret-key",
                &endpoint_b,
            ])
            .output()
            .expect("run the boto3 script")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "boto3 checks failed against {endpoint}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("s3 client checks passed"));
    gateway.shutdown().await;
    second.shutdown().await;
    cluster.shutdown().await;
}

/// A script beside these tests. Found from the package folder cargo names when it runs
/// the tests, not the one it was built in: a target folder reused from another checkout
/// would point at that checkout's copy.
fn test_script(name: &str) -> String {
    let package = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    format!("{package}/tests/it/{name}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_aws_cli_copies_syncs_lists_and_removes() {
    let aws = std::env::var("SHALE_AWS").unwrap_or_else(|_| panic!("SHALE_AWS is not set: run the tests with scripts/test.sh, which installs the aws CLI into a venv"));
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start_new(&dir.path().join("cluster"), 3, |_| {})
        .await
        .unwrap();
    cluster.wait_leader(Duration::from_secs(10)).await.unwrap();
    let config = GatewayConfig {
        listen_addr: "127.0.0.1:0".into(),
        access_key: "cli-access".into(),
        secret_key: "cli-secret".into(),
        host: None,
        ..GatewayConfig::default()
    };
    let gateway = Gateway::start(&config, Arc::new(cluster.client().unwrap()))
        .await
        .unwrap();
    let endpoint = format!("http://{}", gateway.addr());
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let script = test_script("aws_cli.sh");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .args([script.as_str(), &aws, &endpoint, "cli-access", "cli-secret"])
            .arg(&work)
            .output()
            .expect("run the aws CLI script")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "aws CLI checks failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("aws cli checks passed"));
    gateway.shutdown().await;
    cluster.shutdown().await;
}

/// A 3-store cluster, its client, and an object store over it holding bucket `bucket`.
async fn cluster_with_bucket(
    dir: &std::path::Path,
    bucket: &str,
) -> (
    LocalCluster,
    Arc<shale_rpc::client::KvClient>,
    shale_gateway::objects::ObjectStore,
) {
    let cluster = LocalCluster::start_new(dir, 3, |_| {}).await.unwrap();
    cluster.wait_leader(Duration::from_secs(10)).await.unwrap();
    let kv = Arc::new(cluster.client().unwrap());
    let objects = shale_gateway::objects::ObjectStore::new(kv.clone());
    objects.create_bucket(bucket, false).await.unwrap();
    (cluster, kv, objects)
}

/// Ranges cut between a bucket's objects, one of them holding none past the cursor: a
/// listing and the emptiness check of a bucket delete go on into the next range (a page
/// stops at its range's end, empty or not).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listing_and_bucket_delete_see_objects_past_a_range_with_none_left() {
    use shale_gateway::layout::object_key;
    use shale_gateway::objects::{Incoming, Listed};
    let dir = tempfile::tempdir().unwrap();
    let (cluster, kv, objects) = cluster_with_bucket(dir.path(), "b").await;
    let put = |key: &'static str| {
        let body = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(key))]);
        objects.put(
            "b",
            key,
            Incoming::unclaimed(body),
            None,
            Vec::new(),
            Condition::None,
        )
    };
    for key in ["a", "m", "z"] {
        put(key).await.unwrap();
    }
    // Ranges: [.., "b") [.., "c") [.., "n") [.., "y") [..): two of them hold no object.
    for cut in ["b", "c", "n", "y"] {
        kv.split(object_key("b", cut)).await.unwrap();
    }
    let names = |page: &shale_gateway::objects::ListPage| -> Vec<String> {
        let entries = page.entries.iter();
        entries
            .map(|e| match e {
                Listed::Object { key, .. } => key.clone(),
                Listed::CommonPrefix(p) => p.clone(),
            })
            .collect()
    };
    let all = objects.list("b", "", None, None, 1000).await.unwrap();
    assert_eq!(names(&all), ["a", "m", "z"]);
    assert_eq!(all.next, None);
    // One a page: every page but the last says more follows, across the empty ranges.
    let (mut got, mut after) = (Vec::new(), None);
    loop {
        let page = objects
            .list("b", "", None, after.as_deref(), 1)
            .await
            .unwrap();
        got.extend(names(&page));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(got, ["a", "m", "z"]);
    objects.delete("b", "a").await.unwrap();
    objects.delete("b", "m").await.unwrap();
    // Only "z" is left, behind two ranges with no objects: the bucket is not empty.
    assert!(matches!(
        objects.delete_bucket("b").await,
        Err(shale_gateway::error::GwError::BucketNotEmpty)
    ));
    assert_eq!(
        names(&objects.list("b", "", None, None, 10).await.unwrap()),
        ["z"]
    );
    objects.delete("b", "z").await.unwrap();
    objects.delete_bucket("b").await.unwrap();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abandoned_uploads_are_aborted_in_the_background() {
    use shale_gateway::objects::Incoming;
    let dir = tempfile::tempdir().unwrap();
    let (cluster, kv, objects) = cluster_with_bucket(dir.path(), "b").await;
    let upload = objects
        .create_upload("b", "k", None, Vec::new())
        .await
        .unwrap();
    let body = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(vec![
        7u8;
        3 << 20
    ]))]);
    objects
        .upload_part("b", "k", &upload, 1, Incoming::unclaimed(body))
        .await
        .unwrap();
    assert_eq!(objects.list_uploads("b").await.unwrap().len(), 1);
    let config = GatewayConfig {
        listen_addr: "127.0.0.1:0".into(),
        abandoned_upload_secs: 1,
        upload_gc_interval_secs: 1,
        ..GatewayConfig::default()
    };
    let gateway = Gateway::start(&config, kv.clone()).await.unwrap();
    let started = std::time::Instant::now();
    while !objects.list_uploads("b").await.unwrap().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the abandoned upload is collected"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        objects.list_parts("b", "k", &upload).await.is_err(),
        "its parts are gone too"
    );
    // Its chunks were dropped: nothing is left under the chunk prefix.
    let left = kv
        .scan_all(
            bytes::Bytes::from_static(b"C"),
            bytes::Bytes::from_static(b"D"),
            100,
        )
        .await
        .unwrap();
    assert!(left.is_empty(), "{} chunks left behind", left.len());
    gateway.shutdown().await;
    cluster.shutdown().await;
}

/// Reads a whole object through the object store.
async fn read_all(
    objects: &shale_gateway::objects::ObjectStore,
    bucket: &str,
    key: &str,
) -> std::io::Result<Vec<u8>> {
    use futures::TryStreamExt;
    let meta = objects.head(bucket, key).await.unwrap();
    objects
        .read(&meta, 0, meta.size)
        .try_fold(Vec::new(), |mut all, piece| async move {
            all.extend_from_slice(&piece);
            Ok(all)
        })
        .await
}

async fn must_read_all(
    objects: &shale_gateway::objects::ObjectStore,
    bucket: &str,
    key: &str,
) -> Vec<u8> {
    read_all(objects, bucket, key).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_chunks_are_staged_on_every_replica_and_a_store_down_sends_them_through_the_log() {
    use shale_gateway::layout::{chunk_key, legacy_chunk_key, Body, CHUNK_BYTES};
    use shale_gateway::metrics::METRICS;
    use shale_gateway::objects::Incoming;
    use shale_storage::engine::Cf;
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, kv, objects) = cluster_with_bucket(dir.path(), "b").await;
    let put = |key: &'static str, data: Vec<u8>| {
        let body = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(data))]);
        objects.put(
            "b",
            key,
            Incoming::unclaimed(body),
            None,
            Vec::new(),
            Condition::None,
        )
    };
    // Three large chunks and a small last one. Staging pauses for the whole process for
    // 2 s after a store could not stage, which another test may have caused just now:
    // the PUT is repeated (same bytes) until its chunks are staged, for up to 10 s.
    let data: Vec<u8> = (0..3 * CHUNK_BYTES + 77)
        .map(|i| (i * 17 % 251) as u8)
        .collect();
    let started = std::time::Instant::now();
    loop {
        let staged_before = METRICS.chunks_staged.get();
        put("staged", data.clone()).await.unwrap();
        if METRICS.chunks_staged.get() >= staged_before + 3 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the large chunks were never staged"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(must_read_all(&objects, "b", "staged").await, data);
    let Body::Chunks { version, count, .. } = objects.head("b", "staged").await.unwrap().body
    else {
        panic!("a 12 MiB object is chunked")
    };
    assert_eq!(count, 4);
    // Every replica comes to hold every chunk (each applies in its own time), and no
    // staged file is left over then: each was taken.
    for i in 0..3 {
        let engine = cluster.node(i).unwrap().engine().clone();
        let started = std::time::Instant::now();
        for index in 0..count {
            let key = chunk_key(version, index, index < 3);
            while engine.get(Cf::Data, &key).unwrap().is_none() {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "store {i} never held chunk {index}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let left: Vec<_> = std::fs::read_dir(engine.staged_dir()).unwrap().collect();
        assert!(left.is_empty(), "store {i} kept staged files: {left:?}");
    }

    // Large chunks a gateway wrote before they had their own prefix are still read.
    for index in 0..3 {
        let (new, old) = (
            chunk_key(version, index, true),
            legacy_chunk_key(version, index),
        );
        let stored = kv.get(new.clone()).await.unwrap().expect("chunk stored");
        kv.put(old, stored).await.unwrap();
        kv.delete(new).await.unwrap();
    }
    assert_eq!(must_read_all(&objects, "b", "staged").await, data);

    // One store down: staging cannot reach every replica, so the chunks go through the
    // Raft log (a quorum is enough there) and the PUT still succeeds.
    cluster.stop_store(2).await;
    let other: Vec<u8> = (0..(2 << 20) + 5).map(|i| (i * 7 % 253) as u8).collect();
    put("logged", other.clone()).await.unwrap();
    assert_eq!(must_read_all(&objects, "b", "logged").await, other);
    assert_eq!(must_read_all(&objects, "b", "staged").await, data);
    cluster.shutdown().await;
}

/// Objects recorded before records held a chunk size (1 MiB chunks, single PUT and
/// multipart) read whole and by ranges across chunk edges; overwriting one drops its
/// chunks; new objects use the current chunk size.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn objects_of_one_mebibyte_chunks_recorded_in_the_older_form_still_read() {
    use futures::TryStreamExt;
    use shale_gateway::layout::{
        chunk_key, encode_legacy_object_record, new_version, object_key, seal_chunk, Body,
        ObjectMeta, Segment, CHUNK_BYTES, LEGACY_CHUNK_BYTES,
    };
    use shale_gateway::objects::{now_ms, Incoming};
    let dir = tempfile::tempdir().unwrap();
    let (cluster, kv, objects) = cluster_with_bucket(dir.path(), "old").await;
    let mib = LEGACY_CHUNK_BYTES as usize;
    // Writes `data` as an older gateway did: 1 MiB chunks, full ones under their prefix.
    let write_run = |data: Vec<u8>| {
        let kv = kv.clone();
        async move {
            let version = new_version(now_ms());
            let mut count = 0;
            for (i, c) in data.chunks(mib).enumerate() {
                kv.put(chunk_key(version, i as u32, c.len() == mib), seal_chunk(c))
                    .await
                    .unwrap();
                count += 1;
            }
            (version, count)
        }
    };
    let single: Vec<u8> = (0..3 * mib + 77).map(|i| (i * 13 % 251) as u8).collect();
    let (version, count) = write_run(single.clone()).await;
    let part_a: Vec<u8> = (0..2 * mib + 3).map(|i| (i * 5 % 249) as u8).collect();
    let part_b: Vec<u8> = (0..mib + 1).map(|i| (i * 3 % 241) as u8).collect();
    let (va, ca) = write_run(part_a.clone()).await;
    let (vb, cb) = write_run(part_b.clone()).await;
    let record = |size: usize, body| {
        let meta = ObjectMeta {
            size: size as u64,
            etag: "0123".into(),
            content_type: None,
            last_modified_ms: now_ms(),
            user_metadata: Vec::new(),
            body,
        };
        bytes::Bytes::from(encode_legacy_object_record(&meta))
    };
    let chunk_bytes = LEGACY_CHUNK_BYTES;
    let single_body = Body::Chunks {
        version,
        count,
        chunk_bytes,
    };
    kv.put(
        object_key("old", "single"),
        record(single.len(), single_body),
    )
    .await
    .unwrap();
    let segment = |version, count, data: &Vec<u8>| Segment {
        version,
        count,
        size: data.len() as u64,
        chunk_bytes,
    };
    let parts = Body::Parts(vec![segment(va, ca, &part_a), segment(vb, cb, &part_b)]);
    kv.put(
        object_key("old", "parts"),
        record(part_a.len() + part_b.len(), parts),
    )
    .await
    .unwrap();
    let multipart = [part_a.clone(), part_b.clone()].concat();

    let read = |key: &'static str, start: usize, end: usize| {
        let objects = objects.clone();
        async move {
            let meta = objects.head("old", key).await.unwrap();
            let got: Vec<bytes::Bytes> = objects
                .read(&meta, start as u64, end as u64)
                .try_collect()
                .await
                .unwrap();
            got.concat()
        }
    };
    for (key, data) in [("single", &single), ("parts", &multipart)] {
        assert!(read(key, 0, data.len()).await == *data, "{key} whole");
        for (start, end) in [(mib - 5, 2 * mib + 7), (2 * mib, 2 * mib + 3), (1, mib)] {
            assert!(
                read(key, start, end).await == data[start..end],
                "{key} bytes {start}..{end}"
            );
        }
    }

    // Overwritten, the old object's chunks go; the new one has the current chunk size.
    let fresh: Vec<u8> = (0..CHUNK_BYTES + (1 << 20) + 9)
        .map(|i| (i * 11 % 239) as u8)
        .collect();
    let body = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(fresh.clone()))]);
    objects
        .put(
            "old",
            "single",
            Incoming::unclaimed(body),
            None,
            Vec::new(),
            Condition::None,
        )
        .await
        .unwrap();
    for i in 0..count {
        for large in [true, false] {
            assert!(kv
                .get(chunk_key(version, i, large))
                .await
                .unwrap()
                .is_none());
        }
    }
    let meta = objects.head("old", "single").await.unwrap();
    assert!(matches!(
        meta.body,
        Body::Chunks { count: 2, chunk_bytes, .. } if chunk_bytes as usize == CHUNK_BYTES
    ));
    let (start, end) = (CHUNK_BYTES - 3, CHUNK_BYTES + 4);
    assert!(read("single", start, end).await == fresh[start..end]);
    assert!(read("single", 0, fresh.len()).await == fresh);
    cluster.shutdown().await;
}

/// Overwrites `key` in the data of the store `i` alone, bypassing Raft: a disk that
/// flipped bits under one replica.
fn corrupt_on(cluster: &LocalCluster, i: usize, key: &[u8], value: &[u8]) {
    use shale_storage::engine::{Cf, Durability};
    let engine = cluster.node(i).unwrap().engine();
    let mut batch = engine.batch();
    batch.put(Cf::Data, key, value);
    engine.write(batch, Durability::Sync).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_chunk_copy_is_never_served_and_a_healthy_replica_answers() {
    use shale_gateway::layout::{chunk_key, Body, CHUNK_BYTES};
    use shale_gateway::objects::Incoming;
    let dir = tempfile::tempdir().unwrap();
    let (cluster, kv, objects) = cluster_with_bucket(dir.path(), "b").await;
    let data: Vec<u8> = (0..2 * CHUNK_BYTES + 77)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    let body = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(data.clone()))]);
    let incoming = Incoming::unclaimed(body);
    objects
        .put("b", "k", incoming, None, Vec::new(), Condition::None)
        .await
        .unwrap();
    let meta = objects.head("b", "k").await.unwrap();
    let Body::Chunks { version, count, .. } = meta.body else {
        panic!("an 8 MiB object is chunked: {:?}", meta.body)
    };
    assert_eq!(count, 3);
    let leader = cluster.leader().await.expect("one range, one leader");
    let before = shale_gateway::metrics::METRICS.corrupt_chunks.get();

    // The leader's copy of chunk 1 rots: same length, flipped bytes, stale checksum.
    let key = chunk_key(version, 1, true);
    let mut rotten = kv.get(key.clone()).await.unwrap().unwrap().to_vec();
    let middle = rotten.len() / 2;
    rotten[middle] ^= 0xff;
    corrupt_on(&cluster, leader, &key, &rotten);
    assert_eq!(
        read_all(&objects, "b", "k")
            .await
            .expect("a healthy replica serves the chunk"),
        data,
        "the object reads back whole and correct"
    );
    assert!(
        shale_gateway::metrics::METRICS.corrupt_chunks.get() > before,
        "the corruption was reported"
    );
    // And the gateway had the range checked: the leader's copy is named diverged (with
    // placement, it would now be replaced).
    let node = cluster.node(leader).unwrap();
    let started = std::time::Instant::now();
    loop {
        let status = node.status().await;
        let first = status.iter().find(|s| s.range.contains(&key)).unwrap();
        if first.diverged == vec![first.replica_id] {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "a check names the corrupt copy: {first:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // Every copy rotten: the read fails rather than return bad bytes.
    for i in 0..3 {
        corrupt_on(&cluster, i, &key, &rotten);
    }
    let err = read_all(&objects, "b", "k")
        .await
        .expect_err("no healthy copy is left");
    assert!(
        err.to_string().contains("no replica holds a healthy copy"),
        "{err}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_chunk_sweep_takes_old_orphans_and_spares_young_ones_and_live_bodies() {
    use shale_gateway::layout::{chunk_key, new_version, seal_chunk, CHUNK_BYTES};
    use shale_gateway::objects::{now_ms, Incoming};
    let dir = tempfile::tempdir().unwrap();
    let (cluster, kv, objects) = cluster_with_bucket(dir.path(), "sweep").await;
    let object: Vec<u8> = (0..(2 << 20) + 9).map(|i| (i % 253) as u8).collect();
    let body = |data: &Vec<u8>| {
        Incoming::unclaimed(futures::stream::iter([Ok::<_, std::io::Error>(
            bytes::Bytes::from(data.clone()),
        )]))
    };
    objects
        .put(
            "sweep",
            "object",
            body(&object),
            None,
            Vec::new(),
            Condition::None,
        )
        .await
        .unwrap();
    let upload = objects
        .create_upload("sweep", "parts", None, Vec::new())
        .await
        .unwrap();
    let part: Vec<u8> = vec![5u8; (5 << 20) + 1];
    let etag = objects
        .upload_part("sweep", "parts", &upload, 1, body(&part))
        .await
        .unwrap()
        .etag;
    // What dead gateways left: a body begun two minutes ago, and one begun just now.
    let old = new_version(now_ms() - 120_000);
    // Large chunks and a small last one: the sweep walks both spans of chunk keys.
    let orphan_key = |version, i| chunk_key(version, i, i < 2);
    let young = new_version(now_ms());
    for version in [old, young] {
        for i in 0..3 {
            kv.put(orphan_key(version, i), seal_chunk(b"orphan"))
                .await
                .unwrap();
        }
    }
    let sweep = objects.sweep_orphan_chunks(60_000).await.unwrap();
    assert_eq!(sweep.live_versions, 2, "the object's and the part's");
    let live_chunks = object.len().div_ceil(CHUNK_BYTES) + part.len().div_ceil(CHUNK_BYTES);
    assert_eq!(sweep.chunks_seen as usize, live_chunks + 6);
    assert_eq!(sweep.chunks_deleted, 3, "only the old orphan's chunks");
    for i in 0..3 {
        assert!(kv.get(orphan_key(old, i)).await.unwrap().is_none());
        assert!(kv.get(orphan_key(young, i)).await.unwrap().is_some());
    }
    // Once old enough the young orphan goes too; live bodies never do.
    let sweep = objects.sweep_orphan_chunks(0).await.unwrap();
    assert_eq!(sweep.chunks_deleted, 3);
    let meta = objects.head("sweep", "object").await.unwrap();
    let read = objects.read(&meta, 0, meta.size);
    let got: Vec<bytes::Bytes> = futures::TryStreamExt::try_collect(read).await.unwrap();
    assert_eq!(got.concat(), object);
    objects
        .complete_upload("sweep", "parts", &upload, vec![(1, etag)], &Condition::None)
        .await
        .unwrap();
    let meta = objects.head("sweep", "parts").await.unwrap();
    let read = objects.read(&meta, 0, meta.size);
    let got: Vec<bytes::Bytes> = futures::TryStreamExt::try_collect(read).await.unwrap();
    assert_eq!(got.concat(), part);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_body_slower_than_the_deadline_fails_and_leaves_nothing() {
    use futures::StreamExt;
    use shale_gateway::error::GwError;
    use shale_gateway::objects::Incoming;
    let dir = tempfile::tempdir().unwrap();
    let (cluster, kv, objects) = cluster_with_bucket(dir.path(), "slow").await;
    let objects = objects.with_body_deadline_ms(300);
    // 3 MiB, a megabyte every 200 ms: past the deadline after the second.
    let slow = futures::stream::iter(0..3).then(|_| async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok::<_, std::io::Error>(bytes::Bytes::from(vec![1u8; 1 << 20]))
    });
    let err = objects
        .put(
            "slow",
            "k",
            Incoming::unclaimed(Box::pin(slow)),
            None,
            Vec::new(),
            Condition::None,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, GwError::RequestTimeout), "{err}");
    assert!(matches!(
        objects.head("slow", "k").await,
        Err(GwError::NoSuchKey)
    ));
    let chunks = kv
        .scan_keys(
            bytes::Bytes::from_static(b"C"),
            bytes::Bytes::from_static(b"D"),
            100,
        )
        .await
        .unwrap();
    assert!(chunks.pairs.is_empty(), "the chunks written were dropped");
    cluster.shutdown().await;
}

/// Chunks from chosen stores' engines, counting what it served.
struct CountingChunks {
    engines: Vec<Arc<shale_storage::engine::Engine>>,
    served: std::sync::atomic::AtomicUsize,
}

impl shale_gateway::objects::LocalChunks for CountingChunks {
    fn get(&self, key: &[u8]) -> Option<bytes::Bytes> {
        let found = self
            .engines
            .iter()
            .find_map(|e| e.get(shale_storage::engine::Cf::Data, key).unwrap())?;
        self.served
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Some(bytes::Bytes::from(found))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunks_are_read_from_local_engines_and_a_bad_local_copy_falls_back() {
    use futures::TryStreamExt;
    use shale_gateway::layout::{chunk_key, Body, CHUNK_BYTES};
    use shale_gateway::objects::{Incoming, LocalChunks};
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let (cluster, kv, objects) = cluster_with_bucket(dir.path(), "local").await;
    let data: Vec<u8> = (0..3 * CHUNK_BYTES + 5)
        .map(|i| (i * 7 % 253) as u8)
        .collect();
    let body = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(data.clone()))]);
    objects
        .put(
            "local",
            "k",
            Incoming::unclaimed(body),
            None,
            Vec::new(),
            Condition::None,
        )
        .await
        .unwrap();
    let meta = objects.head("local", "k").await.unwrap();
    let Body::Chunks { version, count, .. } = meta.body else {
        panic!("a chunked body")
    };
    assert_eq!(count, 4);
    // Every replica has applied the chunks before they are read locally.
    for i in 0..count {
        for s in 0..3 {
            let engine = cluster.node(s).unwrap().engine();
            let started = std::time::Instant::now();
            while engine
                .get(
                    shale_storage::engine::Cf::Data,
                    &chunk_key(version, i, i < 3),
                )
                .unwrap()
                .is_none()
            {
                assert!(started.elapsed() < Duration::from_secs(10));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    let read_with = |local: Arc<CountingChunks>| {
        let objects = objects
            .clone()
            .with_local_chunks(Some(local as Arc<dyn LocalChunks>));
        let meta = meta.clone();
        async move {
            let got: Vec<bytes::Bytes> = objects.read(&meta, 0, meta.size).try_collect().await?;
            Ok::<_, std::io::Error>(got.concat())
        }
    };
    // Served from one store's engine, all four chunks.
    let local = Arc::new(CountingChunks {
        engines: vec![cluster.node(2).unwrap().engine().clone()],
        served: 0.into(),
    });
    assert!(read_with(local.clone()).await.unwrap() == data);
    assert_eq!(local.served.load(Ordering::SeqCst), 4);
    // That engine's copy of chunk 1 rots: the read goes through the cluster instead.
    corrupt_on(&cluster, 2, &chunk_key(version, 1, true), b"rotten bytes");
    let corrupt_before = shale_gateway::metrics::METRICS.corrupt_chunks.get();
    let local = Arc::new(CountingChunks {
        engines: vec![cluster.node(2).unwrap().engine().clone()],
        served: 0.into(),
    });
    assert!(read_with(local.clone()).await.unwrap() == data);
    assert!(shale_gateway::metrics::METRICS.corrupt_chunks.get() > corrupt_before);
    // No local store holds anything: every chunk comes through the cluster.
    let none = Arc::new(CountingChunks {
        engines: Vec::new(),
        served: 0.into(),
    });
    assert!(read_with(none.clone()).await.unwrap() == data);
    assert_eq!(none.served.load(Ordering::SeqCst), 0);
    drop(kv);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunks_are_read_from_near_stores_own_replicas_first() {
    use futures::TryStreamExt;
    use shale_gateway::layout::{chunk_key, seal_chunk, Body};
    use shale_gateway::objects::Incoming;
    use shale_storage::engine::{Cf, Durability};
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _kv, objects) = cluster_with_bucket(dir.path(), "near").await;
    let data = vec![1u8; (2 << 20) + 3];
    let body = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(data.clone()))]);
    objects
        .put(
            "near",
            "k",
            Incoming::unclaimed(body),
            None,
            Vec::new(),
            Condition::None,
        )
        .await
        .unwrap();
    let meta = objects.head("near", "k").await.unwrap();
    let Body::Chunks { version, .. } = meta.body else {
        panic!("a chunked body")
    };
    let key = chunk_key(version, 0, true);
    let stores: Vec<u64> = cluster.store_addrs().iter().map(|s| s.store_id).collect();
    // Each store's copy of chunk 0 is made recognisable (white-box: a valid chunk of the
    // same size, so whose copy was served shows in the bytes).
    for s in 0..3 {
        let engine = cluster.node(s).unwrap().engine();
        let started = std::time::Instant::now();
        while engine.get(Cf::Data, &key).unwrap().is_none() {
            assert!(started.elapsed() < Duration::from_secs(10));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        corrupt_on(
            &cluster,
            s,
            &key,
            &seal_chunk(&vec![0xA0 + s as u8; 1 << 20]),
        );
    }
    let first_byte = |near: Vec<u64>| {
        let objects = objects.clone().with_near_stores(&near);
        let meta = meta.clone();
        async move {
            let got: Vec<bytes::Bytes> = objects.read(&meta, 0, 1).try_collect().await.unwrap();
            got.concat()[0]
        }
    };
    let from_leader = first_byte(Vec::new()).await;
    for (s, id) in stores.iter().enumerate() {
        assert_eq!(
            first_byte(vec![*id]).await,
            0xA0 + s as u8,
            "store {id}'s copy"
        );
    }
    // A store that is not a replica is skipped; a near store without the chunk (not
    // applied yet) leaves the read to the leader.
    assert_eq!(first_byte(vec![999]).await, from_leader);
    let follower = (0..3).find(|s| 0xA0 + *s as u8 != from_leader).unwrap();
    let engine = cluster.node(follower).unwrap().engine();
    let mut batch = engine.batch();
    batch.delete(Cf::Data, &key);
    engine.write(batch, Durability::Sync).unwrap();
    assert_eq!(first_byte(vec![stores[follower]]).await, from_leader);
    cluster.shutdown().await;
}
