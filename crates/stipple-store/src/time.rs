//! Times as both stores keep them: whole microseconds since the Unix epoch, with
//! saturating arithmetic so absurd durations cannot overflow.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// Microseconds since the Unix epoch.
pub(crate) type Micros = i64;

/// `t` in microseconds since the epoch.
pub(crate) fn to_micros(t: DateTime<Utc>) -> Micros {
    t.timestamp_micros()
}

/// Back from microseconds; out-of-range values (never written by the stores) read as the epoch.
pub(crate) fn from_micros(us: Micros) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

/// A duration in microseconds, saturating.
pub(crate) fn duration_micros(d: Duration) -> Micros {
    Micros::try_from(d.as_micros()).unwrap_or(Micros::MAX)
}

/// What a purge of rows `older_than` old deletes up to, at `now`: everything for zero,
/// whatever the clock says.
pub(crate) fn purge_cutoff(now: Micros, older_than: Duration) -> Micros {
    if older_than.is_zero() {
        Micros::MAX
    } else {
        now.saturating_sub(duration_micros(older_than))
    }
}
