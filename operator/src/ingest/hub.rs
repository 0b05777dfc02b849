//! What the agent streams, the query service and the status publisher
//! share: the aggregated [`Reports`] behind a lock, the configuration each
//! node should run, and whether this replica takes agents at all. Reads the
//! watch caches; no network IO.
//!
//! Only the leader takes agents (followers answer `UNAVAILABLE`, and agents
//! reconnect until they reach it), so one replica sees every report and
//! the SLO evaluators need no merging across replicas.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use kube::runtime::reflector::ObjectRef;
use ringwarden_crds::{AgentConfig, ProbeSet};
use tokio::{
    sync::{Notify, watch},
    time::Instant,
};

use crate::{
    ingest::handed::{self, Handed, HandedOut, refusal, selected},
    ingest::reports::{
        AgentInfo, BootRetired, Figures, FiguresBuilder, Outcome, ProbeSetQuery, Reports, Sample,
        SloDef,
    },
    ingest::slo_status::{self, Problem},
    metrics::IngestMetrics,
    reconcile::controller::Stores,
    reconcile::render::content_hash,
    reconcile::status::Reported,
    reconcile::world::{Labels, selector_matches},
};

/// Nodes summed into a ProbeSet's figures per hold of the reports' lock:
/// a report waits at most for this many nodes, not for a whole fleet.
const FIGURES_NODES_PER_LOCK: usize = 64;
/// What one node runs, as pushed on its stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// Content hash of `json`.
    pub version: String,
    /// An [`AgentConfig`] holding the probes this node's labels select.
    pub json: String,
    /// `(slo, threshold id)` of every threshold in it.
    pub thresholds: Vec<(String, u64)>,
}

/// The configuration for a node with `labels`: the probes whose node
/// selector matches, everything else as rendered for the ConfigMap.
pub fn node_config(config: &AgentConfig, labels: &Labels) -> NodeConfig {
    let probes: Vec<_> = selected(config, labels).cloned().collect();
    let mine = AgentConfig {
        // The limits of the namespaces whose probes the node runs.
        namespace_limits: config
            .namespace_limits
            .iter()
            .filter(|(ns, _)| probes.iter().any(|p| &p.namespace == *ns))
            .map(|(ns, l)| (ns.clone(), l.clone()))
            .collect(),
        probes,
        node_budget_bytes: config.node_budget_bytes,
    };
    let json = serde_json::to_string(&mine).expect("an AgentConfig serializes to JSON");
    let mut thresholds: Vec<(String, u64)> = mine
        .probes
        .iter()
        .flat_map(|p| &p.thresholds)
        .map(|t| {
            (
                t.slo.clone(),
                ringwarden_proto::threshold_id(&t.slo, t.latency_ns, t.errors, &t.series),
            )
        })
        .collect();
    thresholds.sort();
    thresholds.dedup();
    NodeConfig {
        version: content_hash(json.as_bytes()),
        json,
        thresholds,
    }
}

/// A ProbeSet's figures with what they were computed for.
#[derive(Clone, Debug)]
pub struct ProbeSetFigures {
    pub namespace: String,
    pub name: String,
    /// `spec.reportInterval`.
    pub interval: Duration,
    pub figures: Figures,
}

impl ProbeSetFigures {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Receivers a stream watches.
pub struct Subscriptions {
    /// The rendered configuration of all agents.
    pub config: watch::Receiver<Option<Arc<AgentConfig>>>,
    /// Bumped when some node's labels change.
    pub labels: watch::Receiver<u64>,
    /// Whether this replica takes agents.
    pub serving: watch::Receiver<bool>,
}

struct Published {
    reported: Reported,
    at: Instant,
}

/// See the module docs.
pub struct Hub {
    reports: Mutex<Reports>,
    stores: Stores,
    config: watch::Sender<Option<Arc<AgentConfig>>>,
    labels: watch::Sender<u64>,
    /// Bumped whenever the configuration or some node's labels change, so
    /// what each node was handed is computed again.
    generation: AtomicU64,
    /// What each node was handed, to check its reports against.
    handed: Mutex<HandedOut>,
    serving: watch::Sender<bool>,
    serving_since: Mutex<Option<SystemTime>>,
    published: Mutex<HashMap<String, Published>>,
    /// SLOs that are not evaluated, and why.
    problems: Mutex<BTreeMap<String, Problem>>,
    /// This cluster's name (`--cluster-name`), written into every status.
    cluster: std::sync::OnceLock<String>,
    /// Fires when a Hello changes what its node's possible CPUs are known
    /// to be: the node budget shares are planned with them.
    cpus_changed: Notify,
    pub metrics: IngestMetrics,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Hub {
    pub fn new(stores: Stores, metrics: IngestMetrics) -> Self {
        Self {
            reports: Mutex::new(Reports::default()),
            stores,
            config: watch::Sender::new(None),
            labels: watch::Sender::new(0),
            generation: AtomicU64::new(0),
            handed: Mutex::new(HandedOut::default()),
            serving: watch::Sender::new(false),
            serving_since: Mutex::new(None),
            published: Mutex::new(HashMap::new()),
            problems: Mutex::new(BTreeMap::new()),
            cluster: std::sync::OnceLock::new(),
            cpus_changed: Notify::new(),
            metrics,
        }
    }

    /// Names this cluster in every status and query reply; set once, at
    /// start.
    pub fn set_cluster(&self, name: &str) {
        if !name.is_empty() {
            let _ = self.cluster.set(name.to_owned());
        }
    }

    /// This cluster's name, if one was given.
    pub fn cluster(&self) -> Option<&str> {
        self.cluster.get().map(String::as_str)
    }

    /// The aggregated reports, locked.
    pub fn reports(&self) -> MutexGuard<'_, Reports> {
        lock(&self.reports)
    }

    /// The watch caches.
    pub fn stores(&self) -> &Stores {
        &self.stores
    }

    /// A newly rendered agent configuration; streams push what changed for
    /// their node.
    pub fn set_config(&self, config: &AgentConfig) {
        let changed = self.config.send_if_modified(|current| {
            if current.as_deref() == Some(config) {
                return false;
            }
            *current = Some(Arc::new(config.clone()));
            true
        });
        if changed {
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Some node's labels changed: streams recompute their node's probes.
    pub fn nodes_changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.labels.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Whether `node` is in the cluster's node list (the node cache).
    pub fn knows_node(&self, node: &str) -> bool {
        self.stores.nodes.get(&ObjectRef::new(node)).is_some()
    }

    /// What `node` is handed now: nothing before a configuration was
    /// rendered.
    fn handed_to(&self, node: &str) -> Handed {
        let Some(config) = self.config.borrow().clone() else {
            return Handed::default();
        };
        let labels = self
            .stores
            .nodes
            .get(&ObjectRef::new(node))
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default();
        Handed::of(&config, &labels)
    }

    pub fn subscribe(&self) -> Subscriptions {
        Subscriptions {
            config: self.config.subscribe(),
            labels: self.labels.subscribe(),
            serving: self.serving.subscribe(),
        }
    }

    /// What `node` should run, once a configuration was rendered. A node
    /// missing from the cache has no labels: it runs the probes that
    /// select every node.
    pub fn node_config(&self, node: &str) -> Option<NodeConfig> {
        let config = self.config.borrow().clone()?;
        let labels = self
            .stores
            .nodes
            .get(&ObjectRef::new(node))
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default();
        Some(node_config(&config, &labels))
    }

    /// Takes agents from now on. The SLO evaluators must have been restored
    /// first.
    pub fn start_serving(&self, now: SystemTime) {
        *lock(&self.serving_since) = Some(now);
        self.serving.send_replace(true);
    }

    /// Ends every stream and forgets the SLO evaluators and published
    /// figures: a leader that comes back reloads what its successor saved.
    pub fn stop_serving(&self) {
        self.serving.send_replace(false);
        *lock(&self.serving_since) = None;
        self.reports().clear_slos();
        lock(&self.published).clear();
    }

    pub fn is_serving(&self) -> bool {
        *self.serving.borrow()
    }

    /// Whether agents have had two report intervals since this replica
    /// began serving, so a node not heard from is a problem.
    pub fn expect_reports(&self, now: SystemTime, interval: Duration) -> bool {
        lock(&self.serving_since).is_some_and(|since| {
            now.duration_since(since).unwrap_or_default() >= interval * 2 + Duration::from_secs(1)
        })
    }

    /// An agent of a node in the node list said hello; refused for a boot
    /// id the node already replaced.
    pub fn hello(&self, now: SystemTime, info: AgentInfo) -> Result<(), BootRetired> {
        let mut r = self.reports();
        let node = info.node.clone();
        let before = r.possible_cpus(&node);
        r.hello(now, info)?;
        self.metrics.agents_connected.set(r.connected() as i64);
        if r.possible_cpus(&node) != before {
            self.cpus_changed.notify_one();
        }
        Ok(())
    }

    /// Completes once a Hello told a node's possible CPUs for the first
    /// time, or a different count, since the last call.
    pub async fn cpus_changed(&self) {
        self.cpus_changed.notified().await;
    }

    pub fn bye(&self, node: &str) {
        let mut r = self.reports();
        r.bye(node);
        self.metrics.agents_connected.set(r.connected() as i64);
    }

    /// Counts a report of `node` (the node its token is bound to) at `now`,
    /// once every probe and threshold the node was not handed is taken out
    /// of it. What is refused is counted by reason.
    pub fn ingest(&self, now: SystemTime, node: &str, mut sample: Sample) -> Outcome {
        let (outcome, mut refused) = if self.knows_node(node) {
            let generation = self.generation.load(Ordering::SeqCst);
            let mut refused = lock(&self.handed).check(
                now,
                node,
                generation,
                || self.handed_to(node),
                &mut sample,
            );
            refused.extend(handed::cap(&mut sample));
            (self.reports().ingest(now, node, &sample), refused)
        } else {
            // Deleted while its agent still streams: nothing is kept for it.
            (Outcome::UnknownNode, vec![refusal::UNKNOWN_NODE])
        };
        match outcome {
            Outcome::Replayed => refused.push(refusal::BOOT_REPLAYED),
            Outcome::Baseline => refused.push(refusal::NOT_FROM_START),
            Outcome::Implausible => refused.push(refusal::IMPLAUSIBLE_COUNTS),
            _ => {}
        }
        for reason in refused {
            self.metrics
                .reports_refused
                .with_label_values(&[reason])
                .inc();
        }
        self.metrics
            .reports
            .with_label_values(&[outcome.label()])
            .inc();
        outcome
    }

    /// Forgets nodes silent for long (see [`Reports::prune`]), and what
    /// they were handed.
    pub fn prune(&self, now: SystemTime) {
        let reports = {
            let mut r = self.reports();
            r.prune(now);
            r
        };
        lock(&self.handed).retain(|n| reports.knows(n));
    }

    /// The figures of every ProbeSet the agents run at `now`, sorted by
    /// namespace and name. An invalid ProbeSet runs nowhere and has none.
    pub fn probeset_figures(&self, now: SystemTime) -> Vec<ProbeSetFigures> {
        let nodes = self.stores.nodes.state();
        let config = self.config.borrow().clone();
        // Every ProbeSet the agents were handed, and those whose probes
        // were all left out of the configuration only because they need
        // uprobes: their status must say nothing runs, not keep what it said.
        let runs = |ps: &ProbeSet| match &config {
            // A ClusterProbeSet's probes carry an empty namespace.
            Some(c) => {
                c.probes.iter().any(|p| {
                    p.namespace == ps.metadata.namespace.as_deref().unwrap_or_default()
                        && Some(&p.probeset) == ps.metadata.name.as_ref()
                }) || (ps.spec.probes.iter().all(|p| p.kind.uses_uprobes())
                    && ps.spec.validate().is_empty())
            }
            None => ps.spec.validate().is_empty(),
        };
        let mut probesets: Vec<Arc<ProbeSet>> = self
            .stores
            .all_probesets()
            .into_iter()
            .filter(|ps| ps.metadata.deletion_timestamp.is_none() && runs(ps))
            .collect();
        probesets.sort_by(|a, b| {
            (&a.metadata.namespace, &a.metadata.name)
                .cmp(&(&b.metadata.namespace, &b.metadata.name))
        });
        let none = Labels::new();
        probesets
            .iter()
            .map(|ps| {
                let mut desired: Vec<String> = nodes
                    .iter()
                    .filter(|n| {
                        selector_matches(
                            &ps.spec.node_selector,
                            n.metadata.labels.as_ref().unwrap_or(&none),
                        )
                    })
                    .filter_map(|n| n.metadata.name.clone())
                    .collect();
                desired.sort();
                let probes: Vec<String> = ps.spec.probes.iter().map(|p| p.name.clone()).collect();
                let handed = config.as_deref().map(|c| handed_probes(c, ps));
                let namespace = ps.metadata.namespace.clone().unwrap_or_default();
                let name = ps.metadata.name.clone().unwrap_or_default();
                let interval = ps.spec.report_interval;
                let query = ProbeSetQuery {
                    namespace: &namespace,
                    name: &name,
                    probes: &probes,
                    handed: handed.as_deref(),
                    desired: &desired,
                    interval,
                    max_drop_rate: ps.spec.max_drop_rate,
                    expect_reports: self.expect_reports(now, interval),
                };
                // A few nodes per hold of the lock, so reports are not kept
                // waiting while a large ProbeSet is summed.
                let mut figures = FiguresBuilder::new(&query);
                for nodes in desired.chunks(FIGURES_NODES_PER_LOCK) {
                    self.reports().add_to_figures(now, &mut figures, nodes);
                }
                ProbeSetFigures {
                    namespace,
                    name,
                    interval,
                    figures: figures.finish(),
                }
            })
            .collect()
    }

    /// The SLO definitions from the watch caches: the evaluable ones, and
    /// why the others are not evaluated.
    pub fn slo_defs(&self) -> (Vec<SloDef>, BTreeMap<String, Problem>) {
        let probesets = self.stores.all_probesets();
        let cluster_probesets = self.stores.cluster_probesets.state();
        let config = self.config.borrow().clone();
        let mut defs = Vec::new();
        let mut problems = BTreeMap::new();
        for slo in self.stores.slos.state() {
            let id = slo_status::id(&slo);
            match slo_status::definition(&slo, &probesets, &cluster_probesets, config.as_deref()) {
                Ok(def) => defs.push(def),
                Err(p) => {
                    problems.insert(id, p);
                }
            }
        }
        (defs, problems)
    }

    /// Makes the evaluators match the SLOs in the cache; returns the ids of
    /// evaluators dropped.
    pub fn sync_slos(&self, now: SystemTime) -> Vec<String> {
        let (defs, problems) = self.slo_defs();
        *lock(&self.problems) = problems;
        self.reports().sync_slos(now, defs)
    }

    /// Why an SLO is not evaluated, if it is not.
    pub fn slo_problem(&self, id: &str) -> Option<Problem> {
        lock(&self.problems).get(id).cloned()
    }

    /// The report figures last published for ProbeSet `key`.
    pub fn published(&self, key: &str) -> Option<Reported> {
        lock(&self.published).get(key).map(|p| p.reported.clone())
    }

    /// Publishes `reported` for ProbeSet `key` if it differs from what was
    /// published and `period` has passed since; returns whether it did.
    pub fn publish(&self, key: &str, reported: Reported, now: Instant, period: Duration) -> bool {
        let mut published = lock(&self.published);
        if let Some(p) = published.get(key)
            && (p.reported == reported || now.duration_since(p.at) < period)
        {
            return false;
        }
        published.insert(key.to_owned(), Published { reported, at: now });
        true
    }

    /// Forgets what was published for ProbeSets no longer in `keys`.
    pub fn retain_published(&self, keep: impl Fn(&str) -> bool) {
        lock(&self.published).retain(|k, _| keep(k));
    }
}

/// The probes of `ps` the agents' configuration holds. A probe left out
/// (a uprobe where uprobes are not enabled, see
/// `status::uprobes_not_enabled`) runs nowhere.
fn handed_probes(config: &AgentConfig, ps: &ProbeSet) -> Vec<String> {
    config
        .probes
        .iter()
        .filter(|p| {
            p.namespace == ps.metadata.namespace.as_deref().unwrap_or_default()
                && Some(&p.probeset) == ps.metadata.name.as_ref()
        })
        .map(|p| p.spec.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ringwarden_crds::{AgentProbe, ExportPolicy, ExportSpec, ProbeKind, ProbeSpec, Threshold};

    use super::*;

    fn probe(name: &str, selector: &[(&str, &str)], slo: Option<&str>) -> AgentProbe {
        AgentProbe {
            namespace: "shop".into(),
            probeset: "web".into(),
            spec: ProbeSpec {
                name: name.into(),
                kind: ProbeKind::Syscalls,
                uprobe: None,
                go_runtime: None,
                filter: None,
                max_series: 64,
                export: ExportSpec {
                    policy: ExportPolicy::None,
                    slower_than: None,
                },
                peak_event_rate: 0.0,
                sampling: 1.0,
                priority: 0,
            },
            pod_selector: None,
            namespaces: None,
            node_selector: selector
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ring_bytes: 4096,
            sample_every: 1,
            predicted_drop: 0.0,
            burst_factor: 2.0,
            max_drop_rate: 0.01,
            drain_interval: Duration::from_millis(100),
            report_interval: Duration::from_secs(10),
            thresholds: slo
                .map(|s| Threshold {
                    slo: s.into(),
                    latency_ns: Some(1_000_000),
                    errors: false,
                    series: vec![],
                })
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn a_node_gets_the_probes_its_labels_select_with_threshold_ids() {
        let config = AgentConfig {
            namespace_limits: Default::default(),
            probes: vec![
                probe("all", &[], None),
                probe("gpu", &[("gpu", "true")], Some("shop/fast")),
            ],
            node_budget_bytes: 8192,
        };
        let plain = node_config(&config, &Labels::new());
        let parsed: AgentConfig = serde_json::from_str(&plain.json).unwrap();
        assert_eq!(
            parsed.probes.iter().map(|p| p.id()).collect::<Vec<_>>(),
            ["shop/web/all"]
        );
        assert!(plain.thresholds.is_empty());
        let gpu = node_config(&config, &[("gpu".into(), "true".into())].into());
        assert_eq!(
            gpu.thresholds,
            [(
                "shop/fast".to_string(),
                ringwarden_proto::threshold_id("shop/fast", Some(1_000_000), false, &[])
            )]
        );
        assert_ne!(gpu.version, plain.version);
        assert_eq!(node_config(&config, &Labels::new()), plain);
    }

    #[tokio::test]
    async fn a_hello_telling_new_possible_cpus_asks_for_a_new_plan() {
        let registry = prometheus::Registry::new();
        let metrics = crate::metrics::Metrics::new(&registry).unwrap();
        let hub = Hub::new(
            crate::loopback::fixed_stores(vec![], &[("n1", &[])], vec![]),
            metrics.ingest,
        );
        let info = |boot: &str, possible_cpus| AgentInfo {
            node: "n1".into(),
            boot_id: boot.into(),
            possible_cpus,
            ..AgentInfo::default()
        };
        let fired = || async {
            tokio::time::timeout(Duration::from_millis(50), hub.cpus_changed())
                .await
                .is_ok()
        };
        let now = SystemTime::UNIX_EPOCH;
        hub.hello(now, info("b1", 8)).unwrap();
        assert!(fired().await, "the first count of a node");
        hub.hello(now, info("b1", 8)).unwrap();
        assert!(!fired().await, "a reconnect telling the same count");
        hub.hello(now, info("b2", 16)).unwrap();
        assert!(fired().await, "a different count");
        hub.hello(now, info("b3", 0)).unwrap();
        assert!(fired().await, "an agent that no longer says");
    }

    #[test]
    fn a_probe_left_out_of_the_configuration_is_not_handed() {
        let mut sys = probe("sys", &[], None).spec;
        let mut fun = sys.clone();
        fun.name = "fn".into();
        fun.kind = ProbeKind::Uprobe;
        sys.name = "sys".into();
        let mut ps = ProbeSet::new(
            "web",
            ringwarden_crds::ProbeSetSpec {
                node_selector: Default::default(),
                pod_selector: None,
                probes: vec![sys, fun],
                ring_buffer: Default::default(),
                max_drop_rate: 0.01,
                report_interval: Duration::from_secs(10),
            },
        );
        ps.metadata.namespace = Some("shop".into());
        // The uprobe was left out of the configuration.
        let config = AgentConfig {
            namespace_limits: Default::default(),
            probes: vec![probe("sys", &[], None)],
            node_budget_bytes: 4096,
        };
        assert_eq!(handed_probes(&config, &ps), ["sys"]);
    }
}
