//! Part 2, delivery: events queued while the mock refuses the token, then a fresh serve
//! against the healthy mock, timed until the mock has accepted them all; against bare
//! clients posting the same Pointillist events to the same mock: one with reqwest (the
//! goal's baseline) and one with hyper's pooled client (the stack Stipple sends with,
//! so that the figure shows what the HTTP stack alone can do).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::bail;
use bytes::Bytes;

use super::load::{self, BareClient, LoadPlan, Target, Template};
use super::procs::{self, Cpu};
use super::report::{self, Goal, Row};
use super::{BATCH_SIZE, Bench, POLL};

impl Bench<'_> {
    /// Part 2.
    pub(super) async fn delivery(&self) -> anyhow::Result<Vec<Row>> {
        let args = self.args;
        let (dir, mock, config) = self.part_with_mock("delivery", false).await?;
        let bodies = Arc::new(self.pointillist_events(&dir).await?);
        let batch = Arc::new(Template::batch(BATCH_SIZE)?);
        let requests = args.delivery_events.div_ceil(BATCH_SIZE as u64);
        let (mut ours, mut our_cpu) = (Vec::new(), Vec::new());
        // Per bare client: rates and client CPU an event, by round.
        let bare_clients = [BareClient::Reqwest, BareClient::Hyper];
        let mut theirs = [(); 2].map(|()| (Vec::new(), Vec::new()));
        let mut notes = Vec::new();
        for round in 0..args.rounds.max(1) {
            // Queue: the mock refuses the token, so delivery pauses and everything stays.
            self.set_faults(&mock, r#"{"unauthorized_for": "10h"}"#)
                .await?;
            let mut serve = procs::start_serve(
                &self.stipple,
                &config,
                &dir.join(format!("serve-fill-{round}.log")),
            )
            .await?;
            let fill = load::run(
                &Target::new(&serve.url, "/v1/batch")?,
                &LoadPlan {
                    template: batch.clone(),
                    requests,
                    max_time: self.max_time,
                    connections: args.connections,
                },
            )
            .await?;
            serve.check_alive()?;
            serve.stop().await?;
            // The drain measures delivery, not the writeback of the fill.
            procs::settle_disk().await?;
            let queued = fill.ok_events;
            if fill.capped || fill.failed() > 0 {
                notes.push(format!(
                    "round {}: queued {queued} of {}: {}",
                    round + 1,
                    requests * BATCH_SIZE as u64,
                    fill.failures()
                ));
            }
            if queued == 0 {
                bail!("nothing was queued ({})", fill.failures());
            }

            // Deliver: a fresh serve against the healthy mock, timed until the mock has them all.
            self.set_faults(&mock, "{}").await?;
            let before = self.mock_stats(&mock).await?;
            let serve = procs::start_serve(
                &self.stipple,
                &config,
                &dir.join(format!("serve-drain-{round}.log")),
            )
            .await?;
            let t0 = serve.listening_at;
            let (serve_cpu0, mock_cpu0) = (Cpu::of(serve.pid()), Cpu::of(mock.pid()));
            let deadline = t0 + self.max_time;
            let mut now = self.mock_stats(&mock).await?;
            while now.accepted - before.accepted < queued && Instant::now() < deadline {
                tokio::time::sleep(POLL).await;
                now = self.mock_stats(&mock).await?;
            }
            let drained = now.accepted - before.accepted;
            let elapsed = t0.elapsed();
            let (serve_cpu, mock_cpu) = (
                Cpu::of(serve.pid()).since(&serve_cpu0),
                Cpu::of(mock.pid()).since(&mock_cpu0),
            );
            let refused = now.refused() - before.refused();
            serve.stop().await?;
            let stipple_rate = drained as f64 / elapsed.as_secs_f64();
            if drained < queued {
                notes.push(format!(
                    "round {}: only {drained} of {queued} delivered within {} s",
                    round + 1,
                    args.max_seconds
                ));
            }
            if refused > 0 {
                notes.push(format!(
                    "round {}: the mock refused {refused} requests",
                    round + 1
                ));
            }

            // Baselines: the same number of Pointillist events, straight to the same mock.
            let mut described = Vec::new();
            for (with, (rates, cpu)) in bare_clients.iter().zip(&mut theirs) {
                let (own0, mock0) = (Cpu::own(), Cpu::of(mock.pid()));
                let bare = load::post_events(
                    *with,
                    &mock.url,
                    bodies.clone(),
                    queued,
                    args.delivery_concurrency,
                    self.max_time,
                )
                .await?;
                let (bare_cpu, bare_mock_cpu) =
                    (Cpu::own().since(&own0), Cpu::of(mock.pid()).since(&mock0));
                if bare.failed() > 0 {
                    notes.push(format!(
                        "round {}: {}: {}",
                        round + 1,
                        with.name(),
                        bare.failures()
                    ));
                }
                let bare_seconds = bare.elapsed.as_secs_f64();
                described.push(format!(
                    "{} {} in {:.2} s = {} (client {:.2} cores; mock {:.2} cores), ratio {:.2}",
                    with.name(),
                    bare.ok_events,
                    bare_seconds,
                    report::number(bare.events_per_sec(), "events/s"),
                    bare_cpu.total / bare_seconds,
                    bare_mock_cpu.total / bare_seconds,
                    stipple_rate / bare.events_per_sec()
                ));
                rates.push(bare.events_per_sec());
                cpu.push(bare_cpu.total * 1e6 / bare.ok_events.max(1) as f64);
            }
            eprintln!(
                "bench: delivery round {}/{}: stipple delivered {drained} in {:.2} s = {} (serve {}; mock {:.2} cores), {}",
                round + 1,
                args.rounds.max(1),
                elapsed.as_secs_f64(),
                report::number(stipple_rate, "events/s"),
                serve_cpu.cores(elapsed.as_secs_f64()),
                mock_cpu.total / elapsed.as_secs_f64(),
                described.join(", ")
            );
            ours.push(stipple_rate);
            our_cpu.push(serve_cpu.total * 1e6 / drained.max(1) as f64);
        }
        mock.stop().await?;
        self.clean(&dir);
        let [(reqwest_rates, reqwest_cpu), (hyper_rates, hyper_cpu)] = theirs;
        let figure = format!(
            "delivery to the mock, {} events queued, concurrency {}",
            args.delivery_events, args.delivery_concurrency
        );
        let cpu_note = "stipple: the whole serve process (store reads, mapping, HTTP); bare: the xtask process posting";
        Ok(vec![
            Row::paired(
                "delivery",
                figure.clone(),
                "events/s",
                ours.clone(),
                BareClient::Reqwest.name(),
                reqwest_rates,
                Goal::RatioAtLeast(0.8),
            )
            .with_note(notes.join("; ")),
            Row::paired(
                "delivery",
                "client CPU per delivered event (lower is better)",
                "us",
                our_cpu.clone(),
                BareClient::Reqwest.name(),
                reqwest_cpu,
                Goal::None,
            )
            .with_note(cpu_note),
            Row::paired(
                "delivery",
                format!("{figure}, against the HTTP stack Stipple sends with"),
                "events/s",
                ours,
                BareClient::Hyper.name(),
                hyper_rates,
                Goal::None,
            ),
            Row::paired(
                "delivery",
                "client CPU per delivered event, against the same stack (lower is better)",
                "us",
                our_cpu,
                BareClient::Hyper.name(),
                hyper_cpu,
                Goal::None,
            )
            .with_note(cpu_note),
        ])
    }

    /// The Pointillist events of the bench's messages, mapped by `stipple map`.
    async fn pointillist_events(&self, dir: &Path) -> anyhow::Result<Vec<Bytes>> {
        let input = dir.join("messages.jsonl");
        std::fs::write(&input, load::messages_for_map(1000)?)?;
        let mapped = procs::output(
            tokio::process::Command::new(&self.stipple)
                .arg("map")
                .arg(&input),
            "stipple map",
        )
        .await?;
        Ok(mapped
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(Bytes::copy_from_slice)
            .collect())
    }
}
