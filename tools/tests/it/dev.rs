//! `shale dev` as a user runs it: starts, serves `shale kv`, exits 0 on SIGTERM, and a
//! restart on the same folder keeps the data.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::procs::shale;

fn kv(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    shale()
        .arg("kv")
        .arg("--cluster")
        .arg(dir.join("dev.json"))
        .args(args)
        .output()
        .expect("run shale kv")
}

fn start_dev(dir: &std::path::Path, port_base: u16) -> std::process::Child {
    let _ = std::fs::remove_file(dir.join("dev.json"));
    let child = shale()
        .args(["dev", "--data-dir"])
        .arg(dir)
        .args(["--port-base", &port_base.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn shale dev");
    let started = Instant::now();
    while !dir.join("dev.json").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "shale dev wrote no dev.json"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn sigterm(mut child: std::process::Child) -> Option<i32> {
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

#[test]
fn dev_cluster_serves_kv_exits_cleanly_and_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let ports = shale_storage::cluster::free_udp_ports(1).unwrap();
    // Three consecutive ports from a free one; retried by the OS rarely enough for a test.
    let base = ports[0];
    let dev = start_dev(dir.path(), base);
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

    let dev = start_dev(dir.path(), base);
    let out = kv(dir.path(), &["get", "hello"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "world",
        "data survives a restart: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sigterm(dev), Some(0));
}
