//! `shale load` into a `shale dev` cluster: a tree with nested folders, an empty file and
//! a 200 MiB file (sent as a 13-part multipart upload) arrives byte for byte; a file that is gone is reported, not skipped;
//! a rerun resumes (uploads only what changed). `--ingest` does the same, its ranges cut
//! ahead of the load.

use std::io::Write;
use std::process::Output;

use crate::ctl::ctl;
use crate::dev::{free_tcp_port, s3, sigterm, start_dev};
use crate::procs::shale;

fn load(dir: &std::path::Path, src: &std::path::Path) -> Output {
    let dev: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("dev.json")).unwrap()).unwrap();
    shale()
        .arg("load")
        .arg(src)
        .arg("s3://loaded/pre")
        .args([
            "--endpoint",
            dev["s3"]["endpoint"].as_str().unwrap(),
            "--concurrency",
            "4",
        ])
        .env(
            "AWS_ACCESS_KEY_ID",
            dev["s3"]["access_key"].as_str().unwrap(),
        )
        .env(
            "AWS_SECRET_ACCESS_KEY",
            dev["s3"]["secret_key"].as_str().unwrap(),
        )
        .env("RUST_LOG", "error")
        .output()
        .expect("run shale load")
}

#[test]
fn load_uploads_a_tree_reports_what_is_gone_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("a/b/c")).unwrap();
    std::fs::write(src.join("a/b/c/deep.txt"), b"deep").unwrap();
    std::fs::write(
        src.join("a/one.bin"),
        (0..3000u32).map(|i| (i * 7) as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    std::fs::write(src.join("empty"), b"").unwrap();
    let mut big = std::fs::File::create(src.join("big.bin")).unwrap();
    for i in 0..200u32 {
        big.write_all(&vec![(i % 251) as u8; 1 << 20]).unwrap();
    }
    drop(big);
    std::os::unix::fs::symlink(src.join("no-such-file"), src.join("gone")).unwrap();

    std::fs::create_dir_all(&data).unwrap();
    let ports = shale_storage::cluster::free_udp_ports(1).unwrap();
    let dev = start_dev(&data, ports[0], free_tcp_port());

    let out = load(&data, &src);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a missing file makes the load fail");
    assert!(
        stderr.contains("failed:") && stderr.contains("gone"),
        "the missing file is named: {stderr}"
    );
    let check = format!(
        r#"
import hashlib, os
src = {src:?}
want = {{}}
for root, _, files in os.walk(src):
    for f in files:
        p = os.path.join(root, f)
        if os.path.exists(p):
            data = open(p, "rb").read()
            if len(data) >= 64 << 20:  # multipart: MD5 of the 16 MiB parts' MD5s, "-N"
                parts = [data[i:i + (16 << 20)] for i in range(0, len(data), 16 << 20)]
                etag = hashlib.md5(b"".join(hashlib.md5(x).digest() for x in parts)).hexdigest()
                want["pre/" + os.path.relpath(p, src)] = "%s-%d" % (etag, len(parts))
            else:
                want["pre/" + os.path.relpath(p, src)] = hashlib.md5(data).hexdigest()
got = {{}}
for page in s3.get_paginator("list_objects_v2").paginate(Bucket="loaded"):
    for o in page.get("Contents", []):
        got[o["Key"]] = o["ETag"].strip('"')
assert got == want, (sorted(got), sorted(want))
print(len(got))
"#,
        src = src.display().to_string()
    );
    assert_eq!(
        s3(&data, &check),
        "4",
        "every present file arrived with its bytes"
    );

    std::fs::remove_file(src.join("gone")).unwrap();
    let out = load(&data, &src);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("loaded 0 objects") && stdout.contains("4 already present"),
        "a rerun resumes: {stdout}"
    );

    std::fs::write(src.join("a/one.bin"), b"changed").unwrap();
    let out = load(&data, &src);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("loaded 1 objects") && stdout.contains("3 already present"),
        "only the changed file: {stdout}"
    );
    assert_eq!(s3(&data, &check), "4");
    assert_eq!(sigterm(dev), Some(0));
}

fn load_ingest(dir: &std::path::Path, src: &std::path::Path) -> Output {
    shale()
        .arg("load")
        .arg(src)
        .arg("s3://ingested/pre")
        .arg("--ingest")
        .arg("--cluster")
        .arg(dir.join("dev.json"))
        // Small, so that this load's ranges are cut ahead of it.
        .args(["--ingest-range-bytes", "512KiB"])
        .env("RUST_LOG", "error")
        .output()
        .expect("run shale load --ingest")
}

#[test]
fn load_ingest_lays_objects_out_as_the_gateway_reads_them_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("x/y")).unwrap();
    std::fs::write(src.join("x/y/small.txt"), b"small").unwrap();
    std::fs::write(src.join("empty"), b"").unwrap();
    let chunked: Vec<u8> = (0..(3 << 20) + 11u32)
        .map(|i| (i * 13 % 251) as u8)
        .collect();
    std::fs::write(src.join("x/chunked.bin"), &chunked).unwrap();
    std::fs::create_dir_all(src.join("many")).unwrap();
    for i in 0..8u32 {
        let body: Vec<u8> = (0..300 << 10).map(|j: u32| (j * 7 + i) as u8).collect();
        std::fs::write(src.join(format!("many/f{i}")), body).unwrap();
    }
    // Past the batch size: sent on its own, a window at a time.
    let mut big = std::fs::File::create(src.join("big.bin")).unwrap();
    for i in 0..70u32 {
        big.write_all(&vec![(i % 241) as u8; 1 << 20]).unwrap();
    }
    drop(big);
    std::os::unix::fs::symlink(src.join("no-such-file"), src.join("gone")).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    let ports = shale_storage::cluster::free_udp_ports(1).unwrap();
    let dev = start_dev(&data, ports[0], free_tcp_port());
    let cluster = data.join("dev.json");
    let ranges_before = ctl(&cluster, &["ranges"]).as_array().unwrap().len();

    let out = load_ingest(&data, &src);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a missing file makes the load fail");
    assert!(
        stderr.contains("failed:") && stderr.contains("gone"),
        "the missing file is named: {stderr}"
    );
    // Read back through the S3 endpoint: bytes, sizes and MD5 ETags.
    let check = format!(
        r#"
import hashlib, os
src = {src:?}
want = {{}}
for root, _, files in os.walk(src):
    for f in files:
        p = os.path.join(root, f)
        if os.path.exists(p):
            want["pre/" + os.path.relpath(p, src)] = open(p, "rb").read()
listed = {{}}
for page in s3.get_paginator("list_objects_v2").paginate(Bucket="ingested"):
    for o in page.get("Contents", []):
        listed[o["Key"]] = (o["Size"], o["ETag"].strip('"'))
assert sorted(listed) == sorted(want), (sorted(listed), sorted(want))
for key, body in want.items():
    assert listed[key] == (len(body), hashlib.md5(body).hexdigest()), key
    got = s3.get_object(Bucket="ingested", Key=key)["Body"].read()
    assert got == body, key
print(len(want))
"#,
        src = src.display().to_string()
    );
    assert_eq!(s3(&data, &check), "12", "every present file arrived");
    // About 5.5 MiB in 512 KiB shares: cut ahead of the load into several ranges (the
    // cluster's own split bound, 96 MiB, would not have split it at all).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let ranges = ctl(&cluster, &["ranges"]).as_array().unwrap().len();
        if ranges >= ranges_before + 4 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pre-split: {ranges_before} ranges before the load, {ranges} after"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    std::fs::remove_file(src.join("gone")).unwrap();
    let out = load_ingest(&data, &src);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("loaded 0 objects") && stdout.contains("12 already present"),
        "a rerun resumes: {stdout}"
    );
    std::fs::write(src.join("x/y/small.txt"), b"changed").unwrap();
    let out = load_ingest(&data, &src);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("loaded 1 objects") && stdout.contains("11 already present"),
        "only the changed file: {stdout}"
    );
    assert_eq!(s3(&data, &check), "12");
    assert_eq!(sigterm(dev), Some(0));
}
