//! Consistency checks: replicas that hold the same data agree, also while writes land
//! during the check; a copy changed behind Raft's back is named diverged by every
//! replica; leaders check on their interval.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shale_rpc::client::{admin, FIRST_RANGE_ID};
use shale_rpc::{AdminReply, AdminRequest, CheckOutcome, RangeStatus};
use shale_storage::cluster::LocalCluster;
use shale_storage::engine::{Cf, Durability};

use crate::harness::*;

async fn status_on(cluster: &LocalCluster, i: usize) -> RangeStatus {
    let node = cluster.node(i).expect("store is running");
    node.status()
        .await
        .into_iter()
        .find(|s| s.range_id() == FIRST_RANGE_ID)
        .expect("the store holds the first range")
}

/// Runs a check of the first range through the store at `leader`.
async fn must_check(cluster: &LocalCluster, leader: usize) -> CheckOutcome {
    let transport =
        shale_rpc::transport::Transport::client(&cluster.identity, Default::default()).unwrap();
    let req = AdminRequest::CheckConsistency {
        range_id: FIRST_RANGE_ID,
    };
    match admin(&transport, cluster.node(leader).unwrap().addr(), &req).await {
        Ok(AdminReply::Checked(outcome)) => outcome,
        other => {
            for i in 0..3 {
                eprintln!("store {i}: {:?}", status_on(cluster, i).await);
            }
            panic!("{req:?}: {other:?}")
        }
    }
}

fn assert_agree(outcome: &CheckOutcome, keys_at_least: u64) {
    assert!(outcome.agreed, "{outcome:?}");
    assert!(outcome.diverged.is_empty(), "{outcome:?}");
    assert!(outcome.missing.is_empty(), "{outcome:?}");
    assert_eq!(outcome.sums.len(), 3, "{outcome:?}");
    let first = outcome.sums[0].1.as_ref().expect("readable");
    assert!(first.keys >= keys_at_least, "{outcome:?}");
    for (_, sum) in &outcome.sums {
        assert_eq!(sum.as_ref(), Ok(first), "{outcome:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_agree_under_writes_and_a_copy_changed_behind_raft_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = must_cluster(dir.path(), 3).await;
    let client = Arc::new(cluster.client().unwrap());
    for i in 0..200 {
        must_put(&client, i).await;
    }
    let leader = cluster.leader().await.expect("leader");
    assert_agree(&must_check(&cluster, leader).await, 200);

    // Writes landing all through the checks: each replica sums its data as of the
    // check's entry, whatever it applied since, so the sums still agree.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicUsize::new(0));
    // Sixteen writers, so entries before and after a check's commit and apply in the
    // same rounds.
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let (client, stop, written) = (client.clone(), stop.clone(), written.clone());
            tokio::spawn(async move {
                let mut i = 1000 + w * 10_000;
                while !stop.load(Ordering::SeqCst) && i < 1000 + (w + 1) * 10_000 {
                    must_put(&client, i).await;
                    written.fetch_add(1, Ordering::SeqCst);
                    i += 1;
                }
            })
        })
        .collect();
    for _ in 0..10 {
        let before = written.load(Ordering::SeqCst);
        assert_agree(&must_check(&cluster, leader).await, 200);
        assert!(
            written.load(Ordering::SeqCst) > before,
            "writes went on during the check"
        );
    }
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.unwrap();
    }

    // A follower's copy of one key changes without Raft (bit rot, a bug).
    let follower = (0..3).find(|&i| i != leader).unwrap();
    let victim = status_on(&cluster, follower).await.replica_id;
    let engine = cluster.node(follower).unwrap().engine().clone();
    let mut batch = engine.batch();
    batch.put(Cf::Data, &key(7), b"rotten");
    engine.write(batch, Durability::Sync).unwrap();

    let outcome = must_check(&cluster, leader).await;
    assert!(outcome.agreed, "{outcome:?}");
    assert_eq!(outcome.diverged, vec![victim], "{outcome:?}");
    assert_eq!(status_on(&cluster, leader).await.diverged, vec![victim]);
    // Every replica judged the same (the diverged one too, once its peers' sums came).
    let started = Instant::now();
    for i in 0..3 {
        loop {
            let status = status_on(&cluster, i).await;
            if status.last_check.as_ref().map(|c| c.index) == Some(outcome.index) {
                assert_eq!(status.diverged, vec![victim], "store {i}");
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "store {i} judges the check: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // The leader's copy is right: reads see the acknowledged value.
    must_get(&client, 7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leaders_check_their_ranges_on_the_configured_interval() {
    let dir = tempfile::tempdir().unwrap();
    init_tracing();
    let cluster = LocalCluster::start_new(dir.path(), 3, |c| {
        c.consistency.check_interval_secs = 1;
    })
    .await
    .unwrap();
    cluster.wait_leader(LEADER_TIMEOUT).await.expect("leader");
    let client = cluster.client().unwrap();
    for i in 0..50 {
        must_put(&client, i).await;
    }
    // Two checks in a row, each judged agreed, with no admin request.
    let started = Instant::now();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let leader = cluster.leader().await.expect("leader");
        if let Some(last) = status_on(&cluster, leader).await.last_check {
            assert!(last.agreed && last.diverged.is_empty(), "{last:?}");
            if !seen.contains(&last.index) {
                seen.push(last.index);
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "periodic checks ran: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_a_store_down_the_others_agreement_is_the_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = must_cluster(dir.path(), 3).await;
    let client = cluster.client().unwrap();
    for i in 0..50 {
        must_put(&client, i).await;
    }
    let leader = cluster.leader().await.expect("leader");
    let follower = (0..3).find(|&i| i != leader).unwrap();
    let down = status_on(&cluster, follower).await.replica_id;
    cluster.stop_store(follower).await;
    let transport =
        shale_rpc::transport::Transport::client(&cluster.identity, Default::default()).unwrap();
    let req = AdminRequest::CheckConsistency {
        range_id: FIRST_RANGE_ID,
    };
    let outcome = match admin(&transport, cluster.node(leader).unwrap().addr(), &req).await {
        Ok(AdminReply::Checked(outcome)) => outcome,
        other => panic!("{other:?}"),
    };
    assert!(outcome.agreed, "{outcome:?}");
    assert_eq!(outcome.missing, vec![down], "{outcome:?}");
    assert!(outcome.diverged.is_empty(), "{outcome:?}");
    assert_eq!(outcome.sums.len(), 2, "{outcome:?}");
}
