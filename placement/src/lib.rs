//! The placement driver: knows every store and range, hands out ids, and schedules
//! replica moves, leader moves and splits. Its state is replicated through its own Raft
//! group (the storage crate's machinery, one range); the leader of that range leads
//! placement.

pub mod cluster;
pub mod config;
pub mod ids;
pub mod node;
pub mod operator;
pub mod schedule;
pub mod service;
pub mod state;
pub mod view;

pub use config::{PlacementConfig, PlacementPeer};
pub use node::PlacementNode;
