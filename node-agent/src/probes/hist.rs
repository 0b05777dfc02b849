//! Reading a probe's histograms: the agent maps the kernel's `HIST` array
//! and takes only the buckets the kernel marked since the last read (see
//! [`LatencyHist`] for the protocol and why it is exact).
//!
//! A read used to copy every series' 8 KiB histogram from every possible
//! CPU through the `bpf` syscall: 512 MiB for 1 024 series on 64 CPUs.
//! Now a series and CPU with nothing new costs one load of its `words`, and
//! one with new events costs its marked words and buckets. What the kernel
//! holds is only what is not yet taken; the cumulative histograms live here,
//! one per series in use, whatever the CPU count.

use std::{
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use aya::maps::MapData;
use ringwarden_core::histogram::Histogram;
use ringwarden_ebpf_common::{HIST_DIRTY_WORDS, LatencyHist, SeriesKey};

use super::ProbeError;

/// What reads have cost so far, for tests and the benchmark.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadCost {
    /// Reads done.
    pub reads: u64,
    /// Series-and-CPU histograms looked at (one load each).
    pub scanned: u64,
    /// Of those, the ones with marks, whose totals were taken.
    pub taken: u64,
    /// Dirty words taken.
    pub words: u64,
    /// Buckets taken.
    pub buckets: u64,
}

/// The kernel's histograms, mapped, and the cumulative ones taken from them.
pub struct Inbox {
    // Held open as long as the mapping of its values.
    map: MapData,
    base: NonNull<LatencyHist>,
    len: usize,
    cpus: usize,
    entries: usize,
    /// Cumulative histogram of each slot, once it has had an event.
    taken: Vec<Option<Histogram>>,
    /// Each slot's series, read once: the kernel never renames a slot.
    keys: Vec<Option<SeriesKey>>,
    cost: ReadCost,
}

// SAFETY: the mapping is owned by the inbox and only touched through it;
// the kernel side is accessed with atomics.
unsafe impl Send for Inbox {}

impl Inbox {
    /// Maps `map`, a `BPF_F_MMAPABLE` array of `slots * cpus` histograms.
    pub fn map(map: MapData, slots: u32, cpus: u32) -> Result<Self, ProbeError> {
        let (slots, cpus) = (slots as usize, cpus as usize);
        let entries = slots * cpus;
        // The kernel maps `PAGE_ALIGN(entries * value size)` from offset 0.
        let len =
            (entries * size_of::<LatencyHist>()).next_multiple_of(super::page_size() as usize);
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: a fresh shared mapping of the map's whole value area; the
        // kernel refuses a length past it.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(ProbeError::Map {
                map: ringwarden_ebpf_common::maps::HIST,
                message: format!("mmap: {}", std::io::Error::last_os_error()),
            });
        }
        Ok(Self {
            map,
            base: NonNull::new(ptr.cast()).expect("mmap returned a mapping"),
            len,
            cpus,
            entries,
            taken: vec![None; slots],
            keys: vec![None; slots],
            cost: ReadCost::default(),
        })
    }

    /// Takes what the kernel marked in slots `0..=last` into the
    /// cumulative histograms.
    pub fn read(&mut self, last: u32) {
        self.cost.reads += 1;
        let slots = (last as usize + 1).min(self.taken.len());
        for slot in 0..slots {
            for cpu in 0..self.cpus {
                self.take(slot, cpu);
            }
        }
    }

    fn take(&mut self, slot: usize, cpu: usize) {
        let at = slot * self.cpus + cpu;
        debug_assert!(at < self.entries);
        // SAFETY: `at` is inside the mapping (slot < slots, cpu < cpus).
        let h = unsafe { self.base.as_ptr().add(at) };
        // SAFETY (atomics below): fields of a mapped, 8-byte aligned value
        // the kernel updates only with atomics.
        let atomic = |p: *mut u64| unsafe { AtomicU64::from_ptr(p) };
        self.cost.scanned += 1;
        // A load first: taking would dirty the cache line of every quiet one.
        let words = atomic(unsafe { &raw mut (*h).words });
        if words.load(Ordering::Relaxed) == 0 {
            return;
        }
        let words = words.swap(0, Ordering::SeqCst);
        self.cost.taken += 1;
        let acc = self.taken[slot].get_or_insert_with(Histogram::new);
        let mut ws = words;
        while ws != 0 {
            let w = ws.trailing_zeros() as usize;
            ws &= ws - 1;
            if w >= HIST_DIRTY_WORDS {
                continue;
            }
            self.cost.words += 1;
            let mut bits = atomic(unsafe { &raw mut (*h).dirty[w] }).swap(0, Ordering::SeqCst);
            while bits != 0 {
                let b = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let n = atomic(unsafe { &raw mut (*h).buckets[b] }).swap(0, Ordering::SeqCst);
                self.cost.buckets += 1;
                acc.add_to_bucket(b, n);
            }
        }
        let sum = atomic(unsafe { &raw mut (*h).sum_ns }).swap(0, Ordering::SeqCst);
        let errors = atomic(unsafe { &raw mut (*h).errors }).swap(0, Ordering::SeqCst);
        let max = atomic(unsafe { &raw mut (*h).max_ns }).load(Ordering::Relaxed);
        acc.add_totals(sum, max, errors);
    }

    /// Slots with events, and their cumulative histograms. `key` reads a
    /// slot's series the first time it is needed.
    pub fn series(
        &mut self,
        mut key: impl FnMut(u32) -> Result<SeriesKey, ProbeError>,
    ) -> Result<Vec<(SeriesKey, &Histogram)>, ProbeError> {
        let mut out = Vec::new();
        for (slot, h) in self.taken.iter().enumerate() {
            // Also skips a slot whose CPU lost the race to publish it.
            let Some(h) = h.as_ref().filter(|h| !h.is_empty()) else {
                continue;
            };
            // Read after the histogram: the kernel writes a slot's key
            // before publishing the slot, so before its first event.
            let k = match self.keys[slot] {
                Some(k) => k,
                None => {
                    let k = key(slot as u32)?;
                    self.keys[slot] = Some(k);
                    k
                }
            };
            out.push((k, h));
        }
        Ok(out)
    }

    pub fn cost(&self) -> ReadCost {
        self.cost
    }

    /// The kernel's id of the map, for tools that inspect it.
    pub fn map_id(&self) -> Option<u32> {
        self.map.info().ok().map(|i| i.id())
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `Inbox::map`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}
