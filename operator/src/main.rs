use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    ringwarden_operator::run(ringwarden_operator::cli::Args::parse())
}
