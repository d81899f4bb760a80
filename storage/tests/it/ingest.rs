//! Bulk load: small pieces ride in their Raft entry (`KvOp::Ingest`), large ones are
//! staged as SST files on every replica's store and ingested through a small entry
//! (`KvOp::StageIngest`, `KvOp::IngestStaged`). Either way the pairs reach every
//! replica, ordered with ordinary writes, cut at range boundaries by the client, kept
//! across a restart of every store, and bad input is refused with nothing stored.

use bytes::Bytes;
use shale_rpc::client::ClientError;
use shale_rpc::{KvError, KvOp};
use shale_storage::engine::Cf;

use crate::harness::*;

fn pairs(from: usize, to: usize, tag: &str) -> Vec<(Bytes, Bytes)> {
    padded_pairs(from, to, tag, 0)
}

/// Pairs whose values are `tag-i` followed by `pad` bytes.
fn padded_pairs(from: usize, to: usize, tag: &str, pad: usize) -> Vec<(Bytes, Bytes)> {
    (from..to)
        .map(|i| (key(i), padded(&format!("{tag}-{i}"), pad)))
        .collect()
}

fn padded(text: &str, pad: usize) -> Bytes {
    let mut v = text.as_bytes().to_vec();
    v.resize(v.len() + pad, b'.');
    Bytes::from(v)
}

async fn must_hold_nothing(client: &shale_rpc::client::KvClient) {
    let scanned = client
        .scan_all(Bytes::new(), Bytes::new(), 100)
        .await
        .unwrap();
    assert!(scanned.is_empty(), "nothing was stored: {scanned:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ingested_pairs_reach_every_replica_in_order_with_writes_and_survive_restart() {
    ingest_reaches_every_replica(0).await;
}

/// 4,000 pairs of about 2 KiB: pieces large enough to be staged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn staged_pairs_reach_every_replica_in_order_with_writes_and_survive_restart() {
    ingest_reaches_every_replica(2_000).await;
}

async fn ingest_reaches_every_replica(pad: usize) {
    let staged_before = shale_storage::metrics::METRICS.staged_files.get();
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = must_cluster(dir.path(), 3).await;
    let client = cluster.client().unwrap();
    // Written before: one key the ingest replaces, one it leaves alone.
    client.put(key(10), "before").await.unwrap();
    client.put(key(5_000), "untouched").await.unwrap();
    // Two ranges, so the client cuts the load at the boundary.
    client.split(key(2_000)).await.unwrap();
    let loaded = padded_pairs(0, 4_000, "bulk", pad);
    client.ingest(&loaded).await.unwrap();
    let staged = shale_storage::metrics::METRICS.staged_files.get() - staged_before;
    if pad > 0 {
        assert!(
            staged >= 6,
            "two ranges, three replicas each: {staged} files staged"
        );
    }
    // A write after the ingest wins over it.
    client.put(key(20), "after").await.unwrap();
    let want = |i: usize| match i {
        20 => Bytes::from("after"),
        i if i < 4_000 => padded(&format!("bulk-{i}"), pad),
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
        // Ingest took every staged file (linked into RocksDB, not copied).
        let left: Vec<_> = std::fs::read_dir(engine.staged_dir()).unwrap().collect();
        assert!(left.is_empty(), "store {s} keeps staged files: {left:?}");
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
    must_hold_nothing(&client).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn staged_ingests_that_cannot_apply_everywhere_are_refused_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = must_cluster(dir.path(), 3).await;
    let config = shale_rpc::client::ClientConfig {
        attempts_max: 3,
        deadline_ms: 3_000,
        ..Default::default()
    };
    let client = cluster.client_with(config).unwrap();
    client.split(key(2_000)).await.unwrap();
    let stores: Vec<u64> = client.replica_stores(&key(0)).await.unwrap();
    let loaded = padded_pairs(0, 100, "s", 100);
    let crc32 = shale_rpc::pairs_crc32(&loaded);
    let ingest = |id: u128, crc32: u32, stores: Vec<u64>| KvOp::IngestStaged {
        id,
        crc32,
        first_key: key(0),
        last_key: key(99),
        stores,
    };
    let refused = |r: Result<shale_rpc::KvReply, ClientError>| match r {
        Err(ClientError::Kv(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    };
    // Nothing staged anywhere.
    assert!(matches!(
        refused(client.request(ingest(1, crc32, stores.clone())).await),
        KvError::NotStaged { .. }
    ));
    // Staged on one store only (the request goes to one replica), but the ingest
    // names only that store: the other replicas would have nothing to ingest.
    client
        .request(KvOp::StageIngest {
            id: 2,
            pairs: loaded.clone(),
        })
        .await
        .unwrap();
    for s in &stores {
        assert!(matches!(
            refused(client.request(ingest(2, crc32, vec![*s])).await),
            KvError::NotStaged { .. }
        ));
    }
    // Named everywhere, but the pairs staged are not the ones the ingest names.
    assert!(matches!(
        refused(client.request(ingest(2, crc32 ^ 1, stores.clone())).await),
        KvError::NotStaged { .. }
    ));
    // Staging pairs that cross the split: refused by the store.
    let across = padded_pairs(1_990, 2_010, "x", 10);
    let outcome = client
        .request(KvOp::StageIngest {
            id: 3,
            pairs: across,
        })
        .await;
    assert!(
        matches!(
            outcome,
            Err(ClientError::Unavailable { ref last, .. }) if last.contains("not in range")
        ),
        "{outcome:?}"
    );
    // Bad pairs are refused before any file is written.
    let mut unsorted = loaded.clone();
    unsorted.swap(3, 4);
    assert!(matches!(
        refused(
            client
                .request(KvOp::StageIngest {
                    id: 4,
                    pairs: unsorted
                })
                .await
        ),
        KvError::InvalidIngest { .. }
    ));
    must_hold_nothing(&client).await;
    cluster.shutdown().await;
}

/// A client that retries an ingest (its answer was lost, say) gets it done once: the
/// second request finds the file ingested and answers at once; no replica is asked to
/// ingest a file it no longer has.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_staged_ingest_applies_once() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = must_cluster(dir.path(), 3).await;
    let client = cluster.client().unwrap();
    let range = client.locate(&key(0)).await.unwrap();
    let loaded = padded_pairs(0, 300, "r", 1_000);
    client.stage(&range, 77, &loaded).await.unwrap();
    let ingest = || KvOp::IngestStaged {
        id: 77,
        crc32: shale_rpc::pairs_crc32(&loaded),
        first_key: key(0),
        last_key: key(299),
        stores: range.replicas.iter().map(|r| r.store_id).collect(),
    };
    let (a, b) = tokio::join!(client.request(ingest()), client.request(ingest()));
    assert_eq!(a.unwrap(), shale_rpc::KvReply::Written);
    assert_eq!(b.unwrap(), shale_rpc::KvReply::Written);
    client.put(key(3), "later").await.unwrap();
    // Once more, well after: still answered as done, and the later write stands.
    assert_eq!(
        client.request(ingest()).await.unwrap(),
        shale_rpc::KvReply::Written
    );
    assert_eq!(
        client.get(key(3)).await.unwrap(),
        Some(Bytes::from("later"))
    );
    let all = client.scan_all(key(0), key(999), 1_000).await.unwrap();
    assert_eq!(all.len(), 300);
    assert_eq!(all[10].1, padded("r-10", 1_000));
    cluster.shutdown().await;
}

/// `put_staged` writes one large value by staging it; a client whose route is stale
/// (the range split since it looked) learns the new ranges from the refusal and stages
/// again rather than fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_staged_put_with_a_stale_route_learns_the_split_and_lands_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = must_cluster(dir.path(), 3).await;
    let stale = cluster.client().unwrap();
    let fresh = cluster.client().unwrap();
    let value = padded("big", 300 << 10);
    // The stale client learns the one range, then another client splits it.
    stale.put(key(1), "warm").await.unwrap();
    fresh.split(key(500)).await.unwrap();
    let staged_before = shale_storage::metrics::METRICS.staged_files.get();
    stale.put_staged(key(700), value.clone()).await.unwrap();
    assert!(
        shale_storage::metrics::METRICS.staged_files.get() >= staged_before + 3,
        "staged on the three replicas"
    );
    assert_eq!(fresh.get(key(700)).await.unwrap(), Some(value.clone()));
    // Each replica applies the ingest in its own time; within seconds it holds it.
    for i in 0..3 {
        let engine = cluster.node(i).unwrap().engine();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let stored = engine.get(Cf::Data, &key(700)).unwrap();
            if stored.as_deref() == Some(&value[..]) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the replica on store {i} never held the value: {:?}",
                stored.map(|v| v.len())
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    // A value staged again under the same key replaces nothing but itself.
    stale.put_staged(key(700), value.clone()).await.unwrap();
    assert_eq!(fresh.get(key(700)).await.unwrap(), Some(value));
    cluster.shutdown().await;
}
