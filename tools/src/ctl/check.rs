//! `shale ctl check`: consistency checks of ranges, one range at a time, each through
//! its leader's store. Fails (exit status 1) when a range has a diverged replica, no
//! majority, or could not be checked.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::bail;
use serde::Serialize;
use shale_rpc::certs::TlsIdentity;
use shale_rpc::client::admin;
use shale_rpc::transport::{Transport, TransportConfig};
use shale_rpc::{AdminReply, AdminRequest, CheckOutcome, RangeDescriptor, StoreId};

use super::{key_text, stores_of};

/// Tries per range: a check refused (the store is busy with others, a leader moved)
/// is asked again after a pause.
const ATTEMPTS: u32 = 5;

/// A range to check and where its leader is.
pub struct Target {
    pub range: RangeDescriptor,
    pub leader: Option<SocketAddr>,
}

/// One range's check as `ctl check` prints it.
#[derive(Debug, Serialize)]
pub struct CheckView {
    range_id: u64,
    start_key: String,
    end_key: String,
    /// The log index the replicas summed their data at.
    index: Option<u64>,
    agreed: bool,
    /// Stores whose replica's data differs from the majority's (placement replaces
    /// them).
    diverged_stores: Vec<StoreId>,
    /// Stores whose replica did not answer in time.
    missing_stores: Vec<StoreId>,
    /// The majority's keys and bytes.
    keys: Option<u64>,
    bytes: Option<u64>,
    /// Why the range could not be checked.
    error: Option<String>,
}

impl CheckView {
    fn new(range: &RangeDescriptor) -> CheckView {
        CheckView {
            range_id: range.id,
            start_key: key_text(&range.start_key),
            end_key: key_text(&range.end_key),
            index: None,
            agreed: false,
            diverged_stores: Vec::new(),
            missing_stores: Vec::new(),
            keys: None,
            bytes: None,
            error: None,
        }
    }

    fn judged(range: &RangeDescriptor, outcome: &CheckOutcome) -> CheckView {
        let majority = outcome
            .sums
            .iter()
            .filter(|(id, _)| !outcome.diverged.contains(id))
            .find_map(|(_, s)| s.as_ref().ok());
        CheckView {
            index: Some(outcome.index),
            agreed: outcome.agreed,
            diverged_stores: stores_of(range, &outcome.diverged),
            missing_stores: stores_of(range, &outcome.missing),
            keys: majority.filter(|_| outcome.agreed).map(|s| s.keys),
            bytes: majority.filter(|_| outcome.agreed).map(|s| s.bytes),
            ..CheckView::new(range)
        }
    }

    fn is_sound(&self) -> bool {
        self.agreed && self.diverged_stores.is_empty() && self.error.is_none()
    }

    fn verdict(&self) -> String {
        if let Some(e) = &self.error {
            return format!("not checked: {e}");
        }
        if !self.agreed {
            return "NO MAJORITY: no sum shared by most replicas".into();
        }
        let mut v = if self.diverged_stores.is_empty() {
            "agreed".to_string()
        } else {
            format!("DIVERGED on store(s) {:?}", self.diverged_stores)
        };
        if !self.missing_stores.is_empty() {
            v += &format!(" (no answer from {:?})", self.missing_stores);
        }
        v
    }
}

/// Checks every range of `targets` in turn and prints the outcomes.
pub async fn check_ranges(
    identity: &TlsIdentity,
    targets: Vec<Target>,
    json: bool,
) -> anyhow::Result<()> {
    let transport = Transport::client(
        identity,
        TransportConfig {
            request_timeout_ms: 10_000,
            connect_timeout_ms: 2_000,
            ..TransportConfig::default()
        },
    )?;
    if !json {
        println!(
            "{:<12} {:<20} {:<20} {:>10} {:>12}  outcome",
            "id", "start", "end", "keys", "bytes"
        );
    }
    let mut views = Vec::new();
    for target in targets {
        let view = check_one(&transport, &target).await;
        if !json {
            let count = |n: Option<u64>| n.map_or("-".to_string(), |n| n.to_string());
            println!(
                "{:<12} {:<20} {:<20} {:>10} {:>12}  {}",
                view.range_id,
                super::trim(&view.start_key),
                super::trim(&view.end_key),
                count(view.keys),
                count(view.bytes),
                view.verdict()
            );
        }
        views.push(view);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&views)?);
    }
    let unsound = views.iter().filter(|v| !v.is_sound()).count();
    if unsound > 0 {
        bail!(
            "{unsound} of {} ranges diverged, lack a majority or could not be checked",
            views.len()
        );
    }
    Ok(())
}

async fn check_one(transport: &Transport, target: &Target) -> CheckView {
    let range = &target.range;
    let Some(leader) = target.leader else {
        return CheckView {
            error: Some("the range has no known leader".into()),
            ..CheckView::new(range)
        };
    };
    let req = AdminRequest::CheckConsistency { range_id: range.id };
    let mut last_error = String::new();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        match admin(transport, leader, &req).await {
            Ok(AdminReply::Checked(outcome)) => return CheckView::judged(range, &outcome),
            Ok(other) => last_error = format!("unexpected answer {other:?}"),
            Err(e) => last_error = e.to_string(),
        }
    }
    CheckView {
        error: Some(last_error),
        ..CheckView::new(range)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shale_rpc::{Epoch, RangeSum, ReplicaDescriptor};

    #[test]
    fn a_check_names_stores_and_the_majoritys_counts() {
        let range = RangeDescriptor {
            id: 7,
            start_key: "a".into(),
            end_key: "m".into(),
            epoch: Epoch::default(),
            replicas: (1..=3)
                .map(|i| ReplicaDescriptor {
                    id: 100 + i,
                    store_id: i,
                })
                .collect(),
        };
        let sum = |crc32| {
            Ok(RangeSum {
                keys: 4,
                bytes: 40,
                crc32,
            })
        };
        let outcome = CheckOutcome {
            index: 12,
            sums: vec![(101, sum(1)), (102, sum(2)), (103, sum(1))],
            missing: vec![],
            agreed: true,
            diverged: vec![102],
        };
        let view = CheckView::judged(&range, &outcome);
        assert_eq!(view.diverged_stores, vec![2]);
        assert_eq!((view.keys, view.bytes), (Some(4), Some(40)));
        assert!(!view.is_sound());
        assert_eq!(view.verdict(), "DIVERGED on store(s) [2]");
        let agreed = CheckOutcome {
            diverged: vec![],
            missing: vec![102],
            sums: vec![(101, sum(1)), (103, sum(1))],
            ..outcome
        };
        let view = CheckView::judged(&range, &agreed);
        assert!(view.is_sound());
        assert_eq!(view.verdict(), "agreed (no answer from [2])");
    }
}
