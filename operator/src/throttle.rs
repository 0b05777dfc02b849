//! Keeps repeated errors from flooding the log: of the errors of one
//! kind at one site, the first is logged, then at most one summary per
//! period saying how many were left out. No IO, no clock: callers pass
//! `now`.
//!
//! An API server outage makes every loop that talks to it fail every few
//! seconds; without this, 75 s of outage wrote a hundred lines saying the
//! same thing.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

/// How often a repeated error is logged at most.
pub const EVERY: Duration = Duration::from_secs(60);

/// What to do with one error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Log it; `suppressed` like it were left out since the last line.
    Log { suppressed: u64 },
    /// Leave it out (it is counted for the next line).
    Suppress,
}

impl Verdict {
    /// Whether to log, and how many were left out before.
    pub fn suppressed(self) -> Option<u64> {
        match self {
            Self::Log { suppressed } => Some(suppressed),
            Self::Suppress => None,
        }
    }
}

#[derive(Debug)]
struct Site {
    last: Instant,
    suppressed: u64,
}

/// A limiter of log lines, keyed by site and kind of error
/// (`("lease", "unreachable")`). Shared by reference; cheap to ask.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    sites: Mutex<HashMap<(&'static str, &'static str), Site>>,
}

impl Default for Throttle {
    fn default() -> Self {
        Self::new(EVERY)
    }
}

impl Throttle {
    /// At most one line per `every` for each key after the first.
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            sites: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the error of `kind` at `site`, seen at `now`, is logged.
    pub fn check(&self, site: &'static str, kind: &'static str, now: Instant) -> Verdict {
        let mut sites = self.sites.lock().unwrap_or_else(PoisonError::into_inner);
        match sites.get_mut(&(site, kind)) {
            None => {
                sites.insert(
                    (site, kind),
                    Site {
                        last: now,
                        suppressed: 0,
                    },
                );
                Verdict::Log { suppressed: 0 }
            }
            Some(s) if now.saturating_duration_since(s.last) >= self.every => {
                s.last = now;
                Verdict::Log {
                    suppressed: std::mem::take(&mut s.suppressed),
                }
            }
            Some(s) => {
                s.suppressed += 1;
                Verdict::Suppress
            }
        }
    }

    /// The errors at `site` stopped (the call succeeded): the next one is
    /// logged at once. Returns how many were left out since the last line.
    pub fn clear(&self, site: &'static str) -> u64 {
        let mut sites = self.sites.lock().unwrap_or_else(PoisonError::into_inner);
        let mut left_out = 0;
        sites.retain(|(s, _), v| {
            if *s == site {
                left_out += v.suppressed;
                false
            } else {
                true
            }
        });
        left_out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_error_is_logged_then_one_summary_a_minute_with_the_count() {
        let t = Throttle::default();
        let start = Instant::now();
        assert_eq!(
            t.check("lease", "unreachable", start),
            Verdict::Log { suppressed: 0 }
        );
        // An outage of 75 s, one failure every 2 s.
        let mut logged = vec![];
        for i in 1..=37u64 {
            let now = start + Duration::from_secs(2 * i);
            if let Verdict::Log { suppressed } = t.check("lease", "unreachable", now) {
                logged.push((2 * i, suppressed));
            }
        }
        assert_eq!(logged, [(60, 29)]);
    }

    #[test]
    fn kinds_and_sites_are_limited_apart() {
        let t = Throttle::default();
        let now = Instant::now();
        assert!(t.check("lease", "unreachable", now).suppressed().is_some());
        assert!(t.check("lease", "forbidden", now).suppressed().is_some());
        assert!(
            t.check("snapshot", "unreachable", now)
                .suppressed()
                .is_some()
        );
        assert_eq!(t.check("lease", "unreachable", now), Verdict::Suppress);
    }

    #[test]
    fn a_success_resets_the_site_and_reports_what_was_left_out() {
        let t = Throttle::new(Duration::from_secs(60));
        let now = Instant::now();
        t.check("lease", "unreachable", now);
        t.check("lease", "unreachable", now + Duration::from_secs(1));
        t.check("lease", "unreachable", now + Duration::from_secs(2));
        t.check("other", "unreachable", now);
        t.check("other", "unreachable", now);
        assert_eq!(t.clear("lease"), 2);
        assert_eq!(
            t.check("lease", "unreachable", now + Duration::from_secs(3)),
            Verdict::Log { suppressed: 0 }
        );
        assert_eq!(t.check("other", "unreachable", now), Verdict::Suppress);
    }
}
