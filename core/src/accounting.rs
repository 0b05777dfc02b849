//! Loss accounting: the kernel's per-CPU counters summed into one figure per
//! probe, and the identities that must hold between them.

use ringwarden_ebpf_common::ProbeCounters;
use serde::{Deserialize, Serialize};

/// A probe's loss-accounting counters, summed over CPUs (cumulative since load).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counters {
    pub observed: u64,
    pub aggregated: u64,
    pub sampled_out: u64,
    pub pairing_dropped: u64,
    pub exported: u64,
    pub delivered: u64,
    pub ringbuf_dropped: u64,
    /// Diagnostic: starts that could not be stored (their exits are in `pairing_dropped`).
    pub start_map_full: u64,
    /// Diagnostic: aggregated events that fell into the overflow series.
    pub series_folded: u64,
}

/// A broken identity, with the numbers that broke it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "observed {observed} != aggregated {aggregated} + sampled_out {sampled_out} + pairing_dropped {pairing_dropped}"
    )]
    Observed {
        observed: u64,
        aggregated: u64,
        sampled_out: u64,
        pairing_dropped: u64,
    },
    #[error("exported {exported} != delivered {delivered} + ringbuf_dropped {ringbuf_dropped}")]
    Exported {
        exported: u64,
        delivered: u64,
        ringbuf_dropped: u64,
    },
}

impl Counters {
    /// Sums the per-CPU values the kernel keeps. Wrapping adds: the kernel's
    /// own counters wrap, and a sum must not panic on corrupt input.
    pub fn from_per_cpu(values: &[ProbeCounters]) -> Self {
        values.iter().fold(Self::default(), |acc, c| Self {
            observed: acc.observed.wrapping_add(c.observed),
            aggregated: acc.aggregated.wrapping_add(c.aggregated),
            sampled_out: acc.sampled_out.wrapping_add(c.sampled_out),
            pairing_dropped: acc.pairing_dropped.wrapping_add(c.pairing_dropped),
            exported: acc.exported.wrapping_add(c.exported),
            delivered: acc.delivered.wrapping_add(c.delivered),
            ringbuf_dropped: acc.ringbuf_dropped.wrapping_add(c.ringbuf_dropped),
            start_map_full: acc.start_map_full.wrapping_add(c.start_map_full),
            series_folded: acc.series_folded.wrapping_add(c.series_folded),
        })
    }

    /// Checks `observed = aggregated + sampled_out + pairing_dropped` and
    /// `exported = delivered + ringbuf_dropped`.
    ///
    /// Only meaningful for a snapshot taken while no event is in flight
    /// between two counter updates (tests quiesce the workload first); a live
    /// read may catch a program between its two increments.
    pub fn check_identities(&self) -> Result<(), IdentityError> {
        let parts = self
            .aggregated
            .wrapping_add(self.sampled_out)
            .wrapping_add(self.pairing_dropped);
        if self.observed != parts {
            return Err(IdentityError::Observed {
                observed: self.observed,
                aggregated: self.aggregated,
                sampled_out: self.sampled_out,
                pairing_dropped: self.pairing_dropped,
            });
        }
        if self.exported != self.delivered.wrapping_add(self.ringbuf_dropped) {
            return Err(IdentityError::Exported {
                exported: self.exported,
                delivered: self.delivered,
                ringbuf_dropped: self.ringbuf_dropped,
            });
        }
        Ok(())
    }

    /// Fraction of exported events the ring buffer dropped; 0 when none
    /// were exported. The measured figure the plan's predicted drop is
    /// compared with.
    pub fn ringbuf_drop(&self) -> f64 {
        if self.exported == 0 {
            0.0
        } else {
            self.ringbuf_dropped as f64 / self.exported as f64
        }
    }

    /// Counters accumulated since `earlier` (saturating: a counter never goes back).
    pub fn delta_since(&self, earlier: &Self) -> Self {
        Self {
            observed: self.observed.saturating_sub(earlier.observed),
            aggregated: self.aggregated.saturating_sub(earlier.aggregated),
            sampled_out: self.sampled_out.saturating_sub(earlier.sampled_out),
            pairing_dropped: self.pairing_dropped.saturating_sub(earlier.pairing_dropped),
            exported: self.exported.saturating_sub(earlier.exported),
            delivered: self.delivered.saturating_sub(earlier.delivered),
            ringbuf_dropped: self.ringbuf_dropped.saturating_sub(earlier.ringbuf_dropped),
            start_map_full: self.start_map_full.saturating_sub(earlier.start_map_full),
            series_folded: self.series_folded.saturating_sub(earlier.series_folded),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(observed: u64, aggregated: u64, pairing_dropped: u64) -> ProbeCounters {
        ProbeCounters {
            observed,
            aggregated,
            pairing_dropped,
            ..Default::default()
        }
    }

    #[test]
    fn the_ringbuf_drop_is_dropped_over_exported_and_zero_without_exports() {
        let c = Counters {
            exported: 1000,
            delivered: 682,
            ringbuf_dropped: 318,
            ..Default::default()
        };
        assert_eq!(c.ringbuf_drop(), 318.0 / 1000.0);
        assert_eq!(Counters::default().ringbuf_drop(), 0.0);
    }

    #[test]
    fn per_cpu_values_sum_field_by_field() {
        let c = Counters::from_per_cpu(&[cpu(10, 7, 3), cpu(5, 5, 0)]);
        assert_eq!((c.observed, c.aggregated, c.pairing_dropped), (15, 12, 3));
        assert_eq!(c.check_identities(), Ok(()));
    }

    #[test]
    fn a_missing_event_breaks_the_observed_identity() {
        let c = Counters::from_per_cpu(&[cpu(10, 7, 2)]);
        assert_eq!(
            c.check_identities(),
            Err(IdentityError::Observed {
                observed: 10,
                aggregated: 7,
                sampled_out: 0,
                pairing_dropped: 2
            })
        );
    }

    #[test]
    fn a_lost_export_breaks_the_exported_identity() {
        let c = Counters {
            exported: 5,
            delivered: 3,
            ringbuf_dropped: 1,
            ..Default::default()
        };
        assert!(matches!(
            c.check_identities(),
            Err(IdentityError::Exported { .. })
        ));
    }

    #[test]
    fn delta_since_subtracts_and_never_goes_negative() {
        let a = Counters::from_per_cpu(&[cpu(10, 8, 2)]);
        let b = Counters::from_per_cpu(&[cpu(25, 20, 5)]);
        let d = b.delta_since(&a);
        assert_eq!((d.observed, d.aggregated, d.pairing_dropped), (15, 12, 3));
        assert_eq!(a.delta_since(&b), Counters::default());
    }
}
