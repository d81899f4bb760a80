//! Mutual TLS, timeouts, reconnection and bad frames over real QUIC on loopback.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use shale_rpc::certs::{
    alpn, generate_ca, issue_node_cert, TlsIdentity, WIRE_VERSION, WIRE_VERSION_OLDEST,
};
use shale_rpc::transport::{Service, Transport, TransportConfig};
use shale_rpc::{Frame, FrameKind, RpcError};

/// Answers every request with its own body; counts one-way frames.
#[derive(Default)]
struct Echo {
    messages: AtomicUsize,
}

impl Service for Echo {
    async fn request(&self, frame: Frame) -> Frame {
        Frame {
            kind: FrameKind::KvResponse,
            body: frame.body,
        }
    }

    fn message(&self, _frame: Frame, _remote: SocketAddr) {
        self.messages.fetch_add(1, Ordering::SeqCst);
    }
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn fast() -> TransportConfig {
    TransportConfig {
        request_timeout_ms: 1_000,
        connect_timeout_ms: 500,
        ..TransportConfig::default()
    }
}

fn request(body: &'static [u8]) -> Frame {
    Frame {
        kind: FrameKind::KvRequest,
        body: Bytes::from_static(body),
    }
}

async fn echo_server(identity: &TlsIdentity) -> (Arc<Transport>, Arc<Echo>) {
    let server = Transport::bind(loopback(), identity, fast()).unwrap();
    let echo = Arc::new(Echo::default());
    server.serve(echo.clone());
    (server, echo)
}

#[tokio::test]
async fn requests_and_oneway_frames_flow_between_nodes_of_one_ca() {
    let (_, identity) = TlsIdentity::generate_cluster().unwrap();
    let (server, echo) = echo_server(&identity).await;
    let client = Transport::client(&identity, fast()).unwrap();
    let addr = server.local_addr().unwrap();
    for _ in 0..3 {
        let reply = client.call(addr, &request(b"ping")).await.unwrap();
        assert_eq!(&reply.body[..], b"ping");
    }
    let mut stream = client.open_oneway(addr).await.unwrap();
    for _ in 0..5 {
        stream.send(&request(b"raft")).await.unwrap();
    }
    let started = Instant::now();
    while echo.messages.load(Ordering::SeqCst) < 5 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "one-way frames arrive"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    let (_, identity) = TlsIdentity::generate_cluster().unwrap();
    let (server, _) = echo_server(&identity).await;
    // Trusts the right CA, but its own certificate is signed by a stranger.
    let stranger_ca = generate_ca().unwrap();
    let impostor = TlsIdentity {
        ca_cert_pem: identity.ca_cert_pem.clone(),
        node: issue_node_cert(&stranger_ca, "impostor", &[]).unwrap(),
    };
    let client = Transport::client(&impostor, fast()).unwrap();
    let result = client
        .call(server.local_addr().unwrap(), &request(b"let me in"))
        .await;
    assert!(
        result.is_err(),
        "server must refuse a foreign client certificate"
    );
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_refused() {
    let (_, identity) = TlsIdentity::generate_cluster().unwrap();
    let (_, other) = TlsIdentity::generate_cluster().unwrap();
    let (server, _) = echo_server(&other).await;
    let client = Transport::client(&identity, fast()).unwrap();
    let err = client
        .call(server.local_addr().unwrap(), &request(b"hello"))
        .await
        .unwrap_err();
    assert!(matches!(err, RpcError::Connect { .. }), "{err:?}");
}

#[tokio::test]
async fn a_request_to_a_dead_peer_times_out_with_an_error() {
    let (_, identity) = TlsIdentity::generate_cluster().unwrap();
    let port = std::net::UdpSocket::bind(loopback())
        .unwrap()
        .local_addr()
        .unwrap();
    let client = Transport::client(&identity, fast()).unwrap();
    let started = Instant::now();
    let err = client.call(port, &request(b"anyone?")).await.unwrap_err();
    assert!(err.is_unreachable(), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded by the timeouts"
    );
}

#[tokio::test]
async fn a_restarted_peer_is_reached_again() {
    let (_, identity) = TlsIdentity::generate_cluster().unwrap();
    let (server, _) = echo_server(&identity).await;
    let addr = server.local_addr().unwrap();
    let client = Transport::client(&identity, fast()).unwrap();
    client.call(addr, &request(b"one")).await.unwrap();
    server.close();
    drop(server);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = client.call(addr, &request(b"lost")).await;
    let server = Transport::bind(addr, &identity, fast()).unwrap();
    server.serve(Arc::new(Echo::default()));
    let mut ok = false;
    for _ in 0..10 {
        if client.call(addr, &request(b"two")).await.is_ok() {
            ok = true;
            break;
        }
    }
    assert!(ok, "the client reconnects to the restarted peer");
}

#[tokio::test]
async fn a_corrupted_frame_gets_an_error_answer_and_the_server_keeps_serving() {
    let (_, identity) = TlsIdentity::generate_cluster().unwrap();
    let (server, _) = echo_server(&identity).await;
    let addr = server.local_addr().unwrap();
    // Speak raw QUIC to send a frame with a bad checksum.
    let mut endpoint = quinn_client(&identity);
    let conn = endpoint_connect(&mut endpoint, addr).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut wire = request(b"payload").to_wire().to_vec();
    let last = wire.len() - 1;
    wire[last] ^= 0xff;
    send.write_all(&wire).await.unwrap();
    send.finish().unwrap();
    let reply = shale_rpc::codec::read_frame(&mut recv)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.kind, FrameKind::Rejected);
    let why: String = reply.decode(FrameKind::Rejected).unwrap();
    assert!(why.contains("checksum"), "{why}");
    let client = Transport::client(&identity, fast()).unwrap();
    assert_eq!(
        &client.call(addr, &request(b"still up")).await.unwrap().body[..],
        b"still up"
    );
}

/// A node speaking no wire version this build speaks (another ALPN id: too old, or too
/// new) is refused at the handshake, before any frame could be misread; one offering
/// this build's versions connects.
#[tokio::test]
async fn a_peer_of_another_wire_version_is_refused_at_the_handshake() {
    let (_, identity) = TlsIdentity::generate_cluster().unwrap();
    let (server, _) = echo_server(&identity).await;
    let addr = server.local_addr().unwrap();
    assert_eq!(
        identity.client_config().unwrap().alpn_protocols,
        vec![alpn(WIRE_VERSION), alpn(WIRE_VERSION_OLDEST)]
    );
    for offered in [alpn(WIRE_VERSION_OLDEST - 1), alpn(WIRE_VERSION + 1)] {
        let mut tls = identity.client_config().unwrap();
        tls.alpn_protocols = vec![offered.clone()];
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let mut endpoint = quinn::Endpoint::client(loopback()).unwrap();
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
        let refused = endpoint
            .connect(addr, shale_rpc::certs::NODE_SERVER_NAME)
            .unwrap()
            .await
            .expect_err("another wire version is refused");
        assert!(
            refused.to_string().contains("protocol"),
            "{:?}: the error names the protocol: {refused}",
            String::from_utf8_lossy(&offered)
        );
    }
    let mut endpoint = quinn_client(&identity);
    endpoint_connect(&mut endpoint, addr).await;
}

/// A connection speaks the newest version both sides offer: a node pinned to the
/// previous version (as during an upgrade) and a node of this build speak the previous
/// one, whichever side calls, and requests flow; two unpinned nodes speak this build's.
#[tokio::test]
async fn nodes_of_two_wire_versions_speak_the_older_one() {
    let (_, identity) = TlsIdentity::generate_cluster().unwrap();
    let pinned = TransportConfig {
        wire_version: WIRE_VERSION_OLDEST,
        ..fast()
    };
    for (server_config, client_config, spoken) in [
        (fast(), pinned.clone(), WIRE_VERSION_OLDEST),
        (pinned.clone(), fast(), WIRE_VERSION_OLDEST),
        (fast(), fast(), WIRE_VERSION),
    ] {
        let server = Transport::bind(loopback(), &identity, server_config).unwrap();
        server.serve(Arc::new(Echo::default()));
        let addr = server.local_addr().unwrap();
        let client = Transport::client(&identity, client_config).unwrap();
        assert_eq!(client.peer_version(addr).await.unwrap(), spoken);
        let reply = client.call(addr, &request(b"hello")).await.unwrap();
        assert_eq!(&reply.body[..], b"hello");
    }
    let unknown = TransportConfig {
        wire_version: WIRE_VERSION + 1,
        ..fast()
    };
    let refused = unknown
        .validate()
        .expect_err("a version this build does not speak");
    assert!(refused.contains("wire-version"), "{refused}");
}

fn quinn_client(identity: &TlsIdentity) -> quinn::Endpoint {
    let tls = identity.client_config().unwrap();
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client(loopback()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    endpoint
}

async fn endpoint_connect(endpoint: &mut quinn::Endpoint, addr: SocketAddr) -> quinn::Connection {
    endpoint
        .connect(addr, shale_rpc::certs::NODE_SERVER_NAME)
        .unwrap()
        .await
        .unwrap()
}

/// Answers after `delay`: a peer that is alive but slow.
struct Slow {
    delay: Duration,
}

impl Service for Slow {
    async fn request(&self, frame: Frame) -> Frame {
        tokio::time::sleep(self.delay).await;
        Frame {
            kind: FrameKind::KvResponse,
            body: frame.body,
        }
    }

    fn message(&self, _frame: Frame, _remote: SocketAddr) {}
}

fn probing() -> TransportConfig {
    TransportConfig {
        request_timeout_ms: 10_000,
        probe_after_ms: 100,
        probe_timeout_ms: 300,
        ..TransportConfig::default()
    }
}

/// A UDP relay between one client and a server that can start dropping every datagram
/// both ways, the way a crashed machine goes silent (no close, no error).
struct BlackHole {
    addr: SocketAddr,
    dropping: Arc<std::sync::atomic::AtomicBool>,
}

impl BlackHole {
    async fn start(server: SocketAddr) -> Self {
        let socket = Arc::new(tokio::net::UdpSocket::bind(loopback()).await.unwrap());
        let addr = socket.local_addr().unwrap();
        let dropping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let drop_flag = dropping.clone();
        tokio::spawn(async move {
            let mut client = None;
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                if drop_flag.load(Ordering::SeqCst) {
                    continue;
                }
                let to = if from == server {
                    match client {
                        Some(c) => c,
                        None => continue,
                    }
                } else {
                    client = Some(from);
                    server
                };
                let _ = socket.send_to(&buf[..n], to).await;
            }
        });
        BlackHole { addr, dropping }
    }
}

#[tokio::test]
async fn a_silent_peer_is_declared_unresponsive_long_before_the_request_timeout() {
    let (_, identity) = TlsIdentity::generate_cluster().unwrap();
    let (server, _) = echo_server(&identity).await;
    let relay = BlackHole::start(server.local_addr().unwrap()).await;
    let client = Transport::client(&identity, probing()).unwrap();
    client.call(relay.addr, &request(b"hello")).await.unwrap();
    assert!(!client.suspected(relay.addr));

    relay.dropping.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let err = client
        .call(relay.addr, &request(b"again"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RpcError::Unresponsive { .. }),
        "expected Unresponsive, got {err} after {:?}",
        started.elapsed()
    );
    assert!(err.is_unreachable());
    assert!(client.suspected(relay.addr), "a failed peer is suspect");

    // When it answers again, the next call reconnects and clears the suspicion.
    relay.dropping.store(false, Ordering::SeqCst);
    let reply = client.call(relay.addr, &request(b"back")).await.unwrap();
    assert_eq!(&reply.body[..], b"back");
    assert!(!client.suspected(relay.addr));
}

#[tokio::test]
async fn a_slow_peer_that_answers_probes_is_waited_for() {
    let (_, identity) = TlsIdentity::generate_cluster().unwrap();
    let server = Transport::bind(loopback(), &identity, probing()).unwrap();
    server.serve(Arc::new(Slow {
        delay: Duration::from_millis(1_500),
    }));
    let client = Transport::client(&identity, probing()).unwrap();
    let reply = client
        .call(server.local_addr().unwrap(), &request(b"slow"))
        .await
        .expect("a slow but live peer is not given up on");
    assert_eq!(&reply.body[..], b"slow");
}

#[tokio::test]
async fn mtu_discovery_on_loopback_goes_past_ethernets_packets() {
    let (_, identity) = TlsIdentity::generate_cluster().unwrap();
    let (server, _) = echo_server(&identity).await;
    // The configured bound (Ethernet's, by default) holds for other paths; a loopback
    // path carries 64 KiB datagrams and is searched to 65,000 bytes.
    let client = Transport::client(&identity, fast()).unwrap();
    let addr = server.local_addr().unwrap();
    let started = Instant::now();
    loop {
        let reply = client.call(addr, &request(b"grow")).await.unwrap();
        assert_eq!(&reply.body[..], b"grow");
        let mtu = client.path_mtu(addr).expect("connected");
        if mtu > 9_000 {
            assert!(mtu <= 65_000, "never past the bound: {mtu}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "loopback carries 64 KiB datagrams, but discovery stayed at {mtu}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_bulk_transfer_keeps_the_discovered_large_packets() {
    let (_, identity) = TlsIdentity::generate_cluster().unwrap();
    let config = TransportConfig {
        request_timeout_ms: 10_000,
        ..fast()
    };
    let server = Transport::bind(loopback(), &identity, config.clone()).unwrap();
    server.serve(Arc::new(Echo::default()));
    let client = Transport::client(&identity, config).unwrap();
    let addr = server.local_addr().unwrap();
    let started = Instant::now();
    while client.path_mtu(addr).is_none_or(|mtu| mtu <= 9_000) {
        client.call(addr, &request(b"grow")).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "discovery stalled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Many datagrams queued at once: quinn sends them in segmented batches, which with
    // datagrams this large must be cut to what the kernel takes in one send, or whole
    // batches are lost and the connection falls back to 1,200-byte packets.
    let body = Bytes::from(vec![7u8; 4 << 20]);
    for _ in 0..2 {
        let calls: Vec<_> = (0..8)
            .map(|_| {
                let frame = Frame {
                    kind: FrameKind::KvRequest,
                    body: body.clone(),
                };
                let client = client.clone();
                tokio::spawn(async move { client.call(addr, &frame).await })
            })
            .collect();
        for call in calls {
            assert_eq!(call.await.unwrap().unwrap().body, body);
        }
    }
    let mtu = client.path_mtu(addr).expect("connected");
    assert!(
        mtu > 9_000,
        "the bulk transfer dropped the packet size to {mtu}"
    );
}

/// The wire version operators read about (README's upgrade note, ARCHITECTURE's
/// guarantee) is the one nodes speak: a bump that forgets the docs fails here.
#[test]
fn the_docs_name_the_wire_version_nodes_speak() {
    let id = String::from_utf8(alpn(WIRE_VERSION)).unwrap();
    for (doc, text) in [
        ("README.md", include_str!("../../../README.md")),
        ("ARCHITECTURE.md", include_str!("../../../ARCHITECTURE.md")),
    ] {
        assert!(
            text.contains(&format!("`{id}`")),
            "{doc} does not name the wire version {id}"
        );
    }
}
