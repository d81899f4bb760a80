//! The store-wide Raft loop. One thread drives every replica on the store: each round it
//! takes queued messages, ticks, then writes all ready replicas' log entries and hard
//! state in one WriteBatch, applies what is committed in another, and sends the outgoing
//! Raft messages batched per target store. The fsync runs on its own thread
//! (`wal_sync`): one sync covers every round written while the previous one ran, and the
//! messages and progress that must wait for the disk (a follower's acknowledgement, a
//! leader's own vote toward a commit) are held until it reports.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use shale_rpc::{KvError, RaftBatch, RangeDescriptor, RangeId, StoreId, SumReport, WriteOp};
use tracing::{debug, info, warn};

use crate::command::Command;
use crate::config::{LogGcConfig, RaftConfig, StoreConfig};
use crate::early::EarlyMessages;
use crate::engine::{Durability, Engine};
use crate::faults::Faults;
use crate::key_counts::CheckRequest;
use crate::metrics::{StoreGauges, METRICS};
use crate::outbox::Outbox;
pub use crate::outbox::OutgoingSnapshot;
use crate::replica::{AddressBook, Replica};
use crate::slow_rounds::SlowRounds;
use crate::space::Space;
mod checks;
mod lifecycle;
mod merges;
mod snapshots;
pub(crate) use snapshots::overlap_reason;
mod status;

pub use crate::store_msg::{HeartbeatStatus, RaftSender, StoreMsg, StuckMerge};
use crate::wal_sync::{HeldReadies, WalSync};

/// The loop's state: every replica on the store.
pub struct Store<S: RaftSender> {
    store_id: StoreId,
    /// The `store` label of this store's gauges.
    gauge_label: String,
    engine: Arc<Engine>,
    replicas: BTreeMap<RangeId, Replica>,
    sender: S,
    tick: Duration,
    round_msgs_max: usize,
    raft: RaftConfig,
    addresses: AddressBook,
    /// Where ranges due for a size check go (checked off the loop thread).
    split_checks: Option<tokio::sync::mpsc::Sender<CheckRequest>>,
    split_check_bytes: u64,
    /// Ticks after which a range with any writes is checked again.
    recheck_ticks: u64,
    log_gc: LogGcConfig,
    ticks: u64,
    flush_in_flight: bool,
    /// Bytes to reserve for the next round's Raft and apply batches: what the last
    /// round's took (rounds under a steady load look alike).
    batch_hint: (usize, usize),
    /// The loop's own queue, for background work to report back.
    self_tx: SyncSender<StoreMsg>,
    /// Replicas touched since the last round.
    active: BTreeSet<RangeId>,
    wal_sync: WalSync,
    /// Written readies waiting for their sync.
    unsynced: HeldReadies,
    /// Messages for ranges a split here may be about to create.
    early: EarlyMessages,
    /// Ranges that splits here created, waiting for the flush that lets them start;
    /// `FindRange` names them meanwhile (their keys have no other range here).
    unborn: BTreeMap<RangeId, RangeDescriptor>,
    /// Replicas holding up another range's snapshot (they overlap it), for the next
    /// heartbeat to have placement check they are still members: a removed one is
    /// destroyed at once instead of after the leaderless wait (30 s by default).
    membership_wanted: BTreeSet<RangeId>,
    /// Replicas that may be awake (ticking): every one that is not hibernating, and
    /// some that just went to sleep (dropped at the next tick).
    awake: BTreeSet<RangeId>,
    /// Snapshot builds running off the loop (at most `SNAPSHOT_BUILDS_MAX`).
    snapshot_builds: usize,
    /// Replicas summing their data for a consistency check, off the loop.
    summing: BTreeSet<RangeId>,
    /// How often leaders check their ranges' consistency (`None`: only when asked).
    check_interval: Option<Duration>,
    slow_rounds: SlowRounds,
    faults: Arc<Faults>,
    /// Disk space: a store (or most of a range's stores) low on it takes no new data.
    space: Arc<Space>,
}

impl<S: RaftSender> Store<S> {
    pub fn new(
        config: &StoreConfig,
        engine: Arc<Engine>,
        replicas: Vec<Replica>,
        sender: S,
        addresses: AddressBook,
        split_checks: Option<tokio::sync::mpsc::Sender<CheckRequest>>,
        self_tx: SyncSender<StoreMsg>,
    ) -> Self {
        Store {
            store_id: config.store_id,
            gauge_label: config
                .gauge_label
                .clone()
                .unwrap_or_else(|| config.store_id.to_string()),
            engine: engine.clone(),
            replicas: replicas.into_iter().map(|r| (r.range.id, r)).collect(),
            sender,
            tick: Duration::from_millis(config.raft.tick_ms),
            round_msgs_max: config.limits.round_msgs_max,
            raft: config.raft.clone(),
            addresses,
            split_checks,
            split_check_bytes: config.split.check_after_written_bytes,
            recheck_ticks: (config.split.recheck_after_ms / config.raft.tick_ms).max(1),
            log_gc: config.log_gc.clone(),
            ticks: 0,
            flush_in_flight: false,
            batch_hint: (0, 0),
            wal_sync: WalSync::start(config.store_id, engine.clone(), self_tx.clone()),
            self_tx,
            active: BTreeSet::new(),
            unsynced: HeldReadies::default(),
            early: EarlyMessages::default(),
            unborn: BTreeMap::new(),
            membership_wanted: BTreeSet::new(),
            awake: BTreeSet::new(),
            snapshot_builds: 0,
            summing: BTreeSet::new(),
            check_interval: config.consistency.interval(),
            slow_rounds: SlowRounds::default(),
            faults: Arc::default(),
            space: Arc::new(Space::new(config.store_id, &config.space)),
        }
    }

    /// Shares the store's fault switches (tests) with its snapshot builds.
    pub fn with_faults(mut self, faults: Arc<Faults>) -> Self {
        self.faults = faults;
        self
    }

    /// Shares the store's disk-space readings with its loop.
    pub fn with_space(mut self, space: Arc<Space>) -> Self {
        self.space = space;
        self
    }

    /// Runs rounds until told to shut down or every sender is gone.
    pub fn run(mut self, rx: Receiver<StoreMsg>) {
        info!(
            store_id = self.store_id,
            ranges = self.replicas.len(),
            "store loop started"
        );
        self.tidy_merged();
        // Every replica starts awake; those that sleep leave the set at their next tick.
        self.awake = self.replicas.keys().copied().collect();
        let mut next_tick = Instant::now() + self.tick;
        let mut running = true;
        while running {
            let wait = next_tick.saturating_duration_since(Instant::now());
            let received = rx.recv_timeout(wait);
            let started = Instant::now();
            match received {
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
                let mut asleep: HashMap<StoreId, Vec<RangeId>> = HashMap::new();
                // Only awake replicas tick (a hibernating one would return at once): with
                // thousands of idle ranges, visiting each every tick was most of an idle
                // store's CPU.
                let replicas = &mut self.replicas;
                let active = &mut self.active;
                self.awake.retain(|id| {
                    let Some(r) = replicas.get_mut(id) else {
                        return false;
                    };
                    if r.tick() {
                        active.insert(*id);
                    }
                    if r.try_hibernate(self.raft.hibernate_after_ticks) {
                        for store in r.follower_stores() {
                            asleep.entry(store).or_default().push(*id);
                        }
                    }
                    !r.is_hibernating()
                });
                for (to_store, hibernate) in asleep {
                    self.sender.send(RaftBatch {
                        hibernate,
                        ..RaftBatch::of(self.store_id, to_store, Vec::new())
                    });
                }
                self.ticks += 1;
                // Passes over every replica, awake or not, once a second.
                let all = self.ticks.is_multiple_of(SLOW_PASS_TICKS);
                self.request_split_checks(all);
                self.send_sums();
                if all {
                    self.set_gauges();
                    self.consistency_pass();
                }
                if self.ticks.is_multiple_of(merges::ROLLBACK_CHECK_TICKS) {
                    self.roll_back_stale_merges();
                }
                if self.ticks.is_multiple_of(self.log_gc.interval_ticks) {
                    self.log_gc();
                    self.early.expire(Instant::now());
                }
                next_tick = Instant::now() + self.tick;
            }
            let now = Instant::now();
            let active = std::mem::take(&mut self.active);
            for id in &active {
                if let Some(r) = self.replicas.get_mut(id) {
                    r.flush_proposals();
                    r.flush_reads(now);
                }
            }
            self.round(&active);
            self.start_snapshot_builds(&active);
            // Whatever a round touched may have woken (a request, a message).
            self.awake.extend(active.iter().copied());
            self.slow_rounds
                .record(self.store_id, started.elapsed(), active.len());
        }
        // The sync thread may be blocked handing a report to this queue: let it go.
        drop(rx);
        info!(store_id = self.store_id, "store loop stopped");
    }

    /// Handles one message; false means stop.
    fn handle(&mut self, msg: StoreMsg) -> bool {
        match &msg {
            StoreMsg::Raft(batch) | StoreMsg::SnapshotReceived { batch, .. } => self
                .active
                .extend(batch.messages.iter().map(|e| e.range_id)),
            StoreMsg::Write { range_id, .. }
            | StoreMsg::Read { range_id, .. }
            | StoreMsg::Propose { range_id, .. }
            | StoreMsg::TransferLeader { range_id, .. }
            | StoreMsg::Campaign { range_id }
            | StoreMsg::ConfChange { range_id, .. }
            | StoreMsg::SnapshotBuilt { range_id, .. }
            | StoreMsg::SnapshotReport { range_id, .. } => {
                self.active.insert(*range_id);
            }
            _ => {}
        }
        match msg {
            StoreMsg::Raft(batch) => self.on_raft(batch),
            StoreMsg::SnapshotReceived { batch, prepared } => {
                self.on_raft(batch);
                // The replica exists now if the message was for it (a new member's is
                // created by it); otherwise the file goes with `prepared`.
                if let Some(r) = self.replicas.get_mut(&prepared.range_id) {
                    r.offer_prepared_snapshot(prepared);
                }
            }
            StoreMsg::Write {
                range_id,
                epoch,
                ops,
                reply,
            } => {
                let puts = ops.iter().any(|op| matches!(op, WriteOp::Put { .. }));
                match self.checked_for_data(range_id, epoch, puts) {
                    Ok(r) => r.propose(ops, reply),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
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
            } => {
                // A bulk load through the log is new data; a staged one is on disk already.
                let loads = matches!(
                    command,
                    Command::Ingest { .. } | Command::CompareAndSet { value: Some(_), .. }
                );
                let checked = self
                    .check_merge_target(range_id, &command)
                    .and_then(|()| self.checked_for_data(range_id, epoch, loads));
                match checked {
                    Ok(r) => r.propose_command(command, reply),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            StoreMsg::FindRange { key, reply } => {
                let found = self
                    .replicas
                    .values()
                    .filter(|r| !r.is_uninitialized())
                    .map(|r| &r.range)
                    .chain(self.unborn.values())
                    .find(|range| range.contains(&key))
                    .cloned();
                let _ = reply.send(found);
            }
            StoreMsg::ConfChange {
                range_id,
                change,
                new_range,
                reply,
            } => match self.replicas.get_mut(&range_id) {
                Some(r) => r.propose_conf_change(change, new_range, reply),
                None => {
                    let _ = reply.send(Err(KvError::RangeNotFound { range_id }));
                }
            },
            StoreMsg::SnapshotReport {
                range_id,
                to_replica,
                ok,
            } => {
                if let Some(r) = self.replicas.get_mut(&range_id) {
                    r.report_snapshot(to_replica, ok);
                }
            }
            StoreMsg::SnapshotBuilt { range_id, result } => {
                self.snapshot_builds -= 1;
                match (result, self.replicas.get_mut(&range_id)) {
                    (Ok((snapshot, built)), Some(r)) => {
                        r.offer_snapshot(snapshot, built);
                    }
                    (Ok(_), None) => {}
                    (Err(error), r) => {
                        warn!(store_id = self.store_id, range_id, %error, "snapshot build failed");
                        if let Some(r) = r {
                            r.snapshot_build_failed();
                        }
                    }
                }
            }
            StoreMsg::Flushed { targets } => self.truncate_logs(targets),
            StoreMsg::SplitsFlushed { born, result } => {
                if let Err(e) = result {
                    // Starting them now could leave ranges a crash turns into nonsense.
                    panic!(
                        "store {}: flushing the state of split ranges failed: {e}",
                        self.store_id
                    );
                }
                for (state, campaign) in born {
                    self.unborn.remove(&state.descriptor.id);
                    self.start_replica(state, campaign);
                }
            }
            StoreMsg::Synced { upto } => self.on_synced(upto),
            StoreMsg::Destroy {
                range_id,
                replica_id,
                conf_ver,
                reply,
            } => {
                // A notice that arrives late (sent while this store was down, say) must
                // spare a replica added back since: a newer id, and maybe still empty
                // (conf_ver 0) while it waits for its snapshot.
                let stale = self.replicas.get(&range_id).is_some_and(|r| {
                    r.replica_id <= replica_id
                        && (r.range.epoch.conf_ver < conf_ver || r.is_removed())
                        && !self.may_yet_be_merged(r)
                });
                if stale {
                    self.destroy_replica(range_id);
                }
                let _ = reply.send(stale);
            }
            StoreMsg::SnapshotFits { range, reply } => {
                let overlapping = self.overlapping_replica(&range);
                if let Some(other) = overlapping {
                    self.want_membership_check(other);
                }
                let _ = reply.send(overlapping);
            }
            StoreMsg::CheckOutcome {
                range_id,
                index,
                so_far,
                reply,
            } => {
                let outcome = self
                    .replicas
                    .get(&range_id)
                    .and_then(|r| r.check_outcome(index, so_far));
                let _ = reply.send(outcome);
            }
            StoreMsg::Describe { range_id, reply } => {
                let described = self.replicas.get(&range_id);
                let _ = reply.send(described.map(|r| (r.range.clone(), r.learners())));
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
            StoreMsg::Wake { range_ids } => {
                for range_id in range_ids {
                    if let Some(r) = self.replicas.get_mut(&range_id) {
                        r.wake();
                        self.active.insert(range_id);
                    }
                }
            }
            StoreMsg::Status { reply } => {
                let _ = reply.send(self.status());
            }
            StoreMsg::ReplicaStatus { range_id, reply } => {
                let status = self.replicas.get(&range_id).map(|r| self.status_of(r));
                let _ = reply.send(status);
            }
            StoreMsg::StuckMerges { older_than, reply } => {
                let _ = reply.send(self.stuck_merges(older_than));
            }
            StoreMsg::MayRollBack { range_id, reply } => {
                let _ = reply.send(self.may_roll_back(range_id));
            }
            StoreMsg::MergesFlushed {
                froze,
                merged,
                result,
            } => self.on_merges_flushed(froze, merged, result),
            StoreMsg::HeartbeatStatus {
                leaderless_after_ms,
                reply,
            } => {
                let _ = reply.send(self.heartbeat_status(leaderless_after_ms));
            }
            StoreMsg::Shutdown => return false,
        }
        true
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
        for range_id in &batch.hibernate {
            if let Some(r) = self.replicas.get_mut(range_id) {
                r.hibernate_on_signal(batch.from_store);
            }
        }
        let now = Instant::now();
        for sum in batch.sums {
            if let Some(r) = self.replicas.get_mut(&sum.range_id) {
                r.record_sum(sum, now);
            }
        }
        for env in batch.messages {
            // Entries' data share the envelope's bytes instead of being copied out.
            let m = match Message::parse_from_carllerche_bytes(&env.message) {
                Ok(m) => m,
                Err(e) => {
                    warn!(range_id = env.range_id, error = %e, from = batch.from_store, "undecodable raft message");
                    continue;
                }
            };
            if m.get_msg_type() == MessageType::MsgAppend
                && self.space.is_critical()
                && crate::space::brings_data(&m.entries)
            {
                // Below half its reserve the store takes no more data into its log: the
                // range goes on with its other replicas, and this one catches up once
                // there is room (or is moved away) instead of the store failing on a
                // full disk.
                METRICS.appends_dropped_no_space.inc();
                continue;
            }
            if m.get_msg_type() == MessageType::MsgSnapshot {
                if let Err(reason) = self.snapshot_fits(&m) {
                    info!(range_id = env.range_id, from = batch.from_store, %reason, "snapshot turned down");
                    continue;
                }
            }
            if let Some(local) = self.replicas.get(&env.range_id).map(|r| r.replica_id) {
                if m.to != 0 && m.to != local {
                    if m.to < local {
                        debug!(
                            range_id = env.range_id,
                            to = m.to,
                            local,
                            "message for an older replica of this range; ignored"
                        );
                        continue;
                    }
                    // Replica ids only grow: the range was given a new replica here, so the
                    // local one was removed (while this store was down, say) and is stale.
                    info!(
                        range_id = env.range_id,
                        local,
                        newer = m.to,
                        "a newer replica of this range was added here: destroying the stale one"
                    );
                    self.destroy_replica(env.range_id);
                }
            }
            let m = if self.replicas.contains_key(&env.range_id) {
                m
            } else {
                let now = Instant::now();
                let Some(m) = self.early.offer(env.range_id, m, batch.from_store, now) else {
                    continue;
                };
                if !self.create_from_message(env.range_id, &m, batch.from_store) {
                    continue;
                }
                m
            };
            let replica = self
                .replicas
                .get_mut(&env.range_id)
                .expect("present or just created");
            replica.learn_peer(m.from, batch.from_store);
            replica.step(m);
        }
    }

    /// One persistence round over every replica with something ready.
    /// Only replicas touched since the last round (or with a ready last round) can have
    /// something ready: idle ones cost nothing here.
    fn round(&mut self, active: &BTreeSet<RangeId>) {
        let engine = self.engine.clone();
        let mut batch = engine.batch_with_capacity(self.batch_hint.0);
        let mut outbox = Outbox::default();
        let mut readies = Vec::new();
        let (mut sync, mut snapshot) = (false, false);
        let mut took_snapshots = Vec::new();
        for id in active {
            let Some(r) = self.replicas.get_mut(id) else {
                continue;
            };
            let mut msgs = Vec::new();
            if let Some(ready) = r.collect_ready(&mut batch, &mut msgs) {
                sync |= ready.must_sync();
                if !ready.snapshot().is_empty() {
                    snapshot = true;
                    took_snapshots.push(*id);
                }
                readies.push((*id, ready));
            }
            outbox.add(r, msgs);
        }
        if readies.is_empty() {
            return;
        }
        METRICS.rounds.inc();
        // Messages a leader may send before its own log is durable (Raft allows it).
        self.flush(&mut outbox);
        self.batch_hint.0 = batch_hint(batch.size_bytes());
        if !batch.is_empty() {
            // Into the WAL now, so Raft reads it back at once; synced by `wal_sync`.
            if let Err(e) = engine.write(batch, Durability::Wal) {
                // Raft state that may or may not be on disk cannot be reasoned about.
                panic!("store {}: persisting raft state failed: {e}", self.store_id);
            }
        }
        if snapshot {
            // A replica that took a snapshot applies from its index at once (raft-rs
            // counts it applied right away), which it may only do once the snapshot is on
            // disk: sync here. That covers every round before too.
            if let Err(e) = engine.sync_wal() {
                panic!("store {}: syncing the raft log failed: {e}", self.store_id);
            }
            METRICS.fsyncs.inc();
            // The state of a snapshot taken as a file is on disk: the file goes in now,
            // before anything after it is applied.
            self.ingest_taken_snapshots(readies.iter().map(|(id, _)| *id));
            self.on_synced(self.wal_sync.last_asked());
        }
        let sync_target = if sync && !snapshot {
            Some(self.wal_sync.ask())
        } else if !self.unsynced.is_empty() {
            Some(self.wal_sync.last_asked())
        } else {
            None
        };
        let mut apply_batch = engine.batch_with_capacity(self.batch_hint.1);
        let ids: Vec<RangeId> = readies.iter().map(|(id, _)| *id).collect();
        // Work a ready leaves behind (more committed entries, say) shows up next round.
        self.active.extend(ids.iter().copied());
        for (id, ready) in readies {
            let r = self.replicas.get_mut(&id).expect("ready replica exists");
            let must_sync = ready.must_sync();
            let (number, messages) = r.finish_ready(ready, &mut apply_batch);
            // Readies count as persisted in order: one behind an unsynced one waits too.
            let wait = must_sync || self.unsynced.holds(id);
            if let (true, Some(sync)) = (wait, sync_target) {
                self.unsynced.hold(id, sync, number, messages);
            } else {
                r.persisted(number);
                outbox.add(r, messages);
            }
        }
        self.batch_hint.1 = batch_hint(apply_batch.size_bytes());
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
        let mut born = Vec::new();
        let (mut froze, mut merged) = (Vec::new(), Vec::new());
        for id in &ids {
            let Some(r) = self.replicas.get_mut(id) else {
                continue; // merged into a range applied before it this round
            };
            r.after_apply();
            if r.take_froze() {
                froze.push(*id);
            }
            merged.extend(r.take_merged());
            let (parent_leads, new_ranges, removed) =
                (r.is_leader(), r.take_new_ranges(), r.is_removed());
            born.extend(new_ranges.into_iter().map(|s| (s, parent_leads)));
            if r.is_summing() {
                self.summing.insert(*id);
            }
            if removed {
                self.destroy_replica(*id);
            }
        }
        if !born.is_empty() {
            self.start_after_flush(born);
        }
        self.after_merges(froze, merged);
        if !took_snapshots.is_empty() {
            self.drop_merged_by_snapshots(&took_snapshots);
        }
    }

    /// The WAL is on disk through sync `upto`: the readies that waited for it count as
    /// persisted, and their held messages go out.
    fn on_synced(&mut self, upto: u64) {
        let mut outbox = Outbox::default();
        for (id, number, messages) in self.unsynced.release(upto) {
            let Some(r) = self.replicas.get_mut(&id) else {
                continue;
            };
            r.persisted(number);
            outbox.add(r, messages);
            self.active.insert(id);
        }
        self.flush(&mut outbox);
    }

    /// Proposes log truncation on the ranges this store leads, and starts a flush when
    /// replicas wait to truncate (their applied data must be on disk first).
    fn log_gc(&mut self) {
        for r in self.replicas.values_mut() {
            r.maybe_propose_compact(&self.log_gc);
        }
        if self.flush_in_flight {
            return;
        }
        let targets: Vec<(RangeId, u64)> = self
            .replicas
            .values()
            .filter_map(|r| {
                r.pending_compact()
                    .map(|p| (r.range.id, p.min(r.applied_index())))
            })
            .collect();
        if targets.is_empty() {
            return;
        }
        self.flush_in_flight = true;
        let engine = self.engine.clone();
        let tx = self.self_tx.clone();
        let store_id = self.store_id;
        std::thread::spawn(move || {
            if let Err(e) = engine.flush_applied() {
                warn!(store_id, error = %e, "flush for log truncation failed");
                let _ = tx.send(StoreMsg::Flushed {
                    targets: Vec::new(),
                });
                return;
            }
            let _ = tx.send(StoreMsg::Flushed { targets });
        });
    }

    fn truncate_logs(&mut self, targets: Vec<(RangeId, u64)>) {
        self.flush_in_flight = false;
        let engine = self.engine.clone();
        let mut batch = engine.batch();
        for (range_id, index) in targets {
            if let Some(r) = self.replicas.get_mut(&range_id) {
                r.compact(index, &mut batch);
            }
        }
        if !batch.is_empty() {
            if let Err(e) = engine.write(batch, Durability::Wal) {
                panic!("store {}: truncating raft logs failed: {e}", self.store_id);
            }
        }
    }

    /// Hands the sums replicas finished for their consistency checks to the other
    /// replicas of their ranges.
    fn send_sums(&mut self) {
        if self.summing.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut by_store: HashMap<StoreId, Vec<SumReport>> = HashMap::new();
        let replicas = &mut self.replicas;
        self.summing.retain(|id| {
            let Some(r) = replicas.get_mut(id) else {
                return false;
            };
            if let Some(report) = r.poll_sum(now) {
                for store in r.follower_stores() {
                    by_store.entry(store).or_default().push(report.clone());
                }
            }
            r.is_summing()
        });
        for (to_store, sums) in by_store {
            self.sender.send(RaftBatch {
                sums,
                ..RaftBatch::of(self.store_id, to_store, Vec::new())
            });
        }
    }

    /// Once a second: judges checks whose wait is over, and has leaders propose the
    /// checks their interval calls for.
    fn consistency_pass(&mut self) {
        let now = Instant::now();
        for (id, r) in self.replicas.iter_mut() {
            r.settle_check(now);
            if r.maybe_propose_check(self.check_interval, now) {
                self.active.insert(*id);
            }
        }
    }

    /// Sets the store's gauges: replicas, leaders, hibernating replicas, learners led
    /// (and how many of them are silent), diverged replicas of ranges led.
    fn set_gauges(&self) {
        let silent_after = self.raft.learner_silent_after();
        let mut g = StoreGauges {
            ranges: self.replicas.len() as i64,
            ..StoreGauges::default()
        };
        for r in self.replicas.values() {
            g.leaders += i64::from(r.is_leader());
            g.hibernating += i64::from(r.is_hibernating());
            if r.is_leader() && r.learner_count() > 0 {
                g.learners += r.learner_count() as i64;
                g.silent_learners += r.silent_learners(silent_after).len() as i64;
            }
            if r.is_leader() {
                g.diverged += r.diverged().len() as i64;
            }
        }
        METRICS.set_store_gauges(&self.gauge_label, &g);
    }

    /// Asks for a size check of every leader range that took enough writes since its last.
    /// Only awake leaders unless `all`: writes wake a range, so a hibernating one has
    /// nothing new to check (a recheck that falls due while it sleeps waits for a pass
    /// over `all`).
    fn request_split_checks(&mut self, all: bool) {
        let Some(tx) = &self.split_checks else { return };
        let (now, recheck) = (self.ticks, self.recheck_ticks);
        let ids: Vec<RangeId> = if all {
            self.replicas.keys().copied().collect()
        } else {
            self.awake.iter().copied().collect()
        };
        for id in ids {
            let Some(r) = self.replicas.get_mut(&id).filter(|r| r.is_leader()) else {
                continue;
            };
            let Some(due) = r.take_split_check(self.split_check_bytes, now, recheck) else {
                continue;
            };
            let request = CheckRequest {
                range: r.range.clone(),
                due,
            };
            if tx.try_send(request).is_err() {
                r.untake_split_check(due);
            }
        }
    }

    fn flush(&mut self, outbox: &mut Outbox) {
        outbox.send(self.store_id, &mut self.sender);
    }
}

/// Ticks between the passes over every replica for size checks and gauges.
const SLOW_PASS_TICKS: u64 = 25;

/// Room to reserve in a batch after one of `last` bytes: small batches are left to
/// grow (reserving costs an allocation the size of the hint), large ones are capped.
fn batch_hint(last: usize) -> usize {
    const WORTH: usize = 64 << 10;
    const MAX: usize = 64 << 20;
    if last < WORTH {
        0
    } else {
        (last + last / 8).min(MAX)
    }
}
