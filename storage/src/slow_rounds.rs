//! Store rounds long enough that every range on the store waited for them: counted
//! (`shale_store_slow_rounds`) and logged at most once a second.

use std::time::{Duration, Instant};

use shale_rpc::StoreId;
use tracing::warn;

use crate::metrics::METRICS;

/// A round at least this long held up every range on its store: counted and logged.
const SLOW_ROUND: Duration = Duration::from_millis(100);
/// Slow rounds are logged at most this often (their count covers the rest).
const SLOW_ROUND_LOG_EVERY: Duration = Duration::from_secs(1);

/// Counts rounds (message handling, ticks, persistence and apply) that took longer than
/// `SLOW_ROUND`, and logs them at most once per `SLOW_ROUND_LOG_EVERY`.
#[derive(Default)]
pub(crate) struct SlowRounds {
    logged: Option<Instant>,
    unlogged: u64,
}

impl SlowRounds {
    pub(crate) fn record(&mut self, store_id: StoreId, took: Duration, ranges: usize) {
        if took < SLOW_ROUND {
            return;
        }
        METRICS.slow_rounds.inc();
        self.unlogged += 1;
        if self
            .logged
            .is_some_and(|at| at.elapsed() < SLOW_ROUND_LOG_EVERY)
        {
            return;
        }
        warn!(
            store_id,
            ms = took.as_millis() as u64,
            ranges,
            slow_rounds = self.unlogged,
            "slow store round: every range on this store waited for it"
        );
        self.logged = Some(Instant::now());
        self.unlogged = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_rounds_are_counted_and_logged_at_most_once_a_second() {
        let mut slow = SlowRounds::default();
        let before = METRICS.slow_rounds.get();
        slow.record(1, SLOW_ROUND / 2, 10);
        assert_eq!((slow.logged.is_some(), slow.unlogged), (false, 0), "fast");
        slow.record(1, SLOW_ROUND, 10);
        assert!(slow.logged.is_some(), "the first slow round is logged");
        assert_eq!(slow.unlogged, 0);
        slow.record(1, SLOW_ROUND * 3, 10);
        slow.record(1, SLOW_ROUND * 2, 10);
        assert_eq!(slow.unlogged, 2, "within a second: counted, not logged");
        assert!(METRICS.slow_rounds.get() >= before + 3);
    }
}
