//! Fault injection: the ways the mock can misbehave, on purpose.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Faults the mock injects into `POST /event`; the default injects none.
///
/// Settable when the mock starts ([`MockConfig::faults`](crate::MockConfig::faults)) and at
/// run time ([`MockServer::set_faults`](crate::MockServer::set_faults) or
/// `PUT /mock/faults`). In JSON, durations are written the humantime way (`"300ms"`,
/// `"2s"`) and every field may be left out:
///
/// ```
/// let faults: stipple_mock::Faults =
///     serde_json::from_str(r#"{ "error_rate": 0.1, "latency": "20ms" }"#).unwrap();
/// assert_eq!(faults.latency, std::time::Duration::from_millis(20));
/// assert_eq!(faults.throttle_rate, 0.0);
/// ```
///
/// Each request draws one random number that picks at most one of drop, error and
/// throttle, in that order, so with rates summing to at most 1 each share is exactly
/// its rate. A rate of 0 (or less, or NaN) never fires; 1 (or more) always fires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Share of requests answered 500, 502 or 503 (picked at random).
    pub error_rate: f64,
    /// Share of requests answered 429 with `Retry-After: retry_after_secs`.
    pub throttle_rate: f64,
    /// The `Retry-After` seconds sent with a 429 (default 1).
    pub retry_after_secs: u64,
    /// Answer 401 to every event for this long, counted from when these faults were set.
    #[serde(with = "humantime_serde")]
    pub unauthorized_for: Option<Duration>,
    /// Delay added before answering (or dropping) every event request.
    #[serde(with = "humantime_serde")]
    pub latency: Duration,
    /// Share of requests whose connection is reset without any answer.
    pub drop_rate: f64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            error_rate: 0.0,
            throttle_rate: 0.0,
            retry_after_secs: 1,
            unauthorized_for: None,
            latency: Duration::ZERO,
            drop_rate: 0.0,
        }
    }
}

/// A [`Faults`] value that makes no sense, refused by `PUT /mock/faults`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` must be a number from 0 to 1, as a share of requests")]
pub struct InvalidFaults {
    /// The offending field.
    pub field: &'static str,
}

impl Faults {
    /// Checks that every rate is a share between 0 and 1.
    pub fn validate(&self) -> Result<(), InvalidFaults> {
        for (field, rate) in [
            ("error_rate", self.error_rate),
            ("throttle_rate", self.throttle_rate),
            ("drop_rate", self.drop_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(InvalidFaults { field });
            }
        }
        Ok(())
    }

    /// Picks the fault for one request from a uniform draw in `[0, 1)`.
    pub(crate) fn pick(&self, draw: f64) -> Option<Injected> {
        let mut threshold = 0.0;
        for (rate, fault) in [
            (self.drop_rate, Injected::Drop),
            (self.error_rate, Injected::Error),
            (self.throttle_rate, Injected::Throttle),
        ] {
            if rate >= 1.0 {
                return Some(fault);
            }
            // `max` turns NaN and negative rates into "never".
            threshold += rate.max(0.0);
            if draw < threshold {
                return Some(fault);
            }
        }
        None
    }
}

/// The fault picked for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Injected {
    Drop,
    Error,
    Throttle,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_in_order_and_in_proportion() {
        let faults = Faults {
            drop_rate: 0.1,
            error_rate: 0.2,
            throttle_rate: 0.3,
            ..Faults::default()
        };
        assert_eq!(faults.pick(0.05), Some(Injected::Drop));
        assert_eq!(faults.pick(0.15), Some(Injected::Error));
        assert_eq!(faults.pick(0.45), Some(Injected::Throttle));
        assert_eq!(faults.pick(0.65), None);
        assert_eq!(Faults::default().pick(0.0), None);
    }

    #[test]
    fn a_rate_of_one_always_fires_and_nan_never() {
        let always = Faults {
            error_rate: 1.0,
            ..Faults::default()
        };
        assert_eq!(always.pick(0.999_999), Some(Injected::Error));
        let nan = Faults {
            error_rate: f64::NAN,
            ..Faults::default()
        };
        assert_eq!(nan.pick(0.0), None);
        assert!(nan.validate().is_err());
    }

    #[test]
    fn durations_are_readable_in_json() {
        let faults = Faults {
            unauthorized_for: Some(Duration::from_millis(300)),
            latency: Duration::from_secs(2),
            ..Faults::default()
        };
        let json = serde_json::to_value(&faults).unwrap();
        assert_eq!(json["unauthorized_for"], "300ms");
        assert_eq!(json["latency"], "2s");
        let back: Faults = serde_json::from_value(json).unwrap();
        assert_eq!(back, faults);
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_str::<Faults>(r#"{"eror_rate": 1}"#).is_err());
    }
}
