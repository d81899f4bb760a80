//! Integration tests of the storage crate: in-process clusters with real RocksDB in temp
//! dirs and real QUIC on loopback.

mod bad_input;
mod cas;
mod consistency;
mod harness;
mod ingest;
mod membership;
mod merge;
mod replication;
mod snapshot_install;
mod space;
mod split;
