//! A cluster of stores in one process on loopback: real RocksDB in a directory, real
//! QUIC with mutual TLS. Used by tests, benchmarks and `shale dev`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::sync::Arc;

use shale_rpc::certs::TlsIdentity;
use shale_rpc::client::{ClientConfig, KvClient, FIRST_RANGE_ID};
use shale_rpc::local::LocalServices;
use shale_rpc::transport::{Transport, TransportConfig};
use shale_rpc::StoreAddr;

use crate::config::{PeerConfig, StoreConfig};
use crate::{StorageError, StoreNode};

/// Stores started together from one directory.
pub struct LocalCluster {
    pub dir: PathBuf,
    pub identity: TlsIdentity,
    pub configs: Vec<StoreConfig>,
    nodes: Vec<Option<StoreNode>>,
    /// The running stores' request handlers, for in-process callers that skip QUIC.
    local: Arc<LocalServices>,
}

/// Finds `n` free UDP ports on loopback.
pub fn free_udp_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let sockets = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    sockets
        .iter()
        .map(|s| s.local_addr().map(|a| a.port()))
        .collect()
}

/// Free space the stores of a local cluster keep (see `space`).
pub const LOCAL_RESERVE_BYTES: u64 = 256 << 20;

/// Configs for `ports.len()` stores that bootstrap the first range together.
pub fn cluster_configs(dir: &Path, ports: &[u16]) -> Vec<StoreConfig> {
    cluster_configs_joining(dir, ports, ports.len())
}

/// Configs for `ports.len()` stores of which the first `bootstrap` start the first range;
/// the others join empty (replicas are added to them later).
pub fn cluster_configs_joining(dir: &Path, ports: &[u16], bootstrap: usize) -> Vec<StoreConfig> {
    let peers: Vec<PeerConfig> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| PeerConfig {
            store_id: i as u64 + 1,
            addr: format!("127.0.0.1:{port}"),
        })
        .collect();
    peers
        .iter()
        .map(|p| StoreConfig {
            store_id: p.store_id,
            listen_addr: p.addr.clone(),
            data_dir: dir.join(format!("store-{}", p.store_id)),
            initial_peers: peers[..bootstrap].to_vec(),
            // Every store of a local cluster shares one disk (a laptop's, a test
            // machine's): a smaller reserve than a real store's.
            space: crate::space::SpaceConfig {
                reserve_bytes: LOCAL_RESERVE_BYTES,
            },
            ..StoreConfig::default()
        })
        .collect()
}

impl LocalCluster {
    /// Starts `configs` (all sharing `identity`) and returns once every store is up.
    pub async fn start(
        dir: &Path,
        identity: TlsIdentity,
        configs: Vec<StoreConfig>,
    ) -> Result<Self, StorageError> {
        let mut cluster = LocalCluster {
            dir: dir.to_path_buf(),
            identity,
            nodes: configs.iter().map(|_| None).collect(),
            configs,
            local: Arc::default(),
        };
        for i in 0..cluster.configs.len() {
            cluster.start_store(i).await?;
        }
        Ok(cluster)
    }

    /// `n` fresh stores in `dir` with a fresh CA; `tweak` adjusts each config.
    pub async fn start_new(
        dir: &Path,
        n: usize,
        tweak: impl Fn(&mut StoreConfig),
    ) -> Result<Self, StorageError> {
        let (_, identity) = TlsIdentity::generate_cluster()?;
        let mut configs = cluster_configs(dir, &free_udp_ports(n)?);
        configs.iter_mut().for_each(tweak);
        Self::start(dir, identity, configs).await
    }

    pub fn len(&self) -> usize {
        self.configs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.configs.is_empty()
    }

    pub fn node(&self, i: usize) -> Option<&StoreNode> {
        self.nodes[i].as_ref()
    }

    pub fn store_addrs(&self) -> Vec<StoreAddr> {
        self.configs
            .iter()
            .map(|c| StoreAddr {
                store_id: c.store_id,
                addr: c.advertise_addr().to_string(),
            })
            .collect()
    }

    /// The running stores' request handlers, kept current as stores stop and start: a
    /// transport given them ([`Transport::call_locally`]) reaches these stores without
    /// QUIC. Only for a gateway in this process; tests' clients keep to QUIC.
    pub fn local_services(&self) -> Arc<LocalServices> {
        self.local.clone()
    }

    /// A client of this cluster with its own endpoint.
    pub fn client(&self) -> Result<KvClient, StorageError> {
        self.client_with(ClientConfig::default())
    }

    pub fn client_with(&self, config: ClientConfig) -> Result<KvClient, StorageError> {
        let transport = Transport::client(&self.identity, TransportConfig::default())?;
        KvClient::new(transport, &self.store_addrs(), config)
            .map_err(|e| StorageError::Config(e.to_string()))
    }

    /// Starts (or restarts) store `i` from its config.
    pub async fn start_store(&mut self, i: usize) -> Result<(), StorageError> {
        assert!(self.nodes[i].is_none(), "store {i} is already running");
        let node = StoreNode::start(self.configs[i].clone(), &self.identity).await?;
        if let Some(service) = node.local_service() {
            self.local.insert(self.called_addr(i, &node), service);
        }
        self.nodes[i] = Some(node);
        Ok(())
    }

    /// The address clients call store `i` at: the one it advertises.
    fn called_addr(&self, i: usize, node: &StoreNode) -> std::net::SocketAddr {
        self.configs[i]
            .advertise_addr()
            .parse()
            .unwrap_or_else(|_| node.addr())
    }

    /// Shuts store `i` down (gracefully; processes are killed in multi-process tests).
    pub async fn stop_store(&mut self, i: usize) {
        if let Some(node) = self.nodes[i].take() {
            self.local.remove(self.called_addr(i, &node));
            node.shutdown().await;
        }
    }

    /// Index of the store holding the first range's leader, as the stores report it.
    pub async fn leader(&self) -> Option<usize> {
        for (i, node) in self.nodes.iter().enumerate() {
            let Some(node) = node else { continue };
            if node
                .status()
                .await
                .iter()
                .any(|s| s.range_id() == FIRST_RANGE_ID && s.is_leader)
            {
                return Some(i);
            }
        }
        None
    }

    /// Waits for a leader of the first range, up to `timeout`.
    pub async fn wait_leader(&self, timeout: Duration) -> Option<usize> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if let Some(i) = self.leader().await {
                return Some(i);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Stops every running store.
    pub async fn shutdown(mut self) {
        for i in 0..self.nodes.len() {
            self.stop_store(i).await;
        }
    }
}
