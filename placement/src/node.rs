//! A running placement node: the placement group's Raft replica (a store holding one
//! range that never splits), the placement API endpoint, and the loops that follow
//! leadership, schedule and persist.

use std::sync::Arc;
use std::time::Duration;

use shale_rpc::certs::TlsIdentity;
use shale_rpc::client::{parse_addr, ClientConfig, KvClient, FIRST_RANGE_ID};
use shale_rpc::transport::{watch_tls, Transport, TransportConfig};
use shale_rpc::StoreAddr;
use shale_storage::config::{PeerConfig, RaftConfig, SplitConfig, StoreConfig};
use shale_storage::{StorageError, StoreNode};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::PlacementConfig;
use crate::service::PlacementService;

/// How often a node checks whether it leads the placement group.
const LEADERSHIP_CHECK: Duration = Duration::from_millis(100);
/// How often the leader persists changed range descriptors.
const PERSIST_INTERVAL: Duration = Duration::from_millis(500);

/// A placement node that is up.
pub struct PlacementNode {
    pub node_id: u64,
    store: Arc<StoreNode>,
    service: Arc<PlacementService>,
    api: Arc<Transport>,
    tasks: Vec<JoinHandle<()>>,
}

impl PlacementNode {
    /// Starts a placement node. Must be called inside a multi-threaded tokio runtime.
    pub async fn start(
        config: PlacementConfig,
        identity: &TlsIdentity,
    ) -> Result<PlacementNode, StorageError> {
        config.validate().map_err(StorageError::Config)?;
        let store = StoreNode::start(group_store_config(&config), identity).await?;
        let store = Arc::new(store);
        let peers: Vec<StoreAddr> = config
            .peers
            .iter()
            .map(|p| StoreAddr {
                store_id: p.node_id,
                addr: p.raft_addr.clone(),
            })
            .collect();
        let client_transport = Transport::client(identity, control_transport())?;
        let kv = KvClient::new(client_transport.clone(), &peers, ClientConfig::default())
            .map_err(|e| StorageError::Config(e.to_string()))?;
        let service = Arc::new(PlacementService::new(config.clone(), Arc::new(kv)));
        let listen =
            parse_addr(&config.listen_addr).map_err(|e| StorageError::Config(e.to_string()))?;
        let api = Transport::bind(listen, identity, control_transport())?;
        let tasks = vec![
            api.serve(service.clone()),
            // The group's store watches its own endpoints.
            watch_tls(config.tls.clone(), &[api.clone(), client_transport]),
            tokio::spawn(follow_leadership(store.clone(), service.clone())),
            tokio::spawn(schedule_loop(
                service.clone(),
                Duration::from_millis(config.schedule.interval_ms),
            )),
            tokio::spawn(persist_loop(service.clone())),
        ];
        info!(node_id = config.node_id, api = %api.local_addr()?, "placement node started");
        Ok(PlacementNode {
            node_id: config.node_id,
            store,
            service,
            api,
            tasks,
        })
    }

    pub fn is_leader(&self) -> bool {
        self.service.is_leader()
    }

    /// Stops the API and loops, then the placement group's store.
    pub async fn shutdown(self) {
        self.api.close();
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
        drop(self.service);
        match Arc::try_unwrap(self.store) {
            Ok(store) => store.shutdown().await,
            Err(_) => warn!(
                node_id = self.node_id,
                "placement store still shared at shutdown"
            ),
        }
        info!(node_id = self.node_id, "placement node stopped");
    }
}

/// Transport settings for placement's control traffic: a dead peer is given up on
/// quickly so that a new placement leader takes over within a few seconds.
pub fn control_transport() -> TransportConfig {
    TransportConfig {
        connect_timeout_ms: 500,
        request_timeout_ms: 2_000,
        ..TransportConfig::default()
    }
}

/// The placement group's replica as a store: one range covering placement's keys,
/// replicated on every placement node, never split.
fn group_store_config(config: &PlacementConfig) -> StoreConfig {
    StoreConfig {
        store_id: config.node_id,
        listen_addr: config.raft_listen_addr.clone(),
        data_dir: config.data_dir.clone(),
        tls: config.tls.clone(),
        initial_peers: config
            .peers
            .iter()
            .map(|p| PeerConfig {
                store_id: p.node_id,
                addr: p.raft_addr.clone(),
            })
            .collect(),
        // Placement must notice a dead leader within an election timeout: never sleep.
        raft: RaftConfig {
            hibernate_after_ticks: u64::MAX,
            ..config.raft.clone()
        },
        split: SplitConfig {
            range_size_bytes_max: u64::MAX / 2,
            check_after_written_bytes: u64::MAX / 2,
            recheck_after_ms: u64::MAX / 2,
        },
        gauge_label: Some(format!("placement-{}", config.node_id)),
        // Placement's own state is small and must stay writable to move data off
        // stores that are low on space.
        space: shale_storage::space::SpaceConfig { reserve_bytes: 0 },
        ..StoreConfig::default()
    }
}

/// Leads placement while this node's replica leads the placement range.
async fn follow_leadership(store: Arc<StoreNode>, service: Arc<PlacementService>) {
    loop {
        let status = store.status().await;
        let me = status.iter().find(|s| s.range_id() == FIRST_RANGE_ID);
        match me {
            Some(s) if s.is_leader => {
                if !service.is_leader() {
                    if let Err(e) = service.lead_from_storage().await {
                        warn!(error = %e, "could not load placement state; retrying");
                    }
                }
            }
            Some(s) => service.follow(s.leader_store),
            None => service.follow(None),
        }
        tokio::time::sleep(LEADERSHIP_CHECK).await;
    }
}

async fn schedule_loop(service: Arc<PlacementService>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        service.schedule_pass();
    }
}

async fn persist_loop(service: Arc<PlacementService>) {
    loop {
        tokio::time::sleep(PERSIST_INTERVAL).await;
        service.persist_ranges().await;
    }
}
