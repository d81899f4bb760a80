//! Errors of the storage crate: what an operator or caller needs to act on.

/// Failures of the engine, the Raft machinery, or a store's set-up.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("RocksDB: {0}")]
    Engine(String),
    #[error("stored data is corrupt: {0}")]
    Corruption(String),
    #[error("raft: {0}")]
    Raft(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("data directory belongs to store {found}, but this store is configured as {configured}; point data-dir at this store's own directory")]
    WrongStore { found: u64, configured: u64 },
    #[error("placement: {0}")]
    Placement(String),
    #[error("this store's data belongs to cluster {got:#x} but placement runs cluster {expected:#x}; point data-dir or placement addrs at the right cluster")]
    WrongCluster { expected: u64, got: u64 },
    #[error(transparent)]
    Rpc(#[from] shale_rpc::RpcError),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl StorageError {
    /// Stable code for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            StorageError::Engine(_) => "engine",
            StorageError::Corruption(_) => "corruption",
            StorageError::Raft(_) => "raft",
            StorageError::Config(_) => "config",
            StorageError::WrongStore { .. } => "wrong_store",
            StorageError::Placement(_) => "placement",
            StorageError::WrongCluster { .. } => "wrong_cluster",
            StorageError::Rpc(_) => "rpc",
            StorageError::Io(_) => "io",
        }
    }
}

impl From<raft::Error> for StorageError {
    fn from(e: raft::Error) -> Self {
        StorageError::Raft(e.to_string())
    }
}

impl From<protobuf::ProtobufError> for StorageError {
    fn from(e: protobuf::ProtobufError) -> Self {
        StorageError::Corruption(format!("protobuf: {e}"))
    }
}

impl From<postcard::Error> for StorageError {
    fn from(e: postcard::Error) -> Self {
        StorageError::Corruption(format!("postcard: {e}"))
    }
}
