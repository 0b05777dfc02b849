//! When to drain each ring buffer. Pure: the caller passes the time.
//!
//! Records are written without wakeups, so a timer is the only thing that
//! reads them. Each ring is drained every
//! [`drain_period`](ringwarden_core::planner::drain_period) of its
//! ProbeSet's `drainInterval`, the period the planner predicts drops for,
//! on a fixed grid from when the probe started:
//!
//! - a late drain does not push the later ones back, so lateness never adds
//!   up (the average period stays the planned one), and the next gap is
//!   shorter by what this one was late;
//! - drains missed altogether (a stall longer than a period) are skipped,
//!   not run back to back: a drain right after another finds the ring empty
//!   and frees nothing.

use std::time::{Duration, Instant};

use ringwarden_core::planner::drain_period;

/// One ring's drain deadlines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainClock {
    period: Duration,
    next: Instant,
}

impl DrainClock {
    /// A clock for a ring planned with `drain_interval`, whose first drain
    /// is one period after `now`.
    pub fn new(drain_interval: Duration, now: Instant) -> Self {
        let period = drain_period(drain_interval);
        Self {
            period,
            next: now + period,
        }
    }

    pub fn period(&self) -> Duration {
        self.period
    }

    /// When the next drain is due.
    pub fn next(&self) -> Instant {
        self.next
    }

    /// Whether a drain is due at `now`; if so, moves the deadline to the
    /// first grid point after `now`.
    pub fn due(&mut self, now: Instant) -> bool {
        self.late_by(now).is_some()
    }

    /// If a drain is due at `now`, how late it is (zero: on time), and
    /// the deadline moves to the first grid point after `now`.
    pub fn late_by(&mut self, now: Instant) -> Option<Duration> {
        if now < self.next {
            return None;
        }
        let late = now - self.next;
        let missed = late.as_nanos() / self.period.as_nanos();
        // At most u32::MAX periods: further than that is centuries.
        let steps = u32::try_from(missed + 1).unwrap_or(u32::MAX);
        self.next += self.period * steps;
        Some(late)
    }
}

/// The earliest deadline of `clocks`, or `None` without any.
pub fn next_deadline<'a>(clocks: impl IntoIterator<Item = &'a DrainClock>) -> Option<Instant> {
    clocks.into_iter().map(DrainClock::next).min()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_clock_ticks_at_half_the_drain_interval_on_a_fixed_grid() {
        let t0 = Instant::now();
        let mut c = DrainClock::new(100 * MS, t0);
        assert_eq!(c.period(), 50 * MS);
        assert!(!c.due(t0 + 49 * MS));
        // (now, due, next deadline)
        let cases = [
            (50, true, 100),
            (50, false, 100),
            // Late by 7 ms: the next deadline stays on the grid.
            (107, true, 150),
            (150, true, 200),
            // A stall past three deadlines: one drain, the rest skipped.
            (331, true, 350),
            (349, false, 350),
            (350, true, 400),
        ];
        for (at, due, next) in cases {
            assert_eq!(c.due(t0 + at * MS), due, "at {at} ms");
            assert_eq!(c.next(), t0 + next * MS, "after {at} ms");
        }
    }

    #[test]
    fn a_late_drain_says_by_how_much() {
        let t0 = Instant::now();
        let mut c = DrainClock::new(100 * MS, t0);
        assert_eq!(c.late_by(t0 + 10 * MS), None);
        assert_eq!(c.late_by(t0 + 57 * MS), Some(7 * MS));
        // Counted from the first deadline it missed (100 ms).
        assert_eq!(c.late_by(t0 + 230 * MS), Some(130 * MS));
        assert_eq!(c.late_by(t0 + 250 * MS), Some(Duration::ZERO));
    }

    #[test]
    fn the_earliest_ring_sets_the_next_wakeup() {
        let t0 = Instant::now();
        let clocks = [
            DrainClock::new(100 * MS, t0),
            DrainClock::new(40 * MS, t0),
            DrainClock::new(1 * MS, t0),
        ];
        assert_eq!(next_deadline(&clocks), Some(t0 + MS));
        assert_eq!(next_deadline(&clocks[..2]), Some(t0 + 20 * MS));
        assert_eq!(next_deadline(&[]), None);
    }
}
