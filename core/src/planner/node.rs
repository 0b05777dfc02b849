//! One node budget, shared fairly: the locked kernel memory of every probe
//! of every ProbeSet that runs on a node (its maps and its ring buffer,
//! see [`crate::maps`]) within the one budget the platform sets.
//!
//! Each ProbeSet first plans its rings against its own `nodeBudget`
//! ([`super::plan`]); that ring is its request. The node then serves
//! priorities strictly, highest first: each gets all it asks for (maps and
//! requested rings) from what higher priorities left. The first priority
//! that does not fit shares what is left among its probes:
//!
//! 1. **admission**: each probe needs its maps and a ring of one page (or
//!    one record) at least. While those minimums exceed what is left, one
//!    probe is left out at a time: of the namespace holding the most on
//!    the node, then of the ProbeSet holding the most, then the largest,
//!    then by name. A probe left out is not loaded, and says why; the
//!    others are unaffected.
//! 2. **rings**: while the admitted probes exceed what is left, one ring
//!    is halved at a time: a ring of the namespace holding the most memory
//!    on the node (max-min fairness: no namespace keeps more than a
//!    squeezed one, give or take the one halving that squeezed it), the
//!    largest first, then by name.
//!
//! Lower priorities get nothing: a probe runs only if every probe of higher
//! priority on the node got all it asked for. Then each ring gets the
//! sparsest sampling its drops need, as in the ProbeSet's own plan.
//!
//! Priorities are compared across ProbeSets and namespaces. Pure and
//! deterministic, independent of input order; the operator plans with it
//! for status, and agents (and standalone mode) plan with it on the node,
//! with its real CPU count and page size, before creating any map.

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

    // Strict priority: each priority, highest first, gets what it asks
    // for from what the higher ones left; the first that does not fit is
    // shared among its probes, and lower priorities get nothing.
    let minimum = |it: &Item| it.fixed + ring_cost(it.floor);
    let cost = |it: &Item| it.fixed + ring_cost(it.ring);
    let mut ns_use: BTreeMap<&str, u128> = BTreeMap::new();
    let mut used: u128 = 0;
    let mut priorities: Vec<i32> = items.iter().map(|it| it.priority).collect();
    priorities.sort_unstable_by_key(|&p| Reverse(p));
    priorities.dedup();
    let mut squeezed_at = None;
    for priority in priorities {
        let tier: Vec<usize> = (0..items.len())
            .filter(|&i| items[i].priority == priority && items[i].admitted)
            .collect();
        if squeezed_at.is_some() {
            for &i in &tier {
                items[i].admitted = false;
                items[i].outranked = true;
            }
            continue;
        }
        let asked: u128 = tier.iter().map(|&i| u128::from(cost(&items[i]))).sum();
        if used + asked > budget {
            squeezed_at = Some(priority);
            squeeze(
                &mut items,
                &tier,
                budget - used,
                &ns_use,
                &key,
                &minimum,
                &cost,
            );
        }
        for &i in tier.iter().filter(|&&i| items[i].admitted) {
            let c = u128::from(cost(&items[i]));
            *ns_use.entry(key(&items[i]).0).or_default() += c;
            used += c;
        }
    }

    // 3. Sampling and reasons, per ProbeSet.
    let namespaces: BTreeMap<&str, u32> =
        input.probesets.iter().fold(BTreeMap::new(), |mut m, ps| {
            *m.entry(ps.namespace.as_str()).or_default() += 1;
            m
        });
    let mut shares: Vec<ProbeSetShare> = input
        .probesets
        .iter()
        .map(|ps| ProbeSetShare {
            namespace: ps.namespace.clone(),
            name: ps.name.clone(),
            requested_bytes: 0,
            granted_bytes: 0,
            other_probesets: input.probesets.len() as u32 - 1,
            other_namespaces: namespaces.len() as u32 - 1,
            probes: Vec::new(),
        })
        .collect();
    for (it, draft) in items.iter().zip(drafts) {
        let ps = &input.probesets[it.ps];
        let p = &ps.probes[it.probe];
        let share = &mut shares[it.ps];
        let requested = it.fixed + ring_cost(it.request.max(page));
        let mut draft = draft.expect("one draft per item");
        let mut cuts = Vec::new();
        if it.request > 0 && it.request < draft.ring {
            cuts.push(format!("cut to {} by nodeBudget", bytes(it.request as f64)));
        }
        let plan = if it.admitted {
            if it.halvings > 0 {
                cuts.push(format!(
                    "halved {} more to fit the node budget of {} {} (priority {}; higher priorities are served first, then rings of the namespaces holding the most, larger first, are halved)",
                    times(it.halvings),
                    bytes(input.node_budget_bytes as f64),
                    share.sharing(),
                    it.priority
                ));
            }
            draft.ring = if it.request == 0 { 0 } else { it.ring };
            finish(&p.demand, draft, cuts)
        } else {
            let why = match &it.error {
                Some(e) => format!("not loaded: {e}"),
                None if it.outranked => format!(
                    "not loaded: the node budget of {} does not hold all probes of higher priority than its {} {}",
                    bytes(input.node_budget_bytes as f64),
                    it.priority,
                    share.sharing(),
                ),
                None => format!(
                    "not loaded: its maps take {} even with the smallest ring, more than the node budget of {} has left {} (priority {}; higher priorities are served first, then probes of the namespaces holding the most give way)",
                    bytes(minimum(it) as f64),
                    bytes(input.node_budget_bytes as f64),
                    share.sharing(),
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
        probesets: shares,
    })
}

/// Fits the probes `tier` (of one priority) into `room` bytes, with the
/// bytes each namespace holds at higher priorities in `held`: first leaves
/// out probes whose smallest form does not fit, from the namespace holding
/// the most, then halves rings, from the namespace holding the most.
#[allow(clippy::too_many_arguments)]
fn squeeze<'a>(
    items: &mut [Item],
    tier: &[usize],
    room: u128,
    held: &BTreeMap<&'a str, u128>,
    key: &dyn Fn(&Item) -> (&'a str, &'a str, &'a str),
    minimum: &dyn Fn(&Item) -> u64,
    cost: &dyn Fn(&Item) -> u64,
) {
    let usage = |items: &[Item], f: &dyn Fn(&Item) -> u64| {
        let mut by_ns: BTreeMap<&str, u128> = held.clone();
        let mut by_ps: BTreeMap<usize, u128> = BTreeMap::new();
        for &i in tier.iter().filter(|&&i| items[i].admitted) {
            *by_ns.entry(key(&items[i]).0).or_default() += u128::from(f(&items[i]));
            *by_ps.entry(items[i].ps).or_default() += u128::from(f(&items[i]));
        }
        (by_ns, by_ps)
    };
    // Admission: each probe's maps and smallest ring.
    let (mut ns_min, mut ps_min) = usage(items, minimum);
    let mut total: u128 = tier
        .iter()
        .filter(|&&i| items[i].admitted)
        .map(|&i| u128::from(minimum(&items[i])))
        .sum();
    while total > room {
        let victim = tier
            .iter()
            .copied()
            .filter(|&i| items[i].admitted)
            .min_by_key(|&i| {
                let it = &items[i];
                let (ns, ps, name) = key(it);
                (
                    Reverse(ns_min[ns]),
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
        *ns_min.get_mut(key(&items[victim]).0).expect("counted") -= c;
        *ps_min.get_mut(&items[victim].ps).expect("counted") -= c;
        total -= c;
    }
    // Rings, halved from the namespace holding the most, largest first.
    let (mut ns_use, _) = usage(items, cost);
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
                (Reverse(ns_use[ns]), Reverse(it.ring), ns, ps, name, i)
            })
            .expect("the admitted minimums fit, so some ring is above its floor");
        let before = cost(&items[victim]);
        items[victim].ring /= 2;
        items[victim].halvings += 1;
        let freed = u128::from(before - cost(&items[victim]));
        *ns_use.get_mut(key(&items[victim]).0).expect("counted") -= freed;
        used -= freed;
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
