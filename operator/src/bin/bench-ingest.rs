//! Report ingest under load, over TLS: simulated agents report every
//! interval (default 10 s) to an operator running in a child process, so
//! its CPU and memory are its own. The child runs the real agent service
//! behind the real TLS listener (its own CA and serving certificate, as the
//! operator makes them), aggregation, SLO evaluators, publisher and
//! ProbeSet status reconcile against an in-process API server that counts
//! writes (and, like a watch, feeds them back into the caches). Agents pin
//! the CA as real agents do.
//!
//! Each point (`--points 1000x5x64,...`: agents × probes × series) runs in
//! a fresh operator: one interval of warm-up, then `--duration` measured,
//! then every agent drops its connection at once and reconnects with the
//! agent's own backoff, and the time until each has a report acknowledged
//! again is measured. Prints one row per point: operator CPU, peak RSS,
//! p99 ingest latency (in the operator, and as agents see it), status
//! writes per minute, and the reconnect times.

use std::{
    collections::HashMap,
    convert::Infallible,
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    process::{Command, ExitCode, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use axum::http::{Request, Response};
use clap::Parser;
use k8s_openapi::{api::core::v1::Node, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use kube::{
    Client,
    api::{PartialObjectMeta, PartialObjectMetaExt},
    client::Body,
    runtime::{
        reflector::{self, ObjectRef, store::Writer},
        watcher,
    },
};
use prometheus::Registry;
use ringwarden_core::{duration::parse_duration, histogram::Histogram};
use ringwarden_crds::{ProbeSet, Slo};
use ringwarden_ebpf_common::{HIST_BUCKETS, bucket_index};
use ringwarden_operator::{
    auth::{Authenticator, PodPlace, Review, Reviewer},
    config::AgentSettings,
    controller::{self, Context, Stores},
    grpc::{self, AgentApi, StreamSettings},
    ingest::tls,
    lease::Leadership,
    metrics::Metrics,
    publish::{self, Publisher},
    render,
    reports::ProbeRef,
    sim::{self, SimAgent},
    slo::SloTarget,
    world::World,
};
use ringwarden_proto::v1;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// One point of the benchmark: agents × probes (one SLO each) × series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Point {
    agents: usize,
    probes: usize,
    series: usize,
}

impl std::str::FromStr for Point {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let n: Vec<usize> = s
            .split('x')
            .map(|n| n.trim().parse::<usize>())
            .collect::<Result<_, _>>()
            .map_err(|_| format!("{s:?} is not AGENTSxPROBESxSERIES, like 1000x5x64"))?;
        match n.as_slice() {
            &[agents, probes, series] if agents > 0 && probes > 0 && series > 0 => Ok(Self {
                agents,
                probes,
                series,
            }),
            _ => Err(format!(
                "{s:?} is not AGENTSxPROBESxSERIES with each above zero, like 1000x5x64"
            )),
        }
    }
}

/// Simulated agents report to an operator process; see the file's docs.
#[derive(Debug, Parser)]
#[command(name = "bench-ingest")]
struct Args {
    /// Points to measure, each in a fresh operator: AGENTSxPROBESxSERIES,
    /// comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000x5x64,2000x5x16",
        env = "RINGWARDEN_BENCH_POINTS"
    )]
    points: Vec<Point>,
    /// Report interval.
    #[arg(long, default_value = "10s", value_parser = parse_duration, env = "RINGWARDEN_BENCH_INTERVAL")]
    interval: Duration,
    /// How long to measure each point, after one interval of warm-up.
    #[arg(long, default_value = "60s", value_parser = parse_duration, env = "RINGWARDEN_BENCH_DURATION")]
    duration: Duration,
    /// Internal: run as the operator of this many agents and probes,
    /// serving the certificate in this directory.
    #[arg(long, hide = true)]
    serve: Option<Point>,
    #[arg(long, hide = true)]
    tls_dir: Option<std::path::PathBuf>,
}

/// The name the serving certificate carries and agents verify.
const SERVER_NAME: &str = "ringwarden-operator.ringwarden-system.svc";
/// The chart's default memory limit of the operator.
const MEMORY_LIMIT_MIB: f64 = 256.0;

/// What the operator process reports when told to stop.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Served {
    /// Seconds the operator ran.
    ran: f64,
    reports: u64,
    /// Upper bound (s) of the ingest histogram bucket holding the p99.
    ingest_p99_le: f64,
    /// Status writes by object (`kind namespace/name`): their times, in
    /// seconds since the operator started.
    writes: HashMap<String, Vec<f64>>,
    /// Connections the TLS listener closed unserved, by reason.
    refused: HashMap<String, u64>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let result = if let Some(point) = args.serve {
        runtime.block_on(serve(
            point,
            args.interval,
            args.tls_dir.unwrap_or_default(),
        ))
    } else {
        drive(args, &runtime)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------
// The operator process

/// Every token `bench:<node>` belongs to the agent ServiceAccount, bound to
/// `<node>`: the review's cost is the API server's, and positive reviews
/// are cached anyway.
struct AcceptAll;

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

fn probeset_spec(probes: usize) -> Value {
    json!({
        "probes": (0..probes).map(|i| json!({"name": format!("p{i}"), "kind": "syscalls"})).collect::<Vec<_>>(),
        "reportInterval": "10s",
    })
}

async fn serve(
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
        nodes: vec![[("pool".to_string(), "bench".to_string())].into()],
        slos: stores
            .slos
            .state()
            .iter()
            .filter_map(|s| SloTarget::from_slo(s))
            .collect(),
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

fn fill<K>(writer: &mut Writer<K>, objects: Vec<K>)
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
fn fake_api(
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

// ---------------------------------------------------------------------------
// The agents

/// A cheap deterministic generator of latencies.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Roughly log-normal: most events within two octaves of 64 µs, tails
    /// from 4 µs to 1 ms, as a syscall or a connect on a busy node. Over
    /// minutes a series fills 100 to 200 buckets.
    fn latency(&mut self) -> u64 {
        let sum: u64 = (0..4).map(|_| self.next() % 1024).sum();
        let octaves = sum as f64 / 4096.0 * 8.0;
        (4096.0 * octaves.exp2()) as u64
    }
}

/// The latencies every agent reports: one population of series, grown
/// continuously and shared, so the driver's cost does not grow with agents
/// × series and its own CPU stays out of the round trips it measures. The
/// operator does not compare nodes' histograms; identical ones cost it what
/// different ones would.
struct Population {
    /// Per probe, per series: cumulative bucket counts, sum and max.
    dense: Vec<Vec<(Vec<u64>, u64, u64)>>,
    rng: XorShift,
    /// Events added so far per series, and how many of them within the
    /// SLOs' 5 ms.
    events: u64,
    good: u64,
    /// The histograms as reports carry them, per probe.
    wire: Arc<Vec<Vec<v1::SeriesHistogram>>>,
}

impl Population {
    /// Series that already ran for a while: a few thousand events each,
    /// 100 to 200 buckets populated.
    fn new(probes: usize, series: usize) -> Self {
        let mut p = Self {
            dense: vec![vec![(vec![0; HIST_BUCKETS], 0, 0); series]; probes],
            rng: XorShift(0x9e37_79b9_7f4a_7c15),
            events: 0,
            good: 0,
            wire: Arc::new(Vec::new()),
        };
        p.add(2_000);
        p
    }

    /// Adds `n` events to every series.
    fn add(&mut self, n: usize) {
        for probe in &mut self.dense {
            for (buckets, sum, max) in probe.iter_mut() {
                for _ in 0..n {
                    let ns = self.rng.latency();
                    buckets[bucket_index(ns) as usize] += 1;
                    *sum += ns;
                    *max = (*max).max(ns);
                }
            }
        }
        // Every series gets the same number; count the good ones in one.
        self.events += n as u64;
        self.good += n as u64; // latencies stay below 5 ms (see `latency`)
        self.wire = Arc::new(
            self.dense
                .iter()
                .map(|probe| {
                    probe
                        .iter()
                        .enumerate()
                        .map(|(s, (buckets, sum, max))| {
                            let (index, count): (Vec<u32>, Vec<u64>) = buckets
                                .iter()
                                .enumerate()
                                .filter(|(_, n)| **n > 0)
                                .map(|(i, n)| (i as u32, *n))
                                .unzip();
                            v1::SeriesHistogram {
                                series: format!("s{s}"),
                                histogram: Some(v1::Histogram {
                                    bucket_index: index,
                                    bucket_count: count,
                                    sum_ns: *sum,
                                    max_ns: *max,
                                    errors: 0,
                                }),
                            }
                        })
                        .collect()
                })
                .collect(),
        );
    }
}

/// What the agents saw.
#[derive(Default)]
struct Seen {
    round_trip: Histogram,
    reports: u64,
    failures: u64,
    /// From the moment the connections dropped to each agent's first
    /// acknowledged report after it, in ns.
    reconnected: Vec<u64>,
    /// Connection attempts that failed while reconnecting.
    retries: u64,
}

/// How one point went.
struct Row {
    point: Point,
    cpu_percent: f64,
    rss_peak_mib: f64,
    rss_end_mib: f64,
    served: Served,
    round_trip_p50_ms: Option<f64>,
    round_trip_p99_ms: Option<f64>,
    reports: u64,
    failures: u64,
    reconnected: Vec<u64>,
    retries: u64,
    measured_s: f64,
}

fn drive(args: Args, runtime: &tokio::runtime::Runtime) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("rw-bench-ingest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let now = SystemTime::now();
    let ca = tls::new_ca(now).map_err(|e| e.to_string())?;
    let issued = tls::issue(&ca.key, &[SERVER_NAME.to_owned()], now).map_err(|e| e.to_string())?;
    for (file, pem) in [("tls.crt", &issued.pem.cert), ("tls.key", &issued.pem.key)] {
        std::fs::write(dir.join(file), pem).map_err(|e| e.to_string())?;
    }
    let client_tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca.cert))
        .domain_name(SERVER_NAME);

    let mut rows = Vec::new();
    let mut failed = None;
    for &point in &args.points {
        eprintln!("bench-ingest: {point:?}");
        match run_point(&args, point, &dir, &client_tls, runtime) {
            Ok(row) => {
                if row.failures > 0 {
                    failed = Some(format!("{} agents failed at {point:?}", row.failures));
                }
                rows.push(row);
            }
            Err(e) => {
                failed = Some(format!("{point:?}: {e}"));
                break;
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    print_rows(&args, &rows);
    failed.map_or(Ok(()), Err)
}

fn run_point(
    args: &Args,
    point: Point,
    tls_dir: &std::path::Path,
    client_tls: &ClientTlsConfig,
    runtime: &tokio::runtime::Runtime,
) -> Result<Row, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args([
            "--serve",
            &format!("{}x{}x{}", point.agents, point.probes, point.series),
            "--interval",
            &format!("{}ms", args.interval.as_millis()),
            "--tls-dir",
        ])
        .arg(tls_dir)
        .env_remove("RINGWARDEN_BENCH_POINTS")
        // As the chart runs the operator.
        .env("MALLOC_ARENA_MAX", "2")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the operator process: {e}"))?;
    let pid = child.id();
    let mut stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
    let mut line = String::new();
    // A profiler wrapping the operator may print first.
    while stdout.read_line(&mut line).map_err(|e| e.to_string())? > 0
        && !line.starts_with("listening ")
    {
        line.clear();
    }
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("listening ")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("unexpected first line from the operator: {line:?}"))?;
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(10))
        .tls_config(client_tls.clone())
        .map_err(|e| e.to_string())?;

    let seen = Arc::new(Mutex::new(Seen::default()));
    let measuring = Arc::new(AtomicBool::new(false));
    let (reconnect_tx, reconnect_rx) = tokio::sync::watch::channel(None::<Instant>);
    let population = Arc::new(Mutex::new(Population::new(point.probes, point.series)));
    let (before, after) = runtime.block_on(async {
        // Fifty events per series per interval, added a tenth at a time.
        let grow = tokio::spawn({
            let (population, interval) = (Arc::clone(&population), args.interval);
            async move {
                let mut tick = tokio::time::interval(interval / 10);
                loop {
                    tick.tick().await;
                    population.lock().unwrap_or_else(|e| e.into_inner()).add(5);
                }
            }
        });
        let mut tasks = vec![grow];
        for i in 0..point.agents {
            let (seen, measuring) = (Arc::clone(&seen), Arc::clone(&measuring));
            let (endpoint, reconnect) = (endpoint.clone(), reconnect_rx.clone());
            let population = Arc::clone(&population);
            let interval = args.interval;
            // Agents start spread over one interval, as DaemonSet pods do.
            let offset =
                interval * u32::try_from(i).unwrap_or(0) / u32::try_from(point.agents).unwrap_or(1);
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(offset).await;
                let agent = Agent {
                    endpoint,
                    i,
                    point,
                    interval,
                    seen: Arc::clone(&seen),
                    measuring,
                    population,
                };
                if let Err(e) = agent.run(reconnect).await {
                    seen.lock().unwrap_or_else(|e| e.into_inner()).failures += 1;
                    eprintln!("agent {i}: {e}");
                }
            }));
        }
        // One interval of warm-up: every agent connected and reported.
        tokio::time::sleep(args.interval + args.interval / 2).await;
        let before = (cpu_seconds(pid), Instant::now());
        measuring.store(true, Ordering::SeqCst);
        tokio::time::sleep(args.duration).await;
        measuring.store(false, Ordering::SeqCst);
        let after = (cpu_seconds(pid), Instant::now());
        // Every connection drops at once, as when a network partition
        // heals or the operator's node fails over.
        let _ = reconnect_tx.send(Some(Instant::now()));
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            let done = {
                let s = seen.lock().unwrap_or_else(|e| e.into_inner());
                s.reconnected.len() as u64 + s.failures >= point.agents as u64
            };
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for t in tasks {
            t.abort();
        }
        (before, after)
    });
    let rss_peak = status_kib(pid, "VmHWM:");
    let rss_now = status_kib(pid, "VmRSS:");
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(b"stop\n")
        .map_err(|e| e.to_string())?;
    line.clear();
    while stdout.read_line(&mut line).map_err(|e| e.to_string())? > 0 && !line.starts_with('{') {
        line.clear();
    }
    let served: Served =
        serde_json::from_str(line.trim()).map_err(|e| format!("operator stats {line:?}: {e}"))?;
    let _ = child.wait();

    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    let wall = after.1.duration_since(before.1).as_secs_f64();
    let ms = |ns: Option<u64>| ns.map(|n| n as f64 / 1e6);
    Ok(Row {
        point,
        cpu_percent: (after.0 - before.0) / wall * 100.0,
        rss_peak_mib: rss_peak / 1024.0,
        rss_end_mib: rss_now / 1024.0,
        served,
        round_trip_p50_ms: ms(seen.round_trip.percentile(0.5)),
        round_trip_p99_ms: ms(seen.round_trip.percentile(0.99)),
        reports: seen.reports,
        failures: seen.failures,
        reconnected: std::mem::take(&mut seen.reconnected),
        retries: seen.retries,
        measured_s: wall,
    })
}

fn print_rows(args: &Args, rows: &[Row]) {
    println!(
        "ringwarden ingest over TLS: a report every {:?}, {:.0} s measured per point",
        args.interval,
        args.duration.as_secs_f64()
    );
    println!();
    println!(
        "{:<16}{:>9}{:>8}{:>16}{:>10}{:>10}{:>10}{:>22}{:>10}{:>10}",
        "point",
        "series",
        "CPU %",
        "RSS peak/end",
        "op p99",
        "RTT p50",
        "RTT p99",
        "reconnect p50/p99/all",
        "retries",
        "writes/m"
    );
    let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
    for r in rows {
        let p = r.point;
        let mut back = r.reconnected.clone();
        back.sort_unstable();
        let at = |q: f64| {
            back.get(((back.len() as f64 * q).ceil() as usize).saturating_sub(1))
                .map(|&ns| ns as f64 / 1e9)
        };
        let writes: usize = r.served.writes.values().map(Vec::len).sum();
        println!(
            "{:<16}{:>9}{:>8.1}{:>16}{:>10}{:>10}{:>10}{:>22}{:>10}{:>10.1}",
            format!("{}x{}x{}", p.agents, p.probes, p.series),
            p.agents * p.probes * p.series,
            r.cpu_percent,
            format!("{:.0}/{:.0} MiB", r.rss_peak_mib, r.rss_end_mib),
            format!("≤{:.2}", r.served.ingest_p99_le * 1e3),
            f(r.round_trip_p50_ms),
            f(r.round_trip_p99_ms),
            format!("{}/{}/{} s", f(at(0.5)), f(at(0.99)), f(at(1.0))),
            r.retries,
            writes as f64 / r.served.ran.max(1.0) * 60.0,
        );
    }
    println!();
    println!(
        "latencies in ms; targets: RTT p99 < 20 ms, RSS peak < {MEMORY_LIMIT_MIB:.0} MiB (the \
         chart's limit), status writes ≤ one per object per report interval"
    );
    for r in rows {
        let p = r.point;
        let reconnected = r.reconnected.len();
        let objects = r.served.writes.len().max(1);
        let per_minute: f64 = r.served.writes.values().map(Vec::len).sum::<usize>() as f64
            / r.served.ran.max(1.0)
            * 60.0;
        let allowed = objects as f64 * 60.0 / args.interval.as_secs_f64().max(10.0);
        let min_gap = r
            .served
            .writes
            .values()
            .flat_map(|times| times.windows(2).map(|w| w[1] - w[0]))
            .fold(f64::INFINITY, f64::min);
        let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
        println!(
            "{}x{}x{}: RTT p99 {}; RSS {}; writes {} ({objects} objects, shortest gap {min_gap:.1} s); \
             {} reports measured over {:.0} s, {} in all; {reconnected}/{} agents back; \
             refused connections {:?}",
            p.agents,
            p.probes,
            p.series,
            verdict(r.round_trip_p99_ms.is_some_and(|v| v < 20.0)),
            verdict(r.rss_peak_mib < MEMORY_LIMIT_MIB),
            verdict(per_minute <= allowed + 1e-9),
            r.reports,
            r.measured_s,
            r.served.reports,
            p.agents,
            r.served.refused,
        );
    }
}

/// One simulated agent.
struct Agent {
    endpoint: Endpoint,
    i: usize,
    point: Point,
    interval: Duration,
    seen: Arc<Mutex<Seen>>,
    measuring: Arc<AtomicBool>,
    population: Arc<Mutex<Population>>,
}

impl Agent {
    async fn run(
        self,
        mut reconnect: tokio::sync::watch::Receiver<Option<Instant>>,
    ) -> Result<(), String> {
        let ids = (0..self.point.probes)
            .map(|p| ProbeRef {
                namespace: "bench".into(),
                probeset: "bench".into(),
                probe: format!("p{p}"),
            })
            .collect();
        let mut a = SimAgent::new(
            &format!("node-{}", self.i),
            &format!("boot-{}", self.i),
            ids,
        );
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15 ^ (self.i as u64 + 1));
        let mut c = self.open(&a, &mut rng, false).await?;
        c.until_config(&mut a).await.map_err(|e| e.to_string())?;
        let mut tick = tokio::time::interval(self.interval);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let report = self.report(&mut a);
                    let sent = Instant::now();
                    c.report(&mut a, report).await.map_err(|e| e.to_string())?;
                    let rtt = sent.elapsed();
                    if self.measuring.load(Ordering::SeqCst) {
                        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
                        seen.round_trip
                            .record(u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX));
                        seen.reports += 1;
                    }
                }
                Ok(()) = reconnect.changed() => {
                    let Some(dropped) = *reconnect.borrow_and_update() else {
                        continue;
                    };
                    drop(c);
                    c = self.open(&a, &mut rng, true).await?;
                    // The report the break interrupted, resent at once as
                    // an agent resends what it buffered.
                    let report = self.report(&mut a);
                    c.report(&mut a, report).await.map_err(|e| e.to_string())?;
                    let back = u64::try_from(dropped.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    self.seen.lock().unwrap_or_else(|e| e.into_inner()).reconnected.push(back);
                }
            }
        }
    }

    /// The next report: the population's histograms, and counters and
    /// threshold counts that agree with them.
    fn report(&self, a: &mut SimAgent) -> v1::Report {
        let (wire, events, good) = {
            let p = self.population.lock().unwrap_or_else(|e| e.into_inner());
            (Arc::clone(&p.wire), p.events, p.good)
        };
        let n = events * self.point.series as u64;
        for probe in &mut a.probes {
            probe.counters.observed = n;
            probe.counters.aggregated = n;
            for (_, _, g, total) in probe.exact.values_mut() {
                (*g, *total) = (good * self.point.series as u64, n);
            }
        }
        let mut report = a.report(ringwarden_operator::reports::millis(SystemTime::now()));
        for (p, histograms) in report.probes.iter_mut().zip(wire.iter()) {
            p.histograms.clone_from(histograms);
        }
        report
    }

    /// A new connection and an accepted stream, retried with the agent's
    /// backoff (`node-agent/src/uplink.rs`): full jitter over 1 s doubling
    /// to 30 s, at least 100 ms; after a lost stream it waits before the
    /// first attempt too.
    async fn open(
        &self,
        a: &SimAgent,
        rng: &mut XorShift,
        after_loss: bool,
    ) -> Result<sim::Connection, String> {
        let mut failures: u32 = 0;
        if after_loss {
            tokio::time::sleep(backoff(0, rng)).await;
        }
        loop {
            let attempt = async {
                let channel = self.endpoint.connect().await.map_err(|e| e.to_string())?;
                sim::connect(channel, Some(&format!("bench:{}", a.node)), a.hello())
                    .await
                    .map_err(|s| s.to_string())
            };
            match attempt.await {
                Ok(c) => return Ok(c),
                Err(e) if failures >= 20 => return Err(e),
                Err(_) => {
                    if after_loss {
                        self.seen.lock().unwrap_or_else(|e| e.into_inner()).retries += 1;
                    }
                    tokio::time::sleep(backoff(failures, rng)).await;
                    failures += 1;
                }
            }
        }
    }
}

fn backoff(failures: u32, rng: &mut XorShift) -> Duration {
    let cap = Duration::from_secs(1)
        .saturating_mul(1u32 << failures.min(5))
        .min(Duration::from_secs(30));
    let fraction = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
    cap.mul_f64(fraction).max(Duration::from_millis(100))
}

/// CPU seconds (user + system) of process `pid` so far.
fn cpu_seconds(pid: u32) -> f64 {
    // USER_HZ, the unit of /proc's times, is 100 on every Linux ABI.
    const TICKS: f64 = 100.0;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which may hold spaces: state is 3rd.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| {
        fields
            .get(n - 3)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (field(14) + field(15)) / TICKS
}

/// A `/proc/<pid>/status` figure in KiB.
fn status_kib(pid: u32, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}
