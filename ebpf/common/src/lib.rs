//! Kernel ↔ user-space contract: `#[repr(C)]` map values, map names and
//! capacities, and the log-linear bucket math both sides must agree on.
//!
//! `no_std`, no allocation, fixed-width fields and no implicit padding, so a
//! layout change shows up as a compile error here rather than as garbage in a
//! map read.
#![no_std]

pub mod hist;

pub use hist::{HIST_BUCKETS, HIST_SUB_BITS, bucket_index, bucket_lower, bucket_upper};

/// Syscall numbers below this get a series of their own; anything else
/// (x32 ABI numbers, `-1` from ptrace tricks) folds into [`SYSCALL_OVERFLOW_SERIES`].
pub const MAX_SYSCALLS: u32 = 512;
/// Series index that collects syscall numbers outside `0..MAX_SYSCALLS`.
pub const SYSCALL_OVERFLOW_SERIES: u32 = MAX_SYSCALLS;
/// Entries of the syscall histogram array: one per syscall number plus overflow.
pub const SYSCALL_SERIES: u32 = MAX_SYSCALLS + 1;

/// Capacity of the pid (tgid) filter set.
pub const FILTER_PIDS_ENTRIES: u32 = 1024;
/// Capacity of the comm filter set.
pub const FILTER_COMMS_ENTRIES: u32 = 256;
/// Length of a task's comm, as the kernel stores it (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// Map names, shared so the loader cannot look up a map the object lacks.
pub mod maps {
    pub const SYS_START: &str = "SYS_START";
    pub const SYS_HIST: &str = "SYS_HIST";
    pub const COUNTERS: &str = "COUNTERS";
    pub const FILTER_PIDS: &str = "FILTER_PIDS";
    pub const FILTER_COMMS: &str = "FILTER_COMMS";
}

/// Program names (the Rust function names in the eBPF object).
pub mod programs {
    pub const SYS_ENTER: &str = "rw_sys_enter";
    pub const SYS_EXIT: &str = "rw_sys_exit";
    pub const SCHED_FORK: &str = "rw_sched_fork";
}

/// Read-only globals the loader sets before the verifier sees the program,
/// so disabled filters cost nothing at run time.
pub mod globals {
    /// `u32`: the agent's own tgid, never observed (it would observe itself).
    pub const SELF_TGID: &str = "RW_SELF_TGID";
    /// `u32`: bit set of [`super::FILTER_PID`] | [`super::FILTER_COMM`].
    pub const FILTER_FLAGS: &str = "RW_FILTER_FLAGS";
}

/// Filter flag: only tgids in `FILTER_PIDS` are observed.
pub const FILTER_PID: u32 = 1;
/// Filter flag: only comms in `FILTER_COMMS` are observed.
pub const FILTER_COMM: u32 = 2;

/// Start of an in-flight syscall, keyed by thread id in `SYS_START`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallStart {
    /// `bpf_ktime_get_ns()` at `sys_enter`.
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
    pub _reserved: [u64; 7],
}
const _: () = assert!(core::mem::size_of::<ProbeCounters>() == 128);

/// A per-CPU latency histogram of one series (for syscalls: one syscall number).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LatencyHist {
    /// Log-linear buckets, see [`hist`].
    pub buckets: [u64; HIST_BUCKETS],
    /// Sum of latencies, for the mean.
    pub sum_ns: u64,
    /// Largest latency seen on this CPU.
    pub max_ns: u64,
    /// Events whose result was an error (negative return value).
    pub errors: u64,
    pub _reserved: u64,
}
const _: () = assert!(core::mem::size_of::<LatencyHist>() == HIST_BUCKETS * 8 + 32);

impl Default for LatencyHist {
    fn default() -> Self {
        Self {
            buckets: [0; HIST_BUCKETS],
            sum_ns: 0,
            max_ns: 0,
            errors: 0,
            _reserved: 0,
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
