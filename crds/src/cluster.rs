//! The `ClusterProbeSet` custom resource: a ProbeSet for the whole node.
//!
//! A namespaced ProbeSet observes only the pods of its namespace. Host
//! processes and other tenants' pods are a cluster administrator's to
//! observe, with a cluster-scoped object that RBAC grants apart.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::probeset::{FieldError, ProbeSet, ProbeSetSpec, ProbeSetStatus, is_dns_label};

/// Declares eBPF latency probes for whole nodes: a ProbeSet's spec plus a
/// `namespaceSelector`. Without one it observes every process of the
/// selected nodes, host processes included; with one, only the pods of the
/// matching namespaces. Cluster-scoped, so only those RBAC lets create
/// cluster-wide objects (cluster administrators) can.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "ringwarden.dev",
    version = "v1alpha1",
    kind = "ClusterProbeSet",
    status = "ProbeSetStatus",
    shortname = "cps",
    doc = "Declares eBPF latency probes for whole nodes (host processes and every namespace), or for the pods of the namespaces a namespaceSelector matches.",
    category = "ringwarden",
    printcolumn = r#"{"name":"Ready","type":"string","description":"Nodes running the probes / nodes selected","jsonPath":".status.ready"}"#,
    printcolumn = r#"{"name":"Status","type":"string","description":"Ready, Reconciling, NoMatchingNodes, Degraded: <reason> or Invalid: <field>","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Events/s","type":"number","description":"Events per second across nodes","jsonPath":".status.eventsPerSecond"}"#,
    printcolumn = r#"{"name":"Drop %","type":"number","description":"Exported events dropped by ring buffers","jsonPath":".status.dropPercent"}"#,
    printcolumn = r#"{"name":"Plan Drop %","type":"number","description":"Exported events the quota plan predicts the ring buffers drop at the declared peak rates","jsonPath":".status.predictedDropPercent"}"#,
    printcolumn = r#"{"name":"Ringbuf","type":"string","description":"Ring-buffer memory per node","jsonPath":".status.ringBuffer"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterProbeSetSpec {
    /// Namespaces whose pods are observed, as a label selector on the
    /// Namespace objects (`matchLabels`, `matchExpressions` with In, NotIn,
    /// Exists or DoesNotExist; `kubernetes.io/metadata.name` selects by
    /// name). `{}` selects the pods of every namespace, but no host
    /// process. Absent: every process on the node, host processes
    /// included. `podSelector` narrows either further.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::selector::namespace_selector_schema")]
    pub namespace_selector: Option<LabelSelector>,

    /// Namespaces whose SLOs may measure this ClusterProbeSet's probes, by
    /// name (at most 64), e.g. `[platform-slos]`. Absent or empty: none
    /// may, since an SLO's status shows what the ClusterProbeSet observes
    /// to whoever may read the SLO, and its threshold takes one of the
    /// kernel's few slots on the probe. An SLO from any other namespace is
    /// refused (`ProbeNotFound`) and changes nothing. The kernel's
    /// threshold slots go to the SLOs of the namespaces listed first, then
    /// by SLO name. SLOs never change a ClusterProbeSet's plan: its own
    /// `maxDropRate` does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_SLO_NAMESPACES), inner(length(min = 1, max = 63)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub slo_namespaces: Vec<String>,

    /// Everything a ProbeSet's spec holds.
    #[serde(flatten)]
    pub probe_set: ProbeSetSpec,
}

/// Most namespaces `sloNamespaces` may list.
pub const MAX_SLO_NAMESPACES: usize = 64;

impl ClusterProbeSetSpec {
    /// The ProbeSet checks, the namespace selector's and `sloNamespaces`'.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = self.probe_set.validate();
        errors.extend(slo_namespace_problems(&self.slo_namespaces));
        if let Some(s) = &self.namespace_selector {
            for (field, message) in crate::selector::label_selector_problems(s) {
                errors.push(FieldError {
                    field: format!("spec.namespaceSelector{field}"),
                    message,
                });
            }
        }
        errors
    }
}

/// What is wrong with a `spec.sloNamespaces` list.
pub fn slo_namespace_problems(slo_namespaces: &[String]) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if slo_namespaces.len() > MAX_SLO_NAMESPACES {
        errors.push(FieldError {
            field: "spec.sloNamespaces".into(),
            message: format!(
                "{} namespaces is too many; list at most {MAX_SLO_NAMESPACES}",
                slo_namespaces.len()
            ),
        });
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, n) in slo_namespaces.iter().enumerate() {
        if !is_dns_label(n) {
            errors.push(FieldError {
                field: format!("spec.sloNamespaces[{i}]"),
                message: format!(
                    "{n:?} is not a namespace name; use the metadata.name of a Namespace, \
                     e.g. platform-slos"
                ),
            });
        } else if !seen.insert(n.as_str()) {
            errors.push(FieldError {
                field: format!("spec.sloNamespaces[{i}]"),
                message: format!("{n:?} is listed twice; remove the repeat"),
            });
        }
    }
    errors
}

impl ClusterProbeSet {
    /// Whether SLOs in `namespace` may measure this ClusterProbeSet: its
    /// `spec.sloNamespaces` lists it.
    pub fn admits_slos_from(&self, namespace: &str) -> bool {
        self.slo_rank(namespace).is_some()
    }

    /// Where `namespace` stands in `spec.sloNamespaces` (0 first): the
    /// kernel's threshold slots go to the SLOs of lower ranks first.
    /// `None` when its SLOs may not measure this ClusterProbeSet.
    pub fn slo_rank(&self, namespace: &str) -> Option<usize> {
        self.spec.slo_namespaces.iter().position(|n| n == namespace)
    }

    /// The same probes as a ProbeSet without a namespace, which planning
    /// and rendering take like any other.
    pub fn as_probeset(&self) -> ProbeSet {
        let mut metadata = self.metadata.clone();
        metadata.namespace = None;
        ProbeSet {
            metadata,
            spec: self.spec.probe_set.clone(),
            status: self.status.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_probeset_is_a_probeset_spec_with_a_namespace_selector() {
        let spec: ClusterProbeSetSpec = serde_yaml_ng::from_str(
            "namespaceSelector: {matchLabels: {team: shop}}\n\
             probes: [{name: sys, kind: syscalls}]\n",
        )
        .unwrap();
        assert_eq!(spec.probe_set.probes[0].name, "sys");
        assert!(spec.validate().is_empty());
        let cps = ClusterProbeSet::new("node-wide", spec);
        let ps = cps.as_probeset();
        assert_eq!(ps.metadata.namespace, None);
        assert_eq!(ps.spec, cps.spec.probe_set);

        let bad: ClusterProbeSetSpec = serde_yaml_ng::from_str(
            "namespaceSelector: {matchExpressions: [{key: team, operator: Matches, values: [x]}]}\n\
             probes: [{name: sys, kind: syscalls}]\n",
        )
        .unwrap();
        let errors = bad.validate();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0]
                .field
                .starts_with("spec.namespaceSelector.matchExpressions[0]"),
            "{errors:?}"
        );
    }
}
