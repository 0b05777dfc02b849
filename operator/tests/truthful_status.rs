//! Status that never says healthy when it is not. Simulated agents report
//! over the real gRPC path (loopback, TLS) to the operator's agent service,
//! hub and SLO evaluators; each failure mode is then judged by the status
//! the operator computes from what it ingested, and by the `kubectl get`
//! rows the CRDs' `additionalPrinterColumns` make of it, rendered as the
//! API server's table convertor and kubectl do
//! (`apiextensions-apiserver/pkg/registry/customresource/tableconvertor`:
//! a `number` cell is a float64 that kubectl prints with Go's `%v`; an
//! absent one prints `<none>`).

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use k8s_openapi::{
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp,
};
use kube::CustomResourceExt;
use ringwarden_crds::{ProbeSet, ProbeSetStatus, Slo};
use ringwarden_operator::{
    ingest::{
        hub::ProbeSetFigures,
        publish::{lacking_of, slo_desired},
        reports::{ProbeRef, millis},
    },
    loopback::LoopbackOperator as Operator,
    reconcile::{assess::assess, render, slo::SloTarget, status},
    sim::SimAgent,
};
use ringwarden_proto::v1::load_error::Kind;
use serde_json::Value;

const MS: u64 = 1_000_000;
/// Report interval of every ProbeSet here: silence is judged after two
/// intervals and a second.
const INTERVAL: Duration = Duration::from_secs(1);

const WEB: &str = "
reportInterval: 1s
probes:
  - {name: sys, kind: syscalls}
  - {name: rq, kind: runqueue}
";
const CHECKOUT: &str = "
reportInterval: 1s
probes:
  - {name: fn, kind: uprobe, uprobe: {binary: /app/server, symbol: checkout}}
";
const FAST: &str =
    "{probeSet: web, probe: sys, indicator: {latency: {threshold: 5ms}}, target: 99}";
const QUEUED: &str =
    "{probeSet: web, probe: rq, indicator: {latency: {threshold: 5ms}}, target: 99}";
const DANGLING: &str =
    "{probeSet: gone, probe: sys, indicator: {latency: {threshold: 5ms}}, target: 99}";
const NODES: &[&[(&str, &str)]] = &[&[], &[]];

fn probe(probeset: &str, probe: &str) -> ProbeRef {
    ProbeRef {
        namespace: "shop".into(),
        probeset: probeset.into(),
        probe: probe.into(),
    }
}

fn time(at: SystemTime) -> Time {
    let secs = at.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    Time(Timestamp::from_second(i64::try_from(secs).unwrap()).unwrap())
}

/// A cluster of two nodes, the ProbeSets `web` (syscalls and runqueue)
/// and `checkout` (a uprobe), SLOs on each of web's probes and one on a
/// ProbeSet that does not exist.
struct World {
    op: Operator,
    cluster: Cluster,
    agents: Vec<SimAgent>,
    connections: Vec<ringwarden_operator::sim::Connection>,
}

impl World {
    async fn start() -> Self {
        let cluster = Cluster::new(
            vec![
                probeset("shop", "web", 1, WEB),
                probeset("shop", "checkout", 1, CHECKOUT),
            ],
            NODES,
            vec![
                slo("shop", "fast", FAST),
                slo("shop", "queued", QUEUED),
                slo("shop", "dangling", DANGLING),
            ],
        );
        let op = Operator::start(&cluster.stores, None).await;
        let mut agents = Vec::new();
        let mut connections = Vec::new();
        for node in ["node-0", "node-1"] {
            let mut agent = SimAgent::new(
                node,
                "boot-1",
                vec![
                    probe("web", "sys"),
                    probe("web", "rq"),
                    probe("checkout", "fn"),
                ],
            );
            connections.push(op.connect(&mut agent).await);
            agents.push(agent);
        }
        Self {
            op,
            cluster,
            agents,
            connections,
        }
    }

    /// Node `i` counts `fast` calls within the SLO and `slow` beyond it on
    /// every probe it runs, and reports; the operator acknowledges it.
    async fn report(&mut self, i: usize, fast: usize, slow: usize) {
        let agent = &mut self.agents[i];
        let mut latencies = vec![MS; fast];
        latencies.extend(vec![10 * MS; slow]);
        for p in &mut agent.probes {
            if p.load_error.is_none() {
                p.observe("read", &latencies);
            }
        }
        let report = agent.report(millis(SystemTime::now()));
        self.connections[i].report(agent, report).await.unwrap();
    }

    fn figures(&self, now: SystemTime) -> Vec<ProbeSetFigures> {
        self.op.hub.probeset_figures(now)
    }

    /// ProbeSet `name`'s status at `now` as the controller computes it,
    /// over the status it had (`before`), with uprobes enabled or not.
    fn probeset_status(
        &self,
        name: &str,
        before: Option<ProbeSetStatus>,
        uprobes: bool,
        now: SystemTime,
    ) -> ProbeSet {
        let mut ps = (*self.cluster.probeset("shop", name)).clone();
        ps.status = before;
        let figures = self.figures(now);
        let reported = figures
            .iter()
            .find(|f| f.name == name)
            .map(|f| status::Reported::from_figures(&f.figures));
        let mut s = status::desired(
            &ps,
            &assess(&ps, &[]),
            true,
            reported.as_ref(),
            None,
            &time(now),
        );
        status::uprobes_not_enabled(&ps, uprobes, &mut s, &time(now));
        ps.status = Some(s);
        ps
    }

    /// SLO `name`'s status at `now`, as the publisher computes it.
    fn slo_status(&self, name: &str, now: SystemTime) -> Slo {
        let mut slo = self
            .cluster
            .stores
            .slos
            .state()
            .into_iter()
            .find(|s| s.metadata.name.as_deref() == Some(name))
            .map(|s| (*s).clone())
            .unwrap();
        self.op.hub.sync_slos(now);
        let lacking = lacking_of(&self.figures(now));
        let (s, _) = slo_desired(&self.op.hub, &slo, &lacking, now, &time(now)).unwrap();
        slo.status = Some(s);
        slo
    }
}

/// One condition's `(status, reason)`.
fn condition(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    t: &str,
) -> (String, String) {
    conditions
        .iter()
        .find(|c| c.type_ == t)
        .map(|c| (c.status.clone(), c.reason.clone()))
        .unwrap_or_else(|| panic!("no {t} condition in {conditions:?}"))
}

fn crd_columns(crd: &CustomResourceDefinition) -> Vec<(String, String, String)> {
    crd.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| (c.name.to_uppercase(), c.type_.clone(), c.json_path.clone()))
        .collect()
}

/// `object`'s row as `kubectl get` prints it: NAME, then each printer
/// column but the age.
fn row(crd: &CustomResourceDefinition, object: &impl serde::Serialize) -> Vec<String> {
    let json = serde_json::to_value(object).unwrap();
    let mut cells = vec![json["metadata"]["name"].as_str().unwrap().to_owned()];
    for (_, type_, path) in crd_columns(crd) {
        if type_ == "date" {
            continue;
        }
        cells.push(cell(&type_, simple_json_path(&json, &path)));
    }
    cells
}

fn header(crd: &CustomResourceDefinition) -> Vec<String> {
    let mut h = vec!["NAME".to_owned()];
    h.extend(
        crd_columns(crd)
            .into_iter()
            .filter(|(_, t, _)| t != "date")
            .map(|(n, _, _)| n),
    );
    h
}

/// The value at a simple JSONPath (`.status.burnRate.fast`), the only
/// kind a CRD's printer columns may use.
fn simple_json_path<'a>(json: &'a Value, path: &str) -> Option<&'a Value> {
    path.trim_start_matches('.')
        .split('.')
        .try_fold(json, |v, key| v.get(key))
        .filter(|v| !v.is_null())
}

/// A cell as the table convertor makes it and kubectl prints it.
fn cell(type_: &str, value: Option<&Value>) -> String {
    match (type_, value) {
        (_, None) => "<none>".into(),
        ("number", Some(v)) => v.as_f64().map_or("<none>".into(), go_v),
        (_, Some(Value::String(s))) => s.clone(),
        (_, Some(v)) => v.to_string(),
    }
}

/// A float64 as Go's `%v` prints it: the shortest digits, in exponent form
/// when the exponent is below -4 or at least 6 (Go's `strconv` takes
/// precision 6 for that choice when the digits are the shortest).
fn go_v(f: f64) -> String {
    if f == 0.0 {
        return "0".into();
    }
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap();
    let exp: i32 = exp.parse().unwrap();
    if !(-4..6).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    } else {
        // Shortest digits in positional form.
        format!("{f}")
    }
}

#[test]
fn numbers_print_as_gos_percent_v_prints_them() {
    // Printed by Go 1.19's fmt.Printf("%v") for the same float64s.
    for (f, go) in [
        (81000.0, "81000"),
        (120000.0, "120000"),
        (123456.0, "123456"),
        (1234567.0, "1.234567e+06"),
        (1e6, "1e+06"),
        (99.997, "99.997"),
        (100.0, "100"),
        (0.033, "0.033"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (1e21, "1e+21"),
        (0.0, "0"),
        (0.0025, "0.0025"),
    ] {
        assert_eq!(go_v(f), go, "{f}");
    }
}

fn probeset_crd() -> CustomResourceDefinition {
    ProbeSet::crd()
}

fn slo_crd() -> CustomResourceDefinition {
    Slo::crd()
}

#[tokio::test]
async fn every_failure_mode_leaves_no_object_healthy_and_every_row_says_why() {
    let mut w = World::start().await;
    let t0 = SystemTime::now();
    // Both nodes run both probes of web; the uprobe of checkout reports
    // too (the agents hold an older configuration file).
    w.report(0, 999, 1).await;
    w.report(1, 999, 1).await;
    let web = w.probeset_status("web", None, false, t0);
    let s = web.status.clone().unwrap();
    assert_eq!(
        condition(&s.conditions, "Ready"),
        ("True".into(), "Running".into())
    );
    assert_eq!(condition(&s.conditions, "Stalled").0, "False");
    assert_eq!(
        row(&probeset_crd(), &web)[..3],
        ["web".to_owned(), "2/2".into(), "Ready".into()]
    );
    assert_eq!(header(&probeset_crd())[..3], ["NAME", "READY", "STATUS"]);
    let fast = w.slo_status("fast", t0);
    assert_eq!(
        row(&slo_crd(), &fast),
        ["fast", "99", "99.9", "90", "0.1", "Met"],
        "TARGET SLI BUDGET BURN STATE"
    );

    // Uprobes are not enabled: the uprobe is left out of the
    // configuration, so it runs nowhere, whatever an agent still reports.
    let mut config = render::agent_config(
        &ringwarden_operator::reconcile::world::World {
            probesets: w.cluster.stores.probesets.state(),
            cluster_probesets: vec![],
            namespaces: vec![],
            namespace_limits: Default::default(),
            nodes: vec![
                ("node-0".into(), Default::default()),
                ("node-1".into(), Default::default()),
            ],
            slos: w
                .cluster
                .stores
                .slos
                .state()
                .iter()
                .filter_map(|s| SloTarget::from_slo(s))
                .collect(),
            node_selector_labels: Default::default(),
        }
        .assess_all(),
        0,
    );
    config.probes.retain(|p| !p.spec.kind.uses_uprobes());
    w.op.hub.set_config(&config);
    w.report(0, 10, 0).await;
    w.report(1, 10, 0).await;
    let checkout = w.probeset_status("checkout", None, false, SystemTime::now());
    let s = checkout.status.clone().unwrap();
    assert_eq!(
        condition(&s.conditions, "Ready"),
        ("False".into(), "UprobesNotEnabled".into())
    );
    assert_eq!(condition(&s.conditions, "Stalled").0, "True");
    assert_eq!(
        row(&probeset_crd(), &checkout)[..4],
        [
            "checkout".to_owned(),
            "0/2".into(),
            "Degraded: UprobesNotEnabled".into(),
            "0".into()
        ],
        "no activity shown for a probe that does not run"
    );

    // Node 1 loses web's runqueue probe to the node budget: it reports it
    // with the agent's load error.
    w.agents[1].probes[1].load_error = Some((
        Kind::Other,
        "not loaded: the node budget of 256Ki gives it nothing".into(),
    ));
    w.report(0, 100, 0).await;
    w.report(1, 100, 0).await;
    let now = SystemTime::now();
    let web = w.probeset_status("web", None, false, now);
    let s = web.status.clone().unwrap();
    assert_eq!(
        condition(&s.conditions, "Degraded"),
        ("True".into(), "LoadFailed".into())
    );
    assert_eq!(condition(&s.conditions, "Ready").0, "False");
    assert_eq!(
        row(&probeset_crd(), &web)[..3],
        [
            "web".to_owned(),
            "1/2".into(),
            "Degraded: LoadFailed".into()
        ]
    );
    // The SLO on the probe node 1 does not run is stale; the one on the
    // probe every node runs is not.
    let queued = w.slo_status("queued", now);
    let qs = queued.status.clone().unwrap();
    assert_eq!(
        condition(&qs.conditions, "Ready"),
        ("False".into(), "ProbeNotRunningOnNodes".into())
    );
    assert!(
        qs.conditions[0].message.contains("node-1 (failed to load)"),
        "{}",
        qs.conditions[0].message
    );
    assert_eq!(row(&slo_crd(), &queued)[5], "Stale");
    assert_eq!(row(&slo_crd(), &w.slo_status("fast", now))[5], "Met");

    // Node 1's report leaves the probe out altogether (an agent that
    // has not loaded it yet): not running, never healthy.
    w.agents[1].probes.remove(1);
    w.report(1, 100, 0).await;
    let web = w.probeset_status("web", None, false, SystemTime::now());
    let s = web.status.clone().unwrap();
    assert_eq!(
        condition(&s.conditions, "Degraded"),
        ("True".into(), "ProbeNotRunning".into())
    );
    assert_eq!(s.ready.as_deref(), Some("1/2"));

    // Node 1 falls silent while node 0 reports on: web is degraded, the
    // SLO on sys stale, naming the node; its counts are kept.
    let before = w.op.counted("shop/fast");
    tokio::time::sleep(INTERVAL * 2 + Duration::from_millis(1200)).await;
    w.report(0, 100, 0).await;
    let now = SystemTime::now();
    let web = w.probeset_status("web", None, false, now);
    let s = web.status.clone().unwrap();
    assert_eq!(
        condition(&s.conditions, "Degraded"),
        ("True".into(), "NotReporting".into())
    );
    assert!(
        s.conditions.iter().any(|c| c
            .message
            .contains("node-1: no report within two report intervals")),
        "{:?}",
        s.conditions
    );
    assert_eq!(s.ready.as_deref(), Some("1/2"));
    let fast = w.slo_status("fast", now);
    let fs = fast.status.clone().unwrap();
    assert_eq!(
        condition(&fs.conditions, "Ready"),
        ("False".into(), "NodesSilent".into())
    );
    assert_eq!(condition(&fs.conditions, "Stalled").0, "True");
    assert!(
        fs.conditions[0]
            .message
            .contains("node-1 (no report within two report intervals)"),
        "{}",
        fs.conditions[0].message
    );
    assert_eq!(row(&slo_crd(), &fast)[5], "Stale");
    let (good, total) = w.op.counted("shop/fast");
    assert_eq!(
        (good, total),
        (before.0 + 100, before.1 + 100),
        "counts kept"
    );

    // Reports return: the SLO resumes exactly, fresh again.
    w.report(0, 50, 50).await;
    w.report(1, 50, 50).await;
    let now = SystemTime::now();
    let fast = w.slo_status("fast", now);
    assert_eq!(
        condition(&fast.status.as_ref().unwrap().conditions, "Ready").0,
        "True"
    );
    assert_eq!(w.op.counted("shop/fast"), (good + 100, total + 200));

    // A dangling SLO and an invalid ProbeSet say so in their rows.
    let dangling = w.slo_status("dangling", now);
    assert_eq!(
        row(&slo_crd(), &dangling),
        [
            "dangling",
            "99",
            "<none>",
            "<none>",
            "<none>",
            "ProbeNotFound"
        ]
    );
    let mut bad = probeset(
        "shop",
        "bad",
        1,
        "probes: [{name: sys, kind: syscalls, sampling: 3}]",
    );
    bad.status = Some(status::desired(
        &bad,
        &assess(&bad, &[]),
        true,
        None,
        None,
        &time(now),
    ));
    let r = row(&probeset_crd(), &bad);
    assert_eq!(r[1], "<none>");
    assert!(
        r[2].starts_with("Invalid: spec.probes[0].sampling"),
        "{r:?}"
    );
    w.op.stop().await;
}

/// Every printer column reads a field of the object, so a row can only
/// show what the status (or spec) holds.
#[test]
fn every_printer_column_reads_a_field_of_the_object() {
    for crd in [
        probeset_crd(),
        slo_crd(),
        ringwarden_crds::ClusterProbeSet::crd(),
    ] {
        for (name, _, path) in crd_columns(&crd) {
            assert!(
                [".status.", ".spec.", ".metadata."]
                    .iter()
                    .any(|p| path.starts_with(p)),
                "{name}: {path}"
            );
        }
    }
}

mod property {
    //! No sequence of agent reports and silences leaves a ProbeSet
    //! `Degraded=False` (or `Ready=True`) while a selected node does not run
    //! one of its probes, or an SLO `Met` while its data is stale. The
    //! ground truth is kept by the test: when each node last reported, and
    //! which probes it reported running then.

    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use proptest::prelude::*;
    use ringwarden_core::slo::{self as core_slo, SloEvaluator};
    use ringwarden_operator::{
        ingest::{
            decode::{AgentInfo, Sample},
            reports::{ProbeSetQuery, Reports},
            slo_status::{self, Verdict},
        },
        reconcile::{assess::assess, status},
        sim::SimAgent,
    };
    use ringwarden_proto::v1::{agent_message::Message, load_error::Kind};

    use super::{WEB, probe, time};

    const NODES: [&str; 3] = ["node-0", "node-1", "node-2"];
    const PROBES: [&str; 2] = ["sys", "rq"];
    const INTERVAL: Duration = Duration::from_secs(10);

    /// What happens next: a node reports (which of its probes run, which
    /// failed to load, which it leaves out), or time passes.
    #[derive(Clone, Debug)]
    enum Step {
        Report {
            node: usize,
            /// Per probe: 0 runs, 1 failed to load, 2 left out.
            probes: [u8; 2],
        },
        Wait(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => (0..NODES.len(), [0u8..3, 0u8..3])
                .prop_map(|(node, probes)| Step::Report { node, probes }),
            1 => (1u64..40).prop_map(Step::Wait),
        ]
    }

    /// An SLO evaluation that says Met, to see whether staleness overrides
    /// it.
    fn met() -> core_slo::SloStatus {
        let mut e = SloEvaluator::new(
            core_slo::SloSpec {
                target: 99.0,
                window: Duration::from_secs(86_400),
                max_drop_rate: 0.01,
            },
            7,
        )
        .unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        e.ingest(
            now,
            &core_slo::Report {
                node: "n".into(),
                boot_id: "b".into(),
                seq: 1,
                threshold_id: 7,
                good: 1000,
                total: 1000,
                loss: Default::default(),
                ceiling: None,
            },
        );
        let s = e.evaluate(now, None);
        assert_eq!(s.state, core_slo::SloState::Met);
        s
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn no_sequence_of_reports_and_silences_leaves_an_object_healthy_that_is_not(
            steps in proptest::collection::vec(step(), 1..40)
        ) {
            let ps = super::probeset("shop", "web", 1, WEB.replace("1s", "10s").as_str());
            let slo = super::slo(
                "shop",
                "fast",
                "{probeSet: web, probe: sys, indicator: {latency: {threshold: 5ms}}, target: 99}",
            );
            let mut reports = Reports::default();
            let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
            let mut now = t0;
            let mut agents: Vec<SimAgent> = NODES
                .iter()
                .map(|n| SimAgent::new(n, "boot-1", vec![probe("web", "sys"), probe("web", "rq")]))
                .collect();
            for a in &agents {
                let Some(Message::Hello(h)) = a.hello().message else { unreachable!() };
                reports.hello(t0, AgentInfo::try_from(h).unwrap()).unwrap();
            }
            // Per node: when it last reported, and which probes ran then.
            let mut truth: Vec<Option<(SystemTime, [bool; 2])>> = vec![None; NODES.len()];
            let probes: Vec<String> = PROBES.iter().map(|p| p.to_string()).collect();
            let desired: Vec<String> = NODES.iter().map(|n| n.to_string()).collect();
            for step in steps {
                match step {
                    Step::Wait(s) => now += Duration::from_secs(s),
                    Step::Report { node, probes: how } => {
                        let a = &mut agents[node];
                        let mut kept = Vec::new();
                        let mut running = [false; 2];
                        for (i, p) in a.probes.iter_mut().enumerate() {
                            p.load_error = (how[i] == 1).then(|| (Kind::Verifier, "rejected".into()));
                            p.observe("read", &[1000; 3]);
                            running[i] = how[i] == 0;
                            if how[i] != 2 {
                                kept.push(p.clone());
                            }
                        }
                        let all = std::mem::replace(&mut a.probes, kept);
                        let report = a.report(ringwarden_operator::ingest::reports::millis(now));
                        a.probes = all;
                        let sample = Sample::try_from(report).unwrap();
                        reports.ingest(now, NODES[node], &sample);
                        truth[node] = Some((now, running));
                    }
                }
                let query = ProbeSetQuery {
                    namespace: "shop",
                    name: "web",
                    probes: &probes,
                    handed: None,
                    desired: &desired,
                    interval: INTERVAL,
                    max_drop_rate: 0.01,
                    expect_reports: true,
                };
                let figures = reports.figures(now, &query);
                let fresh = |t: SystemTime| now.duration_since(t).unwrap_or_default() <= INTERVAL * 2 + Duration::from_secs(1);
                let all_run = truth.iter().all(|t| t.is_some_and(|(at, r)| fresh(at) && r.iter().all(|x| *x)));
                let sys_everywhere = truth.iter().all(|t| t.is_some_and(|(at, r)| fresh(at) && r[0]));

                let reported = status::Reported::from_figures(&figures);
                let s = status::desired(&ps, &assess(&ps, &[]), true, Some(&reported), None, &time(now));
                let cond = |t: &str| {
                    s.conditions
                        .iter()
                        .find(|c| c.type_ == t)
                        .map_or_else(String::new, |c| c.status.clone())
                };
                if !all_run {
                    prop_assert_eq!(cond("Degraded"), "True", "{:?}", truth);
                    prop_assert_eq!(cond("Ready"), "False");
                    prop_assert_eq!(cond("Stalled"), "True");
                    prop_assert!(s.state.as_deref().unwrap().starts_with("Degraded: "));
                } else {
                    prop_assert_eq!(cond("Ready"), "True", "{:?}", s.conditions);
                    prop_assert_eq!(s.ready.as_deref(), Some("3/3"));
                }
                let lacking = &figures.probes[0].lacking;
                let slo_status = slo_status::desired(&slo, Verdict::Evaluated(&met(), Some(lacking)), &time(now));
                if sys_everywhere {
                    prop_assert_eq!(slo_status.state, Some(ringwarden_crds::SloState::Met));
                } else {
                    prop_assert_eq!(slo_status.state, Some(ringwarden_crds::SloState::Stale));
                }
            }
        }
    }
}
