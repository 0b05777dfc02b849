//! The `runqueue` probe: how long a runnable task waits for a CPU, from
//! `sched_wakeup`/`sched_wakeup_new` (or being preempted while runnable) to
//! `sched_switch` onto a CPU. The wait is stored in the task's own storage.

use core::ffi::c_void;

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::btf_tracepoint, programs::BtfTracePointContext};
use ringwarden_ebpf_common::SeriesKey;

use crate::common::{
    TASK_START, Who, counters, finish, pairing_lost, start_map_full, wanted_task,
};

/// `TASK_RUNNING`: a task switched out in this state was preempted and is
/// still runnable, so its wait starts now.
const TASK_RUNNING: u32 = 0;

#[inline(always)]
fn enqueue(task: *mut c_void) {
    if task.is_null() || !wanted_task(task as u64) {
        return;
    }
    match TASK_START.of_or_create(task) {
        // SAFETY: non-null pointer to the task's value.
        Some(s) => unsafe { (*s).ts_ns = bpf_ktime_get_ns() },
        None => {
            // The wait cannot be timed; it is an observed event all the same.
            if let Some(c) = counters() {
                start_map_full(c);
                pairing_lost(c);
            }
        }
    }
}

#[btf_tracepoint(function = "sched_wakeup")]
pub fn rw_rq_wakeup(ctx: BtfTracePointContext) -> i32 {
    // sched_wakeup(struct task_struct *p)
    enqueue(ctx.arg(0));
    0
}

#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn rw_rq_wakeup_new(ctx: BtfTracePointContext) -> i32 {
    enqueue(ctx.arg(0));
    0
}

#[btf_tracepoint(function = "sched_switch")]
pub fn rw_rq_switch(ctx: BtfTracePointContext) -> i32 {
    // sched_switch(bool preempt, struct task_struct *prev,
    //              struct task_struct *next, unsigned int prev_state)
    let prev: *mut c_void = ctx.arg(1);
    let next: *mut c_void = ctx.arg(2);
    let prev_state: u32 = ctx.arg(3);
    if prev_state == TASK_RUNNING {
        enqueue(prev);
    }
    if next.is_null() {
        return 0;
    }
    // Only tasks whose wait was stored are timed: a task running without a
    // recorded wakeup was runnable before the probe attached (or is the
    // idle task), which is not an event of this probe.
    let Some(s) = TASK_START.of(next) else {
        return 0;
    };
    // SAFETY: non-null pointer to next's value.
    let ts = unsafe {
        let ts = (*s).ts_ns;
        (*s).ts_ns = 0;
        ts
    };
    if ts == 0 {
        return 0;
    }
    let Some(c) = counters() else {
        return 0;
    };
    // SAFETY: reads the monotonic clock, no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let key = SeriesKey::default();
    let task = next as u64;
    finish(c, &key, now.saturating_sub(ts), false, 0, now, || Who::task(task));
    0
}
