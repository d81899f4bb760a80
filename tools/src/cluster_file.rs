//! The cluster file: where a cluster's stores are and which certificate a client presents.
//! `shale dev` writes one as `DATA_DIR/dev.json`; operators write one for a real cluster.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use shale_rpc::certs::{TlsIdentity, TlsPaths};
use shale_rpc::client::{ClientConfig, KvClient};
use shale_rpc::placement_client::PlacementClient;
use shale_rpc::transport::{Transport, TransportConfig};
use shale_rpc::{StoreAddr, StoreId};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterFile {
    /// Every store's id and address (those known when the file was written).
    pub stores: Vec<StoreAddr>,
    /// Placement nodes' addresses; clients find ranges and new stores through them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placement: Vec<String>,
    /// The cluster CA certificate (PEM file).
    pub ca_cert: PathBuf,
    /// A client certificate signed by the cluster CA, and its key.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The S3 endpoint and its credentials, when the cluster has a gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Endpoint>,
    /// The Prometheus metrics endpoint of the process that wrote this file, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
}

/// Where a cluster's S3 endpoint is and how to sign requests to it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct S3Endpoint {
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
}

impl ClusterFile {
    pub fn load(path: &Path) -> anyhow::Result<ClusterFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read cluster file {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("parse cluster file {}", path.display()))
    }

    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("write cluster file {}", path.display()))
    }

    /// The address of store `store_id`, if the file lists it.
    pub fn store_addr(&self, store_id: StoreId) -> Option<std::net::SocketAddr> {
        self.stores
            .iter()
            .find(|s| s.store_id == store_id)
            .and_then(|s| shale_rpc::client::parse_addr(&s.addr).ok())
    }

    /// The certificate files, looked at again every 10 s by a long-running client.
    pub fn tls_paths(&self) -> TlsPaths {
        TlsPaths {
            ca_cert: self.ca_cert.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            ..TlsPaths::default()
        }
    }

    pub fn identity(&self) -> anyhow::Result<TlsIdentity> {
        TlsIdentity::from_files(&self.ca_cert, &self.cert, &self.key)
            .context("load client certificates")
    }

    pub fn client(&self) -> anyhow::Result<Arc<KvClient>> {
        let transport = Transport::client(&self.identity()?, TransportConfig::default())
            .context("create client endpoint")?;
        let client = KvClient::new(transport.clone(), &self.stores, ClientConfig::default())?;
        Ok(Arc::new(match self.placement_with(transport)? {
            Some(p) => client.with_placement(p),
            None => client,
        }))
    }

    /// A placement client, when the cluster has placement.
    pub fn placement(&self) -> anyhow::Result<Option<Arc<PlacementClient>>> {
        let transport = Transport::client(&self.identity()?, TransportConfig::default())
            .context("create client endpoint")?;
        self.placement_with(transport)
    }

    fn placement_with(
        &self,
        transport: Arc<Transport>,
    ) -> anyhow::Result<Option<Arc<PlacementClient>>> {
        if self.placement.is_empty() {
            return Ok(None);
        }
        Ok(Some(Arc::new(PlacementClient::new(
            transport,
            &self.placement,
            ClientConfig::default(),
        )?)))
    }
}
