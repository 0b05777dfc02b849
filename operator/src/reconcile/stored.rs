//! Fetch, as stored: objects the API server hands out, decoded one by one,
//! so that one object the operator cannot read never stalls a watch.
//!
//! A typed watch fails its whole LIST when a single item does not decode
//! (say a `priority` written before the schema bounded it, or an object
//! edited by hand with the CRD's validation off), and then relists in a
//! loop: every ProbeSet would stop being reconciled. Here each object
//! decodes on its own into a [`Stored`]; those that fail leave the watch
//! stream as deletions, are counted and logged, and keep their reason in
//! [`Undecodable`] so the writer can put an `Invalid` condition on them.
//! No IO.

use std::{
    collections::BTreeMap,
    fmt::Debug,
    sync::{Arc, Mutex, PoisonError},
};

use futures::{Stream, StreamExt, future};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, runtime::watcher};
use ringwarden_crds::{ProbeSet, Slo};
use serde::{Deserialize, Deserializer, de::DeserializeOwned};
use serde_json::{Value, json};
use tracing::warn;

/// An object as stored: its metadata, and the typed object or why it
/// could not be decoded.
#[derive(Clone, Debug)]
pub struct Stored<K> {
    meta: ObjectMeta,
    pub decoded: Result<K, String>,
}

impl<'de, K: DeserializeOwned + Locate> Deserialize<'de> for Stored<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        let meta = value
            .get("metadata")
            .and_then(|m| ObjectMeta::deserialize(m).ok())
            .unwrap_or_default();
        let decoded = serde_path_to_error::deserialize::<_, K>(&value)
            .map_err(|e| K::locate(&value).unwrap_or_else(|| with_path("", e)));
        Ok(Self { meta, decoded })
    }
}

/// A decoding error as `path: what`, its path taken from `within`.
fn with_path(within: &str, e: serde_path_to_error::Error<serde_json::Error>) -> String {
    let path = e.path().to_string();
    let what = e.into_inner();
    match (within, path.as_str()) {
        ("", ".") => what.to_string(),
        ("", path) => format!("{path}: {what}"),
        (within, ".") => format!("{within}: {what}"),
        (within, path) => format!("{within}.{path}: {what}"),
    }
}

/// Names the field a stored object fails to decode at, where serde's path
/// cannot.
pub trait Locate {
    /// The field and the error, if `value`'s kind knows better than the
    /// path serde tracked.
    fn locate(_value: &Value) -> Option<String> {
        None
    }
}

impl Locate for ProbeSet {}

impl Locate for Slo {}

impl Locate for ringwarden_crds::ClusterProbeSet {
    fn locate(value: &Value) -> Option<String> {
        // Its spec flattens a ProbeSet's, and serde's path stops at a
        // flattened struct ("spec"): decode that part alone to name the
        // field.
        let spec = value.get("spec")?;
        let e = serde_path_to_error::deserialize::<_, ringwarden_crds::ProbeSetSpec>(spec).err()?;
        Some(with_path("spec", e))
    }
}

impl<K: Resource<DynamicType = ()>> Resource for Stored<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(dt: &()) -> std::borrow::Cow<'_, str> {
        K::kind(dt)
    }
    fn group(dt: &()) -> std::borrow::Cow<'_, str> {
        K::group(dt)
    }
    fn version(dt: &()) -> std::borrow::Cow<'_, str> {
        K::version(dt)
    }
    fn plural(dt: &()) -> std::borrow::Cow<'_, str> {
        K::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.meta
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.meta
    }
}

/// A typed stand-in carrying only metadata: what a deletion needs to take
/// an object out of a watch cache.
pub trait Placeholder: Sized {
    fn placeholder(meta: ObjectMeta) -> Self;
}

impl Placeholder for ProbeSet {
    fn placeholder(meta: ObjectMeta) -> Self {
        Self {
            metadata: meta,
            spec: serde_json::from_value(json!({"probes": []}))
                .expect("an empty probe list decodes"),
            status: None,
        }
    }
}

impl Placeholder for ringwarden_crds::ClusterProbeSet {
    fn placeholder(meta: ObjectMeta) -> Self {
        Self {
            metadata: meta,
            spec: serde_json::from_value(json!({"probes": []}))
                .expect("an empty probe list decodes"),
            status: None,
        }
    }
}

impl Placeholder for Slo {
    fn placeholder(meta: ObjectMeta) -> Self {
        Self {
            metadata: meta,
            spec: serde_json::from_value(json!({
                "probeSet": "", "probe": "", "indicator": {"errors": {}}, "target": 99.0
            }))
            .expect("a minimal SLO spec decodes"),
            status: None,
        }
    }
}

/// An object the operator cannot read, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    pub meta: ObjectMeta,
    pub error: String,
}

/// The objects of one kind that failed to decode, by `namespace/name`.
#[derive(Clone, Default)]
pub struct Undecodable(Arc<Mutex<BTreeMap<String, Problem>>>);

impl Undecodable {
    pub fn snapshot(&self) -> Vec<Problem> {
        self.lock().values().cloned().collect()
    }
    pub fn len(&self) -> usize {
        self.lock().len()
    }
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Problem>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The objects of each kind the controllers read that failed to decode:
/// what [`crate::reconcile::controller::mark_undecodable`] marks `Invalid`.
#[derive(Clone, Default)]
pub struct UndecodableKinds {
    pub probesets: Undecodable,
    pub cluster_probesets: Undecodable,
    pub slos: Undecodable,
}

fn key(meta: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

/// Turns a watch of [`Stored`] objects into a watch of typed ones. An
/// object that does not decode leaves the cache (a deletion, so a stale
/// good version does not linger) and is kept in `undecodable`; `on_change`
/// runs whenever that set changes.
pub fn decoded<K, S>(
    events: S,
    undecodable: Undecodable,
    on_change: impl Fn(&Undecodable) + Send + 'static,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send
where
    K: Resource<DynamicType = ()> + Placeholder + Clone + Debug + Send + 'static,
    S: Stream<Item = Result<watcher::Event<Stored<K>>, watcher::Error>> + Send,
{
    // Keys seen undecodable during a relist, to replace the set at InitDone.
    let mut relisted: Option<BTreeMap<String, Problem>> = None;
    events.filter_map(move |event| {
        let kind = K::kind(&());
        let note = |meta: &ObjectMeta, error: &str| {
            warn!(
                kind = %kind,
                object = %key(meta),
                error = %error,
                "cannot decode a stored object; it is left out until it is fixed"
            );
            Problem {
                meta: meta.clone(),
                error: error.to_owned(),
            }
        };
        let out = match event {
            Err(e) => Some(Err(e)),
            Ok(watcher::Event::Init) => {
                relisted = Some(BTreeMap::new());
                Some(Ok(watcher::Event::Init))
            }
            Ok(watcher::Event::InitApply(s)) => match s.decoded {
                Ok(k) => Some(Ok(watcher::Event::InitApply(k))),
                Err(e) => {
                    let problem = note(&s.meta, &e);
                    relisted
                        .get_or_insert_default()
                        .insert(key(&s.meta), problem);
                    None
                }
            },
            Ok(watcher::Event::InitDone) => {
                let now = relisted.take().unwrap_or_default();
                let changed = {
                    let mut set = undecodable.lock();
                    let changed = *set != now;
                    *set = now;
                    changed
                };
                if changed {
                    on_change(&undecodable);
                }
                Some(Ok(watcher::Event::InitDone))
            }
            Ok(watcher::Event::Apply(s)) => {
                let k = key(&s.meta);
                match s.decoded {
                    Ok(obj) => {
                        if undecodable.lock().remove(&k).is_some() {
                            on_change(&undecodable);
                        }
                        Some(Ok(watcher::Event::Apply(obj)))
                    }
                    Err(e) => {
                        let problem = note(&s.meta, &e);
                        let changed =
                            undecodable.lock().insert(k, problem.clone()) != Some(problem);
                        if changed {
                            on_change(&undecodable);
                        }
                        Some(Ok(watcher::Event::Delete(K::placeholder(s.meta))))
                    }
                }
            }
            Ok(watcher::Event::Delete(s)) => {
                if undecodable.lock().remove(&key(&s.meta)).is_some() {
                    on_change(&undecodable);
                }
                Some(Ok(watcher::Event::Delete(match s.decoded {
                    Ok(k) => k,
                    Err(_) => K::placeholder(s.meta),
                })))
            }
        };
        future::ready(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probeset(name: &str, priority: i64) -> Value {
        json!({
            "apiVersion": "ringwarden.dev/v1alpha1",
            "kind": "ProbeSet",
            "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"), "generation": 2},
            "spec": {"probes": [{"name": "sys", "kind": "syscalls", "priority": priority}]}
        })
    }

    #[test]
    fn an_out_of_range_field_is_named_with_its_path() {
        let s: Stored<ProbeSet> = serde_json::from_value(probeset("web", 3_000_000_000)).unwrap();
        let e = s.decoded.unwrap_err();
        assert!(e.starts_with("spec.probes[0].priority: "), "{e}");
        assert!(e.contains("3000000000"), "{e}");
        assert_eq!(s.meta.name.as_deref(), Some("web"));
        assert_eq!(s.meta.generation, Some(2));
    }

    #[test]
    fn a_field_of_a_cluster_probesets_flattened_spec_is_named_with_its_path() {
        use ringwarden_crds::ClusterProbeSet;
        let mut v = probeset("node", 3_000_000_000);
        v["kind"] = json!("ClusterProbeSet");
        v["metadata"].as_object_mut().unwrap().remove("namespace");
        v["spec"]["namespaceSelector"] = json!({"matchLabels": {"team": "a"}});
        let s: Stored<ClusterProbeSet> = serde_json::from_value(v.clone()).unwrap();
        let e = s.decoded.unwrap_err();
        assert!(e.starts_with("spec.probes[0].priority: "), "{e}");
        assert!(e.contains("3000000000"), "{e}");
        // An error in its own field keeps the path serde gives.
        v["spec"]["probes"][0]["priority"] = json!(1);
        v["spec"]["namespaceSelector"] = json!("everything");
        let s: Stored<ClusterProbeSet> = serde_json::from_value(v.clone()).unwrap();
        let e = s.decoded.unwrap_err();
        assert!(e.starts_with("spec"), "{e}");
        assert!(e.contains("everything"), "{e}");
        v["spec"]["namespaceSelector"] = json!({});
        let s: Stored<ClusterProbeSet> = serde_json::from_value(v).unwrap();
        assert_eq!(s.decoded.unwrap().spec.probe_set.probes[0].priority, 1);
    }

    #[test]
    fn a_readable_object_decodes_as_usual() {
        let s: Stored<ProbeSet> = serde_json::from_value(probeset("web", 5)).unwrap();
        assert_eq!(s.decoded.unwrap().spec.probes[0].priority, 5);
    }

    #[tokio::test]
    async fn an_undecodable_object_is_left_out_and_remembered_until_fixed() {
        let ev = |v: Value| -> Stored<ProbeSet> { serde_json::from_value(v).unwrap() };
        let events = futures::stream::iter(vec![
            Ok(watcher::Event::Init),
            Ok(watcher::Event::InitApply(ev(probeset("good", 1)))),
            Ok(watcher::Event::InitApply(ev(probeset("bad", -1 << 40)))),
            Ok(watcher::Event::InitDone),
            // Fixed by a new apply.
            Ok(watcher::Event::Apply(ev(probeset("bad", 3)))),
            // Broken again, then deleted.
            Ok(watcher::Event::Apply(ev(probeset("good", 1 << 40)))),
        ]);
        let undecodable = Undecodable::default();
        let changes = Arc::new(Mutex::new(Vec::new()));
        let seen = {
            let changes = Arc::clone(&changes);
            decoded::<ProbeSet, _>(events, undecodable.clone(), move |u| {
                changes.lock().unwrap().push(
                    u.snapshot()
                        .iter()
                        .map(|p| key(&p.meta))
                        .collect::<Vec<_>>(),
                )
            })
            .map(|e| match e.unwrap() {
                watcher::Event::Init => "init".to_owned(),
                watcher::Event::InitApply(k) => format!("init-apply {}", key(&k.metadata)),
                watcher::Event::InitDone => "init-done".to_owned(),
                watcher::Event::Apply(k) => format!("apply {}", key(&k.metadata)),
                watcher::Event::Delete(k) => format!("delete {}", key(&k.metadata)),
            })
            .collect::<Vec<_>>()
            .await
        };
        assert_eq!(
            seen,
            [
                "init",
                "init-apply shop/good",
                "init-done",
                "apply shop/bad",
                "delete shop/good"
            ]
        );
        assert_eq!(
            *changes.lock().unwrap(),
            [vec!["shop/bad"], vec![], vec!["shop/good"]]
        );
        let left = undecodable.snapshot();
        assert_eq!(left.len(), 1);
        assert!(
            left[0].error.starts_with("spec.probes[0].priority"),
            "{}",
            left[0].error
        );
    }
}
