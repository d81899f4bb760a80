//! Tests of the `shale` binary as real processes.

mod dev;
mod gateway_memory;
mod procs;
mod store_kill;
