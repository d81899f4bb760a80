//! Tests of the `shale` binary as real processes.

mod bench_json;
mod cert_rotation;
mod chaos;
mod ctl;
mod dev;
mod gateway_crash;
mod gateway_memory;
mod ingest_kill;
mod load;
mod partition;
mod placement_kill;
mod placement_partition;
mod procs;
mod relay;
mod store_kill;
mod upgrade;
