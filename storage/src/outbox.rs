//! A round's outgoing Raft messages: encoded once, grouped by target store so each
//! store gets one batch per round, with snapshots set apart for their own streams.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use shale_rpc::{RaftBatch, RaftEnvelope, RangeId, ReplicaId, StoreId};
use tracing::warn;

use crate::metrics::METRICS;
use crate::replica::Replica;
use crate::snapshot::BuiltSnapshot;
use crate::store::RaftSender;

/// Outgoing Raft messages of a round, grouped by target store; snapshots apart.
#[derive(Default)]
pub struct Outbox {
    by_store: HashMap<StoreId, Vec<RaftEnvelope>>,
    snapshots: Vec<OutgoingSnapshot>,
}

/// A snapshot message, sent on its own stream.
pub struct OutgoingSnapshot {
    pub range_id: RangeId,
    pub to_store: StoreId,
    pub to_replica: ReplicaId,
    pub message: Message,
    /// The file of the snapshot the leader last built (the message's, unless a newer
    /// build replaced it meanwhile).
    pub built: Option<Arc<BuiltSnapshot>>,
}

impl Outbox {
    pub fn add(&mut self, replica: &Replica, msgs: Vec<Message>) {
        for m in msgs {
            let Some(to_store) = replica.store_of(m.to) else {
                warn!(
                    range_id = replica.range.id,
                    to = m.to,
                    "raft message to an unknown replica"
                );
                continue;
            };
            if m.get_msg_type() == MessageType::MsgSnapshot {
                // Sent on its own, its pairs read from the built file.
                self.snapshots.push(OutgoingSnapshot {
                    range_id: replica.range.id,
                    to_store,
                    to_replica: m.to,
                    message: m,
                    built: replica.built_snapshot(),
                });
                continue;
            }
            let message = Bytes::from(m.write_to_bytes().expect("raft message encodes"));
            self.by_store
                .entry(to_store)
                .or_default()
                .push(RaftEnvelope {
                    range_id: replica.range.id,
                    message,
                });
        }
    }

    /// Hands the round's messages to `sender`: snapshots on their own, the rest as one
    /// batch per target store.
    pub fn send(&mut self, from_store: StoreId, sender: &mut impl RaftSender) {
        for snapshot in std::mem::take(&mut self.snapshots) {
            METRICS.snapshots_sent.inc();
            sender.send_snapshot(snapshot);
        }
        for (to_store, messages) in std::mem::take(&mut self.by_store) {
            if messages.is_empty() {
                continue;
            }
            METRICS.raft_messages_sent.inc_by(messages.len() as u64);
            sender.send(RaftBatch::of(from_store, to_store, messages));
        }
    }
}
