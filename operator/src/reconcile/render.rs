//! Rendering what the agents run: the agent configuration, the ConfigMap
//! that carries it and the agent DaemonSet. Pure and deterministic: the
//! same ProbeSets, nodes and settings give byte-identical objects, so
//! server-side apply and GitOps tools see no drift.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, DaemonSetSpec},
        core::v1::{
            Affinity, Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort,
            EnvVar, EnvVarSource, HTTPGetAction, HostPathVolumeSource, NodeAffinity, NodeSelector,
            NodeSelectorRequirement, NodeSelectorTerm, ObjectFieldSelector, PodSecurityContext,
            PodSpec, PodTemplateSpec, Probe, ProjectedVolumeSource, ResourceRequirements,
            SeccompProfile, SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount,
            VolumeProjection,
        },
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use ringwarden_crds::{AgentConfig, AgentProbe};

use crate::{
    config::{AgentSettings, AgentTransport},
    reconcile::assess::PLAN_PAGE_SIZE,
    reconcile::world::{Assessed, Labels},
};

/// The one field manager of every object the operator writes.
pub const FIELD_MANAGER: &str = "ringwarden-operator";
/// Key of the agent configuration in the ConfigMap.
pub const CONFIG_KEY: &str = "agent-config.yaml";
/// Where agents see the ConfigMap. Mounted as a directory, never with
/// `subPath`, so the kubelet swaps in new content and the agent reloads it.
pub const CONFIG_DIR: &str = "/etc/ringwarden";
/// ConfigMap annotation: hash of the configuration, for agents and people
/// to tell versions apart. It is deliberately not in the pod template, where
/// it would restart every agent on every ProbeSet change.
pub const CONFIG_HASH_ANNOTATION: &str = "ringwarden.dev/config-hash";
/// DaemonSet annotation: hash of everything the operator applies, compared
/// before applying so an unchanged DaemonSet is never rewritten (the API
/// server adds defaults, so the object itself cannot be compared).
pub const APPLIED_HASH_ANNOTATION: &str = "ringwarden.dev/applied-hash";
/// Label key of the affinity term that matches no node, used while no
/// ProbeSet is valid.
pub const NO_PROBESETS_KEY: &str = "ringwarden.dev/no-probesets";

/// Capabilities the agent adds after dropping all:
/// - `BPF`: load programs and create maps, ring buffers included;
/// - `PERFMON`: attach the tracepoint programs and let them read kernel
///   memory.
///
/// Not needed: `SYS_ADMIN` (BPF and PERFMON split it since 5.8; uprobes
/// are the exception, see [`UPROBE_CAPABILITIES`]); `SYS_PTRACE` (without
/// uprobes the agent reads only its own `/proc/self`);
/// `SYS_RESOURCE` (since 5.11 BPF memory is charged to the memory cgroup,
/// not to RLIMIT_MEMLOCK); `DAC_READ_SEARCH` (BTF, tracefs and cgroupfs are
/// world-readable; pods are resolved to cgroup ids by `stat`ing cgroupfs).
pub const AGENT_CAPABILITIES: [&str; 2] = ["BPF", "PERFMON"];

/// Added to [`AGENT_CAPABILITIES`] only when the cluster enables uprobes
/// (`agent.uprobes.enabled`): Linux 6.16 (and the stable kernels that took
/// upstream commit ba677dbe77af, July 2025) attaches uprobes only for
/// `SYS_ADMIN`, as a uprobe placed inside an instruction can corrupt the
/// traced program; `PERFMON` no longer suffices. And `SYS_PTRACE`: a
/// ProbeSet's uprobe binary resolves inside its own pods' containers,
/// through `/proc/<pid>/root`, which the kernel opens only after a ptrace
/// access check (container processes hold capabilities the agent lacks).
pub const UPROBE_CAPABILITIES: [&str; 2] = ["SYS_ADMIN", "SYS_PTRACE"];

/// Where the agent sees the host's root directory, read-only, when uprobes
/// are enabled: `uprobe.binary` paths resolve under it. A read-only mount,
/// rather than `/proc/1/root`, because reading another process's root
/// link needs `SYS_PTRACE` (init has capabilities the agent lacks), which
/// would let the agent attach to every process on the node.
pub const HOST_ROOT: &str = "/host";

/// The capabilities the agent container adds, as `settings` asks.
pub fn agent_capabilities(settings: &AgentSettings) -> Vec<&'static str> {
    let mut caps = AGENT_CAPABILITIES.to_vec();
    if settings.uprobes.enabled {
        caps.extend(UPROBE_CAPABILITIES);
    }
    caps
}

/// Host paths the agent mounts, all read-only: (volume name, path).
pub const AGENT_HOST_PATHS: [(&str, &str); 3] = [
    ("btf", "/sys/kernel/btf"),
    ("tracefs", "/sys/kernel/tracing"),
    ("cgroup", "/sys/fs/cgroup"),
];

/// Where the agent's projected service-account token is mounted; it
/// authenticates the agent to the operator (docs/protocol.md).
pub const TOKEN_DIR: &str = "/var/run/secrets/ringwarden";
/// Lifetime the kubelet gives the token; it rotates it well before.
const TOKEN_SECONDS: i64 = 3_600;

/// Arguments of the agent's Kubernetes mode: read the mounted
/// configuration and run the probes whose node selector matches the node
/// named by `RINGWARDEN_NODE_NAME`.
/// Where the agent finds the operator's CA (the CA ConfigMap's mount).
pub const OPERATOR_CA_DIR: &str = "/etc/ringwarden/operator-ca";

const AGENT_ARGS: [&str; 3] = ["node", "--config", "/etc/ringwarden/agent-config.yaml"];

const CONFIG_HEADER: &str =
    "# Rendered by ringwarden-operator from every valid ProbeSet; edits are overwritten.\n";

/// Why rendering failed (serializing plain data; not expected to happen).
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("cannot serialize the agent configuration: {0}")]
    Yaml(#[from] serde_yaml_ng::Error),
    #[error("cannot serialize the agent DaemonSet: {0}")]
    Json(#[from] serde_json::Error),
}

/// The objects the operator keeps for the agents.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentObjects {
    pub config: AgentConfig,
    pub config_map: ConfigMap,
    pub daemon_set: DaemonSet,
}

/// Renders everything for the agents from the assessed ProbeSets (as
/// [`crate::reconcile::world::World::assess_all`] returns them).
pub fn agent_objects(
    assessed: &[Assessed],
    settings: &AgentSettings,
    namespace: &str,
) -> Result<AgentObjects, RenderError> {
    let mut config = agent_config(assessed, settings.node_budget_bytes());
    if !settings.uprobes.enabled {
        // Their ProbeSets say why (`UprobesNotEnabled`); the agents could
        // not attach them.
        config.probes.retain(|p| !p.spec.kind.uses_uprobes());
    }
    let selectors: Vec<&Labels> = assessed
        .iter()
        .filter(|a| a.assessment.planned().is_some())
        .map(|a| &a.probeset.spec.node_selector)
        .collect();
    Ok(AgentObjects {
        config_map: config_map(&config, settings, namespace)?,
        daemon_set: daemon_set(&selectors, settings, namespace)?,
        config,
    })
}

/// One configuration for all agents: every probe of every valid ProbeSet
/// with its own plan and node selector, and the node budget
/// (`node_budget_bytes`, 0 for none) each agent shares among the probes
/// its node matches, within the limits of each namespace that has any.
/// Invalid ProbeSets, and probes their namespace's limits leave out, are
/// left out.
pub fn agent_config(assessed: &[Assessed], node_budget_bytes: u64) -> AgentConfig {
    let planned: Vec<_> = assessed
        .iter()
        .filter_map(|a| a.assessment.planned().map(|p| (a, p)))
        .collect();
    let mut probes = Vec::new();
    let mut namespace_limits = BTreeMap::new();
    for (a, p) in &planned {
        let spec = &a.probeset.spec;
        if let Some(limits) = &p.namespace_limits {
            namespace_limits.insert(a.namespace.clone(), limits.clone());
        }
        for ((((probe, plan), thresholds), &max_drop_rate), _) in spec
            .probes
            .iter()
            .zip(&p.plan.probes)
            .zip(&p.thresholds)
            .zip(&p.max_drop_rates)
            .zip(&p.excluded)
            .filter(|(_, excluded)| !**excluded)
        {
            probes.push(AgentProbe {
                namespace: a.namespace.clone(),
                probeset: a.name.clone(),
                spec: probe.clone(),
                pod_selector: spec.pod_selector.clone(),
                namespaces: a.namespaces.clone(),
                node_selector: spec.node_selector.clone(),
                // A probe without an event path still has a ring map, of
                // the smallest size (as standalone mode plans it).
                ring_bytes: plan.ring_bytes.max(PLAN_PAGE_SIZE),
                sample_every: plan.sample_every,
                predicted_drop: plan.predicted_drop,
                burst_factor: spec.ring_buffer.burst_factor,
                max_drop_rate,
                drain_interval: spec.ring_buffer.drain_interval,
                report_interval: spec.report_interval,
                thresholds: thresholds.clone(),
            });
        }
    }
    probes.sort_by(|a, b| {
        (&a.namespace, &a.probeset, &a.spec.name).cmp(&(&b.namespace, &b.probeset, &b.spec.name))
    });
    AgentConfig {
        probes,
        node_budget_bytes,
        namespace_limits,
    }
}

/// The agent container's resources: as configured, with the memory limit
/// derived from the node budget ([`AgentSettings::memory_limit_bytes`]).
fn resources(settings: &AgentSettings) -> ResourceRequirements {
    let mut r = settings.resources.clone();
    r.limits.get_or_insert_with(BTreeMap::new).insert(
        "memory".into(),
        Quantity(ringwarden_core::quantity::format_bytes(
            settings.memory_limit_bytes(),
        )),
    );
    r
}

/// The ConfigMap carrying `config`, annotated with its content hash.
pub fn config_map(
    config: &AgentConfig,
    settings: &AgentSettings,
    namespace: &str,
) -> Result<ConfigMap, RenderError> {
    let text = format!("{CONFIG_HEADER}{}", serde_yaml_ng::to_string(config)?);
    Ok(ConfigMap {
        metadata: ObjectMeta {
            name: Some(settings.config_map_name.clone()),
            namespace: Some(namespace.into()),
            labels: Some(labels(settings)),
            annotations: Some(BTreeMap::from([(
                CONFIG_HASH_ANNOTATION.into(),
                content_hash(text.as_bytes()),
            )])),
            owner_references: settings.owner.clone().map(|o| vec![o]),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(CONFIG_KEY.into(), text)])),
        ..Default::default()
    })
}

/// The agent DaemonSet, scheduled on the union of `selectors`, annotated
/// with the hash of its own content.
pub fn daemon_set(
    selectors: &[&Labels],
    settings: &AgentSettings,
    namespace: &str,
) -> Result<DaemonSet, RenderError> {
    let labels = labels(settings);
    let selector_labels: BTreeMap<String, String> = labels
        .iter()
        .filter(|(k, _)| *k == "app.kubernetes.io/name" || *k == "app.kubernetes.io/instance")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let read_only = |name: &str, path: &str| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..Default::default()
    };
    let mut volume_mounts = vec![
        read_only("config", CONFIG_DIR),
        read_only("ringwarden-token", TOKEN_DIR),
    ];
    let mut volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: settings.config_map_name.clone(),
                ..Default::default()
            }),
            ..Default::default()
        },
        // A token for the operator's audience only: the API server refuses
        // it, so a leaked one opens nothing but the agent service.
        Volume {
            name: "ringwarden-token".into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(ringwarden_proto::TOKEN_AUDIENCE.into()),
                        expiration_seconds: Some(TOKEN_SECONDS),
                        path: "token".into(),
                    }),
                    ..Default::default()
                }]),
                default_mode: None,
            }),
            ..Default::default()
        },
    ];
    for (name, path) in AGENT_HOST_PATHS {
        volume_mounts.push(read_only(name, path));
        volumes.push(Volume {
            name: name.into(),
            // No type check: a node without tracefs or BTF still starts
            // the agent, which reports what is missing on the ProbeSets.
            host_path: Some(HostPathVolumeSource {
                path: path.into(),
                type_: None,
            }),
            ..Default::default()
        });
    }
    // How the agent verifies the operator: the CA ConfigMap, mounted and
    // pinned (a rotated CA reaches the file without restarting the pod).
    let transport_env = match &settings.transport {
        AgentTransport::Tls { ca_configmap } => {
            volume_mounts.push(read_only("operator-ca", OPERATOR_CA_DIR));
            volumes.push(Volume {
                name: "operator-ca".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: ca_configmap.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            });
            (
                "RINGWARDEN_OPERATOR_CA",
                format!("{OPERATOR_CA_DIR}/ca.crt"),
            )
        }
        AgentTransport::Plaintext => (
            "RINGWARDEN_INSECURE_PLAINTEXT_FOR_LOCAL_DEVELOPMENT",
            "true".to_string(),
        ),
    };
    let env = |name: &str, value: &str| EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    };
    let mut host_root_env = None;
    if settings.uprobes.enabled {
        // The node's files as the node sees them, including what is mounted
        // later (container images), never writable.
        volume_mounts.push(VolumeMount {
            mount_propagation: Some("HostToContainer".into()),
            ..read_only("host-root", HOST_ROOT)
        });
        volumes.push(Volume {
            name: "host-root".into(),
            host_path: Some(HostPathVolumeSource {
                path: "/".into(),
                type_: Some("Directory".into()),
            }),
            ..Default::default()
        });
        host_root_env = Some(env("RINGWARDEN_HOST_ROOT", HOST_ROOT));
    }
    let container = Container {
        name: "agent".into(),
        image: Some(settings.image.clone()),
        image_pull_policy: Some(settings.image_pull_policy.clone()),
        args: Some(AGENT_ARGS.iter().map(|s| (*s).into()).collect()),
        env: Some(
            vec![
                EnvVar {
                    name: "RINGWARDEN_NODE_NAME".into(),
                    value: None,
                    value_from: Some(EnvVarSource {
                        field_ref: Some(ObjectFieldSelector {
                            api_version: None,
                            field_path: "spec.nodeName".into(),
                        }),
                        ..Default::default()
                    }),
                },
                env(
                    "RINGWARDEN_METRICS_ADDR",
                    &format!("0.0.0.0:{}", settings.metrics_port),
                ),
                env("RINGWARDEN_LOG_FORMAT", "json"),
                env(
                    "RINGWARDEN_OPERATOR_ADDR",
                    &operator_address(settings, namespace),
                ),
                env("RINGWARDEN_TOKEN_FILE", &format!("{TOKEN_DIR}/token")),
                env(transport_env.0, &transport_env.1),
            ]
            .into_iter()
            .chain(
                (!settings.metrics_address_labels)
                    .then(|| env("RINGWARDEN_METRICS_WITHOUT_ADDRESSES", "true")),
            )
            .chain(host_root_env)
            .collect(),
        ),
        ports: Some(vec![ContainerPort {
            name: Some("metrics".into()),
            container_port: i32::from(settings.metrics_port),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        liveness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/healthz".into()),
                port: IntOrString::String("metrics".into()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        resources: Some(resources(settings)),
        security_context: Some(agent_security_context(settings)),
        volume_mounts: Some(volume_mounts),
        ..Default::default()
    };
    let mut ds = DaemonSet {
        metadata: ObjectMeta {
            name: Some(settings.name.clone()),
            namespace: Some(namespace.into()),
            labels: Some(labels.clone()),
            owner_references: settings.owner.clone().map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(selector_labels),
                match_expressions: None,
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(settings.service_account_name.clone()),
                    // Host PIDs: the kernel knows the agent by its host
                    // tgid, and filters it out of its own numbers by it.
                    host_pid: Some(true),
                    priority_class_name: settings.priority_class_name.clone(),
                    tolerations: Some(settings.tolerations.clone()).filter(|t| !t.is_empty()),
                    affinity: node_affinity(selectors),
                    security_context: Some(PodSecurityContext {
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            localhost_profile: None,
                        }),
                        ..Default::default()
                    }),
                    containers: vec![container],
                    volumes: Some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    };
    let hash = content_hash(&serde_json::to_vec(&ds)?);
    ds.metadata.annotations = Some(BTreeMap::from([(APPLIED_HASH_ANNOTATION.into(), hash)]));
    Ok(ds)
}

/// The agent service's URL, as agents are told it.
pub fn operator_address(settings: &AgentSettings, namespace: &str) -> String {
    settings.operator_address.clone().unwrap_or_else(|| {
        let scheme = match settings.transport {
            AgentTransport::Tls { .. } => "https",
            AgentTransport::Plaintext => "http",
        };
        format!(
            "{scheme}://ringwarden-operator.{namespace}.svc:{}",
            ringwarden_proto::AGENT_PORT
        )
    })
}

/// Never privileged; root only because loading BPF needs capabilities in
/// the initial user namespace, with every capability but
/// [`agent_capabilities`] dropped and no way to gain more.
fn agent_security_context(settings: &AgentSettings) -> SecurityContext {
    SecurityContext {
        privileged: Some(false),
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            add: Some(
                agent_capabilities(settings)
                    .into_iter()
                    .map(Into::into)
                    .collect(),
            ),
            drop: Some(vec!["ALL".into()]),
        }),
        ..Default::default()
    }
}

/// Required node affinity: the union (ORed terms) of the ProbeSets' node
/// selectors. `None` when some ProbeSet selects every node; a term matching
/// nothing when no ProbeSet is valid, so no agent runs idle.
fn node_affinity(selectors: &[&Labels]) -> Option<Affinity> {
    let distinct: BTreeSet<&Labels> = selectors.iter().copied().collect();
    if distinct.iter().any(|s| s.is_empty()) {
        return None;
    }
    let terms: Vec<NodeSelectorTerm> = if distinct.is_empty() {
        // Exists and DoesNotExist on one key: valid, and matches no node.
        let requirement = |operator: &str| NodeSelectorRequirement {
            key: NO_PROBESETS_KEY.into(),
            operator: operator.into(),
            values: None,
        };
        vec![NodeSelectorTerm {
            match_expressions: Some(vec![requirement("Exists"), requirement("DoesNotExist")]),
            match_fields: None,
        }]
    } else {
        // A selector that contains another selects a subset of its nodes
        // and adds nothing to the union; leaving it out keeps the pod
        // template, and so the agents, unchanged when a narrower ProbeSet
        // is added.
        distinct
            .iter()
            .filter(|s| {
                !distinct
                    .iter()
                    .any(|other| other != *s && crate::reconcile::world::selector_matches(other, s))
            })
            .map(|s| NodeSelectorTerm {
                match_expressions: Some(
                    s.iter()
                        .map(|(k, v)| NodeSelectorRequirement {
                            key: k.clone(),
                            operator: "In".into(),
                            values: Some(vec![v.clone()]),
                        })
                        .collect(),
                ),
                match_fields: None,
            })
            .collect()
    };
    Some(Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: terms,
            }),
            preferred_during_scheduling_ignored_during_execution: None,
        }),
        ..Default::default()
    })
}

fn labels(settings: &AgentSettings) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "ringwarden-agent".into()),
        ("app.kubernetes.io/instance".into(), settings.name.clone()),
        ("app.kubernetes.io/component".into(), "agent".into()),
        ("app.kubernetes.io/part-of".into(), "ringwarden".into()),
        ("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into()),
    ])
}

/// `sha256:<hex>` of `bytes`.
pub fn content_hash(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// (key, operator, values) of each requirement, per term.
    type Terms = Vec<Vec<(String, String, Option<Vec<String>>)>>;

    fn terms(selectors: &[&Labels]) -> Option<Terms> {
        let a = node_affinity(selectors)?;
        let terms = a
            .node_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap()
            .node_selector_terms;
        Some(
            terms
                .into_iter()
                .map(|t| {
                    t.match_expressions
                        .unwrap()
                        .into_iter()
                        .map(|r| (r.key, r.operator, r.values))
                        .collect()
                })
                .collect(),
        )
    }

    #[test]
    fn affinity_is_the_union_of_the_selectors() {
        let gpu = sel(&[("gpu", "true")]);
        let arm = sel(&[("arch", "arm64"), ("pool", "batch")]);
        let t = terms(&[&gpu, &arm, &gpu]).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(
            t[0],
            [
                ("arch".into(), "In".into(), Some(vec!["arm64".into()])),
                ("pool".into(), "In".into(), Some(vec!["batch".into()]))
            ]
        );
        assert_eq!(
            t[1],
            [("gpu".into(), "In".into(), Some(vec!["true".into()]))]
        );
    }

    #[test]
    fn narrower_selectors_add_no_term_and_an_empty_one_selects_all_nodes() {
        let gpu = sel(&[("gpu", "true")]);
        let gpu_a = sel(&[("gpu", "true"), ("zone", "a")]);
        assert_eq!(terms(&[&gpu_a, &gpu]), terms(&[&gpu]));
        assert_eq!(terms(&[&gpu, &sel(&[])]), None);
    }

    #[test]
    fn without_probesets_no_node_is_selected() {
        let t = terms(&[]).unwrap();
        assert_eq!(
            t,
            [[
                (NO_PROBESETS_KEY.into(), "Exists".into(), None),
                (NO_PROBESETS_KEY.into(), "DoesNotExist".into(), None)
            ]]
        );
    }

    #[test]
    fn hashes_are_hex_sha256() {
        assert_eq!(
            content_hash(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn the_owner_deployment_owns_both_agent_objects() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
        let settings = AgentSettings {
            owner: Some(OwnerReference {
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                name: "ringwarden-operator".into(),
                uid: "0f3c9a2e".into(),
                controller: Some(false),
                block_owner_deletion: Some(false),
            }),
            ..AgentSettings::default()
        };
        let cm = config_map(&AgentConfig::default(), &settings, "ringwarden").unwrap();
        let ds = daemon_set(&[], &settings, "ringwarden").unwrap();
        for owners in [cm.metadata.owner_references, ds.metadata.owner_references] {
            let owners = owners.expect("an owner reference");
            assert_eq!(owners.len(), 1);
            assert_eq!(owners[0].uid, "0f3c9a2e");
            assert_eq!(owners[0].controller, Some(false));
        }
        let plain = daemon_set(&[], &AgentSettings::default(), "ringwarden").unwrap();
        assert!(plain.metadata.owner_references.is_none());
    }

    fn container(ds: &DaemonSet) -> &Container {
        &ds.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
    }

    fn added_capabilities(ds: &DaemonSet) -> Vec<String> {
        let sc = container(ds).security_context.as_ref().unwrap();
        sc.capabilities.as_ref().unwrap().add.clone().unwrap()
    }

    #[test]
    fn the_agent_gets_sys_admin_and_the_host_root_only_when_uprobes_are_enabled() {
        let plain = daemon_set(&[], &AgentSettings::default(), "ringwarden").unwrap();
        assert_eq!(added_capabilities(&plain), ["BPF", "PERFMON"]);
        let c = container(&plain);
        assert!(
            c.volume_mounts
                .as_ref()
                .unwrap()
                .iter()
                .all(|m| m.mount_path != HOST_ROOT)
        );
        assert!(
            c.env
                .as_ref()
                .unwrap()
                .iter()
                .all(|e| e.name != "RINGWARDEN_HOST_ROOT")
        );

        let mut settings = AgentSettings::default();
        settings.uprobes.enabled = true;
        let ds = daemon_set(&[], &settings, "ringwarden").unwrap();
        assert_eq!(
            added_capabilities(&ds),
            ["BPF", "PERFMON", "SYS_ADMIN", "SYS_PTRACE"]
        );
        let c = container(&ds);
        let mount = c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.mount_path == HOST_ROOT)
            .expect("the host root is mounted");
        assert_eq!(mount.read_only, Some(true));
        assert_eq!(mount.mount_propagation.as_deref(), Some("HostToContainer"));
        let volume = ds
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == mount.name)
            .unwrap();
        assert_eq!(volume.host_path.as_ref().unwrap().path, "/");
        let env = c.env.as_ref().unwrap();
        assert!(
            env.iter()
                .any(|e| e.name == "RINGWARDEN_HOST_ROOT" && e.value.as_deref() == Some(HOST_ROOT))
        );
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.privileged, Some(false));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
    }

    #[test]
    fn uprobe_probes_reach_the_agents_only_when_uprobes_are_enabled() {
        use ringwarden_crds::{
            GoRuntimeTarget, ProbeKind, ProbeSet, ProbeSetSpec, ProbeSpec, UprobeTarget,
        };
        let probe = |name: &str, kind: ProbeKind| ProbeSpec {
            name: name.into(),
            kind,
            uprobe: (kind == ProbeKind::Uprobe).then(|| UprobeTarget {
                binary: "/usr/bin/app".into(),
                symbol: "handler".into(),
            }),
            go_runtime: (kind == ProbeKind::GoRuntime).then(|| GoRuntimeTarget {
                binary: "/usr/bin/app".into(),
            }),
            filter: None,
            max_series: 64,
            export: Default::default(),
            peak_event_rate: 0.0,
            sampling: 1.0,
            priority: 0,
        };
        let mut ps = ProbeSet::new(
            "web",
            ProbeSetSpec {
                node_selector: Default::default(),
                pod_selector: None,
                probes: vec![
                    probe("sys", ProbeKind::Syscalls),
                    probe("fn", ProbeKind::Uprobe),
                    probe("gc", ProbeKind::GoRuntime),
                ],
                ring_buffer: Default::default(),
                max_drop_rate: 0.01,
                report_interval: std::time::Duration::from_secs(10),
            },
        );
        ps.metadata.namespace = Some("shop".into());
        let assessed = [Assessed {
            namespace: "shop".into(),
            namespaces: Some(vec!["shop".into()]),
            name: "web".into(),
            assessment: crate::reconcile::assess::assess(&ps, &[]),
            probeset: std::sync::Arc::new(ps),
        }];
        let names = |settings: &AgentSettings| -> Vec<String> {
            agent_objects(&assessed, settings, "ringwarden")
                .unwrap()
                .config
                .probes
                .iter()
                .map(|p| p.spec.name.clone())
                .collect()
        };
        assert_eq!(names(&AgentSettings::default()), ["sys"]);
        let mut settings = AgentSettings::default();
        settings.uprobes.enabled = true;
        assert_eq!(names(&settings), ["fn", "gc", "sys"]);
    }
}
