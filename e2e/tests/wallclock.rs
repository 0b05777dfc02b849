//! Exported events carry the wall-clock time of the kernel's timestamp: a
//! thread of this test sleeps a known number of times, notes the wall
//! clock the moment each sleep returns, and the agent's events for those
//! sleeps must say the same time, to within the few microseconds between
//! the kernel's `sys_exit` and the return to user space.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use ringwarden_e2e::{agent_binary, require_bpf_privileges};
use serde_json::Value;

const CALLS: usize = 40;
const SLEEP: Duration = Duration::from_millis(20);
/// How far an event's wall time may be from the time this test noted.
const TOLERANCE_NS: i128 = 2_000_000;

fn wall_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i128
}

#[test]
fn events_carry_the_wall_clock_time_of_the_kernels_timestamp() {
    require_bpf_privileges();
    let dir = std::env::temp_dir().join(format!("rw-wallclock-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = dir.join("probeset.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: ringwarden.dev/v1alpha1
kind: ProbeSet
metadata: {{name: clock, namespace: default}}
spec:
  probes:
    - name: sys
      kind: syscalls
      filter: {{pids: [{}]}}
      export: {{policy: slowerThan, slowerThan: 10ms}}
      peakEventRate: 1000
",
            std::process::id()
        ),
    )
    .unwrap();

    let mut agent = Command::new(agent_binary())
        .args([
            "standalone",
            "--output",
            "json",
            "--events",
            "json",
            "--interval",
            "1s",
            "--metrics-addr",
            "off",
            "--duration",
            "20s",
            "-f",
        ])
        .arg(&manifest)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the agent");
    // Reports (and logs) on stderr: the first report means the probes run.
    let (started_tx, started) = mpsc::channel();
    let stderr = BufReader::new(agent.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if line.starts_with('{') && line.contains("\"probes\"") {
                let _ = started_tx.send(());
            }
        }
    });
    let (events_tx, events) = mpsc::channel::<Value>();
    let stdout = BufReader::new(agent.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = events_tx.send(v);
            }
        }
    });
    started
        .recv_timeout(Duration::from_secs(60))
        .expect("the agent reported within a minute");

    // The sleeping thread: its tid picks out its events.
    let (tid, noted) = std::thread::spawn(|| {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u64;
        let noted: Vec<i128> = (0..CALLS)
            .map(|_| {
                std::thread::sleep(SLEEP);
                wall_ns()
            })
            .collect();
        (tid, noted)
    })
    .join()
    .unwrap();

    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while seen.len() < CALLS && Instant::now() < deadline {
        let Ok(ev) = events.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        if ev["pid"].as_u64() == Some(tid) && ev["series"] == "clock_nanosleep" {
            seen.push(ev);
        }
    }
    let _ = agent.kill();
    let _ = agent.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        seen.len(),
        CALLS,
        "one event per sleep of the thread; got {seen:#?}"
    );

    let mut worst = 0i128;
    for (ev, noted) in seen.iter().zip(&noted) {
        let time = ev["time"].as_str().expect("a wall-clock time");
        let parsed: k8s_openapi::jiff::Timestamp = time.parse().expect("RFC 3339");
        let event_ns = parsed.as_nanosecond();
        // The kernel stamps sys_exit before the thread notes the time.
        let gap = noted - event_ns;
        assert!(
            (-TOLERANCE_NS..TOLERANCE_NS).contains(&gap),
            "event at {time}, noted {gap} ns later"
        );
        worst = worst.max(gap.abs());
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "wall-clock alignment: worst {worst} ns over {CALLS} events"
    );
}
