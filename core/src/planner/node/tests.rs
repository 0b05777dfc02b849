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
        namespace_bytes: BTreeMap::new(),
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
fn a_short_node_squeezes_the_namespace_asking_the_most_to_an_equal_share() {
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
            "halved once more to fit namespace a's share of the node budget, 994.4 KiB of 2.2 MiB with 3 other ProbeSets in 2 other namespaces"
        ),
        "{:?}",
        a.probes[0].plan.reasons
    );
}

#[test]
fn lower_priorities_lose_first_within_a_namespace() {
    let sets = vec![
        probeset("a", "web", vec![probe("sys", 10_000.0, 5, 8, 256 * KIB)]),
        probeset("a", "db", vec![probe("sys", 10_000.0, 0, 8, 256 * KIB)]),
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
    let why = b.plan.reasons.last().unwrap();
    assert!(why.starts_with("not loaded: its maps take "), "{why}");
    assert!(why.contains("within namespace a"), "{why}");
}

#[test]
fn a_tenants_highest_priority_and_rate_outrank_nobody_outside_its_namespace() {
    // The attack: `default` asks for a 128 MiB ring at i32::MAX priority on
    // a node of 256 MiB that also runs another tenant and the platform.
    let cpus = 2;
    let sets = vec![
        probeset(
            "default",
            "greedy",
            vec![probe("sys", 1e12, i32::MAX, 8, 128 << 20)],
        ),
        probeset("shop", "web", vec![probe("sys", 10_000.0, 0, 8, 256 * KIB)]),
        probeset(
            "",
            "platform",
            vec![probe("sys", 10_000.0, i32::MIN, 8, 256 * KIB)],
        ),
    ];
    let budget = 256 << 20;
    let plan = plan_node(&node(budget, cpus, sets)).unwrap();
    assert_eq!(rings(&plan), [[128 << 10], [256], [256]]);
    for s in &plan.probesets[1..] {
        assert!(!s.constrained(), "{} got less than it asked", s.name);
    }
    // A smaller node: the tenant is cut to its fair half of what the
    // platform leaves, the other tenant keeps all it asks.
    let budget = 64 << 20;
    let plan = plan_node(&node(budget, cpus, plan_input_sets())).unwrap();
    assert!(plan.probesets[1].probes[0].admitted && !plan.probesets[1].constrained());
    assert!(plan.probesets[2].probes[0].admitted && !plan.probesets[2].constrained());
    let greedy = &plan.probesets[0];
    assert!(greedy.granted_bytes <= greedy.namespace_share_bytes);
    assert_eq!(
        greedy.namespace_share_bytes,
        budget - plan.probesets[1].granted_bytes - plan.probesets[2].granted_bytes
    );
    let why = &greedy.probes[0].plan.reasons;
    assert!(
        why.iter()
            .any(|r| r.contains("namespace default's share of the node budget")),
        "{why:?}"
    );
}

fn plan_input_sets() -> Vec<ProbeSetDemand> {
    vec![
        probeset(
            "default",
            "greedy",
            vec![probe("sys", 1e12, i32::MAX, 8, 128 << 20)],
        ),
        probeset("shop", "web", vec![probe("sys", 10_000.0, 0, 8, 256 * KIB)]),
        probeset(
            "",
            "platform",
            vec![probe("sys", 10_000.0, i32::MIN, 8, 256 * KIB)],
        ),
    ]
}

#[test]
fn cluster_probesets_are_served_before_any_namespace() {
    let cpus = 2;
    let one = fixed_bytes(&ProbeMaps::new(8), cpus, PAGE) + ringbuf_bytes(256 * KIB, PAGE);
    let sets = vec![
        probeset(
            "a",
            "web",
            vec![probe("sys", 10_000.0, i32::MAX, 8, 256 * KIB)],
        ),
        probeset("", "node", vec![probe("sys", 10_000.0, 0, 8, 256 * KIB)]),
    ];
    // Room for one: the platform's.
    let plan = plan_node(&node(one, cpus as u32, sets)).unwrap();
    assert!(!plan.probesets[1].constrained());
    assert_eq!(plan.probesets[1].namespace_share_bytes, one);
    assert!(!plan.probesets[0].probes[0].admitted);
    assert_eq!(plan.probesets[0].namespace_share_bytes, 0);
}

#[test]
fn a_namespace_limit_caps_its_share_and_says_so() {
    let cpus = 2;
    let fixed = fixed_bytes(&ProbeMaps::new(8), cpus, PAGE);
    let mut input = node(u64::MAX, cpus as u32, three_teams());
    let limit = fixed + ringbuf_bytes(64 * KIB, PAGE);
    input.namespace_bytes.insert("a".into(), limit);
    // A limit above what a namespace asks changes nothing.
    input.namespace_bytes.insert("b".into(), u64::MAX / 2);
    let plan = plan_node(&input).unwrap();
    assert_eq!(rings(&plan), [[64], [256], [256]]);
    let a = &plan.probesets[0];
    assert_eq!(a.namespace_limit_bytes, Some(limit));
    assert_eq!(a.namespace_share_bytes, limit);
    assert_eq!(plan.probesets[1].namespace_limit_bytes, None);
    let why = a.probes[0].plan.reasons.join("; ");
    assert!(why.contains("capped by the namespace's limit of"), "{why}");
}

#[test]
fn water_filling_gives_the_modest_all_they_ask_and_splits_the_rest_equally() {
    type Amounts<'a> = &'a [(&'a str, u128)];
    // (room, wants, shares)
    let cases: [(u128, Amounts, Amounts); 5] = [
        (
            100,
            &[("a", 10), ("b", 80), ("c", 80)],
            &[("a", 10), ("b", 45), ("c", 45)],
        ),
        (100, &[("a", 10), ("b", 20)], &[("a", 10), ("b", 20)]),
        (
            10,
            &[("a", 10), ("b", 10), ("c", 10)],
            &[("a", 3), ("b", 3), ("c", 3)],
        ),
        (0, &[("a", 1)], &[("a", 0)]),
        (7, &[], &[]),
    ];
    for (room, wants, shares) in cases {
        let wants: BTreeMap<&str, u128> = wants.iter().copied().collect();
        let expected: BTreeMap<&str, u128> = shares.iter().copied().collect();
        assert_eq!(water_fill(room, &wants), expected, "{room} for {wants:?}");
    }
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
                // "" is the ClusterProbeSets'.
                prop::sample::select(vec!["", "a", "b", "c"]),
                prop::collection::vec(demand(), 1..4),
            ),
            0..6,
        ),
        prop::option::of(0u64..=8 << 20),
        prop::option::of(0u64..=8 << 20),
    )
        .prop_map(|(cpus, budget, sets, limit_a, limit_b)| {
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
            let mut input = node(budget, cpus, probesets);
            for (ns, limit) in [("a", limit_a), ("b", limit_b)] {
                if let Some(l) = limit {
                    input.namespace_bytes.insert(ns.into(), l);
                }
            }
            input
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

/// What each namespace's (and the ClusterProbeSets') probes asked for,
/// capped by the namespace's limit.
fn wants<'a>(i: &NodeInput, plan: &'a NodePlan) -> BTreeMap<&'a str, u64> {
    let mut m: BTreeMap<&str, u64> = BTreeMap::new();
    for s in &plan.probesets {
        *m.entry(s.namespace.as_str()).or_default() += s.requested_bytes;
    }
    for (ns, want) in m.iter_mut() {
        if let Some(&l) = i.namespace_bytes.get(*ns).filter(|_| !ns.is_empty()) {
            *want = (*want).min(l);
        }
    }
    m
}

/// What each probe got, without the words that describe its neighbours.
fn outcome(s: &ProbeSetShare) -> Vec<(bool, u64, u64, u64)> {
    s.probes
        .iter()
        .map(|p| {
            (
                p.admitted,
                p.plan.ring_bytes,
                p.plan.sample_every,
                p.memory_bytes,
            )
        })
        .collect()
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
        // Nor any namespace's share or limit.
        for (ns, held) in by_namespace(&plan) {
            let s = plan.probesets.iter().find(|s| s.namespace == ns).unwrap();
            prop_assert!(held <= s.namespace_share_bytes);
            if let Some(&l) = i.namespace_bytes.get(ns).filter(|_| !ns.is_empty()) {
                prop_assert!(held <= l, "{} holds {} over its limit {}", ns, held, l);
            }
        }
    }

    #[test]
    fn with_enough_budget_everyone_gets_their_request(i in node_input()) {
        let free = NodeInput { namespace_bytes: BTreeMap::new(), ..i.clone() };
        let unbounded = plan_node(&NodeInput { node_budget_bytes: u64::MAX, ..free.clone() }).unwrap();
        for s in &unbounded.probesets {
            prop_assert!(!s.constrained());
        }
        let enough = unbounded.probesets.iter().map(|s| s.requested_bytes).sum::<u64>();
        let just = plan_node(&NodeInput { node_budget_bytes: enough, ..free.clone() }).unwrap();
        for (a, b) in just.probesets.iter().zip(&unbounded.probesets) {
            prop_assert_eq!(outcome(a), outcome(b));
        }
    }

    #[test]
    fn a_probe_runs_only_if_every_higher_priority_of_its_namespace_got_all_it_asked(i in node_input()) {
        let plan = plan_node(&i).unwrap();
        let probes: Vec<(&str, &ProbeShare, i32)> = plan.probesets.iter().zip(&i.probesets)
            .flat_map(|(s, d)| s.probes.iter().zip(&d.probes).map(|(p, dp)| (s.namespace.as_str(), p, dp.demand.priority)))
            .collect();
        for (ns, p, prio) in &probes {
            if p.memory_bytes < p.requested_bytes {
                for (qns, q, qprio) in &probes {
                    prop_assert!(qns != ns || !q.admitted || qprio >= prio, "priority {} loaded while {} got less than it asked", qprio, prio);
                }
            }
        }
    }

    #[test]
    fn no_namespaces_grant_depends_on_another_namespaces_priorities(
        i in node_input(),
        pick in prop::sample::select(vec!["a", "b", "c"]),
        priorities in prop::collection::vec(any::<i32>(), 24),
    ) {
        let plan = plan_node(&i).unwrap();
        let mut changed = i.clone();
        let mut next = priorities.iter().cycle();
        for s in changed.probesets.iter_mut().filter(|s| s.namespace == pick) {
            for p in &mut s.probes {
                p.demand.priority = *next.next().unwrap();
            }
        }
        let replanned = plan_node(&changed).unwrap();
        for (a, b) in plan.probesets.iter().zip(&replanned.probesets) {
            if a.namespace != pick {
                prop_assert_eq!(outcome(a), outcome(b), "{} moved with {}'s priorities", a.namespace, pick);
                prop_assert_eq!(a.namespace_share_bytes, b.namespace_share_bytes);
            }
        }
    }

    #[test]
    fn grants_are_max_min_fair_across_namespaces(i in node_input()) {
        let plan = plan_node(&i).unwrap();
        let wants = wants(&i, &plan);
        let held = by_namespace(&plan);
        let share = |ns: &str| plan.probesets.iter().find(|s| s.namespace == ns).unwrap().namespace_share_bytes;
        let platform = held.get("").copied().unwrap_or(0);
        let room = i.node_budget_bytes - platform;
        let tenants: Vec<&str> = wants.keys().copied().filter(|ns| !ns.is_empty()).collect();
        let total: u128 = tenants.iter().map(|&ns| u128::from(share(ns))).sum();
        prop_assert!(total <= u128::from(room));
        for &x in &tenants {
            // Never less than an equal part, or all it asks.
            prop_assert!(share(x) >= wants[x].min(room / tenants.len() as u64));
            prop_assert!(share(x) <= wants[x]);
            if share(x) < wants[x] {
                // Squeezed: nobody else's share is larger.
                for &y in &tenants {
                    prop_assert!(share(y) <= share(x), "{} has {} while {} is squeezed to {}", y, share(y), x, share(x));
                }
            }
        }
    }

    #[test]
    fn cluster_probesets_keep_their_grant_whatever_namespaces_ask(i in node_input()) {
        let plan = plan_node(&i).unwrap();
        let platform_only = NodeInput {
            probesets: i.probesets.iter().filter(|s| s.namespace.is_empty()).cloned().collect(),
            ..i.clone()
        };
        let alone = plan_node(&platform_only).unwrap();
        let with_tenants: Vec<_> = plan.probesets.iter().filter(|s| s.namespace.is_empty()).map(outcome).collect();
        let without: Vec<_> = alone.probesets.iter().map(outcome).collect();
        prop_assert_eq!(with_tenants, without);
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
