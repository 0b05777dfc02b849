//! Every status the operator writes, at its longest, is one the CRD's status
//! schema admits (the API server refuses the whole status patch otherwise),
//! follows the `metav1.Condition` rules, and stays small at 5 000 nodes.

mod common;

use std::time::{Duration, SystemTime};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use ringwarden_core::slo::{Burn, Counts, SloState, SloStatus};
use ringwarden_crds::{ProbeSetStatus, SloStatus as CrdSloStatus};
use ringwarden_operator::{
    ingest::reports::{Figures, Flow, MAX_LISTED_NODES, NodeProblem, problem},
    ingest::slo_status::{self, Problem, Saved, Verdict},
    reconcile::assess::assess,
    reconcile::status::{self, Reported},
};
use serde_json::Value;

fn at(seconds: i64) -> Time {
    Time(Timestamp::from_second(seconds).unwrap())
}

/// `metav1.Condition`'s own validation (apimachinery's
/// `ValidateConditions`), which built-in types get and a CRD only through
/// its schema: checked here so conditions stay conventional either way.
fn assert_conditions_conventional(status: &Value) {
    let reason = regex_lite(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$");
    let type_ = regex_lite(
        r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
    );
    for c in status["conditions"].as_array().expect("conditions") {
        let r = c["reason"].as_str().unwrap();
        assert!(r.len() <= 1024 && reason(r), "reason {r:?}");
        let t = c["type"].as_str().unwrap();
        assert!(t.len() <= 316 && type_(t), "type {t:?}");
        assert!(
            ["True", "False", "Unknown"].contains(&c["status"].as_str().unwrap()),
            "{c}"
        );
        assert!(c["message"].as_str().unwrap().len() <= 32_768, "{c}");
        assert!(c["observedGeneration"].as_i64().is_none_or(|g| g >= 0));
    }
}

fn regex_lite(pattern: &str) -> impl Fn(&str) -> bool {
    let env = common::crd_schema::env();
    let pattern = pattern.to_owned();
    move |s: &str| {
        let rule = format!("self.matches('{}')", pattern.replace('\\', "\\\\"));
        common::crd_schema::eval(&env, &rule, cel::Value::String(s.to_owned().into()))
            .unwrap_or_else(|e| panic!("{rule}: {e}"))
    }
}

fn check(kind: &str, status: &Value) -> usize {
    common::assert_status_valid(kind, status);
    assert_conditions_conventional(status);
    serde_json::to_vec(status).unwrap().len()
}

/// The largest ProbeSet the schema admits: 64 probes with 63-character
/// names, each planned with its reasons.
fn largest_probeset() -> ringwarden_crds::ProbeSet {
    let probes: String = (0..64)
        .map(|i| {
            let name = format!("p{i:02}-{}", "x".repeat(59));
            format!(
                "  - name: {name}\n    kind: syscalls\n    export: {{policy: all}}\n    peakEventRate: 1e8\n    priority: {}\n",
                i % 3
            )
        })
        .collect();
    let mut ps = common::probeset(
        &"n".repeat(63),
        &"a".repeat(253),
        i64::MAX,
        &format!("ringBuffer: {{nodeBudget: 1Mi}}\nprobes:\n{probes}"),
    );
    ps.metadata.generation = Some(i64::MAX);
    ps
}

#[test]
fn the_longest_probeset_status_is_admitted_and_small() {
    let ps = largest_probeset();
    let assessment = assess(&ps, &[]);
    // 5 000 nodes, every one failing: the list is bounded, the messages cut.
    let figures = Figures {
        desired: 5_000,
        ready: 0,
        reporting: 5_000,
        flow: Flow {
            events_per_second: 1e12,
            exported: u64::MAX / 2,
            ringbuf_dropped: u64::MAX / 4,
            ..Flow::default()
        },
        problems: (0..MAX_LISTED_NODES)
            .map(|i| NodeProblem {
                node: format!("{i}{}", "n".repeat(252)),
                reason: problem::LOAD_FAILED,
                message: format!(
                    "verifier: {}",
                    "R1 invalid mem access 'scalar' ".repeat(200)
                ),
            })
            .collect(),
        problem_nodes: 5_000,
        worst: Some(problem::LOAD_FAILED),
        ..Figures::default()
    };
    let reported = Reported::from_figures(&figures);
    // On nodes of 256 CPUs, a 64Mi node budget holds not one probe: every
    // probe is cut and says why.
    let assessed = [ringwarden_operator::reconcile::world::Assessed {
        namespace: ps.metadata.namespace.clone().unwrap(),
        name: ps.metadata.name.clone().unwrap(),
        namespaces: ps.metadata.namespace.clone().map(|n| vec![n]),
        probeset: std::sync::Arc::new(ps.clone()),
        assessment: assessment.clone(),
    }];
    let node = Default::default();
    let shares = ringwarden_operator::reconcile::share::node_shares(
        &assessed,
        &[(&node, Some(256))],
        64 << 20,
    );
    let share = shares.values().next().expect("the one node runs it");
    assert!(share.share.probes.iter().all(|p| !p.admitted));
    let mut s: ProbeSetStatus = status::desired(
        &ps,
        &assessment,
        true,
        Some(&reported),
        Some(share),
        &at(1_000),
    );
    s.cluster = Some("c".repeat(63));
    let bytes = check("ProbeSet", &serde_json::to_value(&s).unwrap());
    assert!(
        s.conditions
            .iter()
            .any(|c| c.type_ == "QuotaConstrained" && c.status == "True"),
        "the fixture is cut by its budget: {:?}",
        s.conditions
    );
    // Far below etcd's 1.5 MiB request limit, whatever the cluster size.
    assert!(bytes < 128 * 1024, "{bytes} bytes");
    println!("longest ProbeSet status: {bytes} bytes");
}

#[test]
fn an_invalid_probeset_status_with_every_error_is_admitted() {
    let probes: String = (0..64)
        .map(|i| {
            let cgroup = format!("'../{}'", "c".repeat(500));
            format!("  - name: p{i}\n    kind: uprobe\n    filter: {{cgroups: [{cgroup}]}}\n")
        })
        .collect();
    let ps = common::probeset("shop", "bad", 2, &format!("probes:\n{probes}"));
    let s = status::desired(&ps, &assess(&ps, &[]), true, None, None, &at(5));
    assert!(
        s.conditions
            .iter()
            .any(|c| c.type_ == "Invalid" && c.status == "True"),
        "{:?}",
        s.conditions
    );
    let bytes = check("ProbeSet", &serde_json::to_value(&s).unwrap());
    assert!(bytes < 64 * 1024, "{bytes} bytes");
}

fn slo() -> ringwarden_crds::Slo {
    let mut slo = common::slo(
        &"n".repeat(63),
        &"s".repeat(253),
        &format!(
            "probeSet: {}\nprobe: sys\nindicator: {{latency: {{threshold: 10ms}}}}\ntarget: 99.999\nwindow: 90d\n",
            "a".repeat(253)
        ),
    );
    slo.metadata.generation = Some(i64::MAX);
    slo
}

#[test]
fn every_slo_status_is_admitted() {
    let slo = slo();
    let problem = Problem {
        reason: slo_status::reason::PROBE_NOT_FOUND,
        message: "no such probe: ".to_owned() + &"y".repeat(10_000),
        invalid: true,
    };
    let burn = |rate| Burn {
        long_window: Duration::from_secs(3600),
        short_window: Duration::from_secs(300),
        factor: 14.4,
        long_rate: rate,
        short_rate: rate,
        firing: true,
    };
    let evaluated = |sli, budget, rate, latency| SloStatus {
        state: SloState::Breached,
        counts: Counts {
            good: 1,
            total: u64::MAX,
            observed: u64::MAX,
            lost: u64::MAX / 2,
        },
        sli,
        error_budget_remaining: budget,
        drop_rate: Some(0.5),
        fast_burn: burn(rate),
        slow_burn: burn(rate),
        observed_latency_ns: latency,
        counting_since: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1 << 40)),
    };
    let extremes = [
        evaluated(Some(0.0), Some(-1e15), Some(1e15), Some(u64::MAX)),
        evaluated(Some(1.0), Some(1.0), Some(0.0), Some(0)),
        evaluated(None, None, None, None),
    ];
    let mut statuses: Vec<CrdSloStatus> = vec![slo_status::desired(
        &slo,
        Verdict::Problem(&problem),
        &at(7),
    )];
    statuses.extend(
        extremes
            .iter()
            .map(|e| slo_status::desired(&slo, Verdict::Evaluated(e, None), &at(7))),
    );
    let saved = [
        Saved::Current,
        Saved::Failed {
            error: "e".repeat(100_000),
            since: at(7).0.to_string(),
        },
        Saved::RestoredStale {
            age: Duration::from_secs(86_400 * 3),
            at: at(7).0.to_string(),
        },
    ];
    for (i, mut s) in statuses.into_iter().enumerate() {
        slo_status::with_saved(&mut s, None, &saved[i % saved.len()], &at(7));
        s.cluster = Some("c".repeat(63));
        let bytes = check("SLO", &serde_json::to_value(&s).unwrap());
        assert!(bytes < 16 * 1024, "{bytes} bytes");
    }
}

#[test]
fn the_check_refuses_what_the_api_server_would() {
    let refused = |status: Value| {
        std::panic::catch_unwind(|| common::assert_status_valid("ProbeSet", &status)).is_err()
    };
    assert!(refused(serde_json::json!({"unknownField": 1})));
    assert!(refused(serde_json::json!({"eventsPerSecond": "fast"})));
    assert!(refused(
        serde_json::json!({"conditions": [{"type": "Ready", "status": "True"}]})
    ));
    assert!(!refused(serde_json::json!({"observedGeneration": 1})));
}
