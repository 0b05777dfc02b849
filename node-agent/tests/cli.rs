//! `ringwarden-agent` as a user runs it: bad input, a live run with
//! `/metrics`, a clean stop on SIGINT, and a second run right after.

mod common;

use common::{free_port, get};
use std::{
    io::{BufRead, BufReader, Read},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

const AGENT: &str = env!("CARGO_BIN_EXE_ringwarden-agent");
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/probeset.yaml");

fn run_with_manifest(yaml: &str) -> Output {
    let path =
        std::env::temp_dir().join(format!("rw-cli-{}-{}.yaml", std::process::id(), yaml.len()));
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(AGENT)
        .args([
            "standalone",
            "--metrics-addr",
            "off",
            "--duration",
            "1s",
            "-f",
        ])
        .arg(&path)
        .output()
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    out
}

const GOOD: &str = "apiVersion: ringwarden.dev/v1alpha1
kind: ProbeSet
metadata: {name: demo}
spec:
  reportInterval: 10s
  probes:
    - {name: sys, kind: syscalls}
";

/// A probe that cannot attach is reported with its cause while the others
/// run: the agent never fails as a whole over one bad probe.
#[test]
fn a_broken_probe_degrades_alone() {
    let out = run_with_manifest(
        "apiVersion: ringwarden.dev/v1alpha1
kind: ProbeSet
metadata: {name: mixed}
spec:
  probes:
    - {name: broken, kind: uprobe, uprobe: {binary: /bin/sh, symbol: no_such_function_anywhere}}
    - {name: sys, kind: syscalls}
",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(
            "FAILED default/mixed/broken (uprobe): uprobe no_such_function_anywhere in /bin/sh"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("probe sys (syscalls)"),
        "the other probe runs: {stdout}"
    );
    assert!(stdout.contains("accounting: observed"), "{stdout}");
}

/// An SLO in the manifests is counted exactly in the kernel and evaluated.
#[test]
fn an_slo_is_counted_and_evaluated() {
    let out = run_with_manifest(&format!(
        "{GOOD}---
apiVersion: ringwarden.dev/v1alpha1
kind: SLO
metadata: {{name: fast-reads}}
spec:
  probeSet: demo
  probe: sys
  series: [read]
  indicator: {{latency: {{threshold: 10ms}}}}
  target: 99
  window: 1h
"
    ));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("slo default/fast-reads: good "),
        "kernel counts: {stdout}"
    );
    assert!(
        stdout.contains("SLO default/fast-reads: "),
        "evaluation: {stdout}"
    );
}

#[test]
fn bad_manifests_exit_2_naming_the_field_and_the_fix() {
    let cases = [
        (
            GOOD.replace("kind: syscalls", "kind: syscall"),
            "spec.probes[0].kind: unknown variant `syscall`, expected one of `syscalls`",
        ),
        (
            GOOD.replace("reportInterval: 10s", "reportInterval: 10 seconds"),
            "spec.reportInterval: invalid duration \"10 seconds\"",
        ),
        (
            GOOD.replace("reportInterval", "reportEvery"),
            "spec.reportEvery: unknown field; remove it or use one of: maxDropRate, nodeSelector, \
             podSelector, probes, reportInterval, ringBuffer",
        ),
    ];
    for (yaml, want) in cases {
        let out = run_with_manifest(&yaml);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(want), "want {want:?} in:\n{stderr}");
    }
    let out = Command::new(AGENT)
        .args(["standalone", "-f", "/nonexistent/probeset.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the file"));
}

#[test]
fn standalone_serves_metrics_stops_on_sigint_and_runs_again() {
    if let Err(e) = ringwarden_node_agent::probes::check_privileges() {
        panic!("this test loads eBPF programs and cannot run: {e}; run `sudo make test`");
    }
    let port = free_port();
    let mut agent = Command::new(AGENT)
        .args([
            "standalone",
            "-f",
            EXAMPLE,
            "--interval",
            "300ms",
            "--output",
            "json",
        ])
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // /metrics fills in once the first interval has been read.
    let deadline = Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        if let Some(body) = get(port, "/metrics")
            && body.contains("ringwarden_latency_seconds_bucket")
        {
            break body;
        }
        assert!(Instant::now() < deadline, "no metrics on port {port}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(metrics.contains("ringwarden_events_observed_total{namespace=\"default\",probeset=\"node-syscalls\",probe=\"sys\""));
    assert!(get(port, "/healthz").unwrap().ends_with("ok\n"));

    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(agent.id() as i32, libc::SIGINT) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = agent.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "agent did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    let lines: Vec<String> = BufReader::new(agent.stdout.take().unwrap())
        .lines()
        .map(Result::unwrap)
        .collect();
    let last: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(last["final"], true);
    assert!(
        last["probes"][0]["counters"]["observed"].as_u64().unwrap() > 0,
        "{last}"
    );
    assert!(
        !last["probes"][0]["rows"].as_array().unwrap().is_empty(),
        "{last}"
    );

    // Everything was detached: a second run right away works.
    let out = Command::new(AGENT)
        .args([
            "standalone",
            "-f",
            EXAMPLE,
            "--duration",
            "1s",
            "--interval",
            "500ms",
        ])
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("SYSCALL") && stdout.contains("accounting: observed"),
        "{stdout}"
    );
}

/// The observed counter of one probe in a `/metrics` text, if present.
fn observed(metrics: &str, probe: &str) -> Option<u64> {
    metrics
        .lines()
        .find(|l| {
            l.starts_with("ringwarden_events_observed_total{")
                && l.contains(&format!("probe=\"{probe}\""))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn wait_for(port: u16, what: &str, mut ok: impl FnMut(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(m) = get(port, "/metrics")
            && ok(&m)
        {
            return m;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `ringwarden-agent node` on `config`, with fixed node labels (no API),
/// serving `/metrics` on the returned port.
fn node_agent(config: &std::path::Path, labels: &str) -> (std::process::Child, u16) {
    let port = free_port();
    let agent = Command::new(AGENT)
        .args(["node", "--node-name", "test-node", "--node-labels", labels])
        .arg("--config")
        .arg(config)
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .args(["--interval", "200ms", "--reload-interval", "200ms"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (agent, port)
}

/// Stops `agent` with SIGTERM; asserts it exited cleanly and returns its
/// log.
fn stop(mut agent: std::process::Child) -> String {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let status = agent.wait().unwrap();
    let mut stderr = String::new();
    agent
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{stderr}");
    stderr
}

/// Node mode follows its configuration file without a restart: a probe for
/// this node's labels appears, one whose selector stops matching goes, and
/// an unchanged probe keeps running (its counters keep growing).
#[test]
fn node_mode_follows_the_config_file_without_restarting() {
    let dir = std::env::temp_dir().join(format!("rw-node-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("agent-config.yaml");
    // Replaced whole, as the kubelet swaps a ConfigMap volume: the agent
    // never reads a half-written file (an empty one is a valid, empty
    // configuration).
    let write = |text: String| {
        let tmp = dir.join("agent-config.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &config).unwrap();
    };
    let probe = |name: &str, selector: &str| {
        format!(
            "  - {{namespace: default, probeset: demo, spec: {{name: {name}, kind: syscalls}}, \
             nodeSelector: {{{selector}}}, ringBytes: 4096, sampleEvery: 1, reportInterval: 1s}}\n"
        )
    };
    write(format!("probes:\n{}", probe("base", "")));
    let (agent, port) = node_agent(&config, "zone=a,disk=ssd");

    let m = wait_for(port, "the base probe", |m| {
        observed(m, "base").is_some_and(|n| n > 0)
    });
    let before = observed(&m, "base").unwrap();
    write(format!(
        "probes:\n{}{}{}",
        probe("base", ""),
        probe("ssd", "disk: ssd"),
        probe("hdd", "disk: hdd")
    ));
    let m = wait_for(port, "the ssd probe", |m| observed(m, "ssd").is_some());
    assert!(
        observed(&m, "hdd").is_none(),
        "hdd does not match this node"
    );
    assert!(
        observed(&m, "base").unwrap() >= before,
        "the unchanged probe kept its counters"
    );
    write(format!("probes:\n{}", probe("ssd", "disk: nvme")));
    wait_for(port, "both probes gone", |m| {
        observed(m, "ssd").is_none() && observed(m, "base").is_none()
    });
    // A broken file keeps what runs.
    write(format!("probes:\n{}", probe("again", "")));
    wait_for(port, "the new probe", |m| observed(m, "again").is_some());
    write("probes: [this is not {".into());
    std::thread::sleep(Duration::from_millis(600));
    assert!(observed(&get(port, "/metrics").unwrap(), "again").is_some());

    let stderr = stop(agent);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(stderr.contains("keeping the running probes"), "{stderr}");
}

/// Node mode shares the configuration's node budget before it creates any
/// map: a probe that does not fit beside one of higher priority in its
/// namespace is not loaded and counts as failing, the other runs; a larger
/// budget in the next configuration loads it too.
#[test]
fn node_mode_loads_only_what_the_node_budget_holds() {
    use ringwarden_core::maps::{ProbeMaps, fixed_bytes, ringbuf_bytes};
    let dir = std::env::temp_dir().join(format!("rw-node-budget-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("agent-config.yaml");
    let write = |budget: u64| {
        let probe = |name: &str, priority: i32| {
            format!(
                "  - {{namespace: team, probeset: {name}, spec: {{name: {name}, kind: syscalls, \
                 maxSeries: 8, priority: {priority}}}, ringBytes: 4096, sampleEvery: 1, \
                 reportInterval: 1s}}\n"
            )
        };
        let tmp = dir.join("agent-config.yaml.tmp");
        std::fs::write(
            &tmp,
            format!(
                "nodeBudgetBytes: {budget}\nprobes:\n{}{}",
                probe("keep", 1),
                probe("cut", 0)
            ),
        )
        .unwrap();
        std::fs::rename(&tmp, &config).unwrap();
    };
    let cpus = u64::from(ringwarden_node_agent::probes::possible_cpus().unwrap());
    let page = u64::from(ringwarden_node_agent::probes::page_size());
    let one = fixed_bytes(&ProbeMaps::new(8), cpus, page) + ringbuf_bytes(page, page);
    // Room for one probe and a half.
    write(one + one / 2);
    let (agent, port) = node_agent(&config, "zone=a");
    let failing = |m: &str| {
        m.lines().any(|l| {
            l.starts_with("ringwarden_agent_probe_failing{")
                && l.contains("probe=\"cut\"")
                && l.ends_with(" 1")
        })
    };
    let m = wait_for(port, "keep running and cut refused", |m| {
        observed(m, "keep").is_some() && failing(m)
    });
    assert!(observed(&m, "cut").is_none(), "cut was loaded:\n{m}");
    let gauge = |m: &str, name: &str| {
        m.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse::<u64>().ok())
    };
    assert_eq!(
        gauge(&m, "ringwarden_agent_node_budget_bytes"),
        Some(one + one / 2)
    );
    // The maps and one-page ring of "keep", as the node plan counts them.
    assert_eq!(
        gauge(&m, "ringwarden_agent_node_budget_planned_bytes"),
        Some(one)
    );
    write(2 * one);
    let m = wait_for(port, "cut loaded under the larger budget", |m| {
        observed(m, "cut").is_some()
    });
    assert!(!failing(&m), "cut still failing:\n{m}");

    let stderr = stop(agent);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        stderr.contains("not loaded: its maps take")
            && stderr.contains("with 1 other ProbeSet in 0 other namespaces"),
        "{stderr}"
    );
}

/// A probe takes tens of milliseconds to load (the verifier, attaching).
/// Node mode drains the rings already running between loads, so another
/// ProbeSet arriving on the node never holds up a running ring's drains
/// (which would make it drop more than its plan predicts).
#[test]
fn node_mode_drains_running_rings_while_it_loads_new_probes() {
    const ADDED: usize = 16;
    let dir = std::env::temp_dir().join(format!("rw-node-drain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("agent-config.yaml");
    let write = |n: usize| {
        let probes: String = (0..n)
            .map(|i| {
                format!(
                    "  - {{namespace: team-{i}, probeset: demo, spec: {{name: p{i}, kind: syscalls, \
                     maxSeries: 8}}, ringBytes: 4096, sampleEvery: 1, reportInterval: 1s}}\n"
                )
            })
            .collect();
        let tmp = dir.join("agent-config.yaml.tmp");
        std::fs::write(&tmp, format!("probes:\n{probes}")).unwrap();
        std::fs::rename(&tmp, &config).unwrap();
    };
    write(1);
    let (agent, port) = node_agent(&config, "zone=a");
    wait_for(port, "the first probe running", |m| {
        observed(m, "p0").is_some()
    });
    let started = Instant::now();
    write(ADDED + 1);
    let m = wait_for(port, "every added probe running", |m| {
        (0..=ADDED).all(|i| observed(m, &format!("p{i}")).is_some())
    });
    let took = started.elapsed();
    let value = |name: &str| {
        m.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{m}"))
    };
    // What reading p0's histograms cost: one load per slot in use and
    // CPU each read, and the buckets that changed.
    let of_p0 = |name: &str| {
        m.lines()
            .find(|l| l.starts_with(&format!("{name}{{")) && l.contains("probe=\"p0\""))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{name} of p0 missing:\n{m}"))
    };
    let cpus = u64::from(ringwarden_node_agent::probes::possible_cpus().unwrap());
    let scans = of_p0("ringwarden_histogram_scans_total");
    assert!(
        scans > 0 && scans % cpus == 0,
        "{scans} scans on {cpus} CPUs"
    );
    assert!(of_p0("ringwarden_histogram_buckets_taken_total") > 0);
    let drains = value("ringwarden_agent_drain_lateness_seconds_count");
    let on_time = value("ringwarden_agent_drain_lateness_seconds_bucket{le=\"0.25\"}");
    stop(agent);
    std::fs::remove_dir_all(&dir).unwrap();
    // The loads together took far longer than the 250 ms bound below, so
    // draining only after the last would break it.
    assert!(
        took > Duration::from_millis(600),
        "{ADDED} loads took only {took:?}: too fast to show a held-up drain"
    );
    assert!(drains > 0, "no drain measured");
    assert_eq!(
        on_time,
        drains,
        "{} of {drains} drains ran more than 250 ms late while {ADDED} probes loaded",
        drains - on_time
    );
}
