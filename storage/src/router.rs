//! Sends the store loop's Raft batches to other stores: one task per target store with a
//! bounded queue, a long-lived one-way QUIC stream, and reconnection after failures.
//! A batch that cannot be queued or sent is dropped; Raft retransmits what matters.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use shale_rpc::client::parse_addr;
use shale_rpc::transport::{OnewayStream, Transport};
use shale_rpc::{Frame, FrameKind, RaftBatch, StoreId};
use tokio::sync::mpsc;
use tracing::debug;

use crate::replica::AddressBook;
use crate::store::RaftSender;

/// Most message bytes merged into one frame when a peer's queue has several batches.
const FRAME_MESSAGE_BYTES_MAX: usize = 8 << 20;
/// Pause after a failed connection before the next try.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(100);

/// The store loop's `RaftSender` over QUIC.
pub struct RaftRouter {
    transport: Arc<Transport>,
    addresses: AddressBook,
    runtime: tokio::runtime::Handle,
    queue_batches_max: usize,
    peers: HashMap<StoreId, mpsc::Sender<RaftBatch>>,
}

impl RaftRouter {
    pub fn new(
        transport: Arc<Transport>,
        addresses: AddressBook,
        runtime: tokio::runtime::Handle,
        queue_batches_max: usize,
    ) -> Self {
        RaftRouter {
            transport,
            addresses,
            runtime,
            queue_batches_max,
            peers: HashMap::new(),
        }
    }
}

impl RaftSender for RaftRouter {
    fn send(&mut self, batch: RaftBatch) {
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
                batch.messages.extend(more.messages);
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
