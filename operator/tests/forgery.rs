//! Reports that cannot be forged: an agent plays the attacker against the
//! operator's agent service over loopback gRPC (watch caches filled by
//! hand, a fake TokenReview), and the real TokenReview client runs
//! against a mocked API server. Every attack must be refused, counted, and
//! leave every SLO's good and total counts as they were.

mod common;

use std::time::SystemTime;

use common::*;
use ringwarden_operator::{
    ingest::auth::{Authenticator, TokenReviewer},
    ingest::reports::{Persisted, ProbeRef},
    loopback::LoopbackOperator as Operator,
    sim::{self, SimAgent},
};
use ringwarden_proto::v1::{self, AgentMessage, agent_message::Message as FromAgent};
use serde_json::json;
use tonic::{Code, Status, metadata::MetadataMap};

const WEB: &str = "
nodeSelector: {pool: web}
probes:
  - {name: sys, kind: syscalls}
";
const DB: &str = "
nodeSelector: {pool: db}
probes:
  - {name: sys, kind: syscalls}
";
const FAST: &str =
    "{probeSet: web, probe: sys, indicator: {latency: {threshold: 5ms}}, target: 99}";
const SLOW: &str =
    "{probeSet: db, probe: sys, indicator: {latency: {threshold: 50ms}}, target: 99}";
/// node-0 and node-1 run ProbeSet web, node-2 runs db.
const NODES: &[&[(&str, &str)]] = &[&[("pool", "web")], &[("pool", "web")], &[("pool", "db")]];
const SLOS: [&str; 2] = ["shop/fast", "shop/slow"];
const MS: u64 = 1_000_000;
const STREAMS_REFUSED: &str = "ringwarden_operator_agent_streams_refused_total";
const REPORTS_REFUSED: &str = "ringwarden_operator_reports_refused_total";

fn cluster() -> Cluster {
    Cluster::new(
        vec![
            probeset("shop", "web", 1, WEB),
            probeset("shop", "db", 1, DB),
        ],
        NODES,
        vec![slo("shop", "fast", FAST), slo("shop", "slow", SLOW)],
    )
}

fn probe(probeset: &str) -> ProbeRef {
    ProbeRef {
        namespace: "shop".into(),
        probeset: probeset.into(),
        probe: "sys".into(),
    }
}

fn unix_ms() -> u64 {
    ringwarden_operator::ingest::reports::millis(SystemTime::now())
}

/// Good and total of every SLO.
fn counts(op: &Operator) -> Vec<(u64, u64)> {
    SLOS.iter().map(|s| op.counted(s)).collect()
}

fn report_message(report: v1::Report) -> AgentMessage {
    AgentMessage {
        message: Some(FromAgent::Report(report)),
    }
}

/// What the operator answers a stream opened with `token` that says
/// `agent`'s Hello and sends a report at once, as an attacker would.
async fn refusal(op: &Operator, token: &str, agent: &mut SimAgent) -> Status {
    let report = agent.report(unix_ms());
    let mut c = match sim::connect(op.channel().await, Some(token), agent.hello()).await {
        Ok(c) => c,
        Err(status) => return status,
    };
    let _ = c.send(report_message(report)).await;
    loop {
        match c.next().await {
            Err(status) => return status,
            Ok(Some(v1::OperatorMessage {
                message: Some(v1::operator_message::Message::Ack(a)),
            })) => panic!("report {} of {token} was acknowledged", a.seq),
            Ok(Some(_)) => {}
            Ok(None) => panic!("the stream of {token} ended without an answer"),
        }
    }
}

/// Honest agents on node-0 (web) and node-2 (db) report 100 events each,
/// 90 of them fast, so every SLO has counts an attack could change.
async fn honest(op: &Operator) -> (Vec<SimAgent>, Vec<sim::Connection>) {
    let mut agents = vec![
        SimAgent::new("node-0", "boot-0", vec![probe("web")]),
        SimAgent::new("node-2", "boot-2", vec![probe("db")]),
    ];
    let mut streams = Vec::new();
    for a in &mut agents {
        let mut c = op.connect(a).await;
        a.probes[0].observe("read", &[[MS; 90].as_slice(), &[100 * MS; 10]].concat());
        let r = a.report(unix_ms());
        c.report(a, r).await.unwrap();
        streams.push(c);
    }
    assert_eq!(counts(op), [(90, 100), (90, 100)]);
    (agents, streams)
}

#[tokio::test]
async fn node_a_cannot_report_for_node_b_nor_for_a_node_not_in_the_cluster() {
    let cluster = cluster();
    let op = Operator::start(&cluster.stores, None).await;
    let (_agents, _streams) = honest(&op).await;
    let before = counts(&op);

    // node-1's agent claims to be node-0, by the node claim of its token
    // or by the pod its token is bound to.
    for token in ["agent:node-1", "pod:node-1"] {
        let mut forger = SimAgent::new("node-0", "boot-0", vec![probe("web")]);
        forger.probes[0].observe("read", &[MS; 1_000]);
        let e = refusal(&op, token, &mut forger).await;
        assert_eq!(e.code(), Code::PermissionDenied, "{token}: {e}");
        assert!(
            e.message().contains("bound to node node-1, not node-0"),
            "{e}"
        );
    }
    assert_eq!(op.metric(STREAMS_REFUSED, "wrong_node"), 2.0);

    // A token bound to no node and no pod cannot say which node it speaks for.
    let mut unbound = SimAgent::new("node-0", "boot-0", vec![probe("web")]);
    unbound.probes[0].observe("read", &[MS; 1_000]);
    let e = refusal(&op, "unbound", &mut unbound).await;
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    assert_eq!(op.metric(STREAMS_REFUSED, "no_node"), 1.0);

    // A node that is not in the cluster's node list gets no state at all.
    let mut ghost = SimAgent::new("ghost", "boot-g", vec![probe("web")]);
    ghost.probes[0].observe("read", &[MS; 1_000]);
    let e = refusal(&op, "agent:ghost", &mut ghost).await;
    assert_eq!(e.code(), Code::Unavailable, "{e}");
    assert!(
        e.message().contains("not in the cluster's node list"),
        "{e}"
    );
    assert_eq!(op.metric(STREAMS_REFUSED, "unknown_node"), 1.0);
    assert!(!op.hub.reports().knows("ghost"));

    assert_eq!(counts(&op), before);
    assert_eq!(op.hub.reports().connected(), 2);
    // The pod claim works for the pod's own node.
    let mut own = SimAgent::new("node-1", "boot-1", vec![probe("web")]);
    let mut c = sim::connect(op.channel().await, Some("pod:node-1"), own.hello())
        .await
        .unwrap();
    c.until_config(&mut own).await.unwrap();
    own.probes[0].observe("read", &[MS; 5]);
    let r = own.report(unix_ms());
    c.report(&mut own, r).await.unwrap();
    assert_eq!(op.counted("shop/fast"), (before[0].0 + 5, before[0].1 + 5));
    op.stop().await;
}

#[tokio::test]
async fn a_token_of_another_service_account_or_audience_is_refused() {
    let cluster = cluster();
    let op = Operator::start(&cluster.stores, None).await;
    let (_agents, _streams) = honest(&op).await;
    let before = counts(&op);
    for (token, code, reason) in [
        ("other", Code::PermissionDenied, "forbidden"),
        ("kube:node-0", Code::Unauthenticated, "wrong_audience"),
    ] {
        let mut forger = SimAgent::new("node-0", "boot-x", vec![probe("web")]);
        forger.probes[0].observe("read", &[MS; 1_000]);
        let e = refusal(&op, token, &mut forger).await;
        assert_eq!(e.code(), code, "{token}: {e}");
        assert_eq!(op.metric(STREAMS_REFUSED, reason), 1.0, "{reason}");
    }
    assert_eq!(counts(&op), before);
    assert_eq!(op.hub.reports().connected(), 2);
    op.stop().await;
}

#[tokio::test]
async fn a_report_for_a_probe_or_threshold_never_pushed_to_the_node_is_refused() {
    let cluster = cluster();
    let op = Operator::start(&cluster.stores, None).await;
    let (mut agents, mut streams) = honest(&op).await;
    let before = counts(&op);

    // node-2 (db) reports ProbeSet web's probe, with SLO fast's threshold
    // id as node-0 was handed it.
    let fast_id = agents[0].probes[0].exact["shop/fast"].0;
    let db = &mut agents[1];
    let mut foreign = sim::SimProbe::new(probe("web"));
    foreign
        .exact
        .insert("shop/fast".into(), (fast_id, 5 * MS, 0, 0));
    foreign.observe("read", &[MS; 1_000]);
    db.probes.push(foreign);
    let r = db.report(unix_ms());
    streams[1].report(db, r).await.unwrap();
    assert_eq!(op.metric(REPORTS_REFUSED, "probe_not_pushed"), 1.0);
    assert_eq!(counts(&op), before);
    // Its own probe still counts (nothing new was observed on it).
    db.probes.pop();

    // node-0 (web) reports its probe against a laxer threshold than it was
    // handed, and against SLO slow, whose probe it does not run.
    let web = &mut agents[0];
    let lax = ringwarden_proto::threshold_id("shop/fast", Some(500 * MS), false, &[]);
    let slow_id = ringwarden_proto::threshold_id("shop/slow", Some(50 * MS), false, &[]);
    let exact = &mut web.probes[0].exact;
    exact.insert("shop/fast".into(), (lax, 500 * MS, 0, 0));
    exact.insert("shop/slow".into(), (slow_id, 50 * MS, 0, 0));
    web.probes[0].observe("read", &[100 * MS; 1_000]);
    let r = web.report(unix_ms());
    streams[0].report(web, r).await.unwrap();
    assert_eq!(op.metric(REPORTS_REFUSED, "threshold_not_pushed"), 1.0);
    assert_eq!(counts(&op), before);
    op.stop().await;
}

#[tokio::test]
async fn a_replayed_or_recycled_boot_id_is_refused_before_and_after_an_operator_restart() {
    let cluster = cluster();
    let op = Operator::start(&cluster.stores, None).await;
    let (_agents, _streams) = honest(&op).await;

    // node-1's agent, boot b1: two reports, both counted.
    let mut b1 = SimAgent::new("node-1", "b1", vec![probe("web")]);
    let mut c = op.connect(&mut b1).await;
    let mut sent = Vec::new();
    for _ in 0..2 {
        b1.probes[0].observe("read", &[MS; 10]);
        let r = b1.report(unix_ms());
        c.report(&mut b1, r.clone()).await.unwrap();
        sent.push(r);
    }
    c.close();
    // It restarts four times: b1 falls out of the SLO's streams.
    let mut current = b1.clone();
    for boot in 2..=5 {
        current = current.restarted(&format!("b{boot}"));
        let mut c = op.connect(&mut current).await;
        current.probes[0].observe("read", &[MS; 1]);
        let r = current.report(unix_ms());
        c.report(&mut current, r).await.unwrap();
    }
    let before = counts(&op);
    assert_eq!(before[0], (90 + 20 + 4, 100 + 20 + 4));

    // b1 again: its Hello is refused, so are its replayed reports.
    let mut replay = b1.clone();
    replay.seq = 1;
    let e = refusal(&op, "agent:node-1", &mut replay).await;
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    assert!(e.message().contains("replaced boot id b1 with b5"), "{e}");
    assert_eq!(op.metric(STREAMS_REFUSED, "boot_retired"), 1.0);
    assert_eq!(counts(&op), before);

    // The operator restarts from what it persisted: only the SLO remembers
    // b1 now, and refuses its reports.
    let persisted: Persisted = serde_json::from_str(
        &serde_json::to_string(&op.hub.reports().persisted("shop/fast").unwrap()).unwrap(),
    )
    .unwrap();
    op.stop().await;
    let op = Operator::start(&cluster.stores, Some(persisted)).await;
    let before = op.counted("shop/fast");
    assert_eq!(before, (114, 124));
    let mut c = sim::connect(op.channel().await, Some("agent:node-1"), b1.hello())
        .await
        .unwrap();
    // Replayed as sent, and recycled: b1 counting afresh from seq 1.
    let mut recycled = b1.restarted("b1");
    recycled.probes[0].observe("read", &[MS; 1_000]);
    let recycled = recycled.report(unix_ms());
    for r in [sent[1].clone(), sent[0].clone(), recycled] {
        let seq = r.seq;
        c.send(report_message(r)).await.unwrap();
        c.until_ack(&mut b1, seq).await.unwrap();
    }
    assert_eq!(op.metric(REPORTS_REFUSED, "boot_replayed"), 3.0);
    assert_eq!(
        op.metric("ringwarden_operator_reports_total", "replayed"),
        3.0
    );
    assert_eq!(op.counted("shop/fast"), before);
    op.stop().await;
}

#[tokio::test]
async fn a_new_boot_counts_only_from_its_first_report() {
    let cluster = cluster();
    let op = Operator::start(&cluster.stores, None).await;
    let (_agents, _streams) = honest(&op).await;
    let before = counts(&op);
    // A boot id never seen, whose first report claims to be its 41st and
    // carries a month of counts: they are a baseline, not counted.
    let mut forger = SimAgent::new("node-1", "b-new", vec![probe("web")]);
    let mut c = op.connect(&mut forger).await;
    forger.probes[0].observe("read", &[MS; 100_000]);
    forger.seq = 40;
    let r = forger.report(unix_ms());
    c.report(&mut forger, r).await.unwrap();
    assert_eq!(op.metric(REPORTS_REFUSED, "not_from_start"), 1.0);
    assert_eq!(counts(&op), before);
    // What it counts from then on does count.
    forger.probes[0].observe("read", &[MS; 3]);
    let r = forger.report(unix_ms());
    c.report(&mut forger, r).await.unwrap();
    assert_eq!(op.counted("shop/fast"), (before[0].0 + 3, before[0].1 + 3));
    op.stop().await;
}

#[tokio::test]
async fn a_node_reporting_u64_max_good_and_total_cannot_pin_the_slo_of_ten_honest_nodes() {
    const WEB_NODE: &[(&str, &str)] = &[("pool", "web")];
    let cluster = Cluster::new(
        vec![probeset("shop", "web", 1, WEB)],
        &[WEB_NODE; 11],
        vec![slo("shop", "fast", FAST)],
    );
    let op = Operator::start(&cluster.stores, None).await;
    let slo_state = |op: &Operator| {
        op.hub
            .reports()
            .evaluate("shop/fast", SystemTime::now())
            .expect("the SLO is known")
    };
    // Ten honest nodes, 90 % of their events fast: the 99 % target is
    // breached.
    let mut honest = Vec::new();
    for n in 0..10 {
        let mut a = SimAgent::new(&format!("node-{n}"), "boot", vec![probe("web")]);
        let c = op.connect(&mut a).await;
        honest.push((a, c));
    }
    for _ in 0..3 {
        for (a, c) in &mut honest {
            a.probes[0].observe("read", &[[MS; 90].as_slice(), &[100 * MS; 10]].concat());
            let r = a.report(unix_ms());
            c.report(a, r).await.unwrap();
        }
    }
    assert_eq!(op.counted("shop/fast"), (2_700, 3_000));

    // node-10 is compromised. Its boot's first report says u64::MAX good
    // of u64::MAX; so do later ones, after an honest first report, and
    // the first of each new boot.
    let pin = |r: &mut v1::Report| {
        for t in &mut r.probes[0].thresholds {
            t.good = u64::MAX;
            t.total = u64::MAX;
        }
    };
    let mut hostile = SimAgent::new("node-10", "evil-1", vec![probe("web")]);
    let mut c = op.connect(&mut hostile).await;
    hostile.probes[0].observe("read", &[MS; 10]);
    let mut r = hostile.report(unix_ms());
    pin(&mut r);
    c.report(&mut hostile, r).await.unwrap();
    assert_eq!(op.metric(REPORTS_REFUSED, "implausible_counts"), 1.0);

    let mut next = hostile.restarted("evil-2");
    let mut c = op.connect(&mut next).await;
    next.probes[0].observe("read", &[MS; 10]);
    let r = next.report(unix_ms());
    c.report(&mut next, r).await.unwrap();
    assert_eq!(op.counted("shop/fast"), (2_710, 3_010));
    for _ in 0..3 {
        let mut r = next.report(unix_ms());
        pin(&mut r);
        c.report(&mut next, r).await.unwrap();
    }
    assert_eq!(op.metric(REPORTS_REFUSED, "implausible_counts"), 4.0);
    assert_eq!(
        op.metric("ringwarden_operator_reports_total", "implausible"),
        4.0
    );
    // Nothing of it counted: still 90 %, still breached, and an hour later
    // too (what the honest nodes counted stays in the day's window).
    assert_eq!(op.counted("shop/fast"), (2_710, 3_010));
    let status = slo_state(&op);
    assert_eq!(status.state.as_str(), "Breached");
    let later = op
        .hub
        .reports()
        .evaluate(
            "shop/fast",
            SystemTime::now() + std::time::Duration::from_secs(3_600),
        )
        .unwrap();
    assert_eq!(later.state.as_str(), "Breached");
    assert!(
        later
            .sli
            .is_some_and(|s| (s - 2_710.0 / 3_010.0).abs() < 1e-9)
    );

    // The node is flagged on its ProbeSet.
    let figures = op.hub.probeset_figures(SystemTime::now());
    let problems = &figures[0].figures.problems;
    let flagged = problems
        .iter()
        .find(|p| p.node == "node-10")
        .expect("node-10 is flagged");
    assert_eq!(flagged.reason, "ImplausibleCounts");
    assert!(flagged.message.contains("probe sys"), "{}", flagged.message);
    assert!(problems.iter().all(|p| p.node == "node-10"), "{problems:?}");
    op.stop().await;
}

#[tokio::test]
async fn a_node_rotating_boot_ids_counts_no_more_than_its_ceiling_allows() {
    let cluster = cluster();
    let op = Operator::start(&cluster.stores, None).await;
    let (_agents, _streams) = honest(&op).await;
    let before = op.counted("shop/fast");
    // node-1 says it has 2 possible CPUs: 2 × 10^7 events a second, and
    // 15 minutes of them at once. Each new boot's first report counts in
    // full, so an attacker starts a new boot for every report, each
    // claiming two thirds of that.
    let burst: u64 = 2 * 10_000_000 * 900;
    let claim = burst / 3 * 2;
    for boot in 0..5 {
        let mut a = SimAgent::new("node-1", &format!("rot-{boot}"), vec![probe("web")]);
        let mut c = op.connect(&mut a).await;
        let mut r = a.report(unix_ms());
        for t in &mut r.probes[0].thresholds {
            t.good = claim;
            t.total = claim;
        }
        let counters = r.probes[0].counters.get_or_insert_default();
        counters.observed = claim;
        counters.aggregated = claim;
        c.report(&mut a, r).await.unwrap();
    }
    // The node's pace spans its boots: only the first claim fitted.
    let after = op.counted("shop/fast");
    assert_eq!(after, (before.0 + claim, before.1 + claim));
    assert_eq!(op.metric(REPORTS_REFUSED, "implausible_counts"), 4.0);
    op.stop().await;
}

// ------------------------------------------------ the real TokenReview client

fn bearer(token: &str) -> MetadataMap {
    let mut m = MetadataMap::new();
    m.insert("authorization", format!("Bearer {token}").parse().unwrap());
    m
}

const REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
const AGENT: &str = "system:serviceaccount:ringwarden-system:ringwarden-agent";

/// The API server's answer to a review, for the agent ServiceAccount with
/// these user extras.
fn reviewed(audience: &str, extra: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
        "spec": {},
        "status": {"authenticated": true, "audiences": [audience],
                   "user": {"username": AGENT, "extra": extra}}
    })
}

fn pod_claim(name: &str, uid: &str) -> serde_json::Value {
    json!({"authentication.kubernetes.io/pod-name": [name],
           "authentication.kubernetes.io/pod-uid": [uid]})
}

fn pod(name: &str, uid: &str, node: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": NAMESPACE, "uid": uid},
           "spec": {"nodeName": node, "containers": []}})
}

#[tokio::test]
async fn a_token_bound_to_a_pod_reports_for_that_pods_node_as_the_api_server_says() {
    let pods = format!("/api/v1/namespaces/{NAMESPACE}/pods");
    let (client, server) = api_server(vec![
        // The node claim is enough.
        post(REVIEWS)
            .check(|s| {
                assert_eq!(s.body["spec"]["token"], "t-node");
                assert_eq!(s.body["spec"]["audiences"], json!(["ringwarden"]));
            })
            .reply(
                201,
                reviewed(
                    "ringwarden",
                    json!({"authentication.kubernetes.io/node-name": ["node-7"]}),
                ),
            ),
        // A pod claim: the pod's spec.nodeName, once per pod.
        post(REVIEWS).reply(201, reviewed("ringwarden", pod_claim("agent-a", "u-a"))),
        get(&format!("{pods}/agent-a")).found(pod("agent-a", "u-a", "node-3")),
        post(REVIEWS).reply(201, reviewed("ringwarden", pod_claim("agent-a", "u-a"))),
        // A pod of that name, but not the token's: refused.
        post(REVIEWS).reply(201, reviewed("ringwarden", pod_claim("agent-b", "u-old"))),
        get(&format!("{pods}/agent-b")).found(pod("agent-b", "u-new", "node-4")),
        // No pod any more.
        post(REVIEWS).reply(201, reviewed("ringwarden", pod_claim("agent-c", "u-c"))),
        get(&format!("{pods}/agent-c")).not_found(),
        // Neither claim.
        post(REVIEWS).reply(201, reviewed("ringwarden", json!({}))),
        // Valid, but for the API server's audience.
        post(REVIEWS).reply(
            201,
            reviewed(
                "https://kubernetes.default.svc",
                json!({"authentication.kubernetes.io/node-name": ["node-7"]}),
            ),
        ),
    ]);
    let auth = Authenticator::new(
        TokenReviewer::new(client),
        "ringwarden",
        NAMESPACE,
        "ringwarden-agent",
    );
    let node_of = |token: &'static str| {
        let auth = &auth;
        async move { auth.authenticate(&bearer(token)).await }
    };
    assert_eq!(node_of("t-node").await.unwrap().node, "node-7");
    assert_eq!(node_of("t-pod").await.unwrap().node, "node-3");
    assert_eq!(node_of("t-pod-rotated").await.unwrap().node, "node-3");
    for (token, label, says) in [
        ("t-stale", "no_node", "is now another pod (uid u-new"),
        ("t-gone", "no_node", "no longer exists"),
        ("t-unbound", "no_node", "bound to no node and no pod"),
        (
            "t-kube",
            "wrong_audience",
            "not for audience \"ringwarden\"",
        ),
    ] {
        let e = node_of(token).await.unwrap_err();
        assert_eq!(e.metric_label(), label, "{token}: {e}");
        assert!(e.to_string().contains(says), "{token}: {e}");
    }
    drop(auth);
    server.finish().await;
}

/// An authenticated agent cannot make the operator do more than agents
/// do: reports sent faster than agents send them (a burst of 64, then
/// one per 100 ms) end the stream, counted, and nothing beyond the
/// accepted ones is counted.
#[tokio::test]
async fn reports_faster_than_agents_send_them_end_the_stream() {
    let cluster = cluster();
    let op = Operator::start(&cluster.stores, None).await;
    let mut agent = SimAgent::new("node-0", "boot-0", vec![probe("web")]);
    let mut c = op.connect(&mut agent).await;
    for _ in 0..200 {
        agent.probes[0].observe("read", &[MS]);
        let r = agent.report(unix_ms());
        if c.send(report_message(r)).await.is_err() {
            break;
        }
    }
    let status = loop {
        match c.next().await {
            Err(status) => break status,
            Ok(Some(_)) => {}
            Ok(None) => panic!("the stream ended without an answer"),
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(op.metric("ringwarden_operator_reports_total", "throttled") >= 1.0);
    // Reports are cumulative: what was accepted is at most the burst.
    let (_, total) = op.counted("shop/fast");
    assert!(
        (1..=64).contains(&total),
        "counted {total} of 200 reports' events"
    );
}
