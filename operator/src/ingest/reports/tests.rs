//! Aggregation of reports: histograms, baselines, figures and boots.

use ringwarden_proto::v1;

use super::*;

fn sparse(buckets: &[(u16, u64)]) -> Sparse {
    Sparse {
        buckets: buckets.to_vec(),
        ..Sparse::default()
    }
}

#[test]
fn sparse_histograms_subtract_and_merge_bucket_by_bucket() {
    let later = sparse(&[(1, 5), (3, 7), (9, 2)]);
    let earlier = sparse(&[(1, 5), (2, 1), (3, 4)]);
    assert_eq!(later.delta_since(&earlier).buckets, [(3, 3), (9, 2)]);
    let mut a = sparse(&[(1, 1), (5, 1)]);
    a.merge(&sparse(&[(0, 2), (5, 2), (7, 1)]));
    assert_eq!(a.buckets, [(0, 2), (1, 1), (5, 3), (7, 1)]);
    assert_eq!(a.count(), 7);
}

#[test]
fn malformed_histograms_are_rejected() {
    let h = |index: Vec<u32>, count: Vec<u64>| v1::Histogram {
        bucket_index: index,
        bucket_count: count,
        ..Default::default()
    };
    assert!(Sparse::from_proto("read", &h(vec![1, 2], vec![1])).is_err());
    assert!(Sparse::from_proto("read", &h(vec![2, 2], vec![1, 1])).is_err());
    assert!(Sparse::from_proto("read", &h(vec![1024], vec![1])).is_err());
    let ok = Sparse::from_proto("read", &h(vec![1, 7], vec![0, 3])).unwrap();
    assert_eq!(ok.buckets, [(7, 3)]);
}

#[test]
fn dense_histograms_round_trip_through_the_core_type() {
    let mut d = Dense::default();
    d.add(&Sparse {
        buckets: vec![(100, 3), (200, 1)],
        sum_ns: 10,
        max_ns: 9,
        errors: 1,
    });
    let h = d.to_histogram();
    assert_eq!(
        (h.count(), h.sum_ns(), h.max_ns(), h.errors()),
        (4, 10, 9, 1)
    );
    assert_eq!(Dense::from_histogram(&h), d);
}

fn node(reports: &mut Reports, agent: &crate::sim::SimAgent) {
    let Some(v1::agent_message::Message::Hello(h)) = agent.hello().message else {
        unreachable!()
    };
    reports
        .hello(UNIX_EPOCH, AgentInfo::try_from(h).unwrap())
        .unwrap();
}

fn figures(reports: &Reports, at: SystemTime) -> Figures {
    reports.figures(
        at,
        &ProbeSetQuery {
            namespace: "shop",
            name: "web",
            probes: &["sys".to_string()],
            handed: None,
            desired: &["n1".to_string()],
            interval: Duration::from_secs(10),
            max_drop_rate: 0.01,
            expect_reports: true,
        },
    )
}

fn agent() -> crate::sim::SimAgent {
    crate::sim::SimAgent::new(
        "n1",
        "b1",
        vec![ProbeRef {
            namespace: "shop".into(),
            probeset: "web".into(),
            probe: "sys".into(),
        }],
    )
}

#[test]
fn a_first_sight_after_an_operator_restart_is_only_a_baseline() {
    let mut a = agent();
    a.probes[0].observe("read", &[1000; 500]);
    a.seq = 41;
    let mut r = Reports::default();
    node(&mut r, &a);
    let at = |s| UNIX_EPOCH + Duration::from_secs(s);
    let baseline = Sample::try_from(a.report(10_000)).unwrap();
    assert_eq!(r.ingest(at(10), "n1", &baseline), Outcome::Ingested);
    let f = figures(&r, at(10));
    assert_eq!((f.reporting, f.ready, f.flow.observed), (1, 1, 0));
    a.probes[0].observe("read", &[1000; 20]);
    let next = Sample::try_from(a.report(20_000)).unwrap();
    r.ingest(at(20), "n1", &next);
    let f = figures(&r, at(20));
    assert_eq!(f.flow.observed, 20);
    assert_eq!(f.flow.events_per_second, 2.0);
    assert_eq!(r.ingest(at(21), "n1", &next), Outcome::Stale);
}

#[test]
fn a_boots_first_report_counts_in_full_and_a_reloaded_probe_from_zero() {
    let mut a = agent();
    a.probes[0].observe("read", &[1000; 30]);
    let mut r = Reports::default();
    node(&mut r, &a);
    let at = |s| UNIX_EPOCH + Duration::from_secs(s);
    r.ingest(at(10), "n1", &Sample::try_from(a.report(10_000)).unwrap());
    assert_eq!(figures(&r, at(10)).flow.observed, 30);
    // The probe was reloaded: its counters start again.
    a.probes[0] = crate::sim::SimProbe::new(a.probes[0].id.clone());
    a.probes[0].observe("read", &[1000; 7]);
    r.ingest(at(20), "n1", &Sample::try_from(a.report(20_000)).unwrap());
    let f = figures(&r, at(20));
    assert_eq!(f.flow.observed, 7);
    assert!(f.p50_ns.is_some());
    // Silent for more than two intervals: not reporting.
    let f = figures(&r, at(42));
    assert_eq!((f.reporting, f.problem_nodes), (0, 1));
    assert_eq!(f.problems[0].reason, problem::NOT_REPORTING);
}

#[test]
fn a_boot_id_the_node_replaced_cannot_say_hello_again() {
    let a = agent();
    let mut r = Reports::default();
    node(&mut r, &a);
    let b = a.restarted("b2");
    node(&mut r, &b);
    let Some(v1::agent_message::Message::Hello(h)) = a.hello().message else {
        unreachable!()
    };
    let e = r
        .hello(UNIX_EPOCH, AgentInfo::try_from(h.clone()).unwrap())
        .unwrap_err();
    assert_eq!((e.boot_id.as_str(), e.current.as_str()), ("b1", "b2"));
    assert!(e.to_string().contains("new boot id"), "{e}");
    // The current boot reconnects as often as it likes.
    node(&mut r, &b);
    assert_eq!(r.connected(), 3);
    assert!(r.knows("n1") && !r.knows("n2"));
}

#[test]
fn each_node_has_the_possible_cpus_its_own_agent_reported() {
    let hello = |node: &str, possible_cpus: u32| {
        let Some(v1::agent_message::Message::Hello(mut h)) =
            crate::sim::SimAgent::new(node, "b1", vec![])
                .hello()
                .message
        else {
            unreachable!()
        };
        h.possible_cpus = possible_cpus;
        AgentInfo::try_from(h).unwrap()
    };
    let mut r = Reports::default();
    r.hello(UNIX_EPOCH, hello("small", 4)).unwrap();
    r.hello(UNIX_EPOCH, hello("big", 64)).unwrap();
    // An agent too old to say sends 0.
    r.hello(UNIX_EPOCH, hello("old", 0)).unwrap();
    assert_eq!(r.possible_cpus("small"), Some(4));
    assert_eq!(r.possible_cpus("big"), Some(64));
    assert_eq!(r.possible_cpus("old"), None);
    assert_eq!(r.possible_cpus("silent"), None);
}

fn slo_def(id: &str, series: &[&str]) -> SloDef {
    SloDef {
        id: id.into(),
        probe: agent().probes[0].id.clone(),
        series: series.iter().map(|s| (*s).to_owned()).collect(),
        spec: core_slo::SloSpec {
            target: 99.0,
            window: Duration::from_secs(3_600),
            max_drop_rate: 0.5,
        },
        threshold_id: 7,
    }
}

/// Events in an SLO's latency slots at `at`, and how many of them were at
/// most `ns`.
fn slo_latency(r: &Reports, id: &str, at: SystemTime, ns: u64) -> (u64, u64) {
    let h = r.slos[id].latency.merged(millis(at)).unwrap_or_default();
    (h.count(), h.count_le(ns))
}

#[test]
fn slo_latency_counts_each_interval_once_from_one_histogram_per_probe() {
    let ms = 1_000_000;
    let mut a = agent();
    let mut r = Reports::default();
    node(&mut r, &a);
    let at = |s| UNIX_EPOCH + Duration::from_secs(s);
    r.sync_slos(
        at(0),
        vec![slo_def("shop/all", &[]), slo_def("shop/reads", &["read"])],
    );
    // 64 series, as a busy node reports them: the operator keeps one
    // histogram of them all, and apart only the series an SLO names.
    for s in 0..64 {
        a.probes[0].observe(&format!("s{s}"), &[100 * ms; 3]);
    }
    a.probes[0].observe("read", &[ms; 10]);
    r.ingest(at(10), "n1", &Sample::try_from(a.report(10_000)).unwrap());
    assert_eq!(slo_latency(&r, "shop/all", at(10), 2 * ms), (202, 10));
    assert_eq!(slo_latency(&r, "shop/reads", at(10), 2 * ms), (10, 10));
    let kept = &r.nodes["n1"].probes[&a.probes[0].id];
    assert_eq!(
        kept.named.len(),
        1,
        "only the series an SLO names is kept apart"
    );
    assert_eq!(kept.all.unpack().count(), 202);

    // The next interval: only what it added counts, once.
    a.probes[0].observe("read", &[ms; 5]);
    a.probes[0].observe("s7", &[100 * ms; 4]);
    r.ingest(at(20), "n1", &Sample::try_from(a.report(20_000)).unwrap());
    assert_eq!(slo_latency(&r, "shop/all", at(20), 2 * ms), (211, 15));
    assert_eq!(slo_latency(&r, "shop/reads", at(20), 2 * ms), (15, 15));
    assert_eq!(figures(&r, at(20)).flow.observed, 9);

    // An SLO naming a series starts counting it from the report after the
    // one that gave its baseline.
    r.sync_slos(
        at(20),
        vec![
            slo_def("shop/all", &[]),
            slo_def("shop/reads", &["read"]),
            slo_def("shop/s7", &["s7"]),
        ],
    );
    a.probes[0].observe("s7", &[100 * ms; 2]);
    r.ingest(at(30), "n1", &Sample::try_from(a.report(30_000)).unwrap());
    assert_eq!(slo_latency(&r, "shop/s7", at(30), 2 * ms), (0, 0));
    a.probes[0].observe("s7", &[100 * ms; 6]);
    r.ingest(at(40), "n1", &Sample::try_from(a.report(40_000)).unwrap());
    assert_eq!(slo_latency(&r, "shop/s7", at(40), 2 * ms), (6, 0));
    assert_eq!(slo_latency(&r, "shop/all", at(40), 2 * ms), (219, 15));
}

#[test]
fn a_probeset_selecting_no_node_leaves_its_slos_nothing_fresh() {
    let r = Reports::default();
    let probes = ["sys".to_string()];
    let query = |expect_reports| ProbeSetQuery {
        namespace: "shop",
        name: "web",
        probes: &probes,
        handed: None,
        desired: &[],
        interval: Duration::from_secs(10),
        max_drop_rate: 0.01,
        expect_reports,
    };
    let f = r.figures(UNIX_EPOCH, &query(true));
    assert!(f.probes[0].lacking.none_selected);
    // Not before agents had time to report.
    let f = r.figures(UNIX_EPOCH, &query(false));
    assert!(!f.probes[0].lacking.none_selected);
}

/// Series lookups made ingesting a baseline and one more report of four
/// probes with `series` per-process series each, every one named by an
/// SLO (`gc-pause` covers `gc-pause (pid N)`); checks what the SLOs got.
fn lookups_for(series: usize) -> u64 {
    let ms = 1_000_000;
    let probes: Vec<ProbeRef> = (0..4)
        .map(|i| ProbeRef {
            namespace: "shop".into(),
            probeset: "web".into(),
            probe: format!("gc{i}"),
        })
        .collect();
    let mut a = crate::sim::SimAgent::new("n1", "b1", probes.clone());
    let mut r = Reports::default();
    node(&mut r, &a);
    let at = |s| UNIX_EPOCH + Duration::from_secs(s);
    let defs = probes
        .iter()
        .map(|p| SloDef {
            id: format!("shop/{}", p.probe),
            probe: p.clone(),
            ..slo_def("", &["gc-pause", "gc-pause (pid 0)"])
        })
        .collect();
    r.sync_slos(at(0), defs);
    for p in &mut a.probes {
        for pid in 0..series {
            p.observe(&format!("gc-pause (pid {pid})"), &[ms]);
        }
    }
    let first = Sample::try_from(a.report(10_000)).unwrap();
    for p in &mut a.probes {
        for pid in 0..series {
            p.observe(&format!("gc-pause (pid {pid})"), &[2 * ms]);
        }
    }
    let second = Sample::try_from(a.report(20_000)).unwrap();
    SERIES_LOOKUPS.with(|c| c.set(0));
    assert_eq!(r.ingest(at(10), "n1", &first), Outcome::Ingested);
    assert_eq!(r.ingest(at(20), "n1", &second), Outcome::Ingested);
    let lookups = SERIES_LOOKUPS.with(|c| c.get());
    let n = series as u64;
    for p in &probes {
        // Both reports count in full (the boot's first, then its
        // increment), each series once although the SLO names one twice.
        let id = format!("shop/{}", p.probe);
        assert_eq!(slo_latency(&r, &id, at(20), 3 * ms / 2), (2 * n, n), "{id}");
    }
    lookups
}

#[test]
fn a_report_of_many_named_series_costs_lookups_linear_in_its_series() {
    // A report of 4 × 4 096 series, all named by SLOs, costs a few
    // lookups by key per series: never a search through the others
    // (4 096² comparisons a probe, 150 ms a report, that once let one
    // node saturate the ingest thread).
    let small = lookups_for(64);
    let large = lookups_for(4_096);
    let series = 2 * 4 * 4_096;
    assert!(
        large <= 8 * series,
        "{large} lookups for {series} series reported"
    );
    assert!(
        large * 64 <= small * 4_096,
        "{large} lookups for 64 times the series of {small}"
    );
}
