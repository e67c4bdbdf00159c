//! The golden suite: every file in `tests/golden/` holds a Segment message and either
//! the Pointillist event it must map to (`expected`), the validation code it must fail
//! with (`error`), or `"routed": false`. Every mismatch is reported before the test fails.

#![allow(clippy::unwrap_used, reason = "test helpers fail loudly")]

use std::path::Path;

use serde_json::Value;
use stipple_core::{MapConfig, Mapper, Message, POINTILLIST};

/// A fixture's message as written in the file: read through a `Value`, a number's
/// digits past a float's precision would be lost before the mapping saw them.
#[derive(serde::Deserialize)]
struct Verbatim<'a> {
    #[serde(borrow)]
    message: &'a serde_json::value::RawValue,
}

/// Checks one case (`text` is the message's JSON) on the reference path, then
/// `map_json` (the fast path) against it.
fn check(mapper: &Mapper, case: &Value, text: &str) -> Result<(), String> {
    let expected_body = check_reference(mapper, case, text)?;
    // Delivery maps messages as the ingress stores them: read, then written back (blocks
    // with their keys sorted).
    let stored = serde_json::from_str::<Message>(text)
        .and_then(|message| serde_json::to_string(&message))
        .unwrap_or_else(|_| text.to_owned());
    let text = stored.as_str();
    let fast = mapper.map_json(text.as_bytes()).ok();
    // Stored messages are the fast path's to map: a valid fixture must not fall back.
    if expected_body.is_some() && mapper.map_json_fast(text).is_none() {
        return Err("the fast path declined it".into());
    }
    if fast != expected_body {
        return Err(format!(
            "map_json differs from the reference: {:?}",
            fast.map(|b| b.map(String::from_utf8))
        ));
    }
    Ok(())
}

/// Checks the case on the reference path; gives what `map_json` must answer (`None`
/// for an error).
fn check_reference(
    mapper: &Mapper,
    case: &Value,
    text: &str,
) -> Result<Option<Option<Vec<u8>>>, String> {
    let message: Result<Message, _> = serde_json::from_str(text);
    let result = message
        .map_err(|e| stipple_core::ValidationError::from_json(&e))
        .and_then(|m| m.validate());
    if let Some(code) = case.get("error").and_then(Value::as_str) {
        return match result {
            Err(e) if e.code.as_str() == code => Ok(None),
            Err(e) => Err(format!("expected error {code}, got {e}")),
            Ok(_) => Err(format!("expected error {code}, the message passed")),
        };
    }
    let valid = result.map_err(|e| format!("unexpected validation error: {e}"))?;
    let routed = case.get("routed").and_then(Value::as_bool).unwrap_or(true);
    if valid.message().is_enabled_for(POINTILLIST) != routed {
        return Err(format!("expected routed = {routed}"));
    }
    if !routed {
        return Ok(Some(None));
    }
    let event = mapper
        .map(valid)
        .map_err(|e| format!("unexpected mapping error: {e}"))?;
    let body = event.to_json();
    let Some(expected) = case.get("expected") else {
        return Ok(Some(Some(body)));
    };
    let actual: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    if &actual != expected {
        return Err(format!(
            "mapped event differs\n  expected: {expected}\n  actual:   {actual}"
        ));
    }
    Ok(Some(Some(body)))
}

#[test]
fn golden_fixtures_map_exactly() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mapper = Mapper::new(MapConfig::default());
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/golden exists")
        .map(|entry| entry.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    assert!(
        paths.len() >= 15,
        "the golden suite lost fixtures: {}",
        paths.len()
    );
    let mut failures = Vec::new();
    for path in &paths {
        let text = std::fs::read_to_string(path).expect("readable fixture");
        let read = serde_json::from_str::<Value>(&text)
            .and_then(|case| Ok((case, serde_json::from_str::<Verbatim<'_>>(&text)?)));
        let (case, verbatim) = match read {
            Ok(read) => read,
            Err(e) => {
                failures.push(format!("{}: not a fixture: {e}", path.display()));
                continue;
            }
        };
        if let Err(why) = check(&mapper, &case, verbatim.message.get()) {
            failures.push(format!(
                "{}: {why}",
                path.file_name().unwrap_or_default().to_string_lossy()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} golden cases failed:\n{}",
        failures.len(),
        paths.len(),
        failures.join("\n")
    );
}

#[test]
fn settings_change_event_source_and_actor_type() {
    let mapper = Mapper::new(MapConfig {
        event_source: "web-app".into(),
        actor_type: "visitor".into(),
    });
    let message: Message = serde_json::from_str(
        r#"{"type":"group","groupId":"g","anonymousId":"a","timestamp":"2026-11-28T12:00:00Z"}"#,
    )
    .unwrap();
    let event = mapper.map(message.validate().unwrap()).unwrap();
    assert_eq!(event.event_source, "web-app");
    assert_eq!(event.actors["visitor"]["anonymousId"], "a");
    assert_eq!(event.actors["account"]["groupId"], "g");
    assert!(!event.actors.contains_key("customer"));
}
