//! Unsafe `uprobe.binary` paths against the real agent: a device, a FIFO,
//! a file over the size cap, a `/proc` file and symlinks out of the host
//! root are each refused with a message saying why, without the agent
//! blocking or stopping: its other probes keep reporting every interval,
//! a good uprobe among the bad ones included. Paths the CRD refuses
//! (`/dev/…`, `/proc/…`) never reach the kernel: the manifest is refused.

use std::{
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use ringwarden_e2e::{
    CallReport, Child, StandaloneAgent, agent_binary, failures, observed_by_probe,
    require_bpf_privileges,
};
use ringwarden_node_agent::target::MAX_BINARY_BYTES;

/// A fresh directory under the target directory (a real disk, where
/// uprobes can attach).
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_manifest(dir: &Path, uprobes: &[(&str, &Path)]) -> PathBuf {
    let mut yaml = String::from(
        "apiVersion: ringwarden.dev/v1alpha1
kind: ProbeSet
metadata: {name: paths}
spec:
  probes:
    - {name: sys, kind: syscalls}
",
    );
    for (name, binary) in uprobes {
        yaml.push_str(&format!(
            "    - {{name: {name}, kind: uprobe, uprobe: {{binary: {}, symbol: rw_uprobe_target}}}}\n",
            binary.display()
        ));
    }
    let path = dir.join("paths.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// The failure of probe `name`, which must exist.
fn failure_of<'a>(failed: &'a [String], name: &str) -> &'a str {
    let prefix = format!("default/paths/{name} (uprobe): ");
    failed
        .iter()
        .find_map(|f| f.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("probe {name} did not fail: {failed:?}"))
}

/// Every interval report shows the syscalls probe counting on.
fn assert_kept_reporting(reports: &[serde_json::Value]) {
    let counts: Vec<u64> = reports
        .iter()
        .map(|r| observed_by_probe(r).get("sys").copied().unwrap_or(0))
        .collect();
    assert!(counts.len() >= 3, "a report every second: {counts:?}");
    assert!(
        counts.windows(2).all(|w| w[0] <= w[1]) && counts[counts.len() - 1] > counts[0],
        "the syscalls probe keeps counting: {counts:?}"
    );
}

#[test]
fn devices_fifos_huge_files_and_proc_files_are_refused_while_the_agent_keeps_reporting() {
    require_bpf_privileges();
    let dir = scratch("uprobe-paths-kinds");
    let fifo = dir.join("fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let huge = dir.join("huge");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(MAX_BINARY_BYTES + 1)
        .unwrap();
    // The CRD refuses /dev and /proc paths as written; links lead there.
    symlink("/dev/zero", dir.join("zero")).unwrap();
    symlink("/proc/version", dir.join("version")).unwrap();
    let good = env!("CARGO_BIN_EXE_uprobe-target");
    let manifest = write_manifest(
        &dir,
        &[
            ("zero", &dir.join("zero")),
            ("fifo", &fifo),
            ("huge", &huge),
            ("procfile", &dir.join("version")),
            ("good", Path::new(good)),
        ],
    );
    let mut target = Child::spawn(good, &["--calls", "20", "--ns", "1000"]);
    let started = Instant::now();
    let mut agent = StandaloneAgent::start(&[], &manifest, "4s", &[]);
    agent.wait_loaded(6);
    let calls: CallReport = target.go();
    let (reports, log) = agent.finish();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "nothing blocked the agent: {:?}\n{log}",
        started.elapsed()
    );
    let last = reports.last().unwrap();
    let failed = failures(last);
    assert_eq!(failed.len(), 4, "{failed:?}");
    let zero = failure_of(&failed, "zero");
    assert!(
        zero.contains("it is a character device, not a program"),
        "{zero}"
    );
    let f = failure_of(&failed, "fifo");
    assert!(
        f.contains("it is a named pipe (FIFO), not a program"),
        "{f}"
    );
    let h = failure_of(&failed, "huge");
    assert!(h.contains("more than the") && h.contains("(1 GiB)"), "{h}");
    let p = failure_of(&failed, "procfile");
    assert!(p.contains("it is on procfs, a kernel interface"), "{p}");
    assert_eq!(
        observed_by_probe(last)["good"],
        calls.durations_ns.len() as u64
    );
    assert_kept_reporting(&reports);
}

#[test]
fn symlinks_cannot_lead_out_of_the_host_root() {
    require_bpf_privileges();
    let root = scratch("uprobe-paths-root");
    let outside = scratch("uprobe-paths-outside");
    // A usable binary outside the root: reaching it would attach.
    let escaped = outside.join("uprobe-target");
    std::fs::copy(env!("CARGO_BIN_EXE_uprobe-target"), &escaped).unwrap();
    // And one inside, run by its path under the root.
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    let inside = root.join("usr/bin/uprobe-target");
    std::fs::copy(env!("CARGO_BIN_EXE_uprobe-target"), &inside).unwrap();
    symlink(&escaped, root.join("usr/bin/absolute")).unwrap();
    let depth = root.components().count();
    let up = "../".repeat(depth + 2);
    symlink(
        format!("{up}{}", escaped.display()),
        root.join("usr/bin/relative"),
    )
    .unwrap();
    let manifest = write_manifest(
        &root,
        &[
            ("absolute", Path::new("/usr/bin/absolute")),
            ("relative", Path::new("/usr/bin/relative")),
            ("inside", Path::new("/usr/bin/uprobe-target")),
        ],
    );
    let mut target = Child::spawn(inside.to_str().unwrap(), &["--calls", "20", "--ns", "1000"]);
    let root_arg = root.to_str().unwrap().to_owned();
    let mut agent = StandaloneAgent::start(&[], &manifest, "4s", &["--host-root", &root_arg]);
    agent.wait_loaded(4);
    let calls: CallReport = target.go();
    let (reports, _) = agent.finish();
    let last = reports.last().unwrap();
    let failed = failures(last);
    assert_eq!(failed.len(), 2, "{failed:?}");
    for name in ["absolute", "relative"] {
        let e = failure_of(&failed, name);
        assert!(
            e.contains(&format!("no such file under the host root {root_arg}"))
                && e.contains("symlinks resolve inside it"),
            "{name}: {e}"
        );
    }
    assert_eq!(
        observed_by_probe(last)["inside"],
        calls.durations_ns.len() as u64,
        "the binary under the root is the one attached"
    );
    assert_kept_reporting(&reports);
}

#[test]
fn paths_under_dev_and_proc_are_refused_in_the_manifest_naming_the_field() {
    let dir = scratch("uprobe-paths-manifest");
    for (binary, _) in [("/dev/zero", ()), ("/proc/self/exe", ())] {
        let manifest = write_manifest(&dir, &[("bad", Path::new(binary))]);
        let out = std::process::Command::new(agent_binary())
            .args([
                "standalone",
                "--duration",
                "1s",
                "--metrics-addr",
                "off",
                "-f",
            ])
            .arg(&manifest)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "a usage error: {stderr}");
        assert!(
            stderr.contains("spec.probes[1].uprobe.binary")
                && stderr.contains("must not be under /dev, /proc or /sys")
                && stderr.contains("e.g. /usr/bin/app"),
            "{binary}: {stderr}"
        );
    }
}
