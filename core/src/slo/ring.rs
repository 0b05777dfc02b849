//! The SLO window's slot rings: counts per slot, indexed by absolute slot
//! number modulo the ring's length. Pure.

use super::{Counts, SnapshotError};

/// A slot's counts.
pub(super) trait Tally: Copy + Default + PartialEq {
    fn add(&mut self, other: Self);
}

impl Tally for Counts {
    // Saturating: a pinned counter is visibly wrong, a wrapped one is not.
    fn add(&mut self, other: Self) {
        self.good = self.good.saturating_add(other.good);
        self.total = self.total.saturating_add(other.total);
        self.observed = self.observed.saturating_add(other.observed);
        self.lost = self.lost.saturating_add(other.lost);
    }
}

/// A burn slot: the exact counters only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Exact {
    pub(super) good: u64,
    pub(super) total: u64,
}

impl Tally for Exact {
    fn add(&mut self, other: Self) {
        self.good = self.good.saturating_add(other.good);
        self.total = self.total.saturating_add(other.total);
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
        let mut total = T::default();
        for i in oldest..=head {
            total.add(self.slots[(i % self.len()) as usize]);
        }
        total
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
