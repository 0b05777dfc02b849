use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    ringwarden_node_agent::run(ringwarden_node_agent::cli::Args::parse())
}
