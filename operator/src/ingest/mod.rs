//! The ingest half: what agents report, turned into figures, SLO verdicts
//! and status, as a pipeline whose every step is a module.
//!
//! 1. **stream**: [`grpc`] serves the agents' bidirectional streams and
//!    the query service, over TLS ([`tls`]) with a certificate the
//!    operator keeps itself or is given ([`pki`]); [`frames`] reads agents'
//!    messages without a buffer kept per stream;
//! 2. **auth**: [`auth`] checks each agent's token (TokenReview, API
//!    server) and the node it may speak for;
//!    [`decode`] checks and bounds each message into plain data (pure);
//!    [`handed`] keeps each report to the probes and thresholds its node
//!    was handed (pure);
//! 3. **aggregate**: [`reports`] counts what agents report, exactly and
//!    without double counting (pure), kept in the [`hub`]; what it keeps
//!    per node is [`packed`];
//! 4. **publish**: [`publish`] hands ProbeSet figures to the controller,
//!    writes SLO status ([`slo_status`], pure) and persists SLO state (API
//!    server).

pub mod access;
pub mod auth;
pub mod decode;
pub mod frames;
pub mod grpc;
pub mod handed;
pub mod hub;
pub mod packed;
pub mod pki;
pub mod publish;
pub mod reports;
pub mod slo_status;
pub mod tls;
