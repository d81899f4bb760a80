//! Where other stores can be reached. The book starts from the configuration's initial
//! peers and grows with membership changes (their entries carry their stores'
//! addresses), admin adds, placement's store list (taken every 30 heartbeats; it
//! replaces what the book knows) and traffic. All but traffic's is also kept in the
//! meta column family and read back at start: a restarted store must still reach a
//! store it learned of since it first started. A learner on a store added later sends
//! nothing until its leader calls it (learners never campaign), so a leader that forgot
//! its address after a restart never called it and never promoted it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use shale_rpc::StoreId;

use crate::engine::{Cf, Durability, Engine, WriteBatch};
use crate::StorageError;

/// Where stores can be reached, for leader hints and message routing.
pub type AddressBook = Arc<RwLock<HashMap<StoreId, String>>>;

/// Meta keys of remembered addresses: this prefix, then the store id (big-endian).
const ADDR_PREFIX: &[u8] = b"\x00addr/";

fn addr_key(store_id: StoreId) -> Vec<u8> {
    [ADDR_PREFIX, &store_id.to_be_bytes()].concat()
}

/// The addresses remembered on disk. Keys or values that do not decode are skipped:
/// an address is a hint, and traffic or the next membership change teaches it again.
pub fn load(engine: &Engine) -> Result<Vec<(StoreId, String)>, StorageError> {
    let mut end = ADDR_PREFIX.to_vec();
    *end.last_mut().expect("prefix is not empty") += 1;
    let mut found = Vec::new();
    engine.scan(Cf::Meta, ADDR_PREFIX, &end, |k, v| {
        let id = k[ADDR_PREFIX.len()..].try_into().map(u64::from_be_bytes);
        if let (Ok(id), Ok(addr)) = (id, std::str::from_utf8(v)) {
            found.push((id, addr.to_string()));
        }
        true
    })?;
    Ok(found)
}

/// Adds `addresses` to the book, each unless it knows the store already (or replacing
/// what it knows, if `replace`), and puts the ones it took into `batch` for disk.
pub fn remember(
    book: &AddressBook,
    addresses: impl IntoIterator<Item = (StoreId, String)>,
    replace: bool,
    batch: &mut WriteBatch<'_>,
) {
    let mut book = book.write().expect("address book lock");
    for (store_id, addr) in addresses {
        let known = book.get(&store_id);
        if known == Some(&addr) || (known.is_some() && !replace) {
            continue;
        }
        batch.put(Cf::Meta, &addr_key(store_id), addr.as_bytes());
        book.insert(store_id, addr);
    }
}

/// [`remember`], written at once (through the WAL, not synced: a crash that loses it
/// loses a hint).
pub fn remember_now(
    book: &AddressBook,
    engine: &Engine,
    addresses: impl IntoIterator<Item = (StoreId, String)>,
    replace: bool,
) -> Result<(), StorageError> {
    let mut batch = engine.batch();
    remember(book, addresses, replace, &mut batch);
    if batch.is_empty() {
        return Ok(());
    }
    engine.write(batch, Durability::Wal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineConfig;

    #[test]
    fn remembered_addresses_come_back_and_known_ones_stay_unless_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), &EngineConfig::default()).unwrap();
        let book: AddressBook = Arc::new(RwLock::new(HashMap::from([(1, "a:1".into())])));
        remember_now(&book, &engine, [(4, "d:4".into())], false).unwrap();
        remember_now(&book, &engine, [(4, "x:4".into())], false).unwrap();
        assert_eq!(book.read().unwrap()[&4], "d:4", "known, not replaced");
        remember_now(&book, &engine, [(5, "e:5".into())], false).unwrap();
        remember_now(&book, &engine, [(5, "e:55".into())], true).unwrap();
        let mut loaded = load(&engine).unwrap();
        loaded.sort();
        assert_eq!(loaded, vec![(4, "d:4".into()), (5, "e:55".into())]);
        drop(engine);
        let engine = Engine::open(dir.path(), &EngineConfig::default()).unwrap();
        assert_eq!(load(&engine).unwrap().len(), 2, "kept across a reopen");
    }
}
