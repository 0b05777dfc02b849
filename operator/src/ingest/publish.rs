//! The leader's report loop. Once a second:
//!
//! 1. when this replica has just become leader, restore every SLO's
//!    evaluator from its snapshot ConfigMap, then take agents;
//! 2. publish each ProbeSet's report figures for the controller to write
//!    into its status (only a meaningful change, at most once per report
//!    interval);
//! 3. write each SLO's status under the same rule;
//! 4. persist SLO snapshots that changed, every `--snapshot-interval`;
//! 5. export the figures as metrics.
//!
//! Talks to the API server. A follower does none of it and takes no agents.
//!
//! Snapshots live in ConfigMaps in the operator's namespace, one per SLO:
//! the operator already may write ConfigMaps there, users' namespaces stay
//! untouched, and an SLO's snapshot (about 90 KB plus 180 B per node) fits
//! a ConfigMap up to some 4 500 nodes, where an annotation on the SLO would
//! hit the 256 KiB annotation limit at 1 000 nodes and show in every
//! `kubectl get -o yaml`.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::{Duration, SystemTime},
};

use k8s_openapi::{
    api::core::v1::ConfigMap,
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kube::{
    Api,
    api::{DeleteParams, ListParams, Patch, PatchParams},
    runtime::reflector::ObjectRef,
};
use ringwarden_crds::{API_VERSION, ProbeSet, Slo};
use tokio::{sync::mpsc, time::Instant};
use tracing::{debug, info, warn};

use crate::{
    cause::api_cause,
    error::is_conflict,
    ingest::hub::{Hub, ProbeSetFigures},
    ingest::reports::{Lacking, Persisted, millis},
    ingest::slo_status::{self, Saved, Verdict},
    reconcile::controller::{self, Context},
    reconcile::render::{FIELD_MANAGER, content_hash},
    reconcile::status::Reported,
};

/// Label on every snapshot ConfigMap.
pub const SNAPSHOT_LABEL: &str = "ringwarden.dev/slo-snapshot";
/// Annotation naming the SLO (`namespace/name`) a snapshot belongs to.
pub const SNAPSHOT_SLO_ANNOTATION: &str = "ringwarden.dev/slo";
/// Key of the snapshot in its ConfigMap as earlier versions wrote it
/// (`data`, plain JSON); still read.
pub const SNAPSHOT_KEY: &str = "snapshot.json";
/// How long a stale restore shows on the SLO: the fast burn window of a
/// 30-day SLO, which the gap's counts could inflate.
const STALE_NOTICE: Duration = Duration::from_secs(3600);
/// A snapshot younger than this is never called stale.
const STALE_MIN: Duration = Duration::from_secs(120);

/// Key of the compressed snapshot in its ConfigMap's `binaryData`.
pub const SNAPSHOT_KEY_GZ: &str = "snapshot.json.gz";

/// Timings of the loop.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub tick: Duration,
    /// How often changed SLO snapshots are written.
    pub snapshot_every: Duration,
    /// Floor of the per-object status write period (which is the report
    /// interval), so a 100 ms report interval cannot flood the API server.
    pub min_status_period: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(1),
            snapshot_every: Duration::from_secs(10),
            min_status_period: Duration::from_secs(10),
        }
    }
}

/// The name of the ConfigMap holding SLO `id`'s snapshot: a hash, since
/// `namespace/name` may be longer than a name allows.
pub fn snapshot_name(id: &str) -> String {
    let hash = content_hash(id.as_bytes());
    let hex = hash.trim_start_matches("sha256:");
    format!("ringwarden-slo-{}", &hex[..16])
}

/// The ConfigMap holding `p`: gzip-compressed JSON under
/// [`SNAPSHOT_KEY_GZ`] in `binaryData`. Uncompressed, a snapshot grows by
/// about 200 bytes per node and would pass a ConfigMap's 1 MiB near 4 500
/// nodes; compressed it stays under a third of it at 5 000 (tested).
/// `owner` (the operator's Deployment) owns it, so uninstalling the
/// operator removes it.
pub fn snapshot_config_map(
    namespace: &str,
    p: &Persisted,
    owner: Option<&OwnerReference>,
) -> Result<ConfigMap, std::io::Error> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    serde_json::to_writer(&mut gz, p)?;
    gz.flush()?;
    let bytes = gz.finish()?;
    Ok(ConfigMap {
        metadata: ObjectMeta {
            name: Some(snapshot_name(&p.slo)),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([
                (SNAPSHOT_LABEL.into(), "true".into()),
                ("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into()),
                ("app.kubernetes.io/part-of".into(), "ringwarden".into()),
            ])),
            annotations: Some(BTreeMap::from([(
                SNAPSHOT_SLO_ANNOTATION.into(),
                p.slo.clone(),
            )])),
            owner_references: crate::owner::references(owner),
            ..Default::default()
        },
        binary_data: Some(BTreeMap::from([(
            SNAPSHOT_KEY_GZ.into(),
            k8s_openapi::ByteString(bytes),
        )])),
        ..Default::default()
    })
}

/// The snapshot a ConfigMap holds: compressed, or as plain JSON under
/// [`SNAPSHOT_KEY`] as earlier versions wrote it.
pub fn snapshot_of(cm: &ConfigMap) -> Result<Persisted, String> {
    if let Some(gz) = cm.binary_data.as_ref().and_then(|d| d.get(SNAPSHOT_KEY_GZ)) {
        let reader =
            std::io::Read::take(flate2::read::GzDecoder::new(&gz.0[..]), MAX_SNAPSHOT_JSON);
        return serde_json::from_reader(reader).map_err(|e| e.to_string());
    }
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get(SNAPSHOT_KEY))
        .ok_or_else(|| format!("neither {SNAPSHOT_KEY_GZ} nor {SNAPSHOT_KEY} in it"))?;
    serde_json::from_str(text).map_err(|e| e.to_string())
}

/// Per probe (`namespace/probeset/probe`; a ClusterProbeSet's namespace
/// is empty), the selected nodes that sent no fresh count of it.
pub fn lacking_of(figures: &[ProbeSetFigures]) -> HashMap<String, Lacking> {
    figures
        .iter()
        .flat_map(|p| {
            p.figures.probes.iter().map(|probe| {
                (
                    format!("{}/{}/{}", p.namespace, p.name, probe.name),
                    probe.lacking.clone(),
                )
            })
        })
        .collect()
}

/// The status `slo` should have at `now` (before its `Persisted`
/// condition and cluster name), with the evaluator's figures behind it:
/// its evaluation, stale while a selected node sent no fresh count of the
/// probe (`lacking`, from [`lacking_of`]), or why it is not evaluated.
/// `None` for an SLO created since the last sync.
pub fn slo_desired(
    hub: &Hub,
    slo: &Slo,
    lacking: &HashMap<String, Lacking>,
    now: SystemTime,
    at: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) -> Option<(
    ringwarden_crds::SloStatus,
    Option<ringwarden_core::slo::SloStatus>,
)> {
    let id = slo_status::id(slo);
    let figures = hub.reports().evaluate(&id, now);
    let problem = hub.slo_problem(&id);
    let ns = slo.metadata.namespace.as_deref().unwrap_or_default();
    let (target_ns, target) = slo.spec.target(Some(ns));
    let lacking = lacking.get(&format!(
        "{}/{target}/{}",
        target_ns.unwrap_or_default(),
        slo.spec.probe
    ));
    let verdict = match (&figures, &problem) {
        (Some(f), _) => Verdict::Evaluated(f, lacking),
        (None, Some(p)) => Verdict::Problem(p),
        (None, None) => return None,
    };
    Some((slo_status::desired(slo, verdict, at), figures))
}

/// Most bytes a snapshot may inflate to: a bound on what a ConfigMap edited
/// by hand can make the operator allocate.
const MAX_SNAPSHOT_JSON: u64 = 64 << 20;

/// The loop's state between ticks.
pub struct Publisher {
    ctx: Arc<Context>,
    reconcile: mpsc::UnboundedSender<ObjectRef<ProbeSet>>,
    settings: Settings,
    /// The leadership term whose SLO state was restored.
    restored: Option<u64>,
    /// When each SLO's status was last written.
    slo_written: HashMap<String, Instant>,
    /// SLOs whose saved state is not current, and until when a stale
    /// restore is shown.
    unsaved: HashMap<String, (Saved, Option<Instant>)>,
    /// The evaluator version last persisted, per SLO.
    persisted: HashMap<String, u64>,
    last_persist: Option<Instant>,
    /// Per probe (`namespace/probeset/probe`), the selected nodes that
    /// sent no fresh count of it, from this tick's figures: SLOs on it are
    /// stale while any is listed.
    lacking: HashMap<String, Lacking>,
    /// Label sets exported last tick, to remove those of deleted objects.
    exported_probesets: HashSet<(String, String)>,
    exported_slos: HashSet<(String, String)>,
}

impl Publisher {
    /// `reconcile` receives the ProbeSets whose published figures changed.
    pub fn new(
        ctx: Arc<Context>,
        reconcile: mpsc::UnboundedSender<ObjectRef<ProbeSet>>,
        settings: Settings,
    ) -> Self {
        Self {
            ctx,
            reconcile,
            settings,
            restored: None,
            slo_written: HashMap::new(),
            unsaved: HashMap::new(),
            persisted: HashMap::new(),
            last_persist: None,
            lacking: HashMap::new(),
            exported_probesets: HashSet::new(),
            exported_slos: HashSet::new(),
        }
    }

    /// Ticks until `shutdown` completes, once the watch caches are filled.
    /// On the way out a leader persists its snapshots once more.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        tokio::select! {
            () = &mut shutdown => return,
            () = self.ctx.stores.wait_until_ready() => {}
        }
        let mut tick = tokio::time::interval(self.settings.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                _ = tick.tick() => {}
            }
            self.step(SystemTime::now()).await;
        }
        if self.ctx.hub.is_serving() && self.ctx.leadership.is_leading() {
            self.last_persist = None;
            self.persist().await;
        }
        self.ctx.hub.stop_serving();
    }

    /// Whether an error of `kind` at `site` is logged now, and how many
    /// like it were left out before (the context's [`Throttle`]).
    ///
    /// [`Throttle`]: crate::throttle::Throttle
    fn logs(&self, site: &'static str, kind: &'static str) -> Option<u64> {
        self.ctx
            .throttle
            .check(site, kind, std::time::Instant::now())
            .suppressed()
    }

    /// One tick at `now`.
    pub async fn step(&mut self, now: SystemTime) {
        let hub = Arc::clone(&self.ctx.hub);
        if !self.ctx.leadership.is_leading() {
            if hub.is_serving() {
                info!("not leading: agents are sent to the leader");
                hub.stop_serving();
            }
            self.restored = None;
            self.slo_written.clear();
            self.unsaved.clear();
            self.ctx.metrics.slo_snapshots_unsaved.set(0);
            self.persisted.clear();
            return;
        }
        let term = self.ctx.leadership.term();
        if self.restored != Some(term) {
            hub.stop_serving();
            match self.restore().await {
                Ok(n) => {
                    info!(slos = n, "SLO state restored; taking agents");
                    self.restored = Some(term);
                    hub.start_serving(now);
                }
                Err(e) => {
                    let cause = api_cause(&e);
                    if let Some(suppressed) = self.logs("snapshot_read", cause.label()) {
                        warn!(error = %cause.explain("get and list", "configmaps"), suppressed,
                            "cannot read SLO snapshots; agents wait until they can be");
                    }
                    return;
                }
            }
        }
        let gone = hub.sync_slos(now);
        self.forget(gone).await;
        self.publish_probesets(now);
        self.write_slo_statuses(now).await;
        self.persist().await;
        hub.prune(now);
    }

    /// Restores every evaluable SLO that has a snapshot, and deletes
    /// snapshots of SLOs that no longer exist. Returns how many were
    /// restored.
    async fn restore(&mut self) -> Result<usize, kube::Error> {
        let hub = &self.ctx.hub;
        let api: Api<ConfigMap> = Api::namespaced(self.ctx.client.clone(), &self.ctx.namespace);
        let (defs, _) = hub.slo_defs();
        let mut restored = 0;
        for def in defs {
            let Some(cm) = api.get_opt(&snapshot_name(&def.id)).await? else {
                continue;
            };
            let id = def.id.clone();
            match snapshot_of(&cm) {
                Ok(p) if p.slo == id => match hub.reports().restore_slo(def, p.clone()) {
                    Ok(()) => {
                        let age = p.saved_ms.map(|t| {
                            Duration::from_millis(millis(SystemTime::now()).saturating_sub(t))
                        });
                        // Without counts the gap lands nothing: no warning.
                        if let Some(age) =
                            age.filter(|a| *a > self.stale_after() && p.evaluator.has_counts())
                        {
                            warn!(
                                slo = id,
                                age_s = age.as_secs(),
                                "restored an old SLO snapshot: the gap's counts land at once"
                            );
                            let at = controller::now().0.to_string();
                            self.unsaved.insert(
                                id.clone(),
                                (
                                    Saved::RestoredStale { age, at },
                                    Some(Instant::now() + STALE_NOTICE),
                                ),
                            );
                        }
                        // Saved as it stands: no need to write it back.
                        self.persisted.insert(id, 0);
                        restored += 1;
                    }
                    Err(e) => warn!(slo = id, error = %e, "snapshot not usable; counting anew"),
                },
                Ok(_) => warn!(slo = id, "snapshot of another SLO; counting anew"),
                Err(e) => warn!(slo = id, error = %e, "snapshot not readable; counting anew"),
            }
        }
        // Snapshots of SLOs deleted while no replica led.
        let existing: HashSet<String> = hub
            .stores()
            .slos
            .state()
            .iter()
            .map(|s| slo_status::id(s))
            .collect();
        match api
            .list_metadata(&ListParams::default().labels(&format!("{SNAPSHOT_LABEL}=true")))
            .await
        {
            Ok(list) => {
                for cm in list.items {
                    let owner = cm
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(SNAPSHOT_SLO_ANNOTATION));
                    if let (Some(owner), Some(name)) = (owner, &cm.metadata.name)
                        && !existing.contains(owner)
                    {
                        self.delete_snapshot(&api, name).await;
                    }
                }
            }
            Err(e) => {
                let cause = api_cause(&e);
                if let Some(suppressed) = self.logs("snapshot_list", cause.label()) {
                    warn!(error = %cause.explain("list", "configmaps"), suppressed,
                        "cannot list SLO snapshots to remove stale ones");
                }
            }
        }
        Ok(restored)
    }

    async fn delete_snapshot(&self, api: &Api<ConfigMap>, name: &str) {
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => self.ctx.metrics.wrote("SLOSnapshotDeleted"),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                let cause = api_cause(&e);
                if let Some(suppressed) = self.logs("snapshot_delete", cause.label()) {
                    warn!(name, error = %cause.explain("delete", "configmaps"), suppressed,
                        "cannot delete a stale SLO snapshot");
                }
            }
        }
    }

    /// Deletes the snapshots of evaluators dropped because their SLO is
    /// gone (an SLO only made invalid keeps its snapshot).
    async fn forget(&mut self, gone: Vec<String>) {
        if gone.is_empty() {
            return;
        }
        let existing: HashSet<String> = self
            .ctx
            .stores
            .slos
            .state()
            .iter()
            .map(|s| slo_status::id(s))
            .collect();
        let api: Api<ConfigMap> = Api::namespaced(self.ctx.client.clone(), &self.ctx.namespace);
        for id in gone {
            self.persisted.remove(&id);
            if !existing.contains(&id) {
                self.slo_written.remove(&id);
                self.delete_snapshot(&api, &snapshot_name(&id)).await;
            }
        }
    }

    fn publish_probesets(&mut self, now: SystemTime) {
        let hub = &self.ctx.hub;
        let figures = hub.probeset_figures(now);
        let at = Instant::now();
        let mut exported = HashSet::new();
        self.lacking = lacking_of(&figures);
        for p in &figures {
            self.export_probeset(p);
            exported.insert((p.namespace.clone(), p.name.clone()));
            // Until agents had time to report, "not reporting" means nothing.
            if !hub.expect_reports(now, p.interval) {
                continue;
            }
            let period = p.interval.max(self.settings.min_status_period);
            if hub.publish(&p.key(), Reported::from_figures(&p.figures), at, period) {
                debug!(probeset = p.key(), "report figures changed");
                let _ = self
                    .reconcile
                    .send(ObjectRef::new(&p.name).within(&p.namespace));
            }
        }
        let keys: HashSet<String> = figures.iter().map(ProbeSetFigures::key).collect();
        hub.retain_published(|k| keys.contains(k));
        let m = &self.ctx.metrics.ingest;
        for (ns, name) in self.exported_probesets.difference(&exported) {
            for state in ["desired", "ready", "reporting"] {
                let _ = m.nodes.remove_label_values(&[ns, name, state]);
            }
            let _ = m.events_per_second.remove_label_values(&[ns, name]);
            for path in ["ringbuf", "pairing"] {
                let _ = m.drop_ratio.remove_label_values(&[ns, name, path]);
            }
        }
        self.exported_probesets = exported;
    }

    fn export_probeset(&self, p: &ProbeSetFigures) {
        let m = &self.ctx.metrics.ingest;
        let (ns, name) = (p.namespace.as_str(), p.name.as_str());
        let f = &p.figures;
        for (state, n) in [
            ("desired", f.desired),
            ("ready", f.ready),
            ("reporting", f.reporting),
        ] {
            m.nodes.with_label_values(&[ns, name, state]).set(n as f64);
        }
        m.events_per_second
            .with_label_values(&[ns, name])
            .set(f.flow.events_per_second);
        m.drop_ratio
            .with_label_values(&[ns, name, "ringbuf"])
            .set(f.flow.ringbuf_drop());
        m.drop_ratio
            .with_label_values(&[ns, name, "pairing"])
            .set(f.flow.pairing_drop());
    }

    async fn write_slo_statuses(&mut self, now: SystemTime) {
        let hub = Arc::clone(&self.ctx.hub);
        let at = Instant::now();
        let probesets = self.ctx.stores.all_probesets();
        let mut exported = HashSet::new();
        for slo in self.ctx.stores.slos.state() {
            let id = slo_status::id(&slo);
            let ns = slo.metadata.namespace.clone().unwrap_or_default();
            let name = slo.metadata.name.clone().unwrap_or_default();
            let now_time = controller::now();
            let Some((mut desired, figures)) =
                slo_desired(&hub, &slo, &self.lacking, now, &now_time)
            else {
                // Created since the last sync: next tick.
                continue;
            };
            if let Some(f) = &figures {
                self.export_slo(&ns, &name, f);
                exported.insert((ns.clone(), name.clone()));
            }
            if !desired
                .conditions
                .iter()
                .any(|c| c.status == "True" && c.type_ == slo_status::condition::INVALID)
            {
                let saved = self.saved(&id);
                slo_status::with_saved(&mut desired, slo.status.as_ref(), &saved, &now_time);
            }
            desired.cluster = self.ctx.hub.cluster().map(str::to_owned);
            if slo_status::up_to_date(slo.status.as_ref(), &desired) {
                continue;
            }
            let interval = probesets
                .iter()
                .find(|ps| {
                    let (target_ns, target) = slo.spec.target(Some(ns.as_str()));
                    ps.metadata.namespace.as_deref() == target_ns
                        && ps.metadata.name.as_deref() == Some(target)
                })
                .map_or(Duration::ZERO, |ps| ps.spec.report_interval);
            let period = interval.max(self.settings.min_status_period);
            if self
                .slo_written
                .get(&id)
                .is_some_and(|t| at.duration_since(*t) < period)
            {
                continue;
            }
            if !self.ctx.leadership.is_leading() {
                return;
            }
            let api: Api<Slo> = Api::namespaced(self.ctx.client.clone(), &ns);
            let patch = serde_json::json!({
                "apiVersion": API_VERSION,
                "kind": "SLO",
                "status": desired,
            });
            match api
                .patch_status(
                    &name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&patch),
                )
                .await
            {
                Ok(_) => {
                    self.slo_written.insert(id, at);
                    self.ctx.metrics.wrote("SLOStatus");
                }
                Err(e) => {
                    // Retried after the period, not on every tick.
                    self.slo_written.insert(id.clone(), at);
                    let label = if is_conflict(&e) {
                        "slo_status_conflict"
                    } else {
                        "slo_status"
                    };
                    self.ctx
                        .metrics
                        .error(crate::metrics::controller::SLO, label);
                    let cause = api_cause(&e);
                    if let Some(suppressed) = self.logs("slo_status", cause.label()) {
                        warn!(slo = id, error = %cause.explain("patch", "slos/status"), suppressed,
                            "cannot write SLO status");
                    }
                }
            }
        }
        let m = &self.ctx.metrics.ingest;
        for (ns, name) in self.exported_slos.difference(&exported) {
            let _ = m.slo_sli.remove_label_values(&[ns, name]);
            let _ = m.slo_budget_remaining.remove_label_values(&[ns, name]);
            for window in ["fast", "slow"] {
                let _ = m.slo_burn_rate.remove_label_values(&[ns, name, window]);
            }
        }
        self.exported_slos = exported;
    }

    fn export_slo(&self, ns: &str, name: &str, f: &ringwarden_core::slo::SloStatus) {
        let m = &self.ctx.metrics.ingest;
        if let Some(sli) = f.sli {
            m.slo_sli.with_label_values(&[ns, name]).set(sli);
        }
        if let Some(b) = f.error_budget_remaining {
            m.slo_budget_remaining.with_label_values(&[ns, name]).set(b);
        }
        for (window, burn) in [("fast", &f.fast_burn), ("slow", &f.slow_burn)] {
            m.slo_burn_rate
                .with_label_values(&[ns, name, window])
                .set(burn.long_rate.unwrap_or(0.0));
        }
    }

    /// How `id`'s saved state stands now; a stale restore is shown for
    /// [`STALE_NOTICE`].
    fn saved(&mut self, id: &str) -> Saved {
        let now = Instant::now();
        self.unsaved
            .retain(|_, (_, until)| until.is_none_or(|u| now < u));
        self.ctx.metrics.slo_snapshots_unsaved.set(
            i64::try_from(
                self.unsaved
                    .values()
                    .filter(|(s, _)| matches!(s, Saved::Failed { .. }))
                    .count(),
            )
            .unwrap_or(i64::MAX),
        );
        self.unsaved
            .get(id)
            .map_or(Saved::Current, |(s, _)| s.clone())
    }

    /// A restored snapshot older than this is reported: a failover takes
    /// a lease duration, plus one snapshot interval of unsaved changes.
    fn stale_after(&self) -> Duration {
        (self.settings.snapshot_every * 3).max(STALE_MIN)
    }

    /// Writes the snapshots that changed since they were last written,
    /// every [`Settings::snapshot_every`].
    async fn persist(&mut self) {
        let at = Instant::now();
        if self
            .last_persist
            .is_some_and(|t| at.duration_since(t) < self.settings.snapshot_every)
        {
            return;
        }
        self.last_persist = Some(at);
        let hub = Arc::clone(&self.ctx.hub);
        let api: Api<ConfigMap> = Api::namespaced(self.ctx.client.clone(), &self.ctx.namespace);
        let versions = hub.reports().slo_versions();
        for (id, version) in versions {
            if self.persisted.get(&id) == Some(&version) {
                continue;
            }
            let Some(mut p) = hub.reports().persisted(&id) else {
                continue;
            };
            p.saved_ms = Some(millis(SystemTime::now()));
            if !self.ctx.leadership.is_leading() {
                return;
            }
            let cm =
                match snapshot_config_map(&self.ctx.namespace, &p, self.ctx.agent.owner.as_ref()) {
                    Ok(cm) => cm,
                    Err(e) => {
                        warn!(slo = id, error = %e, "cannot serialize an SLO snapshot");
                        continue;
                    }
                };
            match api
                .patch(
                    &snapshot_name(&id),
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&cm),
                )
                .await
            {
                Ok(_) => {
                    self.persisted.insert(id.clone(), version);
                    self.ctx.metrics.wrote("SLOSnapshot");
                    if matches!(self.unsaved.get(&id), Some((Saved::Failed { .. }, _))) {
                        self.unsaved.remove(&id);
                    }
                }
                Err(e) => {
                    self.ctx
                        .metrics
                        .error(crate::metrics::controller::SLO, "snapshot");
                    let cause = api_cause(&e);
                    if let Some(suppressed) = self.logs("snapshot", cause.label()) {
                        warn!(slo = id, error = %cause.explain("create and patch", "configmaps"),
                            suppressed, "cannot persist an SLO snapshot");
                    }
                    let since = match self.unsaved.get(&id) {
                        Some((Saved::Failed { since, .. }, _)) => since.clone(),
                        _ => controller::now().0.to_string(),
                    };
                    let error = crate::ingest::reports::truncate(&e.to_string(), 512);
                    self.unsaved
                        .insert(id, (Saved::Failed { error, since }, None));
                }
            }
        }
    }
}
