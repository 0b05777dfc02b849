//! The loader's own checks (no kernel needed).

use super::*;

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
