//! The `SLO` custom resource: a latency or error objective on one probe of
//! one ProbeSet, judged over a rolling window, that knows when its data is
//! too lossy to be believed.

use std::{collections::BTreeSet, time::Duration};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use ringwarden_core::duration::{format_duration_days, serde_duration, serde_duration_days};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    agent::Threshold,
    cel::{self, MAX_DURATION_LEN},
    probeset::{FieldError, ProbeSet, ProbeSpec, is_dns_label},
};

/// A service level objective on one probe of one ProbeSet: the share of
/// good events (fast enough, or not failed) that must be met over a
/// rolling window. The kernel counts good and total events exactly; the
/// status reports the SLI, the error budget left, burn rates, and whether
/// dropped telemetry makes the numbers unreliable.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "ringwarden.dev",
    version = "v1alpha1",
    kind = "SLO",
    root = "Slo",
    plural = "slos",
    singular = "slo",
    namespaced,
    status = "SloStatus",
    doc = "A latency or error objective on one probe of a ProbeSet, over a rolling window, with exact in-kernel counting.",
    category = "ringwarden",
    printcolumn = r#"{"name":"Target","type":"number","description":"Objective: percent of events that must be good","jsonPath":".spec.target"}"#,
    printcolumn = r#"{"name":"SLI","type":"number","description":"Percent of good events over the window","jsonPath":".status.sli"}"#,
    printcolumn = r#"{"name":"Budget","type":"number","description":"Percent of the error budget left","jsonPath":".status.budgetRemaining"}"#,
    printcolumn = r#"{"name":"Burn","type":"number","description":"Error-budget burn rate over the fast window (1 spends it exactly by the window's end)","jsonPath":".status.burnRate.fast"}"#,
    printcolumn = r#"{"name":"State","type":"string","description":"Met, AtRisk, Breached, Unreliable, NoData, Stale, or why it is not evaluated","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = cel::slo_target()))]
pub struct SloSpec {
    /// Name of the ProbeSet, in the SLO's namespace, whose probe is measured,
    /// e.g. `node-syscalls`. Exactly one of `probeSet` and
    /// `clusterProbeSet` is given.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 253))]
    #[schemars(extend("x-kubernetes-validations" = cel::probe_set_name()))]
    pub probe_set: String,

    /// Name of the ClusterProbeSet whose probe is measured, e.g.
    /// `node-wide`, instead of a `probeSet`. Its status then shows, to
    /// whoever may read the SLO, latency of what that ClusterProbeSet
    /// observes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[schemars(extend("x-kubernetes-validations" = cel::cluster_probe_set_name()))]
    pub cluster_probe_set: Option<String>,

    /// Name of the probe within that ProbeSet (an entry of its
    /// `spec.probes[].name`), e.g. `sys`.
    #[schemars(length(max = 63))]
    #[schemars(extend("x-kubernetes-validations" = cel::slo_probe_name()))]
    pub probe: String,

    /// Only events of these series count, by the names the agent gives them:
    /// syscall names for `syscalls` (`[read, write]`), destination ports for
    /// `tcpConnect`. At most 8, no repeats; empty or absent counts every
    /// series of the probe.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_SLO_SERIES), inner(length(min = 1, max = MAX_SERIES_NAME_LEN)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub series: Vec<String>,

    /// What makes an event good: exactly one of `latency: {threshold: 100ms}`
    /// (good = completed within the threshold) or `errors: {}` (good = did
    /// not fail).
    pub indicator: Indicator,

    /// The objective: percent of events that must be good over the window,
    /// above 0 and below 100, e.g. 99.9.
    #[schemars(range(min = 0.0, max = 100.0))]
    #[schemars(extend("exclusiveMinimum" = true, "exclusiveMaximum" = true))]
    pub target: f64,

    /// The rolling window the objective is judged over, from 1h to 90d,
    /// written with whole days first like `30d`, `7d` or `1d12h`; default 30d.
    #[serde(default = "default_window", with = "serde_duration_days")]
    #[schemars(with = "String", length(max = MAX_DURATION_LEN))]
    #[schemars(extend("x-kubernetes-validations" = cel::window()))]
    pub window: Duration,

    /// Largest fraction of the probe's events that may be lost (ring-buffer
    /// drops, start-map overflows, series overflow) before the SLO's state
    /// turns `Unreliable`, from 0 up to (not including) 1; default 0.01
    /// (1 %). The quota planner also lowers sampling so the predicted drops
    /// stay below the strictest SLO's value.
    #[serde(default = "default_max_drop_rate")]
    #[schemars(range(min = 0.0, max = 1.0), extend("exclusiveMaximum" = true))]
    pub max_drop_rate: f64,
}

/// Most series one SLO may name: the kernel's threshold slots hold 8
/// (`MAX_THRESHOLD_SERIES` in the eBPF common crate).
pub const MAX_SLO_SERIES: usize = 8;
/// Longest series name.
pub const MAX_SERIES_NAME_LEN: usize = 64;
/// Shortest window (`spec.window`).
pub const MIN_WINDOW: Duration = Duration::from_secs(3_600);
/// Longest window (`spec.window`).
pub const MAX_WINDOW: Duration = Duration::from_secs(90 * 86_400);

fn default_window() -> Duration {
    Duration::from_secs(30 * 86_400)
}

fn default_max_drop_rate() -> f64 {
    0.01
}

/// What makes an event good. Exactly one member is set.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = cel::indicator()))]
pub struct Indicator {
    /// Good means the event completed within `threshold`. The kernel
    /// compares each event's latency exactly, not by histogram bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyIndicator>,
    /// Good means the event did not fail (a syscall returned no error, a
    /// connect succeeded, an I/O completed without error). Written `errors: {}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<ErrorsIndicator>,
}

/// A latency indicator.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LatencyIndicator {
    /// Slowest latency that still counts as good, as a duration above 0 like
    /// `100ms` or `1.5s`.
    #[serde(with = "serde_duration")]
    #[schemars(with = "String", length(max = MAX_DURATION_LEN))]
    #[schemars(extend("x-kubernetes-validations" = cel::latency_threshold()))]
    pub threshold: Duration,
}

/// An errors indicator; it has no settings.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct ErrorsIndicator {}

/// The indicator of a valid SLO, as one value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndicatorKind {
    /// Good = latency at most this.
    Latency(Duration),
    /// Good = did not fail.
    Errors,
}

impl Indicator {
    /// The indicator, or `None` unless exactly one member is set.
    pub fn kind(&self) -> Option<IndicatorKind> {
        match (&self.latency, &self.errors) {
            (Some(l), None) => Some(IndicatorKind::Latency(l.threshold)),
            (None, Some(_)) => Some(IndicatorKind::Errors),
            _ => None,
        }
    }
}

/// Observed state of an SLO, written by the operator (or printed by the
/// standalone agent).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SloStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (the SLO is evaluated) and `Invalid` (the spec, or the
    /// ProbeSet or probe it names, is wrong), following the Kubernetes API
    /// conventions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The service level indicator: percent of good events over the window
    /// (so far, while `countingSince` is less than a window ago).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sli: Option<f64>,
    /// Latency at the target percentile over the window (the p99.9 for a
    /// 99.9 target), from the in-kernel histograms, e.g. `87ms`. Absent for
    /// an errors indicator.
    #[serde(
        default,
        with = "ringwarden_core::duration::serde_duration_opt",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>")]
    pub observed_latency: Option<Duration>,
    /// Percent of the error budget (the `100 - target` percent of events
    /// allowed to be bad) still unspent over the window; negative once
    /// overspent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_remaining: Option<f64>,
    /// How fast the error budget is being spent, as in the multi-window,
    /// multi-burn-rate practice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burn_rate: Option<BurnRate>,
    /// The SLO's verdict.
    // `kubectl explain` shows `SloState`'s description: kube hoists the
    // schema of an optional enum from the type, over the field's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<SloState>,
    /// When exact in-kernel counting of good and total events started (RFC
    /// 3339); the SLI covers `window` or the time since then, whichever is
    /// shorter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counting_since: Option<Time>,
    /// Fraction of the probe's events lost over the window, from 0 to 1;
    /// above `maxDropRate` the state is `Unreliable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_rate: Option<f64>,
    /// The cluster that wrote this status (the chart's `clusterName`), so
    /// statuses gathered from many clusters say where they came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
}

/// Error-budget burn rates: 1 spends the budget exactly by the end of the
/// window, 14.4 spends a 30-day budget in about two days.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BurnRate {
    /// Burn rate over the short window (1h for a 30d window, scaled with
    /// the window): shows fast, severe burns.
    pub fast: f64,
    /// Burn rate over the long window (6h for a 30d window, scaled with the
    /// window): shows slow, sustained burns.
    pub slow: f64,
}

/// The SLO's verdict: `Met`, `AtRisk` (met, but burning the budget fast
/// enough to miss it), `Breached`, `Unreliable` (more events lost than
/// `maxDropRate` allows, so the SLI cannot be trusted), `NoData`, `Stale`
/// (a selected node sent no fresh count), or why it is not evaluated:
/// `ProbeNotRunning`, `ProbeNotFound`, `NoThresholdSlot`, `Invalid`.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum SloState {
    /// The SLI meets the target and the budget is not burning too fast.
    Met,
    /// The SLI meets the target, but the budget is burning fast enough to
    /// miss it before the window ends.
    AtRisk,
    /// The SLI is below the target.
    Breached,
    /// More events were lost than `maxDropRate` allows; the SLI cannot be
    /// trusted.
    Unreliable,
    /// No events were counted yet.
    NoData,
    /// Some node the ProbeSet selects sent no fresh count of the probe for
    /// a few report intervals (its agent is silent, or the probe is not
    /// running there), so the SLI misses its events. The window's counts
    /// are kept and resume exactly when the node reports again; the `Ready`
    /// condition names the nodes.
    Stale,
    /// The ProbeSet runs nowhere (invalid, or left out of the agents'
    /// configuration), so nothing is counted.
    ProbeNotRunning,
    /// No such ProbeSet, ClusterProbeSet or probe, or a ClusterProbeSet
    /// the SLO's namespace may not use.
    ProbeNotFound,
    /// The probe has more SLOs than the kernel's threshold slots; this one
    /// is not counted.
    NoThresholdSlot,
    /// The SLO's own spec is wrong; the `Invalid` condition says how.
    Invalid,
}

impl SloSpec {
    /// Checks what the types cannot, as the CRD's rules do at admission.
    /// Returns every problem, not just the first.
    pub fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut err = |field: &str, message: String| {
            errors.push(FieldError {
                field: field.into(),
                message,
            })
        };
        match (&self.cluster_probe_set, self.probe_set.is_empty()) {
            (Some(_), false) => err(
                "spec",
                "spec needs exactly one of `probeSet` (a ProbeSet in the SLO's namespace) or \
                 `clusterProbeSet` (a ClusterProbeSet)"
                    .into(),
            ),
            (Some(c), true) if !is_dns_subdomain(c) => err(
                "spec.clusterProbeSet",
                format!(
                    "{c:?} is not a ClusterProbeSet name; use the metadata.name of a \
                     ClusterProbeSet, e.g. node-wide"
                ),
            ),
            _ => {}
        }
        // Absent and empty are one to serde: either is not a name.
        if self.cluster_probe_set.is_none() && !is_dns_subdomain(&self.probe_set) {
            err(
                "spec.probeSet",
                format!(
                    "{:?} is not a ProbeSet name; use the metadata.name of a ProbeSet in the \
                     SLO's namespace, e.g. node-syscalls (or give clusterProbeSet instead)",
                    self.probe_set
                ),
            );
        }
        if !is_dns_label(&self.probe) {
            err(
                "spec.probe",
                format!(
                    "{:?} is not a probe name; use a name from the ProbeSet's spec.probes, \
                     e.g. sys",
                    self.probe
                ),
            );
        }
        if self.series.len() > MAX_SLO_SERIES {
            err(
                "spec.series",
                format!(
                    "{} series is too many; name at most {MAX_SLO_SERIES}, or leave the list \
                     out to count every series",
                    self.series.len()
                ),
            );
        }
        let mut seen = BTreeSet::new();
        for (i, s) in self.series.iter().enumerate() {
            if s.is_empty() || s.chars().count() > MAX_SERIES_NAME_LEN {
                err(
                    &format!("spec.series[{i}]"),
                    format!(
                        "{s:?} is not a series name; use 1 to {MAX_SERIES_NAME_LEN} characters, \
                         like a syscall name such as read"
                    ),
                );
            } else if !seen.insert(s.as_str()) {
                err(
                    &format!("spec.series[{i}]"),
                    format!("{s:?} is listed twice; remove the repeat"),
                );
            }
        }
        match (&self.indicator.latency, &self.indicator.errors) {
            (Some(_), Some(_)) | (None, None) => err(
                "spec.indicator",
                "needs exactly one of `latency: {threshold: 100ms}` or `errors: {}`".into(),
            ),
            (Some(l), None) if l.threshold.is_zero() => err(
                "spec.indicator.latency.threshold",
                "must be above 0; give the slowest latency that counts as good, e.g. 100ms".into(),
            ),
            _ => {}
        }
        if !(self.target > 0.0 && self.target < 100.0) {
            err(
                "spec.target",
                format!(
                    "{} is not a percentage below 100; use e.g. 99.9 for 99.9 % good events",
                    self.target
                ),
            );
        }
        if !(MIN_WINDOW..=MAX_WINDOW).contains(&self.window) {
            err(
                "spec.window",
                format!(
                    "{} is out of range; use {} to {}, e.g. 30d",
                    format_duration_days(self.window),
                    format_duration_days(MIN_WINDOW),
                    format_duration_days(MAX_WINDOW)
                ),
            );
        }
        if !(0.0..1.0).contains(&self.max_drop_rate) {
            err(
                "spec.maxDropRate",
                format!(
                    "{} is not a fraction below 1; use a number from 0 to 0.99, e.g. 0.01 for 1 %",
                    self.max_drop_rate
                ),
            );
        }
        errors
    }

    /// The ProbeSet this SLO measures, for an SLO in `namespace`: its
    /// namespace (`None` for a ClusterProbeSet) and name.
    pub fn target<'a>(&'a self, namespace: Option<&'a str>) -> (Option<&'a str>, &'a str) {
        match &self.cluster_probe_set {
            Some(c) => (None, c.as_str()),
            None => (namespace, self.probe_set.as_str()),
        }
    }

    /// The probe this SLO measures among `probesets` (the ProbeSet named
    /// `spec.probeSet` in `namespace`, or the ClusterProbeSet named
    /// `spec.clusterProbeSet` as [`crate::ClusterProbeSet::as_probeset`]
    /// gives it), or what is wrong with the reference.
    pub fn find_probe<'a>(
        &self,
        namespace: Option<&str>,
        probesets: impl IntoIterator<Item = &'a ProbeSet>,
    ) -> Result<&'a ProbeSpec, FieldError> {
        let (target_ns, name) = self.target(namespace);
        let ps = probesets
            .into_iter()
            .find(|ps| {
                ps.metadata.name.as_deref() == Some(name)
                    && ps.metadata.namespace.as_deref() == target_ns
            })
            .ok_or_else(|| match self.cluster_probe_set {
                None => FieldError {
                    field: "spec.probeSet".into(),
                    message: format!(
                        "no ProbeSet {name:?} in namespace {:?}; create it or name an existing one",
                        target_ns.unwrap_or("")
                    ),
                },
                Some(_) => FieldError {
                    field: "spec.clusterProbeSet".into(),
                    message: format!(
                        "no ClusterProbeSet {name:?}; create it or name an existing one"
                    ),
                },
            })?;
        let probe = ps
            .spec
            .probes
            .iter()
            .find(|p| p.name == self.probe)
            .ok_or_else(|| FieldError {
                field: "spec.probe".into(),
                message: format!(
                    "ProbeSet {name:?} has no probe {:?}; use one of: {}",
                    self.probe,
                    ps.spec
                        .probes
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })?;
        if matches!(self.indicator.kind(), Some(IndicatorKind::Latency(_)))
            && !probe.kind.has_latency()
        {
            return Err(FieldError {
                field: "spec.indicator.latency".into(),
                message: format!(
                    "probe {:?} is a {} probe, whose events have no latency; use `errors: {{}}` \
                     or a probe that times something",
                    probe.name,
                    probe.kind.as_str()
                ),
            });
        }
        Ok(probe)
    }

    /// The exact good/total counters the kernel keeps for this SLO, named
    /// `slo` (`namespace/name`); `None` for an invalid indicator.
    pub fn threshold(&self, slo: String) -> Option<Threshold> {
        let (latency_ns, errors) = match self.indicator.kind()? {
            IndicatorKind::Latency(t) => (Some(u64::try_from(t.as_nanos()).ok()?), false),
            IndicatorKind::Errors => (None, true),
        };
        Some(Threshold {
            slo,
            latency_ns,
            errors,
            series: self.series.clone(),
        })
    }
}

/// An RFC 1123 subdomain, as Kubernetes object names are: at most 253
/// characters, dot-separated parts of lowercase letters, digits and '-' that
/// start and end alphanumeric (unlike DNS, parts may exceed 63).
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|part| {
            let b = part.as_bytes();
            !b.is_empty()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SloSpec {
        SloSpec {
            probe_set: "node-syscalls".into(),
            cluster_probe_set: None,
            probe: "sys".into(),
            series: vec!["read".into()],
            indicator: Indicator {
                latency: Some(LatencyIndicator {
                    threshold: Duration::from_millis(1),
                }),
                errors: None,
            },
            target: 99.0,
            window: default_window(),
            max_drop_rate: 0.01,
        }
    }

    fn fields(s: &SloSpec) -> Vec<String> {
        s.validate().into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn a_valid_spec_has_no_errors() {
        assert_eq!(spec().validate(), vec![]);
        let mut s = spec();
        s.indicator = Indicator {
            latency: None,
            errors: Some(ErrorsIndicator {}),
        };
        s.series.clear();
        assert_eq!(s.validate(), vec![]);
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let mut s = spec();
        s.probe_set = "Node_Syscalls".into();
        s.probe = "".into();
        s.series = vec!["read".into(), "".into(), "read".into()];
        s.indicator.errors = Some(ErrorsIndicator {});
        s.target = 100.0;
        s.window = Duration::from_secs(60);
        s.max_drop_rate = 1.0;
        assert_eq!(
            fields(&s),
            [
                "spec.probeSet",
                "spec.probe",
                "spec.series[1]",
                "spec.series[2]",
                "spec.indicator",
                "spec.target",
                "spec.window",
                "spec.maxDropRate",
            ]
        );
    }

    #[test]
    fn window_and_threshold_bounds_are_inclusive_where_documented() {
        let mut s = spec();
        for (window, ok) in [
            (MIN_WINDOW, true),
            (MAX_WINDOW, true),
            (MIN_WINDOW - Duration::from_nanos(1), false),
            (MAX_WINDOW + Duration::from_nanos(1), false),
        ] {
            s.window = window;
            assert_eq!(s.validate().is_empty(), ok, "{window:?}");
        }
        let mut s = spec();
        s.indicator.latency = Some(LatencyIndicator {
            threshold: Duration::ZERO,
        });
        assert_eq!(fields(&s), ["spec.indicator.latency.threshold"]);
    }

    #[test]
    fn the_threshold_is_what_the_kernel_compares() {
        let t = spec().threshold("default/read-fast".into()).unwrap();
        assert_eq!(t.latency_ns, Some(1_000_000));
        assert!(!t.errors);
        assert_eq!(t.series, ["read"]);
        let mut s = spec();
        s.indicator.errors = Some(ErrorsIndicator {});
        assert_eq!(s.threshold("x/y".into()), None);
    }

    #[test]
    fn states_use_the_api_convention_spelling() {
        let json = serde_json::to_value([SloState::AtRisk, SloState::NoData]).unwrap();
        assert_eq!(json, serde_json::json!(["AtRisk", "NoData"]));
    }
}
