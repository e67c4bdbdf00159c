//! Warnings that a store outage repeats for every request (a full disk fails every
//! commit, every append, every delivery step): [`Throttle`] lets one through per
//! interval and counts the rest, so that the log says what is wrong without drowning,
//! or filling the very disk that is full. Metrics still count every occurrence.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How often the store's repeated warnings are let through (the ingress's and
/// delivery's too).
pub const STORE_WARNINGS_EVERY: Duration = Duration::from_secs(10);

/// Lets a repeated warning through once per interval; see the module docs.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    last: Option<Instant>,
    held_back: u64,
}

impl Throttle {
    /// Lets one occurrence through per `every`.
    pub const fn new(every: Duration) -> Self {
        Self {
            every,
            state: Mutex::new(State {
                last: None,
                held_back: 0,
            }),
        }
    }

    /// Whether to log this occurrence: `Some` with how many were held back since the
    /// last one let through, `None` to hold this one back.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match state.last {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                state.held_back += 1;
                None
            }
            _ => {
                state.last = Some(now);
                Some(std::mem::take(&mut state.held_back))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_occurrence_per_interval_is_let_through_with_the_count_held_back() {
        let throttle = Throttle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(throttle.admit_at(t0), Some(0));
        for s in [1, 5, 9] {
            assert_eq!(throttle.admit_at(t0 + Duration::from_secs(s)), None);
        }
        assert_eq!(throttle.admit_at(t0 + Duration::from_secs(10)), Some(3));
        assert_eq!(throttle.admit_at(t0 + Duration::from_secs(11)), None);
        assert_eq!(throttle.admit_at(t0 + Duration::from_secs(30)), Some(1));
    }
}
