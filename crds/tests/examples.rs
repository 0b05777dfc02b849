//! Every manifest under `examples/` is one the API server would accept (the
//! generated schema and its CEL rules admit it) and standalone mode reads
//! (it parses and validates); every SLO there measures a probe that exists.
//!
//! `examples/gitops` is a configuration repository: its ProbeSets and SLOs
//! are checked the same way, both as written (full documents) and as each
//! kustomize overlay renders them (`kustomize build`, which also applies
//! the partial documents of patches). Its Flux health checks are evaluated
//! on the statuses the operator writes.

mod common;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use ringwarden_crds::{
    IndicatorKind, ProbeSet, Slo,
    manifest::{self, Manifest, load_file},
};
use serde::Deserialize;
use serde_json::{Value, json};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn gitops_dir() -> PathBuf {
    examples_dir().join("gitops")
}

/// The manifests directly in `examples/`.
fn examples() -> Vec<PathBuf> {
    let dir = examples_dir();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no examples found in {}", dir.display());
    paths
}

/// Every YAML file below `dir`, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(
                std::fs::read_dir(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
                    .map(|e| e.unwrap().path()),
            );
        } else if path.extension().is_some_and(|e| e == "yaml") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// The documents of a YAML text as JSON, skipping empty ones.
fn parse_documents(text: &str, what: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{what}: {e}")))
        .filter(|doc| !doc.is_null())
        .collect()
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    parse_documents(&text, &path.display().to_string())
}

fn is_ours(doc: &Value) -> bool {
    doc["apiVersion"] == ringwarden_crds::API_VERSION
}

/// Checks one ProbeSet or SLO document the way the API server and
/// standalone mode would, and returns it parsed.
fn check(what: &str, doc: &Value) -> Manifest {
    let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
    assert!(
        common::KINDS.contains(&kind.as_str()),
        "{what}: kind {kind:?} is not one of ours"
    );
    let errors = common::schema_errors(&kind, doc);
    assert!(errors.is_empty(), "{what}: {errors:?}");
    for outcome in common::evaluate(&kind, doc) {
        assert!(
            outcome.admits(),
            "{what}: {} refused by {:?}: {:?}",
            outcome.at,
            outcome.message,
            outcome.result
        );
    }
    let text = serde_yaml_ng::to_string(doc).unwrap();
    let mut parsed = manifest::parse_str(what, &text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(parsed.len(), 1, "{what}");
    parsed.remove(0)
}

/// [`check`] for a ClusterProbeSet document.
fn check_cluster(what: &str, doc: &Value) -> Manifest {
    let errors = common::schema_errors("ClusterProbeSet", doc);
    assert!(errors.is_empty(), "{what}: {errors:?}");
    for outcome in common::evaluate("ClusterProbeSet", doc) {
        assert!(
            outcome.admits(),
            "{what}: {} refused by {:?}",
            outcome.at,
            outcome.message
        );
    }
    let text = serde_yaml_ng::to_string(doc).unwrap();
    let mut parsed = manifest::parse_str(what, &text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(parsed.len(), 1, "{what}");
    parsed.remove(0)
}

/// Every SLO measures a probe of one of `probesets`.
fn check_slo_targets(what: &str, probesets: &[ProbeSet], slos: &[Slo]) {
    for slo in slos {
        let probe = slo
            .spec
            .find_probe(slo.metadata.namespace.as_deref(), probesets)
            .unwrap_or_else(|e| panic!("{what}: SLO {:?}: {e}", slo.metadata.name));
        assert_eq!(probe.name, slo.spec.probe);
    }
}

#[test]
fn every_example_manifest_is_valid() {
    for path in examples() {
        let docs = load_file(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(!docs.is_empty(), "{} holds no object", path.display());
        let (probesets, slos) = manifest::split(docs);
        for ps in probesets {
            assert_eq!(ps.spec.validate(), vec![], "{}", path.display());
        }
        for slo in slos {
            assert_eq!(slo.spec.validate(), vec![], "{}", path.display());
        }
    }
}

#[test]
fn every_example_manifest_passes_the_generated_schema_and_its_rules() {
    let mut checked = 0;
    for path in examples() {
        for doc in documents(&path) {
            check(&path.display().to_string(), &doc);
            checked += 1;
        }
    }
    assert!(checked >= 4, "only {checked} example objects");
}

#[test]
fn every_example_slo_measures_an_example_probe() {
    let mut probesets = Vec::new();
    let mut slos = Vec::new();
    for path in examples() {
        let (p, s) = manifest::split(load_file(&path).unwrap_or_else(|e| panic!("{e}")));
        probesets.extend(p);
        slos.extend(s);
    }
    assert!(!slos.is_empty(), "the examples hold no SLO");
    check_slo_targets("examples/", &probesets, &slos);
}

#[test]
fn the_examples_show_most_probe_kinds_and_both_indicators() {
    let mut kinds = std::collections::BTreeSet::new();
    let (mut latency, mut errors) = (0, 0);
    for path in examples() {
        let (probesets, slos) = manifest::split(load_file(&path).unwrap());
        for ps in probesets {
            kinds.extend(ps.spec.probes.iter().map(|p| p.kind.as_str()));
        }
        for slo in slos {
            match slo.spec.indicator.kind() {
                Some(IndicatorKind::Latency(_)) => latency += 1,
                Some(IndicatorKind::Errors) => errors += 1,
                None => panic!("{}: SLO without a valid indicator", path.display()),
            }
        }
    }
    for kind in [
        "syscalls",
        "tcpConnect",
        "tcpRetransmit",
        "runqueue",
        "uprobe",
    ] {
        assert!(kinds.contains(kind), "no example of kind {kind}");
    }
    assert!(
        latency > 0 && errors > 0,
        "latency: {latency}, errors: {errors}"
    );
}

// ------------------------------------------------------------------ GitOps

/// The directories of `examples/gitops` holding a kustomization.yaml.
fn kustomizations() -> Vec<PathBuf> {
    yaml_files(&gitops_dir())
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "kustomization.yaml"))
        .map(|p| p.parent().unwrap().to_path_buf())
        .collect()
}

/// Files that kustomizations use as patches: partial documents.
fn patch_files() -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    for dir in kustomizations() {
        let k = &documents(&dir.join("kustomization.yaml"))[0];
        let paths = k["patches"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["path"].as_str())
            .chain(
                k["patchesStrategicMerge"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str),
            );
        for path in paths {
            let file = dir.join(path);
            assert!(file.is_file(), "{}: no patch {path}", dir.display());
            out.insert(file.canonicalize().unwrap());
        }
    }
    out
}

/// What `kustomize build dir` renders (`make deps` installs kustomize).
fn kustomize(dir: &Path) -> Vec<Value> {
    let output = Command::new("kustomize")
        .arg("build")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run kustomize ({e}); the GitOps examples are rendered with \
                 `kustomize build`: run `make deps`, which installs it"
            )
        });
    assert!(
        output.status.success(),
        "kustomize build {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    parse_documents(
        &String::from_utf8(output.stdout).unwrap(),
        &dir.display().to_string(),
    )
}

fn gitops_label(path: &Path) -> String {
    path.strip_prefix(examples_dir().parent().unwrap())
        .unwrap_or(path)
        .display()
        .to_string()
}

#[test]
fn every_full_gitops_document_is_valid() {
    let patches = patch_files();
    assert!(!patches.is_empty(), "the overlays patch nothing");
    let mut checked = 0;
    for path in yaml_files(&gitops_dir()) {
        if patches.contains(&path.canonicalize().unwrap()) {
            continue;
        }
        for (i, doc) in documents(&path).iter().enumerate() {
            if is_ours(doc) {
                check(
                    &format!("{} (document {})", gitops_label(&path), i + 1),
                    doc,
                );
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 7,
        "only {checked} ProbeSets and SLOs in examples/gitops"
    );
}

#[test]
fn the_patches_of_the_overlays_are_partial_probesets_and_slos() {
    for path in patch_files() {
        for doc in documents(&path) {
            assert!(is_ours(&doc), "{}: patches only our kinds", path.display());
            assert!(
                doc["metadata"]["name"].is_string() && doc["metadata"]["namespace"].is_string(),
                "{}: a patch names its target",
                path.display()
            );
        }
    }
}

#[test]
fn every_gitops_overlay_renders_valid_probesets_and_slos() {
    let mut clusters = 0;
    for dir in kustomizations() {
        let label = gitops_label(&dir);
        let mut probesets = Vec::new();
        let mut slos = Vec::new();
        for (i, doc) in kustomize(&dir).iter().enumerate() {
            if !is_ours(doc) {
                continue;
            }
            match check(&format!("{label} (rendered document {})", i + 1), doc) {
                Manifest::ProbeSet(ps) => probesets.push(*ps),
                Manifest::Slo(slo) => slos.push(*slo),
            }
        }
        check_slo_targets(&label, &probesets, &slos);
        if dir.parent().is_some_and(|p| p.ends_with("clusters")) {
            clusters += 1;
            assert!(
                !probesets.is_empty() && !slos.is_empty(),
                "{label} renders no ProbeSet or no SLO"
            );
        }
    }
    assert!(clusters >= 2, "only {clusters} cluster overlays");
}

/// The rendered object of `kind` and `name` in a cluster overlay.
fn rendered(cluster: &str, kind: &str, name: &str) -> Value {
    kustomize(&gitops_dir().join("clusters").join(cluster))
        .into_iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("clusters/{cluster} renders no {kind} {name}"))
}

#[test]
fn the_overlays_change_what_they_say_they_change() {
    let base = |kind: &str, name: &str| {
        kustomize(&gitops_dir().join("base"))
            .into_iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap()
    };
    let baseline = base("ProbeSet", "node-baseline");
    assert_eq!(baseline["spec"]["ringBuffer"]["nodeBudget"], "8Mi");

    let staging = rendered("staging", "ProbeSet", "node-baseline");
    assert_eq!(staging["spec"]["ringBuffer"]["nodeBudget"], "2Mi");
    // A merge patch keeps the sibling fields.
    assert_eq!(staging["spec"]["ringBuffer"]["drainInterval"], "100ms");
    assert_eq!(staging["spec"]["probes"][0]["export"]["slowerThan"], "50ms");
    assert_eq!(staging["spec"]["probes"], {
        let mut p = baseline["spec"]["probes"].clone();
        p[0]["export"]["slowerThan"] = json!("50ms");
        p
    });
    assert_eq!(
        rendered("staging", "SLO", "node-runqueue-delay")["spec"]["target"],
        json!(99)
    );

    let prod = rendered("prod-eu-1", "ProbeSet", "node-baseline");
    assert_eq!(
        prod["spec"]["nodeSelector"],
        json!({"kubernetes.io/os": "linux", "node-restriction.kubernetes.io/pool": "general"})
    );
    assert_eq!(prod["spec"]["probes"][0]["peakEventRate"], json!(5000));
    assert_eq!(prod["spec"]["ringBuffer"]["nodeBudget"], "16Mi");
    assert_eq!(
        rendered("prod-eu-1", "SLO", "node-runqueue-delay")["spec"]["target"],
        json!(99.9)
    );
}

/// The Flux Kustomizations of `examples/gitops/flux/clusters`.
fn flux_kustomizations() -> Vec<(PathBuf, Value)> {
    let mut out = Vec::new();
    for path in yaml_files(&gitops_dir().join("flux/clusters")) {
        for doc in documents(&path) {
            if doc["apiVersion"] == "kustomize.toolkit.fluxcd.io/v1" {
                out.push((path.clone(), doc));
            }
        }
    }
    out
}

#[test]
fn flux_and_argo_cd_point_at_directories_that_exist() {
    let root = gitops_dir();
    let clusters: BTreeSet<String> = std::fs::read_dir(root.join("clusters"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let flux_clusters: BTreeSet<String> = std::fs::read_dir(root.join("flux/clusters"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        clusters, flux_clusters,
        "every cluster has a Flux entry point"
    );
    for (file, k) in flux_kustomizations() {
        let path = k["spec"]["path"].as_str().unwrap();
        assert!(
            root.join(path).join("kustomization.yaml").is_file(),
            "{}: path {path} holds no kustomization.yaml",
            file.display()
        );
        let cluster = file
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy();
        if let Some(name) = k["spec"]["postBuild"]["substitute"]["cluster_name"].as_str() {
            assert_eq!(name, cluster, "{}: clusterName", file.display());
        }
        if path.starts_with("./clusters/") {
            assert_eq!(
                path,
                format!("./clusters/{cluster}"),
                "{}: the cluster's own overlay",
                file.display()
            );
        }
    }
    let appsets = documents(&root.join("argocd/applicationset.yaml"));
    let chart = appsets
        .iter()
        .find(|a| a["spec"]["template"]["spec"]["source"]["path"] == "charts/ringwarden")
        .expect("an ApplicationSet installs the chart");
    let helm = &chart["spec"]["template"]["spec"]["source"]["helm"];
    assert_eq!(helm["releaseName"], "ringwarden");
    assert_eq!(helm["valuesObject"]["clusterName"], "{{.name}}");
    assert!(
        appsets
            .iter()
            .any(|a| a["spec"]["template"]["spec"]["source"]["path"] == "clusters/{{.name}}"),
        "an ApplicationSet applies clusters/<name>"
    );
    assert!(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../charts/ringwarden/Chart.yaml")
            .is_file()
    );
}

// ------------------------------------------------------- Flux health checks

/// Evaluates a Flux health expression: the object's top-level fields are
/// its variables.
fn flux_eval(expr: &str, object: &Value) -> Result<bool, String> {
    let env = common::env();
    let program = env
        .compile(expr)
        .map_err(|e| format!("does not compile: {e}"))?;
    let mut context = cel::Context::with_env(env.clone());
    for (name, value) in object.as_object().unwrap() {
        context.add_variable_from_value(name.as_str(), common::to_cel(value, &json!({})));
    }
    match program.execute(&context) {
        Ok(cel::Value::Bool(b)) => Ok(b),
        Ok(other) => Err(format!("evaluates to {other:?}")),
        Err(e) => Err(format!("evaluation error: {e}")),
    }
}

/// What Flux makes of an object: `inProgress`, then `failed`, then
/// `current`; the first true decides. None true, or an expression that
/// fails to evaluate (a field not there yet), means in progress.
fn flux_health(check: &Value, object: &Value) -> &'static str {
    for (field, verdict) in [
        ("inProgress", "InProgress"),
        ("failed", "Failed"),
        ("current", "Current"),
    ] {
        if let Some(expr) = check[field].as_str()
            && flux_eval(expr, object) == Ok(true)
        {
            return verdict;
        }
    }
    "InProgress"
}

fn condition(type_: &str, status: &str, reason: &str) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": "m",
           "lastTransitionTime": "2025-01-01T00:00:00Z", "observedGeneration": 2})
}

fn object(kind: &str, generation: i64, status: Option<Value>) -> Value {
    let mut o = json!({"apiVersion": ringwarden_crds::API_VERSION, "kind": kind,
                       "metadata": {"name": "x", "namespace": "y", "generation": generation},
                       "spec": {}});
    if kind.starts_with("Cluster") {
        o["metadata"].as_object_mut().unwrap().remove("namespace");
    }
    if let Some(s) = status {
        o["status"] = s;
    }
    o
}

#[test]
fn the_flux_health_checks_read_the_operators_conditions() {
    let all = flux_kustomizations();
    assert!(!all.is_empty());
    for (file, k) in all
        .iter()
        .filter(|(_, k)| k["spec"]["healthCheckExprs"].is_array())
    {
        let checks = k["spec"]["healthCheckExprs"].as_array().unwrap();
        let check_of = |kind: &str| {
            checks
                .iter()
                .find(|c| c["kind"] == kind && c["apiVersion"] == ringwarden_crds::API_VERSION)
                .unwrap_or_else(|| panic!("{}: no health check for {kind}", file.display()))
        };
        let status = |conditions: Vec<Value>| {
            Some(json!({"observedGeneration": 2, "conditions": conditions}))
        };
        let ready = condition("Ready", "True", "Planned");
        let valid = condition("Invalid", "False", "ValidSpec");
        // A ClusterProbeSet has a ProbeSet's status, and the same check.
        for kind in ["ProbeSet", "ClusterProbeSet"] {
            let check = check_of(kind);
            for (what, obj, expected) in [
                ("no status yet", object(kind, 2, None), "InProgress"),
                (
                    "planned, no report yet",
                    object(kind, 2, status(vec![ready.clone(), valid.clone()])),
                    "Current",
                ),
                (
                    "every node healthy",
                    object(
                        kind,
                        2,
                        status(vec![
                            ready.clone(),
                            valid.clone(),
                            condition("Degraded", "False", "NodesHealthy"),
                        ]),
                    ),
                    "Current",
                ),
                (
                    "a node failed to load a probe",
                    object(
                        kind,
                        2,
                        status(vec![
                            ready.clone(),
                            valid.clone(),
                            condition("Degraded", "True", "LoadFailed"),
                        ]),
                    ),
                    "Failed",
                ),
                (
                    "invalid",
                    object(
                        kind,
                        2,
                        status(vec![
                            condition("Ready", "False", "InvalidSpec"),
                            condition("Invalid", "True", "InvalidSpec"),
                        ]),
                    ),
                    "Failed",
                ),
                (
                    "stored, but the operator cannot decode it",
                    object(
                        kind,
                        2,
                        status(vec![
                            condition("Ready", "False", "Undecodable"),
                            condition("Invalid", "True", "Undecodable"),
                        ]),
                    ),
                    "Failed",
                ),
                (
                    "no matching nodes",
                    object(
                        kind,
                        2,
                        status(vec![
                            condition("Ready", "False", "NoMatchingNodes"),
                            valid.clone(),
                        ]),
                    ),
                    "Current",
                ),
                (
                    "an older generation",
                    object(kind, 3, status(vec![ready.clone(), valid.clone()])),
                    "InProgress",
                ),
            ] {
                assert_eq!(
                    flux_health(check, &obj),
                    expected,
                    "{}: {kind}, {what}",
                    file.display()
                );
            }
        }
        let slo = check_of("SLO");
        let evaluated = condition("Ready", "True", "Evaluated");
        for (what, obj, expected) in [
            ("no status yet", object("SLO", 2, None), "InProgress"),
            (
                "evaluated",
                object("SLO", 2, status(vec![evaluated.clone(), valid.clone()])),
                "Current",
            ),
            (
                "probe not found",
                object(
                    "SLO",
                    2,
                    status(vec![
                        condition("Ready", "False", "ProbeNotFound"),
                        condition("Invalid", "True", "ProbeNotFound"),
                    ]),
                ),
                "Failed",
            ),
            (
                "no threshold slot",
                object(
                    "SLO",
                    2,
                    status(vec![
                        condition("Ready", "False", "NoThresholdSlot"),
                        valid.clone(),
                    ]),
                ),
                "Failed",
            ),
            (
                "an older generation",
                object("SLO", 3, status(vec![evaluated.clone(), valid.clone()])),
                "InProgress",
            ),
        ] {
            assert_eq!(
                flux_health(slo, &obj),
                expected,
                "{}: SLO, {what}",
                file.display()
            );
        }
    }
}

#[test]
fn docs_gitops_shows_the_flux_health_checks_of_the_example() {
    let doc_path = examples_dir().join("../docs/gitops.md");
    let doc = std::fs::read_to_string(&doc_path).unwrap();
    for path in yaml_files(&gitops_dir().join("flux/clusters")) {
        let text = std::fs::read_to_string(&path).unwrap();
        let start = text
            .find("  healthCheckExprs:\n")
            .unwrap_or_else(|| panic!("{}: no healthCheckExprs", path.display()));
        assert!(
            doc.contains(&format!("```yaml\n{}```", &text[start..])),
            "docs/gitops.md does not show the healthCheckExprs of {} verbatim",
            path.display()
        );
    }
}

/// The README's quick start: a ClusterProbeSet with an SLO on it, and a
/// namespace with a workload of its own that its ProbeSet selects, so both
/// show live numbers on a fresh cluster.
#[test]
fn the_quick_start_gives_live_data_on_a_fresh_cluster() {
    let dir = examples_dir().join("quickstart");
    let mut probesets = Vec::new();
    let mut slos = Vec::new();
    let mut workloads = Vec::new();
    for path in yaml_files(&dir) {
        for doc in documents(&path) {
            let what = path.display().to_string();
            if !is_ours(&doc) {
                workloads.push(doc);
                continue;
            }
            // A ClusterProbeSet reads as a ProbeSet without a namespace.
            let parsed = if doc["kind"] == "ClusterProbeSet" {
                check_cluster(&what, &doc)
            } else {
                check(&what, &doc)
            };
            match parsed {
                Manifest::ProbeSet(p) => probesets.push(*p),
                Manifest::Slo(s) => slos.push(*s),
            }
        }
    }
    check_slo_targets("examples/quickstart", &probesets, &slos);
    // The node-wide one selects every node and every process.
    let wide = probesets
        .iter()
        .find(|p| p.metadata.namespace.is_none())
        .expect("a ClusterProbeSet");
    assert!(wide.spec.node_selector.is_empty() && wide.spec.pod_selector.is_none());
    // The namespaced one selects the pods of a Deployment in its namespace.
    let ns = probesets
        .iter()
        .find(|p| p.metadata.namespace.is_some())
        .expect("a ProbeSet");
    let deployment = workloads
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a workload");
    assert_eq!(
        deployment["metadata"]["namespace"].as_str(),
        ns.metadata.namespace.as_deref()
    );
    assert!(
        workloads.iter().any(|d| d["kind"] == "Namespace"
            && d["metadata"]["name"].as_str() == ns.metadata.namespace.as_deref()),
        "the quick start creates its namespace"
    );
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let selector = ns.spec.pod_selector.as_ref().expect("a pod selector");
    for (k, v) in selector.match_labels.iter().flatten() {
        assert_eq!(labels[k].as_str(), Some(v.as_str()), "{k}");
    }
    assert!(slos.len() >= 2, "an SLO on each");
}
