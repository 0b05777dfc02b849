//! The shared HTTP server under the attacks it is bounded against: many
//! connections that send part of a request line and stall, connections
//! past its caps, and a client that stops reading. Real sockets on
//! loopback; attackers connect from 127.0.0.2, honest clients from
//! 127.0.0.1, as two hosts would.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, routing::get};
use ringwarden_logging::http::{Limits, serve};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream},
    sync::oneshot,
};

const ATTACKER: &str = "127.0.0.2";
const HONEST: &str = "127.0.0.1";

struct Server {
    addr: SocketAddr,
    refused: Arc<AtomicUsize>,
    _stop: oneshot::Sender<()>,
}

async fn start(limits: Limits) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/big", get(|| async { vec![b'x'; 32 << 20] }));
    let refused = Arc::new(AtomicUsize::new(0));
    let (stop, stopped) = oneshot::channel::<()>();
    let counted = Arc::clone(&refused);
    tokio::spawn(serve(
        listener,
        app,
        limits,
        Arc::new(move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
        }),
        async move {
            let _ = stopped.await;
        },
    ));
    Server {
        addr,
        refused,
        _stop: stop,
    }
}

async fn connect(from: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

/// A connection that sends part of a request line and stalls.
async fn slow(to: SocketAddr) -> TcpStream {
    let mut s = connect(ATTACKER, to).await;
    // The server may already have closed it (over a cap).
    let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: ").await;
    s
}

/// `GET /healthz` from an honest client: the answer, and how long it took.
async fn healthz(to: SocketAddr) -> (String, Duration) {
    let started = Instant::now();
    let mut s = connect(HONEST, to).await;
    let _ = s
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

/// Whether the server closed `s` within `within`.
async fn closed(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(within, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // An error answer (408) before closing is fine.
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn a_thousand_slow_header_connections_cannot_stop_healthz_answering() {
    let limits = Limits {
        header_read_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let server = start(limits).await;
    let mut attack = Vec::new();
    for _ in 0..1_100 {
        attack.push(slow(server.addr).await);
    }
    let (answer, took) = healthz(server.addr).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer:?}");
    assert!(answer.ends_with("ok\n"), "{answer:?}");
    assert!(took < Duration::from_millis(500), "/healthz took {took:?}");
    // One address holds 16 of them; the rest were closed at once.
    assert_eq!(server.refused.load(Ordering::SeqCst), 1_100 - 16);
    // Every one is closed by the header-read timeout, with a margin.
    let started = Instant::now();
    for s in &mut attack {
        assert!(closed(s, Duration::from_secs(3)).await);
    }
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn slow_header_connections_from_many_addresses_fill_only_the_connection_cap() {
    let limits = Limits {
        header_read_timeout: Duration::from_millis(500),
        max_connections: 8,
        max_connections_per_address: 100,
        ..Limits::default()
    };
    let server = start(limits).await;
    let mut attack = Vec::new();
    for _ in 0..8 {
        attack.push(slow(server.addr).await);
    }
    // The cap is full: the next connection is closed unanswered, at once.
    let (answer, took) = healthz(server.addr).await;
    assert_eq!(answer, "");
    assert!(took < Duration::from_millis(400), "{took:?}");
    assert_eq!(server.refused.load(Ordering::SeqCst), 1);
    // The stalled ones time out, and the server answers again.
    for s in &mut attack {
        assert!(closed(s, Duration::from_secs(2)).await);
    }
    let (answer, _) = healthz(server.addr).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer:?}");
}

#[tokio::test]
async fn one_address_holds_at_most_its_share_of_connections() {
    let limits = Limits {
        max_connections_per_address: 4,
        ..Limits::default()
    };
    let server = start(limits).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(slow(server.addr).await);
    }
    let mut fifth = slow(server.addr).await;
    assert!(closed(&mut fifth, Duration::from_millis(500)).await);
    for s in &mut held {
        assert!(!closed(s, Duration::from_millis(50)).await);
    }
    let (answer, _) = healthz(server.addr).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer:?}");
    assert_eq!(server.refused.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_client_that_stops_reading_its_answer_is_cut_off_after_the_idle_timeout() {
    let limits = Limits {
        idle_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let server = start(limits).await;
    let mut s = connect(ATTACKER, server.addr).await;
    s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // It reads nothing for longer than the idle timeout...
    tokio::time::sleep(Duration::from_secs(2)).await;
    // ...and finds the answer cut short: the server let go of it.
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the connection was still open");
    assert!(out.len() < 32 << 20, "{} bytes", out.len());
}
