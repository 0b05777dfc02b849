//! The loader's own checks (no kernel needed).

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
        series_name(ProbeKind::Syscalls, &OVERFLOW_SERIES, None),
        "other"
    );
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
