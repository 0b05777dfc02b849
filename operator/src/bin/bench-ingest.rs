//! Report ingest under load: N simulated agents (default 1 000), each with
//! P probes (default 5) of S series, report every interval (default 10 s)
//! over loopback gRPC to an operator running in a child process, so its
//! CPU and memory are its own. The child runs the real agent service,
//! aggregation, SLO evaluators, publisher and ProbeSet status reconcile
//! against an in-process API server that counts writes (and, like a
//! watch, feeds them back into the caches).
//!
//! Prints a table: operator CPU, peak RSS, p99 ingest latency (in the
//! operator, and as agents see it), and status writes per minute.

use std::{
    collections::HashMap,
    convert::Infallible,
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    process::{Command, ExitCode, Stdio},
    sync::{Arc, Mutex},
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
use ringwarden_operator::{
    auth::{Authenticator, PodPlace, Review, Reviewer},
    config::AgentSettings,
    controller::{self, Context, Stores},
    grpc::{self, AgentApi, StreamSettings},
    lease::Leadership,
    metrics::Metrics,
    publish::{self, Publisher},
    render,
    reports::ProbeRef,
    sim::{self, SimAgent},
    slo::SloTarget,
    world::World,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tonic::transport::Endpoint;

/// Simulated agents report to an operator process; see the file's docs.
#[derive(Debug, Parser)]
#[command(name = "bench-ingest")]
struct Args {
    /// Simulated agents (nodes).
    #[arg(long, default_value_t = 1000, env = "RINGWARDEN_BENCH_AGENTS")]
    agents: usize,
    /// Probes per agent (one ProbeSet; one SLO per probe).
    #[arg(long, default_value_t = 5, env = "RINGWARDEN_BENCH_PROBES")]
    probes: usize,
    /// Histogram series per probe.
    #[arg(long, default_value_t = 4, env = "RINGWARDEN_BENCH_SERIES")]
    series: usize,
    /// Report interval.
    #[arg(long, default_value = "10s", value_parser = parse_duration, env = "RINGWARDEN_BENCH_INTERVAL")]
    interval: Duration,
    /// How long to measure, after one interval of warm-up.
    #[arg(long, default_value = "60s", value_parser = parse_duration, env = "RINGWARDEN_BENCH_DURATION")]
    duration: Duration,
    /// Internal: run as the operator.
    #[arg(long, hide = true)]
    serve: bool,
}

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
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let result = if args.serve {
        runtime.block_on(serve(args))
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

async fn serve(args: Args) -> Result<(), String> {
    let started = Instant::now();
    let mut ps: ProbeSet = serde_json::from_value(json!({
        "apiVersion": "ringwarden.dev/v1alpha1", "kind": "ProbeSet",
        "metadata": {"name": "bench", "namespace": "bench", "generation": 1, "uid": "u-ps"},
        "spec": probeset_spec(args.probes),
    }))
    .map_err(|e| e.to_string())?;
    ps.spec.report_interval = args.interval;
    let slos: Vec<Slo> = (0..args.probes)
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
        (0..args.agents)
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
    let stores = Stores {
        probesets: ps_store.clone(),
        nodes: node_store,
        slos: slo_store,
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
    let server = tokio::spawn(grpc::serve_agents(
        listener,
        api,
        grpc::Transport::Plaintext,
        stopped(),
    ));
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

/// What the agents saw.
#[derive(Default)]
struct Seen {
    round_trip: Histogram,
    reports: u64,
    failures: u64,
}

fn drive(args: Args, runtime: &tokio::runtime::Runtime) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args([
            "--serve",
            "--agents",
            &args.agents.to_string(),
            "--probes",
            &args.probes.to_string(),
            "--interval",
            &format!("{}ms", args.interval.as_millis()),
        ])
        .env("RINGWARDEN_BENCH_DURATION", "0s")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the operator process: {e}"))?;
    let pid = child.id();
    let mut stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
    let mut line = String::new();
    stdout.read_line(&mut line).map_err(|e| e.to_string())?;
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("listening ")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("unexpected first line from the operator: {line:?}"))?;

    let seen = Arc::new(Mutex::new(Seen::default()));
    let measuring = Arc::new(Mutex::new(false));
    let (cpu_before, wall_before, cpu_after, wall_after) = runtime.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..args.agents {
            let (seen, measuring) = (Arc::clone(&seen), Arc::clone(&measuring));
            let (interval, probes, series) = (args.interval, args.probes, args.series);
            // Agents start spread over one interval, as DaemonSet pods do.
            let offset = interval * u32::try_from(i).unwrap_or(0)
                / u32::try_from(args.agents.max(1)).unwrap_or(1);
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(offset).await;
                if let Err(e) =
                    agent(addr, i, probes, series, interval, seen.clone(), measuring).await
                {
                    seen.lock().unwrap_or_else(|e| e.into_inner()).failures += 1;
                    eprintln!("agent {i}: {e}");
                }
            }));
        }
        // One interval of warm-up: every agent connected and reported.
        tokio::time::sleep(args.interval + args.interval / 2).await;
        let before = (cpu_seconds(pid), Instant::now());
        *measuring.lock().unwrap_or_else(|e| e.into_inner()) = true;
        tokio::time::sleep(args.duration).await;
        *measuring.lock().unwrap_or_else(|e| e.into_inner()) = false;
        let after = (cpu_seconds(pid), Instant::now());
        for t in tasks {
            t.abort();
        }
        (before.0, before.1, after.0, after.1)
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
    stdout.read_line(&mut line).map_err(|e| e.to_string())?;
    let served: Served =
        serde_json::from_str(line.trim()).map_err(|e| format!("operator stats {line:?}: {e}"))?;
    let _ = child.wait();

    let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    let wall = wall_after.duration_since(wall_before).as_secs_f64();
    let cpu = (cpu_after - cpu_before) / wall * 100.0;
    let objects = served.writes.len().max(1);
    let total_writes: usize = served.writes.values().map(Vec::len).sum();
    let min_gap = served
        .writes
        .values()
        .flat_map(|times| times.windows(2).map(|w| w[1] - w[0]))
        .fold(f64::INFINITY, f64::min);
    let per_minute = total_writes as f64 / served.ran.max(1.0) * 60.0;
    let ms = |ns: Option<u64>| ns.map_or("-".into(), |n| format!("{:.2} ms", n as f64 / 1e6));
    println!(
        "ringwarden ingest: {} agents × {} probes × {} series, a report every {:?}, {:.0} s measured",
        args.agents, args.probes, args.series, args.interval, wall
    );
    println!();
    let rows = [
        (
            "operator CPU (one core = 100 %)",
            format!("{cpu:.1} %"),
            String::new(),
        ),
        (
            "operator RSS, peak / at the end",
            format!("{:.1} / {:.1} MiB", rss_peak / 1024.0, rss_now / 1024.0),
            "< 256 MiB".into(),
        ),
        (
            "ingest p99 in the operator",
            format!("≤ {:.2} ms", served.ingest_p99_le * 1e3),
            "< 20 ms".into(),
        ),
        (
            "ingest p99, agent round trip",
            ms(seen.round_trip.percentile(0.99)),
            "< 20 ms".into(),
        ),
        (
            "ingest p50, agent round trip",
            ms(seen.round_trip.percentile(0.5)),
            String::new(),
        ),
        (
            "reports measured / in all",
            format!("{} / {}", seen.reports, served.reports),
            format!("{} failed agents", seen.failures),
        ),
        (
            "status writes per minute",
            format!("{per_minute:.1} ({objects} objects, {:.0} s)", served.ran),
            format!(
                "≤ {:.0}",
                objects as f64 * 60.0 / args.interval.as_secs_f64().max(10.0)
            ),
        ),
        (
            "shortest gap between writes to one object",
            if min_gap.is_finite() {
                format!("{min_gap:.1} s")
            } else {
                "-".into()
            },
            format!("≥ {:?}", args.interval.max(Duration::from_secs(10))),
        ),
    ];
    println!("{:<44}{:<24}target", "figure", "value");
    for (name, value, target) in rows {
        println!("{name:<44}{value:<24}{target}");
    }
    if seen.failures > 0 {
        return Err(format!("{} agents failed", seen.failures));
    }
    Ok(())
}

async fn agent(
    addr: SocketAddr,
    i: usize,
    probes: usize,
    series: usize,
    interval: Duration,
    seen: Arc<Mutex<Seen>>,
    measuring: Arc<Mutex<bool>>,
) -> Result<(), String> {
    let ids = (0..probes)
        .map(|p| ProbeRef {
            namespace: "bench".into(),
            probeset: "bench".into(),
            probe: format!("p{p}"),
        })
        .collect();
    let mut a = SimAgent::new(&format!("node-{i}"), &format!("boot-{i}"), ids);
    // Until the operator restored its state it answers UNAVAILABLE; agents
    // retry with backoff, on a new connection.
    let mut attempt = 0;
    let mut c = loop {
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        match sim::connect(channel, Some(&format!("bench:{}", a.node)), a.hello()).await {
            Ok(c) => break c,
            Err(s) if s.code() == tonic::Code::Unavailable && attempt < 20 => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100 << attempt.min(5))).await;
            }
            Err(s) => return Err(s.to_string()),
        }
    };
    c.until_config(&mut a).await.map_err(|e| e.to_string())?;
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1));
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        for p in 0..probes {
            for s in 0..series {
                let latencies: Vec<u64> = (0..50).map(|_| rng.latency()).collect();
                a.probes[p].observe(&format!("s{s}"), &latencies);
            }
        }
        let unix_ms = ringwarden_operator::reports::millis(SystemTime::now());
        let report = a.report(unix_ms);
        let sent = Instant::now();
        c.report(&mut a, report).await.map_err(|e| e.to_string())?;
        let rtt = sent.elapsed();
        if *measuring.lock().unwrap_or_else(|e| e.into_inner()) {
            let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.round_trip
                .record(u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX));
            seen.reports += 1;
        }
    }
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
