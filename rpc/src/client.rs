//! The KV client used by tools, tests and (later) the gateway: finds a range's leader,
//! follows `NotLeader` hints, and retries what can be retried with bounded backoff.

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::codec::SharedFrame;
use crate::limits::INGEST_PAIRS_MAX;
use crate::messages::pairs_crc32;
use crate::placement::{PlacementReply, PlacementRequest};
use crate::placement_client::PlacementClient;
use crate::range_cache::{CachedRange, RangeCache};
use crate::retry::Next;
pub(crate) use crate::retry::Retry;
use crate::transport::Transport;
use crate::{
    Frame, FrameKind, KvError, KvOp, KvReply, KvRequest, KvResponse, RangeDescriptor, RangeId,
    RpcError, StoreAddr, StoreId, WriteOp,
};

/// The range every cluster starts with: it covers the whole key space.
pub const FIRST_RANGE_ID: RangeId = 1;

mod admin;
pub use admin::admin;

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
    /// Every known store, in the order they were given.
    stores: RwLock<Vec<(StoreId, SocketAddr)>>,
    /// Where ranges are looked up first, when the cluster has placement.
    placement: Option<Arc<PlacementClient>>,
    ranges: Mutex<RangeCache>,
    /// Rotates the store asked first, so lookups spread out.
    next_store: AtomicUsize,
    config: ClientConfig,
}

/// Where one attempt sends a request.
struct Route {
    range: RangeDescriptor,
    addr: SocketAddr,
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
            .map(|s| parse_addr(&s.addr).map(|a| (s.store_id, a)))
            .collect::<Result<Vec<_>, _>>()?;
        if stores.is_empty() {
            return Err(ClientError::BadAddress {
                addr: String::new(),
                reason: "no store addresses given".into(),
            });
        }
        Ok(KvClient {
            transport,
            stores: RwLock::new(stores),
            placement: None,
            ranges: Mutex::new(RangeCache::default()),
            next_store: AtomicUsize::new(0),
            config,
        })
    }

    /// A client that finds ranges and stores through placement.
    pub fn through_placement(
        transport: Arc<Transport>,
        placement: Arc<PlacementClient>,
        config: ClientConfig,
    ) -> Self {
        KvClient {
            transport,
            stores: RwLock::new(Vec::new()),
            placement: Some(placement),
            ranges: Mutex::new(RangeCache::default()),
            next_store: AtomicUsize::new(0),
            config,
        }
    }

    /// Also asks `placement` where ranges are (before asking stores).
    pub fn with_placement(mut self, placement: Arc<PlacementClient>) -> Self {
        self.placement = Some(placement);
        self
    }

    pub fn transport(&self) -> &Arc<Transport> {
        &self.transport
    }

    /// Where ranges are looked up first, when the cluster has placement.
    pub fn placement(&self) -> Option<&Arc<PlacementClient>> {
        self.placement.as_ref()
    }

    fn learn_store(&self, store_id: StoreId, addr: &str) {
        let Ok(addr) = parse_addr(addr) else { return };
        let mut stores = self.stores.write().expect("stores lock");
        match stores.iter_mut().find(|(id, _)| *id == store_id) {
            Some(entry) => entry.1 = addr,
            None => stores.push((store_id, addr)),
        }
    }

    /// The range holding `key` as placement routes it, learning its stores' addresses.
    async fn locate_by_placement(&self, key: &[u8]) -> Option<RangeDescriptor> {
        let placement = self.placement.as_ref()?;
        let req = PlacementRequest::FindRange {
            key: Bytes::copy_from_slice(key),
        };
        match placement.call(&req).await {
            Ok(PlacementReply::Route(Some(route))) if route.range.contains(key) => {
                for s in &route.stores {
                    self.learn_store(s.store_id, &s.addr);
                }
                let leader = route.leader.and_then(|l| self.store_addr(l));
                let mut cache = self.cache();
                cache.insert(route.range.clone());
                // Placement may not have heard of a split this client has seen: then
                // the cache keeps the newer range and the stores are asked instead.
                let taken = cache.find(key).is_some_and(|c| {
                    c.range.id == route.range.id && c.range.epoch == route.range.epoch
                });
                if !taken {
                    return None;
                }
                cache.set_leader(route.range.id, leader);
                Some(route.range)
            }
            Ok(_) => None,
            Err(e) => {
                debug!(error = %e, "placement could not route; asking stores");
                None
            }
        }
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

    /// Sets `key` to `value` (deletes it for `None`) only if it holds `expected` (`None`:
    /// absent) at that moment, atomically; `ClientError::Kv(KvError::CompareFailed)`
    /// otherwise, with the key untouched. A request retried after a lost answer may find
    /// its own earlier attempt applied and fail: a caller that must know reads back.
    pub async fn compare_and_set(
        &self,
        key: impl Into<Bytes>,
        expected: Option<Bytes>,
        value: Option<Bytes>,
    ) -> Result<(), ClientError> {
        self.write(KvOp::CompareAndSet {
            key: key.into(),
            expected,
            value,
        })
        .await
    }

    /// Applies `ops` atomically; all their keys must lie in one range.
    pub async fn batch(&self, ops: Vec<WriteOp>) -> Result<(), ClientError> {
        self.write(KvOp::Batch { ops }).await
    }

    /// Bulk-loads `pairs` (keys strictly ascending), cut at range boundaries as the
    /// client knows them and into pieces of at most `INGEST_PIECE_BYTES`. A piece of
    /// `INGEST_STAGE_BYTES_MIN` or more is staged as an SST file on the store of every
    /// replica of its range and then ingested through one small Raft entry, so its bytes
    /// never enter the Raft log; a smaller one rides in the entry ([`KvOp::Ingest`]).
    /// A piece that fails is cut again from a fresh route and retried (a split or a
    /// replica move may have landed meanwhile); loading the same pairs twice leaves the
    /// same data.
    pub async fn ingest(&self, pairs: &[(Bytes, Bytes)]) -> Result<(), ClientError> {
        const RETRIES: u32 = 5;
        let mut rest = pairs;
        let mut failures = 0;
        while let Some((first, _)) = rest.first() {
            let range = self.known_range(first).await?;
            let (n, bytes) = ingest_piece(&range, rest);
            let piece = &rest[..n];
            let result = if bytes >= INGEST_STAGE_BYTES_MIN {
                self.ingest_staged(&range, piece).await
            } else {
                self.write(KvOp::Ingest {
                    pairs: piece.to_vec(),
                })
                .await
            };
            match result {
                Ok(()) => {
                    rest = &rest[n..];
                    failures = 0;
                }
                Err(e) if failures < RETRIES && !is_refusal(&e) => {
                    debug!(range_id = range.id, error = %e, "ingest piece failed; cutting again");
                    failures += 1;
                    self.cache().remove(range.id);
                    tokio::time::sleep(Duration::from_millis(50 << failures)).await;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Writes one large value as a staged ingest (see [`KvClient::ingest`]), one attempt
    /// against the range as the client knows it: its bytes are written once on each
    /// replica's store (the staged file RocksDB then takes) instead of through the Raft
    /// log, a memtable flush and compactions. For values written once under keys never
    /// reused (object chunks). Fails at once if any replica cannot stage it; the caller
    /// then writes it the ordinary way ([`KvClient::put`]), so a store being down costs a
    /// retry, not availability.
    /// A split or a replica change since the client last looked is learned from the
    /// refusal and staged again, a few times, with backoff: a store may not have
    /// started a range just split off yet (about a second at most in all).
    pub async fn put_staged(&self, key: Bytes, value: Bytes) -> Result<(), ClientError> {
        const ATTEMPTS: u32 = 8;
        let pair = [(key, value)];
        let mut attempt = 1;
        let mut retry = Retry::new(&self.config);
        loop {
            let range = self.known_range(&pair[0].0).await?;
            match self.ingest_staged(&range, &pair).await {
                Err(ClientError::Kv(e)) if attempt < ATTEMPTS && self.learn_moved(&range, &e) => {
                    attempt += 1;
                    if attempt > 2 {
                        retry.wait().await;
                    }
                }
                result => return result,
            }
        }
    }

    /// Updates the cache from a refusal that says `range` is not what the client took
    /// it for (split, merged away, or its replicas changed); whether it was one.
    fn learn_moved(&self, range: &RangeDescriptor, error: &KvError) -> bool {
        let mut cache = self.cache();
        match error {
            KvError::EpochNotMatch { current } => adopt_current(&mut cache, range, current),
            KvError::KeyNotInRange { .. } | KvError::RangeNotFound { .. } => {
                cache.remove(range.id);
                true
            }
            _ => false,
        }
    }

    /// Stages `pairs` (all in `range`) on the store of every replica of `range` at
    /// once, then asks the leader to ingest them ([`KvOp::StageIngest`], then
    /// [`KvOp::IngestStaged`]).
    async fn ingest_staged(
        &self,
        range: &RangeDescriptor,
        pairs: &[(Bytes, Bytes)],
    ) -> Result<(), ClientError> {
        let id: u128 = rand::random();
        self.stage(range, id, pairs).await?;
        let (first_key, last_key) = match (pairs.first(), pairs.last()) {
            (Some(f), Some(l)) => (f.0.clone(), l.0.clone()),
            _ => return Ok(()),
        };
        self.write(KvOp::IngestStaged {
            id,
            crc32: pairs_crc32(pairs),
            first_key,
            last_key,
            stores: range.replicas.iter().map(|r| r.store_id).collect(),
        })
        .await
    }

    /// Stages `pairs` (sorted, all in `range`) as the file `id` on the store of every
    /// replica of `range`, all at once ([`KvOp::StageIngest`]); [`KvOp::IngestStaged`]
    /// then makes them visible.
    pub async fn stage(
        &self,
        range: &RangeDescriptor,
        id: u128,
        pairs: &[(Bytes, Bytes)],
    ) -> Result<(), ClientError> {
        let req = KvRequest {
            range_id: range.id,
            epoch: Some(range.epoch),
            op: KvOp::StageIngest {
                id,
                pairs: pairs.to_vec(),
            },
        };
        let frame = Frame::encode(FrameKind::KvRequest, &req).map_err(ClientError::Rpc)?;
        drop(req);
        // One checksum pass over the pieces for all the replicas, not one each.
        let frame = Arc::new(SharedFrame::new(frame));
        let mut calls = tokio::task::JoinSet::new();
        for r in &range.replicas {
            let addr = self.known_addr(r.store_id)?;
            let (transport, frame) = (self.transport.clone(), frame.clone());
            calls.spawn(async move { call_store(&transport, addr, &frame).await });
        }
        drop(frame);
        while let Some(done) = calls.join_next().await {
            let reply = done.map_err(|e| ClientError::Rejected(format!("staging task: {e}")))?;
            match reply? {
                KvReply::Written => {}
                other => return Err(unexpected(other)),
            }
        }
        Ok(())
    }

    /// The stores holding a replica of the range with `key`, as the client knows it.
    pub async fn replica_stores(&self, key: &[u8]) -> Result<Vec<StoreId>, ClientError> {
        Ok(self
            .known_range(key)
            .await?
            .replicas
            .iter()
            .map(|r| r.store_id)
            .collect())
    }

    /// Reads `key` from the replica on `store_id` alone (no retries, not linearizable:
    /// see [`KvOp::GetReplica`]).
    pub async fn get_on_replica(
        &self,
        key: impl Into<Bytes>,
        store_id: StoreId,
    ) -> Result<Option<Bytes>, ClientError> {
        let key = key.into();
        let range = self.known_range(&key).await?;
        let addr = self.known_addr(store_id)?;
        let req = KvRequest {
            range_id: range.id,
            epoch: None,
            op: KvOp::GetReplica { key },
        };
        let frame = Frame::encode(FrameKind::KvRequest, &req).map_err(ClientError::Rpc)?;
        match call_store(&self.transport, addr, &SharedFrame::new(frame)).await? {
            KvReply::Value(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    /// The address of `store_id`, which must be known.
    fn known_addr(&self, store_id: StoreId) -> Result<SocketAddr, ClientError> {
        self.store_addr(store_id)
            .ok_or_else(|| ClientError::BadAddress {
                addr: format!("store {store_id}"),
                reason: "no known address".into(),
            })
    }

    /// The range holding `key`: cached, or looked up.
    async fn known_range(&self, key: &[u8]) -> Result<RangeDescriptor, ClientError> {
        let cached = self.cache().find(key).map(|c| c.range.clone());
        match cached {
            Some(range) => Ok(range),
            None => self.locate(key).await,
        }
    }

    /// Allocates `count` cluster-unique ids; returns the first.
    pub async fn alloc_ids(&self, count: u32) -> Result<u64, ClientError> {
        match self.request(KvOp::AllocIds { count }).await? {
            KvReply::Ids { first, .. } => Ok(first),
            other => Err(unexpected(other)),
        }
    }

    /// One page of `[start, end)`, at most `limit` pairs. A page stops at a range's end;
    /// `resume_key` then says where to go on.
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
        self.scan_page(op).await
    }

    /// As [`KvClient::scan`], but the pairs carry empty values: for walking the keys of
    /// large values without moving them.
    pub async fn scan_keys(
        &self,
        start: impl Into<Bytes>,
        end: impl Into<Bytes>,
        limit: u32,
    ) -> Result<ScanPage, ClientError> {
        let op = KvOp::ScanKeys {
            start: start.into(),
            end: end.into(),
            limit,
        };
        self.scan_page(op).await
    }

    async fn scan_page(&self, op: KvOp) -> Result<ScanPage, ClientError> {
        match self.request(op).await? {
            KvReply::Scanned { pairs, resume_key } => Ok(ScanPage { pairs, resume_key }),
            other => Err(unexpected(other)),
        }
    }

    /// Every pair in `[start, end)`, paging `page` pairs at a time, across ranges.
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
                Some(k) if end.is_empty() || k < end => next = k,
                _ => return Ok(out),
            }
        }
    }

    async fn write(&self, op: KvOp) -> Result<(), ClientError> {
        match self.request(op).await? {
            KvReply::Written => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Sends `op` to the leader of the range holding its key, retrying what can be retried.
    pub async fn request(&self, op: KvOp) -> Result<KvReply, ClientError> {
        op.validate().map_err(ClientError::Kv)?;
        let key = Bytes::copy_from_slice(op.routing_key());
        let mut retry = Retry::new(&self.config);
        let mut last = String::from("no attempt made");
        let mut op = Some(op);
        while let Some(attempt) = retry.next_attempt() {
            let mut next = Next::Backoff;
            match self.route(&key, attempt).await {
                Ok(route) => {
                    let req_op = op.take().expect("op is put back after every attempt");
                    if let KvOp::IngestStaged { last_key, .. } = &req_op {
                        // The staged file spans two ranges now: the caller stages again.
                        if !route.range.contains(last_key) {
                            return Err(ClientError::Kv(KvError::KeyNotInRange {
                                range_id: route.range.id,
                            }));
                        }
                    }
                    if let KvOp::Batch { ops } = &req_op {
                        if let Some(outside) = ops.iter().find(|o| !route.range.contains(o.key())) {
                            let second =
                                self.locate(outside.key()).await.map(|r| r.id).unwrap_or(0);
                            return Err(ClientError::Kv(KvError::BatchSpansRanges {
                                first: route.range.id,
                                second,
                            }));
                        }
                    }
                    let req = KvRequest {
                        range_id: route.range.id,
                        epoch: Some(route.range.epoch),
                        op: req_op,
                    };
                    let frame =
                        Frame::encode(FrameKind::KvRequest, &req).map_err(ClientError::Rpc)?;
                    op = Some(req.op);
                    match self.transport.call(route.addr, &frame).await {
                        Ok(reply) => match decode_reply(&reply)? {
                            Ok(kv) => {
                                self.cache().set_leader(route.range.id, Some(route.addr));
                                return Ok(kv);
                            }
                            Err(e) if e.is_retryable() => {
                                last = format!("{}: {e}", route.addr);
                                next = self.learn(&route, &e, &key);
                            }
                            Err(e) => return Err(ClientError::Kv(e)),
                        },
                        Err(e) if e.is_unreachable() => {
                            self.cache().set_leader(route.range.id, None);
                            // Having waited out a probe or a timeout, try the next
                            // replica (the failed one is now suspect) at once.
                            if matches!(e, RpcError::Unresponsive { .. } | RpcError::Timeout { .. })
                            {
                                next = Next::Now;
                            }
                            last = e.to_string();
                        }
                        Err(e) => return Err(ClientError::Rpc(e)),
                    }
                }
                Err(e) => last = e.to_string(),
            }
            debug!(attempt, %last, "retrying KV request");
            if retry.expired() {
                break;
            }
            retry.wait_for(next).await;
        }
        Err(retry.unavailable(last))
    }

    /// Picks the range and the store to try for `key` on this attempt.
    async fn route(&self, key: &[u8], attempt: u32) -> Result<Route, ClientError> {
        let cached = self.cache().find(key).cloned();
        let cached = match cached {
            Some(c) => c,
            None => CachedRange {
                range: self.locate(key).await?,
                leader: None,
            },
        };
        if let Some(addr) = cached.leader.filter(|a| !self.transport.suspected(*a)) {
            return Ok(Route {
                range: cached.range,
                addr,
            });
        }
        // No known leader: try the range's replicas in turn.
        let addrs: Vec<SocketAddr> = cached
            .range
            .replicas
            .iter()
            .filter_map(|r| self.store_addr(r.store_id))
            .collect();
        if addrs.is_empty() {
            return Err(ClientError::Unavailable {
                attempts: attempt,
                elapsed_ms: 0,
                last: format!(
                    "no known address for any replica of range {}",
                    cached.range.id
                ),
            });
        }
        // In turn, but stores that just failed last: a dead one would cost a timeout.
        let n = addrs.len();
        let addr = (0..n)
            .map(|i| addrs[(attempt as usize + i) % n])
            .find(|a| !self.transport.suspected(*a))
            .unwrap_or(addrs[attempt as usize % n]);
        Ok(Route {
            range: cached.range,
            addr,
        })
    }

    /// Updates the cache from a retryable error; says how to go on.
    fn learn(&self, route: &Route, error: &KvError, key: &[u8]) -> Next {
        let mut cache = self.cache();
        match error {
            KvError::NotLeader { leader, .. } => {
                if let Some(h) = leader {
                    self.learn_store(h.store_id, &h.addr);
                }
                // A replica that has not yet noticed its leader died still names it.
                let hint = leader
                    .as_ref()
                    .and_then(|h| parse_addr(&h.addr).ok())
                    .filter(|a| *a != route.addr && !self.transport.suspected(*a));
                cache.set_leader(route.range.id, hint);
                if hint.is_some() {
                    Next::Now
                } else {
                    Next::Poll
                }
            }
            KvError::EpochNotMatch { current } => {
                if !adopt_current(&mut cache, &route.range, current) {
                    cache.set_leader(route.range.id, None);
                    return Next::Backoff;
                }
                // Go at once only if the answer says where the key is now.
                if current.iter().any(|r| r.contains(key)) {
                    Next::Now
                } else {
                    Next::Backoff
                }
            }
            KvError::KeyNotInRange { .. } | KvError::RangeNotFound { .. } => {
                cache.remove(route.range.id);
                Next::Backoff
            }
            _ => {
                cache.set_leader(route.range.id, None);
                Next::Backoff
            }
        }
    }

    fn store_addr(&self, store_id: StoreId) -> Option<SocketAddr> {
        self.stores
            .read()
            .expect("stores lock")
            .iter()
            .find(|(id, _)| *id == store_id)
            .map(|(_, a)| *a)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, RangeCache> {
        self.ranges.lock().expect("range cache lock")
    }
}

/// Sends one KV request frame to the store at `addr` alone (no routing, no retries).
async fn call_store(
    transport: &Transport,
    addr: SocketAddr,
    frame: &SharedFrame,
) -> Result<KvReply, ClientError> {
    let reply = transport
        .call_shared(addr, frame)
        .await
        .map_err(ClientError::Rpc)?;
    decode_reply(&reply)?.map_err(ClientError::Kv)
}

/// Replaces `range` in `cache` with the `current` ranges a refusal named; false (and
/// nothing changed) if they are older than `range`: a lagging replica's descriptor
/// must not replace a newer one.
fn adopt_current(
    cache: &mut RangeCache,
    range: &RangeDescriptor,
    current: &[RangeDescriptor],
) -> bool {
    if current
        .iter()
        .any(|r| r.id == range.id && range.epoch.is_newer_than(&r.epoch))
    {
        return false;
    }
    cache.remove(range.id);
    for r in current {
        cache.insert(r.clone());
    }
    true
}

/// Pieces of a bulk load are at most this large: a staged SST file each.
const INGEST_PIECE_BYTES: usize = 16 << 20;
/// Pieces smaller than this ride in their Raft entry: staging three files and a second
/// round trip cost more than replicating a few hundred KiB through the log.
pub const INGEST_STAGE_BYTES_MIN: usize = 256 << 10;

/// How many of `pairs` (sorted, the first in `range`) form the next piece, and their
/// bytes: those inside `range`, up to the piece bounds (at least one).
fn ingest_piece(range: &RangeDescriptor, pairs: &[(Bytes, Bytes)]) -> (usize, usize) {
    let in_range = if range.end_key.is_empty() {
        pairs.len()
    } else {
        pairs.partition_point(|(k, _)| *k < range.end_key)
    };
    let (mut n, mut bytes) = (0, 0);
    while n < in_range.max(1) && n < INGEST_PAIRS_MAX {
        let (k, v) = &pairs[n];
        if n > 0 && bytes + k.len() + v.len() > INGEST_PIECE_BYTES {
            break;
        }
        bytes += k.len() + v.len();
        n += 1;
    }
    (n, bytes)
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

/// Errors that no retry can fix: the request itself is refused.
fn is_refusal(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Kv(
            KvError::InvalidIngest { .. }
                | KvError::ReservedKey
                | KvError::EmptyKey
                | KvError::KeyTooLarge { .. }
                | KvError::ValueTooLarge { .. }
                | KvError::BatchTooLarge { .. }
                | KvError::NoSpace { .. }
        )
    )
}
