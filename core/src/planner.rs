//! Ring buffer quota planning: how many bytes each probe's event path gets on
//! a node, and how sparsely it must sample to keep its drops within bounds.
//!
//! A pure function of declared demand, so the operator can compute the plan,
//! write it into the status, and the agent apply it without either guessing.
//!
//! Per event path, with `r` the declared peak rate, `f = 1/N` the sampling,
//! `s` the record size (event rounded up to 8 bytes, plus the kernel's 8-byte
//! header), `d` the drain interval (the longest the agent may leave a ring
//! undrained) and `b` the burst factor:
//!
//! - the ring needs `r·f·s·d·b` bytes, rounded up to a power of two, at least
//!   a page (and one record), at most `max_bytes_per_probe`;
//! - over the node budget, rings are halved least important first, largest
//!   first within a priority, by name last;
//! - the agent drains every [`drain_period`] `T = d/2`, emptying the ring;
//!   a ring of `size` bytes holds `C = ⌊(size − 1)/s⌋` records
//!   ([`ring_records`]), so at a steady rate the predicted drop fraction is
//!   `max(0, 1 − C/(r·f·T))` ([`steady_drop`]; no burst: bursts are what the
//!   headroom is for), and where it exceeds the probe's `max_drop_rate`, `N`
//!   is raised to the smallest that brings it within.

use std::cmp::Reverse;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::duration::{format_duration, serde_duration};

pub mod node;

/// Bytes the kernel puts before every ring buffer record (`BPF_RINGBUF_HDR_SZ`).
pub const RINGBUF_HEADER_BYTES: u64 = 8;
/// Bytes of one exported event as the kernel programs write it.
pub const EVENT_BYTES: u32 = core::mem::size_of::<ringwarden_ebpf_common::Event>() as u32;
/// Default worst-case consumer stall.
pub const DEFAULT_DRAIN_INTERVAL: Duration = Duration::from_millis(100);
/// Default headroom over the steady-state need, for bursts above the declared rate.
pub const DEFAULT_BURST_FACTOR: f64 = 2.0;
/// Default largest ring per probe, 256 MiB.
pub const DEFAULT_MAX_BYTES_PER_PROBE: u64 = 256 << 20;
/// Sparsest sampling the planner sets, 1 in 2^20. An event path that needs
/// sparser sampling carries too little to be worth it; the plan keeps this
/// value, predicts drops above the bound and says so in a reason.
pub const MAX_SAMPLE_EVERY: u64 = 1 << 20;

/// Shortest drain period: the resolution of the agent's timer.
pub const MIN_DRAIN_PERIOD: Duration = Duration::from_millis(1);

/// How often the agent drains a ring whose ProbeSet declares
/// `drain_interval`: twice per interval, and at most every
/// [`MIN_DRAIN_PERIOD`].
///
/// The interval is documented as the longest the agent may leave a ring
/// undrained, and a timer fires late under load: draining once per interval
/// would break that bound at every late tick. Draining at half of it leaves
/// the other half as slack for a late or slow drain. The ring is still sized
/// for the whole interval times the burst factor, so a stall of a whole
/// interval at the declared rate loses nothing; the predicted drop uses the
/// period the agent keeps, so it is what a user measures at that rate.
pub fn drain_period(drain_interval: Duration) -> Duration {
    (drain_interval / 2).max(MIN_DRAIN_PERIOD)
}

/// Records of `record_bytes` (header included) that a ring of `ring_bytes`
/// holds at once. The kernel refuses a reserve that would put the producer
/// more than `ring_bytes − 1` bytes ahead of the consumer
/// (`kernel/bpf/ringbuf.c`), so a record never fills the ring exactly.
pub fn ring_records(ring_bytes: u64, record_bytes: u64) -> u64 {
    ring_bytes
        .saturating_sub(1)
        .checked_div(record_bytes)
        .unwrap_or(0)
}

/// Fraction of exported events a ring holding `records` records drops when
/// they arrive at a steady `rate` per second (after sampling) and the agent
/// empties it every `period`: `rate·period` arrive between two drains, and
/// the ring keeps the first `records` of them. An empty ring (`records` 0)
/// drops everything.
pub fn steady_drop(rate: f64, records: u64, period: Duration) -> f64 {
    let per_period = rate * period.as_secs_f64();
    if per_period <= 0.0 {
        0.0
    } else {
        (1.0 - records as f64 / per_period).max(0.0)
    }
}

/// Everything that shares one node's ring buffer budget.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanInput {
    /// The node's page size (4096, or 65536 on some arm64 kernels); rings
    /// are power-of-two multiples of it.
    pub page_size: u64,
    /// Bytes all rings on the node may take together.
    pub node_budget_bytes: u64,
    /// Largest ring one probe may get: a power of two of at least one page.
    #[serde(default = "default_max_bytes_per_probe")]
    pub max_bytes_per_probe: u64,
    pub probes: Vec<ProbeDemand>,
}

/// One probe's declared event-path demand.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeDemand {
    pub name: String,
    /// Bytes of one exported event, before alignment and header.
    pub event_size: u32,
    /// Peak exported events per second on one node; 0 means no event path.
    pub peak_rate: f64,
    /// Fraction of events to keep, in `[1/MAX_SAMPLE_EVERY, 1]`; rounded
    /// down to a 1-in-N sampling, the only kind the kernel does.
    #[serde(default = "one")]
    pub requested_sampling: f64,
    /// Worst-case time the consumer may not drain the ring.
    #[serde(with = "serde_duration", default = "default_drain_interval")]
    pub drain_interval: Duration,
    /// Headroom factor over the steady-state need, at least 1.
    #[serde(default = "default_burst_factor")]
    pub burst_factor: f64,
    /// Largest acceptable predicted drop fraction, in `[0, 1)`.
    pub max_drop_rate: f64,
    /// Higher is more important: lower priorities shrink first.
    #[serde(default)]
    pub priority: i32,
}

impl ProbeDemand {
    /// A demand with the default sampling, drain interval, burst factor and priority.
    pub fn new(
        name: impl Into<String>,
        event_size: u32,
        peak_rate: f64,
        max_drop_rate: f64,
    ) -> Self {
        Self {
            name: name.into(),
            event_size,
            peak_rate,
            requested_sampling: 1.0,
            drain_interval: DEFAULT_DRAIN_INTERVAL,
            burst_factor: DEFAULT_BURST_FACTOR,
            max_drop_rate,
            priority: 0,
        }
    }
}

fn default_max_bytes_per_probe() -> u64 {
    DEFAULT_MAX_BYTES_PER_PROBE
}
fn one() -> f64 {
    1.0
}
fn default_drain_interval() -> Duration {
    DEFAULT_DRAIN_INTERVAL
}
fn default_burst_factor() -> f64 {
    DEFAULT_BURST_FACTOR
}

/// The node's rings, within budget.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// One per input probe, in input order.
    pub probes: Vec<ProbePlan>,
    pub budget_bytes: u64,
    /// Sum of `ring_bytes`, at most `budget_bytes`.
    pub used_bytes: u64,
}

/// One probe's ring and sampling, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbePlan {
    pub name: String,
    /// Ring size: a power of two of at least a page, or 0 without an event path.
    pub ring_bytes: u64,
    /// Bytes one event takes in the ring, header included; 0 without an event path.
    pub record_bytes: u64,
    /// `r·f·s·d·b` at the requested sampling, before rounding.
    pub needed_bytes: f64,
    /// Keep one event in this many; 1 keeps all.
    pub sample_every: u64,
    /// `1 / sample_every`.
    pub effective_sampling: f64,
    /// Predicted steady-state fraction of exported events the ring drops.
    pub predicted_drop: f64,
    /// How the numbers came about, for people reading the status.
    pub reasons: Vec<String>,
}

/// Why no plan could be made. Fields are named as they are serialized.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("pageSize {0} is not a power of two")]
    PageSize(u64),
    #[error("maxBytesPerProbe {max} is not a power of two of at least one page ({page} B)")]
    MaxBytesPerProbe { max: u64, page: u64 },
    #[error("probe {probe:?}: {field} is {value}, expected {expected}")]
    Field {
        probe: String,
        field: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("probe {probe:?}: a record of {record_bytes} B does not fit maxBytesPerProbe {max} B")]
    RecordTooLarge {
        probe: String,
        record_bytes: u64,
        max: u64,
    },
    #[error("cpus must be at least 1: per-CPU maps are sized by the node's possible CPUs")]
    Cpus,
    #[error(
        "node budget of {budget_bytes} B is too small: the event paths need {minimum_bytes} B even at one page (or one record) each"
    )]
    BudgetTooSmall {
        budget_bytes: u64,
        minimum_bytes: u64,
    },
}

/// Sizes every probe's ring and sampling; see the module docs for the model.
pub fn plan(input: &PlanInput) -> Result<Plan, PlanError> {
    validate(input)?;
    let mut sized: Vec<Draft> = input.probes.iter().map(|p| size(p, input)).collect();

    let budget = u128::from(input.node_budget_bytes);
    let minimum: u128 = sized.iter().map(|s| u128::from(s.floor)).sum();
    if minimum > budget {
        return Err(PlanError::BudgetTooSmall {
            budget_bytes: input.node_budget_bytes,
            minimum_bytes: u64::try_from(minimum).unwrap_or(u64::MAX),
        });
    }
    // Halving the first probe in (priority, largest, name) order, one step at
    // a time, executes every possible halving in one fixed global order until
    // the rings fit. Demanding more only adds halvings of one's own, so a
    // probe never ends smaller for declaring more.
    let mut used: u128 = sized.iter().map(|s| u128::from(s.ring)).sum();
    while used > budget {
        let victim = (0..sized.len())
            .filter(|&i| sized[i].ring > sized[i].floor)
            .min_by_key(|&i| {
                let p = &input.probes[i];
                (p.priority, Reverse(sized[i].ring), &p.name, i)
            })
            .expect("the floors fit the budget, so some ring is above its floor");
        sized[victim].ring /= 2;
        sized[victim].halvings += 1;
        used -= u128::from(sized[victim].ring);
    }

    let probes = input
        .probes
        .iter()
        .zip(sized)
        .map(|(p, s)| {
            let cut = halving_reason(s.halvings, input.node_budget_bytes, p.priority);
            finish(p, s, cut.into_iter().collect())
        })
        .collect();
    Ok(Plan {
        probes,
        budget_bytes: input.node_budget_bytes,
        used_bytes: u64::try_from(used).expect("used fits the u64 budget"),
    })
}

/// A probe between sizing and the budget.
struct Draft {
    record: u64,
    needed: f64,
    /// Sampling from the request, before any lowering for drops.
    sample_every: u64,
    /// Smallest ring the probe may shrink to; 0 without an event path.
    floor: u64,
    ring: u64,
    halvings: u32,
    reasons: Vec<String>,
}

fn size(p: &ProbeDemand, input: &PlanInput) -> Draft {
    let sample_every = sample_every_for(p.requested_sampling);
    let mut reasons = Vec::new();
    if p.requested_sampling != 1.0 / sample_every as f64 {
        reasons.push(format!(
            "requested sampling {} rounded down to 1 in {sample_every}",
            p.requested_sampling
        ));
    }
    if p.peak_rate == 0.0 {
        reasons.push("no event path (peakRate 0), so no ring buffer".to_owned());
        return Draft {
            record: 0,
            needed: 0.0,
            sample_every,
            floor: 0,
            ring: 0,
            halvings: 0,
            reasons,
        };
    }
    let (page, cap) = (input.page_size, input.max_bytes_per_probe);
    let record = record_bytes(p.event_size);
    let needed = p.peak_rate / sample_every as f64
        * record as f64
        * p.drain_interval.as_secs_f64()
        * p.burst_factor;
    // The kernel never fills a ring to the last byte (`ring_records`), so
    // the smallest ring that holds one record is above the record's size.
    let floor = page.max((record + 1).next_power_of_two());
    let (ring, outcome) = if needed > cap as f64 {
        (
            cap,
            format!("capped at maxBytesPerProbe {}", bytes(cap as f64)),
        )
    } else {
        let rounded = (needed.ceil() as u64).next_power_of_two();
        let ring = rounded.clamp(floor, cap);
        let outcome = if rounded == ring {
            format!("rounded to {}", bytes(ring as f64))
        } else if ring == page {
            format!("raised to one page ({})", bytes(page as f64))
        } else {
            format!(
                "raised to {}, the smallest ring that holds a record",
                bytes(ring as f64)
            )
        };
        (ring, outcome)
    };
    let sampled = match sample_every {
        1 => String::new(),
        n => format!(" sampled 1 in {n}"),
    };
    reasons.push(format!(
        "needs {} for {} ev/s{sampled} × {} B × {} × burst {}; {outcome}",
        bytes(needed),
        count(p.peak_rate),
        record,
        format_duration(p.drain_interval),
        decimal(p.burst_factor, 2),
    ));
    Draft {
        record,
        needed,
        sample_every,
        floor,
        ring,
        halvings: 0,
        reasons,
    }
}

/// "halved twice to fit nodeBudget …", or nothing without halvings.
fn halving_reason(halvings: u32, budget: u64, priority: i32) -> Option<String> {
    (halvings > 0).then(|| {
        format!(
            "halved {} to fit nodeBudget {} (priority {priority}; lower priorities, then larger rings, shrink first)",
            times(halvings),
            bytes(budget as f64),
        )
    })
}

/// 1 → "once", 2 → "twice", n → "n times".
fn times(n: u32) -> String {
    match n {
        1 => "once".to_owned(),
        2 => "twice".to_owned(),
        n => format!("{n} times"),
    }
}

/// Explains how the ring was cut (`cuts`) and lowers the sampling until
/// the predicted drops are within bounds.
fn finish(p: &ProbeDemand, s: Draft, cuts: Vec<String>) -> ProbePlan {
    let Draft {
        record,
        needed,
        sample_every: requested,
        ring,
        mut reasons,
        ..
    } = s;
    reasons.extend(cuts);
    // The drop at 1 in `n` at the declared rate, with the agent's drain
    // period (see `drain_period` for why it is half the interval).
    let records = ring_records(ring, record);
    let period = drain_period(p.drain_interval);
    let per_period = p.peak_rate * period.as_secs_f64();
    let drop_at = |n: u64| {
        if ring == 0 {
            0.0
        } else {
            steady_drop(p.peak_rate / n as f64, records, period)
        }
    };
    let allowed = p.max_drop_rate;
    let mut n = requested;
    if drop_at(n) > 0.0 {
        let sampled = match n {
            1 => String::new(),
            n => format!(" sampled 1 in {n}"),
        };
        let arithmetic = format!(
            "a drain every {} (half the drainInterval) finds {} records at {} ev/s{sampled} and the ring holds {records}",
            format_duration(period),
            count(per_period / n as f64),
            count(p.peak_rate),
        );
        reasons.push(if drop_at(n) > allowed {
            format!("{arithmetic}; {} would be dropped", percent(drop_at(n)))
        } else {
            format!(
                "{arithmetic}; predicted drops {} within maxDropRate {}",
                percent(drop_at(n)),
                percent(allowed)
            )
        });
    }
    if drop_at(n) > allowed {
        // Solve `drop_at(n) <= allowed`, then step off floating-point noise
        // to the smallest `n` that satisfies it as computed.
        n = (per_period * (1.0 - allowed) / records.max(1) as f64)
            .ceil()
            .clamp(requested as f64, MAX_SAMPLE_EVERY as f64) as u64;
        while n > requested && drop_at(n - 1) <= allowed {
            n -= 1;
        }
        while n < MAX_SAMPLE_EVERY && drop_at(n) > allowed {
            n += 1;
        }
        reasons.push(if drop_at(n) <= allowed {
            format!(
                "sampling 1 in {n} so predicted drops {} stay within maxDropRate {}",
                percent(drop_at(n)),
                percent(allowed)
            )
        } else {
            format!(
                "sampling capped at 1 in {n}; predicted drops {} still exceed maxDropRate {}",
                percent(drop_at(n)),
                percent(allowed)
            )
        });
    }
    ProbePlan {
        name: p.name.clone(),
        ring_bytes: ring,
        record_bytes: record,
        needed_bytes: needed,
        sample_every: n,
        effective_sampling: 1.0 / n as f64,
        predicted_drop: drop_at(n),
        reasons,
    }
}

fn validate(input: &PlanInput) -> Result<(), PlanError> {
    let (page, cap) = (input.page_size, input.max_bytes_per_probe);
    if !page.is_power_of_two() {
        return Err(PlanError::PageSize(page));
    }
    if !cap.is_power_of_two() || cap < page {
        return Err(PlanError::MaxBytesPerProbe { max: cap, page });
    }
    for p in &input.probes {
        let field = |field, value: String, expected| PlanError::Field {
            probe: p.name.clone(),
            field,
            value,
            expected,
        };
        let d = p.drain_interval;
        let checks = [
            (
                p.peak_rate.is_finite() && p.peak_rate >= 0.0,
                field("peakRate", p.peak_rate.to_string(), "finite and >= 0"),
            ),
            (
                (1.0 / MAX_SAMPLE_EVERY as f64..=1.0).contains(&p.requested_sampling),
                field(
                    "requestedSampling",
                    p.requested_sampling.to_string(),
                    "in [1/1048576, 1]",
                ),
            ),
            (
                p.burst_factor.is_finite() && p.burst_factor >= 1.0,
                field("burstFactor", p.burst_factor.to_string(), "finite and >= 1"),
            ),
            (
                !d.is_zero(),
                field("drainInterval", format_duration(d), "> 0"),
            ),
            (
                (0.0..1.0).contains(&p.max_drop_rate),
                field("maxDropRate", p.max_drop_rate.to_string(), "in [0, 1)"),
            ),
        ];
        if let Some((_, e)) = checks.into_iter().find(|(ok, _)| !ok) {
            return Err(e);
        }
        let record = record_bytes(p.event_size);
        if p.peak_rate > 0.0 && record > cap {
            return Err(PlanError::RecordTooLarge {
                probe: p.name.clone(),
                record_bytes: record,
                max: cap,
            });
        }
    }
    Ok(())
}

/// The event rounded up to 8 bytes, plus the kernel's record header.
fn record_bytes(event_size: u32) -> u64 {
    u64::from(event_size).next_multiple_of(8) + RINGBUF_HEADER_BYTES
}

/// Smallest `N` with `1/N <= fraction`, where a fraction within floating-point
/// noise of `1/N` counts as `1/N`. `fraction` is validated to `[2^-20, 1]`.
fn sample_every_for(fraction: f64) -> u64 {
    let inverse = 1.0 / fraction;
    let nearest = inverse.round();
    if (inverse - nearest).abs() <= nearest * 1e-9 {
        nearest as u64
    } else {
        inverse.ceil() as u64
    }
}

/// `1536.0` → "1.5 KiB": binary units, one decimal; anything a `u64`
/// cannot count (infinity included) is "over 16 EiB", so a reason never
/// prints `inf` or hundreds of digits.
pub fn bytes(n: f64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n.is_nan() || n >= 18_446_744_073_709_551_616.0 {
        return "over 16 EiB".to_owned();
    }
    let (mut value, mut unit) = (n, 0);
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{} {}", decimal(value, 1), UNITS[unit])
}

/// A rate or count for people: `12.5` → "12.5", `2500000` → "2.5M",
/// `1e308` → "1e308"; at most two decimals below a million, SI prefixes up
/// to tera, then scientific notation, never hundreds of digits or `inf`.
pub fn count(v: f64) -> String {
    if v.is_nan() {
        return "NaN".to_owned();
    }
    if v.is_infinite() {
        return if v > 0.0 { "infinite" } else { "-infinite" }.to_owned();
    }
    let a = v.abs();
    if a < 1e6 {
        return decimal(v, 2);
    }
    for (scale, suffix) in [(1e6, "M"), (1e9, "G"), (1e12, "T")] {
        if a < scale * 1e3 {
            return format!("{}{suffix}", decimal(v / scale, 1));
        }
    }
    let s = format!("{v:.1e}");
    s.replace(".0e", "e")
}

fn percent(fraction: f64) -> String {
    format!("{}%", decimal(fraction * 100.0, 2))
}

/// `v` with at most `places` decimals, trailing zeros dropped.
fn decimal(v: f64, places: usize) -> String {
    let s = format!("{v:.places$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

#[cfg(test)]
mod tests;
