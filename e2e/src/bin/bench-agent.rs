//! `make bench`: the agent's own cost at a sustained event rate.
//!
//! Starts `ringwarden-agent standalone` on a ProbeSet that exports every
//! syscall of one load process, runs that process at `--rate` getppid per
//! second (100 k by default) for `--seconds`, and reads the agent's CPU time
//! (utime + stime from /proc) and peak RSS (VmHWM). The agent drains the
//! ring on its timer, decodes and counts every record.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use ringwarden_e2e::{LoadReport, arg, require_bpf_privileges};

/// CPU seconds (user + system) a process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / hz
}

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    require_bpf_privileges();
    let rate = arg("--rate", 100_000);
    let seconds = arg("--seconds", 10);
    let dir = std::env::current_exe().unwrap();
    let load_exe = dir.with_file_name("syscall-load");
    let agent_exe = dir.with_file_name("ringwarden-agent");

    let mut load = Command::new(&load_exe)
        .args([
            "--rate",
            &rate.to_string(),
            "--seconds",
            &seconds.to_string(),
            "--cpu",
            "0",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", load_exe.display()));
    let mut out = BufReader::new(load.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();

    let manifest = std::env::temp_dir().join(format!("rw-bench-agent-{}.yaml", std::process::id()));
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: ringwarden.dev/v1alpha1\nkind: ProbeSet\nmetadata: {{name: bench}}\n\
             spec:\n  probes:\n    - name: sys\n      kind: syscalls\n      filter: {{pids: [{}]}}\n      \
             export: {{policy: all}}\n      peakEventRate: {}\n",
            load.id(),
            rate * 11 / 10
        ),
    )
    .unwrap();
    let mut agent = Command::new(&agent_exe)
        .args(["standalone", "-f"])
        .arg(&manifest)
        .args([
            "--interval",
            "5s",
            "--metrics-addr",
            "off",
            "--output",
            "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", agent_exe.display()));
    let pid = agent.id();
    // Let it load and settle before measuring.
    std::thread::sleep(Duration::from_secs(2));
    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    load.stdin.take().unwrap().write_all(b"go\n").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    let report: LoadReport = serde_json::from_str(&line).unwrap();
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu0;
    let hwm = status_kib(pid, "VmHWM:");
    let rss = status_kib(pid, "VmRSS:");
    load.wait().unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let mut final_report = String::new();
    let mut agent_out = BufReader::new(agent.stdout.take().unwrap());
    let mut l = String::new();
    while agent_out.read_line(&mut l).unwrap_or(0) > 0 {
        final_report = std::mem::take(&mut l);
    }
    agent.wait().unwrap();
    let _ = std::fs::remove_file(&manifest);
    let v: serde_json::Value = serde_json::from_str(&final_report).unwrap_or_default();
    let c = &v["probes"][0]["counters"];
    println!(
        "agent at {:.0} events/s for {elapsed:.1} s: {:.2}% of one core, peak RSS {:.1} MiB (now {:.1} MiB)",
        report.getppid_calls as f64 / elapsed,
        100.0 * cpu / elapsed,
        hwm as f64 / 1024.0,
        rss as f64 / 1024.0
    );
    println!(
        "agent accounting: exported {} = delivered {} + ringbuf_dropped {}; received {}",
        c["exported"], c["delivered"], c["ringbufDropped"], v["probes"][0]["events_received"]
    );
}
