//! TLS on the agent and query ports.
//!
//! The operator serves with a certificate of its own CA unless it is given
//! one (cert-manager, see [`crate::ingest::pki`]); agents trust only that
//! CA (they pin it from a ConfigMap), never the system's roots. The serving
//! certificate sits behind a [`CertStore`], so a rotated one serves the
//! next handshake without restarting the listener or dropping streams.
//! Handshakes run off the accept loop under a deadline, so a client that
//! connects and says nothing holds one task for at most that long.

use std::{
    collections::HashMap,
    net::IpAddr,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError, RwLock},
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use futures::Stream;
use prometheus::{IntCounterVec, Opts};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// The CA's name (its subject): issuing from a stored CA rebuilds it.
pub const CA_NAME: &str = "ringwarden operator CA";
/// How long the operator's own CA is valid. It is replaced at two thirds
/// of its life ([`super::pki`]), so a stolen CA key is good for at most
/// this long, and the rotation runs often enough to be known to work.
pub const CA_LIFETIME: Duration = Duration::from_secs(365 * 86_400);
/// How long a serving certificate is valid.
pub const SERVING_LIFETIME: Duration = Duration::from_secs(90 * 86_400);
/// A serving certificate is reissued when it has less than this left.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);
/// Longest a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a connection waits for a handshake slot before it is closed:
/// as long as a handshake may take, so that two thousand agents
/// reconnecting at once (a handshake and a report each, one thread) are
/// all served in turn rather than sent into backoff.
pub const HANDSHAKE_QUEUE_WAIT: Duration = HANDSHAKE_TIMEOUT;
/// Handshakes finished but not yet taken by the server.
const ACCEPTED_BACKLOG: usize = 64;

/// A certificate or key that cannot be made or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub String);

/// A PEM certificate and its private key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// A serving certificate and when it expires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    pub pem: Pem,
    pub not_after: SystemTime,
}

fn offset(t: SystemTime) -> time::OffsetDateTime {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn rcgen_error(what: &str) -> impl Fn(rcgen::Error) -> TlsError + '_ {
    move |e| TlsError(format!("{what}: {e}"))
}

/// The CA's parameters; the same name and key give the same issuer, so a
/// stored CA issues without its certificate being parsed.
fn ca_params(now: SystemTime) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = offset(now - Duration::from_secs(3600));
    p.not_after = offset(now + CA_LIFETIME);
    p
}

/// A new CA, valid for [`CA_LIFETIME`].
pub fn new_ca(now: SystemTime) -> Result<Pem, TlsError> {
    let key = KeyPair::generate().map_err(rcgen_error("generating the CA key"))?;
    let cert = ca_params(now)
        .self_signed(&key)
        .map_err(rcgen_error("signing the CA"))?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// A serving certificate for `names` (DNS names; the first is its
/// subject), issued by `ca_key`, valid for [`SERVING_LIFETIME`].
pub fn issue(ca_key: &str, names: &[String], now: SystemTime) -> Result<Issued, TlsError> {
    let ca_key = KeyPair::from_pem(ca_key).map_err(rcgen_error("reading the CA key"))?;
    let issuer = Issuer::new(ca_params(now), ca_key);
    let mut p = CertificateParams::new(names.to_vec()).map_err(rcgen_error("the serving names"))?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        names.first().map_or("ringwarden-operator", String::as_str),
    );
    p.distinguished_name = dn;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.not_before = offset(now - Duration::from_secs(300));
    let not_after = now + SERVING_LIFETIME;
    p.not_after = offset(not_after);
    let key = KeyPair::generate().map_err(rcgen_error("generating the serving key"))?;
    let cert = p
        .signed_by(&key, &issuer)
        .map_err(rcgen_error("signing the serving certificate"))?;
    Ok(Issued {
        pem: Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        },
        // Whole seconds, as the certificate holds it.
        not_after: SystemTime::UNIX_EPOCH
            + Duration::from_secs(
                not_after
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            ),
    })
}

/// Whether a serving certificate expiring at `not_after` is due for
/// reissue at `now`.
pub fn needs_renewal(not_after: SystemTime, now: SystemTime) -> bool {
    not_after
        .duration_since(now)
        .map_or(true, |left| left < RENEW_BEFORE)
}

/// Parses a PEM certificate chain and key into what rustls serves.
pub fn certified_key(pem: &Pem) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.cert.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError(format!("the serving certificate is not PEM: {e}")))?;
    if chain.is_empty() {
        return Err(TlsError(
            "the serving certificate file holds no certificate".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(pem.key.as_bytes())
        .map_err(|e| TlsError(format!("the serving key is not a PEM private key: {e}")))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| TlsError(format!("the serving key cannot sign: {e}")))?;
    Ok(CertifiedKey::new(chain, signer))
}

/// The serving certificate, replaceable while the listener runs.
#[derive(Debug)]
pub struct CertStore(RwLock<Arc<CertifiedKey>>);

impl CertStore {
    pub fn new(pem: &Pem) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(Self(RwLock::new(Arc::new(certified_key(pem)?)))))
    }

    /// Serves `pem` from the next handshake on.
    pub fn set(&self, pem: &Pem) -> Result<(), TlsError> {
        let key = Arc::new(certified_key(pem)?);
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = key;
        Ok(())
    }

    /// What the next handshake gets.
    pub fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// A TLS 1.2/1.3 server configuration speaking HTTP/2 with `store`'s
/// certificate.
pub fn server_config(store: Arc<CertStore>) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(format!("TLS versions: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Bounds on what a client can cost before it has authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Open connections from one IP address (one agent needs one; a node
    /// restarting its agent briefly two).
    pub per_address: usize,
    /// TLS handshakes in progress at once.
    pub handshakes: usize,
    /// Connections waiting for a handshake slot, each at most
    /// [`HANDSHAKE_QUEUE_WAIT`]; beyond, new connections are closed at
    /// once. A thousand agents reconnecting together wait their turn
    /// instead of backing off for seconds.
    pub queued: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            per_address: 16,
            handshakes: 256,
            queued: 4096,
        }
    }
}

/// How the TLS listener serves: certificate, bounds, and the counter of
/// connections it closed unserved.
#[derive(Clone)]
pub struct Serving {
    pub config: Arc<ServerConfig>,
    pub limits: Limits,
    /// `ringwarden_operator_connections_refused_total{reason}`: registered
    /// with the operator's metrics by whoever serves.
    pub refused: IntCounterVec,
}

impl Serving {
    pub fn new(config: Arc<ServerConfig>, limits: Limits) -> Self {
        let refused = IntCounterVec::new(
            Opts::new(
                "ringwarden_operator_connections_refused_total",
                "Connections to the agent and query ports closed before a stream, by reason: \
                 per_address (too many open from one IP), handshakes (too many handshakes \
                 waiting), handshake_failed, handshake_timeout",
            ),
            &["reason"],
        )
        .expect("a fixed, valid metric");
        Self {
            config,
            limits,
            refused,
        }
    }
}

/// Open connections per IP address.
#[derive(Default)]
struct PerAddress(Mutex<HashMap<IpAddr, usize>>);

impl PerAddress {
    /// Takes a slot for `ip` unless it holds `max` already.
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<Slot> {
        let mut m = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            table: Arc::clone(self),
            ip,
        })
    }
}

/// One open connection's place in [`PerAddress`], given back on drop.
struct Slot {
    table: Arc<PerAddress>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = self.table.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// A served TLS connection; its per-address slot is freed when the server
/// drops it.
pub struct Conn {
    inner: TlsStream<TcpStream>,
    info: TcpConnectInfo,
    _slot: Slot,
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accepts TCP connections on `listener` and yields those that complete
/// a TLS handshake within [`HANDSHAKE_TIMEOUT`], within `serving.limits`:
/// each handshake runs in a task of its own, so a silent client stalls
/// nobody else; a connection waits up to [`HANDSHAKE_QUEUE_WAIT`] for a
/// handshake slot, and connections over a bound are closed, counted.
pub fn incoming(
    listener: TcpListener,
    serving: Serving,
) -> impl Stream<Item = Result<Conn, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(ACCEPTED_BACKLOG);
    let acceptor = TlsAcceptor::from(Arc::clone(&serving.config));
    let table = Arc::new(PerAddress::default());
    let handshakes = Arc::new(tokio::sync::Semaphore::new(serving.limits.handshakes));
    let queue = Arc::new(tokio::sync::Semaphore::new(serving.limits.queued));
    let refused = serving.refused.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and the like: wait rather than spin.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            let Some(slot) = table.take(peer.ip(), serving.limits.per_address) else {
                refused.with_label_values(&["per_address"]).inc();
                continue;
            };
            let Ok(queued) = Arc::clone(&queue).try_acquire_owned() else {
                refused.with_label_values(&["handshakes"]).inc();
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let info = TcpConnectInfo {
                local_addr: tcp.local_addr().ok(),
                remote_addr: Some(peer),
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let refused = refused.clone();
            let handshakes = Arc::clone(&handshakes);
            tokio::spawn(async move {
                let permit =
                    tokio::time::timeout(HANDSHAKE_QUEUE_WAIT, handshakes.acquire_owned()).await;
                drop(queued);
                let Ok(Ok(permit)) = permit else {
                    refused.with_label_values(&["handshakes"]).inc();
                    return;
                };
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                drop(permit);
                match handshake {
                    Ok(Ok(inner)) => {
                        let _ = tx
                            .send(Ok(Conn {
                                inner,
                                info,
                                _slot: slot,
                            }))
                            .await;
                    }
                    Ok(Err(e)) => {
                        refused.with_label_values(&["handshake_failed"]).inc();
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        refused.with_label_values(&["handshake_timeout"]).inc();
                        tracing::debug!(%peer, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_ca_issues_a_serving_certificate_rustls_accepts() {
        use rustls::client::danger::ServerCertVerifier;
        let now = SystemTime::now();
        let ca = new_ca(now).unwrap();
        let names = vec!["ringwarden-operator.ringwarden-system.svc".to_string()];
        let s = issue(&ca.key, &names, now).unwrap();
        assert!(s.not_after > now + SERVING_LIFETIME - Duration::from_secs(2));
        let store = CertStore::new(&s.pem).unwrap();
        assert!(server_config(store).is_ok());
        // A verifier that trusts only the CA accepts the serving cert.
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca.cert.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let leaf = CertificateDer::pem_slice_iter(s.pem.cert.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from(names[0].clone()).unwrap();
        let ok =
            verifier.verify_server_cert(&leaf, &[], &name, &[], rustls::pki_types::UnixTime::now());
        assert!(ok.is_ok(), "{ok:?}");
        let other = rustls::pki_types::ServerName::try_from("elsewhere.example").unwrap();
        assert!(
            verifier
                .verify_server_cert(&leaf, &[], &other, &[], rustls::pki_types::UnixTime::now())
                .is_err()
        );
    }

    #[test]
    fn renewal_is_due_in_the_last_third_and_after_expiry() {
        let now = SystemTime::now();
        assert!(!needs_renewal(now + SERVING_LIFETIME, now));
        assert!(!needs_renewal(
            now + RENEW_BEFORE + Duration::from_secs(60),
            now
        ));
        assert!(needs_renewal(
            now + RENEW_BEFORE - Duration::from_secs(60),
            now
        ));
        assert!(needs_renewal(now - Duration::from_secs(1), now));
    }

    #[test]
    fn garbage_is_refused_with_the_reason() {
        let e = certified_key(&Pem {
            cert: "nope".into(),
            key: "nope".into(),
        })
        .unwrap_err();
        assert!(
            e.0.contains("no certificate") || e.0.contains("not PEM"),
            "{e}"
        );
    }
}
