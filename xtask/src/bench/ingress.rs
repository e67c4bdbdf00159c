//! Part 1, the ingress: `/v1/batch` and `/v1/track` against a bare axum server, in
//! time-boxed rounds that alternate which goes first, with the CPU each server used.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;

use super::load::{self, LoadPlan, LoadResult, Target, Template};
use super::procs::{self, Cpu, Machine, Server};
use super::report::{self, Goal, Row};
use super::{BATCH_SIZE, Bench};

/// A round in which the hypervisor took more than this share of the machine's CPU time
/// (either side of it) is pointed out in the notes.
const STEAL_WARNING: f64 = 0.05;

impl Bench<'_> {
    /// Part 1; with `track_only`, only the measurement the `/v1/track` goal is judged on.
    pub(super) async fn ingress(&self, track_only: bool) -> anyhow::Result<Vec<Row>> {
        let args = self.args;
        let bare = self.start_bare().await?;
        let batch = Arc::new(Template::batch(BATCH_SIZE)?);
        let track = Arc::new(Template::track()?);
        eprintln!(
            "bench: bodies: /v1/batch {} bytes ({} messages), /v1/track {} bytes",
            batch.len(),
            batch.events(),
            track.len()
        );
        let durable = if args.synchronous == "full" {
            "durable"
        } else {
            "synchronous=normal"
        };
        let mut rows = Vec::new();
        // Paused: the mock answers 401, delivery pauses and only ingress and the store
        // work. Running: delivery competes for the cores and the store, as in production.
        let passes = [
            (true, "ingress-paused", "delivery paused"),
            (false, "ingress-running", "delivery running"),
        ];
        let passes = if track_only {
            &passes[..1]
        } else {
            &passes[..]
        };
        for &(paused, name, label) in passes {
            let (dir, mock, config) = self.part_with_mock(name, paused).await?;
            let mut serve =
                procs::start_serve(&self.stipple, &config, &dir.join("serve.log")).await?;
            eprintln!(
                "bench: {label}: serve pid {}, mock pid {}, bare pid {}",
                serve.pid(),
                mock.pid(),
                bare.pid()
            );
            let before = self.mock_stats(&mock).await?;
            let clock = Instant::now();

            if !track_only {
                let requests = args.events.div_ceil(BATCH_SIZE as u64);
                let batch_runs = self
                    .paired_load(
                        &mut serve,
                        &bare,
                        "/v1/batch",
                        self.plan(&batch, requests, args.connections),
                        label,
                    )
                    .await?;
                rows.push(
                    Row::paired(
                        "ingress",
                        format!("/v1/batch {durable}, {label}"),
                        "events/s",
                        batch_runs.ours.clone(),
                        "bare axum",
                        batch_runs.theirs.clone(),
                        Goal::AtLeast(100_000.0),
                    )
                    .with_note(batch_runs.note.clone()),
                );
                rows.push(batch_runs.cpu_row(&format!("/v1/batch server CPU per event, {label}")));
                rows.push(batch_runs.latency_row(&format!("/v1/batch answer time p99, {label}")));
            }
            // /v1/track twice: with as many connections as the batch runs, where each
            // client waits for an fsync per request and so the rate is capped at about
            // connections / fsync time whatever the CPU; and with many clients (a track
            // endpoint's usual load: browsers and servers sending one event each), where
            // fsyncs are shared and the CPU decides. The goal is judged on the second.
            let tracks = [
                (args.connections, Goal::None),
                (args.track_connections, Goal::RatioAtLeast(0.5)),
            ];
            let tracks = if track_only {
                &tracks[1..]
            } else {
                &tracks[..]
            };
            for &(connections, goal) in tracks {
                let runs = self
                    .paired_load(
                        &mut serve,
                        &bare,
                        "/v1/track",
                        self.plan(&track, args.track_requests, connections),
                        label,
                    )
                    .await?;
                rows.push(
                    Row::paired(
                        "ingress",
                        format!("/v1/track {durable}, {connections} connections, {label}"),
                        "requests/s",
                        runs.ours.clone(),
                        "bare axum",
                        runs.theirs.clone(),
                        goal,
                    )
                    .with_note(runs.note.clone()),
                );
                rows.push(runs.cpu_row(&format!(
                    "/v1/track server CPU per request, {connections} connections, {label}"
                )));
                rows.push(runs.latency_row(&format!(
                    "/v1/track answer time p99, {connections} connections, {label}"
                )));
            }

            let after = self.mock_stats(&mock).await?;
            let memory = serve.memory()?;
            let delivered = after.accepted.saturating_sub(before.accepted);
            eprintln!(
                "bench: {label}: the mock accepted {delivered} events meanwhile ({:.0}/s over {:.1} s, bare rounds included), \
                 {} refused; serve peak RSS {:.1} MiB",
                delivered as f64 / clock.elapsed().as_secs_f64(),
                clock.elapsed().as_secs_f64(),
                after.refused().saturating_sub(before.refused()),
                memory.peak as f64 / 1048576.0
            );
            serve.stop().await?;
            mock.stop().await?;
            self.clean(&dir);
        }
        bare.stop().await?;
        Ok(rows)
    }

    /// What to post, how many at most, over how many connections (the time is set later).
    fn plan(&self, template: &Arc<Template>, requests: u64, connections: usize) -> LoadPlan {
        LoadPlan {
            template: template.clone(),
            requests,
            max_time: Duration::from_secs_f64(self.args.seconds),
            connections,
        }
    }

    /// A short warm-up of each, then `rounds` time-boxed runs of each, alternating which
    /// goes first, with the CPU each server used.
    async fn paired_load(
        &self,
        serve: &mut Server,
        bare: &Server,
        path: &'static str,
        base: LoadPlan,
        label: &str,
    ) -> anyhow::Result<Paired> {
        let stipple_target = Target::new(&serve.url, path)?;
        let bare_target = Target::new(&bare.url, path)?;
        let connections = base.connections;
        let template = base.template.clone();
        let plan = |seconds: f64| LoadPlan {
            max_time: Duration::from_secs_f64(seconds.clamp(0.1, 600.0)),
            ..base.clone()
        };
        load::run(&stipple_target, &plan(self.args.seconds / 5.0)).await?;
        load::run(&bare_target, &plan(self.args.seconds / 5.0)).await?;
        let mut paired = Paired::default();
        let batch = template.events() > 1;
        let (unit, per) = if batch {
            (
                "events/s",
                LoadResult::events_per_sec as fn(&LoadResult) -> f64,
            )
        } else {
            (
                "requests/s",
                LoadResult::requests_per_sec as fn(&LoadResult) -> f64,
            )
        };
        let done = |r: &LoadResult| if batch { r.ok_events } else { r.ok_requests };
        let mut stolen_rounds = Vec::new();
        for round in 0..self.args.rounds.max(1) {
            let measured = plan(self.args.seconds);
            let (stipple, baseline) = if round % 2 == 0 {
                let s = self
                    .measure_serve(serve, &stipple_target, &measured)
                    .await?;
                (s, measure(bare, &bare_target, &measured).await?)
            } else {
                let b = measure(bare, &bare_target, &measured).await?;
                (
                    self.measure_serve(serve, &stipple_target, &measured)
                        .await?,
                    b,
                )
            };
            serve.check_alive()?;
            if stipple.result.ok_requests == 0 {
                bail!(
                    "stipple answered no {path} request with 200 ({}); see {}",
                    stipple.result.failures(),
                    serve.log.display()
                );
            }
            let seconds = |m: &Measured| m.result.elapsed.as_secs_f64();
            eprintln!(
                "bench: {path} {label}, {connections} connections, round {}/{}: stipple {} ({:.2} s{}; answers {}; serve {}; {}; load generator {:.2} cores), \
                 bare {} ({:.2} s{}; answers {}; {:.2} cores), ratio {:.2}; machine idle {:.0}% and {:.0}%, stolen by the host {:.0}% and {:.0}%",
                round + 1,
                self.args.rounds.max(1),
                report::number(per(&stipple.result), unit),
                seconds(&stipple),
                suffix(&stipple.result),
                latencies(&stipple.result),
                stipple.server.cores(seconds(&stipple)),
                stipple.store.map_or_else(
                    || "store: no counts".to_owned(),
                    |store| store.describe(stipple.result.ok_requests, seconds(&stipple))
                ),
                stipple.generator.total / seconds(&stipple),
                report::number(per(&baseline.result), unit),
                seconds(&baseline),
                suffix(&baseline.result),
                latencies(&baseline.result),
                baseline.server.total / seconds(&baseline),
                per(&stipple.result) / per(&baseline.result),
                stipple.idle * 100.0,
                baseline.idle * 100.0,
                stipple.stolen * 100.0,
                baseline.stolen * 100.0,
            );
            if stipple.stolen.max(baseline.stolen) > STEAL_WARNING {
                stolen_rounds.push(round + 1);
            }
            paired.ours.push(per(&stipple.result));
            paired.theirs.push(per(&baseline.result));
            paired
                .our_cpu
                .push(stipple.server.total * 1e6 / done(&stipple.result).max(1) as f64);
            paired
                .their_cpu
                .push(baseline.server.total * 1e6 / done(&baseline.result).max(1) as f64);
            paired
                .our_p99
                .push(stipple.result.latency_ms(0.99).unwrap_or(f64::NAN));
            paired
                .their_p99
                .push(baseline.result.latency_ms(0.99).unwrap_or(f64::NAN));
            paired.results.push((stipple.result, baseline.result));
        }
        let mut notes = Vec::new();
        let failed: u64 = paired.results.iter().map(|(s, _)| s.failed()).sum();
        if failed > 0 {
            let all: Vec<String> = paired
                .results
                .iter()
                .map(|(s, _)| s.failures())
                .filter(|f| !f.is_empty())
                .collect();
            notes.push(format!(
                "stipple: {failed} requests not answered 200 ({})",
                all.join("; ")
            ));
        }
        let failed: u64 = paired.results.iter().map(|(_, b)| b.failed()).sum();
        if failed > 0 {
            notes.push(format!("bare: {failed} requests not answered 200"));
        }
        if paired
            .results
            .iter()
            .any(|(s, b)| s.elapsed.min(b.elapsed).as_secs_f64() < self.args.seconds * 0.9)
        {
            notes.push(format!(
                "some runs reached the request cap before {} s",
                self.args.seconds
            ));
        }
        if !stolen_rounds.is_empty() {
            let rounds: Vec<String> = stolen_rounds.iter().map(ToString::to_string).collect();
            notes.push(format!(
                "the host took more than {:.0}% of the cores in round(s) {}: those figures \
                 measure the host too",
                STEAL_WARNING * 100.0,
                rounds.join(", ")
            ));
        }
        paired.note = notes.join("; ");
        Ok(paired)
    }
}

/// Paired rounds of stipple and its baseline.
#[derive(Debug, Default)]
struct Paired {
    /// Stipple's rate in each round (events/s for batches, requests/s otherwise).
    ours: Vec<f64>,
    /// The baseline's rate in each round.
    theirs: Vec<f64>,
    /// CPU microseconds stipple's server used per event (or request) in each round.
    our_cpu: Vec<f64>,
    /// The same for the baseline server.
    their_cpu: Vec<f64>,
    /// The 99th percentile of stipple's answer times in each round, in milliseconds.
    our_p99: Vec<f64>,
    /// The same for the baseline server.
    their_p99: Vec<f64>,
    results: Vec<(LoadResult, LoadResult)>,
    note: String,
}

impl Paired {
    /// The CPU rows: stipple's server CPU per event (or request) against the baseline's.
    fn cpu_row(&self, what: &str) -> Row {
        lower_is_better(what, "us", &self.our_cpu, &self.their_cpu)
    }

    /// The answer time rows: stipple's 99th percentile against the baseline's. A 200
    /// from stipple waits for the fsync that makes its events durable.
    fn latency_row(&self, what: &str) -> Row {
        lower_is_better(what, "ms", &self.our_p99, &self.their_p99)
    }
}

/// A row for information (no goal) where less is better, stipple's rounds against the
/// bare handler's.
fn lower_is_better(what: &str, unit: &'static str, ours: &[f64], theirs: &[f64]) -> Row {
    Row::paired(
        "ingress",
        format!("{what} (lower is better)"),
        unit,
        ours.to_vec(),
        "bare axum",
        theirs.to_vec(),
        Goal::None,
    )
}

/// One load run and the CPU it cost.
#[derive(Debug)]
struct Measured {
    result: LoadResult,
    /// CPU used by the server under load.
    server: Cpu,
    /// CPU used by this process: the load generator.
    generator: Cpu,
    /// The share of the machine's CPU time the hypervisor took meanwhile.
    stolen: f64,
    /// The share of the machine's CPU time no thread used meanwhile.
    idle: f64,
    /// How `stipple serve`'s store grouped the run's requests (none for the baseline, or
    /// when its `/metrics` could not be read).
    store: Option<StoreCounts>,
}

async fn measure(server: &Server, target: &Target, plan: &LoadPlan) -> anyhow::Result<Measured> {
    procs::settle_disk().await?;
    let (server_before, own_before) = (Cpu::of(server.pid()), Cpu::own());
    let machine_before = Machine::now();
    let result = load::run(target, plan).await?;
    let (server_after, own_after) = (Cpu::of(server.pid()), Cpu::own());
    // Unknown (no /proc/stat) counts as none stolen and none idle.
    let machine = machine_before.zip(Machine::now());
    let share = |f: fn(&Machine, &Machine) -> f64| machine.map_or(0.0, |(b, a)| f(&a, &b));
    Ok(Measured {
        result,
        server: server_after.since(&server_before),
        generator: own_after.since(&own_before),
        stolen: share(Machine::stolen_since),
        idle: share(Machine::idle_since),
        store: None,
    })
}

impl Bench<'_> {
    /// [`measure`] of `stipple serve`, with its store's counters read before and after
    /// (outside the timed run).
    async fn measure_serve(
        &self,
        serve: &Server,
        target: &Target,
        plan: &LoadPlan,
    ) -> anyhow::Result<Measured> {
        let before = self.store_counts(serve).await;
        let mut measured = measure(serve, target, plan).await?;
        let after = self.store_counts(serve).await;
        measured.store = before
            .zip(after)
            .map(|(before, after)| after.since(&before));
        Ok(measured)
    }

    /// The store's counters from `serve`'s `/metrics`; `None` (and a line on stderr) when
    /// they cannot be read, which costs only this readout.
    async fn store_counts(&self, serve: &Server) -> Option<StoreCounts> {
        let text = async {
            self.http
                .get(format!("{}/metrics", serve.url))
                .send()
                .await?
                .error_for_status()?
                .text()
                .await
        };
        match text.await {
            Ok(text) => Some(StoreCounts::parse(&text)),
            Err(e) => {
                eprintln!("bench: could not read serve's /metrics: {e}");
                None
            }
        }
    }
}

/// What the store's histograms say of its transactions and of the fsyncs that answered
/// appends: how many, and the seconds they took in all (`stipple_store_commit_seconds`
/// and `stipple_store_fsync_seconds`, see stipple-store's `COMMIT_SECONDS` and
/// `FSYNC_SECONDS`).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct StoreCounts {
    commits: f64,
    commit_seconds: f64,
    fsyncs: f64,
    fsync_seconds: f64,
}

impl StoreCounts {
    /// Reads the four series from Prometheus text; a series missing counts as zero.
    fn parse(text: &str) -> Self {
        let value = |name| crate::e2e::metric_value(text, name).unwrap_or(0.0);
        Self {
            commits: value("stipple_store_commit_seconds_count"),
            commit_seconds: value("stipple_store_commit_seconds_sum"),
            fsyncs: value("stipple_store_fsync_seconds_count"),
            fsync_seconds: value("stipple_store_fsync_seconds_sum"),
        }
    }

    fn since(&self, before: &Self) -> Self {
        Self {
            commits: self.commits - before.commits,
            commit_seconds: self.commit_seconds - before.commit_seconds,
            fsyncs: self.fsyncs - before.fsyncs,
            fsync_seconds: self.fsync_seconds - before.fsync_seconds,
        }
    }

    /// For a round line: how many of the round's `requests` a commit held on average
    /// (with delivery running, its leases and acks share the commits too), and how long
    /// commits and fsyncs took, also as a share of the round's `seconds`: one writer
    /// thread commits every group and fsyncs the small ones itself, so the two shares
    /// together say how near it ran to its limit on single-event requests.
    fn describe(&self, requests: u64, seconds: f64) -> String {
        let mean_ms = |total: f64, n: f64| if n > 0.0 { total * 1e3 / n } else { 0.0 };
        let share = |total: f64| 100.0 * total / seconds.max(f64::EPSILON);
        format!(
            "store {:.0} commits/s, {:.1} requests a commit, commit {:.2} ms ({:.0}% of the time), \
             fsync {:.2} ms ({:.0}%)",
            self.commits / seconds.max(f64::EPSILON),
            requests as f64 / self.commits.max(1.0),
            mean_ms(self.commit_seconds, self.commits),
            share(self.commit_seconds),
            mean_ms(self.fsync_seconds, self.fsyncs),
            share(self.fsync_seconds),
        )
    }
}

/// The median and 99th percentile answer times of a run, as the round lines print them.
fn latencies(result: &LoadResult) -> String {
    match (result.latency_ms(0.5), result.latency_ms(0.99)) {
        (Some(p50), Some(p99)) => format!("p50 {p50:.2} ms, p99 {p99:.2} ms"),
        _ => "none".to_owned(),
    }
}

fn suffix(result: &LoadResult) -> String {
    let failures = result.failures();
    if failures.is_empty() {
        String::new()
    } else {
        format!(", {failures}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_counts_are_read_from_prometheus_text_and_described() {
        let text = |commits: u32, fsyncs: u32| {
            format!(
                "# HELP stipple_store_commit_seconds Time each store transaction took\n\
                 # TYPE stipple_store_commit_seconds histogram\n\
                 stipple_store_commit_seconds_bucket{{le=\"0.001\"}} {commits}\n\
                 stipple_store_commit_seconds_sum {}\n\
                 stipple_store_commit_seconds_count {commits}\n\
                 stipple_store_fsync_seconds_sum {}\n\
                 stipple_store_fsync_seconds_count {fsyncs}\n\
                 stipple_store_commits_total 99999\n",
                f64::from(commits) * 0.0002,
                f64::from(fsyncs) * 0.0005,
            )
        };
        let before = StoreCounts::parse(&text(100, 90));
        assert_eq!(
            before,
            StoreCounts {
                commits: 100.0,
                commit_seconds: 0.02,
                fsyncs: 90.0,
                fsync_seconds: 0.045,
            }
        );
        let after = StoreCounts::parse(&text(1100, 1090));
        let round = after.since(&before);
        assert_eq!(round.commits, 1000.0);
        assert_eq!(round.fsyncs, 1000.0);
        assert_eq!(
            round.describe(40_000, 2.0),
            "store 500 commits/s, 40.0 requests a commit, commit 0.20 ms (10% of the time), \
             fsync 0.50 ms (25%)"
        );
        assert_eq!(StoreCounts::parse("not metrics"), StoreCounts::default());
    }
}
