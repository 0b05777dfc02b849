//! Who may read the query service when it is reachable beyond
//! `kubectl port-forward` (a `--query-addr` that is not loopback): the
//! caller sends a Kubernetes bearer token, the API server says who it is
//! (TokenReview) and whether that user may read ProbeSets in the namespace
//! asked about (SubjectAccessReview: `get probesets` there, or `list
//! probesets` cluster-wide for every namespace). Answers are cached
//! briefly by the token's hash.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use futures::future::BoxFuture;
use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
};
use kube::{Api, Client, api::PostParams};
use tokio::time::Instant;
use tonic::{Status, metadata::MetadataMap};

/// How long an answer is trusted.
pub const ACCESS_TTL: Duration = Duration::from_secs(30);
const CACHE_MAX: usize = 4_096;

/// Whether the holder of a token may read `namespace` (`""`: every one).
pub type Check =
    Arc<dyn Fn(String, String) -> BoxFuture<'static, Result<bool, String>> + Send + Sync>;

/// Answers by (token hash, namespace), with when they were given.
type Answers = HashMap<(Vec<u8>, String), (bool, Instant)>;

/// Access to the query service, with its cache.
pub struct Access {
    check: Check,
    cache: Mutex<Answers>,
}

impl Access {
    pub fn new(check: Check) -> Self {
        Self {
            check,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Lets the request through, or says why not.
    pub async fn authorize(&self, metadata: &MetadataMap, namespace: &str) -> Result<(), Status> {
        let token = metadata
            .get(ringwarden_proto::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated(
                    "this query service is reachable beyond port-forward, so it needs a \
                     Kubernetes token: pass --token-file (e.g. from `kubectl create token`)",
                )
            })?;
        let key = (
            ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
                .as_ref()
                .to_vec(),
            namespace.to_owned(),
        );
        let now = Instant::now();
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .filter(|(_, at)| now.duration_since(*at) < ACCESS_TTL)
            .map(|(allowed, _)| *allowed);
        let allowed = match cached {
            Some(a) => a,
            None => {
                let a = (self.check)(token.to_owned(), namespace.to_owned())
                    .await
                    .map_err(|e| Status::unavailable(format!("cannot check access: {e}")))?;
                let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
                if cache.len() >= CACHE_MAX {
                    cache.clear();
                }
                cache.insert(key, (a, now));
                a
            }
        };
        if allowed {
            Ok(())
        } else if namespace.is_empty() {
            Err(Status::permission_denied(
                "you may not list ProbeSets in every namespace; ask for one with -n <namespace>",
            ))
        } else {
            Err(Status::permission_denied(format!(
                "you may not get ProbeSets in namespace {namespace}"
            )))
        }
    }
}

/// The check against the API server: TokenReview, then
/// SubjectAccessReview. Needs `create` on both (cluster-wide).
pub fn kube_check(client: Client) -> Check {
    Arc::new(move |token, namespace| {
        let client = client.clone();
        Box::pin(async move {
            let review = Api::<TokenReview>::all(client.clone())
                .create(
                    &PostParams::default(),
                    &TokenReview {
                        spec: TokenReviewSpec {
                            token: Some(token),
                            audiences: None,
                        },
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| e.to_string())?;
            let Some(status) = review.status.filter(|s| s.authenticated == Some(true)) else {
                return Ok(false);
            };
            let user = status.user.unwrap_or_default();
            let everywhere = namespace.is_empty();
            let sar = SubjectAccessReview {
                spec: SubjectAccessReviewSpec {
                    user: user.username,
                    groups: user.groups,
                    uid: user.uid,
                    extra: user.extra,
                    resource_attributes: Some(ResourceAttributes {
                        group: Some("ringwarden.dev".into()),
                        resource: Some("probesets".into()),
                        verb: Some(if everywhere { "list" } else { "get" }.into()),
                        namespace: (!everywhere).then_some(namespace),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            };
            let answer = Api::<SubjectAccessReview>::all(client)
                .create(&PostParams::default(), &sar)
                .await
                .map_err(|e| e.to_string())?;
            Ok(answer.status.is_some_and(|s| s.allowed))
        })
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tonic::metadata::MetadataValue;

    use super::*;

    fn with(token: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert(
            ringwarden_proto::AUTHORIZATION,
            MetadataValue::try_from(format!("Bearer {token}")).unwrap(),
        );
        m
    }

    #[tokio::test]
    async fn only_a_token_allowed_in_the_namespace_reads_it() {
        let calls = Arc::new(AtomicUsize::new(0));
        let access = Access::new({
            let calls = Arc::clone(&calls);
            Arc::new(move |token: String, ns: String| {
                calls.fetch_add(1, Ordering::SeqCst);
                Box::pin(async move { Ok(token == "shop-viewer" && ns == "shop") })
            })
        });
        let e = access
            .authorize(&MetadataMap::new(), "shop")
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(access.authorize(&with("shop-viewer"), "shop").await.is_ok());
        let e = access
            .authorize(&with("shop-viewer"), "bank")
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("namespace bank"), "{e:?}");
        let e = access
            .authorize(&with("shop-viewer"), "")
            .await
            .unwrap_err();
        assert!(e.message().contains("-n <namespace>"), "{e:?}");
        // Cached: asking again costs no review.
        let before = calls.load(Ordering::SeqCst);
        assert!(access.authorize(&with("shop-viewer"), "shop").await.is_ok());
        assert_eq!(calls.load(Ordering::SeqCst), before);
    }
}
