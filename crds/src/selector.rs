//! Label syntax for `nodeSelector` and `podSelector`: the checks behind
//! `validate()`, the node agent's refusal of a selector it cannot apply
//! exactly, and the bounded schemas the CEL rules of [`crate::cel`] see.
//! A selector the agent cannot read never widens to more pods: it is
//! refused at admission, by standalone mode and by the agent. No IO.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::json;

use crate::cel;

/// Longest label-key prefix (a DNS subdomain).
pub const MAX_LABEL_PREFIX_LEN: usize = 253;
/// Longest label name, and longest label value.
pub const MAX_LABEL_NAME_LEN: usize = 63;
/// Longest label key: prefix, '/', name.
pub const MAX_LABEL_KEY_LEN: usize = MAX_LABEL_PREFIX_LEN + 1 + MAX_LABEL_NAME_LEN;
/// Most labels in `nodeSelector` or `podSelector.matchLabels`.
pub const MAX_SELECTOR_LABELS: usize = 32;
/// Most `podSelector.matchExpressions`.
pub const MAX_SELECTOR_EXPRESSIONS: usize = 16;
/// Most values of one expression.
pub const MAX_SELECTOR_VALUES: usize = 64;
/// The operators of a label selector requirement.
pub const OPERATORS: [&str; 4] = ["In", "NotIn", "Exists", "DoesNotExist"];

/// A label name: 1-63 characters (the bound is in the regex, so CEL needs
/// no size check), alphanumeric at both ends.
macro_rules! label_name {
    () => {
        "[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
    };
}

/// A label key: an optional DNS-subdomain prefix and '/', then a name. The
/// prefix's 253-character bound is a separate size check.
pub const LABEL_KEY_REGEX: &str = concat!(
    "^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?",
    label_name!(),
    "$"
);
/// A label value: empty, or a label name.
pub const LABEL_VALUE_REGEX: &str = concat!("^(", label_name!(), ")?$");

fn is_name(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=MAX_LABEL_NAME_LEN).contains(&b.len())
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn is_dns_subdomain(s: &str) -> bool {
    let part = |p: &str| {
        let b = p.as_bytes();
        !b.is_empty()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    };
    (1..=MAX_LABEL_PREFIX_LEN).contains(&s.len()) && s.split('.').all(part)
}

/// Why `key` is not a label key, if it is not.
pub fn label_key_problem(key: &str) -> Option<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let ok = prefix.is_none_or(is_dns_subdomain) && is_name(name);
    (!ok).then(|| {
        format!(
            "{key:?} is not a label key; use an optional DNS subdomain prefix of at most \
             {MAX_LABEL_PREFIX_LEN} characters and '/', then a name of 1 to \
             {MAX_LABEL_NAME_LEN} letters, digits, '-', '_' and '.', starting and ending with \
             a letter or digit, e.g. app or kubernetes.io/os"
        )
    })
}

/// Why `value` is not a label value, if it is not.
pub fn label_value_problem(value: &str) -> Option<String> {
    (!value.is_empty() && !is_name(value)).then(|| {
        format!(
            "{value:?} is not a label value; use at most {MAX_LABEL_NAME_LEN} letters, digits, \
             '-', '_' and '.', starting and ending with a letter or digit, or nothing"
        )
    })
}

/// Problems of a label map (`nodeSelector`, `matchLabels`), as (field
/// suffix like `[app]`, message).
pub fn label_map_problems(labels: &BTreeMap<String, String>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if labels.len() > MAX_SELECTOR_LABELS {
        out.push((
            String::new(),
            format!(
                "{} labels is too many; use at most {MAX_SELECTOR_LABELS}",
                labels.len()
            ),
        ));
    }
    for (k, v) in labels {
        if let Some(p) = label_key_problem(k) {
            out.push((format!("[{k}]"), p));
        } else if let Some(p) = label_value_problem(v) {
            out.push((format!("[{k}]"), p));
        }
    }
    out
}

/// Problems of a pod selector, as (field suffix like
/// `.matchExpressions[0].operator`, message). An empty list means every
/// requirement is one the agent applies exactly.
pub fn label_selector_problems(s: &LabelSelector) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = s
        .match_labels
        .iter()
        .flat_map(label_map_problems)
        .map(|(f, m)| (format!(".matchLabels{f}"), m))
        .collect();
    let expressions = s.match_expressions.as_deref().unwrap_or_default();
    if expressions.len() > MAX_SELECTOR_EXPRESSIONS {
        out.push((
            ".matchExpressions".into(),
            format!(
                "{} expressions is too many; use at most {MAX_SELECTOR_EXPRESSIONS}",
                expressions.len()
            ),
        ));
    }
    for (i, e) in expressions.iter().enumerate() {
        let at = format!(".matchExpressions[{i}]");
        if let Some(p) = label_key_problem(&e.key) {
            out.push((format!("{at}.key"), p));
        }
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => out.push((
                format!("{at}.values"),
                format!("operator {} needs at least one value", e.operator),
            )),
            "Exists" | "DoesNotExist" if !values.is_empty() => out.push((
                format!("{at}.values"),
                format!("operator {} takes no values; remove them", e.operator),
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => out.push((
                format!("{at}.operator"),
                format!("{other:?} is not an operator; use In, NotIn, Exists or DoesNotExist"),
            )),
        }
        if values.len() > MAX_SELECTOR_VALUES {
            out.push((
                format!("{at}.values"),
                format!(
                    "{} values is too many; use at most {MAX_SELECTOR_VALUES}",
                    values.len()
                ),
            ));
        }
        for (j, v) in values.iter().enumerate() {
            if let Some(p) = label_value_problem(v) {
                out.push((format!("{at}.values[{j}]"), p));
            }
        }
    }
    out
}

fn label_map_schema(rules: Vec<cel::Rule>) -> serde_json::Value {
    json!({
        "type": "object",
        "maxProperties": MAX_SELECTOR_LABELS,
        "additionalProperties": {"type": "string", "maxLength": MAX_LABEL_NAME_LEN},
        "x-kubernetes-validations": rules,
    })
}

/// Schema of `spec.nodeSelector`: a bounded label map whose keys and
/// values CEL checks.
pub fn node_selector_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    label_map_schema(cel::label_map("nodeSelector"))
        .try_into()
        .expect("a schema object")
}

/// Schema of `spec.podSelector`: Kubernetes' LabelSelector, with bounds on
/// every map, list and string, and CEL rules for label syntax and
/// operators.
pub fn pod_selector_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    label_selector_schema("pod")
}

/// Schema of a ClusterProbeSet's `spec.namespaceSelector`: the same
/// bounded LabelSelector as `podSelector`, on Namespace objects.
pub fn namespace_selector_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    label_selector_schema("namespace")
}

/// A bounded LabelSelector on objects of kind `object`.
fn label_selector_schema(object: &str) -> schemars::Schema {
    let mut match_labels = label_map_schema(cel::label_map("matchLabels"));
    match_labels["description"] = json!(format!(
        "Labels a {object} must carry, all of them: a map of label keys to values, at most 32."
    ));
    json!({
        "type": "object",
        "nullable": true,
        "properties": {
            "matchLabels": match_labels,
            "matchExpressions": {
                "description": format!("Requirements a {object}'s labels must meet, all of them \
                    (at most 16): a label `key`, an `operator` (In, NotIn, Exists or \
                    DoesNotExist) and, for In and NotIn, the `values` (at most 64)."),
                "type": "array",
                "maxItems": MAX_SELECTOR_EXPRESSIONS,
                "items": {
                    "description": "One requirement: the label `key`, the `operator` and the \
                        `values` it compares with.",
                    "type": "object",
                    "required": ["key", "operator"],
                    "properties": {
                        "key": {
                            "description": "The label key the requirement applies to, e.g. app.",
                            "type": "string",
                            "maxLength": MAX_LABEL_KEY_LEN,
                        },
                        "operator": {
                            "description": "In, NotIn, Exists or DoesNotExist.",
                            "type": "string",
                            "maxLength": 12,
                        },
                        "values": {
                            "description": "For In and NotIn, at least one label value; \
                                none for Exists and DoesNotExist.",
                            "type": "array",
                            "maxItems": MAX_SELECTOR_VALUES,
                            "items": {"type": "string", "maxLength": MAX_LABEL_NAME_LEN},
                        },
                    },
                    "x-kubernetes-validations": cel::selector_requirement(),
                },
            },
        },
    })
    .try_into()
    .expect("a schema object")
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    #[test]
    fn label_keys_follow_kubernetes_syntax() {
        for good in [
            "app",
            "kubernetes.io/os",
            "node-role.kubernetes.io/worker",
            "A.b_c-9",
            &"a".repeat(63),
            &format!(
                "{}/x",
                [
                    "a".repeat(63),
                    "b".repeat(63),
                    "c".repeat(63),
                    "d".repeat(61)
                ]
                .join(".")
            ),
        ] {
            assert_eq!(label_key_problem(good), None, "{good}");
        }
        for bad in [
            "",
            "/app",
            "app/",
            "-app",
            "app-",
            "a b",
            "Example.com/app",
            "a/b/c",
            &"a".repeat(64),
            &format!(
                "{}/x",
                [
                    "a".repeat(63),
                    "b".repeat(63),
                    "c".repeat(63),
                    "d".repeat(62)
                ]
                .join(".")
            ),
        ] {
            assert!(label_key_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn label_values_may_be_empty_but_not_malformed() {
        assert_eq!(label_value_problem(""), None);
        assert_eq!(label_value_problem("v1.2_3-x"), None);
        for bad in ["-x", "x-", "a b", "a/b", &"v".repeat(64)] {
            assert!(label_value_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn selector_problems_name_the_requirement_and_its_field() {
        let r = |key: &str, op: &str, values: &[&str]| LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        };
        let s = LabelSelector {
            match_labels: Some([("bad key".to_string(), "web".to_string())].into()),
            match_expressions: Some(vec![
                r("app", "Like", &["web"]),
                r("app", "In", &[]),
                r("app", "Exists", &["x"]),
                r("app", "NotIn", &["ok", "not ok"]),
            ]),
        };
        let fields: Vec<String> = label_selector_problems(&s)
            .into_iter()
            .map(|p| p.0)
            .collect();
        assert_eq!(
            fields,
            [
                ".matchLabels[bad key]",
                ".matchExpressions[0].operator",
                ".matchExpressions[1].values",
                ".matchExpressions[2].values",
                ".matchExpressions[3].values[1]",
            ]
        );
        assert!(label_selector_problems(&LabelSelector::default()).is_empty());
    }
}
