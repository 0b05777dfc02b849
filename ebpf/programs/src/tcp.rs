//! The TCP probes.
//!
//! `tcpConnect`: `sock:inet_sock_set_state`, SYN_SENT → ESTABLISHED is a
//! connect's latency, SYN_SENT → anything else a failed connect. The start
//! is keyed by socket address and remembers the connecting task, since the
//! handshake completes in softirq context.
//!
//! `tcpRetransmit`: `tcp:tcp_retransmit_skb`, one event per retransmitted
//! segment, keyed by destination address and port.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use ringwarden_ebpf_common::{SeriesKey, retransmit_series_id};

use crate::common::{
    OBJ_START, Who, counters, current_start, finish, global, offsets, pairing_lost, read,
    start_map_full, wanted_current, wanted_sock,
};

const IPPROTO_TCP: u16 = 6;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;

/// Destination port (host order) and address of a socket.
#[inline(always)]
fn destination(sk: u64) -> (u16, u16, [u8; 16]) {
    let o = offsets();
    let family: u16 = read(sk, global(&o.sk_family));
    let dport = u16::from_be(read(sk, global(&o.sk_dport)));
    let mut addr = [0u8; 16];
    if family == AF_INET {
        let a: [u8; 4] = read(sk, global(&o.sk_daddr));
        addr[..4].copy_from_slice(&a);
    } else if family == AF_INET6 {
        addr = read(sk, global(&o.sk_v6_daddr));
    }
    (family, dport, addr)
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn rw_tcp_state(ctx: BtfTracePointContext) -> i32 {
    // inet_sock_set_state(const struct sock *sk, const int oldstate, const int newstate)
    let sk: u64 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    if old != TCP_SYN_SENT && new != TCP_SYN_SENT {
        return 0;
    }
    let protocol: u16 = read(sk, global(&offsets().sk_protocol));
    if protocol != IPPROTO_TCP {
        return 0;
    }
    let Some(c) = counters() else {
        return 0;
    };
    if new == TCP_SYN_SENT {
        // connect(): the current task is the one connecting.
        let pid_tgid = bpf_get_current_pid_tgid();
        if !wanted_current((pid_tgid >> 32) as u32) || !wanted_sock(sk) {
            return 0;
        }
        // SAFETY: reads the monotonic clock, no preconditions.
        let start = current_start(unsafe { bpf_ktime_get_ns() }, pid_tgid);
        if OBJ_START.insert(sk, start, 0).is_err() {
            // The connect is observed but cannot be timed: counted here,
            // since its end will find no start and cannot tell it apart.
            start_map_full(c);
            pairing_lost(c);
        }
        return 0;
    }
    // Leaving SYN_SENT. A socket without a start was connecting before the
    // probe attached, or is one the filters left out: not an event.
    // SAFETY: the value is copied out before the entry is removed.
    let Some(start) = (unsafe { OBJ_START.get(sk) }).copied() else {
        return 0;
    };
    let _ = OBJ_START.remove(sk);
    // SAFETY: reads the monotonic clock, no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let (_, dport, _) = destination(sk);
    let key = SeriesKey {
        id: dport as u64,
        addr: [0; 16],
    };
    let failed = new != TCP_ESTABLISHED;
    finish(
        c,
        &key,
        now.saturating_sub(start.ts_ns),
        failed,
        new as i64,
        now,
        Who::Stored(&start),
    );
    0
}

#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn rw_tcp_retransmit(ctx: BtfTracePointContext) -> i32 {
    // tcp_retransmit_skb(const struct sock *sk, const struct sk_buff *skb, int err)
    let sk: u64 = ctx.arg(0);
    let err: i32 = ctx.arg(2);
    if sk == 0 || !wanted_sock(sk) {
        return 0;
    }
    let Some(c) = counters() else {
        return 0;
    };
    // SAFETY: reads the monotonic clock, no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let (family, dport, addr) = destination(sk);
    let key = SeriesKey {
        id: retransmit_series_id(family, dport),
        addr,
    };
    finish(c, &key, 0, err != 0, err as i64, now, Who::Socket(sk));
    0
}
