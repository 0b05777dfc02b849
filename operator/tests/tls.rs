//! The agent and query ports over TLS, attacked: a client that trusts
//! another CA, expects another name or speaks plaintext gets nothing; a
//! rotated certificate serves the next handshake without a restart; and
//! clients that connect and never finish a handshake stall no one else.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use ringwarden_operator::{
    ingest::grpc::{self, QueryApi, Transport},
    ingest::hub::Hub,
    ingest::tls::{self, CertStore, Pem},
    loopback::fixed_stores,
    metrics::Metrics,
};
use ringwarden_proto::v1::{StatusRequest, query_service_client::QueryServiceClient};
use rustls::pki_types::pem::PemObject;
use tokio::{net::TcpListener, sync::oneshot};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

const NAME: &str = "ringwarden-operator.ringwarden-system.svc";

struct Server {
    port: u16,
    store: Arc<CertStore>,
    ca: Pem,
    refused: prometheus::IntCounterVec,
    _stop: oneshot::Sender<()>,
}

/// The query service over TLS, with a fresh CA and a certificate for NAME.
async fn server() -> Server {
    let now = SystemTime::now();
    let ca = tls::new_ca(now).unwrap();
    let issued = tls::issue(&ca.key, &[NAME.to_string()], now).unwrap();
    let store = CertStore::new(&issued.pem).unwrap();
    let config = tls::server_config(Arc::clone(&store)).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tls::Serving::new(config, tls::Limits::default());
    let refused = serving.refused.clone();
    let registry = prometheus::Registry::new();
    let metrics = Metrics::new(&registry).unwrap();
    let hub = Hub::new(fixed_stores(vec![], &[], vec![]), metrics.ingest);
    tokio::spawn(grpc::serve_queries(
        listener,
        QueryApi::new(Arc::new(hub)),
        Transport::Tls(serving),
        async {
            let _ = stopped.await;
        },
    ));
    Server {
        port,
        store,
        ca,
        refused,
        _stop: stop,
    }
}

/// Asks for the status over TLS trusting `ca` and expecting `name`.
async fn ask(port: u16, ca: &str, name: &str) -> Result<(), String> {
    let channel = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca))
                .domain_name(name),
        )
        .unwrap()
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    QueryServiceClient::new(channel)
        .get_status(StatusRequest::default())
        .await
        .map(|_| ())
        .map_err(|s| format!("{s:?}"))
}

#[tokio::test]
async fn only_a_client_pinning_the_operators_ca_and_name_gets_an_answer() {
    let s = server().await;
    ask(s.port, &s.ca.cert, NAME).await.expect("the pinned CA");

    let other = tls::new_ca(SystemTime::now()).unwrap();
    let e = ask(s.port, &other.cert, NAME).await.unwrap_err();
    assert!(
        e.contains("InvalidCertificate"),
        "another CA must not verify the operator: {e}"
    );
    let e = ask(s.port, &s.ca.cert, "evil.example").await.unwrap_err();
    assert!(
        e.contains("InvalidCertificate") && e.contains("NotValidForName"),
        "the certificate names the operator's Service only: {e}"
    );

    // Plaintext gRPC against the TLS port: no answer.
    let plain = Endpoint::from_shared(format!("http://127.0.0.1:{}", s.port))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2))
        .connect()
        .await;
    if let Ok(channel) = plain {
        let r = QueryServiceClient::new(channel)
            .get_status(StatusRequest::default())
            .await;
        assert!(r.is_err(), "plaintext got an answer: {r:?}");
    }
}

#[tokio::test]
async fn a_rotated_certificate_serves_the_next_handshake_without_a_restart() {
    let s = server().await;
    let first = peer_certificate(s.port, &s.ca.cert).await;
    let renewed = tls::issue(&s.ca.key, &[NAME.to_string()], SystemTime::now()).unwrap();
    s.store.set(&renewed.pem).unwrap();
    let second = peer_certificate(s.port, &s.ca.cert).await;
    assert_ne!(first, second);
    let expected = rustls::pki_types::CertificateDer::from_pem_slice(renewed.pem.cert.as_bytes())
        .unwrap()
        .to_vec();
    assert_eq!(second, expected, "the new certificate is served");
    ask(s.port, &s.ca.cert, NAME)
        .await
        .expect("agents pinning the CA keep working");
}

/// The certificate the server presents, through a plain rustls client.
async fn peer_certificate(port: u16, ca: &str) -> Vec<u8> {
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let tls = connector
        .connect(ServerName::try_from(NAME).unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn silent_connections_stall_no_one_else() {
    let s = server().await;
    // Connections that never send a ClientHello: each waits out its own
    // handshake deadline, off the accept loop.
    // 200 of them, from 20 addresses (each within its own bound).
    let mut silent = Vec::new();
    for i in 0..200 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(format!("127.0.1.{}:0", 1 + i % 20).parse().unwrap())
            .unwrap();
        silent.push(
            socket
                .connect(format!("127.0.0.1:{}", s.port).parse().unwrap())
                .await
                .unwrap(),
        );
    }
    let started = Instant::now();
    ask(s.port, &s.ca.cert, NAME)
        .await
        .expect("a real client is served");
    assert!(
        started.elapsed() < tls::HANDSHAKE_TIMEOUT,
        "served only after {:?}",
        started.elapsed()
    );
    drop(silent);
}

/// One address opening connection after connection gets only its share;
/// the connections over it are closed at once and counted, and others
/// are served meanwhile.
#[tokio::test]
async fn one_address_gets_a_bounded_number_of_connections() {
    let s = server().await;
    let per_address = tls::Limits::default().per_address;
    // 127.0.0.2 is another loopback address: the flooder.
    let mut held = Vec::new();
    for _ in 0..per_address * 4 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        held.push(
            socket
                .connect(format!("127.0.0.1:{}", s.port).parse().unwrap())
                .await
                .unwrap(),
        );
    }
    let over = (per_address * 3) as u64;
    let counted = wait_for(|| s.refused.with_label_values(&["per_address"]).get(), over).await;
    assert_eq!(
        counted, over,
        "every connection over the bound is refused and counted"
    );
    ask(s.port, &s.ca.cert, NAME)
        .await
        .expect("another address is served meanwhile");
    drop(held);
}

/// Waits up to 5 s for `read` to reach `want`; returns what it read last.
async fn wait_for(read: impl Fn() -> u64, want: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = read();
        if v >= want || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
