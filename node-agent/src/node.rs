//! `ringwarden-agent node`: the DaemonSet mode.
//!
//! Runs the probes of the agent configuration the operator renders into a
//! ConfigMap (mounted as a file), keeps them in step with it without a
//! restart, and serves `/metrics`. Each probe is keyed by its id and its
//! whole configuration: an unchanged probe keeps running (and counting)
//! across reloads, a changed one is reloaded, a removed one detached.
//!
//! The node's labels decide which probes apply (`nodeSelector`); a
//! ProbeSet's `podSelector` becomes a cgroup filter: the pods on this node
//! that match, found by their UID under the cgroup v2 tree. Both come from
//! the Kubernetes API with the agent's service account, or from
//! `--node-labels` and no pod filtering when run outside a cluster.
//!
//! With `--operator-addr` it also reports to the operator ([`crate::uplink`])
//! and runs the configuration the operator pushes on that stream. The file
//! stays the durable copy: when it changes it is in force again, and an
//! agent that cannot reach the operator keeps running what it has.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use ringwarden_crds::{AgentConfig, AgentProbe};
use ringwarden_proto::v1;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
    time::Instant,
};

use crate::{
    cli::{MetricsAddr, NodeArgs},
    metrics::{self, ProbeLabels, SharedSnapshots},
    probes::{Kernel, Probe, ProbeError, cgroup2_mount},
    report::{LoadFailure, probe_report},
    standalone::probe_config,
    uplink::{self, Uplink, UplinkMetrics, new_boot_id},
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
}

/// Parses an agent configuration (YAML, of which JSON is a subset).
pub fn parse_config(bytes: &[u8]) -> Result<AgentConfig, String> {
    serde_yaml_ng::from_slice(bytes).map_err(|e| e.to_string())
}

/// The probes of `config` whose node selector this node's labels satisfy.
pub fn probes_for_node<'a>(
    config: &'a AgentConfig,
    labels: &BTreeMap<String, String>,
) -> Vec<&'a AgentProbe> {
    config
        .probes
        .iter()
        .filter(|p| {
            p.node_selector
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
        })
        .collect()
}

/// The cgroup directory of a pod under the cgroup v2 tree, found by its UID:
/// `…/kubepods-burstable-pod<uid_with_underscores>.slice` with the systemd
/// driver, `…/pod<uid>` with the cgroupfs driver.
pub fn pod_cgroup(root: &Path, uid: &str) -> Option<PathBuf> {
    let systemd = format!("pod{}.slice", uid.replace('-', "_"));
    let cgroupfs = format!("pod{uid}");
    let kubepods: Vec<PathBuf> = ["kubepods.slice", "kubepods"]
        .iter()
        .map(|d| root.join(d))
        .filter(|p| p.is_dir())
        .collect();
    // Pods sit at most two levels below kubepods (QoS class, then pod).
    let mut stack: Vec<(PathBuf, u8)> = kubepods.into_iter().map(|p| (p, 0)).collect();
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if !path.is_dir() {
                continue;
            }
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(&systemd) || *name == cgroupfs {
                return Some(path);
            }
            if depth < 2 {
                stack.push((path, depth + 1));
            }
        }
    }
    None
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

    /// cgroup ids of the pods on `node` that match a probe's pod selector;
    /// `None` when the probe has no pod selector.
    async fn pod_cgroups(
        &self,
        node: &str,
        probe: &AgentProbe,
    ) -> Result<Option<Vec<u64>>, String> {
        let Some(selector) = &probe.pod_selector else {
            return Ok(None);
        };
        let Self::Api(client) = self else {
            return Err("a podSelector needs the Kubernetes API (run in a cluster)".into());
        };
        let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
            kube::Api::namespaced(client.clone(), &probe.namespace);
        let mut params = kube::api::ListParams::default().fields(&format!("spec.nodeName={node}"));
        if let Some(labels) = label_selector_string(selector) {
            params = params.labels(&labels);
        }
        let list = pods
            .list(&params)
            .await
            .map_err(|e| format!("listing pods: {e}"))?;
        let root = cgroup2_mount().ok_or("no cgroup2 file system mounted")?;
        let mut ids = Vec::new();
        for pod in list {
            let Some(uid) = pod.metadata.uid else {
                continue;
            };
            if let Some(dir) = pod_cgroup(&root, &uid)
                && let Some(path) = dir.to_str()
                && let Ok(id) = crate::probes::cgroup_id(path)
            {
                ids.push(id);
            }
        }
        Ok(Some(ids))
    }
}

/// A label selector as the API's `labelSelector` query string.
fn label_selector_string(
    s: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
) -> Option<String> {
    let mut parts: Vec<String> = s
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in s.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            _ => continue,
        });
    }
    (!parts.is_empty()).then(|| parts.join(","))
}

struct Loaded {
    /// The configuration it was loaded from; a different one reloads it.
    config: AgentProbe,
    cgroups: Option<Vec<u64>>,
    labels: ProbeLabels,
    probe: Probe,
}

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
    failed: HashMap<String, LoadFailure>,
}

/// Runs node mode until SIGINT or SIGTERM.
pub async fn run(args: NodeArgs) -> Result<(), NodeError> {
    crate::probes::check_privileges()?;
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
    // A new boot id per start: the kernel counters start from zero.
    let boot_id = new_boot_id();
    let (uplink, mut pushed) = match &args.operator_addr {
        None => (None, None),
        Some(address) => {
            let m = UplinkMetrics::new(&registry).expect("uplink metrics register once");
            let settings = uplink::Settings {
                address: address.clone(),
                token_file: args.token_file.clone(),
            };
            tracing::info!(operator = %address, %boot_id, "reporting to the operator");
            let (u, configs) = Uplink::spawn(settings, uplink::hello(&node, &boot_id), m);
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
    let mut state = State::default();
    let mut reload = tokio::time::interval(args.reload_interval);
    let mut drain = tokio::time::interval(Duration::from_millis(50));
    let mut publish_tick = tokio::time::interval(args.interval);
    let mut seq: u64 = 0;
    let mut next_report = Instant::now() + state.report_interval(args.interval);
    loop {
        tokio::select! {
            // Every pass, not only when the file changes: pods come and go,
            // and node labels change.
            _ = reload.tick() => {
                state.read_file(&args.config);
                state.apply(&facts, &node).await;
            }
            Some(config) = next_config(&mut pushed) => {
                if state.take_pushed(config) {
                    state.apply(&facts, &node).await;
                    if let Some(u) = &uplink {
                        u.running(state.version());
                    }
                }
            }
            _ = drain.tick() => {
                for l in state.loaded.values_mut() {
                    l.probe.drain(|_| {});
                }
            }
            _ = publish_tick.tick() => publish(&state.loaded, &shared),
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

/// The next pushed configuration; never, without an operator.
async fn next_config(
    configs: &mut Option<mpsc::UnboundedReceiver<v1::Config>>,
) -> Option<v1::Config> {
    match configs {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl State {
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
        match parse_config(&bytes) {
            Ok(config) => {
                self.source = Some(Source {
                    config,
                    version: String::new(),
                    pushed: false,
                });
            }
            Err(e) => {
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
        match serde_json::from_str::<AgentConfig>(&c.agent_config_json) {
            Ok(config) => {
                self.source = Some(Source {
                    config,
                    version: c.version,
                    pushed: true,
                });
                true
            }
            Err(e) => {
                tracing::error!(error = %e, version = %c.version, "pushed configuration does not parse; keeping the running probes");
                false
            }
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

    /// Brings the loaded probes in line with the configuration in force.
    async fn apply(&mut self, facts: &Facts, node: &str) {
        let Some(source) = &self.source else {
            return;
        };
        // Owned: loading below needs `self` mutably.
        let wanted: Vec<AgentProbe> = if source.pushed {
            source.config.probes.clone()
        } else {
            match facts.labels(node).await {
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
        let mut desired: HashMap<String, (&AgentProbe, Option<Vec<u64>>)> = HashMap::new();
        let mut failed = HashMap::new();
        for p in &wanted {
            match facts.pod_cgroups(node, p).await {
                Ok(c) => {
                    desired.insert(p.id(), (p, c));
                }
                Err(e) => {
                    failed.insert(p.id(), LoadFailure::other(&e));
                }
            }
        }
        let mut order = wanted.clone();
        order.sort_by_key(AgentProbe::id);
        order.dedup_by_key(|p| p.id());
        self.loaded.retain(|id, l| {
            let keep = desired
                .get(id)
                .is_some_and(|(p, c)| **p == l.config && *c == l.cgroups);
            if !keep {
                tracing::info!(probe = %id, "probe removed or changed; detaching");
            }
            keep
        });
        // Failures of probes still wanted stay until they load.
        self.failed
            .retain(|id, _| desired.contains_key(id) && !self.loaded.contains_key(id));
        self.failed.extend(failed);
        if desired.keys().any(|id| !self.loaded.contains_key(id)) {
            match Kernel::open() {
                Ok(kernel) => {
                    for (id, (p, cgroups)) in desired {
                        if !self.loaded.contains_key(&id) {
                            self.load(&kernel, node, id, p, cgroups);
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot read kernel facts");
                    let failure = LoadFailure::from_error(&e);
                    for id in desired.into_keys() {
                        if !self.loaded.contains_key(&id) {
                            self.failed.insert(id, failure.clone());
                        }
                    }
                }
            }
        }
        self.desired = order;
    }

    fn load(
        &mut self,
        kernel: &Kernel,
        node: &str,
        id: String,
        p: &AgentProbe,
        cgroups: Option<Vec<u64>>,
    ) {
        let result = probe_config(p, std::process::id()).and_then(|mut c| {
            if let Some(ids) = &cgroups {
                if ids.is_empty() {
                    return Err(ProbeError::Filter(
                        "no pod on this node matches the podSelector".into(),
                    ));
                }
                c.cgroup_ids.extend(ids);
            }
            Probe::load(kernel, &c)
        });
        match result {
            Ok(probe) => {
                tracing::info!(probe = %id, kind = p.spec.kind.as_str(), "probe attached");
                self.failed.remove(&id);
                self.loaded.insert(
                    id,
                    Loaded {
                        config: p.clone(),
                        cgroups,
                        labels: ProbeLabels {
                            namespace: p.namespace.clone(),
                            probeset: p.probeset.clone(),
                            probe: p.spec.name.clone(),
                            node: node.to_string(),
                        },
                        probe,
                    },
                );
            }
            Err(e) => {
                tracing::error!(probe = %id, error = %e, "probe failed to load; the others keep running");
                self.failed.insert(id, LoadFailure::from_error(&e));
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
                self.failed.get(&id).map(|f| probe_report(p, Err(f)))
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

fn publish(loaded: &HashMap<String, Loaded>, shared: &SharedSnapshots) {
    let mut out = Vec::with_capacity(loaded.len());
    for l in loaded.values() {
        match l.probe.snapshot() {
            Ok(s) => out.push((l.labels.clone(), s)),
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
mod tests {
    use super::*;

    fn config(yaml: &str) -> AgentConfig {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    const CONFIG: &str = "
probes:
  - {namespace: a, probeset: p, spec: {name: all, kind: syscalls}, ringBytes: 4096, sampleEvery: 1, reportInterval: 10s}
  - {namespace: a, probeset: p, spec: {name: gpu, kind: runqueue}, nodeSelector: {gpu: 'true'}, ringBytes: 4096, sampleEvery: 1, reportInterval: 10s}
";

    fn pushed(version: &str, yaml: &str) -> v1::Config {
        v1::Config {
            version: version.into(),
            agent_config_json: serde_json::to_string(&config(yaml)).unwrap(),
            thresholds: vec![],
        }
    }

    #[test]
    fn a_pushed_configuration_is_in_force_until_the_file_changes() {
        let path = std::env::temp_dir().join(format!("rw-node-{}.yaml", std::process::id()));
        std::fs::write(&path, CONFIG).unwrap();
        let mut state = State::default();
        state.read_file(&path);
        assert_eq!(state.version(), "");
        assert_eq!(state.source.as_ref().unwrap().config.probes.len(), 2);

        let only_all = "probes: [{namespace: a, probeset: p, spec: {name: all, kind: syscalls}, ringBytes: 4096, sampleEvery: 1, reportInterval: 1s}]";
        assert!(state.take_pushed(pushed("v1", only_all)));
        assert!(state.source.as_ref().unwrap().pushed);
        // The same version again changes nothing; nor does a file that
        // did not change since it was read.
        assert!(!state.take_pushed(pushed("v1", only_all)));
        state.read_file(&path);
        assert_eq!(state.version(), "v1");
        // A configuration that does not parse keeps the one in force.
        assert!(!state.take_pushed(v1::Config {
            version: "v2".into(),
            agent_config_json: "{not json".into(),
            thresholds: vec![],
        }));
        assert_eq!(state.version(), "v1");
        // The file changing makes it the configuration again.
        std::fs::write(&path, format!("{CONFIG}\n# edited\n")).unwrap();
        state.read_file(&path);
        assert_eq!(state.version(), "");
        assert!(!state.source.as_ref().unwrap().pushed);
        // An invalid file keeps what is in force.
        std::fs::write(&path, "probes: [{").unwrap();
        state.read_file(&path);
        assert_eq!(state.source.as_ref().unwrap().config.probes.len(), 2);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn the_agent_reports_at_the_shortest_report_interval_of_its_probes() {
        let mut state = State::default();
        assert_eq!(
            state.report_interval(Duration::from_secs(10)),
            Duration::from_secs(10)
        );
        state.desired = config(CONFIG).probes;
        state.desired[1].report_interval = Duration::from_secs(2);
        assert_eq!(
            state.report_interval(Duration::from_secs(10)),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn node_selectors_pick_the_probes_of_this_node() {
        let c = config(CONFIG);
        let none = BTreeMap::new();
        let gpu = BTreeMap::from([("gpu".to_string(), "true".to_string())]);
        let ids = |v: Vec<&AgentProbe>| v.iter().map(|p| p.id()).collect::<Vec<_>>();
        assert_eq!(ids(probes_for_node(&c, &none)), ["a/p/all"]);
        assert_eq!(ids(probes_for_node(&c, &gpu)), ["a/p/all", "a/p/gpu"]);
    }

    #[test]
    fn pods_are_found_by_uid_with_either_cgroup_driver() {
        let root = std::env::temp_dir().join(format!("rw-cg-{}", std::process::id()));
        let uid = "0f3c9a2e-1b2c-4d5e-8f90-123456789abc";
        let systemd = root.join(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f3c9a2e_1b2c_4d5e_8f90_123456789abc.slice",
        );
        std::fs::create_dir_all(&systemd).unwrap();
        assert_eq!(pod_cgroup(&root, uid), Some(systemd));
        assert_eq!(
            pod_cgroup(&root, "00000000-0000-0000-0000-000000000000"),
            None
        );
        std::fs::remove_dir_all(&root).unwrap();
        let cgroupfs = root.join(format!("kubepods/besteffort/pod{uid}"));
        std::fs::create_dir_all(&cgroupfs).unwrap();
        assert_eq!(pod_cgroup(&root, uid), Some(cgroupfs));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn label_selectors_become_query_strings() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
            LabelSelector, LabelSelectorRequirement,
        };
        let s = LabelSelector {
            match_labels: Some(BTreeMap::from([("app".into(), "web".into())])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "In".into(),
                values: Some(vec!["a".into(), "b".into()]),
            }]),
        };
        assert_eq!(label_selector_string(&s).unwrap(), "app=web,tier in (a,b)");
        assert_eq!(label_selector_string(&LabelSelector::default()), None);
    }
}
