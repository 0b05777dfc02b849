//! Reconcile errors. Each says which object and which step failed; the
//! controllers requeue with backoff and count them by [`Error::metric_label`].

use crate::{cause::explain, reconcile::render::RenderError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {kind} {name}: {}", explain(.source, "get", &resource(.kind)))]
    Read {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot apply {kind} {name}: {}", explain(.source, "create and patch", &resource(.kind)))]
    Apply {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "cannot write the status of ProbeSet {name}: {}",
        explain(.source, "patch", "probesets/status")
    )]
    Status {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Render(#[from] RenderError),
}

impl Error {
    /// A short, bounded label for `ringwarden_operator_reconcile_errors_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Read { .. } => "read",
            Self::Apply { source, .. } if is_conflict(source) => "apply_conflict",
            Self::Apply { .. } => "apply",
            Self::Status { source, .. } if is_conflict(source) => "status_conflict",
            Self::Status { .. } => "status",
            Self::Render(_) => "render",
        }
    }

    /// What the log throttle keys on: the API error's cause
    /// ([`crate::cause::ApiCause::label`]), or `render`.
    pub fn cause_label(&self) -> &'static str {
        match self {
            Self::Read { source, .. }
            | Self::Apply { source, .. }
            | Self::Status { source, .. } => crate::cause::api_cause(source).label(),
            Self::Render(_) => "render",
        }
    }
}

/// The RBAC resource of `kind`: `DaemonSet` → `daemonsets`.
fn resource(kind: &str) -> String {
    format!("{}s", kind.to_ascii_lowercase())
}

/// Whether the API server answered 409 Conflict.
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}
