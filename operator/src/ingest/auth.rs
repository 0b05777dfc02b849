//! Agent authentication, the Kubernetes way: each agent sends its projected
//! service-account token (audience [`TOKEN_AUDIENCE`]) as
//! `authorization: Bearer <token>` metadata, and the operator asks the API
//! server whether it is valid with a TokenReview. Only the agent
//! ServiceAccount is let in. Positive answers are cached briefly, so a
//! thousand agents reconnecting cost the API server little.
//!
//! [`TokenReviewer`] talks to the API server; [`Authenticator`] is
//! generic over the [`Reviewer`] so tests can fake it.
//!
//! [`TOKEN_AUDIENCE`]: ringwarden_proto::TOKEN_AUDIENCE

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
    time::Duration,
};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::{Api, Client, api::PostParams};
use tokio::time::Instant;
use tonic::{Status, metadata::MetadataMap};

/// How long a positive review is trusted. Short: a deleted or rotated
/// ServiceAccount locks its agents out within this.
pub const CACHE_TTL: Duration = Duration::from_secs(60);
/// Most cached reviews; one per agent pod is the steady state.
const CACHE_MAX: usize = 16_384;
/// The user-info key under which the API server names the node a bound
/// token's pod runs on (Kubernetes 1.30 and later).
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// Who a token belongs to, as the API server says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Review {
    pub authenticated: bool,
    /// `system:serviceaccount:<namespace>:<name>` for a service account.
    pub username: String,
    /// The audiences the token is valid for, of those asked about.
    pub audiences: Vec<String>,
    /// The node of the pod the token is bound to, when the API server says.
    pub node: Option<String>,
    /// Why the token was refused.
    pub error: Option<String>,
}

/// Asks whether a token is valid.
pub trait Reviewer: Send + Sync + 'static {
    /// Reviews `token` for `audience`. `Err` when the review itself could
    /// not be made (the API server is unreachable).
    fn review(
        &self,
        token: &str,
        audience: &str,
    ) -> impl Future<Output = Result<Review, String>> + Send;
}

/// Reviews tokens with `authentication.k8s.io/v1` TokenReviews.
pub struct TokenReviewer {
    api: Api<TokenReview>,
}

impl TokenReviewer {
    pub fn new(client: Client) -> Self {
        Self {
            api: Api::all(client),
        }
    }
}

impl Reviewer for TokenReviewer {
    async fn review(&self, token: &str, audience: &str) -> Result<Review, String> {
        let request = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![audience.to_owned()]),
            },
            ..Default::default()
        };
        let answer = self
            .api
            .create(&PostParams::default(), &request)
            .await
            .map_err(|e| e.to_string())?;
        let status = answer.status.unwrap_or_default();
        let user = status.user.unwrap_or_default();
        Ok(Review {
            authenticated: status.authenticated.unwrap_or(false),
            username: user.username.unwrap_or_default(),
            audiences: status.audiences.unwrap_or_default(),
            node: user
                .extra
                .and_then(|mut extra| extra.remove(NODE_NAME_EXTRA))
                .and_then(|nodes| nodes.into_iter().next()),
            error: status.error,
        })
    }
}

/// An authenticated agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub username: String,
    /// The node its token is bound to, when known: its Hello must name
    /// the same node.
    pub node: Option<String>,
}

/// Lets in the agent ServiceAccount only.
pub struct Authenticator<R> {
    reviewer: R,
    audience: String,
    /// `system:serviceaccount:<namespace>:<name>`.
    expected: String,
    /// Positive reviews by the SHA-256 of the token (tokens themselves are
    /// not kept), with when they were made.
    cache: Mutex<HashMap<Vec<u8>, (Identity, Instant)>>,
}

impl<R: Reviewer> Authenticator<R> {
    /// Accepts tokens of ServiceAccount `namespace/name` for `audience`.
    pub fn new(reviewer: R, audience: &str, namespace: &str, name: &str) -> Self {
        Self {
            reviewer,
            audience: audience.to_owned(),
            expected: format!("system:serviceaccount:{namespace}:{name}"),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Who sent `metadata`'s bearer token. `UNAUTHENTICATED` without a
    /// valid token, `PERMISSION_DENIED` for a valid token of someone else,
    /// `UNAVAILABLE` when the review could not be made.
    pub async fn authenticate(&self, metadata: &MetadataMap) -> Result<Identity, Status> {
        let token = bearer(metadata)?;
        let key = ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
            .as_ref()
            .to_vec();
        let now = Instant::now();
        if let Some((who, at)) = self.lock().get(&key)
            && now.duration_since(*at) < CACHE_TTL
        {
            return Ok(who.clone());
        }
        let review = self
            .reviewer
            .review(token, &self.audience)
            .await
            .map_err(|e| Status::unavailable(format!("cannot review the token: {e}")))?;
        if !review.authenticated {
            return Err(Status::unauthenticated(format!(
                "the token was not accepted{}",
                review.error.map(|e| format!(": {e}")).unwrap_or_default()
            )));
        }
        if !review.audiences.contains(&self.audience) {
            return Err(Status::unauthenticated(format!(
                "the token is not for audience {:?}; mount a projected service-account token \
                 with that audience",
                self.audience
            )));
        }
        if review.username != self.expected {
            return Err(Status::permission_denied(format!(
                "{} is not the agent ServiceAccount ({})",
                review.username, self.expected
            )));
        }
        let who = Identity {
            username: review.username,
            node: review.node,
        };
        let mut cache = self.lock();
        if cache.len() >= CACHE_MAX {
            cache.retain(|_, (_, at)| now.duration_since(*at) < CACHE_TTL);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(key, (who.clone(), now));
        Ok(who)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, (Identity, Instant)>> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The token of `authorization: Bearer <token>`.
fn bearer(metadata: &MetadataMap) -> Result<&str, Status> {
    let value = metadata
        .get(ringwarden_proto::AUTHORIZATION)
        .ok_or_else(|| {
            Status::unauthenticated(
                "no authorization metadata; send `authorization: Bearer <token>` with the \
                 agent's projected service-account token",
            )
        })?
        .to_str()
        .map_err(|_| Status::unauthenticated("the authorization metadata is not text"))?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(Status::unauthenticated(
            "the authorization metadata is not `Bearer <token>`",
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use tonic::Code;

    use super::*;

    /// Knows two tokens: the agent's, bound to node-1, and another
    /// ServiceAccount's; counts reviews.
    #[derive(Clone, Default)]
    struct Fake(Arc<AtomicUsize>);

    impl Reviewer for Fake {
        async fn review(&self, token: &str, audience: &str) -> Result<Review, String> {
            self.0.fetch_add(1, Ordering::SeqCst);
            let user = match token {
                "agent-token" => "system:serviceaccount:ringwarden-system:ringwarden-agent",
                "other-token" => "system:serviceaccount:shop:web",
                "unreachable" => return Err("connection refused".into()),
                _ => {
                    return Ok(Review {
                        error: Some("invalid bearer token".into()),
                        ..Review::default()
                    });
                }
            };
            Ok(Review {
                authenticated: true,
                username: user.into(),
                audiences: vec![audience.into()],
                node: Some("node-1".into()),
                error: None,
            })
        }
    }

    fn auth(fake: &Fake) -> Authenticator<Fake> {
        Authenticator::new(
            fake.clone(),
            "ringwarden",
            "ringwarden-system",
            "ringwarden-agent",
        )
    }

    fn with(value: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("authorization", value.parse().unwrap());
        m
    }

    #[tokio::test]
    async fn only_the_agent_service_account_gets_in() {
        let fake = Fake::default();
        let a = auth(&fake);
        let who = a.authenticate(&with("Bearer agent-token")).await.unwrap();
        assert_eq!(who.node.as_deref(), Some("node-1"));
        for (metadata, code) in [
            (MetadataMap::new(), Code::Unauthenticated),
            (with("Basic agent-token"), Code::Unauthenticated),
            (with("Bearer "), Code::Unauthenticated),
            (with("Bearer forged"), Code::Unauthenticated),
            (with("Bearer other-token"), Code::PermissionDenied),
            (with("Bearer unreachable"), Code::Unavailable),
        ] {
            let e = a.authenticate(&metadata).await.unwrap_err();
            assert_eq!(e.code(), code, "{metadata:?}: {e}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn positive_reviews_are_cached_briefly() {
        let fake = Fake::default();
        let a = auth(&fake);
        for _ in 0..3 {
            a.authenticate(&with("Bearer agent-token")).await.unwrap();
        }
        assert_eq!(fake.0.load(Ordering::SeqCst), 1);
        tokio::time::advance(CACHE_TTL).await;
        a.authenticate(&with("Bearer agent-token")).await.unwrap();
        assert_eq!(fake.0.load(Ordering::SeqCst), 2);
        // Refusals are never cached: a token may become valid.
        for _ in 0..2 {
            a.authenticate(&with("Bearer forged")).await.unwrap_err();
        }
        assert_eq!(fake.0.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_token_for_another_audience_is_refused() {
        struct Elsewhere;
        impl Reviewer for Elsewhere {
            async fn review(&self, _: &str, _: &str) -> Result<Review, String> {
                Ok(Review {
                    authenticated: true,
                    username: "system:serviceaccount:ringwarden-system:ringwarden-agent".into(),
                    audiences: vec!["https://kubernetes.default.svc".into()],
                    ..Review::default()
                })
            }
        }
        let a = Authenticator::new(
            Elsewhere,
            "ringwarden",
            "ringwarden-system",
            "ringwarden-agent",
        );
        let e = a
            .authenticate(&with("Bearer agent-token"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
    }
}
