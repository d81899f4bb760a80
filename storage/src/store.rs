//! The store-wide Raft loop. One thread drives every replica on the store: each round it
//! takes queued messages, ticks, then persists all ready replicas' log entries, hard state
//! and applied data in one WriteBatch with one fsync, and sends the outgoing Raft messages
//! batched per target store.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use protobuf::Message as _;
use raft::eraftpb::Message;
use shale_rpc::{
    Epoch, KvError, RaftBatch, RaftEnvelope, RangeDescriptor, RangeId, RangeStatus, StoreId,
    WriteOp,
};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::command::{Command, RangeState};
use crate::config::{RaftConfig, StoreConfig};
use crate::engine::{Durability, Engine};
use crate::replica::{AddressBook, ReadReply, Replica, WriteReply};

/// What the store loop is asked to do.
pub enum StoreMsg {
    /// Raft traffic from another store.
    Raft(RaftBatch),
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
    /// The local range with this id.
    Describe {
        range_id: RangeId,
        reply: oneshot::Sender<Option<RangeDescriptor>>,
    },
    Campaign {
        range_id: RangeId,
    },
    Status {
        reply: oneshot::Sender<Vec<RangeStatus>>,
    },
    Shutdown,
}

/// Where outgoing Raft batches go.
pub trait RaftSender: Send + 'static {
    fn send(&mut self, batch: RaftBatch);
}

/// The loop's state: every replica on the store.
pub struct Store<S: RaftSender> {
    store_id: StoreId,
    engine: Arc<Engine>,
    replicas: BTreeMap<RangeId, Replica>,
    sender: S,
    tick: Duration,
    round_msgs_max: usize,
    raft: RaftConfig,
    addresses: AddressBook,
    /// Where ranges due for a size check go (checked off the loop thread).
    split_checks: Option<tokio::sync::mpsc::Sender<RangeDescriptor>>,
    split_check_bytes: u64,
}

impl<S: RaftSender> Store<S> {
    pub fn new(
        config: &StoreConfig,
        engine: Arc<Engine>,
        replicas: Vec<Replica>,
        sender: S,
        addresses: AddressBook,
        split_checks: Option<tokio::sync::mpsc::Sender<RangeDescriptor>>,
    ) -> Self {
        Store {
            store_id: config.store_id,
            engine,
            replicas: replicas.into_iter().map(|r| (r.range.id, r)).collect(),
            sender,
            tick: Duration::from_millis(config.raft.tick_ms),
            round_msgs_max: config.limits.round_msgs_max,
            raft: config.raft.clone(),
            addresses,
            split_checks,
            split_check_bytes: config.split.check_after_written_bytes,
        }
    }

    /// Runs rounds until told to shut down or every sender is gone.
    pub fn run(mut self, rx: Receiver<StoreMsg>) {
        info!(
            store_id = self.store_id,
            ranges = self.replicas.len(),
            "store loop started"
        );
        let mut next_tick = Instant::now() + self.tick;
        let mut running = true;
        while running {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(msg) => running = self.handle(msg),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => running = false,
            }
            for _ in 1..self.round_msgs_max {
                if !running {
                    break;
                }
                match rx.try_recv() {
                    Ok(msg) => running = self.handle(msg),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => running = false,
                }
            }
            if Instant::now() >= next_tick {
                for r in self.replicas.values_mut() {
                    r.tick();
                }
                self.request_split_checks();
                next_tick = Instant::now() + self.tick;
            }
            let now = Instant::now();
            for r in self.replicas.values_mut() {
                r.flush_proposals();
                r.flush_reads(now);
            }
            self.round();
        }
        info!(store_id = self.store_id, "store loop stopped");
    }

    /// Handles one message; false means stop.
    fn handle(&mut self, msg: StoreMsg) -> bool {
        match msg {
            StoreMsg::Raft(batch) => self.on_raft(batch),
            StoreMsg::Write {
                range_id,
                epoch,
                ops,
                reply,
            } => match self.checked(range_id, epoch) {
                Ok(r) => r.propose(ops, reply),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            StoreMsg::Read {
                range_id,
                epoch,
                reply,
            } => match self.checked(range_id, epoch) {
                Ok(r) => r.read(reply),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            StoreMsg::Propose {
                range_id,
                epoch,
                command,
                reply,
            } => match self.checked(range_id, epoch) {
                Ok(r) => r.propose_command(command, reply),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            StoreMsg::FindRange { key, reply } => {
                let found = self
                    .replicas
                    .values()
                    .find(|r| r.range.contains(&key))
                    .map(|r| r.range.clone());
                let _ = reply.send(found);
            }
            StoreMsg::Describe { range_id, reply } => {
                let _ = reply.send(self.replicas.get(&range_id).map(|r| r.range.clone()));
            }
            StoreMsg::TransferLeader {
                range_id,
                to_store,
                reply,
            } => {
                let result = match self.replicas.get_mut(&range_id) {
                    Some(r) => r.transfer_leader(to_store),
                    None => Err(KvError::RangeNotFound { range_id }),
                };
                let _ = reply.send(result);
            }
            StoreMsg::Campaign { range_id } => {
                if let Some(r) = self.replicas.get_mut(&range_id) {
                    r.campaign();
                }
            }
            StoreMsg::Status { reply } => {
                let _ = reply.send(self.status());
            }
            StoreMsg::Shutdown => return false,
        }
        true
    }

    fn checked(
        &mut self,
        range_id: RangeId,
        epoch: Option<Epoch>,
    ) -> Result<&mut Replica, KvError> {
        let r = self
            .replicas
            .get_mut(&range_id)
            .ok_or(KvError::RangeNotFound { range_id })?;
        match epoch {
            Some(e) if e != r.range.epoch => Err(KvError::EpochNotMatch {
                current: vec![r.range.clone()],
            }),
            _ => Ok(r),
        }
    }

    fn on_raft(&mut self, batch: RaftBatch) {
        if batch.to_store != self.store_id {
            warn!(
                store_id = self.store_id,
                to = batch.to_store,
                from = batch.from_store,
                "raft batch for another store"
            );
            return;
        }
        for env in batch.messages {
            let Some(replica) = self.replicas.get_mut(&env.range_id) else {
                debug!(
                    range_id = env.range_id,
                    "raft message for a range not on this store"
                );
                continue;
            };
            match Message::parse_from_bytes(&env.message) {
                Ok(m) => replica.step(m),
                Err(e) => {
                    warn!(range_id = env.range_id, error = %e, from = batch.from_store, "undecodable raft message")
                }
            }
        }
    }

    fn status(&self) -> Vec<RangeStatus> {
        self.replicas
            .values()
            .map(|r| RangeStatus {
                range: r.range.clone(),
                replica_id: r.replica_id,
                is_leader: r.is_leader(),
                leader_store: r.leader_store(),
                term: r.term(),
                commit_index: r.commit_index(),
                applied_index: r.applied_index(),
            })
            .collect()
    }

    /// One persistence round over every replica with something ready.
    fn round(&mut self) {
        let engine = self.engine.clone();
        let mut batch = engine.batch();
        let mut outbox = Outbox::default();
        let mut readies = Vec::new();
        let mut sync = false;
        for (id, r) in self.replicas.iter_mut() {
            let mut msgs = Vec::new();
            if let Some(ready) = r.collect_ready(&mut batch, &mut msgs) {
                sync |= ready.must_sync();
                readies.push((*id, ready));
            }
            outbox.add(r, msgs);
        }
        if readies.is_empty() {
            return;
        }
        // Messages a leader may send before its own log is durable (Raft allows it).
        self.flush(&mut outbox);
        if !batch.is_empty() {
            let durability = if sync {
                Durability::Sync
            } else {
                Durability::Wal
            };
            if let Err(e) = engine.write(batch, durability) {
                // Raft state that may or may not be on disk cannot be reasoned about.
                panic!("store {}: persisting raft state failed: {e}", self.store_id);
            }
        }
        let mut apply_batch = engine.batch();
        let ids: Vec<RangeId> = readies.iter().map(|(id, _)| *id).collect();
        for (id, ready) in readies {
            let r = self.replicas.get_mut(&id).expect("ready replica exists");
            let mut msgs = Vec::new();
            r.finish_ready(ready, &mut apply_batch, &mut msgs);
            outbox.add(r, msgs);
        }
        if !apply_batch.is_empty() {
            // Applied data skips the WAL: the Raft log is its WAL, and apply state and
            // data are flushed together, so a crash replays the log from a consistent point.
            if let Err(e) = engine.write(apply_batch, Durability::NoWal) {
                panic!(
                    "store {}: applying committed entries failed: {e}",
                    self.store_id
                );
            }
        }
        self.flush(&mut outbox);
        for id in &ids {
            let r = self.replicas.get_mut(id).expect("ready replica exists");
            r.after_apply();
            let (parent_leads, new_ranges) = (r.is_leader(), r.take_new_ranges());
            for state in new_ranges {
                self.start_replica(state, parent_leads);
            }
        }
    }

    /// Starts a replica of a range a split created (its state is already on disk). The
    /// parent's leader campaigns at once so the new range serves without waiting out an
    /// election timeout.
    fn start_replica(&mut self, state: RangeState, campaign: bool) {
        let range_id = state.descriptor.id;
        match Replica::open(
            self.engine.clone(),
            state,
            self.store_id,
            &self.raft,
            self.addresses.clone(),
        ) {
            Ok(mut r) => {
                if campaign {
                    r.campaign();
                }
                self.replicas.insert(range_id, r);
            }
            Err(e) => panic!(
                "store {}: cannot start range {range_id} after its split: {e}",
                self.store_id
            ),
        }
    }

    /// Asks for a size check of every leader range that took enough writes since its last.
    fn request_split_checks(&mut self) {
        let Some(tx) = &self.split_checks else { return };
        for r in self.replicas.values_mut() {
            if r.is_leader() && r.take_split_check(self.split_check_bytes) {
                let _ = tx.try_send(r.range.clone());
            }
        }
    }

    fn flush(&mut self, outbox: &mut Outbox) {
        for (to_store, messages) in std::mem::take(&mut outbox.by_store) {
            if messages.is_empty() {
                continue;
            }
            self.sender.send(RaftBatch {
                from_store: self.store_id,
                to_store,
                messages,
            });
        }
    }
}

/// Outgoing Raft messages of a round, grouped by target store.
#[derive(Default)]
struct Outbox {
    by_store: HashMap<StoreId, Vec<RaftEnvelope>>,
}

impl Outbox {
    fn add(&mut self, replica: &Replica, msgs: Vec<Message>) {
        for m in msgs {
            let Some(target) = replica.range.replica(m.to) else {
                warn!(
                    range_id = replica.range.id,
                    to = m.to,
                    "raft message to an unknown replica"
                );
                continue;
            };
            let message = m.write_to_bytes().expect("raft message encodes");
            self.by_store
                .entry(target.store_id)
                .or_default()
                .push(RaftEnvelope {
                    range_id: replica.range.id,
                    message: message.into(),
                });
        }
    }
}
