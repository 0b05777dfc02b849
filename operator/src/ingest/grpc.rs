//! The gRPC services: agents' streams ([`AgentApi`]) and users' queries
//! ([`QueryApi`]). Thin: they authenticate, check and convert messages,
//! and hand them to the [`Hub`]. Serves on sockets; docs/protocol.md
//! describes what agents must do.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, SystemTime},
};

use ringwarden_proto::v1::{
    self, AgentMessage, OperatorMessage, StatusReply, StatusRequest,
    agent_message::Message as FromAgent,
    operator_message::Message as ToAgent,
    query_service_server::{QueryService, QueryServiceServer},
};
use tokio::{
    net::TcpListener,
    sync::mpsc,
    time::{Instant, sleep, sleep_until, timeout},
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    Request, Response, Status, Streaming,
    transport::{Server, server::TcpIncoming},
};
use tracing::{debug, info, instrument, warn};

use crate::{
    ingest::auth::{Authenticator, Identity, Reviewer},
    ingest::hub::Hub,
    ingest::reports::{self, AgentInfo, Sample},
    ingest::slo_status,
};

/// What a follower answers; agents reconnect until they reach the leader.
pub const NOT_LEADING: &str =
    "this operator replica does not lead; reconnect (on a new connection) to reach the leader";

/// Timings of agent streams.
#[derive(Clone, Copy, Debug)]
pub struct StreamSettings {
    /// How long an agent has to say Hello.
    pub hello_timeout: Duration,
    /// Streams end after this, so agents come back with a fresh token and
    /// a revoked ServiceAccount loses access.
    pub reauthenticate_after: Duration,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            hello_timeout: Duration::from_secs(30),
            reauthenticate_after: Duration::from_secs(3_600),
        }
    }
}

/// `AgentService`: one stream per agent.
pub struct AgentApi<R> {
    hub: Arc<Hub>,
    auth: Arc<Authenticator<R>>,
    settings: StreamSettings,
}

impl<R: Reviewer> AgentApi<R> {
    pub fn new(hub: Arc<Hub>, auth: Authenticator<R>, settings: StreamSettings) -> Self {
        Self {
            hub,
            auth: Arc::new(auth),
            settings,
        }
    }

    fn refuse(&self, reason: &str, status: Status) -> Status {
        self.hub.metrics.refused.with_label_values(&[reason]).inc();
        debug!(reason, message = status.message(), "agent stream refused");
        status
    }
}

/// Where an agent stream's messages come from: the agent port reads them
/// with [`super::frames::Frames`]; tonic's `Streaming` reads them too.
pub trait Inbound: Send + 'static {
    fn message(&mut self) -> impl Future<Output = Result<Option<AgentMessage>, Status>> + Send;
}

impl Inbound for Streaming<AgentMessage> {
    async fn message(&mut self) -> Result<Option<AgentMessage>, Status> {
        Streaming::message(self).await
    }
}

impl<R: Reviewer> AgentApi<R> {
    /// Opens an agent stream authenticated by `metadata`, reading
    /// `inbound`.
    pub async fn open(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        inbound: impl Inbound,
    ) -> Result<Response<ReceiverStream<Result<OperatorMessage, Status>>>, Status> {
        // Before anything is read: a refused stream changes nothing.
        let who = self
            .auth
            .authenticate(metadata)
            .await
            .map_err(|e| self.refuse(e.metric_label(), e.status()))?;
        if !self.hub.is_serving() {
            return Err(self.refuse("not_leading", Status::unavailable(NOT_LEADING)));
        }
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(agent_stream(
            Arc::clone(&self.hub),
            who,
            inbound,
            tx,
            self.settings,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

type Outbound = mpsc::Sender<Result<OperatorMessage, Status>>;

/// Longest an answer may wait for a client that does not read: a stalled
/// client cannot hold its stream past re-authentication or a change of
/// leader.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Reports a stream may send at once (an agent's buffer after a
/// reconnect holds 60), and the sustained pace (an agent reports at most
/// every 100 ms): beyond, the stream is ended, so an authenticated agent
/// cannot make the operator do more than agents do.
const REPORT_BURST: f64 = 64.0;
const REPORTS_PER_SECOND: f64 = 10.0;

/// Sends `message` unless the client has not read for [`SEND_TIMEOUT`];
/// false when the stream is gone or stalled.
async fn send(tx: &Outbound, message: Result<OperatorMessage, Status>) -> bool {
    matches!(timeout(SEND_TIMEOUT, tx.send(message)).await, Ok(Ok(())))
}

/// Marks the node's stream closed when dropped.
struct Bye(Arc<Hub>, String);

impl Drop for Bye {
    fn drop(&mut self) {
        self.0.bye(&self.1);
    }
}

/// One agent's stream: Hello, then Reports acknowledged one by one, with
/// the node's configuration pushed whenever it changes.
#[instrument(skip_all, fields(node))]
async fn agent_stream(
    hub: Arc<Hub>,
    who: Identity,
    mut inbound: impl Inbound,
    tx: Outbound,
    settings: StreamSettings,
) {
    let end = |status: Status| {
        let tx = tx.clone();
        async move {
            let _ = send(&tx, Err(status)).await;
        }
    };
    let hello = match timeout(settings.hello_timeout, inbound.message()).await {
        Ok(Ok(Some(AgentMessage {
            message: Some(FromAgent::Hello(h)),
        }))) => h,
        Ok(Ok(Some(_))) => {
            return end(Status::invalid_argument(
                "the first message of a stream must be a Hello",
            ))
            .await;
        }
        Ok(Ok(None) | Err(_)) => return,
        Err(_) => {
            return end(Status::deadline_exceeded(format!(
                "no Hello within {:?}",
                settings.hello_timeout
            )))
            .await;
        }
    };
    let info = match AgentInfo::try_from(hello) {
        Ok(info) => info,
        Err(e) => return end(Status::invalid_argument(e.to_string())).await,
    };
    let refuse = |reason: &str, status: Status| {
        hub.metrics.refused.with_label_values(&[reason]).inc();
        debug!(reason, message = status.message(), "agent stream refused");
        end(status)
    };
    // The node comes from the token; the Hello may only agree with it.
    if who.node != info.node {
        return refuse(
            "wrong_node",
            Status::permission_denied(format!(
                "the token is bound to node {}, not {}; an agent reports for the node it runs \
                 on only (set RINGWARDEN_NODE_NAME from spec.nodeName)",
                who.node, info.node
            )),
        )
        .await;
    }
    // Names not in the node list never create state.
    if !hub.knows_node(&info.node) {
        return refuse(
            "unknown_node",
            Status::unavailable(format!(
                "node {} is not in the cluster's node list as this operator sees it; \
                 reconnect once it is",
                info.node
            )),
        )
        .await;
    }
    tracing::Span::current().record("node", info.node.as_str());
    let node = info.node.clone();
    let boot_id = info.boot_id.clone();
    let mut sent = info.config_version.clone();
    let mut subscriptions = hub.subscribe();
    // Reports are checked against what this node was handed: wait for a
    // rendered configuration (moments after a replica takes over).
    tokio::select! {
        () = async { let _ = subscriptions.config.wait_for(Option::is_some).await; } => {}
        () = async { let _ = subscriptions.serving.wait_for(|s| !*s).await; } => {
            return end(Status::unavailable(NOT_LEADING)).await;
        }
        () = tx.closed() => return,
    }
    let agent_version = info.agent_version.clone();
    if let Err(e) = hub.hello(SystemTime::now(), info) {
        return refuse("boot_retired", Status::failed_precondition(e.to_string())).await;
    }
    info!(boot_id, agent = agent_version, "agent connected");
    let _bye = Bye(Arc::clone(&hub), node.clone());
    if !push_config(&hub, &node, &mut sent, &tx).await {
        return;
    }
    // Up to a tenth earlier, by node, so agents that connected together
    // do not all come back (and get reviewed) together.
    let spread = settings.reauthenticate_after / 10;
    let jitter = spread.mul_f64((hash(&node) % 1000) as f64 / 1000.0);
    let deadline = Instant::now() + settings.reauthenticate_after - jitter;
    let mut budget = (REPORT_BURST, Instant::now());
    loop {
        tokio::select! {
            message = inbound.message() => match message {
                Ok(Some(AgentMessage { message: Some(FromAgent::Report(report)) })) => {
                    let started = std::time::Instant::now();
                    let now = Instant::now();
                    budget.0 = (budget.0
                        + now.duration_since(budget.1).as_secs_f64() * REPORTS_PER_SECOND)
                        .min(REPORT_BURST);
                    budget.1 = now;
                    if budget.0 < 1.0 {
                        hub.metrics.reports.with_label_values(&["throttled"]).inc();
                        return end(Status::resource_exhausted(
                            "reports faster than agents send them (one per 100 ms, bursts of \
                             64); reconnect and report at the configured interval",
                        ))
                        .await;
                    }
                    budget.0 -= 1.0;
                    if report.boot_id != boot_id {
                        return end(Status::invalid_argument(
                            "report.boot_id differs from the Hello's; a new boot opens a new stream",
                        ))
                        .await;
                    }
                    let seq = report.seq;
                    let sample = match Sample::try_from(report) {
                        Ok(s) => s,
                        Err(e) => {
                            hub.metrics.reports.with_label_values(&["invalid"]).inc();
                            warn!(error = %e, "invalid report");
                            return end(Status::invalid_argument(e.to_string())).await;
                        }
                    };
                    hub.ingest(SystemTime::now(), &node, sample);
                    let ack = OperatorMessage {
                        message: Some(ToAgent::Ack(v1::Ack { seq })),
                    };
                    if !send(&tx, Ok(ack)).await {
                        return;
                    }
                    hub.metrics.ingest_duration.observe(started.elapsed().as_secs_f64());
                }
                Ok(Some(_)) => {
                    return end(Status::invalid_argument("only Reports may follow the Hello")).await;
                }
                Ok(None) => {
                    debug!("agent closed its stream");
                    return;
                }
                Err(e) => {
                    debug!(error = %e, "agent stream broke");
                    return;
                }
            },
            Ok(()) = subscriptions.config.changed() => {
                if !push_config(&hub, &node, &mut sent, &tx).await {
                    return;
                }
            }
            Ok(()) = subscriptions.labels.changed() => {
                if !push_config(&hub, &node, &mut sent, &tx).await {
                    return;
                }
            }
            // The guard `wait_for` returns is not Send: drop it inside.
            () = async { let _ = subscriptions.serving.wait_for(|s| !*s).await; } => {
                return end(Status::unavailable(NOT_LEADING)).await;
            }
            () = sleep_until(deadline) => {
                return end(Status::unavailable(
                    "streams last an hour; reconnect with a fresh token",
                ))
                .await;
            }
            () = tx.closed() => return,
        }
    }
}

fn hash(s: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// Sends the node's configuration unless it already runs it; false when
/// the stream is gone.
async fn push_config(hub: &Hub, node: &str, sent: &mut String, tx: &Outbound) -> bool {
    let Some(config) = hub.node_config(node) else {
        return true;
    };
    if config.version == *sent {
        return true;
    }
    let message = OperatorMessage {
        message: Some(ToAgent::Config(v1::Config {
            version: config.version.clone(),
            agent_config_json: config.json,
            thresholds: config
                .thresholds
                .into_iter()
                .map(|(slo, threshold_id)| v1::ThresholdBinding { slo, threshold_id })
                .collect(),
        })),
    };
    if !send(tx, Ok(message)).await {
        return false;
    }
    debug!(version = config.version, "configuration pushed");
    *sent = config.version;
    true
}

/// `QueryService`: figures for people and the `ringwarden` CLI.
pub struct QueryApi {
    hub: Arc<Hub>,
    /// Per-namespace access checks, when the service is reachable beyond
    /// port-forward ([`super::access`]).
    access: Option<Arc<super::access::Access>>,
}

impl QueryApi {
    pub fn new(hub: Arc<Hub>) -> Self {
        Self { hub, access: None }
    }

    /// Requires a token allowed to read the namespace asked about.
    pub fn with_access(mut self, access: super::access::Access) -> Self {
        self.access = Some(Arc::new(access));
        self
    }

    async fn authorize(&self, request: &Request<StatusRequest>) -> Result<(), Status> {
        match &self.access {
            Some(a) => {
                let peer = request.remote_addr().map(|a| a.ip());
                a.authorize(request.metadata(), &request.get_ref().namespace, peer)
                    .await
            }
            None => Ok(()),
        }
    }
}

/// Shortest interval between Watch replies.
const MIN_WATCH_INTERVAL: Duration = Duration::from_millis(500);
const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_secs(2);

#[tonic::async_trait]
impl QueryService for QueryApi {
    async fn get_status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusReply>, Status> {
        self.authorize(&request).await?;
        let namespace = request.into_inner().namespace;
        Ok(Response::new(status_reply(
            &self.hub,
            &namespace,
            SystemTime::now(),
        )))
    }

    type WatchStream = ReceiverStream<Result<StatusReply, Status>>;

    async fn watch(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.authorize(&request).await?;
        let request = request.into_inner();
        let every = match request.interval_ms {
            0 => DEFAULT_WATCH_INTERVAL,
            ms => Duration::from_millis(u64::from(ms)).max(MIN_WATCH_INTERVAL),
        };
        let (tx, rx) = mpsc::channel(2);
        let hub = Arc::clone(&self.hub);
        let mut serving = hub.subscribe().serving;
        tokio::spawn(async move {
            loop {
                let reply = status_reply(&hub, &request.namespace, SystemTime::now());
                // A follower has nothing to watch; a leader stepping down
                // (or shutting down) ends the watch so the server can stop.
                let last = !reply.leading;
                tokio::select! {
                    sent = tx.send(Ok(reply)) => if sent.is_err() || last { return },
                    () = tx.closed() => return,
                }
                tokio::select! {
                    () = sleep(every) => {}
                    () = tx.closed() => return,
                    () = async { let _ = serving.wait_for(|s| !*s).await; } => {}
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// The figures of every ProbeSet and SLO (of `namespace` unless empty).
pub fn status_reply(hub: &Hub, namespace: &str, now: SystemTime) -> StatusReply {
    let mut reply = StatusReply {
        unix_millis: reports::millis(now),
        connected_agents: u32::try_from(hub.reports().connected()).unwrap_or(u32::MAX),
        leading: hub.is_serving(),
        cluster: hub.cluster().unwrap_or_default().to_owned(),
        ..StatusReply::default()
    };
    if !reply.leading {
        return reply;
    }
    let wanted = |ns: &str| namespace.is_empty() || ns == namespace;
    let u32_of = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    for p in hub.probeset_figures(now) {
        if !wanted(&p.namespace) {
            continue;
        }
        let f = &p.figures;
        reply.probesets.push(v1::ProbeSetFigures {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            nodes_desired: u32_of(f.desired),
            nodes_ready: u32_of(f.ready),
            nodes_reporting: u32_of(f.reporting),
            events_per_second: f.flow.events_per_second,
            ringbuf_drop_percent: f.flow.ringbuf_drop() * 100.0,
            pairing_drop_percent: f.flow.pairing_drop() * 100.0,
            sampled_out_percent: f.flow.sampled_out() * 100.0,
            ring_bytes_in_use: f.ring_in_use,
            ring_bytes: f.ring_bytes,
            p50_ns: f.p50_ns.unwrap_or(0),
            p99_ns: f.p99_ns.unwrap_or(0),
            problems: f
                .problems
                .iter()
                .map(|n| v1::NodeProblem {
                    node: n.node.clone(),
                    reason: n.reason.into(),
                    message: n.message.clone(),
                })
                .collect(),
            problem_nodes: u32_of(f.problem_nodes),
            probes: f
                .probes
                .iter()
                .map(|pf| v1::ProbeFigures {
                    name: pf.name.clone(),
                    events_per_second: pf.flow.events_per_second,
                    ringbuf_drop_percent: pf.flow.ringbuf_drop() * 100.0,
                    pairing_drop_percent: pf.flow.pairing_drop() * 100.0,
                    sampled_out_percent: pf.flow.sampled_out() * 100.0,
                    p50_ns: pf.p50_ns.unwrap_or(0),
                    p99_ns: pf.p99_ns.unwrap_or(0),
                })
                .collect(),
        });
    }
    let mut slos = hub.stores().slos.state();
    slos.sort_by_key(|s| slo_status::id(s));
    for slo in slos {
        let ns = slo.metadata.namespace.clone().unwrap_or_default();
        if !wanted(&ns) {
            continue;
        }
        let id = slo_status::id(&slo);
        let mut figures = v1::SloFigures {
            namespace: ns,
            name: slo.metadata.name.clone().unwrap_or_default(),
            probeset: slo.spec.target(None).1.to_owned(),
            probe: slo.spec.probe.clone(),
            target: slo.spec.target,
            ..v1::SloFigures::default()
        };
        match hub.reports().evaluate(&id, now) {
            Some(s) => {
                figures.state = s.state.as_str().to_owned();
                figures.sli = s.sli;
                figures.budget_remaining = s.error_budget_remaining;
                figures.burn_fast = s.fast_burn.long_rate;
                figures.burn_slow = s.slow_burn.long_rate;
                figures.observed_latency_ns = s.observed_latency_ns;
                figures.drop_rate = s.drop_rate;
                figures.counting_since_unix_millis = s.counting_since.map_or(0, reports::millis);
                figures.good = s.counts.good;
                figures.total = s.counts.total;
            }
            None => {
                figures.state = hub
                    .slo_problem(&id)
                    .map_or("NoData", |p| p.reason)
                    .to_owned();
            }
        }
        reply.slos.push(figures);
    }
    reply
}

/// Bytes an agent connection may send ahead of the operator reading them.
pub const RECEIVE_WINDOW: u32 = 64 << 10;

/// Streams one agent connection may hold open.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 4;

/// How the agent and query ports are served.
#[derive(Clone)]
pub enum Transport {
    /// TLS with the operator's serving certificate, within bounds
    /// ([`super::tls`]).
    Tls(super::tls::Serving),
    /// No TLS: `--insecure-plaintext-for-local-development`, and in-process
    /// tests.
    Plaintext,
}

/// Serves `AgentService` on `listener` until `shutdown` completes.
pub async fn serve_agents<R: Reviewer>(
    listener: TcpListener,
    api: AgentApi<R>,
    transport: Transport,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let router = Server::builder()
        // Finds agents that vanished without closing their connection.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        // An agent needs one stream; a few allow a reconnect racing the
        // old one. Bounds what one connection can make the server hold.
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .concurrency_limit_per_connection(MAX_STREAMS_PER_CONNECTION as usize)
        // HTTP/2's own default windows (hyper's are 1 MiB): what a
        // connection may send ahead of the operator reading it is what the
        // operator holds for it, and a thousand agents reconnecting at once
        // each send a report at once.
        .initial_stream_window_size(Some(RECEIVE_WINDOW))
        .initial_connection_window_size(Some(RECEIVE_WINDOW))
        .add_service(super::frames::AgentServer::new(api));
    serve_on(router, listener, transport, shutdown).await
}

/// Serves `router` on `listener` over `transport` until `shutdown`.
async fn serve_on(
    router: tonic::transport::server::Router,
    listener: TcpListener,
    transport: Transport,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    match transport {
        Transport::Tls(serving) => {
            router
                .serve_with_incoming_shutdown(super::tls::incoming(listener, serving), shutdown)
                .await
        }
        Transport::Plaintext => {
            router
                .serve_with_incoming_shutdown(
                    TcpIncoming::from(listener).with_nodelay(Some(true)),
                    shutdown,
                )
                .await
        }
    }
}

/// Serves `QueryService` on `listener` until `shutdown` completes.
pub async fn serve_queries(
    listener: TcpListener,
    api: QueryApi,
    transport: Transport,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let router = Server::builder().add_service(QueryServiceServer::new(api));
    serve_on(router, listener, transport, shutdown).await
}
