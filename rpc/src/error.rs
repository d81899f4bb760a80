//! Errors of the codec and the transport: what went wrong on the wire.

use std::net::SocketAddr;

/// What a frame, a connection or a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("frame body of {len} bytes is over the limit of {max} bytes")]
    FrameTooLarge { len: usize, max: usize },
    #[error("frame of {len} bytes is shorter than a frame header")]
    FrameTooShort { len: usize },
    #[error("frame version {0} is not supported (this node speaks version 1)")]
    UnknownVersion(u8),
    #[error("frame kind {0} is unknown")]
    UnknownKind(u16),
    #[error(
        "frame checksum mismatch: header says {expected:#010x}, body hashes to {actual:#010x}"
    )]
    ChecksumMismatch { expected: u32, actual: u32 },
    #[error("frame is truncated: expected {expected} bytes, stream ended after {got}")]
    Truncated { expected: usize, got: usize },
    #[error("expected a {expected:?} frame, got {got:?}")]
    UnexpectedKind {
        expected: crate::FrameKind,
        got: crate::FrameKind,
    },
    #[error("malformed message body: {0}")]
    Malformed(String),
    #[error("could not encode message: {0}")]
    Encode(String),
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("certificate files: {0}")]
    Certs(String),
    #[error("connect to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("request to {addr} timed out after {timeout_ms} ms")]
    Timeout { addr: SocketAddr, timeout_ms: u64 },
    #[error("{addr} stopped answering: no reply to a liveness probe within {probe_ms} ms")]
    Unresponsive { addr: SocketAddr, probe_ms: u64 },
    #[error("stream to {addr}: {reason}")]
    Stream { addr: SocketAddr, reason: String },
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl RpcError {
    /// Stable code for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            RpcError::FrameTooLarge { .. } => "frame_too_large",
            RpcError::FrameTooShort { .. } => "frame_too_short",
            RpcError::UnknownVersion(_) => "unknown_version",
            RpcError::UnknownKind(_) => "unknown_kind",
            RpcError::ChecksumMismatch { .. } => "checksum_mismatch",
            RpcError::Truncated { .. } => "truncated",
            RpcError::UnexpectedKind { .. } => "unexpected_kind",
            RpcError::Malformed(_) => "malformed",
            RpcError::Encode(_) => "encode",
            RpcError::Tls(_) => "tls",
            RpcError::Certs(_) => "certs",
            RpcError::Connect { .. } => "connect",
            RpcError::Timeout { .. } => "timeout",
            RpcError::Unresponsive { .. } => "unresponsive",
            RpcError::Stream { .. } => "stream",
            RpcError::Io(_) => "io",
        }
    }

    /// True when the peer may simply be down or unreachable: try another node.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            RpcError::Connect { .. }
                | RpcError::Timeout { .. }
                | RpcError::Unresponsive { .. }
                | RpcError::Stream { .. }
        )
    }
}
