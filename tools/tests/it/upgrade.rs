//! A rolling upgrade: three `shale store` processes speaking the previous wire version
//! (pinned to it, as stores of the previous build speak only it) are restarted one at
//! a time speaking this build's, while a client of the previous version writes. Mixed
//! pairs speak the older version, no acknowledged write is lost, and at the end every
//! store speaks this build's version.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use shale_rpc::certs::{WIRE_VERSION, WIRE_VERSION_OLDEST};
use shale_rpc::transport::{Transport, TransportConfig};

use crate::ctl::ctl;
use crate::procs::*;

fn key(i: u64) -> Bytes {
    Bytes::from(format!("up{i:06}"))
}

/// Waits until the store at `addr` answers a status request again.
async fn serving(transport: &Transport, p: &StoreProc) {
    let started = Instant::now();
    while range_status(transport, &p.config.listen_addr)
        .await
        .is_none()
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "store {} does not serve after its restart:\n{}",
            p.config.store_id,
            p.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stores_upgrade_one_at_a_time_under_writes_and_lose_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let (mut procs, identity) = store_procs(dir.path(), 3);
    for p in procs.iter_mut() {
        p.config.transport.wire_version = WIRE_VERSION_OLDEST;
        p.save_config();
    }
    let (admin, _) = start_all(&mut procs, &identity).await;
    // A client of the previous version (a gateway not upgraded yet, say).
    let old_transport = Transport::client(
        &identity,
        TransportConfig {
            wire_version: WIRE_VERSION_OLDEST,
            ..TransportConfig::default()
        },
    )
    .unwrap();
    let client = Arc::new(kv_client(old_transport, &procs, patient_client_config()));
    client.put(key(0), Bytes::from("before")).await.unwrap();
    // Two ranges, so leaders and snapshots of both cross the versions.
    client.split(key(2_500)).await.unwrap();

    let writer = Writer::start(client.clone(), key);
    for i in 0..procs.len() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let p = &mut procs[i];
        assert_eq!(p.terminate(), Some(0), "store {} stops cleanly", i + 1);
        p.config.transport.wire_version = WIRE_VERSION;
        p.save_config();
        p.start();
        serving(&admin, &procs[i]).await;
        // `shale ctl status` shows which stores speak which version.
        let cluster = write_cluster_file(dir.path(), &procs);
        let status = tokio::task::block_in_place(|| ctl(&cluster, &["status"]));
        let spoken: Vec<_> = status["stores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["wire_version"].as_u64())
            .collect();
        let expected: Vec<_> = (0..procs.len())
            .map(|j| {
                Some(u64::from(if j <= i {
                    WIRE_VERSION
                } else {
                    WIRE_VERSION_OLDEST
                }))
            })
            .collect();
        assert_eq!(spoken, expected, "after upgrading store {}", i + 1);
        if i + 1 < procs.len() {
            // It reached the stores not upgraded yet in the version they speak.
            let started = Instant::now();
            while !procs[i]
                .log_text()
                .contains("peer speaks an older wire version")
            {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "upgraded store {} spoke to no older store",
                    i + 1
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let acked = writer.stop().await;
    // Every store speaks this build's version now, and serves a client of it.
    let fresh = client_transport(&identity);
    for p in &procs {
        let addr = p.config.listen_addr.parse().unwrap();
        assert_eq!(fresh.peer_version(addr).await.unwrap(), WIRE_VERSION);
    }
    let new_client = kv_client(fresh, &procs, patient_client_config());
    new_client
        .put(key(9_999), Bytes::from("after"))
        .await
        .unwrap();
    must_read_acked(&new_client, key, &acked).await;
    assert_eq!(
        client.get(key(0)).await.unwrap(),
        Some(Bytes::from("before")),
        "the old client still reads"
    );
    must_all_run(&mut procs, "the upgrade");
}

/// `shale --version` names the wire versions the binary speaks, so an operator can see
/// whether two builds can run side by side.
#[test]
fn the_version_names_the_wire_versions_spoken() {
    let out = shale().arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for v in [WIRE_VERSION, WIRE_VERSION_OLDEST] {
        assert!(text.contains(&format!("shale/{v}")), "{text}");
    }
}
