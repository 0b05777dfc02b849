//! `blockIO` and `uprobe` against load the tests make themselves: O_DIRECT
//! reads of a loop device and a program with a known function.

use std::{
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt},
    process::Command,
    time::Instant,
};

use ringwarden_core::histogram::MAX_RELATIVE_ERROR;
use ringwarden_crds::ProbeKind;
use ringwarden_e2e::{
    CallReport, Child, exact_percentile, load_probe, require_bpf_privileges, wait_until,
};
use ringwarden_node_agent::probes::{ProbeConfig, block_device_name};

/// A loop device over a temporary file; detached on drop.
struct LoopDevice {
    dev: String,
    file: std::path::PathBuf,
}

impl LoopDevice {
    fn new(mib: u64) -> Self {
        let file = std::env::temp_dir().join(format!("rw-loop-{}.img", std::process::id()));
        let f = std::fs::File::create(&file).unwrap();
        f.set_len(mib << 20).unwrap();
        drop(f);
        let out = Command::new("losetup")
            .args(["--find", "--show", "--direct-io=on"])
            .arg(&file)
            .output()
            .expect("run losetup (util-linux)");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = String::from_utf8(out.stdout).unwrap().trim().to_string();
        Self { dev, file }
    }

    /// `major:minor` → the series name the probe shows, e.g. `loop3 read`.
    fn series(&self, op: &str) -> String {
        use std::os::unix::fs::MetadataExt;
        let rdev = std::fs::metadata(&self.dev).unwrap().rdev();
        let (major, minor) = (libc::major(rdev), libc::minor(rdev));
        format!("{} {op}", block_device_name(major, minor))
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).output();
        let _ = std::fs::remove_file(&self.file);
    }
}

#[test]
fn block_io_counts_every_direct_read_and_times_it() {
    require_bpf_privileges();
    const READS: usize = 300;
    let lo = LoopDevice::new(16);
    let mut config = ProbeConfig::new(ProbeKind::BlockIo);
    config.exclude_tgid = 0; // this test process issues the reads
    let probe = load_probe(&config);

    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&lo.dev)
        .unwrap();
    // O_DIRECT needs an aligned buffer.
    let layout = std::alloc::Layout::from_size_align(4096, 4096).unwrap();
    // SAFETY: non-zero size; freed below with the same layout.
    let buf = unsafe { std::alloc::alloc(layout) };
    let mut timings = Vec::with_capacity(READS);
    for i in 0..READS {
        let offset = (i as i64 * 4096 * 7) % (16 << 20);
        let t0 = Instant::now();
        // SAFETY: `buf` holds 4096 bytes; the fd is open.
        let n = unsafe { libc::pread(f.as_raw_fd(), buf.cast(), 4096, offset) };
        timings.push(t0.elapsed().as_nanos() as u64);
        assert_eq!(n, 4096, "{}", std::io::Error::last_os_error());
    }
    // SAFETY: allocated above with this layout.
    unsafe { std::alloc::dealloc(buf, layout) };

    let series = lo.series("read");
    let snap = wait_until(
        &format!("{READS} reads of {series} counted"),
        || probe.snapshot().unwrap(),
        |s| s.series.get(&series).map_or(0, |h| h.count()) >= READS as u64,
    );
    let h = &snap.series[&series];
    assert_eq!(h.count(), READS as u64, "one request per O_DIRECT read");
    assert_eq!(h.errors(), 0);
    assert_eq!(snap.counters.check_identities(), Ok(()));
    // The request is inside the read: the kernel's median is at most the
    // user-space one.
    let truth = exact_percentile(&timings, 0.5);
    let measured = h.percentile(0.5).unwrap();
    assert!(
        measured as f64 <= truth as f64 * (1.0 + MAX_RELATIVE_ERROR),
        "kernel p50 {measured} ns > pread p50 {truth} ns"
    );
    assert!(measured > 0);
}

#[test]
fn a_uprobe_times_a_known_function() {
    require_bpf_privileges();
    let bin = env!("CARGO_BIN_EXE_uprobe-target");
    let mut target = Child::spawn(bin, &["--calls", "200", "--ns", "200000"]);
    let mut config = ProbeConfig::new(ProbeKind::Uprobe);
    config.uprobe = Some((bin.to_string(), "rw_uprobe_target".to_string()));
    config.pids = vec![target.pid()];
    let probe = load_probe(&config);
    let report: CallReport = target.go();
    let snap = probe.snapshot().unwrap();
    let h = &snap.series["rw_uprobe_target"];
    assert_eq!(h.count(), 200);
    assert_eq!(snap.counters.check_identities(), Ok(()));
    assert_eq!(snap.counters.pairing_dropped, 0);
    let truth = exact_percentile(&report.durations_ns, 0.5);
    let measured = h.percentile(0.5).unwrap();
    let tolerance = truth as f64 * MAX_RELATIVE_ERROR + 20_000.0;
    assert!(
        (measured as f64 - truth as f64).abs() <= tolerance,
        "kernel p50 {measured} ns vs caller's p50 {truth} ns"
    );
}

#[test]
fn a_uprobe_on_a_missing_symbol_fails_with_the_cause() {
    require_bpf_privileges();
    let mut config = ProbeConfig::new(ProbeKind::Uprobe);
    let bin = env!("CARGO_BIN_EXE_uprobe-target");
    config.uprobe = Some((bin.to_string(), "no_such_function_here".to_string()));
    let kernel = ringwarden_node_agent::probes::Kernel::open().unwrap();
    let e = ringwarden_node_agent::probes::Probe::load(&kernel, &config)
        .err()
        .expect("a missing symbol cannot be attached")
        .to_string();
    assert!(
        e.contains("no_such_function_here") && e.contains("nm"),
        "{e}"
    );
}
