//! One replica of a range: its raft-rs node, the proposals and reads waiting on it, and
//! the state machine that applies committed commands to the data column family. It does
//! no I/O of its own: writes go into the store round's WriteBatch and messages into an
//! outbox that the store loop sends.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, RwLock};

use raft::eraftpb::{Entry, EntryType, Message};
use raft::{RawNode, StateRole};
use shale_rpc::{
    KvError, KvReply, KvResponse, LeaderHint, RangeDescriptor, ReplicaId, StoreId, WriteOp,
};
use tokio::sync::oneshot;
use tracing::{debug, info};

use crate::command::{ApplyState, Command, RangeState};
use crate::config::RaftConfig;
use crate::engine::{Cf, Engine, WriteBatch};
use crate::keys;
use crate::raft_logger::range_logger;
use crate::replica_storage::ReplicaStorage;
use crate::StorageError;

/// Where stores can be reached, for leader hints and message routing.
pub type AddressBook = Arc<RwLock<HashMap<StoreId, String>>>;

/// Answer channel of a write.
pub type WriteReply = oneshot::Sender<KvResponse>;
/// Answer channel of a read: the range's descriptor once the read may proceed.
pub type ReadReply = oneshot::Sender<Result<RangeDescriptor, KvError>>;

struct Proposal {
    index: u64,
    term: u64,
    reply: WriteReply,
}

struct PendingRead {
    id: u64,
    /// The commit index the read must wait for, once the leader has confirmed it.
    index: Option<u64>,
    waiters: Vec<ReadReply>,
}

/// One range's replica on this store.
pub struct Replica {
    pub range: RangeDescriptor,
    pub replica_id: ReplicaId,
    node: RawNode<ReplicaStorage>,
    apply: ApplyState,
    proposals: VecDeque<Proposal>,
    /// Reads that arrived this round; they share one ReadIndex request.
    read_batch: Vec<ReadReply>,
    reads: VecDeque<PendingRead>,
    next_read_id: u64,
    /// Answers to send once the round's writes are on disk.
    done: Vec<(WriteReply, KvResponse)>,
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
        let range = state.descriptor;
        let replica_id = range
            .replica_on(store_id)
            .ok_or_else(|| StorageError::Corruption(format!("range {} has no replica on store {store_id}", range.id)))?
            .id;
        let apply = match engine.get(Cf::Meta, &keys::apply_state_key(range.id))? {
            Some(b) => ApplyState::decode(&b)?,
            None => ApplyState::default(),
        };
        let storage = ReplicaStorage::load(engine, range.id, &apply)?;
        let raft_config = raft::Config {
            id: replica_id,
            election_tick: config.election_ticks,
            heartbeat_tick: config.heartbeat_ticks,
            applied: apply.applied_index,
            max_size_per_msg: config.max_size_per_msg_bytes,
            max_inflight_msgs: config.max_inflight_msgs,
            check_quorum: true,
            pre_vote: true,
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
            read_batch: Vec::new(),
            reads: VecDeque::new(),
            next_read_id: 1,
            done: Vec::new(),
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
            return Err(KvError::RangeNotFound { range_id: self.range.id });
        };
        self.node.transfer_leader(target.id);
        Ok(())
    }

    /// Proposes a write; the answer comes once it is applied (or known dropped).
    pub fn propose(&mut self, command: Command, reply: WriteReply) {
        if !self.is_leader() {
            let _ = reply.send(Err(self.not_leader()));
            return;
        }
        let Command::Write { ops } = &command;
        if let Some(op) = ops.iter().find(|op| !self.range.contains(op.key())) {
            debug!(range_id = self.range.id, key = ?op.key(), "write outside range");
            let _ = reply.send(Err(KvError::KeyNotInRange { range_id: self.range.id }));
            return;
        }
        let before = self.node.raft.raft_log.last_index();
        match self.node.propose(Vec::new(), command.encode()) {
            Ok(()) => {
                let index = self.node.raft.raft_log.last_index();
                assert_eq!(index, before + 1, "range {}: one proposal, one entry", self.range.id);
                self.proposals.push_back(Proposal {
                    index,
                    term: self.node.raft.term,
                    reply,
                });
            }
            Err(raft::Error::ProposalDropped) => {
                let _ = reply.send(Err(KvError::ServerBusy {
                    reason: "raft dropped the proposal (leader transfer or too much uncommitted data)".into(),
                }));
            }
            Err(e) => {
                let _ = reply.send(Err(KvError::Storage { message: e.to_string() }));
            }
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

    /// Issues one ReadIndex request for all reads that arrived this round.
    pub fn flush_reads(&mut self) {
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
        let id = self.next_read_id;
        self.next_read_id += 1;
        self.node.read_index(id.to_be_bytes().to_vec());
        self.reads.push_back(PendingRead {
            id,
            index: None,
            waiters: std::mem::take(&mut self.read_batch),
        });
    }

    /// Takes the ready state, if any: sendable messages into `outbox`, committed entries
    /// applied and new entries and hard state persisted into `batch`.
    pub fn collect_ready(&mut self, batch: &mut WriteBatch<'_>, outbox: &mut Vec<Message>) -> Option<raft::Ready> {
        if !self.node.has_ready() {
            return None;
        }
        let mut ready = self.node.ready();
        if let Some(ss) = ready.ss() {
            self.on_role_change(ss.raft_state);
        }
        outbox.extend(ready.take_messages());
        assert!(ready.snapshot().data.is_empty(), "range {}: snapshots are not produced yet", self.range.id);
        for rs in ready.take_read_states() {
            self.on_read_state(&rs.request_ctx, rs.index);
        }
        let committed = ready.take_committed_entries();
        self.apply_entries(&committed, batch);
        self.node.mut_store().append(ready.entries(), batch);
        if let Some(hs) = ready.hs() {
            self.node.mut_store().set_hard_state(hs.clone(), batch);
        }
        Some(ready)
    }

    /// Finishes a ready after its batch is on disk: messages that needed persistence go
    /// into `outbox`; entries committed meanwhile are applied into `batch`.
    pub fn finish_ready(&mut self, mut ready: raft::Ready, batch: &mut WriteBatch<'_>, outbox: &mut Vec<Message>) {
        outbox.extend(ready.take_persisted_messages());
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

    fn on_role_change(&mut self, role: StateRole) {
        info!(range_id = self.range.id, term = self.node.raft.term, ?role, leader = self.node.raft.leader_id, "raft role changed");
        if role != StateRole::Leader {
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
            let response = self.apply_entry(entry, batch);
            self.apply.applied_index = entry.index;
            self.apply.applied_term = entry.term;
            self.answer_proposal(entry, response);
        }
        assert!(last.index <= self.commit_index(), "range {}: applied past commit", self.range.id);
        batch.put(Cf::Meta, &keys::apply_state_key(self.range.id), &self.apply.encode());
    }

    fn apply_entry(&mut self, entry: &Entry, batch: &mut WriteBatch<'_>) -> KvResponse {
        if entry.data.is_empty() {
            return Ok(KvReply::Written); // a new leader's empty entry
        }
        match entry.get_entry_type() {
            EntryType::EntryNormal => {}
            other => panic!("range {}: entry type {other:?} is not produced yet", self.range.id),
        }
        let command = match Command::decode(&entry.data) {
            Ok(c) => c,
            Err(e) => panic!("range {}: committed entry {} does not decode: {e}", self.range.id, entry.index),
        };
        match command {
            Command::Write { ops } => {
                if ops.iter().any(|op| !self.range.contains(op.key())) {
                    return Err(KvError::KeyNotInRange { range_id: self.range.id });
                }
                for op in &ops {
                    match op {
                        WriteOp::Put { key, value } => batch.put(Cf::Data, key, value),
                        WriteOp::Delete { key } => batch.delete(Cf::Data, key),
                    }
                }
                Ok(KvReply::Written)
            }
        }
    }

    fn answer_proposal(&mut self, entry: &Entry, response: KvResponse) {
        while let Some(p) = self.proposals.front() {
            if p.index > entry.index {
                return;
            }
            let p = self.proposals.pop_front().expect("front exists");
            if p.index == entry.index && p.term == entry.term {
                self.done.push((p.reply, response));
                return;
            }
            // Its entry was replaced by another leader's: it will never apply.
            self.done.push((p.reply, Err(KvError::ProposalDropped)));
        }
    }
}
