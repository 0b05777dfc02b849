//! ringwarden's kernel programs: the probe catalog.
//!
//! Starts are paired per task through task-local storage where the end runs
//! in the same task (syscalls, uprobes) or names it (run queue): half the
//! cost of a tid-keyed hash map, and no leaked entries for threads that die
//! mid-call. Starts whose end runs elsewhere (TCP handshakes, block I/O)
//! are keyed by object address. Every event ends in `common::finish`, which
//! keeps the loss-accounting counters of `ringwarden_ebpf_common::ProbeCounters`.
//!
//! Every program returns 0 on every path: a failed helper is counted, never
//! a reason to abort.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Atomics on map values: Rust's BPF target declares no compare-and-swap, so
// `AtomicU64` has no read-modify-write methods; the intrinsics still compile
// to BPF's atomic instructions (fetch and cmpxchg need CPU v3, see build.rs).
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(target_arch = "bpf")]
mod block;
#[cfg(target_arch = "bpf")]
mod common;
#[cfg(target_arch = "bpf")]
mod golang;
#[cfg(target_arch = "bpf")]
mod runqueue;
#[cfg(target_arch = "bpf")]
mod syscalls;
#[cfg(target_arch = "bpf")]
mod task_storage;
#[cfg(target_arch = "bpf")]
mod tcp;
#[cfg(target_arch = "bpf")]
mod uprobe;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program that could reach a panic
    // (there is no way to call one), so this is never executed.
    unsafe { core::hint::unreachable_unchecked() }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
