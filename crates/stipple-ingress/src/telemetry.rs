//! What the ingress counts, through the `metrics` facade, and the names it counts under.
//!
//! Per message: [`RECEIVED`] when it arrives in an authenticated request, then, once
//! the store committed, exactly one of [`ACCEPTED`] (queued), [`DEDUPLICATED`] (seen on
//! its source within the window) or [`REJECTED`] (kept as rejected input). All are
//! labelled `source` and `type` (`unknown` when the message has no known type);
//! rejected also `code`. A request whose store write failed counts as received only.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Instant;

use axum::http::StatusCode;
use metrics::{
    Counter, Gauge, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram,
};
use stipple_core::MessageType;

/// Counter: messages received in authenticated requests (`source`, `type`).
pub const RECEIVED: &str = "stipple_received_total";
/// Counter: messages durably queued for delivery (`source`, `type`).
pub const ACCEPTED: &str = "stipple_accepted_total";
/// Counter: messages refused and kept as rejected input (`source`, `type`, `code`).
pub const REJECTED: &str = "stipple_rejected_total";
/// Counter: messages not queued because their `messageId` was seen (`source`, `type`).
pub const DEDUPLICATED: &str = "stipple_deduplicated_total";
/// Counter: Tracking API requests answered (`status`).
pub const REQUESTS: &str = "stipple_ingress_requests_total";
/// Histogram: seconds from a Tracking API request's arrival (its headers read) to its
/// answer, the wait for the store's fsync included.
pub const REQUEST_SECONDS: &str = "stipple_ingress_request_duration_seconds";
/// Gauge, set on each scrape of `/metrics`: events waiting for delivery.
pub const QUEUED: &str = "stipple_queued";
/// Gauge, set on each scrape of `/metrics`: dead letters kept.
pub const DEAD_LETTERS: &str = "stipple_dead_letters";
/// Gauge, set on each scrape of `/metrics`: rejected inputs kept.
pub const REJECTED_STORED: &str = "stipple_rejected_stored";
/// Counter, set on each scrape of `/metrics` (stores that count it): transactions the
/// store committed.
pub const STORE_COMMITS: &str = "stipple_store_commits_total";
/// Counter, set on each scrape of `/metrics` (stores that count it): fsyncs of the
/// store's write-ahead log that answered appends.
pub const STORE_SYNCS: &str = "stipple_store_fsyncs_total";
/// Gauge: HTTP connections open.
pub const CONNECTIONS: &str = "stipple_ingress_connections";
/// Counter: times the server stopped accepting at `ingress.max_connections`.
pub const CONNECTION_LIMIT_REACHED: &str = "stipple_ingress_connection_limit_reached_total";

/// Describes the server's metrics ([`crate::serve`]) to the installed recorder, and
/// starts them at zero.
pub(crate) fn describe_server_metrics() {
    describe_gauge!(CONNECTIONS, "HTTP connections open");
    describe_counter!(
        CONNECTION_LIMIT_REACHED,
        "Times the server stopped accepting connections at ingress.max_connections"
    );
    gauge!(CONNECTIONS).set(0.0);
    counter!(CONNECTION_LIMIT_REACHED).absolute(0);
}

/// The server stopped accepting at its connection limit.
pub(crate) fn connection_limit_reached() {
    counter!(CONNECTION_LIMIT_REACHED).increment(1);
}

/// Counts an open connection in [`CONNECTIONS`] while it lives.
#[derive(Debug)]
pub(crate) struct OpenConnection(Gauge);

impl OpenConnection {
    pub(crate) fn new() -> Self {
        let gauge = gauge!(CONNECTIONS);
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Describes the ingress metrics to the installed recorder.
pub fn describe_metrics() {
    describe_counter!(
        RECEIVED,
        "Segment messages received in authenticated requests"
    );
    describe_counter!(ACCEPTED, "Segment messages durably queued for delivery");
    describe_counter!(
        REJECTED,
        "Segment messages refused and kept as rejected input"
    );
    describe_counter!(
        DEDUPLICATED,
        "Segment messages whose messageId was already seen on their source"
    );
    describe_counter!(REQUESTS, "Tracking API requests answered, by status");
    describe_histogram!(
        REQUEST_SECONDS,
        Unit::Seconds,
        "Time from a Tracking API request's arrival to its answer"
    );
    describe_histogram!(
        stipple_store::FSYNC_SECONDS,
        Unit::Seconds,
        "Time each fsync of the store's write-ahead log took"
    );
    describe_histogram!(
        stipple_store::COMMIT_SECONDS,
        Unit::Seconds,
        "Time each store transaction (a group of requests) took from BEGIN to COMMIT"
    );
    describe_gauge!(QUEUED, "Events waiting for delivery");
    describe_gauge!(DEAD_LETTERS, "Dead letters kept");
    describe_gauge!(REJECTED_STORED, "Rejected inputs kept");
    describe_counter!(
        STORE_COMMITS,
        "Store transactions committed (concurrent requests share one)"
    );
    describe_counter!(
        STORE_SYNCS,
        "fsyncs of the store's write-ahead log that answered appends (concurrent appends share one)"
    );
}

/// The `type` label: one of the six types or `unknown`, so labels stay bounded.
pub(crate) fn type_label(kind: Option<&str>) -> &'static str {
    kind.and_then(MessageType::parse)
        .map_or(UNKNOWN, MessageType::as_str)
}

/// The `type` label of messages of no known type.
const UNKNOWN: &str = "unknown";
/// Every `type` label, in the order of the per-type arrays below.
const TYPE_LABELS: [&str; 7] = [
    "identify", "track", "page", "screen", "group", "alias", UNKNOWN,
];

/// Where `label` (one of [`TYPE_LABELS`]) sits in the per-type arrays.
fn type_slot(label: &str) -> usize {
    TYPE_LABELS
        .iter()
        .position(|l| *l == label)
        .unwrap_or(TYPE_LABELS.len() - 1)
}

/// The statuses whose request counters are kept (others are looked up each time).
const STATUSES: [u16; 10] = [200, 400, 401, 404, 405, 408, 415, 429, 500, 503];

/// Counter handles, taken from the recorder on first use and kept: looking a labelled
/// counter up in the registry costs more than all the rest of the counting.
#[derive(Debug)]
pub(crate) struct Counters {
    sources: HashMap<String, SourceCounters>,
    requests: [OnceLock<Counter>; STATUSES.len()],
    duration: OnceLock<Histogram>,
}

/// The counters of one source, by type.
#[derive(Debug, Default)]
pub(crate) struct SourceCounters {
    received: [OnceLock<Counter>; TYPE_LABELS.len()],
    accepted: [OnceLock<Counter>; TYPE_LABELS.len()],
    deduplicated: [OnceLock<Counter>; TYPE_LABELS.len()],
}

impl Counters {
    /// Counters for these sources.
    pub(crate) fn new<'a>(sources: impl IntoIterator<Item = &'a str>) -> Self {
        let counters = Self {
            sources: sources
                .into_iter()
                .map(|name| (name.to_owned(), SourceCounters::default()))
                .collect(),
            requests: Default::default(),
            duration: OnceLock::new(),
        };
        // Present from the start, at zero, for alerts on the first one (a series that
        // first appears at 1 is no increase to Prometheus).
        counters.count(StatusCode::SERVICE_UNAVAILABLE, 0);
        counters
    }

    /// Counts a Tracking API answer to a request that arrived at `arrived`.
    pub(crate) fn answered(&self, status: StatusCode, arrived: Instant) {
        self.duration
            .get_or_init(|| histogram!(REQUEST_SECONDS))
            .record(arrived.elapsed());
        self.request(status);
    }

    /// Counts a Tracking API answer.
    pub(crate) fn request(&self, status: StatusCode) {
        self.count(status, 1);
    }

    fn count(&self, status: StatusCode, n: u64) {
        let code = status.as_u16();
        match STATUSES.iter().position(|s| *s == code) {
            Some(slot) => self.requests[slot]
                .get_or_init(|| counter!(REQUESTS, "status" => code.to_string()))
                .increment(n),
            None => counter!(REQUESTS, "status" => code.to_string()).increment(n),
        }
    }
}

/// The counts of one request, emitted together once its fate is known.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    received: [u64; TYPE_LABELS.len()],
    accepted: [u64; TYPE_LABELS.len()],
    deduplicated: [u64; TYPE_LABELS.len()],
    /// (type, code) of each refused message.
    rejected: Vec<(&'static str, &'static str)>,
}

impl Tally {
    /// A message arrived.
    pub(crate) fn received(&mut self, kind: &'static str) {
        self.received[type_slot(kind)] += 1;
    }

    /// A message was queued.
    pub(crate) fn accepted(&mut self, kind: &'static str) {
        self.accepted[type_slot(kind)] += 1;
    }

    /// A message was a duplicate.
    pub(crate) fn deduplicated(&mut self, kind: &'static str) {
        self.deduplicated[type_slot(kind)] += 1;
    }

    /// A message was refused.
    pub(crate) fn rejected(&mut self, kind: &'static str, code: &'static str) {
        self.rejected.push((kind, code));
    }

    /// Total queued, duplicates and refused.
    pub(crate) fn totals(&self) -> (u64, u64, u64) {
        (
            self.accepted.iter().sum(),
            self.deduplicated.iter().sum(),
            self.rejected.len() as u64,
        )
    }

    /// Counts everything for `source`; with `stored` false (the store failed) only
    /// the received messages.
    pub(crate) fn emit(&self, counters: &Counters, source: &str, stored: bool) {
        let Some(kept) = counters.sources.get(source) else {
            return;
        };
        let count = |name: &'static str,
                     handles: &[OnceLock<Counter>; TYPE_LABELS.len()],
                     counts: &[u64; TYPE_LABELS.len()]| {
            for (slot, n) in counts.iter().enumerate().filter(|(_, n)| **n > 0) {
                handles[slot]
                    .get_or_init(|| {
                        counter!(name, "source" => source.to_owned(), "type" => TYPE_LABELS[slot])
                    })
                    .increment(*n);
            }
        };
        count(RECEIVED, &kept.received, &self.received);
        if !stored {
            return;
        }
        count(ACCEPTED, &kept.accepted, &self.accepted);
        count(DEDUPLICATED, &kept.deduplicated, &self.deduplicated);
        // Rare, and labelled by code too: looked up each time.
        for (kind, code) in &self.rejected {
            counter!(REJECTED, "source" => source.to_owned(), "type" => *kind, "code" => *code)
                .increment(1);
        }
    }
}
