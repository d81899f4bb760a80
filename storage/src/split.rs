//! Choosing where to split a range: a pure function of the range's keys and sizes.

use bytes::Bytes;
use shale_rpc::SYSTEM_PREFIX_END;

/// Given the range's pairs in key order as `(key, size in bytes)`, returns a key to
/// split at once the range holds more than `size_bytes_max`: the first key at which the
/// data before it reaches half the bound. `None` while the range is within its bound.
/// Never returns the first key (the left part is never empty) or a system key.
pub fn choose_split_key<'a>(
    pairs: impl IntoIterator<Item = (&'a [u8], usize)>,
    size_bytes_max: u64,
) -> Option<Bytes> {
    let half = size_bytes_max / 2;
    let mut total = 0u64;
    let mut candidate: Option<Bytes> = None;
    let mut first = true;
    for (key, size) in pairs {
        if candidate.is_none() && !first && total >= half && key >= SYSTEM_PREFIX_END {
            candidate = Some(Bytes::copy_from_slice(key));
        }
        first = false;
        total += size as u64;
        if total > size_bytes_max && candidate.is_some() {
            return candidate;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keys(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("k{i:05}").into_bytes()).collect()
    }

    #[test]
    fn no_split_within_the_bound() {
        let ks = keys(10);
        assert_eq!(
            choose_split_key(ks.iter().map(|k| (&k[..], 10)), 1000),
            None
        );
    }

    #[test]
    fn splits_near_the_middle_of_the_bound() {
        let ks = keys(100);
        let key = choose_split_key(ks.iter().map(|k| (&k[..], 10)), 500).unwrap();
        assert_eq!(&key[..], b"k00025", "250 bytes (half of 500) lie before it");
    }

    #[test]
    fn never_splits_at_the_first_key_or_a_system_key() {
        let big = [b"a".to_vec(), b"b".to_vec()];
        assert_eq!(
            &choose_split_key(big.iter().map(|k| (&k[..], 1000)), 100).unwrap()[..],
            b"b"
        );
        let sys = [vec![0, 0, 1], vec![0, 0, 2], b"z".to_vec()];
        assert_eq!(
            &choose_split_key(sys.iter().map(|k| (&k[..], 100)), 100).unwrap()[..],
            b"z"
        );
    }

    proptest! {
        #[test]
        fn the_split_key_is_inside_and_the_left_part_is_about_half(sizes in proptest::collection::vec(1usize..200, 2..300), max in 10u64..5000) {
            let ks = keys(sizes.len());
            let pairs: Vec<(&[u8], usize)> = ks.iter().map(|k| &k[..]).zip(sizes.iter().copied()).collect();
            let total: u64 = sizes.iter().map(|&s| s as u64).sum();
            match choose_split_key(pairs.clone(), max) {
                None => prop_assert!(total <= max || total - (sizes[sizes.len() - 1] as u64) < max / 2 || sizes.len() < 2),
                Some(key) => {
                    prop_assert!(key > Bytes::copy_from_slice(&ks[0]));
                    let left: u64 = pairs.iter().filter(|(k, _)| *k < &key[..]).map(|(_, s)| *s as u64).sum();
                    prop_assert!(left >= max / 2, "left {} below half of {}", left, max);
                    let before_last: u64 = left - pairs.iter().filter(|(k, _)| *k < &key[..]).last().unwrap().1 as u64;
                    prop_assert!(before_last < max / 2, "the split key is the first past half");
                    prop_assert!(total > max);
                }
            }
        }
    }
}
