//! The RocksDB engine: the only module that names `rocksdb`. One DB per store with column
//! families that keep Raft logs, range metadata and user data apart.

use std::path::{Path, PathBuf};

use rocksdb::{ColumnFamilyDescriptor, Options, ReadOptions, WriteOptions, DB};
use serde::{Deserialize, Serialize};

use crate::StorageError;

/// A column family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cf {
    /// Raft log entries and hard/conf state, keyed by range id.
    Raft,
    /// Range descriptors, apply state and the store's identity.
    Meta,
    /// User data, keyed by the user key itself (memcomparable bytes).
    Data,
}

/// Bytes of a Raft column family key that name its memtable bucket: the range id and the
/// kind of key (log entry, hard state...). Every key of that column family is at least
/// this long, and every scan of it stays within one such prefix.
pub const RAFT_PREFIX_LEN: usize = 9;

impl Cf {
    const ALL: [Cf; 3] = [Cf::Raft, Cf::Meta, Cf::Data];

    /// Checks a key of this column family before it reaches RocksDB: the Raft column
    /// family's prefix extractor reads `RAFT_PREFIX_LEN` bytes of every key.
    fn check_key(self, key: &[u8]) {
        assert!(
            self != Cf::Raft || key.len() >= RAFT_PREFIX_LEN,
            "raft column family key shorter than its prefix: {key:?}"
        );
    }

    fn name(self) -> &'static str {
        match self {
            Cf::Raft => "raft",
            Cf::Meta => "meta",
            Cf::Data => "data",
        }
    }
}

/// Engine tuning.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub struct EngineConfig {
    /// Memtable size of the data and meta column families.
    pub write_buffer_bytes: usize,
    /// Memtable size of the Raft log. Log truncation flushes only applied data, so
    /// entries truncated before this memtable fills are dropped by its flush and never
    /// written to an SST (nor compacted): it should hold a few seconds of writes.
    pub raft_write_buffer_bytes: usize,
    /// Block cache shared by all column families.
    pub block_cache_bytes: usize,
    /// Background flush and compaction threads.
    pub background_jobs: i32,
    /// Level-0 files of user data past which RocksDB slows every write of the store
    /// (Raft log appends included) to a crawl...
    pub level0_slowdown_files: i32,
    /// ...and past which it stops them. Bulk ingests and the flushes that log
    /// truncation asks for add level-0 files faster than a small machine's compaction
    /// merges them; RocksDB's own defaults (20 and 36) then throttle a store to a few
    /// MB/s during a load.
    pub level0_stop_files: i32,
    /// SST files RocksDB keeps open at once (others are opened when read, least used
    /// closed first). Each full object chunk lands as a file of its own, so a store
    /// holds about one file per MiB of object data: keep this below the process's open
    /// file limit (`ulimit -n`), less the sockets and logs it needs.
    pub open_files_max: i32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            write_buffer_bytes: 64 << 20,
            raft_write_buffer_bytes: 256 << 20,
            block_cache_bytes: 256 << 20,
            background_jobs: 2,
            level0_slowdown_files: 48,
            level0_stop_files: 96,
            open_files_max: 4_096,
        }
    }
}

/// How durable a write must be when `write` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// In the WAL and fsynced: survives power loss.
    Sync,
    /// In the WAL, not yet fsynced: survives a process crash.
    Wal,
    /// In memtables only, until the next flush (flushes are atomic across the column
    /// families they take: data and meta together). For data that can be rebuilt from
    /// elsewhere, such as applied Raft commands.
    NoWal,
}

/// A memtable of one skiplist per `bucket` of keys (hashed into a fixed table), each
/// tall enough for a busy range's log.
fn hashed_memtable(opts: &mut Options, bucket: rocksdb::SliceTransform) {
    opts.set_prefix_extractor(bucket);
    opts.set_memtable_factory(rocksdb::MemtableFactory::HashSkipList {
        bucket_count: 1 << 16,
        height: 12,
        branching_factor: 4,
    });
}

/// The memtable bucket of a meta key: its kind and range id (the whole key for most).
fn meta_bucket(key: &[u8]) -> &[u8] {
    &key[..key.len().min(RAFT_PREFIX_LEN)]
}

/// Read options of a scan of `cf` up to `end` (empty: no bound).
fn scan_options(cf: Cf, end: &[u8]) -> ReadOptions {
    let mut opts = ReadOptions::default();
    opts.set_prefix_same_as_start(cf == Cf::Raft);
    opts.set_total_order_seek(cf == Cf::Meta);
    if !end.is_empty() {
        opts.set_iterate_upper_bound(end.to_vec());
    }
    opts
}

fn engine_err(e: rocksdb::Error) -> StorageError {
    StorageError::Engine(e.into_string())
}

/// A store's RocksDB.
pub struct Engine {
    db: DB,
    /// Where SST files for bulk ingestion are written before RocksDB takes them.
    ingest_dir: PathBuf,
    /// Where staged bulk-load files wait for their ingest (kept across restarts).
    staged_dir: PathBuf,
    /// Where received snapshots' SST files wait for their ingest (kept across restarts:
    /// one named by a replica's snapshot ingest marker is still needed).
    snapshot_dir: PathBuf,
}

impl Engine {
    pub fn open(path: &Path, config: &EngineConfig) -> Result<Engine, StorageError> {
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_background_jobs(config.background_jobs);
        db_opts.set_max_open_files(config.open_files_max);
        db_opts.set_bytes_per_sync(1 << 20);
        // Applied data is written without the WAL (the Raft log is its WAL); flushing all
        // column families together keeps applied data and apply state consistent.
        db_opts.set_atomic_flush(true);
        // The Raft column family's hashed memtable takes one writer at a time; the store
        // loop is nearly the only writer anyway.
        db_opts.set_allow_concurrent_memtable_write(false);
        let cache = rocksdb::Cache::new_lru_cache(config.block_cache_bytes);
        let cfs = Cf::ALL.iter().map(|cf| {
            let mut opts = Options::default();
            opts.set_write_buffer_size(if *cf == Cf::Raft {
                config.raft_write_buffer_bytes
            } else {
                config.write_buffer_bytes
            });
            let mut table = rocksdb::BlockBasedOptions::default();
            table.set_block_cache(&cache);
            table.set_bloom_filter(10.0, false);
            opts.set_block_based_table_factory(&table);
            if *cf != Cf::Raft {
                // Level 0 (memtable flushes) uncompressed: it is compacted away soon after,
                // and compressing it only to decompress it for that compaction cost a few
                // percent of the CPU of large writes. Lower levels are LZ4.
                use rocksdb::DBCompressionType::{Lz4, None as Plain};
                opts.set_compression_per_level(&[Plain, Lz4, Lz4, Lz4, Lz4, Lz4, Lz4]);
            }
            if *cf == Cf::Raft {
                // One memtable bucket per range and kind of key. A store's round appends
                // entries to many ranges' logs at once; in one skiplist over all of them
                // each append searched from the top (a fifth of the store loop's time
                // with 64 busy ranges), while in its own bucket it lands after the last
                // one without a search. Scans stay within a prefix (see `scan`).
                hashed_memtable(
                    &mut opts,
                    rocksdb::SliceTransform::create_fixed_prefix(RAFT_PREFIX_LEN),
                );
            }
            if *cf == Cf::Meta {
                // Likewise one bucket per key (a range's apply state, rewritten by every
                // round that applies to it): a new version goes first in its own bucket.
                // Meta scans (range states, at start only) read in total order.
                hashed_memtable(
                    &mut opts,
                    rocksdb::SliceTransform::create("shale-meta-key", meta_bucket, None),
                );
            }
            if *cf == Cf::Data {
                opts.set_level_zero_slowdown_writes_trigger(config.level0_slowdown_files);
                opts.set_level_zero_stop_writes_trigger(config.level0_stop_files);
            }
            ColumnFamilyDescriptor::new(cf.name(), opts)
        });
        let db = DB::open_cf_descriptors(&db_opts, path, cfs).map_err(engine_err)?;
        let ingest_dir = path.join("ingest");
        // Files left by an ingest cut short are never needed: an ingest not finished is
        // redone from the Raft log.
        let _ = std::fs::remove_dir_all(&ingest_dir);
        std::fs::create_dir_all(&ingest_dir)
            .map_err(|e| StorageError::Engine(format!("create {}: {e}", ingest_dir.display())))?;
        let staged_dir = path.join("staged");
        std::fs::create_dir_all(&staged_dir)
            .map_err(|e| StorageError::Engine(format!("create {}: {e}", staged_dir.display())))?;
        let snapshot_dir = path.join("snapshots");
        std::fs::create_dir_all(&snapshot_dir)
            .map_err(|e| StorageError::Engine(format!("create {}: {e}", snapshot_dir.display())))?;
        Ok(Engine {
            db,
            ingest_dir,
            staged_dir,
            snapshot_dir,
        })
    }

    /// Where received snapshots' SST files live until ingested.
    pub fn snapshot_dir(&self) -> &Path {
        &self.snapshot_dir
    }

    /// Removes every file in the snapshot folder: at start, once each replica took the
    /// file its marker names, the others belong to snapshots never installed.
    pub fn sweep_snapshot_files(&self) -> usize {
        let Ok(dir) = std::fs::read_dir(&self.snapshot_dir) else {
            return 0;
        };
        dir.flatten()
            .filter(|e| std::fs::remove_file(e.path()).is_ok())
            .count()
    }

    /// Where staged bulk-load files live (see `staging`).
    pub fn staged_dir(&self) -> &Path {
        &self.staged_dir
    }

    /// Writes `pairs` (keys strictly ascending, at least one) into a new SST file at
    /// `path`, synced to disk when this returns.
    pub fn write_sst(
        path: &Path,
        pairs: &[(bytes::Bytes, bytes::Bytes)],
    ) -> Result<(), StorageError> {
        Self::with_sst_writer(path, |sink| {
            for (k, v) in pairs {
                sink.put(k, v)?;
            }
            match sink.finish()? {
                true => Ok(()),
                false => Err(StorageError::Engine("an SST file needs a pair".into())),
            }
        })
    }

    /// Runs `fill` with a writer of a new SST file at `path`. Uncompressed: bulk loads
    /// and snapshots are mostly object chunks, which do not compress, and compactions
    /// compress what does. The file is created by the first write and removed unless
    /// `SstSink::finish` was called.
    pub fn with_sst_writer<T>(path: &Path, fill: impl FnOnce(&mut SstSink<'_>) -> T) -> T {
        let mut opts = Options::default();
        opts.set_compression_type(rocksdb::DBCompressionType::None);
        let mut sink = SstSink {
            writer: rocksdb::SstFileWriter::create(&opts),
            path,
            opened: false,
            finished: false,
        };
        fill(&mut sink)
    }

    /// Ingests the SST file at `path` into `cf` above everything written before, moving
    /// (hard-linking) it rather than copying: the file is gone from `path` once this
    /// returns `Ok`, and still there if it fails. Keys still in a memtable that the file
    /// overlaps are flushed first (all column families together).
    pub fn ingest_file(&self, cf: Cf, path: &Path) -> Result<(), StorageError> {
        self.ingest_moving(cf, path, true).map_err(engine_err)
    }

    /// Ingests `path` into `cf` by hard link; `flush` says whether overlapping memtables
    /// may be flushed first (else RocksDB refuses with "requires flush").
    fn ingest_moving(&self, cf: Cf, path: &Path, flush: bool) -> Result<(), rocksdb::Error> {
        let mut ingest = rocksdb::IngestExternalFileOptions::default();
        ingest.set_move_files(true);
        ingest.set_allow_blocking_flush(flush);
        self.db
            .ingest_external_file_cf_opts(self.handle(cf), &ingest, vec![path])
    }

    fn handle(&self, cf: Cf) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(cf.name())
            .expect("every column family is created at open")
    }

    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        cf.check_key(key);
        self.db.get_cf(self.handle(cf), key).map_err(engine_err)
    }

    /// A new empty batch against this engine.
    pub fn batch(&self) -> WriteBatch<'_> {
        WriteBatch {
            engine: self,
            inner: rocksdb::WriteBatch::default(),
        }
    }

    /// A new empty batch with room for about `bytes` of keys and values: a batch of
    /// object chunks then does not copy itself through each doubling as it grows.
    pub fn batch_with_capacity(&self, bytes: usize) -> WriteBatch<'_> {
        WriteBatch {
            engine: self,
            inner: rocksdb::WriteBatch::with_capacity_bytes(bytes),
        }
    }

    /// Writes a batch atomically, as durable as asked.
    pub fn write(&self, batch: WriteBatch<'_>, durability: Durability) -> Result<(), StorageError> {
        let mut opts = WriteOptions::default();
        opts.set_sync(durability == Durability::Sync);
        opts.disable_wal(durability == Durability::NoWal);
        opts.set_memtable_insert_hint_per_batch(true);
        self.db.write_opt(batch.inner, &opts).map_err(engine_err)
    }

    /// Fsyncs the WAL: every write made before the call survives power loss after it.
    pub fn sync_wal(&self) -> Result<(), StorageError> {
        self.db.flush_wal(true).map_err(engine_err)
    }

    /// Writes `pairs` (keys strictly ascending) into an SST file named `name` and ingests
    /// it into `cf`: the data lands in one file, without the memtable or the WAL, above
    /// everything written before. `Ok(false)` when the file overlaps keys still in a
    /// memtable: ingesting would force a flush, and the caller writes the pairs as an
    /// ordinary batch instead (the same data either way).
    pub fn ingest_sorted(
        &self,
        cf: Cf,
        pairs: &[(bytes::Bytes, bytes::Bytes)],
        name: &str,
    ) -> Result<bool, StorageError> {
        let path = self.ingest_dir.join(name);
        let _ = std::fs::remove_file(&path);
        Self::write_sst(&path, pairs)?;
        let result = self.ingest_moving(cf, &path, false);
        let _ = std::fs::remove_file(&path);
        match result {
            Ok(()) => Ok(true),
            Err(e) if e.as_ref().contains("requires flush") => Ok(false),
            Err(e) => Err(engine_err(e)),
        }
    }

    /// Flushes the applied data and its apply state (the data and meta column families,
    /// atomically) to SST files, leaving the Raft log in its memtable: log entries
    /// truncated before that memtable fills never reach an SST.
    pub fn flush_applied(&self) -> Result<(), StorageError> {
        let cfs = [self.handle(Cf::Meta), self.handle(Cf::Data)];
        self.db
            .flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())
            .map_err(engine_err)
    }

    /// Flushes every memtable (all column families at once) to SST files.
    pub fn flush(&self) -> Result<(), StorageError> {
        let cfs: Vec<_> = Cf::ALL.iter().map(|cf| self.handle(*cf)).collect();
        self.db
            .flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())
            .map_err(engine_err)
    }

    /// Calls `visit` for each pair in `[start, end)` (empty `end`: no bound) in key order,
    /// until it returns false. In the Raft column family the scan sees only keys sharing
    /// `start`'s first `RAFT_PREFIX_LEN` bytes (one range's log, say); a scan of the meta
    /// column family sorts its whole memtable first (made for reads at start).
    pub fn scan(
        &self,
        cf: Cf,
        start: &[u8],
        end: &[u8],
        visit: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError> {
        self.scan_with(cf, start, scan_options(cf, end), visit)
    }

    /// Runs `visit` with the value of `meta_key` (meta column family) and a cursor over
    /// the keys of `[start, end)` in `cf`, both read from one view of the engine, around
    /// the block cache: a whole range's keys, without holding them all.
    pub fn with_keys_and_meta<T>(
        &self,
        cf: Cf,
        start: &[u8],
        end: &[u8],
        meta_key: &[u8],
        visit: impl FnOnce(Option<Vec<u8>>, &mut KeyCursor<'_>) -> T,
    ) -> Result<T, StorageError> {
        cf.check_key(start);
        let view = self.db.snapshot();
        let meta = view
            .get_cf(self.handle(Cf::Meta), meta_key)
            .map_err(engine_err)?;
        let mut opts = scan_options(cf, end);
        opts.fill_cache(false);
        opts.set_snapshot(&view);
        let mut iter = self.db.raw_iterator_cf_opt(self.handle(cf), opts);
        iter.seek(start);
        Ok(visit(meta, &mut KeyCursor { iter }))
    }

    /// Like `scan`, over the engine as it stands when this is called: `pinned` runs once
    /// that view is fixed, so a writer that waits for it knows none of its later writes
    /// is seen, however long the scan then takes. Blocks read do not enter the block
    /// cache (a bulk read would evict what readers use).
    pub fn scan_pinned(
        &self,
        cf: Cf,
        start: &[u8],
        end: &[u8],
        pinned: impl FnOnce(),
        visit: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError> {
        let view = self.db.snapshot();
        pinned();
        let mut opts = scan_options(cf, end);
        // A bulk read (a snapshot build): not worth evicting what readers use.
        opts.fill_cache(false);
        opts.set_snapshot(&view);
        self.scan_with(cf, start, opts, visit)
    }

    fn scan_with(
        &self,
        cf: Cf,
        start: &[u8],
        opts: ReadOptions,
        mut visit: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError> {
        cf.check_key(start);
        // The raw iterator lends each pair from RocksDB's block: nothing is copied for a
        // visit that only looks (size checks, counts) or copies what it keeps.
        let mut iter = self.db.raw_iterator_cf_opt(self.handle(cf), opts);
        iter.seek(start);
        while let (Some(k), Some(v)) = (iter.key(), iter.value()) {
            if !visit(k, v) {
                return Ok(());
            }
            iter.next();
        }
        iter.status().map_err(engine_err)
    }

    /// The first key in `[start, end)`, if any (in the Raft column family, among those
    /// sharing `start`'s prefix).
    pub fn first_key_in(
        &self,
        cf: Cf,
        start: &[u8],
        end: &[u8],
    ) -> Result<Option<Vec<u8>>, StorageError> {
        let mut first = None;
        self.scan(cf, start, end, |k, _| {
            first = Some(k.to_vec());
            false
        })?;
        Ok(first)
    }

    /// Approximate bytes of `[start, end)` in SST files (memtables not counted), for reports.
    pub fn approximate_size_bytes(&self, cf: Cf, start: &[u8], end: &[u8]) -> u64 {
        let range = rocksdb::Range::new(start, end);
        self.db
            .get_approximate_sizes_cf(self.handle(cf), &[range])
            .first()
            .copied()
            .unwrap_or(0)
    }

    /// Bytes the DB holds on disk (SST files), for reports.
    pub fn size_bytes(&self) -> u64 {
        Cf::ALL
            .iter()
            .filter_map(|cf| {
                self.db
                    .property_int_value_cf(self.handle(*cf), "rocksdb.total-sst-files-size")
                    .ok()
                    .flatten()
            })
            .sum()
    }
}

/// Writes that land together or not at all.
pub struct WriteBatch<'e> {
    engine: &'e Engine,
    inner: rocksdb::WriteBatch,
}

impl WriteBatch<'_> {
    pub fn put(&mut self, cf: Cf, key: &[u8], value: &[u8]) {
        cf.check_key(key);
        self.inner.put_cf(self.engine.handle(cf), key, value);
    }

    pub fn delete(&mut self, cf: Cf, key: &[u8]) {
        cf.check_key(key);
        self.inner.delete_cf(self.engine.handle(cf), key);
    }

    /// Deletes every key in `[start, end)`.
    pub fn delete_range(&mut self, cf: Cf, start: &[u8], end: &[u8]) {
        self.inner
            .delete_range_cf(self.engine.handle(cf), start, end);
    }

    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// Writes what the batch holds so far, as durable as asked, and leaves it empty.
    pub fn write_out(&mut self, durability: Durability) -> Result<(), StorageError> {
        let full = WriteBatch {
            engine: self.engine,
            inner: std::mem::take(&mut self.inner),
        };
        self.engine.write(full, durability)
    }

    pub fn size_bytes(&self) -> usize {
        self.inner.size_in_bytes()
    }
}

/// Keys in order from one view of the engine (see `Engine::with_keys_and_meta`).
pub struct KeyCursor<'a> {
    iter: rocksdb::DBRawIteratorWithThreadMode<'a, DB>,
}

impl KeyCursor<'_> {
    /// The current key; none once they ran out (or reading failed: see `status`).
    pub fn key(&self) -> Option<&[u8]> {
        self.iter.key()
    }

    pub fn advance(&mut self) {
        self.iter.next();
    }

    /// Whether reading the keys failed.
    pub fn status(&self) -> Result<(), StorageError> {
        self.iter.status().map_err(engine_err)
    }
}

/// Writes one SST file (see `Engine::with_sst_writer`): keys strictly ascending, each
/// a put or a delete.
pub struct SstSink<'a> {
    writer: rocksdb::SstFileWriter<'a>,
    path: &'a Path,
    opened: bool,
    finished: bool,
}

impl SstSink<'_> {
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        self.open()?;
        self.writer.put(key, value).map_err(engine_err)
    }

    pub fn delete(&mut self, key: &[u8]) -> Result<(), StorageError> {
        self.open()?;
        self.writer.delete(key).map_err(engine_err)
    }

    /// Closes the file, synced; false if nothing was written (and no file made).
    pub fn finish(&mut self) -> Result<bool, StorageError> {
        if !self.opened {
            return Ok(false);
        }
        self.writer.finish().map_err(engine_err)?;
        self.finished = true;
        Ok(true)
    }

    fn open(&mut self) -> Result<(), StorageError> {
        if !self.opened {
            self.writer.open(self.path).map_err(engine_err)?;
            self.opened = true;
        }
        Ok(())
    }
}

impl Drop for SstSink<'_> {
    fn drop(&mut self) {
        if self.opened && !self.finished {
            let _ = std::fs::remove_file(self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_is_atomic_and_scan_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), &EngineConfig::default()).unwrap();
        let mut batch = engine.batch();
        for k in [b"a", b"b", b"c", b"d"] {
            batch.put(Cf::Data, k, b"v");
        }
        batch.put(Cf::Meta, b"m", b"x");
        engine.write(batch, Durability::Sync).unwrap();
        let mut seen = Vec::new();
        engine
            .scan(Cf::Data, b"b", b"d", |k, _| {
                seen.push(k.to_vec());
                true
            })
            .unwrap();
        assert_eq!(seen, vec![b"b".to_vec(), b"c".to_vec()]);
        assert_eq!(
            engine.first_key_in(Cf::Data, b"bb", b"d").unwrap(),
            Some(b"c".to_vec())
        );
        assert_eq!(engine.first_key_in(Cf::Data, b"e", b"f").unwrap(), None);
        assert_eq!(engine.get(Cf::Data, b"m").unwrap(), None);
        assert_eq!(engine.get(Cf::Meta, b"m").unwrap(), Some(b"x".to_vec()));
    }

    #[test]
    fn meta_scans_see_every_key_in_order_across_memtable_buckets_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), &EngineConfig::default()).unwrap();
        let key = |kind: u8, id: u64| {
            let mut k = vec![kind];
            k.extend_from_slice(&id.to_be_bytes());
            k
        };
        let write = |ids: std::ops::Range<u64>, version: u8| {
            let mut batch = engine.batch();
            for id in ids.rev() {
                batch.put(Cf::Meta, &key(1, id), &[version]);
                batch.put(Cf::Meta, &key(2, id), &[version]);
            }
            engine.write(batch, Durability::Sync).unwrap();
        };
        write(0..300, 1);
        engine.flush().unwrap();
        write(100..400, 2);
        let mut seen = Vec::new();
        engine
            .scan(Cf::Meta, &key(1, 0), &key(2, 0), |k, v| {
                seen.push((k.to_vec(), v[0]));
                true
            })
            .unwrap();
        let want: Vec<_> = (0..400)
            .map(|id| (key(1, id), if id < 100 { 1 } else { 2 }))
            .collect();
        assert_eq!(seen, want);
        assert_eq!(engine.get(Cf::Meta, &key(2, 50)).unwrap(), Some(vec![1]));
        assert_eq!(engine.get(Cf::Meta, &key(2, 350)).unwrap(), Some(vec![2]));
        assert_eq!(engine.get(Cf::Meta, &key(2, 400)).unwrap(), None);
        // Keys shorter and longer than a bucket's prefix.
        let mut batch = engine.batch();
        batch.put(Cf::Meta, b"\x00abc", b"s");
        batch.put(Cf::Meta, b"\x00cluster-id", b"c");
        engine.write(batch, Durability::Sync).unwrap();
        assert_eq!(
            engine.get(Cf::Meta, b"\x00abc").unwrap(),
            Some(b"s".to_vec())
        );
        assert_eq!(
            engine.get(Cf::Meta, b"\x00cluster-id").unwrap(),
            Some(b"c".to_vec())
        );
    }
}
