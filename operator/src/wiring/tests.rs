//! The wired operator against a fake API server: leadership, writes, the
//! Lease, and a connection flood.

use std::sync::Mutex;

use clap::Parser;
use http::{Request, Response};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{api::PartialObjectMetaExt, client::Body};
use serde_json::{Value, json};
use tower_test::mock::{self, Handle};

use super::*;

/// What the fake API server was sent: (method and path, body).
type Bodies = Arc<Mutex<Vec<(String, Value)>>>;

/// An API server holding one ProbeSet, an SLO on it, a ClusterProbeSet
/// selecting the namespace `shop`, that namespace and one node: lists
/// answer with them, watches never answer, the Lease is kept, other
/// writes are echoed (and their bodies kept in `bodies`).
async fn fake_api_server(
    mut handle: Handle<Request<Body>, Response<Body>>,
    log: Arc<Mutex<Vec<String>>>,
    bodies: Bodies,
) {
    let probeset = json!({
        "apiVersion": "ringwarden.dev/v1alpha1", "kind": "ProbeSet",
        "metadata": {"name": "web", "namespace": "shop", "generation": 1, "resourceVersion": "5", "uid": "u1"},
        "spec": {"nodeSelector": {"pool": "web"}, "probes": [{"name": "sys", "kind": "syscalls"}]}
    });
    let slo = json!({
        "apiVersion": "ringwarden.dev/v1alpha1", "kind": "SLO",
        "metadata": {"name": "fast", "namespace": "shop", "generation": 1, "resourceVersion": "6", "uid": "u2"},
        "spec": {"probeSet": "web", "probe": "sys", "indicator": {"errors": {}}, "target": 99.0}
    });
    let cluster_probeset = json!({
        "apiVersion": "ringwarden.dev/v1alpha1", "kind": "ClusterProbeSet",
        "metadata": {"name": "retail", "generation": 1, "resourceVersion": "7", "uid": "u3"},
        "spec": {"namespaceSelector": {"matchLabels": {"team": "retail"}},
                 "nodeSelector": {"pool": "web"}, "probes": [{"name": "sys", "kind": "syscalls"}]}
    });
    let list = |kind: &str, items: Vec<Value>| json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": "10"}, "items": items});
    let lease_path = "/apis/coordination.k8s.io/v1/namespaces/ringwarden-system/leases";
    let mut lease: Option<Value> = None;
    let mut watches = Vec::new();
    while let Some((request, send)) = handle.next_request().await {
        let (parts, body) = request.into_parts();
        let body: Value =
            serde_json::from_slice(&body.collect_bytes().await.unwrap()).unwrap_or(Value::Null);
        let (method, path) = (parts.method.as_str(), parts.uri.path());
        let query = parts.uri.query().unwrap_or_default();
        if query.contains("watch=true") {
            watches.push(send);
            continue;
        }
        log.lock().unwrap().push(format!("{method} {path}"));
        if method != "GET" {
            bodies
                .lock()
                .unwrap()
                .push((format!("{method} {path}"), body.clone()));
        }
        let (status, reply) = match (method, path) {
            ("GET", "/apis/ringwarden.dev/v1alpha1/probesets") => {
                (200, list("ProbeSetList", vec![probeset.clone()]))
            }
            ("GET", "/apis/ringwarden.dev/v1alpha1/slos") => {
                (200, list("SLOList", vec![slo.clone()]))
            }
            ("GET", "/apis/ringwarden.dev/v1alpha1/clusterprobesets") => (
                200,
                list("ClusterProbeSetList", vec![cluster_probeset.clone()]),
            ),
            ("GET", "/api/v1/namespaces") => (
                200,
                list(
                    "PartialObjectMetadataList",
                    vec![
                        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                                "metadata": {"name": "shop", "labels": {"team": "retail"}}}),
                        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                                "metadata": {"name": "kube-system"}}),
                    ],
                ),
            ),
            ("GET", "/api/v1/nodes") => (
                200,
                list(
                    "PartialObjectMetadataList",
                    vec![
                        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                                "metadata": {"name": "n1", "labels": {"pool": "web"}}}),
                    ],
                ),
            ),
            ("POST", p) if p == lease_path => {
                let mut created = body;
                created["metadata"]["resourceVersion"] = json!("1");
                lease = Some(created.clone());
                (201, created)
            }
            ("GET", p) if p.starts_with(lease_path) && lease.is_some() => {
                (200, lease.clone().unwrap())
            }
            ("GET", _) => (
                404,
                json!({"kind": "Status", "code": 404, "reason": "NotFound"}),
            ),
            ("POST", "/apis/authentication.k8s.io/v1/tokenreviews") => {
                // Every token is the agent of node n1.
                let mut review = body;
                review["status"] = json!({
                    "authenticated": true,
                    "audiences": [ringwarden_proto::TOKEN_AUDIENCE],
                    "user": {
                        "username": "system:serviceaccount:ringwarden-system:ringwarden-agent",
                        "extra": {(crate::ingest::auth::NODE_NAME_EXTRA): ["n1"]}
                    }
                });
                (201, review)
            }
            ("PATCH", p) if p.ends_with("/status") => {
                let mut object = if p.contains("/slos/") {
                    slo.clone()
                } else if p.contains("/clusterprobesets/") {
                    cluster_probeset.clone()
                } else {
                    probeset.clone()
                };
                object["status"] = body["status"].clone();
                (200, object)
            }
            _ => (200, body),
        };
        send.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap(),
        );
    }
}

/// Connections that flood the agent port — silent, garbage, or TLS
/// handshakes from many addresses — run on the ingest thread: the
/// Lease keeps being renewed on time and a real agent is still served.
#[tokio::test]
async fn a_connection_flood_neither_delays_the_lease_nor_shuts_out_agents() {
    use crate::ingest::tls;
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let log = Arc::new(Mutex::new(Vec::new()));
    let bodies = Bodies::default();
    let api = tokio::spawn(fake_api_server(
        handle,
        Arc::clone(&log),
        Arc::clone(&bodies),
    ));
    let args = Args::try_parse_from([
        "ringwarden-operator",
        "--identity",
        "operator-0",
        "--metrics-addr",
        "127.0.0.1:0",
        "--agent-addr",
        "127.0.0.1:0",
        "--query-addr",
        "127.0.0.1:0",
        "--retry-period",
        "100ms",
        "--renew-deadline",
        "1s",
        "--lease-duration",
        "2s",
    ])
    .unwrap();
    let listeners = Listeners::bind(&args).await.unwrap();
    let port = listeners.agents.local_addr().unwrap().port();
    let now = std::time::SystemTime::now();
    let ca = tls::new_ca(now).unwrap();
    let issued = tls::issue(&ca.key, &["localhost".to_string()], now).unwrap();
    let store = tls::CertStore::new(&issued.pem).unwrap();
    let serving = tls::Serving::new(tls::server_config(store).unwrap(), tls::Limits::default());
    let refused = serving.refused.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let client = Client::new(service, "default");
    let operator = tokio::spawn(async move {
        serve(
            &args,
            OperatorConfig::default(),
            client,
            listeners,
            Transport::Tls(serving),
            async {
                let _ = stopped.await;
            },
        )
        .await;
    });
    let lease_writes = {
        let log = Arc::clone(&log);
        move || {
            log.lock()
                .unwrap()
                .iter()
                .filter(|l| l.contains("/leases") && !l.starts_with("GET"))
                .count()
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while lease_writes() < 2 {
        assert!(std::time::Instant::now() < deadline, "never led");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The flood, from a thread of its own: 64 clients at a time from
    // 64 loopback addresses, each connecting, sending garbage or half
    // a handshake, and going.
    let flooding = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flood = std::thread::spawn({
        let flooding = Arc::clone(&flooding);
        move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut tasks = Vec::new();
                for i in 0..64u32 {
                    let flooding = Arc::clone(&flooding);
                    tasks.push(tokio::spawn(async move {
                        let mut n = 0u64;
                        while flooding.load(std::sync::atomic::Ordering::Relaxed) {
                            let socket = tokio::net::TcpSocket::new_v4().unwrap();
                            let from = format!("127.0.3.{}:0", 1 + i);
                            socket.bind(from.parse().unwrap()).unwrap();
                            let to = format!("127.0.0.1:{port}").parse().unwrap();
                            if let Ok(mut c) = socket.connect(to).await {
                                use tokio::io::AsyncWriteExt;
                                // A ClientHello header, then garbage.
                                let _ = c.write_all(&[0x16, 0x03, 0x01, 0x40, 0x00]).await;
                                let _ = c.write_all(&[0xAB; 512]).await;
                                n += 1;
                            }
                        }
                        n
                    }));
                }
                let mut total = 0;
                for t in tasks {
                    total += t.await.unwrap();
                }
                total
            })
        }
    });

    // Meanwhile: the Lease is renewed every retry period, never late
    // by the renew deadline, and an agent connects and reports.
    let started = std::time::Instant::now();
    let mut last = (lease_writes(), std::time::Instant::now());
    let mut longest = Duration::ZERO;
    let mut agent = crate::sim::SimAgent::new(
        "n1",
        "boot-1",
        vec![crate::ingest::reports::ProbeRef {
            namespace: "shop".into(),
            probeset: "web".into(),
            probe: "sys".into(),
        }],
    );
    let served = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("https://localhost:{port}"))
            .unwrap()
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(ca.cert.clone()))
                    .domain_name("localhost"),
            )
            .unwrap()
            .connect()
            .await
            .expect("the agent reaches the operator during the flood");
        let mut c = crate::sim::connect(channel, Some("token"), agent.hello())
            .await
            .expect("the agent is let in");
        c.until_config(&mut agent).await.unwrap();
        let report = agent.report(1);
        c.report(&mut agent, report).await.unwrap();
    };
    tokio::pin!(served);
    let mut agent_done = false;
    while started.elapsed() < Duration::from_secs(4) {
        tokio::select! {
            () = &mut served, if !agent_done => agent_done = true,
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        let n = lease_writes();
        if n > last.0 {
            longest = longest.max(last.1.elapsed());
            last = (n, std::time::Instant::now());
        }
    }
    flooding.store(false, std::sync::atomic::Ordering::Relaxed);
    let flooded = flood.join().unwrap();
    eprintln!("flood: {flooded} connections, longest Lease gap {longest:?}");
    assert!(agent_done, "the agent was not served during the flood");
    longest = longest.max(last.1.elapsed());
    assert!(
        longest < Duration::from_secs(1),
        "the Lease went {longest:?} without renewal (renew deadline 1s) while {flooded} \
         connections flooded the agent port"
    );
    let refusals: u64 = [
        "handshake_failed",
        "per_address",
        "handshakes",
        "handshake_timeout",
    ]
    .iter()
    .map(|r| refused.with_label_values(&[r]).get())
    .sum();
    assert!(
        flooded > 100 && refusals > 0,
        "flooded {flooded}, refused {refusals}"
    );
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(20), operator).await;
    api.abort();
}

#[tokio::test]
async fn the_wired_operator_leads_writes_once_and_releases_its_lease_last() {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let log = Arc::new(Mutex::new(Vec::new()));
    let bodies = Bodies::default();
    let api = tokio::spawn(fake_api_server(
        handle,
        Arc::clone(&log),
        Arc::clone(&bodies),
    ));
    let args = Args::try_parse_from([
        "ringwarden-operator",
        "--identity",
        "operator-0",
        "--metrics-addr",
        "127.0.0.1:0",
        "--agent-addr",
        "127.0.0.1:0",
        "--query-addr",
        "127.0.0.1:0",
    ])
    .unwrap();
    let listeners = Listeners::bind(&args).await.unwrap();
    let written = {
        let log = Arc::clone(&log);
        move |what: &str| log.lock().unwrap().iter().any(|l| l == what)
    };
    let done = {
        let written = written.clone();
        async move {
            let snapshot = format!(
                "PATCH /api/v1/namespaces/ringwarden-system/configmaps/{}",
                crate::ingest::publish::snapshot_name("shop/fast")
            );
            while !(written(
                "PATCH /apis/apps/v1/namespaces/ringwarden-system/daemonsets/ringwarden-agent",
            ) && written(
                "PATCH /apis/ringwarden.dev/v1alpha1/namespaces/shop/probesets/web/status",
            ) && written(CLUSTER_STATUS)
                && written(&snapshot))
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let client = Client::new(service, "default");
    tokio::time::timeout(
        Duration::from_secs(20),
        serve(
            &args,
            OperatorConfig::default(),
            client,
            listeners,
            Transport::Plaintext,
            done,
        ),
    )
    .await
    .expect("the operator wrote its objects and stopped");
    api.abort();
    let log = log.lock().unwrap().clone();
    let writes: Vec<&str> = log
        .iter()
        .map(String::as_str)
        .filter(|l| !l.starts_with("GET"))
        .collect();
    let lease = "/apis/coordination.k8s.io/v1/namespaces/ringwarden-system/leases";
    assert_eq!(
        writes.first(),
        Some(&format!("POST {lease}").as_str()),
        "{log:#?}"
    );
    // Released after everything else, SLO snapshots included: a
    // successor never restores older state than this replica saved.
    assert_eq!(
        writes.last(),
        Some(&format!("PUT {lease}/ringwarden-operator").as_str()),
        "the Lease is released last: {log:#?}"
    );
    assert!(
        writes
            .iter()
            .any(|w| w.contains("/configmaps/ringwarden-slo-")),
        "{log:#?}"
    );
    for once in [
        "PATCH /api/v1/namespaces/ringwarden-system/configmaps/ringwarden-agent-config",
        "PATCH /apis/apps/v1/namespaces/ringwarden-system/daemonsets/ringwarden-agent",
        "PATCH /apis/ringwarden.dev/v1alpha1/namespaces/shop/probesets/web/status",
        "POST /apis/events.k8s.io/v1/namespaces/shop/events",
        CLUSTER_STATUS,
    ] {
        assert_eq!(
            writes.iter().filter(|w| **w == once).count(),
            1,
            "{once}: {log:#?}"
        );
    }
    check_tenancy(&bodies);
}

/// Where the status of the fake API server's ClusterProbeSet is written.
const CLUSTER_STATUS: &str = "PATCH /apis/ringwarden.dev/v1alpha1/clusterprobesets/retail/status";

/// The ClusterProbeSet is rendered for the namespaces its selector matches,
/// the ProbeSet for its own, and each gets its status.
fn check_tenancy(bodies: &Bodies) {
    let bodies = bodies.lock().unwrap();
    let config = bodies
        .iter()
        .rev()
        .find(|(w, _)| {
            w == "PATCH /api/v1/namespaces/ringwarden-system/configmaps/ringwarden-agent-config"
        })
        .map(|(_, b)| {
            b["data"][crate::reconcile::render::CONFIG_KEY]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .expect("the agent configuration was written");
    let config: ringwarden_crds::AgentConfig =
        serde_yaml_ng::from_str(config.trim_start_matches(|c| c != '\n')).unwrap();
    let scopes: Vec<(&str, &str, Option<Vec<String>>)> = config
        .probes
        .iter()
        .map(|p| {
            (
                p.namespace.as_str(),
                p.probeset.as_str(),
                p.namespaces.clone(),
            )
        })
        .collect();
    assert_eq!(
        scopes,
        [
            ("", "retail", Some(vec!["shop".to_string()])),
            ("shop", "web", Some(vec!["shop".to_string()])),
        ]
    );
    let (_, status) = bodies
        .iter()
        .find(|(w, _)| w == CLUSTER_STATUS)
        .expect("the ClusterProbeSet's status was written");
    assert_eq!(status["kind"], "ClusterProbeSet");
    assert_eq!(status["status"]["observedGeneration"], 1);
    assert!(
        status["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Reconciling"
                && c["status"] == "True"
                && c["reason"] == "AwaitingReports"),
        "planned, and not ready before agents report: {status:#}"
    );
}

fn node(name: &str, pool: &str, version: &str) -> PartialObjectMeta<Node> {
    ObjectMeta {
        name: Some(name.into()),
        resource_version: Some(version.into()),
        labels: Some([("pool".to_string(), pool.to_string())].into()),
        ..Default::default()
    }
    .into_response_partial()
}

#[tokio::test]
async fn only_nodes_whose_labels_changed_trigger_reconciles() {
    use watcher::Event::*;
    let events = futures::stream::iter([
        Ok(Init),
        Ok(InitApply(node("n1", "web", "1"))),
        Ok(InitDone),
        // A status heartbeat: new resourceVersion, same labels.
        Ok(Apply(node("n1", "web", "2"))),
        Ok(Apply(node("n1", "db", "3"))),
        Ok(Apply(node("n2", "db", "4"))),
        Ok(Delete(node("n1", "db", "5"))),
    ]);
    let passed: Vec<_> = label_changes(events)
        .map(|n| n.unwrap().metadata.resource_version.unwrap())
        .collect()
        .await;
    assert_eq!(passed, ["1", "3", "4", "5"]);
}

/// The operator's metrics and health server, bounded as `args` say.
async fn metrics_server(args: &Args) -> (std::net::SocketAddr, prometheus::IntCounterVec) {
    let registry = Registry::new();
    let metrics = Metrics::new(&registry).unwrap();
    let app = metrics::router(registry, Arc::new(|| Ok(())));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let refused = metrics.ingest.http_connections_refused.clone();
    let counted = refused.clone();
    tokio::spawn(http_server::serve(
        listener,
        app,
        http_limits(args),
        Arc::new(move |reason| counted.with_label_values(&[reason]).inc()),
        std::future::pending(),
    ));
    (addr, refused)
}

async fn connect_from(from: &str, to: std::net::SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

#[tokio::test]
async fn slow_header_connections_cannot_stop_the_operators_healthz_and_are_closed_after_the_timeout()
 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let args = Args::try_parse_from(["ringwarden-operator", "--max-connections-per-address", "3"])
        .unwrap();
    // The flag bounds the agent and query ports too.
    assert_eq!(tls_limits(&args).per_address, 3);
    let limits = http_limits(&args);
    assert_eq!(limits.max_connections_per_address, 3);
    let (addr, refused) = metrics_server(&args).await;

    // An attacker (127.0.0.2) opens 200 connections that send part of a
    // request line and stall.
    let mut attack = Vec::new();
    for _ in 0..200 {
        let mut s = connect_from("127.0.0.2", addr).await;
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: ").await;
        attack.push(s);
    }
    // The kubelet (127.0.0.1) still gets its answers at once.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let started = std::time::Instant::now();
        let mut s = connect_from("127.0.0.1", addr).await;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{path}: {answer:?}");
        assert!(started.elapsed() < Duration::from_millis(500), "{path}");
    }
    // The attacker holds three; the rest were closed at once, and counted.
    assert_eq!(refused.with_label_values(&["per_address"]).get(), 197);
    // The three are closed by the header-read timeout.
    let started = std::time::Instant::now();
    let mut still_open = 0;
    for s in &mut attack {
        let mut buf = [0u8; 256];
        loop {
            match tokio::time::timeout(Duration::from_secs(8), s.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => break,
                Ok(Ok(_)) => {}
                Err(_) => {
                    still_open += 1;
                    break;
                }
            }
        }
    }
    assert_eq!(still_open, 0);
    let took = started.elapsed();
    assert!(
        took >= limits.header_read_timeout - Duration::from_millis(500)
            && took < limits.header_read_timeout + Duration::from_secs(2),
        "{took:?}"
    );
}
