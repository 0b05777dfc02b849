//! The `ProbeSet` custom resource.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use ringwarden_core::duration::serde_duration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::cel::{self, MAX_DURATION_LEN};

/// Declares eBPF latency probes: which kernel events to time, on which nodes,
/// for which processes. The operator turns ProbeSets into node-agent
/// configuration; in standalone mode the agent reads them from files.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "ringwarden.dev",
    version = "v1alpha1",
    kind = "ProbeSet",
    namespaced,
    status = "ProbeSetStatus",
    shortname = "ps",
    doc = "Declares eBPF latency probes: which kernel events to time, on which nodes, for which processes.",
    category = "ringwarden",
    printcolumn = r#"{"name":"Ready","type":"string","description":"Nodes running the probes / nodes selected","jsonPath":".status.ready"}"#,
    printcolumn = r#"{"name":"Status","type":"string","description":"Ready, Reconciling, NoMatchingNodes, Degraded: <reason> or Invalid: <field>","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Events/s","type":"number","description":"Events per second across nodes","jsonPath":".status.eventsPerSecond"}"#,
    printcolumn = r#"{"name":"Drop %","type":"number","description":"Exported events dropped by ring buffers","jsonPath":".status.dropPercent"}"#,
    printcolumn = r#"{"name":"Plan Drop %","type":"number","description":"Exported events the quota plan predicts the ring buffers drop at the declared peak rates","jsonPath":".status.predictedDropPercent"}"#,
    printcolumn = r#"{"name":"Ringbuf","type":"string","description":"Ring-buffer memory per node","jsonPath":".status.ringBuffer"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ProbeSetSpec {
    /// Labels a node must carry for its agent to run these probes, like a
    /// Pod's nodeSelector: at most 32, keys and values in Kubernetes label
    /// syntax. Empty selects every node; standalone mode ignores it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "crate::selector::node_selector_schema")]
    pub node_selector: BTreeMap<String, String>,

    /// Pods whose processes are observed, as a label selector
    /// (`matchLabels`, `matchExpressions` with In, NotIn, Exists or
    /// DoesNotExist), among the pods of the ProbeSet's namespace (of a
    /// ClusterProbeSet: of the namespaces its `namespaceSelector` selects,
    /// or of every namespace). Each node's agent watches the pods on its
    /// node, resolves the matching ones to cgroup v2 ids and filters in the
    /// kernel, updating the filter as pods start and stop. Absent or `{}`:
    /// every pod of the ProbeSet's namespace, never a host process or
    /// another namespace's pod (a ClusterProbeSet without either selector
    /// observes every process on the node). Standalone mode, outside a
    /// cluster, has no namespaces and observes the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::selector::pod_selector_schema")]
    pub pod_selector: Option<LabelSelector>,

    /// The probes to run: 1 to 64, each with a `name` unique within the
    /// ProbeSet and a `kind` from the catalog (syscalls, tcpConnect,
    /// tcpRetransmit, runqueue, blockIO, uprobe). Every probe keeps latency
    /// histograms in the kernel; `export` additionally streams chosen events
    /// through a ring buffer sized from `peakEventRate`.
    #[schemars(length(min = 1, max = MAX_PROBES))]
    #[schemars(extend(
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["name"],
        "x-kubernetes-validations" = cel::probes(),
    ))]
    pub probes: Vec<ProbeSpec>,

    /// How the ring buffers of the event path are sized (drain interval,
    /// burst factor, per-node memory budget); see the quota model in
    /// docs/quota.md.
    #[serde(default)]
    pub ring_buffer: RingBufferSpec,

    /// Largest fraction of exported events the ring buffers may drop at the
    /// declared peak rate, from 0 up to (not including) 1; default 0.01
    /// (1 %). When the node budget cannot hold that, the planner lowers
    /// sampling until it can.
    #[serde(default = "default_max_drop_rate")]
    #[schemars(range(min = 0.0, max = 1.0), extend("exclusiveMaximum" = true))]
    pub max_drop_rate: f64,

    /// How often agents read the kernel counters and report them, as a
    /// duration of at least 100ms like `10s` or `1m`; default 10s.
    #[serde(default = "default_report_interval", with = "serde_duration")]
    #[schemars(with = "String", length(max = MAX_DURATION_LEN))]
    #[schemars(extend("x-kubernetes-validations" = cel::report_interval()))]
    pub report_interval: Duration,
}

fn default_report_interval() -> Duration {
    Duration::from_secs(10)
}

/// `spec.maxDropRate` when unset.
pub const DEFAULT_MAX_DROP_RATE: f64 = 0.01;

fn default_max_drop_rate() -> f64 {
    DEFAULT_MAX_DROP_RATE
}

/// Ring-buffer sizing inputs of the quota model: a probe's buffer holds
/// `peakEventRate × sampling × record size × drainInterval × burstFactor`,
/// rounded up to a power of two, and all buffers of the ProbeSet together
/// fit in `nodeBudget`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RingBufferSpec {
    /// Longest the agent may leave a ring buffer undrained (its worst-case
    /// stall), as a duration from 1ms to 10s; default 100ms.
    #[serde(default = "default_drain_interval", with = "serde_duration")]
    #[schemars(with = "String", length(max = MAX_DURATION_LEN))]
    #[schemars(extend("x-kubernetes-validations" = cel::drain_interval()))]
    pub drain_interval: Duration,
    /// Headroom over the declared peak rate for bursts, from 1 to 100;
    /// default 2.
    #[serde(default = "default_burst_factor")]
    #[schemars(range(min = 1.0, max = 100.0))]
    pub burst_factor: f64,
    /// Most ring-buffer memory these probes ask for on one node, as whole
    /// bytes with an optional suffix Ki, Mi, Gi, Ti, k, M, G or T; default
    /// 64Mi. When the buffers would not fit, the planner shrinks them (lowest
    /// `priority` first) and reports the predicted drops. A request: the
    /// platform's node budget, shared with every ProbeSet on the node, may
    /// give less (`status.plan.nodeShare`), never more.
    /// At most 64Gi.
    #[serde(default = "default_node_budget")]
    #[schemars(length(max = MAX_QUANTITY_LEN))]
    #[schemars(extend("x-kubernetes-validations" = cel::node_budget()))]
    pub node_budget: String,
}

impl Default for RingBufferSpec {
    fn default() -> Self {
        Self {
            drain_interval: default_drain_interval(),
            burst_factor: default_burst_factor(),
            node_budget: default_node_budget(),
        }
    }
}

/// Longest `nodeBudget` string.
pub const MAX_QUANTITY_LEN: usize = 32;

/// The drain intervals a ProbeSet (and an agent configuration) may ask for.
pub const DRAIN_INTERVALS: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(1)..=Duration::from_secs(10);
/// What is wrong with a drain interval outside [`DRAIN_INTERVALS`].
pub const DRAIN_INTERVAL_RULE: &str = "must be between 1ms and 10s; use e.g. `100ms`";

fn default_drain_interval() -> Duration {
    Duration::from_millis(100)
}

fn default_burst_factor() -> f64 {
    2.0
}

fn default_node_budget() -> String {
    "64Mi".into()
}

/// One eBPF probe: what to time (`kind`), for which processes (`filter`),
/// how many latency series to keep (`maxSeries`) and which events to export
/// one by one (`export`, `peakEventRate`, `sampling`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = cel::probe()))]
pub struct ProbeSpec {
    /// Name of the probe, unique within the ProbeSet: a DNS label (lowercase
    /// letters, digits and '-', at most 63) such as `sys`. SLOs refer to it,
    /// and it is the `probe` label on metrics.
    #[schemars(length(max = 63))]
    #[schemars(extend("x-kubernetes-validations" = cel::probe_name()))]
    pub name: String,

    /// What the probe times. `syscalls`: system call latency per syscall
    /// (failed calls count as errors). `tcpConnect`: TCP connect latency
    /// (SYN_SENT to ESTABLISHED) per destination port. `tcpRetransmit`: TCP
    /// retransmits per destination port (counts, no latency). `runqueue`:
    /// run-queue delay (wakeup to running). `blockIO`: block I/O latency per
    /// device and operation. `uprobe`: latency of a user-space function,
    /// given in `uprobe` (C, Rust, C++ or Go). `goRuntime`: the Go runtime's
    /// stop-the-world pauses (`gc-pause`, `stw-other`) and GC cycles
    /// (`gc-cycle`) in the processes of the Go binary given in `goRuntime`.
    pub kind: ProbeKind,

    /// The function a `kind: uprobe` probe times. Required for uprobes and
    /// not allowed for other kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uprobe: Option<UprobeTarget>,

    /// The Go binary whose runtime a `kind: goRuntime` probe times.
    /// Required for goRuntime and not allowed for other kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub go_runtime: Option<GoRuntimeTarget>,

    /// Which processes are observed, by pid, command name or cgroup; all
    /// given criteria must match, within what the ProbeSet observes (its
    /// namespace's pods, or `podSelector`'s). The agent itself is never
    /// observed. `cgroups`, which name node-wide cgroups, is for
    /// ClusterProbeSets and standalone mode: a ProbeSet in a cluster with
    /// them is Invalid. `tcpRetransmit` accepts only cgroups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<ProbeFilter>,

    /// Most latency series the kernel keeps for this probe (syscalls,
    /// ports, devices...), from 1 to 4096; default 64. Events of further
    /// series are counted in one overflow series. Each series costs about
    /// 8 KiB of kernel memory per CPU.
    #[serde(default = "default_max_series")]
    #[schemars(range(min = 1, max = MAX_MAX_SERIES))]
    pub max_series: u32,

    /// Which events are also sent one by one through a ring buffer, beyond
    /// the histograms; default none.
    #[serde(default)]
    pub export: ExportSpec,

    /// Declared peak rate of exported events on one node, per second; sizes
    /// the ring buffer. Required (above 0) when `export.policy` is not
    /// `none`, ignored otherwise.
    /// At most 1e8 (100 million events per second on one node).
    #[serde(default)]
    #[schemars(range(min = 0.0, max = MAX_PEAK_EVENT_RATE))]
    pub peak_event_rate: f64,

    /// Fraction of events to keep by in-kernel 1-in-N sampling, above 0 and
    /// at most 1; default 1 (all). The planner may lower it to meet
    /// `maxDropRate` and reports the effective value; histograms are scaled
    /// back, and SLO counts are always exact.
    /// At least 1/1048576 (9.5367431640625e-7): the kernel keeps at least
    /// one event in 2^20.
    #[serde(default = "default_sampling")]
    #[schemars(range(min = MIN_SAMPLING, max = 1.0))]
    pub sampling: f64,

    /// When the node budget is short, the ring buffers of higher priorities
    /// are shrunk last, from -1000 to 1000; default 0. A priority orders
    /// probes only within the ProbeSet's namespace: across namespaces the
    /// node budget is shared fairly, and ClusterProbeSets are served first.
    /// A cluster administrator may lower the highest priority a namespace
    /// may use (the Namespace's `ringwarden.dev/max-priority` annotation).
    #[serde(default)]
    #[schemars(range(min = MIN_PRIORITY, max = MAX_PRIORITY))]
    pub priority: i32,
}

/// Why `peakEventRate` is bounded, as the schema and `validate` say it.
pub const PEAK_EVENT_RATE_RULE: &str = "peakEventRate must be at most 100000000 (1e8 events \
     per second on one node): no ring buffer one agent drains carries more; declare the real \
     peak and lower sampling if needed";
/// Why `priority` is bounded.
pub const PRIORITY_RULE: &str = "priority must be from -1000 to 1000: it orders probes only \
     within the ProbeSet's namespace (namespaces share the node budget fairly, whatever their \
     priorities)";
/// Why `nodeBudget` is bounded.
pub const NODE_BUDGET_RULE: &str = "nodeBudget must be at most 64Gi: it is a request for \
     locked kernel memory on every node the ProbeSet selects, which the platform's node budget \
     caps further; ask for what the rings need, e.g. 64Mi";

/// Highest declared `peakEventRate`: 100 million events per second on one
/// node, far above what a ring buffer drained by one agent can carry.
pub const MAX_PEAK_EVENT_RATE: f64 = 1e8;
/// Lowest `sampling`: one event in 2^20, the sparsest the kernel samples.
pub const MIN_SAMPLING: f64 = 1.0 / ringwarden_core::planner::MAX_SAMPLE_EVERY as f64;
/// Lowest and highest `priority`.
pub const MIN_PRIORITY: i32 = -1000;
pub const MAX_PRIORITY: i32 = 1000;
/// Largest `ringBuffer.nodeBudget`: 64 GiB of locked kernel memory per
/// node, above 64 probes' largest rings (256 MiB each) and their maps.
pub const MAX_NODE_BUDGET: u64 = 64 << 30;

/// Most probes in one ProbeSet.
pub const MAX_PROBES: usize = 64;

/// Default of `maxSeries`.
pub const DEFAULT_MAX_SERIES: u32 = 64;
/// Largest `maxSeries` accepted (each series costs 8 KiB per CPU).
pub const MAX_MAX_SERIES: u32 = 4096;

fn default_max_series() -> u32 {
    DEFAULT_MAX_SERIES
}

fn default_sampling() -> f64 {
    1.0
}

/// The function a `uprobe` probe times, from entry to return.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UprobeTarget {
    /// Absolute path of the binary or shared library on the node, e.g.
    /// `/usr/lib/x86_64-linux-gnu/libc.so.6`.
    #[schemars(length(max = MAX_PATH_LEN))]
    #[schemars(extend("x-kubernetes-validations" = cel::uprobe_binary()))]
    pub binary: String,
    /// Symbol of the function, as `nm -D` or `nm` lists it, e.g.
    /// `getaddrinfo`; in a Go binary the function's full name as
    /// `go tool nm` lists it, e.g. `main.(*Server).handle` (stripped Go
    /// binaries work too). Go functions are timed from their entry to each
    /// of their return instructions and paired by goroutine, never with a
    /// uretprobe, since Go moves goroutine stacks.
    #[schemars(length(min = 1, max = MAX_SYMBOL_LEN))]
    pub symbol: String,
}

/// The Go binary a `goRuntime` probe watches: every process running it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GoRuntimeTarget {
    /// Absolute path of the Go binary on the node (Go 1.17 or newer,
    /// amd64), e.g. `/usr/local/bin/server`.
    #[schemars(length(max = MAX_PATH_LEN))]
    #[schemars(extend("x-kubernetes-validations" = cel::uprobe_binary()))]
    pub binary: String,
}

/// What is wrong with an absolute uprobe binary path, as the CRD's rules
/// ([`cel::uprobe_binary`]) say it: `.`, `..` or `//` in it, or a path
/// under /dev, /proc or /sys.
pub fn uprobe_binary_problem(binary: &str) -> Option<&'static str> {
    if binary.contains("//")
        || binary.contains("/./")
        || binary.contains("/../")
        || binary.ends_with("/.")
        || binary.ends_with("/..")
    {
        return Some(cel::UPROBE_BINARY_PLAIN);
    }
    ["/dev", "/proc", "/sys"]
        .iter()
        .any(|d| binary == *d || binary.strip_prefix(d).is_some_and(|r| r.starts_with('/')))
        .then_some(cel::UPROBE_BINARY_NOT_KERNEL)
}

/// Longest uprobe binary path (Linux's PATH_MAX).
pub const MAX_PATH_LEN: usize = 4096;
/// Longest uprobe symbol.
pub const MAX_SYMBOL_LEN: usize = 1024;

/// Which events are exported one by one through the ring buffer, with pid,
/// command, cgroup and latency.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = cel::export()))]
pub struct ExportSpec {
    /// `none` (histograms only, the default), `slowerThan` (events slower
    /// than `slowerThan`), `errors` (failed events) or `all`.
    #[serde(default)]
    pub policy: ExportPolicy,
    /// For `policy: slowerThan`, and only then: the latency above which an
    /// event is exported, as a duration above 0 like `10ms`.
    #[serde(
        default,
        with = "ringwarden_core::duration::serde_duration_opt",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>", length(max = MAX_DURATION_LEN))]
    #[schemars(extend("x-kubernetes-validations" = cel::slower_than()))]
    pub slower_than: Option<Duration>,
}

/// Export policies.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ExportPolicy {
    /// Histograms only; nothing is exported.
    #[default]
    None,
    /// Events slower than `slowerThan`.
    SlowerThan,
    /// Events that failed (error return, failed connect, I/O error).
    Errors,
    /// Every event.
    All,
}

/// The probe catalog.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ProbeKind {
    /// System call latency (raw_syscalls enter → exit), per syscall.
    Syscalls,
    /// TCP connect latency (SYN_SENT → ESTABLISHED), per destination port.
    TcpConnect,
    /// TCP retransmits, per destination address and port.
    TcpRetransmit,
    /// Run-queue delay (wakeup → running).
    Runqueue,
    /// Block I/O latency (issue → complete), per device and operation.
    #[serde(rename = "blockIO")]
    BlockIo,
    /// User-space function latency (entry → return), in C-ABI and Go binaries.
    Uprobe,
    /// The Go runtime's stop-the-world pauses and GC cycles.
    GoRuntime,
}

impl ExportPolicy {
    /// The name used in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::SlowerThan => "slowerThan",
            Self::Errors => "errors",
            Self::All => "all",
        }
    }
}

impl ProbeKind {
    /// The name used in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Syscalls => "syscalls",
            Self::TcpConnect => "tcpConnect",
            Self::TcpRetransmit => "tcpRetransmit",
            Self::Runqueue => "runqueue",
            Self::BlockIo => "blockIO",
            Self::Uprobe => "uprobe",
            Self::GoRuntime => "goRuntime",
        }
    }

    /// Whether the probe attaches uprobes (which this kernel allows only
    /// with CAP_SYS_ADMIN, see the chart's `agent.uprobes.enabled`).
    pub fn uses_uprobes(self) -> bool {
        matches!(self, Self::Uprobe | Self::GoRuntime)
    }

    /// Whether events have a latency (`tcpRetransmit` only counts).
    pub fn has_latency(self) -> bool {
        self != Self::TcpRetransmit
    }
}

/// Restricts a probe to some processes. All given criteria must match; an
/// empty list does not restrict.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbeFilter {
    /// Process ids (thread-group ids, at most 1024) to observe; threads of
    /// these processes are included. Not for `tcpRetransmit`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_FILTER_PIDS), inner(range(min = 1, max = MAX_PID)))]
    pub pids: Vec<u32>,
    /// Command names to observe (at most 256), as the kernel stores them:
    /// `comm`, at most 15 bytes, see `/proc/<pid>/comm`. Not for
    /// `tcpRetransmit`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_FILTER_COMMS), inner(length(min = 1, max = MAX_COMM_LEN)))]
    #[schemars(transform = cel::on_comm_items)]
    pub comms: Vec<String>,
    /// cgroup v2 paths to observe (at most 64, each at most 256 characters),
    /// absolute under the cgroup mount (`/sys/fs/cgroup/system.slice/nginx.service`)
    /// or relative to it (`system.slice/nginx.service`). Processes in
    /// descendant cgroups are included; pods are selected with `podSelector`.
    /// Node-wide, so only ClusterProbeSets (and standalone mode) take them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_FILTER_CGROUPS), inner(length(min = 1, max = MAX_CGROUP_PATH_LEN)))]
    #[schemars(transform = cel::on_cgroup_items)]
    pub cgroups: Vec<String>,
}

/// Most pids in one filter (the kernel's pid filter holds 1024).
pub const MAX_FILTER_PIDS: usize = 1024;
/// Largest process id Linux hands out (`PID_MAX_LIMIT` on 64-bit).
pub const MAX_PID: u32 = 4 * 1024 * 1024;
/// Most comms in one filter (the kernel's comm filter holds 256).
pub const MAX_FILTER_COMMS: usize = 256;
/// Most cgroup paths in one filter. Pods come through `podSelector`, so
/// these are the few system cgroups a probe names; the number also bounds
/// how often the API server counts the path rule (64 probes × 64 paths).
pub const MAX_FILTER_CGROUPS: usize = 64;
/// Longest cgroup path. A container's cgroup under the systemd driver
/// (`/sys/fs/cgroup/kubepods.slice/kubepods-besteffort.slice/`, then
/// `kubepods-besteffort-pod<uid>.slice/cri-containerd-<64 hex>.scope`) is
/// 207 characters with the mount prefix; 256 leaves room for that. It
/// also bounds the path rule's estimated cost (0.2 per byte, a character
/// counting as 4): 217 per path, so 64 probes × 64 paths stay under a tenth
/// of the API server's per-rule limit (see `crds/tests/cel_cost`).
pub const MAX_CGROUP_PATH_LEN: usize = 256;

/// Observed state of a ProbeSet, written by the operator.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbeSetStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Invalid`, `QuotaConstrained` and `Degraded`, following the
    /// Kubernetes API conventions, and `Reconciling` and `Stalled` as
    /// kstatus (Flux, kpt) reads them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Nodes whose agent reported every probe running within the last two
    /// report intervals, over nodes selected, like `3/4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,
    /// The conditions in one phrase, for `kubectl get`: `Ready`,
    /// `Reconciling` (waiting for the agents' first reports on this
    /// generation), `NoMatchingNodes`, `Degraded: <reason>` or
    /// `Invalid: <field>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Events per second observed across nodes, all probes together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_per_second: Option<f64>,
    /// Percentage of exported events the ring buffers dropped, last interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_percent: Option<f64>,
    /// Percentage of exported events the quota plan predicts the ring
    /// buffers drop when every probe runs at its declared `peakEventRate`:
    /// the probes' `plan.probes[].predictedDrop`, weighted by the events
    /// each exports. `dropPercent` above it means a rate above the declared
    /// one, or an agent starved of CPU (docs/quota.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_drop_percent: Option<f64>,
    /// Ring-buffer memory per node, all probes together, like `4Mi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_buffer: Option<String>,
    /// The quota planner's decisions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanStatus>,
    /// The cluster that wrote this status (the chart's `clusterName`), so
    /// statuses gathered from many clusters say where they came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
}

/// The quota plan of one ProbeSet on a node.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlanStatus {
    /// Ring-buffer bytes available on a node (`spec.ringBuffer.nodeBudget`).
    pub budget_bytes: u64,
    /// Ring-buffer bytes the plan uses on a node.
    pub used_bytes: u64,
    /// The plan of each probe, in `spec.probes` order: on the node where
    /// the node budget gives this ProbeSet least (see `nodeShare`), once an
    /// agent has reported its node's CPUs; until then, within
    /// `spec.ringBuffer.nodeBudget` alone.
    pub probes: Vec<ProbePlanStatus>,
    /// What this ProbeSet asks of the platform's node budget and what it
    /// gets on its tightest node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_share: Option<NodeShareStatus>,
}

/// One ProbeSet's share of the node budget: the locked kernel memory
/// (maps and ring buffers) of all probes on a node, which the platform sets
/// and every ProbeSet selecting the node shares.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeShareStatus {
    /// The node budget (the operator's `agent.nodeBudget`).
    pub node_budget_bytes: u64,
    /// Bytes this ProbeSet's probes take with the rings
    /// `spec.ringBuffer.nodeBudget` gives them: their histogram and other
    /// maps, and their rings.
    pub requested_bytes: u64,
    /// Bytes they get on the node where they get least.
    pub granted_bytes: u64,
    /// Possible CPUs of that node, as its agent reported them (a node
    /// whose agent has not reported yet counts as the most any agent
    /// reported). Per-CPU histogram maps take a copy for each.
    pub cpus: u32,
    /// Other ProbeSets sharing that node.
    pub other_probe_sets: u32,
    /// Namespaces besides this one those ProbeSets are in.
    pub other_namespaces: u32,
}

/// The quota plan of one probe.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbePlanStatus {
    /// The probe (`spec.probes[].name`).
    pub name: String,
    /// Ring-buffer size (a power of two, at least one page).
    pub ring_bytes: u64,
    /// The kernel keeps one event in `sampleEvery`.
    pub sample_every: u64,
    /// Predicted steady-state fraction of exported events dropped at the
    /// declared peak rate, with the agent draining the ring every half
    /// `drainInterval`.
    pub predicted_drop: f64,
    /// Why the planner chose these numbers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

/// A problem with a spec, naming the field and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, like `spec.probes[1].name`.
    pub field: String,
    /// What is wrong and what to write instead.
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Longest `comm` the kernel keeps (TASK_COMM_LEN - 1).
pub const MAX_COMM_LEN: usize = 15;

impl ProbeSetSpec {
    /// Checks what the types cannot: unique DNS-label names, sensible
    /// filters. Returns every problem, not just the first.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut err = |field: String, message: String| errors.push(FieldError { field, message });
        if self.probes.is_empty() {
            err(
                "spec.probes".into(),
                "no probes given; add at least one, e.g. `- {name: sys, kind: syscalls}`".into(),
            );
        }
        if self.probes.len() > MAX_PROBES {
            err(
                "spec.probes".into(),
                format!(
                    "{} probes is too many; use at most {MAX_PROBES}, or split them over \
                     several ProbeSets",
                    self.probes.len()
                ),
            );
        }
        if self.report_interval < Duration::from_millis(100) {
            err(
                "spec.reportInterval".into(),
                "must be at least 100ms; use e.g. `10s`".into(),
            );
        }
        if !(0.0..1.0).contains(&self.max_drop_rate) {
            err(
                "spec.maxDropRate".into(),
                format!(
                    "{} is not a fraction below 1; use a number from 0 to 0.99, e.g. 0.01 for 1 %",
                    self.max_drop_rate
                ),
            );
        }
        let rb = &self.ring_buffer;
        if !DRAIN_INTERVALS.contains(&rb.drain_interval) {
            err(
                "spec.ringBuffer.drainInterval".into(),
                DRAIN_INTERVAL_RULE.into(),
            );
        }
        if !(rb.burst_factor >= 1.0 && rb.burst_factor <= 100.0) {
            err(
                "spec.ringBuffer.burstFactor".into(),
                format!("{} is out of range; use 1 to 100, e.g. 2", rb.burst_factor),
            );
        }
        if rb.node_budget.len() > MAX_QUANTITY_LEN {
            err(
                "spec.ringBuffer.nodeBudget".into(),
                format!("is longer than {MAX_QUANTITY_LEN} characters; use e.g. 64Mi"),
            );
        } else {
            match ringwarden_core::quantity::parse_bytes(&rb.node_budget) {
                Err(e) => err("spec.ringBuffer.nodeBudget".into(), e),
                // More than 15 digits is refused too: the schema's rule
                // reads the number with CEL's 64-bit int().
                Ok(b)
                    if b > MAX_NODE_BUDGET
                        || rb
                            .node_budget
                            .bytes()
                            .take_while(u8::is_ascii_digit)
                            .count()
                            > 15 =>
                {
                    err("spec.ringBuffer.nodeBudget".into(), NODE_BUDGET_RULE.into())
                }
                Ok(_) => {}
            }
        }
        for (field, message) in crate::selector::label_map_problems(&self.node_selector) {
            err(format!("spec.nodeSelector{field}"), message);
        }
        if let Some(selector) = &self.pod_selector {
            for (field, message) in crate::selector::label_selector_problems(selector) {
                err(format!("spec.podSelector{field}"), message);
            }
        }
        let mut seen = BTreeMap::new();
        for (i, p) in self.probes.iter().enumerate() {
            let at = format!("spec.probes[{i}]");
            if !is_dns_label(&p.name) {
                err(
                    format!("{at}.name"),
                    format!(
                        "{:?} is not a DNS label; use 1-63 lowercase letters, digits and '-', \
                         starting and ending with a letter or digit, e.g. \"sys\"",
                        p.name
                    ),
                );
            }
            if let Some(first) = seen.insert(p.name.as_str(), i) {
                err(
                    format!("{at}.name"),
                    format!(
                        "{:?} is already the name of spec.probes[{first}]; probe names must be unique",
                        p.name
                    ),
                );
            }
            if !(1..=MAX_MAX_SERIES).contains(&p.max_series) {
                err(
                    format!("{at}.maxSeries"),
                    format!(
                        "{} is out of range; use 1 to {MAX_MAX_SERIES}",
                        p.max_series
                    ),
                );
            }
            if !(p.sampling >= MIN_SAMPLING && p.sampling <= 1.0) {
                err(
                    format!("{at}.sampling"),
                    format!(
                        "{} is not a fraction of events the kernel samples; use a number from \
                         1/1048576 to 1, e.g. 1 or 0.1",
                        ringwarden_core::planner::count(p.sampling)
                    ),
                );
            }
            if !(p.peak_event_rate >= 0.0 && p.peak_event_rate.is_finite()) {
                err(
                    format!("{at}.peakEventRate"),
                    "must be a non-negative number of events per second, e.g. 1000".into(),
                );
            } else if p.peak_event_rate > MAX_PEAK_EVENT_RATE {
                err(format!("{at}.peakEventRate"), PEAK_EVENT_RATE_RULE.into());
            }
            if !(MIN_PRIORITY..=MAX_PRIORITY).contains(&p.priority) {
                err(format!("{at}.priority"), PRIORITY_RULE.into());
            }
            match (p.export.policy, p.export.slower_than) {
                (ExportPolicy::SlowerThan, None) => err(
                    format!("{at}.export.slowerThan"),
                    "policy slowerThan needs a threshold; add e.g. `slowerThan: 10ms`".into(),
                ),
                (ExportPolicy::SlowerThan, Some(Duration::ZERO)) => err(
                    format!("{at}.export.slowerThan"),
                    "must be above 0; to export every event use `policy: all`, else give a \
                     threshold like `10ms`"
                        .into(),
                ),
                (ExportPolicy::SlowerThan, Some(_)) => {}
                (other, Some(_)) => err(
                    format!("{at}.export.slowerThan"),
                    format!(
                        "only used with `policy: slowerThan` (policy is {}); remove it or \
                         change the policy",
                        other.as_str()
                    ),
                ),
                (_, None) => {}
            }
            if p.export.policy != ExportPolicy::None && p.peak_event_rate == 0.0 {
                err(
                    format!("{at}.peakEventRate"),
                    "exporting events needs the declared peak rate that sizes the ring buffer; \
                     add e.g. `peakEventRate: 1000`"
                        .into(),
                );
            }
            match (p.kind, &p.uprobe) {
                (ProbeKind::Uprobe, None) => err(
                    format!("{at}.uprobe"),
                    "kind uprobe needs the function to time; add \
                     `uprobe: {binary: /path/to/binary, symbol: function_name}`"
                        .into(),
                ),
                (ProbeKind::Uprobe, Some(u)) => {
                    if !u.binary.starts_with('/') {
                        err(
                            format!("{at}.uprobe.binary"),
                            format!(
                                "{:?} is not an absolute path; use e.g. /usr/bin/app",
                                u.binary
                            ),
                        );
                    }
                    if let Some(problem) = uprobe_binary_problem(&u.binary) {
                        err(format!("{at}.uprobe.binary"), problem.into());
                    }
                    if u.binary.chars().count() > MAX_PATH_LEN {
                        err(
                            format!("{at}.uprobe.binary"),
                            format!("is longer than {MAX_PATH_LEN} characters; use a shorter path"),
                        );
                    }
                    if u.symbol.is_empty() {
                        err(
                            format!("{at}.uprobe.symbol"),
                            "is empty; give the function's symbol as `nm` lists it".into(),
                        );
                    }
                    if u.symbol.chars().count() > MAX_SYMBOL_LEN {
                        err(
                            format!("{at}.uprobe.symbol"),
                            format!(
                                "is longer than {MAX_SYMBOL_LEN} characters; give the symbol \
                                 as `nm` lists it"
                            ),
                        );
                    }
                }
                (kind, Some(_)) => err(
                    format!("{at}.uprobe"),
                    format!(
                        "only used with `kind: uprobe` (kind is {}); remove it",
                        kind.as_str()
                    ),
                ),
                (_, None) => {}
            }
            match (p.kind, &p.go_runtime) {
                (ProbeKind::GoRuntime, None) => err(
                    format!("{at}.goRuntime"),
                    "kind goRuntime needs the Go binary to watch; add \
                     `goRuntime: {binary: /path/to/go/binary}`"
                        .into(),
                ),
                (ProbeKind::GoRuntime, Some(g)) => {
                    if !g.binary.starts_with('/') {
                        err(
                            format!("{at}.goRuntime.binary"),
                            format!(
                                "{:?} is not an absolute path; use e.g. /usr/local/bin/server",
                                g.binary
                            ),
                        );
                    }
                    if let Some(problem) = uprobe_binary_problem(&g.binary) {
                        err(format!("{at}.goRuntime.binary"), problem.into());
                    }
                    if g.binary.chars().count() > MAX_PATH_LEN {
                        err(
                            format!("{at}.goRuntime.binary"),
                            format!("is longer than {MAX_PATH_LEN} characters; use a shorter path"),
                        );
                    }
                }
                (kind, Some(_)) => err(
                    format!("{at}.goRuntime"),
                    format!(
                        "only used with `kind: goRuntime` (kind is {}); remove it",
                        kind.as_str()
                    ),
                ),
                (_, None) => {}
            }
            let Some(filter) = &p.filter else { continue };
            for (list, len, max) in [
                ("pids", filter.pids.len(), MAX_FILTER_PIDS),
                ("comms", filter.comms.len(), MAX_FILTER_COMMS),
                ("cgroups", filter.cgroups.len(), MAX_FILTER_CGROUPS),
            ] {
                if len > max {
                    err(
                        format!("{at}.filter.{list}"),
                        format!(
                            "{len} entries is too many; use at most {max}, e.g. by filtering \
                             on a common cgroup instead"
                        ),
                    );
                }
            }
            if p.kind == ProbeKind::TcpRetransmit
                && (!filter.pids.is_empty() || !filter.comms.is_empty())
            {
                err(
                    format!("{at}.filter"),
                    "tcpRetransmit runs in softirq context where no process is current, so \
                     pid and comm filters cannot apply; select the pods with podSelector instead \
                     (or, in a ClusterProbeSet, filter by cgroups)"
                        .into(),
                );
            }
            for (j, cg) in filter.cgroups.iter().enumerate() {
                if cg.trim_matches('/').is_empty()
                    || cg.split('/').any(|c| c == "..")
                    || cg.chars().count() > MAX_CGROUP_PATH_LEN
                {
                    err(
                        format!("{at}.filter.cgroups[{j}]"),
                        format!(
                            "{cg:?} is not a cgroup path; use a path under /sys/fs/cgroup \
                             without '..', at most {MAX_CGROUP_PATH_LEN} characters, such as \
                             system.slice/nginx.service"
                        ),
                    );
                }
            }
            for (j, pid) in filter.pids.iter().enumerate() {
                if *pid == 0 || *pid > MAX_PID {
                    err(
                        format!("{at}.filter.pids[{j}]"),
                        format!(
                            "{pid} is not a process id; use a pid from `pgrep` \
                             (1 to {MAX_PID})"
                        ),
                    );
                }
            }
            for (j, comm) in filter.comms.iter().enumerate() {
                if comm.is_empty() || comm.len() > MAX_COMM_LEN {
                    err(
                        format!("{at}.filter.comms[{j}]"),
                        format!(
                            "{comm:?} is not a kernel comm; use 1 to {MAX_COMM_LEN} bytes, \
                             as `cat /proc/<pid>/comm` shows it"
                        ),
                    );
                }
            }
        }
        errors
    }
}

/// An RFC 1123 label: 1-63 lowercase letters, digits and '-', alphanumeric
/// at both ends.
pub(crate) fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=63).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(probes: Vec<ProbeSpec>) -> ProbeSetSpec {
        ProbeSetSpec {
            node_selector: BTreeMap::new(),
            pod_selector: None,
            probes,
            ring_buffer: RingBufferSpec::default(),
            max_drop_rate: 0.01,
            report_interval: Duration::from_secs(10),
        }
    }

    fn probe(name: &str) -> ProbeSpec {
        ProbeSpec {
            name: name.into(),
            kind: ProbeKind::Syscalls,
            uprobe: None,
            go_runtime: None,
            filter: None,
            max_series: DEFAULT_MAX_SERIES,
            export: ExportSpec::default(),
            peak_event_rate: 0.0,
            sampling: 1.0,
            priority: 0,
        }
    }

    #[test]
    fn a_valid_spec_has_no_errors() {
        assert_eq!(spec(vec![probe("sys"), probe("sys-2")]).validate(), vec![]);
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let mut p = probe("Sys_1");
        p.filter = Some(ProbeFilter {
            pids: vec![1, 0],
            comms: vec!["a-very-long-command-name".into()],
            cgroups: vec![],
        });
        let fields: Vec<_> = spec(vec![p, probe("ok"), probe("ok")])
            .validate()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            [
                "spec.probes[0].name",
                "spec.probes[0].filter.pids[1]",
                "spec.probes[0].filter.comms[0]",
                "spec.probes[2].name",
            ]
        );
    }

    #[test]
    fn an_empty_probe_list_is_rejected() {
        let errors = spec(vec![]).validate();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "spec.probes");
    }

    #[test]
    fn probe_kinds_use_their_manifest_names() {
        for kind in [
            ProbeKind::Syscalls,
            ProbeKind::TcpConnect,
            ProbeKind::TcpRetransmit,
            ProbeKind::Runqueue,
            ProbeKind::BlockIo,
            ProbeKind::Uprobe,
        ] {
            let json = serde_json::to_value(kind).unwrap();
            assert_eq!(json, serde_json::Value::String(kind.as_str().into()));
        }
    }
}
