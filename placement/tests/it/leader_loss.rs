//! Losing the placement leader: a new one serves routes and ids; ids never repeat.

use std::time::{Duration, Instant};

use bytes::Bytes;
use shale_rpc::placement::{PlacementReply, PlacementRequest};

use crate::harness::*;

async fn alloc(cluster: &shale_placement::cluster::PlacedCluster, count: u32) -> (u64, u32) {
    match cluster.call(&PlacementRequest::AllocIds { count }).await {
        Ok(PlacementReply::Ids { first, count }) => (first, count),
        other => panic!("alloc ids: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_the_placement_leader_keeps_routes_ids_and_clients() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = must_cluster(dir.path(), 3, 3, |_| {}, |_, _| {}).await;
    let client = cluster.client().unwrap();
    must_load(&client, 100, 5).await;
    let mut handed: Vec<(u64, u32)> = Vec::new();
    for _ in 0..5 {
        handed.push(alloc(&cluster, 10).await);
    }
    must_eventually(
        "placement routes every range",
        Duration::from_secs(30),
        || async {
            let n = routes(&cluster).await?.len();
            (n >= 5).then_some(()).ok_or(format!("{n} ranges"))
        },
    )
    .await;
    // Quiet heartbeats (200 ms apart): nothing changed, so none reports a range.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let old = cluster.placement_leader().expect("a placement leader");
    cluster.stop_placement(old).await;
    let started = Instant::now();
    let found = must_eventually("a new leader routes", Duration::from_secs(10), || async {
        match cluster
            .call(&PlacementRequest::FindRange { key: key(50) })
            .await
        {
            Ok(PlacementReply::Route(Some(r))) => Ok(r),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let took = started.elapsed();
    eprintln!(
        "placement leader lost: routes served again after {:.2} s",
        took.as_secs_f64()
    );
    assert!(found.range.contains(&key(50)));
    let new = cluster.placement_leader().expect("a new placement leader");
    assert_ne!(new, old);
    // Stores report only what changed, and these ranges are idle: the new leader learns
    // who leads them by asking each store for a full report.
    must_eventually(
        "the new leader knows every range's leader",
        Duration::from_secs(10),
        || async {
            let r = routes(&cluster).await?;
            let unknown = r.iter().filter(|r| r.leader.is_none()).count();
            (r.len() >= 5 && unknown == 0)
                .then_some(())
                .ok_or(format!("{unknown} of {} ranges without a leader", r.len()))
        },
    )
    .await;
    for _ in 0..5 {
        handed.push(alloc(&cluster, 10).await);
    }
    // No id handed out twice, across the leader change.
    let mut ids: Vec<u64> = handed
        .iter()
        .flat_map(|&(first, count)| first..first + count as u64)
        .collect();
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "an id was handed out twice");
    // Stores and clients go on: writes, and a split that needs new ids.
    for i in 100..150 {
        client.put(key(i), value(i)).await.unwrap();
    }
    // A split needs new ids from the new leader. (A retried split may find it done.)
    if let Err(e) = client.split(Bytes::from("key-000125")).await {
        let range = client.locate(b"key-000125").await.unwrap();
        assert_eq!(&range.start_key[..], b"key-000125", "split failed: {e}");
    }
    must_read_all(&client, 0..150).await;
    must_eventually(
        "stores heartbeat to the new leader",
        Duration::from_secs(10),
        || async {
            let s = stores(&cluster).await?;
            s.iter()
                .all(|s| s.last_heartbeat_ms_ago.is_some_and(|t| t < 2000))
                .then_some(())
                .ok_or(format!("{s:?}"))
        },
    )
    .await;
    cluster.shutdown().await;
}
