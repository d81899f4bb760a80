//! Raft messages for a range this store does not hold yet, kept a moment.
//!
//! A split creates its right-hand range on each store when that store applies the split.
//! The store that applies it first campaigns for the new range at once, so its vote
//! requests and first appends reach stores that have not applied the split yet. Dropped,
//! they cost the new range an election timeout before it serves; answered by a replica
//! created empty, they make the leader send a snapshot of data this store is about to
//! create itself. Instead such messages wait here, and the split that creates the range
//! steps them into its replica. A range that stays unknown past the grace period is taken
//! for a member added to this store: it is created empty and given a snapshot, as any
//! new member is.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use raft::eraftpb::{Message, MessageType};
use shale_rpc::{RangeId, StoreId};

use crate::command::{RANGE_INIT_INDEX, RANGE_INIT_TERM};

/// How long messages for an unknown range wait for a split to create it.
pub const EARLY_GRACE: Duration = Duration::from_secs(2);
/// Most unknown ranges with messages waiting; past this, messages go on as before.
const EARLY_RANGES_MAX: usize = 1_024;
/// Most messages kept per range: the newest (a leader repeats itself).
const EARLY_MESSAGES_MAX: usize = 8;

/// True for the messages a range born of a split sends before its peers have it: the
/// new range's log is exactly its initial state, so its candidates' logs and its
/// leader's first appends point there, and a leader's heartbeat to a follower it has
/// not heard from carries commit 0.
pub fn may_precede_a_split(m: &Message) -> bool {
    let at_birth = m.index == RANGE_INIT_INDEX && m.log_term == RANGE_INIT_TERM;
    match m.get_msg_type() {
        MessageType::MsgRequestVote | MessageType::MsgRequestPreVote => at_birth,
        MessageType::MsgAppend => at_birth,
        MessageType::MsgHeartbeat => m.commit == 0,
        _ => false,
    }
}

struct Held {
    since: Instant,
    messages: Vec<(Message, StoreId)>,
}

#[derive(Default)]
pub struct EarlyMessages {
    held: HashMap<RangeId, Held>,
}

impl EarlyMessages {
    /// Keeps `m` for `range_id` (not held here) if it may come from a split this store
    /// has yet to apply; gives it back when the caller should handle it as before (it
    /// is not such a message, the range waited past the grace period, or too many wait).
    pub fn offer(
        &mut self,
        range_id: RangeId,
        m: Message,
        from_store: StoreId,
        now: Instant,
    ) -> Option<Message> {
        if !may_precede_a_split(&m) {
            return Some(m);
        }
        let waited_out = self
            .held
            .get(&range_id)
            .is_some_and(|held| now.duration_since(held.since) >= EARLY_GRACE);
        if waited_out {
            self.held.remove(&range_id);
            return Some(m);
        }
        if !self.held.contains_key(&range_id) && self.held.len() >= EARLY_RANGES_MAX {
            return Some(m);
        }
        let held = self.held.entry(range_id).or_insert_with(|| Held {
            since: now,
            messages: Vec::new(),
        });
        if held.messages.len() == EARLY_MESSAGES_MAX {
            held.messages.remove(0);
        }
        held.messages.push((m, from_store));
        None
    }

    /// The messages kept for `range_id`, oldest first, now that it exists here.
    pub fn take(&mut self, range_id: RangeId) -> Vec<(Message, StoreId)> {
        self.held
            .remove(&range_id)
            .map(|h| h.messages)
            .unwrap_or_default()
    }

    /// Forgets ranges that waited well past the grace period (their leaders moved on).
    pub fn expire(&mut self, now: Instant) {
        self.held
            .retain(|_, h| now.duration_since(h.since) < EARLY_GRACE * 4);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: MessageType, index: u64, log_term: u64, commit: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(kind);
        m.index = index;
        m.log_term = log_term;
        m.commit = commit;
        m
    }

    fn first_append() -> Message {
        message(MessageType::MsgAppend, RANGE_INIT_INDEX, RANGE_INIT_TERM, 6)
    }

    #[test]
    fn only_messages_of_a_range_at_its_birth_wait() {
        let init = (RANGE_INIT_INDEX, RANGE_INIT_TERM);
        assert!(may_precede_a_split(&first_append()));
        for kind in [MessageType::MsgRequestVote, MessageType::MsgRequestPreVote] {
            assert!(may_precede_a_split(&message(kind, init.0, init.1, 0)));
            assert!(!may_precede_a_split(&message(kind, 40, 7, 0)));
        }
        assert!(may_precede_a_split(&message(
            MessageType::MsgHeartbeat,
            0,
            0,
            0
        )));
        assert!(!may_precede_a_split(&message(
            MessageType::MsgHeartbeat,
            0,
            0,
            12
        )));
        // A leader's probe of a member added later points past the range's birth.
        assert!(!may_precede_a_split(&message(
            MessageType::MsgAppend,
            9,
            6,
            9
        )));
        assert!(!may_precede_a_split(&message(
            MessageType::MsgSnapshot,
            0,
            0,
            0
        )));
    }

    #[test]
    fn held_messages_come_back_in_order_when_the_range_is_created() {
        let mut early = EarlyMessages::default();
        let now = Instant::now();
        let vote = message(
            MessageType::MsgRequestVote,
            RANGE_INIT_INDEX,
            RANGE_INIT_TERM,
            0,
        );
        assert!(early.offer(9, vote, 2, now).is_none());
        assert!(early.offer(9, first_append(), 2, now).is_none());
        let later = message(MessageType::MsgAppend, 30, 6, 30);
        assert!(
            early.offer(9, later, 2, now).is_some(),
            "not a split's message"
        );
        let taken = early.take(9);
        let kinds: Vec<_> = taken.iter().map(|(m, _)| m.get_msg_type()).collect();
        assert_eq!(kinds, [MessageType::MsgRequestVote, MessageType::MsgAppend]);
        assert!(taken.iter().all(|(_, from)| *from == 2));
        assert!(early.take(9).is_empty());
    }

    #[test]
    fn a_range_unknown_past_the_grace_period_is_handled_as_before() {
        let mut early = EarlyMessages::default();
        let start = Instant::now();
        assert!(early.offer(9, first_append(), 2, start).is_none());
        let soon = start + EARLY_GRACE / 2;
        assert!(early.offer(9, first_append(), 2, soon).is_none());
        let late = start + EARLY_GRACE;
        assert!(early.offer(9, first_append(), 2, late).is_some());
        assert_eq!(
            early.len(),
            0,
            "the range waits afresh from its next message"
        );
    }

    #[test]
    fn waiting_is_bounded_per_range_and_in_ranges() {
        let mut early = EarlyMessages::default();
        let now = Instant::now();
        for commit in 0..20 {
            let mut m = first_append();
            m.commit = commit;
            assert!(early.offer(1, m, 2, now).is_none());
        }
        let kept: Vec<u64> = early.take(1).iter().map(|(m, _)| m.commit).collect();
        assert_eq!(kept, (12..20).collect::<Vec<_>>(), "the newest are kept");
        for range in 0..EARLY_RANGES_MAX as u64 {
            assert!(early.offer(range, first_append(), 2, now).is_none());
        }
        assert!(early.offer(u64::MAX, first_append(), 2, now).is_some());
        early.expire(now + EARLY_GRACE * 4);
        assert_eq!(early.len(), 0);
    }
}
