//! Placement merges small, cold neighbours back into one range while a client writes:
//! every acknowledged write stays readable, and the stores drop the ranges taken over.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn placement_merges_small_cold_ranges_back_into_one_losing_no_write() {
    merges_back_into_one(3).await;
}

/// With four stores the balancer spreads the ranges' replicas: neighbours are lined up
/// (replicas moved onto the same stores) before they merge.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn neighbours_on_different_stores_are_lined_up_and_merged() {
    merges_back_into_one(4).await;
}

async fn merges_back_into_one(stores: usize) {
    let dir = tempfile::tempdir().unwrap();
    let cluster = must_cluster(
        dir.path(),
        1,
        stores,
        |p| p.schedule.merge_after_split_ms = 1000,
        |_, _| {},
    )
    .await;
    let client = Arc::new(cluster.client().unwrap());
    must_load(&client, 200, 8).await;
    // Placement hears of the splits by heartbeat: until then it knows one range, and
    // "merged back into one" would hold before anything merged.
    must_eventually(
        "placement knows the split ranges",
        Duration::from_secs(10),
        || async {
            let known = routes(&cluster).await?.len();
            (known > 1).then_some(()).ok_or(format!("{known} ranges"))
        },
    )
    .await;

    // A slow writer all through (slow enough that the ranges stay cold).
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 1000;
            while !stop.load(Ordering::SeqCst) && i < 3000 {
                let k = if i % 2 == 0 { i } else { i - 900 }; // both ends of the key space
                match client.put(key(k), value(k)).await {
                    Ok(()) => acked.push(k),
                    Err(e) => panic!("put {k}: {e}"),
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            acked
        })
    };
    must_eventually(
        "every range merged back into one",
        Duration::from_secs(90),
        || async {
            let routes = settled(&cluster, 3).await?;
            (routes.len() == 1)
                .then_some(())
                .ok_or(format!("{} ranges", routes.len()))
        },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let acked = writer.await.unwrap();
    assert!(!acked.is_empty());
    must_read_all(&client, (0..200).chain(acked)).await;
    // No store holds anything of the ranges taken over.
    let only = routes(&cluster).await.unwrap()[0].range.id;
    for i in 0..stores {
        let store = cluster.store(i).unwrap();
        must_eventually("merged replicas gone", Duration::from_secs(20), || async {
            let held: Vec<u64> = store.status().await.iter().map(|s| s.range_id()).collect();
            held.iter()
                .all(|&id| id == only)
                .then_some(())
                .ok_or(format!("store {i} holds {held:?}"))
        })
        .await;
    }
    cluster.shutdown().await;
}

/// A store down while its replicas are moved away and their range is then merged away
/// comes back holding a replica of a range placement no longer knows: placement names it
/// removed (a newer range holds its keys), and the store drops it and its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_that_missed_its_ranges_merge_is_removed_when_its_store_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = must_cluster(
        dir.path(),
        1,
        4,
        |_| {},
        |_, c| c.placement.leaderless_report_after_ms = 1000,
    )
    .await;
    // Only repair (and what is asked by hand): the ranges stay on the first three stores.
    let pause = shale_rpc::placement::PlacementRequest::SetScheduling { paused: true };
    cluster.call(&pause).await.unwrap();
    let client = Arc::new(cluster.client().unwrap());
    must_load(&client, 100, 2).await;
    let routes_now = must_eventually("two ranges settled", Duration::from_secs(30), || async {
        let r = settled(&cluster, 3).await?;
        (r.len() == 2 && r.iter().all(|r| r.leader.is_some()))
            .then_some(r)
            .ok_or("not yet".to_string())
    })
    .await;
    let (left, right) = (&routes_now[0], &routes_now[1]);
    // A store holding both ranges, leading neither.
    let leaders = [left.leader, right.leader];
    let down = (0..4)
        .find(|&i| {
            let id = cluster.store(i).unwrap().store_id;
            left.range.replica_on(id).is_some()
                && right.range.replica_on(id).is_some()
                && !leaders.contains(&Some(id))
        })
        .expect("a follower of both");
    let down_id = cluster.store(down).unwrap().store_id;
    cluster.stop_store(down).await;
    must_eventually("both ranges repaired", Duration::from_secs(60), || async {
        let r = settled(&cluster, 3).await?;
        r.iter()
            .all(|r| r.range.replica_on(down_id).is_none())
            .then_some(())
            .ok_or("not yet".to_string())
    })
    .await;
    let req = shale_rpc::placement::PlacementRequest::Merge {
        range_id: left.range.id,
    };
    cluster.call(&req).await.unwrap();
    must_eventually("merged", Duration::from_secs(30), || async {
        let r = settled(&cluster, 3).await?;
        (r.len() == 1)
            .then_some(())
            .ok_or(format!("{} ranges", r.len()))
    })
    .await;
    cluster.start_store(down).await.unwrap();
    must_eventually(
        "the returning store drops both stale replicas",
        Duration::from_secs(30),
        || async {
            let held = cluster.store(down).unwrap().status().await;
            held.is_empty().then_some(()).ok_or(format!(
                "still holds {:?}",
                held.iter().map(|s| s.range_id()).collect::<Vec<_>>()
            ))
        },
    )
    .await;
    must_read_all(&client, 0..100).await;
    cluster.shutdown().await;
}
