//! The rendered agent ConfigMap and DaemonSet, compared with reviewed YAML
//! in tests/data. After an intended change, rewrite the files with
//! `UPDATE_GOLDEN=1 cargo test -p ringwarden-operator --test golden` and
//! review the diff.

mod common;

use std::{collections::BTreeSet, path::PathBuf, process::Command, sync::Arc};

use common::{probeset, slo};
use k8s_openapi::api::{apps::v1::DaemonSet, core::v1::ConfigMap};
use ringwarden_operator::{
    config::{AgentSettings, OperatorConfig},
    reconcile::render::{self, AGENT_CAPABILITIES, AGENT_HOST_PATHS, AgentObjects},
    reconcile::slo::SloTarget,
    reconcile::world::{Labels, World},
};

const WEB: &str = "
nodeSelector: {pool: web}
podSelector: {matchLabels: {app: checkout}}
probes:
  - name: sys
    kind: syscalls
    filter: {comms: [nginx]}
    export: {policy: slowerThan, slowerThan: 10ms}
    peakEventRate: 2000
  - {name: connect, kind: tcpConnect, maxSeries: 16}
reportInterval: 15s
";

const DB: &str = "
nodeSelector: {pool: db, disk: nvme}
probes:
  - {name: io, kind: blockIO, export: {policy: all}, peakEventRate: 20000, priority: 1}
ringBuffer: {nodeBudget: 1Mi}
maxDropRate: 0.05
";

const BROKEN: &str = "
probes:
  - {name: sys, kind: syscalls, export: {policy: all}}
";

const SETTINGS: &str = "
agent:
  image: registry.example/ringwarden/agent:v0.1.0
  priorityClassName: system-node-critical
";

fn settings() -> AgentSettings {
    OperatorConfig::parse(SETTINGS).unwrap().agent
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn world() -> World {
    let fast = slo(
        "shop",
        "checkout-fast",
        "{probeSet: web, probe: sys, series: [read, write], indicator: {latency: {threshold: 20ms}}, target: 99.9, maxDropRate: 0.001}",
    );
    World {
        cluster_probesets: vec![],
        namespaces: vec![],
        namespace_limits: Default::default(),
        probesets: vec![
            Arc::new(probeset("shop", "web", 1, WEB)),
            Arc::new(probeset("team-b", "db", 1, DB)),
            Arc::new(probeset("shop", "broken", 1, BROKEN)),
        ],
        nodes: vec![
            (
                "n1".into(),
                labels(&[("pool", "web"), ("kubernetes.io/hostname", "n1")]),
            ),
            (
                "n2".into(),
                labels(&[
                    ("pool", "db"),
                    ("disk", "nvme"),
                    ("kubernetes.io/hostname", "n2"),
                ]),
            ),
            (
                "n3".into(),
                labels(&[("pool", "batch"), ("kubernetes.io/hostname", "n3")]),
            ),
        ],
        slos: vec![SloTarget::from_slo(&fast).unwrap()],
        node_selector_labels: Default::default(),
    }
}

fn render(world: &World, settings: &AgentSettings) -> AgentObjects {
    render::agent_objects(&world.assess_all(), settings, "ringwarden-system").unwrap()
}

fn yaml(value: &impl serde::Serialize) -> String {
    serde_yaml_ng::to_string(value).unwrap()
}

fn data(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(file)
}

/// Compares `actual` with the reviewed file, or rewrites it under
/// `UPDATE_GOLDEN=1`.
fn golden(file: &str, actual: &str) {
    let path = data(file);
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        expected == actual,
        "{} differs from what the operator renders; if the change is intended, run \
         `UPDATE_GOLDEN=1 cargo test -p ringwarden-operator --test golden` and review the diff.\n\
         --- rendered ---\n{actual}",
        path.display()
    );
}

#[test]
fn the_configmap_matches_the_reviewed_yaml() {
    golden(
        "configmap.yaml",
        &yaml(&render(&world(), &settings()).config_map),
    );
}

/// Agents run a configuration only if it passes the ProbeSet rules
/// (`AgentConfig::validate`): what the operator renders always does.
#[test]
fn the_rendered_configuration_passes_the_checks_agents_make() {
    let config = render(&world(), &settings()).config;
    assert!(!config.probes.is_empty());
    assert_eq!(config.validate(), vec![]);
}

#[test]
fn the_daemonset_matches_the_reviewed_yaml() {
    golden(
        "daemonset.yaml",
        &yaml(&render(&world(), &settings()).daemon_set),
    );
}

/// Never privileged, only the named capabilities, read-only everything.
fn assert_locked_down(ds: &DaemonSet) {
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.host_pid, Some(true));
    assert_eq!(pod.host_network, None);
    assert_eq!(pod.host_ipc, None);
    assert_eq!(
        pod.security_context
            .as_ref()
            .unwrap()
            .seccomp_profile
            .as_ref()
            .unwrap()
            .type_,
        "RuntimeDefault"
    );
    assert_eq!(pod.containers.len(), 1);
    assert_eq!(pod.init_containers, None);
    let c = &pod.containers[0];
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    let added: BTreeSet<&str> = caps.add.iter().flatten().map(String::as_str).collect();
    assert_eq!(added, BTreeSet::from(["BPF", "PERFMON"]));
    assert_eq!(added, AGENT_CAPABILITIES.into_iter().collect());

    let host_paths: BTreeSet<(&str, &str)> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| Some((v.name.as_str(), v.host_path.as_ref()?.path.as_str())))
        .collect();
    assert_eq!(host_paths, AGENT_HOST_PATHS.into_iter().collect());
    for m in c.volume_mounts.iter().flatten() {
        assert_eq!(m.read_only, Some(true), "{} is mounted writable", m.name);
        assert_eq!(
            m.sub_path, None,
            "a subPath mount never sees ConfigMap updates"
        );
    }
}

#[test]
fn the_agent_is_never_privileged_and_adds_only_the_named_capabilities() {
    assert_locked_down(&render(&world(), &settings()).daemon_set);
    // The reviewed file too, so rewriting it cannot sneak a privilege in.
    let reviewed: DaemonSet =
        serde_yaml_ng::from_str(&std::fs::read_to_string(data("daemonset.yaml")).unwrap()).unwrap();
    assert_locked_down(&reviewed);
}

/// The uprobe opt-in adds exactly SYS_ADMIN, SYS_PTRACE (container roots) and
/// the read-only host root, and nothing else changes in how the agent is
/// locked down.
#[test]
fn the_uprobe_opt_in_adds_only_sys_admin_sys_ptrace_and_the_read_only_host_root() {
    let mut enabled = settings();
    enabled.uprobes.enabled = true;
    let ds = render(&world(), &enabled).daemon_set;
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let c = &pod.containers[0];
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let added: BTreeSet<&str> = sc
        .capabilities
        .as_ref()
        .unwrap()
        .add
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    assert_eq!(
        added,
        BTreeSet::from(["BPF", "PERFMON", "SYS_ADMIN", "SYS_PTRACE"])
    );
    let host_paths: BTreeSet<(&str, &str)> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| Some((v.name.as_str(), v.host_path.as_ref()?.path.as_str())))
        .collect();
    let mut expected: BTreeSet<(&str, &str)> = AGENT_HOST_PATHS.into_iter().collect();
    expected.insert(("host-root", "/"));
    assert_eq!(host_paths, expected);
    for m in c.volume_mounts.iter().flatten() {
        assert_eq!(m.read_only, Some(true), "{} is mounted writable", m.name);
    }
}

#[test]
fn the_same_input_in_any_order_renders_the_same_bytes() {
    let a = render(&world(), &settings());
    let mut shuffled = world();
    shuffled.probesets.reverse();
    shuffled.nodes.reverse();
    shuffled.slos.reverse();
    let b = render(&shuffled, &settings());
    assert_eq!(yaml(&a.config_map), yaml(&b.config_map));
    assert_eq!(yaml(&a.daemon_set), yaml(&b.daemon_set));
    assert_eq!(
        serde_json::to_vec(&a.daemon_set).unwrap(),
        serde_json::to_vec(&render(&world(), &settings()).daemon_set).unwrap()
    );
}

fn template(ds: &DaemonSet) -> String {
    yaml(&ds.spec.as_ref().unwrap().template)
}

fn hash(cm: &ConfigMap) -> &str {
    &cm.metadata.annotations.as_ref().unwrap()[render::CONFIG_HASH_ANNOTATION]
}

#[test]
fn probeset_changes_reach_the_configmap_but_never_restart_agents() {
    let before = render(&world(), &settings());
    let mut changed = world();
    changed.probesets[0] = Arc::new(probeset(
        "shop",
        "web",
        2,
        &WEB.replace("peakEventRate: 2000", "peakEventRate: 50000"),
    ));
    changed.slos.clear();
    let after = render(&changed, &settings());
    assert_ne!(hash(&before.config_map), hash(&after.config_map));
    assert_eq!(yaml(&before.daemon_set), yaml(&after.daemon_set));
    let pod_metadata = yaml(&after.daemon_set.spec.as_ref().unwrap().template.metadata);
    assert!(!pod_metadata.contains("hash"), "{pod_metadata}");
}

#[test]
fn an_agent_image_change_rolls_the_agents() {
    let before = render(&world(), &settings());
    let mut newer = settings();
    newer.image = "registry.example/ringwarden/agent:v0.2.0".into();
    let after = render(&world(), &newer);
    assert_ne!(template(&before.daemon_set), template(&after.daemon_set));
    assert_eq!(yaml(&before.config_map), yaml(&after.config_map));
}

/// Runs `kubernetes-validate --strict` on the reviewed files.
#[test]
fn the_rendered_objects_pass_the_official_kubernetes_schemas() {
    let output = Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", "1.33.0"])
        .arg(data("configmap.yaml"))
        .arg(data("daemonset.yaml"))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run kubernetes-validate ({e}); install it with `make deps` \
                 (pip install kubernetes-validate)"
            )
        });
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && !stdout.contains("ERROR") && !stderr.contains("ERROR"),
        "kubernetes-validate refused the rendered objects:\n{stdout}{stderr}"
    );
    for object in [
        "configmap/ringwarden-agent-config",
        "daemonset/ringwarden-agent",
    ] {
        assert!(
            stdout.contains(object),
            "kubernetes-validate did not check {object}:\n{stdout}{stderr}"
        );
    }
}
