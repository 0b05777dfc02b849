//! Prometheus `/metrics`: a collector that renders the latest snapshots, and
//! the HTTP server that serves them. Names follow DESIGN.md: `ringwarden_*`,
//! seconds as the base unit, `_total` for counters, labels `namespace`,
//! `probeset`, `probe`, `node` (plus `series` where a probe has several).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
};

use prometheus::{
    Encoder, Registry, TextEncoder,
    core::{Collector, Desc},
    proto::{self, MetricFamily, MetricType},
};
use ringwarden_core::{accounting::Counters, histogram::Histogram};

use crate::probes::Snapshot;

mod protobuf;
pub use protobuf::Format;

/// Who a probe's figures belong to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeLabels {
    pub namespace: String,
    pub probeset: String,
    pub probe: String,
    pub node: String,
}

impl ProbeLabels {
    fn pairs(&self) -> Vec<(&'static str, &str)> {
        vec![
            ("namespace", &self.namespace),
            ("probeset", &self.probeset),
            ("probe", &self.probe),
            ("node", &self.node),
        ]
    }

    /// The values of [`BASE_LABELS`], in order.
    pub fn values(&self) -> [&str; 4] {
        [&self.namespace, &self.probeset, &self.probe, &self.node]
    }
}

/// The latest figures of every running probe; the agent loop writes it, the
/// collector reads it on each scrape.
pub type SharedSnapshots = Arc<Mutex<Vec<(ProbeLabels, Snapshot)>>>;

const BASE_LABELS: [&str; 4] = ["namespace", "probeset", "probe", "node"];

/// A counter family taken from [`Counters`]: (name, help, field).
type CounterFamily = (&'static str, &'static str, fn(&Counters) -> u64);

const COUNTER_FAMILIES: [CounterFamily; 8] = [
    (
        "ringwarden_events_observed_total",
        "Completed events that passed the probe's filters (= aggregated + sampled_out + pairing_dropped).",
        |c| c.observed,
    ),
    (
        "ringwarden_events_aggregated_total",
        "Events added to an in-kernel latency histogram.",
        |c| c.aggregated,
    ),
    (
        "ringwarden_events_sampled_out_total",
        "Events left out by in-kernel sampling.",
        |c| c.sampled_out,
    ),
    (
        "ringwarden_events_pairing_dropped_total",
        "Events lost because their start was not stored or not seen.",
        |c| c.pairing_dropped,
    ),
    (
        "ringwarden_events_exported_total",
        "Events chosen for the ring-buffer event path (= delivered + ringbuf_dropped).",
        |c| c.exported,
    ),
    (
        "ringwarden_events_delivered_total",
        "Exported events written to the ring buffer.",
        |c| c.delivered,
    ),
    (
        "ringwarden_events_ringbuf_dropped_total",
        "Exported events lost because the ring buffer was full.",
        |c| c.ringbuf_dropped,
    ),
    (
        "ringwarden_start_map_full_total",
        "Event starts that could not be stored (their ends count as pairing_dropped).",
        |c| c.start_map_full,
    ),
];
const LATENCY: &str = "ringwarden_latency_seconds";
const ERRORS: &str = "ringwarden_event_errors_total";

/// Per-probe figures outside [`Counters`]: (name, help, type, value).
type ProbeFamily = (&'static str, &'static str, MetricType, fn(&Snapshot) -> f64);

const PROBE_FAMILIES: [ProbeFamily; 8] = [
    (
        "ringwarden_ringbuf_bytes",
        "Size of the probe's ring buffer, from the quota plan.",
        MetricType::GAUGE,
        |s| s.ring_bytes as f64,
    ),
    (
        "ringwarden_ringbuf_high_water_bytes",
        "Most bytes seen waiting in the ring buffer right after a write.",
        MetricType::GAUGE,
        |s| s.ring_high_water as f64,
    ),
    (
        "ringwarden_drop_ratio_predicted",
        "Fraction of exported events the quota plan predicts the ring buffer drops at the declared peak rate; \
         compare with rate(ringwarden_events_ringbuf_dropped_total) / rate(ringwarden_events_exported_total).",
        MetricType::GAUGE,
        |s| s.predicted_drop,
    ),
    (
        "ringwarden_events_received_total",
        "Ring-buffer records the agent read.",
        MetricType::COUNTER,
        |s| s.events_received as f64,
    ),
    (
        "ringwarden_events_corrupt_total",
        "Ring-buffer records that failed to decode (skipped).",
        MetricType::COUNTER,
        |s| s.decode_errors as f64,
    ),
    (
        "ringwarden_series_folded_total",
        "Aggregated events that fell into the overflow series (maxSeries reached).",
        MetricType::COUNTER,
        |s| s.counters.series_folded as f64,
    ),
    (
        "ringwarden_histogram_scans_total",
        "Series-and-CPU histograms the agent looked at when reading the probe's histograms, one load each \
         ((series in use + 1) x possible CPUs per read).",
        MetricType::COUNTER,
        |s| s.read_cost.scanned as f64,
    ),
    (
        "ringwarden_histogram_buckets_taken_total",
        "Histogram buckets the agent took from the kernel because they changed since its last read.",
        MetricType::COUNTER,
        |s| s.read_cost.buckets as f64,
    ),
];
const SLO_GOOD: &str = "ringwarden_slo_good_events_total";
const SLO_TOTAL: &str = "ringwarden_slo_events_total";

/// Merges the series of `snapshot` named by a peer address (`10.0.3.7:443`,
/// `[fd00::7]:443`) into one series per port (`port 443`), for
/// `--metrics-without-addresses`.
pub fn without_addresses(snapshot: &mut Snapshot) {
    if !snapshot
        .series
        .keys()
        .any(|k| k.parse::<std::net::SocketAddr>().is_ok())
    {
        return;
    }
    let series = std::mem::take(&mut snapshot.series);
    for (name, h) in series {
        let name = match name.parse::<std::net::SocketAddr>() {
            Ok(a) => format!("port {}", a.port()),
            Err(_) => name,
        };
        match snapshot.series.get_mut(&name) {
            Some(existing) => existing.merge(&h),
            None => {
                snapshot.series.insert(name, h);
            }
        }
    }
}

/// Renders [`SharedSnapshots`] as Prometheus families on every scrape.
pub struct SnapshotCollector {
    snapshots: SharedSnapshots,
    descs: Vec<Desc>,
}

impl SnapshotCollector {
    pub fn new(snapshots: SharedSnapshots) -> Self {
        let labels = |series: bool| {
            let mut l: Vec<String> = BASE_LABELS.iter().map(|s| s.to_string()).collect();
            if series {
                l.push("series".into());
            }
            l
        };
        let mut descs: Vec<Desc> = COUNTER_FAMILIES
            .iter()
            .map(|(name, help, _)| desc(name, help, labels(false)))
            .collect();
        descs.push(desc(
            LATENCY,
            "Latency of each event, per series (for syscalls: per syscall).",
            labels(true),
        ));
        descs.push(desc(
            ERRORS,
            "Events whose result was an error, per series.",
            labels(true),
        ));
        for (name, help, _, _) in PROBE_FAMILIES {
            descs.push(desc(name, help, labels(false)));
        }
        let slo_labels = || {
            let mut l = labels(false);
            l.push("slo".into());
            l
        };
        descs.push(desc(
            SLO_GOOD,
            "Events meeting an SLO's indicator, counted exactly in the kernel.",
            slo_labels(),
        ));
        descs.push(desc(
            SLO_TOTAL,
            "Events an SLO's indicator applies to, counted exactly in the kernel.",
            slo_labels(),
        ));
        Self { snapshots, descs }
    }
}

fn desc(name: &str, help: &str, labels: Vec<String>) -> Desc {
    Desc::new(name.into(), help.into(), labels, HashMap::new())
        .expect("metric names and labels are valid constants")
}

/// A probe's labels and `series`, in exposition order.
fn label_values_with_series<'a>(
    l: &'a ProbeLabels,
    series: &'a str,
) -> Vec<(&'static str, &'a str)> {
    let mut pairs = l.pairs();
    pairs.push(("series", series));
    pairs
}

fn label_pairs(pairs: &[(&str, &str)]) -> Vec<proto::LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut p = proto::LabelPair::default();
            p.set_name(k.to_string());
            p.set_value(v.to_string());
            p
        })
        .collect()
}

fn family(d: &Desc, kind: MetricType, metrics: Vec<proto::Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(d.fq_name.clone());
    f.set_help(d.help.clone());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

fn gauge(labels: Vec<proto::LabelPair>, value: f64) -> proto::Metric {
    let mut g = proto::Gauge::default();
    g.set_value(value);
    let mut m = proto::Metric::default();
    m.set_label(labels);
    m.set_gauge(g);
    m
}

fn counter(labels: Vec<proto::LabelPair>, value: f64) -> proto::Metric {
    let mut c = proto::Counter::default();
    c.set_value(value);
    let mut m = proto::Metric::default();
    m.set_label(labels);
    m.set_counter(c);
    m
}

fn histogram(labels: Vec<proto::LabelPair>, h: &Histogram) -> proto::Metric {
    let buckets = h
        .cumulative_at_edges()
        .into_iter()
        .map(|(le_ns, count)| {
            let mut b = proto::Bucket::default();
            b.set_upper_bound(le_ns as f64 / 1e9);
            b.set_cumulative_count(count);
            b
        })
        .collect();
    let mut p = proto::Histogram::default();
    p.set_sample_count(h.count());
    p.set_sample_sum(h.sum_ns() as f64 / 1e9);
    p.set_bucket(buckets);
    let mut m = proto::Metric::default();
    m.set_label(labels);
    m.set_histogram(p);
    m
}

impl Collector for SnapshotCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let snapshots = self
            .snapshots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut families = Vec::with_capacity(self.descs.len());
        for (i, (_, _, field)) in COUNTER_FAMILIES.iter().enumerate() {
            let metrics = snapshots
                .iter()
                .map(|(l, s)| counter(label_pairs(&l.pairs()), field(&s.counters) as f64))
                .collect();
            families.push(family(&self.descs[i], MetricType::COUNTER, metrics));
        }
        let (mut latency, mut errors) = (Vec::new(), Vec::new());
        for (l, s) in snapshots.iter() {
            for (name, h) in &s.series {
                let pairs = label_values_with_series(l, name);
                latency.push(histogram(label_pairs(&pairs), h));
                errors.push(counter(label_pairs(&pairs), h.errors() as f64));
            }
        }
        let n = COUNTER_FAMILIES.len();
        families.push(family(&self.descs[n], MetricType::HISTOGRAM, latency));
        families.push(family(&self.descs[n + 1], MetricType::COUNTER, errors));
        for (i, (_, _, kind, value)) in PROBE_FAMILIES.iter().enumerate() {
            let metrics = snapshots
                .iter()
                .map(|(l, s)| {
                    let labels = label_pairs(&l.pairs());
                    if *kind == MetricType::GAUGE {
                        gauge(labels, value(s))
                    } else {
                        counter(labels, value(s))
                    }
                })
                .collect();
            families.push(family(&self.descs[n + 2 + i], *kind, metrics));
        }
        let (mut good, mut total) = (Vec::new(), Vec::new());
        for (l, s) in snapshots.iter() {
            for t in &s.thresholds {
                let mut pairs = l.pairs();
                pairs.push(("slo", &t.slo));
                good.push(counter(label_pairs(&pairs), t.good as f64));
                total.push(counter(label_pairs(&pairs), t.total as f64));
            }
        }
        let m = n + 2 + PROBE_FAMILIES.len();
        families.push(family(&self.descs[m], MetricType::COUNTER, good));
        families.push(family(&self.descs[m + 1], MetricType::COUNTER, total));
        families
    }
}

/// Node mode's own figures: which probes run or fail and why, and the pod
/// watch behind pod selectors. Cheap to clone (the handles share values).
#[derive(Clone)]
pub struct NodeMetrics {
    /// Successful loads per probe: stays 1 while pods come and go.
    pub probe_loads: prometheus::IntCounterVec,
    /// Failed load attempts per probe and reason.
    pub probe_load_failures: prometheus::IntCounterVec,
    /// 1 per probe that should run and does not, with the reason.
    pub probe_failing: prometheus::IntGaugeVec,
    /// cgroup ids in each pod-selected probe's filter.
    pub pod_filter_cgroups: prometheus::IntGaugeVec,
    /// cgroup ids added to or removed from filters in place.
    pub pod_filter_updates: prometheus::IntCounterVec,
    /// Processes a namespaced uprobe is attached to, one by one.
    pub uprobe_processes: prometheus::IntGaugeVec,
    pub pod_watch_up: prometheus::IntGauge,
    pub pod_watch_errors: prometheus::IntCounter,
    pub pods: prometheus::IntGauge,
    /// Configurations refused before running any of them, by source.
    pub configs_refused: prometheus::IntCounterVec,
    /// The node budget in force (0: none).
    pub node_budget: prometheus::IntGauge,
    /// Locked bytes the node plan gives the probes it lets load.
    pub node_budget_planned: prometheus::IntGauge,
    /// How late each ring drain ran against its clock.
    pub drain_lateness: prometheus::Histogram,
}

impl NodeMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};
        let with_reason = [&BASE_LABELS[..], &["reason"]].concat();
        let m = Self {
            probe_loads: IntCounterVec::new(
                Opts::new(
                    "ringwarden_agent_probe_loads_total",
                    "Times a probe's programs were loaded and attached (pod changes do not reload)",
                ),
                &BASE_LABELS,
            )?,
            probe_load_failures: IntCounterVec::new(
                Opts::new(
                    "ringwarden_agent_probe_load_failures_total",
                    "Failed attempts to load a probe, by reason; retried with exponential backoff",
                ),
                &with_reason,
            )?,
            probe_failing: IntGaugeVec::new(
                Opts::new(
                    "ringwarden_agent_probe_failing",
                    "1 while a probe this node should run does not, with the reason",
                ),
                &with_reason,
            )?,
            pod_filter_cgroups: IntGaugeVec::new(
                Opts::new(
                    "ringwarden_agent_pod_filter_cgroups",
                    "Pod cgroups in the kernel filter of a probe with a podSelector",
                ),
                &BASE_LABELS,
            )?,
            pod_filter_updates: IntCounterVec::new(
                Opts::new(
                    "ringwarden_agent_pod_filter_updates_total",
                    "Pod cgroups added to or removed from a running probe's filter",
                ),
                &BASE_LABELS,
            )?,
            uprobe_processes: IntGaugeVec::new(
                Opts::new(
                    "ringwarden_agent_uprobe_processes",
                    "Processes of its pods a ProbeSet's uprobe is attached to, each on its own \
                     (no other process on the node traps)",
                ),
                &BASE_LABELS,
            )?,
            pod_watch_up: IntGauge::new(
                "ringwarden_agent_pod_watch_up",
                "1 while the last list or watch of this node's pods succeeded",
            )?,
            pod_watch_errors: IntCounter::new(
                "ringwarden_agent_pod_watch_errors_total",
                "Failed lists and watches of this node's pods (the last known pods stay in force)",
            )?,
            pods: IntGauge::new(
                "ringwarden_agent_pods",
                "Pods on this node as the pod watch last saw them",
            )?,
            node_budget: IntGauge::new(
                "ringwarden_agent_node_budget_bytes",
                "Locked kernel memory all probes on this node may take, maps and rings (0: no node budget)",
            )?,
            node_budget_planned: IntGauge::new(
                "ringwarden_agent_node_budget_planned_bytes",
                "Locked kernel memory of the maps and rings the node plan gives the probes it lets load",
            )?,
            drain_lateness: prometheus::Histogram::with_opts(
                prometheus::HistogramOpts::new(
                    "ringwarden_agent_drain_lateness_seconds",
                    "How late each ring-buffer drain ran against its drain period; a ring late \
                     by more than its drainInterval's slack drops more than its plan predicts",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ]),
            )?,
            configs_refused: IntCounterVec::new(
                Opts::new(
                    "ringwarden_agent_configs_refused_total",
                    "Configurations refused before any of it ran (unparsable, or failing the \
                     ProbeSet rules), by source: pushed or file; the running probes stay",
                ),
                &["source"],
            )?,
        };
        // Both sources from the start, so a dashboard sees 0, not nothing.
        for source in ["pushed", "file"] {
            m.configs_refused.with_label_values(&[source]);
        }
        registry.register(Box::new(m.configs_refused.clone()))?;
        registry.register(Box::new(m.probe_loads.clone()))?;
        registry.register(Box::new(m.probe_load_failures.clone()))?;
        registry.register(Box::new(m.probe_failing.clone()))?;
        registry.register(Box::new(m.pod_filter_cgroups.clone()))?;
        registry.register(Box::new(m.pod_filter_updates.clone()))?;
        registry.register(Box::new(m.uprobe_processes.clone()))?;
        registry.register(Box::new(m.pod_watch_up.clone()))?;
        registry.register(Box::new(m.pod_watch_errors.clone()))?;
        registry.register(Box::new(m.pods.clone()))?;
        registry.register(Box::new(m.node_budget.clone()))?;
        registry.register(Box::new(m.node_budget_planned.clone()))?;
        registry.register(Box::new(m.drain_lateness.clone()))?;
        Ok(m)
    }
}

/// What `/metrics` serves: a registry holding the snapshot collector, and
/// the snapshots themselves, from which the protobuf exposition draws the
/// native latency histograms (the registry's data model has no fields for
/// them). Collectors register on it as on the [`Registry`] it derefs to.
pub struct Exposition {
    registry: Registry,
    snapshots: SharedSnapshots,
}

impl std::ops::Deref for Exposition {
    type Target = Registry;

    fn deref(&self) -> &Registry {
        &self.registry
    }
}

impl Exposition {
    /// The text exposition (format 0.0.4): latency as a classic histogram
    /// with power-of-two `le` bounds.
    pub fn text(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// The delimited protobuf exposition: every family of the registry,
    /// latency as a native histogram (with the classic buckets too).
    pub fn protobuf(&self) -> Vec<u8> {
        // Gathering takes the snapshots' lock itself: take it after.
        let families = self.registry.gather();
        let snapshots = self
            .snapshots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        protobuf::encode(&families, LATENCY, &snapshots)
    }

    /// The exposition a scrape's `Accept` header asks for, with its
    /// content type.
    pub fn negotiate(&self, accept: Option<&str>) -> (&'static str, Vec<u8>) {
        match protobuf::negotiate(accept) {
            Format::Protobuf => (protobuf::CONTENT_TYPE, self.protobuf()),
            Format::Text => (TEXT_CONTENT_TYPE, self.text().into_bytes()),
        }
    }
}

/// Content type of the text exposition.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A registry holding the snapshot collector.
pub fn registry(snapshots: SharedSnapshots) -> Exposition {
    let registry = Registry::new();
    registry
        .register(Box::new(SnapshotCollector::new(snapshots.clone())))
        .expect("the collector is registered once on a fresh registry");
    Exposition {
        registry,
        snapshots,
    }
}

/// Text exposition of everything in `exposition`.
pub fn encode(exposition: &Exposition) -> String {
    exposition.text()
}

/// Binds `addr` and serves `/metrics` and `/healthz` until the task is
/// dropped, within the shared server's bounds
/// ([`ringwarden_logging::http::Limits::default`]: a 5 s header-read
/// timeout, 60 s idle, 256 connections, 16 per IP address). `/metrics`
/// answers in protobuf, with native histograms, when the scrape's `Accept`
/// header prefers it (Prometheus with
/// `--enable-feature=native-histograms`), and in text otherwise.
pub async fn serve(
    addr: SocketAddr,
    exposition: Exposition,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    serve_within(
        addr,
        exposition,
        ringwarden_logging::http::Limits::default(),
    )
    .await
}

/// [`serve`] within `limits`.
pub async fn serve_within(
    addr: SocketAddr,
    exposition: Exposition,
    limits: ringwarden_logging::http::Limits,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    use axum::{Router, http::HeaderMap, routing::get};
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let exposition = Arc::new(exposition);
    let app = Router::new()
        .route(
            "/metrics",
            get(move |headers: HeaderMap| {
                let exposition = exposition.clone();
                async move {
                    let accept = headers
                        .get(axum::http::header::ACCEPT)
                        .and_then(|v| v.to_str().ok());
                    let (content_type, body) = exposition.negotiate(accept);
                    ([("content-type", content_type)], body)
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    let task = tokio::spawn(ringwarden_logging::http::serve(
        listener,
        app,
        limits,
        Arc::new(|reason| tracing::debug!(reason, "metrics connection refused")),
        std::future::pending(),
    ));
    Ok((local, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_addresses_can_be_left_out_merging_series_by_port() {
        let mut snap = Snapshot::default();
        let one = |ns: u64| {
            let mut h = Histogram::new();
            h.record(ns);
            h
        };
        snap.series.insert("10.0.3.7:443".into(), one(1_000));
        snap.series.insert("[fd00::7]:443".into(), one(2_000));
        snap.series.insert("10.0.3.8:80".into(), one(3_000));
        snap.series.insert("other".into(), one(4_000));
        without_addresses(&mut snap);
        let names: Vec<&str> = snap.series.keys().map(String::as_str).collect();
        assert_eq!(names, ["other", "port 443", "port 80"]);
        assert_eq!(snap.series["port 443"].count(), 2);
    }

    fn one_probe() -> Exposition {
        let mut snap = Snapshot::default();
        snap.counters.observed = 3;
        snap.counters.aggregated = 3;
        let mut h = Histogram::new();
        for ns in [1_000, 2_000, 3_000_000] {
            h.record(ns);
        }
        snap.series.insert("getppid".into(), h);
        snap.thresholds.push(crate::probes::ThresholdCount {
            slo: "default/fast".into(),
            good: 2,
            total: 3,
        });
        let labels = ProbeLabels {
            namespace: "default".into(),
            probeset: "demo".into(),
            probe: "sys".into(),
            node: "n1".into(),
        };
        registry(Arc::new(Mutex::new(vec![(labels, snap)])))
    }

    #[test]
    fn protobuf_exposition_has_every_family_and_latency_as_a_native_histogram() {
        use prost::Message;
        use ringwarden_core::native::{self, NativeHistogram, Span};
        use ringwarden_ebpf_common::bucket_index;
        use ringwarden_proto::prometheus as pb;

        let exposition = one_probe();
        let bytes = exposition.protobuf();
        let mut rest = &bytes[..];
        let mut families = std::collections::BTreeMap::new();
        while !rest.is_empty() {
            let f = pb::MetricFamily::decode_length_delimited(&mut rest).unwrap();
            families.insert(f.name().to_owned(), f);
        }
        let text_names: std::collections::BTreeSet<String> = exposition
            .text()
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap().to_owned())
            .collect();
        assert_eq!(
            families
                .keys()
                .cloned()
                .collect::<std::collections::BTreeSet<_>>(),
            text_names
        );
        let observed = &families["ringwarden_events_observed_total"].metric[0];
        assert_eq!(observed.counter.as_ref().unwrap().value(), 3.0);

        let latency = &families[LATENCY];
        assert_eq!(latency.r#type(), pb::MetricType::Histogram);
        let m = &latency.metric[0];
        let labels: Vec<(&str, &str)> = m.label.iter().map(|l| (l.name(), l.value())).collect();
        assert_eq!(
            labels,
            [
                ("namespace", "default"),
                ("probeset", "demo"),
                ("probe", "sys"),
                ("node", "n1"),
                ("series", "getppid")
            ]
        );
        let h = m.histogram.as_ref().unwrap();
        assert_eq!(h.schema(), native::SCHEMA);
        assert!(h.zero_threshold() > 0.0, "marks the histogram native");
        assert_eq!(h.sample_count(), 3);
        assert!((h.sample_sum() - 0.003_003).abs() < 1e-12);
        let decoded = NativeHistogram {
            count: h.sample_count(),
            sum_seconds: h.sample_sum(),
            zero_count: h.zero_count(),
            spans: h
                .positive_span
                .iter()
                .map(|s| Span {
                    offset: s.offset(),
                    length: s.length(),
                })
                .collect(),
            deltas: h.positive_delta.clone(),
        };
        let nonzero: Vec<(i32, u64)> = decoded.buckets().into_iter().filter(|b| b.1 > 0).collect();
        let at = |ns| native::native_index(bucket_index(ns)).unwrap();
        assert_eq!(
            nonzero,
            [(at(1_000), 1), (at(2_000), 1), (at(3_000_000), 1)]
        );
        // The classic buckets ride along, as in the text.
        assert_eq!(h.bucket.len(), prometheus_bucket_count());
    }

    fn prometheus_bucket_count() -> usize {
        ringwarden_core::histogram::prometheus_bounds_ns().count()
    }

    #[test]
    fn a_scrape_gets_the_format_its_accept_header_prefers() {
        let exposition = one_probe();
        let (kind, body) = exposition.negotiate(Some(
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3",
        ));
        assert_eq!(kind, protobuf::CONTENT_TYPE);
        assert_eq!(body, exposition.protobuf());
        let (kind, body) = exposition.negotiate(None);
        assert_eq!(kind, TEXT_CONTENT_TYPE);
        assert_eq!(String::from_utf8(body).unwrap(), exposition.text());
    }

    async fn connect_from(from: &str, to: SocketAddr) -> tokio::net::TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
        socket.connect(to).await.unwrap()
    }

    #[tokio::test]
    async fn slow_header_connections_cannot_stop_the_agents_healthz_and_are_closed_after_the_timeout()
     {
        use std::time::Duration;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let limits = ringwarden_logging::http::Limits::default();
        let (addr, _server) = serve("127.0.0.1:0".parse().unwrap(), one_probe())
            .await
            .unwrap();
        // An attacker (127.0.0.2) opens 1 100 connections that send part
        // of a request line and stall.
        let mut attack = Vec::new();
        for _ in 0..1_100 {
            let mut s = connect_from("127.0.0.2", addr).await;
            let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: ").await;
            attack.push(s);
        }
        // The kubelet and Prometheus (127.0.0.1) get their answers at once.
        for path in ["/healthz", "/metrics"] {
            let started = std::time::Instant::now();
            let mut s = connect_from("127.0.0.1", addr).await;
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
            let mut answer = String::new();
            s.read_to_string(&mut answer).await.unwrap();
            assert!(answer.starts_with("HTTP/1.1 200 OK"), "{path}: {answer:?}");
            assert!(started.elapsed() < Duration::from_millis(500), "{path}");
        }
        // All are closed: past the per-address cap at once, the rest (the
        // first to connect) by the header-read timeout.
        let started = std::time::Instant::now();
        let mut closed_at_once = 0;
        for s in attack.iter_mut().rev() {
            let mut buf = [0u8; 256];
            loop {
                let read = tokio::time::timeout(Duration::from_secs(8), s.read(&mut buf)).await;
                match read.expect("a slow connection was left open") {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            if started.elapsed() < Duration::from_secs(1) {
                closed_at_once += 1;
            }
        }
        assert_eq!(closed_at_once, 1_100 - limits.max_connections_per_address);
        let took = started.elapsed();
        assert!(
            took >= limits.header_read_timeout - Duration::from_secs(1)
                && took < limits.header_read_timeout + Duration::from_secs(2),
            "{took:?}"
        );
    }

    #[test]
    fn exposition_has_counters_and_a_latency_histogram_in_seconds() {
        let mut snap = Snapshot::default();
        snap.counters.observed = 3;
        snap.counters.aggregated = 3;
        let mut h = Histogram::new();
        for ns in [1_000, 2_000, 3_000_000] {
            h.record(ns);
        }
        snap.series.insert("getppid".into(), h);
        snap.ring_bytes = 65536;
        snap.predicted_drop = 0.25;
        snap.thresholds.push(crate::probes::ThresholdCount {
            slo: "default/fast".into(),
            good: 2,
            total: 3,
        });
        let labels = ProbeLabels {
            namespace: "default".into(),
            probeset: "demo".into(),
            probe: "sys".into(),
            node: "n1".into(),
        };
        let text = encode(&registry(Arc::new(Mutex::new(vec![(labels, snap)]))));
        let base = r#"namespace="default",probeset="demo",probe="sys",node="n1""#;
        assert!(
            text.contains(&format!("ringwarden_events_observed_total{{{base}}} 3")),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "ringwarden_events_pairing_dropped_total{{{base}}} 0"
            )),
            "{text}"
        );
        assert!(
            text.contains("# TYPE ringwarden_latency_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "ringwarden_latency_seconds_count{{{base},series=\"getppid\"}} 3"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!("ringwarden_ringbuf_bytes{{{base}}} 65536")),
            "{text}"
        );
        assert!(
            text.contains("# TYPE ringwarden_drop_ratio_predicted gauge"),
            "{text}"
        );
        assert!(
            text.contains(&format!("ringwarden_drop_ratio_predicted{{{base}}} 0.25")),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "ringwarden_slo_good_events_total{{{base},slo=\"default/fast\"}} 2"
            )),
            "{text}"
        );
        // 1 µs and 2 µs lie below 2^11 ns = 2.048 µs; 3 ms does not.
        assert!(
            text.contains(&format!(
                "ringwarden_latency_seconds_bucket{{{base},series=\"getppid\",le=\"0.000002048\"}} 2"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "ringwarden_latency_seconds_bucket{{{base},series=\"getppid\",le=\"+Inf\"}} 3"
            )),
            "{text}"
        );
    }
}
