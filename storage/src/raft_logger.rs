//! raft-rs logs through slog; this drain forwards its records to `tracing` with the
//! range id attached, so a store has one log stream.

use slog::{Drain, Level, Never, OwnedKVList, Record};

struct TracingDrain {
    range_id: u64,
}

impl Drain for TracingDrain {
    type Ok = ();
    type Err = Never;

    fn log(&self, record: &Record<'_>, _: &OwnedKVList) -> Result<(), Never> {
        let range_id = self.range_id;
        match record.level() {
            Level::Critical | Level::Error => {
                tracing::error!(target: "raft", range_id, "{}", record.msg())
            }
            Level::Warning => tracing::warn!(target: "raft", range_id, "{}", record.msg()),
            Level::Info => tracing::info!(target: "raft", range_id, "{}", record.msg()),
            Level::Debug | Level::Trace => {
                tracing::trace!(target: "raft", range_id, "{}", record.msg())
            }
        }
        Ok(())
    }
}

/// A raft-rs logger for one range.
pub fn range_logger(range_id: u64) -> slog::Logger {
    slog::Logger::root(TracingDrain { range_id }.fuse(), slog::o!())
}
