//! Stores as real processes on loopback, for benchmarks that need them: one
//! `shale store` (this binary) per store, sharing a fresh CA, each with its own log and,
//! when asked, its own metrics endpoint. Killed when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use shale_rpc::certs::{init_ca_dir, issue_node_cert, write_pair, TlsIdentity};
use shale_rpc::client::{admin, ClientConfig, KvClient};
use shale_rpc::transport::{Transport, TransportConfig};
use shale_rpc::{AdminReply, AdminRequest, RangeStatus, StoreAddr, StoreId};
use shale_storage::cluster::{cluster_configs, free_udp_ports};
use shale_storage::config::TlsPaths;

/// One store process.
pub struct StoreProc {
    pub store_id: StoreId,
    pub addr: SocketAddr,
    /// Where its Prometheus metrics are served, when started with them.
    pub metrics_addr: Option<SocketAddr>,
    config_path: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl StoreProc {
    pub fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::File::create(&self.log)?;
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(["store", "--config"]).arg(&self.config_path);
        if let Some(m) = self.metrics_addr {
            cmd.arg("--metrics-addr").arg(m.to_string());
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawn shale store")?;
        self.child = Some(child);
        Ok(())
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// CPU time (user and system) the process has used so far, in seconds.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let pid = self.child.as_ref().context("store not running")?.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command name (which may hold spaces) start past its ')'.
        let rest = stat.rsplit_once(')').context("malformed stat")?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here.
        let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        Ok(ticks as f64 / CLOCK_TICKS_PER_SEC)
    }
}

/// The kernel's USER_HZ, which /proc reports CPU times in (100 on every Linux
/// architecture Shale builds for).
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

impl Drop for StoreProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A cluster of store processes under one folder.
pub struct StoreProcs {
    pub procs: Vec<StoreProc>,
    pub stores: Vec<StoreAddr>,
    pub identity: TlsIdentity,
}

impl StoreProcs {
    /// Writes certificates and configs for `n` stores that bootstrap the first range
    /// together, under `dir`; starts none of them.
    pub fn create(dir: &Path, n: usize, with_metrics: bool) -> anyhow::Result<StoreProcs> {
        let certs = dir.join("certs");
        let ca = init_ca_dir(&certs)?;
        write_pair(&certs, "node", &issue_node_cert(&ca, "node", &[])?)?;
        let tls = TlsPaths {
            ca_cert: certs.join("ca.pem"),
            cert: certs.join("node.pem"),
            key: certs.join("node.key"),
            ..TlsPaths::default()
        };
        let identity = TlsIdentity::from_files(&tls.ca_cert, &tls.cert, &tls.key)?;
        let metrics_ports = if with_metrics {
            free_tcp_ports(n)?
        } else {
            Vec::new()
        };
        let mut procs = Vec::new();
        let mut stores = Vec::new();
        for (i, mut config) in cluster_configs(&dir.join("stores"), &free_udp_ports(n)?)
            .into_iter()
            .enumerate()
        {
            config.tls = tls.clone();
            let config_path = dir.join(format!("store-{}.toml", config.store_id));
            std::fs::write(&config_path, toml::to_string(&config)?)?;
            stores.push(StoreAddr {
                store_id: config.store_id,
                addr: config.listen_addr.clone(),
            });
            procs.push(StoreProc {
                store_id: config.store_id,
                addr: config.listen_addr.parse()?,
                metrics_addr: metrics_ports
                    .get(i)
                    .map(|p| SocketAddr::from(([127, 0, 0, 1], *p))),
                config_path,
                log: dir.join(format!("store-{}.log", config.store_id)),
                child: None,
            });
        }
        Ok(StoreProcs {
            procs,
            stores,
            identity,
        })
    }

    pub fn start_all(&mut self) -> anyhow::Result<()> {
        for p in &mut self.procs {
            p.start()?;
        }
        Ok(())
    }

    /// A client with the transport's defaults (what a gateway runs with), on a
    /// transport of its own.
    pub fn client(&self) -> anyhow::Result<KvClient> {
        let transport = Transport::client(&self.identity, TransportConfig::default())?;
        Ok(KvClient::new(
            transport,
            &self.stores,
            ClientConfig::default(),
        )?)
    }

    /// Every range a running store holds, as that store reports it.
    async fn statuses(&self, transport: &Transport) -> Vec<(StoreId, Vec<RangeStatus>)> {
        let mut out = Vec::new();
        for p in self.procs.iter().filter(|p| p.is_running()) {
            if let Ok(AdminReply::Status { ranges, .. }) =
                admin(transport, p.addr, &AdminRequest::Status).await
            {
                out.push((p.store_id, ranges));
            }
        }
        out
    }

    /// Each range led now, with its leader's store, in key order.
    async fn leaders(&self, transport: &Transport) -> Vec<(RangeStatus, StoreId)> {
        let mut leaders: Vec<(RangeStatus, StoreId)> = self
            .statuses(transport)
            .await
            .into_iter()
            .flat_map(|(store, ranges)| {
                ranges
                    .into_iter()
                    .filter(|r| r.is_leader)
                    .map(move |r| (r, store))
            })
            .collect();
        leaders.sort_by(|a, b| a.0.range.start_key.cmp(&b.0.range.start_key));
        leaders
    }

    /// How many ranges each store leads, in store order, once `ranges` ranges have a
    /// leader (new ranges elect theirs a moment after their split).
    pub async fn leaders_by_store(
        &self,
        transport: &Transport,
        ranges: usize,
        wait: Duration,
    ) -> anyhow::Result<Vec<usize>> {
        let started = Instant::now();
        loop {
            let leaders = self.leaders(transport).await;
            if leaders.len() >= ranges {
                let led = |store: StoreId| leaders.iter().filter(|(_, l)| *l == store).count();
                return Ok(self.stores.iter().map(|s| led(s.store_id)).collect());
            }
            anyhow::ensure!(
                started.elapsed() < wait,
                "{} of {ranges} ranges have a leader after {wait:?}",
                leaders.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Hands the leadership of the ranges round-robin over the stores in key order (as
    /// placement's leader balancing would), and waits until each store leads its share.
    pub async fn spread_leaders(
        &self,
        transport: &Transport,
        wait: Duration,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let leaders = self.leaders(transport).await;
            let mut moves = 0;
            for (i, (status, leader)) in leaders.iter().enumerate() {
                let want = self.stores[i % self.stores.len()].store_id;
                if *leader == want {
                    continue;
                }
                moves += 1;
                let Some(addr) = self.procs.iter().find(|p| p.store_id == *leader) else {
                    continue;
                };
                // A refusal (an election under way, say) is retried on the next pass.
                let _ = admin(
                    transport,
                    addr.addr,
                    &AdminRequest::TransferLeader {
                        range_id: status.range_id(),
                        to_store: want,
                    },
                )
                .await;
            }
            if moves == 0 && !leaders.is_empty() {
                return Ok(());
            }
            anyhow::ensure!(
                started.elapsed() < wait,
                "leaders not spread over the stores within {wait:?} ({moves} still to move)"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Free TCP ports on loopback (free when asked; a race with other processes is possible).
fn free_tcp_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    Ok(listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<std::io::Result<_>>()?)
}

/// Reads counters (lines `NAME VALUE` of Prometheus text) from the metrics endpoint at
/// `addr`: the value of each of `names`, 0 for one not served.
pub async fn scrape_counters(addr: SocketAddr, names: &[&str]) -> anyhow::Result<Vec<f64>> {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect to metrics at {addr}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::get("/metrics")
        .header(hyper::header::HOST, addr.to_string())
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let body = sender
        .send_request(req)
        .await?
        .into_body()
        .collect()
        .await?;
    let text = String::from_utf8_lossy(&body.to_bytes()).into_owned();
    Ok(names
        .iter()
        .map(|name| {
            text.lines()
                .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .filter_map(|v| v.trim().parse::<f64>().ok())
                .sum()
        })
        .collect())
}
