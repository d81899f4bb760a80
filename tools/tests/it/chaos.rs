//! Chaos: a placement process and four `shale store` processes under steady writes
//! (puts, one in ten a delete, one in eight an atomic batch of two keys) while a nemesis, driven by a seeded random generator,
//! kills (-9) and restarts stores and placement, stops stores gracefully, cuts a store
//! off from the others (and placement, or not), from placement alone, or cuts one link
//! between two stores (the stores talk through UDP relays that drop the packets; see
//! `relay`), freezes a store (SIGSTOP, then SIGCONT), splits ranges, merges neighbours,
//! moves replicas and transfers leaders. Each key has one writer, which writes
//! increasing versions and reads some back at once, so the test can tell:
//!
//! - a read after an acknowledged write sees that write (or a write that failed, whose
//!   fate is open: it may land late);
//! - at the end every key holds its last acknowledged version, or is gone after an
//!   acknowledged delete (or holds what a failed write left);
//! - a scan across all ranges sees every key once, with the values reads see;
//! - every replica of every range ends with the same data;
//! - every process stops cleanly on SIGTERM.
//!
//! `SHALE_CHAOS_SEED` replays a run's choices (timings still vary); `SHALE_CHAOS_SECS`
//! sets how long the nemesis runs (default 40); `SHALE_CHAOS_KEEP` keeps the folder
//! with the processes' logs; `SHALE_CHAOS_OLD_STORES=N` pins the first N stores to the
//! previous wire version (a cluster halfway through an upgrade).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shale_rpc::client::{ClientConfig, KvClient};
use shale_rpc::placement::{PlacementRequest, Route};
use shale_rpc::placement_client::PlacementClient;
use shale_rpc::transport::Transport;
use shale_rpc::{Frame, FrameKind, KvOp, KvReply, KvRequest, KvResponse, StoreId, WriteOp};

use crate::procs::*;
use crate::relay::Relays;

const KEYS: u64 = 240;
const WRITERS: u64 = 8;
/// Most ranges the nemesis splits into.
const RANGES_MAX: usize = 32;

fn key(i: u64) -> Bytes {
    Bytes::from(format!("chaos/{i:05}"))
}

/// `key:version:padding`; the padding varies the entry sizes (up to ~3 KiB).
fn value(i: u64, version: u64, pad: usize) -> Bytes {
    Bytes::from(format!("{i}:{version}:{}", "p".repeat(pad)))
}

fn version_of(value: &[u8]) -> u64 {
    let text = std::str::from_utf8(value).expect("values are text");
    text.split(':')
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("malformed value {text:.40}"))
}

/// What one writer knows of one of its keys.
#[derive(Default, Clone)]
struct KeyHistory {
    /// The last write acknowledged: its version (0: none yet) and whether it deleted.
    acked: u64,
    acked_delete: bool,
    /// Writes that failed, by version, `true` for deletes: each may or may not have
    /// landed, at any time.
    failed: BTreeMap<u64, bool>,
}

impl KeyHistory {
    /// Whether a read may see `seen` (`None`: absent), given what was acknowledged.
    fn allows(&self, seen: Option<u64>) -> bool {
        match seen {
            None => self.acked == 0 || self.acked_delete || self.failed.values().any(|&d| d),
            Some(v) => {
                (v == self.acked && !self.acked_delete) || self.failed.get(&v) == Some(&false)
            }
        }
    }
}

#[derive(Default)]
struct Counts {
    acked: AtomicU64,
    /// Acknowledged atomic batches (their writes are in `acked` too).
    batches: AtomicU64,
    deletes: AtomicU64,
    failed: AtomicU64,
    reads: AtomicU64,
}

/// Another of `mine` in the range the client believes holds key `i`, if any.
async fn batch_partner(client: &KvClient, i: u64, mine: &[u64]) -> Option<u64> {
    let range = client.locate(&key(i)).await.ok()?;
    mine.iter()
        .copied()
        .filter(|&j| j != i && range.contains(&key(j)))
        .min_by_key(|&j| j.abs_diff(i))
}

/// One writer: owns keys `i` with `i % WRITERS == w`; writes until `stop`.
async fn writer(
    w: u64,
    seed: u64,
    client: Arc<KvClient>,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
) -> BTreeMap<u64, KeyHistory> {
    let mut rng = StdRng::seed_from_u64(seed ^ (w + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mine: Vec<u64> = (0..KEYS).filter(|i| i % WRITERS == w).collect();
    let mut history: BTreeMap<u64, KeyHistory> = BTreeMap::new();
    let mut next_version: BTreeMap<u64, u64> = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        // Paced, to leave the machine's cores to the nemesis and other tests.
        tokio::time::sleep(Duration::from_millis(rng.gen_range(1..6))).await;
        let i = mine[rng.gen_range(0..mine.len())];
        // One write in eight is an atomic batch with another of this writer's keys in
        // the same range (as the client knows ranges; a split meanwhile fails it whole).
        let partner = match rng.gen_bool(0.125) {
            true => batch_partner(&client, i, &mine).await,
            false => None,
        };
        let mut writes = Vec::new();
        for k in std::iter::once(i).chain(partner) {
            let v = next_version.entry(k).or_insert(0);
            *v += 1;
            let pad = if rng.gen_bool(0.1) {
                rng.gen_range(1_000..3_000)
            } else {
                rng.gen_range(0..200)
            };
            writes.push((k, *v, rng.gen_bool(0.1), pad));
        }
        let op = |&(k, v, delete, pad): &(u64, u64, bool, usize)| match delete {
            true => WriteOp::Delete { key: key(k) },
            false => WriteOp::Put {
                key: key(k),
                value: value(k, v, pad),
            },
        };
        let outcome = match &writes[..] {
            [(k, v, true, _)] => client.delete(key(*k)).await.map(|_| v),
            [(k, v, false, pad)] => client.put(key(*k), value(*k, *v, *pad)).await.map(|_| v),
            _ => client
                .batch(writes.iter().map(op).collect())
                .await
                .map(|_| &0),
        };
        let batch = writes.len() > 1;
        if outcome.is_ok() {
            counts
                .batches
                .fetch_add(u64::from(batch), Ordering::Relaxed);
        }
        let mut failed = false;
        for &(k, version, delete, _) in &writes {
            let h = history.entry(k).or_default();
            match &outcome {
                Ok(_) => {
                    (h.acked, h.acked_delete) = (version, delete);
                    counts.acked.fetch_add(1, Ordering::Relaxed);
                    counts
                        .deletes
                        .fetch_add(u64::from(delete), Ordering::Relaxed);
                }
                Err(e) => {
                    eprintln!(
                        "chaos: write of key {k} version {version} (delete: {delete}, batch: \
                         {batch}) failed: {e}"
                    );
                    h.failed.insert(version, delete);
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                    failed = true;
                }
            }
        }
        if failed {
            continue;
        }
        let h = &history[&i];
        if rng.gen_bool(0.25) {
            match client.get(key(i)).await {
                Ok(seen) => {
                    let seen = seen.map(|v| version_of(&v));
                    assert!(
                        h.allows(seen),
                        "key {i}: read {seen:?} right after version {} was acknowledged \
                         (failed versions {:?})",
                        h.acked,
                        h.failed
                    );
                    counts.reads.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => eprintln!("chaos: read of key {i} failed: {e}"),
            }
        }
    }
    history
}

/// The nemesis's moves, counted by kind for the summary.
#[derive(Debug, Default)]
struct Moves {
    kills: u32,
    graceful_restarts: u32,
    placement_kills: u32,
    isolations: u32,
    link_cuts: u32,
    placement_cuts: u32,
    pauses: u32,
    splits: u32,
    merges: u32,
    moves: u32,
    transfers: u32,
}

/// What the nemesis took down (one thing at a time, so every range keeps a quorum).
enum Outage {
    /// A store process (index into the stores), killed.
    Store(usize),
    Placement,
    /// A store cut off from every other store, and from placement too if the flag says
    /// so (clients still reach it).
    Isolated(StoreId, bool),
    /// A store cut off from placement only: its heartbeats stop, so placement may take
    /// it for down (after 3 s) and replace its replicas while it still serves.
    PlacementCut(StoreId),
    /// The link between two stores, cut both ways.
    LinkCut(StoreId, StoreId),
    /// A store process frozen (SIGSTOP) and then resumed where it stopped.
    Paused(usize),
}

/// An outage and when it ends.
struct Down {
    what: Outage,
    until: Instant,
}

impl Down {
    fn after(what: Outage, rng: &mut StdRng, ms: std::ops::Range<u64>) -> Option<Down> {
        let until = Instant::now() + Duration::from_millis(rng.gen_range(ms));
        Some(Down { what, until })
    }

    /// Ends the outage: restarts the process or heals the links.
    fn end(self, procs: &mut [StoreProc], placement: &mut StoreProc, relays: &Relays) {
        match self.what {
            Outage::Store(s) => procs[s].start(),
            Outage::Placement => placement.start(),
            Outage::Isolated(s, _) => {
                relays.isolate(s, false);
                relays.cut_from_placement(s, false);
            }
            Outage::PlacementCut(s) => relays.cut_from_placement(s, false),
            Outage::LinkCut(a, b) => relays.cut(a, b, false),
            Outage::Paused(s) => procs[s].pause(false),
        }
        eprintln!("chaos: ended: {}", self.describe(procs));
    }

    fn describe(&self, procs: &[StoreProc]) -> String {
        match self.what {
            Outage::Store(s) => format!("kill -9 of store {}", procs[s].config.store_id),
            Outage::Placement => "kill -9 of placement".into(),
            Outage::Isolated(s, false) => format!("store {s} cut off from the other stores"),
            Outage::Isolated(s, true) => format!("store {s} cut off from the others and placement"),
            Outage::PlacementCut(s) => format!("store {s} cut off from placement"),
            Outage::LinkCut(a, b) => format!("link between stores {a} and {b} cut"),
            Outage::Paused(s) => format!("store {} frozen (SIGSTOP)", procs[s].config.store_id),
        }
    }
}

async fn nemesis(
    seed: u64,
    run_for: Duration,
    procs: &mut [StoreProc],
    placement_proc: &mut StoreProc,
    placement: &PlacementClient,
    relays: &Relays,
) -> Moves {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut moves = Moves::default();
    let mut down: Option<Down> = None;
    let started = Instant::now();
    // When each store last started. A store catches SIGTERM from its first moments
    // (then stops cleanly, started or not), but not before its process is running:
    // graceful stops leave it a second.
    let mut up_since = vec![started; procs.len()];
    let mut round = 0u32;

    while started.elapsed() < run_for {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(100..800))).await;
        if down.as_ref().is_some_and(|d| Instant::now() >= d.until) {
            let d = down.take().expect("checked");
            if let Outage::Store(s) = d.what {
                up_since[s] = Instant::now();
            }
            d.end(procs, placement_proc, relays);
        }
        // Every run kills a store and splits a range at least once: its first two moves.
        // While something is down, only the moves that take nothing down are drawn.
        let pick = match (round, &down) {
            (0, _) => 0,
            (1, _) => 34,
            (_, None) => rng.gen_range(0..120),
            (_, Some(_)) => rng.gen_range(34..100),
        };
        round += 1;
        let was_down = down.is_some();
        match pick {
            // At most one process down at once: every range keeps a quorum.
            0..=19 if down.is_none() => {
                let s = rng.gen_range(0..procs.len());
                procs[s].kill9();
                down = Down::after(Outage::Store(s), &mut rng, 500..6_000);
                moves.kills += 1;
            }
            20..=27 if down.is_none() => {
                let s = rng.gen_range(0..procs.len());
                if up_since[s].elapsed() < Duration::from_secs(1) {
                    continue;
                }
                eprintln!(
                    "chaos: SIGTERM and restart store {}",
                    procs[s].config.store_id
                );
                assert_eq!(
                    procs[s].terminate(),
                    Some(0),
                    "a store stopped by SIGTERM exits 0\n{}",
                    procs[s].log_tail()
                );
                procs[s].start();
                up_since[s] = Instant::now();
                moves.graceful_restarts += 1;
            }
            28..=33 if down.is_none() => {
                placement_proc.kill9();
                down = Down::after(Outage::Placement, &mut rng, 300..3_000);
                moves.placement_kills += 1;
            }
            52..=59 => {
                let r = routes(placement).await;
                let pairs: Vec<(&Route, &Route)> = r
                    .iter()
                    .filter_map(|left| {
                        let right = r.iter().find(|x| {
                            !left.range.end_key.is_empty()
                                && x.range.start_key == left.range.end_key
                        })?;
                        let together = left.range.store_ids() == right.range.store_ids();
                        together.then_some((left, right))
                    })
                    .collect();
                if pairs.is_empty() {
                    continue;
                }
                let (left, right) = pairs[rng.gen_range(0..pairs.len())];
                let req = PlacementRequest::Merge {
                    range_id: left.range.id,
                };
                let what = format!(
                    "merge range {} into range {}",
                    right.range.id, left.range.id
                );
                moves.merges += u32::from(ask(placement, &req, &what).await);
            }
            34..=51 => {
                let r = routes(placement).await;
                if r.is_empty() || r.len() >= RANGES_MAX {
                    continue;
                }
                let k = key(rng.gen_range(1..KEYS));
                let Some(route) = r.iter().find(|r| r.range.contains(&k)) else {
                    continue;
                };
                if route.range.start_key == k {
                    continue;
                }
                let req = PlacementRequest::Split {
                    range_id: route.range.id,
                    split_key: Some(k.clone()),
                };
                let what = format!(
                    "split range {} at {:?}",
                    route.range.id,
                    String::from_utf8_lossy(&k)
                );
                moves.splits += u32::from(ask(placement, &req, &what).await);
            }
            60..=79 => {
                let Some(route) = random_route(placement, &mut rng).await else {
                    continue;
                };
                let holders: Vec<StoreId> =
                    route.range.replicas.iter().map(|x| x.store_id).collect();
                let others: Vec<StoreId> = procs
                    .iter()
                    .map(|p| p.config.store_id)
                    .filter(|s| !holders.contains(s))
                    .collect();
                if holders.is_empty() || others.is_empty() {
                    continue;
                }
                let from_store = holders[rng.gen_range(0..holders.len())];
                let to_store = others[rng.gen_range(0..others.len())];
                let req = PlacementRequest::MoveReplica {
                    range_id: route.range.id,
                    from_store,
                    to_store,
                };
                let what = format!(
                    "move range {}'s replica {from_store} -> {to_store}",
                    route.range.id
                );
                moves.moves += u32::from(ask(placement, &req, &what).await);
            }
            80..=99 => {
                let Some(route) = random_route(placement, &mut rng).await else {
                    continue;
                };
                let holders: Vec<StoreId> = route
                    .range
                    .replicas
                    .iter()
                    .map(|x| x.store_id)
                    .filter(|s| Some(*s) != route.leader)
                    .collect();
                if holders.is_empty() {
                    continue;
                }
                let to_store = holders[rng.gen_range(0..holders.len())];
                let req = PlacementRequest::TransferLeader {
                    range_id: route.range.id,
                    to_store,
                };
                let what = format!("transfer range {}'s leader to {to_store}", route.range.id);
                moves.transfers += u32::from(ask(placement, &req, &what).await);
            }
            100..=104 if down.is_none() => {
                let s = procs[rng.gen_range(0..procs.len())].config.store_id;
                let from_placement = rng.gen_bool(0.5);
                relays.isolate(s, true);
                relays.cut_from_placement(s, from_placement);
                let outage = Outage::Isolated(s, from_placement);
                down = Down::after(outage, &mut rng, 1_000..6_000);
                moves.isolations += 1;
            }
            105..=109 if down.is_none() => {
                let a = rng.gen_range(0..procs.len());
                let b = (a + rng.gen_range(1..procs.len())) % procs.len();
                let (a, b) = (procs[a].config.store_id, procs[b].config.store_id);
                relays.cut(a, b, true);
                down = Down::after(Outage::LinkCut(a, b), &mut rng, 1_000..6_000);
                moves.link_cuts += 1;
            }
            110..=114 if down.is_none() => {
                let s = procs[rng.gen_range(0..procs.len())].config.store_id;
                relays.cut_from_placement(s, true);
                down = Down::after(Outage::PlacementCut(s), &mut rng, 1_000..8_000);
                moves.placement_cuts += 1;
            }
            115..=119 if down.is_none() => {
                let s = rng.gen_range(0..procs.len());
                procs[s].pause(true);
                down = Down::after(Outage::Paused(s), &mut rng, 300..5_000);
                moves.pauses += 1;
            }
            _ => {}
        }
        if let Some(d) = down.as_ref().filter(|_| !was_down) {
            eprintln!("chaos: began: {}", d.describe(procs));
        }
    }
    if let Some(d) = down {
        d.end(procs, placement_proc, relays);
    }
    moves
}

/// A range placement knows, drawn at random (none while placement is down).
async fn random_route(placement: &PlacementClient, rng: &mut StdRng) -> Option<Route> {
    let mut r = routes(placement).await;
    match r.is_empty() {
        true => None,
        false => Some(r.swap_remove(rng.gen_range(0..r.len()))),
    }
}

/// Asks placement for one move and logs how it went and how long the answer took;
/// whether placement took it.
async fn ask(placement: &PlacementClient, req: &PlacementRequest, what: &str) -> bool {
    let started = Instant::now();
    let taken = placement.call(req).await.is_ok();
    eprintln!(
        "chaos: {what}: {taken} ({} ms)",
        started.elapsed().as_millis()
    );
    taken
}

/// Reads `key` from the replica of `range_id` on the store at `addr` (no retries).
async fn replica_value(
    transport: &Transport,
    addr: &str,
    range_id: u64,
    key: Bytes,
) -> Result<Option<Bytes>, String> {
    let req = KvRequest {
        range_id,
        epoch: None,
        op: KvOp::GetReplica { key },
    };
    let frame = Frame::encode(FrameKind::KvRequest, &req).map_err(|e| e.to_string())?;
    let addr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let reply = transport
        .call(addr, &frame)
        .await
        .map_err(|e| e.to_string())?;
    match reply.decode::<KvResponse>(FrameKind::KvResponse) {
        Ok(Ok(KvReply::Value(v))) => Ok(v),
        other => Err(format!("{other:?}")),
    }
}

/// Whether every replica of every range holds `expected` for each of its keys; the
/// first difference otherwise.
async fn replicas_agree(
    transport: &Transport,
    placement: &PlacementClient,
    expected: &BTreeMap<u64, Option<Bytes>>,
) -> Result<usize, String> {
    let r = routes(placement).await;
    if r.is_empty() {
        return Err("placement named no ranges".into());
    }
    let mut checked = 0;
    for route in &r {
        for (&i, want) in expected {
            if !route.range.contains(&key(i)) {
                continue;
            }
            for replica in &route.range.replicas {
                let Some(store) = route.stores.iter().find(|s| s.store_id == replica.store_id)
                else {
                    return Err(format!("no address for store {}", replica.store_id));
                };
                let got = replica_value(transport, &store.addr, route.range.id, key(i))
                    .await
                    .map_err(|e| {
                        let (store, range) = (replica.store_id, route.range.id);
                        format!("key {i}: store {store}'s replica of range {range}: {e}")
                    })?;
                if got.as_ref().map(|v| version_of(v)) != want.as_ref().map(|v| version_of(v)) {
                    return Err(format!(
                        "key {i}: store {}'s replica of range {} holds version {:?}, the \
                         leader {:?}",
                        replica.store_id,
                        route.range.id,
                        got.as_ref().map(|v| version_of(v)),
                        want.as_ref().map(|v| version_of(v)),
                    ));
                }
                checked += 1;
            }
        }
    }
    Ok(checked)
}

/// Reads every key through its leader, checking each against its history.
async fn final_reads(
    client: &KvClient,
    history: &BTreeMap<u64, KeyHistory>,
    seed: u64,
) -> BTreeMap<u64, Option<Bytes>> {
    let mut expected = BTreeMap::new();
    for (&i, h) in history {
        let got = client
            .get(key(i))
            .await
            .unwrap_or_else(|e| panic!("final read of key {i}: {e}"));
        let seen = got.as_ref().map(|v| version_of(v));
        assert!(
            h.allows(seen),
            "key {i} holds {seen:?}; last acknowledged {}, failed {:?} (seed {seed})",
            h.acked,
            h.failed
        );
        expected.insert(i, got);
    }
    expected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_keeps_every_acknowledged_write_and_replicas_agree() {
    let seed = std::env::var("SHALE_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    let run_for = Duration::from_secs(
        std::env::var("SHALE_CHAOS_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(40),
    );
    eprintln!("chaos: seed {seed} (SHALE_CHAOS_SEED={seed} replays the choices)");
    let dir = tempfile::tempdir().unwrap();
    if std::env::var_os("SHALE_CHAOS_KEEP").is_some() {
        eprintln!("chaos: keeping {}", dir.path().display());
    }
    let dir = match std::env::var_os("SHALE_CHAOS_KEEP") {
        Some(_) => dir.keep(),
        None => dir.path().to_path_buf(),
    };
    let dir = dir.as_path();
    let PlacedProcs {
        stores: mut procs,
        placement: mut placement_proc,
        transport,
        placement_client: placement,
        relays,
        ..
    } = start_placed_procs(dir, true);
    let relays = relays.expect("relayed");
    let old_stores: usize = std::env::var("SHALE_CHAOS_OLD_STORES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    for p in procs.iter_mut().take(old_stores) {
        p.terminate();
        p.config.transport.wire_version = shale_rpc::certs::WIRE_VERSION_OLDEST;
        p.save_config();
        p.start();
        eprintln!(
            "chaos: store {} speaks the previous wire version",
            p.config.store_id
        );
    }
    let client = Arc::new(KvClient::through_placement(
        transport.clone(),
        placement.clone(),
        ClientConfig {
            deadline_ms: 30_000,
            attempts_max: 200,
            ..ClientConfig::default()
        },
    ));
    // The first range must serve before the writers start counting failures.
    let started = Instant::now();
    while client.put(key(KEYS), "ready").await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the cluster never served\n{}",
            procs[0].log_tail()
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            tokio::spawn(writer(
                w,
                seed,
                client.clone(),
                stop.clone(),
                counts.clone(),
            ))
        })
        .collect();
    let moves = nemesis(
        seed,
        run_for,
        &mut procs,
        &mut placement_proc,
        &placement,
        &relays,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut history: BTreeMap<u64, KeyHistory> = BTreeMap::new();
    for w in writers {
        let h = w.await.unwrap_or_else(|e| {
            panic!(
                "a writer failed (seed {seed}): {e}\n{}",
                procs
                    .iter()
                    .map(|p| p.log_tail())
                    .collect::<Vec<_>>()
                    .join("\n----\n")
            )
        });
        history.extend(h);
    }
    eprintln!(
        "chaos: {moves:?}; {} writes acknowledged ({} deletes, {} batches of two), {} failed, \
         {} reads checked; \
         {} packets dropped on cut links",
        counts.acked.load(Ordering::Relaxed),
        counts.deletes.load(Ordering::Relaxed),
        counts.batches.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
        counts.reads.load(Ordering::Relaxed),
        relays.dropped()
    );
    assert!(
        moves.kills + moves.graceful_restarts > 0 && moves.splits > 0,
        "the nemesis did too little to tell anything: {moves:?}"
    );
    assert!(
        counts.acked.load(Ordering::Relaxed) > 100,
        "too few writes got through to tell anything"
    );

    // Every key holds its last acknowledged version (or a failed one), and a scan
    // across every range sees each key once, as reads do.
    let expected = final_reads(&client, &history, seed).await;
    let scanned = client
        .scan_all(key(0), key(KEYS), 50)
        .await
        .expect("scan across ranges");
    let scanned_keys: Vec<&Bytes> = scanned.iter().map(|(k, _)| k).collect();
    let mut unique = scanned_keys.clone();
    unique.dedup();
    assert_eq!(unique.len(), scanned_keys.len(), "a scan saw a key twice");
    let want: Vec<(Bytes, Bytes)> = expected
        .iter()
        .filter_map(|(&i, v)| v.clone().map(|v| (key(i), v)))
        .collect();
    assert!(
        scanned == want,
        "the scan disagrees with reads: {} pairs against {}",
        scanned.len(),
        want.len()
    );
    // Every replica of every range converges on what the leaders hold (read afresh
    // each pass: a failed put may still land late).
    let started = Instant::now();
    let checked = loop {
        let expected = final_reads(&client, &history, seed).await;
        match replicas_agree(&transport, &placement, &expected).await {
            Ok(n) => break n,
            Err(e) => assert!(
                started.elapsed() < Duration::from_secs(60),
                "replicas disagree after 60 s (seed {seed}): {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!(
        "chaos: {} ranges, {checked} replica reads agree ({:.1} s to converge)",
        routes(&placement).await.len(),
        started.elapsed().as_secs_f64()
    );
    // And every range's replicas hold the same data, all of it (a consistency check sums
    // every pair of a range, not only the workload's keys).
    let started = Instant::now();
    let ranges = routes(&placement).await;
    for route in &ranges {
        loop {
            let outcome = client.check_consistency(&route.range.start_key).await;
            match outcome {
                Ok(o) if o.agreed && o.diverged.is_empty() && o.missing.is_empty() => break,
                Ok(o) if !o.diverged.is_empty() || (o.missing.is_empty() && !o.agreed) => {
                    panic!("range {} diverged (seed {seed}): {o:?}", route.range.id)
                }
                // A replica still catching up, a leader moving: ask again.
                other => assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "range {} not checked in 60 s (seed {seed}): {other:?}",
                    route.range.id
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    eprintln!(
        "chaos: {} ranges checked consistent ({:.1} s)",
        ranges.len(),
        started.elapsed().as_secs_f64()
    );
    for p in procs.iter_mut() {
        assert_eq!(p.terminate(), Some(0), "{}", p.log_tail());
    }
    assert_eq!(placement_proc.terminate(), Some(0));
}
