//! Agent reports, aggregated: per node what its probes counted, per
//! ProbeSet the figures across nodes, per SLO a [`SloEvaluator`]. Pure:
//! no IO, and the time is passed in.
//!
//! # Counting once
//!
//! Reports carry cumulative counters, numbered per boot of an agent.
//! Figures are increments between two reports of one boot:
//!
//! - a report numbered no higher than the node's last is a repeat (a
//!   retransmit after a reconnect, a duplicate): acknowledged, not counted;
//! - the first report this operator sees of a boot is only a baseline,
//!   unless it is the boot's first report (`seq` 1), whose counters all
//!   happened since the agent started;
//! - a new boot id in a Hello starts the node afresh, and the boot ids it
//!   replaced are refused in later Hellos;
//! - a report of a boot id an SLO evaluator retired, numbered no higher
//!   than its last, is a replay: refused whole ([`Outcome::Replayed`]).
//!
//! SLO counts go through [`SloEvaluator::ingest`], which keeps its own
//! per-stream baselines (and persists them), so they survive an operator
//! restart; the figures here are rebuilt from the next reports. A boot
//! seen here from its first report is vouched for
//! ([`SloEvaluator::ingest_from_start`]): an SLO that does not know it yet
//! counts its next report in full. Otherwise such a report is only a
//! baseline ([`Outcome::Baseline`]).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use ringwarden_core::{
    accounting::Counters,
    histogram::Histogram,
    slo::{self as core_slo, MAX_RETIRED_PER_NODE, SloError, SloEvaluator, SloSnapshot},
};
use ringwarden_ebpf_common::HIST_BUCKETS;
use ringwarden_proto::NO_THRESHOLD;

use super::packed::Packed;
use serde::{Deserialize, Serialize};

pub use super::decode::{
    AgentInfo, LoadFailure, ProbeRef, ProbeSample, ReportError, Sample, Sparse, ThresholdSample,
    truncate,
};
pub use figures::{
    Figures, FiguresBuilder, Flow, Lacking, NodeProblem, ProbeFigures, ProbeSetQuery, problem,
};

mod figures;

/// Nodes a ProbeSet's problem list names; the rest are counted.
pub const MAX_LISTED_NODES: usize = 10;
/// Slots of the latency histograms kept per SLO window: observed latency
/// covers the window to within one slot (30 h of a 30-day window).
pub const LATENCY_SLOTS: u64 = 24;
/// A node silent this long, with no stream open, is forgotten.
pub const NODE_TTL: Duration = Duration::from_secs(3_600);
/// Most events one CPU can put through one probe a second: the kernel
/// side costs at least 183 ns an event (an empty `tp_btf` program on a
/// `getppid`, BENCHMARKS.md), 5.5 million a second; twice that, for
/// faster CPUs.
pub const MAX_EVENTS_PER_CPU_SECOND: u64 = 10_000_000;
/// How long a node stays flagged [`problem::IMPLAUSIBLE_COUNTS`] after its
/// last refused report.
pub const IMPLAUSIBLE_FLAG: Duration = Duration::from_secs(3_600);

/// Most events a second one probe of a node with `possible_cpus` can
/// count, all its CPUs at [`MAX_EVENTS_PER_CPU_SECOND`]; a node whose
/// agent did not say is taken at the most CPUs a Hello may name.
pub fn ceiling(possible_cpus: u32) -> u64 {
    let cpus = match possible_cpus {
        0 => super::decode::MAX_POSSIBLE_CPUS,
        n => n,
    };
    MAX_EVENTS_PER_CPU_SECOND * u64::from(cpus)
}

/// A histogram being summed: all buckets, so adding is indexing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dense {
    buckets: Vec<u64>,
    sum_ns: u64,
    max_ns: u64,
    errors: u64,
}

impl Default for Dense {
    fn default() -> Self {
        Self {
            buckets: vec![0; HIST_BUCKETS],
            sum_ns: 0,
            max_ns: 0,
            errors: 0,
        }
    }
}

impl Dense {
    pub fn add(&mut self, s: &Sparse) {
        for &(i, n) in &s.buckets {
            let b = &mut self.buckets[usize::from(i)];
            *b = b.saturating_add(n);
        }
        self.sum_ns = self.sum_ns.saturating_add(s.sum_ns);
        self.max_ns = self.max_ns.max(s.max_ns);
        self.errors = self.errors.saturating_add(s.errors);
    }

    pub fn add_packed(&mut self, p: &Packed) {
        for (i, n) in p.buckets() {
            let b = &mut self.buckets[usize::from(i)];
            *b = b.saturating_add(n);
        }
        self.sum_ns = self.sum_ns.saturating_add(p.sum_ns);
        self.max_ns = self.max_ns.max(p.max_ns);
        self.errors = self.errors.saturating_add(p.errors);
    }

    pub fn merge(&mut self, other: &Dense) {
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine = mine.saturating_add(*theirs);
        }
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
        self.errors = self.errors.saturating_add(other.errors);
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.iter().all(|&n| n == 0)
    }

    /// As the core's histogram, for its percentile math.
    pub fn to_histogram(&self) -> Histogram {
        let mut h = Histogram::new();
        for (b, &n) in self.buckets.iter().enumerate().filter(|(_, n)| **n != 0) {
            h.add_to_bucket(b, n);
        }
        h.add_totals(self.sum_ns, self.max_ns, self.errors);
        h
    }

    pub fn from_histogram(h: &Histogram) -> Self {
        Self {
            buckets: h.buckets().to_vec(),
            sum_ns: h.sum_ns(),
            max_ns: h.max_ns(),
            errors: h.errors(),
        }
    }
}

/// Counters of one interval, and its length when known.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Interval {
    counters: Counters,
    seconds: Option<f64>,
}

/// The latest of one probe on one node.
#[derive(Clone, Debug, Default)]
struct ProbeNow {
    counters: Option<Counters>,
    interval: Option<Interval>,
    ring_bytes: u64,
    ring_high_water: u64,
    /// Cumulative, all series together: the baseline of the next
    /// interval's increments. One histogram per probe, not one per series:
    /// the operator's memory must not grow with the series agents report.
    all: Packed,
    /// Cumulative, for the series an SLO names (`spec.series`) only, by
    /// series name: the next report finds each by key.
    named: HashMap<String, Sparse>,
    /// The last interval's events, all series together.
    recent: Packed,
    load_errors: Vec<LoadFailure>,
}

/// The latest of one node.
#[derive(Clone, Debug)]
struct NodeState {
    info: AgentInfo,
    /// Highest report number ingested of `info.boot_id`; 0 before any.
    seq: u64,
    /// Whether the first report ingested of `info.boot_id` was its first
    /// (`seq` 1), so every report of it since was seen.
    from_start: bool,
    /// Boot ids of this node that `info.boot_id` replaced, latest last.
    retired_boots: Vec<String>,
    /// The agent's clock at that report.
    unix_ms: u64,
    /// The operator's clock at that report, or at the Hello before one.
    seen: SystemTime,
    reported: bool,
    /// Streams open.
    streams: u32,
    probes: HashMap<ProbeRef, ProbeNow>,
    /// When a report of the node was last refused as implausible, and why.
    implausible: Option<(SystemTime, String)>,
    /// The node's pace against its ceiling ([`core_slo::pace`]), across
    /// its boots.
    paced_ms: u64,
}

impl NodeState {
    /// Why the node is flagged [`problem::IMPLAUSIBLE_COUNTS`] at `now`.
    fn implausible_at(&self, now: SystemTime) -> Option<&str> {
        self.implausible
            .as_ref()
            .filter(|(at, _)| now.duration_since(*at).unwrap_or_default() <= IMPLAUSIBLE_FLAG)
            .map(|(_, why)| why.as_str())
    }
}

/// Paces `sample` against its node's `ceiling` before anything of it is
/// counted; the node's new pace, or why the report holds counts the node
/// could not have made: a threshold with more good events than total
/// beyond a second of events in flight, or more events, all probes
/// together, than the node's CPUs count at the ceiling over the time
/// since its earlier reports plus [`core_slo::PLAUSIBLE_BURST`]
/// ([`core_slo::pace`], one number a node, across its boots). A report's
/// events are what its probes' counters added since the boot's previous
/// report; all of them for a boot's first report, and for a report of an
/// older boot (rare, and counted by the SLOs only); none for a first
/// sight of a boot (a baseline here; each SLO paces what it counts of it
/// too, see [`core_slo::PLAUSIBLE_BURST`]).
fn paced(
    now: SystemTime,
    state: &NodeState,
    current: bool,
    sample: &Sample,
    ceiling: u64,
) -> Result<u64, String> {
    let mut events = 0u64;
    for p in &sample.probes {
        for t in &p.thresholds {
            if t.good > t.total.saturating_add(ceiling) {
                return Err(format!(
                    "probe {}: SLO {} counted {} good of {} events",
                    p.id.probe, t.slo, t.good, t.total
                ));
            }
        }
        let before = current
            .then(|| state.probes.get(&p.id))
            .flatten()
            .and_then(|b| b.counters);
        let increment = |now: u64, then: u64| {
            // Gone down: the probe reloaded, all of it is new.
            if now >= then { now - then } else { now }
        };
        let whole = || {
            p.thresholds
                .iter()
                .map(|t| t.total)
                .chain(p.counters.map(|c| c.observed.max(c.exported)))
                .fold(0, u64::max)
        };
        let added = match (before, p.counters) {
            (Some(b), Some(c)) if state.seq > 0 => {
                increment(c.observed, b.observed).max(increment(c.exported, b.exported))
            }
            _ if !current || sample.seq == 1 => whole(),
            _ => 0,
        };
        events = events.saturating_add(added);
    }
    let now_ms = millis(now);
    core_slo::pace(Some(ceiling), state.paced_ms, now_ms, now_ms, events).ok_or_else(|| {
        format!(
            "{events} events in one report, more than {ceiling} a second (its {} possible CPUs \
             at {MAX_EVENTS_PER_CPU_SECOND} each) allows with {} s of burst",
            state.info.possible_cpus,
            core_slo::PLAUSIBLE_BURST.as_secs()
        )
    })
}

/// What an SLO watches and promises, as the evaluator needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct SloDef {
    /// `namespace/name`.
    pub id: String,
    pub probe: ProbeRef,
    /// Only these series count toward the observed latency; empty for all.
    pub series: Vec<String>,
    pub spec: core_slo::SloSpec,
    /// The threshold the kernel counts against
    /// ([`ringwarden_proto::threshold_id`]).
    pub threshold_id: u64,
}

/// Latency histograms of an SLO's window, in [`LATENCY_SLOTS`] slots.
#[derive(Clone, Debug, Default)]
struct LatencyRing {
    slot_ms: u64,
    slots: BTreeMap<u64, Dense>,
}

impl LatencyRing {
    fn new(window: Duration) -> Self {
        Self {
            slot_ms: (millis_of(window) / LATENCY_SLOTS).max(1),
            slots: BTreeMap::new(),
        }
    }

    fn add(&mut self, now_ms: u64, s: &Sparse) {
        let slot = now_ms / self.slot_ms;
        self.slots.retain(|&k, _| k + LATENCY_SLOTS > slot);
        self.slots.entry(slot).or_default().add(s);
    }

    fn merged(&self, now_ms: u64) -> Option<Histogram> {
        let slot = now_ms / self.slot_ms;
        let mut all = Dense::default();
        for (_, d) in self.slots.range(slot.saturating_sub(LATENCY_SLOTS - 1)..) {
            all.merge(d);
        }
        (!all.is_empty()).then(|| all.to_histogram())
    }
}

struct SloEntry {
    def: SloDef,
    evaluator: SloEvaluator,
    latency: LatencyRing,
    /// Bumped by every change, so the persister knows what it saved.
    version: u64,
}

/// An SLO's state as persisted: the evaluator's snapshot and the latency
/// slots. Restoring it loses at most what came after it was taken.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Persisted {
    /// `namespace/name`.
    pub slo: String,
    pub evaluator: SloSnapshot,
    pub latency_slot_ms: u64,
    /// `(slot, histogram)`, slot = Unix ms / `latency_slot_ms`.
    pub latency: Vec<(u64, Histogram)>,
    /// When it was written (Unix ms), so a successor can tell its age.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saved_ms: Option<u64>,
}

/// What became of a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Counted.
    Ingested,
    /// Numbered no higher than one already ingested: nothing counted.
    Stale,
    /// From a boot other than the node's latest: only SLO evaluators,
    /// which keep each boot apart, counted it.
    OtherBoot,
    /// No Hello from the node; nothing counted.
    UnknownNode,
    /// Of a boot id an SLO retired, numbered no higher than its last
    /// report: a replay, refused whole.
    Replayed,
    /// The first report seen of a boot, but not its first (`seq` above 1):
    /// some SLO that did not know the boot took its counters as a baseline
    /// and counted none of them.
    Baseline,
    /// Counts no node could have made (see [`ceiling`]): refused whole
    /// before anything was counted, or by an SLO whose stream it would
    /// have taken past its ceiling; the node is flagged.
    Implausible,
}

impl Outcome {
    /// The `outcome` label of `ringwarden_operator_reports_total`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Ingested => "ingested",
            Self::Stale => "stale",
            Self::OtherBoot => "other_boot",
            Self::UnknownNode => "unknown_node",
            Self::Replayed => "replayed",
            Self::Baseline => "baseline",
            Self::Implausible => "implausible",
        }
    }
}

/// A Hello naming a boot id its node already replaced with a newer one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "node {node} replaced boot id {boot_id} with {current}; an old boot id cannot report \
     again: an agent takes a new boot id whenever its counters start from zero"
)]
pub struct BootRetired {
    pub node: String,
    pub boot_id: String,
    pub current: String,
}

/// Everything agents reported, and the SLO evaluators.
#[derive(Default)]
pub struct Reports {
    nodes: HashMap<String, NodeState>,
    slos: BTreeMap<String, SloEntry>,
    /// SLO ids by the probe they watch.
    by_probe: HashMap<ProbeRef, Vec<String>>,
}

impl Reports {
    /// The possible CPUs `node`'s agent said its node has, for planning
    /// that node's budget; `None` before its Hello, or from an agent too
    /// old to say (it sends 0).
    pub fn possible_cpus(&self, node: &str) -> Option<u32> {
        self.nodes
            .get(node)
            .map(|n| n.info.possible_cpus)
            .filter(|&c| c > 0)
    }

    /// An agent said hello. A boot id other than the node's last starts the
    /// node afresh; one the node already replaced is refused.
    pub fn hello(&mut self, now: SystemTime, info: AgentInfo) -> Result<(), BootRetired> {
        match self.nodes.get_mut(&info.node) {
            Some(n) if n.info.boot_id == info.boot_id => {
                n.streams += 1;
                n.info = info;
            }
            Some(n) if n.retired_boots.contains(&info.boot_id) => {
                return Err(BootRetired {
                    node: info.node,
                    boot_id: info.boot_id,
                    current: n.info.boot_id.clone(),
                });
            }
            found => {
                let (streams, retired_boots, implausible, paced_ms) = match found {
                    Some(n) => {
                        let mut retired = std::mem::take(&mut n.retired_boots);
                        if retired.len() >= MAX_RETIRED_PER_NODE {
                            retired.remove(0);
                        }
                        retired.push(n.info.boot_id.clone());
                        (n.streams + 1, retired, n.implausible.take(), n.paced_ms)
                    }
                    None => (1, Vec::new(), None, 0),
                };
                self.nodes.insert(
                    info.node.clone(),
                    NodeState {
                        info,
                        seq: 0,
                        from_start: false,
                        retired_boots,
                        unix_ms: 0,
                        seen: now,
                        reported: false,
                        streams,
                        probes: HashMap::new(),
                        implausible,
                        paced_ms,
                    },
                );
            }
        }
        Ok(())
    }

    /// Whether `node` said hello and is not forgotten yet.
    pub fn knows(&self, node: &str) -> bool {
        self.nodes.contains_key(node)
    }

    /// A stream of `node` ended.
    pub fn bye(&mut self, node: &str) {
        if let Some(n) = self.nodes.get_mut(node) {
            n.streams = n.streams.saturating_sub(1);
        }
    }

    /// Streams open.
    pub fn connected(&self) -> usize {
        self.nodes.values().map(|n| n.streams as usize).sum()
    }

    /// The configuration version `node` last reported running.
    pub fn config_version(&self, node: &str) -> Option<&str> {
        self.nodes.get(node).map(|n| n.info.config_version.as_str())
    }

    /// Counts a report of `node` at `now`.
    pub fn ingest(&mut self, now: SystemTime, node: &str, sample: &Sample) -> Outcome {
        let Some(state) = self.nodes.get_mut(node) else {
            return Outcome::UnknownNode;
        };
        let current = state.info.boot_id == sample.boot_id;
        if current && sample.seq <= state.seq {
            return Outcome::Stale;
        }
        if self
            .slos
            .values()
            .any(|e| e.evaluator.is_replay(node, &sample.boot_id, sample.seq))
        {
            return Outcome::Replayed;
        }
        let ceiling = ceiling(state.info.possible_cpus);
        match paced(now, state, current, sample, ceiling) {
            Ok(paced_ms) => state.paced_ms = paced_ms,
            Err(why) => {
                state.implausible = Some((now, why));
                return Outcome::Implausible;
            }
        }
        if current && state.seq == 0 {
            state.from_start = sample.seq == 1;
        }
        let vouched = current && state.from_start;
        // Per probe, this interval's increments, for SLO latency.
        let mut increments: HashMap<&ProbeRef, Increments> = HashMap::new();
        if current {
            let first = state.seq == 0;
            let seconds = (!first && sample.unix_ms > state.unix_ms)
                .then(|| (sample.unix_ms - state.unix_ms) as f64 / 1000.0);
            let mut probes = HashMap::with_capacity(sample.probes.len());
            for p in &sample.probes {
                let previous = if first {
                    None
                } else {
                    state.probes.remove(&p.id)
                };
                // What the probe's SLOs name (at most 8 series each),
                // looked up by key for each series reported.
                let wanted: HashSet<&str> = self
                    .by_probe
                    .get(&p.id)
                    .into_iter()
                    .flatten()
                    .filter_map(|id| self.slos.get(id))
                    .flat_map(|e| e.def.series.iter().map(String::as_str))
                    .collect();
                let now = Cumulative::of(p, &wanted);
                let (interval, inc) = increment(previous.as_ref(), p, &now, sample.seq, seconds);
                // Kept until the next report, on every node: packed.
                let recent = inc
                    .as_ref()
                    .map(|i| Packed::new(&i.all))
                    .unwrap_or_default();
                if let Some(inc) = inc {
                    increments.insert(&p.id, inc);
                }
                probes.insert(
                    p.id.clone(),
                    ProbeNow {
                        counters: p.counters,
                        interval,
                        ring_bytes: p.ring_bytes,
                        ring_high_water: p.ring_high_water,
                        all: Packed::new(&now.all),
                        named: now.named,
                        recent,
                        load_errors: p.load_errors.clone(),
                    },
                );
            }
            state.probes = probes;
            state.seq = sample.seq;
            state.unix_ms = sample.unix_ms;
            state.seen = now;
            state.reported = true;
            state.info.config_version.clone_from(&sample.config_version);
        }

        let now_ms = millis(now);
        let mut baseline = false;
        let mut refused = None;
        for p in &sample.probes {
            let Some(ids) = self.by_probe.get(&p.id) else {
                continue;
            };
            for id in ids {
                let Some(entry) = self.slos.get_mut(id) else {
                    continue;
                };
                let exact = p.thresholds.iter().find(|t| t.slo == *id);
                let report = core_slo::Report {
                    node: node.to_owned(),
                    boot_id: sample.boot_id.clone(),
                    seq: sample.seq,
                    threshold_id: exact.map_or(NO_THRESHOLD, |t| t.threshold_id),
                    good: exact.map_or(0, |t| t.good),
                    total: exact.map_or(0, |t| t.total),
                    loss: p.counters.unwrap_or_default(),
                    ceiling: Some(ceiling),
                };
                let ingested = if vouched {
                    entry.evaluator.ingest_from_start(now, &report)
                } else {
                    entry.evaluator.ingest(now, &report)
                };
                match ingested {
                    core_slo::Ingest::Stale | core_slo::Ingest::Replayed => continue,
                    core_slo::Ingest::Implausible => {
                        refused = Some(format!(
                            "probe {}: SLO {id} refused counts beyond {ceiling} events a second \
                             (its {} possible CPUs at {MAX_EVENTS_PER_CPU_SECOND} each) and {} s \
                             of burst",
                            p.id.probe,
                            self.nodes.get(node).map_or(0, |n| n.info.possible_cpus),
                            core_slo::PLAUSIBLE_BURST.as_secs(),
                        ));
                        continue;
                    }
                    // A new baseline to persist, but no increments.
                    core_slo::Ingest::Baseline => {
                        baseline = true;
                        entry.version += 1;
                        continue;
                    }
                    _ => {}
                }
                entry.version += 1;
                let Some(inc) = increments.get(&p.id) else {
                    continue;
                };
                if entry.def.series.is_empty() {
                    if !inc.all.buckets.is_empty() {
                        entry.latency.add(now_ms, &inc.all);
                    }
                } else {
                    for h in inc.covered_by(&entry.def.series) {
                        entry.latency.add(now_ms, h);
                    }
                }
            }
        }
        if let Some(why) = refused {
            if let Some(n) = self.nodes.get_mut(node) {
                n.implausible = Some((now, why));
            }
            Outcome::Implausible
        } else if baseline {
            Outcome::Baseline
        } else if current {
            Outcome::Ingested
        } else {
            Outcome::OtherBoot
        }
    }

    /// Forgets nodes without a stream that have been silent for
    /// [`NODE_TTL`].
    pub fn prune(&mut self, now: SystemTime) {
        self.nodes.retain(|_, n| {
            n.streams > 0 || now.duration_since(n.seen).unwrap_or_default() < NODE_TTL
        });
    }

    /// Makes the evaluators match `defs` (the valid SLOs): new ones start
    /// empty, changed specs and thresholds are applied, gone ones are
    /// dropped. Returns the ids dropped.
    pub fn sync_slos(&mut self, now: SystemTime, defs: Vec<SloDef>) -> Vec<String> {
        let mut wanted: BTreeMap<String, SloDef> =
            defs.into_iter().map(|d| (d.id.clone(), d)).collect();
        let gone: Vec<String> = self
            .slos
            .keys()
            .filter(|id| !wanted.contains_key(*id))
            .cloned()
            .collect();
        for id in &gone {
            self.slos.remove(id);
        }
        for (id, def) in std::mem::take(&mut wanted) {
            match self.slos.get_mut(&id) {
                Some(entry) => {
                    if entry.def == def {
                        continue;
                    }
                    if entry.def.spec != def.spec {
                        if entry.evaluator.set_spec(def.spec.clone(), now).is_err() {
                            self.slos.remove(&id);
                            continue;
                        }
                        if entry.def.spec.window != def.spec.window {
                            entry.latency = LatencyRing::new(def.spec.window);
                        }
                    }
                    if entry.evaluator.threshold_id() != def.threshold_id {
                        entry.evaluator.reset_counting(now, def.threshold_id);
                        entry.latency = LatencyRing::new(def.spec.window);
                    }
                    entry.def = def;
                    entry.version += 1;
                }
                None => {
                    let Ok(evaluator) = SloEvaluator::new(def.spec.clone(), def.threshold_id)
                    else {
                        continue;
                    };
                    self.slos.insert(
                        id,
                        SloEntry {
                            latency: LatencyRing::new(def.spec.window),
                            def,
                            evaluator,
                            version: 0,
                        },
                    );
                }
            }
        }
        self.by_probe.clear();
        for (id, entry) in &self.slos {
            self.by_probe
                .entry(entry.def.probe.clone())
                .or_default()
                .push(id.clone());
        }
        gone
    }

    /// Continues an SLO from what was persisted. A changed threshold then
    /// restarts its counting at the next [`Reports::sync_slos`].
    pub fn restore_slo(&mut self, def: SloDef, persisted: Persisted) -> Result<(), SloError> {
        let evaluator = SloEvaluator::restore(def.spec.clone(), persisted.evaluator)?;
        let mut latency = LatencyRing::new(def.spec.window);
        if latency.slot_ms == persisted.latency_slot_ms {
            latency.slots = persisted
                .latency
                .iter()
                .map(|(slot, h)| (*slot, Dense::from_histogram(h)))
                .collect();
        }
        let id = def.id.clone();
        self.by_probe
            .entry(def.probe.clone())
            .or_default()
            .push(id.clone());
        self.slos.insert(
            id,
            SloEntry {
                def,
                evaluator,
                latency,
                version: 0,
            },
        );
        Ok(())
    }

    /// Drops every SLO evaluator (this replica stopped leading; the next
    /// leader continues from the persisted state).
    pub fn clear_slos(&mut self) {
        self.slos.clear();
        self.by_probe.clear();
    }

    /// The ids and change counters of the SLO evaluators.
    pub fn slo_versions(&self) -> Vec<(String, u64)> {
        self.slos
            .iter()
            .map(|(id, e)| (id.clone(), e.version))
            .collect()
    }

    /// What to persist of an SLO.
    pub fn persisted(&self, id: &str) -> Option<Persisted> {
        let e = self.slos.get(id)?;
        Some(Persisted {
            slo: id.to_owned(),
            evaluator: e.evaluator.snapshot(),
            latency_slot_ms: e.latency.slot_ms,
            latency: e
                .latency
                .slots
                .iter()
                .map(|(slot, d)| (*slot, d.to_histogram()))
                .collect(),
            saved_ms: None,
        })
    }

    /// An SLO's figures at `now`, if it is evaluated.
    pub fn evaluate(&self, id: &str, now: SystemTime) -> Option<core_slo::SloStatus> {
        let e = self.slos.get(id)?;
        let latency = e.latency.merged(millis(now));
        Some(e.evaluator.evaluate(now, latency.as_ref()))
    }
}

/// A probe's histograms as the operator keeps them between reports.
struct Cumulative {
    all: Sparse,
    named: HashMap<String, Sparse>,
}

#[cfg(test)]
thread_local! {
    /// Work done matching series names, for tests that bound it: one a
    /// key looked up or a name compared.
    static SERIES_LOOKUPS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Counts `n` series lookups (tests only).
#[inline]
fn looked_up(n: u64) {
    #[cfg(test)]
    SERIES_LOOKUPS.with(|c| c.set(c.get() + n));
    #[cfg(not(test))]
    let _ = n;
}

impl Cumulative {
    /// All of `p`'s series summed, and apart the series `wanted` (the
    /// `spec.series` of the probe's SLOs) covers: each series is looked up
    /// by its name and its family ([`core_slo::series_family`]), so this
    /// costs O(series), however many names the SLOs give. A series
    /// reported twice is kept apart once, as first reported.
    fn of(p: &ProbeSample, wanted: &HashSet<&str>) -> Self {
        let mut named = HashMap::new();
        if !wanted.is_empty() {
            for (name, h) in &p.series {
                looked_up(2);
                let covered = wanted.contains(name.as_str())
                    || core_slo::series_family(name).is_some_and(|f| wanted.contains(f));
                if covered && !named.contains_key(name) {
                    named.insert(name.clone(), h.clone());
                }
            }
        }
        Self {
            all: Sparse::sum(p.series.iter().map(|(_, h)| h)),
            named,
        }
    }
}

/// One interval's histogram increments of a probe.
struct Increments {
    /// All series together.
    all: Sparse,
    /// Of the series an SLO names, by series name.
    named: HashMap<String, Sparse>,
    /// The series of `named` kept per process, by their family
    /// ([`core_slo::series_family`]): what an SLO naming the family covers.
    families: HashMap<String, Vec<String>>,
}

impl Increments {
    fn new(all: Sparse, named: HashMap<String, Sparse>) -> Self {
        let mut families: HashMap<String, Vec<String>> = HashMap::new();
        for series in named.keys() {
            looked_up(1);
            if let Some(family) = core_slo::series_family(series) {
                families
                    .entry(family.to_owned())
                    .or_default()
                    .push(series.clone());
            }
        }
        Self {
            all,
            named,
            families,
        }
    }

    /// The increments of the series `names` (an SLO's `spec.series`)
    /// cover, each once, found by key: O(names + series found).
    fn covered_by<'a>(&'a self, names: &'a [String]) -> impl Iterator<Item = &'a Sparse> {
        let mut seen = HashSet::new();
        names
            .iter()
            .flat_map(|n| {
                looked_up(2);
                let own = self.named.contains_key(n).then_some(n);
                own.into_iter()
                    .chain(self.families.get(n).into_iter().flatten())
            })
            .filter(move |series| seen.insert(series.as_str()))
            .filter_map(|series| self.named.get(series))
    }
}

/// The interval's counters and histogram increments of probe `p`, whose
/// histograms are `now`, since `previous`, its last report.
fn increment(
    previous: Option<&ProbeNow>,
    p: &ProbeSample,
    now: &Cumulative,
    seq: u64,
    seconds: Option<f64>,
) -> (Option<Interval>, Option<Increments>) {
    let Some(counters) = p.counters else {
        return (None, None);
    };
    let whole = |seconds| {
        (
            Some(Interval { counters, seconds }),
            Some(Increments::new(now.all.clone(), now.named.clone())),
        )
    };
    match previous.and_then(|prev| prev.counters.map(|c| (prev, c))) {
        // Counters that went down belong to a reloaded probe: all it
        // counted is new.
        Some((_, before))
            if counters.observed < before.observed || counters.exported < before.exported =>
        {
            whole(seconds)
        }
        Some((prev, before)) => {
            // A series first named since the last report has no baseline
            // yet; it counts from the next one.
            let named = now
                .named
                .iter()
                .filter_map(|(s, h)| {
                    looked_up(1);
                    let d = h.delta_since(prev.named.get(s)?);
                    (!d.buckets.is_empty()).then(|| (s.clone(), d))
                })
                .collect();
            (
                Some(Interval {
                    counters: counters.delta_since(&before),
                    seconds,
                }),
                Some(Increments::new(prev.all.increment_to(&now.all), named)),
            )
        }
        // A boot's first report counts from zero; any other first sight
        // is only a baseline.
        None if seq == 1 => whole(None),
        None => (None, None),
    }
}

/// Unix milliseconds.
pub fn millis(t: SystemTime) -> u64 {
    millis_of(t.duration_since(UNIX_EPOCH).unwrap_or_default())
}

fn millis_of(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
