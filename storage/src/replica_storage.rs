//! A replica's Raft log and state as raft-rs sees them (`raft::Storage`), kept in the
//! engine's Raft column family with the recent tail cached in memory. Writes go into the
//! round's shared WriteBatch; this type only tracks what that batch will make true.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError as RaftStorageError};
use shale_rpc::RangeId;

use crate::command::{ApplyState, MergeTarget, TruncatedState, RANGE_INIT_INDEX, RANGE_INIT_TERM};
use crate::engine::{Cf, Engine, WriteBatch};
use crate::keys;
use crate::snapshot::BuildJob;
use crate::StorageError;

/// Most entries kept in the in-memory tail cache.
const CACHE_ENTRIES_MAX: usize = 4096;
/// Most bytes of entry data kept in the in-memory tail cache.
const CACHE_BYTES_MAX: usize = 64 << 20;

thread_local! {
    /// Where a store thread encodes log entries before they are copied into a batch:
    /// reused, so a chunk-sized entry does not allocate (and fault in) fresh memory.
    static ENCODE_SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Largest scratch buffer a thread keeps between appends.
const ENCODE_SCRATCH_KEPT: usize = 4 << 20;

/// The Raft storage of one replica.
pub struct ReplicaStorage {
    engine: Arc<Engine>,
    range_id: RangeId,
    hard_state: HardState,
    conf_state: ConfState,
    truncated_index: u64,
    truncated_term: u64,
    last_index: u64,
    last_term: u64,
    /// The newest entries, contiguous, ending at `last_index`.
    cache: VecDeque<Entry>,
    cache_bytes: usize,
    /// About how many payload bytes the log holds past `truncated_index` (appends
    /// since this replica was loaded, scaled down at each truncation).
    log_bytes: u64,
    /// The range and applied point, for building snapshots.
    snapshot_source: Option<SnapshotSource>,
    /// Where the snapshot raft asks for stands (built off the store loop).
    snapshot: RefCell<SnapshotState>,
}

/// A replica's snapshot for its followers: at most one is built or kept at a time.
#[derive(Debug, Default)]
enum SnapshotState {
    #[default]
    Idle,
    /// Raft asked; the store loop starts a build (`take_build_job`).
    Wanted,
    /// Being built off the loop.
    Building,
    /// Built, kept until raft takes it (or it grows stale), and when it was built.
    Built(Snapshot, Instant),
}

/// What a snapshot of a replica is built from, kept current by the replica.
#[derive(Debug, Clone)]
pub struct SnapshotSource {
    pub range: shale_rpc::RangeDescriptor,
    pub applied_index: u64,
    pub applied_term: u64,
    /// The merge the range is frozen for at that point, if any.
    pub frozen: Option<MergeTarget>,
}

impl ReplicaStorage {
    /// Writes the Raft state of a new range whose group is `voters` and `learners`: its
    /// log starts after `RANGE_INIT_INDEX`, committed and applied up to there. Only its
    /// conf state is written, beside the range's descriptor and apply state (written by
    /// the caller in the same batch): where its log starts and its hard state follow from
    /// the apply state at load. Nothing in the Raft column family is touched, so a
    /// replica of the range created before (from its leader's messages, ahead of this
    /// store's split) keeps its term and vote, and a batch written without the WAL
    /// leaves nothing there that a crash could separate from the range's descriptor.
    pub fn bootstrap(
        batch: &mut WriteBatch<'_>,
        range_id: RangeId,
        voters: Vec<u64>,
        learners: Vec<u64>,
    ) {
        let mut cs = ConfState::default();
        cs.set_voters(voters);
        cs.set_learners(learners);
        write_conf_state(batch, range_id, &cs);
    }

    /// Loads a replica's Raft state from the engine. A range with no state at all is an
    /// uninitialized replica: empty log at 0, waiting for a snapshot.
    pub fn load(
        engine: Arc<Engine>,
        range_id: RangeId,
        apply: &ApplyState,
    ) -> Result<Self, StorageError> {
        let hard_state = match engine.get(Cf::Raft, &keys::hard_state_key(range_id))? {
            Some(b) => HardState::parse_from_bytes(&b)?,
            None => HardState::default(),
        };
        let conf_state = match engine.get(Cf::Meta, &keys::applied_conf_state_key(range_id))? {
            Some(b) => ConfState::parse_from_bytes(&b)?,
            // Stores before the applied conf state key kept it in the Raft CF.
            None => match engine.get(Cf::Raft, &keys::conf_state_key(range_id))? {
                Some(b) => ConfState::parse_from_bytes(&b)?,
                None => ConfState::default(),
            },
        };
        let truncated = match engine.get(Cf::Raft, &keys::truncated_state_key(range_id))? {
            Some(b) => TruncatedState::decode(&b)?,
            // A range created by bootstrap or split: its log starts where it was born.
            None if apply.applied_index >= RANGE_INIT_INDEX => TruncatedState {
                index: RANGE_INIT_INDEX,
                term: RANGE_INIT_TERM,
            },
            None => TruncatedState::default(),
        };
        let (last_index, last_term) = match last_log_index(&engine, range_id)? {
            Some(index) => (index, read_entry(&engine, range_id, index)?.term),
            None => (truncated.index, truncated.term),
        };
        let mut hard_state = hard_state;
        if hard_state.commit > last_index
            || apply.applied_index > last_index
            || truncated.index > last_index
        {
            return Err(StorageError::Corruption(format!(
                "range {range_id}: applied {} / commit {} / truncated {} past last index {last_index}",
                apply.applied_index, hard_state.commit, truncated.index
            )));
        }
        if apply.applied_index < truncated.index {
            return Err(StorageError::Corruption(format!(
                "range {range_id}: log truncated to {} but only {} applied",
                truncated.index, apply.applied_index
            )));
        }
        // The commit index is persisted lazily; whatever was applied was committed.
        hard_state.commit = hard_state.commit.max(apply.applied_index);
        // A new range's term starts at its log's (a vote cast in an older term is void).
        if hard_state.term < truncated.term {
            hard_state.term = truncated.term;
            hard_state.vote = 0;
        }
        Ok(ReplicaStorage {
            engine,
            range_id,
            hard_state,
            conf_state,
            truncated_index: truncated.index,
            truncated_term: truncated.term,
            last_index,
            last_term,
            cache: VecDeque::new(),
            cache_bytes: 0,
            log_bytes: 0,
            snapshot_source: None,
            snapshot: RefCell::new(SnapshotState::Idle),
        })
    }

    pub fn truncated_index(&self) -> u64 {
        self.truncated_index
    }

    /// Deletes log entries up to `index` (which must be applied and flushed) into `batch`.
    pub fn compact_to(
        &mut self,
        index: u64,
        batch: &mut WriteBatch<'_>,
    ) -> Result<(), StorageError> {
        if index <= self.truncated_index {
            return Ok(());
        }
        assert!(
            index <= self.last_index,
            "range {}: compact past the last index",
            self.range_id
        );
        let term =
            raft::Storage::term(self, index).map_err(|e| StorageError::Raft(e.to_string()))?;
        batch.delete_range(
            Cf::Raft,
            &keys::log_key(self.range_id, 0),
            &keys::log_key(self.range_id, index + 1),
        );
        self.drop_ingest_markers(index, batch)?;
        let truncated = TruncatedState { index, term };
        batch.put(
            Cf::Raft,
            &keys::truncated_state_key(self.range_id),
            &truncated.encode(),
        );
        // What the truncation leaves, if entries were of even size.
        let (kept, held) = (
            self.last_index - index,
            self.last_index - self.truncated_index,
        );
        self.log_bytes = (self.log_bytes as u128 * kept as u128 / held.max(1) as u128) as u64;
        self.truncated_index = index;
        self.truncated_term = term;
        while self.cache.front().is_some_and(|e| e.index <= index) {
            let e = self.cache.pop_front().expect("checked non-empty");
            self.cache_bytes -= e.data.len();
        }
        Ok(())
    }

    /// Deletes the ingest markers of entries up to `index`: no replay reaches them now.
    fn drop_ingest_markers(
        &self,
        index: u64,
        batch: &mut WriteBatch<'_>,
    ) -> Result<(), StorageError> {
        let (start, end) = keys::ingested_bounds(self.range_id);
        let mut done = Vec::new();
        self.engine.scan(Cf::Raft, &start, &end, |k, v| {
            let at = v.try_into().map(u64::from_be_bytes).unwrap_or(0);
            if at <= index {
                done.push(k.to_vec());
            }
            true
        })?;
        for k in done {
            batch.delete(Cf::Raft, &k);
        }
        Ok(())
    }

    /// Replaces the whole log with the snapshot's starting point, into `batch`.
    pub fn apply_snapshot(&mut self, meta: &SnapshotMetadata, batch: &mut WriteBatch<'_>) {
        let (start, end) = keys::raft_bounds(self.range_id);
        batch.delete_range(Cf::Raft, &start, &end);
        let truncated = TruncatedState {
            index: meta.index,
            term: meta.term,
        };
        batch.put(
            Cf::Raft,
            &keys::truncated_state_key(self.range_id),
            &truncated.encode(),
        );
        self.truncated_index = meta.index;
        self.truncated_term = meta.term;
        self.last_index = meta.index;
        self.last_term = meta.term;
        self.cache.clear();
        self.cache_bytes = 0;
        self.set_conf_state(meta.get_conf_state().clone(), batch);
        let mut hs = self.hard_state.clone();
        hs.commit = hs.commit.max(meta.index);
        hs.term = hs.term.max(meta.term);
        self.set_hard_state(hs, batch);
    }

    /// What snapshots of this replica are made from: set by the replica after it applies.
    pub fn set_snapshot_source(&mut self, source: SnapshotSource) {
        self.snapshot_source = Some(source);
    }

    /// Whether raft asked for a snapshot that is not being built or kept already.
    #[cfg(test)]
    pub fn wants_snapshot(&self) -> bool {
        matches!(*self.snapshot.borrow(), SnapshotState::Wanted)
    }

    /// What to build the snapshot raft asked for from: the range as applied now. Call
    /// only when every applied write is in the engine (between rounds).
    pub fn take_build_job(&mut self) -> Option<BuildJob> {
        let state = self.snapshot.get_mut();
        if !matches!(state, SnapshotState::Wanted) {
            return None;
        }
        let Some(source) = self
            .snapshot_source
            .as_ref()
            .filter(|s| s.applied_index > 0)
        else {
            *state = SnapshotState::Idle;
            return None;
        };
        *state = SnapshotState::Building;
        Some(BuildJob {
            range: source.range.clone(),
            index: source.applied_index,
            term: source.applied_term,
            conf_state: self.conf_state.clone(),
            frozen: source.frozen,
        })
    }

    /// Keeps a built snapshot for raft's next request.
    pub fn offer_snapshot(&mut self, snapshot: Snapshot, now: Instant) {
        *self.snapshot.get_mut() = SnapshotState::Built(snapshot, now);
    }

    /// Drops a built snapshot nobody took within `max_age` (its follower went away).
    pub fn expire_snapshot(&mut self, max_age: Duration) {
        let state = self.snapshot.get_mut();
        if matches!(state, SnapshotState::Built(_, at) if at.elapsed() > max_age) {
            *state = SnapshotState::Idle;
        }
    }

    /// Forgets any wanted, building or built snapshot (the replica stopped leading, or
    /// a build failed); a build still running is ignored when it ends.
    pub fn drop_snapshot(&mut self) {
        *self.snapshot.get_mut() = SnapshotState::Idle;
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// Appends entries (overwriting any conflicting suffix) into `batch`.
    pub fn append(&mut self, entries: &[Entry], batch: &mut WriteBatch<'_>) {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return;
        };
        assert!(
            first.index > self.truncated_index && first.index <= self.last_index + 1,
            "range {}: append at {} leaves a gap after {} (truncated {})",
            self.range_id,
            first.index,
            self.last_index,
            self.truncated_index
        );
        ENCODE_SCRATCH.with_borrow_mut(|scratch| {
            for e in entries {
                self.log_bytes += e.data.len() as u64;
                scratch.clear();
                e.write_to_vec(scratch).expect("entry encodes");
                batch.put(Cf::Raft, &keys::log_key(self.range_id, e.index), scratch);
            }
            if scratch.capacity() > ENCODE_SCRATCH_KEPT {
                *scratch = Vec::new();
            }
        });
        if last.index < self.last_index {
            batch.delete_range(
                Cf::Raft,
                &keys::log_key(self.range_id, last.index + 1),
                &keys::log_key(self.range_id, self.last_index + 1),
            );
        }
        // Drop cached entries the new ones replace, then cache the new ones.
        while self.cache.back().is_some_and(|e| e.index >= first.index) {
            let e = self.cache.pop_back().expect("checked non-empty");
            self.cache_bytes -= e.data.len();
        }
        if self
            .cache
            .back()
            .is_some_and(|e| e.index + 1 != first.index)
        {
            self.cache.clear();
            self.cache_bytes = 0;
        }
        for e in entries {
            self.cache_bytes += e.data.len();
            self.cache.push_back(e.clone());
        }
        while self.cache.len() > CACHE_ENTRIES_MAX || self.cache_bytes > CACHE_BYTES_MAX {
            let e = self
                .cache
                .pop_front()
                .expect("over the bound means non-empty");
            self.cache_bytes -= e.data.len();
        }
        self.last_index = last.index;
        self.last_term = last.term;
    }

    /// About how many payload bytes the log holds past its truncation point.
    pub fn log_bytes(&self) -> u64 {
        self.log_bytes
    }

    /// Records a new hard state into `batch` when its term or vote changed. The commit
    /// index alone is not worth a write: Raft needs only term and vote durable, and a
    /// load raises commit to the applied index.
    pub fn set_hard_state(&mut self, hs: HardState, batch: &mut WriteBatch<'_>) {
        if hs.term != self.hard_state.term || hs.vote != self.hard_state.vote {
            batch.put(
                Cf::Raft,
                &keys::hard_state_key(self.range_id),
                &hs.write_to_bytes().expect("hard state encodes"),
            );
        }
        self.hard_state = hs;
    }

    /// Records a new conf state into `batch`.
    pub fn set_conf_state(&mut self, cs: ConfState, batch: &mut WriteBatch<'_>) {
        write_conf_state(batch, self.range_id, &cs);
        self.conf_state = cs;
    }

    fn cached(&self, index: u64) -> Option<&Entry> {
        let front = self.cache.front()?.index;
        if index < front {
            return None;
        }
        self.cache.get((index - front) as usize)
    }
}

/// The index of the last entry in a range's log, if it has any. The log is contiguous,
/// so this seeks forward in doubling steps and then halves the gap: about twice log2 of
/// the log's length in seeks (the Raft column family's memtable can only seek forward).
fn last_log_index(engine: &Engine, range_id: RangeId) -> Result<Option<u64>, StorageError> {
    let end = keys::log_key(range_id, u64::MAX);
    // The first index at or after `from` that holds an entry.
    let at_or_after = |from: u64| -> Result<Option<u64>, StorageError> {
        match engine.first_key_in(Cf::Raft, &keys::log_key(range_id, from), &end)? {
            Some(k) => keys::log_index(range_id, &k).map(Some).ok_or_else(|| {
                StorageError::Corruption(format!("range {range_id}: bad log key {k:?}"))
            }),
            None => Ok(None),
        }
    };
    let Some(mut known) = at_or_after(0)? else {
        return Ok(None);
    };
    // `known` holds an entry; find a `past` that holds none.
    let mut step = 1u64;
    let mut past = loop {
        let probe = known.saturating_add(step);
        match at_or_after(probe)? {
            Some(i) if probe < u64::MAX => {
                known = i;
                step = step.saturating_mul(2);
            }
            _ => break probe,
        }
    };
    while past - known > 1 {
        let mid = known + (past - known) / 2;
        match at_or_after(mid)? {
            Some(i) if i < past => known = i,
            _ => past = mid,
        }
    }
    Ok(Some(known))
}

fn read_entry(engine: &Engine, range_id: RangeId, index: u64) -> Result<Entry, StorageError> {
    let bytes = engine
        .get(Cf::Raft, &keys::log_key(range_id, index))?
        .ok_or_else(|| {
            StorageError::Corruption(format!("range {range_id}: log entry {index} is missing"))
        })?;
    Ok(Entry::parse_from_bytes(&bytes)?)
}

fn to_raft(e: StorageError) -> raft::Error {
    raft::Error::Store(RaftStorageError::Other(Box::new(e)))
}

/// Writes `range_id`'s conf state into `batch` (the Meta CF: see
/// [`keys::applied_conf_state_key`]).
fn write_conf_state(batch: &mut WriteBatch<'_>, range_id: RangeId, cs: &ConfState) {
    batch.put(
        Cf::Meta,
        &keys::applied_conf_state_key(range_id),
        &cs.write_to_bytes().expect("conf state encodes"),
    );
}

impl raft::Storage for ReplicaStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.truncated_index {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        if high > self.last_index + 1 {
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        let max_size = max_size.into();
        let mut out = Vec::with_capacity((high - low).min(1024) as usize);
        if self.cached(low).is_some() {
            for index in low..high {
                out.push(
                    self.cached(index)
                        .expect("cache is contiguous to last index")
                        .clone(),
                );
            }
        } else {
            let start = keys::log_key(self.range_id, low);
            let end = keys::log_key(self.range_id, high);
            let mut failure = None;
            let mut size = 0u64;
            self.engine
                .scan(
                    Cf::Raft,
                    &start,
                    &end,
                    |_, v| match Entry::parse_from_bytes(v) {
                        Ok(e) => {
                            size += u64::from(e.compute_size());
                            out.push(e);
                            max_size.is_none_or(|m| size <= m)
                        }
                        Err(e) => {
                            failure = Some(StorageError::from(e));
                            false
                        }
                    },
                )
                .map_err(to_raft)?;
            if let Some(e) = failure {
                return Err(to_raft(e));
            }
            if out.first().map(|e| e.index) != Some(low) {
                return Err(to_raft(StorageError::Corruption(format!(
                    "range {}: log entry {low} is missing",
                    self.range_id
                ))));
            }
        }
        raft::util::limit_size(&mut out, max_size);
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.truncated_index {
            return Ok(self.truncated_term);
        }
        if idx < self.truncated_index {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        if idx > self.last_index {
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        if idx == self.last_index {
            return Ok(self.last_term);
        }
        if let Some(e) = self.cached(idx) {
            return Ok(e.term);
        }
        read_entry(&self.engine, self.range_id, idx)
            .map(|e| e.term)
            .map_err(to_raft)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.truncated_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    /// The snapshot built for this replica off the store loop, if it is recent enough;
    /// otherwise "temporarily unavailable", and the loop is asked to build one (see
    /// `take_build_job`). Raft asks again at the follower's next heartbeat response, or
    /// when the built snapshot is offered.
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let mut state = self.snapshot.borrow_mut();
        match std::mem::take(&mut *state) {
            SnapshotState::Built(snapshot, _) => {
                let index = snapshot.get_metadata().index;
                // From an older one the follower would need entries truncated since.
                if index >= request_index && index >= self.truncated_index {
                    return Ok(snapshot);
                }
                *state = SnapshotState::Wanted;
            }
            // One build at a time: its snapshot will do.
            SnapshotState::Building => *state = SnapshotState::Building,
            SnapshotState::Idle | SnapshotState::Wanted => *state = SnapshotState::Wanted,
        }
        Err(raft::Error::Store(
            RaftStorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Durability, EngineConfig};
    use raft::Storage;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8; 10].into(),
            ..Default::default()
        }
    }

    /// Range 7's storage, just bootstrapped with voters 1, 2 and 3, in a fresh engine.
    fn bootstrapped(dir: &std::path::Path) -> (Arc<Engine>, ReplicaStorage) {
        let engine = Arc::new(Engine::open(dir, &EngineConfig::default()).unwrap());
        let mut batch = engine.batch();
        ReplicaStorage::bootstrap(&mut batch, 7, vec![1, 2, 3], Vec::new());
        engine.write(batch, Durability::Sync).unwrap();
        let s = ReplicaStorage::load(engine.clone(), 7, &ApplyState::initial()).unwrap();
        (engine, s)
    }

    #[test]
    fn log_bytes_grow_with_appends_and_shrink_with_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let (engine, mut s) = bootstrapped(dir.path());
        assert_eq!(s.log_bytes(), 0);
        let mut batch = engine.batch();
        s.append(
            &(6..=10).map(|i| entry(i, 6)).collect::<Vec<_>>(),
            &mut batch,
        );
        engine.write(batch, Durability::Sync).unwrap();
        assert_eq!(s.log_bytes(), 50, "five entries of 10 bytes");
        let mut batch = engine.batch();
        s.compact_to(8, &mut batch).unwrap();
        engine.write(batch, Durability::Sync).unwrap();
        assert_eq!(s.log_bytes(), 20, "two of the five entries are left");
        let mut batch = engine.batch();
        s.compact_to(10, &mut batch).unwrap();
        assert_eq!(s.log_bytes(), 0, "nothing is left");
    }

    #[test]
    fn the_last_log_index_is_found_beside_other_ranges_logs_in_memtable_and_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Arc::new(Engine::open(dir.path(), &EngineConfig::default()).unwrap());
        // Range r holds entries first..=last; its neighbours hold longer logs, and hard
        // states sit right after each log.
        let logs: [(RangeId, u64, u64); 7] = [
            (1, 1, 5000),
            (2, 6, 6),
            (3, 6, 7),
            (4, 100, 1124),
            (5, 1, 1025),
            (7, 40, 1_000_000),
            (9, 1, 3),
        ];
        let mut batch = engine.batch();
        for &(r, first, last) in &logs {
            // A sparse tail for the million-entry log: only its last few thousand exist.
            for i in first.max(last.saturating_sub(3000))..=last {
                batch.put(Cf::Raft, &keys::log_key(r, i), b"e");
            }
            batch.put(Cf::Raft, &keys::hard_state_key(r), b"hs");
        }
        engine.write(batch, Durability::Sync).unwrap();
        for flushed in [false, true] {
            if flushed {
                engine.flush().unwrap();
            }
            for &(r, _, last) in &logs {
                assert_eq!(
                    last_log_index(&engine, r).unwrap(),
                    Some(last),
                    "range {r}, flushed {flushed}"
                );
            }
            for empty in [6, 8, 10] {
                assert_eq!(last_log_index(&engine, empty).unwrap(), None);
            }
        }
        // Appends after the flush land in the memtable above the files.
        let mut batch = engine.batch();
        batch.put(Cf::Raft, &keys::log_key(4, 1125), b"e");
        batch.put(Cf::Raft, &keys::log_key(6, 1), b"e");
        engine.write(batch, Durability::Sync).unwrap();
        assert_eq!(last_log_index(&engine, 4).unwrap(), Some(1125));
        assert_eq!(last_log_index(&engine, 6).unwrap(), Some(1));
        // A truncated suffix (deleted keys) no longer counts.
        let mut batch = engine.batch();
        for i in 1000..=1025 {
            batch.delete(Cf::Raft, &keys::log_key(5, i));
        }
        engine.write(batch, Durability::Sync).unwrap();
        assert_eq!(last_log_index(&engine, 5).unwrap(), Some(999));
    }

    /// Raft's request for a snapshot is answered "not yet" and recorded; the build job
    /// takes the applied point; the built snapshot is handed out once, and one the log
    /// has since been truncated past is refused and asked for again.
    #[test]
    fn snapshots_are_asked_for_built_elsewhere_and_handed_out_once() {
        let dir = tempfile::tempdir().unwrap();
        let (engine, mut s) = bootstrapped(dir.path());
        let mut batch = engine.batch();
        s.append(
            &(6..=20).map(|i| entry(i, 6)).collect::<Vec<_>>(),
            &mut batch,
        );
        engine.write(batch, Durability::Sync).unwrap();
        let unavailable = raft::Error::Store(RaftStorageError::SnapshotTemporarilyUnavailable);
        assert_eq!(s.take_build_job().map(|j| j.index), None, "nobody asked");
        assert_eq!(s.snapshot(0, 2).unwrap_err(), unavailable);
        assert!(s.wants_snapshot());
        s.set_snapshot_source(SnapshotSource {
            range: shale_rpc::RangeDescriptor {
                id: 7,
                start_key: bytes::Bytes::new(),
                end_key: bytes::Bytes::new(),
                epoch: shale_rpc::Epoch::default(),
                replicas: Vec::new(),
            },
            applied_index: 12,
            applied_term: 6,
            frozen: None,
        });
        let job = s.take_build_job().expect("asked for");
        assert_eq!((job.index, job.term, job.range.id), (12, 6, 7));
        assert_eq!(job.conf_state.voters, vec![1, 2, 3]);
        assert!(!s.wants_snapshot(), "taken");
        assert_eq!(s.snapshot(0, 2).unwrap_err(), unavailable);
        assert!(!s.wants_snapshot(), "one build at a time");
        assert!(s.take_build_job().is_none());
        let built = |index: u64| {
            let mut snapshot = Snapshot::default();
            snapshot.mut_metadata().index = index;
            snapshot.mut_metadata().term = 6;
            snapshot
        };
        s.offer_snapshot(built(12), Instant::now());
        assert_eq!(s.snapshot(0, 2).unwrap().get_metadata().index, 12);
        assert_eq!(
            s.snapshot(0, 3).unwrap_err(),
            unavailable,
            "handed out once"
        );
        assert!(s.wants_snapshot());
        let mut batch = engine.batch();
        s.compact_to(15, &mut batch).unwrap();
        engine.write(batch, Durability::Sync).unwrap();
        s.offer_snapshot(built(12), Instant::now());
        assert_eq!(
            s.snapshot(0, 2).unwrap_err(),
            unavailable,
            "the log no longer continues from index 12"
        );
        s.offer_snapshot(built(16), Instant::now());
        s.expire_snapshot(Duration::ZERO);
        assert_eq!(s.snapshot(0, 2).unwrap_err(), unavailable, "expired");
        s.offer_snapshot(built(16), Instant::now());
        s.drop_snapshot();
        assert!(!s.wants_snapshot());
        assert_eq!(s.snapshot(0, 2).unwrap_err(), unavailable, "dropped");
    }

    #[test]
    fn append_overwrites_conflicting_suffix_compacts_and_survives_reload() {
        let dir = tempfile::tempdir().unwrap();
        let (engine, mut s) = bootstrapped(dir.path());
        let applied = ApplyState::initial();
        assert_eq!(
            (s.first_index().unwrap(), s.last_index()),
            (6, 5),
            "a new range's log starts after 5"
        );
        let ctx = || GetEntriesContext::empty(false);
        let mut batch = engine.batch();
        s.append(
            &(6..=10).map(|i| entry(i, 6)).collect::<Vec<_>>(),
            &mut batch,
        );
        engine.write(batch, Durability::Sync).unwrap();
        let mut batch = engine.batch();
        s.append(&[entry(8, 7)], &mut batch);
        engine.write(batch, Durability::Sync).unwrap();
        assert_eq!(s.last_index(), 8);
        assert_eq!(s.term(8).unwrap(), 7);
        let got = s.entries(6, 9, None, ctx()).unwrap();
        assert_eq!(
            got.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>(),
            vec![(6, 6), (7, 6), (8, 7)]
        );

        let mut reloaded = ReplicaStorage::load(engine.clone(), 7, &applied).unwrap();
        assert_eq!(reloaded.last_index(), 8);
        assert_eq!(reloaded.term(8).unwrap(), 7);
        assert_eq!(reloaded.term(7).unwrap(), 6);
        assert_eq!(
            reloaded.term(5).unwrap(),
            5,
            "the truncated entry's term is kept"
        );
        let got = reloaded.entries(6, 9, Some(0), ctx()).unwrap();
        assert_eq!(got.len(), 1, "a size limit still returns one entry");
        assert!(reloaded.entries(6, 10, None, ctx()).is_err());
        assert_eq!(
            reloaded.initial_state().unwrap().conf_state.voters,
            vec![1, 2, 3]
        );

        let mut batch = engine.batch();
        reloaded.compact_to(7, &mut batch).unwrap();
        engine.write(batch, Durability::Sync).unwrap();
        assert_eq!(reloaded.first_index().unwrap(), 8);
        assert!(
            reloaded.entries(7, 9, None, ctx()).is_err(),
            "compacted entries are gone"
        );
        let after = ReplicaStorage::load(
            engine.clone(),
            7,
            &ApplyState {
                applied_index: 8,
                applied_term: 7,
            },
        )
        .unwrap();
        assert_eq!(
            (after.first_index().unwrap(), after.term(7).unwrap()),
            (8, 6)
        );
        assert_eq!(after.entries(8, 9, None, ctx()).unwrap()[0].term, 7);
    }
}
