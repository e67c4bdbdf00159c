//! `cargo xtask bench`: being written (issue 3).

use std::path::Path;

/// Options of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {}

pub(crate) fn run(_root: &Path, _args: &BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("cargo xtask bench is not written yet")
}
