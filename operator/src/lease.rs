//! Leader election through a `coordination.k8s.io/v1` Lease, so that of
//! several operator replicas only one writes. Talks to the API server.
//!
//! A small loop rather than a crate: kube-runtime has no leader election,
//! and kube-lease-manager (the crate that builds with kube 5) keeps
//! reporting leadership while its renewals fail, so a leader cut off from
//! the API server would go on writing after a standby took over. This
//! follows client-go's algorithm:
//!
//! - Every write carries the Lease's `resourceVersion`: of two replicas
//!   racing for it, the API server accepts one and answers 409 to the other.
//! - A standby takes the Lease when it has no holder, or when its record
//!   has not changed for `leaseDurationSeconds` as measured by the
//!   standby's own monotonic clock since it first saw that record; node
//!   clocks need not agree. Wall-clock times are written for people only.
//! - The leader renews every `retry_period` and stops writing once
//!   `renew_deadline` has passed since the start of its last successful
//!   renewal, which is before any standby may take over
//!   (`renew_deadline < lease_duration`).

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use futures::Stream;
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference},
    jiff::Timestamp,
};
use kube::{Api, api::PostParams};
use prometheus::IntGauge;
use tokio::{sync::watch, time::Instant};

use crate::{
    cause::{api_cause, explain},
    throttle::Throttle,
};

/// How the election runs.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub name: String,
    /// This replica's name in the Lease.
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
    /// The operator's Deployment, made the Lease's owner so that
    /// uninstalling the operator removes the Lease too.
    pub owner: Option<OwnerReference>,
}

#[derive(Clone, Copy, Debug)]
enum Validity {
    /// No election: the only replica always leads.
    Always,
    Until(Instant),
    Never,
}

struct Shared {
    validity: Mutex<Validity>,
    /// Counts the times this replica became leader.
    gains: watch::Sender<u64>,
}

/// Whether this replica may write. Cheap to clone and to ask.
#[derive(Clone)]
pub struct Leadership(Arc<Shared>);

impl Leadership {
    fn with(validity: Validity) -> Self {
        Self(Arc::new(Shared {
            validity: Mutex::new(validity),
            gains: watch::Sender::new(0),
        }))
    }

    /// For a single replica without election: always the leader.
    pub fn always() -> Self {
        Self::with(Validity::Always)
    }

    /// A replica that does not lead (until an [`Elector`] says otherwise).
    pub fn follower() -> Self {
        Self::with(Validity::Never)
    }

    /// Whether this replica holds the Lease now and may write.
    pub fn is_leading(&self) -> bool {
        match *self
            .0
            .validity
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
        {
            Validity::Always => true,
            Validity::Until(t) => Instant::now() < t,
            Validity::Never => false,
        }
    }

    /// How many times this replica became leader; what was verified under
    /// an earlier term may have been changed by another leader since.
    pub fn term(&self) -> u64 {
        *self.0.gains.borrow()
    }

    /// Yields each time this replica becomes leader, so that everything
    /// skipped as a standby is reconciled.
    pub fn gained(&self) -> impl Stream<Item = ()> + Send + 'static {
        let rx = self.0.gains.subscribe();
        futures::stream::unfold(rx, |mut rx| async move {
            rx.changed().await.ok()?;
            Some(((), rx))
        })
    }

    fn set(&self, validity: Validity) {
        let was = self.is_leading();
        *self
            .0
            .validity
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = validity;
        if !was && self.is_leading() {
            self.0.gains.send_modify(|n| *n += 1);
        }
    }
}

/// Runs the election for one replica.
pub struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    leadership: Leadership,
    gauge: IntGauge,
    /// The Lease record last seen (its resourceVersion) and when it was
    /// first seen.
    observed: Option<(String, Instant)>,
}

impl Elector {
    /// An elector for the Lease `settings.name` in `api`'s namespace; this
    /// replica follows until [`Elector::step`] wins. `gauge` shows 1 while
    /// leading.
    pub fn new(api: Api<Lease>, settings: LeaseSettings, gauge: IntGauge) -> (Self, Leadership) {
        let leadership = Leadership::follower();
        gauge.set(0);
        let elector = Self {
            api,
            settings,
            leadership: leadership.clone(),
            gauge,
            observed: None,
        };
        (elector, leadership)
    }

    /// One round: read the Lease, then take or renew it if allowed.
    /// Returns whether this replica leads afterwards. A failed round leaves
    /// leadership to lapse at its deadline.
    pub async fn step(&mut self) -> Result<bool, kube::Error> {
        let started = Instant::now();
        let now = MicroTime(Timestamp::now());
        let name = &self.settings.name;
        let Some(current) = self.api.get_opt(name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    owner_references: self.settings.owner.clone().map(|o| vec![o]),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.settings.identity.clone()),
                    lease_duration_seconds: Some(seconds(self.settings.lease_duration)),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return self.settle(
                self.api.create(&PostParams::default(), &lease).await,
                started,
            );
        };

        let version = current
            .metadata
            .resource_version
            .clone()
            .unwrap_or_default();
        let first_seen = match &self.observed {
            Some((seen, at)) if *seen == version => *at,
            _ => {
                self.observed = Some((version, started));
                started
            }
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
        let mine = holder == Some(self.settings.identity.as_str());
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.settings.lease_duration, Duration::from_secs);
        if holder.is_some() && !mine && started < first_seen + duration {
            self.follow();
            return Ok(false);
        }
        let mut next = current;
        // A Lease made before the operator had an owner is adopted.
        crate::owner::adopt(&mut next.metadata, self.settings.owner.as_ref());
        next.spec = Some(LeaseSpec {
            holder_identity: Some(self.settings.identity.clone()),
            lease_duration_seconds: Some(seconds(self.settings.lease_duration)),
            acquire_time: if mine {
                spec.acquire_time.clone()
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(spec.lease_transitions.unwrap_or(0) + if mine { 0 } else { 1 }),
            ..spec
        });
        let result = self.api.replace(name, &PostParams::default(), &next).await;
        self.settle(result, started)
    }

    /// Leads after a successful write, follows after losing a race.
    fn settle(
        &mut self,
        result: Result<Lease, kube::Error>,
        started: Instant,
    ) -> Result<bool, kube::Error> {
        match result {
            Ok(lease) => {
                let version = lease.metadata.resource_version.unwrap_or_default();
                self.observed = Some((version, started));
                self.leadership
                    .set(Validity::Until(started + self.settings.renew_deadline));
                self.gauge.set(1);
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                self.follow();
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    fn follow(&mut self) {
        self.leadership.set(Validity::Never);
        self.gauge.set(0);
    }

    /// Gives the Lease up if this replica holds it, so a standby takes
    /// over at once instead of after the lease duration.
    pub async fn release(&mut self) -> Result<(), kube::Error> {
        if !self.leadership.is_leading() {
            return Ok(());
        }
        self.follow();
        let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        self.api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await?;
        Ok(())
    }

    /// Takes or renews the Lease every retry period until `shutdown`
    /// completes, then releases it. Failures are logged through a
    /// [`Throttle`]: the first of each cause, then one line a minute with
    /// the count left out.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let throttle = Throttle::default();
        loop {
            // A hanging request must not outlive the deadline unnoticed.
            let result = tokio::time::timeout(self.settings.renew_deadline, self.step()).await;
            let now = Instant::now().into_std();
            let (kind, why) = match result {
                Ok(Ok(_)) => {
                    let left_out = throttle.clear(SITE);
                    if left_out > 0 {
                        tracing::info!(
                            suppressed = left_out,
                            "the leader Lease can be read and renewed again"
                        );
                    }
                    (None, String::new())
                }
                Ok(Err(e)) => (Some(api_cause(&e).label()), renewal_failure(&e)),
                Err(_) => (
                    Some("timeout"),
                    format!(
                        "reading or renewing the leader Lease timed out after {:?}",
                        self.settings.renew_deadline
                    ),
                ),
            };
            if let Some(kind) = kind
                && let Some(suppressed) = throttle.check(SITE, kind, now).suppressed()
            {
                tracing::warn!(suppressed, "{why}");
            }
            if !self.leadership.is_leading() && self.gauge.get() == 1 {
                tracing::warn!("leadership lapsed: the Lease was not renewed in time; writes stop");
                self.follow();
            }
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(self.settings.retry_period) => {}
            }
        }
        if let Err(e) = self.release().await {
            tracing::warn!(
                error = %explain(&e, "get and update", "leases"),
                "cannot release the leader Lease; a standby takes over when it expires"
            );
        }
    }
}

/// The throttle site of the Lease loop.
const SITE: &str = "lease";

/// What the log says when a round of the election fails with `e`: a
/// refused connection says the API server cannot be reached, a 403 which
/// permission is missing, anything else the status.
pub fn renewal_failure(e: &kube::Error) -> String {
    format!(
        "cannot read or renew the leader Lease: {}",
        explain(e, "get, create or update", "leases")
    )
}

fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}
