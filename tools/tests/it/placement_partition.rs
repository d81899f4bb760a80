//! Three `shale placement` processes (their Raft traffic through UDP relays) and three
//! stores. The placement leader is cut off from the other placement nodes while stores,
//! clients and operators still reach it: the other two elect a leader that routes and
//! hands out ids, no id is ever handed out twice (the cut-off node can commit nothing),
//! stores and clients go on, and once healed the old leader follows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use shale_rpc::client::{ClientConfig, KvClient};
use shale_rpc::placement::{PlacementReply, PlacementRequest};
use shale_rpc::placement_client::PlacementClient;
use shale_rpc::transport::Transport;
use shale_rpc::{Frame, FrameKind};

use crate::procs::*;

fn key(i: u64) -> Bytes {
    Bytes::from(format!("pp{i:06}"))
}

/// What the placement node at `addr` itself answers (no redirects), if anything.
async fn ask_node(
    transport: &Transport,
    addr: &str,
    req: &PlacementRequest,
) -> Result<PlacementReply, String> {
    let frame = Frame::encode(FrameKind::PlacementRequest, req).map_err(|e| e.to_string())?;
    let reply = transport
        .call(addr.parse().unwrap(), &frame)
        .await
        .map_err(|e| e.to_string())?;
    match reply.decode::<Result<PlacementReply, shale_rpc::placement::PlacementError>>(
        FrameKind::PlacementResponse,
    ) {
        Ok(Ok(r)) => Ok(r),
        other => Err(format!("{other:?}")),
    }
}

/// The index of the placement node that answers `Status` as leader.
async fn placement_leader(transport: &Transport, addrs: &[String]) -> Option<usize> {
    for (i, addr) in addrs.iter().enumerate() {
        if let Ok(PlacementReply::Status(_)) =
            ask_node(transport, addr, &PlacementRequest::Status).await
        {
            return Some(i);
        }
    }
    None
}

fn ids_of(reply: &PlacementReply) -> Option<std::ops::Range<u64>> {
    match reply {
        PlacementReply::Ids { first, count } => Some(*first..first + u64::from(*count)),
        _ => None,
    }
}

/// Five blocks of ten ids through `placement` (following its leader), into `handed`.
async fn alloc_five(placement: &PlacementClient, handed: &mut Vec<std::ops::Range<u64>>) {
    for _ in 0..5 {
        let reply = placement
            .call(&PlacementRequest::AllocIds { count: 10 })
            .await
            .unwrap();
        handed.push(ids_of(&reply).expect("ids"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_placement_leader_cut_off_from_its_peers_hands_over_and_no_id_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let (mut stores, identity) = store_procs(dir, 3);
    let (mut placements, addrs, relays) = relayed_placement_procs(dir, 3);
    for p in stores.iter_mut() {
        p.config.placement.addrs = addrs.clone();
        p.config.placement.heartbeat_interval_ms = 200;
        std::fs::write(&p.config_path, toml::to_string(&p.config).unwrap()).unwrap();
    }
    for p in placements.iter_mut().chain(stores.iter_mut()) {
        p.start();
    }
    let transport = client_transport(&identity);
    let placement =
        Arc::new(PlacementClient::new(transport.clone(), &addrs, ClientConfig::default()).unwrap());
    let client = KvClient::through_placement(
        transport.clone(),
        placement.clone(),
        patient_client_config(),
    );
    let started = Instant::now();
    while client.put(key(0), "ready").await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the cluster never served"
        );
    }
    for i in 1..50 {
        client.put(key(i), "before").await.unwrap();
    }
    let mut handed = Vec::new();
    alloc_five(&placement, &mut handed).await;
    let old = placement_leader(&transport, &addrs)
        .await
        .expect("a placement leader");
    relays.isolate(old as u64 + 1, true);
    eprintln!("placement partition: node {} (the leader) cut off", old + 1);

    // Ids through the client (it follows the leader), while the cut-off node is asked
    // directly too: whatever either hands out must never repeat.
    let started = Instant::now();
    let mut from_old = 0;
    let new = loop {
        if let Ok(reply) = ask_node(
            &transport,
            &addrs[old],
            &PlacementRequest::AllocIds { count: 10 },
        )
        .await
        {
            if let Some(ids) = ids_of(&reply) {
                from_old += 1;
                handed.push(ids);
            }
        }
        if let Some(l) = placement_leader(&transport, &addrs)
            .await
            .filter(|&l| l != old)
        {
            break l;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no new placement leader"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "placement partition: node {} leads after {:.1} s; the cut-off node handed out ids {from_old} times",
        new + 1,
        started.elapsed().as_secs_f64()
    );
    alloc_five(&placement, &mut handed).await;
    // Stores and clients go on: writes, and a split (new ids from the new leader).
    for i in 50..100 {
        client.put(key(i), "during").await.unwrap();
    }
    // The split's ids may first be asked of the cut-off node (stores still reach it),
    // which cannot hand any out: under load that can outlast one request's deadline.
    let started = Instant::now();
    loop {
        let tried = client.split(key(25)).await;
        if client.locate(&key(25)).await.unwrap().start_key == key(25) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "a split lands through the new leader's ids: {tried:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    relays.heal();
    let started = Instant::now();
    loop {
        let status = ask_node(&transport, &addrs[old], &PlacementRequest::Status).await;
        let follows = placement_leader(&transport, &addrs)
            .await
            .is_some_and(|l| l != old)
            && status.is_err();
        if follows {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the healed node never followed: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    alloc_five(&placement, &mut handed).await;
    let mut ids: Vec<u64> = handed.iter().flat_map(|r| r.clone()).collect();
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "an id was handed out twice");
    for i in 1..100 {
        let want: &[u8] = if i < 50 { b"before" } else { b"during" };
        assert_eq!(
            client.get(key(i)).await.unwrap().as_deref(),
            Some(want),
            "key {i}"
        );
    }
    for p in stores.iter_mut().chain(placements.iter_mut()) {
        assert_eq!(p.terminate(), Some(0), "{}", p.log_tail());
    }
}
