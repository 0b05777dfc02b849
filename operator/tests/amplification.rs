//! A message that is small on the wire and huge in memory: 4 194 301
//! bytes of empty probe entries decode, with prost, into 2 097 148
//! `ProbeReport`s (536 MiB, over the operator's 256 MiB limit). Sent
//! through the agent port's real reader (`ingest/frames.rs`) it is refused
//! before prost decodes it, and this binary's allocator measures what it
//! cost.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    collections::VecDeque,
    pin::Pin,
    sync::atomic::{AtomicUsize, Ordering},
    task::{Context, Poll},
};

use bytes::Bytes;
use prost::Message;
use ringwarden_operator::ingest::frames::{self, Frames, LIMITS};
use ringwarden_proto::v1::{self, AgentMessage, agent_message::Message as FromAgent};

/// Counts the bytes this process holds, and the most it held.
struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed to the system allocator unchanged; only
// the counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc`, passed on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = HELD.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc`, passed on.
        unsafe { System.dealloc(ptr, layout) };
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// One measurement at a time: the tests of this binary run on threads of
/// one process, and the allocator counts them all.
static MEASURING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Bytes allocated beyond what was held when `f` started, at most.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = HELD.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed) - before)
}

/// A request body of HTTP/2-sized data frames (16 KiB, hyper's default).
struct Body(VecDeque<Bytes>);

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, tonic::Status>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
    }
}

fn body(wire: &Bytes) -> Body {
    Body(
        (0..wire.len())
            .step_by(16 << 10)
            .map(|at| wire.slice(at..wire.len().min(at + (16 << 10))))
            .collect(),
    )
}

/// gRPC framing: no compression, big-endian length, the message.
fn framed(messages: &[Vec<u8>]) -> Bytes {
    let mut wire = Vec::new();
    for m in messages {
        wire.push(0);
        wire.extend_from_slice(&u32::try_from(m.len()).unwrap().to_be_bytes());
        wire.extend_from_slice(m);
    }
    wire.into()
}

/// The attack: a Report of 2 097 148 empty probe entries, 4 194 301 bytes.
fn amplifier() -> Vec<u8> {
    let probes = 2_097_148;
    let mut report = Vec::with_capacity(2 * probes);
    for _ in 0..probes {
        report.extend([(5 << 3) | 2, 0]); // probes = {}, empty
    }
    let mut message = vec![(2 << 3) | 2]; // AgentMessage.report
    prost::encoding::encode_varint(report.len() as u64, &mut message);
    message.extend(report);
    assert_eq!(message.len(), 4_194_301);
    message
}

fn read_all(wire: &Bytes) -> Result<Vec<AgentMessage>, tonic::Status> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let mut f = Frames::new(body(wire), LIMITS, frames::budget(frames::ASSEMBLY_BUDGET));
    runtime.block_on(async {
        let mut out = Vec::new();
        while let Some(m) = f.message().await? {
            out.push(m);
        }
        Ok(out)
    })
}

#[test]
fn a_tiny_report_repeated_four_million_times_is_refused_before_it_is_decoded() {
    let _one = MEASURING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let attack = amplifier();
    // What prost would make of it, taken from a sixty-fourth of it: the
    // decoded message is a hundred times the size of its bytes.
    let sixty_fourth = {
        let mut m = vec![(2 << 3) | 2];
        let report = &attack[5..5 + 2 * (2_097_148 / 64)];
        prost::encoding::encode_varint(report.len() as u64, &mut m);
        m.extend_from_slice(report);
        m
    };
    let (decoded, cost) = peak_during(|| AgentMessage::decode(sixty_fourth.as_slice()).unwrap());
    let Some(FromAgent::Report(r)) = &decoded.message else {
        panic!("a report")
    };
    assert_eq!(r.probes.len(), 2_097_148 / 64);
    assert!(
        cost > 50 * sixty_fourth.len(),
        "prost took {cost} bytes for {}",
        sixty_fourth.len()
    );
    drop(decoded);

    // As a stream's first message: refused by its length prefix alone.
    let first = framed(std::slice::from_ref(&attack));
    let (result, cost) = peak_during(|| read_all(&first));
    let e = result.unwrap_err();
    assert_eq!(e.code(), tonic::Code::OutOfRange, "{}", e.message());
    assert!(cost < 64 << 10, "refusing it took {cost} bytes");

    // After a proper Hello: assembled within the shared budget (its own
    // bytes), then refused by the pre-scan before prost allocates for it.
    let hello = AgentMessage {
        message: Some(FromAgent::Hello(v1::Hello {
            node_name: "node-a".into(),
            boot_id: "b".into(),
            ..Default::default()
        })),
    };
    let wire = framed(&[hello.encode_to_vec(), attack.clone()]);
    let (result, cost) = peak_during(|| read_all(&wire));
    let e = result.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        e.message(),
        "refused before decoding: report.probes has more than 2048 entries"
    );
    assert!(
        cost < attack.len() + (1 << 20),
        "refusing {} bytes took {cost} bytes",
        attack.len()
    );
}

#[test]
fn the_most_a_message_within_the_bounds_decodes_into_stays_far_below_the_operators_limit() {
    let _one = MEASURING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // As many buckets as the pre-scan lets through, every histogram full
    // and valid, in as few bytes as they take: the most memory per byte.
    let histograms = ringwarden_operator::ingest::decode::MAX_MESSAGE_BUCKETS / 1024;
    let probe = |p: usize| v1::ProbeReport {
        id: Some(v1::ProbeId {
            namespace: "shop".into(),
            probeset: "web".into(),
            probe: format!("p{p}"),
        }),
        histograms: (0..histograms / 2)
            .map(|s| v1::SeriesHistogram {
                series: format!("{s}"),
                histogram: Some(v1::Histogram {
                    bucket_index: (0..1024).collect(),
                    bucket_count: vec![1; 1024],
                    ..Default::default()
                }),
            })
            .collect(),
        ..Default::default()
    };
    let report = AgentMessage {
        message: Some(FromAgent::Report(v1::Report {
            boot_id: "b".into(),
            seq: 1,
            probes: vec![probe(0), probe(1)],
            ..Default::default()
        })),
    };
    let hello = AgentMessage {
        message: Some(FromAgent::Hello(v1::Hello {
            node_name: "node-a".into(),
            boot_id: "b".into(),
            ..Default::default()
        })),
    };
    let wire = framed(&[hello.encode_to_vec(), report.encode_to_vec()]);
    drop(report);
    // Read, decoded and checked as the agent port does it.
    let (sample, cost) = peak_during(|| {
        let mut messages = read_all(&wire).unwrap();
        let Some(FromAgent::Report(r)) = messages.pop().unwrap().message else {
            panic!("a report")
        };
        ringwarden_operator::ingest::reports::Sample::try_from(r).unwrap()
    });
    let buckets: usize = sample.probes[0]
        .series
        .iter()
        .chain(&sample.probes[1].series)
        .map(|(_, h)| h.buckets.len())
        .sum();
    assert_eq!(buckets, 2 << 20);
    // 6 MB on the wire; at most 64 MiB (32 MiB measured) while it is read
    // and decoded, one message at a time on the ingest thread, of the
    // operator's 256.
    assert!(wire.len() < 8 << 20, "{}", wire.len());
    assert!(cost < 64 << 20, "{} MiB", cost >> 20);
}
