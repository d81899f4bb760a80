//! Group commit off the store loop. The loop writes each round's Raft state to the WAL
//! without waiting for the disk and asks for a sync; this thread fsyncs the WAL, one sync
//! covering every round asked for while the previous one ran, and reports back on the
//! loop's queue. The loop meanwhile keeps stepping, applying and answering: the one fsync
//! a round used to wait on no longer stalls every other range on the store.

use std::collections::{BTreeMap, VecDeque};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use raft::eraftpb::Message;
use shale_rpc::RangeId;

use crate::engine::Engine;
use crate::metrics::METRICS;
use crate::store::StoreMsg;

#[derive(Default)]
struct State {
    /// The highest sync number asked for.
    asked: u64,
    stop: bool,
}

/// The handle the store loop owns; dropping it stops the thread and waits for it.
pub struct WalSync {
    shared: Arc<(Mutex<State>, Condvar)>,
    asked: u64,
    thread: Option<JoinHandle<()>>,
}

impl WalSync {
    /// Starts the sync thread of store `store_id`; `Synced { upto }` goes to `done` after
    /// each sync.
    pub fn start(store_id: u64, engine: Arc<Engine>, done: SyncSender<StoreMsg>) -> Self {
        let shared: Arc<(Mutex<State>, Condvar)> = Arc::default();
        let theirs = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("store-{store_id}-sync"))
            .spawn(move || run(store_id, &engine, &theirs, &done))
            .expect("spawning the WAL sync thread");
        WalSync {
            shared,
            asked: 0,
            thread: Some(thread),
        }
    }

    /// Asks for a sync of everything written so far; returns its number, which a later
    /// `Synced { upto }` with `upto` at or past it confirms.
    pub fn ask(&mut self) -> u64 {
        self.asked += 1;
        let (lock, wake) = &*self.shared;
        lock.lock().expect("sync state lock").asked = self.asked;
        wake.notify_one();
        self.asked
    }

    /// The number of the last sync asked for (0 before any).
    pub fn last_asked(&self) -> u64 {
        self.asked
    }
}

impl Drop for WalSync {
    fn drop(&mut self) {
        let (lock, wake) = &*self.shared;
        lock.lock().expect("sync state lock").stop = true;
        wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    store_id: u64,
    engine: &Engine,
    shared: &(Mutex<State>, Condvar),
    done: &SyncSender<StoreMsg>,
) {
    let (lock, wake) = shared;
    let mut synced = 0;
    loop {
        let upto = {
            let mut state = lock.lock().expect("sync state lock");
            while state.asked == synced && !state.stop {
                state = wake.wait(state).expect("sync state lock");
            }
            if state.stop {
                return;
            }
            state.asked
        };
        // Everything written before this call is on disk when it returns, so the sync
        // covers every round that asked up to `upto`.
        if let Err(e) = engine.sync_wal() {
            // Raft state that may or may not be on disk cannot be reasoned about.
            panic!("store {store_id}: syncing the raft log failed: {e}");
        }
        METRICS.fsyncs.inc();
        synced = upto;
        if done.send(StoreMsg::Synced { upto }).is_err() {
            return;
        }
    }
}

/// A ready written to the WAL that counts as persisted once sync `sync` is done.
struct Held {
    sync: u64,
    number: u64,
    /// Messages that may leave only once the ready is on disk.
    messages: Vec<Message>,
}

/// Per replica, its written readies still waiting for their sync, oldest first.
#[derive(Default)]
pub struct HeldReadies {
    by_range: BTreeMap<RangeId, VecDeque<Held>>,
}

impl HeldReadies {
    pub fn hold(&mut self, range_id: RangeId, sync: u64, number: u64, messages: Vec<Message>) {
        self.by_range.entry(range_id).or_default().push_back(Held {
            sync,
            number,
            messages,
        });
    }

    /// Whether `range_id` has a ready waiting: a later one must wait behind it.
    pub fn holds(&self, range_id: RangeId) -> bool {
        self.by_range.contains_key(&range_id)
    }

    pub fn is_empty(&self) -> bool {
        self.by_range.is_empty()
    }

    /// Drops what a replica held (it is gone or replaced: its ready numbers mean nothing
    /// to a new one).
    pub fn forget(&mut self, range_id: RangeId) {
        self.by_range.remove(&range_id);
    }

    /// Everything synced through `upto`: per range, the last ready number now persisted
    /// and the held messages, in order.
    pub fn release(&mut self, upto: u64) -> Vec<(RangeId, u64, Vec<Message>)> {
        let mut out = Vec::new();
        self.by_range.retain(|&range_id, queue| {
            let mut last = None;
            let mut messages = Vec::new();
            while queue.front().is_some_and(|h| h.sync <= upto) {
                let h = queue.pop_front().expect("checked non-empty");
                last = Some(h.number);
                messages.extend(h.messages);
            }
            if let Some(number) = last {
                out.push((range_id, number, messages));
            }
            !queue.is_empty()
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(index: u64) -> Message {
        Message {
            index,
            ..Default::default()
        }
    }

    #[test]
    fn readies_are_released_in_order_and_only_once_their_sync_is_done() {
        let mut held = HeldReadies::default();
        held.hold(1, 1, 10, vec![msg(1)]);
        held.hold(1, 2, 11, vec![msg(2)]);
        held.hold(2, 2, 5, vec![]);
        assert!(held.holds(1) && held.holds(2) && !held.holds(3));
        let released = held.release(1);
        assert_eq!(released.len(), 1, "only range 1's first ready was synced");
        assert_eq!((released[0].0, released[0].1), (1, 10));
        assert_eq!(released[0].2, vec![msg(1)]);
        let released = held.release(2);
        let got: Vec<_> = released.iter().map(|(r, n, m)| (*r, *n, m.len())).collect();
        assert_eq!(got, vec![(1, 11, 1), (2, 5, 0)]);
        assert!(held.is_empty());
        assert!(held.release(3).is_empty(), "nothing is released twice");
    }

    #[test]
    fn a_forgotten_replica_releases_nothing() {
        let mut held = HeldReadies::default();
        held.hold(7, 1, 3, vec![msg(1)]);
        held.forget(7);
        assert!(!held.holds(7));
        assert!(held.release(1).is_empty());
    }
}
