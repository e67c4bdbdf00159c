//! How long to wait before retrying a transient failure: exponential backoff with full
//! jitter, never sooner than the server's `Retry-After`.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with full jitter.
///
/// Attempt `n` (counting from 0) waits a uniformly random time in `[0, ceiling(n)]`,
/// where `ceiling(n) = min(max, min * multiplier^n)`. Full jitter deliberately has no
/// floor other than zero: it spreads retries from many workers best (see "Exponential
/// Backoff And Jitter", AWS Architecture Blog). The one floor is the server's own
/// `Retry-After`, which is always honoured, even above `max`.
///
/// ```
/// use std::time::Duration;
/// use stipple_pointillist::Backoff;
///
/// let backoff = Backoff::default();
/// assert_eq!(backoff.ceiling(0), Duration::from_secs(1));
/// assert_eq!(backoff.ceiling(3), Duration::from_secs(8));
/// assert_eq!(backoff.ceiling(1_000), Duration::from_secs(600));
/// assert!(backoff.delay(3, None) <= Duration::from_secs(8));
/// assert!(backoff.delay(0, Some(Duration::from_secs(30))) >= Duration::from_secs(30));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The ceiling of the first retry (attempt 0).
    pub min: Duration,
    /// The highest ceiling, whatever the attempt.
    pub max: Duration,
    /// Growth of the ceiling per attempt; values below 1 (or NaN) are taken as 1.
    pub multiplier: f64,
}

impl Default for Backoff {
    /// 1 second, doubling, up to 10 minutes.
    fn default() -> Self {
        Backoff {
            min: Duration::from_secs(1),
            max: Duration::from_secs(600),
            multiplier: 2.0,
        }
    }
}

impl Backoff {
    /// The longest [`delay`](Self::delay) for `attempt` (without `Retry-After`):
    /// `min(max, min * multiplier^attempt)`. Never overflows; never decreases as
    /// `attempt` grows.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let min = self.min.min(self.max);
        if attempt == 0 || min.is_zero() {
            return min;
        }
        // `>= 1.0` is false for NaN, so NaN is taken as 1 as well.
        let multiplier = if self.multiplier >= 1.0 {
            self.multiplier
        } else {
            1.0
        };
        let seconds = min.as_secs_f64() * multiplier.powf(f64::from(attempt));
        // An infinite or unrepresentable product is simply past `max`.
        Duration::try_from_secs_f64(seconds)
            .map_or(self.max, |ceiling| ceiling.max(min).min(self.max))
    }

    /// How long to wait before retry `attempt` (counting from 0): uniformly random in
    /// `[0, ceiling(attempt)]`, raised to `retry_after` when the server asked for longer.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let ceiling = self.ceiling(attempt);
        // Past u64 nanoseconds is more than 584 years; cap the draw there.
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        let jittered = Duration::from_nanos(rand::rng().random_range(0..=nanos));
        match retry_after {
            Some(asked) => jittered.max(asked),
            None => jittered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn backoff() -> impl Strategy<Value = Backoff> {
        (0u64..10_000, 0u64..10_000_000, 0.5f64..10.0).prop_map(|(min, max, multiplier)| Backoff {
            min: Duration::from_millis(min),
            max: Duration::from_millis(max),
            multiplier,
        })
    }

    proptest! {
        #[test]
        fn delay_is_within_the_ceiling_and_honours_retry_after(
            backoff in backoff(),
            attempt in any::<u32>(),
            retry_after in proptest::option::of(0u64..100_000),
        ) {
            let retry_after = retry_after.map(Duration::from_millis);
            let delay = backoff.delay(attempt, retry_after);
            let ceiling = backoff.ceiling(attempt);
            prop_assert!(delay <= ceiling.max(retry_after.unwrap_or_default()));
            if let Some(asked) = retry_after {
                prop_assert!(delay >= asked);
            }
        }

        #[test]
        fn ceiling_grows_and_stays_capped(backoff in backoff(), attempt in any::<u32>()) {
            let here = backoff.ceiling(attempt);
            prop_assert!(here <= backoff.max);
            prop_assert!(here >= backoff.min.min(backoff.max));
            if let Some(next) = attempt.checked_add(1) {
                prop_assert!(backoff.ceiling(next) >= here);
            }
        }
    }

    #[test]
    fn the_default_doubles_from_one_second_to_ten_minutes() {
        let backoff = Backoff::default();
        let ceilings: Vec<u64> = (0..12).map(|a| backoff.ceiling(a).as_secs()).collect();
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600]);
        assert_eq!(backoff.ceiling(u32::MAX), Duration::from_secs(600));
    }

    #[test]
    fn extreme_settings_do_not_panic() {
        for backoff in [
            Backoff {
                min: Duration::MAX,
                max: Duration::MAX,
                multiplier: 2.0,
            },
            Backoff {
                min: Duration::from_secs(1),
                max: Duration::MAX,
                multiplier: f64::INFINITY,
            },
            Backoff {
                min: Duration::from_secs(1),
                max: Duration::MAX,
                multiplier: f64::NAN,
            },
            Backoff {
                min: Duration::ZERO,
                max: Duration::ZERO,
                multiplier: 2.0,
            },
            Backoff {
                min: Duration::from_secs(10),
                max: Duration::from_secs(1),
                multiplier: 2.0,
            },
        ] {
            for attempt in [0, 1, 64, 1_000, u32::MAX] {
                let ceiling = backoff.ceiling(attempt);
                assert!(ceiling <= backoff.max);
                let _ = backoff.delay(attempt, Some(Duration::MAX));
            }
        }
    }

    #[test]
    fn delays_spread_over_the_whole_range_below_the_ceiling() {
        // Full jitter: uniform in [0, ceiling], so that clients that failed together do
        // not retry together. 2,000 draws: the bounds below fail by chance in
        // under one run in 10^40.
        let backoff = Backoff::default();
        let ceiling = backoff.ceiling(3).as_secs_f64();
        let draws: Vec<f64> = (0..2_000)
            .map(|_| backoff.delay(3, None).as_secs_f64() / ceiling)
            .collect();
        let min = draws.iter().copied().fold(f64::INFINITY, f64::min);
        let max = draws.iter().copied().fold(0.0, f64::max);
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!(min < 0.25 && max > 0.75, "{min}..{max}");
        assert!((0.4..0.6).contains(&mean), "mean {mean}");
        // A Retry-After raises only the draws below it.
        let asked = Duration::from_secs_f64(ceiling / 2.0);
        let raised: Vec<Duration> = (0..2_000).map(|_| backoff.delay(3, Some(asked))).collect();
        assert!(raised.iter().all(|d| *d >= asked));
        assert!(
            raised.iter().any(|d| *d > asked),
            "never above the Retry-After"
        );
    }

    #[test]
    fn min_above_max_is_capped_at_max() {
        let backoff = Backoff {
            min: Duration::from_secs(10),
            max: Duration::from_secs(1),
            multiplier: 2.0,
        };
        assert_eq!(backoff.ceiling(0), Duration::from_secs(1));
        assert_eq!(backoff.ceiling(5), Duration::from_secs(1));
    }

    #[test]
    fn a_multiplier_below_one_keeps_the_ceiling_flat() {
        let backoff = Backoff {
            min: Duration::from_secs(2),
            max: Duration::from_secs(60),
            multiplier: 0.5,
        };
        assert_eq!(backoff.ceiling(7), Duration::from_secs(2));
    }
}
