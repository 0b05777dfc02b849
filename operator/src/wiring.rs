//! Wiring: watches, the ProbeSet controller, the agent writer, leader
//! election, the agent and query gRPC services, the report publisher and
//! the HTTP server, started together and stopped together on SIGTERM or
//! SIGINT.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use futures::{Stream, StreamExt, future};
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::PartialObjectMeta,
    runtime::{
        Controller, WatchStreamExt, controller,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use prometheus::Registry;
use ringwarden_crds::{ClusterProbeSet, ProbeSet, Slo};
use ringwarden_logging::http as http_server;
use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
    sync::{Notify, mpsc, watch},
};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tracing::{debug, info, warn};

use crate::{
    cli::Args,
    config::{AgentTransport, ConfigError, OperatorConfig},
    ingest::auth::{Authenticator, TokenReviewer},
    ingest::grpc::{self, AgentApi, QueryApi, StreamSettings, Transport},
    ingest::publish::{self, Publisher},
    lease::{Elector, Leadership, LeaseSettings},
    metrics::{self, Metrics},
    reconcile::agent,
    reconcile::controller::{
        Context, Stores, error_policy, error_policy_cluster, reconcile, reconcile_cluster,
    },
    reconcile::stored::{self, Placeholder, Stored, Undecodable, UndecodableKinds},
    reconcile::watches::Watches,
};

/// Why the operator could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{0}")]
    Args(String),
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("cannot reach the Kubernetes API: {0}; run in a cluster or point KUBECONFIG at one")]
    Client(#[source] kube::Error),
    #[error("cannot serve {what} on {addr}: {source}; pass {flag} with a free port")]
    Serve {
        what: &'static str,
        flag: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("--owner-deployment: {0}; check the name, or grant `get` on it")]
    Owner(String),
    #[error("TLS for the agent and query ports: {0}")]
    Tls(#[from] crate::ingest::tls::TlsError),
}

/// The sockets the operator serves on.
pub struct Listeners {
    /// `/metrics`, `/healthz`, `/readyz`.
    pub metrics: TcpListener,
    /// The agent gRPC service.
    pub agents: TcpListener,
    /// The query gRPC service.
    pub queries: TcpListener,
}

impl Listeners {
    /// Binds the addresses of `args`.
    pub async fn bind(args: &Args) -> Result<Self, RunError> {
        let bind = |what, flag, addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| RunError::Serve {
                    what,
                    flag,
                    addr,
                    source,
                })
        };
        Ok(Self {
            metrics: bind("/metrics", "--metrics-addr", args.metrics_addr).await?,
            agents: bind("the agent service", "--agent-addr", args.agent_addr).await?,
            queries: bind("the query service", "--query-addr", args.query_addr).await?,
        })
    }
}

/// Runs the operator until SIGTERM or SIGINT.
pub async fn operate(args: Args) -> Result<(), RunError> {
    args.validate().map_err(RunError::Args)?;
    let mut config = match &args.config {
        Some(path) => OperatorConfig::load(path)?,
        None => OperatorConfig::default(),
    };
    if let Some(budget) = &args.node_budget {
        config.agent.node_budget = budget.clone();
        config
            .agent
            .validate_memory()
            .map_err(|e| RunError::Args(format!("--node-budget: {e}")))?;
    }
    let client = Client::try_default().await.map_err(RunError::Client)?;
    if let Some(name) = &args.owner_deployment {
        config.agent.owner = Some(owner_reference(&client, &args.namespace, name).await?);
    }
    let listeners = Listeners::bind(&args).await?;
    let transport = transport(&args, &mut config, &client).await?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(RunError::Signals)?;
    let signalled = async move {
        tokio::select! {
            _ = sigterm.recv() => {}
            _ = sigint.recv() => {}
        }
    };
    serve(&args, config, client, listeners, transport, signalled).await;
    Ok(())
}

/// TLS for the agent and query ports from the flags, with the task that
/// keeps the certificate current; or plaintext, loudly.
async fn transport(
    args: &Args,
    config: &mut OperatorConfig,
    client: &Client,
) -> Result<Transport, RunError> {
    use crate::ingest::{pki, tls};
    if args.insecure_plaintext_for_local_development {
        warn!(
            "serving agents and queries WITHOUT TLS (--insecure-plaintext-for-local-development): \
             reports and pushed configuration cross the network readable and forgeable"
        );
        config.agent.transport = AgentTransport::Plaintext;
        return Ok(Transport::Plaintext);
    }
    let source = match (&args.tls_cert_file, &args.tls_key_file, &args.tls_ca_file) {
        (Some(cert), Some(key), Some(ca)) => pki::Source::Files {
            cert: cert.clone(),
            key: key.clone(),
            ca: ca.clone(),
        },
        _ => pki::Source::Managed {
            secret: args.tls_secret.clone(),
            names: pki::service_names(&args.service_name, &args.namespace),
        },
    };
    let owner = config.agent.owner.clone();
    let first = pki::load(client, &args.namespace, &source, owner.as_ref()).await?;
    let store = tls::CertStore::new(&first.serving)?;
    let server = tls::server_config(Arc::clone(&store))?;
    config.agent.transport = AgentTransport::Tls {
        ca_configmap: args.ca_configmap.clone(),
    };
    tokio::spawn(pki::keep(
        client.clone(),
        pki::Place {
            namespace: args.namespace.clone(),
            ca_configmap: args.ca_configmap.clone(),
            owner,
        },
        source,
        store,
        first,
        std::future::pending(),
    ));
    Ok(Transport::Tls(tls::Serving::new(server, tls_limits(args))))
}

/// The agent and query ports' bounds, with `--max-connections-per-address`.
pub fn tls_limits(args: &Args) -> crate::ingest::tls::Limits {
    crate::ingest::tls::Limits {
        per_address: args.max_connections_per_address as usize,
        ..Default::default()
    }
}

/// The metrics and health port's bounds (`ringwarden_logging::http`),
/// with `--max-connections-per-address`.
pub fn http_limits(args: &Args) -> http_server::Limits {
    http_server::Limits {
        max_connections_per_address: args.max_connections_per_address as usize,
        ..http_server::Limits::default()
    }
}

/// Serves `listener` with `serve` on a thread and runtime of its own: a
/// flood of connections, handshakes or reports then competes with the
/// Lease renewal and the controllers only through the OS scheduler, never
/// for the one thread they run on. The handle completes when it is done.
pub fn on_ingest_thread<F, Fut>(
    name: &str,
    listener: TcpListener,
    serve: F,
) -> tokio::task::JoinHandle<()>
where
    F: FnOnce(TcpListener) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let std_listener = listener.into_std();
    let spawned = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the ingest runtime");
                    return;
                }
            };
            runtime.block_on(async move {
                match std_listener.and_then(TcpListener::from_std) {
                    Ok(listener) => serve(listener).await,
                    Err(e) => tracing::error!(error = %e, "cannot move the listener"),
                }
            });
            let _ = done_tx.send(());
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the ingest thread");
    }
    tokio::spawn(async move {
        let _ = done_rx.await;
    })
}

/// Runs everything on `client`, serving on `listeners`, until `shutdown`
/// completes; then stops the controllers and releases the Lease.
pub async fn serve(
    args: &Args,
    config: OperatorConfig,
    client: Client,
    listeners: Listeners,
    transport: Transport,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let registry = Registry::new();
    let metrics = Metrics::new(&registry).expect("metric names are fixed and unique");
    if let Transport::Tls(serving) = &transport
        && let Err(e) = registry.register(Box::new(serving.refused.clone()))
    {
        warn!(error = %e, "the connection metrics could not be registered");
    }

    let watches = Watches::new(
        &[
            "probesets",
            "clusterprobesets",
            "namespaces",
            "nodes",
            "slos",
        ],
        metrics.watch_errors.clone(),
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    tokio::spawn(async move {
        shutdown.await;
        info!("shutting down");
        let _ = stop_tx.send(true);
    });

    let app = metrics::router(registry, {
        let watches = watches.clone();
        Arc::new(move || watches.ready())
    });
    let refused = metrics.ingest.http_connections_refused.clone();
    let server = tokio::spawn(http_server::serve(
        listeners.metrics,
        app,
        http_limits(args),
        Arc::new(move |reason| refused.with_label_values(&[reason]).inc()),
        stopped(),
    ));

    let (release_tx, release_rx) = watch::channel(false);
    let identity = args.identity.clone().unwrap_or_else(host_name);
    let (leadership, elector) = if args.leader_elect {
        let settings = LeaseSettings {
            name: args.lease_name.clone(),
            identity: identity.clone(),
            lease_duration: args.lease_duration,
            renew_deadline: args.renew_deadline,
            retry_period: args.retry_period,
            owner: config.agent.owner.clone(),
        };
        let api = Api::namespaced(client.clone(), &args.namespace);
        let (elector, leadership) = Elector::new(api, settings, metrics.leader.clone());
        // Released only after the publisher's last snapshot (below), so a
        // successor never restores from an older one.
        let release = release_rx.clone();
        let released = async move {
            let mut rx = release;
            let _ = rx.wait_for(|r| *r).await;
        };
        (leadership, Some(tokio::spawn(elector.run(released))))
    } else {
        metrics.leader.set(1);
        (Leadership::always(), None)
    };

    let (ps_store, ps_writer) = reflector::store::<ProbeSet>();
    let (node_store, node_writer) = reflector::store::<PartialObjectMeta<Node>>();
    let (slo_store, slo_writer) = reflector::store::<Slo>();
    let (cps_store, cps_writer) = reflector::store::<ClusterProbeSet>();
    let (ns_store, ns_writer) = reflector::store::<PartialObjectMeta<Namespace>>();
    let stores = Stores {
        probesets: ps_store.clone(),
        nodes: node_store,
        slos: slo_store,
        cluster_probesets: cps_store.clone(),
        namespaces: ns_store,
    };
    let service_account = config.agent.service_account_name.clone();
    let ctx = Arc::new(Context::new(
        client.clone(),
        args.namespace.clone(),
        config.agent,
        stores.clone(),
        leadership.clone(),
        metrics,
        identity,
    ));
    if let Some(name) = &args.cluster_name {
        ctx.hub.set_cluster(name);
    }

    let trigger = Arc::new(Notify::new());
    let poke = {
        let trigger = Arc::clone(&trigger);
        move || trigger.notify_one()
    };
    // Objects that do not decode leave the caches and get an `Invalid`
    // condition (controller::mark_undecodable), instead of failing the
    // whole watch.
    let undecodable_changed = Arc::new(Notify::new());
    let on_undecodable = |resource: &'static str| {
        let (gauge, changed) = (
            ctx.metrics.undecodable.with_label_values(&[resource]),
            Arc::clone(&undecodable_changed),
        );
        move |u: &Undecodable| {
            gauge.set(i64::try_from(u.len()).unwrap_or(i64::MAX));
            changed.notify_one();
        }
    };
    let bad = UndecodableKinds::default();
    let probesets = probe_set_watch(
        watches.watch("probesets", Api::<Stored<ProbeSet>>::all(client.clone())),
        bad.probesets.clone(),
        on_undecodable("probesets"),
        ps_writer,
        poke.clone(),
    );
    let cluster_probesets = probe_set_watch(
        watches.watch(
            "clusterprobesets",
            Api::<Stored<ClusterProbeSet>>::all(client.clone()),
        ),
        bad.cluster_probesets.clone(),
        on_undecodable("clusterprobesets"),
        cps_writer,
        poke.clone(),
    );
    // Namespace labels decide which namespaces a ClusterProbeSet's
    // namespaceSelector picks; their annotations, each namespace's limits.
    let namespaces = label_changes(
        watches
            .watch(
                "namespaces",
                Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
            )
            .reflect(ns_writer),
    )
    .for_each({
        let poke = poke.clone();
        move |_| {
            poke();
            future::ready(())
        }
    });
    let nodes = label_changes(
        // A metadata-only watch: labels are all that is needed.
        watches
            .watch("nodes", Api::<PartialObjectMeta<Node>>::all(client.clone()))
            .reflect(node_writer),
    )
    .inspect({
        let (poke, hub) = (poke.clone(), Arc::clone(&ctx.hub));
        move |_| {
            poke();
            hub.nodes_changed();
        }
    });
    let slos = {
        let mut specs = SpecChanges::default();
        stored::decoded(
            watches.watch("slos", Api::<Stored<Slo>>::all(client.clone())),
            bad.slos.clone(),
            on_undecodable("slos"),
        )
        .reflect(slo_writer)
        // SLO status, which the operator writes, changes no plan.
        .filter(move |e| future::ready(specs.saw(e)))
        .inspect(move |e| changed(e, &poke))
        .touched_objects()
    };
    let undecodable = tokio::spawn(crate::reconcile::controller::mark_undecodable(
        Arc::clone(&ctx),
        bad,
        undecodable_changed,
        stopped(),
    ));

    tokio::spawn({
        let stores = stores.clone();
        async move {
            stores.wait_until_ready().await;
            info!("watch caches filled");
        }
    });
    tokio::spawn({
        let trigger = Arc::clone(&trigger);
        leadership.gained().for_each(move |()| {
            info!("became leader");
            trigger.notify_one();
            future::ready(())
        })
    });

    let auth = Authenticator::new(
        TokenReviewer::new(client.clone()),
        // The audience the rendered DaemonSet's projected token carries.
        ringwarden_proto::TOKEN_AUDIENCE,
        &args.namespace,
        &service_account,
    );
    let query_transport = transport.clone();
    let agents = on_ingest_thread("ringwarden-agents", listeners.agents, {
        let api = AgentApi::new(Arc::clone(&ctx.hub), auth, StreamSettings::default());
        let stopped = stopped();
        move |listener| async move {
            if let Err(e) = grpc::serve_agents(listener, api, transport, stopped).await {
                warn!(error = %e, "the agent service stopped");
            }
        }
    });
    let queries = on_ingest_thread("ringwarden-queries", listeners.queries, {
        let mut api = QueryApi::new(Arc::clone(&ctx.hub));
        if !args.query_addr.ip().is_loopback() {
            // Reachable beyond port-forward: who asks must be allowed to
            // read the namespace.
            api = api.with_access(crate::ingest::access::Access::new(
                crate::ingest::access::kube_check(client.clone()),
            ));
        }
        let stopped = stopped();
        move |listener| async move {
            if let Err(e) = grpc::serve_queries(listener, api, query_transport, stopped).await {
                warn!(error = %e, "the query service stopped");
            }
        }
    });
    let (reconcile_tx, reconcile_rx) = mpsc::unbounded_channel();
    ctx.set_requeue(reconcile_tx.clone());
    let publisher = Publisher::new(
        Arc::clone(&ctx),
        reconcile_tx,
        publish::Settings {
            snapshot_every: args.snapshot_interval,
            ..publish::Settings::default()
        },
    )
    .run(stopped());

    let everyone = ps_store.clone();
    let same_namespace = ps_store.clone();
    let controller = Controller::for_stream(probesets, ps_store)
        .with_config(controller::Config::default().debounce(Duration::from_millis(500)))
        // Node labels decide which ProbeSets run anywhere.
        .watches_stream(nodes, move |_| all(&everyone))
        // An SLO names a ProbeSet of its namespace, and may have named
        // another before this change.
        .watches_stream(slos, move |slo| {
            in_namespace(&same_namespace, &slo.namespace().unwrap_or_default())
        })
        // Report figures that changed enough to be written.
        .reconcile_on(UnboundedReceiverStream::new(reconcile_rx))
        .reconcile_all_on(leadership.gained())
        .graceful_shutdown_on(stopped())
        .run(reconcile, error_policy, Arc::clone(&ctx))
        .for_each(|result| {
            if let Err(e) = result {
                debug!(error = %e, "controller");
            }
            future::ready(())
        });
    let cluster_controller = Controller::for_stream(cluster_probesets, cps_store)
        .with_config(controller::Config::default().debounce(Duration::from_millis(500)))
        .reconcile_all_on(leadership.gained())
        .graceful_shutdown_on(stopped())
        .run(reconcile_cluster, error_policy_cluster, Arc::clone(&ctx))
        .for_each(|result| {
            if let Err(e) = result {
                debug!(error = %e, "cluster controller");
            }
            future::ready(())
        });
    info!(namespace = %args.namespace, agents = %args.agent_addr, "operator started");
    let namespaces = {
        let stop = stopped();
        async move {
            tokio::select! {
                () = namespaces => {}
                () = stop => {}
            }
        }
    };
    tokio::join!(
        controller,
        cluster_controller,
        namespaces,
        agent::run(Arc::clone(&ctx), trigger, stopped()),
        publisher
    );
    let _ = undecodable.await;
    // The publisher persisted its last snapshots on the way out: now the
    // Lease may go.
    let _ = release_tx.send(true);
    if let Some(elector) = elector {
        let _ = elector.await;
    }
    // Streams were ended when the publisher stopped serving; a client that
    // keeps its connection open must not hold the process.
    if tokio::time::timeout(Duration::from_secs(10), async {
        let _ = tokio::join!(server, agents, queries);
    })
    .await
    .is_err()
    {
        warn!("servers did not stop within 10s; exiting anyway");
    }
}

/// The watch of ProbeSets or ClusterProbeSets as their controller takes
/// it: decoded one object at a time (one that does not decode leaves the
/// cache and joins `undecodable`), cached by `writer`, and poking the agent
/// writer on spec changes only: the operator's own status writes change no
/// spec, so they cause no re-render.
fn probe_set_watch<K>(
    events: impl Stream<Item = Result<watcher::Event<Stored<K>>, watcher::Error>> + Send,
    undecodable: Undecodable,
    on_undecodable: impl Fn(&Undecodable) + Send + 'static,
    writer: reflector::store::Writer<K>,
    poke: impl Fn() + Send + 'static,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send
where
    K: Resource<DynamicType = ()> + Placeholder + Clone + std::fmt::Debug + Send + Sync + 'static,
{
    let mut specs = SpecChanges::default();
    stored::decoded(events, undecodable, on_undecodable)
        .reflect(writer)
        .inspect(move |e| {
            if specs.saw(e) {
                changed(e, &poke);
            }
        })
        .applied_objects()
}

/// Tells events that change an object's spec (a new generation, a new
/// object, a deletion) from those that only change its status.
#[derive(Default)]
struct SpecChanges {
    /// `namespace/name` → (uid, generation).
    known: HashMap<String, (Option<String>, Option<i64>)>,
}

impl SpecChanges {
    fn saw<K: Resource>(&mut self, event: &Result<watcher::Event<K>, watcher::Error>) -> bool {
        let key = |o: &K| {
            format!(
                "{}/{}",
                o.meta().namespace.as_deref().unwrap_or_default(),
                o.meta().name.as_deref().unwrap_or_default()
            )
        };
        match event {
            Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                let now = (o.meta().uid.clone(), o.meta().generation);
                self.known.insert(key(o), now.clone()) != Some(now)
            }
            Ok(watcher::Event::Delete(o)) => {
                self.known.remove(&key(o));
                true
            }
            _ => true,
        }
    }
}

/// Pokes on events that change the cluster's contents.
fn changed<K>(event: &Result<watcher::Event<K>, watcher::Error>, poke: &impl Fn()) {
    if let Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone) =
        event
    {
        poke();
    }
}

/// The nodes (or namespaces) whose labels or `ringwarden.dev/` annotations
/// (a namespace's limits) changed, or that were added or deleted; status
/// updates, which touch nodes every few seconds, pass no further.
fn label_changes<K, S>(
    events: S,
) -> impl Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send
where
    K: Resource + Send + 'static,
    PartialObjectMeta<K>: Resource + Send,
    S: Stream<Item = Result<watcher::Event<PartialObjectMeta<K>>, watcher::Error>> + Send,
{
    let mut known: HashMap<String, BTreeMap<String, String>> = HashMap::new();
    events.filter_map(move |event| {
        let out = match event {
            Err(e) => Some(Err(e)),
            Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n)) => {
                // Labels, and the `ringwarden.dev/` annotations that set a
                // namespace's limits.
                let mut seen = n.metadata.labels.clone().unwrap_or_default();
                for (k, v) in n.metadata.annotations.iter().flatten() {
                    if k.starts_with("ringwarden.dev/") {
                        seen.insert(format!("annotation:{k}"), v.clone());
                    }
                }
                (known.insert(n.name_any(), seen.clone()) != Some(seen)).then_some(Ok(n))
            }
            Ok(watcher::Event::Delete(n)) => {
                known.remove(&n.name_any());
                Some(Ok(n))
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
        };
        future::ready(out)
    })
}

fn all(store: &Store<ProbeSet>) -> Vec<ObjectRef<ProbeSet>> {
    store
        .state()
        .iter()
        .map(|ps| ObjectRef::from_obj(&**ps))
        .collect()
}

fn in_namespace(store: &Store<ProbeSet>, namespace: &str) -> Vec<ObjectRef<ProbeSet>> {
    store
        .state()
        .iter()
        .filter(|ps| ps.namespace().as_deref() == Some(namespace))
        .map(|ps| ObjectRef::from_obj(&**ps))
        .collect()
}

/// The pod name in Kubernetes.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "ringwarden-operator".into())
}

/// An owner reference to the operator's Deployment: the agent objects are
/// garbage-collected with it. Not a controller reference (the Deployment
/// does not manage them), and no deletion blocking.
async fn owner_reference(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference, RunError> {
    let api: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
        kube::Api::namespaced(client.clone(), namespace);
    let d = api
        .get(name)
        .await
        .map_err(|e| RunError::Owner(format!("reading Deployment {namespace}/{name}: {e}")))?;
    Ok(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            name: name.into(),
            uid: d.metadata.uid.unwrap_or_default(),
            controller: Some(false),
            block_owner_deletion: Some(false),
        },
    )
}

#[cfg(test)]
mod tests;
