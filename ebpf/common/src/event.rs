//! Decoding ring-buffer records in user space: no allocation, no panic.
//!
//! A record is trusted only after its length and layout magic check out; a
//! short, long or foreign record is an error the caller counts, never UB.

use crate::{COMM_LEN, EVENT_ERROR, EVENT_MAGIC, Event};

/// Why a ring-buffer record is not an [`Event`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The record is not `size_of::<Event>()` bytes long.
    Length(usize),
    /// The layout magic does not match (a different or corrupted layout).
    Magic(u32),
    /// Flag bits this layout does not define are set.
    Flags(u32),
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Length(n) => write!(
                f,
                "record of {n} bytes, expected {}",
                core::mem::size_of::<Event>()
            ),
            Self::Magic(m) => write!(f, "record magic {m:#010x}, expected {EVENT_MAGIC:#010x}"),
            Self::Flags(x) => write!(f, "record flags {x:#x} has undefined bits"),
        }
    }
}

/// Reads one record.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    if bytes.len() != core::mem::size_of::<Event>() {
        return Err(DecodeError::Length(bytes.len()));
    }
    // SAFETY: the length matches and `Event` is plain integers with no
    // padding, so any bytes are a valid value; `read_unaligned` because ring
    // buffer records are only 8-byte aligned by convention, not by type.
    let ev = unsafe { bytes.as_ptr().cast::<Event>().read_unaligned() };
    if ev.magic != EVENT_MAGIC {
        return Err(DecodeError::Magic(ev.magic));
    }
    if ev.flags & !EVENT_ERROR != 0 {
        return Err(DecodeError::Flags(ev.flags));
    }
    Ok(ev)
}

/// The comm as text: up to the first NUL, invalid UTF-8 replaced by `?`.
pub fn comm_str<'a>(comm: &[u8; COMM_LEN], out: &'a mut [u8; COMM_LEN]) -> &'a str {
    let n = comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
    for (o, &c) in out.iter_mut().zip(&comm[..n]) {
        *o = if c.is_ascii_graphic() || c == b' ' {
            c
        } else {
            b'?'
        };
    }
    // All bytes are ASCII now.
    core::str::from_utf8(&out[..n]).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bytes_of(ev: &Event) -> [u8; core::mem::size_of::<Event>()] {
        // SAFETY: plain integers, no padding.
        unsafe { core::mem::transmute_copy(ev) }
    }

    fn sample() -> Event {
        let mut comm = [0u8; COMM_LEN];
        comm[..4].copy_from_slice(b"curl");
        Event {
            ts_ns: 1,
            latency_ns: 2_000,
            cgroup_id: 3,
            pid: 4,
            tgid: 5,
            comm,
            flags: EVENT_ERROR,
            magic: EVENT_MAGIC,
            ..Default::default()
        }
    }

    #[test]
    fn a_record_round_trips() {
        let ev = sample();
        assert_eq!(decode(&bytes_of(&ev)), Ok(ev));
    }

    #[test]
    fn truncated_and_foreign_records_are_errors() {
        let ev = sample();
        let b = bytes_of(&ev);
        assert_eq!(decode(&b[..40]), Err(DecodeError::Length(40)));
        assert_eq!(decode(&[]), Err(DecodeError::Length(0)));
        let mut bad = ev;
        bad.magic = 7;
        assert_eq!(decode(&bytes_of(&bad)), Err(DecodeError::Magic(7)));
        bad = ev;
        bad.flags = 0x80;
        assert_eq!(decode(&bytes_of(&bad)), Err(DecodeError::Flags(0x80)));
    }

    #[test]
    fn comm_is_made_printable() {
        let mut out = [0u8; COMM_LEN];
        let mut comm = [0u8; COMM_LEN];
        comm[..5].copy_from_slice(b"a\nb\xffc");
        assert_eq!(comm_str(&comm, &mut out), "a?b?c");
        assert_eq!(comm_str(&[b'x'; COMM_LEN], &mut out).len(), COMM_LEN);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Any bytes, of any length: an error or an event, never a panic;
        /// an accepted record always carries the magic and defined flags.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(ev) = decode(&bytes) {
                prop_assert_eq!(ev.magic, EVENT_MAGIC);
                prop_assert_eq!(ev.flags & !EVENT_ERROR, 0);
                prop_assert_eq!(bytes.len(), core::mem::size_of::<Event>());
            }
        }

        /// Corrupting the magic of a valid record is always caught.
        #[test]
        fn a_flipped_magic_bit_is_caught(bit in 0u32..32) {
            let mut ev = sample();
            ev.magic ^= 1 << bit;
            prop_assert_eq!(decode(&bytes_of(&ev)), Err(DecodeError::Magic(ev.magic)));
        }

        #[test]
        fn every_valid_record_decodes_to_itself(
            ts in any::<u64>(), lat in any::<u64>(), pid in any::<u32>(), err in any::<bool>(),
            comm in any::<[u8; COMM_LEN]>(),
        ) {
            let ev = Event { ts_ns: ts, latency_ns: lat, pid, comm, flags: err as u32,
                             magic: EVENT_MAGIC, ..Default::default() };
            prop_assert_eq!(decode(&bytes_of(&ev)), Ok(ev));
        }
    }
}
