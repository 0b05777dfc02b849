//! `ringwarden-agent node` when the kernel side is missing something: no
//! BTF file, a corrupt one, a symbol a uprobe cannot find. The agent stays
//! up, says why in `/metrics` and its log, runs the probes that can run,
//! and retries the others with exponential backoff (1 s, 2 s, 4 s...) until
//! what was missing is there.

mod common;

use std::{
    io::Read,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{free_port, get};

const AGENT: &str = env!("CARGO_BIN_EXE_ringwarden-agent");

struct Agent {
    child: Child,
    port: u16,
}

impl Agent {
    /// Starts node mode with static labels on `config`, its log to `log`.
    fn start(config: &str, dir: &Path, extra: &[&str]) -> Self {
        std::fs::write(dir.join("config.yaml"), config).unwrap();
        let port = free_port();
        let child = Command::new(AGENT)
            .args(["node", "--node-name", "node-r", "--node-labels", "pool=web"])
            .args(["--interval", "100ms", "--reload-interval", "100ms"])
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--config")
            .arg(dir.join("config.yaml"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("agent.log")).unwrap())
            .spawn()
            .expect("the agent binary starts");
        Self { child, port }
    }

    fn metrics(&mut self) -> String {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("the agent exited ({status}) instead of staying up");
        }
        get(self.port, "/metrics").unwrap_or_default()
    }

    /// Waits until `line` (name, labels and value) is in `/metrics`.
    fn until(&mut self, line: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = self.metrics();
            if text.lines().any(|l| l == line) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "no {line:?} in /metrics:\n{}",
                text.lines()
                    .filter(|l| l.starts_with("ringwarden_agent"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of a sample line starting with `series ` (0 when absent).
fn value(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn require_privileges() {
    if let Err(e) = ringwarden_node_agent::probes::check_privileges() {
        panic!("this live-kernel test cannot run: {e}; run `sudo make test`");
    }
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("rw-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const SYSCALLS: &str = "probes:\n  - {namespace: ops, probeset: node, spec: {name: sys, \
    kind: syscalls, filter: {comms: [rw-nothing]}}, ringBytes: 4096, sampleEvery: 1, \
    reportInterval: 1s}\n";
/// The probe's labels in the snapshot families, and in the agent's own
/// families (which the Prometheus client sorts by name).
const SYS: &str = r#"namespace="ops",probeset="node",probe="sys",node="node-r""#;
const SYS_SORTED: &str = r#"namespace="ops",node="node-r",probe="sys",probeset="node""#;

#[test]
fn a_missing_then_corrupt_btf_file_is_reported_and_retried_with_backoff_until_it_is_there() {
    require_privileges();
    let dir = temp_dir("btf");
    let btf = dir.join("vmlinux");
    let mut agent = Agent::start(SYSCALLS, &dir, &["--kernel-btf", btf.to_str().unwrap()]);
    let failing =
        format!("ringwarden_agent_probe_failing{{{SYS_SORTED},reason=\"missing_btf\"}} 1");
    let failures = format!(
        "ringwarden_agent_probe_load_failures_total{{{SYS_SORTED},reason=\"missing_btf\"}}"
    );
    agent.until(&failing);
    // Tried once, then after 1 s and 3 s: with a 100 ms reload interval and
    // no backoff it would be tried about 35 times by then.
    let first = Instant::now();
    std::thread::sleep(Duration::from_millis(3_500).saturating_sub(first.elapsed()));
    let text = agent.metrics();
    let attempts = value(&text, &failures);
    assert!(
        (2..=4).contains(&attempts),
        "{attempts} attempts in 3.5 s; the retries do not back off"
    );
    assert!(
        !text.contains(&format!("ringwarden_events_observed_total{{{SYS}}}")),
        "the probe cannot run without BTF"
    );

    // A corrupt file is a failure of the same kind, with the parser's cause.
    std::fs::write(&btf, b"this is not BTF at all, just some bytes").unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while value(&agent.metrics(), &failures) == attempts {
        assert!(
            Instant::now() < deadline,
            "no retry after {attempts} attempts"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut log = String::new();
    std::fs::File::open(dir.join("agent.log"))
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(
        log.contains(&format!("{}: ", btf.display())) && log.contains("No such file"),
        "the log names the file and why it could not be read:\n{log}"
    );

    // Once the kernel's BTF is there, the next retry loads the probe.
    std::fs::copy(ringwarden_node_agent::probes::KERNEL_BTF, &btf).unwrap();
    agent.until(&format!(
        "ringwarden_agent_probe_loads_total{{{SYS_SORTED}}} 1"
    ));
    let text = agent.until(&format!("ringwarden_events_observed_total{{{SYS}}} 0"));
    assert!(
        !text.contains("ringwarden_agent_probe_failing{"),
        "a running probe is not failing:\n{text}"
    );
    let mut log = String::new();
    std::fs::File::open(dir.join("agent.log"))
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(
        log.lines().any(|l| l.contains("not BTF")
            || l.contains("BTF header")
            || l.contains("error parsing")),
        "the log says the corrupt file is not BTF:\n{log}"
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_uprobe_on_a_missing_symbol_is_reported_while_the_other_probes_run() {
    require_privileges();
    let dir = temp_dir("symbol");
    let config = format!(
        "{SYSCALLS}  - {{namespace: ops, probeset: node, spec: {{name: fn, kind: uprobe, \
         uprobe: {{binary: {AGENT}, symbol: rw_no_such_function}}}}, ringBytes: 4096, \
         sampleEvery: 1, reportInterval: 1s}}\n"
    );
    let mut agent = Agent::start(&config, &dir, &[]);
    let uprobe = r#"namespace="ops",node="node-r",probe="fn",probeset="node""#;
    agent.until(&format!(
        "ringwarden_agent_probe_failing{{{uprobe},reason=\"missing_tracepoint\"}} 1"
    ));
    let first = Instant::now();
    agent.until(&format!(
        "ringwarden_agent_probe_loads_total{{{SYS_SORTED}}} 1"
    ));
    std::thread::sleep(Duration::from_millis(3_500).saturating_sub(first.elapsed()));
    let text = agent.metrics();
    let attempts = value(
        &text,
        &format!(
            "ringwarden_agent_probe_load_failures_total{{{uprobe},reason=\"missing_tracepoint\"}}"
        ),
    );
    assert!((2..=4).contains(&attempts), "{attempts} attempts in 3.5 s");
    assert!(text.contains(&format!("ringwarden_events_observed_total{{{SYS}}}")));
    let mut log = String::new();
    std::fs::File::open(dir.join("agent.log"))
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(
        log.contains("rw_no_such_function"),
        "the log names the missing symbol:\n{log}"
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}
