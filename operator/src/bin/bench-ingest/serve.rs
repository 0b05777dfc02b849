//! The operator process: the real agent service, TLS listener, publisher
//! and status reconcile, against an in-process API server.

use super::*;

/// Every token `bench:<node>` belongs to the agent ServiceAccount, bound to
/// `<node>`: the review's cost is the API server's, and positive reviews
/// are cached anyway.
pub(crate) struct AcceptAll;

impl Reviewer for AcceptAll {
    async fn review(&self, token: &str, audience: &str) -> Result<Review, String> {
        Ok(Review {
            authenticated: true,
            username: "system:serviceaccount:ringwarden-system:ringwarden-agent".into(),
            audiences: vec![audience.into()],
            node: token.strip_prefix("bench:").map(str::to_owned),
            pod: None,
            error: None,
        })
    }

    async fn pod(&self, _: &str, _: &str) -> Result<Option<PodPlace>, String> {
        Ok(None)
    }
}

pub(crate) fn probeset_spec(probes: usize) -> Value {
    json!({
        "probes": (0..probes).map(|i| json!({"name": format!("p{i}"), "kind": "syscalls"})).collect::<Vec<_>>(),
        "reportInterval": "10s",
    })
}

pub(crate) async fn serve(
    point: Point,
    interval: Duration,
    tls_dir: std::path::PathBuf,
) -> Result<(), String> {
    let started = Instant::now();
    let mut ps: ProbeSet = serde_json::from_value(json!({
        "apiVersion": "ringwarden.dev/v1alpha1", "kind": "ProbeSet",
        "metadata": {"name": "bench", "namespace": "bench", "generation": 1, "uid": "u-ps"},
        "spec": probeset_spec(point.probes),
    }))
    .map_err(|e| e.to_string())?;
    ps.spec.report_interval = interval;
    let slos: Vec<Slo> = (0..point.probes)
        .map(|i| {
            serde_json::from_value(json!({
                "apiVersion": "ringwarden.dev/v1alpha1", "kind": "SLO",
                "metadata": {"name": format!("p{i}-fast"), "namespace": "bench", "generation": 1, "uid": format!("u-slo-{i}")},
                "spec": {"probeSet": "bench", "probe": format!("p{i}"),
                         "indicator": {"latency": {"threshold": "5ms"}}, "target": 99.0},
            }))
            .expect("a valid SLO")
        })
        .collect();
    let (ps_store, mut ps_writer) = reflector::store::<ProbeSet>();
    let (node_store, mut node_writer) = reflector::store::<PartialObjectMeta<Node>>();
    let (slo_store, mut slo_writer) = reflector::store::<Slo>();
    fill(&mut ps_writer, vec![ps]);
    fill(
        &mut node_writer,
        (0..point.agents)
            .map(|i| {
                ObjectMeta {
                    name: Some(format!("node-{i}")),
                    labels: Some([("pool".to_string(), "bench".to_string())].into()),
                    ..Default::default()
                }
                .into_response_partial()
            })
            .collect(),
    );
    fill(&mut slo_writer, slos);
    let (cluster_probesets, namespaces) = ringwarden_operator::loopback::empty_cluster_scoped();
    let stores = Stores {
        probesets: ps_store.clone(),
        nodes: node_store,
        slos: slo_store,
        cluster_probesets,
        namespaces,
    };

    let served = Arc::new(Mutex::new(Served::default()));
    let client = fake_api(
        Arc::new(Mutex::new(ps_writer)),
        Arc::new(Mutex::new(slo_writer)),
        stores.clone(),
        Arc::clone(&served),
        started,
    );
    let registry = Registry::new();
    let metrics = Metrics::new(&registry).map_err(|e| e.to_string())?;
    let ctx = Arc::new(Context::new(
        client,
        "ringwarden-system".into(),
        AgentSettings::default(),
        stores.clone(),
        Leadership::always(),
        metrics,
        "bench".into(),
    ));
    let world = World {
        probesets: stores.probesets.state(),
        cluster_probesets: vec![],
        namespaces: vec![],
        namespace_limits: Default::default(),
        nodes: vec![(
            "bench".to_string(),
            [("pool".to_string(), "bench".to_string())].into(),
        )],
        slos: stores
            .slos
            .state()
            .iter()
            .filter_map(|s| SloTarget::from_slo(s))
            .collect(),
        node_selector_labels: Default::default(),
    };
    ctx.hub
        .set_config(&render::agent_config(&world.assess_all(), 0));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "listening {}",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    let _ = std::io::stdout().flush();

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let auth = Authenticator::new(
        AcceptAll,
        "ringwarden",
        "ringwarden-system",
        "ringwarden-agent",
    );
    let api = AgentApi::new(Arc::clone(&ctx.hub), auth, StreamSettings::default());
    let read = |f: &str| std::fs::read_to_string(tls_dir.join(f)).map_err(|e| format!("{f}: {e}"));
    let pem = tls::Pem {
        cert: read("tls.crt")?,
        key: read("tls.key")?,
    };
    let store = tls::CertStore::new(&pem).map_err(|e| e.to_string())?;
    // Every simulated agent connects from 127.0.0.1; in a cluster each node
    // has its own address and the per-address cap stays at its default.
    let limits = tls::Limits {
        per_address: usize::MAX,
        ..tls::Limits::default()
    };
    let serving = tls::Serving::new(
        tls::server_config(store).map_err(|e| e.to_string())?,
        limits,
    );
    let refused = serving.refused.clone();
    // On a thread of its own, as the operator serves agents.
    let stop = stopped();
    let server =
        ringwarden_operator::wiring::on_ingest_thread("ingest", listener, |listener| async move {
            if let Err(e) =
                grpc::serve_agents(listener, api, grpc::Transport::Tls(serving), stop).await
            {
                eprintln!("serving agents: {e}");
            }
        });
    let (reconcile_tx, mut reconcile_rx) =
        tokio::sync::mpsc::unbounded_channel::<ObjectRef<ProbeSet>>();
    let publisher = tokio::spawn(
        Publisher::new(Arc::clone(&ctx), reconcile_tx, publish::Settings::default()).run(stopped()),
    );
    // What the controller does with a published change.
    let reconciler = tokio::spawn({
        let ctx = Arc::clone(&ctx);
        async move {
            while let Some(r) = reconcile_rx.recv().await {
                if let Some(ps) = ps_store.get(&r) {
                    let _ = controller::reconcile(ps, Arc::clone(&ctx)).await;
                }
            }
        }
    });

    // Stop when the driver writes a line (or goes away).
    let (line_tx, line_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
        let _ = line_tx.send(());
    });
    let _ = line_rx.await;
    let _ = stop_tx.send(true);
    let _ = publisher.await;
    reconciler.abort();
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;

    let mut out = std::mem::take(&mut *served.lock().unwrap_or_else(|e| e.into_inner()));
    out.ran = started.elapsed().as_secs_f64();
    for reason in [
        "per_address",
        "handshakes",
        "handshake_failed",
        "handshake_timeout",
    ] {
        out.refused
            .insert(reason.into(), refused.with_label_values(&[reason]).get());
    }
    for family in registry.gather() {
        match family.name() {
            "ringwarden_operator_reports_total" => {
                out.reports = family
                    .get_metric()
                    .iter()
                    .map(|m| m.get_counter().get_value() as u64)
                    .sum();
            }
            "ringwarden_operator_report_ingest_seconds" => {
                if let Some(m) = family.get_metric().first() {
                    let h = m.get_histogram();
                    let wanted = h.get_sample_count() as f64 * 0.99;
                    out.ingest_p99_le = h
                        .get_bucket()
                        .iter()
                        .find(|b| b.cumulative_count() as f64 >= wanted)
                        .map_or(f64::INFINITY, |b| b.upper_bound());
                }
            }
            _ => {}
        }
    }
    println!(
        "{}",
        serde_json::to_string(&out).map_err(|e| e.to_string())?
    );
    Ok(())
}

pub(crate) fn fill<K>(writer: &mut Writer<K>, objects: Vec<K>)
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    writer.apply_watcher_event(&watcher::Event::Init);
    for o in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(o));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
}

/// An API server that accepts every write, records status writes, and
/// feeds written status back into the caches as a watch would.
pub(crate) fn fake_api(
    probesets: Arc<Mutex<Writer<ProbeSet>>>,
    slos: Arc<Mutex<Writer<Slo>>>,
    stores: Stores,
    served: Arc<Mutex<Served>>,
    started: Instant,
) -> Client {
    let service = tower::service_fn(move |request: Request<Body>| {
        let (probesets, slos, stores, served) = (
            Arc::clone(&probesets),
            Arc::clone(&slos),
            stores.clone(),
            Arc::clone(&served),
        );
        async move {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap_or_default();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let path = parts.uri.path().to_owned();
            let method = parts.method.as_str().to_owned();
            let segments: Vec<&str> = path.split('/').collect();
            let reply = |status: u16, v: Value| {
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(Body::from(serde_json::to_vec(&v).unwrap_or_default()))
                        .expect("a response"),
                )
            };
            match (method.as_str(), segments.as_slice()) {
                (
                    "PATCH",
                    [
                        ..,
                        "namespaces",
                        ns,
                        kind @ ("probesets" | "slos"),
                        name,
                        "status",
                    ],
                ) => {
                    let at = started.elapsed().as_secs_f64();
                    served
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .writes
                        .entry(format!("{kind} {ns}/{name}"))
                        .or_default()
                        .push(at);
                    let object = if *kind == "probesets" {
                        stores
                            .probesets
                            .get(&ObjectRef::new(name).within(ns))
                            .map(|ps| {
                                let mut ps = (*ps).clone();
                                ps.status = serde_json::from_value(body["status"].clone()).ok();
                                probesets
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .apply_watcher_event(&watcher::Event::Apply(ps.clone()));
                                serde_json::to_value(ps).unwrap_or_default()
                            })
                    } else {
                        stores
                            .slos
                            .get(&ObjectRef::new(name).within(ns))
                            .map(|slo| {
                                let mut slo = (*slo).clone();
                                slo.status = serde_json::from_value(body["status"].clone()).ok();
                                slos.lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .apply_watcher_event(&watcher::Event::Apply(slo.clone()));
                                serde_json::to_value(slo).unwrap_or_default()
                            })
                    };
                    reply(200, object.unwrap_or(Value::Null))
                }
                ("GET", [.., "configmaps"]) => reply(
                    200,
                    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
                           "metadata": {}, "items": []}),
                ),
                ("GET", _) => reply(
                    404,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound"}),
                ),
                _ => reply(200, body),
            }
        }
    });
    Client::new(service, "default")
}
