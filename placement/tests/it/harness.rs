//! Helpers shared by the placement integration tests.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use shale_placement::cluster::PlacedCluster;
use shale_placement::PlacementConfig;
use shale_rpc::client::KvClient;
use shale_rpc::placement::{
    Labels, OperatorInfo, PlacementReply, PlacementRequest, Route, StoreInfo, StoreState,
};
use shale_storage::config::StoreConfig;

/// Logs to the test's output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Schedules quickly: a store silent 3 s is down, passes every 200 ms.
pub fn fast_placement(p: &mut PlacementConfig) {
    p.schedule.store_down_after_ms = 3000;
    p.schedule.interval_ms = 200;
    p.schedule.step_retry_ms = 3000;
    p.schedule.operator_timeout_ms = 60_000;
}

pub fn fast_store(c: &mut StoreConfig) {
    c.placement.heartbeat_interval_ms = 200;
}

pub fn labels(zone: &str) -> Labels {
    [("zone".to_string(), zone.to_string())]
        .into_iter()
        .collect()
}

pub async fn must_cluster(
    dir: &std::path::Path,
    placement: usize,
    stores: usize,
    tweak_placement: impl Fn(&mut PlacementConfig),
    tweak_store: impl Fn(usize, &mut StoreConfig),
) -> PlacedCluster {
    init_tracing();
    // Ports are picked free and bound a moment later: a test running beside may take
    // one between. Such a start is tried again on fresh ports, in a fresh folder.
    for attempt in 0.. {
        let started = PlacedCluster::start_new(
            &dir.join(format!("start-{attempt}")),
            placement,
            stores,
            3.min(stores),
            |p| {
                fast_placement(p);
                tweak_placement(p);
            },
            |i, c| {
                fast_store(c);
                tweak_store(i, c);
            },
        )
        .await;
        match started {
            Ok(cluster) => return cluster,
            Err(e) if attempt < 2 && e.to_string().contains("in use") => {
                eprintln!("cluster start found a port taken ({e}); trying again");
            }
            Err(e) => panic!("start cluster: {e}"),
        }
    }
    unreachable!("the loop returns or panics")
}

pub fn key(i: usize) -> Bytes {
    Bytes::from(format!("key-{i:06}"))
}

pub fn value(i: usize) -> Bytes {
    Bytes::from(format!("value-{i}-{}", "x".repeat(100 + i % 50)))
}

/// Writes keys `0..n` and splits so that there are `ranges` ranges.
pub async fn must_load(client: &KvClient, n: usize, ranges: usize) {
    for i in 0..n {
        client
            .put(key(i), value(i))
            .await
            .unwrap_or_else(|e| panic!("put {i}: {e}"));
    }
    let step = n / ranges;
    for r in 1..ranges {
        client
            .split(key(r * step))
            .await
            .unwrap_or_else(|e| panic!("split at {}: {e}", r * step));
    }
}

pub async fn must_read_all(client: &KvClient, keys: impl Iterator<Item = usize>) {
    for i in keys {
        let got = client
            .get(key(i))
            .await
            .unwrap_or_else(|e| panic!("get {i}: {e}"));
        assert_eq!(got, Some(value(i)), "key {i}");
    }
}

/// Polls `check` every 200 ms until it returns `Some`, or panics after `timeout`.
pub async fn must_eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < timeout {
        match check().await {
            Ok(v) => return v,
            Err(why) => last = why,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{what}: not reached in {timeout:?}; last: {last}");
}

pub async fn stores(cluster: &PlacedCluster) -> Result<Vec<StoreInfo>, String> {
    match cluster.call(&PlacementRequest::Stores).await {
        Ok(PlacementReply::Stores(s)) => Ok(s),
        other => Err(format!("{other:?}")),
    }
}

pub async fn routes(cluster: &PlacedCluster) -> Result<Vec<Route>, String> {
    match cluster
        .call(&PlacementRequest::ScanRanges {
            start_key: Bytes::new(),
            limit: 10_000,
        })
        .await
    {
        Ok(PlacementReply::Routes(r)) => Ok(r),
        other => Err(format!("{other:?}")),
    }
}

pub async fn operators(cluster: &PlacedCluster) -> Result<Vec<OperatorInfo>, String> {
    match cluster.call(&PlacementRequest::Operators).await {
        Ok(PlacementReply::Operators(o)) => Ok(o),
        other => Err(format!("{other:?}")),
    }
}

/// Every range has exactly `replicas` replicas, all on stores placement sees up, a
/// known leader, and no operator is in flight.
pub async fn settled(cluster: &PlacedCluster, replicas: usize) -> Result<Vec<Route>, String> {
    let stores = stores(cluster).await?;
    let up: HashMap<u64, StoreState> = stores.iter().map(|s| (s.id, s.state)).collect();
    let routes = routes(cluster).await?;
    let ops = operators(cluster).await?;
    let counts: Vec<_> = stores
        .iter()
        .map(|s| (s.id, s.state, s.ranges, s.leaders))
        .collect();
    for r in &routes {
        if r.range.replicas.len() != replicas {
            return Err(format!(
                "range {} has replicas {:?}, leader {:?}; operators {ops:?}; stores {counts:?}",
                r.range.id,
                r.range
                    .replicas
                    .iter()
                    .map(|x| x.store_id)
                    .collect::<Vec<_>>(),
                r.leader
            ));
        }
        if let Some(rep) = r
            .range
            .replicas
            .iter()
            .find(|rep| up.get(&rep.store_id) != Some(&StoreState::Up))
        {
            return Err(format!(
                "range {} has a replica on store {}",
                r.range.id, rep.store_id
            ));
        }
    }
    if !ops.is_empty() {
        return Err(format!("operators in flight: {ops:?}; stores {counts:?}"));
    }
    Ok(routes)
}
