//! Three `shale store` processes and a `shale gateway` move to a new cluster CA while a
//! client writes, with no restart: first every node trusts both CAs, then each takes a
//! certificate of the new one, then the old CA goes. Stores keep replicating
//! throughout, no acknowledged write is lost, the gateway serves S3 over new
//! connections, and a node of the old CA is shut out at the end, even from the
//! connection it had open.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use shale_rpc::certs::{generate_ca, issue_node_cert, load_ca_dir, TlsIdentity};
use shale_rpc::client::ClientConfig;

use crate::dev::free_tcp_port;
use crate::procs::*;

fn key(i: u64) -> Bytes {
    Bytes::from(format!("rot{i:06}"))
}

/// Replaces a file whole, as a certificate tool would.
fn replace(path: &Path, text: &str) {
    let fresh = path.with_extension("new");
    std::fs::write(&fresh, text).unwrap();
    std::fs::rename(&fresh, path).unwrap();
}

/// Waits until every store has logged its `n`th certificate reload.
async fn reloaded(procs: &[StoreProc], n: usize) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let counts: Vec<usize> = procs
            .iter()
            .map(|p| p.log_text().matches("TLS certificates reloaded").count())
            .collect();
        if counts.iter().all(|&c| c >= n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "stores did not reload their certificates {n} times: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stores_move_to_a_new_ca_without_a_restart_and_lose_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let (mut procs, old_identity) = store_procs(dir.path(), 3);
    let (transport, _) = start_all(&mut procs, &old_identity).await;
    let old_client = kv_client(
        transport,
        &procs,
        ClientConfig {
            deadline_ms: 3_000,
            ..ClientConfig::default()
        },
    );
    old_client.put(key(0), Bytes::from("before")).await.unwrap();
    // The gateway shares the stores' certificate files (its cluster file names them).
    let (_gateway, endpoint) = start_gateway(dir.path(), &procs, free_tcp_port());
    let s3 = boto3_client(&endpoint);
    run_ok(
        &mut python(&format!(
            "{s3}\ns3.create_bucket(Bucket='rot')\ns3.put_object(Bucket='rot', Key='before', Body=b'b')"
        )),
        "S3 PUT before the rotation",
    );

    // A writer through a client of the new CA that trusts both (as the new nodes
    // would), keeping every write acknowledged; bounded by count and by `stop`.
    let certs = dir.path().join("certs");
    let old_ca = load_ca_dir(&certs).unwrap();
    let new_ca = generate_ca().unwrap();
    let both = format!("{}{}", old_ca.cert_pem, new_ca.cert_pem);
    let new_identity = TlsIdentity {
        ca_cert_pem: both.clone(),
        node: issue_node_cert(&new_ca, "client", &[]).unwrap(),
    };
    let new_client = Arc::new(kv_client(
        client_transport(&new_identity),
        &procs,
        patient_client_config(),
    ));

    // Step 1: every store trusts both CAs; the new CA's client gets in.
    replace(&certs.join("ca.pem"), &both);
    reloaded(&procs, 1).await;
    let writer = Writer::start(new_client.clone(), key);
    // Step 2: each store's own certificate is the new CA's.
    let node = issue_node_cert(&new_ca, "node", &[]).unwrap();
    replace(&certs.join("node.key"), &node.key_pem);
    replace(&certs.join("node.pem"), &node.cert_pem);
    reloaded(&procs, 2).await;
    // Step 3: the old CA goes. Connections between stores made before step 2 carry
    // old certificates: they are closed, and the stores reconnect with new ones.
    replace(&certs.join("ca.pem"), &new_ca.cert_pem);
    reloaded(&procs, 3).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let acked = writer.stop().await;
    // A write now needs a majority of stores talking over new connections.
    new_client
        .put(key(9_999_999), Bytes::from("after"))
        .await
        .unwrap();
    must_read_acked(&new_client, key, &acked).await;
    assert_eq!(
        new_client.get(key(0)).await.unwrap(),
        Some(Bytes::from("before"))
    );
    // The gateway reloads on its own clock (every 10 s); the stores closed the
    // connections it made with its old certificate, so S3 works again only through
    // connections made with the new one.
    let started = Instant::now();
    let check = format!(
        "{s3}\ns3.put_object(Bucket='rot', Key='after', Body=b'a')\n\
         assert s3.get_object(Bucket='rot', Key='before')['Body'].read() == b'b'\n\
         assert s3.get_object(Bucket='rot', Key='after')['Body'].read() == b'a'"
    );
    loop {
        let out = python(&check).output().unwrap();
        if out.status.success() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "S3 through the gateway after the rotation:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let gateway_log = std::fs::read_to_string(dir.path().join("gateway.log")).unwrap();
    assert!(
        gateway_log.contains("TLS certificates reloaded"),
        "the gateway reloaded its certificates"
    );
    // The old CA's node is shut out, connection and all.
    let refused = old_client.put(key(1), Bytes::from("late")).await;
    assert!(
        refused.is_err(),
        "an old CA's node still writes: {refused:?}"
    );
    must_all_run(&mut procs, "the rotation");
}
