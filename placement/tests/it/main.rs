//! Integration tests of placement: in-process clusters (placement nodes and stores) with
//! real RocksDB in temp dirs and real QUIC on loopback.

mod consistency;
mod harness;
mod leader_loss;
mod membership;
mod merge;
mod scheduling;
mod space;
