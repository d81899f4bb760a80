//! Many ranges: splits under load, automatic splits, hundreds of ranges, stale routes.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use shale_rpc::client::ClientConfig;
use shale_rpc::{KvError, WriteOp};
use shale_storage::cluster::LocalCluster;

use crate::harness::*;

/// Range ids on store `i`, as it reports them.
async fn ranges_on(cluster: &LocalCluster, i: usize) -> Vec<u64> {
    cluster
        .node(i)
        .unwrap()
        .status()
        .await
        .iter()
        .map(|s| s.range_id())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn split_under_concurrent_writes_loses_nothing_and_scans_see_each_key_once() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = must_cluster(dir.path(), 3).await;
    let client = Arc::new(
        cluster
            .client_with(ClientConfig {
                deadline_ms: 30_000,
                ..ClientConfig::default()
            })
            .unwrap(),
    );
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (client, acked) = (client.clone(), acked.clone());
            tokio::spawn(async move {
                for n in 0..250 {
                    let i = w * 1000 + n * 4; // spread over the writer's thousand
                    if client.put(key(i), value(i)).await.is_ok() {
                        acked.lock().unwrap().insert(i);
                    }
                }
            })
        })
        .collect();
    let admin = cluster.client().unwrap();
    for split_at in [500, 1500, 2500, 3500, 1250] {
        tokio::time::sleep(Duration::from_millis(60)).await;
        let (left, right) = admin
            .split(key(split_at))
            .await
            .unwrap_or_else(|e| panic!("split at {split_at}: {e}"));
        assert_eq!(left.end_key, right.start_key);
        assert_eq!(right.start_key, key(split_at));
        assert!(right.epoch.version > 1 && left.epoch == right.epoch);
    }
    for w in writers {
        w.await.unwrap();
    }
    let acked: BTreeSet<usize> = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), 1000, "every write succeeds despite the splits");
    for &i in &acked {
        must_get(&client, i).await;
    }
    let scanned = client
        .scan_all(Bytes::new(), Bytes::new(), 97)
        .await
        .unwrap();
    let keys: Vec<Bytes> = scanned.iter().map(|(k, _)| k.clone()).collect();
    let mut sorted = keys.clone();
    sorted.dedup();
    assert_eq!(
        keys, sorted,
        "scan pages across ranges see each key once, in order"
    );
    let expected: Vec<Bytes> = acked.iter().map(|&i| key(i)).collect();
    assert_eq!(
        keys, expected,
        "the scan sees exactly the acknowledged writes"
    );
    for s in 0..3 {
        let started = Instant::now();
        while ranges_on(&cluster, s).await.len() != 6 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "store {s} has every range"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ranges_split_by_size_and_a_cold_client_reads_everything() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start_new(dir.path(), 3, |c| {
        c.split.range_size_bytes_max = 64 << 10;
        c.split.check_after_written_bytes = 8 << 10;
    })
    .await
    .unwrap();
    cluster.wait_leader(LEADER_TIMEOUT).await.unwrap();
    let client = cluster.client().unwrap();
    let big = Bytes::from(vec![b'v'; 1024]);
    for i in 0..400 {
        client
            .put(key(i), big.clone())
            .await
            .unwrap_or_else(|e| panic!("put {i}: {e}"));
    }
    let started = Instant::now();
    loop {
        let n = ranges_on(&cluster, 0).await.len();
        if n >= 4 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "400 KiB in 64 KiB ranges splits (have {n})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cold = cluster.client().unwrap();
    for i in 0..400 {
        assert_eq!(
            cold.get(key(i)).await.unwrap(),
            Some(big.clone()),
            "key {i}"
        );
    }
    let all = cold
        .scan_all(Bytes::new(), Bytes::new(), 1000)
        .await
        .unwrap();
    assert_eq!(all.len(), 400);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_ranges_serve_and_survive_a_full_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = must_cluster(dir.path(), 3).await;
    let client = cluster.client().unwrap();
    const RANGES: usize = 210;
    for r in 1..RANGES {
        client
            .split(key(r * 10))
            .await
            .unwrap_or_else(|e| panic!("split {r}: {e}"));
    }
    for r in 0..RANGES {
        must_put(&client, r * 10 + 5).await;
    }
    for r in 0..RANGES {
        must_get(&client, r * 10 + 5).await;
    }
    assert_eq!(ranges_on(&cluster, 0).await.len(), RANGES);
    for s in 0..3 {
        cluster.stop_store(s).await;
    }
    for s in 0..3 {
        cluster.start_store(s).await.unwrap();
    }
    for s in 0..3 {
        assert_eq!(
            ranges_on(&cluster, s).await.len(),
            RANGES,
            "store {s} keeps every range"
        );
    }
    let cold = cluster.client().unwrap();
    for r in 0..RANGES {
        must_get(&cold, r * 10 + 5).await;
        must_put(&cold, r * 10 + 6).await;
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_with_stale_routes_finds_its_way_after_a_split_and_a_leader_transfer() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = must_cluster(dir.path(), 3).await;
    let stale = cluster.client().unwrap();
    for i in 0..100 {
        must_put(&stale, i).await;
    }
    // Another client splits; `stale` still believes in one range.
    let admin = cluster.client().unwrap();
    let (_, right) = admin.split(key(50)).await.unwrap();
    for i in 0..100 {
        must_get(&stale, i).await;
    }
    must_put(&stale, 75).await;

    // Move the right range's leader; `stale` has the old leader cached.
    let started = Instant::now();
    let (leader, status) = loop {
        let mut found = None;
        for s in 0..3 {
            let st = cluster.node(s).unwrap().status().await;
            if let Some(r) = st
                .into_iter()
                .find(|r| r.range_id() == right.id && r.is_leader)
            {
                found = Some((s, r));
            }
        }
        if let Some(f) = found {
            break f;
        }
        assert!(
            started.elapsed() < LEADER_TIMEOUT,
            "the right range elects a leader"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let target = (leader + 1) % 3;
    let to_store = cluster.configs[target].store_id;
    cluster
        .node(leader)
        .unwrap()
        .transfer_leader(right.id, to_store)
        .await
        .unwrap();
    let started = Instant::now();
    while !cluster
        .node(target)
        .unwrap()
        .status()
        .await
        .iter()
        .any(|r| r.range_id() == right.id && r.is_leader)
    {
        assert!(
            started.elapsed() < LEADER_TIMEOUT,
            "leadership moves ({status:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 50..100 {
        must_get(&stale, i).await;
    }
    must_put(&stale, 99).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_splits_and_cross_range_batches_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = must_cluster(dir.path(), 3).await;
    let client = cluster.client().unwrap();
    client.split(key(10)).await.unwrap();
    let err = client.split(key(10)).await.unwrap_err();
    assert!(
        err.to_string().contains("start"),
        "splitting at a range's start: {err}"
    );
    let err = client
        .split(Bytes::from_static(b"\x00\x00x"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("system"), "{err}");
    let ops = vec![
        WriteOp::Put {
            key: key(1),
            value: value(1),
        },
        WriteOp::Put {
            key: key(20),
            value: value(20),
        },
    ];
    let err = client.batch(ops).await.unwrap_err();
    assert!(
        matches!(
            err,
            shale_rpc::client::ClientError::Kv(KvError::BatchSpansRanges { .. })
        ),
        "{err}"
    );
    assert_eq!(
        client.get(key(1)).await.unwrap(),
        None,
        "nothing of the refused batch was written"
    );
    let err = client
        .put(Bytes::from_static(b"\x00\x00mine"), "v")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            shale_rpc::client::ClientError::Kv(KvError::ReservedKey)
        ),
        "{err}"
    );
    cluster.shutdown().await;
}

/// The key count of `range_id` as its leader reports it, once counted.
async fn leader_key_count(cluster: &LocalCluster, range_id: u64) -> Option<u64> {
    for i in 0..cluster.len() {
        let status = cluster.node(i).unwrap().status().await;
        if let Some(s) = status
            .iter()
            .find(|s| s.range_id() == range_id && s.is_leader)
        {
            return s.key_count;
        }
    }
    None
}

async fn wait_key_count(cluster: &LocalCluster, range_id: u64, want: u64) {
    let started = Instant::now();
    loop {
        let got = leader_key_count(cluster, range_id).await;
        if got == Some(want) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "range {range_id} counts {want} keys (has {got:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leaders_count_their_ranges_keys_and_recount_after_a_split() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start_new(dir.path(), 3, |c| c.split.recheck_after_ms = 200)
        .await
        .unwrap();
    cluster.wait_leader(LEADER_TIMEOUT).await.unwrap();
    let client = cluster.client().unwrap();
    for i in 0..300 {
        must_put(&client, i).await;
    }
    client.delete(key(7)).await.unwrap();
    wait_key_count(&cluster, shale_rpc::client::FIRST_RANGE_ID, 299).await;
    let (left, right) = client.split(key(100)).await.unwrap();
    // The split took the new range's id from the cluster's counter: a key of the first
    // range, counted like any other.
    let counter = client.get(shale_rpc::ID_ALLOC_KEY).await.unwrap();
    assert!(counter.is_some(), "the split allocated an id");
    wait_key_count(&cluster, left.id, 99 + 1).await;
    wait_key_count(&cluster, right.id, 200).await;
    cluster.shutdown().await;
}

/// The status of range `range_id` on store `i`, once it holds an initialized replica.
async fn range_status_on(
    cluster: &LocalCluster,
    i: usize,
    range_id: u64,
) -> Option<shale_rpc::RangeStatus> {
    cluster
        .node(i)?
        .status()
        .await
        .into_iter()
        .find(|s| s.range_id() == range_id && s.range.epoch.version > 0)
}

/// Store `lagging`'s replica of `range_id` once it has applied all its leader (on
/// one of the other two of three stores) has committed.
async fn wait_caught_up(
    cluster: &LocalCluster,
    lagging: usize,
    range_id: u64,
) -> shale_rpc::RangeStatus {
    let started = Instant::now();
    loop {
        let mut theirs = None;
        for s in (0..3).filter(|&s| s != lagging) {
            theirs = theirs.or(range_status_on(cluster, s, range_id)
                .await
                .filter(|st| st.is_leader));
        }
        let mine = range_status_on(cluster, lagging, range_id).await;
        if let (Some(mine), Some(theirs)) = (mine, theirs) {
            if mine.applied_index >= theirs.commit_index && theirs.commit_index > 0 {
                return mine;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "store {lagging} did not catch up on range {range_id}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Three stores whose range holds keys 0..100 everywhere: the cluster, a follower's
/// index (the store a test will cut off) and a client.
async fn keys_on_three_stores(
    dir: &std::path::Path,
) -> (LocalCluster, usize, shale_rpc::client::KvClient) {
    let cluster = must_cluster(dir, 3).await;
    let leader = cluster.wait_leader(LEADER_TIMEOUT).await.unwrap();
    let lagging = (leader + 1) % 3;
    let client = cluster.client().unwrap();
    for i in 0..100 {
        must_put(&client, i).await;
    }
    must_converge(&cluster, lagging, &(0..100).collect::<Vec<_>>()).await;
    (cluster, lagging, client)
}

/// A store cut off while a range split applies the split late, when its link heals. The
/// new range's leader has been calling it meanwhile; those first messages wait for the
/// store's own split instead of making it an empty replica that needs a snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_that_applies_a_split_late_builds_the_new_range_itself() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, lagging, client) = keys_on_three_stores(dir.path()).await;
    let faults = cluster.node(lagging).unwrap().faults();
    faults.set_partitioned(true);
    let (_, right) = client.split(key(50)).await.unwrap();
    for i in 100..140 {
        must_put(&client, i).await;
    }
    // Long enough for the new range to elect its leader and call the cut-off store.
    tokio::time::sleep(Duration::from_millis(500)).await;
    faults.set_partitioned(false);
    let caught_up = wait_caught_up(&cluster, lagging, right.id).await;
    assert_eq!(
        caught_up.truncated_index,
        shale_storage::command::RANGE_INIT_INDEX,
        "the new range was built by the store's own split, not sent as a snapshot: {caught_up:?}"
    );
    must_hold(&cluster, lagging, 0..140);
    cluster.shutdown().await;
}

/// A store whose replica of a range hears nothing while the range splits and the new
/// range takes writes. The new range's leader soon gives the store an empty replica and
/// offers it a snapshot; that snapshot must wait until the old replica has applied the
/// split. Installed at once, it was overwritten by the older writes the old replica then
/// applied for the same keys: acknowledged writes lost (found by the chaos test).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_ranges_snapshot_waits_for_the_split_on_a_store_that_lags() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, lagging, client) = keys_on_three_stores(dir.path()).await;
    let faults = cluster.node(lagging).unwrap().faults();
    faults.set_range_cut(shale_rpc::client::FIRST_RANGE_ID, true);
    // Older values, which the cut-off replica applies only once its link heals.
    for i in 60..80 {
        client.put(key(i), "older").await.unwrap();
    }
    let (_, right) = client.split(key(50)).await.unwrap();
    for i in 60..80 {
        must_put(&client, i).await;
    }
    // Past the wait for a split (`EARLY_GRACE`): the new range's leader has made the
    // store an empty replica and offered it a snapshot.
    tokio::time::sleep(shale_storage::EARLY_GRACE + Duration::from_secs(1)).await;
    assert!(
        range_status_on(&cluster, lagging, right.id).await.is_none(),
        "a snapshot of range {} was installed over keys the store's unsplit replica still holds",
        right.id
    );
    faults.set_range_cut(shale_rpc::client::FIRST_RANGE_ID, false);
    wait_caught_up(&cluster, lagging, shale_rpc::client::FIRST_RANGE_ID).await;
    wait_caught_up(&cluster, lagging, right.id).await;
    must_hold(&cluster, lagging, 0..100);
    cluster.shutdown().await;
}

/// Size checks after writes scan a range only once its estimated size (the last count
/// plus the bytes written since) passes the bound; past it, the range still splits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn size_checks_under_the_bound_spare_the_scan_and_a_range_past_it_still_splits() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start_new(dir.path(), 3, |c| {
        c.split.range_size_bytes_max = 1 << 20;
        c.split.check_after_written_bytes = 8 << 10;
    })
    .await
    .unwrap();
    let leader = cluster.wait_leader(LEADER_TIMEOUT).await.unwrap();
    let client = cluster.client().unwrap();
    let value = Bytes::from(vec![b'v'; 8 << 10]);
    // 480 KiB, one check's worth at a time (a leader asks at most once a tick), all
    // well under the bound.
    for i in 0..60 {
        client.put(key(i), value.clone()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let node = cluster.node(leader).unwrap();
    let started = Instant::now();
    let (checks, scans) = loop {
        let (checks, scans) = node.size_check_stats();
        if checks >= 20 {
            break (checks, scans);
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "writes ask for size checks ({checks} so far)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        (1..=3).contains(&scans),
        "{checks} checks scanned {scans} times: the first counts, the rest estimate"
    );
    assert_eq!(ranges_on(&cluster, leader).await.len(), 1);
    // Past the bound: a check scans and the range splits.
    for i in 60..200 {
        client.put(key(i), value.clone()).await.unwrap();
    }
    let started = Instant::now();
    while ranges_on(&cluster, leader).await.len() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "a range past the bound splits ({:?} checks, scans)",
            node.size_check_stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in (0..200).step_by(7) {
        assert_eq!(
            client.get(key(i)).await.unwrap(),
            Some(value.clone()),
            "key {i}"
        );
    }
    cluster.shutdown().await;
}
