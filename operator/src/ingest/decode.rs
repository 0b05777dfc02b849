//! Stream → domain: the agent messages (`Hello`, `Report`) checked and
//! bounded into plain data — names, counters, sparse histograms, load
//! failures — before anything is counted. A message over a bound is
//! refused whole, naming the field. Pure.

use ringwarden_core::accounting::Counters;
use ringwarden_ebpf_common::HIST_BUCKETS;
use ringwarden_proto::v1;

/// Most probes one report may carry.
const MAX_PROBES: usize = 2_048;
/// Most series one probe may report (`maxSeries` plus the overflow series).
const MAX_SERIES: usize = 4_097;
/// Most thresholds and load errors one probe may report.
const MAX_THRESHOLDS: usize = 16;
const MAX_LOAD_ERRORS: usize = 16;
/// Longest name (node, namespace, object, series, boot id).
const MAX_NAME: usize = 253;
/// Longest load-error message kept.
const MAX_MESSAGE: usize = 1_024;

/// Names a probe: `namespace/probeset/probe`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProbeRef {
    pub namespace: String,
    pub probeset: String,
    pub probe: String,
}

impl std::fmt::Display for ProbeRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.probeset, self.probe)
    }
}

/// Why a Hello or a Report was rejected; the stream ends with
/// `INVALID_ARGUMENT` and this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("{field} is missing")]
    Missing { field: &'static str },
    #[error("{field} is longer than {max}")]
    TooLong { field: &'static str, max: usize },
    #[error("{field} has more than {max} entries")]
    TooMany { field: &'static str, max: usize },
    #[error(
        "histogram of series {series:?}: {problem}; send the non-zero buckets as two lists of \
         equal length, indices strictly increasing and below {HIST_BUCKETS}"
    )]
    Histogram {
        series: String,
        problem: &'static str,
    },
}

/// Who an agent says it is (its Hello), checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentInfo {
    pub node: String,
    pub agent_version: String,
    pub boot_id: String,
    pub kernel_version: String,
    pub btf: bool,
    pub ringbuf: bool,
    pub page_size: u32,
    pub config_version: String,
    /// The node's possible CPUs; 0 when the agent did not say.
    pub possible_cpus: u32,
}

impl TryFrom<v1::Hello> for AgentInfo {
    type Error = ReportError;

    fn try_from(h: v1::Hello) -> Result<Self, Self::Error> {
        Ok(Self {
            node: name("hello.node_name", h.node_name)?,
            boot_id: name("hello.boot_id", h.boot_id)?,
            agent_version: bounded("hello.agent_version", h.agent_version)?,
            kernel_version: bounded("hello.kernel_version", h.kernel_version)?,
            btf: h.btf,
            ringbuf: h.ringbuf,
            page_size: h.page_size,
            possible_cpus: h.possible_cpus,
            config_version: bounded("hello.config_version", h.config_version)?,
        })
    }
}

fn name(field: &'static str, s: String) -> Result<String, ReportError> {
    if s.is_empty() {
        return Err(ReportError::Missing { field });
    }
    bounded(field, s)
}

fn bounded(field: &'static str, s: String) -> Result<String, ReportError> {
    if s.len() > MAX_NAME {
        return Err(ReportError::TooLong {
            field,
            max: MAX_NAME,
        });
    }
    Ok(s)
}

/// A latency histogram as reports carry it: the non-zero buckets, indices
/// strictly increasing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sparse {
    pub buckets: Vec<(u16, u64)>,
    pub sum_ns: u64,
    pub max_ns: u64,
    pub errors: u64,
}

impl Sparse {
    pub(crate) fn from_proto(series: &str, h: &v1::Histogram) -> Result<Self, ReportError> {
        let problem = |problem| ReportError::Histogram {
            series: series.to_owned(),
            problem,
        };
        if h.bucket_index.len() != h.bucket_count.len() {
            return Err(problem("bucket_index and bucket_count differ in length"));
        }
        let mut buckets = Vec::with_capacity(h.bucket_index.len());
        let mut previous = None;
        for (&i, &n) in h.bucket_index.iter().zip(&h.bucket_count) {
            let i = u16::try_from(i)
                .ok()
                .filter(|&i| usize::from(i) < HIST_BUCKETS)
                .ok_or_else(|| problem("a bucket index is out of range"))?;
            if previous.is_some_and(|p| i <= p) {
                return Err(problem("bucket indices are not strictly increasing"));
            }
            previous = Some(i);
            if n > 0 {
                buckets.push((i, n));
            }
        }
        Ok(Self {
            buckets,
            sum_ns: h.sum_ns,
            max_ns: h.max_ns,
            errors: h.errors,
        })
    }

    /// Events recorded since `earlier`, an older histogram of the same
    /// source (saturating; the maximum is this one's).
    pub fn delta_since(&self, earlier: &Sparse) -> Sparse {
        self.delta_since_parts(
            earlier.buckets.iter().copied(),
            earlier.sum_ns,
            earlier.errors,
        )
    }

    /// [`Sparse::delta_since`] an earlier histogram given by its buckets
    /// (indices increasing), sum and errors, however it is stored.
    pub fn delta_since_parts(
        &self,
        earlier: impl Iterator<Item = (u16, u64)>,
        sum_ns: u64,
        errors: u64,
    ) -> Sparse {
        let mut buckets = Vec::with_capacity(self.buckets.len());
        let mut rest = earlier.peekable();
        for &(i, n) in &self.buckets {
            while rest.next_if(|(j, _)| *j < i).is_some() {}
            let before = rest.next_if(|(j, _)| *j == i).map_or(0, |(_, m)| m);
            let d = n.saturating_sub(before);
            if d > 0 {
                buckets.push((i, d));
            }
        }
        Sparse {
            buckets,
            sum_ns: self.sum_ns.saturating_sub(sum_ns),
            max_ns: self.max_ns,
            errors: self.errors.saturating_sub(errors),
        }
    }

    /// The events of all `histograms` together; indexing a dense array is
    /// cheaper than merging sparse lists pairwise.
    pub fn sum<'a>(histograms: impl IntoIterator<Item = &'a Sparse>) -> Sparse {
        let mut dense = vec![0u64; HIST_BUCKETS];
        let mut out = Sparse::default();
        for h in histograms {
            for &(i, n) in &h.buckets {
                let b = &mut dense[usize::from(i)];
                *b = b.saturating_add(n);
            }
            out.sum_ns = out.sum_ns.saturating_add(h.sum_ns);
            out.max_ns = out.max_ns.max(h.max_ns);
            out.errors = out.errors.saturating_add(h.errors);
        }
        out.buckets = dense
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| (i as u16, *n))
            .collect();
        out
    }

    /// Adds `other`'s events.
    pub fn merge(&mut self, other: &Sparse) {
        let (a, b) = (&self.buckets, &other.buckets);
        let mut merged = Vec::with_capacity(a.len().max(b.len()));
        let (mut i, mut j) = (0, 0);
        loop {
            match (a.get(i), b.get(j)) {
                (Some(x), Some(y)) if x.0 == y.0 => {
                    merged.push((x.0, x.1.saturating_add(y.1)));
                    i += 1;
                    j += 1;
                }
                (Some(x), Some(y)) if x.0 < y.0 => {
                    merged.push(*x);
                    i += 1;
                }
                (_, Some(y)) => {
                    merged.push(*y);
                    j += 1;
                }
                (Some(x), None) => {
                    merged.push(*x);
                    i += 1;
                }
                (None, None) => break,
            }
        }
        self.buckets = merged;
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
        self.errors = self.errors.saturating_add(other.errors);
    }

    /// Number of events.
    pub fn count(&self) -> u64 {
        self.buckets
            .iter()
            .fold(0u64, |acc, (_, n)| acc.saturating_add(*n))
    }
}

/// Why a probe is not running, as an agent reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadFailure {
    pub kind: v1::load_error::Kind,
    /// One line: the message, and where the verifier gave up.
    pub message: String,
}

/// Exact good/total counts of one SLO threshold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThresholdSample {
    pub slo: String,
    pub threshold_id: u64,
    pub good: u64,
    pub total: u64,
}

/// One probe of a report, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeSample {
    pub id: ProbeRef,
    pub counters: Option<Counters>,
    pub ring_bytes: u64,
    pub ring_high_water: u64,
    pub events_received: u64,
    pub events_corrupt: u64,
    pub series: Vec<(String, Sparse)>,
    pub thresholds: Vec<ThresholdSample>,
    pub load_errors: Vec<LoadFailure>,
    pub sample_every: u64,
}

/// A report, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub boot_id: String,
    pub seq: u64,
    pub unix_ms: u64,
    pub config_version: String,
    pub probes: Vec<ProbeSample>,
}

impl TryFrom<v1::Report> for Sample {
    type Error = ReportError;

    fn try_from(r: v1::Report) -> Result<Self, Self::Error> {
        if r.probes.len() > MAX_PROBES {
            return Err(ReportError::TooMany {
                field: "report.probes",
                max: MAX_PROBES,
            });
        }
        let probes = r
            .probes
            .into_iter()
            .map(ProbeSample::try_from)
            .collect::<Result<_, _>>()?;
        Ok(Self {
            boot_id: name("report.boot_id", r.boot_id)?,
            seq: r.seq,
            unix_ms: r.unix_millis,
            config_version: bounded("report.config_version", r.config_version)?,
            probes,
        })
    }
}

impl TryFrom<v1::ProbeReport> for ProbeSample {
    type Error = ReportError;

    fn try_from(p: v1::ProbeReport) -> Result<Self, Self::Error> {
        let id = p.id.ok_or(ReportError::Missing { field: "probe.id" })?;
        let id = ProbeRef {
            // Empty for a ClusterProbeSet's probe.
            namespace: bounded("probe.id.namespace", id.namespace)?,
            probeset: name("probe.id.probeset", id.probeset)?,
            probe: name("probe.id.probe", id.probe)?,
        };
        for (field, len, max) in [
            ("probe.histograms", p.histograms.len(), MAX_SERIES),
            ("probe.thresholds", p.thresholds.len(), MAX_THRESHOLDS),
            ("probe.load_errors", p.load_errors.len(), MAX_LOAD_ERRORS),
        ] {
            if len > max {
                return Err(ReportError::TooMany { field, max });
            }
        }
        let series = p
            .histograms
            .into_iter()
            .map(|s| {
                let series = name("histogram.series", s.series)?;
                let h = s.histogram.unwrap_or_default();
                let sparse = Sparse::from_proto(&series, &h)?;
                Ok((series, sparse))
            })
            .collect::<Result<_, ReportError>>()?;
        let thresholds = p
            .thresholds
            .into_iter()
            .map(|t| {
                Ok(ThresholdSample {
                    slo: name("threshold.slo", t.slo)?,
                    threshold_id: t.threshold_id,
                    good: t.good,
                    total: t.total,
                })
            })
            .collect::<Result<_, ReportError>>()?;
        let load_errors = p
            .load_errors
            .into_iter()
            .map(|e| LoadFailure {
                kind: e.kind(),
                message: one_line(&e.message, &e.verifier_log),
            })
            .collect();
        Ok(Self {
            id,
            counters: p.counters.map(|c| Counters {
                observed: c.observed,
                aggregated: c.aggregated,
                sampled_out: c.sampled_out,
                pairing_dropped: c.pairing_dropped,
                exported: c.exported,
                delivered: c.delivered,
                ringbuf_dropped: c.ringbuf_dropped,
                start_map_full: c.start_map_full,
                series_folded: c.series_folded,
            }),
            ring_bytes: p.ring_bytes,
            ring_high_water: p.ring_high_water_bytes,
            events_received: p.events_received,
            events_corrupt: p.events_corrupt,
            series,
            thresholds,
            load_errors,
            sample_every: p.sample_every,
        })
    }
}

/// The message's first line and the verifier log's last, bounded.
fn one_line(message: &str, verifier_log: &str) -> String {
    let first = message.lines().next().unwrap_or_default().trim();
    let last = verifier_log
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(str::trim);
    let line = match last {
        Some(l) if !first.contains(l) => format!("{first} (verifier: {l})"),
        _ => first.to_owned(),
    };
    truncate(&line, MAX_MESSAGE)
}

/// `s` cut to at most `max` bytes, with an ellipsis when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_errors_become_one_bounded_line() {
        let line = one_line(
            "program rw_sys_exit rejected\nmore",
            "0: r1 = 0\n\ninvalid access\n",
        );
        assert_eq!(
            line,
            "program rw_sys_exit rejected (verifier: invalid access)"
        );
        assert!(one_line(&"x".repeat(5000), "").len() <= MAX_MESSAGE);
    }

    use proptest::prelude::*;

    /// A histogram with arbitrary (often out-of-range, mismatched or
    /// overflowing) bucket indexes and counts.
    fn histogram() -> impl Strategy<Value = v1::Histogram> {
        (
            proptest::collection::vec(any::<u32>(), 0..8),
            proptest::collection::vec(any::<u64>(), 0..8),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(
                |(bucket_index, bucket_count, sum_ns, errors)| v1::Histogram {
                    bucket_index,
                    bucket_count,
                    sum_ns,
                    max_ns: sum_ns,
                    errors,
                },
            )
    }

    fn report() -> impl Strategy<Value = v1::Report> {
        let series = proptest::collection::vec(("[a-z]{0,300}", histogram()), 0..4);
        let probe = ("[a-z]{0,70}", series).prop_map(|(name, series)| v1::ProbeReport {
            id: Some(v1::ProbeId {
                namespace: "shop".into(),
                probeset: "web".into(),
                probe: name,
            }),
            histograms: series
                .into_iter()
                .map(|(series, h)| v1::SeriesHistogram {
                    series,
                    histogram: Some(h),
                })
                .collect(),
            ..Default::default()
        });
        (
            ".{0,300}",
            any::<u64>(),
            proptest::collection::vec(probe, 0..4),
        )
            .prop_map(|(boot_id, seq, probes)| v1::Report {
                boot_id,
                seq,
                probes,
                ..Default::default()
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// Whatever a client sends, decoding refuses or yields data within
        /// the bounds; it never panics. (`fuzz/` runs the same decoder on
        /// raw bytes under libFuzzer.)
        #[test]
        fn any_report_is_refused_or_bounded(r in report()) {
            if let Ok(sample) = Sample::try_from(r) {
                prop_assert!(sample.boot_id.len() <= MAX_NAME);
                for p in &sample.probes {
                    prop_assert!(p.series.len() <= MAX_SERIES);
                    for (name, h) in &p.series {
                        prop_assert!(name.len() <= MAX_NAME);
                        prop_assert!(h.buckets.iter().all(|(i, _)| usize::from(*i) < HIST_BUCKETS));
                    }
                }
            }
        }
    }
}
