//! `ringwarden-agent standalone`: run ProbeSet manifests on this machine.
//!
//! Pipeline: read manifests → plan probe configs (pure) → load probes
//! (kernel) → every interval: snapshot → table/JSON on stdout and
//! `/metrics` → on SIGINT/SIGTERM or `--duration`: print a final table and
//! detach everything.

use std::{
    process::ExitCode,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use ringwarden_crds::{
    ProbeKind, ProbeSet,
    manifest::{self, Manifest, ManifestErrors},
};
use serde::Serialize;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::{MetricsAddr, Output, StandaloneArgs},
    metrics::{self, ProbeLabels, SharedSnapshots},
    probes::{ProbeError, SyscallProbe, SyscallProbeConfig, SyscallSnapshot},
    table,
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

/// A probe the manifests ask for, ready to load.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedProbe {
    pub labels: ProbeLabels,
    pub kind: ProbeKind,
    pub config: SyscallProbeConfig,
}

/// Turns ProbeSets into probe configurations (pure).
pub fn plan(probesets: &[ProbeSet], node: &str, self_tgid: u32) -> Vec<PlannedProbe> {
    probesets
        .iter()
        .flat_map(|ps| {
            let namespace = ps
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            let name = ps.metadata.name.clone().unwrap_or_default();
            ps.spec.probes.iter().map(move |p| {
                let filter = p.filter.clone().unwrap_or_default();
                PlannedProbe {
                    labels: ProbeLabels {
                        namespace: namespace.clone(),
                        probeset: name.clone(),
                        probe: p.name.clone(),
                        node: node.to_string(),
                    },
                    kind: p.kind,
                    config: SyscallProbeConfig {
                        pids: filter.pids,
                        comms: filter.comms,
                        exclude_tgid: self_tgid,
                    },
                }
            })
        })
        .collect()
}

/// Reads every manifest, reporting all problems of all files at once.
pub fn read_manifests(files: &[std::path::PathBuf]) -> Result<Vec<ProbeSet>, ManifestErrors> {
    let mut probesets = Vec::new();
    let mut errors = Vec::new();
    for f in files {
        match manifest::load_file(f) {
            Ok(docs) => probesets.extend(docs.into_iter().map(|Manifest::ProbeSet(ps)| *ps)),
            Err(ManifestErrors(e)) => errors.extend(e),
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
        Ok(probesets)
    } else {
        Err(ManifestErrors(errors))
    }
}

struct Running {
    labels: ProbeLabels,
    probe: SyscallProbe,
    previous: Option<(Instant, SyscallSnapshot)>,
}

/// Loads every planned probe; a probe that fails is reported and skipped,
/// the others run.
fn load_all(planned: Vec<PlannedProbe>) -> (Vec<Running>, Vec<String>) {
    let mut running = Vec::new();
    let mut failures = Vec::new();
    for p in planned {
        let id = format!(
            "{}/{}/{}",
            p.labels.namespace, p.labels.probeset, p.labels.probe
        );
        let result = match p.kind {
            ProbeKind::Syscalls => SyscallProbe::load(&p.config),
            other => Err(ProbeError::Object(format!(
                "probe kind {} is not implemented by this agent version; use kind: syscalls",
                other.as_str()
            ))),
        };
        match result {
            Ok(probe) => {
                tracing::info!(probe = %id, kind = p.kind.as_str(), "probe attached");
                running.push(Running {
                    labels: p.labels,
                    probe,
                    previous: None,
                });
            }
            Err(e) => {
                tracing::error!(probe = %id, error = %e, "probe failed to load; the others keep running");
                failures.push(format!("{id}: {e}"));
            }
        }
    }
    (running, failures)
}

#[derive(Serialize)]
struct JsonProbe<'a> {
    namespace: &'a str,
    probeset: &'a str,
    probe: &'a str,
    node: &'a str,
    counters: &'a ringwarden_core::accounting::Counters,
    rows: Vec<table::Row>,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    elapsed_seconds: f64,
    #[serde(rename = "final")]
    is_final: bool,
    probes: Vec<JsonProbe<'a>>,
}

/// Reads every probe, prints the figures and publishes them for `/metrics`.
fn tick(
    running: &mut [Running],
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
        match args.output {
            Output::Table => {
                let title = format!(
                    "{}/{} probe {} (syscalls) on {}{}",
                    r.labels.namespace,
                    r.labels.probeset,
                    r.labels.probe,
                    r.labels.node,
                    if is_final { " — final" } else { "" }
                );
                text.push_str(&table::render(&title, &rows, snap));
            }
            Output::Json => json.push(JsonProbe {
                namespace: &r.labels.namespace,
                probeset: &r.labels.probeset,
                probe: &r.labels.probe,
                node: &r.labels.node,
                counters: &snap.counters,
                rows,
            }),
        }
    }
    match args.output {
        Output::Table => println!("--- {:.1}s ---\n{text}", (now - started).as_secs_f64()),
        Output::Json => {
            let report = JsonReport {
                elapsed_seconds: (now - started).as_secs_f64(),
                is_final,
                probes: json,
            };
            match serde_json::to_string(&report) {
                Ok(line) => println!("{line}"),
                Err(e) => tracing::error!(error = %e, "cannot encode the JSON report"),
            }
        }
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

/// Runs standalone mode until a signal or `--duration`.
pub async fn run(args: StandaloneArgs) -> Result<(), StandaloneError> {
    let probesets = read_manifests(&args.files)?;
    let node = node_name(&args);
    let planned = plan(&probesets, &node, std::process::id());
    crate::probes::check_privileges().map_err(|e| StandaloneError::NoProbes(e.to_string()))?;
    let (mut running, failures) = load_all(planned);
    if running.is_empty() {
        return Err(StandaloneError::NoProbes(failures.join("\n")));
    }

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
        tokio::select! {
            _ = ticker.tick() => tick(&mut running, &shared, &args, started, false),
            _ = &mut deadline => { tracing::info!("duration reached, stopping"); break }
            _ = sigint.recv() => { tracing::info!("SIGINT, stopping"); break }
            _ = sigterm.recv() => { tracing::info!("SIGTERM, stopping"); break }
        }
    }
    tick(&mut running, &shared, &args, started, true);
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
        let probesets: Vec<ProbeSet> = docs.into_iter().map(|Manifest::ProbeSet(p)| *p).collect();
        let planned = plan(&probesets, "node-a", 99);
        assert_eq!(planned.len(), 2);
        assert_eq!(planned[0].labels.namespace, "shop");
        assert_eq!(planned[0].labels.probeset, "web");
        assert_eq!(planned[0].labels.probe, "sys");
        assert_eq!(planned[0].labels.node, "node-a");
        assert_eq!(planned[0].config.pids, [7]);
        assert_eq!(planned[0].config.comms, ["nginx"]);
        assert_eq!(planned[0].config.exclude_tgid, 99);
        assert!(planned[1].config.pids.is_empty());
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
