//! What an API error means, in words that name the cause: the API server
//! could not be reached, a permission is missing, or the server answered
//! with some other status. No IO.
//!
//! A refused connection is never blamed on RBAC, and a 403 always says
//! which permission the operator lacks.

use std::fmt;

/// Why a call to the API server failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiCause {
    /// No answer: the connection, TLS or the request's transport failed.
    /// Holds the error and its sources.
    Unreachable(String),
    /// 403: the API server's message, which names the user and the verb.
    Forbidden(String),
    /// Any other status the API server answered with.
    Status {
        code: u16,
        reason: String,
        message: String,
    },
    /// Not a transport or API error (a body that did not decode, say).
    Other(String),
}

/// `e` and each of its sources, joined by `: `, without repeating a
/// source whose text its parent already contains.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// Classifies `e` by kube's error types.
pub fn api_cause(e: &kube::Error) -> ApiCause {
    match e {
        kube::Error::Api(s) if s.code == 403 => ApiCause::Forbidden(s.message.clone()),
        kube::Error::Api(s) => ApiCause::Status {
            code: s.code,
            reason: s.reason.clone(),
            message: s.message.clone(),
        },
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => {
            ApiCause::Unreachable(chain(e))
        }
        _ => ApiCause::Other(chain(e)),
    }
}

impl ApiCause {
    /// A short, bounded name of the cause: what a log throttle keys on.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Unreachable(_) => "unreachable",
            Self::Forbidden(_) => "forbidden",
            Self::Status { .. } => "status",
            Self::Other(_) => "other",
        }
    }

    /// The cause in words, for a call that needs `verb` on `resource`
    /// (`"get"`, `"leases"`): a 403 names that permission.
    pub fn explain(&self, verb: &str, resource: &str) -> String {
        match self {
            Self::Unreachable(e) => format!("cannot reach the API server ({e})"),
            Self::Forbidden(m) => format!(
                "forbidden: the operator's RBAC lacks {verb} on {resource} ({m}); the chart \
                 grants it: reinstall the chart or check its Role and ClusterRole"
            ),
            Self::Status {
                code,
                reason,
                message,
            } => {
                let reason = if reason.is_empty() {
                    String::new()
                } else {
                    format!(" {reason}")
                };
                format!("the API server answered {code}{reason}: {message}")
            }
            Self::Other(e) => e.clone(),
        }
    }
}

impl fmt::Display for ApiCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Forbidden(m) => write!(f, "forbidden: {m}"),
            other => f.write_str(&other.explain("", "")),
        }
    }
}

/// [`api_cause`] of `e` explained for a call that needs `verb` on
/// `resource`.
pub fn explain(e: &kube::Error, verb: &str, resource: &str) -> String {
    api_cause(e).explain(verb, resource)
}

#[cfg(test)]
mod tests {
    use kube::core::Status;

    use super::*;

    fn api(code: u16, reason: &str, message: &str) -> kube::Error {
        kube::Error::Api(Box::new(Status::failure(message, reason).with_code(code)))
    }

    fn refused() -> kube::Error {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        kube::Error::Service(Box::new(io))
    }

    #[test]
    fn a_refused_connection_is_unreachable_and_names_the_error_not_rbac() {
        let cause = api_cause(&refused());
        assert_eq!(cause.label(), "unreachable");
        let text = cause.explain("get", "leases");
        assert!(text.starts_with("cannot reach the API server ("), "{text}");
        assert!(text.contains("connection refused"), "{text}");
        for blame in ["RBAC", "permission", "forbidden", "needs get"] {
            assert!(!text.contains(blame), "{text}");
        }
    }

    #[test]
    fn a_403_names_the_missing_permission() {
        let e = api(
            403,
            "Forbidden",
            "leases.coordination.k8s.io \"x\" is forbidden: User \"system:serviceaccount:a:b\" \
             cannot update resource \"leases\"",
        );
        let cause = api_cause(&e);
        assert_eq!(cause.label(), "forbidden");
        let text = cause.explain("update", "leases");
        assert!(
            text.starts_with("forbidden: the operator's RBAC lacks update on leases ("),
            "{text}"
        );
        assert!(text.contains("cannot update resource"), "{text}");
    }

    #[test]
    fn other_statuses_say_their_code() {
        let text = explain(
            &api(500, "InternalError", "etcdserver: request timed out"),
            "get",
            "leases",
        );
        assert_eq!(
            text,
            "the API server answered 500 InternalError: etcdserver: request timed out"
        );
        assert_eq!(
            api_cause(&api(404, "NotFound", "gone")),
            ApiCause::Status {
                code: 404,
                reason: "NotFound".into(),
                message: "gone".into()
            }
        );
        assert!(!text.contains("RBAC"));
    }

    #[test]
    fn a_body_that_does_not_decode_is_neither_transport_nor_status() {
        let bad = serde_json::from_str::<u8>("x").unwrap_err();
        let cause = api_cause(&kube::Error::SerdeError(bad));
        assert_eq!(cause.label(), "other");
        assert!(
            cause
                .explain("get", "leases")
                .starts_with("Error deserializing response")
        );
    }

    #[test]
    fn the_source_chain_is_named_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("client error (Connect)")]
        struct Outer(#[source] std::io::Error);
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "tcp connect error");
        let e = kube::Error::Service(Box::new(Outer(io)));
        assert_eq!(
            api_cause(&e),
            ApiCause::Unreachable("ServiceError: client error (Connect): tcp connect error".into())
        );
    }
}
