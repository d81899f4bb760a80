//! Sends the store loop's Raft batches to other stores: one task per target store with a
//! bounded queue, a long-lived one-way QUIC stream, and reconnection after failures.
//! A batch that cannot be queued or sent is dropped; Raft retransmits what matters.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use shale_rpc::client::parse_addr;
use shale_rpc::transport::{OnewayStream, Transport};
use shale_rpc::{Frame, FrameKind, RaftBatch, StoreId};
use std::sync::mpsc::SyncSender;
use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, info};

use crate::faults::Faults;
use crate::replica::AddressBook;
use crate::snapshot::{SnapshotAck, Transfer, FROZEN_SNAPSHOT_WIRE_VERSION};
use crate::store::{OutgoingSnapshot, RaftSender, StoreMsg};

/// Most message bytes merged into one frame when a peer's queue has several batches.
const FRAME_MESSAGE_BYTES_MAX: usize = 8 << 20;
/// Pause after a failed connection before the next try.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(100);

/// The store loop's `RaftSender` over QUIC.
pub struct RaftRouter {
    faults: Arc<Faults>,
    store_id: StoreId,
    snapshot_slots: Arc<Semaphore>,
    store_tx: SyncSender<StoreMsg>,
    next_transfer_id: u64,
    transport: Arc<Transport>,
    addresses: AddressBook,
    runtime: tokio::runtime::Handle,
    queue_batches_max: usize,
    peers: HashMap<StoreId, mpsc::Sender<RaftBatch>>,
}

impl RaftRouter {
    pub fn new(
        store_id: StoreId,
        transport: Arc<Transport>,
        addresses: AddressBook,
        runtime: tokio::runtime::Handle,
        queue_batches_max: usize,
        store_tx: SyncSender<StoreMsg>,
        faults: Arc<Faults>,
    ) -> Self {
        RaftRouter {
            faults,
            store_id,
            transport,
            addresses,
            runtime,
            queue_batches_max,
            peers: HashMap::new(),
            snapshot_slots: Arc::new(Semaphore::new(SNAPSHOTS_SENDING_MAX)),
            store_tx,
            next_transfer_id: rand::random(),
        }
    }
}

/// Snapshots being sent at once; more wait for a slot (the loop never blocks on it).
const SNAPSHOTS_SENDING_MAX: usize = 2;
/// How long a snapshot is offered again to a receiver that is busy with other
/// transfers, before raft is told it failed (and builds a fresh one later).
const BUSY_RETRY_MAX: Duration = Duration::from_secs(30);

/// Sends one snapshot as chunk requests, each answered before the next goes, offering
/// it again (with backoff) while the receiver is busy; `Ok` once the receiver says it
/// took the whole snapshot (handed to its store loop). Each attempt holds one of
/// `slots`; the waits between attempts hold none, so a busy receiver does not hold up
/// snapshots to other stores.
async fn send_snapshot(
    transport: Arc<Transport>,
    addr: Option<String>,
    transfer: Arc<Transfer>,
    slots: Arc<Semaphore>,
) -> Result<(), String> {
    let addr = addr.ok_or("no address for the target store")?;
    let addr = parse_addr(&addr).map_err(|e| e.to_string())?;
    if transfer.frozen() {
        let version = transport
            .peer_version(addr)
            .await
            .map_err(|e| e.to_string())?;
        if version < FROZEN_SNAPSHOT_WIRE_VERSION {
            return Err(format!(
                "the receiver speaks wire version {version}, which takes no snapshot of a \
                 frozen range; it gets one once the range thaws"
            ));
        }
    }
    let mut busy_since = None;
    let mut backoff = Duration::from_millis(100);
    loop {
        let ack = {
            let _slot = slots
                .acquire()
                .await
                .map_err(|_| "snapshot slots closed".to_string())?;
            send_chunks(&transport, addr, &transfer).await?
        };
        let since = *busy_since.get_or_insert_with(std::time::Instant::now);
        match ack {
            SnapshotAck::Taken => return Ok(()),
            _ if since.elapsed() + backoff > BUSY_RETRY_MAX => {
                return Err(
                    "the receiver stayed busy (other snapshots, or a replica there whose keys \
                     overlap)"
                        .into(),
                )
            }
            _ => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// One attempt: `Taken`, or `Busy` if the receiver turned the first chunk away.
async fn send_chunks(
    transport: &Transport,
    addr: std::net::SocketAddr,
    transfer: &Arc<Transfer>,
) -> Result<SnapshotAck, String> {
    let last = transfer.chunks() - 1;
    for i in 0..transfer.chunks() {
        // A batch of up to 1 MiB is read from the file and framed: not on the runtime's
        // workers.
        let t = transfer.clone();
        let frame = tokio::task::spawn_blocking(move || {
            let chunk = t.chunk(i).map_err(|e| e.to_string())?;
            Frame::encode(FrameKind::SnapshotChunk, &chunk).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| format!("encoding chunk {i}: {e}"))??;
        let reply = transport
            .call(addr, &frame)
            .await
            .map_err(|e| e.to_string())?;
        crate::metrics::METRICS
            .snapshot_bytes_sent
            .inc_by(frame.body.len() as u64);
        let ack: SnapshotAck = reply
            .decode(FrameKind::SnapshotAck)
            .map_err(|e| format!("unreadable answer to chunk {i}: {e}"))?;
        match ack {
            SnapshotAck::Next if i < last => {}
            SnapshotAck::Taken if i == last => return Ok(SnapshotAck::Taken),
            SnapshotAck::Busy if i == 0 => return Ok(SnapshotAck::Busy),
            SnapshotAck::Refused { reason } => return Err(format!("refused: {reason}")),
            other => return Err(format!("answer {other:?} to chunk {i} of {}", last + 1)),
        }
    }
    Err("no chunks to send".into())
}

impl RaftSender for RaftRouter {
    fn send_snapshot(&mut self, snapshot: OutgoingSnapshot) {
        if self.faults.partitioned() || self.faults.range_cut(snapshot.range_id) {
            let _ = self.store_tx.try_send(StoreMsg::SnapshotReport {
                range_id: snapshot.range_id,
                to_replica: snapshot.to_replica,
                ok: false,
            });
            return;
        }
        self.next_transfer_id = self.next_transfer_id.wrapping_add(1);
        let (from_store, transfer_id) = (self.store_id, self.next_transfer_id);
        let addr = self
            .addresses
            .read()
            .expect("address book lock")
            .get(&snapshot.to_store)
            .cloned();
        let (transport, slots, tx) = (
            self.transport.clone(),
            self.snapshot_slots.clone(),
            self.store_tx.clone(),
        );
        let (range_id, to_store, to_replica) =
            (snapshot.range_id, snapshot.to_store, snapshot.to_replica);
        let transfer = match snapshot.built {
            Some(built) => Transfer::new(
                from_store,
                to_store,
                range_id,
                transfer_id,
                &snapshot.message,
                built,
            )
            .map_err(|e| e.to_string()),
            None => Err("the snapshot's file is gone".to_string()),
        };
        self.runtime.spawn(async move {
            let result = match transfer {
                Ok(t) => send_snapshot(transport, addr, Arc::new(t), slots).await,
                Err(e) => Err(e),
            };
            // Taken means the snapshot is in the receiver's loop queue ahead of anything
            // raft sends once it hears of it, so appends cannot race the install.
            if let Err(reason) = &result {
                info!(range_id, to_store, %reason, "snapshot send failed");
            }
            let report = StoreMsg::SnapshotReport {
                range_id,
                to_replica,
                ok: result.is_ok(),
            };
            // The loop must hear the outcome, or raft waits on the snapshot forever.
            let _ = tokio::task::spawn_blocking(move || {
                let _ = tx.send(report);
            })
            .await;
        });
    }

    fn send(&mut self, mut batch: RaftBatch) {
        self.faults.drop_cut_ranges(&mut batch);
        if self.faults.partitioned() || batch.is_empty() {
            return;
        }
        let to = batch.to_store;
        let tx = self.peers.entry(to).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(self.queue_batches_max);
            let task = PeerSender {
                transport: self.transport.clone(),
                addresses: self.addresses.clone(),
                store_id: to,
                stream: None,
            };
            self.runtime.spawn(task.run(rx));
            tx
        });
        if tx.try_send(batch).is_err() {
            debug!(
                to_store = to,
                "raft queue to peer is full; dropping a batch"
            );
        }
    }
}

struct PeerSender {
    transport: Arc<Transport>,
    addresses: AddressBook,
    store_id: StoreId,
    stream: Option<OnewayStream>,
}

impl PeerSender {
    async fn run(mut self, mut rx: mpsc::Receiver<RaftBatch>) {
        while let Some(mut batch) = rx.recv().await {
            let mut bytes: usize = batch.messages.iter().map(|m| m.message.len()).sum();
            while bytes < FRAME_MESSAGE_BYTES_MAX {
                let Ok(more) = rx.try_recv() else { break };
                bytes += more.messages.iter().map(|m| m.message.len()).sum::<usize>();
                // All of it: hibernation signals and checksums ride in batches too.
                batch.absorb(more);
            }
            if let Err(reason) = self.deliver(&batch).await {
                debug!(to_store = self.store_id, %reason, "raft batch dropped");
                self.stream = None;
                tokio::time::sleep(RECONNECT_BACKOFF).await;
            }
        }
    }

    async fn deliver(&mut self, batch: &RaftBatch) -> Result<(), String> {
        let frame = Frame::encode(FrameKind::RaftBatch, batch).map_err(|e| e.to_string())?;
        if self.stream.is_none() {
            let addr = {
                let addresses = self.addresses.read().expect("address book lock");
                addresses.get(&self.store_id).cloned()
            }
            .ok_or_else(|| format!("no address for store {}", self.store_id))?;
            let addr = parse_addr(&addr).map_err(|e| e.to_string())?;
            self.stream = Some(
                self.transport
                    .open_oneway(addr)
                    .await
                    .map_err(|e| e.to_string())?,
            );
        }
        let stream = self.stream.as_mut().expect("just opened");
        stream.send(&frame).await.map_err(|e| e.to_string())
    }
}
