//! A ProbeSet's figures from the latest reports of its nodes: how many
//! report and are ready, the flow and drops of each path, ring use, the
//! last interval's p50 and p99, and the nodes with problems.

use std::time::{Duration, SystemTime};

use ringwarden_proto::v1;

use super::{Dense, Interval, MAX_LISTED_NODES, NodeState, ProbeRef, Reports};

/// What a ProbeSet's figures are computed from.
#[derive(Clone, Debug)]
pub struct ProbeSetQuery<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    /// The probes of the spec.
    pub probes: &'a [String],
    /// Those of `probes` the agents' configuration holds (a uprobe where
    /// uprobes are not enabled is left out); `None` before there is a
    /// configuration. A probe not handed never counts as running.
    pub handed: Option<&'a [String]>,
    /// The nodes its selector matches, sorted.
    pub desired: &'a [String],
    pub interval: Duration,
    pub max_drop_rate: f64,
    /// Whether nodes are expected to have reported by now (false for a
    /// while after this replica started serving).
    pub expect_reports: bool,
}

/// A node's problem, for status and queries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeProblem {
    pub node: String,
    pub reason: &'static str,
    pub message: String,
}

/// Problem reasons, in order of precedence.
pub mod problem {
    /// A probe failed to load (any cause but missing BTF).
    pub const LOAD_FAILED: &str = "LoadFailed";
    /// The kernel has no BTF, so no probe loads.
    pub const MISSING_BTF: &str = "MissingBTF";
    /// A probe lost more events than `maxDropRate` allows.
    pub const DROPPING: &str = "Dropping";
    /// The node reports, but not this probe running: the agent was not
    /// handed it, or has not loaded it yet.
    pub const NOT_RUNNING: &str = "ProbeNotRunning";
    /// No report within two report intervals.
    pub const NOT_REPORTING: &str = "NotReporting";
    /// A report counted more events than the node could have (its CPUs at
    /// the most one CPU can count), or more good than total: refused, and
    /// the node flagged for an hour.
    pub const IMPLAUSIBLE_COUNTS: &str = "ImplausibleCounts";
    /// Gravest first.
    pub const ORDER: [&str; 6] = [
        IMPLAUSIBLE_COUNTS,
        LOAD_FAILED,
        MISSING_BTF,
        NOT_RUNNING,
        DROPPING,
        NOT_REPORTING,
    ];
}

/// Events and losses of some probes over the last interval.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Flow {
    pub events_per_second: f64,
    pub observed: u64,
    pub sampled_out: u64,
    pub pairing_dropped: u64,
    pub exported: u64,
    pub ringbuf_dropped: u64,
}

impl Flow {
    fn add(&mut self, i: &Interval) {
        let c = &i.counters;
        if let Some(s) = i.seconds.filter(|s| *s > 0.0) {
            self.events_per_second += c.observed as f64 / s;
        }
        self.observed = self.observed.saturating_add(c.observed);
        self.sampled_out = self.sampled_out.saturating_add(c.sampled_out);
        self.pairing_dropped = self.pairing_dropped.saturating_add(c.pairing_dropped);
        self.exported = self.exported.saturating_add(c.exported);
        self.ringbuf_dropped = self.ringbuf_dropped.saturating_add(c.ringbuf_dropped);
    }

    fn merge(&mut self, o: &Flow) {
        self.events_per_second += o.events_per_second;
        self.observed = self.observed.saturating_add(o.observed);
        self.sampled_out = self.sampled_out.saturating_add(o.sampled_out);
        self.pairing_dropped = self.pairing_dropped.saturating_add(o.pairing_dropped);
        self.exported = self.exported.saturating_add(o.exported);
        self.ringbuf_dropped = self.ringbuf_dropped.saturating_add(o.ringbuf_dropped);
    }

    /// Exported events the ring buffers dropped.
    pub fn ringbuf_drop(&self) -> f64 {
        ratio(self.ringbuf_dropped, self.exported)
    }

    /// Observed events that could not be timed.
    pub fn pairing_drop(&self) -> f64 {
        ratio(self.pairing_dropped, self.observed)
    }

    /// Observed events sampling left out (deliberately).
    pub fn sampled_out(&self) -> f64 {
        ratio(self.sampled_out, self.observed)
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// One probe across the nodes reporting it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProbeFigures {
    pub name: String,
    pub flow: Flow,
    pub p50_ns: Option<u64>,
    pub p99_ns: Option<u64>,
    /// Selected nodes with no fresh count of this probe: silent, or not
    /// running it. An SLO on the probe is stale while any is listed.
    pub lacking: Lacking,
}

/// Nodes without fresh figures of a probe: how many, and the first
/// [`MAX_LISTED_NODES`] by name with why.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lacking {
    /// The ProbeSet selects no node at all: nothing is counted anywhere.
    pub none_selected: bool,
    pub nodes: usize,
    /// Whether any of them is silent (rather than reporting without the
    /// probe running).
    pub silent: bool,
    pub listed: Vec<(String, String)>,
}

impl Lacking {
    fn add(&mut self, node: &str, silent: bool, why: &str) {
        self.nodes += 1;
        self.silent |= silent;
        if self.listed.len() < MAX_LISTED_NODES {
            self.listed.push((node.to_owned(), why.to_owned()));
        }
    }

    /// `n1 (why); n2 (why); and 3 more`, for a condition message.
    pub fn describe(&self) -> String {
        let mut out: Vec<String> = self
            .listed
            .iter()
            .map(|(n, why)| format!("{n} ({why})"))
            .collect();
        if self.nodes > self.listed.len() {
            out.push(format!("and {} more", self.nodes - self.listed.len()));
        }
        out.join("; ")
    }
}

/// A ProbeSet across nodes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Figures {
    pub desired: usize,
    pub ready: usize,
    pub reporting: usize,
    pub flow: Flow,
    /// Ring-buffer bytes mapped, over reporting nodes.
    pub ring_bytes: u64,
    /// Most ring-buffer bytes seen waiting, over reporting nodes.
    pub ring_in_use: u64,
    pub p50_ns: Option<u64>,
    pub p99_ns: Option<u64>,
    /// The first [`MAX_LISTED_NODES`] nodes with a problem, by name.
    pub problems: Vec<NodeProblem>,
    /// All nodes with a problem.
    pub problem_nodes: usize,
    /// The gravest problem of any node (see [`problem`] for the order).
    pub worst: Option<&'static str>,
    pub probes: Vec<ProbeFigures>,
}

impl Reports {
    /// Nodes whose last report is more recent than `stale_after`.
    fn fresh<'a>(
        &'a self,
        node: &str,
        now: SystemTime,
        stale_after: Duration,
    ) -> Option<&'a NodeState> {
        self.nodes
            .get(node)
            .filter(|n| n.reported && now.duration_since(n.seen).unwrap_or_default() <= stale_after)
    }

    /// A ProbeSet's figures at `now`.
    pub fn figures(&self, now: SystemTime, q: &ProbeSetQuery<'_>) -> Figures {
        let mut b = FiguresBuilder::new(q);
        self.add_to_figures(now, &mut b, q.desired);
        b.finish()
    }

    /// Adds `nodes` (some of the query's `desired`) to `b`: a caller may
    /// add them a few at a time, letting reports in between.
    pub fn add_to_figures(&self, now: SystemTime, b: &mut FiguresBuilder, nodes: &[String]) {
        for node in nodes {
            let Some(state) = self.fresh(node, now, b.stale_after) else {
                if b.expect_reports {
                    let message = if self.nodes.get(node).is_some_and(|n| n.reported) {
                        "no report within two report intervals"
                    } else if self.nodes.contains_key(node) {
                        "the agent connected but has not reported"
                    } else {
                        "no agent has reported from this node"
                    };
                    b.f.problem(node, problem::NOT_REPORTING, message.into());
                    for (_, _, lacking) in &mut b.per_probe {
                        lacking.add(node, true, message);
                    }
                }
                continue;
            };
            b.f.reporting += 1;
            let mut ready = true;
            let mut node_problem: Option<(&'static str, String)> = state
                .implausible_at(now)
                .map(|why| (problem::IMPLAUSIBLE_COUNTS, why.to_owned()));
            if node_problem.is_some() {
                // Its reports are refused: an SLO misses what it counts.
                for (_, _, lacking) in &mut b.per_probe {
                    lacking.add(node, false, "its counts are refused as implausible");
                }
            }
            for (i, r) in b.refs.iter().enumerate() {
                let not_running =
                    |why: &str| (problem::NOT_RUNNING, format!("probe {}: {why}", r.probe));
                let Some(p) = state.probes.get(r).filter(|_| b.handed[i]) else {
                    // Not in the node's report, or not handed to any agent
                    // (a report of it is an older configuration's).
                    ready = false;
                    let why = if b.handed[i] {
                        "not in the agent's report: not loaded yet, or not handed to this node"
                    } else {
                        "not in the agents' configuration"
                    };
                    b.per_probe[i].2.add(node, false, why);
                    node_problem = Some(graver(node_problem, not_running(why)));
                    continue;
                };
                if let Some(e) = p.load_errors.first() {
                    ready = false;
                    let reason = if e.kind == v1::load_error::Kind::MissingBtf {
                        problem::MISSING_BTF
                    } else {
                        problem::LOAD_FAILED
                    };
                    b.per_probe[i].2.add(node, false, "failed to load");
                    node_problem = Some(graver(
                        node_problem,
                        (reason, format!("probe {}: {}", r.probe, e.message)),
                    ));
                    continue;
                }
                if p.counters.is_none() {
                    ready = false;
                    let why = "reported without counters: not running";
                    b.per_probe[i].2.add(node, false, why);
                    node_problem = Some(graver(node_problem, not_running(why)));
                    continue;
                }
                b.f.ring_bytes = b.f.ring_bytes.saturating_add(p.ring_bytes);
                b.f.ring_in_use = b.f.ring_in_use.saturating_add(p.ring_high_water);
                if let Some(interval) = &p.interval {
                    let (flow, dense, _) = &mut b.per_probe[i];
                    flow.add(interval);
                    dense.add_packed(&p.recent);
                    let mut mine = Flow::default();
                    mine.add(interval);
                    if node_problem.is_none()
                        && (mine.ringbuf_drop() > b.max_drop_rate
                            || mine.pairing_drop() > b.max_drop_rate)
                    {
                        let path = if mine.ringbuf_drop() > b.max_drop_rate {
                            "the ring buffer dropped"
                        } else {
                            "the start map lost"
                        };
                        node_problem = Some((
                            problem::DROPPING,
                            format!(
                                "probe {}: {path} more events than maxDropRate allows",
                                r.probe
                            ),
                        ));
                    }
                }
            }
            if ready {
                b.f.ready += 1;
            }
            // Every node not ready has a problem, so `Degraded` can never
            // be False while `ready` is short of `desired`.
            debug_assert!(ready || node_problem.is_some());
            if let Some((reason, message)) = node_problem {
                b.f.problem(node, reason, message);
            }
        }
    }
}

/// A ProbeSet's figures being summed over its nodes.
pub struct FiguresBuilder {
    refs: Vec<ProbeRef>,
    /// Whether each probe of `refs` is in the agents' configuration.
    handed: Vec<bool>,
    per_probe: Vec<(Flow, Dense, Lacking)>,
    f: Figures,
    stale_after: Duration,
    expect_reports: bool,
    max_drop_rate: f64,
}

impl FiguresBuilder {
    pub fn new(q: &ProbeSetQuery<'_>) -> Self {
        let refs: Vec<ProbeRef> = q
            .probes
            .iter()
            .map(|p| ProbeRef {
                namespace: q.namespace.to_owned(),
                probeset: q.name.to_owned(),
                probe: p.clone(),
            })
            .collect();
        let handed = q
            .probes
            .iter()
            .map(|p| q.handed.is_none_or(|h| h.contains(p)))
            .collect();
        let lacking = Lacking {
            none_selected: q.desired.is_empty() && q.expect_reports,
            ..Lacking::default()
        };
        Self {
            per_probe: vec![(Flow::default(), Dense::default(), lacking); refs.len()],
            handed,
            refs,
            f: Figures {
                desired: q.desired.len(),
                ..Figures::default()
            },
            // Two intervals and a little: one late report is not an outage.
            stale_after: q.interval * 2 + Duration::from_secs(1),
            expect_reports: q.expect_reports,
            max_drop_rate: q.max_drop_rate,
        }
    }

    pub fn finish(mut self) -> Figures {
        let mut all = Dense::default();
        for (r, (flow, dense, lacking)) in self.refs.iter().zip(self.per_probe) {
            self.f.flow.merge(&flow);
            all.merge(&dense);
            let (p50_ns, p99_ns) = percentiles(&dense);
            self.f.probes.push(ProbeFigures {
                name: r.probe.clone(),
                flow,
                p50_ns,
                p99_ns,
                lacking,
            });
        }
        (self.f.p50_ns, self.f.p99_ns) = percentiles(&all);
        self.f
    }
}

/// The graver of two node problems (see [`problem::ORDER`]); the first
/// on a tie.
fn graver(
    current: Option<(&'static str, String)>,
    new: (&'static str, String),
) -> (&'static str, String) {
    let rank = |r: &str| problem::ORDER.iter().position(|o| *o == r);
    match current {
        Some(c) if rank(c.0) <= rank(new.0) => c,
        _ => new,
    }
}

impl Figures {
    fn problem(&mut self, node: &str, reason: &'static str, message: String) {
        self.problem_nodes += 1;
        let rank = |r: &str| problem::ORDER.iter().position(|o| *o == r);
        if self.worst.is_none_or(|w| rank(reason) < rank(w)) {
            self.worst = Some(reason);
        }
        if self.problems.len() < MAX_LISTED_NODES {
            self.problems.push(NodeProblem {
                node: node.to_owned(),
                reason,
                message,
            });
        }
    }
}

fn percentiles(d: &Dense) -> (Option<u64>, Option<u64>) {
    if d.is_empty() {
        return (None, None);
    }
    let h = d.to_histogram();
    (h.percentile(0.5), h.percentile(0.99))
}
