//! The messages stores, clients and (later) placement exchange, as plain serde types.
//! Their bodies ride in frames (see `codec`); `FrameKind` says which type a body holds.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::limits::{
    BATCH_OPS_MAX, INGEST_PAIRS_MAX, KEY_BYTES_MAX, VALUE_BYTES_MAX, WRITE_BYTES_MAX,
};
use crate::{CheckOutcome, RangeId, ReplicaId, StoreId};

/// A range's version: `conf_ver` rises on every membership change, `version` on every
/// split or merge. Neither ever goes backwards.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Epoch {
    pub conf_ver: u64,
    pub version: u64,
}

impl Epoch {
    /// Neither part older and one part newer: `other` is an earlier state of the range.
    pub fn is_newer_than(&self, other: &Epoch) -> bool {
        self.conf_ver >= other.conf_ver && self.version >= other.version && self != other
    }
}

/// One replica of a range and the store that holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReplicaDescriptor {
    pub id: ReplicaId,
    pub store_id: StoreId,
}

/// What a range is: its key interval `[start_key, end_key)`, epoch and replicas. An empty
/// `end_key` means "to the end of the key space".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeDescriptor {
    pub id: RangeId,
    pub start_key: Bytes,
    pub end_key: Bytes,
    pub epoch: Epoch,
    pub replicas: Vec<ReplicaDescriptor>,
}

impl RangeDescriptor {
    /// The stores of its replicas, in order.
    pub fn store_ids(&self) -> Vec<StoreId> {
        let mut stores: Vec<StoreId> = self.replicas.iter().map(|r| r.store_id).collect();
        stores.sort_unstable();
        stores
    }

    /// True when `key` lies in `[start_key, end_key)`.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= &self.start_key[..] && (self.end_key.is_empty() || key < &self.end_key[..])
    }

    /// True when every key of `pairs` (sorted by key) lies in the range: its first and
    /// last do. True for no pairs.
    pub fn contains_sorted(&self, pairs: &[(Bytes, Bytes)]) -> bool {
        match (pairs.first(), pairs.last()) {
            (Some((first, _)), Some((last, _))) => self.contains(first) && self.contains(last),
            _ => true,
        }
    }

    /// True when the range shares a key with `[start, end)` (empty `end`: unbounded).
    pub fn overlaps(&self, start: &[u8], end: &[u8]) -> bool {
        let before_end = end.is_empty() || &self.start_key[..] < end;
        let after_start = self.end_key.is_empty() || &self.end_key[..] > start;
        before_end && after_start
    }

    pub fn replica_on(&self, store_id: StoreId) -> Option<&ReplicaDescriptor> {
        self.replicas.iter().find(|r| r.store_id == store_id)
    }

    pub fn replica(&self, replica_id: ReplicaId) -> Option<&ReplicaDescriptor> {
        self.replicas.iter().find(|r| r.id == replica_id)
    }
}

/// Where a store can be reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreAddr {
    pub store_id: StoreId,
    pub addr: String,
}

/// A KV request addressed to one range on one store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KvRequest {
    pub range_id: RangeId,
    /// The epoch the client believes the range has; `None` skips the check.
    pub epoch: Option<Epoch>,
    pub op: KvOp,
}

/// What a KV request asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum KvOp {
    /// Linearizable read of one key.
    Get {
        key: Bytes,
    },
    /// Read of one key from the receiving store's own replica of the range, leader or
    /// not: not linearizable (the replica may lag), so only for keys written once and
    /// never changed, such as object chunks. `None` may mean "not applied here yet".
    GetReplica {
        key: Bytes,
    },
    Put {
        key: Bytes,
        #[serde(deserialize_with = "crate::shared::bytes")]
        value: Bytes,
    },
    Delete {
        key: Bytes,
    },
    /// Linearizable read of up to `limit` pairs in `[start, end)` (empty `end`: to the end
    /// of the range). A page that stops early carries the key to resume from.
    Scan {
        start: Bytes,
        end: Bytes,
        limit: u32,
    },
    /// Puts and deletes applied atomically: all or none. All keys in one range.
    Batch {
        ops: Vec<WriteOp>,
    },
    /// Allocates `count` cluster-unique ids (range and replica ids) from the counter at
    /// [`ID_ALLOC_KEY`]. Used by stores; ids are never handed out twice.
    AllocIds {
        count: u32,
    },
    // Newer operations go last, so older peers decode the ones they know.
    /// As `Scan`, but the pairs carry empty values: for walking keys whose values are
    /// large (object chunks) without moving them.
    ScanKeys {
        start: Bytes,
        end: Bytes,
        limit: u32,
    },
    /// Bulk load: puts many pairs, keys strictly ascending and all in one range, as one
    /// SST file that every replica writes and ingests when the command applies (no
    /// memtable, no WAL beyond the Raft log, no compaction of small files). A pair
    /// already present is replaced.
    Ingest {
        #[serde(deserialize_with = "crate::shared::pairs")]
        pairs: Vec<(Bytes, Bytes)>,
    },
    /// Bulk load, step 1 of 2, sent to the store of every replica (not only the
    /// leader's): the store writes `pairs` (keys strictly ascending, all in the range)
    /// into an SST file it keeps as `id` until step 2 ingests it or it ages out. Nothing
    /// is visible yet, and nothing goes through Raft.
    StageIngest {
        id: u128,
        #[serde(deserialize_with = "crate::shared::pairs")]
        pairs: Vec<(Bytes, Bytes)>,
    },
    /// Bulk load, step 2 of 2, sent to the leader: one small Raft entry makes every
    /// replica ingest its own copy of the file staged as `id`, above every write applied
    /// before it. `crc32` is [`pairs_crc32`] of the staged pairs, `first_key` and
    /// `last_key` their bounds, and `stores` the stores that staged it, which must
    /// include the store of every replica.
    IngestStaged {
        id: u128,
        crc32: u32,
        first_key: Bytes,
        last_key: Bytes,
        stores: Vec<StoreId>,
    },
    /// Sets `key` to `value` (deletes it for `None`) only if it holds `expected` right
    /// then (`None`: only if absent), atomically: decided when the command applies, in
    /// log order. Refused with `CompareFailed` otherwise, leaving the key as it is.
    CompareAndSet {
        key: Bytes,
        expected: Option<Bytes>,
        value: Option<Bytes>,
    },
}

/// Most stores one staged ingest may name (a range has a handful of replicas).
pub const INGEST_STORES_MAX: usize = 16;

/// The checksum that ties a staged file to the ingest naming it: crc32 over every pair
/// as `key length (u32 BE) | key | value length (u32 BE) | value`, in order. Every
/// replica computes it over what it staged, so copies that differ are never ingested.
pub fn pairs_crc32(pairs: &[(Bytes, Bytes)]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    for (k, v) in pairs {
        crc.update(&(k.len() as u32).to_be_bytes());
        crc.update(k);
        crc.update(&(v.len() as u32).to_be_bytes());
        crc.update(v);
    }
    crc.finalize()
}

/// Checks the pairs of a bulk load: within the limits, not empty, keys strictly
/// ascending, user keys only.
fn check_ingest_pairs(pairs: &[(Bytes, Bytes)]) -> Result<(), KvError> {
    let bytes: usize = pairs.iter().map(|(k, v)| k.len() + v.len()).sum();
    if pairs.len() > INGEST_PAIRS_MAX || bytes > WRITE_BYTES_MAX {
        return Err(KvError::BatchTooLarge {
            ops: pairs.len(),
            bytes,
            ops_max: INGEST_PAIRS_MAX,
            bytes_max: WRITE_BYTES_MAX,
        });
    }
    if pairs.is_empty() {
        return Err(KvError::InvalidIngest {
            reason: "no pairs".into(),
        });
    }
    if pairs.windows(2).any(|w| w[0].0 >= w[1].0) {
        return Err(KvError::InvalidIngest {
            reason: "keys must be strictly ascending".into(),
        });
    }
    for (k, v) in pairs {
        check_user_key(k)?;
        check_value(v)?;
    }
    Ok(())
}

/// Keys starting with this prefix belong to Shale itself; clients cannot write them and
/// scans never return them.
pub const SYSTEM_PREFIX: &[u8] = &[0x00, 0x00];
/// The first key after every system key.
pub const SYSTEM_PREFIX_END: &[u8] = &[0x00, 0x01];
/// The id allocator's counter.
pub const ID_ALLOC_KEY: &[u8] = b"\x00\x00shale/next-id";
/// Most ids one allocation hands out.
pub const ALLOC_IDS_MAX: u32 = 1024;

/// True for keys reserved to Shale itself.
pub fn is_system_key(key: &[u8]) -> bool {
    key.starts_with(SYSTEM_PREFIX)
}

/// One write of an atomic batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOp {
    Put { key: Bytes, value: Bytes },
    Delete { key: Bytes },
}

impl WriteOp {
    pub fn key(&self) -> &Bytes {
        match self {
            WriteOp::Put { key, .. } | WriteOp::Delete { key } => key,
        }
    }

    fn size_bytes(&self) -> usize {
        match self {
            WriteOp::Put { key, value } => key.len() + value.len(),
            WriteOp::Delete { key } => key.len(),
        }
    }
}

/// A store's answer to a KV request.
pub type KvResponse = Result<KvReply, KvError>;

/// What a successful KV request returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum KvReply {
    Value(#[serde(deserialize_with = "crate::shared::option")] Option<Bytes>),
    Written,
    Scanned {
        pairs: Vec<(Bytes, Bytes)>,
        /// Where the next page starts; `None` when the scan reached its end.
        resume_key: Option<Bytes>,
    },
    /// Ids `first .. first + count`, never handed out before.
    Ids {
        first: u64,
        count: u32,
    },
}

/// An admin request to one store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminRequest {
    /// The state of every replica on the store.
    Status,
    /// Ask the store's leader of `range_id` to hand leadership to the replica on
    /// `to_store`. Returns once the transfer has started; poll `Status` for its end.
    TransferLeader {
        range_id: RangeId,
        to_store: StoreId,
    },
    /// Split `range_id` at `split_key` (which becomes the new right range's start).
    /// Returns once the split is applied on the leader.
    Split { range_id: RangeId, split_key: Bytes },
    /// The descriptor of the range on this store that holds `key`, if any.
    FindRange { key: Bytes },
    /// Add a replica of `range_id` on `store_id` (reachable at `addr`). It joins as a
    /// learner (no vote, no part of any quorum), catches up by snapshot, and the leader
    /// then makes it a voter. Returns once it votes; `ServerBusy` after a few seconds
    /// while it is still catching up (ask again: the same learner is waited on).
    AddReplica {
        range_id: RangeId,
        store_id: StoreId,
        addr: String,
    },
    /// Remove the replica of `range_id` on `store_id` (not the leader's: transfer
    /// leadership first). Its data is deleted and it never comes back.
    RemoveReplica {
        range_id: RangeId,
        store_id: StoreId,
    },
    /// Sent to a removed replica's store: destroy the replica if it is `replica_id` (or
    /// an older one) and its range's `conf_ver` is older than `conf_ver`. A newer
    /// replica of the range (added back since) is left alone.
    DestroyReplica {
        range_id: RangeId,
        replica_id: ReplicaId,
        conf_ver: u64,
    },
    /// Check that every replica of `range_id` holds the same data: the leader proposes
    /// a check entry, each replica sums its data as applied through it and tells the
    /// others. Returns the outcome once every replica answered (`ServerBusy` if that
    /// takes longer than the store's wait; ask `Status` later).
    CheckConsistency { range_id: RangeId },
    /// The state of this store's replica of `range_id`, if it has one.
    Replica { range_id: RangeId },
    /// First half of a merge, to the leader of `range_id` (the right neighbour of
    /// `target`, on the same stores): freeze it for `target` to take over. Returns the
    /// frozen range once the freeze is applied on the leader.
    PrepareMerge {
        range_id: RangeId,
        target: RangeDescriptor,
    },
    /// Second half, to the leader of `range_id` (the merge's target): take over `source`,
    /// frozen for it. The leader first checks that every replica of `source` is frozen
    /// on disk. Returns the merged range once applied on the leader.
    CommitMerge {
        range_id: RangeId,
        source: RangeDescriptor,
    },
    /// To the leader of a frozen range whose merge can no longer happen (its target
    /// changed since, as this store's replica of the target shows): thaw it.
    RollbackMerge { range_id: RangeId },
}

/// A store's answer to an admin request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminReply {
    Status {
        store_id: StoreId,
        ranges: Vec<RangeStatus>,
    },
    Started,
    /// The ranges after a split: left, then right.
    Split {
        left: RangeDescriptor,
        right: RangeDescriptor,
    },
    Range(Option<RangeDescriptor>),
    /// The range after a membership change.
    Changed(RangeDescriptor),
    /// A finished consistency check.
    Checked(CheckOutcome),
    /// One replica's state (`None`: the store holds no live replica of the range).
    Replica(Option<Box<RangeStatus>>),
}

pub type AdminResponse = Result<AdminReply, KvError>;

/// One replica's state as its store reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeStatus {
    pub range: RangeDescriptor,
    pub replica_id: ReplicaId,
    pub is_leader: bool,
    pub leader_store: Option<StoreId>,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    /// The log holds entries after this index only.
    pub truncated_index: u64,
    pub last_index: u64,
    /// Idle and not ticking (no heartbeats) until the next request or message.
    #[serde(default)]
    pub hibernating: bool,
    /// Approximate bytes of the range's data on disk (SST files; memtables not counted).
    #[serde(default)]
    pub size_bytes: u64,
    /// Keys in the range as its last size check counted them (none yet: not counted).
    #[serde(default)]
    pub key_count: Option<u64>,
    /// How long the replica has gone without a word from a leader: ticked without
    /// knowing one, or (a follower) slept.
    #[serde(default)]
    pub leader_missing_ms: u64,
    /// Replicas of the range that are learners as this replica last applied its
    /// membership: they get the log but neither vote nor count toward a quorum, until
    /// the leader promotes them once they have caught up.
    #[serde(default)]
    pub learners: Vec<ReplicaId>,
    /// Learners this replica, as leader, has heard nothing from for the store's
    /// `learner-silent-after-ms` (cut off, or their store down): they may never catch up.
    #[serde(default)]
    pub silent_learners: Vec<ReplicaId>,
    /// The last consistency check of the range this replica saw finish.
    #[serde(default)]
    pub last_check: Option<CheckOutcome>,
    /// Replicas still in the range whose data that check found differs from the
    /// majority's (placement replaces them).
    #[serde(default)]
    pub diverged: Vec<ReplicaId>,
    /// The range this replica is frozen for (a merge into it under way), and that
    /// range's epoch when the merge began; set once the freeze is on disk here.
    #[serde(default)]
    pub frozen_for: Option<(RangeId, Epoch)>,
}

impl RangeStatus {
    pub fn range_id(&self) -> RangeId {
        self.range.id
    }

    /// True when the range's replica on `store_id` is a voter (not a learner).
    pub fn votes_on(&self, store_id: StoreId) -> bool {
        self.range
            .replica_on(store_id)
            .is_some_and(|r| !self.learners.contains(&r.id))
    }
}

/// Where the leader of a range is, as far as the answering store knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderHint {
    pub store_id: StoreId,
    pub addr: String,
}

/// Errors a client can act on, each with a stable code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum KvError {
    #[error("range {range_id}: this replica is not the leader (leader: {leader:?}); retry there")]
    NotLeader {
        range_id: RangeId,
        leader: Option<LeaderHint>,
    },
    #[error("range {range_id} is not on this store")]
    RangeNotFound { range_id: RangeId },
    #[error("key is not in range {range_id}")]
    KeyNotInRange { range_id: RangeId },
    #[error("range epoch changed; current ranges: {current:?}")]
    EpochNotMatch { current: Vec<RangeDescriptor> },
    #[error("store is busy ({reason}); back off and retry")]
    ServerBusy { reason: String },
    #[error("the key is empty; keys must be at least 1 byte")]
    EmptyKey,
    #[error("key of {len} bytes is over the limit of {max} bytes")]
    KeyTooLarge { len: usize, max: usize },
    #[error("value of {len} bytes is over the limit of {max} bytes")]
    ValueTooLarge { len: usize, max: usize },
    #[error("batch of {ops} operations / {bytes} bytes is over the limit of {ops_max} operations / {bytes_max} bytes")]
    BatchTooLarge {
        ops: usize,
        bytes: usize,
        ops_max: usize,
        bytes_max: usize,
    },
    #[error("scan start is past its end")]
    InvalidScan,
    #[error("keys starting with 0x00 0x00 are reserved for Shale itself")]
    ReservedKey,
    #[error(
        "an atomic batch must stay inside one range; its keys span ranges {first} and {second}"
    )]
    BatchSpansRanges { first: RangeId, second: RangeId },
    #[error("cannot change the replicas of range {range_id}: {reason}")]
    InvalidConfChange { range_id: RangeId, reason: String },
    #[error("cannot split range {range_id} there: {reason}")]
    InvalidSplit { range_id: RangeId, reason: String },
    #[error("the write was not committed (leadership changed before it was); it is safe to retry")]
    ProposalDropped,
    #[error("timed out waiting for the range; the write may or may not have been applied")]
    Timeout,
    #[error("request could not be decoded: {message}")]
    Malformed { message: String },
    #[error("store storage error: {message}")]
    Storage { message: String },
    #[error("store is shutting down")]
    ShuttingDown,
    #[error("bulk load refused: {reason}")]
    InvalidIngest { reason: String },
    #[error("the file to ingest is not staged on store {store_id}; stage it again")]
    NotStaged { store_id: StoreId },
    /// New data refused: the store (or most of the range's stores) is low on disk
    /// space. Deletes still pass; placement moves data off low stores.
    #[error("store {store_id} is low on disk space ({detail}); new data is refused until space is freed or placement moves data away (deletes still work)")]
    NoSpace { store_id: StoreId, detail: String },
    #[error("the key does not hold the value the compare-and-set expected; nothing was written")]
    CompareFailed,
    #[error("cannot merge range {range_id}: {reason}")]
    InvalidMerge { range_id: RangeId, reason: String },
}

impl KvError {
    /// Stable code for logs, metrics and clients.
    pub fn code(&self) -> &'static str {
        match self {
            KvError::NotLeader { .. } => "not_leader",
            KvError::RangeNotFound { .. } => "range_not_found",
            KvError::KeyNotInRange { .. } => "key_not_in_range",
            KvError::EpochNotMatch { .. } => "epoch_not_match",
            KvError::ServerBusy { .. } => "server_busy",
            KvError::EmptyKey => "empty_key",
            KvError::KeyTooLarge { .. } => "key_too_large",
            KvError::ValueTooLarge { .. } => "value_too_large",
            KvError::BatchTooLarge { .. } => "batch_too_large",
            KvError::InvalidScan => "invalid_scan",
            KvError::ReservedKey => "reserved_key",
            KvError::BatchSpansRanges { .. } => "batch_spans_ranges",
            KvError::InvalidSplit { .. } => "invalid_split",
            KvError::InvalidConfChange { .. } => "invalid_conf_change",
            KvError::ProposalDropped => "proposal_dropped",
            KvError::Timeout => "timeout",
            KvError::Malformed { .. } => "malformed",
            KvError::Storage { .. } => "storage",
            KvError::ShuttingDown => "shutting_down",
            KvError::InvalidIngest { .. } => "invalid_ingest",
            KvError::NotStaged { .. } => "not_staged",
            KvError::NoSpace { .. } => "no_space",
            KvError::CompareFailed => "compare_failed",
            KvError::InvalidMerge { .. } => "invalid_merge",
        }
    }

    /// True when the same request may succeed against another store or a bit later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            KvError::NotLeader { .. }
                | KvError::RangeNotFound { .. }
                | KvError::KeyNotInRange { .. }
                | KvError::EpochNotMatch { .. }
                | KvError::ServerBusy { .. }
                | KvError::ProposalDropped
                | KvError::Timeout
                | KvError::ShuttingDown
        )
    }
}

/// Checks one key against the size limits.
pub fn check_key(key: &[u8]) -> Result<(), KvError> {
    if key.is_empty() {
        return Err(KvError::EmptyKey);
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(KvError::KeyTooLarge {
            len: key.len(),
            max: KEY_BYTES_MAX,
        });
    }
    Ok(())
}

/// A key a client may write: within the limits and outside the system prefix.
fn check_user_key(key: &[u8]) -> Result<(), KvError> {
    check_key(key)?;
    if is_system_key(key) {
        return Err(KvError::ReservedKey);
    }
    Ok(())
}

fn check_value(value: &[u8]) -> Result<(), KvError> {
    if value.len() > VALUE_BYTES_MAX {
        return Err(KvError::ValueTooLarge {
            len: value.len(),
            max: VALUE_BYTES_MAX,
        });
    }
    Ok(())
}

impl KvOp {
    /// Checks every key, value and batch against the limits before any work is done.
    pub fn validate(&self) -> Result<(), KvError> {
        match self {
            KvOp::Get { key } | KvOp::GetReplica { key } => check_key(key),
            KvOp::Delete { key } => check_user_key(key),
            KvOp::Put { key, value } => {
                check_user_key(key)?;
                check_value(value)
            }
            KvOp::AllocIds { count } => {
                if *count == 0 || *count > ALLOC_IDS_MAX {
                    return Err(KvError::BatchTooLarge {
                        ops: *count as usize,
                        bytes: 0,
                        ops_max: ALLOC_IDS_MAX as usize,
                        bytes_max: 0,
                    });
                }
                Ok(())
            }
            KvOp::Scan { start, end, .. } | KvOp::ScanKeys { start, end, .. } => {
                if start.len() > KEY_BYTES_MAX || end.len() > KEY_BYTES_MAX {
                    return Err(KvError::KeyTooLarge {
                        len: start.len().max(end.len()),
                        max: KEY_BYTES_MAX,
                    });
                }
                if !end.is_empty() && start > end {
                    return Err(KvError::InvalidScan);
                }
                Ok(())
            }
            KvOp::Ingest { pairs } | KvOp::StageIngest { pairs, .. } => check_ingest_pairs(pairs),
            KvOp::IngestStaged {
                first_key,
                last_key,
                stores,
                ..
            } => {
                check_user_key(first_key)?;
                check_user_key(last_key)?;
                if first_key > last_key {
                    return Err(KvError::InvalidIngest {
                        reason: "first key after last key".into(),
                    });
                }
                if stores.is_empty() || stores.len() > INGEST_STORES_MAX {
                    return Err(KvError::InvalidIngest {
                        reason: format!(
                            "{} stores named; 1 to {INGEST_STORES_MAX} allowed",
                            stores.len()
                        ),
                    });
                }
                Ok(())
            }
            KvOp::CompareAndSet {
                key,
                expected,
                value,
            } => {
                check_user_key(key)?;
                for v in [expected, value].into_iter().flatten() {
                    check_value(v)?;
                }
                Ok(())
            }
            KvOp::Batch { ops } => {
                let bytes: usize = ops.iter().map(WriteOp::size_bytes).sum();
                if ops.len() > BATCH_OPS_MAX || bytes > WRITE_BYTES_MAX {
                    return Err(KvError::BatchTooLarge {
                        ops: ops.len(),
                        bytes,
                        ops_max: BATCH_OPS_MAX,
                        bytes_max: WRITE_BYTES_MAX,
                    });
                }
                for op in ops {
                    check_user_key(op.key())?;
                    if let WriteOp::Put { value, .. } = op {
                        check_value(value)?;
                    }
                }
                Ok(())
            }
        }
    }

    /// True for operations that change data (and so go through Raft).
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            KvOp::Put { .. }
                | KvOp::Delete { .. }
                | KvOp::Batch { .. }
                | KvOp::Ingest { .. }
                | KvOp::IngestStaged { .. }
                | KvOp::AllocIds { .. }
                | KvOp::CompareAndSet { .. }
        )
    }

    /// The key that decides which range serves the operation (a scan's start).
    pub fn routing_key(&self) -> &[u8] {
        match self {
            KvOp::Get { key }
            | KvOp::GetReplica { key }
            | KvOp::Put { key, .. }
            | KvOp::Delete { key }
            | KvOp::CompareAndSet { key, .. } => key,
            KvOp::Scan { start, .. } | KvOp::ScanKeys { start, .. } => start,
            KvOp::Batch { ops } => ops.first().map_or(&[][..], |op| &op.key()[..]),
            KvOp::Ingest { pairs } | KvOp::StageIngest { pairs, .. } => {
                pairs.first().map_or(&[][..], |(k, _)| &k[..])
            }
            KvOp::IngestStaged { first_key, .. } => first_key,
            KvOp::AllocIds { .. } => ID_ALLOC_KEY,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Frame, FrameKind, RaftBatch};
    use proptest::prelude::*;

    #[test]
    fn an_epoch_is_newer_only_when_no_part_is_older() {
        let e = |conf_ver, version| Epoch { conf_ver, version };
        assert!(e(1, 2).is_newer_than(&e(1, 1)), "a split later");
        assert!(e(2, 1).is_newer_than(&e(1, 1)), "a membership change later");
        assert!(!e(1, 1).is_newer_than(&e(1, 1)), "the same epoch");
        assert!(!e(1, 1).is_newer_than(&e(1, 2)), "older");
        assert!(
            !e(2, 1).is_newer_than(&e(1, 2)),
            "diverged: neither is newer"
        );
    }

    fn bytes() -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from)
    }

    fn ops() -> impl Strategy<Value = KvOp> {
        prop_oneof![
            bytes().prop_map(|key| KvOp::Get { key }),
            (bytes(), bytes()).prop_map(|(key, value)| KvOp::Put { key, value }),
            bytes().prop_map(|key| KvOp::Delete { key }),
            (bytes(), bytes(), any::<u32>()).prop_map(|(start, end, limit)| KvOp::Scan {
                start,
                end,
                limit
            }),
            (bytes(), bytes(), any::<u32>()).prop_map(|(start, end, limit)| KvOp::ScanKeys {
                start,
                end,
                limit
            }),
            proptest::collection::vec(
                (bytes(), bytes()).prop_map(|(key, value)| WriteOp::Put { key, value }),
                0..4
            )
            .prop_map(|ops| KvOp::Batch { ops }),
            (
                any::<u128>(),
                proptest::collection::vec((bytes(), bytes()), 0..4)
            )
                .prop_map(|(id, pairs)| KvOp::StageIngest { id, pairs }),
            (
                any::<u128>(),
                any::<u32>(),
                bytes(),
                bytes(),
                proptest::collection::vec(any::<u64>(), 0..4)
            )
                .prop_map(|(id, crc32, first_key, last_key, stores)| {
                    KvOp::IngestStaged {
                        id,
                        crc32,
                        first_key,
                        last_key,
                        stores,
                    }
                }),
        ]
    }

    proptest! {
        #[test]
        fn kv_request_round_trips(range_id in any::<u64>(), op in ops()) {
            let req = KvRequest { range_id, epoch: Some(Epoch { conf_ver: 1, version: 2 }), op };
            let frame = Frame::encode(FrameKind::KvRequest, &req).unwrap();
            let wire = frame.to_wire();
            let back: KvRequest = Frame::from_wire(&wire).unwrap().decode(FrameKind::KvRequest).unwrap();
            prop_assert_eq!(back, req);
        }

        #[test]
        fn garbage_bodies_are_errors_not_panics(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let frame = Frame { kind: FrameKind::KvRequest, body: Bytes::from(body) };
            let _ = frame.decode::<KvRequest>(FrameKind::KvRequest);
            let frame = Frame { kind: FrameKind::RaftBatch, body: frame.body };
            let _ = frame.decode::<RaftBatch>(FrameKind::RaftBatch);
        }
    }

    #[test]
    fn errors_round_trip() {
        let resp: KvResponse = Err(KvError::NotLeader {
            range_id: 1,
            leader: Some(LeaderHint {
                store_id: 2,
                addr: "127.0.0.1:1".into(),
            }),
        });
        let frame = Frame::encode(FrameKind::KvResponse, &resp).unwrap();
        assert_eq!(
            frame.decode::<KvResponse>(FrameKind::KvResponse).unwrap(),
            resp
        );
    }

    #[test]
    fn limits_are_enforced() {
        let big = Bytes::from(vec![b'k'; KEY_BYTES_MAX + 1]);
        assert!(matches!(
            KvOp::Get { key: big.clone() }.validate(),
            Err(KvError::KeyTooLarge { .. })
        ));
        assert_eq!(
            KvOp::Get { key: Bytes::new() }.validate(),
            Err(KvError::EmptyKey)
        );
        let value = Bytes::from(vec![0; VALUE_BYTES_MAX + 1]);
        assert!(matches!(
            KvOp::Put {
                key: Bytes::from_static(b"k"),
                value
            }
            .validate(),
            Err(KvError::ValueTooLarge { .. })
        ));
        let ops = vec![
            WriteOp::Delete {
                key: Bytes::from_static(b"k")
            };
            BATCH_OPS_MAX + 1
        ];
        assert!(matches!(
            KvOp::Batch { ops }.validate(),
            Err(KvError::BatchTooLarge { .. })
        ));
        let scan = KvOp::Scan {
            start: Bytes::from_static(b"b"),
            end: Bytes::from_static(b"a"),
            limit: 1,
        };
        assert_eq!(scan.validate(), Err(KvError::InvalidScan));
        let ingest = |first: &'static [u8], last: &'static [u8], stores: Vec<StoreId>| {
            KvOp::IngestStaged {
                id: 1,
                crc32: 0,
                first_key: Bytes::from_static(first),
                last_key: Bytes::from_static(last),
                stores,
            }
            .validate()
        };
        assert!(ingest(b"a", b"b", vec![1, 2, 3]).is_ok());
        assert!(matches!(
            ingest(b"b", b"a", vec![1]),
            Err(KvError::InvalidIngest { .. })
        ));
        assert!(matches!(
            ingest(b"a", b"b", vec![]),
            Err(KvError::InvalidIngest { .. })
        ));
        assert_eq!(
            ingest(b"\x00\x00x", b"b", vec![1]),
            Err(KvError::ReservedKey)
        );
        assert!(matches!(
            KvOp::StageIngest {
                id: 1,
                pairs: vec![]
            }
            .validate(),
            Err(KvError::InvalidIngest { .. })
        ));
        assert!(KvOp::Put {
            key: Bytes::from_static(b"k"),
            value: Bytes::new()
        }
        .validate()
        .is_ok());
    }
}
