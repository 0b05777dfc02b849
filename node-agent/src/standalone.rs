//! `ringwarden-agent standalone`: run ProbeSet manifests on this machine.
//!
//! Pipeline: read manifests → plan probe configs (pure) → load probes
//! (kernel) → every interval: snapshot → table/JSON on stdout and
//! `/metrics` → on SIGINT/SIGTERM or `--duration`: print a final table and
//! detach everything.

use std::{
    path::Path,
    process::ExitCode,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use std::{collections::HashMap, io::Write as _, time::SystemTime};

use ringwarden_core::{
    histogram::Histogram,
    planner::node::NodePlan,
    slo::{Report as SloReport, SloEvaluator, SloSpec, SloStatus},
};

use ringwarden_crds::{
    AgentProbe, ExportPolicy, ProbeKind, ProbeSet, ProbeSpec, Threshold,
    manifest::{self, ManifestErrors},
    plan::{plan_node, plan_probeset},
    slo::Slo,
};
use ringwarden_ebpf_common::{
    EVENT_ERROR, SeriesKey, THRESHOLD_ERRORS, THRESHOLD_LATENCY, ThresholdSlot, event::comm_str,
};
use serde::Serialize;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::{Events, MetricsAddr, Output, StandaloneArgs},
    drain::{self, DrainClock},
    metrics::{self, ProbeLabels, SharedSnapshots},
    probes::{Export, Kernel, Probe, ProbeConfig, ProbeError, Snapshot, page_size, series_name},
    table,
    target::UprobeTarget,
};

/// Why standalone mode stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    #[error("invalid manifest:\n{0}")]
    Manifest(#[from] ManifestErrors),
    #[error("no probe could be started:\n{0}")]
    NoProbes(String),
    #[error(
        "cannot serve metrics on {addr}: {source}; pass --metrics-addr with a free port, or --metrics-addr off"
    )]
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

impl StandaloneError {
    /// 2 for bad input (like a usage error), 1 for anything else.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::Manifest(_) => ExitCode::from(2),
            _ => ExitCode::FAILURE,
        }
    }
}

/// A probe the manifests ask for, planned and ready to load.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedProbe {
    pub labels: ProbeLabels,
    pub probe: AgentProbe,
    /// Locked kernel bytes of its maps, ring included, as the node plan
    /// counts them.
    pub memory_bytes: u64,
}

/// Where this machine's memory stands: the budget, and the plan that
/// shares it.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub name: String,
    pub page_size: u64,
    /// Possible CPUs, for which per-CPU maps are allocated.
    pub cpus: u32,
    pub node_budget_bytes: u64,
}

/// What standalone mode runs: the probes that fit, why the others do not,
/// and the node plan that decided it.
#[derive(Clone, Debug, PartialEq)]
pub struct StandalonePlan {
    pub probes: Vec<PlannedProbe>,
    /// `<probe id> (<kind>): <why>`, or `ProbeSet <name>: <why>`.
    pub failures: Vec<String>,
    pub node: Option<NodePlan>,
}

/// Plans every ProbeSet with the quota planner (pure), with the SLOs on
/// its probes, then shares the node budget among all of them
/// ([`ringwarden_crds::plan::plan_node`]) as an agent in a cluster does. A
/// ProbeSet that cannot be planned, or a probe the budget cannot hold, is
/// reported and left out; the others run.
pub fn plan(probesets: &[ProbeSet], slos: &[Slo], node: &Node) -> StandalonePlan {
    let mut probes = Vec::new();
    let mut failures = Vec::new();
    for ps in probesets {
        let name = ps.metadata.name.clone().unwrap_or_default();
        match plan_probeset(ps, slos, node.page_size) {
            Ok((p, _)) => probes.extend(p),
            Err(e) => failures.push(format!("ProbeSet {name}: {e}")),
        }
    }
    let shared = match plan_node(&probes, node.node_budget_bytes, node.cpus, node.page_size) {
        Ok(shared) => shared,
        Err(e) => {
            failures.push(format!("node budget: {e}"));
            return StandalonePlan {
                probes: Vec::new(),
                failures,
                node: None,
            };
        }
    };
    let mut planned = Vec::new();
    for ((original, outcome), memory_bytes) in
        probes.iter().zip(shared.probes).zip(shared.memory_bytes)
    {
        match outcome {
            Ok(p) => planned.push(PlannedProbe {
                labels: ProbeLabels {
                    namespace: p.namespace.clone(),
                    probeset: p.probeset.clone(),
                    probe: p.spec.name.clone(),
                    node: node.name.clone(),
                },
                probe: p,
                memory_bytes,
            }),
            Err(why) => {
                tracing::error!(probe = %original.id(), reason = %why, "probe not loaded: the node budget cannot hold it");
                failures.push(format!(
                    "{} ({}): {why}",
                    original.id(),
                    original.spec.kind.as_str()
                ));
            }
        }
    }
    StandalonePlan {
        probes: planned,
        failures,
        node: Some(shared.plan),
    }
}

/// What the kernel side needs for one planned probe: filters resolved
/// (cgroup paths to ids), export policy and plan applied.
pub fn probe_config(p: &AgentProbe, self_tgid: u32) -> Result<ProbeConfig, ProbeError> {
    let spec = &p.spec;
    let filter = spec.filter.clone().unwrap_or_default();
    let mut config = ProbeConfig::new(spec.kind);
    config.pids = filter.pids;
    config.comms = filter.comms;
    config.cgroup_ids = filter
        .cgroups
        .iter()
        .map(|c| crate::probes::cgroup_id(c))
        .collect::<Result<_, _>>()?;
    config.exclude_tgid = self_tgid;
    config.max_series = spec.max_series;
    config.export = match spec.export.policy {
        ExportPolicy::None => Export::None,
        ExportPolicy::SlowerThan => Export::SlowerThan(
            spec.export
                .slower_than
                .map_or(0, |d| d.as_nanos().min(u64::MAX as u128) as u64),
        ),
        ExportPolicy::Errors => Export::Errors,
        ExportPolicy::All => Export::All,
    };
    config.sample_every = p.sample_every.max(1);
    config.ring_bytes = u32::try_from(p.ring_bytes).unwrap_or(u32::MAX);
    config.predicted_drop = p.predicted_drop;
    config.uprobe = match (&spec.uprobe, &spec.go_runtime) {
        (Some(u), _) => Some((u.binary.clone(), u.symbol.clone())),
        (None, Some(g)) => Some((g.binary.clone(), String::new())),
        (None, None) => None,
    };
    config.thresholds = p
        .thresholds
        .iter()
        .map(|t| Ok((t.slo.clone(), threshold_slot(spec, t)?)))
        .collect::<Result<_, ProbeError>>()?;
    Ok(config)
}

/// An SLO's threshold as the kernel compares it: series names become the
/// ids the kernel keys series by.
pub fn threshold_slot(spec: &ProbeSpec, t: &Threshold) -> Result<ThresholdSlot, ProbeError> {
    let kind = spec.kind;
    let mut slot = ThresholdSlot {
        latency_ns: t.latency_ns.unwrap_or(0),
        mode: if t.errors {
            THRESHOLD_ERRORS
        } else {
            THRESHOLD_LATENCY
        },
        nseries: t.series.len() as u32,
        ..Default::default()
    };
    if t.series.len() > slot.series.len() {
        return Err(ProbeError::Filter(format!(
            "SLO {}: {} series, at most {} are supported",
            t.slo,
            t.series.len(),
            slot.series.len()
        )));
    }
    for (id, name) in slot.series.iter_mut().zip(&t.series) {
        *id = match kind {
            ProbeKind::Syscalls => name
                .parse::<syscalls::Sysno>()
                .map(|s| s.id() as u64)
                .map_err(|_| {
                    ProbeError::Filter(format!(
                        "SLO {}: {name:?} is not a syscall of this architecture; use names \
                         like read or openat",
                        t.slo
                    ))
                })?,
            ProbeKind::TcpConnect => name
                .trim_start_matches("port ")
                .parse::<u16>()
                .map(u64::from)
                .map_err(|_| {
                    ProbeError::Filter(format!(
                        "SLO {}: {name:?} is not a destination port; use e.g. 443",
                        t.slo
                    ))
                })?,
            // One series: the function.
            ProbeKind::Uprobe => {
                let symbol = spec.uprobe.as_ref().map_or("", |u| u.symbol.as_str());
                if name != symbol {
                    return Err(ProbeError::Filter(format!(
                        "SLO {}: {name:?} is not a series of this probe, whose one series is \
                         its function {symbol:?}; name that or remove spec.series",
                        t.slo
                    )));
                }
                0
            }
            ProbeKind::GoRuntime => crate::probes::go_runtime_series_id(name).ok_or_else(|| {
                ProbeError::Filter(format!(
                    "SLO {}: {name:?} is not a goRuntime series; use gc-pause, stw-other or \
                     gc-cycle",
                    t.slo
                ))
            })?,
            other => {
                return Err(ProbeError::Filter(format!(
                    "SLO {}: series narrowing is supported for syscalls, tcpConnect, uprobe \
                     and goRuntime probes, not {}; remove spec.series",
                    t.slo,
                    other.as_str()
                )));
            }
        };
    }
    Ok(slot)
}

/// Reads every manifest (ProbeSets and SLOs), reporting all problems of
/// all files at once.
pub fn read_manifests(
    files: &[std::path::PathBuf],
) -> Result<(Vec<ProbeSet>, Vec<Slo>), ManifestErrors> {
    let mut probesets = Vec::new();
    let mut slos = Vec::new();
    let mut errors = Vec::new();
    for f in files {
        match manifest::load_file(f) {
            Ok(docs) => {
                let (p, s) = manifest::split(docs);
                probesets.extend(p);
                slos.extend(s);
            }
            Err(ManifestErrors(e)) => errors.extend(e),
        }
    }
    for slo in &slos {
        if let Err(e) = slo
            .spec
            .find_probe(slo.metadata.namespace.as_deref(), &probesets)
        {
            errors.push(manifest::ManifestError {
                file: format!("SLO {}", slo.metadata.name.as_deref().unwrap_or("")),
                document: 0,
                field: Some(e.field),
                message: e.message,
            });
        }
    }
    if errors.is_empty() && probesets.is_empty() {
        errors.push(manifest::ManifestError {
            file: files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            document: 0,
            field: None,
            message: "no ProbeSet found; see examples/probeset.yaml".into(),
        });
    }
    if errors.is_empty() {
        Ok((probesets, slos))
    } else {
        Err(ManifestErrors(errors))
    }
}

struct Running {
    labels: ProbeLabels,
    /// Locked bytes of its maps as the node plan counts them.
    memory_bytes: u64,
    probe: Probe,
    previous: Option<(Instant, Snapshot)>,
    /// Series names by key, so writing events does not look them up again.
    names: HashMap<SeriesKey, String>,
    /// When its ring is drained next.
    drain: DrainClock,
    /// The SLO thresholds the kernel counts for this probe, in slot order.
    thresholds: Vec<Threshold>,
}

/// One SLO evaluated locally from its probe's exact kernel counts.
struct SloWatch {
    id: String,
    /// Index into the running probes, and of the threshold slot.
    probe: usize,
    slot: usize,
    series: Vec<String>,
    target: f64,
    evaluator: SloEvaluator,
    status: Option<SloStatus>,
}

/// Sets up an evaluator for every SLO whose probe is running.
fn watch_slos(running: &[Running], slos: &[Slo]) -> Vec<SloWatch> {
    let mut watches = Vec::new();
    for (pi, r) in running.iter().enumerate() {
        for (slot, t) in r.thresholds.iter().enumerate() {
            let Some(slo) = slos.iter().find(|s| {
                format!(
                    "{}/{}",
                    s.metadata.namespace.as_deref().unwrap_or("default"),
                    s.metadata.name.as_deref().unwrap_or("")
                ) == t.slo
            }) else {
                continue;
            };
            let spec = SloSpec {
                target: slo.spec.target,
                window: slo.spec.window,
                max_drop_rate: slo.spec.max_drop_rate,
            };
            match SloEvaluator::new(spec, 0) {
                Ok(evaluator) => watches.push(SloWatch {
                    id: t.slo.clone(),
                    probe: pi,
                    slot,
                    series: t.series.clone(),
                    target: slo.spec.target,
                    evaluator,
                    status: None,
                }),
                Err(e) => tracing::error!(slo = %t.slo, error = %e, "SLO cannot be evaluated"),
            }
        }
    }
    watches
}

/// Feeds each SLO its probe's latest exact counts and evaluates it.
fn evaluate_slos(
    watches: &mut [SloWatch],
    snaps: &[Option<Snapshot>],
    node: &str,
    boot_id: &str,
    seq: u64,
) {
    let now = SystemTime::now();
    for w in watches {
        let Some(Some(snap)) = snaps.get(w.probe) else {
            continue;
        };
        let Some(t) = snap.thresholds.get(w.slot) else {
            continue;
        };
        w.evaluator.ingest(
            now,
            &SloReport {
                node: node.to_string(),
                boot_id: boot_id.to_string(),
                seq,
                threshold_id: 0,
                good: t.good,
                total: t.total,
                loss: snap.counters,
                // The agent's own node: nothing to doubt.
                ceiling: None,
            },
        );
        let mut h = Histogram::new();
        for (name, sh) in &snap.series {
            if w.series.is_empty()
                || w.series
                    .iter()
                    .any(|s| ringwarden_core::slo::series_covers(s, name))
            {
                h.merge(sh);
            }
        }
        w.status = Some(w.evaluator.evaluate(now, Some(&h)));
    }
}

/// One line per SLO for the table.
fn render_slos(watches: &[SloWatch]) -> String {
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.3}%", 100.0 * v));
    let rate = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}x"));
    let mut out = String::new();
    for w in watches {
        let Some(st) = &w.status else { continue };
        out.push_str(&format!(
            "SLO {}: {} — SLI {} (target {}%), budget left {}, burn fast {} slow {}, \
             p{} latency {}, drops {}\n",
            w.id,
            st.state.as_str(),
            pct(st.sli),
            w.target,
            pct(st.error_budget_remaining),
            rate(st.fast_burn.long_rate),
            rate(st.slow_burn.long_rate),
            w.target,
            st.observed_latency_ns.map_or("-".into(), table::fmt_ns),
            pct(st.drop_rate),
        ));
    }
    out
}

/// Loads every planned probe; a probe that fails is reported and skipped,
/// the others run. Uprobe binaries resolve under `host_root`, opened on a
/// blocking thread.
async fn load_all(
    kernel: &Kernel,
    planned: Vec<PlannedProbe>,
    host_root: &Path,
) -> (Vec<Running>, Vec<String>) {
    let mut running = Vec::new();
    let mut failures = Vec::new();
    let self_tgid = std::process::id();
    for p in planned {
        let id = p.probe.id();
        let kind = p.probe.spec.kind;
        let result = match probe_config(&p.probe, self_tgid) {
            Ok(mut c) => {
                c.host_root = host_root.to_path_buf();
                load_one(kernel, &c).await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(probe) => {
                tracing::info!(probe = %id, kind = kind.as_str(), ring_bytes = p.probe.ring_bytes,
                    sample_every = p.probe.sample_every, "probe attached");
                running.push(Running {
                    labels: p.labels,
                    memory_bytes: p.memory_bytes,
                    probe,
                    previous: None,
                    names: HashMap::new(),
                    drain: DrainClock::new(p.probe.drain_interval, Instant::now()),
                    thresholds: p.probe.thresholds.clone(),
                });
            }
            Err(e) => {
                tracing::error!(probe = %id, error = %e, "probe failed to load; the others keep running");
                failures.push(format!("{id} ({}): {e}", kind.as_str()));
            }
        }
    }
    (running, failures)
}

/// Loads one probe; a uprobe's binary is opened off the async thread.
async fn load_one(kernel: &Kernel, c: &ProbeConfig) -> Result<Probe, ProbeError> {
    match &c.uprobe {
        Some((binary, symbol)) if c.kind.uses_uprobes() => {
            let opened = UprobeTarget::open_async(
                c.kind,
                c.host_root.clone(),
                binary.clone(),
                symbol.clone(),
            )
            .await;
            Probe::load_opened(kernel, c, opened)
        }
        _ => Probe::load(kernel, c),
    }
}

/// One exported event as a JSON line.
#[derive(Serialize)]
struct JsonEvent<'a> {
    namespace: &'a str,
    probeset: &'a str,
    probe: &'a str,
    kind: &'a str,
    series: &'a str,
    /// Boot-relative end time (CLOCK_MONOTONIC), as the kernel stamped it.
    ts_ns: u64,
    /// The same instant on the wall clock, RFC 3339 to the nanosecond (the
    /// clocks' offset measured at this drain: `clock.rs`).
    time: String,
    latency_ns: u64,
    pid: u32,
    tgid: u32,
    comm: &'a str,
    cgroup_id: u64,
    error: bool,
    value: i64,
}

/// Drains the ring buffers whose drain is due, writing events as JSON
/// lines when asked.
fn drain_due(running: &mut [Running], out: &mut Option<std::io::BufWriter<std::io::Stdout>>) {
    let now = Instant::now();
    let due = running
        .iter_mut()
        .filter_map(|r| r.drain.due(now).then_some(r));
    drain(due, out);
}

/// Drains `rings`, writing events as JSON lines when asked.
fn drain<'a>(
    rings: impl Iterator<Item = &'a mut Running>,
    out: &mut Option<std::io::BufWriter<std::io::Stdout>>,
) {
    // Measured only when events are written, once per drain.
    let clock = out.is_some().then(crate::clock::WallClock::measure);
    for r in rings {
        let kind = r.probe.kind();
        let Running {
            labels,
            probe,
            names,
            ..
        } = r;
        probe.drain(|ev| {
            let Some(w) = out.as_mut() else { return };
            let name = names
                .entry(ev.series)
                .or_insert_with(|| series_name(kind, &ev.series, None));
            let mut comm_buf = [0u8; 16];
            let line = JsonEvent {
                namespace: &labels.namespace,
                probeset: &labels.probeset,
                probe: &labels.probe,
                kind: kind.as_str(),
                series: name,
                ts_ns: ev.ts_ns,
                time: clock.map(|c| c.rfc3339(ev.ts_ns)).unwrap_or_default(),
                latency_ns: ev.latency_ns,
                pid: ev.pid,
                tgid: ev.tgid,
                comm: comm_str(&ev.comm, &mut comm_buf),
                cgroup_id: ev.cgroup_id,
                error: ev.flags & EVENT_ERROR != 0,
                value: ev.value,
            };
            if serde_json::to_writer(&mut *w, &line).is_ok() {
                let _ = w.write_all(b"\n");
            }
        });
    }
    if let Some(w) = out.as_mut() {
        let _ = w.flush();
    }
}

#[derive(Serialize)]
struct JsonProbe<'a> {
    namespace: &'a str,
    probeset: &'a str,
    probe: &'a str,
    node: &'a str,
    kind: &'a str,
    counters: &'a ringwarden_core::accounting::Counters,
    /// `ringbuf_dropped / exported` since the probe was loaded.
    ringbuf_drop: f64,
    /// What the plan predicts that fraction to be at the declared rate.
    predicted_drop: f64,
    ring_bytes: u64,
    /// Locked kernel bytes of its maps, ring included, as the node plan
    /// counts them.
    memory_bytes: u64,
    /// Kernel ids of its programs (`bpftool prog show id …`).
    program_ids: &'a [u32],
    ring_high_water: u64,
    events_received: u64,
    events_corrupt: u64,
    thresholds: &'a [crate::probes::ThresholdCount],
    rows: Vec<table::Row>,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    elapsed_seconds: f64,
    #[serde(rename = "final")]
    is_final: bool,
    probes: Vec<JsonProbe<'a>>,
    slos: Vec<JsonSlo<'a>>,
    /// Probes that could not be loaded, with the cause.
    failed: &'a [String],
    /// How the node budget was shared: what each ProbeSet asked for and got.
    node_plan: Option<&'a NodePlan>,
}

#[derive(Serialize)]
struct JsonSlo<'a> {
    slo: &'a str,
    state: &'static str,
    target: f64,
    sli: Option<f64>,
    budget_remaining: Option<f64>,
    fast_burn: Option<f64>,
    slow_burn: Option<f64>,
    good: u64,
    total: u64,
    observed_latency_ns: Option<u64>,
    drop_rate: Option<f64>,
}

/// SLOs evaluated in standalone mode, and the identity of this run's
/// reports (a new boot id per run: counters start from zero).
struct SloState {
    watches: Vec<SloWatch>,
    boot_id: String,
    seq: u64,
}

/// Reads every probe, prints the figures and publishes them for `/metrics`.
#[allow(clippy::too_many_arguments)]
fn tick(
    running: &mut [Running],
    slos: &mut SloState,
    failures: &[String],
    node_plan: Option<&NodePlan>,
    shared: &SharedSnapshots,
    args: &StandaloneArgs,
    started: Instant,
    is_final: bool,
) {
    let now = Instant::now();
    let mut current = Vec::with_capacity(running.len());
    for r in running.iter() {
        match r.probe.snapshot() {
            Ok(s) => current.push(Some(s)),
            Err(e) => {
                tracing::warn!(probe = %r.labels.probe, error = %e, "reading the probe failed");
                current.push(None);
            }
        }
    }
    slos.seq += 1;
    let node = running
        .first()
        .map(|r| r.labels.node.clone())
        .unwrap_or_default();
    evaluate_slos(&mut slos.watches, &current, &node, &slos.boot_id, slos.seq);
    let mut text = String::new();
    let mut json = Vec::new();
    for (r, snap) in running.iter().zip(&current) {
        let Some(snap) = snap else { continue };
        // The final table shows the average rate over the whole run.
        let (prev, elapsed) = match &r.previous {
            Some((t, s)) if !is_final => (Some(s), now - *t),
            _ => (None, now - started),
        };
        let rows = table::rows(snap, prev, elapsed, args.top);
        let kind = r.probe.kind().as_str();
        match args.output {
            Output::Table => {
                let title = format!(
                    "{}/{} probe {} ({kind}) on {}{}",
                    r.labels.namespace,
                    r.labels.probeset,
                    r.labels.probe,
                    r.labels.node,
                    if is_final { " — final" } else { "" }
                );
                text.push_str(&table::render(&title, &rows, snap));
                text.push('\n');
            }
            Output::Json => json.push(JsonProbe {
                namespace: &r.labels.namespace,
                probeset: &r.labels.probeset,
                probe: &r.labels.probe,
                node: &r.labels.node,
                kind,
                counters: &snap.counters,
                ringbuf_drop: snap.counters.ringbuf_drop(),
                predicted_drop: snap.predicted_drop,
                ring_bytes: snap.ring_bytes,
                memory_bytes: r.memory_bytes,
                program_ids: r.probe.program_ids(),
                ring_high_water: snap.ring_high_water,
                events_received: snap.events_received,
                events_corrupt: snap.decode_errors,
                thresholds: &snap.thresholds,
                rows,
            }),
        }
    }
    let report = match args.output {
        Output::Table => {
            text.push_str(&render_slos(&slos.watches));
            if let Some(n) = node_plan {
                text.push_str(&render_node_plan(n));
            }
            for f in failures {
                text.push_str(&format!("FAILED {f}\n"));
            }
            format!("--- {:.1}s ---\n{text}", (now - started).as_secs_f64())
        }
        Output::Json => {
            let report = JsonReport {
                elapsed_seconds: (now - started).as_secs_f64(),
                is_final,
                probes: json,
                slos: slos
                    .watches
                    .iter()
                    .filter_map(|w| {
                        let st = w.status.as_ref()?;
                        Some(JsonSlo {
                            slo: &w.id,
                            state: st.state.as_str(),
                            target: w.target,
                            sli: st.sli,
                            budget_remaining: st.error_budget_remaining,
                            fast_burn: st.fast_burn.long_rate,
                            slow_burn: st.slow_burn.long_rate,
                            good: st.counts.good,
                            total: st.counts.total,
                            observed_latency_ns: st.observed_latency_ns,
                            drop_rate: st.drop_rate,
                        })
                    })
                    .collect(),
                failed: failures,
                node_plan,
            };
            serde_json::to_string(&report).unwrap_or_else(|e| {
                tracing::error!(error = %e, "cannot encode the JSON report");
                String::new()
            })
        }
    };
    // With `--events json` stdout carries the events; reports go to stderr.
    if args.events == Events::Json {
        eprintln!("{report}");
    } else {
        println!("{report}");
    }
    let mut published = shared.lock().unwrap_or_else(PoisonError::into_inner);
    published.clear();
    for (r, snap) in running.iter_mut().zip(current) {
        if let Some(snap) = snap {
            published.push((r.labels.clone(), snap.clone()));
            r.previous = Some((now, snap));
        }
    }
}

fn node_name(args: &StandaloneArgs) -> String {
    args.node_name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into())
    })
}

/// The node budget's line in the table: used of the budget, and each
/// ProbeSet cut by it.
fn render_node_plan(n: &NodePlan) -> String {
    let format_bytes = |n: u64| ringwarden_core::planner::bytes(n as f64);
    let mut out = format!(
        "node budget: {} of {} used ({} possible CPUs)\n",
        format_bytes(n.used_bytes),
        format_bytes(n.budget_bytes),
        n.cpus
    );
    for s in n.probesets.iter().filter(|s| s.constrained()) {
        out.push_str(&format!(
            "  {}/{}: got {} of the {} it asked for, {}\n",
            s.namespace,
            s.name,
            format_bytes(s.granted_bytes),
            format_bytes(s.requested_bytes),
            s.sharing()
        ));
    }
    out
}

/// Runs standalone mode until a signal or `--duration`.
pub async fn run(args: StandaloneArgs) -> Result<(), StandaloneError> {
    let (probesets, slos) = read_manifests(&args.files)?;
    let node = Node {
        name: node_name(&args),
        page_size: page_size().into(),
        cpus: crate::probes::possible_cpus()
            .map_err(|e| StandaloneError::NoProbes(e.to_string()))?,
        node_budget_bytes: args.node_budget,
    };
    let StandalonePlan {
        probes: planned,
        mut failures,
        node: node_plan,
    } = plan(&probesets, &slos, &node);
    crate::probes::check_privileges().map_err(|e| StandaloneError::NoProbes(e.to_string()))?;
    let kernel = Kernel::open().map_err(|e| StandaloneError::NoProbes(e.to_string()))?;
    let (mut running, load_failures) = load_all(&kernel, planned, &args.host_root).await;
    failures.extend(load_failures);
    // The parsed kernel BTF (tens of MiB) is needed only to load programs:
    // free it and hand the memory back.
    drop(kernel);
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe { libc::malloc_trim(0) };
    if running.is_empty() {
        return Err(StandaloneError::NoProbes(failures.join("\n")));
    }
    let mut slo_state = SloState {
        watches: watch_slos(&running, &slos),
        boot_id: std::fs::read_to_string("/proc/sys/kernel/random/uuid")
            .map(|u| u.trim().to_string())
            .unwrap_or_else(|_| format!("run-{}", std::process::id())),
        seq: 0,
    };
    let mut events_out =
        (args.events == Events::Json).then(|| std::io::BufWriter::new(std::io::stdout()));

    let shared: SharedSnapshots = Arc::new(Mutex::new(Vec::new()));
    let _server = match args.metrics_addr {
        MetricsAddr::Off => None,
        MetricsAddr::On(addr) => {
            let (local, task) = metrics::serve(addr, metrics::registry(shared.clone()))
                .await
                .map_err(|source| StandaloneError::Metrics { addr, source })?;
            tracing::info!(%local, "serving /metrics");
            Some(AbortOnDrop(task))
        }
    };

    let mut sigint = signal(SignalKind::interrupt()).map_err(StandaloneError::Signals)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(StandaloneError::Signals)?;
    let started = Instant::now();
    let deadline = tokio::time::sleep(args.duration.unwrap_or(Duration::MAX / 4));
    tokio::pin!(deadline);
    let mut ticker =
        tokio::time::interval_at(tokio::time::Instant::now() + args.interval, args.interval);
    loop {
        // Records are written without wakeups: each ring is read on its own
        // drain clock (`drain.rs`), and only then, so its cadence is the one
        // the plan predicts drops for. Reports read the kernel's counters
        // and need no drain.
        let wake = drain::next_deadline(running.iter().map(|r| &r.drain))
            .expect("at least one probe runs");
        tokio::select! {
            () = tokio::time::sleep_until(wake.into()) => drain_due(&mut running, &mut events_out),
            _ = ticker.tick() => {
                tick(&mut running, &mut slo_state, &failures, node_plan.as_ref(), &shared, &args, started, false)
            }
            _ = &mut deadline => { tracing::info!("duration reached, stopping"); break }
            _ = sigint.recv() => { tracing::info!("SIGINT, stopping"); break }
            _ = sigterm.recv() => { tracing::info!("SIGTERM, stopping"); break }
        }
    }
    // Every delivered record is received before the final report.
    drain(running.iter_mut(), &mut events_out);
    tick(
        &mut running,
        &mut slo_state,
        &failures,
        node_plan.as_ref(),
        &shared,
        &args,
        started,
        true,
    );
    drop(running); // detaches every program and frees the maps
    tracing::info!("all probes detached");
    Ok(())
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_gives_each_probe_its_labels_and_filters() {
        let docs = manifest::parse_str(
            "t.yaml",
            "
apiVersion: ringwarden.dev/v1alpha1
kind: ProbeSet
metadata: {name: web, namespace: shop}
spec:
  probes:
    - {name: sys, kind: syscalls, filter: {pids: [7], comms: [nginx]}}
    - {name: all, kind: syscalls}
",
        )
        .unwrap();
        let (probesets, slos) = manifest::split(docs);
        let node = Node {
            name: "node-a".into(),
            page_size: 4096,
            cpus: 2,
            node_budget_bytes: 64 << 20,
        };
        let StandalonePlan {
            probes: planned,
            failures,
            ..
        } = plan(&probesets, &slos, &node);
        assert!(failures.is_empty(), "{failures:?}");
        assert_eq!(planned.len(), 2);
        assert_eq!(planned[0].labels.namespace, "shop");
        assert_eq!(planned[0].labels.probeset, "web");
        assert_eq!(planned[0].labels.probe, "sys");
        assert_eq!(planned[0].labels.node, "node-a");
        let config = probe_config(&planned[0].probe, 99).unwrap();
        assert_eq!(config.pids, [7]);
        assert_eq!(config.comms, ["nginx"]);
        assert_eq!(config.exclude_tgid, 99);
        assert_eq!(config.ring_bytes, 4096);
        assert!(probe_config(&planned[1].probe, 99).unwrap().pids.is_empty());
    }

    #[test]
    fn reading_no_probeset_is_an_error_that_points_to_the_example() {
        let dir = std::env::temp_dir().join(format!("rw-empty-{}", std::process::id()));
        std::fs::write(&dir, "# nothing\n").unwrap();
        let e = read_manifests(std::slice::from_ref(&dir))
            .unwrap_err()
            .to_string();
        std::fs::remove_file(&dir).unwrap();
        assert!(e.contains("no ProbeSet found"), "{e}");
    }
}
