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
//! - a stream is new only from its first report (`seq` 1): a boot id first
//!   seen at a later number is taken as a baseline and counts only what its
//!   next reports add, so a report replayed from some earlier run cannot
//!   bring in its cumulative counts (see [`SloEvaluator::ingest_from_start`]
//!   for callers that saw the boot from its start);
//! - a stream dropped from the list (a full list, or a silence longer than
//!   the window) is remembered for another window, so its old reports, or
//!   its boot id used again from `seq` 1, are refused
//!   ([`Ingest::Replayed`]);
//! - a counter group going down without a new boot id was restarted: its new
//!   values are counted from zero, never as negative increments.
//!
//! A stream's first report (`seq` 1) counts in full: its counters began when
//! the agent started or the threshold was installed. Streams silent for
//! longer than the window are retired, so a node that speaks again after such
//! a silence counts from its next report on. The exact counters are kept before in-kernel
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
use ring::{Exact, Ring, Tally};

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
/// Retired streams remembered per node, each for a window: enough for an
/// agent restarting every few hours of a 30-day window to have its old boot
/// ids refused, while a crash loop costs a snapshot at most this many
/// entries per node.
pub const MAX_RETIRED_PER_NODE: usize = 16;

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
    /// A node with no retired streams, too many, or one retired after the
    /// latest report.
    #[error("node {node:?} has an empty, oversized or future list of retired streams")]
    Retired {
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
    /// 1 for a boot's first report, one higher for every report after it; a
    /// report numbered no higher than one already seen is ignored.
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
    /// Most events per second the stream's node can count (see
    /// [`PLAUSIBLE_BURST`]); `None` checks nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ceiling: Option<u64>,
}

/// How far ahead of its ceiling a stream may count: a report may carry up
/// to this long's worth of events at the ceiling rate beyond what the time
/// since its stream's previous reports allows (an agent holds at most 60
/// reports, ten minutes at the usual interval, while it cannot reach the
/// operator, and sends them at once when it can).
///
/// With a [`Report::ceiling`] of `r` events per second, a stream adds at
/// most `r · (t + PLAUSIBLE_BURST)` events to `total` (and to `observed`)
/// in the `t` since its first report (the time since its last report
/// counts even if this evaluator was not running then); a report past
/// that, or whose `good` exceeds its `total` by more than `r` (a second
/// of events in flight while the counters were read), is refused whole
/// ([`Ingest::Implausible`]) and changes nothing: the stream's next
/// plausible report counts from the same baseline.
pub const PLAUSIBLE_BURST: Duration = Duration::from_secs(15 * 60);

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
    /// The first report of a stream not seen from its start (`seq` above 1),
    /// or of a retired stream speaking again: nothing counted; its counters
    /// are the baseline of the next report.
    Baseline,
    /// A report of a retired stream numbered no higher than its last one
    /// (an old report replayed, or its boot id used again): refused, nothing
    /// counted and nothing changed.
    Replayed,
    /// More events than the stream's node could have counted (see
    /// [`PLAUSIBLE_BURST`]), or than a window slot holds: refused, nothing
    /// counted and nothing changed.
    Implausible,
}

impl Ingest {
    /// What was added to the window.
    pub fn added(&self) -> Counts {
        match *self {
            Self::Counted(c) | Self::NewStream(c) | Self::Reset(c) => c,
            Self::Stale | Self::Baseline | Self::Replayed | Self::Implausible => Counts::default(),
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
/// Whether the series an SLO names (`spec.series`) covers the series
/// `name` an agent reports: the same name, or that name kept per process
/// (`gc-pause` covers `gc-pause (pid 4242)`, see the `goRuntime` probe).
pub fn series_covers(named: &str, name: &str) -> bool {
    name == named || series_family(name) == Some(named)
}

/// The other name an SLO may give to cover the series `name`: `gc-pause`
/// for `gc-pause (pid 4242)`; `None` for a series not kept per process.
/// An SLO naming `n` covers `name` exactly when `n` is `name` or this
/// ([`series_covers`]), so whoever matches many series against many
/// names looks both up by key instead of comparing each with each.
pub fn series_family(name: &str) -> Option<&str> {
    let (family, rest) = name.rsplit_once(" (pid ")?;
    rest.strip_suffix(')')
        .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
        .then_some(family)
}

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
    /// Where the stream's counting stands against its ceiling: the time
    /// (Unix ms) at which the events it counted would have been counted at
    /// the ceiling rate. It may run [`PLAUSIBLE_BURST`] ahead of now.
    #[serde(default)]
    paced_ms: u64,
}

/// `paced_ms` after counting `events` at `now_ms` at most `ceiling` a
/// second, or `None` if that would run more than [`PLAUSIBLE_BURST`]
/// ahead of `now_ms`: a generic cell rate check, one number for whatever
/// is paced (a stream here, a node in the operator). `paced_ms` is the
/// Unix ms at which what was counted before would have been counted at
/// the ceiling rate; the time from `since_ms` on is credited (`now_ms`
/// credits none: over any time `t`, at most `ceiling · (t +
/// PLAUSIBLE_BURST)` events count).
pub fn pace(
    ceiling: Option<u64>,
    paced_ms: u64,
    since_ms: u64,
    now_ms: u64,
    events: u64,
) -> Option<u64> {
    let Some(rate) = ceiling else {
        return Some(paced_ms);
    };
    let cost_ms = (wide(events) * 1_000).div_ceil(wide(rate.max(1)));
    let at = wide(paced_ms.max(since_ms)) + cost_ms;
    let limit = wide(now_ms) + PLAUSIBLE_BURST.as_millis();
    (at <= limit).then(|| u64::try_from(at).unwrap_or(u64::MAX))
}

/// A stream no longer kept: where its numbering stood, so that none of its
/// reports counts again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Retired {
    boot_id: String,
    seq: u64,
    retired_ms: u64,
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
    /// Absent from snapshots written before streams were retired.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    retired: BTreeMap<String, Vec<Retired>>,
}

impl SloSnapshot {
    /// Whether it holds counted events and the baselines of streams, so
    /// that restoring it late lands the gap's counts at once. A snapshot of
    /// an SLO that never had data restores without such a gap.
    pub fn has_counts(&self) -> bool {
        !self.streams.is_empty() && self.window.iter().any(|w| w.2 > 0)
    }
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
    /// Streams dropped from `streams`, per node, for a window after.
    retired: BTreeMap<String, Vec<Retired>>,
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
            retired: BTreeMap::new(),
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

    /// Counts what `report` adds to its stream at `now`. A stream this
    /// evaluator does not know counts in full only from its first report
    /// (`seq` 1); see the module docs.
    pub fn ingest(&mut self, now: SystemTime, report: &Report) -> Ingest {
        self.ingest_as(now, report, false)
    }

    /// As [`SloEvaluator::ingest`], for a caller that has seen every report
    /// of this boot from its first one and passes only reports numbered
    /// higher than any before: a stream this evaluator does not know yet (an
    /// SLO created while the agent runs) then counts its first report in
    /// full, whatever its number. Retired streams are refused all the same.
    pub fn ingest_from_start(&mut self, now: SystemTime, report: &Report) -> Ingest {
        self.ingest_as(now, report, true)
    }

    /// Whether a report numbered `seq` of stream `node`/`boot_id` would be
    /// refused as [`Ingest::Replayed`]: the stream was retired, at that
    /// number or a later one.
    pub fn is_replay(&self, node: &str, boot_id: &str, seq: u64) -> bool {
        let kept = self
            .streams
            .get(node)
            .is_some_and(|list| list.iter().any(|s| s.boot_id == boot_id));
        !kept
            && self
                .retired
                .get(node)
                .is_some_and(|list| list.iter().any(|r| r.boot_id == boot_id && seq <= r.seq))
    }

    fn ingest_as(&mut self, now: SystemTime, report: &Report, from_start: bool) -> Ingest {
        let now_ms = self.advance(now);
        self.forget_idle(now_ms);
        if self.is_replay(&report.node, &report.boot_id, report.seq) {
            return Ingest::Replayed;
        }
        if let Some(rate) = report.ceiling
            && report.good > report.total.saturating_add(rate)
        {
            return Ingest::Implausible;
        }
        let unit = self.unit(now_ms);
        let kept = self
            .streams
            .get(&report.node)
            .is_some_and(|list| list.iter().any(|s| s.boot_id == report.boot_id));
        // A stream that spoke again after it was retired lost its baseline:
        // this report becomes it.
        let mut revived = false;
        if !kept
            && let Some(list) = self.retired.get_mut(&report.node)
            && let Some(i) = list.iter().position(|r| r.boot_id == report.boot_id)
        {
            list.remove(i);
            if list.is_empty() {
                self.retired.remove(&report.node);
            }
            revived = true;
        }
        let streams = self.streams.entry(report.node.clone()).or_default();
        let (stream, new) = match streams.iter().position(|s| s.boot_id == report.boot_id) {
            Some(i) if report.seq <= streams[i].seq => return Ingest::Stale,
            Some(i) => (&mut streams[i], false),
            None => {
                let evicted = (streams.len() >= MAX_STREAMS_PER_NODE).then(|| {
                    let idlest = (0..streams.len())
                        .min_by_key(|&i| streams[i].last_seen_ms)
                        .expect("the list is full, so not empty");
                    streams.remove(idlest)
                });
                let counts_in_full = !revived && (report.seq == 1 || from_start);
                let good = report.good.min(report.total);
                let observed = report.loss.observed;
                let paced_ms = if counts_in_full {
                    match pace(
                        report.ceiling,
                        now_ms,
                        now_ms,
                        now_ms,
                        report.total.max(observed),
                    ) {
                        Some(p) => p,
                        None => return Ingest::Implausible,
                    }
                } else {
                    now_ms
                };
                // Not counted in full: the report's own counters are the
                // baseline, so only what later reports add counts.
                let baseline = Stream {
                    boot_id: report.boot_id.clone(),
                    seq: if counts_in_full { 0 } else { report.seq },
                    last_seen_ms: now_ms,
                    threshold_id: report.threshold_id,
                    good: if counts_in_full { 0 } else { good },
                    total: if counts_in_full { 0 } else { report.total },
                    observed: if counts_in_full { 0 } else { observed },
                    lost: if counts_in_full {
                        0
                    } else {
                        report.loss.pairing_dropped.min(observed)
                    },
                    paced_ms,
                };
                streams.push(baseline);
                if let Some(s) = evicted {
                    self.retire(&report.node, s, now_ms);
                }
                if !counts_in_full {
                    self.counting_since_ms.get_or_insert(now_ms);
                    return Ingest::Baseline;
                }
                let streams = self.streams.get_mut(&report.node).expect("just pushed to");
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
        let exact = Exact {
            good: added.good,
            total: added.total,
        };
        // A new stream was paced when it was added.
        let paced_ms = if new {
            Some(stream.paced_ms)
        } else {
            // Time since its last report counts, even if this evaluator
            // was not running then (an operator restart): the counts of
            // that time come with this report.
            pace(
                report.ceiling,
                stream.paced_ms,
                stream.last_seen_ms,
                now_ms,
                d_total.max(d_observed),
            )
        };
        let slots = (
            self.window.get(unit / UNITS_PER_SLOT).checked_add(added),
            self.burn.get(unit).checked_add(exact),
        );
        let (Some(paced_ms), (Some(window), Some(burn))) = (paced_ms, slots) else {
            // A new stream stays, at zero: its next report counts in full.
            return Ingest::Implausible;
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
            paced_ms,
        };
        *self.window.slot(unit / UNITS_PER_SLOT) = window;
        *self.burn.slot(unit) = burn;
        self.counting_since_ms.get_or_insert(now_ms);
        if new {
            Ingest::NewStream(added)
        } else if exact_reset || loss_reset {
            Ingest::Reset(added)
        } else {
            Ingest::Counted(added)
        }
    }

    /// Forgets a node's streams, retired ones too, as when the node is
    /// deleted; whether it had any.
    ///
    /// Streams silent for longer than the window are retired anyway. Should
    /// such a stream speak again it counts from its next report on.
    pub fn forget_node(&mut self, node: &str) -> bool {
        let retired = self.retired.remove(node).is_some();
        self.streams.remove(node).is_some() || retired
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
            retired: self.retired.clone(),
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
            retired,
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

        for (node, list) in &retired {
            if list.is_empty()
                || list.len() > MAX_RETIRED_PER_NODE
                || list.iter().any(|r| r.retired_ms > latest_ms)
            {
                return Err(SnapshotError::Retired { node: node.clone() }.into());
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
        evaluator.retired = retired;
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

    /// Retires streams silent for longer than the window (whatever they
    /// counted has left it, and their nodes may well be gone), and forgets
    /// streams retired for longer than the window.
    fn forget_idle(&mut self, now_ms: u64) {
        let window_ms = self.objective.window_ms;
        let idle = |s: &Stream| now_ms.saturating_sub(s.last_seen_ms) > window_ms;
        if self.streams.values().flatten().any(idle) {
            let mut silent = Vec::new();
            self.streams.retain(|node, list| {
                for s in list.extract_if(.., |s| idle(s)) {
                    silent.push((node.clone(), s));
                }
                !list.is_empty()
            });
            for (node, s) in silent {
                self.retire(&node, s, now_ms);
            }
        }
        self.retired.retain(|_, list| {
            list.retain(|r| now_ms.saturating_sub(r.retired_ms) <= window_ms);
            !list.is_empty()
        });
    }

    /// Remembers that `stream` of `node` is no longer kept, dropping the
    /// node's longest-retired stream when it has too many.
    fn retire(&mut self, node: &str, stream: Stream, now_ms: u64) {
        let list = self.retired.entry(node.to_owned()).or_default();
        if list.len() >= MAX_RETIRED_PER_NODE {
            list.remove(0);
        }
        list.push(Retired {
            boot_id: stream.boot_id,
            seq: stream.seq,
            retired_ms: now_ms,
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

mod ring;
#[cfg(test)]
mod tests;
