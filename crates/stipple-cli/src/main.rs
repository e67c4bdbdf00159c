//! The `stipple` binary: parses the command line and hands over to a command module.

use std::process::ExitCode;

use clap::Parser;

mod cli;
mod commands;
mod config;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match commands::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
