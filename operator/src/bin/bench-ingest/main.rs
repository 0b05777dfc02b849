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
    config::AgentSettings,
    ingest::auth::{Authenticator, PodPlace, Review, Reviewer},
    ingest::grpc::{self, AgentApi, StreamSettings},
    ingest::publish::{self, Publisher},
    ingest::reports::ProbeRef,
    ingest::tls,
    lease::Leadership,
    metrics::Metrics,
    reconcile::controller::{self, Context, Stores},
    reconcile::render,
    reconcile::slo::SloTarget,
    reconcile::world::World,
    sim::{self, SimAgent},
};
use ringwarden_proto::v1;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

mod agents;
mod serve;

use agents::{Agent, Population};
use serve::serve;

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
