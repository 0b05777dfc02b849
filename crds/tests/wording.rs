//! Each kind's CRD says what holds for that kind. A ProbeSet's uprobe and
//! goRuntime binaries are paths inside its pods' containers, and it may
//! not filter by cgroups; a ClusterProbeSet's binaries are paths on the
//! node, and cgroups are how it narrows a tcpRetransmit probe. The spec is
//! one Rust type embedded in both, so this reads the generated CRDs.

mod common;

use std::collections::BTreeMap;

use common::*;
use serde_json::{Value, json};

/// `kind`'s schema nodes by their dotted path (`spec.probes[].uprobe`).
fn nodes(kind: &str) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    walk_schema(&schema(kind), String::new(), &mut |path, node| {
        out.insert(path.to_owned(), node.clone());
    });
    out
}

fn description(nodes: &BTreeMap<String, Value>, path: &str) -> String {
    nodes[path]["description"]
        .as_str()
        .unwrap_or_else(|| panic!("{path} has no description"))
        .to_owned()
}

/// The message of the rule at `path` that `value` breaks, evaluated as
/// the API server would; panics unless exactly one rule there refuses it.
fn refusal(nodes: &BTreeMap<String, Value>, path: &str, value: &Value) -> String {
    let node = &nodes[path];
    let refused: Vec<String> = node["x-kubernetes-validations"]
        .as_array()
        .unwrap_or_else(|| panic!("{path} has no rules"))
        .iter()
        .filter(|r| eval(&env(), r["rule"].as_str().unwrap(), to_cel(value, node)) != Ok(true))
        .map(|r| r["message"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(refused.len(), 1, "{path}: {refused:?}");
    refused[0].clone()
}

const BINARIES: [&str; 2] = [
    "spec.probes[].uprobe.binary",
    "spec.probes[].goRuntime.binary",
];

#[test]
fn a_probesets_binaries_are_paths_in_its_pods_containers() {
    let n = nodes("ProbeSet");
    for path in BINARIES {
        let d = description(&n, path);
        assert!(
            d.contains("inside the ProbeSet's pods' containers, not on the node"),
            "{path}: {d}"
        );
        let relative = refusal(&n, path, &json!("usr/bin/app"));
        assert!(
            relative.contains("absolute path inside the ProbeSet's pods' containers"),
            "{path}: {relative}"
        );
        let kernel = refusal(&n, path, &json!("/proc/1/exe"));
        assert!(
            kernel.contains("inside the pods' containers"),
            "{path}: {kernel}"
        );
        for text in [&relative, &kernel] {
            assert!(!text.contains("on the node"), "{path}: {text}");
        }
    }
}

#[test]
fn a_cluster_probesets_binaries_are_paths_on_the_node() {
    let n = nodes("ClusterProbeSet");
    for path in BINARIES {
        let d = description(&n, path);
        assert!(d.contains(" on the node"), "{path}: {d}");
        assert!(!d.contains("containers"), "{path}: {d}");
        let relative = refusal(&n, path, &json!("usr/bin/app"));
        assert!(
            relative.contains("absolute path on the node"),
            "{path}: {relative}"
        );
        let kernel = refusal(&n, path, &json!("/proc/1/exe"));
        assert!(kernel.contains("binary on the node"), "{path}: {kernel}");
    }
}

/// A tcpRetransmit probe with a pid filter, as the rule on
/// `spec.probes[]` sees it.
fn retransmit_with_pids() -> Value {
    json!({"name": "rtx", "kind": "tcpRetransmit", "filter": {"pids": [42]}})
}

#[test]
fn a_probeset_is_never_told_to_filter_tcp_retransmits_by_cgroups() {
    let n = nodes("ProbeSet");
    let message = refusal(&n, "spec.probes[]", &retransmit_with_pids());
    assert!(
        message.starts_with("filter: tcpRetransmit runs in softirq context"),
        "{message}"
    );
    assert!(
        message.contains("select the pods with podSelector instead"),
        "{message}"
    );
    assert!(!message.contains("filter by cgroups"), "{message}");
    let d = description(&n, "spec.probes[].filter");
    assert!(
        d.contains("`tcpRetransmit` accepts no pids or comms: narrow it with `podSelector`"),
        "{d}"
    );
    assert!(!d.contains("accepts only cgroups"), "{d}");
}

#[test]
fn a_cluster_probeset_is_told_to_filter_tcp_retransmits_by_cgroups() {
    let n = nodes("ClusterProbeSet");
    let message = refusal(&n, "spec.probes[]", &retransmit_with_pids());
    assert!(message.ends_with("filter by cgroups instead"), "{message}");
    let d = description(&n, "spec.probes[].filter");
    assert!(d.contains("`tcpRetransmit` accepts only cgroups."), "{d}");
}

#[test]
fn every_namespaced_rewording_applies_and_leaves_no_node_wording_behind() {
    let probe_set = serde_json::to_string(&schema("ProbeSet")).unwrap();
    let cluster = serde_json::to_string(&schema("ClusterProbeSet")).unwrap();
    for (cluster_text, namespaced_text) in ringwarden_crds::cel::NAMESPACED_WORDING {
        assert!(
            cluster.contains(cluster_text),
            "the ClusterProbeSet CRD no longer says {cluster_text:?}: update NAMESPACED_WORDING"
        );
        assert!(!probe_set.contains(cluster_text), "{cluster_text:?}");
        assert!(probe_set.contains(namespaced_text), "{namespaced_text:?}");
    }
}
