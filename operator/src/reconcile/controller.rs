//! The ProbeSet controller: for each ProbeSet, fetch (from the watch
//! caches) → assess → compute the status → write it and publish Events if
//! it changed. Talks to the API server for the writes only.
//!
//! The agent ConfigMap and DaemonSet depend on all ProbeSets at once and
//! are kept by [`crate::reconcile::agent`], which the same watch events drive; a
//! failure there never holds up status, and the other way round.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use k8s_openapi::{
    api::core::v1::{Namespace, Node},
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{PartialObjectMeta, Patch, PatchParams},
    runtime::{
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        reflector::{ObjectRef, Store},
    },
};
use ringwarden_crds::{API_VERSION, ClusterProbeSet, ProbeSet, Slo};
use tokio::sync::mpsc::UnboundedSender;
use tracing::{info, instrument, warn};

use crate::{
    config::AgentSettings,
    error::Error,
    ingest::hub::Hub,
    lease::Leadership,
    metrics::{Metrics, controller},
    reconcile::assess::assess,
    reconcile::render::FIELD_MANAGER,
    reconcile::slo::SloTarget,
    reconcile::status,
    reconcile::stored,
    reconcile::world::{Labels, World, selector_matches},
};

/// How often every object is looked at again even without a change, to
/// heal anything a missed watch event left behind.
pub const RESYNC: Duration = Duration::from_secs(600);
/// Longest wait before retrying a failed reconcile.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The watch caches reconcile reads.
#[derive(Clone)]
pub struct Stores {
    pub probesets: Store<ProbeSet>,
    /// Node metadata only: labels are all reconcile needs, and full Node
    /// objects would cost megabytes at a thousand nodes.
    pub nodes: Store<PartialObjectMeta<Node>>,
    pub slos: Store<Slo>,
    pub cluster_probesets: Store<ClusterProbeSet>,
    /// Namespace metadata only: a ClusterProbeSet's `namespaceSelector`
    /// is resolved against the labels, and the agents get the names.
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
}

impl Stores {
    /// Waits until every cache holds a complete initial list, so that no
    /// reconcile mistakes a cache still filling for a cluster without
    /// ProbeSets.
    pub async fn wait_until_ready(&self) {
        let _ = futures::join!(
            self.probesets.wait_until_ready(),
            self.nodes.wait_until_ready(),
            self.slos.wait_until_ready(),
            self.cluster_probesets.wait_until_ready(),
            self.namespaces.wait_until_ready()
        );
    }

    /// Every ProbeSet, and every ClusterProbeSet as a ProbeSet without a
    /// namespace ([`ClusterProbeSet::as_probeset`]): what reports and SLOs
    /// are matched against.
    pub fn all_probesets(&self) -> Vec<Arc<ProbeSet>> {
        let mut all = self.probesets.state();
        all.extend(
            self.cluster_probesets
                .state()
                .iter()
                .map(|c| Arc::new(c.as_probeset())),
        );
        all
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    /// Namespace of the agent objects.
    pub namespace: String,
    pub agent: AgentSettings,
    pub stores: Stores,
    pub leadership: Leadership,
    pub metrics: Metrics,
    /// What agents report, aggregated; the ProbeSet status takes its
    /// report fields from here.
    pub hub: Arc<Hub>,
    recorder: Recorder,
    /// Consecutive failures per object, for backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// What the agent writer last applied or verified.
    pub(crate) synced: tokio::sync::Mutex<Option<crate::reconcile::agent::Synced>>,
    /// ProbeSets the agent writer left out of a full agent configuration
    /// (`namespace/name` → why): their status says so.
    crowded: Mutex<BTreeMap<String, String>>,
    /// Each ProbeSet's share of the node budget on its tightest node
    /// (`namespace/name`), as the agent writer last planned it.
    shares: Mutex<BTreeMap<String, crate::reconcile::share::NodeShare>>,
    /// Asks the controller to reconcile a ProbeSet again.
    requeue: Mutex<Option<UnboundedSender<ObjectRef<ProbeSet>>>>,
    /// Keeps repeated API errors from flooding the log.
    pub throttle: crate::throttle::Throttle,
}

impl Context {
    /// `instance` names this replica in the Events it publishes.
    pub fn new(
        client: Client,
        namespace: String,
        agent: AgentSettings,
        stores: Stores,
        leadership: Leadership,
        metrics: Metrics,
        instance: String,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: Some(instance),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            hub: Arc::new(Hub::new(stores.clone(), metrics.ingest.clone())),
            client,
            namespace,
            agent,
            stores,
            leadership,
            metrics,
            failures: Mutex::new(HashMap::new()),
            crowded: Mutex::new(BTreeMap::new()),
            shares: Mutex::new(BTreeMap::new()),
            requeue: Mutex::new(None),
            synced: tokio::sync::Mutex::new(None),
            throttle: crate::throttle::Throttle::default(),
        }
    }

    /// Whether `error` at `site` is logged now (`Some(left out before)`):
    /// API errors of one cause at most once a minute after the first;
    /// render errors, which are each object's own, always.
    pub fn throttled(&self, site: &'static str, error: &Error) -> Option<u64> {
        match error.cause_label() {
            "render" => Some(0),
            kind => self
                .throttle
                .check(site, kind, std::time::Instant::now())
                .suppressed(),
        }
    }

    /// A snapshot of the watch caches.
    pub fn world(&self) -> World {
        World {
            probesets: self.stores.probesets.state(),
            cluster_probesets: self.stores.cluster_probesets.state(),
            namespaces: self
                .stores
                .namespaces
                .state()
                .iter()
                .map(|n| {
                    (
                        n.metadata.name.clone().unwrap_or_default(),
                        n.metadata.labels.clone().unwrap_or_default(),
                    )
                })
                .collect(),
            nodes: self
                .stores
                .nodes
                .state()
                .iter()
                .map(|n| {
                    (
                        n.metadata.name.clone().unwrap_or_default(),
                        n.metadata.labels.clone().unwrap_or_default(),
                    )
                })
                .collect(),
            slos: self.slos(),
            node_selector_labels: self.agent.node_selector_labels,
            namespace_limits: self
                .stores
                .namespaces
                .state()
                .iter()
                .filter_map(|n| {
                    let annotations = n.metadata.annotations.as_ref()?;
                    limits_of(annotations).map(|l| (n.metadata.name.clone().unwrap_or_default(), l))
                })
                .collect(),
        }
    }

    /// The valid SLOs.
    pub fn slos(&self) -> Vec<SloTarget> {
        self.stores
            .slos
            .state()
            .iter()
            .filter_map(|s| SloTarget::from_slo(s))
            .collect()
    }

    /// Whether some node carries every label of `selector`; cheaper than
    /// a whole [`World`] when only this is needed.
    pub fn any_node_matches(&self, selector: &Labels) -> bool {
        let none = Labels::new();
        self.stores
            .nodes
            .state()
            .iter()
            .any(|n| selector_matches(selector, n.metadata.labels.as_ref().unwrap_or(&none)))
    }

    /// The delay before retrying `key` after one more failure: 1 s,
    /// doubling up to [`MAX_BACKOFF`].
    pub fn backoff(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let n = failures.entry(key.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        Duration::from_secs(1u64 << (*n - 1).min(16)).min(MAX_BACKOFF)
    }

    /// Where [`Context::set_crowded`] sends the ProbeSets whose place in
    /// the agent configuration changed.
    pub fn set_requeue(&self, tx: UnboundedSender<ObjectRef<ProbeSet>>) {
        *self.requeue.lock().unwrap_or_else(PoisonError::into_inner) = Some(tx);
    }

    /// Records which ProbeSets a full agent configuration left out, and
    /// has those whose standing changed reconciled again.
    pub fn set_crowded(&self, now: BTreeMap<String, String>) {
        let before = std::mem::replace(
            &mut *self.crowded.lock().unwrap_or_else(PoisonError::into_inner),
            now.clone(),
        );
        self.requeue_changed(&before, &now);
    }

    /// Keeps each ProbeSet's share of the node budget for its status, and
    /// reconciles those whose share changed.
    pub fn set_shares(&self, now: BTreeMap<String, crate::reconcile::share::NodeShare>) {
        let before = std::mem::replace(
            &mut *self.shares.lock().unwrap_or_else(PoisonError::into_inner),
            now.clone(),
        );
        self.requeue_changed(&before, &now);
    }

    /// The share of the node budget `key` gets on its tightest node.
    pub fn node_share(&self, key: &str) -> Option<crate::reconcile::share::NodeShare> {
        self.shares
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    /// Reconciles every `namespace/name` whose entry differs.
    fn requeue_changed<T: PartialEq>(
        &self,
        before: &BTreeMap<String, T>,
        now: &BTreeMap<String, T>,
    ) {
        let changed = before
            .keys()
            .filter(|k| now.get(*k) != before.get(*k))
            .chain(now.keys().filter(|k| before.get(*k) != now.get(*k)));
        let requeue = self.requeue.lock().unwrap_or_else(PoisonError::into_inner);
        for k in changed {
            if let (Some(tx), Some((ns, name))) = (&*requeue, k.split_once('/')) {
                let _ = tx.send(ObjectRef::new(name).within(ns));
            }
        }
    }

    /// Why `key` was left out of the agent configuration, if it was.
    pub fn crowded_out(&self, key: &str) -> Option<String> {
        self.crowded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }
}

/// `namespace/name`.
pub fn key(ps: &ProbeSet) -> String {
    format!("{}/{}", ps.namespace().unwrap_or_default(), ps.name_any())
}

/// Now, to the second: conditions carry whole seconds, and a finer time
/// would never compare equal after a round trip.
pub fn now() -> Time {
    Time(Timestamp::from_second(Timestamp::now().as_second()).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// Brings one ProbeSet's status up to date. Writes nothing when the status
/// is already right or when this replica does not lead.
#[instrument(skip_all, fields(probeset = %key(&ps)))]
pub async fn reconcile(ps: Arc<ProbeSet>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile(controller::PROBESET);
    // A standby reconciles everything when it becomes leader.
    if !ctx.leadership.is_leading() || ps.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    // Valid alone, it may still be left out of a full agent configuration
    // (world::crowd_out, decided by the agent writer over all ProbeSets).
    let assessment = match ctx.crowded_out(&key(&ps)) {
        Some(why) => crate::reconcile::assess::Assessment::Invalid(vec![why]),
        None => crate::reconcile::node_labels::restrict(
            assess(&ps, &ctx.slos()),
            &ps.spec.node_selector,
            ctx.agent.node_selector_labels,
        ),
    };
    let share = match &assessment {
        crate::reconcile::assess::Assessment::Planned(_) => ctx.node_share(&key(&ps)),
        crate::reconcile::assess::Assessment::Invalid(_) => None,
    };
    let mut desired = status::desired(
        &ps,
        &assessment,
        ctx.any_node_matches(&ps.spec.node_selector),
        ctx.hub.published(&key(&ps)).as_ref(),
        share.as_ref(),
        &now(),
    );
    status::uprobes_not_enabled(&ps, ctx.agent.uprobes.enabled, &mut desired, &now());
    desired.cluster = ctx.hub.cluster().map(str::to_owned);
    if !status::up_to_date(ps.status.as_ref(), &desired) {
        write_status(&ps, &desired, &ctx).await?;
        let notices = status::notices(ps.status.as_ref(), &desired);
        publish(&ps.object_ref(&()), notices, &ctx).await;
    }
    ctx.succeeded(&key(&ps));
    Ok(Action::requeue(RESYNC))
}

/// How often a ClusterProbeSet's status is recomputed: report figures
/// change it, and (unlike a ProbeSet) nothing requeues it when they do.
/// Recomputing is in memory; a write happens only when it changed.
pub const CLUSTER_STATUS_PERIOD: Duration = Duration::from_secs(10);

/// Brings one ClusterProbeSet's status up to date, as [`reconcile`] does
/// a ProbeSet's.
#[instrument(skip_all, fields(clusterprobeset = %cps.name_any()))]
pub async fn reconcile_cluster(
    cps: Arc<ClusterProbeSet>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile(controller::PROBESET);
    if !ctx.leadership.is_leading() || cps.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let world = ctx.world();
    let assessed = crate::reconcile::world::assess_cluster(&cps, &world.namespaces, &world.slos);
    let ps = assessed.probeset;
    let key = key(&ps);
    let assessment = match ctx.crowded_out(&key) {
        Some(why) => crate::reconcile::assess::Assessment::Invalid(vec![why]),
        None => crate::reconcile::node_labels::restrict(
            assessed.assessment,
            &ps.spec.node_selector,
            ctx.agent.node_selector_labels,
        ),
    };
    let share = match &assessment {
        crate::reconcile::assess::Assessment::Planned(_) => ctx.node_share(&key),
        crate::reconcile::assess::Assessment::Invalid(_) => None,
    };
    let mut desired = status::desired(
        &ps,
        &assessment,
        ctx.any_node_matches(&ps.spec.node_selector),
        ctx.hub.published(&key).as_ref(),
        share.as_ref(),
        &now(),
    );
    status::uprobes_not_enabled(&ps, ctx.agent.uprobes.enabled, &mut desired, &now());
    desired.cluster = ctx.hub.cluster().map(str::to_owned);
    if !status::up_to_date(cps.status.as_ref(), &desired) {
        let api: Api<ClusterProbeSet> = Api::all(ctx.client.clone());
        let patch = serde_json::json!({
            "apiVersion": API_VERSION,
            "kind": "ClusterProbeSet",
            "status": desired,
        });
        api.patch_status(
            &cps.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(|source| Error::Status {
            name: key.clone(),
            source,
        })?;
        ctx.metrics.wrote("ClusterProbeSetStatus");
        info!(generation = ?desired.observed_generation, "status written");
        let notices = status::notices(cps.status.as_ref(), &desired);
        publish(&cps.object_ref(&()), notices, &ctx).await;
    }
    ctx.succeeded(&key);
    Ok(Action::requeue(CLUSTER_STATUS_PERIOD))
}

/// Requeues a failed ClusterProbeSet with exponential backoff.
pub fn error_policy_cluster(cps: Arc<ClusterProbeSet>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .error(controller::PROBESET, error.metric_label());
    let key = format!("/{}", cps.name_any());
    let delay = ctx.backoff(&key);
    if let Some(suppressed) = ctx.throttled("reconcile", error) {
        warn!(clusterprobeset = %cps.name_any(), error = %error, retry_in = ?delay, suppressed,
            "reconcile failed");
    }
    Action::requeue(delay)
}

/// Server-side applies the whole status with the operator's field manager,
/// so fields it no longer sets disappear.
async fn write_status(
    ps: &ProbeSet,
    status: &ringwarden_crds::ProbeSetStatus,
    ctx: &Context,
) -> Result<(), Error> {
    let api: Api<ProbeSet> =
        Api::namespaced(ctx.client.clone(), &ps.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": API_VERSION,
        "kind": "ProbeSet",
        "status": status,
    });
    api.patch_status(
        &ps.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|source| Error::Status {
        name: key(ps),
        source,
    })?;
    ctx.metrics.wrote("ProbeSetStatus");
    info!(generation = ?status.observed_generation, "status written");
    Ok(())
}

/// Publishes Events, best effort: a lost Event must not fail the reconcile
/// whose status is already written.
async fn publish(
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    notices: Vec<status::Notice>,
    ctx: &Context,
) {
    for n in notices {
        let event = Event {
            type_: if n.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: n.reason.into(),
            note: Some(n.note),
            action: "Plan".into(),
            secondary: None,
        };
        match ctx.recorder.publish(&event, reference).await {
            Ok(()) => ctx.metrics.wrote("Event"),
            Err(e) => {
                let cause = crate::cause::api_cause(&e);
                if let Some(suppressed) = ctx
                    .throttle
                    .check("event", cause.label(), std::time::Instant::now())
                    .suppressed()
                {
                    warn!(error = %cause.explain("create", "events"), reason = n.reason, suppressed,
                        "cannot publish an Event");
                }
            }
        }
    }
}

/// Requeues a failed ProbeSet with exponential backoff; other ProbeSets go
/// on being reconciled meanwhile.
pub fn error_policy(ps: Arc<ProbeSet>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .error(controller::PROBESET, error.metric_label());
    let delay = ctx.backoff(&key(&ps));
    if let Some(suppressed) = ctx.throttled("reconcile", error) {
        warn!(probeset = %key(&ps), error = %error, retry_in = ?delay, suppressed,
            "reconcile failed");
    }
    Action::requeue(delay)
}

/// Condition reason on an object the operator cannot decode.
pub const UNDECODABLE: &str = "Undecodable";

/// The status put on a stored object the operator cannot decode: `Ready`
/// False and `Invalid` True, saying which field is wrong. Everything else
/// the operator wrote before (plan, figures) goes, as the object runs
/// nowhere.
pub fn undecodable_status(problem: &stored::Problem, state: &str, now: &Time) -> serde_json::Value {
    let message = crate::ingest::reports::truncate(
        &format!(
            "the stored object cannot be read: {}; it runs nowhere until fixed: re-apply it \
             with a valid spec (kubectl apply), or delete it",
            problem.error
        ),
        1024,
    );
    let generation = problem.meta.generation;
    let cond = |type_: &str, status: &str| {
        serde_json::json!({
            "type": type_,
            "status": status,
            "reason": UNDECODABLE,
            "message": message,
            "observedGeneration": generation,
            "lastTransitionTime": now,
        })
    };
    serde_json::json!({
        "observedGeneration": generation,
        "conditions": [
            cond(status::condition::READY, "False"),
            cond(status::condition::INVALID, "True"),
            cond(status::condition::STALLED, "True"),
        ],
        "state": state,
    })
}

/// Keeps an `Invalid` condition on every stored ProbeSet, ClusterProbeSet
/// and SLO the operator cannot decode, while this replica leads. Runs until
/// `stopped`.
pub async fn mark_undecodable(
    ctx: Arc<Context>,
    undecodable: stored::UndecodableKinds,
    changed: Arc<tokio::sync::Notify>,
    stopped: impl Future<Output = ()>,
) {
    use futures::StreamExt;
    /// What was written: (uid, generation, error).
    type Written = (Option<String>, Option<i64>, String);
    // (kind, namespace/name) → what was written for it.
    let mut written: HashMap<(&str, String), Written> = HashMap::new();
    let mut gained = std::pin::pin!(ctx.leadership.gained());
    let mut stopped = std::pin::pin!(stopped);
    loop {
        if ctx.leadership.is_leading() {
            let all = [
                (StoredKind::ProbeSet, &undecodable.probesets),
                (StoredKind::ClusterProbeSet, &undecodable.cluster_probesets),
                (StoredKind::Slo, &undecodable.slos),
            ];
            let mut live = std::collections::HashSet::new();
            for (kind, set) in all {
                for p in set.snapshot() {
                    let name = p.meta.name.clone().unwrap_or_default();
                    let ns = p.meta.namespace.clone().unwrap_or_default();
                    let id = (kind.name(), format!("{ns}/{name}"));
                    live.insert(id.clone());
                    let what = (p.meta.uid.clone(), p.meta.generation, p.error.clone());
                    if written.get(&id) == Some(&what) {
                        continue;
                    }
                    let status = undecodable_status(&p, kind.undecodable_state(), &now());
                    match kind.patch_status(&ctx.client, &ns, &name, status).await {
                        Ok(()) => {
                            ctx.metrics.wrote(kind.status_written());
                            written.insert(id, what);
                        }
                        Err(e) => {
                            let cause = crate::cause::api_cause(&e);
                            if let Some(suppressed) = ctx
                                .throttle
                                .check("undecodable", cause.label(), std::time::Instant::now())
                                .suppressed()
                            {
                                warn!(kind = kind.name(), object = %id.1, suppressed,
                                    error = %cause.explain("patch", "status"),
                                    "cannot mark an undecodable object Invalid; retrying");
                            }
                        }
                    }
                }
            }
            written.retain(|id, _| live.contains(id));
        }
        tokio::select! {
            () = changed.notified() => {}
            Some(()) = gained.next() => written.clear(),
            () = tokio::time::sleep(Duration::from_secs(60)) => {}
            () = &mut stopped => return,
        }
    }
}

/// The kinds whose stored objects [`mark_undecodable`] marks.
#[derive(Clone, Copy, Debug)]
enum StoredKind {
    ProbeSet,
    ClusterProbeSet,
    Slo,
}

impl StoredKind {
    fn name(self) -> &'static str {
        match self {
            Self::ProbeSet => "ProbeSet",
            Self::ClusterProbeSet => "ClusterProbeSet",
            Self::Slo => "SLO",
        }
    }

    /// The `state` an undecodable object of the kind shows in its row.
    fn undecodable_state(self) -> &'static str {
        match self {
            Self::ProbeSet | Self::ClusterProbeSet => "Invalid: spec",
            Self::Slo => "Invalid",
        }
    }

    /// The `kind` label of `ringwarden_operator_writes_total`.
    fn status_written(self) -> &'static str {
        match self {
            Self::ProbeSet => "ProbeSetStatus",
            Self::ClusterProbeSet => "ClusterProbeSetStatus",
            Self::Slo => "SLOStatus",
        }
    }

    /// Server-side applies `status` to the object, read back as
    /// [`stored::Stored`] since it still does not decode. A ClusterProbeSet
    /// has no namespace: its API is cluster-wide.
    async fn patch_status(
        self,
        client: &Client,
        namespace: &str,
        name: &str,
        status: serde_json::Value,
    ) -> Result<(), kube::Error> {
        let patch = Patch::Apply(serde_json::json!({
            "apiVersion": API_VERSION,
            "kind": self.name(),
            "status": status,
        }));
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match self {
            Self::ProbeSet => {
                Api::<stored::Stored<ProbeSet>>::namespaced(client.clone(), namespace)
                    .patch_status(name, &params, &patch)
                    .await
                    .map(drop)
            }
            Self::ClusterProbeSet => Api::<stored::Stored<ClusterProbeSet>>::all(client.clone())
                .patch_status(name, &params, &patch)
                .await
                .map(drop),
            Self::Slo => Api::<stored::Stored<Slo>>::namespaced(client.clone(), namespace)
                .patch_status(name, &params, &patch)
                .await
                .map(drop),
        }
    }
}

/// The limits a Namespace's annotations set, or `None` when it has no
/// `ringwarden.dev/*` limit annotation (the defaults apply). An annotation
/// that cannot be read takes its strictest value and is logged.
pub fn limits_of(
    annotations: &std::collections::BTreeMap<String, String>,
) -> Option<ringwarden_crds::agent::NamespaceLimits> {
    use ringwarden_crds::agent::{
        MAX_PRIORITY_ANNOTATION, MAX_PROBES_ANNOTATION, NODE_BYTES_ANNOTATION, UPROBES_ANNOTATION,
    };
    let keys = [
        NODE_BYTES_ANNOTATION,
        MAX_PROBES_ANNOTATION,
        UPROBES_ANNOTATION,
        MAX_PRIORITY_ANNOTATION,
    ];
    if !keys.iter().any(|k| annotations.contains_key(*k)) {
        return None;
    }
    let (limits, problems) = ringwarden_crds::agent::NamespaceLimits::from_annotations(annotations);
    for problem in problems {
        tracing::warn!(%problem, "a namespace limit annotation is malformed; its strictest value applies");
    }
    Some(limits)
}
