//! Bucket lifecycle rules: objects under a prefix expire a number of days after they were
//! written (or from a date on), and multipart uploads under a prefix are aborted a number
//! of days after they began. Rules are kept per bucket in the cluster; a sweep that some
//! gateway runs every `lifecycle-interval-secs` applies them. An expired object is
//! deleted by compare-and-set against the record the sweep read, so one written again
//! meanwhile is never taken.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use shale_rpc::client::ClientError;
use shale_rpc::KvError;
use tracing::{debug, info};

use crate::error::GwError;
use crate::layout::{self, ObjectMeta};
use crate::objects::ObjectStore;

/// Most rules a bucket takes (as S3).
pub const RULES_MAX: usize = 1000;

const DAY_MS: u64 = 24 * 3600 * 1000;

/// Objects (or uploads) a sweep reads per page.
const SWEEP_PAGE: u32 = 1000;

/// When objects under a rule's prefix expire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expire {
    /// This many days after an object was written, at the next midnight UTC (as S3).
    AfterDays(u32),
    /// From this instant on (ms since the Unix epoch), every object.
    At(u64),
}

/// One lifecycle rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub id: String,
    pub enabled: bool,
    /// Key prefix of the objects and uploads it applies to (empty: all).
    pub prefix: String,
    pub expire: Option<Expire>,
    /// Multipart uploads begun this many days ago are aborted.
    pub abort_uploads_after_days: Option<u32>,
}

/// A bucket's rules.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Lifecycle {
    pub rules: Vec<Rule>,
}

/// Why a lifecycle configuration is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Well-formed, but asks for something Shale does not do (transitions, versions,
    /// tag or size filters).
    Unsupported(String),
    /// Not a valid configuration.
    Invalid(String),
}

impl Rule {
    /// When an object of this rule written at `written_ms` expires, if it ever does.
    pub fn expires_at(&self, written_ms: u64) -> Option<u64> {
        match self.expire.as_ref()? {
            Expire::At(at) => Some(*at),
            Expire::AfterDays(days) => {
                let due = written_ms.saturating_add(u64::from(*days) * DAY_MS);
                Some(due.div_ceil(DAY_MS) * DAY_MS)
            }
        }
    }

    fn applies_to(&self, key: &str) -> bool {
        self.enabled && key.starts_with(&self.prefix)
    }
}

impl Lifecycle {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("lifecycle encodes")
    }

    pub fn decode(data: &[u8]) -> Result<Lifecycle, String> {
        postcard::from_bytes(data).map_err(|e| format!("lifecycle record: {e}"))
    }

    /// Whether the object `key` written at `written_ms` has expired at `now_ms`.
    pub fn object_expired(&self, key: &str, written_ms: u64, now_ms: u64) -> bool {
        self.rules
            .iter()
            .filter(|r| r.applies_to(key))
            .filter_map(|r| r.expires_at(written_ms))
            .any(|at| at <= now_ms)
    }

    /// Whether an upload of `key` begun at `started_ms` is due to be aborted at `now_ms`.
    pub fn upload_expired(&self, key: &str, started_ms: u64, now_ms: u64) -> bool {
        self.rules
            .iter()
            .filter(|r| r.applies_to(key))
            .filter_map(|r| r.abort_uploads_after_days)
            .any(|d| started_ms.saturating_add(u64::from(d) * DAY_MS) <= now_ms)
    }

    /// Checks a configuration as S3 gives it.
    pub fn check(&self) -> Result<(), Refused> {
        let invalid = |m: String| Err(Refused::Invalid(m));
        if self.rules.is_empty() || self.rules.len() > RULES_MAX {
            return invalid(format!("1 to {RULES_MAX} rules, not {}", self.rules.len()));
        }
        for (i, r) in self.rules.iter().enumerate() {
            if r.id.len() > 255 {
                return invalid(format!("rule {}: an ID is at most 255 characters", i + 1));
            }
            if !r.id.is_empty() && self.rules[..i].iter().any(|o| o.id == r.id) {
                return invalid(format!("rule ID {:?} is used twice", r.id));
            }
            if r.expire.is_none() && r.abort_uploads_after_days.is_none() {
                return invalid(format!("rule {}: no action", i + 1));
            }
            if matches!(r.expire, Some(Expire::AfterDays(0)))
                || r.abort_uploads_after_days == Some(0)
            {
                return invalid(format!("rule {}: days must be positive", i + 1));
            }
        }
        Ok(())
    }
}

fn ms_of(date: s3s::dto::Timestamp) -> u64 {
    let t = time::OffsetDateTime::from(date);
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

fn timestamp(ms: u64) -> s3s::dto::Timestamp {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    s3s::dto::Timestamp::from(at)
}

/// A bucket lifecycle configuration as S3 sends it, as rules Shale keeps; refused with
/// what it asks for that Shale does not do, or why it is not valid.
pub fn from_s3(config: s3s::dto::BucketLifecycleConfiguration) -> Result<Lifecycle, Refused> {
    use s3s::dto::ExpirationStatus;
    let mut rules = Vec::new();
    for (i, r) in config.rules.into_iter().enumerate() {
        let n = i + 1;
        let unsupported = |what: &str| Refused::Unsupported(format!("rule {n}: {what}"));
        let invalid = |why: &str| Refused::Invalid(format!("rule {n}: {why}"));
        if r.transitions.as_ref().is_some_and(|t| !t.is_empty()) {
            return Err(unsupported("transitions (Shale has one storage class)"));
        }
        if r.noncurrent_version_expiration.is_some()
            || r.noncurrent_version_transitions
                .as_ref()
                .is_some_and(|t| !t.is_empty())
        {
            return Err(unsupported(
                "noncurrent-version actions (Shale keeps no versions)",
            ));
        }
        let prefix = match r.filter {
            Some(f) => {
                if f.and.is_some()
                    || f.tag.is_some()
                    || f.object_size_greater_than.is_some()
                    || f.object_size_less_than.is_some()
                {
                    return Err(unsupported("tag, And and object size filters"));
                }
                f.prefix.or(r.prefix).unwrap_or_default()
            }
            None => r.prefix.unwrap_or_default(),
        };
        let expire = match r.expiration {
            None => None,
            Some(e) => match (e.days, e.date) {
                (Some(_), Some(_)) => return Err(invalid("Expiration gives both Days and Date")),
                (Some(d), None) => Some(Expire::AfterDays(
                    u32::try_from(d).map_err(|_| invalid("days must be positive"))?,
                )),
                (None, Some(date)) => Some(Expire::At(ms_of(date))),
                (None, None) if e.expired_object_delete_marker.is_some() => {
                    return Err(unsupported(
                        "ExpiredObjectDeleteMarker (Shale keeps no versions)",
                    ))
                }
                (None, None) => return Err(invalid("Expiration gives neither Days nor Date")),
            },
        };
        let abort = match r
            .abort_incomplete_multipart_upload
            .and_then(|a| a.days_after_initiation)
        {
            Some(d) => Some(u32::try_from(d).map_err(|_| invalid("days must be positive"))?),
            None => None,
        };
        let enabled = match r.status.as_str() {
            ExpirationStatus::ENABLED => true,
            ExpirationStatus::DISABLED => false,
            other => {
                return Err(invalid(&format!(
                    "status {other:?} is neither Enabled nor Disabled"
                )))
            }
        };
        rules.push(Rule {
            id: r.id.unwrap_or_default(),
            enabled,
            prefix,
            expire,
            abort_uploads_after_days: abort,
        });
    }
    let lifecycle = Lifecycle { rules };
    lifecycle.check()?;
    Ok(lifecycle)
}

/// The rules as S3 lists them.
pub fn to_s3(lifecycle: &Lifecycle) -> Vec<s3s::dto::LifecycleRule> {
    use s3s::dto::{
        AbortIncompleteMultipartUpload, ExpirationStatus, LifecycleExpiration, LifecycleRule,
        LifecycleRuleFilter,
    };
    lifecycle
        .rules
        .iter()
        .map(|r| LifecycleRule {
            id: (!r.id.is_empty()).then(|| r.id.clone()),
            status: ExpirationStatus::from_static(if r.enabled {
                ExpirationStatus::ENABLED
            } else {
                ExpirationStatus::DISABLED
            }),
            filter: Some(LifecycleRuleFilter {
                prefix: Some(r.prefix.clone()),
                ..Default::default()
            }),
            prefix: None,
            expiration: r.expire.as_ref().map(|e| match e {
                Expire::AfterDays(d) => LifecycleExpiration {
                    days: Some(*d as i32),
                    ..Default::default()
                },
                Expire::At(ms) => LifecycleExpiration {
                    date: Some(timestamp(*ms)),
                    ..Default::default()
                },
            }),
            abort_incomplete_multipart_upload: r.abort_uploads_after_days.map(|d| {
                AbortIncompleteMultipartUpload {
                    days_after_initiation: Some(d as i32),
                }
            }),
            noncurrent_version_expiration: None,
            noncurrent_version_transitions: None,
            transitions: None,
        })
        .collect()
}

/// What one lifecycle sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub objects_expired: u64,
    pub uploads_aborted: u64,
}

impl ObjectStore {
    pub async fn put_lifecycle(&self, bucket: &str, lifecycle: &Lifecycle) -> Result<(), GwError> {
        self.must_bucket(bucket).await?;
        let value = Bytes::from(lifecycle.encode());
        self.kv().put(layout::lifecycle_key(bucket), value).await?;
        Ok(())
    }

    /// The bucket's rules; `None` when it has none.
    pub async fn lifecycle(&self, bucket: &str) -> Result<Option<Lifecycle>, GwError> {
        self.must_bucket(bucket).await?;
        self.lifecycle_record(bucket).await
    }

    /// The rules kept for `bucket`, without asking whether the bucket exists.
    async fn lifecycle_record(&self, bucket: &str) -> Result<Option<Lifecycle>, GwError> {
        match self.kv().get(layout::lifecycle_key(bucket)).await? {
            Some(v) => Ok(Some(Lifecycle::decode(&v).map_err(GwError::Corrupt)?)),
            None => Ok(None),
        }
    }

    pub async fn delete_lifecycle(&self, bucket: &str) -> Result<(), GwError> {
        self.must_bucket(bucket).await?;
        self.kv().delete(layout::lifecycle_key(bucket)).await?;
        Ok(())
    }

    /// Applies every bucket's rules as of `now_ms`.
    pub async fn sweep_lifecycles(&self, now_ms: u64) -> Result<Swept, GwError> {
        let mut swept = Swept::default();
        for (bucket, _) in self.list_buckets().await? {
            let Some(lifecycle) = self.lifecycle_record(&bucket).await? else {
                continue;
            };
            for rule in lifecycle
                .rules
                .iter()
                .filter(|r| r.enabled && r.expire.is_some())
            {
                swept.objects_expired += self
                    .expire_objects(&bucket, &rule.prefix, &lifecycle, now_ms)
                    .await?;
            }
            if lifecycle
                .rules
                .iter()
                .any(|r| r.abort_uploads_after_days.is_some())
            {
                for (key, upload_id, started) in self.list_uploads(&bucket).await? {
                    if lifecycle.upload_expired(&key, started, now_ms) {
                        self.abort_upload(&bucket, &key, &upload_id).await?;
                        swept.uploads_aborted += 1;
                        info!(%bucket, %key, %upload_id, "lifecycle: aborted an upload");
                    }
                }
            }
        }
        Ok(swept)
    }

    /// Deletes the expired objects under `prefix`, each only if its record is still the
    /// one read; returns how many.
    async fn expire_objects(
        &self,
        bucket: &str,
        prefix: &str,
        lifecycle: &Lifecycle,
        now_ms: u64,
    ) -> Result<u64, GwError> {
        let (mut next, end) = layout::object_bounds(bucket, prefix);
        let mut expired = 0;
        loop {
            let page = self.kv().scan(next, end.clone(), SWEEP_PAGE).await?;
            for (record, value) in &page.pairs {
                let Some(key) = layout::key_of_object(bucket, record) else {
                    continue;
                };
                let Ok(meta) = ObjectMeta::decode(value) else {
                    continue;
                };
                if !lifecycle.object_expired(key, meta.last_modified_ms, now_ms) {
                    continue;
                }
                let cas = self
                    .kv()
                    .compare_and_set(record.clone(), Some(value.clone()), None)
                    .await;
                match cas {
                    Ok(()) => {
                        self.drop_body(&meta).await;
                        expired += 1;
                        crate::metrics::METRICS.objects_expired.inc();
                        debug!(%bucket, %key, "lifecycle: object expired");
                    }
                    // Written again (or deleted) since it was read: not this sweep's.
                    Err(ClientError::Kv(KvError::CompareFailed)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            match page.resume_key {
                Some(k) if end.is_empty() || k < end => next = k,
                _ => return Ok(expired),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(prefix: &str, expire: Option<Expire>, abort: Option<u32>) -> Rule {
        Rule {
            id: prefix.into(),
            enabled: true,
            prefix: prefix.into(),
            expire,
            abort_uploads_after_days: abort,
        }
    }

    #[test]
    fn days_count_to_the_next_midnight_utc() {
        let r = rule("", Some(Expire::AfterDays(1)), None);
        // 2026-12-07 10:00 UTC: due 2026-12-09 00:00 UTC.
        let written = 1_796_637_600_000;
        let midnight = written - 10 * 3600 * 1000;
        assert_eq!(r.expires_at(written), Some(midnight + 2 * DAY_MS));
        assert_eq!(r.expires_at(midnight), Some(midnight + DAY_MS));
        let at = rule("", Some(Expire::At(5)), None);
        assert_eq!(at.expires_at(written), Some(5));
        assert_eq!(rule("", None, Some(3)).expires_at(written), None);
    }

    #[test]
    fn rules_apply_by_prefix_and_only_when_enabled() {
        let mut l = Lifecycle {
            rules: vec![
                rule("logs/", Some(Expire::At(100)), None),
                rule("tmp/", Some(Expire::AfterDays(1)), Some(2)),
            ],
        };
        assert!(l.object_expired("logs/a", 0, 100));
        assert!(!l.object_expired("logs/a", 0, 99));
        assert!(!l.object_expired("keep/a", 0, u64::MAX));
        assert!(!l.object_expired("tmp/a", 0, DAY_MS - 1));
        assert!(l.object_expired("tmp/a", 0, DAY_MS));
        assert!(l.upload_expired("tmp/a", 0, 2 * DAY_MS));
        assert!(!l.upload_expired("logs/a", 0, u64::MAX));
        l.rules[0].enabled = false;
        assert!(!l.object_expired("logs/a", 0, 100));
        assert_eq!(Lifecycle::decode(&l.encode()).unwrap(), l);
    }

    #[test]
    fn nonsense_is_refused() {
        let ok = rule("a", Some(Expire::AfterDays(1)), None);
        let check = |rules: Vec<Rule>| Lifecycle { rules }.check();
        assert!(check(vec![ok.clone()]).is_ok());
        assert!(check(Vec::new()).is_err());
        assert!(
            check(vec![ok.clone(), ok.clone()]).is_err(),
            "same id twice"
        );
        assert!(check(vec![rule("b", None, None)]).is_err(), "no action");
        assert!(check(vec![rule("b", Some(Expire::AfterDays(0)), None)]).is_err());
        assert!(check(vec![rule("b", None, Some(0))]).is_err());
    }
}
