//! What delivery reports, as typed events: each `emit` logs and counts one thing.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{
    Counter, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge,
    histogram,
};
use stipple_store::{STORE_WARNINGS_EVERY, Throttle};
use tracing::{debug, info, warn};

/// The metrics delivery reports, by name.
const DELIVERED: &str = "stipple_delivered_total";
const LATENCY_SECONDS: &str = "stipple_delivery_latency_seconds";
const RETRIED: &str = "stipple_retried_total";
const DEAD_LETTERED: &str = "stipple_dead_lettered_total";
const SKIPPED: &str = "stipple_skipped_total";
const PAUSED: &str = "stipple_delivery_paused";
const STORE_ERRORS: &str = "stipple_delivery_store_errors_total";

/// Why an event was dead-lettered: the `reason` label's values.
pub(crate) const REJECTED: &str = "rejected";
pub(crate) const RETRY_HORIZON: &str = "retry_horizon";
pub(crate) const UNMAPPABLE: &str = "unmappable";

/// Describes delivery's metrics to the installed recorder, and starts each series at
/// zero: a counter that first appears at 1 never makes Prometheus's `increase()` see a
/// first dead letter, nor a `delivery_paused == 1` rule see anything before a pause.
pub fn describe_metrics() {
    describe_counter!(DELIVERED, "Events Pointillist accepted");
    describe_histogram!(
        LATENCY_SECONDS,
        Unit::Seconds,
        "Time from an event's queueing to Pointillist's acceptance"
    );
    describe_counter!(
        RETRIED,
        "Deliveries that failed transiently and were put off for a retry"
    );
    describe_counter!(DEAD_LETTERED, "Events moved to the dead letters, by reason");
    describe_counter!(
        SKIPPED,
        "Events acknowledged unsent: their integrations turn Pointillist off"
    );
    describe_gauge!(
        PAUSED,
        "1 while delivery is paused (token refused, or an outage), else 0"
    );
    describe_counter!(
        STORE_ERRORS,
        "Store calls of delivery that failed (retried)"
    );
    for name in [DELIVERED, RETRIED, SKIPPED, STORE_ERRORS] {
        counter!(name).increment(0);
    }
    for reason in [REJECTED, RETRY_HORIZON, UNMAPPABLE] {
        counter!(DEAD_LETTERED, "reason" => reason).increment(0);
    }
    gauge!(PAUSED).set(0.0);
}

pub(crate) struct Delivered {
    pub(crate) latency: Duration,
}

impl Delivered {
    /// Counts into `handles` (one event per delivered event: looked up once, not each time).
    pub(crate) fn emit(self, handles: &DeliveredHandles) {
        handles
            .delivered
            .get_or_init(|| counter!(DELIVERED))
            .increment(1);
        handles
            .latency
            .get_or_init(|| histogram!(LATENCY_SECONDS))
            .record(self.latency.as_secs_f64());
    }
}

/// The handles [`Delivered`] counts into, taken from the recorder on first use.
#[derive(Debug, Default)]
pub(crate) struct DeliveredHandles {
    delivered: OnceLock<Counter>,
    latency: OnceLock<Histogram>,
}

pub(crate) struct Retried<'a> {
    pub(crate) message_id: &'a str,
    pub(crate) attempts: u32,
    pub(crate) delay: Duration,
    pub(crate) reason: &'a str,
}

/// Failed sends: Pointillist unreachable fails every event in flight, so one warning is
/// logged per interval (each is at debug), with how many like it were held back.
static SEND_FAILURES: Throttle = Throttle::new(STORE_WARNINGS_EVERY);

impl Retried<'_> {
    pub(crate) fn emit(self) {
        counter!(RETRIED).increment(1);
        debug!(message_id = self.message_id, attempts = self.attempts, delay = ?self.delay, reason = self.reason, "delivery will be retried");
        if let Some(held_back) = SEND_FAILURES.admit() {
            warn!(
                message_id = self.message_id,
                reason = self.reason,
                held_back,
                "sending to Pointillist failed; the event stays queued and is retried"
            );
        }
    }
}

pub(crate) struct DeadLettered<'a> {
    pub(crate) message_id: &'a str,
    pub(crate) reason: &'static str,
    pub(crate) detail: &'a str,
}

/// Dead letters: a mistake that concerns every event (a wrong `actor_type`, say) makes
/// Pointillist reject each, so one is logged per interval (each is at debug), with how
/// many like it were held back; `stipple dead-letters list` has them all.
static DEAD_LETTERS: Throttle = Throttle::new(STORE_WARNINGS_EVERY);

impl DeadLettered<'_> {
    pub(crate) fn emit(self) {
        counter!(DEAD_LETTERED, "reason" => self.reason).increment(1);
        debug!(
            message_id = self.message_id,
            reason = self.reason,
            detail = self.detail,
            "event dead-lettered"
        );
        if let Some(held_back) = DEAD_LETTERS.admit() {
            warn!(
                message_id = self.message_id,
                reason = self.reason,
                detail = self.detail,
                held_back,
                "event dead-lettered (`stipple dead-letters list` shows them all)"
            );
        }
    }
}

pub(crate) struct Skipped;

impl Skipped {
    pub(crate) fn emit(self) {
        counter!(SKIPPED).increment(1);
    }
}

pub(crate) struct Paused {
    pub(crate) status: u16,
}

impl Paused {
    pub(crate) fn emit(self) {
        gauge!(PAUSED).set(1.0);
        warn!(
            status = self.status,
            "Pointillist refuses the API token: delivery paused, events stay queued"
        );
    }
}

pub(crate) struct OutagePaused<'a> {
    pub(crate) failures: usize,
    pub(crate) reason: &'a str,
}

impl OutagePaused<'_> {
    pub(crate) fn emit(self) {
        gauge!(PAUSED).set(1.0);
        warn!(
            failures = self.failures,
            last = self.reason,
            "Pointillist fails every request: delivery paused, events stay queued; probing with one event at a time until it answers"
        );
    }
}

pub(crate) struct Resumed;

impl Resumed {
    pub(crate) fn emit(self) {
        gauge!(PAUSED).set(0.0);
        info!("Pointillist answers again: delivery resumed");
    }
}

pub(crate) struct StoreTrouble<'a> {
    pub(crate) during: &'static str,
    pub(crate) error: &'a stipple_store::StoreError,
}

/// Store errors in delivery: an outage (a full disk) fails a write for every event in
/// flight, so one is logged per interval, with how many like it were held back.
static STORE_TROUBLE: Throttle = Throttle::new(STORE_WARNINGS_EVERY);

impl StoreTrouble<'_> {
    pub(crate) fn emit(self) {
        counter!(STORE_ERRORS).increment(1);
        if let Some(held_back) = STORE_TROUBLE.admit() {
            warn!(
                during = self.during,
                error = %self.error,
                held_back,
                "store error in delivery; will try again"
            );
        }
    }
}
