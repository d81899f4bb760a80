//! Bad input gets a clear error and leaves stored data as it was.

use bytes::Bytes;
use shale_rpc::client::{ClientError, FIRST_RANGE_ID};
use shale_rpc::limits::{KEY_BYTES_MAX, VALUE_BYTES_MAX};
use shale_rpc::transport::{Transport, TransportConfig};
use shale_rpc::{Frame, FrameKind, KvError, KvOp, KvRequest, KvResponse};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_and_empty_keys_and_values_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = must_cluster(dir.path(), 3).await;
    let client = cluster.client().unwrap();
    client.put("k", "original").await.unwrap();

    let err = client
        .put(Bytes::from(vec![b'k'; KEY_BYTES_MAX + 1]), "v")
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Kv(KvError::KeyTooLarge { .. })),
        "{err}"
    );
    let err = client.put("", "v").await.unwrap_err();
    assert!(matches!(err, ClientError::Kv(KvError::EmptyKey)), "{err}");
    let err = client
        .put("k", Bytes::from(vec![0; VALUE_BYTES_MAX + 1]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::Kv(KvError::ValueTooLarge { .. })),
        "{err}"
    );
    assert!(
        err.to_string().contains("over the limit"),
        "the error says why: {err}"
    );

    // The store checks too, whatever the client does: send raw requests past the client.
    let leader = cluster.leader().await.unwrap();
    let addr = cluster.node(leader).unwrap().addr();
    let transport = Transport::client(&cluster.identity, TransportConfig::default()).unwrap();
    for op in [
        KvOp::Put {
            key: Bytes::new(),
            value: Bytes::from_static(b"v"),
        },
        KvOp::Put {
            key: Bytes::from_static(b"k"),
            value: Bytes::from(vec![1; VALUE_BYTES_MAX + 1]),
        },
        KvOp::Delete {
            key: Bytes::from(vec![b'k'; KEY_BYTES_MAX + 1]),
        },
    ] {
        let req = KvRequest {
            range_id: FIRST_RANGE_ID,
            epoch: None,
            op,
        };
        let reply = transport
            .call(addr, &Frame::encode(FrameKind::KvRequest, &req).unwrap())
            .await
            .unwrap();
        let resp: KvResponse = reply.decode(FrameKind::KvResponse).unwrap();
        assert!(
            matches!(
                resp,
                Err(KvError::EmptyKey
                    | KvError::ValueTooLarge { .. }
                    | KvError::KeyTooLarge { .. })
            ),
            "{resp:?}"
        );
    }
    // A garbage body is answered with a clear error, not a crash.
    let garbage = Frame {
        kind: FrameKind::KvRequest,
        body: Bytes::from_static(&[0xff; 16]),
    };
    let resp: KvResponse = transport
        .call(addr, &garbage)
        .await
        .unwrap()
        .decode(FrameKind::KvResponse)
        .unwrap();
    assert!(matches!(resp, Err(KvError::Malformed { .. })), "{resp:?}");
    // A request for a range the store does not have.
    let req = KvRequest {
        range_id: 999,
        epoch: None,
        op: KvOp::Get {
            key: Bytes::from_static(b"k"),
        },
    };
    let resp: KvResponse = transport
        .call(addr, &Frame::encode(FrameKind::KvRequest, &req).unwrap())
        .await
        .unwrap()
        .decode(FrameKind::KvResponse)
        .unwrap();
    assert_eq!(resp, Err(KvError::RangeNotFound { range_id: 999 }));

    assert_eq!(
        client.get("k").await.unwrap(),
        Some(Bytes::from_static(b"original"))
    );
    assert_eq!(
        client
            .scan_all(Bytes::new(), Bytes::new(), 100)
            .await
            .unwrap()
            .len(),
        1,
        "nothing else was written"
    );
    cluster.shutdown().await;
}

/// Snapshot streams that do not hold a well-formed snapshot of a range (not a Raft
/// message, a message of another kind, a header that does not decode, chunks out of
/// order, fewer pairs than the header says, keys out of order) are refused where they
/// arrive: the store's replica keeps its data and state and the range keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_snapshot_streams_are_refused_and_change_nothing() {
    use protobuf::Message as _;
    use raft::eraftpb::{Message, MessageType};
    use shale_storage::snapshot::{
        SnapshotAck, SnapshotChunk, SnapshotHeader, SNAPSHOTS_RECEIVING_MAX,
    };

    let dir = tempfile::tempdir().unwrap();
    let cluster = must_cluster(dir.path(), 3).await;
    let client = cluster.client().unwrap();
    for i in 0..50 {
        must_put(&client, i).await;
    }
    let leader = cluster.leader().await.unwrap();
    let victim = (leader + 1) % 3;
    must_converge(&cluster, victim, &(0..50).collect::<Vec<_>>()).await;
    let status = |i: usize| {
        let node = cluster.node(i).unwrap();
        async move {
            node.status()
                .await
                .into_iter()
                .find(|s| s.range.id == FIRST_RANGE_ID)
                .unwrap()
        }
    };
    let before = status(victim).await;

    let raft_message = |kind: MessageType, data: &[u8]| {
        let mut m = Message::default();
        m.set_msg_type(kind);
        m.to = before.replica_id;
        m.from = 1;
        m.term = before.term + 100;
        m.mut_snapshot().data = Bytes::copy_from_slice(data);
        m.mut_snapshot().mut_metadata().index = before.applied_index + 1_000;
        m.mut_snapshot().mut_metadata().term = before.term + 100;
        Bytes::from(m.write_to_bytes().unwrap())
    };
    let from_store = cluster.configs[leader].store_id;
    let chunk = |from_store, transfer_id: u64, seq: u32, last: bool, data: Bytes| SnapshotChunk {
        from_store,
        to_store: cluster.configs[victim].store_id,
        range_id: FIRST_RANGE_ID,
        transfer_id,
        seq,
        last,
        data,
    };
    let whole =
        |transfer_id: u64, message: Bytes| vec![chunk(from_store, transfer_id, 0, true, message)];
    let garbage = Bytes::from_static(b"\xff\xfe not a raft message at all");
    // A header claiming two pairs of the range.
    let header = raft_message(
        MessageType::MsgSnapshot,
        &postcard::to_allocvec(&SnapshotHeader {
            range: before.range.clone(),
            pairs: 2,
            bytes: 2 * (key(3).len() + value(1).len()) as u64,
            frozen: None,
        })
        .unwrap(),
    );
    let batch = |keys: &[usize]| {
        let pairs: Vec<(Bytes, Bytes)> = keys.iter().map(|i| (key(*i), value(1))).collect();
        Bytes::from(postcard::to_allocvec(&pairs).unwrap())
    };
    let streams = vec![
        whole(1, garbage.clone()),
        whole(2, raft_message(MessageType::MsgAppend, b"")),
        whole(
            3,
            raft_message(MessageType::MsgSnapshot, b"\x07 not a header"),
        ),
        // The second chunk first; then a first chunk, whose transfer stays open.
        vec![
            chunk(from_store, 4, 1, true, batch(&[3, 7])),
            chunk(from_store, 4, 0, false, header.clone()),
        ],
        // One pair where the header said two.
        vec![
            chunk(from_store, 5, 0, false, header.clone()),
            chunk(from_store, 5, 1, true, batch(&[3])),
        ],
        // Keys out of order: no SST file can hold them.
        vec![
            chunk(from_store, 6, 0, false, header.clone()),
            chunk(from_store, 6, 1, true, batch(&[7, 3])),
        ],
    ];
    let transport = Transport::client(&cluster.identity, TransportConfig::default()).unwrap();
    let addr = cluster.node(victim).unwrap().addr();
    for (i, chunks) in streams.into_iter().enumerate() {
        let mut acks = Vec::new();
        for c in &chunks {
            let frame = Frame::encode(FrameKind::SnapshotChunk, c).unwrap();
            let reply = transport.call(addr, &frame).await.unwrap();
            acks.push(reply.decode::<SnapshotAck>(FrameKind::SnapshotAck).unwrap());
        }
        // Every transfer is refused, and the sender is told so at once.
        assert!(
            acks.iter()
                .any(|a| matches!(a, SnapshotAck::Refused { .. })),
            "transfer {i}: {acks:?}"
        );
        assert!(
            !acks.contains(&SnapshotAck::Taken),
            "transfer {i}: {acks:?}"
        );
    }
    // Transfers left open take the receiver's slots; past its bound a new one is told to
    // come back later. They come from as many stores: a store that starts a range's
    // transfer again has given up its older one, which frees that slot.
    let open = |store: u64| {
        let c = chunk(store, store, 0, false, header.clone());
        let (transport, frame) = (
            &transport,
            Frame::encode(FrameKind::SnapshotChunk, &c).unwrap(),
        );
        async move {
            let reply = transport.call(addr, &frame).await.unwrap();
            reply.decode::<SnapshotAck>(FrameKind::SnapshotAck).unwrap()
        }
    };
    let mut answers = Vec::new();
    for store in 100..=100 + SNAPSHOTS_RECEIVING_MAX as u64 {
        answers.push(open(store).await);
    }
    let busy = answers.iter().position(|a| *a == SnapshotAck::Busy);
    assert_eq!(busy, Some(SNAPSHOTS_RECEIVING_MAX), "{answers:?}");
    assert_eq!(
        open(100).await,
        SnapshotAck::Next,
        "a restarted transfer is not busy"
    );

    let after = status(victim).await;
    let snapshot_dir = cluster
        .node(victim)
        .unwrap()
        .engine()
        .snapshot_dir()
        .to_owned();
    let left = std::fs::read_dir(snapshot_dir).unwrap().count();
    assert_eq!(left, 0, "no snapshot file is left behind");
    assert_eq!(after.replica_id, before.replica_id);
    assert_eq!(after.range, before.range, "descriptor unchanged");
    assert!(
        after.applied_index >= before.applied_index
            && after.applied_index < before.applied_index + 1_000,
        "no snapshot taken: {before:?} -> {after:?}"
    );
    for i in 50..60 {
        must_put(&client, i).await;
    }
    must_converge(&cluster, victim, &(0..60).collect::<Vec<_>>()).await;
    cluster.shutdown().await;
}
