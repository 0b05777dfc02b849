//! The admission rules the CRDs carry as CEL (`x-kubernetes-validations`),
//! for what plain OpenAPI keywords cannot say: cross-field conditions, and
//! strings that must parse (durations, quantities, names).
//!
//! Each rule mirrors a check of [`ProbeSetSpec::validate`] or
//! [`SloSpec::validate`], so the API server and standalone mode refuse the
//! same objects; the crate's tests evaluate every rule against good and bad
//! objects. Regular expressions use only what RE2 (the API server) and the
//! `regex` crate agree on. No IO.
//!
//! [`ProbeSetSpec::validate`]: crate::ProbeSetSpec::validate
//! [`SloSpec::validate`]: crate::SloSpec::validate

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use ringwarden_core::duration::{format_duration, format_duration_days};
use serde::Serialize;

use crate::probeset::{
    MAX_NODE_BUDGET, MAX_PEAK_EVENT_RATE, MAX_PRIORITY, MIN_PRIORITY, NODE_BUDGET_RULE,
    PEAK_EVENT_RATE_RULE, PRIORITY_RULE,
};
use crate::slo::{MAX_WINDOW, MIN_WINDOW};

/// A number with an optional fraction, as Go's `time.ParseDuration` reads it.
macro_rules! number {
    () => {
        "([0-9]+([.][0-9]*)?|[.][0-9]+)"
    };
}
/// Go's duration units.
macro_rules! unit {
    () => {
        "(ns|us|µs|μs|ms|s|m|h)"
    };
}
/// A Go duration, unanchored: signed components with units, or a bare zero.
macro_rules! go_duration {
    () => {
        concat!("[+-]?(", number!(), unit!(), ")+|[+-]?0")
    };
}

/// What `ringwarden_core::duration::parse_duration` accepts, short of its
/// sign and overflow checks: every rule using it also compares
/// `duration(self)` with a positive bound, which refuses negative durations
/// and fails on overflow.
pub const DURATION_REGEX: &str = concat!("^(", go_duration!(), ")$");

/// What `ringwarden_core::duration::parse_duration_days` accepts, short of
/// its sign and overflow checks (the window rule compares with a positive
/// bound too): leading whole days, then Go-duration components.
pub const DURATION_DAYS_REGEX: &str = concat!(
    "^([0-9]+d(",
    number!(),
    unit!(),
    ")*|",
    go_duration!(),
    ")$"
);

/// What `ringwarden_core::quantity::parse_bytes` accepts, short of its
/// overflow check.
pub const BYTES_REGEX: &str = "^[0-9]+(Ki|Mi|Gi|Ti|k|M|G|T)?$";

/// An RFC 1123 label (`metadata.name` of most objects, probe names); the
/// 63-character limit is the schema's `maxLength`.
pub const DNS_LABEL_REGEX: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// An RFC 1123 subdomain (`metadata.name` of a custom resource); the
/// 253-character limit is the schema's `maxLength`.
pub const DNS_SUBDOMAIN_REGEX: &str =
    "^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// Longest duration string the schema accepts: any duration
/// `format_duration` or `format_duration_days` writes fits, with room to
/// spare. The Rust types hold the parsed duration, so `validate()` cannot
/// check this; a padded spelling like `000…01s` is the one thing the schema
/// refuses that standalone mode reads.
pub const MAX_DURATION_LEN: u32 = 32;

/// The Kubernetes error type reported when a rule fails.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// A value is malformed or out of range (the API server's default).
    FieldValueInvalid,
    /// A field is missing that the rest of the object requires.
    FieldValueRequired,
    /// A field is set that the rest of the object rules out.
    FieldValueForbidden,
    /// A value repeats one that must be unique.
    FieldValueDuplicate,
}

/// One entry of `x-kubernetes-validations`.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// The CEL expression; `self` is the value at the rule's schema location.
    pub rule: String,
    /// What is wrong and how to fix it, naming the field.
    pub message: String,
    /// The field to blame, relative to the rule's location (`.uprobe`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field_path: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
}

fn rule(rule: impl Into<String>, message: impl Into<String>) -> Rule {
    Rule {
        rule: rule.into(),
        message: message.into(),
        field_path: None,
        reason: None,
    }
}

impl Rule {
    /// Blames `field_path` (relative to the rule's location) with `reason`.
    fn at(mut self, field_path: &'static str, reason: Reason) -> Self {
        self.field_path = Some(field_path);
        self.reason = Some(reason);
        self
    }

    fn with_reason(mut self, reason: Reason) -> Self {
        self.reason = Some(reason);
        self
    }
}

/// `self` is a Go duration of at least `min` (and at most `max`). The regex
/// comes first: `&&` is false without evaluating `duration()` on a string it
/// cannot parse, so the message, not a CEL error, reaches the user.
fn duration_in(field: &str, min: &str, max: Option<&str>, example: &str) -> Rule {
    let lower = if min == "0s" {
        "duration(self) > duration('0s')".to_string()
    } else {
        format!("duration(self) >= duration('{min}')")
    };
    let (upper, range) = match max {
        Some(max) => (
            format!(" && duration(self) <= duration('{max}')"),
            format!("from {min} to {max}"),
        ),
        None if min == "0s" => (String::new(), "above 0".to_string()),
        None => (String::new(), format!("of at least {min}")),
    };
    rule(
        format!("self.matches('{DURATION_REGEX}') && {lower}{upper}"),
        format!(
            "{field} must be a duration {range} with units ns, us, ms, s, m or h, e.g. {example}"
        ),
    )
}

/// `self` is a probe or ProbeSet name: a DNS label.
fn dns_label(field: &str, example: &str) -> Rule {
    rule(
        format!("self.matches('{DNS_LABEL_REGEX}')"),
        format!(
            "{field} must be a DNS label: lowercase letters, digits and '-', starting and \
             ending with a letter or digit, e.g. {example}"
        ),
    )
}

// ---- ProbeSet ----

/// On `spec.probes`.
pub fn probes() -> Vec<Rule> {
    vec![
        rule(
            "self.all(p, self.exists_one(q, q.name == p.name))",
            "spec.probes: probe names must be unique within the ProbeSet; rename or remove \
             the duplicate",
        )
        .with_reason(Reason::FieldValueDuplicate),
    ]
}

/// On each item of `spec.probes`.
pub fn probe() -> Vec<Rule> {
    vec![
        rule(
            "self.kind != 'uprobe' || has(self.uprobe)",
            "uprobe is required when kind is uprobe; add \
             `uprobe: {binary: /path/to/binary, symbol: function_name}`",
        )
        .at(".uprobe", Reason::FieldValueRequired),
        rule(
            "self.kind == 'uprobe' || !has(self.uprobe)",
            "uprobe is only used with kind: uprobe; remove it or set kind: uprobe",
        )
        .at(".uprobe", Reason::FieldValueForbidden),
        rule(
            "self.kind != 'goRuntime' || has(self.goRuntime)",
            "goRuntime is required when kind is goRuntime; add \
             `goRuntime: {binary: /path/to/go/binary}`",
        )
        .at(".goRuntime", Reason::FieldValueRequired),
        rule(
            "self.kind == 'goRuntime' || !has(self.goRuntime)",
            "goRuntime is only used with kind: goRuntime; remove it or set kind: goRuntime",
        )
        .at(".goRuntime", Reason::FieldValueForbidden),
        rule(
            "self.kind != 'tcpRetransmit' || !has(self.filter) || \
             ((!has(self.filter.pids) || size(self.filter.pids) == 0) && \
             (!has(self.filter.comms) || size(self.filter.comms) == 0))",
            "filter: tcpRetransmit runs in softirq context, where no process is current, so \
             pids and comms filters cannot apply; filter by cgroups instead",
        )
        .at(".filter", Reason::FieldValueForbidden),
        rule(
            "!has(self.export) || !has(self.export.policy) || self.export.policy == 'none' || \
             (has(self.peakEventRate) && self.peakEventRate > 0.0)",
            "peakEventRate must be above 0 when export.policy is not none: it sizes the ring \
             buffer; declare the peak exported events per second on one node, e.g. \
             peakEventRate: 1000",
        )
        .at(".peakEventRate", Reason::FieldValueRequired),
        rule(
            format!(
                "!has(self.peakEventRate) || self.peakEventRate <= {}.0",
                MAX_PEAK_EVENT_RATE as u64
            ),
            PEAK_EVENT_RATE_RULE,
        )
        .at(".peakEventRate", Reason::FieldValueInvalid),
        rule(
            format!(
                "!has(self.priority) || (self.priority >= {MIN_PRIORITY} && self.priority <= {MAX_PRIORITY})"
            ),
            PRIORITY_RULE,
        )
        .at(".priority", Reason::FieldValueInvalid),
    ]
}

/// On `spec.probes[].name`.
pub fn probe_name() -> Vec<Rule> {
    vec![dns_label("name", "sys")]
}

/// On `spec.probes[].export`.
pub fn export() -> Vec<Rule> {
    vec![
        rule(
            "!has(self.policy) || self.policy != 'slowerThan' || has(self.slowerThan)",
            "slowerThan is required when policy is slowerThan; add e.g. slowerThan: 10ms",
        )
        .at(".slowerThan", Reason::FieldValueRequired),
        rule(
            "!has(self.slowerThan) || (has(self.policy) && self.policy == 'slowerThan')",
            "slowerThan is only used with policy: slowerThan; remove it or set \
             policy: slowerThan",
        )
        .at(".slowerThan", Reason::FieldValueForbidden),
    ]
}

/// On `spec.probes[].export.slowerThan`.
pub fn slower_than() -> Vec<Rule> {
    vec![duration_in("slowerThan", "0s", None, "10ms")]
}

/// On `spec.probes[].uprobe.binary`. The agent opens the file: devices
/// and kernel interfaces under /dev, /proc and /sys are refused, and the
/// path must be plain so no spelling reaches them. Prefix and substring
/// tests only, no regex: this rule runs for up to 64 probes on a string of
/// up to 4096 characters, and the API server charges a regex by both.
pub fn uprobe_binary() -> Vec<Rule> {
    vec![
        rule(
            "self.startsWith('/')",
            "binary must be an absolute path on the node, e.g. /usr/lib/x86_64-linux-gnu/libc.so.6",
        ),
        rule(
            "!self.contains('//') && !self.contains('/./') && !self.contains('/../') && \
             !self.endsWith('/.') && !self.endsWith('/..')",
            UPROBE_BINARY_PLAIN,
        ),
        rule(
            "!['/dev', '/proc', '/sys'].exists(d, self == d || self.startsWith(d + '/'))",
            UPROBE_BINARY_NOT_KERNEL,
        ),
    ]
}

/// Texts of the shared ProbeSet spec that say what holds for a
/// ClusterProbeSet (and standalone mode), and what the namespaced
/// ProbeSet's CRD says instead: its uprobe binaries are paths inside its
/// pods' containers, and it may not filter by cgroups. The spec is one
/// Rust type embedded in both kinds, so the ProbeSet's CRD is rewritten
/// ([`for_namespaced_probe_set`]).
pub const NAMESPACED_WORDING: [(&str, &str); 6] = [
    (
        "Absolute path of the binary or shared library on the node, e.g.",
        "Absolute path of the binary or shared library inside the ProbeSet's pods' containers, \
         not on the node (host binaries are for ClusterProbeSets), e.g.",
    ),
    (
        "Absolute path of the Go binary on the node (",
        "Absolute path of the Go binary inside the ProbeSet's pods' containers, not on the \
         node (",
    ),
    (
        "binary must be an absolute path on the node, e.g.",
        "binary must be an absolute path inside the ProbeSet's pods' containers, e.g.",
    ),
    (
        "give the path of the program's binary on the node, e.g.",
        "give the path of the program's binary inside the pods' containers, e.g.",
    ),
    (
        "pids and comms filters cannot apply; filter by cgroups instead",
        "pids and comms filters cannot apply; select the pods with podSelector instead \
         (cgroups filters are for ClusterProbeSets)",
    ),
    (
        "`tcpRetransmit` accepts only cgroups.",
        "`tcpRetransmit` accepts no pids or comms: narrow it with `podSelector`.",
    ),
];

/// Rewrites every `description` and rule `message` under `v` from the
/// ClusterProbeSet's terms to the ProbeSet's ([`NAMESPACED_WORDING`]).
pub fn reword_namespaced(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                match value {
                    serde_json::Value::String(text) if key == "description" || key == "message" => {
                        for (cluster, namespaced) in NAMESPACED_WORDING {
                            *text = text.replace(cluster, namespaced);
                        }
                    }
                    other => reword_namespaced(other),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(reword_namespaced),
        _ => {}
    }
}

/// The ProbeSet's CRD with its descriptions and rule messages in the
/// namespaced kind's terms ([`NAMESPACED_WORDING`]).
pub fn for_namespaced_probe_set(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    let mut value = serde_json::to_value(&crd).expect("a CRD is JSON");
    reword_namespaced(&mut value);
    serde_json::from_value(value).expect("rewording keeps a CRD a CRD")
}

/// Why a uprobe binary path with `.`, `..` or `//` is refused.
pub const UPROBE_BINARY_PLAIN: &str = "binary must be a plain path, without '.' or '..' \
     components or '//', e.g. /usr/bin/app";

/// Why a uprobe binary under /dev, /proc or /sys is refused.
pub const UPROBE_BINARY_NOT_KERNEL: &str = "binary must not be under /dev, /proc or /sys, \
     which hold devices and kernel interfaces, not programs; give the path of the program's \
     binary on the node, e.g. /usr/bin/app";

/// On each item of `spec.probes[].filter.comms`.
pub fn comm() -> Vec<Rule> {
    vec![rule(
        "size(bytes(self)) <= 15",
        "comms entries must be at most 15 bytes, as /proc/<pid>/comm shows the command name",
    )]
}

/// On each item of `spec.probes[].filter.cgroups`: something besides
/// slashes, and no `..` component. The `..` test is spelled with
/// `startsWith`/`endsWith`/`contains` rather than a regex: the API server
/// prices a regex by its length times the string's, and this rule runs on
/// every path of every probe.
pub fn cgroup() -> Vec<Rule> {
    vec![rule(
        "self.matches('[^/]') && self != '..' && !self.startsWith('../') && \
         !self.endsWith('/..') && !self.contains('/../')",
        "cgroups entries must be cgroup v2 paths without '..', absolute under /sys/fs/cgroup \
         or relative to it, e.g. system.slice/nginx.service",
    )]
}

/// Adds `rules` to the items of an array schema: schemars' `inner(...)`
/// carries validation keywords only, not extensions.
fn on_items(schema: &mut schemars::Schema, rules: Vec<Rule>) {
    let items = schema
        .get_mut("items")
        .and_then(serde_json::Value::as_object_mut)
        .expect("an array schema with inline items");
    items.insert(
        "x-kubernetes-validations".into(),
        serde_json::to_value(rules).expect("rules serialize"),
    );
}

/// Schema transform for `spec.probes[].filter.comms`.
pub fn on_comm_items(schema: &mut schemars::Schema) {
    on_items(schema, comm());
}

/// Schema transform for `spec.probes[].filter.cgroups`.
pub fn on_cgroup_items(schema: &mut schemars::Schema) {
    on_items(schema, cgroup());
}

/// On `spec.ringBuffer.drainInterval`.
pub fn drain_interval() -> Vec<Rule> {
    vec![duration_in("drainInterval", "1ms", Some("10s"), "100ms")]
}

/// On `spec.ringBuffer.nodeBudget`.
pub fn node_budget() -> Vec<Rule> {
    // The number before the suffix, compared with the bound in that unit.
    // At most 15 digits, so `int()` never overflows.
    let max = MAX_NODE_BUDGET;
    let mut bound = format!("int(self) <= {max}");
    for (suffix, split, unit) in [
        ("T", "T", 1_000_000_000_000u64),
        ("G", "G", 1_000_000_000),
        ("M", "M", 1_000_000),
        ("k", "k", 1_000),
        ("Ti", "T", 1 << 40),
        ("Gi", "G", 1 << 30),
        ("Mi", "M", 1 << 20),
        ("Ki", "K", 1 << 10),
    ] {
        bound = format!(
            "self.endsWith('{suffix}') ? int(self.split('{split}')[0]) <= {} : {bound}",
            max / unit
        );
    }
    vec![
        rule(
            format!("self.matches('{BYTES_REGEX}')"),
            "nodeBudget must be a whole number of bytes with an optional suffix Ki, Mi, Gi, Ti \
             (powers of 1024) or k, M, G, T (powers of 1000), e.g. 64Mi",
        ),
        rule(
            format!(
                "!self.matches('{BYTES_REGEX}') || (self.matches('^[0-9]{{1,15}}[^0-9]*$') && ({bound}))"
            ),
            NODE_BUDGET_RULE,
        ),
    ]
}

/// On `spec.reportInterval`.
pub fn report_interval() -> Vec<Rule> {
    vec![duration_in("reportInterval", "100ms", None, "10s")]
}

// ---- Selectors (nodeSelector, podSelector) ----

/// A label key: the regex, and the prefix's bound (the regex bounds the
/// name). `k` is the key.
fn label_key(k: &str) -> String {
    use crate::selector::{LABEL_KEY_REGEX, MAX_LABEL_PREFIX_LEN};
    format!(
        "{k}.matches('{LABEL_KEY_REGEX}') && \
         (!{k}.contains('/') || size({k}.split('/')[0]) <= {MAX_LABEL_PREFIX_LEN})"
    )
}

const LABEL_KEY_SYNTAX: &str = "an optional DNS subdomain prefix of at most 253 characters and \
     '/', then a name of 1 to 63 letters, digits, '-', '_' and '.', starting and ending with a \
     letter or digit";
const LABEL_VALUE_SYNTAX: &str = "at most 63 letters, digits, '-', '_' and '.', starting and \
     ending with a letter or digit, or empty";

/// On a label map (`spec.nodeSelector`, `spec.podSelector.matchLabels`):
/// keys and values in Kubernetes label syntax. The map's `maxProperties`
/// and the values' `maxLength` bound the cost.
pub fn label_map(field: &str) -> Vec<Rule> {
    use crate::selector::LABEL_VALUE_REGEX;
    vec![
        rule(
            format!("self.all(k, {})", label_key("k")),
            format!("{field} keys must be label keys: {LABEL_KEY_SYNTAX}, e.g. kubernetes.io/os"),
        ),
        rule(
            format!("self.all(k, self[k].matches('{LABEL_VALUE_REGEX}'))"),
            format!("{field} values must be label values: {LABEL_VALUE_SYNTAX}"),
        ),
    ]
}

/// On each item of `spec.podSelector.matchExpressions`: a label key, a
/// known operator, values exactly when the operator takes them, in label
/// syntax. A requirement the agent could not apply exactly is refused
/// here rather than widened to every pod.
pub fn selector_requirement() -> Vec<Rule> {
    use crate::selector::LABEL_VALUE_REGEX;
    vec![
        rule(
            label_key("self.key"),
            format!("matchExpressions keys must be label keys: {LABEL_KEY_SYNTAX}, e.g. app"),
        ),
        rule(
            "self.operator in ['In', 'NotIn', 'Exists', 'DoesNotExist']",
            "matchExpressions operator must be In, NotIn, Exists or DoesNotExist",
        ),
        rule(
            "self.operator in ['Exists', 'DoesNotExist'] ? \
             (!has(self.values) || size(self.values) == 0) : \
             (!(self.operator in ['In', 'NotIn']) || (has(self.values) && size(self.values) > 0))",
            "matchExpressions values must list at least one value for In and NotIn, and none \
             for Exists and DoesNotExist",
        ),
        rule(
            format!("!has(self.values) || self.values.all(v, v.matches('{LABEL_VALUE_REGEX}'))"),
            format!("matchExpressions values must be label values: {LABEL_VALUE_SYNTAX}"),
        ),
    ]
}

// ---- SLO ----

/// On `spec.probeSet` of an SLO.
pub fn probe_set_name() -> Vec<Rule> {
    vec![rule(
        format!("self.matches('{DNS_SUBDOMAIN_REGEX}')"),
        "probeSet must be the name of a ProbeSet in the SLO's namespace: lowercase letters, \
         digits, '-' and '.', e.g. node-syscalls",
    )]
}

/// On `spec.probe` of an SLO.
pub fn slo_probe_name() -> Vec<Rule> {
    vec![dns_label("probe", "sys")]
}

/// On `spec` of an SLO.
pub fn slo_target() -> Vec<Rule> {
    vec![rule(
        "has(self.probeSet) != has(self.clusterProbeSet)",
        "spec needs exactly one of `probeSet` (a ProbeSet in the SLO's namespace) or \
         `clusterProbeSet` (a ClusterProbeSet)",
    )]
}

/// On `spec.clusterProbeSet` of an SLO.
pub fn cluster_probe_set_name() -> Vec<Rule> {
    vec![rule(
        format!("self.matches('{DNS_SUBDOMAIN_REGEX}')"),
        "clusterProbeSet must be the name of a ClusterProbeSet: lowercase letters, digits, '-' \
         and '.', e.g. node-wide",
    )]
}

/// On `spec.indicator` of an SLO.
pub fn indicator() -> Vec<Rule> {
    vec![rule(
        "has(self.latency) != has(self.errors)",
        "indicator needs exactly one of `latency: {threshold: 100ms}` (good = at most that \
         slow) or `errors: {}` (good = did not fail)",
    )]
}

/// On `spec.indicator.latency.threshold` of an SLO.
pub fn latency_threshold() -> Vec<Rule> {
    vec![duration_in("threshold", "0s", None, "100ms")]
}

/// The window rule's reasoning about days holds for these bounds: at most
/// a day at the low end, whole days at the high end.
const _: () = assert!(
    MIN_WINDOW.as_secs() <= 86_400
        && MIN_WINDOW.subsec_nanos() == 0
        && MAX_WINDOW.as_secs().is_multiple_of(86_400)
        && MAX_WINDOW.subsec_nanos() == 0
);

/// On `spec.window` of an SLO.
pub fn window() -> Vec<Rule> {
    // Go's (and CEL's) duration() knows no days, so "30d12h" is read as D
    // whole days and a rest R (a Go duration, never negative there). The
    // days stay a number: turning them back into a string (`string(int)`)
    // has no size bound in the API server's cost estimate, which then
    // refuses the CRD. With X = MAX - R:
    //   D days + R >= MIN  <=>  D >= 1 || R >= MIN               (MIN <= 1 day)
    //   D days + R <= MAX  <=>  D <= MAX days && X >= 0 && X.getMilliseconds() >= D * 86400000
    // where getMilliseconds() floors, which is exact against a whole number.
    let days = "int(self.split('d')[0])";
    let rest = "(self.endsWith('d') ? duration('0s') : duration(self.split('d')[1]))";
    let (min, max) = (format_duration(MIN_WINDOW), format_duration(MAX_WINDOW));
    let max_days = MAX_WINDOW.as_secs() / 86_400;
    vec![
        rule(
            format!("self.matches('{DURATION_DAYS_REGEX}')"),
            "window must be a duration like 30d, 7d, 1d12h or 6h: whole days first, then \
             units h, m, s, ms, us or ns",
        ),
        rule(
            format!(
                "!self.matches('{DURATION_DAYS_REGEX}') || (self.contains('d') ? \
                 ({days} >= 1 || {rest} >= duration('{min}')) && {days} <= {max_days} && \
                 duration('{max}') - {rest} >= duration('0s') && \
                 (duration('{max}') - {rest}).getMilliseconds() >= {days} * 86400000 : \
                 duration(self) >= duration('{min}') && duration(self) <= duration('{max}'))"
            ),
            format!(
                "window must be from {} to {}, e.g. 30d",
                format_duration_days(MIN_WINDOW),
                format_duration_days(MAX_WINDOW)
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_serialize_as_the_api_server_reads_them() {
        let json = serde_json::to_value(&probe()[0]).unwrap();
        assert_eq!(json["fieldPath"], ".uprobe");
        assert_eq!(json["reason"], "FieldValueRequired");
        let json = serde_json::to_value(&window()[0]).unwrap();
        assert!(json.get("fieldPath").is_none() && json.get("reason").is_none());
    }

    #[test]
    fn messages_are_single_lines_without_doubled_spaces() {
        let all = [
            probes(),
            probe(),
            probe_name(),
            export(),
            slower_than(),
            uprobe_binary(),
            comm(),
            cgroup(),
            drain_interval(),
            node_budget(),
            report_interval(),
            label_map("nodeSelector"),
            selector_requirement(),
            probe_set_name(),
            slo_target(),
            cluster_probe_set_name(),
            slo_probe_name(),
            indicator(),
            latency_threshold(),
            window(),
        ];
        for r in all.iter().flatten() {
            assert!(
                !r.message.contains('\n') && !r.message.contains("  "),
                "{:?}",
                r.message
            );
            assert!(!r.rule.contains('\n'), "{:?}", r.rule);
        }
    }
}
