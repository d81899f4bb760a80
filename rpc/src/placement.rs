//! What stores, clients and operators say to the placement driver, and what it answers.
//! Plain serde types riding in `PlacementRequest` / `PlacementResponse` frames.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{Epoch, RangeDescriptor, RangeId, ReplicaId, StoreAddr, StoreId};

/// Names one cluster; a store that belongs to another cluster is refused.
pub type ClusterId = u64;

/// Labels a store carries, such as `zone` and `host`.
pub type Labels = BTreeMap<String, String>;

/// Most ranges one route scan returns.
pub const ROUTE_SCAN_LIMIT_MAX: u32 = 10_000;

/// A request to the placement leader.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PlacementRequest {
    /// A store announces itself. `store_id` 0 asks for a new id; `cluster_id` `None`
    /// means the store holds no data yet and joins whatever cluster this is.
    Register {
        cluster_id: Option<ClusterId>,
        store_id: StoreId,
        addr: String,
        labels: Labels,
    },
    /// A store's periodic report; the answer carries work for the ranges it leads.
    Heartbeat(StoreHeartbeat),
    /// `count` ids never handed out before (range, replica and store ids share them).
    AllocIds { count: u32 },
    /// The range holding `key`, with its leader and the addresses of its stores.
    FindRange { key: Bytes },
    /// Up to `limit` ranges in key order, starting with the one holding `start_key`.
    ScanRanges { start_key: Bytes, limit: u32 },
    /// Every store with its state and load.
    Stores,
    /// Operators in flight.
    Operators,
    /// Who leads placement and whether scheduling runs.
    Status,
    /// Split the range at `split_key`, or (`None`) at a key that halves its data.
    Split {
        range_id: RangeId,
        split_key: Option<Bytes>,
    },
    /// Merge the range with its right neighbour, which it takes over (their replicas
    /// must be on the same stores).
    Merge { range_id: RangeId },
    /// Move the range's replica from one store to another.
    MoveReplica {
        range_id: RangeId,
        from_store: StoreId,
        to_store: StoreId,
    },
    TransferLeader {
        range_id: RangeId,
        to_store: StoreId,
    },
    /// Mark a store for decommission (`drain: true`) or take it back.
    Drain { store_id: StoreId, drain: bool },
    /// Pause or resume the automatic schedulers (operators asked for by hand still run).
    SetScheduling { paused: bool },
}

/// What a store reports every heartbeat interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreHeartbeat {
    pub cluster_id: ClusterId,
    pub store_id: StoreId,
    pub addr: String,
    pub labels: Labels,
    /// Size of the store's file system; 0 when unknown.
    pub capacity_bytes: u64,
    /// Free space on it.
    pub available_bytes: u64,
    /// Bytes of range data the store holds.
    pub used_bytes: u64,
    pub range_count: u32,
    pub leader_count: u32,
    /// Reports of ranges this store leads: of every one when `full`, otherwise of those
    /// whose report changed (or that saw requests) since the last heartbeat placement
    /// answered. Placement keeps what it last heard of the others.
    pub ranges: Vec<RangeReport>,
    #[serde(default)]
    pub full: bool,
    /// Replicas on this store that have heard from no leader for a while (at most
    /// `LEADERLESS_REPORTED_MAX`): placement names those removed from their range.
    #[serde(default)]
    pub leaderless: Vec<LeaderlessReplica>,
    /// The store has less free space than its reserve: it refuses new data it would
    /// lead; placement moves its leaders and replicas away and places nothing there.
    #[serde(default)]
    pub low_space: bool,
}

/// Most leaderless replicas one heartbeat reports; the rest wait for later ones.
pub const LEADERLESS_REPORTED_MAX: usize = 256;

/// A replica that has heard from no leader for a while: partitioned away, or removed
/// from its range while its store was down (nobody then told the store to drop it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderlessReplica {
    pub range_id: RangeId,
    pub replica_id: ReplicaId,
    /// The membership version the replica knows.
    pub conf_ver: u64,
    /// The replica's key span and range version (none while it has no data): a replica
    /// of a range merged away that missed the news (its store was down, or the replica
    /// had been removed) is gone once placement knows a newer range over its keys.
    #[serde(default)]
    pub span: Option<KeySpan>,
}

/// A replica's key span `[start_key, end_key)` and range version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySpan {
    pub start_key: Bytes,
    pub end_key: Bytes,
    pub version: u64,
}

/// A replica placement knows was removed from its range: the range's membership at
/// `conf_ver` (newer than the replica's) does not include its store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedReplica {
    pub range_id: RangeId,
    /// The replica the store reported; a newer one there is not this one.
    pub replica_id: ReplicaId,
    pub conf_ver: u64,
}

/// A range leader's view of its range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RangeReport {
    pub range: RangeDescriptor,
    pub term: u64,
    pub size_bytes: u64,
    /// Keys as the leader last counted them (none: not counted yet).
    #[serde(default)]
    pub key_count: Option<u64>,
    /// Requests and bytes since the previous report, and that interval's length.
    pub write_ops: u64,
    pub write_bytes: u64,
    pub read_ops: u64,
    pub read_bytes: u64,
    pub interval_ms: u64,
    /// Replicas still learners (added, not yet caught up and promoted to voters).
    #[serde(default)]
    pub learners: Vec<ReplicaId>,
    /// Learners the leader has heard nothing from for a while (see `RangeStatus`):
    /// placement gives up an add waiting on one.
    #[serde(default)]
    pub silent_learners: Vec<ReplicaId>,
    /// Replicas whose data the last consistency check found differs from the
    /// majority's: placement replaces them.
    #[serde(default)]
    pub diverged: Vec<ReplicaId>,
}

impl RangeReport {
    /// A report of `range` at `term` with no size, no count and no requests over a
    /// second (tests and simulations set what they need on top).
    pub fn quiet(range: RangeDescriptor, term: u64) -> RangeReport {
        RangeReport {
            range,
            term,
            size_bytes: 0,
            key_count: None,
            write_ops: 0,
            write_bytes: 0,
            read_ops: 0,
            read_bytes: 0,
            interval_ms: 1000,
            learners: Vec::new(),
            silent_learners: Vec::new(),
            diverged: Vec::new(),
        }
    }
}

/// One step placement asks a range's leader to take.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RangeStep {
    AddReplica {
        range_id: RangeId,
        store_id: StoreId,
        addr: String,
    },
    RemoveReplica {
        range_id: RangeId,
        store_id: StoreId,
    },
    TransferLeader {
        range_id: RangeId,
        to_store: StoreId,
    },
    Split {
        range_id: RangeId,
        split_key: Option<Bytes>,
    },
    /// Take over the right neighbour `source` (on the same stores), after which the
    /// range ends at `end_key` (see `AdminRequest::PrepareMerge`).
    Merge {
        range_id: RangeId,
        source: RangeId,
        end_key: Bytes,
    },
}

impl RangeStep {
    pub fn range_id(&self) -> RangeId {
        match self {
            RangeStep::AddReplica { range_id, .. }
            | RangeStep::RemoveReplica { range_id, .. }
            | RangeStep::TransferLeader { range_id, .. }
            | RangeStep::Split { range_id, .. }
            | RangeStep::Merge { range_id, .. } => *range_id,
        }
    }
}

/// A range as placement routes to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub range: RangeDescriptor,
    pub leader: Option<StoreId>,
    /// Addresses of the stores holding its replicas (those placement knows).
    pub stores: Vec<StoreAddr>,
    pub size_bytes: u64,
    #[serde(default)]
    pub key_count: Option<u64>,
    /// Smoothed requests per second over recent reports.
    pub ops_per_sec: f64,
    /// Replicas the leader last reported as learners (catching up, not yet voting).
    #[serde(default)]
    pub learners: Vec<ReplicaId>,
    /// Of those, the ones the leader has not heard from for a while.
    #[serde(default)]
    pub silent_learners: Vec<ReplicaId>,
    /// Replicas a consistency check found diverged (being replaced).
    #[serde(default)]
    pub diverged: Vec<ReplicaId>,
}

/// How placement sees a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreState {
    Up,
    /// No heartbeat for longer than the down time.
    Down,
    /// Marked for decommission; its replicas move away.
    Draining,
}

impl StoreState {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreState::Up => "up",
            StoreState::Down => "down",
            StoreState::Draining => "draining",
        }
    }
}

/// One store as `Stores` reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreInfo {
    pub id: StoreId,
    pub addr: String,
    pub state: StoreState,
    pub labels: Labels,
    pub capacity_bytes: u64,
    pub available_bytes: u64,
    pub used_bytes: u64,
    /// Less free space than the store's reserve (see `StoreHeartbeat::low_space`).
    pub low_space: bool,
    /// Replicas and leaders as placement counts them from range reports.
    pub ranges: u32,
    pub leaders: u32,
    pub last_heartbeat_ms_ago: Option<u64>,
}

/// An operator in flight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperatorInfo {
    pub range_id: RangeId,
    /// Why it exists (`repair`, `balance-replicas`, `admin`...).
    pub reason: String,
    /// Steps still to take, the current one first.
    pub steps: Vec<RangeStep>,
    pub age_ms: u64,
}

/// Placement's own state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlacementStatus {
    pub cluster_id: ClusterId,
    pub leader_node: u64,
    pub scheduling_paused: bool,
    pub stores: u32,
    pub ranges: u32,
    pub under_replicated_ranges: u32,
    pub operators: u32,
}

/// Placement's answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PlacementReply {
    Registered {
        cluster_id: ClusterId,
        store_id: StoreId,
    },
    /// Steps for ranges the heartbeating store leads, ranges whose replicas on it
    /// should wake up because their leader's store is down, and replicas it reported
    /// leaderless that were removed from their ranges (to destroy). `want_full`: the
    /// next heartbeat must report every range the store leads (placement has not had a
    /// full report from it since this node became leader).
    Heartbeat {
        steps: Vec<RangeStep>,
        #[serde(default)]
        wake: Vec<RangeId>,
        #[serde(default)]
        removed: Vec<RemovedReplica>,
        #[serde(default)]
        want_full: bool,
        /// Up stores low on disk space: a leader refuses new data for a range most of
        /// whose replicas are on them.
        #[serde(default)]
        low_space_stores: Vec<StoreId>,
    },
    Ids {
        first: u64,
        count: u32,
    },
    Route(Option<Route>),
    Routes(Vec<Route>),
    Stores(Vec<StoreInfo>),
    Operators(Vec<OperatorInfo>),
    Status(PlacementStatus),
    Done,
}

/// Why placement could not answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum PlacementError {
    #[error("this placement node is not the leader (leader: {leader:?}); retry there")]
    NotLeader { leader: Option<String> },
    #[error("store belongs to cluster {got:#x}, this is cluster {expected:#x}")]
    WrongCluster { expected: ClusterId, got: ClusterId },
    #[error("store {store_id} is not registered")]
    UnknownStore { store_id: StoreId },
    #[error("range {range_id} is unknown to placement")]
    UnknownRange { range_id: RangeId },
    #[error("invalid request: {reason}")]
    Invalid { reason: String },
    #[error("placement is not ready: {reason}")]
    Unavailable { reason: String },
}

impl PlacementError {
    /// Stable code for logs and clients.
    pub fn code(&self) -> &'static str {
        match self {
            PlacementError::NotLeader { .. } => "not_leader",
            PlacementError::WrongCluster { .. } => "wrong_cluster",
            PlacementError::UnknownStore { .. } => "unknown_store",
            PlacementError::UnknownRange { .. } => "unknown_range",
            PlacementError::Invalid { .. } => "invalid",
            PlacementError::Unavailable { .. } => "unavailable",
        }
    }

    /// Worth retrying elsewhere or later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            PlacementError::NotLeader { .. } | PlacementError::Unavailable { .. }
        )
    }
}

pub type PlacementResponse = Result<PlacementReply, PlacementError>;

/// True when a report of `(epoch, term)` is older than what is known: either part of
/// its epoch went backwards, or the epoch is the same and the term is older.
pub fn is_stale(report: (Epoch, u64), known: (Epoch, u64)) -> bool {
    let (re, rt) = report;
    let (ke, kt) = known;
    re.version < ke.version || re.conf_ver < ke.conf_ver || (re == ke && rt < kt)
}
