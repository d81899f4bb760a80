//! Chunks read straight from the engines of the stores in this process, for a gateway
//! started beside them (`shale dev`, `shale bench s3` without an endpoint).

use std::sync::Arc;

use bytes::Bytes;
use shale_gateway::objects::LocalChunks;
use shale_storage::cluster::LocalCluster;
use shale_storage::engine::{Cf, Engine};

struct EngineChunks(Vec<Arc<Engine>>);

impl LocalChunks for EngineChunks {
    fn get(&self, key: &[u8]) -> Option<Bytes> {
        self.0
            .iter()
            .find_map(|engine| engine.get(Cf::Data, key).ok().flatten())
            .map(Bytes::from)
    }
}

/// The stores of `cluster` that are running, as a chunk source.
pub fn of(cluster: &LocalCluster) -> Arc<dyn LocalChunks> {
    let engines = (0..cluster.len())
        .filter_map(|i| cluster.node(i))
        .map(|node| node.engine().clone())
        .collect();
    Arc::new(EngineChunks(engines))
}
