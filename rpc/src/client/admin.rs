//! A KV client's admin side: where a range is, splits and consistency checks through
//! a range's leader, and single admin requests to one store.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::{ClientError, KvClient};
use crate::retry::{Next, Retry};
use crate::transport::Transport;
use crate::{
    AdminReply, AdminRequest, AdminResponse, CheckOutcome, Frame, FrameKind, RangeDescriptor,
};

impl KvClient {
    /// The range holding `key`, as a store reports it (and the cache now holds).
    pub async fn locate(&self, key: &[u8]) -> Result<RangeDescriptor, ClientError> {
        if let Some(range) = self.locate_by_placement(key).await {
            return Ok(range);
        }
        let mut last = String::from("no store answered");
        let stores = self.stores.read().expect("stores lock").clone();
        for _ in 0..stores.len() {
            let i = self.next_store.fetch_add(1, Ordering::Relaxed) % stores.len();
            let (_, addr) = stores[i];
            let req = AdminRequest::FindRange {
                key: Bytes::copy_from_slice(key),
            };
            match admin(&self.transport, addr, &req).await {
                Ok(AdminReply::Range(Some(range))) if range.contains(key) => {
                    self.cache().insert(range.clone());
                    return Ok(range);
                }
                Ok(_) => last = format!("{addr} holds no range for the key"),
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        Err(ClientError::Unavailable {
            attempts: stores.len() as u32,
            elapsed_ms: 0,
            last,
        })
    }

    /// Splits the range holding `split_key` at it; returns the left and right ranges.
    pub async fn split(
        &self,
        split_key: impl Into<Bytes>,
    ) -> Result<(RangeDescriptor, RangeDescriptor), ClientError> {
        let split_key = split_key.into();
        self.with_leader(&split_key, |range| AdminRequest::Split {
            range_id: range.id,
            split_key: split_key.clone(),
        })
        .await
        .and_then(|reply| match reply {
            AdminReply::Split { left, right } => {
                let mut cache = self.cache();
                cache.insert(left.clone());
                cache.insert(right.clone());
                // The left keeps the range's id and leader, whose store campaigns for the
                // right at once: the right's leader is most likely there too.
                let leader = cache.find(&left.start_key).and_then(|c| c.leader);
                cache.set_leader(right.id, leader);
                Ok((left, right))
            }
            other => Err(ClientError::Rejected(format!("unexpected reply {other:?}"))),
        })
    }

    /// Merges the range holding `key` with its right neighbour, whose replicas must be
    /// on the same stores: freezes the neighbour through its leader, then has this
    /// range's leader take it over (once every store holds it frozen on disk). Asked
    /// again after an interruption, it resumes. Returns the merged range. While frozen
    /// the neighbour's keys answer `ServerBusy`, which clients retry.
    pub async fn merge(&self, key: &[u8]) -> Result<RangeDescriptor, ClientError> {
        let left = self.current_range(key).await?;
        if left.end_key.is_empty() {
            return Err(ClientError::Rejected(format!(
                "range {} is the last range: it has no right neighbour to merge with",
                left.id
            )));
        }
        // Named by id (not by the route): a stale cache must not aim a step at another range.
        let right = self.current_range(&left.end_key).await?;
        let frozen = match self
            .with_leader(&right.start_key, |_| AdminRequest::PrepareMerge {
                range_id: right.id,
                target: left.clone(),
            })
            .await?
        {
            AdminReply::Changed(range) => range,
            other => return Err(ClientError::Rejected(format!("unexpected reply {other:?}"))),
        };
        let committed = self
            .with_leader(&left.start_key, |_| AdminRequest::CommitMerge {
                range_id: left.id,
                source: frozen.clone(),
            })
            .await;
        match committed {
            Ok(AdminReply::Changed(merged)) => {
                self.cache().insert(merged.clone());
                Ok(merged)
            }
            Ok(other) => Err(ClientError::Rejected(format!("unexpected reply {other:?}"))),
            // An answer lost after the commit applied: the range says whether it did.
            Err(e) => match self.current_range(key).await {
                Ok(now) if now.id == left.id && now.end_key == frozen.end_key => Ok(now),
                _ => Err(e),
            },
        }
    }

    /// The range holding `key` as its leader describes it now (placement's map may lag).
    async fn current_range(&self, key: &[u8]) -> Result<RangeDescriptor, ClientError> {
        let reply = self
            .with_leader(key, |_| AdminRequest::FindRange {
                key: Bytes::copy_from_slice(key),
            })
            .await?;
        match reply {
            AdminReply::Range(Some(range)) if range.contains(key) => {
                self.cache().insert(range.clone());
                Ok(range)
            }
            other => Err(ClientError::Rejected(format!(
                "the leader holds no range for the key ({other:?})"
            ))),
        }
    }

    /// Runs a consistency check of the range holding `key` (see
    /// [`AdminRequest::CheckConsistency`]) and returns its outcome.
    pub async fn check_consistency(&self, key: &[u8]) -> Result<CheckOutcome, ClientError> {
        let reply = self
            .with_leader(key, |range| AdminRequest::CheckConsistency {
                range_id: range.id,
            })
            .await?;
        match reply {
            AdminReply::Checked(outcome) => Ok(outcome),
            other => Err(ClientError::Rejected(format!("unexpected reply {other:?}"))),
        }
    }

    /// Sends an admin request built for the range holding `key` to that range's leader.
    async fn with_leader(
        &self,
        key: &[u8],
        build: impl Fn(&RangeDescriptor) -> AdminRequest,
    ) -> Result<AdminReply, ClientError> {
        let mut retry = Retry::new(&self.config);
        let mut last = String::new();
        while let Some(attempt) = retry.next_attempt() {
            let mut next = Next::Backoff;
            match self.route(key, attempt).await {
                Ok(route) => match admin(&self.transport, route.addr, &build(&route.range)).await {
                    Ok(reply) => {
                        self.cache().set_leader(route.range.id, Some(route.addr));
                        return Ok(reply);
                    }
                    Err(ClientError::Kv(e)) if e.is_retryable() => {
                        last = e.to_string();
                        next = self.learn(&route, &e, key);
                    }
                    Err(ClientError::Rpc(e)) if e.is_unreachable() => {
                        last = e.to_string();
                        self.cache().set_leader(route.range.id, None);
                    }
                    Err(e) => return Err(e),
                },
                Err(e) => last = e.to_string(),
            }
            if retry.expired() {
                break;
            }
            retry.wait_for(next).await;
        }
        Err(retry.unavailable(last))
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
