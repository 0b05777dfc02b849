//! The binary a uprobe attaches to: found on the node, opened safely, its
//! symbol resolved. Touches the filesystem (blocking reads: call it from a
//! blocking thread in async code, see [`UprobeTarget::open_async`]).
//!
//! A `uprobe.binary` is a path on the node. In a pod the agent's own mount
//! namespace is the container image, so the path is resolved under the
//! host's root directory (`--host-root`, the read-only host mount the
//! operator adds when uprobes are enabled; `/` on a bare host), with
//! `openat2(RESOLVE_IN_ROOT)`: `..` and symlinks, absolute ones included,
//! resolve inside that root and can never reach the container's files or
//! anything the root does not hold.
//!
//! The file is opened non-blocking (a FIFO or a device cannot stall the
//! agent), accepted only if it is a regular file of at most
//! [`MAX_BINARY_BYTES`] on a real filesystem, and read at offsets by
//! `ringwarden_gobin`, section by section within its named limits, never
//! whole: the file is hostile input (a tenant can write one in its own
//! container, sparse, and name it). The async openers run the parse on a
//! blocking thread under [`ringwarden_gobin::PARSE_DEADLINE`] and cancel it
//! when the deadline passes. The kernel is then handed `/proc/self/fd/<n>`
//! of that same open file, so what it attaches to is exactly what was
//! checked, whatever the path points at by then.

use ringwarden_gobin::{Cancel, Cancellable};
use std::{
    ffi::CString,
    fs::File,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Component, Path, PathBuf},
};

/// Largest binary a uprobe may attach to: 1 GiB. Real programs and
/// libraries stay far below it (a browser is about 250 MiB, a static
/// binary with full debug info a few hundred); anything larger is more
/// likely a disk image or a sparse file than a program.
pub const MAX_BINARY_BYTES: u64 = 1 << 30;

/// Most uprobes one probe attaches: a Go function's entry and at most
/// [`ringwarden_gobin::MAX_RETURNS_PER_FUNCTION`] returns, or the
/// `goRuntime` probe's four entries and the returns of one function. The
/// kernel takes tens of milliseconds per uprobe.
pub const MAX_UPROBES_PER_PROBE: usize = ringwarden_gobin::MAX_RETURNS_PER_FUNCTION + 4;

/// Top-level directories no uprobe binary lives in: devices and kernel
/// interfaces, whose files can block, never end or have side effects when
/// read. Refused before anything is opened (and by the CRD's rule).
pub const REFUSED_DIRS: [&str; 3] = ["dev", "proc", "sys"];

/// Filesystems that hold kernel interfaces rather than files, refused even
/// when a symlink or a mount leads there: (statfs `f_type`, name).
const PSEUDO_FILESYSTEMS: [(i64, &str); 10] = [
    (0x9fa0, "procfs"),
    (0x6265_6572, "sysfs"),
    (0x6462_6720, "debugfs"),
    (0x7472_6163, "tracefs"),
    (0x7363_6673, "securityfs"),
    (0xcafe_4a11, "bpffs"),
    (0x2_7e0eb, "cgroupfs"),
    (0x6367_7270, "cgroup2fs"),
    (0x6e73_6673, "nsfs"),
    (0x6165_676c, "pstore"),
];

/// The host root of this process, once set from the command line.
static HOST_ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Sets the host root every [`crate::probes::ProbeConfig::new`] starts
/// with: where the agent runs is the same for all its probes. Only the
/// first call counts.
pub fn set_host_root(path: PathBuf) {
    let _ = HOST_ROOT.set(path);
}

/// The host root set by [`set_host_root`], or `/`.
pub fn host_root() -> PathBuf {
    HOST_ROOT
        .get()
        .cloned()
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// A uprobe's binary, open and checked, with where its probes attach.
#[derive(Debug)]
pub struct UprobeTarget {
    file: File,
    /// The path as the spec gives it, for messages.
    pub binary: String,
    /// The function (empty for `goRuntime`, which times the runtime's own).
    pub symbol: String,
    pub attach: Attach,
    /// Size of the file in bytes.
    pub size: u64,
}

/// Where a target's probes go, as file offsets, which the kernel wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attach {
    /// A function with the C calling convention: a uprobe at its first
    /// instruction and a uretprobe.
    Native { offset: u64 },
    /// A Go function: plain uprobes at its entry (after the stack-growth
    /// check) and at every `RET`; never a uretprobe, which breaks when Go
    /// moves the goroutine's stack.
    Go {
        /// The Go that built the binary, e.g. `go1.19.8`.
        version: String,
        entry: u64,
        returns: Vec<u64>,
    },
    /// The Go runtime's stop-the-world and GC functions (`goRuntime`).
    GoRuntime(GoRuntimeSites),
}

/// The Go runtime functions a `goRuntime` probe attaches to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoRuntimeSites {
    pub version: String,
    /// Entry of `runtime.stopTheWorld`'s closure: a stop that is not the
    /// collector's follows on this thread.
    pub stw_other: u64,
    /// Entry of `runtime.stopTheWorldWithSema`.
    pub stw_begin: u64,
    /// In `runtime.startTheWorldWithSema`: after its clock read, or
    /// every `RET`.
    pub stw_end: Vec<u64>,
    /// Entry of `runtime.gcResetMarkState` (a GC cycle starts).
    pub gc_start: u64,
    /// Entry of `runtime.gcMarkTermination` (a GC cycle ends).
    pub gc_done: u64,
}

impl Attach {
    /// How many uprobes these sites take.
    pub fn uprobes(&self) -> usize {
        match self {
            Attach::Native { .. } => 2,
            Attach::Go { returns, .. } => 1 + returns.len(),
            Attach::GoRuntime(sites) => 4 + sites.stw_end.len(),
        }
    }

    /// Refuses sites over [`MAX_UPROBES_PER_PROBE`].
    fn check(self) -> Result<Self, TargetError> {
        let n = self.uprobes();
        if n > MAX_UPROBES_PER_PROBE {
            return Err(TargetError(format!(
                "it would take {n} uprobes, more than MAX_UPROBES_PER_PROBE \
                 ({MAX_UPROBES_PER_PROBE}) one probe may attach; probe a smaller function"
            )));
        }
        Ok(self)
    }
}

/// Why a uprobe target was refused; the message names the cause and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TargetError(pub String);

impl UprobeTarget {
    /// Resolves `binary` under `host_root`, opens it and finds `symbol`:
    /// in the ELF symbol tables, or for a Go binary with `ringwarden_gobin`
    /// (its symbol table or, stripped, its `.gopclntab`).
    pub fn open(host_root: &Path, binary: &str, symbol: &str) -> Result<Self, TargetError> {
        Self::open_cancellable(host_root, binary, symbol, &Cancel::new())
    }

    fn open_cancellable(
        host_root: &Path,
        binary: &str,
        symbol: &str,
        cancel: &Cancel,
    ) -> Result<Self, TargetError> {
        let (file, size) = open_binary(host_root, binary)?;
        let attach = resolve_symbol(&file, symbol, cancel)?;
        Ok(Self {
            file,
            binary: binary.into(),
            symbol: symbol.into(),
            attach,
            size,
        })
    }

    /// Resolves and opens a Go binary for a `goRuntime` probe and finds the
    /// runtime functions it attaches to.
    pub fn open_go_runtime(host_root: &Path, binary: &str) -> Result<Self, TargetError> {
        Self::open_go_runtime_cancellable(host_root, binary, &Cancel::new())
    }

    fn open_go_runtime_cancellable(
        host_root: &Path,
        binary: &str,
        cancel: &Cancel,
    ) -> Result<Self, TargetError> {
        let (file, size) = open_binary(host_root, binary)?;
        let attach = Attach::GoRuntime(resolve_go_runtime(&file, cancel)?).check()?;
        Ok(Self {
            file,
            binary: binary.into(),
            symbol: String::new(),
            attach,
            size,
        })
    }

    /// [`UprobeTarget::open`] for kind `uprobe`, [`UprobeTarget::open_go_runtime`]
    /// for kind `goRuntime` (which ignores `symbol`).
    pub fn open_for(
        kind: ringwarden_crds::ProbeKind,
        host_root: &Path,
        binary: &str,
        symbol: &str,
    ) -> Result<Self, TargetError> {
        Self::open_for_cancellable(kind, host_root, binary, symbol, &Cancel::new())
    }

    fn open_for_cancellable(
        kind: ringwarden_crds::ProbeKind,
        host_root: &Path,
        binary: &str,
        symbol: &str,
        cancel: &Cancel,
    ) -> Result<Self, TargetError> {
        match kind {
            ringwarden_crds::ProbeKind::GoRuntime => {
                Self::open_go_runtime_cancellable(host_root, binary, cancel)
            }
            _ => Self::open_cancellable(host_root, binary, symbol, cancel),
        }
    }

    /// Resolves `binary` inside the containers whose roots are given (a
    /// ProbeSet's pods', see [`crate::containers`]), in the first that
    /// holds it, and finds `symbol` (ignored for `goRuntime`). Never on
    /// the host: a binary no container holds is refused, with the fix.
    /// `errors` says why roots that could not be opened were skipped.
    pub fn open_in_containers(
        kind: ringwarden_crds::ProbeKind,
        roots: &[crate::containers::ContainerRoot],
        errors: &[String],
        binary: &str,
        symbol: &str,
    ) -> Result<Self, TargetError> {
        Self::open_in_containers_cancellable(kind, roots, errors, binary, symbol, &Cancel::new())
    }

    fn open_in_containers_cancellable(
        kind: ringwarden_crds::ProbeKind,
        roots: &[crate::containers::ContainerRoot],
        errors: &[String],
        binary: &str,
        symbol: &str,
        cancel: &Cancel,
    ) -> Result<Self, TargetError> {
        let relative = check_path(binary)?;
        let fix = "a ProbeSet's uprobe attaches only to binaries inside the containers of its \
                   own pods, never to the host's or another namespace's: give the path as the \
                   container sees it (e.g. /app/server), or trace a host binary with a \
                   ClusterProbeSet";
        let skipped = if errors.is_empty() {
            String::new()
        } else {
            format!(
                "; containers skipped: {} (reading a container's root needs \
                 CAP_SYS_PTRACE, which the agent has when uprobes are enabled)",
                errors.join("; ")
            )
        };
        if roots.is_empty() {
            return Err(TargetError(format!(
                "no container of the ProbeSet's pods runs on this node to find it \
                 in{skipped}; {fix}"
            )));
        }
        let mut problems = Vec::new();
        for c in roots {
            match open_in_root(&c.root, &relative) {
                Ok(file) => {
                    let size = check_file(&file)?;
                    let attach = match kind {
                        ringwarden_crds::ProbeKind::GoRuntime => {
                            Attach::GoRuntime(resolve_go_runtime(&file, cancel)?).check()?
                        }
                        _ => resolve_symbol(&file, symbol, cancel)?,
                    };
                    return Ok(Self {
                        file,
                        binary: binary.into(),
                        symbol: symbol.into(),
                        attach,
                        size,
                    });
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => problems.push(format!("in the container of process {}: {e}", c.pid)),
            }
        }
        let others = if problems.is_empty() {
            String::new()
        } else {
            format!(" ({})", problems.join("; "))
        };
        Err(TargetError(format!(
            "not in any of the {} containers of the ProbeSet's pods on this node\
             {others}{skipped}; {fix}",
            roots.len()
        )))
    }

    /// [`UprobeTarget::open_in_containers`] on a blocking thread, under
    /// [`ringwarden_gobin::PARSE_DEADLINE`], in the containers of the pods
    /// whose cgroups are `pod_dirs`; `None` when no process runs in them:
    /// nothing to attach to on this node yet.
    pub async fn open_in_containers_async(
        kind: ringwarden_crds::ProbeKind,
        pod_dirs: Vec<PathBuf>,
        binary: String,
        symbol: String,
    ) -> Result<Option<Self>, TargetError> {
        within_deadline(ringwarden_gobin::PARSE_DEADLINE, move |cancel| {
            let (roots, errors) = crate::containers::roots(
                pod_dirs.iter().map(PathBuf::as_path),
                &crate::containers::proc_root(),
            );
            if roots.is_empty() && errors.is_empty() {
                return Ok(None);
            }
            Self::open_in_containers_cancellable(kind, &roots, &errors, &binary, &symbol, cancel)
                .map(Some)
        })
        .await
    }

    /// [`UprobeTarget::open`] on a blocking thread, under
    /// [`ringwarden_gobin::PARSE_DEADLINE`], so neither a slow filesystem
    /// nor a crafted binary stalls the agent's loop.
    pub async fn open_async(
        kind: ringwarden_crds::ProbeKind,
        host_root: PathBuf,
        binary: String,
        symbol: String,
    ) -> Result<Self, TargetError> {
        Self::open_async_within(
            ringwarden_gobin::PARSE_DEADLINE,
            kind,
            host_root,
            binary,
            symbol,
        )
        .await
    }

    /// [`UprobeTarget::open_async`] with its deadline given.
    pub async fn open_async_within(
        deadline: std::time::Duration,
        kind: ringwarden_crds::ProbeKind,
        host_root: PathBuf,
        binary: String,
        symbol: String,
    ) -> Result<Self, TargetError> {
        within_deadline(deadline, move |cancel| {
            Self::open_for_cancellable(kind, &host_root, &binary, &symbol, cancel)
        })
        .await
    }

    /// The open file again (a new descriptor of it), for attaching more
    /// uprobes to exactly what was checked after this target is dropped.
    pub fn try_clone_file(&self) -> std::io::Result<File> {
        self.file.try_clone()
    }

    /// The path under which the kernel finds exactly this open file.
    pub fn attach_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }
}

/// Runs `open` on a blocking thread and waits at most `deadline` for it.
/// Past the deadline the open is cancelled (its parse stops at its next
/// check and its result is dropped) and the error names the deadline.
async fn within_deadline<T: Send + 'static>(
    deadline: std::time::Duration,
    open: impl FnOnce(&Cancel) -> Result<T, TargetError> + Send + 'static,
) -> Result<T, TargetError> {
    let cancel = Cancel::new();
    let flag = cancel.clone();
    let task = tokio::task::spawn_blocking(move || open(&flag));
    match tokio::time::timeout(deadline, task).await {
        Ok(done) => {
            done.map_err(|e| TargetError(format!("opening the binary did not finish: {e}")))?
        }
        Err(_) => {
            cancel.cancel();
            Err(TargetError(format!(
                "opening and reading it took longer than PARSE_DEADLINE ({deadline:?}) and was \
                 abandoned: a real program is read in milliseconds, so check that the path \
                 names the program's own binary on a local filesystem"
            )))
        }
    }
}

/// Resolves `binary` under `host_root` and opens it, checked (see the
/// module's doc); returns the file and its size.
fn open_binary(host_root: &Path, binary: &str) -> Result<(File, u64), TargetError> {
    let relative = check_path(binary)?;
    let root = open_root(host_root)?;
    let file = open_in_root(&root, &relative).map_err(|e| {
        TargetError(match e.raw_os_error() {
            Some(libc::ENOENT) => format!(
                "no such file under the host root {} (symlinks resolve inside it); give the \
                 path of the binary as the node sees it, e.g. /usr/bin/app",
                host_root.display()
            ),
            Some(libc::EXDEV) | Some(libc::ELOOP) => format!(
                "the path leads through a /proc link or too many symlinks ({e}); give the \
                 binary's real path on the node"
            ),
            _ => format!(
                "cannot open it under the host root {}: {e}",
                host_root.display()
            ),
        })
    })?;
    let size = check_file(&file)?;
    Ok((file, size))
}

/// Checks the path as written and returns it relative to the host root,
/// with `.` and `..` resolved lexically (`..` stops at the root, as the
/// kernel resolves it in a root).
pub fn check_path(binary: &str) -> Result<PathBuf, TargetError> {
    if !binary.starts_with('/') {
        return Err(TargetError(format!(
            "{binary:?} is not an absolute path; give the path on the node, e.g. /usr/bin/app"
        )));
    }
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for c in Path::new(binary).components() {
        match c {
            Component::Normal(p) => parts.push(p),
            Component::ParentDir => {
                parts.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    if let Some(top) = parts.first().and_then(|p| p.to_str())
        && REFUSED_DIRS.contains(&top)
    {
        return Err(TargetError(format!(
            "{binary:?} is under /{top}: /dev, /proc and /sys hold devices and kernel \
             interfaces, not programs; give the path of the program's binary on the node, \
             e.g. /usr/bin/app"
        )));
    }
    if parts.is_empty() {
        return Err(TargetError(format!(
            "{binary:?} names the root directory; give the path of a binary, e.g. /usr/bin/app"
        )));
    }
    Ok(parts.iter().collect())
}

fn open_root(host_root: &Path) -> Result<OwnedFd, TargetError> {
    let c = CString::new(host_root.as_os_str().as_encoded_bytes())
        .map_err(|_| TargetError(format!("host root {} contains NUL", host_root.display())))?;
    // SAFETY: a valid NUL-terminated path; the fd returned is owned below.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return Err(TargetError(format!(
            "cannot open the host root {} ({e}); in a pod the agent finds binaries through the \
             read-only host mount the operator adds when uprobes are enabled (Helm value \
             agent.uprobes.enabled); on a host, pass --host-root /",
            host_root.display()
        )));
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `struct open_how` of openat2(2).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// Opens `relative` with `root` as `/`: nothing outside it is reachable,
/// nor /proc magic links. Read-only and non-blocking, so a FIFO or a
/// device returns at once (and is refused by [`check_file`]).
fn open_in_root(root: &OwnedFd, relative: &Path) -> std::io::Result<File> {
    let path = CString::new(relative.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let how = OpenHow {
        flags: (libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: valid fd, NUL-terminated path, and `how` lives across the
    // call with its size passed alongside.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            path.as_ptr(),
            &how as *const OpenHow,
            size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openat2 returned a new fd that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd as i32) })
}

/// Accepts regular files of at most [`MAX_BINARY_BYTES`] on a real
/// filesystem; returns the size.
fn check_file(file: &File) -> Result<u64, TargetError> {
    use std::os::unix::fs::FileTypeExt;
    let meta = file
        .metadata()
        .map_err(|e| TargetError(format!("cannot stat it: {e}")))?;
    let ft = meta.file_type();
    let what = if ft.is_file() {
        None
    } else if ft.is_dir() {
        Some("a directory")
    } else if ft.is_fifo() {
        Some("a named pipe (FIFO)")
    } else if ft.is_char_device() {
        Some("a character device")
    } else if ft.is_block_device() {
        Some("a block device")
    } else if ft.is_socket() {
        Some("a socket")
    } else {
        Some("not a regular file")
    };
    if let Some(what) = what {
        return Err(TargetError(format!(
            "it is {what}, not a program: a uprobe binary must be a regular file, e.g. \
             /usr/bin/app"
        )));
    }
    let mut fs = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: valid fd and a buffer of the right type.
    if unsafe { libc::fstatfs(file.as_raw_fd(), fs.as_mut_ptr()) } == 0 {
        // `f_type`'s width differs between architectures and C libraries.
        #[allow(clippy::unnecessary_cast)]
        // SAFETY: fstatfs succeeded, so the buffer is filled.
        let f_type = unsafe { fs.assume_init() }.f_type as i64;
        if let Some((_, name)) = PSEUDO_FILESYSTEMS.iter().find(|(t, _)| *t == f_type) {
            return Err(TargetError(format!(
                "it is on {name}, a kernel interface, not a program: give the path of the \
                 program's binary on the node, e.g. /usr/bin/app"
            )));
        }
    }
    let size = meta.len();
    if size > MAX_BINARY_BYTES {
        return Err(TargetError(format!(
            "it is {size} bytes, more than the {MAX_BINARY_BYTES} bytes (1 GiB) a uprobe \
             binary may have; is this really the program?"
        )));
    }
    if size == 0 {
        return Err(TargetError("it is empty, not a program".into()));
    }
    Ok(size)
}

/// Where to probe `symbol`: a Go function through `ringwarden_gobin`,
/// anything else through the dynamic symbols or the symbol table. Reads
/// the headers, the section table and, a chunk at a time, the tables it
/// needs, within `ringwarden_gobin`'s limits; stops once `cancel` is set.
fn resolve_symbol(file: &File, symbol: &str, cancel: &Cancel) -> Result<Attach, TargetError> {
    let source = Cancellable {
        source: file,
        cancel,
    };
    if let Some(go) = ringwarden_gobin::inspect(&source).map_err(|e| TargetError(e.0))? {
        let f = ringwarden_gobin::function(&source, symbol).map_err(|e| TargetError(e.0))?;
        return Attach::Go {
            version: go.version,
            entry: f.entry_offset,
            returns: f.return_offsets,
        }
        .check();
    }
    match ringwarden_gobin::symbol_offset(&source, symbol).map_err(|e| TargetError(e.0))? {
        Some(offset) => Ok(Attach::Native { offset }),
        None => Err(TargetError(format!(
            "no symbol {symbol:?} in its symbol tables (.dynsym, .symtab); list them with \
             `nm -D` or `nm` on the node, and note that stripped binaries keep only .dynsym"
        ))),
    }
}

/// The runtime functions of a Go binary that `goRuntime` attaches to.
fn resolve_go_runtime(file: &File, cancel: &Cancel) -> Result<GoRuntimeSites, TargetError> {
    let cache = Cancellable {
        source: file,
        cancel,
    };
    let Some(go) = ringwarden_gobin::inspect(&cache).map_err(|e| TargetError(e.0))? else {
        return Err(TargetError(
            "it was not built by Go (no .go.buildinfo, .gopclntab or .note.go.buildid \
             section): kind goRuntime times the Go runtime; give the path of a Go program"
                .into(),
        ));
    };
    let function = |name: &str| {
        ringwarden_gobin::function(&cache, name)
            .map_err(|e| TargetError(format!("runtime function {name}: {}", e.0)))
    };
    let start = function("runtime.startTheWorldWithSema")?;
    // The world runs again where the runtime reads its clock for the
    // pause (`startTime := nanotime()`), before it wakes an idle P, which
    // may start a thread: tens of microseconds that are no pause. Go
    // 1.22 reads that clock only when its caller did not; there, and if
    // the call is not found, the pause ends at the function's returns.
    let clock = ringwarden_gobin::lookup(&cache, "runtime.nanotime1").ok();
    let after_clock = clock
        .filter(|_| (go.major, go.minor) <= (1, 21))
        .and_then(|c| {
            start
                .calls
                .iter()
                .rfind(|call| call.target == c.address)
                .map(|call| call.after_offset)
        });
    Ok(GoRuntimeSites {
        stw_other: function("runtime.stopTheWorld.func1")?.entry_offset,
        stw_begin: function("runtime.stopTheWorldWithSema")?.entry_offset,
        stw_end: match after_clock {
            Some(at) => vec![at],
            None => start.return_offsets,
        },
        gc_start: function("runtime.gcResetMarkState")?.entry_offset,
        gc_done: function("runtime.gcMarkTermination")?.entry_offset,
        version: go.version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temporary directory standing in for the host's root.
    struct Root(PathBuf);

    impl Root {
        fn new(name: &str) -> Self {
            let p = std::env::temp_dir().join(format!("rw-root-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(p.join("usr/bin")).unwrap();
            Self(p)
        }

        fn open(&self, binary: &str, symbol: &str) -> Result<UprobeTarget, TargetError> {
            UprobeTarget::open(&self.0, binary, symbol)
        }
    }

    impl Drop for Root {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn elf(section: &[u8], symbol: &[u8]) -> Vec<u8> {
        use object::{
            Architecture, BinaryFormat, Endianness, SectionKind, SymbolFlags, SymbolKind,
            SymbolScope,
            write::{Object, StandardSection, Symbol, SymbolSection},
        };
        let mut obj = Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
        let text = obj.section_id(StandardSection::Text);
        let at = obj.append_section_data(text, &[0x90, 0x90, 0xc3], 1);
        obj.add_symbol(Symbol {
            name: symbol.to_vec(),
            value: at + 1,
            size: 2,
            kind: SymbolKind::Text,
            scope: SymbolScope::Dynamic,
            weak: false,
            section: SymbolSection::Section(text),
            flags: SymbolFlags::None,
        });
        let s = obj.add_section(vec![], section.to_vec(), SectionKind::ReadOnlyData);
        obj.append_section_data(s, b"\xff Go buildinf:", 1);
        obj.write().unwrap()
    }

    #[test]
    fn a_symbol_resolves_to_its_offset_in_the_file() {
        let root = Root::new("sym");
        std::fs::write(
            root.0.join("usr/bin/app"),
            elf(b".rodata.other", b"handler"),
        )
        .unwrap();
        let t = root.open("/usr/bin/app", "handler").unwrap();
        let Attach::Native { offset } = t.attach else {
            panic!("a C function is probed natively: {t:?}")
        };
        assert!(offset > 0 && offset < t.size, "{t:?}");
        assert!(t.attach_path().starts_with("/proc/self/fd/"));
        let e = root.open("/usr/bin/app", "missing").unwrap_err().0;
        assert!(
            e.contains("no symbol \"missing\"") && e.contains("nm"),
            "{e}"
        );
    }

    #[test]
    fn a_go_binary_whose_version_cannot_be_told_is_refused_with_the_reason() {
        // Go binaries are told by their sections and probed at their
        // returns (e2e/tests/go.rs); one whose Go version cannot be read
        // might predate the register ABI the pairing relies on.
        let root = Root::new("go");
        for section in [&b".go.buildinfo"[..], b".gopclntab"] {
            std::fs::write(root.0.join("usr/bin/app"), elf(section, b"main.handler")).unwrap();
            let e = root.open("/usr/bin/app", "main.handler").unwrap_err().0;
            assert!(
                e.contains("Go binary") && e.contains("cannot be told") && e.contains("rebuild"),
                "{e}"
            );
        }
    }

    #[tokio::test]
    async fn a_parse_past_its_deadline_is_abandoned_and_cancelled() {
        let deadline = std::time::Duration::from_millis(50);
        let stopped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = stopped.clone();
        let started = std::time::Instant::now();
        // Work that never ends unless cancelled, as a parse's loops.
        let e = within_deadline(deadline, move |cancel| -> Result<(), TargetError> {
            while !cancel.is_cancelled() {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            seen.store(true, std::sync::atomic::Ordering::SeqCst);
            Err(TargetError("cancelled".into()))
        })
        .await
        .unwrap_err()
        .0;
        assert!(started.elapsed() < deadline * 20, "{:?}", started.elapsed());
        assert!(e.contains("PARSE_DEADLINE") && e.contains("50ms"), "{e}");
        // The abandoned work saw the flag and stopped.
        for _ in 0..100 {
            if stopped.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(stopped.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[test]
    fn a_probe_over_its_uprobe_limit_is_refused_not_attached() {
        let returns = vec![0x1000; MAX_UPROBES_PER_PROBE];
        let e = Attach::Go {
            version: "go1.19.8".into(),
            entry: 0x1000,
            returns,
        }
        .check()
        .unwrap_err()
        .0;
        assert!(e.contains("MAX_UPROBES_PER_PROBE"), "{e}");
        let within = Attach::Go {
            version: "go1.19.8".into(),
            entry: 0x1000,
            returns: vec![0x1000; ringwarden_gobin::MAX_RETURNS_PER_FUNCTION],
        };
        assert_eq!(within.clone().check(), Ok(within));
    }

    #[test]
    fn a_sparse_binary_is_refused_by_the_agent_within_its_limits() {
        // An ELF whose symbol table claims 600 MiB of a sparse file.
        let root = Root::new("sparse");
        let path = root.0.join("usr/bin/app");
        let mut bytes = elf(b".rodata.other", b"handler");
        let symtab = symtab_header_offset(&bytes);
        let len = bytes.len() as u64;
        // sh_offset at 24, sh_size at 32 of the section header.
        bytes[symtab + 24..symtab + 32].copy_from_slice(&len.to_le_bytes());
        bytes[symtab + 32..symtab + 40].copy_from_slice(&(600u64 << 20).to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len + (600 << 20))
            .unwrap();
        let e = root.open("/usr/bin/app", "handler").unwrap_err().0;
        assert!(e.contains("MAX_SYMBOLS"), "{e}");
    }

    /// Where the `.symtab` section header of an ELF64 file is.
    fn symtab_header_offset(bytes: &[u8]) -> usize {
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        let u16_at = |at: usize| u16::from_le_bytes(bytes[at..at + 2].try_into().unwrap());
        let shoff = u64_at(40) as usize;
        (0..usize::from(u16_at(60)))
            .map(|i| shoff + 64 * i)
            .find(|&h| u32::from_le_bytes(bytes[h + 4..h + 8].try_into().unwrap()) == 2)
            .unwrap()
    }

    #[test]
    fn symlinks_resolve_inside_the_host_root() {
        let root = Root::new("links");
        let outside = root.0.with_extension("outside");
        std::fs::write(&outside, elf(b".rodata.other", b"handler")).unwrap();
        // Absolute and relative links that would leave the root elsewhere.
        std::os::unix::fs::symlink(&outside, root.0.join("usr/bin/abs")).unwrap();
        std::os::unix::fs::symlink("../../../../../../..", root.0.join("usr/bin/up")).unwrap();
        let e = root.open("/usr/bin/abs", "handler").unwrap_err().0;
        std::fs::remove_file(&outside).unwrap();
        assert!(e.contains("no such file under the host root"), "{e}");
        let e = root.open("/usr/bin/up/etc/passwd", "x").unwrap_err().0;
        assert!(e.contains("no such file under the host root"), "{e}");
        // A link inside the root is followed.
        std::fs::write(
            root.0.join("usr/bin/real"),
            elf(b".rodata.other", b"handler"),
        )
        .unwrap();
        std::os::unix::fs::symlink("/usr/bin/real", root.0.join("usr/bin/alias")).unwrap();
        assert!(root.open("/usr/bin/alias", "handler").is_ok());
    }

    #[test]
    fn fifos_devices_directories_and_huge_files_are_refused_without_blocking() {
        let root = Root::new("kinds");
        let fifo = CString::new(
            root.0
                .join("usr/bin/fifo")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let e = root.open("/usr/bin/fifo", "f").unwrap_err().0;
        assert!(e.contains("named pipe"), "{e}");
        let e = root.open("/usr/bin", "f").unwrap_err().0;
        assert!(e.contains("a directory"), "{e}");
        let big = std::fs::File::create(root.0.join("usr/bin/big")).unwrap();
        big.set_len(MAX_BINARY_BYTES + 1).unwrap();
        let e = root.open("/usr/bin/big", "f").unwrap_err().0;
        assert!(e.contains("1 GiB"), "{e}");
        std::fs::File::create(root.0.join("usr/bin/empty")).unwrap();
        let e = root.open("/usr/bin/empty", "f").unwrap_err().0;
        assert!(e.contains("empty"), "{e}");
        // The real /dev/zero, reached through a root of `/`.
        let e = UprobeTarget::open(Path::new("/"), "/usr/../dev/zero", "f")
            .unwrap_err()
            .0;
        assert!(e.contains("/dev, /proc and /sys"), "{e}");
    }

    #[test]
    fn paths_under_dev_proc_and_sys_are_refused_however_spelled() {
        for p in [
            "/dev/zero",
            "/proc/self/exe",
            "/sys/kernel/tracing/trace_pipe",
            "//proc/1/exe",
            "/usr/../proc/kcore",
            "/./sys/x",
            "/../../dev/mem",
        ] {
            let e = check_path(p).unwrap_err().0;
            assert!(e.contains("/dev, /proc and /sys"), "{p}: {e}");
        }
    }

    #[test]
    fn other_absolute_paths_become_relative_to_the_host_root() {
        assert_eq!(
            check_path("/usr/bin/app").unwrap(),
            Path::new("usr/bin/app")
        );
        assert_eq!(
            check_path("/opt/./a/../b/app").unwrap(),
            Path::new("opt/b/app")
        );
        assert_eq!(
            check_path("/devices/app").unwrap(),
            Path::new("devices/app")
        );
        assert!(check_path("bin/app").unwrap_err().0.contains("absolute"));
        assert!(check_path("/").unwrap_err().0.contains("root directory"));
    }
}
