//! Loading the kernel programs with aya and reading what they counted.
//!
//! Touches the kernel (bpf syscalls); everything it returns is plain data
//! that [`crate::table`] and [`crate::metrics`] turn into output.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        BtfTracePoint, ProgramError, UProbe,
        uprobe::{UProbeAttachLocation, UProbeScope},
    },
};
use ringwarden_core::{accounting::Counters, histogram::Histogram};
use ringwarden_crds::ProbeKind;
use ringwarden_ebpf_common::{
    COMM_LEN, DEFAULT_START_ENTRIES, EXPORT_ALL, EXPORT_ERRORS, EXPORT_NONE, EXPORT_SLOWER_THAN,
    Event, FILTER_CGROUP, FILTER_CGROUPS_ENTRIES, FILTER_COMM, FILTER_COMMS_ENTRIES, FILTER_PID,
    FILTER_PIDS_ENTRIES, KernelOffsets, LatencyHist, MAX_THRESHOLDS, OVERFLOW_SERIES,
    OVERFLOW_SLOT, ProbeCounters, SeriesKey, SloCounts, Thresholds,
    event::{DecodeError, decode},
    globals, maps, programs,
};

use crate::target::{Attach, UprobeTarget};

mod go;
mod hist;
mod privileges;
mod processes;

use go::GoMaps;
pub use go::{GO_RUNTIME_SERIES, go_runtime_series_id, process_alive};
pub use hist::ReadCost;
pub use privileges::{check_capabilities, check_privileges};
use privileges::{
    effective_capabilities, is_permission_error, permission_hint, uprobe_permission_message,
};
pub use processes::{MAX_PROCESSES_PER_UPROBE, Process, ProcessAttach, Synced};

/// The compiled kernel programs, embedded so the agent is one file.
static PROBES_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ringwarden-probes"));

/// Where the kernel publishes its own BTF; `tp_btf` programs need it.
pub const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Why a probe could not be loaded or read.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "kernel BTF is not available ({0}); ringwarden needs a kernel built with \
         CONFIG_DEBUG_INFO_BTF=y (Linux >= 5.8), which publishes it at {KERNEL_BTF}"
    )]
    MissingBtf(String),
    #[error("loading the eBPF object failed: {0}{hint}", hint = permission_hint(.0))]
    Object(String),
    #[error("program {program} was rejected: {message}{hint}", hint = permission_hint(.message))]
    Program {
        program: &'static str,
        message: String,
    },
    #[error("attaching {program} to tracepoint {tracepoint} failed: {message}{hint}", hint = permission_hint(.message))]
    Attach {
        program: &'static str,
        tracepoint: &'static str,
        message: String,
    },
    #[error("map {map}: {message}")]
    Map { map: &'static str, message: String },
    #[error("filter: {0}")]
    Filter(String),
    #[error("kernel struct offsets: {0}")]
    Offsets(String),
    #[error("uprobe {symbol} in {binary}: {message}")]
    Uprobe {
        binary: String,
        symbol: String,
        message: String,
    },
    #[error(
        "loading eBPF programs needs root or the capabilities CAP_BPF and CAP_PERFMON \
         (effective capabilities here: {0:#x})"
    )]
    Privileges(u64),
    #[error("cannot read {0}")]
    NodeFacts(String),
}

/// The tail of a verifier log: where the verifier gave up is at the end.
fn verifier_excerpt(log: &str) -> String {
    const LINES: usize = 12;
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(LINES)..].join("\n")
}

fn program_error(program: &'static str, e: ProgramError) -> ProbeError {
    let message = match &e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => format!(
            "{io_error}; verifier log (last lines):\n{}",
            verifier_excerpt(&verifier_log.to_string())
        ),
        other => other.to_string(),
    };
    ProbeError::Program { program, message }
}

/// Export policy as the kernel sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Export {
    #[default]
    None,
    SlowerThan(u64),
    Errors,
    All,
}

/// Everything needed to load one probe, resolved from its configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeConfig {
    pub kind: ProbeKind,
    /// Thread-group ids to observe (empty: all).
    pub pids: Vec<u32>,
    /// Task comms to observe (empty: all).
    pub comms: Vec<String>,
    /// cgroup v2 ids to observe, with everything below them (empty: all,
    /// unless `cgroup_filter` is set).
    pub cgroup_ids: Vec<u64>,
    /// Filter by cgroup even while `cgroup_ids` is empty: a pod selector
    /// that matches no pod yet observes nothing, and pods that start later
    /// join the filter in place ([`Probe::set_cgroup_filter`]).
    pub cgroup_filter: bool,
    /// Process never observed: the agent itself, so it does not feed its own
    /// numbers with the syscalls it makes to read them.
    pub exclude_tgid: u32,
    /// Histogram series kept; further series fold into one overflow series.
    pub max_series: u32,
    pub export: Export,
    /// Keep one event in `sample_every` (1 keeps all).
    pub sample_every: u64,
    /// Ring-buffer bytes (a power of two multiple of the page size).
    pub ring_bytes: u32,
    /// The plan's predicted steady-state drop fraction at the declared
    /// rate, reported next to the measured one.
    pub predicted_drop: f64,
    /// In-flight starts the object-keyed start map holds (tcpConnect,
    /// blockIO; runqueue: runnable threads waiting).
    pub start_entries: u32,
    /// Exact SLO counters: (SLO name, kernel slot).
    pub thresholds: Vec<(String, ringwarden_ebpf_common::ThresholdSlot)>,
    /// For uprobes: binary and symbol.
    pub uprobe: Option<(String, String)>,
    /// Attach the uprobe to single processes, none at load, each added
    /// with [`Probe::process_attach`]: a ProbeSet's uprobe, so that no
    /// process outside its pods traps. `false`: for every process that
    /// maps the binary (a ClusterProbeSet's).
    pub per_process_uprobes: bool,
    /// The node's root directory, under which uprobe binaries resolve:
    /// `/` on a host, the host mount in a pod (see [`crate::target`]).
    pub host_root: PathBuf,
    /// CPUs the histogram map is laid out for; `None`: the possible CPUs.
    /// More than the node has only costs memory (the benchmark uses it to
    /// measure a read on the layout of a larger node).
    pub hist_cpus: Option<u32>,
}

impl ProbeConfig {
    /// A configuration that observes everything, keeps 64 series and
    /// exports nothing.
    pub fn new(kind: ProbeKind) -> Self {
        Self {
            kind,
            pids: vec![],
            comms: vec![],
            cgroup_ids: vec![],
            cgroup_filter: false,
            exclude_tgid: std::process::id(),
            max_series: 64,
            export: Export::None,
            sample_every: 1,
            ring_bytes: page_size(),
            predicted_drop: 0.0,
            start_entries: DEFAULT_START_ENTRIES,
            thresholds: vec![],
            uprobe: None,
            per_process_uprobes: false,
            host_root: crate::target::host_root(),
            hist_cpus: None,
        }
    }
}

/// The running kernel's page size, the ring buffer's unit.
pub fn page_size() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 { n as u32 } else { 4096 }
}

/// The node's possible CPUs (`/sys/devices/system/cpu/possible`): the
/// kernel allocates every per-CPU map for each of them, online or not, so
/// the node budget counts them.
pub fn possible_cpus() -> Result<u32, ProbeError> {
    aya::util::nr_cpus()
        .map(|n| u32::try_from(n).unwrap_or(u32::MAX).max(1))
        .map_err(|(path, e)| ProbeError::NodeFacts(format!("{path}: {e}")))
}

/// The hooks of each kind: (program, tracepoint) for `tp_btf` programs.
/// Ends attach before starts, so no start is stored that no end consumes.
fn tracepoints(kind: ProbeKind) -> &'static [(&'static str, &'static str)] {
    match kind {
        ProbeKind::Syscalls => &[
            (programs::SCHED_FORK, "sched_process_fork"),
            (programs::SYS_EXIT, "sys_exit"),
            (programs::SYS_ENTER, "sys_enter"),
        ],
        ProbeKind::TcpConnect => &[(programs::TCP_STATE, "inet_sock_set_state")],
        ProbeKind::TcpRetransmit => &[(programs::TCP_RETRANSMIT, "tcp_retransmit_skb")],
        ProbeKind::Runqueue => &[
            (programs::RQ_SWITCH, "sched_switch"),
            (programs::RQ_WAKEUP, "sched_wakeup"),
            (programs::RQ_WAKEUP_NEW, "sched_wakeup_new"),
        ],
        ProbeKind::BlockIo => &[
            (programs::BIO_COMPLETE, "block_rq_complete"),
            (programs::BIO_ISSUE, "block_rq_issue"),
        ],
        ProbeKind::Uprobe | ProbeKind::GoRuntime => &[],
    }
}

/// A loaded and attached probe. Dropping it detaches the programs and
/// frees the maps.
pub struct Probe {
    kind: ProbeKind,
    /// Owns the programs and their links; dropping it detaches them.
    /// Shared with [`ProcessAttach`] handles, which attach a per-process
    /// uprobe off the agent's loop.
    programs: Arc<Mutex<processes::Programs>>,
    /// Histograms by slot, taken from the kernel as they change; `slot_keys`
    /// names them, `next_slot` counts the slots taken (see
    /// `ringwarden_ebpf_common::OVERFLOW_SLOT`). Behind a lock so that a
    /// snapshot, which takes, needs only `&self`.
    hist: Mutex<hist::Inbox>,
    slot_keys: Array<MapData, SeriesKey>,
    next_slot: Array<MapData, u64>,
    max_series: u32,
    counters: PerCpuArray<MapData, ProbeCounters>,
    slo_counts: PerCpuArray<MapData, SloCounts>,
    events: RingBuf<MapData>,
    /// The cgroup filter set, kept to change it while the programs run.
    cgroups: HashMap<MapData, u64, u8>,
    /// What `cgroups` holds, so a change writes only the difference.
    cgroup_ids: std::collections::BTreeSet<u64>,
    threshold_names: Vec<String>,
    ring_bytes: u32,
    predicted_drop: f64,
    program_ids: Vec<u32>,
    drained: u64,
    decode_errors: u64,
    uprobe_symbol: Option<String>,
    go_maps: GoMaps,
}

/// Exact good/total counts of one SLO threshold.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ThresholdCount {
    pub slo: String,
    pub good: u64,
    pub total: u64,
}

/// What a probe has counted since it was loaded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub kind: Option<ProbeKind>,
    pub counters: Counters,
    /// Latency histogram per series, by display name; `other` is the
    /// overflow series.
    pub series: BTreeMap<String, Histogram>,
    pub thresholds: Vec<ThresholdCount>,
    pub ring_bytes: u64,
    /// The plan's predicted steady-state fraction of exported events the
    /// ring drops at the declared rate (`ringbuf_dropped / exported` is the
    /// measured one).
    pub predicted_drop: f64,
    /// Most bytes seen waiting in the ring buffer after a submit, sampled
    /// every `HIGH_WATER_EVERY` records per CPU (so it may trail the peak
    /// by up to that many records per CPU).
    pub ring_high_water: u64,
    /// Records read from the ring buffer.
    pub events_received: u64,
    /// Records that failed to decode (corrupt or truncated).
    pub decode_errors: u64,
    /// What reading the histograms has cost since the probe was loaded.
    pub read_cost: ReadCost,
}

/// Process-wide kernel facts, read once.
pub struct Kernel {
    btf: Btf,
    offsets: KernelOffsets,
}

impl Kernel {
    /// Reads the kernel's BTF and the struct offsets the programs need.
    pub fn open() -> Result<Self, ProbeError> {
        Self::open_at(Path::new(KERNEL_BTF))
    }

    /// [`Kernel::open`] with the kernel's BTF read from `path`.
    pub fn open_at(path: &Path) -> Result<Self, ProbeError> {
        let missing = |e: String| ProbeError::MissingBtf(format!("{}: {e}", path.display()));
        let data = std::fs::read(path).map_err(|e| missing(e.to_string()))?;
        let btf =
            Btf::parse(&data, aya::Endianness::default()).map_err(|e| missing(e.to_string()))?;
        let offsets = crate::btf::Btf::parse(&data)
            .and_then(|b| b.kernel_offsets())
            .map_err(|e| ProbeError::Offsets(format!("{}: {e}", path.display())))?;
        Ok(Self { btf, offsets })
    }
}

fn comm_key(comm: &str) -> Result<[u8; COMM_LEN], ProbeError> {
    let bytes = comm.as_bytes();
    if bytes.is_empty() || bytes.len() >= COMM_LEN {
        return Err(ProbeError::Filter(format!(
            "comm {comm:?} must be 1 to {} bytes",
            COMM_LEN - 1
        )));
    }
    let mut key = [0u8; COMM_LEN];
    key[..bytes.len()].copy_from_slice(bytes);
    Ok(key)
}

impl Probe {
    /// Loads the kind's programs, installs filters and limits, and attaches.
    /// A uprobe's binary is opened here, blocking: async code opens it on
    /// a blocking thread ([`UprobeTarget::open_async`]) and calls
    /// [`Probe::load_with_target`].
    pub fn load(kernel: &Kernel, config: &ProbeConfig) -> Result<Self, ProbeError> {
        match &config.uprobe {
            Some((binary, symbol)) if config.kind.uses_uprobes() => {
                let target = UprobeTarget::open_for(config.kind, &config.host_root, binary, symbol)
                    .map_err(|e| uprobe_error(binary, symbol, e.0))?;
                Self::load_with_target(kernel, config, Some(&target))
            }
            _ => Self::load_with_target(kernel, config, None),
        }
    }

    /// [`Probe::load`] of a uprobe whose binary was opened beforehand
    /// ([`UprobeTarget::open_async`]), or with the reason it could not be.
    pub fn load_opened(
        kernel: &Kernel,
        config: &ProbeConfig,
        opened: Result<UprobeTarget, crate::target::TargetError>,
    ) -> Result<Self, ProbeError> {
        match opened {
            Ok(target) => Self::load_with_target(kernel, config, Some(&target)),
            Err(e) => {
                let (binary, symbol) = config.uprobe.clone().unwrap_or_default();
                Err(uprobe_error(&binary, &symbol, e.0))
            }
        }
    }

    /// [`Probe::load`] with the uprobe binary already opened and checked.
    pub fn load_with_target(
        kernel: &Kernel,
        config: &ProbeConfig,
        target: Option<&UprobeTarget>,
    ) -> Result<Self, ProbeError> {
        if config.pids.len() > FILTER_PIDS_ENTRIES as usize {
            return Err(ProbeError::Filter(format!(
                "{} pids given, at most {FILTER_PIDS_ENTRIES} are supported",
                config.pids.len()
            )));
        }
        if config.comms.len() > FILTER_COMMS_ENTRIES as usize {
            return Err(ProbeError::Filter(format!(
                "{} comms given, at most {FILTER_COMMS_ENTRIES} are supported",
                config.comms.len()
            )));
        }
        if config.cgroup_ids.len() > FILTER_CGROUPS_ENTRIES as usize {
            return Err(ProbeError::Filter(format!(
                "{} cgroups given, at most {FILTER_CGROUPS_ENTRIES} are supported",
                config.cgroup_ids.len()
            )));
        }
        if config.thresholds.len() > MAX_THRESHOLDS {
            return Err(ProbeError::Filter(format!(
                "{} SLO thresholds on one probe, at most {MAX_THRESHOLDS} are supported",
                config.thresholds.len()
            )));
        }
        if config.kind.uses_uprobes() && target.is_none() {
            return Err(ProbeError::Object(format!(
                "kind {} needs a binary{}",
                config.kind.as_str(),
                if config.kind == ProbeKind::Uprobe {
                    " and a symbol"
                } else {
                    ""
                }
            )));
        }
        let comm_keys = config
            .comms
            .iter()
            .map(|c| comm_key(c))
            .collect::<Result<Vec<_>, _>>()?;
        let flags = (!config.pids.is_empty() as u32 * FILTER_PID)
            | (!config.comms.is_empty() as u32 * FILTER_COMM)
            | ((config.cgroup_filter || !config.cgroup_ids.is_empty()) as u32 * FILTER_CGROUP);
        let (export, slower_than_ns) = match config.export {
            Export::None => (EXPORT_NONE, 0u64),
            Export::SlowerThan(ns) => (EXPORT_SLOWER_THAN, ns),
            Export::Errors => (EXPORT_ERRORS, 0),
            Export::All => (EXPORT_ALL, 0),
        };
        let mut thresholds = Thresholds::default();
        for (slot, (_, t)) in thresholds.slots.iter_mut().zip(&config.thresholds) {
            *slot = *t;
        }
        let page = page_size();
        let ring_bytes = config.ring_bytes.max(page).next_power_of_two();
        let sample_every = config.sample_every.max(1);
        let max_series = config.max_series.max(1);
        let max_series_global = u64::from(max_series);
        let hist_cpus = match config.hist_cpus {
            Some(n) => n.max(1),
            None => possible_cpus()?,
        };
        let hist_cpus_global = u64::from(hist_cpus);
        // The kernel refuses an array whose values pass 4 GiB (ENOMEM);
        // say which field to lower instead.
        let hist_bytes =
            u64::from(max_series + 1) * u64::from(hist_cpus) * size_of::<LatencyHist>() as u64;
        if hist_bytes >= u64::from(u32::MAX) - u64::from(page) {
            return Err(ProbeError::Map {
                map: maps::HIST,
                message: format!(
                    "maxSeries {max_series} needs {hist_bytes} bytes of histograms on {hist_cpus} CPUs, \
                     past the kernel's 4 GiB array limit; lower maxSeries"
                ),
            });
        }
        let obj_entries = match config.kind {
            ProbeKind::TcpConnect | ProbeKind::BlockIo | ProbeKind::Runqueue => {
                config.start_entries.max(1)
            }
            _ => 1,
        };
        let go_start_entries = match target.map(|t| &t.attach) {
            Some(Attach::Go { .. }) => config.start_entries.max(1),
            _ => 1,
        };
        let go_runtime_entries = match target.map(|t| &t.attach) {
            Some(Attach::GoRuntime(_)) => config.start_entries.max(1),
            _ => 1,
        };
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&kernel.btf))
            // Task storage has no typed user-space handle in aya; the kernel
            // side is all it needs.
            .allow_unsupported_maps()
            .override_global(globals::SELF_TGID, &config.exclude_tgid, true)
            .override_global(globals::FILTER_FLAGS, &flags, true)
            .override_global(globals::SAMPLE_EVERY, &sample_every, true)
            .override_global(globals::EXPORT, &export, true)
            .override_global(globals::SLOWER_THAN_NS, &slower_than_ns, true)
            .override_global(globals::THRESHOLDS, &thresholds, true)
            .override_global(globals::OFFSETS, &kernel.offsets, true)
            .override_global(globals::MAX_SERIES, &max_series_global, true)
            .override_global(globals::HIST_CPUS, &hist_cpus_global, true)
            .map_max_entries(maps::HIST, (max_series + 1) * hist_cpus)
            .map_max_entries(maps::SLOT_KEYS, max_series + 1)
            .map_max_entries(maps::SLOTS, max_series + 1)
            .map_max_entries(maps::EVENTS, ring_bytes)
            .map_max_entries(maps::OBJ_START, obj_entries)
            .map_max_entries(maps::GO_START, go_start_entries)
            .map_max_entries(maps::GO_RUNTIME, go_runtime_entries)
            .load(PROBES_OBJECT)
            .map_err(|e| ProbeError::Object(error_chain(&e)))?;

        // Filters and the overflow series go in before the programs attach,
        // so no event escapes them.
        let mut pids: HashMap<_, u32, u8> = take_map(&mut ebpf, maps::FILTER_PIDS)?;
        for pid in &config.pids {
            pids.insert(pid, 1, 0)
                .map_err(|e| map_error(maps::FILTER_PIDS, e))?;
        }
        let mut comms: HashMap<_, [u8; COMM_LEN], u8> = take_map(&mut ebpf, maps::FILTER_COMMS)?;
        for key in &comm_keys {
            comms
                .insert(key, 1, 0)
                .map_err(|e| map_error(maps::FILTER_COMMS, e))?;
        }
        let mut cgroups: HashMap<_, u64, u8> = take_map(&mut ebpf, maps::FILTER_CGROUPS)?;
        for id in &config.cgroup_ids {
            cgroups
                .insert(id, 1, 0)
                .map_err(|e| map_error(maps::FILTER_CGROUPS, e))?;
        }
        let hist = match ebpf.take_map(maps::HIST) {
            Some(aya::maps::Map::Array(data)) => hist::Inbox::map(data, max_series + 1, hist_cpus)?,
            _ => {
                return Err(ProbeError::Map {
                    map: maps::HIST,
                    message: "missing from the eBPF object, or not an array".into(),
                });
            }
        };
        let mut slot_keys: Array<_, SeriesKey> = take_map(&mut ebpf, maps::SLOT_KEYS)?;
        slot_keys
            .set(OVERFLOW_SLOT, OVERFLOW_SERIES, 0)
            .map_err(|e| map_error(maps::SLOT_KEYS, e))?;
        let next_slot = take_map(&mut ebpf, maps::NEXT_SLOT)?;
        let counters = take_map(&mut ebpf, maps::COUNTERS)?;
        let slo_counts = take_map(&mut ebpf, maps::SLO_COUNTS)?;
        let events = take_map(&mut ebpf, maps::EVENTS)?;

        let mut program_ids = Vec::new();
        for &(program, tracepoint) in tracepoints(config.kind) {
            let prog: &mut BtfTracePoint = ebpf
                .program_mut(program)
                .ok_or_else(|| ProbeError::Object(format!("program {program} missing")))?
                .try_into()
                .map_err(|e: ProgramError| program_error(program, e))?;
            prog.load(tracepoint, &kernel.btf)
                .map_err(|e| program_error(program, e))?;
            if let Ok(info) = prog.info() {
                program_ids.push(info.id());
            }
            prog.attach().map_err(|e| ProbeError::Attach {
                program,
                tracepoint,
                message: error_chain(&e),
            })?;
        }
        let mut uprobe_symbol = None;
        let mut per_process = None;
        let mut go_maps = GoMaps::default();
        if let Some(target) = target.filter(|_| config.kind.uses_uprobes()) {
            let (binary, symbol) = (&target.binary, &target.symbol);
            // Ends attach first, for the same reason as the tracepoints.
            let sites: Vec<(&'static str, u64)> = match &target.attach {
                Attach::Native { offset } => vec![
                    (programs::UPROBE_RETURN, *offset),
                    (programs::UPROBE_ENTRY, *offset),
                ],
                Attach::Go { entry, returns, .. } => returns
                    .iter()
                    .map(|r| (programs::GO_RETURN, *r))
                    .chain([(programs::GO_ENTRY, *entry)])
                    .collect(),
                Attach::GoRuntime(sites) => sites
                    .stw_end
                    .iter()
                    .map(|r| (programs::GO_STW_END, *r))
                    .chain([
                        (programs::GO_GC_DONE, sites.gc_done),
                        (programs::GO_GC_START, sites.gc_start),
                        (programs::GO_STW_BEGIN, sites.stw_begin),
                        (programs::GO_STW_OTHER, sites.stw_other),
                    ])
                    .collect(),
            };
            let mut loaded: Vec<&str> = Vec::new();
            let sites_kept = sites.clone();
            for (program, offset) in sites {
                let prog: &mut UProbe = ebpf
                    .program_mut(program)
                    .ok_or_else(|| ProbeError::Object(format!("program {program} missing")))?
                    .try_into()
                    .map_err(|e: ProgramError| program_error(program, e))?;
                if !loaded.contains(&program) {
                    prog.load().map_err(|e| program_error(program, e))?;
                    if let Ok(info) = prog.info() {
                        program_ids.push(info.id());
                    }
                    loaded.push(program);
                }
                if config.per_process_uprobes {
                    // Attached process by process (`ProcessAttach::sync`).
                    continue;
                }
                // The kernel opens the checked file itself, by its fd.
                prog.attach(
                    UProbeAttachLocation::AbsoluteOffset(offset),
                    target.attach_path(),
                    UProbeScope::AllProcesses,
                )
                .map_err(|e| {
                    let chain = error_chain(&e);
                    let message = if is_permission_error(&chain) {
                        uprobe_permission_message(effective_capabilities(), &chain)
                    } else {
                        chain
                    };
                    uprobe_error(binary, symbol, message)
                })?;
            }
            match &target.attach {
                Attach::Go { .. } => {
                    go_maps.start = Some(take_map(&mut ebpf, maps::GO_START)?);
                }
                Attach::GoRuntime(_) => {
                    go_maps.runtime = Some(take_map(&mut ebpf, maps::GO_RUNTIME)?);
                }
                Attach::Native { .. } => {}
            }
            uprobe_symbol = Some(symbol.clone());
            if config.per_process_uprobes {
                let file = target.try_clone_file().map_err(|e| {
                    uprobe_error(binary, symbol, format!("keeping the binary open: {e}"))
                })?;
                per_process = Some(processes::Sites {
                    sites: sites_kept,
                    file,
                    binary: binary.clone(),
                    symbol: symbol.clone(),
                    attached: BTreeMap::new(),
                });
            }
        }
        Ok(Self {
            kind: config.kind,
            programs: Arc::new(Mutex::new(processes::Programs { ebpf, per_process })),
            hist: Mutex::new(hist),
            slot_keys,
            next_slot,
            max_series,
            counters,
            slo_counts,
            events,
            cgroups,
            cgroup_ids: config.cgroup_ids.iter().copied().collect(),
            threshold_names: config.thresholds.iter().map(|(n, _)| n.clone()).collect(),
            ring_bytes,
            predicted_drop: config.predicted_drop,
            program_ids,
            drained: 0,
            decode_errors: 0,
            uprobe_symbol,
            go_maps,
        })
    }

    pub fn kind(&self) -> ProbeKind {
        self.kind
    }

    /// The handle that attaches a per-process uprobe to processes
    /// ([`ProbeConfig::per_process_uprobes`]); `None` for other probes.
    pub fn process_attach(&self) -> Option<ProcessAttach> {
        let programs = self.programs.lock().unwrap_or_else(PoisonError::into_inner);
        programs
            .per_process
            .as_ref()
            .map(|_| ProcessAttach(self.programs.clone()))
    }

    /// Kernel ids of the loaded programs (as `bpftool prog` lists them).
    pub fn program_ids(&self) -> &[u32] {
        &self.program_ids
    }

    /// The cgroup ids the filter holds now.
    pub fn cgroup_filter(&self) -> &std::collections::BTreeSet<u64> {
        &self.cgroup_ids
    }

    /// Makes the cgroup filter hold exactly `ids`, while the programs run:
    /// no reload, no counter reset, no event lost. New ids go in before old
    /// ones leave, and the filter flag stays set throughout, so the filter
    /// never widens, even for a moment. Only for a probe loaded with a
    /// cgroup filter; returns (added, removed).
    pub fn set_cgroup_filter(
        &mut self,
        ids: &std::collections::BTreeSet<u64>,
    ) -> Result<(usize, usize), ProbeError> {
        if ids.len() > FILTER_CGROUPS_ENTRIES as usize {
            return Err(ProbeError::Filter(format!(
                "{} cgroups to observe, at most {FILTER_CGROUPS_ENTRIES} are supported",
                ids.len()
            )));
        }
        let added: Vec<u64> = ids.difference(&self.cgroup_ids).copied().collect();
        let removed: Vec<u64> = self.cgroup_ids.difference(ids).copied().collect();
        for id in &added {
            self.cgroups
                .insert(id, 1, 0)
                .map_err(|e| map_error(maps::FILTER_CGROUPS, e))?;
            self.cgroup_ids.insert(*id);
        }
        for id in &removed {
            match self.cgroups.remove(id) {
                Ok(()) => {}
                // Already gone is what was wanted.
                Err(aya::maps::MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(map_error(maps::FILTER_CGROUPS, e)),
            }
            self.cgroup_ids.remove(id);
        }
        Ok((added.len(), removed.len()))
    }

    /// Reads every waiting ring-buffer record, handing decoded events to
    /// `f`. Corrupt records are counted (and the first one logged), never
    /// passed on. Returns the number of records read.
    pub fn drain(&mut self, mut f: impl FnMut(&Event)) -> u64 {
        let mut n = 0;
        while let Some(item) = self.events.next() {
            n += 1;
            match decode(&item) {
                Ok(ev) => f(&ev),
                Err(e) => corrupt(&mut self.decode_errors, e),
            }
        }
        self.drained += n;
        if self.go_maps.sweep_due() {
            self.sweep_exited(process_alive);
        }
        n
    }

    /// The kernel's id of the histogram map (`HIST`).
    pub fn hist_map_id(&self) -> Option<u32> {
        self.hist
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map_id()
    }

    /// What reading the histograms has cost so far.
    pub fn read_cost(&self) -> ReadCost {
        self.hist
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .cost()
    }

    /// Reads the counters, and the histograms' changes since the last read,
    /// summed over CPUs.
    pub fn snapshot(&self) -> Result<Snapshot, ProbeError> {
        let per_cpu = self
            .counters
            .get(&0, 0)
            .map_err(|e| map_error(maps::COUNTERS, e))?;
        let high_water = per_cpu
            .iter()
            .map(|c| c.ringbuf_high_water)
            .max()
            .unwrap_or(0);
        // The counter runs past maxSeries when CPUs race for the last slots.
        let taken = self
            .next_slot
            .get(&0, 0)
            .map_err(|e| map_error(maps::NEXT_SLOT, e))?;
        let last = taken.min(u64::from(self.max_series)) as u32;
        let mut by_key: BTreeMap<SeriesKey, Histogram> = BTreeMap::new();
        let mut inbox = self.hist.lock().unwrap_or_else(PoisonError::into_inner);
        inbox.read(last);
        let read_cost = inbox.cost();
        let slot_keys = |slot: u32| {
            self.slot_keys
                .get(&slot, 0)
                .map_err(|e| map_error(maps::SLOT_KEYS, e))
        };
        for (key, h) in inbox.series(slot_keys)? {
            match by_key.get_mut(&key) {
                Some(existing) => existing.merge(h),
                None => {
                    by_key.insert(key, h.clone());
                }
            }
        }
        drop(inbox);
        let mut series: BTreeMap<String, Histogram> = BTreeMap::new();
        for (key, h) in by_key {
            let name = series_name(self.kind, &key, self.uprobe_symbol.as_deref());
            match series.get_mut(&name) {
                Some(existing) => existing.merge(&h),
                None => {
                    series.insert(name, h);
                }
            }
        }
        let slo = self
            .slo_counts
            .get(&0, 0)
            .map_err(|e| map_error(maps::SLO_COUNTS, e))?;
        let thresholds = self
            .threshold_names
            .iter()
            .enumerate()
            .map(|(i, name)| ThresholdCount {
                slo: name.clone(),
                good: slo.iter().map(|s| s.good[i]).sum(),
                total: slo.iter().map(|s| s.total[i]).sum(),
            })
            .collect();
        let mut counters = Counters::from_per_cpu(&per_cpu);
        counters.observed += self.go_maps.swept;
        counters.pairing_dropped += self.go_maps.swept;
        Ok(Snapshot {
            kind: Some(self.kind),
            counters,
            series,
            thresholds,
            ring_bytes: self.ring_bytes.into(),
            predicted_drop: self.predicted_drop,
            ring_high_water: high_water,
            events_received: self.drained,
            decode_errors: self.decode_errors,
            read_cost,
        })
    }
}

/// Counts a corrupt record; only the first is logged, so a broken producer
/// cannot flood the log.
fn corrupt(count: &mut u64, e: DecodeError) {
    if *count == 0 {
        tracing::warn!(error = %e, "corrupt ring-buffer record skipped; further ones are only counted");
    }
    *count += 1;
}

/// How a series shows in tables, metrics and events.
pub fn series_name(kind: ProbeKind, key: &SeriesKey, symbol: Option<&str>) -> String {
    if *key == OVERFLOW_SERIES {
        return "other".into();
    }
    match kind {
        ProbeKind::Syscalls => syscall_name(key.id as u32),
        ProbeKind::TcpConnect => format!("port {}", key.id),
        ProbeKind::TcpRetransmit => {
            let family = (key.id >> 16) as u16;
            let port = key.id as u16;
            if family == 10 {
                let ip = std::net::Ipv6Addr::from(key.addr);
                format!("[{ip}]:{port}")
            } else {
                let a = key.addr;
                format!("{}.{}.{}.{}:{port}", a[0], a[1], a[2], a[3])
            }
        }
        ProbeKind::BlockIo => {
            let major = (key.id >> 40) as u32;
            let minor = ((key.id >> 8) & 0xffff_ffff) as u32;
            let op = match key.id & 0xff {
                0 => "read",
                1 => "write",
                2 => "flush",
                3 => "discard",
                5 => "secure-erase",
                9 => "write-zeroes",
                _ => "other-op",
            };
            format!("{} {op}", block_device_name(major, minor))
        }
        ProbeKind::Runqueue => "all".into(),
        ProbeKind::Uprobe => symbol.unwrap_or("function").into(),
        ProbeKind::GoRuntime => {
            let pid = u32::from_le_bytes([key.addr[0], key.addr[1], key.addr[2], key.addr[3]]);
            let name = GO_RUNTIME_SERIES
                .iter()
                .find(|(_, id)| *id == key.id)
                .map_or("runtime", |(name, _)| name);
            format!("{name} (pid {pid})")
        }
    }
}

/// `loop0` for 7:0, from sysfs; `7:0` when sysfs does not know it.
pub fn block_device_name(major: u32, minor: u32) -> String {
    std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent"))
        .ok()
        .and_then(|u| {
            u.lines()
                .find_map(|l| l.strip_prefix("DEVNAME=").map(str::to_string))
        })
        .unwrap_or_else(|| format!("{major}:{minor}"))
}

/// Where cgroup v2 is mounted: `/sys/fs/cgroup` on unified hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones (read from /proc/self/mounts).
pub fn cgroup2_mount() -> Option<std::path::PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| dir.into())
    })
}

/// The cgroup v2 id of a cgroup directory: its inode number on cgroupfs,
/// which is what the kernel's `cgroup_id()` returns. Relative paths are
/// taken under the cgroup v2 mount.
pub fn cgroup_id(path: &str) -> Result<u64, ProbeError> {
    use std::os::unix::fs::MetadataExt;
    let full = if path.starts_with('/') {
        std::path::PathBuf::from(path)
    } else {
        let Some(root) = cgroup2_mount() else {
            return Err(ProbeError::Filter(format!(
                "cgroup {path}: no cgroup2 file system is mounted; mount one with \
                 `mount -t cgroup2 none /sys/fs/cgroup`"
            )));
        };
        root.join(path)
    };
    let meta = std::fs::metadata(&full).map_err(|e| {
        ProbeError::Filter(format!(
            "cgroup {}: {e}; give a directory of the cgroup v2 hierarchy{}",
            full.display(),
            cgroup2_mount()
                .map(|m| format!(" (mounted at {})", m.display()))
                .unwrap_or_default()
        ))
    })?;
    if !meta.is_dir() {
        return Err(ProbeError::Filter(format!(
            "cgroup {} is not a directory",
            full.display()
        )));
    }
    Ok(meta.ino())
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, ProbeError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(ProbeError::Map {
        map: name,
        message: "missing from the eBPF object".into(),
    })?;
    T::try_from(map).map_err(|e| map_error(name, e))
}

fn uprobe_error(binary: &str, symbol: &str, message: String) -> ProbeError {
    ProbeError::Uprobe {
        binary: binary.into(),
        symbol: symbol.into(),
        message,
    }
}

fn map_error(map: &'static str, e: aya::maps::MapError) -> ProbeError {
    ProbeError::Map {
        map,
        message: error_chain(&e),
    }
}

/// An error and its sources on one line: aya's top-level messages alone
/// ("map error") rarely say what went wrong.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some errors already print their source; don't say it twice.
        if !s.contains(&cause_text) {
            s.push_str(": ");
            s.push_str(&cause_text);
        }
        source = cause.source();
    }
    s
}

/// Name of a syscall number on this architecture (`syscall_<nr>` if unknown).
pub fn syscall_name(nr: u32) -> String {
    match syscalls::Sysno::new(nr as usize) {
        Some(s) => s.name().to_string(),
        None => format!("syscall_{nr}"),
    }
}

#[cfg(test)]
mod tests;
