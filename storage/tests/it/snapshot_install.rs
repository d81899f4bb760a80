//! A received snapshot goes in as an SST file, ingested once the replica's new state is
//! on disk: a crash between the two is finished at restart, and no data is lost.

use std::time::{Duration, Instant};

use shale_rpc::client::{admin, ClientError, FIRST_RANGE_ID};
use shale_rpc::{AdminReply, AdminRequest, KvError};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_between_a_snapshots_state_and_its_ingest_is_finished_at_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, leader, client) = four_stores_one_joining(dir.path()).await;
    for i in 0..300 {
        must_put(&client, i).await;
    }
    let newcomer = cluster.node(3).unwrap();
    newcomer.faults().set_crash_before_snapshot_ingest(true);
    let snapshot_dir = newcomer.engine().snapshot_dir().to_path_buf();
    let req = AdminRequest::AddReplica {
        range_id: FIRST_RANGE_ID,
        store_id: 4,
        addr: cluster.configs[3].listen_addr.clone(),
    };
    let transport =
        shale_rpc::transport::Transport::client(&cluster.identity, Default::default()).unwrap();
    // Answered once the replica votes, or (still a learner: its loop stops before the
    // ingest) `ServerBusy`.
    match admin(&transport, cluster.node(leader).unwrap().addr(), &req).await {
        Ok(AdminReply::Changed(r)) => assert_eq!(r.replicas.len(), 4),
        Err(ClientError::Kv(KvError::ServerBusy { .. })) => {}
        other => panic!("add replica: {other:?}"),
    }
    // The new replica's state is synced with a marker naming its file; the loop then
    // "crashes" before the ingest, leaving the file in place.
    let started = Instant::now();
    while !cluster.node(3).unwrap().faults().crashed() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the new store receives a snapshot file and its loop stops before ingesting it"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        std::fs::read_dir(&snapshot_dir).unwrap().count(),
        1,
        "the snapshot's pairs wait in a file"
    );
    cluster.stop_store(3).await;
    // Writes go on while it is down (a learner, or one of four voters).
    for i in 300..350 {
        must_put(&client, i).await;
    }
    cluster.start_store(3).await.unwrap();
    let all: Vec<usize> = (0..350).collect();
    must_converge(&cluster, 3, &all).await;
    assert_eq!(
        std::fs::read_dir(&snapshot_dir).unwrap().count(),
        0,
        "the file was ingested (moved into the engine) at restart"
    );
    for i in [0, 299, 349] {
        must_get(&client, i).await;
    }
    cluster.shutdown().await;
}
