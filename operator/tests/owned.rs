//! Everything the operator creates at run time names the operator's
//! Deployment as its owner, so `helm uninstall` (which deletes the
//! Deployment) leaves nothing behind: asserted on the bodies the mocked
//! API server receives.

mod common;

use std::time::SystemTime;

use common::*;
use k8s_openapi::ByteString;
use ringwarden_operator::ingest::pki::{self, Decision, Source};
use serde_json::json;

const SECRET: &str = "ringwarden-operator-tls";

fn secrets() -> String {
    format!("/api/v1/namespaces/{NAMESPACE}/secrets")
}

fn managed() -> Source {
    Source::Managed {
        secret: SECRET.into(),
        names: pki::service_names("ringwarden-operator", NAMESPACE),
    }
}

#[tokio::test]
async fn the_tls_secret_is_created_owned_by_the_operators_deployment() {
    let (client, server) = api_server(vec![
        get(&format!("{}/{SECRET}", secrets())).not_found(),
        post(&secrets()).check(|s| {
            assert_eq!(s.body["metadata"]["name"], SECRET);
            assert_owned(&s.body);
        }),
    ]);
    pki::load(&client, NAMESPACE, &managed(), Some(&owner()))
        .await
        .unwrap();
    drop(client);
    server.finish().await;
}

#[tokio::test]
async fn a_tls_secret_made_without_an_owner_is_adopted_and_kept() {
    let names = pki::service_names("ringwarden-operator", NAMESPACE);
    let Decision::Write(data, first) = pki::decide(None, &names, SystemTime::now()).unwrap() else {
        panic!("a new Secret is written")
    };
    let data: std::collections::BTreeMap<String, ByteString> = data
        .into_iter()
        .map(|(k, v)| (k, ByteString(v.into_bytes())))
        .collect();
    let existing = k8s_openapi::api::core::v1::Secret {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(SECRET.into()),
            namespace: Some(NAMESPACE.into()),
            resource_version: Some("4".into()),
            ..Default::default()
        },
        data: Some(data.clone()),
        ..Default::default()
    };
    let (client, server) = api_server(vec![
        get(&format!("{}/{SECRET}", secrets())).found(&existing),
        put(&format!("{}/{SECRET}", secrets())).check(move |s| {
            assert_eq!(s.body["metadata"]["resourceVersion"], "4", "conditional");
            assert_owned(&s.body);
            let kept: std::collections::BTreeMap<String, ByteString> =
                serde_json::from_value(s.body["data"].clone()).unwrap();
            assert_eq!(kept, data, "adopting changes no key");
        }),
    ]);
    let pki = pki::load(&client, NAMESPACE, &managed(), Some(&owner()))
        .await
        .unwrap();
    assert_eq!(pki, first);
    drop(client);
    server.finish().await;
}

#[tokio::test]
async fn the_ca_configmap_is_applied_owned_by_the_operators_deployment() {
    let (client, server) = api_server(vec![
        patch(&format!(
            "/api/v1/namespaces/{NAMESPACE}/configmaps/ringwarden-operator-ca"
        ))
        .check(|s| {
            assert_applied(s);
            assert_eq!(s.body["data"], json!({"ca.crt": "PEM"}));
            assert_owned(&s.body);
        }),
    ]);
    pki::publish_ca(
        &client,
        NAMESPACE,
        "ringwarden-operator-ca",
        "PEM",
        Some(&owner()),
    )
    .await
    .unwrap();
    drop(client);
    server.finish().await;
}
