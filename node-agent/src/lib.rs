//! ringwarden's node agent.
//!
//! - [`probes`] loads the eBPF programs and reads their maps (kernel IO).
//! - [`table`] and [`metrics`] turn snapshots into a table and Prometheus text.
//! - [`target`] finds and checks the binaries uprobes attach to, on the host
//!   or, for a ProbeSet, in its pods' containers ([`containers`]).
//! - [`drain`] says when each ring buffer is read.
//! - [`standalone`] wires them into the run loop of `ringwarden-agent standalone`.
//! - [`node`] is the DaemonSet mode: the operator's configuration, hot-reloaded.
//! - [`pods`] watches the pods on the node and resolves pod selectors to cgroups.
//! - [`uplink`] streams reports to the operator; [`report`] builds them.

pub mod btf;
pub mod cli;
pub mod clock;
pub mod containers;
pub mod drain;
pub mod metrics;
pub mod node;
pub mod pods;
pub mod probes;
pub mod report;
pub mod standalone;
pub mod table;
pub mod target;
pub mod uplink;

use std::process::ExitCode;

use cli::{Args, Command};
use ringwarden_logging::init_tracing;

/// Entry point of the `ringwarden-agent` binary.
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
    match args.command {
        Command::Standalone(a) => match runtime.block_on(standalone::run(a)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                e.exit_code()
            }
        },
        Command::Node(a) => {
            target::set_host_root(a.host_root.clone());
            match runtime.block_on(node::run(a)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
