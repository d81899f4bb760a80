//! Hard size limits shared by every node and client. A value past one of these is
//! refused with an error naming the limit; nothing allocates what a peer claims.

/// Largest frame body accepted off the wire (Raft batches and KV batches fit in it).
pub const FRAME_BODY_BYTES_MAX: usize = 32 << 20;
/// Longest user key. S3 keys are at most 1 KiB; the rest is room for bucket and encoding.
pub const KEY_BYTES_MAX: usize = 8 << 10;
/// Largest single value (one object chunk plus its metadata fits comfortably).
pub const VALUE_BYTES_MAX: usize = 8 << 20;
/// Most operations in one atomic batch.
pub const BATCH_OPS_MAX: usize = 1024;
/// Most pairs one bulk-load ingest carries.
pub const INGEST_PAIRS_MAX: usize = 100_000;
/// Largest sum of key and value bytes in one batch or one write.
pub const WRITE_BYTES_MAX: usize = 24 << 20;
/// Most pairs one scan page returns, whatever the caller asks for.
pub const SCAN_LIMIT_MAX: u32 = 10_000;
/// A scan page stops once it holds this many bytes, even below its pair limit.
pub const SCAN_PAGE_BYTES_MAX: usize = 16 << 20;
