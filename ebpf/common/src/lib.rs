//! Kernel ↔ user-space contract: `#[repr(C)]` map values, map names and
//! capacities, and the log-linear bucket math both sides must agree on.
//!
//! `no_std`, no allocation, fixed-width fields and no implicit padding, so a
//! layout change shows up as a compile error here rather than as garbage in a
//! map read.
#![no_std]

pub mod hist;

pub use hist::{HIST_BUCKETS, HIST_SUB_BITS, bucket_index, bucket_lower, bucket_upper};

pub mod event;

/// Capacity of the pid (tgid) filter set.
pub const FILTER_PIDS_ENTRIES: u32 = 1024;
/// Capacity of the comm filter set.
pub const FILTER_COMMS_ENTRIES: u32 = 256;
/// Capacity of the cgroup-id filter set.
pub const FILTER_CGROUPS_ENTRIES: u32 = 1024;
/// Deepest cgroup level whose ancestors the cgroup filter walks.
pub const MAX_CGROUP_DEPTH: u32 = 16;
/// Length of a task's comm, as the kernel stores it (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;
/// Default capacity of the start maps of probes that pair by object
/// (`tcpConnect` sockets, `blockIO` requests): in-flight connects or I/Os.
pub const DEFAULT_START_ENTRIES: u32 = 16384;

/// Map names, shared so the loader cannot look up a map the object lacks.
pub mod maps {
    pub const TASK_START: &str = "TASK_START";
    pub const OBJ_START: &str = "OBJ_START";
    pub const HIST: &str = "HIST";
    pub const SLOT_KEYS: &str = "SLOT_KEYS";
    pub const NEXT_SLOT: &str = "NEXT_SLOT";
    pub const SMALL_SLOTS: &str = "SMALL_SLOTS";
    pub const SLOTS: &str = "SLOTS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const SLO_COUNTS: &str = "SLO_COUNTS";
    pub const EVENTS: &str = "EVENTS";
    pub const FILTER_PIDS: &str = "FILTER_PIDS";
    pub const FILTER_COMMS: &str = "FILTER_COMMS";
    pub const FILTER_CGROUPS: &str = "FILTER_CGROUPS";
    pub const GO_START: &str = "GO_START";
    pub const GO_RUNTIME: &str = "GO_RUNTIME";
}

/// Program names (the Rust function names in the eBPF object).
pub mod programs {
    pub const SYS_ENTER: &str = "rw_sys_enter";
    pub const SYS_EXIT: &str = "rw_sys_exit";
    pub const SCHED_FORK: &str = "rw_sched_fork";
    pub const TCP_STATE: &str = "rw_tcp_state";
    pub const TCP_RETRANSMIT: &str = "rw_tcp_retransmit";
    pub const RQ_WAKEUP: &str = "rw_rq_wakeup";
    pub const RQ_WAKEUP_NEW: &str = "rw_rq_wakeup_new";
    pub const RQ_SWITCH: &str = "rw_rq_switch";
    pub const BIO_ISSUE: &str = "rw_bio_issue";
    pub const BIO_COMPLETE: &str = "rw_bio_complete";
    pub const UPROBE_ENTRY: &str = "rw_uprobe_entry";
    pub const UPROBE_RETURN: &str = "rw_uprobe_return";
    pub const GO_ENTRY: &str = "rw_go_entry";
    pub const GO_RETURN: &str = "rw_go_return";
    pub const GO_STW_OTHER: &str = "rw_go_stw_other";
    pub const GO_STW_BEGIN: &str = "rw_go_stw_begin";
    pub const GO_STW_END: &str = "rw_go_stw_end";
    pub const GO_GC_START: &str = "rw_go_gc_start";
    pub const GO_GC_DONE: &str = "rw_go_gc_done";
}

/// Read-only globals the loader sets before the verifier sees the program,
/// so disabled features cost nothing at run time.
pub mod globals {
    /// `u32`: the agent's own tgid, never observed (it would observe itself).
    pub const SELF_TGID: &str = "RW_SELF_TGID";
    /// `u32`: bit set of [`super::FILTER_PID`] | [`super::FILTER_COMM`] | [`super::FILTER_CGROUP`].
    pub const FILTER_FLAGS: &str = "RW_FILTER_FLAGS";
    /// `u64`: keep one event in N (0 or 1 keeps all).
    pub const SAMPLE_EVERY: &str = "RW_SAMPLE_EVERY";
    /// `u32`: one of the `EXPORT_*` policies.
    pub const EXPORT: &str = "RW_EXPORT";
    /// `u64`: latency above which `EXPORT_SLOWER_THAN` exports an event.
    pub const SLOWER_THAN_NS: &str = "RW_SLOWER_THAN_NS";
    /// [`super::Thresholds`]: exact SLO counters to keep.
    pub const THRESHOLDS: &str = "RW_THRESHOLDS";
    /// [`super::KernelOffsets`]: struct field offsets read from kernel BTF.
    pub const OFFSETS: &str = "RW_OFFSETS";
    /// `u64`: `maxSeries`, the histogram slots handed out to series (see
    /// [`super::OVERFLOW_SLOT`]).
    pub const MAX_SERIES: &str = "RW_MAX_SERIES";
    /// `u64`: CPUs the `HIST` map is laid out for (possible CPUs); a
    /// series' histogram on a CPU is at `slot * HIST_CPUS + cpu`.
    pub const HIST_CPUS: &str = "RW_HIST_CPUS";
}

/// Filter flag: only tgids in `FILTER_PIDS` are observed.
pub const FILTER_PID: u32 = 1;
/// Filter flag: only comms in `FILTER_COMMS` are observed.
pub const FILTER_COMM: u32 = 2;
/// Filter flag: only tasks (or sockets) in a cgroup of `FILTER_CGROUPS`, or
/// below one, are observed.
pub const FILTER_CGROUP: u32 = 4;

/// Export policies (`RW_EXPORT`).
pub const EXPORT_NONE: u32 = 0;
pub const EXPORT_SLOWER_THAN: u32 = 1;
pub const EXPORT_ERRORS: u32 = 2;
pub const EXPORT_ALL: u32 = 3;

/// The series key of the aggregation path: what one histogram is kept for.
///
/// `id` is kind-specific (syscall number; destination port; device and
/// operation); `addr` holds an address where the kind keys by one
/// (`tcpRetransmit`: the destination, IPv4 in the first 4 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesKey {
    pub id: u64,
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<SeriesKey>() == 24);

/// The series that collects events once `maxSeries` series exist.
pub const OVERFLOW_SERIES: SeriesKey = SeriesKey {
    id: u64::MAX,
    addr: [0xff; 16],
};

/// The histogram slot of [`OVERFLOW_SERIES`]. Series get slots `1..=maxSeries`
/// in the order they are first seen; `NEXT_SLOT[0]` counts the slots handed
/// out (it may run past `maxSeries` by the CPUs that raced for the last one)
/// and `SLOT_KEYS[slot]` names each.
pub const OVERFLOW_SLOT: u32 = 0;

/// Series ids below this whose address is all zero (syscall numbers, the one
/// series of uprobes and the run queue, low ports) find their slot in an
/// array indexed by id, which the verifier inlines; other keys go through a
/// hash map.
pub const SMALL_SERIES_IDS: u32 = 1024;

/// The ring's fill is queried after one delivered record in this many on
/// each CPU (a helper call per record otherwise), so the high-water mark
/// can trail the true peak by up to `HIGH_WATER_EVERY - 1` records per CPU.
pub const HIGH_WATER_EVERY: u64 = 64;

/// `blockIO` series id: device number and operation.
#[inline(always)]
pub const fn block_series_id(major: u32, minor: u32, op: u32) -> u64 {
    ((major as u64) << 40) | ((minor as u64 & 0xffff_ffff) << 8) | (op as u64 & 0xff)
}

/// `tcpRetransmit` series id: address family and destination port.
#[inline(always)]
pub const fn retransmit_series_id(family: u16, dport: u16) -> u64 {
    ((family as u64) << 16) | dport as u64
}

/// Start of an in-flight event paired through task storage (syscalls,
/// uprobes, run-queue waits).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallStart {
    /// `bpf_ktime_get_ns()` at the start; 0 when nothing is in flight.
    pub ts_ns: u64,
    /// Syscall number seen at enter.
    pub nr: u32,
    /// [`START_FORKED`] while a new task has not yet returned from the
    /// `clone`/`fork` its parent made.
    pub flags: u32,
}

/// `SyscallStart::flags`: the task was just forked. Its first `sys_exit` is
/// the child's return from its parent's `clone`, not a syscall of its own,
/// so it is neither an event nor a loss.
pub const START_FORKED: u32 = 1;
const _: () = assert!(core::mem::size_of::<SyscallStart>() == 16);

/// Calls of one Go function in flight on one goroutine, deepest last.
pub const GO_FRAMES: usize = 8;

/// Key of [`GoFrames`]: the process and the goroutine (its `g` pointer,
/// which Go keeps in R14 on amd64 from Go 1.17, whatever thread runs it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GoKey {
    pub tgid: u32,
    pub _pad: u32,
    pub g: u64,
}
const _: () = assert!(core::mem::size_of::<GoKey>() == 16);

/// One timed call of a Go function: its frame, as the distance from the
/// top of the goroutine's stack (`g.stack.hi`) to the return address.
/// That distance survives Go copying the stack to grow it, which moves
/// every address; recursion gives each call its own frame.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoFrame {
    pub depth: u64,
    /// `bpf_ktime_get_ns()` at entry; 0: slot free.
    pub ts_ns: u64,
}

/// The timed calls in flight on one goroutine ([`GoKey`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoFrames {
    pub frames: [GoFrame; GO_FRAMES],
}
const _: () = assert!(core::mem::size_of::<GoFrames>() == 16 * GO_FRAMES);

/// `goRuntime` series ids: a stop-the-world pause of the garbage collector,
/// one for anything else (`ReadMemStats`, `GOMAXPROCS`, traces...), and a
/// whole GC cycle (sweep termination to the end of mark termination). The
/// series key's `addr` holds the process id, so each process has its own.
pub const GO_SERIES_GC_PAUSE: u64 = 1;
pub const GO_SERIES_STW_OTHER: u64 = 2;
pub const GO_SERIES_GC_CYCLE: u64 = 3;

/// The Go runtime's state in one process (`GO_RUNTIME`, keyed by tgid).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoRuntimeState {
    /// Start of the stop-the-world in progress; 0: none.
    pub stw_ts_ns: u64,
    /// Start of the GC cycle in progress; 0: none.
    pub cycle_ts_ns: u64,
    /// Thread that entered `stopTheWorld` (a non-GC stop) and has not yet
    /// stopped the world; 0: none.
    pub other_tid: u32,
    /// The stop in progress is not the collector's.
    pub stw_other: u32,
    /// Mark termination ran: the stop in progress ends the cycle.
    pub cycle_ending: u32,
    /// `gcStart` reset the mark state before stopping the world (Go
    /// 1.17–1.19 do it first): the next GC stop begins the cycle.
    pub cycle_pending: u32,
}
const _: () = assert!(core::mem::size_of::<GoRuntimeState>() == 32);

/// Start of an event paired by kernel object (a socket, a block request):
/// the task that started it, since the end runs in another context.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ObjStart {
    pub ts_ns: u64,
    pub pid_tgid: u64,
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<ObjStart>() == 40);

/// One exported event, as written to the ring buffer. Fixed size for every
/// kind, so one decoder reads them all.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns()` at the end of the event (boot-relative).
    pub ts_ns: u64,
    /// Latency (0 for kinds without one).
    pub latency_ns: u64,
    /// cgroup v2 id of the task (or socket) the event belongs to.
    pub cgroup_id: u64,
    /// The series (see [`SeriesKey`]).
    pub series: SeriesKey,
    /// Kind-specific value: syscall return value, request bytes, errno.
    pub value: i64,
    /// Thread id and process id (0 when no task is known).
    pub pid: u32,
    pub tgid: u32,
    pub comm: [u8; COMM_LEN],
    /// [`EVENT_ERROR`].
    pub flags: u32,
    /// Layout version, [`EVENT_MAGIC`]: a record without it is corrupt.
    pub magic: u32,
}
const _: () = assert!(core::mem::size_of::<Event>() == 88);

/// `Event::flags`: the event failed (error return, failed connect, I/O error).
pub const EVENT_ERROR: u32 = 1;
/// `Event::magic` of this layout.
pub const EVENT_MAGIC: u32 = 0x5257_4531; // "RWE1"

/// Exact SLO threshold slots per probe.
pub const MAX_THRESHOLDS: usize = 4;
/// Series one threshold may be narrowed to.
pub const MAX_THRESHOLD_SERIES: usize = 8;
/// `ThresholdSlot::mode`: slot unused.
pub const THRESHOLD_OFF: u32 = 0;
/// `ThresholdSlot::mode`: good = latency ≤ `latency_ns`.
pub const THRESHOLD_LATENCY: u32 = 1;
/// `ThresholdSlot::mode`: good = the event did not fail.
pub const THRESHOLD_ERRORS: u32 = 2;

/// One SLO's exact comparison, evaluated in the kernel on every paired event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThresholdSlot {
    pub latency_ns: u64,
    pub mode: u32,
    /// How many of `series` apply; 0 counts every series.
    pub nseries: u32,
    /// Series ids ([`SeriesKey::id`]) this slot counts.
    pub series: [u64; MAX_THRESHOLD_SERIES],
}

/// The `RW_THRESHOLDS` global.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Thresholds {
    pub slots: [ThresholdSlot; MAX_THRESHOLDS],
}

/// Per-CPU good/total counts of the threshold slots (`SLO_COUNTS[0]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SloCounts {
    pub good: [u64; MAX_THRESHOLDS],
    pub total: [u64; MAX_THRESHOLDS],
}

/// Byte offsets of kernel struct fields, read by the agent from the running
/// kernel's BTF (the job CO-RE relocations do for C programs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_comm: u32,
    pub task_cgroups: u32,
    pub css_set_dfl_cgrp: u32,
    pub cgroup_kn: u32,
    pub cgroup_level: u32,
    pub cgroup_ancestors: u32,
    pub kernfs_node_id: u32,
    pub sk_dport: u32,
    pub sk_daddr: u32,
    pub sk_v6_daddr: u32,
    pub sk_family: u32,
    pub sk_protocol: u32,
    pub sk_cgroup: u32,
    pub rq_q: u32,
    pub rq_cmd_flags: u32,
    pub rq_data_len: u32,
    pub q_disk: u32,
    pub disk_major: u32,
    pub disk_first_minor: u32,
    pub _pad: u32,
}

/// Per-probe loss accounting, one per CPU, summed by user space.
///
/// Identities (exact, tested):
/// `observed = aggregated + sampled_out + pairing_dropped` and
/// `exported = delivered + ringbuf_dropped`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProbeCounters {
    /// Completed events that passed the filters (counted at the end of the event).
    pub observed: u64,
    /// Events added to a histogram.
    pub aggregated: u64,
    /// Events left out by in-kernel sampling.
    pub sampled_out: u64,
    /// Events whose start was never stored or never seen (start map full,
    /// probe attached mid-call, mismatched syscall number).
    pub pairing_dropped: u64,
    /// Events chosen for the event path.
    pub exported: u64,
    /// Exported events written to the ring buffer.
    pub delivered: u64,
    /// Exported events lost because the ring buffer reserve failed.
    pub ringbuf_dropped: u64,
    /// Diagnostic: starts that could not be stored because the start map was full.
    /// Their exits land in `pairing_dropped`; not part of an identity.
    pub start_map_full: u64,
    /// Diagnostic: aggregated events that landed in the overflow series.
    pub series_folded: u64,
    /// Diagnostic: most bytes seen waiting in the ring buffer right after a
    /// submit on this CPU, sampled every [`HIGH_WATER_EVERY`] records.
    pub ringbuf_high_water: u64,
    /// Sampling state: events seen by the sampler on this CPU.
    pub sample_tick: u64,
    pub _reserved: [u64; 5],
}
const _: () = assert!(core::mem::size_of::<ProbeCounters>() == 128);

/// Words of a histogram's dirty bitmap: one bit per bucket.
pub const HIST_DIRTY_WORDS: usize = HIST_BUCKETS / 64;

/// One CPU's latency histogram of one series: an inbox the agent empties.
///
/// The `HIST` map holds one per series slot and possible CPU, at index
/// `slot * cpus + cpu`, in memory the agent maps (`BPF_F_MMAPABLE`). The
/// kernel adds to `buckets`, `sum_ns` and `errors`, then marks the bucket in
/// `dirty` and its word in `words`. The agent takes (swaps to zero) only
/// the marked words and buckets, so a read costs what changed since the
/// last one, not the whole map; a CPU and series with no new events costs
/// one load of `words`.
///
/// Exactness: every update is an atomic read-modify-write, and the marks
/// use full-barrier (fetch) atomics after the counts. An agent that sees a
/// mark therefore takes the counts behind it; counts added after it took a
/// bucket set the mark again and are taken by the next read. Nothing is
/// lost or taken twice.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LatencyHist {
    /// Bit `w`: `dirty[w]` has marks.
    pub words: u64,
    /// Sum of latencies not yet taken, for the mean.
    pub sum_ns: u64,
    /// Largest latency seen on this CPU (never taken).
    pub max_ns: u64,
    /// Events whose result was an error (negative return value), not yet taken.
    pub errors: u64,
    /// Bit `b % 64` of word `b / 64`: bucket `b` has counts not yet taken.
    pub dirty: [u64; HIST_DIRTY_WORDS],
    /// Log-linear buckets, see [`hist`]: counts not yet taken.
    pub buckets: [u64; HIST_BUCKETS],
}
const _: () = assert!(HIST_DIRTY_WORDS <= 64);
const _: () =
    assert!(core::mem::size_of::<LatencyHist>() == 32 + HIST_DIRTY_WORDS * 8 + HIST_BUCKETS * 8);

impl Default for LatencyHist {
    fn default() -> Self {
        Self {
            words: 0,
            sum_ns: 0,
            max_ns: 0,
            errors: 0,
            dirty: [0; HIST_DIRTY_WORDS],
            buckets: [0; HIST_BUCKETS],
        }
    }
}

// SAFETY: all types are #[repr(C)], Copy, made only of integers, with no
// padding (checked by the size assertions above), so any bit pattern is valid.
#[cfg(feature = "user")]
unsafe impl aya::Pod for SyscallStart {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for ProbeCounters {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for LatencyHist {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for SeriesKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for ObjStart {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for Event {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for Thresholds {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for SloCounts {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for KernelOffsets {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for GoKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for GoFrames {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for GoRuntimeState {}
