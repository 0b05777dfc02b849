//! What every probe shares: maps, loader-set globals, filters, and the end
//! of an event (exact thresholds, sampling, histogram, export), with the
//! loss counters kept at each step.
//!
//! One object holds every probe kind; the agent loads it once per probe and
//! attaches only that kind's programs, so each probe has its own maps.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_probe_read_kernel, generated::bpf_get_current_task,
    },
    macros::map,
    maps::{HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use ringwarden_ebpf_common::{
    COMM_LEN, DEFAULT_START_ENTRIES, EVENT_ERROR, EVENT_MAGIC, EXPORT_ALL, EXPORT_ERRORS,
    EXPORT_SLOWER_THAN, Event, FILTER_CGROUP, FILTER_CGROUPS_ENTRIES, FILTER_COMM,
    FILTER_COMMS_ENTRIES, FILTER_PID, FILTER_PIDS_ENTRIES, HIST_BUCKETS, KernelOffsets,
    LatencyHist, MAX_CGROUP_DEPTH, MAX_THRESHOLD_SERIES, MAX_THRESHOLDS, OVERFLOW_SERIES, ObjStart,
    ProbeCounters, SeriesKey, SloCounts, SyscallStart, THRESHOLD_ERRORS, THRESHOLD_LATENCY,
    Thresholds, bucket_index,
};

use crate::task_storage::TaskStorage;

/// Set by the loader: the agent's own tgid, never observed.
#[unsafe(no_mangle)]
static RW_SELF_TGID: u32 = 0;
/// Set by the loader: which filters are active (`FILTER_*` bits).
#[unsafe(no_mangle)]
static RW_FILTER_FLAGS: u32 = 0;
/// Set by the loader: keep one event in N (0 and 1 keep all).
#[unsafe(no_mangle)]
static RW_SAMPLE_EVERY: u64 = 0;
/// Set by the loader: the export policy (`EXPORT_*`).
#[unsafe(no_mangle)]
static RW_EXPORT: u32 = 0;
/// Set by the loader: the `slowerThan` export threshold.
#[unsafe(no_mangle)]
static RW_SLOWER_THAN_NS: u64 = 0;
/// Set by the loader: exact SLO comparisons.
#[unsafe(no_mangle)]
static RW_THRESHOLDS: Thresholds = unsafe { core::mem::zeroed() };
/// Set by the loader: kernel struct offsets from BTF.
#[unsafe(no_mangle)]
static RW_OFFSETS: KernelOffsets = unsafe { core::mem::zeroed() };

/// Starts paired per task: syscalls, uprobes, run-queue waits.
#[unsafe(link_section = ".maps")]
#[unsafe(export_name = "TASK_START")]
pub static TASK_START: TaskStorage<SyscallStart> = TaskStorage::new();

/// Starts paired by kernel object address (socket, block request). The
/// loader sizes it; a full map is a counted pairing loss.
#[map(name = "OBJ_START")]
pub static OBJ_START: HashMap<u64, ObjStart> = HashMap::with_max_entries(DEFAULT_START_ENTRIES, 0);

/// Histograms per series; the loader sizes it to `maxSeries + 1` and
/// inserts [`OVERFLOW_SERIES`] up front.
#[map(name = "HIST")]
static HIST: PerCpuHashMap<SeriesKey, LatencyHist> = PerCpuHashMap::with_max_entries(65, 0);

/// A zeroed histogram to insert new series from (too big for the stack).
#[map(name = "ZERO_HIST")]
static ZERO_HIST: PerCpuArray<LatencyHist> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<ProbeCounters> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "SLO_COUNTS")]
static SLO_COUNTS: PerCpuArray<SloCounts> = PerCpuArray::with_max_entries(1, 0);

/// The event path; the loader sizes it from the quota plan.
#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(4096, 0);

#[map(name = "FILTER_PIDS")]
static FILTER_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(FILTER_PIDS_ENTRIES, 0);

#[map(name = "FILTER_COMMS")]
static FILTER_COMMS: HashMap<[u8; COMM_LEN], u8> =
    HashMap::with_max_entries(FILTER_COMMS_ENTRIES, 0);

#[map(name = "FILTER_CGROUPS")]
static FILTER_CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(FILTER_CGROUPS_ENTRIES, 0);

/// Reads a loader-patched constant; volatile so the compiler cannot fold
/// the compile-time zero.
#[inline(always)]
pub fn global<T: Copy>(v: &'static T) -> T {
    // SAFETY: a plain read of a static.
    unsafe { core::ptr::read_volatile(v) }
}

#[inline(always)]
pub fn offsets() -> &'static KernelOffsets {
    &RW_OFFSETS
}

/// Adds to a per-CPU counter atomically: on preemptible kernels another
/// program may run on this CPU between a load and a store, and the
/// accounting identities must hold to the last event.
#[inline(always)]
pub fn add(p: *mut u64, v: u64) {
    // SAFETY: `p` points into a map value the verifier has bounds-checked;
    // map values are 8-byte aligned. The result is unused, so this is a plain
    // `lock xadd` that every BPF CPU version supports.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, v) };
}

/// Reads a kernel value at `base + off`; zero when the read faults.
#[inline(always)]
pub fn read<T: Copy + Default>(base: u64, off: u32) -> T {
    // SAFETY: bpf_probe_read_kernel checks the address; a fault yields Err.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) }.unwrap_or_default()
}

/// The counters of this probe on this CPU.
#[inline(always)]
pub fn counters() -> Option<*mut ProbeCounters> {
    COUNTERS.get_ptr_mut(0)
}

/// Who an event belongs to, for the exported record.
pub struct Who {
    pub pid_tgid: u64,
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
}

impl Who {
    /// The current task.
    #[inline(always)]
    pub fn current() -> Self {
        Self {
            pid_tgid: bpf_get_current_pid_tgid(),
            // SAFETY: no preconditions.
            cgroup_id: unsafe { bpf_get_current_cgroup_id() },
            comm: bpf_get_current_comm().unwrap_or_default(),
        }
    }

    /// A task given by pointer (read through BTF offsets).
    #[inline(always)]
    pub fn task(task: u64) -> Self {
        let o = offsets();
        let pid: u32 = read(task, global(&o.task_pid));
        let tgid: u32 = read(task, global(&o.task_tgid));
        Self {
            pid_tgid: ((tgid as u64) << 32) | pid as u64,
            cgroup_id: cgroup_id(task_cgroup(task)),
            comm: read(task, global(&o.task_comm)),
        }
    }

    /// What a start stored.
    #[inline(always)]
    pub fn stored(s: &ObjStart) -> Self {
        Self {
            pid_tgid: s.pid_tgid,
            cgroup_id: s.cgroup_id,
            comm: s.comm,
        }
    }
}

/// The default-hierarchy cgroup of a task.
#[inline(always)]
pub fn task_cgroup(task: u64) -> u64 {
    let o = offsets();
    let css_set: u64 = read(task, global(&o.task_cgroups));
    if css_set == 0 {
        return 0;
    }
    read(css_set, global(&o.css_set_dfl_cgrp))
}

/// A cgroup's id (its kernfs node id, what `bpf_get_current_cgroup_id` returns).
#[inline(always)]
pub fn cgroup_id(cgrp: u64) -> u64 {
    if cgrp == 0 {
        return 0;
    }
    let o = offsets();
    let kn: u64 = read(cgrp, global(&o.cgroup_kn));
    if kn == 0 {
        return 0;
    }
    read(kn, global(&o.kernfs_node_id))
}

/// Whether a cgroup or one of its ancestors is in the cgroup filter, so a
/// pod's cgroup selects every container below it.
#[inline(always)]
pub fn cgroup_wanted(cgrp: u64) -> bool {
    if cgrp == 0 {
        return false;
    }
    let o = offsets();
    let level: i32 = read(cgrp, global(&o.cgroup_level));
    let base = global(&o.cgroup_ancestors);
    for i in 0..MAX_CGROUP_DEPTH {
        if i as i32 > level {
            break;
        }
        let anc: u64 = read(cgrp, base + i * 8);
        // SAFETY (lookup): read for presence only.
        if anc != 0 && unsafe { FILTER_CGROUPS.get(cgroup_id(anc)) }.is_some() {
            return true;
        }
    }
    false
}

/// Whether a task passes the pid/comm/cgroup filters; `tgid` and `comm`
/// are produced only when their filter is on.
#[inline(always)]
fn passes(tgid: u32, comm: impl FnOnce() -> [u8; COMM_LEN], cgroup: impl FnOnce() -> u64) -> bool {
    if tgid == global(&RW_SELF_TGID) {
        return false;
    }
    let flags = global(&RW_FILTER_FLAGS);
    // SAFETY (lookups): values are read only for presence.
    if flags & FILTER_PID != 0 && unsafe { FILTER_PIDS.get(tgid) }.is_none() {
        return false;
    }
    if flags & FILTER_COMM != 0 && unsafe { FILTER_COMMS.get(comm()) }.is_none() {
        return false;
    }
    if flags & FILTER_CGROUP != 0 && !cgroup_wanted(cgroup()) {
        return false;
    }
    true
}

/// Whether the current task is observed.
#[inline(always)]
pub fn wanted_current(tgid: u32) -> bool {
    passes(
        tgid,
        || bpf_get_current_comm().unwrap_or_default(),
        // SAFETY: no preconditions; the result is a task pointer or 0.
        || task_cgroup(unsafe { bpf_get_current_task() }),
    )
}

/// Whether a task given by pointer is observed.
#[inline(always)]
pub fn wanted_task(task: u64) -> bool {
    let o = offsets();
    let tgid: u32 = read(task, global(&o.task_tgid));
    passes(
        tgid,
        || read(task, global(&o.task_comm)),
        || task_cgroup(task),
    )
}

/// Whether a socket is observed: only the cgroup filter applies, since a
/// socket's events run in softirq context where no task is current.
#[inline(always)]
pub fn wanted_sock(sk: u64) -> bool {
    global(&RW_FILTER_FLAGS) & FILTER_CGROUP == 0
        || cgroup_wanted(read(sk, global(&offsets().sk_cgroup)))
}

/// An event that was observed but cannot be timed (its start was never
/// stored or never seen).
#[inline(always)]
pub fn pairing_lost(c: *mut ProbeCounters) {
    // SAFETY: non-null map value pointer.
    unsafe {
        add(&raw mut (*c).observed, 1);
        add(&raw mut (*c).pairing_dropped, 1);
    }
}

/// Counts a start the start map could not hold (diagnostic; its event is
/// counted as a pairing loss where it ends or, for object starts, here).
#[inline(always)]
pub fn start_map_full(c: *mut ProbeCounters) {
    // SAFETY: non-null map value pointer.
    unsafe { add(&raw mut (*c).start_map_full, 1) };
}

/// The histogram of a series, created on first use; the overflow series
/// once `maxSeries` series exist.
#[inline(always)]
fn hist_of(c: *mut ProbeCounters, key: &SeriesKey) -> Option<*mut LatencyHist> {
    if let Some(h) = HIST.get_ptr_mut(key) {
        return Some(h);
    }
    if let Some(zero) = ZERO_HIST.get_ptr(0) {
        // SAFETY: a map value pointer; the helper copies from it. EEXIST
        // (another CPU inserted first) and E2BIG (full) both fall through.
        // By reference: by value would put 8 KiB on a 512-byte stack.
        #[allow(clippy::needless_borrows_for_generic_args)]
        let _ = HIST.insert(key, unsafe { &*zero }, BPF_NOEXIST.into());
        if let Some(h) = HIST.get_ptr_mut(key) {
            return Some(h);
        }
    }
    // SAFETY: non-null map value pointer.
    unsafe { add(&raw mut (*c).series_folded, 1) };
    HIST.get_ptr_mut(OVERFLOW_SERIES)
}

/// Adds one to every exact threshold slot the event falls in. Runs before
/// sampling, so SLIs stay exact whatever the sampling rate.
#[inline(always)]
fn count_thresholds(series: u64, latency: u64, failed: bool) {
    let t = &RW_THRESHOLDS;
    if global(&t.slots[0].mode) == 0 {
        // Slots fill from the front: the common no-SLO case costs one load.
        return;
    }
    let Some(sc) = SLO_COUNTS.get_ptr_mut(0) else {
        return;
    };
    for i in 0..MAX_THRESHOLDS {
        let slot = &t.slots[i];
        let mode = global(&slot.mode);
        if mode == 0 {
            break;
        }
        let n = global(&slot.nseries) as usize;
        let mut matches = n == 0;
        for j in 0..MAX_THRESHOLD_SERIES {
            if j < n && global(&slot.series[j]) == series {
                matches = true;
            }
        }
        if !matches {
            continue;
        }
        let good = match mode {
            THRESHOLD_LATENCY => latency <= global(&slot.latency_ns),
            THRESHOLD_ERRORS => !failed,
            _ => false,
        };
        // SAFETY: non-null map value pointer, index < MAX_THRESHOLDS.
        unsafe {
            add(&raw mut (*sc).total[i], 1);
            if good {
                add(&raw mut (*sc).good[i], 1);
            }
        }
    }
}

/// The end of a paired event: counts it, feeds the exact thresholds, the
/// sampler, the series histogram and, per the export policy, the ring buffer.
#[inline(always)]
pub fn finish(
    c: *mut ProbeCounters,
    key: &SeriesKey,
    latency: u64,
    failed: bool,
    value: i64,
    now: u64,
    who: impl FnOnce() -> Who,
) {
    // SAFETY (whole body): `c` and `h` are non-null map value pointers; the
    // bucket index is masked to the array length (a power of two) so the
    // verifier sees it in bounds.
    unsafe {
        add(&raw mut (*c).observed, 1);
        count_thresholds(key.id, latency, failed);
        let every = global(&RW_SAMPLE_EVERY);
        if every > 1 {
            // Per-CPU tick: which events are kept need not be exact, only
            // how many were left out.
            let tick = (*c).sample_tick;
            (*c).sample_tick = tick + 1;
            if !tick.is_multiple_of(every) {
                add(&raw mut (*c).sampled_out, 1);
                return;
            }
        }
        add(&raw mut (*c).aggregated, 1);
        if let Some(h) = hist_of(c, key) {
            let b = bucket_index(latency) & (HIST_BUCKETS - 1);
            add(&raw mut (*h).buckets[b], 1);
            add(&raw mut (*h).sum_ns, latency);
            if latency > (*h).max_ns {
                (*h).max_ns = latency;
            }
            if failed {
                add(&raw mut (*h).errors, 1);
            }
        }
        let export = match global(&RW_EXPORT) {
            EXPORT_ALL => true,
            EXPORT_ERRORS => failed,
            EXPORT_SLOWER_THAN => latency > global(&RW_SLOWER_THAN_NS),
            _ => false,
        };
        if !export {
            return;
        }
        add(&raw mut (*c).exported, 1);
        let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
            add(&raw mut (*c).ringbuf_dropped, 1);
            return;
        };
        let w = who();
        entry.write(Event {
            ts_ns: now,
            latency_ns: latency,
            cgroup_id: w.cgroup_id,
            series: *key,
            value,
            pid: w.pid_tgid as u32,
            tgid: (w.pid_tgid >> 32) as u32,
            comm: w.comm,
            flags: if failed { EVENT_ERROR } else { 0 },
            magic: EVENT_MAGIC,
        });
        // No wakeup: the agent drains on a timer, which costs a quarter of
        // a wakeup per event (see BENCHMARKS.md).
        entry.submit(BPF_RB_NO_WAKEUP.into());
        add(&raw mut (*c).delivered, 1);
        let fill = EVENTS.query(BPF_RB_AVAIL_DATA.into());
        if fill > (*c).ringbuf_high_water {
            (*c).ringbuf_high_water = fill;
        }
    }
}
