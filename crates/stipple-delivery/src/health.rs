//! The destination's health as delivery sees it: delivering, or paused, for credentials
//! (a 401/403) or for an outage (transient failures one after another, with no answer
//! from Pointillist in between).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::Serialize;
use stipple_store::EventId;

/// Most failing events remembered at once: far past any pause's threshold, and a bound
/// on what a long outage's probes add.
const MAX_FAILING: usize = 65_536;

/// Shared between the delivery pipeline (which writes it) and `/readyz` and the
/// metrics (which read it).
#[derive(Debug, Default)]
pub struct DeliveryHealth {
    paused: AtomicBool,
    detail: Mutex<String>,
    /// How many distinct events failed (transiently) since Pointillist last answered:
    /// the size of `failing`, read without its lock.
    failures: AtomicUsize,
    /// Those events (up to [`MAX_FAILING`]). Distinct, so that one event Pointillist
    /// always fails, retried on its backoff while nothing else is sent, never reads as
    /// an outage: paused, it would be probed alone for ever, its horizon stopped.
    failing: Mutex<HashSet<EventId>>,
    /// The last of those failures, for `/readyz` before they pause delivery.
    last_failure: Mutex<String>,
    /// Paused because Pointillist refused the token (not for an outage).
    for_credentials: AtomicBool,
    /// When delivery last resumed after a pause.
    resumed: Mutex<Option<DateTime<Utc>>>,
    /// The latest end of a wait Pointillist asked for (`Retry-After`): a pause's probe
    /// does not go out before it.
    asked_until: Mutex<Option<Instant>>,
}

/// A snapshot for `/readyz` and `stipple status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthStatus {
    /// False while delivery is paused: Pointillist refuses the API token, or fails
    /// every request.
    pub healthy: bool,
    /// What is wrong, or `"delivering"` (with the failures in a row so far, if any).
    pub detail: String,
}

impl DeliveryHealth {
    /// Whether delivery is paused (for credentials or an outage).
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// The current status.
    pub fn status(&self) -> HealthStatus {
        if self.is_paused() {
            HealthStatus {
                healthy: false,
                detail: self.detail.lock().clone(),
            }
        } else {
            let failures = self.failures.load(Ordering::Acquire);
            let detail = if failures == 0 {
                "delivering".into()
            } else {
                format!(
                    "delivering; {failures} event(s) failed in a row (the last: {}) and are retried",
                    self.last_failure.lock()
                )
            };
            HealthStatus {
                healthy: true,
                detail,
            }
        }
    }

    /// Pauses delivery; returns true when it was running until now.
    pub(crate) fn pause(&self, status: u16) -> bool {
        self.pause_because(
            format!(
                "paused: Pointillist answered {status} to the API token; events stay queued, probing until it is accepted"
            ),
            true,
            true,
        )
    }

    /// When an event queued at `enqueued_at` started its retry horizon: then, or when
    /// delivery last resumed after a pause if that is later. `None` while paused: no
    /// horizon runs then. Time paused (Pointillist refusing the token, or answering
    /// nothing at all) is not time spent trying the event: it waits, as every other
    /// event does, and is never discarded for a fault that is not its own; otherwise a
    /// pause longer than the horizon would leave every event one transient failure from
    /// its dead letter once Pointillist is back. (Kept in memory: a restart forgets an
    /// earlier pause.)
    pub(crate) fn retry_horizon_start(&self, enqueued_at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.is_paused() {
            return None;
        }
        Some(match *self.resumed.lock() {
            Some(resumed) => resumed.max(enqueued_at),
            None => enqueued_at,
        })
    }

    /// Pointillist asked, with `Retry-After`, for no request before `asked` has passed.
    pub(crate) fn asked_to_wait(&self, asked: Duration) {
        if let Some(until) = Instant::now().checked_add(asked) {
            let mut asked_until = self.asked_until.lock();
            *asked_until = (*asked_until).max(Some(until));
        }
    }

    /// What is left of the waits Pointillist asked for.
    pub(crate) fn asked_wait_left(&self) -> Option<Duration> {
        let until = (*self.asked_until.lock())?;
        until.checked_duration_since(Instant::now())
    }

    /// Counts a transient failure of `event`, for `reason`; returns how many distinct
    /// events have failed since Pointillist last answered.
    pub(crate) fn failed(&self, event: EventId, reason: &str) -> usize {
        reason.clone_into(&mut self.last_failure.lock());
        let mut failing = self.failing.lock();
        if failing.len() < MAX_FAILING {
            failing.insert(event);
        }
        let failures = failing.len();
        self.failures.store(failures, Ordering::Release);
        failures
    }

    /// Forgets the failures in a row.
    fn clear_failures(&self) {
        let mut failing = self.failing.lock();
        failing.clear();
        self.failures.store(0, Ordering::Release);
    }

    /// Pointillist answered (delivered or rejected an event): the failures in a row
    /// start again from zero.
    pub(crate) fn answered(&self) {
        // Read first: every delivery writing the shared counter would bounce its cache
        // line between the delivery threads.
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.clear_failures();
        }
    }

    /// Pauses delivery for an outage after `failures` distinct events failed in a row, the
    /// last for `reason`; returns true when it was running until now.
    pub(crate) fn pause_for_outage(&self, failures: usize, reason: &str) -> bool {
        self.pause_because(
            format!(
                "paused: Pointillist failed {failures} events in a row (the last: {reason}); events stay queued, probing until it answers"
            ),
            false,
            false,
        )
    }

    /// Pauses with `why`, replacing the reason of a pause already on when `over_a_pause`,
    /// or when both are outages (so that `/readyz` tells the latest failure, not the one
    /// that paused); returns true when delivery was running until now. Under the reason's
    /// lock, so that of two pauses racing the second sees the first, and a refused token
    /// is never reported as an outage.
    fn pause_because(&self, why: String, over_a_pause: bool, for_credentials: bool) -> bool {
        let mut detail = self.detail.lock();
        if self.is_paused() && !over_a_pause {
            if !for_credentials && !self.for_credentials.load(Ordering::Acquire) {
                *detail = why;
            }
            return false;
        }
        *detail = why;
        if for_credentials {
            self.for_credentials.store(true, Ordering::Release);
        }
        !self.paused.swap(true, Ordering::AcqRel)
    }

    /// Resumes delivery; returns true when it was paused until now.
    pub(crate) fn resume(&self) -> bool {
        let _detail = self.detail.lock();
        self.clear_failures();
        self.for_credentials.store(false, Ordering::Release);
        if !self.is_paused() {
            return false;
        }
        // Before the pause ends: a failure seen right after it then counts from here.
        *self.resumed.lock() = Some(Utc::now());
        self.paused.swap(false, Ordering::AcqRel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_count_in_a_row_until_pointillist_answers() {
        let health = DeliveryHealth::default();
        assert_eq!(health.status().detail, "delivering");
        assert_eq!(health.failed(1, "connection refused"), 1);
        assert_eq!(health.failed(2, "503"), 2);
        assert_eq!(
            health.failed(2, "503"),
            2,
            "one event failing again is no more"
        );
        let status = health.status();
        assert!(status.healthy, "failures alone do not pause");
        assert_eq!(
            status.detail,
            "delivering; 2 event(s) failed in a row (the last: 503) and are retried"
        );
        health.answered();
        assert_eq!(health.status().detail, "delivering");
        assert_eq!(
            health.failed(2, "503"),
            1,
            "an answer starts the count again"
        );
        assert!(health.pause_for_outage(1, "429"));
        assert!(health.status().detail.contains("(the last: 429)"));
        // Probes that fail otherwise while paused: the detail follows them.
        assert!(!health.pause_for_outage(2, "503"), "already paused");
        let status = health.status();
        assert!(!status.healthy);
        assert!(
            status
                .detail
                .contains("failed 2 events in a row (the last: 503)"),
            "{}",
            status.detail
        );
        assert!(health.resume());
        assert_eq!(
            health.failed(2, "503"),
            1,
            "resuming starts the count again"
        );
        assert!(health.status().healthy);
    }

    #[test]
    fn an_outage_does_not_hide_a_credentials_pause() {
        let health = DeliveryHealth::default();
        assert!(health.pause(401));
        assert!(!health.pause_for_outage(100, "503"));
        assert!(health.status().detail.contains("401"));
    }
}
