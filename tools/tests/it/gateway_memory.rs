//! The gateway's memory stays bounded while a large object streams through it both ways.

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::procs::*;

/// Upper bound the gateway's resident memory must stay under while moving the object.
const GATEWAY_RSS_BYTES_MAX: u64 = 64 << 20;
/// Size of the object moved (the issue's 2 GiB: 32 times the bound).
const OBJECT_MIB: u64 = 2048;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_memory_stays_bounded_moving_a_large_object_each_way() {
    let dir = tempfile::tempdir().unwrap();
    let (mut procs, identity) = store_procs(dir.path(), 3);
    start_all(&mut procs, &identity).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (mut gateway, endpoint) = start_gateway(dir.path(), &procs, port);
    let pid = gateway.id();
    // Peaks while uploading and while downloading (the script marks the switch).
    let peaks = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let done = Arc::new(AtomicBool::new(false));
    let put_done = dir.path().join("put.done");
    let sampler = {
        let (peaks, done, put_done) = (peaks.clone(), done.clone(), put_done.clone());
        std::thread::spawn(move || {
            let started = Instant::now();
            while !done.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(600) {
                if let Some(rss) = rss_bytes(pid) {
                    peaks[usize::from(put_done.exists())].fetch_max(rss, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let python = std::env::var("SHALE_PYTHON")
        .expect("SHALE_PYTHON (set by scripts/test.sh) names a Python with boto3");
    let script = format!(
        r#"
import hashlib, sys, time, boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url="{endpoint}", aws_access_key_id="mem-access",
                  aws_secret_access_key="mem-secret", region_name="us-east-1",
                  config=Config(s3={{"addressing_style": "path"}}, retries={{"max_attempts": 10}}))
for _ in range(100):
    try:
        s3.create_bucket(Bucket="big"); break
    except Exception:
        time.sleep(0.2)
import os
path = sys.argv[1]
want = hashlib.md5()
# Random bytes, each mebibyte marked with its index so a misplaced chunk shows.
base = os.urandom(1 << 20)
t0 = time.time()
with open(path, "wb") as f:
    for i in range({OBJECT_MIB}):
        block = i.to_bytes(8, "big") + base[8:]
        want.update(block)
        f.write(block)
t1 = time.time()
with open(path, "rb") as f:
    s3.put_object(Bucket="big", Key="blob", Body=f)
t2 = time.time()
open(sys.argv[2], "w").close()
got = hashlib.md5()
size = 0
for piece in s3.get_object(Bucket="big", Key="blob")["Body"].iter_chunks(1 << 20):
    got.update(piece); size += len(piece)
assert size == {OBJECT_MIB} << 20, size
assert got.hexdigest() == want.hexdigest()
t3 = time.time()
print("file %.1f s, PUT %.1f s (%.0f MB/s), GET %.1f s (%.0f MB/s)" % (
    t1 - t0, t2 - t1, size / (t2 - t1) / 1e6, t3 - t2, size / (t3 - t2) / 1e6))
"#
    );
    let file = dir.path().join("object.bin");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .args(["-c", &script])
            .arg(&file)
            .arg(&put_done)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    done.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    let _ = gateway.kill();
    let _ = gateway.wait();
    let log = std::fs::read_to_string(dir.path().join("gateway.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "moving the object failed: {}\n{}\ngateway log tail:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    let [put_peak, get_peak] = [0, 1].map(|i| peaks[i].load(Ordering::SeqCst));
    let peak = put_peak.max(get_peak);
    println!(
        "gateway peak RSS moving {OBJECT_MIB} MiB: {} MiB up, {} MiB down; {}",
        put_peak >> 20,
        get_peak >> 20,
        String::from_utf8_lossy(&out.stdout).trim()
    );
    assert!(peak > 0, "the gateway's memory was sampled");
    assert!(
        peak < GATEWAY_RSS_BYTES_MAX,
        "gateway RSS peaked at {} MiB (bound {} MiB)",
        peak >> 20,
        GATEWAY_RSS_BYTES_MAX >> 20
    );
}
