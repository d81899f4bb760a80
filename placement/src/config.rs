//! A placement node's configuration (TOML, kebab-case). Every field has a default;
//! `validate` refuses to start on nonsense.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use shale_storage::config::{RaftConfig, TlsPaths};

use crate::schedule::ScheduleConfig;

/// Everything a `shale placement` process needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct PlacementConfig {
    /// This node's id in the placement group: unique, never 0.
    pub node_id: u64,
    /// UDP address of the placement API (stores, gateways and `shale ctl` call it).
    pub listen_addr: String,
    /// UDP address for Raft traffic between placement nodes.
    pub raft_listen_addr: String,
    /// Where this node's RocksDB lives.
    pub data_dir: PathBuf,
    /// Certificates for mutual TLS.
    pub tls: TlsPaths,
    /// Every node of the placement group (this one included); the same list on each.
    pub peers: Vec<PlacementPeer>,
    pub raft: RaftConfig,
    pub schedule: ScheduleConfig,
}

/// One placement node and its two addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PlacementPeer {
    pub node_id: u64,
    /// Placement API address.
    pub addr: String,
    /// Raft address.
    pub raft_addr: String,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        PlacementConfig {
            node_id: 1,
            listen_addr: "127.0.0.1:7001".into(),
            raft_listen_addr: "127.0.0.1:7011".into(),
            data_dir: PathBuf::from("shale-data/placement-1"),
            tls: TlsPaths::default(),
            peers: Vec::new(),
            raft: RaftConfig::default(),
            schedule: ScheduleConfig::default(),
        }
    }
}

impl PlacementConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.node_id == 0 {
            return Err("node-id must be positive".into());
        }
        if !self.peers.iter().any(|p| p.node_id == self.node_id) {
            return Err(format!("peers must list this node ({})", self.node_id));
        }
        let mut ids: Vec<u64> = self.peers.iter().map(|p| p.node_id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != self.peers.len() || ids.contains(&0) {
            return Err("peers must have distinct, positive node ids".into());
        }
        self.schedule.validate()
    }

    /// The API address of placement node `id`.
    pub fn peer_addr(&self, id: u64) -> Option<&str> {
        self.peers
            .iter()
            .find(|p| p.node_id == id)
            .map(|p| p.addr.as_str())
    }
}
