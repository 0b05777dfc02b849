//! The cluster as reconcile sees it: ProbeSets, node labels and SLOs, as
//! plain data copied from the watch caches. Pure.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use ringwarden_crds::ProbeSet;

use crate::{
    assess::{Assessment, assess},
    slo::SloTarget,
};

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
        all.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        all
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
}
