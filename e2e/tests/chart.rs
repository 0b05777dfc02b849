//! The Helm chart (`charts/ringwarden`): it lints and renders with the
//! default values and with every `ci/*-values.yaml`; every rendered object
//! passes the official Kubernetes schemas; and what it renders fits the
//! operator's code: flags it parses, a configuration file it accepts, RBAC
//! for exactly the calls it makes, the restricted Pod Security Standard.
//! Runs `helm` and `kubernetes-validate` (`make deps` installs both); needs
//! no cluster and no root.

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use clap::Parser;
use ringwarden_operator::{
    cli::Args, config::OperatorConfig, reconcile::node_labels::NodeSelectorLabels,
    reconcile::render, reconcile::world::Labels,
};
use serde::Deserialize;
use serde_json::{Value, json};

const RELEASE: &str = "ringwarden";
const NAMESPACE: &str = "ringwarden-system";
/// The oldest Kubernetes the chart supports (`kubeVersion` in Chart.yaml):
/// `helm template` renders for it, since helm's own default is older.
const OLDEST_KUBERNETES: &str = "1.30.0";
/// The API group of the prometheus-operator kinds, which kubernetes-validate
/// has no schema for; [`monitoring_objects_are_optional_and_use_only_metrics_ringwarden_exports`]
/// checks them instead.
const MONITORING_GROUP: &str = "monitoring.coreos.com/";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ lives in the repository")
        .to_path_buf()
}

fn chart() -> PathBuf {
    repo().join("charts/ringwarden")
}

/// Runs a tool the tests need; a missing tool fails the test and says how
/// to install it.
fn run(program: &str, args: &[OsString]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {program} ({e}); install it with `make deps` \
                 (scripts/deps.sh installs helm and kubernetes-validate)"
            )
        })
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The values the tests render: the defaults (no file) and each
/// `ci/*-values.yaml`.
fn value_files() -> Vec<Option<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart().join("ci"))
        .expect("charts/ringwarden/ci holds test values")
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with("-values.yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 2,
        "expected ci/full-values.yaml and ci/minimal-values.yaml"
    );
    std::iter::once(None)
        .chain(files.into_iter().map(Some))
        .collect()
}

fn ci(name: &str) -> Option<PathBuf> {
    Some(chart().join("ci").join(name))
}

fn describe(values: &Option<PathBuf>) -> String {
    values
        .as_ref()
        .map_or("the default values".into(), |p| p.display().to_string())
}

/// `helm template` with a values file and `--set` arguments.
fn template(values: &Option<PathBuf>, sets: &[&str]) -> Result<String, String> {
    let mut args: Vec<OsString> = vec![
        "template".into(),
        RELEASE.into(),
        chart().into(),
        "--namespace".into(),
        NAMESPACE.into(),
        "--kube-version".into(),
        OLDEST_KUBERNETES.into(),
    ];
    if let Some(file) = values {
        args.extend(["--values".into(), file.into()]);
    }
    for set in sets {
        args.extend(["--set".into(), (*set).into()]);
    }
    let output = run("helm", &args);
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(text(&output))
    }
}

/// The rendered objects, as JSON.
fn render_objects(values: &Option<PathBuf>, sets: &[&str]) -> Vec<Value> {
    let yaml = template(values, sets)
        .unwrap_or_else(|e| panic!("helm template failed with {}:\n{e}", describe(values)));
    parse_documents(&yaml)
}

fn parse_documents(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("bad YAML: {e}\n{yaml}")))
        .filter(|v| !v.is_null())
        .collect()
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn one<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    match of_kind(objects, kind).as_slice() {
        [o] => o,
        other => panic!("expected one {kind}, found {}", other.len()),
    }
}

fn named<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} among the rendered objects"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn operator_deployment(objects: &[Value]) -> &Value {
    one(objects, "Deployment")
}

fn operator_container(objects: &[Value]) -> &Value {
    &operator_deployment(objects)["spec"]["template"]["spec"]["containers"][0]
}

/// The operator's command line as the chart gives it.
fn operator_args(objects: &[Value]) -> Args {
    let args = strings(&operator_container(objects)["args"]);
    Args::try_parse_from(std::iter::once("ringwarden-operator".to_string()).chain(args.clone()))
        .unwrap_or_else(|e| panic!("the operator refuses the chart's arguments {args:?}:\n{e}"))
}

/// The operator's configuration file as the chart gives it.
fn operator_config(objects: &[Value]) -> OperatorConfig {
    let args = operator_args(objects);
    let path = args.config.expect("the chart passes --config");
    let (dir, file) = (
        path.parent().unwrap().to_str().unwrap(),
        path.file_name().unwrap().to_str().unwrap(),
    );
    let mounts = operator_container(objects)["volumeMounts"]
        .as_array()
        .unwrap();
    let mount = mounts
        .iter()
        .find(|m| m["mountPath"] == dir)
        .unwrap_or_else(|| panic!("nothing is mounted at {dir}, where --config points"));
    let volume = operator_deployment(objects)["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    let config_map = named(
        objects,
        "ConfigMap",
        volume["configMap"]["name"].as_str().unwrap(),
    );
    let text = config_map["data"][file]
        .as_str()
        .unwrap_or_else(|| panic!("the operator's ConfigMap has no key {file}"));
    OperatorConfig::parse(text)
        .unwrap_or_else(|e| panic!("the operator refuses the chart's configuration: {e}\n{text}"))
}

/// Every pod spec among the objects, with where it came from.
fn pod_specs(objects: &[Value]) -> Vec<(String, &Value)> {
    objects
        .iter()
        .filter_map(|o| {
            let spec = match o["kind"].as_str()? {
                "Pod" => &o["spec"],
                "Deployment" | "DaemonSet" | "StatefulSet" | "ReplicaSet" | "Job" => {
                    &o["spec"]["template"]["spec"]
                }
                "CronJob" => &o["spec"]["jobTemplate"]["spec"]["template"]["spec"],
                _ => return None,
            };
            Some((format!("{} {}", o["kind"], o["metadata"]["name"]), spec))
        })
        .collect()
}

fn containers(pod: &Value) -> Vec<&Value> {
    ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| pod[*k].as_array().into_iter().flatten())
        .collect()
}

// ---------------------------------------------------------------- lint, schemas

#[test]
fn the_chart_refuses_kubernetes_older_than_its_crd_rules_need() {
    let args: Vec<OsString> = vec![
        "template".into(),
        RELEASE.into(),
        chart().into(),
        "--kube-version".into(),
        "1.29.9".into(),
    ];
    let output = run("helm", &args);
    assert!(
        !output.status.success() && text(&output).contains(">=1.30.0-0"),
        "helm template for Kubernetes 1.29 should fail on the chart's kubeVersion:\n{}",
        text(&output)
    );
}

#[test]
fn the_chart_lints_with_default_and_ci_values() {
    for values in value_files() {
        let mut args: Vec<OsString> = vec!["lint".into(), "--strict".into(), chart().into()];
        if let Some(file) = &values {
            args.extend(["--values".into(), file.into()]);
        }
        let output = run("helm", &args);
        assert!(
            output.status.success(),
            "helm lint --strict failed with {}:\n{}",
            describe(&values),
            text(&output)
        );
    }
}

/// `kubernetes-validate --strict` on rendered YAML: every object passes,
/// and only the prometheus-operator kinds lack a schema.
fn kubernetes_validate(yaml: &str, what: &str, version: &str) {
    let objects = parse_documents(yaml);
    let file = std::env::temp_dir().join(format!(
        "ringwarden-chart-{}-{}-{version}.yaml",
        std::process::id(),
        what.replace(['/', ' '], "_")
    ));
    std::fs::write(&file, yaml).unwrap();
    let output = run(
        "kubernetes-validate",
        &[
            "--strict".into(),
            "--kubernetes-version".into(),
            version.into(),
            file.clone().into(),
        ],
    );
    let _ = std::fs::remove_file(&file);
    let out = text(&output);
    assert!(
        output.status.success() && !out.contains("ERROR"),
        "kubernetes-validate {version} refused objects rendered with {what}:\n{out}"
    );
    for o in &objects {
        let api = o["apiVersion"].as_str().unwrap_or_default();
        let id = format!(
            "{}/{}",
            o["kind"].as_str().unwrap_or_default().to_lowercase(),
            o["metadata"]["name"].as_str().unwrap_or_default()
        );
        if api.starts_with(MONITORING_GROUP) {
            continue;
        }
        assert!(
            out.contains(&format!("passed for resource {id} against version")),
            "kubernetes-validate {version} did not check {id} ({api}) rendered with {what}:\n{out}"
        );
    }
    for line in out.lines().filter(|l| l.contains("Couldn't find schema")) {
        assert!(
            line.contains(&format!("api version {MONITORING_GROUP}")),
            "no official schema for an object rendered with {what}: {line}"
        );
    }
}

#[test]
fn every_rendered_object_passes_the_official_kubernetes_schemas() {
    for values in value_files() {
        let yaml = template(&values, &[]).unwrap();
        // The version k8s-openapi is built for, and the newest the tool knows.
        for version in ["1.33.0", "1.37.0"] {
            kubernetes_validate(&yaml, &describe(&values), version);
        }
    }
}

// ---------------------------------------------------------------- CRDs

#[test]
fn the_chart_crds_are_the_generated_crds() {
    let generated = repo().join("crds/ringwarden.dev_crds.yaml");
    let copy = chart().join("files/crds.yaml");
    let want = std::fs::read_to_string(&generated).unwrap();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&copy, &want).unwrap();
    }
    let have = std::fs::read_to_string(&copy).unwrap_or_default();
    assert!(
        have == want,
        "{} differs from {}; after `make crds`, copy it with \
         `UPDATE_GOLDEN=1 cargo test -p ringwarden-e2e --test chart` and commit both",
        copy.display(),
        generated.display()
    );
}

#[test]
fn the_chart_installs_the_crds_and_keeps_them_on_uninstall() {
    let generated: BTreeMap<String, Value> = parse_documents(
        &std::fs::read_to_string(repo().join("crds/ringwarden.dev_crds.yaml")).unwrap(),
    )
    .into_iter()
    .map(|crd| (crd["metadata"]["name"].as_str().unwrap().to_string(), crd))
    .collect();
    assert_eq!(
        generated.keys().collect::<Vec<_>>(),
        [
            "clusterprobesets.ringwarden.dev",
            "probesets.ringwarden.dev",
            "slos.ringwarden.dev"
        ]
    );

    let objects = render_objects(&None, &[]);
    let crds = of_kind(&objects, "CustomResourceDefinition");
    assert_eq!(crds.len(), 3, "every CRD is installed by default");
    for crd in crds {
        let name = crd["metadata"]["name"].as_str().unwrap();
        assert_eq!(
            crd["spec"], generated[name]["spec"],
            "{name}: the chart changes the generated spec"
        );
        assert_eq!(
            crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
            "{name}: uninstalling must not delete every ProbeSet and SLO"
        );
    }

    let objects = render_objects(&ci("full-values.yaml"), &[]);
    for crd in of_kind(&objects, "CustomResourceDefinition") {
        assert!(
            crd["metadata"]["annotations"]
                .get("helm.sh/resource-policy")
                .is_none(),
            "crds.keep=false drops the keep policy"
        );
    }
    let objects = render_objects(&ci("minimal-values.yaml"), &[]);
    assert!(of_kind(&objects, "CustomResourceDefinition").is_empty());
}

// ---------------------------------------------------------------- pod security

#[test]
fn no_rendered_pod_is_privileged_or_shares_the_host() {
    for values in value_files() {
        let objects = render_objects(&values, &[]);
        let pods = pod_specs(&objects);
        assert!(!pods.is_empty());
        for (what, pod) in pods {
            let context = format!("{what} rendered with {}", describe(&values));
            for host in ["hostPID", "hostIPC", "hostNetwork"] {
                assert_ne!(pod[host], json!(true), "{context}: {host}");
            }
            for volume in pod["volumes"].as_array().into_iter().flatten() {
                assert!(volume.get("hostPath").is_none(), "{context}: {volume}");
            }
            for c in containers(pod) {
                let sc = &c["securityContext"];
                assert_ne!(sc["privileged"], json!(true), "{context}: privileged");
                assert!(
                    strings(&sc["capabilities"]["add"]).is_empty(),
                    "{context}: adds capabilities"
                );
                for port in c["ports"].as_array().into_iter().flatten() {
                    assert!(port.get("hostPort").is_none(), "{context}: hostPort");
                }
            }
        }
    }
}

/// The checks of the restricted Pod Security Standard (Kubernetes ≥ 1.25),
/// plus a read-only root filesystem.
fn restricted_violations(pod: &Value) -> Vec<String> {
    let mut v = Vec::new();
    let psc = &pod["securityContext"];
    const VOLUMES: [&str; 8] = [
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ];
    for volume in pod["volumes"].as_array().into_iter().flatten() {
        for key in volume.as_object().unwrap().keys() {
            if key != "name" && !VOLUMES.contains(&key.as_str()) {
                v.push(format!("volume type {key}"));
            }
        }
    }
    for host in ["hostPID", "hostIPC", "hostNetwork"] {
        if pod[host] == json!(true) {
            v.push(host.into());
        }
    }
    if psc.get("sysctls").is_some() {
        v.push("sysctls".into());
    }
    let seccomp_ok = |sc: &Value| {
        matches!(
            sc["seccompProfile"]["type"].as_str(),
            Some("RuntimeDefault" | "Localhost")
        )
    };
    for c in containers(pod) {
        let name = c["name"].as_str().unwrap_or("?");
        let sc = &c["securityContext"];
        if sc["privileged"] == json!(true) {
            v.push(format!("{name}: privileged"));
        }
        if sc["allowPrivilegeEscalation"] != json!(false) {
            v.push(format!("{name}: allowPrivilegeEscalation is not false"));
        }
        if !(sc["runAsNonRoot"] == json!(true)
            || (sc.get("runAsNonRoot").is_none() && psc["runAsNonRoot"] == json!(true)))
        {
            v.push(format!("{name}: runAsNonRoot is not true"));
        }
        if sc["runAsUser"] == json!(0) || psc["runAsUser"] == json!(0) {
            v.push(format!("{name}: runs as uid 0"));
        }
        if !(seccomp_ok(sc) || (sc.get("seccompProfile").is_none() && seccomp_ok(psc))) {
            v.push(format!(
                "{name}: seccomp is not RuntimeDefault or Localhost"
            ));
        }
        if !strings(&sc["capabilities"]["drop"]).contains(&"ALL".to_string()) {
            v.push(format!("{name}: does not drop ALL capabilities"));
        }
        for cap in strings(&sc["capabilities"]["add"]) {
            if cap != "NET_BIND_SERVICE" {
                v.push(format!("{name}: adds {cap}"));
            }
        }
        if sc["procMount"].as_str().is_some_and(|m| m != "Default") {
            v.push(format!("{name}: procMount"));
        }
        for port in c["ports"].as_array().into_iter().flatten() {
            if port.get("hostPort").is_some() {
                v.push(format!("{name}: hostPort"));
            }
        }
        if sc["readOnlyRootFilesystem"] != json!(true) {
            v.push(format!("{name}: the root filesystem is writable"));
        }
    }
    v
}

#[test]
fn the_operator_pod_meets_the_restricted_pod_security_standard() {
    for values in value_files() {
        let objects = render_objects(&values, &[]);
        let pod = &operator_deployment(&objects)["spec"]["template"]["spec"];
        let violations = restricted_violations(pod);
        assert!(
            violations.is_empty(),
            "the operator pod rendered with {} breaks the restricted standard: {violations:#?}",
            describe(&values)
        );
    }
}

#[test]
fn the_restricted_check_catches_what_it_should() {
    let good = json!({
        "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "c", "securityContext": {
            "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]}}}],
    });
    assert_eq!(restricted_violations(&good), Vec::<String>::new());
    for (path, value) in [
        ("/securityContext/runAsNonRoot", json!(false)),
        ("/securityContext/seccompProfile/type", json!("Unconfined")),
        (
            "/containers/0/securityContext/allowPrivilegeEscalation",
            json!(true),
        ),
        (
            "/containers/0/securityContext/capabilities/drop",
            json!(["NET_RAW"]),
        ),
        ("/containers/0/securityContext/privileged", json!(true)),
        ("/hostPID", json!(true)),
        (
            "/volumes",
            json!([{"name": "h", "hostPath": {"path": "/"}}]),
        ),
    ] {
        let mut bad = good.clone();
        let (parent, key) = path.rsplit_once('/').unwrap();
        bad.pointer_mut(parent)
            .unwrap_or_else(|| panic!("{parent}"))
            .as_object_mut()
            .unwrap()
            .insert(key.into(), value);
        assert!(!restricted_violations(&bad).is_empty(), "{path} passed");
    }
}

// ---------------------------------------------------------------- RBAC

/// One permission: (role kind, API group, resource, resource name or `*`, verb).
type Grant = (&'static str, String, String, String, String);

/// What operator/src calls, which the chart must grant and nothing more.
/// A server-side apply that creates its object is also authorized as
/// `create` on that name.
/// - wiring.rs: watchers (list, then watch) of ProbeSets, SLOs and node
///   metadata in all namespaces;
/// - controller.rs: `patch_status` (server-side apply) of a ProbeSet's
///   status; kube's event `Recorder` creates Events in the ProbeSet's
///   namespace and patches repeated ones;
/// - publish.rs: `patch_status` of an SLO's status; per SLO a snapshot
///   ConfigMap in its own namespace, named by a hash (`get_opt`, apply,
///   `delete`, and `list_metadata` to find stale ones);
/// - auth.rs: `create` of TokenReviews for agents' tokens, and `get_opt`
///   of the agent pod a token names without its node, in its own
///   namespace;
/// - agent.rs: `get_opt` and server-side apply of the agent ConfigMap and
///   DaemonSet in its own namespace;
/// - lease.rs: `get_opt`, `create` and `replace` (update) of the Lease; a
///   create carries its name only in the body, so RBAC cannot narrow it.
///
/// - ingest/pki.rs: `get_opt`, `create` and `replace` of its own TLS Secret,
///   when it keeps its own CA (not with --tls-cert-file or plaintext).
fn expected_grants(
    ds: &str,
    owner: Option<&str>,
    lease: Option<&str>,
    tls_secret: Option<&str>,
) -> BTreeSet<Grant> {
    let mut rows: Vec<(&'static str, &str, &str, &str, &str)> = vec![
        ("ClusterRole", "ringwarden.dev", "probesets", "*", "list"),
        ("ClusterRole", "ringwarden.dev", "probesets", "*", "watch"),
        ("ClusterRole", "ringwarden.dev", "slos", "*", "list"),
        ("ClusterRole", "ringwarden.dev", "slos", "*", "watch"),
        (
            "ClusterRole",
            "ringwarden.dev",
            "probesets/status",
            "*",
            "patch",
        ),
        ("ClusterRole", "ringwarden.dev", "slos/status", "*", "patch"),
        // wiring.rs and controller.rs: ClusterProbeSets, their status, and
        // the namespace labels their namespaceSelector is resolved against.
        (
            "ClusterRole",
            "ringwarden.dev",
            "clusterprobesets",
            "*",
            "list",
        ),
        (
            "ClusterRole",
            "ringwarden.dev",
            "clusterprobesets",
            "*",
            "watch",
        ),
        (
            "ClusterRole",
            "ringwarden.dev",
            "clusterprobesets/status",
            "*",
            "patch",
        ),
        ("ClusterRole", "", "namespaces", "*", "list"),
        ("ClusterRole", "", "namespaces", "*", "watch"),
        ("ClusterRole", "", "nodes", "*", "list"),
        ("ClusterRole", "", "nodes", "*", "watch"),
        ("ClusterRole", "events.k8s.io", "events", "*", "create"),
        ("ClusterRole", "events.k8s.io", "events", "*", "patch"),
        (
            "ClusterRole",
            "authentication.k8s.io",
            "tokenreviews",
            "*",
            "create",
        ),
        ("Role", "", "pods", "*", "get"),
        ("Role", "", "configmaps", "*", "get"),
        ("Role", "", "configmaps", "*", "list"),
        ("Role", "", "configmaps", "*", "create"),
        ("Role", "", "configmaps", "*", "patch"),
        ("Role", "", "configmaps", "*", "delete"),
        ("Role", "apps", "daemonsets", ds, "get"),
        ("Role", "apps", "daemonsets", ds, "create"),
        ("Role", "apps", "daemonsets", ds, "patch"),
    ];
    if let Some(owner) = owner {
        // wiring.rs: the owner Deployment, read once at start.
        rows.push(("Role", "apps", "deployments", owner, "get"));
    }
    if let Some(secret) = tls_secret {
        rows.extend([
            ("Role", "", "secrets", secret, "get"),
            ("Role", "", "secrets", secret, "update"),
            ("Role", "", "secrets", "*", "create"),
        ]);
    }
    if let Some(lease) = lease {
        rows.extend([
            ("Role", "coordination.k8s.io", "leases", lease, "get"),
            ("Role", "coordination.k8s.io", "leases", lease, "update"),
            ("Role", "coordination.k8s.io", "leases", "*", "create"),
        ]);
    }
    rows.into_iter()
        .map(|(k, g, r, n, v)| (k, g.into(), r.into(), n.into(), v.into()))
        .collect()
}

/// Every permission the roles bound to `account` grant.
fn granted(objects: &[Value], account: &str) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for (binding_kind, role_kind) in [
        ("ClusterRoleBinding", "ClusterRole"),
        ("RoleBinding", "Role"),
    ] {
        for binding in of_kind(objects, binding_kind) {
            let binds_account = binding["subjects"].as_array().unwrap().iter().any(|s| {
                s["kind"] == "ServiceAccount" && s["name"] == account && s["namespace"] == NAMESPACE
            });
            if !binds_account {
                continue;
            }
            assert_eq!(binding["roleRef"]["kind"], role_kind);
            if role_kind == "Role" {
                assert_eq!(binding["metadata"]["namespace"], NAMESPACE);
            }
            let role = named(
                objects,
                role_kind,
                binding["roleRef"]["name"].as_str().unwrap(),
            );
            for rule in role["rules"].as_array().unwrap() {
                let names = strings(&rule["resourceNames"]);
                let names = if names.is_empty() {
                    vec!["*".to_string()]
                } else {
                    names
                };
                for group in strings(&rule["apiGroups"]) {
                    for resource in strings(&rule["resources"]) {
                        for name in &names {
                            for verb in strings(&rule["verbs"]) {
                                out.insert((
                                    role_kind,
                                    group.clone(),
                                    resource.clone(),
                                    name.clone(),
                                    verb,
                                ));
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

#[test]
fn rbac_grants_the_operator_exactly_the_calls_its_code_makes() {
    for values in value_files() {
        let objects = render_objects(&values, &[]);
        let args = operator_args(&objects);
        let agent = operator_config(&objects).agent;
        let account =
            operator_deployment(&objects)["spec"]["template"]["spec"]["serviceAccountName"]
                .as_str()
                .expect("the operator runs as its own ServiceAccount");
        named(&objects, "ServiceAccount", account);
        let owner = args.owner_deployment.as_deref();
        assert_eq!(
            owner,
            operator_deployment(&objects)["metadata"]["name"].as_str(),
            "the operator owns the agent objects through its own Deployment"
        );
        let keeps_own_ca =
            args.tls_cert_file.is_none() && !args.insecure_plaintext_for_local_development;
        let want = expected_grants(
            &agent.name,
            owner,
            args.leader_elect.then_some(args.lease_name.as_str()),
            keeps_own_ca.then_some(args.tls_secret.as_str()),
        );
        let have = granted(&objects, account);
        assert!(
            have == want,
            "RBAC of the operator rendered with {}:\nnot needed: {:#?}\nmissing: {:#?}",
            describe(&values),
            have.difference(&want).collect::<Vec<_>>(),
            want.difference(&have).collect::<Vec<_>>()
        );
        assert_eq!(
            args.namespace, NAMESPACE,
            "the Role's namespace is the operator's"
        );

        // The agents (node-agent/src/node.rs, pods.rs) read their node,
        // and list and watch the pods on it, nothing else.
        let agent_account = named(&objects, "ServiceAccount", &agent.service_account_name);
        assert_eq!(agent_account["automountServiceAccountToken"], json!(true));
        let agent_want: BTreeSet<Grant> = [
            ("ClusterRole", "", "nodes", "*", "get"),
            ("ClusterRole", "", "pods", "*", "list"),
            ("ClusterRole", "", "pods", "*", "watch"),
        ]
        .into_iter()
        .map(|(k, g, r, n, v)| {
            (
                k,
                g.to_string(),
                r.to_string(),
                n.to_string(),
                v.to_string(),
            )
        })
        .collect();
        assert_eq!(granted(&objects, &agent.service_account_name), agent_want);

        for role in of_kind(&objects, "ClusterRole")
            .into_iter()
            .chain(of_kind(&objects, "Role"))
        {
            for rule in role["rules"].as_array().unwrap() {
                for field in ["apiGroups", "resources", "verbs"] {
                    assert!(
                        !strings(&rule[field]).contains(&"*".to_string()),
                        "{} {} uses a wildcard in {field}",
                        role["kind"],
                        role["metadata"]["name"]
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------- operator wiring

#[test]
fn the_operator_accepts_the_flags_and_configuration_the_chart_gives_it() {
    for values in value_files() {
        let context = describe(&values);
        let objects = render_objects(&values, &[]);
        let args = operator_args(&objects);
        assert_eq!(args.validate(), Ok(()), "{context}");
        let container = operator_container(&objects);
        let env: BTreeMap<String, &Value> = container["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["name"].as_str().unwrap().to_string(), e))
            .collect();
        assert_eq!(
            env["RINGWARDEN_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name",
            "{context}: each replica names itself in the Lease"
        );
        let replicas = operator_deployment(&objects)["spec"]["replicas"]
            .as_u64()
            .unwrap();
        assert!(args.leader_elect || replicas == 1, "{context}");

        // Ports: the metrics and agent addresses are the "metrics" and
        // "grpc" container ports, and the Service forwards both by name.
        let ports: BTreeMap<&str, &Value> = container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["name"].as_str().unwrap(), &p["containerPort"]))
            .collect();
        assert_eq!(
            json!(args.metrics_addr.port()),
            *ports["metrics"],
            "{context}"
        );
        assert_eq!(json!(args.agent_addr.port()), *ports["grpc"], "{context}");
        assert!(
            args.query_addr.ip().is_loopback(),
            "{context}: the query service stays behind port-forward"
        );
        let service = one(&objects, "Service");
        for port in service["spec"]["ports"].as_array().unwrap() {
            let target = port["targetPort"].as_str().unwrap();
            assert!(ports.contains_key(target), "{context}: {port}");
        }
        let selector = service["spec"]["selector"].as_object().unwrap();
        let pod_labels = &operator_deployment(&objects)["spec"]["template"]["metadata"]["labels"];
        for (k, v) in selector {
            assert_eq!(
                &pod_labels[k], v,
                "{context}: the Service selects the operator"
            );
        }
        for probe in ["livenessProbe", "readinessProbe"] {
            assert_eq!(container[probe]["httpGet"]["port"], "metrics", "{context}");
        }

        // The configuration file: the agent DaemonSet the operator renders
        // from it runs as the chart's agent ServiceAccount.
        let config = operator_config(&objects);
        let no_selectors: [&Labels; 0] = [];
        let ds = render::daemon_set(&no_selectors, &config.agent, &args.namespace).unwrap();
        let ds = serde_json::to_value(&ds).unwrap();
        let account = ds["spec"]["template"]["spec"]["serviceAccountName"]
            .as_str()
            .unwrap();
        let sa = named(&objects, "ServiceAccount", account);
        assert_eq!(sa["metadata"]["namespace"], args.namespace, "{context}");
        assert_eq!(ds["metadata"]["namespace"], NAMESPACE);
        // BPF maps are charged to the agent's memory cgroup: its limit
        // holds the whole node budget and the agent's own working set.
        let limit =
            ds["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
                .as_str()
                .unwrap();
        let budget = ringwarden_core::quantity::parse_bytes(&config.agent.node_budget).unwrap();
        let working =
            ringwarden_core::quantity::parse_bytes(&config.agent.working_set_memory).unwrap();
        assert_eq!(
            ringwarden_core::quantity::parse_bytes(limit).unwrap(),
            budget + working,
            "{context}"
        );
        assert!(
            config.agent.image.starts_with("ringwarden/agent:v")
                || config.agent.image.starts_with("registry.example/"),
            "{context}: {}",
            config.agent.image
        );

        // The agents' PodMonitor selects the pods of that DaemonSet.
        if let Some(monitor) = of_kind(&objects, "PodMonitor").first() {
            let labels = &ds["spec"]["template"]["metadata"]["labels"];
            for (k, v) in monitor["spec"]["selector"]["matchLabels"]
                .as_object()
                .unwrap()
            {
                assert_eq!(&labels[k], v, "{context}: the PodMonitor misses the agents");
            }
            let port = &monitor["spec"]["podMetricsEndpoints"][0]["port"];
            assert_eq!(
                ds["spec"]["template"]["spec"]["containers"][0]["ports"][0]["name"], *port,
                "{context}"
            );
        }
    }
}

#[test]
fn agent_settings_reach_the_operator_configuration() {
    let objects = render_objects(&ci("full-values.yaml"), &[]);
    let agent = operator_config(&objects).agent;
    assert_eq!(agent.image, "registry.example/ringwarden/agent:v0.1.0-rc.1");
    assert_eq!(agent.image_pull_policy, "Always");
    assert_eq!(
        agent.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert_eq!(agent.metrics_port, 9465);
    assert!(agent.metrics_address_labels);
    assert_eq!(agent.node_selector_labels, NodeSelectorLabels::Any);
    assert_eq!(agent.tolerations.len(), 1);
    assert_eq!(agent.tolerations[0].key.as_deref(), Some("dedicated"));
    assert_eq!(agent.name, "rw-agent");
    // The node budget reaches the operator, which derives the agents'
    // memory limit from it: budget + working set.
    assert_eq!(agent.resources.limits, None);
    assert_eq!(agent.node_budget, "768Mi");
    assert_eq!(agent.memory_limit_bytes(), (768 + 256) << 20);
    let sa = named(&objects, "ServiceAccount", "rw-agent");
    assert_eq!(sa["imagePullSecrets"], json!([{"name": "regcred"}]));

    // Operator settings arrive as flags.
    let args = operator_args(&objects);
    assert_eq!(args.snapshot_interval, Duration::from_secs(30));
    assert_eq!(args.lease_name, "rw-leader");
    assert_eq!(args.lease_duration, Duration::from_secs(30));
    assert_eq!(args.agent_addr.port(), 9443);
    assert_eq!(args.log, "ringwarden_operator=debug,info");

    // A digest pins the operator image.
    assert_eq!(
        operator_container(&objects)["image"],
        "registry.example/ringwarden/operator@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    );
    // A config change restarts the operator, which reads it once.
    let changed = render_objects(&ci("full-values.yaml"), &["agent.metricsPort=9466"]);
    let checksum = |o: &[Value]| {
        operator_deployment(o)["spec"]["template"]["metadata"]["annotations"]
            ["ringwarden.dev/config-checksum"]
            .clone()
    };
    assert_ne!(checksum(&objects), checksum(&changed));

    let defaults = operator_config(&render_objects(&None, &[])).agent;
    assert_eq!(defaults.image, "ringwarden/agent:v0.1.0");
    assert_eq!(defaults.priority_class_name, None);
    assert_eq!(defaults.tolerations.len(), 1, "every taint is tolerated");
}

/// Least exposure by default: probes are handed by labels a node cannot set
/// itself, the agents' `/metrics` name no peer address, and only the
/// monitoring namespace may scrape the operator and the agents.
#[test]
fn the_default_install_hands_probes_by_restricted_labels_and_exposes_no_peers() {
    let objects = render_objects(&None, &[]);
    let agent = operator_config(&objects).agent;
    assert_eq!(agent.node_selector_labels, NodeSelectorLabels::Restricted);
    assert!(!agent.metrics_address_labels);
    let ds = ringwarden_operator::reconcile::render::daemon_set(&[], &agent, NAMESPACE).unwrap();
    let env = ds.spec.unwrap().template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap_or_default();
    assert!(
        env.iter()
            .any(|e| e.name == "RINGWARDEN_METRICS_WITHOUT_ADDRESSES"
                && e.value.as_deref() == Some("true")),
        "{env:?}"
    );
    let monitoring = json!([{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "monitoring"}}}]);
    for policy in of_kind(&objects, "NetworkPolicy") {
        let metrics = policy["spec"]["ingress"]
            .as_array()
            .unwrap()
            .last()
            .unwrap();
        assert_eq!(metrics["from"], monitoring, "{policy}");
    }
    // The namespace is a knob; a value outside the two policies is refused.
    let objects = render_objects(
        &None,
        &[
            "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name=prometheus",
        ],
    );
    for policy in of_kind(&objects, "NetworkPolicy") {
        let metrics = policy["spec"]["ingress"]
            .as_array()
            .unwrap()
            .last()
            .unwrap();
        assert_eq!(
            metrics["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
            "prometheus"
        );
    }
    let refused = template(&None, &["agent.nodeSelectorLabels=anything"]).unwrap_err();
    assert!(refused.contains("nodeSelectorLabels"), "{refused}");
}

#[test]
fn cluster_name_reaches_the_operator_and_labels_every_scrape() {
    let objects = render_objects(&ci("full-values.yaml"), &[]);
    let env = &operator_container(&objects)["env"];
    assert!(
        env.as_array()
            .unwrap()
            .contains(&json!({"name": "RINGWARDEN_CLUSTER_NAME", "value": "prod-eu-1"})),
        "{env}"
    );
    let relabel =
        json!([{"targetLabel": "cluster", "replacement": "prod-eu-1", "action": "replace"}]);
    let sm = one(&objects, "ServiceMonitor");
    let pm = one(&objects, "PodMonitor");
    for endpoint in [
        &sm["spec"]["endpoints"][0],
        &pm["spec"]["podMetricsEndpoints"][0],
    ] {
        assert_eq!(endpoint["relabelings"], relabel);
        // The agents' own namespace and node labels must survive the scrape.
        assert_eq!(endpoint["honorLabels"], json!(true));
    }

    // The operator takes the names the values schema lets through (it
    // writes them into every status), and refuses the others.
    for (name, ok) in [
        ("prod-eu-1", true),
        ("eu_west.2", true),
        ("prod east", false),
        ("-prod", false),
    ] {
        let parsed = Args::try_parse_from(["ringwarden-operator", "--cluster-name", name]);
        assert_eq!(parsed.is_ok(), ok, "{name}: {parsed:?}");
    }

    let objects = render_objects(
        &None,
        &["clusterName=", "monitoring.podMonitor.enabled=true"],
    );
    let env = &operator_container(&objects)["env"];
    assert!(!env.to_string().contains("RINGWARDEN_CLUSTER_NAME"));
    assert!(
        one(&objects, "PodMonitor")["spec"]["podMetricsEndpoints"][0]
            .get("relabelings")
            .is_none()
    );
}

// ---------------------------------------------------------------- monitoring

/// Metric names ringwarden exports: every `"ringwarden_…"` string literal in
/// the agent's and the operator's sources.
fn exported_metrics() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for dir in ["node-agent/src", "operator/src"] {
        let mut stack = vec![repo().join(dir)];
        while let Some(path) = stack.pop() {
            if path.is_dir() {
                stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            } else if path.extension().is_some_and(|e| e == "rs") {
                let source = std::fs::read_to_string(&path).unwrap();
                for (i, _) in source.match_indices("\"ringwarden_") {
                    let rest = &source[i + 1..];
                    let end = rest
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(rest.len());
                    names.insert(rest[..end].to_string());
                }
            }
        }
    }
    names
}

/// The `ringwarden…` metric names a PromQL expression reads.
fn metrics_in(expr: &str) -> BTreeSet<String> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    expr.match_indices("ringwarden")
        .filter(|(i, _)| !expr[..*i].ends_with(ident))
        .map(|(i, _)| {
            let rest = &expr[i..];
            rest[..rest.find(|c| !ident(c)).unwrap_or(rest.len())].to_string()
        })
        .collect()
}

/// Brackets balance: a cheap guard against broken expressions, as no
/// PromQL parser is at hand.
fn balanced(expr: &str) -> bool {
    let mut stack = Vec::new();
    for c in expr.chars() {
        match c {
            '(' | '[' | '{' => stack.push(c),
            ')' | ']' | '}' => {
                let open = stack.pop();
                if open
                    != Some(match c {
                        ')' => '(',
                        ']' => '[',
                        _ => '{',
                    })
                {
                    return false;
                }
            }
            _ => {}
        }
    }
    stack.is_empty()
}

/// Checks that `expr` reads only metrics that exist: exported ones (a
/// histogram's `_bucket`, `_count`, `_sum` included), recording rules of
/// the chart, and `ringwarden_slo_objective_ratio`, which the rules and
/// dashboard use where it exists and fall back from where it does not.
fn check_expr(expr: &str, exported: &BTreeSet<String>, recorded: &BTreeSet<String>, what: &str) {
    assert!(balanced(expr), "{what}: unbalanced brackets in {expr}");
    for metric in metrics_in(expr) {
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| metric.strip_suffix(s))
            .unwrap_or(&metric);
        assert!(
            exported.contains(&metric)
                || exported.contains(base)
                || recorded.contains(&metric)
                || metric == "ringwarden_slo_objective_ratio",
            "{what} reads {metric}, which neither the agent nor the operator exports \
             and no rule records:\n{expr}"
        );
    }
}

#[test]
fn monitoring_objects_are_optional_and_use_only_metrics_ringwarden_exports() {
    let defaults = render_objects(&None, &[]);
    for o in &defaults {
        assert!(
            !o["apiVersion"]
                .as_str()
                .unwrap()
                .starts_with(MONITORING_GROUP),
            "monitoring objects need prometheus-operator and are off by default: {}",
            o["kind"]
        );
    }
    assert_eq!(
        of_kind(&defaults, "ConfigMap").len(),
        1,
        "no dashboard by default"
    );

    let exported = exported_metrics();
    for needed in [
        "ringwarden_slo_good_events_total",
        "ringwarden_slo_events_total",
        "ringwarden_events_ringbuf_dropped_total",
        "ringwarden_events_exported_total",
        "ringwarden_latency_seconds",
        "ringwarden_ringbuf_high_water_bytes",
        "ringwarden_ringbuf_bytes",
        "ringwarden_operator_leader",
    ] {
        assert!(
            exported.contains(needed),
            "{needed} is not exported any more"
        );
    }

    let objects = render_objects(&ci("full-values.yaml"), &[]);
    let rule = one(&objects, "PrometheusRule");
    let rules: Vec<&Value> = rule["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    let recorded: BTreeSet<String> = rules
        .iter()
        .filter_map(|r| r["record"].as_str().map(String::from))
        .collect();
    for r in &rules {
        let what = r["record"].as_str().or(r["alert"].as_str()).unwrap();
        let keys: BTreeSet<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
        let allowed: BTreeSet<&str> =
            ["record", "alert", "expr", "for", "labels", "annotations"].into();
        assert!(keys.is_subset(&allowed), "{what}: {keys:?}");
        check_expr(r["expr"].as_str().unwrap(), &exported, &recorded, what);
    }

    // One alert per row of burnRateAlerts, each reading both its windows.
    let values: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(chart().join("values.yaml")).unwrap())
            .unwrap();
    let rows = values["monitoring"]["prometheusRule"]["burnRateAlerts"]
        .as_array()
        .unwrap();
    let burns: Vec<&&Value> = rules
        .iter()
        .filter(|r| r["alert"] == "RingwardenSLOErrorBudgetBurn")
        .collect();
    assert_eq!(burns.len(), rows.len());
    for (alert, row) in burns.iter().zip(rows) {
        let expr = alert["expr"].as_str().unwrap();
        for window in ["longWindow", "shortWindow"] {
            let series = format!(
                "ringwarden:slo_error_ratio:rate{}",
                row[window].as_str().unwrap()
            );
            assert!(
                expr.contains(&series) && recorded.contains(&series),
                "{expr}"
            );
        }
        assert_eq!(alert["labels"]["severity"], row["severity"]);
        assert!(expr.contains("ringwarden:slo_objective:ratio"));
    }
    // The fallback objective is the configured one.
    let objective = rules
        .iter()
        .find(|r| r["record"] == "ringwarden:slo_objective:ratio")
        .unwrap();
    assert!(objective["expr"].as_str().unwrap().contains("+ 0.995"));
    for alert in [
        "RingwardenRingBufferDrops",
        "RingwardenOperatorNoLeader",
        "RingwardenOperatorReconcileErrors",
    ] {
        assert!(rules.iter().any(|r| r["alert"] == alert), "{alert}");
    }

    // The dashboard: valid JSON whose panels read exported metrics and
    // cover latency percentiles, drops, ring-buffer fill and SLO budget.
    let dashboard = named(&objects, "ConfigMap", "rw-dashboard");
    assert_eq!(dashboard["metadata"]["namespace"], "monitoring");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let json: Value = serde_json::from_str(dashboard["data"]["ringwarden.json"].as_str().unwrap())
        .expect("the dashboard is JSON");
    let exprs: Vec<&str> = json["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .map(|t| t["expr"].as_str().unwrap())
        .collect();
    for expr in &exprs {
        check_expr(expr, &exported, &BTreeSet::new(), "the dashboard");
    }
    let covers = |needles: &[&str]| exprs.iter().any(|e| needles.iter().all(|n| e.contains(n)));
    assert!(covers(&[
        "histogram_quantile(0.99",
        "ringwarden_latency_seconds_bucket"
    ]));
    assert!(covers(&[
        "ringwarden_events_ringbuf_dropped_total",
        "ringwarden_events_exported_total"
    ]));
    assert!(covers(&[
        "ringwarden_ringbuf_high_water_bytes",
        "/ ringwarden_ringbuf_bytes"
    ]));
    assert!(covers(&[
        "ringwarden_slo_good_events_total",
        "ringwarden_slo_events_total",
        "1 - (1 -"
    ]));
    let variables: Vec<&str> = json["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    for expr in &exprs {
        for (i, _) in expr.match_indices('$') {
            let name: String = expr[i + 1..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                name.starts_with("__") || variables.contains(&name.as_str()),
                "the dashboard uses ${name}, which it does not define"
            );
        }
    }

    // The scrape objects point at ports that exist.
    let sm = one(&objects, "ServiceMonitor");
    let service = one(&objects, "Service");
    assert!(
        service["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == sm["spec"]["endpoints"][0]["port"])
    );
    for (o, key) in [
        (sm, "endpoints"),
        (one(&objects, "PodMonitor"), "podMetricsEndpoints"),
    ] {
        assert_eq!(
            o["spec"]["namespaceSelector"]["matchNames"],
            json!([NAMESPACE])
        );
        assert_eq!(o["metadata"]["labels"]["release"], "prometheus");
        assert_eq!(o["spec"][key][0]["interval"], "15s");
    }
}

// ---------------------------------------------------------------- values schema

#[test]
fn the_values_schema_rejects_bad_values_and_names_the_field() {
    // (--set arguments, or a values file's text; what the error must say)
    let cases: &[(&[&str], Option<&str>, &str)] = &[
        (
            &["operator.replicas=two"],
            None,
            "operator.replicas: Invalid type. Expected: integer",
        ),
        (
            &["operator.replicas=0"],
            None,
            "operator.replicas: Must be greater than or equal to 1",
        ),
        (
            &["operator.replica=2"],
            None,
            "operator: Additional property replica is not allowed",
        ),
        (
            &["agent.image.pullPolicy=Sometimes"],
            None,
            "agent.image.pullPolicy must be one of the following",
        ),
        (
            &["agent.resources.limits.memory=lots"],
            None,
            "agent.resources.limits.memory: Does not match pattern",
        ),
        (
            &["agent.resources.limits.memory=1Gi"],
            None,
            "agent.resources.limits.memory is derived, not set: the operator makes it \
             agent.nodeBudget + agent.workingSetMemory",
        ),
        (
            &["agent.nodeBudget=lots"],
            None,
            "agent.nodeBudget: Does not match pattern",
        ),
        (
            &["agent.tolerations[0].operator=Maybe"],
            None,
            "agent.tolerations.0.operator must be one of the following",
        ),
        (
            &["operator.leaderElection.leaseDuration=15 seconds"],
            None,
            "operator.leaderElection.leaseDuration: Does not match pattern",
        ),
        (
            &["operator.logFormat=xml"],
            None,
            "operator.logFormat must be one of the following",
        ),
        (
            &["clusterName=prod east"],
            None,
            "clusterName: Does not match pattern",
        ),
        (
            &["service.metricsPort=70000"],
            None,
            "service.metricsPort: Must be less than or equal to 65535",
        ),
        (
            &["operator.image.digest=sha256:abc"],
            None,
            "operator.image.digest: Does not match pattern",
        ),
        (
            &[],
            Some("monitoring:\n  prometheusRule:\n    defaultObjective: 99.9\n"),
            "monitoring.prometheusRule.defaultObjective: Must be less than 1",
        ),
        (
            &[
                "operator.replicas=2",
                "operator.leaderElection.enabled=false",
            ],
            None,
            "operator.replicas is 2 but operator.leaderElection.enabled is false",
        ),
        (
            &["service.agentPort=8080"],
            None,
            "service.metricsPort and service.agentPort are both 8080",
        ),
        (
            &["service.agentPort=9441"],
            None,
            "service.agentPort is 9441, the port of the operator's loopback query service",
        ),
    ];
    for (i, (sets, file, message)) in cases.iter().enumerate() {
        let values = file.map(|text| {
            let path = std::env::temp_dir().join(format!(
                "ringwarden-chart-{}-bad-{i}.yaml",
                std::process::id()
            ));
            std::fs::write(&path, text).unwrap();
            path
        });
        let result = template(&values, sets);
        if let Some(path) = &values {
            let _ = std::fs::remove_file(path);
        }
        let error = result.expect_err(&format!("{sets:?} {file:?} was accepted"));
        assert!(
            error.contains(message),
            "{sets:?} {file:?}: the error does not say {message:?}:\n{error}"
        );
    }
}

/// Agents reach the operator through the chart's Service whatever the
/// release is called and whichever port it uses: the address the operator
/// renders into the agent DaemonSet names that Service and its gRPC port.
#[test]
fn agents_are_told_the_address_of_the_charts_service() {
    for values in [None, ci("full-values.yaml")] {
        let objects = render_objects(&values, &[]);
        let service = one(&objects, "Service");
        let port = service["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "grpc")
            .expect("the Service has a grpc port");
        // TLS unless the values say loudly otherwise.
        let expected = format!(
            "https://{}.{NAMESPACE}.svc:{}",
            service["metadata"]["name"].as_str().unwrap(),
            port["port"]
        );
        let config = operator_config(&objects);
        assert_eq!(
            ringwarden_operator::reconcile::render::operator_address(&config.agent, NAMESPACE),
            expected,
            "{}",
            describe(&values)
        );
    }
}

/// The agent accepts the DaemonSet the operator renders from the chart's
/// configuration: its arguments, and every environment variable it sets is
/// one the agent reads (passed here as the flag that declares it, since a
/// test cannot set the environment for itself alone).
#[test]
fn the_agent_accepts_the_daemonset_the_operator_renders() {
    use clap::CommandFactory;
    use ringwarden_node_agent::cli::{Args as AgentArgs, Command as AgentCommand};

    for values in [None, ci("full-values.yaml")] {
        let config = operator_config(&render_objects(&values, &[]));
        let ds = render::daemon_set(&[], &config.agent, NAMESPACE).unwrap();
        let container = &ds.spec.unwrap().template.spec.unwrap().containers[0];
        let mut argv = vec!["ringwarden-agent".to_string()];
        argv.extend(container.args.clone().unwrap_or_default());
        let agent = AgentArgs::command();
        let node = agent.find_subcommand("node").expect("a node subcommand");
        for env in container.env.iter().flatten() {
            let flag = node
                .get_arguments()
                .chain(agent.get_arguments())
                .find(|a| a.get_env() == Some(std::ffi::OsStr::new(&env.name)))
                .unwrap_or_else(|| panic!("the agent reads no variable {}", env.name));
            argv.push(format!("--{}", flag.get_long().unwrap()));
            // A switch set from the environment ("true") takes no value
            // as a flag.
            if !flag.get_action().takes_values() {
                assert_eq!(env.value.as_deref(), Some("true"), "{}", env.name);
                continue;
            }
            // Downward-API values are the node's name.
            argv.push(env.value.clone().unwrap_or_else(|| "node-a".into()));
        }
        let parsed = AgentArgs::try_parse_from(&argv)
            .unwrap_or_else(|e| panic!("the agent refuses {argv:?}:\n{e}"));
        let AgentCommand::Node(node) = parsed.command else {
            panic!("the DaemonSet runs the agent in node mode: {argv:?}");
        };
        assert_eq!(
            node.operator_addr.as_deref(),
            Some(render::operator_address(&config.agent, NAMESPACE).as_str())
        );
        assert!(node.token_file.is_some(), "{argv:?}");
        assert_eq!(node.node_name, "node-a");
    }
}

/// The default install is TLS with the operator's own CA and NetworkPolicies
/// that let only agents reach the agent port; the agent pods the operator
/// renders carry exactly the labels the policy admits.
#[test]
fn the_default_install_speaks_tls_and_admits_only_agents_to_the_agent_port() {
    let objects = render_objects(&None, &[]);
    let args = operator_args(&objects);
    assert!(!args.insecure_plaintext_for_local_development);
    assert!(
        args.tls_cert_file.is_none(),
        "the operator keeps its own CA"
    );
    let config = operator_config(&objects);
    let ds =
        ringwarden_operator::reconcile::render::daemon_set(&[], &config.agent, NAMESPACE).unwrap();
    let env = &ds
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .env
        .clone()
        .unwrap();
    let var = |name: &str| {
        env.iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    };
    assert!(
        var("RINGWARDEN_OPERATOR_ADDR").is_some_and(|a| a.starts_with("https://")),
        "{env:?}"
    );
    assert!(var("RINGWARDEN_OPERATOR_CA").is_some(), "{env:?}");
    let pod_labels = ds
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    let policies = of_kind(&objects, "NetworkPolicy");
    assert_eq!(policies.len(), 2, "operator and agents");
    let operator_policy = named(&objects, "NetworkPolicy", &args.service_name);
    let agent_peer = &operator_policy["spec"]["ingress"][0];
    let admitted = agent_peer["from"][0]["podSelector"]["matchLabels"]
        .as_object()
        .unwrap();
    for (k, v) in admitted {
        assert_eq!(
            pod_labels.get(k).map(String::as_str),
            v.as_str(),
            "agent pods must carry {k}={v}"
        );
    }
    let port = |o: &Value| o["ports"][0]["port"].as_u64().unwrap();
    let service = one(&objects, "Service");
    let grpc = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "grpc")
        .unwrap();
    assert_eq!(port(agent_peer), grpc["port"].as_u64().unwrap());
}

/// cert-manager issues the certificate instead: the operator reads the
/// mounted Secret and needs no rights on Secrets; plaintext is only ever
/// the loudly named flag, on both sides.
#[test]
fn cert_manager_and_plaintext_are_explicit_choices() {
    let objects = render_objects(&None, &["tls.source=certManager"]);
    let args = operator_args(&objects);
    assert!(args.tls_cert_file.is_some() && args.tls_ca_file.is_some());
    let certificate = named(&objects, "Certificate", &args.service_name);
    let names = strings(&certificate["spec"]["dnsNames"]);
    assert!(
        names.contains(&format!("{}.{NAMESPACE}.svc", args.service_name)),
        "{names:?}"
    );
    assert!(
        !serde_json::to_string(&objects)
            .unwrap()
            .contains("\"secrets\""),
        "no Secret rights with cert-manager"
    );

    let objects = render_objects(&None, &["tls.insecurePlaintextForLocalDevelopment=true"]);
    let args = operator_args(&objects);
    assert!(args.insecure_plaintext_for_local_development);
    let config = operator_config(&objects);
    assert!(
        ringwarden_operator::reconcile::render::operator_address(&config.agent, NAMESPACE)
            .starts_with("http://")
    );
}

/// With cert-manager, the serving certificate comes from a CA of the
/// release's own, and agents pin that CA only: with a shared ClusterIssuer,
/// a certificate a tenant obtains from it for the operator's Service name
/// is not signed by the CA agents trust.
#[test]
fn with_cert_manager_agents_pin_only_the_releases_own_ca() {
    for sets in [
        vec!["tls.source=certManager"],
        vec![
            "tls.source=certManager",
            "tls.certManager.issuerRef.name=shared",
            "tls.certManager.issuerRef.kind=ClusterIssuer",
        ],
    ] {
        let objects = render_objects(&None, &sets);
        let args = operator_args(&objects);
        let op = &args.service_name;
        let serving = named(&objects, "Certificate", op);
        assert_eq!(
            serving["spec"]["issuerRef"],
            json!({"name": format!("{op}-ca"), "kind": "Issuer"}),
            "{sets:?}: the serving certificate comes from the release's CA"
        );
        let issuer = named(&objects, "Issuer", &format!("{op}-ca"));
        let ca = named(&objects, "Certificate", &format!("{op}-ca"));
        assert_eq!(ca["spec"]["isCA"], true);
        assert_eq!(issuer["spec"]["ca"]["secretName"], ca["spec"]["secretName"]);
        let expected_parent = if sets.len() > 1 {
            json!({"name": "shared", "kind": "ClusterIssuer"})
        } else {
            json!({"name": format!("{op}-selfsigned"), "kind": "Issuer"})
        };
        assert_eq!(ca["spec"]["issuerRef"], expected_parent, "{sets:?}");
        // A year, renewed with the same key so certificates it signed
        // verify against the renewed one.
        assert_eq!(ca["spec"]["duration"], "8760h");
        assert_eq!(ca["spec"]["privateKey"]["rotationPolicy"], "Never");
        // What the operator publishes to agents is that CA's certificate,
        // from its Secret, key left out; not the issuer's ca.crt.
        let ca_file = args.tls_ca_file.clone().unwrap();
        let pod = &operator_deployment(&objects)["spec"]["template"]["spec"];
        let mount = pod["containers"][0]["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| {
                ca_file.starts_with(m["mountPath"].as_str().unwrap()) && m["name"] != "config"
            })
            .unwrap_or_else(|| panic!("{ca_file:?} is mounted"));
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        assert_eq!(volume["secret"]["secretName"], ca["spec"]["secretName"]);
        assert_eq!(
            volume["secret"]["items"],
            json!([{"key": "tls.crt", "path": "ca.crt"}])
        );
        assert!(ca_file.ends_with("ca.crt"));
    }
}

/// Tenancy: namespace editors manage ProbeSets and SLOs (aggregated into
/// `admin` and `edit`), viewers read them (`view`); none of these roles
/// reaches ClusterProbeSets, which observe other namespaces and the host.
#[test]
fn namespace_roles_manage_probesets_and_slos_and_never_cluster_probesets() {
    let objects = render_objects(&None, &[]);
    let aggregated = |label: &str| -> Vec<&Value> {
        of_kind(&objects, "ClusterRole")
            .into_iter()
            .filter(|r| r["metadata"]["labels"][label] == json!("true"))
            .collect()
    };
    let grants = |roles: &[&Value]| -> BTreeSet<(String, String)> {
        roles
            .iter()
            .flat_map(|r| r["rules"].as_array().unwrap().iter())
            .flat_map(|rule| {
                let verbs = strings(&rule["verbs"]);
                strings(&rule["resources"])
                    .into_iter()
                    .flat_map(move |res| verbs.clone().into_iter().map(move |v| (res.clone(), v)))
            })
            .collect()
    };
    for label in [
        "rbac.authorization.k8s.io/aggregate-to-admin",
        "rbac.authorization.k8s.io/aggregate-to-edit",
    ] {
        let have = grants(&aggregated(label));
        for resource in ["probesets", "slos"] {
            for verb in [
                "get", "list", "watch", "create", "update", "patch", "delete",
            ] {
                assert!(
                    have.contains(&(resource.into(), verb.into())),
                    "{label}: no {verb} on {resource}: {have:?}"
                );
            }
        }
    }
    let view = grants(&aggregated("rbac.authorization.k8s.io/aggregate-to-view"));
    for resource in ["probesets", "slos"] {
        assert!(view.contains(&(resource.into(), "list".into())), "{view:?}");
    }
    assert!(
        view.iter()
            .all(|(_, v)| ["get", "list", "watch"].contains(&v.as_str())),
        "view only reads: {view:?}"
    );
    for label in ["admin", "edit", "view"] {
        let have = grants(&aggregated(&format!(
            "rbac.authorization.k8s.io/aggregate-to-{label}"
        )));
        assert!(
            have.iter().all(|(r, _)| !r.starts_with("clusterprobesets")),
            "{label} must not reach ClusterProbeSets: {have:?}"
        );
    }
}
