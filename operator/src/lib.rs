//! ringwarden's operator: turns ProbeSets (and the SLOs on their probes)
//! into node-agent configuration.
//!
//! Two halves, each a pipeline of modules:
//!
//! - [`reconcile`]: fetch → assess → render → apply → status, from the
//!   ProbeSets, SLOs and node labels to the agent ConfigMap and DaemonSet
//!   and each ProbeSet's status;
//! - [`ingest`]: stream → auth → aggregate → publish, from the agents'
//!   reports to figures, SLO verdicts and status.
//!
//! Around them: [`lease`] elects the one replica that writes (API server);
//! [`wiring`] starts everything; [`metrics`] serves what it counted;
//! [`config`] and [`cli`] read the settings; [`ctl`] is the `ringwarden`
//! CLI, a client of the query service. With the `test-support` feature,
//! `sim` simulates agents (tests, the ingest benchmark) and `loopback`
//! serves them without a cluster.
#![forbid(unsafe_code)]

pub mod cause;
pub mod cli;
pub mod config;
pub mod ctl;
pub mod error;
pub mod ingest;
pub mod lease;
#[cfg(any(test, feature = "test-support"))]
pub mod loopback;
pub mod metrics;
pub mod owner;
pub mod reconcile;
#[cfg(any(test, feature = "test-support"))]
pub mod sim;
pub mod throttle;
pub mod wiring;

use std::process::ExitCode;

use cli::Args;
use ringwarden_logging::init_tracing;

/// Entry point of the `ringwarden-operator` binary.
pub fn run(args: Args) -> ExitCode {
    init_tracing(args.log_format, &args.log_filter());
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
