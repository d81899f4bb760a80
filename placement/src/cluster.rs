//! A whole cluster in one process on loopback: placement nodes and stores that register
//! with them, real RocksDB in a directory and real QUIC with mutual TLS. Used by tests,
//! benchmarks and `shale dev`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shale_rpc::certs::TlsIdentity;
use shale_rpc::client::{ClientConfig, KvClient};
use shale_rpc::placement::{Labels, PlacementReply, PlacementRequest};
use shale_rpc::placement_client::{PlacementCallError, PlacementClient};
use shale_rpc::transport::Transport;
use shale_storage::cluster::{cluster_configs_joining, free_udp_ports};
use shale_storage::config::StoreConfig;
use shale_storage::{StorageError, StoreNode};

use crate::config::{PlacementConfig, PlacementPeer};
use crate::node::PlacementNode;

/// Placement nodes and stores started together from one directory.
pub struct PlacedCluster {
    pub dir: PathBuf,
    pub identity: TlsIdentity,
    pub placement_configs: Vec<PlacementConfig>,
    pub store_configs: Vec<StoreConfig>,
    placement: Vec<Option<PlacementNode>>,
    stores: Vec<Option<StoreNode>>,
    /// One placement client (one endpoint) for `call`.
    admin: PlacementClient,
}

/// Configs for `n` placement nodes in `dir` on free loopback ports.
pub fn placement_configs(dir: &Path, n: usize) -> std::io::Result<Vec<PlacementConfig>> {
    let ports = free_udp_ports(2 * n)?;
    let peers: Vec<PlacementPeer> = (0..n)
        .map(|i| PlacementPeer {
            node_id: i as u64 + 1,
            addr: format!("127.0.0.1:{}", ports[2 * i]),
            raft_addr: format!("127.0.0.1:{}", ports[2 * i + 1]),
        })
        .collect();
    Ok(peers
        .iter()
        .map(|p| PlacementConfig {
            node_id: p.node_id,
            listen_addr: p.addr.clone(),
            raft_listen_addr: p.raft_addr.clone(),
            data_dir: dir.join(format!("placement-{}", p.node_id)),
            peers: peers.clone(),
            ..PlacementConfig::default()
        })
        .collect())
}

impl PlacedCluster {
    /// `placement` placement nodes and `stores` stores, of which the first `bootstrap`
    /// hold the first range. `tweak` adjusts every store config (labels, heartbeat).
    pub async fn start_new(
        dir: &Path,
        placement: usize,
        stores: usize,
        bootstrap: usize,
        tweak_placement: impl Fn(&mut PlacementConfig),
        tweak_store: impl Fn(usize, &mut StoreConfig),
    ) -> Result<Self, StorageError> {
        let (_, identity) = TlsIdentity::generate_cluster()?;
        let mut placement_configs = placement_configs(dir, placement)?;
        placement_configs.iter_mut().for_each(tweak_placement);
        let addrs: Vec<String> = placement_configs
            .iter()
            .map(|c| c.listen_addr.clone())
            .collect();
        let mut store_configs = cluster_configs_joining(dir, &free_udp_ports(stores)?, bootstrap);
        for (i, c) in store_configs.iter_mut().enumerate() {
            c.placement.addrs = addrs.clone();
            tweak_store(i, c);
        }
        let transport = Transport::client(&identity, crate::node::control_transport())?;
        let admin = PlacementClient::new(transport, &addrs, ClientConfig::default())
            .map_err(|e| StorageError::Config(e.to_string()))?;
        let mut cluster = PlacedCluster {
            admin,
            dir: dir.to_path_buf(),
            identity,
            placement: placement_configs.iter().map(|_| None).collect(),
            stores: store_configs.iter().map(|_| None).collect(),
            placement_configs,
            store_configs,
        };
        for i in 0..placement {
            let node =
                PlacementNode::start(cluster.placement_configs[i].clone(), &cluster.identity);
            cluster.placement[i] = Some(node.await?);
        }
        // Stores register while starting: each waits for a placement leader.
        for i in 0..stores {
            cluster.start_store(i).await?;
        }
        Ok(cluster)
    }

    /// Placement addresses, as stores and clients are given them.
    pub fn placement_addrs(&self) -> Vec<String> {
        self.placement_configs
            .iter()
            .map(|c| c.listen_addr.clone())
            .collect()
    }

    pub fn placement_client(&self) -> Result<PlacementClient, StorageError> {
        let transport = Transport::client(&self.identity, crate::node::control_transport())?;
        PlacementClient::new(transport, &self.placement_addrs(), ClientConfig::default())
            .map_err(|e| StorageError::Config(e.to_string()))
    }

    /// A KV client that routes through placement.
    pub fn client(&self) -> Result<KvClient, StorageError> {
        let placement = Arc::new(self.placement_client()?);
        let transport = placement.transport().clone();
        Ok(KvClient::through_placement(
            transport,
            placement,
            ClientConfig::default(),
        ))
    }

    /// Sends one request to placement.
    /// Sends one request to placement through the cluster's own placement client.
    pub async fn call(&self, req: &PlacementRequest) -> Result<PlacementReply, PlacementCallError> {
        self.admin.call(req).await
    }

    pub fn store(&self, i: usize) -> Option<&StoreNode> {
        self.stores[i].as_ref()
    }

    /// Index of the placement node that leads, if one does.
    pub fn placement_leader(&self) -> Option<usize> {
        self.placement
            .iter()
            .position(|p| p.as_ref().is_some_and(PlacementNode::is_leader))
    }

    /// Adds a store (id assigned by placement) with `labels`; returns its index.
    pub async fn add_store(
        &mut self,
        labels: Labels,
        tweak: impl Fn(&mut StoreConfig),
    ) -> Result<usize, StorageError> {
        let port = free_udp_ports(1)?[0];
        let i = self.stores.len();
        let mut config = StoreConfig {
            store_id: 0,
            listen_addr: format!("127.0.0.1:{port}"),
            data_dir: self.dir.join(format!("store-new-{i}")),
            labels,
            ..self.store_configs[0].clone()
        };
        config.initial_peers = self.store_configs[0].initial_peers.clone();
        tweak(&mut config);
        let node = StoreNode::start(config.clone(), &self.identity).await?;
        config.store_id = node.store_id;
        self.store_configs.push(config);
        self.stores.push(Some(node));
        Ok(i)
    }

    pub async fn stop_store(&mut self, i: usize) {
        if let Some(node) = self.stores[i].take() {
            node.shutdown().await;
        }
    }

    pub async fn start_store(&mut self, i: usize) -> Result<(), StorageError> {
        assert!(self.stores[i].is_none(), "store {i} is running");
        self.stores[i] =
            Some(StoreNode::start(self.store_configs[i].clone(), &self.identity).await?);
        Ok(())
    }

    pub async fn stop_placement(&mut self, i: usize) {
        if let Some(node) = self.placement[i].take() {
            node.shutdown().await;
        }
    }

    /// Waits until placement has a leader, up to `timeout`.
    pub async fn wait_placement_leader(&self, timeout: Duration) -> Option<usize> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if let Some(i) = self.placement_leader() {
                return Some(i);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    pub async fn shutdown(mut self) {
        for i in 0..self.stores.len() {
            self.stop_store(i).await;
        }
        for i in 0..self.placement.len() {
            self.stop_placement(i).await;
        }
    }
}
