//! Key spans of a range that no other replica on the store covers: what destroying a
//! replica may delete (a removed replica that never applied a split still spans keys
//! the split's right range may hold here now).

use bytes::Bytes;
use shale_rpc::RangeDescriptor;

use crate::replica::span_end;

/// The parts of `range`'s key span that none of `others` covers, as `[start, end)`.
pub(crate) fn unowned_spans<'a>(
    range: &RangeDescriptor,
    others: impl Iterator<Item = &'a RangeDescriptor>,
) -> Vec<(Bytes, Bytes)> {
    let mut owned: Vec<(Bytes, Bytes)> =
        others.map(|o| (o.start_key.clone(), span_end(o))).collect();
    owned.sort();
    let mut spans = Vec::new();
    let mut from = range.start_key.clone();
    let end = span_end(range);
    for (s, e) in owned {
        if e <= from || s >= end {
            continue;
        }
        if s > from {
            spans.push((from.clone(), s.clone()));
        }
        from = from.max(e);
    }
    if from < end {
        spans.push((from, end));
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;
    use shale_rpc::Epoch;

    fn r(start: &str, end: &str) -> RangeDescriptor {
        RangeDescriptor {
            id: 9,
            start_key: Bytes::copy_from_slice(start.as_bytes()),
            end_key: Bytes::copy_from_slice(end.as_bytes()),
            epoch: Epoch::default(),
            replicas: Vec::new(),
        }
    }

    #[test]
    fn spans_owned_by_other_replicas_are_kept() {
        let stale = r("a", "z");
        let others = [r("m", "p"), r("x", "")];
        let spans = unowned_spans(&stale, others.iter());
        let text: Vec<(String, String)> = spans
            .iter()
            .map(|(s, e)| {
                (
                    String::from_utf8_lossy(s).into(),
                    String::from_utf8_lossy(e).into(),
                )
            })
            .collect();
        assert_eq!(
            text,
            vec![("a".into(), "m".into()), ("p".into(), "x".into())]
        );
        assert!(unowned_spans(&r("m", "p"), [r("a", "")].iter()).is_empty());
        assert_eq!(unowned_spans(&r("a", "b"), std::iter::empty()).len(), 1);
    }
}
