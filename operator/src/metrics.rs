//! The operator's own Prometheus metrics, and the HTTP routes for
//! `/metrics`, `/healthz` and `/readyz`. No IO of its own.

use std::{sync::Arc, time::Instant};

use axum::{Router, extract::State, http::StatusCode, routing::get};
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Controller names used as the `controller` label.
pub mod controller {
    /// Writes ProbeSet status and Events.
    pub const PROBESET: &str = "probeset";
    /// Writes the agent ConfigMap and DaemonSet.
    pub const AGENT: &str = "agent";
    /// Writes SLO status and snapshots.
    pub const SLO: &str = "slo";
}

/// Counters and timings of reconciles and writes, registered on an injected
/// registry so tests read them directly.
#[derive(Clone)]
pub struct Metrics {
    pub reconciles: IntCounterVec,
    pub reconcile_errors: IntCounterVec,
    pub reconcile_duration: HistogramVec,
    pub writes: IntCounterVec,
    pub leader: IntGauge,
    /// Watch errors by resource (`probesets`, `nodes`, `slos`).
    pub watch_errors: IntCounterVec,
    /// Stored objects the operator cannot decode, by resource; each has an
    /// `Invalid` condition saying why.
    pub undecodable: IntGaugeVec,
    /// SLOs whose last snapshot write failed (their `Persisted` condition
    /// is False): a failover now would restore older state.
    pub slo_snapshots_unsaved: IntGauge,
    pub ingest: IngestMetrics,
}

/// What agents report and what the operator makes of it: ingest counts
/// and timings, and the aggregated figures the ProbeSet and SLO status
/// show, with the labels DESIGN.md fixes (`namespace`, `probeset`,
/// `probe`).
#[derive(Clone)]
pub struct IngestMetrics {
    /// Reports by outcome: `ingested`, `stale` (a repeat), `other_boot`,
    /// `replayed`, `baseline`, `unknown_node`, `invalid`.
    pub reports: IntCounterVec,
    /// Reports refused whole or in part, by reason (`handed::refusal`),
    /// each reason once per report.
    pub reports_refused: IntCounterVec,
    /// Connections to `/metrics`, `/healthz` and `/readyz` closed unserved,
    /// by the cap they were over (`connections`, `per_address`).
    pub http_connections_refused: IntCounterVec,
    /// Time from a report's arrival to its acknowledgement being queued.
    pub ingest_duration: prometheus::Histogram,
    /// Agent streams open now.
    pub agents_connected: IntGauge,
    /// Streams refused, by reason (`unauthenticated`, `wrong_audience`,
    /// `forbidden`, `no_node`, `review_failed`, `wrong_node`,
    /// `unknown_node`, `boot_retired`, `not_leading`).
    pub refused: IntCounterVec,
    /// Per ProbeSet: `desired`, `ready` and `reporting` nodes.
    pub nodes: GaugeVec,
    /// Per ProbeSet: events per second across nodes.
    pub events_per_second: GaugeVec,
    /// Per ProbeSet and data path (`ringbuf`, `pairing`): fraction of
    /// events lost over the last interval.
    pub drop_ratio: GaugeVec,
    /// Per SLO: good over total events in the window.
    pub slo_sli: GaugeVec,
    /// Per SLO: fraction of the error budget left.
    pub slo_budget_remaining: GaugeVec,
    /// Per SLO and window (`fast`, `slow`): burn rate.
    pub slo_burn_rate: GaugeVec,
}
impl Metrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let reconciles = IntCounterVec::new(
            Opts::new(
                "ringwarden_operator_reconciles_total",
                "Reconciles run, by controller.",
            ),
            &["controller"],
        )?;
        let reconcile_errors = IntCounterVec::new(
            Opts::new(
                "ringwarden_operator_reconcile_errors_total",
                "Reconciles that failed and were requeued, by controller and error.",
            ),
            &["controller", "error"],
        )?;
        let reconcile_duration = HistogramVec::new(
            HistogramOpts::new(
                "ringwarden_operator_reconcile_duration_seconds",
                "Time a reconcile took, API calls included.",
            )
            .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0]),
            &["controller"],
        )?;
        let writes = IntCounterVec::new(
            Opts::new(
                "ringwarden_operator_writes_total",
                "Writes to the API server, by kind of object (an unchanged world causes none).",
            ),
            &["kind"],
        )?;
        let leader = IntGauge::new(
            "ringwarden_operator_leader",
            "1 while this replica holds the leader Lease and may write.",
        )?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(reconcile_errors.clone()))?;
        registry.register(Box::new(reconcile_duration.clone()))?;
        registry.register(Box::new(writes.clone()))?;
        let watch_errors = IntCounterVec::new(
            Opts::new(
                "ringwarden_operator_watch_errors_total",
                "Errors of the operator's watches, by resource; each is retried with backoff.",
            ),
            &["resource"],
        )?;
        let undecodable = IntGaugeVec::new(
            Opts::new(
                "ringwarden_operator_undecodable_objects",
                "Stored objects the operator cannot decode and leaves out, by resource.",
            ),
            &["resource"],
        )?;
        registry.register(Box::new(leader.clone()))?;
        registry.register(Box::new(watch_errors.clone()))?;
        registry.register(Box::new(undecodable.clone()))?;
        let slo_snapshots_unsaved = IntGauge::new(
            "ringwarden_operator_slo_snapshots_unsaved",
            "SLOs whose last snapshot write failed: a failover now would restore older state.",
        )?;
        registry.register(Box::new(slo_snapshots_unsaved.clone()))?;
        Ok(Self {
            slo_snapshots_unsaved,
            watch_errors,
            undecodable,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            writes,
            leader,
            ingest: IngestMetrics::new(registry)?,
        })
    }

    /// Counts a reconcile and times it until the guard drops.
    pub fn reconcile(&self, controller: &str) -> ReconcileTimer {
        self.reconciles.with_label_values(&[controller]).inc();
        ReconcileTimer {
            histogram: self.reconcile_duration.with_label_values(&[controller]),
            started: Instant::now(),
        }
    }

    pub fn error(&self, controller: &str, error: &str) {
        self.reconcile_errors
            .with_label_values(&[controller, error])
            .inc();
    }

    pub fn wrote(&self, kind: &str) {
        self.writes.with_label_values(&[kind]).inc();
    }

    /// Writes of `kind` so far.
    pub fn writes_of(&self, kind: &str) -> u64 {
        self.writes.with_label_values(&[kind]).get()
    }
}

impl IngestMetrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = GaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok::<_, prometheus::Error>(g)
        };
        let ingest_duration = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "ringwarden_operator_report_ingest_seconds",
                "Time from a report's arrival to its acknowledgement.",
            )
            .buckets(vec![
                0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.02, 0.05, 0.1,
            ]),
        )?;
        registry.register(Box::new(ingest_duration.clone()))?;
        let agents_connected = IntGauge::new(
            "ringwarden_operator_agents_connected",
            "Agent streams open on this replica.",
        )?;
        registry.register(Box::new(agents_connected.clone()))?;
        let ps = ["namespace", "probeset"];
        let slo = ["namespace", "slo"];
        Ok(Self {
            reports: counter(
                "ringwarden_operator_reports_total",
                "Agent reports received, by outcome (ingested, stale, other_boot, replayed, \
                 baseline, implausible, unknown_node, invalid).",
                &["outcome"],
            )?,
            reports_refused: counter(
                "ringwarden_operator_reports_refused_total",
                "Agent reports refused whole or in part, by reason (probe_not_pushed, \
                 threshold_not_pushed, unknown_node, boot_replayed, not_from_start, \
                 implausible_counts, series_cap); the \
                 refused part counts toward no figure and no SLO.",
                &["reason"],
            )?,
            http_connections_refused: counter(
                "ringwarden_operator_http_connections_refused_total",
                "Connections to the metrics and health port closed unserved, by the cap they \
                 were over: connections (all open), per_address (open from one IP address).",
                &["reason"],
            )?,
            ingest_duration,
            agents_connected,
            refused: counter(
                "ringwarden_operator_agent_streams_refused_total",
                "Agent streams refused, by reason (unauthenticated, wrong_audience, forbidden, \
                 no_node, review_failed, wrong_node, unknown_node, boot_retired, not_leading).",
                &["reason"],
            )?,
            nodes: gauge(
                "ringwarden_probeset_nodes",
                "Nodes of a ProbeSet, by state (desired, ready, reporting).",
                &["namespace", "probeset", "state"],
            )?,
            events_per_second: gauge(
                "ringwarden_probeset_events_per_second",
                "Events observed per second across nodes, last interval.",
                &ps,
            )?,
            drop_ratio: gauge(
                "ringwarden_probeset_drop_ratio",
                "Fraction of events lost over the last interval, by data path (ringbuf: of \
                 exported events; pairing: of observed events).",
                &["namespace", "probeset", "path"],
            )?,
            slo_sli: gauge(
                "ringwarden_slo_sli_ratio",
                "Good over total events in the SLO window.",
                &slo,
            )?,
            slo_budget_remaining: gauge(
                "ringwarden_slo_error_budget_remaining_ratio",
                "Fraction of the SLO's error budget left (negative once overspent).",
                &slo,
            )?,
            slo_burn_rate: gauge(
                "ringwarden_slo_burn_rate",
                "Error-budget burn rate, by window (fast: 1h, slow: 6h for a 30d window).",
                &["namespace", "slo", "window"],
            )?,
        })
    }
}

/// Observes a reconcile's duration when dropped.
pub struct ReconcileTimer {
    histogram: prometheus::Histogram,
    started: Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.started.elapsed().as_secs_f64());
    }
}

#[derive(Clone)]
struct Served {
    registry: Registry,
    ready: Readiness,
}

/// The HTTP routes: `/metrics` in the Prometheus text format, `/healthz`
/// (the process serves), `/readyz` (the watch caches are filled; when not,
/// the body says which and why).
pub fn router(registry: Registry, ready: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Served { registry, ready })
}

async fn metrics(State(s): State<Served>) -> (StatusCode, String) {
    let mut out = Vec::new();
    match TextEncoder::new().encode(&s.registry.gather(), &mut out) {
        Ok(()) => (StatusCode::OK, String::from_utf8_lossy(&out).into_owned()),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

/// Whether the operator is ready, and if not, why.
pub type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

async fn readyz(State(s): State<Served>) -> (StatusCode, String) {
    match (s.ready)() {
        Ok(()) => (StatusCode::OK, "ok\n".into()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready:\n{why}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn metrics_health_and_readiness_are_served() {
        let registry = Registry::new();
        let m = Metrics::new(&registry).unwrap();
        m.wrote("ConfigMap");
        drop(m.reconcile(controller::AGENT));
        let ready = Arc::new(AtomicBool::new(false));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(registry, {
            let ready = Arc::clone(&ready);
            Arc::new(move || {
                if ready.load(Ordering::Acquire) {
                    Ok(())
                } else {
                    Err("slos: the CRD is missing".into())
                }
            })
        });
        tokio::spawn(async move { axum::serve(listener, app).await });

        let body = get(addr, "/metrics").await;
        assert!(
            body.contains("ringwarden_operator_writes_total{kind=\"ConfigMap\"} 1"),
            "{body}"
        );
        assert!(body.contains("ringwarden_operator_reconciles_total{controller=\"agent\"} 1"));
        assert!(body.contains(
            "ringwarden_operator_reconcile_duration_seconds_count{controller=\"agent\"} 1"
        ));
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        let not_ready = get(addr, "/readyz").await;
        assert!(not_ready.starts_with("HTTP/1.1 503"), "{not_ready}");
        assert!(
            not_ready.contains("slos: the CRD is missing"),
            "{not_ready}"
        );
        ready.store(true, Ordering::Release);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
    }
}
