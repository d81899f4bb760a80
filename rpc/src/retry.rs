//! Pacing of a client's retries: a doubling backoff with a bound, a deadline, and what a
//! failed attempt says about the next one.

use std::time::{Duration, Instant};

use crate::client::{ClientConfig, ClientError};

/// Pacing of a client's retries: a backoff that doubles up to its bound, a deadline, and
/// a bound on attempts that asks meeting an election do not count against.
pub(crate) struct Retry {
    started: Instant,
    attempts_max: u32,
    /// Attempts started, and those of them that count against `attempts_max`.
    attempt: u32,
    counted: u32,
    deadline: Duration,
    backoff: Duration,
    backoff_max: Duration,
    /// Immediate retries in a row: two stores that keep pointing at each other must not
    /// spend every attempt within a millisecond.
    now_streak: u32,
}

/// Immediate retries allowed in a row before the next one backs off.
const NOW_STREAK_MAX: u32 = 3;

impl Retry {
    pub(crate) fn new(config: &ClientConfig) -> Self {
        Retry {
            started: Instant::now(),
            attempts_max: config.attempts_max,
            attempt: 0,
            counted: 0,
            deadline: Duration::from_millis(config.deadline_ms),
            backoff: Duration::from_millis(config.backoff_initial_ms),
            backoff_max: Duration::from_millis(config.backoff_max_ms),
            now_streak: 0,
        }
    }

    /// Starts the next attempt and returns its number (from 1), or `None` once
    /// `attempts_max` attempts have counted.
    pub(crate) fn next_attempt(&mut self) -> Option<u32> {
        (self.counted < self.attempts_max).then(|| {
            self.attempt += 1;
            self.attempt
        })
    }

    /// The error for giving up, `last` saying what the last attempt met.
    pub(crate) fn unavailable(&self, last: String) -> ClientError {
        ClientError::Unavailable {
            attempts: self.attempt,
            elapsed_ms: self.elapsed_ms(),
            last,
        }
    }

    pub(crate) fn expired(&self) -> bool {
        self.started.elapsed() >= self.deadline
    }

    pub(crate) fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Sleeps the current backoff, then doubles it.
    pub(crate) async fn wait(&mut self) {
        self.wait_at_most(self.backoff_max).await
    }

    /// Sleeps as `next` calls for: while a range elects a leader, never more than
    /// `ELECTION_POLL`, so the client notices the new leader soon after it is chosen.
    /// An answer that says where to go is followed at once, but only `NOW_STREAK_MAX`
    /// times in a row; then the client backs off as for any other failure.
    pub(crate) async fn wait_for(&mut self, next: Next) {
        if next != Next::Poll {
            self.counted += 1;
        }
        match next {
            Next::Now if self.now_streak < NOW_STREAK_MAX => {
                self.now_streak += 1;
                return;
            }
            Next::Now | Next::Backoff => self.wait().await,
            Next::Poll => self.wait_at_most(ELECTION_POLL).await,
        }
        self.now_streak = 0;
    }

    async fn wait_at_most(&mut self, most: Duration) {
        tokio::time::sleep(self.backoff.min(most)).await;
        self.backoff = (self.backoff * 2).min(self.backoff_max);
    }
}

/// Longest wait between asks while a range has no leader. An election takes a few
/// hundred milliseconds; a longer wait would only add to the client's failover time.
const ELECTION_POLL: Duration = Duration::from_millis(50);

/// What a failed attempt says about the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// The answer said where to go: go at once.
    Now,
    /// The range is electing a leader: ask again shortly (not counted as an attempt).
    Poll,
    /// Back off.
    Backoff,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn asks_that_met_an_election_do_not_count_as_attempts() {
        let config = ClientConfig {
            attempts_max: 2,
            backoff_initial_ms: 1,
            ..ClientConfig::default()
        };
        let mut retry = Retry::new(&config);
        assert_eq!(retry.next_attempt(), Some(1));
        retry.wait_for(Next::Poll).await;
        assert_eq!(retry.next_attempt(), Some(2));
        retry.wait_for(Next::Poll).await;
        assert_eq!(retry.next_attempt(), Some(3), "polls are free");
        retry.wait_for(Next::Backoff).await;
        assert_eq!(retry.next_attempt(), Some(4));
        retry.wait_for(Next::Now).await;
        assert_eq!(retry.next_attempt(), None, "two counted attempts");
        match retry.unavailable("gone".into()) {
            ClientError::Unavailable { attempts, last, .. } => {
                assert_eq!((attempts, last.as_str()), (4, "gone"))
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn immediate_retries_back_off_after_a_streak() {
        let config = ClientConfig {
            backoff_initial_ms: 5,
            ..ClientConfig::default()
        };
        let mut retry = Retry::new(&config);
        let first = Duration::from_millis(5);
        for _ in 0..NOW_STREAK_MAX {
            retry.wait_for(Next::Now).await;
        }
        assert_eq!(retry.backoff, first, "no wait within the streak");
        let t = Instant::now();
        retry.wait_for(Next::Now).await;
        assert!(t.elapsed() >= first, "the retry after the streak sleeps");
        assert_eq!(
            retry.backoff,
            first * 2,
            "and backs off as any failure does"
        );
        retry.wait_for(Next::Now).await;
        assert_eq!(
            (retry.now_streak, retry.backoff),
            (1, first * 2),
            "after a wait the streak starts over"
        );
        retry.wait_for(Next::Backoff).await;
        assert_eq!(retry.now_streak, 0, "any wait ends a streak");
    }
}
