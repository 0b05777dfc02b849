//! The ring planner's tests: table-driven cases and properties.

use super::*;
use proptest::prelude::*;

const KIB: u64 = 1024;
const PAGE: u64 = 4 * KIB;

fn input(budget: u64, probes: Vec<ProbeDemand>) -> PlanInput {
    PlanInput {
        page_size: PAGE,
        node_budget_bytes: budget,
        max_bytes_per_probe: DEFAULT_MAX_BYTES_PER_PROBE,
        probes,
    }
}

/// 48-byte events (56-byte records), 1% drops allowed.
fn probe(name: &str, rate: f64, priority: i32) -> ProbeDemand {
    ProbeDemand {
        priority,
        ..ProbeDemand::new(name, 48, rate, 0.01)
    }
}

fn only(input: &PlanInput) -> ProbePlan {
    plan(input).unwrap().probes.remove(0)
}

#[test]
fn a_lone_probe_gets_its_need_rounded_up_to_a_power_of_two() {
    // (event size, rate, page, cap, ring, record, needed)
    let cases = [
        // 10000 × 56 × 0.1 × 2 = 112000
        (
            48,
            10_000.0,
            PAGE,
            DEFAULT_MAX_BYTES_PER_PROBE,
            128 * KIB,
            56,
            112_000.0,
        ),
        // 50 aligns to 56: 10000 × 64 × 0.1 × 2 = 128000
        (
            50,
            10_000.0,
            PAGE,
            DEFAULT_MAX_BYTES_PER_PROBE,
            128 * KIB,
            64,
            128_000.0,
        ),
        // empty events are bare headers: 5120 × 8 × 0.1 × 2 = 8192 exactly
        (
            0,
            5_120.0,
            PAGE,
            DEFAULT_MAX_BYTES_PER_PROBE,
            8 * KIB,
            8,
            8_192.0,
        ),
        // a trickle still gets a page, 64 KiB on arm64
        (48, 1.0, PAGE, DEFAULT_MAX_BYTES_PER_PROBE, PAGE, 56, 11.2),
        (
            48,
            1.0,
            64 * KIB,
            DEFAULT_MAX_BYTES_PER_PROBE,
            64 * KIB,
            56,
            11.2,
        ),
        // a record larger than a page needs a ring that holds it
        (
            5001,
            1.0,
            PAGE,
            DEFAULT_MAX_BYTES_PER_PROBE,
            8 * KIB,
            5016,
            1003.2,
        ),
        // 1e6 × 56 × 0.1 × 2 = 11.2 MB, capped at 1 MiB
        (48, 1e6, PAGE, 1 << 20, 1 << 20, 56, 11_200_000.0),
    ];
    for (event_size, rate, page, cap, ring, record, needed) in cases {
        let mut i = input(
            u64::MAX,
            vec![ProbeDemand::new("p", event_size, rate, 0.99)],
        );
        (i.page_size, i.max_bytes_per_probe) = (page, cap);
        let p = only(&i);
        let case = format!("event {event_size} B at {rate} ev/s");
        assert_eq!(p.ring_bytes, ring, "{case}");
        assert_eq!(p.record_bytes, record, "{case}");
        assert!(
            (p.needed_bytes - needed).abs() < 1e-6,
            "{case}: {}",
            p.needed_bytes
        );
    }
}

#[test]
fn the_agent_drains_twice_per_drain_interval_at_most_every_millisecond() {
    let ms = Duration::from_millis;
    // (drainInterval, period)
    let cases = [
        (ms(100), ms(50)),
        (ms(40), ms(20)),
        (ms(3), Duration::from_micros(1500)),
        (ms(2), ms(1)),
        (ms(1), ms(1)),
        (Duration::from_secs(10), Duration::from_secs(5)),
    ];
    for (interval, period) in cases {
        assert_eq!(drain_period(interval), period, "{interval:?}");
    }
}

#[test]
fn a_ring_never_holds_its_own_size_in_records() {
    // (ring, record, records)
    let cases = [
        (256 * KIB, 96, 2730),
        (64 * KIB, 96, 682),
        (PAGE, 96, 42),
        // 4096/8 records would fill it to the last byte: one fewer fits.
        (PAGE, 8, 511),
        (PAGE, PAGE, 0),
        (0, 96, 0),
        (PAGE, 0, 0),
    ];
    for (ring, record, records) in cases {
        assert_eq!(ring_records(ring, record), records, "{ring} / {record}");
    }
}

#[test]
fn the_predicted_drop_is_what_one_drain_period_brings_beyond_the_ring() {
    let ms = Duration::from_millis;
    // (rate, records, period, drop)
    let cases = [
        // 50000 ev/s for 50ms is 2500 records: a 256 KiB ring holds 2730.
        (50_000.0, 2730, ms(50), 0.0),
        // 20000 ev/s for 50ms is 1000 records: 64 KiB holds 682.
        (20_000.0, 682, ms(50), 1.0 - 682.0 / 1000.0),
        (20_000.0, 682, ms(100), 1.0 - 682.0 / 2000.0),
        (0.0, 682, ms(50), 0.0),
        (10.0, 0, ms(50), 1.0),
    ];
    for (rate, records, period, drop) in cases {
        let got = steady_drop(rate, records, period);
        assert!(
            (got - drop).abs() < 1e-12,
            "{rate} {records} {period:?}: {got}"
        );
    }
}

#[test]
fn a_ring_the_budget_squeezes_predicts_the_drop_at_the_agents_drain_period() {
    // The two cases from the field: 96-byte records, 100ms drain interval.
    // (rate, budget, ring, drop)
    let cases = [
        (50_000.0, 256 * KIB, 256 * KIB, 0.0),
        (20_000.0, 64 * KIB, 64 * KIB, 1.0 - 682.0 / 1000.0),
    ];
    for (rate, budget, ring, drop) in cases {
        let d = ProbeDemand::new("p", 88, rate, 0.99);
        let p = only(&input(budget, vec![d]));
        assert_eq!(p.ring_bytes, ring);
        assert_eq!(p.sample_every, 1);
        assert!((p.predicted_drop - drop).abs() < 1e-12, "{p:?}");
    }
    let p = only(&input(
        64 * KIB,
        vec![ProbeDemand::new("p", 88, 20_000.0, 0.99)],
    ));
    assert_eq!(
        p.reasons.last().unwrap(),
        "a drain every 50ms (half the drainInterval) finds 1000 records at 20000 ev/s \
         and the ring holds 682; predicted drops 31.8% within maxDropRate 99%"
    );
}

#[test]
fn numbers_in_reasons_are_short_whatever_a_tenant_declares() {
    // (value, as printed)
    let counts = [
        (12.345, "12.35"),
        (999_999.0, "999999"),
        (2_500_000.0, "2.5M"),
        (3e9, "3G"),
        (4.2e13, "42T"),
        (1e308, "1e308"),
        (f64::INFINITY, "infinite"),
    ];
    for (v, printed) in counts {
        assert_eq!(count(v), printed, "{v}");
    }
    let sizes = [
        (1536.0, "1.5 KiB"),
        (3.0 * (1u64 << 50) as f64, "3 PiB"),
        (1e308, "over 16 EiB"),
        (f64::INFINITY, "over 16 EiB"),
    ];
    for (v, printed) in sizes {
        assert_eq!(bytes(v), printed, "{v}");
    }
    // A declared rate of 1e308 (the planner's own input allows any finite
    // rate) plans, and says so in a few words.
    let p = only(&input(u64::MAX, vec![probe("p", 1e308, 0)]));
    for r in &p.reasons {
        assert!(
            r.len() < 300 && !r.contains("inf ") && !r.contains("00000000"),
            "{r}"
        );
    }
}

#[test]
fn the_reasons_show_the_arithmetic() {
    let p = only(&input(u64::MAX, vec![probe("p", 10_000.0, 0)]));
    assert_eq!(
        p.reasons,
        ["needs 109.4 KiB for 10000 ev/s × 56 B × 100ms × burst 2; rounded to 128 KiB"]
    );
    assert_eq!(
        (p.sample_every, p.effective_sampling, p.predicted_drop),
        (1, 1.0, 0.0)
    );
}

#[test]
fn a_probe_without_an_event_path_gets_no_ring_and_costs_no_budget() {
    let plan = plan(&input(
        128 * KIB,
        vec![probe("agg", 0.0, 0), probe("ev", 10_000.0, 0)],
    ))
    .unwrap();
    let agg = &plan.probes[0];
    assert_eq!(
        (agg.ring_bytes, agg.record_bytes, agg.predicted_drop),
        (0, 0, 0.0)
    );
    assert_eq!(plan.probes[1].ring_bytes, 128 * KIB);
    assert_eq!(plan.used_bytes, 128 * KIB);
    assert!(agg.reasons[0].contains("no event path"));
}

#[test]
fn requested_sampling_is_rounded_down_to_one_in_n_and_lowers_the_need() {
    // (requested, N)
    let cases = [
        (1.0, 1),
        (0.5, 2),
        (1.0 / 3.0, 3),
        (0.3, 4),
        (0.1, 10),
        (0.099, 11),
    ];
    for (requested, n) in cases {
        let mut d = probe("p", 10_000.0, 0);
        d.requested_sampling = requested;
        let p = only(&input(u64::MAX, vec![d]));
        assert_eq!(p.sample_every, n, "requested {requested}");
        assert_eq!(p.effective_sampling, 1.0 / n as f64);
        assert!((p.needed_bytes - 112_000.0 / n as f64).abs() < 1e-6);
    }
    let mut d = probe("p", 10_000.0, 0);
    d.requested_sampling = 0.3;
    let p = only(&input(u64::MAX, vec![d]));
    // 10000 / 4 × 56 × 0.1 × 2 = 28000
    assert_eq!(p.ring_bytes, 32 * KIB);
    assert!(p.reasons[0].contains("0.3 rounded down to 1 in 4"));
}

#[test]
fn over_budget_the_least_important_then_largest_shrink_first() {
    // Three rings of 128 KiB; "b" matters more.
    let probes = || {
        vec![
            probe("a", 10_000.0, 0),
            probe("b", 10_000.0, 1),
            probe("c", 10_000.0, 0),
        ]
    };
    // (budget, rings, halvings of "a")
    let cases = [
        (384 * KIB, [128, 128, 128], 0),
        // a, then c (now the larger) halve once.
        (256 * KIB, [64, 128, 64], 1),
        (192 * KIB, [32, 128, 32], 2),
        (160 * KIB, [16, 128, 16], 3),
        // a and c down to a page, then b.
        (72 * KIB, [4, 64, 4], 5),
        (12 * KIB, [4, 4, 4], 5),
    ];
    for (budget, rings, halvings) in cases {
        let plan = plan(&input(budget, probes())).unwrap();
        let got: Vec<u64> = plan.probes.iter().map(|p| p.ring_bytes / KIB).collect();
        assert_eq!(got, rings, "budget {budget}");
        assert_eq!(plan.used_bytes, rings.iter().sum::<u64>() * KIB);
        let expected = match halvings {
            0 => None,
            1 => Some("halved once".to_owned()),
            2 => Some("halved twice".to_owned()),
            n => Some(format!("halved {n} times")),
        };
        let said = plan.probes[0]
            .reasons
            .iter()
            .find(|r| r.starts_with("halved"));
        assert_eq!(
            said.map(|r| r.split(" to fit").next().unwrap().to_owned()),
            expected
        );
    }
}

#[test]
fn shrunk_rings_sample_just_enough_to_stay_within_the_drop_rate() {
    // 10000 ev/s bring 500 records per 50ms drain period; a 16 KiB ring
    // holds ⌊16383/56⌋ = 292 of them, so it drops 1 − 292/500 = 41.6% at
    // full rate. At 1 in 2, 250 records fit.
    let probes = vec![
        probe("a", 10_000.0, 0),
        probe("b", 10_000.0, 1),
        probe("c", 10_000.0, 0),
    ];
    let plan = plan(&input(160 * KIB, probes)).unwrap();
    let a = &plan.probes[0];
    assert_eq!(
        (a.ring_bytes, a.sample_every, a.effective_sampling),
        (16 * KIB, 2, 0.5)
    );
    assert_eq!(a.predicted_drop, 0.0);
    assert_eq!(
        a.reasons.last().unwrap(),
        "sampling 1 in 2 so predicted drops 0% stay within maxDropRate 1%"
    );
    assert_eq!(plan.probes[1].sample_every, 1);
}

#[test]
fn sampling_stops_at_the_smallest_n_that_satisfies_the_drop_rate() {
    // 100000 ev/s bring 5000 records per 50ms drain period into a
    // 128 KiB cap, which holds ⌊131071/56⌋ = 2340 of them.
    // (allowed, N, predicted): N = ceil(5000·(1 − allowed)/2340).
    let cases = [
        (0.0, 3, 0.0),
        (0.01, 3, 0.0),
        (0.1, 2, 1.0 - 2.0 * 2340.0 / 5000.0),
        (0.5, 2, 1.0 - 2.0 * 2340.0 / 5000.0),
        (0.54, 1, 1.0 - 2340.0 / 5000.0),
    ];
    for (allowed, n, predicted) in cases {
        let mut i = input(u64::MAX, vec![probe("p", 100_000.0, 0)]);
        i.max_bytes_per_probe = 128 * KIB;
        i.probes[0].max_drop_rate = allowed;
        let p = only(&i);
        assert_eq!(p.ring_bytes, 128 * KIB);
        assert_eq!(p.sample_every, n, "allowed {allowed}");
        assert!(
            (p.predicted_drop - predicted).abs() < 1e-12,
            "allowed {allowed}"
        );
    }
}

#[test]
fn sampling_gives_up_at_its_bound_and_says_so() {
    // 1e12 ev/s bring 5e10 records per 50ms into one page, which holds
    // ⌊4095/56⌋ = 73: that needs 1 in 6.8e8.
    let mut i = input(u64::MAX, vec![probe("flood", 1e12, 0)]);
    i.max_bytes_per_probe = PAGE;
    let p = only(&i);
    assert_eq!(p.sample_every, MAX_SAMPLE_EVERY);
    let expected = 1.0 - 73.0 * MAX_SAMPLE_EVERY as f64 / 5e10;
    assert!((p.predicted_drop - expected).abs() < 1e-12);
    assert!(
        p.reasons
            .last()
            .unwrap()
            .starts_with("sampling capped at 1 in 1048576")
    );
}

#[test]
fn invalid_inputs_are_rejected_naming_the_field() {
    let field = |f: fn(&mut PlanInput), name: &str| {
        let mut i = input(u64::MAX, vec![probe("p", 1.0, 0)]);
        f(&mut i);
        match plan(&i) {
            Err(PlanError::Field { probe, field, .. }) => {
                assert_eq!((probe.as_str(), field), ("p", name))
            }
            other => panic!("{name}: {other:?}"),
        }
    };
    field(|i| i.probes[0].peak_rate = -1.0, "peakRate");
    field(|i| i.probes[0].peak_rate = f64::NAN, "peakRate");
    field(|i| i.probes[0].peak_rate = f64::INFINITY, "peakRate");
    field(
        |i| i.probes[0].requested_sampling = 0.0,
        "requestedSampling",
    );
    field(
        |i| i.probes[0].requested_sampling = 1.5,
        "requestedSampling",
    );
    field(
        |i| i.probes[0].requested_sampling = 1e-9,
        "requestedSampling",
    );
    field(|i| i.probes[0].burst_factor = 0.5, "burstFactor");
    field(|i| i.probes[0].burst_factor = f64::NAN, "burstFactor");
    field(
        |i| i.probes[0].drain_interval = Duration::ZERO,
        "drainInterval",
    );
    field(|i| i.probes[0].max_drop_rate = 1.0, "maxDropRate");
    field(|i| i.probes[0].max_drop_rate = -0.1, "maxDropRate");

    let mut i = input(u64::MAX, vec![]);
    i.page_size = 3000;
    assert_eq!(plan(&i), Err(PlanError::PageSize(3000)));
    for cap in [0, 2048, 3 * PAGE] {
        i = input(u64::MAX, vec![]);
        i.max_bytes_per_probe = cap;
        assert_eq!(
            plan(&i),
            Err(PlanError::MaxBytesPerProbe {
                max: cap,
                page: PAGE
            })
        );
    }
    i = input(u64::MAX, vec![ProbeDemand::new("big", 70_000, 1.0, 0.0)]);
    i.max_bytes_per_probe = 64 * KIB;
    assert_eq!(
        plan(&i),
        Err(PlanError::RecordTooLarge {
            probe: "big".into(),
            record_bytes: 70_008,
            max: 64 * KIB
        })
    );
}

#[test]
fn a_budget_below_one_page_per_event_path_is_an_error_naming_the_minimum() {
    let probes = vec![
        probe("a", 1e6, 0),
        probe("agg", 0.0, 0),
        ProbeDemand::new("big", 5000, 1.0, 0.0),
    ];
    let err = plan(&input(12 * KIB - 1, probes.clone())).unwrap_err();
    assert_eq!(
        err,
        PlanError::BudgetTooSmall {
            budget_bytes: 12 * KIB - 1,
            minimum_bytes: 12 * KIB
        }
    );
    assert!(err.to_string().contains("12288 B"));
    assert_eq!(plan(&input(12 * KIB, probes)).unwrap().used_bytes, 12 * KIB);
}

fn demand() -> impl Strategy<Value = ProbeDemand> {
    (
        prop::sample::select(vec!["a", "b", "c", "d"]),
        prop_oneof![0u32..=256, 0u32..=20_000],
        prop_oneof![Just(0.0), 0.0..1e3, 0.0..1e7],
        prop_oneof![Just(1.0), 0.001..=1.0],
        1u64..=2_000,
        1.0..8.0,
        prop_oneof![Just(0.0), 0.0..0.5],
        -2i32..=2,
    )
        .prop_map(
            |(name, event_size, rate, sampling, drain_ms, burst, allowed, priority)| ProbeDemand {
                name: name.to_owned(),
                event_size,
                peak_rate: rate,
                requested_sampling: sampling,
                drain_interval: Duration::from_millis(drain_ms),
                burst_factor: burst,
                max_drop_rate: allowed,
                priority,
            },
        )
}

fn plan_input() -> impl Strategy<Value = PlanInput> {
    (
        prop::sample::select(vec![PAGE, 64 * KIB]),
        5u32..=16,
        0u64..=64 << 20,
        prop::collection::vec(demand(), 0..8),
    )
        .prop_map(|(page, cap_shift, budget, probes)| PlanInput {
            page_size: page,
            node_budget_bytes: budget,
            max_bytes_per_probe: page << cap_shift,
            probes,
        })
}

/// Plans that could not be made fail only for lack of budget or room.
fn plan_or_skip(i: &PlanInput) -> Result<Option<Plan>, TestCaseError> {
    match plan(i) {
        Ok(p) => Ok(Some(p)),
        Err(PlanError::BudgetTooSmall { .. } | PlanError::RecordTooLarge { .. }) => Ok(None),
        Err(e) => Err(TestCaseError::fail(e.to_string())),
    }
}

fn floor(i: &PlanInput, p: &ProbePlan) -> u64 {
    i.page_size.max(p.record_bytes.next_power_of_two())
}

proptest! {
    #[test]
    fn rings_are_powers_of_two_from_a_page_to_the_cap_or_zero_without_an_event_path(i in plan_input()) {
        let Some(plan) = plan_or_skip(&i)? else { return Ok(()) };
        prop_assert_eq!(plan.probes.len(), i.probes.len());
        for (d, p) in i.probes.iter().zip(&plan.probes) {
            prop_assert_eq!(&d.name, &p.name);
            if d.peak_rate == 0.0 {
                prop_assert_eq!(p.ring_bytes, 0);
            } else {
                prop_assert!(p.ring_bytes.is_power_of_two());
                prop_assert!(p.ring_bytes >= floor(&i, p) && p.ring_bytes <= i.max_bytes_per_probe);
            }
        }
    }

    #[test]
    fn the_rings_never_exceed_the_budget(i in plan_input()) {
        let Some(plan) = plan_or_skip(&i)? else { return Ok(()) };
        prop_assert_eq!(plan.used_bytes, plan.probes.iter().map(|p| p.ring_bytes).sum::<u64>());
        prop_assert!(plan.used_bytes <= i.node_budget_bytes);
    }

    #[test]
    fn declaring_more_never_yields_a_smaller_ring(i in plan_input(), pick in any::<prop::sample::Index>(), more in 1.0..100.0f64) {
        prop_assume!(!i.probes.is_empty());
        let k = pick.index(i.probes.len());
        let mut busier = i.clone();
        busier.probes[k].peak_rate = (i.probes[k].peak_rate * more).max(1.0);
        let (Some(before), Some(after)) = (plan_or_skip(&i)?, plan_or_skip(&busier)?) else { return Ok(()) };
        prop_assert!(after.probes[k].ring_bytes >= before.probes[k].ring_bytes);
    }

    #[test]
    fn predicted_drops_stay_within_bounds_unless_sampling_hit_its_limit(i in plan_input()) {
        let Some(plan) = plan_or_skip(&i)? else { return Ok(()) };
        for (d, p) in i.probes.iter().zip(&plan.probes) {
            prop_assert!((1..=MAX_SAMPLE_EVERY).contains(&p.sample_every));
            prop_assert_eq!(p.effective_sampling, 1.0 / p.sample_every as f64);
            prop_assert!(p.effective_sampling <= d.requested_sampling);
            prop_assert!((0.0..=1.0).contains(&p.predicted_drop));
            if p.sample_every == MAX_SAMPLE_EVERY && p.predicted_drop > d.max_drop_rate {
                prop_assert!(p.reasons.iter().any(|r| r.starts_with("sampling capped")));
            } else {
                prop_assert!(p.predicted_drop <= d.max_drop_rate, "{:?}", p);
            }
        }
    }

    #[test]
    fn sampling_is_no_sparser_than_it_has_to_be(i in plan_input()) {
        let Some(plan) = plan_or_skip(&i)? else { return Ok(()) };
        for (d, p) in i.probes.iter().zip(&plan.probes) {
            if p.sample_every > sample_every_for(d.requested_sampling) {
                let records = ring_records(p.ring_bytes, p.record_bytes);
                let rate = d.peak_rate / (p.sample_every - 1) as f64;
                let denser = steady_drop(rate, records, drain_period(d.drain_interval));
                prop_assert!(denser > d.max_drop_rate);
            }
        }
    }

    #[test]
    fn the_plan_is_deterministic_and_independent_of_input_order(i in plan_input()) {
        let mut unique = i.clone();
        for (n, p) in unique.probes.iter_mut().enumerate() {
            p.name = format!("{}{n}", p.name);
        }
        let first = plan(&unique);
        prop_assert_eq!(&first, &plan(&unique.clone()));
        let mut reversed = unique.clone();
        reversed.probes.reverse();
        let mut second = plan(&reversed);
        if let Ok(p) = &mut second {
            p.probes.reverse();
        }
        prop_assert_eq!(first, second);
    }

    #[test]
    fn shrinking_takes_lower_priorities_then_larger_rings_first(i in plan_input()) {
        let Some(plan) = plan_or_skip(&i)? else { return Ok(()) };
        let unbounded = super::plan(&PlanInput { node_budget_bytes: u64::MAX, ..i.clone() }).unwrap();
        for (j, shrunk) in plan.probes.iter().enumerate() {
            if shrunk.ring_bytes == unbounded.probes[j].ring_bytes {
                continue;
            }
            for (k, other) in plan.probes.iter().enumerate() {
                let (pj, pk) = (i.probes[j].priority, i.probes[k].priority);
                let above_floor = other.ring_bytes > floor(&i, other);
                prop_assert!(pk >= pj || !above_floor, "{} shrank before lower-priority {}", j, k);
                if pk == pj && above_floor {
                    prop_assert!(other.ring_bytes <= 2 * shrunk.ring_bytes, "{} shrank before larger {}", j, k);
                }
            }
        }
    }
}
