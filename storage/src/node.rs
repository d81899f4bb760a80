//! A running store: opens the engine, bootstraps or loads its ranges, binds the QUIC
//! endpoint, and starts the store loop thread and the server. `shutdown` stops it all.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use shale_rpc::certs::TlsIdentity;
use shale_rpc::client::{parse_addr, ClientConfig, KvClient, FIRST_RANGE_ID};
use shale_rpc::placement::ClusterId;
use shale_rpc::placement_client::PlacementClient;
use shale_rpc::transport::{watch_tls, Transport, TransportConfig};
use shale_rpc::RpcError;
use shale_rpc::{
    Epoch, KvError, RangeDescriptor, RangeId, RangeStatus, ReplicaDescriptor, StoreAddr, StoreId,
};
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::command::{ApplyState, RangeState, ReplicaState, StoreIdent};
use crate::config::StoreConfig;
use crate::engine::{Cf, Durability, Engine};
use crate::faults::Faults;
use crate::heartbeat::{register, Heartbeats};
use crate::key_counts::{CheckDue, CheckRequest, Counted, KeyCounts};
use crate::keys;
use crate::replica::{AddressBook, Replica};
use crate::replica_storage::ReplicaStorage;
use crate::router::RaftRouter;
use crate::server::{IdSource, StoreService};
use crate::space::Space;
use crate::split::choose_split_key;
use crate::store::{Store, StoreMsg};
use crate::StorageError;

/// A store that is up and serving.
pub struct StoreNode {
    pub store_id: StoreId,
    addr: SocketAddr,
    engine: Arc<Engine>,
    tx: std::sync::mpsc::SyncSender<StoreMsg>,
    loop_thread: Option<JoinHandle<()>>,
    transport: Arc<Transport>,
    /// Swaps changed certificates into the node's endpoints (serving, and calling
    /// placement) as `tls.reload-check-secs` says.
    tls_task: tokio::task::JoinHandle<()>,
    serve_task: tokio::task::JoinHandle<()>,
    split_task: tokio::task::JoinHandle<()>,
    heartbeat_task: Option<tokio::task::JoinHandle<()>>,
    space_task: tokio::task::JoinHandle<()>,
    merge_task: tokio::task::JoinHandle<()>,
    space: Arc<Space>,
    faults: Arc<Faults>,
    key_counts: Arc<KeyCounts>,
    /// Dropped at shutdown before waiting for the engine and transport to be let go.
    service: Option<Arc<StoreService>>,
}

/// Ranges waiting for a size check; more are dropped (the next writes ask again).
const SPLIT_CHECKS_QUEUED_MAX: usize = 256;

/// Checks the size of ranges the store loop names, off the loop thread, and splits
/// those past `size_bytes_max` at a key chosen from their data.
/// Each check also counts the range's keys for its reports.
async fn run_split_checks(
    engine: Arc<Engine>,
    service: Arc<StoreService>,
    counts: Arc<KeyCounts>,
    size_bytes_max: u64,
    mut requests: tokio::sync::mpsc::Receiver<CheckRequest>,
) {
    while let Some(CheckRequest { range, due }) = requests.recv().await {
        // Most checks end here: the range cannot have passed the bound yet.
        let under_bound = match due {
            CheckDue::Written(written) => counts
                .grow(&range, written)
                .is_some_and(|bytes| bytes <= size_bytes_max),
            CheckDue::Stale => false,
        };
        if under_bound || counts.is_outdated(&range) {
            counts.note_check(false);
            counts.checked(range.id);
            continue;
        }
        counts.note_check(true);
        let engine = engine.clone();
        let scanned = range.clone();
        let check =
            tokio::task::spawn_blocking(move || split_key_of(&engine, &scanned, size_bytes_max))
                .await;
        counts.checked(range.id);
        let check = match check {
            Ok(Ok(check)) => {
                counts.record(&range, check.count);
                match check.split {
                    Some(split) => split,
                    None => continue,
                }
            }
            Ok(Err(e)) => {
                warn!(range_id = range.id, error = %e, "split check failed");
                continue;
            }
            Err(e) => {
                warn!(range_id = range.id, error = %e, "split check panicked");
                continue;
            }
        };
        match service.split(range.id, check.key).await {
            Ok((left, right)) => {
                info!(range_id = left.id, right_id = right.id, "split by size");
                // The right side is counted by its first check: the scan stopped past
                // the bound, so how much lies beyond it is not known.
                counts.record(&left, check.left);
            }
            Err(e) => info!(range_id = range.id, error = %e, "split by size did not happen"),
        }
    }
}

/// What a size check found.
#[derive(Debug)]
struct SizeCheck {
    /// Keys (counted, or estimated when the scan stopped past the bound) and bytes
    /// (counted as far as the scan went).
    count: Counted,
    split: Option<SplitAt>,
}

/// Where to split, and what the left side holds (counted exactly: the scan went past
/// the split key).
#[derive(Debug)]
struct SplitAt {
    key: Bytes,
    left: Counted,
}

/// Reads the range's keys and sizes until past the bound and picks a split key.
fn split_key_of(
    engine: &Engine,
    range: &RangeDescriptor,
    size_bytes_max: u64,
) -> Result<SizeCheck, StorageError> {
    let mut pairs: Vec<(Vec<u8>, usize)> = Vec::new();
    let mut total = 0u64;
    let mut whole = true;
    engine.scan(Cf::Data, &range.start_key, &range.end_key, |k, v| {
        pairs.push((k.to_vec(), k.len() + v.len()));
        total += (k.len() + v.len()) as u64;
        whole = total <= size_bytes_max;
        whole
    })?;
    let scanned = pairs.len() as u64;
    let keys = if whole || total == 0 {
        scanned
    } else {
        // Past the bound: extrapolate from the part scanned by the range's size on disk.
        let size = engine.approximate_size_bytes(Cf::Data, &range.start_key, &range.end_key);
        scanned.saturating_mul(size.max(total)) / total
    };
    let count = Counted { keys, bytes: total };
    let split =
        choose_split_key(pairs.iter().map(|(k, s)| (&k[..], *s)), size_bytes_max).map(|key| {
            let before = pairs.partition_point(|(k, _)| k[..] < key[..]);
            let left = Counted {
                keys: before as u64,
                bytes: pairs[..before].iter().map(|(_, s)| *s as u64).sum(),
            };
            SplitAt { key, left }
        });
    Ok(SizeCheck { count, split })
}

impl StoreNode {
    /// Starts a store. Must be called inside a multi-threaded tokio runtime.
    pub async fn start(
        config: StoreConfig,
        identity: &TlsIdentity,
    ) -> Result<StoreNode, StorageError> {
        config.validate()?;
        config.consistency.apply_scan_rate();
        let mut config = config;
        std::fs::create_dir_all(&config.data_dir)?;
        let engine = Arc::new(Engine::open(&config.data_dir, &config.engine)?);
        let listen =
            parse_addr(&config.listen_addr).map_err(|e| StorageError::Config(e.to_string()))?;
        let transport = bind_retrying(listen, identity, config.transport.clone()).await?;
        let placement = match config.placement.addrs.is_empty() {
            true => None,
            false => {
                // Placement traffic has its own endpoint with short timeouts, so a dead
                // placement node is passed over quickly.
                let control = Transport::client(
                    identity,
                    TransportConfig {
                        connect_timeout_ms: 500,
                        request_timeout_ms: 3_000,
                        ..config.transport.clone()
                    },
                )?;
                let (placement, cluster_id, store_id) =
                    join_placement(&engine, &config, control).await?;
                config.store_id = store_id;
                Some((placement, cluster_id))
            }
        };
        check_ident(&engine, config.store_id)?;
        let mut states = load_ranges(&engine)?;
        let bootstraps = config
            .initial_peers
            .iter()
            .any(|p| p.store_id == config.store_id);
        if states.is_empty() && bootstraps {
            states.push(bootstrap_first_range(&engine, &config)?);
        }
        // Configured addresses first; those learned since (and kept) fill the gaps.
        let mut book: HashMap<StoreId, String> = config
            .initial_peers
            .iter()
            .map(|p| (p.store_id, p.addr.clone()))
            .chain([(config.store_id, config.advertise_addr().to_string())])
            .collect();
        for (store_id, addr) in crate::addresses::load(&engine)? {
            book.entry(store_id).or_insert(addr);
        }
        let addresses: AddressBook = Arc::new(RwLock::new(book));
        let replicas = states
            .into_iter()
            // Live replicas, frozen ones (a merge under way) too.
            .filter(|s| s.state != ReplicaState::Tombstone)
            .map(|s| {
                Replica::open(
                    engine.clone(),
                    s,
                    config.store_id,
                    &config.raft,
                    addresses.clone(),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Each replica took the snapshot file its marker names (`Replica::open`); the rest
        // are of snapshots that never got installed.
        let swept = engine.sweep_snapshot_files();
        if swept > 0 {
            info!(
                store_id = config.store_id,
                files = swept,
                "removed unused snapshot files"
            );
        }

        let space = Arc::new(Space::new(config.store_id, &config.space));
        space.read(&config.data_dir);
        let addr = transport.local_addr()?;
        let (tx, rx) = sync_channel(config.limits.queue_msgs_max);
        let faults = Arc::new(Faults::default());
        let router = RaftRouter::new(
            config.store_id,
            transport.clone(),
            addresses.clone(),
            tokio::runtime::Handle::current(),
            config.limits.peer_queue_batches_max,
            tx.clone(),
            faults.clone(),
        );
        let (split_tx, split_rx) = tokio::sync::mpsc::channel(SPLIT_CHECKS_QUEUED_MAX);
        let key_counts = Arc::new(KeyCounts::new(split_tx.clone()));
        let store = Store::new(
            &config,
            engine.clone(),
            replicas,
            router,
            addresses.clone(),
            Some(split_tx),
            tx.clone(),
        )
        .with_faults(faults.clone())
        .with_space(space.clone());
        let loop_thread = std::thread::Builder::new()
            .name(format!("store-{}-raft", config.store_id))
            .spawn(move || store.run(rx))?;
        let peers: Vec<StoreAddr> = {
            let book = addresses.read().expect("address book lock");
            book.iter()
                .map(|(&store_id, addr)| StoreAddr {
                    store_id,
                    addr: addr.clone(),
                })
                .collect()
        };
        let cluster = KvClient::new(transport.clone(), &peers, ClientConfig::default())
            .map_err(|e| StorageError::Config(e.to_string()))?;
        let service = Arc::new(StoreService::new(
            config.store_id,
            tx.clone(),
            addresses.clone(),
            faults.clone(),
            engine.clone(),
            Duration::from_millis(config.limits.request_timeout_ms),
            IdSource {
                cluster: Arc::new(cluster),
                placement: placement.as_ref().map(|(p, _)| p.clone()),
            },
            key_counts.clone(),
            crate::staging::Staging::new(&engine, &config.ingest),
            config.ingest.stage_builds_max,
            space.clone(),
        ));
        let mut endpoints = vec![transport.clone()];
        endpoints.extend(placement.as_ref().map(|(p, _)| p.transport().clone()));
        let tls_task = watch_tls(config.tls.clone(), &endpoints);
        let heartbeat_task = placement.map(|(placement, cluster_id)| {
            tokio::spawn(
                Heartbeats {
                    service: service.clone(),
                    placement,
                    cluster_id,
                    store_id: config.store_id,
                    addr: config.advertise_addr().to_string(),
                    labels: config.labels.clone(),
                    space: space.clone(),
                    config: config.placement.clone(),
                }
                .run(),
            )
        });
        let split_task = tokio::spawn(run_split_checks(
            engine.clone(),
            service.clone(),
            key_counts.clone(),
            config.split.range_size_bytes_max,
            split_rx,
        ));
        let space_task = tokio::spawn(crate::space::watch(space.clone(), config.data_dir.clone()));
        let merge_task = tokio::spawn(settle_stuck_merges(service.clone()));
        let serve_task = transport.serve(service.clone());
        info!(store_id = config.store_id, %addr, data_dir = %config.data_dir.display(), "store started");
        Ok(StoreNode {
            store_id: config.store_id,
            addr,
            engine,
            tx,
            loop_thread: Some(loop_thread),
            transport,
            tls_task,
            serve_task,
            split_task,
            heartbeat_task,
            space_task,
            merge_task,
            space,
            faults,
            key_counts,
            service: Some(service),
        })
    }

    /// The address the store's QUIC endpoint is bound to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The store's request handler, for a caller in this process to reach without QUIC.
    pub fn local_service(&self) -> Option<Arc<dyn shale_rpc::local::LocalService>> {
        let service = self.service.clone()?;
        Some(service)
    }

    /// Size checks this store made, and how many of them scanned their range.
    pub fn size_check_stats(&self) -> (u64, u64) {
        self.key_counts.check_stats()
    }

    /// Fault injection for in-process tests.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// The store's disk space as last read, and its reserve.
    pub fn space(&self) -> &Space {
        &self.space
    }

    /// The state of every replica on this store.
    pub async fn status(&self) -> Vec<RangeStatus> {
        let (reply, rx) = oneshot::channel();
        if self.tx.try_send(StoreMsg::Status { reply }).is_err() {
            return Vec::new();
        }
        let mut ranges = rx.await.unwrap_or_default();
        self.key_counts.annotate_all(&mut ranges);
        ranges
    }

    /// Asks the replica of `range_id` on this store to campaign for leadership.
    pub fn campaign(&self, range_id: RangeId) {
        let _ = self.tx.try_send(StoreMsg::Campaign { range_id });
    }

    /// Asks this store's leader of `range_id` to hand leadership to `to_store`.
    pub async fn transfer_leader(
        &self,
        range_id: RangeId,
        to_store: StoreId,
    ) -> Result<(), KvError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(StoreMsg::TransferLeader {
                range_id,
                to_store,
                reply,
            })
            .map_err(|_| KvError::ServerBusy {
                reason: "store loop queue is full".into(),
            })?;
        rx.await.map_err(|_| KvError::ShuttingDown)?
    }

    /// Stops serving, lets the loop finish its round, and closes the engine.
    pub async fn shutdown(mut self) {
        self.transport.close();
        self.tls_task.abort();
        self.serve_task.abort();
        self.split_task.abort();
        self.space_task.abort();
        self.merge_task.abort();
        if let Some(t) = self.heartbeat_task.take() {
            t.abort();
            let _ = t.await;
        }
        let _ = (&mut self.serve_task).await;
        let _ = (&mut self.split_task).await;
        let _ = self.tx.send(StoreMsg::Shutdown);
        if let Some(t) = self.loop_thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        // Applied data lives in memtables only until flushed; flushing now spares the
        // next start replaying the log (a crash is safe either way).
        if let Err(e) = self.engine.flush() {
            tracing::warn!(store_id = self.store_id, error = %e, "flush at shutdown failed");
        }
        self.service = None;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.transport.wait_idle()).await;
        // Tasks that held the transport or the engine (peer senders, connection handlers)
        // end on their own once closed; wait for them so the port and the RocksDB lock
        // are free when this returns.
        wait_last_ref(self.store_id, "transport", &self.transport).await;
        wait_last_ref(self.store_id, "engine", &self.engine).await;
        info!(store_id = self.store_id, "store stopped");
    }
}

/// How long shutdown waits for other holders of the transport and engine to let go.
const RELEASE_WAIT: Duration = Duration::from_secs(5);

async fn wait_last_ref<T>(store_id: StoreId, what: &str, arc: &Arc<T>) {
    let started = std::time::Instant::now();
    while Arc::strong_count(arc) > 1 {
        if started.elapsed() > RELEASE_WAIT {
            warn!(
                store_id,
                what,
                holders = Arc::strong_count(arc),
                "still held after shutdown"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Binds the endpoint, retrying for a moment while a previous endpoint on the same
/// address (this store, just restarted) lets go of it.
async fn bind_retrying(
    addr: SocketAddr,
    identity: &TlsIdentity,
    config: TransportConfig,
) -> Result<Arc<Transport>, StorageError> {
    let started = std::time::Instant::now();
    loop {
        match Transport::bind(addr, identity, config.clone()) {
            Err(RpcError::Io(e))
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && started.elapsed() < RELEASE_WAIT =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return Ok(other?),
        }
    }
}

/// Registers with placement: a new store learns its cluster (and its id if it has none
/// configured); a known one is checked against the cluster it joined. A store that holds
/// a cluster id starts even when placement is unreachable (heartbeats retry).
async fn join_placement(
    engine: &Engine,
    config: &StoreConfig,
    transport: Arc<Transport>,
) -> Result<(Arc<PlacementClient>, ClusterId, StoreId), StorageError> {
    let client = Arc::new(
        PlacementClient::new(transport, &config.placement.addrs, ClientConfig::default())
            .map_err(|e| StorageError::Config(e.to_string()))?,
    );
    let stored_id = match engine.get(Cf::Meta, keys::STORE_IDENT_KEY)? {
        Some(b) => Some(postcard::from_bytes::<StoreIdent>(&b)?.store_id),
        None => None,
    };
    let store_id = match (config.store_id, stored_id) {
        (0, Some(id)) => id,
        (configured, _) => configured,
    };
    let stored_cluster = match engine.get(Cf::Meta, keys::CLUSTER_ID_KEY)? {
        Some(b) => Some(u64::from_be_bytes(b[..].try_into().map_err(|_| {
            StorageError::Corruption("cluster id is not 8 bytes".into())
        })?)),
        None => None,
    };
    let addr = config.advertise_addr().to_string();
    match register(&client, stored_cluster, store_id, &addr, &config.labels).await {
        Ok((cluster_id, store_id)) => {
            if stored_cluster != Some(cluster_id) {
                let mut batch = engine.batch();
                batch.put(Cf::Meta, keys::CLUSTER_ID_KEY, &cluster_id.to_be_bytes());
                engine.write(batch, Durability::Sync)?;
            }
            info!(
                store_id,
                cluster_id = format!("{cluster_id:#x}"),
                "registered with placement"
            );
            Ok((client, cluster_id, store_id))
        }
        Err(StorageError::Placement(e)) if stored_cluster.is_some() && store_id != 0 => {
            warn!(store_id, error = %e, "placement unreachable at start; heartbeats will retry");
            Ok((client, stored_cluster.unwrap_or_default(), store_id))
        }
        Err(e) => Err(e),
    }
}

fn check_ident(engine: &Engine, store_id: StoreId) -> Result<(), StorageError> {
    match engine.get(Cf::Meta, keys::STORE_IDENT_KEY)? {
        Some(b) => {
            let ident: StoreIdent = postcard::from_bytes(&b)?;
            if ident.store_id != store_id {
                return Err(StorageError::WrongStore {
                    found: ident.store_id,
                    configured: store_id,
                });
            }
        }
        None => {
            let mut batch = engine.batch();
            let ident = postcard::to_stdvec(&StoreIdent { store_id }).expect("ident encodes");
            batch.put(Cf::Meta, keys::STORE_IDENT_KEY, &ident);
            engine.write(batch, Durability::Sync)?;
        }
    }
    Ok(())
}

fn load_ranges(engine: &Engine) -> Result<Vec<RangeState>, StorageError> {
    let (start, end) = keys::range_state_bounds();
    let mut raw = Vec::new();
    engine.scan(Cf::Meta, &start, &end, |_, v| {
        raw.push(v.to_vec());
        true
    })?;
    raw.iter().map(|v| RangeState::decode(v)).collect()
}

/// Creates the first range (all keys) with the configured peers as its replicas. Every
/// store of a new cluster does the same, so they agree without talking.
fn bootstrap_first_range(
    engine: &Engine,
    config: &StoreConfig,
) -> Result<RangeState, StorageError> {
    let mut peers: Vec<StoreId> = config.initial_peers.iter().map(|p| p.store_id).collect();
    peers.sort_unstable();
    let descriptor = RangeDescriptor {
        id: FIRST_RANGE_ID,
        start_key: Bytes::new(),
        end_key: Bytes::new(),
        epoch: Epoch {
            conf_ver: 1,
            version: 1,
        },
        replicas: peers
            .iter()
            .map(|&store_id| ReplicaDescriptor {
                id: store_id,
                store_id,
            })
            .collect(),
    };
    let state = RangeState {
        descriptor,
        state: ReplicaState::Normal,
    };
    let mut batch = engine.batch();
    batch.put(
        Cf::Meta,
        &keys::range_state_key(FIRST_RANGE_ID),
        &state.encode(),
    );
    batch.put(
        Cf::Meta,
        &keys::apply_state_key(FIRST_RANGE_ID),
        &ApplyState::initial().encode(),
    );
    ReplicaStorage::bootstrap(&mut batch, FIRST_RANGE_ID, peers, Vec::new());
    engine.write(batch, Durability::Sync)?;
    info!(store_id = config.store_id, "bootstrapped the first range");
    Ok(state)
}

/// Every few seconds, has merges stuck on this store settled (see
/// `StoreService::settle_stuck_merges`); runs until the node shuts down.
async fn settle_stuck_merges(service: Arc<StoreService>) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        service.settle_stuck_merges().await;
    }
}
