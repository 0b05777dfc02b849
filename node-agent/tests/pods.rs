//! A `podSelector` probe on a live kernel while pods come and go: the real
//! `ringwarden-agent node` process, pods served by an in-process mock of
//! the API server (list and watch of `/api/v1/pods`, metadata only), and
//! pod cgroups the test makes under `/sys/fs/cgroup/ringwarden-test-*`
//! with worker processes of its own in them. The ground truth is the
//! number of `getppid` calls each worker makes; the agent's `/metrics`
//! must count exactly those of the selected pods' workers, with the
//! program loaded once and its counters never reset. The watch is then
//! broken: the probe keeps its last filter and keeps counting.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Body,
    extract::{Path as UrlPath, RawQuery, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get as route_get,
};
use common::{free_port, get};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const AGENT: &str = env!("CARGO_BIN_EXE_ringwarden-agent");
const NODE: &str = "node-t";
/// The probe's labels in the snapshot families, and in the agent's own
/// families (which the Prometheus client sorts by name).
const LABELS: &str = r#"namespace="shop",probeset="web",probe="sys",node="node-t""#;
const AGENT_LABELS: &str = r#"namespace="shop",node="node-t",probe="sys",probeset="web""#;

// ---------------------------------------------------------------- mock API

/// Pods of the mock API server, an event log for watches to resume from,
/// the open watches, and every pods request seen.
#[derive(Default)]
struct Api {
    pods: BTreeMap<String, Value>,
    version: u64,
    log: Vec<(u64, String)>,
    watches: Vec<mpsc::UnboundedSender<Result<String, std::io::Error>>>,
    failing: bool,
    requests: Vec<String>,
}

type Shared = Arc<Mutex<Api>>;

fn pod_meta(namespace: &str, uid: &str, app: &str, version: u64) -> Value {
    json!({
        "apiVersion": "meta.k8s.io/v1",
        "kind": "PartialObjectMetadata",
        "metadata": {
            "name": format!("pod-{}", &uid[uid.len() - 4..]),
            "namespace": namespace,
            "uid": uid,
            "labels": {"app": app},
            "resourceVersion": version.to_string(),
        },
    })
}

impl Api {
    fn event(&mut self, kind: &str, object: Value) {
        let line = format!("{}\n", json!({"type": kind, "object": object}));
        self.log.push((self.version, line.clone()));
        self.watches.retain(|w| w.send(Ok(line.clone())).is_ok());
    }

    fn apply(&mut self, namespace: &str, uid: &str, app: &str) {
        self.version += 1;
        let pod = pod_meta(namespace, uid, app, self.version);
        let kind = if self.pods.contains_key(uid) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.pods.insert(uid.to_string(), pod.clone());
        self.event(kind, pod);
    }

    fn delete(&mut self, uid: &str) {
        self.version += 1;
        let mut pod = self.pods.remove(uid).expect("a pod to delete");
        pod["metadata"]["resourceVersion"] = json!(self.version.to_string());
        self.event("DELETED", pod);
    }

    /// Lists and watches fail, and the open watches end, until `false`.
    fn fail(&mut self, failing: bool) {
        self.failing = failing;
        if failing {
            self.watches.clear();
        }
    }
}

fn status(code: u16, message: &str) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": message, "code": code});
    (
        StatusCode::from_u16(code).unwrap(),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn pods(State(api): State<Shared>, RawQuery(query): RawQuery) -> Response {
    let query = query.unwrap_or_default();
    let mut a = api.lock().unwrap();
    a.requests.push(query.clone());
    if a.failing {
        return status(500, "etcd is having a bad day");
    }
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .map(str::to_owned)
    };
    if param("watch").as_deref() == Some("true") {
        let from: u64 = param("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let (tx, rx) = mpsc::unbounded_channel();
        for (version, line) in &a.log {
            if *version > from {
                let _ = tx.send(Ok(line.clone()));
            }
        }
        a.watches.push(tx);
        let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
        return Response::builder()
            .header("content-type", "application/json")
            .body(Body::from_stream(stream))
            .unwrap();
    }
    let list = json!({
        "apiVersion": "meta.k8s.io/v1",
        "kind": "PartialObjectMetadataList",
        "metadata": {"resourceVersion": a.version.to_string()},
        "items": a.pods.values().collect::<Vec<_>>(),
    });
    ([("content-type", "application/json")], list.to_string()).into_response()
}

async fn node(UrlPath(name): UrlPath<String>) -> Response {
    let node = json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"pool": "web"}}});
    ([("content-type", "application/json")], node.to_string()).into_response()
}

/// Serves the mock API on loopback from a thread of its own, so the test
/// may block (waiting for its workers) while the API answers; returns its
/// port.
fn serve(api: Shared) -> u16 {
    let app = Router::new()
        .route("/api/v1/pods", route_get(pods))
        .route("/api/v1/nodes/{name}", route_get(node))
        .with_state(api);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap()
        })
    });
    port
}

// ---------------------------------------------------------------- cgroups and workers

/// The test's cgroup tree, in the kubelet's layouts; removed on drop.
struct PodCgroups {
    root: PathBuf,
    dirs: Vec<PathBuf>,
}

impl PodCgroups {
    fn new(test: &str) -> Self {
        let mount = ringwarden_node_agent::probes::cgroup2_mount()
            .expect("a cgroup2 file system (pod filters need cgroup v2)");
        let root = mount.join(format!("ringwarden-test-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap_or_else(|e| {
            panic!(
                "cannot create {}: {e}; this test needs root to make cgroups",
                root.display()
            )
        });
        Self { root, dirs: vec![] }
    }

    /// A pod's cgroup with one container cgroup in it, where its workers
    /// run: `kubepods/besteffort/pod<uid>/ctr` (cgroupfs driver) or the
    /// systemd driver's `kubepods.slice/…-pod<uid_>.slice/ctr.scope`.
    fn pod(&mut self, uid: &str, systemd: bool) -> PathBuf {
        let pod = if systemd {
            self.root.join(format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
                uid.replace('-', "_")
            ))
        } else {
            self.root.join(format!("kubepods/besteffort/pod{uid}"))
        };
        let ctr = pod.join(if systemd { "ctr.scope" } else { "ctr" });
        std::fs::create_dir_all(&ctr).unwrap();
        self.dirs.push(ctr.clone());
        self.dirs.push(pod);
        ctr
    }
}

impl Drop for PodCgroups {
    fn drop(&mut self) {
        for d in &self.dirs {
            let _ = std::fs::remove_dir(d);
        }
        for d in [
            "kubepods.slice/kubepods-burstable.slice",
            "kubepods.slice",
            "kubepods/besteffort",
            "kubepods",
            "",
        ] {
            let _ = std::fs::remove_dir(self.root.join(d));
        }
    }
}

/// Makes `calls` getppid calls in `cgroup` from a new process, and waits
/// for it to exit. The child is moved into the cgroup while it waits on a
/// pipe, so every call it makes is made there.
fn getppid_in(cgroup: &Path, calls: u64) {
    let mut go = [0i32; 2];
    // SAFETY: a valid array of two fds.
    assert_eq!(unsafe { libc::pipe2(go.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: the child only makes raw syscalls (read, getppid, _exit),
    // which are async-signal-safe, before it exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: raw syscalls on fds this process owns.
        unsafe {
            let mut b = 0u8;
            libc::read(go[0], (&mut b as *mut u8).cast(), 1);
            for _ in 0..calls {
                libc::syscall(libc::SYS_getppid);
            }
            libc::_exit(0);
        }
    }
    // SAFETY: both fds were just created and are owned here.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(go[0]), OwnedFd::from_raw_fd(go[1])) };
    drop(read_end);
    std::fs::write(cgroup.join("cgroup.procs"), pid.to_string())
        .unwrap_or_else(|e| panic!("move {pid} into {}: {e}", cgroup.display()));
    // SAFETY: writing one byte from a valid buffer to an open pipe.
    assert_eq!(
        unsafe { libc::write(write_end.as_raw_fd(), b"g".as_ptr().cast(), 1) },
        1
    );
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
}

// ---------------------------------------------------------------- the agent

/// One podSelector probe: `app: web` in namespace `shop`.
const WEB_PROBE: &str = "probes:\n  - {namespace: shop, probeset: web, spec: {name: sys, kind: \
     syscalls, maxSeries: 512}, podSelector: {matchLabels: {app: web}}, nodeSelector: {pool: web}, \
     ringBytes: 4096, sampleEvery: 1, reportInterval: 1s}\n";

struct Agent {
    child: Child,
    port: u16,
    /// `ringwarden_events_observed_total` at each scrape: never lower.
    observed: u64,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    /// `ringwarden-agent node` on `node-t` with one podSelector probe
    /// (`app: web` in namespace `shop`), its API the mock on `api_port`.
    fn start(dir: &Path, api_port: u16, pod_root: &Path) -> Self {
        Self::start_with(dir, api_port, pod_root, WEB_PROBE)
    }

    /// `ringwarden-agent node` on `node-t` running the agent configuration
    /// `config`, its API the mock on `api_port`.
    fn start_with(dir: &Path, api_port: u16, pod_root: &Path, config: &str) -> Self {
        Self::spawn(dir, api_port, pod_root, config, Stdio::inherit())
    }

    fn spawn(dir: &Path, api_port: u16, pod_root: &Path, config: &str, stderr: Stdio) -> Self {
        std::fs::write(
            dir.join("kubeconfig"),
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: mock\n\
                 clusters: [{{name: mock, cluster: {{server: 'http://127.0.0.1:{api_port}'}}}}]\n\
                 users: [{{name: mock, user: {{}}}}]\n\
                 contexts: [{{name: mock, context: {{cluster: mock, user: mock}}}}]\n"
            ),
        )
        .unwrap();
        std::fs::write(dir.join("config.yaml"), config).unwrap();
        let port = free_port();
        let child = Command::new(AGENT)
            .args(["node", "--node-name", NODE, "--interval", "100ms"])
            .args(["--reload-interval", "200ms"])
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--config")
            .arg(dir.join("config.yaml"))
            .arg("--pod-cgroup-root")
            .arg(pod_root)
            // In a pod the agent finds the API this way; the client reads
            // KUBECONFIG first.
            .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
            .env("KUBECONFIG", dir.join("kubeconfig"))
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("the agent binary starts");
        Self {
            child,
            port,
            observed: 0,
        }
    }

    fn metrics(&mut self) -> String {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "the agent exited: {:?}",
            self.child.try_wait()
        );
        let text = get(self.port, "/metrics").unwrap_or_default();
        if let Some(observed) = value(
            &text,
            &format!("ringwarden_events_observed_total{{{LABELS}}}"),
        ) {
            assert!(
                observed >= self.observed,
                "the probe's counters went back from {} to {observed}: it was reloaded",
                self.observed
            );
            self.observed = observed;
        }
        text
    }

    /// Waits until `/metrics` has `series` at `want`; panics with the
    /// exposition after 30 s.
    fn until(&mut self, series: &str, want: u64) {
        self.until_is(series, &format!("{want}"), |v| v == want);
    }

    /// Waits until `series` has a value that `ok` accepts (`what` says
    /// which, for the message).
    fn until_is(&mut self, series: &str, what: &str, ok: impl Fn(u64) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = self.metrics();
            if value(&text, series).is_some_and(&ok) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{series} never became {what}:\n{}",
                text.lines()
                    .filter(|l| l.starts_with("ringwarden_agent") || l.contains("getppid"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kernel ids of the BPF programs the agent holds open.
    fn program_ids(&self) -> BTreeSet<u32> {
        let dir = format!("/proc/{}/fdinfo", self.child.id());
        std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .filter_map(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix("prog_id:"))
                    .and_then(|id| id.trim().parse().ok())
            })
            .collect()
    }
}

/// The value of one sample line (`name{labels}`), if present.
fn value(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

fn getppid_count() -> String {
    format!("ringwarden_latency_seconds_count{{{LABELS},series=\"getppid\"}}")
}

#[test]
fn pods_joining_and_leaving_change_the_filter_in_place_and_every_count_is_exact() {
    if let Err(e) = ringwarden_node_agent::probes::check_privileges() {
        panic!("this live-kernel test cannot run: {e}; run `sudo make test`");
    }
    let dir = std::env::temp_dir().join(format!("rw-pods-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cgroups = PodCgroups::new("churn");
    let uid = |n: u8| format!("00000000-0000-4000-8000-0000000000{n:02x}");
    let (a, b, c, d, e) = (uid(0xa), uid(0xb), uid(0xc), uid(0xd), uid(0xe));
    let ctr_a = cgroups.pod(&a, false);
    let ctr_b = cgroups.pod(&b, false);
    let ctr_c = cgroups.pod(&c, false);
    let ctr_d = cgroups.pod(&d, true);
    let ctr_e = cgroups.pod(&e, false);

    let api: Shared = Arc::default();
    {
        let mut api = api.lock().unwrap();
        api.apply("shop", &a, "web");
        // Same namespace, other app; and the same app in another namespace.
        api.apply("shop", &b, "db");
        api.apply("other", &c, "web");
    }
    let mut agent = Agent::start(&dir, serve(api.clone()), &cgroups.root);
    let filter = format!("ringwarden_agent_pod_filter_cgroups{{{AGENT_LABELS}}}");
    let loads = format!("ringwarden_agent_probe_loads_total{{{AGENT_LABELS}}}");
    agent.until(&filter, 1);
    agent.until("ringwarden_agent_pod_watch_up", 1);
    let programs = agent.program_ids();
    assert_eq!(
        programs.len(),
        3,
        "fork, enter and exit programs: {programs:?}"
    );

    // Only pod a is selected.
    getppid_in(&ctr_a, 1_000);
    getppid_in(&ctr_b, 700);
    getppid_in(&ctr_c, 900);
    let mut expected = 1_000;
    agent.until(&getppid_count(), expected);

    // Pod d starts (systemd layout), pod b is relabelled into the selection.
    {
        let mut api = api.lock().unwrap();
        api.apply("shop", &d, "web");
        api.apply("shop", &b, "web");
    }
    agent.until(&filter, 3);
    getppid_in(&ctr_d, 1_200);
    getppid_in(&ctr_b, 300);
    getppid_in(&ctr_a, 400);
    getppid_in(&ctr_c, 900);
    expected += 1_200 + 300 + 400;
    agent.until(&getppid_count(), expected);

    // Pod a stops: calls from its (still existing) cgroup no longer count.
    api.lock().unwrap().delete(&a);
    agent.until(&filter, 2);
    getppid_in(&ctr_a, 800);
    getppid_in(&ctr_d, 250);
    expected += 250;
    agent.until(&getppid_count(), expected);

    // The watch breaks: the probe keeps the pods it knew and keeps
    // counting; a pod that starts meanwhile is not known until it is back.
    api.lock().unwrap().fail(true);
    agent.until("ringwarden_agent_pod_watch_up", 0);
    api.lock().unwrap().apply("shop", &e, "web");
    getppid_in(&ctr_d, 600);
    getppid_in(&ctr_b, 100);
    getppid_in(&ctr_e, 500);
    expected += 600 + 100;
    agent.until(&getppid_count(), expected);
    let text = agent.metrics();
    assert_eq!(
        value(&text, &filter),
        Some(2),
        "the last known filter stays"
    );
    assert!(value(&text, "ringwarden_agent_pod_watch_errors_total") >= Some(1));

    api.lock().unwrap().fail(false);
    agent.until("ringwarden_agent_pod_watch_up", 1);
    agent.until(&filter, 3);
    getppid_in(&ctr_e, 500);
    expected += 500;
    agent.until(&getppid_count(), expected);

    // Nothing counted twice or late, one load, the same programs.
    std::thread::sleep(Duration::from_millis(300));
    let text = agent.metrics();
    assert_eq!(value(&text, &getppid_count()), Some(expected));
    assert_eq!(
        value(&text, &loads),
        Some(1),
        "pod changes never reload the probe"
    );
    assert_eq!(
        agent.program_ids(),
        programs,
        "the same programs throughout"
    );
    assert!(
        value(
            &text,
            &format!("ringwarden_agent_pod_filter_updates_total{{{AGENT_LABELS}}}")
        ) >= Some(4)
    );

    // One watch of this node's pods, not a list per probe per interval.
    let requests = api.lock().unwrap().requests.clone();
    assert!(
        requests
            .iter()
            .all(|q| q.contains("fieldSelector=spec.nodeName%3Dnode-t")),
        "every request is for this node's pods: {requests:?}"
    );
    let lists = requests
        .iter()
        .filter(|q| !q.contains("watch=true"))
        .count();
    assert!(
        (1..=3).contains(&lists),
        "{lists} lists: the agent polls instead of watching: {requests:?}"
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pod_selected_probes_wait_for_the_first_list_of_pods_and_load_once_it_succeeds() {
    if let Err(e) = ringwarden_node_agent::probes::check_privileges() {
        panic!("this live-kernel test cannot run: {e}; run `sudo make test`");
    }
    let dir = std::env::temp_dir().join(format!("rw-pods-first-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cgroups = PodCgroups::new("first-list");
    let a = "00000000-0000-4000-8000-0000000001aa";
    let ctr = cgroups.pod(a, false);
    let api: Shared = Arc::default();
    {
        let mut api = api.lock().unwrap();
        api.apply("shop", a, "web");
        api.fail(true);
    }
    let mut agent = Agent::start(&dir, serve(api.clone()), &cgroups.root);
    agent.until_is(
        "ringwarden_agent_pod_watch_errors_total",
        "at least 1",
        |n| n >= 1,
    );
    // Without the node's pods the probe does not run: it neither observes
    // every process nor pretends to observe the pods.
    let text = agent.metrics();
    assert_eq!(
        value(
            &text,
            &format!("ringwarden_agent_probe_loads_total{{{AGENT_LABELS}}}")
        ),
        None,
        "loaded without knowing the pods"
    );
    assert_eq!(value(&text, "ringwarden_agent_pod_watch_up"), Some(0));

    api.lock().unwrap().fail(false);
    agent.until(
        &format!("ringwarden_agent_pod_filter_cgroups{{{AGENT_LABELS}}}"),
        1,
    );
    getppid_in(&ctr, 321);
    agent.until(&getppid_count(), 321);
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `name{labels}` of the getppid count of `namespace/probeset/sys`.
fn getppid_of(namespace: &str, probeset: &str) -> String {
    format!(
        "ringwarden_latency_seconds_count{{namespace=\"{namespace}\",probeset=\"{probeset}\",\
         probe=\"sys\",node=\"node-t\",series=\"getppid\"}}"
    )
}

#[test]
fn a_probeset_counts_only_its_namespace_and_a_cluster_probeset_what_it_selects_exactly() {
    if let Err(e) = ringwarden_node_agent::probes::check_privileges() {
        panic!("this live-kernel test cannot run: {e}; run `sudo make test`");
    }
    let dir = std::env::temp_dir().join(format!("rw-tenancy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cgroups = PodCgroups::new("tenancy");
    let uid = |n: u8| format!("00000000-0000-4000-8000-0000000002{n:02x}");
    let (a, b, c) = (uid(0xa), uid(0xb), uid(0xc));
    let ctr_a = cgroups.pod(&a, false);
    let ctr_b = cgroups.pod(&b, true);
    let ctr_c = cgroups.pod(&c, false);
    let api: Shared = Arc::default();
    {
        let mut api = api.lock().unwrap();
        api.apply("shop", &a, "web");
        api.apply("shop", &b, "db");
        api.apply("other", &c, "web");
    }
    // As the operator renders them: the ProbeSet shop/web, without a
    // podSelector, scoped to its namespace; a ClusterProbeSet whose
    // namespaceSelector matched both namespaces; one without a
    // namespaceSelector (the whole node); and a ProbeSet naming host
    // cgroups, which must not load.
    let probe = |namespace: &str, probeset: &str, extra: &str| {
        format!(
            "  - {{namespace: '{namespace}', probeset: {probeset}, spec: {{name: sys, kind: \
             syscalls, maxSeries: 512{}}}, {extra}ringBytes: 4096, sampleEvery: 1, \
             reportInterval: 1s}}\n",
            if probeset == "host-cgroups" {
                ", filter: {cgroups: [/sys/fs/cgroup]}"
            } else {
                ""
            }
        )
    };
    let config = format!(
        "probes:\n{}{}{}{}",
        probe("shop", "web", "namespaces: [shop], "),
        probe("", "both", "namespaces: [other, shop], "),
        probe("", "node", ""),
        probe("shop", "host-cgroups", "namespaces: [shop], "),
    );
    let mut agent = Agent::start_with(&dir, serve(api.clone()), &cgroups.root, &config);
    let filter = |ns: &str, ps: &str| {
        format!(
            "ringwarden_agent_pod_filter_cgroups{{namespace=\"{ns}\",node=\"node-t\",probe=\"sys\",probeset=\"{ps}\"}}"
        )
    };
    agent.until(&filter("shop", "web"), 2);
    agent.until(&filter("", "both"), 3);
    agent.until(
        "ringwarden_agent_probe_failing{namespace=\"shop\",node=\"node-t\",probe=\"sys\",probeset=\"host-cgroups\",reason=\"other\"}",
        1,
    );

    getppid_in(&ctr_a, 1_000);
    getppid_in(&ctr_b, 700);
    getppid_in(&ctr_c, 900);
    // And on the host, outside every pod.
    let host = 500u64;
    for _ in 0..host {
        // SAFETY: a raw syscall without arguments.
        unsafe { libc::syscall(libc::SYS_getppid) };
    }
    agent.until(&getppid_of("shop", "web"), 1_000 + 700);
    agent.until(&getppid_of("", "both"), 1_000 + 700 + 900);
    // Other processes of the node call getppid too: at least ours.
    agent.until_is(&getppid_of("", "node"), "at least every call made", |n| {
        n >= 1_000 + 700 + 900 + host
    });

    // A pod of `other` starting on the node stays out of shop's probe.
    let d = uid(0xd);
    let ctr_d = cgroups.pod(&d, false);
    api.lock().unwrap().apply("other", &d, "web");
    agent.until(&filter("", "both"), 4);
    getppid_in(&ctr_d, 400);
    getppid_in(&ctr_a, 100);
    agent.until(&getppid_of("", "both"), 1_000 + 700 + 900 + 400 + 100);
    std::thread::sleep(Duration::from_millis(300));
    let text = agent.metrics();
    assert_eq!(value(&text, &getppid_of("shop", "web")), Some(1_800));
    assert_eq!(value(&text, &filter("shop", "web")), Some(2));
    assert_eq!(
        value(&text, &getppid_of("shop", "host-cgroups")),
        None,
        "a ProbeSet naming node-wide cgroups never runs"
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A process in `cgroup` with `root` as its root directory, as a
/// container's: it waits until dropped.
struct Contained(libc::pid_t);

impl Contained {
    fn start(cgroup: &Path, root: &Path) -> Self {
        let dir = std::ffi::CString::new(root.as_os_str().as_encoded_bytes()).unwrap();
        let mut go = [0i32; 2];
        // SAFETY: a valid array of two fds.
        assert_eq!(unsafe { libc::pipe2(go.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: the child only makes raw syscalls (read, chroot, chdir,
        // pause, _exit), which are async-signal-safe.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: raw syscalls on memory and fds this process owns.
            unsafe {
                let mut b = 0u8;
                libc::read(go[0], (&mut b as *mut u8).cast(), 1);
                if libc::chroot(dir.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                    libc::_exit(1);
                }
                loop {
                    libc::pause();
                }
            }
        }
        // SAFETY: both fds were just created and are owned here.
        let (read_end, write_end) =
            unsafe { (OwnedFd::from_raw_fd(go[0]), OwnedFd::from_raw_fd(go[1])) };
        drop(read_end);
        std::fs::write(cgroup.join("cgroup.procs"), pid.to_string()).unwrap();
        // SAFETY: writing one byte from a valid buffer to an open pipe.
        assert_eq!(
            unsafe { libc::write(write_end.as_raw_fd(), b"g".as_ptr().cast(), 1) },
            1
        );
        // The child is in its root once /proc says so.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_link(format!("/proc/{pid}/root"))
            .ok()
            .as_deref()
            != Some(root)
        {
            assert!(
                Instant::now() < deadline,
                "the contained process never chrooted"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        Self(pid)
    }
}

impl Drop for Contained {
    fn drop(&mut self) {
        // SAFETY: signalling and reaping our own child.
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
            libc::waitpid(self.0, std::ptr::null_mut(), 0);
        }
    }
}

/// The C library this process runs with, as the host has it.
fn host_libc() -> PathBuf {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.contains("/libc.so"))
        .map(PathBuf::from)
        .expect("this test process maps a libc")
}

/// Held by the tests that attach uprobes to the host's libc: one's
/// node-wide probe would make every process trap in another's timing.
static HOST_LIBC_UPROBES: Mutex<()> = Mutex::new(());

#[test]
fn a_probesets_uprobe_resolves_only_in_its_own_pods_containers() {
    let _alone = HOST_LIBC_UPROBES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Err(e) = ringwarden_node_agent::probes::check_privileges() {
        panic!("this live-kernel test cannot run: {e}; run `sudo make test`");
    }
    let dir = std::env::temp_dir().join(format!("rw-tenancy-up-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let libc = host_libc();
    // Two container root filesystems: shop's holds /lib/tenant.so, the
    // other namespace's /lib/other.so; neither holds the host's libc path.
    let (shop_root, other_root) = (dir.join("shop-root"), dir.join("other-root"));
    for (root, name) in [(&shop_root, "tenant.so"), (&other_root, "other.so")] {
        std::fs::create_dir_all(root.join("lib")).unwrap();
        std::fs::copy(&libc, root.join("lib").join(name)).unwrap();
    }
    let mut cgroups = PodCgroups::new("tenancy-uprobe");
    let (a, c) = (
        "00000000-0000-4000-8000-00000000030a",
        "00000000-0000-4000-8000-00000000030c",
    );
    let ctr_a = cgroups.pod(a, true);
    let ctr_c = cgroups.pod(c, false);
    let _shop = Contained::start(&ctr_a, &shop_root);
    let _other = Contained::start(&ctr_c, &other_root);
    let api: Shared = Arc::default();
    {
        let mut api = api.lock().unwrap();
        api.apply("shop", a, "web");
        api.apply("other", c, "web");
    }
    let probe = |namespace: &str, probeset: &str, binary: &str| {
        let scope = if namespace.is_empty() {
            String::new()
        } else {
            format!("namespaces: [{namespace}], ")
        };
        format!(
            "  - {{namespace: '{namespace}', probeset: {probeset}, spec: {{name: up, kind: \
             uprobe, uprobe: {{binary: '{binary}', symbol: getppid}}}}, {scope}ringBytes: 4096, \
             sampleEvery: 1, reportInterval: 1s}}\n"
        )
    };
    let host = libc.to_str().unwrap();
    let config = format!(
        "probes:\n{}{}{}{}{}",
        probe("shop", "mine", "/lib/tenant.so"),
        probe("shop", "host", host),
        probe("shop", "theirs", "/lib/other.so"),
        probe("", "node", host),
        // No pod of `late` runs on the node yet.
        probe("late", "later", "/lib/tenant.so"),
    );
    let log_path = dir.join("agent.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut agent = Agent::spawn(&dir, serve(api.clone()), &cgroups.root, &config, log.into());
    let series = |metric: &str, ns: &str, ps: &str, extra: &str| {
        format!(
            "{metric}{{namespace=\"{ns}\",node=\"node-t\",probe=\"up\",probeset=\"{ps}\"{extra}}}"
        )
    };
    let loads = |ns: &str, ps: &str| series("ringwarden_agent_probe_loads_total", ns, ps, "");
    let failing = |ps: &str| {
        series(
            "ringwarden_agent_probe_failing",
            "shop",
            ps,
            ",reason=\"other\"",
        )
    };
    agent.until(&loads("shop", "mine"), 1);
    agent.until(&loads("", "node"), 1);
    agent.until(&failing("host"), 1);
    agent.until(&failing("theirs"), 1);
    let text = agent.metrics();
    assert_eq!(value(&text, &loads("shop", "host")), None);
    assert_eq!(value(&text, &loads("shop", "theirs")), None);
    // Nothing to attach to is not a failure; a pod of `late` starting
    // attaches it, without waiting out a retry backoff.
    let later_failing = series(
        "ringwarden_agent_probe_failing",
        "late",
        "later",
        ",reason=\"other\"",
    );
    assert_eq!(value(&text, &loads("late", "later")), None);
    assert_eq!(value(&text, &later_failing), None, "{text}");
    let d = "00000000-0000-4000-8000-00000000030d";
    let ctr_d = cgroups.pod(d, false);
    let _late = Contained::start(&ctr_d, &shop_root);
    api.lock().unwrap().apply("late", d, "web");
    let started = Instant::now();
    agent.until(&loads("late", "later"), 1);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "attached only after {:?}",
        started.elapsed()
    );

    // Each refusal names the binary, the rule and the fix.
    let log = std::fs::read_to_string(&log_path).unwrap();
    for binary in [host, "/lib/other.so"] {
        let line = log
            .lines()
            .find(|l| {
                l.contains("probe not running")
                    && l.contains(&format!("error=uprobe getppid in {binary}: not in any"))
            })
            .unwrap_or_else(|| panic!("no refusal of {binary} in the log:\n{log}"));
        assert!(
            line.contains("not in any of the 1 containers of the ProbeSet's pods on this node")
                && line.contains("give the path as the container sees it")
                && line.contains("ClusterProbeSet"),
            "{line}"
        );
    }
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------- per-process uprobes

/// A process of the test's own, mapping the host's libc like every
/// process on the node, that calls libc's `getppid` in timed batches on
/// command and answers each batch with its median call time.
struct Caller {
    pid: libc::pid_t,
    commands: OwnedFd,
    results: OwnedFd,
}

/// Calls per batch: the median of this many is stable to tens of ns.
const BATCH: usize = 20_000;

impl Caller {
    /// Starts a caller, in `cgroup` if given (a pod's container), else
    /// where the test runs (outside every pod).
    fn start(cgroup: Option<&Path>) -> Self {
        let (mut cmd, mut res) = ([0i32; 2], [0i32; 2]);
        // SAFETY: valid arrays of two fds.
        unsafe {
            assert_eq!(libc::pipe2(cmd.as_mut_ptr(), libc::O_CLOEXEC), 0);
            assert_eq!(libc::pipe2(res.as_mut_ptr(), libc::O_CLOEXEC), 0);
        }
        // Allocated before the fork: the child must not allocate.
        let mut times = vec![0u64; BATCH];
        // SAFETY: the child only makes raw syscalls (read, write, getppid,
        // clock_gettime, _exit) and sorts memory it owns, which are
        // async-signal-safe.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: raw syscalls on memory and fds this process owns.
            unsafe {
                let now = || {
                    let mut t: libc::timespec = std::mem::zeroed();
                    libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t);
                    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
                };
                let mut b = 0u8;
                while libc::read(cmd[0], (&mut b as *mut u8).cast(), 1) == 1 {
                    for t in times.iter_mut() {
                        let start = now();
                        // The libc function, through the shared library:
                        // what the probe hooks.
                        libc::getppid();
                        *t = now() - start;
                    }
                    times.sort_unstable();
                    let median = times[BATCH / 2].to_ne_bytes();
                    libc::write(res[1], median.as_ptr().cast(), 8);
                }
                libc::_exit(0);
            }
        }
        drop(times);
        // SAFETY: the fds were just created and are owned here.
        let (commands, results) = unsafe {
            drop(OwnedFd::from_raw_fd(cmd[0]));
            drop(OwnedFd::from_raw_fd(res[1]));
            (OwnedFd::from_raw_fd(cmd[1]), OwnedFd::from_raw_fd(res[0]))
        };
        if let Some(cgroup) = cgroup {
            std::fs::write(cgroup.join("cgroup.procs"), pid.to_string())
                .unwrap_or_else(|e| panic!("move {pid} into {}: {e}", cgroup.display()));
        }
        Self {
            pid,
            commands,
            results,
        }
    }

    /// Makes one batch of [`BATCH`] calls; their median time in ns.
    fn batch(&self) -> u64 {
        // SAFETY: writing one byte to, and reading 8 from, open pipes.
        unsafe {
            assert_eq!(
                libc::write(self.commands.as_raw_fd(), b"r".as_ptr().cast(), 1),
                1
            );
            let mut median = [0u8; 8];
            assert_eq!(
                libc::read(self.results.as_raw_fd(), median.as_mut_ptr().cast(), 8),
                8,
                "the caller died"
            );
            u64::from_ne_bytes(median)
        }
    }

    /// The fastest of a few batches' medians: what a call costs when
    /// nothing else on the machine gets in the way.
    fn call_ns(&self) -> u64 {
        (0..3).map(|_| self.batch()).min().unwrap()
    }
}

impl Drop for Caller {
    fn drop(&mut self) {
        // SAFETY: signalling and reaping our own child.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

#[test]
fn a_namespaced_uprobe_on_a_shared_library_traps_no_process_outside_its_pods() {
    let _alone = HOST_LIBC_UPROBES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Err(e) = ringwarden_node_agent::probes::check_privileges() {
        panic!("this live-kernel test cannot run: {e}; run `sudo make test`");
    }
    let dir = std::env::temp_dir().join(format!("rw-shared-lib-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // The pod's container has the host's root: its libc is the very inode
    // every process on the node maps, as a shared image layer's is.
    let libc = host_libc();
    let mut cgroups = PodCgroups::new("shared-lib");
    let uid = "00000000-0000-4000-8000-00000000040a";
    let ctr = cgroups.pod(uid, false);
    let inside = Caller::start(Some(&ctr));
    let outside = Caller::start(None);
    for c in [&inside, &outside] {
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", c.pid)).unwrap();
        assert!(maps.contains(libc.to_str().unwrap()), "{maps}");
    }
    let inside_before = inside.call_ns();
    let outside_before = outside.call_ns();

    let api: Shared = Arc::default();
    api.lock().unwrap().apply("shop", uid, "web");
    let config = format!(
        "probes:\n  - {{namespace: shop, probeset: web, spec: {{name: up, kind: uprobe, \
         uprobe: {{binary: '{}', symbol: getppid}}}}, namespaces: [shop], ringBytes: 4096, \
         sampleEvery: 1, reportInterval: 1s}}\n",
        libc.display()
    );
    let mut agent = Agent::spawn(
        &dir,
        serve(api.clone()),
        &cgroups.root,
        &config,
        Stdio::inherit(),
    );
    let labels = r#"namespace="shop",node="node-t",probe="up",probeset="web""#;
    let attached = format!("ringwarden_agent_uprobe_processes{{{labels}}}");
    let count = r#"ringwarden_latency_seconds_count{namespace="shop",probeset="web",probe="up",node="node-t",series="getppid"}"#;
    agent.until(&attached, 1);
    let counted = |agent: &mut Agent| value(&agent.metrics(), count).unwrap_or(0);
    assert_eq!(
        counted(&mut agent),
        0,
        "nothing called getppid in the pod yet"
    );

    // The pod's process is counted exactly, and traps: the measurement
    // sees a trap when there is one.
    let inside_after = inside.call_ns();
    agent.until(count, 3 * BATCH as u64);
    // The process outside the pod maps the same inode: it neither counts
    // nor traps.
    let outside_after = outside.call_ns();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(counted(&mut agent), 3 * BATCH as u64);
    eprintln!(
        "median getppid: in the pod {inside_before} ns -> {inside_after} ns, \
         outside {outside_before} ns -> {outside_after} ns"
    );
    // A uprobe and a uretprobe trap: two traps of 3.5-5 µs here.
    assert!(
        inside_after > inside_before + 3_000,
        "the pod's process does not show the trap ({inside_before} ns -> {inside_after} ns): \
         the measurement cannot tell"
    );
    assert!(
        outside_after < outside_before + 1_000,
        "a process outside the ProbeSet's pods traps: its getppid went from \
         {outside_before} ns to {outside_after} ns"
    );

    // A process started in the pod after the probe attached is attached
    // and counted; one that exits is detached.
    let late = Caller::start(Some(&ctr));
    agent.until(&attached, 2);
    late.batch();
    agent.until(count, 4 * BATCH as u64);
    drop(late);
    agent.until(&attached, 1);
    outside.batch();
    assert_eq!(counted(&mut agent), 4 * BATCH as u64);
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}
