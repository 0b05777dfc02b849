//! Keeps the agent ConfigMap and DaemonSet as the ProbeSets, SLOs and node
//! labels require: fetch (watch caches) → assess → render → compare with
//! what is in the cluster → server-side apply only what differs. Talks to
//! the API server.
//!
//! It runs as one loop for the whole cluster rather than per ProbeSet, so
//! deleting a ProbeSet (which no per-object reconcile sees) also updates
//! the agents, without a finalizer: the configuration is recomputed from
//! the ProbeSets that exist.

use std::{fmt::Debug, sync::Arc, time::Duration};

use k8s_openapi::{
    NamespaceResourceScope,
    api::{apps::v1::DaemonSet, core::v1::ConfigMap},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Resource,
    api::{Patch, PatchParams},
};
use serde::{Serialize, de::DeserializeOwned};
use tokio::{
    sync::Notify,
    time::{Instant, sleep, sleep_until},
};
use tracing::{info, warn};

use crate::{
    error::Error,
    metrics::controller,
    reconcile::assess::Assessment,
    reconcile::controller::Context,
    reconcile::render::{self, APPLIED_HASH_ANNOTATION, CONFIG_HASH_ANNOTATION, FIELD_MANAGER},
    reconcile::world::CONFIG_FULL,
};

/// How long objects found right are trusted without reading them again;
/// after this the cluster is read, to repair objects edited or deleted by
/// hand.
pub const VERIFY_EVERY: Duration = Duration::from_secs(300);
/// Changes arriving within this time are handled together.
const DEBOUNCE: Duration = Duration::from_millis(500);
/// Longest wait before retrying after a failure.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The hashes of the objects last applied or found in place, when, and in
/// which leadership term.
pub(crate) struct Synced {
    config_map: String,
    daemon_set: String,
    at: Instant,
    term: u64,
}

/// Brings the agent objects up to date; writes only what differs, and
/// nothing unless this replica leads. Both objects are attempted even if
/// the first fails; the first error is returned.
pub async fn sync(ctx: &Context) -> Result<(), Error> {
    let _timer = ctx.metrics.reconcile(controller::AGENT);
    if !ctx.leadership.is_leading() {
        return Ok(());
    }
    let world = ctx.world();
    let assessed = world.assess_all();
    ctx.set_crowded(
        assessed
            .iter()
            .filter_map(|a| match &a.assessment {
                Assessment::Invalid(why) if why.iter().any(|w| w.contains(CONFIG_FULL)) => {
                    Some((format!("{}/{}", a.namespace, a.name), why.join("; ")))
                }
                _ => None,
            })
            .collect(),
    );
    // The node budget's share of each ProbeSet, each node planned with the
    // CPUs its agent said it has (per-CPU maps are counted for each).
    let nodes: Vec<_> = {
        let reports = ctx.hub.reports();
        world
            .nodes
            .iter()
            .map(|(name, labels)| (labels, reports.possible_cpus(name)))
            .collect()
    };
    ctx.set_shares(crate::reconcile::share::node_shares(
        &assessed,
        &nodes,
        ctx.agent.node_budget_bytes(),
    ));
    let objects = render::agent_objects(&assessed, &ctx.agent, &ctx.namespace)?;
    // Connected agents get it at once; the ConfigMap is the durable copy.
    ctx.hub.set_config(&objects.config);
    let cm_hash = annotation(&objects.config_map.metadata, CONFIG_HASH_ANNOTATION);
    let ds_hash = annotation(&objects.daemon_set.metadata, APPLIED_HASH_ANNOTATION);

    let term = ctx.leadership.term();
    let mut synced = ctx.synced.lock().await;
    if let Some(s) = &*synced
        && s.config_map == cm_hash
        && s.daemon_set == ds_hash
        && s.at.elapsed() < VERIFY_EVERY
        && s.term == term
    {
        return Ok(());
    }
    *synced = None;
    let checked = Instant::now();
    // The ConfigMap first, so agents started by a DaemonSet change find
    // their configuration.
    let cm = ensure(
        ctx,
        &objects.config_map,
        "ConfigMap",
        |current: &ConfigMap, desired: &ConfigMap| {
            annotation(&current.metadata, CONFIG_HASH_ANNOTATION)
                == annotation(&desired.metadata, CONFIG_HASH_ANNOTATION)
                && current.data == desired.data
                && owners(&current.metadata) == owners(&desired.metadata)
        },
    )
    .await;
    let ds = ensure(
        ctx,
        &objects.daemon_set,
        "DaemonSet",
        |current: &DaemonSet, desired: &DaemonSet| {
            annotation(&current.metadata, APPLIED_HASH_ANNOTATION)
                == annotation(&desired.metadata, APPLIED_HASH_ANNOTATION)
        },
    )
    .await;
    match (cm, ds) {
        (Ok(()), Ok(())) => {
            *synced = Some(Synced {
                config_map: cm_hash,
                daemon_set: ds_hash,
                at: checked,
                term,
            });
            Ok(())
        }
        (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
        (Err(first), Err(second)) => {
            warn!(error = %second, "agent object not applied");
            Err(first)
        }
    }
}

/// Applies `desired` unless the object in the cluster is already `same`.
async fn ensure<K>(
    ctx: &Context,
    desired: &K,
    kind: &'static str,
    same: impl Fn(&K, &K) -> bool,
) -> Result<(), Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let name = desired.meta().name.clone().unwrap_or_default();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let current = api.get_opt(&name).await.map_err(|source| Error::Read {
        kind,
        name: name.clone(),
        source,
    })?;
    if current.as_ref().is_some_and(|c| same(c, desired)) {
        return Ok(());
    }
    // Leadership may have lapsed while reading.
    if !ctx.leadership.is_leading() {
        return Ok(());
    }
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(desired),
    )
    .await
    .map_err(|source| Error::Apply {
        kind,
        name: name.clone(),
        source,
    })?;
    ctx.metrics.wrote(kind);
    info!(
        kind,
        name,
        created = current.is_none(),
        "agent object applied"
    );
    Ok(())
}

/// Owner UIDs, the part of an owner reference that matters for equality.
fn owners(meta: &ObjectMeta) -> Vec<&str> {
    meta.owner_references
        .iter()
        .flatten()
        .map(|o| o.uid.as_str())
        .collect()
}

fn annotation(meta: &ObjectMeta, key: &str) -> String {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .cloned()
        .unwrap_or_default()
}

/// Runs [`sync`] whenever `trigger` fires or an agent tells new possible
/// CPUs (debounced), every [`VERIFY_EVERY`], and after failures with
/// exponential backoff, until `shutdown` completes. Waits for the watch
/// caches first.
pub async fn run(ctx: Arc<Context>, trigger: Arc<Notify>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    tokio::select! {
        () = &mut shutdown => return,
        () = ctx.stores.wait_until_ready() => {}
    }
    let mut failures = 0u32;
    let mut next = Instant::now();
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            // While backing off, changes wait for the retry.
            () = trigger.notified(), if failures == 0 => sleep(DEBOUNCE).await,
            // Agents telling their nodes' CPUs change the node budget shares.
            () = ctx.hub.cpus_changed(), if failures == 0 => sleep(DEBOUNCE).await,
            () = sleep_until(next) => {}
        }
        match sync(&ctx).await {
            Ok(()) => {
                failures = 0;
                ctx.throttle.clear("agent");
                next = Instant::now() + VERIFY_EVERY;
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let delay = Duration::from_secs(1u64 << (failures - 1).min(16)).min(MAX_BACKOFF);
                ctx.metrics.error(controller::AGENT, e.metric_label());
                if let Some(suppressed) = ctx.throttled("agent", &e) {
                    warn!(error = %e, retry_in = ?delay, suppressed, "agent objects not up to date");
                }
                next = Instant::now() + delay;
            }
        }
    }
}
