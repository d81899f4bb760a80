//! Key layout of the Raft and Meta column families. Range ids are big-endian so one
//! range's log is contiguous and ordered by index.

use shale_rpc::RangeId;

const LOG_SUFFIX: u8 = 0x01;
const HARD_STATE_SUFFIX: u8 = 0x02;
const CONF_STATE_SUFFIX: u8 = 0x03;
const TRUNCATED_STATE_SUFFIX: u8 = 0x04;
const INGESTED_SUFFIX: u8 = 0x05;
const SNAPSHOT_INGEST_SUFFIX: u8 = 0x06;

const RANGE_STATE_PREFIX: u8 = 0x01;
const APPLY_STATE_PREFIX: u8 = 0x02;
const APPLIED_CONF_STATE_PREFIX: u8 = 0x03;
/// Meta key of the store's identity record.
pub const STORE_IDENT_KEY: &[u8] = &[0x00, b's', b't', b'o', b'r', b'e'];
/// The cluster this store joined (8 bytes, big endian), once placement told it.
pub const CLUSTER_ID_KEY: &[u8] = b"\x00cluster-id";

/// Raft CF: one log entry.
pub fn log_key(range_id: RangeId, index: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[..8].copy_from_slice(&range_id.to_be_bytes());
    k[8] = LOG_SUFFIX;
    k[9..].copy_from_slice(&index.to_be_bytes());
    k
}

/// The log index a log key names, if it is one of `range_id`'s log keys.
pub fn log_index(range_id: RangeId, key: &[u8]) -> Option<u64> {
    if key.len() != 17 || key[..8] != range_id.to_be_bytes() || key[8] != LOG_SUFFIX {
        return None;
    }
    Some(u64::from_be_bytes(key[9..].try_into().ok()?))
}

/// Raft CF: written (synced, holding the log index) just before the staged file `id`
/// with checksum `crc32` is ingested, so that a replay of that entry after a crash
/// knows a missing file was ingested already. Dropped once the log is truncated past
/// the index it holds.
pub fn ingested_key(range_id: RangeId, id: u128, crc32: u32) -> [u8; 29] {
    let mut k = [0u8; 29];
    k[..8].copy_from_slice(&range_id.to_be_bytes());
    k[8] = INGESTED_SUFFIX;
    k[9..25].copy_from_slice(&id.to_be_bytes());
    k[25..].copy_from_slice(&crc32.to_be_bytes());
    k
}

/// Raft CF: written (synced) with the state of a snapshot whose data goes in as an SST
/// file; holds the file's name under the engine's snapshot folder and is deleted once
/// RocksDB took the file. Found at start, it means the ingest may not have happened.
pub fn snapshot_ingest_key(range_id: RangeId) -> [u8; 9] {
    range_key(range_id, SNAPSHOT_INGEST_SUFFIX)
}

/// Raft CF: bounds of every ingest marker of one range.
pub fn ingested_bounds(range_id: RangeId) -> ([u8; 9], [u8; 9]) {
    (
        range_key(range_id, INGESTED_SUFFIX),
        range_key(range_id, INGESTED_SUFFIX + 1),
    )
}

fn range_key(range_id: RangeId, suffix: u8) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[..8].copy_from_slice(&range_id.to_be_bytes());
    k[8] = suffix;
    k
}

/// Raft CF: the range's Raft hard state.
pub fn hard_state_key(range_id: RangeId) -> [u8; 9] {
    range_key(range_id, HARD_STATE_SUFFIX)
}

/// Raft CF: the range's Raft conf state, where stores before the applied conf state
/// key (below) kept it. Only read, for such stores' data.
pub fn conf_state_key(range_id: RangeId) -> [u8; 9] {
    range_key(range_id, CONF_STATE_SUFFIX)
}

/// Raft CF: where the range's log starts.
pub fn truncated_state_key(range_id: RangeId) -> [u8; 9] {
    range_key(range_id, TRUNCATED_STATE_SUFFIX)
}

/// Raft CF: every key of one range (log, hard, conf and truncated state).
pub fn raft_bounds(range_id: RangeId) -> ([u8; 8], [u8; 8]) {
    (range_id.to_be_bytes(), (range_id + 1).to_be_bytes())
}

fn meta_key(prefix: u8, range_id: RangeId) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = prefix;
    k[1..].copy_from_slice(&range_id.to_be_bytes());
    k
}

/// Meta CF: the range's descriptor and replica state.
pub fn range_state_key(range_id: RangeId) -> [u8; 9] {
    meta_key(RANGE_STATE_PREFIX, range_id)
}

/// Meta CF: bounds of all range state keys, for loading every range at start.
pub fn range_state_bounds() -> ([u8; 9], [u8; 9]) {
    (
        meta_key(RANGE_STATE_PREFIX, 0),
        meta_key(RANGE_STATE_PREFIX + 1, 0),
    )
}

/// Meta CF: the range's apply state.
pub fn apply_state_key(range_id: RangeId) -> [u8; 9] {
    meta_key(APPLY_STATE_PREFIX, range_id)
}

/// Meta CF: the range's Raft conf state as of its apply state. Membership changes write
/// it in the batch of their apply, so it is flushed with the descriptor and apply state
/// it goes with: in the Raft CF, a crash after a flush of applied data could leave an
/// older configuration beside a newer descriptor (the Raft CF is not flushed with them).
pub fn applied_conf_state_key(range_id: RangeId) -> [u8; 9] {
    meta_key(APPLIED_CONF_STATE_PREFIX, range_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn log_keys_order_by_range_then_index(a in any::<(u64, u64)>(), b in any::<(u64, u64)>()) {
            prop_assert_eq!(a.cmp(&b), log_key(a.0, a.1).cmp(&log_key(b.0, b.1)));
            prop_assert_eq!(log_index(a.0, &log_key(a.0, a.1)), Some(a.1));
        }
    }

    #[test]
    fn log_index_rejects_foreign_keys() {
        assert_eq!(log_index(1, &log_key(2, 5)), None);
        assert_eq!(log_index(1, &hard_state_key(1)), None);
    }
}
