//! The store's network face: decodes KV requests and Raft batches off the transport,
//! checks them, hands them to the store loop, and runs linearizable reads against the
//! engine once the loop says they may proceed.

use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use shale_rpc::client::{ClientError, KvClient};
use shale_rpc::limits::{SCAN_LIMIT_MAX, SCAN_PAGE_BYTES_MAX};
use shale_rpc::transport::{rejected, Service};
use shale_rpc::{
    AdminReply, AdminRequest, AdminResponse, Epoch, Frame, FrameKind, KvError, KvOp, KvReply,
    KvRequest, KvResponse, RaftBatch, RangeDescriptor, RangeId, ReplicaDescriptor, StoreId,
    WriteOp, SYSTEM_PREFIX_END,
};
use tokio::sync::oneshot;
use tracing::{debug, warn};

use crate::command::{Applied, Command};
use crate::engine::{Cf, Engine};
use crate::store::StoreMsg;

/// Serves one store's KV and Raft traffic.
pub struct StoreService {
    store_id: StoreId,
    tx: SyncSender<StoreMsg>,
    engine: Arc<Engine>,
    request_timeout: Duration,
    /// Reaches the range holding the id counter, wherever it is.
    cluster: Arc<KvClient>,
}

impl StoreService {
    pub fn new(
        store_id: StoreId,
        tx: SyncSender<StoreMsg>,
        engine: Arc<Engine>,
        request_timeout: Duration,
        cluster: Arc<KvClient>,
    ) -> Self {
        StoreService {
            store_id,
            tx,
            engine,
            request_timeout,
            cluster,
        }
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
        let KvRequest {
            range_id,
            epoch,
            op,
        } = req;
        let ops = match op {
            KvOp::Get { .. } | KvOp::Scan { .. } => return self.read(range_id, epoch, op).await,
            KvOp::AllocIds { count } => {
                let (reply, rx) = oneshot::channel();
                let command = Command::AllocIds { count };
                self.enqueue(StoreMsg::Propose {
                    range_id,
                    epoch,
                    command,
                    reply,
                })?;
                return match self.wait(rx).await? {
                    Applied::Ids { first, count } => Ok(KvReply::Ids { first, count }),
                    other => panic!("id allocation applied as {other:?}"),
                };
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
            KvOp::Scan { start, end, limit } => self.scan(&range, &start, &end, limit),
            _ => unreachable!("only reads come here"),
        }
    }

    /// Splits `range_id` at `split_key`: allocates the new range's ids, then proposes the
    /// split through the range's Raft log. Answers once it is applied here.
    pub async fn split(
        &self,
        range_id: RangeId,
        split_key: Bytes,
    ) -> Result<(RangeDescriptor, RangeDescriptor), KvError> {
        let range = self
            .ask(|reply| StoreMsg::Describe { range_id, reply })
            .await?
            .ok_or(KvError::RangeNotFound { range_id })?;
        let count = range.replicas.len() as u32 + 1;
        let first = self.cluster.alloc_ids(count).await.map_err(|e| match e {
            ClientError::Kv(e) => e,
            other => KvError::ServerBusy {
                reason: format!("id allocation failed: {other}"),
            },
        })?;
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
        let (reply, rx) = oneshot::channel();
        self.enqueue(StoreMsg::Propose {
            range_id,
            epoch: Some(range.epoch),
            command,
            reply,
        })?;
        match self.wait(rx).await? {
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
        }
    }

    fn get(&self, range: &RangeDescriptor, key: &[u8]) -> KvResponse {
        if !range.contains(key) {
            return Err(KvError::KeyNotInRange { range_id: range.id });
        }
        let value = self.engine.get(Cf::Data, key).map_err(storage_err)?;
        Ok(KvReply::Value(value.map(Bytes::from)))
    }

    fn scan(&self, range: &RangeDescriptor, start: &[u8], end: &[u8], limit: u32) -> KvResponse {
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

fn storage_err(e: crate::StorageError) -> KvError {
    warn!(error = %e, "engine read failed");
    KvError::Storage {
        message: e.to_string(),
    }
}

impl Service for StoreService {
    async fn request(&self, frame: Frame) -> Frame {
        let encoded = match frame.kind {
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

    fn message(&self, frame: Frame) {
        match frame.decode::<RaftBatch>(FrameKind::RaftBatch) {
            Ok(batch) => {
                if let Err(e) = self.enqueue(StoreMsg::Raft(batch)) {
                    debug!(error = %e, "dropping raft batch");
                }
            }
            Err(e) => warn!(error = %e, "undecodable raft batch"),
        }
    }
}
