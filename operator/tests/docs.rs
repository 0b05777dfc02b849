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

/// docs/install.md's table of the objects the operator makes at run time:
/// (kind, name) of each row.
fn docs_runtime_objects() -> BTreeSet<(String, String)> {
    let text = repo("docs/install.md");
    let section = text
        .split("### What the operator makes at run time")
        .nth(1)
        .expect("docs/install.md lists what the operator makes at run time");
    section
        .lines()
        .take_while(|l| !l.starts_with("#"))
        .filter(|l| l.starts_with("| ") && !l.starts_with("| kind"))
        .map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            // The name is the first code span: `ringwarden-slo-<hash>` → its
            // prefix, as the code names it.
            let name = cells[2]
                .split('`')
                .nth(1)
                .unwrap_or_default()
                .trim_end_matches("<hash>")
                .to_owned();
            (cells[1].to_owned(), name)
        })
        .collect()
}

/// The kinds the operator's code holds an `Api` of (`Api<ConfigMap>`,
/// `Api::<Stored<Slo>>`, `kube::Api<k8s_openapi::…::Deployment>`).
fn kinds_in_code() -> BTreeSet<String> {
    fn walk(dir: &std::path::Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut sources = Vec::new();
    walk(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut sources,
    );
    let mut kinds = BTreeSet::new();
    for text in &sources {
        for piece in text.split("Api").skip(1) {
            let Some(args) = piece
                .strip_prefix("::<")
                .or_else(|| piece.strip_prefix('<'))
            else {
                continue;
            };
            let ty: String = args
                .chars()
                .take_while(|c| c.is_alphanumeric() || matches!(c, '_' | ':' | '<'))
                .collect();
            // The innermost type, its last path segment.
            let inner = ty.rsplit('<').next().unwrap_or_default();
            let kind = inner.rsplit("::").next().unwrap_or_default();
            // Generic parameters (`Api<K>`) are not kinds.
            if kind.len() > 1 {
                kinds.insert(kind.to_owned());
            }
        }
        if text.contains("recorder.publish(") {
            kinds.insert("Event".to_owned());
        }
    }
    kinds
}

#[test]
fn uninstall_docs_list_every_object_the_operator_makes() {
    use clap::Parser;
    use ringwarden_operator::{cli::Args, config::AgentSettings, owner};

    let args = Args::parse_from(["ringwarden-operator"]);
    let made = owner::made_at_run_time(&args, &AgentSettings::default());
    let docs = docs_runtime_objects();
    for m in &made {
        assert!(
            docs.contains(&(m.kind.to_owned(), m.name.clone())),
            "docs/install.md does not list {} {:?} among the objects made at run time: {docs:?}",
            m.kind,
            m.name
        );
    }
    assert_eq!(
        docs.len(),
        made.len(),
        "docs/install.md lists objects the code does not make: {docs:?} vs {made:?}"
    );

    // Every kind the code can reach is either made at run time (and so
    // listed above) or only read, reviewed or given a status: a new kind
    // must be sorted into one or the other.
    let made_kinds: BTreeSet<&str> = made.iter().map(|m| m.kind).collect();
    let not_made = [
        // Read: watched or looked up.
        "ProbeSet",
        "ClusterProbeSet",
        "Slo",
        "Node",
        "Namespace",
        "Pod",
        "Deployment",
        // Reviews are answered, never stored.
        "TokenReview",
        "SubjectAccessReview",
    ];
    let code = kinds_in_code();
    assert!(
        code.contains("Lease") && code.contains("Secret"),
        "{code:?}"
    );
    for kind in &code {
        assert!(
            made_kinds.contains(kind.as_str()) || not_made.contains(&kind.as_str()),
            "the operator holds an Api of {kind}: if it creates {kind} objects, add them to \
             owner::made_at_run_time and docs/install.md; if it only reads them, to this test's \
             list"
        );
    }
}
