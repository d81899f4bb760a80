//! What the store loop takes in (`StoreMsg`, from servers, the sync thread and its own
//! background work) and where its outgoing Raft traffic goes (`RaftSender`).

use std::sync::Arc;

use bytes::Bytes;
use raft::eraftpb::{ConfChangeV2, Snapshot};
use shale_rpc::{
    CheckOutcome, Epoch, KvError, RaftBatch, RangeDescriptor, RangeId, RangeStatus, ReplicaId,
    StoreId, WriteOp,
};
use tokio::sync::oneshot;

use crate::command::{Command, RangeState};
use crate::outbox::OutgoingSnapshot;
use crate::replica::{ReadReply, WriteReply};
use crate::snapshot::BuiltSnapshot;
use crate::snapshot_install::PreparedSnapshot;

/// A store's state as a placement heartbeat reports it.
#[derive(Debug, Default)]
pub struct HeartbeatStatus {
    /// Replicas that lead, and those that have known no leader for the asked time.
    pub statuses: Vec<RangeStatus>,
    /// Replicas among `statuses` to report to placement as if leaderless, however
    /// long they have had a leader: they hold up another range's snapshot.
    pub membership_wanted: Vec<RangeId>,
    /// Every range with a replica here.
    pub held: Vec<RangeId>,
    /// Approximate bytes of range data on disk.
    pub used_bytes: u64,
}

/// What the store loop is asked to do.
pub enum StoreMsg {
    /// Raft traffic from another store.
    Raft(RaftBatch),
    /// A snapshot from another store, checked, with its data as an SST file.
    SnapshotReceived {
        batch: RaftBatch,
        prepared: PreparedSnapshot,
    },
    /// One client's atomic write.
    Write {
        range_id: RangeId,
        epoch: Option<Epoch>,
        ops: Vec<WriteOp>,
        reply: WriteReply,
    },
    Read {
        range_id: RangeId,
        epoch: Option<Epoch>,
        reply: ReadReply,
    },
    /// A command of its own entry: id allocation or split.
    Propose {
        range_id: RangeId,
        epoch: Option<Epoch>,
        command: Command,
        reply: WriteReply,
    },
    TransferLeader {
        range_id: RangeId,
        to_store: StoreId,
        reply: oneshot::Sender<Result<(), KvError>>,
    },
    /// The local range holding `key`.
    FindRange {
        key: Bytes,
        reply: oneshot::Sender<Option<RangeDescriptor>>,
    },
    /// Another replica here whose keys overlap `range`'s, which a snapshot of `range`
    /// must wait for (see `Store::overlapping_replica`).
    SnapshotFits {
        range: RangeDescriptor,
        reply: oneshot::Sender<Option<RangeId>>,
    },
    /// The local range with this id, and its learners.
    Describe {
        range_id: RangeId,
        reply: oneshot::Sender<Option<(RangeDescriptor, Vec<ReplicaId>)>>,
    },
    /// The outcome of the local replica's consistency check at `index` (or a later
    /// one) once judged; with `so_far`, while it still waits on replicas, how its
    /// answers stand now.
    CheckOutcome {
        range_id: RangeId,
        index: u64,
        so_far: bool,
        reply: oneshot::Sender<Option<CheckOutcome>>,
    },
    Campaign {
        range_id: RangeId,
    },
    /// Start ticking again (placement saw the range's leader store go down): a
    /// hibernating follower then notices the silence and elects a new leader.
    Wake {
        range_ids: Vec<RangeId>,
    },
    Status {
        reply: oneshot::Sender<Vec<RangeStatus>>,
    },
    /// What a placement heartbeat needs, without the status of every replica.
    HeartbeatStatus {
        leaderless_after_ms: u64,
        reply: oneshot::Sender<HeartbeatStatus>,
    },
    /// A membership change of `range_id` to `new_range`.
    ConfChange {
        range_id: RangeId,
        change: ConfChangeV2,
        new_range: RangeDescriptor,
        reply: WriteReply,
    },
    /// A snapshot build started by the loop ended (`snapshot::spawn_build`).
    SnapshotBuilt {
        range_id: RangeId,
        result: Result<(Snapshot, Arc<BuiltSnapshot>), String>,
    },
    /// How sending a snapshot went.
    SnapshotReport {
        range_id: RangeId,
        to_replica: ReplicaId,
        ok: bool,
    },
    /// A flush finished: applied data up to these indexes is on disk, so their logs may
    /// be truncated that far.
    Flushed {
        targets: Vec<(RangeId, u64)>,
    },
    /// The flush asked for by splits of a round is done (or failed): the ranges they
    /// created may start, each campaigning if its parent led.
    SplitsFlushed {
        born: Vec<(RangeState, bool)>,
        result: Result<(), String>,
    },
    /// The flush asked for by a round's merges is done (or failed): the ranges that
    /// froze count as frozen on disk, and the Raft state of those merged goes.
    MergesFlushed {
        froze: Vec<RangeId>,
        merged: Vec<RangeId>,
        result: Result<(), String>,
    },
    /// One replica's status.
    ReplicaStatus {
        range_id: RangeId,
        reply: oneshot::Sender<Option<RangeStatus>>,
    },
    /// Frozen ranges led here for longer than `older_than` whose merge may still commit
    /// (see `Store::stuck_merges`).
    StuckMerges {
        older_than: std::time::Duration,
        reply: oneshot::Sender<Vec<StuckMerge>>,
    },
    /// Whether the frozen range `range_id`, led here, may be thawed, and at which epoch.
    MayRollBack {
        range_id: RangeId,
        reply: oneshot::Sender<Result<Epoch, KvError>>,
    },
    /// Destroy the local replica of `range_id` if its `conf_ver` is older than this.
    Destroy {
        range_id: RangeId,
        replica_id: ReplicaId,
        conf_ver: u64,
        reply: oneshot::Sender<bool>,
    },
    /// The WAL is synced through sync number `upto`.
    Synced {
        upto: u64,
    },
    Shutdown,
}

/// A frozen range led here whose merge has neither committed nor become impossible: its
/// target's leader is asked to commit it (or to give it up).
#[derive(Debug, Clone)]
pub struct StuckMerge {
    pub source: RangeDescriptor,
    pub target: RangeId,
    /// The store leading the target, as this store's replica of it knows.
    pub target_leader: Option<StoreId>,
}

/// Where outgoing Raft batches go.
pub trait RaftSender: Send + 'static {
    fn send(&mut self, batch: RaftBatch);
    /// Sends a snapshot on its own stream; the outcome comes back as
    /// `StoreMsg::SnapshotReport`.
    fn send_snapshot(&mut self, snapshot: OutgoingSnapshot);
}
