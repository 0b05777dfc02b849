//! The API server refuses a CRD whose CEL rules it estimates too costly:
//! any rule above `StaticEstimatedCostLimit` (its cost times how often it
//! can run in one object) or all rules of a schema together above
//! `StaticEstimatedCRDCostLimit`. These tests estimate every rule of the
//! generated CRDs the way the API server does and keep each under a
//! quarter of those limits, so a longer list or a new rule cannot push a
//! CRD over them unnoticed. The estimator is checked against upstream's own
//! expected costs first.

mod checker;
mod coster;
mod decl;

use std::fmt::Write as _;

use serde_json::{Value, json};

use coster::estimate;
use decl::{Decl, max_cardinality, max_elements_factor};

/// `StaticEstimatedCostLimit` (apiextensions validation.go): per rule,
/// times its cardinality.
const RULE_LIMIT: u64 = 10_000_000;
/// `StaticEstimatedCRDCostLimit`: all rules of a schema together.
const CRD_LIMIT: u64 = 100_000_000;
/// The share of either limit the CRDs may use: room for the lists and
/// rules to grow before the API server is anywhere near refusing them.
const HEADROOM: u64 = 4;

fn max_cost(schema: &Value, rule: &str) -> u64 {
    let root = Decl::from_schema(schema, false).expect("a schema CEL can see");
    estimate(rule, &root)
        .unwrap_or_else(|e| panic!("{rule}: {e}"))
        .max
}

// ---- upstream's expectations ----

/// The element schema of upstream's `parseRuleType`.
fn typed(t: &str) -> Value {
    match t {
        "duration" | "date" | "date-time" => json!({"type": "string", "format": t}),
        "int-or-string" => json!({"x-kubernetes-int-or-string": true}),
        _ => json!({"type": t}),
    }
}

fn bounded(mut schema: Value, key: &str, max: Option<u64>) -> Value {
    if let Some(max) = max {
        schema[key] = max.into();
    }
    schema
}

fn array_of(items: Value, max: Option<u64>) -> Value {
    bounded(json!({"type": "array", "items": items}), "maxItems", max)
}

fn map_of(values: Value, max: Option<u64>) -> Value {
    bounded(
        json!({"type": "object", "additionalProperties": values}),
        "maxProperties",
        max,
    )
}

fn string(max: Option<u64>) -> Value {
    bounded(json!({"type": "string"}), "maxLength", max)
}

/// One row of `TestCostEstimation` in k8s.io/apiextensions-apiserver
/// pkg/apiserver/schema/cel/compilation_test.go: the rule's cost on the
/// schema without limits ("calc maxLength") and with them ("set maxLength").
struct Upstream {
    name: &'static str,
    schema: fn(Option<u64>) -> Value,
    rule: &'static str,
    calc: u64,
    set_max: u64,
    set: u64,
}

fn upstream_cases() -> Vec<Upstream> {
    // The `name`s are upstream's test names.
    vec![
        Upstream {
            name: "number array with all",
            schema: |m| array_of(typed("number"), m),
            rule: "self.all(x, true)",
            calc: 4_718_591,
            set_max: 10,
            set: 32,
        },
        Upstream {
            name: "string array with all",
            schema: |m| array_of(typed("string"), m),
            rule: "self.all(x, true)",
            calc: 3_145_727,
            set_max: 20,
            set: 62,
        },
        Upstream {
            name: "boolean array with all",
            schema: |m| array_of(typed("boolean"), m),
            rule: "self.all(x, true)",
            calc: 1_887_437,
            set_max: 5,
            set: 17,
        },
        Upstream {
            name: "array of objects with all",
            schema: |m| {
                array_of(
                    json!({
                        "type": "object",
                        "properties": {
                            "required": {"type": "string"},
                            "optional": {"type": "string"},
                        },
                        "required": ["required"],
                    }),
                    m,
                )
            },
            rule: "self.all(x, true)",
            calc: 555_128,
            set_max: 50,
            set: 152,
        },
        Upstream {
            name: "map of numbers with all",
            schema: |m| map_of(typed("number"), m),
            rule: "self.all(x, true)",
            calc: 1_348_169,
            set_max: 10,
            set: 32,
        },
        Upstream {
            name: "string with contains",
            schema: string,
            rule: "self.contains('test')",
            calc: 314_574,
            set_max: 10,
            set: 5,
        },
        Upstream {
            name: "string with startsWith",
            schema: string,
            rule: "self.startsWith('test')",
            calc: 2,
            set_max: 15,
            set: 2,
        },
        Upstream {
            name: "concat string",
            schema: string,
            rule: r#"size(self + "hello") > size("hello")"#,
            calc: 314_578,
            set_max: 4,
            set: 7,
        },
        Upstream {
            name: "index of array with strings",
            schema: |m| array_of(typed("string"), m),
            rule: "self[1] == self[1]",
            calc: 314_577,
            set_max: 8,
            set: 314_577,
        },
        Upstream {
            name: "regex matches simple",
            schema: string,
            rule: r#"self.matches("x")"#,
            calc: 314_574,
            set_max: 50,
            set: 22,
        },
        Upstream {
            name: "regex matches empty string",
            schema: string,
            rule: r#""".matches("(((((((((())))))))))[0-9]")"#,
            calc: 7,
            set_max: 10,
            set: 7,
        },
        Upstream {
            name: "map of strings with value length",
            schema: |m| map_of(string(m), m),
            rule: "self.all(x, x.contains(self[x]))",
            calc: 2_752_507,
            set_max: 10,
            set: 72,
        },
        Upstream {
            name: "set string maxLength to zero",
            schema: string,
            rule: r#"self == "x""#,
            calc: 2,
            set_max: 0,
            set: 1,
        },
        Upstream {
            name: "set maxLength greater than estimated maxLength",
            schema: |m| array_of(typed("number"), m),
            rule: "self.all(x, x == 0.0)",
            calc: 6_291_454,
            set_max: 3 * 1024 * 2048,
            set: 25_165_826,
        },
        Upstream {
            name: "index of array of number maps",
            schema: |m| array_of(map_of(typed("number"), None), m),
            rule: "self[0].x > 2.0",
            calc: 4,
            set_max: 3000,
            set: 4,
        },
        Upstream {
            name: "duration array with all",
            schema: |m| array_of(typed("duration"), m),
            rule: "self.all(x, true)",
            calc: 2_359_295,
            set_max: 5,
            set: 17,
        },
        Upstream {
            name: "date-time array with all",
            schema: |m| array_of(typed("date-time"), m),
            rule: "self.all(x, true)",
            calc: 428_963,
            set_max: 25,
            set: 77,
        },
        Upstream {
            name: "index of array with int-or-strings",
            schema: |m| array_of(typed("int-or-string"), m),
            rule: "self[0] == 5",
            calc: 3,
            set_max: 10,
            set: 3,
        },
        Upstream {
            name: "extended library regex find",
            schema: string,
            rule: "self.find('[0-9]+') == ''",
            calc: 629_147,
            set_max: 10,
            set: 11,
        },
        Upstream {
            name: "extended library join",
            schema: |m| array_of(string(m), m),
            rule: "self.join(' ') == 'aa bb'",
            calc: 329_853_068_905,
            set_max: 10,
            set: 43,
        },
        Upstream {
            name: "extended library replace",
            schema: |m| {
                json!({"type": "object", "properties": {
                    "str": string(m),
                    "before": string(Some(2)),
                    "after": string(Some(4)),
                }})
            },
            rule: "self.str.replace(self.before, self.after) == 'does not matter'",
            calc: 629_154,
            set_max: 4,
            set: 12,
        },
        Upstream {
            name: "extended library split",
            schema: |m| json!({"type": "object", "properties": {"str": string(m), "separator": string(m)}}),
            rule: "self.str.split(self.separator) == []",
            calc: 629_160,
            set_max: 10,
            set: 22,
        },
        Upstream {
            name: "extended library lowerAscii",
            schema: string,
            rule: "self.lowerAscii() == 'lower!'",
            calc: 314_575,
            set_max: 10,
            set: 6,
        },
        Upstream {
            name: "check cost of size call",
            schema: |m| map_of(typed("integer"), m),
            rule: "oldSelf.size() == self.size()",
            calc: 5,
            set_max: 10,
            set: 5,
        },
        Upstream {
            name: "check cost of timestamp comparison",
            schema: |m| map_of(typed("date-time"), m),
            rule: r#"self["a"] == self["b"]"#,
            calc: 8,
            set_max: 7,
            set: 8,
        },
        Upstream {
            name: "enums with maxLength equals to the longest possible value",
            schema: |m| {
                bounded(
                    json!({"type": "string", "enum": ["A", "B", "C", "LongValue"]}),
                    "maxLength",
                    m,
                )
            },
            rule: "self.contains('A')",
            calc: 2,
            set_max: 1000,
            set: 401,
        },
    ]
}

#[test]
fn the_estimator_reproduces_upstream_expected_costs() {
    let mut wrong = String::new();
    for case in upstream_cases() {
        for (label, max, want) in [
            ("calc", None, case.calc),
            ("set", Some(case.set_max), case.set),
        ] {
            let got = max_cost(&(case.schema)(max), case.rule);
            if got != want {
                writeln!(
                    wrong,
                    "{} ({label}): {} costs {got}, upstream {want}",
                    case.name, case.rule
                )
                .unwrap();
            }
        }
    }
    assert!(wrong.is_empty(), "TestCostEstimation disagrees:\n{wrong}");
}

// ---- the rules these limits once refused ----

/// The cgroup rule before it was made cheaper, on strings of maxLength 512.
const OLD_CGROUP_RULE: &str = "self.matches('[^/]') && !self.matches('(^|/)[.][.](/|$)')";

/// The window rule before it compared numbers: `string(int)` has no size
/// bound, so concatenating it makes the estimate all but unbounded.
const OLD_WINDOW_RULE: &str = "!self.matches('^([0-9]+d(([0-9]+([.][0-9]*)?|[.][0-9]+)(ns|us|µs|μs|ms|s|m|h))*|[+-]?(([0-9]+([.][0-9]*)?|[.][0-9]+)(ns|us|µs|μs|ms|s|m|h))+|[+-]?0)$') || ((self.contains('d') ? duration(string(int(self.split('d')[0]) * 24) + 'h') + (self.split('d')[1] == '' ? duration('0s') : duration(self.split('d')[1])) : duration(self)) >= duration('1h') && (self.contains('d') ? duration(string(int(self.split('d')[0]) * 24) + 'h') + (self.split('d')[1] == '' ? duration('0s') : duration(self.split('d')[1])) : duration(self)) <= duration('2160h'))";

#[test]
fn the_old_cgroup_rule_exceeded_the_limit_under_64_probes_of_256_cgroups() {
    let per_evaluation = max_cost(&string(Some(512)), OLD_CGROUP_RULE);
    assert_eq!(per_evaluation, 1_028);
    let cost = per_evaluation * 64 * 256;
    assert_eq!(cost, 16_842_752);
    assert!(cost > RULE_LIMIT);
}

#[test]
fn the_old_window_rule_was_beyond_a_hundred_times_the_limit() {
    let cost = max_cost(&string(Some(32)), OLD_WINDOW_RULE);
    assert!(cost > 100 * RULE_LIMIT, "{cost}");
    // Two unbounded concatenations, each 0.1 × 2^64.
    assert!((3.6e18..3.8e18).contains(&(cost as f64)), "{cost}");
}

// ---- the generated CRDs ----

/// One estimated expression of a CRD.
struct Estimate {
    kind: String,
    path: String,
    /// `rule` or `messageExpression`.
    what: &'static str,
    expression: String,
    per_evaluation: u64,
    /// How often it can run in one object; messageExpressions are counted
    /// once, as the API server counts them.
    cardinality: u64,
    cost: u64,
}

/// Walks a CRD's schema as apiextensions' `validateCELExpressions` does,
/// estimating each rule where it sits with the cardinality its enclosing
/// lists and maps give it.
fn estimate_crd(crd: &Value) -> Result<Vec<Estimate>, String> {
    let kind = crd["spec"]["names"]["kind"]
        .as_str()
        .ok_or("a CRD without a kind")?;
    let mut out = Vec::new();
    for version in crd["spec"]["versions"]
        .as_array()
        .ok_or("a CRD without versions")?
    {
        let schema = &version["schema"]["openAPIV3Schema"];
        walk(kind, schema, String::new(), Some(1), true, &mut out)?;
    }
    Ok(out)
}

fn walk(
    kind: &str,
    schema: &Value,
    path: String,
    cardinality: Option<u64>,
    root: bool,
    out: &mut Vec<Estimate>,
) -> Result<(), String> {
    if let Some(rules) = schema["x-kubernetes-validations"].as_array() {
        let decl = Decl::from_schema(schema, root)
            .ok_or_else(|| format!("{kind} {path}: rules on a schema CEL cannot see"))?;
        for entry in rules {
            let rule = entry["rule"].as_str().ok_or("an entry without a rule")?;
            let per_evaluation = estimate(rule, &decl)
                .map_err(|e| format!("{kind} {path}: {rule}: {e}"))?
                .max;
            // Under a list or map without a bound, the API server assumes as
            // many copies as fit in a request.
            let cardinality =
                cardinality.unwrap_or_else(|| max_cardinality(decl.min_serialized_size));
            let cost = if per_evaluation == 0 {
                0
            } else {
                per_evaluation.saturating_mul(cardinality)
            };
            out.push(Estimate {
                kind: kind.into(),
                path: path.clone(),
                what: "rule",
                expression: rule.into(),
                per_evaluation,
                cardinality,
                cost,
            });
            if let Some(message) = entry["messageExpression"].as_str() {
                let per_evaluation = estimate(message, &decl)
                    .map_err(|e| format!("{kind} {path}: {message}: {e}"))?
                    .max;
                out.push(Estimate {
                    kind: kind.into(),
                    path: path.clone(),
                    what: "messageExpression",
                    expression: message.into(),
                    per_evaluation,
                    cardinality: 1,
                    cost: per_evaluation,
                });
            }
        }
    }
    let child = cardinality.and_then(|c| max_elements_factor(schema).map(|f| c.saturating_mul(f)));
    let join = |name: &str| {
        if path.is_empty() {
            name.to_string()
        } else {
            format!("{path}.{name}")
        }
    };
    if let Some(properties) = schema["properties"].as_object() {
        for (name, property) in properties {
            walk(kind, property, join(name), child, false, out)?;
        }
    }
    if schema["items"].is_object() {
        walk(
            kind,
            &schema["items"],
            format!("{path}[]"),
            child,
            false,
            out,
        )?;
    }
    if schema["additionalProperties"].is_object() {
        walk(
            kind,
            &schema["additionalProperties"],
            format!("{path}{{}}"),
            child,
            false,
            out,
        )?;
    }
    Ok(())
}

fn percent(cost: u64, limit: u64) -> String {
    format!("{:.2} %", cost as f64 * 100.0 / limit as f64)
}

/// The table reviewers read, and what is over budget.
fn report(crds: &[Value]) -> (String, Vec<String>) {
    let mut table = String::new();
    let mut over = Vec::new();
    writeln!(
        table,
        "{:<8} {:<42} {:>9} {:>11} {:>11} {:>9}  expression",
        "kind", "schema path", "per eval", "cardinality", "cost", "of limit"
    )
    .unwrap();
    for crd in crds {
        let estimates = match estimate_crd(crd) {
            Ok(estimates) => estimates,
            Err(e) => {
                over.push(format!("cannot estimate: {e}"));
                continue;
            }
        };
        let mut total = 0u64;
        let Some(kind) = estimates.first().map(|e| e.kind.clone()) else {
            continue;
        };
        for e in &estimates {
            total = total.saturating_add(e.cost);
            let mut expression = e.expression.clone();
            if expression.chars().count() > 60 {
                expression = expression.chars().take(57).collect::<String>() + "...";
            }
            writeln!(
                table,
                "{:<8} {:<42} {:>9} {:>11} {:>11} {:>9}  {}{expression}",
                e.kind,
                e.path,
                e.per_evaluation,
                e.cardinality,
                e.cost,
                percent(e.cost, RULE_LIMIT),
                if e.what == "rule" { "" } else { "message: " },
            )
            .unwrap();
            if e.cost > RULE_LIMIT / HEADROOM {
                over.push(format!(
                    "{} {} {} `{}` costs {} ({} per evaluation × cardinality {}), over a \
                     quarter of the per-rule limit {RULE_LIMIT}",
                    e.kind, e.path, e.what, e.expression, e.cost, e.per_evaluation, e.cardinality
                ));
            }
        }
        writeln!(
            table,
            "{kind:<8} {:<42} {:>9} {:>11} {total:>11} {:>9}  (of the CRD limit {CRD_LIMIT})",
            "total",
            "",
            "",
            percent(total, CRD_LIMIT)
        )
        .unwrap();
        if total > CRD_LIMIT / HEADROOM {
            over.push(format!(
                "{kind}: all rules together cost {total}, over a quarter of the CRD limit \
                 {CRD_LIMIT}"
            ));
        }
    }
    (table, over)
}

fn check_within_budget(crds: &[Value], source: &str) {
    let (table, over) = report(crds);
    println!("CEL cost estimates of {source}:\n{table}");
    assert!(
        over.is_empty(),
        "{source}: rules the API server would come close to refusing:\n{}\n\n{table}",
        over.join("\n")
    );
}

#[test]
fn every_rule_of_the_committed_crds_stays_within_a_quarter_of_the_limits() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/ringwarden.dev_crds.yaml");
    let text = std::fs::read_to_string(path).expect("the generated CRDs");
    let crds: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("a YAML document"))
        .filter(|doc: &Value| !doc.is_null())
        .collect();
    assert_eq!(crds.len(), 3, "every CRD in {path}");
    check_within_budget(&crds, "crds/ringwarden.dev_crds.yaml");
}

#[test]
fn every_rule_of_the_crds_the_types_generate_stays_within_a_quarter_of_the_limits() {
    let crds: Vec<Value> = ringwarden_crds::crds()
        .iter()
        .map(|crd| serde_json::to_value(crd).expect("a CRD is JSON"))
        .collect();
    check_within_budget(&crds, "the Rust types");
}

#[test]
fn a_rule_under_an_unbounded_list_counts_as_often_as_a_request_can_hold_it() {
    let crd = json!({
        "spec": {"names": {"kind": "Test"}, "versions": [{"schema": {"openAPIV3Schema": {
            "type": "object",
            "properties": {"names": {"type": "array", "items": {
                "type": "string", "maxLength": 10,
                "x-kubernetes-validations": [{"rule": "self.startsWith('a')", "messageExpression": "self + ' is wrong'"}],
            }}},
        }}}]},
    });
    let estimates = estimate_crd(&crd).unwrap();
    let [rule, message] = &estimates[..] else {
        panic!("a rule and a messageExpression")
    };
    // A string serializes to at least `""`; one comma between items.
    assert_eq!(rule.cardinality, 3 * 1024 * 1024 / 3);
    assert_eq!(rule.per_evaluation, 2);
    // The messageExpression is counted once: 40 bytes of self, 9 of the literal.
    assert_eq!(
        (message.per_evaluation, message.cardinality, message.cost),
        (6, 1, 6)
    );
}
