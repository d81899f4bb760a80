//! `shale ctl` against real store processes: status, split, merge, leader transfer,
//! replica move, a killed store showing up as down, and consistency checks.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::procs::*;

/// Runs `shale ctl --json ARGS` against the cluster file.
fn ctl_run(cluster: &std::path::Path, args: &[&str]) -> std::process::Output {
    shale()
        .arg("ctl")
        .arg("--cluster")
        .arg(cluster)
        .arg("--json")
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .unwrap()
}

pub(crate) fn ctl(cluster: &std::path::Path, args: &[&str]) -> Value {
    let out = ctl_run(cluster, args);
    assert!(
        out.status.success(),
        "shale ctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if out.stdout.starts_with(b"{") || out.stdout.starts_with(b"[") {
        serde_json::from_slice(&out.stdout).unwrap()
    } else {
        Value::String(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// The leader of the range holding `key`, once one is known (a range just split off or
/// just handed over may briefly have none).
fn leader_of(cluster: &std::path::Path, key: &str) -> u64 {
    let mut leader = None;
    until(&format!("a leader for {key:?}"), || {
        leader = ctl(cluster, &["ranges", "--key", key])[0]["leader"].as_u64();
        leader.is_some()
    });
    leader.expect("found above")
}

fn until(what: &str, mut f: impl FnMut() -> bool) {
    let started = Instant::now();
    while !f() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_reports_and_steers_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let (mut procs, identity) = store_procs_joining(dir.path(), 4, 3);
    for p in procs.iter_mut() {
        p.start();
    }
    let transport = client_transport(&identity);
    find_leader(&transport, &procs, Duration::from_secs(20))
        .await
        .expect("a leader");
    let cluster = write_cluster_file(dir.path(), &procs);
    let cluster = cluster.as_path();
    tokio::task::block_in_place(|| {
        until("every store up and the range replicated", || {
            let s = ctl(cluster, &["status"]);
            s["stores"]
                .as_array()
                .unwrap()
                .iter()
                .all(|s| s["state"] == "up")
                && s["under_replicated_ranges"] == 0
                && s["ranges"] == 1
        });
        let status = ctl(cluster, &["status"]);
        let stores = status["stores"].as_array().unwrap();
        assert_eq!(stores.len(), 4);
        for s in stores {
            for field in ["id", "state", "labels", "ranges", "leaders", "used_bytes"] {
                assert!(s.get(field).is_some(), "store lacks {field}: {s}");
            }
            assert_eq!(s["wire_version"], shale_rpc::certs::WIRE_VERSION, "{s}");
        }

        ctl(cluster, &["split", "m"]);
        let ranges = ctl(cluster, &["ranges"]);
        let ranges = ranges.as_array().unwrap();
        assert_eq!(ranges.len(), 2, "{ranges:?}");
        for field in [
            "id",
            "start_key",
            "end_key",
            "replicas",
            "leader",
            "size_bytes",
        ] {
            assert!(ranges[0].get(field).is_some(), "range lacks {field}");
        }
        assert_eq!(ranges[1]["start_key"], "m");

        // Split again, then merge back: the merged range spans both, and the range it
        // took over is gone from every store.
        ctl(cluster, &["split", "t"]);
        ctl(cluster, &["merge", "m"]);
        until("the merged range alone to span m..", || {
            let ranges = ctl(cluster, &["ranges"]);
            let ranges = ranges.as_array().unwrap();
            ranges.len() == 2 && ranges[1]["start_key"] == "m" && ranges[1]["end_key"] == ""
        });

        // Leadership of the range holding "a" moves where we say.
        let leader = leader_of(cluster, "a");
        let target = (1..=3).find(|&s| s != leader).unwrap();
        ctl(
            cluster,
            &["transfer-leader", "--key", "a", "--to", &target.to_string()],
        );
        assert_eq!(
            ctl(cluster, &["ranges", "--key", "a"])[0]["leader"].as_u64(),
            Some(target)
        );

        // Move a replica of the range holding "z" to the fourth store.
        let from = leader_of(cluster, "z");
        ctl(
            cluster,
            &[
                "move",
                "--key",
                "z",
                "--from",
                &from.to_string(),
                "--to",
                "4",
            ],
        );
        until("the moved replica to show", || {
            let r = ctl(cluster, &["ranges", "--key", "z"]);
            let replicas: Vec<u64> = r[0]["replicas"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            replicas.contains(&4) && !replicas.contains(&from) && replicas.len() == 3
        });
        // Now on different stores, the two ranges do not merge; the error says why.
        let refused = ctl_run(cluster, &["merge", "a"]);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success());
        assert!(stderr.contains("different stores"), "{stderr}");
    });

    // A killed store shows as down, and the ranges it held as under-replicated.
    let victim = (0..3).find(|&i| procs[i].config.store_id != 4).unwrap();
    procs[victim].kill9();
    let victim_id = procs[victim].config.store_id;
    tokio::task::block_in_place(|| {
        until("the killed store to show as down", || {
            let s = ctl(cluster, &["status"]);
            let down = s["stores"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["id"] == victim_id && s["state"] == "down");
            down && s["under_replicated_ranges"].as_u64().unwrap() >= 1
        });
    });
}

/// `shale ctl --json ARGS`: whether it succeeded, and what it printed.
fn ctl_outcome(cluster: &std::path::Path, args: &[&str]) -> (bool, Value) {
    let out = ctl_run(cluster, args);
    let printed = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.success(), printed)
}

/// Placement and four store processes (three holding the first range), keys
/// `key-0000..key-0099` written through a patient client, and a cluster file that names
/// placement.
async fn placed_with_keys(
    dir: &std::path::Path,
) -> (PlacedProcs, shale_rpc::client::KvClient, std::path::PathBuf) {
    let cluster = start_placed_procs(dir, false);
    let client = kv_client(
        cluster.transport.clone(),
        &cluster.stores,
        patient_client_config(),
    );
    for i in 0..100 {
        client
            .put(format!("key-{i:04}"), format!("value-{i}"))
            .await
            .unwrap();
    }
    let file = write_cluster_file(dir, &cluster.stores);
    let mut json: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    json["placement"] = serde_json::json!([cluster.placement_addr]);
    std::fs::write(&file, json.to_string()).unwrap();
    (cluster, client, file)
}

/// Real processes with placement: `ctl check` passes while the copies agree; a key
/// slipped into one store's data behind Raft's back (the store stopped, its RocksDB
/// opened by hand) makes it fail naming that store, and placement replaces the copy
/// until the check passes again with every acknowledged write intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_check_names_a_diverged_copy_and_placement_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, client, file) = placed_with_keys(dir.path()).await;
    let file = file.as_path();

    let first = tokio::task::block_in_place(|| {
        let mut first = Value::Null;
        until("the range led, on three stores, checked sound", || {
            let (ok, checked) = ctl_outcome(file, &["check"]);
            first = ctl(file, &["ranges"])[0].clone();
            ok && checked[0]["agreed"] == true && first["replicas"].as_array().unwrap().len() == 3
        });
        first
    });
    let leader = first["leader"].as_u64().unwrap();
    let victim_id = first["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_u64)
        .find(|&s| s != leader)
        .unwrap();
    let victim = cluster
        .stores
        .iter()
        .position(|p| p.config.store_id == victim_id)
        .unwrap();

    cluster.stores[victim].terminate();
    {
        let dir = &cluster.stores[victim].config.data_dir;
        let engine = shale_storage::engine::Engine::open(dir, &Default::default()).unwrap();
        let mut batch = engine.batch();
        batch.put(shale_storage::engine::Cf::Data, b"key-0042-rot", b"x");
        engine
            .write(batch, shale_storage::engine::Durability::Sync)
            .unwrap();
    }
    cluster.stores[victim].start();

    tokio::task::block_in_place(|| {
        let started = Instant::now();
        loop {
            let (ok, checked) = ctl_outcome(file, &["check"]);
            let named = checked[0]["diverged_stores"]
                .as_array()
                .is_some_and(|d| d.iter().any(|s| s.as_u64() == Some(victim_id)));
            if named {
                assert!(!ok, "a diverged range fails the check: {checked}");
                eprintln!("check names store {victim_id}: {checked}");
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the check names store {victim_id}: {checked}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        let started = Instant::now();
        loop {
            let (ok, checked) = ctl_outcome(file, &["check"]);
            if ok {
                eprintln!(
                    "sound again after {:.1} s: {}",
                    started.elapsed().as_secs_f64(),
                    ctl(file, &["ranges"])
                );
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "placement replaced the diverged copy: {checked}"
            );
            std::thread::sleep(Duration::from_millis(1000));
        }
    });
    for i in 0..100 {
        let got = client.get(format!("key-{i:04}")).await.unwrap();
        assert_eq!(got.as_deref(), Some(format!("value-{i}").as_bytes()));
    }
    assert_eq!(client.get("key-0042-rot").await.unwrap(), None);
}

/// Real processes with placement: a store restarted with more `space.reserve-bytes` than
/// its disk has free shows as low in `ctl status`, and placement empties it onto the
/// store with room while every write stays readable and new ones land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_configured_past_its_free_space_shows_low_and_is_emptied() {
    let dir = tempfile::tempdir().unwrap();
    let (mut cluster, client, file) = placed_with_keys(dir.path()).await;
    let file = file.as_path();

    let low = &mut cluster.stores[0];
    let low_id = low.config.store_id;
    low.terminate();
    low.config.space.reserve_bytes = u64::MAX / 2;
    std::fs::write(&low.config_path, toml::to_string(&low.config).unwrap()).unwrap();
    low.start();
    let store = |status: &Value| {
        status["stores"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == low_id)
            .cloned()
            .unwrap()
    };
    tokio::task::block_in_place(|| {
        let started = Instant::now();
        loop {
            let s = store(&ctl(file, &["status"]));
            if s["low_space"] == true && s["ranges"] == 0 && s["state"] == "up" {
                eprintln!(
                    "store {low_id} low and emptied {:.1} s after its restart: {s}",
                    started.elapsed().as_secs_f64()
                );
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "store {low_id} low and emptied: {s}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        let table = String::from_utf8(
            shale()
                .args(["ctl", "--cluster"])
                .arg(file)
                .arg("status")
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        let row = table
            .lines()
            .find(|l| l.starts_with(&low_id.to_string()))
            .unwrap_or_default();
        assert!(row.contains(" LOW "), "{table}");
    });
    for i in 0..100 {
        let got = client.get(format!("key-{i:04}")).await.unwrap();
        assert_eq!(got.as_deref(), Some(format!("value-{i}").as_bytes()));
    }
    for i in 100..120 {
        client
            .put(format!("key-{i:04}"), format!("value-{i}"))
            .await
            .unwrap();
    }
}
