//! Tests of the `shale` binary as real processes.

mod bench_json;
mod ctl;
mod dev;
mod gateway_crash;
mod gateway_memory;
mod load;
mod placement_kill;
mod procs;
mod store_kill;
