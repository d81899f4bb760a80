//! The QUIC transport (quinn + rustls, mutual TLS). One request per bidirectional
//! stream; one-way streams carry long-lived message flows such as Raft traffic.
//! Connections are cached per peer address and re-established when they fail.
//!
//! A crashed peer sends nothing, so a request to it would wait out its whole timeout.
//! Instead, while a request waits and nothing has been heard from its peer for
//! `probe-after-ms`, the transport pings the peer on the same connection; no answer
//! within `probe-timeout-ms` fails the request at once as `Unresponsive` and marks the
//! address suspect for a while, so callers can try another replica first.
//!
//! Certificates can be swapped while the transport runs (`reload`).

mod config;
mod reload;

pub use config::TransportConfig;
pub use reload::watch_tls;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::certs::{alpn_offered, version_of_alpn, TlsIdentity, NODE_SERVER_NAME};
use crate::codec::{read_frame, SharedFrame};
use crate::local::LocalServices;
use crate::{Frame, FrameKind, RpcError};

/// Client settings for connections of an endpoint whose MTU bound is `mtu_bound`.
fn client_config(
    identity: &TlsIdentity,
    config: &TransportConfig,
    mtu_bound: u16,
) -> Result<quinn::ClientConfig, RpcError> {
    let mut tls = identity.client_config()?;
    tls.alpn_protocols = alpn_offered(config.wire_version);
    let quic_client = QuicClientConfig::try_from(tls).map_err(|e| RpcError::Tls(e.to_string()))?;
    let mut client_config = quinn::ClientConfig::new(Arc::new(quic_client));
    client_config.transport_config(config.quinn_transport(mtu_bound)?);
    Ok(client_config)
}

/// Server settings of an endpoint bound to `addr`.
fn server_config(
    identity: &TlsIdentity,
    config: &TransportConfig,
    addr: SocketAddr,
) -> Result<quinn::ServerConfig, RpcError> {
    let mut tls = identity.server_config()?;
    tls.alpn_protocols = alpn_offered(config.wire_version);
    let quic_server = QuicServerConfig::try_from(tls).map_err(|e| RpcError::Tls(e.to_string()))?;
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(quic_server));
    server_config.transport_config(config.quinn_transport(config.mtu_bound(addr))?);
    Ok(server_config)
}

/// quinn's default for the largest datagram an endpoint accepts (Ethernet's 1,500 bytes
/// less the IP and UDP headers).
const QUIC_ETHERNET_PAYLOAD: u16 = 1_472;

/// A QUIC endpoint on a UDP socket bound to `addr` with the configured kernel buffers
/// (serving if `server` is given).
fn endpoint(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
    config: &TransportConfig,
) -> Result<quinn::Endpoint, RpcError> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // Best effort: a kernel that refuses a size keeps its own.
    let _ = socket.set_recv_buffer_size(config.udp_buffer_bytes);
    let _ = socket.set_send_buffer_size(config.udp_buffer_bytes);
    socket.bind(&addr.into())?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| RpcError::Tls("no async runtime for the QUIC endpoint".into()))?;
    // The largest datagram this endpoint accepts, told to peers: their MTU discovery stops
    // there, so it must not stay below the configured bound.
    let mtu_bound = config.mtu_bound(addr);
    let mut endpoint_config = quinn::EndpointConfig::default();
    endpoint_config
        .max_udp_payload_size(mtu_bound.max(QUIC_ETHERNET_PAYLOAD))
        .map_err(|e| RpcError::Tls(format!("mtu-bytes-max: {e}")))?;
    let socket = Arc::new(BoundedGso {
        inner: runtime.wrap_udp_socket(socket.into())?,
        segments_max: gso_segments_max(mtu_bound),
    });
    Ok(quinn::Endpoint::new_with_abstract_socket(
        endpoint_config,
        server,
        socket,
        runtime,
    )?)
}

/// Largest UDP payload the kernel takes in one send, segmented (GSO) or not: an IPv4
/// packet's 65,535 bytes less the IP and UDP headers.
const UDP_SEND_BYTES_MAX: usize = 65_507;

/// The endpoint's UDP socket, with segmented sends (GSO) bounded to what the kernel
/// takes in one send. quinn batches up to 10 datagrams of the path MTU per send; past
/// 64 KiB (datagrams over ~6,500 bytes, as on jumbo-frame links and loopback) the
/// kernel refuses the send with EMSGSIZE, which quinn-udp ignores as it does for MTU
/// probes, so the whole batch would be lost. Such losses look like an MTU black hole,
/// and the connection would fall back to 1,200-byte packets for a minute at a time.
#[derive(Debug)]
struct BoundedGso {
    inner: Arc<dyn quinn::AsyncUdpSocket>,
    segments_max: usize,
}

/// Most datagrams of up to `mtu_bytes` each that one segmented send may carry.
fn gso_segments_max(mtu_bytes: u16) -> usize {
    (UDP_SEND_BYTES_MAX / usize::from(mtu_bytes).max(1)).max(1)
}

impl quinn::AsyncUdpSocket for BoundedGso {
    fn create_io_poller(self: Arc<Self>) -> std::pin::Pin<Box<dyn quinn::UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit) -> std::io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut std::task::Context,
        bufs: &mut [std::io::IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments().min(self.segments_max)
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// What a node serves: requests on bidirectional streams, messages on one-way streams.
pub trait Service: Send + Sync + 'static {
    /// Answers one request frame.
    fn request(&self, frame: Frame) -> impl Future<Output = Frame> + Send;
    /// Takes one frame of a one-way stream from the peer at `remote`.
    fn message(&self, frame: Frame, remote: SocketAddr);
}

/// A cached connection and when its peer was last heard from.
#[derive(Clone)]
struct Peer {
    conn: quinn::Connection,
    /// The wire version the connection speaks.
    version: u8,
    /// Milliseconds since the transport's `started`.
    heard_ms: Arc<AtomicU64>,
}

/// A QUIC endpoint that can both serve and call.
pub struct Transport {
    endpoint: quinn::Endpoint,
    /// Whether `endpoint` accepts connections (it was bound with server settings).
    serving: bool,
    client_config: RwLock<quinn::ClientConfig>,
    /// A second, calling-only endpoint bound to loopback, for peers on loopback when
    /// `endpoint` is not (loopback endpoints search for larger packets); made on first
    /// use.
    loopback: Mutex<Option<(quinn::Endpoint, quinn::ClientConfig)>>,
    /// Whether `endpoint` itself is bound to loopback (then it calls loopback peers).
    on_loopback: bool,
    identity: RwLock<TlsIdentity>,
    connections: Mutex<HashMap<SocketAddr, Peer>>,
    /// Connections peers opened to this endpoint, by stable id, while they are served.
    incoming: Arc<Mutex<HashMap<usize, quinn::Connection>>>,
    closed: AtomicBool,
    /// Addresses that recently failed, and when.
    suspects: Mutex<HashMap<SocketAddr, Instant>>,
    started: Instant,
    config: TransportConfig,
    /// Services in this process that requests reach without QUIC, if any.
    local: OnceLock<Arc<LocalServices>>,
}

impl Transport {
    /// Binds a serving endpoint on `addr` (port 0 picks one).
    pub fn bind(
        addr: SocketAddr,
        identity: &TlsIdentity,
        config: TransportConfig,
    ) -> Result<Arc<Self>, RpcError> {
        let server = server_config(identity, &config, addr)?;
        let endpoint = endpoint(addr, Some(server), &config)?;
        Self::with_endpoint(endpoint, true, identity, config)
    }

    /// A calling-only endpoint on an ephemeral loopback-or-any port.
    pub fn client(identity: &TlsIdentity, config: TransportConfig) -> Result<Arc<Self>, RpcError> {
        let endpoint = endpoint(SocketAddr::from(([0, 0, 0, 0], 0)), None, &config)?;
        Self::with_endpoint(endpoint, false, identity, config)
    }

    fn with_endpoint(
        endpoint: quinn::Endpoint,
        serving: bool,
        identity: &TlsIdentity,
        config: TransportConfig,
    ) -> Result<Arc<Self>, RpcError> {
        let local = endpoint.local_addr()?;
        let client_config = client_config(identity, &config, config.mtu_bound(local))?;
        Ok(Arc::new(Transport {
            endpoint,
            serving,
            client_config: RwLock::new(client_config),
            loopback: Mutex::new(None),
            on_loopback: local.ip().is_loopback(),
            identity: RwLock::new(identity.clone()),
            connections: Mutex::new(HashMap::new()),
            incoming: Arc::default(),
            closed: AtomicBool::new(false),
            suspects: Mutex::new(HashMap::new()),
            started: Instant::now(),
            config,
            local: OnceLock::new(),
        }))
    }

    pub fn local_addr(&self) -> Result<SocketAddr, RpcError> {
        Ok(self.endpoint.local_addr()?)
    }

    pub fn config(&self) -> &TransportConfig {
        &self.config
    }

    /// Accepts connections and serves their streams until the endpoint is closed.
    pub fn serve<S: Service>(self: &Arc<Self>, service: Arc<S>) -> JoinHandle<()> {
        let endpoint = self.endpoint.clone();
        let served = self.incoming.clone();
        let ours = self.config.wire_version;
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let (service, served) = (service.clone(), served.clone());
                tokio::spawn(async move {
                    let remote = incoming.remote_address();
                    match incoming.await {
                        Ok(conn) => {
                            match negotiated(&conn) {
                                Some(v) if v < ours => {
                                    info!(%remote, version = v, "peer speaks an older wire version")
                                }
                                _ => {}
                            }
                            let id = conn.stable_id();
                            served
                                .lock()
                                .expect("incoming lock")
                                .insert(id, conn.clone());
                            serve_connection(conn, service).await;
                            served.lock().expect("incoming lock").remove(&id);
                        }
                        Err(e) => debug!(%remote, error = %e, "refused incoming connection"),
                    }
                });
            }
        })
    }

    /// Sends one request and waits for its answer, within the request timeout, failing
    /// early if the peer stops answering probes.
    pub async fn call(&self, addr: SocketAddr, request: &Frame) -> Result<Frame, RpcError> {
        self.call_shared(addr, &SharedFrame::new(request.clone()))
            .await
    }

    /// [`Transport::call`] with a frame that may go to other peers too: its checksum is
    /// computed once for all of them.
    pub async fn call_shared(
        &self,
        addr: SocketAddr,
        request: &SharedFrame,
    ) -> Result<Frame, RpcError> {
        let timeout = Duration::from_millis(self.config.request_timeout_ms);
        let local = self.local.get().and_then(|l| l.get(addr));
        let call = async {
            if let Some(service) = local {
                // Its own task, as on a QUIC server: a caller that gives up does not cut
                // the handler off halfway.
                return tokio::spawn(service.request_local(request.frame().clone()))
                    .await
                    .map_err(|e| RpcError::Stream {
                        addr,
                        reason: format!("in-process handler failed: {e}"),
                    });
            }
            tokio::select! {
                answer = self.call_inner(addr, request) => answer,
                dead = self.watch(addr) => Err(dead),
            }
        };
        let result = match tokio::time::timeout(timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(RpcError::Timeout {
                addr,
                timeout_ms: self.config.request_timeout_ms,
            }),
        };
        if let Err(e) = &result {
            if e.is_unreachable() {
                self.forget(addr);
                self.suspects
                    .lock()
                    .expect("suspects lock")
                    .insert(addr, Instant::now());
            }
        }
        result
    }

    /// The wire version spoken with `addr`, connecting first if need be: what a caller
    /// may send it. A service in this process speaks this node's own.
    pub async fn peer_version(&self, addr: SocketAddr) -> Result<u8, RpcError> {
        if self.local.get().and_then(|l| l.get(addr)).is_some() {
            return Ok(self.config.wire_version);
        }
        let timeout = Duration::from_millis(self.config.connect_timeout_ms);
        match tokio::time::timeout(timeout, self.connection(addr)).await {
            Ok(peer) => Ok(peer?.version),
            Err(_) => Err(RpcError::Timeout {
                addr,
                timeout_ms: self.config.connect_timeout_ms,
            }),
        }
    }

    /// The datagram size MTU discovery has settled at so far on the connection to
    /// `addr`, if there is one.
    pub fn path_mtu(&self, addr: SocketAddr) -> Option<u16> {
        let connections = self.connections.lock().expect("connections lock");
        Some(connections.get(&addr)?.conn.stats().path.current_mtu)
    }

    /// From now on, requests to an address in `services` are handed to that service in
    /// this process instead of going over QUIC (one-way streams are unchanged). Set once.
    pub fn call_locally(&self, services: Arc<LocalServices>) {
        if self.local.set(services).is_err() {
            warn!("this transport already calls local services; keeping the first set");
        }
    }

    /// True while `addr` recently failed a request or a connection attempt.
    pub fn suspected(&self, addr: SocketAddr) -> bool {
        let window = Duration::from_millis(self.config.suspect_ms);
        let mut suspects = self.suspects.lock().expect("suspects lock");
        match suspects.get(&addr) {
            Some(at) if at.elapsed() < window => true,
            Some(_) => {
                suspects.remove(&addr);
                false
            }
            None => false,
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Resolves only when the peer at `addr` stops answering: whenever nothing has been
    /// heard from it for `probe-after-ms`, pings it and waits `probe-timeout-ms`.
    async fn watch(&self, addr: SocketAddr) -> RpcError {
        if self.config.probe_after_ms == 0 {
            return std::future::pending().await;
        }
        let after = Duration::from_millis(self.config.probe_after_ms);
        let probe_timeout = Duration::from_millis(self.config.probe_timeout_ms);
        loop {
            tokio::time::sleep(after).await;
            let peer = self
                .connections
                .lock()
                .expect("connections lock")
                .get(&addr)
                .cloned();
            // Still connecting: the connect timeout covers that.
            let Some(peer) = peer else { continue };
            let silent_ms = self
                .now_ms()
                .saturating_sub(peer.heard_ms.load(Ordering::Relaxed));
            if silent_ms < self.config.probe_after_ms {
                continue;
            }
            match tokio::time::timeout(probe_timeout, ping(&peer.conn)).await {
                Ok(Ok(())) => peer.heard_ms.store(self.now_ms(), Ordering::Relaxed),
                _ => {
                    return RpcError::Unresponsive {
                        addr,
                        probe_ms: self.config.probe_timeout_ms,
                    }
                }
            }
        }
    }

    async fn call_inner(&self, addr: SocketAddr, request: &SharedFrame) -> Result<Frame, RpcError> {
        let peer = self.connection(addr).await?;
        let answer = exchange(&peer.conn, addr, request).await;
        if answer.is_ok() {
            peer.heard_ms.store(self.now_ms(), Ordering::Relaxed);
        }
        answer
    }

    /// Opens a one-way stream for a flow of frames (Raft traffic).
    pub async fn open_oneway(&self, addr: SocketAddr) -> Result<OnewayStream, RpcError> {
        let timeout = Duration::from_millis(self.config.request_timeout_ms);
        let open = async {
            let peer = self.connection(addr).await?;
            peer.conn.open_uni().await.map_err(|e| RpcError::Stream {
                addr,
                reason: e.to_string(),
            })
        };
        match tokio::time::timeout(timeout, open).await {
            Ok(Ok(send)) => Ok(OnewayStream {
                addr,
                send,
                timeout,
            }),
            Ok(Err(e)) => {
                self.forget(addr);
                Err(e)
            }
            Err(_) => {
                self.forget(addr);
                Err(RpcError::Timeout {
                    addr,
                    timeout_ms: self.config.request_timeout_ms,
                })
            }
        }
    }

    /// Drops the cached connection to `addr`, so the next call dials anew.
    pub fn forget(&self, addr: SocketAddr) {
        let conn = self
            .connections
            .lock()
            .expect("connections lock")
            .remove(&addr);
        if let Some(peer) = conn {
            peer.conn.close(0u32.into(), b"forgotten");
        }
    }

    /// The endpoint (and its client settings) that calls `addr`: a loopback peer of a
    /// transport not bound to loopback is called from a loopback endpoint of its own.
    fn endpoint_for(
        &self,
        addr: SocketAddr,
    ) -> Result<(quinn::Endpoint, quinn::ClientConfig), RpcError> {
        if !addr.ip().is_loopback() || self.on_loopback {
            return Ok((
                self.endpoint.clone(),
                self.client_config
                    .read()
                    .expect("client config lock")
                    .clone(),
            ));
        }
        let mut loopback = self.loopback.lock().expect("loopback lock");
        if let Some(made) = loopback.as_ref() {
            // Made for the other address family: such a peer takes the main endpoint.
            if made.0.local_addr()?.is_ipv4() != addr.is_ipv4() {
                return Ok((
                    self.endpoint.clone(),
                    self.client_config
                        .read()
                        .expect("client config lock")
                        .clone(),
                ));
            }
            return Ok(made.clone());
        }
        let local = SocketAddr::new(addr.ip(), 0);
        let made = match endpoint(local, None, &self.config) {
            Ok(endpoint) => (
                endpoint,
                client_config(
                    &self.identity.read().expect("identity lock"),
                    &self.config,
                    self.config.mtu_bound(local),
                )?,
            ),
            Err(e) => {
                // Calls still work from the main endpoint, with smaller packets.
                warn!(%local, error = %e, "could not bind a loopback endpoint");
                return Ok((
                    self.endpoint.clone(),
                    self.client_config
                        .read()
                        .expect("client config lock")
                        .clone(),
                ));
            }
        };
        *loopback = Some(made.clone());
        Ok(made)
    }

    async fn connection(&self, addr: SocketAddr) -> Result<Peer, RpcError> {
        if let Some(peer) = self
            .connections
            .lock()
            .expect("connections lock")
            .get(&addr)
        {
            if peer.conn.close_reason().is_none() {
                return Ok(peer.clone());
            }
        }
        let connect_err = |reason: String| RpcError::Connect { addr, reason };
        let (endpoint, client_config) = self.endpoint_for(addr)?;
        let connecting = endpoint
            .connect_with(client_config, addr, NODE_SERVER_NAME)
            .map_err(|e| connect_err(e.to_string()))?;
        let timeout = Duration::from_millis(self.config.connect_timeout_ms);
        let conn = match tokio::time::timeout(timeout, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(connect_err(e.to_string())),
            Err(_) => {
                return Err(connect_err(format!(
                    "no handshake within {} ms",
                    timeout.as_millis()
                )))
            }
        };
        self.suspects.lock().expect("suspects lock").remove(&addr);
        let mut connections = self.connections.lock().expect("connections lock");
        // Another caller may have connected meanwhile; keep one connection per peer.
        if let Some(existing) = connections.get(&addr) {
            if existing.conn.close_reason().is_none() {
                conn.close(0u32.into(), b"duplicate");
                return Ok(existing.clone());
            }
        }
        let version = negotiated(&conn).ok_or_else(|| {
            connect_err("the handshake named no wire version this build speaks".into())
        })?;
        if version < self.config.wire_version {
            info!(%addr, version, "peer speaks an older wire version");
        }
        let peer = Peer {
            conn,
            version,
            heard_ms: Arc::new(AtomicU64::new(self.now_ms())),
        };
        connections.insert(addr, peer.clone());
        Ok(peer)
    }

    /// Closes every connection and stops serving.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.connections.lock().expect("connections lock").clear();
        self.endpoint.close(0u32.into(), b"shutdown");
        if let Some((loopback, _)) = self.loopback.lock().expect("loopback lock").as_ref() {
            loopback.close(0u32.into(), b"shutdown");
        }
    }

    /// Waits until every connection's close has been sent.
    pub async fn wait_idle(&self) {
        self.endpoint.wait_idle().await;
        let loopback = self.loopback.lock().expect("loopback lock").clone();
        if let Some((loopback, _)) = loopback {
            loopback.wait_idle().await;
        }
    }
}

/// The wire version a connection's handshake settled on.
fn negotiated(conn: &quinn::Connection) -> Option<u8> {
    let data = conn.handshake_data()?;
    let data = data
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?;
    version_of_alpn(data.protocol.as_deref()?)
}

async fn serve_connection<S: Service>(conn: quinn::Connection, service: Arc<S>) {
    let remote = conn.remote_address();
    loop {
        tokio::select! {
            bi = conn.accept_bi() => match bi {
                Ok((send, recv)) => {
                    tokio::spawn(serve_request(send, recv, service.clone()));
                }
                Err(e) => {
                    debug!(%remote, error = %e, "connection closed");
                    return;
                }
            },
            uni = conn.accept_uni() => match uni {
                Ok(recv) => {
                    tokio::spawn(serve_oneway(recv, service.clone(), remote));
                }
                Err(e) => {
                    debug!(%remote, error = %e, "connection closed");
                    return;
                }
            },
        }
    }
}

/// Writes one frame to a QUIC stream. A large body is handed to quinn as it is, shared
/// rather than copied: a request sent to several stores at once holds one copy of its
/// body between them, however slowly each acknowledges it.
async fn send_frame(send: &mut quinn::SendStream, frame: &Frame) -> Result<(), RpcError> {
    send_pieces(send, frame.wire_pieces()).await
}

async fn send_pieces(
    send: &mut quinn::SendStream,
    mut pieces: Vec<bytes::Bytes>,
) -> Result<(), RpcError> {
    send.write_all_chunks(&mut pieces)
        .await
        .map_err(std::io::Error::from)?;
    Ok(())
}

async fn serve_request<S: Service>(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    service: Arc<S>,
) {
    let reply = match read_frame(&mut recv).await {
        Ok(Some(frame)) if frame.kind == FrameKind::Ping => frame,
        Ok(Some(frame)) => service.request(frame).await,
        Ok(None) => return,
        Err(e) => rejected(&e),
    };
    if send_frame(&mut send, &reply).await.is_ok() {
        let _ = send.finish();
    }
}

/// One request and its answer on a new bidirectional stream of `conn`.
async fn exchange(
    conn: &quinn::Connection,
    addr: SocketAddr,
    request: &SharedFrame,
) -> Result<Frame, RpcError> {
    let stream_err = |e: &dyn std::fmt::Display| RpcError::Stream {
        addr,
        reason: e.to_string(),
    };
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| stream_err(&e))?;
    send_pieces(&mut send, request.wire_pieces())
        .await
        .map_err(|e| stream_err(&e))?;
    send.finish().map_err(|e| stream_err(&e))?;
    match read_frame(&mut recv).await {
        Ok(Some(frame)) => Ok(frame),
        Ok(None) => Err(stream_err(&"peer closed the stream without an answer")),
        Err(RpcError::Io(e)) => Err(stream_err(&e)),
        Err(e) => Err(e),
    }
}

/// Asks the peer to echo a ping; any answer means it is alive.
async fn ping(conn: &quinn::Connection) -> Result<(), RpcError> {
    let frame = Frame {
        kind: FrameKind::Ping,
        body: bytes::Bytes::new(),
    };
    exchange(conn, conn.remote_address(), &SharedFrame::new(frame))
        .await
        .map(|_| ())
}

/// The answer to a frame that could not be read: says why, so the caller can tell.
pub fn rejected(error: &RpcError) -> Frame {
    Frame::encode(FrameKind::Rejected, &format!("{}: {error}", error.code()))
        .expect("a short string always encodes")
}

async fn serve_oneway<S: Service>(
    mut recv: quinn::RecvStream,
    service: Arc<S>,
    remote: SocketAddr,
) {
    loop {
        match read_frame(&mut recv).await {
            Ok(Some(frame)) => service.message(frame, remote),
            Ok(None) => return,
            Err(RpcError::Io(e)) => {
                debug!(%remote, error = %e, "one-way stream ended");
                return;
            }
            Err(e) => {
                warn!(%remote, error = %e, "dropping one-way stream after a bad frame");
                let _ = recv.stop(1u32.into());
                return;
            }
        }
    }
}

/// The sending half of a one-way stream.
pub struct OnewayStream {
    addr: SocketAddr,
    send: quinn::SendStream,
    timeout: Duration,
}

impl OnewayStream {
    /// Ends the stream cleanly once everything sent has been delivered.
    pub async fn finish(mut self) -> Result<(), RpcError> {
        let stream_err = |reason: String| RpcError::Stream {
            addr: self.addr,
            reason,
        };
        self.send.finish().map_err(|e| stream_err(e.to_string()))?;
        match tokio::time::timeout(self.timeout, self.send.stopped()).await {
            Ok(Ok(None)) => Ok(()),
            Ok(Ok(Some(code))) => Err(stream_err(format!(
                "peer stopped the stream with code {code}"
            ))),
            Ok(Err(e)) => Err(stream_err(e.to_string())),
            Err(_) => Err(RpcError::Timeout {
                addr: self.addr,
                timeout_ms: self.timeout.as_millis() as u64,
            }),
        }
    }

    /// Sends one frame; fails if the peer does not take it within the request timeout.
    pub async fn send(&mut self, frame: &Frame) -> Result<(), RpcError> {
        match tokio::time::timeout(self.timeout, send_frame(&mut self.send, frame)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(RpcError::Stream {
                addr: self.addr,
                reason: e.to_string(),
            }),
            Err(_) => Err(RpcError::Timeout {
                addr: self.addr,
                timeout_ms: self.timeout.as_millis() as u64,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segmented_sends_stay_within_one_kernel_send() {
        assert_eq!(gso_segments_max(1_200), 54);
        assert_eq!(gso_segments_max(9_000), 7);
        assert_eq!(gso_segments_max(40_000), 1);
        for mtu in [1_200u16, 1_452, 6_000, 9_000, 16_000, 32_000, 65_000] {
            let n = gso_segments_max(mtu);
            assert!(
                n >= 1 && n * usize::from(mtu) <= UDP_SEND_BYTES_MAX,
                "{mtu}: {n}"
            );
        }
    }
}
