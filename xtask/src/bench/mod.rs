//! `cargo xtask bench`: load `stipple serve` (release build) on 127.0.0.1 and compare each
//! figure with a baseline measured in the same run.
//!
//! 1. Ingress: `/v1/batch` (100 track messages a request) and `/v1/track` against a bare
//!    axum server that reads the body and answers 200 without parsing or storing; twice,
//!    with delivery paused (the mock answers 401: ingress only) and with delivery running.
//!    `/v1/track` runs with `--connections` (32) and with `--track-connections` (256): with
//!    few clients each waits for an fsync per request, which caps the rate near
//!    connections / fsync time however little CPU a request costs; with many, fsyncs are
//!    shared and CPU decides. The goal is judged on the latter.
//! 2. Delivery: events queued while the mock answers 401, then serve restarted against a
//!    healthy mock and timed until the mock has accepted them all; against a bare reqwest
//!    client posting the same Pointillist events to the same mock.
//! 3. Memory: peak RSS (`VmHWM`) of serve after one million events were queued, and the
//!    store's size on disk; then a restart with that queue.
//! 4. Instructions (only with `--only instructions`): the user-space instructions serve
//!    and the bare handler execute for the same `/v1/track` and `/v1/batch` requests,
//!    counted by valgrind's callgrind (see `instructions.rs`).
//!
//! Each measured run (and each delivery drain) starts after `sync`: what earlier runs
//! wrote would otherwise be written back during it, and the store's fsyncs wait behind
//! that while the baselines, which write nothing, do not.
//!
//! Rounds alternate stipple and baseline so that both see the same noise; each figure is
//! the median over the rounds and the ratio the median of the per-round ratios. Nothing
//! is asserted: goals are reported as met or not. The load generator runs in this process
//! and shares the cores with the server it loads; so does the baseline's.
//!
//! `cargo xtask` builds xtask in debug; a debug load generator would be the bottleneck,
//! so the command builds xtask in release and runs that build (`--built`).

mod bare;
mod delivery;
mod ingress;
mod instructions;
mod load;
mod memory;
mod procs;
mod report;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use self::procs::Server;

/// Messages per `/v1/batch` request.
const BATCH_SIZE: usize = 100;
/// How long `GET /mock/stats` is polled between looks while delivery drains.
const POLL: Duration = Duration::from_millis(20);

/// Options of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// Parts to run (default all but track, which ingress holds, and instructions):
    /// ingress, track, delivery, memory, instructions; repeat or separate with commas.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Part>,
    /// Length of each measured ingress run, stipple's and the baseline's alike, in seconds.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Most messages posted to /v1/batch in one ingress run (100 a request), whatever
    /// `--seconds` says.
    #[arg(long, default_value_t = 20_000_000)]
    events: u64,
    /// Most requests posted to /v1/track in one ingress run.
    #[arg(long, default_value_t = 2_000_000)]
    track_requests: u64,
    /// Events queued, then delivered, per round of the delivery part.
    #[arg(long, default_value_t = 100_000)]
    delivery_events: u64,
    /// Events queued for the memory part.
    #[arg(long, default_value_t = 1_000_000)]
    memory_events: u64,
    /// Rounds of each measurement (the memory part runs once).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Concurrent keep-alive connections of the load generator (each with one request
    /// in flight).
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Connections of the second /v1/track measurement, the one the goal is judged on:
    /// many clients sending one event each, so that fsyncs are shared.
    #[arg(long, default_value_t = 256)]
    track_connections: usize,
    /// pointillist.concurrency of serve, and the baseline client's concurrency.
    #[arg(long, default_value_t = 32)]
    delivery_concurrency: usize,
    /// Longest a fill or a drain may take, in seconds (the memory fill gets five times
    /// this); one that takes longer is cut short and reported as such.
    #[arg(long, default_value_t = 120)]
    max_seconds: u64,
    /// store.synchronous of serve: `full` (the default, every answer fsynced) or `normal`
    /// (to see what fsync waits cost; figures are then not durable ones).
    #[arg(long, default_value = "full", value_parser = ["full", "normal"])]
    synchronous: String,
    /// Keep the temporary directory (stores, configs, logs) for a look afterwards.
    #[arg(long)]
    keep: bool,
    /// Set when already running the release build (internal).
    #[arg(long, hide = true)]
    built: bool,
    /// Run the bare baseline server (internal).
    #[arg(long, hide = true)]
    bare_server: bool,
}

/// A part of the bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    /// `/v1/batch` and `/v1/track`, delivery paused and running.
    Ingress,
    /// The `/v1/track` goal alone (`--track-connections`, delivery paused): part of
    /// `ingress`, for quick comparisons of two builds.
    Track,
    /// The delivery rate to the mock against a bare client.
    Delivery,
    /// Peak memory and disk with a million events queued.
    Memory,
    /// Instructions a request, counted by valgrind's callgrind for Stipple and the bare
    /// handler: they vary far less than rates, for comparing builds on a noisy machine
    /// (needs valgrind; run it on an otherwise idle machine).
    Instructions,
}

pub(crate) fn run(root: &Path, args: &BenchArgs) -> anyhow::Result<()> {
    if args.bare_server {
        return bare::serve();
    }
    let target_dir =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    if !args.built {
        crate::cargo(
            root,
            &["build", "--release", "-p", "stipple-cli", "-p", "xtask"],
            &[],
        )?;
        if cfg!(debug_assertions) {
            let exe = target_dir.join("release/xtask");
            let mut forwarded: Vec<OsString> = std::env::args_os().skip(1).collect();
            forwarded.push("--built".into());
            let status = std::process::Command::new(&exe)
                .args(&forwarded)
                .current_dir(root)
                .status()
                .with_context(|| format!("cannot run {}", exe.display()))?;
            if !status.success() {
                bail!("the bench failed ({status})");
            }
            return Ok(());
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(bench(&target_dir, args))
}

/// What every part needs.
#[derive(Debug)]
struct Bench<'a> {
    args: &'a BenchArgs,
    stipple: PathBuf,
    xtask: PathBuf,
    dir: PathBuf,
    http: reqwest::Client,
    max_time: Duration,
}

async fn bench(target_dir: &Path, args: &BenchArgs) -> anyhow::Result<()> {
    let stipple = target_dir.join("release/stipple");
    if !stipple.exists() {
        bail!(
            "{} is missing: run `cargo build --release -p stipple-cli`",
            stipple.display()
        );
    }
    let out_dir = target_dir.join("bench");
    std::fs::create_dir_all(&out_dir)?;
    let temp = tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(&out_dir)?;
    let bench = Bench {
        args,
        stipple,
        xtask: std::env::current_exe()?,
        dir: temp.path().to_owned(),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?,
        max_time: Duration::from_secs(args.max_seconds.max(1)),
    };
    let started = Instant::now();
    let load_average = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!(
        "bench: {} cores, load average {}; temp dir {}",
        std::thread::available_parallelism().map_or(0, usize::from),
        load_average
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        bench.dir.display()
    );
    eprintln!(
        "bench: the load generator runs in this process and shares the cores with the server it loads"
    );
    let wanted = |part| args.only.is_empty() || args.only.contains(&part);
    let mut rows = Vec::new();
    if wanted(Part::Ingress) {
        rows.extend(
            bench
                .ingress(false)
                .await
                .context("the ingress part failed")?,
        );
    } else if args.only.contains(&Part::Track) {
        rows.extend(bench.ingress(true).await.context("the track part failed")?);
    }
    if wanted(Part::Delivery) {
        rows.extend(bench.delivery().await.context("the delivery part failed")?);
    }
    if wanted(Part::Memory) {
        rows.extend(bench.memory().await.context("the memory part failed")?);
    }
    if args.only.contains(&Part::Instructions) {
        rows.extend(
            bench
                .instructions()
                .await
                .context("the instructions part failed")?,
        );
    }

    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    println!();
    println!(
        "stipple bench: {cores} cores shared by the load generator, the server and its baseline; \
         figures are medians of {} rounds, ratios medians of per-round ratios",
        args.rounds
    );
    print!("{}", report::table(&rows));
    let json_path = out_dir.join("report.json");
    let context = serde_json::json!({
        "command": std::env::args().skip(1).filter(|a| a != "--built").collect::<Vec<_>>().join(" "),
        "cores": cores,
        "load_average_at_start": load_average.trim(),
        "rounds": args.rounds,
        "connections": args.connections,
        "track_connections": args.track_connections,
        "delivery_concurrency": args.delivery_concurrency,
        "synchronous": args.synchronous,
        "seconds": started.elapsed().as_secs_f64(),
        "notes": [
            "the load generator shares the cores with the server it loads",
            "ingress 'delivery paused': the mock answers 401, so delivery pauses and only ingress and the store work",
            "ingress 'delivery running': the mock accepts, so delivery competes for the cores and the store writer as in production",
            format!("store.synchronous = {}", args.synchronous),
        ],
    });
    report::write_json(&json_path, &rows, context)?;
    println!("written to {}", json_path.display());
    if args.keep {
        eprintln!("bench: kept {}", temp.keep().display());
    }
    Ok(())
}

impl Bench<'_> {
    /// Removes a part's directory (its store can be gigabytes) unless asked to keep it.
    fn clean(&self, dir: &Path) {
        if self.args.keep {
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(dir) {
            eprintln!("bench: cannot remove {}: {e}", dir.display());
        }
    }

    fn part_dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// A part's directory, a mock Pointillist (answering 401 when `paused`, which pauses
    /// delivery) and a `stipple serve` configuration delivering to it.
    async fn part_with_mock(
        &self,
        name: &str,
        paused: bool,
    ) -> anyhow::Result<(PathBuf, Server, PathBuf)> {
        let dir = self.part_dir(name)?;
        let mock = procs::start_mock(&self.stipple, &dir, paused).await?;
        let config = procs::write_config(
            &dir,
            &mock.url,
            self.args.delivery_concurrency,
            &self.args.synchronous,
        )?;
        Ok((dir, mock, config))
    }

    async fn start_bare(&self) -> anyhow::Result<Server> {
        let log = self.dir.join("bare.log");
        Server::start(
            "bare server",
            &self.xtask,
            &["bench", "--built", "--bare-server"],
            &log,
            bare::LISTENING,
        )
        .await
    }

    async fn mock_stats(&self, mock: &Server) -> anyhow::Result<MockStats> {
        let stats: serde_json::Value = self
            .http
            .get(format!("{}/mock/stats", mock.url))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let field = |name: &str| stats[name].as_u64().unwrap_or(0);
        Ok(MockStats {
            accepted: field("accepted"),
            rejected: field("rejected"),
            errors: field("errors"),
            throttled: field("throttled"),
        })
    }

    async fn set_faults(&self, mock: &Server, faults: &'static str) -> anyhow::Result<()> {
        self.http
            .put(format!("{}/mock/faults", mock.url))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(faults)
            .send()
            .await?
            .error_for_status()
            .context("the mock refused the faults")?;
        Ok(())
    }
}

/// The counters of `GET /mock/stats` the bench reads.
#[derive(Debug, Clone, Copy)]
struct MockStats {
    accepted: u64,
    rejected: u64,
    errors: u64,
    throttled: u64,
}

impl MockStats {
    /// Requests the mock did not accept for a reason other than the 401 fault.
    fn refused(&self) -> u64 {
        self.rejected + self.errors + self.throttled
    }
}
