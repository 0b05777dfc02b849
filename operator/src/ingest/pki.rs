//! The operator's serving certificate and the CA agents pin.
//!
//! Two sources. **Managed** (the default): the operator keeps its own CA
//! and serving certificate in a Secret it owns (`ca.crt`, `ca.key`,
//! `tls.crt`, `tls.key`, `tls.notAfter`, and the CA rotation's keys),
//! creates them on first start, reissues the serving certificate when less
//! than [`RENEW_BEFORE`](super::tls::RENEW_BEFORE) is left, and replaces
//! the CA at two thirds of its life with an overlap ([`decide`]). **Files**: a
//! certificate issued elsewhere (cert-manager's Secret, mounted), read
//! again whenever it changes. Either way the CA certificate is published
//! in a ConfigMap the agents mount and pin, and the serving certificate
//! goes into the running listener's [`CertStore`]. Replicas share the
//! Secret; a write that loses a race is read back next time.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use k8s_openapi::{
    ByteString,
    api::core::v1::{ConfigMap, Secret},
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};

use super::tls::{self, CertStore, Pem, TlsError};
use crate::cause::explain;

/// Keys of the managed Secret.
pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const TLS_CERT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";
/// Unix seconds after which `tls.crt` is no longer valid.
pub const TLS_NOT_AFTER: &str = "tls.notAfter";
/// Unix seconds after which the signing CA (`ca.crt`) is no longer valid.
/// A Secret without it (written before CAs were rotated, with a ten-year
/// CA) is rotated at once.
pub const CA_NOT_AFTER: &str = "ca.notAfter";
/// The CA that replaces the signing one: published to agents first, then
/// signing from [`CA_PICKUP`] later.
pub const NEXT_CA_CERT: &str = "next.ca.crt";
pub const NEXT_CA_KEY: &str = "next.ca.key";
pub const NEXT_CA_NOT_AFTER: &str = "next.ca.notAfter";
/// Unix seconds when the next CA was made (and so published).
pub const NEXT_CA_SINCE: &str = "next.ca.since";
/// The CA replaced, still trusted by agents until [`PREVIOUS_CA_UNTIL`]
/// (its key is gone: it signs nothing new).
pub const PREVIOUS_CA_CERT: &str = "previous.ca.crt";
/// Unix seconds until which the previous CA stays in the agents' bundle.
pub const PREVIOUS_CA_UNTIL: &str = "previous.ca.until";
/// How often the certificate's source is checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(60);
/// The signing CA is replaced once this much of [`tls::CA_LIFETIME`] has
/// passed (two thirds), leaving a third of its life for the changeover.
pub const CA_ROTATE_AFTER: Duration = Duration::from_secs(tls::CA_LIFETIME.as_secs() * 2 / 3);
/// How long both CAs are in the agents' bundle before the new one signs,
/// and the old one stays after: far more than the kubelet takes to update
/// a mounted ConfigMap (a minute or two) and the agents, which read the
/// bundle at every connection, take to use it; and more than the
/// [`CHECK_EVERY`] other replicas take to serve the new certificate.
pub const CA_PICKUP: Duration = Duration::from_secs(86_400);

/// Where the serving certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The operator's own CA, in Secret `secret`; the serving certificate
    /// names `names` (the Service's DNS names).
    Managed { secret: String, names: Vec<String> },
    /// PEM files (a mounted cert-manager Secret); `ca` is the bundle agents
    /// are given (cert-manager's `ca.crt`).
    Files {
        cert: PathBuf,
        key: PathBuf,
        ca: PathBuf,
    },
}

/// What the listener serves and what agents must trust.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pki {
    pub serving: Pem,
    /// The CA certificates agents trust (PEM, one or more): the signing
    /// CA, and during a rotation the next or the previous one.
    pub ca_cert: String,
}

/// What to do with the managed Secret as it stands.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// It holds a certificate good for a while: serve it.
    Keep(Pki),
    /// Write this (a new CA and certificate, a reissued certificate, or a
    /// step of a CA rotation) and serve it.
    Write(BTreeMap<String, String>, Pki),
}

fn text(data: &BTreeMap<String, ByteString>, key: &str) -> Option<String> {
    data.get(key)
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
        .filter(|s| !s.trim().is_empty())
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn time_at(data: &BTreeMap<String, ByteString>, key: &str) -> Option<SystemTime> {
    text(data, key)
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
}

/// A new CA and when it expires.
fn fresh_ca(now: SystemTime) -> Result<(Pem, SystemTime), TlsError> {
    let pem = tls::new_ca(now)?;
    Ok((
        pem,
        SystemTime::UNIX_EPOCH + Duration::from_secs(unix(now + tls::CA_LIFETIME)),
    ))
}

/// Whether a CA expiring at `not_after` is due to be replaced at `now`.
pub fn rotation_due(not_after: SystemTime, now: SystemTime) -> bool {
    now + (tls::CA_LIFETIME - CA_ROTATE_AFTER) >= not_after
}

/// Decides, from the Secret's data (`None`: it does not exist), what to
/// serve and whether to write. Pure, so every case is tested, with any
/// clock.
///
/// The CA's life: made with the Secret; at [`CA_ROTATE_AFTER`], a next
/// CA is made and published beside it; [`CA_PICKUP`] later, the next CA
/// signs a new serving certificate and the old one (its key dropped) stays
/// in the bundle for [`CA_PICKUP`] more. So the certificate served is
/// always signed by a CA that agents have had for a day.
pub fn decide(
    existing: Option<&BTreeMap<String, ByteString>>,
    names: &[String],
    now: SystemTime,
) -> Result<Decision, TlsError> {
    let data = existing.cloned().unwrap_or_default();
    let stored = |key: &str| text(&data, key);
    // No CA (or half of one): start over, agents pick up the new one.
    let started_over = stored(CA_CERT).is_none() || stored(CA_KEY).is_none();
    let (mut ca, mut ca_not_after) = match (stored(CA_CERT), stored(CA_KEY)) {
        (Some(cert), Some(key)) => (Pem { cert, key }, time_at(&data, CA_NOT_AFTER)),
        _ => {
            let (pem, not_after) = fresh_ca(now)?;
            (pem, Some(not_after))
        }
    };
    let mut next = match (
        stored(NEXT_CA_CERT),
        stored(NEXT_CA_KEY),
        time_at(&data, NEXT_CA_NOT_AFTER),
        time_at(&data, NEXT_CA_SINCE),
    ) {
        (Some(cert), Some(key), Some(not_after), Some(since)) if !started_over => {
            Some((Pem { cert, key }, not_after, since))
        }
        _ => None,
    };
    let mut previous = match (stored(PREVIOUS_CA_CERT), time_at(&data, PREVIOUS_CA_UNTIL)) {
        (Some(cert), Some(until)) if !started_over => Some((cert, until)),
        _ => None,
    };
    let mut reissue = started_over;
    // The next CA has been in the agents' bundle long enough: it signs.
    if let Some((pem, not_after, _)) = next.take_if(|(_, _, since)| now >= *since + CA_PICKUP) {
        previous = Some((ca.cert, now + CA_PICKUP));
        ca = pem;
        ca_not_after = Some(not_after);
        reissue = true;
    }
    if next.is_none() && ca_not_after.is_none_or(|t| rotation_due(t, now)) {
        let (pem, not_after) = fresh_ca(now)?;
        next = Some((pem, not_after, now));
    }
    if previous.as_ref().is_some_and(|(_, until)| now >= *until) {
        previous = None;
    }

    let current = match (
        stored(TLS_CERT),
        stored(TLS_KEY),
        time_at(&data, TLS_NOT_AFTER),
    ) {
        (Some(cert), Some(key), Some(not_after))
            if !reissue && !tls::needs_renewal(not_after, now) =>
        {
            let pem = Pem { cert, key };
            // Unreadable: reissue rather than serve nothing.
            tls::certified_key(&pem).ok().map(|_| (pem, not_after))
        }
        _ => None,
    };
    let (serving, serving_not_after) = match current {
        Some(c) => c,
        None => {
            let issued = tls::issue(&ca.key, names, now)?;
            (issued.pem, issued.not_after)
        }
    };

    let mut bundle = ca.cert.trim_end().to_owned() + "\n";
    let mut out = BTreeMap::from([
        (CA_CERT.to_string(), ca.cert.clone()),
        (CA_KEY.to_string(), ca.key.clone()),
        (TLS_CERT.to_string(), serving.cert.clone()),
        (TLS_KEY.to_string(), serving.key.clone()),
        (
            TLS_NOT_AFTER.to_string(),
            unix(serving_not_after).to_string(),
        ),
    ]);
    if let Some(t) = ca_not_after {
        out.insert(CA_NOT_AFTER.into(), unix(t).to_string());
    }
    if let Some((pem, not_after, since)) = &next {
        bundle += &(pem.cert.trim_end().to_owned() + "\n");
        out.insert(NEXT_CA_CERT.into(), pem.cert.clone());
        out.insert(NEXT_CA_KEY.into(), pem.key.clone());
        out.insert(NEXT_CA_NOT_AFTER.into(), unix(*not_after).to_string());
        out.insert(NEXT_CA_SINCE.into(), unix(*since).to_string());
    }
    if let Some((cert, until)) = &previous {
        bundle += &(cert.trim_end().to_owned() + "\n");
        out.insert(PREVIOUS_CA_CERT.into(), cert.clone());
        out.insert(PREVIOUS_CA_UNTIL.into(), unix(*until).to_string());
    }
    let pki = Pki {
        serving,
        ca_cert: bundle,
    };
    let unchanged = data.len() == out.len()
        && out
            .iter()
            .all(|(k, v)| data.get(k).is_some_and(|b| b.0 == v.as_bytes()));
    Ok(if unchanged {
        Decision::Keep(pki)
    } else {
        Decision::Write(out, pki)
    })
}

/// The Service's DNS names agents may use: `name`, `name.ns`,
/// `name.ns.svc` and `name.ns.svc.cluster.local`.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
        service.to_string(),
    ]
}

/// Reads the certificate from its source, writing the managed Secret when
/// it must be created or renewed. The Secret is owned by `owner` (the
/// operator's Deployment), so uninstalling the operator removes it; one
/// written without an owner is adopted.
pub async fn load(
    client: &Client,
    namespace: &str,
    source: &Source,
    owner: Option<&OwnerReference>,
) -> Result<Pki, TlsError> {
    match source {
        Source::Files { cert, key, ca } => {
            let read = |p: &PathBuf| {
                std::fs::read_to_string(p)
                    .map_err(|e| TlsError(format!("cannot read {}: {e}", p.display())))
            };
            Ok(Pki {
                serving: Pem {
                    cert: read(cert)?,
                    key: read(key)?,
                },
                ca_cert: read(ca)?,
            })
        }
        Source::Managed { secret, names } => {
            let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
            let existing = api.get_opt(secret).await.map_err(|e| {
                TlsError(format!(
                    "reading Secret {namespace}/{secret}: {}",
                    explain(&e, "get", "secrets")
                ))
            })?;
            let decision = decide(
                existing.as_ref().and_then(|s| s.data.as_ref()),
                names,
                SystemTime::now(),
            )?;
            let (data, pki) = match decision {
                Decision::Keep(pki) => {
                    if let Some(mut s) = existing
                        && crate::owner::adopt(&mut s.metadata, owner)
                    {
                        // Adopting is worth a try, not a failure to start.
                        if let Err(e) = api.replace(secret, &PostParams::default(), &s).await {
                            tracing::warn!(
                                secret = %secret,
                                error = %explain(&e, "update", "secrets"),
                                "cannot make the operator's Deployment the owner of its TLS Secret"
                            );
                        }
                    }
                    return Ok(pki);
                }
                Decision::Write(data, pki) => (data, pki),
            };
            let data: BTreeMap<String, ByteString> = data
                .into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect();
            let written = match existing {
                Some(mut s) => {
                    crate::owner::adopt(&mut s.metadata, owner);
                    s.data = Some(data);
                    s.string_data = None;
                    let name = secret.clone();
                    api.replace(&name, &PostParams::default(), &s).await
                }
                None => {
                    let s = Secret {
                        metadata: ObjectMeta {
                            name: Some(secret.clone()),
                            namespace: Some(namespace.to_string()),
                            labels: Some(BTreeMap::from([(
                                "app.kubernetes.io/managed-by".to_string(),
                                "ringwarden-operator".to_string(),
                            )])),
                            owner_references: crate::owner::references(owner),
                            ..Default::default()
                        },
                        type_: Some("kubernetes.io/tls".into()),
                        data: Some(data),
                        ..Default::default()
                    };
                    api.create(&PostParams::default(), &s).await
                }
            };
            match written {
                Ok(_) => {
                    tracing::info!(secret = %secret, "wrote the operator's serving certificate");
                    Ok(pki)
                }
                // Another replica wrote first: serve what it wrote.
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    let s = api.get(secret).await.map_err(|e| {
                        TlsError(format!(
                            "re-reading Secret {secret}: {}",
                            explain(&e, "get", "secrets")
                        ))
                    })?;
                    match decide(s.data.as_ref(), names, SystemTime::now())? {
                        Decision::Keep(pki) => Ok(pki),
                        Decision::Write(..) => Err(TlsError(format!(
                            "Secret {namespace}/{secret} changed while writing it; retrying"
                        ))),
                    }
                }
                Err(e) => Err(TlsError(format!(
                    "writing Secret {namespace}/{secret}: {}",
                    explain(&e, "create and update", "secrets")
                ))),
            }
        }
    }
}

/// Publishes the CA agents pin, as ConfigMap `name` (key `ca.crt`),
/// owned by `owner` (the operator's Deployment).
pub async fn publish_ca(
    client: &Client,
    namespace: &str,
    name: &str,
    ca_cert: &str,
    owner: Option<&OwnerReference>,
) -> Result<(), TlsError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            owner_references: crate::owner::references(owner),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(CA_CERT.to_string(), ca_cert.to_string())])),
        ..Default::default()
    };
    api.patch(
        name,
        &PatchParams::apply(crate::reconcile::render::FIELD_MANAGER).force(),
        &Patch::Apply(&cm),
    )
    .await
    .map(|_| ())
    .map_err(|e| {
        TlsError(format!(
            "publishing the CA in ConfigMap {namespace}/{name}: {}",
            explain(&e, "patch", "configmaps")
        ))
    })
}

/// Where the certificate's objects live, and who owns them.
#[derive(Clone, Debug)]
pub struct Place {
    pub namespace: String,
    /// The ConfigMap the CA is published in.
    pub ca_configmap: String,
    /// The operator's Deployment, owner of the Secret and the ConfigMap.
    pub owner: Option<OwnerReference>,
}

/// Keeps `store` serving the current certificate and the CA ConfigMap up
/// to date, checking every [`CHECK_EVERY`] until `stopped` completes.
pub async fn keep(
    client: Client,
    place: Place,
    source: Source,
    store: Arc<CertStore>,
    mut last: Pki,
    stopped: impl Future<Output = ()>,
) {
    let Place {
        namespace,
        ca_configmap,
        owner,
    } = place;
    let owner = owner.as_ref();
    let mut published = false;
    tokio::pin!(stopped);
    loop {
        if !published {
            match publish_ca(&client, &namespace, &ca_configmap, &last.ca_cert, owner).await {
                Ok(()) => published = true,
                Err(e) => tracing::warn!(error = %e, "the agents' CA could not be published"),
            }
        }
        tokio::select! {
            () = &mut stopped => return,
            () = tokio::time::sleep(CHECK_EVERY) => {}
        }
        match load(&client, &namespace, &source, owner).await {
            Ok(pki) if pki != last => {
                if let Err(e) = store.set(&pki.serving) {
                    tracing::warn!(error = %e, "the new serving certificate is unusable; keeping the old");
                    continue;
                }
                tracing::info!("serving a new certificate");
                published = published && pki.ca_cert == last.ca_cert;
                last = pki;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "checking the serving certificate failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(d: &BTreeMap<String, String>) -> BTreeMap<String, ByteString> {
        d.iter()
            .map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes())))
            .collect()
    }

    #[test]
    fn a_missing_secret_gets_a_ca_and_a_certificate_then_both_are_kept() {
        let names = service_names("ringwarden-operator", "ringwarden-system");
        let now = SystemTime::now();
        let Decision::Write(data, first) = decide(None, &names, now).unwrap() else {
            panic!("nothing to keep yet")
        };
        for key in [CA_CERT, CA_KEY, TLS_CERT, TLS_KEY, TLS_NOT_AFTER] {
            assert!(data.contains_key(key), "{key}");
        }
        let later = now + Duration::from_secs(86_400);
        assert_eq!(
            decide(Some(&bytes(&data)), &names, later).unwrap(),
            Decision::Keep(first)
        );
    }

    #[test]
    fn a_certificate_near_its_end_is_reissued_by_the_same_ca() {
        let names = service_names("ringwarden-operator", "ns");
        let now = SystemTime::now();
        let Decision::Write(data, first) = decide(None, &names, now).unwrap() else {
            panic!()
        };
        let late = now + tls::SERVING_LIFETIME - tls::RENEW_BEFORE + Duration::from_secs(60);
        let Decision::Write(renewed, second) = decide(Some(&bytes(&data)), &names, late).unwrap()
        else {
            panic!("due for renewal")
        };
        assert_eq!(second.ca_cert, first.ca_cert, "agents keep their pin");
        assert_eq!(renewed[CA_KEY], data[CA_KEY]);
        assert_ne!(second.serving, first.serving);
    }

    #[test]
    fn a_secret_without_its_ca_key_starts_over() {
        let names = service_names("op", "ns");
        let now = SystemTime::now();
        let Decision::Write(mut data, first) = decide(None, &names, now).unwrap() else {
            panic!()
        };
        data.remove(CA_KEY);
        let Decision::Write(_, second) = decide(Some(&bytes(&data)), &names, now).unwrap() else {
            panic!("cannot renew without the CA key")
        };
        assert_ne!(second.ca_cert, first.ca_cert);
    }

    /// Whether an agent trusting `bundle` accepts `serving` at `now`.
    fn trusts(bundle: &str, serving: &Pem, name: &str, now: SystemTime) -> bool {
        use rustls::{
            client::danger::ServerCertVerifier,
            pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
        };
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let leaf = CertificateDer::pem_slice_iter(serving.cert.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let name = ServerName::try_from(name.to_owned()).unwrap();
        let at = UnixTime::since_unix_epoch(now.duration_since(SystemTime::UNIX_EPOCH).unwrap());
        verifier
            .verify_server_cert(&leaf, &[], &name, &[], at)
            .is_ok()
    }

    fn certs(bundle: &str) -> usize {
        bundle.matches("BEGIN CERTIFICATE").count()
    }

    /// Three years on a fake clock, checked every 12 hours: the CA is
    /// replaced before it expires, and an agent whose copy of the bundle
    /// is up to 12 hours old always trusts the certificate served.
    #[test]
    fn the_ca_is_rotated_before_expiry_with_an_overlap_agents_trust() {
        let names = service_names("ringwarden-operator", "ringwarden-system");
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let step = Duration::from_secs(12 * 3600);
        let mut secret: Option<BTreeMap<String, ByteString>> = None;
        let mut published: Vec<String> = Vec::new();
        let mut signing_cas = Vec::<String>::new();
        let mut now = start;
        while now < start + 3 * tls::CA_LIFETIME {
            let pki = match decide(secret.as_ref(), &names, now).unwrap() {
                Decision::Keep(pki) => pki,
                Decision::Write(data, pki) => {
                    secret = Some(bytes(&data));
                    pki
                }
            };
            let data = secret.as_ref().unwrap();
            let ca = text(data, CA_CERT).unwrap();
            if signing_cas.last() != Some(&ca) {
                signing_cas.push(ca.clone());
            }
            // The signing CA is never older than its rotation point plus
            // the changeover, so it never expires under the agents.
            let ca_not_after = time_at(data, CA_NOT_AFTER).unwrap();
            assert!(
                ca_not_after >= now + tls::CA_LIFETIME - CA_ROTATE_AFTER - CA_PICKUP - step,
                "the signing CA is too close to its end at day {}",
                now.duration_since(start).unwrap().as_secs() / 86_400
            );
            assert!(pki.ca_cert.contains(ca.trim_end()));
            assert!(
                certs(&pki.ca_cert) <= 2,
                "at most two CAs are trusted at once"
            );
            let stale = published.last().unwrap_or(&pki.ca_cert).clone();
            for bundle in [&pki.ca_cert, &stale] {
                assert!(
                    trusts(bundle, &pki.serving, &names[0], now),
                    "an agent's bundle no longer verifies the certificate served at day {}",
                    now.duration_since(start).unwrap().as_secs() / 86_400
                );
            }
            published.push(pki.ca_cert);
            now += step;
        }
        // Three years of a one-year CA: the first and three successors.
        assert!(signing_cas.len() >= 4, "{} CAs", signing_cas.len());
        // A retired CA leaves the bundle after the changeover.
        let last = published.last().unwrap();
        assert!(!last.contains(signing_cas[0].trim_end()));
    }

    #[test]
    fn a_ten_year_ca_from_before_rotation_is_replaced_without_breaking_agents() {
        let names = service_names("op", "ns");
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let Decision::Write(mut data, first) = decide(None, &names, now).unwrap() else {
            panic!()
        };
        // As written before rotation existed.
        data.remove(CA_NOT_AFTER);
        data.remove(NEXT_CA_CERT);
        let old = bytes(&data);
        let Decision::Write(rotating, second) = decide(Some(&old), &names, now).unwrap() else {
            panic!("a CA of unknown age is due for rotation")
        };
        assert!(rotating.contains_key(NEXT_CA_CERT));
        // The certificate served is kept; agents get both CAs first.
        assert_eq!(second.serving, first.serving);
        assert_eq!(certs(&second.ca_cert), 2);
        assert!(trusts(&first.ca_cert, &second.serving, &names[0], now));
        // A day later the new CA signs, and agents holding the bundle
        // trust what is served.
        let later = now + CA_PICKUP;
        let Decision::Write(rotated, third) =
            decide(Some(&bytes(&rotating)), &names, later).unwrap()
        else {
            panic!("the next CA takes over")
        };
        assert_ne!(third.serving, second.serving);
        assert_eq!(rotated[CA_CERT], rotating[NEXT_CA_CERT]);
        assert_eq!(rotated[PREVIOUS_CA_CERT], rotating[CA_CERT]);
        assert!(!rotated.contains_key(NEXT_CA_CERT));
        assert!(trusts(&second.ca_cert, &third.serving, &names[0], later));
        assert!(!trusts(&first.ca_cert, &third.serving, &names[0], later));
    }
}
