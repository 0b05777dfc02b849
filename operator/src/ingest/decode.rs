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

/// Most bytes of a stream's first message, which must be a Hello: five
/// strings of at most [`MAX_NAME`] bytes (1 280 bytes with their tags and
/// lengths), two booleans and the page size and CPU count within their
/// bounds (11 bytes), and the `AgentMessage` around them (3 bytes) come to
/// 1 294 bytes; the limit is over three times that, room for fields a
/// newer agent adds.
pub const MAX_HELLO_MESSAGE: usize = 4 << 10;

/// Most bytes of any later message (a Report). The largest legitimate
/// report is one the operator counts in full: [`MAX_NODE_SERIES`]
/// histogram series holding [`MAX_NODE_BUCKETS`] buckets between them,
/// each bucket a 2-byte index and a count below 2^42 (6 bytes; 4 · 10^12
/// events in one bucket since the probe loaded), so 8 MiB of buckets and
/// 1.4 MiB of series names, sums and framing (at most 90 bytes a series),
/// plus four probes' names and counters. The limit leaves a quarter more
/// (`the_largest_report_the_operator_counts_fits_the_report_limit` builds
/// one). What a message of this size may decode into is bounded by
/// [`prescan`], not by its size.
///
/// [`MAX_NODE_SERIES`]: super::handed::MAX_NODE_SERIES
/// [`MAX_NODE_BUCKETS`]: super::handed::MAX_NODE_BUCKETS
pub const MAX_REPORT_MESSAGE: usize = 12 << 20;

/// Most histogram series one message may carry, all probes together:
/// twice what a node's report is counted with (16 384, `handed.rs`), so a
/// report past that cap still has its counters and thresholds counted.
pub const MAX_MESSAGE_SERIES: usize = 32_768;
/// Most histogram buckets one message may carry, all series together:
/// twice what a node's report is counted with (1 048 576).
pub const MAX_MESSAGE_BUCKETS: usize = 2 << 20;
/// Most thresholds and load errors one message may carry, all probes
/// together.
const MAX_MESSAGE_THRESHOLDS: usize = MAX_PROBES * MAX_THRESHOLDS;
const MAX_MESSAGE_LOAD_ERRORS: usize = MAX_PROBES * MAX_LOAD_ERRORS;
/// Longest load-error message and verifier log accepted on the wire (the
/// agent sends at most 1 KiB and 4 KiB; kept here to [`MAX_MESSAGE`]).
const MAX_WIRE_MESSAGE: usize = 4 << 10;
const MAX_WIRE_VERIFIER_LOG: usize = 16 << 10;

/// Reads an `AgentMessage`'s wire bytes without decoding them, and refuses
/// one whose repeated fields, all occurrences together, hold more entries
/// than the bounds above, or whose strings are longer than theirs: the
/// counts prost would allocate for are checked before it allocates. A
/// message that passes decodes into at most [`MAX_PROBES`] probes,
/// [`MAX_MESSAGE_SERIES`] series and [`MAX_MESSAGE_BUCKETS`] buckets,
/// whatever its bytes (a 4 MiB message of empty probe entries would
/// otherwise decode into two million of them, 536 MiB). Unknown fields
/// are skipped, as prost skips them; groups and malformed bytes are
/// refused. Pure, and linear in the bytes.
pub fn prescan(bytes: &[u8]) -> Result<(), ReportError> {
    let mut counts = Counts::default();
    scan(bytes, Kind::AgentMessage, &mut counts)?;
    for (field, n, max) in [
        ("report.probes", counts.probes, MAX_PROBES),
        (
            "report.probes[].histograms",
            counts.series,
            MAX_MESSAGE_SERIES,
        ),
        (
            "report.probes[].histograms[].histogram.bucket_index",
            counts.bucket_index,
            MAX_MESSAGE_BUCKETS,
        ),
        (
            "report.probes[].histograms[].histogram.bucket_count",
            counts.bucket_count,
            MAX_MESSAGE_BUCKETS,
        ),
        (
            "report.probes[].thresholds",
            counts.thresholds,
            MAX_MESSAGE_THRESHOLDS,
        ),
        (
            "report.probes[].load_errors",
            counts.load_errors,
            MAX_MESSAGE_LOAD_ERRORS,
        ),
    ] {
        if n > max {
            return Err(ReportError::TooMany { field, max });
        }
    }
    Ok(())
}

/// The messages of the agent's side of the protocol, as [`prescan`] walks
/// them.
#[derive(Clone, Copy)]
enum Kind {
    AgentMessage,
    Hello,
    Report,
    ProbeReport,
    ProbeId,
    SeriesHistogram,
    Histogram,
    ThresholdCount,
    LoadError,
    /// Scalars only (`Counters`).
    Flat,
}

#[derive(Default)]
struct Counts {
    probes: usize,
    series: usize,
    bucket_index: usize,
    bucket_count: usize,
    thresholds: usize,
    load_errors: usize,
}

/// What a length-delimited field of `kind` holds.
enum Len {
    Message(Kind),
    String(&'static str, usize),
    /// Packed varints, counted.
    Packed(fn(&mut Counts) -> &mut usize),
    Skip,
}

fn field(kind: Kind, number: u64) -> Len {
    use Kind::*;
    match (kind, number) {
        (AgentMessage, 1) => Len::Message(Hello),
        (AgentMessage, 2) => Len::Message(Report),
        (Hello, 1) => Len::String("hello.node_name", MAX_NAME),
        (Hello, 2) => Len::String("hello.agent_version", MAX_NAME),
        (Hello, 3) => Len::String("hello.boot_id", MAX_NAME),
        (Hello, 4) => Len::String("hello.kernel_version", MAX_NAME),
        (Hello, 8) => Len::String("hello.config_version", MAX_NAME),
        (Report, 1) => Len::String("report.boot_id", MAX_NAME),
        (Report, 4) => Len::String("report.config_version", MAX_NAME),
        (Report, 5) => Len::Message(ProbeReport),
        (ProbeReport, 1) => Len::Message(ProbeId),
        (ProbeReport, 2) => Len::Message(Flat),
        (ProbeReport, 7) => Len::Message(SeriesHistogram),
        (ProbeReport, 8) => Len::Message(ThresholdCount),
        (ProbeReport, 9) => Len::Message(LoadError),
        (ProbeId, 1) => Len::String("probe.id.namespace", MAX_NAME),
        (ProbeId, 2) => Len::String("probe.id.probeset", MAX_NAME),
        (ProbeId, 3) => Len::String("probe.id.probe", MAX_NAME),
        (SeriesHistogram, 1) => Len::String("histogram.series", MAX_NAME),
        (SeriesHistogram, 2) => Len::Message(Histogram),
        (Histogram, 1) => Len::Packed(|c| &mut c.bucket_index),
        (Histogram, 2) => Len::Packed(|c| &mut c.bucket_count),
        (ThresholdCount, 1) => Len::String("threshold.slo", MAX_NAME),
        (LoadError, 2) => Len::String("load_error.message", MAX_WIRE_MESSAGE),
        (LoadError, 3) => Len::String("load_error.verifier_log", MAX_WIRE_VERIFIER_LOG),
        _ => Len::Skip,
    }
}

/// Counts the entries a length-delimited field of `kind` numbered
/// `number` adds when it occurs once.
fn entry(counts: &mut Counts, kind: Kind, number: u64) {
    match (kind, number) {
        (Kind::Report, 5) => counts.probes += 1,
        (Kind::ProbeReport, 7) => counts.series += 1,
        (Kind::ProbeReport, 8) => counts.thresholds += 1,
        (Kind::ProbeReport, 9) => counts.load_errors += 1,
        _ => {}
    }
}

fn malformed() -> ReportError {
    ReportError::Malformed
}

fn varint(bytes: &[u8], at: &mut usize) -> Result<u64, ReportError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*at).ok_or_else(malformed)?;
        *at += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(malformed())
}

fn scan(bytes: &[u8], kind: Kind, counts: &mut Counts) -> Result<(), ReportError> {
    let mut at = 0;
    while at < bytes.len() {
        let key = varint(bytes, &mut at)?;
        let number = key >> 3;
        match key & 7 {
            0 => {
                varint(bytes, &mut at)?;
                // An unpacked bucket list: one entry per occurrence.
                if let (Kind::Histogram, 1 | 2) = (kind, number) {
                    match number {
                        1 => counts.bucket_index += 1,
                        _ => counts.bucket_count += 1,
                    }
                }
            }
            1 => at = at.checked_add(8).ok_or_else(malformed)?,
            5 => at = at.checked_add(4).ok_or_else(malformed)?,
            2 => {
                let len = usize::try_from(varint(bytes, &mut at)?).map_err(|_| malformed())?;
                let end = at.checked_add(len).filter(|&e| e <= bytes.len());
                let body = &bytes[at..end.ok_or_else(malformed)?];
                at += len;
                entry(counts, kind, number);
                match field(kind, number) {
                    Len::Message(inner) => scan(body, inner, counts)?,
                    Len::String(field, max) if len > max => {
                        return Err(ReportError::TooLong { field, max });
                    }
                    Len::Packed(count) => {
                        *count(counts) += body.iter().filter(|b| **b & 0x80 == 0).count();
                    }
                    Len::String(..) | Len::Skip => {}
                }
            }
            // Groups (3, 4) are not in the protocol; 6 and 7 are no wire
            // type.
            _ => return Err(malformed()),
        }
        if at > bytes.len() {
            return Err(malformed());
        }
    }
    Ok(())
}

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
    #[error("the message is not valid protobuf")]
    Malformed,
    #[error("{field} holds a control character")]
    Control { field: &'static str },
    #[error("{field} is {value}; allowed: {allowed}")]
    OutOfRange {
        field: &'static str,
        value: u64,
        allowed: &'static str,
    },
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
            agent_version: printable("hello.agent_version", h.agent_version)?,
            kernel_version: printable("hello.kernel_version", h.kernel_version)?,
            btf: h.btf,
            ringbuf: h.ringbuf,
            page_size: page_size(h.page_size)?,
            possible_cpus: possible_cpus(h.possible_cpus)?,
            config_version: bounded("hello.config_version", h.config_version)?,
        })
    }
}

/// Most CPUs a Linux kernel can be built for (`NR_CPUS` is at most 8 192,
/// `CONFIG_NR_CPUS_RANGE_END` on x86-64 and arm64): the operator sizes
/// every per-CPU map of the node by `possible_cpus`, so a larger number
/// would only inflate the node's figures.
pub const MAX_POSSIBLE_CPUS: u32 = 8_192;
/// The page sizes Linux runs with: 4 KiB (x86-64), 16 and 64 KiB (arm64,
/// ppc64), up to 256 KiB (hexagon, ppc44x).
pub const MIN_PAGE_SIZE: u32 = 4 << 10;
pub const MAX_PAGE_SIZE: u32 = 256 << 10;

fn possible_cpus(n: u32) -> Result<u32, ReportError> {
    if n > MAX_POSSIBLE_CPUS {
        return Err(ReportError::OutOfRange {
            field: "hello.possible_cpus",
            value: u64::from(n),
            allowed: "0 (not known) to 8192, Linux's largest NR_CPUS",
        });
    }
    Ok(n)
}

fn page_size(n: u32) -> Result<u32, ReportError> {
    if n != 0 && !(n.is_power_of_two() && (MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&n)) {
        return Err(ReportError::OutOfRange {
            field: "hello.page_size",
            value: u64::from(n),
            allowed: "0 (not known) or a power of two from 4096 to 262144",
        });
    }
    Ok(n)
}

fn name(field: &'static str, s: String) -> Result<String, ReportError> {
    if s.is_empty() {
        return Err(ReportError::Missing { field });
    }
    bounded(field, s)
}

/// [`bounded`], and without control characters: these reach logs and
/// status as they are.
fn printable(field: &'static str, s: String) -> Result<String, ReportError> {
    let s = bounded(field, s)?;
    if s.chars().any(char::is_control) {
        return Err(ReportError::Control { field });
    }
    Ok(s)
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

    use prost::Message;

    fn hello() -> v1::Hello {
        v1::Hello {
            node_name: "node-a".into(),
            agent_version: "0.1.0".into(),
            boot_id: "b".into(),
            kernel_version: "6.18.0-1-amd64".into(),
            page_size: 4096,
            possible_cpus: 2,
            ..Default::default()
        }
    }

    #[test]
    fn a_hello_saying_four_billion_cpus_is_refused_naming_the_field_and_limit() {
        let e = AgentInfo::try_from(v1::Hello {
            possible_cpus: u32::MAX,
            ..hello()
        })
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "hello.possible_cpus is 4294967295; allowed: 0 (not known) to 8192, Linux's largest \
             NR_CPUS"
        );
        for ok in [0, 1, 2, 8_192] {
            let info = AgentInfo::try_from(v1::Hello {
                possible_cpus: ok,
                ..hello()
            });
            assert_eq!(info.unwrap().possible_cpus, ok);
        }
        assert!(
            AgentInfo::try_from(v1::Hello {
                possible_cpus: 8_193,
                ..hello()
            })
            .is_err()
        );
    }

    #[test]
    fn a_hello_with_an_impossible_page_size_or_long_or_unprintable_strings_is_refused() {
        for bad in [1, 4095, 6_000, 512 << 10, u32::MAX] {
            let e = AgentInfo::try_from(v1::Hello {
                page_size: bad,
                ..hello()
            })
            .unwrap_err();
            assert!(e.to_string().starts_with("hello.page_size is "), "{e}");
        }
        for ok in [0, 4096, 16 << 10, 64 << 10, 256 << 10] {
            assert!(
                AgentInfo::try_from(v1::Hello {
                    page_size: ok,
                    ..hello()
                })
                .is_ok()
            );
        }
        let long = "x".repeat(MAX_NAME + 1);
        type Set = fn(&mut v1::Hello, String);
        let cases: [(&str, Set); 5] = [
            ("hello.node_name", |h, s| h.node_name = s),
            ("hello.agent_version", |h, s| h.agent_version = s),
            ("hello.boot_id", |h, s| h.boot_id = s),
            ("hello.kernel_version", |h, s| h.kernel_version = s),
            ("hello.config_version", |h, s| h.config_version = s),
        ];
        for (field, set) in cases {
            let mut h = hello();
            set(&mut h, long.clone());
            assert_eq!(
                AgentInfo::try_from(h).unwrap_err(),
                ReportError::TooLong {
                    field,
                    max: MAX_NAME
                }
            );
        }
        let e = AgentInfo::try_from(v1::Hello {
            kernel_version: "6.18\x1b[2J".into(),
            ..hello()
        })
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "hello.kernel_version holds a control character"
        );
    }

    #[test]
    fn the_largest_hello_fits_the_first_message_limit_with_room_to_spare() {
        let name = "n".repeat(MAX_NAME);
        let largest = v1::AgentMessage {
            message: Some(v1::agent_message::Message::Hello(v1::Hello {
                node_name: name.clone(),
                agent_version: name.clone(),
                boot_id: name.clone(),
                kernel_version: name.clone(),
                config_version: name,
                btf: true,
                ringbuf: true,
                page_size: MAX_PAGE_SIZE,
                possible_cpus: MAX_POSSIBLE_CPUS,
            })),
        };
        let len = largest.encoded_len();
        assert_eq!(len, 1_294);
        assert!(len * 3 <= MAX_HELLO_MESSAGE);
        assert_eq!(prescan(&largest.encode_to_vec()), Ok(()));
    }

    /// A report at the caps a node is counted with (`handed.rs`): 16 384
    /// series over four probes, 1 048 576 buckets with counts near 2^42.
    fn largest_counted_report() -> v1::AgentMessage {
        let per_series =
            crate::ingest::handed::MAX_NODE_BUCKETS / crate::ingest::handed::MAX_NODE_SERIES;
        let probe = |p: usize| v1::ProbeReport {
            id: Some(v1::ProbeId {
                namespace: "n".repeat(63),
                probeset: "p".repeat(253),
                probe: format!("probe-{p}"),
            }),
            counters: Some(v1::Counters {
                observed: u64::MAX,
                ..Default::default()
            }),
            histograms: (0..crate::ingest::handed::MAX_NODE_SERIES / 4)
                .map(|s| v1::SeriesHistogram {
                    series: format!("10.244.{s}.1:65535"),
                    histogram: Some(v1::Histogram {
                        bucket_index: (0..per_series as u32).map(|i| 1023 - i).rev().collect(),
                        bucket_count: vec![(1 << 42) - 1; per_series],
                        sum_ns: u64::MAX,
                        max_ns: u64::MAX,
                        errors: u64::MAX,
                    }),
                })
                .collect(),
            sample_every: 1,
            ..Default::default()
        };
        v1::AgentMessage {
            message: Some(v1::agent_message::Message::Report(v1::Report {
                boot_id: "b".repeat(36),
                seq: u64::MAX,
                unix_millis: u64::MAX,
                config_version: "c".repeat(64),
                probes: (0..4).map(probe).collect(),
            })),
        }
    }

    #[test]
    fn the_largest_report_the_operator_counts_fits_the_report_limit() {
        let largest = largest_counted_report();
        let len = largest.encoded_len();
        // Within the limit, with at least a fifth of it to spare.
        assert!(len * 5 <= MAX_REPORT_MESSAGE * 4, "{len}");
        // Not sized for something far larger than it.
        assert!(len * 2 > MAX_REPORT_MESSAGE, "{len}");
        assert_eq!(prescan(&largest.encode_to_vec()), Ok(()));
    }

    fn wire(m: &v1::AgentMessage) -> Vec<u8> {
        m.encode_to_vec()
    }

    fn report_of(probes: Vec<v1::ProbeReport>) -> v1::AgentMessage {
        v1::AgentMessage {
            message: Some(v1::agent_message::Message::Report(v1::Report {
                boot_id: "b".into(),
                probes,
                ..Default::default()
            })),
        }
    }

    #[test]
    fn repeated_fields_past_their_bounds_are_refused_before_decoding_naming_the_field() {
        let too_many = |field: &'static str, max: usize| Err(ReportError::TooMany { field, max });
        let empty = vec![v1::ProbeReport::default(); MAX_PROBES + 1];
        assert_eq!(
            prescan(&wire(&report_of(empty))),
            too_many("report.probes", MAX_PROBES)
        );
        // Spread over probes, and over repeated occurrences of the report
        // (which protobuf merges), the totals still count.
        let series = |n| v1::ProbeReport {
            histograms: vec![v1::SeriesHistogram::default(); n],
            ..Default::default()
        };
        let half = wire(&report_of(vec![series(MAX_MESSAGE_SERIES / 2); 1]));
        assert_eq!(prescan(&half), Ok(()));
        let mut twice_and_one = [half.clone(), half].concat();
        twice_and_one.extend(wire(&report_of(vec![series(1)])));
        assert_eq!(
            prescan(&twice_and_one),
            too_many("report.probes[].histograms", MAX_MESSAGE_SERIES)
        );
        // Buckets, packed and unpacked alike.
        let buckets = |n: usize| v1::SeriesHistogram {
            series: "s".into(),
            histogram: Some(v1::Histogram {
                bucket_index: vec![1; n],
                bucket_count: vec![1; n],
                ..Default::default()
            }),
        };
        let over = v1::ProbeReport {
            histograms: (0..=MAX_MESSAGE_BUCKETS / HIST_BUCKETS)
                .map(|_| buckets(HIST_BUCKETS))
                .collect(),
            ..Default::default()
        };
        assert_eq!(
            prescan(&wire(&report_of(vec![over]))),
            too_many(
                "report.probes[].histograms[].histogram.bucket_index",
                MAX_MESSAGE_BUCKETS
            )
        );
        let mut unpacked = Vec::new();
        for _ in 0..=MAX_MESSAGE_BUCKETS {
            unpacked.extend([0x08, 0x01]); // bucket_index = 1, unpacked
        }
        assert_eq!(
            scan_one(Kind::Histogram, &unpacked),
            (MAX_MESSAGE_BUCKETS + 1, 0)
        );
        let thresholds = v1::ProbeReport {
            thresholds: vec![v1::ThresholdCount::default(); MAX_MESSAGE_THRESHOLDS + 1],
            ..Default::default()
        };
        assert_eq!(
            prescan(&wire(&report_of(vec![thresholds]))),
            too_many("report.probes[].thresholds", MAX_MESSAGE_THRESHOLDS)
        );
        let long = v1::ProbeReport {
            id: Some(v1::ProbeId {
                probe: "p".repeat(MAX_NAME + 1),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            prescan(&wire(&report_of(vec![long]))),
            Err(ReportError::TooLong {
                field: "probe.id.probe",
                max: MAX_NAME
            })
        );
        for garbage in [
            &[0xff, 0xff][..],
            &[0x12, 0x05, 0x00],
            &[0x0b],
            &[0x09, 0, 0],
        ] {
            assert_eq!(prescan(garbage), Err(ReportError::Malformed), "{garbage:?}");
        }
    }

    fn scan_one(kind: Kind, bytes: &[u8]) -> (usize, usize) {
        let mut counts = Counts::default();
        scan(bytes, kind, &mut counts).unwrap();
        (counts.bucket_index, counts.bucket_count)
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
        /// What passes the pre-scan decodes into no more entries than
        /// it counted; bytes it refuses are never decoded.
        #[test]
        fn what_passes_the_prescan_decodes_within_its_bounds(
            r in report(),
            cut in any::<prop::sample::Index>(),
            flip in any::<(prop::sample::Index, u8)>(),
        ) {
            let mut bytes = wire(&report_of(r.probes));
            if !bytes.is_empty() {
                let i = cut.index(bytes.len());
                bytes.truncate(i.max(1));
                let j = flip.0.index(bytes.len());
                bytes[j] ^= flip.1;
            }
            if prescan(&bytes).is_ok()
                && let Ok(m) = v1::AgentMessage::decode(bytes.as_slice())
                && let Some(v1::agent_message::Message::Report(r)) = m.message
            {
                prop_assert!(r.probes.len() <= MAX_PROBES);
                let series: usize = r.probes.iter().map(|p| p.histograms.len()).sum();
                prop_assert!(series <= MAX_MESSAGE_SERIES);
            }
        }

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
