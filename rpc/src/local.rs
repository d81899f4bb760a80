//! Services of this process that a transport may call without QUIC: a gateway started in
//! the same process as stores (`shale dev`, `shale bench s3` without an endpoint) hands
//! its requests straight to the store's request handler, as CockroachDB's gateway does
//! with its own node. The frame is the same one QUIC would carry (encoded, checked,
//! decoded by the same code); only the encryption, the packets and the copies are gone.
//!
//! Only a transport told to ([`crate::transport::Transport::call_locally`]) looks here:
//! every other client, tests' among them, still goes over QUIC.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::transport::Service;
use crate::Frame;

/// A request handler that can be called in-process.
pub trait LocalService: Send + Sync + 'static {
    /// Answers one request frame, as the QUIC server would.
    fn request_local(self: Arc<Self>, frame: Frame) -> Pin<Box<dyn Future<Output = Frame> + Send>>;
}

impl<S: Service> LocalService for S {
    fn request_local(self: Arc<Self>, frame: Frame) -> Pin<Box<dyn Future<Output = Frame> + Send>> {
        Box::pin(async move { self.request(frame).await })
    }
}

/// The services running in this process, by the address their QUIC endpoint serves.
/// Whoever starts and stops them keeps this current: a stopped one must be removed, so
/// that calls to it fail over QUIC as they would from elsewhere.
#[derive(Default)]
pub struct LocalServices {
    by_addr: RwLock<HashMap<SocketAddr, Arc<dyn LocalService>>>,
    /// Requests handed over in-process so far.
    calls: AtomicU64,
}

impl LocalServices {
    pub fn insert(&self, addr: SocketAddr, service: Arc<dyn LocalService>) {
        self.by_addr
            .write()
            .expect("local services lock")
            .insert(addr, service);
    }

    pub fn remove(&self, addr: SocketAddr) {
        self.by_addr
            .write()
            .expect("local services lock")
            .remove(&addr);
    }

    /// The service at `addr`, counted as a call, if it runs in this process.
    pub fn get(&self, addr: SocketAddr) -> Option<Arc<dyn LocalService>> {
        let service = self
            .by_addr
            .read()
            .expect("local services lock")
            .get(&addr)
            .cloned()?;
        self.calls.fetch_add(1, Ordering::Relaxed);
        Some(service)
    }

    /// Requests handed to a service in this process so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}
