//! ProbeSet status: what it should say given the assessment, and which
//! changes deserve a Kubernetes Event. Pure; the time is passed in.
//!
//! Conditions keep their `lastTransitionTime` unless their status flips, so
//! recomputing the status of an unchanged ProbeSet gives exactly the current
//! one and no write happens.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use ringwarden_core::quantity::format_bytes;
use ringwarden_crds::{NodeShareStatus, PlanStatus, ProbePlanStatus, ProbeSet, ProbeSetStatus};

use crate::{ingest::reports::Figures, reconcile::assess::Assessment, reconcile::share::NodeShare};

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

    /// kstatus' abnormal-true condition: the probes cannot run as they
    /// should without a change (the spec, the node budget, the cluster's
    /// settings, or a silent agent brought back).
    pub const STALLED: &str = "Stalled";
    /// kstatus' abnormal-true condition: the operator waits for the
    /// agents' first reports.
    pub const RECONCILING: &str = "Reconciling";

    /// Every type the operator writes; status comparisons and writes see
    /// only these.
    pub const OWNED: [&str; 6] = [
        READY,
        INVALID,
        QUOTA_CONSTRAINED,
        DEGRADED,
        STALLED,
        RECONCILING,
    ];
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
    /// `Ready` before reports: what the plan says (kept for Events).
    pub const PLANNED: &str = "Planned";
    /// `Ready` is True: every node selected reported every probe running.
    pub const RUNNING: &str = "Running";
    /// `Ready` is False and `Reconciling` True: no report yet.
    pub const AWAITING_REPORTS: &str = "AwaitingReports";
    /// `Stalled` is False.
    pub const NOT_STALLED: &str = "NotStalled";
    /// `Reconciling` is False.
    pub const RECONCILED: &str = "Reconciled";
    pub const NO_MATCHING_NODES: &str = "NoMatchingNodes";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const VALID_SPEC: &str = "ValidSpec";
    pub const BUDGET_SHORT: &str = "BudgetShort";
    /// The platform's node budget, shared with other ProbeSets on a node,
    /// gives the ProbeSet less than its own plan asks for.
    pub const NODE_BUDGET_SHORT: &str = "NodeBudgetShort";
    /// QuotaConstrained: a limit the cluster administrator set on the
    /// ProbeSet's namespace (a `ringwarden.dev/*` annotation on the
    /// Namespace) leaves out probes, lowers a priority, or caps the bytes
    /// its namespace gets on a node; the message names the limit and the
    /// annotation.
    pub const NAMESPACE_LIMIT: &str = "NamespaceLimit";
    pub const WITHIN_BUDGET: &str = "WithinBudget";
    /// `Degraded` is False: every node selected runs every probe.
    pub const NODES_HEALTHY: &str = "NodesHealthy";
    /// `Degraded` is True: the ProbeSet has uprobe probes and the cluster
    /// has not enabled uprobes (`agent.uprobes.enabled`), so they do not run.
    pub const UPROBES_NOT_ENABLED: &str = "UprobesNotEnabled";
    // When `Degraded` is True, its reason is the gravest node problem:
    // see `crate::ingest::reports::problem`.
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
            let mut limited = planned.limited.clone();
            if let Some(s) = share.filter(|s| s.share.constrained())
                && let Some(limit) = s.share.namespace_limit_bytes
            {
                limited.push(format!(
                    "namespace {} may take {} per node (the Namespace's annotation {})",
                    s.share.namespace,
                    format_bytes(limit),
                    ringwarden_crds::agent::NODE_BYTES_ANNOTATION
                ));
            }
            let by_limit = (!limited.is_empty()).then(|| {
                let mut message = format!("namespace limits: {}", limited.join("; "));
                if let Some(shared) = &shared {
                    message = format!("{message}. And {shared}");
                }
                if let Some(own) = &own {
                    message = format!("{message}. And {own}");
                }
                message
            });
            conditions.push(match (by_limit, shared, own) {
                (Some(by_limit), _, _) => cond(
                    condition::QUOTA_CONSTRAINED,
                    true,
                    reason::NAMESPACE_LIMIT,
                    by_limit,
                ),
                (None, None, None) => cond(
                    condition::QUOTA_CONSTRAINED,
                    false,
                    reason::WITHIN_BUDGET,
                    "every probe gets the ring buffer its declared rate needs".into(),
                ),
                (None, None, Some(own)) => cond(
                    condition::QUOTA_CONSTRAINED,
                    true,
                    reason::BUDGET_SHORT,
                    own,
                ),
                (None, Some(shared), own) => cond(
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
    let invalid = matches!(assessment, Assessment::Invalid(_));
    if invalid {
        // Nothing runs: no figure or report-made condition of an earlier
        // generation stays.
    } else if let Some(r) = reported {
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
        // Kept until reports say otherwise (a new leader waits a few report
        // intervals for them). Conditions of other types belong to other
        // field managers: never applied (and so never taken over) by the
        // operator.
        conditions.push(c.clone());
    }
    let (ready, events_per_second, drop_percent) = match reported {
        _ if invalid => (None, None, None),
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
    let mut status = ProbeSetStatus {
        observed_generation: generation,
        conditions,
        ready,
        state: None,
        events_per_second,
        drop_percent,
        predicted_drop_percent,
        ring_buffer,
        plan,
        // The caller names the cluster (`Hub::cluster`).
        cluster: None,
    };
    settle(ps, &mut status, now);
    status
}

/// Derives what the other conditions and the reports say into `Ready`,
/// `Stalled`, `Reconciling` and the one-phrase `state`, so that each
/// claims only what the agents' latest reports show:
///
/// - `Invalid`: not ready, stalled until the spec changes;
/// - no node selected: not ready, not stalled (the probes start when a
///   node joins);
/// - `Degraded` (a selected node does not run a probe, is silent, or drops
///   more than allowed): not ready and stalled, with its reason;
/// - no report yet: not ready, reconciling;
/// - otherwise ready: every node selected runs every probe.
///
/// kstatus (Flux's default health check, kpt) reads `Stalled` as Failed
/// and `Reconciling` as InProgress; so it agrees with the conditions.
fn settle(ps: &ProbeSet, status: &mut ProbeSetStatus, now: &Time) {
    let find = |t: &str| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == t)
            .map(|c| (c.status == "True", c.reason.clone(), c.message.clone()))
    };
    let invalid = find(condition::INVALID).filter(|(t, _, _)| *t);
    let no_nodes = find(condition::READY).is_some_and(|(_, r, _)| r == reason::NO_MATCHING_NODES);
    let degraded = find(condition::DEGRADED);
    // What the plan says, in `Ready`'s message whatever the reports say.
    let plan_message = status.plan.as_ref().map_or_else(String::new, |p| {
        let n = p.probes.len();
        format!(
            "{n} probe{} planned with {} of ring buffers per node",
            if n == 1 { "" } else { "s" },
            status.ring_buffer.as_deref().unwrap_or("0")
        )
    });
    let (ready, stalled, reconciling, state) = if let Some((_, _, message)) = invalid {
        // The first error's field, when it names one.
        let field = message
            .split_once(": ")
            .map(|(f, _)| f)
            .filter(|f| f.starts_with("spec") && !f.contains(' '))
            .unwrap_or("spec")
            .to_owned();
        (
            None,
            Some((reason::INVALID_SPEC, message)),
            None,
            format!("Invalid: {field}"),
        )
    } else if no_nodes || status.plan.is_none() {
        // No node has the labels of the node selector: Ready says so.
        (None, None, None, reason::NO_MATCHING_NODES.to_owned())
    } else if let Some((true, why, message)) = &degraded {
        let why = static_reason(why);
        (
            Some((false, why, message.clone())),
            Some((why, message.clone())),
            None,
            format!("Degraded: {why}"),
        )
    } else if degraded.is_none() || !all_ready(status.ready.as_deref()) {
        // No report yet, or nodes that report nothing wrong but not every
        // probe yet (agents starting): never ready before they all run.
        let message = match status.ready.as_deref() {
            Some(ready) if degraded.is_some() => {
                format!("{plan_message}; {ready} nodes run every probe so far")
            }
            _ => format!("{plan_message}; waiting for the agents' first reports"),
        };
        (
            Some((false, reason::AWAITING_REPORTS, message.clone())),
            None,
            Some((reason::AWAITING_REPORTS, message)),
            "Reconciling".to_owned(),
        )
    } else {
        let message = format!(
            "{} nodes run every probe; {plan_message}",
            status.ready.as_deref().unwrap_or_default(),
        );
        (
            Some((true, reason::RUNNING, message)),
            None,
            None,
            "Ready".to_owned(),
        )
    };
    let before: Vec<Condition> = ps
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let generation = ps.metadata.generation;
    let cond = |type_: &str, ok: bool, reason: &str, message: String| {
        condition_at(&before, type_, ok, reason, message, generation, now)
    };
    if let Some((ok, why, message)) = ready
        && let Some(c) = status
            .conditions
            .iter_mut()
            .find(|c| c.type_ == condition::READY)
    {
        *c = cond(condition::READY, ok, why, message);
    }
    status
        .conditions
        .retain(|c| c.type_ != condition::STALLED && c.type_ != condition::RECONCILING);
    status.conditions.push(match stalled {
        Some((why, message)) => cond(condition::STALLED, true, why, message),
        None => cond(
            condition::STALLED,
            false,
            reason::NOT_STALLED,
            "nothing stops the probes from running".into(),
        ),
    });
    status.conditions.push(match reconciling {
        Some((why, message)) => cond(condition::RECONCILING, true, why, message),
        None => cond(
            condition::RECONCILING,
            false,
            reason::RECONCILED,
            "the status shows the agents' latest reports on this generation".into(),
        ),
    });
    status.state = Some(state);
}

/// Whether `ready` (`3/3`) counts every node selected, and some.
fn all_ready(ready: Option<&str>) -> bool {
    ready
        .and_then(|r| r.split_once('/'))
        .is_some_and(|(a, b)| a == b && b != "0")
}

/// `why` as one of the constant reasons a `Degraded` condition carries.
fn static_reason(why: &str) -> &'static str {
    crate::ingest::reports::problem::ORDER
        .into_iter()
        .chain([reason::UPROBES_NOT_ENABLED])
        .find(|r| *r == why)
        .unwrap_or(crate::ingest::reports::problem::LOAD_FAILED)
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
/// configuration ([`crate::reconcile::render::agent_objects`]); the others run.
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
        settle(ps, status, now);
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
    settle(ps, status, now);
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
        let before_ready = was(condition::READY);
        if after.plan.is_some()
            && why != reason::NO_MATCHING_NODES
            && before.is_none_or(|b| b.plan.is_none())
        {
            let plan = message
                .split_once("; ")
                .map_or(message.as_str(), |(plan, _)| plan);
            notice(false, reason::PLANNED, plan);
        }
        let before = before_ready;
        if status == "True" && before.as_ref().is_none_or(|(s, _)| s != "True") {
            notice(false, reason::RUNNING, &message);
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
            notice(true, static_reason(&why), &message);
        }
        if status == "False" && before.as_deref() == Some("True") {
            notice(false, reason::NODES_HEALTHY, &message);
        }
    }
    if let Some((status, why, message)) = find(Some(after), condition::QUOTA_CONSTRAINED) {
        let before = was(condition::QUOTA_CONSTRAINED).map(|(s, _)| s);
        if status == "True" && before.as_deref() != Some("True") {
            let reason = match why.as_str() {
                reason::NODE_BUDGET_SHORT => reason::NODE_BUDGET_SHORT,
                reason::NAMESPACE_LIMIT => reason::NAMESPACE_LIMIT,
                _ => reason::BUDGET_SHORT,
            };
            notice(true, reason, &message);
        }
        if status == "False" && before.as_deref() == Some("True") {
            notice(false, reason::WITHIN_BUDGET, &message);
        }
    }
    out
}

use crate::ingest::reports::truncate;

#[cfg(test)]
mod tests;
