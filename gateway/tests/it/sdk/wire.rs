//! HTTP on the wire, below any client library: what a connection carries after an
//! error answered before the request's body was read.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;

/// Reads one response (its head, then as many body bytes as its length says) and
/// returns the head, lowercased.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            while got.len() < end + 4 + length {
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "the body ends early: {head}");
                got.extend_from_slice(&buf[..n]);
            }
            return head;
        }
        let n = stream.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "closed before an answer: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_error_answered_before_the_body_is_read_closes_the_connection() {
    let h = Harness::start(1).await;
    let addr = h.gateways[0].addr();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // Unsigned, so refused at once; the client waits for `100 Continue` before its body.
    stream
        .write_all(
            b"PUT /wire/key?partNumber=4&uploadId=nope HTTP/1.1\r\nHost: 127.0.0.1\r\n\
              Content-Length: 4\r\nExpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    let head = read_response(&mut stream).await;
    assert!(head.starts_with("http/1.1 403"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    // A client that sends its body anyway, then its next request: nothing of it may be
    // read as a request (it would begin with the body's bytes).
    let _ = stream
        .write_all(b"lateGET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await;
    let mut rest = Vec::new();
    match tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await {
        Ok(Ok(_)) => assert!(
            rest.is_empty(),
            "answered after the close: {:?}",
            String::from_utf8_lossy(&rest)
        ),
        Ok(Err(_)) => {} // reset: closed just the same
        Err(_) => panic!("the gateway kept the connection open"),
    }

    // An answer to a request without a body keeps the connection.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    for _ in 0..2 {
        stream
            .write_all(b"GET /wire/key HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        let head = read_response(&mut stream).await;
        assert!(head.starts_with("http/1.1 403"), "{head}");
        assert!(!head.contains("connection: close"), "{head}");
    }
}
