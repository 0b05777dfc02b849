//! SLO evaluation: the SLI over a rolling window, the error budget left,
//! multi-window burn rates and a state, from the cumulative counters agents
//! report. Plain data in and out: no IO, no clock reads (callers pass `now`).
//! The operator and the standalone agent drive the same [`SloEvaluator`].
//!
//! # Counting
//!
//! A [`Report`] carries one stream's cumulative counters: the kernel's exact
//! `good`/`total` for the SLO's threshold and the probe's loss counters. A
//! stream is one run of one node's counters, named by node and boot id, and
//! its reports are numbered. Only increments are counted, so
//!
//! - a report numbered no higher than the stream's last (a duplicate, a
//!   retransmit, a late arrival) is ignored: a later report held its counts;
//! - a gap loses nothing: the next report carries what the missing ones did;
//! - a new boot id is a new stream, counted from zero, and late reports of
//!   the previous boot still add their own increments;
//! - a counter group going down without a new boot id was restarted: its new
//!   values are counted from zero, never as negative increments.
//!
//! A stream's first report counts in full: its counters began when the agent
//! started or the threshold was installed. Streams silent for longer than
//! the window are forgotten, so a node that speaks again after such a silence
//! is counted from zero too. The exact counters are kept before in-kernel
//! sampling, so the SLI needs no scaling.
//!
//! Increments land in the slot of the `now` they are ingested at; a `now`
//! earlier than one already seen is taken as that one (the slots' clock never
//! goes back, so no count lands outside the window).
//!
//! When the threshold changes the kernel counts anew, and so does the
//! evaluator: [`SloEvaluator::reset_counting`] empties the window, records
//! since when it counts, and from then on counts `good` and `total` only
//! from reports made against the new threshold.
//!
//! # Window storage
//!
//! The window is cut into 43 200 units (a minute for 30 days, two seconds
//! for one), and two rings of counts — never histograms — hold them:
//!
//! - [`WINDOW_SLOTS`] = 1 440 slots of 30 units each (30 min for 30 days)
//!   with good, total, observed and lost: 32 bytes a slot, 46 080 bytes;
//! - 360 burn slots of one unit each, enough for the longest burn window,
//!   with good and total: 16 bytes a slot, 5 760 bytes.
//!
//! That is about 51 KiB per SLO whatever its window, plus about 200 bytes
//! per stream (node and boot id). The SLI covers the current slot and the 1 439 before it: an
//! event leaves the window between `window − window/1440` and `window` after
//! it was counted, exactly `window` when counted at the start of a slot.
//!
//! # Burn rates
//!
//! Multi-window, multi-burn-rate alerting as in the Google SRE workbook: the
//! rates for a 30-day window, scaled with the window for any other (so each
//! pair keeps firing at the same fraction of budget spent).
//!
//! | pair | long window        | short window          | fires above | budget spent in the long window |
//! |------|--------------------|-----------------------|-------------|---------------------------------|
//! | fast | 1 h = window/720   | 5 min = window/8 640  | 14.4×       | 2 %                             |
//! | slow | 6 h = window/120   | 30 min = window/1 440 | 6×          | 5 %                             |
//!
//! A burn rate is the bad fraction over its window divided by the budgeted
//! one, `1 − target`. A pair fires when both of its rates are above its
//! factor; the short window lets an alert end soon after the burning does.
//! Below a day the short windows get shorter than usual report intervals.
//!
//! # State
//!
//! In order of precedence:
//!
//! 1. [`SloState::Unreliable`]: the drop rate over the window is above
//!    `maxDropRate`, so no other answer can be trusted;
//! 2. [`SloState::NoData`]: no counted event in the window;
//! 3. [`SloState::Breached`]: the SLI is below the target (budget exhausted;
//!    exactly at the target is met);
//! 4. [`SloState::AtRisk`]: a burn-rate pair fires;
//! 5. [`SloState::Met`].
//!
//! Every boundary is decided exactly, in integers, with the target and
//! `maxDropRate` taken to the nearest part per billion. Unreliable comes
//! before NoData so that a probe losing every event does not look idle.
//!
//! # Drop rate
//!
//! `lost / observed` over the window, where `lost` is the probe's
//! `pairing_dropped`: events that completed but could not be timed, so they
//! are missing from `good`, `total` and the histograms alike. Not losses:
//!
//! - `sampled_out`: sampling is deliberate, the exact counters see every
//!   event, and the kernel's 1-in-N sampling does not depend on latency, so a
//!   sampled histogram's percentiles estimate the full population's without
//!   scaling (only their spread grows as fewer events are kept);
//! - `ringbuf_dropped`: only the per-event export path loses those; the
//!   counters and histograms an SLO is judged on live in the kernel.
//!
//! The loss counters are the probe's, so for an SLO narrowed to some series
//! they stand in for the series' own.
//!
//! # Persistence
//!
//! [`SloEvaluator::snapshot`] is the whole state as serde data, and
//! [`SloEvaluator::restore`] continues from it exactly; saved after every
//! report interval, a restart loses at most that interval. As JSON a busy
//! 30-day window takes about 90 KB and each stream about 180 B: 275 KB with
//! 1 000 nodes, within a ConfigMap's 1 MiB up to about 4 500 nodes.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::accounting::Counters;
use crate::duration::{format_duration, serde_duration};
use crate::histogram::Histogram;

/// Slots the SLO window is cut into.
pub const WINDOW_SLOTS: usize = 1_440;
/// Units per window slot.
const UNITS_PER_SLOT: u64 = 30;
/// Units per window: the shortest burn window is five of them.
const UNITS_PER_WINDOW: u64 = WINDOW_SLOTS as u64 * UNITS_PER_SLOT;
/// Burn slots, one unit each: as many as the longest burn window holds.
const BURN_SLOTS: usize = SLOW.long as usize;

/// Shortest SLO window accepted.
pub const MIN_WINDOW: Duration = Duration::from_secs(60);

/// Streams (boot ids) kept per node. A crash-looping agent would otherwise
/// add one per restart; late reports only ever come from the last few.
pub const MAX_STREAMS_PER_NODE: usize = 4;

const SNAPSHOT_VERSION: u32 = 1;
const PPB: u64 = 1_000_000_000;

/// One pair of burn windows, in units, and its factor in tenths.
#[derive(Clone, Copy)]
struct BurnPolicy {
    long: u64,
    short: u64,
    tenths: u64,
}

const FAST: BurnPolicy = BurnPolicy {
    long: 60,
    short: 5,
    tenths: 144,
};
const SLOW: BurnPolicy = BurnPolicy {
    long: 360,
    short: 30,
    tenths: 60,
};

/// What an SLO promises.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SloSpec {
    /// Percentage of events that must be good, above 0 and below 100
    /// (`99.9` = 99.9 %), taken to the nearest part per billion.
    pub target: f64,
    /// The rolling window the SLI covers, at least [`MIN_WINDOW`].
    #[serde(with = "serde_duration")]
    pub window: Duration,
    /// Largest fraction of events that may be lost before the figures are
    /// not trusted, from 0 to 1 (`0.01` = 1 %).
    pub max_drop_rate: f64,
}

/// Why an [`SloSpec`] or an [`SloSnapshot`] was rejected.
#[derive(Clone, Debug, Error, PartialEq)]
pub enum SloError {
    /// A target outside `(0, 100)`, or one rounding to 0 or 100 ppb-wise.
    #[error("target {target} is not a percentage above 0 and below 100; use e.g. 99.9")]
    Target {
        /// The rejected target.
        target: f64,
    },
    /// A window shorter than [`MIN_WINDOW`].
    #[error(
        "window {} is shorter than the minimum of {}",
        format_duration(*window),
        format_duration(MIN_WINDOW)
    )]
    Window {
        /// The rejected window.
        window: Duration,
    },
    /// A maximum drop rate outside `[0, 1]`.
    #[error("maxDropRate {max_drop_rate} is not a fraction from 0 to 1; use e.g. 0.01 for 1 %")]
    MaxDropRate {
        /// The rejected rate.
        max_drop_rate: f64,
    },
    /// A snapshot that is not what [`SloEvaluator::snapshot`] writes.
    #[error("cannot restore SLO state: {0}")]
    Snapshot(#[from] SnapshotError),
}

/// What is wrong with a snapshot.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum SnapshotError {
    /// Written by another version of the format.
    #[error(
        "snapshot version {found} is not supported; this build reads version {SNAPSHOT_VERSION}"
    )]
    Version {
        /// The version found.
        found: u32,
    },
    /// Counting began after the latest time the state saw.
    #[error("counting began after the latest report")]
    CountingSince,
    /// A slot's age is beyond its ring, or ages are not strictly increasing.
    #[error("{ring} slot {age} is out of range or out of order")]
    SlotOrder {
        /// `window` or `burn`.
        ring: &'static str,
        /// The offending age.
        age: u32,
    },
    /// A slot with more good than total events, or more lost than observed.
    #[error("{ring} slot {age} counts more good than total or more lost than observed events")]
    SlotCounts {
        /// `window` or `burn`.
        ring: &'static str,
        /// The offending age.
        age: u32,
    },
    /// A node with no streams, too many, or one boot id twice.
    #[error("node {node:?} has an empty, oversized or repeated list of streams")]
    Streams {
        /// The node.
        node: String,
    },
    /// A stream whose baseline counts are inconsistent or from the future.
    #[error(
        "stream {boot_id:?} of node {node:?} counts more good than total or more lost than observed events, or was seen after the latest report"
    )]
    Stream {
        /// The node.
        node: String,
        /// The stream's boot id.
        boot_id: String,
    },
}

/// One stream's cumulative counters for one SLO, as an agent reports them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The reporting node.
    pub node: String,
    /// Names one run of the node's counters: it changes whenever they restart
    /// from zero (agent restart, node reboot).
    pub boot_id: String,
    /// Increases with every report of a boot; a report numbered no higher
    /// than one already seen is ignored.
    pub seq: u64,
    /// The threshold the kernel counted `good` and `total` against, numbered
    /// as the operator pleases (e.g. the SLO generation that set it). Only
    /// reports against the evaluator's threshold count toward the SLI.
    pub threshold_id: u64,
    /// Events meeting the indicator, since the threshold was installed.
    pub good: u64,
    /// Events counted against the indicator, since the threshold was installed.
    pub total: u64,
    /// The probe's loss-accounting counters, since load.
    pub loss: Counters,
}

/// Event counts: a report's increments, a slot, or the whole window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    /// Events meeting the indicator.
    pub good: u64,
    /// Events counted against the indicator; `good <= total`.
    pub total: u64,
    /// Completed events the probe saw.
    pub observed: u64,
    /// Of `observed`, those that could not be timed (`pairing_dropped`).
    pub lost: u64,
}

/// What [`SloEvaluator::ingest`] made of a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ingest {
    /// The increments since the stream's previous report were counted.
    Counted(Counts),
    /// The first report of a stream (a node not seen yet, or a new boot id),
    /// counted from zero.
    NewStream(Counts),
    /// Some counters went down without a new boot id; they were taken as
    /// restarted and counted from zero. Worth a warning: agents should
    /// change the boot id when their counters restart.
    Reset(Counts),
    /// Numbered no higher than the stream's last report: nothing counted.
    Stale,
}

impl Ingest {
    /// What was added to the window.
    pub fn added(&self) -> Counts {
        match *self {
            Self::Counted(c) | Self::NewStream(c) | Self::Reset(c) => c,
            Self::Stale => Counts::default(),
        }
    }
}

/// How an SLO stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SloState {
    /// Within target and no burn-rate alert firing.
    Met,
    /// Within target, but burning the budget fast enough to alert.
    AtRisk,
    /// Below target: the budget is spent.
    Breached,
    /// More events were lost than `maxDropRate` allows; nothing else is trusted.
    Unreliable,
    /// No event counted in the window.
    NoData,
}

impl SloState {
    /// The name the status shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Met => "Met",
            Self::AtRisk => "AtRisk",
            Self::Breached => "Breached",
            Self::Unreliable => "Unreliable",
            Self::NoData => "NoData",
        }
    }
}

impl fmt::Display for SloState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One pair of burn-rate windows and whether it fires.
#[derive(Clone, Debug, PartialEq)]
pub struct Burn {
    /// The long window (1 h for a 30-day SLO window, or 6 h).
    pub long_window: Duration,
    /// The short window (5 min for a 30-day SLO window, or 30 min).
    pub short_window: Duration,
    /// The pair fires when both rates are above this (14.4 or 6).
    pub factor: f64,
    /// Burn rate over the long window; `None` without events.
    pub long_rate: Option<f64>,
    /// Burn rate over the short window; `None` without events.
    pub short_rate: Option<f64>,
    /// Both rates are above `factor`.
    pub firing: bool,
}

/// An SLO's figures at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct SloStatus {
    /// See the module docs for the precedence.
    pub state: SloState,
    /// Counts over the window.
    pub counts: Counts,
    /// `good / total` over the window; `None` without events.
    pub sli: Option<f64>,
    /// Fraction of the window's allowed bad events not yet spent: 1 with no
    /// bad event, 0 exactly at the target, negative past it.
    pub error_budget_remaining: Option<f64>,
    /// `lost / observed` over the window; `None` when nothing was observed.
    pub drop_rate: Option<f64>,
    /// 1 h / 5 min at 14.4× for a 30-day window.
    pub fast_burn: Burn,
    /// 6 h / 30 min at 6× for a 30-day window.
    pub slow_burn: Burn,
    /// The latency at the target percentile of the histogram passed to
    /// [`SloEvaluator::evaluate`], if any.
    pub observed_latency_ns: Option<u64>,
    /// When exact counting began: the first report, or the last reset.
    pub counting_since: Option<SystemTime>,
}

/// The latency at `target` percent of `histogram`: 99.9 gives the p99.9.
///
/// A uniformly sampled histogram gives the same answer as the full one up to
/// the sample's own spread: percentiles, unlike counts, need no scaling.
/// `None` when the histogram is empty or the target is outside `[0, 100]`.
pub fn latency_at_target(histogram: &Histogram, target: f64) -> Option<u64> {
    histogram.percentile(target / 100.0)
}

/// The validated, integer form of an [`SloSpec`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Objective {
    target_ppb: u64,
    max_drop_ppb: u64,
    window_ms: u64,
}

impl SloSpec {
    /// Checks the ranges [`SloEvaluator::new`] requires.
    pub fn validate(&self) -> Result<(), SloError> {
        self.objective().map(drop)
    }

    fn objective(&self) -> Result<Objective, SloError> {
        let target_ppb = (self.target * (PPB / 100) as f64).round();
        if !(self.target > 0.0
            && self.target < 100.0
            && target_ppb >= 1.0
            && target_ppb < PPB as f64)
        {
            return Err(SloError::Target {
                target: self.target,
            });
        }
        if self.window < MIN_WINDOW {
            return Err(SloError::Window {
                window: self.window,
            });
        }
        if !(0.0..=1.0).contains(&self.max_drop_rate) {
            return Err(SloError::MaxDropRate {
                max_drop_rate: self.max_drop_rate,
            });
        }
        Ok(Objective {
            target_ppb: target_ppb as u64,
            max_drop_ppb: (self.max_drop_rate * PPB as f64).round() as u64,
            window_ms: u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX),
        })
    }
}

/// A slot's counts.
trait Tally: Copy + Default + PartialEq {
    fn add(&mut self, other: Self);
}

impl Tally for Counts {
    // Saturating: a pinned counter is visibly wrong, a wrapped one is not.
    fn add(&mut self, other: Self) {
        self.good = self.good.saturating_add(other.good);
        self.total = self.total.saturating_add(other.total);
        self.observed = self.observed.saturating_add(other.observed);
        self.lost = self.lost.saturating_add(other.lost);
    }
}

/// A burn slot: the exact counters only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Exact {
    good: u64,
    total: u64,
}

impl Tally for Exact {
    fn add(&mut self, other: Self) {
        self.good = self.good.saturating_add(other.good);
        self.total = self.total.saturating_add(other.total);
    }
}

/// Slots indexed by absolute slot number modulo their count. The newest
/// (`head`) is kept by the caller; every slot holds one of the last
/// `len` slot numbers up to it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Ring<T> {
    slots: Vec<T>,
}

impl<T: Tally> Ring<T> {
    fn new(len: usize) -> Self {
        Self {
            slots: vec![T::default(); len],
        }
    }

    fn len(&self) -> u64 {
        self.slots.len() as u64
    }

    fn slot(&mut self, i: u64) -> &mut T {
        let len = self.len();
        &mut self.slots[(i % len) as usize]
    }

    /// Moves the newest slot from `head` to `to`, clearing the slots that
    /// come into use: they held counts from a whole ring ago.
    fn advance(&mut self, head: u64, to: u64) {
        let from = head
            .saturating_add(1)
            .max(to.saturating_add(1).saturating_sub(self.len()));
        for i in from..=to {
            *self.slot(i) = T::default();
        }
    }

    /// Sum of the `k` slots ending at `at`, of those held (`head <= at`).
    fn sum(&self, head: u64, at: u64, k: u64) -> T {
        let oldest = at
            .saturating_add(1)
            .saturating_sub(k)
            .max(head.saturating_add(1).saturating_sub(self.len()));
        let mut total = T::default();
        for i in oldest..=head {
            total.add(self.slots[(i % self.len()) as usize]);
        }
        total
    }

    fn clear(&mut self) {
        self.slots.fill(T::default());
    }

    /// Non-empty slots as `(age, counts)`, newest (age 0) first.
    fn sparse(&self, head: u64) -> Vec<(u32, T)> {
        (0..self.len().min(head.saturating_add(1)))
            .filter_map(|age| {
                let t = self.slots[((head - age) % self.len()) as usize];
                (t != T::default()).then_some((age as u32, t))
            })
            .collect()
    }

    /// Refills from [`Ring::sparse`] output.
    fn fill(
        &mut self,
        ring: &'static str,
        head: u64,
        sparse: impl IntoIterator<Item = (u32, T)>,
        valid: impl Fn(&T) -> bool,
    ) -> Result<(), SnapshotError> {
        let mut previous = None;
        for (age, t) in sparse {
            let age64 = u64::from(age);
            if previous.is_some_and(|p| age <= p) || age64 >= self.len() || age64 > head {
                return Err(SnapshotError::SlotOrder { ring, age });
            }
            if !valid(&t) {
                return Err(SnapshotError::SlotCounts { ring, age });
            }
            *self.slot(head - age64) = t;
            previous = Some(age);
        }
        Ok(())
    }
}

/// Where a stream's counters stood at its last counted report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Stream {
    boot_id: String,
    seq: u64,
    last_seen_ms: u64,
    threshold_id: u64,
    good: u64,
    total: u64,
    observed: u64,
    lost: u64,
}

/// An [`SloEvaluator`]'s whole state, as serde data, for an operator to
/// persist (see the module docs for its size) and hand back to
/// [`SloEvaluator::restore`].
///
/// Slots are written sparsely, as `[age, counts…]` arrays of the non-empty
/// ones. The spec is not part of it: it comes from the SLO object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SloSnapshot {
    version: u32,
    window_ms: u64,
    threshold_id: u64,
    counting_since_ms: Option<u64>,
    latest_ms: u64,
    /// `(age, good, total, observed, lost)`.
    window: Vec<(u32, u64, u64, u64, u64)>,
    /// `(age, good, total)`.
    burn: Vec<(u32, u64, u64)>,
    streams: BTreeMap<String, Vec<Stream>>,
}

/// One SLO's rolling state: per-stream baselines and the slotted counts.
/// See the module docs for the semantics.
#[derive(Clone, Debug, PartialEq)]
pub struct SloEvaluator {
    spec: SloSpec,
    objective: Objective,
    threshold_id: u64,
    counting_since_ms: Option<u64>,
    /// Latest `now` seen: the clock the slots follow never goes back.
    latest_ms: u64,
    window: Ring<Counts>,
    burn: Ring<Exact>,
    streams: BTreeMap<String, Vec<Stream>>,
}

impl SloEvaluator {
    /// An evaluator with no data, counting reports against `threshold_id`.
    pub fn new(spec: SloSpec, threshold_id: u64) -> Result<Self, SloError> {
        Ok(Self {
            objective: spec.objective()?,
            spec,
            threshold_id,
            counting_since_ms: None,
            latest_ms: 0,
            window: Ring::new(WINDOW_SLOTS),
            burn: Ring::new(BURN_SLOTS),
            streams: BTreeMap::new(),
        })
    }

    /// The spec in force.
    pub fn spec(&self) -> &SloSpec {
        &self.spec
    }

    /// The threshold reports must have been counted against.
    pub fn threshold_id(&self) -> u64 {
        self.threshold_id
    }

    /// When exact counting began: the first report, or the last reset.
    pub fn counting_since(&self) -> Option<SystemTime> {
        self.counting_since_ms.map(time)
    }

    /// Applies a new spec. A new target or `maxDropRate` takes effect on
    /// the counts already held; a new window empties the slots and counts
    /// anew from `now` (stream baselines are kept, so nothing is counted twice).
    pub fn set_spec(&mut self, spec: SloSpec, now: SystemTime) -> Result<(), SloError> {
        let objective = spec.objective()?;
        let now_ms = self.advance(now);
        if objective.window_ms != self.objective.window_ms {
            self.clear_slots();
            self.counting_since_ms = self.counting_since_ms.map(|_| now_ms);
        }
        self.spec = spec;
        self.objective = objective;
        Ok(())
    }

    /// Starts counting anew at `now` for `threshold_id`, as when the SLO's
    /// threshold changes: the window empties, and from then on `good` and
    /// `total` count only from reports against `threshold_id`, from zero
    /// for a stream's first such report (the kernel restarts its counters
    /// with a new threshold).
    pub fn reset_counting(&mut self, now: SystemTime, threshold_id: u64) {
        let now_ms = self.advance(now);
        self.clear_slots();
        self.threshold_id = threshold_id;
        self.counting_since_ms = Some(now_ms);
    }

    /// Counts what `report` adds to its stream at `now`.
    pub fn ingest(&mut self, now: SystemTime, report: &Report) -> Ingest {
        let now_ms = self.advance(now);
        self.forget_idle(now_ms);
        let streams = self.streams.entry(report.node.clone()).or_default();
        let (stream, new) = match streams.iter().position(|s| s.boot_id == report.boot_id) {
            Some(i) if report.seq <= streams[i].seq => return Ingest::Stale,
            Some(i) => (&mut streams[i], false),
            None => {
                if streams.len() >= MAX_STREAMS_PER_NODE {
                    let idlest = (0..streams.len())
                        .min_by_key(|&i| streams[i].last_seen_ms)
                        .expect("the list is full, so not empty");
                    streams.remove(idlest);
                }
                streams.push(Stream {
                    boot_id: report.boot_id.clone(),
                    seq: 0,
                    last_seen_ms: now_ms,
                    threshold_id: report.threshold_id,
                    good: 0,
                    total: 0,
                    observed: 0,
                    lost: 0,
                });
                (streams.last_mut().expect("just pushed"), true)
            }
        };

        // The kernel should bump good before total and observed before
        // pairing_dropped; a read racing them then sees at most good > total
        // (or lost > observed), which clamping absorbs, the next report
        // making up the difference.
        let good = report.good.min(report.total);
        let observed = report.loss.observed;
        let lost = report.loss.pairing_dropped.min(observed);
        // Counters for another threshold than the stream's last began at zero.
        let exact_base = if stream.threshold_id == report.threshold_id {
            [stream.good, stream.total]
        } else {
            [0, 0]
        };
        let ([d_good, d_total], exact_reset) = increments(exact_base, [good, report.total]);
        let ([d_observed, d_lost], loss_reset) =
            increments([stream.observed, stream.lost], [observed, lost]);
        let counts_exact = report.threshold_id == self.threshold_id;
        // Per-interval clamps keep every sum of slots consistent, so the
        // SLI and the drop rate are fractions over any window.
        let added = Counts {
            good: if counts_exact { d_good.min(d_total) } else { 0 },
            total: if counts_exact { d_total } else { 0 },
            observed: d_observed,
            lost: d_lost.min(d_observed),
        };
        *stream = Stream {
            boot_id: report.boot_id.clone(),
            seq: report.seq,
            last_seen_ms: now_ms,
            threshold_id: report.threshold_id,
            good,
            total: report.total,
            observed,
            lost,
        };

        let unit = self.unit(now_ms);
        self.window.slot(unit / UNITS_PER_SLOT).add(added);
        self.burn.slot(unit).add(Exact {
            good: added.good,
            total: added.total,
        });
        self.counting_since_ms.get_or_insert(now_ms);
        if new {
            Ingest::NewStream(added)
        } else if exact_reset || loss_reset {
            Ingest::Reset(added)
        } else {
            Ingest::Counted(added)
        }
    }

    /// Forgets a node's streams, as when the node is deleted; whether it had any.
    ///
    /// Streams silent for longer than the window are forgotten anyway. Should
    /// such a stream speak again it is counted from zero, like a new one.
    pub fn forget_node(&mut self, node: &str) -> bool {
        self.streams.remove(node).is_some()
    }

    /// The figures at `now` (taken as the latest time seen if earlier), with
    /// the observed latency at the target percentile of `histogram`, whatever
    /// span the caller merged it over.
    pub fn evaluate(&self, now: SystemTime, histogram: Option<&Histogram>) -> SloStatus {
        let now_ms = millis(now).max(self.latest_ms);
        let (head, at) = (self.unit(self.latest_ms), self.unit(now_ms));
        let counts = self.window.sum(
            head / UNITS_PER_SLOT,
            at / UNITS_PER_SLOT,
            WINDOW_SLOTS as u64,
        );
        let fast_burn = self.burn_pair(FAST, head, at);
        let slow_burn = self.burn_pair(SLOW, head, at);
        let o = self.objective;
        let state = if wide(counts.lost) * wide(PPB) > wide(o.max_drop_ppb) * wide(counts.observed)
        {
            SloState::Unreliable
        } else if counts.total == 0 {
            SloState::NoData
        } else if wide(counts.good) * wide(PPB) < wide(o.target_ppb) * wide(counts.total) {
            SloState::Breached
        } else if fast_burn.firing || slow_burn.firing {
            SloState::AtRisk
        } else {
            SloState::Met
        };
        let window_rate = self.burn_rate(Exact {
            good: counts.good,
            total: counts.total,
        });
        SloStatus {
            state,
            counts,
            sli: (counts.total > 0).then(|| counts.good as f64 / counts.total as f64),
            error_budget_remaining: window_rate.map(|rate| 1.0 - rate),
            drop_rate: (counts.observed > 0).then(|| counts.lost as f64 / counts.observed as f64),
            fast_burn,
            slow_burn,
            observed_latency_ns: histogram.and_then(|h| latency_at_target(h, self.spec.target)),
            counting_since: self.counting_since(),
        }
    }

    /// The whole state, for [`SloEvaluator::restore`].
    pub fn snapshot(&self) -> SloSnapshot {
        let head = self.unit(self.latest_ms);
        SloSnapshot {
            version: SNAPSHOT_VERSION,
            window_ms: self.objective.window_ms,
            threshold_id: self.threshold_id,
            counting_since_ms: self.counting_since_ms,
            latest_ms: self.latest_ms,
            window: self
                .window
                .sparse(head / UNITS_PER_SLOT)
                .into_iter()
                .map(|(age, c)| (age, c.good, c.total, c.observed, c.lost))
                .collect(),
            burn: self
                .burn
                .sparse(head)
                .into_iter()
                .map(|(age, e)| (age, e.good, e.total))
                .collect(),
            streams: self.streams.clone(),
        }
    }

    /// Continues from `snapshot` under `spec`, answering exactly as the
    /// evaluator that wrote it would have.
    ///
    /// If the window changed meanwhile, the slots are dropped and counting
    /// starts anew from the snapshot's latest time, as
    /// [`SloEvaluator::set_spec`] would; stream baselines are kept either way.
    pub fn restore(spec: SloSpec, snapshot: SloSnapshot) -> Result<Self, SloError> {
        let SloSnapshot {
            version,
            window_ms,
            threshold_id,
            counting_since_ms,
            latest_ms,
            window,
            burn,
            streams,
        } = snapshot;
        if version != SNAPSHOT_VERSION {
            return Err(SnapshotError::Version { found: version }.into());
        }
        if counting_since_ms.is_some_and(|since| since > latest_ms) {
            return Err(SnapshotError::CountingSince.into());
        }
        for (node, list) in &streams {
            let repeated = list
                .iter()
                .enumerate()
                .any(|(i, s)| list[..i].iter().any(|t| t.boot_id == s.boot_id));
            if list.is_empty() || list.len() > MAX_STREAMS_PER_NODE || repeated {
                return Err(SnapshotError::Streams { node: node.clone() }.into());
            }
            if let Some(s) = list
                .iter()
                .find(|s| s.good > s.total || s.lost > s.observed || s.last_seen_ms > latest_ms)
            {
                return Err(SnapshotError::Stream {
                    node: node.clone(),
                    boot_id: s.boot_id.clone(),
                }
                .into());
            }
        }

        // Slot ages count from the head under the snapshot's own window.
        let head = unit(latest_ms, window_ms);
        let mut window_ring = Ring::new(WINDOW_SLOTS);
        window_ring.fill(
            "window",
            head / UNITS_PER_SLOT,
            window
                .into_iter()
                .map(|(age, good, total, observed, lost)| {
                    (
                        age,
                        Counts {
                            good,
                            total,
                            observed,
                            lost,
                        },
                    )
                }),
            |c| c.good <= c.total && c.lost <= c.observed,
        )?;
        let mut burn_ring = Ring::new(BURN_SLOTS);
        burn_ring.fill(
            "burn",
            head,
            burn.into_iter()
                .map(|(age, good, total)| (age, Exact { good, total })),
            |e| e.good <= e.total,
        )?;

        let mut evaluator = Self::new(spec, threshold_id)?;
        evaluator.latest_ms = latest_ms;
        evaluator.counting_since_ms = counting_since_ms;
        evaluator.streams = streams;
        if window_ms == evaluator.objective.window_ms {
            evaluator.window = window_ring;
            evaluator.burn = burn_ring;
        } else {
            evaluator.counting_since_ms = counting_since_ms.map(|_| latest_ms);
        }
        Ok(evaluator)
    }

    fn unit(&self, ms: u64) -> u64 {
        unit(ms, self.objective.window_ms)
    }

    /// Moves the clock to `now`, never back, clearing slots that come into
    /// use; returns the clock.
    fn advance(&mut self, now: SystemTime) -> u64 {
        let now_ms = millis(now).max(self.latest_ms);
        let (head, to) = (self.unit(self.latest_ms), self.unit(now_ms));
        self.window
            .advance(head / UNITS_PER_SLOT, to / UNITS_PER_SLOT);
        self.burn.advance(head, to);
        self.latest_ms = now_ms;
        now_ms
    }

    fn clear_slots(&mut self) {
        self.window.clear();
        self.burn.clear();
    }

    /// Drops streams silent for longer than the window: whatever they
    /// counted has left it, and their nodes may well be gone.
    fn forget_idle(&mut self, now_ms: u64) {
        let window_ms = self.objective.window_ms;
        self.streams.retain(|_, list| {
            list.retain(|s| now_ms.saturating_sub(s.last_seen_ms) <= window_ms);
            !list.is_empty()
        });
    }

    fn burn_pair(&self, policy: BurnPolicy, head: u64, at: u64) -> Burn {
        let long = self.burn.sum(head, at, policy.long);
        let short = self.burn.sum(head, at, policy.short);
        let firing =
            self.burns_above(long, policy.tenths) && self.burns_above(short, policy.tenths);
        Burn {
            long_window: self.span(policy.long),
            short_window: self.span(policy.short),
            factor: policy.tenths as f64 / 10.0,
            long_rate: self.burn_rate(long),
            short_rate: self.burn_rate(short),
            firing,
        }
    }

    /// Whether `e`'s bad fraction is above `tenths / 10` times the budget.
    fn burns_above(&self, e: Exact, tenths: u64) -> bool {
        let budget_ppb = PPB - self.objective.target_ppb;
        e.total > 0
            && wide(e.total - e.good) * wide(PPB) * 10
                > wide(tenths) * wide(budget_ppb) * wide(e.total)
    }

    /// `e`'s bad fraction over the budgeted one.
    fn burn_rate(&self, e: Exact) -> Option<f64> {
        let budget_ppb = (PPB - self.objective.target_ppb) as f64;
        (e.total > 0)
            .then(|| (e.total - e.good) as f64 * PPB as f64 / (budget_ppb * e.total as f64))
    }

    /// The duration of `units` units.
    fn span(&self, units: u64) -> Duration {
        let nanos = self.spec.window.as_nanos() * u128::from(units) / u128::from(UNITS_PER_WINDOW);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// The unit `ms` falls in: units are `window / 43 200` long, computed
/// exactly so that 43 200 of them make the window, divisible or not.
fn unit(ms: u64, window_ms: u64) -> u64 {
    let unit = wide(ms) * wide(UNITS_PER_WINDOW) / wide(window_ms.max(1));
    u64::try_from(unit).unwrap_or(u64::MAX)
}

/// Increments from `then` to `now` of counters that restart together: all
/// of `now` when any went down, and whether one did.
fn increments<const N: usize>(then: [u64; N], now: [u64; N]) -> ([u64; N], bool) {
    if now.iter().zip(&then).any(|(n, t)| n < t) {
        (now, true)
    } else {
        (std::array::from_fn(|i| now[i] - then[i]), false)
    }
}

fn wide(n: u64) -> u128 {
    u128::from(n)
}

/// Milliseconds since the Unix epoch; times before it count as the epoch.
fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn time(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::histogram::MAX_RELATIVE_ERROR;
    use proptest::prelude::*;

    /// A multiple of 30 minutes, so every window's slots start on it.
    const T0: u64 = 1_699_999_200;
    const MINUTE: Duration = Duration::from_secs(60);
    const HOUR: Duration = Duration::from_secs(3_600);
    const DAY: Duration = Duration::from_secs(86_400);
    const WEEK: Duration = Duration::from_secs(7 * 86_400);
    const MONTH: Duration = Duration::from_secs(30 * 86_400);

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(T0 + secs)
    }

    fn spec(target: f64, window: Duration) -> SloSpec {
        SloSpec {
            target,
            window,
            max_drop_rate: 0.01,
        }
    }

    fn evaluator(target: f64, window: Duration) -> SloEvaluator {
        SloEvaluator::new(spec(target, window), 1).unwrap()
    }

    fn close(actual: Option<f64>, expected: f64) -> bool {
        actual.is_some_and(|a| (a - expected).abs() <= 1e-9 * expected.abs().max(1.0))
    }

    fn counts(good: u64, total: u64, observed: u64, lost: u64) -> Counts {
        Counts {
            good,
            total,
            observed,
            lost,
        }
    }

    /// One node's counters, reported as its agent would.
    #[derive(Clone, Debug)]
    struct Agent(Report);

    impl Agent {
        fn new(node: &str) -> Self {
            Self(Report {
                node: node.to_owned(),
                boot_id: "boot-1".to_owned(),
                seq: 0,
                threshold_id: 1,
                good: 0,
                total: 0,
                loss: Counters::default(),
            })
        }

        /// Completed events: `good` and `bad` timed, `lost` not.
        fn add(&mut self, good: u64, bad: u64, lost: u64) {
            let r = &mut self.0;
            r.good += good;
            r.total += good + bad;
            r.loss.observed += good + bad + lost;
            r.loss.aggregated += good + bad;
            r.loss.pairing_dropped += lost;
        }

        fn next(&mut self) -> Report {
            self.0.seq += 1;
            self.0.clone()
        }

        fn events(&mut self, good: u64, bad: u64) -> Report {
            self.add(good, bad, 0);
            self.next()
        }

        fn lost(&mut self, lost: u64) -> Report {
            self.add(0, 0, lost);
            self.next()
        }

        /// A new run of the agent: new boot id, counters from zero.
        fn restart(&mut self, boot_id: &str) {
            self.0 = Report {
                boot_id: boot_id.to_owned(),
                seq: 0,
                good: 0,
                total: 0,
                loss: Counters::default(),
                ..self.0.clone()
            };
        }

        /// The kernel's counters restart for a new threshold.
        fn install_threshold(&mut self, threshold_id: u64) {
            self.0.threshold_id = threshold_id;
            self.0.good = 0;
            self.0.total = 0;
        }
    }

    #[test]
    fn invalid_specs_are_rejected_with_a_helpful_message() {
        let with_drop = |max_drop_rate| SloSpec {
            max_drop_rate,
            ..spec(99.9, DAY)
        };
        let cases = [
            (
                spec(0.0, DAY),
                "target 0 is not a percentage above 0 and below 100; use e.g. 99.9",
            ),
            (spec(100.0, DAY), "target 100 is not a percentage"),
            (spec(-1.0, DAY), "target -1 is not a percentage"),
            (spec(f64::NAN, DAY), "target NaN is not a percentage"),
            // Within half a part per billion of 100 %: no budget at all.
            (spec(99.99999999, DAY), "target 99.99999999 is not"),
            (spec(1e-8, DAY), "target 0.00000001 is not"),
            (
                spec(99.9, Duration::from_secs(59)),
                "window 59s is shorter than the minimum of 1m",
            ),
            (
                with_drop(1.5),
                "maxDropRate 1.5 is not a fraction from 0 to 1; use e.g. 0.01 for 1 %",
            ),
            (with_drop(-0.1), "maxDropRate -0.1 is not a fraction"),
            (with_drop(f64::NAN), "maxDropRate NaN is not a fraction"),
        ];
        for (spec, message) in cases {
            let error = SloEvaluator::new(spec.clone(), 1).unwrap_err().to_string();
            assert!(
                error.contains(message),
                "{spec:?}: {error:?} lacks {message:?}"
            );
        }
    }

    #[test]
    fn specs_at_the_edges_of_their_ranges_are_accepted() {
        let valid = [
            spec(1e-7, DAY),
            spec(99.9999999, DAY),
            spec(99.9, MIN_WINDOW),
            SloSpec {
                max_drop_rate: 0.0,
                ..spec(99.9, DAY)
            },
            SloSpec {
                max_drop_rate: 1.0,
                ..spec(99.9, DAY)
            },
        ];
        for spec in valid {
            assert!(SloEvaluator::new(spec.clone(), 1).is_ok(), "{spec:?}");
        }
    }

    #[test]
    fn burn_windows_scale_with_the_slo_window() {
        let s = |secs| Duration::from_secs(secs);
        let cases = [
            (MONTH, [HOUR, 5 * MINUTE, 6 * HOUR, 30 * MINUTE]),
            (WEEK, [s(840), s(70), s(5_040), s(420)]),
            (DAY, [2 * MINUTE, s(10), 12 * MINUTE, MINUTE]),
            (
                HOUR,
                [
                    s(5),
                    Duration::from_nanos(416_666_666),
                    s(30),
                    s(2) + Duration::from_millis(500),
                ],
            ),
        ];
        for (window, [fast_long, fast_short, slow_long, slow_short]) in cases {
            let status = evaluator(99.9, window).evaluate(at(0), None);
            let (fast, slow) = (&status.fast_burn, &status.slow_burn);
            let name = format_duration(window);
            assert_eq!(
                (fast.long_window, fast.short_window),
                (fast_long, fast_short),
                "{name}"
            );
            assert_eq!(
                (slow.long_window, slow.short_window),
                (slow_long, slow_short),
                "{name}"
            );
            assert_eq!((fast.factor, slow.factor), (14.4, 6.0), "{name}");
        }
    }

    #[test]
    fn a_new_evaluator_has_no_data() {
        let status = evaluator(99.9, MONTH).evaluate(at(0), None);
        assert_eq!(status.state, SloState::NoData);
        assert_eq!(status.counts, Counts::default());
        assert_eq!(
            (status.sli, status.error_budget_remaining, status.drop_rate),
            (None, None, None)
        );
        assert_eq!(
            (status.fast_burn.long_rate, status.slow_burn.short_rate),
            (None, None)
        );
        assert!(!status.fast_burn.firing && !status.slow_burn.firing);
        assert_eq!(status.counting_since, None);
    }

    #[test]
    fn sli_budget_and_burn_rates_match_hand_computed_values() {
        // Target 99.9 %: 10 bad events in 10 000 spend the whole budget.
        let cases = [
            // good, bad, SLI, budget remaining, burn rate, state
            (10_000, 0, 1.0, 1.0, 0.0, SloState::Met),
            (9_995, 5, 0.9995, 0.5, 0.5, SloState::Met),
            (9_990, 10, 0.999, 0.0, 1.0, SloState::Met),
            (9_989, 11, 0.9989, -0.1, 1.1, SloState::Breached),
            (9_970, 30, 0.997, -2.0, 3.0, SloState::Breached),
            (0, 10_000, 0.0, -999.0, 1_000.0, SloState::Breached),
        ];
        for (good, bad, sli, budget, burn, state) in cases {
            let mut slo = evaluator(99.9, MONTH);
            slo.ingest(at(0), &Agent::new("a").events(good, bad));
            let s = slo.evaluate(at(0), None);
            let case = format!("{good} good, {bad} bad");
            assert_eq!(s.state, state, "{case}");
            assert_eq!(s.counts, counts(good, good + bad, good + bad, 0), "{case}");
            assert!(close(s.sli, sli), "{case}: SLI {:?}", s.sli);
            assert!(
                close(s.error_budget_remaining, budget),
                "{case}: budget {:?}",
                s.error_budget_remaining
            );
            for rate in [
                s.fast_burn.long_rate,
                s.fast_burn.short_rate,
                s.slow_burn.long_rate,
                s.slow_burn.short_rate,
            ] {
                assert!(close(rate, burn), "{case}: burn rate {rate:?}");
            }
            assert_eq!(s.drop_rate, Some(0.0), "{case}");
        }
    }

    #[test]
    fn the_sli_exactly_at_target_is_met_and_one_bad_event_more_breaches() {
        let cases = [
            (99.9, 999_000, 1_000, SloState::Met),
            (99.9, 999_000, 1_001, SloState::Breached),
            (99.95, 19_990, 10, SloState::Met),
            (99.95, 19_989, 11, SloState::Breached),
            (99.0, 99, 1, SloState::Met),
            (99.0, 98, 1, SloState::Breached),
            (99.999, 99_999, 1, SloState::Met),
            (99.999, 99_998, 2, SloState::Breached),
        ];
        for (target, good, bad, state) in cases {
            // Judged a week later, when no burn window holds the events.
            let mut slo = evaluator(target, MONTH);
            let mut agent = Agent::new("a");
            slo.ingest(at(0), &agent.events(good, bad));
            let s = slo.evaluate(at(WEEK.as_secs()), None);
            assert_eq!(s.state, state, "{target}: {good} good, {bad} bad");
        }
    }

    /// Target 99 % over a day: a burn rate of 14.4 is 14.4 % bad events.
    /// Burn windows: fast 120 s / 10 s, slow 720 s / 60 s.
    fn burning(extra_bad_now: u64) -> SloStatus {
        let mut slo = evaluator(99.0, DAY);
        let mut agent = Agent::new("a");
        slo.ingest(at(0), &agent.events(100_000, 0)); // outside every burn window
        slo.ingest(at(900), &agent.events(312, 288)); // in the long windows only
        slo.ingest(at(970), &agent.events(1_400, 0)); // not in the fast short one
        slo.ingest(at(1_000), &agent.events(856, 144 + extra_bad_now));
        slo.evaluate(at(1_000), None)
    }

    #[test]
    fn burn_pairs_do_not_fire_exactly_at_their_threshold() {
        let s = burning(0);
        // Fast: 144/1000 and 432/3000 bad; slow: 432/3000 and 144/2400.
        assert!(close(s.fast_burn.short_rate, 14.4));
        assert!(close(s.fast_burn.long_rate, 14.4));
        assert!(close(s.slow_burn.short_rate, 6.0));
        assert!(close(s.slow_burn.long_rate, 14.4));
        assert!(!s.fast_burn.firing && !s.slow_burn.firing);
        assert_eq!(s.state, SloState::Met);
    }

    #[test]
    fn burn_pairs_fire_one_bad_event_above_their_threshold() {
        let s = burning(1);
        assert!(close(s.fast_burn.short_rate, 14_500.0 / 1_001.0));
        assert!(close(s.fast_burn.long_rate, 43_300.0 / 3_001.0));
        assert!(close(s.slow_burn.short_rate, 14_500.0 / 2_401.0));
        assert!(s.fast_burn.firing && s.slow_burn.firing);
        assert_eq!(s.state, SloState::AtRisk);
    }

    #[test]
    fn a_steady_burn_fires_the_pairs_it_exceeds() {
        let cases = [
            // bad per 1000 (burn rate ×10), fast firing, slow firing, state
            (60, false, false, SloState::Met),
            (61, false, true, SloState::AtRisk),
            (144, false, true, SloState::AtRisk),
            (145, true, true, SloState::AtRisk),
        ];
        for (bad, fast, slow, state) in cases {
            let mut slo = evaluator(99.0, DAY);
            let mut agent = Agent::new("a");
            slo.ingest(at(0), &agent.events(1_000_000, 0));
            slo.ingest(at(1_000), &agent.events(1_000 - bad, bad));
            let s = slo.evaluate(at(1_000), None);
            assert_eq!(
                (s.fast_burn.firing, s.slow_burn.firing, s.state),
                (fast, slow, state),
                "{bad} bad per 1000"
            );
        }
    }

    #[test]
    fn a_burst_seen_only_by_the_short_windows_fires_no_alert() {
        let mut slo = evaluator(99.0, DAY);
        let mut agent = Agent::new("a");
        slo.ingest(at(0), &agent.events(1_000_000, 0));
        slo.ingest(at(940), &agent.events(20_000, 0));
        slo.ingest(at(1_000), &agent.events(855, 145));
        let s = slo.evaluate(at(1_000), None);
        assert!(close(s.fast_burn.short_rate, 14.5) && close(s.slow_burn.short_rate, 14.5));
        assert!(close(s.fast_burn.long_rate, 14_500.0 / 21_000.0));
        assert!(!s.fast_burn.firing && !s.slow_burn.firing);
        assert_eq!(s.state, SloState::Met);
    }

    #[test]
    fn a_burn_that_has_stopped_fires_no_alert() {
        let mut slo = evaluator(99.0, DAY);
        let mut agent = Agent::new("a");
        slo.ingest(at(0), &agent.events(1_000_000, 0));
        slo.ingest(at(900), &agent.events(0, 500));
        let s = slo.evaluate(at(1_000), None);
        assert!(close(s.fast_burn.long_rate, 100.0));
        assert_eq!(
            (s.fast_burn.short_rate, s.slow_burn.short_rate),
            (None, None)
        );
        assert_eq!(s.state, SloState::Met);
    }

    #[test]
    fn drops_above_the_maximum_make_the_slo_unreliable_whatever_else_holds() {
        let cases = [
            // good, bad, lost, max drop rate, state, drop rate
            (940, 50, 10, 0.01, SloState::Breached, 0.01),
            (940, 50, 11, 0.01, SloState::Unreliable, 11.0 / 1_001.0),
            (990, 0, 10, 0.01, SloState::Met, 0.01),
            (990, 0, 11, 0.01, SloState::Unreliable, 11.0 / 1_001.0),
            (1_000, 0, 1, 0.0, SloState::Unreliable, 1.0 / 1_001.0),
            (1_000, 0, 0, 0.0, SloState::Met, 0.0),
            (0, 10, 1_000, 1.0, SloState::Breached, 1_000.0 / 1_010.0),
        ];
        for (good, bad, lost, max_drop_rate, state, drop_rate) in cases {
            let spec = SloSpec {
                max_drop_rate,
                ..spec(99.9, MONTH)
            };
            let mut slo = SloEvaluator::new(spec, 1).unwrap();
            let mut agent = Agent::new("a");
            agent.add(good, bad, lost);
            slo.ingest(at(0), &agent.next());
            let s = slo.evaluate(at(0), None);
            let case = format!("{good} good, {bad} bad, {lost} lost, max {max_drop_rate}");
            assert_eq!(s.state, state, "{case}");
            assert!(close(s.drop_rate, drop_rate), "{case}: {:?}", s.drop_rate);
        }
    }

    #[test]
    fn events_seen_but_all_lost_are_unreliable_rather_than_no_data() {
        let mut slo = evaluator(99.9, MONTH);
        slo.ingest(at(0), &Agent::new("a").lost(100));
        let s = slo.evaluate(at(0), None);
        assert_eq!(
            (s.state, s.counts.total, s.drop_rate),
            (SloState::Unreliable, 0, Some(1.0))
        );

        let mut tolerant = SloEvaluator::new(
            SloSpec {
                max_drop_rate: 1.0,
                ..spec(99.9, MONTH)
            },
            1,
        )
        .unwrap();
        tolerant.ingest(at(0), &Agent::new("a").lost(100));
        assert_eq!(tolerant.evaluate(at(0), None).state, SloState::NoData);
    }

    #[test]
    fn sampling_and_ring_buffer_drops_are_not_losses() {
        // 1-in-10 sampling of 10 000 events, and 90 % of the exported ones
        // lost in the ring buffer: the exact counters still saw all 10 000.
        let report = Report {
            good: 9_990,
            total: 10_000,
            loss: Counters {
                observed: 10_000,
                aggregated: 1_000,
                sampled_out: 9_000,
                exported: 1_000,
                delivered: 100,
                ringbuf_dropped: 900,
                ..Counters::default()
            },
            seq: 1,
            ..Agent::new("a").0
        };
        assert_eq!(report.loss.check_identities(), Ok(()));
        let mut slo = evaluator(99.9, MONTH);
        slo.ingest(at(0), &report);
        let s = slo.evaluate(at(0), None);
        assert_eq!(s.state, SloState::Met);
        assert_eq!(s.counts, counts(9_990, 10_000, 10_000, 0));
        assert!(close(s.sli, 0.999));
        assert_eq!(s.drop_rate, Some(0.0));
    }

    #[test]
    fn a_uniformly_sampled_histogram_gives_the_same_latency_at_target() {
        let (mut full, mut sampled) = (Histogram::new(), Histogram::new());
        for ns in 1..=100_000u64 {
            full.record(ns * 1_000);
            if ns % 10 == 0 {
                sampled.record(ns * 1_000);
            }
        }
        for target in [50.0, 90.0, 99.0, 99.9] {
            assert_eq!(
                latency_at_target(&sampled, target),
                latency_at_target(&full, target),
                "target {target}"
            );
        }
    }

    #[test]
    fn latency_at_target_is_the_target_percentile() {
        let mut h = Histogram::new();
        for ns in 1..=1_000 {
            h.record(ns);
        }
        let p999 = latency_at_target(&h, 99.9).unwrap();
        assert_eq!(Some(p999), h.percentile(0.999));
        assert!(
            p999.abs_diff(999) as f64 <= 999.0 * MAX_RELATIVE_ERROR,
            "{p999}"
        );
        assert!(latency_at_target(&h, 50.0).unwrap().abs_diff(500) <= 500 / 64);
        assert_eq!(latency_at_target(&h, 100.5), None);
        assert_eq!(latency_at_target(&Histogram::new(), 99.9), None);

        let mut slo = evaluator(99.9, MONTH);
        slo.ingest(at(0), &Agent::new("a").events(10, 0));
        assert_eq!(
            slo.evaluate(at(0), Some(&h)).observed_latency_ns,
            Some(p999)
        );
        assert_eq!(slo.evaluate(at(0), None).observed_latency_ns, None);
    }

    #[test]
    fn duplicates_and_retransmits_are_counted_once() {
        let mut slo = evaluator(99.9, MONTH);
        let mut agent = Agent::new("a");
        let (first, second) = (agent.events(90, 10), agent.events(45, 5));
        assert_eq!(
            slo.ingest(at(0), &first),
            Ingest::NewStream(counts(90, 100, 100, 0))
        );
        assert_eq!(slo.ingest(at(1), &first), Ingest::Stale);
        assert_eq!(
            slo.ingest(at(2), &second),
            Ingest::Counted(counts(45, 50, 50, 0))
        );
        assert_eq!(slo.ingest(at(3), &second), Ingest::Stale);
        assert_eq!(slo.ingest(at(4), &first), Ingest::Stale);
        assert_eq!(slo.evaluate(at(4), None).counts, counts(135, 150, 150, 0));
    }

    #[test]
    fn a_report_arriving_after_a_later_one_is_ignored() {
        let mut slo = evaluator(99.9, MONTH);
        let mut agent = Agent::new("a");
        let reports = [
            agent.events(10, 0),
            agent.events(20, 0),
            agent.events(30, 0),
        ];
        slo.ingest(at(0), &reports[0]);
        assert_eq!(
            slo.ingest(at(1), &reports[2]),
            Ingest::Counted(counts(50, 50, 50, 0))
        );
        assert_eq!(slo.ingest(at(2), &reports[1]), Ingest::Stale);
        assert_eq!(slo.evaluate(at(2), None).counts.total, 60);
    }

    #[test]
    fn a_gap_in_sequence_numbers_loses_nothing() {
        let mut slo = evaluator(99.9, MONTH);
        let mut agent = Agent::new("a");
        slo.ingest(at(0), &agent.events(10, 0));
        let _lost_in_transit = agent.events(20, 1);
        assert_eq!(
            slo.ingest(at(20), &agent.events(30, 2)),
            Ingest::Counted(counts(50, 53, 53, 0))
        );
        assert_eq!(slo.evaluate(at(20), None).counts.total, 63);
    }

    #[test]
    fn a_new_boot_id_is_counted_from_zero() {
        let mut slo = evaluator(99.9, MONTH);
        let mut agent = Agent::new("a");
        slo.ingest(at(0), &agent.events(100, 0));
        agent.restart("boot-2");
        assert_eq!(
            slo.ingest(at(10), &agent.events(29, 1)),
            Ingest::NewStream(counts(29, 30, 30, 0))
        );
        assert_eq!(slo.evaluate(at(10), None).counts, counts(129, 130, 130, 0));
    }

    #[test]
    fn a_late_report_of_the_previous_boot_adds_its_own_increments() {
        let mut slo = evaluator(99.9, MONTH);
        let mut old = Agent::new("a");
        slo.ingest(at(0), &old.events(100, 0));
        let late = old.events(20, 0);
        let mut new = old.clone();
        new.restart("boot-2");
        slo.ingest(at(10), &new.events(30, 0));
        assert_eq!(
            slo.ingest(at(11), &late),
            Ingest::Counted(counts(20, 20, 20, 0))
        );
        assert_eq!(slo.evaluate(at(11), None).counts.total, 150);
    }

    #[test]
    fn counters_going_down_without_a_new_boot_id_are_a_reset() {
        let mut slo = evaluator(99.9, MONTH);
        let mut agent = Agent::new("a");
        slo.ingest(at(0), &agent.events(100, 0));
        let mut restarted = agent.clone();
        restarted.restart("boot-1");
        restarted.0.seq = agent.0.seq;
        assert_eq!(
            slo.ingest(at(10), &restarted.events(39, 1)),
            Ingest::Reset(counts(39, 40, 40, 0))
        );
        assert_eq!(slo.evaluate(at(10), None).counts.total, 140);

        // Only the loss counters restarting resets only them.
        let mut loss_only = restarted.clone();
        loss_only.0.loss = Counters::default();
        loss_only.add(1, 0, 2);
        assert_eq!(
            slo.ingest(at(20), &loss_only.next()),
            Ingest::Reset(counts(1, 1, 3, 2))
        );
    }

    #[test]
    fn good_above_total_is_clamped_and_made_up_by_the_next_report() {
        let mut slo = evaluator(99.9, MONTH);
        let mut agent = Agent::new("a");
        agent.add(10, 0, 0);
        agent.0.good = 11; // read between the kernel's two increments
        assert_eq!(
            slo.ingest(at(0), &agent.next()),
            Ingest::NewStream(counts(10, 10, 10, 0))
        );
        agent.0.good = 10;
        assert_eq!(
            slo.ingest(at(1), &agent.events(2, 0)),
            Ingest::Counted(counts(2, 2, 2, 0))
        );
        assert_eq!(slo.evaluate(at(1), None).counts, counts(12, 12, 12, 0));
    }

    #[test]
    fn several_nodes_add_up() {
        let mut slo = evaluator(99.9, MONTH);
        let (mut a, mut b) = (Agent::new("a"), Agent::new("b"));
        slo.ingest(at(0), &a.events(100, 0));
        slo.ingest(at(0), &b.events(50, 1));
        slo.ingest(at(10), &a.events(10, 0));
        slo.ingest(at(10), &b.lost(3));
        assert_eq!(slo.evaluate(at(10), None).counts, counts(160, 161, 164, 3));
    }

    #[test]
    fn a_threshold_change_counts_anew_from_the_reset() {
        let mut slo = evaluator(99.9, MONTH);
        let mut agent = Agent::new("a");
        slo.ingest(at(0), &agent.events(100, 0));
        assert_eq!(slo.counting_since(), Some(at(0)));

        slo.reset_counting(at(10), 2);
        let s = slo.evaluate(at(10), None);
        assert_eq!(
            (s.state, s.counting_since),
            (SloState::NoData, Some(at(10)))
        );
        assert_eq!(slo.threshold_id(), 2);

        // Still counted against the old threshold: only the losses count.
        assert_eq!(
            slo.ingest(at(20), &agent.events(50, 0)),
            Ingest::Counted(counts(0, 0, 50, 0))
        );
        agent.install_threshold(2);
        assert_eq!(
            slo.ingest(at(30), &agent.events(7, 3)),
            Ingest::Counted(counts(7, 10, 10, 0))
        );
        assert_eq!(
            slo.ingest(at(40), &agent.events(1, 0)),
            Ingest::Counted(counts(1, 1, 1, 0))
        );
        let s = slo.evaluate(at(40), None);
        assert_eq!(s.counts, counts(8, 11, 61, 0));
        assert_eq!(s.counting_since, Some(at(10)));
    }

    #[test]
    fn resetting_for_the_same_threshold_keeps_the_baselines() {
        let mut slo = evaluator(99.9, MONTH);
        let mut agent = Agent::new("a");
        slo.ingest(at(0), &agent.events(100, 0));
        slo.reset_counting(at(10), 1);
        slo.ingest(at(20), &agent.events(5, 0));
        assert_eq!(slo.evaluate(at(20), None).counts, counts(5, 5, 5, 0));
    }

    #[test]
    fn events_leave_the_window_when_it_has_passed() {
        // A day: window slots of 60 s, burn units of 2 s.
        let mut slo = evaluator(99.9, DAY);
        slo.ingest(at(0), &Agent::new("a").events(10, 0));
        let total = |secs| slo.evaluate(at(secs), None).counts.total;
        assert_eq!((total(86_399), total(86_400)), (10, 0));
        assert_eq!(slo.evaluate(at(86_400), None).state, SloState::NoData);

        let fast_short = |secs| slo.evaluate(at(secs), None).fast_burn.short_rate;
        assert_eq!((fast_short(9), fast_short(10)), (Some(0.0), None));
        let slow_long = |secs| slo.evaluate(at(secs), None).slow_burn.long_rate;
        assert_eq!((slow_long(719), slow_long(720)), (Some(0.0), None));

        // Counted mid-slot, events leave with their slot.
        let mut slo = evaluator(99.9, DAY);
        slo.ingest(at(30), &Agent::new("a").events(10, 0));
        let total = |secs| slo.evaluate(at(secs), None).counts.total;
        assert_eq!((total(86_399), total(86_400)), (10, 0));
    }

    #[test]
    fn slots_are_reused_once_their_counts_have_left_the_window() {
        let mut slo = evaluator(99.9, DAY);
        let mut agent = Agent::new("a");
        slo.ingest(at(0), &agent.events(10, 0));
        slo.ingest(at(43_200), &agent.events(20, 0));
        // Same ring position as at(0), one window later.
        slo.ingest(at(86_400), &agent.events(30, 0));
        assert_eq!(slo.evaluate(at(86_400), None).counts.total, 50);
        assert_eq!(slo.evaluate(at(129_600), None).counts.total, 30);
        // Long silences clear everything.
        slo.ingest(at(10 * 86_400), &Agent::new("b").events(1, 0));
        assert_eq!(slo.evaluate(at(10 * 86_400), None).counts.total, 1);
    }

    #[test]
    fn a_clock_going_back_counts_in_the_newest_slot() {
        let mut slo = evaluator(99.9, DAY);
        let (mut a, mut b) = (Agent::new("a"), Agent::new("b"));
        slo.ingest(at(100), &a.events(10, 0));
        slo.ingest(at(50), &b.events(5, 0));
        assert_eq!(slo.evaluate(at(50), None).counts.total, 15);
        // Both are in the slot of at(100), [60 s, 120 s).
        let total = |secs| slo.evaluate(at(secs), None).counts.total;
        assert_eq!((total(86_459), total(86_460)), (15, 0));
        assert_eq!(slo.counting_since(), Some(at(100)));
    }

    #[test]
    fn streams_silent_for_longer_than_the_window_are_forgotten() {
        let mut slo = evaluator(99.9, DAY);
        let (mut a, mut b) = (Agent::new("a"), Agent::new("b"));
        slo.ingest(at(0), &a.events(10, 0));
        slo.ingest(at(86_400), &b.events(1, 0));
        assert_eq!(
            slo.ingest(at(86_400), &a.events(2, 0)),
            Ingest::Counted(counts(2, 2, 2, 0))
        );

        slo.ingest(at(2 * 86_400 + 1), &b.events(1, 0));
        assert!(!slo.streams.contains_key("a"));
        // Should it speak again, it is a new stream: counted from zero.
        assert_eq!(
            slo.ingest(at(2 * 86_400 + 1), &a.events(3, 0)),
            Ingest::NewStream(counts(15, 15, 15, 0))
        );
    }

    #[test]
    fn a_crash_looping_agent_keeps_only_its_latest_streams() {
        let mut slo = evaluator(99.9, DAY);
        let mut agent = Agent::new("a");
        for boot in 1..=6 {
            agent.restart(&format!("boot-{boot}"));
            slo.ingest(at(boot), &agent.events(1, 0));
        }
        let boots: Vec<&str> = slo.streams["a"]
            .iter()
            .map(|s| s.boot_id.as_str())
            .collect();
        assert_eq!(boots, ["boot-3", "boot-4", "boot-5", "boot-6"]);
        assert_eq!(slo.evaluate(at(6), None).counts.total, 6);
    }

    #[test]
    fn a_forgotten_node_is_counted_from_zero() {
        let mut slo = evaluator(99.9, DAY);
        let mut agent = Agent::new("a");
        slo.ingest(at(0), &agent.events(10, 0));
        assert!(slo.forget_node("a"));
        assert!(!slo.forget_node("a"));
        assert_eq!(
            slo.ingest(at(1), &agent.events(1, 0)),
            Ingest::NewStream(counts(11, 11, 11, 0))
        );
    }

    #[test]
    fn a_new_target_applies_to_the_counts_held_and_a_new_window_counts_anew() {
        let mut slo = evaluator(99.9, DAY);
        let mut agent = Agent::new("a");
        slo.ingest(at(0), &agent.events(999, 1));
        slo.ingest(at(3_600), &agent.events(1_000, 0));
        assert_eq!(slo.evaluate(at(3_600), None).state, SloState::Met);

        slo.set_spec(spec(99.9, DAY), at(3_600)).unwrap();
        slo.set_spec(spec(99.99, DAY), at(3_600)).unwrap();
        let s = slo.evaluate(at(3_600), None);
        assert_eq!((s.state, s.counts.total), (SloState::Breached, 2_000));
        assert_eq!(s.counting_since, Some(at(0)));

        slo.set_spec(spec(99.99, WEEK), at(3_700)).unwrap();
        let s = slo.evaluate(at(3_700), None);
        assert_eq!(
            (s.state, s.counting_since),
            (SloState::NoData, Some(at(3_700)))
        );
        assert_eq!(
            slo.ingest(at(3_800), &agent.events(4, 0)),
            Ingest::Counted(counts(4, 4, 4, 0))
        );

        assert!(slo.set_spec(spec(100.0, DAY), at(3_800)).is_err());
        assert_eq!(slo.spec(), &spec(99.99, WEEK));
    }

    /// Two nodes over two hours: restarts, losses, a threshold change.
    fn script() -> Vec<(u64, Option<Report>)> {
        let (mut a, mut b) = (Agent::new("a"), Agent::new("b"));
        let mut steps = Vec::new();
        for i in 0..60u64 {
            let t = i * 120;
            steps.push((t, Some(a.events(100 + i, i % 7))));
            if i % 3 == 0 {
                b.add(50, 1, i % 2);
                steps.push((t + 30, Some(b.next())));
            }
            if i == 20 {
                b.restart("boot-2");
            }
            if i == 40 {
                steps.push((t + 60, None)); // the threshold changes
                a.install_threshold(2);
                b.install_threshold(2);
            }
        }
        steps
    }

    fn play(slo: &mut SloEvaluator, steps: &[(u64, Option<Report>)]) {
        for (t, step) in steps {
            match step {
                Some(report) => {
                    slo.ingest(at(*t), report);
                }
                None => slo.reset_counting(at(*t), 2),
            }
        }
    }

    #[test]
    fn restoring_a_snapshot_continues_as_if_never_stopped() {
        let steps = script();
        for split in [0, 1, 17, 44, 70, steps.len()] {
            let mut original = evaluator(99.5, DAY);
            play(&mut original, &steps[..split]);
            let mut restored = SloEvaluator::restore(spec(99.5, DAY), original.snapshot()).unwrap();
            assert_eq!(restored, original, "restored after {split} steps");
            play(&mut original, &steps[split..]);
            play(&mut restored, &steps[split..]);
            assert_eq!(restored, original, "continued after {split} steps");
            for t in [7_200, 7_300, 50_000, 90_000] {
                assert_eq!(
                    restored.evaluate(at(t), None),
                    original.evaluate(at(t), None),
                    "split {split}, at {t}"
                );
            }
        }
    }

    #[test]
    fn a_snapshot_holds_only_the_slots_in_use() {
        let mut slo = evaluator(99.9, DAY);
        assert!(slo.snapshot().window.is_empty());
        let mut agent = Agent::new("a");
        slo.ingest(at(0), &agent.events(9, 1));
        slo.ingest(at(90), &agent.lost(2));
        let snapshot = slo.snapshot();
        assert_eq!(snapshot.window, [(0, 0, 0, 2, 2), (1, 9, 10, 10, 0)]);
        // The loss-only report adds nothing to the burn slots.
        assert_eq!(snapshot.burn, [(45, 9, 10)]);
    }

    #[test]
    fn restoring_under_another_window_counts_anew_without_double_counting() {
        let mut slo = evaluator(99.9, DAY);
        let mut agent = Agent::new("a");
        slo.ingest(at(0), &agent.events(100, 0));
        slo.ingest(at(60), &agent.events(100, 0));
        let mut restored = SloEvaluator::restore(spec(99.9, WEEK), slo.snapshot()).unwrap();
        let s = restored.evaluate(at(60), None);
        assert_eq!(
            (s.state, s.counting_since),
            (SloState::NoData, Some(at(60)))
        );
        assert_eq!(
            restored.ingest(at(120), &agent.events(5, 0)),
            Ingest::Counted(counts(5, 5, 5, 0))
        );
    }

    #[test]
    fn malformed_snapshots_are_rejected() {
        let mut slo = evaluator(99.9, DAY);
        let mut agent = Agent::new("a");
        slo.ingest(at(0), &agent.events(9, 1));
        slo.ingest(at(100), &agent.events(9, 1));
        let good = slo.snapshot();
        let stream = good.streams["a"][0].clone();
        type Breaking = fn(&mut SloSnapshot, &Stream);
        let broken: [(Breaking, SnapshotError); 11] = [
            (|s, _| s.version = 2, SnapshotError::Version { found: 2 }),
            (
                |s, _| s.counting_since_ms = Some(s.latest_ms + 1),
                SnapshotError::CountingSince,
            ),
            (
                |s, _| s.window.push((0, 1, 1, 1, 0)),
                SnapshotError::SlotOrder {
                    ring: "window",
                    age: 0,
                },
            ),
            (
                |s, _| s.window = vec![(1_440, 1, 1, 1, 0)],
                SnapshotError::SlotOrder {
                    ring: "window",
                    age: 1_440,
                },
            ),
            (
                |s, _| s.window = vec![(3, 2, 1, 1, 0)],
                SnapshotError::SlotCounts {
                    ring: "window",
                    age: 3,
                },
            ),
            (
                |s, _| s.window = vec![(3, 1, 1, 1, 2)],
                SnapshotError::SlotCounts {
                    ring: "window",
                    age: 3,
                },
            ),
            (
                |s, _| s.burn = vec![(360, 1, 1)],
                SnapshotError::SlotOrder {
                    ring: "burn",
                    age: 360,
                },
            ),
            (
                |s, _| s.streams.insert("b".into(), Vec::new()).map_or((), drop),
                SnapshotError::Streams { node: "b".into() },
            ),
            (
                |s, t| {
                    s.streams
                        .insert("a".into(), vec![t.clone(), t.clone()])
                        .map_or((), drop)
                },
                SnapshotError::Streams { node: "a".into() },
            ),
            (
                |s, t| {
                    let stream = Stream {
                        good: t.total + 1,
                        ..t.clone()
                    };
                    s.streams.insert("a".into(), vec![stream]);
                },
                SnapshotError::Stream {
                    node: "a".into(),
                    boot_id: "boot-1".into(),
                },
            ),
            (
                |s, t| {
                    let stream = Stream {
                        last_seen_ms: s.latest_ms + 1,
                        ..t.clone()
                    };
                    s.streams.insert("a".into(), vec![stream]);
                },
                SnapshotError::Stream {
                    node: "a".into(),
                    boot_id: "boot-1".into(),
                },
            ),
        ];
        for (i, (breaking, expected)) in broken.into_iter().enumerate() {
            let mut snapshot = good.clone();
            breaking(&mut snapshot, &stream);
            assert_eq!(
                SloEvaluator::restore(spec(99.9, DAY), snapshot),
                Err(SloError::Snapshot(expected)),
                "case {i}"
            );
        }
        let five = (1..=5)
            .map(|n| Stream {
                boot_id: format!("boot-{n}"),
                ..stream.clone()
            })
            .collect();
        let mut snapshot = good.clone();
        snapshot.streams.insert("a".into(), five);
        assert!(SloEvaluator::restore(spec(99.9, DAY), snapshot).is_err());
        assert_eq!(
            SloEvaluator::restore(spec(0.0, DAY), good.clone()),
            Err(SloError::Target { target: 0.0 })
        );
        assert_eq!(
            SloError::Snapshot(SnapshotError::Version { found: 2 }).to_string(),
            "cannot restore SLO state: snapshot version 2 is not supported; this build reads version 1"
        );
        assert!(SloEvaluator::restore(spec(99.9, DAY), good).is_ok());
    }

    #[test]
    fn states_are_named_as_the_status_shows_them() {
        let names = [
            (SloState::Met, "Met"),
            (SloState::AtRisk, "AtRisk"),
            (SloState::Breached, "Breached"),
            (SloState::Unreliable, "Unreliable"),
            (SloState::NoData, "NoData"),
        ];
        for (state, name) in names {
            assert_eq!((state.as_str(), state.to_string()), (name, name.to_owned()));
        }
    }

    /// One step of a small cluster: a node counts some events, possibly
    /// after restarting, then reports.
    #[derive(Clone, Debug)]
    struct Step {
        node: usize,
        restart: bool,
        good: u64,
        bad: u64,
        lost: u64,
        after_secs: u64,
    }

    fn steps(max_after_secs: u64) -> impl Strategy<Value = Vec<Step>> {
        let step = (
            0..3usize,
            prop::bool::weighted(0.1),
            0..1_000u64,
            0..50u64,
            0..20u64,
            0..max_after_secs,
        )
            .prop_map(|(node, restart, good, bad, lost, after_secs)| Step {
                node,
                restart,
                good,
                bad,
                lost,
                after_secs,
            });
        prop::collection::vec(step, 1..60)
    }

    /// The cumulative reports, each with its time in seconds after `T0`.
    /// Each node boots at most [`MAX_STREAMS_PER_NODE`] times.
    fn reports(steps: &[Step]) -> Vec<(u64, Report)> {
        let mut agents: Vec<(Agent, usize)> = (0..3)
            .map(|i| (Agent::new(&format!("node-{i}")), 1))
            .collect();
        let mut t = 0;
        steps
            .iter()
            .map(|s| {
                t += s.after_secs;
                let (agent, boots) = &mut agents[s.node];
                if s.restart && *boots < MAX_STREAMS_PER_NODE {
                    *boots += 1;
                    agent.restart(&format!("boot-{boots}"));
                }
                agent.add(s.good, s.bad, s.lost);
                (t, agent.next())
            })
            .collect()
    }

    fn in_range(s: &SloStatus) -> bool {
        let fraction = |x: Option<f64>| x.is_none_or(|x| (0.0..=1.0).contains(&x));
        let rate = |x: Option<f64>| x.is_none_or(|x| x >= 0.0);
        fraction(s.sli)
            && fraction(s.drop_rate)
            && s.error_budget_remaining.is_none_or(|b| b <= 1.0)
            && s.counts.good <= s.counts.total
            && s.counts.lost <= s.counts.observed
            && [
                s.fast_burn.long_rate,
                s.fast_burn.short_rate,
                s.slow_burn.long_rate,
                s.slow_burn.short_rate,
            ]
            .into_iter()
            .all(rate)
    }

    fn arbitrary_report() -> impl Strategy<Value = Report> {
        (
            0..2usize,
            0..2usize,
            0..20u64,
            0..3u64,
            (any::<u64>(), any::<u64>(), 0..1_000u64, 0..1_000u64),
        )
            .prop_map(
                |(node, boot, seq, threshold_id, (good, total, observed, lost))| Report {
                    node: format!("node-{node}"),
                    boot_id: format!("boot-{boot}"),
                    seq,
                    threshold_id,
                    good,
                    total,
                    loss: Counters {
                        observed,
                        pairing_dropped: lost,
                        ..Counters::default()
                    },
                },
            )
    }

    proptest! {
        #[test]
        fn figures_stay_in_range_whatever_the_reports(
            reports in prop::collection::vec((0..100_000u64, arbitrary_report()), 1..40),
            target in 0.1f64..99.999,
        ) {
            let mut slo = evaluator(target, DAY);
            for (t, report) in &reports {
                slo.ingest(at(*t), report);
                let s = slo.evaluate(at(*t), None);
                prop_assert!(in_range(&s), "{:?}", s);
                prop_assert!(s.state == SloState::NoData || s.counting_since.is_some());
            }
        }

        #[test]
        fn replaying_any_report_changes_nothing(
            steps in steps(600),
            replays in prop::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>()), 0..20),
        ) {
            let reports = reports(&steps);
            let (mut once, mut replayed) = (evaluator(99.0, DAY), evaluator(99.0, DAY));
            for (i, (t, report)) in reports.iter().enumerate() {
                once.ingest(at(*t), report);
                replayed.ingest(at(*t), report);
                for (after, which) in &replays {
                    if after.index(reports.len()) == i {
                        let old = &reports[which.index(i + 1)].1;
                        replayed.ingest(at(*t), old);
                    }
                }
            }
            let end = reports.last().unwrap().0;
            for t in [end, end + 60, end + 3_600] {
                prop_assert_eq!(replayed.evaluate(at(t), None), once.evaluate(at(t), None));
            }
        }

        #[test]
        fn any_split_into_cumulative_reports_counts_the_same(
            increments in prop::collection::vec(
                (prop::bool::weighted(0.1), 0..1_000u64, 0..50u64, 0..20u64), 1..50),
            split_a in prop::collection::vec(any::<bool>(), 50),
            split_b in prop::collection::vec(any::<bool>(), 50),
        ) {
            // All at once, so that only the split differs.
            let run = |split: &[bool]| {
                let mut slo = evaluator(99.9, MONTH);
                let mut agent = Agent::new("a");
                let mut boots = 1;
                for (i, &(restart, good, bad, lost)) in increments.iter().enumerate() {
                    if restart && boots < MAX_STREAMS_PER_NODE {
                        boots += 1;
                        agent.restart(&format!("boot-{boots}"));
                    }
                    agent.add(good, bad, lost);
                    // A restart loses what was not reported, so report before it.
                    let restarts_next = increments.get(i + 1).is_some_and(|n| n.0);
                    if split[i] || restarts_next || i + 1 == increments.len() {
                        slo.ingest(at(0), &agent.next());
                    }
                }
                slo.evaluate(at(0), None)
            };
            let expected = increments.iter().fold(Counts::default(), |mut c, &(_, good, bad, lost)| {
                c.add(counts(good, good + bad, good + bad + lost, lost));
                c
            });
            let a = run(&split_a);
            prop_assert_eq!(a.counts, expected);
            prop_assert_eq!(run(&split_b), a);
        }

        #[test]
        fn delivery_order_never_changes_the_totals(
            steps in steps(1),
            order in Just(()).prop_flat_map(|()| Just((0..60usize).collect::<Vec<_>>()).prop_shuffle()),
        ) {
            let single: Vec<Step> = steps.into_iter().map(|s| Step { node: 0, ..s }).collect();
            let reports = reports(&single);
            let mut last_of_boot = BTreeMap::new();
            for (_, r) in &reports {
                last_of_boot.insert(r.boot_id.clone(), r.clone());
            }
            let expected = last_of_boot.values().fold(Counts::default(), |mut c, r| {
                c.add(counts(r.good, r.total, r.loss.observed, r.loss.pairing_dropped));
                c
            });
            let mut slo = evaluator(99.9, MONTH);
            for i in order.into_iter().filter(|&i| i < reports.len()) {
                slo.ingest(at(0), &reports[i].1);
            }
            prop_assert_eq!(slo.evaluate(at(0), None).counts, expected);
        }

        #[test]
        fn restoring_at_any_point_gives_the_same_answers(
            steps in steps(3_000),
            split in any::<prop::sample::Index>(),
            reset in any::<prop::sample::Index>(),
        ) {
            let reports = reports(&steps);
            let reset = reset.index(reports.len());
            let play = |slo: &mut SloEvaluator, range: std::ops::Range<usize>| {
                for i in range {
                    let (t, report) = &reports[i];
                    if i == reset {
                        slo.reset_counting(at(*t), 1);
                    }
                    slo.ingest(at(*t), report);
                }
            };
            let split = split.index(reports.len() + 1);
            let mut original = evaluator(99.0, DAY);
            play(&mut original, 0..split);
            let mut restored = SloEvaluator::restore(spec(99.0, DAY), original.snapshot()).unwrap();
            play(&mut original, split..reports.len());
            play(&mut restored, split..reports.len());
            prop_assert_eq!(&restored, &original);
            let end = reports.last().unwrap().0;
            for t in [end, end + 600, end + 86_000] {
                prop_assert_eq!(restored.evaluate(at(t), None), original.evaluate(at(t), None));
            }
        }
    }
}
