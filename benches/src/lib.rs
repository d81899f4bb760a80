//! Shale's benchmarks. Every figure is printed beside a baseline measured in the same run
//! on the same machine, so the numbers say something about Shale and not the hardware.

pub mod kv;
pub mod listing;
pub mod raft_core;
pub mod ranges;
pub mod s3;
pub mod schedule;
pub mod stats;
