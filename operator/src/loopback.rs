//! An operator's agent side on a loopback port with the Kubernetes side
//! replaced: watch caches filled by hand and a TokenReview that trusts
//! tokens of the form `agent:<node>`. The real agent service, hub,
//! aggregation and SLO evaluators run behind it. For tests of agents (this
//! crate's, and the node agent's against a real agent process); the
//! operator binary never uses it.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use k8s_openapi::{api::core::v1::Node, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use kube::{
    api::{PartialObjectMeta, PartialObjectMetaExt},
    runtime::{
        reflector::{self, Store, store::Writer},
        watcher,
    },
};
use prometheus::Registry;
use ringwarden_crds::{ProbeSet, Slo};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::{Channel, Endpoint};

use crate::{
    ingest::auth::{Authenticator, BoundPod, PodPlace, Review, Reviewer},
    ingest::grpc::{self, AgentApi, StreamSettings},
    ingest::hub::Hub,
    ingest::reports::Persisted,
    ingest::tls,
    metrics::Metrics,
    reconcile::controller::Stores,
    reconcile::render,
    reconcile::slo::SloTarget,
    reconcile::world::World,
    sim::{self, SimAgent},
};

/// The namespace the loopback operator believes it runs in.
pub const NAMESPACE: &str = "ringwarden-system";
/// The agent ServiceAccount it accepts.
pub const AGENT_ACCOUNT: &str = "ringwarden-agent";

/// Tokens `agent:<node>` belong to the agent ServiceAccount, bound to a pod
/// on `<node>` (the API server names the node); `pod:<node>` too, but the
/// API server names only the pod, `agent-<node>`, which runs on `<node>`;
/// `unbound` to the agent ServiceAccount without a node or pod;
/// `kube:<node>` is the agent's token for the API server's audience;
/// `other` belongs to another ServiceAccount; the rest are forged.
pub struct FakeReview;

impl Reviewer for FakeReview {
    async fn review(&self, token: &str, audience: &str) -> Result<Review, String> {
        let agent = format!("system:serviceaccount:{NAMESPACE}:{AGENT_ACCOUNT}");
        let mut review = Review {
            authenticated: true,
            username: agent,
            audiences: vec![audience.into()],
            ..Review::default()
        };
        match token.split_once(':') {
            Some(("agent", node)) => review.node = Some(node.to_owned()),
            Some(("pod", node)) => {
                review.pod = Some(BoundPod {
                    name: format!("agent-{node}"),
                    uid: format!("uid-{node}"),
                });
            }
            Some(("kube", node)) => {
                review.node = Some(node.to_owned());
                review.audiences = vec!["https://kubernetes.default.svc".into()];
            }
            _ if token == "unbound" => {}
            _ if token == "other" => {
                review.username = "system:serviceaccount:shop:web".to_owned();
                review.node = Some("node-0".into());
            }
            _ => {
                return Ok(Review {
                    error: Some("invalid bearer token".into()),
                    ..Review::default()
                });
            }
        }
        Ok(review)
    }

    async fn pod(&self, namespace: &str, name: &str) -> Result<Option<PodPlace>, String> {
        Ok(name
            .strip_prefix("agent-")
            .filter(|_| namespace == NAMESPACE)
            .map(|node| PodPlace {
                uid: format!("uid-{node}"),
                node: Some(node.to_owned()),
            }))
    }
}

/// Watch caches holding exactly these objects; nodes are
/// `(name, labels)`.
pub fn fixed_stores(
    probesets: Vec<ProbeSet>,
    nodes: &[(&str, &[(&str, &str)])],
    slos: Vec<Slo>,
) -> Stores {
    fixed_stores_with_cluster(probesets, vec![], nodes, slos)
}

/// [`fixed_stores`] with ClusterProbeSets too (and no namespaces).
pub fn fixed_stores_with_cluster(
    probesets: Vec<ProbeSet>,
    cluster_probesets: Vec<ringwarden_crds::ClusterProbeSet>,
    nodes: &[(&str, &[(&str, &str)])],
    slos: Vec<Slo>,
) -> Stores {
    let (probeset_store, mut w) = reflector::store();
    fill(&mut w, probesets);
    let (node_store, mut w) = reflector::store();
    fill(&mut w, nodes.iter().map(|(n, l)| node(n, l)).collect());
    let (slo_store, mut w) = reflector::store();
    fill(&mut w, slos);
    let (cluster_store, mut w) = reflector::store();
    fill(&mut w, cluster_probesets);
    let (_, namespaces) = empty_cluster_scoped();
    Stores {
        probesets: probeset_store,
        nodes: node_store,
        slos: slo_store,
        cluster_probesets: cluster_store,
        namespaces,
    }
}

/// Filled caches of no ClusterProbeSet and no namespace, for tests and
/// tools whose cluster has none.
pub fn empty_cluster_scoped() -> (
    Store<ringwarden_crds::ClusterProbeSet>,
    Store<PartialObjectMeta<k8s_openapi::api::core::v1::Namespace>>,
) {
    let (cps, mut w) = reflector::store();
    fill(&mut w, vec![]);
    let (ns, mut w) = reflector::store();
    fill(&mut w, vec![]);
    (cps, ns)
}

/// Fills a cache as a watch's initial list does.
pub fn fill<K>(writer: &mut Writer<K>, objects: Vec<K>)
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    writer.apply_watcher_event(&watcher::Event::Init);
    for o in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(o));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
}

/// A node's metadata as the operator's node cache holds it.
pub fn node(name: &str, labels: &[(&str, &str)]) -> PartialObjectMeta<Node> {
    ObjectMeta {
        name: Some(name.to_owned()),
        labels: Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Default::default()
    }
    .into_response_partial()
}

/// A leading operator's agent service on `127.0.0.1`.
pub struct LoopbackOperator {
    pub hub: Arc<Hub>,
    pub registry: Registry,
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl LoopbackOperator {
    /// Serves what `stores` hold on a free port; `restore` is what a
    /// previous operator persisted of an SLO.
    pub async fn start(stores: &Stores, restore: Option<Persisted>) -> Self {
        Self::start_on("127.0.0.1:0", stores, restore).await
    }

    /// As [`LoopbackOperator::start`], on `addr` (an operator restarting
    /// on the address its agents know).
    pub async fn start_on(addr: &str, stores: &Stores, restore: Option<Persisted>) -> Self {
        let registry = Registry::new();
        let metrics = Metrics::new(&registry).expect("a fresh registry takes the metrics");
        let hub = Arc::new(Hub::new(stores.clone(), metrics.ingest));
        let world = World {
            probesets: stores.probesets.state(),
            cluster_probesets: stores.cluster_probesets.state(),
            namespaces: vec![],
            namespace_limits: Default::default(),
            nodes: stores
                .nodes
                .state()
                .iter()
                .map(|n| {
                    (
                        n.metadata.name.clone().unwrap_or_default(),
                        n.metadata.labels.clone().unwrap_or_default(),
                    )
                })
                .collect(),
            slos: stores
                .slos
                .state()
                .iter()
                .filter_map(|s| SloTarget::from_slo(s))
                .collect(),
            node_selector_labels: Default::default(),
        };
        hub.set_config(&render::agent_config(&world.assess_all(), 0));
        let now = SystemTime::now();
        if let Some(p) = restore {
            let (defs, _) = hub.slo_defs();
            let def = defs
                .into_iter()
                .find(|d| d.id == p.slo)
                .expect("the persisted SLO exists");
            hub.reports()
                .restore_slo(def, p)
                .expect("the persisted state restores");
        }
        hub.sync_slos(now);
        hub.start_serving(now);
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("binding {addr}: {e}"));
        let addr = listener
            .local_addr()
            .expect("a bound socket has an address");
        let auth = Authenticator::new(FakeReview, "ringwarden", NAMESPACE, AGENT_ACCOUNT);
        let api = AgentApi::new(Arc::clone(&hub), auth, StreamSettings::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let (_, serving) = test_pki();
        let store = tls::CertStore::new(serving).expect("the test certificate loads");
        let transport = grpc::Transport::Tls(tls::Serving::new(
            tls::server_config(store).expect("a TLS server configuration"),
            tls::Limits::default(),
        ));
        let task = tokio::spawn(grpc::serve_agents(listener, api, transport, async {
            let _ = stopped.await;
        }));
        Self {
            hub,
            registry,
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The agent service's URL (TLS; the certificate names `localhost`).
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    /// The CA every loopback operator's certificate chains to (PEM).
    pub fn ca_pem() -> String {
        test_pki().0.cert.clone()
    }

    /// A channel that trusts only [`LoopbackOperator::ca_pem`], as agents do.
    pub async fn channel(&self) -> Channel {
        Endpoint::from_shared(self.url())
            .expect("a loopback URL")
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(Self::ca_pem()))
                    .domain_name("localhost"),
            )
            .expect("TLS settings")
            .connect()
            .await
            .expect("the loopback operator accepts connections")
    }

    /// Connects `agent` with its node's token and takes its configuration.
    pub async fn connect(&self, agent: &mut SimAgent) -> sim::Connection {
        let token = format!("agent:{}", agent.node);
        let mut c = sim::connect(self.channel().await, Some(&token), agent.hello())
            .await
            .expect("the loopback operator accepts agent tokens");
        if agent.config_version.is_empty() {
            c.until_config(agent)
                .await
                .expect("a configuration is pushed on connect");
        }
        c
    }

    /// (good, total) the SLO `namespace/name` counted.
    pub fn counted(&self, slo: &str) -> (u64, u64) {
        let s = self
            .hub
            .reports()
            .evaluate(slo, SystemTime::now())
            .expect("the SLO is known");
        (s.counts.good, s.counts.total)
    }

    /// A counter's or gauge's value, summed over series with `label` as
    /// one of their label values (any series if empty).
    pub fn metric(&self, name: &str, label: &str) -> f64 {
        self.registry
            .gather()
            .iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric())
            .filter(|m| m.get_label().iter().any(|l| l.value() == label) || label.is_empty())
            // One of the two is set, the other reads 0.
            .map(|m| m.get_counter().get_value() + m.get_gauge().get_value())
            .sum()
    }

    /// `/metrics` as Prometheus reads it.
    pub fn text(&self) -> String {
        let mut out = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &self.registry.gather(),
            &mut out,
        )
        .expect("text encoding of gathered metrics");
        String::from_utf8(out).expect("the text format is UTF-8")
    }

    /// Stops like a replica losing leadership and then its process.
    pub async fn stop(mut self) {
        self.hub.stop_serving();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("the server stops once its streams ended")
                .expect("the server task does not panic")
                .expect("the server ends cleanly");
        }
    }
}

/// One CA and one `localhost` certificate for every loopback operator of
/// a test process: (CA, serving).
fn test_pki() -> &'static (tls::Pem, tls::Pem) {
    static PKI: std::sync::OnceLock<(tls::Pem, tls::Pem)> = std::sync::OnceLock::new();
    PKI.get_or_init(|| {
        let now = SystemTime::now();
        let ca = tls::new_ca(now).expect("a test CA");
        let serving = tls::issue(&ca.key, &["localhost".to_string()], now)
            .expect("a test certificate")
            .pem;
        (ca, serving)
    })
}
