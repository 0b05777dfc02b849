use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    ringwarden_operator::ctl::run(ringwarden_operator::ctl::Args::parse())
}
