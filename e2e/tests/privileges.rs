//! The agent under exactly the capabilities the operator's DaemonSet
//! grants it, read from the rendered DaemonSet so this cannot drift from
//! the chart: every other capability is dropped with `setpriv` (bounding,
//! inheritable and ambient sets), and one probe of every kind must report
//! events. With the uprobe opt-in (`agent.uprobes.enabled`) all six kinds
//! run; without it the uprobe fails naming CAP_SYS_ADMIN and the chart
//! value, and the other five run.

use std::{
    io::Write,
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    process::Command,
    sync::Mutex,
    time::Duration,
};

use ringwarden_e2e::{
    CallReport, Child, StandaloneAgent, failures, observed_by_probe, require_bpf_privileges,
};
use ringwarden_operator::{config::AgentSettings, reconcile::render};

/// One agent run at a time: both tests load every probe kind.
static SERIAL: Mutex<()> = Mutex::new(());

/// The capabilities the rendered agent container adds, e.g. `["BPF", "PERFMON"]`.
fn granted(settings: &AgentSettings) -> Vec<String> {
    let ds = render::daemon_set(&[], settings, "ringwarden").expect("render the DaemonSet");
    let spec = ds.spec.unwrap().template.spec.unwrap();
    let sc = spec.containers[0].security_context.clone().unwrap();
    let caps = sc.capabilities.unwrap();
    assert_eq!(caps.drop, Some(vec!["ALL".to_string()]), "all else dropped");
    assert_eq!(sc.privileged, Some(false));
    caps.add.unwrap()
}

/// `setpriv` arguments that leave exactly `caps` (and run as root, as the
/// agent container does).
fn setpriv(caps: &[String]) -> Vec<String> {
    let ok = Command::new("setpriv").arg("--version").output();
    assert!(
        ok.is_ok_and(|o| o.status.success()),
        "this test drops capabilities with setpriv (util-linux); install it"
    );
    let list: String = std::iter::once("-all".to_string())
        .chain(caps.iter().map(|c| format!("+{}", c.to_lowercase())))
        .collect::<Vec<_>>()
        .join(",");
    [
        "setpriv",
        "--inh-caps",
        &list,
        "--ambient-caps",
        &list,
        "--bounding-set",
        &list,
        "--",
    ]
    .map(String::from)
    .to_vec()
}

/// The capability mask of `caps` (Linux numbering).
fn mask(caps: &[String]) -> u64 {
    caps.iter()
        .map(|c| match c.as_str() {
            "SYS_ADMIN" => 21,
            "SYS_PTRACE" => 19,
            "PERFMON" => 38,
            "BPF" => 39,
            other => panic!("capability {other} has no number here; add it"),
        })
        .fold(0, |m, bit| m | (1u64 << bit))
}

fn cap_eff(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim()
        .to_string();
    u64::from_str_radix(&hex, 16).unwrap()
}

/// A veth pair whose far end has no address: SYNs to it are retransmitted.
struct Blackhole(String);

impl Blackhole {
    fn new(n: u8) -> (Self, Ipv4Addr) {
        let name = format!("rwpriv{n}");
        let ip = |args: &[&str]| {
            let out = Command::new("ip")
                .args(args)
                .output()
                .expect("run ip (iproute2)");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let _ = Command::new("ip").args(["link", "del", &name]).output();
        ip(&[
            "link",
            "add",
            &name,
            "type",
            "veth",
            "peer",
            "name",
            &format!("{name}p"),
        ]);
        ip(&["addr", "add", &format!("10.203.{n}.1/30"), "dev", &name]);
        ip(&["link", "set", &name, "up"]);
        ip(&["link", "set", &format!("{name}p"), "up"]);
        (Self(name), Ipv4Addr::new(10, 203, n, 2))
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).output();
    }
}

const KINDS: [&str; 6] = ["sys", "connect", "retransmit", "runq", "disk", "fn"];

fn manifest(dir: &std::path::Path, target: &str) -> std::path::PathBuf {
    let path = dir.join("all-kinds.yaml");
    std::fs::write(
        &path,
        format!(
            "apiVersion: ringwarden.dev/v1alpha1
kind: ProbeSet
metadata: {{name: all-kinds}}
spec:
  probes:
    - {{name: sys, kind: syscalls}}
    - {{name: connect, kind: tcpConnect}}
    - {{name: retransmit, kind: tcpRetransmit}}
    - {{name: runq, kind: runqueue}}
    - {{name: disk, kind: blockIO}}
    - {{name: fn, kind: uprobe, uprobe: {{binary: {target}, symbol: rw_uprobe_target}}}}
"
        ),
    )
    .unwrap();
    path
}

/// Runs the agent with `caps` on one probe of each kind while this test
/// makes each kind's events; returns the final report.
fn run_every_kind(caps: &[String], net: u8) -> serde_json::Value {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("privileges-{net}"));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = env!("CARGO_BIN_EXE_uprobe-target");
    let mut target = Child::spawn(bin, &["--calls", "50", "--ns", "1000"]);
    let (_blackhole, unreachable) = Blackhole::new(net);
    let mut agent = StandaloneAgent::start(&setpriv(caps), &manifest(&dir, bin), "5s", &[]);
    agent.wait_loaded(KINDS.len());
    assert_eq!(
        cap_eff(agent.pid()),
        mask(caps),
        "the agent runs with exactly {caps:?}"
    );

    // tcpConnect: connections to a local listener.
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    for _ in 0..5 {
        drop(TcpStream::connect(listener.local_addr().unwrap()).unwrap());
    }
    // tcpRetransmit: a SYN nobody answers is retransmitted after 1s.
    let syn = std::thread::spawn(move || {
        let _ = TcpStream::connect_timeout(
            &SocketAddrV4::new(unreachable, 9).into(),
            Duration::from_millis(1800),
        );
    });
    // blockIO: written and flushed to the disk under the target directory.
    let mut f = std::fs::File::create(dir.join("block-io")).unwrap();
    for _ in 0..8 {
        f.write_all(&[7u8; 64 << 10]).unwrap();
        f.sync_all().unwrap();
    }
    // uprobe: the target calls its function.
    let calls: CallReport = target.go();
    assert_eq!(calls.durations_ns.len(), 50);
    // syscalls and runqueue: everything above.
    syn.join().unwrap();
    let (reports, log) = agent.finish();
    let last = reports.last().unwrap().clone();
    eprintln!("{log}");
    last
}

#[test]
fn with_the_uprobe_opt_in_every_probe_kind_reports_events_under_the_daemonsets_capabilities() {
    require_bpf_privileges();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut settings = AgentSettings::default();
    settings.uprobes.enabled = true;
    let caps = granted(&settings);
    assert!(caps.contains(&"SYS_ADMIN".to_string()), "{caps:?}");
    let report = run_every_kind(&caps, 1);
    assert_eq!(failures(&report), Vec::<String>::new(), "{report:#}");
    let observed = observed_by_probe(&report);
    for kind in KINDS {
        assert!(
            observed.get(kind).is_some_and(|&n| n > 0),
            "probe {kind} saw no events under {caps:?}: {observed:?}"
        );
    }
    assert_eq!(observed["fn"], 50, "every call of the function");
}

#[test]
fn without_the_uprobe_opt_in_the_uprobe_fails_naming_cap_sys_admin_and_the_others_run() {
    require_bpf_privileges();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let caps = granted(&AgentSettings::default());
    assert_eq!(caps, ["BPF", "PERFMON"], "the default agent has no more");
    let report = run_every_kind(&caps, 2);
    let failed = failures(&report);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0].starts_with("default/all-kinds/fn (uprobe)")
            && failed[0].contains("lacks CAP_SYS_ADMIN")
            && failed[0].contains("agent.uprobes.enabled=true")
            && !failed[0].contains("nm "),
        "{}",
        failed[0]
    );
    let observed = observed_by_probe(&report);
    for kind in KINDS.iter().filter(|k| **k != "fn") {
        assert!(
            observed.get(*kind).is_some_and(|&n| n > 0),
            "probe {kind} saw no events under {caps:?}: {observed:?}"
        );
    }
}
