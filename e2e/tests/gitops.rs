//! GitOps and the documentation that goes with it:
//!
//! - the Argo CD health checks (`docs/argocd/*.lua`) run in `lua5.4`
//!   against the statuses the operator's own code computes, for every
//!   verdict, the ProbeSet one for ClusterProbeSets too; `docs/gitops.md`
//!   and the example argocd-cm embed them verbatim, under every kind;
//! - the QuotaConstrained message shown in `docs/quota.md` is the operator's;
//! - `docs/metrics.md` lists every metric the agent and the operator export;
//! - `make e2e-cluster` exists, its script parses, and the docs point at it;
//! - relative links in the README and docs lead to files that exist.
//!
//! Needs `lua5.4` and `helm` (`make deps` installs both); no cluster, no
//! root.

use std::{
    collections::BTreeSet,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use ringwarden_core::{
    accounting::Counters,
    histogram::Histogram,
    slo::{Report, SloEvaluator, SloSpec as CoreSloSpec},
};
use ringwarden_crds::{
    AgentConfig, ClusterProbeSet, ClusterProbeSetSpec, ProbeSet, Slo,
    manifest::{self, Manifest},
};
use ringwarden_operator::{
    ingest::reports::{Figures, Flow, NodeProblem, problem},
    ingest::slo_status::{self, Problem, Verdict},
    reconcile::assess::assess,
    reconcile::controller::undecodable_status,
    reconcile::status::{self, Reported},
    reconcile::stored,
    reconcile::world,
};
use serde_json::{Value, json};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ lives in the repository")
        .to_path_buf()
}

fn read(path: &str) -> String {
    let path = repo().join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ------------------------------------------------------------- Lua harness

const PROBESET_LUA: &str = "docs/argocd/health-probeset.lua";
const SLO_LUA: &str = "docs/argocd/health-slo.lua";

/// `v` as a Lua expression. Argo CD hands scripts JSON numbers as floats;
/// with `floats` every number is written as one, otherwise integers stay
/// integers. A script must answer the same either way.
fn lua_literal(v: &Value, floats: bool) -> String {
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match (n.as_i64(), floats) {
            (Some(i), false) => i.to_string(),
            _ => format!("{:?}", n.as_f64().expect("a number")),
        },
        Value::String(s) => {
            let mut out = String::from("\"");
            for b in s.bytes() {
                match b {
                    b'"' => out.push_str("\\\""),
                    b'\\' => out.push_str("\\\\"),
                    b' '..=b'~' => out.push(b as char),
                    _ => out.push_str(&format!("\\{b:03}")),
                }
            }
            out.push('"');
            out
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(|i| lua_literal(i, floats)).collect();
            format!("{{{}}}", items.join(", "))
        }
        Value::Object(map) => {
            let entries: Vec<String> = map
                .iter()
                .map(|(k, v)| {
                    format!(
                        "[{}] = {}",
                        lua_literal(&Value::String(k.clone()), floats),
                        lua_literal(v, floats)
                    )
                })
                .collect();
            format!("{{{}}}", entries.join(", "))
        }
    }
}

fn run_lua(script: &str, object: &Value, floats: bool) -> (String, String) {
    let harness = format!(
        "obj = {}\nlocal hs = dofile([==[{}]==])\nio.write(hs.status, \"\\n\", hs.message)\n",
        lua_literal(object, floats),
        repo().join(script).display()
    );
    let mut child = Command::new("lua5.4")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run lua5.4 ({e}); the Argo CD health checks are tested with it: \
                 run `make deps` (scripts/deps.sh installs the Debian package lua5.4)"
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(harness.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{script} failed on {object}:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let (status, message) = text.split_once('\n').expect("status and message");
    (status.to_owned(), message.to_owned())
}

/// What Argo CD shows for `object`: `(hs.status, hs.message)`.
fn health(script: &str, object: &Value) -> (String, String) {
    let as_floats = run_lua(script, object, true);
    let as_integers = run_lua(script, object, false);
    assert_eq!(
        as_floats, as_integers,
        "{script} answers differently when numbers are floats"
    );
    as_floats
}

/// A timestamp of the status types (`metav1.Time`), by inference.
fn at<T: serde::de::DeserializeOwned>(rfc3339: &str) -> T {
    serde_json::from_value(json!(rfc3339)).unwrap()
}

const NOW: &str = "2025-06-01T12:00:00Z";
/// [`NOW`] as the SLO evaluator's clock.
fn clock() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_748_779_200)
}

// ------------------------------------------------------- ProbeSet health

fn load(path: &str) -> (Vec<ProbeSet>, Vec<Slo>) {
    manifest::split(manifest::load_file(&repo().join(path)).unwrap_or_else(|e| panic!("{e}")))
}

/// `examples/probeset.yaml`, as the API server would hand it out.
fn example_probeset() -> ProbeSet {
    let mut ps = load("examples/probeset.yaml").0.remove(0);
    ps.metadata.generation = Some(1);
    ps
}

/// `ps` with the status the operator computes for it, as JSON.
fn with_status(mut ps: ProbeSet, node_matches: bool, reported: Option<&Reported>) -> Value {
    let status = status::desired(
        &ps,
        &assess(&ps, &[]),
        node_matches,
        reported,
        None,
        &at(NOW),
    );
    ps.status = Some(status);
    serde_json::to_value(&ps).unwrap()
}

/// Agent figures over `desired` nodes, `ready` of them running every
/// probe, and node problems `(node, reason, message)`.
fn reported(desired: usize, ready: usize, problems: &[(&str, &'static str, &str)]) -> Reported {
    let rank = |r: &str| problem::ORDER.iter().position(|o| *o == r);
    Reported::from_figures(&Figures {
        desired,
        ready,
        reporting: ready,
        flow: Flow {
            events_per_second: 26_563.0,
            observed: 265_630,
            exported: 1_300,
            ..Flow::default()
        },
        problems: problems
            .iter()
            .map(|(node, reason, message)| NodeProblem {
                node: (*node).into(),
                reason,
                message: (*message).into(),
            })
            .collect(),
        problem_nodes: problems.len(),
        worst: problems.iter().map(|p| p.1).min_by_key(|r| rank(r)),
        ..Figures::default()
    })
}

fn assert_health(script: &str, what: &str, object: &Value, status: &str, message: &str) {
    let (got_status, got_message) = health(script, object);
    assert_eq!(
        (got_status.as_str(), got_message.as_str()),
        (status, message),
        "{script}: {what}"
    );
    // Flux's default health assessment (kstatus) agrees with the script,
    // but for an SLO's verdict on the objective (Breached, Unreliable):
    // kstatus judges whether the operator can evaluate it, alerts judge
    // the verdict.
    let verdict = ["Breached", "Unreliable"]
        .contains(&object["status"]["state"].as_str().unwrap_or_default());
    let expected = match status {
        "Degraded" if verdict => "Current",
        "Healthy" | "Suspended" => "Current",
        "Progressing" => "InProgress",
        "Degraded" => "Failed",
        other => panic!("no kstatus counterpart for {other}"),
    };
    // Only objects the operator has written a status for: kstatus reads
    // a custom resource without conditions as Current.
    if object["status"]["conditions"].is_array() {
        assert_eq!(kstatus(object).0, expected, "kstatus: {what}");
    }
}

/// kstatus' verdict on a custom resource (`sigs.k8s.io/cli-utils`,
/// `pkg/kstatus/status`: `checkGenericProperties` and `checkGeneration`;
/// a kind without rules of its own is Current past them): Terminating
/// while deleted, InProgress while `status.observedGeneration` differs
/// from `metadata.generation`, then InProgress for `Reconciling=True`,
/// Failed for `Stalled=True`, in the order the conditions are listed.
fn kstatus(object: &Value) -> (&'static str, String) {
    if object["metadata"]["deletionTimestamp"]
        .as_str()
        .is_some_and(|t| !t.is_empty())
    {
        return ("Terminating", "Resource scheduled for deletion".into());
    }
    if let (Some(generation), Some(observed)) = (
        object["metadata"]["generation"].as_i64(),
        object["status"]["observedGeneration"].as_i64(),
    ) && generation != observed
    {
        return ("InProgress", "LatestGenerationNotObserved".into());
    }
    for c in object["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        match (c["type"].as_str(), c["status"].as_str()) {
            (Some("Reconciling"), Some("True")) => {
                return (
                    "InProgress",
                    c["message"].as_str().unwrap_or_default().into(),
                );
            }
            (Some("Stalled"), Some("True")) => {
                return ("Failed", c["message"].as_str().unwrap_or_default().into());
            }
            _ => {}
        }
    }
    ("Current", String::new())
}

#[test]
fn the_kstatus_port_agrees_with_upstreams_cases() {
    // Cases of cli-utils' generic_test.go / status_test.go for custom
    // resources.
    let object = |generation: i64, observed: i64, conditions: Value| {
        json!({"metadata": {"generation": generation},
               "status": {"observedGeneration": observed, "conditions": conditions}})
    };
    assert_eq!(kstatus(&object(2, 1, json!([]))).0, "InProgress");
    assert_eq!(kstatus(&object(1, 1, json!([]))).0, "Current");
    assert_eq!(
        kstatus(&object(
            1,
            1,
            json!([{"type": "Reconciling", "status": "True", "message": "m"}])
        )),
        ("InProgress", "m".into())
    );
    assert_eq!(
        kstatus(&object(
            1,
            1,
            json!([{"type": "Stalled", "status": "True", "message": "s"}])
        )),
        ("Failed", "s".into())
    );
    assert_eq!(
        kstatus(&object(
            1,
            1,
            json!([{"type": "Stalled", "status": "False"}])
        ))
        .0,
        "Current"
    );
    let mut deleted = object(1, 1, json!([]));
    deleted["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    assert_eq!(kstatus(&deleted).0, "Terminating");
}

#[test]
fn probeset_health_follows_the_operators_status() {
    let check = |what: &str, object: &Value, status: &str, message: &str| {
        assert_health(PROBESET_LUA, what, object, status, message)
    };
    let ps = example_probeset();

    check(
        "not seen by the operator yet",
        &serde_json::to_value(&ps).unwrap(),
        "Progressing",
        "Waiting for the operator to plan the ProbeSet",
    );
    check(
        "planned, no agent has reported",
        &with_status(ps.clone(), true, None),
        "Progressing",
        "AwaitingReports: 2 probes planned with 64Ki of ring buffers per node; waiting for the \
         agents' first reports",
    );
    check(
        "every node runs every probe",
        &with_status(ps.clone(), true, Some(&reported(3, 3, &[]))),
        "Healthy",
        "3/3 nodes run every probe",
    );
    check(
        "agents still starting",
        &with_status(ps.clone(), true, Some(&reported(3, 2, &[]))),
        "Progressing",
        "AwaitingReports: 2 probes planned with 64Ki of ring buffers per node; 2/3 nodes run \
         every probe so far",
    );
    check(
        "a probe failed to load on one node",
        &with_status(
            ps.clone(),
            true,
            Some(&reported(
                3,
                2,
                &[(
                    "node-b",
                    problem::LOAD_FAILED,
                    "probe sys: program rw_sys_enter was rejected: Permission denied (os error 13)",
                )],
            )),
        ),
        "Degraded",
        "LoadFailed: 1 of 3 nodes: node-b: probe sys: program rw_sys_enter was rejected: \
         Permission denied (os error 13)",
    );
    check(
        "a node drops more than allowed",
        &with_status(
            ps.clone(),
            true,
            Some(&reported(
                3,
                3,
                &[(
                    "node-c",
                    problem::DROPPING,
                    "probe sys: the ring buffer dropped more events than maxDropRate allows",
                )],
            )),
        ),
        "Degraded",
        "Dropping: 1 of 3 nodes: node-c: probe sys: the ring buffer dropped more events than \
         maxDropRate allows",
    );

    let mut invalid = ps.clone();
    invalid.spec.probes[0].export.slower_than = None;
    check(
        "an invalid spec",
        &with_status(invalid, true, None),
        "Degraded",
        "InvalidSpec: spec.probes[0].export.slowerThan: policy slowerThan needs a threshold; \
         add e.g. `slowerThan: 10ms`",
    );

    let mut gpu = ps.clone();
    gpu.spec.node_selector = [("gpu".to_string(), "true".to_string())].into();
    check(
        "no node has the selected labels",
        &with_status(gpu, false, None),
        "Suspended",
        "NoMatchingNodes: no node has the labels of spec.nodeSelector (gpu=true); the probes \
         start when one does",
    );

    let mut newer = with_status(ps.clone(), true, Some(&reported(3, 3, &[])));
    newer["metadata"]["generation"] = json!(2);
    check(
        "the spec changed since the status was written",
        &newer,
        "Progressing",
        "Waiting for the operator to plan the latest spec",
    );
}

// ------------------------------------------------ ClusterProbeSet health

/// `examples/probeset.yaml` as a ClusterProbeSet with `namespace_selector`,
/// as the API server would hand it out.
fn example_cluster_probeset(namespace_selector: Option<&str>) -> ClusterProbeSet {
    let ps = example_probeset();
    let mut cps = ClusterProbeSet::new(
        ps.metadata.name.as_deref().unwrap(),
        ClusterProbeSetSpec {
            namespace_selector: namespace_selector.map(|s| serde_yaml_ng::from_str(s).unwrap()),
            slo_namespaces: vec![],
            probe_set: ps.spec,
        },
    );
    cps.metadata.generation = Some(1);
    cps
}

/// `cps` with the status the operator computes for it, as JSON: assessed
/// as the ClusterProbeSet controller does, against two namespaces.
fn cluster_with_status(
    mut cps: ClusterProbeSet,
    node_matches: bool,
    reported: Option<&Reported>,
) -> Value {
    let namespaces = [
        (
            "shop".to_owned(),
            [("team".to_owned(), "retail".to_owned())].into(),
        ),
        ("kube-system".to_owned(), Default::default()),
    ];
    let assessed = world::assess_cluster(&cps, &namespaces, &[]);
    let status = status::desired(
        &assessed.probeset,
        &assessed.assessment,
        node_matches,
        reported,
        None,
        &at(NOW),
    );
    cps.status = Some(status);
    serde_json::to_value(&cps).unwrap()
}

#[test]
fn cluster_probeset_health_follows_the_operators_status_with_the_probeset_script() {
    let check = |what: &str, object: &Value, status: &str, message: &str| {
        assert_eq!(object["kind"], "ClusterProbeSet");
        assert_health(PROBESET_LUA, what, object, status, message)
    };
    let cps = example_cluster_probeset(None);

    check(
        "not seen by the operator yet",
        &serde_json::to_value(&cps).unwrap(),
        "Progressing",
        "Waiting for the operator to plan the ClusterProbeSet",
    );
    check(
        "planned, no agent has reported",
        &cluster_with_status(cps.clone(), true, None),
        "Progressing",
        "AwaitingReports: 2 probes planned with 64Ki of ring buffers per node; waiting for the \
         agents' first reports",
    );
    check(
        "every node runs every probe",
        &cluster_with_status(cps.clone(), true, Some(&reported(3, 3, &[]))),
        "Healthy",
        "3/3 nodes run every probe",
    );
    check(
        "a namespace selector scoped to one team, every node running",
        &cluster_with_status(
            example_cluster_probeset(Some("{matchLabels: {team: retail}}")),
            true,
            Some(&reported(3, 3, &[])),
        ),
        "Healthy",
        "3/3 nodes run every probe",
    );
    check(
        "agents still starting",
        &cluster_with_status(cps.clone(), true, Some(&reported(3, 2, &[]))),
        "Progressing",
        "AwaitingReports: 2 probes planned with 64Ki of ring buffers per node; 2/3 nodes run \
         every probe so far",
    );
    check(
        "a node lacks BTF",
        &cluster_with_status(
            cps.clone(),
            true,
            Some(&reported(
                3,
                2,
                &[(
                    "node-a",
                    problem::MISSING_BTF,
                    "the kernel has no BTF (/sys/kernel/btf/vmlinux)",
                )],
            )),
        ),
        "Degraded",
        "MissingBTF: 1 of 3 nodes: node-a: the kernel has no BTF (/sys/kernel/btf/vmlinux)",
    );

    let bad_selector = cluster_with_status(
        example_cluster_probeset(Some("{matchExpressions: [{key: team, operator: Like}]}")),
        true,
        None,
    );
    let invalid = bad_selector["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Invalid")
        .unwrap()
        .clone();
    assert_eq!(invalid["status"], "True");
    let message = invalid["message"].as_str().unwrap();
    assert!(message.starts_with("spec.namespaceSelector"), "{message}");
    check(
        "a namespace selector that cannot be applied",
        &bad_selector,
        "Degraded",
        &format!("InvalidSpec: {message}"),
    );

    // As the operator marks a stored ClusterProbeSet it cannot decode.
    let mut undecodable = serde_json::to_value(&cps).unwrap();
    undecodable["status"] = undecodable_status(
        &stored::Problem {
            meta: cps.metadata.clone(),
            error: "spec.probes[0].priority: invalid value: integer `3000000000`, expected i32"
                .into(),
        },
        "Invalid: spec",
        &at(NOW),
    );
    check(
        "stored, but the operator cannot decode it",
        &undecodable,
        "Degraded",
        "Undecodable: the stored object cannot be read: spec.probes[0].priority: invalid \
         value: integer `3000000000`, expected i32; it runs nowhere until fixed: re-apply it \
         with a valid spec (kubectl apply), or delete it",
    );

    let mut gpu = cps.clone();
    gpu.spec.probe_set.node_selector = [("gpu".to_string(), "true".to_string())].into();
    check(
        "no node has the selected labels",
        &cluster_with_status(gpu, false, None),
        "Suspended",
        "NoMatchingNodes: no node has the labels of spec.nodeSelector (gpu=true); the probes \
         start when one does",
    );

    let mut newer = cluster_with_status(cps.clone(), true, Some(&reported(3, 3, &[])));
    newer["metadata"]["generation"] = json!(2);
    check(
        "the spec changed since the status was written",
        &newer,
        "Progressing",
        "Waiting for the operator to plan the latest spec",
    );
}

/// The ProbeSet of the worked example in docs/quota.md.
fn quota_example() -> ProbeSet {
    let doc = read("docs/quota.md");
    let start = doc.find("```yaml\napiVersion: ringwarden.dev/v1alpha1\nkind: ProbeSet\n");
    let yaml = &doc[start.expect("docs/quota.md shows a ProbeSet") + 8..];
    let yaml = &yaml[..yaml.find("```").unwrap()];
    match manifest::parse_str("docs/quota.md", yaml)
        .unwrap_or_else(|e| panic!("{e}"))
        .remove(0)
    {
        Manifest::ProbeSet(ps) => {
            let mut ps = *ps;
            ps.metadata.generation = Some(1);
            ps
        }
        Manifest::Slo(_) => unreachable!(),
    }
}

#[test]
fn a_quota_constrained_probeset_is_healthy_and_says_so() {
    let object = with_status(quota_example(), true, Some(&reported(2, 2, &[])));
    let condition = object["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "QuotaConstrained")
        .unwrap()
        .clone();
    assert_eq!(condition["status"], "True");
    assert_eq!(condition["reason"], "BudgetShort");
    let message = condition["message"].as_str().unwrap();
    assert!(
        read("docs/quota.md").contains(&format!("```\n{message}\n```")),
        "docs/quota.md does not show the operator's QuotaConstrained message:\n{message}"
    );
    assert_health(
        PROBESET_LUA,
        "planned in a short budget, every node running",
        &object,
        "Healthy",
        &format!("2/2 nodes run every probe; QuotaConstrained: {message}"),
    );
}

// ------------------------------------------------------------ SLO health

/// `examples/slo.yaml` and the ProbeSet it measures.
fn example_slo() -> Slo {
    let mut slo = load("examples/slo.yaml").1.remove(0);
    slo.metadata.generation = Some(1);
    slo
}

fn slo_with(mut slo: Slo, verdict: Verdict<'_>) -> Value {
    slo.status = Some(slo_status::desired(&slo, verdict, &at(NOW)));
    serde_json::to_value(&slo).unwrap()
}

/// What the operator's evaluator makes of reports `(seconds before now,
/// good, total, observed, pairing_dropped)`, all from one agent boot.
fn evaluated(slo: &Slo, reports: &[(u64, u64, u64, u64, u64)]) -> Value {
    let status = evaluation(slo, reports);
    slo_with(slo.clone(), Verdict::Evaluated(&status, None))
}

/// The evaluator's figures behind [`evaluated`].
fn evaluation(slo: &Slo, reports: &[(u64, u64, u64, u64, u64)]) -> ringwarden_core::slo::SloStatus {
    const THRESHOLD: u64 = 7;
    let mut evaluator = SloEvaluator::new(
        CoreSloSpec {
            target: slo.spec.target,
            window: slo.spec.window,
            max_drop_rate: slo.spec.max_drop_rate,
        },
        THRESHOLD,
    )
    .unwrap();
    for (seq, &(ago, good, total, observed, pairing_dropped)) in reports.iter().enumerate() {
        evaluator.ingest(
            clock() - Duration::from_secs(ago),
            &Report {
                node: "node-a".into(),
                boot_id: "boot-1".into(),
                seq: seq as u64 + 1,
                threshold_id: THRESHOLD,
                good,
                total,
                loss: Counters {
                    observed,
                    aggregated: observed - pairing_dropped,
                    pairing_dropped,
                    ..Counters::default()
                },
                ceiling: None,
            },
        );
    }
    evaluator.evaluate(clock(), None)
}

#[test]
fn slo_health_follows_the_operators_status() {
    let check = |what: &str, object: &Value, status: &str, message: &str| {
        assert_health(SLO_LUA, what, object, status, message)
    };
    let slo = example_slo();
    let ps = Arc::new(example_probeset());

    check(
        "not seen by the operator yet",
        &serde_json::to_value(&slo).unwrap(),
        "Progressing",
        "Waiting for the operator to evaluate the SLO",
    );

    let not_found = slo_status::definition(&slo, &[], &[], None).unwrap_err();
    check(
        "its ProbeSet does not exist",
        &slo_with(slo.clone(), Verdict::Problem(&not_found)),
        "Degraded",
        "ProbeNotFound: spec.probeSet: no ProbeSet \"node-syscalls\" in namespace \"default\"; \
         create it or name an existing one",
    );

    let not_running = slo_status::definition(
        &slo,
        std::slice::from_ref(&ps),
        &[],
        Some(&AgentConfig::default()),
    )
    .unwrap_err();
    check(
        "its ProbeSet runs nowhere",
        &slo_with(slo.clone(), Verdict::Problem(&not_running)),
        "Degraded",
        "ProbeNotRunning: ProbeSet node-syscalls is not running (see its status), so nothing is \
         counted",
    );

    // The probe runs, but its threshold slots went to other SLOs.
    let (probes, _) = ringwarden_crds::plan::plan_probeset(&ps, &[], 4096).unwrap();
    let config = AgentConfig {
        probes,
        ..AgentConfig::default()
    };
    let no_slot: Problem =
        slo_status::definition(&slo, std::slice::from_ref(&ps), &[], Some(&config)).unwrap_err();
    assert_eq!(no_slot.reason, slo_status::reason::NO_THRESHOLD_SLOT);
    check(
        "no kernel threshold slot left",
        &slo_with(slo.clone(), Verdict::Problem(&no_slot)),
        "Degraded",
        &format!("NoThresholdSlot: {}", no_slot.message),
    );

    check(
        "nothing counted yet",
        &evaluated(&slo, &[]),
        "Progressing",
        "NoData: no event counted in the window yet",
    );
    check(
        "met",
        &evaluated(&slo, &[(0, 99_950, 100_000, 100_000, 0)]),
        "Healthy",
        "Met: SLI 99.95% (target 99%), budget left 95%",
    );
    check(
        "met, but burning the budget fast",
        &evaluated(
            &slo,
            &[
                (10 * 86_400, 999_000, 1_000_000, 1_000_000, 0),
                (0, 1_007_000, 1_010_000, 1_010_000, 0),
            ],
        ),
        "Healthy",
        "AtRisk: SLI 99.702% (target 99%), budget left 70%, burn rate 20x",
    );
    check(
        "breached",
        &evaluated(&slo, &[(0, 98_000, 100_000, 100_000, 0)]),
        "Degraded",
        "Breached: SLI 98% (target 99%), budget left -100%",
    );
    check(
        "too many events lost",
        &evaluated(&slo, &[(0, 99_950, 100_000, 100_000, 5_000)]),
        "Degraded",
        "Unreliable: drop rate 0.05 above maxDropRate 0.01, so the SLI cannot be trusted",
    );

    let mut newer = evaluated(&slo, &[(0, 99_950, 100_000, 100_000, 0)]);
    newer["metadata"]["generation"] = json!(2);
    check(
        "the spec changed since the status was written",
        &newer,
        "Progressing",
        "Waiting for the operator to evaluate the latest spec",
    );

    // A node the ProbeSet selects went silent: met no more, stale.
    let mut stale: Slo =
        serde_json::from_value(evaluated(&slo, &[(0, 99_950, 100_000, 100_000, 0)])).unwrap();
    let core = evaluation(&slo, &[(0, 99_950, 100_000, 100_000, 0)]);
    let lacking = ringwarden_operator::ingest::reports::Lacking {
        none_selected: false,
        nodes: 1,
        silent: true,
        listed: vec![(
            "node-b".into(),
            "no report within two report intervals".into(),
        )],
    };
    stale.status = Some(slo_status::desired(
        &stale,
        Verdict::Evaluated(&core, Some(&lacking)),
        &at(NOW),
    ));
    let stale = serde_json::to_value(&stale).unwrap();
    assert_eq!(stale["status"]["state"], "Stale");
    check(
        "a selected node is silent",
        &stale,
        "Degraded",
        "NodesSilent: no fresh count of probe sys from 1 node: node-b (no report within two \
         report intervals). The SLI misses their events; the window's counts are kept and \
         resume exactly when they report",
    );
}

#[test]
fn the_docs_and_the_argocd_cm_example_embed_the_health_checks_verbatim() {
    let gitops = read("docs/gitops.md");
    let cm: Value =
        serde_yaml_ng::from_str(&read("examples/gitops/argocd/argocd-cm.yaml")).unwrap();
    // One script serves ProbeSets and ClusterProbeSets, whose statuses are
    // the same.
    for (script, key) in [
        (
            PROBESET_LUA,
            "resource.customizations.health.ringwarden.dev_ProbeSet",
        ),
        (
            PROBESET_LUA,
            "resource.customizations.health.ringwarden.dev_ClusterProbeSet",
        ),
        (SLO_LUA, "resource.customizations.health.ringwarden.dev_SLO"),
    ] {
        let lua = read(script);
        assert!(
            gitops.contains(&format!("```lua\n{lua}```\n")),
            "docs/gitops.md does not show {script} verbatim"
        );
        assert_eq!(
            cm["data"][key].as_str(),
            Some(lua.as_str()),
            "examples/gitops/argocd/argocd-cm.yaml: {key} is not {script}"
        );
        // The argocd-cm in the docs, if shown, holds the same.
        assert!(gitops.contains(key), "docs/gitops.md does not name {key}");
    }
}

// ------------------------------------------------------------------ metrics

/// The `"ringwarden_…"` names registered in a metrics module, tests left out.
fn names_in_source(path: &str) -> BTreeSet<String> {
    let source = read(path);
    let code = source.split("#[cfg(test)]").next().unwrap();
    let mut names = BTreeSet::new();
    for (i, _) in code.match_indices("\"ringwarden_") {
        let rest = &code[i + 1..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        names.insert(rest[..end].to_owned());
    }
    assert!(!names.is_empty(), "{path}: no metric names found");
    names
}

/// `(name, type)` of every family the agent's `/metrics` serves, with one
/// probe that has a series and an SLO, so that every family has a sample.
fn agent_exposition() -> Vec<(String, String)> {
    use ringwarden_node_agent::{
        metrics::{ProbeLabels, encode, registry},
        probes::{Snapshot, ThresholdCount},
    };
    let mut snapshot = Snapshot::default();
    let mut h = Histogram::new();
    h.record(1_000);
    snapshot.series.insert("read".into(), h);
    snapshot.thresholds.push(ThresholdCount {
        slo: "default/fast".into(),
        good: 1,
        total: 1,
    });
    let labels = ProbeLabels {
        namespace: "default".into(),
        probeset: "demo".into(),
        probe: "sys".into(),
        node: "n1".into(),
    };
    let values = labels.values().map(str::to_owned);
    let registry = registry(Arc::new(Mutex::new(vec![(labels, snapshot)])));
    ringwarden_node_agent::uplink::UplinkMetrics::new(&registry).unwrap();
    // Families with labels show only once they have a sample.
    let node = ringwarden_node_agent::metrics::NodeMetrics::new(&registry).unwrap();
    let with_reason = [&values[..], &["other".to_owned()]].concat();
    node.probe_loads.with_label_values(&values).inc();
    node.probe_load_failures
        .with_label_values(&with_reason)
        .inc();
    node.probe_failing.with_label_values(&with_reason).set(1);
    node.pod_filter_cgroups.with_label_values(&values).set(1);
    node.uprobe_processes.with_label_values(&values).set(1);
    node.pod_filter_updates.with_label_values(&values).inc();
    let text = encode(&registry);
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let (name, kind) = l.split_once(' ').unwrap();
            (name.to_owned(), kind.to_owned())
        })
        .collect()
}

#[test]
fn docs_metrics_lists_every_metric_the_agent_and_the_operator_export() {
    let doc = read("docs/metrics.md");
    let listed = |name: &str| doc.contains(&format!("| `{name}` |"));

    let exposition = agent_exposition();
    assert!(exposition.len() >= 15, "{exposition:?}");
    for (name, kind) in &exposition {
        assert!(
            doc.contains(&format!("| `{name}` | {kind} |")),
            "docs/metrics.md has no row `| `{name}` | {kind} |` for an agent metric"
        );
    }
    let mut agent = names_in_source("node-agent/src/metrics.rs");
    agent.extend(names_in_source("node-agent/src/uplink.rs"));
    let served: BTreeSet<String> = exposition.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(
        agent, served,
        "the agent's registered names and its exposition differ"
    );

    let mut operator = names_in_source("operator/src/metrics.rs");
    // The TLS listener's own counter.
    operator.extend(names_in_source("operator/src/ingest/tls.rs"));
    for name in &operator {
        assert!(
            listed(name),
            "docs/metrics.md has no row for the operator metric {name}"
        );
    }

    // And nothing listed that is not exported.
    let exported: BTreeSet<&String> = agent.iter().chain(&operator).collect();
    let mut rest = doc.as_str();
    while let Some(i) = rest.find("| `ringwarden_") {
        let name = &rest[i + 3..];
        let name = &name[..name.find('`').unwrap()];
        assert!(
            exported.contains(&name.to_owned()),
            "docs/metrics.md lists {name}, which neither the agent nor the operator exports"
        );
        rest = &rest[i + 3..];
    }
}

// ------------------------------------------------------------- cluster suite

#[test]
fn the_cluster_suite_parses_and_is_wired_up() {
    let script = repo().join("scripts/e2e-cluster.sh");
    let output = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .expect("bash runs");
    assert!(
        output.status.success(),
        "scripts/e2e-cluster.sh does not parse:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(&script.metadata().unwrap().permissions());
    assert!(
        mode & 0o111 != 0,
        "scripts/e2e-cluster.sh is not executable"
    );

    let makefile = read("Makefile");
    assert!(
        makefile.lines().any(|l| l.starts_with("e2e-cluster:")),
        "the Makefile has no e2e-cluster target"
    );
    assert!(makefile.contains("scripts/e2e-cluster.sh"));

    let script = read("scripts/e2e-cluster.sh");
    for needed in [
        "examples/probeset.yaml",
        "examples/slo.yaml",
        "helm install",
        "pod-security.kubernetes.io/enforce=privileged",
        "KEEP",
        "trap cleanup EXIT",
    ] {
        assert!(script.contains(needed), "scripts/e2e-cluster.sh: {needed}");
    }
    for doc in ["README.md", "docs/install.md"] {
        assert!(
            read(doc).contains("make e2e-cluster"),
            "{doc} does not mention make e2e-cluster"
        );
    }
    let install = read("docs/install.md");
    for step in [
        "kind create cluster",
        "make images",
        "kind load docker-image",
    ] {
        assert!(install.contains(step), "docs/install.md: {step}");
    }
}

#[test]
fn the_cluster_suite_says_so_when_no_cluster_answers() {
    // A kubeconfig pointing at a port nothing listens on.
    let dir = std::env::temp_dir().join(format!("ringwarden-kubeconfig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config");
    std::fs::write(
        &config,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: none\n  cluster: {server: \"https://127.0.0.1:1\"}\n\
         contexts:\n- name: none\n  context: {cluster: none, user: none}\ncurrent-context: none\n\
         users:\n- name: none\n  user: {token: x}\n",
    )
    .unwrap();
    let output = Command::new(repo().join("scripts/e2e-cluster.sh"))
        .env("KUBECONFIG", &config)
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    let output = output.expect("the script runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    // Without kubectl (only the cluster suite needs it) the script must say
    // so first; with it, that no cluster answers, naming the context.
    let has_kubectl = Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_ok();
    if has_kubectl {
        assert!(
            stderr.contains("no cluster answers") && stderr.contains("context none"),
            "{stderr}"
        );
    } else {
        assert!(
            stderr.contains("kubectl is not on PATH; install it"),
            "{stderr}"
        );
    }
}

// -------------------------------------------------------------------- links

/// Relative links `](path)` of a Markdown file that do not lead to a file.
fn broken_links(doc: &str) -> Vec<String> {
    let base = repo().join(doc).parent().unwrap().to_path_buf();
    // Prose only: code blocks and code spans hold no links.
    let mut in_fence = false;
    let mut text = String::new();
    for line in read(doc).lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if !in_fence {
            let prose: Vec<&str> = line.split('`').step_by(2).collect();
            text.push_str(&prose.join(" "));
            text.push('\n');
        }
    }
    let mut broken = Vec::new();
    for (i, _) in text.match_indices("](") {
        let target = &text[i + 2..];
        let target = &target[..target.find(')').unwrap_or(0)];
        if target.is_empty() || target.contains("://") || target.starts_with('#') {
            continue;
        }
        let path = target.split('#').next().unwrap();
        if !base.join(path).exists() {
            broken.push(target.to_owned());
        }
    }
    broken
}

#[test]
fn links_in_the_readme_and_the_docs_lead_to_files() {
    let mut docs = vec![
        "README.md".to_owned(),
        "examples/gitops/README.md".to_owned(),
        "charts/ringwarden/README.md".to_owned(),
    ];
    for entry in std::fs::read_dir(repo().join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            docs.push(format!(
                "docs/{}",
                path.file_name().unwrap().to_string_lossy()
            ));
        }
    }
    for doc in docs {
        let broken = broken_links(&doc);
        assert!(broken.is_empty(), "{doc}: broken links {broken:?}");
    }
    let readme = read("README.md");
    for doc in [
        "docs/gitops.md",
        "docs/reference.md",
        "docs/quota.md",
        "docs/troubleshooting.md",
        "docs/security.md",
        "docs/metrics.md",
        "docs/install.md",
    ] {
        assert!(
            readme.contains(&format!("]({doc}")),
            "README.md does not link {doc}"
        );
    }
}
