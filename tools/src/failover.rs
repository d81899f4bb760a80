//! `shale bench failover`: how long writes stop when a range's leader dies.
//!
//! Three `shale store` processes (this binary, see `store_procs`) serve one range while
//! writers put keys without pause. Each trial kill -9s the leader's process and
//! measures, from the kill: when another replica leads (the floor Raft sets: the
//! baseline), when the first writer is acknowledged again, and when every writer is.
//! The killed store is then restarted and caught up before the next trial. At the end
//! every acknowledged key is read back; a lost one fails the run.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use shale_rpc::client::{admin, FIRST_RANGE_ID};
use shale_rpc::transport::{Transport, TransportConfig};
use shale_rpc::{AdminReply, AdminRequest, RangeStatus};

use crate::store_procs::{StoreProc, StoreProcs};

/// Longest a trial waits for anything before it is reported as failed.
const TRIAL_WAIT: Duration = Duration::from_secs(20);

/// Acknowledgements recorded this soon after the kill answered writes the old leader
/// committed just before it (a writer notes the time only once its call returns); no
/// election is this fast, so they are not counted as served again.
const KILL_GUARD: Duration = Duration::from_millis(50);

/// What one kill measured, in milliseconds from the kill.
#[derive(Debug, Clone, Serialize)]
pub struct Trial {
    pub new_leader_ms: f64,
    pub first_write_ms: f64,
    pub all_writers_ms: f64,
}

/// Percentiles over the trials, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Debug, Serialize)]
pub struct FailoverReport {
    pub trials: Vec<Trial>,
    /// Baseline: the election alone.
    pub new_leader_ms: Summary,
    pub first_write_ms: Summary,
    pub all_writers_ms: Summary,
    pub writers: usize,
    pub acknowledged_writes: usize,
    pub lost_writes: usize,
}

/// Runs `trials` leader kills with `writers` concurrent writers under `dir`.
pub async fn run(dir: &Path, trials: usize, writers: usize) -> anyhow::Result<FailoverReport> {
    let mut cluster = StoreProcs::create(dir, 3, false)?;
    cluster.start_all()?;
    // Clients use the transport's defaults: what a gateway would run with.
    let client = Arc::new(cluster.client()?);
    // The admin transport is separate so its probes and suspicion do not help the writers.
    let admin_transport = Transport::client(&cluster.identity, TransportConfig::default())?;
    let started = Instant::now();
    while client.put("warm", "up").await.is_err() {
        anyhow::ensure!(started.elapsed() < TRIAL_WAIT, "no leader elected");
    }

    let acks: Arc<Mutex<Vec<(usize, Instant)>>> = Arc::default();
    let acked: Arc<Mutex<BTreeSet<(usize, u64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (client, acks, acked, stop) =
                (client.clone(), acks.clone(), acked.clone(), stop.clone());
            tokio::spawn(async move {
                // Bounded in count as well as by the stop flag.
                for n in 0..10_000_000u64 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if client.put(key(w, n), value(w, n)).await.is_ok() {
                        acks.lock().expect("acks").push((w, Instant::now()));
                        acked.lock().expect("acked").insert((w, n));
                    }
                }
            })
        })
        .collect();

    let mut results = Vec::new();
    let outcome = async {
        for t in 0..trials {
            tokio::time::sleep(Duration::from_millis(1_000)).await;
            let leader = wait_for_leader(&admin_transport, &cluster.procs, None).await?;
            let killed_at = Instant::now();
            cluster.procs[leader].kill9();
            let new_leader =
                wait_for_leader(&admin_transport, &cluster.procs, Some(leader)).await?;
            let new_leader_ms = ms(killed_at.elapsed());
            let (first, all) = wait_for_writers(&acks, writers, killed_at + KILL_GUARD).await?;
            let (first, all) = (first + KILL_GUARD, all + KILL_GUARD);
            let trial = Trial {
                new_leader_ms,
                first_write_ms: ms(first),
                all_writers_ms: ms(all),
            };
            eprintln!(
                "trial {}: new leader {:.0} ms, first write {:.0} ms, all writers {:.0} ms",
                t + 1,
                trial.new_leader_ms,
                trial.first_write_ms,
                trial.all_writers_ms
            );
            results.push(trial);
            cluster.procs[leader].start()?;
            wait_caught_up(&admin_transport, &cluster.procs, leader, new_leader).await?;
        }
        anyhow::Ok(())
    }
    .await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        let _ = t.await;
    }
    outcome?;

    // One linearizable scan reads everything back; each acknowledged key must be there.
    let stored: std::collections::HashMap<bytes::Bytes, bytes::Bytes> = client
        .scan_all("failover/", "failover0", 10_000)
        .await
        .context("read the written keys back")?
        .into_iter()
        .collect();
    let acked = acked.lock().expect("acked");
    let lost = acked
        .iter()
        .filter(|&&(w, n)| {
            stored.get(key(w, n).as_bytes()).map(|v| &v[..]) != Some(value(w, n).as_bytes())
        })
        .count();
    let column = |f: fn(&Trial) -> f64| summarize(results.iter().map(f).collect());
    Ok(FailoverReport {
        new_leader_ms: column(|t| t.new_leader_ms),
        first_write_ms: column(|t| t.first_write_ms),
        all_writers_ms: column(|t| t.all_writers_ms),
        trials: results,
        writers,
        acknowledged_writes: acked.len(),
        lost_writes: lost,
    })
}

fn key(writer: usize, n: u64) -> String {
    format!("failover/{writer:03}/{n:010}")
}

fn value(writer: usize, n: u64) -> String {
    format!("{writer}-{n}")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn summarize(mut values: Vec<f64>) -> Summary {
    values.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let i = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len().max(1));
        values.get(i - 1).copied().unwrap_or(0.0)
    };
    Summary {
        p50: at(0.50),
        p99: at(0.99),
        max: values.last().copied().unwrap_or(0.0),
    }
}

async fn first_range_status(transport: &Transport, addr: SocketAddr) -> Option<RangeStatus> {
    match admin(transport, addr, &AdminRequest::Status).await {
        Ok(AdminReply::Status { ranges, .. }) => {
            ranges.into_iter().find(|r| r.range_id() == FIRST_RANGE_ID)
        }
        _ => None,
    }
}

/// The index of the running store that leads the range (other than `not`).
async fn wait_for_leader(
    transport: &Transport,
    procs: &[StoreProc],
    not: Option<usize>,
) -> anyhow::Result<usize> {
    let started = Instant::now();
    while started.elapsed() < TRIAL_WAIT {
        for (i, p) in procs.iter().enumerate() {
            if !p.is_running() || Some(i) == not {
                continue;
            }
            if first_range_status(transport, p.addr)
                .await
                .is_some_and(|s| s.is_leader)
            {
                return Ok(i);
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    anyhow::bail!("no leader within {TRIAL_WAIT:?}")
}

/// How long after `since` the first writer, and every writer, was acknowledged.
async fn wait_for_writers(
    acks: &Mutex<Vec<(usize, Instant)>>,
    writers: usize,
    since: Instant,
) -> anyhow::Result<(Duration, Duration)> {
    loop {
        {
            let acks = acks.lock().expect("acks");
            let mut firsts = vec![None; writers];
            for &(w, at) in acks.iter().rev().take_while(|(_, at)| *at > since) {
                firsts[w] = Some(at);
            }
            if firsts.iter().all(Option::is_some) {
                let times: Vec<Duration> = firsts.iter().flatten().map(|t| *t - since).collect();
                let first = times.iter().min().copied().unwrap_or_default();
                let all = times.iter().max().copied().unwrap_or_default();
                return Ok((first, all));
            }
        }
        anyhow::ensure!(
            since.elapsed() < TRIAL_WAIT,
            "writers were not served again within {TRIAL_WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until the restarted store has applied everything the leader committed.
async fn wait_caught_up(
    transport: &Transport,
    procs: &[StoreProc],
    restarted: usize,
    leader: usize,
) -> anyhow::Result<()> {
    let started = Instant::now();
    while started.elapsed() < TRIAL_WAIT {
        let theirs = first_range_status(transport, procs[leader].addr).await;
        let mine = first_range_status(transport, procs[restarted].addr).await;
        if let (Some(theirs), Some(mine)) = (theirs, mine) {
            if mine.applied_index >= theirs.commit_index {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("the restarted store did not catch up within {TRIAL_WAIT:?}")
}
