//! The KV client used by tools, tests and (later) the gateway: finds a range's leader,
//! follows `NotLeader` hints, and retries what can be retried with bounded backoff.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::transport::Transport;
use crate::{
    AdminReply, AdminRequest, AdminResponse, Frame, FrameKind, KvError, KvOp, KvReply, KvRequest,
    KvResponse, RangeId, RpcError, StoreAddr, WriteOp,
};

/// The range every cluster starts with: it covers the whole key space.
pub const FIRST_RANGE_ID: RangeId = 1;

/// How hard a client tries before giving up.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct ClientConfig {
    /// Most attempts for one request, the first included.
    pub attempts_max: u32,
    /// First backoff after a retryable failure; doubles up to `backoff-max-ms`.
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// A request gives up after this long, whatever attempts remain.
    pub deadline_ms: u64,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            attempts_max: 40,
            backoff_initial_ms: 10,
            backoff_max_ms: 500,
            deadline_ms: 20_000,
        }
    }
}

/// Why a request failed for good.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Kv(KvError),
    #[error("no store could serve the request after {attempts} attempts in {elapsed_ms} ms; last error: {last}")]
    Unavailable {
        attempts: u32,
        elapsed_ms: u64,
        last: String,
    },
    #[error("store rejected the request: {0}")]
    Rejected(String),
    #[error("bad store address {addr:?}: {reason}")]
    BadAddress { addr: String, reason: String },
    #[error(transparent)]
    Rpc(RpcError),
}

/// One page of a scan.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanPage {
    pub pairs: Vec<(Bytes, Bytes)>,
    pub resume_key: Option<Bytes>,
}

/// A client of a cluster's KV service.
pub struct KvClient {
    transport: Arc<Transport>,
    stores: Vec<SocketAddr>,
    leaders: Mutex<HashMap<RangeId, SocketAddr>>,
    config: ClientConfig,
}

impl KvClient {
    /// A client that knows the cluster through the given store addresses.
    pub fn new(
        transport: Arc<Transport>,
        stores: &[StoreAddr],
        config: ClientConfig,
    ) -> Result<Self, ClientError> {
        let stores = stores
            .iter()
            .map(|s| parse_addr(&s.addr))
            .collect::<Result<Vec<_>, _>>()?;
        if stores.is_empty() {
            return Err(ClientError::BadAddress {
                addr: String::new(),
                reason: "no store addresses given".into(),
            });
        }
        Ok(KvClient {
            transport,
            stores,
            leaders: Mutex::new(HashMap::new()),
            config,
        })
    }

    pub async fn get(&self, key: impl Into<Bytes>) -> Result<Option<Bytes>, ClientError> {
        match self.request(KvOp::Get { key: key.into() }).await? {
            KvReply::Value(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    pub async fn put(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
    ) -> Result<(), ClientError> {
        let op = KvOp::Put {
            key: key.into(),
            value: value.into(),
        };
        self.write(op).await
    }

    pub async fn delete(&self, key: impl Into<Bytes>) -> Result<(), ClientError> {
        self.write(KvOp::Delete { key: key.into() }).await
    }

    pub async fn batch(&self, ops: Vec<WriteOp>) -> Result<(), ClientError> {
        self.write(KvOp::Batch { ops }).await
    }

    /// One page of `[start, end)`, at most `limit` pairs.
    pub async fn scan(
        &self,
        start: impl Into<Bytes>,
        end: impl Into<Bytes>,
        limit: u32,
    ) -> Result<ScanPage, ClientError> {
        let op = KvOp::Scan {
            start: start.into(),
            end: end.into(),
            limit,
        };
        match self.request(op).await? {
            KvReply::Scanned { pairs, resume_key } => Ok(ScanPage { pairs, resume_key }),
            other => Err(unexpected(other)),
        }
    }

    /// Every pair in `[start, end)`, paging `page` pairs at a time.
    pub async fn scan_all(
        &self,
        start: impl Into<Bytes>,
        end: impl Into<Bytes>,
        page: u32,
    ) -> Result<Vec<(Bytes, Bytes)>, ClientError> {
        let end = end.into();
        let mut next = start.into();
        let mut out = Vec::new();
        loop {
            let p = self.scan(next, end.clone(), page).await?;
            out.extend(p.pairs);
            match p.resume_key {
                Some(k) => next = k,
                None => return Ok(out),
            }
        }
    }

    async fn write(&self, op: KvOp) -> Result<(), ClientError> {
        match self.request(op).await? {
            KvReply::Written => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Sends `op` to the leader of the first range, retrying what can be retried.
    pub async fn request(&self, op: KvOp) -> Result<KvReply, ClientError> {
        op.validate().map_err(ClientError::Kv)?;
        let range_id = FIRST_RANGE_ID;
        let frame = Frame::encode(
            FrameKind::KvRequest,
            &KvRequest {
                range_id,
                epoch: None,
                op,
            },
        )
        .map_err(ClientError::Rpc)?;
        let started = Instant::now();
        let deadline = Duration::from_millis(self.config.deadline_ms);
        let mut backoff = Duration::from_millis(self.config.backoff_initial_ms);
        let mut next_store = 0usize;
        let mut last = String::from("no attempt made");
        for attempt in 1..=self.config.attempts_max {
            let target = self.leader_of(range_id).unwrap_or_else(|| {
                next_store += 1;
                self.stores[next_store % self.stores.len()]
            });
            let mut wait = true;
            match self.transport.call(target, &frame).await {
                Ok(reply) => match decode_reply(&reply)? {
                    Ok(kv) => {
                        self.set_leader(range_id, Some(target));
                        return Ok(kv);
                    }
                    Err(KvError::NotLeader { leader, .. }) => {
                        let hint = leader
                            .and_then(|h| parse_addr(&h.addr).ok())
                            .filter(|a| *a != target);
                        // A fresh hint is worth following at once; otherwise back off.
                        wait = hint.is_none();
                        self.set_leader(range_id, hint);
                        last = format!("{target} is not the leader");
                    }
                    Err(e) if e.is_retryable() => {
                        self.set_leader(range_id, None);
                        last = format!("{target}: {e}");
                    }
                    Err(e) => return Err(ClientError::Kv(e)),
                },
                Err(e) if e.is_unreachable() => {
                    self.set_leader(range_id, None);
                    last = format!("{e}");
                }
                Err(e) => return Err(ClientError::Rpc(e)),
            }
            debug!(attempt, %last, "retrying KV request");
            if started.elapsed() >= deadline {
                return Err(ClientError::Unavailable {
                    attempts: attempt,
                    elapsed_ms: started.elapsed().as_millis() as u64,
                    last,
                });
            }
            if wait {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(self.config.backoff_max_ms));
            }
        }
        Err(ClientError::Unavailable {
            attempts: self.config.attempts_max,
            elapsed_ms: started.elapsed().as_millis() as u64,
            last,
        })
    }

    fn leader_of(&self, range_id: RangeId) -> Option<SocketAddr> {
        self.leaders
            .lock()
            .expect("leaders lock")
            .get(&range_id)
            .copied()
    }

    fn set_leader(&self, range_id: RangeId, addr: Option<SocketAddr>) {
        let mut leaders = self.leaders.lock().expect("leaders lock");
        match addr {
            Some(a) => leaders.insert(range_id, a),
            None => leaders.remove(&range_id),
        };
    }
}

/// Sends one admin request to the store at `addr` (no retries: admin targets one store).
pub async fn admin(
    transport: &Transport,
    addr: SocketAddr,
    req: &AdminRequest,
) -> Result<AdminReply, ClientError> {
    let frame = Frame::encode(FrameKind::AdminRequest, req).map_err(ClientError::Rpc)?;
    let reply = transport
        .call(addr, &frame)
        .await
        .map_err(ClientError::Rpc)?;
    if reply.kind == FrameKind::Rejected {
        let why: String = reply
            .decode(FrameKind::Rejected)
            .map_err(ClientError::Rpc)?;
        return Err(ClientError::Rejected(why));
    }
    let response: AdminResponse = reply
        .decode(FrameKind::AdminResponse)
        .map_err(ClientError::Rpc)?;
    response.map_err(ClientError::Kv)
}

fn decode_reply(frame: &Frame) -> Result<KvResponse, ClientError> {
    if frame.kind == FrameKind::Rejected {
        let why: String = frame
            .decode(FrameKind::Rejected)
            .map_err(ClientError::Rpc)?;
        return Err(ClientError::Rejected(why));
    }
    frame
        .decode(FrameKind::KvResponse)
        .map_err(ClientError::Rpc)
}

fn unexpected(reply: KvReply) -> ClientError {
    ClientError::Rejected(format!("unexpected reply {reply:?}"))
}

/// Parses `host:port`, resolving names synchronously (config-time only).
pub fn parse_addr(addr: &str) -> Result<SocketAddr, ClientError> {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()
        .map_err(|e| ClientError::BadAddress {
            addr: addr.into(),
            reason: e.to_string(),
        })?
        .next()
        .ok_or_else(|| ClientError::BadAddress {
            addr: addr.into(),
            reason: "resolves to no address".into(),
        })
}
