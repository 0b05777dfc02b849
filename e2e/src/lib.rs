//! Shared pieces of ringwarden's end-to-end tests.
//!
//! The live-kernel tests (`tests/`) load real programs; they need root (or
//! CAP_BPF + CAP_PERFMON) and fail with a message saying so otherwise.

use serde::{Deserialize, Serialize};

/// What `syscall-load` did, measured by itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadReport {
    pub pid: u32,
    pub getppid_calls: u64,
    /// Thread CPU time spent in the getppid loop, in ns.
    pub getppid_cpu_ns: u64,
    /// Children forked (each exits at once).
    pub forks: u64,
    /// Failing syscalls made (`close(-1)`, EBADF).
    #[serde(default)]
    pub fails: u64,
    /// User-space duration of each `nanosleep`, in ns (clock_gettime around the syscall).
    pub nanosleep_ns: Vec<u64>,
}

/// What `uprobe-target` did: the duration of each call of its function,
/// timed around the call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallReport {
    pub pid: u32,
    pub durations_ns: Vec<u64>,
}

/// Panics with an actionable message unless the process may load eBPF programs.
pub fn require_bpf_privileges() {
    if let Err(e) = ringwarden_node_agent::probes::check_privileges() {
        panic!("live-kernel tests cannot run: {e}; run `sudo make test`");
    }
}

/// Loads a probe, panicking with the loader's message (verifier log
/// included) if the kernel refuses it.
pub fn load_probe(
    config: &ringwarden_node_agent::probes::ProbeConfig,
) -> ringwarden_node_agent::probes::Probe {
    use ringwarden_node_agent::probes::{Kernel, Probe};
    let kernel = Kernel::open().unwrap_or_else(|e| panic!("kernel facts: {e}"));
    Probe::load(&kernel, config)
        .unwrap_or_else(|e| panic!("loading the {} probe failed: {e}", config.kind.as_str()))
}

/// The value at rank `ceil(q·n)` of a sample: the order statistic a
/// histogram percentile estimates.
pub fn exact_percentile(values: &[u64], q: f64) -> u64 {
    assert!(!values.is_empty());
    let mut v = values.to_vec();
    v.sort_unstable();
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_percentile_picks_the_ceiling_rank() {
        let v = [5, 1, 4, 2, 3];
        assert_eq!(exact_percentile(&v, 0.5), 3);
        assert_eq!(exact_percentile(&v, 0.0), 1);
        assert_eq!(exact_percentile(&v, 1.0), 5);
        assert_eq!(exact_percentile(&v, 0.99), 5);
    }
}
