//! One node budget, shared fairly: the locked kernel memory of every probe
//! of every ProbeSet that runs on a node (its maps and its ring buffer,
//! see [`crate::maps`]) within the one budget the platform sets.
//!
//! Each ProbeSet first plans its rings against its own `nodeBudget`
//! ([`super::plan`]); that ring, with the probe's maps, is its request.
//! The node then shares its budget in two levels:
//!
//! 1. **the platform first**: ClusterProbeSets (namespace `""`), which only
//!    the cluster administrator who also sets the node budget can create,
//!    are served before any namespace, among themselves by priority (below).
//!    No namespaced ProbeSet can take their bytes, whatever it asks.
//! 2. **namespaces, max-min fairly**: what they leave is shared among the
//!    namespaces by water-filling over what each asks (the sum of its
//!    probes' requests, capped by the namespace's own limit in
//!    [`NodeInput::namespace_bytes`]): a namespace asking for less than an
//!    equal part gets all it asks; the rest split what remains equally. A
//!    namespace's share depends only on what the namespaces ask, never on
//!    their priorities, names or order; what a namespace cannot use of its
//!    share (rings are powers of two) stays unused rather than letting one
//!    namespace's choices move another's grant.
//!
//! Within one group (the ClusterProbeSets, or one namespace) priorities
//! are served strictly, highest first: each gets all it asks for from
//! what higher priorities left. The first priority that does not fit
//! shares what is left among its probes:
//!
//! 1. **admission**: each probe needs its maps and a ring of one page (or
//!    one record) at least. While those minimums exceed what is left, one
//!    probe is left out at a time: of the ProbeSet holding the most, then
//!    the largest, then by name. A probe left out is not loaded, and says
//!    why; the others are unaffected.
//! 2. **rings**: while the admitted probes exceed what is left, one ring
//!    is halved at a time, the largest first, then by name.
//!
//! Lower priorities of the group get nothing. Then each ring gets the
//! sparsest sampling its drops need, as in the ProbeSet's own plan.
//!
//! So a priority orders probes only within its namespace: a tenant who
//! writes `priority: 2147483647` outranks nobody but its own namespace's
//! probes. Pure and deterministic, independent of input order; the
//! operator plans with it for status, and agents (and standalone mode)
//! plan with it on the node, with its real CPU count and page size,
//! before creating any map.

use std::{cmp::Reverse, collections::BTreeMap};

use serde::{Deserialize, Serialize};

use super::{
    DEFAULT_MAX_BYTES_PER_PROBE, PlanError, PlanInput, ProbeDemand, ProbePlan, bytes, finish, size,
    times, validate,
};
use crate::maps::{self, ProbeMaps};

/// Everything that runs on one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInput {
    /// The node's page size.
    pub page_size: u64,
    /// The node's possible CPUs, for which every per-CPU map is allocated.
    pub cpus: u32,
    /// Locked kernel bytes all probes on the node may take together: maps
    /// and ring buffers.
    pub node_budget_bytes: u64,
    /// Largest ring one probe may get.
    #[serde(default = "default_max_bytes_per_probe")]
    pub max_bytes_per_probe: u64,
    pub probesets: Vec<ProbeSetDemand>,
    /// Most bytes the probes of a namespace may take on the node, by
    /// namespace: the cluster administrator's limit (the Namespace's
    /// `ringwarden.dev/node-bytes` annotation). Namespaces not listed are
    /// limited only by their fair share; ClusterProbeSets never are.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub namespace_bytes: BTreeMap<String, u64>,
}

fn default_max_bytes_per_probe() -> u64 {
    DEFAULT_MAX_BYTES_PER_PROBE
}

/// One ProbeSet's probes on the node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeSetDemand {
    pub namespace: String,
    pub name: String,
    pub probes: Vec<NodeProbeDemand>,
}

/// One probe: its event path, its maps, and the ring its ProbeSet's own
/// plan gives it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeProbeDemand {
    pub demand: ProbeDemand,
    pub maps: ProbeMaps,
    /// The ring its ProbeSet's own plan (within `nodeBudget`) gives it:
    /// the most the node plan grants.
    pub ring_request: u64,
}

/// The node's plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodePlan {
    pub budget_bytes: u64,
    /// Bytes the admitted probes take, at most `budget_bytes`.
    pub used_bytes: u64,
    pub cpus: u32,
    pub page_size: u64,
    /// One per input ProbeSet, in input order.
    pub probesets: Vec<ProbeSetShare>,
}

/// What one ProbeSet asked of the node and what it got.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeSetShare {
    pub namespace: String,
    pub name: String,
    /// Bytes its probes take with the rings its own plan gives them.
    pub requested_bytes: u64,
    /// Bytes its loaded probes take in this plan.
    pub granted_bytes: u64,
    /// Other ProbeSets sharing the node, and the namespaces besides its
    /// own they are in.
    pub other_probesets: u32,
    pub other_namespaces: u32,
    /// What the node plan gives its namespace as a whole: its fair share
    /// of what the ClusterProbeSets leave (capped by the namespace's
    /// limit), or, for a ClusterProbeSet, the whole node budget.
    pub namespace_share_bytes: u64,
    /// The namespace's limit ([`NodeInput::namespace_bytes`]) when it is
    /// what caps the namespace's share: the namespace asks for more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_limit_bytes: Option<u64>,
    /// One per input probe, in input order.
    pub probes: Vec<ProbeShare>,
}

impl ProbeSetShare {
    /// Whether the node budget gave it less than it asked for.
    pub fn constrained(&self) -> bool {
        self.granted_bytes < self.requested_bytes
    }

    /// "with 2 other ProbeSets in 1 other namespace": how crowded the node
    /// is, naming no other tenant's objects.
    pub fn sharing(&self) -> String {
        let plural = |n: u32, one: &str, many: &str| {
            format!("{n} other {}", if n == 1 { one } else { many })
        };
        format!(
            "with {} in {}",
            plural(self.other_probesets, "ProbeSet", "ProbeSets"),
            plural(self.other_namespaces, "namespace", "namespaces")
        )
    }
}

/// One probe's share.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeShare {
    /// False: the node cannot hold even its smallest form; it is not loaded.
    pub admitted: bool,
    /// Bytes of its maps besides the ring.
    pub map_bytes: u64,
    /// Bytes of all its maps with the planned ring; 0 when not admitted.
    pub memory_bytes: u64,
    /// Bytes of all its maps with the ring it asked for.
    pub requested_bytes: u64,
    /// The ring it asked for (0 without an event path).
    pub ring_request: u64,
    /// Ring and sampling, with the reasons (ring 0 when not admitted or
    /// without an event path; the agent then maps one page).
    pub plan: ProbePlan,
}

/// One probe while the node is planned.
struct Item {
    ps: usize,
    probe: usize,
    priority: i32,
    fixed: u64,
    /// Ring as mapped: at least a page.
    ring: u64,
    floor: u64,
    request: u64,
    admitted: bool,
    /// Left out because a higher priority did not fit.
    outranked: bool,
    halvings: u32,
    error: Option<String>,
}

/// Plans every probe on the node; see the module docs.
pub fn plan_node(input: &NodeInput) -> Result<NodePlan, PlanError> {
    let page = input.page_size;
    validate(&PlanInput {
        page_size: page,
        node_budget_bytes: u64::MAX,
        max_bytes_per_probe: input.max_bytes_per_probe,
        probes: vec![],
    })?;
    if input.cpus == 0 {
        return Err(PlanError::Cpus);
    }
    let cpus = u64::from(input.cpus);
    let ring_cost = |ring: u64| maps::ringbuf_bytes(ring, page);
    let sizing = PlanInput {
        page_size: page,
        node_budget_bytes: u64::MAX,
        max_bytes_per_probe: input.max_bytes_per_probe,
        probes: vec![],
    };

    let mut items = Vec::new();
    let mut drafts = Vec::new();
    for (psi, ps) in input.probesets.iter().enumerate() {
        // A ProbeSet whose probes its own plan refuses runs none of them.
        let error = validate(&PlanInput {
            probes: ps.probes.iter().map(|p| p.demand.clone()).collect(),
            ..sizing.clone()
        })
        .err()
        .map(|e| e.to_string());
        for (pi, p) in ps.probes.iter().enumerate() {
            let draft = size(&p.demand, &sizing);
            let floor = draft.floor.max(page);
            // The request, as a power of two between the floor and what the
            // declared rate needs.
            let request = if draft.ring == 0 {
                0
            } else {
                prev_power_of_two(p.ring_request)
                    .min(draft.ring)
                    .max(draft.floor)
            };
            items.push(Item {
                ps: psi,
                probe: pi,
                priority: p.demand.priority,
                fixed: maps::fixed_bytes(&p.maps, cpus, page),
                ring: request.max(page),
                floor: if draft.ring == 0 { page } else { floor },
                request,
                admitted: error.is_none(),
                outranked: false,
                halvings: 0,
                error: error.clone(),
            });
            drafts.push(Some(draft));
        }
    }
    let key = |it: &Item| {
        let ps = &input.probesets[it.ps];
        (
            ps.namespace.as_str(),
            ps.name.as_str(),
            ps.probes[it.probe].demand.name.as_str(),
        )
    };
    let budget = u128::from(input.node_budget_bytes);
    let minimum = |it: &Item| it.fixed + ring_cost(it.floor);
    let cost = |it: &Item| it.fixed + ring_cost(it.ring);

    // The groups: ClusterProbeSets (namespace "") and each namespace.
    let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, it) in items.iter().enumerate() {
        groups.entry(key(it).0).or_default().push(i);
    }
    // What each group asks: its runnable probes with their requested rings.
    let asks: BTreeMap<&str, u128> = groups
        .iter()
        .map(|(&ns, members)| {
            let asked = members
                .iter()
                .filter(|&&i| items[i].admitted)
                .map(|&i| u128::from(cost(&items[i])))
                .sum();
            (ns, asked)
        })
        .collect();
    // 1. The platform's ClusterProbeSets, first, from the whole budget.
    let mut used: u128 = 0;
    let mut shares: BTreeMap<&str, u128> = BTreeMap::new();
    if let Some(members) = groups.get("") {
        used += serve(&mut items, members, budget, &key, &minimum, &cost);
        shares.insert("", budget);
    }
    // 2. Namespaces, max-min fairly, each within its limit.
    let limits: BTreeMap<&str, u128> = groups
        .keys()
        .filter(|ns| !ns.is_empty())
        .filter_map(|&ns| {
            let limit = input.namespace_bytes.get(ns)?;
            Some((ns, u128::from(*limit)))
        })
        .collect();
    let wants: BTreeMap<&str, u128> = asks
        .iter()
        .filter(|(ns, _)| !ns.is_empty())
        .map(|(&ns, &asked)| (ns, limits.get(ns).map_or(asked, |&l| asked.min(l))))
        .collect();
    let fair = water_fill(budget - used, &wants);
    for (&ns, &share) in &fair {
        used += serve(&mut items, &groups[ns], share, &key, &minimum, &cost);
        shares.insert(ns, share);
    }

    // 3. Sampling and reasons, per ProbeSet.
    let namespaces: BTreeMap<&str, u32> =
        input.probesets.iter().fold(BTreeMap::new(), |mut m, ps| {
            *m.entry(ps.namespace.as_str()).or_default() += 1;
            m
        });
    let clamp = |n: u128| u64::try_from(n).unwrap_or(u64::MAX);
    let mut out: Vec<ProbeSetShare> = input
        .probesets
        .iter()
        .map(|ps| {
            let ns = ps.namespace.as_str();
            let limited = limits.get(ns).filter(|&&l| asks[ns] > l);
            ProbeSetShare {
                namespace: ps.namespace.clone(),
                name: ps.name.clone(),
                requested_bytes: 0,
                granted_bytes: 0,
                other_probesets: input.probesets.len() as u32 - 1,
                other_namespaces: namespaces.len() as u32 - 1,
                namespace_share_bytes: clamp(shares[ns]),
                namespace_limit_bytes: limited.map(|&l| clamp(l)),
                probes: Vec::new(),
            }
        })
        .collect();
    for (it, draft) in items.iter().zip(drafts) {
        let ps = &input.probesets[it.ps];
        let p = &ps.probes[it.probe];
        let share = &mut out[it.ps];
        let requested = it.fixed + ring_cost(it.request.max(page));
        let mut draft = draft.expect("one draft per item");
        let mut cuts = Vec::new();
        if it.request > 0 && it.request < draft.ring {
            cuts.push(format!("cut to {} by nodeBudget", bytes(it.request as f64)));
        }
        // What this probe's group had to fit in.
        let room = if ps.namespace.is_empty() {
            format!(
                "the node budget of {} {} (ClusterProbeSets are served first)",
                bytes(input.node_budget_bytes as f64),
                share.sharing(),
            )
        } else {
            let capped = match share.namespace_limit_bytes {
                Some(l) if u128::from(l) == shares[ps.namespace.as_str()] => {
                    format!(", capped by the namespace's limit of {}", bytes(l as f64))
                }
                _ => String::new(),
            };
            format!(
                "namespace {}'s share of the node budget, {} of {} {}{capped} (namespaces share fairly what ClusterProbeSets leave)",
                ps.namespace,
                bytes(share.namespace_share_bytes as f64),
                bytes(input.node_budget_bytes as f64),
                share.sharing(),
            )
        };
        let within = if ps.namespace.is_empty() {
            "among ClusterProbeSets".to_owned()
        } else {
            format!("within namespace {}", ps.namespace)
        };
        let plan = if it.admitted {
            if it.halvings > 0 {
                cuts.push(format!(
                    "halved {} more to fit {room} (priority {}; {within}, higher priorities are served first, then larger rings are halved)",
                    times(it.halvings),
                    it.priority
                ));
            }
            draft.ring = if it.request == 0 { 0 } else { it.ring };
            finish(&p.demand, draft, cuts)
        } else {
            let why = match &it.error {
                Some(e) => format!("not loaded: {e}"),
                None if it.outranked => format!(
                    "not loaded: {room} does not hold all probes of higher priority than its {} {within}",
                    it.priority,
                ),
                None => format!(
                    "not loaded: its maps take {} even with the smallest ring, more than {room} has left (priority {}; {within}, higher priorities are served first, then probes of the ProbeSet holding the most give way)",
                    bytes(minimum(it) as f64),
                    it.priority
                ),
            };
            draft.reasons.extend(cuts);
            draft.reasons.push(why);
            ProbePlan {
                name: p.demand.name.clone(),
                ring_bytes: 0,
                record_bytes: draft.record,
                needed_bytes: draft.needed,
                sample_every: draft.sample_every,
                effective_sampling: 1.0 / draft.sample_every as f64,
                predicted_drop: 0.0,
                reasons: draft.reasons,
            }
        };
        let memory = if it.admitted { cost(it) } else { 0 };
        share.requested_bytes += requested;
        share.granted_bytes += memory;
        share.probes.push(ProbeShare {
            admitted: it.admitted,
            map_bytes: it.fixed,
            memory_bytes: memory,
            requested_bytes: requested,
            ring_request: it.request,
            plan,
        });
    }
    Ok(NodePlan {
        budget_bytes: input.node_budget_bytes,
        used_bytes: u64::try_from(used).expect("used fits the u64 budget"),
        cpus: input.cpus,
        page_size: page,
        probesets: out,
    })
}

/// Max-min fair shares of `room` for what each asks in `wants`: whoever
/// asks for no more than an equal part of what is left gets all it asks
/// (smallest first); the others split the rest equally (rounded down).
/// Depends only on the amounts, not on the names.
pub fn water_fill<'a>(room: u128, wants: &BTreeMap<&'a str, u128>) -> BTreeMap<&'a str, u128> {
    let mut order: Vec<(&str, u128)> = wants.iter().map(|(&k, &v)| (k, v)).collect();
    order.sort_by_key(|&(name, want)| (want, name));
    let mut left = room;
    let mut shares = BTreeMap::new();
    let mut rest = order.len();
    for &(name, want) in &order {
        if want.saturating_mul(rest as u128) > left {
            break;
        }
        shares.insert(name, want);
        left -= want;
        rest -= 1;
    }
    if rest > 0 {
        let equal = left / rest as u128;
        for &(name, _) in &order[order.len() - rest..] {
            shares.insert(name, equal);
        }
    }
    shares
}

/// Serves the probes `members` of one group (the ClusterProbeSets, or one
/// namespace) from `room` bytes, priorities strictly, highest first: each
/// gets what it asks from what higher ones left; the first that does not
/// fit is squeezed ([`squeeze`]); lower ones get nothing. Returns the
/// bytes taken.
fn serve<'a>(
    items: &mut [Item],
    members: &[usize],
    room: u128,
    key: &dyn Fn(&Item) -> (&'a str, &'a str, &'a str),
    minimum: &dyn Fn(&Item) -> u64,
    cost: &dyn Fn(&Item) -> u64,
) -> u128 {
    let mut priorities: Vec<i32> = members.iter().map(|&i| items[i].priority).collect();
    priorities.sort_unstable_by_key(|&p| Reverse(p));
    priorities.dedup();
    let mut used: u128 = 0;
    let mut squeezed = false;
    for priority in priorities {
        let tier: Vec<usize> = members
            .iter()
            .copied()
            .filter(|&i| items[i].priority == priority && items[i].admitted)
            .collect();
        if squeezed {
            for &i in &tier {
                items[i].admitted = false;
                items[i].outranked = true;
            }
            continue;
        }
        let asked: u128 = tier.iter().map(|&i| u128::from(cost(&items[i]))).sum();
        if used + asked > room {
            squeezed = true;
            squeeze(items, &tier, room - used, key, minimum, cost);
        }
        used += tier
            .iter()
            .filter(|&&i| items[i].admitted)
            .map(|&i| u128::from(cost(&items[i])))
            .sum::<u128>();
    }
    used
}

/// Fits the probes `tier` (of one priority, in one group) into `room`
/// bytes: first leaves out probes whose smallest form does not fit, from
/// the ProbeSet holding the most, then halves rings, largest first.
fn squeeze<'a>(
    items: &mut [Item],
    tier: &[usize],
    room: u128,
    key: &dyn Fn(&Item) -> (&'a str, &'a str, &'a str),
    minimum: &dyn Fn(&Item) -> u64,
    cost: &dyn Fn(&Item) -> u64,
) {
    // Admission: each probe's maps and smallest ring.
    let mut ps_min: BTreeMap<usize, u128> = BTreeMap::new();
    for &i in tier.iter().filter(|&&i| items[i].admitted) {
        *ps_min.entry(items[i].ps).or_default() += u128::from(minimum(&items[i]));
    }
    let mut total: u128 = ps_min.values().sum();
    while total > room {
        let victim = tier
            .iter()
            .copied()
            .filter(|&i| items[i].admitted)
            .min_by_key(|&i| {
                let it = &items[i];
                let (ns, ps, name) = key(it);
                (
                    Reverse(ps_min[&it.ps]),
                    Reverse(minimum(it)),
                    ns,
                    ps,
                    name,
                    i,
                )
            })
            .expect("an over-budget priority has admitted probes");
        let c = u128::from(minimum(&items[victim]));
        items[victim].admitted = false;
        *ps_min.get_mut(&items[victim].ps).expect("counted") -= c;
        total -= c;
    }
    // Rings, halved largest first.
    let mut used: u128 = tier
        .iter()
        .filter(|&&i| items[i].admitted)
        .map(|&i| u128::from(cost(&items[i])))
        .sum();
    while used > room {
        let victim = tier
            .iter()
            .copied()
            .filter(|&i| items[i].admitted && items[i].ring > items[i].floor)
            .min_by_key(|&i| {
                let it = &items[i];
                let (ns, ps, name) = key(it);
                (Reverse(it.ring), ns, ps, name, i)
            })
            .expect("the admitted minimums fit, so some ring is above its floor");
        let before = cost(&items[victim]);
        items[victim].ring /= 2;
        items[victim].halvings += 1;
        used -= u128::from(before - cost(&items[victim]));
    }
}

/// Largest power of two at most `n` (0 for 0).
fn prev_power_of_two(n: u64) -> u64 {
    if n == 0 {
        0
    } else {
        1 << (63 - n.leading_zeros())
    }
}

#[cfg(test)]
mod tests;
