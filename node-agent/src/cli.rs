//! Command line of `ringwarden-agent`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};
use ringwarden_core::duration::parse_duration;

/// ringwarden's node agent: loads eBPF latency probes declared in ProbeSet
/// manifests, counts every event they see and every event they lose, and
/// serves the figures as a table and as Prometheus metrics.
#[derive(Debug, Parser)]
#[command(name = "ringwarden-agent", version, propagate_version = true)]
pub struct Args {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "RINGWARDEN_LOG_FORMAT", global = true)]
    pub log_format: LogFormat,

    /// Log filter, e.g. `info` or `ringwarden_node_agent=debug`. The
    /// default leaves out the Kubernetes client's own line per failed
    /// request: the agent logs each failure with what it means, at most
    /// once a minute for the pod watch.
    #[arg(
        long,
        default_value = "info,kube_client::client::builder=off",
        env = "RINGWARDEN_LOG",
        global = true
    )]
    pub log: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the probes of ProbeSet manifests on this machine, without
    /// Kubernetes, printing a latency table every interval.
    ///
    /// Needs root, or CAP_BPF and CAP_PERFMON, and a kernel with BTF
    /// (/sys/kernel/btf/vmlinux, Linux >= 5.8).
    Standalone(StandaloneArgs),

    /// Run as the DaemonSet agent: the probes of the operator's agent
    /// configuration (a mounted ConfigMap) that apply to this node, kept in
    /// step with the file without restarting, with `/metrics`.
    Node(NodeArgs),
}

#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// The agent configuration the operator renders (YAML).
    #[arg(
        long,
        env = "RINGWARDEN_CONFIG",
        default_value = "/etc/ringwarden/agent-config.yaml"
    )]
    pub config: PathBuf,

    /// This node's name (in a pod: from the downward API, spec.nodeName).
    #[arg(long, env = "RINGWARDEN_NODE_NAME")]
    pub node_name: String,

    /// Node labels as `key=value,...`, instead of reading them from the
    /// Kubernetes API (outside a cluster; pod selectors then cannot apply).
    #[arg(long, env = "RINGWARDEN_NODE_LABELS", value_delimiter = ',', value_parser = parse_label)]
    pub node_labels: Vec<(String, String)>,

    /// Address for Prometheus `/metrics` and `/healthz`; `off` disables it.
    #[arg(long, default_value = "0.0.0.0:9464", value_parser = parse_metrics_addr, env = "RINGWARDEN_METRICS_ADDR")]
    pub metrics_addr: MetricsAddr,

    /// Leave peer addresses out of `/metrics`: a `tcpRetransmit` series
    /// `10.0.3.7:443` is shown as `port 443` (series of one port merged),
    /// so whoever may scrape the agent learns no tenant's peers. Events and
    /// reports to the operator keep the addresses.
    #[arg(long, env = "RINGWARDEN_METRICS_WITHOUT_ADDRESSES")]
    pub metrics_without_addresses: bool,

    /// How often to read the kernel counters for `/metrics`.
    #[arg(long, default_value = "10s", value_parser = parse_duration, env = "RINGWARDEN_INTERVAL")]
    pub interval: Duration,

    /// How often to re-read the configuration and node labels, look for
    /// the cgroups of new pods, and retry failed probes that are due (each
    /// failure doubles the wait, from 1s up to 5m). Pods themselves are
    /// watched, not polled.
    #[arg(long, default_value = "5s", value_parser = parse_duration, env = "RINGWARDEN_RELOAD_INTERVAL")]
    pub reload_interval: Duration,

    /// The kernel's BTF, read to load the probes. A missing or unreadable
    /// file is reported per probe and retried; the agent keeps running.
    #[arg(long, default_value = crate::probes::KERNEL_BTF, env = "RINGWARDEN_KERNEL_BTF")]
    pub kernel_btf: PathBuf,

    /// Where the kubelet's `kubepods` (cgroupfs driver) or `kubepods.slice`
    /// (systemd driver) cgroup lives; default: the cgroup v2 mount. Set it
    /// when the kubelet runs with `--cgroup-root`.
    #[arg(long, env = "RINGWARDEN_POD_CGROUP_ROOT")]
    pub pod_cgroup_root: Option<PathBuf>,

    /// The operator's agent service, like
    /// `https://ringwarden-operator.ringwarden-system.svc:9440`: report there
    /// and run the configuration it pushes. Unset: the file alone.
    #[arg(long, env = "RINGWARDEN_OPERATOR_ADDR", value_parser = parse_operator_addr)]
    pub operator_addr: Option<String>,

    /// The CA (PEM) the operator's certificate must chain to; no other is
    /// trusted. The chart mounts it from the ConfigMap
    /// `ringwarden-operator-ca`. Read again on every connect, so a rotated
    /// CA needs no restart.
    #[arg(long, env = "RINGWARDEN_OPERATOR_CA")]
    pub operator_ca: Option<PathBuf>,

    /// Speak plaintext to an `http://` operator address: reports and the
    /// configuration the agent runs cross the network readable and
    /// forgeable. For a development cluster on one machine only.
    #[arg(long, env = "RINGWARDEN_INSECURE_PLAINTEXT_FOR_LOCAL_DEVELOPMENT")]
    pub insecure_plaintext_for_local_development: bool,

    /// The projected service-account token sent to the operator (audience
    /// `ringwarden`); read again on every connect, as the kubelet rotates it.
    #[arg(long, env = "RINGWARDEN_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// The host's root directory, under which `uprobe.binary` paths
    /// resolve (symlinks stay inside it). In a pod, the read-only host
    /// mount the operator adds when uprobes are enabled (`/host`).
    #[arg(long, default_value = "/", env = "RINGWARDEN_HOST_ROOT")]
    pub host_root: PathBuf,
}

fn parse_operator_addr(s: &str) -> Result<String, String> {
    if s.starts_with("http://") || s.starts_with("https://") {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a URL; write it like https://ringwarden-operator.ringwarden-system.svc:9440"
        ))
    }
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not a label; write it like zone=eu-1"))
}

#[derive(Debug, clap::Args)]
pub struct StandaloneArgs {
    /// ProbeSet manifest(s) to run: YAML files, several documents each.
    #[arg(
        short = 'f',
        long = "file",
        required = true,
        env = "RINGWARDEN_FILES",
        value_delimiter = ','
    )]
    pub files: Vec<PathBuf>,

    /// How often to read the kernel counters and print the table.
    #[arg(long, default_value = "2s", value_parser = parse_duration, env = "RINGWARDEN_INTERVAL")]
    pub interval: Duration,

    /// Stop after this long (default: run until SIGINT or SIGTERM).
    #[arg(long, value_parser = parse_duration, env = "RINGWARDEN_DURATION")]
    pub duration: Option<Duration>,

    /// Address for Prometheus `/metrics` and `/healthz`; `off` disables it.
    #[arg(long, default_value = "127.0.0.1:9464", value_parser = parse_metrics_addr, env = "RINGWARDEN_METRICS_ADDR")]
    pub metrics_addr: MetricsAddr,

    /// Rows per probe in the table (busiest first).
    #[arg(long, default_value_t = 15, env = "RINGWARDEN_TOP")]
    pub top: usize,

    /// Output on stdout: a human table, or one JSON object per interval.
    #[arg(long, value_enum, default_value_t = Output::Table, env = "RINGWARDEN_OUTPUT")]
    pub output: Output,

    /// Node name used in metric labels (default: the host name).
    #[arg(long, env = "RINGWARDEN_NODE_NAME")]
    pub node_name: Option<String>,

    /// Exported events (a probe's `export` policy) as JSON lines on stdout;
    /// the periodic report then goes to stderr.
    #[arg(long, value_enum, default_value_t = Events::None, env = "RINGWARDEN_EVENTS")]
    pub events: Events,

    /// The host's root directory, under which `uprobe.binary` paths
    /// resolve (symlinks stay inside it): `/` on the host itself, the host
    /// mount when run in a container.
    #[arg(long, default_value = "/", env = "RINGWARDEN_HOST_ROOT")]
    pub host_root: PathBuf,

    /// Locked kernel memory all probes of all the files may take together,
    /// maps and ring buffers, like `64Mi` (the chart's `agent.nodeBudget`).
    /// Shared by priority, then fairly across namespaces; a probe that does
    /// not fit is not loaded and says why (see docs/quota.md).
    #[arg(long, default_value = ringwarden_crds::agent::DEFAULT_NODE_BUDGET,
        value_parser = parse_node_budget, env = "RINGWARDEN_NODE_BUDGET")]
    pub node_budget: u64,
}

fn parse_node_budget(s: &str) -> Result<u64, String> {
    match ringwarden_core::quantity::parse_bytes(s) {
        Ok(0) => Err("the node budget must be above 0, e.g. 64Mi".into()),
        Ok(b) => Ok(b),
        Err(e) => Err(e),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Events {
    /// Count exported events, do not print them.
    None,
    /// One JSON object per event on stdout.
    Json,
}

pub use ringwarden_logging::LogFormat;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// Where to serve metrics, if anywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsAddr {
    Off,
    On(SocketAddr),
}

fn parse_metrics_addr(s: &str) -> Result<MetricsAddr, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(MetricsAddr::Off);
    }
    s.parse()
        .map(MetricsAddr::On)
        .map_err(|_| format!("{s:?} is not an address; write it like 127.0.0.1:9464 or off"))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn durations_and_addresses_parse_with_helpful_errors() {
        let a = Args::try_parse_from([
            "ringwarden-agent",
            "standalone",
            "-f",
            "a.yaml",
            "--interval",
            "500ms",
            "--duration",
            "1m",
            "--metrics-addr",
            "off",
        ])
        .unwrap();
        let Command::Standalone(s) = a.command else {
            panic!("standalone")
        };
        assert_eq!(s.interval, Duration::from_millis(500));
        assert_eq!(s.duration, Some(Duration::from_secs(60)));
        assert_eq!(s.metrics_addr, MetricsAddr::Off);

        let e = Args::try_parse_from([
            "ringwarden-agent",
            "standalone",
            "-f",
            "a",
            "--interval",
            "5",
        ])
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("--interval") && e.contains("missing unit"),
            "{e}"
        );
        let e = Args::try_parse_from([
            "ringwarden-agent",
            "standalone",
            "-f",
            "a",
            "--metrics-addr",
            "x",
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("127.0.0.1:9464 or off"), "{e}");
    }
}
