//! The agent's stream to the operator (docs/protocol.md, "Reconnecting and
//! buffering"): one task that keeps an `AgentService.Connect` stream open,
//! sends the Hello and every report, keeps the unacknowledged ones (at
//! most [`BUFFERED_REPORTS`]) for the next connection, and hands pushed
//! configurations to the node loop. The probes never wait for it: reports
//! go into a channel, and an unreachable operator only means buffering.

use std::{collections::VecDeque, path::PathBuf, time::Duration};

use prometheus::{IntCounter, IntGauge, Registry};
use ringwarden_proto::v1::{
    self, AgentMessage, OperatorMessage, agent_message::Message as FromAgent,
    agent_service_client::AgentServiceClient, operator_message::Message as ToAgent,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Status, metadata::MetadataValue, transport::Endpoint};

/// Reports kept while the operator has not acknowledged them; the oldest
/// goes first when full. Cumulative counters make a gap harmless.
pub const BUFFERED_REPORTS: usize = 60;
/// First reconnect delay; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and as whom to connect.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The agent service, like `https://ringwarden-operator.ringwarden-system.svc:9440`.
    pub address: String,
    /// The projected service-account token, read again on every connect
    /// because the kubelet rotates it; none sends no credentials.
    pub token_file: Option<PathBuf>,
    /// The CA the operator's certificate must chain to (pinned: no other is
    /// trusted), read again on every connect; `None` only for an `http://`
    /// address under `--insecure-plaintext-for-local-development`.
    pub ca_file: Option<PathBuf>,
}

impl Settings {
    /// Checks that the agent will speak TLS, or was told loudly not to.
    pub fn new(
        address: String,
        token_file: Option<PathBuf>,
        ca_file: Option<PathBuf>,
        insecure_plaintext: bool,
    ) -> Result<Self, String> {
        if address.starts_with("https://") {
            if ca_file.is_none() {
                return Err(format!(
                    "--operator-addr {address} needs --operator-ca: the CA the operator's \
                     certificate must chain to (the chart mounts it from the ConfigMap \
                     ringwarden-operator-ca)"
                ));
            }
            return Ok(Self {
                address,
                token_file,
                ca_file,
            });
        }
        if !insecure_plaintext {
            return Err(format!(
                "refusing to report to {address} in plaintext: use an https:// address with \
                 --operator-ca, or pass --insecure-plaintext-for-local-development on a \
                 development machine"
            ));
        }
        Ok(Self {
            address,
            token_file,
            ca_file: None,
        })
    }
}

/// The host of a URL, which the operator's certificate must name.
fn url_host(address: &str) -> Option<String> {
    let rest = address.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    (!host.is_empty()).then(|| host.to_string())
}

/// The uplink's own figures, in the agent's `/metrics`.
#[derive(Clone)]
pub struct UplinkMetrics {
    connected: IntGauge,
    buffered: IntGauge,
    dropped: IntCounter,
    acked: IntCounter,
}

impl UplinkMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            connected: IntGauge::new(
                "ringwarden_agent_operator_connected",
                "1 while a stream to the operator is open and accepted",
            )?,
            buffered: IntGauge::new(
                "ringwarden_agent_reports_buffered",
                "Reports not yet acknowledged by the operator",
            )?,
            dropped: IntCounter::new(
                "ringwarden_agent_reports_dropped_total",
                "Reports dropped unsent because the buffer was full (their counts arrive with later reports)",
            )?,
            acked: IntCounter::new(
                "ringwarden_agent_reports_acked_total",
                "Reports the operator acknowledged",
            )?,
        };
        registry.register(Box::new(m.connected.clone()))?;
        registry.register(Box::new(m.buffered.clone()))?;
        registry.register(Box::new(m.dropped.clone()))?;
        registry.register(Box::new(m.acked.clone()))?;
        Ok(m)
    }
}

/// The node loop's end of the uplink.
pub struct Uplink {
    reports: mpsc::UnboundedSender<v1::Report>,
    /// The configuration version the probes run, for the next Hello.
    version: watch::Sender<String>,
}

impl Uplink {
    /// Starts the connection task; `hello` is sent first on every stream
    /// (its `config_version` is kept current from [`Uplink::running`]).
    /// Also returns the configurations the operator pushes, in order.
    pub fn spawn(
        settings: Settings,
        hello: v1::Hello,
        metrics: UplinkMetrics,
    ) -> (Self, mpsc::UnboundedReceiver<v1::Config>) {
        let (reports, rx) = mpsc::unbounded_channel();
        let (configs_tx, configs) = mpsc::unbounded_channel();
        let (version, version_rx) = watch::channel(hello.config_version.clone());
        let task = Task {
            seed: seed(&hello.boot_id),
            settings,
            hello,
            version: version_rx,
            reports: rx,
            configs: configs_tx,
            buffer: VecDeque::new(),
            metrics,
        };
        tokio::spawn(task.run());
        (Self { reports, version }, configs)
    }

    /// Queues a report; never waits.
    pub fn send(&self, report: v1::Report) {
        // Fails only once the task ended, which it does only when this
        // side is dropped.
        let _ = self.reports.send(report);
    }

    /// Records the configuration version the probes now run.
    pub fn running(&self, version: &str) {
        self.version.send_if_modified(|v| {
            let changed = v != version;
            if changed {
                version.clone_into(v);
            }
            changed
        });
    }
}

struct Task {
    settings: Settings,
    hello: v1::Hello,
    version: watch::Receiver<String>,
    reports: mpsc::UnboundedReceiver<v1::Report>,
    configs: mpsc::UnboundedSender<v1::Config>,
    buffer: VecDeque<v1::Report>,
    metrics: UplinkMetrics,
    seed: u64,
}

/// How a stream ended.
enum Ended {
    /// The node loop went away: the agent is stopping.
    Shutdown,
    /// The stream failed or the operator ended it.
    Lost(Status),
}

impl Task {
    async fn run(mut self) {
        let mut failures: u32 = 0;
        loop {
            let (ended, acked_any) = self.connection().await;
            self.metrics.connected.set(0);
            let status = match ended {
                Ended::Shutdown => return,
                Ended::Lost(s) => s,
            };
            if acked_any {
                failures = 0;
            }
            match status.code() {
                // The operator said the report is malformed: resending it
                // would only end the next stream the same way.
                Code::InvalidArgument => {
                    tracing::error!(error = %status, "the operator refused a report as malformed; dropping it");
                    self.buffer.pop_front();
                    self.metrics.dropped.inc();
                }
                Code::Unauthenticated | Code::PermissionDenied => {
                    tracing::error!(error = %status, "the operator refused this agent's credentials");
                }
                _ if failures == 0 => {
                    tracing::warn!(error = %status, "stream to the operator ended; reconnecting")
                }
                _ => tracing::debug!(error = %status, "operator still unreachable"),
            }
            let delay = self.backoff(failures);
            failures = failures.saturating_add(1);
            if self.wait(delay).await.is_err() {
                return;
            }
        }
    }

    /// Full jitter over 1 s doubling to 30 s, so agents that lost the
    /// operator together do not come back together.
    fn backoff(&mut self, failures: u32) -> Duration {
        let cap = MIN_BACKOFF
            .saturating_mul(1u32 << failures.min(5))
            .min(MAX_BACKOFF);
        // xorshift64: jitter needs no better randomness.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let fraction = (self.seed >> 11) as f64 / (1u64 << 53) as f64;
        cap.mul_f64(fraction).max(Duration::from_millis(100))
    }

    /// Sleeps for `delay` while still buffering reports; `Err` when the
    /// node loop went away.
    async fn wait(&mut self, delay: Duration) -> Result<(), ()> {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return Ok(()),
                r = self.reports.recv() => match r {
                    Some(r) => self.keep(r),
                    None => return Err(()),
                },
            }
        }
    }

    fn keep(&mut self, report: v1::Report) {
        if self.buffer.len() == BUFFERED_REPORTS {
            self.buffer.pop_front();
            self.metrics.dropped.inc();
        }
        self.buffer.push_back(report);
        self.metrics.buffered.set(self.buffer.len() as i64);
    }

    /// One stream, from connect to its end; also says whether any report
    /// was acknowledged on it.
    async fn connection(&mut self) -> (Ended, bool) {
        let mut acked_any = false;
        let ended = self.stream(&mut acked_any).await;
        (ended, acked_any)
    }

    async fn stream(&mut self, acked_any: &mut bool) -> Ended {
        let token = match &self.settings.token_file {
            None => None,
            Some(path) => match std::fs::read_to_string(path) {
                Ok(t) => Some(t.trim().to_owned()),
                Err(e) => {
                    return Ended::Lost(Status::unauthenticated(format!(
                        "cannot read the token {}: {e}",
                        path.display()
                    )));
                }
            },
        };
        let mut endpoint = match Endpoint::from_shared(self.settings.address.clone()) {
            Ok(e) => e
                .connect_timeout(CONNECT_TIMEOUT)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(10)),
            Err(e) => {
                return Ended::Lost(Status::invalid_argument(format!(
                    "operator address {:?}: {e}",
                    self.settings.address
                )));
            }
        };
        if let Some(ca_file) = &self.settings.ca_file {
            let ca = match std::fs::read_to_string(ca_file) {
                Ok(ca) => ca,
                Err(e) => {
                    return Ended::Lost(Status::unavailable(format!(
                        "cannot read the operator's CA {}: {e}",
                        ca_file.display()
                    )));
                }
            };
            let mut tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(ca));
            if let Some(host) = url_host(&self.settings.address) {
                tls = tls.domain_name(host);
            }
            endpoint = match endpoint.tls_config(tls) {
                Ok(e) => e,
                Err(e) => {
                    return Ended::Lost(Status::invalid_argument(format!(
                        "TLS settings for {}: {}",
                        self.settings.address,
                        error_chain(&e)
                    )));
                }
            };
        }
        // A new connection every time, so the Service can route this agent
        // to another replica (docs/protocol.md, "Connecting").
        let channel = match endpoint.connect().await {
            Ok(c) => c,
            Err(e) => {
                return Ended::Lost(Status::unavailable(format!(
                    "cannot connect to {}: {}",
                    self.settings.address,
                    error_chain(&e)
                )));
            }
        };
        let (tx, rx) = mpsc::channel(BUFFERED_REPORTS + 8);
        let mut hello = self.hello.clone();
        hello.config_version = self.version.borrow().clone();
        let _ = tx.try_send(AgentMessage {
            message: Some(FromAgent::Hello(hello)),
        });
        // Oldest first; repeats of what the operator already has are
        // acknowledged and counted nothing.
        for r in &self.buffer {
            let _ = tx.try_send(AgentMessage {
                message: Some(FromAgent::Report(r.clone())),
            });
        }
        let mut request = Request::new(ReceiverStream::new(rx));
        if let Some(token) = token {
            match MetadataValue::try_from(format!("Bearer {token}")) {
                Ok(v) => {
                    request
                        .metadata_mut()
                        .insert(ringwarden_proto::AUTHORIZATION, v);
                }
                Err(_) => {
                    return Ended::Lost(Status::unauthenticated(
                        "the token file holds characters not allowed in metadata",
                    ));
                }
            }
        }
        let mut stream = match AgentServiceClient::new(channel).connect(request).await {
            Ok(r) => r.into_inner(),
            Err(s) => return Ended::Lost(s),
        };
        self.metrics.connected.set(1);
        tracing::info!(operator = %self.settings.address, buffered = self.buffer.len(), "connected to the operator");
        loop {
            tokio::select! {
                r = self.reports.recv() => {
                    let Some(r) = r else { return Ended::Shutdown };
                    self.keep(r.clone());
                    // A full channel means the operator stopped reading;
                    // the report stays buffered for the next stream.
                    let _ = tx.try_send(AgentMessage { message: Some(FromAgent::Report(r)) });
                }
                m = stream.message() => match m {
                    Ok(Some(OperatorMessage { message: Some(ToAgent::Ack(a)) })) => {
                        *acked_any = true;
                        let before = self.buffer.len();
                        self.buffer.retain(|r| r.seq > a.seq);
                        self.metrics.acked.inc_by((before - self.buffer.len()) as u64);
                        self.metrics.buffered.set(self.buffer.len() as i64);
                    }
                    Ok(Some(OperatorMessage { message: Some(ToAgent::Config(c)) })) => {
                        tracing::info!(version = %c.version, "configuration pushed by the operator");
                        if self.configs.send(c).is_err() {
                            return Ended::Shutdown;
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => return Ended::Lost(Status::unavailable("the operator ended the stream")),
                    Err(s) => return Ended::Lost(s),
                },
            }
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// A jitter seed that differs between agents and between runs.
fn seed(boot_id: &str) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut h = 0xcbf2_9ce4_8422_2325_u64 ^ nanos;
    for b in boot_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h | 1
}

/// Facts for the Hello, read from this machine.
pub fn hello(node: &str, boot_id: &str, kernel_btf: &std::path::Path) -> v1::Hello {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    v1::Hello {
        node_name: node.to_owned(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        boot_id: boot_id.to_owned(),
        ringbuf: ringbuf_supported(&kernel),
        kernel_version: kernel,
        btf: std::fs::File::open(kernel_btf).is_ok(),
        page_size: u32::try_from(page).unwrap_or(4096),
        config_version: String::new(),
        possible_cpus: crate::probes::possible_cpus().unwrap_or(0),
    }
}

/// BPF ring buffers came with Linux 5.8.
fn ringbuf_supported(release: &str) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= (5, 8)
}

/// A new boot id: the kernel's random UUID, or the time if that is
/// unreadable. New at every agent start, because counters start at zero.
pub fn new_boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| format!("t{:x}", seed("")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_speaks_tls_with_a_pinned_ca_or_plaintext_only_when_told_loudly() {
        let ca = Some(PathBuf::from("/etc/ringwarden/operator-ca/ca.crt"));
        let https = "https://ringwarden-operator.ringwarden-system.svc:9440".to_string();
        let http = "http://ringwarden-operator.ringwarden-system.svc:9440".to_string();
        assert!(Settings::new(https.clone(), None, ca.clone(), false).is_ok());
        let e = Settings::new(https, None, None, false).unwrap_err();
        assert!(e.contains("needs --operator-ca"), "{e}");
        let e = Settings::new(http.clone(), None, None, false).unwrap_err();
        assert!(
            e.contains("refusing") && e.contains("--insecure-plaintext-for-local-development"),
            "{e}"
        );
        let plain = Settings::new(http, None, ca, true).unwrap();
        assert_eq!(plain.ca_file, None);
    }

    #[test]
    fn the_certificate_must_name_the_host_of_the_address() {
        assert_eq!(
            url_host("https://ringwarden-operator.ns.svc:9440").as_deref(),
            Some("ringwarden-operator.ns.svc")
        );
        assert_eq!(
            url_host("https://localhost:1/x").as_deref(),
            Some("localhost")
        );
        assert_eq!(url_host("https://[::1]:9440").as_deref(), Some("::1"));
        assert_eq!(url_host("https://host").as_deref(), Some("host"));
        assert_eq!(url_host("nonsense"), None);
    }

    #[test]
    fn kernels_from_5_8_have_ring_buffers() {
        assert!(ringbuf_supported("6.1.0-13-amd64"));
        assert!(ringbuf_supported("5.8.0"));
        assert!(!ringbuf_supported("5.4.0-150-generic"));
        assert!(!ringbuf_supported(""));
    }

    #[test]
    fn boot_ids_differ_between_starts() {
        assert_ne!(new_boot_id(), new_boot_id());
    }

    #[tokio::test]
    async fn backoff_doubles_to_thirty_seconds_with_jitter() {
        let (_tx, rx) = mpsc::unbounded_channel();
        let (configs, _) = mpsc::unbounded_channel();
        let (_, version) = watch::channel(String::new());
        let mut t = Task {
            settings: Settings {
                address: String::new(),
                token_file: None,
                ca_file: None,
            },
            hello: v1::Hello::default(),
            version,
            reports: rx,
            configs,
            buffer: VecDeque::new(),
            metrics: UplinkMetrics::new(&Registry::new()).unwrap(),
            seed: seed("b"),
        };
        for (failures, cap) in [(0, 1), (1, 2), (2, 4), (4, 16), (5, 30), (40, 30)] {
            let delays: Vec<Duration> = (0..200).map(|_| t.backoff(failures)).collect();
            let cap = Duration::from_secs(cap);
            assert!(delays.iter().all(|d| *d <= cap), "{failures}: {delays:?}");
            // Jittered: spread over the range, not one value.
            let low = delays.iter().filter(|d| **d < cap / 2).count();
            assert!((40..160).contains(&low), "{failures}: {low} of 200 low");
        }
        // The buffer keeps the newest BUFFERED_REPORTS and counts the rest.
        for seq in 1..=100 {
            t.keep(v1::Report {
                seq,
                ..Default::default()
            });
        }
        assert_eq!(t.buffer.len(), BUFFERED_REPORTS);
        assert_eq!(t.buffer.front().unwrap().seq, 41);
        assert_eq!(t.metrics.dropped.get(), 40);
    }
}
