//! A replica whose data a consistency check finds diverged is replaced: placement takes
//! it out of its range and a fresh copy comes from a sound one.

use std::time::{Duration, Instant};

use shale_rpc::client::admin;
use shale_rpc::{AdminReply, AdminRequest, CheckOutcome};
use shale_storage::engine::{Cf, Durability};

use crate::harness::*;

/// Runs a check of `range_id` through the store at `addr`.
async fn check(
    cluster: &shale_placement::cluster::PlacedCluster,
    addr: std::net::SocketAddr,
    range_id: u64,
) -> Result<CheckOutcome, String> {
    let transport = shale_rpc::transport::Transport::client(&cluster.identity, Default::default())
        .map_err(|e| e.to_string())?;
    match admin(
        &transport,
        addr,
        &AdminRequest::CheckConsistency { range_id },
    )
    .await
    {
        Ok(AdminReply::Checked(outcome)) => Ok(outcome),
        other => Err(format!("{other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_a_check_finds_diverged_is_replaced_from_a_sound_copy() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = must_cluster(dir.path(), 1, 3, |_| {}, |_, _| {}).await;
    let client = cluster.client().unwrap();
    for i in 0..50 {
        client.put(key(i), value(i)).await.unwrap();
    }
    let ids: Vec<u64> = (0..3).map(|i| cluster.store(i).unwrap().store_id).collect();
    let index_of = |store_id: u64| ids.iter().position(|&s| s == store_id).unwrap();
    let first = must_eventually("the first range led", Duration::from_secs(30), || async {
        let r = routes(&cluster).await?;
        r.into_iter()
            .find(|r| r.leader.is_some() && r.range.replicas.len() == 3)
            .ok_or("no leader yet".to_string())
    })
    .await;
    let leader = index_of(first.leader.unwrap());
    let victim = first
        .range
        .replicas
        .iter()
        .find(|r| r.store_id != ids[leader])
        .copied()
        .unwrap();

    // Store `victim`'s copy of a key changes behind Raft's back. Three stores: no free
    // one, so the diverged copy goes first and a fresh one comes back on its store.
    let engine = cluster
        .store(index_of(victim.store_id))
        .unwrap()
        .engine()
        .clone();
    let mut batch = engine.batch();
    batch.put(Cf::Data, &key(7), b"rotten");
    engine.write(batch, Durability::Sync).unwrap();
    let leader_addr = cluster.store(leader).unwrap().addr();
    let outcome = check(&cluster, leader_addr, first.range.id).await.unwrap();
    assert_eq!(outcome.diverged, vec![victim.id], "{outcome:?}");

    let started = Instant::now();
    let repaired = must_eventually(
        "the diverged replica replaced",
        Duration::from_secs(40),
        || async {
            let r = routes(&cluster).await?;
            let range = r
                .iter()
                .find(|r| r.range.id == first.range.id)
                .ok_or("gone")?;
            let fresh = range
                .range
                .replica_on(victim.store_id)
                .is_some_and(|r| r.id != victim.id);
            (fresh && range.range.replicas.len() == 3 && range.learners.is_empty())
                .then(|| range.clone())
                .ok_or(format!(
                    "{:?}, learners {:?}",
                    range.range.replicas, range.learners
                ))
        },
    )
    .await;
    eprintln!(
        "diverged replica {} replaced in {:.1} s: {:?}",
        victim.id,
        started.elapsed().as_secs_f64(),
        repaired.range.replicas
    );
    assert!(repaired.diverged.is_empty(), "{repaired:?}");
    let held = engine.get(Cf::Data, &key(7)).unwrap();
    assert_eq!(
        held.as_deref(),
        Some(&value(7)[..]),
        "the fresh copy is sound"
    );
    // And the replicas agree again.
    let leader = must_eventually("a leader", Duration::from_secs(10), || async {
        let r = routes(&cluster).await?;
        r.iter()
            .find(|r| r.range.id == first.range.id)
            .and_then(|r| r.leader)
            .ok_or("no leader".to_string())
    })
    .await;
    let addr = cluster.store(index_of(leader)).unwrap().addr();
    let outcome = must_eventually(
        "a check of the repaired range",
        Duration::from_secs(20),
        || check(&cluster, addr, first.range.id),
    )
    .await;
    assert!(outcome.agreed && outcome.diverged.is_empty(), "{outcome:?}");
    for i in 0..50 {
        assert_eq!(client.get(key(i)).await.unwrap(), Some(value(i)), "key {i}");
    }
    cluster.shutdown().await;
}
