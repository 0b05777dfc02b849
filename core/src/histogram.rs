//! User-space view of the kernel's log-linear latency histograms: summing the
//! per-CPU copies, interval deltas, percentiles and Prometheus buckets.
//!
//! The bucket layout is [`ringwarden_ebpf_common::hist`], shared bit for bit
//! with the kernel programs.

use ringwarden_ebpf_common::hist::HIST_MAX_EXP;
use ringwarden_ebpf_common::{
    HIST_BUCKETS, HIST_SUB_BITS, LatencyHist, bucket_index, bucket_lower, bucket_upper,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Largest relative error of [`Histogram::percentile`] against the exact
/// order statistic, for values below [`OPEN_BUCKET_LOWER_NS`]: `1/64`.
///
/// A bucket is at most `1/2^HIST_SUB_BITS` of its lower bound wide and its
/// midpoint is reported, so the error is at most half of that.
pub const MAX_RELATIVE_ERROR: f64 = 1.0 / (1u64 << (HIST_SUB_BITS + 1)) as f64;

const LAST: usize = HIST_BUCKETS - 1;

/// Smallest value of the last, open-ended bucket (about 67.6 s). Percentiles
/// that fall in it are reported as the maximum seen, without an error bound.
pub const OPEN_BUCKET_LOWER_NS: u64 = bucket_lower(LAST);

/// Smallest Prometheus bound, 2^10 ns (1.024 µs): finer buckets would mostly
/// measure the probe's own overhead.
const PROMETHEUS_MIN_EXP: u32 = 10;

/// A latency histogram in the shared log-linear layout.
///
/// Serializes sparsely: only non-zero buckets, as `[index, count]` pairs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "SparseHistogram", try_from = "SparseHistogram")]
pub struct Histogram {
    /// Always `HIST_BUCKETS` long.
    buckets: Vec<u64>,
    sum_ns: u64,
    max_ns: u64,
    errors: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: vec![0; HIST_BUCKETS],
            sum_ns: 0,
            max_ns: 0,
            errors: 0,
        }
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one latency, as the kernel program would.
    pub fn record(&mut self, ns: u64) {
        let bucket = &mut self.buckets[bucket_index(ns)];
        *bucket = bucket.saturating_add(1);
        self.sum_ns = self.sum_ns.saturating_add(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    /// Sums the per-CPU values of one series, as read from a per-CPU map.
    pub fn from_per_cpu(per_cpu: &[LatencyHist]) -> Self {
        let mut total = Self::new();
        for cpu in per_cpu {
            total.add(&cpu.buckets, cpu.sum_ns, cpu.max_ns, cpu.errors);
        }
        total
    }

    /// Adds `other`'s events to this histogram.
    pub fn merge(&mut self, other: &Histogram) {
        self.add(&other.buckets, other.sum_ns, other.max_ns, other.errors);
    }

    /// Adds `n` events to bucket `b` (taken from the kernel; see
    /// [`LatencyHist`]). Their sum and errors come through
    /// [`Histogram::add_totals`].
    pub fn add_to_bucket(&mut self, b: usize, n: u64) {
        if let Some(bucket) = self.buckets.get_mut(b) {
            *bucket = bucket.saturating_add(n);
        }
    }

    /// Adds a sum of latencies and errors, and raises the maximum to `max_ns`.
    pub fn add_totals(&mut self, sum_ns: u64, max_ns: u64, errors: u64) {
        self.sum_ns = self.sum_ns.saturating_add(sum_ns);
        self.max_ns = self.max_ns.max(max_ns);
        self.errors = self.errors.saturating_add(errors);
    }

    // Saturating throughout: a pinned-at-max counter is visibly wrong, a
    // wrapped one silently looks like a quiet period.
    fn add(&mut self, buckets: &[u64], sum_ns: u64, max_ns: u64, errors: u64) {
        for (mine, theirs) in self.buckets.iter_mut().zip(buckets) {
            *mine = mine.saturating_add(*theirs);
        }
        self.sum_ns = self.sum_ns.saturating_add(sum_ns);
        self.max_ns = self.max_ns.max(max_ns);
        self.errors = self.errors.saturating_add(errors);
    }

    /// Events recorded since `earlier`, an older snapshot of the same source.
    ///
    /// Buckets, sum and errors are subtracted, saturating at zero so that a
    /// source that restarted in between yields too little rather than wrapped
    /// garbage. A maximum cannot be subtracted: the delta keeps `self.max_ns`,
    /// the maximum since the source started, which is therefore only an upper
    /// bound for the interval (and so is a percentile clamped to it).
    pub fn delta_since(&self, earlier: &Histogram) -> Histogram {
        Histogram {
            buckets: self
                .buckets
                .iter()
                .zip(&earlier.buckets)
                .map(|(now, then)| now.saturating_sub(*then))
                .collect(),
            sum_ns: self.sum_ns.saturating_sub(earlier.sum_ns),
            max_ns: self.max_ns,
            errors: self.errors.saturating_sub(earlier.errors),
        }
    }

    /// Per-bucket counts, indexed like [`bucket_index`].
    pub fn buckets(&self) -> &[u64] {
        &self.buckets
    }

    /// Number of recorded events.
    pub fn count(&self) -> u64 {
        sum(&self.buckets)
    }

    /// Whether no event was recorded.
    pub fn is_empty(&self) -> bool {
        self.buckets.iter().all(|&n| n == 0)
    }

    /// Sum of all recorded latencies.
    pub fn sum_ns(&self) -> u64 {
        self.sum_ns
    }

    /// Largest recorded latency (see [`Histogram::delta_since`] for deltas).
    pub fn max_ns(&self) -> u64 {
        self.max_ns
    }

    /// Events whose result was an error; they are counted in the buckets too.
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// Mean latency, `None` when empty.
    pub fn mean_ns(&self) -> Option<f64> {
        let count = self.count();
        (count > 0).then(|| self.sum_ns as f64 / count as f64)
    }

    /// The `q`-quantile (`q` in `[0, 1]`) of the recorded latencies.
    ///
    /// Takes the event of rank `ceil(q * count)` (at least 1) and reports its
    /// bucket's midpoint, which is within [`MAX_RELATIVE_ERROR`] of the exact
    /// value and exact below 64 ns. For the last, open bucket it reports
    /// `max(lower bound, max_ns)`. Never exceeds `max_ns` when that is
    /// non-zero. `None` when empty or when `q` is outside `[0, 1]` or NaN.
    pub fn percentile(&self, q: f64) -> Option<u64> {
        if !(0.0..=1.0).contains(&q) {
            return None;
        }
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = rank(q, count);
        let mut seen = 0u64;
        let i = self.buckets.iter().position(|&n| {
            seen = seen.saturating_add(n);
            seen >= rank
        })?;
        let lower = bucket_lower(i);
        let value = if i == LAST {
            lower.max(self.max_ns)
        } else {
            lower + (bucket_upper(i) - lower) / 2
        };
        Some(if self.max_ns > 0 {
            value.min(self.max_ns)
        } else {
            value
        })
    }

    /// Number of recorded latencies certainly `<= ns`: the buckets lying
    /// wholly at or below `ns`.
    ///
    /// Exact when `ns + 1` is a bucket edge, as every value below 64 and every
    /// power of two up to 2^35 is; otherwise it leaves out the events that
    /// share `ns`'s bucket.
    pub fn count_le(&self, ns: u64) -> u64 {
        let i = bucket_index(ns);
        // Bucket `i` counts only if `ns` is its last value.
        let whole = if i == LAST {
            ns == u64::MAX
        } else {
            ns + 1 == bucket_upper(i)
        };
        sum(&self.buckets[..i + usize::from(whole)])
    }

    /// Cumulative counts at [`prometheus_bounds_ns`], as `(bound, count)`
    /// pairs where `count` is the number of latencies `< bound`.
    ///
    /// Strictly below rather than Prometheus' `<=`: a latency of exactly
    /// `bound` ns lands in the next bucket, a 1 ns shift far below the
    /// histogram's resolution that keeps every count exact. The `+Inf`
    /// bucket is [`Histogram::count`].
    pub fn cumulative_at_edges(&self) -> Vec<(u64, u64)> {
        // One pass over the buckets: every bound is a bucket edge, so the
        // buckets below it are exactly those before its index.
        let (mut below, mut seen) = (0usize, 0u64);
        prometheus_bounds_ns()
            .map(|bound| {
                let edge = bucket_index(bound);
                seen = seen.saturating_add(sum(&self.buckets[below..edge]));
                below = edge;
                (bound, seen)
            })
            .collect()
    }
}

/// Prometheus bucket bounds in nanoseconds: the powers of two from 2^10
/// (1.024 µs) to 2^35 (about 34.4 s), each an exact bucket edge.
///
/// 2^35 is the top because the last, open bucket starts below 2^36 (at
/// [`OPEN_BUCKET_LOWER_NS`]), so counts below 2^36 are not exact.
pub fn prometheus_bounds_ns() -> impl Iterator<Item = u64> {
    (PROMETHEUS_MIN_EXP..=HIST_MAX_EXP).map(|exp| 1u64 << exp)
}

fn sum(counts: &[u64]) -> u64 {
    counts.iter().fold(0, |total, &n| total.saturating_add(n))
}

/// `ceil(q * count)` clamped to `[1, count]`, where a product within
/// floating-point noise of an integer counts as that integer: the 7th
/// percentile of 100 events is the 7th event, though `0.07 * 100.0` is
/// `7.000000000000001`.
fn rank(q: f64, count: u64) -> u64 {
    let exact = q * count as f64;
    let nearest = exact.round();
    let rank = if (exact - nearest).abs() <= exact * 4.0 * f64::EPSILON {
        nearest
    } else {
        exact.ceil()
    };
    // `as` saturates; the clamp turns q = 0 into the smallest event.
    (rank as u64).clamp(1, count)
}

/// Why a serialized histogram was rejected.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum HistogramError {
    /// A bucket index beyond the shared layout.
    #[error(
        "histogram bucket index {index} is out of range; the layout has {} buckets",
        HIST_BUCKETS
    )]
    BucketOutOfRange {
        /// The offending index.
        index: u16,
    },
    /// Bucket indices not strictly increasing, so the data is not what
    /// [`Histogram`] serializes (and a repeated index would be ambiguous).
    #[error("histogram bucket index {index} is out of order; indices must be strictly increasing")]
    BucketOutOfOrder {
        /// The offending index.
        index: u16,
    },
}

/// Wire form of [`Histogram`]: a few dozen non-zero buckets instead of 1024.
#[derive(Serialize, Deserialize)]
struct SparseHistogram {
    buckets: Vec<(u16, u64)>,
    sum_ns: u64,
    max_ns: u64,
    errors: u64,
}

impl From<Histogram> for SparseHistogram {
    fn from(h: Histogram) -> Self {
        Self {
            buckets: (0u16..).zip(h.buckets).filter(|&(_, n)| n > 0).collect(),
            sum_ns: h.sum_ns,
            max_ns: h.max_ns,
            errors: h.errors,
        }
    }
}

impl TryFrom<SparseHistogram> for Histogram {
    type Error = HistogramError;

    fn try_from(sparse: SparseHistogram) -> Result<Self, Self::Error> {
        let mut h = Histogram {
            sum_ns: sparse.sum_ns,
            max_ns: sparse.max_ns,
            errors: sparse.errors,
            ..Histogram::default()
        };
        let mut previous = None;
        for (index, n) in sparse.buckets {
            if previous.is_some_and(|p| index <= p) {
                return Err(HistogramError::BucketOutOfOrder { index });
            }
            *h.buckets
                .get_mut(usize::from(index))
                .ok_or(HistogramError::BucketOutOfRange { index })? = n;
            previous = Some(index);
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Latencies spread over every octave below the open bucket.
    fn latency() -> impl Strategy<Value = u64> {
        (0u32..=HIST_MAX_EXP, any::<u64>()).prop_map(|(bits, r)| r & ((1u64 << bits) - 1))
    }

    fn histogram_of(values: &[u64]) -> Histogram {
        let mut h = Histogram::new();
        for &v in values {
            h.record(v);
        }
        h
    }

    fn with_errors(values: &[u64], errors: u64) -> Histogram {
        Histogram {
            errors,
            ..histogram_of(values)
        }
    }

    /// The kernel's per-CPU value holding the same events.
    fn per_cpu(h: &Histogram) -> LatencyHist {
        let mut cpu = LatencyHist::default();
        cpu.buckets.copy_from_slice(&h.buckets);
        cpu.sum_ns = h.sum_ns;
        cpu.max_ns = h.max_ns;
        cpu.errors = h.errors;
        cpu
    }

    fn within_bound(estimate: u64, exact: u64) -> bool {
        estimate.abs_diff(exact) as f64 <= exact as f64 * MAX_RELATIVE_ERROR
    }

    #[test]
    fn bucket_of_a_value_has_bounds_that_contain_it() {
        let two_36 = 1u64 << 36;
        let cases = [
            (0, 0),
            (1, 1),
            (31, 31),
            (32, 32),
            (63, 63),
            (64, 64),
            (65, 64),
            (66, 65),
            (127, 95),
            (128, 96),
            (1_000, 190),
            (1 << 35, 992),
            (OPEN_BUCKET_LOWER_NS - 1, LAST - 1),
            (OPEN_BUCKET_LOWER_NS, LAST),
            (two_36, LAST),
            (u64::MAX, LAST),
        ];
        for (value, index) in cases {
            let i = bucket_index(value);
            assert_eq!(i, index, "bucket of {value}");
            assert!(bucket_lower(i) <= value, "lower bound of {value}");
            assert!(
                i == LAST || value < bucket_upper(i),
                "upper bound of {value}"
            );
        }
    }

    #[test]
    fn buckets_are_contiguous_monotonic_and_the_last_is_open() {
        for i in 0..LAST {
            let (lower, upper) = (bucket_lower(i), bucket_upper(i));
            assert!(lower < upper, "bucket {i} is empty");
            assert_eq!(upper, bucket_lower(i + 1), "gap after bucket {i}");
            assert_eq!(bucket_index(lower), i);
            assert_eq!(bucket_index(upper - 1), i);
            // The width bound behind MAX_RELATIVE_ERROR.
            assert!((upper - lower) << HIST_SUB_BITS <= lower.max(1 << HIST_SUB_BITS));
        }
        assert_eq!(bucket_upper(LAST), u64::MAX);
        assert_eq!(bucket_index(u64::MAX), LAST);
    }

    #[test]
    fn max_relative_error_is_one_sixty_fourth() {
        assert_eq!(MAX_RELATIVE_ERROR, 1.0 / 64.0);
    }

    #[test]
    fn default_histogram_has_every_bucket_and_no_events() {
        let h = Histogram::default();
        assert_eq!(h.buckets().len(), HIST_BUCKETS);
        assert!(h.is_empty());
        assert_eq!(h, Histogram::new());
        assert_eq!(
            (h.count(), h.sum_ns(), h.max_ns(), h.errors()),
            (0, 0, 0, 0)
        );
    }

    #[test]
    fn empty_histogram_has_no_percentile_or_mean() {
        let h = Histogram::new();
        for q in [0.0, 0.5, 1.0] {
            assert_eq!(h.percentile(q), None);
        }
        assert_eq!(h.mean_ns(), None);
    }

    #[test]
    fn quantile_outside_zero_to_one_has_no_percentile() {
        let h = histogram_of(&[10, 20]);
        for q in [-0.1, 1.01, f64::NAN, f64::INFINITY] {
            assert_eq!(h.percentile(q), None, "q = {q}");
        }
    }

    #[test]
    fn rank_is_the_ceiling_of_q_times_count_ignoring_float_noise() {
        let cases = [
            (0.0, 100, 1),
            (0.01, 100, 1),
            (0.07, 100, 7),
            (0.071, 100, 8),
            (0.5, 3, 2),
            (0.5, 4, 2),
            (0.9, 10, 9),
            (0.99, 100, 99),
            (0.999, 1_000, 999),
            (1.0, 7, 7),
            (1.0, u64::MAX, u64::MAX),
        ];
        for (q, count, expected) in cases {
            assert_eq!(rank(q, count), expected, "rank({q}, {count})");
        }
    }

    #[test]
    fn percentiles_of_known_samples_are_the_expected_midpoints() {
        let one_to_hundred: Vec<u64> = (1..=100).collect();
        let cases: [(&[u64], f64, u64); 9] = [
            (&one_to_hundred, 0.0, 1),
            (&one_to_hundred, 0.5, 50),
            (&one_to_hundred, 0.63, 63),
            // 64 and 65 share [64, 66), reported by its midpoint.
            (&one_to_hundred, 0.64, 65),
            // 100 is in [100, 102); the midpoint 101 is clamped to the max.
            (&one_to_hundred, 1.0, 100),
            // 1000 is in [992, 1008).
            (&[1_000], 0.5, 1_000),
            (&[1_000, 1_001], 0.5, 1_000),
            // Open bucket: the max stands in for the value.
            (&[u64::MAX / 2], 0.99, u64::MAX / 2),
            (
                &[5, OPEN_BUCKET_LOWER_NS + 7],
                1.0,
                OPEN_BUCKET_LOWER_NS + 7,
            ),
        ];
        for (values, q, expected) in cases {
            let h = histogram_of(values);
            assert_eq!(h.percentile(q), Some(expected), "q = {q} of {values:?}");
        }
    }

    #[test]
    fn percentile_without_a_max_reports_the_bucket_value_unclamped() {
        let mut cpu = LatencyHist::default();
        cpu.buckets[bucket_index(1_000)] = 3;
        cpu.buckets[LAST] = 1;
        let h = Histogram::from_per_cpu(&[cpu]);
        assert_eq!(h.percentile(0.5), Some(1_000));
        assert_eq!(h.percentile(1.0), Some(OPEN_BUCKET_LOWER_NS));
    }

    #[test]
    fn mean_divides_sum_by_count() {
        assert_eq!(histogram_of(&[10, 20, 60]).mean_ns(), Some(30.0));
    }

    #[test]
    fn delta_since_a_later_snapshot_saturates_at_zero() {
        let earlier = with_errors(&[10, 10, 2_000], 2);
        let later = with_errors(&[10], 1);
        let delta = later.delta_since(&earlier);
        assert!(delta.is_empty());
        assert_eq!((delta.sum_ns(), delta.errors()), (0, 0));
        assert_eq!(delta.max_ns(), later.max_ns());
    }

    #[test]
    fn count_le_at_edges_and_between_them() {
        // 64 and 65 share [64, 66); 100 is in [100, 102).
        let h = histogram_of(&[0, 63, 64, 65, 100, 1 << 20, u64::MAX]);
        let cases = [
            (0, 1),
            (62, 1),
            (63, 2),
            (64, 2),
            (65, 4),
            (100, 4),
            (101, 5),
            ((1 << 20) - 1, 5),
            (1 << 20, 5),
            (u64::MAX - 1, 6),
            (u64::MAX, 7),
        ];
        for (ns, expected) in cases {
            assert_eq!(h.count_le(ns), expected, "count_le({ns})");
        }
    }

    #[test]
    fn prometheus_bounds_are_powers_of_two_on_bucket_edges() {
        let bounds: Vec<u64> = prometheus_bounds_ns().collect();
        assert_eq!(bounds.first(), Some(&1_024));
        assert_eq!(bounds.last(), Some(&(1 << 35)));
        assert_eq!(bounds.len(), 26);
        for bound in bounds {
            assert!(bound.is_power_of_two());
            assert_eq!(
                bucket_lower(bucket_index(bound)),
                bound,
                "{bound} is no edge"
            );
        }
        // The next power of two falls inside the open bucket.
        assert_eq!(bucket_index(1 << 36), bucket_index((1 << 36) - 1));
    }

    #[test]
    fn sparse_form_rejects_unknown_and_unordered_indices() {
        let sparse = |buckets: Vec<(u16, u64)>| SparseHistogram {
            buckets,
            sum_ns: 0,
            max_ns: 0,
            errors: 0,
        };
        let cases = [
            (
                vec![(1024, 1)],
                HistogramError::BucketOutOfRange { index: 1024 },
            ),
            (
                vec![(3, 1), (3, 1)],
                HistogramError::BucketOutOfOrder { index: 3 },
            ),
            (
                vec![(5, 1), (2, 1)],
                HistogramError::BucketOutOfOrder { index: 2 },
            ),
        ];
        for (buckets, error) in cases {
            assert_eq!(Histogram::try_from(sparse(buckets)), Err(error.clone()));
        }
        assert_eq!(
            HistogramError::BucketOutOfRange { index: 1024 }.to_string(),
            "histogram bucket index 1024 is out of range; the layout has 1024 buckets"
        );
    }

    #[test]
    fn sparse_form_keeps_only_non_zero_buckets() {
        let sparse = SparseHistogram::from(histogram_of(&[3, 3, 1_000]));
        assert_eq!(sparse.buckets, vec![(3, 2), (190, 1)]);
        assert_eq!((sparse.sum_ns, sparse.max_ns), (1_006, 1_000));
    }

    proptest! {
        #[test]
        fn any_value_lies_within_its_bucket_bounds(value in 0u64..1 << 40) {
            let i = bucket_index(value);
            prop_assert!(i < HIST_BUCKETS);
            prop_assert!(bucket_lower(i) <= value);
            prop_assert!(i == LAST || value < bucket_upper(i));
        }

        #[test]
        fn percentile_error_is_within_bound_for_any_value(
            value in 0..OPEN_BUCKET_LOWER_NS,
            q in 0.0..=1.0f64,
        ) {
            let p = histogram_of(&[value]).percentile(q).unwrap();
            prop_assert!(within_bound(p, value), "{p} reported for {value}");
            prop_assert!(p <= value);
        }

        #[test]
        fn percentile_is_within_bound_of_the_exact_order_statistic(
            mut values in prop::collection::vec(latency(), 1..300),
            q in 0.0..=1.0f64,
        ) {
            let h = histogram_of(&values);
            values.sort_unstable();
            for q in [q, 0.0, 0.5, 0.9, 0.99, 0.999, 1.0] {
                let exact = values[rank(q, h.count()) as usize - 1];
                let p = h.percentile(q).unwrap();
                prop_assert!(within_bound(p, exact), "q = {}: {} vs exact {}", q, p, exact);
                prop_assert!(p <= h.max_ns());
            }
        }

        #[test]
        fn merge_equals_recording_everything_into_one(
            a in prop::collection::vec(latency(), 0..50),
            b in prop::collection::vec(latency(), 0..50),
            (ea, eb) in (0u64..100, 0u64..100),
        ) {
            let mut merged = with_errors(&a, ea);
            merged.merge(&with_errors(&b, eb));
            let all: Vec<u64> = a.iter().chain(&b).copied().collect();
            prop_assert_eq!(merged, with_errors(&all, ea + eb));
        }

        #[test]
        fn merge_is_commutative_and_associative(
            a in prop::collection::vec(latency(), 0..30),
            b in prop::collection::vec(latency(), 0..30),
            c in prop::collection::vec(latency(), 0..30),
            errors in (0u64..100, 0u64..100, 0u64..100),
        ) {
            let (a, b, c) = (
                with_errors(&a, errors.0),
                with_errors(&b, errors.1),
                with_errors(&c, errors.2),
            );
            let mut ab = a.clone();
            ab.merge(&b);
            let mut ba = b.clone();
            ba.merge(&a);
            prop_assert_eq!(&ab, &ba);

            let mut ab_c = ab;
            ab_c.merge(&c);
            let mut bc = b;
            bc.merge(&c);
            let mut a_bc = a;
            a_bc.merge(&bc);
            prop_assert_eq!(ab_c, a_bc);
        }

        #[test]
        fn from_per_cpu_equals_merging_the_cpus(
            cpus in prop::collection::vec(
                (prop::collection::vec(latency(), 0..30), 0u64..100),
                0..6,
            ),
        ) {
            let cpus: Vec<Histogram> = cpus.iter().map(|(v, e)| with_errors(v, *e)).collect();
            let mut merged = Histogram::new();
            for cpu in &cpus {
                merged.merge(cpu);
            }
            let kernel: Vec<LatencyHist> = cpus.iter().map(per_cpu).collect();
            prop_assert_eq!(Histogram::from_per_cpu(&kernel), merged);
        }

        #[test]
        fn delta_since_inverts_merge(
            a in prop::collection::vec(latency(), 0..50),
            b in prop::collection::vec(latency(), 0..50),
            (ea, eb) in (0u64..100, 0u64..100),
        ) {
            let (a, b) = (with_errors(&a, ea), with_errors(&b, eb));
            let mut total = a.clone();
            total.merge(&b);
            let delta = total.delta_since(&a);
            // The delta keeps the all-time max, by design.
            prop_assert_eq!(delta.max_ns(), a.max_ns().max(b.max_ns()));
            prop_assert_eq!(delta, Histogram { max_ns: total.max_ns(), ..b });
        }

        #[test]
        fn count_sum_max_and_mean_match_the_sample(
            values in prop::collection::vec(latency(), 1..100),
        ) {
            let h = histogram_of(&values);
            let sum: u64 = values.iter().sum();
            prop_assert_eq!(h.count(), values.len() as u64);
            prop_assert_eq!(h.sum_ns(), sum);
            prop_assert_eq!(h.max_ns(), *values.iter().max().unwrap());
            prop_assert_eq!(h.mean_ns(), Some(sum as f64 / values.len() as f64));
            prop_assert!(!h.is_empty());
        }

        #[test]
        fn count_le_is_exact_at_bucket_edges_and_never_overcounts(
            values in prop::collection::vec(latency(), 0..100),
            bucket in 0..LAST,
            ns in 0u64..1 << 36,
        ) {
            let h = histogram_of(&values);
            let exact = |ns: u64| values.iter().filter(|&&v| v <= ns).count() as u64;
            let edge = bucket_upper(bucket) - 1;
            prop_assert_eq!(h.count_le(edge), exact(edge));
            prop_assert!(h.count_le(ns) <= exact(ns));
        }

        #[test]
        fn cumulative_at_edges_counts_values_below_each_bound(
            values in prop::collection::vec(latency(), 0..200),
        ) {
            let h = histogram_of(&values);
            let cumulative = h.cumulative_at_edges();
            prop_assert_eq!(cumulative.len(), prometheus_bounds_ns().count());
            for (bound, count) in cumulative {
                let exact = values.iter().filter(|&&v| v < bound).count() as u64;
                prop_assert_eq!(count, exact, "below {}", bound);
            }
        }

        #[test]
        fn sparse_form_round_trips_exactly(
            values in prop::collection::vec(any::<u64>(), 0..100),
            errors in any::<u64>(),
        ) {
            let h = with_errors(&values, errors);
            prop_assert_eq!(Histogram::try_from(SparseHistogram::from(h.clone())), Ok(h));
        }
    }
}
