//! The instructions part (`--only instructions`): `stipple serve` (delivery paused) and the
//! bare baseline each run under valgrind's callgrind, and the user-space instructions
//! they execute for the same requests are counted. Unlike rates and CPU time, the count
//! varies little between runs (0.2% in three runs on an idle machine), so two builds can
//! be compared with a run or two each. It still depends on how requests group at the
//! store, which other work on the machine changes (about 3% more with a build running
//! beside it): compare runs made on an otherwise idle machine. It is not time: a cache
//! miss counts as one instruction, and valgrind's CPU lacks some of the machine's features
//! (`sha2` and `memchr`, say, take other code paths), so a change that touches less
//! memory can save far more time than instructions (docs/performance.md).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::process::Command;

use super::load::{self, LoadPlan, Target, Template};
use super::procs::{self, Server};
use super::report::{Goal, Row};
use super::{BATCH_SIZE, Bench, bare};

/// Requests before the count starts: connections opened, caches and the store warmed.
const WARM_UP: u64 = 200;
/// `/v1/track` requests counted (a few seconds each under callgrind).
const TRACK_REQUESTS: u64 = 10_000;
/// `/v1/batch` requests counted (of [`BATCH_SIZE`] events each).
const BATCH_REQUESTS: u64 = 100;
/// Connections of the counted runs.
const CONNECTIONS: usize = 64;
/// Longest a counted run may take (callgrind runs the server some 50 times slower).
const MAX_RUN: Duration = Duration::from_secs(600);

impl Bench<'_> {
    pub(super) async fn instructions(&self) -> anyhow::Result<Vec<Row>> {
        let valgrind = Command::new("valgrind").arg("--version").output().await;
        if !valgrind.is_ok_and(|out| out.status.success()) {
            bail!(
                "valgrind is not installed: the instructions part needs it (Debian's valgrind package)"
            );
        }
        let (dir, mock, config) = self.part_with_mock("instructions", true).await?;
        let config = config.to_str().context("the temp dir path is not UTF-8")?;
        let serve_out = dir.join("serve.callgrind");
        let stipple = self
            .stipple
            .to_str()
            .context("the stipple path is not UTF-8")?;
        let serve = callgrind(
            "stipple serve (callgrind)",
            &serve_out,
            &[stipple, "serve", "--config", config],
            &dir.join("serve.log"),
            "stipple listening on ",
        )
        .await?;
        let bare_out = dir.join("bare.callgrind");
        let xtask = self.xtask.to_str().context("the xtask path is not UTF-8")?;
        let bare = callgrind(
            "bare server (callgrind)",
            &bare_out,
            &[xtask, "bench", "--built", "--bare-server"],
            &dir.join("bare.log"),
            bare::LISTENING,
        )
        .await?;
        // Counted per event: a track request is one event.
        let runs = [
            ("/v1/track", Template::track()?, TRACK_REQUESTS, "request"),
            (
                "/v1/batch",
                Template::batch(BATCH_SIZE)?,
                BATCH_REQUESTS,
                "event",
            ),
        ];
        let mut rows = Vec::new();
        for (path, template, requests, per) in runs {
            let template = Arc::new(template);
            let events = requests * template.events();
            let count = |instructions: u64| instructions as f64 / events as f64;
            let ours = count_run(&serve, &serve_out, path, &template, requests).await?;
            let theirs = count_run(&bare, &bare_out, path, &template, requests).await?;
            eprintln!(
                "bench: instructions, {path}: stipple {ours} for {requests} requests, bare {theirs}"
            );
            rows.push(Row::paired(
                "instructions",
                format!("{path} instructions per {per}, delivery paused (lower is better)"),
                "instructions",
                vec![count(ours)],
                "bare axum",
                vec![count(theirs)],
                Goal::None,
            )
            .with_note(format!(
                "user-space instructions of the whole server process under callgrind, {requests} requests over {CONNECTIONS} connections after {WARM_UP} to warm up"
            )));
        }
        serve.stop().await?;
        bare.stop().await?;
        mock.stop().await?;
        self.clean(&dir);
        Ok(rows)
    }
}

/// Starts `args` under callgrind, writing its counts to `out` (and `out.N` for the Nth
/// dump), with collection on from the start (zeroed before each counted run).
async fn callgrind(
    name: &'static str,
    out: &Path,
    args: &[&str],
    log: &Path,
    prefix: &str,
) -> anyhow::Result<Server> {
    let out_arg = format!("--callgrind-out-file={}", out.display());
    let mut all = vec!["--tool=callgrind", out_arg.as_str()];
    all.extend_from_slice(args);
    Server::start(name, Path::new("valgrind"), &all, log, prefix).await
}

/// Warms `server` up on `path`, zeroes its counts, posts `requests` bodies and returns
/// the instructions counted meanwhile.
async fn count_run(
    server: &Server,
    out: &Path,
    path: &'static str,
    template: &Arc<Template>,
    requests: u64,
) -> anyhow::Result<u64> {
    let target = Target::new(&server.url, path)?;
    let plan = |requests| LoadPlan {
        template: template.clone(),
        requests,
        max_time: MAX_RUN,
        connections: CONNECTIONS,
    };
    // Every request must succeed, or the count is of something else (errors, retries).
    let all_ok = |result: load::LoadResult, sent: u64, what: &str| {
        if result.ok_requests == sent {
            return Ok(());
        }
        bail!(
            "{path}: {} of {sent} {what} requests answered 200 ({})",
            result.ok_requests,
            result.failures()
        )
    };
    all_ok(
        load::run(&target, &plan(WARM_UP)).await?,
        WARM_UP,
        "warm-up",
    )?;
    control(server, "-z").await?;
    all_ok(
        load::run(&target, &plan(requests)).await?,
        requests,
        "counted",
    )?;
    let before = dumps(out)?;
    control(server, "-d").await?;
    let dump = dumps(out)?
        .into_iter()
        .find(|file| !before.contains(file))
        .with_context(|| format!("callgrind wrote no dump beside {}", out.display()))?;
    totals(&dump)
}

/// Runs `callgrind_control FLAG PID` (`-z` zeroes the counts, `-d` dumps them).
async fn control(server: &Server, flag: &str) -> anyhow::Result<()> {
    procs::output(
        Command::new("callgrind_control").args([flag, &server.pid().to_string()]),
        &format!("callgrind_control {flag} (part of valgrind)"),
    )
    .await?;
    Ok(())
}

/// The dump files callgrind has written beside `out` (`out.1`, `out.2`, ...).
fn dumps(out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let dir = out
        .parent()
        .context("the callgrind file has no directory")?;
    let stem = out
        .file_name()
        .and_then(|name| name.to_str())
        .context("the callgrind file name is not UTF-8")?;
    let prefix = format!("{stem}.");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.starts_with(&prefix))
        {
            files.push(path);
        }
    }
    Ok(files)
}

/// The instructions a callgrind dump counted: its `totals:` (or `summary:`) line.
fn totals(dump: &Path) -> anyhow::Result<u64> {
    let text =
        std::fs::read_to_string(dump).with_context(|| format!("cannot read {}", dump.display()))?;
    parse_totals(&text).with_context(|| format!("no totals in {}", dump.display()))
}

fn parse_totals(text: &str) -> Option<u64> {
    text.lines()
        .filter_map(|line| {
            line.strip_prefix("totals:")
                .or_else(|| line.strip_prefix("summary:"))
        })
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::parse_totals;

    #[test]
    fn totals_are_read_from_a_dump() {
        let dump = "version: 1\ncreator: callgrind-3.19.0\nevents: Ir\nfl=(1) a.c\nfn=(1) main\n3 5\nsummary: 1234\ntotals: 1234\n";
        assert_eq!(parse_totals(dump), Some(1234));
        assert_eq!(parse_totals("events: Ir\n"), None);
    }
}
