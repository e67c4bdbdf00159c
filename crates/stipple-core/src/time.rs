//! ISO-8601 timestamps in, RFC 3339 UTC with milliseconds out.

use chrono::{
    DateTime, Datelike as _, NaiveDate, NaiveDateTime, NaiveTime, SecondsFormat, Timelike as _, Utc,
};

/// Parses a Segment timestamp: RFC 3339 with any offset; ISO 8601's other offset forms
/// (`+0100`, `+01`: Java's `SimpleDateFormat` writes the first); a date-time without an
/// offset, which is taken as UTC (some server libraries send those); ISO 8601's reduced
/// precisions, minutes without seconds (`2026-11-28T12:00Z`) or a date alone (its
/// midnight, UTC); and its comma as the decimal sign (`12:00:00,5Z`).
pub fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    if let Some(t) = parse_canonical(text.as_bytes()) {
        return Some(t);
    }
    let text = text.trim();
    let parsed = match text.split_once(',') {
        Some((whole, fraction)) => parse_general(&format!("{whole}.{fraction}")),
        None => parse_general(text),
    }?;
    // A second `:60` (chrono takes it at any minute, in any offset) is read as the end
    // of second 59, as Java's `Instant` reads a leap second: no receiver of an RFC 3339
    // time has to know the leap seconds, and most refuse the ones that are not.
    match parsed.nanosecond().checked_sub(1_000_000_000) {
        Some(nanos) => parsed.with_nanosecond(nanos),
        None => Some(parsed),
    }
}

/// Whether `time` can be written as RFC 3339 (years 0000 to 9999), as Pointillist's
/// `eventTime` must be.
pub(crate) fn is_rfc3339_year(time: DateTime<Utc>) -> bool {
    (0..=9999).contains(&time.year())
}

/// [`parse_timestamp`]'s forms but the fast path's and the comma's.
fn parse_general(text: &str) -> Option<DateTime<Utc>> {
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
    if let Ok(t) = DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M%#z") {
        return Some(t.with_timezone(&Utc));
    }
    if let Ok(t) = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M") {
        return Some(t.and_utc());
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .map(|date| date.and_time(NaiveTime::MIN).and_utc())
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
///
/// Written digit by digit for the years 0 to 9999 (twice a message at the ingress, once
/// in delivery): about 420 instructions a call, the `String` included, against 730 for
/// chrono's general formatter, which writes the rest (other years, a leap second).
pub fn format_timestamp(time: DateTime<Utc>) -> String {
    let (date, clock) = (time.date_naive(), time.time());
    let (year, millis) = (date.year(), clock.nanosecond() / 1_000_000);
    if !(0..=9999).contains(&year) || millis > 999 {
        return time.to_rfc3339_opts(SecondsFormat::Millis, true);
    }
    let mut text = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, digits: usize, mut value: u32| {
        for slot in text[at..at + digits].iter_mut().rev() {
            // A digit: `value % 10` is below 10.
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year.unsigned_abs());
    put(5, 2, date.month());
    put(8, 2, date.day());
    put(11, 2, clock.hour());
    put(14, 2, clock.minute());
    put(17, 2, clock.second());
    put(20, 3, millis);
    // ASCII digits and separators: always UTF-8 (the fallback is never taken).
    match std::str::from_utf8(&text) {
        Ok(text) => text.to_owned(),
        Err(_) => time.to_rfc3339_opts(SecondsFormat::Millis, true),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// The digit-by-digit formatter writes what chrono's does, over chrono's whole
        /// range of times (years -262,143 to 262,142, leap seconds included).
        #[test]
        fn format_timestamp_writes_what_chrono_writes(
            millis in DateTime::<Utc>::MIN_UTC.timestamp_millis()..=DateTime::<Utc>::MAX_UTC.timestamp_millis(),
            nanos in 0u32..1_000_000,
            leap in any::<bool>(),
        ) {
            let time = DateTime::from_timestamp_millis(millis).unwrap();
            let time = time.with_nanosecond(time.nanosecond() + nanos).unwrap();
            let time = if leap && time.second() == 59 {
                time.with_nanosecond(time.nanosecond() + 1_000_000_000).unwrap()
            } else {
                time
            };
            prop_assert_eq!(
                format_timestamp(time),
                time.to_rfc3339_opts(SecondsFormat::Millis, true)
            );
        }

        /// The same over the years messages carry, which the range above seldom hits.
        #[test]
        fn format_timestamp_writes_what_chrono_writes_in_four_digit_years(
            millis in -62_167_219_200_000i64..253_402_300_800_000,
        ) {
            let time = DateTime::from_timestamp_millis(millis).unwrap();
            prop_assert_eq!(
                format_timestamp(time),
                time.to_rfc3339_opts(SecondsFormat::Millis, true)
            );
        }
    }

    #[test]
    fn format_timestamp_at_the_edges_of_four_digit_years() {
        for (text, expected) in [
            ("0000-01-01T00:00:00Z", "0000-01-01T00:00:00.000Z"),
            ("9999-12-31T23:59:59.999999999Z", "9999-12-31T23:59:59.999Z"),
            ("2016-12-31T23:59:60.5Z", "2016-12-31T23:59:60.500Z"),
        ] {
            let time = DateTime::parse_from_rfc3339(text)
                .unwrap()
                .with_timezone(&Utc);
            assert_eq!(format_timestamp(time), expected, "{text}");
            assert_eq!(
                format_timestamp(time),
                time.to_rfc3339_opts(SecondsFormat::Millis, true)
            );
        }
        let before = DateTime::parse_from_rfc3339("0000-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
            - chrono::Duration::milliseconds(1);
        assert_eq!(format_timestamp(before), "-0001-12-31T23:59:59.999Z");
        let after = DateTime::parse_from_rfc3339("9999-12-31T23:59:59.999Z")
            .unwrap()
            .with_timezone(&Utc)
            + chrono::Duration::milliseconds(1);
        assert_eq!(format_timestamp(after), "+10000-01-01T00:00:00.000Z");
    }

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
        check("2026-11-28T12:00Z", Some("2026-11-28T12:00:00.000Z"));
        check("2026-11-28T13:00+01:00", Some("2026-11-28T12:00:00.000Z"));
        check("2026-11-28T12:00", Some("2026-11-28T12:00:00.000Z"));
        check("2026-11-28", Some("2026-11-28T00:00:00.000Z"));
        check("2026-11-28T12:00:00,25Z", Some("2026-11-28T12:00:00.250Z"));
        check("2026-11-28T12:00:00,25", Some("2026-11-28T12:00:00.250Z"));
        check("2026-11-28T12:00:00,25,5Z", None);
        check("2026-11-28T12Z", None);
        check("2026-11", None);
        check("2026-11-28T23:59:60Z", Some("2026-11-28T23:59:59.000Z"));
        check(
            "2026-11-28T10:30:60.250-05:00",
            Some("2026-11-28T15:30:59.250Z"),
        );
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
