//! The apply side of a replica: committed entries (writes, id allocation, log compaction,
//! splits, membership changes) and installed snapshots turn into writes of the round's
//! apply batch, and answers for the clients that proposed them.

use super::*;

impl Replica {
    pub(super) fn apply_entries(&mut self, entries: &[Entry], batch: &mut WriteBatch<'_>) {
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
            METRICS.applied_entries.inc();
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
        self.refresh_snapshot_source();
    }

    pub(super) fn refresh_snapshot_source(&mut self) {
        let source = SnapshotSource {
            range: self.range.clone(),
            applied_index: self.apply.applied_index,
            applied_term: self.apply.applied_term,
            frozen: self.merge.frozen,
        };
        self.node.mut_store().set_snapshot_source(source);
    }

    /// Replaces this replica's data and log with a snapshot, in the round's durable batch
    /// (the data is in no log to replay from). The snapshot's pairs were written to a
    /// file as they arrived, with deletes of whatever of the range this store held then
    /// (nothing, or what it held at its applied index); the batch takes only the state
    /// and a marker naming the file, and the loop ingests the file once the batch is
    /// synced (`take_pending_ingest`): a 64 MiB snapshot costs the round no writes. A
    /// replica that applied entries since that file was written also deletes its span
    /// in the batch (the ingest then flushes the memtable that delete is in).
    pub(super) fn apply_snapshot(&mut self, snapshot: &Snapshot, batch: &mut WriteBatch<'_>) {
        let meta = snapshot.get_metadata();
        let range_id = self.range.id;
        let Some(prepared) = self
            .prepared
            .take()
            .filter(|p| p.index == meta.index && p.term == meta.term)
        else {
            // The store offers raft a received snapshot's file before raft can hand the
            // snapshot back, and drops it only once raft turned the snapshot down.
            panic!(
                "range {range_id}: raft applies snapshot {}/{} but no file of it was received",
                meta.term, meta.index
            );
        };
        let (range, frozen) = match SnapshotHeader::decode(&snapshot.data) {
            Ok(h) => (h.range, h.frozen),
            Err(e) => {
                panic!("range {range_id}: snapshot was checked on receipt but does not decode: {e}")
            }
        };
        assert_eq!(range.id, range_id, "snapshot of another range");
        let empty = || match snapshot_install::span_is_empty(&self.engine, &range) {
            Ok(empty) => empty,
            Err(e) => panic!("range {range_id}: reading before a snapshot install failed: {e}"),
        };
        let how = if prepared.deletes_held_at == Some(self.apply.applied_index) || empty() {
            "file only"
        } else {
            // The snapshot's span is replaced. Keys this replica held beyond that span
            // (it covered more before a split it never applied) are not touched: they
            // may belong to another replica on this store now.
            batch.delete_range(Cf::Data, &range.start_key, &span_end(&range));
            "span deleted, then file"
        };
        let ingest = prepared.into_path();
        if ingest.is_some() {
            METRICS.snapshots_ingested.inc();
        }
        self.range = range;
        // The snapshot's freeze (its range was frozen for a merge at its index) is this
        // replica's now, on disk once this round's batch is synced, before the loop
        // answers anything: the target may then take its keys over.
        self.set_durable_freeze(frozen);
        let state = RangeState {
            descriptor: self.range.clone(),
            state: frozen.map_or(ReplicaState::Normal, ReplicaState::Frozen),
        };
        batch.put(
            Cf::Meta,
            &keys::range_state_key(self.range.id),
            &state.encode(),
        );
        self.apply = ApplyState {
            applied_index: meta.index,
            applied_term: meta.term,
        };
        batch.put(
            Cf::Meta,
            &keys::apply_state_key(self.range.id),
            &self.apply.encode(),
        );
        self.node.mut_store().apply_snapshot(meta, batch);
        // The marker goes in after the log's keys are cleared (that clears the range's
        // whole raft prefix).
        if let Some(name) = ingest.as_deref().and_then(|p| p.file_name()) {
            let name = name.to_string_lossy();
            batch.put(
                Cf::Raft,
                &keys::snapshot_ingest_key(range_id),
                name.as_bytes(),
            );
        }
        self.pending_ingest = ingest;
        self.next_id = None;
        self.pending_compact = None;
        METRICS.snapshots_applied.inc();
        self.refresh_snapshot_source();
        info!(range_id, index = meta.index, how, "applied snapshot");
    }

    /// Applies one entry; returns the answer of each client request it carries.
    fn apply_entry(&mut self, entry: &Entry, batch: &mut WriteBatch<'_>) -> Vec<ApplyResult> {
        match entry.get_entry_type() {
            EntryType::EntryNormal => {}
            EntryType::EntryConfChangeV2 => return vec![self.apply_conf_change(entry, batch)],
            EntryType::EntryConfChange => panic!(
                "range {}: v1 conf changes are never proposed",
                self.range.id
            ),
        }
        if entry.data.is_empty() {
            return Vec::new(); // a new leader's empty entry
        }
        let command = match Command::decode(&entry.data) {
            Ok(c) => c,
            Err(e) => panic!(
                "range {}: committed entry {} does not decode: {e}",
                self.range.id, entry.index
            ),
        };
        if let Some(refused) = self.refused_while_frozen(&command) {
            return refused;
        }
        match command {
            Command::Write { writes } => writes
                .into_iter()
                .map(|ops| self.apply_write(ops, batch))
                .collect(),
            Command::AllocIds { count } => vec![self.apply_alloc_ids(count, batch)],
            Command::CompactLog { index, .. } => {
                // Truncation waits for a flush of the applied data (see the store loop).
                if index > self.node.store().truncated_index()
                    && index <= self.apply.applied_index.max(entry.index)
                {
                    self.pending_compact =
                        Some(self.pending_compact.map_or(index, |p| p.max(index)));
                }
                vec![Ok(Applied::Written)]
            }
            Command::Split {
                epoch,
                split_key,
                right,
            } => vec![self.apply_split(epoch, split_key, right, batch)],
            Command::Ingest { .. } | Command::IngestStaged { .. }
                if command.ingest_in_range(&self.range) == Some(false) =>
            {
                vec![Err(KvError::KeyNotInRange {
                    range_id: self.range.id,
                })]
            }
            Command::Ingest { pairs } => vec![self.apply_ingest(&pairs, entry.index, batch)],
            Command::IngestStaged { epoch, .. } if epoch != self.range.epoch => {
                vec![Err(KvError::EpochNotMatch {
                    current: vec![self.range.clone()],
                })]
            }
            Command::IngestStaged { id, crc32, .. } => {
                vec![self.apply_staged_ingest(id, crc32, entry.index, batch)]
            }
            Command::ComputeChecksum => vec![self.apply_compute_checksum(entry.index, batch)],
            Command::CompareAndSet {
                key,
                expected,
                value,
            } => vec![self.apply_compare_and_set(key, expected, value, batch)],
            Command::PrepareMerge { epoch, target } => {
                vec![self.apply_prepare_merge(epoch, target, batch)]
            }
            Command::CommitMerge { epoch, source } => {
                vec![self.apply_commit_merge(epoch, source, batch)]
            }
            Command::RollbackMerge { epoch } => vec![self.apply_rollback_merge(epoch, batch)],
            Command::AbandonMerge { epoch } => vec![self.apply_abandon_merge(epoch, batch)],
        }
    }

    /// Writes `value` at `key` (deletes it for `None`) if the key holds `expected` as of
    /// this entry: the round's writes so far are written out first, so the engine reads
    /// exactly what every entry before this one left. They go out with this range's
    /// apply state as of the entry before: a flush (then a crash) between here and the
    /// round's end must not leave data newer than the apply state, or the replay would
    /// decide this entry again against a later value.
    fn apply_compare_and_set(
        &mut self,
        key: Bytes,
        expected: Option<Bytes>,
        value: Option<Bytes>,
        batch: &mut WriteBatch<'_>,
    ) -> ApplyResult {
        let range_id = self.range.id;
        if !self.range.contains(&key) {
            return Err(KvError::KeyNotInRange { range_id });
        }
        batch.put(
            Cf::Meta,
            &keys::apply_state_key(range_id),
            &self.apply.encode(),
        );
        write_out_applied(range_id, batch);
        let held = match self.engine.get(Cf::Data, &key) {
            Ok(held) => held,
            // Deciding without the value would let replicas differ.
            Err(e) => panic!("range {range_id}: reading a compare-and-set's key failed: {e}"),
        };
        if held.as_deref() != expected.as_deref() {
            return Err(KvError::CompareFailed);
        }
        match value {
            Some(v) => {
                self.written_bytes += (key.len() + v.len()) as u64;
                batch.put(Cf::Data, &key, &v);
            }
            None => batch.delete(Cf::Data, &key),
        }
        Ok(Applied::Written)
    }

    /// Ingests a bulk load's pairs as one SST file. Whatever this round applied before
    /// it is written out first, so an ingested value never hides a later write nor is
    /// hidden by an earlier one. A failure to write or ingest is fatal, as for any apply:
    /// a replica that skipped it would diverge.
    fn apply_ingest(
        &mut self,
        pairs: &[(Bytes, Bytes)],
        index: u64,
        batch: &mut WriteBatch<'_>,
    ) -> ApplyResult {
        let range_id = self.range.id;
        write_out_applied(range_id, batch);
        let name = format!("{range_id}-{index}.sst");
        match self.engine.ingest_sorted(Cf::Data, pairs, &name) {
            Ok(true) => {
                METRICS.ingested_files.inc();
            }
            // Keys still in a memtable: written the ordinary way rather than forcing a
            // flush. Replicas may choose differently; the data is the same.
            Ok(false) => {
                for (k, v) in pairs {
                    batch.put(Cf::Data, k, v);
                }
            }
            Err(e) => panic!("range {range_id}: ingesting entry {index} failed: {e}"),
        }
        self.written_bytes += pairs
            .iter()
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum::<u64>();
        Ok(Applied::Written)
    }

    /// Ingests this replica's copy of a staged bulk-load file, after writing out what
    /// this round applied before it (as for `apply_ingest`). A synced marker goes first,
    /// so that a replay of the entry after a crash can tell a file RocksDB took already
    /// from one that never arrived. A replica without its file would diverge from the
    /// others; the leader checked every replica staged it, so that is fatal.
    fn apply_staged_ingest(
        &mut self,
        id: u128,
        crc32: u32,
        index: u64,
        batch: &mut WriteBatch<'_>,
    ) -> ApplyResult {
        let range_id = self.range.id;
        let path = staged_path(self.engine.staged_dir(), id, crc32);
        let marker = keys::ingested_key(range_id, id, crc32);
        if !path.exists() {
            match self.engine.get(Cf::Raft, &marker) {
                Ok(Some(_)) => {
                    info!(
                        range_id,
                        index, "staged ingest was applied before a restart"
                    );
                    return Ok(Applied::Written);
                }
                Ok(None) => panic!(
                    "range {range_id}: entry {index} ingests staged file {} which this \
                     replica does not have; applying past it would diverge",
                    path.display()
                ),
                Err(e) => panic!("range {range_id}: reading ingest marker failed: {e}"),
            }
        }
        write_out_applied(range_id, batch);
        let mut mark = self.engine.batch();
        mark.put(Cf::Raft, &marker, &index.to_be_bytes());
        if let Err(e) = self.engine.write(mark, Durability::Sync) {
            panic!("range {range_id}: writing the ingest marker failed: {e}");
        }
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if let Err(e) = self.engine.ingest_file(Cf::Data, &path) {
            panic!("range {range_id}: ingesting staged file of entry {index} failed: {e}");
        }
        METRICS.ingested_files.inc();
        METRICS.ingested_staged_bytes.inc_by(size);
        self.written_bytes += size;
        Ok(Applied::Written)
    }

    /// Applies a membership change: raft's configuration, the conf state and the new
    /// descriptor (carried in the entry's context) land together.
    fn apply_conf_change(&mut self, entry: &Entry, batch: &mut WriteBatch<'_>) -> ApplyResult {
        let range_id = self.range.id;
        let cc = match ConfChangeV2::parse_from_bytes(&entry.data) {
            Ok(cc) => cc,
            Err(e) => panic!(
                "range {range_id}: committed conf change {} does not decode: {e}",
                entry.index
            ),
        };
        let cs = match self.node.apply_conf_change(&cc) {
            Ok(cs) => cs,
            Err(e) => panic!(
                "range {range_id}: raft refused committed conf change {}: {e}",
                entry.index
            ),
        };
        self.node.mut_store().set_conf_state(cs, batch);
        if entry.context.is_empty() {
            return Ok(Applied::Written); // leaving a joint configuration: no new descriptor
        }
        // The descriptor and its stores' addresses; changes proposed by older stores
        // carry the descriptor alone.
        let (new_range, addresses) =
            match postcard::from_bytes::<(RangeDescriptor, Vec<(StoreId, String)>)>(&entry.context)
            {
                Ok(both) => both,
                Err(_) => match postcard::from_bytes::<RangeDescriptor>(&entry.context) {
                    Ok(r) => (r, Vec::new()),
                    Err(e) => panic!(
                        "range {range_id}: conf change {} carries no descriptor: {e}",
                        entry.index
                    ),
                },
            };
        // Kept beside the applied state: a replay of this entry teaches them again.
        crate::addresses::remember(&self.addresses, addresses, false, batch);
        assert!(
            new_range.epoch > self.range.epoch,
            "range {range_id}: epochs only rise"
        );
        self.range = new_range.clone();
        let state = RangeState {
            descriptor: new_range.clone(),
            state: ReplicaState::Normal,
        };
        batch.put(Cf::Meta, &keys::range_state_key(range_id), &state.encode());
        if self.range.replica(self.replica_id).is_none() {
            info!(
                range_id,
                replica_id = self.replica_id,
                "this replica was removed from its range"
            );
            self.removed = true;
        }
        info!(range_id, conf_ver = new_range.epoch.conf_ver, replicas = ?new_range.replicas, "membership changed");
        Ok(Applied::ConfChanged {
            range: Box::new(new_range),
        })
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
        self.check_epoch(epoch)?;
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
        // This replica may apply the split late: the right range may already be here
        // (it caught up by snapshot, or was since removed). Then it is left alone; its
        // state is newer than what the split would create.
        let right_known = match self.engine.get(Cf::Meta, &keys::range_state_key(right.id)) {
            Ok(known) => known.is_some(),
            Err(e) => panic!("range {range_id}: cannot read the right range's state: {e}"),
        };
        if right_known {
            info!(
                range_id,
                right_id = right.id,
                "split applied late: the right range is already on this store"
            );
        } else {
            batch.put(
                Cf::Meta,
                &keys::range_state_key(right.id),
                &right_state.encode(),
            );
            batch.put(
                Cf::Meta,
                &keys::apply_state_key(right.id),
                &ApplyState::initial().encode(),
            );
            // The right range's replica on a store is a learner where the left's is.
            let (learners, voters) = right.replicas.iter().partition::<Vec<_>, _>(|r| {
                self.range
                    .replica_on(r.store_id)
                    .is_some_and(|l| self.is_learner(l.id))
            });
            let ids = |rs: Vec<&ReplicaDescriptor>| rs.iter().map(|r| r.id).collect();
            ReplicaStorage::bootstrap(batch, right.id, ids(voters), ids(learners));
            self.new_ranges.push(right_state);
        }
        METRICS.splits.inc();
        info!(range_id, right_id = right.id, split_key = ?right.start_key, "range split");
        self.range = left.clone();
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

/// Writes what the round applied so far, so an ingest lands above it (and below what
/// follows), or a check's sum sees it (and nothing after). Applied state that may or
/// may not be written cannot be reasoned about.
pub(super) fn write_out_applied(range_id: RangeId, batch: &mut WriteBatch<'_>) {
    if let Err(e) = batch.write_out(Durability::NoWal) {
        panic!("range {range_id}: writing out applied entries failed: {e}");
    }
}

/// Why `split_key` cannot split `range`, if it cannot.
pub(super) fn check_split(range: &RangeDescriptor, split_key: &[u8]) -> Result<(), String> {
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
