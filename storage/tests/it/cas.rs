//! Compare-and-set through Raft: decided at apply, in log order, so concurrent updates
//! of one key never lose each other, also across a split and a leader change.

use std::sync::Arc;

use bytes::Bytes;
use shale_rpc::client::{ClientError, KvClient};
use shale_rpc::KvError;

use crate::harness::*;

fn failed(result: Result<(), ClientError>) -> bool {
    match result {
        Ok(()) => false,
        Err(ClientError::Kv(KvError::CompareFailed)) => true,
        Err(e) => panic!("compare-and-set: {e}"),
    }
}

/// Adds one to the counter at `key` by compare-and-set, retrying on a lost race.
async fn increment(client: &KvClient, key: &Bytes) -> u32 {
    let mut lost = 0;
    loop {
        let held = client.get(key.clone()).await.unwrap();
        let n = held
            .as_ref()
            .map_or(0, |b| u64::from_be_bytes(b[..].try_into().unwrap()));
        let next = Bytes::copy_from_slice(&(n + 1).to_be_bytes());
        if !failed(client.compare_and_set(key.clone(), held, Some(next)).await) {
            return lost;
        }
        lost += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compare_and_set_decides_at_apply_and_loses_no_update() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = must_cluster(dir.path(), 3).await;
    let client = Arc::new(cluster.client().unwrap());
    let k = key(1);

    // Absent, then set; a wrong expectation changes nothing.
    assert!(!failed(
        client
            .compare_and_set(k.clone(), None, Some(value(1)))
            .await
    ));
    assert!(failed(
        client
            .compare_and_set(k.clone(), None, Some(value(2)))
            .await
    ));
    assert!(failed(
        client
            .compare_and_set(k.clone(), Some(value(3)), Some(value(2)))
            .await
    ));
    assert_eq!(client.get(k.clone()).await.unwrap(), Some(value(1)));
    assert!(!failed(
        client
            .compare_and_set(k.clone(), Some(value(1)), Some(value(2)))
            .await
    ));
    // A delete by compare-and-set.
    assert!(!failed(
        client
            .compare_and_set(k.clone(), Some(value(2)), None)
            .await
    ));
    assert_eq!(client.get(k.clone()).await.unwrap(), None);
    // Reserved keys are refused like any write.
    match client
        .compare_and_set(Bytes::from_static(b"\0\0x"), None, Some(value(1)))
        .await
    {
        Err(ClientError::Kv(KvError::ReservedKey)) => {}
        other => panic!("{other:?}"),
    }

    // Sixteen writers each add 20 to one counter, all at once: every increment lands.
    let counter = key(500);
    let writers: Vec<_> = (0..16)
        .map(|_| {
            let (client, counter) = (client.clone(), counter.clone());
            tokio::spawn(async move {
                let mut lost = 0;
                for _ in 0..20 {
                    lost += increment(&client, &counter).await;
                }
                lost
            })
        })
        .collect();
    // A split of the counter's range and a leader change while they run.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    client.split(key(400)).await.unwrap();
    let leader = cluster.leader().await.expect("leader");
    let to = cluster.node((leader + 1) % 3).unwrap().store_id;
    let _ = cluster
        .node(leader)
        .unwrap()
        .transfer_leader(shale_rpc::client::FIRST_RANGE_ID, to)
        .await;
    let mut lost = 0;
    for w in writers {
        lost += w.await.unwrap();
    }
    let got = client.get(counter).await.unwrap().unwrap();
    assert_eq!(u64::from_be_bytes(got[..].try_into().unwrap()), 16 * 20);
    eprintln!("320 increments by 16 writers; {lost} compare-and-sets lost a race and retried");
    assert!(lost > 0, "the writers never raced: the test proves nothing");
}
