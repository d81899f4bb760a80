//! Consistency checks between the replicas of a range. The leader proposes a check
//! entry; every replica, applying it, sums its data exactly as applied through that
//! entry (a view pinned before anything after it is written) and tells the other
//! replicas. Each replica then judges: a sum more than half of the range's replicas
//! share is the range's data, and a replica with another sum, or whose data could not
//! be read, has diverged. Placement replaces diverged replicas.
//!
//! `Check` and `judge` are I/O-free; `spawn_sum` reads the engine on a thread of its own.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use shale_rpc::{CheckOutcome, RangeDescriptor, RangeSum, ReplicaId};

use crate::engine::{Cf, Engine};
use crate::StorageError;

/// How long a check waits for every replica's answer after this replica applied it; a
/// replica that has not answered by then (down, or added after the check's entry)
/// counts as missing, not as diverged.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(300);

/// Most sums a process computes at once; a leader proposes no check (and the admin
/// request answers `ServerBusy`) while this many run. Each holds a pinned engine view.
pub const SUMS_IN_FLIGHT_MAX: usize = 4;

static SUMS_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Sums read one range at a time per process: a check is background work and must not
/// take the disk from clients.
static SCAN: Mutex<()> = Mutex::new(());

/// Bytes a second a sum reads at most (`consistency.scan-bytes-per-sec`; the last store
/// started in a process sets it for the process, as sums there take turns anyway).
static SCAN_BYTES_PER_SEC: AtomicU64 = AtomicU64::new(ConsistencyConfig::SCAN_DEFAULT);

/// When ranges are checked.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct ConsistencyConfig {
    /// Each range's leader checks its replicas about this often (the first check of a
    /// range comes at a point of the interval set by its id, so checks spread out).
    /// 0 turns periodic checks off; `shale ctl check` still runs one.
    pub check_interval_secs: u64,
    /// A replica reads its range's data for a check at most this fast (bytes a second;
    /// a 96 MiB range takes 1.5 s at the default), so checks leave the disk to clients.
    pub scan_bytes_per_sec: u64,
}

impl Default for ConsistencyConfig {
    fn default() -> Self {
        ConsistencyConfig {
            check_interval_secs: 24 * 3600,
            scan_bytes_per_sec: Self::SCAN_DEFAULT,
        }
    }
}

impl ConsistencyConfig {
    const SCAN_DEFAULT: u64 = 64 << 20;

    /// Makes this process's sums read at most `scan_bytes_per_sec`.
    pub fn apply_scan_rate(&self) {
        SCAN_BYTES_PER_SEC.store(self.scan_bytes_per_sec.max(1), Ordering::SeqCst);
    }

    pub fn interval(&self) -> Option<Duration> {
        (self.check_interval_secs > 0).then(|| Duration::from_secs(self.check_interval_secs))
    }
}

/// True while this process computes fewer than `SUMS_IN_FLIGHT_MAX` sums: a new check
/// may be proposed.
pub fn room_for_a_sum() -> bool {
    SUMS_IN_FLIGHT.load(Ordering::SeqCst) < SUMS_IN_FLIGHT_MAX
}

/// A consistency check under way, as one replica follows it.
#[derive(Debug)]
pub struct Check {
    pub index: u64,
    /// The range's replicas when this replica applied the check's entry; `None` while
    /// it has only heard other replicas' answers.
    expected: Option<Vec<ReplicaId>>,
    sums: BTreeMap<ReplicaId, Result<RangeSum, String>>,
    /// Since when answers are awaited (from the entry's apply, or the first answer).
    since: Instant,
}

/// Where a check stands.
#[derive(Debug, PartialEq)]
pub enum Settled {
    Pending,
    Done(CheckOutcome),
    /// Answers heard, but this replica never applied the entry (it caught up past it by
    /// snapshot, say): nothing to judge.
    Abandoned,
}

impl Check {
    pub fn new(index: u64, now: Instant) -> Check {
        Check {
            index,
            expected: None,
            sums: BTreeMap::new(),
            since: now,
        }
    }

    /// This replica applied the check's entry: `replicas` are to answer.
    pub fn expect(&mut self, replicas: Vec<ReplicaId>, now: Instant) {
        self.expected = Some(replicas);
        self.since = now;
    }

    pub fn record(&mut self, replica: ReplicaId, sum: Result<RangeSum, String>) {
        self.sums.insert(replica, sum);
    }

    /// The answers judged as they stand, missing ones and all (once this replica
    /// applied the check's entry).
    pub fn so_far(&self) -> Option<CheckOutcome> {
        let expected = self.expected.as_ref()?;
        Some(judge(self.index, expected, &self.sums))
    }

    pub fn settle(&self, now: Instant) -> Settled {
        let timed_out = now.saturating_duration_since(self.since) >= ANSWER_TIMEOUT;
        match &self.expected {
            None if timed_out => Settled::Abandoned,
            None => Settled::Pending,
            Some(expected) if timed_out || expected.iter().all(|r| self.sums.contains_key(r)) => {
                Settled::Done(judge(self.index, expected, &self.sums))
            }
            Some(_) => Settled::Pending,
        }
    }
}

/// Judges the answers of a check whose range had `expected` replicas: a sum more than
/// half of them share is the range's data; answers other than it diverged. Without
/// such a majority nobody is named (there is no telling which copy is right).
pub fn judge(
    index: u64,
    expected: &[ReplicaId],
    answers: &BTreeMap<ReplicaId, Result<RangeSum, String>>,
) -> CheckOutcome {
    let sums: Vec<(ReplicaId, Result<RangeSum, String>)> = expected
        .iter()
        .filter_map(|r| answers.get(r).map(|s| (*r, s.clone())))
        .collect();
    let mut votes: HashMap<RangeSum, usize> = HashMap::new();
    for sum in sums.iter().filter_map(|(_, s)| s.as_ref().ok()) {
        *votes.entry(*sum).or_default() += 1;
    }
    let majority = votes
        .into_iter()
        .find(|(_, n)| n * 2 > expected.len())
        .map(|(sum, _)| sum);
    let diverged = match majority {
        Some(m) => sums
            .iter()
            .filter(|(_, s)| s.as_ref() != Ok(&m))
            .map(|(r, _)| *r)
            .collect(),
        None => Vec::new(),
    };
    CheckOutcome {
        index,
        missing: expected
            .iter()
            .filter(|r| !answers.contains_key(r))
            .copied()
            .collect(),
        sums,
        agreed: majority.is_some(),
        diverged,
    }
}

/// Sums `range`'s data on a thread of its own; the answer comes on the returned
/// channel (closed without one if no thread could start). Returns once that thread has pinned its view of the engine: the caller,
/// having written out everything applied through the check's entry and nothing after
/// it, gets the sum of the data exactly as of that entry however long the read takes.
pub fn spawn_sum(
    engine: Arc<Engine>,
    range: RangeDescriptor,
    index: u64,
) -> mpsc::Receiver<Result<RangeSum, String>> {
    let range_id = range.id;
    let (done_tx, done_rx) = mpsc::sync_channel(1);
    let (pinned_tx, pinned_rx) = mpsc::sync_channel(1);
    SUMS_IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
    let started = std::thread::Builder::new()
        .name(format!("sum-{}", range.id))
        .spawn(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let rate = SCAN_BYTES_PER_SEC.load(Ordering::SeqCst);
                sum_range(&engine, &range, rate, || {
                    let _ = pinned_tx.send(());
                })
            }))
            .unwrap_or_else(|_| Err(StorageError::Engine("the sum's thread panicked".into())));
            SUMS_IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
            if let Err(e) = &result {
                tracing::warn!(range_id = range.id, index, error = %e, "range data could not be summed");
            }
            let _ = done_tx.send(result.map_err(|e| e.to_string()));
        });
    match started {
        // The thread pins its view first thing; a closed channel means it ended without.
        Ok(_) => {
            let _ = pinned_rx.recv();
        }
        // No thread, no sum: the caller sees the channel closed without an answer (its
        // replica says nothing rather than that its data is unreadable).
        Err(e) => {
            SUMS_IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(range_id = range_id, index, error = %e, "could not start a sum");
            let (_, rx) = mpsc::sync_channel(1);
            return rx;
        }
    }
    done_rx
}

/// The sum of `range`'s pairs in a view pinned at once (`pinned` runs then), read at
/// most `rate` bytes a second; the read waits for any other sum of this process to
/// finish first.
pub fn sum_range(
    engine: &Engine,
    range: &RangeDescriptor,
    rate: u64,
    pinned: impl FnOnce(),
) -> Result<RangeSum, StorageError> {
    let mut hasher = crc32fast::Hasher::new();
    let (mut keys, mut bytes) = (0u64, 0u64);
    let mut turn = None;
    // Set by the pin, read by every visit: both closures live at once.
    let started = std::cell::Cell::new(None);
    let mut paced_at = 0u64;
    engine.scan_pinned(
        Cf::Data,
        &range.start_key,
        &range.end_key,
        || {
            pinned();
            turn = Some(SCAN.lock().unwrap_or_else(|p| p.into_inner()));
            started.set(Some(Instant::now()));
        },
        |k, v| {
            keys += 1;
            bytes += (k.len() + v.len()) as u64;
            if bytes - paced_at >= PACE_STEP_BYTES {
                paced_at = bytes;
                let elapsed = started
                    .get()
                    .map_or(Duration::ZERO, |t: Instant| t.elapsed());
                std::thread::sleep(pace_delay(bytes, elapsed, rate));
            }
            hasher.update(&(k.len() as u32).to_le_bytes());
            hasher.update(k);
            hasher.update(&(v.len() as u32).to_le_bytes());
            hasher.update(v);
            true
        },
    )?;
    drop(turn);
    Ok(RangeSum {
        keys,
        bytes,
        crc32: hasher.finalize(),
    })
}

/// A sum looks at its pace after every this many bytes.
const PACE_STEP_BYTES: u64 = 1 << 20;

/// How long a read that has read `bytes` in `elapsed` waits to keep to `rate` bytes a
/// second.
fn pace_delay(bytes: u64, elapsed: Duration, rate: u64) -> Duration {
    let due = Duration::from_secs_f64(bytes as f64 / rate.max(1) as f64);
    due.saturating_sub(elapsed)
}

/// When a leader first checks a range it just began leading: a point within one
/// interval set by the range's id, so a store's ranges spread their checks.
pub fn first_check_at(range_id: u64, interval: Duration, now: Instant) -> Instant {
    let secs = interval.as_secs().max(1);
    // A multiplicative hash spreads consecutive ids over the interval.
    let offset = range_id.wrapping_mul(0x9e37_79b9_7f4a_7c15) % secs;
    now + Duration::from_secs(offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(crc32: u32) -> Result<RangeSum, String> {
        Ok(RangeSum {
            keys: 3,
            bytes: 30,
            crc32,
        })
    }

    fn answers(
        list: &[(ReplicaId, Result<RangeSum, String>)],
    ) -> BTreeMap<ReplicaId, Result<RangeSum, String>> {
        list.iter().cloned().collect()
    }

    #[test]
    fn the_odd_one_out_of_three_has_diverged() {
        let out = judge(
            9,
            &[1, 2, 3],
            &answers(&[(1, sum(7)), (2, sum(8)), (3, sum(7))]),
        );
        assert!(out.agreed);
        assert_eq!(out.diverged, vec![2]);
        assert!(out.missing.is_empty());
        assert_eq!(out.index, 9);
    }

    #[test]
    fn unreadable_data_counts_as_diverged_but_only_beside_a_majority() {
        let unreadable = Err("corrupt block".to_string());
        let out = judge(
            9,
            &[1, 2, 3],
            &answers(&[(1, sum(7)), (2, unreadable.clone()), (3, sum(7))]),
        );
        assert_eq!(out.diverged, vec![2]);
        // Two of three unreadable: no majority, nobody named.
        let out = judge(
            9,
            &[1, 2, 3],
            &answers(&[(1, sum(7)), (2, unreadable.clone()), (3, unreadable)]),
        );
        assert!(!out.agreed);
        assert!(out.diverged.is_empty());
    }

    #[test]
    fn without_a_majority_of_all_replicas_nobody_is_named() {
        // Two answered and differ, the third is missing: which copy is right is unknown.
        let out = judge(9, &[1, 2, 3], &answers(&[(1, sum(7)), (2, sum(8))]));
        assert!(!out.agreed);
        assert!(out.diverged.is_empty());
        assert_eq!(out.missing, vec![3]);
        // Two agree and the third is missing: agreed, nobody diverged.
        let out = judge(9, &[1, 2, 3], &answers(&[(1, sum(7)), (2, sum(7))]));
        assert!(out.agreed);
        assert!(out.diverged.is_empty());
    }

    #[test]
    fn answers_of_replicas_not_in_the_range_are_left_out() {
        let out = judge(
            9,
            &[1, 2, 3],
            &answers(&[(1, sum(7)), (2, sum(7)), (3, sum(7)), (4, sum(8))]),
        );
        assert!(out.agreed);
        assert!(out.diverged.is_empty());
        assert_eq!(out.sums.len(), 3);
    }

    #[test]
    fn a_check_settles_when_all_answer_or_the_wait_is_over() {
        let t0 = Instant::now();
        let mut check = Check::new(9, t0);
        check.record(2, sum(7));
        assert_eq!(check.settle(t0), Settled::Pending, "not applied here yet");
        assert_eq!(check.settle(t0 + ANSWER_TIMEOUT), Settled::Abandoned);
        check.expect(vec![1, 2, 3], t0);
        check.record(1, sum(7));
        assert_eq!(check.settle(t0), Settled::Pending);
        let Settled::Done(out) = check.settle(t0 + ANSWER_TIMEOUT) else {
            panic!("a check past its wait is judged");
        };
        assert_eq!(out.missing, vec![3]);
        assert!(out.agreed);
        assert_eq!(check.so_far().map(|o| o.missing), Some(vec![3]));
        check.record(3, sum(9));
        let Settled::Done(out) = check.settle(t0) else {
            panic!("a check all answered is judged at once");
        };
        assert_eq!(out.diverged, vec![3]);
    }

    #[test]
    fn a_sum_waits_only_when_ahead_of_its_rate() {
        let mib = 1 << 20;
        // 64 MiB at 64 MiB/s is due at 1 s.
        assert_eq!(
            pace_delay(64 * mib, Duration::from_millis(250), 64 * mib),
            Duration::from_millis(750)
        );
        assert_eq!(
            pace_delay(64 * mib, Duration::from_secs(2), 64 * mib),
            Duration::ZERO
        );
    }

    #[test]
    fn a_sum_covers_the_ranges_pairs_alone_and_keeps_to_its_rate() {
        use crate::engine::Durability;
        use shale_rpc::{Epoch, ReplicaDescriptor};
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), &Default::default()).unwrap();
        let mut batch = engine.batch();
        // 3 MiB in [b, c); one key on either side.
        for i in 0..48u32 {
            batch.put(
                Cf::Data,
                format!("b{i:03}").as_bytes(),
                &vec![i as u8; 64 << 10],
            );
        }
        batch.put(Cf::Data, b"a", b"outside");
        batch.put(Cf::Data, b"c", b"outside");
        engine.write(batch, Durability::Sync).unwrap();
        let range = RangeDescriptor {
            id: 3,
            start_key: "b".into(),
            end_key: "c".into(),
            epoch: Epoch::default(),
            replicas: vec![ReplicaDescriptor { id: 1, store_id: 1 }],
        };
        let fast = sum_range(&engine, &range, u64::MAX, || {}).unwrap();
        assert_eq!(fast.keys, 48);
        assert_eq!(fast.bytes, 48 * (4 + (64 << 10)));
        // At 1 MiB/s the 3 MiB take at least 2 s (it paces after each MiB read).
        let started = Instant::now();
        let slow = sum_range(&engine, &range, 1 << 20, || {}).unwrap();
        assert!(
            started.elapsed() >= Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(slow, fast);
        // One changed value changes the sum, and keys outside the range do not.
        let mut batch = engine.batch();
        batch.put(Cf::Data, b"b007", &vec![8u8; 64 << 10]);
        batch.put(Cf::Data, b"c", b"elsewhere");
        engine.write(batch, Durability::Sync).unwrap();
        let changed = sum_range(&engine, &range, u64::MAX, || {}).unwrap();
        assert_ne!(changed.crc32, fast.crc32);
        assert_eq!((changed.keys, changed.bytes), (fast.keys, fast.bytes));
    }

    #[test]
    fn first_checks_spread_over_the_interval() {
        let now = Instant::now();
        let day = Duration::from_secs(86_400);
        let offsets: std::collections::BTreeSet<u64> = (1..=100)
            .map(|id| first_check_at(id, day, now).duration_since(now).as_secs())
            .collect();
        assert!(offsets.iter().all(|&s| s < 86_400));
        assert!(
            offsets.len() > 90,
            "ids land at distinct points: {offsets:?}"
        );
    }
}
