//! Property-based tests of the SLO evaluator: ranges, replays, splits,
//! delivery order and restores, over arbitrary small clusters.

use super::*;

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
                ceiling: None,
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
        let expected = increments.iter().fold(Counts::default(), |c, &(_, good, bad, lost)| {
            c.checked_add(counts(good, good + bad, good + bad + lost, lost)).unwrap()
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
        let expected = last_of_boot.values().fold(Counts::default(), |c, r| {
            c.checked_add(counts(r.good, r.total, r.loss.observed, r.loss.pairing_dropped))
                .unwrap()
        });
        // The operator has seen each boot from its start; the evaluator
        // sees the reports in any order.
        let mut slo = evaluator(99.9, MONTH);
        for i in order.into_iter().filter(|&i| i < reports.len()) {
            slo.ingest_from_start(at(0), &reports[i].1);
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
