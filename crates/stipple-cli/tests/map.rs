//! `stipple map` as a user runs it: stdin or a file in, events and errors out.

#![allow(clippy::unwrap_used, reason = "test helpers fail loudly")]

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn stipple_map(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_stipple"))
        .arg("map")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("stipple runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn lines(bytes: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const GOOD: &str = r#"{"type":"track","event":"Clicked","userId":"u1","messageId":"m1","timestamp":"2026-11-28T12:00:00.5+01:00","properties":{"n":1,"s":"x"}}"#;

#[test]
fn maps_good_lines_in_order_and_reports_bad_ones_with_line_numbers() {
    let input = format!(
        "{GOOD}\nnot json\n\n{}\n{}\n{}\n",
        r#"{"type":"track","userId":"u"}"#,
        r#"{"batch":[{"type":"identify","userId":"u2","traits":{"a":"b"},"timestamp":"2026-11-28T12:00:00Z"},{"type":"page"}],"context":{"traits":{"t":1}}}"#,
        r#"{"type":"alias","userId":"u3","previousId":"a3","messageId":"m3","timestamp":"2026-11-28T12:00:00Z"}"#,
    );
    let out = stipple_map(&[], &input);
    assert_eq!(out.status.code(), Some(1));
    let events = lines(&out.stdout);
    assert_eq!(events.len(), 3);
    assert_eq!(events[0]["eventType"], "Clicked");
    assert_eq!(events[0]["eventTime"], "2026-11-28T11:00:00.500Z");
    assert_eq!(events[0]["labels"]["s"], "x");
    assert_eq!(events[1]["eventType"], "identify");
    assert_eq!(events[1]["labels"]["a"], "b");
    assert_eq!(events[2]["actors"]["customer"]["previousId"], "a3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 2: invalid_json"), "{stderr}");
    assert!(stderr.contains("line 4: missing_event"), "{stderr}");
    assert!(
        stderr.contains("line 5, batch item 1: no_user_anon_id"),
        "{stderr}"
    );
    assert!(stderr.contains("3 message(s) failed"), "{stderr}");
}

#[test]
fn all_good_input_exits_zero_and_settings_apply() {
    let out = stipple_map(
        &["--event-source", "web", "--actor-type", "visitor"],
        &format!("{GOOD}\n"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = lines(&out.stdout);
    assert_eq!(events[0]["eventSource"], "web");
    assert_eq!(events[0]["actors"]["visitor"]["userId"], "u1");
}

#[test]
fn a_pretty_printed_batch_file_is_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("batch.json");
    let batch = serde_json::json!({"batch": [serde_json::from_str::<serde_json::Value>(GOOD).unwrap(),
        {"type": "screen", "name": "Home", "anonymousId": "a", "timestamp": "2026-11-28T12:00:00Z"}]});
    std::fs::write(&path, serde_json::to_string_pretty(&batch).unwrap()).unwrap();
    let out = stipple_map(&[path.to_str().unwrap()], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = lines(&out.stdout);
    assert_eq!(events.len(), 2);
    assert_eq!(events[1]["labels"]["name"], "Home");
}

#[test]
fn routed_off_messages_are_skipped_not_failed() {
    let out = stipple_map(
        &[],
        r#"{"type":"track","event":"x","userId":"u","integrations":{"All":false}}"#,
    );
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("skipped"));
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let out = stipple_map(&["/nonexistent/stipple-input.jsonl"], "");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("cannot read /nonexistent/stipple-input.jsonl")
    );
}

/// `stipple map ... | head`: once the reader of its output has gone, it stops quietly
/// and successfully, however much was left to write (no panic, no error).
#[test]
fn a_reader_that_goes_away_ends_it_quietly() {
    use std::io::Read as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("many.jsonl");
    // Far more output than a pipe holds, and a refused line now and then for stderr.
    let mut input = String::new();
    for i in 0..40_000 {
        input.push_str(if i % 100 == 0 {
            "{\"type\":\"nope\"}"
        } else {
            GOOD
        });
        input.push('\n');
    }
    std::fs::write(&path, input).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_stipple"))
        .args(["map", path.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("stipple runs");
    let mut first = [0u8; 100];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    drop(child.stdout.take());
    drop(child.stderr.take());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status}");
}

#[test]
fn a_message_with_only_an_original_timestamp_happened_then() {
    let out = stipple_map(
        &[],
        r#"{"type":"identify","userId":"u","originalTimestamp":"2026-01-01T00:00:00Z"}"#,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        lines(&out.stdout)[0]["eventTime"],
        "2026-01-01T00:00:00.000Z"
    );
}
