//! `shale dev` as a user runs it: starts, serves `shale kv`, exits 0 on SIGTERM, and a
//! restart on the same folder keeps the data.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::procs::{shale, KillOnDrop};

fn kv(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    shale()
        .arg("kv")
        .arg("--cluster")
        .arg(dir.join("dev.json"))
        .args(args)
        .output()
        .expect("run shale kv")
}

pub fn start_dev(dir: &std::path::Path, port_base: u16, s3_port: u16) -> KillOnDrop {
    let _ = std::fs::remove_file(dir.join("dev.json"));
    // Placement's API and Raft ports: a free one and the next, as with the stores.
    let placement_port = shale_storage::cluster::free_udp_ports(1).unwrap()[0];
    // Its log, for a start that fails (appended to across restarts).
    let log_path = dir.join("dev-stderr.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .expect("open the dev log");
    let child = KillOnDrop(
        shale()
            .args(["dev", "--data-dir"])
            .arg(dir)
            .args([
                "--port-base",
                &port_base.to_string(),
                "--s3-port",
                &s3_port.to_string(),
                "--metrics-port",
                "0",
                "--placement-port",
                &placement_port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn shale dev"),
    );
    let started = Instant::now();
    let mut child = child;
    while !dir.join("dev.json").exists() {
        let tail = || {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let start = text.len().saturating_sub(3000);
            text.get(start..).unwrap_or_default().to_string()
        };
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "shale dev exited ({status}) before writing dev.json:\n{}",
                tail()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "shale dev wrote no dev.json in 30 s:\n{}",
            tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

pub fn sigterm(mut child: KillOnDrop) -> Option<i32> {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let started = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code();
        }
        if started.elapsed() > Duration::from_secs(20) {
            child.kill().unwrap();
            panic!("shale dev did not exit within 20 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a boto3 snippet against the endpoint and credentials `shale dev` wrote.
pub fn s3(dir: &std::path::Path, code: &str) -> String {
    let python = std::env::var("SHALE_PYTHON")
        .expect("SHALE_PYTHON (set by scripts/test.sh) names a Python with boto3");
    let prelude = r#"
import json, sys, boto3
from botocore.config import Config
dev = json.load(open(sys.argv[1]))["s3"]
s3 = boto3.client("s3", endpoint_url=dev["endpoint"], aws_access_key_id=dev["access_key"],
                  aws_secret_access_key=dev["secret_key"], region_name=dev["region"],
                  config=Config(s3={"addressing_style": "path"}))
"#;
    let out = Command::new(python)
        .args(["-c", &format!("{prelude}\n{code}")])
        .arg(dir.join("dev.json"))
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "boto3 against shale dev failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs a boto3 snippet with the given key against the dev endpoint; Err(stderr) if it fails.
fn s3_as(dir: &std::path::Path, access: &str, secret: &str, code: &str) -> Result<String, String> {
    let python = std::env::var("SHALE_PYTHON")
        .expect("SHALE_PYTHON (set by scripts/test.sh) names a Python with boto3");
    let prelude = format!(
        r#"
import json, sys, boto3
from botocore.config import Config
dev = json.load(open(sys.argv[1]))["s3"]
s3 = boto3.client("s3", endpoint_url=dev["endpoint"], aws_access_key_id="{access}",
                  aws_secret_access_key="{secret}", region_name=dev["region"],
                  config=Config(s3={{"addressing_style": "path"}}, retries={{"max_attempts": 1}}))
"#
    );
    let out = Command::new(python)
        .args(["-c", &format!("{prelude}\n{code}")])
        .arg(dir.join("dev.json"))
        .output()
        .expect("run python");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

fn ctl_json(dir: &std::path::Path, args: &[&str]) -> serde_json::Value {
    let out = shale()
        .arg("ctl")
        .arg("--cluster")
        .arg(dir.join("dev.json"))
        .arg("--json")
        .args(args)
        .output()
        .expect("run shale ctl");
    assert!(
        out.status.success(),
        "shale ctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// GETs the metrics endpoint named in dev.json.
fn fetch_metrics(dir: &std::path::Path) -> String {
    use std::io::{Read, Write};
    let dev: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("dev.json")).unwrap()).unwrap();
    let url = dev["metrics"]
        .as_str()
        .expect("dev.json names the metrics endpoint");
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches("/metrics");
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    write!(
        conn,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    conn.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    reply
}

/// The value of a metric line `NAME VALUE`.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn dev_cluster_serves_kv_exits_cleanly_and_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let ports = shale_storage::cluster::free_udp_ports(1).unwrap();
    // Three consecutive ports from a free one; retried by the OS rarely enough for a test.
    let base = ports[0];
    let s3_port = free_tcp_port();
    let dev = start_dev(dir.path(), base, s3_port);
    s3(
        dir.path(),
        "s3.create_bucket(Bucket='demo'); s3.put_object(Bucket='demo', Key='k', Body=b'kept')",
    );
    s3(
        dir.path(),
        "s3.create_bucket(Bucket='other'); \
         [s3.put_object(Bucket='other', Key=f'o{i}', Body=b'x' * 1000) for i in range(3)]",
    );
    let buckets = ctl_json(dir.path(), &["buckets"]);
    let usage: Vec<(String, u64, u64)> = buckets
        .as_array()
        .expect("a list")
        .iter()
        .map(|b| {
            assert!(b["created_ms"].as_u64().unwrap() > 0, "{b}");
            (
                b["name"].as_str().unwrap().to_string(),
                b["objects"].as_u64().unwrap(),
                b["bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        usage,
        vec![("demo".into(), 1, 4), ("other".into(), 3, 3000)],
        "{buckets}"
    );
    // Keys kept in the cluster: created, usable, listed, deleted, refused.
    let key = ctl_json(dir.path(), &["keys", "create", "--name", "ci"]);
    let (ak, sk) = (
        key["access_key"].as_str().unwrap(),
        key["secret_key"].as_str().unwrap(),
    );
    let listed = s3_as(
        dir.path(),
        ak,
        sk,
        "print([b['Name'] for b in s3.list_buckets()['Buckets']])",
    )
    .expect("a new key works");
    assert_eq!(listed, "['demo', 'other']");
    let keys = ctl_json(dir.path(), &["keys", "list"]);
    assert!(keys
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k["access_key"] == ak && k["name"] == "ci" && k.get("secret_key").is_none()));
    ctl_json(dir.path(), &["keys", "delete", ak]);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let refused =
        s3_as(dir.path(), ak, sk, "s3.list_buckets()").expect_err("a deleted key is refused");
    assert!(refused.contains("InvalidAccessKeyId"), "{refused}");
    // Prometheus metrics show the work done so far.
    let metrics = fetch_metrics(dir.path());
    for name in [
        "shale_store_rounds_total",
        "shale_store_proposals_total",
        "shale_gateway_objects_written_total",
    ] {
        let value =
            metric(&metrics, name).unwrap_or_else(|| panic!("{name} missing from:\n{metrics}"));
        assert!(value > 0.0, "{name} is {value}");
    }
    let leaders: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("shale_store_leaders{") && !l.contains("placement"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(
        leaders, 1.0,
        "one leader of the one range across the three stores:\n{metrics}"
    );
    let out = kv(dir.path(), &["put", "hello", "world"]);
    assert!(
        out.status.success(),
        "put: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = kv(dir.path(), &["get", "hello"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "world");
    let out = kv(dir.path(), &["get", "absent"]);
    assert_eq!(out.status.code(), Some(1), "a missing key exits 1");
    assert_eq!(sigterm(dev), Some(0), "SIGTERM exits with code 0");

    let dev = start_dev(dir.path(), base, s3_port);
    let got = s3(
        dir.path(),
        "print(s3.get_object(Bucket='demo', Key='k')['Body'].read().decode())",
    );
    assert_eq!(
        got, "kept",
        "objects survive a restart with the same credentials"
    );
    let out = kv(dir.path(), &["get", "hello"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "world",
        "data survives a restart: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sigterm(dev), Some(0));
}
