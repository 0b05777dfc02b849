//! The TCP probes against real connections: a listener in a network
//! namespace the test creates, reached over a veth pair. There is no netem
//! here, so loss is made by removing the peer's address (packets arrive and
//! are silently dropped) and the kernel's own `TCP_INFO` says how many
//! retransmits that caused.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::AsRawFd,
    process::Command,
    time::{Duration, Instant},
};

use ringwarden_crds::ProbeKind;
use ringwarden_e2e::{exact_percentile, load_probe, require_bpf_privileges, wait_until};
use ringwarden_node_agent::probes::ProbeConfig;

/// A network namespace with a veth pair to it; removed on drop. With a
/// client namespace, the other end lives there instead of on the host.
struct Netns {
    name: String,
    client: Option<String>,
    host_if: String,
    peer: Ipv4Addr,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    /// `n` keeps tests of one run apart (names, subnets).
    fn new(n: u8) -> Self {
        Self::create(n, false)
    }

    /// Both ends in namespaces of their own: the client side's counters
    /// (`/proc/thread-self/net/snmp`) then see only the test's traffic.
    fn with_client(n: u8) -> Self {
        Self::create(n, true)
    }

    fn create(n: u8, client: bool) -> Self {
        let id = format!("{}{n}", std::process::id() % 10_000);
        let name = format!("rwtest{id}");
        let client = client.then(|| format!("rwcli{id}"));
        let host_if = format!("rwh{id}");
        let peer_if = format!("rwp{id}");
        let (host, peer) = (Ipv4Addr::new(10, 231, n, 1), Ipv4Addr::new(10, 231, n, 2));
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        ip(&["netns", "add", &name]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if,
        ]);
        ip(&["link", "set", &peer_if, "netns", &name]);
        let mut on_host: Vec<&str> = vec![];
        if let Some(c) = &client {
            let _ = Command::new("ip").args(["netns", "del", c]).output();
            ip(&["netns", "add", c]);
            ip(&["link", "set", &host_if, "netns", c]);
            ip(&["-n", c, "link", "set", "lo", "up"]);
            on_host = vec!["-n", c];
        }
        let host_cmd = |args: &[&str]| ip(&[on_host.as_slice(), args].concat());
        host_cmd(&["addr", "add", &format!("{host}/24"), "dev", &host_if]);
        host_cmd(&["link", "set", &host_if, "up"]);
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{peer}/24"),
            "dev",
            &peer_if,
        ]);
        ip(&["-n", &name, "link", "set", &peer_if, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Self {
            name,
            client,
            host_if,
            peer,
        }
    }

    /// Runs `f` on a thread that has entered the server namespace: sockets
    /// it creates live there.
    fn spawn_inside<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        spawn_in(self.name.clone(), f)
    }

    /// Runs `f` on a thread in the client namespace.
    fn spawn_client<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        spawn_in(self.client.clone().expect("a client namespace"), f)
    }
}

fn spawn_in<T: Send + 'static>(
    name: String,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/var/run/netns/{name}");
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).expect("open the netns");
        // SAFETY: a valid netns fd; affects only this thread.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
}

impl Netns {
    /// Makes the peer drop everything sent to it, without a reply.
    fn blackhole_peer(&self) {
        ip(&[
            "-n",
            &self.name,
            "addr",
            "flush",
            "dev",
            &format!("rwp{}", &self.host_if[3..]),
        ]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        if let Some(c) = &self.client {
            let _ = Command::new("ip").args(["netns", "del", c]).output();
        }
    }
}

/// A probe of `kind` that observes only the calling test's thread, by its
/// comm (the test harness names threads after tests, and tests of one
/// binary run side by side). The agent's self-exclusion is off: here the
/// test is the workload.
fn probe_for_me(kind: ProbeKind) -> ProbeConfig {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    let comm = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).unwrap();
    let mut c = ProbeConfig::new(kind);
    c.exclude_tgid = 0;
    c.comms = vec![comm.trim_end().to_string()];
    c
}

#[test]
fn connects_and_refusals_are_counted_and_timed() {
    require_bpf_privileges();
    let ns = Netns::new(1);
    let addr = ns.peer;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = ns.spawn_inside(move || {
        // Ports of this run only (series are keyed by port): one listening,
        // one known to be closed.
        let closed = TcpListener::bind(SocketAddrV4::new(addr, 0)).unwrap();
        let l = TcpListener::bind(SocketAddrV4::new(addr, 0)).unwrap();
        let ports = (
            l.local_addr().unwrap().port(),
            closed.local_addr().unwrap().port(),
        );
        drop(closed);
        ready_tx.send(ports).unwrap();
        for s in l.incoming().take(50) {
            drop(s.unwrap());
        }
    });
    let (port, closed) = ready_rx.recv().unwrap();
    let probe = load_probe(&probe_for_me(ProbeKind::TcpConnect));

    let mut timings = Vec::new();
    for _ in 0..50 {
        let t0 = Instant::now();
        let s = TcpStream::connect(SocketAddrV4::new(ns.peer, port)).unwrap();
        timings.push(t0.elapsed().as_nanos() as u64);
        drop(s);
    }
    let mut refused = 0;
    for _ in 0..7 {
        if TcpStream::connect(SocketAddrV4::new(ns.peer, closed)).is_err() {
            refused += 1;
        }
    }
    server.join().unwrap();
    assert_eq!(refused, 7, "a closed port answers with RST");

    let count = |snap: &ringwarden_node_agent::probes::Snapshot, port: u16| {
        snap.series
            .get(&format!("port {port}"))
            .map_or(0, |h| h.count())
    };
    let snap = wait_until(
        "50 connects and 7 refusals counted",
        || probe.snapshot().unwrap(),
        |s| count(s, port) >= 50 && count(s, closed) >= 7,
    );
    let c = snap.counters;
    assert_eq!(c.check_identities(), Ok(()), "{c:?}");
    let ok = &snap.series[&format!("port {port}")];
    let failed = &snap.series[&format!("port {closed}")];
    assert_eq!(ok.count(), 50);
    assert_eq!(ok.errors(), 0);
    assert_eq!(failed.count(), 7);
    assert_eq!(failed.errors(), 7, "SYN_SENT → CLOSE is a failed connect");
    // The handshake is inside connect(): the kernel's time is at most the
    // user-space time, and not far below it.
    let truth = exact_percentile(&timings, 0.5);
    let measured = ok.percentile(0.5).unwrap();
    assert!(
        measured as f64 <= truth as f64 * (1.0 + 1.0 / 64.0) + 1_000.0,
        "kernel p50 {measured} ns > connect() p50 {truth} ns"
    );
    assert!(
        measured * 20 >= truth,
        "kernel p50 {measured} ns is implausibly far below connect() p50 {truth} ns"
    );
}

/// Connects that cannot be timed because the start map is full are still
/// observed, as pairing losses, and the identity holds to the event.
#[test]
fn a_full_start_map_is_a_counted_pairing_loss() {
    require_bpf_privileges();
    let ns = Netns::new(2);
    ns.blackhole_peer(); // SYNs go unanswered: connects stay in SYN_SENT
    let mut config = probe_for_me(ProbeKind::TcpConnect);
    config.start_entries = 1;
    let probe = load_probe(&config);
    let mut pending = Vec::new();
    for port in 18_090..18_093 {
        // SAFETY: plain socket calls on a fresh fd we own.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
            assert!(fd >= 0);
            let sa = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: u16::to_be(port),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(ns.peer.octets()),
                },
                sin_zero: [0; 8],
            };
            let rc = libc::connect(
                fd,
                (&sa as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as u32,
            );
            assert_eq!(rc, -1);
            assert_eq!(
                std::io::Error::last_os_error().raw_os_error(),
                Some(libc::EINPROGRESS)
            );
            pending.push(fd);
        }
    }
    let c = wait_until(
        "two connects past the full start map",
        || probe.snapshot().unwrap().counters,
        |c| c.observed >= 2,
    );
    assert_eq!(c.start_map_full, 2, "{c:?}");
    assert_eq!(c.pairing_dropped, 2, "{c:?}");
    assert_eq!(c.observed, 2, "the stored one has not ended yet: {c:?}");
    for fd in pending {
        // SAFETY: closing fds we opened. SYN_SENT → CLOSE ends the stored connect.
        unsafe { libc::close(fd) };
    }
    // The stored connect ends when the kernel closes the socket, which
    // may finish after close() returns.
    let snap = wait_until(
        "the stored connect ended",
        || probe.snapshot().unwrap(),
        |s| s.counters.observed >= 3,
    );
    let c = snap.counters;
    assert_eq!(c.observed, 3, "{c:?}");
    assert_eq!(c.aggregated, 1);
    assert_eq!(c.check_identities(), Ok(()), "{c:?}");
    let errors: u64 = snap.series.values().map(|h| h.errors()).sum();
    assert_eq!(errors, 1, "an abandoned connect is a failed one");
}

/// `Tcp: RetransSegs` of the calling thread's network namespace: every
/// retransmitted segment, timeouts and tail-loss probes alike.
fn retrans_segs() -> u64 {
    let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp").unwrap();
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap(), tcp.next().unwrap());
    let i = names
        .split_whitespace()
        .position(|n| n == "RetransSegs")
        .unwrap();
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

#[test]
fn retransmits_match_the_kernels_own_count() {
    require_bpf_privileges();
    let ns = Netns::with_client(3);
    let addr = ns.peer;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = ns.spawn_inside(move || {
        // A port of this run only: sockets of earlier runs may still be
        // retransmitting FINs to the same address from their old namespace.
        let l = TcpListener::bind(SocketAddrV4::new(addr, 0)).unwrap();
        ready_tx.send(l.local_addr().unwrap().port()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let mut buf = [0u8; 16];
        let _ = s.read(&mut buf);
        s
    });
    let port = ready_rx.recv().unwrap();
    let mut config = ProbeConfig::new(ProbeKind::TcpRetransmit);
    config.exclude_tgid = 0;
    let probe = std::sync::Arc::new(load_probe(&config));
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let series = format!("{}:{port}", ns.peer);
    let p = probe.clone();
    let client = ns.spawn_client(move || {
        let mut stream = TcpStream::connect(SocketAddrV4::new(addr, port)).unwrap();
        stream.write_all(b"hello").unwrap();
        go_rx.recv().unwrap(); // the peer has read it and now drops everything
        let before = retrans_segs();
        stream.write_all(b"into the void").unwrap();
        // RTO starts at 200 ms and doubles: wait for a few retransmits.
        let deadline = Instant::now() + Duration::from_secs(10);
        while retrans_segs() - before < 3 {
            assert!(Instant::now() < deadline, "no retransmits");
            std::thread::sleep(Duration::from_millis(50));
        }
        // Read the kernel's count on both sides of the snapshot, so a
        // retransmit between the reads cannot make the comparison inexact.
        loop {
            let a = retrans_segs();
            let snap = p.snapshot().unwrap();
            if retrans_segs() == a {
                return (a - before, snap);
            }
        }
    });
    let _peer_side = server.join().unwrap();
    ns.blackhole_peer();
    go_tx.send(()).unwrap();
    let (expected, snap) = client.join().unwrap();
    let h = snap
        .series
        .get(&series)
        .unwrap_or_else(|| panic!("no series {series}: {:?}", snap.series.keys()));
    assert_eq!(h.count() - h.errors(), expected, "successful retransmits");
    assert_eq!(snap.counters.check_identities(), Ok(()));
}
