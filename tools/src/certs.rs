//! `shale certs`: the cluster CA and node certificates.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use shale_rpc::certs::{init_ca_dir, issue_node_cert, load_ca_dir, write_pair};

#[derive(Subcommand)]
pub enum CertsCommand {
    /// Create a new cluster CA (`ca.pem`, `ca.key`) in DIR. Keep `ca.key` safe.
    Init {
        /// Directory for the CA files.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
    },
    /// Issue a node (or client) certificate `NAME.pem`/`NAME.key` signed by the CA in DIR.
    Issue {
        /// Directory holding the CA; the new files go there too.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// File name and certificate common name, e.g. `store-1`.
        #[arg(long)]
        name: String,
        /// Extra DNS names or IP addresses for the certificate (repeatable).
        #[arg(long = "san")]
        sans: Vec<String>,
    },
}

pub fn run(cmd: CertsCommand) -> anyhow::Result<()> {
    match cmd {
        CertsCommand::Init { dir } => {
            init_ca_dir(&dir).context("create the cluster CA")?;
            println!(
                "cluster CA written to {}/ca.pem (key: {}/ca.key)",
                dir.display(),
                dir.display()
            );
        }
        CertsCommand::Issue { dir, name, sans } => {
            let ca =
                load_ca_dir(&dir).context("load the cluster CA (run `shale certs init` first)")?;
            let pair = issue_node_cert(&ca, &name, &sans).context("issue certificate")?;
            write_pair(&dir, &name, &pair).context("write certificate")?;
            println!(
                "certificate written to {}/{name}.pem (key: {}/{name}.key)",
                dir.display(),
                dir.display()
            );
        }
    }
    Ok(())
}
