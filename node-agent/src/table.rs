//! The standalone agent's table: pure formatting of snapshots, no IO.

use std::{fmt::Write as _, time::Duration};

use serde::Serialize;

use ringwarden_core::quantity::format_bytes;
use ringwarden_crds::ProbeKind;

use crate::probes::Snapshot;

/// One line of the table: a series' figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    pub series: String,
    /// Events since the probe was loaded.
    pub count: u64,
    /// Events per second over the last interval.
    pub rate: f64,
    /// Latency percentiles and maximum since the probe was loaded, in ns.
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
    /// Calls that returned an error, since the probe was loaded.
    pub errors: u64,
}

/// Rows for the busiest `top` series, busiest first (ties by name).
/// `previous` is the snapshot one `elapsed` earlier, for the rates.
pub fn rows(
    current: &Snapshot,
    previous: Option<&Snapshot>,
    elapsed: Duration,
    top: usize,
) -> Vec<Row> {
    let secs = elapsed.as_secs_f64();
    let mut rows: Vec<Row> = current
        .series
        .iter()
        .map(|(name, h)| {
            let before = previous
                .and_then(|p| p.series.get(name))
                .map_or(0, |h| h.count());
            let count = h.count();
            let rate = if secs > 0.0 {
                count.saturating_sub(before) as f64 / secs
            } else {
                0.0
            };
            Row {
                series: name.clone(),
                count,
                rate,
                p50_ns: h.percentile(0.50).unwrap_or(0),
                p90_ns: h.percentile(0.90).unwrap_or(0),
                p99_ns: h.percentile(0.99).unwrap_or(0),
                max_ns: h.max_ns(),
                errors: h.errors(),
            }
        })
        .collect();
    rows.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.series.cmp(&b.series)));
    rows.truncate(top);
    rows
}

/// Formats nanoseconds with three significant digits and a unit: `812ns`,
/// `4.21µs`, `2.05ms`, `1.50s`.
pub fn fmt_ns(ns: u64) -> String {
    let v = ns as f64;
    let (value, unit) = match ns {
        0..1_000 => return format!("{ns}ns"),
        1_000..1_000_000 => (v / 1e3, "µs"),
        1_000_000..1_000_000_000 => (v / 1e6, "ms"),
        _ => (v / 1e9, "s"),
    };
    let digits = if value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else {
        2
    };
    format!("{value:.digits$}{unit}")
}

/// A drop fraction as a percentage with one decimal, or two below 1 %
/// (where a plan's bound usually lies).
pub fn drop_percent(fraction: f64) -> String {
    let pct = 100.0 * fraction;
    if pct > 0.0 && pct < 1.0 {
        format!("{pct:.2}%")
    } else {
        format!("{pct:.1}%")
    }
}

/// Renders the table for one probe: a header line, the rows, and the
/// loss-accounting line.
pub fn render(title: &str, rows: &[Row], snapshot: &Snapshot) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{title}");
    let kind = snapshot.kind.unwrap_or(ProbeKind::Syscalls);
    let column = match kind {
        ProbeKind::Syscalls => "SYSCALL",
        ProbeKind::TcpConnect => "DESTINATION",
        ProbeKind::TcpRetransmit => "DESTINATION",
        ProbeKind::Runqueue => "TASKS",
        ProbeKind::BlockIo => "DEVICE OP",
        ProbeKind::Uprobe => "FUNCTION",
        ProbeKind::GoRuntime => "RUNTIME (PROCESS)",
    };
    if kind.has_latency() {
        let _ = writeln!(
            out,
            "{column:<22} {:>12} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "COUNT", "RATE/s", "P50", "P90", "P99", "MAX", "ERRORS"
        );
    } else {
        let _ = writeln!(
            out,
            "{column:<22} {:>12} {:>10} {:>9}",
            "COUNT", "RATE/s", "ERRORS"
        );
    }
    for r in rows {
        if kind.has_latency() {
            let _ = writeln!(
                out,
                "{:<22} {:>12} {:>10.1} {:>9} {:>9} {:>9} {:>9} {:>9}",
                r.series,
                r.count,
                r.rate,
                fmt_ns(r.p50_ns),
                fmt_ns(r.p90_ns),
                fmt_ns(r.p99_ns),
                fmt_ns(r.max_ns),
                r.errors
            );
        } else {
            let _ = writeln!(
                out,
                "{:<22} {:>12} {:>10.1} {:>9}",
                r.series, r.count, r.rate, r.errors
            );
        }
    }
    if rows.is_empty() {
        let _ = writeln!(out, "(no events yet)");
    }
    let c = &snapshot.counters;
    let _ = writeln!(
        out,
        "accounting: observed {} = aggregated {} + sampled_out {} + pairing_dropped {} \
         (start_map_full {}, series_folded {})",
        c.observed,
        c.aggregated,
        c.sampled_out,
        c.pairing_dropped,
        c.start_map_full,
        c.series_folded
    );
    let fill = if snapshot.ring_bytes > 0 {
        100.0 * snapshot.ring_high_water as f64 / snapshot.ring_bytes as f64
    } else {
        0.0
    };
    let _ = writeln!(
        out,
        "events:     exported {} = delivered {} + ringbuf_dropped {} (drop {}, predicted {}); \
         ring {} (high water {} = {fill:.1}%), received {}, corrupt {}",
        c.exported,
        c.delivered,
        c.ringbuf_dropped,
        drop_percent(c.ringbuf_drop()),
        drop_percent(snapshot.predicted_drop),
        format_bytes(snapshot.ring_bytes),
        snapshot.ring_high_water,
        snapshot.events_received,
        snapshot.decode_errors
    );
    for t in &snapshot.thresholds {
        let sli = if t.total > 0 {
            format!("{:.3}%", 100.0 * t.good as f64 / t.total as f64)
        } else {
            "no data".into()
        };
        let _ = writeln!(
            out,
            "slo {}: good {} / total {} = {sli} (exact, counted in the kernel)",
            t.slo, t.good, t.total
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use ringwarden_core::histogram::Histogram;

    use super::*;

    fn snapshot(series: &[(&str, &[u64])]) -> Snapshot {
        let mut s = Snapshot::default();
        for (name, values) in series {
            let mut h = Histogram::new();
            for v in *values {
                h.record(*v);
            }
            s.series.insert(name.to_string(), h);
        }
        s
    }

    #[test]
    fn nanoseconds_are_shown_with_three_significant_digits() {
        let cases = [
            (0, "0ns"),
            (812, "812ns"),
            (4_213, "4.21µs"),
            (42_130, "42.1µs"),
            (2_050_000, "2.05ms"),
            (1_500_000_000, "1.50s"),
            (125_000_000_000, "125s"),
        ];
        for (ns, want) in cases {
            assert_eq!(fmt_ns(ns), want, "{ns}");
        }
    }

    #[test]
    fn rows_are_sorted_by_count_and_rates_use_the_previous_snapshot() {
        let before = snapshot(&[("getppid", &[100; 4])]);
        let now = snapshot(&[("getppid", &[100; 10]), ("read", &[1000; 2])]);
        let rows = rows(&now, Some(&before), Duration::from_secs(2), 10);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].series, "getppid");
        assert_eq!(rows[0].count, 10);
        assert_eq!(rows[0].rate, 3.0);
        assert_eq!(rows[0].p50_ns, 100);
        assert_eq!(rows[1].series, "read");
        assert_eq!(rows[1].rate, 1.0);
    }

    #[test]
    fn the_table_shows_rows_and_the_accounting_line() {
        let mut s = snapshot(&[("getppid", &[100; 3])]);
        s.counters.observed = 4;
        s.counters.aggregated = 3;
        s.counters.pairing_dropped = 1;
        let text = render("probe sys", &rows(&s, None, Duration::ZERO, 5), &s);
        assert!(text.contains("getppid"), "{text}");
        assert!(
            text.contains("observed 4 = aggregated 3 + sampled_out 0 + pairing_dropped 1"),
            "{text}"
        );
        s.counters.exported = 1000;
        s.counters.delivered = 680;
        s.counters.ringbuf_dropped = 320;
        s.predicted_drop = 1.0 - 682.0 / 1000.0;
        let text = render("probe sys", &rows(&s, None, Duration::ZERO, 5), &s);
        assert!(
            text.contains(
                "exported 1000 = delivered 680 + ringbuf_dropped 320 (drop 32.0%, predicted 31.8%)"
            ),
            "{text}"
        );
        let empty = render("probe sys", &[], &Snapshot::default());
        assert!(empty.contains("(no events yet)"), "{empty}");
    }
}
