//! A Shale store: RocksDB engine, Raft driving (raft-rs), the range state machine, and the
//! store server that answers KV requests and Raft traffic over QUIC.

pub mod addresses;
pub mod cluster;
pub mod command;
pub mod config;
pub mod consistency;
mod early;
pub use early::EARLY_GRACE;
pub mod engine;
pub mod error;
pub mod faults;
pub mod heartbeat;
pub mod key_counts;
pub mod keys;
pub mod metrics;
pub mod node;
mod outbox;
pub mod raft_logger;
pub mod replica;
pub mod replica_storage;
pub mod router;
pub mod server;
mod slow_rounds;
pub mod snapshot;
pub mod snapshot_install;
pub mod space;
mod spans;
pub mod split;
pub mod staging;
pub mod store;
mod store_msg;
pub mod wal_sync;

pub use config::StoreConfig;
pub use error::StorageError;
pub use node::StoreNode;
