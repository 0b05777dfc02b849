//! What every probe shares: maps, loader-set globals, filters, and the end
//! of an event (exact thresholds, sampling, histogram, export), with the
//! loss counters kept at each step.
//!
//! One object holds every probe kind; the agent loads it once per probe and
//! attaches only that kind's programs, so each probe has its own maps.

use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_or, atomic_xadd};

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_NO_WAKEUP},
    cty::c_void,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_smp_processor_id, bpf_probe_read_kernel, generated,
        generated::bpf_get_current_task,
    },
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use ringwarden_ebpf_common::{
    COMM_LEN, DEFAULT_START_ENTRIES, EVENT_ERROR, EVENT_MAGIC, EXPORT_ALL, EXPORT_ERRORS,
    EXPORT_SLOWER_THAN, Event, FILTER_CGROUP, FILTER_CGROUPS_ENTRIES, FILTER_COMM,
    FILTER_COMMS_ENTRIES, FILTER_PID, FILTER_PIDS_ENTRIES, HIGH_WATER_EVERY, HIST_BUCKETS,
    HIST_DIRTY_WORDS, KernelOffsets, LatencyHist, MAX_CGROUP_DEPTH, MAX_THRESHOLD_SERIES,
    MAX_THRESHOLDS, OVERFLOW_SLOT, ObjStart, ProbeCounters, SMALL_SERIES_IDS, SeriesKey, SloCounts,
    SyscallStart, THRESHOLD_ERRORS, THRESHOLD_LATENCY, Thresholds, bucket_index,
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
/// Set by the loader: `maxSeries`, the histogram slots series may take.
#[unsafe(no_mangle)]
static RW_MAX_SERIES: u64 = 0;
/// Set by the loader: the CPUs [`HIST`] is laid out for.
#[unsafe(no_mangle)]
static RW_HIST_CPUS: u64 = 0;

/// Starts paired per task: syscalls, uprobes, run-queue waits.
#[unsafe(link_section = ".maps")]
#[unsafe(export_name = "TASK_START")]
pub static TASK_START: TaskStorage<SyscallStart> = TaskStorage::new();

/// Starts paired by kernel object address (socket, block request). The
/// loader sizes it; a full map is a counted pairing loss.
#[map(name = "OBJ_START")]
pub static OBJ_START: HashMap<u64, ObjStart> = HashMap::with_max_entries(DEFAULT_START_ENTRIES, 0);

/// Histograms by slot ([`OVERFLOW_SLOT`], then one per series) and CPU, at
/// `slot * RW_HIST_CPUS + cpu`; the loader sizes it to `(maxSeries + 1) *
/// cpus`, and [`SLOT_KEYS`] and [`SLOTS`] to `maxSeries + 1`. A plain array
/// rather than a per-CPU one so the agent can map it and take only what
/// changed (see [`LatencyHist`]); the lookup is still inlined by the
/// verifier. A per-CPU hash lookup keyed by series cost about 65 ns per event.
#[map(name = "HIST")]
static HIST: Array<LatencyHist> = Array::with_max_entries(65, BPF_F_MMAPABLE);

/// The series of each slot, written before the slot is published, so user
/// space can name (and merge) slots.
#[map(name = "SLOT_KEYS")]
static SLOT_KEYS: Array<SeriesKey> = Array::with_max_entries(65, 0);

/// `[0]`: slots handed out so far, shared by all CPUs.
#[map(name = "NEXT_SLOT")]
static NEXT_SLOT: Array<u64> = Array::with_max_entries(1, 0);

/// Slot of each small series id (see [`SMALL_SERIES_IDS`]); 0: none yet.
#[map(name = "SMALL_SLOTS")]
static SMALL_SLOTS: Array<u64> = Array::with_max_entries(SMALL_SERIES_IDS, 0);

/// Slot of every other series key.
#[map(name = "SLOTS")]
static SLOTS: HashMap<SeriesKey, u64> = HashMap::with_max_entries(65, 0);

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

/// Marks bucket `b` of `h` as holding counts for the agent to take, after
/// the counts were added. Fetch atomics are full barriers, so an agent that
/// sees the mark sees the counts. The word's bit is set only when its word
/// was clear: otherwise it is set already, or the agent has taken it and has
/// yet to take this word, which then holds the new mark.
#[inline(always)]
fn mark(h: *mut LatencyHist, b: usize) {
    // SAFETY: `h` is a non-null map value pointer and `b` is masked to the
    // bucket count, so `b >> 6` indexes `dirty`; map values are 8-byte
    // aligned.
    unsafe {
        let w = (b >> 6) & (HIST_DIRTY_WORDS - 1);
        let bit: u64 = 1 << (b & 63);
        if atomic_or::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut (*h).dirty[w], bit) == 0 {
            atomic_or::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut (*h).words, 1 << w);
        }
    }
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

/// Who an event belongs to, written straight into its exported record: a
/// copy through the stack costs byte-wise moves of the comm.
#[derive(Clone, Copy)]
pub enum Who<'a> {
    /// The current task, through helpers.
    Current,
    /// The current task as a trusted BTF pointer ([`current_task`]): plain
    /// loads instead of three helper calls.
    CurrentTask(u64),
    /// A task given by pointer (read through BTF offsets).
    Task(u64),
    /// What a start stored.
    Stored(&'a ObjStart),
    /// No task, only a socket's cgroup (softirq and timer context).
    Socket(u64),
}

impl Who<'_> {
    /// Fills `pid`, `tgid`, `cgroup_id` and `comm` of a reserved record.
    ///
    /// # Safety
    /// `e` points to a record reserved in the ring.
    #[inline(always)]
    unsafe fn write(self, e: *mut Event) {
        // SAFETY (whole body): `e` is valid for writes of an `Event`; both
        // helpers fill the whole buffer (NUL-padded, or zeroed on failure).
        unsafe {
            let comm: *mut c_void = (&raw mut (*e).comm).cast();
            match self {
                Who::Current => {
                    let pid_tgid = bpf_get_current_pid_tgid();
                    (*e).pid = pid_tgid as u32;
                    (*e).tgid = (pid_tgid >> 32) as u32;
                    (*e).cgroup_id = bpf_get_current_cgroup_id();
                    generated::bpf_get_current_comm(comm, COMM_LEN as u32);
                }
                Who::CurrentTask(task) => {
                    let o = offsets();
                    (*e).pid = field(task, global(&o.task_pid));
                    (*e).tgid = field(task, global(&o.task_tgid));
                    (*e).cgroup_id = btf_task_cgroup_id(task);
                    // Two 8-byte moves: `comm` follows pointers in
                    // task_struct, so it is word-aligned there as here.
                    let c: [u64; 2] = field(task, global(&o.task_comm));
                    comm.cast::<[u64; 2]>().write(c);
                }
                Who::Task(task) => {
                    let o = offsets();
                    (*e).pid = read(task, global(&o.task_pid));
                    (*e).tgid = read(task, global(&o.task_tgid));
                    (*e).cgroup_id = cgroup_id(task_cgroup(task));
                    let src = (task + global(&o.task_comm) as u64) as *const c_void;
                    generated::bpf_probe_read_kernel(comm, COMM_LEN as u32, src);
                }
                Who::Stored(s) => {
                    (*e).pid = s.pid_tgid as u32;
                    (*e).tgid = (s.pid_tgid >> 32) as u32;
                    (*e).cgroup_id = s.cgroup_id;
                    (*e).comm = s.comm;
                }
                Who::Socket(sk) => {
                    (*e).pid = 0;
                    (*e).tgid = 0;
                    (*e).cgroup_id = cgroup_id(read(sk, global(&offsets().sk_cgroup)));
                    (*e).comm = [0; COMM_LEN];
                }
            }
        }
    }
}

/// The running task as a trusted BTF pointer, for [`field`].
#[inline(always)]
pub fn current_task() -> u64 {
    // SAFETY: no preconditions; the result is never null.
    unsafe { generated::bpf_get_current_task_btf() as u64 }
}

/// A field of a kernel object the verifier knows by BTF type (a trusted
/// task, or a pointer loaded from one), at a loader-set offset: a plain
/// load, which the verifier checks against the kernel's BTF and makes
/// fault-safe where the pointer is not trusted. Where every return is
/// mitigated (SRSO "safe RET"), each helper call costs tens of ns.
///
/// # Safety
/// `base` is such a pointer and non-zero, `off` (a loader-set constant)
/// the offset of a field of type `T` in its type.
#[inline(always)]
pub unsafe fn field<T: Copy>(base: u64, off: u32) -> T {
    // SAFETY: per the caller; the verifier rejects any other access.
    unsafe { core::ptr::read((base + off as u64) as *const T) }
}

/// The default-hierarchy cgroup id of a task given by BTF pointer, read
/// the way `bpf_get_current_cgroup_id` reads it for the current task.
///
/// # Safety
/// As for [`field`], with `task` a `task_struct`.
#[inline(always)]
unsafe fn btf_task_cgroup_id(task: u64) -> u64 {
    let o = offsets();
    // SAFETY: each pointer was loaded by BTF type and checked non-zero.
    unsafe {
        let css_set: u64 = field(task, global(&o.task_cgroups));
        if css_set == 0 {
            return 0;
        }
        let cgrp: u64 = field(css_set, global(&o.css_set_dfl_cgrp));
        if cgrp == 0 {
            return 0;
        }
        let kn: u64 = field(cgrp, global(&o.cgroup_kn));
        if kn == 0 {
            return 0;
        }
        field(kn, global(&o.kernfs_node_id))
    }
}

/// The start of an object-keyed event begun by the current task.
#[inline(always)]
pub fn current_start(ts_ns: u64, pid_tgid: u64) -> ObjStart {
    ObjStart {
        ts_ns,
        pid_tgid,
        // SAFETY: no preconditions.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        comm: bpf_get_current_comm().unwrap_or_default(),
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

/// Reads a word other CPUs may change. A plain 8-byte load cannot tear;
/// volatile so it is not cached (LLVM has no relaxed atomic load for BPF
/// before v4).
#[inline(always)]
unsafe fn load(p: *const u64) -> u64 {
    // SAFETY: the caller passes a non-null map value pointer.
    unsafe { core::ptr::read_volatile(p) }
}

/// An event that found no slot: it goes to the overflow series.
#[inline(always)]
fn folded(c: *mut ProbeCounters) -> u64 {
    // SAFETY: non-null map value pointer.
    unsafe { add(&raw mut (*c).series_folded, 1) };
    OVERFLOW_SLOT as u64
}

/// Takes a fresh slot for `key`, records its key and publishes it with
/// `publish`, which returns the slot that won (another CPU may have
/// published the same key first; the loser's slot stays empty and user
/// space skips it). Without a slot left, `again` looks for one another CPU
/// published meanwhile before the event is folded.
#[inline(always)]
fn new_slot(
    c: *mut ProbeCounters,
    key: &SeriesKey,
    publish: impl FnOnce(u64) -> u64,
    again: impl FnOnce() -> u64,
) -> u64 {
    let max = global(&RW_MAX_SERIES);
    if let Some(next) = NEXT_SLOT.get_ptr_mut(0) {
        // SAFETY (whole block): map value pointers checked non-null.
        unsafe {
            // Read first, so a full table costs no contended atomic.
            if load(next) < max {
                // Not Relaxed: LLVM 22 lowers a relaxed fetch-add whose result
                // is used to the non-fetching instruction (a wrong result).
                let slot = atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(next, 1) + 1;
                if slot <= max
                    && let Some(k) = SLOT_KEYS.get_ptr_mut(slot as u32)
                {
                    *k = *key;
                    let won = publish(slot);
                    if won != 0 {
                        return won;
                    }
                }
            }
        }
    }
    match again() {
        0 => folded(c),
        s => s,
    }
}

/// The histogram slot of a series: found, or taken on first use; the
/// overflow slot once `maxSeries` slots are taken.
#[inline(always)]
fn slot_of(c: *mut ProbeCounters, key: &SeriesKey) -> u64 {
    if key.id < SMALL_SERIES_IDS as u64 && key.addr == [0; 16] {
        let Some(p) = SMALL_SLOTS.get_ptr_mut(key.id as u32) else {
            return folded(c);
        };
        // SAFETY (closures too): non-null map value pointer; other CPUs
        // write it only by compare-and-exchange.
        let s = unsafe { load(p) };
        if s != 0 {
            return s;
        }
        return new_slot(
            c,
            key,
            |slot| match unsafe {
                atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                    p, 0, slot,
                )
            } {
                (_, true) => slot,
                (winner, false) => winner,
            },
            || unsafe { load(p) },
        );
    }
    // SAFETY (lookups): the value is copied out at once.
    if let Some(s) = unsafe { SLOTS.get(key) } {
        return *s;
    }
    let again = || unsafe { SLOTS.get(key) }.copied().unwrap_or(0);
    new_slot(
        c,
        key,
        // EEXIST: another CPU published this key first; use its slot.
        |slot| match SLOTS.insert(key, slot, BPF_NOEXIST.into()) {
            Ok(()) => slot,
            Err(_) => again(),
        },
        again,
    )
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
    who: Who,
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
        let at = slot_of(c, key) * global(&RW_HIST_CPUS) + u64::from(bpf_get_smp_processor_id());
        if let Some(h) = HIST.get_ptr_mut(at as u32) {
            let b = bucket_index(latency) & (HIST_BUCKETS - 1);
            add(&raw mut (*h).buckets[b], 1);
            add(&raw mut (*h).sum_ns, latency);
            if latency > (*h).max_ns {
                (*h).max_ns = latency;
            }
            if failed {
                add(&raw mut (*h).errors, 1);
            }
            mark(h, b);
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
        // Field by field into the ring: every field is written.
        let e = entry.as_mut_ptr();
        (*e).ts_ns = now;
        (*e).latency_ns = latency;
        (*e).series = *key;
        (*e).value = value;
        (*e).flags = if failed { EVENT_ERROR } else { 0 };
        (*e).magic = EVENT_MAGIC;
        who.write(e);
        // No wakeup: the agent drains on a timer, which costs a quarter of
        // a wakeup per event (see BENCHMARKS.md).
        entry.submit(BPF_RB_NO_WAKEUP.into());
        // The fill query is a helper call: sample it on this CPU's delivered
        // count (the first record, then one in HIGH_WATER_EVERY).
        let delivered = (*c).delivered;
        add(&raw mut (*c).delivered, 1);
        if delivered.is_multiple_of(HIGH_WATER_EVERY) {
            let fill = EVENTS.query(BPF_RB_AVAIL_DATA.into());
            if fill > (*c).ringbuf_high_water {
                (*c).ringbuf_high_water = fill;
            }
        }
    }
}
