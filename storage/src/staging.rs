//! Staged bulk-load files: SST files a loader's `StageIngest` wrote on this store, kept
//! until the Raft entry that ingests them applies (RocksDB then takes the file by hard
//! link, so its bytes are written to disk once), or deleted once they are too old.
//!
//! A file is named by the loader's id for it and the crc32 of its pairs, so an ingest
//! finds only the very pairs it names; staging writes a temporary file first and
//! renames it, so a name that exists is a whole, synced file.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use shale_rpc::{pairs_crc32, KvError};
use tracing::{info, warn};

use crate::config::IngestConfig;
use crate::engine::Engine;

/// The staged files of one store.
pub struct Staging {
    dir: PathBuf,
    bytes_max: u64,
    ttl: Duration,
}

/// Where the file staged as `id` with pairs of checksum `crc32` lives in `dir`.
pub fn staged_path(dir: &Path, id: u128, crc32: u32) -> PathBuf {
    dir.join(format!("{id:032x}-{crc32:08x}.sst"))
}

const TEMP_SUFFIX: &str = ".tmp";

impl Staging {
    /// The staging area of `engine`; files past their age are deleted now.
    pub fn new(engine: &Engine, config: &IngestConfig) -> Staging {
        let staging = Staging {
            dir: engine.staged_dir().to_path_buf(),
            bytes_max: config.staged_bytes_max,
            ttl: Duration::from_secs(config.staged_ttl_secs),
        };
        staging.sweep();
        staging
    }

    /// Writes `pairs` (validated: sorted, user keys, in the range) as the file staged as
    /// `id`, synced before this returns. Refused with `ServerBusy` when the staged files
    /// would pass their byte bound. Blocking: call off the async runtime.
    pub fn stage(&self, id: u128, pairs: &[(Bytes, Bytes)]) -> Result<(), KvError> {
        let held = self.sweep();
        let incoming: u64 = pairs.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
        if held + incoming > self.bytes_max {
            return Err(KvError::ServerBusy {
                reason: format!(
                    "{held} bytes of staged bulk-load files wait for ingest (bound {})",
                    self.bytes_max
                ),
            });
        }
        let path = staged_path(&self.dir, id, pairs_crc32(pairs));
        let temp = path.with_extension(format!("sst{TEMP_SUFFIX}"));
        let _ = std::fs::remove_file(&temp);
        let storage = |what: &str, e: String| KvError::Storage {
            message: format!("{what} {}: {e}", temp.display()),
        };
        Engine::write_sst(&temp, pairs).map_err(|e| storage("write", e.to_string()))?;
        std::fs::rename(&temp, &path).map_err(|e| storage("rename", e.to_string()))?;
        sync_dir(&self.dir).map_err(|e| storage("sync the folder of", e.to_string()))?;
        Ok(())
    }

    /// Every file in the staging folder with its metadata.
    fn files(&self) -> impl Iterator<Item = (PathBuf, std::fs::Metadata)> {
        std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| Some((e.path(), e.metadata().ok()?)))
            .filter(|(_, meta)| meta.is_file())
    }

    /// Deletes staged (and half-written) files older than the age bound; returns the
    /// bytes of those kept.
    pub fn sweep(&self) -> u64 {
        let now = SystemTime::now();
        let mut kept = 0;
        for (path, meta) in self.files() {
            let age = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            if age < self.ttl {
                kept += meta.len();
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    info!(path = %path.display(), age_secs = age.as_secs(), "deleted a staged file never ingested")
                }
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "could not delete an old staged file")
                }
            }
        }
        kept
    }
}

/// Makes a rename (or a new file) in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Cf, EngineConfig};

    impl Staging {
        fn has(&self, id: u128, crc32: u32) -> bool {
            staged_path(&self.dir, id, crc32).exists()
        }
    }

    fn pairs(n: usize) -> Vec<(Bytes, Bytes)> {
        (0..n)
            .map(|i| {
                (
                    Bytes::from(format!("k{i:05}")),
                    Bytes::from(vec![i as u8; 100]),
                )
            })
            .collect()
    }

    #[test]
    fn staged_files_are_named_by_their_pairs_bounded_and_ingested_once() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), &EngineConfig::default()).unwrap();
        let config = IngestConfig {
            staged_bytes_max: 15_000,
            ..IngestConfig::default()
        };
        let staging = Staging::new(&engine, &config);
        let loaded = pairs(100);
        let crc = pairs_crc32(&loaded);
        staging.stage(7, &loaded).unwrap();
        assert!(staging.has(7, crc));
        assert!(!staging.has(7, crc ^ 1), "other pairs, other file");
        assert!(!staging.has(8, crc));
        // Past the byte bound: refused, nothing written.
        let more = pairs(90);
        assert!(matches!(
            staging.stage(9, &more),
            Err(KvError::ServerBusy { .. })
        ));
        assert!(!staging.has(9, pairs_crc32(&more)));
        // Ingest takes the file away; the data is in the engine.
        let path = staged_path(engine.staged_dir(), 7, crc);
        engine.ingest_file(Cf::Data, &path).unwrap();
        assert!(!staging.has(7, crc));
        assert_eq!(
            engine.get(Cf::Data, b"k00042").unwrap(),
            Some(vec![42u8; 100])
        );
        // Room again once the file left.
        staging.stage(9, &more).unwrap();
    }

    #[test]
    fn old_staged_files_are_swept_and_young_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), &EngineConfig::default()).unwrap();
        let loaded = pairs(10);
        let crc = pairs_crc32(&loaded);
        let keep = Staging::new(&engine, &IngestConfig::default());
        keep.stage(1, &loaded).unwrap();
        keep.sweep();
        assert!(keep.has(1, crc), "a young file stays");
        std::thread::sleep(Duration::from_millis(1_100));
        let config = IngestConfig {
            staged_ttl_secs: 1,
            ..IngestConfig::default()
        };
        let strict = Staging::new(&engine, &config);
        assert!(!strict.has(1, crc), "an old file is gone at start");
    }
}
