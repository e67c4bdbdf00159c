//! What the mock remembers: its settings, the accepted events, the faults and counters.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::faults::Faults;

/// The primary actor type a mock expects unless told otherwise: Pointillist's default.
pub const DEFAULT_ACTOR_TYPE: &str = "customer";

/// How a mock server starts.
#[derive(Clone)]
pub struct MockConfig {
    /// The API token every `POST /event` must carry in its `apiToken` header.
    pub token: String,
    /// The primary actor type every event's `actors` must hold (default `customer`, as
    /// `pointillist.actor_type`).
    pub actor_type: String,
    /// Faults injected from the start (default: none).
    pub faults: Faults,
    /// Keep accepted events for [`MockServer::events`](crate::MockServer::events) and
    /// `GET /mock/events` (default true). Turn off for load tests: events are then only
    /// counted.
    pub record: bool,
}

impl MockConfig {
    /// A mock expecting `token`, with no faults, recording events.
    pub fn new(token: impl Into<String>) -> Self {
        MockConfig {
            token: token.into(),
            actor_type: DEFAULT_ACTOR_TYPE.to_owned(),
            faults: Faults::default(),
            record: true,
        }
    }
}

impl fmt::Debug for MockConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockConfig")
            .field("token", &"[REDACTED]")
            .field("actor_type", &self.actor_type)
            .field("faults", &self.faults)
            .field("record", &self.record)
            .finish()
    }
}

/// Counters of what the mock answered since it started or was last reset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MockStats {
    /// Every `POST /event` received.
    pub requests: u64,
    /// Events accepted (answered 200), counted whether or not they are recorded.
    pub accepted: u64,
    /// Accepted events currently held (0 when not recording).
    pub recorded: u64,
    /// Requests answered 400 (contract violation) or 413 (body too large).
    pub rejected: u64,
    /// Requests answered 401: missing or wrong token, or the `unauthorized_for` fault.
    pub unauthorized: u64,
    /// Requests answered 429 by the `throttle_rate` fault.
    pub throttled: u64,
    /// Requests answered 500, 502 or 503 by the `error_rate` fault.
    pub errors: u64,
    /// Requests whose connection was reset by the `drop_rate` fault.
    pub dropped: u64,
    /// The most `POST /event` requests held at once (waiting out the `latency` fault or
    /// being answered): how many a client had in flight at its busiest.
    #[serde(default)]
    pub peak_in_flight: u64,
}

/// A request an injected fault refused (429, 5xx, 401 of the `unauthorized_for` window,
/// or a dropped connection): which event it carried and when, so that a test can see how
/// a client spaced its attempts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The `messageId` label of the event sent, when the body had one.
    pub message_id: Option<String>,
    /// The status answered; 0 for a dropped connection.
    pub status: u16,
    /// Milliseconds since the mock started or was last reset.
    pub at_ms: u64,
}

/// The faults in force, with the `unauthorized_for` window turned into a deadline.
#[derive(Debug)]
struct FaultState {
    faults: Faults,
    unauthorized_until: Option<Instant>,
}

impl FaultState {
    fn new(faults: Faults) -> Self {
        let unauthorized_until = faults
            .unauthorized_for
            .and_then(|period| Instant::now().checked_add(period));
        FaultState {
            faults,
            unauthorized_until,
        }
    }
}

/// Which counter an answer goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counted {
    Accepted,
    Rejected,
    Unauthorized,
    Throttled,
    Error,
    Dropped,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
    unauthorized: AtomicU64,
    throttled: AtomicU64,
    errors: AtomicU64,
    dropped: AtomicU64,
    /// Requests being answered now (not in `all`: a reset leaves them running).
    in_flight: AtomicU64,
    peak_in_flight: AtomicU64,
}

impl Counters {
    fn all(&self) -> [&AtomicU64; 7] {
        [
            &self.requests,
            &self.accepted,
            &self.rejected,
            &self.unauthorized,
            &self.throttled,
            &self.errors,
            &self.dropped,
        ]
    }
}

/// Everything the handlers share. No `Debug`: it holds the token and every event.
pub(crate) struct Shared {
    token: String,
    actor_type: String,
    record: bool,
    faults: Mutex<FaultState>,
    events: Mutex<Vec<Value>>,
    counters: Counters,
    /// Since when `refusals` count their time, and the refusals.
    refusals: Mutex<(Instant, Vec<Refusal>)>,
}

impl Shared {
    pub(crate) fn new(config: MockConfig) -> std::io::Result<Self> {
        for (value, refusal) in [
            (
                &config.token,
                "the mock's api token must not be empty; pass the token clients will send",
            ),
            (
                &config.actor_type,
                "the mock's primary actor type must not be empty",
            ),
        ] {
            if value.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    refusal,
                ));
            }
        }
        Ok(Shared {
            token: config.token,
            actor_type: config.actor_type,
            record: config.record,
            faults: Mutex::new(FaultState::new(config.faults)),
            events: Mutex::new(Vec::new()),
            counters: Counters::default(),
            refusals: Mutex::new((Instant::now(), Vec::new())),
        })
    }

    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    /// The actor type every event must name.
    pub(crate) fn actor_type(&self) -> &str {
        &self.actor_type
    }

    /// Replaces the faults; an `unauthorized_for` window starts now.
    pub(crate) fn set_faults(&self, faults: Faults) {
        *self.faults.lock() = FaultState::new(faults);
    }

    /// The faults in force, `unauthorized_for` being what is left of the window (to the
    /// millisecond), `None` once it has passed.
    pub(crate) fn faults(&self) -> Faults {
        let state = self.faults.lock();
        let mut faults = state.faults.clone();
        faults.unauthorized_for = state.unauthorized_until.and_then(|until| {
            let left = until.checked_duration_since(Instant::now())?;
            let millis = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
            (millis > 0).then(|| Duration::from_millis(millis))
        });
        faults
    }

    /// The faults in force and whether the `unauthorized_for` window is open.
    pub(crate) fn faults_now(&self) -> (Faults, bool) {
        let state = self.faults.lock();
        let unauthorized = state
            .unauthorized_until
            .is_some_and(|until| Instant::now() < until);
        (state.faults.clone(), unauthorized)
    }

    /// Counts a request and holds it in flight until the answer is dropped.
    pub(crate) fn count_request(&self) -> InFlight<'_> {
        let c = &self.counters;
        c.requests.fetch_add(1, Ordering::Relaxed);
        let now = c.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        c.peak_in_flight.fetch_max(now, Ordering::Relaxed);
        InFlight(&c.in_flight)
    }

    pub(crate) fn count(&self, counted: Counted) {
        let counter = match counted {
            Counted::Accepted => &self.counters.accepted,
            Counted::Rejected => &self.counters.rejected,
            Counted::Unauthorized => &self.counters.unauthorized,
            Counted::Throttled => &self.counters.throttled,
            Counted::Error => &self.counters.errors,
            Counted::Dropped => &self.counters.dropped,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Records an accepted event, when recording; counting is the caller's.
    pub(crate) fn record(&self, event: Value) {
        if self.record {
            self.events.lock().push(event);
        }
    }

    pub(crate) fn events(&self) -> Vec<Value> {
        self.events.lock().clone()
    }

    /// Notes a request an injected fault refused.
    pub(crate) fn refused(&self, message_id: Option<String>, status: u16) {
        let mut refusals = self.refusals.lock();
        let at_ms = u64::try_from(refusals.0.elapsed().as_millis()).unwrap_or(u64::MAX);
        refusals.1.push(Refusal {
            message_id,
            status,
            at_ms,
        });
    }

    pub(crate) fn refusals(&self) -> Vec<Refusal> {
        self.refusals.lock().1.clone()
    }

    /// Forgets the recorded events and refusals and zeroes the counters; faults stay.
    pub(crate) fn reset(&self) {
        let mut events = self.events.lock();
        events.clear();
        *self.refusals.lock() = (Instant::now(), Vec::new());
        for counter in self.counters.all() {
            counter.store(0, Ordering::Relaxed);
        }
        let c = &self.counters;
        c.peak_in_flight
            .store(c.in_flight.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> MockStats {
        let c = &self.counters;
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        MockStats {
            requests: get(&c.requests),
            accepted: get(&c.accepted),
            recorded: u64::try_from(self.events.lock().len()).unwrap_or(u64::MAX),
            rejected: get(&c.rejected),
            unauthorized: get(&c.unauthorized),
            throttled: get(&c.throttled),
            errors: get(&c.errors),
            dropped: get(&c.dropped),
            peak_in_flight: get(&c.peak_in_flight),
        }
    }
}

/// A request being answered: counted in flight until dropped.
#[derive(Debug)]
pub(crate) struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
