//! The store's network face: decodes KV requests and Raft batches off the transport,
//! checks them, hands them to the store loop, and runs linearizable reads against the
//! engine once the loop says they may proceed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use shale_rpc::client::{ClientError, KvClient};
use shale_rpc::limits::{SCAN_LIMIT_MAX, SCAN_PAGE_BYTES_MAX};
use shale_rpc::placement::{PlacementReply, PlacementRequest};
use shale_rpc::placement_client::PlacementClient;
use shale_rpc::transport::{rejected, Service};
use shale_rpc::{
    AdminReply, AdminRequest, AdminResponse, CheckOutcome, Epoch, Frame, FrameKind, KvError, KvOp,
    KvReply, KvRequest, KvResponse, RaftBatch, RaftEnvelope, RangeDescriptor, RangeId, RangeStatus,
    ReplicaDescriptor, ReplicaId, StoreId, WriteOp, SYSTEM_PREFIX_END,
};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::command::{Applied, Command};
use crate::consistency;
use crate::engine::{Cf, Engine};
use crate::faults::Faults;
use crate::key_counts::KeyCounts;
use crate::metrics::METRICS;
use crate::replica::AddressBook;
use crate::snapshot::{SnapshotAck, SnapshotChunk, SNAPSHOTS_RECEIVING_MAX};
use crate::snapshot_install::{first_chunk, Incoming, Received};
use crate::space::Space;
use crate::staging::Staging;
use crate::store::{overlap_reason, HeartbeatStatus, StoreMsg};

mod membership;
mod merge;

/// How long an admin consistency check waits for every replica's answer: within a
/// client's default request timeout (5 s); a slower check's outcome shows in status.
const CHECK_WAIT: Duration = Duration::from_secs(4);

/// Serves one store's KV and Raft traffic.
pub struct StoreService {
    store_id: StoreId,
    tx: SyncSender<StoreMsg>,
    addresses: AddressBook,
    /// Snapshot transfers being received, by sending store and transfer id.
    snapshots: Mutex<HashMap<(StoreId, u64), Incoming>>,
    faults: Arc<Faults>,
    engine: Arc<Engine>,
    request_timeout: Duration,
    /// Reaches the range holding the id counter, wherever it is.
    cluster: Arc<KvClient>,
    /// Placement, when the store reports to one: it hands out ids then.
    placement: Option<Arc<PlacementClient>>,
    /// Requests per range since the last heartbeat took them.
    load: Mutex<HashMap<RangeId, RangeLoad>>,
    key_counts: Arc<KeyCounts>,
    /// Bulk-load files staged here, and a bound on how many are written at once.
    staging: Arc<Staging>,
    stage_builds: tokio::sync::Semaphore,
    /// Disk space: a store low on it stages nothing and takes no snapshots.
    space: Arc<Space>,
}

/// Where a store gets new range and replica ids: placement when it has one, else the
/// counter kept in the cluster (reached through `cluster`, also used to reach peers).
pub struct IdSource {
    pub cluster: Arc<KvClient>,
    pub placement: Option<Arc<PlacementClient>>,
}

/// Requests one range served since the last report.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RangeLoad {
    pub write_ops: u64,
    pub write_bytes: u64,
    pub read_ops: u64,
    pub read_bytes: u64,
}

/// Most ranges whose load is tracked between reports; past it new ranges are not counted.
const LOAD_RANGES_MAX: usize = 1 << 20;

impl StoreService {
    // Built in one place (`StoreNode::start`) from parts it made just before.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store_id: StoreId,
        tx: SyncSender<StoreMsg>,
        addresses: AddressBook,
        faults: Arc<Faults>,
        engine: Arc<Engine>,
        request_timeout: Duration,
        ids: IdSource,
        key_counts: Arc<KeyCounts>,
        staging: Staging,
        stage_builds_max: usize,
        space: Arc<Space>,
    ) -> Self {
        let IdSource { cluster, placement } = ids;
        StoreService {
            store_id,
            tx,
            addresses,
            snapshots: Mutex::new(HashMap::new()),
            faults,
            engine,
            request_timeout,
            cluster,
            placement,
            load: Mutex::new(HashMap::new()),
            key_counts,
            staging: Arc::new(staging),
            stage_builds: tokio::sync::Semaphore::new(stage_builds_max),
            space,
        }
    }

    /// Hands out `count` new ids: from placement when the store has one, else from the
    /// cluster's own counter.
    async fn alloc_ids(&self, count: u32) -> Result<u64, KvError> {
        let Some(placement) = &self.placement else {
            return self.cluster.alloc_ids(count).await.map_err(client_err);
        };
        match placement.call(&PlacementRequest::AllocIds { count }).await {
            Ok(PlacementReply::Ids { first, count: got }) if got == count => Ok(first),
            Ok(other) => Err(KvError::ServerBusy {
                reason: format!("placement answered {other:?} to an id allocation"),
            }),
            Err(e) => Err(KvError::ServerBusy {
                reason: format!("id allocation failed: {e}"),
            }),
        }
    }

    /// Takes the per-range load counted since the last call.
    pub fn take_load(&self) -> HashMap<RangeId, RangeLoad> {
        std::mem::take(&mut *self.load.lock().expect("load lock"))
    }

    fn count_load(&self, range_id: RangeId, op: &KvOp) {
        let mut load = self.load.lock().expect("load lock");
        if load.len() >= LOAD_RANGES_MAX && !load.contains_key(&range_id) {
            return;
        }
        let entry = load.entry(range_id).or_default();
        match op {
            KvOp::Get { key } | KvOp::GetReplica { key } => {
                entry.read_ops += 1;
                entry.read_bytes += key.len() as u64;
            }
            KvOp::Scan { .. } | KvOp::ScanKeys { .. } => entry.read_ops += 1,
            KvOp::Put { key, value } => {
                entry.write_ops += 1;
                entry.write_bytes += (key.len() + value.len()) as u64;
            }
            KvOp::Delete { key } => {
                entry.write_ops += 1;
                entry.write_bytes += key.len() as u64;
            }
            KvOp::CompareAndSet { key, value, .. } => {
                entry.write_ops += 1;
                entry.write_bytes += (key.len() + value.as_ref().map_or(0, Bytes::len)) as u64;
            }
            KvOp::Ingest { pairs } | KvOp::StageIngest { pairs, .. } => {
                entry.write_ops += pairs.len() as u64;
                entry.write_bytes += pairs
                    .iter()
                    .map(|(k, v)| (k.len() + v.len()) as u64)
                    .sum::<u64>();
            }
            KvOp::Batch { ops } => {
                entry.write_ops += 1;
                entry.write_bytes += ops.iter().map(|o| o.key().len() as u64).sum::<u64>();
            }
            KvOp::AllocIds { .. } | KvOp::IngestStaged { .. } => {}
        }
    }

    /// Wakes these ranges' replicas on this store (their leader's store is down).
    pub fn wake(&self, range_ids: Vec<RangeId>) {
        if let Err(e) = self.enqueue(StoreMsg::Wake { range_ids }) {
            debug!(error = %e, "could not wake replicas");
        }
    }

    /// The state of every replica on this store.
    /// Every replica on the store, with key counts where made (led ranges without one
    /// are queued for counting).
    pub async fn status(&self) -> Result<Vec<RangeStatus>, KvError> {
        let mut ranges: Vec<RangeStatus> = self.ask(|reply| StoreMsg::Status { reply }).await?;
        self.key_counts.annotate_all(&mut ranges);
        Ok(ranges)
    }

    /// What a placement heartbeat needs: led replicas and those without a leader for
    /// `leaderless_after_ms`, with key counts where made (led ranges without one are
    /// queued for counting).
    pub async fn heartbeat_status(
        &self,
        leaderless_after_ms: u64,
    ) -> Result<HeartbeatStatus, KvError> {
        let mut status = self
            .ask(|reply| StoreMsg::HeartbeatStatus {
                leaderless_after_ms,
                reply,
            })
            .await?;
        self.key_counts.forget_unheld(status.held.iter().copied());
        self.key_counts.annotate(&mut status.statuses);
        Ok(status)
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    fn enqueue(&self, msg: StoreMsg) -> Result<(), KvError> {
        self.tx.try_send(msg).map_err(|e| match e {
            TrySendError::Full(_) => KvError::ServerBusy {
                reason: "store loop queue is full".into(),
            },
            TrySendError::Disconnected(_) => KvError::ShuttingDown,
        })
    }

    async fn wait<T>(&self, rx: oneshot::Receiver<Result<T, KvError>>) -> Result<T, KvError> {
        match tokio::time::timeout(self.request_timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(KvError::ShuttingDown),
            Err(_) => Err(KvError::Timeout),
        }
    }

    async fn ask<T>(
        &self,
        build: impl FnOnce(oneshot::Sender<T>) -> StoreMsg,
    ) -> Result<T, KvError> {
        let (reply, rx) = oneshot::channel();
        self.enqueue(build(reply))?;
        rx.await.map_err(|_| KvError::ShuttingDown)
    }

    /// Answers one KV request.
    pub async fn handle(&self, req: KvRequest) -> KvResponse {
        req.op.validate()?;
        self.count_load(req.range_id, &req.op);
        let KvRequest {
            range_id,
            epoch,
            op,
        } = req;
        let ops = match op {
            KvOp::Get { .. } | KvOp::Scan { .. } | KvOp::ScanKeys { .. } => {
                return self.read(range_id, epoch, op).await
            }
            KvOp::GetReplica { key } => return self.read_replica(range_id, &key).await,
            KvOp::StageIngest { id, pairs } => return self.stage(range_id, epoch, id, pairs).await,
            KvOp::IngestStaged {
                id,
                crc32,
                first_key,
                last_key,
                stores,
            } => {
                // Bounds, the file itself and duplicates are checked where it is
                // proposed (`Replica::propose_command`).
                let range = self.described(range_id, epoch).await?;
                // Every replica must hold its copy before the entry exists: one without
                // it could not apply the entry.
                if let Some(r) = range
                    .replicas
                    .iter()
                    .find(|r| !stores.contains(&r.store_id))
                {
                    return Err(KvError::NotStaged {
                        store_id: r.store_id,
                    });
                }
                let command = Command::IngestStaged {
                    epoch: range.epoch,
                    id,
                    crc32,
                    first_key,
                    last_key,
                };
                return self
                    .propose(range_id, epoch, command)
                    .await
                    .map(|_| KvReply::Written);
            }
            KvOp::Ingest { pairs } => {
                return self
                    .propose(range_id, epoch, Command::Ingest { pairs })
                    .await
                    .map(|_| KvReply::Written);
            }
            KvOp::AllocIds { count } => {
                let command = Command::AllocIds { count };
                return match self.propose(range_id, epoch, command).await? {
                    Applied::Ids { first, count } => Ok(KvReply::Ids { first, count }),
                    other => panic!("id allocation applied as {other:?}"),
                };
            }
            KvOp::CompareAndSet {
                key,
                expected,
                value,
            } => {
                let command = Command::CompareAndSet {
                    key,
                    expected,
                    value,
                };
                return self
                    .propose(range_id, epoch, command)
                    .await
                    .map(|_| KvReply::Written);
            }
            KvOp::Put { key, value } => vec![WriteOp::Put { key, value }],
            KvOp::Delete { key } => vec![WriteOp::Delete { key }],
            KvOp::Batch { ops } => ops,
        };
        let (reply, rx) = oneshot::channel();
        self.enqueue(StoreMsg::Write {
            range_id,
            epoch,
            ops,
            reply,
        })?;
        self.wait(rx).await.map(|_| KvReply::Written)
    }

    async fn read(&self, range_id: RangeId, epoch: Option<Epoch>, op: KvOp) -> KvResponse {
        let (reply, rx) = oneshot::channel();
        self.enqueue(StoreMsg::Read {
            range_id,
            epoch,
            reply,
        })?;
        let range = self.wait(rx).await?;
        match op {
            KvOp::Get { key } => self.get(&range, &key),
            KvOp::Scan { start, end, limit } => self.scan(&range, &start, &end, limit, true),
            KvOp::ScanKeys { start, end, limit } => self.scan(&range, &start, &end, limit, false),
            _ => unreachable!("only reads come here"),
        }
    }

    /// Proposes `command` as its own entry of `range_id`; answers once it applied here.
    async fn propose(
        &self,
        range_id: RangeId,
        epoch: Option<Epoch>,
        command: Command,
    ) -> Result<Applied, KvError> {
        let (reply, rx) = oneshot::channel();
        self.enqueue(StoreMsg::Propose {
            range_id,
            epoch,
            command,
            reply,
        })?;
        self.wait(rx).await
    }

    /// This store's replica's descriptor of `range_id`, which must match `epoch` if given.
    async fn described(
        &self,
        range_id: RangeId,
        epoch: Option<Epoch>,
    ) -> Result<RangeDescriptor, KvError> {
        let (range, _) = self.describe(range_id).await?;
        if epoch.is_some_and(|e| e != range.epoch) {
            return Err(KvError::EpochNotMatch {
                current: vec![range],
            });
        }
        Ok(range)
    }

    /// Stages a bulk load's pairs (step 1 of a staged ingest) on this store's replica
    /// of `range_id`: every key must lie in the range as this replica knows it.
    async fn stage(
        &self,
        range_id: RangeId,
        epoch: Option<Epoch>,
        id: u128,
        pairs: Vec<(Bytes, Bytes)>,
    ) -> KvResponse {
        let range = self.described(range_id, epoch).await?;
        if pairs.is_empty() || !range.contains_sorted(&pairs) {
            return Err(KvError::KeyNotInRange { range_id });
        }
        if let Some(e) = self.space.own_refusal_if_low() {
            return Err(e);
        }
        let _build = self
            .stage_builds
            .acquire()
            .await
            .map_err(|_| KvError::ShuttingDown)?;
        let staging = self.staging.clone();
        tokio::task::spawn_blocking(move || staging.stage(id, &pairs))
            .await
            .map_err(|e| KvError::Storage {
                message: format!("staging task failed: {e}"),
            })??;
        METRICS.staged_files.inc();
        Ok(KvReply::Written)
    }

    /// Reads `key` from this store's replica of `range_id`, whatever its role.
    async fn read_replica(&self, range_id: RangeId, key: &[u8]) -> KvResponse {
        let (range, _) = self.describe(range_id).await?;
        // A replica still waiting for its first snapshot spans nothing yet (its empty
        // descriptor would seem to span every key, and the read would see other ranges').
        if range.epoch == Epoch::default() {
            return Err(KvError::ServerBusy {
                reason: format!("range {range_id}'s replica here has no data yet"),
            });
        }
        if !range.contains(key) {
            return Err(KvError::KeyNotInRange { range_id });
        }
        self.get(&range, key)
    }

    /// Splits `range_id` at `split_key`: allocates the new range's ids, then proposes the
    /// split through the range's Raft log. Answers once it is applied here.
    pub async fn split(
        &self,
        range_id: RangeId,
        split_key: Bytes,
    ) -> Result<(RangeDescriptor, RangeDescriptor), KvError> {
        let (range, _) = self.describe(range_id).await?;
        // A route gone stale (another split narrowed the range) is the client's to retry.
        if !range.contains(&split_key) {
            return Err(KvError::KeyNotInRange { range_id });
        }
        let count = range.replicas.len() as u32 + 1;
        let first = self.alloc_ids(count).await?;
        let right = RangeDescriptor {
            id: first,
            start_key: split_key.clone(),
            end_key: range.end_key.clone(),
            epoch: range.epoch,
            replicas: range
                .replicas
                .iter()
                .zip(first + 1..)
                .map(|(r, id)| ReplicaDescriptor {
                    id,
                    store_id: r.store_id,
                })
                .collect(),
        };
        let command = Command::Split {
            epoch: range.epoch,
            split_key,
            right,
        };
        match self.propose(range_id, Some(range.epoch), command).await? {
            Applied::Split { left, right } => Ok((*left, *right)),
            other => panic!("split applied as {other:?}"),
        }
    }

    /// Answers one admin request.
    pub async fn admin(&self, req: AdminRequest) -> AdminResponse {
        match req {
            AdminRequest::Status => {
                let ranges = self.ask(|reply| StoreMsg::Status { reply }).await?;
                Ok(AdminReply::Status {
                    store_id: self.store_id,
                    ranges,
                })
            }
            AdminRequest::TransferLeader { range_id, to_store } => {
                let (reply, rx) = oneshot::channel();
                self.enqueue(StoreMsg::TransferLeader {
                    range_id,
                    to_store,
                    reply,
                })?;
                self.wait(rx).await.map(|()| AdminReply::Started)
            }
            AdminRequest::Split {
                range_id,
                split_key,
            } => {
                let (left, right) = self.split(range_id, split_key).await?;
                Ok(AdminReply::Split { left, right })
            }
            AdminRequest::FindRange { key } => {
                let range = self.ask(|reply| StoreMsg::FindRange { key, reply }).await?;
                Ok(AdminReply::Range(range))
            }
            AdminRequest::AddReplica {
                range_id,
                store_id,
                addr,
            } => self
                .add_replica(range_id, store_id, addr)
                .await
                .map(AdminReply::Changed),
            AdminRequest::RemoveReplica { range_id, store_id } => self
                .remove_replica(range_id, store_id)
                .await
                .map(AdminReply::Changed),
            AdminRequest::CheckConsistency { range_id } => self
                .check_consistency(range_id)
                .await
                .map(AdminReply::Checked),
            AdminRequest::DestroyReplica {
                range_id,
                replica_id,
                conf_ver,
            } => {
                self.ask(|reply| StoreMsg::Destroy {
                    range_id,
                    replica_id,
                    conf_ver,
                    reply,
                })
                .await?;
                Ok(AdminReply::Started)
            }
            AdminRequest::Replica { range_id } => Ok(AdminReply::Replica(
                self.replica_status(range_id).await?.map(Box::new),
            )),
            AdminRequest::PrepareMerge { range_id, target } => self
                .prepare_merge(range_id, target)
                .await
                .map(AdminReply::Changed),
            AdminRequest::CommitMerge { range_id, source } => self
                .commit_merge(range_id, source)
                .await
                .map(AdminReply::Changed),
            AdminRequest::RollbackMerge { range_id } => {
                self.rollback_merge(range_id).await.map(AdminReply::Changed)
            }
        }
    }

    /// Runs a consistency check of `range_id`, which this store must lead, and waits
    /// (up to `CHECK_WAIT`) for every replica's answer; past that, the answers so far
    /// if a majority of the replicas agrees.
    async fn check_consistency(&self, range_id: RangeId) -> Result<CheckOutcome, KvError> {
        if !consistency::room_for_a_sum() {
            return Err(KvError::ServerBusy {
                reason: "too many consistency checks running on this store".into(),
            });
        }
        let index = match self
            .propose(range_id, None, Command::ComputeChecksum)
            .await?
        {
            Applied::CheckStarted { index } => index,
            other => {
                return Err(KvError::Storage {
                    message: format!("a check entry applied as {other:?}"),
                })
            }
        };
        let deadline = tokio::time::Instant::now() + CHECK_WAIT;
        let outcome = |so_far| {
            self.ask(move |reply| StoreMsg::CheckOutcome {
                range_id,
                index,
                so_far,
                reply,
            })
        };
        loop {
            if let Some(judged) = outcome(false).await? {
                return Ok(judged);
            }
            if tokio::time::Instant::now() >= deadline {
                // A majority agreeing while a replica has not answered (its store is
                // down, say) is the outcome, naming the missing ones.
                return match outcome(true).await? {
                    Some(so_far) if so_far.agreed => Ok(so_far),
                    _ => Err(KvError::ServerBusy {
                        reason: format!(
                            "the check at index {index} still waits on replicas; its outcome \
                             will show in the range's status"
                        ),
                    }),
                };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The local replica's descriptor of `range_id` and the range's learners.
    async fn describe(
        &self,
        range_id: RangeId,
    ) -> Result<(RangeDescriptor, Vec<ReplicaId>), KvError> {
        self.ask(|reply| StoreMsg::Describe { range_id, reply })
            .await?
            .ok_or(KvError::RangeNotFound { range_id })
    }

    /// Takes a snapshot chunk; a complete, well-formed snapshot goes to the store loop
    /// before the answer says it was taken.
    async fn snapshot_chunk(&self, frame: Frame) -> SnapshotAck {
        let refused = |reason: String| SnapshotAck::Refused { reason };
        if self.faults.partitioned() {
            return refused("the store is cut off (fault injection)".into());
        }
        let chunk: SnapshotChunk = match frame.decode(FrameKind::SnapshotChunk) {
            Ok(c) => c,
            Err(e) => return refused(format!("undecodable snapshot chunk: {e}")),
        };
        let (from_store, range_id) = (chunk.from_store, chunk.range_id);
        if self.faults.range_cut(range_id) {
            return refused(format!(
                "range {range_id} is cut off here (fault injection)"
            ));
        }
        let key = (from_store, chunk.transfer_id);
        let mut decoded = None;
        if chunk.seq == 0 && self.space.is_low() {
            // Offered again later, with backoff; placement moves the replica elsewhere.
            info!(
                range_id,
                from_store, "snapshot must wait: this store is low on disk space"
            );
            return SnapshotAck::Busy;
        }
        if chunk.seq == 0 {
            let first = match first_chunk(&chunk) {
                Ok(first) => first,
                Err(reason) => return refused(reason),
            };
            // Asked before any data comes: the sender offers it again later, with
            // backoff, as when this store is busy (the store loop checks again when the
            // snapshot is stepped).
            let range = first.1.range.clone();
            decoded = Some(first);
            match self
                .ask(|reply| StoreMsg::SnapshotFits { range, reply })
                .await
            {
                Ok(None) => {}
                Ok(Some(other)) => {
                    info!(range_id, from_store, reason = %overlap_reason(other), "snapshot must wait");
                    return SnapshotAck::Busy;
                }
                Err(e) => return refused(e.to_string()),
            }
        }
        let answer = {
            let mut open = self.snapshots.lock().expect("snapshot transfers lock");
            // A sender that starts a range's snapshot again has given up the transfer
            // before (it lost its connection, say): that one's slot is free.
            let restarted = |t: &Incoming| {
                chunk.seq == 0 && (t.from_store, t.range_id) == (from_store, range_id)
            };
            open.retain(|_, t| !t.is_stale() && !restarted(t));
            if let Some(decoded) = decoded {
                if open.len() >= SNAPSHOTS_RECEIVING_MAX {
                    return SnapshotAck::Busy;
                }
                match Incoming::start(
                    self.engine.clone(),
                    &chunk,
                    decoded,
                    self.faults.snapshot_view_outdated(),
                ) {
                    Ok(t) => {
                        open.insert(key, t);
                    }
                    Err(reason) => {
                        warn!(from_store, range_id, %reason, "snapshot refused");
                        return refused(reason);
                    }
                }
            }
            let Some(t) = open.get_mut(&key) else {
                return refused(format!(
                    "snapshot chunk {} for an unknown transfer",
                    chunk.seq
                ));
            };
            let last = chunk.last;
            let answer = t.add(chunk);
            if answer.is_err() || last {
                open.remove(&key);
            }
            answer
        };
        let outcome = match answer {
            Ok(rx) => rx
                .await
                .unwrap_or_else(|_| Err("the snapshot writer stopped".into())),
            Err(reason) => Err(reason),
        };
        let Received { message, prepared } = match outcome {
            Ok(None) => return SnapshotAck::Next,
            Ok(Some(received)) => received,
            Err(reason) => {
                self.snapshots
                    .lock()
                    .expect("snapshot transfers lock")
                    .remove(&key);
                warn!(range_id, from_store, %reason, "snapshot refused");
                return refused(reason);
            }
        };
        let batch = RaftBatch::of(
            from_store,
            self.store_id,
            vec![RaftEnvelope { range_id, message }],
        );
        let tx = self.tx.clone();
        // A snapshot is too costly to drop on a full queue: wait for room, off the
        // runtime's workers.
        let handed = tokio::task::spawn_blocking(move || {
            tx.send(StoreMsg::SnapshotReceived { batch, prepared })
                .map_err(|_| "the store is shutting down".to_string())
        })
        .await
        .unwrap_or_else(|e| Err(format!("handing the snapshot over failed: {e}")));
        match handed {
            Ok(()) => SnapshotAck::Taken,
            Err(reason) => refused(reason),
        }
    }

    fn get(&self, range: &RangeDescriptor, key: &[u8]) -> KvResponse {
        if !range.contains(key) {
            return Err(KvError::KeyNotInRange { range_id: range.id });
        }
        let value = self.engine.get(Cf::Data, key).map_err(storage_err)?;
        Ok(KvReply::Value(value.map(Bytes::from)))
    }

    /// One page of `[start, end)` within `range`; `values: false` leaves values empty.
    fn scan(
        &self,
        range: &RangeDescriptor,
        start: &[u8],
        end: &[u8],
        limit: u32,
        values: bool,
    ) -> KvResponse {
        // Users never see system keys.
        let start = start.max(&range.start_key[..]).max(SYSTEM_PREFIX_END);
        // The scan stops at the nearer of the requested end and the range's end.
        let range_ends_first =
            !range.end_key.is_empty() && (end.is_empty() || &range.end_key[..] < end);
        let stop: &[u8] = if range_ends_first {
            &range.end_key
        } else {
            end
        };
        let limit = limit.clamp(1, SCAN_LIMIT_MAX) as usize;
        let mut pairs = Vec::new();
        let mut bytes = 0usize;
        let mut full = false;
        self.engine
            .scan(Cf::Data, start, stop, |k, v| {
                if pairs.len() == limit || bytes >= SCAN_PAGE_BYTES_MAX {
                    full = true;
                    return false;
                }
                let v = if values { v } else { &[] };
                bytes += k.len() + v.len();
                pairs.push((Bytes::copy_from_slice(k), Bytes::copy_from_slice(v)));
                true
            })
            .map_err(storage_err)?;
        let resume_key = if full {
            let (last, _) = pairs.last().expect("a full page has pairs");
            let mut next = last.to_vec();
            next.push(0);
            Some(Bytes::from(next))
        } else if range_ends_first {
            Some(range.end_key.clone())
        } else {
            None
        };
        Ok(KvReply::Scanned { pairs, resume_key })
    }
}

fn client_err(e: ClientError) -> KvError {
    match e {
        ClientError::Kv(e) => e,
        other => KvError::ServerBusy {
            reason: format!("id allocation failed: {other}"),
        },
    }
}

fn storage_err(e: crate::StorageError) -> KvError {
    warn!(error = %e, "engine read failed");
    KvError::Storage {
        message: e.to_string(),
    }
}

impl Service for StoreService {
    async fn request(&self, frame: Frame) -> Frame {
        let encoded = match frame.kind {
            FrameKind::SnapshotChunk => {
                Frame::encode(FrameKind::SnapshotAck, &self.snapshot_chunk(frame).await)
            }
            FrameKind::AdminRequest => {
                let response: AdminResponse =
                    match frame.decode::<AdminRequest>(FrameKind::AdminRequest) {
                        Ok(req) => self.admin(req).await,
                        Err(e) => Err(KvError::Malformed {
                            message: e.to_string(),
                        }),
                    };
                Frame::encode(FrameKind::AdminResponse, &response)
            }
            _ => {
                let response: KvResponse = match frame.decode::<KvRequest>(FrameKind::KvRequest) {
                    Ok(req) => self.handle(req).await,
                    Err(e) => Err(KvError::Malformed {
                        message: e.to_string(),
                    }),
                };
                Frame::encode(FrameKind::KvResponse, &response)
            }
        };
        encoded.unwrap_or_else(|e| rejected(&e))
    }

    fn message(&self, frame: Frame, remote: SocketAddr) {
        if self.faults.partitioned() {
            return;
        }
        match frame.decode::<RaftBatch>(FrameKind::RaftBatch) {
            Ok(mut batch) => {
                self.faults.drop_cut_ranges(&mut batch);
                self.learn_address(batch.from_store, remote);
                if let Err(e) = self.enqueue(StoreMsg::Raft(batch)) {
                    debug!(error = %e, "dropping raft batch");
                }
            }
            Err(e) => warn!(error = %e, %remote, "undecodable raft batch"),
        }
    }
}
