//! Byte fields decoded without a copy: while [`crate::Frame::decode`] runs, fields
//! marked `#[serde(deserialize_with = "crate::shared::...")]` become slices of the
//! frame's body, which they keep alive, instead of fresh copies. Bulk values (chunks on
//! their way to a store, chunks read back) are then copied once fewer on each hop.
//! Decoding from anything else (a Raft entry, say) copies as usual.

use std::cell::RefCell;

use bytes::Bytes;
use serde::de::{Deserialize, Deserializer, Error, SeqAccess, Visitor};

thread_local! {
    static SOURCE: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// Runs `decode` with `body` as the buffer shared fields are sliced from.
pub(crate) fn decoding_from<T>(body: &Bytes, decode: impl FnOnce() -> T) -> T {
    struct Reset(Option<Bytes>);
    impl Drop for Reset {
        fn drop(&mut self) {
            SOURCE.with_borrow_mut(|s| *s = self.0.take());
        }
    }
    let _reset = Reset(SOURCE.with_borrow_mut(|s| s.replace(body.clone())));
    decode()
}

/// Decodes `T` (postcard) from `body`, its marked fields as slices of `body`: for
/// payloads carried whole in another message (a Raft snapshot's data, say).
pub fn decode<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, postcard::Error> {
    decoding_from(body, || postcard::from_bytes(body))
}

/// `v` as a slice of the buffer being decoded when it lies inside it; else a copy.
fn share(v: &[u8]) -> Bytes {
    SOURCE.with_borrow(|source| match source {
        Some(s) if within(s, v) => s.slice_ref(v),
        _ => Bytes::copy_from_slice(v),
    })
}

fn within(outer: &[u8], inner: &[u8]) -> bool {
    let (o, i) = (outer.as_ptr() as usize, inner.as_ptr() as usize);
    !inner.is_empty() && i >= o && i + inner.len() <= o + outer.len()
}

/// A byte string decoded by [`share`].
struct Shared(Bytes);

impl<'de> Deserialize<'de> for Shared {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Shared, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Shared;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_borrowed_bytes<E: Error>(self, v: &'de [u8]) -> Result<Shared, E> {
                Ok(Shared(share(v)))
            }
            fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Shared, E> {
                Ok(Shared(Bytes::copy_from_slice(v)))
            }
            fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Shared, E> {
                Ok(Shared(Bytes::from(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Shared, A::Error> {
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(b) = seq.next_element::<u8>()? {
                    v.push(b);
                }
                Ok(Shared(Bytes::from(v)))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// For a `Bytes` field.
pub fn bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
    Shared::deserialize(d).map(|s| s.0)
}

/// For an `Option<Bytes>` field.
pub fn option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Bytes>, D::Error> {
    Option::<Shared>::deserialize(d).map(|o| o.map(|s| s.0))
}

/// For a `Vec<(Bytes, Bytes)>` field.
pub fn pairs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(Bytes, Bytes)>, D::Error> {
    Vec::<(Shared, Shared)>::deserialize(d)
        .map(|v| v.into_iter().map(|(k, v)| (k.0, v.0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct M {
        #[serde(deserialize_with = "bytes")]
        one: Bytes,
        #[serde(deserialize_with = "option")]
        maybe: Option<Bytes>,
        #[serde(deserialize_with = "pairs")]
        pairs: Vec<(Bytes, Bytes)>,
        plain: Bytes,
    }

    #[test]
    fn fields_slice_the_frame_being_decoded_and_copy_otherwise() {
        let m = M {
            one: Bytes::from(vec![1u8; 1000]),
            maybe: Some(Bytes::from_static(b"m")),
            pairs: vec![(Bytes::from_static(b"k"), Bytes::from(vec![2u8; 500]))],
            plain: Bytes::from_static(b"p"),
        };
        let body = Bytes::from(postcard::to_stdvec(&m).unwrap());
        let got: M = decoding_from(&body, || postcard::from_bytes(&body).unwrap());
        assert_eq!(got, m);
        assert!(within(&body, &got.one) && within(&body, &got.pairs[0].1));
        assert!(within(&body, got.maybe.as_ref().unwrap()));
        assert!(!within(&body, &got.plain), "unmarked fields are copied");
        // Outside a frame's decode, and after one, marked fields are copies.
        let copy: M = postcard::from_bytes(&body).unwrap();
        assert_eq!(copy, m);
        assert!(!within(&body, &copy.one));
        // A nested decode restores the outer source when it ends.
        let other = Bytes::from(postcard::to_stdvec(&m).unwrap());
        let (inner, outer): (M, M) = decoding_from(&body, || {
            let inner = decoding_from(&other, || postcard::from_bytes(&other).unwrap());
            (inner, postcard::from_bytes(&body).unwrap())
        });
        assert!(within(&other, &inner.one) && within(&body, &outer.one));
    }
}
