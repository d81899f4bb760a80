//! Store registration: new stores get ids, a store of another cluster is refused, and
//! every store learns the others' addresses from placement.

use std::time::Duration;

use shale_rpc::placement::PlacementRequest;
use shale_storage::addresses;
use shale_storage::engine::{Cf, Durability, Engine};
use shale_storage::keys::CLUSTER_ID_KEY;
use shale_storage::StorageError;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn new_stores_get_fresh_ids_and_a_foreign_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = must_cluster(dir.path(), 1, 3, |_| {}, |_, _| {}).await;
    let a = cluster.add_store(labels("x"), fast_store).await.unwrap();
    let b = cluster.add_store(labels("y"), fast_store).await.unwrap();
    let (id_a, id_b) = (
        cluster.store(a).unwrap().store_id,
        cluster.store(b).unwrap().store_id,
    );
    assert!(
        id_a > 3 && id_b > 3 && id_a != id_b,
        "ids {id_a} and {id_b}"
    );
    let s = must_eventually(
        "placement lists the new stores with labels",
        std::time::Duration::from_secs(10),
        || async {
            let s = stores(&cluster).await?;
            (s.len() == 5).then_some(s.clone()).ok_or(format!("{s:?}"))
        },
    )
    .await;
    let a_info = s.iter().find(|s| s.id == id_a).unwrap();
    assert_eq!(a_info.labels.get("zone").map(String::as_str), Some("x"));

    // A restarted store keeps its id.
    cluster.stop_store(a).await;
    cluster.start_store(a).await.unwrap();
    assert_eq!(cluster.store(a).unwrap().store_id, id_a);

    // Data of another cluster is refused at start, and left as it was.
    cluster.stop_store(b).await;
    let data_dir = cluster.store_configs[b].data_dir.clone();
    {
        let engine = Engine::open(&data_dir, &Default::default()).unwrap();
        let mut batch = engine.batch();
        batch.put(Cf::Meta, CLUSTER_ID_KEY, &0xdead_beef_u64.to_be_bytes());
        engine.write(batch, Durability::Sync).unwrap();
    }
    match cluster.start_store(b).await {
        Err(StorageError::WrongCluster { got, .. }) => assert_eq!(got, 0xdead_beef),
        other => panic!("expected WrongCluster, got {:?}", other.map(|_| ())),
    }
    cluster.shutdown().await;
}

/// Stores take every store's address from placement and keep it on disk: a store added
/// while scheduling is paused (so no range brings word of it) is known to the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stores_learn_every_stores_address_from_placement_and_keep_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = must_cluster(dir.path(), 1, 3, |_| {}, |_, _| {}).await;
    cluster
        .call(&PlacementRequest::SetScheduling { paused: true })
        .await
        .unwrap();
    let a = cluster.add_store(labels("x"), fast_store).await.unwrap();
    let id_a = cluster.store(a).unwrap().store_id;
    let registered = must_eventually(
        "placement lists the new store",
        Duration::from_secs(10),
        || async {
            let s = stores(&cluster).await?;
            let found = s.iter().find(|s| s.id == id_a).map(|s| s.addr.clone());
            found.ok_or(format!("{s:?}"))
        },
    )
    .await;
    must_eventually(
        "the first store keeps the new store's address",
        Duration::from_secs(20),
        || async {
            let engine = cluster.store(0).unwrap().engine().clone();
            let kept = addresses::load(&engine).map_err(|e| e.to_string())?;
            kept.iter()
                .any(|(id, addr)| *id == id_a && *addr == registered)
                .then_some(())
                .ok_or(format!("{kept:?}"))
        },
    )
    .await;
    cluster.shutdown().await;
}

/// Store 3 of the first range's stores is lost and placement adds its replacement on
/// store 4, which the range's leader cannot reach (its Raft traffic is cut; its
/// heartbeats still reach placement): the learner never hears a word. Its leader reports
/// it silent, so placement gives that add up and repairs on store 5 within seconds,
/// instead of waiting out the operator timeout (60 s here) with two voters.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_added_where_its_leader_cannot_reach_is_replaced_on_another_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = must_cluster(
        dir.path(),
        1,
        5,
        |_| {},
        |_, c| c.raft.learner_silent_after_ms = 1_500,
    )
    .await;
    cluster
        .call(&PlacementRequest::SetScheduling { paused: true })
        .await
        .unwrap();
    let client = cluster.client().unwrap();
    for i in 0..50 {
        client.put(key(i), value(i)).await.unwrap();
    }
    let ids: Vec<u64> = (0..5).map(|i| cluster.store(i).unwrap().store_id).collect();
    let first = must_eventually("the first range led", Duration::from_secs(30), || async {
        let r = routes(&cluster).await?;
        r.into_iter()
            .find(|r| r.leader.is_some())
            .ok_or("no leader yet".to_string())
    })
    .await;
    // The lost store is one of the first range's non-leaders; store 4 (no replica, so
    // repair's first choice) is cut off.
    let lost = (0..3)
        .find(|&i| Some(ids[i]) != first.leader)
        .expect("a follower");
    cluster.store(3).unwrap().faults().set_partitioned(true);
    cluster.stop_store(lost).await;
    let started = std::time::Instant::now();
    let routes = must_eventually(
        "the range repaired onto store 5",
        Duration::from_secs(40),
        || async {
            let r = routes(&cluster).await?;
            let range = r.first().ok_or("no range")?;
            let on: Vec<u64> = range.range.replicas.iter().map(|x| x.store_id).collect();
            let want = |i: usize| range.range.replica_on(ids[i]).is_some();
            (want(4) && !want(3) && !want(lost) && on.len() == 3 && range.learners.is_empty())
                .then_some(r.clone())
                .ok_or(format!("replicas on {on:?}, learners {:?}", range.learners))
        },
    )
    .await;
    eprintln!(
        "repaired past the silent learner in {:.1} s: {:?}",
        started.elapsed().as_secs_f64(),
        routes[0].range.replicas
    );
    for i in 0..50 {
        assert_eq!(client.get(key(i)).await.unwrap(), Some(value(i)), "key {i}");
    }
    cluster.store(3).unwrap().faults().set_partitioned(false);
    cluster.shutdown().await;
}
