//! `ringwarden-agent node`: the DaemonSet mode.
//!
//! Runs the probes of the agent configuration the operator renders into a
//! ConfigMap (mounted as a file), keeps them in step with it without a
//! restart, and serves `/metrics`. Each probe is keyed by its id and its
//! whole configuration: an unchanged probe keeps running (and counting)
//! across reloads, a changed one is reloaded, a removed one detached.
//!
//! The node's labels decide which probes apply (`nodeSelector`); a
//! ProbeSet's namespace and `podSelector` become a cgroup filter: the pods
//! on this node of the namespaces in the probe's scope that the selector
//! matches, found by their UID under the cgroup v2 tree. Only a
//! ClusterProbeSet without a `namespaceSelector` sees the whole node. Both come from
//! the Kubernetes API with the agent's service account (the pods from one
//! watch of this node's pods, [`crate::pods`]), or from `--node-labels` and
//! no pod filtering when run outside a cluster. As pods come and go, the
//! running probe's filter map is rewritten in place: no reload, no counter
//! reset, no event lost.
//!
//! A ProbeSet's uprobe is attached to each process of its pods on its own
//! ([`crate::probes::ProcessAttach`]), never to every process that maps
//! the file: the processes are followed at each pod change and every
//! [`PROCESS_SYNC_INTERVAL`], off the loop.
//!
//! A probe that fails to load (no BTF, a missing hook or symbol, a
//! rejected program) is reported with its cause and retried with
//! exponential backoff ([`retry_delay`]); the agent and its other probes
//! keep running.
//!
//! With `--operator-addr` it also reports to the operator ([`crate::uplink`])
//! and runs the configuration the operator pushes on that stream. The file
//! stays the durable copy: when it changes it is in force again, and an
//! agent that cannot reach the operator keeps running what it has.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use ringwarden_crds::{AgentConfig, AgentProbe, ProbeKind};
use ringwarden_proto::v1;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
    time::Instant,
};

use crate::{
    cli::{MetricsAddr, NodeArgs},
    drain::{self, DrainClock},
    metrics::{self, NodeMetrics, ProbeLabels, SharedSnapshots},
    pods::{PodScope, PodWatch, pod_cgroup_index, selected_cgroups, selected_pods},
    probes::{
        Kernel, MAX_PROCESSES_PER_UPROBE, Probe, ProbeError, ProcessAttach, Synced, cgroup2_mount,
    },
    report::{LoadFailure, probe_report},
    standalone::probe_config,
    target::{TargetError, UprobeTarget},
    uplink::{self, Uplink, UplinkMetrics, new_boot_id},
};

mod plan;

use plan::resolves_in_containers;
pub use plan::{
    NAMESPACED_CGROUPS, Shared, checked, parse_config, probes_for_node, share_node_budget,
};

/// Why node mode stopped.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("{0}")]
    Kernel(#[from] ProbeError),
    #[error("{0}")]
    Operator(String),
}

/// Where node facts come from.
enum Facts {
    /// Fixed labels, no pod resolution (outside a cluster).
    Static(BTreeMap<String, String>),
    /// The Kubernetes API, with the agent's service account.
    Api(kube::Client),
}

impl Facts {
    async fn labels(&self, node: &str) -> Result<BTreeMap<String, String>, String> {
        match self {
            Self::Static(l) => Ok(l.clone()),
            Self::Api(client) => {
                let nodes: kube::Api<k8s_openapi::api::core::v1::Node> =
                    kube::Api::all(client.clone());
                let n = nodes
                    .get(node)
                    .await
                    .map_err(|e| format!("reading node {node}: {e}"))?;
                Ok(n.metadata.labels.unwrap_or_default())
            }
        }
    }
}

/// First retry of a probe that failed to load; each further failure
/// doubles the wait, up to [`RETRY_MAX`]. A missing BTF file or hook may
/// appear (a kernel module loads, a binary is installed), so failures are
/// retried, but not often enough to cost anything when they do not.
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between two attempts to load a failing probe.
pub const RETRY_MAX: Duration = Duration::from_secs(300);

/// How often a ProbeSet's uprobe is brought in line with the processes
/// of its pods (new ones attached, exited ones detached), besides every
/// change of the node's pods: a process that starts in a running pod is
/// attached, and counted, within this.
pub const PROCESS_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// The wait after the `attempts`-th failed attempt in a row.
pub fn retry_delay(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16);
    (RETRY_FIRST * (1u32 << doublings)).min(RETRY_MAX)
}

/// The metric label of a failure's class.
fn reason(kind: v1::load_error::Kind) -> &'static str {
    use v1::load_error::Kind;
    match kind {
        Kind::MissingBtf => "missing_btf",
        Kind::Verifier => "verifier",
        Kind::MissingTracepoint => "missing_tracepoint",
        _ => "other",
    }
}

struct Loaded {
    /// The configuration it was loaded from; a different one reloads it.
    config: AgentProbe,
    /// The pods it observes, when limited to pods (by namespace or
    /// `podSelector`): their cgroups are written into the running filter
    /// as they come and go.
    scope: Option<PodScope>,
    /// cgroup ids of the probe's own `filter.cgroups`, always in the filter.
    fixed_cgroups: BTreeSet<u64>,
    labels: ProbeLabels,
    probe: Probe,
    /// A ProbeSet's uprobe, attached process by process: what attaches it
    /// to its pods' processes as they start and exit.
    processes: Option<ProcessAttach>,
    /// When its ring is drained next.
    drain: DrainClock,
}

/// A probe that should run and does not.
struct Failed {
    failure: LoadFailure,
    /// The configuration that failed; a new one is tried at once.
    config: AgentProbe,
    /// Failed attempts in a row.
    attempts: u32,
    retry_at: Instant,
    /// The failure is only that the node's pods are not known yet: the
    /// first list of pods retries it at once.
    waits_for_pods: bool,
    /// A ProbeSet's uprobe with no container of its pods on this node: in
    /// force with nothing to attach to, so reported running with nothing
    /// counted; it attaches when a pod of its starts (each pod change
    /// retries it).
    idle: bool,
}

/// Why an idle uprobe ([`Failed::idle`]) does not run.
const NO_CONTAINER: &str = "no container of the ProbeSet's pods runs on this node; the uprobe \
     attaches when one does";

/// Where the configuration in force came from.
struct Source {
    config: AgentConfig,
    /// `Config.version` when the operator pushed it; empty for the file.
    version: String,
    /// A pushed configuration holds only this node's probes already.
    pushed: bool,
}

/// The probes of this node: what should run, what runs, what failed.
#[derive(Default)]
struct State {
    source: Option<Source>,
    /// The file as last read: a change makes it the configuration again.
    file: Option<Vec<u8>>,
    /// The probes this node should run, in id order, loaded or not.
    desired: Vec<AgentProbe>,
    loaded: HashMap<String, Loaded>,
    failed: HashMap<String, Failed>,
    /// Parsed kernel BTF, kept while probes wait to be retried so a retry
    /// does not parse it again; dropped once every probe runs (it is tens
    /// of MiB).
    kernel: Option<Kernel>,
    /// Where the kernel's BTF is read (`--kernel-btf`).
    kernel_btf: PathBuf,
    /// The pods on this node, watched once a probe observes only pods.
    pods: Option<PodWatch>,
    /// Where pod cgroups are looked for (`--pod-cgroup-root`).
    pod_cgroup_root: Option<PathBuf>,
    /// Uprobe probes whose binaries are being opened off the loop, as
    /// they were when the open started, by id.
    opening: HashMap<String, AgentProbe>,
    /// Where those opens send their results, and where the loop takes
    /// them; made at the first open.
    opened_tx: Option<mpsc::UnboundedSender<Opened>>,
    opened_rx: Option<mpsc::UnboundedReceiver<Opened>>,
    /// Per-process uprobes being brought in line with their pods'
    /// processes off the loop, by id; at most one sync each at a time.
    syncing: HashSet<String>,
    synced_tx: Option<mpsc::UnboundedSender<ProcessesSynced>>,
    synced_rx: Option<mpsc::UnboundedReceiver<ProcessesSynced>>,
    /// Whether node facts are static (`--node-labels`), as last applied.
    static_facts: bool,
    node: String,
    metrics: Option<NodeMetrics>,
}

/// Runs node mode until SIGINT or SIGTERM.
pub async fn run(args: NodeArgs) -> Result<(), NodeError> {
    // Missing capabilities or BTF are reported per probe and retried: an
    // agent that exits would crash-loop and tell the operator nothing.
    if let Err(e) = crate::probes::check_capabilities() {
        tracing::error!(error = %e, "probes cannot load until this is fixed; retrying with backoff");
    }
    if let Err(e) = std::fs::metadata(&args.kernel_btf) {
        tracing::error!(path = %args.kernel_btf.display(), error = %e, "kernel BTF unreadable; probes cannot load until it is there, retrying with backoff");
    }
    let facts =
        if args.node_labels.is_empty() && std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
            match kube::Client::try_default().await {
                Ok(c) => Facts::Api(c),
                Err(e) => {
                    tracing::error!(error = %e, "no Kubernetes API; node selectors see no labels");
                    Facts::Static(BTreeMap::new())
                }
            }
        } else {
            Facts::Static(args.node_labels.iter().cloned().collect())
        };
    let node = args.node_name.clone();
    let shared: SharedSnapshots = Arc::new(Mutex::new(Vec::new()));
    let registry = metrics::registry(shared.clone());
    let node_metrics = NodeMetrics::new(&registry).expect("node metrics register once");
    // A new boot id per start: the kernel counters start from zero.
    let boot_id = new_boot_id();
    let (uplink, mut pushed) = match &args.operator_addr {
        None => (None, None),
        Some(address) => {
            let m = UplinkMetrics::new(&registry).expect("uplink metrics register once");
            let settings = match uplink::Settings::new(
                address.clone(),
                args.token_file.clone(),
                args.operator_ca.clone(),
                args.insecure_plaintext_for_local_development,
            ) {
                Ok(s) => s,
                Err(e) => return Err(NodeError::Operator(e)),
            };
            if settings.ca_file.is_none() {
                tracing::warn!(operator = %address, "reporting WITHOUT TLS \
                    (--insecure-plaintext-for-local-development): reports and pushed \
                    configuration cross the network readable and forgeable");
            }
            tracing::info!(operator = %address, %boot_id, "reporting to the operator");
            let (u, configs) = Uplink::spawn(
                settings,
                uplink::hello(&node, &boot_id, &args.kernel_btf),
                m,
            );
            (Some(u), Some(configs))
        }
    };
    let _server = match args.metrics_addr {
        MetricsAddr::Off => None,
        MetricsAddr::On(addr) => {
            let (local, task) = metrics::serve(addr, registry)
                .await
                .map_err(|source| NodeError::Metrics { addr, source })?;
            tracing::info!(%local, "serving /metrics");
            Some(task)
        }
    };
    let mut sigint = signal(SignalKind::interrupt()).map_err(NodeError::Signals)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(NodeError::Signals)?;
    let mut state = State {
        kernel_btf: args.kernel_btf.clone(),
        pod_cgroup_root: args.pod_cgroup_root.clone().or_else(cgroup2_mount),
        node: node.clone(),
        metrics: Some(node_metrics),
        ..State::default()
    };
    let mut reload = tokio::time::interval(args.reload_interval);
    let mut publish_tick = tokio::time::interval(args.interval);
    let mut process_tick = tokio::time::interval(PROCESS_SYNC_INTERVAL);
    let mut seq: u64 = 0;
    let mut next_report = Instant::now() + state.report_interval(args.interval);
    loop {
        tokio::select! {
            // Every pass, not only when the file changes: node labels
            // change, failed probes come due for a retry, and a pod's
            // cgroup appears after the pod does.
            _ = reload.tick() => {
                state.read_file(&args.config);
                state.apply(&facts).await;
            }
            () = next_pod_change(&mut state.pods) => state.pods_changed().await,
            Some(opened) = next_opened(&mut state.opened_rx) => state.opened(opened),
            _ = process_tick.tick() => state.sync_processes(),
            Some(synced) = next_synced(&mut state.synced_rx) => state.processes_synced(synced),
            Some(config) = next_config(&mut pushed) => {
                if state.take_pushed(config) {
                    state.apply(&facts).await;
                    if let Some(u) = &uplink {
                        u.running(state.version());
                    }
                }
            }
            // Records are written without wakeups: each ring is read on
            // its own drain clock (`drain.rs`), the cadence the plan
            // predicts drops for.
            () = next_drain(&state.loaded) => state.drain_due(),
            _ = publish_tick.tick() => publish(&state.loaded, &shared, args.metrics_without_addresses),
            () = tokio::time::sleep_until(next_report) => {
                if let Some(u) = &uplink {
                    seq += 1;
                    u.send(state.report(&boot_id, seq));
                }
                next_report = Instant::now() + state.report_interval(args.interval);
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    state.loaded.clear(); // detaches every program
    tracing::info!("all probes detached");
    Ok(())
}

/// Drains every ring whose drain is due, and says how late each was.
fn drain_due(loaded: &mut HashMap<String, Loaded>, metrics: Option<&NodeMetrics>) {
    let now = Instant::now().into_std();
    for l in loaded.values_mut() {
        if let Some(late) = l.drain.late_by(now) {
            l.probe.drain(|_| {});
            if let Some(m) = metrics {
                m.drain_lateness.observe(late.as_secs_f64());
            }
        }
    }
}

/// Awaits `f` (the API, a filesystem) while draining rings as they come
/// due: other tenants' configuration changes must not delay a drain.
async fn draining<T>(
    loaded: &mut HashMap<String, Loaded>,
    metrics: Option<&NodeMetrics>,
    f: impl std::future::Future<Output = T>,
) -> T {
    tokio::pin!(f);
    loop {
        tokio::select! {
            out = &mut f => return out,
            () = next_drain(loaded) => drain_due(loaded, metrics),
        }
    }
}

/// A uprobe probe and what opening its binary gave.
type Opened = (AgentProbe, Result<Option<UprobeTarget>, TargetError>);

/// An open of a uprobe binary, running off the loop.
type Opening = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Option<UprobeTarget>, TargetError>> + Send>,
>;

/// The next uprobe binary opened off the loop; never, before the first.
async fn next_opened(rx: &mut Option<mpsc::UnboundedReceiver<Opened>>) -> Option<Opened> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// A per-process uprobe's sync with its pods' processes, by probe id.
type ProcessesSynced = (String, Result<Synced, ProbeError>);

/// The next per-process uprobe sync done off the loop; never, before the
/// first.
async fn next_synced(
    rx: &mut Option<mpsc::UnboundedReceiver<ProcessesSynced>>,
) -> Option<ProcessesSynced> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// When the first ring's drain is due; never, without a probe.
async fn next_drain(loaded: &HashMap<String, Loaded>) {
    match drain::next_deadline(loaded.values().map(|l| &l.drain)) {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The next pushed configuration; never, without an operator.
async fn next_config(
    configs: &mut Option<mpsc::UnboundedReceiver<v1::Config>>,
) -> Option<v1::Config> {
    match configs {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The next change of the node's pods; never, without a pod watch.
async fn next_pod_change(pods: &mut Option<PodWatch>) {
    match pods {
        Some(w) => w.changed().await,
        None => std::future::pending().await,
    }
}

impl State {
    fn drain_due(&mut self) {
        drain_due(&mut self.loaded, self.metrics.as_ref());
    }

    /// Makes the file the configuration if it changed since last read. An
    /// unreadable or invalid file keeps what runs.
    fn read_file(&mut self, path: &Path) {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                if self.source.is_none() {
                    tracing::warn!(error = %e, path = %path.display(), "agent configuration unreadable; waiting for it");
                }
                return;
            }
        };
        if self.file.as_ref() == Some(&bytes) {
            return;
        }
        match parse_config(&bytes).and_then(checked) {
            Ok(config) => {
                self.source = Some(Source {
                    config,
                    version: String::new(),
                    pushed: false,
                });
            }
            Err(e) => {
                self.refused("file");
                tracing::warn!(error = %e, path = %path.display(), "agent configuration invalid; keeping the running probes")
            }
        }
        self.file = Some(bytes);
    }

    /// Makes a pushed configuration the one in force; false if it is the
    /// one in force already or does not parse.
    fn take_pushed(&mut self, c: v1::Config) -> bool {
        if self.source.as_ref().is_some_and(|s| s.version == c.version) {
            return false;
        }
        match serde_json::from_str::<AgentConfig>(&c.agent_config_json)
            .map_err(|e| e.to_string())
            .and_then(checked)
        {
            Ok(config) => {
                self.source = Some(Source {
                    config,
                    version: c.version,
                    pushed: true,
                });
                true
            }
            Err(e) => {
                self.refused("pushed");
                tracing::error!(error = %e, version = %c.version, "pushed configuration refused; keeping the running probes");
                false
            }
        }
    }

    fn refused(&self, source: &str) {
        if let Some(m) = &self.metrics {
            m.configs_refused.with_label_values(&[source]).inc();
        }
    }

    fn version(&self) -> &str {
        self.source.as_ref().map_or("", |s| s.version.as_str())
    }

    /// The agent reports at the shortest report interval of its probes.
    fn report_interval(&self, default: Duration) -> Duration {
        self.desired
            .iter()
            .map(|p| p.report_interval)
            .filter(|d| !d.is_zero())
            .min()
            .unwrap_or(default)
            .max(Duration::from_millis(100))
    }

    fn labels(&self, p: &AgentProbe) -> ProbeLabels {
        ProbeLabels {
            namespace: p.namespace.clone(),
            probeset: p.probeset.clone(),
            probe: p.spec.name.clone(),
            node: self.node.clone(),
        }
    }

    /// Brings the loaded probes in line with the configuration in force,
    /// and retries failed probes that are due.
    async fn apply(&mut self, facts: &Facts) {
        let Some(source) = &self.source else {
            return;
        };
        // Owned: loading below needs `self` mutably.
        let mut wanted: Vec<AgentProbe> = if source.pushed {
            source.config.probes.clone()
        } else {
            let labels = draining(
                &mut self.loaded,
                self.metrics.as_ref(),
                facts.labels(&self.node),
            )
            .await;
            match labels {
                Ok(labels) => probes_for_node(&source.config, &labels)
                    .into_iter()
                    .cloned()
                    .collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "node labels unavailable; keeping the running probes");
                    return;
                }
            }
        };
        wanted.sort_by_key(AgentProbe::id);
        wanted.dedup_by_key(|p| p.id());
        // The node budget decides, before any map is created, what each
        // probe gets on this node (its real CPUs and page size), and which
        // probes it cannot hold at all.
        let budget = source.config.node_budget_bytes;
        let Shared {
            load: wanted,
            refused,
            planned_bytes,
        } = share_node_budget(wanted, &source.config.namespace_limits, budget);
        if let Some(m) = &self.metrics {
            m.node_budget.set(i64::try_from(budget).unwrap_or(i64::MAX));
            m.node_budget_planned
                .set(i64::try_from(planned_bytes).unwrap_or(i64::MAX));
        }
        let by_id: HashMap<String, &AgentProbe> = wanted
            .iter()
            .chain(refused.iter().map(|(p, _)| p))
            .map(|p| (p.id(), p))
            .collect();
        let refused_ids: BTreeSet<String> = refused.iter().map(|(p, _)| p.id()).collect();
        let mut gone = Vec::new();
        self.loaded.retain(|id, l| {
            let keep = !refused_ids.contains(id) && by_id.get(id).is_some_and(|p| **p == l.config);
            if !keep {
                tracing::info!(probe = %id, "probe removed or changed; detaching");
                gone.push(l.labels.clone());
            }
            keep
        });
        // A changed configuration is tried at once; a removed one forgotten.
        let now = Instant::now();
        self.failed.retain(|id, f| match by_id.get(id) {
            Some(p) => {
                if **p != f.config {
                    f.attempts = 0;
                    f.retry_at = now;
                }
                true
            }
            None => {
                gone.push(ProbeLabels {
                    namespace: f.config.namespace.clone(),
                    probeset: f.config.probeset.clone(),
                    probe: f.config.spec.name.clone(),
                    node: String::new(),
                });
                false
            }
        });
        for mut labels in gone {
            labels.node = self.node.clone();
            self.forget_metrics(&labels);
        }
        if self.pods.is_none()
            && wanted.iter().any(AgentProbe::observes_pods_only)
            && let Facts::Api(client) = facts
        {
            tracing::info!(node = %self.node, "watching the pods on this node");
            self.pods = Some(PodWatch::start(
                client.clone(),
                &self.node,
                self.metrics.clone(),
            ));
        }
        for (p, why) in &refused {
            let known = self
                .failed
                .get(&p.id())
                .is_some_and(|f| f.config == *p && f.failure.message == *why);
            if !known {
                self.fail(p, LoadFailure::other(why), false, now);
            }
        }
        let static_facts = matches!(facts, Facts::Static(_));
        self.static_facts = static_facts;
        self.desired = wanted;
        self.load_due(static_facts).await;
        self.sync_pods();
    }

    /// The pods on this node changed: probes waiting for the first list
    /// load now, and running filters follow the pods.
    async fn pods_changed(&mut self) {
        let synced = self.pods.as_ref().is_some_and(|w| w.health().synced);
        if synced {
            let now = Instant::now();
            let mut waiting = false;
            for f in self.failed.values_mut().filter(|f| f.waits_for_pods) {
                f.retry_at = now;
                waiting = true;
            }
            if waiting {
                self.load_due(false).await;
            }
        }
        self.sync_pods();
        self.sync_processes();
    }

    /// Brings every per-process uprobe in line with the processes of its
    /// pods, off the loop: reading cgroupfs and /proc and opening perf
    /// events run on a blocking thread, one sync per probe at a time, and
    /// the result comes back to [`State::processes_synced`].
    fn sync_processes(&mut self) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let due: Vec<(String, ProcessAttach, AgentProbe)> = self
            .loaded
            .iter()
            .filter(|(id, _)| !self.syncing.contains(*id))
            .filter_map(|(id, l)| Some((id.clone(), l.processes.clone()?, l.config.clone())))
            .collect();
        for (id, attach, p) in due {
            let Some(dirs) = self.pod_dirs(&p) else {
                continue;
            };
            if self.synced_tx.is_none() {
                let (tx, rx) = mpsc::unbounded_channel();
                self.synced_tx = Some(tx);
                self.synced_rx = Some(rx);
            }
            let tx = self.synced_tx.clone().expect("set above");
            self.syncing.insert(id.clone());
            tokio::task::spawn_blocking(move || {
                // One past the cap, so a pod past it is seen to be.
                let wanted = crate::containers::processes(
                    dirs.iter().map(PathBuf::as_path),
                    &crate::containers::proc_root(),
                    MAX_PROCESSES_PER_UPROBE + 1,
                );
                let _ = tx.send((id, attach.sync(&wanted)));
            });
        }
    }

    /// A per-process uprobe's sync came back: its metric and log.
    fn processes_synced(&mut self, (id, synced): ProcessesSynced) {
        self.syncing.remove(&id);
        let Some(l) = self.loaded.get(&id) else {
            return;
        };
        let attached = l.processes.as_ref().map_or(0, |a| a.attached().len());
        if let Some(m) = &self.metrics {
            m.uprobe_processes
                .with_label_values(&l.labels.values())
                .set(attached as i64);
        }
        match synced {
            Ok(s) => {
                if s.added + s.removed > 0 {
                    tracing::info!(probe = %id, added = s.added, removed = s.removed,
                        attached = s.attached, "uprobe follows its pods' processes");
                }
                if s.left_out > 0 {
                    tracing::error!(probe = %id, attached = s.attached,
                        "the ProbeSet's pods run more than MAX_PROCESSES_PER_UPROBE \
                         ({MAX_PROCESSES_PER_UPROBE}) processes on this node; the uprobe is \
                         attached to the {MAX_PROCESSES_PER_UPROBE} longest running and \
                         observes none of the others");
                }
            }
            Err(e) => {
                tracing::error!(probe = %id, error = %e, attached,
                    "the uprobe could not attach to every process of its pods; retrying");
            }
        }
    }

    /// Loads every desired probe that is neither running nor waiting for
    /// its next retry. A uprobe's binary is opened off the loop, on a
    /// blocking thread under `PARSE_DEADLINE`, and its probe loads when
    /// the result comes back ([`State::opened`]): neither a slow
    /// filesystem nor a crafted binary stalls drains, reports,
    /// configuration or signals.
    async fn load_due(&mut self, static_facts: bool) {
        let now = Instant::now();
        let due: Vec<AgentProbe> = self
            .desired
            .iter()
            .filter(|p| {
                let id = p.id();
                !self.loaded.contains_key(&id)
                    && self.failed.get(&id).is_none_or(|f| f.retry_at <= now)
            })
            .cloned()
            .collect();
        for p in &due {
            let target = match (p.spec.kind, &p.spec.uprobe, &p.spec.go_runtime) {
                (ProbeKind::Uprobe, Some(u), _) => Some((u.binary.clone(), u.symbol.clone())),
                (ProbeKind::GoRuntime, _, Some(g)) => Some((g.binary.clone(), String::new())),
                _ => None,
            };
            let Some((binary, symbol)) = target else {
                continue;
            };
            if self.opening.contains_key(&p.id()) {
                continue;
            }
            // The binary is opened and parsed off the loop, under its
            // deadline; the loop keeps draining, reporting, taking
            // configuration and signals, and loads the probe when the
            // result comes back (`opened`).
            let open: Opening = if resolves_in_containers(p) {
                let Some(dirs) = self.pod_dirs(p) else {
                    // The pods are not known yet: try_load waits.
                    continue;
                };
                Box::pin(UprobeTarget::open_in_containers_async(
                    p.spec.kind,
                    dirs,
                    binary,
                    symbol,
                ))
            } else {
                let open = UprobeTarget::open_async(
                    p.spec.kind,
                    crate::target::host_root(),
                    binary,
                    symbol,
                );
                Box::pin(async move { open.await.map(Some) })
            };
            let tx = self.opened_sender();
            let probe = p.clone();
            tokio::spawn(async move {
                let _ = tx.send((probe, open.await));
            });
            self.opening.insert(p.id(), p.clone());
        }
        for p in &due {
            if self.opening.contains_key(&p.id()) {
                continue;
            }
            // A load takes tens of milliseconds (verifier, attach): the
            // rings already running are drained between loads, not after
            // the last.
            self.drain_due();
            if let Err((failure, waits_for_pods)) = self.try_load(p, static_facts, None) {
                self.fail(p, failure, waits_for_pods, now);
            }
        }
        if self.failed.is_empty() && self.kernel.take().is_some() {
            // SAFETY: malloc_trim only releases free heap memory.
            unsafe { libc::malloc_trim(0) };
        }
    }

    /// Where opens started by `load_due` send their results.
    fn opened_sender(&mut self) -> mpsc::UnboundedSender<Opened> {
        if self.opened_tx.is_none() {
            let (tx, rx) = mpsc::unbounded_channel();
            self.opened_tx = Some(tx);
            self.opened_rx = Some(rx);
        }
        self.opened_tx.clone().expect("set above")
    }

    /// A uprobe binary opened off the loop: loads its probe if it is still
    /// wanted as it was, else drops it (detaching nothing: it never ran).
    fn opened(&mut self, (p, opened): Opened) {
        let id = p.id();
        if self.opening.get(&id) != Some(&p) {
            return;
        }
        self.opening.remove(&id);
        if !self.desired.contains(&p) || self.loaded.contains_key(&id) {
            return;
        }
        let now = Instant::now();
        let binary = match opened {
            Ok(None) => {
                self.idle(&p, now);
                return;
            }
            Ok(Some(target)) => Ok(target),
            Err(e) => Err(e),
        };
        self.drain_due();
        if let Err((failure, waits_for_pods)) = self.try_load(&p, self.static_facts, Some(binary)) {
            self.fail(&p, failure, waits_for_pods, now);
        }
    }

    /// One attempt to load `p`, a uprobe with its binary opened already;
    /// on failure, why, and whether it only waits for the node's pods to
    /// be known.
    fn try_load(
        &mut self,
        p: &AgentProbe,
        static_facts: bool,
        binary: Option<Result<UprobeTarget, TargetError>>,
    ) -> Result<(), (LoadFailure, bool)> {
        let id = p.id();
        let mut config = probe_config(p, std::process::id())
            .map_err(|e| (LoadFailure::from_error(&e), false))?;
        let fixed_cgroups: BTreeSet<u64> = config.cgroup_ids.iter().copied().collect();
        let scope = PodScope::of(p).map_err(|e| (LoadFailure::other(&e), false))?;
        if let Some(scope) = &scope {
            if scope.namespaces.is_some() && !p.is_cluster() && !fixed_cgroups.is_empty() {
                return Err((LoadFailure::other(NAMESPACED_CGROUPS), false));
            }
            if static_facts {
                return Err((
                    LoadFailure::other(
                        "observing only pods (a podSelector, or a ProbeSet's namespace) needs \
                         the Kubernetes API: run in a cluster, without --node-labels",
                    ),
                    false,
                ));
            }
            let Some(watch) = &self.pods else {
                return Err((LoadFailure::other("the pod watch has not started"), true));
            };
            let health = watch.health();
            if !health.synced {
                return Err((
                    LoadFailure::other(&format!(
                        "waiting for the first list of the pods on this node{}",
                        health
                            .last_error
                            .map(|e| format!(": {e}"))
                            .unwrap_or_default()
                    )),
                    true,
                ));
            }
            // Pods come and go while the probe runs: the filter is on from
            // the start, empty or not, and never widens to all processes.
            config.cgroup_filter = true;
            config.cgroup_ids.extend(self.selected(scope));
        }
        crate::probes::check_capabilities().map_err(|e| (LoadFailure::from_error(&e), false))?;
        if self.kernel.is_none() {
            let kernel = Kernel::open_at(&self.kernel_btf)
                .map_err(|e| (LoadFailure::from_error(&e), false))?;
            self.kernel = Some(kernel);
            // Parsing the kernel's BTF took as long as a load.
            drain_due(&mut self.loaded, self.metrics.as_ref());
        }
        let kernel = self.kernel.as_ref().expect("opened above");
        if binary.is_none() && resolves_in_containers(p) && p.spec.kind.uses_uprobes() {
            // Never the host's binary for a ProbeSet.
            return Err((
                LoadFailure::other("waiting for the node's pods to find the binary in"),
                true,
            ));
        }
        // A ProbeSet's uprobe breaks only into its pods' processes, never
        // into every process that maps the file (a shared layer's libc).
        config.per_process_uprobes = resolves_in_containers(p) && p.spec.kind.uses_uprobes();
        let probe = match binary {
            Some(opened) => Probe::load_opened(kernel, &config, opened),
            None => Probe::load(kernel, &config),
        }
        .map_err(|e| (LoadFailure::from_error(&e), false))?;
        tracing::info!(probe = %id, kind = p.spec.kind.as_str(), "probe attached");
        let labels = self.labels(p);
        if let Some(m) = &self.metrics {
            m.probe_loads.with_label_values(&labels.values()).inc();
            if scope.is_some() {
                let pods = probe.cgroup_filter().len() - fixed_cgroups.len();
                m.pod_filter_cgroups
                    .with_label_values(&labels.values())
                    .set(pods as i64);
            }
        }
        if let Some(f) = self.failed.remove(&id) {
            self.clear_failing(&labels, &f.failure);
        }
        self.syncing.remove(&id);
        self.loaded.insert(
            id,
            Loaded {
                config: p.clone(),
                scope,
                fixed_cgroups,
                labels,
                processes: probe.process_attach(),
                probe,
                drain: DrainClock::new(p.drain_interval, Instant::now().into_std()),
            },
        );
        // Attached to no process yet: its pods' processes join at once.
        self.sync_processes();
        Ok(())
    }

    /// Records that `p` has nothing to attach to on this node yet; a
    /// failure before (say, the binary not in the pods' containers) is
    /// cleared.
    fn idle(&mut self, p: &AgentProbe, now: Instant) {
        let id = p.id();
        if let Some(f) = self.failed.get(&id)
            && !f.waits_for_pods
        {
            let (labels, previous) = (self.labels(p), f.failure.clone());
            self.clear_failing(&labels, &previous);
        }
        tracing::debug!(probe = %id, "no container of the ProbeSet's pods on this node");
        self.failed.insert(
            id,
            Failed {
                failure: LoadFailure::other(NO_CONTAINER),
                config: p.clone(),
                attempts: 0,
                retry_at: now + RETRY_FIRST,
                waits_for_pods: true,
                idle: true,
            },
        );
    }

    /// Records a failed attempt and when to try again.
    fn fail(&mut self, p: &AgentProbe, failure: LoadFailure, waits_for_pods: bool, now: Instant) {
        let id = p.id();
        let labels = self.labels(p);
        if waits_for_pods {
            // Not a failure of the probe: it loads as soon as the first list
            // of pods arrives ([`State::pods_changed`]); a list that keeps
            // failing shows in the pod-watch metrics and in the report.
            tracing::debug!(probe = %id, reason = %failure.message, "probe waits for the node's pods");
            let attempts = self.failed.get(&id).map_or(0, |f| f.attempts);
            self.failed.insert(
                id,
                Failed {
                    failure,
                    config: p.clone(),
                    attempts,
                    retry_at: now + RETRY_FIRST,
                    waits_for_pods,
                    idle: false,
                },
            );
            return;
        }
        let attempts = self.failed.get(&id).map_or(0, |f| f.attempts) + 1;
        let delay = retry_delay(attempts);
        tracing::warn!(probe = %id, error = %failure.message, attempt = attempts,
            retry_in = ?delay, "probe not running; the others keep running");
        if let Some(previous) = self.failed.get(&id) {
            let previous = previous.failure.clone();
            self.clear_failing(&labels, &previous);
        }
        if let Some(m) = &self.metrics {
            let r = reason(failure.kind);
            let mut values = labels.values().to_vec();
            values.push(r);
            m.probe_load_failures.with_label_values(&values).inc();
            m.probe_failing.with_label_values(&values).set(1);
        }
        self.failed.insert(
            id,
            Failed {
                failure,
                config: p.clone(),
                attempts,
                retry_at: now + delay,
                waits_for_pods,
                idle: false,
            },
        );
    }

    fn clear_failing(&self, labels: &ProbeLabels, failure: &LoadFailure) {
        if let Some(m) = &self.metrics {
            let mut values = labels.values().to_vec();
            values.push(reason(failure.kind));
            let _ = m.probe_failing.remove_label_values(&values);
        }
    }

    /// Drops the per-probe metrics of a probe this node no longer runs.
    fn forget_metrics(&self, labels: &ProbeLabels) {
        if let Some(m) = &self.metrics {
            let values = labels.values();
            let _ = m.pod_filter_cgroups.remove_label_values(&values);
            let _ = m.uprobe_processes.remove_label_values(&values);
            for r in ["missing_btf", "verifier", "missing_tracepoint", "other"] {
                let mut v = values.to_vec();
                v.push(r);
                let _ = m.probe_failing.remove_label_values(&v);
            }
        }
    }

    /// cgroup directories of the pods `p` observes, once the node's pods
    /// are known.
    fn pod_dirs(&self, p: &AgentProbe) -> Option<Vec<PathBuf>> {
        let watch = self.pods.as_ref()?;
        if !watch.health().synced {
            return None;
        }
        let root = self.pod_cgroup_root.as_ref()?;
        let scope = PodScope::of(p).ok()??;
        let pods = watch.pods();
        let index = pod_cgroup_index(root);
        Some(
            selected_pods(&pods, &scope, &index)
                .map(Path::to_path_buf)
                .collect(),
        )
    }

    /// cgroup ids of the pods `scope` selects, as now known.
    fn selected(&self, scope: &PodScope) -> BTreeSet<u64> {
        let (Some(watch), Some(root)) = (&self.pods, &self.pod_cgroup_root) else {
            return BTreeSet::new();
        };
        selected_cgroups(&watch.pods(), scope, &pod_cgroup_index(root))
    }

    /// Writes each pod-selected probe's filter in place: the pods that
    /// match now, plus the probe's own cgroups. Nothing is reloaded.
    fn sync_pods(&mut self) {
        let (Some(watch), Some(root)) = (&self.pods, &self.pod_cgroup_root) else {
            return;
        };
        if !self.loaded.values().any(|l| l.scope.is_some()) {
            return;
        }
        let pods = watch.pods();
        let index = pod_cgroup_index(root);
        for l in self.loaded.values_mut() {
            let Some(scope) = &l.scope else {
                continue;
            };
            let selected = selected_cgroups(&pods, scope, &index);
            let ids: BTreeSet<u64> = selected.union(&l.fixed_cgroups).copied().collect();
            if ids == *l.probe.cgroup_filter() {
                continue;
            }
            match l.probe.set_cgroup_filter(&ids) {
                Ok((added, removed)) => {
                    tracing::info!(probe = %l.config.id(), added, removed, pods = selected.len(),
                        "pod filter updated in place");
                    if let Some(m) = &self.metrics {
                        let values = l.labels.values();
                        m.pod_filter_updates
                            .with_label_values(&values)
                            .inc_by((added + removed) as u64);
                        m.pod_filter_cgroups
                            .with_label_values(&values)
                            .set(selected.len() as i64);
                    }
                }
                Err(e) => {
                    tracing::error!(probe = %l.config.id(), error = %e,
                        "pod filter could not be updated; it keeps what it has");
                }
            }
        }
    }

    /// Report number `seq`: every probe this node should run, with what it
    /// counted or why it does not run.
    fn report(&self, boot_id: &str, seq: u64) -> v1::Report {
        let probes = self
            .desired
            .iter()
            .filter_map(|p| {
                let id = p.id();
                if let Some(l) = self.loaded.get(&id) {
                    return Some(match l.probe.snapshot() {
                        Ok(s) => probe_report(p, Ok(&s)),
                        Err(e) => probe_report(
                            p,
                            Err(&LoadFailure::other(&format!(
                                "reading the probe failed: {e}"
                            ))),
                        ),
                    });
                }
                self.failed.get(&id).map(|f| {
                    if f.idle {
                        // In force, with nothing in scope to observe.
                        let nothing = crate::probes::Snapshot {
                            kind: Some(p.spec.kind),
                            ring_bytes: p.ring_bytes,
                            predicted_drop: p.predicted_drop,
                            ..Default::default()
                        };
                        return probe_report(p, Ok(&nothing));
                    }
                    probe_report(p, Err(&f.failure))
                })
            })
            .collect();
        v1::Report {
            boot_id: boot_id.to_owned(),
            seq,
            unix_millis: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            config_version: self.version().to_owned(),
            probes,
        }
    }
}

fn publish(loaded: &HashMap<String, Loaded>, shared: &SharedSnapshots, hide_addresses: bool) {
    let mut out = Vec::with_capacity(loaded.len());
    for l in loaded.values() {
        match l.probe.snapshot() {
            Ok(mut s) => {
                if hide_addresses {
                    metrics::without_addresses(&mut s);
                }
                out.push((l.labels.clone(), s))
            }
            Err(e) => {
                tracing::warn!(probe = %l.labels.probe, error = %e, "reading the probe failed")
            }
        }
    }
    out.sort_by(|a, b| {
        (&a.0.namespace, &a.0.probeset, &a.0.probe).cmp(&(
            &b.0.namespace,
            &b.0.probeset,
            &b.0.probe,
        ))
    });
    *shared.lock().unwrap_or_else(PoisonError::into_inner) = out;
}

#[cfg(test)]
mod tests;
