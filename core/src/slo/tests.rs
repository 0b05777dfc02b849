//! The SLO evaluator's tests: counting, windows, burn rates, states and
//! snapshots, table-driven and property-based.

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
            ceiling: None,
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
fn streams_silent_for_longer_than_the_window_are_retired() {
    let mut slo = evaluator(99.9, DAY);
    let (mut a, mut b) = (Agent::new("a"), Agent::new("b"));
    let first = a.events(10, 0);
    slo.ingest(at(0), &first);
    slo.ingest(at(86_400), &b.events(1, 0));
    assert_eq!(
        slo.ingest(at(86_400), &a.events(2, 0)),
        Ingest::Counted(counts(2, 2, 2, 0))
    );

    slo.ingest(at(2 * 86_400 + 1), &b.events(1, 0));
    assert!(!slo.streams.contains_key("a"));
    // Its old reports cannot count again.
    assert_eq!(slo.ingest(at(2 * 86_400 + 1), &first), Ingest::Replayed);
    // Should it speak again, its counters are only a baseline: what it
    // counted a window ago has left the window.
    assert_eq!(
        slo.ingest(at(2 * 86_400 + 1), &a.events(3, 0)),
        Ingest::Baseline
    );
    assert_eq!(
        slo.ingest(at(2 * 86_400 + 2), &a.events(4, 0)),
        Ingest::Counted(counts(4, 4, 4, 0))
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
    let retired: Vec<&str> = slo.retired["a"]
        .iter()
        .map(|r| r.boot_id.as_str())
        .collect();
    assert_eq!(retired, ["boot-1", "boot-2"]);
    assert_eq!(slo.evaluate(at(6), None).counts.total, 6);
}

#[test]
fn an_evicted_boot_id_cannot_count_its_reports_again() {
    let mut slo = evaluator(99.9, DAY);
    let mut agent = Agent::new("a");
    agent.restart("boot-1");
    slo.ingest(at(1), &agent.events(5, 0));
    let last = agent.events(5, 0);
    slo.ingest(at(2), &last);
    let first_of_boot = Report {
        seq: 1,
        ..last.clone()
    };
    for boot in 2..=5 {
        agent.restart(&format!("boot-{boot}"));
        slo.ingest(at(boot), &agent.events(1, 0));
    }
    let before = slo.evaluate(at(10), None);
    assert_eq!(before.counts.total, 14);
    // Replayed as it was, or its boot id recycled from seq 1: refused.
    assert!(slo.is_replay("a", "boot-1", last.seq));
    assert!(!slo.is_replay("a", "boot-1", last.seq + 1));
    assert!(!slo.is_replay("a", "boot-5", 1));
    assert_eq!(slo.ingest(at(10), &last), Ingest::Replayed);
    assert_eq!(slo.ingest(at(10), &first_of_boot), Ingest::Replayed);
    assert_eq!(slo.ingest_from_start(at(10), &last), Ingest::Replayed);
    assert_eq!(slo.evaluate(at(10), None), before);
    assert!(!slo.streams["a"].iter().any(|s| s.boot_id == "boot-1"));
    // Still running after all, it counts again from its next report.
    let mut alive = Agent(last);
    assert_eq!(slo.ingest(at(11), &alive.events(7, 0)), Ingest::Baseline);
    assert_eq!(
        slo.ingest(at(12), &alive.events(1, 0)),
        Ingest::Counted(counts(1, 1, 1, 0))
    );
}

#[test]
fn retired_streams_are_remembered_for_a_window_and_at_most_so_many_per_node() {
    let mut slo = evaluator(99.9, DAY);
    let mut agent = Agent::new("a");
    let boots = MAX_STREAMS_PER_NODE + MAX_RETIRED_PER_NODE + 2;
    let mut firsts = Vec::new();
    for boot in 1..=boots {
        agent.restart(&format!("boot-{boot}"));
        let r = agent.events(1, 0);
        slo.ingest(at(boot as u64), &r);
        firsts.push(r);
    }
    assert_eq!(slo.retired["a"].len(), MAX_RETIRED_PER_NODE);
    // The two retired longest ago were forgotten: at seq 1 they count again.
    for (i, r) in firsts.iter().enumerate().take(boots - MAX_STREAMS_PER_NODE) {
        let expected = if i < 2 {
            Ingest::NewStream(counts(1, 1, 1, 0))
        } else {
            Ingest::Replayed
        };
        let mut probe = slo.clone();
        assert_eq!(probe.ingest(at(100), r), expected, "{}", r.boot_id);
    }
    // A window after they were retired, none is remembered (the streams
    // kept until now, silent for a window, are retired in their turn).
    slo.ingest(at(100 + 86_401), &agent.events(1, 0));
    let retired: Vec<&str> = slo.retired["a"]
        .iter()
        .map(|r| r.boot_id.as_str())
        .collect();
    assert_eq!(
        retired,
        [
            format!("boot-{}", boots - 3),
            format!("boot-{}", boots - 2),
            format!("boot-{}", boots - 1)
        ]
    );
    assert_eq!(
        slo.ingest(at(100 + 86_401), &firsts[5]),
        Ingest::NewStream(counts(1, 1, 1, 0))
    );
}

#[test]
fn a_boot_first_seen_after_its_first_report_is_only_a_baseline() {
    let mut slo = evaluator(99.9, MONTH);
    let mut agent = Agent::new("a");
    agent.add(500, 500, 0);
    agent.0.seq = 40;
    assert_eq!(slo.ingest(at(0), &agent.events(1, 0)), Ingest::Baseline);
    assert_eq!(slo.evaluate(at(0), None).counts, Counts::default());
    assert_eq!(
        slo.ingest(at(10), &agent.events(3, 1)),
        Ingest::Counted(counts(3, 4, 4, 0))
    );
    // A caller that saw the boot from its start vouches for it.
    let mut vouched = evaluator(99.9, MONTH);
    let mut other = Agent::new("b");
    other.add(10, 0, 0);
    other.0.seq = 40;
    assert_eq!(
        vouched.ingest_from_start(at(0), &other.next()),
        Ingest::NewStream(counts(10, 10, 10, 0))
    );
}

#[test]
fn a_forgotten_node_counts_from_its_next_report() {
    let mut slo = evaluator(99.9, DAY);
    let mut agent = Agent::new("a");
    slo.ingest(at(0), &agent.events(10, 0));
    assert!(slo.forget_node("a"));
    assert!(!slo.forget_node("a"));
    assert_eq!(slo.ingest(at(1), &agent.events(1, 0)), Ingest::Baseline);
    assert_eq!(
        slo.ingest(at(2), &agent.events(1, 0)),
        Ingest::Counted(counts(1, 1, 1, 0))
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
fn retired_streams_survive_a_snapshot_and_older_snapshots_have_none() {
    let mut slo = evaluator(99.9, DAY);
    let mut agent = Agent::new("a");
    let mut firsts = Vec::new();
    for boot in 1..=MAX_STREAMS_PER_NODE + 1 {
        agent.restart(&format!("boot-{boot}"));
        let r = agent.events(1, 0);
        slo.ingest(at(boot as u64), &r);
        firsts.push(r);
    }
    let json = serde_json::to_value(slo.snapshot()).unwrap();
    assert_eq!(json["retired"]["a"][0]["bootId"], "boot-1");
    let mut restored = SloEvaluator::restore(
        spec(99.9, DAY),
        serde_json::from_value(json.clone()).unwrap(),
    )
    .unwrap();
    assert_eq!(restored.ingest(at(20), &firsts[0]), Ingest::Replayed);

    let mut older = json;
    older.as_object_mut().unwrap().remove("retired");
    let restored =
        SloEvaluator::restore(spec(99.9, DAY), serde_json::from_value(older).unwrap()).unwrap();
    assert!(restored.retired.is_empty());
    assert_eq!(restored.streams, slo.streams);
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
    let broken: [(Breaking, SnapshotError); 13] = [
        (
            |s, _| s.retired.insert("b".into(), Vec::new()).map_or((), drop),
            SnapshotError::Retired { node: "b".into() },
        ),
        (
            |s, t| {
                let r = Retired {
                    boot_id: t.boot_id.clone(),
                    seq: 1,
                    retired_ms: s.latest_ms + 1,
                };
                s.retired.insert("a".into(), vec![r]).map_or((), drop)
            },
            SnapshotError::Retired { node: "a".into() },
        ),
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

#[test]
fn an_slo_series_covers_the_same_series_kept_per_process() {
    assert!(series_covers("read", "read"));
    assert!(series_covers("gc-pause", "gc-pause (pid 4242)"));
    assert!(!series_covers("gc-pause", "gc-pause (pid )"));
    assert!(!series_covers("gc-pause", "gc-pause (pid 12x)"));
    assert!(!series_covers("gc", "gc-pause (pid 1)"));
    assert!(!series_covers("read", "readv"));
    assert_eq!(series_family("gc-pause (pid 4242)"), Some("gc-pause"));
    assert_eq!(series_family("a (pid 1) (pid 2)"), Some("a (pid 1)"));
    assert_eq!(series_family("gc-pause (pid )"), None);
    assert_eq!(series_family("read"), None);
}

proptest! {
    /// Looking a series up by its name and its family finds exactly the
    /// SLO names that cover it.
    #[test]
    fn a_series_is_covered_by_its_name_or_its_family_alone(
        named in "[a-c]{1,3}( \\(pid [0-9]{0,2}\\))?",
        name in "[a-c]{1,3}( \\(pid [0-9x]{0,2}\\)){0,2}",
    ) {
        // The rule spelled out: the same name, or it followed by a pid.
        let by_prefix = name == named
            || name
                .strip_prefix(named.as_str())
                .and_then(|rest| rest.strip_prefix(" (pid "))
                .and_then(|rest| rest.strip_suffix(')'))
                .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()));
        prop_assert_eq!(series_covers(&named, &name), by_prefix);
        prop_assert_eq!(
            by_prefix,
            name == named || series_family(&name) == Some(named.as_str())
        );
    }
}

mod properties;

/// What one CPU of the tests' nodes can count a second, times two CPUs.
const CEILING: u64 = 2 * 10_000_000;

fn paced(node: &str) -> Agent {
    let mut a = Agent::new(node);
    a.0.ceiling = Some(CEILING);
    a
}

#[test]
fn a_node_reporting_u64_max_good_and_total_cannot_pin_the_sli_of_ten_honest_nodes() {
    let mut slo = evaluator(99.0, DAY);
    let mut honest: Vec<Agent> = (0..10).map(|n| paced(&format!("honest-{n}"))).collect();
    let mut hostile = paced("hostile");
    for minute in 0..60 {
        let now = at(minute * 60);
        for a in &mut honest {
            // 90 % good: well below the 99 % target.
            let r = a.events(9_000, 1_000);
            assert!(matches!(
                slo.ingest(now, &r),
                Ingest::NewStream(_) | Ingest::Counted(_)
            ));
        }
        // A new boot each minute, so each report would count in full.
        hostile.restart(&format!("boot-{minute}"));
        hostile.0.good = u64::MAX;
        hostile.0.total = u64::MAX;
        hostile.0.loss.observed = u64::MAX;
        let r = hostile.next();
        assert_eq!(slo.ingest(now, &r), Ingest::Implausible, "minute {minute}");
        // Or the same boot going on: at most a baseline, nothing counted.
        let r = hostile.next();
        assert_eq!(slo.ingest(now, &r).added(), Counts::default());
    }
    for later in [at(3_600), at(3_600 + 3_600)] {
        let status = slo.evaluate(later, None);
        assert_eq!(status.state, SloState::Breached);
        assert_eq!(status.counts.total, 10 * 60 * 10_000);
        assert!(close(status.sli, 0.9), "{:?}", status.sli);
    }
}

#[test]
fn a_stream_counts_at_most_its_ceiling_over_time_plus_the_burst() {
    let mut slo = evaluator(99.0, DAY);
    let mut a = paced("a");
    let burst = CEILING * PLAUSIBLE_BURST.as_secs();
    // Its first report may carry the whole burst.
    assert!(matches!(
        slo.ingest(at(0), &a.events(burst, 0)),
        Ingest::NewStream(_)
    ));
    // Nothing more at once: an event past the ceiling is refused, and
    // changes nothing.
    let over = a.events(1, 0);
    assert_eq!(slo.ingest(at(0), &over), Ingest::Implausible);
    assert_eq!(slo.evaluate(at(0), None).counts.total, burst);
    // Ten seconds later, ten seconds' worth counts, from the same baseline
    // (the refused event with them).
    let later = a.events(CEILING * 10 - 1, 0);
    assert!(matches!(slo.ingest(at(10), &later), Ingest::Counted(c) if c.total == CEILING * 10));
    assert_eq!(slo.ingest(at(10), &a.events(1, 0)), Ingest::Implausible);
    // A counter reset is counted from zero, within the same bound.
    a.install_threshold(1);
    // (Its probe's `observed` also holds the event refused above.)
    let reset = a.events(CEILING * 5 - 1, 0);
    assert!(matches!(slo.ingest(at(15), &reset), Ingest::Reset(c) if c.total == CEILING * 5 - 1));
    // More good than total, beyond a second of events in flight.
    a.0.good = a.0.total + CEILING + 1;
    let r = a.next();
    assert_eq!(slo.ingest(at(20), &r), Ingest::Implausible);
}

#[test]
fn window_sums_past_u64_keep_the_sli_instead_of_pinning_it_at_one() {
    // No ceiling (a standalone agent's own node), counts near u64::MAX a
    // slot: the window's sum is over u64, its ratio still 90 %.
    let mut slo = evaluator(99.0, DAY);
    let tenth = u64::MAX / 40;
    for node in 0..4 {
        let mut a = Agent::new(&format!("n{node}"));
        let r = a.events(9 * tenth, tenth);
        // A slot each (30 units of a day are an hour).
        let got = slo.ingest(at(node * 3_600), &r);
        assert!(matches!(got, Ingest::NewStream(_)), "{got:?}");
    }
    let status = slo.evaluate(at(4 * 3_600), None);
    assert_eq!(status.state, SloState::Breached);
    assert!(close(status.sli, 0.9), "{:?}", status.sli);
    // Into one slot: what would overflow it is refused, not saturated.
    let mut b = Agent::new("b");
    let r = b.events(9 * tenth * 4, tenth * 4);
    assert_eq!(slo.ingest(at(3 * 3_600 + 1), &r), Ingest::Implausible);
    assert!(close(slo.evaluate(at(4 * 3_600), None).sli, 0.9));
}

#[test]
fn only_a_snapshot_with_counts_restores_with_a_gap_to_land() {
    let mut slo = evaluator(99.0, DAY);
    assert!(!slo.snapshot().has_counts(), "never reported");
    let mut a = Agent::new("n1");
    // A baseline of nothing counted: nothing can land at once.
    slo.ingest(at(10), &a.events(0, 0));
    assert!(
        !slo.snapshot().has_counts(),
        "a stream, but no event counted"
    );
    slo.ingest(at(20), &a.events(5, 1));
    assert!(slo.snapshot().has_counts());
}
