//! Several agents and one operator on loopback: a real `ringwarden-agent
//! node` process with live probes, beside simulated agents on other nodes,
//! reporting to the operator's agent service (the real service, hub and
//! SLO evaluators; the Kubernetes side is caches filled by hand and a fake
//! TokenReview). The operator and the agent are killed and restarted
//! mid-stream, and the SLO counts stay exact: nothing counted twice,
//! nothing lost that was reported.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

mod common;

use common::{free_port, get};
use ringwarden_crds::{ClusterProbeSet, ClusterProbeSetSpec, Slo, SloSpec};
use ringwarden_operator::{
    ingest::reports::ProbeRef,
    loopback::{LoopbackOperator, fixed_stores_with_cluster},
    sim::SimAgent,
};

const AGENT: &str = env!("CARGO_BIN_EXE_ringwarden-agent");
const MS: u64 = 1_000_000;
const SLO: &str = "shop/fast";
/// The comm of the thread that makes the ground-truth syscalls.
const COMM: &str = "rw-uplink-load";

/// An agent outside a cluster knows no pods, so what it runs for the
/// operator observes the host: a ClusterProbeSet's probe, narrowed by comm.
fn probeset() -> ClusterProbeSet {
    let spec: ClusterProbeSetSpec = serde_yaml_ng::from_str(&format!(
        "
nodeSelector: {{pool: web}}
sloNamespaces: [shop]
reportInterval: 500ms
probes:
  - {{name: sys, kind: syscalls, filter: {{comms: [{COMM}]}}}}
"
    ))
    .unwrap();
    let mut ps = ClusterProbeSet::new("web", spec);
    ps.metadata.generation = Some(1);
    ps.metadata.uid = Some("uid-web".into());
    ps
}

fn slo() -> Slo {
    let spec: SloSpec = serde_yaml_ng::from_str(
        "{clusterProbeSet: web, probe: sys, series: [nanosleep], indicator: {latency: {threshold: 5ms}}, target: 99}",
    )
    .unwrap();
    let mut slo = Slo::new("fast", spec);
    slo.metadata.namespace = Some("shop".into());
    slo
}

/// The agent process; killed when dropped so a failing test leaves no
/// programs attached.
struct AgentProcess {
    child: Child,
    metrics_port: u16,
}

impl AgentProcess {
    fn start(operator: &str, dir: &std::path::Path) -> Self {
        let metrics_port = free_port();
        let child = Command::new(AGENT)
            .args([
                "node",
                "--node-name",
                "node-real",
                "--node-labels",
                "pool=web",
                "--metrics-addr",
                &format!("127.0.0.1:{metrics_port}"),
                "--interval",
                "500ms",
                "--reload-interval",
                "1s",
                "--operator-addr",
                operator,
            ])
            .arg("--config")
            .arg(dir.join("config.yaml"))
            .arg("--token-file")
            .arg(dir.join("token"))
            // Pinned: the loopback operator's own CA, and no other.
            .arg("--operator-ca")
            .arg(dir.join("ca.crt"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the agent binary starts");
        Self {
            child,
            metrics_port,
        }
    }

    /// Waits until the agent runs the pushed probe and is connected, as its
    /// own `/metrics` says.
    async fn until_running(&self) {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let text = get(self.metrics_port, "/metrics").unwrap_or_default();
            if text.contains("ringwarden_agent_operator_connected 1")
                && text.lines().any(|l| {
                    l.starts_with("ringwarden_events_observed_total{")
                        && l.contains("probe=\"sys\"")
                })
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the agent never ran the pushed probe while connected; /metrics:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What the kernel must count for the SLO: every `nanosleep` of the load
/// thread is in `total`; it is good if its latency is within 5 ms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Truth {
    total: u64,
    /// Calls the thread itself timed within 5 ms: the kernel measures less
    /// than the caller, so these are good for certain.
    surely_good: u64,
    /// Calls asked to sleep 20 ms: bad for certain.
    surely_bad: u64,
}

impl std::ops::AddAssign for Truth {
    fn add_assign(&mut self, o: Self) {
        self.total += o.total;
        self.surely_good += o.surely_good;
        self.surely_bad += o.surely_bad;
    }
}

/// Makes `fast` 1 µs and `slow` 20 ms `nanosleep` calls from a thread
/// named [`COMM`], timing each itself. On a blocking thread, so the
/// operator keeps serving meanwhile.
async fn load(fast: u64, slow: u64) -> Truth {
    tokio::task::spawn_blocking(move || {
        let name = std::ffi::CString::new(COMM).unwrap();
        // SAFETY: PR_SET_NAME reads a NUL-terminated string of ≤ 16 bytes.
        assert_eq!(unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) }, 0);
        let mut truth = Truth::default();
        for i in 0..fast + slow {
            let slow_call = i % (fast / slow.max(1) + 1) == 0 && truth.surely_bad < slow;
            let ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: if slow_call { 20 * MS as i64 } else { 1_000 },
            };
            let start = Instant::now();
            // SAFETY: a valid timespec and no remainder pointer.
            unsafe { libc::syscall(libc::SYS_nanosleep, &ts, std::ptr::null_mut::<u8>()) };
            let took = start.elapsed();
            truth.total += 1;
            if slow_call {
                truth.surely_bad += 1;
            } else if took <= Duration::from_millis(5) {
                truth.surely_good += 1;
            }
        }
        truth
    })
    .await
    .unwrap()
}

/// Waits until the operator's SLO counts satisfy `ok`.
async fn until(op: &LoopbackOperator, what: &str, ok: impl Fn((u64, u64)) -> bool) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let counted = op.counted(SLO);
        if ok(counted) {
            return counted;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the operator counted (good, total) = {counted:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `counted` is exactly the simulated agents' counts plus what the real
/// agent's kernel counted of `truth`.
fn exact(counted: (u64, u64), sims: (u64, u64), truth: Truth) -> bool {
    let (good, total) = (counted.0 - sims.0.min(counted.0), counted.1);
    total == sims.1 + truth.total
        && good >= truth.surely_good
        && good <= truth.total - truth.surely_bad
}

/// Two simulated nodes report `fast` 1 ms and `slow` 10 ms events each.
async fn simulated(
    op: &LoopbackOperator,
    agents: &mut [SimAgent],
    sims: &mut (u64, u64),
    fast: usize,
    slow: usize,
) {
    for a in agents {
        let mut c = op.connect(a).await;
        let mut latencies = vec![MS; fast];
        latencies.extend(vec![10 * MS; slow]);
        a.probes[0].observe("nanosleep", &latencies);
        let r = a.report(unix_ms());
        c.report(a, r).await.unwrap();
        sims.0 += fast as u64;
        sims.1 += (fast + slow) as u64;
    }
}

fn unix_ms() -> u64 {
    ringwarden_operator::ingest::reports::millis(std::time::SystemTime::now())
}

#[tokio::test]
async fn a_real_agent_and_simulated_ones_are_counted_exactly_through_operator_and_agent_restarts() {
    let stores = fixed_stores_with_cluster(
        vec![],
        vec![probeset()],
        &[
            ("node-real", &[("pool", "web")]),
            ("node-sim-1", &[("pool", "web")]),
            ("node-sim-2", &[("pool", "web")]),
        ],
        vec![slo()],
    );
    let dir: PathBuf = std::env::temp_dir().join(format!("rw-uplink-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The file has no probes: the probe must come from the pushed
    // configuration, applied without a restart.
    std::fs::write(dir.join("config.yaml"), "probes: []\n").unwrap();
    std::fs::write(dir.join("token"), "agent:node-real\n").unwrap();
    std::fs::write(dir.join("ca.crt"), LoopbackOperator::ca_pem()).unwrap();

    let op = LoopbackOperator::start(&stores, None).await;
    let url = op.url();
    let addr = op.addr.to_string();
    let mut agent = AgentProcess::start(&url, &dir);
    let sys = ProbeRef {
        namespace: String::new(),
        probeset: "web".into(),
        probe: "sys".into(),
    };
    agent.until_running().await;
    let mut sim_agents = vec![
        SimAgent::new("node-sim-1", "sim-boot-1", vec![sys.clone()]),
        SimAgent::new("node-sim-2", "sim-boot-2", vec![sys.clone()]),
    ];
    let mut sims = (0, 0);
    simulated(&op, &mut sim_agents, &mut sims, 100, 1).await;
    // All three nodes report their probe running, the real one within its
    // report interval.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let f = &op.hub.probeset_figures(std::time::SystemTime::now())[0].figures;
        if (f.desired, f.reporting, f.ready) == (3, 3, 3) {
            break;
        }
        assert!(Instant::now() < deadline, "{f:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut truth = load(300, 5).await;
    let counted = until(&op, "first load", |c| exact(c, sims, truth)).await;
    eprintln!("first load: {truth:?}, counted {counted:?}");

    // The operator persists and dies; the agent keeps probing while it is
    // away and buffers its reports.
    let persisted = op.hub.reports().persisted(SLO).unwrap();
    op.stop().await;
    truth += load(200, 3).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let op = LoopbackOperator::start_on(&addr, &stores, Some(persisted)).await;
    simulated(&op, &mut sim_agents, &mut sims, 10, 0).await;
    let counted = until(&op, "after the operator restart", |c| exact(c, sims, truth)).await;
    // Nothing arrives twice: buffered reports the new operator saw again
    // count nothing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(op.counted(SLO), counted, "counts grew with no new load");

    // The agent is killed and starts again: a new boot, counters from zero,
    // and the operator counts it on top of what it had.
    agent.kill();
    let agent = AgentProcess::start(&url, &dir);
    agent.until_running().await;
    truth += load(100, 2).await;
    let counted = until(&op, "after the agent restart", |c| exact(c, sims, truth)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(op.counted(SLO), counted, "counts grew with no new load");
    eprintln!("final: {truth:?}, counted {counted:?}");

    drop(agent);
    op.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An agent pinning another CA than the operator's never reports to it
/// and never runs what it would push; a plaintext address is refused at
/// start unless the loud flag says otherwise.
#[tokio::test]
async fn an_agent_refuses_an_operator_it_cannot_verify() {
    let stores = fixed_stores_with_cluster(
        vec![],
        vec![probeset()],
        &[("node-real", &[("pool", "web")])],
        vec![slo()],
    );
    let dir: PathBuf = std::env::temp_dir().join(format!("rw-uplink-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.yaml"), "probes: []\n").unwrap();
    std::fs::write(dir.join("token"), "agent:node-real\n").unwrap();
    let other = ringwarden_operator::ingest::tls::new_ca(std::time::SystemTime::now()).unwrap();
    std::fs::write(dir.join("ca.crt"), &other.cert).unwrap();

    let op = LoopbackOperator::start(&stores, None).await;
    let agent = AgentProcess::start(&op.url(), &dir);
    // Long enough for several connection attempts (backoff starts at 1 s).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let text = get(agent.metrics_port, "/metrics").unwrap_or_default();
    assert!(
        text.contains("ringwarden_agent_operator_connected 0"),
        "{text}"
    );
    assert!(
        !text.contains("probe=\"sys\""),
        "the agent ran a configuration from a server it could not verify:\n{text}"
    );
    assert_eq!(op.counted(SLO), (0, 0));
    drop(agent);

    // Plaintext without the flag: the agent refuses to start reporting.
    let out = Command::new(AGENT)
        .args([
            "node",
            "--node-name",
            "node-real",
            "--node-labels",
            "pool=web",
            "--metrics-addr",
            "127.0.0.1:0",
            "--operator-addr",
            "http://127.0.0.1:9",
        ])
        .arg("--config")
        .arg(dir.join("config.yaml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to report")
            && err.contains("--insecure-plaintext-for-local-development"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
