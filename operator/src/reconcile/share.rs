//! Each ProbeSet's share of the node budget on its tightest node: the node
//! plan ([`ringwarden_crds::plan::plan_node`]) of every node class (the
//! distinct sets of ProbeSets that nodes run) at every count of possible
//! CPUs the class's nodes reported. Agents make the same plan on their
//! node, with its own CPUs, before they load anything; this is the
//! operator's view of it, for status. Pure.

use std::{cmp::Reverse, collections::BTreeMap};

use ringwarden_core::planner::node::ProbeSetShare;

use crate::{
    reconcile::assess::PLAN_PAGE_SIZE,
    reconcile::render::agent_config,
    reconcile::world::{Assessed, Labels, node_classes},
};

/// What the node budget gives one ProbeSet where it gives least.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeShare {
    pub node_budget_bytes: u64,
    pub cpus: u32,
    pub share: ProbeSetShare,
}

/// A node to plan: its labels, and the possible CPUs its agent reported
/// (`None` until it has).
pub type NodeCpus<'a> = (&'a Labels, Option<u32>);

/// The share of every planned ProbeSet that some node runs, by
/// `namespace/name`, on the node class and CPU count where it gets the
/// smallest part of what it asks for (then where it shares with the most
/// ProbeSets, then where it has the most CPUs).
///
/// Each node is planned with its own possible CPUs, since per-CPU maps
/// cost a copy per CPU. A node whose agent has not reported yet (starting,
/// restarting, or too old to say) is planned with the most CPUs any node
/// reported: its ProbeSets keep a share while agents reconnect, and an
/// unknown node errs towards the tighter plan. Before any node has
/// reported there is nothing to plan with, and no share.
pub fn node_shares(
    assessed: &[Assessed],
    nodes: &[NodeCpus<'_>],
    node_budget_bytes: u64,
) -> BTreeMap<String, NodeShare> {
    let reported = |cpus: Option<u32>| cpus.filter(|&c| c > 0);
    let Some(largest) = nodes.iter().filter_map(|&(_, c)| reported(c)).max() else {
        return BTreeMap::new();
    };
    // Nodes by the CPUs they are planned with: a handful of machine sizes.
    let mut by_cpus: BTreeMap<u32, Vec<&Labels>> = BTreeMap::new();
    for &(labels, cpus) in nodes {
        by_cpus
            .entry(reported(cpus).unwrap_or(largest))
            .or_default()
            .push(labels);
    }
    let config = agent_config(assessed, node_budget_bytes);
    let planned: Vec<&Assessed> = assessed
        .iter()
        .filter(|a| a.assessment.planned().is_some())
        .collect();
    let selectors: Vec<&Labels> = planned
        .iter()
        .map(|a| &a.probeset.spec.node_selector)
        .collect();
    let mut shares: BTreeMap<String, (NodeShare, Tightness)> = BTreeMap::new();
    for (&cpus, labels) in &by_cpus {
        for class in node_classes(&selectors, labels.iter().copied()) {
            let probes: Vec<_> = config
                .probes
                .iter()
                .filter(|p| {
                    class.iter().any(|&i| {
                        planned[i].namespace == p.namespace && planned[i].name == p.probeset
                    })
                })
                .cloned()
                .collect();
            let Ok(plan) = ringwarden_crds::plan::plan_node_limited(
                &probes,
                &config.namespace_limits,
                node_budget_bytes,
                cpus,
                PLAN_PAGE_SIZE,
            ) else {
                continue;
            };
            // The class by its members, to break ties whatever the input order.
            let mut members: Vec<String> = class
                .iter()
                .map(|&i| format!("{}/{}", planned[i].namespace, planned[i].name))
                .collect();
            members.sort();
            for share in plan.plan.probesets {
                let key = format!("{}/{}", share.namespace, share.name);
                let candidate = tightness(&share, cpus, &members);
                if shares.get(&key).is_none_or(|(_, known)| candidate < *known) {
                    let share = NodeShare {
                        node_budget_bytes,
                        cpus,
                        share,
                    };
                    shares.insert(key, (share, candidate));
                }
            }
        }
    }
    shares.into_iter().map(|(k, (s, _))| (k, s)).collect()
}

/// Orders shares from the tightest: the smallest part of the request
/// granted, then the most ProbeSets and namespaces shared with, then the
/// most CPUs, then the class's members (`namespace/name`, sorted).
type Tightness = (u128, Reverse<u32>, Reverse<u32>, Reverse<u32>, Vec<String>);

fn tightness(s: &ProbeSetShare, cpus: u32, members: &[String]) -> Tightness {
    // granted / requested, compared as a fixed-point fraction.
    let part = (u128::from(s.granted_bytes) << 32) / u128::from(s.requested_bytes.max(1));
    (
        part,
        Reverse(s.other_probesets),
        Reverse(s.other_namespaces),
        Reverse(cpus),
        members.to_vec(),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ringwarden_core::maps::{fixed_bytes, ringbuf_bytes};
    use ringwarden_crds::{ProbeSet, plan::probe_maps};

    use super::*;
    use crate::reconcile::assess::assess;

    fn probeset(ns: &str, name: &str, pool: Option<&str>, priority: i32) -> Assessed {
        let selector = pool.map_or(String::new(), |p| format!("nodeSelector: {{pool: {p}}}\n"));
        let spec = serde_yaml_ng::from_str(&format!(
            "{selector}probes:\n  - {{name: sys, kind: syscalls, maxSeries: 8, priority: {priority}, \
             export: {{policy: all}}, peakEventRate: 10000}}\n"
        ))
        .unwrap();
        let mut ps = ProbeSet::new(name, spec);
        ps.metadata.namespace = Some(ns.into());
        Assessed {
            namespace: ns.into(),
            name: name.into(),
            namespaces: Some(vec![ns.into()]),
            assessment: assess(&ps, &[]),
            probeset: Arc::new(ps),
        }
    }

    fn labels(pool: &str) -> Labels {
        Labels::from([("pool".to_owned(), pool.to_owned())])
    }

    proptest::proptest! {
        #[test]
        fn shares_fit_the_node_budget_and_do_not_depend_on_order(
            sets in proptest::collection::vec(
                (0usize..3, proptest::option::of(0usize..2), -1i32..=1, 0u32..50_000, 1u32..=64),
                1..7,
            ),
            budget in 1u64..=32 << 20,
            // Per node: the CPUs its agent reported, if it did.
            cpus in proptest::collection::vec(proptest::option::of(1u32..=8), 2),
        ) {
            let pools = ["web", "db"];
            let assessed: Vec<Assessed> = sets
                .iter()
                .enumerate()
                .map(|(i, &(ns, pool, priority, rate, series))| {
                    let mut a = probeset(&format!("ns{ns}"), &format!("ps{i}"), pool.map(|p| pools[p]), priority);
                    let mut ps = (*a.probeset).clone();
                    ps.spec.probes[0].peak_event_rate = f64::from(rate);
                    ps.spec.probes[0].max_series = series;
                    a.assessment = assess(&ps, &[]);
                    a.probeset = Arc::new(ps);
                    a
                })
                .collect();
            let (web, db) = (labels("web"), labels("db"));
            let nodes = [(&web, cpus[0]), (&db, cpus[1])];
            let shares = node_shares(&assessed, &nodes, budget);
            let largest = cpus.iter().flatten().max();
            proptest::prop_assert_eq!(largest.is_none(), shares.is_empty());
            for s in shares.values() {
                proptest::prop_assert!(s.share.granted_bytes <= s.share.requested_bytes);
                proptest::prop_assert!(s.share.granted_bytes <= budget);
                // Planned with a CPU count some node reported.
                proptest::prop_assert!(cpus.contains(&Some(s.cpus)));
            }
            let mut reversed = assessed.clone();
            reversed.reverse();
            proptest::prop_assert_eq!(&node_shares(&reversed, &nodes, budget), &shares);
            let swapped = [nodes[1], nodes[0]];
            proptest::prop_assert_eq!(&node_shares(&assessed, &swapped, budget), &shares);
        }
    }

    #[test]
    fn each_probeset_is_shown_on_the_node_where_it_gets_least() {
        // "all" runs on both pools; on db nodes it shares with a
        // higher-priority ProbeSet of its namespace, which takes the ring
        // bytes first.
        let assessed = vec![
            probeset("a", "all", None, 0),
            probeset("a", "db", Some("db"), 1),
        ];
        let fixed = fixed_bytes(&probe_maps(&assessed[0].probeset.spec.probes[0]), 2, 4096);
        let budget = 2 * fixed + ringbuf_bytes(256 << 10, 4096) + ringbuf_bytes(16 << 10, 4096);
        let (web, db) = (labels("web"), labels("db"));
        let shares = node_shares(&assessed, &[(&web, Some(2)), (&db, Some(2))], budget);
        let all = &shares["a/all"];
        assert_eq!(all.share.probes[0].plan.ring_bytes, 16 << 10);
        assert!(all.share.constrained());
        assert_eq!(
            (all.share.other_probesets, all.share.other_namespaces),
            (1, 0)
        );
        assert!(!shares["a/db"].share.constrained());
        // Without db nodes, "all" runs alone and gets all it asks for.
        let alone = node_shares(&assessed, &[(&web, Some(2))], budget);
        assert!(!alone["a/all"].share.constrained());
        assert!(!alone.contains_key("a/db"));
    }

    #[test]
    fn each_node_is_planned_with_its_own_cpus() {
        // One ProbeSet on a 2-CPU web node and a 16-CPU db node: the node
        // budget holds its maps for 2 CPUs and its whole ring, but on 16
        // CPUs the per-CPU histograms leave room for a smaller ring only.
        let assessed = vec![probeset("a", "all", None, 0)];
        let maps = probe_maps(&assessed[0].probeset.spec.probes[0]);
        let ring = |bytes| ringbuf_bytes(bytes, 4096);
        let budget = fixed_bytes(&maps, 16, 4096) + ring(16 << 10);
        assert!(fixed_bytes(&maps, 2, 4096) + ring(256 << 10) <= budget);
        let (web, db) = (labels("web"), labels("db"));

        let small = node_shares(&assessed, &[(&web, Some(2))], budget)["a/all"].clone();
        assert_eq!(small.cpus, 2);
        assert!(!small.share.constrained());
        assert_eq!(small.share.probes[0].plan.ring_bytes, 256 << 10);
        assert_eq!(
            small.share.requested_bytes,
            fixed_bytes(&maps, 2, 4096) + ring(256 << 10)
        );

        // With both nodes, the 16-CPU one is the tightest, whatever the
        // order.
        for nodes in [
            [(&web, Some(2)), (&db, Some(16))],
            [(&db, Some(16)), (&web, Some(2))],
        ] {
            let shares = node_shares(&assessed, &nodes, budget);
            let big = &shares["a/all"];
            assert_eq!(big.cpus, 16);
            assert!(big.share.constrained());
            assert_eq!(big.share.probes[0].plan.ring_bytes, 16 << 10);
            assert_eq!(big.share.granted_bytes, budget);
            assert_eq!(
                big.share.requested_bytes,
                fixed_bytes(&maps, 16, 4096) + ring(256 << 10)
            );
        }

        // Planning every node as the largest would have cut the web node
        // too; planned with its own CPUs, a ProbeSet on web nodes alone
        // gets all it asks for even when a db node is larger.
        let web_only = vec![probeset("a", "web", Some("web"), 0)];
        let shares = node_shares(&web_only, &[(&web, Some(2)), (&db, Some(16))], budget);
        assert_eq!(shares["a/web"].cpus, 2);
        assert!(!shares["a/web"].share.constrained());
    }

    #[test]
    fn a_node_not_reported_yet_is_planned_as_the_largest_reported() {
        let assessed = vec![probeset("a", "web", Some("web"), 0)];
        let maps = probe_maps(&assessed[0].probeset.spec.probes[0]);
        let budget = fixed_bytes(&maps, 16, 4096) + ringbuf_bytes(16 << 10, 4096);
        let (web, db) = (labels("web"), labels("db"));
        // No agent has reported: nothing to plan with.
        assert!(node_shares(&assessed, &[(&web, None), (&db, None)], budget).is_empty());
        // The web node's agent has not reported; the db node's says 16.
        let shares = node_shares(&assessed, &[(&web, None), (&db, Some(16))], budget);
        assert_eq!(shares["a/web"].cpus, 16);
        assert!(shares["a/web"].share.constrained());
        // Once it reports, its own count counts.
        let shares = node_shares(&assessed, &[(&web, Some(2)), (&db, Some(16))], budget);
        assert_eq!(shares["a/web"].cpus, 2);
        assert!(!shares["a/web"].share.constrained());
    }
}
