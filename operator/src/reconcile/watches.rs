//! The health of the operator's watches: whether each cache is filled,
//! the last error of each (what `/readyz` answers with), warnings that do
//! not flood the log while the API server keeps failing, and the error
//! counter. No IO.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use kube::runtime::watcher;
use prometheus::IntCounterVec;
use tracing::warn;

/// Longest a failing watch goes without a warning in the log.
pub const WARN_EVERY: Duration = Duration::from_secs(60);

#[derive(Default)]
struct State {
    filled: bool,
    /// The last error, with what to do about it; cleared by the next event.
    error: Option<String>,
    last_warned: Option<Instant>,
    /// Errors since the last warning.
    unwarned: u64,
}

/// The state of every watch, shared by the watch streams and `/readyz`.
#[derive(Clone)]
pub struct Watches {
    state: Arc<Mutex<BTreeMap<&'static str, State>>>,
    errors: IntCounterVec,
}

impl Watches {
    /// Watches of `resources` (`probesets`, `nodes`, `slos`), counting
    /// errors in `errors` (labelled by resource).
    pub fn new(resources: &[&'static str], errors: IntCounterVec) -> Self {
        let state = resources.iter().map(|r| (*r, State::default())).collect();
        Self {
            state: Arc::new(Mutex::new(state)),
            errors,
        }
    }

    fn with<T>(&self, resource: &'static str, f: impl FnOnce(&mut State) -> T) -> T {
        let mut all = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        f(all.entry(resource).or_default())
    }

    /// A watch of every object of `api`, retried with backoff, whose
    /// events and errors this records as `resource`.
    pub fn watch<K>(
        &self,
        resource: &'static str,
        api: kube::Api<K>,
    ) -> impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + use<K>
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    {
        use futures::StreamExt;
        use kube::runtime::WatchStreamExt;
        let watches = self.clone();
        watcher(api, watcher::Config::default())
            .default_backoff()
            .inspect(move |e| watches.saw(resource, e))
    }

    /// Records one event or error of the watch of `resource`.
    pub fn saw<K>(
        &self,
        resource: &'static str,
        event: &Result<watcher::Event<K>, watcher::Error>,
    ) {
        self.saw_at(resource, event, Instant::now());
    }

    fn saw_at<K>(
        &self,
        resource: &'static str,
        event: &Result<watcher::Event<K>, watcher::Error>,
        now: Instant,
    ) {
        match event {
            Ok(e) => self.with(resource, |s| {
                s.error = None;
                if matches!(e, watcher::Event::InitDone) {
                    s.filled = true;
                }
            }),
            Err(e) => {
                self.errors.with_label_values(&[resource]).inc();
                let why = explain(resource, e);
                let warn_now = self.with(resource, |s| {
                    s.error = Some(why.clone());
                    s.unwarned += 1;
                    let due = s
                        .last_warned
                        .is_none_or(|t| now.duration_since(t) >= WARN_EVERY);
                    if due {
                        s.last_warned = Some(now);
                        Some(std::mem::take(&mut s.unwarned))
                    } else {
                        None
                    }
                });
                if let Some(errors) = warn_now {
                    warn!(resource, errors, error = %why, "watch failing; retrying with backoff");
                }
            }
        }
    }

    /// `Ok` when every cache is filled; otherwise one line per watch that
    /// is not, saying why.
    pub fn ready(&self) -> Result<(), String> {
        let all = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let waiting: Vec<String> = all
            .iter()
            .filter(|(_, s)| !s.filled)
            .map(|(r, s)| match &s.error {
                Some(e) => format!("{r}: {e}"),
                None => format!("{r}: the initial list is still loading"),
            })
            .collect();
        if waiting.is_empty() {
            Ok(())
        } else {
            Err(waiting.join("\n"))
        }
    }

    /// The last error of each watch that has one, filled or not.
    pub fn errors(&self) -> Vec<(&'static str, String)> {
        let all = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        all.iter()
            .filter_map(|(r, s)| s.error.clone().map(|e| (*r, e)))
            .collect()
    }
}

/// What went wrong, and what to do about it.
fn explain(resource: &str, e: &watcher::Error) -> String {
    let api = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some((s.code, s.message.clone())),
        watcher::Error::WatchError(s) => Some((s.code, s.message.clone())),
        _ => None,
    };
    let crd = matches!(resource, "probesets" | "clusterprobesets" | "slos");
    match api {
        Some((404, _)) if crd => format!(
            "the API server does not serve {resource}.ringwarden.dev: install the CRDs \
             (kubectl apply -f crds/, or helm install with crds.install=true)"
        ),
        Some((403, m)) => format!(
            "forbidden ({m}): the operator's ClusterRole must allow list and watch on \
             {resource}; reinstall the chart or check its RBAC"
        ),
        Some((code, m)) => format!("the API server answered {code}: {m}"),
        None => match e {
            watcher::Error::InitialListFailed(k)
            | watcher::Error::WatchStartFailed(k)
            | watcher::Error::WatchFailed(k) => {
                crate::cause::explain(k, "list and watch", resource)
            }
            _ => format!("{e}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use kube::core::Status;
    use prometheus::Opts;

    use super::*;

    fn watches() -> Watches {
        let errors = IntCounterVec::new(Opts::new("e", "e"), &["resource"]).unwrap();
        Watches::new(&["probesets", "slos"], errors)
    }

    fn not_found() -> Result<watcher::Event<()>, watcher::Error> {
        let s = Status::failure(
            "the server could not find the requested resource",
            "NotFound",
        )
        .with_code(404);
        Err(watcher::Error::InitialListFailed(kube::Error::Api(
            Box::new(s),
        )))
    }

    #[test]
    fn readiness_names_each_watch_not_filled_and_why() {
        let w = watches();
        w.saw("probesets", &not_found());
        let why = w.ready().unwrap_err();
        assert!(
            why.contains("probesets: the API server does not serve probesets.ringwarden.dev: install the CRDs"),
            "{why}"
        );
        assert!(
            why.contains("slos: the initial list is still loading"),
            "{why}"
        );
        w.saw::<()>("probesets", &Ok(watcher::Event::InitDone));
        w.saw::<()>("slos", &Ok(watcher::Event::InitDone));
        assert_eq!(w.ready(), Ok(()));
    }

    #[test]
    fn every_error_is_counted_and_a_later_event_clears_it() {
        let w = watches();
        let t = Instant::now();
        for i in 0..5 {
            w.saw_at("slos", &not_found(), t + Duration::from_secs(i));
        }
        assert_eq!(w.errors.with_label_values(&["slos"]).get(), 5);
        assert_eq!(w.errors().len(), 1);
        // One warning for the burst, the next once WARN_EVERY has passed.
        let unwarned = w.with("slos", |s| s.unwarned);
        assert_eq!(unwarned, 4);
        w.saw_at("slos", &not_found(), t + WARN_EVERY);
        assert_eq!(w.with("slos", |s| s.unwarned), 0);
        w.saw::<()>("slos", &Ok(watcher::Event::Init));
        assert!(w.errors().is_empty());
    }
}
