//! The CRDs are what an API server accepts: the committed YAML is exactly
//! what the types generate, the schemas are structural (Kubernetes'
//! rules, checked here node by node, and the official OpenAPI schemas,
//! checked by `kubernetes-validate`), CEL rules stay within the cost
//! budget's preconditions, and defaults and printer columns fit the schema.

mod common;

use std::process::Command;

use serde_json::{Value, json};

#[test]
fn committed_crds_match_the_types() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ringwarden.dev_crds.yaml");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == ringwarden_crds::crd_yaml(),
        "{} is out of date with the types in crds/src; run `make crds` and commit the result",
        path.display()
    );
}

/// The keywords of `JSONSchemaProps` a CRD may use. Left out, because the
/// API server refuses them in a structural schema: `$ref`, `$schema`,
/// `definitions`, `dependencies`, `additionalItems`, `patternProperties`, `id`.
const ALLOWED: &[&str] = &[
    "additionalProperties",
    "allOf",
    "anyOf",
    "default",
    "description",
    "enum",
    "example",
    "exclusiveMaximum",
    "exclusiveMinimum",
    "externalDocs",
    "format",
    "items",
    "maxItems",
    "maxLength",
    "maxProperties",
    "maximum",
    "minItems",
    "minLength",
    "minProperties",
    "minimum",
    "multipleOf",
    "not",
    "nullable",
    "oneOf",
    "pattern",
    "properties",
    "required",
    "title",
    "type",
    "uniqueItems",
    "x-kubernetes-embedded-resource",
    "x-kubernetes-int-or-string",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-list-type",
    "x-kubernetes-map-type",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-validations",
];

const REASONS: &[&str] = &[
    "FieldValueInvalid",
    "FieldValueForbidden",
    "FieldValueRequired",
    "FieldValueDuplicate",
];

/// Structural-schema problems of one node (not of its children).
fn node_problems(node: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(object) = node.as_object() else {
        return vec!["is not a schema object".into()];
    };
    for key in object.keys() {
        if !ALLOWED.contains(&key.as_str()) {
            problems.push(format!("uses {key:?}, which a structural schema forbids"));
        }
    }
    let int_or_string = node["x-kubernetes-int-or-string"] == json!(true);
    let preserve = &node["x-kubernetes-preserve-unknown-fields"];
    if !preserve.is_null() && preserve != &json!(true) {
        problems.push("x-kubernetes-preserve-unknown-fields must be true or absent".into());
    }
    let ty = node["type"].as_str();
    match ty {
        Some("object" | "array" | "string" | "integer" | "number" | "boolean") => {}
        None if int_or_string || preserve == &json!(true) => {}
        other => problems.push(format!("has type {other:?}; every node needs a type")),
    }
    if node["uniqueItems"] == json!(true) {
        problems.push(
            "sets uniqueItems, which Kubernetes refuses; use x-kubernetes-list-type: set".into(),
        );
    }
    if (ty == Some("array")) != node.get("items").is_some() {
        problems.push("items must be given exactly for arrays".into());
    }
    if node.get("items").is_some_and(|items| !items.is_object()) {
        problems.push("items must be one schema, not a tuple".into());
    }
    let has_properties =
        node.get("properties").is_some() || node.get("additionalProperties").is_some();
    if has_properties && ty != Some("object") {
        problems.push("properties belong to objects".into());
    }
    if node.get("properties").is_some() && node.get("additionalProperties").is_some() {
        problems.push("properties and additionalProperties exclude each other".into());
    }
    for junctor in ["allOf", "anyOf", "oneOf", "not"] {
        let branches: Vec<&Value> = match &node[junctor] {
            Value::Array(branches) => branches.iter().collect(),
            Value::Null => continue,
            one => vec![one],
        };
        for branch in branches {
            for key in [
                "type",
                "description",
                "default",
                "nullable",
                "additionalProperties",
                "x-kubernetes-validations",
            ] {
                if branch.get(key).is_some() {
                    problems.push(format!(
                        "{junctor} sets {key:?}, which only the node itself may"
                    ));
                }
            }
        }
    }
    if let Some(values) = node["enum"].as_array() {
        for v in values {
            let fits = match ty {
                Some("string") => v.is_string(),
                Some("integer") => v.is_i64() || v.is_u64(),
                Some("number") => v.is_number(),
                _ => true,
            };
            let allowed_null = v.is_null() && node["nullable"] == json!(true);
            if !(fits || allowed_null) {
                problems.push(format!("enum value {v} is not a {ty:?}"));
            }
        }
    }
    match node["x-kubernetes-list-type"].as_str() {
        None | Some("atomic") => {}
        Some("set") => {
            if matches!(node["items"]["type"].as_str(), Some("object" | "array")) {
                problems.push("a set needs scalar items".into());
            }
        }
        Some("map") => {
            let keys = node["x-kubernetes-list-map-keys"].as_array();
            if node["items"]["type"] != "object" || keys.is_none_or(|k| k.is_empty()) {
                problems
                    .push("a map list needs object items and x-kubernetes-list-map-keys".into());
            }
            for key in keys.into_iter().flatten() {
                let key = key.as_str().unwrap_or_default();
                let required = node["items"]["required"]
                    .as_array()
                    .is_some_and(|r| r.contains(&json!(key)));
                let property = &node["items"]["properties"][key];
                if !(required || property.get("default").is_some())
                    || matches!(property["type"].as_str(), Some("object" | "array") | None)
                {
                    problems.push(format!(
                        "map key {key:?} must be a required (or defaulted) scalar"
                    ));
                }
            }
        }
        Some(other) => problems.push(format!("unknown x-kubernetes-list-type {other:?}")),
    }
    for entry in node["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let rule = entry["rule"].as_str().unwrap_or_default();
        let message = entry["message"].as_str().unwrap_or_default();
        if rule.trim().is_empty() || message.trim().is_empty() || message.contains('\n') {
            problems.push(format!("rule {rule:?} needs a one-line message"));
        }
        if let Some(reason) = entry.get("reason")
            && !REASONS.contains(&reason.as_str().unwrap_or_default())
        {
            problems.push(format!("rule {rule:?} has an unknown reason {reason}"));
        }
        if let Some(path) = entry.get("fieldPath") {
            let path = path.as_str().unwrap_or_default();
            let resolves = path.starts_with('.')
                && path[1..]
                    .split('.')
                    .try_fold(node, |at, name| at["properties"].get(name))
                    .is_some();
            if !resolves {
                problems.push(format!(
                    "fieldPath {path:?} of rule {rule:?} names no field"
                ));
            }
        }
    }
    problems
}

#[test]
fn the_schemas_are_structural() {
    let mut problems = Vec::new();
    let mut nodes = 0;
    for kind in common::KINDS {
        let root = common::schema(kind);
        if root["type"] != "object" {
            problems.push(format!("{kind}: the root is not an object"));
        }
        common::walk_schema(&root, String::new(), &mut |path, node| {
            nodes += 1;
            for p in node_problems(node) {
                problems.push(format!("{kind} {path}: {p}"));
            }
        });
    }
    assert!(nodes > 50, "only {nodes} schema nodes walked");
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn the_structural_check_catches_what_kubernetes_refuses() {
    // The check is only as good as what it flags.
    for (bad, expected) in [
        (json!({"$ref": "#/definitions/X"}), "uses \"$ref\""),
        (
            json!({"type": "object", "definitions": {}}),
            "uses \"definitions\"",
        ),
        (json!({"description": "untyped"}), "every node needs a type"),
        (
            json!({"type": "array", "items": {"type": "string"}, "uniqueItems": true}),
            "uniqueItems",
        ),
        (
            json!({"type": "string", "anyOf": [{"type": "string"}]}),
            "anyOf sets \"type\"",
        ),
        (
            json!({"type": "object", "x-kubernetes-preserve-unknown-fields": false}),
            "must be true or absent",
        ),
        (
            json!({"type": "array", "items": {"type": "object"}, "x-kubernetes-list-type": "map"}),
            "a map list needs",
        ),
        (
            json!({"type": "object", "properties": {"a": {"type": "string"}},
                   "x-kubernetes-validations": [{"rule": "true", "message": "m", "fieldPath": ".b"}]}),
            "names no field",
        ),
        (
            json!({"type": "string", "x-kubernetes-validations": [{"rule": "true", "message": "m", "reason": "Oops"}]}),
            "unknown reason",
        ),
    ] {
        let problems = node_problems(&bad);
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "{bad}: {problems:?} lacks {expected:?}"
        );
    }
}

#[test]
fn cel_rules_only_see_bounded_values() {
    // The API server estimates each rule's worst-case cost from maxLength,
    // maxItems and maxProperties, and multiplies by the maxItems of every
    // enclosing list; an unbounded value makes the CRD exceed its budget.
    let mut problems = Vec::new();
    for kind in common::KINDS {
        let root = common::schema(kind);
        bounded(&root, String::new(), false, &mut problems, kind);
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// Walks `node`; `under_rule` is whether a rule sits on it or an ancestor.
fn bounded(node: &Value, path: String, under_rule: bool, problems: &mut Vec<String>, kind: &str) {
    let has_rules = node.get("x-kubernetes-validations").is_some();
    let under_rule = under_rule || has_rules;
    let unbounded = match node["type"].as_str() {
        Some("string") => node.get("maxLength").is_none() && node.get("enum").is_none(),
        Some("array") => node.get("maxItems").is_none(),
        Some("object") => {
            node["additionalProperties"].is_object() && node.get("maxProperties").is_none()
        }
        _ => false,
    };
    if under_rule && unbounded {
        problems.push(format!("{kind} {path}: seen by a CEL rule but unbounded"));
    }
    if let Some(properties) = node["properties"].as_object() {
        for (name, child) in properties {
            let child_path = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}.{name}")
            };
            bounded(child, child_path, under_rule, problems, kind);
        }
    }
    if node["items"].is_object() {
        // A rule inside the items runs once per item: the list needs a bound.
        if contains_rules(&node["items"]) && node.get("maxItems").is_none() {
            problems.push(format!(
                "{kind} {path}: items carry CEL rules but the list has no maxItems"
            ));
        }
        bounded(
            &node["items"],
            format!("{path}[]"),
            under_rule,
            problems,
            kind,
        );
    }
    if node["additionalProperties"].is_object() {
        bounded(
            &node["additionalProperties"],
            format!("{path}{{}}"),
            under_rule,
            problems,
            kind,
        );
    }
}

fn contains_rules(node: &Value) -> bool {
    let mut found = false;
    common::walk_schema(node, String::new(), &mut |_, n| {
        found |= n.get("x-kubernetes-validations").is_some();
    });
    found
}

#[test]
fn defaults_are_valid_where_they_sit() {
    // The API server refuses a CRD whose defaults its own schema rejects.
    let mut problems = Vec::new();
    let mut checked = 0;
    for kind in common::KINDS {
        let root = common::schema(kind);
        common::walk_schema(&root, String::new(), &mut |path, node| {
            let Some(default) = node.get("default") else {
                return;
            };
            checked += 1;
            let mut wrapper = json!({"type": "object", "properties": {"v": node}});
            wrapper["properties"]["v"]
                .as_object_mut()
                .unwrap()
                .remove("default");
            let draft4 = common::draft4_of(&wrapper);
            let validator = jsonschema::draft4::new(&draft4).unwrap();
            let instance = json!({ "v": default });
            for e in validator.iter_errors(&instance) {
                problems.push(format!("{kind} {path}: default {default}: {e}"));
            }
            for outcome in common::evaluate_at(&wrapper, &instance) {
                if !outcome.admits() {
                    problems.push(format!(
                        "{kind} {path}: default {default}: {}",
                        outcome.message
                    ));
                }
            }
        });
    }
    assert!(checked >= 10, "only {checked} defaults found");
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn every_field_is_described_for_kubectl_explain() {
    let mut missing = Vec::new();
    for kind in common::KINDS {
        let root = common::schema(kind);
        common::walk_schema(&root, String::new(), &mut |path, node| {
            if node["properties"].is_object() {
                for (name, child) in node["properties"].as_object().unwrap() {
                    let described = child["description"].as_str().is_some_and(|d| d.len() > 10);
                    if !described {
                        missing.push(format!("{kind} {path}.{name}"));
                    }
                }
            }
        });
    }
    assert!(
        missing.is_empty(),
        "fields without a description:\n{}",
        missing.join("\n")
    );
}

#[test]
fn printer_columns_point_at_fields_of_their_type() {
    for crd in common::crds() {
        let version = &crd["spec"]["versions"][0];
        let root = &version["schema"]["openAPIV3Schema"];
        for column in version["additionalPrinterColumns"].as_array().unwrap() {
            let path = column["jsonPath"].as_str().unwrap();
            let ty = column["type"].as_str().unwrap();
            if path == ".metadata.creationTimestamp" {
                assert_eq!(ty, "date");
                continue;
            }
            let field = path[1..]
                .split('.')
                .try_fold(root, |at, name| at["properties"].get(name))
                .unwrap_or_else(|| {
                    panic!("{}: column {path} names no field", crd["metadata"]["name"])
                });
            let field_type = field["type"].as_str().unwrap();
            assert!(
                field_type == ty || (ty == "number" && field_type == "integer"),
                "column {path} is a {ty} but the field is a {field_type}"
            );
        }
    }
}

#[test]
fn kubectl_get_probesets_shows_the_measured_drop_next_to_the_plans_prediction() {
    let crd = common::crds()
        .into_iter()
        .find(|c| c["spec"]["names"]["kind"] == "ProbeSet")
        .unwrap();
    let columns: Vec<(String, String)> = crd["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_uppercase(),
                c["jsonPath"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "READY",
            "STATUS",
            "EVENTS/S",
            "DROP %",
            "PLAN DROP %",
            "RINGBUF",
            "AGE"
        ]
    );
    assert_eq!(columns[1].1, ".status.state");
    assert_eq!(columns[3].1, ".status.dropPercent");
    assert_eq!(columns[4].1, ".status.predictedDropPercent");
}

#[test]
fn kubectl_get_slo_shows_the_designed_columns() {
    let crd = common::crds()
        .into_iter()
        .find(|c| c["spec"]["names"]["kind"] == "SLO")
        .unwrap();
    assert_eq!(crd["spec"]["names"]["singular"], "slo");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(
        crd["spec"]["versions"][0]["subresources"]["status"],
        json!({})
    );
    let columns: Vec<String> = crd["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_uppercase())
        .collect();
    assert_eq!(columns, ["TARGET", "SLI", "BUDGET", "BURN", "STATE", "AGE"]);
}

#[test]
fn schema_limits_fit_the_kernel_maps() {
    use ringwarden_crds::{probeset, slo};
    use ringwarden_ebpf_common as kernel;
    assert!(probeset::MAX_FILTER_PIDS <= kernel::FILTER_PIDS_ENTRIES as usize);
    assert!(probeset::MAX_FILTER_COMMS <= kernel::FILTER_COMMS_ENTRIES as usize);
    assert!(probeset::MAX_FILTER_CGROUPS <= kernel::FILTER_CGROUPS_ENTRIES as usize);
    assert_eq!(probeset::MAX_COMM_LEN, kernel::COMM_LEN - 1);
    assert_eq!(slo::MAX_SLO_SERIES, kernel::MAX_THRESHOLD_SERIES);
}

/// Runs `kubernetes-validate --strict` on the generated CRDs for one
/// Kubernetes version.
fn kubernetes_validate(version: &str) {
    let file = std::env::temp_dir().join(format!(
        "ringwarden-crds-{}-{version}.yaml",
        std::process::id()
    ));
    std::fs::write(&file, ringwarden_crds::crd_yaml()).unwrap();
    let output = Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", version])
        .arg(&file)
        .output();
    let _ = std::fs::remove_file(&file);
    let output = output.unwrap_or_else(|e| {
        panic!(
            "cannot run kubernetes-validate ({e}); install it with `make deps` \
             (scripts/deps.sh: pip install kubernetes-validate)"
        )
    });
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && !stdout.contains("ERROR") && !stderr.contains("ERROR"),
        "kubernetes-validate refused the CRDs for Kubernetes {version}:\n{stdout}{stderr}"
    );
    for crd in ["probesets.ringwarden.dev", "slos.ringwarden.dev"] {
        assert!(
            stdout.contains(&format!("customresourcedefinition/{crd} against version")),
            "kubernetes-validate did not check {crd}:\n{stdout}{stderr}"
        );
    }
}

#[test]
fn the_crds_pass_the_official_kubernetes_schemas() {
    // The version k8s-openapi is built for, and the newest the tool knows.
    kubernetes_validate("1.33.0");
    kubernetes_validate("1.37.0");
}

/// A ClusterProbeSet's schema is a ProbeSet's plus `namespaceSelector`,
/// whose rules are `podSelector`'s, and `sloNamespaces`, which has no CEL
/// rule: the admission fixtures of ProbeSets (tests/admission.rs)
/// therefore cover every rule of both, and the same Rust checks run on
/// both.
#[test]
fn a_cluster_probeset_is_a_probeset_plus_a_namespace_selector_with_the_pod_selectors_rules() {
    let probeset = common::schema("ProbeSet");
    let cluster = common::schema("ClusterProbeSet");
    assert_eq!(
        cluster["properties"]["status"],
        probeset["properties"]["status"]
    );
    let mut spec = cluster["properties"]["spec"].clone();
    let selector = spec["properties"]
        .as_object_mut()
        .unwrap()
        .remove("namespaceSelector")
        .expect("spec.namespaceSelector");
    let slo_namespaces = spec["properties"]
        .as_object_mut()
        .unwrap()
        .remove("sloNamespaces")
        .expect("spec.sloNamespaces");
    assert!(
        !slo_namespaces
            .to_string()
            .contains("x-kubernetes-validations"),
        "{slo_namespaces}"
    );
    assert_eq!(slo_namespaces["maxItems"], 64);
    assert_eq!(slo_namespaces["items"]["maxLength"], 63);
    // Only the words for each kind differ (tests/wording.rs).
    ringwarden_crds::cel::reword_namespaced(&mut spec);
    let ps_spec = &probeset["properties"]["spec"];
    assert_eq!(spec["properties"], ps_spec["properties"]);
    assert_eq!(spec["required"], ps_spec["required"]);
    assert_eq!(
        spec["x-kubernetes-validations"],
        ps_spec["x-kubernetes-validations"]
    );
    // The same bounds and CEL rules as podSelector; only the words differ.
    let strip = |v: &Value| -> Value {
        let mut v = v.clone();
        fn walk(v: &mut Value) {
            match v {
                Value::Object(m) => {
                    m.remove("description");
                    m.values_mut().for_each(walk);
                }
                Value::Array(a) => a.iter_mut().for_each(walk),
                _ => {}
            }
        }
        walk(&mut v);
        v
    };
    assert_eq!(
        strip(&selector),
        strip(&ps_spec["properties"]["podSelector"])
    );
    // Cluster-scoped, and namespaced ProbeSets stay namespaced.
    let scope = |kind: &str| {
        common::crds()
            .into_iter()
            .find(|c| c["spec"]["names"]["kind"] == kind)
            .unwrap()["spec"]["scope"]
            .clone()
    };
    assert_eq!(scope("ClusterProbeSet"), "Cluster");
    assert_eq!(scope("ProbeSet"), "Namespaced");
}
