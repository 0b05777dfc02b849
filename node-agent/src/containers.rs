//! The root directories of the containers of a ProbeSet's pods, where its
//! uprobe binaries resolve: a ProbeSet may trace the programs of its own
//! namespace, never the host's or another namespace's. Reads cgroupfs and
//! /proc (blocking: call from a blocking thread in async code).
//!
//! A container's root is `/proc/<pid>/root` of a process in the pod's
//! cgroup (the agent shares the host's PID namespace). A pid read from
//! `cgroup.procs` could be reused by another process before its root is
//! opened, so each one is pinned with a pidfd first: the pid is checked
//! to be in the pod's cgroup again, the root opened, and the pidfd's
//! process found still alive, so both were that process's.

use std::{
    collections::BTreeSet,
    ffi::CString,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

/// Most container roots a uprobe binary is looked for in.
pub const MAX_ROOTS: usize = 32;
/// How deep below a pod's cgroup containers' processes are looked for
/// (container cgroups, and what they nest).
const MAX_DEPTH: u8 = 3;

/// The root directory of one container, open.
#[derive(Debug)]
pub struct ContainerRoot {
    /// The process whose root it is, for messages.
    pub pid: i32,
    pub root: OwnedFd,
}

/// The distinct container roots of the processes in `pod_dirs` (pod
/// cgroup directories) and below, at most [`MAX_ROOTS`], found through
/// `proc` (the host's `/proc`). Processes that exit meanwhile, or whose
/// root cannot be opened, are left out; the errors say why, for a message
/// when no root is found.
pub fn roots<'a>(
    pod_dirs: impl IntoIterator<Item = &'a Path>,
    proc: &Path,
) -> (Vec<ContainerRoot>, Vec<String>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let mut seen = BTreeSet::new();
    for pod in pod_dirs {
        let mut stack = vec![(pod.to_path_buf(), 0u8)];
        while let Some((dir, depth)) = stack.pop() {
            for pid in pids(&dir) {
                if out.len() >= MAX_ROOTS {
                    return (out, errors);
                }
                match pinned_root(pid, &dir, proc) {
                    Ok(Some(root)) => {
                        let Ok(st) = fstat(&root) else { continue };
                        if seen.insert((st.st_dev, st.st_ino)) {
                            out.push(ContainerRoot { pid, root });
                        }
                    }
                    Ok(None) => {}
                    Err(e) => errors.push(format!("process {pid}: {e}")),
                }
            }
            if depth < MAX_DEPTH
                && let Ok(entries) = std::fs::read_dir(&dir)
            {
                for e in entries.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push((e.path(), depth + 1));
                    }
                }
            }
        }
    }
    (out, errors)
}

/// The processes in `pod_dirs` (pod cgroup directories) and in the
/// cgroups below them, as deep as containers' roots are looked for;
/// at most `cap` (a pod past it is cut short: the caller says so).
/// Processes that exit meanwhile are left out.
pub fn processes<'a>(
    pod_dirs: impl IntoIterator<Item = &'a Path>,
    proc: &Path,
    cap: usize,
) -> BTreeSet<crate::probes::Process> {
    let mut out = BTreeSet::new();
    for pod in pod_dirs {
        let mut stack = vec![(pod.to_path_buf(), 0u8)];
        while let Some((dir, depth)) = stack.pop() {
            for pid in pids(&dir) {
                if out.len() >= cap {
                    return out;
                }
                if let Some(p) = u32::try_from(pid)
                    .ok()
                    .and_then(|pid| crate::probes::Process::of(proc, pid))
                {
                    out.insert(p);
                }
            }
            if depth < MAX_DEPTH
                && let Ok(entries) = std::fs::read_dir(&dir)
            {
                for e in entries.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push((e.path(), depth + 1));
                    }
                }
            }
        }
    }
    out
}

/// The processes directly in the cgroup `dir`.
fn pids(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|&p: &i32| p > 0)
        .collect()
}

/// The root of `pid` if it is, throughout, a process of the cgroup `dir`;
/// `None` if it left or exited.
fn pinned_root(pid: i32, dir: &Path, proc: &Path) -> std::io::Result<Option<OwnedFd>> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        let e = std::io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ESRCH) {
            Ok(None)
        } else {
            Err(e)
        };
    }
    // SAFETY: a new fd nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
    if !pids(dir).contains(&pid) {
        return Ok(None);
    }
    let path = proc.join(pid.to_string()).join("root");
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: a valid NUL-terminated path; the fd returned is owned below.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOENT | libc::ESRCH) => Ok(None),
            _ => Err(std::io::Error::new(
                e.kind(),
                format!("cannot open {}: {e}", path.display()),
            )),
        };
    }
    // SAFETY: a new fd nothing else owns.
    let root = unsafe { OwnedFd::from_raw_fd(fd) };
    // Signal 0 only asks whether the process still lives: a pid is not
    // reused while its process does, so `dir` held it and `root` is its.
    // SAFETY: a valid pidfd, no siginfo, no flags.
    let alive = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    let gone = alive < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
    Ok((!gone).then_some(root))
}

fn fstat(fd: &OwnedFd) -> std::io::Result<libc::stat> {
    // SAFETY: an all-zero stat is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd and a valid out pointer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st)
}

/// Where the host's processes are seen: the agent shares the host's PID
/// namespace.
pub fn proc_root() -> PathBuf {
    PathBuf::from("/proc")
}
