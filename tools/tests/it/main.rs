//! Tests of the `shale` binary as real processes.

mod dev;
mod procs;
mod store_kill;
