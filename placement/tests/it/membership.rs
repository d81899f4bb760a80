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
