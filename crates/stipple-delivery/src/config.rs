//! Delivery settings.

use std::time::Duration;

use stipple_pointillist::Backoff;

/// How delivery behaves. Every field has a sensible default.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Requests to Pointillist in flight at once.
    pub concurrency: usize,
    /// Most events leased in one store round trip.
    pub lease_batch: usize,
    /// How long a lease lasts before an unacknowledged event is due again.
    pub lease_for: Duration,
    /// How long after it was queued an event keeps being retried before it is
    /// dead-lettered.
    pub retry_horizon: Duration,
    /// Backoff between retries of one event.
    pub backoff: Backoff,
    /// Backoff between probes while delivery is paused (for credentials or an outage).
    pub probe_backoff: Backoff,
    /// Distinct events failing (transiently) in a row, with no answer from Pointillist in
    /// between, after which
    /// delivery pauses for an outage and probes with one event at a time instead of
    /// trying every queued event on its own backoff. Counted across a service's
    /// pipelines: set it from their total concurrency (twice it by default).
    pub outage_after: usize,
    /// How long to wait before looking again when nothing is due. Events queued meanwhile
    /// end the wait at once where the store signals them ([`stipple_store::Store::queued_signal`]):
    /// this finds retries that fell due and leases that ran out.
    pub idle_poll: Duration,
    /// How long shutdown waits for requests in flight.
    pub shutdown_grace: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            concurrency: 32,
            lease_batch: 256,
            lease_for: Duration::from_secs(300),
            retry_horizon: Duration::from_secs(72 * 3600),
            backoff: Backoff::default(),
            probe_backoff: Backoff {
                min: Duration::from_secs(5),
                max: Duration::from_secs(60),
                multiplier: 2.0,
            },
            outage_after: 64,
            idle_poll: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}
