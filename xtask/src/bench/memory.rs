//! Part 3, memory: peak RSS of serve while a million events are queued (the mock refuses
//! the token, so they stay), the store's size on disk, and a restart with that queue.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::load::{self, LoadPlan, Target, Template};
use super::procs;
use super::report::{self, Goal, Row};
use super::{BATCH_SIZE, Bench};

impl Bench<'_> {
    /// Part 3.
    pub(super) async fn memory(&self) -> anyhow::Result<Vec<Row>> {
        let args = self.args;
        let (dir, mock, config) = self.part_with_mock("memory", true).await?;
        let mut serve =
            procs::start_serve(&self.stipple, &config, &dir.join("serve-fill.log")).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let idle = serve.memory()?;
        let batch = Arc::new(Template::batch(BATCH_SIZE)?);
        let requests = args.memory_events.div_ceil(BATCH_SIZE as u64);
        eprintln!(
            "bench: memory: queueing {} events (delivery paused)...",
            requests * BATCH_SIZE as u64
        );
        let fill = load::run(
            &Target::new(&serve.url, "/v1/batch")?,
            &LoadPlan {
                template: batch.clone(),
                requests,
                max_time: self.max_time * 5,
                connections: args.connections,
            },
        )
        .await?;
        serve.check_alive()?;
        let filled = serve.memory()?;
        let size = procs::store_size(&dir)?;
        let sent = fill.ok_requests * batch.len() as u64;
        eprintln!(
            "bench: memory: {} events queued in {:.1} s ({}), peak RSS {:.1} MiB, RSS now {:.1} MiB, store {:.1} MiB",
            fill.ok_events,
            fill.elapsed.as_secs_f64(),
            report::number(fill.events_per_sec(), "events/s"),
            filled.peak as f64 / 1048576.0,
            filled.now as f64 / 1048576.0,
            size as f64 / 1048576.0
        );
        serve.stop().await?;

        // The same queue after a restart, delivering for a few seconds.
        self.set_faults(&mock, "{}").await?;
        let before = self.mock_stats(&mock).await?;
        let started = Instant::now();
        let serve =
            procs::start_serve(&self.stipple, &config, &dir.join("serve-restart.log")).await?;
        let startup = serve.listening_at - started;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let restarted = serve.memory()?;
        let delivered = self.mock_stats(&mock).await?.accepted - before.accepted;
        serve.stop().await?;
        mock.stop().await?;
        self.clean(&dir);

        let queued_note = format!("{} events queued", fill.ok_events);
        let mut fill_note = format!(
            "{queued_note}; filled at {}",
            report::number(fill.events_per_sec(), "events/s")
        );
        if fill.failed() > 0 {
            fill_note.push_str(&format!("; {}", fill.failures()));
        }
        if fill.capped {
            fill_note.push_str(&format!(
                "; the fill was cut short at {} s",
                args.max_seconds * 5
            ));
        }
        Ok(vec![
            Row::single(
                "memory",
                format!("peak RSS of serve, queueing {} events", args.memory_events),
                "bytes",
                filled.peak as f64,
                "serve idle",
                Some(idle.peak as f64),
                Goal::Under(150.0 * 1024.0 * 1024.0),
            )
            .with_note(fill_note),
            Row::single(
                "memory",
                format!("store on disk, {} events queued", args.memory_events),
                "bytes",
                size as f64,
                "request bytes",
                Some(sent as f64),
                Goal::None,
            ),
            Row::single(
                "memory",
                format!(
                    "serve start with {} events queued (to listening)",
                    args.memory_events
                ),
                "s",
                startup.as_secs_f64(),
                "-",
                None,
                Goal::None,
            ),
            Row::single(
                "memory",
                format!(
                    "peak RSS, restarted with {} queued, 5 s delivering",
                    args.memory_events
                ),
                "bytes",
                restarted.peak as f64,
                "serve idle",
                Some(idle.peak as f64),
                Goal::Under(150.0 * 1024.0 * 1024.0),
            )
            .with_note(format!("{delivered} events delivered in those 5 s")),
        ])
    }
}
