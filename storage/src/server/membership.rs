//! Membership changes asked of a range's leader (add a replica as a learner and wait
//! for its vote, remove one and tell its store), and what the store learns of other
//! stores' addresses.

use std::net::SocketAddr;
use std::time::Duration;

use raft::eraftpb::{ConfChangeType, ConfChangeV2};
use shale_rpc::{
    AdminRequest, KvError, RangeDescriptor, RangeId, ReplicaDescriptor, ReplicaId, StoreId,
};
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::StoreService;
use crate::addresses;
use crate::command::Applied;
use crate::replica::single_change;
use crate::store::StoreMsg;

/// How long one request to add a replica waits for its learner to catch up and vote
/// (under the 5 s request timeout of callers' defaults).
const LEARNER_WAIT: Duration = Duration::from_secs(3);
/// How often that wait looks.
const LEARNER_POLL: Duration = Duration::from_millis(50);

impl StoreService {
    /// Adds a replica of `range_id` on `store_id` and waits until it votes: it joins as
    /// a learner, catches up (by snapshot), and the leader then promotes it. Still a
    /// learner `LEARNER_WAIT` after the request came, it is answered `ServerBusy`: asking
    /// again waits on the same learner (within any caller's request timeout each time).
    pub async fn add_replica(
        &self,
        range_id: RangeId,
        store_id: StoreId,
        addr: String,
    ) -> Result<RangeDescriptor, KvError> {
        // From the start: adding the learner may itself take a while (an id allocation
        // sent to a store that is down first, say).
        let deadline = tokio::time::Instant::now() + LEARNER_WAIT;
        let (_, learner) = self.add_learner(range_id, store_id, addr).await?;
        loop {
            let (range, learners) = self.describe(range_id).await?;
            if range.replica(learner).is_none() {
                return Err(KvError::InvalidConfChange {
                    range_id,
                    reason: format!("the learner on store {store_id} was removed"),
                });
            }
            if !learners.contains(&learner) {
                return Ok(range);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(KvError::ServerBusy {
                    reason: format!(
                        "range {range_id}'s new replica on store {store_id} is a learner \
                         still catching up; ask again to wait until it votes"
                    ),
                });
            }
            tokio::time::sleep(LEARNER_POLL).await;
        }
    }

    /// Adds a replica of `range_id` on `store_id` as a learner (the leader promotes it
    /// once it has caught up); one there already as a learner is taken as added. The
    /// range's descriptor and the learner's replica id.
    pub async fn add_learner(
        &self,
        range_id: RangeId,
        store_id: StoreId,
        addr: String,
    ) -> Result<(RangeDescriptor, ReplicaId), KvError> {
        let (range, learners) = self.describe(range_id).await?;
        if let Some(r) = range.replica_on(store_id) {
            if learners.contains(&r.id) {
                return Ok((range.clone(), r.id));
            }
            return Err(KvError::InvalidConfChange {
                range_id,
                reason: format!("store {store_id} already holds a replica"),
            });
        }
        let new_store = [(store_id, addr)];
        if let Err(e) = addresses::remember_now(&self.addresses, &self.engine, new_store, true) {
            warn!(store_id, error = %e, "could not keep the new replica's store address");
        }
        let id = self.alloc_ids(1).await?;
        let mut new_range = range.clone();
        new_range.replicas.push(ReplicaDescriptor { id, store_id });
        new_range.epoch.conf_ver += 1;
        let change = single_change(ConfChangeType::AddLearnerNode, id);
        let range = self.change(range_id, change, new_range).await?;
        Ok((range, id))
    }

    /// Removes the replica of `range_id` on `store_id`; its store is told to destroy it.
    pub async fn remove_replica(
        &self,
        range_id: RangeId,
        store_id: StoreId,
    ) -> Result<RangeDescriptor, KvError> {
        let (range, _) = self.describe(range_id).await?;
        let Some(target) = range.replica_on(store_id).copied() else {
            return Err(KvError::InvalidConfChange {
                range_id,
                reason: format!("store {store_id} holds no replica"),
            });
        };
        if store_id == self.store_id {
            return Err(KvError::InvalidConfChange {
                range_id,
                reason: "the leader's replica cannot be removed; transfer leadership first".into(),
            });
        }
        let mut new_range = range.clone();
        new_range.replicas.retain(|r| r.id != target.id);
        new_range.epoch.conf_ver += 1;
        let change = single_change(ConfChangeType::RemoveNode, target.id);
        let changed = self.change(range_id, change, new_range).await?;
        // The removed replica may never apply its own removal; tell its store directly.
        let addr = self.store_addr(store_id).ok();
        if let Some(addr) = addr.filter(|_| !self.faults.removal_notices_lost()) {
            let req = AdminRequest::DestroyReplica {
                range_id,
                replica_id: target.id,
                conf_ver: changed.epoch.conf_ver,
            };
            if let Err(e) = shale_rpc::client::admin(self.cluster.transport(), addr, &req).await {
                info!(range_id, store_id, error = %e, "could not tell the removed replica's store");
            }
        }
        Ok(changed)
    }

    async fn change(
        &self,
        range_id: RangeId,
        change: ConfChangeV2,
        new_range: RangeDescriptor,
    ) -> Result<RangeDescriptor, KvError> {
        let (reply, rx) = oneshot::channel();
        self.enqueue(StoreMsg::ConfChange {
            range_id,
            change,
            new_range,
            reply,
        })?;
        match self.wait(rx).await? {
            Applied::ConfChanged { range } => Ok(*range),
            other => panic!("membership change applied as {other:?}"),
        }
    }

    /// Takes stores' addresses from placement, whose store records are the truth: they
    /// replace what the book knows and are kept on disk.
    pub fn learn_addresses(&self, stores: impl IntoIterator<Item = (StoreId, String)>) {
        if let Err(e) = addresses::remember_now(&self.addresses, &self.engine, stores, true) {
            warn!(store_id = self.store_id, error = %e, "could not keep stores' addresses");
        }
    }

    pub(super) fn learn_address(&self, store_id: StoreId, remote: SocketAddr) {
        let known = self
            .addresses
            .read()
            .expect("address book lock")
            .contains_key(&store_id);
        if !known {
            info!(store_id, %remote, "learned a store's address from its traffic");
            self.addresses
                .write()
                .expect("address book lock")
                .insert(store_id, remote.to_string());
        }
    }
}
