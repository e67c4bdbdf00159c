//! Golden compatibility suite: requests as Segment's own clients send them
//! (analytics-python, analytics-node, analytics-next, analytics-android), replayed
//! through the router from `tests/fixtures/segment_clients.jsonl`. Every mismatch is
//! counted before the test fails.
//!
//! One case a line: `name`, `client`, `path`, `headers`, optional `basic` (the Basic
//! credentials) and `gzip`, `body`; then the expected `status`, `answer` (a subset of
//! the JSON answer), `stored` and `rejected` (how many events and rejected inputs the
//! request left in the store), `stored_subset` (one subset per stored event, in order)
//! and `source` (whose events they are).

mod common;

use common::{Harness, TestStore, post};
use serde::Deserialize;
use serde_json::{Map, Value};
use stipple_ingress::{IngressConfig, Source};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    client: String,
    path: String,
    #[serde(default)]
    headers: Map<String, Value>,
    #[serde(default)]
    basic: Option<String>,
    #[serde(default)]
    gzip: bool,
    body: Value,
    status: u16,
    answer: Value,
    stored: usize,
    rejected: usize,
    #[serde(default)]
    stored_subset: Vec<Value>,
    #[serde(default)]
    source: Option<String>,
}

fn harness() -> Harness {
    let config = IngressConfig {
        sources: vec![
            Source::new("python-backend", "wk_python"),
            Source::new("node-backend", "wk_node"),
            Source::new("website", "wk_browser"),
            Source::new("mobile", "wk_android"),
        ],
        ..IngressConfig::default()
    };
    Harness::with(config, TestStore::default(), |s| s)
}

async fn replay(case: &Case) -> Vec<String> {
    let h = harness();
    let mut request = post(&case.path);
    for (name, value) in &case.headers {
        request = request.header(name, value.as_str().unwrap_or_default());
    }
    if let Some(credentials) = &case.basic {
        request = request.basic(credentials);
    }
    request = request.raw(case.body.to_string());
    if case.gzip {
        request = request.gzip();
    }
    let (status, _, answer) = h.send(request.build()).await;
    let mut mismatches = Vec::new();
    let mut mismatch =
        |what: String| mismatches.push(format!("[{}] {}: {what}", case.client, case.name));
    if status != case.status {
        mismatch(format!(
            "status {status}, expected {}; answer {answer}",
            case.status
        ));
    }
    if !common::contains(&answer, &case.answer) {
        mismatch(format!("answer {answer} does not contain {}", case.answer));
    }
    let events = h.events().await;
    if events.len() != case.stored {
        mismatch(format!(
            "{} events stored, expected {}",
            events.len(),
            case.stored
        ));
    }
    let rejected = h.rejected().await;
    if rejected.len() != case.rejected {
        mismatch(format!(
            "{} inputs rejected, expected {}",
            rejected.len(),
            case.rejected
        ));
    }
    for (i, (event, subset)) in events.iter().zip(&case.stored_subset).enumerate() {
        if !common::contains(&event.payload, subset) {
            mismatch(format!(
                "stored event {i} {} does not contain {subset}",
                event.payload
            ));
        }
    }
    for (i, event) in events.iter().enumerate() {
        if event.payload.get("writeKey").is_some() {
            mismatch(format!("stored event {i} kept its writeKey"));
        }
        if case.source.as_deref() != Some(event.source.as_str()) {
            mismatch(format!(
                "stored event {i} has source {:?}, expected {:?}",
                event.source, case.source
            ));
        }
        if event.payload.get("receivedAt") != Some(&Value::from("2026-11-28T12:00:00.000Z")) {
            mismatch(format!(
                "stored event {i} has no receivedAt from the ingress clock"
            ));
        }
    }
    mismatches
}

#[tokio::test]
async fn segment_clients_payloads_replay_as_expected() {
    let text = include_str!("fixtures/segment_clients.jsonl");
    let mut cases = 0;
    let mut mismatches = Vec::new();
    for (line, json) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let case: Case =
            serde_json::from_str(json).unwrap_or_else(|e| panic!("fixture line {}: {e}", line + 1));
        cases += 1;
        mismatches.extend(replay(&case).await);
    }
    assert!(cases >= 12, "only {cases} fixture cases");
    assert!(
        mismatches.is_empty(),
        "{} mismatches in {cases} cases:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}
