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
