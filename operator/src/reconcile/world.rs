//! The cluster as reconcile sees it: ProbeSets, node labels and SLOs, as
//! plain data copied from the watch caches. Pure.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use ringwarden_crds::ProbeSet;

use crate::{
    assess::{Assessment, assess, config_bytes},
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
    pub nodes: Vec<Labels>,
    pub slos: Vec<SloTarget>,
}

/// A ProbeSet with its outcome.
#[derive(Clone, Debug)]
pub struct Assessed {
    pub namespace: String,
    pub name: String,
    pub probeset: Arc<ProbeSet>,
    pub assessment: Assessment,
}

impl World {
    /// Every ProbeSet not being deleted, assessed, sorted by namespace and
    /// name so that everything rendered from them is deterministic.
    pub fn assess_all(&self) -> Vec<Assessed> {
        let mut all: Vec<Assessed> = self
            .probesets
            .iter()
            .filter(|ps| ps.metadata.deletion_timestamp.is_none())
            .map(|ps| Assessed {
                namespace: ps.metadata.namespace.clone().unwrap_or_default(),
                name: ps.metadata.name.clone().unwrap_or_default(),
                probeset: Arc::clone(ps),
                assessment: assess(ps, &self.slos),
            })
            .collect();
        crowd_out(&mut all);
        all.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        all
    }
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
        let bytes = config_bytes(&a.probeset, &planned.thresholds);
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
pub fn node_classes(selectors: &[&Labels], nodes: &[Labels]) -> BTreeSet<Vec<usize>> {
    nodes
        .iter()
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
}
