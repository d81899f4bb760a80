//! One replica of a range: its raft-rs node, the proposals and reads waiting on it, and
//! the state machine that applies committed commands to the data column family. It does
//! no I/O of its own: writes go into the store round's WriteBatch and messages into an
//! outbox that the store loop sends.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft::eraftpb::{Entry, EntryType, Message};
use raft::{RawNode, StateRole};
use shale_rpc::limits::KEY_BYTES_MAX;
use shale_rpc::{
    Epoch, KvError, LeaderHint, RangeDescriptor, ReplicaId, StoreId, WriteOp, ID_ALLOC_KEY,
    SYSTEM_PREFIX_END,
};
use tokio::sync::oneshot;
use tracing::{debug, info};

use crate::command::{Applied, ApplyState, Command, RangeState, ReplicaState};
use crate::config::RaftConfig;
use crate::engine::{Cf, Engine, WriteBatch};
use crate::keys;
use crate::raft_logger::range_logger;
use crate::replica_storage::ReplicaStorage;
use crate::StorageError;

/// Where stores can be reached, for leader hints and message routing.
pub type AddressBook = Arc<RwLock<HashMap<StoreId, String>>>;

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

/// One Raft entry in flight and the clients waiting on its writes, in order.
struct Proposal {
    index: u64,
    term: u64,
    replies: Vec<WriteReply>,
}

struct PendingRead {
    /// ReadIndex context; 0 for reads served under the lease.
    id: u64,
    /// The commit index the read must wait for, once the leader has confirmed it.
    index: Option<u64>,
    waiters: Vec<ReadReply>,
    issued_at: Instant,
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
    /// Reads that arrived this round; they share one ReadIndex request.
    read_batch: Vec<ReadReply>,
    reads: VecDeque<PendingRead>,
    next_read_id: u64,
    /// Answers to send once the round's writes are on disk.
    done: Vec<(WriteReply, ApplyResult)>,
    /// Ranges this replica's splits created, for the store loop to start.
    new_ranges: Vec<RangeState>,
    /// The id counter, once read (this replica is its only writer).
    next_id: Option<u64>,
    /// Bytes written since the last split check.
    written_bytes: u64,
    engine: Arc<Engine>,
    addresses: AddressBook,
    /// Until then a quorum has promised not to elect another leader: reads need no
    /// ReadIndex round. Renewed by every ReadIndex confirmation.
    lease_until: Option<Instant>,
    lease: Duration,
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
        let apply = match engine.get(Cf::Meta, &keys::apply_state_key(range.id))? {
            Some(b) => ApplyState::decode(&b)?,
            None => ApplyState::default(),
        };
        let storage = ReplicaStorage::load(engine.clone(), range.id, &apply)?;
        let raft_config = raft::Config {
            id: replica_id,
            election_tick: config.election_ticks,
            heartbeat_tick: config.heartbeat_ticks,
            applied: apply.applied_index,
            max_size_per_msg: config.max_size_per_msg_bytes,
            max_inflight_msgs: config.max_inflight_msgs,
            check_quorum: true,
            pre_vote: true,
            batch_append: true,
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
            read_batch: Vec::new(),
            reads: VecDeque::new(),
            next_read_id: 1,
            done: Vec::new(),
            new_ranges: Vec::new(),
            next_id: None,
            written_bytes: 0,
            engine,
            addresses,
            lease_until: None,
            lease: config.lease(),
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

    pub fn commit_index(&self) -> u64 {
        self.node.raft.raft_log.committed
    }

    /// The store holding the leader, if known.
    pub fn leader_store(&self) -> Option<StoreId> {
        let leader = self.node.raft.leader_id;
        self.range.replica(leader).map(|r| r.store_id)
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

    pub fn tick(&mut self) {
        self.node.tick();
    }

    pub fn step(&mut self, msg: Message) {
        if let Err(e) = self.node.step(msg) {
            debug!(range_id = self.range.id, error = %e, "dropped raft message");
        }
    }

    /// Campaigns to become leader (used to bootstrap quickly and in tests).
    pub fn campaign(&mut self) {
        if let Err(e) = self.node.campaign() {
            debug!(range_id = self.range.id, error = %e, "campaign failed");
        }
    }

    /// Hands leadership to the replica on `store_id`.
    pub fn transfer_leader(&mut self, store_id: StoreId) -> Result<(), KvError> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        let Some(target) = self.range.replica_on(store_id) else {
            return Err(KvError::RangeNotFound {
                range_id: self.range.id,
            });
        };
        self.node.transfer_leader(target.id);
        Ok(())
    }

    /// Queues one client's atomic write; the round's writes become one entry, and each
    /// gets its answer once that entry is applied (or known dropped).
    pub fn propose(&mut self, ops: Vec<WriteOp>, reply: WriteReply) {
        if !self.is_leader() {
            let _ = reply.send(Err(self.not_leader()));
            return;
        }
        if let Some(op) = ops.iter().find(|op| !self.range.contains(op.key())) {
            debug!(range_id = self.range.id, key = ?op.key(), "write outside range");
            let _ = reply.send(Err(KvError::KeyNotInRange {
                range_id: self.range.id,
            }));
            return;
        }
        self.write_batch.push((ops, reply));
    }

    /// Proposes a command of its own entry (id allocation, split).
    pub fn propose_command(&mut self, command: Command, reply: WriteReply) {
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
        self.propose_entry(command, vec![reply]);
    }

    /// True (once) when the range took `threshold` bytes of writes since the last check.
    pub fn take_split_check(&mut self, threshold: u64) -> bool {
        if self.written_bytes < threshold {
            return false;
        }
        self.written_bytes = 0;
        true
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
        if !self.is_leader() {
            let _ = reply.send(Err(self.not_leader()));
            return;
        }
        self.read_batch.push(reply);
    }

    /// Serves this round's reads under the lease, or issues one ReadIndex request for
    /// them all. Renews the lease ahead of its expiry while reads keep coming.
    pub fn flush_reads(&mut self, now: Instant) {
        if self.read_batch.is_empty() {
            return;
        }
        if !self.is_leader() {
            let err = self.not_leader();
            for r in self.read_batch.drain(..) {
                let _ = r.send(Err(err.clone()));
            }
            return;
        }
        // raft-rs ignores ReadIndex until the leader has committed an entry of its term;
        // the reads wait for that here instead of being lost.
        if !self.node.raft.commit_to_current_term() {
            return;
        }
        let waiters = std::mem::take(&mut self.read_batch);
        let in_lease = self.lease_until.is_some_and(|until| now < until)
            && self.node.raft.lead_transferee.is_none();
        if in_lease {
            let index = self.commit_index();
            self.reads.push_back(PendingRead {
                id: 0,
                index: Some(index),
                waiters,
                issued_at: now,
            });
            let renew_at = self.lease_until.expect("in lease") - self.lease / 3;
            if now >= renew_at && !self.reads.iter().any(|r| r.index.is_none()) {
                self.read_index(Vec::new(), now);
            }
            self.serve_reads();
        } else {
            self.read_index(waiters, now);
        }
    }

    fn read_index(&mut self, waiters: Vec<ReadReply>, now: Instant) {
        let id = self.next_read_id;
        self.next_read_id += 1;
        self.node.read_index(id.to_be_bytes().to_vec());
        self.reads.push_back(PendingRead {
            id,
            index: None,
            waiters,
            issued_at: now,
        });
    }

    /// Answers, in order, the reads whose index this replica has applied.
    fn serve_reads(&mut self) {
        while let Some(read) = self.reads.front() {
            match read.index {
                Some(index) if index <= self.apply.applied_index => {
                    let read = self.reads.pop_front().expect("front exists");
                    for w in read.waiters {
                        let _ = w.send(Ok(self.range.clone()));
                    }
                }
                _ => break,
            }
        }
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
        assert!(
            ready.snapshot().data.is_empty(),
            "range {}: snapshots are not produced yet",
            self.range.id
        );
        for rs in ready.take_read_states() {
            self.on_read_state(&rs.request_ctx, rs.index);
        }
        self.node.mut_store().append(ready.entries(), batch);
        if let Some(hs) = ready.hs() {
            self.node.mut_store().set_hard_state(hs.clone(), batch);
        }
        Some(ready)
    }

    /// Finishes a ready after its batch is on disk: messages that needed persistence go
    /// into `outbox`; entries committed meanwhile are applied into `batch`.
    pub fn finish_ready(
        &mut self,
        mut ready: raft::Ready,
        batch: &mut WriteBatch<'_>,
        outbox: &mut Vec<Message>,
    ) {
        outbox.extend(ready.take_persisted_messages());
        let committed = ready.take_committed_entries();
        self.apply_entries(&committed, batch);
        let mut light = self.node.advance(ready);
        if let Some(commit) = light.commit_index() {
            let mut hs = self.node.store().hard_state().clone();
            hs.commit = commit;
            self.node.mut_store().set_hard_state(hs, batch);
        }
        outbox.extend(light.take_messages());
        let committed = light.take_committed_entries();
        self.apply_entries(&committed, batch);
    }

    /// After the round's apply batch is written: answers writes and reads that are done.
    pub fn after_apply(&mut self) {
        self.node.advance_apply();
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
            self.lease_until = None;
            let err = self.not_leader();
            for read in self.reads.drain(..) {
                for w in read.waiters {
                    let _ = w.send(Err(err.clone()));
                }
            }
        }
    }

    fn on_read_state(&mut self, ctx: &[u8], index: u64) {
        let Ok(id) = <[u8; 8]>::try_from(ctx).map(u64::from_be_bytes) else {
            return;
        };
        if let Some(read) = self.reads.iter_mut().find(|r| r.id == id) {
            read.index = Some(index);
            // A quorum heard from this leader after the request was issued: none of them
            // votes for another candidate within an election timeout of that.
            let until = read.issued_at + self.lease;
            self.lease_until = Some(self.lease_until.map_or(until, |u| u.max(until)));
        }
    }

    fn apply_entries(&mut self, entries: &[Entry], batch: &mut WriteBatch<'_>) {
        let Some(last) = entries.last() else {
            return;
        };
        for entry in entries {
            assert_eq!(
                entry.index,
                self.apply.applied_index + 1,
                "range {}: entries apply in order",
                self.range.id
            );
            let responses = self.apply_entry(entry, batch);
            self.apply.applied_index = entry.index;
            self.apply.applied_term = entry.term;
            self.answer_proposal(entry, responses);
        }
        assert!(
            last.index <= self.commit_index(),
            "range {}: applied past commit",
            self.range.id
        );
        batch.put(
            Cf::Meta,
            &keys::apply_state_key(self.range.id),
            &self.apply.encode(),
        );
    }

    /// Applies one entry; returns the answer of each client request it carries.
    fn apply_entry(&mut self, entry: &Entry, batch: &mut WriteBatch<'_>) -> Vec<ApplyResult> {
        if entry.data.is_empty() {
            return Vec::new(); // a new leader's empty entry
        }
        match entry.get_entry_type() {
            EntryType::EntryNormal => {}
            other => panic!(
                "range {}: entry type {other:?} is not produced yet",
                self.range.id
            ),
        }
        let command = match Command::decode(&entry.data) {
            Ok(c) => c,
            Err(e) => panic!(
                "range {}: committed entry {} does not decode: {e}",
                self.range.id, entry.index
            ),
        };
        match command {
            Command::Write { writes } => writes
                .into_iter()
                .map(|ops| self.apply_write(ops, batch))
                .collect(),
            Command::AllocIds { count } => vec![self.apply_alloc_ids(count, batch)],
            Command::Split {
                epoch,
                split_key,
                right,
            } => vec![self.apply_split(epoch, split_key, right, batch)],
        }
    }

    fn apply_write(&mut self, ops: Vec<WriteOp>, batch: &mut WriteBatch<'_>) -> ApplyResult {
        if ops.iter().any(|op| !self.range.contains(op.key())) {
            return Err(KvError::KeyNotInRange {
                range_id: self.range.id,
            });
        }
        self.written_bytes += ops
            .iter()
            .map(|op| (op.key().len() + write_value_len(op)) as u64)
            .sum::<u64>();
        for op in ops {
            match op {
                WriteOp::Put { key, value } => batch.put(Cf::Data, &key, &value),
                WriteOp::Delete { key } => batch.delete(Cf::Data, &key),
            }
        }
        Ok(Applied::Written)
    }

    fn apply_alloc_ids(&mut self, count: u32, batch: &mut WriteBatch<'_>) -> ApplyResult {
        if !self.range.contains(ID_ALLOC_KEY) {
            return Err(KvError::KeyNotInRange {
                range_id: self.range.id,
            });
        }
        let next = match self.next_id {
            Some(n) => n,
            None => read_id_counter(&self.engine, self.range.id)?,
        };
        let after = next + u64::from(count);
        batch.put(Cf::Data, ID_ALLOC_KEY, &after.to_be_bytes());
        self.next_id = Some(after);
        Ok(Applied::Ids { first: next, count })
    }

    /// Narrows this range to `[start, split_key)` and creates `right` for the rest: its
    /// descriptor, apply state and Raft state land in the same batch as ours, so every
    /// replica has both ranges or neither.
    fn apply_split(
        &mut self,
        epoch: Epoch,
        split_key: Bytes,
        right: RangeDescriptor,
        batch: &mut WriteBatch<'_>,
    ) -> ApplyResult {
        let range_id = self.range.id;
        if epoch != self.range.epoch {
            return Err(KvError::EpochNotMatch {
                current: vec![self.range.clone()],
            });
        }
        if let Err(reason) = check_split(&self.range, &split_key) {
            return Err(KvError::InvalidSplit { range_id, reason });
        }
        let mut left = self.range.clone();
        left.end_key = split_key.clone();
        left.epoch.version += 1;
        let right = RangeDescriptor {
            start_key: split_key,
            end_key: self.range.end_key.clone(),
            epoch: left.epoch,
            ..right
        };
        assert!(
            left.epoch > self.range.epoch,
            "range {range_id}: epochs only rise"
        );
        assert_eq!(
            right.replicas.len(),
            left.replicas.len(),
            "range {range_id}: split keeps the replica count"
        );
        let left_state = RangeState {
            descriptor: left.clone(),
            state: ReplicaState::Normal,
        };
        let right_state = RangeState {
            descriptor: right.clone(),
            state: ReplicaState::Normal,
        };
        batch.put(
            Cf::Meta,
            &keys::range_state_key(left.id),
            &left_state.encode(),
        );
        batch.put(
            Cf::Meta,
            &keys::range_state_key(right.id),
            &right_state.encode(),
        );
        batch.put(
            Cf::Meta,
            &keys::apply_state_key(right.id),
            &ApplyState::for_split().encode(),
        );
        let voters = right.replicas.iter().map(|r| r.id).collect();
        ReplicaStorage::bootstrap_split(batch, right.id, voters);
        info!(range_id, right_id = right.id, split_key = ?right.start_key, "range split");
        self.range = left.clone();
        self.new_ranges.push(right_state);
        Ok(Applied::Split {
            left: Box::new(left),
            right: Box::new(right),
        })
    }

    fn answer_proposal(&mut self, entry: &Entry, responses: Vec<ApplyResult>) {
        while let Some(p) = self.proposals.front() {
            if p.index > entry.index {
                return;
            }
            let p = self.proposals.pop_front().expect("front exists");
            if p.index == entry.index && p.term == entry.term {
                assert_eq!(
                    p.replies.len(),
                    responses.len(),
                    "range {}: one answer per write",
                    self.range.id
                );
                self.done.extend(p.replies.into_iter().zip(responses));
                return;
            }
            // Its entry was replaced by another leader's: it will never apply.
            for r in p.replies {
                self.done.push((r, Err(KvError::ProposalDropped)));
            }
        }
    }
}

/// Why `split_key` cannot split `range`, if it cannot.
fn check_split(range: &RangeDescriptor, split_key: &[u8]) -> Result<(), String> {
    if split_key <= &range.start_key[..] {
        return Err("the split key must lie after the range's start".into());
    }
    if !range.end_key.is_empty() && split_key >= &range.end_key[..] {
        return Err("the split key must lie before the range's end".into());
    }
    if split_key < SYSTEM_PREFIX_END {
        return Err("system keys stay in the first range".into());
    }
    if split_key.len() > KEY_BYTES_MAX {
        return Err(format!(
            "the split key is longer than {KEY_BYTES_MAX} bytes"
        ));
    }
    Ok(())
}

fn read_id_counter(engine: &Engine, range_id: u64) -> Result<u64, KvError> {
    let stored = engine
        .get(Cf::Data, ID_ALLOC_KEY)
        .map_err(|e| KvError::Storage {
            message: e.to_string(),
        })?;
    match stored {
        None => Ok(FIRST_ALLOCATED_ID),
        Some(b) => match <[u8; 8]>::try_from(&b[..]) {
            Ok(arr) => Ok(u64::from_be_bytes(arr)),
            Err(_) => panic!(
                "range {range_id}: id counter holds {} bytes, not 8",
                b.len()
            ),
        },
    }
}

/// The first id the allocator hands out: far above any store id an operator would
/// choose, because bootstrap replicas take their store's id.
pub const FIRST_ALLOCATED_ID: u64 = 1 << 32;

fn write_value_len(op: &WriteOp) -> usize {
    match op {
        WriteOp::Put { value, .. } => value.len(),
        WriteOp::Delete { .. } => 0,
    }
}
