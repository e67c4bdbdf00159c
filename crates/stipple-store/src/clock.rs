//! Where the store reads the time: the system clock in production, a manual clock in
//! tests, so dedup windows, leases and retry times can be checked without sleeping.

use std::fmt;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

/// A source of the current time for a store.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;

    /// Microseconds on a clock that moves only forward, at the pace of real time, from
    /// an arbitrary start: comparable only with itself. The SQLite store measures its
    /// in-memory leases on it, so that a step of the wall clock (NTP, a resumed virtual
    /// machine) neither ends leases early, which would send their events twice, nor
    /// holds them for as long as the step. By default, the wall clock.
    fn monotonic_micros(&self) -> i64 {
        self.now().timestamp_micros()
    }
}

/// The operating system's wall clock, and its monotonic clock for leases.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn monotonic_micros(&self) -> i64 {
        static START: OnceLock<Instant> = OnceLock::new();
        let start = START.get_or_init(Instant::now);
        i64::try_from(start.elapsed().as_micros()).unwrap_or(i64::MAX)
    }
}

/// A clock that stands still until told to move: for tests.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<DateTime<Utc>>,
}

impl ManualClock {
    /// A clock showing `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        Self {
            now: Mutex::new(start),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
        let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        *now = now
            .checked_add_signed(by)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
    }

    /// Sets the clock to `to`.
    pub fn set(&self, to: DateTime<Utc>) {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner) = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_clock_s_monotonic_time_never_goes_back() {
        let clock = SystemClock;
        let mut last = clock.monotonic_micros();
        for _ in 0..1000 {
            let now = clock.monotonic_micros();
            assert!(now >= last, "{now} after {last}");
            last = now;
        }
    }
}
