//! The label syntax ringwarden checks (`selector.rs` in Rust, and the CEL
//! rules on `nodeSelector` and `podSelector.matchLabels`), against the
//! cases of apimachinery's own tests (`pkg/util/validation/
//! validation_test.go`: `TestIsQualifiedName`, `TestIsValidLabelValue`),
//! which decide what a node affinity or label selector may carry.

mod common;

use ringwarden_crds::selector::{label_key_problem, label_value_problem};
use serde_json::json;

fn good_keys() -> Vec<String> {
    let mut v: Vec<String> = [
        "simple",
        "now-with-dashes",
        "1-starts-with-num",
        "1234",
        "simple/simple",
        "now-with-dashes/simple",
        "now-with-dashes/now-with-dashes",
        "now.with.dots/simple",
        "now-with.dashes-and.dots/simple",
        "1-num.2-num/3-num",
        "1234/5678",
        "1.2.3.4/5678",
        "Uppercase_Is_OK_123",
        "example.com/Uppercase_Is_OK_123",
        "requests.storage-foo",
    ]
    .map(String::from)
    .into();
    v.push("a".repeat(63));
    v.push(format!("{}/{}", "a".repeat(253), "b".repeat(63)));
    v
}

fn bad_keys() -> Vec<String> {
    let mut v: Vec<String> = [
        "nospecialchars%^=@",
        "cantendwithadash-",
        "-cantstartwithadash-",
        "only/one/slash",
        "Example.com/abc",
        "example_com/abc",
        "example.com/",
        "/simple",
    ]
    .map(String::from)
    .into();
    v.push("a".repeat(64));
    v.push(format!("{}/abc", "a".repeat(254)));
    v
}

fn good_values() -> Vec<String> {
    let mut v: Vec<String> = [
        "simple",
        "now-with-dashes",
        "1-starts-with-num",
        "end-with-num-1",
        "1234",
        "",
    ]
    .map(String::from)
    .into();
    v.push("a".repeat(63));
    v
}

fn bad_values() -> Vec<String> {
    let mut v: Vec<String> = [
        "nospecialchars%^=@",
        "Tama-nui-te-rā.is.Māori.sun",
        "\\backslashes\\are\\bad",
        "-starts-with-dash",
        "ends-with-dash-",
        ".starts.with.dot",
        "ends.with.dot.",
    ]
    .map(String::from)
    .into();
    v.push("a".repeat(64));
    v
}

/// Whether the CRD's CEL rules admit a ProbeSet with this node selector.
fn cel_admits(key: &str, value: &str) -> bool {
    let object = json!({
        "apiVersion": ringwarden_crds::API_VERSION, "kind": "ProbeSet",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"nodeSelector": {key: value}, "probes": [{"name": "sys", "kind": "syscalls"}]}
    });
    common::evaluate("ProbeSet", &object)
        .iter()
        .filter(|o| o.at.starts_with("spec.nodeSelector"))
        .all(|o| o.admits())
}

#[test]
fn label_keys_are_judged_as_apimachinery_judges_qualified_names() {
    for k in good_keys() {
        assert_eq!(label_key_problem(&k), None, "{k:?}");
        assert!(cel_admits(&k, "x"), "CEL refuses {k:?}");
    }
    for k in bad_keys() {
        assert!(label_key_problem(&k).is_some(), "{k:?} passed");
        assert!(!cel_admits(&k, "x"), "CEL admits {k:?}");
    }
}

#[test]
fn label_values_are_judged_as_apimachinery_judges_them() {
    for v in good_values() {
        assert_eq!(label_value_problem(&v), None, "{v:?}");
        assert!(cel_admits("pool", &v), "CEL refuses {v:?}");
    }
    for v in bad_values() {
        assert!(label_value_problem(&v).is_some(), "{v:?} passed");
        assert!(!cel_admits("pool", &v), "CEL admits {v:?}");
    }
}
