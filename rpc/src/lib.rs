//! Shale's wire vocabulary: ids, limits, messages, the frame codec, and the QUIC
//! transport every node speaks. Everything but `transport` and `client` is pure.

pub mod certs;
pub mod client;
pub mod codec;
pub mod error;
pub mod limits;
pub mod local;
pub mod messages;
pub mod placement;
pub mod placement_client;
pub mod raft_batch;
pub mod range_cache;
mod retry;
pub mod shared;
pub mod transport;

pub use codec::{Frame, FrameKind};
pub use error::RpcError;
pub use messages::*;
pub use raft_batch::*;

/// A store (one process, one RocksDB) in the cluster.
pub type StoreId = u64;
/// A range: a contiguous slice of the key space replicated by one Raft group.
pub type RangeId = u64;
/// One replica of a range; never reused, also after the replica is removed.
pub type ReplicaId = u64;
