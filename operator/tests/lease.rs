//! Leader election against a mocked API server, on a paused clock.

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use kube::Api;
use prometheus::IntGauge;
use ringwarden_operator::lease::{Elector, Leadership, LeaseSettings};
use serde_json::{Value, json};
use tokio::time::advance;

const LEASE: &str =
    "/apis/coordination.k8s.io/v1/namespaces/ringwarden-system/leases/ringwarden-operator";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/ringwarden-system/leases";

fn lease(holder: Option<&str>, version: &str, transitions: i32) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "ringwarden-operator", "namespace": NAMESPACE, "resourceVersion": version},
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": 15,
            "leaseTransitions": transitions,
            "acquireTime": "2026-01-01T00:00:00.000000Z",
            "renewTime": "2026-01-01T00:00:30.000000Z"
        }
    })
}

fn elector(client: kube::Client) -> (Elector, Leadership, IntGauge) {
    let gauge = IntGauge::new("leader", "leader").unwrap();
    let settings = LeaseSettings {
        name: "ringwarden-operator".into(),
        identity: "operator-0".into(),
        lease_duration: Duration::from_secs(15),
        renew_deadline: Duration::from_secs(10),
        retry_period: Duration::from_secs(2),
        owner: Some(owner()),
    };
    let (e, l) = Elector::new(Api::namespaced(client, NAMESPACE), settings, gauge.clone());
    (e, l, gauge)
}

#[tokio::test(start_paused = true)]
async fn the_first_replica_creates_the_lease_and_leads_until_its_deadline() {
    let (client, server) = api_server(vec![
        get(LEASE).not_found(),
        post(LEASES)
            .check(|s| {
                let spec = &s.body["spec"];
                assert_eq!(s.body["metadata"]["name"], "ringwarden-operator");
                assert_eq!(spec["holderIdentity"], "operator-0");
                assert_eq!(spec["leaseDurationSeconds"], 15);
                assert_eq!(spec["leaseTransitions"], 0);
                assert!(spec["acquireTime"].is_string() && spec["renewTime"].is_string());
                // Uninstalling the operator garbage-collects it.
                assert_owned(&s.body);
            })
            .reply(201, lease(Some("operator-0"), "1", 0)),
    ]);
    let (mut e, leadership, gauge) = elector(client);
    let mut gained = Box::pin(leadership.gained());
    assert!(!leadership.is_leading());
    assert!(e.step().await.unwrap());
    assert!(leadership.is_leading());
    assert_eq!(gauge.get(), 1);
    assert_eq!(gained.next().await, Some(()));
    // Without renewal, writing stops at the renew deadline.
    advance(Duration::from_secs(9)).await;
    assert!(leadership.is_leading());
    advance(Duration::from_secs(2)).await;
    assert!(!leadership.is_leading());
    drop(e);
    server.finish().await;
}

#[tokio::test(start_paused = true)]
async fn a_lease_held_by_another_is_taken_only_once_it_went_unrenewed_for_its_duration() {
    let (client, server) = api_server(vec![
        get(LEASE).reply(200, lease(Some("operator-1"), "7", 2)),
        get(LEASE).reply(200, lease(Some("operator-1"), "7", 2)),
        get(LEASE).reply(200, lease(Some("operator-1"), "7", 2)),
        put(LEASE)
            .check(|s| {
                assert_eq!(
                    s.body["metadata"]["resourceVersion"], "7",
                    "the write is conditional"
                );
                assert_eq!(s.body["spec"]["holderIdentity"], "operator-0");
                assert_eq!(s.body["spec"]["leaseTransitions"], 3);
                assert_ne!(s.body["spec"]["acquireTime"], "2026-01-01T00:00:00.000000Z");
                // A Lease made before the operator had an owner is adopted.
                assert_owned(&s.body);
            })
            .reply(200, lease(Some("operator-0"), "8", 3)),
    ]);
    let (mut e, leadership, _) = elector(client);
    assert!(!e.step().await.unwrap());
    advance(Duration::from_secs(10)).await;
    assert!(!e.step().await.unwrap());
    advance(Duration::from_secs(5)).await;
    assert!(e.step().await.unwrap());
    assert!(leadership.is_leading());
    drop(e);
    server.finish().await;
}

#[tokio::test(start_paused = true)]
async fn a_lease_its_holder_keeps_renewing_is_never_taken() {
    let (client, server) = api_server(vec![
        get(LEASE).reply(200, lease(Some("operator-1"), "7", 0)),
        get(LEASE).reply(200, lease(Some("operator-1"), "8", 0)),
        get(LEASE).reply(200, lease(Some("operator-1"), "9", 0)),
    ]);
    let (mut e, leadership, _) = elector(client);
    for _ in 0..3 {
        assert!(!e.step().await.unwrap());
        advance(Duration::from_secs(14)).await;
    }
    assert!(!leadership.is_leading());
    drop(e);
    server.finish().await;
}

#[tokio::test(start_paused = true)]
async fn losing_the_race_for_a_free_lease_means_following() {
    let (client, server) = api_server(vec![
        get(LEASE).reply(200, lease(None, "3", 1)),
        put(LEASE).conflict(),
    ]);
    let (mut e, leadership, gauge) = elector(client);
    assert!(!e.step().await.unwrap());
    assert!(!leadership.is_leading());
    assert_eq!(gauge.get(), 0);
    drop(e);
    server.finish().await;
}

#[tokio::test(start_paused = true)]
async fn the_leader_renews_and_stops_writing_when_renewals_fail() {
    let (client, server) = api_server(vec![
        get(LEASE).not_found(),
        post(LEASES).reply(201, lease(Some("operator-0"), "1", 0)),
        get(LEASE).reply(200, lease(Some("operator-0"), "1", 0)),
        put(LEASE)
            .check(|s| {
                assert_eq!(
                    s.body["spec"]["leaseTransitions"], 0,
                    "a renewal is no transition"
                );
                assert_eq!(s.body["spec"]["acquireTime"], "2026-01-01T00:00:00.000000Z");
            })
            .reply(200, lease(Some("operator-0"), "2", 0)),
        get(LEASE).reply(
            500,
            json!({"kind": "Status", "code": 500, "message": "etcd is away"}),
        ),
    ]);
    let (mut e, leadership, _) = elector(client);
    assert!(e.step().await.unwrap());
    advance(Duration::from_secs(2)).await;
    assert!(e.step().await.unwrap());
    advance(Duration::from_secs(5)).await;
    assert!(e.step().await.is_err());
    assert!(
        leadership.is_leading(),
        "still within 10s of the last renewal"
    );
    advance(Duration::from_secs(6)).await;
    assert!(!leadership.is_leading());
    drop(e);
    server.finish().await;
}

#[tokio::test(start_paused = true)]
async fn releasing_hands_the_lease_over_at_once() {
    let (client, server) = api_server(vec![
        get(LEASE).not_found(),
        post(LEASES).reply(201, lease(Some("operator-0"), "1", 0)),
        get(LEASE).reply(200, lease(Some("operator-0"), "1", 0)),
        put(LEASE).check(|s| {
            assert!(s.body["spec"].get("holderIdentity").is_none());
            assert_eq!(s.body["spec"]["leaseDurationSeconds"], 1);
            assert_eq!(s.body["metadata"]["resourceVersion"], "1");
        }),
    ]);
    let (mut e, leadership, gauge) = elector(client);
    assert!(e.step().await.unwrap());
    e.release().await.unwrap();
    assert!(!leadership.is_leading());
    assert_eq!(gauge.get(), 0);
    drop(e);
    server.finish().await;
}

#[test]
fn without_election_the_only_replica_always_leads() {
    assert!(Leadership::always().is_leading());
    assert!(!Leadership::follower().is_leading());
}

#[tokio::test]
async fn a_refused_connection_is_logged_as_the_api_server_unreachable_not_as_rbac() {
    // A loopback port nothing listens on: the connection is refused.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = kube::Config::new(format!("http://127.0.0.1:{port}").parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let (mut e, leadership, _) = elector(client);
    let error = e.step().await.unwrap_err();
    assert!(!leadership.is_leading());
    let logged = ringwarden_operator::lease::renewal_failure(&error);
    assert!(
        logged.starts_with("cannot read or renew the leader Lease: cannot reach the API server ("),
        "{logged}"
    );
    assert!(
        logged.contains("Connection refused"),
        "names the error: {logged}"
    );
    for blame in ["RBAC", "permission", "forbidden", "needs get", "Role"] {
        assert!(!logged.contains(blame), "blames {blame}: {logged}");
    }
}

#[tokio::test]
async fn a_forbidden_lease_names_the_missing_permission() {
    let (client, server) = api_server(vec![get(LEASE).reply(
        403,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "reason": "Forbidden", "code": 403,
            "message": "leases.coordination.k8s.io \"ringwarden-operator\" is forbidden: User \"system:serviceaccount:ringwarden-system:ringwarden-operator\" cannot get resource \"leases\""
        }),
    )]);
    let (mut e, _, _) = elector(client);
    let error = e.step().await.unwrap_err();
    let logged = ringwarden_operator::lease::renewal_failure(&error);
    assert!(
        logged.contains("forbidden: the operator's RBAC lacks get, create or update on leases"),
        "{logged}"
    );
    assert!(logged.contains("cannot get resource"), "{logged}");
    drop(e);
    server.finish().await;
}
