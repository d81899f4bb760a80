//! Running `shale` processes from tests: configs, start, kill -9, and finding the leader.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use shale_rpc::certs::{init_ca_dir, issue_node_cert, write_pair, TlsIdentity};
use shale_rpc::client::FIRST_RANGE_ID;
use shale_rpc::placement::{PlacementReply, PlacementRequest, Route};
use shale_rpc::placement_client::PlacementClient;
use shale_rpc::transport::{Transport, TransportConfig};
use shale_rpc::{Frame, FrameKind, KvOp, KvRequest, KvResponse};
use shale_storage::cluster::{cluster_configs_joining, free_udp_ports};
use shale_storage::config::TlsPaths;
use shale_storage::StoreConfig;

use crate::relay::Relays;

pub fn shale() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shale"))
}

/// A child process killed (and reaped) when dropped, so a failing test leaves no
/// cluster behind holding its ports.
pub struct KillOnDrop(pub Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A store (or placement) process that is killed when dropped.
pub struct StoreProc {
    pub config_path: PathBuf,
    pub config: StoreConfig,
    pub child: Option<Child>,
    log: PathBuf,
    /// `store` or `placement`: the subcommand the process runs.
    pub role: &'static str,
}

impl StoreProc {
    pub fn start(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = shale()
            .args([self.role, "--config"])
            .arg(&self.config_path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn shale store");
        self.child = Some(child);
    }

    /// Writes `config` to the file the process starts from.
    pub fn save_config(&self) {
        std::fs::write(&self.config_path, toml::to_string(&self.config).unwrap()).unwrap();
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let pid = c.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let started = Instant::now();
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status.code();
            }
            if started.elapsed() > Duration::from_secs(20) {
                c.kill().unwrap();
                panic!("store did not exit within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGSTOP (`on`) or SIGCONT: the process freezes as in a long pause (a stalled
    /// disk, a VM descheduled) and goes on where it stopped.
    pub fn pause(&self, on: bool) {
        if let Some(c) = &self.child {
            let signal = if on { "-STOP" } else { "-CONT" };
            let pid = c.id().to_string();
            Command::new("kill").args([signal, &pid]).status().unwrap();
        }
    }

    /// Everything the process logged (across restarts).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for StoreProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Writes certificates and configs for `n` stores under `dir`.
pub fn store_procs(dir: &Path, n: usize) -> (Vec<StoreProc>, TlsIdentity) {
    store_procs_joining(dir, n, n)
}

/// Like `store_procs`, but only the first `bootstrap` stores start the first range; the
/// others join empty.
pub fn store_procs_joining(
    dir: &Path,
    n: usize,
    bootstrap: usize,
) -> (Vec<StoreProc>, TlsIdentity) {
    let certs = dir.join("certs");
    let ca = init_ca_dir(&certs).unwrap();
    write_pair(&certs, "node", &issue_node_cert(&ca, "node", &[]).unwrap()).unwrap();
    let identity = TlsIdentity::from_files(
        &certs.join("ca.pem"),
        &certs.join("node.pem"),
        &certs.join("node.key"),
    )
    .unwrap();
    let configs = cluster_configs_joining(dir, &free_udp_ports(n).unwrap(), bootstrap);
    let procs = configs
        .into_iter()
        .map(|mut config| {
            config.tls = TlsPaths {
                ca_cert: certs.join("ca.pem"),
                cert: certs.join("node.pem"),
                key: certs.join("node.key"),
                // Certificate rotation tests change the files under running stores.
                reload_check_secs: 1,
            };
            let config_path = dir.join(format!("store-{}.toml", config.store_id));
            std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();
            StoreProc {
                log: dir.join(format!("store-{}.log", config.store_id)),
                config_path,
                config,
                child: None,
                role: "store",
            }
        })
        .collect();
    (procs, identity)
}

/// A placement process for `dir`'s certificates (from `store_procs`), scheduling fast:
/// a store silent 3 s is down. Returns it (its `config` field is unused) and its address.
pub fn placement_proc(dir: &Path) -> (StoreProc, String) {
    let (mut procs, mut addrs) = placement_procs_with(dir, 1, |_| {});
    (procs.remove(0), addrs.remove(0))
}

/// `n` placement processes forming one group, their Raft traffic through relays (node
/// ids as relay ids) that can cut them apart; their API addresses and the relays.
pub fn relayed_placement_procs(dir: &Path, n: usize) -> (Vec<StoreProc>, Vec<String>, Relays) {
    let mut relays = None;
    let (procs, addrs) = placement_procs_with(dir, n, |configs| {
        let backends = configs
            .iter()
            .map(|c| (c.node_id, c.raft_listen_addr.parse().unwrap()))
            .collect();
        let (r, fronts) = Relays::around(backends);
        for c in configs.iter_mut() {
            for peer in &mut c.peers {
                peer.raft_addr = fronts[&peer.node_id].clone();
            }
        }
        relays = Some(r);
    });
    (procs, addrs, relays.expect("relays made"))
}

/// `n` placement processes as `placement_proc` makes one; `tweak` adjusts their configs
/// before they are written.
fn placement_procs_with(
    dir: &Path,
    n: usize,
    tweak: impl FnOnce(&mut [shale_placement::PlacementConfig]),
) -> (Vec<StoreProc>, Vec<String>) {
    let certs = dir.join("certs");
    let mut configs = shale_placement::cluster::placement_configs(dir, n).unwrap();
    for config in configs.iter_mut() {
        config.tls = TlsPaths {
            ca_cert: certs.join("ca.pem"),
            cert: certs.join("node.pem"),
            key: certs.join("node.key"),
            reload_check_secs: 1,
        };
        config.schedule.store_down_after_ms = 3000;
        config.schedule.interval_ms = 200;
        config.schedule.step_retry_ms = 3000;
        config.schedule.operator_timeout_ms = 60_000;
    }
    tweak(&mut configs);
    let name = |id: u64| match n {
        1 => "placement".to_string(),
        _ => format!("placement-{id}"),
    };
    let addrs = configs.iter().map(|c| c.listen_addr.clone()).collect();
    let procs = configs
        .iter()
        .map(|config| {
            let config_path = dir.join(format!("{}.toml", name(config.node_id)));
            std::fs::write(&config_path, toml::to_string(config).unwrap()).unwrap();
            StoreProc {
                log: dir.join(format!("{}.log", name(config.node_id))),
                config_path,
                config: StoreConfig::default(),
                child: None,
                role: "placement",
            }
        })
        .collect();
    (procs, addrs)
}

/// Points every store at placement `addr` (heartbeats every 200 ms) and rewrites configs.
pub fn use_placement(procs: &mut [StoreProc], addr: &str) {
    for p in procs {
        p.config.placement.addrs = vec![addr.to_string()];
        p.config.placement.heartbeat_interval_ms = 200;
        p.save_config();
    }
}

/// Index of the store that answers a read as leader, waiting up to `timeout`.
pub async fn find_leader(
    transport: &Transport,
    procs: &[StoreProc],
    timeout: Duration,
) -> Option<usize> {
    let req = KvRequest {
        range_id: FIRST_RANGE_ID,
        epoch: None,
        op: KvOp::Get {
            key: Bytes::from_static(b"probe"),
        },
    };
    let frame = Frame::encode(FrameKind::KvRequest, &req).unwrap();
    let started = Instant::now();
    while started.elapsed() < timeout {
        for (i, p) in procs.iter().enumerate() {
            if p.child.is_none() {
                continue;
            }
            let addr = p.config.listen_addr.parse().unwrap();
            if let Ok(reply) = transport.call(addr, &frame).await {
                if let Ok(Ok(_)) = reply.decode::<KvResponse>(FrameKind::KvResponse) {
                    return Some(i);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// The first range's status as the store at `addr` reports it.
pub async fn range_status(transport: &Transport, addr: &str) -> Option<shale_rpc::RangeStatus> {
    let addr = addr.parse().ok()?;
    match shale_rpc::client::admin(transport, addr, &shale_rpc::AdminRequest::Status).await {
        Ok(shale_rpc::AdminReply::Status { ranges, .. }) => {
            ranges.into_iter().find(|r| r.range_id() == FIRST_RANGE_ID)
        }
        _ => None,
    }
}

pub fn client_transport(identity: &TlsIdentity) -> std::sync::Arc<Transport> {
    Transport::client(
        identity,
        TransportConfig {
            request_timeout_ms: 2_000,
            ..TransportConfig::default()
        },
    )
    .unwrap()
}

/// A placement process and four store processes (three start the first range, the
/// fourth joins empty), all started, with a client transport and a placement client;
/// the stores talk to each other and to placement through relays that can cut those
/// links if `relayed`.
pub struct PlacedProcs {
    pub stores: Vec<StoreProc>,
    pub placement: StoreProc,
    pub placement_addr: String,
    pub transport: std::sync::Arc<Transport>,
    pub placement_client: std::sync::Arc<PlacementClient>,
    pub relays: Option<Relays>,
}

pub fn start_placed_procs(dir: &Path, relayed: bool) -> PlacedProcs {
    let (mut stores, identity) = store_procs_joining(dir, 4, 3);
    let (mut placement, placement_addr) = placement_proc(dir);
    use_placement(&mut stores, &placement_addr);
    let relays = relayed.then(|| Relays::front(&mut stores, Some(&placement_addr)));
    placement.start();
    for p in stores.iter_mut() {
        p.start();
    }
    let transport = client_transport(&identity);
    let placement_client = std::sync::Arc::new(
        PlacementClient::new(
            transport.clone(),
            std::slice::from_ref(&placement_addr),
            shale_rpc::client::ClientConfig::default(),
        )
        .unwrap(),
    );
    PlacedProcs {
        stores,
        placement,
        placement_addr,
        transport,
        placement_client,
        relays,
    }
}

/// Every range in key order, as placement knows them (none if it does not answer).
pub async fn routes(placement: &PlacementClient) -> Vec<Route> {
    let req = PlacementRequest::ScanRanges {
        start_key: Bytes::new(),
        limit: 10_000,
    };
    match placement.call(&req).await {
        Ok(PlacementReply::Routes(r)) => r,
        _ => Vec::new(),
    }
}

/// Writes `DIR/cluster.json` naming `procs` and the node certificate as client identity.
pub fn write_cluster_file(dir: &Path, procs: &[StoreProc]) -> PathBuf {
    let certs = dir.join("certs");
    let stores: Vec<serde_json::Value> = procs
        .iter()
        .map(|p| serde_json::json!({"store_id": p.config.store_id, "addr": p.config.listen_addr}))
        .collect();
    let cluster = serde_json::json!({
        "stores": stores,
        "ca_cert": certs.join("ca.pem"),
        "cert": certs.join("node.pem"),
        "key": certs.join("node.key"),
    });
    let path = dir.join("cluster.json");
    std::fs::write(&path, cluster.to_string()).unwrap();
    path
}

/// A `shale gateway` process in front of `procs`, and the endpoint it serves.
pub fn start_gateway(dir: &Path, procs: &[StoreProc], port: u16) -> (KillOnDrop, String) {
    start_gateway_with(dir, procs, port, &[])
}

/// As [`start_gateway`], with more arguments (`--config FILE`, say); logs to
/// `DIR/gateway.log`, appending.
pub fn start_gateway_with(
    dir: &Path,
    procs: &[StoreProc],
    port: u16,
    args: &[&str],
) -> (KillOnDrop, String) {
    let path = write_cluster_file(dir, procs);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("gateway.log"))
        .unwrap();
    let child = shale()
        .args(["gateway", "--cluster"])
        .arg(&path)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--access-key",
            "mem-access",
            "--secret-key",
            "mem-secret",
        ])
        .args(args)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn shale gateway");
    (KillOnDrop(child), format!("http://127.0.0.1:{port}"))
}

/// Resident memory of a process, from /proc.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// Starts every process of `procs` and waits for the first range's leader; returns a
/// client transport with the cluster's identity and the leader's index.
pub async fn start_all(
    procs: &mut [StoreProc],
    identity: &TlsIdentity,
) -> (std::sync::Arc<Transport>, usize) {
    for p in procs.iter_mut() {
        p.start();
    }
    let transport = client_transport(identity);
    let leader = find_leader(&transport, procs, Duration::from_secs(20))
        .await
        .expect("a leader is elected");
    (transport, leader)
}

/// Client settings for tests that kill stores: requests wait out an election or two.
pub fn patient_client_config() -> shale_rpc::client::ClientConfig {
    shale_rpc::client::ClientConfig {
        deadline_ms: 30_000,
        ..shale_rpc::client::ClientConfig::default()
    }
}

/// A KV client of `procs` over `transport`.
pub fn kv_client(
    transport: std::sync::Arc<Transport>,
    procs: &[StoreProc],
    config: shale_rpc::client::ClientConfig,
) -> shale_rpc::client::KvClient {
    let stores: Vec<shale_rpc::StoreAddr> = procs
        .iter()
        .map(|p| shale_rpc::StoreAddr {
            store_id: p.config.store_id,
            addr: p.config.listen_addr.clone(),
        })
        .collect();
    shale_rpc::client::KvClient::new(transport, &stores, config).unwrap()
}

/// A Python with boto3 (the venv `scripts/test.sh` sets up) running `code`.
pub fn python(code: &str) -> Command {
    let python = std::env::var("SHALE_PYTHON")
        .expect("SHALE_PYTHON (set by scripts/test.sh) names a Python with boto3");
    let mut cmd = Command::new(python);
    cmd.args(["-c", code]);
    cmd
}

/// Python that makes `s3`, a boto3 client of `endpoint` with the gateway's test key,
/// and `body(n, seed)`, a test object body.
pub fn boto3_client(endpoint: &str) -> String {
    format!(
        r#"
import hashlib, sys, time, boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url="{endpoint}", aws_access_key_id="mem-access",
                  aws_secret_access_key="mem-secret", region_name="us-east-1",
                  config=Config(s3={{"addressing_style": "path"}}, retries={{"max_attempts": 10}}))
def body(n, seed):
    block = bytes((seed * i + i // 7) % 251 for i in range(251 * 64))
    return (block * (n // len(block) + 1))[:n]
"#
    )
}

/// Runs `cmd`; its stdout, or a failure naming `what` with both outputs.
pub fn run_ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Writes `key(i)` = `v{i}` for i = 1, 2, ... through `client`, 5 ms apart, until
/// stopped or 5,000 writes; keeps the acknowledged ones.
pub struct Writer {
    acked: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    pub fn start(
        client: std::sync::Arc<shale_rpc::client::KvClient>,
        key: fn(u64) -> Bytes,
    ) -> Writer {
        let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = {
            let (acked, stop) = (acked.clone(), stop.clone());
            tokio::spawn(async move {
                for i in 1..5_000u64 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    if client.put(key(i), value_of(i)).await.is_ok() {
                        acked.lock().unwrap().push(i);
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        Writer { acked, stop, task }
    }

    /// Stops writing; the acknowledged writes, of which there were more than 50.
    pub async fn stop(self) -> Vec<u64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap();
        let acked = self.acked.lock().unwrap().clone();
        assert!(
            acked.len() > 50,
            "writes went on: {} acknowledged",
            acked.len()
        );
        acked
    }
}

/// The value [`Writer`] writes for its `i`th key.
pub fn value_of(i: u64) -> Bytes {
    Bytes::from(format!("v{i}"))
}

/// Every write of `acked` reads back through `client`.
pub async fn must_read_acked(
    client: &shale_rpc::client::KvClient,
    key: fn(u64) -> Bytes,
    acked: &[u64],
) {
    for &i in acked {
        let got = client.get(key(i)).await.unwrap();
        assert_eq!(got, Some(value_of(i)), "key {i}");
    }
}

/// No process of `procs` has exited.
pub fn must_all_run(procs: &mut [StoreProc], during: &str) {
    for p in procs.iter_mut() {
        assert!(
            p.child.as_mut().unwrap().try_wait().unwrap().is_none(),
            "a store exited during {during}:\n{}",
            p.log_tail()
        );
    }
}
