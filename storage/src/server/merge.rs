//! Merge steps asked of a range's leader (see `replica::merge`): freeze a range for its
//! left neighbour, have the neighbour take it over once every store holds it frozen on
//! disk (checked here, by asking each store, not taken on the caller's word), or thaw a
//! frozen range whose merge can no longer happen.

use std::time::Duration;

use shale_rpc::{
    AdminReply, AdminRequest, Epoch, KvError, RangeDescriptor, RangeId, RangeStatus, StoreId,
};
use tracing::info;

use super::StoreService;
use crate::command::{Applied, Command};
use crate::store::StoreMsg;

/// How long a commit waits for every replica of the source to be frozen on disk (a
/// flush each, normally milliseconds) before it abandons the merge.
const FREEZE_WAIT: Duration = Duration::from_secs(3);
/// How often that wait asks.
const FREEZE_POLL: Duration = Duration::from_millis(50);
/// A range frozen this long without its merge committing or becoming impossible has
/// lost its coordinator: its target's leader is asked to settle it.
pub const STUCK_AFTER: Duration = Duration::from_secs(10);

impl StoreService {
    /// Freezes `range_id`, led here, for `target` (its left neighbour on the same
    /// stores) to take over; returns the frozen range.
    pub async fn prepare_merge(
        &self,
        range_id: RangeId,
        target: RangeDescriptor,
    ) -> Result<RangeDescriptor, KvError> {
        let (range, _) = self.describe(range_id).await?;
        let command = Command::PrepareMerge {
            epoch: range.epoch,
            target,
        };
        merged_range(self.propose(range_id, Some(range.epoch), command).await?)
    }

    /// Has `range_id`, led here, take over `source`: once every store of `source` holds
    /// it frozen on disk for this range at the range's current epoch, proposes the
    /// commit; if one does not within `FREEZE_WAIT`, abandons the merge (the source then
    /// thaws) and says which.
    pub async fn commit_merge(
        &self,
        range_id: RangeId,
        source: RangeDescriptor,
    ) -> Result<RangeDescriptor, KvError> {
        let (target, _) = self.describe(range_id).await?;
        let invalid = |reason: String| KvError::InvalidMerge { range_id, reason };
        let deadline = tokio::time::Instant::now() + FREEZE_WAIT;
        let (frozen, epoch) = loop {
            match self.frozen_everywhere(&target, &source).await {
                Ok(found) => break found,
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(FREEZE_POLL).await;
                }
                // Nothing froze for this range: no merge into it is under way.
                Err(NotFrozen { why, any: false }) => return Err(invalid(why)),
                Err(NotFrozen { why, any: true }) => {
                    let abandon = Command::AbandonMerge {
                        epoch: target.epoch,
                    };
                    self.propose(range_id, Some(target.epoch), abandon).await?;
                    info!(range_id, source = source.id, %why, "merge abandoned");
                    return Err(invalid(format!(
                        "{why}; the merge is abandoned and range {} thaws",
                        source.id
                    )));
                }
            }
        };
        if epoch != target.epoch {
            return Err(invalid(format!(
                "it changed since the merge began (epoch {:?} then, {:?} now): the merge can \
                 never commit, and range {} thaws",
                epoch, target.epoch, source.id
            )));
        }
        let command = Command::CommitMerge {
            epoch,
            source: frozen,
        };
        merged_range(self.propose(range_id, Some(epoch), command).await?)
    }

    /// The source as every store of it holds it frozen for `target` on disk, and the
    /// target's epoch the merge named; otherwise why not.
    async fn frozen_everywhere(
        &self,
        target: &RangeDescriptor,
        source: &RangeDescriptor,
    ) -> Result<(RangeDescriptor, Epoch), NotFrozen> {
        let mut found: Option<(RangeDescriptor, Epoch)> = None;
        let mut result = Ok(());
        for replica in &target.replicas {
            match self.frozen_on(replica.store_id, target, source).await {
                Ok(here) => match &found {
                    Some(seen) if *seen != here => {
                        result = Err(format!(
                            "range {}'s replicas disagree on its freeze",
                            source.id
                        ));
                    }
                    _ => found = Some(here),
                },
                Err(why) => result = result.and(Err(why)),
            }
        }
        match (result, found) {
            (Ok(()), Some(found)) => Ok(found),
            (Ok(()), None) => Err(NotFrozen {
                why: "the target has no replicas".into(),
                any: false,
            }),
            (Err(why), found) => Err(NotFrozen {
                why,
                any: found.is_some(),
            }),
        }
    }

    /// The source as `store_id` holds it frozen for `target` on disk, with the epoch the
    /// merge named.
    async fn frozen_on(
        &self,
        store_id: StoreId,
        target: &RangeDescriptor,
        source: &RangeDescriptor,
    ) -> Result<(RangeDescriptor, Epoch), String> {
        let status = self
            .replica_status_on(store_id, source.id)
            .await
            .map_err(|e| format!("store {store_id} did not answer: {e}"))?
            .ok_or_else(|| format!("store {store_id} holds no replica of range {}", source.id))?;
        match status.frozen_for {
            Some((into, epoch)) if into == target.id => Ok((status.range, epoch)),
            _ => Err(format!(
                "range {}'s replica on store {store_id} is not frozen for range {} on disk",
                source.id, target.id
            )),
        }
    }

    /// The status of `store_id`'s replica of `range_id` (this store's own, or asked of
    /// the other store).
    async fn replica_status_on(
        &self,
        store_id: StoreId,
        range_id: RangeId,
    ) -> Result<Option<RangeStatus>, String> {
        if store_id == self.store_id {
            return self
                .replica_status(range_id)
                .await
                .map_err(|e| e.to_string());
        }
        let addr = self.store_addr(store_id)?;
        let req = AdminRequest::Replica { range_id };
        match shale_rpc::client::admin(self.cluster.transport(), addr, &req).await {
            Ok(AdminReply::Replica(status)) => Ok(status.map(|s| *s)),
            Ok(other) => Err(format!("unexpected reply {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Merges `source`, the right neighbour of `range_id` (led here), into it, as
    /// placement asks: freezes `source` through its leader, then commits here (through
    /// the cluster client, which finds both leaders and resumes a merge half done).
    pub async fn merge_neighbour(
        &self,
        range_id: RangeId,
        source: RangeId,
        end_key: &[u8],
    ) -> Result<RangeDescriptor, KvError> {
        let (range, _) = self.describe(range_id).await?;
        let neighbour = self
            .replica_status(source)
            .await?
            .ok_or(KvError::RangeNotFound { range_id: source })?;
        // Placement planned the merge of the neighbour as it knew it; one that changed
        // since (split, say) is planned again, or not.
        let as_planned = neighbour.range.start_key == range.end_key
            && neighbour.range.end_key == end_key
            && !range.end_key.is_empty();
        if !as_planned {
            return Err(KvError::InvalidMerge {
                range_id,
                reason: format!("range {source} is not the right neighbour placement planned"),
            });
        }
        self.cluster
            .merge(&range.start_key)
            .await
            .map_err(super::client_err)
    }

    /// Asks the target's leader of each merge stuck here to commit it or give it up
    /// (`StoreNode` calls this every few seconds).
    pub async fn settle_stuck_merges(&self) {
        let stuck = match self
            .ask(|reply| StoreMsg::StuckMerges {
                older_than: STUCK_AFTER,
                reply,
            })
            .await
        {
            Ok(stuck) => stuck,
            Err(_) => return,
        };
        for m in stuck {
            let outcome = match m.target_leader {
                Some(leader) if leader == self.store_id => self
                    .commit_merge(m.target, m.source.clone())
                    .await
                    .map_err(|e| e.to_string()),
                Some(leader) => self.commit_elsewhere(leader, m.target, &m.source).await,
                None => Err("its target has no known leader".into()),
            };
            match outcome {
                Ok(range) => info!(
                    range_id = m.source.id,
                    into = range.id,
                    "stuck merge committed"
                ),
                Err(e) => {
                    info!(range_id = m.source.id, into = m.target, error = %e, "stuck merge not settled yet")
                }
            }
        }
    }

    async fn commit_elsewhere(
        &self,
        store_id: StoreId,
        target: RangeId,
        source: &RangeDescriptor,
    ) -> Result<RangeDescriptor, String> {
        let addr = self.store_addr(store_id)?;
        let req = AdminRequest::CommitMerge {
            range_id: target,
            source: source.clone(),
        };
        match shale_rpc::client::admin(self.cluster.transport(), addr, &req).await {
            Ok(AdminReply::Changed(range)) => Ok(range),
            Ok(other) => Err(format!("unexpected reply {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Where `store_id` listens, as this store's address book has it.
    pub(super) fn store_addr(&self, store_id: StoreId) -> Result<std::net::SocketAddr, String> {
        let addr = self
            .addresses
            .read()
            .expect("address book lock")
            .get(&store_id)
            .cloned()
            .ok_or(format!("store {store_id}'s address is unknown"))?;
        shale_rpc::client::parse_addr(&addr).map_err(|e| e.to_string())
    }

    /// This store's replica of `range_id`.
    pub async fn replica_status(&self, range_id: RangeId) -> Result<Option<RangeStatus>, KvError> {
        self.ask(|reply| StoreMsg::ReplicaStatus { range_id, reply })
            .await
    }

    /// Thaws `range_id`, led here and frozen, if its merge can no longer happen.
    pub async fn rollback_merge(&self, range_id: RangeId) -> Result<RangeDescriptor, KvError> {
        let epoch = self
            .ask(|reply| StoreMsg::MayRollBack { range_id, reply })
            .await??;
        let command = Command::RollbackMerge { epoch };
        merged_range(self.propose(range_id, Some(epoch), command).await?)
    }
}

/// Why a commit cannot go ahead yet, and whether any store holds the source frozen
/// for the target (a merge is under way).
struct NotFrozen {
    why: String,
    any: bool,
}

fn merged_range(applied: Applied) -> Result<RangeDescriptor, KvError> {
    match applied {
        Applied::Merged { range } => Ok(*range),
        other => Err(KvError::Storage {
            message: format!("a merge step applied as {other:?}"),
        }),
    }
}
