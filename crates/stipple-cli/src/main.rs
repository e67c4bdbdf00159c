//! The `stipple` binary: parses the command line and hands over to a command module.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc: the service spends a large share of its time allocating and freeing
/// (JSON parsing, per-event buffers); see `cargo xtask bench` for the figures.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `println!` that hands back the write's error instead of panicking: a reader that
/// went away (`stipple rejected list | head`) ends the command quietly (see `main`).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

/// `eprintln!` that does not panic: a diagnostic that cannot be written is dropped.
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}

mod cli;
mod commands;
mod config;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match commands::run(cli) {
        Ok(code) => code,
        // The reader of the output stopped reading, as `head` does: what it wanted, it has.
        Err(err) if commands::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            note!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
