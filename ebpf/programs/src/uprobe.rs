//! The `uprobe` probe: latency of one user-space function, from its entry
//! (uprobe) to its return (uretprobe), paired per thread.
//!
//! The agent refuses Go binaries before attaching: Go moves goroutine
//! stacks, which a uretprobe's return-address trampoline corrupts.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use ringwarden_ebpf_common::SeriesKey;

use crate::common::{
    TASK_START, Who, counters, finish, pairing_lost, start_map_full, wanted_current,
};

#[uprobe]
pub fn rw_uprobe_entry(_ctx: ProbeContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !wanted_current(tgid) {
        return 0;
    }
    match TASK_START.current_or_create() {
        // SAFETY: non-null pointer to this task's value. A recursive call
        // restarts the clock: the innermost call is timed.
        Some(s) => unsafe { (*s).ts_ns = bpf_ktime_get_ns() },
        None => {
            if let Some(c) = counters() {
                start_map_full(c);
            }
        }
    }
    0
}

#[uretprobe]
pub fn rw_uprobe_return(ctx: RetProbeContext) -> u32 {
    // SAFETY: reads the monotonic clock, no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(c) = counters() else {
        return 0;
    };
    let mut ts = 0;
    if let Some(s) = TASK_START.current() {
        // SAFETY: non-null pointer to this task's value.
        unsafe {
            ts = (*s).ts_ns;
            (*s).ts_ns = 0;
        }
    }
    if ts == 0 {
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        if wanted_current(tgid) {
            pairing_lost(c);
        }
        return 0;
    }
    let ret: i64 = ctx.ret();
    let key = SeriesKey::default();
    finish(
        c,
        &key,
        now.saturating_sub(ts),
        false,
        ret,
        now,
        Who::Current,
    );
    0
}
