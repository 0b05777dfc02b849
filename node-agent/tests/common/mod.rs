//! Helpers the agent's integration tests share.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    time::Duration,
};

/// A port free on loopback now, for an agent started next.
///
/// Taken below Linux's ephemeral range (32768–60999 by default): a port the
/// kernel hands out for port 0 may be handed out again, to another test's
/// outgoing connection, before the agent binds it. Ports here go only to
/// those who ask for them, and each call tries a different one.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    // Test binaries run side by side: start each at its own offset.
    let start = (std::process::id() % 64) as u16 * 64;
    for _ in 0..4096 {
        let port = 20_000 + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % 12_000;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between 20000 and 31999");
}

/// The whole HTTP response to `GET path` on a loopback port, if any.
pub fn get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}
