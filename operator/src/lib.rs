//! ringwarden's operator: turns ProbeSets (and the SLOs on their probes)
//! into node-agent configuration.
//!
//! Reconcile is a pipeline; each step is a module:
//!
//! - fetch: the watch caches, as a [`world::World`] (no IO), filled from
//!   objects decoded one by one ([`stored`]) by watches whose health
//!   [`watches`] keeps;
//! - validate and plan: [`assess`] (pure);
//! - render: [`render`] the agent configuration, ConfigMap and DaemonSet,
//!   and [`status`] of each ProbeSet (pure);
//! - apply: [`agent`] writes the agent objects, [`controller`] the status
//!   and Events (API server);
//! - [`lease`] elects the one replica that writes (API server);
//! - agents: [`grpc`] serves their streams, authenticated by [`auth`]
//!   (API server); [`reports`] aggregates what they report (pure), kept in
//!   the [`hub`]; [`publish`] turns it into ProbeSet and SLO status
//!   ([`status`], [`slo_status`], pure) and persists SLO state (API server);
//! - [`ctl`] is the `ringwarden` CLI, a client of the query service;
//!   [`sim`] simulates agents for tests and the ingest benchmark, and
//!   [`loopback`] serves them without a cluster;
//! - [`wiring`] starts everything; [`metrics`] serves what it counted.
#![forbid(unsafe_code)]

pub mod agent;
pub mod assess;
pub mod auth;
pub mod cli;
pub mod config;
pub mod controller;
pub mod ctl;
pub mod error;
pub mod grpc;
pub mod hub;
pub mod lease;
pub mod loopback;
pub mod metrics;
pub mod publish;
pub mod render;
pub mod reports;
pub mod sim;
pub mod slo;
pub mod slo_status;
pub mod status;
pub mod stored;
pub mod watches;
pub mod wiring;
pub mod world;

use std::process::ExitCode;

use cli::Args;
use ringwarden_logging::init_tracing;

/// Entry point of the `ringwarden-operator` binary.
pub fn run(args: Args) -> ExitCode {
    init_tracing(args.log_format, &args.log);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(wiring::operate(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            match e {
                wiring::RunError::Args(_) | wiring::RunError::Config(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}
