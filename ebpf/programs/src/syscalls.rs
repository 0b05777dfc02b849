//! The `syscalls` probe: `raw_syscalls` enter/exit through BTF tracepoints.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{btf_tracepoint, map},
    maps::{HashMap, PerCpuArray},
    programs::BtfTracePointContext,
};
use ringwarden_ebpf_common::{
    COMM_LEN, FILTER_COMM, FILTER_COMMS_ENTRIES, FILTER_PID, FILTER_PIDS_ENTRIES, HIST_BUCKETS,
    LatencyHist, MAX_SYSCALLS, ProbeCounters, START_FORKED, SYSCALL_OVERFLOW_SERIES,
    SYSCALL_SERIES, SyscallStart, bucket_index,
};

use crate::task_storage::TaskStorage;

/// Set by the loader: the agent's own tgid, never observed.
#[unsafe(no_mangle)]
static RW_SELF_TGID: u32 = 0;
/// Set by the loader: which filters are active (`FILTER_PID | FILTER_COMM`).
#[unsafe(no_mangle)]
static RW_FILTER_FLAGS: u32 = 0;

#[unsafe(link_section = ".maps")]
#[unsafe(export_name = "SYS_START")]
static SYS_START: TaskStorage<SyscallStart> = TaskStorage::new();

#[map(name = "SYS_HIST")]
static SYS_HIST: PerCpuArray<LatencyHist> = PerCpuArray::with_max_entries(SYSCALL_SERIES, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<ProbeCounters> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "FILTER_PIDS")]
static FILTER_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(FILTER_PIDS_ENTRIES, 0);

#[map(name = "FILTER_COMMS")]
static FILTER_COMMS: HashMap<[u8; COMM_LEN], u8> =
    HashMap::with_max_entries(FILTER_COMMS_ENTRIES, 0);

#[inline(always)]
fn global(v: &'static u32) -> u32 {
    // SAFETY: a plain read of a loader-patched constant; volatile so the
    // compiler cannot fold the compile-time zero.
    unsafe { core::ptr::read_volatile(v) }
}

/// Whether the current task passes the configured pid/comm filters.
#[inline(always)]
fn wanted(tgid: u32) -> bool {
    if tgid == global(&RW_SELF_TGID) {
        return false;
    }
    let flags = global(&RW_FILTER_FLAGS);
    // SAFETY (both lookups): values are read only for presence.
    if flags & FILTER_PID != 0 && unsafe { FILTER_PIDS.get(tgid) }.is_none() {
        return false;
    }
    if flags & FILTER_COMM != 0 {
        let Ok(comm) = bpf_get_current_comm() else {
            return false;
        };
        if unsafe { FILTER_COMMS.get(comm) }.is_none() {
            return false;
        }
    }
    true
}

/// Adds to a per-CPU counter atomically: on preemptible kernels another
/// program may run on this CPU between a load and a store, and the
/// accounting identities must hold to the last event.
#[inline(always)]
fn add(p: *mut u64, v: u64) {
    // SAFETY: `p` points into a map value the verifier has bounds-checked;
    // map values are 8-byte aligned. The result is unused, so this is a plain
    // `lock xadd` that every BPF CPU version supports.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, v) };
}

#[btf_tracepoint(function = "sys_enter")]
pub fn rw_sys_enter(ctx: BtfTracePointContext) -> i32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !wanted(tgid) {
        return 0;
    }
    // sys_enter(struct pt_regs *regs, long id)
    let nr: i64 = ctx.arg(1);
    match SYS_START.current_or_create() {
        Some(start) => {
            // SAFETY: non-null pointer to this task's value, returned by the helper.
            unsafe {
                (*start).nr = nr as u32;
                (*start).flags = 0;
                (*start).ts_ns = bpf_ktime_get_ns();
            }
        }
        None => {
            if let Some(c) = COUNTERS.get_ptr_mut(0) {
                // SAFETY: non-null map value pointer.
                add(unsafe { &raw mut (*c).start_map_full }, 1);
            }
        }
    }
    0
}

/// Marks every new task so its first `sys_exit` (the return from the
/// parent's `clone`) is not mistaken for a call whose start was lost.
#[btf_tracepoint(function = "sched_process_fork")]
pub fn rw_sched_fork(ctx: BtfTracePointContext) -> i32 {
    // sched_process_fork(struct task_struct *parent, struct task_struct *child)
    let child: *mut core::ffi::c_void = ctx.arg(1);
    if let Some(s) = SYS_START.of_or_create(child) {
        // SAFETY: non-null pointer to the child's value.
        unsafe { (*s).flags = START_FORKED };
    }
    0
}

#[btf_tracepoint(function = "sys_exit")]
pub fn rw_sys_exit(ctx: BtfTracePointContext) -> i32 {
    // SAFETY: reads the monotonic clock, no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(c) = COUNTERS.get_ptr_mut(0) else {
        return 0;
    };
    // Take this task's start, if sys_enter stored one: a stored start means
    // the filters already passed, so the fast path needs no filter check.
    let mut start = None;
    if let Some(s) = SYS_START.current() {
        // SAFETY: non-null pointer to this task's value.
        unsafe {
            let ts = (*s).ts_ns;
            if ts != 0 {
                (*s).ts_ns = 0;
                start = Some(((*s).nr, ts));
            } else if (*s).flags & START_FORKED != 0 {
                // A new task returning from its parent's clone: no event.
                (*s).flags = 0;
                return 0;
            }
        }
    }
    let Some((nr, ts)) = start else {
        // No start: the probe was attached mid-call, or the start could not
        // be stored. Count it only if the task is one we observe.
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        if wanted(tgid) {
            // SAFETY: non-null map value pointer.
            unsafe {
                add(&raw mut (*c).observed, 1);
                add(&raw mut (*c).pairing_dropped, 1);
            }
        }
        return 0;
    };
    // sys_exit(struct pt_regs *regs, long ret)
    let ret: i64 = ctx.arg(1);
    let delta = now.saturating_sub(ts);
    let series = if nr < MAX_SYSCALLS {
        nr
    } else {
        SYSCALL_OVERFLOW_SERIES
    };
    // SAFETY: non-null map value pointers; the bucket index is masked to the
    // array length (a power of two) so the verifier sees it in bounds.
    unsafe {
        add(&raw mut (*c).observed, 1);
        let Some(h) = SYS_HIST.get_ptr_mut(series) else {
            // Unreachable for an in-range index; keep the identity anyway.
            add(&raw mut (*c).pairing_dropped, 1);
            return 0;
        };
        add(&raw mut (*c).aggregated, 1);
        if series == SYSCALL_OVERFLOW_SERIES {
            add(&raw mut (*c).series_folded, 1);
        }
        let b = bucket_index(delta) & (HIST_BUCKETS - 1);
        add(&raw mut (*h).buckets[b], 1);
        add(&raw mut (*h).sum_ns, delta);
        if delta > (*h).max_ns {
            (*h).max_ns = delta;
        }
        if ret < 0 {
            add(&raw mut (*h).errors, 1);
        }
    }
    0
}
