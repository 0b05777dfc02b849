//! The cluster as reconcile sees it: ProbeSets, ClusterProbeSets, node
//! and namespace labels and SLOs, as plain data copied from the watch
//! caches. Pure.
//!
//! Tenancy: a ProbeSet's probes observe the pods of its namespace only; a
//! ClusterProbeSet's, the pods of the namespaces its `namespaceSelector`
//! matches (resolved here to names, so agents need no access to
//! Namespaces), or, without one, the whole node.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Selector, SelectorExt};
use ringwarden_core::planner::node::water_fill;
use ringwarden_crds::{
    ClusterProbeSet, ProbeSet,
    agent::{MAX_PRIORITY_ANNOTATION, MAX_PROBES_ANNOTATION, NamespaceLimits, UPROBES_ANNOTATION},
};

use crate::{
    reconcile::assess::{Assessment, assess, config_bytes},
    reconcile::node_labels::{NodeSelectorLabels, restrict},
    reconcile::slo::SloTarget,
};

/// Most bytes the probes of all ProbeSets may take in the agents'
/// ConfigMap: three quarters of the API server's 1 MiB object limit, the
/// rest for plans, thresholds and YAML overhead.
pub const MAX_AGENT_CONFIG_BYTES: usize = 768 * 1024;

/// Labels of one node.
pub type Labels = BTreeMap<String, String>;

/// Everything reconcile reads.
#[derive(Clone, Debug, Default)]
pub struct World {
    pub probesets: Vec<Arc<ProbeSet>>,
    pub cluster_probesets: Vec<Arc<ClusterProbeSet>>,
    /// Every namespace: name and labels.
    pub namespaces: Vec<(String, Labels)>,
    /// Every node: name and labels.
    pub nodes: Vec<(String, Labels)>,
    pub slos: Vec<SloTarget>,
    /// Which node labels a `nodeSelector` may name.
    pub node_selector_labels: NodeSelectorLabels,
    /// What the cluster administrator allows each namespace that has any
    /// `ringwarden.dev/*` limit annotation ([`NamespaceLimits`]); the
    /// others have [`NamespaceLimits::default`].
    pub namespace_limits: BTreeMap<String, NamespaceLimits>,
}

/// A ProbeSet with its outcome.
#[derive(Clone, Debug)]
pub struct Assessed {
    /// Empty for a ClusterProbeSet.
    pub namespace: String,
    pub name: String,
    /// The namespaces whose pods alone its probes observe (see
    /// [`ringwarden_crds::AgentProbe::namespaces`]): its own for a
    /// ProbeSet; `None` for a ClusterProbeSet that observes the whole node.
    pub namespaces: Option<Vec<String>>,
    pub probeset: Arc<ProbeSet>,
    pub assessment: Assessment,
}

impl World {
    /// Every ProbeSet and ClusterProbeSet not being deleted, assessed,
    /// sorted by namespace and name (ClusterProbeSets, without one, first)
    /// so that everything rendered from them is deterministic.
    pub fn assess_all(&self) -> Vec<Assessed> {
        let mut all: Vec<Assessed> = self
            .probesets
            .iter()
            .filter(|ps| ps.metadata.deletion_timestamp.is_none())
            .map(|ps| Assessed {
                namespace: ps.metadata.namespace.clone().unwrap_or_default(),
                namespaces: Some(vec![ps.metadata.namespace.clone().unwrap_or_default()]),
                name: ps.metadata.name.clone().unwrap_or_default(),
                probeset: Arc::clone(ps),
                assessment: restrict(
                    assess(ps, &self.slos),
                    &ps.spec.node_selector,
                    self.node_selector_labels,
                ),
            })
            .collect();
        all.extend(
            self.cluster_probesets
                .iter()
                .filter(|c| c.metadata.deletion_timestamp.is_none())
                .map(|c| {
                    let mut a = assess_cluster(c, &self.namespaces, &self.slos);
                    a.assessment = restrict(
                        a.assessment,
                        &c.spec.probe_set.node_selector,
                        self.node_selector_labels,
                    );
                    a
                }),
        );
        apply_limits(&mut all, &self.namespace_limits);
        crowd_out(&mut all, &self.nodes);
        all.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        all
    }
}

/// A ClusterProbeSet, assessed as a ProbeSet without a namespace, its
/// `namespaceSelector` resolved against `namespaces`.
pub fn assess_cluster(
    c: &ClusterProbeSet,
    namespaces: &[(String, Labels)],
    slos: &[SloTarget],
) -> Assessed {
    let ps = Arc::new(c.as_probeset());
    let selector_errors: Vec<String> = c
        .spec
        .validate()
        .into_iter()
        .filter(|e| e.field.starts_with("spec.namespaceSelector"))
        .map(|e| e.to_string())
        .collect();
    let (scope, assessment) = match scope_namespaces(c.spec.namespace_selector.as_ref(), namespaces)
    {
        Ok(scope) if selector_errors.is_empty() => (
            scope,
            crate::reconcile::assess::assess_cluster_probes(&ps, c, slos),
        ),
        Ok(_) => (None, Assessment::Invalid(selector_errors)),
        Err(e) => (None, Assessment::Invalid(vec![e])),
    };
    Assessed {
        namespace: String::new(),
        name: c.metadata.name.clone().unwrap_or_default(),
        namespaces: scope,
        probeset: ps,
        assessment,
    }
}

/// The names of the namespaces `selector` matches, sorted; `None` (the
/// whole node) without a selector. An empty list observes nothing, which is
/// what a selector matching no namespace asks for.
pub fn scope_namespaces(
    selector: Option<&LabelSelector>,
    namespaces: &[(String, Labels)],
) -> Result<Option<Vec<String>>, String> {
    let Some(selector) = selector else {
        return Ok(None);
    };
    let checked = Selector::try_from(selector.clone())
        .map_err(|e| format!("spec.namespaceSelector: {}", e.0))?;
    let mut names: Vec<String> = namespaces
        .iter()
        .filter(|(name, labels)| {
            // The API server labels every namespace with its name; a cache
            // entry from before it did still matches by name.
            let mut labels = labels.clone();
            labels
                .entry("kubernetes.io/metadata.name".into())
                .or_insert_with(|| name.clone());
            checked.matches(&labels)
        })
        .map(|(name, _)| name.clone())
        .collect();
    names.sort();
    names.dedup();
    Ok(Some(names))
}

/// Applies each namespace's limits ([`NamespaceLimits`]) to its planned
/// ProbeSets: probes using uprobes where uprobes are not allowed, and
/// probes past `maxProbes` (counted over the namespace's ProbeSets, by
/// priority, capped at `maxPriority`, then ProbeSet and probe name) are
/// left out of the agents' configuration, and a priority above
/// `maxPriority` counts as it (the agents apply the same limits). Each
/// binding limit is a line of the ProbeSet's `limited`, naming the
/// annotation. ClusterProbeSets have no limits.
fn apply_limits(all: &mut [Assessed], limits: &BTreeMap<String, NamespaceLimits>) {
    let default = NamespaceLimits::default();
    let mut by_namespace: BTreeMap<String, Vec<(usize, usize)>> = BTreeMap::new();
    for (ai, a) in all.iter_mut().enumerate() {
        if a.namespace.is_empty() {
            continue;
        }
        let set = limits.get(&a.namespace);
        let limit = set.unwrap_or(&default);
        let Assessment::Planned(planned) = &mut a.assessment else {
            continue;
        };
        planned.namespace_limits = set.cloned();
        for (i, probe) in a.probeset.spec.probes.iter().enumerate() {
            if probe.kind.uses_uprobes() && !limit.uprobes {
                planned.excluded[i] = true;
                planned.limited.push(format!(
                    "{}: not run, namespace {} does not allow uprobes (the Namespace's \
                     annotation {UPROBES_ANNOTATION} is not \"true\")",
                    probe.name, a.namespace
                ));
                continue;
            }
            if probe.priority > limit.max_priority {
                planned.limited.push(format!(
                    "{}: priority {} counts as {}, the highest namespace {} may use (the \
                     Namespace's annotation {MAX_PRIORITY_ANNOTATION})",
                    probe.name, probe.priority, limit.max_priority, a.namespace
                ));
            }
            by_namespace
                .entry(a.namespace.clone())
                .or_default()
                .push((ai, i));
        }
    }
    for (namespace, mut members) in by_namespace {
        let limit = limits.get(&namespace).unwrap_or(&default);
        let max = limit.max_probes as usize;
        if members.len() <= max {
            continue;
        }
        members.sort_by_key(|&(ai, i)| {
            let p = &all[ai].probeset.spec.probes[i];
            (
                std::cmp::Reverse(p.priority.min(limit.max_priority)),
                all[ai].name.clone(),
                p.name.clone(),
            )
        });
        for &(ai, i) in &members[max..] {
            let name = all[ai].probeset.spec.probes[i].name.clone();
            if let Assessment::Planned(planned) = &mut all[ai].assessment {
                planned.excluded[i] = true;
                planned.limited.push(format!(
                    "{name}: not run, namespace {namespace} may run {max} probes (the \
                     Namespace's annotation {MAX_PROBES_ANNOTATION}); higher priorities, then \
                     ProbeSets and probes by name, run first"
                ));
            }
        }
    }
}

/// Why a ProbeSet was left out of a full agent configuration.
pub const CONFIG_FULL: &str = "the agents' configuration is full";

/// Shares the agents' configuration ([`MAX_AGENT_CONFIG_BYTES`]) as the
/// node plan shares a node: ClusterProbeSets (the platform's) first, then
/// the namespaces max-min fairly (`water_fill` over what each namespace's
/// ProbeSets take). Within each, the oldest keep running (by creation
/// time, then name), so a new ProbeSet never stops one that works, and a
/// namespace over its share sees only its own newest ProbeSets left out,
/// as Invalid.
///
/// Only ProbeSets that select at least one node count, and only they are
/// rendered: one that selects none runs nowhere, takes no room, and is
/// rendered (and counted) once a node it selects joins. Without any node
/// known (the node cache not yet filled) every ProbeSet counts.
fn crowd_out(all: &mut [Assessed], nodes: &[(String, Labels)]) {
    all.sort_by(|a, b| {
        let created = |x: &Assessed| x.probeset.metadata.creation_timestamp.clone();
        (created(a), &a.namespace, &a.name).cmp(&(created(b), &b.namespace, &b.name))
    });
    let mut sizes: Vec<Option<usize>> = vec![None; all.len()];
    for (i, a) in all.iter_mut().enumerate() {
        let selects = nodes.is_empty()
            || nodes
                .iter()
                .any(|(_, labels)| selector_matches(&a.probeset.spec.node_selector, labels));
        let Assessment::Planned(planned) = &mut a.assessment else {
            continue;
        };
        if !selects {
            planned.excluded.iter_mut().for_each(|e| *e = true);
            continue;
        }
        // Each probe carries its scope's namespace names too.
        let scope: usize = a.namespaces.iter().flatten().map(|n| n.len() + 4).sum();
        sizes[i] = Some(
            config_bytes(&a.probeset, &planned.thresholds) + scope * a.probeset.spec.probes.len(),
        );
    }
    let mut shares: BTreeMap<&str, u128> = BTreeMap::new();
    let max = MAX_AGENT_CONFIG_BYTES as u128;
    let mut platform = 0u128;
    let mut wants: BTreeMap<&str, u128> = BTreeMap::new();
    for (a, size) in all.iter().zip(&sizes) {
        if let Some(bytes) = size {
            if a.namespace.is_empty() {
                if platform + *bytes as u128 <= max {
                    platform += *bytes as u128;
                }
            } else {
                *wants.entry(a.namespace.as_str()).or_default() += *bytes as u128;
            }
        }
    }
    shares.insert("", max);
    shares.extend(water_fill(max - platform, &wants));
    let shares: BTreeMap<String, u128> =
        shares.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    let mut used: BTreeMap<String, u128> = BTreeMap::new();
    for (a, size) in all.iter_mut().zip(sizes) {
        let Some(bytes) = size else { continue };
        let share = shares[&a.namespace];
        let held = used.entry(a.namespace.clone()).or_default();
        if *held + bytes as u128 > share {
            let whose = if a.namespace.is_empty() {
                "the ClusterProbeSets' share (all of it, before any namespace)".to_owned()
            } else {
                format!(
                    "namespace {}'s fair share ({share} bytes; namespaces share what \
                     ClusterProbeSets leave equally, and one asking less leaves the rest to others)",
                    a.namespace
                )
            };
            a.assessment = Assessment::Invalid(vec![format!(
                "spec.probes: {CONFIG_FULL}: this ProbeSet's {bytes} bytes would take {whose} \
                 of the {MAX_AGENT_CONFIG_BYTES} all ProbeSets may use (a ConfigMap holds 1 MiB) \
                 past what it holds, so it runs nowhere while the ProbeSets created before it \
                 run. Shrink or remove ProbeSets of this namespace (their filters and \
                 selectors), or merge small ones"
            )]);
        } else {
            *held += bytes as u128;
        }
    }
}

/// Whether `labels` has every key of `selector` with the same value; an
/// empty selector matches everything.
pub fn selector_matches(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The node classes: for every distinct set of ProbeSets that some node
/// runs, the indexes into `selectors` of that set. Nodes matching no
/// selector form no class.
pub fn node_classes<'a>(
    selectors: &[&Labels],
    nodes: impl IntoIterator<Item = &'a Labels>,
) -> BTreeSet<Vec<usize>> {
    nodes
        .into_iter()
        .map(|n| {
            selectors
                .iter()
                .enumerate()
                .filter(|(_, s)| selector_matches(s, n))
                .map(|(i, _)| i)
                .collect::<Vec<_>>()
        })
        .filter(|class| !class.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_node_that_labels_itself_into_a_pool_is_handed_none_of_its_probes() {
        use ringwarden_crds::ProbeSetSpec;
        let probeset = |name: &str, selector: &str| {
            let spec: ProbeSetSpec = serde_yaml_ng::from_str(&format!(
                "nodeSelector: {selector}\nprobes: [{{name: sys, kind: syscalls}}]"
            ))
            .unwrap();
            let mut ps = ProbeSet::new(name, spec);
            ps.metadata.namespace = Some("shop".into());
            Arc::new(ps)
        };
        let world = |policy| World {
            probesets: vec![
                probeset("self-labelled", "{pool: web}"),
                probeset("restricted", "{node-restriction.kubernetes.io/pool: web}"),
            ],
            node_selector_labels: policy,
            ..World::default()
        };
        // A compromised node gives itself every label a kubelet may set.
        let liar = labels(&[("pool", "web"), ("kubernetes.io/hostname", "web-1")]);
        let honest = labels(&[
            ("pool", "web"),
            ("node-restriction.kubernetes.io/pool", "web"),
        ]);
        let handed = |policy, node: &Labels| {
            let config = crate::reconcile::render::agent_config(&world(policy).assess_all(), 0);
            let mut names: Vec<String> = crate::ingest::handed::selected(&config, node)
                .map(|p| p.probeset.clone())
                .collect();
            names.sort();
            names
        };
        assert_eq!(handed(NodeSelectorLabels::Any, &liar), ["self-labelled"]);
        assert!(handed(NodeSelectorLabels::Restricted, &liar).is_empty());
        assert_eq!(
            handed(NodeSelectorLabels::Restricted, &honest),
            ["restricted"]
        );
        // The ProbeSet refused says why and how to fix it.
        let all = world(NodeSelectorLabels::Restricted).assess_all();
        let Assessment::Invalid(why) = &all
            .iter()
            .find(|a| a.name == "self-labelled")
            .unwrap()
            .assessment
        else {
            panic!("a selector on labels a node sets itself runs nowhere");
        };
        assert!(
            why[0].contains("pool can be set by a node itself"),
            "{why:?}"
        );
    }

    #[test]
    fn selectors_need_every_label() {
        let node = labels(&[("zone", "a"), ("gpu", "true")]);
        assert!(selector_matches(&labels(&[]), &node));
        assert!(selector_matches(&labels(&[("gpu", "true")]), &node));
        assert!(!selector_matches(
            &labels(&[("gpu", "true"), ("zone", "b")]),
            &node
        ));
    }

    #[test]
    fn nodes_running_the_same_probesets_form_one_class() {
        let all = labels(&[]);
        let gpu = labels(&[("gpu", "true")]);
        let arm = labels(&[("arch", "arm64")]);
        let nodes = [
            labels(&[("gpu", "true"), ("host", "1")]),
            labels(&[("gpu", "true"), ("host", "2")]),
            labels(&[("host", "3")]),
        ];
        let classes = node_classes(&[&all, &gpu, &arm], &nodes);
        assert_eq!(classes, BTreeSet::from([vec![0, 1], vec![0]]));
        assert!(node_classes(&[&arm], &nodes).is_empty());
    }

    #[test]
    fn a_full_agent_configuration_leaves_out_the_newest_probesets() {
        use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
        // Each about 65 KB: eleven fit in 768 KiB, the twelfth does not.
        let comms: Vec<String> = (0..200).map(|i| format!("worker-{i:06}")).collect();
        let probes: String = (0..10)
            .map(|i| format!("  - {{name: p{i}, kind: syscalls, filter: {{comms: {comms:?}}}}}\n"))
            .collect();
        let spec: ringwarden_crds::ProbeSetSpec =
            serde_yaml_ng::from_str(&format!("probes:\n{probes}")).unwrap();
        let bytes = config_bytes(&ProbeSet::new("ps00", spec.clone()), &[]);
        assert!(
            (50_000..crate::reconcile::assess::MAX_CONFIG_BYTES_PER_PROBESET).contains(&bytes),
            "{bytes}"
        );
        let fits = MAX_AGENT_CONFIG_BYTES / bytes;
        let probesets: Vec<Arc<ProbeSet>> = (0..fits + 2)
            .map(|i| {
                let mut ps = ProbeSet::new(&format!("ps{i:02}"), spec.clone());
                // One namespace: fair shares among namespaces are below.
                ps.metadata.namespace = Some("team".into());
                // Created in reverse name order: age, not name, decides.
                let t = Timestamp::from_second(1_000_000 - i as i64).unwrap();
                ps.metadata.creation_timestamp = Some(Time(t));
                Arc::new(ps)
            })
            .collect();
        let world = World {
            probesets,
            ..World::default()
        };
        let all = world.assess_all();
        let out: Vec<&str> = all
            .iter()
            .filter(|a| a.assessment.planned().is_none())
            .map(|a| a.name.as_str())
            .collect();
        // The two created last: ps00 and ps01.
        assert_eq!(out, ["ps00", "ps01"], "{fits} fit");
        let Assessment::Invalid(why) = &all.iter().find(|a| a.name == "ps00").unwrap().assessment
        else {
            unreachable!()
        };
        assert!(why[0].contains(CONFIG_FULL), "{why:?}");
        // And what is rendered stays under the limit.
        let config = crate::reconcile::render::agent_config(&all, 0);
        let yaml = serde_yaml_ng::to_string(&config).unwrap();
        assert!(yaml.len() <= MAX_AGENT_CONFIG_BYTES, "{} bytes", yaml.len());
    }

    /// A ProbeSet of about 65 KB in the agents' configuration.
    fn big(name: &str, namespace: &str, created: i64, selector: &str) -> Arc<ProbeSet> {
        use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
        let comms: Vec<String> = (0..200).map(|i| format!("worker-{i:06}")).collect();
        let probes: String = (0..10)
            .map(|i| format!("  - {{name: p{i}, kind: syscalls, filter: {{comms: {comms:?}}}}}\n"))
            .collect();
        let spec: ringwarden_crds::ProbeSetSpec =
            serde_yaml_ng::from_str(&format!("{selector}probes:\n{probes}")).unwrap();
        let mut ps = ProbeSet::new(name, spec);
        ps.metadata.namespace = Some(namespace.into());
        ps.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).unwrap()));
        Arc::new(ps)
    }

    fn cluster(name: &str, created: i64) -> Arc<ClusterProbeSet> {
        use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
        let spec: ringwarden_crds::ProbeSetSpec =
            serde_yaml_ng::from_str("probes: [{name: sys, kind: syscalls}]").unwrap();
        let mut c = ClusterProbeSet::new(
            name,
            ringwarden_crds::ClusterProbeSetSpec {
                namespace_selector: None,
                slo_namespaces: vec![],
                probe_set: spec,
            },
        );
        c.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).unwrap()));
        Arc::new(c)
    }

    fn nodes() -> Vec<(String, Labels)> {
        vec![("n1".into(), labels(&[("pool", "web")]))]
    }

    #[test]
    fn probesets_selecting_no_node_take_no_room_in_the_agents_configuration() {
        // The attack: 99 ProbeSets (each about 65 KB) select no node, then
        // another namespace's ProbeSet and a ClusterProbeSet arrive.
        let mut probesets: Vec<Arc<ProbeSet>> = (0..99)
            .map(|i| {
                big(
                    &format!("spam{i:02}"),
                    "default",
                    1_000 + i,
                    "nodeSelector: {no-such-label: nowhere}\n",
                )
            })
            .collect();
        probesets.push(big("web", "shop", 5_000, ""));
        let world = World {
            probesets,
            cluster_probesets: vec![cluster("node", 6_000)],
            nodes: nodes(),
            ..World::default()
        };
        let all = world.assess_all();
        let planned = |ns: &str, name: &str| {
            all.iter()
                .find(|a| a.namespace == ns && a.name == name)
                .unwrap()
                .assessment
                .planned()
                .is_some()
        };
        assert!(planned("shop", "web"));
        assert!(planned("", "node"));
        // The ProbeSets selecting nothing are not Invalid either: they run
        // where they select, nowhere, and are rendered for no agent.
        assert!(planned("default", "spam00"));
        let config = crate::reconcile::render::agent_config(&all, 0);
        let rendered: BTreeSet<(&str, &str)> = config
            .probes
            .iter()
            .map(|p| (p.namespace.as_str(), p.probeset.as_str()))
            .collect();
        assert_eq!(rendered, BTreeSet::from([("", "node"), ("shop", "web")]));
    }

    #[test]
    fn a_namespace_over_its_share_of_the_agents_configuration_sees_only_its_own_probesets_left_out()
    {
        // Namespace default creates 14 large ProbeSets first (more than
        // the whole configuration holds); shop's ProbeSet and the
        // platform's ClusterProbeSet come later.
        let mut probesets: Vec<Arc<ProbeSet>> = (0..14)
            .map(|i| big(&format!("ps{i:02}"), "default", 1_000 + i, ""))
            .collect();
        probesets.push(big("web", "shop", 5_000, ""));
        let world = World {
            probesets,
            cluster_probesets: vec![cluster("node", 6_000)],
            nodes: nodes(),
            ..World::default()
        };
        let all = world.assess_all();
        let out: Vec<(&str, &str)> = all
            .iter()
            .filter(|a| a.assessment.planned().is_none())
            .map(|a| (a.namespace.as_str(), a.name.as_str()))
            .collect();
        assert!(!out.is_empty());
        assert!(out.iter().all(|(ns, _)| *ns == "default"), "{out:?}");
        // The newest of default's go first.
        assert!(out.contains(&("default", "ps13")), "{out:?}");
        assert!(!out.contains(&("default", "ps00")), "{out:?}");
        let Assessment::Invalid(why) = &all.iter().find(|a| a.name == "ps13").unwrap().assessment
        else {
            unreachable!()
        };
        assert!(why[0].contains(CONFIG_FULL), "{why:?}");
        assert!(why[0].contains("namespace default's fair share"), "{why:?}");
        let config = crate::reconcile::render::agent_config(&all, 0);
        let yaml = serde_yaml_ng::to_string(&config).unwrap();
        assert!(yaml.len() <= MAX_AGENT_CONFIG_BYTES, "{} bytes", yaml.len());
    }

    #[test]
    fn namespace_limits_leave_out_uprobes_and_probes_past_the_count_and_say_so() {
        let spec: ringwarden_crds::ProbeSetSpec = serde_yaml_ng::from_str(
            "probes:\n\
             \x20 - {name: a, kind: syscalls, priority: 9}\n\
             \x20 - {name: b, kind: syscalls}\n\
             \x20 - {name: c, kind: syscalls}\n\
             \x20 - {name: u, kind: uprobe, uprobe: {binary: /usr/bin/app, symbol: main}}\n",
        )
        .unwrap();
        let in_ns = |ns: &str| {
            let mut ps = ProbeSet::new("web", spec.clone());
            ps.metadata.namespace = Some(ns.into());
            Arc::new(ps)
        };
        let annotations: BTreeMap<String, String> = [
            ("ringwarden.dev/max-probes", "2"),
            ("ringwarden.dev/uprobes", "false"),
            ("ringwarden.dev/max-priority", "0"),
            ("ringwarden.dev/node-bytes", "8Mi"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let limits = crate::reconcile::controller::limits_of(&annotations).unwrap();
        assert_eq!(limits.node_bytes, Some(8 << 20));
        let world = World {
            probesets: vec![in_ns("shop"), in_ns("free")],
            namespace_limits: BTreeMap::from([("shop".to_owned(), limits.clone())]),
            ..World::default()
        };
        let all = world.assess_all();
        let shop = all.iter().find(|a| a.namespace == "shop").unwrap();
        let planned = shop.assessment.planned().unwrap();
        // a counts as priority 0 like b and c: by name, a and b run.
        assert_eq!(planned.excluded, [false, false, true, true]);
        let said = planned.limited.join("\n");
        assert!(
            said.contains("u: not run, namespace shop does not allow uprobes"),
            "{said}"
        );
        assert!(said.contains("ringwarden.dev/uprobes"), "{said}");
        assert!(
            said.contains("c: not run, namespace shop may run 2 probes"),
            "{said}"
        );
        assert!(said.contains("ringwarden.dev/max-probes"), "{said}");
        assert!(said.contains("a: priority 9 counts as 0"), "{said}");
        assert!(said.contains("ringwarden.dev/max-priority"), "{said}");
        // A namespace without annotations has the defaults.
        let free = all.iter().find(|a| a.namespace == "free").unwrap();
        assert!(free.assessment.planned().unwrap().limited.is_empty());
        // The agents get the limits, and only the probes the limits allow.
        let config = crate::reconcile::render::agent_config(&all, 0);
        assert_eq!(
            config.namespace_limits,
            BTreeMap::from([("shop".to_owned(), limits)])
        );
        let shop_probes: Vec<&str> = config
            .probes
            .iter()
            .filter(|p| p.namespace == "shop")
            .map(|p| p.spec.name.as_str())
            .collect();
        assert_eq!(shop_probes, ["a", "b"]);
        // And the status says so, naming the limit.
        let s = crate::reconcile::status::desired(
            &shop.probeset,
            &shop.assessment,
            true,
            None,
            None,
            &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(100).unwrap(),
            ),
        );
        let q = s
            .conditions
            .iter()
            .find(|c| c.type_ == "QuotaConstrained")
            .unwrap();
        assert_eq!(
            (q.status.as_str(), q.reason.as_str()),
            ("True", "NamespaceLimit")
        );
        assert!(
            q.message.contains("ringwarden.dev/max-probes"),
            "{}",
            q.message
        );
    }

    #[test]
    fn a_malformed_limit_annotation_takes_its_strictest_value() {
        let annotations: BTreeMap<String, String> = [
            ("ringwarden.dev/max-probes", "lots"),
            ("ringwarden.dev/uprobes", "yes"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let limits = crate::reconcile::controller::limits_of(&annotations).unwrap();
        assert_eq!((limits.max_probes, limits.uprobes), (0, false));
        assert_eq!(
            crate::reconcile::controller::limits_of(&BTreeMap::new()),
            None
        );
    }

    fn namespaces() -> Vec<(String, Labels)> {
        vec![
            ("shop".into(), labels(&[("team", "retail")])),
            (
                "cart".into(),
                labels(&[("team", "retail"), ("tier", "gold")]),
            ),
            ("kube-system".into(), labels(&[])),
        ]
    }

    fn selector(yaml: &str) -> LabelSelector {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn a_namespace_selector_becomes_the_sorted_names_it_matches() {
        let all = namespaces();
        let scope = |s: &str| scope_namespaces(Some(&selector(s)), &all).unwrap();
        assert_eq!(scope_namespaces(None, &all), Ok(None), "the whole node");
        assert_eq!(
            scope("{matchLabels: {team: retail}}"),
            Some(vec!["cart".into(), "shop".into()])
        );
        assert_eq!(
            scope("{matchExpressions: [{key: tier, operator: DoesNotExist}]}"),
            Some(vec!["kube-system".into(), "shop".into()])
        );
        // By name, through the label the API server sets.
        assert_eq!(
            scope("{matchLabels: {kubernetes.io/metadata.name: kube-system}}"),
            Some(vec!["kube-system".into()])
        );
        assert_eq!(
            scope("{}"),
            Some(vec!["cart".into(), "kube-system".into(), "shop".into()])
        );
        assert_eq!(
            scope("{matchLabels: {team: none}}"),
            Some(vec![]),
            "observes nothing"
        );
    }

    #[test]
    fn probesets_render_to_their_namespace_and_cluster_probesets_to_their_selection() {
        use ringwarden_crds::{ClusterProbeSet, ClusterProbeSetSpec, ProbeSetSpec};
        let spec: ProbeSetSpec =
            serde_yaml_ng::from_str("probes: [{name: sys, kind: syscalls}]").unwrap();
        let mut ps = ProbeSet::new("web", spec.clone());
        ps.metadata.namespace = Some("shop".into());
        let cluster = |name: &str, selector: Option<&str>| {
            Arc::new(ClusterProbeSet::new(
                name,
                ClusterProbeSetSpec {
                    namespace_selector: selector.map(super::tests::selector),
                    slo_namespaces: vec![],
                    probe_set: spec.clone(),
                },
            ))
        };
        let world = World {
            probesets: vec![Arc::new(ps)],
            cluster_probesets: vec![
                cluster("node", None),
                cluster("retail", Some("{matchLabels: {team: retail}}")),
                cluster(
                    "bad",
                    Some("{matchExpressions: [{key: team, operator: Like}]}"),
                ),
            ],
            namespaces: namespaces(),
            ..World::default()
        };
        let all = world.assess_all();
        let names: Vec<(&str, &str)> = all
            .iter()
            .map(|a| (a.namespace.as_str(), a.name.as_str()))
            .collect();
        assert_eq!(
            names,
            [("", "bad"), ("", "node"), ("", "retail"), ("shop", "web")]
        );
        let Assessment::Invalid(why) = &all[0].assessment else {
            panic!("a malformed namespaceSelector is Invalid")
        };
        assert!(why[0].starts_with("spec.namespaceSelector"), "{why:?}");

        let config = crate::reconcile::render::agent_config(&all, 0);
        let scopes: Vec<(&str, &str, Option<Vec<String>>)> = config
            .probes
            .iter()
            .map(|p| {
                (
                    p.namespace.as_str(),
                    p.probeset.as_str(),
                    p.namespaces.clone(),
                )
            })
            .collect();
        assert_eq!(
            scopes,
            [
                ("", "node", None),
                ("", "retail", Some(vec!["cart".into(), "shop".into()])),
                ("shop", "web", Some(vec!["shop".into()])),
            ]
        );
        assert!(config.validate().is_empty(), "{:?}", config.validate());
    }

    #[test]
    fn a_probeset_naming_node_wide_cgroups_is_invalid_and_a_cluster_probeset_is_not() {
        use ringwarden_crds::{ClusterProbeSet, ClusterProbeSetSpec, ProbeSetSpec};
        let spec: ProbeSetSpec = serde_yaml_ng::from_str(
            "probes: [{name: sys, kind: syscalls}, \
             {name: svc, kind: syscalls, filter: {cgroups: [system.slice]}}]",
        )
        .unwrap();
        let mut ps = ProbeSet::new("web", spec.clone());
        ps.metadata.namespace = Some("shop".into());
        let Assessment::Invalid(why) = crate::reconcile::assess::assess(&ps, &[]) else {
            panic!("a ProbeSet may not name cgroups")
        };
        assert_eq!(why.len(), 1, "{why:?}");
        assert!(
            why[0].starts_with("spec.probes[1].filter.cgroups: "),
            "{why:?}"
        );
        assert!(why[0].contains("ClusterProbeSet"), "{why:?}");
        let cps = ClusterProbeSet::new(
            "node",
            ClusterProbeSetSpec {
                namespace_selector: None,
                slo_namespaces: vec![],
                probe_set: spec,
            },
        );
        let a = assess_cluster(&cps, &[], &[]);
        assert!(a.assessment.planned().is_some(), "{:?}", a.assessment);
    }
}
