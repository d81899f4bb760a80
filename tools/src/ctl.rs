//! `shale ctl`: see and steer a running cluster. With placement in the cluster file it
//! asks placement (the cluster map, operators, drain, scheduling); without, it asks every
//! store in the cluster file directly and a store that does not answer is down.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Args, Subcommand};
use serde::Serialize;
use shale_rpc::client::{admin, parse_addr, ClientError};
use shale_rpc::transport::{Transport, TransportConfig};
use shale_rpc::{
    AdminReply, AdminRequest, KvError, RangeDescriptor, RangeStatus, ReplicaId, StoreId,
};

use crate::cluster_file::ClusterFile;

mod check;
mod via_placement;

/// How long `move` waits for its new replica to catch up and vote.
const LEARNER_CATCH_UP_MAX: Duration = Duration::from_secs(600);

pub(crate) use via_placement::all_routes;

#[derive(Args)]
pub struct CtlArgs {
    /// The cluster file (`shale dev` writes DATA_DIR/dev.json).
    #[arg(long, default_value = "./shale-data/dev.json")]
    cluster: PathBuf,
    /// Print JSON (stable field names) instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Subcommand)]
pub enum CtlCommand {
    /// Cluster health at a glance: stores up/down, ranges, under-replicated ranges.
    Status,
    /// Every store: state, ranges, leaders, bytes.
    Stores,
    /// Every range: bounds, replicas, leader, size
    ///
    /// A replica still catching up (a learner, no vote yet) is marked `~`; one its leader
    /// has not heard from for a while (cut off or down) `!`; one whose data the last
    /// consistency check found differs from the other replicas' `x`.
    Ranges {
        /// Only the range holding this key.
        #[arg(long)]
        key: Option<String>,
    },
    /// Check that every replica of each range holds the same data
    ///
    /// One range at a time, its leader has each replica sum the range's data as of one
    /// log entry and compares the sums. A replica that differs from the majority (or
    /// cannot read its data) is reported, and placement replaces it from a sound copy.
    /// Leaders also check their ranges on their own every
    /// `consistency.check-interval-secs` (a day by default). Exits with status 1 when a
    /// range diverged, has no majority, or could not be checked.
    Check {
        /// Only the range holding this key.
        #[arg(long)]
        key: Option<String>,
    },
    /// Split the range holding KEY at KEY.
    Split { key: String },
    /// Merge the range holding KEY with its right neighbour, which it takes over
    ///
    /// The two ranges' replicas must sit on the same stores (`shale ctl move` them
    /// together first); no data moves. The neighbour is frozen first (its keys answer
    /// busy for a moment, which clients retry), then the range takes it over once every
    /// store holds it frozen on disk. If the range changes meanwhile, the merge is
    /// rolled back; running the command again after an interruption resumes it.
    Merge { key: String },
    /// Make the replica on store TO the leader of the range holding KEY.
    TransferLeader {
        #[arg(long)]
        key: String,
        #[arg(long)]
        to: StoreId,
    },
    /// Manage S3 access keys kept in the cluster (every gateway accepts them).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Every S3 bucket: when it was created, how many objects and bytes it holds
    /// (counted by reading the bucket's object records).
    Buckets,
    /// Move the replica of the range holding KEY from store FROM to store TO: the new
    /// replica joins as a learner and the old one goes once the new one votes.
    Move {
        #[arg(long)]
        key: String,
        #[arg(long)]
        from: StoreId,
        #[arg(long)]
        to: StoreId,
    },
    /// Decommission a store: placement moves its replicas away until it holds none
    /// (`--undo` takes it back). Needs placement.
    Drain {
        store: StoreId,
        #[arg(long)]
        undo: bool,
    },
    /// Operators placement has in flight (replica moves, leader moves, splits).
    Operators,
    /// Pause or resume automatic scheduling (repair of lost replicas keeps running).
    Scheduling {
        #[arg(value_parser = ["pause", "resume"])]
        action: String,
    },
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create a key; prints its access key and secret (the only time the secret is shown).
    Create {
        /// A name to tell keys apart.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List keys (without secrets).
    List,
    /// Delete a key; gateways stop accepting it within two seconds.
    Delete { access_key: String },
}

#[derive(Debug, Serialize)]
pub struct StoreView {
    id: StoreId,
    addr: String,
    /// `up` or `down` (`draining` once placement can drain).
    state: &'static str,
    labels: BTreeMap<String, String>,
    ranges: usize,
    leaders: usize,
    used_bytes: u64,
    /// Free bytes on the store's file system, as placement last heard (none without
    /// placement).
    available_bytes: Option<u64>,
    /// Less free space than the store's reserve: it takes no new data, and placement
    /// moves its leaders and replicas away.
    low_space: bool,
    /// The wire version the store speaks with this build (its newest, or this build's
    /// if that is older), while it answers: during an upgrade, the stores still on the
    /// previous build (or pinned to its version) show it.
    wire_version: Option<u8>,
}

/// Asks every store that is up which wire version it speaks (a connection's handshake
/// settles it), each within a second.
async fn add_wire_versions(transport: &Transport, stores: &mut [StoreView]) {
    for s in stores.iter_mut().filter(|s| s.state == "up") {
        let Ok(addr) = parse_addr(&s.addr) else {
            continue;
        };
        let asked = tokio::time::timeout(Duration::from_secs(1), transport.peer_version(addr));
        s.wire_version = asked.await.ok().and_then(Result::ok);
    }
}

#[derive(Debug, Serialize)]
pub struct RangeView {
    id: u64,
    start_key: String,
    end_key: String,
    replicas: Vec<StoreId>,
    /// Stores of `replicas` whose replica is a learner: catching up, not yet voting.
    learners: Vec<StoreId>,
    /// Stores of `learners` whose replica the leader has not heard from for a while.
    silent_learners: Vec<StoreId>,
    /// Stores of `replicas` whose data the last consistency check found diverged.
    diverged: Vec<StoreId>,
    leader: Option<StoreId>,
    size_bytes: u64,
    /// As the leader last counted them; null until counted.
    key_count: Option<u64>,
    conf_ver: u64,
    version: u64,
}

/// The stores of `range`'s replicas among `ids` (replica ids).
fn stores_of(range: &RangeDescriptor, ids: &[ReplicaId]) -> Vec<StoreId> {
    range
        .replicas
        .iter()
        .filter(|r| ids.contains(&r.id))
        .map(|r| r.store_id)
        .collect()
}

impl RangeView {
    /// True when `key` lies in the range.
    fn holds(&self, key: &str) -> bool {
        self.start_key.as_str() <= key && (self.end_key.is_empty() || key < self.end_key.as_str())
    }
}

#[derive(Debug, Serialize)]
pub struct StatusView {
    stores: Vec<StoreView>,
    ranges: usize,
    under_replicated_ranges: usize,
}

/// What every reachable store reports.
struct Snapshot {
    stores: Vec<(StoreId, String, Option<Vec<RangeStatus>>)>,
}

async fn snapshot(file: &ClusterFile, transport: &Transport) -> Snapshot {
    let mut stores = Vec::new();
    for s in &file.stores {
        let status = match parse_addr(&s.addr) {
            Ok(addr) => match admin(transport, addr, &AdminRequest::Status).await {
                Ok(AdminReply::Status { ranges, .. }) => Some(ranges),
                _ => None,
            },
            Err(_) => None,
        };
        stores.push((s.store_id, s.addr.clone(), status));
    }
    Snapshot { stores }
}

pub fn key_text(k: &[u8]) -> String {
    String::from_utf8_lossy(k).into_owned()
}

impl Snapshot {
    /// Each range once, as its freshest replica (highest epoch) describes it, with its
    /// leader's store; leaders' statuses win among equals.
    fn best(&self) -> Vec<(&RangeStatus, Option<StoreId>)> {
        let mut best: BTreeMap<u64, (&RangeStatus, Option<StoreId>)> = BTreeMap::new();
        for (store, _, status) in &self.stores {
            for r in status.iter().flatten() {
                let leader = if r.is_leader {
                    Some(*store)
                } else {
                    r.leader_store
                };
                let e = best.entry(r.range_id()).or_insert((r, leader));
                if r.range.epoch > e.0.range.epoch
                    || (r.is_leader && r.range.epoch == e.0.range.epoch)
                {
                    *e = (r, leader);
                }
            }
        }
        best.into_values()
            .filter(|(r, _)| r.range.epoch.version > 0)
            .collect()
    }

    /// Each range once (see `best`).
    fn ranges(&self) -> Vec<RangeView> {
        let best = self.best();
        let mut out: Vec<RangeView> = best
            .iter()
            .map(|(r, leader)| RangeView {
                id: r.range.id,
                start_key: key_text(&r.range.start_key),
                end_key: key_text(&r.range.end_key),
                replicas: r.range.replicas.iter().map(|x| x.store_id).collect(),
                learners: stores_of(&r.range, &r.learners),
                silent_learners: stores_of(&r.range, &r.silent_learners),
                diverged: stores_of(&r.range, &r.diverged),
                leader: *leader,
                size_bytes: r.size_bytes,
                key_count: r.key_count,
                conf_ver: r.range.epoch.conf_ver,
                version: r.range.epoch.version,
            })
            .collect();
        out.sort_by(|a, b| a.start_key.cmp(&b.start_key));
        out
    }

    fn stores(&self) -> Vec<StoreView> {
        self.stores
            .iter()
            .map(|(id, addr, status)| StoreView {
                id: *id,
                addr: addr.clone(),
                state: if status.is_some() { "up" } else { "down" },
                labels: BTreeMap::new(),
                ranges: status.as_ref().map_or(0, Vec::len),
                leaders: status
                    .as_ref()
                    .map_or(0, |s| s.iter().filter(|r| r.is_leader).count()),
                used_bytes: status
                    .as_ref()
                    .map_or(0, |s| s.iter().map(|r| r.size_bytes).sum()),
                available_bytes: None,
                low_space: false,
                wire_version: None,
            })
            .collect()
    }
}

/// Replication every range should have: the cluster's store count, up to three.
fn wanted_replicas(stores: usize) -> usize {
    stores.min(3)
}

pub async fn run(args: CtlArgs) -> anyhow::Result<()> {
    let file = ClusterFile::load(&args.cluster)?;
    if let Some(placement) = file.placement()? {
        return via_placement::run(&file, &placement, args.command, args.json).await;
    }
    let transport = Transport::client(
        &file.identity()?,
        TransportConfig {
            request_timeout_ms: 2_000,
            connect_timeout_ms: 1_000,
            ..TransportConfig::default()
        },
    )
    .context("create client endpoint")?;
    match args.command {
        CtlCommand::Status => {
            let snap = snapshot(&file, &transport).await;
            let mut stores = snap.stores();
            add_wire_versions(&transport, &mut stores).await;
            let up: Vec<StoreId> = stores
                .iter()
                .filter(|s| s.state == "up")
                .map(|s| s.id)
                .collect();
            let ranges = snap.ranges();
            let wanted = wanted_replicas(file.stores.len());
            let under = ranges
                .iter()
                .filter(|r| {
                    let voting = |s: &&StoreId| {
                        up.contains(s) && !r.learners.contains(s) && !r.diverged.contains(s)
                    };
                    r.replicas.iter().filter(voting).count() < wanted || r.leader.is_none()
                })
                .count();
            let view = StatusView {
                ranges: ranges.len(),
                under_replicated_ranges: under,
                stores,
            };
            print_status(&view, args.json)?;
        }
        CtlCommand::Stores => {
            let mut stores = snapshot(&file, &transport).await.stores();
            add_wire_versions(&transport, &mut stores).await;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&stores)?);
            } else {
                print_stores(&stores);
            }
        }
        CtlCommand::Ranges { key } => {
            let mut ranges = snapshot(&file, &transport).await.ranges();
            if let Some(k) = key {
                ranges.retain(|r| r.holds(&k));
            }
            print_ranges(&ranges, args.json)?;
        }
        CtlCommand::Drain { .. } | CtlCommand::Operators | CtlCommand::Scheduling { .. } => {
            bail!("this needs placement, and the cluster file names no placement nodes")
        }
        CtlCommand::Keys(op) => keys(&file, op, args.json).await?,
        CtlCommand::Buckets => buckets(&file, args.json).await?,
        CtlCommand::Check { key } => {
            let snap = snapshot(&file, &transport).await;
            let targets = snap
                .best()
                .into_iter()
                .filter(|(r, _)| key.as_ref().is_none_or(|k| r.range.contains(k.as_bytes())))
                .map(|(r, leader)| check::Target {
                    range: r.range.clone(),
                    leader: leader.and_then(|l| file.store_addr(l)),
                })
                .collect();
            check::check_ranges(&file.identity()?, targets, args.json).await?;
        }
        CtlCommand::Split { key } => split(&file, key).await?,
        CtlCommand::Merge { key } => merge(&file, key).await?,
        CtlCommand::TransferLeader { key, to } => {
            let (range, leader) = leader_of(&file, &transport, &key).await?;
            transfer_leader(&file, &transport, &key, range, leader, to).await?;
            println!("range {range}: leader is now store {to}");
        }
        CtlCommand::Move { key, from, to } => {
            let to_addr = file
                .stores
                .iter()
                .find(|s| s.store_id == to)
                .map(|s| s.addr.clone())
                .context("--to is not in the cluster file")?;
            let (range, leader) = leader_of(&file, &transport, &key).await?;
            let add = AdminRequest::AddReplica {
                range_id: range,
                store_id: to,
                addr: to_addr,
            };
            add_until_voting(&transport, leader, &add).await?;
            let (range, leader) = leader_of(&file, &transport, &key).await?;
            let leader_store = file
                .stores
                .iter()
                .find(|s| parse_addr(&s.addr).ok() == Some(leader))
                .map(|s| s.store_id);
            if leader_store == Some(from) {
                transfer_leader(&file, &transport, &key, range, leader, to).await?;
            }
            let (range, leader) = leader_of(&file, &transport, &key).await?;
            admin(
                &transport,
                leader,
                &AdminRequest::RemoveReplica {
                    range_id: range,
                    store_id: from,
                },
            )
            .await
            .context("remove the old replica")?;
            println!("range {range}: replica moved from store {from} to store {to}");
        }
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct BucketView {
    name: String,
    created_ms: u64,
    public_read: bool,
    objects: u64,
    bytes: u64,
}

pub async fn buckets(file: &ClusterFile, json: bool) -> anyhow::Result<()> {
    let store = shale_gateway::objects::ObjectStore::new(file.client()?);
    let mut out = Vec::new();
    for (name, meta) in store.list_buckets().await.context("list buckets")? {
        // A bucket deleted meanwhile is simply left out.
        let usage = match store.bucket_usage(&name).await {
            Ok(u) => u,
            Err(shale_gateway::error::GwError::NoSuchBucket) => continue,
            Err(e) => return Err(anyhow::Error::new(e).context(format!("count {name}"))),
        };
        out.push(BucketView {
            name,
            created_ms: meta.created_ms,
            public_read: meta.public_read,
            objects: usage.objects,
            bytes: usage.bytes,
        });
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{:<40} {:<20} {:<8} {:>10} {:>16}",
        "bucket", "created (UTC)", "access", "objects", "bytes"
    );
    for b in out {
        println!(
            "{:<40} {:<20} {:<8} {:>10} {:>16}",
            b.name,
            utc(b.created_ms),
            if b.public_read { "public" } else { "private" },
            b.objects,
            b.bytes
        );
    }
    Ok(())
}

/// `YYYY-MM-DD HH:MM:SS` for milliseconds since the epoch.
fn utc(ms: u64) -> String {
    match time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64) {
        Ok(t) => format!(
            "{} {:02}:{:02}:{:02}",
            t.date(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => format!("{ms} ms"),
    }
}

pub async fn keys(file: &ClusterFile, op: KeysCommand, json: bool) -> anyhow::Result<()> {
    let kv = file.client()?;
    match op {
        KeysCommand::Create { name } => {
            let key = shale_gateway::keys::create(&kv, &name)
                .await
                .context("create key")?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"access_key": key.access_key, "secret_key": key.secret_key, "name": key.name})
                );
            } else {
                println!(
                    "access key: {}\nsecret key: {}",
                    key.access_key, key.secret_key
                );
            }
        }
        KeysCommand::List => {
            let keys = shale_gateway::keys::list(&kv).await.context("list keys")?;
            if json {
                let out: Vec<_> = keys.iter().map(|k| serde_json::json!({"access_key": k.access_key, "name": k.name, "created_ms": k.created_ms})).collect();
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                for k in keys {
                    println!("{}\t{}", k.access_key, k.name);
                }
            }
        }
        KeysCommand::Delete { access_key } => {
            if !shale_gateway::keys::delete(&kv, &access_key)
                .await
                .context("delete key")?
            {
                bail!("no key {access_key}");
            }
            if json {
                println!("{}", serde_json::json!({"deleted": access_key}));
            } else {
                println!("deleted {access_key}");
            }
        }
    }
    Ok(())
}

fn trim(k: &str) -> String {
    if k.chars().count() > 18 {
        format!("{}…", k.chars().take(17).collect::<String>())
    } else {
        k.to_string()
    }
}

/// Splits the range holding `key` at `key` (through the range's leader, either way).
async fn split(file: &ClusterFile, key: String) -> anyhow::Result<()> {
    let (left, right) = file
        .client()?
        .split(Bytes::from(key))
        .await
        .context("split")?;
    println!(
        "split: range {} now ends at {:?}; range {} starts there",
        left.id,
        key_text(&right.start_key),
        right.id
    );
    Ok(())
}

/// Merges the range holding `key` with its right neighbour (see `KvClient::merge`).
async fn merge(file: &ClusterFile, key: String) -> anyhow::Result<()> {
    let merged = file
        .client()?
        .merge(key.as_bytes())
        .await
        .context("merge")?;
    println!(
        "merged: range {} now spans {:?} to {:?}",
        merged.id,
        key_text(&merged.start_key),
        key_text(&merged.end_key)
    );
    Ok(())
}

fn print_status(view: &StatusView, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(view)?);
        return Ok(());
    }
    let up = view.stores.iter().filter(|s| s.state == "up").count();
    println!("stores: {} up, {} not up", up, view.stores.len() - up);
    println!(
        "ranges: {} ({} under-replicated or leaderless)",
        view.ranges, view.under_replicated_ranges
    );
    print_stores(&view.stores);
    Ok(())
}

fn print_ranges(ranges: &[RangeView], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(ranges)?);
        return Ok(());
    }
    println!(
        "{:<12} {:<20} {:<20} {:<12} {:>7} {:>12} {:>10}",
        "id", "start", "end", "replicas", "leader", "size", "keys"
    );
    for r in ranges {
        let replicas = replica_column(r);
        let leader = r.leader.map_or("-".to_string(), |l| l.to_string());
        let keys = r.key_count.map_or("-".to_string(), |k| k.to_string());
        println!(
            "{:<12} {:<20} {:<20} {:<12} {:>7} {:>12} {:>10}",
            r.id,
            trim(&r.start_key),
            trim(&r.end_key),
            replicas,
            leader,
            r.size_bytes,
            keys
        );
    }
    if ranges.iter().any(|r| !r.learners.is_empty()) {
        println!("~ a learner: catching up, without a vote until its leader promotes it");
    }
    if ranges.iter().any(|r| !r.silent_learners.is_empty()) {
        println!(
            "! a learner its leader has not heard from for a while (cut off or down): \
             placement adds a replica elsewhere"
        );
    }
    if ranges.iter().any(|r| !r.diverged.is_empty()) {
        println!(
            "x a replica whose data the last consistency check found differs from the \
             others': placement replaces it"
        );
    }
    Ok(())
}

/// A range's replicas as `ranges` prints them: store ids, a learner's marked `~`, a
/// silent learner's `!`, a diverged one's `x`.
fn replica_column(r: &RangeView) -> String {
    r.replicas
        .iter()
        .map(|s| {
            if r.diverged.contains(s) {
                format!("{s}x")
            } else if r.silent_learners.contains(s) {
                format!("{s}!")
            } else if r.learners.contains(s) {
                format!("{s}~")
            } else {
                s.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

pub fn print_stores(stores: &[StoreView]) {
    println!(
        "{:<6} {:<22} {:<8} {:>7} {:>8} {:>14} {:>16} {:>5}",
        "store", "addr", "state", "ranges", "leaders", "used bytes", "free bytes", "wire"
    );
    for s in stores {
        let free = match (s.available_bytes, s.low_space) {
            (Some(b), true) => format!("{b} LOW"),
            (Some(b), false) => b.to_string(),
            (None, _) => "-".into(),
        };
        let wire = s.wire_version.map_or("-".into(), |v| v.to_string());
        println!(
            "{:<6} {:<22} {:<8} {:>7} {:>8} {:>14} {:>16} {:>5}",
            s.id, s.addr, s.state, s.ranges, s.leaders, s.used_bytes, free, wire
        );
    }
}

/// The range holding `key` and the address of its leader.
async fn leader_of(
    file: &ClusterFile,
    transport: &Transport,
    key: &str,
) -> anyhow::Result<(u64, std::net::SocketAddr)> {
    for _ in 0..50 {
        let snap = snapshot(file, transport).await;
        if let Some(r) = snap.ranges().into_iter().find(|r| r.holds(key)) {
            if let Some(addr) = r
                .leader
                .and_then(|l| file.stores.iter().find(|s| s.store_id == l))
                .and_then(|s| parse_addr(&s.addr).ok())
            {
                return Ok((r.id, addr));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("no leader found for the range holding {key:?}")
}

/// Asks for a replica to be added and, while it is a learner catching up (the store
/// answers `ServerBusy`), asks again, for up to `LEARNER_CATCH_UP_MAX`: removing an old
/// replica before the new one votes would leave the range fewer voters.
async fn add_until_voting(
    transport: &Transport,
    leader: std::net::SocketAddr,
    add: &AdminRequest,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    loop {
        match admin(transport, leader, add).await {
            Ok(_) => return Ok(()),
            Err(ClientError::Kv(KvError::ServerBusy { reason }))
                if started.elapsed() < LEARNER_CATCH_UP_MAX =>
            {
                eprintln!("{reason}");
            }
            Err(e) => return Err(e).context("add the new replica"),
        }
    }
}

/// Asks `leader` to hand range `range` (holding `key`) to store `to`, and waits until it has.
async fn transfer_leader(
    file: &ClusterFile,
    transport: &Transport,
    key: &str,
    range: u64,
    leader: std::net::SocketAddr,
    to: StoreId,
) -> anyhow::Result<()> {
    admin(
        transport,
        leader,
        &AdminRequest::TransferLeader {
            range_id: range,
            to_store: to,
        },
    )
    .await
    .context("transfer leadership")?;
    wait_leader(file, transport, key, to).await
}

async fn wait_leader(
    file: &ClusterFile,
    transport: &Transport,
    key: &str,
    store: StoreId,
) -> anyhow::Result<()> {
    for _ in 0..100 {
        let snap = snapshot(file, transport).await;
        if snap
            .ranges()
            .iter()
            .any(|r| r.leader == Some(store) && r.holds(key))
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("store {store} did not become leader")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_mark_learners_silent_learners_and_diverged_replicas() {
        let r = RangeView {
            id: 1,
            start_key: String::new(),
            end_key: String::new(),
            replicas: vec![1, 2, 4, 5],
            learners: vec![4, 5],
            silent_learners: vec![5],
            diverged: vec![2],
            leader: Some(1),
            size_bytes: 0,
            key_count: None,
            conf_ver: 3,
            version: 1,
        };
        assert_eq!(replica_column(&r), "1,2x,4~,5!");
    }
}
