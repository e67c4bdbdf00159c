//! `cargo xtask e2e`: the real binary end to end.
//!
//! Builds `stipple`, starts `stipple mock` and `stipple serve` (free ports on 127.0.0.1,
//! a configuration and a store in a run directory under `target/e2e/`), then runs its
//! parts in order, each recording checks:
//!
//! | part | what it checks |
//! |---|---|
//! | `http` | every Tracking API endpoint over plain HTTP, auth, text/plain, gzip, bad items, refusals, CORS; then each delivered event against the mapping table |
//! | `python` | segment-analytics-python (a cached venv) |
//! | `node` | @segment/analytics-node (tests/e2e/node_modules) |
//! | `browser` | @segment/analytics-next in headless Chromium via playwright-core |
//! | `crash` | `kill -9` mid-load and a restart: nothing answered 200 is lost |
//! | `faults` | 5xx, reset connections, 429 and 401 from Pointillist: events wait, nothing dead-lettered, /readyz |
//! | `sigterm` | SIGTERM with deliveries in flight: exit 0 within a bound; dedup survives the restart |
//!
//! Every child is killed at the end, whatever happens; every wait is bounded. It prints
//! a summary of every check and fails if any failed. The run directory (logs, store,
//! client reports) is kept when something failed, or with `--keep`. Installs are cached:
//! the Python venv in `.xtask/e2e/venv`, the npm packages in `tests/e2e/node_modules`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, bail};

mod check;
mod clients;
mod crash;
mod expect;
mod faults;
mod harness;
mod raw_http;

use check::Checks;
use harness::Harness;
/// Reading a metric from Prometheus text, which the bench does too.
pub(crate) use harness::metric_value;

/// The parts of the suite, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Part {
    /// The Tracking API over raw HTTP, and the mapping of what is delivered.
    Http,
    /// segment-analytics-python.
    Python,
    /// @segment/analytics-node.
    Node,
    /// @segment/analytics-next in headless Chromium.
    Browser,
    /// kill -9 and restart under load.
    Crash,
    /// 5xx, reset connections, 429 and 401 from Pointillist.
    Faults,
    /// SIGTERM.
    Sigterm,
}

impl Part {
    const ALL: [Part; 7] = [
        Part::Http,
        Part::Python,
        Part::Node,
        Part::Browser,
        Part::Crash,
        Part::Faults,
        Part::Sigterm,
    ];

    fn name(self) -> &'static str {
        match self {
            Part::Http => "http",
            Part::Python => "python",
            Part::Node => "node",
            Part::Browser => "browser",
            Part::Crash => "crash",
            Part::Faults => "faults",
            Part::Sigterm => "sigterm",
        }
    }
}

/// Options of `cargo xtask e2e`.
#[derive(Debug, clap::Args)]
pub(crate) struct E2eArgs {
    /// Test a debug build instead of the release build (quicker to build).
    #[arg(long)]
    debug: bool,
    /// Test this binary instead of building one.
    #[arg(long, value_name = "PATH", conflicts_with = "debug")]
    bin: Option<PathBuf>,
    /// Run only these parts (comma-separated), for debugging.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "PART")]
    only: Vec<Part>,
    /// Keep the run directory (logs, store, client reports) even when everything passed.
    #[arg(long)]
    keep: bool,
    /// Chromium for the browser part.
    #[arg(
        long,
        env = "E2E_CHROMIUM",
        default_value = "/usr/bin/chromium",
        value_name = "PATH"
    )]
    chromium: PathBuf,
    /// In the sigterm part, do not hold a connection with an unfinished request open
    /// through SIGTERM (by default one is: a stalled client must not keep the service
    /// from stopping).
    #[arg(long)]
    no_stalled_client: bool,
    /// Events sent in the crash part.
    #[arg(long, default_value_t = 2000, value_name = "N")]
    crash_events: usize,
}

/// The `stipple` binary: built here unless `--bin` names one.
fn binary(root: &Path, args: &E2eArgs) -> anyhow::Result<PathBuf> {
    if let Some(bin) = &args.bin {
        if !bin.exists() {
            bail!("--bin {} does not exist", bin.display());
        }
        return Ok(bin.clone());
    }
    let profile = if args.debug { "debug" } else { "release" };
    let mut cargo_args = vec!["build", "-p", "stipple-cli"];
    if !args.debug {
        cargo_args.push("--release");
    }
    let started = Instant::now();
    crate::cargo(root, &cargo_args, &[])?;
    eprintln!(
        "built the {profile} binary in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let target = if target.is_absolute() {
        target
    } else {
        root.join(target)
    };
    let bin = target.join(profile).join("stipple");
    if !bin.exists() {
        bail!("the build did not produce {}", bin.display());
    }
    Ok(bin)
}

pub(crate) fn run(root: &Path, args: &E2eArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let parts: Vec<Part> = if args.only.is_empty() {
        Part::ALL.to_vec()
    } else {
        args.only.clone()
    };
    let bin = binary(root, args)?;
    let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S");
    let dir = root
        .join("target")
        .join("e2e")
        .join(format!("run-{stamp}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    eprintln!("e2e: {} in {}", bin.display(), dir.display());

    let mut checks = Checks::default();
    let outcome = run_parts(root, args, &bin, &dir, &parts, &mut checks);
    checks.end_part();
    if let Err(e) = &outcome {
        checks.fail("harness", format!("{e:#}"));
    }
    eprint!("{}", checks.summary());
    eprintln!("e2e took {:.0}s", started.elapsed().as_secs_f64());
    if checks.failed() > 0 {
        eprintln!("logs, store and client reports kept in {}", dir.display());
        bail!("{} e2e check(s) failed", checks.failed());
    }
    if args.keep {
        eprintln!("run directory kept: {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

/// Starts the system and runs each part; the harness (and so every child) is dropped
/// on the way out, error or not.
fn run_parts(
    root: &Path,
    args: &E2eArgs,
    bin: &Path,
    dir: &Path,
    parts: &[Part],
    checks: &mut Checks,
) -> anyhow::Result<()> {
    checks.start_part("start");
    let mut h = Harness::start(bin, dir)?;
    checks.pass(
        "mock and serve started",
        format!("mock {}, serve {}", h.mock_url, h.serve_url),
    );
    for part in Part::ALL.into_iter().filter(|p| parts.contains(p)) {
        checks.start_part(part.name());
        let result = match part {
            Part::Http => raw_http::run(&mut h, checks),
            Part::Python => clients::python(root, &mut h, checks),
            Part::Node => clients::node(root, &mut h, checks),
            Part::Browser => clients::browser(root, &args.chromium, &mut h, checks),
            Part::Crash => crash::crash(&mut h, checks, args.crash_events),
            Part::Faults => faults::run(&mut h, checks),
            Part::Sigterm => crash::sigterm(&mut h, checks, !args.no_stalled_client),
        };
        if let Err(e) = result {
            let log = h
                .serve_log()
                .map(|p| harness::tail(p, 15))
                .unwrap_or_default();
            checks.fail(
                format!("{}: could not finish", part.name()),
                format!("{e:#}\n  {log}"),
            );
            // The next part starts from a clean state, or says why it cannot.
            let _ = h.clear_faults();
        }
    }
    checks.end_part();
    Ok(())
}
