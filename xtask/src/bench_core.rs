//! `cargo xtask bench-core`: runs the criterion mapping benchmark and prints each
//! function's median throughput and the ratio of the mapping to its baseline.

use std::path::Path;

use anyhow::Context as _;

const GROUP: &str = "map_1000_messages";
const BASELINE: &str = "baseline_serde_json_roundtrip";
const MAPPING: &str = "stipple_map";
const REFERENCE: &str = "stipple_map_reference";

pub(crate) fn run(root: &Path) -> anyhow::Result<()> {
    crate::cargo(
        root,
        &["bench", "-p", "stipple-core", "--bench", "mapping"],
        &[],
    )?;
    let baseline = median_ns(root, BASELINE)?;
    let mapping = median_ns(root, MAPPING)?;
    let reference = median_ns(root, REFERENCE)?;
    let per_sec = |ns: f64| 1000.0 / (ns / 1e9);
    println!(
        "baseline (serde_json parse + serialise): {:>10.0} messages/s (median)",
        per_sec(baseline)
    );
    println!(
        "stipple map_json (from stored text): {:>10.0} messages/s (median)",
        per_sec(mapping)
    );
    println!(
        "stipple reference (Message, validate, map, to_json): {:>10.0} messages/s (median)",
        per_sec(reference)
    );
    println!(
        "ratio: {:.2} of the baseline (goal: at least 0.80); the reference path {:.2}",
        baseline / mapping,
        baseline / reference
    );
    Ok(())
}

/// Criterion's median estimate, in nanoseconds per iteration (1000 messages).
fn median_ns(root: &Path, function: &str) -> anyhow::Result<f64> {
    let path = root
        .join("target/criterion")
        .join(GROUP)
        .join(function)
        .join("new/estimates.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let estimates: serde_json::Value = serde_json::from_str(&text)?;
    estimates["median"]["point_estimate"]
        .as_f64()
        .with_context(|| format!("no median in {}", path.display()))
}
