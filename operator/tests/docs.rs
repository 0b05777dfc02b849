//! docs/operator.md's permission table says exactly what the chart grants
//! the operator: every (API group, resource, verb) of the operator's
//! ClusterRole and Role, no more, no less.

use std::collections::BTreeSet;

type Grants = BTreeSet<(String, String, String)>;

fn repo(path: &str) -> String {
    let p = format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// `["a", "b"]` → a, b.
fn yaml_list(line: &str) -> Vec<String> {
    let inner = line
        .split_once('[')
        .and_then(|(_, r)| r.rsplit_once(']'))
        .unwrap_or_else(|| panic!("not a flow list: {line}"))
        .0;
    inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_matches('"').to_owned())
        .collect()
}

/// The operator's rules in the chart template: those before the roles for
/// namespace users.
fn chart_grants() -> Grants {
    let text = repo("charts/ringwarden/templates/rbac.yaml");
    let operator = text
        .split("aggregateToDefaultRoles")
        .next()
        .expect("the template has the operator's roles first");
    let mut grants = Grants::new();
    let (mut groups, mut resources) = (Vec::new(), Vec::new());
    for line in operator.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("- apiGroups:") {
            groups = yaml_list(rest);
        } else if let Some(rest) = line.strip_prefix("resources:") {
            resources = yaml_list(rest);
        } else if let Some(rest) = line.strip_prefix("verbs:") {
            for g in &groups {
                for r in &resources {
                    for v in yaml_list(rest) {
                        grants.insert((g.clone(), r.clone(), v));
                    }
                }
            }
        }
    }
    grants
}

fn docs_grants() -> Grants {
    let text = repo("docs/operator.md");
    let section = text
        .split("## Permissions it needs")
        .nth(1)
        .expect("docs/operator.md has a permissions section");
    let mut grants = Grants::new();
    for row in section
        .lines()
        .take_while(|l| !l.starts_with("## "))
        .filter(|l| l.starts_with("| ") && !l.starts_with("| API group"))
    {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let group = match cells[1] {
            "core" => String::new(),
            g => g.trim_matches('`').to_owned(),
        };
        for r in cells[2].split(',') {
            for v in cells[3].split(',') {
                grants.insert((
                    group.clone(),
                    r.trim().trim_matches('`').to_owned(),
                    v.trim().to_owned(),
                ));
            }
        }
    }
    grants
}

#[test]
fn the_permission_table_matches_the_chart() {
    let (chart, docs) = (chart_grants(), docs_grants());
    assert!(
        chart.contains(&("".into(), "configmaps".into(), "create".into())),
        "parsed: {chart:?}"
    );
    let missing: Vec<_> = chart.difference(&docs).collect();
    let extra: Vec<_> = docs.difference(&chart).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/operator.md lacks {missing:?} and claims {extra:?}"
    );
}
