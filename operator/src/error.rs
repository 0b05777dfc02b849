//! Reconcile errors. Each says which object and which step failed; the
//! controllers requeue with backoff and count them by [`Error::metric_label`].

use crate::render::RenderError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {kind} {name}: {source}")]
    Read {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot apply {kind} {name}: {source}")]
    Apply {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot write the status of ProbeSet {name}: {source}")]
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
}

/// Whether the API server answered 409 Conflict.
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}
