//! A gateway killed with SIGKILL in the middle of an upload leaves chunks that no object
//! points at. Another gateway's chunk sweep deletes them once they are older than the
//! orphan age, and leaves every stored object and every uploaded part alone.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shale_rpc::client::{ClientConfig, KvClient};

use crate::dev::free_tcp_port;
use crate::procs::*;

/// Chunk keys in the whole cluster.
async fn count_chunks(client: &KvClient) -> usize {
    let mut count = 0;
    for (mut next, end) in shale_gateway::layout::chunk_bounds() {
        loop {
            let page = client.scan_keys(next, end.clone(), 1000).await.unwrap();
            count += page.pairs.len();
            match page.resume_key {
                Some(k) if k < end => next = k,
                _ => break,
            }
        }
    }
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_left_by_a_gateway_killed_mid_upload_are_collected() {
    let dir = tempfile::tempdir().unwrap();
    let (mut procs, identity) = store_procs(dir.path(), 3);
    let (transport, _) = start_all(&mut procs, &identity).await;
    let client = Arc::new(kv_client(transport, &procs, ClientConfig::default()));
    // Chunks older than 6 s that nothing points at go; any gateway sweeps every second.
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        "orphan-chunk-secs = 6\nchunk-gc-interval-secs = 1\n",
    )
    .unwrap();
    let config = config.to_str().unwrap().to_string();
    let (mut gateway, endpoint) =
        start_gateway_with(dir.path(), &procs, free_tcp_port(), &["--config", &config]);

    // What must survive: an object of three chunks and an unfinished upload's part.
    let setup = format!(
        r#"{}
for _ in range(100):
    try:
        s3.create_bucket(Bucket="crash"); break
    except Exception:
        time.sleep(0.2)
s3.put_object(Bucket="crash", Key="keep", Body=body((8 << 20) + 5, 3))
up = s3.create_multipart_upload(Bucket="crash", Key="parts")["UploadId"]
etag = s3.upload_part(Bucket="crash", Key="parts", UploadId=up, PartNumber=1, Body=body(5 << 20, 5))["ETag"]
print(up, etag)
"#,
        boto3_client(&endpoint)
    );
    let printed = run_ok(&mut python(&setup), "storing the objects that must survive");
    let (upload, etag) = printed.trim().split_once(' ').unwrap();
    let live = count_chunks(&client).await;
    let chunks = |len: usize| len.div_ceil(shale_gateway::layout::CHUNK_BYTES);
    assert_eq!(
        live,
        chunks((8 << 20) + 5) + chunks(5 << 20),
        "the surviving object and part's chunks"
    );

    // A 128 MiB PUT, and the gateway killed once some of its chunks are written.
    let put = format!(
        r#"{}
s3.put_object(Bucket="crash", Key="big", Body=b"\x07" * (128 << 20))
"#,
        boto3_client(&endpoint)
    );
    let mut uploader = python(&put)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while count_chunks(&client).await < live + 4 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the big upload wrote no chunks"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gateway.kill().unwrap();
    gateway.wait().unwrap();
    let _ = uploader.wait();
    let orphans = count_chunks(&client).await - live;
    assert!(orphans >= 4, "the killed upload left {orphans} chunks");

    // A new gateway sweeps them once they are old enough.
    let (mut gateway, endpoint) =
        start_gateway_with(dir.path(), &procs, free_tcp_port(), &["--config", &config]);
    let started = Instant::now();
    loop {
        let now = count_chunks(&client).await;
        if now == live {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{} chunks still left of {orphans} orphans",
            now - live
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "{orphans} orphan chunks collected {:.1} s after the new gateway started",
        started.elapsed().as_secs_f64()
    );

    // Everything a client stored is whole: the object, and the upload, which completes.
    let check = format!(
        r#"{}
got = s3.get_object(Bucket="crash", Key="keep")["Body"].read()
assert got == body((8 << 20) + 5, 3), "keep changed"
s3.complete_multipart_upload(Bucket="crash", Key="parts", UploadId="{upload}",
    MultipartUpload={{"Parts": [{{"PartNumber": 1, "ETag": {etag:?}}}]}})
got = s3.get_object(Bucket="crash", Key="parts")["Body"].read()
assert got == body(5 << 20, 5), "the completed upload changed"
try:
    s3.head_object(Bucket="crash", Key="big")
    raise SystemExit("the killed upload became visible")
except s3.exceptions.ClientError as e:
    assert e.response["Error"]["Code"] in ("404", "NoSuchKey"), e.response
print("intact")
"#,
        boto3_client(&endpoint)
    );
    let printed = run_ok(&mut python(&check), "reading back what survived");
    assert_eq!(printed.trim(), "intact");
    assert_eq!(count_chunks(&client).await, live);
    gateway.kill().unwrap();
    gateway.wait().unwrap();
    for p in procs.iter_mut() {
        assert_eq!(p.terminate(), Some(0), "{}", p.log_tail());
    }
}
