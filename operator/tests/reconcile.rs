//! Reconcile against a mocked API server: every request the operator makes
//! is scripted, and checked for method, path and body.

mod common;

use std::{sync::Arc, time::Duration};

use common::*;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::controller::Action;
use ringwarden_crds::{AgentConfig, ProbeSetStatus};
use ringwarden_operator::{
    error::Error,
    lease::Leadership,
    reconcile::agent,
    reconcile::controller::{error_policy, reconcile},
    reconcile::render::{self, CONFIG_KEY},
    reconcile::world::World,
};
use serde_json::{Value, json};
use tokio::sync::{Notify, oneshot};

const WEB: &str = "
nodeSelector: {pool: web}
probes:
  - name: sys
    kind: syscalls
    export: {policy: slowerThan, slowerThan: 10ms}
    peakEventRate: 1000
  - {name: runq, kind: runqueue}
";

const DB: &str = "
nodeSelector: {pool: db}
podSelector: {matchLabels: {app: postgres}}
probes:
  - {name: io, kind: blockIO, export: {policy: all}, peakEventRate: 5000}
";

const BROKEN: &str = "
probes:
  - {name: Sys, kind: syscalls}
";

const NODES: &[&[(&str, &str)]] = &[&[("pool", "web")], &[("pool", "db")], &[("pool", "batch")]];

fn without_times(mut status: Value) -> Value {
    for c in status["conditions"].as_array_mut().into_iter().flatten() {
        c.as_object_mut().unwrap().remove("lastTransitionTime");
    }
    status
}

fn agent_config(cm: &Value) -> AgentConfig {
    serde_yaml_ng::from_str(cm["data"][CONFIG_KEY].as_str().unwrap()).unwrap()
}

fn probe_ids(config: &AgentConfig) -> Vec<String> {
    config.probes.iter().map(|p| p.id()).collect()
}

fn affinity_terms(ds: &Value) -> Value {
    ds["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
        ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        .clone()
}

/// The objects the operator would have written for `world`.
fn rendered(world: &World) -> render::AgentObjects {
    render::agent_objects(&world.assess_all(), &Default::default(), NAMESPACE).unwrap()
}

#[tokio::test]
async fn a_new_probeset_gets_its_plan_in_status_and_one_event() {
    let ps = probeset("shop", "web", 1, WEB);
    let cluster = Cluster::new(vec![ps], NODES, vec![]);
    let (client, server) = api_server(vec![
        patch_status(&cluster.probeset("shop", "web")).check(|s| {
            assert_applied(s);
            assert_eq!(s.body["apiVersion"], "ringwarden.dev/v1alpha1");
            assert_eq!(s.body["kind"], "ProbeSet");
            assert_eq!(s.body.as_object().unwrap().len(), 3, "only status is written");
            assert_eq!(
                without_times(s.body["status"].clone()),
                json!({
                    "observedGeneration": 1,
                    "conditions": [
                        {"type": "Ready", "status": "False", "reason": "AwaitingReports", "observedGeneration": 1,
                         "message": "2 probes planned with 32Ki of ring buffers per node; waiting for the agents' first reports"},
                        {"type": "Invalid", "status": "False", "reason": "ValidSpec", "observedGeneration": 1,
                         "message": "the spec is valid"},
                        {"type": "QuotaConstrained", "status": "False", "reason": "WithinBudget", "observedGeneration": 1,
                         "message": "every probe gets the ring buffer its declared rate needs"},
                        {"type": "Stalled", "status": "False", "reason": "NotStalled", "observedGeneration": 1,
                         "message": "nothing stops the probes from running"},
                        {"type": "Reconciling", "status": "True", "reason": "AwaitingReports", "observedGeneration": 1,
                         "message": "2 probes planned with 32Ki of ring buffers per node; waiting for the agents' first reports"}
                    ],
                    "state": "Reconciling",
                    "ringBuffer": "32Ki",
                    "predictedDropPercent": 0.0,
                    "plan": {
                        "budgetBytes": 67108864,
                        "usedBytes": 32768,
                        "probes": [
                            {"name": "sys", "ringBytes": 32768, "sampleEvery": 1, "predictedDrop": 0.0,
                             "reasons": ["needs 18.8 KiB for 1000 ev/s × 96 B × 100ms × burst 2; rounded to 32 KiB"]},
                            {"name": "runq", "ringBytes": 0, "sampleEvery": 1, "predictedDrop": 0.0,
                             "reasons": ["no event path (peakRate 0), so no ring buffer"]}
                        ]
                    }
                })
            );
            let time = s.body["status"]["conditions"][0]["lastTransitionTime"].as_str().unwrap();
            assert!(time.ends_with('Z') && !time.contains('.'), "{time}");
        }),
        post(&events_path("shop")).check(|s| {
            assert_eq!(s.body["type"], "Normal");
            assert_eq!(s.body["reason"], "Planned");
            assert_eq!(s.body["action"], "Plan");
            assert_eq!(s.body["note"], "2 probes planned with 32Ki of ring buffers per node");
            assert_eq!(s.body["regarding"]["kind"], "ProbeSet");
            assert_eq!(s.body["regarding"]["name"], "web");
            assert_eq!(s.body["reportingController"], "ringwarden-operator");
            assert_eq!(s.body["reportingInstance"], "operator-0");
        }),
    ]);
    let (ctx, _) = context(client, &cluster, Leadership::always());
    let action = reconcile(cluster.probeset("shop", "web"), Arc::clone(&ctx))
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(600)));
    assert_eq!(ctx.metrics.writes_of("ProbeSetStatus"), 1);
    drop(ctx);
    server.finish().await;
}

#[tokio::test]
async fn agent_objects_are_created_from_every_valid_probeset() {
    let cluster = Cluster::new(
        vec![
            probeset("team-b", "db", 1, DB),
            probeset("shop", "web", 1, WEB),
            probeset("shop", "broken", 1, BROKEN),
        ],
        NODES,
        vec![],
    );
    let (client, server) = api_server(vec![
        get(CONFIG_MAP).not_found(),
        patch(CONFIG_MAP).check(|s| {
            assert_applied(s);
            assert_eq!(s.body["kind"], "ConfigMap");
            assert_eq!(s.body["metadata"]["namespace"], NAMESPACE);
            let config = agent_config(&s.body);
            assert_eq!(
                probe_ids(&config),
                ["shop/web/runq", "shop/web/sys", "team-b/db/io"],
                "the invalid ProbeSet is left out"
            );
            let io = &config.probes[2];
            assert_eq!(io.node_selector["pool"], "db");
            assert!(io.pod_selector.is_some());
            // 5000 ev/s × 96 B × 100ms × 2 = 96000 B → 128 KiB; the runq
            // probe has a one-page ring.
            assert_eq!(io.ring_bytes, 128 << 10);
            assert_eq!(config.probes[0].ring_bytes, 4096);
            // The platform's node budget, which each agent shares among
            // the probes of its node.
            assert_eq!(config.node_budget_bytes, 256 << 20);
            let hash = s.body["metadata"]["annotations"]["ringwarden.dev/config-hash"]
                .as_str()
                .unwrap();
            assert!(hash.starts_with("sha256:"), "{hash}");
        }),
        get(DAEMON_SET).not_found(),
        patch(DAEMON_SET).check(|s| {
            assert_applied(s);
            assert_eq!(s.body["kind"], "DaemonSet");
            assert_eq!(
                affinity_terms(&s.body),
                json!([
                    {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["db"]}]},
                    {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["web"]}]}
                ])
            );
        }),
    ]);
    let (ctx, _) = context(client, &cluster, Leadership::always());
    agent::sync(&ctx).await.unwrap();
    assert_eq!(ctx.metrics.writes_of("ConfigMap"), 1);
    assert_eq!(ctx.metrics.writes_of("DaemonSet"), 1);
    drop(ctx);
    server.finish().await;
}

#[tokio::test]
async fn each_node_budget_share_is_planned_with_the_cpus_its_own_agent_reported() {
    use ringwarden_operator::ingest::reports::AgentInfo;
    // node-0 runs web, node-1 db, node-2 web again.
    let nodes: &[&[(&str, &str)]] = &[&[("pool", "web")], &[("pool", "db")], &[("pool", "web")]];
    let cluster = Cluster::new(
        vec![
            probeset("shop", "web", 1, WEB),
            probeset("team-b", "db", 1, DB),
        ],
        nodes,
        vec![],
    );
    let (client, server) = api_server(vec![
        get(CONFIG_MAP).not_found(),
        patch(CONFIG_MAP),
        get(DAEMON_SET).not_found(),
        patch(DAEMON_SET),
    ]);
    let (ctx, _) = context(client, &cluster, Leadership::always());
    let hello = |node: &str, boot: &str, possible_cpus| {
        ctx.hub
            .reports()
            .hello(
                std::time::SystemTime::now(),
                AgentInfo {
                    node: node.into(),
                    boot_id: boot.into(),
                    possible_cpus,
                    ..AgentInfo::default()
                },
            )
            .unwrap();
    };
    // Before any agent has said how many CPUs its node has, no share.
    agent::sync(&ctx).await.unwrap();
    assert_eq!(ctx.node_share("shop/web"), None);

    hello("node-0", "b0", 2);
    hello("node-1", "b1", 64);
    hello("node-2", "b2", 2);
    agent::sync(&ctx).await.unwrap();
    let cpus = |key: &str| ctx.node_share(key).map(|s| s.cpus);
    assert_eq!(cpus("shop/web"), Some(2), "web runs on 2-CPU nodes only");
    assert_eq!(cpus("team-b/db"), Some(64));

    // node-2's agent restarts as one too old to say: the node is planned
    // as the largest that did.
    hello("node-2", "b3", 0);
    agent::sync(&ctx).await.unwrap();
    assert_eq!(cpus("shop/web"), Some(64));
    drop(ctx);
    server.finish().await;
}

#[tokio::test]
async fn an_invalid_probeset_is_marked_invalid_and_the_others_keep_working() {
    let cluster = Cluster::new(
        vec![
            probeset("shop", "broken", 4, BROKEN),
            probeset("shop", "web", 1, WEB),
        ],
        NODES,
        vec![],
    );
    let (client, server) = api_server(vec![
        patch_status(&cluster.probeset("shop", "broken")).check(|s| {
            let status = without_times(s.body["status"].clone());
            assert_eq!(status["observedGeneration"], 4);
            assert_eq!(
                status["conditions"],
                json!([
                    {"type": "Ready", "status": "False", "reason": "InvalidSpec", "observedGeneration": 4,
                     "message": "the spec is invalid; see the Invalid condition"},
                    {"type": "Invalid", "status": "True", "reason": "InvalidSpec", "observedGeneration": 4,
                     "message": "spec.probes[0].name: \"Sys\" is not a DNS label; use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit, e.g. \"sys\""},
                    {"type": "Stalled", "status": "True", "reason": "InvalidSpec", "observedGeneration": 4,
                     "message": "spec.probes[0].name: \"Sys\" is not a DNS label; use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit, e.g. \"sys\""},
                    {"type": "Reconciling", "status": "False", "reason": "Reconciled", "observedGeneration": 4,
                     "message": "the status shows the agents' latest reports on this generation"}
                ])
            );
            assert_eq!(status["state"], "Invalid: spec.probes[0].name");
            assert!(status.get("plan").is_none() && status.get("ringBuffer").is_none());
        }),
        post(&events_path("shop")).check(|s| {
            assert_eq!(s.body["type"], "Warning");
            assert_eq!(s.body["reason"], "InvalidSpec");
            assert!(s.body["note"].as_str().unwrap().starts_with("spec.probes[0].name: "));
        }),
        patch_status(&cluster.probeset("shop", "web")),
        post(&events_path("shop")),
    ]);
    let (ctx, _) = context(client, &cluster, Leadership::always());
    reconcile(cluster.probeset("shop", "broken"), Arc::clone(&ctx))
        .await
        .unwrap();
    reconcile(cluster.probeset("shop", "web"), Arc::clone(&ctx))
        .await
        .unwrap();
    drop(ctx);
    server.finish().await;
}

#[tokio::test]
async fn a_spec_update_replans_and_rewrites_only_what_changed() {
    let old = probeset("shop", "web", 1, WEB);
    let mut cluster = Cluster::new(vec![old.clone()], NODES, vec![]);
    let before = rendered(&World {
        cluster_probesets: vec![],
        namespaces: vec![],
        namespace_limits: Default::default(),
        probesets: vec![Arc::new(old.clone())],
        nodes: vec![(
            "n1".to_string(),
            [("pool".to_string(), "web".to_string())].into(),
        )],
        slos: vec![],
        node_selector_labels: Default::default(),
    });
    // The status the first generation got.
    let (client, server) = api_server(vec![
        patch_status(&cluster.probeset("shop", "web")),
        post(&events_path("shop")),
    ]);
    let (ctx, _) = context(client, &cluster, Leadership::always());
    reconcile(cluster.probeset("shop", "web"), Arc::clone(&ctx))
        .await
        .unwrap();
    drop(ctx);
    let first: ProbeSetStatus =
        serde_json::from_value(server.finish().await[0].body["status"].clone()).unwrap();

    let mut new = probeset(
        "shop",
        "web",
        2,
        &WEB.replace("peakEventRate: 1000", "peakEventRate: 100000"),
    );
    new.spec.ring_buffer.node_budget = "64Ki".into();
    new.status = Some(first.clone());
    cluster.apply(new);
    let (client, server) = api_server(vec![
        patch_status(&cluster.probeset("shop", "web")).check(move |s| {
            let status: ProbeSetStatus = serde_json::from_value(s.body["status"].clone()).unwrap();
            assert_eq!(status.observed_generation, Some(2));
            let cond = |t: &str| {
                status
                    .conditions
                    .iter()
                    .find(|c| c.type_ == t)
                    .unwrap()
                    .clone()
            };
            let ready = cond("Ready");
            assert_eq!(
                (ready.status.as_str(), ready.reason.as_str()),
                ("False", "AwaitingReports")
            );
            assert_eq!(ready.observed_generation, Some(2));
            assert_eq!(
                ready.last_transition_time, first.conditions[0].last_transition_time,
                "an unflipped condition keeps its transition time"
            );
            let quota = cond("QuotaConstrained");
            assert_eq!(
                (quota.status.as_str(), quota.reason.as_str()),
                ("True", "BudgetShort")
            );
            assert_eq!(
                quota.message,
                "spec.ringBuffer.nodeBudget is too small for the declared rates: \
                 sys: ring 64Ki of the 2Mi it needs, sampling 1 in 8 instead of 1 in 1"
            );
            let plan = status.plan.unwrap();
            assert_eq!((plan.budget_bytes, plan.used_bytes), (64 << 10, 64 << 10));
            assert_eq!(status.ring_buffer.as_deref(), Some("64Ki"));
        }),
        post(&events_path("shop")).check(|s| {
            assert_eq!(s.body["type"], "Warning");
            assert_eq!(s.body["reason"], "BudgetShort");
        }),
        get(CONFIG_MAP).found(&before.config_map),
        patch(CONFIG_MAP).check(|s| {
            let config = agent_config(&s.body);
            assert_eq!(config.probes[1].ring_bytes, 64 << 10);
            assert_eq!(config.probes[1].sample_every, 8);
        }),
        // Same node selectors: the DaemonSet is read, not rewritten.
        get(DAEMON_SET).found(&before.daemon_set),
    ]);
    let (ctx, _) = context(client, &cluster, Leadership::always());
    reconcile(cluster.probeset("shop", "web"), Arc::clone(&ctx))
        .await
        .unwrap();
    agent::sync(&ctx).await.unwrap();
    assert_eq!(ctx.metrics.writes_of("DaemonSet"), 0);
    drop(ctx);
    server.finish().await;
}

#[tokio::test]
async fn deleting_a_probeset_removes_its_probes_from_the_agents() {
    let web = probeset("shop", "web", 1, WEB);
    let db = probeset("team-b", "db", 1, DB);
    let mut cluster = Cluster::new(vec![web.clone(), db.clone()], NODES, vec![]);
    let before = rendered(&World {
        cluster_probesets: vec![],
        namespaces: vec![],
        namespace_limits: Default::default(),
        probesets: vec![Arc::new(web), Arc::new(db.clone())],
        nodes: vec![],
        slos: vec![],
        node_selector_labels: Default::default(),
    });
    cluster.delete(db);
    let (client, server) = api_server(vec![
        get(CONFIG_MAP).found(&before.config_map),
        patch(CONFIG_MAP).check(|s| {
            assert_eq!(probe_ids(&agent_config(&s.body)), ["shop/web/runq", "shop/web/sys"]);
        }),
        get(DAEMON_SET).found(&before.daemon_set),
        patch(DAEMON_SET).check(|s| {
            assert_eq!(
                affinity_terms(&s.body),
                json!([{"matchExpressions": [{"key": "pool", "operator": "In", "values": ["web"]}]}])
            );
        }),
    ]);
    let (ctx, _) = context(client, &cluster, Leadership::always());
    agent::sync(&ctx).await.unwrap();
    drop(ctx);
    server.finish().await;
}

#[tokio::test]
async fn without_valid_probesets_the_agents_run_nowhere() {
    let cluster = Cluster::new(vec![probeset("shop", "broken", 1, BROKEN)], NODES, vec![]);
    let (client, server) = api_server(vec![
        get(CONFIG_MAP).not_found(),
        patch(CONFIG_MAP).check(|s| assert!(agent_config(&s.body).probes.is_empty())),
        get(DAEMON_SET).not_found(),
        patch(DAEMON_SET).check(|s| {
            assert_eq!(
                affinity_terms(&s.body),
                json!([{"matchExpressions": [
                    {"key": "ringwarden.dev/no-probesets", "operator": "Exists"},
                    {"key": "ringwarden.dev/no-probesets", "operator": "DoesNotExist"}
                ]}])
            );
        }),
    ]);
    let (ctx, _) = context(client, &cluster, Leadership::always());
    agent::sync(&ctx).await.unwrap();
    drop(ctx);
    server.finish().await;
}

#[tokio::test]
async fn a_second_pass_over_an_unchanged_world_writes_nothing() {
    let mut cluster = Cluster::new(vec![probeset("shop", "web", 1, WEB)], NODES, vec![]);
    let (status_tx, status_rx) = oneshot::channel();
    let (client, server) = api_server(vec![
        patch_status(&cluster.probeset("shop", "web")).check(move |s| {
            status_tx.send(s.body["status"].clone()).unwrap();
        }),
        post(&events_path("shop")),
        get(CONFIG_MAP).not_found(),
        patch(CONFIG_MAP),
        get(DAEMON_SET).not_found(),
        patch(DAEMON_SET),
    ]);
    let (ctx, registry) = context(client, &cluster, Leadership::always());
    reconcile(cluster.probeset("shop", "web"), Arc::clone(&ctx))
        .await
        .unwrap();
    agent::sync(&ctx).await.unwrap();

    // The watch brings the written status back.
    let mut ps = (*cluster.probeset("shop", "web")).clone();
    ps.status = Some(serde_json::from_value(status_rx.await.unwrap()).unwrap());
    cluster.apply(ps);
    reconcile(cluster.probeset("shop", "web"), Arc::clone(&ctx))
        .await
        .unwrap();
    agent::sync(&ctx).await.unwrap();

    let writes: u64 = registry
        .gather()
        .iter()
        .filter(|f| f.name() == "ringwarden_operator_writes_total")
        .flat_map(|f| f.get_metric())
        .map(|m| m.get_counter().get_value() as u64)
        .sum();
    assert_eq!(writes, 4, "status, event, ConfigMap, DaemonSet: once each");
    drop(ctx);
    server.finish().await;
}

#[tokio::test]
async fn after_a_restart_objects_already_right_are_only_read() {
    let web = probeset("shop", "web", 1, WEB);
    let cluster = Cluster::new(vec![web.clone()], NODES, vec![]);
    let objects = rendered(&World {
        cluster_probesets: vec![],
        namespaces: vec![],
        namespace_limits: Default::default(),
        probesets: vec![Arc::new(web)],
        nodes: vec![(
            "n1".to_string(),
            [("pool".to_string(), "web".to_string())].into(),
        )],
        slos: vec![],
        node_selector_labels: Default::default(),
    });
    // What the API server returns holds more than was applied: defaults,
    // server-set metadata, status.
    let mut cm = serde_json::to_value(&objects.config_map).unwrap();
    cm["metadata"]["resourceVersion"] = json!("812");
    cm["metadata"]["uid"] = json!("c0ffee");
    let mut ds = serde_json::to_value(&objects.daemon_set).unwrap();
    ds["metadata"]["generation"] = json!(3);
    ds["spec"]["revisionHistoryLimit"] = json!(10);
    ds["spec"]["updateStrategy"] =
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}});
    ds["spec"]["template"]["spec"]["containers"][0]["terminationMessagePath"] =
        json!("/dev/termination-log");
    ds["status"] = json!({"currentNumberScheduled": 1, "desiredNumberScheduled": 1, "numberMisscheduled": 0, "numberReady": 1});
    let (client, server) = api_server(vec![
        get(CONFIG_MAP).reply(200, cm),
        get(DAEMON_SET).reply(200, ds),
    ]);
    let (ctx, _) = context(client, &cluster, Leadership::always());
    agent::sync(&ctx).await.unwrap();
    drop(ctx);
    server.finish().await;
}

#[tokio::test]
async fn a_configmap_edited_by_hand_is_put_back() {
    let web = probeset("shop", "web", 1, WEB);
    let cluster = Cluster::new(vec![web.clone()], NODES, vec![]);
    let objects = rendered(&World {
        cluster_probesets: vec![],
        namespaces: vec![],
        namespace_limits: Default::default(),
        probesets: vec![Arc::new(web)],
        nodes: vec![(
            "n1".to_string(),
            [("pool".to_string(), "web".to_string())].into(),
        )],
        slos: vec![],
        node_selector_labels: Default::default(),
    });
    let mut edited: ConfigMap = objects.config_map.clone();
    edited
        .data
        .as_mut()
        .unwrap()
        .insert(CONFIG_KEY.into(), "probes: []\n".into());
    let (client, server) = api_server(vec![
        get(CONFIG_MAP).found(&edited),
        patch(CONFIG_MAP).check(|s| assert_eq!(agent_config(&s.body).probes.len(), 2)),
        get(DAEMON_SET).found(&objects.daemon_set),
    ]);
    let (ctx, _) = context(client, &cluster, Leadership::always());
    agent::sync(&ctx).await.unwrap();
    drop(ctx);
    server.finish().await;
}

#[tokio::test(start_paused = true)]
async fn a_conflict_on_apply_is_retried_with_backoff_and_loses_nothing() {
    let cluster = Cluster::new(vec![probeset("shop", "web", 1, WEB)], NODES, vec![]);
    // One sync: the ConfigMap conflicts, the DaemonSet is applied anyway.
    let (ds_tx, ds_rx) = oneshot::channel::<Value>();
    let (client, server) = api_server(vec![
        get(CONFIG_MAP).not_found(),
        patch(CONFIG_MAP).conflict(),
        get(DAEMON_SET).not_found(),
        patch(DAEMON_SET).check(move |s| ds_tx.send(s.body.clone()).unwrap()),
    ]);
    let (ctx, _) = context(client, &cluster, Leadership::always());
    let e = agent::sync(&ctx).await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::Apply {
                kind: "ConfigMap",
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(e.metric_label(), "apply_conflict");
    assert_eq!(ctx.metrics.writes_of("DaemonSet"), 1);
    drop(ctx);
    server.finish().await;
    let applied_ds = ds_rx.await.unwrap();

    // The writer loop: the same conflict, a retry after one second.
    let (done, stopped) = oneshot::channel::<()>();
    let started = tokio::time::Instant::now();
    let (client, server) = api_server(vec![
        get(CONFIG_MAP).not_found(),
        patch(CONFIG_MAP).conflict(),
        get(DAEMON_SET).reply(200, applied_ds.clone()),
        get(CONFIG_MAP).not_found().check(move |_| {
            assert!(
                started.elapsed() >= Duration::from_secs(1),
                "retried after a backoff"
            );
        }),
        patch(CONFIG_MAP).check(move |_| done.send(()).unwrap()),
        get(DAEMON_SET).reply(200, applied_ds),
    ]);
    let (ctx, registry) = context(client, &cluster, Leadership::always());
    agent::run(Arc::clone(&ctx), Arc::new(Notify::new()), async {
        let _ = stopped.await;
    })
    .await;
    let errors = registry
        .gather()
        .into_iter()
        .find(|f| f.name() == "ringwarden_operator_reconcile_errors_total")
        .unwrap();
    let m = &errors.get_metric()[0];
    let labels: Vec<_> = m
        .get_label()
        .iter()
        .map(|l| (l.name(), l.value()))
        .collect();
    assert_eq!(
        labels,
        [("controller", "agent"), ("error", "apply_conflict")]
    );
    assert_eq!(m.get_counter().get_value(), 1.0);
    assert_eq!(ctx.metrics.writes_of("ConfigMap"), 1);
    assert_eq!(ctx.metrics.writes_of("DaemonSet"), 0);
    drop(ctx);
    server.finish().await;
}

#[tokio::test]
async fn a_conflict_on_status_requeues_with_growing_backoff() {
    let cluster = Cluster::new(vec![probeset("shop", "web", 1, WEB)], NODES, vec![]);
    let (client, server) = api_server(vec![
        patch_status(&cluster.probeset("shop", "web")).conflict(),
        patch_status(&cluster.probeset("shop", "web")).conflict(),
    ]);
    let (ctx, _) = context(client, &cluster, Leadership::always());
    let ps = cluster.probeset("shop", "web");
    let mut delays = Vec::new();
    for _ in 0..2 {
        let e = reconcile(Arc::clone(&ps), Arc::clone(&ctx))
            .await
            .unwrap_err();
        assert_eq!(e.metric_label(), "status_conflict");
        delays.push(error_policy(Arc::clone(&ps), &e, Arc::clone(&ctx)));
    }
    assert_eq!(
        delays,
        [
            Action::requeue(Duration::from_secs(1)),
            Action::requeue(Duration::from_secs(2))
        ]
    );
    drop(ctx);
    server.finish().await;
}

#[tokio::test]
async fn a_standby_replica_writes_nothing() {
    let cluster = Cluster::new(vec![probeset("shop", "web", 1, WEB)], NODES, vec![]);
    let (client, server) = api_server(vec![]);
    let (ctx, _) = context(client, &cluster, Leadership::follower());
    let action = reconcile(cluster.probeset("shop", "web"), Arc::clone(&ctx))
        .await
        .unwrap();
    assert_eq!(action, Action::await_change());
    agent::sync(&ctx).await.unwrap();
    drop(ctx);
    server.finish().await;
}

#[tokio::test]
async fn a_probeset_no_node_matches_is_not_ready_and_says_why() {
    let cluster = Cluster::new(
        vec![probeset("shop", "web", 1, WEB)],
        &[&[("pool", "db")]],
        vec![],
    );
    let (client, server) = api_server(vec![
        patch_status(&cluster.probeset("shop", "web")).check(|s| {
            let ready = &s.body["status"]["conditions"][0];
            assert_eq!(ready["status"], "False");
            assert_eq!(ready["reason"], "NoMatchingNodes");
            assert_eq!(
                ready["message"],
                "no node has the labels of spec.nodeSelector (pool=web); the probes start when one does"
            );
        }),
        post(&events_path("shop")).check(|s| {
            assert_eq!((s.body["type"].as_str(), s.body["reason"].as_str()), (Some("Warning"), Some("NoMatchingNodes")));
        }),
    ]);
    let (ctx, _) = context(client, &cluster, Leadership::always());
    reconcile(cluster.probeset("shop", "web"), Arc::clone(&ctx))
        .await
        .unwrap();
    drop(ctx);
    server.finish().await;
}

#[tokio::test]
async fn slos_on_a_probe_become_kernel_thresholds_and_tighten_its_plan() {
    let web = probeset(
        "shop",
        "web",
        1,
        &WEB.replace("peakEventRate: 1000", "peakEventRate: 100000")
            .replace(
                "probes:",
                "ringBuffer: {nodeBudget: 64Ki}\nmaxDropRate: 0.5\nprobes:",
            ),
    );
    let fast = slo(
        "shop",
        "checkout-fast",
        "{probeSet: web, probe: sys, series: [read], indicator: {latency: {threshold: 5ms}}, target: 99.9, maxDropRate: 0.001}",
    );
    let elsewhere = slo(
        "other",
        "x",
        "{probeSet: web, probe: sys, indicator: {errors: {}}, target: 99}",
    );
    let cluster = Cluster::new(vec![web], NODES, vec![fast, elsewhere]);
    let (client, server) = api_server(vec![
        get(CONFIG_MAP).not_found(),
        patch(CONFIG_MAP).check(|s| {
            let config = agent_config(&s.body);
            let sys = config.probes.iter().find(|p| p.spec.name == "sys").unwrap();
            assert_eq!(
                serde_json::to_value(&sys.thresholds).unwrap(),
                json!([{"slo": "shop/checkout-fast", "latencyNs": 5_000_000, "errors": false, "series": ["read"]}])
            );
            // 5000 records per 50ms drain period into 64 KiB, which holds
            // 682: 50% drops allowed by the ProbeSet would need 1 in 4, the
            // SLO's 0.1% needs 1 in 8.
            assert_eq!(sys.sample_every, 8);
            let runq = config.probes.iter().find(|p| p.spec.name == "runq").unwrap();
            assert!(runq.thresholds.is_empty());
        }),
        get(DAEMON_SET).not_found(),
        patch(DAEMON_SET),
    ]);
    let (ctx, _) = context(client, &cluster, Leadership::always());
    agent::sync(&ctx).await.unwrap();
    drop(ctx);
    server.finish().await;
}

#[tokio::test]
async fn published_report_figures_and_node_problems_reach_the_status() {
    use ringwarden_operator::reconcile::status::Reported;
    let cluster = Cluster::new(vec![probeset("shop", "web", 1, WEB)], NODES, vec![]);
    let (client, server) = api_server(vec![
        patch_status(&cluster.probeset("shop", "web")).check(|s| {
            let status = &s.body["status"];
            assert_eq!(status["ready"], "0/1");
            assert_eq!(status["eventsPerSecond"], 1230.0);
            assert_eq!(status["dropPercent"], 0.5);
            let degraded = &status["conditions"][3];
            assert_eq!(degraded["type"], "Degraded");
            assert_eq!(degraded["status"], "True");
            assert_eq!(degraded["reason"], "LoadFailed");
            assert_eq!(
                degraded["message"],
                "1 of 1 node: node-0: probe sys: verifier rejected rw_sys_exit"
            );
        }),
        post(&events_path("shop")).check(|s| assert_eq!(s.body["reason"], "Planned")),
        post(&events_path("shop")).check(|s| {
            assert_eq!(s.body["type"], "Warning");
            assert_eq!(s.body["reason"], "LoadFailed");
        }),
    ]);
    let (ctx, _) = context(client, &cluster, Leadership::always());
    let reported = Reported {
        ready: "0/1".into(),
        events_per_second: 1230.0,
        drop_percent: 0.5,
        degraded: Some((
            "LoadFailed",
            "1 of 1 node: node-0: probe sys: verifier rejected rw_sys_exit".into(),
        )),
    };
    assert!(ctx.hub.publish(
        "shop/web",
        reported,
        tokio::time::Instant::now(),
        Duration::from_secs(10)
    ));
    reconcile(cluster.probeset("shop", "web"), Arc::clone(&ctx))
        .await
        .unwrap();
    drop(ctx);
    server.finish().await;
}

#[tokio::test]
async fn the_cluster_name_is_written_into_the_status() {
    let cluster = Cluster::new(vec![probeset("shop", "web", 1, WEB)], NODES, vec![]);
    let (client, server) = api_server(vec![
        patch_status(&cluster.probeset("shop", "web")).check(|s| {
            assert_eq!(s.body["status"]["cluster"], "prod-eu-1");
        }),
        post(&events_path("shop")),
    ]);
    let (ctx, _) = context(client, &cluster, Leadership::always());
    ctx.hub.set_cluster("prod-eu-1");
    reconcile(cluster.probeset("shop", "web"), Arc::clone(&ctx))
        .await
        .unwrap();
    drop(ctx);
    server.finish().await;
}
