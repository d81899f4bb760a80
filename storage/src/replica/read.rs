//! The read side of a replica: linearizable reads waiting for their index, served under
//! the leader's lease or after a ReadIndex round. No Raft or engine access of its own:
//! the replica passes in what these decisions need.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use shale_rpc::{KvError, RangeDescriptor};

use super::ReadReply;

struct PendingRead {
    /// ReadIndex context; 0 for reads served under the lease.
    id: u64,
    /// The commit index the read must wait for, once the leader has confirmed it.
    index: Option<u64>,
    waiters: Vec<ReadReply>,
    issued_at: Instant,
}

/// Reads of one replica: this round's batch, those waiting for an index, and the lease.
pub(super) struct Reads {
    /// Reads that arrived this round; they share one ReadIndex request.
    batch: Vec<ReadReply>,
    pending: VecDeque<PendingRead>,
    next_id: u64,
    /// Until then a quorum has promised not to elect another leader: reads need no
    /// ReadIndex round. Renewed by every ReadIndex confirmation.
    lease_until: Option<Instant>,
    lease: Duration,
}

impl Reads {
    pub fn new(lease: Duration) -> Reads {
        Reads {
            batch: Vec::new(),
            pending: VecDeque::new(),
            next_id: 1,
            lease_until: None,
            lease,
        }
    }

    pub fn push(&mut self, reply: ReadReply) {
        self.batch.push(reply);
    }

    /// Nothing queued or waiting.
    pub fn is_idle(&self) -> bool {
        self.batch.is_empty() && self.pending.is_empty()
    }

    pub fn has_batch(&self) -> bool {
        !self.batch.is_empty()
    }

    /// Answers this round's reads with `err`.
    pub fn refuse_batch(&mut self, err: &KvError) {
        for r in self.batch.drain(..) {
            let _ = r.send(Err(err.clone()));
        }
    }

    /// Moves this round's reads to waiting: under the lease (and with no leadership
    /// transfer under way) at `commit_index`, otherwise behind a new ReadIndex request.
    /// Returns the context of the ReadIndex request to issue, if any: the reads' own, or
    /// one that renews the lease ahead of its expiry.
    pub fn flush(&mut self, now: Instant, commit_index: u64, transferring: bool) -> Option<u64> {
        let waiters = std::mem::take(&mut self.batch);
        let in_lease = self.lease_until.is_some_and(|until| now < until) && !transferring;
        if !in_lease {
            return Some(self.wait_for_read_index(waiters, now));
        }
        self.pending.push_back(PendingRead {
            id: 0,
            index: Some(commit_index),
            waiters,
            issued_at: now,
        });
        let renew_at = self.lease_until.expect("in lease") - self.lease / 3;
        let renewing = self.pending.iter().any(|r| r.index.is_none());
        (now >= renew_at && !renewing).then(|| self.wait_for_read_index(Vec::new(), now))
    }

    fn wait_for_read_index(&mut self, waiters: Vec<ReadReply>, now: Instant) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.pending.push_back(PendingRead {
            id,
            index: None,
            waiters,
            issued_at: now,
        });
        id
    }

    /// The leader confirmed ReadIndex request `ctx` at `index`.
    pub fn on_read_state(&mut self, ctx: &[u8], index: u64) {
        let Ok(id) = <[u8; 8]>::try_from(ctx).map(u64::from_be_bytes) else {
            return;
        };
        if let Some(read) = self.pending.iter_mut().find(|r| r.id == id) {
            read.index = Some(index);
            // A quorum heard from this leader after the request was issued: none of them
            // votes for another candidate within an election timeout of that.
            let until = read.issued_at + self.lease;
            self.lease_until = Some(self.lease_until.map_or(until, |u| u.max(until)));
        }
    }

    /// Answers, in order, the reads whose index is applied.
    pub fn serve(&mut self, applied_index: u64, range: &RangeDescriptor) {
        while let Some(read) = self.pending.front() {
            match read.index {
                Some(index) if index <= applied_index => {
                    let read = self.pending.pop_front().expect("front exists");
                    for w in read.waiters {
                        let _ = w.send(Ok(range.clone()));
                    }
                }
                _ => break,
            }
        }
    }

    /// No longer the leader: the lease is gone and every waiting read gets `err`.
    pub fn lose_leadership(&mut self, err: &KvError) {
        self.lease_until = None;
        for read in self.pending.drain(..) {
            for w in read.waiters {
                let _ = w.send(Err(err.clone()));
            }
        }
    }
}

/// Context bytes of ReadIndex request `id`.
pub(super) fn read_ctx(id: u64) -> Vec<u8> {
    id.to_be_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    fn reply() -> (
        ReadReply,
        oneshot::Receiver<Result<RangeDescriptor, KvError>>,
    ) {
        oneshot::channel()
    }

    fn range() -> RangeDescriptor {
        RangeDescriptor {
            id: 7,
            start_key: bytes::Bytes::new(),
            end_key: bytes::Bytes::new(),
            epoch: shale_rpc::Epoch {
                conf_ver: 1,
                version: 1,
            },
            replicas: Vec::new(),
        }
    }

    #[test]
    fn reads_wait_for_read_index_then_ride_the_lease_it_grants() {
        let lease = Duration::from_millis(300);
        let mut reads = Reads::new(lease);
        let t0 = Instant::now();
        let (a, mut a_rx) = reply();
        reads.push(a);
        let id = reads
            .flush(t0, 10, false)
            .expect("no lease yet: a ReadIndex");
        reads.serve(100, &range());
        assert!(a_rx.try_recv().is_err(), "no index confirmed yet");
        reads.on_read_state(&read_ctx(id), 12);
        reads.serve(11, &range());
        assert!(a_rx.try_recv().is_err(), "index 12 not applied at 11");
        reads.serve(12, &range());
        assert_eq!(a_rx.try_recv().unwrap().unwrap().id, 7);

        // Within the lease: served at the commit index, no ReadIndex round.
        let (b, mut b_rx) = reply();
        reads.push(b);
        assert_eq!(reads.flush(t0 + Duration::from_millis(10), 20, false), None);
        reads.serve(20, &range());
        assert!(b_rx.try_recv().unwrap().is_ok());
        // A leadership transfer under way: the lease is not trusted.
        let (c, _c_rx) = reply();
        reads.push(c);
        assert!(reads
            .flush(t0 + Duration::from_millis(20), 20, true)
            .is_some());
        // Near the lease's end a read is served and the lease renewed (once).
        let near_end = t0 + lease - lease / 4;
        let (d, _d_rx) = reply();
        reads.push(d);
        assert!(
            reads.flush(near_end, 20, false).is_none(),
            "a renewal is already in flight (the transfer's ReadIndex)"
        );
        // Past the lease: a ReadIndex again.
        let (e, _e_rx) = reply();
        reads.push(e);
        assert!(reads.flush(t0 + lease, 20, false).is_some());
    }

    #[test]
    fn losing_leadership_fails_waiting_reads_and_drops_the_lease() {
        let mut reads = Reads::new(Duration::from_millis(300));
        let t0 = Instant::now();
        let (a, mut a_rx) = reply();
        reads.push(a);
        let id = reads.flush(t0, 1, false).unwrap();
        reads.on_read_state(&read_ctx(id), 5);
        let (b, mut b_rx) = reply();
        reads.push(b);
        assert_eq!(reads.flush(t0, 5, false), None, "in the lease");
        let err = KvError::RangeNotFound { range_id: 7 };
        reads.lose_leadership(&err);
        assert!(a_rx.try_recv().unwrap().is_err());
        assert!(b_rx.try_recv().unwrap().is_err());
        assert!(reads.is_idle());
        let (c, _c_rx) = reply();
        reads.push(c);
        assert!(reads.flush(t0, 5, false).is_some(), "no lease any more");
        let (d, mut d_rx) = reply();
        reads.push(d);
        reads.refuse_batch(&err);
        assert!(d_rx.try_recv().unwrap().is_err());
    }
}
