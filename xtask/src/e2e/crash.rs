//! The service's life and death: `kill -9` in the middle of a load loses nothing that
//! was answered 200 (at-least-once), and SIGTERM stops it cleanly and promptly.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use serde_json::{Value, json};

use super::check::Checks;
use super::expect::{Expected, TimeRule, around};
use super::harness::{Harness, Poll, by_message_id, nap, tail, wait_for};

/// Events per batch request in the crash test.
const BATCH: usize = 50;
/// Threads posting batches at once.
const SENDERS: usize = 3;
/// About how long the crash part's load lasts if nothing stops it: long enough for
/// deliveries to complete while more events arrive, so the kill finds events delivered,
/// in flight and queued.
const LOAD_SPREAD: Duration = Duration::from_secs(3);

fn track(h: &Harness, tag: &str, n: usize) -> Value {
    json!({"type": "track", "userId": format!("{tag}-user-{}", n % 7), "event": "Load", "messageId": h.id(tag, n),
        "properties": {"n": n}})
}

/// Checks every delivered copy of each of `messages` (by messageId) against the
/// mapping's oracle, the event time by `time`: what survived a kill or a stop must also
/// be what was sent.
fn check_contents(
    checks: &mut Checks,
    name: &str,
    messages: &[Value],
    delivered: &[Value],
    time: &TimeRule,
) {
    let by_id = by_message_id(delivered);
    let mut compared = 0;
    let mut problems = Vec::new();
    for message in messages {
        let Some(id) = message["messageId"].as_str() else {
            continue;
        };
        let expected = Expected::of(message, time.clone());
        for event in by_id.get(id).into_iter().flatten() {
            compared += 1;
            if let Err(p) = expected.compare(event, true) {
                problems.push(format!("{id}: {p}"));
            }
        }
    }
    checks.expect(
        name,
        compared > 0 && problems.is_empty(),
        if problems.is_empty() {
            format!("{compared} deliveries as the mapping says")
        } else {
            format!("{} wrong, e.g. {}", problems.len(), problems[0])
        },
    );
}

/// The event time of events the ingress stamped between `from` and now.
fn stamped_since(from: chrono::DateTime<chrono::Utc>) -> TimeRule {
    around(from, chrono::Utc::now(), chrono::TimeDelta::seconds(2))
}

/// Sends `total` events in batches from a few threads until told to stop or until a
/// request fails; returns the messageIds of every batch answered 200.
struct Load {
    acked: Arc<Mutex<Vec<String>>>,
    acked_count: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(h: &Harness, tag: &str, total: usize) -> anyhow::Result<Load> {
        let batches: Vec<Vec<Value>> = (0..total)
            .map(|n| track(h, tag, n))
            .collect::<Vec<_>>()
            .chunks(BATCH)
            .map(<[Value]>::to_vec)
            .collect();
        let pause = LOAD_SPREAD.mul_f64(SENDERS as f64 / batches.len().max(1) as f64);
        let next = Arc::new(AtomicUsize::new(0));
        let batches = Arc::new(batches);
        let acked = Arc::new(Mutex::new(Vec::new()));
        let acked_count = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for _ in 0..SENDERS {
            // Short timeouts: after the kill, a request must fail fast, not hang.
            let client = Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(5))
                .build()?;
            let url = h.url("/v1/batch");
            let key = h.write_key.clone();
            let (next, batches, acked, acked_count, stop) = (
                next.clone(),
                batches.clone(),
                acked.clone(),
                acked_count.clone(),
                stop.clone(),
            );
            threads.push(std::thread::spawn(move || {
                let mut errors = Vec::new();
                while !stop.load(Ordering::Acquire) {
                    let i = next.fetch_add(1, Ordering::AcqRel);
                    let Some(batch) = batches.get(i) else { break };
                    let answer = client
                        .post(&url)
                        .basic_auth(&key, Some(""))
                        .json(&json!({ "batch": batch }))
                        .send();
                    match answer {
                        Ok(a) if a.status() == 200 => {
                            let ids = batch
                                .iter()
                                .filter_map(|m| m["messageId"].as_str().map(str::to_owned));
                            let mut acked = acked
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner);
                            acked.extend(ids);
                            acked_count.fetch_add(batch.len(), Ordering::AcqRel);
                            nap(pause);
                        }
                        Ok(a) => errors.push(format!("batch {i}: {}", a.status())),
                        Err(e) => {
                            errors.push(format!("batch {i}: {e}"));
                            break;
                        }
                    }
                }
                errors
            }));
        }
        Ok(Load {
            acked,
            acked_count,
            stop,
            threads,
        })
    }

    /// Stops the senders and returns the acknowledged messageIds and the errors seen.
    fn finish(self) -> (BTreeSet<String>, Vec<String>) {
        self.stop.store(true, Ordering::Release);
        let mut errors = Vec::new();
        for t in self.threads {
            errors.extend(
                t.join()
                    .unwrap_or_else(|_| vec!["a sender thread panicked".into()]),
            );
        }
        let acked = self
            .acked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .cloned()
            .collect();
        (acked, errors)
    }
}

/// `kill -9` mid-load, restart on the same store, and nothing answered 200 is lost.
pub(crate) fn crash(h: &mut Harness, checks: &mut Checks, total: usize) -> anyhow::Result<()> {
    h.fresh()?;
    // Slow deliveries, so that many events are queued or in flight when the kill comes.
    h.set_faults(json!({"latency": "200ms"}))?;
    let started_load = chrono::Utc::now();
    let load = Load::start(h, "crash", total)?;
    let kill_after = total / 2;
    let waited = wait_for(
        &format!("{kill_after} events answered 200 before the kill"),
        Duration::from_secs(60),
        || {
            let n = load.acked_count.load(Ordering::Acquire);
            Ok(if n >= kill_after {
                Poll::Ready(n)
            } else {
                Poll::Pending(format!("{n} answered 200"))
            })
        },
    );
    let acked_at_kill = match waited {
        Ok(n) => n,
        Err(e) => {
            let (_, errors) = load.finish();
            checks.fail(
                "crash: load before the kill",
                format!("{e:#}; sender errors: {errors:?}"),
            );
            return Ok(());
        }
    };
    h.kill_serve()?;
    let delivered_at_kill = h.mock_stat("accepted").unwrap_or(0) as usize;
    let (acked, errors) = load.finish();
    eprintln!(
        "killed -9 with {acked_at_kill} events answered 200 and {delivered_at_kill} delivered; {} acked in all, {} requests failed",
        acked.len(),
        errors.len()
    );
    checks.expect(
        "crash: kill -9 with events delivered, in flight and queued",
        delivered_at_kill > 0 && delivered_at_kill < acked.len(),
        format!(
            "{} answered 200, {delivered_at_kill} delivered at the kill",
            acked.len()
        ),
    );
    if let Err(e) = h.start_serve() {
        checks.fail("crash: restart on the same store", format!("{e:#}"));
        return Ok(());
    }
    checks.pass(
        "crash: restart on the same store",
        format!("listening on {}", h.serve_url),
    );
    h.clear_faults()?;
    let started = Instant::now();
    match h.wait_delivered(&acked, Duration::from_secs(120)) {
        Ok(events) => {
            let delivered = by_message_id(&events);
            let duplicates: usize = acked
                .iter()
                .filter_map(|id| delivered.get(id.as_str()))
                .map(|v| v.len() - 1)
                .sum();
            checks.pass(
                "crash: every event answered 200 before the kill is delivered",
                format!(
                    "{} of {} delivered in {:.1}s after the restart ({duplicates} delivered twice: allowed)",
                    acked.len(),
                    acked.len(),
                    started.elapsed().as_secs_f64()
                ),
            );
            let sent: Vec<Value> = (0..total).map(|n| track(h, "crash", n)).collect();
            check_contents(
                checks,
                "crash: what is delivered after the restart is what was sent",
                &sent,
                &events,
                &stamped_since(started_load),
            );
        }
        Err(e) => checks.fail(
            "crash: every event answered 200 before the kill is delivered",
            format!("{e:#}"),
        ),
    }
    if let Err(e) = h.wait_drained(Duration::from_secs(60)) {
        checks.fail(
            "crash: the queue drains after the restart",
            format!("{e:#}"),
        );
    }
    let (status, body) = h.readyz()?;
    checks.expect(
        "crash: /readyz is 200 after the restart",
        status == 200,
        format!("{status} {body}"),
    );
    let dead = h.metric("stipple_dead_letters")?;
    checks.expect(
        "crash: no dead letters",
        dead == Some(0.0),
        format!("stipple_dead_letters {dead:?}"),
    );
    let rejected = h.mock_stat("rejected")?;
    checks.expect(
        "crash: the mock found no contract violation",
        rejected == 0,
        format!("{rejected} rejected"),
    );
    Ok(())
}

/// SIGTERM with events in flight: the service exits 0 within a bound, and what it
/// accepted is delivered after it starts again.
///
/// With `stalled_client`, a connection holding an unfinished request (headers and half
/// a body) stays open through the signal: a client that stalls must not keep the
/// service from stopping.
pub(crate) fn sigterm(
    h: &mut Harness,
    checks: &mut Checks,
    stalled_client: bool,
) -> anyhow::Result<()> {
    h.fresh()?;
    h.set_faults(json!({"latency": "500ms"}))?;
    let started_sending = chrono::Utc::now();
    let events: Vec<Value> = (0..200).map(|n| track(h, "sigterm", n)).collect();
    let mut acked = BTreeSet::new();
    for batch in events.chunks(BATCH) {
        let status = h.post_batch(batch)?;
        if status == 200 {
            acked.extend(
                batch
                    .iter()
                    .filter_map(|m| m["messageId"].as_str().map(str::to_owned)),
            );
        } else {
            checks.fail(
                "sigterm: events accepted before SIGTERM",
                format!("a batch answered {status}"),
            );
        }
    }
    // Let delivery start, so that requests are in flight at the signal.
    nap(Duration::from_millis(300));
    let requests_at_term = h.mock_stat("requests")?;
    let _stalled = if stalled_client {
        Some(stalled_request(h)?)
    } else {
        None
    };
    let bound = Duration::from_secs(20);
    match h.terminate_serve(bound) {
        Ok((status, took, log)) => {
            checks.expect(
                "sigterm: exits with status 0",
                status.code() == Some(0),
                format!(
                    "{status} after {:.1}s, with {requests_at_term} deliveries started before the signal",
                    took.as_secs_f64()
                ),
            );
            checks.expect(
                format!("sigterm: exits within {bound:?}"),
                took <= bound,
                format!("{:.1}s", took.as_secs_f64()),
            );
            let log_text = std::fs::read_to_string(&log).unwrap_or_default();
            checks.expect(
                "sigterm: logs a clean stop",
                log_text.contains("stopped cleanly"),
                if log_text.contains("stopped cleanly") {
                    "\"stopped cleanly\" logged".to_owned()
                } else {
                    tail(&log, 10)
                },
            );
        }
        Err(e) => checks.fail("sigterm: exits within the bound", format!("{e:#}")),
    }
    h.clear_faults()?;
    h.start_serve()?;
    match h.wait_delivered(&acked, Duration::from_secs(60)) {
        Ok(delivered) => {
            checks.pass(
                "sigterm: everything accepted is delivered after a restart",
                format!("{} events", acked.len()),
            );
            check_contents(
                checks,
                "sigterm: what is delivered after the restart is what was sent",
                &events,
                &delivered,
                &stamped_since(started_sending),
            );
        }
        Err(e) => checks.fail(
            "sigterm: everything accepted is delivered after a restart",
            format!("{e:#}"),
        ),
    }
    // The dedup window survives the restart: the same messageIds again are answered
    // 200 and not delivered again.
    h.wait_drained(Duration::from_secs(30))?;
    let count = |h: &Harness| -> anyhow::Result<usize> {
        let events = h.mock_events()?;
        let seen = by_message_id(&events);
        Ok(acked
            .iter()
            .filter_map(|id| seen.get(id.as_str()))
            .map(Vec::len)
            .sum())
    };
    let before = count(h)?;
    let status = h.post_batch(&events[..BATCH])?;
    nap(Duration::from_millis(500));
    h.wait_drained(Duration::from_secs(30))?;
    let after = count(h)?;
    checks.expect(
        "sigterm: messageIds seen before the restart are deduplicated after it",
        status == 200 && after == before,
        format!(
            "resent {BATCH} events: answered {status}; deliveries {before} before, {after} after"
        ),
    );
    Ok(())
}

/// Opens a connection and sends a request's headers and half its body, then nothing.
fn stalled_request(h: &Harness) -> anyhow::Result<std::net::TcpStream> {
    use std::io::Write as _;
    let address = h.serve_url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address)?;
    let head = format!(
        "POST /v1/track HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(b"{\"userId\": \"stalled\", ")?;
    stream.flush()?;
    Ok(stream)
}
