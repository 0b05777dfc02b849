//! A sparse histogram as the operator keeps it between reports: the
//! non-zero buckets as varints (the gap to the previous index, then the
//! count) in one byte string. Kept for every probe on every node, it is
//! read only in order (to take increments, to sum figures), so it needs no
//! random access; a bucket costs 2 to 5 bytes instead of the 16 of a
//! `(u16, u64)` pair.

use super::decode::Sparse;

/// A [`Sparse`] histogram, packed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Packed {
    bytes: Box<[u8]>,
    pub sum_ns: u64,
    pub max_ns: u64,
    pub errors: u64,
}

fn put(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

impl Packed {
    pub fn new(s: &Sparse) -> Self {
        let mut bytes = Vec::with_capacity(s.buckets.len() * 3);
        let mut previous = 0u16;
        for &(i, n) in &s.buckets {
            put(&mut bytes, u64::from(i - previous));
            put(&mut bytes, n);
            previous = i;
        }
        Self {
            bytes: bytes.into_boxed_slice(),
            sum_ns: s.sum_ns,
            max_ns: s.max_ns,
            errors: s.errors,
        }
    }

    /// The non-zero buckets, indices increasing.
    pub fn buckets(&self) -> Buckets<'_> {
        Buckets {
            bytes: &self.bytes,
            index: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Back to a [`Sparse`].
    pub fn unpack(&self) -> Sparse {
        Sparse {
            buckets: self.buckets().collect(),
            sum_ns: self.sum_ns,
            max_ns: self.max_ns,
            errors: self.errors,
        }
    }

    /// Events `now` recorded since `self`, an older histogram of the same
    /// source (saturating; the maximum is `now`'s).
    pub fn increment_to(&self, now: &Sparse) -> Sparse {
        now.delta_since_parts(self.buckets(), self.sum_ns, self.errors)
    }
}

/// The buckets of a [`Packed`].
pub struct Buckets<'a> {
    bytes: &'a [u8],
    index: u16,
}

impl Buckets<'_> {
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.bytes.split_first()?;
            self.bytes = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    }
}

impl Iterator for Buckets<'_> {
    type Item = (u16, u64);

    fn next(&mut self) -> Option<(u16, u64)> {
        // Written by `Packed::new` only: a gap fits u16, indices increase.
        let gap = u16::try_from(self.varint()?).ok()?;
        let n = self.varint()?;
        self.index = self.index.checked_add(gap)?;
        Some((self.index, n))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use ringwarden_ebpf_common::HIST_BUCKETS;

    use super::*;

    fn sparse() -> impl Strategy<Value = Sparse> {
        (
            proptest::collection::btree_map(0..HIST_BUCKETS as u16, 1..u64::MAX, 0..300),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(|(b, sum_ns, max_ns, errors)| Sparse {
                buckets: b.into_iter().collect(),
                sum_ns,
                max_ns,
                errors,
            })
    }

    proptest! {
        #[test]
        fn packing_loses_nothing(s in sparse()) {
            let p = Packed::new(&s);
            prop_assert_eq!(p.unpack(), s.clone());
            prop_assert!(p.bytes.len() <= s.buckets.len() * 12);
        }

        #[test]
        fn increments_from_a_packed_baseline_are_the_sparse_ones(a in sparse(), b in sparse()) {
            // A later histogram of the same source holds at least as much.
            let mut later = a.clone();
            later.merge(&b);
            prop_assert_eq!(Packed::new(&a).increment_to(&later), later.delta_since(&a));
        }
    }

    #[test]
    fn small_counts_cost_two_bytes_a_bucket() {
        let s = Sparse {
            buckets: (300..500).map(|i| (i, 100)).collect(),
            ..Sparse::default()
        };
        // The first gap (300) takes two bytes.
        assert_eq!(Packed::new(&s).bytes.len(), 2 * 200 + 1);
    }
}
