//! Flexible checksums (`x-amz-checksum-*`), in headers or aws-chunked trailers: the body
//! is hashed as it streams in, and the result is compared with every claimed value
//! before the object becomes visible. A mismatch is refused, never stored.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::HeaderMap;
use s3s::checksum::ChecksumHasher;
use s3s::dto::Checksum;

use crate::error::GwError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algo {
    Crc32,
    Crc32c,
    Sha1,
    Sha256,
    Crc64Nvme,
}

impl Algo {
    const ALL: [Algo; 5] = [
        Algo::Crc32,
        Algo::Crc32c,
        Algo::Sha1,
        Algo::Sha256,
        Algo::Crc64Nvme,
    ];

    fn header(self) -> &'static str {
        match self {
            Algo::Crc32 => "x-amz-checksum-crc32",
            Algo::Crc32c => "x-amz-checksum-crc32c",
            Algo::Sha1 => "x-amz-checksum-sha1",
            Algo::Sha256 => "x-amz-checksum-sha256",
            Algo::Crc64Nvme => "x-amz-checksum-crc64nvme",
        }
    }

    fn computed(self, c: &Checksum) -> Option<&String> {
        match self {
            Algo::Crc32 => c.checksum_crc32.as_ref(),
            Algo::Crc32c => c.checksum_crc32c.as_ref(),
            Algo::Sha1 => c.checksum_sha1.as_ref(),
            Algo::Sha256 => c.checksum_sha256.as_ref(),
            Algo::Crc64Nvme => c.checksum_crc64nvme.as_ref(),
        }
    }
}

/// The checksums a request claims for its body.
pub struct Claims {
    /// Values given in request headers.
    headers: Vec<(Algo, String)>,
    /// Algorithms whose values come in the body's trailer.
    trailed: Vec<Algo>,
    trailers: Option<s3s::TrailingHeaders>,
}

impl Claims {
    /// Reads the claims from the request's headers (including `x-amz-trailer`).
    pub fn from_request(headers: &HeaderMap, trailers: Option<s3s::TrailingHeaders>) -> Claims {
        let given = Algo::ALL
            .iter()
            .filter_map(|a| {
                headers
                    .get(a.header())
                    .and_then(|v| v.to_str().ok())
                    .map(|v| (*a, v.trim().to_string()))
            })
            .collect();
        let trailed = headers
            .get_all("x-amz-trailer")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| {
                Algo::ALL
                    .into_iter()
                    .find(|a| a.header().eq_ignore_ascii_case(name.trim()))
            })
            .collect();
        Claims {
            headers: given,
            trailed,
            trailers,
        }
    }

    fn hasher(&self) -> ChecksumHasher {
        let mut h = ChecksumHasher::default();
        for a in self
            .headers
            .iter()
            .map(|(a, _)| *a)
            .chain(self.trailed.iter().copied())
        {
            match a {
                Algo::Crc32 => h.crc32 = Some(Default::default()),
                Algo::Crc32c => h.crc32c = Some(Default::default()),
                Algo::Sha1 => h.sha1 = Some(Default::default()),
                Algo::Sha256 => h.sha256 = Some(Default::default()),
                Algo::Crc64Nvme => h.crc64nvme = Some(Default::default()),
            }
        }
        h
    }

    /// Wraps `body` so it is hashed as it is read; the returned check compares the
    /// result with every claim once the body is done.
    pub fn watch<S, E>(
        self,
        body: S,
    ) -> (
        impl Stream<Item = Result<Bytes, E>> + Unpin,
        impl FnOnce() -> Result<(), GwError>,
    )
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
    {
        let hasher = Arc::new(Mutex::new(Some(self.hasher())));
        let feed = hasher.clone();
        let body = body.map(move |piece| {
            if let (Ok(data), Some(h)) = (&piece, feed.lock().expect("hasher lock").as_mut()) {
                h.update(data);
            }
            piece
        });
        let check = move || {
            let computed = hasher
                .lock()
                .expect("hasher lock")
                .take()
                .map(ChecksumHasher::finalize)
                .unwrap_or_default();
            self.verify(&computed)
        };
        (body, check)
    }

    fn verify(&self, computed: &Checksum) -> Result<(), GwError> {
        for (algo, claimed) in &self.headers {
            if algo.computed(computed) != Some(claimed) {
                return Err(GwError::ChecksumMismatch {
                    header: algo.header(),
                });
            }
        }
        if self.trailed.is_empty() {
            return Ok(());
        }
        let trailer = self
            .trailers
            .as_ref()
            .and_then(|t| t.take())
            .unwrap_or_default();
        for algo in &self.trailed {
            let claimed = trailer
                .get(algo.header())
                .and_then(|v| v.to_str().ok())
                .map(str::trim);
            match claimed {
                None => {
                    return Err(GwError::ChecksumMissing {
                        header: algo.header(),
                    })
                }
                Some(c) if algo.computed(computed).map(String::as_str) != Some(c) => {
                    return Err(GwError::ChecksumMismatch {
                        header: algo.header(),
                    });
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}
