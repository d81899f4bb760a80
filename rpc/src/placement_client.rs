//! Talks to the placement driver: finds its leader from any placement address, follows
//! redirects, and retries with bounded backoff while placement elects a leader.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use crate::client::{parse_addr, ClientConfig, ClientError, Retry};
use crate::placement::{PlacementError, PlacementReply, PlacementRequest, PlacementResponse};
use crate::transport::Transport;
use crate::{Frame, FrameKind};

/// Why a placement call failed for good.
#[derive(Debug, thiserror::Error)]
pub enum PlacementCallError {
    #[error(transparent)]
    Placement(PlacementError),
    #[error(
        "placement unavailable after {attempts} attempts in {elapsed_ms} ms; last error: {last}"
    )]
    Unavailable {
        attempts: u32,
        elapsed_ms: u64,
        last: String,
    },
    #[error("placement rejected the request: {0}")]
    Rejected(String),
}

/// A client of the placement group.
pub struct PlacementClient {
    transport: Arc<Transport>,
    addrs: Vec<SocketAddr>,
    /// The node that last answered as leader.
    leader: Mutex<Option<SocketAddr>>,
    config: ClientConfig,
}

impl PlacementClient {
    /// A client that may ask any of `addrs` (each `host:port`) first.
    pub fn new(
        transport: Arc<Transport>,
        addrs: &[String],
        config: ClientConfig,
    ) -> Result<Self, ClientError> {
        let addrs = addrs
            .iter()
            .map(|a| parse_addr(a))
            .collect::<Result<Vec<_>, _>>()?;
        if addrs.is_empty() {
            return Err(ClientError::BadAddress {
                addr: String::new(),
                reason: "no placement addresses given".into(),
            });
        }
        Ok(PlacementClient {
            transport,
            addrs,
            leader: Mutex::new(None),
            config,
        })
    }

    pub fn transport(&self) -> &Arc<Transport> {
        &self.transport
    }

    /// Sends `req` to the placement leader, following redirects and retrying what can
    /// be retried until the client's deadline.
    pub async fn call(&self, req: &PlacementRequest) -> Result<PlacementReply, PlacementCallError> {
        let frame = Frame::encode(FrameKind::PlacementRequest, req)
            .map_err(|e| PlacementCallError::Rejected(e.to_string()))?;
        let mut retry = Retry::new(&self.config);
        let mut last = String::from("no attempt made");
        let mut next = 0usize;
        for attempt in 1..=self.config.attempts_max {
            let addr = self.leader().unwrap_or_else(|| {
                next += 1;
                self.addrs[next % self.addrs.len()]
            });
            let mut wait = true;
            match self.transport.call(addr, &frame).await {
                Ok(reply) => match decode(&reply) {
                    Ok(Ok(reply)) => {
                        *self.leader.lock().expect("leader lock") = Some(addr);
                        return Ok(reply);
                    }
                    Ok(Err(PlacementError::NotLeader { leader })) => {
                        let hint = leader
                            .and_then(|a| parse_addr(&a).ok())
                            .filter(|a| *a != addr);
                        wait = hint.is_none();
                        *self.leader.lock().expect("leader lock") = hint;
                        last = format!("{addr} is not the placement leader");
                    }
                    Ok(Err(e)) if e.is_retryable() => {
                        last = e.to_string();
                        self.forget_leader();
                    }
                    Ok(Err(e)) => return Err(PlacementCallError::Placement(e)),
                    Err(e) => return Err(e),
                },
                Err(e) => {
                    last = e.to_string();
                    self.forget_leader();
                    wait = attempt % self.addrs.len() as u32 == 0;
                }
            }
            if retry.expired() {
                return Err(PlacementCallError::Unavailable {
                    attempts: attempt,
                    elapsed_ms: retry.elapsed_ms(),
                    last,
                });
            }
            if wait {
                retry.wait().await;
            }
        }
        Err(PlacementCallError::Unavailable {
            attempts: self.config.attempts_max,
            elapsed_ms: retry.elapsed_ms(),
            last,
        })
    }

    fn leader(&self) -> Option<SocketAddr> {
        *self.leader.lock().expect("leader lock")
    }

    fn forget_leader(&self) {
        *self.leader.lock().expect("leader lock") = None;
    }
}

fn decode(frame: &Frame) -> Result<PlacementResponse, PlacementCallError> {
    if frame.kind == FrameKind::Rejected {
        let why: String = frame
            .decode(FrameKind::Rejected)
            .map_err(|e| PlacementCallError::Rejected(e.to_string()))?;
        return Err(PlacementCallError::Rejected(why));
    }
    frame
        .decode(FrameKind::PlacementResponse)
        .map_err(|e| PlacementCallError::Rejected(e.to_string()))
}
