//! The wire contract for one Pointillist event, checked on its own terms.
//!
//! Deliberately independent of `stipple-core`: the mock referees the contract, so a bug
//! in the core's serialiser cannot also hide in the check.

use serde_json::{Map, Value};

/// Why an event body breaks the contract; its text is the `error` of the 400 answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Violation(String);

fn violation(reason: impl Into<String>) -> Violation {
    Violation(reason.into())
}

/// The fields an event may have; the first four are required.
const FIELDS: [&str; 6] = [
    "eventSource",
    "eventType",
    "eventTime",
    "actors",
    "labels",
    "numbers",
];

/// Checks one request body, whose `actors` must hold `primary`, and hands back the
/// accepted event.
pub(crate) fn check_event(body: &[u8], primary: &str) -> Result<Value, Violation> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| violation(format!("body is not valid JSON: {e}")))?;
    let Value::Object(event) = &value else {
        return Err(violation(format!(
            "body must be a JSON object, found {}",
            kind(&value)
        )));
    };
    if let Some(unknown) = event.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(violation(format!("unknown field `{unknown}`")));
    }
    if let Some((name, _)) = event.iter().find(|(_, v)| v.is_null()) {
        return Err(violation(format!(
            "`{name}` must not be null (leave the field out instead)"
        )));
    }

    non_empty_string(event, "eventSource")?;
    non_empty_string(event, "eventType")?;
    check_event_time(required(event, "eventTime")?)?;
    check_actors(required(event, "actors")?, primary)?;
    if let Some(labels) = event.get("labels") {
        check_attributes(labels, "labels", "a string", Value::is_string)?;
    }
    if let Some(numbers) = event.get("numbers") {
        check_attributes(numbers, "numbers", "a number", Value::is_number)?;
    }
    Ok(value)
}

fn required<'a>(event: &'a Map<String, Value>, name: &str) -> Result<&'a Value, Violation> {
    event
        .get(name)
        .ok_or_else(|| violation(format!("missing field `{name}`")))
}

fn non_empty_string(event: &Map<String, Value>, name: &str) -> Result<(), Violation> {
    match required(event, name)? {
        Value::String(s) if s.is_empty() => Err(violation(format!("`{name}` must not be empty"))),
        Value::String(_) => Ok(()),
        other => Err(violation(format!(
            "`{name}` must be a string, found {}",
            kind(other)
        ))),
    }
}

/// `eventTime` must be exactly `YYYY-MM-DDTHH:MM:SS.mmmZ` and a real date and time.
fn check_event_time(value: &Value) -> Result<(), Violation> {
    const PATTERN: &[u8; 24] = b"dddd-dd-ddTdd:dd:dd.dddZ";
    let Value::String(text) = value else {
        return Err(violation(format!(
            "`eventTime` must be a string, found {}",
            kind(value)
        )));
    };
    let bytes = text.as_bytes();
    let shaped = bytes.len() == PATTERN.len()
        && bytes.iter().zip(PATTERN).all(|(&b, &p)| match p {
            b'd' => b.is_ascii_digit(),
            _ => b == p,
        });
    if !shaped {
        return Err(violation(format!(
            "`eventTime` must have the form YYYY-MM-DDTHH:MM:SS.mmmZ (UTC, milliseconds), found {}",
            quoted_prefix(text)
        )));
    }
    // Every byte used below was checked to be an ASCII digit.
    let number = |from: usize, to: usize| {
        bytes[from..to]
            .iter()
            .fold(0u32, |n, &b| n * 10 + u32::from(b - b'0'))
    };
    let (year, month, day) = (number(0, 4), number(5, 7), number(8, 10));
    let (hour, minute, second) = (number(11, 13), number(14, 16), number(17, 19));
    let valid = (1..=12).contains(&month)
        && (1..=days_in_month(year, month)).contains(&day)
        && hour < 24
        && minute < 60
        && second < 60;
    if valid {
        Ok(())
    } else {
        Err(violation(format!(
            "`eventTime` is not a valid date and time: {text:?}"
        )))
    }
}

fn days_in_month(year: u32, month: u32) -> u32 {
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// `actors`: actor type -> identifier name -> value, nothing empty, the primary actor
/// always there (the contract: "`actors` always holds the primary actor").
fn check_actors(value: &Value, primary: &str) -> Result<(), Violation> {
    let actors = non_empty_object(value, "actors")?;
    if !actors.contains_key(primary) {
        return Err(violation(format!(
            "`actors` must hold the primary actor `{primary}`"
        )));
    }
    for (actor_type, identifiers) in actors {
        if actor_type.is_empty() {
            return Err(violation("`actors` holds an empty actor type"));
        }
        let path = format!("actors.{actor_type}");
        let identifiers = non_empty_object(identifiers, &path)?;
        for (name, id) in identifiers {
            if name.is_empty() {
                return Err(violation(format!(
                    "`{path}` holds an empty identifier name"
                )));
            }
            match id {
                Value::String(s) if s.is_empty() => {
                    return Err(violation(format!("`{path}.{name}` must not be empty")));
                }
                Value::String(_) => {}
                other => {
                    return Err(violation(format!(
                        "`{path}.{name}` must be a string, found {}",
                        kind(other)
                    )));
                }
            }
        }
    }
    Ok(())
}

/// `labels` and `numbers`: a non-empty object whose values pass `is_wanted`.
fn check_attributes(
    value: &Value,
    field: &str,
    wanted: &str,
    is_wanted: fn(&Value) -> bool,
) -> Result<(), Violation> {
    let attributes = value.as_object().ok_or_else(|| {
        violation(format!(
            "`{field}` must be an object, found {}",
            kind(value)
        ))
    })?;
    if attributes.is_empty() {
        return Err(violation(format!(
            "`{field}` must not be empty (leave the field out instead)"
        )));
    }
    match attributes.iter().find(|(_, v)| !is_wanted(v)) {
        Some((key, v)) => Err(violation(format!(
            "`{field}.{key}` must be {wanted}, found {}",
            kind(v)
        ))),
        None => Ok(()),
    }
}

fn non_empty_object<'a>(value: &'a Value, path: &str) -> Result<&'a Map<String, Value>, Violation> {
    match value {
        Value::Object(map) if map.is_empty() => {
            Err(violation(format!("`{path}` must not be empty")))
        }
        Value::Object(map) => Ok(map),
        other => Err(violation(format!(
            "`{path}` must be an object, found {}",
            kind(other)
        ))),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The start of a caller's string, quoted, short enough for an error message.
fn quoted_prefix(text: &str) -> String {
    const SHOWN: usize = 40;
    match text.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{:?}...", &text[..end]),
        None => format!("{text:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_time(text: &str, ok: bool) {
        assert_eq!(check_event_time(&Value::from(text)).is_ok(), ok, "{text}");
    }

    #[test]
    fn event_time_is_exact_and_a_real_date() {
        check_time("2026-11-28T12:00:00.123Z", true);
        check_time("2024-02-29T23:59:59.999Z", true);
        check_time("2000-02-29T00:00:00.000Z", true);
        check_time("1900-02-29T00:00:00.000Z", false);
        check_time("2026-02-29T00:00:00.000Z", false);
        check_time("2026-04-31T00:00:00.000Z", false);
        check_time("2026-13-01T00:00:00.000Z", false);
        check_time("2026-00-01T00:00:00.000Z", false);
        check_time("2026-01-00T00:00:00.000Z", false);
        check_time("2026-01-01T24:00:00.000Z", false);
        check_time("2026-01-01T00:60:00.000Z", false);
        check_time("2026-01-01T00:00:60.000Z", false);
        check_time("2026-11-28T12:00:00Z", false);
        check_time("2026-11-28T12:00:00.12Z", false);
        check_time("2026-11-28T12:00:00.1234Z", false);
        check_time("2026-11-28T12:00:00.123+00:00", false);
        check_time("2026-11-28 12:00:00.123Z", false);
        check_time("2026-11-28T12:00:00.123z", false);
        check_time("２026-11-28T12:00:00.123Z", false);
    }

    #[test]
    fn long_strings_are_cut_in_messages() {
        let long = "x".repeat(1000);
        assert!(quoted_prefix(&long).len() < 50);
        assert_eq!(quoted_prefix("abc"), "\"abc\"");
    }
}
