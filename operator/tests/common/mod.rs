//! Test fixtures: a mocked API server that plays a scripted scenario and
//! records every request, and a cluster of watch caches filled by hand.
#![allow(dead_code)]

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use http::{Method, Request, Response};
use k8s_openapi::api::core::v1::Node;
use kube::{
    Client,
    api::PartialObjectMeta,
    client::Body,
    runtime::{
        reflector::{self, store::Writer},
        watcher,
    },
};
use prometheus::Registry;
use ringwarden_crds::{ProbeSet, ProbeSetSpec, Slo, SloSpec};
use ringwarden_operator::{
    config::AgentSettings,
    lease::Leadership,
    metrics::Metrics,
    reconcile::controller::{Context, Stores},
};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tower_test::mock::{self, Handle};

/// The CRD schemas and their CEL rules, as the crds tests check them.
#[path = "../../../crds/tests/common/mod.rs"]
pub mod crd_schema;

/// Asserts that `status` is what the CRD's status schema (structural and
/// CEL) admits for `kind`: the API server refuses the whole status patch
/// otherwise.
pub fn assert_status_valid(kind: &str, status: &Value) {
    let schema = crd_schema::schema(kind)["properties"]["status"].clone();
    assert!(!schema.is_null(), "{kind} has a status schema");
    let draft4 = crd_schema::draft4_of(&schema);
    let validator = jsonschema::draft4::new(&draft4).expect("the status schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(status)
        .map(|e| {
            format!(
                "status{}: {e}",
                crd_schema::dotted(e.instance_path().as_str())
            )
        })
        .collect();
    assert!(
        errors.is_empty(),
        "{kind} status refused: {errors:#?}\n{status:#}"
    );
    let refused: Vec<String> = crd_schema::evaluate_at(&schema, status)
        .into_iter()
        .filter(|o| !o.admits())
        .map(|o| format!("{} at {}: {:?}", o.message, o.at, o.result))
        .collect();
    assert!(
        refused.is_empty(),
        "{kind} status refused by CEL: {refused:#?}"
    );
}

pub const NAMESPACE: &str = "ringwarden-system";

/// A request as the API server saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub content_type: Option<String>,
    pub body: Value,
}

enum Reply {
    Json(u16, Value),
    Echo,
    /// The object with the requested status, as a status patch returns.
    WithStatus(Value),
}

/// Assertions on one request.
type Check = Box<dyn FnOnce(&Seen) + Send>;

/// One expected request and the answer to it.
pub struct Exchange {
    method: Method,
    path: String,
    reply: Reply,
    check: Option<Check>,
}

fn exchange(method: Method, path: &str) -> Exchange {
    Exchange {
        method,
        path: path.into(),
        reply: Reply::Echo,
        check: None,
    }
}

pub fn get(path: &str) -> Exchange {
    exchange(Method::GET, path)
}
pub fn patch(path: &str) -> Exchange {
    exchange(Method::PATCH, path)
}
pub fn post(path: &str) -> Exchange {
    exchange(Method::POST, path)
}
pub fn put(path: &str) -> Exchange {
    exchange(Method::PUT, path)
}
pub fn delete(path: &str) -> Exchange {
    exchange(Method::DELETE, path)
}

/// A status write of `ps`, answered with `ps` carrying the new status.
pub fn patch_status(ps: &ProbeSet) -> Exchange {
    let mut e = exchange(
        Method::PATCH,
        &status_path(
            ps.metadata.namespace.as_deref().unwrap(),
            ps.metadata.name.as_deref().unwrap(),
        ),
    );
    e.reply = Reply::WithStatus(serde_json::to_value(ps).unwrap());
    e
}

impl Exchange {
    /// Answers with `status` and `body`.
    pub fn reply(mut self, status: u16, body: Value) -> Self {
        self.reply = Reply::Json(status, body);
        self
    }
    /// Answers 200 with the object found.
    pub fn found(self, body: impl serde::Serialize) -> Self {
        self.reply(200, serde_json::to_value(body).unwrap())
    }
    pub fn not_found(self) -> Self {
        self.reply(404, failure(404, "NotFound", "not found"))
    }
    pub fn conflict(self) -> Self {
        self.reply(
            409,
            failure(
                409,
                "Conflict",
                "the object has been modified; please apply your changes to the latest version",
            ),
        )
    }
    /// Answers 200 with the request's own body (the default).
    pub fn echo(mut self) -> Self {
        self.reply = Reply::Echo;
        self
    }
    /// Runs assertions on the request.
    pub fn check(mut self, f: impl FnOnce(&Seen) + Send + 'static) -> Self {
        self.check = Some(Box::new(f));
        self
    }
}

fn failure(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code
    })
}

/// The mocked API server of one test.
pub struct ApiServer {
    task: JoinHandle<(Vec<Seen>, Vec<Seen>)>,
}

/// A client talking to a mocked API server that expects `exchanges` in
/// order, then answers anything else with 500 and records it as
/// unexpected.
pub fn api_server(exchanges: Vec<Exchange>) -> (Client, ApiServer) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let task = tokio::spawn(serve(handle, exchanges));
    (Client::new(service, "default"), ApiServer { task })
}

async fn serve(
    mut handle: Handle<Request<Body>, Response<Body>>,
    exchanges: Vec<Exchange>,
) -> (Vec<Seen>, Vec<Seen>) {
    let mut seen = Vec::new();
    for (i, exp) in exchanges.into_iter().enumerate() {
        let Some((request, send)) = handle.next_request().await else {
            panic!(
                "request {i} ({} {}) never came; the operator made only {i} requests",
                exp.method, exp.path
            );
        };
        let s = read(request).await;
        assert_eq!(
            (&s.method, s.path.as_str()),
            (&exp.method, exp.path.as_str()),
            "request {i} differs from the scenario"
        );
        if let Some(check) = exp.check {
            check(&s);
        }
        let (status, body) = match exp.reply {
            Reply::Json(status, body) => (status, body),
            Reply::Echo => (200, s.body.clone()),
            Reply::WithStatus(mut object) => {
                object["status"] = s.body["status"].clone();
                (200, object)
            }
        };
        send.send_response(
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap(),
        );
        seen.push(s);
    }
    let mut unexpected = Vec::new();
    while let Some((request, send)) = handle.next_request().await {
        unexpected.push(read(request).await);
        send.send_response(
            Response::builder()
                .status(500)
                .body(Body::from(
                    serde_json::to_vec(&failure(500, "InternalError", "unexpected request"))
                        .unwrap(),
                ))
                .unwrap(),
        );
    }
    (seen, unexpected)
}

async fn read(request: Request<Body>) -> Seen {
    let (parts, body) = request.into_parts();
    let bytes = body.collect_bytes().await.unwrap();
    let query = parts
        .uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect();
    Seen {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query,
        content_type: parts
            .headers
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned()),
        body: if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        },
    }
}

impl ApiServer {
    /// Every request the scenario expected, in order. Fails if some were
    /// missing or others came. Every client must be dropped first.
    pub async fn finish(self) -> Vec<Seen> {
        let joined = tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("the mocked API server still has clients: drop the context first");
        let (seen, unexpected) = match joined {
            Ok(r) => r,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        let unexpected: Vec<String> = unexpected
            .iter()
            .map(|s| format!("{} {} {}", s.method, s.path, s.body))
            .collect();
        assert!(
            unexpected.is_empty(),
            "unexpected requests: {unexpected:#?}"
        );
        seen
    }
}

/// Asserts a request was a server-side apply with the operator's field
/// manager, forcing ownership.
pub fn assert_applied(s: &Seen) {
    assert_eq!(s.method, Method::PATCH);
    assert_eq!(
        s.content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    assert_eq!(
        s.query.get("fieldManager").map(String::as_str),
        Some("ringwarden-operator")
    );
    assert_eq!(s.query.get("force").map(String::as_str), Some("true"));
}

/// The watch caches of a test cluster, filled and changed by hand.
pub struct Cluster {
    probesets: Writer<ProbeSet>,
    nodes: Writer<PartialObjectMeta<Node>>,
    slos: Writer<Slo>,
    pub stores: Stores,
}

impl Cluster {
    pub fn new(probesets: Vec<ProbeSet>, nodes: &[&[(&str, &str)]], slos: Vec<Slo>) -> Self {
        let (ps_store, mut ps_writer) = reflector::store();
        let (node_store, mut node_writer) = reflector::store();
        let (slo_store, mut slo_writer) = reflector::store();
        ringwarden_operator::loopback::fill(&mut ps_writer, probesets);
        ringwarden_operator::loopback::fill(
            &mut node_writer,
            nodes.iter().enumerate().map(|(i, l)| node(i, l)).collect(),
        );
        ringwarden_operator::loopback::fill(&mut slo_writer, slos);
        Self {
            probesets: ps_writer,
            nodes: node_writer,
            slos: slo_writer,
            stores: {
                let (cluster_probesets, namespaces) =
                    ringwarden_operator::loopback::empty_cluster_scoped();
                Stores {
                    probesets: ps_store,
                    nodes: node_store,
                    slos: slo_store,
                    cluster_probesets,
                    namespaces,
                }
            },
        }
    }

    /// Adds or replaces a ProbeSet, as a watch event would.
    pub fn apply(&mut self, ps: ProbeSet) {
        self.probesets
            .apply_watcher_event(&watcher::Event::Apply(ps));
    }

    pub fn delete(&mut self, ps: ProbeSet) {
        self.probesets
            .apply_watcher_event(&watcher::Event::Delete(ps));
    }

    pub fn apply_slo(&mut self, slo: Slo) {
        self.slos.apply_watcher_event(&watcher::Event::Apply(slo));
    }

    /// The ProbeSet as the cache holds it now.
    pub fn probeset(&self, namespace: &str, name: &str) -> Arc<ProbeSet> {
        self.stores
            .probesets
            .get(&reflector::ObjectRef::new(name).within(namespace))
            .expect("the ProbeSet is in the cache")
    }
}

fn node(i: usize, labels: &[(&str, &str)]) -> PartialObjectMeta<Node> {
    ringwarden_operator::loopback::node(&format!("node-{i}"), labels)
}

/// A context over `cluster` and a client of the mocked API server; the
/// registry holds its metrics.
pub fn context(
    client: Client,
    cluster: &Cluster,
    leadership: Leadership,
) -> (Arc<Context>, Registry) {
    context_with(client, cluster, leadership, AgentSettings::default())
}

/// The operator's Deployment as `--owner-deployment` resolves it.
pub fn owner() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
        api_version: "apps/v1".into(),
        kind: "Deployment".into(),
        name: "ringwarden-operator".into(),
        uid: "d5f0c2a4-0000-4000-8000-000000000001".into(),
        controller: Some(false),
        block_owner_deletion: Some(false),
    }
}

/// Asserts `body` (an object) is owned by [`owner`] alone.
pub fn assert_owned(body: &Value) {
    assert_eq!(
        body["metadata"]["ownerReferences"],
        serde_json::json!([serde_json::to_value(owner()).unwrap()]),
        "owned by the operator's Deployment: {body}"
    );
}

/// [`context`] with agent settings `agent`.
pub fn context_with(
    client: Client,
    cluster: &Cluster,
    leadership: Leadership,
    agent: AgentSettings,
) -> (Arc<Context>, Registry) {
    let registry = Registry::new();
    let metrics = Metrics::new(&registry).unwrap();
    let ctx = Context::new(
        client,
        NAMESPACE.into(),
        agent,
        cluster.stores.clone(),
        leadership,
        metrics,
        "operator-0".into(),
    );
    (Arc::new(ctx), registry)
}

/// A ProbeSet from its spec in YAML.
pub fn probeset(namespace: &str, name: &str, generation: i64, spec: &str) -> ProbeSet {
    let spec: ProbeSetSpec = serde_yaml_ng::from_str(spec).unwrap();
    let mut ps = ProbeSet::new(name, spec);
    ps.metadata.namespace = Some(namespace.into());
    ps.metadata.generation = Some(generation);
    ps.metadata.uid = Some(format!("uid-{namespace}-{name}"));
    ps.metadata.resource_version = Some(format!("{generation}"));
    ps
}

/// An SLO from its spec in YAML.
pub fn slo(namespace: &str, name: &str, spec: &str) -> Slo {
    let spec: SloSpec = serde_yaml_ng::from_str(spec).unwrap();
    let mut slo = Slo::new(name, spec);
    slo.metadata.namespace = Some(namespace.into());
    slo
}

pub const CONFIG_MAP: &str =
    "/api/v1/namespaces/ringwarden-system/configmaps/ringwarden-agent-config";
pub const DAEMON_SET: &str =
    "/apis/apps/v1/namespaces/ringwarden-system/daemonsets/ringwarden-agent";

pub fn status_path(namespace: &str, name: &str) -> String {
    format!("/apis/ringwarden.dev/v1alpha1/namespaces/{namespace}/probesets/{name}/status")
}

pub fn events_path(namespace: &str) -> String {
    format!("/apis/events.k8s.io/v1/namespaces/{namespace}/events")
}
