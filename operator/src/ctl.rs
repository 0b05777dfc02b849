//! `ringwarden`, the user CLI: ProbeSet and SLO figures from the
//! operator's query service, once (`status`) or live (`top`). Formatting
//! is pure; [`run`] talks to the operator.

use std::{fmt::Write as _, process::ExitCode, time::Duration};

use clap::{ArgAction, Parser, Subcommand};
use ringwarden_core::{duration::parse_duration, quantity::format_bytes};
use ringwarden_proto::v1::{StatusReply, StatusRequest, query_service_client::QueryServiceClient};
use tonic::transport::{Channel, Endpoint};

/// ringwarden's command line: what the probes see and lose, and how the
/// SLOs stand, across every node, from the operator.
///
/// The operator serves these figures on its query address, which is
/// loopback only; forward it first:
///
///   kubectl -n ringwarden-system port-forward deploy/ringwarden-operator 9441
///
/// (only the leading replica has figures; if told otherwise, forward to
/// the pod named in `kubectl -n ringwarden-system get lease`), and fetch
/// the CA the operator's certificate is checked against:
///
///   kubectl -n ringwarden-system get configmap ringwarden-operator-ca \
///     -o jsonpath='{.data.ca\.crt}' > ringwarden-ca.crt
#[derive(Debug, Parser)]
#[command(name = "ringwarden", version)]
pub struct Args {
    /// The operator's query service.
    #[arg(
        long,
        global = true,
        default_value = "https://127.0.0.1:9441",
        env = "RINGWARDEN_SERVER"
    )]
    pub server: String,

    /// The CA the operator's certificate must chain to (the ConfigMap
    /// `ringwarden-operator-ca`'s `ca.crt`); no other is trusted.
    #[arg(
        long,
        global = true,
        default_value = "ringwarden-ca.crt",
        env = "RINGWARDEN_CA_FILE"
    )]
    pub ca_file: std::path::PathBuf,

    /// The name the operator's certificate must carry: its Service's DNS
    /// name, whatever address the port-forward gives.
    #[arg(
        long,
        global = true,
        default_value = "ringwarden-operator.ringwarden-system.svc",
        env = "RINGWARDEN_TLS_SERVER_NAME"
    )]
    pub tls_server_name: String,

    /// A Kubernetes token to send (e.g. from `kubectl create token`): an
    /// operator whose query service is reachable beyond port-forward lets
    /// in only tokens allowed to read the namespace asked about.
    #[arg(long, global = true, env = "RINGWARDEN_TOKEN_FILE")]
    pub token_file: Option<std::path::PathBuf>,

    /// Only this namespace (default: all).
    #[arg(long, short = 'n', global = true, env = "RINGWARDEN_QUERY_NAMESPACE")]
    pub namespace: Option<String>,

    /// Also show each probe, and every node problem listed.
    #[arg(long, global = true, action = ArgAction::SetTrue, env = "RINGWARDEN_WIDE")]
    pub wide: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the ProbeSets and SLOs once.
    Status,
    /// A live table of the ProbeSets and SLOs, refreshed until Ctrl-C.
    Top {
        /// Time between refreshes (at least 500ms).
        #[arg(long, default_value = "2s", value_parser = parse_duration, env = "RINGWARDEN_REFRESH")]
        interval: Duration,
    },
}

/// Entry point of the `ringwarden` binary.
pub fn run(args: Args) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(query(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn connect(args: &Args) -> Result<QueryServiceClient<Channel>, String> {
    let server = args.server.as_str();
    let mut endpoint = Endpoint::from_shared(server.to_owned())
        .map_err(|e| format!("{server:?} is not a URL like https://127.0.0.1:9441: {e}"))?
        .connect_timeout(Duration::from_secs(5));
    if server.starts_with("https://") {
        let ca = std::fs::read_to_string(&args.ca_file).map_err(|e| {
            format!(
                "cannot read the operator's CA {} ({e}); fetch it with `kubectl -n \
                 ringwarden-system get configmap ringwarden-operator-ca -o \
                 jsonpath='{{.data.ca\\.crt}}' > ringwarden-ca.crt`, or pass --ca-file",
                args.ca_file.display()
            )
        })?;
        endpoint = endpoint
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(ca))
                    .domain_name(args.tls_server_name.clone()),
            )
            .map_err(|e| format!("TLS settings: {e}"))?;
    }
    let channel = endpoint.connect().await.map_err(|e| {
        // tonic's top-level message is only "transport error".
        let mut why = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            why = format!("{why}: {s}");
            source = s.source();
        }
        format!(
            "cannot reach the operator at {server} ({why}); forward its query port with \
             `kubectl -n ringwarden-system port-forward deploy/ringwarden-operator 9441`"
        )
    })?;
    Ok(QueryServiceClient::new(channel))
}

async fn query(args: &Args) -> Result<(), String> {
    let mut client = connect(args).await?;
    let token = match &args.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the token {}: {e}", path.display()))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let request = |interval: Duration| -> Result<tonic::Request<StatusRequest>, String> {
        let mut r = tonic::Request::new(StatusRequest {
            namespace: args.namespace.clone().unwrap_or_default(),
            interval_ms: u32::try_from(interval.as_millis()).unwrap_or(u32::MAX),
        });
        if let Some(token) = &token {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| "the token file holds characters not allowed in a header")?;
            r.metadata_mut()
                .insert(ringwarden_proto::AUTHORIZATION, value);
        }
        Ok(r)
    };
    match &args.command {
        Command::Status => {
            let reply = client
                .get_status(request(Duration::ZERO)?)
                .await
                .map_err(|s| format!("the operator answered: {}", s.message()))?
                .into_inner();
            print!("{}", render(&reply, args.wide)?);
        }
        Command::Top { interval } => {
            let mut stream = client
                .watch(request(*interval)?)
                .await
                .map_err(|s| format!("the operator answered: {}", s.message()))?
                .into_inner();
            while let Some(reply) = stream
                .message()
                .await
                .map_err(|s| format!("the operator ended the watch: {}", s.message()))?
            {
                let table = render(&reply, args.wide)?;
                // Home, clear: redraw in place like top(1).
                print!("\x1b[H\x1b[2J{}", header(&reply));
                print!("{table}");
            }
        }
    }
    Ok(())
}

fn header(reply: &StatusReply) -> String {
    let secs = reply.unix_millis / 1000;
    format!(
        "ringwarden top — {} agents connected — {:02}:{:02}:{:02} UTC\n\n",
        reply.connected_agents,
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60
    )
}

/// The tables of `reply`; an error when the replica asked does not lead.
pub fn render(reply: &StatusReply, wide: bool) -> Result<String, String> {
    if !reply.leading {
        return Err(
            "this operator replica does not lead, so it has no figures; \
                    port-forward to the leader (`kubectl -n ringwarden-system get lease \
                    ringwarden-operator` names it)"
                .into(),
        );
    }
    let mut out = String::new();
    if !reply.cluster.is_empty() {
        let _ = writeln!(out, "Cluster {}\n", reply.cluster);
    }
    let mut rows = vec![
        vec![
            "NAMESPACE",
            "PROBESET",
            "READY",
            "REPORTING",
            "EVENTS/S",
            "DROP %",
            "UNTIMED %",
            "SAMPLED %",
            "P50",
            "P99",
            "RINGBUF",
            "PROBLEMS",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>(),
    ];
    let mut problems = Vec::new();
    for p in &reply.probesets {
        rows.push(vec![
            p.namespace.clone(),
            p.name.clone(),
            format!("{}/{}", p.nodes_ready, p.nodes_desired),
            p.nodes_reporting.to_string(),
            rate(p.events_per_second),
            percent(p.ringbuf_drop_percent),
            percent(p.pairing_drop_percent),
            percent(p.sampled_out_percent),
            latency(p.p50_ns),
            latency(p.p99_ns),
            format!(
                "{}/{}",
                format_bytes(p.ring_bytes_in_use),
                format_bytes(p.ring_bytes)
            ),
            p.problem_nodes.to_string(),
        ]);
        if wide {
            for probe in &p.probes {
                rows.push(vec![
                    String::new(),
                    format!("  {}", probe.name),
                    String::new(),
                    String::new(),
                    rate(probe.events_per_second),
                    percent(probe.ringbuf_drop_percent),
                    percent(probe.pairing_drop_percent),
                    percent(probe.sampled_out_percent),
                    latency(probe.p50_ns),
                    latency(probe.p99_ns),
                    String::new(),
                    String::new(),
                ]);
            }
        }
        let shown = if wide { p.problems.len() } else { 3 };
        for n in p.problems.iter().take(shown) {
            problems.push(format!(
                "{}/{}  {}: {}: {}",
                p.namespace, p.name, n.node, n.reason, n.message
            ));
        }
        let listed = p.problems.len().min(shown);
        if (p.problem_nodes as usize) > listed {
            problems.push(format!(
                "{}/{}  and {} more nodes",
                p.namespace,
                p.name,
                p.problem_nodes as usize - listed
            ));
        }
    }
    if reply.probesets.is_empty() {
        out.push_str("No ProbeSets.\n");
    } else {
        table(&mut out, &rows);
    }
    if !problems.is_empty() {
        out.push_str("\nNode problems:\n");
        for p in problems {
            let _ = writeln!(out, "  {p}");
        }
    }

    out.push('\n');
    let mut rows = vec![
        vec![
            "NAMESPACE",
            "SLO",
            "PROBE",
            "TARGET",
            "SLI",
            "BUDGET",
            "BURN 1h",
            "BURN 6h",
            "LATENCY",
            "DROPPED",
            "STATE",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>(),
    ];
    for s in &reply.slos {
        rows.push(vec![
            s.namespace.clone(),
            s.name.clone(),
            format!("{}/{}", s.probeset, s.probe),
            format!("{}%", s.target),
            s.sli.map_or("-".into(), |x| format!("{:.3}%", x * 100.0)),
            s.budget_remaining
                .map_or("-".into(), |x| format!("{:.1}%", x * 100.0)),
            s.burn_fast.map_or("-".into(), |x| format!("{x:.2}")),
            s.burn_slow.map_or("-".into(), |x| format!("{x:.2}")),
            s.observed_latency_ns.map_or("-".into(), latency),
            s.drop_rate.map_or("-".into(), |x| percent(x * 100.0)),
            s.state.clone(),
        ]);
    }
    if reply.slos.is_empty() {
        out.push_str("No SLOs.\n");
    } else {
        table(&mut out, &rows);
    }
    Ok(out)
}

/// Left-aligned columns two spaces apart.
fn table(out: &mut String, rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            let _ = write!(line, "{cell:<width$}  ", width = widths[c]);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

fn rate(x: f64) -> String {
    if x >= 1000.0 {
        format!("{:.0}", x)
    } else {
        format!("{x:.1}")
    }
}

fn percent(x: f64) -> String {
    if x == 0.0 {
        "0".into()
    } else if x < 0.01 {
        "<0.01".into()
    } else {
        format!("{x:.2}")
    }
}

/// Three significant digits with a unit; `-` for none.
fn latency(ns: u64) -> String {
    if ns == 0 {
        return "-".into();
    }
    let (v, unit) = match ns {
        0..1_000 => (ns as f64, "ns"),
        1_000..1_000_000 => (ns as f64 / 1e3, "µs"),
        1_000_000..1_000_000_000 => (ns as f64 / 1e6, "ms"),
        _ => (ns as f64 / 1e9, "s"),
    };
    if v >= 100.0 {
        format!("{v:.0}{unit}")
    } else if v >= 10.0 {
        format!("{v:.1}{unit}")
    } else {
        format!("{v:.2}{unit}")
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use ringwarden_proto::v1::{NodeProblem, ProbeSetFigures, SloFigures};

    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Args::command().debug_assert();
        let a =
            Args::try_parse_from(["ringwarden", "top", "--interval", "5s", "-n", "shop"]).unwrap();
        assert!(
            matches!(a.command, Command::Top { interval } if interval == Duration::from_secs(5))
        );
        assert_eq!(a.namespace.as_deref(), Some("shop"));
    }

    #[test]
    fn figures_render_as_aligned_tables() {
        let reply = StatusReply {
            leading: true,
            connected_agents: 3,
            probesets: vec![ProbeSetFigures {
                namespace: "shop".into(),
                name: "web".into(),
                nodes_desired: 4,
                nodes_ready: 3,
                nodes_reporting: 3,
                events_per_second: 12_345.6,
                ringbuf_drop_percent: 0.5,
                p50_ns: 1_500,
                p99_ns: 12_300_000,
                ring_bytes: 3 << 20,
                ring_bytes_in_use: 64 << 10,
                problems: vec![NodeProblem {
                    node: "node-4".into(),
                    reason: "LoadFailed".into(),
                    message: "probe sys: verifier".into(),
                }],
                problem_nodes: 1,
                ..Default::default()
            }],
            slos: vec![SloFigures {
                namespace: "shop".into(),
                name: "fast".into(),
                probeset: "web".into(),
                probe: "sys".into(),
                target: 99.9,
                state: "Met".into(),
                sli: Some(0.99953),
                budget_remaining: Some(0.53),
                burn_fast: Some(0.4),
                ..Default::default()
            }],
            ..Default::default()
        };
        let out = render(&reply, false).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("NAMESPACE  PROBESET  READY"), "{out}");
        assert!(lines[1].contains("3/4"), "{out}");
        assert!(lines[1].contains("12346"), "{out}");
        assert!(
            lines[1].contains("1.50µs") && lines[1].contains("12.3ms"),
            "{out}"
        );
        assert!(
            out.contains("node-4: LoadFailed: probe sys: verifier"),
            "{out}"
        );
        assert!(out.contains("99.953%") && out.contains("53.0%"), "{out}");
        // Columns line up: the header's PROBESET starts where web does.
        assert_eq!(lines[0].find("PROBESET"), lines[1].find("web"));
    }

    #[test]
    fn a_follower_says_where_to_go() {
        let e = render(&StatusReply::default(), false).unwrap_err();
        assert!(e.contains("does not lead"), "{e}");
    }
}
