//! Kernel event times on the wall clock.
//!
//! The kernel stamps events with `bpf_ktime_get_ns()`, CLOCK_MONOTONIC:
//! steady, but counted from boot. Logs and traces carry wall-clock time
//! (CLOCK_REALTIME), which NTP slews and an administrator may step. The
//! offset between the two is measured again at every drain, so a step or
//! drift of the node's clock moves event times with it within one drain
//! interval, instead of skewing every later event by a fixed offset taken
//! once at start.

use k8s_openapi::jiff::Timestamp;

/// The offset from CLOCK_MONOTONIC to CLOCK_REALTIME, as last measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WallClock {
    /// Realtime minus monotonic, nanoseconds.
    offset_ns: i128,
    /// Half the narrowest realtime window a monotonic read fell in: how far
    /// the offset may be off, from the measurement alone.
    pub uncertainty_ns: u64,
}

fn now_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; both clocks always exist
    // on Linux, so the call cannot fail.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

impl WallClock {
    /// Reads realtime, monotonic, realtime a few times and keeps the
    /// reading with the narrowest realtime window (the least disturbed by
    /// preemption).
    pub fn measure() -> Self {
        (0..5)
            .map(|_| {
                let before = now_ns(libc::CLOCK_REALTIME);
                let mono = now_ns(libc::CLOCK_MONOTONIC);
                let after = now_ns(libc::CLOCK_REALTIME);
                Self {
                    offset_ns: before + (after - before) / 2 - mono,
                    uncertainty_ns: u64::try_from((after - before).max(0) / 2).unwrap_or(u64::MAX),
                }
            })
            .min_by_key(|c| c.uncertainty_ns)
            .expect("five readings")
    }

    /// The wall-clock time of a kernel timestamp, in nanoseconds since the
    /// Unix epoch.
    pub fn wall_ns(&self, monotonic_ns: u64) -> i128 {
        i128::from(monotonic_ns) + self.offset_ns
    }

    /// The wall-clock time of a kernel timestamp in RFC 3339, UTC, to the
    /// nanosecond (`2026-12-04T10:40:00.123456789Z`).
    pub fn rfc3339(&self, monotonic_ns: u64) -> String {
        Timestamp::from_nanosecond(self.wall_ns(monotonic_ns))
            .map(|t| format!("{t:.9}"))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_on_the_monotonic_clock_is_now_on_the_wall_clock() {
        let clock = WallClock::measure();
        let mono = now_ns(libc::CLOCK_MONOTONIC);
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i128;
        let diff = (clock.wall_ns(u64::try_from(mono).unwrap()) - wall).abs();
        assert!(diff < 5_000_000, "{diff} ns apart");
        assert!(clock.uncertainty_ns < 1_000_000, "{clock:?}");
    }

    #[test]
    fn times_are_rfc3339_to_the_nanosecond() {
        let clock = WallClock {
            offset_ns: 1_800_000_000_000_000_000,
            uncertainty_ns: 0,
        };
        assert_eq!(clock.rfc3339(123_456_789), "2027-01-15T08:00:00.123456789Z");
    }
}
