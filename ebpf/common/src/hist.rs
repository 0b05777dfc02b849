//! Log-linear latency buckets (HDR-histogram style), shared bit for bit by the
//! kernel programs and user space.
//!
//! Values below `2^(SUB_BITS+1)` ns get one bucket each. Above that, every
//! power-of-two octave `[2^e, 2^(e+1))` is cut into `2^SUB_BITS` equal
//! buckets, so a bucket's width is at most `1/2^SUB_BITS` of its lower bound.
//! Reporting a bucket's midpoint therefore errs by at most `1/2^(SUB_BITS+1)`
//! (1.6 % with 5 sub-bits), inside the 3 % the design asks for. Values at or
//! above `2^(MAX_EXP+1)` ns (about 68.7 s) share the last bucket.

/// Sub-bucket bits per octave.
pub const HIST_SUB_BITS: u32 = 5;
const SUB: u64 = 1 << HIST_SUB_BITS;
/// Largest octave exponent with buckets of its own.
pub const HIST_MAX_EXP: u32 = 35;
/// Number of buckets: `SUB` exact ones, then `SUB` per octave from `SUB_BITS` to `MAX_EXP`.
pub const HIST_BUCKETS: usize = ((HIST_MAX_EXP - HIST_SUB_BITS + 2) as usize) << HIST_SUB_BITS;
const _: () = assert!(HIST_BUCKETS == 1024);

/// `floor(log2(v))` for `v > 0`, as a fixed six-step search: no loop and no
/// count-leading-zeros instruction, which BPF lacks.
#[inline(always)]
pub const fn log2_floor(mut v: u64) -> u32 {
    let mut r = 0;
    if v >= 1 << 32 {
        v >>= 32;
        r += 32;
    }
    if v >= 1 << 16 {
        v >>= 16;
        r += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        r += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        r += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        r += 2;
    }
    if v >= 1 << 1 {
        r += 1;
    }
    r
}

/// Bucket of a latency in nanoseconds; always `< HIST_BUCKETS`.
#[inline(always)]
pub const fn bucket_index(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let e = log2_floor(v);
    if e > HIST_MAX_EXP {
        return HIST_BUCKETS - 1;
    }
    let sub = (v >> (e - HIST_SUB_BITS)) & (SUB - 1);
    (((e - HIST_SUB_BITS + 1) as u64) * SUB + sub) as usize
}

/// Smallest value that lands in bucket `i`.
pub const fn bucket_lower(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let e = (i >> HIST_SUB_BITS) as u32 + HIST_SUB_BITS - 1;
    let sub = i & (SUB - 1);
    (1u64 << e) + (sub << (e - HIST_SUB_BITS))
}

/// One past the largest value of bucket `i` (`u64::MAX` for the last, open bucket).
pub const fn bucket_upper(i: usize) -> u64 {
    if i + 1 >= HIST_BUCKETS {
        u64::MAX
    } else {
        bucket_lower(i + 1)
    }
}
