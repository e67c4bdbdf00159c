//! Project automation, run as `cargo xtask <command>` (an alias in `.cargo/config.toml`).
//!
//! - `ci`: formatting, clippy with warnings denied, docs without warnings, every test,
//!   the end-to-end suite.
//! - `e2e`: the end-to-end suite alone; `bench`: the load generator.
//! - `bench-core`: the mapping benchmark, printing the ratio to its serde_json baseline.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

mod bench;
mod bench_core;
mod e2e;

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Stipple's build and test automation")]
struct Xtask {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Everything CI checks: fmt --check, clippy -D warnings, rustdoc without warnings,
    /// every test of the workspace, then the end-to-end suite.
    Ci {
        /// Skip the end-to-end suite (a quicker local run).
        #[arg(long)]
        no_e2e: bool,
    },
    /// The mapping benchmark (criterion), with the ratio to its serde_json baseline.
    BenchCore,
    /// End-to-end tests: the release binary, the mock, Segment's official clients.
    E2e(e2e::E2eArgs),
    /// Load generator against `stipple serve`, with a bare-handler baseline.
    Bench(bench::BenchArgs),
}

fn main() -> anyhow::Result<()> {
    let xtask = Xtask::parse();
    let root = project_root();
    match xtask.command {
        Task::Ci { no_e2e } => ci(&root, no_e2e),
        Task::BenchCore => bench_core::run(&root),
        Task::E2e(args) => e2e::run(&root, &args),
        Task::Bench(args) => bench::run(&root, &args),
    }
}

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn ci(root: &Path, no_e2e: bool) -> anyhow::Result<()> {
    cargo(root, &["fmt", "--all", "--", "--check"], &[])
        .context("formatting differs: run `cargo fmt --all`")?;
    cargo(
        root,
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    cargo(
        root,
        &["doc", "--workspace", "--no-deps"],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )?;
    cargo(root, &["test", "--workspace", "--all-targets"], &[])?;
    cargo(root, &["test", "--workspace", "--doc"], &[])?;
    if no_e2e {
        eprintln!("xtask ci: end-to-end suite skipped (--no-e2e)");
    } else {
        cargo(
            root,
            &["run", "--quiet", "--package", "xtask", "--", "e2e"],
            &[],
        )?;
    }
    eprintln!("xtask ci: all checks passed");
    Ok(())
}

/// The variables `cargo run` sets for the one package it runs.
fn is_package_variable(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || matches!(
            name,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_MANIFEST_LINKS"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
        )
}

/// Runs `cargo ARGS` in the project root, failing when it fails.
pub(crate) fn cargo(root: &Path, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("$ cargo {}", args.join(" "));
    let mut command = Command::new(cargo);
    // `cargo run` (the `cargo xtask` alias) gives xtask its own package's variables;
    // passed on, they change the fingerprint of every build script that reads them
    // (ring's reads CARGO_MANIFEST_DIR) and the same build would be done twice.
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(is_package_variable) {
            command.env_remove(&name);
        }
    }
    let status = command
        .args(args)
        .envs(env.iter().copied())
        .current_dir(root)
        .status()
        .with_context(|| format!("cannot run cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}
