//! The `syscalls` probe: `raw_syscalls` enter/exit through BTF tracepoints,
//! one series per syscall number, error returns counted.
//!
//! Both ends run on every system call of the machine, so they read the
//! current task through its BTF pointer (plain loads) rather than through
//! helpers, each of which costs tens of ns.

use core::ffi::c_void;

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::btf_tracepoint, programs::BtfTracePointContext};
use ringwarden_ebpf_common::{START_FORKED, SeriesKey};

use crate::common::{
    TASK_START, Who, counters, current_task, field, finish, global, offsets, pairing_lost,
    start_map_full, wanted_current,
};

/// The thread-group id of the current task (`task` from [`current_task`]).
#[inline(always)]
fn tgid_of(task: u64) -> u32 {
    // SAFETY: a trusted task pointer and the offset of its `tgid`.
    unsafe { field(task, global(&offsets().task_tgid)) }
}

#[btf_tracepoint(function = "sys_enter")]
pub fn rw_sys_enter(ctx: BtfTracePointContext) -> i32 {
    let task = current_task();
    if !wanted_current(tgid_of(task)) {
        return 0;
    }
    // sys_enter(struct pt_regs *regs, long id)
    let nr: i64 = ctx.arg(1);
    match TASK_START.of_or_create(task as *mut c_void) {
        Some(start) => {
            // SAFETY: non-null pointer to this task's value, returned by the helper.
            unsafe {
                (*start).nr = nr as u32;
                (*start).flags = 0;
                (*start).ts_ns = bpf_ktime_get_ns();
            }
        }
        None => {
            if let Some(c) = counters() {
                start_map_full(c);
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
    if let Some(s) = TASK_START.of_or_create(child) {
        // SAFETY: non-null pointer to the child's value.
        unsafe { (*s).flags = START_FORKED };
    }
    0
}

#[btf_tracepoint(function = "sys_exit")]
pub fn rw_sys_exit(ctx: BtfTracePointContext) -> i32 {
    // SAFETY: reads the monotonic clock, no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(c) = counters() else {
        return 0;
    };
    let task = current_task();
    // Take this task's start, if sys_enter stored one: a stored start means
    // the filters already passed, so the fast path needs no filter check.
    let mut start = None;
    if let Some(s) = TASK_START.of(task as *mut c_void) {
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
        if wanted_current(tgid_of(task)) {
            pairing_lost(c);
        }
        return 0;
    };
    // sys_exit(struct pt_regs *regs, long ret)
    let ret: i64 = ctx.arg(1);
    let key = SeriesKey {
        id: nr as u64,
        addr: [0; 16],
    };
    finish(
        c,
        &key,
        now.saturating_sub(ts),
        ret < 0,
        ret,
        now,
        Who::CurrentTask(task),
    );
    0
}
