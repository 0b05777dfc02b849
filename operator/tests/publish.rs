//! The report publisher against a mocked API server, on a paused clock:
//! restoring SLO state from its snapshot, removing stale snapshots, and
//! writing status only when it changed and at most once per report
//! interval per object.

mod common;

use std::{
    sync::mpsc as sync_mpsc,
    time::{Duration, SystemTime},
};

use common::*;
use kube::runtime::reflector::ObjectRef;
use ringwarden_core::slo::SloState as CoreState;
use ringwarden_crds::{ProbeSet, Slo, SloState, SloStatus};
use ringwarden_operator::{
    ingest::publish::{
        Publisher, SNAPSHOT_KEY, Settings, snapshot_config_map, snapshot_name, snapshot_of,
    },
    ingest::reports::{AgentInfo, Persisted, ProbeRef, Reports, Sample, millis},
    ingest::slo_status,
    lease::Leadership,
    sim::SimAgent,
};
use ringwarden_proto::v1::{self, agent_message::Message as FromAgent};
use serde_json::{Value, json};
use tokio::{sync::mpsc, time::advance};

const WEB: &str = "
nodeSelector: {pool: web}
probes:
  - {name: sys, kind: syscalls}
";
const FAST: &str =
    "{probeSet: web, probe: sys, indicator: {latency: {threshold: 5ms}}, target: 99}";
const MS: u64 = 1_000_000;

fn configmaps() -> String {
    format!("/api/v1/namespaces/{NAMESPACE}/configmaps")
}

fn slo_status_path() -> &'static str {
    "/apis/ringwarden.dev/v1alpha1/namespaces/shop/slos/fast/status"
}

fn hello(agent: &SimAgent) -> AgentInfo {
    match agent.hello().message {
        Some(FromAgent::Hello(h)) => AgentInfo::try_from(h).unwrap(),
        _ => unreachable!(),
    }
}

/// The agent's next report at `at`, checked as the service would.
fn report(agent: &mut SimAgent, at: SystemTime) -> Sample {
    Sample::try_from(agent.report(millis(at))).unwrap()
}

/// The agents' configuration the operator renders for `cluster`.
fn rendered(cluster: &Cluster) -> ringwarden_crds::AgentConfig {
    let slos: Vec<_> = cluster
        .stores
        .slos
        .state()
        .iter()
        .filter_map(|s| ringwarden_operator::reconcile::slo::SloTarget::from_slo(s))
        .collect();
    let world = ringwarden_operator::reconcile::world::World {
        cluster_probesets: vec![],
        namespaces: vec![],
        namespace_limits: Default::default(),
        probesets: cluster.stores.probesets.state(),
        nodes: vec![(
            "n1".to_string(),
            [("pool".to_string(), "web".to_string())].into(),
        )],
        slos,
        node_selector_labels: Default::default(),
    };
    ringwarden_operator::reconcile::render::agent_config(&world.assess_all(), 0)
}

/// Installs the SLO's threshold as a pushed configuration would.
fn configure(agent: &mut SimAgent, cluster: &Cluster) {
    let web = [("pool".to_string(), "web".to_string())].into();
    let mine = ringwarden_operator::ingest::hub::node_config(&rendered(cluster), &web);
    agent.apply(&v1::Config {
        version: mine.version,
        agent_config_json: mine.json,
        thresholds: mine
            .thresholds
            .into_iter()
            .map(|(slo, threshold_id)| v1::ThresholdBinding { slo, threshold_id })
            .collect(),
    });
}

/// A snapshot as earlier versions wrote it (plain JSON under `data`),
/// which a new leader must still read.
fn snapshot_configmap(p: &Persisted) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": snapshot_name(&p.slo), "namespace": NAMESPACE,
                     "annotations": {"ringwarden.dev/slo": p.slo}},
        "data": {SNAPSHOT_KEY: serde_json::to_string(p).unwrap()}
    })
}

/// A status write whose body goes to `written`, answered with the SLO.
fn slo_write(slo: &Slo, written: &sync_mpsc::Sender<Value>) -> Exchange {
    let written = written.clone();
    patch(slo_status_path()).found(slo).check(move |s| {
        assert_applied(s);
        written.send(s.body["status"].clone()).unwrap();
    })
}

#[tokio::test(start_paused = true)]
async fn slo_state_is_restored_and_status_is_written_at_most_once_per_interval() {
    let fast = slo("shop", "fast", FAST);
    let mut cluster = Cluster::new(
        vec![probeset("shop", "web", 1, WEB)],
        &[&[("pool", "web")]],
        vec![fast.clone()],
    );
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let at = |s: u64| t0 + Duration::from_secs(s);

    // What a previous leader persisted: node-0 counted 90 good of 100.
    let mut agent = SimAgent::new(
        "node-0",
        "boot-1",
        vec![ProbeRef {
            namespace: "shop".into(),
            probeset: "web".into(),
            probe: "sys".into(),
        }],
    );
    configure(&mut agent, &cluster);
    let earlier = t0 - Duration::from_secs(60);
    agent.probes[0].observe("read", &[[MS; 90].as_slice(), &[10 * MS; 10]].concat());
    let mut before = Reports::default();
    let def = slo_status::definition(&fast, &cluster.stores.probesets.state(), &[], None).unwrap();
    before.sync_slos(earlier, vec![def]);
    before.hello(earlier, hello(&agent)).unwrap();
    before.ingest(earlier, "node-0", &report(&mut agent, earlier));
    let persisted = before.persisted("shop/fast").unwrap();

    let (written_tx, written) = sync_mpsc::channel();
    let stale = json!({
        "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
        "metadata": {"resourceVersion": "9"},
        "items": [
            {"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
             "metadata": {"name": snapshot_name("shop/fast"), "annotations": {"ringwarden.dev/slo": "shop/fast"}}},
            {"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
             "metadata": {"name": snapshot_name("shop/gone"), "annotations": {"ringwarden.dev/slo": "shop/gone"}}}
        ]
    });
    let snapshot_write = || {
        patch(&format!("{}/{}", configmaps(), snapshot_name("shop/fast"))).check(|s| {
            assert_applied(s);
            let cm: k8s_openapi::api::core::v1::ConfigMap =
                serde_json::from_value(s.body.clone()).unwrap();
            let p: Persisted = snapshot_of(&cm).unwrap();
            assert_eq!(p.slo, "shop/fast");
            assert_eq!(
                s.body["metadata"]["labels"]["ringwarden.dev/slo-snapshot"],
                "true"
            );
            // Uninstalling the operator garbage-collects it.
            assert_owned(&s.body);
        })
    };
    let (client, server) = api_server(vec![
        // t0: restore, then drop the snapshot of a deleted SLO.
        get(&format!("{}/{}", configmaps(), snapshot_name("shop/fast")))
            .found(snapshot_configmap(&persisted)),
        get(&configmaps()).reply(200, stale),
        exchange_delete(&format!("{}/{}", configmaps(), snapshot_name("shop/gone"))),
        slo_write(&fast, &written_tx),
        // t0+10, t0+22, t0+32: the changed SLO, and its changed snapshot.
        slo_write(&fast, &written_tx),
        snapshot_write(),
        slo_write(&fast, &written_tx),
        snapshot_write(),
        slo_write(&fast, &written_tx),
        snapshot_write(),
        // t0+46: the node is silent, so the SLO's data is stale.
        slo_write(&fast, &written_tx),
    ]);
    let settings = ringwarden_operator::config::AgentSettings {
        owner: Some(owner()),
        ..Default::default()
    };
    let (ctx, _registry) = context_with(client, &cluster, Leadership::always(), settings);
    let (reconcile_tx, mut reconciled) = mpsc::unbounded_channel::<ObjectRef<ProbeSet>>();
    let mut publisher = Publisher::new(ctx.clone(), reconcile_tx, Settings::default());
    let hub = ctx.hub.clone();
    // As the agent controller would, before agents report.
    hub.set_config(&rendered(&cluster));
    // What the watch would do after each write.
    let observe_write = |cluster: &mut Cluster| -> SloStatus {
        let status: SloStatus = serde_json::from_value(written.try_recv().unwrap()).unwrap();
        let mut updated = fast.clone();
        updated.status = Some(status.clone());
        cluster.apply_slo(updated);
        status
    };

    publisher.step(at(0)).await;
    assert!(hub.is_serving());
    let s = observe_write(&mut cluster);
    // The restored counts, at once.
    assert_eq!(s.sli, Some(90.0));
    assert_eq!(s.state, Some(SloState::Breached));
    assert!(s.counting_since.is_some());

    hub.hello(at(1), hello(&agent)).unwrap();
    agent.probes[0].observe("read", &[MS; 900]);
    hub.ingest(at(1), "node-0", report(&mut agent, at(1)));
    advance(Duration::from_secs(1)).await;
    publisher.step(at(1)).await;
    advance(Duration::from_secs(4)).await;
    publisher.step(at(5)).await;
    assert!(
        written.try_recv().is_err(),
        "written again within the interval"
    );

    advance(Duration::from_secs(5)).await;
    publisher.step(at(10)).await;
    let s = observe_write(&mut cluster);
    assert_eq!(s.sli, Some(99.0));
    assert_eq!(
        hub.reports().evaluate("shop/fast", at(10)).unwrap().state,
        CoreState::Met
    );

    advance(Duration::from_secs(5)).await;
    publisher.step(at(15)).await;
    assert!(
        reconciled.try_recv().is_err(),
        "figures published during the grace period"
    );

    // Agents have had two intervals: the ProbeSet's figures are published.
    advance(Duration::from_secs(7)).await;
    agent.probes[0].observe("read", &[MS; 100]);
    hub.ingest(at(21), "node-0", report(&mut agent, at(21)));
    publisher.step(at(22)).await;
    assert_eq!(
        reconciled.try_recv().unwrap(),
        ObjectRef::new("web").within("shop")
    );
    let published = hub.published("shop/web").unwrap();
    assert_eq!(published.ready, "1/1");
    assert_eq!(published.degraded, None);
    observe_write(&mut cluster);

    // Changes within the interval wait for it to pass.
    for (s, good, bad) in [(23, 5000, 0), (24, 0, 50)] {
        advance(Duration::from_secs(1)).await;
        let mut latencies = vec![MS; good];
        latencies.extend(vec![10 * MS; bad]);
        agent.probes[0].observe("read", &latencies);
        hub.ingest(at(s), "node-0", report(&mut agent, at(s)));
        publisher.step(at(s)).await;
        assert!(
            reconciled.try_recv().is_err(),
            "published twice within the interval"
        );
        assert!(
            written.try_recv().is_err(),
            "written twice within the interval"
        );
    }
    advance(Duration::from_secs(8)).await;
    publisher.step(at(32)).await;
    assert!(
        reconciled.try_recv().is_ok(),
        "changed figures are published when due"
    );
    observe_write(&mut cluster);

    // The agent falls silent: two intervals later its node is a problem.
    for s in 33..=46 {
        advance(Duration::from_secs(1)).await;
        publisher.step(at(s)).await;
        assert_eq!(reconciled.try_recv().is_ok(), s == 46, "at {s}");
    }
    let published = hub.published("shop/web").unwrap();
    assert_eq!(published.ready, "0/1");
    let (reason, message) = published.degraded.unwrap();
    assert_eq!(reason, "NotReporting");
    assert!(message.starts_with("1 of 1 node: node-0: "), "{message}");
    // The SLO says its data is stale, naming the node, and keeps its
    // counts.
    let s = observe_write(&mut cluster);
    assert_eq!(s.state, Some(SloState::Stale));
    let ready = s.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "NodesSilent")
    );
    assert!(
        ready
            .message
            .contains("node-0 (no report within two report intervals)")
    );
    assert!(s.sli.is_some());
    // Nothing else changes: nothing is written however long it runs.
    for s in 47..80 {
        advance(Duration::from_secs(1)).await;
        publisher.step(at(s)).await;
    }
    assert!(reconciled.try_recv().is_err());
    assert!(written.try_recv().is_err());
    drop((publisher, ctx, hub));
    let seen = server.finish().await;
    assert_eq!(
        seen.iter().filter(|s| s.path == slo_status_path()).count(),
        5
    );
}

#[tokio::test(start_paused = true)]
async fn a_follower_publishes_nothing_and_takes_no_agents() {
    let cluster = Cluster::new(
        vec![probeset("shop", "web", 1, WEB)],
        &[&[("pool", "web")]],
        vec![slo("shop", "fast", FAST)],
    );
    let (client, server) = api_server(vec![]);
    let (ctx, _registry) = context(client, &cluster, Leadership::follower());
    let (reconcile_tx, mut reconciled) = mpsc::unbounded_channel();
    let mut publisher = Publisher::new(ctx.clone(), reconcile_tx, Settings::default());
    for s in 0..30 {
        advance(Duration::from_secs(1)).await;
        publisher
            .step(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s))
            .await;
    }
    assert!(!ctx.hub.is_serving());
    assert!(reconciled.try_recv().is_err());
    drop((publisher, ctx));
    server.finish().await;
}

fn exchange_delete(path: &str) -> Exchange {
    delete(path).reply(
        200,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
    )
}

/// An SLO's snapshot after `nodes` agents, each on its own boot, reported
/// every 10 s for `reports` intervals with a spread of latencies.
fn snapshot_after(nodes: usize, reports: u64) -> Persisted {
    let cluster = Cluster::new(
        vec![probeset("shop", "web", 1, WEB)],
        &[&[("pool", "web")]],
        vec![slo("shop", "fast", FAST)],
    );
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let def = slo_status::definition(
        &slo("shop", "fast", FAST),
        &cluster.stores.probesets.state(),
        &[],
        None,
    )
    .unwrap();
    let mut reports_seen = Reports::default();
    reports_seen.sync_slos(t0, vec![def]);
    let probe = ProbeRef {
        namespace: "shop".into(),
        probeset: "web".into(),
        probe: "sys".into(),
    };
    let latencies: Vec<u64> = (0..64).map(|i| (i * i + 1) * MS / 7).collect();
    for n in 0..nodes {
        let node = format!("ip-10-0-{}-{}.eu-west-1.compute.internal", n / 250, n % 250);
        // Boot ids are random UUIDs: incompressible, as in a cluster.
        let mut x = (n as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let boot = format!("{:016x}{:016x}", next(), next());
        let mut agent = SimAgent::new(&node, &boot, vec![probe.clone()]);
        configure(&mut agent, &cluster);
        reports_seen.hello(t0, hello(&agent)).unwrap();
        for r in 0..reports {
            let at = t0 + Duration::from_secs(10 * r);
            for _ in 0..(n * 7 + r as usize * 13) % 29 + 1 {
                agent.probes[0].observe("read", &latencies[..(n + r as usize) % 64 + 1]);
            }
            reports_seen.ingest(at, &node, &report(&mut agent, at));
        }
    }
    reports_seen.persisted("shop/fast").unwrap()
}

#[test]
fn a_snapshot_stays_far_below_a_configmaps_limit_at_5000_nodes() {
    for (nodes, limit) in [(1_000, 128 * 1024), (5_000, 384 * 1024)] {
        let p = snapshot_after(nodes, 3);
        let cm = snapshot_config_map(NAMESPACE, &p, None).unwrap();
        // What etcd stores, near enough: the object as JSON.
        let stored = serde_json::to_vec(&cm).unwrap().len();
        let plain = serde_json::to_vec(&p).unwrap().len();
        println!("{nodes} nodes: snapshot {plain} bytes as JSON, ConfigMap {stored} bytes");
        assert!(
            stored < limit,
            "{nodes} nodes: {stored} bytes (plain {plain}); the limit is 1 MiB"
        );
        assert_eq!(snapshot_of(&cm).unwrap(), p, "it reads back exactly");
    }
}

/// A new leader restores snapshots older than a failover takes; only one
/// that held counts can land a gap's counts at once, so only its SLO says
/// `RestoredStale`.
#[tokio::test(start_paused = true)]
async fn after_a_failover_only_an_slo_that_had_counts_says_its_restore_was_stale() {
    for counted in [false, true] {
        let fast = slo("shop", "fast", FAST);
        let cluster = Cluster::new(
            vec![probeset("shop", "web", 1, WEB)],
            &[&[("pool", "web")]],
            vec![fast.clone()],
        );
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut agent = SimAgent::new(
            "node-0",
            "boot-1",
            vec![ProbeRef {
                namespace: "shop".into(),
                probeset: "web".into(),
                probe: "sys".into(),
            }],
        );
        configure(&mut agent, &cluster);
        let mut before = Reports::default();
        let def =
            slo_status::definition(&fast, &cluster.stores.probesets.state(), &[], None).unwrap();
        let earlier = t0 - Duration::from_secs(400);
        before.sync_slos(earlier, vec![def]);
        before.hello(earlier, hello(&agent)).unwrap();
        if counted {
            agent.probes[0].observe("read", &[MS; 10]);
        }
        before.ingest(earlier, "node-0", &report(&mut agent, earlier));
        let mut persisted = before.persisted("shop/fast").unwrap();
        // Written 400 s ago by the previous leader: far older than a
        // failover takes.
        persisted.saved_ms = Some(millis(SystemTime::now()) - 400_000);

        let (written_tx, written) = sync_mpsc::channel();
        let (client, server) = api_server(vec![
            get(&format!("{}/{}", configmaps(), snapshot_name("shop/fast")))
                .found(snapshot_configmap(&persisted)),
            get(&configmaps()).reply(
                200,
                json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
                       "metadata": {"resourceVersion": "9"}, "items": []}),
            ),
            slo_write(&fast, &written_tx),
        ]);
        let (ctx, _registry) = context(client, &cluster, Leadership::always());
        let (reconcile_tx, _reconciled) = mpsc::unbounded_channel::<ObjectRef<ProbeSet>>();
        let mut publisher = Publisher::new(ctx.clone(), reconcile_tx, Settings::default());
        ctx.hub.set_config(&rendered(&cluster));
        publisher.step(t0).await;
        let status: SloStatus = serde_json::from_value(written.try_recv().unwrap()).unwrap();
        let persisted = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Persisted")
            .unwrap();
        if counted {
            assert_eq!(
                (persisted.status.as_str(), persisted.reason.as_str()),
                ("False", "RestoredStale")
            );
        } else {
            assert_eq!(
                (persisted.status.as_str(), persisted.reason.as_str()),
                ("True", "Saved"),
                "an SLO that never had data raises no false alarm"
            );
        }
        drop((publisher, ctx));
        server.finish().await;
    }
}
