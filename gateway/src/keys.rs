//! Access keys kept in the cluster (so every gateway knows them), and the s3s auth
//! provider that looks them up. A gateway's configured key pair always works too: it is
//! how an operator gets in before any key exists.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use s3s::auth::{S3Auth, SecretKey};
use s3s::{s3_error, S3Result};
use serde::{Deserialize, Serialize};
use shale_rpc::client::KvClient;

use crate::error::GwError;
use crate::layout::prefix_end;
use crate::objects::now_ms;

const KEY_PREFIX: u8 = b'K';
/// How long a looked-up key is trusted before it is read again (a deleted key stops
/// working within this long on every gateway).
const KEY_CACHE_TTL: Duration = Duration::from_secs(2);

/// Most access keys whose lookup is cached; past it the cache starts over (callers
/// choose the keys asked for, known or not).
const KEY_CACHE_MAX: usize = 10_000;

/// An access key's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessKey {
    pub access_key: String,
    pub secret_key: String,
    pub name: String,
    pub created_ms: u64,
}

pub(crate) fn record_key(access_key: &str) -> Bytes {
    let mut k = BytesMut::with_capacity(1 + access_key.len());
    k.put_u8(KEY_PREFIX);
    k.put_slice(access_key.as_bytes());
    k.freeze()
}

fn random(alphabet: &[u8], n: usize) -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..n)
        .map(|_| alphabet[rng.gen_range(0..alphabet.len())] as char)
        .collect()
}

/// Creates a new key named `name`.
pub async fn create(kv: &KvClient, name: &str) -> Result<AccessKey, GwError> {
    let key = AccessKey {
        access_key: format!("SHK{}", random(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 17)),
        secret_key: random(
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
            40,
        ),
        name: name.to_string(),
        created_ms: now_ms(),
    };
    let value = postcard::to_stdvec(&key).expect("access key encodes");
    kv.put(record_key(&key.access_key), value).await?;
    Ok(key)
}

/// Every key, secrets included (callers decide what to show).
pub async fn list(kv: &KvClient) -> Result<Vec<AccessKey>, GwError> {
    let start = Bytes::from_static(&[KEY_PREFIX]);
    let end = prefix_end(&start).expect("one byte below 0xff");
    kv.scan_all(start, end, 1000)
        .await?
        .iter()
        .map(|(_, v)| {
            postcard::from_bytes(v).map_err(|e| GwError::Corrupt(format!("access key: {e}")))
        })
        .collect()
}

/// Deletes a key; false when there was none.
pub async fn delete(kv: &KvClient, access_key: &str) -> Result<bool, GwError> {
    let existed = kv.get(record_key(access_key)).await?.is_some();
    kv.delete(record_key(access_key)).await?;
    Ok(existed)
}

/// The gateway's auth provider: the configured key, then keys kept in the cluster.
pub struct ClusterAuth {
    kv: Arc<KvClient>,
    bootstrap: Option<(String, String)>,
    cache: Mutex<HashMap<String, (Option<String>, Instant)>>,
}

impl ClusterAuth {
    pub fn new(kv: Arc<KvClient>, bootstrap: Option<(String, String)>) -> Self {
        ClusterAuth {
            kv,
            bootstrap,
            cache: Mutex::new(HashMap::new()),
        }
    }
}

#[async_trait::async_trait]
impl S3Auth for ClusterAuth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        if let Some((ak, sk)) = &self.bootstrap {
            if ak == access_key {
                return Ok(SecretKey::from(sk.clone()));
            }
        }
        let cached = self
            .cache
            .lock()
            .expect("key cache lock")
            .get(access_key)
            .cloned();
        let secret = match cached {
            Some((secret, at)) if at.elapsed() < KEY_CACHE_TTL => secret,
            _ => {
                let stored = self
                    .kv
                    .get(record_key(access_key))
                    .await
                    .map_err(|e| s3_error!(ServiceUnavailable, "key lookup: {}", e))?;
                let secret = stored
                    .and_then(|v| postcard::from_bytes::<AccessKey>(&v).ok())
                    .map(|k| k.secret_key);
                let mut cache = self.cache.lock().expect("key cache lock");
                if cache.len() >= KEY_CACHE_MAX {
                    cache.clear();
                }
                cache.insert(access_key.to_string(), (secret.clone(), Instant::now()));
                secret
            }
        };
        secret.map(SecretKey::from).ok_or_else(|| {
            s3_error!(
                InvalidAccessKeyId,
                "the access key is not known to this cluster"
            )
        })
    }
}
