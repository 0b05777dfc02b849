//! Validating and planning one ProbeSet: the pure step between fetching and
//! rendering. No IO, no clock.
//!
//! Every ProbeSet is planned against its own `spec.ringBuffer.nodeBudget`,
//! which holds on every node it selects. Its plan is therefore the same on
//! every node class, and one `status.plan` describes it exactly; planning
//! the ProbeSets sharing a node jointly would let an unrelated ProbeSet
//! shrink another team's rings. What a node class adds up to is computed
//! when rendering (see [`crate::reconcile::render::agent_config`]).

use ringwarden_core::{
    planner::{self, Plan, PlanError, PlanInput},
    quantity::{format_bytes, parse_bytes},
};
use ringwarden_crds::{
    ClusterProbeSet, ProbeSet, Threshold,
    agent::{MAX_THRESHOLDS, NamespaceLimits},
};

use crate::reconcile::slo::SloTarget;

/// Page size plans are made for. Agents on kernels with larger pages
/// (64 KiB on some arm64 machines) raise each ring to at least one page.
pub const PLAN_PAGE_SIZE: u64 = 4096;

/// A power of two far above any ring the per-probe cap allows, used to
/// find what each probe would get with unlimited memory.
const UNLIMITED_RING: u64 = 1 << 62;

/// The outcome for one ProbeSet.
#[derive(Clone, Debug, PartialEq)]
pub enum Assessment {
    /// The spec cannot be run; the messages name the field and the fix.
    Invalid(Vec<String>),
    Planned(Planned),
}

/// A valid ProbeSet's plan.
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    /// One entry per probe, in `spec.probes` order.
    pub plan: Plan,
    /// Per probe, in `spec.probes` order: the SLO thresholds the kernel
    /// counts, sorted by SLO, at most [`MAX_THRESHOLDS`].
    pub thresholds: Vec<Vec<Threshold>>,
    /// Per probe, in `spec.probes` order: the drop fraction allowed
    /// (`spec.maxDropRate`, tightened by the SLOs on the probe).
    pub max_drop_rates: Vec<f64>,
    /// Probes the budget or the per-probe cap made smaller or sparser than
    /// declared, one line each; empty when every probe got what it needs.
    pub constrained: Vec<String>,
    /// The limits of its namespace, when the cluster administrator set any
    /// (see [`crate::reconcile::world::World::namespace_limits`]); `None` for the
    /// defaults and for ClusterProbeSets.
    pub namespace_limits: Option<NamespaceLimits>,
    /// How its namespace's limits bind it, one line each, naming the limit
    /// and its annotation; empty when they do not.
    pub limited: Vec<String>,
    /// Per probe, in `spec.probes` order: left out by its namespace's
    /// limits (no uprobes, too many probes), so rendered for no agent.
    pub excluded: Vec<bool>,
}

impl Assessment {
    pub fn planned(&self) -> Option<&Planned> {
        match self {
            Self::Planned(p) => Some(p),
            Self::Invalid(_) => None,
        }
    }
}

/// Validates `ps` and plans its probes. `slos` may hold any SLOs; those
/// watching this ProbeSet's probes tighten their drop rate and add kernel
/// thresholds.
/// Most bytes one ProbeSet's probes may take in the agents' ConfigMap
/// (as its YAML): 96 KiB, so eight of the largest still fit the 768 KiB
/// all may take ([`crate::reconcile::world::MAX_AGENT_CONFIG_BYTES`]). Far above any
/// realistic spec (the examples take under 2 KiB; 64 plain probes about
/// 40 KiB), far below what the schema's limits allow (64 probes with full
/// filters are several MiB).
pub const MAX_CONFIG_BYTES_PER_PROBESET: usize = 96 * 1024;

/// What `ps`'s probes take in the agents' configuration: each as the
/// ConfigMap writes it (YAML, with its ProbeSet's names, selectors and
/// SLO `thresholds`), with the plan's fields at their widest.
pub fn config_bytes(ps: &ProbeSet, thresholds: &[Vec<Threshold>]) -> usize {
    let probes: Vec<ringwarden_crds::AgentProbe> = ps
        .spec
        .probes
        .iter()
        .enumerate()
        .map(|(i, p)| ringwarden_crds::AgentProbe {
            namespace: ps.metadata.namespace.clone().unwrap_or_default(),
            probeset: ps.metadata.name.clone().unwrap_or_default(),
            spec: p.clone(),
            pod_selector: ps.spec.pod_selector.clone(),
            namespaces: None,
            node_selector: ps.spec.node_selector.clone(),
            ring_bytes: u64::MAX,
            sample_every: u64::MAX,
            predicted_drop: 0.123_456_789_012_345_67,
            burst_factor: ps.spec.ring_buffer.burst_factor,
            max_drop_rate: 0.123_456_789_012_345_67,
            drain_interval: ps.spec.ring_buffer.drain_interval,
            report_interval: ps.spec.report_interval,
            thresholds: thresholds.get(i).cloned().unwrap_or_default(),
        })
        .collect();
    // Nested one level deeper in the ConfigMap: two more spaces a line.
    serde_yaml_ng::to_string(&probes).map_or(usize::MAX, |y| y.len() + 2 * y.lines().count())
}

/// What a namespaced ProbeSet may not ask for: node-wide cgroup paths,
/// which would reach host processes and other namespaces' pods.
pub fn namespaced_problems(ps: &ProbeSet) -> Vec<String> {
    ps.spec
        .probes
        .iter()
        .enumerate()
        .filter(|(_, p)| p.filter.as_ref().is_some_and(|f| !f.cgroups.is_empty()))
        .map(|(i, _)| {
            format!(
                "spec.probes[{i}].filter.cgroups: a ProbeSet observes only the pods of its \
                 namespace, and cgroup paths are node-wide; select pods with podSelector, or \
                 move the probe to a ClusterProbeSet"
            )
        })
        .collect()
}

pub fn assess(ps: &ProbeSet, slos: &[SloTarget]) -> Assessment {
    assess_with(ps, slos, None)
}

/// Validates and plans a ClusterProbeSet, `ps` being its
/// [`ClusterProbeSet::as_probeset`]. Only the SLOs of the namespaces its
/// `spec.sloNamespaces` lists count: they take the kernel's threshold
/// slots, those of the namespaces listed first before the others (then by
/// SLO name), so SLOs from elsewhere can neither take a slot nor push one
/// out. No SLO changes its plan: it is planned for its own `maxDropRate`,
/// as the platform set it.
pub fn assess_cluster_probes(
    ps: &ProbeSet,
    cps: &ClusterProbeSet,
    slos: &[SloTarget],
) -> Assessment {
    let errors: Vec<String> = cps
        .spec
        .validate()
        .into_iter()
        .filter(|e| e.field.starts_with("spec.sloNamespaces"))
        .map(|e| e.to_string())
        .collect();
    if !errors.is_empty() {
        return Assessment::Invalid(errors);
    }
    assess_with(ps, slos, Some(cps))
}

fn assess_with(ps: &ProbeSet, slos: &[SloTarget], cluster: Option<&ClusterProbeSet>) -> Assessment {
    let spec = &ps.spec;
    let mut errors: Vec<String> = spec.validate().iter().map(ToString::to_string).collect();
    if ps.metadata.namespace.is_some() {
        errors.extend(namespaced_problems(ps));
    }
    if !errors.is_empty() {
        return Assessment::Invalid(errors);
    }
    let budget = match parse_bytes(&spec.ring_buffer.node_budget) {
        Ok(b) => b,
        Err(e) => return Assessment::Invalid(vec![format!("spec.ringBuffer.nodeBudget: {e}")]),
    };
    let namespace = ps.metadata.namespace.as_deref().unwrap_or_default();
    let name = ps.metadata.name.as_deref().unwrap_or_default();

    let mut thresholds = Vec::with_capacity(spec.probes.len());
    let mut max_drop_rates = Vec::with_capacity(spec.probes.len());
    for p in &spec.probes {
        // Each SLO with its rank: 0 for all on a ProbeSet, the place of
        // its namespace in `sloNamespaces` on a ClusterProbeSet.
        let mut watching: Vec<(usize, &SloTarget)> = slos
            .iter()
            .filter(|s| s.watches(namespace, name, &p.name))
            .filter_map(|s| match cluster {
                None => Some((0, s)),
                Some(c) => c.slo_rank(&s.slo_namespace).map(|rank| (rank, s)),
            })
            .collect();
        watching.sort_by(|(ra, a), (rb, b)| (ra, &a.id).cmp(&(rb, &b.id)));
        max_drop_rates.push(match cluster {
            None => watching
                .iter()
                .map(|(_, s)| s.max_drop_rate)
                .fold(spec.max_drop_rate, f64::min),
            Some(_) => spec.max_drop_rate,
        });
        thresholds.push(
            watching
                .iter()
                .take(MAX_THRESHOLDS)
                .map(|(_, s)| s.threshold.clone())
                .collect(),
        );
    }
    // Bound what one ProbeSet adds to the agents' ConfigMap (its SLOs'
    // thresholds included), so tenants together cannot push it past the
    // API server's 1 MiB, and say so before it would.
    let config_bytes = config_bytes(ps, &thresholds);
    if config_bytes > MAX_CONFIG_BYTES_PER_PROBESET {
        return Assessment::Invalid(vec![format!(
            "spec.probes: this ProbeSet takes {config_bytes} bytes of the agents' \
             configuration, over the {MAX_CONFIG_BYTES_PER_PROBESET} one ProbeSet may use; split \
             it into several ProbeSets, or shorten its filters (cgroups, comms, pids) and selectors"
        )]);
    }
    let input = PlanInput {
        page_size: PLAN_PAGE_SIZE,
        node_budget_bytes: budget,
        max_bytes_per_probe: planner::DEFAULT_MAX_BYTES_PER_PROBE,
        probes: ringwarden_crds::plan::demands(spec, &max_drop_rates),
    };
    let plan = match planner::plan(&input) {
        Ok(plan) => plan,
        Err(e) => return Assessment::Invalid(vec![plan_error(ps, &e)]),
    };
    let unlimited = planner::plan(&PlanInput {
        node_budget_bytes: u64::MAX,
        max_bytes_per_probe: UNLIMITED_RING,
        ..input.clone()
    })
    .expect("a plan that fits a budget also fits an unlimited one");
    let constrained = plan
        .probes
        .iter()
        .zip(&unlimited.probes)
        .zip(&input.probes)
        .filter_map(|((got, wanted), demand)| {
            let mut what = Vec::new();
            if got.ring_bytes < wanted.ring_bytes {
                what.push(format!(
                    "ring {} of the {} it needs",
                    format_bytes(got.ring_bytes),
                    format_bytes(wanted.ring_bytes)
                ));
            }
            if got.sample_every > wanted.sample_every {
                what.push(format!(
                    "sampling 1 in {} instead of 1 in {}",
                    got.sample_every, wanted.sample_every
                ));
            }
            if got.predicted_drop > demand.max_drop_rate {
                what.push(format!(
                    "predicted drop {} above the allowed {}",
                    percent(got.predicted_drop),
                    percent(demand.max_drop_rate)
                ));
            }
            (!what.is_empty()).then(|| format!("{}: {}", got.name, what.join(", ")))
        })
        .collect();
    Assessment::Planned(Planned {
        plan,
        thresholds,
        max_drop_rates,
        excluded: vec![false; spec.probes.len()],
        constrained,
        namespace_limits: None,
        limited: Vec::new(),
    })
}

/// A planner error, pointed at the field that causes it.
fn plan_error(ps: &ProbeSet, e: &PlanError) -> String {
    let probe_index = |name: &str| ps.spec.probes.iter().position(|p| p.name == name);
    match e {
        PlanError::BudgetTooSmall { minimum_bytes, .. } => format!(
            "spec.ringBuffer.nodeBudget: {e}; raise it to at least {}",
            format_bytes(minimum_bytes.next_multiple_of(1024))
        ),
        PlanError::Field { probe, field, .. } => {
            let at = match (*field, probe_index(probe)) {
                ("burstFactor" | "drainInterval", _) => format!("spec.ringBuffer.{field}"),
                ("maxDropRate", _) => "spec.maxDropRate".to_owned(),
                ("requestedSampling", Some(i)) => format!("spec.probes[{i}].sampling"),
                ("peakRate", Some(i)) => format!("spec.probes[{i}].peakEventRate"),
                (_, Some(i)) => format!("spec.probes[{i}]"),
                (_, None) => "spec.probes".to_owned(),
            };
            format!("{at}: {e}")
        }
        other => format!("spec: {other}"),
    }
}

/// `0.015` → "1.5%".
fn percent(fraction: f64) -> String {
    let s = format!("{:.2}", fraction * 100.0);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}%")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ringwarden_crds::{
        ExportPolicy, ExportSpec, ProbeKind, ProbeSetSpec, ProbeSpec, RingBufferSpec,
    };

    use super::*;

    fn probe(name: &str, rate: f64) -> ProbeSpec {
        ProbeSpec {
            name: name.into(),
            kind: ProbeKind::Syscalls,
            uprobe: None,
            go_runtime: None,
            filter: None,
            max_series: 64,
            export: ExportSpec {
                policy: if rate > 0.0 {
                    ExportPolicy::All
                } else {
                    ExportPolicy::None
                },
                slower_than: None,
            },
            peak_event_rate: rate,
            sampling: 1.0,
            priority: 0,
        }
    }

    fn probeset(budget: &str, probes: Vec<ProbeSpec>) -> ProbeSet {
        let mut ps = ProbeSet::new(
            "web",
            ProbeSetSpec {
                node_selector: Default::default(),
                pod_selector: None,
                probes,
                ring_buffer: RingBufferSpec {
                    node_budget: budget.into(),
                    ..Default::default()
                },
                max_drop_rate: 0.01,
                report_interval: Duration::from_secs(10),
            },
        );
        ps.metadata.namespace = Some("shop".into());
        ps
    }

    fn slo(name: &str, probe: &str, max_drop_rate: f64) -> SloTarget {
        let id = format!("shop/{name}");
        SloTarget {
            namespace: "shop".into(),
            slo_namespace: "shop".into(),
            threshold: Threshold {
                slo: id.clone(),
                latency_ns: Some(1_000_000),
                errors: false,
                series: vec![],
            },
            id,
            probeset: "web".into(),
            probe: probe.into(),
            max_drop_rate,
        }
    }

    #[test]
    fn rings_are_sized_for_96_byte_records() {
        // 10000 ev/s × (88 + 8) B × 100ms × burst 2 = 192000 B → 256 KiB.
        let a = assess(&probeset("64Mi", vec![probe("sys", 10_000.0)]), &[]);
        let p = a.planned().unwrap();
        assert_eq!(p.plan.probes[0].ring_bytes, 256 << 10);
        assert_eq!(p.plan.probes[0].record_bytes, 96);
        assert_eq!(p.plan.budget_bytes, 64 << 20);
        assert!(p.constrained.is_empty());
    }

    #[test]
    fn probes_without_an_event_path_get_no_ring() {
        let a = assess(&probeset("64Mi", vec![probe("sys", 0.0)]), &[]);
        assert_eq!(a.planned().unwrap().plan.used_bytes, 0);
    }

    #[test]
    fn a_short_budget_is_reported_per_probe() {
        let a = assess(
            &probeset("64Ki", vec![probe("a", 10_000.0), probe("b", 10.0)]),
            &[],
        );
        let p = a.planned().unwrap();
        assert_eq!(p.plan.probes[0].ring_bytes, 32 << 10);
        assert_eq!(
            p.constrained,
            ["a: ring 32Ki of the 256Ki it needs, sampling 1 in 2 instead of 1 in 1"]
        );
    }

    #[test]
    fn spec_errors_and_unplannable_budgets_make_the_probeset_invalid() {
        let mut bad = probeset("lots", vec![probe("sys", 1.0)]);
        bad.spec.max_drop_rate = 2.0;
        let Assessment::Invalid(errors) = assess(&bad, &[]) else {
            panic!("expected invalid")
        };
        assert_eq!(errors.len(), 2);
        assert!(errors[0].starts_with("spec.maxDropRate: "), "{errors:?}");
        assert!(
            errors[1].starts_with("spec.ringBuffer.nodeBudget: "),
            "{errors:?}"
        );

        let tiny = probeset("1Ki", vec![probe("sys", 1.0)]);
        assert_eq!(
            assess(&tiny, &[]),
            Assessment::Invalid(vec![
                "spec.ringBuffer.nodeBudget: node budget of 1024 B is too small: the event \
                 paths need 4096 B even at one page (or one record) each; raise it to at least 4Ki"
                    .into()
            ])
        );

        let mut sparse = probeset("64Mi", vec![probe("sys", 1.0)]);
        sparse.spec.probes[0].sampling = 1e-9;
        let Assessment::Invalid(errors) = assess(&sparse, &[]) else {
            panic!("expected invalid")
        };
        assert!(
            errors[0].starts_with("spec.probes[0].sampling: "),
            "{errors:?}"
        );
    }

    #[test]
    fn slos_add_thresholds_and_the_strictest_drop_rate() {
        // 100000 ev/s bring 5000 records per 50ms drain period into a
        // 256 KiB ring, which holds 2730: the 50% the ProbeSet alone allows
        // needs no sampling (45.4% are dropped), no drops at all 1 in 2.
        let mut ps = probeset("256Ki", vec![probe("sys", 100_000.0), probe("other", 0.0)]);
        ps.spec.max_drop_rate = 0.5;
        let alone = assess(&ps, &[]);
        assert_eq!(alone.planned().unwrap().plan.probes[0].sample_every, 1);

        let slos = [
            slo("b-strict", "sys", 0.0),
            slo("a-lax", "sys", 0.9),
            slo("elsewhere", "nope", 0.0),
        ];
        let with = assess(&ps, &slos);
        let p = with.planned().unwrap();
        assert_eq!(p.plan.probes[0].sample_every, 2);
        let names: Vec<_> = p.thresholds[0].iter().map(|t| t.slo.as_str()).collect();
        assert_eq!(names, ["shop/a-lax", "shop/b-strict"]);
        assert!(p.thresholds[1].is_empty());
    }

    /// A ClusterProbeSet whose SLOs `slo_namespaces` may write, and an
    /// SLO on its probe `sys` from `namespace`.
    fn cluster(slo_namespaces: &[&str]) -> (ProbeSet, ClusterProbeSet) {
        let mut ps = probeset("256Ki", vec![probe("sys", 100_000.0)]);
        ps.metadata.namespace = None;
        ps.metadata.name = Some("node-wide".into());
        ps.spec.max_drop_rate = 0.5;
        let mut cps = ClusterProbeSet::new(
            "node-wide",
            ringwarden_crds::ClusterProbeSetSpec {
                namespace_selector: None,
                slo_namespaces: slo_namespaces.iter().map(|n| (*n).to_owned()).collect(),
                probe_set: ps.spec.clone(),
            },
        );
        cps.metadata = ps.metadata.clone();
        (ps, cps)
    }

    fn cluster_slo(namespace: &str, name: &str, max_drop_rate: f64) -> SloTarget {
        SloTarget {
            namespace: String::new(),
            slo_namespace: namespace.into(),
            probeset: "node-wide".into(),
            ..slo(name, "sys", max_drop_rate)
        }
        .with_id(format!("{namespace}/{name}"))
    }

    impl SloTarget {
        fn with_id(mut self, id: String) -> Self {
            self.threshold.slo.clone_from(&id);
            self.id = id;
            self
        }
    }

    fn slots(a: &Assessment) -> Vec<&str> {
        a.planned().unwrap().thresholds[0]
            .iter()
            .map(|t| t.slo.as_str())
            .collect()
    }

    #[test]
    fn a_cluster_probeset_gives_threshold_slots_to_the_namespaces_it_lists_first() {
        let (ps, cps) = cluster(&["platform", "team"]);
        let mut slos: Vec<SloTarget> = (0..MAX_THRESHOLDS)
            .flat_map(|i| {
                [
                    cluster_slo("team", &format!("a-{i}"), 0.01),
                    cluster_slo("hostile", &format!("a-{i}"), 0.01),
                ]
            })
            .collect();
        slos.push(cluster_slo("platform", "z-node-read", 0.01));
        let a = assess_cluster_probes(&ps, &cps, &slos);
        assert_eq!(
            slots(&a),
            ["platform/z-node-read", "team/a-0", "team/a-1", "team/a-2"]
        );
        // Unlisted, none: not even a free slot.
        let (ps, cps) = cluster(&[]);
        assert!(slots(&assess_cluster_probes(&ps, &cps, &slos)).is_empty());
        // The same SLOs on a ProbeSet: by name, as always.
        let mut named = slos.clone();
        for s in &mut named {
            s.namespace = "shop".into();
        }
        let mut on_probeset = ps.clone();
        on_probeset.metadata.namespace = Some("shop".into());
        assert_eq!(slots(&assess(&on_probeset, &named)).len(), MAX_THRESHOLDS);
    }

    #[test]
    fn slos_never_change_a_cluster_probeset_s_plan() {
        let (ps, cps) = cluster(&["platform"]);
        let alone = assess_cluster_probes(&ps, &cps, &[]);
        let strict = [
            cluster_slo("platform", "strict", 0.0),
            cluster_slo("hostile", "stricter", 0.0),
        ];
        let with = assess_cluster_probes(&ps, &cps, &strict);
        let (alone, with) = (alone.planned().unwrap(), with.planned().unwrap());
        assert_eq!(with.plan, alone.plan);
        assert_eq!(with.max_drop_rates, [0.5]);
        assert_eq!(
            slots(&Assessment::Planned(with.clone())),
            ["platform/strict"]
        );
        // On a ProbeSet, its namespace's strictest SLO tightens it.
        let mut on_probeset = ps.clone();
        on_probeset.metadata.namespace = Some("shop".into());
        let mut strict = strict[0].clone();
        strict.namespace = "shop".into();
        let tightened = assess(&on_probeset, &[strict]);
        assert_eq!(tightened.planned().unwrap().max_drop_rates, [0.0]);
    }

    #[test]
    fn a_malformed_slo_namespace_makes_a_cluster_probeset_invalid_naming_it() {
        let (ps, cps) = cluster(&["platform", "Not_A_Namespace", "platform"]);
        let Assessment::Invalid(why) = assess_cluster_probes(&ps, &cps, &[]) else {
            panic!("a malformed sloNamespaces is Invalid")
        };
        assert_eq!(why.len(), 2, "{why:?}");
        assert!(why[0].starts_with("spec.sloNamespaces[1]: "), "{why:?}");
        assert!(why[1].starts_with("spec.sloNamespaces[2]: "), "{why:?}");
    }

    #[test]
    fn at_most_the_kernel_s_threshold_slots_are_used() {
        let ps = probeset("64Mi", vec![probe("sys", 0.0)]);
        let slos: Vec<_> = (0..6).map(|i| slo(&format!("s{i}"), "sys", 0.01)).collect();
        let a = assess(&ps, &slos);
        assert_eq!(a.planned().unwrap().thresholds[0].len(), MAX_THRESHOLDS);
    }

    #[test]
    fn a_probeset_too_large_for_the_agent_configmap_is_invalid_and_says_how_to_fix_it() {
        let mut probes: Vec<ProbeSpec> = (0..64).map(|i| probe(&format!("p{i}"), 0.0)).collect();
        for p in &mut probes {
            p.filter = Some(ringwarden_crds::ProbeFilter {
                comms: (0..200).map(|i| format!("worker-{i:06}")).collect(),
                ..Default::default()
            });
        }
        let Assessment::Invalid(errors) = assess(&probeset("64Mi", probes.clone()), &[]) else {
            panic!("64 probes with 200 comms each fit no ConfigMap share");
        };
        assert!(
            errors[0].starts_with("spec.probes: this ProbeSet takes "),
            "{errors:?}"
        );
        assert!(
            errors[0].contains("split it into several ProbeSets"),
            "{errors:?}"
        );
        // A quarter of it fits.
        probes.truncate(16);
        for p in &mut probes {
            p.filter.as_mut().unwrap().comms.truncate(100);
        }
        assert!(matches!(
            assess(&probeset("64Mi", probes), &[]),
            Assessment::Planned(_)
        ));
    }
}
