//! What every request to a replica is checked against before it reaches the replica:
//! that the store holds the range, at the epoch the client knows, and, for new data,
//! that there is disk space for it.

use shale_rpc::{Epoch, KvError, RangeId};

use super::{RaftSender, Store};
use crate::replica::Replica;

impl<S: RaftSender> Store<S> {
    /// As `checked`, for a request bringing `new_data` when the store or most of the
    /// range's stores are low on disk space: a leader refuses it (a follower points at
    /// the leader as usual).
    pub(super) fn checked_for_data(
        &mut self,
        range_id: RangeId,
        epoch: Option<Epoch>,
        new_data: bool,
    ) -> Result<&mut Replica, KvError> {
        let space = (new_data && self.space.any_low()).then(|| self.space.clone());
        let r = self.checked(range_id, epoch)?;
        match space
            .filter(|_| r.is_leader())
            .and_then(|s| s.refusal(&r.range))
        {
            Some(refused) => Err(refused),
            None => Ok(r),
        }
    }

    pub(super) fn checked(
        &mut self,
        range_id: RangeId,
        epoch: Option<Epoch>,
    ) -> Result<&mut Replica, KvError> {
        let r = self
            .replicas
            .get_mut(&range_id)
            .ok_or(KvError::RangeNotFound { range_id })?;
        match epoch {
            // The client knows a newer epoch than this replica has applied: it lags
            // (say, has yet to learn a split committed). Its descriptor would take the
            // client's cache backwards, so it points at the leader, or asks for a retry.
            Some(e) if e.is_newer_than(&r.range.epoch) => Err(if r.is_leader() {
                KvError::ServerBusy {
                    reason: format!("range {range_id} is applying a newer epoch"),
                }
            } else {
                r.not_leader()
            }),
            Some(e) if e != r.range.epoch => Err(KvError::EpochNotMatch {
                current: vec![r.range.clone()],
            }),
            _ => Ok(r),
        }
    }
}
