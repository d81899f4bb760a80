//! The S3 endpoint over HTTPS: boto3 trusting the cluster CA writes, reads and lists;
//! a client that does not trust it, or speaks plain HTTP, gets no answer; a missing or
//! wrong certificate file stops the gateway from starting with an error naming it; a
//! renewed certificate is served without a restart, and a broken renewal is ignored.

use std::io::{Read, Write};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use shale_gateway::tls::GatewayTls;
use shale_gateway::{Gateway, GatewayConfig};
use shale_storage::cluster::LocalCluster;

const CHECKS: &str = r#"
import sys, boto3, botocore
from botocore.config import Config
endpoint, ca = sys.argv[1], sys.argv[2]
def client(verify):
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="tls-access",
        aws_secret_access_key="tls-secret-key", region_name="us-east-1", verify=verify,
        config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}))
s3 = client(ca)
s3.create_bucket(Bucket="secure")
big = bytes(range(256)) * (5 * 4096 + 3)
s3.put_object(Bucket="secure", Key="small", Body=b"over tls")
s3.put_object(Bucket="secure", Key="big", Body=big)
assert s3.get_object(Bucket="secure", Key="small")["Body"].read() == b"over tls"
assert s3.get_object(Bucket="secure", Key="big")["Body"].read() == big
keys = [o["Key"] for o in s3.list_objects_v2(Bucket="secure")["Contents"]]
assert keys == ["big", "small"], keys
try:
    client(True).list_buckets()
    sys.exit("a client not trusting the cluster CA was answered")
except botocore.exceptions.SSLError:
    pass
print("https checks passed")
"#;

/// Lists buckets trusting the CA file `argv[2]`; exits 3 on a certificate error.
const TRUSTS: &str = r#"
import sys, boto3, botocore
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=sys.argv[1], aws_access_key_id="tls-access",
    aws_secret_access_key="tls-secret-key", region_name="us-east-1", verify=sys.argv[2],
    config=Config(retries={"max_attempts": 1}))
try:
    s3.list_buckets()
except botocore.exceptions.SSLError:
    sys.exit(3)
print("trusted")
"#;

/// Whether a client trusting only `ca` gets an answer from `endpoint`.
async fn trusted(endpoint: &str, script: &std::path::Path, ca: &std::path::Path) -> bool {
    let (endpoint, script, ca) = (endpoint.to_string(), script.to_owned(), ca.to_owned());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(crate::python())
            .arg(&script)
            .arg(&endpoint)
            .arg(&ca)
            .output()
            .expect("run boto3")
    })
    .await
    .unwrap();
    match out.status.code() {
        Some(0) => true,
        Some(3) => false,
        _ => panic!(
            "boto3 failed otherwise: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_endpoint_serves_https_to_clients_that_trust_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = shale_rpc::certs::generate_ca().unwrap();
    let names = ["localhost".to_string(), "127.0.0.1".to_string()];
    let cert = shale_rpc::certs::issue_node_cert(&ca, "s3", &names).unwrap();
    let path = |name: &str| dir.path().join(name);
    std::fs::write(path("ca.pem"), &ca.cert_pem).unwrap();
    std::fs::write(path("s3.pem"), &cert.cert_pem).unwrap();
    std::fs::write(path("s3.key"), &cert.key_pem).unwrap();
    std::fs::write(path("checks.py"), CHECKS).unwrap();
    std::fs::write(path("trusts.py"), TRUSTS).unwrap();

    let cluster = LocalCluster::start_new(&path("cluster"), 3, |_| {})
        .await
        .unwrap();
    cluster.wait_leader(Duration::from_secs(10)).await.unwrap();
    let kv = Arc::new(cluster.client().unwrap());
    let tls = GatewayTls {
        reload_check_secs: 1,
        ..GatewayTls::new(path("s3.pem"), path("s3.key"))
    };
    let config = GatewayConfig {
        listen_addr: "127.0.0.1:0".into(),
        access_key: "tls-access".into(),
        secret_key: "tls-secret-key".into(),
        tls: Some(tls.clone()),
        ..GatewayConfig::default()
    };

    // Files that are missing or hold the wrong thing: no gateway, and the error says which.
    for (bad, named) in [
        (
            GatewayTls {
                cert: path("absent.pem"),
                ..tls.clone()
            },
            "absent.pem",
        ),
        (
            GatewayTls {
                key: path("s3.pem"),
                ..tls.clone()
            },
            "s3.pem",
        ),
    ] {
        let bad = GatewayConfig {
            tls: Some(bad),
            ..config.clone()
        };
        let err = match Gateway::start(&bad, kv.clone()).await {
            Ok(_) => panic!("a gateway started with {bad:?}"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(named), "{err}");
    }

    let gateway = Gateway::start(&config, kv).await.unwrap();
    let addr = gateway.addr();

    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        got
    })
    .await
    .unwrap();
    assert!(
        !plain.starts_with(b"HTTP/"),
        "plain HTTP was answered: {:?}",
        String::from_utf8_lossy(&plain)
    );

    let endpoint = format!("https://127.0.0.1:{}", addr.port());
    let (script, ca_path) = (path("checks.py"), path("ca.pem"));
    let endpoint2 = endpoint.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(crate::python())
            .arg(&script)
            .arg(&endpoint)
            .arg(&ca_path)
            .output()
            .expect("run the boto3 checks")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("https checks passed"),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The certificate is renewed (by another CA here): new connections get the new one
    // within the reload interval, without a restart.
    let ca2 = shale_rpc::certs::generate_ca().unwrap();
    let cert2 = shale_rpc::certs::issue_node_cert(&ca2, "s3", &names).unwrap();
    std::fs::write(path("ca2.pem"), &ca2.cert_pem).unwrap();
    std::fs::write(path("s3.key"), &cert2.key_pem).unwrap();
    std::fs::write(path("s3.pem"), &cert2.cert_pem).unwrap();
    let (trusts, endpoint) = (path("trusts.py"), endpoint2);
    let started = std::time::Instant::now();
    while !trusted(&endpoint, &trusts, &path("ca2.pem")).await {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the renewed certificate is not served"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(!trusted(&endpoint, &trusts, &path("ca.pem")).await);
    // A renewal that does not load (a truncated file) keeps the certificate in use.
    std::fs::write(path("s3.pem"), &cert2.cert_pem[..40]).unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(trusted(&endpoint, &trusts, &path("ca2.pem")).await);
    gateway.shutdown().await;
    cluster.shutdown().await;
}
