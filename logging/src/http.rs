//! The one HTTP server of both binaries' `/metrics`, `/healthz` and
//! `/readyz`, with the bounds `axum::serve` lacks: a client must send a
//! request's headers within [`Limits::header_read_timeout`] (the time also
//! bounds a kept-alive connection waiting for its next request), a
//! connection is closed once no request arrived on it for
//! [`Limits::idle_timeout`] (a client that stops reading an answer holds
//! it no longer), and at most [`Limits::max_connections`] connections are
//! open, [`Limits::max_connections_per_address`] of them from one IP
//! address; connections over a cap are closed at once. Serves sockets.

use std::{
    collections::HashMap,
    future::Future,
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use axum::Router;
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, watch},
    task::JoinSet,
    time::{Instant, sleep_until, timeout},
};
use tower::ServiceExt;

/// How a server bounds its clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest a client may take to send a request's headers, and to start
    /// its next request on a kept-alive connection.
    pub header_read_timeout: Duration,
    /// A connection on which no request arrived for this long is closed,
    /// whatever it is doing.
    pub idle_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
    /// Connections open at once from one IP address.
    pub max_connections_per_address: usize,
}

impl Default for Limits {
    /// Room for Prometheus, the kubelet's probes and a few people; a
    /// scrape takes well under the idle timeout.
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            max_connections: 256,
            max_connections_per_address: 16,
        }
    }
}

/// Why a connection was closed unserved: `connections` (the server has
/// [`Limits::max_connections`] open) or `per_address`.
pub type Refused = Arc<dyn Fn(&'static str) + Send + Sync>;

/// Longest [`serve`] waits for open connections to finish once shut down.
const DRAIN: Duration = Duration::from_secs(5);

/// Serves `app` on `listener` within `limits` until `shutdown` completes;
/// then answers the requests in progress (for at most 5 s) and returns.
/// `refused` hears of every connection closed over a cap.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    refused: Refused,
    shutdown: impl Future<Output = ()> + Send,
) {
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let addresses = Arc::new(Mutex::new(HashMap::new()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = tasks.join_next() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors, most likely: let
                        // connections close before accepting more.
                        tracing::debug!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
                    refused("connections");
                    continue;
                };
                let Some(slot) = Slot::take(&addresses, peer.ip(), limits.max_connections_per_address)
                else {
                    refused("per_address");
                    continue;
                };
                tasks.spawn(connection(
                    stream,
                    app.clone(),
                    limits,
                    stop_rx.clone(),
                    (permit, slot),
                ));
            }
        }
    }
    let _ = stop_tx.send(true);
    let _ = timeout(DRAIN, async { while tasks.join_next().await.is_some() {} }).await;
}

/// One connection from one address, counted while it lives.
struct Slot {
    addresses: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl Slot {
    fn take(
        addresses: &Arc<Mutex<HashMap<IpAddr, usize>>>,
        ip: IpAddr,
        max: usize,
    ) -> Option<Self> {
        let mut table = addresses.lock().unwrap_or_else(PoisonError::into_inner);
        let n = table.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Self {
            addresses: Arc::clone(addresses),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut table = self
            .addresses
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = table.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                table.remove(&self.ip);
            }
        }
    }
}

/// Serves one connection until it ends, idles past the limit, or the
/// server shuts down; dropping it closes the socket.
async fn connection(
    stream: TcpStream,
    app: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
    _held: (OwnedSemaphorePermit, Slot),
) {
    let _ = stream.set_nodelay(true);
    let last_request = Arc::new(Mutex::new(Instant::now()));
    let service = hyper::service::service_fn({
        let last_request = Arc::clone(&last_request);
        move |request: hyper::Request<Incoming>| {
            *last_request.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
            app.clone().oneshot(request.map(axum::body::Body::new))
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        let idle_since = *last_request.lock().unwrap_or_else(PoisonError::into_inner);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "HTTP connection ended");
                }
                return;
            }
            () = sleep_until(idle_since + limits.idle_timeout) => {
                let last = *last_request.lock().unwrap_or_else(PoisonError::into_inner);
                if last == idle_since {
                    return;
                }
            }
            Ok(()) = stop.changed(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}
