//! Placement merges small, cold neighbours back into one range while a client writes:
//! every acknowledged write stays readable, and the stores drop the ranges taken over.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn placement_merges_small_cold_ranges_back_into_one_losing_no_write() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = must_cluster(
        dir.path(),
        1,
        3,
        |p| p.schedule.merge_after_split_ms = 1000,
        |_, _| {},
    )
    .await;
    let client = Arc::new(cluster.client().unwrap());
    must_load(&client, 200, 8).await;

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
    // Each store holds the one range, and nothing of those taken over.
    for i in 0..3 {
        must_eventually("merged replicas gone", Duration::from_secs(20), || async {
            let held = cluster.store(i).unwrap().status().await.len();
            (held == 1)
                .then_some(())
                .ok_or(format!("store {i} holds {held}"))
        })
        .await;
    }
    cluster.shutdown().await;
}
