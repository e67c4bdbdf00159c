//! Pointillist misbehaving: 5xx, reset connections, 429 with `Retry-After`, and a revoked
//! token (401). Events wait, nothing is dead-lettered, and everything is delivered once the
//! fault ends; `/readyz` stays 200 throughout (the ingress accepts). It reports the
//! destination unhealthy for the credentials problem, and for 5xx or dropped connections
//! once enough have failed in a row that delivery pauses for an outage.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::check::Checks;
use super::harness::{Harness, Poll, by_message_id, nap, wait_for};

/// Events per fault phase.
const EVENTS: usize = 20;

/// Sends `EVENTS` tracks tagged `tag` in one batch; their messageIds.
fn send(h: &Harness, checks: &mut Checks, tag: &str) -> anyhow::Result<BTreeSet<String>> {
    let events: Vec<Value> = (0..EVENTS)
        .map(|n| json!({"type": "track", "userId": format!("{tag}-user"), "event": "Fault Test", "messageId": h.id(tag, n)}))
        .collect();
    let status = h.post_batch(&events)?;
    checks.expect(
        format!("{tag}: the ingress accepts events during the fault"),
        status == 200,
        format!("answered {status}"),
    );
    Ok(events
        .iter()
        .filter_map(|e| e["messageId"].as_str().map(str::to_owned))
        .collect())
}

/// How many of `ids` the mock has.
fn delivered_count(h: &Harness, ids: &BTreeSet<String>) -> anyhow::Result<usize> {
    let events = h.mock_events()?;
    let seen = by_message_id(&events);
    Ok(ids
        .iter()
        .filter(|id| seen.contains_key(id.as_str()))
        .count())
}

/// After a fault ends: everything arrives, nothing is dead-lettered, the mock saw no
/// contract violation.
fn recovered(
    h: &Harness,
    checks: &mut Checks,
    tag: &str,
    ids: &BTreeSet<String>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    match h.wait_delivered(ids, timeout) {
        Ok(_) => checks.pass(
            format!("{tag}: all delivered once the fault ends"),
            format!(
                "{} events in {:.1}s",
                ids.len(),
                started.elapsed().as_secs_f64()
            ),
        ),
        Err(e) => checks.fail(
            format!("{tag}: all delivered once the fault ends"),
            format!("{e:#}"),
        ),
    };
    if let Err(e) = h.wait_drained(Duration::from_secs(30)) {
        checks.fail(format!("{tag}: the queue drains"), format!("{e:#}"));
    }
    let dead = h.metric("stipple_dead_letters")?;
    checks.expect(
        format!("{tag}: nothing dead-lettered"),
        dead == Some(0.0),
        format!("stipple_dead_letters {dead:?}"),
    );
    let rejected = h.mock_stat("rejected")?;
    checks.expect(
        format!("{tag}: the mock found no contract violation"),
        rejected == 0,
        format!("{rejected} rejected"),
    );
    Ok(())
}

/// 5xx: retried, not delivered during the fault, `/readyz` stays 200.
fn server_errors(h: &mut Harness, checks: &mut Checks) -> anyhow::Result<()> {
    h.fresh()?;
    h.set_faults(json!({"error_rate": 1.0}))?;
    let ids = send(h, checks, "5xx")?;
    // Several retry rounds (backoff 100 ms .. 1 s).
    nap(Duration::from_secs(2));
    let delivered = delivered_count(h, &ids)?;
    let errors = h.mock_stat("errors")?;
    checks.expect(
        "5xx: nothing delivered while Pointillist answers 5xx, and it is retried",
        delivered == 0 && errors > EVENTS as u64,
        format!("{delivered} delivered, {errors} requests answered 5xx for {EVENTS} events"),
    );
    let (status, body) = h.readyz()?;
    checks.expect(
        "5xx: /readyz stays 200 (a transient fault)",
        status == 200,
        format!("{status} {body}"),
    );
    h.clear_faults()?;
    recovered(h, checks, "5xx", &ids, Duration::from_secs(30))
}

/// Connections reset without an answer: retried like 5xx, `/readyz` stays 200.
fn dropped(h: &mut Harness, checks: &mut Checks) -> anyhow::Result<()> {
    h.fresh()?;
    h.set_faults(json!({"drop_rate": 1.0}))?;
    let ids = send(h, checks, "drop")?;
    nap(Duration::from_secs(2));
    let delivered = delivered_count(h, &ids)?;
    let dropped = h.mock_stat("dropped")?;
    checks.expect(
        "drop: nothing delivered while connections are reset, and it is retried",
        delivered == 0 && dropped > EVENTS as u64,
        format!("{delivered} delivered, {dropped} connections reset for {EVENTS} events"),
    );
    let (status, body) = h.readyz()?;
    checks.expect(
        "drop: /readyz stays 200 (a transient fault)",
        status == 200,
        format!("{status} {body}"),
    );
    h.clear_faults()?;
    recovered(h, checks, "drop", &ids, Duration::from_secs(30))
}

/// 429 with `Retry-After: 1`: retried no sooner than that, `/readyz` stays 200.
fn throttled(h: &mut Harness, checks: &mut Checks) -> anyhow::Result<()> {
    h.fresh()?;
    let set = Instant::now();
    h.set_faults(json!({"throttle_rate": 1.0, "retry_after_secs": 1}))?;
    let ids = send(h, checks, "429")?;
    nap(Duration::from_secs(3));
    let delivered = delivered_count(h, &ids)?;
    let (status, body) = h.readyz()?;
    let throttled = h.mock_stat("throttled")?;
    let refusals = h.mock_refusals()?;
    h.clear_faults()?;
    let window = set.elapsed();
    checks.expect(
        "429: nothing delivered while Pointillist answers 429",
        delivered == 0 && throttled >= EVENTS as u64,
        format!("{delivered} delivered, {throttled} requests answered 429"),
    );
    // Retry-After: 1 means at most one attempt per event per second of the window.
    let bound = EVENTS as u64 * (window.as_secs() + 1);
    checks.expect(
        "429: Retry-After is honoured",
        throttled <= bound,
        format!(
            "{throttled} attempts for {EVENTS} events in {:.1}s (at most {bound} if each waits 1s)",
            window.as_secs_f64()
        ),
    );
    // And per event: no attempt sooner than 1 s after that event's last 429 (the mock
    // logs each with its time, to the millisecond; 50 ms of slack for the clocks).
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut gaps = Vec::new();
    for refusal in refusals.iter().filter(|r| r["status"] == 429) {
        let (Some(id), Some(at)) = (refusal["message_id"].as_str(), refusal["at_ms"].as_u64())
        else {
            continue;
        };
        if let Some(before) = last.insert(id.to_owned(), at) {
            gaps.push(at.saturating_sub(before));
        }
    }
    let shortest = gaps.iter().min().copied();
    checks.expect(
        "429: no event is sent again sooner than its Retry-After",
        !gaps.is_empty() && shortest.is_some_and(|ms| ms >= 950),
        format!(
            "{} repeat attempts; the shortest {shortest:?} ms after the same event's 429",
            gaps.len()
        ),
    );
    checks.expect(
        "429: /readyz stays 200 (a transient fault)",
        status == 200,
        format!("{status} {body}"),
    );
    recovered(h, checks, "429", &ids, Duration::from_secs(30))
}

/// 401 for a while: delivery pauses, `/readyz` stays 200 (the ingress keeps accepting)
/// and reports the destination unhealthy, and after the period everything is delivered
/// and `/readyz` reports it healthy again.
fn unauthorized(h: &mut Harness, checks: &mut Checks) -> anyhow::Result<()> {
    h.fresh()?;
    // Long enough that the pause is seen with time left to send more into it.
    let period = Duration::from_secs(6);
    // Taken before the PUT: `set.elapsed()` is never less than the mock's own count.
    let set = Instant::now();
    h.set_faults(json!({"unauthorized_for": "6s"}))?;
    let mut ids = send(h, checks, "401")?;
    let paused = wait_for(
        "/readyz to report the destination unhealthy",
        Duration::from_secs(10),
        || {
            let (status, body) = h.readyz()?;
            Ok(
                if status == 200 && body["destination"]["healthy"] == false {
                    Poll::Ready(body)
                } else {
                    Poll::Pending(format!("{status} {body}"))
                },
            )
        },
    );
    match paused {
        Ok(body) => {
            checks.pass(
                "401: /readyz is 200 and reports the destination unhealthy",
                body["destination"].to_string(),
            );
        }
        Err(e) => checks.fail(
            "401: /readyz is 200 and reports the destination unhealthy",
            format!("{e:#}"),
        ),
    }
    if set.elapsed() + Duration::from_millis(500) < period {
        // Still inside the period: more events are accepted while paused.
        ids.extend(send(h, checks, "401-paused")?);
        let delivered = delivered_count(h, &ids)?;
        checks.expect(
            "401: nothing delivered while paused",
            delivered == 0,
            format!("{delivered} delivered"),
        );
    } else {
        checks.fail(
            "401: nothing delivered while paused",
            format!(
                "not checked: the pause showed {:.1}s into a {}s refusal",
                set.elapsed().as_secs_f64(),
                period.as_secs()
            ),
        );
    }
    let unauthorized = h.mock_stat("unauthorized")?;
    checks.expect(
        "401: Pointillist was asked and said 401",
        unauthorized > 0,
        format!("{unauthorized} answered 401"),
    );
    // The pause probes with a backoff of 5 s and more: allow for a few probes.
    recovered(h, checks, "401", &ids, Duration::from_secs(60))?;
    let ready = wait_for(
        "/readyz to report delivery again",
        Duration::from_secs(15),
        || {
            let (status, body) = h.readyz()?;
            Ok(if status == 200 && body["destination"]["healthy"] == true {
                Poll::Ready(body)
            } else {
                Poll::Pending(format!("{status} {body}"))
            })
        },
    );
    match ready {
        Ok(body) => checks.pass(
            "401: /readyz reports the destination healthy again after the period",
            body["destination"].to_string(),
        ),
        Err(e) => checks.fail(
            "401: /readyz reports the destination healthy again after the period",
            format!("{e:#}"),
        ),
    }
    Ok(())
}

type Phase = fn(&mut Harness, &mut Checks) -> anyhow::Result<()>;

pub(crate) fn run(h: &mut Harness, checks: &mut Checks) -> anyhow::Result<()> {
    // One phase failing to run does not stop the others.
    for (name, phase) in [
        ("5xx", server_errors as Phase),
        ("drop", dropped),
        ("429", throttled),
        ("401", unauthorized),
    ] {
        if let Err(e) = phase(h, checks) {
            checks.fail(
                format!("{name}: the phase could not finish"),
                format!("{e:#}"),
            );
        }
    }
    h.clear_faults()?;
    Ok(())
}
