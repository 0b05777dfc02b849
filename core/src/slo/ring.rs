//! The SLO window's slot rings: counts per slot, indexed by absolute slot
//! number modulo the ring's length. Pure.

use super::{Counts, SnapshotError};

/// A slot's counts.
pub(super) trait Tally: Copy + Default + PartialEq {
    /// The sum, or `None` when a field would overflow: the caller refuses
    /// the increment rather than pin a slot at `u64::MAX` (a pinned pair
    /// of good and total reads as an SLI of 1).
    fn checked_add(self, other: Self) -> Option<Self>;
    /// Adds the fields into `wide` (no sum of slots overflows it).
    fn widen(self, wide: &mut [u128; 4]);
    /// Summed fields back as counts: exact when they fit, otherwise all
    /// divided by one factor, so every ratio between them (the SLI, the
    /// drop rate) is kept.
    fn narrow(wide: [u128; 4]) -> Self;
}

/// `wide` divided by the smallest factor that makes every field fit.
fn narrowed(wide: [u128; 4]) -> [u64; 4] {
    let most = wide.iter().copied().max().unwrap_or(0);
    let factor = most.div_ceil(u128::from(u64::MAX)).max(1);
    wide.map(|n| u64::try_from(n / factor).unwrap_or(u64::MAX))
}

impl Tally for Counts {
    fn checked_add(self, other: Self) -> Option<Self> {
        Some(Self {
            good: self.good.checked_add(other.good)?,
            total: self.total.checked_add(other.total)?,
            observed: self.observed.checked_add(other.observed)?,
            lost: self.lost.checked_add(other.lost)?,
        })
    }

    fn widen(self, wide: &mut [u128; 4]) {
        for (w, n) in wide
            .iter_mut()
            .zip([self.good, self.total, self.observed, self.lost])
        {
            *w += u128::from(n);
        }
    }

    fn narrow(wide: [u128; 4]) -> Self {
        let [good, total, observed, lost] = narrowed(wide);
        Self {
            good,
            total,
            observed,
            lost,
        }
    }
}

/// A burn slot: the exact counters only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Exact {
    pub(super) good: u64,
    pub(super) total: u64,
}

impl Tally for Exact {
    fn checked_add(self, other: Self) -> Option<Self> {
        Some(Self {
            good: self.good.checked_add(other.good)?,
            total: self.total.checked_add(other.total)?,
        })
    }

    fn widen(self, wide: &mut [u128; 4]) {
        wide[0] += u128::from(self.good);
        wide[1] += u128::from(self.total);
    }

    fn narrow(wide: [u128; 4]) -> Self {
        let [good, total, ..] = narrowed(wide);
        Self { good, total }
    }
}

/// Slots indexed by absolute slot number modulo their count. The newest
/// (`head`) is kept by the caller; every slot holds one of the last
/// `len` slot numbers up to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Ring<T> {
    slots: Vec<T>,
}

impl<T: Tally> Ring<T> {
    pub(super) fn new(len: usize) -> Self {
        Self {
            slots: vec![T::default(); len],
        }
    }

    pub(super) fn len(&self) -> u64 {
        self.slots.len() as u64
    }

    pub(super) fn get(&self, i: u64) -> T {
        self.slots[(i % self.len()) as usize]
    }

    pub(super) fn slot(&mut self, i: u64) -> &mut T {
        let len = self.len();
        &mut self.slots[(i % len) as usize]
    }

    /// Moves the newest slot from `head` to `to`, clearing the slots that
    /// come into use: they held counts from a whole ring ago.
    pub(super) fn advance(&mut self, head: u64, to: u64) {
        let from = head
            .saturating_add(1)
            .max(to.saturating_add(1).saturating_sub(self.len()));
        for i in from..=to {
            *self.slot(i) = T::default();
        }
    }

    /// Sum of the `k` slots ending at `at`, of those held (`head <= at`).
    pub(super) fn sum(&self, head: u64, at: u64, k: u64) -> T {
        let oldest = at
            .saturating_add(1)
            .saturating_sub(k)
            .max(head.saturating_add(1).saturating_sub(self.len()));
        let mut wide = [0u128; 4];
        for i in oldest..=head {
            self.slots[(i % self.len()) as usize].widen(&mut wide);
        }
        T::narrow(wide)
    }

    pub(super) fn clear(&mut self) {
        self.slots.fill(T::default());
    }

    /// Non-empty slots as `(age, counts)`, newest (age 0) first.
    pub(super) fn sparse(&self, head: u64) -> Vec<(u32, T)> {
        (0..self.len().min(head.saturating_add(1)))
            .filter_map(|age| {
                let t = self.slots[((head - age) % self.len()) as usize];
                (t != T::default()).then_some((age as u32, t))
            })
            .collect()
    }

    /// Refills from [`Ring::sparse`] output.
    pub(super) fn fill(
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
