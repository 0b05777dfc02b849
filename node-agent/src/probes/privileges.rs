//! Whether this process may load and attach the probes, and what to do
//! when the kernel says it may not.

use super::{KERNEL_BTF, ProbeError};

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Whether an effective capability set may load and attach tracing programs.
pub(super) fn caps_allow_tracing(cap_eff: u64) -> bool {
    let has = |cap: u32| cap_eff & (1 << cap) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
}

/// Checks, before anything is loaded, that this process may load and attach
/// tracing programs and that the kernel has BTF, so the error says what to do.
pub fn check_privileges() -> Result<(), ProbeError> {
    check_capabilities()?;
    if !std::path::Path::new(KERNEL_BTF).exists() {
        return Err(ProbeError::MissingBtf(format!(
            "{KERNEL_BTF}: no such file"
        )));
    }
    Ok(())
}

/// Checks that this process may load and attach tracing programs.
pub fn check_capabilities() -> Result<(), ProbeError> {
    let cap_eff = effective_capabilities();
    if caps_allow_tracing(cap_eff) {
        Ok(())
    } else {
        Err(ProbeError::Privileges(cap_eff))
    }
}

/// Whether an error message is the kernel's EPERM or EACCES.
pub(super) fn is_permission_error(message: &str) -> bool {
    message.contains("Operation not permitted") || message.contains("Permission denied")
}

/// This process's effective capabilities (0 if unreadable).
pub(super) fn effective_capabilities() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0)
}

/// The capabilities of `needed` that `cap_eff` lacks, by name.
pub(super) fn missing_capabilities(
    cap_eff: u64,
    needed: &[(u32, &'static str)],
) -> Vec<&'static str> {
    needed
        .iter()
        .filter(|(cap, _)| cap_eff & (1 << cap) == 0)
        .map(|(_, name)| *name)
        .collect()
}

/// What to do about a permission error from loading or attaching a
/// tracepoint program: which of CAP_BPF and CAP_PERFMON is missing.
pub(super) fn permission_hint(message: &str) -> String {
    if !is_permission_error(message) {
        return String::new();
    }
    let missing = missing_capabilities(
        effective_capabilities(),
        &[(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")],
    );
    if missing.is_empty() {
        "; the agent has CAP_BPF and CAP_PERFMON, so a security module (SELinux, AppArmor, \
         lockdown) or a seccomp profile denies it"
            .into()
    } else {
        format!(
            "; this process lacks {}: run as root or grant CAP_BPF and CAP_PERFMON",
            missing.join(" and ")
        )
    }
}

/// Why the kernel refused to attach a uprobe with EPERM or EACCES, and
/// what to do. Linux 6.16 (and the stable kernels that took upstream commit
/// ba677dbe77af, July 2025) attaches uprobes only for CAP_SYS_ADMIN:
/// CAP_PERFMON no longer suffices, because a uprobe placed inside an
/// instruction can corrupt the traced program.
pub(super) fn uprobe_permission_message(cap_eff: u64, error: &str) -> String {
    let missing = missing_capabilities(
        cap_eff,
        &[
            (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
            (CAP_BPF, "CAP_BPF"),
            (CAP_PERFMON, "CAP_PERFMON"),
        ],
    );
    if missing.is_empty() {
        return format!(
            "the kernel refused the uprobe ({error}) although the agent has CAP_SYS_ADMIN, \
             CAP_BPF and CAP_PERFMON: a security module (SELinux, AppArmor, lockdown) or a \
             seccomp profile denies it"
        );
    }
    format!(
        "the kernel refused the uprobe ({error}): the agent lacks {}. This kernel attaches \
         uprobes only with CAP_SYS_ADMIN (Linux 6.16 and stable kernels since July 2025; \
         CAP_PERFMON is not enough). In a cluster, set the Helm value agent.uprobes.enabled=true, \
         which grants the agent CAP_SYS_ADMIN; standalone, run as root",
        missing.join(", ")
    )
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
    fn permission_errors_name_the_missing_capability() {
        assert_eq!(permission_hint("Invalid argument"), "");
        let bpf_only = missing_capabilities(
            1 << CAP_BPF,
            &[(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")],
        );
        assert_eq!(bpf_only, ["CAP_PERFMON"]);
    }

    #[test]
    fn a_refused_uprobe_names_cap_sys_admin_and_the_chart_value() {
        let tracing_only = (1 << CAP_BPF) | (1 << CAP_PERFMON);
        let m = uprobe_permission_message(tracing_only, "Permission denied (os error 13)");
        assert!(
            m.contains("lacks CAP_SYS_ADMIN.") && m.contains("agent.uprobes.enabled=true"),
            "{m}"
        );
        assert!(!m.contains("nm "), "not a symbol problem: {m}");
        let everything = (1 << CAP_SYS_ADMIN) | tracing_only;
        let m = uprobe_permission_message(everything, "Permission denied (os error 13)");
        assert!(m.contains("security module"), "{m}");
    }
}
