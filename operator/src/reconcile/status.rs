//! ProbeSet status: what it should say given the assessment, and which
//! changes deserve a Kubernetes Event. Pure; the time is passed in.
//!
//! Conditions keep their `lastTransitionTime` unless their status flips, so
//! recomputing the status of an unchanged ProbeSet gives exactly the current
//! one and no write happens.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use ringwarden_core::quantity::format_bytes;
use ringwarden_crds::{NodeShareStatus, PlanStatus, ProbePlanStatus, ProbeSet, ProbeSetStatus};

use crate::{assess::Assessment, reports::Figures, share::NodeShare};

/// Condition types.
pub mod condition {
    /// The probes are planned and handed to the agents of matching nodes.
    pub const READY: &str = "Ready";
    /// The spec cannot be run; the message says why.
    pub const INVALID: &str = "Invalid";
    /// The node budget or the per-probe cap made a ring smaller, or
    /// sampling sparser, than the declared rates need.
    pub const QUOTA_CONSTRAINED: &str = "QuotaConstrained";
    /// Agents report probes failing to load or dropping more than planned.
    /// Written from agent reports; passed through unchanged here.
    pub const DEGRADED: &str = "Degraded";

    /// Every type the operator writes; status comparisons and writes see
    /// only these.
    pub const OWNED: [&str; 4] = [READY, INVALID, QUOTA_CONSTRAINED, DEGRADED];
}

/// Whether `current` already says what `desired` does, looking only at the
/// condition types the operator owns: a condition another controller adds
/// must neither be applied by the operator nor make it write every pass.
pub fn up_to_date(current: Option<&ProbeSetStatus>, desired: &ProbeSetStatus) -> bool {
    same_owned(current, desired, &condition::OWNED, |s| &mut s.conditions)
}

/// A condition of `type_`, keeping the `lastTransitionTime` it has in
/// `before` unless its status flips, so recomputing an unchanged status
/// gives it exactly.
pub fn condition_at(
    before: &[Condition],
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    observed_generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let last_transition_time = before
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation,
        last_transition_time,
    }
}

/// Whether `current`, with only the conditions of the `owned` types, equals
/// `desired`: the comparison behind every status write.
pub fn same_owned<S: Clone + PartialEq>(
    current: Option<&S>,
    desired: &S,
    owned: &[&str],
    conditions: fn(&mut S) -> &mut Vec<Condition>,
) -> bool {
    current.is_some_and(|c| {
        let mut c = c.clone();
        conditions(&mut c).retain(|c| owned.contains(&c.type_.as_str()));
        &c == desired
    })
}

/// Condition and Event reasons.
pub mod reason {
    pub const PLANNED: &str = "Planned";
    pub const NO_MATCHING_NODES: &str = "NoMatchingNodes";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const VALID_SPEC: &str = "ValidSpec";
    pub const BUDGET_SHORT: &str = "BudgetShort";
    /// The platform's node budget, shared with other ProbeSets on a node,
    /// gives the ProbeSet less than its own plan asks for.
    pub const NODE_BUDGET_SHORT: &str = "NodeBudgetShort";
    pub const WITHIN_BUDGET: &str = "WithinBudget";
    /// `Degraded` is False: every node selected runs every probe.
    pub const NODES_HEALTHY: &str = "NodesHealthy";
    /// `Degraded` is True: the ProbeSet has uprobe probes and the cluster
    /// has not enabled uprobes (`agent.uprobes.enabled`), so they do not run.
    pub const UPROBES_NOT_ENABLED: &str = "UprobesNotEnabled";
    // When `Degraded` is True, its reason is the gravest node problem:
    // see `crate::reports::problem`.
}

/// What agent reports say of a ProbeSet, rounded so that only a
/// meaningful change makes it differ (and so gets written).
#[derive(Clone, Debug, PartialEq)]
pub struct Reported {
    /// Nodes running every probe over nodes selected, like `3/4`.
    pub ready: String,
    /// Two significant digits: across many nodes a rate moves by less
    /// than that from one interval to the next unless the load changes.
    pub events_per_second: f64,
    /// Percent of exported events the ring buffers dropped, two
    /// significant digits.
    pub drop_percent: f64,
    /// The gravest problem and the nodes having one; `None` when no node
    /// has any.
    pub degraded: Option<(&'static str, String)>,
}

impl Reported {
    pub fn from_figures(f: &Figures) -> Self {
        let degraded = f.worst.map(|reason| {
            let listed: Vec<String> = f
                .problems
                .iter()
                .map(|p| format!("{}: {}", p.node, p.message))
                .collect();
            let mut message = format!(
                "{} of {} node{}: {}",
                f.problem_nodes,
                f.desired,
                if f.desired == 1 { "" } else { "s" },
                listed.join("; ")
            );
            if f.problem_nodes > listed.len() {
                message.push_str(&format!("; and {} more", f.problem_nodes - listed.len()));
            }
            (reason, truncate(&message, MAX_DEGRADED_BYTES))
        });
        Self {
            ready: format!("{}/{}", f.ready, f.desired),
            events_per_second: round_significant(f.flow.events_per_second, 2),
            drop_percent: round_significant(f.flow.ringbuf_drop() * 100.0, 2),
            degraded,
        }
    }
}

/// `x` to `digits` significant digits; 0 for zero, NaN or infinities.
pub fn round_significant(x: f64, digits: i32) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return 0.0;
    }
    let scale = 10f64.powi(digits - 1 - x.abs().log10().floor() as i32);
    (x * scale).round() / scale
}

/// Spec errors listed in the `Invalid` message; the object must stay small.
const MAX_LISTED_ERRORS: usize = 20;
/// Longest Event note the API server accepts.
const MAX_NOTE_BYTES: usize = 1024;
/// Longest `Degraded` message: ten nodes with a line each, far below
/// etcd's object limit at any cluster size.
const MAX_DEGRADED_BYTES: usize = 4096;

/// The status `ps` should have. `node_matches` tells whether any node
/// carries the labels of its node selector; `share` is what the node
/// budget gives it on its tightest node, when known. Fields that agent
/// reports fill (`ready`, `eventsPerSecond`, `dropPercent`, the `Degraded`
/// condition) come from `reported`, or are kept as they are without it.
pub fn desired(
    ps: &ProbeSet,
    assessment: &Assessment,
    node_matches: bool,
    reported: Option<&Reported>,
    share: Option<&NodeShare>,
    now: &Time,
) -> ProbeSetStatus {
    let current = ps.status.as_ref();
    let generation = ps.metadata.generation;
    let before = current.map_or(&[][..], |s| &s.conditions[..]);
    let cond = |type_: &str, ok: bool, reason: &str, message: String| {
        condition_at(before, type_, ok, reason, message, generation, now)
    };

    let mut conditions = Vec::with_capacity(4);
    let (plan, ring_buffer, predicted_drop_percent) = match assessment {
        Assessment::Invalid(errors) => {
            conditions.push(cond(
                condition::READY,
                false,
                reason::INVALID_SPEC,
                "the spec is invalid; see the Invalid condition".into(),
            ));
            conditions.push(cond(
                condition::INVALID,
                true,
                reason::INVALID_SPEC,
                list_errors(errors),
            ));
            (None, None, None)
        }
        Assessment::Planned(planned) => {
            // On the tightest node when its share is known: the agents
            // there run exactly this.
            let effective = match share {
                Some(s) => on_node(&planned.plan, s),
                None => planned.plan.clone(),
            };
            let used = format_bytes(effective.used_bytes);
            conditions.push(if node_matches {
                let n = planned.plan.probes.len();
                cond(
                    condition::READY,
                    true,
                    reason::PLANNED,
                    format!(
                        "{n} probe{} planned with {used} of ring buffers per node",
                        if n == 1 { "" } else { "s" }
                    ),
                )
            } else {
                let selector: Vec<String> = ps
                    .spec
                    .node_selector
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                let message = if selector.is_empty() {
                    "the cluster has no nodes; the probes start when one joins".to_owned()
                } else {
                    format!(
                        "no node has the labels of spec.nodeSelector ({}); the probes start when one does",
                        selector.join(", ")
                    )
                };
                cond(condition::READY, false, reason::NO_MATCHING_NODES, message)
            });
            conditions.push(cond(
                condition::INVALID,
                false,
                reason::VALID_SPEC,
                "the spec is valid".into(),
            ));
            let own = (!planned.constrained.is_empty()).then(|| {
                format!(
                    "spec.ringBuffer.nodeBudget is too small for the declared rates: {}",
                    planned.constrained.join("; ")
                )
            });
            let shared = share
                .filter(|s| s.share.constrained())
                .map(node_budget_message);
            conditions.push(match (shared, own) {
                (None, None) => cond(
                    condition::QUOTA_CONSTRAINED,
                    false,
                    reason::WITHIN_BUDGET,
                    "every probe gets the ring buffer its declared rate needs".into(),
                ),
                (None, Some(own)) => cond(
                    condition::QUOTA_CONSTRAINED,
                    true,
                    reason::BUDGET_SHORT,
                    own,
                ),
                (Some(shared), own) => cond(
                    condition::QUOTA_CONSTRAINED,
                    true,
                    reason::NODE_BUDGET_SHORT,
                    match own {
                        Some(own) => format!("{shared}. And {own}"),
                        None => shared,
                    },
                ),
            });
            let probe_status = |p: &ringwarden_core::planner::ProbePlan| ProbePlanStatus {
                name: p.name.clone(),
                ring_bytes: p.ring_bytes,
                sample_every: p.sample_every,
                predicted_drop: p.predicted_drop,
                reasons: p.reasons.clone(),
            };
            let plan = PlanStatus {
                budget_bytes: effective.budget_bytes,
                used_bytes: effective.used_bytes,
                probes: effective.probes.iter().map(probe_status).collect(),
                node_share: share.map(|s| NodeShareStatus {
                    node_budget_bytes: s.node_budget_bytes,
                    requested_bytes: s.share.requested_bytes,
                    granted_bytes: s.share.granted_bytes,
                    cpus: s.cpus,
                    other_probe_sets: s.share.other_probesets,
                    other_namespaces: s.share.other_namespaces,
                }),
            };
            // Two significant digits, like the measured `dropPercent`
            // it stands next to.
            let predicted = round_significant(
                ringwarden_crds::plan::predicted_drop(&ps.spec, &effective) * 100.0,
                2,
            );
            (Some(plan), Some(used), Some(predicted))
        }
    };
    if let Some(r) = reported {
        conditions.push(match &r.degraded {
            Some((reason, message)) => cond(condition::DEGRADED, true, reason, message.clone()),
            None => cond(
                condition::DEGRADED,
                false,
                reason::NODES_HEALTHY,
                "every node selected runs every probe within maxDropRate".into(),
            ),
        });
    } else if let Some(c) = current
        .iter()
        .flat_map(|s| &s.conditions)
        .find(|c| c.type_ == condition::DEGRADED)
    {
        // Kept until reports say otherwise. Conditions of other types
        // belong to other field managers: never applied (and so never
        // taken over) by the operator.
        conditions.push(c.clone());
    }
    let (ready, events_per_second, drop_percent) = match reported {
        Some(r) => (
            Some(r.ready.clone()),
            Some(r.events_per_second),
            Some(r.drop_percent),
        ),
        None => (
            current.and_then(|s| s.ready.clone()),
            current.and_then(|s| s.events_per_second),
            current.and_then(|s| s.drop_percent),
        ),
    };
    ProbeSetStatus {
        observed_generation: generation,
        conditions,
        ready,
        events_per_second,
        drop_percent,
        predicted_drop_percent,
        ring_buffer,
        plan,
        // The caller names the cluster (`Hub::cluster`).
        cluster: None,
    }
}

/// The ProbeSet's own plan as its tightest node runs it: each probe's ring,
/// sampling and reasons from the node plan (a probe left out has no ring),
/// the rings' total recomputed.
fn on_node(own: &ringwarden_core::planner::Plan, s: &NodeShare) -> ringwarden_core::planner::Plan {
    let probes: Vec<_> = own
        .probes
        .iter()
        .map(|p| {
            s.share
                .probes
                .iter()
                .find(|n| n.plan.name == p.name)
                .map_or_else(|| p.clone(), |n| n.plan.clone())
        })
        .collect();
    ringwarden_core::planner::Plan {
        used_bytes: probes.iter().map(|p| p.ring_bytes).sum(),
        budget_bytes: own.budget_bytes,
        probes,
    }
}

/// `QuotaConstrained`'s message when the node budget cuts a ProbeSet: what
/// it asks for and gets on its tightest node, how many others it shares
/// with (never naming them: they may be another tenant's), and each probe
/// it cuts.
fn node_budget_message(s: &NodeShare) -> String {
    let probes: Vec<String> = s
        .share
        .probes
        .iter()
        .filter_map(|p| {
            if !p.admitted {
                Some(format!("{}: not loaded", p.plan.name))
            } else if p.plan.ring_bytes < p.ring_request {
                Some(format!(
                    "{}: ring {} of the {} it asks for",
                    p.plan.name,
                    format_bytes(p.plan.ring_bytes),
                    format_bytes(p.ring_request)
                ))
            } else {
                None
            }
        })
        .collect();
    format!(
        "the node budget of {} (for {} possible CPUs) gives this ProbeSet {} of the {} it asks for \
         on its tightest node, {}: {}",
        format_bytes(s.node_budget_bytes),
        s.cpus,
        format_bytes(s.share.granted_bytes),
        format_bytes(s.share.requested_bytes),
        s.share.sharing(),
        probes.join("; ")
    )
}

/// Marks `status` when `ps` asks for uprobes that this cluster does not
/// run: `Degraded` becomes True with reason [`reason::UPROBES_NOT_ENABLED`],
/// naming the probes and the Helm value, ahead of any node problem (which
/// the message keeps). The uprobe probes are left out of the agent
/// configuration ([`crate::render::agent_objects`]); the others run.
pub fn uprobes_not_enabled(
    ps: &ProbeSet,
    uprobes_enabled: bool,
    status: &mut ProbeSetStatus,
    now: &Time,
) {
    let uprobes: Vec<&str> = ps
        .spec
        .probes
        .iter()
        .filter(|p| p.kind.uses_uprobes())
        .map(|p| p.name.as_str())
        .collect();
    // An invalid spec runs nothing, and says so already. A mark passed
    // through from before goes: reports say what holds now.
    if uprobes_enabled || uprobes.is_empty() || status.plan.is_none() {
        status.conditions.retain(|c| {
            !(c.type_ == condition::DEGRADED && c.reason == reason::UPROBES_NOT_ENABLED)
        });
        return;
    }
    let base = format!(
        "probe{} {} (kind uprobe or goRuntime) not run: uprobes are not enabled in this cluster. The kernel \
         attaches uprobes only for CAP_SYS_ADMIN (Linux 6.16 and stable kernels since July \
         2025), which the agents get only with the Helm value agent.uprobes.enabled=true; the \
         other probes run",
        if uprobes.len() == 1 { "" } else { "s" },
        uprobes.join(", ")
    );
    let current = ps
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == condition::DEGRADED));
    let at = status
        .conditions
        .iter()
        .position(|c| c.type_ == condition::DEGRADED);
    let message = match at.map(|i| &status.conditions[i]) {
        // Passed through from the last write: unchanged while the probes are.
        Some(c) if c.reason == reason::UPROBES_NOT_ENABLED && c.message.starts_with(&base) => {
            c.message.clone()
        }
        Some(c) if c.reason != reason::UPROBES_NOT_ENABLED && c.status == "True" => {
            truncate(&format!("{base}; and {}", c.message), MAX_DEGRADED_BYTES)
        }
        _ => base,
    };
    let last_transition_time = current
        .filter(|c| c.status == "True")
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    let degraded = Condition {
        type_: condition::DEGRADED.into(),
        status: "True".into(),
        reason: reason::UPROBES_NOT_ENABLED.into(),
        message,
        observed_generation: ps.metadata.generation,
        last_transition_time,
    };
    match at {
        Some(i) => status.conditions[i] = degraded,
        None => status.conditions.push(degraded),
    }
}

fn list_errors(errors: &[String]) -> String {
    let mut listed = errors[..errors.len().min(MAX_LISTED_ERRORS)].join("; ");
    if errors.len() > MAX_LISTED_ERRORS {
        listed.push_str(&format!("; and {} more", errors.len() - MAX_LISTED_ERRORS));
    }
    listed
}

/// A Kubernetes Event to publish about a ProbeSet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

/// The Events a change from `before` to `after` deserves: a condition that
/// turned, never a recomputation that changed nothing.
pub fn notices(before: Option<&ProbeSetStatus>, after: &ProbeSetStatus) -> Vec<Notice> {
    let find = |s: Option<&ProbeSetStatus>, t: &str| {
        s.and_then(|s| s.conditions.iter().find(|c| c.type_ == t))
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    };
    let mut out = Vec::new();
    let mut notice = |warning, reason, message: &str| {
        out.push(Notice {
            warning,
            reason,
            note: truncate(message, MAX_NOTE_BYTES),
        })
    };
    let was = |t: &str| find(before, t).map(|(s, r, _)| (s, r));
    if let Some((status, _, message)) = find(Some(after), condition::INVALID)
        && status == "True"
        && was(condition::INVALID).is_none_or(|(s, _)| s != "True")
    {
        notice(true, reason::INVALID_SPEC, &message);
    }
    if let Some((status, why, message)) = find(Some(after), condition::READY) {
        let before = was(condition::READY);
        if status == "True" && before.as_ref().is_none_or(|(s, _)| s != "True") {
            notice(false, reason::PLANNED, &message);
        }
        if why == reason::NO_MATCHING_NODES
            && before.is_none_or(|(_, r)| r != reason::NO_MATCHING_NODES)
        {
            notice(true, reason::NO_MATCHING_NODES, &message);
        }
    }
    if let Some((status, why, message)) = find(Some(after), condition::DEGRADED) {
        let before = was(condition::DEGRADED).map(|(s, _)| s);
        if status == "True" && before.as_deref() != Some("True") {
            // Reasons are constants of `crate::reports::problem`.
            let reason = crate::reports::problem::ORDER
                .into_iter()
                .chain([reason::UPROBES_NOT_ENABLED])
                .find(|r| *r == why)
                .unwrap_or(crate::reports::problem::LOAD_FAILED);
            notice(true, reason, &message);
        }
        if status == "False" && before.as_deref() == Some("True") {
            notice(false, reason::NODES_HEALTHY, &message);
        }
    }
    if let Some((status, _, message)) = find(Some(after), condition::QUOTA_CONSTRAINED) {
        let before = was(condition::QUOTA_CONSTRAINED).map(|(s, _)| s);
        if status == "True" && before.as_deref() != Some("True") {
            notice(true, reason::BUDGET_SHORT, &message);
        }
        if status == "False" && before.as_deref() == Some("True") {
            notice(false, reason::WITHIN_BUDGET, &message);
        }
    }
    out
}

use crate::reports::truncate;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use k8s_openapi::jiff::Timestamp;
    use ringwarden_crds::{ExportPolicy, ExportSpec, ProbeKind, ProbeSetSpec, ProbeSpec};

    use super::*;
    use crate::assess::assess;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    fn probeset(rate: f64, budget: &str) -> ProbeSet {
        let mut ps = ProbeSet::new(
            "web",
            ProbeSetSpec {
                node_selector: [("gpu".to_string(), "true".to_string())].into(),
                pod_selector: None,
                probes: vec![ProbeSpec {
                    name: "sys".into(),
                    kind: ProbeKind::Syscalls,
                    uprobe: None,
                    go_runtime: None,
                    filter: None,
                    max_series: 64,
                    export: ExportSpec {
                        policy: ExportPolicy::All,
                        slower_than: None,
                    },
                    peak_event_rate: rate,
                    sampling: 1.0,
                    priority: 0,
                }],
                ring_buffer: ringwarden_crds::RingBufferSpec {
                    node_budget: budget.into(),
                    ..Default::default()
                },
                max_drop_rate: 0.01,
                report_interval: Duration::from_secs(10),
            },
        );
        ps.metadata.namespace = Some("shop".into());
        ps.metadata.generation = Some(3);
        ps
    }

    fn types(s: &ProbeSetStatus) -> Vec<(&str, &str, &str)> {
        s.conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
            .collect()
    }

    #[test]
    fn report_figures_are_rounded_and_the_node_list_is_bounded() {
        use crate::reports::{Flow, NodeProblem, problem};
        let f = Figures {
            desired: 1000,
            ready: 985,
            flow: Flow {
                events_per_second: 123_456.0,
                exported: 3000,
                ringbuf_dropped: 1,
                ..Flow::default()
            },
            problems: (0..10)
                .map(|i| NodeProblem {
                    node: format!("node-{i}"),
                    reason: problem::NOT_REPORTING,
                    message: "no report within two report intervals".into(),
                })
                .collect(),
            problem_nodes: 15,
            worst: Some(problem::LOAD_FAILED),
            ..Figures::default()
        };
        let r = Reported::from_figures(&f);
        assert_eq!(r.ready, "985/1000");
        assert_eq!(r.events_per_second, 120_000.0);
        assert_eq!(r.drop_percent, 0.033);
        let (reason, message) = r.degraded.clone().unwrap();
        assert_eq!(reason, "LoadFailed");
        assert!(
            message.starts_with("15 of 1000 nodes: node-0: no report"),
            "{message}"
        );
        assert!(message.ends_with("; and 5 more"), "{message}");
        assert_eq!(round_significant(0.0, 2), 0.0);
        assert_eq!(round_significant(f64::NAN, 2), 0.0);
        let mut ps = probeset(1000.0, "64Mi");
        let s = desired(&ps, &assess(&ps, &[]), true, Some(&r), None, &at(100));
        assert_eq!(s.conditions[3].type_, "Degraded");
        assert_eq!(s.conditions[3].reason, "LoadFailed");
        ps.status = Some(s.clone());
        // Without fresh figures the status keeps what was written.
        assert_eq!(
            desired(&ps, &assess(&ps, &[]), true, None, None, &at(200)),
            s
        );
    }

    #[test]
    fn a_probeset_the_node_budget_cuts_says_what_it_asked_got_and_shares_with() {
        use ringwarden_core::maps::{fixed_bytes, ringbuf_bytes};
        // Another team's ProbeSet of higher priority on the same nodes
        // takes its full ring first; ours gets 16 KiB of the 256 KiB.
        let ps = probeset(10_000.0, "64Mi");
        let mut other = probeset(10_000.0, "64Mi");
        other.metadata.namespace = Some("payments".into());
        other.metadata.name = Some("ledger".into());
        other.spec.probes[0].priority = 1;
        let assessed: Vec<crate::world::Assessed> = [&ps, &other]
            .iter()
            .map(|p| crate::world::Assessed {
                namespace: p.metadata.namespace.clone().unwrap(),
                name: p.metadata.name.clone().unwrap(),
                probeset: std::sync::Arc::new((*p).clone()),
                assessment: assess(p, &[]),
            })
            .collect();
        let fixed = fixed_bytes(&ringwarden_crds::plan::probe_maps(&ps.spec.probes[0]), 4);
        let budget = 2 * fixed + ringbuf_bytes(256 << 10, 4096) + ringbuf_bytes(16 << 10, 4096);
        let gpu = [("gpu".to_owned(), "true".to_owned())].into();
        let shares = crate::share::node_shares(&assessed, &[gpu], budget, 4);
        let share = &shares["shop/web"];
        let s = desired(&ps, &assess(&ps, &[]), true, None, Some(share), &at(100));
        let q = s
            .conditions
            .iter()
            .find(|c| c.type_ == "QuotaConstrained")
            .unwrap();
        assert_eq!(
            (q.status.as_str(), q.reason.as_str()),
            ("True", "NodeBudgetShort")
        );
        assert!(
            q.message
                .contains("(for 4 possible CPUs) gives this ProbeSet ")
                && q.message.contains(
                    "on its tightest node, with 1 other ProbeSet in 1 other namespace: \
                     sys: ring 16Ki of the 256Ki it asks for"
                )
                && !q.message.contains("payments")
                && !q.message.contains("ledger"),
            "{}",
            q.message
        );
        assert_eq!(s.ring_buffer.as_deref(), Some("16Ki"));
        let plan = s.plan.unwrap();
        assert_eq!(plan.probes[0].ring_bytes, 16 << 10);
        assert_eq!(plan.used_bytes, 16 << 10);
        assert!(
            plan.probes[0].reasons[1].starts_with("halved 4 times more to fit the node budget")
        );
        let n = plan.node_share.unwrap();
        assert_eq!((n.node_budget_bytes, n.cpus), (budget, 4));
        assert_eq!(n.requested_bytes, fixed + ringbuf_bytes(256 << 10, 4096));
        assert_eq!(n.granted_bytes, fixed + ringbuf_bytes(16 << 10, 4096));
        assert_eq!((n.other_probe_sets, n.other_namespaces), (1, 1));
        // The other team, served first, is within the budget.
        let o = desired(
            &other,
            &assess(&other, &[]),
            true,
            None,
            Some(&shares["payments/ledger"]),
            &at(100),
        );
        assert!(
            o.conditions
                .iter()
                .any(|c| c.type_ == "QuotaConstrained" && c.status == "False")
        );
    }

    #[test]
    fn a_planned_probeset_is_ready_with_its_plan() {
        let ps = probeset(1000.0, "64Mi");
        let s = desired(&ps, &assess(&ps, &[]), true, None, None, &at(100));
        assert_eq!(
            types(&s),
            [
                ("Ready", "True", "Planned"),
                ("Invalid", "False", "ValidSpec"),
                ("QuotaConstrained", "False", "WithinBudget")
            ]
        );
        assert_eq!(s.observed_generation, Some(3));
        assert!(
            s.conditions
                .iter()
                .all(|c| c.observed_generation == Some(3))
        );
        assert_eq!(s.ring_buffer.as_deref(), Some("32Ki"));
        assert_eq!(
            s.conditions[0].message,
            "1 probe planned with 32Ki of ring buffers per node"
        );
        let plan = s.plan.unwrap();
        assert_eq!((plan.budget_bytes, plan.used_bytes), (64 << 20, 32 << 10));
        assert_eq!(plan.probes[0].sample_every, 1);
    }

    #[test]
    fn the_measured_drop_stands_next_to_the_plans_prediction() {
        use crate::reports::Flow;
        // 20000 ev/s into 64 KiB: a 50ms drain period brings 1000 records,
        // the ring holds 682.
        let mut ps = probeset(20_000.0, "64Ki");
        ps.spec.max_drop_rate = 0.5;
        let f = Figures {
            desired: 1,
            ready: 1,
            flow: Flow {
                exported: 200_000,
                ringbuf_dropped: 63_000,
                ..Flow::default()
            },
            ..Figures::default()
        };
        let r = Reported::from_figures(&f);
        let s = desired(&ps, &assess(&ps, &[]), true, Some(&r), None, &at(100));
        assert_eq!(s.predicted_drop_percent, Some(32.0));
        assert_eq!(s.drop_percent, Some(32.0));
        let plan = s.plan.unwrap();
        assert!((plan.probes[0].predicted_drop - (1.0 - 682.0 / 1000.0)).abs() < 1e-12);
        // Within the default 1 %, the planner samples instead.
        let ps = probeset(20_000.0, "64Ki");
        let s = desired(&ps, &assess(&ps, &[]), true, None, None, &at(100));
        assert_eq!(s.predicted_drop_percent, Some(0.0));
        assert_eq!(s.plan.unwrap().probes[0].sample_every, 2);
    }

    #[test]
    fn recomputing_an_unchanged_status_keeps_it_identical() {
        let mut ps = probeset(1000.0, "64Mi");
        let first = desired(&ps, &assess(&ps, &[]), true, None, None, &at(100));
        ps.status = Some(first.clone());
        let again = desired(&ps, &assess(&ps, &[]), true, None, None, &at(200));
        assert_eq!(again, first);
        assert!(notices(Some(&first), &again).is_empty());
    }

    #[test]
    fn only_flipped_conditions_get_a_new_transition_time() {
        let mut ps = probeset(1000.0, "64Mi");
        ps.status = Some(desired(&ps, &assess(&ps, &[]), true, None, None, &at(100)));
        ps.spec.ring_buffer.node_budget = "8Ki".into();
        ps.spec.probes[0].peak_event_rate = 100_000.0;
        let s = desired(&ps, &assess(&ps, &[]), true, None, None, &at(200));
        let time = |t: &str| {
            s.conditions
                .iter()
                .find(|c| c.type_ == t)
                .unwrap()
                .last_transition_time
                .clone()
        };
        assert_eq!(time("Ready"), at(100));
        assert_eq!(time("QuotaConstrained"), at(200));
    }

    #[test]
    fn an_invalid_spec_says_why_and_has_no_plan() {
        let mut ps = probeset(1000.0, "64 megs");
        ps.status = Some(ProbeSetStatus {
            ready: Some("2/3".into()),
            conditions: vec![Condition {
                type_: "Degraded".into(),
                status: "True".into(),
                reason: "LoadFailed".into(),
                message: "node-1: verifier".into(),
                observed_generation: Some(2),
                last_transition_time: at(50),
            }],
            ..Default::default()
        });
        let s = desired(&ps, &assess(&ps, &[]), true, None, None, &at(100));
        assert_eq!(
            types(&s),
            [
                ("Ready", "False", "InvalidSpec"),
                ("Invalid", "True", "InvalidSpec"),
                ("Degraded", "True", "LoadFailed")
            ]
        );
        assert!(
            s.conditions[1]
                .message
                .starts_with("spec.ringBuffer.nodeBudget: \"64 megs\" is not a byte quantity")
        );
        assert_eq!((s.plan, s.ring_buffer), (None, None));
        assert_eq!(s.predicted_drop_percent, None);
        assert_eq!(s.ready.as_deref(), Some("2/3"));
    }

    #[test]
    fn events_mark_transitions_only() {
        let mut ps = probeset(1000.0, "64Mi");
        let created = desired(&ps, &assess(&ps, &[]), true, None, None, &at(1));
        let n = notices(None, &created);
        assert_eq!(n.len(), 1);
        assert_eq!((n[0].warning, n[0].reason), (false, "Planned"));

        ps.status = Some(created.clone());
        ps.spec.probes[0].peak_event_rate = 1e6;
        ps.spec.ring_buffer.node_budget = "8Ki".into();
        let squeezed = desired(&ps, &assess(&ps, &[]), true, None, None, &at(2));
        let n = notices(Some(&created), &squeezed);
        assert_eq!(
            n.iter().map(|n| (n.warning, n.reason)).collect::<Vec<_>>(),
            [(true, "BudgetShort")]
        );

        ps.status = Some(squeezed.clone());
        ps.spec.ring_buffer.node_budget = "nope".into();
        let broken = desired(&ps, &assess(&ps, &[]), true, None, None, &at(3));
        let n = notices(Some(&squeezed), &broken);
        assert_eq!(
            n.iter().map(|n| (n.warning, n.reason)).collect::<Vec<_>>(),
            [(true, "InvalidSpec")]
        );

        ps.status = Some(broken.clone());
        ps.spec.ring_buffer.node_budget = "64Mi".into();
        ps.spec.probes[0].peak_event_rate = 1000.0;
        let fixed = desired(&ps, &assess(&ps, &[]), false, None, None, &at(4));
        let n = notices(Some(&broken), &fixed);
        assert_eq!(
            n.iter().map(|n| (n.warning, n.reason)).collect::<Vec<_>>(),
            [(true, "NoMatchingNodes")]
        );
        assert!(n[0].note.contains("(gpu=true)"), "{}", n[0].note);
    }

    fn with_uprobe(mut ps: ProbeSet) -> ProbeSet {
        let mut up = ps.spec.probes[0].clone();
        up.name = "checkout".into();
        up.kind = ProbeKind::Uprobe;
        up.uprobe = Some(ringwarden_crds::UprobeTarget {
            binary: "/usr/bin/app".into(),
            symbol: "checkout".into(),
        });
        ps.spec.probes.push(up);
        ps
    }

    fn degraded(s: &ProbeSetStatus) -> &Condition {
        s.conditions
            .iter()
            .find(|c| c.type_ == condition::DEGRADED)
            .expect("a Degraded condition")
    }

    #[test]
    fn uprobes_in_a_cluster_without_them_degrade_the_probeset_naming_the_chart_value() {
        let mut ps = with_uprobe(probeset(10.0, "64Mi"));
        let a = assess(&ps, &[]);
        let mut s = desired(&ps, &a, true, None, None, &at(1));
        uprobes_not_enabled(&ps, false, &mut s, &at(1));
        let d = degraded(&s);
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("True", "UprobesNotEnabled")
        );
        assert!(
            d.message
                .starts_with("probe checkout (kind uprobe or goRuntime) not run")
                && d.message.contains("CAP_SYS_ADMIN")
                && d.message.contains("agent.uprobes.enabled=true"),
            "{}",
            d.message
        );
        assert_eq!(
            notices(None, &s)
                .iter()
                .find(|n| n.reason == "UprobesNotEnabled")
                .map(|n| n.warning),
            Some(true)
        );
        // Written once, then recomputed without reports: identical.
        ps.status = Some(s.clone());
        let mut again = desired(&ps, &a, true, None, None, &at(9));
        uprobes_not_enabled(&ps, false, &mut again, &at(9));
        assert_eq!(again, s);
        // Enabled: nothing to say.
        let mut enabled = desired(&ps, &a, true, None, None, &at(9));
        uprobes_not_enabled(&ps, true, &mut enabled, &at(9));
        assert!(
            enabled
                .conditions
                .iter()
                .all(|c| c.reason != "UprobesNotEnabled"),
            "{enabled:?}"
        );
    }

    #[test]
    fn a_probeset_without_uprobes_is_not_marked() {
        let ps = probeset(10.0, "64Mi");
        let a = assess(&ps, &[]);
        let mut s = desired(&ps, &a, true, None, None, &at(1));
        let before = s.clone();
        uprobes_not_enabled(&ps, false, &mut s, &at(1));
        assert_eq!(s, before);
    }

    #[test]
    fn long_notes_are_cut_at_a_character_boundary() {
        let s = "é".repeat(1000);
        let t = truncate(&s, MAX_NOTE_BYTES);
        assert!(t.len() <= MAX_NOTE_BYTES && t.ends_with('…'));
    }

    #[test]
    fn another_controllers_condition_is_neither_applied_nor_a_reason_to_write() {
        let mut ps = probeset(1000.0, "64Mi");
        let ours = desired(&ps, &assess(&ps, &[]), true, None, None, &at(100));
        let mut current = ours.clone();
        current.conditions.push(Condition {
            type_: "example.com/Audited".into(),
            status: "True".into(),
            reason: "Checked".into(),
            message: "written by another controller".into(),
            observed_generation: None,
            last_transition_time: at(50),
        });
        ps.status = Some(current.clone());
        let again = desired(&ps, &assess(&ps, &[]), true, None, None, &at(200));
        assert!(
            again
                .conditions
                .iter()
                .all(|c| condition::OWNED.contains(&c.type_.as_str())),
            "{:?}",
            again.conditions
        );
        assert!(up_to_date(Some(&current), &again));
        // A change of ours still counts.
        let mut changed = current.clone();
        changed.conditions[0].message = "something else".into();
        assert!(!up_to_date(Some(&changed), &again));
        assert!(!up_to_date(None, &again));
    }
}
