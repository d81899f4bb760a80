//! Three `shale store` processes take a staged bulk load (files staged on every store,
//! then ingested through small Raft entries), then all are killed with SIGKILL before
//! a flush and restarted: the ingest entries replay over files RocksDB already took,
//! and every loaded key reads back with its value.

use bytes::Bytes;

use crate::procs::*;

fn key(i: usize) -> Bytes {
    Bytes::from(format!("bulk/{i:06}"))
}

fn value(i: usize) -> Bytes {
    let mut v = format!("v{i}-").into_bytes();
    v.resize(4_096, (i % 251) as u8);
    Bytes::from(v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn staged_ingest_survives_kill_9_of_every_store() {
    let dir = tempfile::tempdir().unwrap();
    let (mut procs, identity) = store_procs(dir.path(), 3);
    let (transport, _) = start_all(&mut procs, &identity).await;
    let config = patient_client_config();
    let client = kv_client(transport.clone(), &procs, config.clone());
    // 8,000 pairs of 4 KiB: two staged pieces of 16 MiB each, and the writes around it.
    let loaded: Vec<(Bytes, Bytes)> = (0..8_000).map(|i| (key(i), value(i))).collect();
    client.put(key(5), "before").await.unwrap();
    client.ingest(&loaded).await.unwrap();
    client.put(key(7), "after").await.unwrap();
    for p in procs.iter_mut() {
        p.kill9();
    }
    let (transport, _) = start_all(&mut procs, &identity).await;
    let client = kv_client(transport, &procs, config);
    let all = client.scan_all(key(0), key(999_999), 1_000).await.unwrap();
    assert_eq!(all.len(), loaded.len(), "every loaded key once");
    for (i, (k, v)) in all.iter().enumerate() {
        assert_eq!(k, &key(i));
        if i == 7 {
            assert_eq!(v, "after", "the write after the ingest wins");
        } else {
            assert_eq!(v, &value(i), "key {i}");
        }
    }
    let replayed = procs
        .iter()
        .filter(|p| {
            p.log_text()
                .contains("staged ingest was applied before a restart")
        })
        .count();
    println!("stores that replayed an ingest whose file RocksDB had taken: {replayed} of 3");
    for p in procs.iter_mut() {
        assert_eq!(p.terminate(), Some(0), "SIGTERM exits cleanly");
    }
}
