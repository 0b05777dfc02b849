//! Go programs: function latency (`uprobe` on a Go binary) and the Go
//! runtime's own pauses (`goRuntime`).
//!
//! Never a uretprobe: it swaps the return address on the goroutine's
//! stack for a trampoline, and Go copies stacks to grow them, so the copy
//! returns into garbage. Instead the agent attaches plain uprobes at the
//! function's entry and at each of its `RET` instructions
//! (`ringwarden_gobin`), and calls pair by goroutine — the `g` pointer Go
//! keeps in R14 from Go 1.17 on amd64 — never by thread, since a goroutine
//! may block and resume on another thread mid-call.
//!
//! Within a goroutine a call is known by its frame's distance from the top
//! of the goroutine stack (`g.stack.hi - SP`): at the entry probe, which
//! the agent places after the stack-growth check, and at `RET`, SP points
//! at the same return address, and a stack copy keeps that distance. So
//! recursion pairs level by level, and a call that unwinds without
//! returning (a recovered panic, `runtime.Goexit`) is found — and counted
//! as a pairing loss — as soon as that goroutine enters or leaves the
//! function at the same depth or above.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{map, uprobe},
    maps::HashMap,
    programs::ProbeContext,
};
use ringwarden_ebpf_common::{
    GO_FRAMES, GO_SERIES_GC_CYCLE, GO_SERIES_GC_PAUSE, GO_SERIES_STW_OTHER, GoFrame, GoFrames,
    GoKey, GoRuntimeState, ProbeCounters, SeriesKey,
};

use crate::common::{Who, counters, finish, pairing_lost, start_map_full, wanted_current};

/// Timed calls in flight, per goroutine. The loader sizes it; an entry is
/// removed when its goroutine has no call in flight.
#[map(name = "GO_START")]
static GO_START: HashMap<GoKey, GoFrames> = HashMap::with_max_entries(1, 0);

/// Per traced process: the stop-the-world and GC cycle in progress.
#[map(name = "GO_RUNTIME")]
static GO_RUNTIME: HashMap<u32, GoRuntimeState> = HashMap::with_max_entries(1, 0);

/// Offset of `stack.hi` in Go's `runtime.g` (`stack` is its first field,
/// `{lo, hi uintptr}`), unchanged since Go 1.0.
const G_STACK_HI: u64 = 8;

/// The goroutine running the probed instruction and the depth of the
/// return address SP points at. `None` where R14 holds no goroutine.
#[inline(always)]
fn goroutine_frame(ctx: &ProbeContext, tgid: u32) -> Option<(GoKey, u64)> {
    // SAFETY: `regs` is the probe's register snapshot; the verifier checks
    // the field loads against the context's size.
    #[cfg(bpf_target_arch = "x86_64")]
    let (g, sp) = unsafe { ((*ctx.regs).r14, (*ctx.regs).rsp) };
    #[cfg(not(bpf_target_arch = "x86_64"))]
    let (g, sp) = {
        let _ = ctx;
        (0u64, 0u64)
    };
    if g == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_user checks the address; a fault yields Err.
    let hi: u64 = unsafe { bpf_probe_read_user((g + G_STACK_HI) as *const u64) }.ok()?;
    if hi < sp {
        return None;
    }
    Some((GoKey { tgid, _pad: 0, g }, hi - sp))
}

#[uprobe]
pub fn rw_go_entry(ctx: ProbeContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !wanted_current(tgid) {
        return 0;
    }
    let Some(c) = counters() else {
        return 0;
    };
    let Some((key, depth)) = goroutine_frame(&ctx, tgid) else {
        // Its returns find no frame either and count the loss.
        return 0;
    };
    // SAFETY: reads the monotonic clock, no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let frames = match GO_START.get_ptr_mut(key) {
        Some(f) => f,
        None => {
            if GO_START
                .insert(key, GoFrames::default(), BPF_NOEXIST.into())
                .is_err()
            {
                start_map_full(c);
                return 0;
            }
            match GO_START.get_ptr_mut(key) {
                Some(f) => f,
                None => return 0,
            }
        }
    };
    let mut free = GO_FRAMES;
    for i in 0..GO_FRAMES {
        // SAFETY: non-null map value pointer; only this goroutine, which
        // runs on one CPU at a time, writes it.
        let f = unsafe { &mut (*frames).frames[i] };
        if f.ts_ns != 0 && f.depth >= depth {
            // A live outer call sits nearer the top of the stack; this one
            // unwound without returning.
            f.ts_ns = 0;
            pairing_lost(c);
        }
        if f.ts_ns == 0 && free == GO_FRAMES {
            free = i;
        }
    }
    if free < GO_FRAMES {
        // SAFETY: as above; `free` < GO_FRAMES.
        unsafe { (*frames).frames[free] = GoFrame { depth, ts_ns: now } };
    } else {
        // Deeper recursion than the frames held: the return counts the loss.
        start_map_full(c);
    }
    0
}

#[uprobe]
pub fn rw_go_return(ctx: ProbeContext) -> u32 {
    // SAFETY: reads the monotonic clock, no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(c) = counters() else {
        return 0;
    };
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let frames = goroutine_frame(&ctx, tgid)
        .and_then(|(key, depth)| GO_START.get_ptr_mut(key).map(|f| (key, depth, f)));
    let Some((key, depth, frames)) = frames else {
        if wanted_current(tgid) {
            pairing_lost(c);
        }
        return 0;
    };
    let mut ts = 0;
    let mut live = 0;
    for i in 0..GO_FRAMES {
        // SAFETY: non-null map value pointer, written by this goroutine only.
        let f = unsafe { &mut (*frames).frames[i] };
        if f.ts_ns == 0 {
            continue;
        }
        if f.depth == depth {
            ts = f.ts_ns;
            f.ts_ns = 0;
        } else if f.depth > depth {
            // Deeper calls that unwound without returning.
            f.ts_ns = 0;
            pairing_lost(c);
        } else {
            live += 1;
        }
    }
    if live == 0 {
        let _ = GO_START.remove(key);
    }
    // Frames are stored only for wanted processes, and the key names the
    // process: no filter check needed here.
    if ts == 0 {
        pairing_lost(c);
        return 0;
    }
    // The function's first result (Go's register ABI returns it in RAX).
    #[cfg(bpf_target_arch = "x86_64")]
    // SAFETY: as in `goroutine_frame`.
    let value = unsafe { (*ctx.regs).rax } as i64;
    #[cfg(not(bpf_target_arch = "x86_64"))]
    let value = 0;
    finish(
        c,
        &SeriesKey::default(),
        now.saturating_sub(ts),
        false,
        value,
        now,
        Who::Current,
    );
    0
}

/// This process's runtime state, created on first use; `None` (counted)
/// when the map is full.
#[inline(always)]
fn runtime_state(c: *mut ProbeCounters, tgid: u32) -> Option<*mut GoRuntimeState> {
    if let Some(s) = GO_RUNTIME.get_ptr_mut(tgid) {
        return Some(s);
    }
    if GO_RUNTIME
        .insert(tgid, GoRuntimeState::default(), BPF_NOEXIST.into())
        .is_err()
    {
        start_map_full(c);
        return None;
    }
    GO_RUNTIME.get_ptr_mut(tgid)
}

/// The series of a runtime event of process `tgid`.
#[inline(always)]
fn runtime_series(id: u64, tgid: u32) -> SeriesKey {
    let mut key = SeriesKey { id, addr: [0; 16] };
    let t = tgid.to_le_bytes();
    key.addr[0] = t[0];
    key.addr[1] = t[1];
    key.addr[2] = t[2];
    key.addr[3] = t[3];
    key
}

/// `runtime.stopTheWorld`'s closure, run on the system stack of the very
/// thread that then stops the world: the stop that follows on this thread
/// is not the collector's. (A flag set at `stopTheWorld` itself could be
/// taken by a GC stop while its caller waits for the world semaphore.)
#[uprobe]
pub fn rw_go_stw_other(_ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !wanted_current(tgid) {
        return 0;
    }
    let Some(c) = counters() else {
        return 0;
    };
    if let Some(s) = runtime_state(c, tgid) {
        // SAFETY: non-null map value pointer.
        unsafe { (*s).other_tid = pid_tgid as u32 };
    }
    0
}

/// `runtime.stopTheWorldWithSema`: every stop of the world starts here,
/// one at a time per process (the world semaphore is held).
#[uprobe]
pub fn rw_go_stw_begin(_ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !wanted_current(tgid) {
        return 0;
    }
    let Some(c) = counters() else {
        return 0;
    };
    let Some(s) = runtime_state(c, tgid) else {
        return 0;
    };
    // SAFETY: non-null map value pointer; stops are serialised per process.
    unsafe {
        if (*s).stw_ts_ns != 0 {
            // The previous stop's end was never seen.
            pairing_lost(c);
        }
        let now = bpf_ktime_get_ns();
        let other = (*s).other_tid != 0 && (*s).other_tid == pid_tgid as u32;
        (*s).stw_ts_ns = now;
        (*s).stw_other = other as u32;
        (*s).other_tid = 0;
        if !other && (*s).cycle_pending != 0 {
            (*s).cycle_ts_ns = now;
            (*s).cycle_pending = 0;
        }
    }
    0
}

/// `runtime.gcResetMarkState`, which `gcStart` calls once per cycle, just
/// before the sweep-termination stop (or inside it): the cycle begins with
/// that stop.
#[uprobe]
pub fn rw_go_gc_start(_ctx: ProbeContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !wanted_current(tgid) {
        return 0;
    }
    let Some(c) = counters() else {
        return 0;
    };
    let Some(s) = runtime_state(c, tgid) else {
        return 0;
    };
    // SAFETY: non-null map value pointer; GC cycles are serialised.
    unsafe {
        if (*s).cycle_ts_ns != 0 || (*s).cycle_pending != 0 {
            // The previous cycle's end was never seen.
            pairing_lost(c);
        }
        (*s).cycle_ending = 0;
        if (*s).stw_ts_ns != 0 {
            (*s).cycle_ts_ns = (*s).stw_ts_ns;
            (*s).cycle_pending = 0;
        } else {
            (*s).cycle_ts_ns = 0;
            (*s).cycle_pending = 1;
        }
    }
    0
}

/// `runtime.gcMarkTermination`: the cycle ends with the stop in progress.
#[uprobe]
pub fn rw_go_gc_done(_ctx: ProbeContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !wanted_current(tgid) {
        return 0;
    }
    let Some(c) = counters() else {
        return 0;
    };
    let Some(s) = runtime_state(c, tgid) else {
        return 0;
    };
    // SAFETY: non-null map value pointer.
    unsafe {
        if (*s).cycle_ts_ns == 0 {
            // The cycle began before the probe attached (or its start was
            // counted lost).
            pairing_lost(c);
        } else {
            (*s).cycle_ending = 1;
        }
    }
    0
}

/// In `runtime.startTheWorldWithSema`, where the runtime reads its clock
/// for the pause (or at each `RET`): the world runs again.
#[uprobe]
pub fn rw_go_stw_end(_ctx: ProbeContext) -> u32 {
    // SAFETY: reads the monotonic clock, no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(c) = counters() else {
        return 0;
    };
    let Some(s) = GO_RUNTIME.get_ptr_mut(tgid) else {
        if wanted_current(tgid) {
            pairing_lost(c);
        }
        return 0;
    };
    // SAFETY: non-null map value pointer; stops are serialised per process.
    let (stw, other, cycle, ending) = unsafe {
        let v = (
            (*s).stw_ts_ns,
            (*s).stw_other,
            (*s).cycle_ts_ns,
            (*s).cycle_ending,
        );
        (*s).stw_ts_ns = 0;
        (*s).stw_other = 0;
        if v.3 != 0 {
            (*s).cycle_ts_ns = 0;
            (*s).cycle_ending = 0;
        }
        v
    };
    if stw == 0 {
        pairing_lost(c);
    } else {
        let id = if other != 0 {
            GO_SERIES_STW_OTHER
        } else {
            GO_SERIES_GC_PAUSE
        };
        finish(
            c,
            &runtime_series(id, tgid),
            now.saturating_sub(stw),
            false,
            0,
            now,
            Who::Current,
        );
    }
    if ending != 0 && cycle != 0 {
        finish(
            c,
            &runtime_series(GO_SERIES_GC_CYCLE, tgid),
            now.saturating_sub(cycle),
            false,
            0,
            now,
            Who::Current,
        );
    }
    0
}
