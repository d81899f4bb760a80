//! `shale kv`: read and write keys of a running cluster.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, Subcommand};

use crate::cluster_file::ClusterFile;

#[derive(Args)]
pub struct KvArgs {
    /// The cluster file (`shale dev` writes DATA_DIR/dev.json).
    #[arg(long, default_value = "./shale-data/dev.json")]
    cluster: PathBuf,
    #[command(subcommand)]
    op: KvOp,
}

#[derive(Subcommand)]
enum KvOp {
    /// Print the value of KEY (linearizable read); exit 1 if it does not exist.
    Get { key: String },
    /// Set KEY to VALUE.
    Put { key: String, value: String },
    /// Remove KEY.
    Delete { key: String },
    /// Print keys and values in [START, END) in key order.
    Scan {
        #[arg(long, default_value = "")]
        start: String,
        /// Empty means to the end of the key space.
        #[arg(long, default_value = "")]
        end: String,
        /// Most pairs to print.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

pub async fn run(args: KvArgs) -> anyhow::Result<()> {
    let client = ClusterFile::load(&args.cluster)?.client()?;
    match args.op {
        KvOp::Get { key } => match client.get(key.clone()).await.context("get")? {
            Some(v) => {
                std::io::stdout().write_all(&v)?;
                println!();
            }
            None => {
                eprintln!("{key}: not found");
                std::process::exit(1);
            }
        },
        KvOp::Put { key, value } => client.put(key, value).await.context("put")?,
        KvOp::Delete { key } => client.delete(key).await.context("delete")?,
        KvOp::Scan { start, end, limit } => {
            let page = client
                .scan(Bytes::from(start), Bytes::from(end), limit)
                .await
                .context("scan")?;
            for (k, v) in page.pairs {
                println!(
                    "{}\t{}",
                    String::from_utf8_lossy(&k),
                    String::from_utf8_lossy(&v)
                );
            }
            if let Some(next) = page.resume_key {
                eprintln!(
                    "(more; continue with --start {:?})",
                    String::from_utf8_lossy(&next)
                );
            }
        }
    }
    Ok(())
}
