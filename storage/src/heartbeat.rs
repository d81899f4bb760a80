//! The store's side of placement: registers the store, sends a heartbeat with its
//! capacity, load and the ranges it leads every interval, and carries out the steps
//! placement answers with (add or remove a replica, move leadership, split).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use shale_rpc::placement::{
    ClusterId, KeySpan, LeaderlessReplica, PlacementError, PlacementReply, PlacementRequest,
    RangeReport, RangeStep, RemovedReplica, StoreHeartbeat, LEADERLESS_REPORTED_MAX,
};
use shale_rpc::placement_client::{PlacementCallError, PlacementClient};
use shale_rpc::{
    AdminRequest, Epoch, KvError, RangeDescriptor, RangeId, RangeStatus, ReplicaId, StoreId,
};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::engine::{Cf, Engine};
use crate::server::StoreService;
use crate::split::choose_split_key;
use crate::StorageError;

/// How a store finds and talks to placement.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct PlacementLinkConfig {
    /// Placement nodes' addresses (`host:port`); any one will do. Empty: the store runs
    /// without placement (ids come from the cluster's own counter; nothing is balanced).
    pub addrs: Vec<String>,
    /// Milliseconds between heartbeats.
    pub heartbeat_interval_ms: u64,
    /// Steps from placement carried out at once; more wait their turn (up to 256 in
    /// all; past that placement hands them out again later).
    pub steps_in_flight_max: usize,
    /// A replica that has known no leader this long is reported to placement, which
    /// names it if it was removed from its range (while this store was down, say) so
    /// the store destroys it.
    pub leaderless_report_after_ms: u64,
    /// Heartbeats report only ranges whose report changed or that saw requests; every
    /// this many milliseconds one reports every range the store leads (0: every one).
    pub full_report_every_ms: u64,
}

impl Default for PlacementLinkConfig {
    fn default() -> Self {
        PlacementLinkConfig {
            addrs: Vec::new(),
            heartbeat_interval_ms: 1000,
            steps_in_flight_max: 8,
            leaderless_report_after_ms: 30_000,
            full_report_every_ms: 60_000,
        }
    }
}

/// Steps from placement waiting for one of the `steps-in-flight-max` slots, running ones
/// included; more are dropped (placement hands them out again after its retry interval).
const STEPS_QUEUED_MAX: usize = 256;

/// Every this many answered heartbeats (the first included), the store takes every
/// store's address from placement, whose store records are the truth: a store that
/// moved is called at its new address, and one added since is known before any range
/// brings word of it.
const ADDRESS_REFRESH_BEATS: u64 = 30;

/// Keys scanned at most to pick a key that halves a range.
const HALF_SPLIT_KEYS_MAX: usize = 1 << 20;

/// Registers with placement; returns the cluster id and this store's id.
pub async fn register(
    placement: &PlacementClient,
    cluster_id: Option<ClusterId>,
    store_id: StoreId,
    addr: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(ClusterId, StoreId), StorageError> {
    let req = PlacementRequest::Register {
        cluster_id,
        store_id,
        addr: addr.to_string(),
        labels: labels.clone(),
    };
    match placement.call(&req).await {
        Ok(PlacementReply::Registered {
            cluster_id,
            store_id,
        }) => Ok((cluster_id, store_id)),
        Ok(other) => Err(StorageError::Config(format!(
            "placement answered {other:?} to a registration"
        ))),
        Err(PlacementCallError::Placement(PlacementError::WrongCluster { expected, got })) => {
            Err(StorageError::WrongCluster { expected, got })
        }
        Err(e) => Err(StorageError::Placement(e.to_string())),
    }
}

/// Everything the heartbeat loop needs.
pub struct Heartbeats {
    pub service: Arc<StoreService>,
    pub placement: Arc<PlacementClient>,
    pub cluster_id: ClusterId,
    pub store_id: StoreId,
    pub addr: String,
    pub labels: BTreeMap<String, String>,
    /// The store's disk space: reported, and told which other stores are low.
    pub space: Arc<crate::space::Space>,
    pub config: PlacementLinkConfig,
}

impl Heartbeats {
    /// Runs until the task is aborted.
    pub async fn run(self) {
        let interval = Duration::from_millis(self.config.heartbeat_interval_ms);
        let steps = Arc::new(Semaphore::new(self.config.steps_in_flight_max));
        let queued = Arc::new(Semaphore::new(STEPS_QUEUED_MAX));
        let mut reported = Reported::new(Duration::from_millis(self.config.full_report_every_ms));
        let mut last = Instant::now();
        let mut answered = 0u64;
        loop {
            let beat = match self.heartbeat(last.elapsed(), &mut reported).await {
                Ok(beat) => beat,
                Err(e) => {
                    debug!(store_id = self.store_id, error = %e, "could not gather a heartbeat");
                    tokio::time::sleep(interval).await;
                    continue;
                }
            };
            last = Instant::now();
            match self
                .placement
                .call(&PlacementRequest::Heartbeat(beat))
                .await
            {
                Ok(PlacementReply::Heartbeat {
                    steps: todo,
                    wake,
                    removed,
                    want_full,
                    low_space_stores,
                }) => {
                    self.space.set_low_stores(low_space_stores);
                    if answered.is_multiple_of(ADDRESS_REFRESH_BEATS) {
                        self.refresh_addresses();
                    }
                    answered += 1;
                    reported.taken(want_full, last);
                    for r in removed {
                        self.destroy_removed(r);
                    }
                    if !wake.is_empty() {
                        info!(
                            store_id = self.store_id,
                            ranges = wake.len(),
                            "waking replicas whose leader's store is down"
                        );
                        self.service.wake(wake);
                    }
                    for step in todo {
                        self.start_step(step, &steps, &queued);
                    }
                }
                Ok(other) => warn!(?other, "placement answered a heartbeat oddly"),
                Err(PlacementCallError::Placement(PlacementError::UnknownStore { .. })) => {
                    let registered = register(
                        &self.placement,
                        Some(self.cluster_id),
                        self.store_id,
                        &self.addr,
                        &self.labels,
                    )
                    .await;
                    if let Err(e) = registered {
                        warn!(store_id = self.store_id, error = %e, "re-registering failed");
                    }
                }
                Err(e) => debug!(store_id = self.store_id, error = %e, "heartbeat failed"),
            }
            tokio::time::sleep_until((last + interval).into()).await;
        }
    }

    async fn heartbeat(
        &self,
        interval: Duration,
        reported: &mut Reported,
    ) -> Result<StoreHeartbeat, KvError> {
        let after_ms = self.config.leaderless_report_after_ms;
        let status = self.service.heartbeat_status(after_ms).await?;
        let mut load = self.service.take_load();
        let (capacity_bytes, available_bytes) = (self.space.capacity(), self.space.available());
        let reports: Vec<RangeReport> = status
            .statuses
            .iter()
            .filter(|s| s.is_leader)
            .map(|s| {
                let l = load.remove(&s.range.id).unwrap_or_default();
                RangeReport {
                    range: s.range.clone(),
                    term: s.term,
                    size_bytes: s.size_bytes,
                    key_count: s.key_count,
                    write_ops: l.write_ops,
                    write_bytes: l.write_bytes,
                    read_ops: l.read_ops,
                    read_bytes: l.read_bytes,
                    interval_ms: interval.as_millis() as u64,
                    learners: s.learners.clone(),
                    silent_learners: s.silent_learners.clone(),
                    diverged: s.diverged.clone(),
                }
            })
            .collect();
        let leader_count = reports.len() as u32;
        let (reports, full) = reported.select(reports, Instant::now());
        Ok(StoreHeartbeat {
            cluster_id: self.cluster_id,
            store_id: self.store_id,
            addr: self.addr.clone(),
            labels: self.labels.clone(),
            capacity_bytes,
            available_bytes,
            low_space: self.space.is_low(),
            used_bytes: status.used_bytes,
            range_count: status.held.len() as u32,
            leader_count,
            ranges: reports,
            full,
            leaderless: leaderless(&status.statuses, &status.membership_wanted, after_ms),
        })
    }

    /// Destroys a replica placement says was removed from its range, in the background
    /// (the store checks that its replica is older than `removed.conf_ver`).
    fn destroy_removed(&self, removed: RemovedReplica) {
        let service = self.service.clone();
        let store_id = self.store_id;
        tokio::spawn(async move {
            let req = AdminRequest::DestroyReplica {
                range_id: removed.range_id,
                replica_id: removed.replica_id,
                conf_ver: removed.conf_ver,
            };
            let range_id = removed.range_id;
            match service.admin(req).await {
                Ok(_) => info!(
                    store_id,
                    range_id, "placement named a removed replica: destroyed if older"
                ),
                Err(e) => {
                    info!(store_id, range_id, error = %e, "destroying a removed replica failed")
                }
            }
        });
    }

    /// Asks placement for every store's address, in the background.
    fn refresh_addresses(&self) {
        let (placement, service) = (self.placement.clone(), self.service.clone());
        tokio::spawn(async move {
            match placement.call(&PlacementRequest::Stores).await {
                Ok(PlacementReply::Stores(stores)) => {
                    service.learn_addresses(stores.into_iter().map(|s| (s.id, s.addr)))
                }
                Ok(other) => debug!(?other, "placement answered a store list oddly"),
                Err(e) => debug!(error = %e, "could not ask placement for stores"),
            }
        });
    }

    /// Carries out one step in the background once one of `slots` is free, unless
    /// `STEPS_QUEUED_MAX` are waiting already (placement hands it out again later).
    /// Dropping steps beyond the running ones held each back for placement's retry
    /// interval: leader balancing of 10,000 ranges ran at 7 moves a second.
    fn start_step(&self, step: RangeStep, slots: &Arc<Semaphore>, queued: &Arc<Semaphore>) {
        let Ok(ticket) = queued.clone().try_acquire_owned() else {
            debug!(?step, "too many placement steps waiting; skipping");
            return;
        };
        let (service, slots) = (self.service.clone(), slots.clone());
        tokio::spawn(async move {
            let _ticket = ticket;
            let Ok(_permit) = slots.acquire_owned().await else {
                return;
            };
            let range_id = step.range_id();
            match run_step(&service, step.clone()).await {
                Ok(()) => info!(range_id, ?step, "placement step done"),
                Err(e) => info!(range_id, ?step, error = %e, "placement step failed"),
            }
        });
    }
}

async fn run_step(service: &StoreService, step: RangeStep) -> Result<(), KvError> {
    match step {
        RangeStep::AddReplica {
            range_id,
            store_id,
            addr,
        } => service
            // Placement checks the step off once the learner votes (its reports say).
            .add_learner(range_id, store_id, addr)
            .await
            .map(drop),
        RangeStep::RemoveReplica { range_id, store_id } => {
            service.remove_replica(range_id, store_id).await.map(drop)
        }
        RangeStep::TransferLeader { range_id, to_store } => service
            .admin(AdminRequest::TransferLeader { range_id, to_store })
            .await
            .map(drop),
        RangeStep::Split {
            range_id,
            split_key,
        } => {
            let key = match split_key {
                Some(k) => k,
                None => half_split_key(service, range_id).await?,
            };
            service.split(range_id, key).await.map(drop)
        }
        RangeStep::Merge {
            range_id,
            source,
            end_key,
        } => service
            .merge_neighbour(range_id, source, &end_key)
            .await
            .map(drop),
    }
}

/// A key that splits the range's data in two halves by size.
async fn half_split_key(service: &StoreService, range_id: u64) -> Result<Bytes, KvError> {
    let range = service
        .status()
        .await?
        .into_iter()
        .find(|s| s.range.id == range_id)
        .map(|s| s.range)
        .ok_or(KvError::RangeNotFound { range_id })?;
    let engine = service.engine().clone();
    let scanned = range.clone();
    let key = tokio::task::spawn_blocking(move || half_key(&engine, &scanned))
        .await
        .map_err(|e| KvError::Storage {
            message: e.to_string(),
        })?
        .map_err(|e| KvError::Storage {
            message: e.to_string(),
        })?;
    key.ok_or(KvError::InvalidSplit {
        range_id,
        reason: "too few keys to split".into(),
    })
}

fn half_key(engine: &Engine, range: &RangeDescriptor) -> Result<Option<Bytes>, StorageError> {
    let mut pairs: Vec<(Vec<u8>, usize)> = Vec::new();
    let mut total = 0usize;
    engine.scan(Cf::Data, &range.start_key, &range.end_key, |k, v| {
        pairs.push((k.to_vec(), k.len() + v.len()));
        total += k.len() + v.len();
        pairs.len() < HALF_SPLIT_KEYS_MAX
    })?;
    // With the whole size as the bound, the key chosen is the one at half of it.
    Ok(choose_split_key(
        pairs.iter().map(|(k, s)| (&k[..], *s)),
        (total as u64).saturating_sub(1),
    ))
}

/// What placement last took of each range this store leads, so that a heartbeat
/// reports only what changed: 10,000 idle ranges then cost placement nothing.
pub(crate) struct Reported {
    taken: HashMap<RangeId, Fingerprint>,
    full_every: Duration,
    /// When placement last took a full report; none: the next heartbeat is full.
    last_full: Option<Instant>,
    /// What the last `select` sent (and whether all of it), until placement takes it.
    sent: Vec<(RangeId, Fingerprint)>,
    sent_full: bool,
}

/// The parts of a range's report that, when they change, are worth reporting.
#[derive(Debug, Clone, PartialEq)]
struct Fingerprint {
    epoch: Epoch,
    term: u64,
    size_bytes: u64,
    key_count: Option<u64>,
    /// Learners falling silent (or heard again) change nothing else; nor does a check
    /// finding replicas diverged.
    silent_learners: Vec<ReplicaId>,
    diverged: Vec<ReplicaId>,
}

impl Fingerprint {
    fn of(r: &RangeReport) -> Self {
        Fingerprint {
            epoch: r.range.epoch,
            term: r.term,
            size_bytes: r.size_bytes,
            key_count: r.key_count,
            silent_learners: r.silent_learners.clone(),
            diverged: r.diverged.clone(),
        }
    }
}

impl Reported {
    pub(crate) fn new(full_every: Duration) -> Self {
        Reported {
            taken: HashMap::new(),
            full_every,
            last_full: None,
            sent: Vec::new(),
            sent_full: false,
        }
    }

    /// Of the reports of every range this store leads, those to send: all of them when a
    /// full report is due (the bool), else those that changed since placement took them
    /// or saw requests.
    pub(crate) fn select(
        &mut self,
        all: Vec<RangeReport>,
        now: Instant,
    ) -> (Vec<RangeReport>, bool) {
        let full = self
            .last_full
            .is_none_or(|t| now.duration_since(t) >= self.full_every);
        let chosen: Vec<RangeReport> = if full {
            all
        } else {
            let led: HashSet<RangeId> = all.iter().map(|r| r.range.id).collect();
            self.taken.retain(|id, _| led.contains(id));
            all.into_iter()
                .filter(|r| {
                    let busy = r.write_ops + r.read_ops > 0;
                    busy || self.taken.get(&r.range.id) != Some(&Fingerprint::of(r))
                })
                .collect()
        };
        self.sent = chosen
            .iter()
            .map(|r| (r.range.id, Fingerprint::of(r)))
            .collect();
        self.sent_full = full;
        (chosen, full)
    }

    /// Placement took what the last `select` chose; `want_full` asks for a full report
    /// next.
    pub(crate) fn taken(&mut self, want_full: bool, now: Instant) {
        if self.sent_full {
            self.taken.clear();
            self.last_full = Some(now);
        }
        self.taken.extend(self.sent.drain(..));
        if want_full {
            self.last_full = None;
        }
    }
}

/// The replicas among `ranges` that have known no leader for `after_ms` or more, or
/// are `wanted` checked (placement names only those truly removed), at most
/// `LEADERLESS_REPORTED_MAX`.
fn leaderless(ranges: &[RangeStatus], wanted: &[RangeId], after_ms: u64) -> Vec<LeaderlessReplica> {
    ranges
        .iter()
        .filter(|s| {
            !s.is_leader && (s.leader_missing_ms >= after_ms || wanted.contains(&s.range.id))
        })
        .take(LEADERLESS_REPORTED_MAX)
        .map(|s| LeaderlessReplica {
            range_id: s.range.id,
            replica_id: s.replica_id,
            conf_ver: s.range.epoch.conf_ver,
            span: (s.range.epoch != Epoch::default()).then(|| KeySpan {
                start_key: s.range.start_key.clone(),
                end_key: s.range.end_key.clone(),
                version: s.range.epoch.version,
            }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use shale_rpc::ReplicaDescriptor;

    fn report(id: RangeId, term: u64, size_bytes: u64) -> RangeReport {
        let range = RangeDescriptor {
            id,
            start_key: Bytes::new(),
            end_key: Bytes::new(),
            epoch: Epoch {
                conf_ver: 1,
                version: 1,
            },
            replicas: vec![ReplicaDescriptor { id: 1, store_id: 1 }],
        };
        RangeReport {
            size_bytes,
            ..RangeReport::quiet(range, term)
        }
    }

    fn ids(reports: &[RangeReport]) -> Vec<RangeId> {
        reports.iter().map(|r| r.range.id).collect()
    }

    /// Selects from `all` and has placement take it; returns the ids sent and whether full.
    fn send(
        reported: &mut Reported,
        all: Vec<RangeReport>,
        now: Instant,
        want_full: bool,
    ) -> (Vec<RangeId>, bool) {
        let (sent, full) = reported.select(all, now);
        reported.taken(want_full, now);
        (ids(&sent), full)
    }

    #[test]
    fn heartbeats_report_only_ranges_that_changed_or_saw_requests() {
        let t0 = Instant::now();
        let mut reported = Reported::new(Duration::from_secs(60));
        let all = || vec![report(1, 1, 100), report(2, 1, 100), report(3, 1, 100)];
        assert_eq!(send(&mut reported, all(), t0, false), (vec![1, 2, 3], true));
        assert_eq!(send(&mut reported, all(), t0, false), (vec![], false));

        let mut changed = all();
        changed[0].term = 2; // a new leadership
        changed[1].size_bytes = 4096;
        changed[2].read_ops = 1;
        assert_eq!(
            send(&mut reported, changed, t0, false),
            (vec![1, 2, 3], false)
        );
        // A learner falling silent (its add is to be given up), then heard again.
        let mut silent = all();
        silent[0].term = 2;
        silent[1].size_bytes = 4096;
        silent[2].silent_learners = vec![7];
        assert_eq!(
            send(&mut reported, silent.clone(), t0, false),
            (vec![3], false)
        );
        silent[2].silent_learners.clear();
        assert_eq!(
            send(&mut reported, silent.clone(), t0, false),
            (vec![3], false)
        );
        // A check finding a replica diverged (it is to be replaced).
        silent[1].diverged = vec![8];
        assert_eq!(send(&mut reported, silent, t0, false), (vec![2], false));
        let mut again = all();
        again[0].term = 2;
        again[1].size_bytes = 4096;
        // The diverged replica gone: range 2 reports once more, then nothing changed.
        assert_eq!(
            send(&mut reported, again.clone(), t0, false),
            (vec![2], false)
        );
        assert_eq!(
            send(&mut reported, again.clone(), t0, false),
            (vec![], false)
        );

        // A range led again after leading stopped is reported though nothing else moved.
        assert_eq!(
            send(&mut reported, again[..2].to_vec(), t0, false),
            (vec![], false)
        );
        assert_eq!(
            send(&mut reported, again.clone(), t0, false),
            (vec![3], false)
        );

        // Not taken (the call failed): still reported next time.
        let mut lost = again.clone();
        lost[1].size_bytes = 1;
        let _ = reported.select(lost.clone(), t0);
        assert_eq!(
            send(&mut reported, lost.clone(), t0, false),
            (vec![2], false)
        );

        // Placement asks for everything; and everything again after `full_every`.
        assert!(!send(&mut reported, lost.clone(), t0, true).1);
        assert_eq!(
            send(&mut reported, lost.clone(), t0, false),
            (vec![1, 2, 3], true)
        );
        let later = t0 + Duration::from_secs(59);
        assert_eq!(
            send(&mut reported, lost.clone(), later, false),
            (vec![], false)
        );
        let due = t0 + Duration::from_secs(60);
        assert_eq!(send(&mut reported, lost, due, false), (vec![1, 2, 3], true));
    }
}
