//! What this node runs: the checked configuration, the probes whose node
//! selector the node satisfies, and the node budget shared among them.

use std::collections::BTreeMap;

use ringwarden_crds::{AgentConfig, AgentProbe, agent::NamespaceLimits};

/// Why a ProbeSet's probe with `filter.cgroups` does not load: cgroup
/// paths name the node's cgroups, the host's and other tenants' included.
pub const NAMESPACED_CGROUPS: &str = "filter.cgroups: a ProbeSet observes only the pods of its \
     namespace, and cgroup paths are node-wide; select pods with podSelector, or move the probe \
     to a ClusterProbeSet";

/// Whether `p`'s uprobe binaries resolve in the containers of its pods
/// rather than on the host: a ProbeSet's do (it traces its own namespace's
/// programs only); a ClusterProbeSet's, and those of configurations
/// rendered before namespaces were enforced, on the host.
pub(super) fn resolves_in_containers(p: &AgentProbe) -> bool {
    !p.is_cluster() && p.namespaces.is_some()
}

/// Parses an agent configuration (YAML, of which JSON is a subset).
pub fn parse_config(bytes: &[u8]) -> Result<AgentConfig, String> {
    serde_yaml_ng::from_slice(bytes).map_err(|e| e.to_string())
}

/// `config` if it passes the rules the API server applies to ProbeSets
/// ([`AgentConfig::validate`]), else every problem, in one message.
pub fn checked(config: AgentConfig) -> Result<AgentConfig, String> {
    let errors = config.validate();
    if errors.is_empty() {
        return Ok(config);
    }
    Err(errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; "))
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

/// The node budget applied to this node's probes.
#[derive(Debug, Default)]
pub struct Shared {
    /// The probes to load, as planned.
    pub load: Vec<AgentProbe>,
    /// Those the budget cannot hold, with the reason.
    pub refused: Vec<(AgentProbe, String)>,
    /// Locked bytes of the maps and rings of `load`.
    pub planned_bytes: u64,
}

/// Applies the node budget to the probes this node runs, within each
/// namespace's `limits` ([`ringwarden_crds::plan::plan_node_limited`]), with the node's possible CPUs and
/// page size. Without the node's CPU count every probe is refused: loading
/// unplanned maps could take the memory the plan gave others.
pub fn share_node_budget(
    wanted: Vec<AgentProbe>,
    limits: &BTreeMap<String, NamespaceLimits>,
    node_budget_bytes: u64,
) -> Shared {
    let planned = crate::probes::possible_cpus()
        .map_err(|e| e.to_string())
        .and_then(|cpus| {
            ringwarden_crds::plan::plan_node_limited(
                &wanted,
                limits,
                node_budget_bytes,
                cpus,
                crate::probes::page_size().into(),
            )
            .map_err(|e| e.to_string())
        });
    match planned {
        Ok(plan) => {
            let mut shared = Shared {
                planned_bytes: plan.plan.used_bytes,
                ..Shared::default()
            };
            for (p, outcome) in wanted.into_iter().zip(plan.probes) {
                match outcome {
                    Ok(planned) => shared.load.push(planned),
                    Err(why) => shared.refused.push((p, why)),
                }
            }
            shared
        }
        Err(e) => {
            let why = format!("not loaded: the node budget cannot be applied: {e}");
            Shared {
                refused: wanted.into_iter().map(|p| (p, why.clone())).collect(),
                ..Shared::default()
            }
        }
    }
}
