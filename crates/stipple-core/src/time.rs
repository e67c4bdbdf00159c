//! ISO-8601 timestamps in, RFC 3339 UTC with milliseconds out.

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};

/// Parses a Segment timestamp: RFC 3339 with any offset; ISO 8601's other offset forms
/// (`+0100`, `+01`: Java's `SimpleDateFormat` writes the first); or a date-time without
/// an offset, which is taken as UTC (some server libraries send those).
pub fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    if let Some(t) = parse_canonical(text.as_bytes()) {
        return Some(t);
    }
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    // `%#z`: an offset with or without a colon, and with or without its minutes.
    for format in ["%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f%#z"] {
        if let Ok(t) = DateTime::parse_from_str(text, format) {
            return Some(t.with_timezone(&Utc));
        }
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Some(t.and_utc());
        }
    }
    None
}

/// The fast path for the form the ingress itself writes, `2026-11-28T12:00:00.123Z`,
/// which every stored message carries: several times faster than the general parser.
fn parse_canonical(b: &[u8]) -> Option<DateTime<Utc>> {
    if b.len() != 24
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    if b[19] != b'.' || b[23] != b'Z' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<u32> {
        b[range].iter().try_fold(0u32, |acc, &d| {
            d.is_ascii_digit().then(|| acc * 10 + u32::from(d - b'0'))
        })
    };
    let date =
        chrono::NaiveDate::from_ymd_opt(i32::try_from(num(0..4)?).ok()?, num(5..7)?, num(8..10)?)?;
    let time = chrono::NaiveTime::from_hms_milli_opt(
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
        num(20..23)?,
    )?;
    Some(date.and_time(time).and_utc())
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
    fn the_fast_path_agrees_with_the_general_parser() {
        for text in [
            "2026-11-28T12:00:00.123Z",
            "2000-02-29T23:59:59.999Z",
            "1970-01-01T00:00:00.000Z",
        ] {
            let general = DateTime::parse_from_rfc3339(text)
                .unwrap()
                .with_timezone(&Utc);
            assert_eq!(parse_canonical(text.as_bytes()), Some(general), "{text}");
        }
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
        check(
            "2026-11-28T12:00:00.000+0000",
            Some("2026-11-28T12:00:00.000Z"),
        );
        check("2026-11-28T13:30:00+0130", Some("2026-11-28T12:00:00.000Z"));
        check(
            "2026-11-28T10:00:00.25-02",
            Some("2026-11-28T12:00:00.250Z"),
        );
        check(
            "2026-11-28 13:00:00+01:00",
            Some("2026-11-28T12:00:00.000Z"),
        );
        check("2026-11-28T12:00:00", Some("2026-11-28T12:00:00.000Z"));
        check("2026-11-28 12:00:00.25", Some("2026-11-28T12:00:00.250Z"));
        check(" 2026-11-28T12:00:00Z ", Some("2026-11-28T12:00:00.000Z"));
        check("yesterday", None);
        check("", None);
        check("2026-13-28T12:00:00Z", None);
        check("2026-02-30T12:00:00.000Z", None);
        check("2026-11-28T24:00:00.000Z", None);
        check("2026-11-28T12:61:00.000Z", None);
        check("2026-11-28T1a:00:00.000Z", None);
        check("2026-11-28T12:00:00+2500", None);
        check("2026-11-28T12:00:00+01:00:00", None);
    }
}
