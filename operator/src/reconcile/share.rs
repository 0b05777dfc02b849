//! Each ProbeSet's share of the node budget on its tightest node: the node
//! plan ([`ringwarden_crds::plan::plan_node`]) of every node class (the
//! distinct sets of ProbeSets that nodes run), with the possible CPUs the
//! agents reported. Agents make the same plan on their node before they
//! load anything; this is the operator's view of it, for status. Pure.

use std::{cmp::Reverse, collections::BTreeMap};

use ringwarden_core::planner::node::ProbeSetShare;

use crate::{
    assess::PLAN_PAGE_SIZE,
    render::agent_config,
    world::{Assessed, Labels, node_classes},
};

/// What the node budget gives one ProbeSet where it gives least.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeShare {
    pub node_budget_bytes: u64,
    pub cpus: u32,
    pub share: ProbeSetShare,
}

/// The share of every planned ProbeSet that some node runs, by
/// `namespace/name`, on the node class where it gets the smallest part of
/// what it asks for (then where it shares with the most ProbeSets).
pub fn node_shares(
    assessed: &[Assessed],
    nodes: &[Labels],
    node_budget_bytes: u64,
    cpus: u32,
) -> BTreeMap<String, NodeShare> {
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
    for class in node_classes(&selectors, nodes) {
        let probes: Vec<_> = config
            .probes
            .iter()
            .filter(|p| {
                class
                    .iter()
                    .any(|&i| planned[i].namespace == p.namespace && planned[i].name == p.probeset)
            })
            .cloned()
            .collect();
        let Ok(plan) =
            ringwarden_crds::plan::plan_node(&probes, node_budget_bytes, cpus, PLAN_PAGE_SIZE)
        else {
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
            let candidate = tightness(&share, &members);
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
    shares.into_iter().map(|(k, (s, _))| (k, s)).collect()
}

/// Orders shares from the tightest: the smallest part of the request
/// granted, then the most ProbeSets and namespaces shared with, then the
/// class's members (`namespace/name`, sorted).
type Tightness = (u128, Reverse<u32>, Reverse<u32>, Vec<String>);

fn tightness(s: &ProbeSetShare, members: &[String]) -> Tightness {
    // granted / requested, compared as a fixed-point fraction.
    let part = (u128::from(s.granted_bytes) << 32) / u128::from(s.requested_bytes.max(1));
    (
        part,
        Reverse(s.other_probesets),
        Reverse(s.other_namespaces),
        members.to_vec(),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ringwarden_core::maps::{fixed_bytes, ringbuf_bytes};
    use ringwarden_crds::{ProbeSet, plan::probe_maps};

    use super::*;
    use crate::assess::assess;

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
            cpus in 1u32..=8,
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
            let nodes = [labels("web"), labels("db")];
            let shares = node_shares(&assessed, &nodes, budget, cpus);
            for s in shares.values() {
                proptest::prop_assert!(s.share.granted_bytes <= s.share.requested_bytes);
                proptest::prop_assert!(s.share.granted_bytes <= budget);
            }
            let mut reversed = assessed.clone();
            reversed.reverse();
            proptest::prop_assert_eq!(node_shares(&reversed, &nodes, budget, cpus), shares);
        }
    }

    #[test]
    fn each_probeset_is_shown_on_the_node_where_it_gets_least() {
        // "all" runs on both pools; on db nodes it shares with a
        // higher-priority ProbeSet, which takes the ring bytes first.
        let assessed = vec![
            probeset("a", "all", None, 0),
            probeset("b", "db", Some("db"), 1),
        ];
        let fixed = fixed_bytes(&probe_maps(&assessed[0].probeset.spec.probes[0]), 2, 4096);
        let budget = 2 * fixed + ringbuf_bytes(256 << 10, 4096) + ringbuf_bytes(16 << 10, 4096);
        let shares = node_shares(&assessed, &[labels("web"), labels("db")], budget, 2);
        let all = &shares["a/all"];
        assert_eq!(all.share.probes[0].plan.ring_bytes, 16 << 10);
        assert!(all.share.constrained());
        assert_eq!(
            (all.share.other_probesets, all.share.other_namespaces),
            (1, 1)
        );
        assert!(!shares["b/db"].share.constrained());
        // Without db nodes, "all" runs alone and gets all it asks for.
        let alone = node_shares(&assessed, &[labels("web")], budget, 2);
        assert!(!alone["a/all"].share.constrained());
        assert!(!alone.contains_key("b/db"));
    }
}
