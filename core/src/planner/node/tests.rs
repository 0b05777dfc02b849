//! The node plan's tests: worked cases and the properties it promises.

use super::*;
use crate::maps::{fixed_bytes, ringbuf_bytes};
use proptest::prelude::*;

const KIB: u64 = 1024;
const PAGE: u64 = 4 * KIB;

/// A probe exporting 96-byte records at `rate`, keeping `series` series,
/// asking for `request` bytes of ring.
fn probe(name: &str, rate: f64, priority: i32, series: u32, request: u64) -> NodeProbeDemand {
    NodeProbeDemand {
        demand: ProbeDemand {
            priority,
            ..ProbeDemand::new(name, 88, rate, 0.01)
        },
        maps: ProbeMaps::new(series),
        ring_request: request,
    }
}

fn probeset(ns: &str, name: &str, probes: Vec<NodeProbeDemand>) -> ProbeSetDemand {
    ProbeSetDemand {
        namespace: ns.into(),
        name: name.into(),
        probes,
    }
}

fn node(budget: u64, cpus: u32, probesets: Vec<ProbeSetDemand>) -> NodeInput {
    NodeInput {
        page_size: PAGE,
        cpus,
        node_budget_bytes: budget,
        max_bytes_per_probe: DEFAULT_MAX_BYTES_PER_PROBE,
        probesets,
    }
}

fn rings(plan: &NodePlan) -> Vec<Vec<u64>> {
    plan.probesets
        .iter()
        .map(|s| s.probes.iter().map(|p| p.plan.ring_bytes / KIB).collect())
        .collect()
}

/// 10 000 ev/s of 96-byte records need 256 KiB each.
fn three_teams() -> Vec<ProbeSetDemand> {
    vec![
        probeset("a", "web", vec![probe("sys", 10_000.0, 0, 8, 256 * KIB)]),
        probeset("b", "db", vec![probe("sys", 10_000.0, 0, 8, 256 * KIB)]),
        probeset("c", "batch", vec![probe("sys", 10_000.0, 0, 8, 256 * KIB)]),
    ]
}

#[test]
fn with_room_every_probeset_gets_what_its_own_plan_asks() {
    let plan = plan_node(&node(u64::MAX, 4, three_teams())).unwrap();
    assert_eq!(rings(&plan), [[256], [256], [256]]);
    let fixed = fixed_bytes(&ProbeMaps::new(8), 4, PAGE);
    for s in &plan.probesets {
        assert_eq!(s.requested_bytes, fixed + ringbuf_bytes(256 * KIB, PAGE));
        assert_eq!(s.granted_bytes, s.requested_bytes);
        assert!(!s.constrained());
        assert_eq!(s.sharing(), "with 2 other ProbeSets in 2 other namespaces");
    }
}

#[test]
fn the_request_of_a_probeset_caps_its_ring_and_says_why() {
    let mut sets = three_teams();
    sets[0].probes[0].ring_request = 64 * KIB;
    let plan = plan_node(&node(u64::MAX, 1, sets)).unwrap();
    assert_eq!(rings(&plan), [[64], [256], [256]]);
    let reasons = &plan.probesets[0].probes[0].plan.reasons;
    assert_eq!(reasons[1], "cut to 64 KiB by nodeBudget");
}

#[test]
fn a_short_node_squeezes_the_namespace_holding_the_most_first() {
    // Namespace a runs two ProbeSets, b and c one each: a gives up ring
    // bytes until it holds no more than the others.
    let mut sets = three_teams();
    sets.push(probeset(
        "a",
        "web2",
        vec![probe("sys", 10_000.0, 0, 8, 256 * KIB)],
    ));
    let cpus = 2;
    let per_probe =
        |ring: u64| fixed_bytes(&ProbeMaps::new(8), cpus, PAGE) + ringbuf_bytes(ring, PAGE);
    // Room for a: 2 × 128 KiB, b and c: 256 KiB each.
    let budget = 2 * per_probe(128 * KIB) + 2 * per_probe(256 * KIB);
    let plan = plan_node(&node(budget, cpus as u32, sets)).unwrap();
    assert_eq!(rings(&plan), [[128], [256], [256], [128]]);
    assert!(plan.used_bytes <= budget);
    let a = &plan.probesets[0];
    assert!(a.constrained());
    assert!(
        a.probes[0].plan.reasons[1].starts_with(
            "halved once more to fit the node budget of 2.2 MiB with 3 other ProbeSets in 2 other namespaces"
        ),
        "{:?}",
        a.probes[0].plan.reasons
    );
}

#[test]
fn lower_priorities_lose_first_even_across_namespaces() {
    let sets = vec![
        probeset("a", "web", vec![probe("sys", 10_000.0, 5, 8, 256 * KIB)]),
        probeset("b", "db", vec![probe("sys", 10_000.0, 0, 8, 256 * KIB)]),
    ];
    let cpus = 2;
    let fixed = fixed_bytes(&ProbeMaps::new(8), cpus, PAGE);
    // Room for one ring of 256 KiB and one page.
    let budget = 2 * fixed + ringbuf_bytes(256 * KIB, PAGE) + ringbuf_bytes(PAGE, PAGE);
    let plan = plan_node(&node(budget, cpus as u32, sets.clone())).unwrap();
    assert_eq!(rings(&plan), [[256], [4]]);
    // Room for one probe only: the lower priority is left out, and says so.
    let plan = plan_node(&node(
        fixed + ringbuf_bytes(256 * KIB, PAGE),
        cpus as u32,
        sets,
    ))
    .unwrap();
    assert_eq!(rings(&plan), [[256], [0]]);
    let b = &plan.probesets[1].probes[0];
    assert!(!b.admitted);
    assert_eq!(b.memory_bytes, 0);
    assert!(
        b.plan
            .reasons
            .last()
            .unwrap()
            .starts_with("not loaded: its maps take "),
        "{:?}",
        b.plan.reasons
    );
}

#[test]
fn the_histograms_count_for_every_possible_cpu() {
    // The same node budget holds all three ProbeSets on 2 CPUs, and
    // leaves one out on 64, where each probe's histograms take 64 copies.
    let one = fixed_bytes(&ProbeMaps::new(8), 2, PAGE) + ringbuf_bytes(256 * KIB, PAGE);
    let plan = plan_node(&node(3 * one, 2, three_teams())).unwrap();
    assert!(plan.probesets.iter().all(|s| s.probes[0].admitted));
    let plan = plan_node(&node(3 * one, 64, three_teams())).unwrap();
    assert!(plan.probesets.iter().any(|s| !s.probes[0].admitted));
    assert!(plan.used_bytes <= 3 * one);
}

#[test]
fn a_probeset_its_own_plan_refuses_runs_nothing_and_says_why() {
    let mut sets = three_teams();
    sets[1].probes[0].demand.burst_factor = 0.5;
    let plan = plan_node(&node(u64::MAX, 2, sets)).unwrap();
    let b = &plan.probesets[1].probes[0];
    assert!(!b.admitted);
    assert!(b.plan.reasons.last().unwrap().contains("burstFactor"));
    assert!(plan.probesets[0].probes[0].admitted);
}

#[test]
fn a_node_without_cpus_is_an_error() {
    assert_eq!(plan_node(&node(1, 0, vec![])), Err(PlanError::Cpus));
}

fn demand() -> impl Strategy<Value = NodeProbeDemand> {
    (
        prop_oneof![Just(0.0), 0.0..1e4, 0.0..1e6],
        prop_oneof![Just(1.0), 0.01..=1.0],
        1u64..=500,
        prop_oneof![Just(0.0), 0.0..0.5],
        -1i32..=1,
        1u32..=64,
        0u32..=20,
    )
        .prop_map(
            |(rate, sampling, drain_ms, allowed, priority, series, request_shift)| {
                NodeProbeDemand {
                    demand: ProbeDemand {
                        requested_sampling: sampling,
                        drain_interval: std::time::Duration::from_millis(drain_ms),
                        priority,
                        ..ProbeDemand::new("p", 88, rate, allowed)
                    },
                    maps: ProbeMaps::new(series),
                    ring_request: PAGE << request_shift,
                }
            },
        )
}

fn node_input() -> impl Strategy<Value = NodeInput> {
    (
        1u32..=8,
        0u64..=16 << 20,
        prop::collection::vec(
            (
                prop::sample::select(vec!["a", "b", "c"]),
                prop::collection::vec(demand(), 1..4),
            ),
            0..6,
        ),
    )
        .prop_map(|(cpus, budget, sets)| {
            let probesets = sets
                .into_iter()
                .enumerate()
                .map(|(i, (ns, mut probes))| {
                    for (j, p) in probes.iter_mut().enumerate() {
                        p.demand.name = format!("p{j}");
                    }
                    probeset(ns, &format!("ps{i}"), probes)
                })
                .collect();
            node(budget, cpus, probesets)
        })
}

/// Bytes each namespace's loaded probes take.
fn by_namespace(plan: &NodePlan) -> BTreeMap<&str, u64> {
    let mut m = BTreeMap::new();
    for s in &plan.probesets {
        *m.entry(s.namespace.as_str()).or_default() += s.granted_bytes;
    }
    m
}

proptest! {
    #[test]
    fn the_node_budget_is_never_exceeded(i in node_input()) {
        let plan = plan_node(&i).unwrap();
        let cpus = u64::from(i.cpus);
        let mut sum = 0;
        for (d, s) in i.probesets.iter().zip(&plan.probesets) {
            prop_assert_eq!(s.granted_bytes, s.probes.iter().map(|p| p.memory_bytes).sum::<u64>());
            for (dp, p) in d.probes.iter().zip(&s.probes) {
                prop_assert_eq!(p.map_bytes, fixed_bytes(&dp.maps, cpus, PAGE));
                if p.admitted {
                    // What the agent maps: the ring, or one page without an event path.
                    let mapped = p.plan.ring_bytes.max(PAGE);
                    prop_assert_eq!(p.memory_bytes, p.map_bytes + ringbuf_bytes(mapped, PAGE));
                    prop_assert!(p.plan.ring_bytes <= p.ring_request.max(PAGE));
                    prop_assert!(p.plan.ring_bytes == 0 || p.plan.ring_bytes.is_power_of_two());
                }
            }
            sum += s.granted_bytes;
        }
        prop_assert_eq!(plan.used_bytes, sum);
        prop_assert!(plan.used_bytes <= i.node_budget_bytes);
    }

    #[test]
    fn with_enough_budget_everyone_gets_their_request(i in node_input()) {
        let unbounded = plan_node(&NodeInput { node_budget_bytes: u64::MAX, ..i.clone() }).unwrap();
        for s in &unbounded.probesets {
            prop_assert!(!s.constrained());
        }
        let enough = unbounded.probesets.iter().map(|s| s.requested_bytes).sum::<u64>();
        prop_assert_eq!(plan_node(&NodeInput { node_budget_bytes: enough, ..i.clone() }).unwrap().probesets, unbounded.probesets);
    }

    #[test]
    fn a_probe_runs_only_if_every_higher_priority_got_all_it_asked(i in node_input()) {
        let plan = plan_node(&i).unwrap();
        let probes: Vec<(&ProbeShare, i32)> = plan.probesets.iter().zip(&i.probesets)
            .flat_map(|(s, d)| s.probes.iter().zip(&d.probes).map(|(p, dp)| (p, dp.demand.priority)))
            .collect();
        for (p, prio) in &probes {
            if p.memory_bytes < p.requested_bytes {
                for (q, qprio) in &probes {
                    prop_assert!(!q.admitted || qprio >= prio, "priority {} loaded while {} got less than it asked", qprio, prio);
                }
            }
        }
    }

    #[test]
    fn no_namespace_keeps_more_than_a_squeezed_one_at_its_priority(i in node_input()) {
        let plan = plan_node(&i).unwrap();
        let held = by_namespace(&plan);
        for (sx, dx) in plan.probesets.iter().zip(&i.probesets) {
            for (p, dp) in sx.probes.iter().zip(&dx.probes) {
                if !(p.admitted && p.plan.ring_bytes > 0 && p.plan.ring_bytes < p.ring_request) {
                    continue;
                }
                // Namespace x was squeezed at this priority. The most its
                // last halving there freed:
                let last_cut = plan.probesets.iter().zip(&i.probesets)
                    .filter(|(s, _)| s.namespace == sx.namespace)
                    .flat_map(|(s, d)| s.probes.iter().zip(&d.probes))
                    .filter(|(q, dq)| dq.demand.priority == dp.demand.priority && q.admitted && q.plan.ring_bytes > 0 && q.plan.ring_bytes < q.ring_request)
                    .map(|(q, _)| ringbuf_bytes(2 * q.plan.ring_bytes, PAGE) - ringbuf_bytes(q.plan.ring_bytes, PAGE))
                    .max()
                    .unwrap_or(0);
                for (sy, dy) in plan.probesets.iter().zip(&i.probesets) {
                    if sy.namespace == sx.namespace {
                        continue;
                    }
                    let shrinkable = sy.probes.iter().zip(&dy.probes).any(|(q, dq)| {
                        dq.demand.priority == dp.demand.priority && q.admitted
                            && q.plan.ring_bytes > PAGE.max((q.plan.record_bytes + 1).next_power_of_two())
                    });
                    if shrinkable {
                        prop_assert!(
                            held[sy.namespace.as_str()] <= held[sx.namespace.as_str()] + last_cut,
                            "{} keeps {} while {} was squeezed to {}",
                            sy.namespace, held[sy.namespace.as_str()], sx.namespace, held[sx.namespace.as_str()]
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_node_plan_is_deterministic_and_independent_of_input_order(i in node_input()) {
        let first = plan_node(&i).unwrap();
        prop_assert_eq!(&first, &plan_node(&i.clone()).unwrap());
        let mut reversed = i.clone();
        reversed.probesets.reverse();
        for s in &mut reversed.probesets {
            s.probes.reverse();
        }
        let mut second = plan_node(&reversed).unwrap();
        second.probesets.reverse();
        for s in &mut second.probesets {
            s.probes.reverse();
        }
        prop_assert_eq!(first, second);
    }
}
