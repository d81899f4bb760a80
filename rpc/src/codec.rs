//! The frame codec. Every message on every stream is one frame:
//!
//! ```text
//! u32 len | u8 version | u16 kind | body (len - 7 bytes) | u32 crc32(version, kind, body)
//! ```
//!
//! All integers are big-endian. `len` counts the bytes after itself. A frame is checked
//! for size before anything is allocated, and for checksum, version and kind before its
//! body is handed out.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::limits::FRAME_BODY_BYTES_MAX;
use crate::RpcError;

/// The only frame version this build speaks.
pub const FRAME_VERSION: u8 = 1;
/// version + kind + crc: the bytes `len` counts besides the body.
const FRAME_OVERHEAD_BYTES: usize = 1 + 2 + 4;

/// What a frame's body holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum FrameKind {
    /// A batch of Raft messages from one store to another (one-way stream).
    RaftBatch = 1,
    /// A KV request to a store.
    KvRequest = 2,
    /// The store's answer to a KV request.
    KvResponse = 3,
    /// An answer to a frame the receiver could not take at all (malformed, wrong kind).
    Rejected = 4,
    /// An admin request to a store (status, leader transfer).
    AdminRequest = 5,
    /// The store's answer to an admin request.
    AdminResponse = 6,
    /// One chunk of a Raft snapshot, a request of its own.
    SnapshotChunk = 7,
    /// A request to the placement driver.
    PlacementRequest = 8,
    /// The placement driver's answer.
    PlacementResponse = 9,
    /// A liveness probe; the transport answers it with itself, without the service.
    Ping = 10,
    /// The receiver's answer to a snapshot chunk: send the next, taken, or refused.
    SnapshotAck = 11,
}

impl FrameKind {
    pub fn from_u16(kind: u16) -> Result<Self, RpcError> {
        Ok(match kind {
            1 => FrameKind::RaftBatch,
            2 => FrameKind::KvRequest,
            3 => FrameKind::KvResponse,
            4 => FrameKind::Rejected,
            5 => FrameKind::AdminRequest,
            6 => FrameKind::AdminResponse,
            7 => FrameKind::SnapshotChunk,
            8 => FrameKind::PlacementRequest,
            9 => FrameKind::PlacementResponse,
            10 => FrameKind::Ping,
            11 => FrameKind::SnapshotAck,
            other => return Err(RpcError::UnknownKind(other)),
        })
    }
}

/// One decoded frame: a kind and its (checksum-verified) body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub body: Bytes,
}

impl Frame {
    /// Serializes `message` as the body of a frame of `kind`.
    pub fn encode<T: Serialize>(kind: FrameKind, message: &T) -> Result<Frame, RpcError> {
        let body = to_vec_sized(message).map_err(|e| RpcError::Encode(e.to_string()))?;
        if body.len() > FRAME_BODY_BYTES_MAX {
            return Err(RpcError::FrameTooLarge {
                len: body.len(),
                max: FRAME_BODY_BYTES_MAX,
            });
        }
        Ok(Frame {
            kind,
            body: Bytes::from(body),
        })
    }

    /// Deserializes the body, insisting on the expected kind.
    pub fn decode<T: DeserializeOwned>(&self, expected: FrameKind) -> Result<T, RpcError> {
        if self.kind != expected {
            return Err(RpcError::UnexpectedKind {
                expected,
                got: self.kind,
            });
        }
        crate::shared::decoding_from(&self.body, || postcard::from_bytes(&self.body))
            .map_err(|e| RpcError::Malformed(e.to_string()))
    }

    /// The frame as bytes on the wire.
    pub fn to_wire(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(4 + FRAME_OVERHEAD_BYTES + self.body.len());
        let len = (FRAME_OVERHEAD_BYTES + self.body.len()) as u32;
        buf.put_u32(len);
        let checked_from = buf.len();
        buf.put_u8(FRAME_VERSION);
        buf.put_u16(self.kind as u16);
        buf.put_slice(&self.body);
        let crc = crc32fast::hash(&buf[checked_from..]);
        buf.put_u32(crc);
        buf.freeze()
    }

    /// Decodes exactly one frame that fills `wire`.
    pub fn from_wire(wire: &[u8]) -> Result<Frame, RpcError> {
        let Some(len_bytes) = wire.get(..4) else {
            return Err(RpcError::Truncated {
                expected: 4,
                got: wire.len(),
            });
        };
        let len = frame_len(len_bytes.try_into().expect("slice of four"))?;
        let rest = &wire[4..];
        if rest.len() < len {
            return Err(RpcError::Truncated {
                expected: len,
                got: rest.len(),
            });
        }
        if rest.len() > len {
            return Err(RpcError::Malformed(format!(
                "{} bytes after the end of the frame",
                rest.len() - len
            )));
        }
        check_frame(Bytes::copy_from_slice(rest))
    }
}

/// postcard's encoding of `value`, sized first: a message carrying a 1 MiB chunk is
/// written once into a buffer of its size instead of copied through every doubling of a
/// growing one.
pub fn to_vec_sized<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    let len = postcard::experimental::serialized_size(value)?;
    postcard::to_extend(value, Vec::with_capacity(len))
}

/// Validates a length prefix; returns the number of bytes that follow it.
fn frame_len(prefix: [u8; 4]) -> Result<usize, RpcError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len < FRAME_OVERHEAD_BYTES {
        return Err(RpcError::FrameTooShort { len });
    }
    let body_len = len - FRAME_OVERHEAD_BYTES;
    if body_len > FRAME_BODY_BYTES_MAX {
        return Err(RpcError::FrameTooLarge {
            len: body_len,
            max: FRAME_BODY_BYTES_MAX,
        });
    }
    Ok(len)
}

/// Checks checksum, version and kind of the bytes after the length prefix.
fn check_frame(mut rest: Bytes) -> Result<Frame, RpcError> {
    let crc_at = rest.len() - 4;
    let expected = u32::from_be_bytes(rest[crc_at..].try_into().expect("four bytes"));
    let actual = crc32fast::hash(&rest[..crc_at]);
    if expected != actual {
        return Err(RpcError::ChecksumMismatch { expected, actual });
    }
    if rest[0] != FRAME_VERSION {
        return Err(RpcError::UnknownVersion(rest[0]));
    }
    let kind = FrameKind::from_u16(u16::from_be_bytes([rest[1], rest[2]]))?;
    rest.truncate(crc_at);
    let body = rest.split_off(3);
    Ok(Frame { kind, body })
}

/// Reads one frame. `Ok(None)` when the stream ends cleanly before a new frame.
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Option<Frame>, RpcError> {
    let mut prefix = [0u8; 4];
    let mut got = 0;
    while got < prefix.len() {
        let n = reader.read(&mut prefix[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(RpcError::Truncated { expected: 4, got });
        }
        got += n;
    }
    let len = frame_len(prefix)?;
    // Read into spare capacity: no zeroing of a buffer about to be overwritten.
    let mut rest = BytesMut::with_capacity(len);
    while rest.len() < len {
        let want = len - rest.len();
        let mut room = (&mut rest).limit(want);
        if reader.read_buf(&mut room).await? == 0 {
            return Err(RpcError::Truncated {
                expected: len,
                got: rest.len(),
            });
        }
    }
    check_frame(rest.freeze()).map(Some)
}

/// Bodies up to this size go out in one write with their head and checksum; larger
/// ones are written as they are, without first being copied into one buffer.
const FRAME_COPY_BYTES_MAX: usize = 64 << 10;

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frame: &Frame,
) -> Result<(), RpcError> {
    for piece in frame.wire_pieces() {
        writer.write_all(&piece).await?;
    }
    Ok(())
}

impl Frame {
    /// The frame on the wire as pieces to write in order: one buffer for a small body;
    /// for a large one its head (length, version, kind), the body itself (shared, not
    /// copied) and the crc32 of all but the length.
    pub fn wire_pieces(&self) -> Vec<Bytes> {
        if self.body.len() <= FRAME_COPY_BYTES_MAX {
            return vec![self.to_wire()];
        }
        let mut head = [0u8; 7];
        head[..4].copy_from_slice(&((FRAME_OVERHEAD_BYTES + self.body.len()) as u32).to_be_bytes());
        head[4] = FRAME_VERSION;
        head[5..].copy_from_slice(&(self.kind as u16).to_be_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head[4..]);
        crc.update(&self.body);
        vec![
            Bytes::copy_from_slice(&head),
            self.body.clone(),
            Bytes::copy_from_slice(&crc.finalize().to_be_bytes()),
        ]
    }
}

/// A frame sent to several peers (a chunk staged on every replica): its wire pieces, and
/// so its checksum, a pass over the whole body, are made on the first send over the wire
/// and shared by the others.
#[derive(Debug)]
pub struct SharedFrame {
    frame: Frame,
    pieces: std::sync::OnceLock<Vec<Bytes>>,
}

impl SharedFrame {
    pub fn new(frame: Frame) -> SharedFrame {
        SharedFrame {
            frame,
            pieces: std::sync::OnceLock::new(),
        }
    }

    pub fn frame(&self) -> &Frame {
        &self.frame
    }

    /// What [`Frame::wire_pieces`] gives, made once.
    pub fn wire_pieces(&self) -> Vec<Bytes> {
        self.pieces.get_or_init(|| self.frame.wire_pieces()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kinds() -> impl Strategy<Value = FrameKind> {
        prop_oneof![
            Just(FrameKind::RaftBatch),
            Just(FrameKind::KvRequest),
            Just(FrameKind::KvResponse),
            Just(FrameKind::Rejected),
            Just(FrameKind::AdminRequest),
            Just(FrameKind::AdminResponse),
            Just(FrameKind::SnapshotChunk),
            Just(FrameKind::PlacementRequest),
            Just(FrameKind::PlacementResponse),
            Just(FrameKind::Ping),
            Just(FrameKind::SnapshotAck),
        ]
    }

    #[test]
    fn a_shared_frame_goes_on_the_wire_as_the_frame_does() {
        for body_len in [0, 10, FRAME_COPY_BYTES_MAX + 1, 3 << 20] {
            let body: Vec<u8> = (0..body_len).map(|i| (i % 251) as u8).collect();
            let frame = Frame {
                kind: FrameKind::KvRequest,
                body: Bytes::from(body),
            };
            let shared = SharedFrame::new(frame.clone());
            let joined = |pieces: Vec<Bytes>| pieces.concat();
            assert_eq!(joined(shared.wire_pieces()), joined(frame.wire_pieces()));
            // Every later send gets the same pieces, body shared and not copied.
            let (first, again) = (shared.wire_pieces(), shared.wire_pieces());
            assert_eq!(first, again);
            if body_len > FRAME_COPY_BYTES_MAX {
                assert_eq!(first[1].as_ptr(), again[1].as_ptr());
                assert_eq!(first[1].as_ptr(), frame.body.as_ptr());
            }
            assert_eq!(Frame::from_wire(&joined(again)).unwrap(), frame);
        }
    }

    proptest! {
        #[test]
        fn wire_round_trip(kind in kinds(), body in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let frame = Frame { kind, body: Bytes::from(body) };
            prop_assert_eq!(Frame::from_wire(&frame.to_wire()).unwrap(), frame);
        }

        #[test]
        fn any_bit_flip_is_rejected(body in proptest::collection::vec(any::<u8>(), 0..512), bit in any::<usize>()) {
            let frame = Frame { kind: FrameKind::KvRequest, body: Bytes::from(body) };
            let mut wire = frame.to_wire().to_vec();
            let bit = bit % (wire.len() * 8);
            wire[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(Frame::from_wire(&wire).is_err());
        }

        #[test]
        fn every_truncation_is_rejected(body in proptest::collection::vec(any::<u8>(), 0..512), cut in any::<usize>()) {
            let wire = Frame { kind: FrameKind::KvResponse, body: Bytes::from(body) }.to_wire();
            let cut = cut % wire.len();
            let err = Frame::from_wire(&wire[..cut]).unwrap_err();
            prop_assert!(matches!(err, RpcError::Truncated { .. }), "{err:?}");
        }

        #[test]
        fn write_frame_writes_what_to_wire_gives(kind in kinds(), body in proptest::collection::vec(any::<u8>(), 0..512), big in any::<bool>()) {
            // Large bodies take the path that writes them without a copy.
            let pad = if big { FRAME_COPY_BYTES_MAX } else { 0 };
            let body: Vec<u8> = body.into_iter().chain(std::iter::repeat_n(7, pad)).collect();
            let frame = Frame { kind, body: Bytes::from(body) };
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let mut written = Vec::new();
            rt.block_on(write_frame(&mut written, &frame)).unwrap();
            prop_assert_eq!(&written[..], &frame.to_wire()[..]);
        }

        #[test]
        fn arbitrary_bytes_never_panic(wire in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Frame::from_wire(&wire);
        }

        #[test]
        fn stream_round_trip(bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8)) {
            let frames: Vec<Frame> = bodies.into_iter().map(|b| Frame { kind: FrameKind::RaftBatch, body: Bytes::from(b) }).collect();
            let mut wire = Vec::new();
            for f in &frames { wire.extend_from_slice(&f.to_wire()); }
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let read = rt.block_on(async {
                let mut r = &wire[..];
                let mut out = Vec::new();
                while let Some(f) = read_frame(&mut r).await.unwrap() { out.push(f); }
                out
            });
            prop_assert_eq!(read, frames);
        }
    }

    fn wire_with(version: u8, kind: u16, body: &[u8]) -> Vec<u8> {
        let mut inner = vec![version];
        inner.extend_from_slice(&kind.to_be_bytes());
        inner.extend_from_slice(body);
        let crc = crc32fast::hash(&inner);
        let mut wire = ((inner.len() + 4) as u32).to_be_bytes().to_vec();
        wire.extend_from_slice(&inner);
        wire.extend_from_slice(&crc.to_be_bytes());
        wire
    }

    #[test]
    fn unknown_version_is_rejected() {
        let err = Frame::from_wire(&wire_with(2, 2, b"x")).unwrap_err();
        assert!(matches!(err, RpcError::UnknownVersion(2)), "{err:?}");
    }

    #[test]
    fn unknown_kind_is_rejected() {
        let err = Frame::from_wire(&wire_with(1, 999, b"x")).unwrap_err();
        assert!(matches!(err, RpcError::UnknownKind(999)), "{err:?}");
    }

    #[test]
    fn oversized_length_is_rejected_before_allocating() {
        let mut wire = (u32::MAX).to_be_bytes().to_vec();
        wire.extend_from_slice(&[1, 0, 2]);
        let err = Frame::from_wire(&wire).unwrap_err();
        assert!(matches!(err, RpcError::FrameTooLarge { .. }), "{err:?}");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let err = rt.block_on(read_frame(&mut &wire[..])).unwrap_err();
        assert!(matches!(err, RpcError::FrameTooLarge { .. }), "{err:?}");
    }

    #[test]
    fn undersized_length_is_rejected() {
        let err = Frame::from_wire(&3u32.to_be_bytes()).unwrap_err();
        assert!(matches!(err, RpcError::FrameTooShort { len: 3 }), "{err:?}");
    }

    #[test]
    fn truncated_stream_is_an_error_not_a_clean_end() {
        let wire = Frame {
            kind: FrameKind::KvRequest,
            body: Bytes::from_static(b"hello"),
        }
        .to_wire();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let err = rt
            .block_on(read_frame(&mut &wire[..wire.len() - 1]))
            .unwrap_err();
        assert!(matches!(err, RpcError::Truncated { .. }), "{err:?}");
    }

    #[test]
    fn body_of_wrong_kind_is_refused() {
        let frame = Frame::encode(FrameKind::KvRequest, &7u32).unwrap();
        assert!(matches!(
            frame.decode::<u32>(FrameKind::KvResponse),
            Err(RpcError::UnexpectedKind { .. })
        ));
        assert_eq!(frame.decode::<u32>(FrameKind::KvRequest).unwrap(), 7);
    }
}
