//! What the agent tells the operator: probe snapshots and load failures as
//! protocol messages (`proto/ringwarden.proto`, docs/protocol.md). Pure: no
//! IO, so the mapping is tested without a kernel or a network.

use ringwarden_core::histogram::Histogram;
use ringwarden_crds::AgentProbe;
use ringwarden_proto::v1::{self, load_error::Kind};

use crate::probes::{ProbeError, Snapshot};

/// Protocol limit on `LoadError.message`.
const MESSAGE_LIMIT: usize = 1024;
/// Protocol limit on `LoadError.verifier_log`.
const VERIFIER_LOG_LIMIT: usize = 4096;
/// Where [`ProbeError::Program`] messages begin the verifier's log.
const VERIFIER_LOG_MARK: &str = "; verifier log (last lines):\n";

/// Why a probe is not running, as reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadFailure {
    pub kind: Kind,
    /// One line, at most 1 KiB.
    pub message: String,
    /// The end of the verifier log, at most 4 KiB; empty unless rejected.
    pub verifier_log: String,
}

impl LoadFailure {
    /// Classifies a load error the way the operator's node problems need:
    /// missing BTF, a rejected program, a hook the kernel lacks, or other.
    pub fn from_error(e: &ProbeError) -> Self {
        let text = e.to_string();
        let (kind, message, log) = match e {
            ProbeError::MissingBtf(_) => (Kind::MissingBtf, text.as_str(), ""),
            ProbeError::Program { .. } => match text.split_once(VERIFIER_LOG_MARK) {
                Some((head, log)) => (Kind::Verifier, head, log),
                None => (Kind::Verifier, text.as_str(), ""),
            },
            ProbeError::Attach { message, .. } | ProbeError::Uprobe { message, .. }
                if missing_hook(message) =>
            {
                (Kind::MissingTracepoint, text.as_str(), "")
            }
            _ => (Kind::Other, text.as_str(), ""),
        };
        Self {
            kind,
            message: one_line(message, MESSAGE_LIMIT),
            verifier_log: tail(log, VERIFIER_LOG_LIMIT).to_owned(),
        }
    }

    /// A failure that is not a [`ProbeError`] (a pod selector that cannot
    /// be resolved, say).
    pub fn other(message: &str) -> Self {
        Self {
            kind: Kind::Other,
            message: one_line(message, MESSAGE_LIMIT),
            verifier_log: String::new(),
        }
    }

    fn to_proto(&self) -> v1::LoadError {
        v1::LoadError {
            kind: self.kind.into(),
            message: self.message.clone(),
            verifier_log: self.verifier_log.clone(),
        }
    }
}

/// Whether an attach error says the hook does not exist (ENOENT from
/// tracefs or BTF, or a symbol the binary lacks: aya says "unknown
/// symbol").
fn missing_hook(message: &str) -> bool {
    [
        "No such file",
        "not found",
        "does not exist",
        "no symbol",
        "unknown symbol",
    ]
    .iter()
    .any(|m| message.contains(m))
}

/// `s` on one line, cut at a character boundary to at most `limit` bytes.
fn one_line(s: &str, limit: usize) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut end = flat.len().min(limit);
    while !flat.is_char_boundary(end) {
        end -= 1;
    }
    flat[..end].to_owned()
}

/// The last at most `limit` bytes of `s`, from a character boundary: the
/// verifier says why it gave up at the end of its log.
fn tail(s: &str, limit: usize) -> &str {
    let mut start = s.len().saturating_sub(limit);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// A probe's entry in a report: its snapshot when it runs, its failure
/// when it does not.
pub fn probe_report(probe: &AgentProbe, state: Result<&Snapshot, &LoadFailure>) -> v1::ProbeReport {
    let mut out = v1::ProbeReport {
        id: Some(v1::ProbeId {
            namespace: probe.namespace.clone(),
            probeset: probe.probeset.clone(),
            probe: probe.spec.name.clone(),
        }),
        sample_every: probe.sample_every.max(1),
        ..Default::default()
    };
    match state {
        Ok(s) => {
            let c = &s.counters;
            out.counters = Some(v1::Counters {
                observed: c.observed,
                aggregated: c.aggregated,
                sampled_out: c.sampled_out,
                pairing_dropped: c.pairing_dropped,
                exported: c.exported,
                delivered: c.delivered,
                ringbuf_dropped: c.ringbuf_dropped,
                start_map_full: c.start_map_full,
                series_folded: c.series_folded,
            });
            out.ring_bytes = s.ring_bytes;
            out.ring_high_water_bytes = s.ring_high_water;
            out.events_received = s.events_received;
            out.events_corrupt = s.decode_errors;
            out.histograms = s
                .series
                .iter()
                .map(|(name, h)| v1::SeriesHistogram {
                    series: name.clone(),
                    histogram: Some(histogram(h)),
                })
                .collect();
            out.thresholds = s
                .thresholds
                .iter()
                .filter_map(|t| {
                    let def = probe.thresholds.iter().find(|d| d.slo == t.slo)?;
                    Some(v1::ThresholdCount {
                        slo: t.slo.clone(),
                        threshold_id: ringwarden_proto::threshold_id(
                            &def.slo,
                            def.latency_ns,
                            def.errors,
                            &def.series,
                        ),
                        good: t.good,
                        total: t.total,
                    })
                })
                .collect();
        }
        Err(failure) => out.load_errors = vec![failure.to_proto()],
    }
    out
}

/// The sparse wire form: non-zero buckets only, indices increasing.
pub fn histogram(h: &Histogram) -> v1::Histogram {
    let (bucket_index, bucket_count) = h
        .buckets()
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(i, n)| (i as u32, *n))
        .unzip();
    v1::Histogram {
        bucket_index,
        bucket_count,
        sum_ns: h.sum_ns(),
        max_ns: h.max_ns(),
        errors: h.errors(),
    }
}

#[cfg(test)]
mod tests {
    use ringwarden_core::accounting::Counters;
    use ringwarden_crds::Threshold;

    use super::*;
    use crate::probes::ThresholdCount;

    fn probe() -> AgentProbe {
        serde_yaml_ng::from_str(
            "{namespace: shop, probeset: web, spec: {name: sys, kind: syscalls}, ringBytes: 4096, \
             sampleEvery: 4, reportInterval: 10s, \
             thresholds: [{slo: shop/fast, latencyNs: 5000000, series: [read]}]}",
        )
        .unwrap()
    }

    #[test]
    fn a_running_probe_reports_its_counters_histograms_and_threshold_ids() {
        let mut read = Histogram::new();
        for ns in [100, 100, 7_000, 9_000_000] {
            read.record(ns);
        }
        let snapshot = Snapshot {
            counters: Counters {
                observed: 10,
                aggregated: 4,
                sampled_out: 6,
                exported: 3,
                delivered: 2,
                ringbuf_dropped: 1,
                ..Counters::default()
            },
            series: [("read".to_string(), read.clone())].into(),
            thresholds: vec![ThresholdCount {
                slo: "shop/fast".into(),
                good: 3,
                total: 4,
            }],
            ring_bytes: 4096,
            ring_high_water: 88,
            events_received: 2,
            decode_errors: 0,
            ..Snapshot::default()
        };
        let p = probe();
        let r = probe_report(&p, Ok(&snapshot));
        assert_eq!(r.id.as_ref().unwrap().probe, "sys");
        assert_eq!(r.sample_every, 4);
        let c = r.counters.unwrap();
        assert_eq!((c.observed, c.aggregated, c.sampled_out), (10, 4, 6));
        assert_eq!((c.exported, c.delivered, c.ringbuf_dropped), (3, 2, 1));
        assert_eq!((r.ring_bytes, r.ring_high_water_bytes), (4096, 88));
        let h = r.histograms[0].histogram.as_ref().unwrap();
        assert_eq!(h.bucket_count.iter().sum::<u64>(), 4);
        assert!(h.bucket_index.windows(2).all(|w| w[0] < w[1]));
        assert_eq!((h.sum_ns, h.max_ns), (read.sum_ns(), 9_000_000));
        let t = &r.thresholds[0];
        let Threshold {
            slo,
            latency_ns,
            errors,
            series,
        } = &p.thresholds[0];
        assert_eq!(
            t.threshold_id,
            ringwarden_proto::threshold_id(slo, *latency_ns, *errors, series)
        );
        assert_eq!((t.good, t.total), (3, 4));
        assert!(r.load_errors.is_empty());
    }

    #[test]
    fn a_failed_probe_reports_why_and_no_counters() {
        let rejected = ProbeError::Program {
            program: "rw_sys_exit",
            message: format!(
                "permission denied{VERIFIER_LOG_MARK}{}R1 invalid mem access 'scalar'",
                "0: (b7) r0 = 0\n".repeat(400)
            ),
        };
        let f = LoadFailure::from_error(&rejected);
        assert_eq!(f.kind, Kind::Verifier);
        assert_eq!(
            f.message,
            "program rw_sys_exit was rejected: permission denied"
        );
        assert!(f.verifier_log.len() <= VERIFIER_LOG_LIMIT);
        assert!(f.verifier_log.ends_with("invalid mem access 'scalar'"));
        let r = probe_report(&probe(), Err(&f));
        assert!(r.counters.is_none());
        assert_eq!(r.load_errors[0].kind, i32::from(Kind::Verifier));

        let missing = ProbeError::Attach {
            program: "rw_rq_wakeup",
            tracepoint: "sched_wakeup",
            message: "No such file or directory (os error 2)".into(),
        };
        assert_eq!(
            LoadFailure::from_error(&missing).kind,
            Kind::MissingTracepoint
        );
        let symbol = ProbeError::Uprobe {
            binary: "/usr/bin/app".into(),
            symbol: "handler".into(),
            message: "error resolving symbol: unknown symbol `handler`".into(),
        };
        assert_eq!(
            LoadFailure::from_error(&symbol).kind,
            Kind::MissingTracepoint
        );
        assert_eq!(
            LoadFailure::from_error(&ProbeError::MissingBtf("gone".into())).kind,
            Kind::MissingBtf
        );
        let long = LoadFailure::other(&format!("first\nsecond {}", "é".repeat(2000)));
        assert!(long.message.len() <= MESSAGE_LIMIT && !long.message.contains('\n'));
        assert_eq!(long.kind, Kind::Other);
    }
}
