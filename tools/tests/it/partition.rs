//! Three `shale store` processes behind UDP relays: the leader's store is cut off from
//! its peers (clients still reach it) while a client writes. The other two elect a
//! leader and take the writes; the cut-off store neither acknowledges a write nor
//! answers a read with what it held before, not even in the moments around the
//! takeover; once the links heal it catches up, and no
//! acknowledged write is lost.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use shale_rpc::client::FIRST_RANGE_ID;
use shale_rpc::transport::Transport;
use shale_rpc::{Frame, FrameKind, KvOp, KvReply, KvRequest, KvResponse};

use crate::procs::*;
use crate::relay::Relays;

fn key(i: u64) -> Bytes {
    Bytes::from(format!("p{i:06}"))
}

fn value(i: u64, round: u64) -> Bytes {
    Bytes::from(format!("v{i}-{round}"))
}

/// What the store at `addr` answers to `op` on the first range, asked directly.
async fn ask_store(transport: &Transport, addr: &str, op: KvOp) -> Result<KvReply, String> {
    let req = KvRequest {
        range_id: FIRST_RANGE_ID,
        epoch: None,
        op,
    };
    let frame = Frame::encode(FrameKind::KvRequest, &req).unwrap();
    let reply = transport
        .call(addr.parse().unwrap(), &frame)
        .await
        .map_err(|e| e.to_string())?;
    match reply.decode::<KvResponse>(FrameKind::KvResponse) {
        Ok(Ok(r)) => Ok(r),
        other => Err(format!("{other:?}")),
    }
}

/// Waits (up to 30 s) until the replica on the store at `addr` holds `want` at `key`.
async fn must_hold(transport: &Transport, addr: &str, key: Bytes, want: Bytes) {
    let started = Instant::now();
    loop {
        let held = ask_store(transport, addr, KvOp::GetReplica { key: key.clone() }).await;
        if matches!(&held, Ok(KvReply::Value(Some(v))) if *v == want) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the store at {addr} never caught up: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// While writes of key 0 go to whichever of `others` takes them (the first as soon as
/// they elect a leader), reads of it go to the cut-off store at `cut_addr`: each read it
/// serves must show the last write acknowledged before the read was sent (a deposed
/// leader serving under a lease it no longer holds would not). Returns the reads served
/// and refused.
async fn race_reads_against_takeover(
    transport: &Arc<Transport>,
    cut_addr: &str,
    others: &[String],
) -> (u64, u64) {
    let acked = Arc::new(AtomicU64::new(1));
    let first_ack = Arc::new(Mutex::new(None));
    let writer_done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (transport, others, acked) = (transport.clone(), others.to_vec(), acked.clone());
        let first_ack = first_ack.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            for round in 2..=20 {
                'retry: while started.elapsed() < Duration::from_secs(20) {
                    for addr in &others {
                        let put = KvOp::Put {
                            key: key(0),
                            value: value(0, round),
                        };
                        if ask_store(&transport, addr, put).await.is_ok() {
                            acked.store(round, Ordering::SeqCst);
                            first_ack.lock().unwrap().get_or_insert_with(Instant::now);
                            break 'retry;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
    };
    // Readers, several so one is always in flight while another waits out a timeout.
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (transport, cut_addr) = (transport.clone(), cut_addr.to_string());
            let (acked, writer_done) = (acked.clone(), writer_done.clone());
            tokio::spawn(async move {
                let (mut served, mut refused, mut last_served) = (0, 0, None);
                while !writer_done.load(Ordering::SeqCst) {
                    let before = acked.load(Ordering::SeqCst);
                    match ask_store(&transport, &cut_addr, KvOp::Get { key: key(0) }).await {
                        Ok(KvReply::Value(Some(v))) => {
                            let text = String::from_utf8(v.to_vec()).unwrap();
                            let round: u64 = text.rsplit('-').next().unwrap().parse().unwrap();
                            assert!(
                                round >= before,
                                "stale read: the cut-off store answered {text} after round \
                                 {before} was acknowledged"
                            );
                            served += 1;
                            last_served = Some(Instant::now());
                        }
                        _ => refused += 1,
                    }
                }
                (served, refused, last_served)
            })
        })
        .collect();
    writer.await.unwrap();
    writer_done.store(true, Ordering::SeqCst);
    let (mut served, mut refused, mut last_served) = (0, 0, None);
    for r in readers {
        let (s, f, l) = r.await.unwrap();
        (served, refused, last_served) = (served + s, refused + f, last_served.max(l));
    }
    let first_ack = first_ack.lock().unwrap().expect("a write was acknowledged");
    if let Some(last) = last_served {
        eprintln!(
            "partition: the cut-off store's last read was served {} ms before the other \
             stores acknowledged their first write",
            first_ack.saturating_duration_since(last).as_millis()
        );
    }
    assert_eq!(
        acked.load(Ordering::SeqCst),
        20,
        "the other stores took every write"
    );
    (served, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_cut_off_from_its_peers_steps_down_and_catches_up_once_healed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut procs, identity) = store_procs(dir.path(), 3);
    let relays = Relays::front(&mut procs, None);
    let (transport, leader) = start_all(&mut procs, &identity).await;
    let client = kv_client(transport.clone(), &procs, patient_client_config());
    for i in 0..50 {
        client.put(key(i), value(i, 1)).await.unwrap();
    }
    let cut_off = procs[leader].config.store_id;
    let cut_addr = procs[leader].config.listen_addr.clone();
    relays.isolate(cut_off, true);
    eprintln!("partition: store {cut_off} (the leader) cut off from its peers");
    let others: Vec<String> = (procs.iter().enumerate())
        .filter(|(i, _)| *i != leader)
        .map(|(_, p)| p.config.listen_addr.clone())
        .collect();
    let (served, refused) = race_reads_against_takeover(&transport, &cut_addr, &others).await;
    eprintln!("partition: the cut-off store served {served} reads, none stale, refused {refused}");

    // The other two take over: every write is acknowledged, overwriting the first round.
    let started = Instant::now();
    for i in 0..50 {
        client.put(key(i), value(i, 2)).await.unwrap();
    }
    eprintln!(
        "partition: 50 writes acknowledged {:.1} s after the cut",
        started.elapsed().as_secs_f64()
    );
    assert!(relays.dropped() > 0, "the relays dropped nothing");
    let now_leader = find_leader(&transport, &procs, Duration::from_secs(20))
        .await
        .expect("a leader");
    assert_ne!(now_leader, leader, "the cut-off store still leads");

    // The cut-off store answers neither a write nor a read (its data is a round behind).
    let write = ask_store(
        &transport,
        &cut_addr,
        KvOp::Put {
            key: key(0),
            value: value(0, 99),
        },
    )
    .await;
    assert!(write.is_err(), "the cut-off store took a write: {write:?}");
    let read = ask_store(&transport, &cut_addr, KvOp::Get { key: key(1) }).await;
    assert!(read.is_err(), "the cut-off store served a read: {read:?}");

    relays.heal();
    let started = Instant::now();
    must_hold(&transport, &cut_addr, key(49), value(49, 2)).await;
    eprintln!(
        "partition: healed store caught up in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for i in 0..50 {
        let got = client.get(key(i)).await.unwrap();
        assert_eq!(got, Some(value(i, 2)), "key {i}");
    }
    for p in procs.iter_mut() {
        assert_eq!(p.terminate(), Some(0), "{}", p.log_tail());
    }
}

/// The leader's process freezes (SIGSTOP) and is cut off from its peers; the other two
/// elect a leader and take writes; reads of the frozen store are sent after those writes
/// were acknowledged and wait in its socket; it resumes (SIGCONT), still cut off, with
/// nothing to tell it that it no longer leads. None of those reads may be answered with
/// what it held before: its lease must count the time it was frozen (a lease counted in
/// Raft ticks would not, as none pass while frozen). Once healed it rejoins.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_leader_resumes_without_serving_a_stale_read() {
    let dir = tempfile::tempdir().unwrap();
    let (mut procs, identity) = store_procs(dir.path(), 3);
    let relays = Relays::front(&mut procs, None);
    let (transport, leader) = start_all(&mut procs, &identity).await;
    let client = kv_client(transport.clone(), &procs, patient_client_config());
    client.put(key(0), value(0, 1)).await.unwrap();
    let frozen_addr = procs[leader].config.listen_addr.clone();
    procs[leader].pause(true);
    relays.isolate(procs[leader].config.store_id, true);
    eprintln!(
        "partition: store {} (the leader) frozen and cut off",
        procs[leader].config.store_id
    );
    // The others take the next writes once they elect a leader.
    let started = Instant::now();
    let mut acked = 1;
    while acked < 5 {
        for (_, p) in procs.iter().enumerate().filter(|(i, _)| *i != leader) {
            let put = KvOp::Put {
                key: key(0),
                value: value(0, acked + 1),
            };
            if ask_store(&transport, &p.config.listen_addr, put)
                .await
                .is_ok()
            {
                acked += 1;
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no new leader took writes"
        );
    }
    eprintln!(
        "partition: the others took writes {:.1} s after the freeze",
        started.elapsed().as_secs_f64()
    );
    // Reads sent now, each over a transport of its own (one that saw the store silent
    // fails fast), wait for the frozen store; it resumes with them queued.
    let reads: Vec<_> = (0..8)
        .map(|_| {
            let (transport, addr) = (client_transport(&identity), frozen_addr.clone());
            tokio::spawn(
                async move { ask_store(&transport, &addr, KvOp::Get { key: key(0) }).await },
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    procs[leader].pause(false);
    let (mut served, mut refused) = (0, Vec::new());
    for r in reads {
        match r.await.unwrap() {
            Ok(KvReply::Value(v)) => {
                assert_eq!(v, Some(value(0, 5)), "stale read from the resumed store");
                served += 1;
            }
            other => refused.push(format!("{other:?}")),
        }
    }
    refused.dedup();
    eprintln!(
        "partition: the resumed store served {served} reads (none stale); refusals: {refused:?}"
    );
    relays.heal();
    must_hold(&transport, &frozen_addr, key(0), value(0, 5)).await;
    for p in procs.iter_mut() {
        assert_eq!(p.terminate(), Some(0), "{}", p.log_tail());
    }
}
