//! Replication, leader loss, catch-up and restart.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shale_rpc::client::{ClientConfig, FIRST_RANGE_ID};
use shale_rpc::transport::{Transport, TransportConfig};
use shale_rpc::{Frame, FrameKind, KvError, KvOp, KvRequest, KvResponse, WriteOp};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_replicate_to_every_store() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = must_cluster(dir.path(), 3).await;
    let client = cluster.client().unwrap();
    for i in 0..100 {
        must_put(&client, i).await;
    }
    for i in 0..100 {
        must_get(&client, i).await;
    }
    let keys: Vec<usize> = (0..100).collect();
    for s in 0..3 {
        must_converge(&cluster, s, &keys).await;
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batch_is_atomic_and_scan_pages_resume() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = must_cluster(dir.path(), 3).await;
    let client = cluster.client().unwrap();
    let ops = (0..50)
        .map(|i| WriteOp::Put {
            key: key(i),
            value: value(i),
        })
        .chain([WriteOp::Delete { key: key(7) }])
        .collect();
    client.batch(ops).await.unwrap();
    let all = client.scan_all(key(0), key(50), 7).await.unwrap();
    let expected: Vec<_> = (0..50)
        .filter(|&i| i != 7)
        .map(|i| (key(i), value(i)))
        .collect();
    assert_eq!(all, expected, "every key once, in order, across pages");
    let page = client.scan(key(10), key(20), 3).await.unwrap();
    assert_eq!(page.pairs.len(), 3);
    assert!(page.resume_key.is_some());
    let unbounded = client
        .scan_all(key(0), bytes::Bytes::new(), 1000)
        .await
        .unwrap();
    assert_eq!(unbounded.len(), 49);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follower_answers_not_leader_with_the_leaders_address() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = must_cluster(dir.path(), 3).await;
    let leader = cluster.leader().await.unwrap();
    let follower = (leader + 1) % 3;
    let transport = Transport::client(&cluster.identity, TransportConfig::default()).unwrap();
    let req = KvRequest {
        range_id: FIRST_RANGE_ID,
        epoch: None,
        op: KvOp::Get { key: key(1) },
    };
    let frame = Frame::encode(FrameKind::KvRequest, &req).unwrap();
    // The follower may not know the leader for a moment after the election.
    let mut hint = None;
    for _ in 0..100 {
        let reply = transport
            .call(cluster.node(follower).unwrap().addr(), &frame)
            .await
            .unwrap();
        match reply.decode::<KvResponse>(FrameKind::KvResponse).unwrap() {
            Err(KvError::NotLeader {
                leader: Some(h), ..
            }) => {
                hint = Some(h);
                break;
            }
            Err(KvError::NotLeader { leader: None, .. }) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => panic!("expected NotLeader, got {other:?}"),
        }
    }
    let hint = hint.expect("follower learns the leader");
    assert_eq!(hint.store_id, cluster.configs[leader].store_id);
    assert_eq!(hint.addr, cluster.configs[leader].listen_addr);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_loss_elects_a_new_leader_and_keeps_acknowledged_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = must_cluster(dir.path(), 3).await;
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
            let client = client.clone();
            let acked = acked.clone();
            tokio::spawn(async move {
                for n in 0..150 {
                    let i = w * 1000 + n;
                    if client.put(key(i), value(i)).await.is_ok() {
                        acked.lock().unwrap().insert(i);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let old = cluster.leader().await.expect("leader");
    cluster.stop_store(old).await;
    let new = cluster
        .wait_leader(LEADER_TIMEOUT)
        .await
        .expect("a new leader is elected");
    assert_ne!(new, old);
    for w in writers {
        w.await.unwrap();
    }
    let acked: Vec<usize> = acked.lock().unwrap().iter().copied().collect();
    assert!(
        acked.len() > 300,
        "most writes succeed across the failover: {}",
        acked.len()
    );
    for &i in &acked {
        must_get(&client, i).await;
    }
    // The old leader comes back as a follower and catches up with everything.
    cluster.start_store(old).await.unwrap();
    must_converge(&cluster, old, &acked).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_that_was_down_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = must_cluster(dir.path(), 3).await;
    let client = cluster.client().unwrap();
    let leader = cluster.leader().await.unwrap();
    let down = (leader + 1) % 3;
    cluster.stop_store(down).await;
    for i in 0..300 {
        must_put(&client, i).await;
    }
    cluster.start_store(down).await.unwrap();
    let keys: Vec<usize> = (0..300).collect();
    must_converge(&cluster, down, &keys).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarting_every_store_keeps_all_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = must_cluster(dir.path(), 3).await;
    let client = cluster.client().unwrap();
    for i in 0..200 {
        must_put(&client, i).await;
    }
    client.delete(key(5)).await.unwrap();
    let client = restart_all(&mut cluster, 3).await;
    for i in (0..200).filter(|&i| i != 5) {
        must_get(&client, i).await;
    }
    assert_eq!(
        client.get(key(5)).await.unwrap(),
        None,
        "a delete survives restart"
    );
    must_put(&client, 1000).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_ranges_hibernate_and_a_dead_sleeping_leader_is_replaced_when_clients_come() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = must_cluster(dir.path(), 3).await;
    let client = cluster.client().unwrap();
    for i in 0..20 {
        must_put(&client, i).await;
    }
    // Idle for a while: every replica stops ticking.
    let started = std::time::Instant::now();
    loop {
        let mut asleep = 0;
        for s in 0..3 {
            asleep += cluster
                .node(s)
                .unwrap()
                .status()
                .await
                .iter()
                .filter(|r| r.hibernating)
                .count();
        }
        if asleep == 3 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "idle replicas hibernate ({asleep} of 3)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A read wakes the range and is served.
    must_get(&client, 3).await;
    // Asleep again, then the leader dies: a client's requests wake the followers, which
    // elect a new leader.
    let started = std::time::Instant::now();
    while cluster
        .node(0)
        .unwrap()
        .status()
        .await
        .iter()
        .all(|r| !r.hibernating)
    {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "hibernates again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let leader = cluster.leader().await.unwrap();
    cluster.stop_store(leader).await;
    let fresh = cluster.client().unwrap();
    for i in 0..20 {
        must_get(&fresh, i).await;
    }
    must_put(&fresh, 100).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_process_calls_skip_quic_and_follow_stores_that_stop_and_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = must_cluster(dir.path(), 3).await;
    let local = cluster.local_services();
    let client = cluster.client().unwrap();
    client.transport().call_locally(local.clone());
    for i in 0..50 {
        must_put(&client, i).await;
        must_get(&client, i).await;
    }
    assert!(
        local.calls() >= 100,
        "every put and get went in-process: {} calls",
        local.calls()
    );
    // A stopped store leaves the set: calls to it fail (over QUIC, as from elsewhere) and
    // the client finds the new leader, in-process again.
    let old = cluster.leader().await.expect("leader");
    cluster.stop_store(old).await;
    let before = local.calls();
    for i in 50..100 {
        must_put(&client, i).await;
    }
    assert!(
        local.calls() >= before + 50,
        "the new leader is called in-process"
    );
    cluster.start_store(old).await.unwrap();
    let keys: Vec<usize> = (0..100).collect();
    must_converge(&cluster, old, &keys).await;
    for i in 0..100 {
        must_get(&client, i).await;
    }
    // A client that was not told keeps to QUIC.
    let before = local.calls();
    let quic = cluster.client().unwrap();
    must_get(&quic, 7).await;
    assert_eq!(local.calls(), before);
    cluster.shutdown().await;
}
