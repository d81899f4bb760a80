//! Group commit off the store loop. The loop writes each round's Raft state to the WAL
//! without waiting for the disk and asks for a sync; this thread fsyncs the WAL, one sync
//! covering every round asked for while the previous one ran, and reports back on the
//! loop's queue. The loop meanwhile keeps stepping, applying and answering: the one fsync
//! a round used to wait on no longer stalls every other range on the store.

use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

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
