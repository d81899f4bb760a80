//! One replica of a range: its raft-rs node, the proposals and reads waiting on it, and
//! the state machine that applies committed commands to the data column family. It does
//! no I/O of its own: writes go into the store round's WriteBatch and messages into an
//! outbox that the store loop sends.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use protobuf::Message as _;
use raft::eraftpb::{ConfChangeV2, Entry, EntryType, Message, MessageType, Snapshot};
use raft::{RawNode, StateRole};
use shale_rpc::limits::KEY_BYTES_MAX;
use shale_rpc::{
    Epoch, KvError, LeaderHint, RangeDescriptor, RangeId, ReplicaDescriptor, ReplicaId, StoreId,
    WriteOp, ID_ALLOC_KEY, SYSTEM_PREFIX_END,
};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::command::{Applied, ApplyState, Command, RangeState, ReplicaState};
use crate::config::{LogGcConfig, RaftConfig};
use crate::engine::{Cf, Durability, Engine, WriteBatch};
use crate::key_counts::CheckDue;
use crate::keys;
use crate::metrics::METRICS;
use crate::raft_logger::range_logger;
use crate::replica_storage::{ReplicaStorage, SnapshotSource};
use crate::snapshot::{BuiltSnapshot, SnapshotHeader};
use crate::snapshot_install::{self, PreparedSnapshot};
use crate::staging::staged_path;
use crate::StorageError;

mod apply;
mod consistency;
mod membership;
mod merge;
mod read;
mod sleep;
mod snapshots;

pub use apply::FIRST_ALLOCATED_ID;
use apply::{check_split, write_out_applied};
pub use membership::{single_change, LEARNER_LAG_MAX};
pub use merge::check_neighbours;
use read::{read_ctx, Reads};

pub use crate::addresses::AddressBook;

/// Answer channel of a write.
pub type WriteReply = oneshot::Sender<ApplyResult>;
/// The answer to one client request carried by an entry.
pub type ApplyResult = Result<Applied, KvError>;
/// Answer channel of a read: the range's descriptor once the read may proceed.
pub type ReadReply = oneshot::Sender<Result<RangeDescriptor, KvError>>;

/// Most client writes merged into one entry.
const PROPOSAL_WRITES_MAX: usize = 1024;
/// Most bytes of client writes merged into one entry.
const PROPOSAL_BYTES_MAX: usize = 4 << 20;
/// A built snapshot that raft has not taken within this long is dropped (the follower
/// that wanted it went away); a later request builds a fresh one.
const SNAPSHOT_UNTAKEN_MAX: Duration = Duration::from_secs(30);

/// One Raft entry in flight and the clients waiting on its writes, in order.
struct Proposal {
    index: u64,
    term: u64,
    replies: Vec<WriteReply>,
}

/// One range's replica on this store.
pub struct Replica {
    pub range: RangeDescriptor,
    pub replica_id: ReplicaId,
    node: RawNode<ReplicaStorage>,
    apply: ApplyState,
    proposals: VecDeque<Proposal>,
    /// Writes that arrived this round; they become one entry.
    write_batch: Vec<(Vec<WriteOp>, WriteReply)>,
    reads: Reads,
    /// Answers to send once the round's writes are on disk.
    done: Vec<(WriteReply, ApplyResult)>,
    /// Ranges this replica's splits created, for the store loop to start.
    new_ranges: Vec<RangeState>,
    /// The id counter, once read (this replica is its only writer).
    next_id: Option<u64>,
    /// Bytes written since the last split check.
    written_bytes: u64,
    /// The store tick of the last split check.
    checked_at_tick: u64,
    /// Log index up to which a CompactLog entry allows truncation (after a flush).
    pending_compact: Option<u64>,
    /// Highest CompactLog index this leader proposed.
    compact_proposed: u64,
    /// Until this index applies, commits are broadcast at once (see `propose_entry`).
    bcast_commit_until: Option<u64>,
    /// Stores of replicas learned from their messages (new replicas know no descriptor).
    peer_stores: HashMap<ReplicaId, StoreId>,
    /// This replica was removed from its range: the store destroys it.
    removed: bool,
    /// Not ticking: idle, with every replica caught up (see `try_hibernate`).
    hibernating: bool,
    /// Ticks since the last proposal, read or non-routine message.
    idle_ticks: u64,
    /// Ticks in a row without a known leader (a removed replica whose store was down
    /// when it was removed never learns one).
    leaderless_ticks: u64,
    /// Since when it sleeps, and when its membership was last checked with placement
    /// while asleep (a follower removed while asleep that missed the news never wakes).
    asleep_since: Option<Instant>,
    membership_checked_at: Option<Instant>,
    /// On a leader, each learner and when it was last heard from (or became a learner,
    /// or this replica began leading): see `silent_learners`.
    heard_learners: Vec<(ReplicaId, Instant)>,
    /// A received snapshot's pairs as an SST file, for when raft hands it over.
    prepared: Option<PreparedSnapshot>,
    /// The SST file of a snapshot this round took, to ingest once its state is synced.
    pending_ingest: Option<PathBuf>,
    /// The file of the snapshot this leader last built, and when: its transfers read
    /// their chunks from it.
    built: Option<(Arc<BuiltSnapshot>, Instant)>,
    /// Consistency checks: the one under way, the last judged, the next due.
    consistency: consistency::Consistency,
    /// Frozen for a merge, or taking others over (see `merge`).
    merge: merge::MergeState,
    engine: Arc<Engine>,
    addresses: AddressBook,
}

impl Replica {
    /// Opens the replica of `state.descriptor` held by `store_id`.
    pub fn open(
        engine: Arc<Engine>,
        state: RangeState,
        store_id: StoreId,
        config: &RaftConfig,
        addresses: AddressBook,
    ) -> Result<Replica, StorageError> {
        let frozen = merge::frozen_in(&state.state);
        let range = state.descriptor;
        let replica_id = range
            .replica_on(store_id)
            .ok_or_else(|| {
                StorageError::Corruption(format!(
                    "range {} has no replica on store {store_id}",
                    range.id
                ))
            })?
            .id;
        snapshot_install::recover(&engine, &range)?;
        let apply = match engine.get(Cf::Meta, &keys::apply_state_key(range.id))? {
            Some(b) => ApplyState::decode(&b)?,
            None => ApplyState::default(),
        };
        let mut replica = Self::from_parts(engine, range, replica_id, apply, config, addresses)?;
        replica.set_durable_freeze(frozen);
        replica.refresh_snapshot_source();
        Ok(replica)
    }

    /// A replica this store learned of from a Raft message only: it has no data and no
    /// descriptor until the leader's snapshot arrives.
    pub fn uninitialized(
        engine: Arc<Engine>,
        range_id: RangeId,
        replica: ReplicaDescriptor,
        config: &RaftConfig,
        addresses: AddressBook,
    ) -> Result<Replica, StorageError> {
        let range = RangeDescriptor {
            id: range_id,
            start_key: Bytes::new(),
            end_key: Bytes::new(),
            epoch: Epoch::default(),
            replicas: vec![replica],
        };
        Self::from_parts(
            engine,
            range,
            replica.id,
            ApplyState::default(),
            config,
            addresses,
        )
    }

    /// True until the replica has data (a snapshot or its creation by bootstrap/split).
    pub fn is_uninitialized(&self) -> bool {
        self.range.epoch == Epoch::default()
    }

    fn from_parts(
        engine: Arc<Engine>,
        range: RangeDescriptor,
        replica_id: ReplicaId,
        apply: ApplyState,
        config: &RaftConfig,
        addresses: AddressBook,
    ) -> Result<Replica, StorageError> {
        let mut storage = ReplicaStorage::load(engine.clone(), range.id, &apply)?;
        storage.set_snapshot_source(SnapshotSource {
            range: range.clone(),
            applied_index: apply.applied_index,
            applied_term: apply.applied_term,
            frozen: None,
        });
        let raft_config = raft::Config {
            id: replica_id,
            election_tick: config.election_ticks,
            min_election_tick: config.election_ticks,
            max_election_tick: config.election_ticks_max,
            heartbeat_tick: config.heartbeat_ticks,
            applied: apply.applied_index,
            max_size_per_msg: config.max_size_per_msg_bytes,
            max_inflight_msgs: config.max_inflight_msgs,
            check_quorum: true,
            pre_vote: true,
            batch_append: true,
            // Followers learn a write's commit from the next append or heartbeat instead
            // of an extra message per commit; commands other than writes still broadcast
            // (see `propose_entry`).
            skip_bcast_commit: true,
            max_uncommitted_size: config.max_uncommitted_bytes,
            max_committed_size_per_ready: config.max_committed_bytes_per_ready,
            ..Default::default()
        };
        raft_config.validate()?;
        let node = RawNode::new(&raft_config, storage, &range_logger(range.id))?;
        Ok(Replica {
            range,
            replica_id,
            node,
            apply,
            proposals: VecDeque::new(),
            write_batch: Vec::new(),
            reads: Reads::new(config.lease()),
            done: Vec::new(),
            new_ranges: Vec::new(),
            next_id: None,
            written_bytes: 0,
            checked_at_tick: 0,
            pending_compact: None,
            compact_proposed: 0,
            bcast_commit_until: None,
            peer_stores: HashMap::new(),
            removed: false,
            hibernating: false,
            idle_ticks: 0,
            leaderless_ticks: 0,
            asleep_since: None,
            membership_checked_at: None,
            heard_learners: Vec::new(),
            prepared: None,
            pending_ingest: None,
            built: None,
            consistency: Default::default(),
            merge: Default::default(),
            engine,
            addresses,
        })
    }

    pub fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    pub fn term(&self) -> u64 {
        self.node.raft.term
    }

    pub fn applied_index(&self) -> u64 {
        self.apply.applied_index
    }

    pub fn truncated_index(&self) -> u64 {
        self.node.store().truncated_index()
    }

    pub fn last_index(&self) -> u64 {
        self.node.store().last_index()
    }

    pub fn commit_index(&self) -> u64 {
        self.node.raft.raft_log.committed
    }

    /// Ticks in a row this replica has gone without a known leader.
    pub fn leaderless_ticks(&self) -> u64 {
        self.leaderless_ticks
    }

    /// The store holding the leader, if known.
    pub fn leader_store(&self) -> Option<StoreId> {
        self.store_of(self.node.raft.leader_id)
    }

    /// The store holding replica `replica_id`, from the descriptor or its messages.
    pub fn store_of(&self, replica_id: ReplicaId) -> Option<StoreId> {
        self.range
            .replica(replica_id)
            .map(|r| r.store_id)
            .or_else(|| self.peer_stores.get(&replica_id).copied())
    }

    /// Remembers which store a replica's message came from.
    pub fn learn_peer(&mut self, replica_id: ReplicaId, store_id: StoreId) {
        if replica_id != 0 && self.range.replica(replica_id).is_none() {
            self.peer_stores.insert(replica_id, store_id);
        }
    }

    pub fn is_removed(&self) -> bool {
        self.removed
    }

    /// Tells raft how sending a snapshot to `to` went.
    pub fn report_snapshot(&mut self, to: ReplicaId, ok: bool) {
        let status = if ok {
            raft::SnapshotStatus::Finish
        } else {
            raft::SnapshotStatus::Failure
        };
        self.node.report_snapshot(to, status);
        if !ok {
            self.node.report_unreachable(to);
        }
    }

    /// On the leader, every so often: proposes dropping log entries every replica has
    /// (or, past `entries_max`, entries a lagging replica will get by snapshot instead),
    /// once there are `entries_min` of them or the log holds `bytes_min`.
    pub fn maybe_propose_compact(&mut self, gc: &LogGcConfig) {
        if !self.is_leader() || self.hibernating {
            return;
        }
        let applied = self.apply.applied_index;
        let truncated = self.node.store().truncated_index();
        let min_matched = self
            .node
            .raft
            .prs()
            .iter()
            .map(|(_, p)| p.matched)
            .min()
            .unwrap_or(0);
        let mut index = min_matched.min(applied);
        if applied.saturating_sub(truncated) > gc.entries_max {
            index = applied;
        }
        let worth = index >= truncated + gc.entries_min
            || (index > truncated && self.node.store().log_bytes() >= gc.bytes_min);
        if !worth || index <= self.compact_proposed {
            return;
        }
        let Ok(term) = raft::Storage::term(self.node.store(), index) else {
            return;
        };
        let (reply, _) = oneshot::channel();
        self.compact_proposed = index;
        self.propose_entry(Command::CompactLog { index, term }, vec![reply]);
    }

    /// The log index this replica may truncate to once its applied data is flushed.
    pub fn pending_compact(&self) -> Option<u64> {
        self.pending_compact
    }

    /// Truncates the log to `index` (now safe: applied data up to it is flushed).
    pub fn compact(&mut self, index: u64, batch: &mut WriteBatch<'_>) {
        let index = index.min(self.apply.applied_index);
        if let Err(e) = self.node.mut_store().compact_to(index, batch) {
            warn!(range_id = self.range.id, error = %e, "log truncation failed");
            return;
        }
        if self.pending_compact.is_some_and(|p| p <= index) {
            self.pending_compact = None;
        }
    }

    /// The error telling a client where to go instead.
    pub fn not_leader(&self) -> KvError {
        let leader = self.leader_store().and_then(|store_id| {
            let addresses = self.addresses.read().expect("address book lock");
            addresses.get(&store_id).map(|addr| LeaderHint {
                store_id,
                addr: addr.clone(),
            })
        });
        KvError::NotLeader {
            range_id: self.range.id,
            leader,
        }
    }

    pub fn step(&mut self, msg: Message) {
        // Routine heartbeats do not count as activity, but they do wake a sleeper.
        let routine = matches!(
            msg.get_msg_type(),
            MessageType::MsgHeartbeat | MessageType::MsgHeartbeatResponse
        );
        if self.hibernating || !routine {
            self.wake();
        }
        self.heard_from(msg.from);
        if let Err(e) = self.node.step(msg) {
            debug!(range_id = self.range.id, error = %e, "dropped raft message");
        }
    }

    /// Campaigns to become leader (used to bootstrap quickly and in tests).
    pub fn campaign(&mut self) {
        self.wake();
        if let Err(e) = self.node.campaign() {
            debug!(range_id = self.range.id, error = %e, "campaign failed");
        }
    }

    /// Hands leadership to the replica on `store_id`.
    pub fn transfer_leader(&mut self, store_id: StoreId) -> Result<(), KvError> {
        self.wake();
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        let Some(target) = self.range.replica_on(store_id) else {
            return Err(KvError::RangeNotFound {
                range_id: self.range.id,
            });
        };
        if self.is_learner(target.id) {
            return Err(KvError::InvalidConfChange {
                range_id: self.range.id,
                reason: format!(
                    "the replica on store {store_id} is a learner; it can lead once promoted"
                ),
            });
        }
        self.node.transfer_leader(target.id);
        Ok(())
    }

    /// Queues one client's atomic write; the round's writes become one entry, and each
    /// gets its answer once that entry is applied (or known dropped).
    pub fn propose(&mut self, ops: Vec<WriteOp>, reply: WriteReply) {
        self.wake();
        if !self.is_leader() {
            let _ = reply.send(Err(self.not_leader()));
            return;
        }
        if let Some(busy) = self.frozen_busy() {
            let _ = reply.send(Err(busy));
            return;
        }
        if let Some(op) = ops.iter().find(|op| !self.range.contains(op.key())) {
            debug!(range_id = self.range.id, key = ?op.key(), "write outside range");
            let _ = reply.send(Err(KvError::KeyNotInRange {
                range_id: self.range.id,
            }));
            return;
        }
        METRICS.proposals.inc();
        self.write_batch.push((ops, reply));
    }

    /// Proposes a command of its own entry (id allocation, split).
    pub fn propose_command(&mut self, command: Command, reply: WriteReply) {
        self.wake();
        match self.check_merge_proposal(&command) {
            Ok(None) => {}
            Ok(Some(done)) => {
                let _ = reply.send(Ok(done));
                return;
            }
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        }
        if let Command::Split {
            epoch, split_key, ..
        } = &command
        {
            if *epoch != self.range.epoch {
                let _ = reply.send(Err(KvError::EpochNotMatch {
                    current: vec![self.range.clone()],
                }));
                return;
            }
            if let Err(reason) = check_split(&self.range, split_key) {
                let _ = reply.send(Err(KvError::InvalidSplit {
                    range_id: self.range.id,
                    reason,
                }));
                return;
            }
        }
        if let Command::IngestStaged { id, crc32, .. } = &command {
            match self.staged_ingest(*id, *crc32) {
                Ok(true) => {}
                Ok(false) => {
                    let _ = reply.send(Ok(Applied::Written));
                    return;
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                    return;
                }
            }
        }
        if command.ingest_in_range(&self.range) == Some(false) {
            let _ = reply.send(Err(KvError::KeyNotInRange {
                range_id: self.range.id,
            }));
            return;
        }
        self.propose_entry(command, vec![reply]);
    }

    /// Whether the staged file `id` (checksum `crc32`) may be proposed for ingest: `Ok(true)`
    /// if it is here and no entry names it yet, `Ok(false)` if an applied entry ingested
    /// it already (a retried request: nothing to do). A file named by an entry not yet
    /// applied is never proposed again (two entries could not both find the file),
    /// and a file not here cannot be.
    fn staged_ingest(&self, id: u128, crc32: u32) -> Result<bool, KvError> {
        let marker = keys::ingested_key(self.range.id, id, crc32);
        if let Ok(Some(_)) = self.engine.get(Cf::Raft, &marker) {
            return Ok(false);
        }
        let pending = self
            .unapplied_commands()
            .any(|c| matches!(c, Command::IngestStaged { id: other, .. } if other == id));
        if pending {
            return Err(KvError::ServerBusy {
                reason: "an ingest of this staged file is in flight".into(),
            });
        }
        if !staged_path(self.engine.staged_dir(), id, crc32).exists() {
            let store_id = self
                .range
                .replica(self.replica_id)
                .map_or(0, |r| r.store_id);
            return Err(KvError::NotStaged { store_id });
        }
        Ok(true)
    }

    /// The commands of entries in the log not yet applied here (leaders' own proposals
    /// among them).
    fn unapplied_commands(&self) -> impl Iterator<Item = Command> {
        let log = &self.node.raft.raft_log;
        let unapplied = log
            .entries(log.applied + 1, None, raft::GetEntriesContext::empty(false))
            .unwrap_or_default();
        unapplied
            .into_iter()
            .filter(|e| e.get_entry_type() == EntryType::EntryNormal)
            .filter_map(|e| Command::decode(&e.data).ok())
    }

    /// Whether a size check is due (once): `Written` when the range took `threshold`
    /// bytes of writes since the last check, `Stale` when it took any and the last check
    /// was `recheck_ticks` or more before tick `now`.
    pub fn take_split_check(
        &mut self,
        threshold: u64,
        now: u64,
        recheck_ticks: u64,
    ) -> Option<CheckDue> {
        let due = if now >= self.checked_at_tick + recheck_ticks && self.written_bytes > 0 {
            CheckDue::Stale
        } else if self.written_bytes >= threshold {
            CheckDue::Written(self.written_bytes)
        } else {
            return None;
        };
        self.written_bytes = 0;
        self.checked_at_tick = now;
        Some(due)
    }

    /// A check `take_split_check` called for could not be queued: its bytes count
    /// toward the next one.
    pub fn untake_split_check(&mut self, due: CheckDue) {
        if let CheckDue::Written(bytes) = due {
            self.written_bytes += bytes;
        }
    }

    /// Ranges created by splits applied since the last call.
    pub fn take_new_ranges(&mut self) -> Vec<RangeState> {
        std::mem::take(&mut self.new_ranges)
    }

    /// Proposes the writes that arrived this round as few entries as the bounds allow.
    pub fn flush_proposals(&mut self) {
        if self.write_batch.is_empty() {
            return;
        }
        let mut pending = std::mem::take(&mut self.write_batch).into_iter().peekable();
        while pending.peek().is_some() {
            let mut writes = Vec::new();
            let mut replies = Vec::new();
            let mut bytes = 0;
            while let Some((ops, _)) = pending.peek() {
                let size: usize = ops
                    .iter()
                    .map(|op| op.key().len() + write_value_len(op))
                    .sum();
                if !writes.is_empty()
                    && (writes.len() == PROPOSAL_WRITES_MAX || bytes + size > PROPOSAL_BYTES_MAX)
                {
                    break;
                }
                let (ops, reply) = pending.next().expect("peeked");
                bytes += size;
                writes.push(ops);
                replies.push(reply);
            }
            self.propose_entry(Command::Write { writes }, replies);
        }
    }

    fn propose_entry(&mut self, command: Command, replies: Vec<WriteReply>) {
        let fail = |replies: Vec<WriteReply>, err: KvError| {
            for r in replies {
                let _ = r.send(Err(err.clone()));
            }
        };
        if !self.is_leader() {
            return fail(replies, self.not_leader());
        }
        let before = self.node.raft.raft_log.last_index();
        match self.node.propose(Vec::new(), command.encode()) {
            Ok(()) => {
                let index = self.node.raft.raft_log.last_index();
                assert_eq!(
                    index,
                    before + 1,
                    "range {}: one proposal, one entry",
                    self.range.id
                );
                if !matches!(command, Command::Write { .. }) {
                    // Followers must apply splits, ingests and the like promptly (a
                    // follower's store checks requests against its own epoch), so their
                    // commits go out at once.
                    self.node.skip_bcast_commit(false);
                    self.bcast_commit_until = Some(index);
                }
                self.proposals.push_back(Proposal {
                    index,
                    term: self.node.raft.term,
                    replies,
                });
            }
            Err(raft::Error::ProposalDropped) => fail(
                replies,
                KvError::ServerBusy {
                    reason:
                        "raft dropped the proposal (leader transfer or too much uncommitted data)"
                            .into(),
                },
            ),
            Err(e) => fail(
                replies,
                KvError::Storage {
                    message: e.to_string(),
                },
            ),
        }
    }

    /// Queues a linearizable read; it proceeds once the leader has confirmed its commit
    /// index with a quorum and this replica has applied up to it.
    pub fn read(&mut self, reply: ReadReply) {
        self.wake();
        if !self.is_leader() {
            let _ = reply.send(Err(self.not_leader()));
            return;
        }
        // Once frozen, the target may take the keys over on some store and write them:
        // reads wait for the merge to settle (or roll back).
        if let Some(busy) = self.frozen_busy() {
            let _ = reply.send(Err(busy));
            return;
        }
        METRICS.reads.inc();
        self.reads.push(reply);
    }

    /// Serves this round's reads under the lease, or issues one ReadIndex request for
    /// them all. Renews the lease ahead of its expiry while reads keep coming.
    pub fn flush_reads(&mut self, now: Instant) {
        if !self.reads.has_batch() {
            return;
        }
        if !self.is_leader() {
            self.reads.refuse_batch(&self.not_leader());
            return;
        }
        // raft-rs ignores ReadIndex until the leader has committed an entry of its term;
        // the reads wait for that here instead of being lost.
        if !self.node.raft.commit_to_current_term() {
            return;
        }
        let transferring = self.node.raft.lead_transferee.is_some();
        if let Some(id) = self.reads.flush(now, self.commit_index(), transferring) {
            self.node.read_index(read_ctx(id));
        }
        self.serve_reads();
    }

    /// Answers, in order, the reads whose index this replica has applied.
    fn serve_reads(&mut self) {
        self.reads.serve(self.apply.applied_index, &self.range);
    }

    /// Takes the ready state, if any: sendable messages into `outbox`, new entries and
    /// hard state into `batch` (the round's durable batch). Committed entries are applied
    /// later, in `finish_ready`, into the apply batch: no apply state is ever written
    /// through the WAL, so it can never claim data that a crash took away.
    pub fn collect_ready(
        &mut self,
        batch: &mut WriteBatch<'_>,
        outbox: &mut Vec<Message>,
    ) -> Option<raft::Ready> {
        if !self.node.has_ready() {
            return None;
        }
        let mut ready = self.node.ready();
        if let Some(ss) = ready.ss() {
            self.on_role_change(ss.raft_state);
        }
        outbox.extend(ready.take_messages());
        if !ready.snapshot().is_empty() {
            let snapshot = ready.snapshot().clone();
            self.apply_snapshot(&snapshot, batch);
        }
        for rs in ready.take_read_states() {
            self.reads.on_read_state(&rs.request_ctx, rs.index);
        }
        METRICS.log_entries.inc_by(ready.entries().len() as u64);
        self.node.mut_store().append(ready.entries(), batch);
        if let Some(hs) = ready.hs() {
            self.node.mut_store().set_hard_state(hs.clone(), batch);
        }
        Some(ready)
    }

    /// Finishes a ready once its batch is written (not yet synced): entries committed
    /// meanwhile are applied into `batch`. Returns the ready's number and the messages
    /// that may go only once it is on disk; `persisted` says when it is.
    pub fn finish_ready(
        &mut self,
        mut ready: raft::Ready,
        batch: &mut WriteBatch<'_>,
    ) -> (u64, Vec<Message>) {
        let number = ready.number();
        let after_sync = ready.take_persisted_messages();
        let committed = ready.take_committed_entries();
        self.apply_entries(&committed, batch);
        self.node.advance_append_async(ready);
        (number, after_sync)
    }

    /// Every ready up to `number` is on disk. What that unlocks (a leader's own vote
    /// toward a commit, entries to apply) shows up in the next ready.
    pub fn persisted(&mut self, number: u64) {
        self.node.on_persist_ready(number);
    }

    /// After the round's apply batch is written: answers writes and reads that are done.
    pub fn after_apply(&mut self) {
        self.node.advance_apply();
        if self
            .bcast_commit_until
            .is_some_and(|until| self.apply.applied_index >= until || !self.is_leader())
        {
            self.bcast_commit_until = None;
            self.node.skip_bcast_commit(true);
        }
        for (reply, response) in self.done.drain(..) {
            let _ = reply.send(response);
        }
        self.serve_reads();
    }

    fn on_role_change(&mut self, role: StateRole) {
        info!(
            range_id = self.range.id,
            term = self.node.raft.term,
            ?role,
            leader = self.node.raft.leader_id,
            "raft role changed"
        );
        if role != StateRole::Leader {
            self.reads.lose_leadership(&self.not_leader());
        }
        // A new leader has heard from nobody yet; a follower tracks no one.
        self.heard_learners.clear();
    }
}

/// The exclusive end of a range's span as a concrete key (an empty end means "no end").
pub fn span_end(range: &RangeDescriptor) -> Bytes {
    if range.end_key.is_empty() {
        key_space_end()
    } else {
        range.end_key.clone()
    }
}

/// A bound past every key a client can write.
pub fn key_space_end() -> Bytes {
    Bytes::from(vec![0xff; KEY_BYTES_MAX + 1])
}

pub(super) fn write_value_len(op: &WriteOp) -> usize {
    match op {
        WriteOp::Put { value, .. } => value.len(),
        WriteOp::Delete { .. } => 0,
    }
}
