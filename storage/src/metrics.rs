//! Store metrics (Prometheus): what the store loops and servers of this process did.
//! Counters are process-wide (a `shale dev` process sums its stores).

use std::sync::LazyLock;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Every store metric.
#[derive(Default)]
pub struct StoreMetrics {
    pub rounds: Counter,
    pub slow_rounds: Counter,
    pub fsyncs: Counter,
    pub log_entries: Counter,
    pub applied_entries: Counter,
    pub raft_messages_sent: Counter,
    pub proposals: Counter,
    pub reads: Counter,
    pub snapshots_built: Counter,
    pub snapshots_sent: Counter,
    pub snapshots_applied: Counter,
    pub snapshots_ingested: Counter,
    pub ingested_files: Counter,
    pub ingested_staged_bytes: Counter,
    pub staged_files: Counter,
    pub snapshot_bytes_sent: Counter,
    pub splits: Counter,
    pub merges: Counter,
    pub learners_promoted: Counter,
    pub size_checks: Counter,
    pub size_check_scans: Counter,
    /// Per store (`store` label): a process may run several.
    pub ranges: Family<Vec<(String, String)>, Gauge>,
    pub leaders: Family<Vec<(String, String)>, Gauge>,
    pub hibernating: Family<Vec<(String, String)>, Gauge>,
    pub learners: Family<Vec<(String, String)>, Gauge>,
    pub silent_learners: Family<Vec<(String, String)>, Gauge>,
    pub diverged: Family<Vec<(String, String)>, Gauge>,
    /// By `outcome`: agreed, diverged, no_majority.
    pub checks: Family<Vec<(String, String)>, Counter>,
    /// Per store: free bytes on its data's file system, and whether it is low on space.
    pub available_bytes: Family<Vec<(String, String)>, Gauge>,
    pub low_space: Family<Vec<(String, String)>, Gauge>,
    pub writes_refused_no_space: Counter,
    pub appends_dropped_no_space: Counter,
}

/// One store's gauges at a pass over its replicas.
#[derive(Debug, Default)]
pub struct StoreGauges {
    pub ranges: i64,
    pub leaders: i64,
    pub hibernating: i64,
    /// Learners in the ranges the store leads.
    pub learners: i64,
    /// Of those, the ones their leader has not heard from for a while.
    pub silent_learners: i64,
    /// Replicas of the ranges the store leads that a consistency check found diverged.
    pub diverged: i64,
}

impl StoreMetrics {
    /// Sets the per-store gauges of `store_id`.
    pub fn set_store_gauges(&self, store: &str, g: &StoreGauges) {
        let label = vec![("store".to_string(), store.to_string())];
        self.ranges.get_or_create(&label).set(g.ranges);
        self.leaders.get_or_create(&label).set(g.leaders);
        self.hibernating.get_or_create(&label).set(g.hibernating);
        self.learners.get_or_create(&label).set(g.learners);
        self.silent_learners
            .get_or_create(&label)
            .set(g.silent_learners);
        self.diverged.get_or_create(&label).set(g.diverged);
    }

    /// Counts a consistency check a leader judged (`outcome`: agreed, diverged or
    /// no_majority).
    pub fn consistency_checks(&self, outcome: &str) {
        let label = vec![("outcome".to_string(), outcome.to_string())];
        self.checks.get_or_create(&label).inc();
    }
}

pub static METRICS: LazyLock<StoreMetrics> = LazyLock::new(StoreMetrics::default);

/// Adds the store metrics to `registry`.
pub fn register(registry: &mut Registry) {
    let m = &*METRICS;
    registry.register(
        "shale_store_rounds",
        "Store loop rounds that persisted something",
        m.rounds.clone(),
    );
    registry.register(
        "shale_store_fsyncs",
        "Synced RocksDB writes (one per round at most)",
        m.fsyncs.clone(),
    );
    registry.register(
        "shale_store_log_entries",
        "Raft log entries persisted",
        m.log_entries.clone(),
    );
    registry.register(
        "shale_store_applied_entries",
        "Raft log entries applied",
        m.applied_entries.clone(),
    );
    registry.register(
        "shale_store_raft_messages_sent",
        "Raft messages handed to peers",
        m.raft_messages_sent.clone(),
    );
    registry.register(
        "shale_store_proposals",
        "Client writes proposed",
        m.proposals.clone(),
    );
    registry.register(
        "shale_store_reads",
        "Linearizable reads started",
        m.reads.clone(),
    );
    registry.register(
        "shale_store_size_checks",
        "Size checks of ranges (after writes, or for a missing key count)",
        m.size_checks.clone(),
    );
    registry.register(
        "shale_store_size_check_scans",
        "Size checks that scanned their range (the rest were under the bound by estimate)",
        m.size_check_scans.clone(),
    );
    registry.register(
        "shale_store_slow_rounds",
        "Store loop rounds that took 100 ms or more (every range on the store waited)",
        m.slow_rounds.clone(),
    );
    registry.register(
        "shale_store_snapshots_built",
        "Snapshots built (off the store loop) for followers that need one",
        m.snapshots_built.clone(),
    );
    registry.register(
        "shale_store_snapshots_sent",
        "Snapshots streamed to a peer",
        m.snapshots_sent.clone(),
    );
    registry.register(
        "shale_store_snapshot_bytes_sent",
        "Bytes of snapshot chunks streamed to peers",
        m.snapshot_bytes_sent.clone(),
    );
    registry.register(
        "shale_store_snapshots_applied",
        "Snapshots installed",
        m.snapshots_applied.clone(),
    );
    registry.register(
        "shale_store_snapshots_ingested",
        "Snapshots installed by ingesting their pairs as an SST file written on receipt (the rest were written in the store round)",
        m.snapshots_ingested.clone(),
    );
    registry.register(
        "shale_store_ingested_files",
        "Bulk-load SST files ingested (the rest were written to a memtable they overlapped)",
        m.ingested_files.clone(),
    );
    registry.register(
        "shale_store_ingested_staged_bytes",
        "Bytes of staged bulk-load files ingested (written once, then linked into RocksDB)",
        m.ingested_staged_bytes.clone(),
    );
    registry.register(
        "shale_store_staged_files",
        "Bulk-load files staged for ingest",
        m.staged_files.clone(),
    );
    registry.register(
        "shale_store_splits",
        "Range splits applied",
        m.splits.clone(),
    );
    registry.register(
        "shale_store_merges",
        "Range merges applied (a range taking over its right neighbour)",
        m.merges.clone(),
    );
    registry.register(
        "shale_store_learners_promoted",
        "Learners this store's leaders proposed to make voters",
        m.learners_promoted.clone(),
    );
    registry.register("shale_store_ranges", "Replicas held", m.ranges.clone());
    registry.register(
        "shale_store_leaders",
        "Replicas that lead their range",
        m.leaders.clone(),
    );
    registry.register(
        "shale_store_hibernating",
        "Replicas hibernating (not ticking)",
        m.hibernating.clone(),
    );
    registry.register(
        "shale_store_learners",
        "Learners (added replicas catching up, not yet voting) in ranges the store leads",
        m.learners.clone(),
    );
    registry.register(
        "shale_store_silent_learners",
        "Learners in ranges the store leads that it has heard nothing from for \
         learner-silent-after-ms (cut off or down; placement adds a replica elsewhere)",
        m.silent_learners.clone(),
    );
    registry.register(
        "shale_store_diverged_replicas",
        "Replicas of ranges the store leads whose data the last consistency check found \
         differs from the majority's (placement replaces them)",
        m.diverged.clone(),
    );
    registry.register(
        "shale_store_consistency_checks",
        "Consistency checks judged by the ranges' leaders, by outcome (agreed, diverged, \
         no_majority)",
        m.checks.clone(),
    );
    registry.register(
        "shale_store_available_bytes",
        "Free bytes on the file system of the store's data (as last read, once a second)",
        m.available_bytes.clone(),
    );
    registry.register(
        "shale_store_low_space",
        "1 while the store has less free space than space.reserve-bytes: it refuses new \
         data it would lead, and placement moves its leaders and replicas away",
        m.low_space.clone(),
    );
    registry.register(
        "shale_store_writes_refused_no_space",
        "Writes refused because the store, or most stores of the range, were low on space",
        m.writes_refused_no_space.clone(),
    );
    registry.register(
        "shale_store_appends_dropped_no_space",
        "Raft appends a follower dropped because its store was below half its disk reserve",
        m.appends_dropped_no_space.clone(),
    );
}
