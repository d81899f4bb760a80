//! A placement process and four `shale store` processes: kill -9 one store; after the
//! down time placement re-creates its replicas on the live stores, and every
//! acknowledged write is still there.

use std::time::{Duration, Instant};

use bytes::Bytes;
use shale_rpc::client::{ClientConfig, KvClient};
use shale_rpc::placement::{PlacementReply, PlacementRequest, StoreState};
use shale_rpc::placement_client::PlacementClient;

use crate::procs::*;

fn key(i: u64) -> Bytes {
    Bytes::from(format!("k{i:06}"))
}

fn value(i: u64) -> Bytes {
    Bytes::from(format!("v{i}-{}", "q".repeat((i % 100) as usize)))
}

async fn down_stores(placement: &PlacementClient) -> Vec<u64> {
    match placement.call(&PlacementRequest::Stores).await {
        Ok(PlacementReply::Stores(s)) => s
            .into_iter()
            .filter(|s| s.state == StoreState::Down)
            .map(|s| s.id)
            .collect(),
        _ => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_a_store_gets_its_replicas_recreated_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let PlacedProcs {
        stores: mut procs,
        placement: mut placement_proc,
        transport,
        placement_client: placement,
        ..
    } = start_placed_procs(dir, false);
    let client = KvClient::through_placement(
        transport.clone(),
        placement.clone(),
        ClientConfig {
            deadline_ms: 30_000,
            ..ClientConfig::default()
        },
    );
    for i in 0..300 {
        client.put(key(i), value(i)).await.unwrap_or_else(|e| {
            panic!("put {i}: {e}\n{}", procs[0].log_tail());
        });
    }
    for s in 1..12 {
        client.split(key(s * 25)).await.unwrap();
    }
    // Placement spreads replicas onto the fourth store (it joined empty).
    let victim_id = procs[3].config.store_id;
    let started = Instant::now();
    loop {
        let r = routes(&placement).await;
        let on_victim = r
            .iter()
            .filter(|r| r.range.replica_on(victim_id).is_some())
            .count();
        if r.len() >= 12 && on_victim >= 3 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "store {victim_id} never got replicas ({on_victim} of {} ranges): {:?}\n{}\n{}",
            r.len(),
            r.iter()
                .map(|r| (
                    r.range.id,
                    String::from_utf8_lossy(&r.range.start_key).into_owned(),
                    r.range.epoch,
                    r.leader
                ))
                .collect::<Vec<_>>(),
            placement_proc.log_tail(),
            procs
                .iter()
                .map(|p| p.log_tail())
                .collect::<Vec<_>>()
                .join("\n----\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    procs[3].kill9();
    for i in 300..400 {
        client.put(key(i), value(i)).await.unwrap();
    }
    let started = Instant::now();
    loop {
        let r = routes(&placement).await;
        let healed = r.len() >= 12
            && r.iter()
                .all(|r| r.range.replicas.len() == 3 && r.range.replica_on(victim_id).is_none());
        if healed && down_stores(&placement).await == vec![victim_id] {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "replicas of store {victim_id} not re-created: {:?}\n{}",
            r.iter()
                .map(|r| (
                    r.range.id,
                    r.range
                        .replicas
                        .iter()
                        .map(|x| x.store_id)
                        .collect::<Vec<_>>()
                ))
                .collect::<Vec<_>>(),
            placement_proc.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "kill -9 of store {victim_id}: replicas re-created {:.1} s after the kill",
        started.elapsed().as_secs_f64()
    );
    for i in 0..400 {
        assert_eq!(client.get(key(i)).await.unwrap(), Some(value(i)), "key {i}");
    }
    for p in procs.iter_mut().take(3) {
        assert_eq!(p.terminate(), Some(0));
    }
    assert_eq!(placement_proc.terminate(), Some(0));
}
