//! The agent port's request side, read without a buffer kept per stream.
//!
//! tonic's `Streaming` keeps its receive buffer at the size of the largest
//! message a stream ever sent, for as long as the stream lives (an hour,
//! between re-authentications). A node's report carries every series of
//! every probe, ~200 KiB at 5 probes × 64 series: a thousand agents made
//! the operator hold 200 MiB between reports, twice that while they
//! reconnected. Here each gRPC message is read into a buffer of its own
//! length (or decoded in place when one HTTP/2 frame holds it), decoded,
//! and dropped; between reports a stream holds nothing. A message that
//! spans frames is assembled only within a budget shared by all streams
//! ([`ASSEMBLY_BUDGET`]): when a thousand agents send their reports at
//! once, the rest wait (HTTP/2 flow control holds their bytes at the
//! agents) instead of each holding a report's worth of memory. Responses
//! still go through tonic (`Grpc::streaming`), so status, trailers and
//! encoding are its own.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::{Buf, Bytes};
use prost::Message;
use ringwarden_proto::v1::{AgentMessage, OperatorMessage};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Instant, timeout_at},
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    Status, Streaming,
    body::Body,
    server::{Grpc, NamedService, StreamingService},
};

use super::{
    auth::Reviewer,
    decode::{self, MAX_HELLO_MESSAGE, MAX_REPORT_MESSAGE},
    grpc::{AgentApi, Inbound},
};

/// How large each message of a stream may be: its first (a Hello) and
/// every later one (Reports).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub first: usize,
    pub rest: usize,
}

/// The agent port's limits ([`decode::MAX_HELLO_MESSAGE`],
/// [`decode::MAX_REPORT_MESSAGE`]).
pub const LIMITS: Limits = Limits {
    first: MAX_HELLO_MESSAGE,
    rest: MAX_REPORT_MESSAGE,
};
/// Bytes of messages being assembled at once, all streams together.
pub const ASSEMBLY_BUDGET: usize = 16 << 20;
/// Unit of the budget's semaphore.
const UNIT: usize = 4 << 10;
/// Longest a stream may take to send the rest of a message once it may:
/// a client that announces a report and stalls does not hold the budget.
pub const ASSEMBLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Longest a stream waits for its share of the budget: with the budget
/// full of stalling streams, each gives its share back within
/// [`ASSEMBLY_TIMEOUT`], so a stream that waits longer than this is
/// behind a queue that does not move, and is ended (`UNAVAILABLE`; the
/// agent reconnects with backoff) rather than held.
pub const ASSEMBLY_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// The gRPC message prefix: a compression flag and a big-endian length.
const PREFIX: usize = 5;
const CONNECT: &str = "/ringwarden.v1.AgentService/Connect";

/// gRPC messages read from a request body one at a time. Cancel-safe, as
/// tonic's `Streaming` is: a stream's loop selects between its next
/// message and other work, so what was read of a message stays here.
pub struct Frames<B> {
    body: Pin<Box<B>>,
    /// The unread rest of the last data frame.
    pending: Bytes,
    /// The prefix of the next message, as far as read.
    prefix: [u8; PREFIX],
    prefix_len: usize,
    /// A message that spans frames, being assembled.
    assembly: Option<Assembly>,
    limits: Limits,
    /// Messages read so far.
    read: u64,
    /// [`ASSEMBLY_BUDGET`] in [`UNIT`]s, shared by the server's streams.
    budget: Arc<Semaphore>,
}

struct Assembly {
    buf: Vec<u8>,
    _permit: OwnedSemaphorePermit,
    deadline: Instant,
}

/// A new assembly budget of `bytes`.
pub fn budget(bytes: usize) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(bytes.div_ceil(UNIT)))
}

/// Reads the next data frame of `body` into `pending`; false at its end.
async fn fill<B>(body: &mut Pin<Box<B>>, pending: &mut Bytes) -> Result<bool, Status>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    loop {
        match std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            None => return Ok(false),
            Some(Err(e)) => return Err(Status::from_error(e.into())),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data()
                    && !data.is_empty()
                {
                    *pending = data;
                    return Ok(true);
                }
            }
        }
    }
}

impl<B> Frames<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// `limits` must not exceed the budget, or a message that large waits
    /// its turn in vain.
    pub fn new(body: B, limits: Limits, budget: Arc<Semaphore>) -> Self {
        Self {
            body: Box::pin(body),
            pending: Bytes::new(),
            prefix: [0; PREFIX],
            prefix_len: 0,
            assembly: None,
            limits,
            read: 0,
            budget,
        }
    }

    /// The next message; `None` when the body ended between messages. Its
    /// length is checked against [`Limits`] before any of it is read, and
    /// its repeated fields by [`decode::prescan`] before it is decoded.
    pub async fn message(&mut self) -> Result<Option<AgentMessage>, Status> {
        let message = self.next().await?;
        if message.is_some() {
            self.read += 1;
        }
        Ok(message)
    }

    async fn next(&mut self) -> Result<Option<AgentMessage>, Status> {
        while self.prefix_len < PREFIX {
            if self.pending.is_empty() && !fill(&mut self.body, &mut self.pending).await? {
                return if self.prefix_len == 0 {
                    Ok(None)
                } else {
                    Err(Status::internal("the stream ended inside a message prefix"))
                };
            }
            let n = (PREFIX - self.prefix_len).min(self.pending.len());
            self.prefix[self.prefix_len..self.prefix_len + n].copy_from_slice(&self.pending[..n]);
            self.pending.advance(n);
            self.prefix_len += n;
        }
        let p = self.prefix;
        if p[0] != 0 {
            return Err(Status::unimplemented(
                "compressed messages are not accepted; send them uncompressed",
            ));
        }
        let len = u32::from_be_bytes([p[1], p[2], p[3], p[4]]) as usize;
        let (max, which) = if self.read == 0 {
            (self.limits.first, "a stream's first message (its Hello)")
        } else {
            (self.limits.rest, "a report")
        };
        if len > max {
            return Err(Status::out_of_range(format!(
                "a message of {len} bytes is over the limit of {max} bytes for {which}"
            )));
        }
        if self.assembly.is_none() {
            if self.pending.len() >= len {
                self.prefix_len = 0;
                return decode(&self.pending.split_to(len));
            }
            let units = u32::try_from(len.div_ceil(UNIT)).unwrap_or(u32::MAX);
            let permit = match timeout_at(
                Instant::now() + ASSEMBLY_WAIT,
                Arc::clone(&self.budget).acquire_many_owned(units),
            )
            .await
            {
                Ok(Ok(permit)) => permit,
                Ok(Err(_)) => return Err(Status::unavailable("the server is shutting down")),
                Err(_) => {
                    return Err(Status::unavailable(format!(
                        "a message of {len} bytes waited {ASSEMBLY_WAIT:?} for room to be \
                         assembled; reconnect with backoff"
                    )));
                }
            };
            self.assembly = Some(Assembly {
                buf: Vec::with_capacity(len),
                _permit: permit,
                deadline: Instant::now() + ASSEMBLY_TIMEOUT,
            });
        }
        let Some(a) = self.assembly.as_mut() else {
            unreachable!("set above")
        };
        while a.buf.len() < len {
            if self.pending.is_empty() {
                match timeout_at(a.deadline, fill(&mut self.body, &mut self.pending)).await {
                    Err(_) => {
                        return Err(Status::deadline_exceeded(format!(
                            "a message of {len} bytes took longer than {ASSEMBLY_TIMEOUT:?} to \
                             arrive"
                        )));
                    }
                    Ok(Err(e)) => return Err(e),
                    Ok(Ok(false)) => {
                        return Err(Status::internal("the stream ended inside a message"));
                    }
                    Ok(Ok(true)) => {}
                }
            }
            let n = (len - a.buf.len()).min(self.pending.len());
            a.buf.extend_from_slice(&self.pending[..n]);
            self.pending.advance(n);
        }
        let buf = self.assembly.take().map(|a| a.buf).unwrap_or_default();
        self.prefix_len = 0;
        decode(buf.as_slice())
    }
}

/// Decodes `bytes` once [`decode::prescan`] has bounded what they decode
/// into.
fn decode(bytes: &[u8]) -> Result<Option<AgentMessage>, Status> {
    decode::prescan(bytes).map_err(|e| match e {
        decode::ReportError::Malformed => Status::internal("the message does not decode"),
        e => Status::invalid_argument(format!("refused before decoding: {e}")),
    })?;
    AgentMessage::decode(bytes)
        .map(Some)
        .map_err(|e| Status::internal(format!("the message does not decode: {e}")))
}

impl Inbound for Frames<Body> {
    async fn message(&mut self) -> Result<Option<AgentMessage>, Status> {
        Frames::message(self).await
    }
}

/// `AgentService` on the agent port, its requests read by [`Frames`].
pub struct AgentServer<R> {
    api: Arc<AgentApi<R>>,
    budget: Arc<Semaphore>,
}

impl<R> AgentServer<R> {
    pub fn new(api: AgentApi<R>) -> Self {
        Self {
            api: Arc::new(api),
            budget: budget(ASSEMBLY_BUDGET),
        }
    }
}

impl<R> Clone for AgentServer<R> {
    fn clone(&self) -> Self {
        Self {
            api: Arc::clone(&self.api),
            budget: Arc::clone(&self.budget),
        }
    }
}

impl<R> NamedService for AgentServer<R> {
    const NAME: &'static str = "ringwarden.v1.AgentService";
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<R: Reviewer> tower::Service<http::Request<Body>> for AgentServer<R> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() != CONNECT {
            return Box::pin(async {
                Ok(Status::unimplemented("AgentService has only Connect").into_http())
            });
        }
        let (parts, body) = request.into_parts();
        let method = Connect {
            api: Arc::clone(&self.api),
            frames: Some(Frames::new(body, LIMITS, Arc::clone(&self.budget))),
        };
        // tonic answers; the body it would read is already taken.
        let request = http::Request::from_parts(parts, Body::empty());
        Box::pin(async move {
            Ok(Grpc::new(tonic_prost::ProstCodec::default())
                .streaming(method, request)
                .await)
        })
    }
}

/// One call of Connect, with its request body.
struct Connect<R> {
    api: Arc<AgentApi<R>>,
    frames: Option<Frames<Body>>,
}

impl<R: Reviewer> StreamingService<AgentMessage> for Connect<R> {
    type Response = OperatorMessage;
    type ResponseStream = ReceiverStream<Result<OperatorMessage, Status>>;
    type Future = BoxFuture<Result<tonic::Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: tonic::Request<Streaming<AgentMessage>>) -> Self::Future {
        let api = Arc::clone(&self.api);
        let frames = self.frames.take();
        Box::pin(async move {
            let frames = frames.ok_or_else(|| Status::internal("Connect called twice"))?;
            api.open(request.metadata(), frames).await
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use proptest::prelude::*;
    use ringwarden_proto::v1::{self, agent_message::Message as FromAgent};

    use super::*;

    /// A request body made of these data frames.
    struct Chunks(VecDeque<Bytes>);

    impl http_body::Body for Chunks {
        type Data = Bytes;
        type Error = Status;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
        }
    }

    fn report(series: usize) -> AgentMessage {
        AgentMessage {
            message: Some(FromAgent::Report(v1::Report {
                boot_id: "b".into(),
                seq: series as u64 + 1,
                probes: vec![v1::ProbeReport {
                    histograms: (0..series)
                        .map(|s| v1::SeriesHistogram {
                            series: format!("s{s}"),
                            histogram: Some(v1::Histogram {
                                bucket_index: (0..150).collect(),
                                bucket_count: (0..150).map(|n| n * 1_000).collect(),
                                ..Default::default()
                            }),
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            })),
        }
    }

    fn framed(messages: &[AgentMessage]) -> Vec<u8> {
        let mut wire = Vec::new();
        for m in messages {
            let body = m.encode_to_vec();
            wire.push(0);
            wire.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
            wire.extend_from_slice(&body);
        }
        wire
    }

    /// `wire` cut into data frames at `cuts`.
    fn frames(wire: &[u8], cuts: &[usize]) -> Frames<Chunks> {
        let mut at: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
        at.push(0);
        at.push(wire.len());
        at.sort_unstable();
        at.dedup();
        let chunks = at
            .windows(2)
            .map(|w| Bytes::copy_from_slice(&wire[w[0]..w[1]]))
            .collect();
        Frames::new(Chunks(chunks), REPORTS_ONLY, budget(LIMITS.rest))
    }

    /// Limits that let reports come first, as these tests send them.
    const REPORTS_ONLY: Limits = Limits {
        first: LIMITS.rest,
        rest: LIMITS.rest,
    };

    fn read_all(mut f: Frames<Chunks>) -> Result<Vec<AgentMessage>, Status> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut out = Vec::new();
            while let Some(m) = f.message().await? {
                out.push(m);
                assert!(
                    f.pending.len() < f.limits.rest,
                    "only the unread rest of one frame is held"
                );
            }
            Ok(out)
        })
    }

    proptest! {
        #[test]
        fn messages_decode_the_same_however_the_frames_cut_them(
            sizes in proptest::collection::vec(0usize..40, 1..5),
            cuts in proptest::collection::vec(any::<usize>(), 0..40),
        ) {
            let messages: Vec<AgentMessage> = sizes.iter().map(|&s| report(s)).collect();
            let wire = framed(&messages);
            prop_assert_eq!(read_all(frames(&wire, &cuts)).unwrap(), messages);
        }
    }

    #[test]
    fn a_frame_per_byte_and_one_frame_for_all_give_the_same_messages() {
        let messages = vec![report(64), report(0), report(3)];
        let wire = framed(&messages);
        let every_byte: Vec<usize> = (0..wire.len()).collect();
        assert_eq!(read_all(frames(&wire, &every_byte)).unwrap(), messages);
        assert_eq!(read_all(frames(&wire, &[])).unwrap(), messages);
    }

    #[test]
    fn compressed_oversized_truncated_and_malformed_messages_are_refused() {
        let wire = framed(&[report(2)]);
        let mut compressed = wire.clone();
        compressed[0] = 1;
        let e = read_all(frames(&compressed, &[])).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unimplemented);

        let mut huge = vec![0u8];
        huge.extend_from_slice(&u32::try_from(LIMITS.rest + 1).unwrap().to_be_bytes());
        let e = read_all(frames(&huge, &[])).unwrap_err();
        assert_eq!(e.code(), tonic::Code::OutOfRange);
        assert!(e.message().contains("over the limit"), "{}", e.message());

        for cut in [3, wire.len() - 1] {
            let e = read_all(frames(&wire[..cut], &[1])).unwrap_err();
            assert_eq!(e.code(), tonic::Code::Internal, "cut at {cut}");
        }

        let mut garbage = vec![0u8, 0, 0, 0, 3];
        garbage.extend_from_slice(&[0xff, 0xff, 0xff]);
        let e = read_all(frames(&garbage, &[])).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Internal);
        assert!(e.message().contains("does not decode"), "{}", e.message());
    }

    #[test]
    fn a_first_message_larger_than_a_hello_is_refused_before_it_is_read() {
        let hello = AgentMessage {
            message: Some(FromAgent::Hello(v1::Hello {
                node_name: "n".into(),
                boot_id: "b".into(),
                ..Default::default()
            })),
        };
        let strict = |wire: &[u8]| {
            let f = Frames::new(
                Chunks(VecDeque::from([Bytes::copy_from_slice(wire)])),
                LIMITS,
                budget(LIMITS.rest),
            );
            read_all(f)
        };
        // A Hello, then a report far larger than any Hello: both pass.
        let wire = framed(&[hello.clone(), report(64)]);
        assert_eq!(strict(&wire).unwrap(), vec![hello, report(64)]);
        // The same report first is refused by its length alone.
        let e = strict(&framed(&[report(64)])).unwrap_err();
        assert_eq!(e.code(), tonic::Code::OutOfRange);
        assert!(
            e.message().ends_with(&format!(
                "over the limit of {MAX_HELLO_MESSAGE} bytes for a stream's first message (its \
                 Hello)"
            )),
            "{}",
            e.message()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_waiting_for_assembly_room_behind_a_queue_that_does_not_move_is_ended() {
        let wire = framed(&[report(64)]);
        let shared = budget(wire.len());
        // Someone holds the whole budget and never gives it back.
        let _held = Arc::clone(&shared)
            .acquire_many_owned(u32::try_from(shared.available_permits()).unwrap())
            .await
            .unwrap();
        let mut waiting = Frames::new(
            Chunks(VecDeque::from([
                Bytes::copy_from_slice(&wire[..100]),
                Bytes::copy_from_slice(&wire[100..]),
            ])),
            REPORTS_ONLY,
            Arc::clone(&shared),
        );
        let started = Instant::now();
        let e = waiting.message().await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable);
        assert!(e.message().contains("waited"), "{}", e.message());
        assert_eq!(started.elapsed(), ASSEMBLY_WAIT);
    }

    /// A body whose first frame comes at once and the rest only when told.
    struct Gated(Option<Bytes>, tokio::sync::mpsc::UnboundedReceiver<Bytes>);

    impl http_body::Body for Gated {
        type Data = Bytes;
        type Error = Status;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
            if let Some(first) = self.0.take() {
                return Poll::Ready(Some(Ok(http_body::Frame::data(first))));
            }
            self.1
                .poll_recv(cx)
                .map(|b| b.map(|b| Ok(http_body::Frame::data(b))))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn messages_past_the_budget_wait_and_a_stalled_one_gives_its_share_back() {
        let wire = framed(&[report(64)]);
        let len = wire.len() - PREFIX;
        // Room for one message at a time.
        let shared = budget(len);
        let (tx_a, rx_a) = tokio::sync::mpsc::unbounded_channel();
        let mut a = Frames::new(
            Gated(Some(Bytes::copy_from_slice(&wire[..100])), rx_a),
            REPORTS_ONLY,
            Arc::clone(&shared),
        );
        let mut b = Frames::new(
            Chunks(VecDeque::from([
                Bytes::copy_from_slice(&wire[..100]),
                Bytes::copy_from_slice(&wire[100..]),
            ])),
            REPORTS_ONLY,
            Arc::clone(&shared),
        );
        // a holds the budget while its message arrives; b waits for it.
        let a_reads = tokio::spawn(async move { a.message().await });
        tokio::task::yield_now().await;
        let b_read = tokio::time::timeout(ASSEMBLY_TIMEOUT / 2, b.message()).await;
        assert!(b_read.is_err(), "b waited for the budget");
        // a stalls: after ASSEMBLY_TIMEOUT its stream is refused and b runs.
        let e = a_reads.await.unwrap().unwrap_err();
        assert_eq!(e.code(), tonic::Code::DeadlineExceeded);
        let m = b.message().await.unwrap();
        assert_eq!(m, Some(report(64)));
        assert_eq!(shared.available_permits(), len.div_ceil(UNIT));
        drop(tx_a);
    }
}
