//! The reconcile half: ProbeSets and SLOs in, agent objects and ProbeSet
//! status out, as a pipeline whose every step is a module.
//!
//! 1. **fetch**: watches ([`watches`] keeps their health) whose objects
//!    are decoded one by one ([`stored`]) into the caches a [`world::World`]
//!    is copied from (no IO of their own);
//! 2. **assess**: validate and plan each ProbeSet ([`assess`], with the
//!    SLOs on its probes from [`slo`]), and keep the agents' configuration
//!    within its size ([`world`]); share the platform's node budget among
//!    the ProbeSets of each node class ([`share`]); pure;
//! 3. **render**: the agent configuration, ConfigMap and DaemonSet
//!    ([`render`]) and each ProbeSet's status ([`status`]); pure;
//! 4. **apply**: [`agent`] writes the agent objects, [`controller`] each
//!    ProbeSet's status and Events (API server).

pub mod agent;
pub mod assess;
pub mod controller;
pub mod node_labels;
pub mod render;
pub mod share;
pub mod slo;
pub mod status;
pub mod stored;
pub mod watches;
pub mod world;
