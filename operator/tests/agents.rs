//! Agents over loopback gRPC: several simulated agents with their own node
//! names report to the operator's agent service; the Kubernetes side is the
//! watch caches filled by hand and a fake TokenReview.

mod common;

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use common::*;
use ringwarden_operator::{
    ingest::grpc,
    ingest::reports::{Persisted, ProbeRef},
    loopback::LoopbackOperator as Operator,
    sim::{self, SimAgent},
};
use ringwarden_proto::v1::{
    self, AgentMessage, agent_message::Message as FromAgent,
    agent_service_client::AgentServiceClient,
};
use tokio::{net::TcpListener, sync::oneshot};
use tonic::{Code, Request, transport::Endpoint};

const WEB: &str = "
nodeSelector: {pool: web}
probes:
  - {name: sys, kind: syscalls}
";
const FAST: &str =
    "{probeSet: web, probe: sys, indicator: {latency: {threshold: 5ms}}, target: 99}";
const NODES: &[&[(&str, &str)]] = &[&[("pool", "web")], &[("pool", "web")], &[("pool", "web")]];
const MS: u64 = 1_000_000;

fn cluster() -> Cluster {
    Cluster::new(
        vec![probeset("shop", "web", 1, WEB)],
        NODES,
        vec![slo("shop", "fast", FAST)],
    )
}

fn sys() -> ProbeRef {
    ProbeRef {
        namespace: "shop".into(),
        probeset: "web".into(),
        probe: "sys".into(),
    }
}

fn unix_ms() -> u64 {
    ringwarden_operator::ingest::reports::millis(SystemTime::now())
}

/// What the agents' kernels counted and the operator must count exactly.
#[derive(Default)]
struct Expected {
    good: u64,
    total: u64,
}

impl Expected {
    fn observe(&mut self, agent: &mut SimAgent, fast: usize, slow: usize) {
        let mut latencies = vec![MS; fast];
        latencies.extend(vec![10 * MS; slow]);
        agent.probes[0].observe("read", &latencies);
        self.good += fast as u64;
        self.total += (fast + slow) as u64;
    }
}

#[tokio::test]
async fn unauthenticated_or_forged_streams_are_refused_and_change_nothing() {
    let cluster = cluster();
    let op = Operator::start(&cluster.stores, None).await;
    let mut agent = SimAgent::new("node-0", "boot-1", vec![sys()]);
    agent.probes[0].observe("read", &[MS; 10]);
    let report = agent.report(unix_ms());
    for (token, code) in [
        (None, Code::Unauthenticated),
        (Some("Bearer forged"), Code::Unauthenticated),
        (Some("forged"), Code::Unauthenticated),
        (Some("Bearer other"), Code::PermissionDenied),
        // A valid agent token used from another node.
        (Some("Bearer agent:node-1"), Code::PermissionDenied),
    ] {
        // The Hello and a Report are on their way before any answer.
        let messages = vec![
            agent.hello(),
            AgentMessage {
                message: Some(FromAgent::Report(report.clone())),
            },
        ];
        let mut request = Request::new(futures::stream::iter(messages));
        if let Some(t) = token {
            request
                .metadata_mut()
                .insert("authorization", t.parse().unwrap());
        }
        let mut client = AgentServiceClient::new(op.channel().await);
        let answer = match client.connect(request).await {
            Err(status) => status,
            // The node check comes with the Hello, on the stream.
            Ok(response) => response.into_inner().message().await.unwrap_err(),
        };
        assert_eq!(answer.code(), code, "{token:?}: {answer}");
    }
    assert_eq!(op.counted("shop/fast"), (0, 0));
    assert_eq!(op.hub.reports().connected(), 0);
    assert_eq!(op.metric("ringwarden_operator_reports_total", ""), 0.0);
    assert_eq!(
        op.metric(
            "ringwarden_operator_agent_streams_refused_total",
            "unauthenticated"
        ),
        3.0
    );
    for reason in ["forbidden", "wrong_node"] {
        assert_eq!(
            op.metric("ringwarden_operator_agent_streams_refused_total", reason),
            1.0,
            "{reason}"
        );
    }
    let figures = op.hub.probeset_figures(SystemTime::now());
    assert_eq!(figures[0].figures.reporting, 0);
    op.stop().await;
}

#[tokio::test]
async fn a_follower_sends_agents_to_the_leader() {
    let cluster = cluster();
    let op = Operator::start(&cluster.stores, None).await;
    op.hub.stop_serving();
    let agent = SimAgent::new("node-0", "boot-1", vec![sys()]);
    let e = sim::connect(op.channel().await, Some("agent:node-0"), agent.hello())
        .await
        .err()
        .unwrap();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains("does not lead"), "{e}");
    op.stop().await;
}

#[tokio::test]
async fn several_agents_are_counted_once_through_repeats_reconnects_restarts_and_an_operator_restart()
 {
    let cluster = cluster();
    let op = Operator::start(&cluster.stores, None).await;
    let mut expected = Expected::default();
    let mut agents: Vec<SimAgent> = (0..3)
        .map(|i| SimAgent::new(&format!("node-{i}"), &format!("boot-{i}"), vec![sys()]))
        .collect();
    let mut streams = Vec::new();
    for a in &mut agents {
        let c = op.connect(a).await;
        // The configuration carries the SLO's threshold and its id.
        assert!(a.probes[0].exact.contains_key("shop/fast"), "{a:?}");
        streams.push(c);
    }
    assert_eq!(op.hub.reports().connected(), 3);

    // First reports: everything since the agents started counts.
    for (i, (a, c)) in agents.iter_mut().zip(&mut streams).enumerate() {
        expected.observe(a, 100, if i == 0 { 10 } else { 0 });
        let r = a.report(unix_ms());
        c.report(a, r).await.unwrap();
    }
    assert_eq!(op.counted("shop/fast"), (expected.good, expected.total));
    let text = op.text();
    for line in [
        "ringwarden_operator_agents_connected 3",
        "ringwarden_operator_reports_total{outcome=\"ingested\"} 3",
        "ringwarden_operator_report_ingest_seconds_count 3",
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }

    // Second reports, then node-0's again: a duplicate counts nothing.
    let mut second = Vec::new();
    for (a, c) in agents.iter_mut().zip(&mut streams) {
        expected.observe(a, 50, 1);
        let r = a.report(unix_ms());
        c.report(a, r.clone()).await.unwrap();
        second.push(r);
    }
    streams[0]
        .report(&mut agents[0], second[0].clone())
        .await
        .unwrap();
    assert_eq!(op.counted("shop/fast"), (expected.good, expected.total));
    assert_eq!(op.metric("ringwarden_operator_reports_total", "stale"), 1.0);

    // node-1 reconnects and retransmits its second report before a third.
    let old = streams.remove(1);
    old.close();
    expected.observe(&mut agents[1], 20, 0);
    let mut again = op.connect(&mut agents[1]).await;
    again
        .report(&mut agents[1], second[1].clone())
        .await
        .unwrap();
    let third = agents[1].report(unix_ms());
    again.report(&mut agents[1], third).await.unwrap();
    streams.insert(1, again);
    assert_eq!(op.counted("shop/fast"), (expected.good, expected.total));

    // node-2's agent restarts: a new boot counts from zero, and is seen.
    let old = streams.remove(2);
    old.close();
    agents[2] = agents[2].restarted("boot-2b");
    let mut fresh = op.connect(&mut agents[2]).await;
    expected.observe(&mut agents[2], 5, 0);
    let first = agents[2].report(unix_ms());
    fresh.report(&mut agents[2], first).await.unwrap();
    streams.insert(2, fresh);
    assert_eq!(op.counted("shop/fast"), (expected.good, expected.total));

    let figures = op.hub.probeset_figures(SystemTime::now());
    let f = &figures[0].figures;
    assert_eq!((f.desired, f.reporting, f.ready), (3, 3, 3), "{f:?}");
    assert!(f.flow.events_per_second > 0.0, "{f:?}");
    assert!(f.p50_ns.is_some_and(|p| p > MS / 2 && p < 2 * MS), "{f:?}");

    // The operator persists, node-0 reports once more, and the operator
    // dies: the persisted state must still lead to exact counts.
    let persisted: Persisted = serde_json::from_str(
        &serde_json::to_string(&op.hub.reports().persisted("shop/fast").unwrap()).unwrap(),
    )
    .unwrap();
    expected.observe(&mut agents[0], 7, 0);
    let late = agents[0].report(unix_ms());
    streams[0].report(&mut agents[0], late).await.unwrap();
    assert_eq!(op.counted("shop/fast"), (expected.good, expected.total));
    let mut endings = Vec::new();
    for mut s in streams.drain(..) {
        endings.push(tokio::spawn(async move { s.next().await }));
    }
    op.stop().await;
    for e in endings {
        let ended = e.await.unwrap();
        assert!(
            matches!(&ended, Err(s) if s.code() == Code::Unavailable) || matches!(ended, Ok(None)),
            "{ended:?}"
        );
    }

    let op = Operator::start(&cluster.stores, Some(persisted)).await;
    for a in &mut agents {
        let mut c = op.connect(a).await;
        expected.observe(a, 3, 0);
        let r = a.report(unix_ms());
        c.report(a, r).await.unwrap();
    }
    assert_eq!(op.counted("shop/fast"), (expected.good, expected.total));
    op.stop().await;
}

#[tokio::test]
async fn a_report_naming_another_boot_than_the_hello_ends_the_stream() {
    let cluster = cluster();
    let op = Operator::start(&cluster.stores, None).await;
    let mut agent = SimAgent::new("node-0", "boot-1", vec![sys()]);
    let mut c = op.connect(&mut agent).await;
    let mut report = agent.report(unix_ms());
    report.boot_id = "boot-2".into();
    c.send(AgentMessage {
        message: Some(FromAgent::Report(report)),
    })
    .await
    .unwrap();
    let e = c.next().await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let mut broken = agent.report(unix_ms());
    broken.probes.push(v1::ProbeReport::default());
    let mut c = op.connect(&mut agent).await;
    c.send(AgentMessage {
        message: Some(FromAgent::Report(broken)),
    })
    .await
    .unwrap();
    let e = c.next().await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("probe.id is missing"), "{e}");
    assert_eq!(op.counted("shop/fast"), (0, 0));
    op.stop().await;
}

#[tokio::test]
async fn a_probe_that_fails_to_load_degrades_its_node_alone() {
    let cluster = cluster();
    let op = Operator::start(&cluster.stores, None).await;
    let mut good = SimAgent::new("node-0", "boot-0", vec![sys()]);
    let mut bad = SimAgent::new("node-1", "boot-1", vec![sys()]);
    bad.probes[0].load_error = Some((
        v1::load_error::Kind::Verifier,
        "program rw_sys_exit was rejected".into(),
    ));
    for a in [&mut good, &mut bad] {
        let mut c = op.connect(a).await;
        a.probes[0].observe("read", &[MS; 5]);
        let r = a.report(unix_ms());
        c.report(a, r).await.unwrap();
    }
    let f = &op.hub.probeset_figures(SystemTime::now())[0].figures;
    assert_eq!((f.reporting, f.ready), (2, 1));
    assert_eq!(f.problem_nodes, 1);
    assert_eq!(f.problems[0].node, "node-1");
    assert_eq!(f.problems[0].reason, "LoadFailed");
    assert!(f.problems[0].message.contains("rejected"), "{f:?}");
    op.stop().await;
}

#[tokio::test]
async fn the_query_service_and_the_cli_show_what_agents_reported() {
    use ringwarden_operator::{ctl, ingest::grpc::QueryApi};
    use ringwarden_proto::v1::{StatusRequest, query_service_client::QueryServiceClient};

    let cluster = cluster();
    let op = Operator::start(&cluster.stores, None).await;
    let mut streams = Vec::new();
    for i in 0..2 {
        let mut a = SimAgent::new(&format!("node-{i}"), "boot", vec![sys()]);
        let mut c = op.connect(&mut a).await;
        a.probes[0].observe("read", &[[MS; 98].as_slice(), &[10 * MS; 2]].concat());
        let r = a.report(unix_ms());
        c.report(&mut a, r).await.unwrap();
        streams.push(c);
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(grpc::serve_queries(
        listener,
        QueryApi::new(Arc::clone(&op.hub)),
        grpc::Transport::Plaintext,
        async {
            let _ = stopped.await;
        },
    ));
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = QueryServiceClient::new(channel);
    let reply = client
        .get_status(StatusRequest {
            namespace: "shop".into(),
            interval_ms: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(reply.leading);
    assert_eq!(reply.connected_agents, 2);
    let ps = &reply.probesets[0];
    assert_eq!(
        (ps.nodes_desired, ps.nodes_reporting, ps.nodes_ready),
        (3, 2, 2)
    );
    let s = &reply.slos[0];
    assert_eq!((s.name.as_str(), s.state.as_str()), ("fast", "Breached"));
    assert_eq!((s.good, s.total), (196, 200));
    assert_eq!(s.observed_latency_ns.map(|ns| ns / MS), Some(10));
    let table = ctl::render(&reply, false).unwrap();
    assert!(table.contains("98.000%"), "{table}");

    // Watch sends the figures again, and ends when the leader steps down.
    let mut watch = client
        .watch(StatusRequest {
            namespace: String::new(),
            interval_ms: 500,
        })
        .await
        .unwrap()
        .into_inner();
    for _ in 0..2 {
        let r = watch.message().await.unwrap().unwrap();
        assert_eq!(r.slos.len(), 1);
    }
    let _ = stop.send(());
    op.stop().await;
    while let Ok(Some(r)) = watch.message().await {
        assert!(r.leading || r.slos.is_empty());
    }
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the query server stops once watches ended")
        .unwrap()
        .unwrap();
}

/// The platform's ClusterProbeSet, whose SLOs only namespace `platform`
/// may write.
const NODE_WIDE: &str = "
sloNamespaces: [platform]
maxDropRate: 0.01
probes:
  - {name: sys, kind: syscalls, export: {policy: all}, peakEventRate: 100000}
";

#[tokio::test]
async fn slos_from_a_namespace_a_cluster_probeset_does_not_list_take_no_slot_and_change_no_plan() {
    use ringwarden_crds::{ClusterProbeSet, agent::MAX_THRESHOLDS};
    use ringwarden_operator::{
        reconcile::render, reconcile::slo::SloTarget, reconcile::world::World,
    };

    let cps = ClusterProbeSet::new("node-wide", serde_yaml_ng::from_str(NODE_WIDE).unwrap());
    // As many SLOs as the kernel has slots, from a namespace the platform
    // did not list, named to sort before the platform's and asking for
    // no drops at all.
    let hostile = |i: usize| {
        slo(
            "hostile",
            &format!("a-{i}"),
            "{clusterProbeSet: node-wide, probe: sys, indicator: {errors: {}}, target: 99, \
             maxDropRate: 0}",
        )
    };
    let mut slos: Vec<_> = (0..MAX_THRESHOLDS).map(hostile).collect();
    slos.push(slo(
        "platform",
        "node-read",
        "{clusterProbeSet: node-wide, probe: sys, series: [read], \
         indicator: {latency: {threshold: 5ms}}, target: 99, maxDropRate: 0.01}",
    ));
    let stores = ringwarden_operator::loopback::fixed_stores_with_cluster(
        vec![],
        vec![cps],
        &[("node-0", &[])],
        slos.clone(),
    );

    // The plan and the thresholds the agents get.
    let world = World {
        cluster_probesets: stores.cluster_probesets.state(),
        nodes: vec![("node-0".into(), Default::default())],
        slos: slos.iter().filter_map(SloTarget::from_slo).collect(),
        ..World::default()
    };
    let config = render::agent_config(&world.assess_all(), 0);
    let probe = &config.probes[0];
    assert_eq!(
        (probe.probeset.as_str(), probe.spec.name.as_str()),
        ("node-wide", "sys")
    );
    assert_eq!(
        probe.max_drop_rate, 0.01,
        "the ClusterProbeSet's own maxDropRate"
    );
    let slots: Vec<&str> = probe.thresholds.iter().map(|t| t.slo.as_str()).collect();
    assert_eq!(slots, ["platform/node-read"]);

    // Over the agent service: the platform's SLO is counted, the others
    // are refused, naming the field that would admit them.
    let op = Operator::start(&stores, None).await;
    let node_wide = ProbeRef {
        namespace: String::new(),
        probeset: "node-wide".into(),
        probe: "sys".into(),
    };
    let mut agent = SimAgent::new("node-0", "boot-0", vec![node_wide]);
    let mut stream = op.connect(&mut agent).await;
    assert_eq!(
        agent.probes[0].exact.keys().collect::<Vec<_>>(),
        ["platform/node-read"]
    );
    agent.probes[0].observe("read", &[MS, MS, MS, 10 * MS]);
    let r = agent.report(unix_ms());
    stream.report(&mut agent, r).await.unwrap();
    assert_eq!(op.counted("platform/node-read"), (3, 4));
    for i in 0..MAX_THRESHOLDS {
        let id = format!("hostile/a-{i}");
        let p = op.hub.slo_problem(&id).expect("refused");
        assert_eq!(p.reason, "ProbeNotFound", "{id}");
        assert!(p.message.contains("spec.sloNamespaces"), "{}", p.message);
        assert!(op.hub.reports().evaluate(&id, SystemTime::now()).is_none());
    }
    assert!(op.hub.slo_problem("platform/node-read").is_none());
}
