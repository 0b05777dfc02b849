//! The `blockIO` probe: `block_rq_issue` → `block_rq_complete`, keyed by
//! request address, one series per device and operation.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use ringwarden_ebpf_common::{SeriesKey, block_series_id};

use crate::common::{
    OBJ_START, Who, counters, current_start, finish, global, offsets, pairing_lost, read,
    start_map_full, wanted_current,
};

/// `REQ_OP_MASK`: the operation is the low 8 bits of `cmd_flags`.
const REQ_OP_MASK: u32 = 0xff;

#[btf_tracepoint(function = "block_rq_issue")]
pub fn rw_bio_issue(ctx: BtfTracePointContext) -> i32 {
    // block_rq_issue(struct request *rq)
    let rq: u64 = ctx.arg(0);
    let pid_tgid = bpf_get_current_pid_tgid();
    // The issuing task: the submitter for direct and synchronous I/O, a
    // kernel worker for writeback.
    if rq == 0 || !wanted_current((pid_tgid >> 32) as u32) {
        return 0;
    }
    let Some(c) = counters() else {
        return 0;
    };
    // SAFETY: reads the monotonic clock, no preconditions.
    let start = current_start(unsafe { bpf_ktime_get_ns() }, pid_tgid);
    if OBJ_START.insert(rq, start, 0).is_err() {
        start_map_full(c);
        pairing_lost(c);
    }
    0
}

#[btf_tracepoint(function = "block_rq_complete")]
pub fn rw_bio_complete(ctx: BtfTracePointContext) -> i32 {
    // block_rq_complete(struct request *rq, blk_status_t error, unsigned int nr_bytes)
    let rq: u64 = ctx.arg(0);
    let error: u8 = ctx.arg(1);
    let nr_bytes: u32 = ctx.arg(2);
    // A request without a start was issued before the probe attached (or
    // is a later part of a request already completed): not an event.
    // SAFETY: the value is copied out before the entry is removed.
    let Some(start) = (unsafe { OBJ_START.get(rq) }).copied() else {
        return 0;
    };
    let _ = OBJ_START.remove(rq);
    let Some(c) = counters() else {
        return 0;
    };
    // SAFETY: reads the monotonic clock, no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let o = offsets();
    let op: u32 = read::<u32>(rq, global(&o.rq_cmd_flags)) & REQ_OP_MASK;
    let q: u64 = read(rq, global(&o.rq_q));
    let disk: u64 = if q != 0 {
        read(q, global(&o.q_disk))
    } else {
        0
    };
    let (major, minor): (i32, i32) = if disk != 0 {
        (
            read(disk, global(&o.disk_major)),
            read(disk, global(&o.disk_first_minor)),
        )
    } else {
        (0, 0)
    };
    let key = SeriesKey {
        id: block_series_id(major as u32, minor as u32, op),
        addr: [0; 16],
    };
    finish(
        c,
        &key,
        now.saturating_sub(start.ts_ns),
        error != 0,
        nr_bytes as i64,
        now,
        Who::Stored(&start),
    );
    0
}
