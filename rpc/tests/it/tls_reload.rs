//! Certificates swapped on running transports: a CA rotation done through the files a
//! node watches, and a reload on the calling side. Real QUIC on loopback.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use shale_rpc::certs::{generate_ca, issue_node_cert, PemPair, TlsIdentity, TlsPaths};
use shale_rpc::transport::{watch_tls, Service, Transport, TransportConfig};
use shale_rpc::{Frame, FrameKind, RpcError};

struct Echo;

impl Service for Echo {
    async fn request(&self, frame: Frame) -> Frame {
        Frame {
            kind: FrameKind::KvResponse,
            body: frame.body,
        }
    }

    fn message(&self, _frame: Frame, _remote: SocketAddr) {}
}

fn fast() -> TransportConfig {
    TransportConfig {
        request_timeout_ms: 1_000,
        connect_timeout_ms: 500,
        ..TransportConfig::default()
    }
}

fn hello() -> Frame {
    Frame {
        kind: FrameKind::KvRequest,
        body: Bytes::from_static(b"hello"),
    }
}

fn identity(cas: &[&PemPair], signer: &PemPair, name: &str) -> TlsIdentity {
    TlsIdentity {
        ca_cert_pem: cas.iter().map(|ca| ca.cert_pem.as_str()).collect(),
        node: issue_node_cert(signer, name, &[]).unwrap(),
    }
}

/// Writes `identity` where `paths` say, each file replaced whole (as a renewal tool
/// would).
fn write_files(paths: &TlsPaths, identity: &TlsIdentity) {
    let put = |path: &Path, text: &str| {
        let fresh = path.with_extension("new");
        std::fs::write(&fresh, text).unwrap();
        std::fs::rename(&fresh, path).unwrap();
    };
    put(&paths.ca_cert, &identity.ca_cert_pem);
    put(&paths.cert, &identity.node.cert_pem);
    put(&paths.key, &identity.node.key_pem);
}

/// Calls `addr` from `client` until `done` holds for the outcome, for at most 10 s.
async fn until(
    client: &Transport,
    addr: SocketAddr,
    done: impl Fn(&Result<Frame, RpcError>) -> bool,
) -> Result<Frame, RpcError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let outcome = client.call(addr, &hello()).await;
        if done(&outcome) || Instant::now() > deadline {
            return outcome;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_ca_rotation_through_the_watched_files_admits_the_new_nodes_then_drops_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let paths = TlsPaths {
        ca_cert: dir.path().join("ca.pem"),
        cert: dir.path().join("node.pem"),
        key: dir.path().join("node.key"),
        reload_check_secs: 1,
    };
    let (old_ca, new_ca) = (generate_ca().unwrap(), generate_ca().unwrap());
    write_files(&paths, &identity(&[&old_ca], &old_ca, "server"));
    let started = TlsIdentity::from_files(&paths.ca_cert, &paths.cert, &paths.key).unwrap();
    let server = Transport::bind("127.0.0.1:0".parse().unwrap(), &started, fast()).unwrap();
    server.serve(Arc::new(Echo));
    let watch = watch_tls(paths.clone(), std::slice::from_ref(&server));
    let addr = server.local_addr().unwrap();
    // A node of the old CA, and one of the new CA that already trusts both.
    let old_node = Transport::client(&identity(&[&old_ca], &old_ca, "old"), fast()).unwrap();
    let new_node =
        Transport::client(&identity(&[&old_ca, &new_ca], &new_ca, "new"), fast()).unwrap();
    old_node.call(addr, &hello()).await.unwrap();
    // Refused after the handshake (TLS 1.3 checks a client's certificate last).
    let refused = new_node.call(addr, &hello()).await;
    assert!(refused.is_err(), "{refused:?}");
    new_node.forget(addr);

    // Step 1: the server trusts both CAs.
    let both = TlsIdentity {
        ca_cert_pem: format!("{}{}", old_ca.cert_pem, new_ca.cert_pem),
        node: started.node.clone(),
    };
    write_files(&paths, &both);
    let admitted = until(&new_node, addr, Result::is_ok).await;
    assert!(
        admitted.is_ok(),
        "the new CA's node is let in once the reload is seen: {admitted:?}"
    );
    old_node.call(addr, &hello()).await.unwrap();

    // Step 2: the old CA goes, and the server's own certificate is the new CA's.
    write_files(&paths, &identity(&[&new_ca], &new_ca, "server"));
    let dropped = until(&old_node, addr, Result::is_err).await;
    assert!(
        dropped.is_err(),
        "the old CA's node loses even the connection it had: {dropped:?}"
    );
    new_node.forget(addr);
    new_node.call(addr, &hello()).await.unwrap();

    // Files that do not load (a key that is not the certificate's) change nothing.
    let mismatched = identity(&[&new_ca], &new_ca, "server");
    std::fs::write(
        &paths.key,
        issue_node_cert(&new_ca, "x", &[]).unwrap().key_pem,
    )
    .unwrap();
    std::fs::write(&paths.cert, mismatched.node.cert_pem).unwrap();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    new_node.forget(addr);
    new_node.call(addr, &hello()).await.unwrap();
    let still_refused = old_node.call(addr, &hello()).await.unwrap_err();
    assert!(
        matches!(still_refused, RpcError::Connect { .. }),
        "{still_refused:?}"
    );

    server.close();
    tokio::time::timeout(Duration::from_secs(5), watch)
        .await
        .expect("the watch ends with its transport")
        .unwrap();
}

#[tokio::test]
async fn a_caller_that_stops_trusting_a_ca_closes_its_connections_to_that_cas_nodes() {
    let (old_ca, new_ca) = (generate_ca().unwrap(), generate_ca().unwrap());
    let server_identity = identity(&[&old_ca, &new_ca], &old_ca, "server");
    let server = Transport::bind("127.0.0.1:0".parse().unwrap(), &server_identity, fast()).unwrap();
    server.serve(Arc::new(Echo));
    let addr = server.local_addr().unwrap();
    let caller = Transport::client(&identity(&[&old_ca], &old_ca, "caller"), fast()).unwrap();
    caller.call(addr, &hello()).await.unwrap();

    // A bad identity is refused whole: the caller goes on as before.
    let mut broken = identity(&[&new_ca], &new_ca, "caller");
    broken.node.key_pem = issue_node_cert(&new_ca, "other", &[]).unwrap().key_pem;
    assert!(caller.reload_tls(&broken).is_err());
    caller.call(addr, &hello()).await.unwrap();

    let closed = caller
        .reload_tls(&identity(&[&new_ca], &new_ca, "caller"))
        .unwrap();
    assert_eq!(
        closed, 1,
        "the one connection, to an old CA's node, is closed"
    );
    let err = caller.call(addr, &hello()).await.unwrap_err();
    assert!(matches!(err, RpcError::Connect { .. }), "{err:?}");
    // Once that node has a certificate of the new CA, the caller reaches it again.
    server
        .reload_tls(&identity(&[&old_ca, &new_ca], &new_ca, "server"))
        .unwrap();
    caller.call(addr, &hello()).await.unwrap();
}
