//! What a node agent runs: the configuration the operator renders into a
//! ConfigMap (and pushes over gRPC), and that standalone mode builds from
//! manifest files with the same planner. One type, so both paths load
//! probes the same way.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use ringwarden_core::duration::serde_duration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::probeset::ProbeSpec;

/// Configuration of every probe one agent (one node class) runs.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentConfig {
    /// Probes, sorted by namespace, ProbeSet and probe name so the rendered
    /// configuration is deterministic.
    #[serde(default)]
    pub probes: Vec<AgentProbe>,
    /// Ring-buffer bytes all probes together may use on the node.
    #[serde(default)]
    pub node_budget_bytes: u64,
}

/// One probe of one ProbeSet, with its plan applied.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentProbe {
    pub namespace: String,
    pub probeset: String,
    /// The probe as declared (kind, kind-specific fields, filters, export).
    pub spec: ProbeSpec,
    /// The ProbeSet's pod selector, which the agent resolves to cgroup ids
    /// of pods on its node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Labels a node must carry to run this probe (the ProbeSet's
    /// `nodeSelector`): each agent runs the probes whose selector its node
    /// matches. Empty matches every node.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Ring-buffer bytes the planner gave the probe (a power of two, at
    /// least one page).
    pub ring_bytes: u64,
    /// In-kernel sampling: keep one event in `sampleEvery` (1 keeps all).
    pub sample_every: u64,
    /// The planner's predicted steady-state drop fraction of exported events.
    #[serde(default)]
    pub predicted_drop: f64,
    /// How often to report.
    #[serde(with = "serde_duration")]
    #[schemars(with = "String")]
    pub report_interval: Duration,
    /// Exact good/total counters the kernel keeps for SLOs on this probe.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub thresholds: Vec<Threshold>,
}

impl AgentProbe {
    /// `namespace/probeset/probe`, unique per agent.
    pub fn id(&self) -> String {
        format!("{}/{}/{}", self.namespace, self.probeset, self.spec.name)
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
