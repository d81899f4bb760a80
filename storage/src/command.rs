//! What a Raft log entry of a range carries, and the per-range records the store keeps
//! next to it. Encoded with postcard; decoding failures are corruption, never panics.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use shale_rpc::{Epoch, RangeDescriptor, RangeId, WriteOp};

use crate::StorageError;

/// A command replicated through a range's Raft log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Client writes proposed in one round, merged into one entry (group commit). Each
    /// inner list is one client's atomic write and gets its own answer.
    Write { writes: Vec<Vec<WriteOp>> },
    /// Hands out `count` ids from the counter at `ID_ALLOC_KEY` (in this range).
    AllocIds { count: u32 },
    /// Drops log entries up to `index` (of `term`) once every replica may.
    CompactLog { index: u64, term: u64 },
    /// Splits the range at `split_key`: the range keeps `[start, split_key)`, and `right`
    /// (new id, new replica ids, same stores) takes `[split_key, end)`. Proposed at
    /// `epoch`; ignored if the range changed meanwhile.
    Split {
        epoch: Epoch,
        split_key: Bytes,
        right: RangeDescriptor,
    },
    /// Bulk load: `pairs` (keys ascending, all in the range) land as one SST file each
    /// replica writes and ingests, above every write applied before it.
    Ingest { pairs: Vec<(Bytes, Bytes)> },
    /// Bulk load staged beforehand: each replica ingests its own copy of the file staged
    /// as `id` (pairs of checksum `crc32`, keys in `[first_key, last_key]`, all in the
    /// range), above every write applied before it. The bytes are in no log entry.
    /// Refused at apply unless the range is still at `epoch`: a replica added since has
    /// no copy of the file.
    IngestStaged {
        epoch: Epoch,
        id: u128,
        crc32: u32,
        first_key: Bytes,
        last_key: Bytes,
    },
    /// A consistency check: each replica sums its range's data as applied through this
    /// entry and tells the other replicas (see `consistency`).
    ComputeChecksum,
    /// Sets `key` to `value` (`None`: deletes it) if it holds `expected` (`None`:
    /// absent) when this entry applies; each replica decides alike, in log order.
    CompareAndSet {
        key: Bytes,
        expected: Option<Bytes>,
        value: Option<Bytes>,
    },
    /// The first half of a merge, proposed to the range that goes away (the right one of
    /// two neighbours whose replicas sit on the same stores): freezes it at `epoch` so
    /// that nothing changes its data or membership any more, for `target` (its left
    /// neighbour, at the epoch `target` has now) to take over its keys. Each replica's
    /// data then stays as it was through this entry, on the same store as the target's
    /// replica: the merge moves no data.
    PrepareMerge {
        epoch: Epoch,
        target: RangeDescriptor,
    },
    /// The second half, proposed to the target once every replica of `source` is frozen
    /// for it on disk: the target takes `source`'s keys, and `source`'s replica on each
    /// store is dropped. Refused at apply unless the target is still at `epoch` (the
    /// epoch its `PrepareMerge` named).
    CommitMerge {
        epoch: Epoch,
        source: RangeDescriptor,
    },
    /// Thaws a frozen range whose merge can no longer happen (its target changed first).
    RollbackMerge { epoch: Epoch },
    /// Proposed to a merge's target that will not take its source over (a replica of
    /// the source never froze): raises the target's version, so that the merge's commit
    /// can never apply and the source may thaw.
    AbandonMerge { epoch: Epoch },
}

/// What applying a command produced, for the client that proposed it.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    Written,
    Ids {
        first: u64,
        count: u32,
    },
    /// The range after a membership change.
    ConfChanged {
        range: Box<RangeDescriptor>,
    },
    /// The two ranges after a split (boxed: descriptors are large next to the others).
    Split {
        left: Box<RangeDescriptor>,
        right: Box<RangeDescriptor>,
    },
    /// A consistency check's entry applied at `index`.
    CheckStarted {
        index: u64,
    },
    /// The range after a merge step (frozen, merged or thawed).
    Merged {
        range: Box<RangeDescriptor>,
    },
}

impl Command {
    /// For a bulk load, whether all its keys lie in `range`; `None` for other commands.
    pub fn ingest_in_range(&self, range: &RangeDescriptor) -> Option<bool> {
        match self {
            Command::Ingest { pairs } => Some(range.contains_sorted(pairs)),
            Command::IngestStaged {
                first_key,
                last_key,
                ..
            } => Some(range.contains(first_key) && range.contains(last_key)),
            _ => None,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        shale_rpc::codec::to_vec_sized(self).expect("commands always encode")
    }

    pub fn decode(data: &[u8]) -> Result<Command, StorageError> {
        Ok(postcard::from_bytes(data)?)
    }
}

/// How far a replica has applied its log; written in the same batch as the data it
/// covers (without the WAL: the Raft log replays what a crash takes away).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ApplyState {
    pub applied_index: u64,
    pub applied_term: u64,
}

/// Log index and term every range's log starts after (the first range's and those
/// splits create). Above 0, so a replica created empty on a new store can tell it
/// needs a snapshot.
pub const RANGE_INIT_INDEX: u64 = 5;
pub const RANGE_INIT_TERM: u64 = 5;

impl ApplyState {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("apply state always encodes")
    }

    pub fn decode(data: &[u8]) -> Result<ApplyState, StorageError> {
        Ok(postcard::from_bytes(data)?)
    }

    /// The apply state of a new range.
    pub fn initial() -> ApplyState {
        ApplyState {
            applied_index: RANGE_INIT_INDEX,
            applied_term: RANGE_INIT_TERM,
        }
    }
}

/// Where a replica's log starts: entries up to `index` are gone. Written through the
/// WAL, and only once the applied data those entries produced is flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TruncatedState {
    pub index: u64,
    pub term: u64,
}

impl TruncatedState {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("truncated state always encodes")
    }

    pub fn decode(data: &[u8]) -> Result<TruncatedState, StorageError> {
        Ok(postcard::from_bytes(data)?)
    }
}

/// Whether a replica of a range on this store is live, frozen for a merge, or removed
/// for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaState {
    Normal,
    /// The replica was removed (or merged into its neighbour); it must never come back.
    Tombstone,
    /// The range applied a `PrepareMerge`: its data and membership no longer change, and
    /// it waits for `into` to take it over (or for the merge to be rolled back).
    Frozen(MergeTarget),
}

/// The range a frozen range merges into, and the epoch that range had when the merge
/// began: its `CommitMerge` applies only at that epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeTarget {
    pub range_id: RangeId,
    pub epoch: Epoch,
}

/// What the store remembers about a range it holds a replica of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RangeState {
    pub descriptor: RangeDescriptor,
    pub state: ReplicaState,
}

impl RangeState {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("range state always encodes")
    }

    pub fn decode(data: &[u8]) -> Result<RangeState, StorageError> {
        Ok(postcard::from_bytes(data)?)
    }
}

/// The store's identity, written once when its data directory is first used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreIdent {
    pub store_id: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn command_round_trips(keys in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..32), 0..8)) {
            let ops = keys.into_iter().map(|k| WriteOp::Put { key: Bytes::from(k.clone()), value: Bytes::from(k) }).collect();
            let cmd = Command::Write { writes: vec![ops, Vec::new()] };
            prop_assert_eq!(Command::decode(&cmd.encode()).unwrap(), cmd);
        }

        #[test]
        fn garbage_is_an_error(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Command::decode(&data);
            let _ = ApplyState::decode(&data);
            let _ = RangeState::decode(&data);
        }
    }
}
