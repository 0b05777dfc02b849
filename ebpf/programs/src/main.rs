//! ringwarden's kernel programs.
//!
//! The `syscalls` probe pairs `sys_enter` with `sys_exit` per thread through
//! task-local storage (half the cost of a tid-keyed hash map, and it cannot
//! leak entries for threads that die in `exit_group`), aggregates latency
//! into per-CPU log-linear histograms, one per syscall number, and keeps the
//! loss-accounting counters of `ringwarden_ebpf_common::ProbeCounters`.
//!
//! Every program returns 0 on every path: a failed helper is counted, never
//! a reason to abort.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Atomic adds on map values: the BPF target has no compare-and-swap, so
// `AtomicU64::fetch_add` is unavailable, but the xadd instruction exists.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(target_arch = "bpf")]
mod syscalls;
#[cfg(target_arch = "bpf")]
mod task_storage;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program that could reach a panic
    // (there is no way to call one), so this is never executed.
    unsafe { core::hint::unreachable_unchecked() }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
