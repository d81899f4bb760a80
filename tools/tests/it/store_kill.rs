//! Three `shale store` processes; kill -9 the leader while a client writes; restart it;
//! no acknowledged write is lost and the restarted store rejoins.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use shale_rpc::client::ClientConfig;

use crate::procs::*;

fn key(i: u64) -> Bytes {
    Bytes::from(format!("k{i:08}"))
}

fn value(i: u64) -> Bytes {
    Bytes::from(format!("v{i}-{}", "p".repeat((i % 64) as usize)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_the_leader_under_writes_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let (mut procs, identity) = store_procs(dir.path(), 3);
    let (transport, leader) = start_all(&mut procs, &identity).await;
    let client = Arc::new(kv_client(
        transport.clone(),
        &procs,
        ClientConfig {
            deadline_ms: 30_000,
            ..ClientConfig::default()
        },
    ));

    // Writers run until told to stop (bounded by count as well).
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let ack_times = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8u64)
        .map(|w| {
            let (client, acked, stop) = (client.clone(), acked.clone(), stop.clone());
            let ack_times = ack_times.clone();
            tokio::spawn(async move {
                for n in 0..5_000u64 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let i = w * 1_000_000 + n;
                    if client.put(key(i), value(i)).await.is_ok() {
                        acked.lock().unwrap().insert(i);
                        ack_times.lock().unwrap().push(std::time::Instant::now());
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before_kill = acked.lock().unwrap().len();
    assert!(before_kill > 0, "writes were acknowledged before the kill");
    let killed_at = std::time::Instant::now();
    procs[leader].kill9();
    let new_leader = find_leader(&transport, &procs, Duration::from_secs(20))
        .await
        .expect("a new leader after kill -9");
    let elected_after = killed_at.elapsed();
    assert_ne!(new_leader, leader);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    procs[leader].start();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.unwrap();
    }
    let acked: Vec<u64> = acked.lock().unwrap().iter().copied().collect();
    assert!(acked.len() > before_kill, "writes continued after the kill");
    // Measured, not asserted: how long the range took to serve again.
    let first_ack_after = ack_times
        .lock()
        .unwrap()
        .iter()
        .filter(|t| **t > killed_at)
        .min()
        .map(|t| t.duration_since(killed_at));
    eprintln!(
        "leader kill -9: a new leader answered after {:.2} s; the writers' first acknowledged write after {:?}",
        elected_after.as_secs_f64(),
        first_ack_after
    );

    // The killed store lost whatever its memtables held (applied data skips the WAL) and
    // must have replayed it from its Raft log. Make it the leader, so that every read
    // below is served from its own engine.
    let current = find_leader(&transport, &procs, Duration::from_secs(20))
        .await
        .expect("leader");
    let restarted = &procs[leader].config;
    let started = std::time::Instant::now();
    loop {
        let theirs = range_status(&transport, &procs[current].config.listen_addr)
            .await
            .expect("leader status");
        let mine = range_status(&transport, &restarted.listen_addr).await;
        if mine.is_some_and(|m| m.applied_index >= theirs.commit_index) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "restarted store did not catch up\n{}",
            procs[leader].log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if current != leader {
        let req = shale_rpc::AdminRequest::TransferLeader {
            range_id: shale_rpc::client::FIRST_RANGE_ID,
            to_store: restarted.store_id,
        };
        shale_rpc::client::admin(
            &transport,
            procs[current].config.listen_addr.parse().unwrap(),
            &req,
        )
        .await
        .expect("start leader transfer");
        let started = std::time::Instant::now();
        while !range_status(&transport, &restarted.listen_addr)
            .await
            .is_some_and(|s| s.is_leader)
        {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "leadership did not move to the restarted store"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for &i in &acked {
        let got = client.get(key(i)).await.unwrap_or_else(|e| {
            panic!(
                "read {i} from the restarted store: {e}\n{}",
                procs[leader].log_tail()
            )
        });
        assert_eq!(
            got,
            Some(value(i)),
            "acknowledged write {i} on the store that was killed"
        );
    }
    // Then stop another store so that the quorum needs the restarted one.
    let victim = (0..3).find(|&i| i != leader).unwrap();
    assert_eq!(procs[victim].terminate(), Some(0), "SIGTERM exits cleanly");
    for &i in &acked {
        let got = client.get(key(i)).await.unwrap_or_else(|e| {
            panic!(
                "read {i} after kill -9 and restart: {e}\n{}",
                procs[leader].log_tail()
            )
        });
        assert_eq!(got, Some(value(i)), "acknowledged write {i}");
    }
    client
        .put(key(u64::MAX), value(1))
        .await
        .expect("the restarted store serves in a quorum");
    println!(
        "acknowledged writes: {} ({} before kill -9)",
        acked.len(),
        before_kill
    );
}

/// kill -9 of every store right after a split, while the new range takes writes: the
/// split's applied state (kept out of the WAL) may be lost, the new range's own Raft
/// state not. Every store comes back with both ranges and every acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_every_store_right_after_a_split_keeps_both_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let (mut procs, identity) = store_procs(dir.path(), 3);
    let (transport, _) = start_all(&mut procs, &identity).await;
    let config = patient_client_config();
    let client = kv_client(transport.clone(), &procs, config.clone());
    for i in 0..100 {
        client.put(key(i), value(i)).await.unwrap();
    }
    for round in 0..3u64 {
        // Split, write to the new range, and kill everything at once.
        let at = 50 + round * 10;
        let (_, right) = client.split(key(at)).await.unwrap();
        for i in 100 + round * 20..120 + round * 20 {
            client.put(key(i), value(i)).await.unwrap();
        }
        for p in procs.iter_mut() {
            p.kill9();
        }
        for p in procs.iter_mut() {
            p.start();
        }
        let client = kv_client(transport.clone(), &procs, config.clone());
        for i in (0..100).chain(100..120 + round * 20) {
            let got = client.get(key(i)).await.unwrap_or_else(|e| {
                panic!(
                    "round {round}: get {i}: {e}\n{}",
                    procs
                        .iter()
                        .map(|p| p.log_tail())
                        .collect::<Vec<_>>()
                        .join("\n----\n")
                )
            });
            assert_eq!(got, Some(value(i)), "round {round}: key {i}");
        }
        // The new range takes writes again, and no store loop died on the way.
        client.put(key(at), value(at)).await.unwrap();
        assert_eq!(client.locate(&key(at)).await.unwrap().id, right.id);
        for p in procs.iter_mut() {
            let alive = p.child.as_mut().unwrap().try_wait().unwrap().is_none();
            assert!(
                alive && !p.log_text().contains("panicked"),
                "{}",
                p.log_tail()
            );
        }
    }
    for p in procs.iter_mut() {
        assert_eq!(p.terminate(), Some(0), "{}", p.log_tail());
    }
}

/// SIGTERM while a store is still starting (here: a new store waiting on a placement
/// driver that does not answer) stops it at once with exit code 0; before, the signal's
/// default action killed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_a_store_starts_stops_it_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (mut procs, _) = store_procs(dir.path(), 1);
    let nobody = shale_storage::cluster::free_udp_ports(1).unwrap()[0];
    use_placement(&mut procs, &format!("127.0.0.1:{nobody}"));
    procs[0].start();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let stopped = std::time::Instant::now();
    assert_eq!(procs[0].terminate(), Some(0), "{}", procs[0].log_tail());
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "it waited for its start to fail first"
    );
    assert!(procs[0].log_text().contains("stopped while starting"));
}
