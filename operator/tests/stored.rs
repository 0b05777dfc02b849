//! A stored object the operator cannot decode (a value out of range,
//! written before the schema bounded it) against a mocked API server that
//! answers LIST and WATCH: the typed watch would fail as a whole; the
//! operator's watch leaves that one object out, keeps going, and marks it
//! `Invalid` with the field to fix.

mod common;

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use http::{Method, Request, Response};
use kube::{
    Api, Client,
    client::Body,
    runtime::{WatchStreamExt, reflector, watcher},
};
use ringwarden_crds::{ClusterProbeSet, ProbeSet};
use ringwarden_operator::{
    lease::Leadership,
    reconcile::controller,
    reconcile::stored::{self, Stored, Undecodable, UndecodableKinds},
};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};
use tower_test::mock;

/// A kind of stored object the scenarios serve.
#[derive(Clone, Copy)]
struct Kind {
    kind: &'static str,
    plural: &'static str,
    /// `None` for a cluster-scoped kind.
    namespace: Option<&'static str>,
}

const PROBESET: Kind = Kind {
    kind: "ProbeSet",
    plural: "probesets",
    namespace: Some("shop"),
};
const CLUSTER_PROBESET: Kind = Kind {
    kind: "ClusterProbeSet",
    plural: "clusterprobesets",
    namespace: None,
};

impl Kind {
    fn object(self, name: &str, priority: i64, rv: u32) -> Value {
        let mut o = json!({
            "apiVersion": "ringwarden.dev/v1alpha1",
            "kind": self.kind,
            "metadata": {
                "name": name, "uid": format!("uid-{name}"),
                "generation": 1, "resourceVersion": rv.to_string()
            },
            "spec": {"probes": [{"name": "sys", "kind": "syscalls", "priority": priority}]}
        });
        if let Some(ns) = self.namespace {
            o["metadata"]["namespace"] = json!(ns);
        }
        o
    }
}

fn probeset(name: &str, priority: i64, rv: u32) -> Value {
    PROBESET.object(name, priority, rv)
}

const OUT_OF_RANGE: i64 = 3_000_000_000;

/// Serves one LIST of ProbeSets (`good` and `bad`), then one WATCH
/// carrying `events`, then holds further watches open. Status patches are
/// sent to `patches` and echoed.
fn api_server(events: Vec<Value>) -> (Client, mpsc::UnboundedReceiver<(String, Value)>) {
    api_server_of(PROBESET, events)
}

/// As [`api_server`], for objects of `kind`.
fn api_server_of(
    kind: Kind,
    events: Vec<Value>,
) -> (Client, mpsc::UnboundedReceiver<(String, Value)>) {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let (patches_tx, patches) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut watches = 0;
        let mut held = Vec::new();
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let path = parts.uri.path().to_owned();
            let query = parts.uri.query().unwrap_or_default().to_owned();
            let reply = |v: &Value| {
                Response::builder()
                    .status(200)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(v).unwrap()))
                    .unwrap()
            };
            if parts.method == Method::PATCH {
                let body: Value =
                    serde_json::from_slice(&body.collect_bytes().await.unwrap()).unwrap();
                let mut echoed = kind.object("bad", OUT_OF_RANGE, 9);
                echoed["status"] = body["status"].clone();
                send.send_response(reply(&echoed));
                let _ = patches_tx.send((path, body));
            } else if query.contains("watch=true") {
                watches += 1;
                if watches == 1 {
                    let lines: Vec<u8> = events
                        .iter()
                        .flat_map(|e| {
                            let mut l = serde_json::to_vec(e).unwrap();
                            l.push(b'\n');
                            l
                        })
                        .collect();
                    send.send_response(
                        Response::builder()
                            .status(200)
                            .body(Body::from(lines))
                            .unwrap(),
                    );
                } else {
                    // Left unanswered: the watch stays open.
                    held.push(send);
                }
            } else {
                assert_eq!(
                    path,
                    format!("/apis/ringwarden.dev/v1alpha1/{}", kind.plural),
                    "{query}"
                );
                send.send_response(reply(&json!({
                    "apiVersion": "ringwarden.dev/v1alpha1",
                    "kind": format!("{}List", kind.kind),
                    "metadata": {"resourceVersion": "2"},
                    "items": [kind.object("good", 1, 1), kind.object("bad", OUT_OF_RANGE, 2)]
                })));
            }
        }
    });
    (Client::new(service, "default"), patches)
}

/// The operator's decoding watch of `K` into a cache, the objects it could
/// not decode, and what wakes the writer that marks them.
struct Watched<K: kube::Resource<DynamicType = ()> + Clone + 'static> {
    store: reflector::Store<K>,
    undecodable: Undecodable,
    changed: Arc<Notify>,
    driven: tokio::task::JoinHandle<()>,
}

impl<K> Watched<K>
where
    K: kube::Resource<DynamicType = ()>
        + stored::Placeholder
        + stored::Locate
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    fn start(client: &Client) -> Self {
        let (store, writer) = reflector::store::<K>();
        let undecodable = Undecodable::default();
        let changed = Arc::new(Notify::new());
        let events = stored::decoded(
            watcher(
                Api::<Stored<K>>::all(client.clone()),
                watcher::Config::default(),
            ),
            undecodable.clone(),
            {
                let changed = Arc::clone(&changed);
                move |_| changed.notify_one()
            },
        )
        .reflect(writer);
        let driven = tokio::spawn(events.for_each(|e| {
            assert!(e.is_ok(), "the watch failed: {e:?}");
            futures::future::ready(())
        }));
        Self {
            store,
            undecodable,
            changed,
            driven,
        }
    }

    fn names(&self) -> Vec<String> {
        let mut n: Vec<String> = self
            .store
            .state()
            .iter()
            .map(|p| p.meta().name.clone().unwrap())
            .collect();
        n.sort();
        n
    }

    /// Waits until the cache holds `names` and `undecodable` objects are
    /// left out.
    async fn settles_on(&self, names: &[&str], undecodable: usize) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while self.names() != names || self.undecodable.len() != undecodable {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "cache {:?}, undecodable {:?}",
                self.names(),
                self.undecodable.snapshot()
            )
        });
    }
}

/// Runs the writer that marks `kinds`' undecodable objects until the
/// returned sender is dropped or fired.
fn mark_undecodable(
    client: Client,
    kinds: UndecodableKinds,
    changed: &Arc<Notify>,
) -> (
    prometheus::Registry,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let cluster = common::Cluster::new(vec![], &[], vec![]);
    let (ctx, registry) = common::context(client, &cluster, Leadership::always());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let writer = tokio::spawn(controller::mark_undecodable(
        ctx,
        kinds,
        Arc::clone(changed),
        async move {
            let _ = stop_rx.await;
        },
    ));
    (registry, stop_tx, writer)
}

/// A second pass over the same problems writes nothing, and the writes
/// were counted as `metric`.
async fn written_once(
    changed: &Notify,
    patches: &mut mpsc::UnboundedReceiver<(String, Value)>,
    registry: &prometheus::Registry,
    metric: &str,
) {
    changed.notify_one();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(patches.try_recv().is_err());
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    assert!(text.contains(metric), "{text}");
}

#[tokio::test]
async fn a_typed_watch_would_fail_as_a_whole_on_one_bad_object() {
    let (client, _) = api_server(vec![]);
    let mut events = watcher(Api::<ProbeSet>::all(client), watcher::Config::default()).boxed();
    assert!(matches!(
        events.next().await,
        Some(Ok(watcher::Event::Init))
    ));
    // The list fails whole: not even the good object comes through.
    let e = events
        .next()
        .await
        .unwrap()
        .expect_err("the typed list cannot decode the out-of-range priority");
    assert!(matches!(e, watcher::Error::InitialListFailed(_)), "{e}");
}

#[tokio::test]
async fn one_undecodable_object_is_left_out_marked_invalid_and_the_watch_goes_on() {
    let (client, mut patches) = api_server(vec![
        json!({"type": "ADDED", "object": probeset("later", 2, 3)}),
        json!({"type": "MODIFIED", "object": probeset("good", OUT_OF_RANGE, 4)}),
    ]);
    let watched = Watched::<ProbeSet>::start(&client);
    // The good one is cached, then the one added by the watch; the one
    // that broke leaves the cache.
    watched.settles_on(&["later"], 2).await;
    let problems = watched.undecodable.snapshot();
    for p in &problems {
        assert!(
            p.error.starts_with("spec.probes[0].priority: ") && p.error.contains("3000000000"),
            "{}",
            p.error
        );
    }

    // The writer marks both Invalid, naming the field.
    let (registry, stop_tx, writer) = mark_undecodable(
        client,
        UndecodableKinds {
            probesets: watched.undecodable.clone(),
            ..UndecodableKinds::default()
        },
        &watched.changed,
    );
    let mut marked = Vec::new();
    for _ in 0..2 {
        let (path, body) = tokio::time::timeout(Duration::from_secs(10), patches.recv())
            .await
            .expect("a status patch for each undecodable object")
            .unwrap();
        marked.push(path);
        let conditions = body["status"]["conditions"].as_array().unwrap();
        let invalid = conditions.iter().find(|c| c["type"] == "Invalid").unwrap();
        assert_eq!(invalid["status"], "True");
        assert_eq!(invalid["reason"], "Undecodable");
        let message = invalid["message"].as_str().unwrap();
        assert!(message.contains("spec.probes[0].priority"), "{message}");
        assert!(message.contains("re-apply it"), "{message}");
        // Its row says so, and kstatus reads it as Failed.
        assert_eq!(body["status"]["state"], "Invalid: spec");
        assert!(
            conditions
                .iter()
                .any(|c| c["type"] == "Stalled" && c["status"] == "True")
        );
        common::assert_status_valid("ProbeSet", &body["status"]);
    }
    marked.sort();
    assert_eq!(
        marked,
        [
            "/apis/ringwarden.dev/v1alpha1/namespaces/shop/probesets/bad/status",
            "/apis/ringwarden.dev/v1alpha1/namespaces/shop/probesets/good/status"
        ]
    );
    written_once(
        &watched.changed,
        &mut patches,
        &registry,
        "ringwarden_operator_writes_total{kind=\"ProbeSetStatus\"} 2",
    )
    .await;
    let _ = stop_tx.send(());
    writer.await.unwrap();
    watched.driven.abort();
}

#[tokio::test]
async fn an_undecodable_cluster_probeset_is_left_out_and_marked_invalid_cluster_wide() {
    let (client, mut patches) = api_server_of(CLUSTER_PROBESET, vec![]);
    let watched = Watched::<ClusterProbeSet>::start(&client);
    watched.settles_on(&["good"], 1).await;

    let (registry, stop_tx, writer) = mark_undecodable(
        client,
        UndecodableKinds {
            cluster_probesets: watched.undecodable.clone(),
            ..UndecodableKinds::default()
        },
        &watched.changed,
    );
    let (path, body) = tokio::time::timeout(Duration::from_secs(10), patches.recv())
        .await
        .expect("a status patch for the undecodable ClusterProbeSet")
        .unwrap();
    // Cluster-scoped: no namespace in the path.
    assert_eq!(
        path,
        "/apis/ringwarden.dev/v1alpha1/clusterprobesets/bad/status"
    );
    assert_eq!(body["apiVersion"], "ringwarden.dev/v1alpha1");
    assert_eq!(body["kind"], "ClusterProbeSet");
    assert_eq!(body["status"]["observedGeneration"], 1);
    let conditions = body["status"]["conditions"].as_array().unwrap();
    let of = |type_: &str| conditions.iter().find(|c| c["type"] == type_).unwrap();
    assert_eq!(
        (&of("Ready")["status"], &of("Ready")["reason"]),
        (&json!("False"), &json!("Undecodable"))
    );
    let invalid = of("Invalid");
    assert_eq!(invalid["status"], "True");
    assert_eq!(invalid["reason"], "Undecodable");
    let message = invalid["message"].as_str().unwrap();
    assert!(
        message.contains("spec.probes[0].priority") && message.contains("3000000000"),
        "{message}"
    );
    assert!(message.contains("re-apply it"), "{message}");
    common::assert_status_valid("ClusterProbeSet", &body["status"]);

    written_once(
        &watched.changed,
        &mut patches,
        &registry,
        "ringwarden_operator_writes_total{kind=\"ClusterProbeSetStatus\"} 1",
    )
    .await;
    let _ = stop_tx.send(());
    writer.await.unwrap();
    watched.driven.abort();
}
