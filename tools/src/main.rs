//! `shale`: one binary for every role (store, local dev cluster, certificates, KV access,
//! benchmarks). Each subcommand lives in its own module.

mod bench;
mod certs;
mod cluster_file;
mod ctl;
mod dev;
mod failover;
mod gateway;
mod kv;
mod load;
mod load_ingest;
mod local_chunks;
mod logging;
mod md5_lanes;
mod metrics;
mod placement;
mod range_procs;
mod store;
mod store_procs;

use clap::{Parser, Subcommand};

/// Small allocations through mimalloc, large ones through the system (see `shale_alloc`).
#[global_allocator]
static ALLOC: shale_alloc::SplitAlloc = shale_alloc::SplitAlloc;

/// `shale --version`: the build and the wire protocol versions it speaks (see README's
/// "Upgrading").
fn long_version() -> &'static str {
    use shale_rpc::certs::{WIRE_VERSION, WIRE_VERSION_OLDEST};
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| {
        format!(
            "{} (wire protocol shale/{WIRE_VERSION}; also speaks shale/{WIRE_VERSION_OLDEST})",
            env!("CARGO_PKG_VERSION")
        )
    })
}

/// Shale: a sharded, strongly consistent, replicated storage engine.
///
/// Start a local cluster (a placement node, three stores and an S3 endpoint) with
/// `shale dev` (it prints the endpoint and credentials), then use any S3 client, or
/// `shale kv` with the `dev.json` it writes. Run a real cluster with
/// `shale placement --config FILE` on one or three machines, `shale store --config FILE`
/// on each storage machine, and `shale gateway --cluster FILE` in front of it;
/// `shale ctl` operates it.
#[derive(Parser)]
#[command(
    name = "shale",
    version,
    long_version = long_version(),
    propagate_version = true
)]
struct Cli {
    /// Log format: `text` for people, `json` for log pipelines.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a local cluster on loopback: placement, three stores and an S3 endpoint, data in one folder.
    Dev(dev::DevArgs),
    /// Run one store of a cluster from a TOML config file.
    Store(store::StoreArgs),
    /// Run one placement node (cluster map, ids, repair and balancing) from a TOML config.
    Placement(placement::PlacementArgs),
    /// Run an S3 endpoint in front of a cluster.
    Gateway(gateway::GatewayArgs),
    /// Create the cluster CA and node certificates for mutual TLS.
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    /// Read and write keys of a running cluster.
    Kv(kv::KvArgs),
    /// See and steer a running cluster: status, stores, ranges, split, move, leaders.
    Ctl(ctl::CtlArgs),
    /// Bulk-load a directory tree (or generated objects) into a bucket through S3, or with
    /// --ingest straight into the ranges.
    Load(load::LoadArgs),
    /// Measure throughput and latency, beside a baseline measured in the same run.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Print example configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print a config with every field at its default (`--role store`, `placement` or `gateway`).
    Example {
        #[arg(long, default_value = "store", value_parser = ["store", "placement", "gateway"])]
        role: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    logging::init(&cli.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Dev(args) => dev::run(args).await,
            Command::Store(args) => store::run(args).await,
            Command::Placement(args) => placement::run(args).await,
            Command::Gateway(args) => gateway::run(args).await,
            Command::Certs(cmd) => certs::run(cmd),
            Command::Kv(args) => kv::run(args).await,
            Command::Load(args) => load::run(args).await,
            Command::Ctl(args) => ctl::run(args).await,
            Command::Bench(cmd) => bench::run(cmd).await,
            Command::Config(ConfigCommand::Example { role }) => {
                match role.as_str() {
                    "gateway" => print!("{}", gateway::example_config()),
                    "placement" => print!("{}", placement::example_config()),
                    _ => print!("{}", store::example_config()),
                }
                Ok(())
            }
        }
    })
}
