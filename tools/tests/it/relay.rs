//! A UDP relay in front of each store process, so tests can cut the links between
//! stores (a network partition) without privileges. Each store listens where it always
//! does but advertises its relay's address, so every store-to-store packet (QUIC over
//! UDP) passes a relay, which drops those of cut links both ways. Stores call out from
//! their listening socket, so a relay knows a packet's store by its source address.
//! Placement may have a relay too (as store id `PLACEMENT`), so a store can be cut off
//! from it. Packets from anyone else (clients) always pass: a cut-off store is cut off
//! from its peers, not from the clients that still reach it.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use shale_rpc::StoreId;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use crate::procs::StoreProc;

/// The id relays give placement (store ids start at 1).
pub const PLACEMENT: StoreId = 0;

/// Largest datagram a relay passes (QUIC's stay far below).
const DATAGRAM_MAX: usize = 65_535;

/// The links cut, as (lower store id, higher store id), and packets dropped so far.
#[derive(Default)]
struct Cuts {
    links: Mutex<HashSet<(StoreId, StoreId)>>,
    dropped: AtomicU64,
}

impl Cuts {
    fn is_cut(&self, a: StoreId, b: StoreId) -> bool {
        let link = (a.min(b), a.max(b));
        self.links.lock().expect("cuts lock").contains(&link)
    }

    /// Whether a packet between `from` (if a store) and store `to` may pass; counts drops.
    fn passes(&self, from: Option<StoreId>, to: StoreId) -> bool {
        let cut = from.is_some_and(|f| self.is_cut(f, to));
        if cut {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        !cut
    }
}

/// Relays in front of a set of stores; dropping it stops them.
pub struct Relays {
    cuts: Arc<Cuts>,
    stores: Vec<StoreId>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Relays {
    /// Binds a relay for each of `procs` (and for the placement node at `placement`, if
    /// any) and points each store's advertised address, initial peers and placement at
    /// the relays (rewriting the config files). Call before the stores first start: their
    /// addresses are recorded by their peers and placement. Must be called within a Tokio
    /// runtime.
    pub fn front(procs: &mut [StoreProc], placement: Option<&str>) -> Relays {
        let mut backends: Vec<(StoreId, SocketAddr)> = procs
            .iter()
            .map(|p| (p.config.store_id, p.config.listen_addr.parse().unwrap()))
            .collect();
        backends.extend(placement.map(|a| (PLACEMENT, a.parse().unwrap())));
        let (relays, fronts) = Relays::around(backends);
        for p in procs.iter_mut() {
            p.config.advertise_addr = Some(fronts[&p.config.store_id].clone());
            for peer in &mut p.config.initial_peers {
                peer.addr = fronts[&peer.store_id].clone();
            }
            if let Some(front) = fronts.get(&PLACEMENT) {
                p.config.placement.addrs = vec![front.clone()];
            }
            std::fs::write(&p.config_path, toml::to_string(&p.config).unwrap()).unwrap();
        }
        relays
    }

    /// A relay in front of each `(id, address)` of `backends` (nodes that call out from
    /// the address they listen on); returns the relays and each node's relay address.
    pub fn around(backends: Vec<(StoreId, SocketAddr)>) -> (Relays, HashMap<StoreId, String>) {
        let listens: HashMap<SocketAddr, StoreId> =
            backends.iter().map(|&(id, addr)| (addr, id)).collect();
        let cuts = Arc::new(Cuts::default());
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let mut fronts: HashMap<StoreId, String> = HashMap::new();
        for &(id, backend) in &backends {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            socket.set_nonblocking(true).unwrap();
            let socket = Arc::new(UdpSocket::from_std(socket).unwrap());
            fronts.insert(id, socket.local_addr().unwrap().to_string());
            let relay = Relay {
                store: id,
                front: socket,
                backend,
                listens: listens.clone(),
                cuts: cuts.clone(),
                tasks: tasks.clone(),
            };
            let task = tokio::spawn(relay.run());
            tasks.lock().unwrap().push(task);
        }
        let relays = Relays {
            cuts,
            stores: (backends.iter().map(|&(id, _)| id))
                .filter(|&id| id != PLACEMENT)
                .collect(),
            tasks,
        };
        (relays, fronts)
    }

    /// Cuts (or heals) the link between stores `a` and `b`, both ways.
    pub fn cut(&self, a: StoreId, b: StoreId, on: bool) {
        let link = (a.min(b), a.max(b));
        let mut links = self.cuts.links.lock().unwrap();
        if on {
            links.insert(link);
        } else {
            links.remove(&link);
        }
    }

    /// Cuts (or heals) every link of `store` to the other stores.
    pub fn isolate(&self, store: StoreId, on: bool) {
        for &other in self.stores.iter().filter(|&&s| s != store) {
            self.cut(store, other, on);
        }
    }

    /// Cuts (or heals) the link between `store` and placement.
    pub fn cut_from_placement(&self, store: StoreId, on: bool) {
        self.cut(store, PLACEMENT, on);
    }

    /// Heals every link.
    pub fn heal(&self) {
        self.cuts.links.lock().unwrap().clear();
    }

    /// Packets dropped so far on cut links.
    pub fn dropped(&self) -> u64 {
        self.cuts.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for Relays {
    fn drop(&mut self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

/// One store's relay: datagrams to `front` go on to `backend` from a socket of their
/// own per sender, and that socket's replies go back to the sender from `front`.
struct Relay {
    store: StoreId,
    front: Arc<UdpSocket>,
    backend: SocketAddr,
    /// Stores by the address they listen (and call out) on.
    listens: HashMap<SocketAddr, StoreId>,
    cuts: Arc<Cuts>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Relay {
    async fn run(self) {
        let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
        let mut buf = vec![0u8; DATAGRAM_MAX];
        loop {
            let Ok((n, from)) = self.front.recv_from(&mut buf).await else {
                // An ICMP error from an earlier send (a stopped store, say); go on.
                continue;
            };
            let sender = self.listens.get(&from).copied();
            if !self.cuts.passes(sender, self.store) {
                continue;
            }
            let upstream = match upstreams.get(&from) {
                Some(u) => u.clone(),
                None => {
                    let u = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                    u.connect(self.backend).await.unwrap();
                    upstreams.insert(from, u.clone());
                    let back = self.back(u.clone(), from, sender);
                    self.tasks.lock().unwrap().push(tokio::spawn(back));
                    u
                }
            };
            // A stopped store refuses; the sender's QUIC retries as over a lossy link.
            let _ = upstream.send(&buf[..n]).await;
        }
    }

    /// Replies of the store to `sender` at `to`, sent back from the relay's front.
    fn back(
        &self,
        upstream: Arc<UdpSocket>,
        to: SocketAddr,
        sender: Option<StoreId>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (front, cuts, store) = (self.front.clone(), self.cuts.clone(), self.store);
        async move {
            let mut buf = vec![0u8; DATAGRAM_MAX];
            loop {
                let Ok(n) = upstream.recv(&mut buf).await else {
                    continue;
                };
                if cuts.passes(sender, store) {
                    let _ = front.send_to(&buf[..n], to).await;
                }
            }
        }
    }
}
