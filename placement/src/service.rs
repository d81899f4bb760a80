//! Placement's network face: answers requests when this node leads placement (else
//! redirects to the leader), and keeps placement's durable state (cluster id, stores,
//! range descriptors, pause flag) in the placement Raft group through a KV client.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use rand::Rng;
use shale_rpc::client::{ClientError, KvClient};
use shale_rpc::placement::{
    PlacementError, PlacementReply, PlacementRequest, PlacementResponse, RangeStep,
    ROUTE_SCAN_LIMIT_MAX,
};
use shale_rpc::transport::{rejected, Service};
use shale_rpc::{Frame, FrameKind, RangeDescriptor, WriteOp};
use tracing::{info, warn};

use crate::config::PlacementConfig;
use crate::state::{keys, Leader, StoreRecord};

/// Most range descriptors written in one batch when persisting.
const PERSIST_BATCH_MAX: usize = 256;
/// Scan page when loading state.
const LOAD_PAGE: u32 = 1024;

enum Role {
    Follower { leader: Option<u64> },
    Leader(Box<Leader>),
}

/// Serves the placement API on one placement node.
pub struct PlacementService {
    config: PlacementConfig,
    /// The placement group's own range, reached like any cluster.
    kv: Arc<KvClient>,
    started: Instant,
    role: Mutex<Role>,
}

fn unavailable(e: ClientError) -> PlacementError {
    PlacementError::Unavailable {
        reason: e.to_string(),
    }
}

impl PlacementService {
    pub fn new(config: PlacementConfig, kv: Arc<KvClient>) -> Self {
        PlacementService {
            config,
            kv,
            started: Instant::now(),
            role: Mutex::new(Role::Follower { leader: None }),
        }
    }

    /// Placement's clock: milliseconds since this node started.
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn role(&self) -> std::sync::MutexGuard<'_, Role> {
        self.role.lock().expect("placement role lock")
    }

    pub fn is_leader(&self) -> bool {
        matches!(*self.role(), Role::Leader(_))
    }

    /// Runs `f` on the leader state, or answers with where the leader is.
    fn lead<T>(
        &self,
        f: impl FnOnce(&mut Leader) -> Result<T, PlacementError>,
    ) -> Result<T, PlacementError> {
        match &mut *self.role() {
            Role::Leader(leader) => f(leader),
            Role::Follower { leader } => Err(PlacementError::NotLeader {
                leader: leader
                    .and_then(|id| self.config.peer_addr(id))
                    .map(str::to_string),
            }),
        }
    }

    /// Steps down (the placement range's leader is `leader`, if known).
    pub fn follow(&self, leader: Option<u64>) {
        let mut role = self.role();
        if matches!(*role, Role::Leader(_)) {
            info!(
                node_id = self.config.node_id,
                ?leader,
                "no longer the placement leader"
            );
        }
        *role = Role::Follower { leader };
    }

    /// Takes the lead: loads (or, on a new cluster, creates) placement's state.
    pub async fn lead_from_storage(&self) -> Result<(), ClientError> {
        let cluster_id = match self.kv.get(Bytes::from_static(keys::CLUSTER_ID)).await? {
            Some(b) if b.len() == 8 => u64::from_be_bytes(b[..].try_into().expect("8 bytes")),
            _ => self.create_cluster_id().await?,
        };
        let mut leader = Leader::new(cluster_id, self.now_ms());
        leader.paused = self
            .kv
            .get(Bytes::from_static(keys::PAUSED))
            .await?
            .as_deref()
            == Some(b"1");
        for (_, v) in self.scan_prefix(keys::STORE_PREFIX).await? {
            match StoreRecord::decode(&v) {
                Ok(record) => leader.restore_store(record),
                Err(e) => warn!(error = %e, "skipping an undecodable store record"),
            }
        }
        for (_, v) in self.scan_prefix(keys::RANGE_PREFIX).await? {
            match postcard::from_bytes::<RangeDescriptor>(&v) {
                Ok(range) => leader.view.restore_range(range),
                Err(e) => warn!(error = %e, "skipping an undecodable range record"),
            }
        }
        info!(
            node_id = self.config.node_id,
            cluster_id = format!("{cluster_id:#x}"),
            stores = leader.view.stores.len(),
            ranges = leader.view.ranges.len(),
            "leading placement"
        );
        *self.role() = Role::Leader(Box::new(leader));
        Ok(())
    }

    /// A new cluster's id: random, written once. Read back so that a racing earlier
    /// leader's write, if it landed last, is the one everybody uses.
    async fn create_cluster_id(&self) -> Result<u64, ClientError> {
        let id: u64 = rand::thread_rng().gen_range(1..u64::MAX);
        self.kv
            .put(
                Bytes::from_static(keys::CLUSTER_ID),
                Bytes::copy_from_slice(&id.to_be_bytes()),
            )
            .await?;
        let stored = self.kv.get(Bytes::from_static(keys::CLUSTER_ID)).await?;
        let id = stored
            .filter(|b| b.len() == 8)
            .map(|b| u64::from_be_bytes(b[..].try_into().expect("8 bytes")))
            .unwrap_or(id);
        info!(
            cluster_id = format!("{id:#x}"),
            "bootstrapped a new cluster"
        );
        Ok(id)
    }

    async fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Bytes, Bytes)>, ClientError> {
        self.kv
            .scan_all(
                Bytes::copy_from_slice(prefix),
                keys::prefix_end(prefix),
                LOAD_PAGE,
            )
            .await
    }

    async fn persist_store(&self, record: StoreRecord) -> Result<(), PlacementError> {
        self.kv
            .put(keys::store(record.id), record.encode())
            .await
            .map_err(unavailable)
    }

    /// Writes the range descriptors that changed since the last call.
    pub async fn persist_ranges(&self) {
        let writes: Vec<WriteOp> = {
            let mut role = self.role();
            let Role::Leader(leader) = &mut *role else {
                return;
            };
            let ids: Vec<u64> = leader.view.dirty.drain().collect();
            ids.into_iter()
                .map(|id| match leader.view.ranges.get(&id) {
                    Some(r) => WriteOp::Put {
                        key: keys::range(id),
                        value: postcard::to_stdvec(&r.range).expect("range encodes").into(),
                    },
                    None => WriteOp::Delete {
                        key: keys::range(id),
                    },
                })
                .collect()
        };
        // Placement's group is one range, so each chunk is one atomic batch.
        for chunk in writes.chunks(PERSIST_BATCH_MAX) {
            if let Err(e) = self.kv.batch(chunk.to_vec()).await {
                warn!(error = %e, "could not persist range descriptors; marking them dirty again");
                self.redirty(&writes);
                return;
            }
        }
    }

    fn redirty(&self, writes: &[WriteOp]) {
        if let Role::Leader(leader) = &mut *self.role() {
            for op in writes {
                let key = op.key();
                if let Ok(id) = key[keys::RANGE_PREFIX.len()..]
                    .try_into()
                    .map(u64::from_be_bytes)
                {
                    leader.view.dirty.insert(id);
                }
            }
        }
    }

    /// One scheduling pass, when leading.
    pub fn schedule_pass(&self) {
        let now = self.now_ms();
        let _ = self.lead(|leader| Ok(leader.schedule_pass(now, &self.config.schedule)));
    }

    /// Answers one request.
    pub async fn handle(&self, req: PlacementRequest) -> PlacementResponse {
        let now = self.now_ms();
        let schedule = &self.config.schedule;
        match req {
            PlacementRequest::Register {
                cluster_id,
                store_id,
                addr,
                labels,
            } => {
                let expected = self.lead(|l| Ok(l.cluster_id))?;
                if let Some(got) = cluster_id.filter(|&c| c != expected) {
                    return Err(PlacementError::WrongCluster { expected, got });
                }
                let store_id = match store_id {
                    0 => self.kv.alloc_ids(1).await.map_err(unavailable)?,
                    id => id,
                };
                if let Some(record) = self.lead(|l| Ok(l.register(store_id, addr, labels)))? {
                    self.persist_store(record).await?;
                }
                info!(store_id, "store registered");
                Ok(PlacementReply::Registered {
                    cluster_id: expected,
                    store_id,
                })
            }
            PlacementRequest::Heartbeat(hb) => {
                let answer = self.lead(|l| l.heartbeat(&hb, now, schedule))?;
                if let Some(record) = answer.changed {
                    self.persist_store(record).await?;
                }
                Ok(PlacementReply::Heartbeat {
                    steps: answer.steps,
                    wake: answer.wake,
                    removed: answer.removed,
                    want_full: answer.want_full,
                    low_space_stores: answer.low_space_stores,
                })
            }
            PlacementRequest::AllocIds { count } => {
                self.lead(|_| Ok(()))?;
                if count == 0 || count > shale_rpc::ALLOC_IDS_MAX {
                    return Err(PlacementError::Invalid {
                        reason: format!("count must be 1..={}", shale_rpc::ALLOC_IDS_MAX),
                    });
                }
                let first = self.kv.alloc_ids(count).await.map_err(unavailable)?;
                Ok(PlacementReply::Ids { first, count })
            }
            PlacementRequest::FindRange { key } => self.lead(|l| {
                Ok(PlacementReply::Route(
                    l.view.find(&key).map(|r| l.view.route(r)),
                ))
            }),
            PlacementRequest::ScanRanges { start_key, limit } => self.lead(|l| {
                let limit = limit.min(ROUTE_SCAN_LIMIT_MAX) as usize;
                let routes = l
                    .view
                    .scan(&start_key, limit)
                    .into_iter()
                    .map(|r| l.view.route(r));
                Ok(PlacementReply::Routes(routes.collect()))
            }),
            PlacementRequest::Stores => self.lead(|l| {
                Ok(PlacementReply::Stores(
                    l.view.store_infos(now, schedule.store_down_after_ms),
                ))
            }),
            PlacementRequest::Operators => self.lead(|l| {
                let mut ops: Vec<_> = l.operators.values().map(|o| o.info(now)).collect();
                ops.sort_by_key(|o| o.range_id);
                Ok(PlacementReply::Operators(ops))
            }),
            PlacementRequest::Status => self.lead(|l| {
                Ok(PlacementReply::Status(l.status(
                    self.config.node_id,
                    now,
                    schedule,
                )))
            }),
            PlacementRequest::Split {
                range_id,
                split_key,
            } => self.lead(|l| {
                l.admin_operator(
                    range_id,
                    vec![RangeStep::Split {
                        range_id,
                        split_key,
                    }],
                    now,
                )
                .map(|()| PlacementReply::Done)
            }),
            PlacementRequest::Merge { range_id } => {
                self.lead(|l| l.admin_merge(range_id, now).map(|()| PlacementReply::Done))
            }
            PlacementRequest::MoveReplica {
                range_id,
                from_store,
                to_store,
            } => self.lead(|l| {
                let addr = l
                    .view
                    .stores
                    .get(&to_store)
                    .map(|s| s.addr.clone())
                    .ok_or(PlacementError::UnknownStore { store_id: to_store })?;
                let steps = vec![
                    RangeStep::AddReplica {
                        range_id,
                        store_id: to_store,
                        addr,
                    },
                    RangeStep::RemoveReplica {
                        range_id,
                        store_id: from_store,
                    },
                ];
                l.admin_operator(range_id, steps, now)
                    .map(|()| PlacementReply::Done)
            }),
            PlacementRequest::TransferLeader { range_id, to_store } => self.lead(|l| {
                let step = RangeStep::TransferLeader { range_id, to_store };
                l.admin_operator(range_id, vec![step], now)
                    .map(|()| PlacementReply::Done)
            }),
            PlacementRequest::Drain { store_id, drain } => {
                let record = self.lead(|l| l.drain(store_id, drain))?;
                self.persist_store(record).await?;
                info!(store_id, drain, "store drain set");
                Ok(PlacementReply::Done)
            }
            PlacementRequest::SetScheduling { paused } => {
                self.lead(|l| {
                    l.paused = paused;
                    Ok(())
                })?;
                let value = Bytes::from_static(if paused { b"1" } else { b"0" });
                self.kv
                    .put(Bytes::from_static(keys::PAUSED), value)
                    .await
                    .map_err(unavailable)?;
                Ok(PlacementReply::Done)
            }
        }
    }
}

impl Service for PlacementService {
    async fn request(&self, frame: Frame) -> Frame {
        let response: PlacementResponse =
            match frame.decode::<PlacementRequest>(FrameKind::PlacementRequest) {
                Ok(req) => self.handle(req).await,
                Err(e) => Err(PlacementError::Invalid {
                    reason: format!("request could not be decoded: {e}"),
                }),
            };
        Frame::encode(FrameKind::PlacementResponse, &response).unwrap_or_else(|e| rejected(&e))
    }

    fn message(&self, _frame: Frame, remote: std::net::SocketAddr) {
        tracing::debug!(%remote, "placement takes no one-way messages");
    }
}
