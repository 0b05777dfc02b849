//! Locked kernel memory of one probe's BPF maps, as the node budget counts
//! it: every map the probe object creates, at the sizes the agent gives
//! them, on a node with a given number of possible CPUs and page size.
//!
//! The formulas follow what the kernel charges to the loading process's
//! memory cgroup for each map type (`map_mem_usage` in
//! `kernel/bpf/arraymap.c`, `hashtab.c` and `ringbuf.c`, shown as
//! `memlock` in `/proc/<pid>/fdinfo/<map fd>`), with each map's fixed
//! header rounded up, so the figure is never below what the kernel charges
//! (`e2e/tests/node_budget.rs` checks it against the running kernel).
//!
//! Per-CPU maps are allocated for every *possible* CPU, not only the online
//! ones, so `cpus` must be the possible count
//! (`/sys/devices/system/cpu/possible`).

use ringwarden_ebpf_common::{
    COMM_LEN, DEFAULT_START_ENTRIES, FILTER_CGROUPS_ENTRIES, FILTER_COMMS_ENTRIES,
    FILTER_PIDS_ENTRIES, GoFrames, GoKey, GoRuntimeState, LatencyHist, ObjStart, ProbeCounters,
    SMALL_SERIES_IDS, SeriesKey, SloCounts,
};
use serde::{Deserialize, Serialize};

/// Header allowance of an array map (`struct bpf_array`, 312 bytes on
/// Linux 6.18 x86_64).
pub const ARRAY_HEADER_BYTES: u64 = 512;
/// Header allowance of a hash map (`struct bpf_htab`), before its per-CPU
/// lock counters.
pub const HASH_HEADER_BYTES: u64 = 1024;
/// Per-CPU part of a hash map's header: `HASHTAB_MAP_LOCK_COUNT` (8)
/// counters of 4 bytes per possible CPU.
pub const HASH_HEADER_PER_CPU_BYTES: u64 = 32;
/// A preallocated hash element's header (`struct htab_elem`).
pub const HASH_ELEM_HEADER_BYTES: u64 = 48;
/// One hash bucket (`struct bucket`).
pub const HASH_BUCKET_BYTES: u64 = 16;
/// Header allowance of a ring buffer map (`struct bpf_ringbuf_map`).
pub const RINGBUF_HEADER_BYTES: u64 = 512;
/// Pages a ring buffer maps besides its data: the header page and the
/// consumer and producer position pages.
pub const RINGBUF_META_PAGES: u64 = 3;
/// Bytes of the programs' read-only globals (`.rodata`), rounded up.
pub const RODATA_BYTES: u64 = 512;
/// Bytes charged for a task-local storage map when it is created. Each task
/// a probe times adds an element later (about 100 bytes); that is bounded
/// by the node's tasks, not by the plan, and is part of the agent's own
/// working set (see docs/quota.md).
pub const TASK_STORAGE_BYTES: u64 = 512;

/// The sizes of a probe's maps that depend on its spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeMaps {
    /// `maxSeries`: the histogram map holds one more, the overflow series.
    pub max_series: u32,
    /// Entries of the start map keyed by kernel object (tcpConnect,
    /// blockIO, runqueue); 1 for kinds that do not use it.
    pub obj_start_entries: u32,
    /// Entries of the Go start map (uprobes on Go binaries); 1 otherwise.
    pub go_start_entries: u32,
    /// Entries of the Go runtime map (goRuntime); 1 otherwise.
    pub go_runtime_entries: u32,
}

impl ProbeMaps {
    /// A probe keeping `max_series` series that uses none of the start maps
    /// sized by in-flight events.
    pub fn new(max_series: u32) -> Self {
        Self {
            max_series,
            obj_start_entries: 1,
            go_start_entries: 1,
            go_runtime_entries: 1,
        }
    }

    /// The start map sized for [`DEFAULT_START_ENTRIES`] in-flight events.
    pub const START_ENTRIES: u32 = DEFAULT_START_ENTRIES;
}

/// Bytes of an array map of `entries` values.
pub fn array_bytes(value: u64, entries: u64) -> u64 {
    ARRAY_HEADER_BYTES + entries * value.next_multiple_of(8)
}

/// Bytes of an array map the agent can map (`BPF_F_MMAPABLE`): its header
/// and its values are each rounded up to whole pages.
pub fn mmapable_array_bytes(value: u64, entries: u64, page: u64) -> u64 {
    ARRAY_HEADER_BYTES.next_multiple_of(page)
        + (entries * value.next_multiple_of(8)).next_multiple_of(page)
}

/// Bytes of a per-CPU array map: a pointer per entry and a copy of every
/// value per possible CPU.
pub fn percpu_array_bytes(value: u64, entries: u64, cpus: u64) -> u64 {
    ARRAY_HEADER_BYTES + entries * 8 + entries * value.next_multiple_of(8) * cpus
}

/// Bytes of a preallocated hash map: every element allocated up front (one
/// extra per CPU for the per-CPU free lists), and a power-of-two bucket
/// array.
pub fn hash_bytes(key: u64, value: u64, entries: u64, cpus: u64) -> u64 {
    let elem = HASH_ELEM_HEADER_BYTES + key.next_multiple_of(8) + value.next_multiple_of(8);
    HASH_HEADER_BYTES
        + HASH_HEADER_PER_CPU_BYTES * cpus
        + (entries + cpus) * elem
        + entries.next_power_of_two() * HASH_BUCKET_BYTES
}

/// Bytes of a ring buffer of `ring` data bytes: the data, its meta pages,
/// and the page array that maps the data twice.
pub fn ringbuf_bytes(ring: u64, page: u64) -> u64 {
    let data_pages = ring / page;
    RINGBUF_HEADER_BYTES
        + ring
        + RINGBUF_META_PAGES * page
        + (RINGBUF_META_PAGES + 2 * data_pages) * 8
}

/// Bytes of every map of a probe except its ring buffer, on a node with
/// `cpus` possible CPUs and pages of `page` bytes.
pub fn fixed_bytes(m: &ProbeMaps, cpus: u64, page: u64) -> u64 {
    let size = |n: usize| n as u64;
    let series = u64::from(m.max_series.max(1)) + 1;
    [
        // The histograms: `maxSeries + 1` of 1 024 buckets, their dirty
        // bits and sum, max, errors, per CPU; by far the largest map.
        mmapable_array_bytes(size(size_of::<LatencyHist>()), series * cpus, page),
        array_bytes(size(size_of::<SeriesKey>()), series),
        hash_bytes(size(size_of::<SeriesKey>()), 8, series, cpus),
        array_bytes(8, 1),
        array_bytes(8, u64::from(SMALL_SERIES_IDS)),
        percpu_array_bytes(size(size_of::<ProbeCounters>()), 1, cpus),
        percpu_array_bytes(size(size_of::<SloCounts>()), 1, cpus),
        hash_bytes(
            8,
            size(size_of::<ObjStart>()),
            u64::from(m.obj_start_entries.max(1)),
            cpus,
        ),
        hash_bytes(
            size(size_of::<GoKey>()),
            size(size_of::<GoFrames>()),
            u64::from(m.go_start_entries.max(1)),
            cpus,
        ),
        hash_bytes(
            4,
            size(size_of::<GoRuntimeState>()),
            u64::from(m.go_runtime_entries.max(1)),
            cpus,
        ),
        hash_bytes(4, 1, u64::from(FILTER_PIDS_ENTRIES), cpus),
        hash_bytes(size(COMM_LEN), 1, u64::from(FILTER_COMMS_ENTRIES), cpus),
        hash_bytes(8, 1, u64::from(FILTER_CGROUPS_ENTRIES), cpus),
        RODATA_BYTES,
        TASK_STORAGE_BYTES,
    ]
    .iter()
    .sum()
}

/// Bytes of all of a probe's maps, its ring of `ring` bytes included.
pub fn probe_bytes(m: &ProbeMaps, ring: u64, cpus: u64, page: u64) -> u64 {
    fixed_bytes(m, cpus, page) + ringbuf_bytes(ring, page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_formulas_match_what_linux_charges_within_the_header_allowance() {
        // `memlock` of the maps of a loaded syscalls probe (maxSeries 64)
        // on Linux 6.18 x86_64 with 2 possible CPUs, read from fdinfo.
        let cases = [
            (mmapable_array_bytes(8352, 130, 4096), 1_093_632),
            (array_bytes(24, 65), 1_872),
            (hash_bytes(24, 8, 65, 2), 8_320),
            (hash_bytes(8, 1, 1024, 2), 82_960),
            (hash_bytes(8, 40, 16_384, 2), 1_836_112),
            (ringbuf_bytes(256 << 10, 4096), 275_784),
            (ringbuf_bytes(4096, 4096), 16_728),
        ];
        for (ours, kernel) in cases {
            assert!(
                (kernel..=kernel + 512).contains(&ours),
                "{ours} against the kernel's {kernel}"
            );
        }
    }

    #[test]
    fn the_histograms_grow_with_series_and_cpus() {
        let small = fixed_bytes(&ProbeMaps::new(16), 2, 4096);
        let wide = fixed_bytes(&ProbeMaps::new(64), 2, 4096);
        let many = fixed_bytes(&ProbeMaps::new(64), 64, 4096);
        // 48 more histograms of 8 352 bytes on each of 2 CPUs, and their
        // keys and hash elements.
        assert!(wide - small > 48 * 8352 * 2);
        assert!(many - wide > 65 * 8352 * 62);
    }
}
