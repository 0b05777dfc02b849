//! What each node was handed: the probes and SLO thresholds of the
//! configuration rendered for its labels, the same the operator pushes on
//! its stream (and the ConfigMap holds for it). Reports are checked
//! against it before anything is counted, so an agent reports only for
//! probes and thresholds its node was given; the rest is refused.
//! Pure: the caller passes the configuration, the labels and the time.
//!
//! A configuration stays acceptable for [`GRACE`] after the node was
//! handed another, so reports an agent made or buffered under the previous
//! one still count.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use ringwarden_crds::{AgentConfig, AgentProbe};

use crate::{
    ingest::reports::{ProbeRef, Sample},
    reconcile::world::{Labels, selector_matches},
};

/// How long a node's previous configuration still counts: an agent keeps
/// at most 60 unacknowledged reports, ten minutes at the usual 10 s, and
/// applies a pushed configuration within moments.
pub const GRACE: Duration = Duration::from_secs(15 * 60);

/// Why (part of) a report was refused: the `reason` label of
/// `ringwarden_operator_reports_refused_total`.
pub mod refusal {
    /// A probe the node was not handed.
    pub const PROBE_NOT_PUSHED: &str = "probe_not_pushed";
    /// A threshold (SLO and threshold id) not handed with its probe.
    pub const THRESHOLD_NOT_PUSHED: &str = "threshold_not_pushed";
    /// A report from a node not in the cluster's node list.
    pub const UNKNOWN_NODE: &str = "unknown_node";
    /// A report of a boot id the node left behind, numbered no higher than
    /// its last report seen.
    pub const BOOT_REPLAYED: &str = "boot_replayed";
    /// The first report of a boot seen after its first (`seq` above 1):
    /// its counts are a baseline only.
    pub const NOT_FROM_START: &str = "not_from_start";
    /// Counts the node could not have made (`reports::ceiling`): refused
    /// whole, or by the SLOs they would have taken past it.
    pub const IMPLAUSIBLE_COUNTS: &str = "implausible_counts";
    /// Histograms beyond a node's caps on series or buckets
    /// ([`super::MAX_NODE_SERIES`], [`super::MAX_NODE_BUCKETS`]).
    pub const SERIES_CAP: &str = "series_cap";
}

/// Most histogram series one node's report is counted with, all probes
/// together: four probes at the largest `maxSeries`.
pub const MAX_NODE_SERIES: usize = 16_384;
/// Most histogram buckets one node's report is counted with (16 MiB as
/// the operator holds them while counting).
pub const MAX_NODE_BUCKETS: usize = 1 << 20;

/// Keeps the histograms of `sample`'s probes, in report order, while the
/// node's totals stay within [`MAX_NODE_SERIES`] and [`MAX_NODE_BUCKETS`];
/// the probes beyond lose their histograms (their counters and thresholds
/// still count, so loss accounting and SLIs stay exact). Returns
/// [`refusal::SERIES_CAP`] if it took any away.
pub fn cap(sample: &mut Sample) -> Option<&'static str> {
    let (mut series, mut buckets, mut capped) = (0usize, 0usize, false);
    for p in &mut sample.probes {
        let more: usize = p.series.iter().map(|(_, h)| h.buckets.len()).sum();
        if capped || series + p.series.len() > MAX_NODE_SERIES || buckets + more > MAX_NODE_BUCKETS
        {
            capped |= !p.series.is_empty();
            p.series = Vec::new();
            continue;
        }
        series += p.series.len();
        buckets += more;
    }
    capped.then_some(refusal::SERIES_CAP)
}

/// The probes of `config` that a node with `labels` runs.
pub fn selected<'a>(
    config: &'a AgentConfig,
    labels: &'a Labels,
) -> impl Iterator<Item = &'a AgentProbe> {
    config
        .probes
        .iter()
        .filter(|p| selector_matches(&p.node_selector, labels))
}

/// The probes one configuration hands one node, each with its thresholds
/// `(slo, threshold id)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Handed(HashMap<ProbeRef, Vec<(String, u64)>>);

impl Handed {
    /// What `config` hands a node with `labels`.
    pub fn of(config: &AgentConfig, labels: &Labels) -> Self {
        Self(
            selected(config, labels)
                .map(|p| {
                    let id = ProbeRef {
                        namespace: p.namespace.clone(),
                        probeset: p.probeset.clone(),
                        probe: p.spec.name.clone(),
                    };
                    let thresholds = p
                        .thresholds
                        .iter()
                        .map(|t| {
                            (
                                t.slo.clone(),
                                ringwarden_proto::threshold_id(
                                    &t.slo,
                                    t.latency_ns,
                                    t.errors,
                                    &t.series,
                                ),
                            )
                        })
                        .collect();
                    (id, thresholds)
                })
                .collect(),
        )
    }

    fn has_probe(&self, probe: &ProbeRef) -> bool {
        self.0.contains_key(probe)
    }

    fn has_threshold(&self, probe: &ProbeRef, slo: &str, id: u64) -> bool {
        self.0
            .get(probe)
            .is_some_and(|ts| ts.iter().any(|(s, t)| s == slo && *t == id))
    }
}

/// One node's configuration now, and those it had within [`GRACE`].
#[derive(Debug)]
struct NodeHanded {
    /// The rendering (configuration and labels) `current` was made from.
    generation: u64,
    current: Arc<Handed>,
    /// Configurations replaced, with when.
    earlier: Vec<(Arc<Handed>, SystemTime)>,
}

/// Per node, what it was handed. Only nodes the caller knows are kept.
#[derive(Debug, Default)]
pub struct HandedOut {
    nodes: HashMap<String, NodeHanded>,
}

impl HandedOut {
    /// Removes from `sample` every probe and threshold `node` was not
    /// handed, now or within [`GRACE`]; returns why it removed something,
    /// each reason once. `generation` changes whenever the rendered
    /// configuration or some node's labels do; `handed` computes the node's
    /// configuration for it (none before one was rendered).
    pub fn check(
        &mut self,
        now: SystemTime,
        node: &str,
        generation: u64,
        handed: impl FnOnce() -> Handed,
        sample: &mut Sample,
    ) -> Vec<&'static str> {
        let entry = self
            .nodes
            .entry(node.to_owned())
            .or_insert_with(|| NodeHanded {
                generation: generation.wrapping_sub(1),
                current: Arc::default(),
                earlier: Vec::new(),
            });
        if entry.generation != generation {
            let now_handed = Arc::new(handed());
            if now_handed != entry.current {
                let replaced = std::mem::replace(&mut entry.current, now_handed);
                if !replaced.0.is_empty() {
                    entry.earlier.push((replaced, now));
                }
            }
            entry.generation = generation;
        }
        entry
            .earlier
            .retain(|(_, at)| now.duration_since(*at).unwrap_or_default() < GRACE);
        let all: Vec<&Handed> = std::iter::once(&*entry.current)
            .chain(entry.earlier.iter().map(|(h, _)| &**h))
            .collect();
        let mut refused = Vec::new();
        let before = sample.probes.len();
        sample
            .probes
            .retain(|p| all.iter().any(|h| h.has_probe(&p.id)));
        if sample.probes.len() < before {
            refused.push(refusal::PROBE_NOT_PUSHED);
        }
        let mut threshold_refused = false;
        for p in &mut sample.probes {
            let before = p.thresholds.len();
            p.thresholds.retain(|t| {
                all.iter()
                    .any(|h| h.has_threshold(&p.id, &t.slo, t.threshold_id))
            });
            threshold_refused |= p.thresholds.len() < before;
        }
        if threshold_refused {
            refused.push(refusal::THRESHOLD_NOT_PUSHED);
        }
        refused
    }

    /// Forgets the nodes `keep` says no.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.nodes.retain(|n, _| keep(n));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ringwarden_crds::{ExportPolicy, ExportSpec, ProbeKind, ProbeSpec, Threshold};

    use super::*;
    use crate::ingest::reports::{ProbeSample, ThresholdSample};

    fn probe(name: &str, selector: &[(&str, &str)], latency_ns: u64) -> AgentProbe {
        AgentProbe {
            namespace: "shop".into(),
            probeset: "web".into(),
            spec: ProbeSpec {
                name: name.into(),
                kind: ProbeKind::Syscalls,
                uprobe: None,
                go_runtime: None,
                filter: None,
                max_series: 64,
                export: ExportSpec {
                    policy: ExportPolicy::None,
                    slower_than: None,
                },
                peak_event_rate: 0.0,
                sampling: 1.0,
                priority: 0,
            },
            pod_selector: None,
            namespaces: None,
            node_selector: selector
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ring_bytes: 4096,
            sample_every: 1,
            predicted_drop: 0.0,
            burst_factor: 2.0,
            max_drop_rate: 0.01,
            drain_interval: Duration::from_millis(100),
            report_interval: Duration::from_secs(10),
            thresholds: vec![Threshold {
                slo: "shop/fast".into(),
                latency_ns: Some(latency_ns),
                errors: false,
                series: vec![],
            }],
        }
    }

    fn id(name: &str) -> ProbeRef {
        ProbeRef {
            namespace: "shop".into(),
            probeset: "web".into(),
            probe: name.into(),
        }
    }

    fn sample(probes: &[(&str, u64)]) -> Sample {
        Sample {
            boot_id: "b".into(),
            seq: 1,
            unix_ms: 0,
            config_version: String::new(),
            probes: probes
                .iter()
                .map(|(name, threshold_id)| ProbeSample {
                    id: id(name),
                    thresholds: vec![ThresholdSample {
                        slo: "shop/fast".into(),
                        threshold_id: *threshold_id,
                        good: 1,
                        total: 1,
                    }],
                    counters: None,
                    ring_bytes: 0,
                    ring_high_water: 0,
                    events_received: 0,
                    events_corrupt: 0,
                    series: Vec::new(),
                    load_errors: Vec::new(),
                    sample_every: 1,
                })
                .collect(),
        }
    }

    fn tid(latency_ns: u64) -> u64 {
        ringwarden_proto::threshold_id("shop/fast", Some(latency_ns), false, &[])
    }

    #[test]
    fn a_node_may_report_only_the_probes_and_thresholds_its_labels_select() {
        let config = AgentConfig {
            namespace_limits: Default::default(),
            probes: vec![
                probe("all", &[], 1_000),
                probe("gpu", &[("gpu", "1")], 1_000),
            ],
            node_budget_bytes: 8192,
        };
        let plain = Labels::new();
        let mut out = HandedOut::default();
        let t0 = SystemTime::UNIX_EPOCH;
        let mut s = sample(&[("all", tid(1_000)), ("gpu", tid(1_000))]);
        let refused = out.check(t0, "n1", 1, || Handed::of(&config, &plain), &mut s);
        assert_eq!(refused, [refusal::PROBE_NOT_PUSHED]);
        assert_eq!(s.probes.len(), 1);
        assert_eq!(s.probes[0].id, id("all"));

        // A threshold id the operator never handed out.
        let mut s = sample(&[("all", tid(5_000))]);
        let refused = out.check(t0, "n1", 1, || unreachable!("cached"), &mut s);
        assert_eq!(refused, [refusal::THRESHOLD_NOT_PUSHED]);
        assert!(s.probes[0].thresholds.is_empty());

        let mut s = sample(&[("all", tid(1_000))]);
        assert!(out.check(t0, "n1", 1, || unreachable!(), &mut s).is_empty());
        assert_eq!(s.probes[0].thresholds.len(), 1);
    }

    #[test]
    fn the_previous_configuration_counts_for_a_grace_period() {
        let before = AgentConfig {
            namespace_limits: Default::default(),
            probes: vec![probe("all", &[], 1_000)],
            node_budget_bytes: 8192,
        };
        let after = AgentConfig {
            namespace_limits: Default::default(),
            probes: vec![probe("all", &[], 2_000)],
            node_budget_bytes: 8192,
        };
        let labels = Labels::new();
        let mut out = HandedOut::default();
        let t0 = SystemTime::UNIX_EPOCH;
        let mut s = sample(&[("all", tid(1_000))]);
        assert!(
            out.check(t0, "n1", 1, || Handed::of(&before, &labels), &mut s)
                .is_empty()
        );
        // Reconfigured: reports made under either configuration count.
        for threshold in [tid(1_000), tid(2_000)] {
            let mut s = sample(&[("all", threshold)]);
            assert!(
                out.check(t0, "n1", 2, || Handed::of(&after, &labels), &mut s)
                    .is_empty()
            );
        }
        // Until the grace period has passed.
        let mut s = sample(&[("all", tid(1_000))]);
        let later = t0 + GRACE;
        assert_eq!(
            out.check(later, "n1", 2, || unreachable!(), &mut s),
            [refusal::THRESHOLD_NOT_PUSHED]
        );
    }

    #[test]
    fn histograms_past_a_nodes_caps_are_dropped_and_counted_but_counts_stay() {
        use crate::ingest::reports::Sparse;
        let histogram = |buckets: u16| Sparse {
            buckets: (0..buckets).map(|i| (i, 1)).collect(),
            ..Sparse::default()
        };
        let with_series = |n: usize, buckets: u16| {
            let mut s = sample(&[("a", 1), ("b", 1), ("c", 1)]);
            for p in &mut s.probes {
                p.series = (0..n)
                    .map(|i| (format!("s{i}"), histogram(buckets)))
                    .collect();
            }
            s
        };
        // Within both caps: nothing changes.
        let mut s = with_series(MAX_NODE_SERIES / 3, 1);
        assert_eq!(cap(&mut s), None);
        assert!(
            s.probes
                .iter()
                .all(|p| p.series.len() == MAX_NODE_SERIES / 3)
        );
        // The third probe would pass the series cap: it loses its
        // histograms, keeps its thresholds.
        let mut s = with_series(MAX_NODE_SERIES / 2, 1);
        assert_eq!(cap(&mut s), Some(refusal::SERIES_CAP));
        let kept: Vec<usize> = s.probes.iter().map(|p| p.series.len()).collect();
        assert_eq!(kept, [MAX_NODE_SERIES / 2, MAX_NODE_SERIES / 2, 0]);
        assert!(s.probes.iter().all(|p| p.thresholds.len() == 1));
        // The bucket cap: 1 000 series of 1 000 buckets each fit once.
        let mut s = with_series(1_000, 1_000);
        assert_eq!(cap(&mut s), Some(refusal::SERIES_CAP));
        let kept: Vec<usize> = s.probes.iter().map(|p| p.series.len()).collect();
        assert_eq!(kept, [1_000, 0, 0]);
    }
}
