//! Publishing an object's record, the last step of a write: unconditionally (the last
//! writer wins), or only if the object then meets a condition, decided atomically by a
//! compare-and-set of the record.

use bytes::Bytes;
use shale_rpc::client::ClientError;
use shale_rpc::KvError;

use super::ObjectStore;
use crate::error::GwError;
use crate::layout::{self, ObjectMeta};

/// Most times a conditional publish reads and tries again when other writers keep
/// changing the object between its read and its write.
const PUBLISH_ATTEMPTS: usize = 16;

/// What the object must be when a conditional write publishes its record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// Nothing: the last writer wins.
    None,
    /// No object under the key (`If-None-Match: *`).
    Absent,
    /// Some object, whatever it is (`If-Match: *`).
    Exists,
    /// An object with this ETag (`If-Match: "..."`).
    ETag(String),
}

impl Condition {
    /// Whether an object with `etag` (`None`: no object) meets the condition.
    pub fn check(&self, etag: Option<&str>) -> Result<(), GwError> {
        let failed = |why: &str| Err(GwError::PreconditionFailed(why.to_string()));
        match (self, etag) {
            (Condition::None, _) => Ok(()),
            (Condition::Absent, Some(_)) => failed("the object exists (If-None-Match: *)"),
            (Condition::Exists | Condition::ETag(_), None) => failed("no object to match"),
            (Condition::ETag(want), Some(have)) if want != have => {
                failed("If-Match does not match the object's ETag")
            }
            _ => Ok(()),
        }
    }
}

impl ObjectStore {
    /// Makes `meta` the object at (`bucket`, `key`); the body it replaces is dropped.
    pub(super) async fn publish(
        &self,
        bucket: &str,
        key: &str,
        meta: &ObjectMeta,
        condition: &Condition,
    ) -> Result<(), GwError> {
        let record = layout::object_key(bucket, key);
        let new = Bytes::from(meta.encode());
        let previous = match condition {
            // Last writer wins: no need to decide against anyone.
            Condition::None => {
                let previous = self.kv.get(record.clone()).await?;
                self.kv.put(record, new).await?;
                previous
            }
            _ => self.publish_if(&record, new, condition).await?,
        };
        crate::metrics::METRICS.objects_written.inc();
        crate::metrics::METRICS.bytes_written.inc_by(meta.size);
        if let Some(Ok(old)) = previous.map(|p| ObjectMeta::decode(&p)) {
            self.drop_body(&old).await;
        }
        Ok(())
    }

    /// Writes the record `new` at `record` if what is there meets `condition` at the
    /// moment it is written (a compare-and-set against what was read): of two writers
    /// racing on the same condition, one wins and the other gets `PreconditionFailed`.
    /// Returns the record replaced.
    async fn publish_if(
        &self,
        record: &Bytes,
        new: Bytes,
        condition: &Condition,
    ) -> Result<Option<Bytes>, GwError> {
        for _ in 0..PUBLISH_ATTEMPTS {
            let previous = self.kv.get(record.clone()).await?;
            let etag = match &previous {
                Some(p) => Some(ObjectMeta::decode(p).map_err(GwError::Corrupt)?.etag),
                None => None,
            };
            condition.check(etag.as_deref())?;
            let cas = self
                .kv
                .compare_and_set(record.clone(), previous.clone(), Some(new.clone()))
                .await;
            match cas {
                Ok(()) => return Ok(previous),
                Err(ClientError::Kv(KvError::CompareFailed)) => {
                    // A retried request may have found its own first attempt applied.
                    if self.kv.get(record.clone()).await?.as_ref() == Some(&new) {
                        return Ok(previous);
                    }
                    // Another writer came between: look again.
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(GwError::Contended)
    }
}
