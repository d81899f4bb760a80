//! Disk space: a store below its reserve refuses new data it would lead (puts, bulk
//! loads, staging) with a clear error, still takes deletes and serves reads, and takes
//! new data again once it has room; what was stored stays intact throughout.

use std::time::{Duration, Instant};

use shale_rpc::client::{ClientError, KvClient, FIRST_RANGE_ID};
use shale_rpc::transport::{Transport, TransportConfig};
use shale_rpc::{Frame, FrameKind, KvError, KvOp, KvRequest, KvResponse, WriteOp};
use shale_storage::cluster::LocalCluster;
use shale_storage::space::SPACE_CHECK_INTERVAL;

use crate::harness::*;

/// Sets every store's reserve and waits until each has read its space since.
async fn set_reserve(cluster: &LocalCluster, stores: &[usize], bytes: u64, low: bool) {
    for &i in stores {
        cluster.node(i).unwrap().space().set_reserve(bytes);
    }
    let started = Instant::now();
    while !stores
        .iter()
        .all(|&i| cluster.node(i).unwrap().space().is_low() == low)
    {
        assert!(
            started.elapsed() < SPACE_CHECK_INTERVAL * 5,
            "stores did not notice their reserve"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A 3-store cluster that took key 0, its client, the leader serving and a follower
/// that applied the write.
async fn with_a_follower(dir: &std::path::Path) -> (LocalCluster, KvClient, usize, usize) {
    let cluster = must_cluster(dir, 3).await;
    let client = cluster.client().unwrap();
    // A write first: the leader found after it is the one serving.
    must_put(&client, 0).await;
    let leader = cluster.leader().await.expect("leader");
    let follower = (leader + 1) % 3;
    must_converge(&cluster, follower, &[0]).await;
    (cluster, client, leader, follower)
}

fn must_be_no_space(result: Result<(), ClientError>, store_id: u64, what: &str) {
    match result {
        Err(ClientError::Kv(KvError::NoSpace {
            store_id: got,
            detail,
        })) => {
            assert_eq!(got, store_id, "{what}: {detail}");
            assert!(detail.contains("kept in reserve"), "{what}: {detail}");
        }
        other => panic!("{what}: expected NoSpace from store {store_id}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_low_on_space_refuses_new_data_but_deletes_and_reads_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = must_cluster(dir.path(), 3).await;
    let client: KvClient = cluster.client().unwrap();
    for i in 0..50 {
        must_put(&client, i).await;
    }
    let leader = cluster.leader().await.expect("leader");
    let leader_id = cluster.node(leader).unwrap().store_id;

    // More reserve than any disk has: the leader's store is low at its next reading.
    set_reserve(&cluster, &[leader], u64::MAX / 2, true).await;
    let space = cluster.node(leader).unwrap().space();
    assert!(space.available() < space.reserve());

    must_be_no_space(client.put(key(100), value(100)).await, leader_id, "put");
    let with_a_put = vec![
        WriteOp::Delete { key: key(1) },
        WriteOp::Put {
            key: key(101),
            value: value(101),
        },
    ];
    must_be_no_space(client.batch(with_a_put).await, leader_id, "batch");
    let pairs = vec![(key(102), value(102)), (key(103), value(103))];
    must_be_no_space(client.ingest(&pairs).await, leader_id, "bulk load");
    let range = client.locate(&key(104)).await.unwrap();
    must_be_no_space(
        client.stage(&range, 7, &[(key(104), value(104))]).await,
        leader_id,
        "staging",
    );
    // The refused writes left nothing behind, and what was there is intact.
    for i in [100, 101, 102, 103, 104] {
        assert_eq!(client.get(key(i)).await.unwrap(), None, "key {i}");
    }
    for i in 0..50 {
        must_get(&client, i).await;
    }

    // Deletes free space, so they pass.
    client
        .delete(key(0))
        .await
        .expect("a delete on a low store");
    client
        .batch(vec![WriteOp::Delete { key: key(2) }])
        .await
        .expect("a delete-only batch");
    assert_eq!(client.get(key(0)).await.unwrap(), None);
    assert_eq!(client.get(key(2)).await.unwrap(), None);

    // Room again: new data is taken.
    set_reserve(&cluster, &[leader], 0, false).await;
    must_put(&client, 100).await;
    client.ingest(&pairs).await.expect("bulk load with room");
    must_get(&client, 100).await;
    for i in (3..50).chain([102, 103]) {
        must_get(&client, i).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_low_follower_does_not_stop_writes_and_stays_in_step() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, client, _, follower) = with_a_follower(dir.path()).await;
    // Low, but above half the reserve: a follower still appends from its reserve (and
    // placement would move it).
    let available = cluster.node(follower).unwrap().space().available();
    set_reserve(&cluster, &[follower], available / 2 * 3, true).await;
    assert!(!cluster.node(follower).unwrap().space().is_critical());
    for i in 0..30 {
        must_put(&client, i).await;
    }
    must_converge(&cluster, follower, &(0..30).collect::<Vec<_>>()).await;
    // A put sent to the low follower is pointed at the leader, not refused there.
    let transport = Transport::client(&cluster.identity, TransportConfig::default()).unwrap();
    let req = KvRequest {
        range_id: FIRST_RANGE_ID,
        epoch: None,
        op: KvOp::Put {
            key: key(99),
            value: value(99),
        },
    };
    let frame = Frame::encode(FrameKind::KvRequest, &req).unwrap();
    let reply = transport
        .call(cluster.node(follower).unwrap().addr(), &frame)
        .await
        .unwrap();
    match reply.decode::<KvResponse>(FrameKind::KvResponse).unwrap() {
        Err(KvError::NotLeader { .. }) => {}
        other => panic!("expected NotLeader from the low follower, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_below_half_its_reserve_takes_no_new_data_then_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, client, leader, follower) = with_a_follower(dir.path()).await;
    set_reserve(&cluster, &[follower], u64::MAX / 2, true).await;
    assert!(cluster.node(follower).unwrap().space().is_critical());
    let before = applied(&cluster, follower).await;
    // The other two carry the range: puts are acknowledged, and the critical follower
    // takes none of them.
    for i in 1..40 {
        must_put(&client, i).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(applied(&cluster, leader).await > before + 30);
    assert_eq!(
        applied(&cluster, follower).await,
        before,
        "the follower took new data"
    );
    client.delete(key(39)).await.unwrap();
    // Room again: it catches up with everything acknowledged.
    set_reserve(&cluster, &[follower], 0, false).await;
    must_converge(&cluster, follower, &(0..39).collect::<Vec<_>>()).await;
    assert_eq!(
        cluster
            .node(follower)
            .unwrap()
            .engine()
            .get(shale_storage::engine::Cf::Data, &key(39))
            .unwrap(),
        None
    );
}

async fn applied(cluster: &LocalCluster, i: usize) -> u64 {
    let status = cluster.node(i).unwrap().status().await;
    let first = status.iter().find(|s| s.range_id() == FIRST_RANGE_ID);
    first
        .expect("the store holds the first range")
        .applied_index
}
