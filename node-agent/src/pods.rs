//! The pods on this node, and the cgroup ids a pod selector stands for.
//!
//! One watch per agent, restricted to its node with the field selector
//! `spec.nodeName=<node>`, keeps a reflector store of the pods' metadata
//! (namespace, UID, labels: all a selector needs). The API server sends
//! only changes, so a thousand agents cost a thousand idle watches instead
//! of a list per probe per agent every few seconds. [`PodWatch::start`]
//! touches the network; [`PodWatch::from_stream`] takes any watcher-event
//! stream (tests feed their own); [`PodScope`] says which pods a probe
//! observes (its namespaces and `podSelector`); [`selected_cgroups`] and
//! [`pod_cgroup_index`] read cgroupfs only.
//!
//! A failed list or watch changes nothing in the store: the probes keep
//! the last pods they knew. The watcher retries with its own exponential
//! backoff (0.8 s doubling to 30 s); the failure is logged at most once a
//! minute and shows in [`PodWatchHealth`] and the agent's metrics.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use futures::{Stream, StreamExt};
use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::LabelSelector};
use kube::{
    core::{PartialObjectMeta, Selector, SelectorExt},
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        watcher,
    },
};
use tokio::sync::watch;

use crate::metrics::NodeMetrics;

/// What the watch keeps of a pod: its metadata only.
pub type PodMeta = PartialObjectMeta<Pod>;

/// A failed list or watch is logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// How the pod watch is doing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodWatchHealth {
    /// A full list of the node's pods has arrived at least once.
    pub synced: bool,
    /// The last list or watch call succeeded.
    pub up: bool,
    /// Failed lists and watches since the agent started.
    pub errors: u64,
    /// The latest failure, while `up` is false.
    pub last_error: Option<String>,
}

/// The pods on this node, kept current by one watch.
pub struct PodWatch {
    store: Store<PodMeta>,
    health: Arc<Mutex<PodWatchHealth>>,
    changed: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PodWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PodWatch {
    /// Watches the pods on `node` through the API server, with the agent's
    /// service account (which may `list` and `watch` pods).
    pub fn start(client: kube::Client, node: &str, metrics: Option<NodeMetrics>) -> Self {
        // Metadata only: the agent needs no pod's spec or status.
        let api: kube::Api<PodMeta> = kube::Api::all(client);
        let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        let stream = watcher::watcher(api, config).default_backoff();
        Self::from_stream(stream, metrics)
    }

    /// Keeps a store from any stream of watcher events.
    pub fn from_stream<S>(stream: S, metrics: Option<NodeMetrics>) -> Self
    where
        S: Stream<Item = Result<watcher::Event<PodMeta>, watcher::Error>> + Send + 'static,
    {
        let (store, mut writer) = reflector::store::<PodMeta>();
        let health = Arc::new(Mutex::new(PodWatchHealth::default()));
        let (tx, changed) = watch::channel(0u64);
        let shared = health.clone();
        let reader = store.clone();
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            let mut log = RateLimitedLog::default();
            let mut seq = 0u64;
            while let Some(item) = stream.next().await {
                match item {
                    Ok(event) => {
                        writer.apply_watcher_event(&event);
                        let was_up = {
                            let mut h = shared.lock().unwrap_or_else(PoisonError::into_inner);
                            let was_up = h.up || h.errors == 0;
                            h.up = true;
                            h.last_error = None;
                            if matches!(event, watcher::Event::InitDone) {
                                h.synced = true;
                            }
                            was_up
                        };
                        if !was_up {
                            tracing::info!("pod watch recovered");
                            log = RateLimitedLog::default();
                        }
                        if let Some(m) = &metrics {
                            m.pod_watch_up.set(1);
                            m.pods.set(reader.len() as i64);
                        }
                        // Buffered events of a relist change nothing until
                        // InitDone swaps them in.
                        if !matches!(event, watcher::Event::Init | watcher::Event::InitApply(_)) {
                            seq += 1;
                            let _ = tx.send(seq);
                        }
                    }
                    Err(e) => {
                        let message = e.to_string();
                        {
                            let mut h = shared.lock().unwrap_or_else(PoisonError::into_inner);
                            h.up = false;
                            h.errors += 1;
                            h.last_error = Some(message.clone());
                        }
                        if let Some(m) = &metrics {
                            m.pod_watch_up.set(0);
                            m.pod_watch_errors.inc();
                        }
                        log.warn(&message);
                    }
                }
            }
        });
        Self {
            store,
            health,
            changed,
            task,
        }
    }

    /// The pods as last seen.
    pub fn pods(&self) -> Vec<Arc<PodMeta>> {
        self.store.state()
    }

    pub fn health(&self) -> PodWatchHealth {
        self.health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Resolves when the store changed since the last call.
    pub async fn changed(&mut self) {
        if self.changed.changed().await.is_err() {
            // The stream ended (never, for a watcher): nothing will change.
            std::future::pending::<()>().await;
        }
    }
}

/// Warns on the first failure, then at most once per [`LOG_EVERY`] with
/// how many failures were not logged.
#[derive(Default)]
struct RateLimitedLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    fn warn(&mut self, message: &str) {
        if self.last.is_some_and(|t| t.elapsed() < LOG_EVERY) {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(
            error = %message,
            not_logged = self.suppressed,
            "pod list or watch failed; probes keep the pods they knew, retrying with backoff"
        );
        self.last = Some(Instant::now());
        self.suppressed = 0;
    }
}

/// A pod selector, checked: an operator the agent does not know, or a
/// malformed key or value, is an error, never a selector that matches more.
pub fn selector(s: &LabelSelector) -> Result<Selector, String> {
    let problems = ringwarden_crds::selector::label_selector_problems(s);
    if let Some((field, message)) = problems.into_iter().next() {
        return Err(format!("podSelector{field}: {message}"));
    }
    Selector::try_from(s.clone()).map_err(|e| format!("podSelector: {}", e.0))
}

/// cgroup directories of the pods under `root`, by pod UID, found in one
/// walk: `…/kubepods-<qos>-pod<uid_with_underscores>.slice` with the
/// systemd driver, `…/pod<uid>` with the cgroupfs driver, at most two
/// levels below `kubepods.slice` or `kubepods` (QoS class, then pod).
pub fn pod_cgroup_index(root: &Path) -> HashMap<String, PathBuf> {
    let mut index = HashMap::new();
    let mut stack: Vec<(PathBuf, u8)> = ["kubepods.slice", "kubepods"]
        .iter()
        .map(|d| (root.join(d), 0))
        .filter(|(p, _)| p.is_dir())
        .collect();
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = e.file_name();
            let name = name.to_string_lossy();
            if let Some(uid) = pod_uid(&name) {
                index.insert(uid, e.path());
            } else if depth < 1 {
                stack.push((e.path(), depth + 1));
            }
        }
    }
    index
}

/// The pod UID in a pod cgroup's directory name.
fn pod_uid(name: &str) -> Option<String> {
    if let Some(rest) = name.strip_suffix(".slice") {
        let (_, uid) = rest.rsplit_once("-pod")?;
        return is_uid(uid).then(|| uid.replace('_', "-"));
    }
    let uid = name.strip_prefix("pod")?;
    is_uid(uid).then(|| uid.to_string())
}

fn is_uid(s: &str) -> bool {
    s.len() == 36
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'-' || b == b'_')
}

/// Which pods a probe observes: those of `namespaces` (all, when `None`)
/// that `selector` matches (all, when `None`).
#[derive(Clone, Debug)]
pub struct PodScope {
    pub namespaces: Option<BTreeSet<String>>,
    pub selector: Option<Selector>,
}

impl PodScope {
    /// The pods `p` observes, checked: `None` when it is not limited to
    /// pods; a malformed `podSelector` is an error, never a wider scope.
    pub fn of(p: &ringwarden_crds::AgentProbe) -> Result<Option<Self>, String> {
        if !p.observes_pods_only() {
            return Ok(None);
        }
        let selector = p.pod_selector.as_ref().map(selector).transpose()?;
        Ok(Some(Self {
            namespaces: p.pod_namespaces().map(|n| n.into_iter().collect()),
            selector,
        }))
    }

    fn matches(&self, pod: &PodMeta) -> bool {
        let in_namespace = match (&self.namespaces, &pod.metadata.namespace) {
            (None, _) => true,
            (Some(all), Some(ns)) => all.contains(ns),
            (Some(_), None) => false,
        };
        let empty = BTreeMap::new();
        in_namespace
            && self
                .selector
                .as_ref()
                .is_none_or(|s| s.matches(pod.metadata.labels.as_ref().unwrap_or(&empty)))
    }
}

/// The pods `scope` selects whose cgroup exists now.
pub fn selected_pods<'a>(
    pods: &'a [Arc<PodMeta>],
    scope: &'a PodScope,
    index: &'a HashMap<String, PathBuf>,
) -> impl Iterator<Item = &'a Path> + 'a {
    pods.iter()
        .filter(|p| scope.matches(p))
        .filter_map(|p| index.get(p.metadata.uid.as_deref()?))
        .map(PathBuf::as_path)
}

/// The cgroup ids of the pods `scope` selects whose cgroup exists now. A
/// pod whose cgroup is not there yet (the kubelet has not started it)
/// joins on a later pass.
pub fn selected_cgroups(
    pods: &[Arc<PodMeta>],
    scope: &PodScope,
    index: &HashMap<String, PathBuf>,
) -> BTreeSet<u64> {
    selected_pods(pods, scope, index)
        .filter_map(|dir| crate::probes::cgroup_id(dir.to_str()?).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelectorRequirement, ObjectMeta};

    use super::*;

    const UID: &str = "0f3c9a2e-1b2c-4d5e-8f90-123456789abc";

    #[test]
    fn pods_are_found_by_uid_with_either_cgroup_driver() {
        let root = std::env::temp_dir().join(format!("rw-cg-{}", std::process::id()));
        let systemd = root.join(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f3c9a2e_1b2c_4d5e_8f90_123456789abc.slice",
        );
        std::fs::create_dir_all(systemd.join("cri-containerd-1.scope")).unwrap();
        let guaranteed =
            root.join("kubepods.slice/kubepods-pod11111111_2222_3333_4444_555555555555.slice");
        std::fs::create_dir_all(&guaranteed).unwrap();
        let index = pod_cgroup_index(&root);
        assert_eq!(index.get(UID), Some(&systemd));
        assert_eq!(
            index.get("11111111-2222-3333-4444-555555555555"),
            Some(&guaranteed)
        );
        assert_eq!(index.len(), 2, "{index:?}");
        std::fs::remove_dir_all(&root).unwrap();

        let cgroupfs = root.join(format!("kubepods/besteffort/pod{UID}"));
        std::fs::create_dir_all(&cgroupfs).unwrap();
        assert_eq!(pod_cgroup_index(&root).get(UID), Some(&cgroupfs));
        std::fs::remove_dir_all(&root).unwrap();
        assert!(pod_cgroup_index(&root).is_empty());
    }

    fn meta(namespace: &str, uid: &str) -> PodMeta {
        PodMeta {
            types: None,
            metadata: ObjectMeta {
                name: Some(format!("pod-{uid}")),
                namespace: Some(namespace.into()),
                uid: Some(uid.into()),
                ..ObjectMeta::default()
            },
            _phantom: std::marker::PhantomData,
        }
    }

    /// Lets the watch task run until `done` holds.
    async fn settle(w: &PodWatch, done: impl Fn(&PodWatchHealth) -> bool) {
        for _ in 0..1000 {
            if done(&w.health()) {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the watch task never got there: {:?}", w.health());
    }

    #[tokio::test]
    async fn a_failed_watch_keeps_the_pods_it_knew_and_says_so() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut w = PodWatch::from_stream(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
            None,
        );
        assert_eq!(w.health(), PodWatchHealth::default());
        for e in [
            watcher::Event::Init,
            watcher::Event::InitApply(meta("shop", "a")),
            watcher::Event::InitDone,
        ] {
            tx.send(Ok(e)).unwrap();
        }
        w.changed().await;
        settle(&w, |h| h.synced).await;
        assert_eq!(w.pods().len(), 1);

        tx.send(Err(watcher::Error::NoResourceVersion)).unwrap();
        settle(&w, |h| h.errors == 1).await;
        let h = w.health();
        assert!(!h.up && h.synced, "{h:?}");
        assert!(h.last_error.unwrap().contains("resourceVersion"));
        assert_eq!(w.pods().len(), 1, "the pods it knew stay");

        tx.send(Ok(watcher::Event::Apply(meta("shop", "b"))))
            .unwrap();
        w.changed().await;
        settle(&w, |h| h.up).await;
        assert_eq!(w.pods().len(), 2);
        assert_eq!(w.health().last_error, None);
    }

    #[test]
    fn repeated_failures_are_logged_once_a_minute_with_a_count() {
        let mut log = RateLimitedLog::default();
        log.warn("first");
        assert!(log.last.is_some());
        assert_eq!(log.suppressed, 0);
        log.warn("second");
        log.warn("third");
        assert_eq!(log.suppressed, 2, "within a minute only counted");
    }

    #[test]
    fn names_that_merely_look_like_pods_are_not_pods() {
        assert_eq!(pod_uid(&format!("pod{UID}")).as_deref(), Some(UID));
        assert_eq!(pod_uid("kubepods-besteffort.slice"), None);
        assert_eq!(pod_uid("podcast"), None);
        assert_eq!(pod_uid("pod-../../etc.slice"), None);
    }

    fn requirement(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: operator.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[test]
    fn a_malformed_selector_is_refused_not_widened() {
        let bad = |e: LabelSelectorRequirement| LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![e]),
        };
        for s in [
            bad(requirement("app", "Matches", &["web"])),
            bad(requirement("app", "In", &[])),
            bad(requirement("app", "Exists", &["web"])),
            bad(requirement("bad key!", "Exists", &[])),
            LabelSelector {
                match_labels: Some([("app".to_string(), "no spaces".to_string())].into()),
                match_expressions: None,
            },
        ] {
            assert!(selector(&s).is_err(), "{s:?}");
        }
        let ok = LabelSelector {
            match_labels: Some([("app".to_string(), "web".to_string())].into()),
            match_expressions: Some(vec![requirement("tier", "NotIn", &["db"])]),
        };
        let s = selector(&ok).unwrap();
        let labels = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        assert!(s.matches(&labels(&[("app", "web")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "db")])));
        assert!(!s.matches(&labels(&[])));
    }

    #[test]
    fn only_matching_pods_of_the_namespaces_in_scope_are_selected() {
        let root = std::env::temp_dir().join(format!("rw-sel-{}", std::process::id()));
        let uids = [
            "00000000-0000-0000-0000-00000000000a",
            "00000000-0000-0000-0000-00000000000b",
            "00000000-0000-0000-0000-00000000000c",
            "00000000-0000-0000-0000-00000000000d",
        ];
        for u in uids {
            std::fs::create_dir_all(root.join(format!("kubepods/pod{u}"))).unwrap();
        }
        let pod = |ns: &str, uid: &str, app: &str| {
            Arc::new(PodMeta {
                types: None,
                metadata: ObjectMeta {
                    namespace: Some(ns.into()),
                    uid: Some(uid.into()),
                    labels: Some([("app".to_string(), app.to_string())].into()),
                    ..ObjectMeta::default()
                },
                _phantom: std::marker::PhantomData,
            })
        };
        let pods = [
            pod("shop", uids[0], "web"),
            pod("shop", uids[1], "db"),
            pod("other", uids[2], "web"),
            // A selected pod whose cgroup does not exist yet.
            pod("shop", "00000000-0000-0000-0000-0000000000ff", "web"),
        ];
        let index = pod_cgroup_index(&root);
        let scope = |namespaces: Option<&[&str]>, s: Option<LabelSelector>| PodScope {
            namespaces: namespaces.map(|n| n.iter().map(|n| n.to_string()).collect()),
            selector: s.map(|s| selector(&s).unwrap()),
        };
        let web = LabelSelector {
            match_labels: Some([("app".to_string(), "web".to_string())].into()),
            match_expressions: None,
        };
        let id = |u: &str| {
            crate::probes::cgroup_id(root.join(format!("kubepods/pod{u}")).to_str().unwrap())
                .unwrap()
        };
        assert_eq!(
            selected_cgroups(&pods, &scope(Some(&["shop"]), Some(web.clone())), &index),
            BTreeSet::from([id(uids[0])])
        );
        // An empty selector, or none, selects every pod of the namespace,
        // no more.
        let all = BTreeSet::from([id(uids[0]), id(uids[1])]);
        let empty = Some(LabelSelector::default());
        assert_eq!(
            selected_cgroups(&pods, &scope(Some(&["shop"]), empty), &index),
            all
        );
        assert_eq!(
            selected_cgroups(&pods, &scope(Some(&["shop"]), None), &index),
            all
        );
        // A ClusterProbeSet's: the selector across namespaces, or every
        // pod of the namespaces listed; an empty list selects none.
        assert_eq!(
            selected_cgroups(&pods, &scope(None, Some(web)), &index),
            BTreeSet::from([id(uids[0]), id(uids[2])])
        );
        assert_eq!(
            selected_cgroups(&pods, &scope(Some(&["shop", "other"]), None), &index),
            BTreeSet::from([id(uids[0]), id(uids[1]), id(uids[2])])
        );
        assert!(selected_cgroups(&pods, &scope(Some(&[]), None), &index).is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
