//! Admission, three ways: every fixture is judged by the generated schema
//! (as a JSON schema), by the CRDs' CEL rules (evaluated with the `cel`
//! crate, `self` bound where the API server binds it) and by the Rust
//! `validate()` behind standalone mode. Good fixtures pass all three; bad
//! ones are refused by the schema or CEL as stated and by Rust, naming the
//! same field. Every rule found in the schemas must be seen admitting and
//! refusing something, so a new rule without cases fails here.

mod common;

use std::collections::BTreeMap;

use common::{Outcome, evaluate, rust_errors, schema_errors, sites, yaml};
use proptest::prelude::*;
use ringwarden_core::{duration, quantity};
use ringwarden_crds::cel::{BYTES_REGEX, DURATION_DAYS_REGEX, DURATION_REGEX};
use serde_json::{Value, json};

const PROBESET: &str = "
apiVersion: ringwarden.dev/v1alpha1
kind: ProbeSet
metadata: {name: web, namespace: shop}
spec:
  nodeSelector: {kubernetes.io/os: linux}
  podSelector: {matchLabels: {app: web}}
  reportInterval: 10s
  maxDropRate: 0.01
  ringBuffer: {drainInterval: 100ms, burstFactor: 2, nodeBudget: 64Mi}
  probes:
    - name: sys
      kind: syscalls
      maxSeries: 128
      filter: {pids: [1], comms: [nginx], cgroups: [system.slice/nginx.service]}
      export: {policy: slowerThan, slowerThan: 10ms}
      peakEventRate: 1000
      sampling: 0.5
      priority: 1
    - name: dns
      kind: uprobe
      uprobe: {binary: /usr/lib/x86_64-linux-gnu/libc.so.6, symbol: getaddrinfo}
    - name: retransmits
      kind: tcpRetransmit
      filter: {cgroups: [/sys/fs/cgroup/kubepods.slice]}
    - name: gc
      kind: goRuntime
      goRuntime: {binary: /usr/local/bin/server}
";

const SLO: &str = "
apiVersion: ringwarden.dev/v1alpha1
kind: SLO
metadata: {name: read-fast, namespace: shop}
spec:
  probeSet: web
  probe: sys
  series: [read, write]
  indicator: {latency: {threshold: 100ms}}
  target: 99.9
  window: 30d
  maxDropRate: 0.01
";

/// Sets the value at a JSON pointer, creating the last key if needed.
fn set(object: &mut Value, pointer: &str, value: Value) {
    let (parent, key) = pointer.rsplit_once('/').expect("a pointer");
    let parent = object
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("no {parent} in the fixture"));
    match parent {
        Value::Object(map) => {
            map.insert(key.replace("~1", "/"), value);
        }
        Value::Array(items) => items[key.parse::<usize>().expect("an index")] = value,
        _ => panic!("{pointer}: parent is a scalar"),
    }
}

/// Removes the value at a JSON pointer.
fn del(object: &mut Value, pointer: &str) {
    let (parent, key) = pointer.rsplit_once('/').expect("a pointer");
    match object.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.remove(key).unwrap_or_else(|| panic!("no {pointer}"));
        }
        Some(Value::Array(items)) => {
            items.remove(key.parse::<usize>().expect("an index"));
        }
        _ => panic!("no {parent} in the fixture"),
    }
}

enum Expect {
    Valid,
    Invalid {
        /// The field Rust blames; the schema and CEL blame it or a parent.
        field: &'static str,
        /// Messages (prefixes) of the CEL rules that must refuse it; no other may.
        cel: &'static [&'static str],
        /// Whether the plain schema (types, ranges, enums, sizes) refuses it.
        schema: bool,
    },
}

struct Case {
    name: &'static str,
    kind: &'static str,
    object: Value,
    expect: Expect,
}

fn case(
    name: &'static str,
    kind: &'static str,
    edit: impl FnOnce(&mut Value),
    expect: Expect,
) -> Case {
    let mut object = yaml(if kind == "SLO" { SLO } else { PROBESET });
    edit(&mut object);
    Case {
        name,
        kind,
        object,
        expect,
    }
}

fn valid(name: &'static str, kind: &'static str, edit: impl FnOnce(&mut Value)) -> Case {
    case(name, kind, edit, Expect::Valid)
}

fn bad_cel(
    name: &'static str,
    kind: &'static str,
    edit: impl FnOnce(&mut Value),
    field: &'static str,
    cel: &'static [&'static str],
) -> Case {
    case(
        name,
        kind,
        edit,
        Expect::Invalid {
            field,
            cel,
            schema: false,
        },
    )
}

fn bad_schema(
    name: &'static str,
    kind: &'static str,
    edit: impl FnOnce(&mut Value),
    field: &'static str,
) -> Case {
    case(
        name,
        kind,
        edit,
        Expect::Invalid {
            field,
            cel: &[],
            schema: true,
        },
    )
}

const PS: &str = "ProbeSet";

/// A label key whose DNS-subdomain prefix has 254 characters: every label
/// of it is well formed, only the length is not.
const LONG_PREFIX_KEY: &str = concat!(
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.",
    "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb.",
    "ccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc.",
    "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd/os"
);

fn cases() -> Vec<Case> {
    let s = |v: &str| json!(v);
    vec![
        // ---- ProbeSet, admitted ----
        valid("the full ProbeSet", PS, |_| {}),
        valid("the smallest ProbeSet", PS, |o| {
            set(
                o,
                "/spec",
                json!({"probes": [{"name": "sys", "kind": "syscalls"}]}),
            )
        }),
        valid("durations in several spellings", PS, |o| {
            set(o, "/spec/reportInterval", s("1m30s"));
            set(o, "/spec/ringBuffer/drainInterval", s("1.5ms"));
            set(o, "/spec/probes/0/export/slowerThan", s(".5s"));
        }),
        valid("duration bounds are inclusive", PS, |o| {
            set(o, "/spec/reportInterval", s("100ms"));
            set(o, "/spec/ringBuffer/drainInterval", s("10s"));
        }),
        valid("the shortest drain interval", PS, |o| {
            set(o, "/spec/ringBuffer/drainInterval", s("1ms"))
        }),
        valid("quantities in bytes and decimal units", PS, |o| {
            set(o, "/spec/ringBuffer/nodeBudget", s("4096"))
        }),
        valid("a decimal quantity", PS, |o| {
            set(o, "/spec/ringBuffer/nodeBudget", s("1G"))
        }),
        valid("the largest node budgets in every unit", PS, |o| {
            set(o, "/spec/ringBuffer/nodeBudget", s("64Gi"))
        }),
        valid("the largest node budget in bytes", PS, |o| {
            set(o, "/spec/ringBuffer/nodeBudget", s("68719476736"))
        }),
        valid("the largest node budget in kibibytes", PS, |o| {
            set(o, "/spec/ringBuffer/nodeBudget", s("67108864Ki"))
        }),
        valid(
            "the largest node budget in mebibytes and decimal units",
            PS,
            |o| set(o, "/spec/ringBuffer/nodeBudget", s("65536Mi")),
        ),
        valid("68 gigabytes", PS, |o| {
            set(o, "/spec/ringBuffer/nodeBudget", s("68G"))
        }),
        valid("zero terabytes", PS, |o| {
            set(o, "/spec/ringBuffer/nodeBudget", s("0Ti"))
        }),
        valid("bounds of tenant numbers", PS, |o| {
            set(o, "/spec/probes/0/peakEventRate", json!(1e8));
            set(o, "/spec/probes/0/priority", json!(1000));
            set(o, "/spec/probes/1/priority", json!(-1000));
            set(o, "/spec/probes/0/sampling", json!(1.0 / 1048576.0));
        }),
        valid("edge numbers", PS, |o| {
            set(o, "/spec/maxDropRate", json!(0));
            set(o, "/spec/ringBuffer/burstFactor", json!(100));
            set(o, "/spec/probes/0/sampling", json!(1));
            set(o, "/spec/probes/0/maxSeries", json!(4096));
        }),
        valid("export of errors with a declared rate", PS, |o| {
            set(o, "/spec/probes/1/export", json!({"policy": "errors"}));
            set(o, "/spec/probes/1/peakEventRate", json!(50));
        }),
        valid("export none needs no rate", PS, |o| {
            set(o, "/spec/probes/0/export", json!({"policy": "none"}));
            set(o, "/spec/probes/0/peakEventRate", json!(0));
        }),
        valid("a 63-character probe name", PS, |o| {
            set(o, "/spec/probes/0/name", s(&"a".repeat(63)))
        }),
        valid("a 15-byte comm", PS, |o| {
            set(o, "/spec/probes/0/filter/comms/0", s("kworker/u16:2-e"))
        }),
        valid("tcpRetransmit with empty pid and comm lists", PS, |o| {
            set(o, "/spec/probes/2/filter/pids", json!([]));
            set(o, "/spec/probes/2/filter/comms", json!([]));
        }),
        valid("64 probes", PS, |o| {
            let probes: Vec<_> = (0..64)
                .map(|i| json!({"name": format!("p{i}"), "kind": "runqueue"}))
                .collect();
            set(o, "/spec/probes", json!(probes));
        }),
        // ---- ProbeSet, refused by CEL ----
        bad_cel(
            "duplicate probe names",
            PS,
            |o| set(o, "/spec/probes/1/name", s("sys")),
            "spec.probes[1].name",
            &["spec.probes: probe names must be unique"],
        ),
        bad_cel(
            "a uprobe without its target",
            PS,
            |o| del(o, "/spec/probes/1/uprobe"),
            "spec.probes[1].uprobe",
            &["uprobe is required when kind is uprobe"],
        ),
        bad_cel(
            "a uprobe target on another kind",
            PS,
            |o| {
                set(
                    o,
                    "/spec/probes/0/uprobe",
                    json!({"binary": "/bin/sh", "symbol": "main"}),
                )
            },
            "spec.probes[0].uprobe",
            &["uprobe is only used with kind: uprobe"],
        ),
        bad_cel(
            "a goRuntime probe without its binary",
            PS,
            |o| del(o, "/spec/probes/3/goRuntime"),
            "spec.probes[3].goRuntime",
            &["goRuntime is required when kind is goRuntime"],
        ),
        bad_cel(
            "a goRuntime binary on another kind",
            PS,
            |o| set(o, "/spec/probes/0/goRuntime", json!({"binary": "/bin/app"})),
            "spec.probes[0].goRuntime",
            &["goRuntime is only used with kind: goRuntime"],
        ),
        bad_cel(
            "a relative goRuntime binary",
            PS,
            |o| set(o, "/spec/probes/3/goRuntime/binary", s("server")),
            "spec.probes[3].goRuntime.binary",
            &["binary must be an absolute path"],
        ),
        bad_cel(
            "a goRuntime binary under /proc",
            PS,
            |o| set(o, "/spec/probes/3/goRuntime/binary", s("/proc/1/exe")),
            "spec.probes[3].goRuntime.binary",
            &["binary must not be under /dev, /proc or /sys"],
        ),
        bad_cel(
            "a goRuntime binary with '..'",
            PS,
            |o| set(o, "/spec/probes/3/goRuntime/binary", s("/usr/../bin/app")),
            "spec.probes[3].goRuntime.binary",
            &["binary must be a plain path"],
        ),
        bad_cel(
            "a pid filter on tcpRetransmit",
            PS,
            |o| set(o, "/spec/probes/2/filter/pids", json!([42])),
            "spec.probes[2].filter",
            &["filter: tcpRetransmit runs in softirq context"],
        ),
        bad_cel(
            "a comm filter on tcpRetransmit",
            PS,
            |o| set(o, "/spec/probes/2/filter/comms", json!(["curl"])),
            "spec.probes[2].filter",
            &["filter: tcpRetransmit runs in softirq context"],
        ),
        bad_cel(
            "export without a declared rate",
            PS,
            |o| del(o, "/spec/probes/0/peakEventRate"),
            "spec.probes[0].peakEventRate",
            &["peakEventRate must be above 0 when export.policy is not none"],
        ),
        bad_cel(
            "an uppercase probe name",
            PS,
            |o| set(o, "/spec/probes/0/name", s("Sys")),
            "spec.probes[0].name",
            &["name must be a DNS label"],
        ),
        bad_cel(
            "a probe name with an underscore",
            PS,
            |o| set(o, "/spec/probes/0/name", s("sys_1")),
            "spec.probes[0].name",
            &["name must be a DNS label"],
        ),
        bad_cel(
            "a probe name ending in a dash",
            PS,
            |o| set(o, "/spec/probes/0/name", s("sys-")),
            "spec.probes[0].name",
            &["name must be a DNS label"],
        ),
        bad_cel(
            "slowerThan policy without a threshold",
            PS,
            |o| del(o, "/spec/probes/0/export/slowerThan"),
            "spec.probes[0].export.slowerThan",
            &["slowerThan is required when policy is slowerThan"],
        ),
        bad_cel(
            "a threshold with another policy",
            PS,
            |o| set(o, "/spec/probes/0/export/policy", s("all")),
            "spec.probes[0].export.slowerThan",
            &["slowerThan is only used with policy: slowerThan"],
        ),
        bad_cel(
            "a threshold without a unit",
            PS,
            |o| set(o, "/spec/probes/0/export/slowerThan", s("10")),
            "spec.probes[0].export.slowerThan",
            &["slowerThan must be a duration above 0"],
        ),
        bad_cel(
            "a zero threshold",
            PS,
            |o| set(o, "/spec/probes/0/export/slowerThan", s("0s")),
            "spec.probes[0].export.slowerThan",
            &["slowerThan must be a duration above 0"],
        ),
        bad_cel(
            "a negative threshold",
            PS,
            |o| set(o, "/spec/probes/0/export/slowerThan", s("-5ms")),
            "spec.probes[0].export.slowerThan",
            &["slowerThan must be a duration above 0"],
        ),
        bad_cel(
            "a relative uprobe binary",
            PS,
            |o| set(o, "/spec/probes/1/uprobe/binary", s("libc.so.6")),
            "spec.probes[1].uprobe.binary",
            &["binary must be an absolute path"],
        ),
        bad_cel(
            "a uprobe binary under /proc",
            PS,
            |o| set(o, "/spec/probes/1/uprobe/binary", s("/proc/self/exe")),
            "spec.probes[1].uprobe.binary",
            &["binary must not be under /dev, /proc or /sys"],
        ),
        bad_cel(
            "a uprobe binary that is a device",
            PS,
            |o| set(o, "/spec/probes/1/uprobe/binary", s("/dev/zero")),
            "spec.probes[1].uprobe.binary",
            &["binary must not be under /dev, /proc or /sys"],
        ),
        bad_cel(
            "a uprobe binary reaching /sys through '..'",
            PS,
            |o| {
                set(
                    o,
                    "/spec/probes/1/uprobe/binary",
                    s("/usr/../sys/kernel/tracing/trace_pipe"),
                )
            },
            "spec.probes[1].uprobe.binary",
            &["binary must be a plain path"],
        ),
        bad_cel(
            "a comm of 15 characters but more bytes",
            PS,
            |o| set(o, "/spec/probes/0/filter/comms/0", s("ngïnx-worker-01")),
            "spec.probes[0].filter.comms[0]",
            &["comms entries must be at most 15 bytes"],
        ),
        bad_cel(
            "a cgroup path escaping the hierarchy",
            PS,
            |o| {
                set(
                    o,
                    "/spec/probes/0/filter/cgroups/0",
                    s("system.slice/../../etc"),
                )
            },
            "spec.probes[0].filter.cgroups[0]",
            &["cgroups entries must be cgroup v2 paths"],
        ),
        bad_cel(
            "a cgroup path of slashes only",
            PS,
            |o| set(o, "/spec/probes/0/filter/cgroups/0", s("//")),
            "spec.probes[0].filter.cgroups[0]",
            &["cgroups entries must be cgroup v2 paths"],
        ),
        bad_cel(
            "a cgroup path ending in '..'",
            PS,
            |o| set(o, "/spec/probes/0/filter/cgroups/0", s("system.slice/..")),
            "spec.probes[0].filter.cgroups[0]",
            &["cgroups entries must be cgroup v2 paths"],
        ),
        bad_cel(
            "a cgroup path of '..' alone",
            PS,
            |o| set(o, "/spec/probes/0/filter/cgroups/0", s("..")),
            "spec.probes[0].filter.cgroups[0]",
            &["cgroups entries must be cgroup v2 paths"],
        ),
        valid(
            "cgroup names with dots and a kubepods container path",
            PS,
            |o| {
                let container = format!(
                    "/sys/fs/cgroup/kubepods.slice/kubepods-besteffort.slice/\
                     kubepods-besteffort-pod0c4e1c5a_1b2d_4e6f_8a9b_0c1d2e3f4a5b.slice/\
                     cri-containerd-{}.scope",
                    "0123456789abcdef".repeat(4)
                );
                set(
                    o,
                    "/spec/probes/0/filter/cgroups",
                    json!(["system.slice/..a..b/c..", "..hidden/x", container]),
                )
            },
        ),
        bad_schema(
            "a cgroup path over 256 characters",
            PS,
            |o| set(o, "/spec/probes/0/filter/cgroups/0", s(&"a/".repeat(129))),
            "spec.probes[0].filter.cgroups[0]",
        ),
        // ---- node and pod selectors ----
        valid("selectors with every operator and prefixed keys", PS, |o| {
            set(
                o,
                "/spec/podSelector",
                json!({
                    "matchLabels": {"team": "", "app.kubernetes.io/part-of": "shop"},
                    "matchExpressions": [
                        {"key": "app.kubernetes.io/name", "operator": "In", "values": ["web", "api"]},
                        {"key": "tier", "operator": "NotIn", "values": ["db"]},
                        {"key": "canary", "operator": "Exists"},
                        {"key": "legacy", "operator": "DoesNotExist", "values": []},
                    ],
                }),
            );
            set(
                o,
                "/spec/nodeSelector",
                json!({"node-role.kubernetes.io/worker": "", "Zone_A.b": "eu-1"}),
            );
        }),
        valid(
            "an empty pod selector (every pod of the namespace)",
            PS,
            |o| set(o, "/spec/podSelector", json!({})),
        ),
        bad_cel(
            "an unknown selector operator",
            PS,
            |o| {
                set(
                    o,
                    "/spec/podSelector/matchExpressions",
                    json!([{"key": "app", "operator": "Matches", "values": ["web"]}]),
                )
            },
            "spec.podSelector.matchExpressions[0].operator",
            &["matchExpressions operator must be"],
        ),
        bad_cel(
            "an operator in the wrong case",
            PS,
            |o| {
                set(
                    o,
                    "/spec/podSelector/matchExpressions",
                    json!([{"key": "app", "operator": "in", "values": ["web"]}]),
                )
            },
            "spec.podSelector.matchExpressions[0].operator",
            &["matchExpressions operator must be"],
        ),
        bad_cel(
            "In without values",
            PS,
            |o| {
                set(
                    o,
                    "/spec/podSelector/matchExpressions",
                    json!([{"key": "app", "operator": "In", "values": []}]),
                )
            },
            "spec.podSelector.matchExpressions[0].values",
            &["matchExpressions values must list at least one value"],
        ),
        bad_cel(
            "Exists with values",
            PS,
            |o| {
                set(
                    o,
                    "/spec/podSelector/matchExpressions",
                    json!([{"key": "app", "operator": "Exists", "values": ["web"]}]),
                )
            },
            "spec.podSelector.matchExpressions[0].values",
            &["matchExpressions values must list at least one value"],
        ),
        bad_cel(
            "a malformed expression key",
            PS,
            |o| {
                set(
                    o,
                    "/spec/podSelector/matchExpressions",
                    json!([{"key": "app name", "operator": "Exists"}]),
                )
            },
            "spec.podSelector.matchExpressions[0].key",
            &["matchExpressions keys must be label keys"],
        ),
        bad_cel(
            "a malformed expression value",
            PS,
            |o| {
                set(
                    o,
                    "/spec/podSelector/matchExpressions",
                    json!([{"key": "app", "operator": "In", "values": ["web", "web/1"]}]),
                )
            },
            "spec.podSelector.matchExpressions[0].values[1]",
            &["matchExpressions values must be label values"],
        ),
        bad_cel(
            "a matchLabels key starting with a dash",
            PS,
            |o| set(o, "/spec/podSelector/matchLabels", json!({"-app": "web"})),
            "spec.podSelector.matchLabels[-app]",
            &["matchLabels keys must be label keys"],
        ),
        bad_cel(
            "a matchLabels value with a space",
            PS,
            |o| set(o, "/spec/podSelector/matchLabels/app", s("web server")),
            "spec.podSelector.matchLabels[app]",
            &["matchLabels values must be label values"],
        ),
        bad_cel(
            "a node selector key with an uppercase prefix",
            PS,
            |o| set(o, "/spec/nodeSelector", json!({"Example.com/os": "linux"})),
            "spec.nodeSelector[Example.com/os]",
            &["nodeSelector keys must be label keys"],
        ),
        bad_cel(
            "a node selector key whose prefix is longer than 253 characters",
            PS,
            |o| set(o, "/spec/nodeSelector", json!({ LONG_PREFIX_KEY: "linux" })),
            Box::leak(format!("spec.nodeSelector[{LONG_PREFIX_KEY}]").into_boxed_str()),
            &["nodeSelector keys must be label keys"],
        ),
        bad_cel(
            "a node selector value ending in a dot",
            PS,
            |o| set(o, "/spec/nodeSelector/kubernetes.io~1os", s("linux.")),
            "spec.nodeSelector[kubernetes.io/os]",
            &["nodeSelector values must be label values"],
        ),
        bad_schema(
            "too many pod labels",
            PS,
            |o| {
                let labels: serde_json::Map<String, Value> =
                    (0..33).map(|i| (format!("l{i}"), json!("x"))).collect();
                set(o, "/spec/podSelector/matchLabels", Value::Object(labels))
            },
            "spec.podSelector.matchLabels",
        ),
        bad_schema(
            "too many selector expressions",
            PS,
            |o| {
                let e = json!({"key": "app", "operator": "Exists"});
                set(o, "/spec/podSelector/matchExpressions", json!(vec![e; 17]))
            },
            "spec.podSelector.matchExpressions",
        ),
        bad_cel(
            "a drain interval too long",
            PS,
            |o| set(o, "/spec/ringBuffer/drainInterval", s("10.5s")),
            "spec.ringBuffer.drainInterval",
            &["drainInterval must be a duration from 1ms to 10s"],
        ),
        bad_cel(
            "a drain interval too short",
            PS,
            |o| set(o, "/spec/ringBuffer/drainInterval", s("999us")),
            "spec.ringBuffer.drainInterval",
            &["drainInterval must be a duration from 1ms to 10s"],
        ),
        bad_cel(
            "a drain interval in words",
            PS,
            |o| set(o, "/spec/ringBuffer/drainInterval", s("100 ms")),
            "spec.ringBuffer.drainInterval",
            &["drainInterval must be a duration from 1ms to 10s"],
        ),
        bad_cel(
            "a node budget in megabytes",
            PS,
            |o| set(o, "/spec/ringBuffer/nodeBudget", s("64MB")),
            "spec.ringBuffer.nodeBudget",
            &["nodeBudget must be a whole number of bytes"],
        ),
        case(
            "a padded node budget",
            PS,
            |o| {
                set(
                    o,
                    "/spec/ringBuffer/nodeBudget",
                    s(&format!("{}64Mi", "0".repeat(29))),
                )
            },
            Expect::Invalid {
                field: "spec.ringBuffer.nodeBudget",
                cel: &["nodeBudget must be at most 64Gi"],
                schema: true,
            },
        ),
        bad_cel(
            "a fractional node budget",
            PS,
            |o| set(o, "/spec/ringBuffer/nodeBudget", s("1.5Gi")),
            "spec.ringBuffer.nodeBudget",
            &["nodeBudget must be a whole number of bytes"],
        ),
        bad_cel(
            "a report interval too short",
            PS,
            |o| set(o, "/spec/reportInterval", s("50ms")),
            "spec.reportInterval",
            &["reportInterval must be a duration of at least 100ms"],
        ),
        bad_cel(
            "a report interval in days",
            PS,
            |o| set(o, "/spec/reportInterval", s("1d")),
            "spec.reportInterval",
            &["reportInterval must be a duration of at least 100ms"],
        ),
        bad_cel(
            "a report interval beyond Go's range",
            PS,
            |o| set(o, "/spec/reportInterval", s("9999999999h")),
            "spec.reportInterval",
            &["reportInterval must be a duration of at least 100ms"],
        ),
        // ---- ProbeSet, refused by the plain schema ----
        bad_schema(
            "no probes",
            PS,
            |o| set(o, "/spec/probes", json!([])),
            "spec.probes",
        ),
        bad_schema(
            "65 probes",
            PS,
            |o| {
                let probes: Vec<_> = (0..65)
                    .map(|i| json!({"name": format!("p{i}"), "kind": "runqueue"}))
                    .collect();
                set(o, "/spec/probes", json!(probes));
            },
            "spec.probes",
        ),
        bad_schema(
            "a probe name of 64 characters",
            PS,
            |o| set(o, "/spec/probes/0/name", s(&"a".repeat(64))),
            "spec.probes[0].name",
        ),
        bad_schema(
            "an unknown probe kind",
            PS,
            |o| set(o, "/spec/probes/0/kind", s("sycalls")),
            "spec.probes[0].kind",
        ),
        bad_schema(
            "no series",
            PS,
            |o| set(o, "/spec/probes/0/maxSeries", json!(0)),
            "spec.probes[0].maxSeries",
        ),
        bad_schema(
            "too many series",
            PS,
            |o| set(o, "/spec/probes/0/maxSeries", json!(4097)),
            "spec.probes[0].maxSeries",
        ),
        bad_schema(
            "zero sampling",
            PS,
            |o| set(o, "/spec/probes/0/sampling", json!(0)),
            "spec.probes[0].sampling",
        ),
        bad_schema(
            "sampling above one",
            PS,
            |o| set(o, "/spec/probes/0/sampling", json!(1.5)),
            "spec.probes[0].sampling",
        ),
        case(
            "a peak rate of 1e308",
            PS,
            |o| set(o, "/spec/probes/0/peakEventRate", json!(1e308)),
            Expect::Invalid {
                field: "spec.probes[0].peakEventRate",
                cel: &["peakEventRate must be at most 100000000"],
                schema: true,
            },
        ),
        case(
            "the highest priority there is",
            PS,
            |o| set(o, "/spec/probes/0/priority", json!(2147483647)),
            Expect::Invalid {
                field: "spec.probes[0].priority",
                cel: &["priority must be from -1000 to 1000"],
                schema: true,
            },
        ),
        case(
            "a priority below the lowest",
            PS,
            |o| set(o, "/spec/probes/0/priority", json!(-1001)),
            Expect::Invalid {
                field: "spec.probes[0].priority",
                cel: &["priority must be from -1000 to 1000"],
                schema: true,
            },
        ),
        bad_cel(
            "a node budget of 999999Ti",
            PS,
            |o| set(o, "/spec/ringBuffer/nodeBudget", s("999999Ti")),
            "spec.ringBuffer.nodeBudget",
            &["nodeBudget must be at most 64Gi"],
        ),
        bad_cel(
            "a node budget just over 64Gi in bytes",
            PS,
            |o| set(o, "/spec/ringBuffer/nodeBudget", s("68719476737")),
            "spec.ringBuffer.nodeBudget",
            &["nodeBudget must be at most 64Gi"],
        ),
        bad_cel(
            "a node budget of 69G",
            PS,
            |o| set(o, "/spec/ringBuffer/nodeBudget", s("69G")),
            "spec.ringBuffer.nodeBudget",
            &["nodeBudget must be at most 64Gi"],
        ),
        bad_cel(
            "a node budget of twenty digits",
            PS,
            |o| {
                set(
                    o,
                    "/spec/ringBuffer/nodeBudget",
                    s("00000000000000000001Ki"),
                )
            },
            "spec.ringBuffer.nodeBudget",
            &["nodeBudget must be at most 64Gi"],
        ),
        bad_schema(
            "sampling sparser than the kernel samples",
            PS,
            |o| set(o, "/spec/probes/0/sampling", json!(1e-7)),
            "spec.probes[0].sampling",
        ),
        bad_schema(
            "a negative peak rate",
            PS,
            |o| set(o, "/spec/probes/1/peakEventRate", json!(-1)),
            "spec.probes[1].peakEventRate",
        ),
        bad_schema(
            "a drop rate of one",
            PS,
            |o| set(o, "/spec/maxDropRate", json!(1)),
            "spec.maxDropRate",
        ),
        bad_schema(
            "a negative drop rate",
            PS,
            |o| set(o, "/spec/maxDropRate", json!(-0.1)),
            "spec.maxDropRate",
        ),
        bad_schema(
            "a burst factor below one",
            PS,
            |o| set(o, "/spec/ringBuffer/burstFactor", json!(0.5)),
            "spec.ringBuffer.burstFactor",
        ),
        bad_schema(
            "a burst factor above 100",
            PS,
            |o| set(o, "/spec/ringBuffer/burstFactor", json!(101)),
            "spec.ringBuffer.burstFactor",
        ),
        bad_schema(
            "pid zero",
            PS,
            |o| set(o, "/spec/probes/0/filter/pids/0", json!(0)),
            "spec.probes[0].filter.pids[0]",
        ),
        bad_schema(
            "an empty uprobe symbol",
            PS,
            |o| set(o, "/spec/probes/1/uprobe/symbol", s("")),
            "spec.probes[1].uprobe.symbol",
        ),
        bad_schema(
            "a misspelt field",
            PS,
            |o| {
                let filter = o["spec"]["probes"][0]["filter"].take();
                del(o, "/spec/probes/0/filter");
                set(o, "/spec/probes/0/filtr", filter);
            },
            "spec.probes[0].filtr",
        ),
        bad_schema(
            "a policy outside the enum",
            PS,
            |o| {
                set(o, "/spec/probes/1/export", json!({"policy": "some"}));
                set(o, "/spec/probes/1/peakEventRate", json!(5));
            },
            "spec.probes[1].export.policy",
        ),
        case(
            "a comm of 16 ASCII characters",
            PS,
            |o| set(o, "/spec/probes/0/filter/comms/0", s("kworker/u16:2-ev")),
            Expect::Invalid {
                field: "spec.probes[0].filter.comms[0]",
                cel: &["comms entries must be at most 15 bytes"],
                schema: true,
            },
        ),
        // ---- SLO, admitted ----
        valid("the full SLO", "SLO", |_| {}),
        valid("the smallest SLO", "SLO", |o| {
            set(
                o,
                "/spec",
                json!({"probeSet": "web", "probe": "sys", "indicator": {"errors": {}}, "target": 99}),
            )
        }),
        valid("windows of whole days and hours", "SLO", |o| {
            set(o, "/spec/window", s("1d12h"))
        }),
        valid("the shortest window", "SLO", |o| {
            set(o, "/spec/window", s("1h"))
        }),
        valid("the longest window", "SLO", |o| {
            set(o, "/spec/window", s("90d"))
        }),
        valid("a window a nanosecond short of the longest", "SLO", |o| {
            set(o, "/spec/window", s("89d23h59m59.999999999s"))
        }),
        valid("the longest window in hours", "SLO", |o| {
            set(o, "/spec/window", s("2160h"))
        }),
        valid("a window of zero days and hours", "SLO", |o| {
            set(o, "/spec/window", s("0d6h"))
        }),
        valid("a fractional target", "SLO", |o| {
            set(o, "/spec/target", json!(99.999))
        }),
        valid("a dotted ProbeSet name", "SLO", |o| {
            set(o, "/spec/probeSet", s("web.v2"))
        }),
        valid(
            "a ProbeSet name with a part longer than a DNS label",
            "SLO",
            |o| set(o, "/spec/probeSet", s(&format!("web.{}", "a".repeat(100)))),
        ),
        valid("eight series", "SLO", |o| {
            set(
                o,
                "/spec/series",
                json!(["a", "b", "c", "d", "e", "f", "g", "h"]),
            )
        }),
        valid("an SLO on a ClusterProbeSet", "SLO", |o| {
            del(o, "/spec/probeSet");
            set(o, "/spec/clusterProbeSet", s("node-wide"));
        }),
        // ---- SLO, refused by CEL ----
        bad_cel(
            "both a ProbeSet and a ClusterProbeSet",
            "SLO",
            |o| set(o, "/spec/clusterProbeSet", s("node-wide")),
            "spec",
            &["spec needs exactly one of `probeSet`"],
        ),
        bad_cel(
            "neither a ProbeSet nor a ClusterProbeSet",
            "SLO",
            |o| del(o, "/spec/probeSet"),
            "spec.probeSet",
            &["spec needs exactly one of `probeSet`"],
        ),
        bad_cel(
            "a ClusterProbeSet name with capitals",
            "SLO",
            |o| {
                del(o, "/spec/probeSet");
                set(o, "/spec/clusterProbeSet", s("Node"));
            },
            "spec.clusterProbeSet",
            &["clusterProbeSet must be the name of a ClusterProbeSet"],
        ),
        bad_cel(
            "a ProbeSet name with capitals",
            "SLO",
            |o| set(o, "/spec/probeSet", s("Web")),
            "spec.probeSet",
            &["probeSet must be the name of a ProbeSet"],
        ),
        bad_cel(
            "a ProbeSet name with an empty label",
            "SLO",
            |o| set(o, "/spec/probeSet", s("web..v2")),
            "spec.probeSet",
            &["probeSet must be the name of a ProbeSet"],
        ),
        bad_cel(
            "a probe name with capitals",
            "SLO",
            |o| set(o, "/spec/probe", s("Sys")),
            "spec.probe",
            &["probe must be a DNS label"],
        ),
        bad_cel(
            "two indicators",
            "SLO",
            |o| set(o, "/spec/indicator/errors", json!({})),
            "spec.indicator",
            &["indicator needs exactly one of"],
        ),
        bad_cel(
            "no indicator",
            "SLO",
            |o| set(o, "/spec/indicator", json!({})),
            "spec.indicator",
            &["indicator needs exactly one of"],
        ),
        bad_cel(
            "a zero latency threshold",
            "SLO",
            |o| set(o, "/spec/indicator/latency/threshold", s("0ms")),
            "spec.indicator.latency.threshold",
            &["threshold must be a duration above 0"],
        ),
        bad_cel(
            "a latency threshold in words",
            "SLO",
            |o| set(o, "/spec/indicator/latency/threshold", s("fast")),
            "spec.indicator.latency.threshold",
            &["threshold must be a duration above 0"],
        ),
        bad_cel(
            "days after hours",
            "SLO",
            |o| set(o, "/spec/window", s("12h1d")),
            "spec.window",
            &["window must be a duration like 30d"],
        ),
        bad_cel(
            "fractional days",
            "SLO",
            |o| set(o, "/spec/window", s("1.5d")),
            "spec.window",
            &["window must be a duration like 30d"],
        ),
        bad_cel(
            "a window too short",
            "SLO",
            |o| set(o, "/spec/window", s("59m59s")),
            "spec.window",
            &["window must be from 1h to 90d"],
        ),
        bad_cel(
            "a window of zero days",
            "SLO",
            |o| set(o, "/spec/window", s("0d")),
            "spec.window",
            &["window must be from 1h to 90d"],
        ),
        bad_cel(
            "a window too long",
            "SLO",
            |o| set(o, "/spec/window", s("90d1s")),
            "spec.window",
            &["window must be from 1h to 90d"],
        ),
        bad_cel(
            "a window too long by a nanosecond",
            "SLO",
            |o| set(o, "/spec/window", s("89d23h59m60.000000001s")),
            "spec.window",
            &["window must be from 1h to 90d"],
        ),
        bad_cel(
            "a window too short by a millisecond",
            "SLO",
            |o| set(o, "/spec/window", s("0d59m59.999s")),
            "spec.window",
            &["window must be from 1h to 90d"],
        ),
        bad_cel(
            "a window too long in hours",
            "SLO",
            |o| set(o, "/spec/window", s("2161h")),
            "spec.window",
            &["window must be from 1h to 90d"],
        ),
        bad_cel(
            "a window beyond any range",
            "SLO",
            |o| set(o, "/spec/window", s("99999999999999999999d")),
            "spec.window",
            &["window must be from 1h to 90d"],
        ),
        // ---- SLO, refused by the plain schema ----
        bad_schema(
            "a target of 100",
            "SLO",
            |o| set(o, "/spec/target", json!(100)),
            "spec.target",
        ),
        bad_schema(
            "a target of 0",
            "SLO",
            |o| set(o, "/spec/target", json!(0)),
            "spec.target",
        ),
        bad_schema("no target", "SLO", |o| del(o, "/spec/target"), "spec"),
        bad_schema(
            "a drop rate of one",
            "SLO",
            |o| set(o, "/spec/maxDropRate", json!(1)),
            "spec.maxDropRate",
        ),
        bad_schema(
            "nine series",
            "SLO",
            |o| {
                set(
                    o,
                    "/spec/series",
                    json!(["a", "b", "c", "d", "e", "f", "g", "h", "i"]),
                )
            },
            "spec.series",
        ),
        bad_schema(
            "a repeated series",
            "SLO",
            |o| set(o, "/spec/series", json!(["read", "read"])),
            "spec.series[1]",
        ),
        bad_schema(
            "an empty series name",
            "SLO",
            |o| set(o, "/spec/series/0", s("")),
            "spec.series[0]",
        ),
        // The API server prunes (or, with kubectl's strict field validation,
        // refuses) the unknown field, and then no indicator is left.
        case(
            "a misspelt indicator",
            "SLO",
            |o| {
                set(
                    o,
                    "/spec/indicator",
                    json!({"latncy": {"threshold": "1ms"}}),
                )
            },
            Expect::Invalid {
                field: "spec.indicator.latncy",
                cel: &["indicator needs exactly one of"],
                schema: true,
            },
        ),
    ]
}

/// Whether `field` is `parent` or lies below it.
fn within(field: &str, parent: &str) -> bool {
    field == parent
        || field
            .strip_prefix(parent)
            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

fn check(case: &Case, outcomes: &[Outcome]) -> Vec<String> {
    let mut problems = Vec::new();
    let refusals: Vec<&Outcome> = outcomes.iter().filter(|o| !o.admits()).collect();
    let schema = schema_errors(case.kind, &case.object);
    let rust = rust_errors(&case.object);
    match &case.expect {
        Expect::Valid => {
            for o in &refusals {
                problems.push(format!(
                    "CEL refused it at {}: {} ({:?})",
                    o.at, o.message, o.result
                ));
            }
            for (field, message) in &schema {
                problems.push(format!("the schema refused it at {field}: {message}"));
            }
            for (field, message) in &rust {
                problems.push(format!("Rust refused it at {field:?}: {message}"));
            }
        }
        Expect::Invalid {
            field,
            cel,
            schema: by_schema,
        } => {
            for o in &refusals {
                if !cel.iter().any(|m| o.message.starts_with(m)) {
                    problems.push(format!("an unexpected CEL rule refused it: {}", o.message));
                } else if !within(field, &o.field) {
                    problems.push(format!("CEL blamed {}, not {field} or a parent", o.field));
                }
            }
            for m in cel.iter() {
                if !refusals.iter().any(|o| o.message.starts_with(m)) {
                    problems.push(format!("CEL admitted it, though {m:?} should refuse it"));
                }
            }
            if *by_schema && schema.is_empty() {
                problems.push("the schema admitted it".into());
            }
            if !by_schema && !schema.is_empty() {
                problems.push(format!("the schema refused it too: {schema:?}"));
            }
            for (at, message) in &schema {
                if !within(field, at) {
                    problems.push(format!(
                        "the schema blamed {at}, not {field} or a parent: {message}"
                    ));
                }
            }
            if !rust.iter().any(|(f, _)| f.as_deref() == Some(*field)) {
                problems.push(format!("Rust did not blame {field}: {rust:?}"));
            }
        }
    }
    problems
}

#[test]
fn schema_cel_and_rust_agree_on_every_fixture_and_every_rule_is_exercised() {
    let mut seen: BTreeMap<String, (usize, usize)> =
        sites().iter().map(|s| (s.key(), (0, 0))).collect();
    let mut failures = Vec::new();
    for case in cases() {
        let outcomes = evaluate(case.kind, &case.object);
        for o in &outcomes {
            let counts = seen
                .get_mut(&o.key)
                .unwrap_or_else(|| panic!("evaluated a rule the schema walk missed: {}", o.key));
            if o.admits() {
                counts.0 += 1;
            } else {
                counts.1 += 1;
            }
        }
        for problem in check(&case, &outcomes) {
            failures.push(format!("{} {:?}: {problem}", case.kind, case.name));
        }
    }
    for (key, (admitted, refused)) in &seen {
        if *admitted == 0 || *refused == 0 {
            failures.push(format!(
                "rule {key:?} admitted {admitted} and refused {refused} fixtures; add cases that \
                 show it doing both"
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn every_rule_compiles_and_uses_only_what_the_api_server_offers() {
    // Variables and functions of Kubernetes' CEL environment for CRD rules
    // that these rules may use; a rule reaching beyond fails here, since the
    // `cel` crate could accept what the API server refuses.
    const FUNCTIONS: &[&str] = &[
        "all",
        "exists_one",
        "has",
        "size",
        "matches",
        "startsWith",
        "endsWith",
        "contains",
        "split",
        "duration",
        "getMilliseconds",
        "string",
        "int",
        "bytes",
    ];
    let env = common::env();
    for site in sites() {
        let program = env
            .compile(&site.rule)
            .unwrap_or_else(|e| panic!("{}: does not compile: {e}", site.key()));
        let references = program.references();
        let variables = references.variables();
        // Besides `self`, only the iteration variables of all() and
        // exists_one(); no transition rules (`oldSelf`).
        assert!(
            variables.contains(&"self") && variables.iter().all(|v| *v == "self" || v.len() == 1),
            "{}: variables {variables:?}",
            site.key()
        );
        for f in references.functions() {
            // Operators (`_&&_`, `!_`) and the parser's own helpers
            // (`@not_strictly_false` in macros).
            let operator = f.starts_with('_') || f.starts_with('@') || f.ends_with('_');
            assert!(
                operator || FUNCTIONS.contains(&f),
                "{}: uses {f:?}, which this test does not know the API server to offer",
                site.key()
            );
        }
    }
}

#[test]
fn rule_messages_name_their_field() {
    for site in sites() {
        let field = site
            .field_path
            .as_deref()
            .map(|p| p.trim_start_matches('.'))
            .unwrap_or_else(|| site.path.rsplit('.').next().unwrap_or(""))
            .trim_end_matches("[]");
        let field = field.rsplit('.').next().unwrap_or(field);
        assert!(
            site.message.contains(field),
            "{}: the message does not name {field:?}",
            site.key()
        );
    }
}

/// `self.matches(regex)` for one string, through the `cel` crate.
fn cel_matches(regex: &str, s: &str) -> bool {
    common::eval(
        &common::env(),
        &format!("self.matches('{regex}')"),
        cel::Value::String(s.to_owned().into()),
    )
    .expect("matches() evaluates")
}

/// Whether every rule at `path` admits one string.
fn rule_admits(kind: &str, path: &str, s: &str) -> bool {
    let rules: Vec<_> = sites()
        .into_iter()
        .filter(|site| site.kind == kind && site.path == path)
        .collect();
    assert!(!rules.is_empty(), "no rule at {kind} {path}");
    rules.iter().all(|site| {
        common::eval(
            &common::env(),
            &site.rule,
            cel::Value::String(s.to_owned().into()),
        ) == Ok(true)
    })
}

/// Strings near the duration grammar, with the odd stray character.
const DURATION_LIKE: &str =
    "[+-]?[0-9.]{0,4}(ns|us|µs|μs|ms|s|m|h|d|x|)[0-9.]{0,3}(ns|us|ms|s|m|h|d|)[ 0-9]{0,1}";

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_duration_regex_accepts_what_core_parses(s in DURATION_LIKE) {
        match duration::parse_duration(&s) {
            Ok(_) => prop_assert!(cel_matches(DURATION_REGEX, &s), "{s:?} parses"),
            // The rules' comparison of duration() with a positive bound
            // refuses these.
            Err(duration::DurationError::Overflow { .. } | duration::DurationError::Negative { .. }) => {}
            Err(e) => prop_assert!(!cel_matches(DURATION_REGEX, &s), "{s:?}: {e}"),
        }
    }

    #[test]
    fn the_window_regex_accepts_what_core_parses(s in DURATION_LIKE) {
        match duration::parse_duration_days(&s) {
            Ok(_) => prop_assert!(cel_matches(DURATION_DAYS_REGEX, &s), "{s:?} parses"),
            Err(duration::DurationError::Overflow { .. } | duration::DurationError::Negative { .. }) => {}
            Err(e) => prop_assert!(!cel_matches(DURATION_DAYS_REGEX, &s), "{s:?}: {e}"),
        }
    }

    // The `cel` crate's duration() lacks Go's "µs", so the range rules are
    // compared on the other units; the regexes above cover "µs".
    #[test]
    fn the_window_rule_agrees_with_validate(days in 0u64..100, h in 0u64..30, m in 0u64..90, form in 0..3) {
        let s = match form {
            0 => format!("{days}d"),
            1 => format!("{days}d{h}h{m}m"),
            _ => format!("{h}h{m}m"),
        };
        let window = duration::parse_duration_days(&s).unwrap();
        let in_range = (ringwarden_crds::slo::MIN_WINDOW..=ringwarden_crds::slo::MAX_WINDOW)
            .contains(&window);
        prop_assert_eq!(rule_admits("SLO", "spec.window", &s), in_range, "{}", s);
        let rust = ringwarden_crds::SloSpec { window, ..slo_spec() }.validate().is_empty();
        prop_assert_eq!(rust, in_range, "{}", s);
    }

    #[test]
    fn the_report_interval_rule_agrees_with_validate(ms in 0u64..400, unit in 0..3) {
        let s = match unit {
            0 => format!("{ms}ms"),
            1 => format!("0.{ms:03}s"),
            _ => format!("{}us", ms * 1000),
        };
        let interval = duration::parse_duration(&s).unwrap();
        let mut spec: ringwarden_crds::ProbeSetSpec =
            serde_json::from_value(yaml(PROBESET)["spec"].clone()).unwrap();
        spec.report_interval = interval;
        prop_assert_eq!(
            rule_admits("ProbeSet", "spec.reportInterval", &s),
            spec.validate().is_empty(),
            "{}", s
        );
    }

    #[test]
    fn the_quantity_regex_accepts_what_core_parses(s in "[0-9]{0,3}[.]?[0-9]?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|m|i|)[ B]?") {
        match quantity::parse_bytes(&s) {
            Ok(_) => prop_assert!(cel_matches(BYTES_REGEX, &s), "{s:?} parses"),
            Err(e) => prop_assert!(!cel_matches(BYTES_REGEX, &s), "{s:?}: {e}"),
        }
    }

    #[test]
    fn the_name_rules_agree_with_validate(s in "[a-zA-Z0-9.\\-_]{0,6}") {
        let mut spec = slo_spec();
        spec.probe_set = s.clone();
        spec.probe = s.clone();
        let fields: Vec<String> = spec.validate().into_iter().map(|e| e.field).collect();
        prop_assert_eq!(
            rule_admits("SLO", "spec.probeSet", &s),
            !fields.contains(&"spec.probeSet".to_string()),
            "probeSet {:?}", s
        );
        prop_assert_eq!(
            rule_admits("SLO", "spec.probe", &s),
            !fields.contains(&"spec.probe".to_string()),
            "probe {:?}", s
        );
    }
}

fn slo_spec() -> ringwarden_crds::SloSpec {
    serde_json::from_value(yaml(SLO)["spec"].clone()).unwrap()
}
