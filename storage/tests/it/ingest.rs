//! Bulk load through `KvOp::Ingest`: pairs land as SST files ingested on every replica,
//! ordered with ordinary writes, cut at range boundaries by the client, kept across a
//! restart of every store (the Raft log replays an ingest whose apply was not flushed),
//! and bad input is refused with nothing stored.

use bytes::Bytes;
use shale_rpc::client::ClientError;
use shale_rpc::KvError;
use shale_storage::engine::Cf;

use crate::harness::*;

fn pairs(from: usize, to: usize, tag: &str) -> Vec<(Bytes, Bytes)> {
    (from..to)
        .map(|i| (key(i), Bytes::from(format!("{tag}-{i}"))))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ingested_pairs_reach_every_replica_in_order_with_writes_and_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = must_cluster(dir.path(), 3).await;
    let client = cluster.client().unwrap();
    // Written before: one key the ingest replaces, one it leaves alone.
    client.put(key(10), "before").await.unwrap();
    client.put(key(5_000), "untouched").await.unwrap();
    // Two ranges, so the client cuts the load at the boundary.
    client.split(key(2_000)).await.unwrap();
    let loaded = pairs(0, 4_000, "bulk");
    client.ingest(&loaded).await.unwrap();
    // A write after the ingest wins over it.
    client.put(key(20), "after").await.unwrap();
    let want = |i: usize| match i {
        20 => Bytes::from("after"),
        i if i < 4_000 => Bytes::from(format!("bulk-{i}")),
        5_000 => Bytes::from("untouched"),
        _ => unreachable!(),
    };
    let check = |client: shale_rpc::client::KvClient| async move {
        for i in [0, 10, 20, 1_999, 2_000, 3_999, 5_000] {
            assert_eq!(client.get(key(i)).await.unwrap(), Some(want(i)), "key {i}");
        }
        let all = client.scan_all(key(0), key(9_999), 1_000).await.unwrap();
        assert_eq!(
            all.len(),
            4_001,
            "every loaded key once, and the untouched one"
        );
    };
    check(cluster.client().unwrap()).await;
    // Every replica holds the same bytes in its own engine.
    let started = std::time::Instant::now();
    for s in 0..3 {
        let engine = cluster.node(s).unwrap().engine().clone();
        loop {
            let got = engine.get(Cf::Data, &key(20)).unwrap();
            if got.as_deref() == Some(&b"after"[..]) {
                break;
            }
            assert!(started.elapsed() < LEADER_TIMEOUT, "store {s} caught up");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        for i in [0, 10, 1_999, 2_000, 3_999] {
            let got = engine.get(Cf::Data, &key(i)).unwrap();
            assert_eq!(got.as_deref(), Some(&want(i)[..]), "store {s} key {i}");
        }
    }
    for s in 0..3 {
        cluster.stop_store(s).await;
    }
    for s in 0..3 {
        cluster.start_store(s).await.unwrap();
    }
    cluster.wait_leader(LEADER_TIMEOUT).await.unwrap();
    check(cluster.client().unwrap()).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_ingests_are_refused_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = must_cluster(dir.path(), 3).await;
    let client = cluster.client().unwrap();
    let refused = |r: Result<(), ClientError>| match r {
        Err(ClientError::Kv(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let mut unsorted = pairs(0, 10, "u");
    unsorted.swap(3, 4);
    assert!(matches!(
        refused(client.ingest(&unsorted).await),
        KvError::InvalidIngest { .. }
    ));
    let mut twice = pairs(0, 10, "t");
    twice[5].0 = twice[4].0.clone();
    assert!(matches!(
        refused(client.ingest(&twice).await),
        KvError::InvalidIngest { .. }
    ));
    let system = vec![(Bytes::from_static(b"\x00\x00mine"), Bytes::from("x"))];
    assert!(matches!(
        refused(client.ingest(&system).await),
        KvError::ReservedKey
    ));
    let scanned = client
        .scan_all(Bytes::new(), Bytes::new(), 100)
        .await
        .unwrap();
    assert!(scanned.is_empty(), "nothing was stored: {scanned:?}");
    cluster.shutdown().await;
}
