//! Store-to-store Raft traffic: batches of Raft messages for many ranges, with the
//! signals that ride along (idle leaders, consistency-check sums), and the sums' types.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{RangeId, ReplicaId, StoreId};

/// A batch of Raft messages from one store to another, possibly for many ranges.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RaftBatch {
    pub from_store: StoreId,
    pub to_store: StoreId,
    pub messages: Vec<RaftEnvelope>,
    /// Ranges whose leader (on `from_store`) went idle: caught-up followers may stop
    /// ticking until the next message wakes them.
    #[serde(default)]
    pub hibernate: Vec<RangeId>,
    /// Checksums of replicas on `from_store`, for the other replicas of their ranges
    /// (consistency checks).
    #[serde(default)]
    pub sums: Vec<SumReport>,
}

impl RaftBatch {
    /// A batch of `messages` alone.
    pub fn of(from_store: StoreId, to_store: StoreId, messages: Vec<RaftEnvelope>) -> RaftBatch {
        RaftBatch {
            from_store,
            to_store,
            messages,
            hibernate: Vec::new(),
            sums: Vec::new(),
        }
    }

    /// Appends what `later` carries (for the same store) after what this one does.
    pub fn absorb(&mut self, later: RaftBatch) {
        self.messages.extend(later.messages);
        self.hibernate.extend(later.hibernate);
        self.sums.extend(later.sums);
    }

    /// True when the batch carries nothing.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.hibernate.is_empty() && self.sums.is_empty()
    }
}

/// A checksum of a range's data as one replica holds it at one log index: every pair
/// in the range's span, in key order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RangeSum {
    pub keys: u64,
    /// Key and value bytes.
    pub bytes: u64,
    /// CRC-32 (crc32fast) of each pair in turn as key length, key, value
    /// length, value (lengths as little-endian u32).
    pub crc32: u32,
}

/// One replica's answer to a consistency check: the sum of its data at the check's log
/// index, or why it could not read its data (a corrupt file, say).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SumReport {
    pub range_id: RangeId,
    /// The index of the check's log entry: every replica sums its data as applied
    /// through it.
    pub index: u64,
    pub replica_id: ReplicaId,
    pub sum: Result<RangeSum, String>,
}

/// How a consistency check of a range ended, as one replica saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckOutcome {
    /// The index of the check's log entry.
    pub index: u64,
    /// The replicas that answered, and their answers, by replica id.
    pub sums: Vec<(ReplicaId, Result<RangeSum, String>)>,
    /// Replicas of the range that did not answer in time (down, or added after the
    /// check's entry).
    pub missing: Vec<ReplicaId>,
    /// True when more than half of the range's replicas agree on one sum.
    pub agreed: bool,
    /// Replicas whose data differs from that majority's, or could not be read.
    pub diverged: Vec<ReplicaId>,
}

/// One Raft message of one range; `message` is raft-rs's protobuf encoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RaftEnvelope {
    pub range_id: RangeId,
    pub message: Bytes,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Frame, FrameKind};

    #[test]
    fn merged_raft_batches_keep_everything_each_carried() {
        let envelope = |range_id| RaftEnvelope {
            range_id,
            message: Bytes::from_static(b"m"),
        };
        let sum = SumReport {
            range_id: 9,
            index: 12,
            replica_id: 3,
            sum: Err("unreadable".into()),
        };
        let mut first = RaftBatch::of(1, 2, vec![envelope(5)]);
        let later = RaftBatch {
            hibernate: vec![7],
            sums: vec![sum.clone()],
            ..RaftBatch::of(1, 2, vec![envelope(6)])
        };
        assert!(!later.is_empty());
        first.absorb(later);
        assert_eq!(first.messages, vec![envelope(5), envelope(6)]);
        assert_eq!(first.hibernate, vec![7], "a sleep signal behind messages");
        assert_eq!(first.sums, vec![sum]);
        let frame = Frame::encode(FrameKind::RaftBatch, &first).unwrap();
        assert_eq!(
            frame.decode::<RaftBatch>(FrameKind::RaftBatch).unwrap(),
            first
        );
        assert!(RaftBatch::of(1, 2, Vec::new()).is_empty());
    }
}
