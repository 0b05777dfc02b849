//! A ProbeSet whose node selector the API server would refuse in the agent
//! DaemonSet's node affinity (`ValidateNodeSelectorRequirement`: keys are
//! qualified names, values label values) is Invalid and left out; the
//! DaemonSet rendered for everyone else carries only valid requirements.

mod common;

use std::sync::Arc;

use ringwarden_crds::selector::{label_key_problem, label_value_problem};
use ringwarden_operator::{
    config::AgentSettings, reconcile::assess::Assessment, reconcile::render,
    reconcile::world::World,
};

fn world(bad_selectors: &[(&str, &str)]) -> World {
    let mut probesets = vec![Arc::new(common::probeset(
        "shop",
        "good",
        1,
        "nodeSelector: {pool: web, topology.kubernetes.io/zone: eu-west-1a}\nprobes: [{name: sys, kind: syscalls}]",
    ))];
    for (i, (k, v)) in bad_selectors.iter().enumerate() {
        let mut ps = common::probeset(
            "shop",
            &format!("bad-{i}"),
            1,
            "probes: [{name: sys, kind: syscalls}]",
        );
        ps.spec.node_selector.insert((*k).into(), (*v).into());
        probesets.push(Arc::new(ps));
    }
    World {
        cluster_probesets: vec![],
        namespaces: vec![],
        namespace_limits: Default::default(),
        probesets,
        nodes: vec![(
            "n1".to_string(),
            [("pool".to_string(), "web".to_string())].into(),
        )],
        slos: vec![],
        node_selector_labels: Default::default(),
    }
}

#[test]
fn a_selector_the_daemonset_could_not_carry_is_invalid_and_left_out() {
    let bad = [
        ("bad key", "x"),
        ("-leading", "x"),
        ("example.com/", "x"),
        ("UPPER.example.com/name", "x"),
        (&*"k".repeat(64), "x"),
        ("pool", "has space"),
        ("pool", &*"v".repeat(64)),
        ("pool", "-dash"),
    ];
    let w = world(&bad);
    let all = w.assess_all();
    for a in &all {
        match (a.name.as_str(), &a.assessment) {
            ("good", Assessment::Planned(_)) => {}
            ("good", other) => panic!("the good ProbeSet is {other:?}"),
            (name, Assessment::Invalid(why)) => assert!(
                why.iter().any(|w| w.starts_with("spec.nodeSelector")),
                "{name}: {why:?}"
            ),
            (name, _) => panic!("{name} with a bad selector was planned"),
        }
    }
    let objects = render::agent_objects(&all, &AgentSettings::default(), "ringwarden-system")
        .expect("renders");
    let ds = serde_json::to_value(&objects.daemon_set).unwrap();
    let terms = &ds["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"];
    let mut keys = Vec::new();
    for term in terms.as_array().expect("node selector terms") {
        for r in term["matchExpressions"].as_array().unwrap() {
            let key = r["key"].as_str().unwrap();
            assert_eq!(label_key_problem(key), None, "{key}");
            for v in r["values"].as_array().into_iter().flatten() {
                let v = v.as_str().unwrap();
                assert_eq!(label_value_problem(v), None, "{v}");
            }
            keys.push(key.to_owned());
        }
    }
    keys.sort();
    assert_eq!(keys, ["pool", "topology.kubernetes.io/zone"]);
}

#[tokio::test]
async fn a_probeset_left_out_of_a_full_agent_configuration_says_so_and_is_requeued() {
    use common::{Cluster, api_server, context, events_path, patch_status, post};
    use ringwarden_operator::{
        lease::Leadership, reconcile::controller::reconcile, reconcile::world::CONFIG_FULL,
    };

    let cluster = Cluster::new(
        vec![common::probeset(
            "shop",
            "late",
            1,
            "probes: [{name: sys, kind: syscalls}]",
        )],
        &[&[("pool", "web")]],
        vec![],
    );
    let (client, server) = api_server(vec![
        patch_status(&cluster.probeset("shop", "late")).check(|s| {
            let conditions = s.body["status"]["conditions"].as_array().unwrap();
            let invalid = conditions.iter().find(|c| c["type"] == "Invalid").unwrap();
            assert_eq!(invalid["status"], "True");
            assert!(
                invalid["message"].as_str().unwrap().contains(CONFIG_FULL),
                "{invalid}"
            );
            assert!(s.body["status"].get("plan").is_none());
        }),
        post(&events_path("shop")),
    ]);
    let (ctx, _) = context(client, &cluster, Leadership::always());
    let (tx, mut requeued) = tokio::sync::mpsc::unbounded_channel();
    ctx.set_requeue(tx);
    let why = format!("spec.probes: {CONFIG_FULL}: this ProbeSet's 70000 bytes would take it past");
    ctx.set_crowded([("shop/late".to_string(), why)].into());
    let again = requeued
        .try_recv()
        .expect("the ProbeSet is reconciled again");
    assert_eq!(again.name, "late");
    reconcile(cluster.probeset("shop", "late"), Arc::clone(&ctx))
        .await
        .unwrap();
    // Room again: requeued once more, and planned.
    ctx.set_crowded(Default::default());
    assert_eq!(requeued.try_recv().unwrap().name, "late");
    assert!(requeued.try_recv().is_err());
    drop(ctx);
    server.finish().await;
}
