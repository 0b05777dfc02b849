//! The kernel's log-linear histograms as Prometheus native histograms: the
//! bucket mapping, its error bound, and the quantile Prometheus computes.
//!
//! A native histogram of schema `s` has buckets `(2^((k-1)/2^s), 2^(k/2^s)]`
//! seconds, each `2^(2^-s)` times as wide as the last. The kernel's buckets
//! are linear inside each octave (32 per power of two), so no schema lines
//! up with them beyond the octave edges. Each kernel bucket is therefore
//! placed whole in the native bucket holding its midpoint — the value the
//! agent's own percentiles report. A fixed place per kernel bucket keeps
//! every native count a sum of kernel counts: exact, and as monotonic as
//! they are, so `rate()` and counter-reset detection see what the kernel
//! saw.
//!
//! Error: a latency `v` lies within half a kernel bucket (`1/64` of its
//! octave's start) of that midpoint, and `histogram_quantile()` answers
//! somewhere inside the native bucket holding it, whatever its
//! interpolation. So the answer is within `(1 + 1/64)·2^(2^-s) - 1` of the
//! order statistic it estimates: 3.8 % at schema 5, 2.7 % at 6, 2.1 % at 7.
//! [`SCHEMA`] is 7: it meets the design's 3 % with room for the difference
//! between what the kernel times and what a caller's own clock sees, and
//! one halving of the resolution (as a scrape-side bucket limit does)
//! still meets it. From schema 6 up every kernel bucket lands in a native
//! bucket of its own, so a finer schema costs no extra populated buckets.

use std::sync::LazyLock;

use ringwarden_ebpf_common::{HIST_BUCKETS, bucket_lower, bucket_upper};

use crate::histogram::Histogram;

/// The native schema every agent exports: buckets grow by `2^(1/128)`.
pub const SCHEMA: i32 = 7;

/// Largest relative error of a quantile Prometheus computes from these
/// native histograms, against the exact order statistic, for latencies
/// below the kernel's open bucket (about 67.6 s):
/// `(1 + 1/64)·2^(1/128) - 1`, about 2.11 %.
pub const MAX_RELATIVE_ERROR: f64 = 0.021_139_743_317_690_307;
// The design asks for 3 %.
const _: () = assert!(MAX_RELATIVE_ERROR <= 0.03);

/// Width of the zero bucket, in seconds: `2^-128`, as Prometheus' Go client
/// uses. Only latencies of 0 ns fall in it. A threshold above zero also
/// marks every histogram as native, even an empty one, for scrapers that
/// tell native from classic by it.
pub const ZERO_THRESHOLD: f64 = 2.938_735_877_055_719e-39;

const LAST: usize = HIST_BUCKETS - 1;

/// The native bucket of every kernel bucket (`None` for the 0 ns bucket,
/// which is the zero bucket).
static INDEX: LazyLock<Vec<Option<i32>>> = LazyLock::new(|| {
    (0..HIST_BUCKETS)
        .map(|i| (i > 0).then(|| index_of_seconds(representative_ns(i) / 1e9)))
        .collect()
});

/// The value a kernel bucket stands for, in ns: its only value below 64 ns,
/// its midpoint above, and the lower bound of the last, open bucket.
fn representative_ns(i: usize) -> f64 {
    let lower = bucket_lower(i);
    if i == LAST {
        return lower as f64;
    }
    let width = bucket_upper(i) - lower;
    (lower + width / 2) as f64
}

/// Index of the native bucket holding `seconds` (> 0) at [`SCHEMA`]:
/// `ceil(log2(seconds)·2^SCHEMA)`, as buckets include their upper bound.
fn index_of_seconds(seconds: f64) -> i32 {
    (seconds.log2() * f64::from(1u32 << SCHEMA)).ceil() as i32
}

/// The native bucket a kernel bucket's events are exported in; `None` for
/// the zero bucket.
pub fn native_index(kernel_bucket: usize) -> Option<i32> {
    INDEX.get(kernel_bucket).copied().flatten()
}

/// Bounds in seconds of native bucket `index`: `(lower, upper]`.
pub fn bucket_bounds(index: i32) -> (f64, f64) {
    let per_octave = f64::from(1u32 << SCHEMA);
    (
        ((f64::from(index) - 1.0) / per_octave).exp2(),
        (f64::from(index) / per_octave).exp2(),
    )
}

/// A run of consecutive native buckets starting `offset` buckets after the
/// previous run ends (for the first run: at bucket `offset`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub offset: i32,
    pub length: u32,
}

/// A latency histogram in the native form: what the protobuf exposition
/// carries, before encoding.
#[derive(Clone, Debug, PartialEq)]
pub struct NativeHistogram {
    pub count: u64,
    pub sum_seconds: f64,
    /// Latencies of 0 ns.
    pub zero_count: u64,
    /// Positive buckets: spans, and each bucket's count as the difference
    /// to the bucket before it (the first to zero), as the format wants.
    pub spans: Vec<Span>,
    pub deltas: Vec<i64>,
}

/// Gaps of at most this many empty buckets are filled with zeros rather
/// than starting a new span, which would cost more bytes (as Prometheus'
/// Go client does).
const MAX_FILLED_GAP: i32 = 2;

impl From<&Histogram> for NativeHistogram {
    fn from(h: &Histogram) -> Self {
        let mut native = NativeHistogram {
            count: h.count(),
            sum_seconds: h.sum_ns() as f64 / 1e9,
            zero_count: h.buckets()[0],
            spans: Vec::new(),
            deltas: Vec::new(),
        };
        // (native index, count), indices increasing: midpoints increase
        // with the kernel index, and so does their native bucket.
        let mut buckets: Vec<(i32, u64)> = Vec::new();
        for (i, &n) in h.buckets().iter().enumerate().skip(1) {
            if n == 0 {
                continue;
            }
            let Some(k) = native_index(i) else { continue };
            match buckets.last_mut() {
                Some((last, total)) if *last == k => *total = total.saturating_add(n),
                _ => buckets.push((k, n)),
            }
        }
        let (mut previous_index, mut previous_count) = (None::<i32>, 0u64);
        for (k, n) in buckets {
            match previous_index {
                Some(p) if k - p - 1 <= MAX_FILLED_GAP => {
                    let gap = k - p - 1;
                    let span = native.spans.last_mut().expect("a span was started");
                    span.length += gap as u32 + 1;
                    if gap > 0 {
                        native.deltas.push(-(previous_count as i64));
                        native.deltas.extend((1..gap).map(|_| 0));
                        previous_count = 0;
                    }
                }
                Some(p) => native.spans.push(Span {
                    offset: k - p - 1,
                    length: 1,
                }),
                None => native.spans.push(Span {
                    offset: k,
                    length: 1,
                }),
            }
            native.deltas.push(n as i64 - previous_count as i64);
            previous_index = Some(k);
            previous_count = n;
        }
        native
    }
}

impl NativeHistogram {
    /// `(index, count)` of every positive bucket the spans cover, empty
    /// ones included, in order.
    pub fn buckets(&self) -> Vec<(i32, u64)> {
        let mut out = Vec::with_capacity(self.deltas.len());
        let (mut index, mut count, mut deltas) = (0i32, 0i64, self.deltas.iter());
        for (n, span) in self.spans.iter().enumerate() {
            index += span.offset;
            if n > 0 {
                // The offset counts the gap after the previous span's end.
                index += 1;
            }
            for step in 0..span.length {
                if step > 0 {
                    index += 1;
                }
                count += deltas.next().copied().unwrap_or(0);
                out.push((index, count.max(0) as u64));
            }
        }
        out
    }

    /// The `q`-quantile the way Prometheus' `histogram_quantile()` takes it
    /// from a native histogram: the first bucket whose cumulative count
    /// reaches `q·count`, interpolated linearly inside it (the zero bucket
    /// spans `[0, ZERO_THRESHOLD]`). `None` when empty or `q` is outside
    /// `(0, 1]`.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let (_, lower, upper, fraction) = self.quantile_bucket(q)?;
        Some(lower + (upper - lower) * fraction)
    }

    /// Where [`NativeHistogram::quantile`] answers from: `(index, lower,
    /// upper, fraction of the bucket's count below the rank)`; index
    /// `None` for the zero bucket.
    pub fn quantile_bucket(&self, q: f64) -> Option<(Option<i32>, f64, f64, f64)> {
        if !(q > 0.0 && q <= 1.0) || self.count == 0 {
            return None;
        }
        let rank = q * self.count as f64;
        let mut seen = self.zero_count as f64;
        if seen >= rank {
            return Some((None, 0.0, ZERO_THRESHOLD, rank / seen));
        }
        for (index, n) in self.buckets() {
            if n == 0 {
                continue;
            }
            let before = seen;
            seen += n as f64;
            if seen >= rank {
                let (lower, upper) = bucket_bounds(index);
                return Some((Some(index), lower, upper, (rank - before) / n as f64));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use ringwarden_ebpf_common::{bucket_index, hist::HIST_MAX_EXP};

    fn histogram_of(values: &[u64]) -> Histogram {
        let mut h = Histogram::new();
        for &v in values {
            h.record(v);
        }
        h
    }

    #[test]
    fn the_stated_bound_is_half_a_kernel_bucket_times_one_native_bucket() {
        let growth = (1.0 / f64::from(1u32 << SCHEMA)).exp2();
        let half_kernel_bucket = 1.0 / 64.0;
        let bound = (1.0 + half_kernel_bucket) * growth - 1.0;
        assert!((bound - MAX_RELATIVE_ERROR).abs() < 1e-15, "{bound}");
        // One halving of the resolution still keeps the 3 %.
        let halved = (1.0 + half_kernel_bucket) * (2.0 * growth.ln()).exp() - 1.0;
        assert!(halved <= 0.03, "{halved}");
    }

    #[test]
    fn every_kernel_bucket_but_the_zero_one_has_a_native_bucket_of_its_own() {
        assert_eq!(native_index(0), None);
        let indices: Vec<i32> = (1..HIST_BUCKETS)
            .map(|i| native_index(i).unwrap())
            .collect();
        assert!(
            indices.windows(2).all(|w| w[0] < w[1]),
            "native indices strictly increase with the kernel's"
        );
    }

    #[test]
    fn each_kernel_buckets_midpoint_lies_inside_its_native_bucket() {
        for i in 1..LAST {
            let (lower, upper) = bucket_bounds(native_index(i).unwrap());
            let mid = representative_ns(i) / 1e9;
            assert!(
                lower < mid * (1.0 + 1e-12) && mid <= upper * (1.0 + 1e-12),
                "bucket {i}: {mid} s not in ({lower}, {upper}]"
            );
        }
    }

    #[test]
    fn a_power_of_two_seconds_is_the_upper_bound_of_its_native_bucket() {
        // 1 s is an exact kernel edge; its bucket's midpoint is just above.
        assert_eq!(index_of_seconds(1.0), 0);
        assert_eq!(index_of_seconds(2.0), 1 << SCHEMA);
        assert_eq!(index_of_seconds(0.5), -(1 << SCHEMA));
        assert_eq!(bucket_bounds(0).1, 1.0);
    }

    #[test]
    fn an_empty_histogram_has_no_buckets_and_zero_counts() {
        let n = NativeHistogram::from(&Histogram::new());
        assert_eq!(n.count, 0);
        assert!(n.spans.is_empty() && n.deltas.is_empty());
        assert_eq!(n.quantile(0.5), None);
    }

    #[test]
    fn zero_latencies_go_to_the_zero_bucket() {
        let n = NativeHistogram::from(&histogram_of(&[0, 0, 5]));
        assert_eq!(n.zero_count, 2);
        assert_eq!(n.buckets().iter().map(|b| b.1).sum::<u64>(), 1);
        assert!(n.quantile(0.5).unwrap() <= ZERO_THRESHOLD);
    }

    #[test]
    fn spans_and_deltas_encode_the_counts_of_a_known_histogram() {
        // 1 µs twice, 1.01 µs once (the next kernel bucket), 10 ms three times.
        let n = NativeHistogram::from(&histogram_of(&[
            1_000, 1_000, 1_010, 10_000_000, 10_000_000, 10_000_000,
        ]));
        let a = native_index(bucket_index(1_000)).unwrap();
        let b = native_index(bucket_index(1_010)).unwrap();
        let c = native_index(bucket_index(10_000_000)).unwrap();
        let nonzero: Vec<(i32, u64)> = n.buckets().into_iter().filter(|b| b.1 > 0).collect();
        assert_eq!(nonzero, vec![(a, 2), (b, 1), (c, 3)]);
        assert_eq!(n.count, 6);
        assert_eq!(n.spans[0].offset, a);
        // a and b are 2 or 3 native buckets apart: one span, zeros between.
        assert_eq!(n.spans.len(), 2, "{:?}", n.spans);
        assert_eq!(
            n.deltas.iter().sum::<i64>(),
            3,
            "deltas sum to the last count"
        );
    }

    /// Latencies spread over every octave below the open bucket.
    fn latency() -> impl Strategy<Value = u64> {
        (0u32..=HIST_MAX_EXP, any::<u64>()).prop_map(|(bits, r)| r & ((1u64 << bits) - 1))
    }

    proptest! {
        #[test]
        fn native_counts_are_the_kernel_counts_regrouped(
            values in prop::collection::vec(latency(), 1..300),
        ) {
            let h = histogram_of(&values);
            let n = NativeHistogram::from(&h);
            let total = n.zero_count + n.buckets().iter().map(|b| b.1).sum::<u64>();
            prop_assert_eq!(total, h.count());
            prop_assert_eq!(n.count, values.len() as u64);
            let covered: u32 = n.spans.iter().map(|s| s.length).sum();
            prop_assert_eq!(covered as usize, n.deltas.len());
        }

        #[test]
        fn every_answer_inside_the_quantiles_bucket_is_within_the_bound(
            values in prop::collection::vec(latency(), 1..300),
            q in 0.001f64..=1.0,
        ) {
            let n = NativeHistogram::from(&histogram_of(&values));
            let mut sorted = values.clone();
            sorted.sort_unstable();
            let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
            let exact = sorted[rank - 1] as f64 / 1e9;
            let (index, lower, upper, _) = n.quantile_bucket(q).unwrap();
            if exact == 0.0 {
                prop_assert_eq!(index, None);
            } else {
                // Whatever Prometheus interpolates, it answers in [lower, upper].
                for answer in [lower, upper] {
                    let error = (answer - exact).abs() / exact;
                    prop_assert!(
                        error <= MAX_RELATIVE_ERROR + 1e-12,
                        "q {} exact {} answer {} error {}", q, exact, answer, error
                    );
                }
            }
        }
    }
}
