//! The schedulers on a live cluster: scale-out, a lost store, drain, zones, load split.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shale_placement::cluster::PlacedCluster;
use shale_rpc::placement::{PlacementReply, PlacementRequest, StoreState};
use shale_storage::engine::Cf;
use shale_storage::metrics::METRICS;

use crate::harness::*;

/// Writes `writer-N` keys until told to stop (or 5 minutes pass); returns the acked ones.
fn start_writer(
    client: Arc<shale_rpc::client::KvClient>,
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<Vec<usize>> {
    tokio::spawn(async move {
        let started = Instant::now();
        let mut acked = Vec::new();
        let mut i = 100_000;
        while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(300) {
            if client.put(key(i), value(i)).await.is_ok() {
                acked.push(i);
                ops.fetch_add(1, Ordering::Relaxed);
            }
            i += 1;
        }
        acked
    })
}

/// Replica and leader counts of up stores are each within 10% of their means.
fn balanced(stores: &[shale_rpc::placement::StoreInfo]) -> Result<(), String> {
    let up: Vec<_> = stores
        .iter()
        .filter(|s| s.state == StoreState::Up)
        .collect();
    let n = up.len() as f64;
    let mean_r = up.iter().map(|s| s.ranges as f64).sum::<f64>() / n;
    let mean_l = up.iter().map(|s| s.leaders as f64).sum::<f64>() / n;
    for s in &up {
        if (s.ranges as f64 - mean_r).abs() > mean_r * 0.1
            || (s.leaders as f64 - mean_l).abs() > (mean_l * 0.1).max(1.0)
        {
            let counts: Vec<_> = up.iter().map(|s| (s.id, s.ranges, s.leaders)).collect();
            return Err(format!("unbalanced (store, replicas, leaders): {counts:?}"));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scale_out_from_three_to_five_stores_balances_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = must_cluster(dir.path(), 1, 3, |_| {}, |_, _| {}).await;
    let client = Arc::new(cluster.client().unwrap());
    must_load(&client, 1200, 120).await;
    must_eventually(
        "placement knows every range",
        Duration::from_secs(30),
        || async {
            let n = routes(&cluster).await?.len();
            (n >= 120).then_some(()).ok_or(format!("{n} ranges"))
        },
    )
    .await;
    must_eventually(
        "range leaders report their key counts",
        Duration::from_secs(30),
        || async {
            let routes = routes(&cluster).await?;
            let uncounted = routes.iter().filter(|r| r.key_count.is_none()).count();
            let keys: u64 = routes.iter().filter_map(|r| r.key_count).sum();
            // 1,200 keys loaded; placement hands out ids, so stores hold no id counter.
            (uncounted == 0 && keys == 1200)
                .then_some(())
                .ok_or(format!("{uncounted} ranges uncounted, {keys} keys counted"))
        },
    )
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicUsize::new(0));
    let writer = start_writer(client.clone(), stop.clone(), ops.clone());
    let bytes_before = METRICS.snapshot_bytes_sent.get();
    let started = Instant::now();
    cluster
        .add_store(Default::default(), fast_store)
        .await
        .unwrap();
    cluster
        .add_store(Default::default(), fast_store)
        .await
        .unwrap();
    must_eventually(
        "replicas and leaders balanced",
        Duration::from_secs(240),
        || async {
            settled(&cluster, 3).await?;
            balanced(&stores(&cluster).await?)
        },
    )
    .await;
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let acked = writer.await.unwrap();
    let moved = METRICS.snapshot_bytes_sent.get() - bytes_before;
    eprintln!(
        "scale-out 3 -> 5 stores, 120 ranges: balanced in {:.1} s, {} snapshot bytes moved, \
         client writes during the move: {} ({:.0} ops/s)",
        took.as_secs_f64(),
        moved,
        acked.len(),
        ops.load(Ordering::Relaxed) as f64 / took.as_secs_f64()
    );
    for s in stores(&cluster).await.unwrap() {
        eprintln!(
            "  store {}: {} replicas, {} leaders",
            s.id, s.ranges, s.leaders
        );
    }
    assert!(!acked.is_empty(), "the client kept writing during the move");
    must_read_all(&client, 0..1200).await;
    must_read_all(&client, acked.into_iter()).await;
    cluster.shutdown().await;
}

/// Store `i` holds only replicas that placement's descriptors list with their ids, and
/// no data outside their spans.
async fn holds_no_stale_replica(cluster: &PlacedCluster, i: usize) -> Result<(), String> {
    let node = cluster.store(i).ok_or("store not running")?;
    let routes = routes(cluster).await?;
    let held = node.status().await;
    let listed = |s: &shale_rpc::RangeStatus| {
        routes
            .iter()
            .find(|r| r.range.id == s.range.id)
            .and_then(|r| r.range.replica_on(node.store_id))
            .is_some_and(|d| d.id == s.replica_id)
    };
    let stale: Vec<_> = held
        .iter()
        .filter(|s| !listed(s))
        .map(|s| {
            let route = routes.iter().find(|r| r.range.id == s.range.id);
            format!(
                "{} (replica {}, {:?}, leader {:?}, leaderless {} ms; placement: {:?})",
                s.range.id,
                s.replica_id,
                s.range.epoch,
                s.leader_store,
                s.leader_missing_ms,
                route.map(|r| (&r.range.epoch, &r.range.replicas)),
            )
        })
        .collect();
    if !stale.is_empty() {
        return Err(format!("stale replicas of ranges {stale:?}"));
    }
    let mut outside = 0;
    node.engine()
        .scan(Cf::Data, b"", b"", |k, _| {
            outside += usize::from(!held.iter().any(|s| s.range.contains(k)));
            true
        })
        .map_err(|e| e.to_string())?;
    (outside == 0)
        .then_some(())
        .ok_or(format!("{outside} keys outside the ranges it holds"))
}

/// A store is lost and its replicas are rebuilt elsewhere; when it comes back, the
/// replicas it still holds were removed from their ranges while it was down (nobody
/// could tell it): it reports them leaderless, placement names them removed, and the
/// store destroys them and their data.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_store_is_replaced_and_no_write_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = must_cluster(
        dir.path(),
        1,
        4,
        |_| {},
        |_, c| c.placement.leaderless_report_after_ms = 1_000,
    )
    .await;
    let client = cluster.client().unwrap();
    must_load(&client, 400, 20).await;
    must_eventually(
        "spread over four stores",
        Duration::from_secs(120),
        || async {
            let routes = settled(&cluster, 3).await?;
            let on_four = routes
                .iter()
                .filter(|r| {
                    r.range
                        .replica_on(cluster.store(3).unwrap().store_id)
                        .is_some()
                })
                .count();
            (routes.len() >= 20 && on_four > 0)
                .then_some(())
                .ok_or(format!("{on_four} ranges on store 4"))
        },
    )
    .await;
    let lost = cluster.store(3).unwrap().store_id;
    cluster.stop_store(3).await;
    let started = Instant::now();
    for i in 400..500 {
        client.put(key(i), value(i)).await.unwrap();
    }
    must_eventually(
        "placement sees the store down",
        Duration::from_secs(30),
        || async {
            let s = stores(&cluster).await?;
            s.iter()
                .any(|s| s.id == lost && s.state == StoreState::Down)
                .then_some(())
                .ok_or(format!("{s:?}"))
        },
    )
    .await;
    let routes = must_eventually(
        "every range back to 3 live replicas",
        Duration::from_secs(120),
        || async { settled(&cluster, 3).await },
    )
    .await;
    eprintln!(
        "store {lost} lost: repaired in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(routes.iter().all(|r| r.range.replica_on(lost).is_none()));
    must_read_all(&client, 0..500).await;

    // No balancing onto the returned store: only placement's answers to its leaderless
    // reports can clear its stale replicas (a replica added back there would replace
    // its stale one on its own; `storage`'s membership tests cover that).
    cluster
        .call(&PlacementRequest::SetScheduling { paused: true })
        .await
        .unwrap();
    cluster.start_store(3).await.unwrap();
    let stale = cluster.store(3).unwrap().status().await.len();
    assert!(stale > 0, "the returned store still holds its old replicas");
    must_eventually(
        "the returned store drops its removed replicas",
        Duration::from_secs(60),
        || holds_no_stale_replica(&cluster, 3),
    )
    .await;
    must_read_all(&client, 0..500).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drained_store_ends_empty() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = must_cluster(dir.path(), 1, 4, |_| {}, |_, _| {}).await;
    let client = cluster.client().unwrap();
    must_load(&client, 300, 15).await;
    let drained = cluster.store(0).unwrap().store_id;
    let reply = cluster
        .call(&PlacementRequest::Drain {
            store_id: drained,
            drain: true,
        })
        .await
        .unwrap();
    assert_eq!(reply, PlacementReply::Done);
    must_eventually(
        "the drained store holds nothing",
        Duration::from_secs(120),
        || async {
            settled(&cluster, 3).await?;
            let s = stores(&cluster).await?;
            let d = s.iter().find(|s| s.id == drained).ok_or("store gone")?;
            if d.state != StoreState::Draining {
                return Err(format!("state {:?}", d.state));
            }
            let local = cluster.store(0).unwrap().status().await.len();
            (d.ranges == 0 && local == 0).then_some(()).ok_or(format!(
                "{} ranges per placement, {local} on the store",
                d.ranges
            ))
        },
    )
    .await;
    must_read_all(&client, 0..300).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_spread_over_zones() {
    let dir = tempfile::tempdir().unwrap();
    // The first range starts on stores 1-3: two of them in zone a.
    let zones = ["a", "a", "b", "b", "c", "c"];
    let cluster = must_cluster(dir.path(), 1, 6, |_| {}, |i, c| c.labels = labels(zones[i])).await;
    let client = cluster.client().unwrap();
    must_load(&client, 200, 10).await;
    let zone_of = |store: u64| zones[(store - 1) as usize];
    must_eventually(
        "no range has two replicas in one zone",
        Duration::from_secs(120),
        || async {
            let routes = settled(&cluster, 3).await?;
            for r in &routes {
                let mut z: Vec<_> = r
                    .range
                    .replicas
                    .iter()
                    .map(|x| zone_of(x.store_id))
                    .collect();
                z.sort();
                z.dedup();
                if z.len() != 3 {
                    return Err(format!("range {} zones {z:?}", r.range.id));
                }
            }
            Ok(())
        },
    )
    .await;
    must_read_all(&client, 0..200).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hot_range_is_split_and_its_halves_leaders_spread() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = must_cluster(
        dir.path(),
        1,
        3,
        |p| {
            p.schedule.hot_ops_per_sec = 200.0;
            p.schedule.hot_window_ms = 2000;
        },
        |_, _| {},
    )
    .await;
    let client = Arc::new(cluster.client().unwrap());
    must_load(&client, 200, 1).await;
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for t in 0..4 {
        let (client, stop, ops) = (client.clone(), stop.clone(), ops.clone());
        readers.push(tokio::spawn(async move {
            let started = Instant::now();
            let mut i = t;
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(120) {
                client.get(key(i % 200)).await.unwrap();
                ops.fetch_add(1, Ordering::Relaxed);
                i += 7;
            }
        }));
    }
    let routes = must_eventually(
        "the hot range split, halves led apart",
        Duration::from_secs(60),
        || async {
            let routes = routes(&cluster).await?;
            let mut leaders: Vec<_> = routes.iter().filter_map(|r| r.leader).collect();
            leaders.sort();
            leaders.dedup();
            (routes.len() >= 2 && leaders.len() >= 2)
                .then_some(routes.clone())
                .ok_or(format!("{} ranges, leaders on {leaders:?}", routes.len()))
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.await.unwrap();
    }
    eprintln!(
        "hot range split into {} ranges after {} reads",
        routes.len(),
        ops.load(Ordering::Relaxed)
    );
    must_read_all(&client, 0..200).await;
    cluster.shutdown().await;
}

/// Placement hands a store more steps in one answer than the store runs at once: the
/// rest wait their turn. (Dropped, they would wait out placement's retry interval, set
/// here far past the test's end.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn steps_beyond_those_running_wait_their_turn() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = must_cluster(
        dir.path(),
        1,
        3,
        |p| {
            p.schedule.step_retry_ms = 600_000;
            p.schedule.operator_timeout_ms = 600_000;
        },
        |_, c| c.placement.steps_in_flight_max = 2,
    )
    .await;
    let client = cluster.client().unwrap();
    // Splits leave every range's leader on one store: 16 of 24 leaders must move.
    must_load(&client, 240, 24).await;
    must_eventually(
        "leaders spread over the stores",
        Duration::from_secs(60),
        || async { balanced(&stores(&cluster).await?) },
    )
    .await;
    must_read_all(&client, 0..240).await;
    cluster.shutdown().await;
}

/// Pauses the schedulers and writes keys 0..20: a client of `cluster`.
async fn paused_with_keys(cluster: &PlacedCluster) -> shale_rpc::client::KvClient {
    cluster
        .call(&PlacementRequest::SetScheduling { paused: true })
        .await
        .unwrap();
    let client = cluster.client().unwrap();
    for i in 0..20 {
        client.put(key(i), value(i)).await.unwrap();
    }
    client
}

/// A follower asleep when its store is drained, cut off so that it misses its removal
/// and the leader's direct notice, never wakes to learn it (its leader no longer talks
/// to it): its store has placement check sleeping followers' membership now and then,
/// and destroys the replica once placement names it removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_removed_while_asleep_is_destroyed() {
    use shale_rpc::client::FIRST_RANGE_ID;

    let dir = tempfile::tempdir().unwrap();
    let cluster = must_cluster(
        dir.path(),
        1,
        4,
        |_| {},
        |_, c| c.placement.leaderless_report_after_ms = 1_000,
    )
    .await;
    let client = paused_with_keys(&cluster).await;
    let first = |i: usize| {
        let node = cluster.store(i).unwrap();
        async move {
            node.status()
                .await
                .into_iter()
                .find(|s| s.range.id == FIRST_RANGE_ID)
        }
    };
    // The range starts on the first three stores.
    let follower = must_eventually(
        "a follower of the first range asleep",
        Duration::from_secs(60),
        || async {
            for i in 0..3 {
                let s = first(i).await.ok_or("a store without the range")?;
                if !s.is_leader && s.hibernating {
                    return Ok(i);
                }
            }
            Err("none asleep".to_string())
        },
    )
    .await;
    // Long enough asleep for its first check (still a member then): the next comes only
    // 20 checks' waits later, which the removal must outwait.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let node = cluster.store(follower).unwrap();
    node.faults().set_partitioned(true);
    for i in 0..4 {
        cluster
            .store(i)
            .unwrap()
            .faults()
            .set_removal_notices_lost(true);
    }
    let reply = cluster
        .call(&PlacementRequest::Drain {
            store_id: node.store_id,
            drain: true,
        })
        .await
        .unwrap();
    assert_eq!(reply, PlacementReply::Done);
    must_eventually(
        "the range moved off the drained store",
        Duration::from_secs(60),
        || async {
            let routes = settled(&cluster, 3).await?;
            routes
                .iter()
                .all(|r| r.range.replica_on(node.store_id).is_none())
                .then_some(())
                .ok_or(format!("{routes:?}"))
        },
    )
    .await;
    node.faults().set_partitioned(false);
    let s = first(follower)
        .await
        .expect("the removed replica is still there");
    assert!(s.hibernating, "and asleep: {s:?}");
    must_eventually(
        "the removed replica destroyed",
        Duration::from_secs(60),
        || async {
            match first(follower).await {
                None => Ok(()),
                Some(s) => Err(format!("{s:?}")),
            }
        },
    )
    .await;
    must_read_all(&client, 0..20).await;
    cluster.shutdown().await;
}

/// A removed replica that missed the news (cut off, its leader's notice lost) stands in
/// the way of a snapshot of a range split from it: the snapshot must wait, as the old
/// replica would apply its writes over the snapshot's. Its store has placement check it
/// at the next heartbeat instead of after the leaderless wait (30 s by default), and
/// destroys it once placement names it removed; then the snapshot goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removed_replica_in_a_snapshots_way_is_checked_at_once() {
    use shale_rpc::client::FIRST_RANGE_ID;
    use shale_rpc::placement::Route;

    let dir = tempfile::tempdir().unwrap();
    let cluster = must_cluster(dir.path(), 1, 4, |_| {}, |_, _| {}).await;
    let client = paused_with_keys(&cluster).await;
    let led = |pick: fn(&Route) -> bool| {
        let cluster = &cluster;
        move || async move {
            routes(cluster)
                .await?
                .into_iter()
                .find(|r| pick(r) && r.leader.is_some())
                .ok_or("not there yet".to_string())
        }
    };
    let first = must_eventually(
        "the first range led",
        Duration::from_secs(30),
        led(|r| r.range.id == FIRST_RANGE_ID),
    )
    .await;
    let stores: Vec<u64> = (0..4).map(|i| cluster.store(i).unwrap().store_id).collect();
    let holds = |i: usize| first.range.replica_on(stores[i]).is_some();
    let cut = (0..4)
        .find(|&i| holds(i) && Some(stores[i]) != first.leader)
        .unwrap();
    let spare = (0..4).find(|&i| !holds(i)).unwrap();
    cluster.store(cut).unwrap().faults().set_partitioned(true);
    for i in 0..4 {
        let faults = cluster.store(i).unwrap().faults();
        faults.set_removal_notices_lost(true);
    }
    let (from_store, to_store) = (stores[cut], stores[spare]);
    cluster
        .call(&PlacementRequest::MoveReplica {
            range_id: FIRST_RANGE_ID,
            from_store,
            to_store,
        })
        .await
        .unwrap();
    must_eventually(
        "the first range moved off the cut-off store",
        Duration::from_secs(60),
        || async {
            let r = routes(&cluster).await?;
            r.iter()
                .any(|r| r.range.id == FIRST_RANGE_ID && r.range.replica_on(from_store).is_none())
                .then_some(())
                .ok_or(format!("{r:?}"))
        },
    )
    .await;
    cluster
        .call(&PlacementRequest::Split {
            range_id: FIRST_RANGE_ID,
            split_key: Some(key(10)),
        })
        .await
        .unwrap();
    let right = must_eventually(
        "the right range led",
        Duration::from_secs(30),
        led(|r| r.range.start_key == key(10)),
    )
    .await;
    cluster.store(cut).unwrap().faults().set_partitioned(false);
    let from_store = right
        .range
        .replicas
        .iter()
        .map(|r| r.store_id)
        .find(|&s| Some(s) != right.leader)
        .unwrap();
    cluster
        .call(&PlacementRequest::MoveReplica {
            range_id: right.range.id,
            from_store,
            to_store: stores[cut],
        })
        .await
        .unwrap();
    // Well inside the 30 s the removed replica would otherwise wait to be reported.
    let node = cluster.store(cut).unwrap();
    must_eventually(
        "the right range's snapshot installed on the store that was cut off",
        Duration::from_secs(15),
        || async {
            let status = node.status().await;
            let old = status.iter().find(|s| s.range.id == FIRST_RANGE_ID);
            let new = status
                .iter()
                .find(|s| s.range.id == right.range.id && s.range.epoch.version > 0);
            match (old, new) {
                (None, Some(_)) => Ok(()),
                _ => Err(format!("{status:?}")),
            }
        },
    )
    .await;
    must_eventually(
        "the right range's keys on that store",
        Duration::from_secs(15),
        || async {
            let engine = node.engine();
            for i in 10..20 {
                let got = engine.get(Cf::Data, &key(i)).map_err(|e| e.to_string())?;
                if got.as_deref() != Some(&value(i)[..]) {
                    return Err(format!("key {i}: {got:?}"));
                }
            }
            Ok(())
        },
    )
    .await;
    must_read_all(&client, 0..20).await;
    cluster.shutdown().await;
}
