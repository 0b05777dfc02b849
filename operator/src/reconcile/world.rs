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
use ringwarden_crds::{ClusterProbeSet, ProbeSet};

use crate::{
    assess::{Assessment, assess, config_bytes},
    node_labels::{NodeSelectorLabels, restrict},
    slo::SloTarget,
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
        crowd_out(&mut all);
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
        Ok(scope) if selector_errors.is_empty() => {
            (scope, crate::assess::assess_cluster_probes(&ps, c, slos))
        }
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

/// Why a ProbeSet was left out of a full agent configuration.
pub const CONFIG_FULL: &str = "the agents' configuration is full";

/// Leaves out, as Invalid, the ProbeSets that would take the agents'
/// configuration past [`MAX_AGENT_CONFIG_BYTES`]: the oldest keep running
/// (by creation time, then namespace and name), so a new ProbeSet never
/// stops one that works.
fn crowd_out(all: &mut [Assessed]) {
    all.sort_by(|a, b| {
        let created = |x: &Assessed| x.probeset.metadata.creation_timestamp.clone();
        (created(a), &a.namespace, &a.name).cmp(&(created(b), &b.namespace, &b.name))
    });
    let mut used = 0usize;
    for a in all.iter_mut() {
        let Some(planned) = a.assessment.planned() else {
            continue;
        };
        // Each probe carries its scope's namespace names too.
        let scope: usize = a.namespaces.iter().flatten().map(|n| n.len() + 4).sum();
        let bytes =
            config_bytes(&a.probeset, &planned.thresholds) + scope * a.probeset.spec.probes.len();
        if used + bytes > MAX_AGENT_CONFIG_BYTES {
            a.assessment = Assessment::Invalid(vec![format!(
                "spec.probes: {CONFIG_FULL}: this ProbeSet's {bytes} bytes would take it past \
                 {MAX_AGENT_CONFIG_BYTES} (a ConfigMap holds 1 MiB), so it runs nowhere while \
                 the ProbeSets created before it run. Shrink or remove ProbeSets (their filters \
                 and selectors), or merge small ones"
            )]);
        } else {
            used += bytes;
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
            let config = crate::render::agent_config(&world(policy).assess_all(), 0);
            let mut names: Vec<String> = crate::handed::selected(&config, node)
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
            (50_000..crate::assess::MAX_CONFIG_BYTES_PER_PROBESET).contains(&bytes),
            "{bytes}"
        );
        let fits = MAX_AGENT_CONFIG_BYTES / bytes;
        let probesets: Vec<Arc<ProbeSet>> = (0..fits + 2)
            .map(|i| {
                let mut ps = ProbeSet::new(&format!("ps{i:02}"), spec.clone());
                ps.metadata.namespace = Some(format!("team-{}", i % 3));
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
        let config = crate::render::agent_config(&all, 0);
        let yaml = serde_yaml_ng::to_string(&config).unwrap();
        assert!(yaml.len() <= MAX_AGENT_CONFIG_BYTES, "{} bytes", yaml.len());
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

        let config = crate::render::agent_config(&all, 0);
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
        let Assessment::Invalid(why) = crate::assess::assess(&ps, &[]) else {
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
