//! Agent authentication, the Kubernetes way: each agent sends its projected
//! service-account token (audience [`TOKEN_AUDIENCE`]) as
//! `authorization: Bearer <token>` metadata, and the operator asks the API
//! server whether it is valid with a TokenReview. Only the agent
//! ServiceAccount is let in, and only for the node its token is bound to:
//! the node the API server names (user extra
//! `authentication.kubernetes.io/node-name`), or else the node of the pod
//! it names (`…/pod-name` and `…/pod-uid`), read from the pod's
//! `spec.nodeName`. A token bound to neither is refused: nothing else says
//! which node an agent may speak for. Positive answers are cached briefly,
//! so a thousand agents reconnecting cost the API server little.
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

use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    core::v1::Pod,
};
use kube::{Api, Client, api::PostParams};
use tokio::time::Instant;
use tonic::{Status, metadata::MetadataMap};

/// How long a positive review is trusted. Short: a deleted or rotated
/// ServiceAccount locks its agents out within this.
pub const CACHE_TTL: Duration = Duration::from_secs(60);
/// Most cached reviews; one per agent pod is the steady state.
const CACHE_MAX: usize = 16_384;
/// How long a refused token is answered without asking the API server
/// again: long enough that a client retrying a bad token costs one review
/// per period, short enough that a token that becomes valid gets in soon.
pub const REFUSAL_TTL: Duration = Duration::from_secs(10);
/// TokenReviews per second, sustained, and at once: a thousand agents
/// reconnecting together are all reviewed within a few seconds, and no
/// flood of fresh tokens makes the operator hammer the API server.
pub const REVIEWS_PER_SECOND: u32 = 200;
const REVIEW_BURST: f64 = 400.0;
/// How long a review past the burst may wait for its turn rather than be
/// refused: a fleet reconnecting after the cache expired is served in
/// order at the rate, not sent into backoff (which costs each agent its
/// jitter on top). At most `REVIEWS_PER_SECOND × REVIEW_WAIT` wait.
pub const REVIEW_WAIT: Duration = Duration::from_secs(5);
/// Most pods whose node is cached; one per agent pod is the steady state.
const POD_CACHE_MAX: usize = 16_384;
/// The user-info key under which the API server names the node a bound
/// token's pod runs on (Kubernetes 1.30 and later).
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
/// The user-info keys naming the pod a token is bound to.
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
pub const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";

/// The pod a token is bound to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BoundPod {
    pub name: String,
    pub uid: String,
}

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
    /// The pod the token is bound to, when the API server says.
    pub pod: Option<BoundPod>,
    /// Why the token was refused.
    pub error: Option<String>,
}

/// Where a pod is, as the API server says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodPlace {
    pub uid: String,
    /// `spec.nodeName`; `None` until the pod is scheduled.
    pub node: Option<String>,
}

/// Asks the API server about tokens and the pods they are bound to.
pub trait Reviewer: Send + Sync + 'static {
    /// Reviews `token` for `audience`. `Err` when the review itself could
    /// not be made (the API server is unreachable).
    fn review(
        &self,
        token: &str,
        audience: &str,
    ) -> impl Future<Output = Result<Review, String>> + Send;

    /// Pod `namespace/name`, or `None` if there is none. `Err` when the
    /// API server could not be asked.
    fn pod(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<PodPlace>, String>> + Send;
}

/// Reviews tokens with `authentication.k8s.io/v1` TokenReviews and reads
/// pods of the agents' namespace.
pub struct TokenReviewer {
    client: Client,
}

impl TokenReviewer {
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

fn first_extra(
    extra: &mut Option<std::collections::BTreeMap<String, Vec<String>>>,
    key: &str,
) -> Option<String> {
    extra
        .as_mut()
        .and_then(|e| e.remove(key))
        .and_then(|values| values.into_iter().next())
        .filter(|v| !v.is_empty())
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
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &request)
            .await
            .map_err(|e| e.to_string())?;
        let status = answer.status.unwrap_or_default();
        let user = status.user.unwrap_or_default();
        let mut extra = user.extra;
        let node = first_extra(&mut extra, NODE_NAME_EXTRA);
        let pod = first_extra(&mut extra, POD_NAME_EXTRA).map(|name| BoundPod {
            name,
            uid: first_extra(&mut extra, POD_UID_EXTRA).unwrap_or_default(),
        });
        Ok(Review {
            authenticated: status.authenticated.unwrap_or(false),
            username: user.username.unwrap_or_default(),
            audiences: status.audiences.unwrap_or_default(),
            node,
            pod,
            error: status.error,
        })
    }

    async fn pod(&self, namespace: &str, name: &str) -> Result<Option<PodPlace>, String> {
        let pod = Api::<Pod>::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(|e| e.to_string())?;
        Ok(pod.map(|p| PodPlace {
            uid: p.metadata.uid.unwrap_or_default(),
            node: p.spec.and_then(|s| s.node_name).filter(|n| !n.is_empty()),
        }))
    }
}

/// An authenticated agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub username: String,
    /// The node its token is bound to: the only node it may report for.
    pub node: String,
}

/// Why an agent's stream was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no authorization metadata; send `authorization: Bearer <token>` with the agent's \
         projected service-account token"
    )]
    NoToken,
    #[error("the authorization metadata is not `Bearer <token>`")]
    NotBearer,
    #[error("the token was not accepted{}", .0.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    Rejected(Option<String>),
    #[error(
        "the token is not for audience {0:?}; mount a projected service-account token with \
         that audience"
    )]
    Audience(String),
    #[error("{user} is not the agent ServiceAccount ({expected})")]
    Account { user: String, expected: String },
    #[error(
        "the token is bound to no node and no pod, so it cannot say which node the agent \
         reports for; mount the projected service-account token the kubelet binds to the \
         agent pod (serviceAccountToken with audience {0:?}), not a token made by hand"
    )]
    Unbound(String),
    #[error(
        "the token is bound to pod {namespace}/{name}, which {why}; the agent reconnects with \
         its current pod's token"
    )]
    Pod {
        namespace: String,
        name: String,
        why: String,
    },
    #[error("cannot review the token: {0}")]
    Unavailable(String),
    #[error(
        "too many token reviews at once ({0} per second at most); the agent retries with \
         backoff"
    )]
    Throttled(u32),
}

impl AuthError {
    /// The `reason` label of `ringwarden_operator_agent_streams_refused_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::NoToken | Self::NotBearer | Self::Rejected(_) => "unauthenticated",
            Self::Audience(_) => "wrong_audience",
            Self::Account { .. } => "forbidden",
            Self::Unbound(_) | Self::Pod { .. } => "no_node",
            Self::Unavailable(_) => "review_failed",
            Self::Throttled(_) => "throttled",
        }
    }

    /// What the agent is answered.
    pub fn status(&self) -> Status {
        let message = self.to_string();
        match self {
            Self::NoToken | Self::NotBearer | Self::Rejected(_) | Self::Audience(_) => {
                Status::unauthenticated(message)
            }
            Self::Account { .. } | Self::Unbound(_) | Self::Pod { .. } => {
                Status::permission_denied(message)
            }
            Self::Unavailable(_) | Self::Throttled(_) => Status::unavailable(message),
        }
    }
}

/// Lets in the agent ServiceAccount only, for the node its token is bound
/// to.
pub struct Authenticator<R> {
    reviewer: R,
    audience: String,
    /// The agents' namespace, where the pods their tokens name are.
    namespace: String,
    /// `system:serviceaccount:<namespace>:<name>`.
    expected: String,
    /// Positive reviews by the SHA-256 of the token (tokens themselves are
    /// not kept), with when they were made.
    cache: Mutex<HashMap<Vec<u8>, (Identity, Instant)>>,
    /// The node of each pod looked up, by pod uid: a pod never moves, and
    /// a uid is never reused.
    pods: Mutex<HashMap<String, String>>,
    /// Definite refusals by token hash, for [`REFUSAL_TTL`].
    refused: Mutex<HashMap<Vec<u8>, (AuthError, Instant)>>,
    /// Review tokens left, refilled at [`REVIEWS_PER_SECOND`].
    budget: Mutex<(f64, Instant)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<R: Reviewer> Authenticator<R> {
    /// Accepts tokens of ServiceAccount `namespace/name` for `audience`.
    pub fn new(reviewer: R, audience: &str, namespace: &str, name: &str) -> Self {
        Self {
            reviewer,
            audience: audience.to_owned(),
            namespace: namespace.to_owned(),
            expected: format!("system:serviceaccount:{namespace}:{name}"),
            cache: Mutex::new(HashMap::new()),
            pods: Mutex::new(HashMap::new()),
            refused: Mutex::new(HashMap::new()),
            budget: Mutex::new((REVIEW_BURST, Instant::now())),
        }
    }

    /// Takes one review from the budget: how long to wait for it (zero
    /// within the burst), or `None` when the reviews already waiting fill
    /// [`REVIEW_WAIT`]. The budget goes below zero by the reviews waiting.
    fn reserve_review(&self, now: Instant) -> Option<Duration> {
        let rate = f64::from(REVIEWS_PER_SECOND);
        let mut b = lock(&self.budget);
        let refill = now.duration_since(b.1).as_secs_f64() * rate;
        b.0 = (b.0 + refill).min(REVIEW_BURST);
        b.1 = now;
        let left = b.0 - 1.0;
        if left < -rate * REVIEW_WAIT.as_secs_f64() {
            return None;
        }
        b.0 = left;
        Some(Duration::from_secs_f64((-left).max(0.0) / rate))
    }

    /// Who sent `metadata`'s bearer token, and for which node.
    pub async fn authenticate(&self, metadata: &MetadataMap) -> Result<Identity, AuthError> {
        let token = bearer(metadata)?;
        let key = ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
            .as_ref()
            .to_vec();
        let now = Instant::now();
        if let Some((who, at)) = lock(&self.cache).get(&key)
            && now.duration_since(*at) < CACHE_TTL
        {
            return Ok(who.clone());
        }
        if let Some((why, at)) = lock(&self.refused).get(&key)
            && now.duration_since(*at) < REFUSAL_TTL
        {
            return Err(why.clone());
        }
        match self.reserve_review(now) {
            None => return Err(AuthError::Throttled(REVIEWS_PER_SECOND)),
            Some(wait) if !wait.is_zero() => tokio::time::sleep(wait).await,
            Some(_) => {}
        }
        let result = self.review(token).await;
        if let Err(why) = &result
            && matches!(
                why,
                AuthError::Rejected(_)
                    | AuthError::Audience(_)
                    | AuthError::Account { .. }
                    | AuthError::Unbound(_)
            )
        {
            let mut refused = lock(&self.refused);
            if refused.len() >= CACHE_MAX {
                refused.retain(|_, (_, at)| now.duration_since(*at) < REFUSAL_TTL);
                if refused.len() >= CACHE_MAX {
                    refused.clear();
                }
            }
            refused.insert(key.clone(), (why.clone(), now));
        }
        let who = result?;
        let mut cache = lock(&self.cache);
        if cache.len() >= CACHE_MAX {
            cache.retain(|_, (_, at)| now.duration_since(*at) < CACHE_TTL);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(key, (who.clone(), now));
        Ok(who)
    }

    /// Asks the API server about `token`, and checks the answer.
    async fn review(&self, token: &str) -> Result<Identity, AuthError> {
        let review = self
            .reviewer
            .review(token, &self.audience)
            .await
            .map_err(AuthError::Unavailable)?;
        if !review.authenticated {
            return Err(AuthError::Rejected(review.error));
        }
        if !review.audiences.contains(&self.audience) {
            return Err(AuthError::Audience(self.audience.clone()));
        }
        if review.username != self.expected {
            return Err(AuthError::Account {
                user: review.username,
                expected: self.expected.clone(),
            });
        }
        let node = match (review.node, review.pod) {
            (Some(node), _) => node,
            (None, Some(pod)) => self.node_of(&pod).await?,
            (None, None) => return Err(AuthError::Unbound(self.audience.clone())),
        };
        Ok(Identity {
            username: review.username,
            node,
        })
    }

    /// The node `pod` runs on, if it is still the pod the token names.
    async fn node_of(&self, pod: &BoundPod) -> Result<String, AuthError> {
        let refuse = |why: String| AuthError::Pod {
            namespace: self.namespace.clone(),
            name: pod.name.clone(),
            why,
        };
        if pod.uid.is_empty() {
            return Err(refuse(format!("is named without a uid ({POD_UID_EXTRA})")));
        }
        if let Some(node) = lock(&self.pods).get(&pod.uid) {
            return Ok(node.clone());
        }
        let place = self
            .reviewer
            .pod(&self.namespace, &pod.name)
            .await
            .map_err(|e| AuthError::Unavailable(format!("reading the token's pod: {e}")))?
            .ok_or_else(|| refuse("no longer exists".into()))?;
        if place.uid != pod.uid {
            return Err(refuse(format!(
                "is now another pod (uid {}, the token's is {})",
                place.uid, pod.uid
            )));
        }
        let node = place
            .node
            .ok_or_else(|| refuse("is not scheduled on a node".into()))?;
        let mut pods = lock(&self.pods);
        if pods.len() >= POD_CACHE_MAX {
            pods.clear();
        }
        pods.insert(pod.uid.clone(), node.clone());
        Ok(node)
    }
}

/// The token of `authorization: Bearer <token>`.
fn bearer(metadata: &MetadataMap) -> Result<&str, AuthError> {
    let value = metadata
        .get(ringwarden_proto::AUTHORIZATION)
        .ok_or(AuthError::NoToken)?
        .to_str()
        .map_err(|_| AuthError::NotBearer)?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(AuthError::NotBearer),
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

    /// Knows the agent's tokens (bound to node-1, to pod agent-abc, or to
    /// nothing), another ServiceAccount's, and pod agent-abc on node-2;
    /// counts reviews and pod lookups.
    #[derive(Clone, Default)]
    struct Fake {
        reviews: Arc<AtomicUsize>,
        pods: Arc<AtomicUsize>,
    }

    const AGENT: &str = "system:serviceaccount:ringwarden-system:ringwarden-agent";

    impl Reviewer for Fake {
        async fn review(&self, token: &str, audience: &str) -> Result<Review, String> {
            self.reviews.fetch_add(1, Ordering::SeqCst);
            let pod = |name: &str, uid: &str| {
                Some(BoundPod {
                    name: name.into(),
                    uid: uid.into(),
                })
            };
            let (user, node, pod) = match token {
                "agent-token" => (AGENT, Some("node-1".into()), pod("agent-xyz", "u-9")),
                "pod-token" | "rotated-pod-token" => (AGENT, None, pod("agent-abc", "u-1")),
                "old-pod-token" => (AGENT, None, pod("agent-abc", "u-0")),
                "gone-pod-token" => (AGENT, None, pod("agent-gone", "u-2")),
                "unbound-token" => (AGENT, None, None),
                "other-token" => (
                    "system:serviceaccount:shop:web",
                    Some("node-1".into()),
                    None,
                ),
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
                node,
                pod,
                error: None,
            })
        }

        async fn pod(&self, namespace: &str, name: &str) -> Result<Option<PodPlace>, String> {
            self.pods.fetch_add(1, Ordering::SeqCst);
            assert_eq!(namespace, "ringwarden-system");
            Ok((name == "agent-abc").then(|| PodPlace {
                uid: "u-1".into(),
                node: Some("node-2".into()),
            }))
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
    async fn only_the_agent_service_account_gets_in_bound_to_a_node() {
        let fake = Fake::default();
        let a = auth(&fake);
        let who = a.authenticate(&with("Bearer agent-token")).await.unwrap();
        // The node claim wins: no pod is looked up.
        assert_eq!(who.node, "node-1");
        assert_eq!(fake.pods.load(Ordering::SeqCst), 0);
        for (metadata, code, label) in [
            (MetadataMap::new(), Code::Unauthenticated, "unauthenticated"),
            (
                with("Basic agent-token"),
                Code::Unauthenticated,
                "unauthenticated",
            ),
            (with("Bearer "), Code::Unauthenticated, "unauthenticated"),
            (
                with("Bearer forged"),
                Code::Unauthenticated,
                "unauthenticated",
            ),
            (
                with("Bearer other-token"),
                Code::PermissionDenied,
                "forbidden",
            ),
            (
                with("Bearer unbound-token"),
                Code::PermissionDenied,
                "no_node",
            ),
            (
                with("Bearer old-pod-token"),
                Code::PermissionDenied,
                "no_node",
            ),
            (
                with("Bearer gone-pod-token"),
                Code::PermissionDenied,
                "no_node",
            ),
            (
                with("Bearer unreachable"),
                Code::Unavailable,
                "review_failed",
            ),
        ] {
            let e = a.authenticate(&metadata).await.unwrap_err();
            assert_eq!(
                (e.status().code(), e.metric_label()),
                (code, label),
                "{metadata:?}: {e}"
            );
        }
        let e = a
            .authenticate(&with("Bearer unbound-token"))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("bound to no node and no pod"), "{e}");
        let e = a
            .authenticate(&with("Bearer old-pod-token"))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("uid u-1, the token's is u-0"), "{e}");
    }

    #[tokio::test]
    async fn a_pod_claim_is_resolved_to_the_pods_node_once() {
        let fake = Fake::default();
        let a = auth(&fake);
        let who = a.authenticate(&with("Bearer pod-token")).await.unwrap();
        assert_eq!(who.node, "node-2");
        // A rotated token of the same pod: reviewed, but the pod's node is
        // known.
        let who = a
            .authenticate(&with("Bearer rotated-pod-token"))
            .await
            .unwrap();
        assert_eq!(who.node, "node-2");
        assert_eq!(fake.reviews.load(Ordering::SeqCst), 2);
        assert_eq!(fake.pods.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn positive_reviews_are_cached_briefly() {
        let fake = Fake::default();
        let a = auth(&fake);
        for _ in 0..3 {
            a.authenticate(&with("Bearer agent-token")).await.unwrap();
        }
        assert_eq!(fake.reviews.load(Ordering::SeqCst), 1);
        tokio::time::advance(CACHE_TTL).await;
        a.authenticate(&with("Bearer agent-token")).await.unwrap();
        assert_eq!(fake.reviews.load(Ordering::SeqCst), 2);
        // A refusal is remembered briefly: retrying a bad token costs one
        // review per REFUSAL_TTL, and a token that becomes valid gets in.
        for _ in 0..5 {
            a.authenticate(&with("Bearer forged")).await.unwrap_err();
        }
        assert_eq!(fake.reviews.load(Ordering::SeqCst), 3);
        tokio::time::advance(REFUSAL_TTL).await;
        a.authenticate(&with("Bearer forged")).await.unwrap_err();
        assert_eq!(fake.reviews.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_fresh_tokens_is_reviewed_at_a_bounded_rate() {
        let fake = Fake::default();
        let a = auth(&fake);
        let started = tokio::time::Instant::now();
        // Each review's outcome and when it came, all asked at once.
        let outcomes = futures::future::join_all((0..2_000).map(|i| {
            let a = &a;
            async move {
                let r = a.authenticate(&with(&format!("Bearer t{i}"))).await;
                (r, started.elapsed())
            }
        }))
        .await;
        let throttled = outcomes
            .iter()
            .filter(|(r, _)| matches!(r, Err(AuthError::Throttled(_))))
            .count();
        let rate = f64::from(REVIEWS_PER_SECOND);
        let waiting = rate * REVIEW_WAIT.as_secs_f64();
        let reviewed = fake.reviews.load(Ordering::SeqCst);
        // The burst at once, then as many as may wait, in order at the
        // rate; the rest refused at once.
        assert_eq!(reviewed as f64, REVIEW_BURST + waiting);
        assert_eq!(throttled, 2_000 - reviewed);
        // (Fresh tokens the fake does not know: reviewed, then rejected.)
        let at_once = outcomes
            .iter()
            .filter(|(r, t)| matches!(r, Err(AuthError::Rejected(_))) && t.is_zero())
            .count();
        assert_eq!(at_once as f64, REVIEW_BURST);
        let last = outcomes.iter().map(|(_, t)| *t).max().unwrap();
        assert!(last <= REVIEW_WAIT, "{last:?}");
        for (r, t) in &outcomes {
            if matches!(r, Err(AuthError::Throttled(_))) {
                assert!(t.is_zero(), "refused only at once, not after waiting");
            }
        }
        // Refilled over time, at the sustained rate.
        tokio::time::advance(Duration::from_secs(1)).await;
        let before = fake.reviews.load(Ordering::SeqCst);
        let started = tokio::time::Instant::now();
        for i in 0..REVIEWS_PER_SECOND {
            let r = a.authenticate(&with(&format!("Bearer u{i}"))).await;
            assert!(matches!(r, Err(AuthError::Rejected(_))), "{r:?}");
        }
        assert_eq!(
            fake.reviews.load(Ordering::SeqCst) - before,
            REVIEWS_PER_SECOND as usize
        );
        assert!(started.elapsed().is_zero(), "a second's worth at once");
    }

    #[tokio::test]
    async fn a_token_for_another_audience_is_refused() {
        struct Elsewhere;
        impl Reviewer for Elsewhere {
            async fn review(&self, _: &str, _: &str) -> Result<Review, String> {
                Ok(Review {
                    authenticated: true,
                    username: AGENT.into(),
                    audiences: vec!["https://kubernetes.default.svc".into()],
                    node: Some("node-1".into()),
                    ..Review::default()
                })
            }
            async fn pod(&self, _: &str, _: &str) -> Result<Option<PodPlace>, String> {
                unreachable!("an unauthenticated token names no pod to look up")
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
        assert_eq!(
            (e.status().code(), e.metric_label()),
            (Code::Unauthenticated, "wrong_audience")
        );
    }
}
