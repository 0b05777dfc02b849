//! Shared pieces of ringwarden's end-to-end tests.
//!
//! The live-kernel tests (`tests/`) load real programs; they need root (or
//! CAP_BPF + CAP_PERFMON) and fail with a message saying so otherwise.

use std::{
    io::{BufRead, BufReader, Write},
    process::{ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

pub mod go;

/// What `syscall-load` did, measured by itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadReport {
    pub pid: u32,
    pub getppid_calls: u64,
    /// Thread CPU time spent in the getppid loop, in ns.
    pub getppid_cpu_ns: u64,
    /// Children forked (each exits at once).
    pub forks: u64,
    /// Failing syscalls made (`close(-1)`, EBADF).
    #[serde(default)]
    pub fails: u64,
    /// User-space duration of each `nanosleep`, in ns (clock_gettime around the syscall).
    pub nanosleep_ns: Vec<u64>,
}

/// What `uprobe-target` did: the duration of each call of its function,
/// timed around the call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallReport {
    pub pid: u32,
    pub durations_ns: Vec<u64>,
}

/// A workload child (`syscall-load`, `uprobe-target`) stopped in `read(0)`
/// until [`Child::go`], so probes attach at a known moment.
pub struct Child {
    child: std::process::Child,
    stdout: BufReader<ChildStdout>,
}

impl Child {
    /// Starts `bin` and waits until it blocks in `read(0)`.
    pub fn spawn(bin: &str, args: &[&str]) -> Self {
        let mut child = Command::new(bin)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");
        let c = Self { child, stdout };
        c.wait_blocked_in_read();
        c
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the child sleeps inside `read`, so a probe attached now
    /// sees exactly one exit without an enter.
    pub fn wait_blocked_in_read(&self) {
        let read_nr = syscalls::Sysno::read.id().to_string();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = std::fs::read_to_string(format!("/proc/{}/syscall", self.pid()))
                .unwrap_or_default();
            // Asleep (`S`), not merely preempted inside the call.
            let stat =
                std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
            let state = stat.rsplit_once(") ").map(|(_, rest)| &rest[..1]);
            if s.split_whitespace().next() == Some(read_nr.as_str()) && state == Some("S") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "child never blocked in read: {s}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Lets the workload run and returns its report line, parsed. With
    /// `--hold` the child then waits again until dropped.
    pub fn go<T: DeserializeOwned>(&mut self) -> T {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("report {line:?}: {e}"))
    }

    /// [`Child::go`] for `syscall-load`, then waits for it to exit.
    pub fn go_report(mut self) -> LoadReport {
        let report = self.go();
        drop(self.child.stdin.take());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "workload failed: {status}");
        report
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// A numeric `--name value` argument of this process, or `default`.
pub fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number"))
        })
}

/// Pins the calling thread to one CPU.
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET stays in bounds.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Reads a clock (`CLOCK_MONOTONIC`, `CLOCK_THREAD_CPUTIME_ID`) in ns.
pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Panics with an actionable message unless the process may load eBPF programs.
pub fn require_bpf_privileges() {
    if let Err(e) = ringwarden_node_agent::probes::check_privileges() {
        panic!("live-kernel tests cannot run: {e}; run `sudo make test`");
    }
}

/// Loads a probe, panicking with the loader's message (verifier log
/// included) if the kernel refuses it.
pub fn load_probe(
    config: &ringwarden_node_agent::probes::ProbeConfig,
) -> ringwarden_node_agent::probes::Probe {
    use ringwarden_node_agent::probes::{Kernel, Probe};
    let kernel = Kernel::open().unwrap_or_else(|e| panic!("kernel facts: {e}"));
    Probe::load(&kernel, config)
        .unwrap_or_else(|e| panic!("loading the {} probe failed: {e}", config.kind.as_str()))
}

/// The `ringwarden-agent` binary of this build profile. Cargo builds only
/// the libraries of other packages for these tests, so the binary is built
/// (or found up to date) here first: a test never runs a stale agent.
pub fn agent_binary() -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            // target/<profile>/deps/<test>: the profile directory is two up.
            let exe = std::env::current_exe().expect("the test's own path");
            let profile_dir = exe
                .parent()
                .and_then(|d| d.parent())
                .expect("tests run from target/<profile>/deps")
                .to_path_buf();
            let target_dir = profile_dir.parent().expect("a target directory");
            let mut build = Command::new(env!("CARGO"));
            build
                .args(["build", "--quiet", "-p", "ringwarden-node-agent", "--bin"])
                .arg("ringwarden-agent")
                .env("CARGO_TARGET_DIR", target_dir)
                .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
            if profile_dir.file_name().is_some_and(|n| n == "release") {
                build.arg("--release");
            }
            let out = build.output().expect("run cargo to build ringwarden-agent");
            assert!(
                out.status.success(),
                "building ringwarden-agent failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            profile_dir.join("ringwarden-agent")
        })
        .clone()
}

/// `ringwarden-agent standalone --output json` in a child process.
pub struct StandaloneAgent {
    child: std::process::Child,
    stdout: Option<std::thread::JoinHandle<String>>,
    stderr: std::sync::mpsc::Receiver<String>,
    /// Log lines read so far.
    pub log: Vec<String>,
}

impl StandaloneAgent {
    /// Starts the agent on `manifest` for `duration` (like `6s`), with a
    /// report every second, through `wrapper` (e.g. `setpriv … --`; empty:
    /// directly) and with `extra` arguments.
    pub fn start(
        wrapper: &[String],
        manifest: &std::path::Path,
        duration: &str,
        extra: &[&str],
    ) -> Self {
        let agent = agent_binary();
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&agent);
                c
            }
            None => Command::new(&agent),
        };
        cmd.args([
            "standalone",
            "--output",
            "json",
            "--interval",
            "1s",
            "--metrics-addr",
            "off",
        ])
        .args(["--duration", duration, "-f"])
        .arg(manifest)
        .args(extra)
        .env("RINGWARDEN_LOG_FORMAT", "text")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("run {}: {e}", agent.display()));
        let mut out = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut out, &mut s);
            s
        });
        let err = BufReader::new(child.stderr.take().unwrap());
        let (tx, stderr) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in err.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            stdout: Some(stdout),
            stderr,
            log: Vec::new(),
        }
    }

    /// The agent's pid (the wrapper execs it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `probes` probes have attached or failed to load.
    pub fn wait_loaded(&mut self, probes: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let settled = |log: &[String]| {
            log.iter()
                .filter(|l| l.contains("probe attached") || l.contains("probe failed to load"))
                .count()
        };
        while settled(&self.log) < probes {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => self.log.push(line),
                Err(_) => panic!(
                    "the agent did not load {probes} probes within 60s; its log:\n{}",
                    self.log.join("\n")
                ),
            }
        }
    }

    /// Waits for the agent to exit; returns every JSON report it printed,
    /// the final one last, and its whole log.
    pub fn finish(mut self) -> (Vec<serde_json::Value>, String) {
        let status = self.child.wait().expect("wait for the agent");
        let stdout = self.stdout.take().unwrap().join().unwrap();
        self.log.extend(self.stderr.iter());
        let log = self.log.join("\n");
        assert!(
            status.success(),
            "the agent failed ({status}):\n{log}\n{stdout}"
        );
        let reports: Vec<serde_json::Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("report {l:?}: {e}")))
            .collect();
        assert!(
            reports.last().is_some_and(|r| r["final"] == true),
            "no final report:\n{stdout}\n{log}"
        );
        (reports, log)
    }
}

impl Drop for StandaloneAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Observed events per probe name in a JSON report.
pub fn observed_by_probe(report: &serde_json::Value) -> std::collections::BTreeMap<String, u64> {
    report["probes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["probe"].as_str().unwrap_or_default().to_owned(),
                p["counters"]["observed"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// The failures of a JSON report (`<probe id> (<kind>): <cause>`).
pub fn failures(report: &serde_json::Value) -> Vec<String> {
    report["failed"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str().map(str::to_owned))
        .collect()
}

/// How long [`wait_until`] waits before it gives up.
pub const WAIT: Duration = Duration::from_secs(10);

/// Reads `read()` until `done` holds for what it returned, and returns
/// that; panics after [`WAIT`] naming `what` and the last value read.
/// Kernel state can change after the syscall that caused it returns (a
/// socket's close finished in softirq, say): assert on what was awaited,
/// never on a single read right after the call.
pub fn wait_until<T: std::fmt::Debug>(
    what: &str,
    mut read: impl FnMut() -> T,
    mut done: impl FnMut(&T) -> bool,
) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        let value = read();
        if done(&value) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still {value:?} after {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The value at rank `ceil(q·n)` of a sample: the order statistic a
/// histogram percentile estimates.
pub fn exact_percentile(values: &[u64], q: f64) -> u64 {
    assert!(!values.is_empty());
    let mut v = values.to_vec();
    v.sort_unstable();
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_until_returns_the_first_value_that_is_done() {
        let mut n = 0;
        let got = wait_until(
            "n reaches 3",
            || {
                n += 1;
                n
            },
            |n| *n >= 3,
        );
        assert_eq!(got, 3);
    }

    #[test]
    #[should_panic(expected = "never: still false after")]
    fn wait_until_gives_up_naming_what_it_waited_for() {
        wait_until("never", || false, |done| *done);
    }

    #[test]
    fn exact_percentile_picks_the_ceiling_rank() {
        let v = [5, 1, 4, 2, 3];
        assert_eq!(exact_percentile(&v, 0.5), 3);
        assert_eq!(exact_percentile(&v, 0.0), 1);
        assert_eq!(exact_percentile(&v, 1.0), 5);
        assert_eq!(exact_percentile(&v, 0.99), 5);
    }
}
