//! ringwarden's Kubernetes API, group `ringwarden.dev`, version `v1alpha1`.
//!
//! - [`ProbeSet`]: which eBPF probes run on which nodes and for which processes.
//! - [`manifest`]: reading these objects from YAML files (standalone mode),
//!   with errors that name the field and the fix.
//!
//! No IO beyond what [`manifest::load_file`] reads.
#![forbid(unsafe_code)]

pub mod manifest;
pub mod probeset;

pub use probeset::{ProbeFilter, ProbeKind, ProbeSet, ProbeSetSpec, ProbeSetStatus, ProbeSpec};

/// API group of every ringwarden resource.
pub const GROUP: &str = "ringwarden.dev";
/// API version served by this crate.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as written in manifests.
pub const API_VERSION: &str = "ringwarden.dev/v1alpha1";
