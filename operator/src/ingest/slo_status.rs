//! SLOs as the evaluators see them, and the status each SLO should have.
//! Pure; the time is passed in. The math is `ringwarden_core::slo`'s; this
//! only maps its figures onto the status, rounded so that the status changes
//! (and is written) only when a figure changes meaningfully.

use std::{sync::Arc, time::Duration};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use ringwarden_core::slo as core_slo;
use ringwarden_crds::{AgentConfig, BurnRate, ClusterProbeSet, ProbeSet, Slo, SloState, SloStatus};

use crate::{
    ingest::reports::{Lacking, ProbeRef, SloDef, truncate},
    reconcile::status::{condition_at, round_significant},
};

/// Condition types.
pub mod condition {
    /// The SLO is evaluated from the agents' exact counts, fresh from
    /// every node its ProbeSet selects.
    pub const READY: &str = "Ready";
    /// kstatus' abnormal-true condition: the SLO cannot be judged without a
    /// change (its spec, its probe, or a silent node brought back).
    pub const STALLED: &str = "Stalled";
    /// kstatus' abnormal-true condition: evaluated, but nothing counted
    /// in the window yet.
    pub const RECONCILING: &str = "Reconciling";
    /// The spec, or the ProbeSet or probe it names, is wrong.
    pub const INVALID: &str = "Invalid";
    /// The SLO's state is saved (its snapshot ConfigMap is current), so a
    /// failover restores it; False says what a failover would lose.
    pub const PERSISTED: &str = "Persisted";

    /// Every type the operator writes.
    pub const OWNED: [&str; 5] = [READY, INVALID, PERSISTED, STALLED, RECONCILING];
}

/// Whether `current` already says what `desired` does, looking only at the
/// condition types the operator owns (see [`crate::reconcile::status::up_to_date`]).
pub fn up_to_date(current: Option<&SloStatus>, desired: &SloStatus) -> bool {
    crate::reconcile::status::same_owned(current, desired, &condition::OWNED, |s| &mut s.conditions)
}

/// Condition reasons.
pub mod reason {
    pub const EVALUATED: &str = "Evaluated";
    /// Some node the ProbeSet selects sent no fresh count of the probe:
    /// its agent is silent.
    pub const NODES_SILENT: &str = "NodesSilent";
    /// The ProbeSet selects no node.
    pub const NO_NODE_SELECTED: &str = "NoNodeSelected";
    /// Some node the ProbeSet selects reports, but not the probe running.
    pub const PROBE_NOT_RUNNING_ON_NODES: &str = "ProbeNotRunningOnNodes";
    /// `Stalled` is False.
    pub const NOT_STALLED: &str = "NotStalled";
    /// `Reconciling` is True: nothing counted in the window yet.
    pub const NO_DATA: &str = "NoData";
    /// `Reconciling` is False.
    pub const RECONCILED: &str = "Reconciled";
    pub const VALID_SPEC: &str = "ValidSpec";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const PROBE_NOT_FOUND: &str = "ProbeNotFound";
    /// The ProbeSet is invalid, so its probes run nowhere.
    pub const PROBE_NOT_RUNNING: &str = "ProbeNotRunning";
    /// More SLOs watch the probe than the kernel has threshold slots.
    pub const NO_THRESHOLD_SLOT: &str = "NoThresholdSlot";
    /// `Persisted`: the last snapshot write succeeded.
    pub const SAVED: &str = "Saved";
    /// `Persisted`: the last snapshot write failed.
    pub const SAVE_FAILED: &str = "SaveFailed";
    /// `Persisted`: this leader restored a snapshot much older than the
    /// snapshot interval, so the counts of the gap landed all at once.
    pub const RESTORED_STALE: &str = "RestoredStale";
}

/// How an SLO's saved state stands, for its `Persisted` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Saved {
    /// Saved at its last change.
    Current,
    /// The last write failed: the error, and since when the state is
    /// unsaved (RFC 3339).
    Failed { error: String, since: String },
    /// Restored from a snapshot `age` old at `at` (RFC 3339).
    RestoredStale { age: Duration, at: String },
}

/// Adds the `Persisted` condition to `status`, keeping its transition time
/// from `current` unless it flips.
pub fn with_saved(status: &mut SloStatus, current: Option<&SloStatus>, saved: &Saved, now: &Time) {
    let (ok, reason, message) = match saved {
        Saved::Current => (
            true,
            reason::SAVED,
            "the SLO's state is saved; a failover restores it".to_owned(),
        ),
        Saved::Failed { error, since } => (
            false,
            reason::SAVE_FAILED,
            format!(
                "cannot save the SLO's state since {since}: {error}; a failover now restores \
                 older state, and the counts since then land at once. Check the operator's \
                 permission to patch ConfigMaps in its namespace"
            ),
        ),
        Saved::RestoredStale { age, at } => (
            false,
            reason::RESTORED_STALE,
            format!(
                "restored at {at} from a snapshot {}s old: the counts of that gap were \
                 added at once, so burn rates of the following hour may be overstated",
                age.as_secs()
            ),
        ),
    };
    let before = current.map_or(&[][..], |s| &s.conditions[..]);
    let persisted = condition_at(
        before,
        condition::PERSISTED,
        ok,
        reason,
        truncate(&message, MAX_MESSAGE_BYTES),
        status.observed_generation,
        now,
    );
    status.conditions.push(persisted);
}

/// Longest condition message.
const MAX_MESSAGE_BYTES: usize = 4096;

/// Why an SLO is not evaluated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub reason: &'static str,
    pub message: String,
    /// The spec is at fault (the `Invalid` condition turns True).
    pub invalid: bool,
}

/// `namespace/name`, as thresholds and evaluators name an SLO.
pub fn id(slo: &Slo) -> String {
    format!(
        "{}/{}",
        slo.metadata.namespace.as_deref().unwrap_or_default(),
        slo.metadata.name.as_deref().unwrap_or_default()
    )
}

/// What the evaluator needs of `slo`, or why it cannot be evaluated.
/// `probesets` are every ProbeSet and ClusterProbeSet as
/// [`crate::reconcile::controller::Stores::all_probesets`] gives them;
/// `cluster_probesets` say which namespaces' SLOs each ClusterProbeSet
/// admits. `config` (the rendered agent configuration, once there is one)
/// tells whether the kernel counts its threshold.
pub fn definition(
    slo: &Slo,
    probesets: &[Arc<ProbeSet>],
    cluster_probesets: &[Arc<ClusterProbeSet>],
    config: Option<&AgentConfig>,
) -> Result<SloDef, Problem> {
    let errors = slo.spec.validate();
    if !errors.is_empty() {
        let listed: Vec<String> = errors.iter().map(ToString::to_string).collect();
        return Err(Problem {
            reason: reason::INVALID_SPEC,
            message: listed.join("; "),
            invalid: true,
        });
    }
    let namespace = slo.metadata.namespace.clone().unwrap_or_default();
    if let Some(name) = &slo.spec.cluster_probe_set
        && let Some(cps) = cluster_probesets
            .iter()
            .find(|c| c.metadata.name.as_ref() == Some(name))
        && !cps.admits_slos_from(&namespace)
    {
        return Err(Problem {
            reason: reason::PROBE_NOT_FOUND,
            message: format!(
                "spec.clusterProbeSet: ClusterProbeSet {name:?} does not admit SLOs from \
                 namespace {namespace:?}: its spec.sloNamespaces does not list it, so this SLO \
                 is not counted and changes nothing. Ask the ClusterProbeSet's owner to add \
                 {namespace:?} to spec.sloNamespaces, or measure a ProbeSet of this namespace \
                 with spec.probeSet"
            ),
            invalid: true,
        });
    }
    slo.spec
        .find_probe(Some(&namespace), probesets.iter().map(|p| &**p))
        .map_err(|e| Problem {
            reason: reason::PROBE_NOT_FOUND,
            message: e.to_string(),
            invalid: true,
        })?;
    let id = id(slo);
    let threshold = slo.spec.threshold(id.clone()).ok_or_else(|| Problem {
        reason: reason::INVALID_SPEC,
        message: "spec.indicator: needs exactly one of latency or errors".into(),
        invalid: true,
    })?;
    let (target_ns, probeset) = slo.spec.target(Some(&namespace));
    let probe = ProbeRef {
        namespace: target_ns.unwrap_or_default().to_owned(),
        probeset: probeset.to_owned(),
        probe: slo.spec.probe.clone(),
    };
    if let Some(config) = config {
        let running = config.probes.iter().find(|p| {
            p.namespace == probe.namespace
                && p.probeset == probe.probeset
                && p.spec.name == probe.probe
        });
        match running {
            None => {
                return Err(Problem {
                    reason: reason::PROBE_NOT_RUNNING,
                    message: format!(
                        "ProbeSet {} is not running (see its status), so nothing is counted",
                        probe.probeset
                    ),
                    invalid: false,
                });
            }
            Some(p) if !p.thresholds.iter().any(|t| t.slo == id) => {
                return Err(Problem {
                    reason: reason::NO_THRESHOLD_SLOT,
                    message: format!(
                        "probe {} has more SLOs than the kernel's {} threshold slots, which go to \
                         the SLOs first by name (on a ClusterProbeSet, to those of the namespaces \
                         its spec.sloNamespaces lists first); this one is not counted",
                        probe.probe,
                        ringwarden_crds::agent::MAX_THRESHOLDS
                    ),
                    invalid: false,
                });
            }
            Some(_) => {}
        }
    }
    Ok(SloDef {
        id,
        probe,
        threshold_id: ringwarden_proto::threshold_id(
            &threshold.slo,
            threshold.latency_ns,
            threshold.errors,
            &threshold.series,
        ),
        series: slo.spec.series.clone(),
        spec: core_slo::SloSpec {
            target: slo.spec.target,
            window: slo.spec.window,
            max_drop_rate: slo.spec.max_drop_rate,
        },
    })
}

/// What the status is computed from.
#[derive(Clone, Copy, Debug)]
pub enum Verdict<'a> {
    Problem(&'a Problem),
    /// The evaluator's figures, and the selected nodes that sent no fresh
    /// count of the probe (none listed: the data is fresh).
    Evaluated(&'a core_slo::SloStatus, Option<&'a Lacking>),
}

/// The status `slo` should have. Conditions keep their
/// `lastTransitionTime` unless their status flips, and figures are rounded,
/// so an unchanged SLO yields its current status exactly.
pub fn desired(slo: &Slo, verdict: Verdict<'_>, now: &Time) -> SloStatus {
    let current = slo.status.as_ref();
    let generation = slo.metadata.generation;
    let before = current.map_or(&[][..], |s| &s.conditions[..]);
    let cond = |type_: &str, ok: bool, reason: &str, message: String| {
        let message = truncate(&message, MAX_MESSAGE_BYTES);
        condition_at(before, type_, ok, reason, message, generation, now)
    };
    let valid = || {
        cond(
            condition::INVALID,
            false,
            reason::VALID_SPEC,
            "the spec is valid".into(),
        )
    };
    let stalled = |why: Option<(&str, &str)>| match why {
        Some((reason, message)) => cond(condition::STALLED, true, reason, message.to_owned()),
        None => cond(
            condition::STALLED,
            false,
            reason::NOT_STALLED,
            "the SLO is judged from fresh counts".into(),
        ),
    };
    let reconciling = |waiting: bool| {
        if waiting {
            cond(
                condition::RECONCILING,
                true,
                reason::NO_DATA,
                "no event counted in the window yet".into(),
            )
        } else {
            cond(
                condition::RECONCILING,
                false,
                reason::RECONCILED,
                "the status shows the latest evaluation".into(),
            )
        }
    };
    match verdict {
        Verdict::Problem(p) => SloStatus {
            observed_generation: generation,
            conditions: vec![
                cond(condition::READY, false, p.reason, p.message.clone()),
                if p.invalid {
                    cond(condition::INVALID, true, p.reason, p.message.clone())
                } else {
                    valid()
                },
                stalled(Some((p.reason, &p.message))),
                reconciling(false),
            ],
            state: Some(problem_state(p.reason)),
            ..SloStatus::default()
        },
        Verdict::Evaluated(s, lacking) => {
            let burn = |b: &core_slo::Burn| b.long_rate.map(|r| round_significant(r, 2));
            let burn_rate = match (burn(&s.fast_burn), burn(&s.slow_burn)) {
                (None, None) => None,
                (fast, slow) => Some(BurnRate {
                    fast: fast.unwrap_or(0.0),
                    slow: slow.unwrap_or(0.0),
                }),
            };
            let stale = lacking.filter(|l| l.nodes > 0 || l.none_selected).map(|l| {
                if l.none_selected {
                    return (
                        reason::NO_NODE_SELECTED,
                        "the ProbeSet selects no node, so nothing is counted; the window's \
                         counts are kept and resume when a node is selected"
                            .to_owned(),
                    );
                }
                let why = if l.silent {
                    reason::NODES_SILENT
                } else {
                    reason::PROBE_NOT_RUNNING_ON_NODES
                };
                let message = format!(
                    "no fresh count of probe {} from {} node{}: {}. The SLI misses their \
                     events; the window's counts are kept and resume exactly when they report",
                    slo.spec.probe,
                    l.nodes,
                    if l.nodes == 1 { "" } else { "s" },
                    l.describe()
                );
                (why, message)
            });
            let (ready, state) = match &stale {
                Some((why, message)) => (
                    cond(condition::READY, false, why, message.clone()),
                    SloState::Stale,
                ),
                None => (
                    cond(
                        condition::READY,
                        true,
                        reason::EVALUATED,
                        "evaluated from the exact counts the agents' kernels keep, fresh from \
                         every node selected"
                            .into(),
                    ),
                    state(s.state),
                ),
            };
            SloStatus {
                observed_generation: generation,
                conditions: vec![
                    ready,
                    valid(),
                    stalled(stale.as_ref().map(|(w, m)| (*w, m.as_str()))),
                    reconciling(stale.is_none() && state == SloState::NoData),
                ],
                sli: s.sli.map(|x| sli_percent(x, slo.spec.target)),
                observed_latency: s.observed_latency_ns.map(Duration::from_nanos),
                budget_remaining: s
                    .error_budget_remaining
                    .map(|b| truncate_decimals(b * 100.0, 0)),
                burn_rate,
                state: Some(state),
                counting_since: s.counting_since.map(|t| {
                    let secs = t
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs();
                    Time(
                        Timestamp::from_second(i64::try_from(secs).unwrap_or(0))
                            .unwrap_or(Timestamp::UNIX_EPOCH),
                    )
                }),
                drop_rate: s.drop_rate.map(|d| round_significant(d, 2)),
                // The caller names the cluster (`Hub::cluster`).
                cluster: None,
            }
        }
    }
}

/// The state an SLO that is not evaluated shows, by the problem's reason.
fn problem_state(reason: &str) -> SloState {
    match reason {
        reason::PROBE_NOT_FOUND => SloState::ProbeNotFound,
        reason::PROBE_NOT_RUNNING => SloState::ProbeNotRunning,
        reason::NO_THRESHOLD_SLOT => SloState::NoThresholdSlot,
        _ => SloState::Invalid,
    }
}

fn state(s: core_slo::SloState) -> SloState {
    match s {
        core_slo::SloState::Met => SloState::Met,
        core_slo::SloState::AtRisk => SloState::AtRisk,
        core_slo::SloState::Breached => SloState::Breached,
        core_slo::SloState::Unreliable => SloState::Unreliable,
        core_slo::SloState::NoData => SloState::NoData,
    }
}

/// Decimal places of the SLI (in percent) that show a change of 0.1 % of
/// the error budget: 3 for a 99 target (99.997), 4 for 99.9. Finer changes
/// are noise to a reader and would only cause writes.
fn sli_decimals(target: f64) -> i32 {
    let budget = (100.0 - target).max(1e-9);
    // The epsilon keeps 99.9 (a budget of 0.0999…) at 4.
    (3.0 - budget.log10() - 1e-9).ceil().clamp(0.0, 9.0) as i32
}

/// `x` cut to `places` decimal places, toward minus infinity.
fn truncate_decimals(x: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    // The product of a decimal and a power of ten can land a few ulps
    // below an integer (99.99 × 100 = 9998.999…); a nudge far below the
    // places shown keeps such a value whole.
    ((x * scale) + 1e-9).floor() / scale
}

/// The SLI `sli` (a fraction) in percent, cut to the places of
/// [`sli_decimals`]: never rounded up, so an SLI below 100 % never shows
/// as 100 and one below the target never as the target.
fn sli_percent(sli: f64, target: f64) -> f64 {
    let places = sli_decimals(target);
    let step = 10f64.powi(-places);
    let mut shown = truncate_decimals(sli * 100.0, places);
    if sli < 1.0 && shown >= 100.0 {
        shown = 100.0 - step;
    }
    if sli * 100.0 < target && shown >= target {
        shown = truncate_decimals(target - step, places);
    }
    shown
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use ringwarden_core::slo::{Report, SloEvaluator};

    use super::*;

    fn slo(spec: &str) -> Slo {
        let mut slo = Slo::new("fast", serde_yaml_ng::from_str(spec).unwrap());
        slo.metadata.namespace = Some("shop".into());
        slo.metadata.generation = Some(2);
        slo
    }

    fn probeset() -> Arc<ProbeSet> {
        let mut ps = ProbeSet::new(
            "web",
            serde_yaml_ng::from_str("probes: [{name: sys, kind: syscalls}]").unwrap(),
        );
        ps.metadata.namespace = Some("shop".into());
        Arc::new(ps)
    }

    const SPEC: &str =
        "{probeSet: web, probe: sys, indicator: {latency: {threshold: 5ms}}, target: 99}";

    fn at(s: i64) -> Time {
        Time(Timestamp::from_second(s).unwrap())
    }

    #[test]
    fn a_valid_slo_on_a_running_probe_is_evaluated_with_its_threshold_id() {
        let def = definition(&slo(SPEC), &[probeset()], &[], None).unwrap();
        assert_eq!(def.id, "shop/fast");
        assert_eq!(
            def.threshold_id,
            ringwarden_proto::threshold_id("shop/fast", Some(5_000_000), false, &[])
        );
        assert_eq!(def.spec.target, 99.0);
    }

    #[test]
    fn an_slo_from_a_namespace_a_cluster_probeset_does_not_list_is_refused_naming_the_field() {
        let cps = |slo_namespaces: &str| {
            Arc::new(ringwarden_crds::ClusterProbeSet::new(
                "node-wide",
                serde_yaml_ng::from_str(&format!(
                    "{{sloNamespaces: {slo_namespaces}, probes: [{{name: sys, kind: syscalls}}]}}"
                ))
                .unwrap(),
            ))
        };
        let on_cluster =
            slo("{clusterProbeSet: node-wide, probe: sys, indicator: {errors: {}}, target: 99}");
        for listed in ["[]", "[platform]"] {
            let c = cps(listed);
            let p = definition(&on_cluster, &[Arc::new(c.as_probeset())], &[c], None).unwrap_err();
            assert_eq!((p.reason, p.invalid), (reason::PROBE_NOT_FOUND, true));
            assert!(p.message.contains("spec.sloNamespaces"), "{}", p.message);
            assert!(p.message.contains("\"shop\""), "{}", p.message);
            // The allowed namespaces are not a tenant's to learn.
            assert!(!p.message.contains("platform"), "{}", p.message);
            let s = desired(&on_cluster, Verdict::Problem(&p), &at(10));
            assert_eq!(s.state, Some(SloState::ProbeNotFound));
        }
        let c = cps("[platform, shop]");
        let def = definition(&on_cluster, &[Arc::new(c.as_probeset())], &[c], None).unwrap();
        assert_eq!(def.probe.namespace, "");
        assert_eq!(def.probe.probeset, "node-wide");
    }

    #[test]
    fn slos_that_cannot_be_evaluated_say_why() {
        let p = definition(&slo(SPEC), &[], &[], None).unwrap_err();
        assert_eq!((p.reason, p.invalid), (reason::PROBE_NOT_FOUND, true));
        let p = definition(
            &slo("{probeSet: web, probe: sys, indicator: {}, target: 99}"),
            &[probeset()],
            &[],
            None,
        )
        .unwrap_err();
        assert_eq!(p.reason, reason::INVALID_SPEC);
        let p = definition(
            &slo(SPEC),
            &[probeset()],
            &[],
            Some(&AgentConfig::default()),
        )
        .unwrap_err();
        assert_eq!((p.reason, p.invalid), (reason::PROBE_NOT_RUNNING, false));

        let s = desired(&slo(SPEC), Verdict::Problem(&p), &at(10));
        assert_eq!(s.conditions[0].status, "False");
        assert_eq!(s.conditions[1].reason, reason::VALID_SPEC);
        assert_eq!((s.sli, s.state), (None, Some(SloState::ProbeNotRunning)));
        assert_eq!(s.conditions[2].type_, condition::STALLED);
        assert_eq!(s.conditions[2].status, "True");
    }

    #[test]
    fn the_sli_shows_changes_of_a_tenth_of_a_percent_of_the_budget() {
        assert_eq!(sli_decimals(99.0), 3);
        assert_eq!(sli_decimals(99.9), 4);
        assert_eq!(sli_decimals(99.99), 5);
        assert_eq!(sli_decimals(95.0), 3);
        assert_eq!(sli_decimals(50.0), 2);
    }

    #[test]
    fn an_sli_is_cut_never_rounded_up_to_100_or_to_the_target() {
        // 99.997 % of a 99 % SLO: shown with its digits, not as 100.
        assert_eq!(sli_percent(0.99997, 99.0), 99.997);
        assert_eq!(sli_percent(0.999_999_9, 99.0), 99.999);
        assert_eq!(sli_percent(1.0 - 1e-15, 99.9), 99.9999);
        assert_eq!(sli_percent(1.0, 99.0), 100.0);
        // Just below the target shows below it.
        assert_eq!(sli_percent(0.989_999_9, 99.0), 98.999);
        assert_eq!(sli_percent(0.99, 99.0), 99.0);
        assert_eq!(sli_percent(0.9999, 99.99), 99.99);
        assert_eq!(sli_percent(0.999_899_999, 99.99), 99.989_99);
    }

    #[test]
    fn figures_are_rounded_and_an_unchanged_slo_keeps_its_status() {
        let mut e = SloEvaluator::new(
            core_slo::SloSpec {
                target: 99.0,
                window: Duration::from_secs(86_400),
                max_drop_rate: 0.01,
            },
            7,
        )
        .unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        e.ingest(
            now,
            &Report {
                node: "n1".into(),
                boot_id: "b".into(),
                seq: 1,
                threshold_id: 7,
                good: 29_997,
                total: 30_000,
                loss: Default::default(),
                ceiling: None,
            },
        );
        let figures = e.evaluate(now, None);
        let mut slo = slo(SPEC);
        let first = desired(&slo, Verdict::Evaluated(&figures, None), &at(10));
        assert_eq!(first.sli, Some(99.99));
        assert_eq!(first.budget_remaining, Some(99.0));
        assert_eq!(first.state, Some(SloState::Met));
        assert_eq!(first.counting_since, Some(at(1_000_000)));
        slo.status = Some(first.clone());
        let later = e.evaluate(now + Duration::from_secs(5), None);
        assert_eq!(
            desired(&slo, Verdict::Evaluated(&later, None), &at(20)),
            first
        );
    }

    #[test]
    fn an_slo_whose_probeset_selects_no_node_is_stale_not_met() {
        let mut e = SloEvaluator::new(
            core_slo::SloSpec {
                target: 99.0,
                window: Duration::from_secs(86_400),
                max_drop_rate: 0.01,
            },
            7,
        )
        .unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        e.ingest(
            now,
            &Report {
                node: "n1".into(),
                boot_id: "b".into(),
                seq: 1,
                threshold_id: 7,
                good: 100,
                total: 100,
                loss: Default::default(),
                ceiling: None,
            },
        );
        let figures = e.evaluate(now, None);
        assert_eq!(figures.state, core_slo::SloState::Met);
        let none = Lacking {
            none_selected: true,
            ..Lacking::default()
        };
        let s = desired(
            &slo(SPEC),
            Verdict::Evaluated(&figures, Some(&none)),
            &at(10),
        );
        assert_eq!(s.state, Some(SloState::Stale));
        assert_eq!(s.conditions[0].reason, reason::NO_NODE_SELECTED);
        assert_eq!(s.sli, Some(100.0), "the window's counts are kept");
    }

    #[test]
    fn a_failed_save_says_since_when_and_keeps_that_time_until_saved_again() {
        let failed = Saved::Failed {
            error: "configmaps is forbidden".into(),
            since: "2026-01-01T00:00:00Z".into(),
        };
        let mut s = SloStatus::default();
        with_saved(&mut s, None, &failed, &at(10));
        let c = s.conditions.last().unwrap();
        assert_eq!(
            (c.type_.as_str(), c.status.as_str(), c.reason.as_str()),
            ("Persisted", "False", "SaveFailed")
        );
        assert!(
            c.message
                .contains("since 2026-01-01T00:00:00Z: configmaps is forbidden")
        );
        let mut again = SloStatus::default();
        with_saved(&mut again, Some(&s), &failed, &at(20));
        assert_eq!(
            again.conditions.last().unwrap().last_transition_time,
            at(10)
        );
        let mut saved = SloStatus::default();
        with_saved(&mut saved, Some(&s), &Saved::Current, &at(30));
        let c = saved.conditions.last().unwrap();
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Saved"));
        assert_eq!(c.last_transition_time, at(30));
    }
}
