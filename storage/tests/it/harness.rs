//! Helpers shared by the storage integration tests.

use std::time::{Duration, Instant};

use bytes::Bytes;
use shale_rpc::client::{ClientConfig, KvClient, FIRST_RANGE_ID};
use shale_storage::cluster::{cluster_configs_joining, free_udp_ports, LocalCluster};
use shale_storage::engine::Cf;

pub const LEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Logs to the test's output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub async fn must_cluster(dir: &std::path::Path, n: usize) -> LocalCluster {
    init_tracing();
    let cluster = LocalCluster::start_new(dir, n, |_| {})
        .await
        .expect("start cluster");
    cluster
        .wait_leader(LEADER_TIMEOUT)
        .await
        .expect("a leader is elected");
    cluster
}

/// Stops every store, starts them all again and waits for a leader: a client of the
/// restarted cluster.
pub async fn restart_all(cluster: &mut LocalCluster, stores: usize) -> KvClient {
    for s in 0..stores {
        cluster.stop_store(s).await;
    }
    for s in 0..stores {
        cluster.start_store(s).await.expect("restart store");
    }
    cluster
        .wait_leader(LEADER_TIMEOUT)
        .await
        .expect("leader after restart");
    cluster.client().unwrap()
}

/// Four stores, of which the first three start the first range and the fourth joins
/// empty: the cluster, its leader's index and a client with a 30 s deadline.
pub async fn four_stores_one_joining(dir: &std::path::Path) -> (LocalCluster, usize, KvClient) {
    init_tracing();
    let (_, identity) = shale_rpc::certs::TlsIdentity::generate_cluster().unwrap();
    let configs = cluster_configs_joining(dir, &free_udp_ports(4).unwrap(), 3);
    let cluster = LocalCluster::start(dir, identity, configs).await.unwrap();
    let leader = cluster.wait_leader(LEADER_TIMEOUT).await.expect("leader");
    let client = cluster
        .client_with(ClientConfig {
            deadline_ms: 30_000,
            ..ClientConfig::default()
        })
        .unwrap();
    (cluster, leader, client)
}

pub fn key(i: usize) -> Bytes {
    Bytes::from(format!("key-{i:06}"))
}

pub fn value(i: usize) -> Bytes {
    Bytes::from(format!("value-{i}-{}", "x".repeat(i % 50)))
}

pub async fn must_put(client: &KvClient, i: usize) {
    client
        .put(key(i), value(i))
        .await
        .unwrap_or_else(|e| panic!("put {i}: {e}"));
}

pub async fn must_get(client: &KvClient, i: usize) {
    let got = client
        .get(key(i))
        .await
        .unwrap_or_else(|e| panic!("get {i}: {e}"));
    assert_eq!(got, Some(value(i)), "key {i}");
}

/// Waits until store `i` has applied everything the leader has committed, then checks
/// its engine holds exactly the expected keys.
pub async fn must_converge(cluster: &LocalCluster, i: usize, keys: &[usize]) {
    let started = Instant::now();
    loop {
        let leader = cluster.leader().await;
        let target = leader.and_then(|l| cluster.node(l));
        let node = cluster.node(i).expect("store is running");
        let (Some(target), Some(mine)) = (
            target,
            node.status()
                .await
                .into_iter()
                .find(|s| s.range_id() == FIRST_RANGE_ID),
        ) else {
            assert!(
                started.elapsed() < LEADER_TIMEOUT,
                "no leader to converge with"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let theirs = target
            .status()
            .await
            .into_iter()
            .find(|s| s.range_id() == FIRST_RANGE_ID)
            .expect("leader has the range");
        if mine.applied_index >= theirs.commit_index {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "store {i} did not catch up: {mine:?} vs {theirs:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    must_hold(cluster, i, keys.iter().copied());
}

/// Store `i`'s engine holds `value(k)` for each of `keys`.
pub fn must_hold(cluster: &LocalCluster, i: usize, keys: impl Iterator<Item = usize>) {
    let engine = cluster.node(i).expect("running").engine().clone();
    for k in keys {
        let got = engine.get(Cf::Data, &key(k)).expect("engine read");
        assert_eq!(got.as_deref(), Some(&value(k)[..]), "store {i} key {k}");
    }
}
