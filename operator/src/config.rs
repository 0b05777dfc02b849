//! The operator's own configuration: how the agent DaemonSet runs. Read
//! once at start from a YAML file (the Helm chart mounts it from a
//! ConfigMap); every field has a default, so the operator also runs
//! without one. Reads a file, nothing else.

use std::{collections::BTreeMap, path::Path};

use k8s_openapi::{
    api::core::v1::{ResourceRequirements, Toleration},
    apimachinery::pkg::api::resource::Quantity,
};
use serde::{Deserialize, Serialize};

/// Everything the operator is configured with, besides its flags.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OperatorConfig {
    /// The agent DaemonSet.
    #[serde(default)]
    pub agent: AgentSettings,
}

/// How the agent DaemonSet is rendered. Changing the image, resources,
/// tolerations or priority class changes the pod template, so agents roll;
/// ProbeSet changes only change the ConfigMap, which agents reload.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentSettings {
    /// Name of the DaemonSet.
    #[serde(default = "default_name")]
    pub name: String,
    /// Name of the ConfigMap holding the agent configuration.
    #[serde(default = "default_config_map_name")]
    pub config_map_name: String,
    /// Agent container image.
    #[serde(default = "default_image")]
    pub image: String,
    /// `Always`, `IfNotPresent` or `Never`.
    #[serde(default = "default_pull_policy")]
    pub image_pull_policy: String,
    /// ServiceAccount of the agent pods.
    #[serde(default = "default_name")]
    pub service_account_name: String,
    /// CPU and memory of the agent container. The memory limit is not
    /// set here: the operator derives it from `nodeBudget` and
    /// `workingSetMemory` ([`AgentSettings::memory_limit_bytes`]).
    #[serde(default = "default_resources")]
    pub resources: ResourceRequirements,
    /// Locked kernel memory all probes on one node may take together, maps
    /// and ring buffers of every ProbeSet that selects the node, like
    /// `256Mi`. Agents share it by priority, then fairly across namespaces
    /// (docs/quota.md). The `--node-budget` flag overrides it.
    #[serde(default = "default_node_budget")]
    pub node_budget: String,
    /// Memory the agent needs besides the probes' maps: its heap, the
    /// kernel BTF it parses while loading (tens of MiB), reports, pod
    /// caches, and the task-local storage the kernel adds per traced task.
    /// The agent's memory limit is `nodeBudget + workingSetMemory`, because
    /// BPF maps are charged to the agent's memory cgroup: the kernel never
    /// refuses a map the plan allowed.
    #[serde(default = "default_working_set_memory")]
    pub working_set_memory: String,
    /// Taints the agent tolerates. The default tolerates every taint, so
    /// probes can run on any node their ProbeSet selects.
    #[serde(default = "default_tolerations")]
    pub tolerations: Vec<Toleration>,
    /// PriorityClass of the agent pods, e.g. `system-node-critical`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Port of the agent's `/metrics` and `/healthz`.
    #[serde(default = "default_metrics_port")]
    pub metrics_port: u16,
    /// Whether the agent's `/metrics` may name peer addresses (the
    /// `tcpRetransmit` series); off (the default), they are merged per
    /// port, so whoever may scrape an agent learns no tenant's peers.
    #[serde(default)]
    pub metrics_address_labels: bool,
    /// Set at start from `--owner-deployment`, not read from the file: the
    /// operator's own Deployment, made the owner of the agent DaemonSet and
    /// ConfigMap so that uninstalling the operator removes them.
    #[serde(skip)]
    pub owner: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
    /// Where agents reach the operator's agent service, like
    /// `https://ringwarden-operator.ringwarden-system.svc:9440`; by default
    /// the Service `ringwarden-operator` in the operator's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_address: Option<String>,
    /// Set at start from the flags, not read from the file: how agents
    /// verify the operator (the CA ConfigMap they pin), or that they speak
    /// plaintext (`--insecure-plaintext-for-local-development`).
    #[serde(skip)]
    pub transport: AgentTransport,
    /// Whether `kind: uprobe` probes run (the chart's `agent.uprobes`).
    #[serde(default)]
    pub uprobes: UprobeSettings,
    /// Which node labels a `nodeSelector` may name: `any`, or
    /// `restricted` to labels a node cannot set itself (docs/security.md,
    /// "Who gets which probes"). The chart sets `restricted`.
    #[serde(default)]
    pub node_selector_labels: crate::reconcile::node_labels::NodeSelectorLabels,
}

/// How agents reach the operator's agent service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentTransport {
    /// TLS, trusting only the CA in this ConfigMap (key `ca.crt`), which
    /// the DaemonSet mounts.
    Tls { ca_configmap: String },
    /// No TLS (`--insecure-plaintext-for-local-development`).
    Plaintext,
}

impl Default for AgentTransport {
    fn default() -> Self {
        Self::Tls {
            ca_configmap: "ringwarden-operator-ca".into(),
        }
    }
}

/// Uprobes are opt-in: the kernel attaches them only for CAP_SYS_ADMIN
/// (Linux 6.16 and the stable kernels patched in July 2025), which the agent
/// otherwise never has (see [`crate::reconcile::render::UPROBE_CAPABILITIES`]).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UprobeSettings {
    /// Grant the agent CAP_SYS_ADMIN and a read-only mount of the host's
    /// root, and run uprobe probes. Off: uprobe probes are not handed to
    /// the agents and their ProbeSet says so.
    #[serde(default)]
    pub enabled: bool,
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self {
            name: default_name(),
            config_map_name: default_config_map_name(),
            image: default_image(),
            image_pull_policy: default_pull_policy(),
            service_account_name: default_name(),
            resources: default_resources(),
            node_budget: default_node_budget(),
            working_set_memory: default_working_set_memory(),
            tolerations: default_tolerations(),
            priority_class_name: None,
            metrics_port: default_metrics_port(),
            metrics_address_labels: false,
            operator_address: None,
            transport: AgentTransport::default(),
            uprobes: UprobeSettings::default(),
            node_selector_labels: Default::default(),
            owner: None,
        }
    }
}

fn default_name() -> String {
    "ringwarden-agent".into()
}

fn default_config_map_name() -> String {
    "ringwarden-agent-config".into()
}

fn default_image() -> String {
    concat!("ringwarden/agent:v", env!("CARGO_PKG_VERSION")).into()
}

fn default_pull_policy() -> String {
    "IfNotPresent".into()
}

fn default_resources() -> ResourceRequirements {
    let q = |s: &str| Quantity(s.into());
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".into(), q("50m")),
            ("memory".into(), q("128Mi")),
        ])),
        ..Default::default()
    }
}

fn default_node_budget() -> String {
    ringwarden_crds::agent::DEFAULT_NODE_BUDGET.into()
}

fn default_working_set_memory() -> String {
    "256Mi".into()
}

impl AgentSettings {
    /// `nodeBudget` in bytes (validated when the configuration is read).
    pub fn node_budget_bytes(&self) -> u64 {
        ringwarden_core::quantity::parse_bytes(&self.node_budget).unwrap_or(0)
    }

    /// The agent container's memory limit: the node budget for the probes'
    /// maps, which the kernel charges to the agent's memory cgroup, plus
    /// the agent's own working set.
    pub fn memory_limit_bytes(&self) -> u64 {
        let working_set =
            ringwarden_core::quantity::parse_bytes(&self.working_set_memory).unwrap_or(0);
        self.node_budget_bytes().saturating_add(working_set)
    }

    /// Checks the memory settings, naming the field and the fix.
    pub fn validate_memory(&self) -> Result<(), String> {
        match ringwarden_core::quantity::parse_bytes(&self.node_budget) {
            Ok(0) => return Err("agent.nodeBudget must be above 0, e.g. 256Mi".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("agent.nodeBudget: {e}")),
        }
        if let Err(e) = ringwarden_core::quantity::parse_bytes(&self.working_set_memory) {
            return Err(format!("agent.workingSetMemory: {e}"));
        }
        if self
            .resources
            .limits
            .as_ref()
            .is_some_and(|l| l.contains_key("memory"))
        {
            return Err(
                "agent.resources.limits.memory is derived, not set: the operator makes \
                 it agent.nodeBudget + agent.workingSetMemory, because BPF maps are charged to \
                 the agent's memory cgroup; remove it and set those two instead"
                    .into(),
            );
        }
        Ok(())
    }
}

fn default_tolerations() -> Vec<Toleration> {
    vec![Toleration {
        operator: Some("Exists".into()),
        ..Default::default()
    }]
}

fn default_metrics_port() -> u16 {
    9464
}

/// Why the configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: serde_yaml_ng::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl OperatorConfig {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: shown.clone(),
                source,
            },
            ConfigError::Invalid { message, .. } => ConfigError::Invalid {
                path: shown.clone(),
                message,
            },
            other => other,
        })
    }

    /// Parses and checks configuration text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: Self = if text.trim().is_empty() {
            Self::default()
        } else {
            serde_yaml_ng::from_str(text).map_err(|source| ConfigError::Parse {
                path: String::new(),
                source,
            })?
        };
        config.validate().map_err(|message| ConfigError::Invalid {
            path: String::new(),
            message,
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        let a = &self.agent;
        if !["Always", "IfNotPresent", "Never"].contains(&a.image_pull_policy.as_str()) {
            return Err(format!(
                "agent.imagePullPolicy {:?} is not one of Always, IfNotPresent, Never",
                a.image_pull_policy
            ));
        }
        a.validate_memory()?;
        if a.image.trim().is_empty() {
            return Err(
                "agent.image is empty; give the agent image, e.g. ringwarden/agent:v0.1.0".into(),
            );
        }
        if a.name.is_empty() || a.config_map_name.is_empty() || a.service_account_name.is_empty() {
            return Err(
                "agent.name, agent.configMapName and agent.serviceAccountName must not be empty"
                    .into(),
            );
        }
        if let Some(address) = &a.operator_address
            && !(address.starts_with("http://") || address.starts_with("https://"))
        {
            return Err(format!(
                "agent.operatorAddress {address:?} is not a URL; write it like \
                 https://ringwarden-operator.ringwarden-system.svc:9440"
            ));
        }
        if a.metrics_port == 0 {
            return Err("agent.metricsPort must be a port number, e.g. 9464".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_means_the_defaults() {
        assert_eq!(
            OperatorConfig::parse("").unwrap(),
            OperatorConfig::default()
        );
        assert_eq!(
            OperatorConfig::parse("agent: {}").unwrap(),
            OperatorConfig::default()
        );
    }

    #[test]
    fn settings_are_read_in_camel_case() {
        let c = OperatorConfig::parse(
            "agent:
  image: registry.example/agent:v2
  priorityClassName: system-node-critical
  tolerations: [{key: gpu, operator: Exists, effect: NoSchedule}]
  resources: {requests: {memory: 300Mi}}
  nodeBudget: 768Mi
  workingSetMemory: 200Mi
",
        )
        .unwrap();
        assert_eq!(c.agent.image, "registry.example/agent:v2");
        assert_eq!(
            c.agent.priority_class_name.as_deref(),
            Some("system-node-critical")
        );
        assert_eq!(c.agent.tolerations[0].key.as_deref(), Some("gpu"));
        assert_eq!(c.agent.resources.limits, None);
        assert_eq!(c.agent.name, "ringwarden-agent");
        assert_eq!(c.agent.node_budget_bytes(), 768 << 20);
        assert_eq!(c.agent.memory_limit_bytes(), 968 << 20);
    }

    #[test]
    fn unknown_fields_and_bad_values_are_rejected() {
        let e = OperatorConfig::parse("agent: {imge: x}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `imge`"), "{e}");
        let e = OperatorConfig::parse("agent: {imagePullPolicy: Sometimes}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("Always, IfNotPresent, Never"), "{e}");
        let e = OperatorConfig::parse("agent: {operatorAddress: ringwarden-operator:9440}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not a URL"), "{e}");
    }

    #[test]
    fn the_memory_limit_is_derived_from_the_node_budget_and_never_set() {
        let d = AgentSettings::default();
        assert_eq!(d.node_budget_bytes(), 256 << 20);
        assert_eq!(d.memory_limit_bytes(), 512 << 20);
        for (yaml, says) in [
            (
                "agent: {resources: {limits: {memory: 1Gi}}}",
                "agent.resources.limits.memory is derived",
            ),
            ("agent: {nodeBudget: 0}", "agent.nodeBudget must be above 0"),
            (
                "agent: {nodeBudget: lots}",
                "agent.nodeBudget: \"lots\" is not a byte quantity",
            ),
            (
                "agent: {workingSetMemory: 1.5Gi}",
                "agent.workingSetMemory: ",
            ),
        ] {
            let e = OperatorConfig::parse(yaml).unwrap_err().to_string();
            assert!(e.contains(says), "{yaml}: {e}");
        }
    }

    #[test]
    fn uprobes_are_off_unless_enabled() {
        assert!(!OperatorConfig::default().agent.uprobes.enabled);
        let c = OperatorConfig::parse("agent: {uprobes: {enabled: true}}").unwrap();
        assert!(c.agent.uprobes.enabled);
        let e = OperatorConfig::parse("agent: {uprobes: {enable: true}}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `enable`"), "{e}");
    }
}
