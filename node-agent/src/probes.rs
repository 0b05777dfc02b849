//! Loading the kernel programs with aya and reading what they counted.
//!
//! Touches the kernel (bpf syscalls); everything it returns is plain data
//! that [`crate::table`] and [`crate::metrics`] turn into output.

use std::collections::BTreeMap;

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray},
    programs::{BtfTracePoint, ProgramError},
};
use ringwarden_core::{accounting::Counters, histogram::Histogram};
use ringwarden_ebpf_common::{
    COMM_LEN, FILTER_COMM, FILTER_COMMS_ENTRIES, FILTER_PID, FILTER_PIDS_ENTRIES, LatencyHist,
    ProbeCounters, SYSCALL_SERIES, globals, maps, programs,
};

/// The compiled kernel programs, embedded so the agent is one file.
static PROBES_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ringwarden-probes"));

/// Where the kernel publishes its own BTF; `tp_btf` programs need it.
pub const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Why a probe could not be loaded or read.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "kernel BTF is not available at {KERNEL_BTF} ({0}); ringwarden needs a kernel built with \
         CONFIG_DEBUG_INFO_BTF=y (Linux >= 5.8)"
    )]
    MissingBtf(String),
    #[error("loading the eBPF object failed: {0}{hint}", hint = permission_hint(.0))]
    Object(String),
    #[error("program {program} was rejected: {message}{hint}", hint = permission_hint(.message))]
    Program {
        program: &'static str,
        message: String,
    },
    #[error("attaching {program} to tracepoint {tracepoint} failed: {message}{hint}", hint = permission_hint(.message))]
    Attach {
        program: &'static str,
        tracepoint: &'static str,
        message: String,
    },
    #[error("map {map}: {message}")]
    Map { map: &'static str, message: String },
    #[error("filter: {0}")]
    Filter(String),
    #[error(
        "loading eBPF programs needs root or the capabilities CAP_BPF and CAP_PERFMON \
         (effective capabilities here: {0:#x})"
    )]
    Privileges(u64),
}

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Whether an effective capability set may load and attach tracing programs.
fn caps_allow_tracing(cap_eff: u64) -> bool {
    let has = |cap: u32| cap_eff & (1 << cap) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
}

/// Checks, before anything is loaded, that this process may load and attach
/// tracing programs and that the kernel has BTF, so the error says what to do.
pub fn check_privileges() -> Result<(), ProbeError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    if !caps_allow_tracing(cap_eff) {
        return Err(ProbeError::Privileges(cap_eff));
    }
    if !std::path::Path::new(KERNEL_BTF).exists() {
        return Err(ProbeError::MissingBtf("no such file".into()));
    }
    Ok(())
}

fn permission_hint(message: &str) -> &'static str {
    if message.contains("Operation not permitted") || message.contains("Permission denied") {
        "; run as root or grant CAP_BPF and CAP_PERFMON"
    } else {
        ""
    }
}

/// The tail of a verifier log: where the verifier gave up is at the end.
fn verifier_excerpt(log: &str) -> String {
    const LINES: usize = 12;
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(LINES)..].join("\n")
}

fn program_error(program: &'static str, e: ProgramError) -> ProbeError {
    let message = match &e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => format!(
            "{io_error}; verifier log (last lines):\n{}",
            verifier_excerpt(&verifier_log.to_string())
        ),
        other => other.to_string(),
    };
    ProbeError::Program { program, message }
}

/// Which processes a syscalls probe observes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyscallProbeConfig {
    /// Thread-group ids to observe (empty: all).
    pub pids: Vec<u32>,
    /// Task comms to observe (empty: all).
    pub comms: Vec<String>,
    /// Process never observed: the agent itself, so it does not feed its own
    /// numbers with the syscalls it makes to read them.
    pub exclude_tgid: u32,
}

/// A loaded and attached syscalls probe. Dropping it detaches the programs
/// and frees the maps.
pub struct SyscallProbe {
    // Owns the programs and their links; dropping it detaches them.
    _ebpf: Ebpf,
    hist: PerCpuArray<MapData, LatencyHist>,
    counters: PerCpuArray<MapData, ProbeCounters>,
    program_ids: Vec<u32>,
}

/// What a syscalls probe has counted since it was loaded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SyscallSnapshot {
    pub counters: Counters,
    /// Latency histogram per syscall number (series with no events left out);
    /// key [`ringwarden_ebpf_common::SYSCALL_OVERFLOW_SERIES`] is the overflow series.
    pub series: BTreeMap<u32, Histogram>,
}

fn comm_key(comm: &str) -> Result<[u8; COMM_LEN], ProbeError> {
    let bytes = comm.as_bytes();
    if bytes.is_empty() || bytes.len() >= COMM_LEN {
        return Err(ProbeError::Filter(format!(
            "comm {comm:?} must be 1 to {} bytes",
            COMM_LEN - 1
        )));
    }
    let mut key = [0u8; COMM_LEN];
    key[..bytes.len()].copy_from_slice(bytes);
    Ok(key)
}

impl SyscallProbe {
    /// Loads the programs, installs the filters and attaches to
    /// `raw_syscalls:sys_enter`/`sys_exit`.
    pub fn load(config: &SyscallProbeConfig) -> Result<Self, ProbeError> {
        if config.pids.len() > FILTER_PIDS_ENTRIES as usize {
            return Err(ProbeError::Filter(format!(
                "{} pids given, at most {FILTER_PIDS_ENTRIES} are supported",
                config.pids.len()
            )));
        }
        if config.comms.len() > FILTER_COMMS_ENTRIES as usize {
            return Err(ProbeError::Filter(format!(
                "{} comms given, at most {FILTER_COMMS_ENTRIES} are supported",
                config.comms.len()
            )));
        }
        let comm_keys = config
            .comms
            .iter()
            .map(|c| comm_key(c))
            .collect::<Result<Vec<_>, _>>()?;
        let btf = Btf::from_sys_fs().map_err(|e| ProbeError::MissingBtf(e.to_string()))?;
        let flags = if config.pids.is_empty() {
            0
        } else {
            FILTER_PID
        } | if config.comms.is_empty() {
            0
        } else {
            FILTER_COMM
        };
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            // Task storage has no typed user-space handle in aya; the kernel
            // side is all it needs.
            .allow_unsupported_maps()
            .override_global(globals::SELF_TGID, &config.exclude_tgid, true)
            .override_global(globals::FILTER_FLAGS, &flags, true)
            .load(PROBES_OBJECT)
            .map_err(|e| ProbeError::Object(error_chain(&e)))?;

        // Filters go in before the programs attach, so no event escapes them.
        let mut pids: HashMap<_, u32, u8> = take_map(&mut ebpf, maps::FILTER_PIDS)?;
        for pid in &config.pids {
            pids.insert(pid, 1, 0)
                .map_err(|e| map_error(maps::FILTER_PIDS, e))?;
        }
        let mut comms: HashMap<_, [u8; COMM_LEN], u8> = take_map(&mut ebpf, maps::FILTER_COMMS)?;
        for key in &comm_keys {
            comms
                .insert(key, 1, 0)
                .map_err(|e| map_error(maps::FILTER_COMMS, e))?;
        }
        let hist = take_map(&mut ebpf, maps::SYS_HIST)?;
        let counters = take_map(&mut ebpf, maps::COUNTERS)?;

        let mut program_ids = Vec::new();
        // Fork marking and exit first: an exit without a start is counted
        // as a pairing loss, while a start without an exit program would
        // never be consumed.
        for (program, tracepoint) in [
            (programs::SCHED_FORK, "sched_process_fork"),
            (programs::SYS_EXIT, "sys_exit"),
            (programs::SYS_ENTER, "sys_enter"),
        ] {
            let prog: &mut BtfTracePoint = ebpf
                .program_mut(program)
                .ok_or_else(|| ProbeError::Object(format!("program {program} missing")))?
                .try_into()
                .map_err(|e: ProgramError| program_error(program, e))?;
            prog.load(tracepoint, &btf)
                .map_err(|e| program_error(program, e))?;
            if let Ok(info) = prog.info() {
                program_ids.push(info.id());
            }
            prog.attach().map_err(|e| ProbeError::Attach {
                program,
                tracepoint,
                message: error_chain(&e),
            })?;
        }
        Ok(Self {
            _ebpf: ebpf,
            hist,
            counters,
            program_ids,
        })
    }

    /// Kernel ids of the loaded programs (as `bpftool prog` lists them).
    pub fn program_ids(&self) -> &[u32] {
        &self.program_ids
    }

    /// Reads the counters and every non-empty histogram, summed over CPUs.
    pub fn snapshot(&self) -> Result<SyscallSnapshot, ProbeError> {
        let counters = self
            .counters
            .get(&0, 0)
            .map_err(|e| map_error(maps::COUNTERS, e))?;
        let mut series = BTreeMap::new();
        for nr in 0..SYSCALL_SERIES {
            let per_cpu = self
                .hist
                .get(&nr, 0)
                .map_err(|e| map_error(maps::SYS_HIST, e))?;
            let h = Histogram::from_per_cpu(&per_cpu);
            if !h.is_empty() {
                series.insert(nr, h);
            }
        }
        Ok(SyscallSnapshot {
            counters: Counters::from_per_cpu(&counters),
            series,
        })
    }
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, ProbeError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(ProbeError::Map {
        map: name,
        message: "missing from the eBPF object".into(),
    })?;
    T::try_from(map).map_err(|e| map_error(name, e))
}

fn map_error(map: &'static str, e: aya::maps::MapError) -> ProbeError {
    ProbeError::Map {
        map,
        message: error_chain(&e),
    }
}

/// An error and its sources on one line: aya's top-level messages alone
/// ("map error") rarely say what went wrong.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some errors already print their source; don't say it twice.
        if !s.contains(&cause_text) {
            s.push_str(": ");
            s.push_str(&cause_text);
        }
        source = cause.source();
    }
    s
}

/// Name of a syscall number on this architecture (`syscall_<nr>` if unknown,
/// `other` for the overflow series).
pub fn syscall_name(nr: u32) -> String {
    if nr >= ringwarden_ebpf_common::MAX_SYSCALLS {
        return "other".into();
    }
    match syscalls::Sysno::new(nr as usize) {
        Some(s) => s.name().to_string(),
        None => format!("syscall_{nr}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracing_needs_cap_bpf_and_cap_perfmon_or_cap_sys_admin() {
        let cases = [
            (0, false),
            (1 << CAP_BPF, false),
            (1 << CAP_PERFMON, false),
            ((1 << CAP_BPF) | (1 << CAP_PERFMON), true),
            (1 << CAP_SYS_ADMIN, true),
            (0x1ff_ffff_ffff, true), // root's full set
        ];
        for (caps, allowed) in cases {
            assert_eq!(caps_allow_tracing(caps), allowed, "{caps:#x}");
        }
    }

    #[test]
    fn verifier_excerpt_keeps_the_last_lines() {
        let log: String = (0..40).map(|i| format!("line {i}\n\n")).collect();
        let excerpt = verifier_excerpt(&log);
        assert_eq!(excerpt.lines().count(), 12);
        assert!(excerpt.ends_with("line 39"));
    }

    #[test]
    fn comm_keys_are_nul_padded_and_bounded() {
        let k = comm_key("nginx").unwrap();
        assert_eq!(&k[..6], b"nginx\0");
        assert!(comm_key("").is_err());
        assert!(comm_key("sixteen-bytes-xx").is_err());
    }

    #[test]
    fn syscall_names_come_from_the_running_architecture() {
        let getppid = syscalls::Sysno::getppid.id() as u32;
        assert_eq!(syscall_name(getppid), "getppid");
        assert_eq!(
            syscall_name(ringwarden_ebpf_common::SYSCALL_OVERFLOW_SERIES),
            "other"
        );
    }

    #[test]
    fn permission_errors_carry_the_capability_hint() {
        assert!(permission_hint("Operation not permitted (os error 1)").contains("CAP_BPF"));
        assert_eq!(permission_hint("Invalid argument"), "");
    }
}
