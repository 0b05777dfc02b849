//! The `ProbeSet` custom resource.

use std::{collections::BTreeMap, time::Duration};

use kube::CustomResource;
use ringwarden_core::duration::serde_duration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Declares eBPF latency probes: which kernel events to time, on which nodes,
/// for which processes. The operator turns ProbeSets into node-agent
/// configuration; in standalone mode the agent reads them from files.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "ringwarden.dev",
    version = "v1alpha1",
    kind = "ProbeSet",
    namespaced,
    status = "ProbeSetStatus",
    shortname = "ps",
    doc = "Declares eBPF latency probes: which kernel events to time, on which nodes, for which processes.",
    category = "ringwarden",
    printcolumn = r#"{"name":"Probes","type":"integer","jsonPath":".status.probes"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ProbeSetSpec {
    /// Labels a node must carry for its agent to run these probes. Empty
    /// selects every node (standalone mode ignores it).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// The probes to run. Names must be unique within the ProbeSet.
    pub probes: Vec<ProbeSpec>,

    /// How often agents read the kernel counters and report them, as a
    /// duration like `10s` or `1m`.
    #[serde(default = "default_report_interval", with = "serde_duration")]
    #[schemars(with = "String")]
    pub report_interval: Duration,
}

fn default_report_interval() -> Duration {
    Duration::from_secs(10)
}

/// One eBPF probe.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbeSpec {
    /// Name of the probe, unique within the ProbeSet: a lowercase DNS label
    /// such as `sys`. Appears as the `probe` label on metrics.
    pub name: String,

    /// What the probe times. `syscalls`: every system call from entry to
    /// return, one latency series per syscall, errors counted.
    pub kind: ProbeKind,

    /// Which processes are observed. Without a filter every process on the
    /// node is (except the agent itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<ProbeFilter>,
}

/// The probe catalog.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ProbeKind {
    /// System call latency (raw_syscalls enter → exit), per syscall.
    Syscalls,
    /// TCP connect latency (SYN_SENT → ESTABLISHED), per destination port.
    TcpConnect,
    /// TCP retransmits, per destination address and port.
    TcpRetransmit,
    /// Run-queue delay (wakeup → running).
    Runqueue,
    /// Block I/O latency (issue → complete), per device and operation.
    #[serde(rename = "blockIO")]
    BlockIo,
    /// User-space function latency (uprobe → uretprobe).
    Uprobe,
}

impl ProbeKind {
    /// The name used in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Syscalls => "syscalls",
            Self::TcpConnect => "tcpConnect",
            Self::TcpRetransmit => "tcpRetransmit",
            Self::Runqueue => "runqueue",
            Self::BlockIo => "blockIO",
            Self::Uprobe => "uprobe",
        }
    }
}

/// Restricts a probe to some processes. All given criteria must match.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbeFilter {
    /// Process ids (thread-group ids) to observe; threads of these processes
    /// are included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pids: Vec<u32>,
    /// Command names to observe, as the kernel stores them (`comm`, at most
    /// 15 bytes, see `/proc/<pid>/comm`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub comms: Vec<String>,
}

/// Observed state of a ProbeSet, written by the operator.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbeSetStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Number of probes in the spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<u32>,
}

/// A problem with a spec, naming the field and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, like `spec.probes[1].name`.
    pub field: String,
    /// What is wrong and what to write instead.
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Longest `comm` the kernel keeps (TASK_COMM_LEN - 1).
pub const MAX_COMM_LEN: usize = 15;

impl ProbeSetSpec {
    /// Checks what the types cannot: unique DNS-label names, sensible
    /// filters. Returns every problem, not just the first.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut err = |field: String, message: String| errors.push(FieldError { field, message });
        if self.probes.is_empty() {
            err(
                "spec.probes".into(),
                "no probes given; add at least one, e.g. `- {name: sys, kind: syscalls}`".into(),
            );
        }
        if self.report_interval < Duration::from_millis(100) {
            err(
                "spec.reportInterval".into(),
                "must be at least 100ms; use e.g. `10s`".into(),
            );
        }
        let mut seen = BTreeMap::new();
        for (i, p) in self.probes.iter().enumerate() {
            let at = format!("spec.probes[{i}]");
            if !is_dns_label(&p.name) {
                err(
                    format!("{at}.name"),
                    format!(
                        "{:?} is not a DNS label; use 1-63 lowercase letters, digits and '-', \
                         starting and ending with a letter or digit, e.g. \"sys\"",
                        p.name
                    ),
                );
            }
            if let Some(first) = seen.insert(p.name.as_str(), i) {
                err(
                    format!("{at}.name"),
                    format!(
                        "{:?} is already the name of spec.probes[{first}]; probe names must be unique",
                        p.name
                    ),
                );
            }
            let Some(filter) = &p.filter else { continue };
            for (j, pid) in filter.pids.iter().enumerate() {
                if *pid == 0 {
                    err(
                        format!("{at}.filter.pids[{j}]"),
                        "0 is not a process id; use a pid from `pgrep`".into(),
                    );
                }
            }
            for (j, comm) in filter.comms.iter().enumerate() {
                if comm.is_empty() || comm.len() > MAX_COMM_LEN {
                    err(
                        format!("{at}.filter.comms[{j}]"),
                        format!(
                            "{comm:?} is not a kernel comm; use 1 to {MAX_COMM_LEN} bytes, \
                             as `cat /proc/<pid>/comm` shows it"
                        ),
                    );
                }
            }
        }
        errors
    }
}

fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    (1..=63).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(probes: Vec<ProbeSpec>) -> ProbeSetSpec {
        ProbeSetSpec {
            node_selector: BTreeMap::new(),
            probes,
            report_interval: Duration::from_secs(10),
        }
    }

    fn probe(name: &str) -> ProbeSpec {
        ProbeSpec {
            name: name.into(),
            kind: ProbeKind::Syscalls,
            filter: None,
        }
    }

    #[test]
    fn a_valid_spec_has_no_errors() {
        assert_eq!(spec(vec![probe("sys"), probe("sys-2")]).validate(), vec![]);
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let mut p = probe("Sys_1");
        p.filter = Some(ProbeFilter {
            pids: vec![1, 0],
            comms: vec!["a-very-long-command-name".into()],
        });
        let fields: Vec<_> = spec(vec![p, probe("ok"), probe("ok")])
            .validate()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            [
                "spec.probes[0].name",
                "spec.probes[0].filter.pids[1]",
                "spec.probes[0].filter.comms[0]",
                "spec.probes[2].name",
            ]
        );
    }

    #[test]
    fn an_empty_probe_list_is_rejected() {
        let errors = spec(vec![]).validate();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "spec.probes");
    }

    #[test]
    fn probe_kinds_use_their_manifest_names() {
        for kind in [
            ProbeKind::Syscalls,
            ProbeKind::TcpConnect,
            ProbeKind::TcpRetransmit,
            ProbeKind::Runqueue,
            ProbeKind::BlockIo,
            ProbeKind::Uprobe,
        ] {
            let json = serde_json::to_value(kind).unwrap();
            assert_eq!(json, serde_json::Value::String(kind.as_str().into()));
        }
    }
}
