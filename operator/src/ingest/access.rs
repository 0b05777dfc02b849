//! Who may read the query service when it is reachable beyond
//! `kubectl port-forward` (a `--query-addr` that is not loopback): the
//! caller sends a Kubernetes bearer token, the API server says who it is
//! (TokenReview) and whether that user may read ProbeSets in the namespace
//! asked about (SubjectAccessReview: `get probesets` there, or `list
//! probesets` cluster-wide for every namespace). Answers are cached by the
//! token's hash, refusals more briefly; reviews not answered from the cache
//! are rate-limited per source address and in total, so a flood of bogus
//! tokens costs the API server a bounded number of reviews.

use std::{
    collections::HashMap,
    net::IpAddr,
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

/// How long an answer that lets the caller in is trusted.
pub const ACCESS_TTL: Duration = Duration::from_secs(30);
/// How long a refusal (a token the API server does not know, or a user
/// without the grant) is remembered: a client retrying a bogus token costs
/// one review per this, and a grant just made takes effect soon after.
pub const DENIAL_TTL: Duration = Duration::from_secs(10);
const CACHE_MAX: usize = 4_096;

/// Reviews (a TokenReview and a SubjectAccessReview, for a token and
/// namespace not in the cache) one source address may cause: a burst of
/// [`ADDRESS_BURST`], then this many a second. A person running
/// `ringwarden status` needs one per namespace per [`ACCESS_TTL`].
pub const ADDRESS_REVIEWS_PER_SECOND: f64 = 1.0;
/// See [`ADDRESS_REVIEWS_PER_SECOND`].
pub const ADDRESS_BURST: f64 = 10.0;
/// Reviews all sources together may cause: a burst of [`TOTAL_BURST`],
/// then this many a second, so many addresses cannot flood the API server
/// either.
pub const TOTAL_REVIEWS_PER_SECOND: f64 = 20.0;
/// See [`TOTAL_REVIEWS_PER_SECOND`].
pub const TOTAL_BURST: f64 = 40.0;
/// Most source addresses whose budgets are remembered; beyond, the
/// addresses whose budget is full again are forgotten first.
const ADDRESSES_MAX: usize = 4_096;

/// Whether the holder of a token may read `namespace` (`""`: every one).
pub type Check =
    Arc<dyn Fn(String, String) -> BoxFuture<'static, Result<bool, String>> + Send + Sync>;

/// Answers by (token hash, namespace), with when they were given.
type Answers = HashMap<(Vec<u8>, String), (bool, Instant)>;

/// A token bucket: `(tokens, when last refilled)`.
#[derive(Clone, Copy, Debug)]
struct Bucket(f64, Instant);

impl Bucket {
    fn full(burst: f64, now: Instant) -> Self {
        Self(burst, now)
    }

    fn refill(&mut self, rate: f64, burst: f64, now: Instant) {
        self.0 = (self.0 + now.duration_since(self.1).as_secs_f64() * rate).min(burst);
        self.1 = now;
    }

    /// How long until one token is there; zero if one is.
    fn wait(&self, rate: f64) -> Duration {
        Duration::from_secs_f64(((1.0 - self.0) / rate).max(0.0))
    }
}

/// The review budgets: all sources together, and each address.
struct Budgets {
    total: Bucket,
    addresses: HashMap<IpAddr, Bucket>,
}

/// Access to the query service, with its cache and review budgets.
pub struct Access {
    check: Check,
    cache: Mutex<Answers>,
    budgets: Mutex<Budgets>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Access {
    pub fn new(check: Check) -> Self {
        Self {
            check,
            cache: Mutex::new(HashMap::new()),
            budgets: Mutex::new(Budgets {
                total: Bucket::full(TOTAL_BURST, Instant::now()),
                addresses: HashMap::new(),
            }),
        }
    }

    /// Takes one review from `peer`'s budget and the total, or says how
    /// long to wait for one (taking nothing).
    fn reserve_review(&self, peer: Option<IpAddr>, now: Instant) -> Result<(), Status> {
        let mut b = lock(&self.budgets);
        b.total.refill(TOTAL_REVIEWS_PER_SECOND, TOTAL_BURST, now);
        let mut mine = peer.map(|ip| {
            let mut bucket = b
                .addresses
                .get(&ip)
                .copied()
                .unwrap_or_else(|| Bucket::full(ADDRESS_BURST, now));
            bucket.refill(ADDRESS_REVIEWS_PER_SECOND, ADDRESS_BURST, now);
            (ip, bucket)
        });
        if let Some((ip, bucket)) = mine
            && bucket.0 < 1.0
        {
            return Err(Status::resource_exhausted(format!(
                "too many tokens to review from {ip} (at most {ADDRESS_BURST} at once, then \
                 {ADDRESS_REVIEWS_PER_SECOND} a second); retry in {:.1} s",
                bucket.wait(ADDRESS_REVIEWS_PER_SECOND).as_secs_f64()
            )));
        }
        if b.total.0 < 1.0 {
            return Err(Status::resource_exhausted(format!(
                "too many tokens to review (at most {TOTAL_REVIEWS_PER_SECOND} a second from \
                 everyone); retry in {:.1} s",
                b.total.wait(TOTAL_REVIEWS_PER_SECOND).as_secs_f64()
            )));
        }
        b.total.0 -= 1.0;
        if let Some((ip, bucket)) = mine.as_mut() {
            bucket.0 -= 1.0;
            if b.addresses.len() >= ADDRESSES_MAX && !b.addresses.contains_key(ip) {
                // Forget the addresses whose budget has refilled: they are
                // where a new one would start anyway.
                b.addresses.retain(|_, a| {
                    let mut a = *a;
                    a.refill(ADDRESS_REVIEWS_PER_SECOND, ADDRESS_BURST, now);
                    a.0 < ADDRESS_BURST
                });
            }
            if b.addresses.len() < ADDRESSES_MAX || b.addresses.contains_key(ip) {
                b.addresses.insert(*ip, *bucket);
            }
        }
        Ok(())
    }

    /// Lets the request from `peer` through, or says why not. A token and
    /// namespace not in the cache cost a review from `peer`'s budget and
    /// the total; past either, the request is refused with
    /// `RESOURCE_EXHAUSTED` before the API server is asked.
    pub async fn authorize(
        &self,
        metadata: &MetadataMap,
        namespace: &str,
        peer: Option<IpAddr>,
    ) -> Result<(), Status> {
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
        let fresh = |(allowed, at): &(bool, Instant)| {
            now.duration_since(*at) < if *allowed { ACCESS_TTL } else { DENIAL_TTL }
        };
        let cached = lock(&self.cache)
            .get(&key)
            .filter(|a| fresh(a))
            .map(|(allowed, _)| *allowed);
        let allowed = match cached {
            Some(a) => a,
            None => {
                self.reserve_review(peer, now)?;
                let a = (self.check)(token.to_owned(), namespace.to_owned())
                    .await
                    .map_err(|e| Status::unavailable(format!("cannot check access: {e}")))?;
                let mut cache = lock(&self.cache);
                if cache.len() >= CACHE_MAX {
                    // Stale answers go first, then refusals: a flood of
                    // bogus tokens does not evict the callers let in.
                    cache.retain(|_, a| fresh(a));
                    if cache.len() >= CACHE_MAX {
                        cache.retain(|_, (allowed, _)| *allowed);
                    }
                    if cache.len() >= CACHE_MAX {
                        cache.clear();
                    }
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
            .authorize(&MetadataMap::new(), "shop", None)
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(
            access
                .authorize(&with("shop-viewer"), "shop", None)
                .await
                .is_ok()
        );
        let e = access
            .authorize(&with("shop-viewer"), "bank", None)
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("namespace bank"), "{e:?}");
        let e = access
            .authorize(&with("shop-viewer"), "", None)
            .await
            .unwrap_err();
        assert!(e.message().contains("-n <namespace>"), "{e:?}");
        // Cached: asking again costs no review.
        let before = calls.load(Ordering::SeqCst);
        assert!(
            access
                .authorize(&with("shop-viewer"), "shop", None)
                .await
                .is_ok()
        );
        assert_eq!(calls.load(Ordering::SeqCst), before);
    }

    /// An access check that counts the reviews it would ask for and lets
    /// in only `shop-viewer`.
    fn counted() -> (Access, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let access = Access::new({
            let calls = Arc::clone(&calls);
            Arc::new(move |token: String, _: String| {
                calls.fetch_add(1, Ordering::SeqCst);
                Box::pin(async move { Ok(token == "shop-viewer") })
            })
        });
        (access, calls)
    }

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([10, 0, 0, last]))
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_bogus_tokens_from_one_address_costs_a_bounded_number_of_reviews() {
        let (access, calls) = counted();
        let mut exhausted = 0;
        for i in 0..1_000 {
            let e = access
                .authorize(&with(&format!("bogus-{i}")), "shop", ip(1))
                .await
                .unwrap_err();
            if e.code() == tonic::Code::ResourceExhausted {
                assert!(e.message().contains("from 10.0.0.1"), "{e:?}");
                exhausted += 1;
            }
        }
        assert_eq!(calls.load(Ordering::SeqCst), ADDRESS_BURST as usize);
        assert_eq!(exhausted, 1_000 - ADDRESS_BURST as usize);
        // Another address is still reviewed, and lets its caller in.
        assert!(
            access
                .authorize(&with("shop-viewer"), "shop", ip(2))
                .await
                .is_ok()
        );
        // The flooding address gets one review a second back.
        tokio::time::advance(Duration::from_secs(1)).await;
        let e = access
            .authorize(&with("bogus-a"), "shop", ip(1))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        let e = access
            .authorize(&with("bogus-b"), "shop", ip(1))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert_eq!(calls.load(Ordering::SeqCst), ADDRESS_BURST as usize + 2);
    }

    #[tokio::test(start_paused = true)]
    async fn many_addresses_together_are_reviewed_at_a_bounded_rate() {
        let (access, calls) = counted();
        for round in 0..10u64 {
            for last in 0..=255u8 {
                let token = format!("bogus-{round}-{last}");
                let _ = access.authorize(&with(&token), "shop", ip(last)).await;
            }
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        // A burst, then the total rate, for the 9 seconds that passed
        // between the first round and the last.
        let most = TOTAL_BURST + 9.0 * TOTAL_REVIEWS_PER_SECOND;
        assert_eq!(calls.load(Ordering::SeqCst), most as usize);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_token_is_remembered_briefly_and_retrying_it_costs_no_review() {
        let (access, calls) = counted();
        for _ in 0..100 {
            let e = access
                .authorize(&with("bogus"), "shop", ip(1))
                .await
                .unwrap_err();
            assert_eq!(e.code(), tonic::Code::PermissionDenied);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(DENIAL_TTL).await;
        let _ = access.authorize(&with("bogus"), "shop", ip(1)).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "a refusal is kept {DENIAL_TTL:?}"
        );
        // A caller let in is remembered for longer.
        assert!(
            access
                .authorize(&with("shop-viewer"), "shop", ip(1))
                .await
                .is_ok()
        );
        tokio::time::advance(DENIAL_TTL).await;
        assert!(
            access
                .authorize(&with("shop-viewer"), "shop", ip(1))
                .await
                .is_ok()
        );
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        tokio::time::advance(ACCESS_TTL).await;
        assert!(
            access
                .authorize(&with("shop-viewer"), "shop", ip(1))
                .await
                .is_ok()
        );
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }
}
