//! What the ingress counts, through the `metrics` facade, and the names it counts under.
//!
//! Per message: [`RECEIVED`] when it arrives in an authenticated request, then, once
//! the store committed, exactly one of [`ACCEPTED`] (queued), [`DEDUPLICATED`] (seen on
//! its source within the window) or [`REJECTED`] (kept as rejected input). All are
//! labelled `source` and `type` (`unknown` when the message has no known type);
//! rejected also `code`. A request whose store write failed counts as received only.

use std::collections::BTreeMap;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use metrics::{counter, describe_counter, describe_gauge};
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
/// Gauge, set on each scrape of `/metrics`: events waiting for delivery.
pub const QUEUED: &str = "stipple_queued";
/// Gauge, set on each scrape of `/metrics`: dead letters kept.
pub const DEAD_LETTERS: &str = "stipple_dead_letters";
/// Gauge, set on each scrape of `/metrics`: rejected inputs kept.
pub const REJECTED_STORED: &str = "stipple_rejected_stored";

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
    describe_gauge!(QUEUED, "Events waiting for delivery");
    describe_gauge!(DEAD_LETTERS, "Dead letters kept");
    describe_gauge!(REJECTED_STORED, "Rejected inputs kept");
}

/// The `type` label: one of the six types or `unknown`, so labels stay bounded.
pub(crate) fn type_label(kind: Option<&str>) -> &'static str {
    kind.and_then(MessageType::parse)
        .map_or("unknown", MessageType::as_str)
}

/// The counts of one request, emitted together once its fate is known.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    received: BTreeMap<&'static str, u64>,
    accepted: BTreeMap<&'static str, u64>,
    deduplicated: BTreeMap<&'static str, u64>,
    rejected: BTreeMap<(&'static str, &'static str), u64>,
}

impl Tally {
    /// A message arrived.
    pub(crate) fn received(&mut self, kind: &'static str) {
        *self.received.entry(kind).or_default() += 1;
    }

    /// A message was queued.
    pub(crate) fn accepted(&mut self, kind: &'static str) {
        *self.accepted.entry(kind).or_default() += 1;
    }

    /// A message was a duplicate.
    pub(crate) fn deduplicated(&mut self, kind: &'static str) {
        *self.deduplicated.entry(kind).or_default() += 1;
    }

    /// A message was refused.
    pub(crate) fn rejected(&mut self, kind: &'static str, code: &'static str) {
        *self.rejected.entry((kind, code)).or_default() += 1;
    }

    /// Total queued, duplicates and refused.
    pub(crate) fn totals(&self) -> (u64, u64, u64) {
        (
            self.accepted.values().sum(),
            self.deduplicated.values().sum(),
            self.rejected.values().sum(),
        )
    }

    /// Counts everything for `source`; with `stored` false (the store failed) only
    /// the received messages.
    pub(crate) fn emit(&self, source: &str, stored: bool) {
        let count = |name: &'static str, counts: &BTreeMap<&'static str, u64>| {
            for (kind, n) in counts {
                counter!(name, "source" => source.to_owned(), "type" => *kind).increment(*n);
            }
        };
        count(RECEIVED, &self.received);
        if !stored {
            return;
        }
        count(ACCEPTED, &self.accepted);
        count(DEDUPLICATED, &self.deduplicated);
        for ((kind, code), n) in &self.rejected {
            counter!(REJECTED, "source" => source.to_owned(), "type" => *kind, "code" => *code)
                .increment(*n);
        }
    }
}

/// Middleware counting Tracking API answers by status.
pub(crate) async fn count_requests(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    counter!(REQUESTS, "status" => response.status().as_u16().to_string()).increment(1);
    response
}
