//! The operator's serving certificate and the CA agents pin.
//!
//! Two sources. **Managed** (the default): the operator keeps its own CA
//! and serving certificate in a Secret it owns (`ca.crt`, `ca.key`,
//! `tls.crt`, `tls.key`, `tls.notAfter`), creates them on first start and
//! reissues the serving certificate, from the same CA, when less than
//! [`RENEW_BEFORE`](super::tls::RENEW_BEFORE) is left. **Files**: a
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
/// How often the certificate's source is checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(60);

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
    pub ca_cert: String,
}

/// What to do with the managed Secret as it stands.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// It holds a certificate good for a while: serve it.
    Keep(Pki),
    /// Write this (a new CA and certificate, or a reissued certificate)
    /// and serve it.
    Write(BTreeMap<String, String>, Pki),
}

fn text(data: &BTreeMap<String, ByteString>, key: &str) -> Option<String> {
    data.get(key)
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
        .filter(|s| !s.trim().is_empty())
}

/// Decides, from the Secret's data (`None`: it does not exist), what to
/// serve and whether to write. Pure, so every case is tested.
pub fn decide(
    existing: Option<&BTreeMap<String, ByteString>>,
    names: &[String],
    now: SystemTime,
) -> Result<Decision, TlsError> {
    let data = existing.cloned().unwrap_or_default();
    let ca = match (text(&data, CA_CERT), text(&data, CA_KEY)) {
        (Some(cert), Some(key)) => Pem { cert, key },
        // No CA (or half of one): start over, agents pick up the new one.
        _ => tls::new_ca(now)?,
    };
    let not_after = text(&data, TLS_NOT_AFTER)
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s));
    let current = match (text(&data, TLS_CERT), text(&data, TLS_KEY), not_after) {
        (Some(cert), Some(key), Some(not_after))
            if text(&data, CA_KEY).is_some() && !tls::needs_renewal(not_after, now) =>
        {
            let pem = Pem { cert, key };
            // Unreadable: reissue rather than serve nothing.
            tls::certified_key(&pem).ok().map(|_| pem)
        }
        _ => None,
    };
    if let Some(serving) = current {
        return Ok(Decision::Keep(Pki {
            serving,
            ca_cert: ca.cert,
        }));
    }
    let issued = tls::issue(&ca.key, names, now)?;
    let not_after = issued
        .not_after
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let data = BTreeMap::from([
        (CA_CERT.to_string(), ca.cert.clone()),
        (CA_KEY.to_string(), ca.key.clone()),
        (TLS_CERT.to_string(), issued.pem.cert.clone()),
        (TLS_KEY.to_string(), issued.pem.key.clone()),
        (TLS_NOT_AFTER.to_string(), not_after.to_string()),
    ]);
    Ok(Decision::Write(
        data,
        Pki {
            serving: issued.pem,
            ca_cert: ca.cert,
        },
    ))
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
}
