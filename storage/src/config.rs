//! A store's configuration (TOML, kebab-case). Every field has a default; `validate`
//! refuses to start on nonsense.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
/// Paths of the PEM files for mutual TLS (kept with the transport that reloads them).
pub use shale_rpc::certs::TlsPaths;
use shale_rpc::transport::TransportConfig;

use crate::engine::EngineConfig;
use crate::StorageError;

/// Everything a `shale store` process needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct StoreConfig {
    /// This store's id: unique in the cluster, never reused, never 0.
    pub store_id: u64,
    /// UDP address the store's QUIC endpoint binds.
    pub listen_addr: String,
    /// Address other nodes use to reach this store; defaults to `listen-addr`.
    pub advertise_addr: Option<String>,
    /// Where the store's RocksDB lives. One directory per store.
    pub data_dir: PathBuf,
    /// Certificates for mutual TLS.
    pub tls: TlsPaths,
    /// The stores of the first range, used once to bootstrap a new cluster, and the
    /// addresses this store starts out knowing. Every store of a new cluster lists the
    /// same peers; a store joining later lists them too but is not among them.
    pub initial_peers: Vec<PeerConfig>,
    pub raft: RaftConfig,
    pub transport: TransportConfig,
    pub engine: EngineConfig,
    pub limits: StoreLimits,
    pub split: SplitConfig,
    pub log_gc: LogGcConfig,
    pub consistency: crate::consistency::ConsistencyConfig,
    pub ingest: IngestConfig,
    pub space: crate::space::SpaceConfig,
    /// Labels placement uses to spread replicas, e.g. `zone = "eu-1a"`, `host = "m1"`.
    pub labels: std::collections::BTreeMap<String, String>,
    /// The placement driver this store registers with and reports to.
    pub placement: crate::heartbeat::PlacementLinkConfig,
    /// The `store` label of this store's metrics (default: its id). Not configurable:
    /// placement nodes set it for their own Raft group's store.
    #[serde(skip)]
    pub gauge_label: Option<String>,
}

/// When Raft logs are truncated.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct LogGcConfig {
    /// Ticks between truncation checks on each leader.
    pub interval_ticks: u64,
    /// Fewest entries worth a truncation...
    pub entries_min: u64,
    /// ...unless the log holds at least this many payload bytes: large entries (object
    /// chunks) are truncated soon, before the Raft log's memtable is flushed with them.
    pub bytes_min: u64,
    /// Most applied entries kept for a lagging replica; past this it gets a snapshot.
    pub entries_max: u64,
}

impl Default for LogGcConfig {
    fn default() -> Self {
        LogGcConfig {
            interval_ticks: 20,
            entries_min: 64,
            bytes_min: 4 << 20,
            entries_max: 10_000,
        }
    }
}

/// Bulk loads staged as SST files (`shale load --ingest`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct IngestConfig {
    /// Most bytes of staged files waiting for their ingest on this store; staging more
    /// is refused with `ServerBusy` until ingests (or the age limit) free room.
    pub staged_bytes_max: u64,
    /// A staged file not ingested within this long is deleted (its loader died or gave
    /// up). Keep it far above any loader's retry time: a lagging replica still needs
    /// its file when the ingest entry reaches it.
    pub staged_ttl_secs: u64,
    /// Staged files written at once (each is CPU and disk work off the store loop).
    pub stage_builds_max: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            staged_bytes_max: 8 << 30,
            staged_ttl_secs: 24 * 3600,
            stage_builds_max: 2,
        }
    }
}

/// When ranges split by size.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct SplitConfig {
    /// A range holding more than this splits in two.
    pub range_size_bytes_max: u64,
    /// A range's leader checks its size after this many bytes of writes.
    pub check_after_written_bytes: u64,
    /// ...or, after fewer, once this long has passed since its last check. A check also
    /// counts the range's keys for placement, so this bounds how stale a written range's
    /// key count gets. Each check reads the range, so not too often.
    pub recheck_after_ms: u64,
}

impl Default for SplitConfig {
    fn default() -> Self {
        SplitConfig {
            range_size_bytes_max: 96 << 20,
            check_after_written_bytes: 8 << 20,
            recheck_after_ms: 300_000,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            store_id: 1,
            listen_addr: "127.0.0.1:7101".into(),
            advertise_addr: None,
            data_dir: PathBuf::from("shale-data/store-1"),
            tls: TlsPaths::default(),
            initial_peers: Vec::new(),
            raft: RaftConfig::default(),
            transport: TransportConfig::default(),
            engine: EngineConfig::default(),
            limits: StoreLimits::default(),
            split: SplitConfig::default(),
            log_gc: LogGcConfig::default(),
            consistency: Default::default(),
            ingest: IngestConfig::default(),
            space: crate::space::SpaceConfig::default(),
            labels: Default::default(),
            placement: Default::default(),
            gauge_label: None,
        }
    }
}

/// A store of the bootstrap range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PeerConfig {
    pub store_id: u64,
    pub addr: String,
}

/// Raft timing and flow control.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct RaftConfig {
    /// Length of one Raft tick.
    pub tick_ms: u64,
    /// Ticks without a leader before a follower campaigns: at least this many...
    pub election_ticks: usize,
    /// ...and fewer than this many, chosen at random each time. A narrow window keeps
    /// failover quick (the new leader is elected within `election-ticks-max` ticks of
    /// the old one's last heartbeat); a wider one makes split votes rarer.
    pub election_ticks_max: usize,
    /// Ticks between leader heartbeats.
    pub heartbeat_ticks: usize,
    /// Largest append message sent to a follower.
    pub max_size_per_msg_bytes: u64,
    /// Most append messages in flight to one follower.
    pub max_inflight_msgs: usize,
    /// Uncommitted data a leader accepts before refusing proposals.
    pub max_uncommitted_bytes: u64,
    /// Most committed entry bytes handed to apply in one round.
    pub max_committed_bytes_per_ready: u64,
    /// Idle ticks after which a leader whose followers are caught up stops ticking (and
    /// heartbeating) until the next request or message.
    pub hibernate_after_ticks: u64,
    /// A leader that has heard nothing from a learner for this long (since it was added
    /// or this replica began leading) reports it silent: cut off from the leader, or its
    /// store down, it may never catch up, and placement gives the add up for another
    /// store.
    pub learner_silent_after_ms: u64,
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            tick_ms: 40,
            election_ticks: 10,
            election_ticks_max: 14,
            heartbeat_ticks: 2,
            max_size_per_msg_bytes: 1 << 20,
            max_inflight_msgs: 256,
            max_uncommitted_bytes: 256 << 20,
            max_committed_bytes_per_ready: 64 << 20,
            hibernate_after_ticks: 40,
            learner_silent_after_ms: 10_000,
        }
    }
}

/// Bounds on queues and waits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct StoreLimits {
    /// Messages queued for the store loop; past it requests get `ServerBusy`.
    pub queue_msgs_max: usize,
    /// Messages the store loop takes in one round (one WriteBatch, one fsync).
    pub round_msgs_max: usize,
    /// A request waiting on Raft gives up after this long (keep below the client's
    /// transport request timeout).
    pub request_timeout_ms: u64,
    /// Raft batches queued per peer store before new ones are dropped.
    pub peer_queue_batches_max: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            queue_msgs_max: 16_384,
            round_msgs_max: 4_096,
            request_timeout_ms: 4_000,
            peer_queue_batches_max: 1_024,
        }
    }
}

impl StoreConfig {
    /// Reads a TOML config file.
    pub fn from_toml(text: &str) -> Result<StoreConfig, StorageError> {
        toml_parse(text)
    }

    pub fn advertise_addr(&self) -> &str {
        self.advertise_addr.as_deref().unwrap_or(&self.listen_addr)
    }

    pub fn validate(&self) -> Result<(), StorageError> {
        let bad = |m: String| Err(StorageError::Config(m));
        if self.store_id == 0 && self.placement.addrs.is_empty() {
            return bad(
                "store-id must be positive (or 0 with placement addrs: placement assigns one)"
                    .into(),
            );
        }
        if !self.placement.addrs.is_empty()
            && (self.placement.heartbeat_interval_ms == 0
                || self.placement.steps_in_flight_max == 0
                || self.placement.leaderless_report_after_ms == 0)
        {
            return bad(
                "placement heartbeat-interval-ms, steps-in-flight-max and leaderless-report-after-ms must be positive".into(),
            );
        }
        if self.raft.tick_ms == 0 || self.raft.heartbeat_ticks == 0 {
            return bad("raft tick-ms and heartbeat-ticks must be positive".into());
        }
        if self.raft.election_ticks <= self.raft.heartbeat_ticks {
            return bad("raft election-ticks must exceed heartbeat-ticks".into());
        }
        if self.raft.election_ticks_max <= self.raft.election_ticks {
            return bad("raft election-ticks-max must exceed election-ticks".into());
        }
        if self.limits.queue_msgs_max == 0
            || self.limits.round_msgs_max == 0
            || self.limits.peer_queue_batches_max == 0
        {
            return bad("store queue limits must be positive".into());
        }
        if self.limits.request_timeout_ms == 0
            || self.limits.request_timeout_ms >= self.transport.request_timeout_ms
        {
            return bad(
                "limits.request-timeout-ms must be positive and below transport.request-timeout-ms"
                    .into(),
            );
        }
        let mut ids: Vec<u64> = self.initial_peers.iter().map(|p| p.store_id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != self.initial_peers.len() || ids.contains(&0) {
            return bad("initial-peers must have distinct, positive store ids".into());
        }
        if self.log_gc.interval_ticks == 0 || self.log_gc.entries_max < self.log_gc.entries_min {
            return bad(
                "log-gc interval-ticks must be positive and entries-max at least entries-min"
                    .into(),
            );
        }
        if self.split.range_size_bytes_max == 0 || self.split.check_after_written_bytes == 0 {
            return bad("split sizes must be positive".into());
        }
        if self.consistency.scan_bytes_per_sec == 0 {
            return bad("consistency scan-bytes-per-sec must be positive".into());
        }
        if self.engine.level0_slowdown_files <= 0
            || self.engine.level0_stop_files <= self.engine.level0_slowdown_files
        {
            return bad(
                "engine level0-slowdown-files must be positive and below level0-stop-files".into(),
            );
        }
        if self.engine.open_files_max < 64 {
            return bad("engine open-files-max must be at least 64".into());
        }
        if self.ingest.staged_bytes_max == 0
            || self.ingest.staged_ttl_secs == 0
            || self.ingest.stage_builds_max == 0
        {
            return bad(
                "ingest staged-bytes-max, staged-ttl-secs and stage-builds-max must be positive"
                    .into(),
            );
        }
        self.transport.validate().map_err(StorageError::Config)
    }
}

impl RaftConfig {
    /// How long a leader may hear nothing from a learner before reporting it silent.
    pub fn learner_silent_after(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.learner_silent_after_ms)
    }

    /// How long after a quorum confirmed leadership the leader may serve reads without
    /// asking again: below the shortest time a follower waits before campaigning
    /// ((election-ticks - 1) ticks), with a margin for clock drift.
    pub fn lease(&self) -> std::time::Duration {
        let shortest_ms = (self.election_ticks as u64 - 1) * self.tick_ms;
        std::time::Duration::from_millis(shortest_ms * 4 / 5)
    }
}

fn toml_parse(text: &str) -> Result<StoreConfig, StorageError> {
    let config: StoreConfig =
        toml::from_str(text).map_err(|e| StorageError::Config(e.to_string()))?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let config = StoreConfig::default();
        config.validate().unwrap();
        let text = toml::to_string(&config).unwrap();
        let back = StoreConfig::from_toml(&text).unwrap();
        assert_eq!(back.listen_addr, config.listen_addr);
    }

    #[test]
    fn nonsense_is_refused() {
        let mut c = StoreConfig::default();
        c.raft.election_ticks = 1;
        assert!(c.validate().is_err());
        let mut c = StoreConfig::default();
        c.consistency.scan_bytes_per_sec = 0;
        assert!(c.validate().is_err());
        let c = StoreConfig {
            initial_peers: vec![PeerConfig {
                store_id: 2,
                addr: "x:1".into(),
            }],
            ..StoreConfig::default()
        };
        assert!(
            c.validate().is_ok(),
            "a joining store lists peers it is not among"
        );
        assert!(StoreConfig::from_toml("no-such-field = 1").is_err());
    }
}
