//! `cargo xtask e2e`: being written (issue 3).

use std::path::Path;

/// Options of `cargo xtask e2e`.
#[derive(Debug, clap::Args)]
pub(crate) struct E2eArgs {}

pub(crate) fn run(_root: &Path, _args: &E2eArgs) -> anyhow::Result<()> {
    anyhow::bail!("cargo xtask e2e is not written yet")
}
