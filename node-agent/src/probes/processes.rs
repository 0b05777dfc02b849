//! Per-process uprobes: a ProbeSet's uprobe breaks only into its own pods'
//! processes.
//!
//! A uprobe is installed per inode: attached for all processes, every
//! process on the node that maps the file (a shared image layer's libc,
//! say) traps on the probed instruction, and the cgroup filter in the
//! program runs only after the trap, so one tenant hooking `malloc` would
//! slow every tenant on the node. A perf-event uprobe opened for one
//! process installs its breakpoint only in that process's address space
//! (the kernel's uprobe filter): other processes mapping the same file do
//! not trap. So a ProbeSet's uprobe is attached once per process of its
//! pods, at most [`MAX_PROCESSES_PER_UPROBE`], and follows them as they
//! start and exit ([`ProcessAttach::sync`]); a ClusterProbeSet's stays
//! attached for all processes.
//!
//! Touches the kernel (perf_event_open per process and site): blocking,
//! call it from a blocking thread in async code.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    num::NonZeroU32,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

use aya::{
    Ebpf,
    programs::{
        ProgramError, UProbe,
        uprobe::{UProbeAttachLocation, UProbeLinkId, UProbeScope},
    },
};

use super::{ProbeError, error_chain, program_error, uprobe_error};

/// Most processes one namespaced uprobe attaches to, each with its own
/// perf events (one per site: a native function's two, a Go function's
/// entry and returns). A pod rarely runs more than a handful of
/// processes; past this many the rest are left out and the agent logs
/// an error naming this limit, rather than open thousands of events.
pub const MAX_PROCESSES_PER_UPROBE: usize = 256;

/// A process as the kernel knows it: its pid and its start time (clock
/// ticks after boot, `/proc/<pid>/stat`), so a pid reused by another
/// process is another process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Process {
    pub pid: u32,
    pub start: u64,
}

impl Process {
    /// The process `pid` now, if it runs (read from `proc`).
    pub fn of(proc: &Path, pid: u32) -> Option<Self> {
        let stat = std::fs::read_to_string(proc.join(pid.to_string()).join("stat")).ok()?;
        // The comm may hold spaces and parentheses: fields follow the last `)`.
        let rest = &stat[stat.rfind(')')? + 1..];
        // Field 22 (starttime); `rest` starts at field 3 (state).
        let start = rest.split_whitespace().nth(19)?.parse().ok()?;
        Some(Self { pid, start })
    }
}

/// What one [`ProcessAttach::sync`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Synced {
    /// Processes newly attached.
    pub added: usize,
    /// Processes detached (exited, or no longer in the pods).
    pub removed: usize,
    /// Processes attached now.
    pub attached: usize,
    /// Processes of the pods left unattached: past
    /// [`MAX_PROCESSES_PER_UPROBE`].
    pub left_out: usize,
}

/// Where a uprobe's programs attach, and to which processes.
pub(super) struct Sites {
    /// (program, file offset), ends first.
    pub sites: Vec<(&'static str, u64)>,
    /// The checked binary, open: every attach names it by its fd.
    pub file: File,
    pub binary: String,
    pub symbol: String,
    /// Each attached process with its links, one per site.
    pub attached: BTreeMap<Process, Vec<(&'static str, UProbeLinkId)>>,
}

impl Sites {
    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }
}

/// A probe's programs and links; dropping it detaches them.
pub(super) struct Programs {
    pub ebpf: Ebpf,
    /// For a uprobe attached per process; `None`: attached for all
    /// processes, or not a uprobe.
    pub per_process: Option<Sites>,
}

/// Attaches a per-process uprobe to processes and detaches it from others,
/// from any thread, while the probe runs.
#[derive(Clone)]
pub struct ProcessAttach(pub(super) Arc<Mutex<Programs>>);

impl ProcessAttach {
    /// Makes the uprobe attached to exactly `wanted` (at most
    /// [`MAX_PROCESSES_PER_UPROBE`] of them, the longest running first):
    /// new processes are attached before gone ones are detached. A process
    /// that exits meanwhile is skipped. Blocking.
    pub fn sync(&self, wanted: &BTreeSet<Process>) -> Result<Synced, ProbeError> {
        let mut guard = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let Programs { ebpf, per_process } = &mut *guard;
        let Some(sites) = per_process.as_mut() else {
            return Ok(Synced::default());
        };
        let mut by_age: Vec<Process> = wanted.iter().copied().collect();
        by_age.sort_by_key(|p| (p.start, p.pid));
        let left_out = by_age.len().saturating_sub(MAX_PROCESSES_PER_UPROBE);
        by_age.truncate(MAX_PROCESSES_PER_UPROBE);
        let keep: BTreeSet<Process> = by_age.iter().copied().collect();
        let path = sites.path();
        let mut out = Synced {
            left_out,
            ..Synced::default()
        };
        let mut first_error = None;
        for process in keep.difference(&sites.attached.keys().copied().collect()) {
            match attach_one(ebpf, &sites.sites, &path, process.pid) {
                Ok(links) => {
                    sites.attached.insert(*process, links);
                    out.added += 1;
                }
                // Gone already: nothing to attach to.
                Err(_) if !super::process_alive(process.pid) => {}
                Err(e) => {
                    first_error.get_or_insert(uprobe_error(
                        &sites.binary,
                        &sites.symbol,
                        format!("attaching to process {}: {e}", process.pid),
                    ));
                }
            }
        }
        let gone: Vec<Process> = sites
            .attached
            .keys()
            .filter(|p| !keep.contains(p))
            .copied()
            .collect();
        for process in gone {
            if let Some(links) = sites.attached.remove(&process) {
                detach(ebpf, links);
                out.removed += 1;
            }
        }
        out.attached = sites.attached.len();
        match first_error {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// The processes attached now.
    pub fn attached(&self) -> BTreeSet<Process> {
        let guard = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        guard
            .per_process
            .as_ref()
            .map(|s| s.attached.keys().copied().collect())
            .unwrap_or_default()
    }
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, program: &'static str) -> Result<&'a mut UProbe, ProbeError> {
    ebpf.program_mut(program)
        .ok_or_else(|| ProbeError::Object(format!("program {program} missing")))?
        .try_into()
        .map_err(|e: ProgramError| program_error(program, e))
}

/// Attaches every site for the one process `pid`; on failure, detaches
/// what it attached.
fn attach_one(
    ebpf: &mut Ebpf,
    sites: &[(&'static str, u64)],
    path: &Path,
    pid: u32,
) -> Result<Vec<(&'static str, UProbeLinkId)>, String> {
    let one = NonZeroU32::new(pid).ok_or("pid 0 is no process")?;
    let mut links = Vec::with_capacity(sites.len());
    for &(program, offset) in sites {
        let attached = uprobe(ebpf, program)
            .map_err(|e| e.to_string())
            .and_then(|prog| {
                prog.attach(
                    UProbeAttachLocation::AbsoluteOffset(offset),
                    path,
                    UProbeScope::OneProcess(one),
                )
                .map_err(|e| error_chain(&e))
            });
        match attached {
            Ok(link) => links.push((program, link)),
            Err(e) => {
                detach(ebpf, links);
                return Err(e);
            }
        }
    }
    Ok(links)
}

fn detach(ebpf: &mut Ebpf, links: Vec<(&'static str, UProbeLinkId)>) {
    for (program, link) in links {
        if let Ok(prog) = uprobe(ebpf, program) {
            // A link whose process exited detaches all the same.
            let _ = prog.detach(link);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_known_by_its_pid_and_start_time_and_a_gone_one_not_at_all() {
        let proc = Path::new("/proc");
        let me = Process::of(proc, std::process::id()).expect("this process runs");
        assert_eq!(me.pid, std::process::id());
        assert!(me.start > 0, "{me:?}");
        assert_eq!(Process::of(proc, std::process::id()), Some(me));
        let init = Process::of(proc, 1).expect("pid 1 runs");
        assert!(init.start <= me.start, "{init:?} started after {me:?}");
        // Past the kernel's largest pid.
        assert_eq!(Process::of(proc, 1 << 23), None);
    }
}
