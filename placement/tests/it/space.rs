//! A store low on disk space: placement moves its leaders away (so writes go on), then
//! its replicas to a store with room, places nothing new there, and no acknowledged
//! write is lost on the way.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shale_rpc::client::ClientError;
use shale_rpc::KvError;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_low_on_space_is_emptied_onto_one_with_room_without_losing_writes() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = must_cluster(dir.path(), 1, 4, |_| {}, |_, _| {}).await;
    let client = Arc::new(cluster.client().unwrap());
    must_load(&client, 200, 8).await;
    must_eventually("settled", Duration::from_secs(60), || settled(&cluster, 3)).await;
    let low = cluster.store(0).unwrap();
    let low_id = low.store_id;

    // A writer all through: every write it was told landed must be there at the end.
    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (client, stop, refused) = (client.clone(), stop.clone(), refused.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 1000;
            while !stop.load(Ordering::SeqCst) && i < 20_000 {
                match client.put(key(i), value(i)).await {
                    Ok(()) => acked.push(i),
                    Err(ClientError::Kv(KvError::NoSpace { store_id, .. })) => {
                        assert_eq!(store_id, low_id, "only the low store refuses");
                        refused.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => panic!("put {i}: {e}"),
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            acked
        })
    };

    low.space().set_reserve(u64::MAX / 2);
    let started = Instant::now();
    must_eventually(
        "the low store emptied",
        Duration::from_secs(120),
        || async {
            let s = stores(&cluster).await?;
            let me = s.iter().find(|s| s.id == low_id).ok_or("store gone")?;
            if !me.low_space {
                return Err("placement has not heard the store is low".into());
            }
            settled(&cluster, 3).await?;
            let local = low.status().await.len();
            (me.ranges == 0 && me.leaders == 0 && local == 0)
                .then_some(())
                .ok_or(format!(
                    "{} ranges, {} leaders per placement, {local} on the store",
                    me.ranges, me.leaders
                ))
        },
    )
    .await;
    eprintln!(
        "low store emptied in {:.1} s; {} writes refused meanwhile",
        started.elapsed().as_secs_f64(),
        refused.load(Ordering::SeqCst)
    );
    // Nothing led by the low store any more: every write lands.
    for i in 30_000..30_050 {
        client.put(key(i), value(i)).await.unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    let acked = writer.await.unwrap();
    assert!(!acked.is_empty());
    must_read_all(&client, (0..200).chain(acked).chain(30_000..30_050)).await;

    // Room again: placement hears it, and the store may take replicas once more.
    low.space().set_reserve(0);
    must_eventually(
        "the store has room again",
        Duration::from_secs(30),
        || async {
            let s = stores(&cluster).await?;
            let me = s.iter().find(|s| s.id == low_id).ok_or("store gone")?;
            (!me.low_space).then_some(()).ok_or("still low".to_string())
        },
    )
    .await;
    cluster.shutdown().await;
}
