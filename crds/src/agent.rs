//! What a node agent runs: the configuration the operator renders into a
//! ConfigMap (and pushes over gRPC), and that standalone mode builds from
//! manifest files with the same planner. One type, so both paths load
//! probes the same way.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use ringwarden_core::duration::serde_duration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::probeset::{DRAIN_INTERVAL_RULE, DRAIN_INTERVALS, FieldError, ProbeSetSpec, ProbeSpec};

/// Configuration of every probe one agent (one node class) runs.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentConfig {
    /// Probes, sorted by namespace, ProbeSet and probe name so the rendered
    /// configuration is deterministic.
    #[serde(default)]
    pub probes: Vec<AgentProbe>,
    /// Locked kernel bytes all probes on a node may take together, maps
    /// and ring buffers (the platform's node budget, `nodeBudget` in the
    /// chart). Each agent shares it among its node's probes with
    /// [`crate::plan::plan_node`], counting its real CPUs and page size,
    /// before it creates any map. 0: no node budget (each ProbeSet keeps
    /// only to its own `spec.ringBuffer.nodeBudget`).
    #[serde(default)]
    pub node_budget_bytes: u64,
    /// What the cluster administrator allows each namespace, from its
    /// Namespace's `ringwarden.dev/*` annotations ([`NamespaceLimits`]);
    /// namespaces not listed have the defaults. Agents enforce them in
    /// their node plan, whatever the probes ask.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub namespace_limits: BTreeMap<String, NamespaceLimits>,
}

/// Annotation on a Namespace: most bytes (a quantity such as `64Mi`) its
/// ProbeSets' maps and rings may take together on one node.
pub const NODE_BYTES_ANNOTATION: &str = "ringwarden.dev/node-bytes";
/// Annotation on a Namespace: most probes its ProbeSets may declare together.
pub const MAX_PROBES_ANNOTATION: &str = "ringwarden.dev/max-probes";
/// Annotation on a Namespace: `"true"` or `"false"`, whether its ProbeSets
/// may use uprobes (kinds `uprobe` and `goRuntime`).
pub const UPROBES_ANNOTATION: &str = "ringwarden.dev/uprobes";
/// Annotation on a Namespace: highest `priority` its probes may use.
pub const MAX_PRIORITY_ANNOTATION: &str = "ringwarden.dev/max-priority";

/// Probes a namespace may declare without a `ringwarden.dev/max-probes`
/// annotation: four full ProbeSets.
pub const DEFAULT_MAX_PROBES: u32 = 256;

/// What a cluster administrator allows one namespace, as ResourceQuota and
/// LimitRange do for pods. Set with annotations on the Namespace, which
/// tenants (namespace editors) cannot edit. Defaults, for a namespace
/// without annotations: no byte limit beyond its fair share of each node,
/// [`DEFAULT_MAX_PROBES`] probes, uprobes allowed (a ProbeSet's uprobes
/// trap only its own namespace's processes), priorities up to
/// [`crate::probeset::MAX_PRIORITY`].
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceLimits {
    /// Most bytes of maps and rings the namespace's probes take on one node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_bytes: Option<u64>,
    /// Most probes, over all its ProbeSets.
    #[serde(default = "default_max_probes")]
    pub max_probes: u32,
    /// Whether kinds `uprobe` and `goRuntime` may run.
    #[serde(default = "yes")]
    pub uprobes: bool,
    /// Highest priority; higher ones count as this.
    #[serde(default = "default_max_priority")]
    pub max_priority: i32,
}

fn default_max_probes() -> u32 {
    DEFAULT_MAX_PROBES
}
fn yes() -> bool {
    true
}
fn default_max_priority() -> i32 {
    crate::probeset::MAX_PRIORITY
}

impl Default for NamespaceLimits {
    fn default() -> Self {
        Self {
            node_bytes: None,
            max_probes: DEFAULT_MAX_PROBES,
            uprobes: true,
            max_priority: crate::probeset::MAX_PRIORITY,
        }
    }
}

impl NamespaceLimits {
    /// The limits a Namespace's annotations set, and a message per
    /// annotation that cannot be read, which then takes its strictest
    /// value (0 bytes, 0 probes, no uprobes, the lowest priority), so a
    /// typo never lifts a limit.
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> (Self, Vec<String>) {
        let mut limits = Self::default();
        let mut problems = Vec::new();
        let mut bad = |key: &str, value: &str, expected: &str| {
            problems.push(format!("annotation {key}: {value:?} is not {expected}"));
        };
        if let Some(v) = annotations.get(NODE_BYTES_ANNOTATION) {
            limits.node_bytes = Some(
                ringwarden_core::quantity::parse_bytes(v.trim()).unwrap_or_else(|_| {
                    bad(NODE_BYTES_ANNOTATION, v, "a byte quantity such as 64Mi");
                    0
                }),
            );
        }
        if let Some(v) = annotations.get(MAX_PROBES_ANNOTATION) {
            limits.max_probes = v.trim().parse().unwrap_or_else(|_| {
                bad(
                    MAX_PROBES_ANNOTATION,
                    v,
                    "a whole number of probes such as 16",
                );
                0
            });
        }
        if let Some(v) = annotations.get(UPROBES_ANNOTATION) {
            limits.uprobes = match v.trim() {
                "true" => true,
                "false" => false,
                _ => {
                    bad(UPROBES_ANNOTATION, v, "\"true\" or \"false\"");
                    false
                }
            };
        }
        if let Some(v) = annotations.get(MAX_PRIORITY_ANNOTATION) {
            limits.max_priority = v
                .trim()
                .parse::<i32>()
                .map(|p| p.clamp(crate::probeset::MIN_PRIORITY, crate::probeset::MAX_PRIORITY))
                .unwrap_or_else(|_| {
                    bad(
                        MAX_PRIORITY_ANNOTATION,
                        v,
                        "a whole number from -1000 to 1000",
                    );
                    crate::probeset::MIN_PRIORITY
                });
        }
        (limits, problems)
    }
}

/// One probe of one ProbeSet, with its plan applied.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentProbe {
    /// The ProbeSet's namespace; empty for a ClusterProbeSet.
    pub namespace: String,
    pub probeset: String,
    /// The probe as declared (kind, kind-specific fields, filters, export).
    pub spec: ProbeSpec,
    /// The ProbeSet's pod selector, which the agent resolves to cgroup ids
    /// of pods on its node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Whose processes the probe may observe: only those of the pods (on
    /// the agent's node) of these namespaces, narrowed by `podSelector`,
    /// filtered by cgroup in the kernel. `[namespace]` for a ProbeSet; the
    /// namespaces its `namespaceSelector` matches for a ClusterProbeSet
    /// (empty: none matches, nothing is observed). Absent: every process
    /// on the node, host processes included (a ClusterProbeSet without a
    /// `namespaceSelector`, standalone mode, and configurations rendered
    /// before namespaces were enforced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Vec<String>>,
    /// Labels a node must carry to run this probe (the ProbeSet's
    /// `nodeSelector`): each agent runs the probes whose selector its node
    /// matches. Empty matches every node.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Ring-buffer bytes the ProbeSet's own plan gives the probe (a power
    /// of two, at least one page): what it asks of the node, whose budget
    /// may cut it.
    pub ring_bytes: u64,
    /// In-kernel sampling of the ProbeSet's own plan: keep one event in
    /// `sampleEvery` (1 keeps all). The node plan raises it for a cut ring.
    pub sample_every: u64,
    /// The ProbeSet's own plan's predicted steady-state drop fraction of
    /// exported events.
    #[serde(default)]
    pub predicted_drop: f64,
    /// The ProbeSet's `ringBuffer.burstFactor`, for the node plan.
    #[serde(default = "default_burst_factor")]
    pub burst_factor: f64,
    /// The drop fraction allowed for the probe (`spec.maxDropRate`,
    /// tightened by its SLOs), for the node plan.
    #[serde(default = "default_max_drop_rate")]
    pub max_drop_rate: f64,
    /// The ProbeSet's `ringBuffer.drainInterval`: the agent drains the ring
    /// every half of it (`ringwarden_core::planner::drain_period`), the
    /// period the plan predicts `predictedDrop` for.
    #[serde(default = "default_drain_interval", with = "serde_duration")]
    #[schemars(with = "String")]
    pub drain_interval: Duration,
    /// How often to report.
    #[serde(with = "serde_duration")]
    #[schemars(with = "String")]
    pub report_interval: Duration,
    /// Exact good/total counters the kernel keeps for SLOs on this probe.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub thresholds: Vec<Threshold>,
}

impl AgentConfig {
    /// Checks a configuration before the agent runs any of it: every probe
    /// with the rules the API server applies to its ProbeSet
    /// ([`crate::ProbeSetSpec::validate`], grouped per ProbeSet as
    /// rendered), and what the plan added (ring sizes, sampling,
    /// thresholds) within what the kernel side accepts. A pushed
    /// configuration comes over the network: an operator that was not the
    /// operator must not get past this.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut groups: BTreeMap<(&str, &str), Vec<&AgentProbe>> = BTreeMap::new();
        for p in &self.probes {
            groups
                .entry((p.namespace.as_str(), p.probeset.as_str()))
                .or_default()
                .push(p);
        }
        for ((namespace, probeset), probes) in groups {
            let at = format!("{namespace}/{probeset}");
            // An empty namespace is a ClusterProbeSet's.
            if !(namespace.is_empty() || crate::probeset::is_dns_label(namespace))
                || probeset.is_empty()
                || probeset.len() > 253
            {
                errors.push(FieldError {
                    field: format!("probes of {at:?}"),
                    message: "namespace and ProbeSet must be Kubernetes object names".into(),
                });
            }
            let first = probes[0];
            for p in &probes {
                if let Some(e) = scope_problem(p) {
                    errors.push(FieldError {
                        field: format!("{at}: namespaces"),
                        message: e,
                    });
                }
            }
            let spec = ProbeSetSpec {
                node_selector: first.node_selector.clone(),
                pod_selector: first.pod_selector.clone(),
                probes: probes.iter().map(|p| p.spec.clone()).collect(),
                ring_buffer: Default::default(),
                max_drop_rate: 0.01,
                report_interval: first.report_interval,
            };
            for e in spec.validate() {
                errors.push(FieldError {
                    field: format!("{at}: {}", e.field),
                    message: e.message,
                });
            }
            for (i, p) in probes.iter().enumerate() {
                let field = |f: &str| format!("{at}: spec.probes[{i}].{f}");
                if !p.ring_bytes.is_power_of_two() || p.ring_bytes > MAX_RING_BYTES {
                    errors.push(FieldError {
                        field: field("ringBytes"),
                        message: format!(
                            "{} is not a power of two of at most {MAX_RING_BYTES} bytes",
                            p.ring_bytes
                        ),
                    });
                }
                // The agent's drain clock runs at half of it: keep it to the
                // range `spec.ringBuffer.drainInterval` allows.
                if !DRAIN_INTERVALS.contains(&p.drain_interval) {
                    errors.push(FieldError {
                        field: field("drainInterval"),
                        message: DRAIN_INTERVAL_RULE.into(),
                    });
                }
                if !(p.burst_factor.is_finite() && p.burst_factor >= 1.0) {
                    errors.push(FieldError {
                        field: field("burstFactor"),
                        message: format!("{} is not a finite number of at least 1", p.burst_factor),
                    });
                }
                if !(0.0..1.0).contains(&p.max_drop_rate) {
                    errors.push(FieldError {
                        field: field("maxDropRate"),
                        message: format!("{} is not in [0, 1)", p.max_drop_rate),
                    });
                }
                if p.sample_every == 0 {
                    errors.push(FieldError {
                        field: field("sampleEvery"),
                        message: "must be at least 1".into(),
                    });
                }
                if p.thresholds.len() > MAX_THRESHOLDS
                    || p.thresholds.iter().any(|t| t.series.len() > 8)
                {
                    errors.push(FieldError {
                        field: field("thresholds"),
                        message: format!(
                            "at most {MAX_THRESHOLDS} thresholds of at most 8 series each"
                        ),
                    });
                }
            }
        }
        errors
    }
}

/// The node budget when the platform sets none: locked kernel memory for
/// the maps and ring buffers of every probe on a node. The chart's
/// `agent.nodeBudget` and standalone mode's `--node-budget` default to it.
pub const DEFAULT_NODE_BUDGET: &str = "256Mi";

/// Most namespaces one probe's `namespaces` may list.
pub const MAX_SCOPE_NAMESPACES: usize = 4096;

/// What is wrong with where `p` may look: a ProbeSet observes its own
/// namespace only, whoever rendered the configuration.
fn scope_problem(p: &AgentProbe) -> Option<String> {
    let namespaces = p.namespaces.as_ref()?;
    if namespaces.len() > MAX_SCOPE_NAMESPACES {
        return Some(format!("at most {MAX_SCOPE_NAMESPACES} namespaces"));
    }
    if let Some(bad) = namespaces
        .iter()
        .find(|n| !crate::probeset::is_dns_label(n))
    {
        return Some(format!("{bad:?} is not a namespace name"));
    }
    if !p.namespace.is_empty() && namespaces.as_slice() != [p.namespace.as_str()] {
        return Some(format!(
            "a ProbeSet observes only its own namespace {:?}, not {namespaces:?}; \
             observing other namespaces takes a ClusterProbeSet",
            p.namespace
        ));
    }
    None
}

/// Largest ring buffer a plan may hand one probe (the kernel's limit for a
/// BPF ring buffer is far above; this keeps a forged plan from pinning
/// the node's memory).
pub const MAX_RING_BYTES: u64 = 1 << 30;

fn default_burst_factor() -> f64 {
    ringwarden_core::planner::DEFAULT_BURST_FACTOR
}

fn default_max_drop_rate() -> f64 {
    crate::probeset::DEFAULT_MAX_DROP_RATE
}

/// Configurations rendered before the field existed were planned for the
/// default interval.
fn default_drain_interval() -> Duration {
    ringwarden_core::planner::DEFAULT_DRAIN_INTERVAL
}

impl AgentProbe {
    /// `namespace/probeset/probe`, unique per agent (`/probeset/probe` for
    /// a ClusterProbeSet's).
    pub fn id(&self) -> String {
        format!("{}/{}/{}", self.namespace, self.probeset, self.spec.name)
    }

    /// Whether it comes from a ClusterProbeSet.
    pub fn is_cluster(&self) -> bool {
        self.namespace.is_empty()
    }

    /// The namespaces whose pods alone it observes; `None`: not limited to
    /// pods by namespace. A probe rendered before `namespaces` existed,
    /// with a `podSelector`, keeps to its own namespace as it always did.
    pub fn pod_namespaces(&self) -> Option<Vec<String>> {
        match (&self.namespaces, &self.pod_selector) {
            (Some(n), _) => Some(n.clone()),
            (None, Some(_)) if !self.is_cluster() => Some(vec![self.namespace.clone()]),
            _ => None,
        }
    }

    /// Whether it observes only processes of pods (by namespace, by
    /// `podSelector` or both), which the agent resolves from the pods on
    /// its node.
    pub fn observes_pods_only(&self) -> bool {
        self.namespaces.is_some() || self.pod_selector.is_some()
    }
}

/// An SLO's indicator, compiled for the kernel: every completed event of the
/// probe (optionally only of some series) counts in `total`, and in `good`
/// when it meets the indicator.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Threshold {
    /// The SLO, as `namespace/name`.
    pub slo: String,
    /// Good means latency ≤ this many nanoseconds; absent for an errors
    /// indicator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ns: Option<u64>,
    /// Good means the event did not fail.
    #[serde(default)]
    pub errors: bool,
    /// Only events of these series count (series names as the agent shows
    /// them, e.g. syscall names); empty counts every series.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub series: Vec<String>,
}

/// Threshold slots per probe in the kernel.
pub const MAX_THRESHOLDS: usize = 4;

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> AgentConfig {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    const GOOD: &str = "
probes:
  - namespace: shop
    probeset: web
    spec: {name: sys, kind: syscalls}
    ringBytes: 4096
    sampleEvery: 1
    reportInterval: 10s
";

    #[test]
    fn a_rendered_configuration_passes() {
        assert_eq!(config(GOOD).validate(), vec![]);
    }

    #[test]
    fn what_the_api_server_would_refuse_is_refused_and_named() {
        for (from, to) in [
            ("{name: sys, kind: syscalls}", "{name: Sys, kind: syscalls}"),
            (
                "{name: sys, kind: syscalls}",
                "{name: sys, kind: uprobe, uprobe: {binary: /proc/self/exe, symbol: x}}",
            ),
            ("ringBytes: 4096", "ringBytes: 4097"),
            ("sampleEvery: 1", "sampleEvery: 0"),
            ("reportInterval: 10s", "reportInterval: 1ms"),
            (
                "reportInterval: 10s",
                "reportInterval: 10s\n    drainInterval: 0s",
            ),
            (
                "reportInterval: 10s",
                "reportInterval: 10s\n    drainInterval: 1h",
            ),
        ] {
            let bad = GOOD.replace(from, to);
            let errors = config(&bad).validate();
            assert!(!errors.is_empty(), "{bad} passed");
            assert!(errors[0].field.starts_with("shop/web: "), "{errors:?}");
        }
    }

    #[test]
    fn a_probeset_may_be_scoped_to_its_own_namespace_only() {
        let scoped =
            |extra: &str| GOOD.replace("sampleEvery: 1", &format!("sampleEvery: 1\n    {extra}"));
        assert_eq!(config(&scoped("namespaces: [shop]")).validate(), vec![]);
        for bad in [
            "namespaces: [other]",
            "namespaces: [shop, other]",
            "namespaces: []",
        ] {
            let errors = config(&scoped(bad)).validate();
            assert_eq!(errors.len(), 1, "{bad}: {errors:?}");
            assert_eq!(errors[0].field, "shop/web: namespaces");
            assert!(errors[0].message.contains("ClusterProbeSet"), "{errors:?}");
        }
        // A ClusterProbeSet's probe may list any namespaces, or none.
        let cluster = |extra: &str| scoped(extra).replace("namespace: shop", "namespace: ''");
        for ok in ["namespaces: [shop, other]", "namespaces: []", ""] {
            assert_eq!(config(&cluster(ok)).validate(), vec![], "{ok}");
        }
        let errors = config(&cluster("namespaces: [Not_A_Name]")).validate();
        assert!(
            errors[0].message.contains("not a namespace name"),
            "{errors:?}"
        );
    }
}
