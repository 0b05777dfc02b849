//! ProbeSet status: conditions, plan, node share and figures.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use ringwarden_crds::{ExportPolicy, ExportSpec, ProbeKind, ProbeSetSpec, ProbeSpec};

use super::*;
use crate::reconcile::assess::assess;

fn at(seconds: i64) -> Time {
    Time(Timestamp::from_second(seconds).unwrap())
}

fn probeset(rate: f64, budget: &str) -> ProbeSet {
    let mut ps = ProbeSet::new(
        "web",
        ProbeSetSpec {
            node_selector: [("gpu".to_string(), "true".to_string())].into(),
            pod_selector: None,
            probes: vec![ProbeSpec {
                name: "sys".into(),
                kind: ProbeKind::Syscalls,
                uprobe: None,
                go_runtime: None,
                filter: None,
                max_series: 64,
                export: ExportSpec {
                    policy: ExportPolicy::All,
                    slower_than: None,
                },
                peak_event_rate: rate,
                sampling: 1.0,
                priority: 0,
            }],
            ring_buffer: ringwarden_crds::RingBufferSpec {
                node_budget: budget.into(),
                ..Default::default()
            },
            max_drop_rate: 0.01,
            report_interval: Duration::from_secs(10),
        },
    );
    ps.metadata.namespace = Some("shop".into());
    ps.metadata.generation = Some(3);
    ps
}

fn types(s: &ProbeSetStatus) -> Vec<(&str, &str, &str)> {
    s.conditions
        .iter()
        .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
        .collect()
}

#[test]
fn report_figures_are_rounded_and_the_node_list_is_bounded() {
    use crate::ingest::reports::{Flow, NodeProblem, problem};
    let f = Figures {
        desired: 1000,
        ready: 985,
        flow: Flow {
            events_per_second: 123_456.0,
            exported: 3000,
            ringbuf_dropped: 1,
            ..Flow::default()
        },
        problems: (0..10)
            .map(|i| NodeProblem {
                node: format!("node-{i}"),
                reason: problem::NOT_REPORTING,
                message: "no report within two report intervals".into(),
            })
            .collect(),
        problem_nodes: 15,
        worst: Some(problem::LOAD_FAILED),
        ..Figures::default()
    };
    let r = Reported::from_figures(&f);
    assert_eq!(r.ready, "985/1000");
    assert_eq!(r.events_per_second, 120_000.0);
    assert_eq!(r.drop_percent, 0.033);
    let (reason, message) = r.degraded.clone().unwrap();
    assert_eq!(reason, "LoadFailed");
    assert!(
        message.starts_with("15 of 1000 nodes: node-0: no report"),
        "{message}"
    );
    assert!(message.ends_with("; and 5 more"), "{message}");
    assert_eq!(round_significant(0.0, 2), 0.0);
    assert_eq!(round_significant(f64::NAN, 2), 0.0);
    let mut ps = probeset(1000.0, "64Mi");
    let s = desired(&ps, &assess(&ps, &[]), true, Some(&r), None, &at(100));
    assert_eq!(s.conditions[3].type_, "Degraded");
    assert_eq!(s.conditions[3].reason, "LoadFailed");
    // Not ready while a node does not run its probes, and stalled.
    assert_eq!(
        types(&s),
        [
            ("Ready", "False", "LoadFailed"),
            ("Invalid", "False", "ValidSpec"),
            ("QuotaConstrained", "False", "WithinBudget"),
            ("Degraded", "True", "LoadFailed"),
            ("Stalled", "True", "LoadFailed"),
            ("Reconciling", "False", "Reconciled"),
        ]
    );
    assert_eq!(s.state.as_deref(), Some("Degraded: LoadFailed"));
    ps.status = Some(s.clone());
    // Without fresh figures the status keeps what was written.
    assert_eq!(
        desired(&ps, &assess(&ps, &[]), true, None, None, &at(200)),
        s
    );
}

#[test]
fn a_probeset_the_node_budget_cuts_says_what_it_asked_got_and_shares_with() {
    use ringwarden_core::maps::{fixed_bytes, ringbuf_bytes};
    // Another team's ProbeSet of higher priority on the same nodes: its
    // priority counts only in its own namespace, so the two namespaces
    // share the node equally and ours gets 128 KiB of the 256 KiB.
    let ps = probeset(10_000.0, "64Mi");
    let mut other = probeset(10_000.0, "64Mi");
    other.metadata.namespace = Some("payments".into());
    other.metadata.name = Some("ledger".into());
    other.spec.probes[0].priority = 1;
    let assessed: Vec<crate::reconcile::world::Assessed> = [&ps, &other]
        .iter()
        .map(|p| crate::reconcile::world::Assessed {
            namespace: p.metadata.namespace.clone().unwrap(),
            name: p.metadata.name.clone().unwrap(),
            namespaces: p.metadata.namespace.clone().map(|n| vec![n]),
            probeset: std::sync::Arc::new((*p).clone()),
            assessment: assess(p, &[]),
        })
        .collect();
    let fixed = fixed_bytes(
        &ringwarden_crds::plan::probe_maps(&ps.spec.probes[0]),
        4,
        4096,
    );
    let budget = 2 * fixed + ringbuf_bytes(256 << 10, 4096) + ringbuf_bytes(16 << 10, 4096);
    let gpu: crate::reconcile::world::Labels = [("gpu".to_owned(), "true".to_owned())].into();
    let shares = crate::reconcile::share::node_shares(&assessed, &[(&gpu, Some(4))], budget);
    let share = &shares["shop/web"];
    let s = desired(&ps, &assess(&ps, &[]), true, None, Some(share), &at(100));
    let q = s
        .conditions
        .iter()
        .find(|c| c.type_ == "QuotaConstrained")
        .unwrap();
    assert_eq!(
        (q.status.as_str(), q.reason.as_str()),
        ("True", "NodeBudgetShort")
    );
    assert!(
        q.message
            .contains("(for 4 possible CPUs) gives this ProbeSet ")
            && q.message.contains(
                "on its tightest node, with 1 other ProbeSet in 1 other namespace: \
                 sys: ring 128Ki of the 256Ki it asks for"
            )
            && !q.message.contains("payments")
            && !q.message.contains("ledger"),
        "{}",
        q.message
    );
    assert_eq!(s.ring_buffer.as_deref(), Some("128Ki"));
    let events = notices(None, &s);
    assert!(
        events
            .iter()
            .any(|n| n.warning && n.reason == "NodeBudgetShort"),
        "{events:?}"
    );
    let plan = s.plan.unwrap();
    assert_eq!(plan.probes[0].ring_bytes, 128 << 10);
    assert_eq!(plan.used_bytes, 128 << 10);
    assert!(
        plan.probes[0].reasons[1]
            .starts_with("halved once more to fit namespace shop's share of the node budget"),
        "{:?}",
        plan.probes[0].reasons
    );
    let n = plan.node_share.unwrap();
    assert_eq!((n.node_budget_bytes, n.cpus), (budget, 4));
    assert_eq!(n.requested_bytes, fixed + ringbuf_bytes(256 << 10, 4096));
    assert_eq!(n.granted_bytes, fixed + ringbuf_bytes(128 << 10, 4096));
    assert_eq!((n.other_probe_sets, n.other_namespaces), (1, 1));
    // The other team's higher priority bought it nothing over another
    // namespace: it is cut the same.
    let o = desired(
        &other,
        &assess(&other, &[]),
        true,
        None,
        Some(&shares["payments/ledger"]),
        &at(100),
    );
    assert!(
        o.conditions
            .iter()
            .any(|c| c.type_ == "QuotaConstrained" && c.status == "True")
    );
    assert_eq!(o.ring_buffer.as_deref(), Some("128Ki"));
}

#[test]
fn a_planned_probeset_is_ready_only_once_every_node_reports_every_probe_running() {
    let mut ps = probeset(1000.0, "64Mi");
    let s = desired(&ps, &assess(&ps, &[]), true, None, None, &at(100));
    assert_eq!(
        types(&s),
        [
            ("Ready", "False", "AwaitingReports"),
            ("Invalid", "False", "ValidSpec"),
            ("QuotaConstrained", "False", "WithinBudget"),
            ("Stalled", "False", "NotStalled"),
            ("Reconciling", "True", "AwaitingReports"),
        ]
    );
    assert_eq!(s.state.as_deref(), Some("Reconciling"));
    assert_eq!(
        s.conditions[0].message,
        "1 probe planned with 32Ki of ring buffers per node; waiting for the agents' first reports"
    );
    ps.status = Some(s.clone());
    let all = Reported::from_figures(&Figures {
        desired: 3,
        ready: 3,
        reporting: 3,
        ..Figures::default()
    });
    let running = desired(&ps, &assess(&ps, &[]), true, Some(&all), None, &at(110));
    assert_eq!(
        types(&running),
        [
            ("Ready", "True", "Running"),
            ("Invalid", "False", "ValidSpec"),
            ("QuotaConstrained", "False", "WithinBudget"),
            ("Degraded", "False", "NodesHealthy"),
            ("Stalled", "False", "NotStalled"),
            ("Reconciling", "False", "Reconciled"),
        ]
    );
    assert_eq!(
        running.conditions[0].message,
        "3/3 nodes run every probe; 1 probe planned with 32Ki of ring buffers per node"
    );
    assert_eq!(running.state.as_deref(), Some("Ready"));
    assert_eq!(
        notices(Some(&s), &running)
            .iter()
            .map(|n| (n.warning, n.reason))
            .collect::<Vec<_>>(),
        [(false, "Running")]
    );
    let s = desired(&ps, &assess(&ps, &[]), true, None, None, &at(100));
    assert_eq!(s.observed_generation, Some(3));
    assert!(
        s.conditions
            .iter()
            .all(|c| c.observed_generation == Some(3))
    );
    assert_eq!(s.ring_buffer.as_deref(), Some("32Ki"));
    let plan = s.plan.unwrap();
    assert_eq!((plan.budget_bytes, plan.used_bytes), (64 << 20, 32 << 10));
    assert_eq!(plan.probes[0].sample_every, 1);
}

#[test]
fn the_measured_drop_stands_next_to_the_plans_prediction() {
    use crate::ingest::reports::Flow;
    // 20000 ev/s into 64 KiB: a 50ms drain period brings 1000 records,
    // the ring holds 682.
    let mut ps = probeset(20_000.0, "64Ki");
    ps.spec.max_drop_rate = 0.5;
    let f = Figures {
        desired: 1,
        ready: 1,
        flow: Flow {
            exported: 200_000,
            ringbuf_dropped: 63_000,
            ..Flow::default()
        },
        ..Figures::default()
    };
    let r = Reported::from_figures(&f);
    let s = desired(&ps, &assess(&ps, &[]), true, Some(&r), None, &at(100));
    assert_eq!(s.predicted_drop_percent, Some(32.0));
    assert_eq!(s.drop_percent, Some(32.0));
    let plan = s.plan.unwrap();
    assert!((plan.probes[0].predicted_drop - (1.0 - 682.0 / 1000.0)).abs() < 1e-12);
    // Within the default 1 %, the planner samples instead.
    let ps = probeset(20_000.0, "64Ki");
    let s = desired(&ps, &assess(&ps, &[]), true, None, None, &at(100));
    assert_eq!(s.predicted_drop_percent, Some(0.0));
    assert_eq!(s.plan.unwrap().probes[0].sample_every, 2);
}

#[test]
fn recomputing_an_unchanged_status_keeps_it_identical() {
    let mut ps = probeset(1000.0, "64Mi");
    let first = desired(&ps, &assess(&ps, &[]), true, None, None, &at(100));
    ps.status = Some(first.clone());
    let again = desired(&ps, &assess(&ps, &[]), true, None, None, &at(200));
    assert_eq!(again, first);
    assert!(notices(Some(&first), &again).is_empty());
}

#[test]
fn only_flipped_conditions_get_a_new_transition_time() {
    let mut ps = probeset(1000.0, "64Mi");
    ps.status = Some(desired(&ps, &assess(&ps, &[]), true, None, None, &at(100)));
    ps.spec.ring_buffer.node_budget = "8Ki".into();
    ps.spec.probes[0].peak_event_rate = 100_000.0;
    let s = desired(&ps, &assess(&ps, &[]), true, None, None, &at(200));
    let time = |t: &str| {
        s.conditions
            .iter()
            .find(|c| c.type_ == t)
            .unwrap()
            .last_transition_time
            .clone()
    };
    assert_eq!(time("Ready"), at(100));
    assert_eq!(time("QuotaConstrained"), at(200));
}

#[test]
fn an_invalid_spec_says_why_and_has_no_plan() {
    let mut ps = probeset(1000.0, "64 megs");
    ps.status = Some(ProbeSetStatus {
        ready: Some("2/3".into()),
        conditions: vec![Condition {
            type_: "Degraded".into(),
            status: "True".into(),
            reason: "LoadFailed".into(),
            message: "node-1: verifier".into(),
            observed_generation: Some(2),
            last_transition_time: at(50),
        }],
        ..Default::default()
    });
    let s = desired(&ps, &assess(&ps, &[]), true, None, None, &at(100));
    // Nothing runs: no report-made condition or figure stays.
    assert_eq!(
        types(&s),
        [
            ("Ready", "False", "InvalidSpec"),
            ("Invalid", "True", "InvalidSpec"),
            ("Stalled", "True", "InvalidSpec"),
            ("Reconciling", "False", "Reconciled"),
        ]
    );
    assert_eq!(
        s.state.as_deref(),
        Some("Invalid: spec.ringBuffer.nodeBudget")
    );
    assert!(
        s.conditions[1]
            .message
            .starts_with("spec.ringBuffer.nodeBudget: \"64 megs\" is not a byte quantity")
    );
    assert_eq!((s.plan, s.ring_buffer), (None, None));
    assert_eq!(s.predicted_drop_percent, None);
    assert_eq!(s.ready, None);
}

#[test]
fn events_mark_transitions_only() {
    let mut ps = probeset(1000.0, "64Mi");
    let created = desired(&ps, &assess(&ps, &[]), true, None, None, &at(1));
    let n = notices(None, &created);
    assert_eq!(n.len(), 1);
    assert_eq!((n[0].warning, n[0].reason), (false, "Planned"));

    ps.status = Some(created.clone());
    ps.spec.probes[0].peak_event_rate = 1e6;
    ps.spec.ring_buffer.node_budget = "8Ki".into();
    let squeezed = desired(&ps, &assess(&ps, &[]), true, None, None, &at(2));
    let n = notices(Some(&created), &squeezed);
    assert_eq!(
        n.iter().map(|n| (n.warning, n.reason)).collect::<Vec<_>>(),
        [(true, "BudgetShort")]
    );

    ps.status = Some(squeezed.clone());
    ps.spec.ring_buffer.node_budget = "nope".into();
    let broken = desired(&ps, &assess(&ps, &[]), true, None, None, &at(3));
    let n = notices(Some(&squeezed), &broken);
    assert_eq!(
        n.iter().map(|n| (n.warning, n.reason)).collect::<Vec<_>>(),
        [(true, "InvalidSpec")]
    );

    ps.status = Some(broken.clone());
    ps.spec.ring_buffer.node_budget = "64Mi".into();
    ps.spec.probes[0].peak_event_rate = 1000.0;
    let fixed = desired(&ps, &assess(&ps, &[]), false, None, None, &at(4));
    let n = notices(Some(&broken), &fixed);
    assert_eq!(
        n.iter().map(|n| (n.warning, n.reason)).collect::<Vec<_>>(),
        [(true, "NoMatchingNodes")]
    );
    assert!(n[0].note.contains("(gpu=true)"), "{}", n[0].note);
    assert_eq!(fixed.state.as_deref(), Some("NoMatchingNodes"));
}

fn with_uprobe(mut ps: ProbeSet) -> ProbeSet {
    let mut up = ps.spec.probes[0].clone();
    up.name = "checkout".into();
    up.kind = ProbeKind::Uprobe;
    up.uprobe = Some(ringwarden_crds::UprobeTarget {
        binary: "/usr/bin/app".into(),
        symbol: "checkout".into(),
    });
    ps.spec.probes.push(up);
    ps
}

fn degraded(s: &ProbeSetStatus) -> &Condition {
    s.conditions
        .iter()
        .find(|c| c.type_ == condition::DEGRADED)
        .expect("a Degraded condition")
}

#[test]
fn uprobes_in_a_cluster_without_them_degrade_the_probeset_naming_the_chart_value() {
    let mut ps = with_uprobe(probeset(10.0, "64Mi"));
    let a = assess(&ps, &[]);
    let mut s = desired(&ps, &a, true, None, None, &at(1));
    uprobes_not_enabled(&ps, false, &mut s, &at(1));
    let d = degraded(&s);
    assert_eq!(
        (d.status.as_str(), d.reason.as_str()),
        ("True", "UprobesNotEnabled")
    );
    assert_eq!(s.state.as_deref(), Some("Degraded: UprobesNotEnabled"));
    assert_eq!(
        types(&s)[0],
        ("Ready", "False", "UprobesNotEnabled"),
        "never ready while a probe cannot run"
    );
    assert!(
        d.message
            .starts_with("probe checkout (kind uprobe or goRuntime) not run")
            && d.message.contains("CAP_SYS_ADMIN")
            && d.message.contains("agent.uprobes.enabled=true"),
        "{}",
        d.message
    );
    assert_eq!(
        notices(None, &s)
            .iter()
            .find(|n| n.reason == "UprobesNotEnabled")
            .map(|n| n.warning),
        Some(true)
    );
    // Written once, then recomputed without reports: identical.
    ps.status = Some(s.clone());
    let mut again = desired(&ps, &a, true, None, None, &at(9));
    uprobes_not_enabled(&ps, false, &mut again, &at(9));
    assert_eq!(again, s);
    // Enabled: nothing to say.
    let mut enabled = desired(&ps, &a, true, None, None, &at(9));
    uprobes_not_enabled(&ps, true, &mut enabled, &at(9));
    assert!(
        enabled
            .conditions
            .iter()
            .all(|c| c.reason != "UprobesNotEnabled"),
        "{enabled:?}"
    );
}

#[test]
fn a_probeset_without_uprobes_is_not_marked() {
    let ps = probeset(10.0, "64Mi");
    let a = assess(&ps, &[]);
    let mut s = desired(&ps, &a, true, None, None, &at(1));
    let before = s.clone();
    uprobes_not_enabled(&ps, false, &mut s, &at(1));
    assert_eq!(s, before);
}

#[test]
fn long_notes_are_cut_at_a_character_boundary() {
    let s = "é".repeat(1000);
    let t = truncate(&s, MAX_NOTE_BYTES);
    assert!(t.len() <= MAX_NOTE_BYTES && t.ends_with('…'));
}

#[test]
fn another_controllers_condition_is_neither_applied_nor_a_reason_to_write() {
    let mut ps = probeset(1000.0, "64Mi");
    let ours = desired(&ps, &assess(&ps, &[]), true, None, None, &at(100));
    let mut current = ours.clone();
    current.conditions.push(Condition {
        type_: "example.com/Audited".into(),
        status: "True".into(),
        reason: "Checked".into(),
        message: "written by another controller".into(),
        observed_generation: None,
        last_transition_time: at(50),
    });
    ps.status = Some(current.clone());
    let again = desired(&ps, &assess(&ps, &[]), true, None, None, &at(200));
    assert!(
        again
            .conditions
            .iter()
            .all(|c| condition::OWNED.contains(&c.type_.as_str())),
        "{:?}",
        again.conditions
    );
    assert!(up_to_date(Some(&current), &again));
    // A change of ours still counts.
    let mut changed = current.clone();
    changed.conditions[0].message = "something else".into();
    assert!(!up_to_date(Some(&changed), &again));
    assert!(!up_to_date(None, &again));
}
