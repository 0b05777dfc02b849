//! Which node labels may decide who gets a ProbeSet's probes. Pure.
//!
//! A node's kubelet writes its own Node object, labels included, so a
//! compromised node can give itself any label and be handed the probes of
//! any `nodeSelector` made of such labels, and then report into their SLOs.
//! The NodeRestriction admission plugin (on by default in kubeadm, GKE, EKS
//! and AKS) forbids a kubelet to add, change or remove some labels of its
//! Node; those are set by the cluster's administrators only. With
//! [`NodeSelectorLabels::Restricted`] the operator hands probes by those
//! labels alone: a `nodeSelector` naming any other key is refused (the
//! ProbeSet is `Invalid`, naming the keys and the fix) and runs nowhere.
//!
//! [`kubelet_may_set`] is a port of `getForbiddenLabels` in Kubernetes'
//! `plugin/pkg/admission/noderestriction/admission.go` and of
//! `IsKubeletLabel` in `k8s.io/kubelet/pkg/apis/well_known_labels.go`;
//! its tests are upstream's own label cases.

use serde::{Deserialize, Serialize};

use crate::{reconcile::assess::Assessment, reconcile::world::Labels};

/// Which node labels a `nodeSelector` may name.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum NodeSelectorLabels {
    /// Any label. A node that sets its own labels can be handed any
    /// ProbeSet's probes.
    #[default]
    Any,
    /// Only labels a kubelet may not set on its own Node under the
    /// NodeRestriction admission plugin (the `node-restriction.kubernetes.io/`
    /// prefix, and `kubernetes.io` or `k8s.io` labels outside the kubelet's
    /// own), plus `kubernetes.io/os: linux` (see [`trusted`]).
    Restricted,
}

/// The kubelet-restricted label prefix: labels under it are set by the
/// cluster's administrators, never by a node itself.
pub const NODE_RESTRICTION_NAMESPACE: &str = "node-restriction.kubernetes.io";

/// Labels a kubelet sets on its own Node (`kubeletLabels` upstream).
const KUBELET_LABELS: [&str; 11] = [
    "kubernetes.io/hostname",
    "topology.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/region",
    "beta.kubernetes.io/instance-type",
    "node.kubernetes.io/instance-type",
    "kubernetes.io/os",
    "kubernetes.io/arch",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/arch",
];

/// Label namespaces a kubelet may set labels in, with their subdomains
/// (`kubeletLabelNamespaces` upstream).
const KUBELET_LABEL_NAMESPACES: [&str; 2] = ["kubelet.kubernetes.io", "node.kubernetes.io"];

/// The prefix of a label key before its `/`; empty without one.
fn namespace(key: &str) -> &str {
    key.split_once('/').map_or("", |(ns, _)| ns)
}

/// Whether `ns` is `domain` or a subdomain of it.
fn within(ns: &str, domain: &str) -> bool {
    ns == domain
        || ns
            .strip_suffix(domain)
            .is_some_and(|rest| rest.ends_with('.'))
}

/// `IsKubeletLabel`: a label the kubelet sets on its own Node.
fn is_kubelet_label(key: &str) -> bool {
    KUBELET_LABELS.contains(&key)
        || KUBELET_LABEL_NAMESPACES
            .iter()
            .any(|d| within(namespace(key), d))
}

/// `isKubernetesLabel`: a label in the `kubernetes.io` or `k8s.io`
/// namespaces, or a subdomain of them.
fn is_kubernetes_label(key: &str) -> bool {
    let ns = namespace(key);
    within(ns, "kubernetes.io") || within(ns, "k8s.io")
}

/// Whether a kubelet may add, change or remove label `key` of its own
/// Node when the NodeRestriction admission plugin is on: the opposite of
/// upstream's `getForbiddenLabels`.
pub fn kubelet_may_set(key: &str) -> bool {
    let forbidden = within(namespace(key), NODE_RESTRICTION_NAMESPACE)
        || (is_kubernetes_label(key) && !is_kubelet_label(key));
    !forbidden
}

/// Whether a `nodeSelector` entry may decide who gets probes under
/// [`NodeSelectorLabels::Restricted`]: a label no kubelet may set, or
/// `kubernetes.io/os: linux`. The agent runs on Linux only, so every node
/// that could run one honestly says `linux`: that entry keeps from a node
/// that lies about it nothing it could not have had by telling the truth.
/// Every other kubelet label (hostname, zone, instance type, arch) a node
/// sets to what it likes, the hostname included (nothing ties it to the
/// node's name), so none of them is trusted.
pub fn trusted(key: &str, value: &str) -> bool {
    !kubelet_may_set(key) || (key == "kubernetes.io/os" && value == "linux")
}

/// The `spec.nodeSelector` problems of a selector under `policy`: one
/// message naming the keys a node could set itself and the fix.
pub fn selector_problems(selector: &Labels, policy: NodeSelectorLabels) -> Vec<String> {
    if policy == NodeSelectorLabels::Any {
        return Vec::new();
    }
    let untrusted: Vec<&str> = selector
        .iter()
        .filter(|(k, v)| !trusted(k, v))
        .map(|(k, _)| k.as_str())
        .collect();
    if untrusted.is_empty() {
        return Vec::new();
    }
    vec![format!(
        "spec.nodeSelector: {} can be set by a node itself, so a compromised node could take \
         these probes; this cluster hands probes only by labels nodes cannot set \
         (agent.nodeSelectorLabels: restricted). Label the nodes with \
         {NODE_RESTRICTION_NAMESPACE}/<key> (kubectl label node <node> \
         {NODE_RESTRICTION_NAMESPACE}/<key>=<value>; the NodeRestriction admission plugin keeps \
         kubelets from setting it) and select by that",
        untrusted.join(", ")
    )]
}

/// `assessment`, made `Invalid` if `selector` names labels `policy` does
/// not trust; the selector's problems come first.
pub fn restrict(
    assessment: Assessment,
    selector: &Labels,
    policy: NodeSelectorLabels,
) -> Assessment {
    let problems = selector_problems(selector, policy);
    if problems.is_empty() {
        return assessment;
    }
    match assessment {
        Assessment::Invalid(more) => {
            Assessment::Invalid(problems.into_iter().chain(more).collect())
        }
        Assessment::Planned(_) => Assessment::Invalid(problems),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Upstream's `setAllowedUpdateLabels` (admission_test.go): labels a
    /// kubelet may set on update, so a node may claim them.
    const UPSTREAM_ALLOWED: &[&str] = &[
        // non-kube labels
        "foo",
        "example.com/foo",
        // kubelet labels
        "kubernetes.io/hostname",
        "failure-domain.beta.kubernetes.io/zone",
        "failure-domain.beta.kubernetes.io/region",
        "topology.kubernetes.io/zone",
        "topology.kubernetes.io/region",
        "beta.kubernetes.io/instance-type",
        "node.kubernetes.io/instance-type",
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/arch",
        "kubernetes.io/os",
        "kubernetes.io/arch",
        // kubelet label prefixes
        "kubelet.kubernetes.io/foo",
        "foo.kubelet.kubernetes.io/foo",
        "node.kubernetes.io/foo",
        "foo.node.kubernetes.io/foo",
    ];

    /// Upstream's `setForbiddenUpdateLabels` and `setForbiddenCreateLabels`.
    const UPSTREAM_FORBIDDEN: &[&str] = &[
        "node-restriction.kubernetes.io/foo",
        "foo.node-restriction.kubernetes.io/foo",
        "other.kubernetes.io/foo",
        "other.k8s.io/foo",
    ];

    #[test]
    fn the_kubelet_label_rule_agrees_with_upstreams_own_cases() {
        for key in UPSTREAM_ALLOWED {
            assert!(
                kubelet_may_set(key),
                "{key}: upstream lets a kubelet set it"
            );
        }
        for key in UPSTREAM_FORBIDDEN {
            assert!(
                !kubelet_may_set(key),
                "{key}: upstream forbids it to kubelets"
            );
        }
        // Upstream also sets every kubelet label and `<ns>/foo`,
        // `foo.<ns>/foo` for every kubelet namespace.
        for key in KUBELET_LABELS {
            assert!(kubelet_may_set(key), "{key}");
        }
        for ns in KUBELET_LABEL_NAMESPACES {
            assert!(kubelet_may_set(&format!("{ns}/foo")));
            assert!(kubelet_may_set(&format!("foo.{ns}/foo")));
        }
    }

    #[test]
    fn lookalike_domains_are_not_mistaken_for_kubernetes_ones() {
        // Only a whole domain component counts: `evilkubernetes.io` is any
        // other domain, so a kubelet may set it.
        assert!(kubelet_may_set("evilkubernetes.io/foo"));
        assert!(kubelet_may_set(
            "node-restriction.kubernetes.io.example.com/foo"
        ));
        assert!(kubelet_may_set("xnode.kubernetes.io.evil/foo"));
        // A kubelet namespace that is a subdomain of node-restriction's is
        // still forbidden: the first rule wins.
        assert!(!kubelet_may_set("node.node-restriction.kubernetes.io/foo"));
        // Administrators' roles are kubernetes.io labels outside the
        // kubelet's own.
        assert!(!kubelet_may_set("node-role.kubernetes.io/control-plane"));
    }

    fn selector(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_selector_on_labels_a_node_sets_itself_is_refused_when_restricted() {
        let pool = selector(&[
            ("pool", "web"),
            ("node-restriction.kubernetes.io/pool", "web"),
        ]);
        assert!(selector_problems(&pool, NodeSelectorLabels::Any).is_empty());
        let problems = selector_problems(&pool, NodeSelectorLabels::Restricted);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].starts_with("spec.nodeSelector: pool can be set by a node itself"));
        assert!(problems[0].contains("node-restriction.kubernetes.io/<key>"));
        for (k, v) in [
            ("kubernetes.io/hostname", "node-a"),
            ("kubernetes.io/arch", "arm64"),
            ("kubernetes.io/os", "windows"),
            ("topology.kubernetes.io/zone", "eu-1a"),
            ("node.kubernetes.io/instance-type", "m5.large"),
        ] {
            assert!(
                !selector_problems(&selector(&[(k, v)]), NodeSelectorLabels::Restricted).is_empty(),
                "{k}={v}"
            );
        }
    }

    #[test]
    fn restricted_selectors_on_labels_only_administrators_set_are_accepted() {
        let ok = selector(&[
            ("node-restriction.kubernetes.io/pool", "web"),
            ("team.node-restriction.kubernetes.io/owner", "shop"),
            ("node-role.kubernetes.io/worker", ""),
            ("kubernetes.io/os", "linux"),
        ]);
        assert!(selector_problems(&ok, NodeSelectorLabels::Restricted).is_empty());
        assert!(selector_problems(&Labels::new(), NodeSelectorLabels::Restricted).is_empty());
    }
}
