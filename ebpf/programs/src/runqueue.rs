//! The `runqueue` probe: how long a runnable task waits for a CPU, from
//! `sched_wakeup`/`sched_wakeup_new` (or being preempted while runnable) to
//! `sched_switch` onto a CPU. The wait's start is kept in a hash map by
//! thread id: task-local storage would be cheaper, but its helpers give up
//! (return NULL) when another task-storage operation is in progress on the
//! CPU, and inside `sched_switch` that silently loses switch-ins.

use core::ffi::c_void;

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::btf_tracepoint, programs::BtfTracePointContext};
use ringwarden_ebpf_common::{ObjStart, SeriesKey};

use crate::common::{
    OBJ_START, Who, counters, finish, global, offsets, pairing_lost, read, start_map_full,
    wanted_task,
};

#[inline(always)]
fn tid(task: u64) -> u64 {
    read::<u32>(task, global(&offsets().task_pid)) as u64
}

/// `TASK_RUNNING`: a task switched out in this state is still runnable, so
/// its wait starts now.
const TASK_RUNNING: u32 = 0;

#[inline(always)]
fn enqueue(task: *mut c_void) {
    if task.is_null() || !wanted_task(task as u64) {
        return;
    }
    let start = ObjStart {
        // SAFETY: reads the monotonic clock, no preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        ..Default::default()
    };
    match OBJ_START.insert(tid(task as u64), start, 0) {
        Ok(()) => {}
        Err(_) => {
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
    let preempt: u64 = ctx.arg(0);
    let prev: *mut c_void = ctx.arg(1);
    let next: *mut c_void = ctx.arg(2);
    let prev_state: u32 = ctx.arg(3);
    // A preempted task stays queued even if it was about to sleep (its
    // state is already non-running); the scheduler only dequeues on a
    // voluntary switch out of a non-running state.
    if preempt & 0xff != 0 || prev_state == TASK_RUNNING {
        enqueue(prev);
    }
    if next.is_null() {
        return 0;
    }
    // Only tasks whose wait was stored are timed: a task running without a
    // recorded wakeup was runnable before the probe attached (or is the
    // idle task), which is not an event of this probe.
    let key = tid(next as u64);
    if key == 0 {
        return 0; // the idle task
    }
    // SAFETY: the value is copied out before the entry is removed.
    let Some(ts) = (unsafe { OBJ_START.get(key) }).map(|s| s.ts_ns) else {
        return 0;
    };
    let _ = OBJ_START.remove(key);
    let Some(c) = counters() else {
        return 0;
    };
    // SAFETY: reads the monotonic clock, no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let task = next as u64;
    let series = SeriesKey::default();
    finish(
        c,
        &series,
        now.saturating_sub(ts),
        false,
        0,
        now,
        Who::Task(task),
    );
    0
}
