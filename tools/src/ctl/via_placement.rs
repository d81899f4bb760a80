//! `shale ctl` against a cluster with placement: the cluster map, operators, drain and
//! scheduling come from the placement leader; moves and leader transfers become
//! placement operators, and ctl waits for them to finish.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use shale_rpc::placement::{PlacementReply, PlacementRequest, Route, ROUTE_SCAN_LIMIT_MAX};
use shale_rpc::placement_client::PlacementClient;

use super::{add_wire_versions, RangeView, StatusView, StoreView};
use super::{buckets, key_text, keys, print_ranges, print_status, print_stores, CtlCommand};
use crate::cluster_file::ClusterFile;

/// How long ctl waits for a move or a leader transfer to show.
const OPERATOR_WAIT: Duration = Duration::from_secs(60);

pub async fn run(
    file: &ClusterFile,
    placement: &PlacementClient,
    command: CtlCommand,
    json: bool,
) -> anyhow::Result<()> {
    match command {
        CtlCommand::Status => {
            let stores = stores(placement).await?;
            let status = match call(placement, PlacementRequest::Status).await? {
                PlacementReply::Status(s) => s,
                other => bail!("unexpected answer {other:?}"),
            };
            let view = StatusView {
                ranges: status.ranges as usize,
                under_replicated_ranges: status.under_replicated_ranges as usize,
                stores,
            };
            print_status(&view, json)?;
            if !json {
                println!(
                    "placement: leader node {}, {} operators in flight, scheduling {}",
                    status.leader_node,
                    status.operators,
                    if status.scheduling_paused {
                        "paused"
                    } else {
                        "on"
                    }
                );
            }
        }
        CtlCommand::Stores => {
            let stores = stores(placement).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stores)?);
            } else {
                print_stores(&stores);
            }
        }
        CtlCommand::Ranges { key } => {
            let routes = match key {
                Some(k) => find(placement, k.as_bytes()).await?.into_iter().collect(),
                None => all_routes(placement).await?,
            };
            let ranges: Vec<RangeView> = routes.iter().map(range_view).collect();
            print_ranges(&ranges, json)?;
        }
        CtlCommand::Check { key } => {
            let routes = match key {
                Some(k) => find(placement, k.as_bytes()).await?.into_iter().collect(),
                None => all_routes(placement).await?,
            };
            let targets = routes
                .into_iter()
                .map(|r| {
                    let leader = r.leader.and_then(|l| {
                        r.stores
                            .iter()
                            .find(|s| s.store_id == l)
                            .and_then(|s| shale_rpc::client::parse_addr(&s.addr).ok())
                    });
                    super::check::Target {
                        range: r.range,
                        leader,
                    }
                })
                .collect();
            super::check::check_ranges(&file.identity()?, targets, json).await?;
        }
        CtlCommand::Split { key } => super::split(file, key).await?,
        CtlCommand::Merge { key } => super::merge(file, key).await?,
        CtlCommand::TransferLeader { key, to } => {
            let route = must_find(placement, &key).await?;
            let req = PlacementRequest::TransferLeader {
                range_id: route.range.id,
                to_store: to,
            };
            call(placement, req).await?;
            wait_for(placement, &key, |r| r.leader == Some(to)).await?;
            println!("range {}: leader is now store {to}", route.range.id);
        }
        CtlCommand::Move { key, from, to } => {
            let route = must_find(placement, &key).await?;
            let req = PlacementRequest::MoveReplica {
                range_id: route.range.id,
                from_store: from,
                to_store: to,
            };
            call(placement, req).await?;
            wait_for(placement, &key, |r| {
                r.range.replica_on(to).is_some() && r.range.replica_on(from).is_none()
            })
            .await?;
            println!(
                "range {}: replica moved from store {from} to store {to}",
                route.range.id
            );
        }
        CtlCommand::Drain { store, undo } => {
            let req = PlacementRequest::Drain {
                store_id: store,
                drain: !undo,
            };
            call(placement, req).await?;
            if json {
                println!("{}", serde_json::json!({"store": store, "draining": !undo}));
            } else if undo {
                println!("store {store}: no longer draining");
            } else {
                println!("store {store}: draining; `shale ctl stores` shows its ranges going to 0");
            }
        }
        CtlCommand::Operators => {
            let ops = match call(placement, PlacementRequest::Operators).await? {
                PlacementReply::Operators(ops) => ops,
                other => bail!("unexpected answer {other:?}"),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&ops)?);
            } else {
                println!("{:<12} {:<20} {:>8}  steps", "range", "reason", "age ms");
                for op in ops {
                    println!(
                        "{:<12} {:<20} {:>8}  {:?}",
                        op.range_id, op.reason, op.age_ms, op.steps
                    );
                }
            }
        }
        CtlCommand::Scheduling { action } => {
            let paused = action == "pause";
            call(placement, PlacementRequest::SetScheduling { paused }).await?;
            println!("scheduling {}", if paused { "paused" } else { "resumed" });
        }
        CtlCommand::Keys(op) => keys(file, op, json).await?,
        CtlCommand::Buckets => buckets(file, json).await?,
    }
    Ok(())
}

async fn call(
    placement: &PlacementClient,
    req: PlacementRequest,
) -> anyhow::Result<PlacementReply> {
    placement.call(&req).await.context("ask placement")
}

async fn stores(placement: &PlacementClient) -> anyhow::Result<Vec<StoreView>> {
    let mut stores: Vec<StoreView> = match call(placement, PlacementRequest::Stores).await? {
        PlacementReply::Stores(stores) => stores
            .into_iter()
            .map(|s| StoreView {
                id: s.id,
                addr: s.addr,
                state: s.state.as_str(),
                labels: s.labels,
                ranges: s.ranges as usize,
                leaders: s.leaders as usize,
                used_bytes: s.used_bytes,
                available_bytes: Some(s.available_bytes),
                low_space: s.low_space,
                wire_version: None,
            })
            .collect(),
        other => bail!("unexpected answer {other:?}"),
    };
    add_wire_versions(placement.transport(), &mut stores).await;
    Ok(stores)
}

async fn find(placement: &PlacementClient, key: &[u8]) -> anyhow::Result<Option<Route>> {
    let req = PlacementRequest::FindRange {
        key: Bytes::copy_from_slice(key),
    };
    match call(placement, req).await? {
        PlacementReply::Route(r) => Ok(r),
        other => bail!("unexpected answer {other:?}"),
    }
}

async fn must_find(placement: &PlacementClient, key: &str) -> anyhow::Result<Route> {
    find(placement, key.as_bytes())
        .await?
        .with_context(|| format!("placement knows no range holding {key:?} yet"))
}

/// Every range in key order, page by page.
pub(crate) async fn all_routes(placement: &PlacementClient) -> anyhow::Result<Vec<Route>> {
    let mut out: Vec<Route> = Vec::new();
    let mut start = Bytes::new();
    loop {
        let req = PlacementRequest::ScanRanges {
            start_key: start.clone(),
            limit: ROUTE_SCAN_LIMIT_MAX,
        };
        let page = match call(placement, req).await? {
            PlacementReply::Routes(r) => r,
            other => bail!("unexpected answer {other:?}"),
        };
        let last_end = page.last().map(|r| r.range.end_key.clone());
        let full = page.len() as u32 == ROUTE_SCAN_LIMIT_MAX;
        out.extend(page);
        match last_end {
            Some(end) if full && !end.is_empty() => start = end,
            _ => return Ok(out),
        }
    }
}

fn range_view(r: &Route) -> RangeView {
    RangeView {
        id: r.range.id,
        start_key: key_text(&r.range.start_key),
        end_key: key_text(&r.range.end_key),
        replicas: r.range.replicas.iter().map(|x| x.store_id).collect(),
        learners: super::stores_of(&r.range, &r.learners),
        silent_learners: super::stores_of(&r.range, &r.silent_learners),
        diverged: super::stores_of(&r.range, &r.diverged),
        leader: r.leader,
        size_bytes: r.size_bytes,
        key_count: r.key_count,
        conf_ver: r.range.epoch.conf_ver,
        version: r.range.epoch.version,
    }
}

/// Polls placement until the range holding `key` satisfies `done`.
async fn wait_for(
    placement: &PlacementClient,
    key: &str,
    done: impl Fn(&Route) -> bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    while started.elapsed() < OPERATOR_WAIT {
        if find(placement, key.as_bytes())
            .await?
            .as_ref()
            .is_some_and(&done)
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("not done after {OPERATOR_WAIT:?}; `shale ctl operators` shows what is in flight")
}
