//! ISO-8601 timestamps in, RFC 3339 UTC with milliseconds out.

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};

/// Parses a Segment timestamp: RFC 3339 with any offset, or a date-time without an
/// offset, which is taken as UTC (some server libraries send those).
pub fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Some(t.and_utc());
        }
    }
    None
}

/// Formats a time the way Pointillist's `eventTime` wants it: `2026-11-28T12:00:00.123Z`.
pub fn format_timestamp(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Option<&str>) {
        assert_eq!(
            parse_timestamp(input).map(format_timestamp).as_deref(),
            expected,
            "{input}"
        );
    }

    #[test]
    fn parses_the_forms_clients_send() {
        check("2026-11-28T12:00:00.123Z", Some("2026-11-28T12:00:00.123Z"));
        check("2026-11-28T12:00:00Z", Some("2026-11-28T12:00:00.000Z"));
        check(
            "2026-11-28T13:00:00.5+01:00",
            Some("2026-11-28T12:00:00.500Z"),
        );
        check(
            "2026-11-28T12:00:00.123456789Z",
            Some("2026-11-28T12:00:00.123Z"),
        );
        check("2026-11-28T12:00:00", Some("2026-11-28T12:00:00.000Z"));
        check("2026-11-28 12:00:00.25", Some("2026-11-28T12:00:00.250Z"));
        check(" 2026-11-28T12:00:00Z ", Some("2026-11-28T12:00:00.000Z"));
        check("yesterday", None);
        check("", None);
        check("2026-13-28T12:00:00Z", None);
    }
}
