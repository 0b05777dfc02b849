//! Command line of `ringwarden-operator`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{ArgAction, Parser};
use ringwarden_core::duration::parse_duration;

/// ringwarden's operator: turns ProbeSets into node-agent configuration,
/// and agent reports into ProbeSet and SLO status.
///
/// It watches ProbeSets, SLOs and Nodes, validates and plans every ProbeSet
/// (ring buffer sizes, sampling), writes the plan into each ProbeSet's
/// status, renders one agent configuration into a ConfigMap and
/// server-side applies the agent DaemonSet. Agents stream their reports to
/// it over gRPC; it aggregates them across nodes, evaluates the SLOs and
/// writes what it found into their status. Replicas elect a leader through
/// a Lease; only the leader writes and takes agents.
#[derive(Debug, Parser)]
#[command(name = "ringwarden-operator", version)]
pub struct Args {
    /// Operator configuration (YAML): the agent image, resources,
    /// tolerations and priority class. Without it, defaults apply; see
    /// docs/operator.md.
    #[arg(long, env = "RINGWARDEN_CONFIG")]
    pub config: Option<PathBuf>,

    /// Locked kernel memory all probes on one node may take together, maps
    /// and ring buffers, like `256Mi`; overrides `agent.nodeBudget` of the
    /// configuration file (default 256Mi). The agents' memory limit follows
    /// it (docs/quota.md).
    #[arg(long, env = "RINGWARDEN_NODE_BUDGET")]
    pub node_budget: Option<String>,

    /// Namespace of the agent DaemonSet, its ConfigMap and the
    /// leader-election Lease (usually the operator's own).
    #[arg(
        long,
        default_value = "ringwarden-system",
        env = "RINGWARDEN_NAMESPACE"
    )]
    pub namespace: String,

    /// Address for Prometheus `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, default_value = "0.0.0.0:8080", env = "RINGWARDEN_METRICS_ADDR")]
    pub metrics_addr: SocketAddr,

    /// Address of the agent gRPC service (agents authenticate with their
    /// service-account token).
    #[arg(long, default_value = "0.0.0.0:9440", env = "RINGWARDEN_AGENT_ADDR")]
    pub agent_addr: SocketAddr,

    /// Address of the query gRPC service that `ringwarden status` and
    /// `ringwarden top` read. Loopback by default: reach it with
    /// `kubectl port-forward`, which the cluster's RBAC guards.
    #[arg(long, default_value = "127.0.0.1:9441", env = "RINGWARDEN_QUERY_ADDR")]
    pub query_addr: SocketAddr,

    /// The Secret in `--namespace` where the operator keeps its own CA and
    /// serving certificate for the agent and query ports, created on first
    /// start and renewed 30 days before expiry. Unused with
    /// --tls-cert-file.
    #[arg(
        long,
        default_value = "ringwarden-operator-tls",
        env = "RINGWARDEN_TLS_SECRET"
    )]
    pub tls_secret: String,

    /// Serve this PEM certificate (with --tls-key-file and --tls-ca-file)
    /// instead of the operator's own: a mounted cert-manager Secret's
    /// `tls.crt`. Read again when it changes.
    #[arg(
        long,
        env = "RINGWARDEN_TLS_CERT_FILE",
        requires_all = ["tls_key_file", "tls_ca_file"]
    )]
    pub tls_cert_file: Option<PathBuf>,

    /// The private key of --tls-cert-file (`tls.key`).
    #[arg(long, env = "RINGWARDEN_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,

    /// The CA bundle agents pin to verify --tls-cert-file (`ca.crt`).
    #[arg(long, env = "RINGWARDEN_TLS_CA_FILE", requires = "tls_cert_file")]
    pub tls_ca_file: Option<PathBuf>,

    /// The ConfigMap in `--namespace` where the operator publishes the CA
    /// certificate agents pin (key `ca.crt`); the agent DaemonSet mounts it.
    #[arg(
        long,
        default_value = "ringwarden-operator-ca",
        env = "RINGWARDEN_CA_CONFIGMAP"
    )]
    pub ca_configmap: String,

    /// The operator's Service: its DNS names in `--namespace` are the names
    /// the serving certificate is issued for.
    #[arg(
        long,
        default_value = "ringwarden-operator",
        env = "RINGWARDEN_SERVICE_NAME"
    )]
    pub service_name: String,

    /// Open connections one IP address may hold on the agent and query
    /// ports (an agent needs one), and on the metrics and health port.
    /// Raise it when a proxy or service-mesh sidecar makes every agent (or
    /// scraper) arrive from one address.
    #[arg(
        long,
        default_value_t = 16,
        value_parser = clap::value_parser!(u32).range(1..),
        env = "RINGWARDEN_MAX_CONNECTIONS_PER_ADDRESS"
    )]
    pub max_connections_per_address: u32,

    /// Serve the agent and query ports without TLS, and tell agents to
    /// connect so: reports and pushed configuration cross the network
    /// readable and forgeable. For a development cluster on one machine
    /// only.
    #[arg(long, env = "RINGWARDEN_INSECURE_PLAINTEXT_FOR_LOCAL_DEVELOPMENT")]
    pub insecure_plaintext_for_local_development: bool,

    /// How often changed SLO state is saved (to a ConfigMap per SLO); an
    /// operator restart loses at most this much SLO history.
    #[arg(long, default_value = "10s", value_parser = parse_duration, env = "RINGWARDEN_SNAPSHOT_INTERVAL")]
    pub snapshot_interval: Duration,

    /// Elect a leader through a Lease so that only one replica writes.
    /// Turn off only when exactly one replica runs.
    #[arg(long, default_value_t = true, action = ArgAction::Set, env = "RINGWARDEN_LEADER_ELECT")]
    pub leader_elect: bool,

    /// Name of the leader-election Lease.
    #[arg(
        long,
        default_value = "ringwarden-operator",
        env = "RINGWARDEN_LEASE_NAME"
    )]
    pub lease_name: String,

    /// The operator's own Deployment (in `--namespace`): made the owner of
    /// the agent DaemonSet and ConfigMap, so deleting the operator (e.g.
    /// `helm uninstall`) garbage-collects them. Without it they have no
    /// owner.
    #[arg(long, env = "RINGWARDEN_OWNER_DEPLOYMENT")]
    pub owner_deployment: Option<String>,

    /// This replica's name in the Lease (default: the host name, which is
    /// the pod name in Kubernetes).
    #[arg(long, env = "RINGWARDEN_POD_NAME")]
    pub identity: Option<String>,

    /// This cluster's name (the chart's `clusterName`, like `prod-eu-1`):
    /// written into every ProbeSet and SLO status and every query reply,
    /// so figures gathered from many clusters say where they came from.
    #[arg(long, env = "RINGWARDEN_CLUSTER_NAME", value_parser = parse_cluster_name)]
    pub cluster_name: Option<String>,

    /// How long a leader's Lease stays valid without renewal; a standby
    /// takes over after this.
    #[arg(long, default_value = "15s", value_parser = parse_duration, env = "RINGWARDEN_LEASE_DURATION")]
    pub lease_duration: Duration,

    /// How long the leader keeps writing without a successful renewal.
    /// Must be shorter than --lease-duration, so a leader stops before a
    /// standby may start.
    #[arg(long, default_value = "10s", value_parser = parse_duration, env = "RINGWARDEN_RENEW_DEADLINE")]
    pub renew_deadline: Duration,

    /// How often to renew the Lease, or to try to take it.
    #[arg(long, default_value = "2s", value_parser = parse_duration, env = "RINGWARDEN_RETRY_PERIOD")]
    pub retry_period: Duration,

    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "RINGWARDEN_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// Log filter, e.g. `info` or `ringwarden_operator=debug`. kube's
    /// HTTP client, which logs every failed request at ERROR, stays quiet
    /// unless the filter names `kube_client`: the operator logs each
    /// failure once, with its cause.
    #[arg(long, default_value = "info", env = "RINGWARDEN_LOG")]
    pub log: String,
}

/// The chart's `clusterName` pattern: a label value Prometheus and
/// Kubernetes both accept.
fn parse_cluster_name(s: &str) -> Result<String, String> {
    let ok_inner = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    let ends_ok = s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric());
    if s.is_empty() || (s.len() <= 63 && ends_ok && s.chars().all(ok_inner)) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a cluster name: use at most 63 letters, digits, '-', '_' or '.', \
             starting and ending with a letter or digit, like prod-eu-1"
        ))
    }
}

pub use ringwarden_logging::LogFormat;

impl Args {
    /// Checks what clap cannot: the lease timings' order.
    pub fn validate(&self) -> Result<(), String> {
        if self.snapshot_interval < Duration::from_secs(1) {
            return Err(format!(
                "--snapshot-interval {:?} is too short; use at least 1s, e.g. 10s",
                self.snapshot_interval
            ));
        }
        if !(self.retry_period < self.renew_deadline && self.renew_deadline < self.lease_duration) {
            return Err(format!(
                "lease timings must satisfy --retry-period < --renew-deadline < --lease-duration \
                 (got {:?} < {:?} < {:?}); the defaults are 2s < 10s < 15s",
                self.retry_period, self.renew_deadline, self.lease_duration
            ));
        }
        Ok(())
    }

    /// The `tracing` filter: `--log`, with kube's per-request error lines
    /// off unless `--log` names `kube_client` itself.
    pub fn log_filter(&self) -> String {
        if self.log.contains("kube_client") {
            self.log.clone()
        } else {
            format!("{},{QUIET_KUBE_CLIENT}", self.log)
        }
    }
}

/// kube's client logs every failed request at ERROR (`failed with error
/// client error (Connect)`), unthrottled and without a cause.
const QUIET_KUBE_CLIENT: &str = "kube_client::client::builder=off";

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn defaults_give_a_valid_leader_election() {
        let a = Args::try_parse_from(["ringwarden-operator"]).unwrap();
        assert_eq!(a.namespace, "ringwarden-system");
        assert!(a.leader_elect);
        assert_eq!(a.validate(), Ok(()));
    }

    #[test]
    fn kubes_per_request_errors_are_off_unless_asked_for() {
        let a = Args::try_parse_from(["ringwarden-operator", "--log", "debug"]).unwrap();
        assert_eq!(a.log_filter(), "debug,kube_client::client::builder=off");
        let b = Args::try_parse_from(["ringwarden-operator", "--log", "info,kube_client=error"])
            .unwrap();
        assert_eq!(b.log_filter(), "info,kube_client=error");
    }

    #[test]
    fn leader_election_can_be_turned_off_and_timings_are_checked() {
        let a = Args::try_parse_from([
            "ringwarden-operator",
            "--leader-elect",
            "false",
            "--renew-deadline",
            "20s",
        ])
        .unwrap();
        assert!(!a.leader_elect);
        let e = a.validate().unwrap_err();
        assert!(e.contains("--renew-deadline < --lease-duration"), "{e}");
    }
}
