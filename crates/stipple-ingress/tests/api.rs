//! The Tracking API through the router: endpoints, auth, content types, limits,
//! validation, stamping, dedup, failure answers, CORS and the operations endpoints.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use std::time::Duration;

use common::{Gate, Harness, TestStore, basic, config, get, now, options, post, stalled_body};
use serde_json::{Value, json};
use stipple_ingress::{
    DestinationHealth, DestinationStatus, IngressConfig, IngressState, ManualClock,
};

fn track() -> Value {
    json!({"userId": "u1", "event": "Signed Up", "properties": {"plan": "pro"}})
}

/// [`track`] as a batch item, which must say its type.
/// A harness with `/metrics`, recording into its own Prometheus recorder for as long as
/// the guard lives (installed before the state is built, which takes its counters).
fn metered() -> (Harness, metrics::LocalRecorderGuard<'static>) {
    // Leaked: the guard must outlive the test, and a test's recorder is small.
    let recorder: &'static _ = Box::leak(Box::new(
        metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder(),
    ));
    let handle = recorder.handle();
    let guard = metrics::set_default_local_recorder(recorder);
    let h = Harness::with(config(), TestStore::default(), |s| s.with_metrics(handle));
    (h, guard)
}

fn track_item() -> Value {
    let mut item = track();
    item["type"] = json!("track");
    item
}

#[tokio::test]
async fn every_endpoint_and_short_path_with_and_without_trailing_slash() {
    let h = Harness::new();
    let cases: [(&str, Value, &str); 15] = [
        (
            "identify",
            json!({"userId": "u1", "traits": {"email": "a@example.com"}}),
            "identify",
        ),
        ("track", track(), "track"),
        (
            "page",
            json!({"anonymousId": "a1", "name": "Home", "properties": {"path": "/"}}),
            "page",
        ),
        (
            "screen",
            json!({"userId": "u1", "name": "Settings"}),
            "screen",
        ),
        (
            "group",
            json!({"userId": "u1", "groupId": "g1", "traits": {"name": "Acme"}}),
            "group",
        ),
        (
            "alias",
            json!({"userId": "u1", "previousId": "a1"}),
            "alias",
        ),
        (
            "batch",
            json!({"batch": [{"type": "track", "userId": "u1", "event": "B"}]}),
            "track",
        ),
        (
            "import",
            json!({"batch": [{"type": "screen", "userId": "u1"}]}),
            "screen",
        ),
        ("i", json!({"userId": "u1"}), "identify"),
        ("t", json!({"userId": "u1", "event": "E"}), "track"),
        ("p", json!({"anonymousId": "a1"}), "page"),
        ("s", json!({"anonymousId": "a1"}), "screen"),
        ("g", json!({"userId": "u1", "groupId": "g1"}), "group"),
        ("a", json!({"userId": "u1", "previousId": "a1"}), "alias"),
        (
            "b",
            json!({"batch": [{"type": "page", "anonymousId": "a1"}]}),
            "page",
        ),
    ];
    let mut stored = 0;
    for (name, body, kind) in cases {
        for path in [format!("/v1/{name}"), format!("/v1/{name}/")] {
            let request = post(&path).basic("wk_web:").json(body.clone()).build();
            h.check(request, 200, json!({"success": true})).await;
            stored += 1;
            let events = h.events().await;
            assert_eq!(events.len(), stored, "{path}");
            let last = &events[stored - 1];
            assert_eq!(last.payload["type"], kind, "{path}");
            assert_eq!(last.source, "web", "{path}");
        }
    }
}

#[tokio::test]
async fn write_key_from_basic_auth_or_the_body() {
    let h = Harness::new();
    let unauthorized = |code: &str| json!({"success": false, "code": code});
    let with_key = |key: &str| {
        let mut body = track();
        body["writeKey"] = json!(key);
        body
    };
    let cases = [
        // (request, status, body subset, source of the stored event)
        (
            post("/v1/track").basic("wk_web:").json(track()),
            200,
            json!({"success": true}),
            Some("web"),
        ),
        (
            post("/v1/track").basic("wk_app").json(track()),
            200,
            json!({"success": true}),
            Some("app"),
        ),
        (
            post("/v1/track").json(with_key("wk_app")),
            200,
            json!({"success": true}),
            Some("app"),
        ),
        (
            post("/v1/batch").json(json!({"writeKey": "wk_web", "batch": [track_item()]})),
            200,
            json!({"success": true}),
            Some("web"),
        ),
        // Header and body agree, as analytics-python sends them.
        (
            post("/v1/track").basic("wk_app:").json(with_key("wk_app")),
            200,
            json!({"success": true}),
            Some("app"),
        ),
        (
            post("/v1/track").basic("wk_nope:").json(track()),
            401,
            unauthorized("unknown_write_key"),
            None,
        ),
        (
            post("/v1/track").json(with_key("wk_nope")),
            401,
            unauthorized("unknown_write_key"),
            None,
        ),
        (
            post("/v1/track").json(track()),
            401,
            unauthorized("missing_write_key"),
            None,
        ),
        (
            post("/v1/track").basic(":").json(track()),
            401,
            unauthorized("missing_write_key"),
            None,
        ),
        (
            post("/v1/track")
                .header("authorization", "Basic %%%")
                .json(track()),
            401,
            unauthorized("bad_authorization"),
            None,
        ),
        // The header decides when it carries a key.
        (
            post("/v1/track").basic("wk_nope:").json(with_key("wk_web")),
            401,
            unauthorized("unknown_write_key"),
            None,
        ),
    ];
    for (request, status, subset, source) in cases {
        let before = h.events().await.len();
        h.check(request.build(), status, subset).await;
        let events = h.events().await;
        match source {
            Some(source) => {
                assert_eq!(events.len(), before + 1);
                let last = &events[before];
                assert_eq!(last.source, source);
                assert!(
                    last.payload.get("writeKey").is_none(),
                    "the key is not stored: {}",
                    last.payload
                );
            }
            None => assert_eq!(events.len(), before),
        }
    }
    assert!(
        h.rejected().await.is_empty(),
        "nothing of a refused request is kept"
    );
}

#[tokio::test]
async fn content_types() {
    let h = Harness::new();
    let body = track().to_string();
    let ok = json!({"success": true});
    let unsupported = json!({"success": false, "code": "unsupported_content_type"});
    for (content_type, status, subset) in [
        (Some("application/json"), 200, &ok),
        (Some("application/json; charset=utf-8"), 200, &ok),
        (Some("text/plain"), 200, &ok),
        (Some("text/plain;charset=UTF-8"), 200, &ok),
        (None, 200, &ok),
        (Some("application/xml"), 415, &unsupported),
        (Some("application/x-www-form-urlencoded"), 415, &unsupported),
        (Some("multipart/form-data; boundary=x"), 415, &unsupported),
    ] {
        let mut request = post("/v1/t").basic("wk_web:").raw(body.clone());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        h.check(request.build(), status, subset.clone()).await;
    }
    assert_eq!(h.events().await.len(), 5);
}

/// A string cut inside an emoji (`JSON.stringify` writes its lone half as an escape)
/// costs the message nothing but that character: it reads as U+FFFD, as in Segment's API.
#[tokio::test]
async fn lone_surrogate_escapes_read_as_the_replacement_character() {
    let h = Harness::new();
    let ok = json!({"success": true});
    let single = r#"{"type":"track","userId":"u","event":"Viewed \ud83d","properties":{"title":"a\ude00b \ud83d\ude00"}}"#;
    h.check(
        post("/v1/track")
            .basic("wk_web:")
            .raw(single.to_owned())
            .build(),
        200,
        ok.clone(),
    )
    .await;
    let stored = h.last_event().await.payload;
    assert_eq!(stored["event"], "Viewed \u{fffd}", "{stored}");
    assert_eq!(
        stored["properties"]["title"], "a\u{fffd}b \u{1f600}",
        "{stored}"
    );

    let batch = r#"{"batch":[{"type":"track","userId":"u","event":"E \udc00"},{"type":"identify","userId":"u","traits":{"name":"\ud83d"}}]}"#;
    h.check(
        post("/v1/batch")
            .basic("wk_web:")
            .raw(batch.to_owned())
            .build(),
        200,
        ok,
    )
    .await;
    let events = h.events().await;
    let last = &events[events.len() - 2..];
    assert_eq!(last[0].payload["event"], "E \u{fffd}");
    assert_eq!(last[1].payload["traits"]["name"], "\u{fffd}");
}

#[tokio::test]
async fn gzip_bodies_and_the_gzip_bomb() {
    let h = Harness::new();
    let batch = json!({"batch": [track_item(), track_item()], "writeKey": "wk_web"});
    h.check(
        post("/v1/batch").json(batch).gzip().build(),
        200,
        json!({"success": true}),
    )
    .await;
    h.check(
        post("/v1/track")
            .basic("wk_web:")
            .json(track())
            .gzip()
            .build(),
        200,
        json!({"success": true}),
    )
    .await;
    let x_gzip = post("/v1/track")
        .basic("wk_web:")
        .raw(common::gzip(track().to_string().as_bytes()))
        .header("content-encoding", "x-gzip")
        .build();
    h.check(x_gzip, 200, json!({"success": true})).await;
    assert_eq!(h.events().await.len(), 4);

    // 10 MiB of spaces around a valid batch, compressed to a few KiB.
    let mut bomb = b"{\"batch\": [".to_vec();
    bomb.extend(std::iter::repeat_n(b' ', 10 * 1024 * 1024));
    bomb.extend(b"]}");
    let request = post("/v1/batch").basic("wk_web:").raw(bomb).gzip().build();
    h.check(
        request,
        400,
        json!({"success": false, "code": "batch_too_large"}),
    )
    .await;
    let big_single =
        json!({"userId": "u1", "event": "E", "properties": {"pad": "x".repeat(40 * 1024)}});
    let request = post("/v1/track")
        .basic("wk_web:")
        .json(big_single)
        .gzip()
        .build();
    h.check(
        request,
        400,
        json!({"success": false, "code": "message_too_large"}),
    )
    .await;
    let not_gzip = post("/v1/track")
        .basic("wk_web:")
        .raw("{}")
        .header("content-encoding", "gzip")
        .build();
    h.check(
        not_gzip,
        400,
        json!({"success": false, "code": "unreadable_body"}),
    )
    .await;
    let brotli = post("/v1/track")
        .basic("wk_web:")
        .raw("{}")
        .header("content-encoding", "br")
        .build();
    h.check(
        brotli,
        415,
        json!({"success": false, "code": "unsupported_content_encoding"}),
    )
    .await;
    assert_eq!(h.events().await.len(), 4);
}

/// Posts `body` to `path` with a header write key: answered 400 `invalid_json`.
async fn invalid_json(h: &Harness, path: &str, body: &str) {
    let request = post(path).basic("wk_web:").raw(body.to_owned()).build();
    h.check(
        request,
        400,
        json!({"success": false, "code": "invalid_json"}),
    )
    .await;
}

#[tokio::test]
async fn invalid_json_is_400_and_not_kept() {
    let h = Harness::new();
    for path in ["/v1/track", "/v1/batch"] {
        invalid_json(&h, path, "{\"userId\": ").await;
    }
    // Without a header key the body is read for one, and is found not to be JSON.
    let request = post("/v1/t")
        .header("content-type", "text/plain")
        .raw("nope")
        .build();
    h.check(
        request,
        400,
        json!({"success": false, "code": "invalid_json"}),
    )
    .await;
    assert!(h.events().await.is_empty());
    assert!(h.rejected().await.is_empty());
}

#[tokio::test]
async fn request_limits() {
    let h = Harness::new();
    let padded = |bytes: usize| json!({"userId": "u1", "event": "E", "properties": {"pad": "x".repeat(bytes)}});
    let request = post("/v1/track")
        .basic("wk_web:")
        .json(padded(33 * 1024))
        .build();
    let (_, body) = h
        .check(
            request,
            400,
            json!({"success": false, "code": "message_too_large"}),
        )
        .await;
    assert!(
        body["message"].as_str().unwrap().contains("32768"),
        "{body}"
    );
    let request = post("/v1/track")
        .basic("wk_web:")
        .json(padded(30 * 1024))
        .build();
    h.check(request, 200, json!({"success": true})).await;

    let items: Vec<Value> = (0..20).map(|_| padded(30 * 1024)).collect();
    let request = post("/v1/batch")
        .basic("wk_web:")
        .json(json!({"batch": items}))
        .build();
    h.check(
        request,
        400,
        json!({"success": false, "code": "batch_too_large"}),
    )
    .await;

    let item = json!({"type": "track", "userId": "u", "event": "E"});
    // Read by the batch scan, and (a batch-level `context`) by serde_json: refused alike.
    for body in [
        json!({"batch": vec![item.clone(); 2501]}),
        json!({"batch": vec![item.clone(); 2501], "context": {"ip": "1.1.1.1"}}),
    ] {
        let request = post("/v1/batch").basic("wk_web:").json(body).build();
        h.check(
            request,
            400,
            json!({"success": false, "code": "too_many_items"}),
        )
        .await;
    }
    assert_eq!(h.events().await.len(), 1);
    let request = post("/v1/batch")
        .basic("wk_web:")
        .json(json!({"batch": vec![item; 2500]}))
        .build();
    h.check(request, 200, json!({"success": true})).await;
    assert_eq!(h.events().await.len(), 2501);
    assert!(h.rejected().await.is_empty());
}

#[tokio::test]
async fn a_batch_keeps_its_good_items_and_lists_and_keeps_the_bad_ones() {
    let h = Harness::new();
    let big = json!({"type": "track", "userId": "u", "event": "E", "properties": {"pad": "x".repeat(33 * 1024)}});
    let body = json!({"batch": [
        {"type": "track", "userId": "u1", "event": "Good 1"},
        {"type": "track", "event": "No user"},
        {"type": "Track", "userId": "u1", "event": "Bad type"},
        5,
        big,
        {"type": "identify", "userId": "u2", "traits": {"plan": "pro"}},
        {"type": "track", "userId": "u1"},
        {"type": "alias", "userId": "u1"},
        {"userId": "u1"},
        {"type": "page", "userId": "u1", "timestamp": "noon"},
        {"type": "page", "anonymousId": "a1", "writeKey": "wk_web"}
    ]});
    let raw_items: Vec<String> = body["batch"]
        .as_array()
        .unwrap()
        .iter()
        .map(Value::to_string)
        .collect();
    let expected = [
        (1, "no_user_anon_id"),
        (2, "invalid_type"),
        (3, "invalid_message"),
        (4, "message_too_large"),
        (6, "missing_event"),
        (7, "missing_previous_id"),
        (8, "missing_type"),
        (9, "invalid_timestamp"),
    ];
    let listed: Vec<Value> = expected
        .iter()
        .map(|(index, code)| json!({"index": index, "code": code}))
        .collect();
    let request = post("/v1/batch").basic("wk_web:").json(body).build();
    let (_, answer) = h
        .check(request, 200, json!({"success": true, "rejected": listed}))
        .await;
    for item in answer["rejected"].as_array().unwrap() {
        assert!(!item["message"].as_str().unwrap().is_empty(), "{item}");
    }

    let events = h.events().await;
    let names: Vec<_> = events
        .iter()
        .map(|e| e.payload["type"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["track", "identify", "page"]);
    assert!(events[2].payload.get("writeKey").is_none());

    let rejected = h.rejected().await;
    assert_eq!(rejected.len(), expected.len());
    for (stored, (index, code)) in rejected.iter().zip(expected) {
        assert_eq!(stored.input.source, "web");
        assert_eq!(stored.input.index, Some(index));
        assert_eq!(stored.input.code, code);
        assert_eq!(
            stored.input.payload,
            raw_items[index].as_bytes(),
            "kept as received"
        );
    }
}

/// A batch-level field of the wrong type concerns every item: each is refused and kept,
/// as a bad item is, rather than the whole request refused with nothing kept (Segment's
/// clients do not resend a 400).
#[tokio::test]
async fn a_wrongly_typed_envelope_field_refuses_each_item_and_keeps_it() {
    let h = Harness::new();
    let items = [
        r#"{"type":"track","userId":"u1","event":"A"}"#,
        r#"{"type":"identify","userId":"u1"}"#,
    ];
    for (field, value) in [
        ("context", r#""str""#),
        ("integrations", "5"),
        ("sentAt", "[]"),
    ] {
        let body = format!(r#"{{"batch":[{}],"{field}":{value}}}"#, items.join(","));
        let request = post("/v1/batch").basic("wk_web:").raw(body).build();
        let (_, answer) = h
            .check(
                request,
                200,
                json!({"success": true, "rejected": [
                    {"index": 0, "code": "invalid_message"},
                    {"index": 1, "code": "invalid_message"},
                ]}),
            )
            .await;
        let message = answer["rejected"][0]["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("the batch's {field}: invalid type")),
            "{message}"
        );
    }
    assert!(h.events().await.is_empty());
    let kept: Vec<Vec<u8>> = h
        .rejected()
        .await
        .into_iter()
        .map(|r| r.input.payload)
        .collect();
    let expected: Vec<Vec<u8>> = (0..3)
        .flat_map(|_| items.map(|item| item.as_bytes().to_vec()))
        .collect();
    assert_eq!(kept, expected);
    // A `writeKey` of the wrong type is no key; Basic authentication still counts.
    let body = format!(r#"{{"batch":[{}],"writeKey":5}}"#, items[0]);
    h.check(
        post("/v1/batch").basic("wk_web:").raw(body).build(),
        200,
        json!({"success": true}),
    )
    .await;
    assert_eq!(h.events().await.len(), 1);
}

#[tokio::test]
async fn batch_level_context_and_integrations_are_merged_into_items() {
    let h = Harness::new();
    let body = json!({
        "batch": [
            {"type": "track", "userId": "u1", "event": "A", "context": {"ip": "1.1.1.1"}},
            {"type": "track", "userId": "u1", "event": "B", "integrations": {"Pointillist": true}}
        ],
        "context": {"ip": "9.9.9.9", "library": {"name": "analytics-python", "version": "2.3.3"}},
        "integrations": {"All": false}
    });
    h.check(
        post("/v1/batch").basic("wk_web:").json(body).build(),
        200,
        json!({"success": true}),
    )
    .await;
    let events = h.events().await;
    assert!(
        common::contains(
            &events[0].payload,
            &json!({"context": {"ip": "1.1.1.1", "library": {"name": "analytics-python"}}, "integrations": {"All": false}})
        ),
        "{}",
        events[0].payload
    );
    assert!(
        common::contains(
            &events[1].payload,
            &json!({"context": {"ip": "9.9.9.9"}, "integrations": {"All": false, "Pointillist": true}})
        ),
        "{}",
        events[1].payload
    );
}

/// The stored text reads as the same message, and maps to the same event, whether the
/// ingress read it on its fast path (a single call: blocks kept as sent) or on the
/// reference path (a batch with `integrations` to merge, here one that changes nothing:
/// blocks written anew, keys sorted); unknown fields verbatim and the body's `writeKey`
/// removed on both.
#[tokio::test]
async fn the_stored_text_reads_the_same_on_either_reading() {
    let h = Harness::new();
    let message = r#"{"type":"track","writeKey":"wk_web","messageId":"m-1","userId":"u1",
        "event":"E","properties":{"z":1.50,"a":"\u00e9","m":{"y":1,"x":2}},
        "context":{"userAgent":"UA","traits":{"b":1,"a":2}},"integrations":{},
        "_metadata":{ "bundled": [] }}"#;
    h.check(
        post("/v1/track").raw(message).build(),
        200,
        json!({"success": true}),
    )
    .await;
    let batch = format!(r#"{{"integrations": {{}}, "batch": [{message}]}}"#);
    h.check(
        post("/v1/batch").basic("wk_app:").raw(batch).build(),
        200,
        json!({"success": true}),
    )
    .await;
    let events = h.events().await;
    let expected = r#"{"type":"track","messageId":"m-1","userId":"u1","event":"E","timestamp":"2026-11-28T12:00:00.000Z","receivedAt":"2026-11-28T12:00:00.000Z","properties":{"a":"é","m":{"x":2,"y":1},"z":1.5},"context":{"traits":{"a":2,"b":1},"userAgent":"UA"},"integrations":{},"_metadata":{ "bundled": [] }}"#;
    assert_eq!(events.len(), 2);
    assert_eq!(
        (events[0].source.as_str(), events[1].source.as_str()),
        ("web", "app")
    );
    let as_sent = r#"{"type":"track","messageId":"m-1","userId":"u1","event":"E","timestamp":"2026-11-28T12:00:00.000Z","receivedAt":"2026-11-28T12:00:00.000Z","properties":{"z":1.50,"a":"\u00e9","m":{"y":1,"x":2}},"context":{"traits":{"b":1,"a":2},"userAgent":"UA"},"integrations":{},"_metadata":{ "bundled": [] }}"#;
    assert_eq!(events[0].text, as_sent);
    assert_eq!(events[1].text, expected);
    let read = |text: &str| serde_json::from_str::<serde_json::Value>(text).unwrap();
    assert_eq!(read(&events[0].text), read(&events[1].text));
    let mapper = stipple_core::Mapper::new(stipple_core::MapConfig::default());
    let mapped = |text: &str| mapper.map_json(text.as_bytes()).unwrap().unwrap();
    assert_eq!(mapped(&events[0].text), mapped(&events[1].text));
}

#[tokio::test]
async fn clock_skew_is_corrected_in_the_stored_payload() {
    let h = Harness::new();
    // The client's clock is an hour fast: it sent 10 s after the event, by its clock.
    let skewed = json!({"userId": "u1", "event": "E",
        "timestamp": "2026-11-28T13:00:00.000Z", "sentAt": "2026-11-28T13:00:10.000Z"});
    h.check(
        post("/v1/track").basic("wk_web:").json(skewed).build(),
        200,
        json!({"success": true}),
    )
    .await;
    let stored = h.last_event().await.payload;
    assert!(
        common::contains(
            &stored,
            &json!({
                "timestamp": "2026-11-28T11:59:50.000Z",
                "originalTimestamp": "2026-11-28T13:00:00.000Z",
                "receivedAt": "2026-11-28T12:00:00.000Z",
                "sentAt": "2026-11-28T13:00:10.000Z"
            })
        ),
        "{stored}"
    );

    // The batch's sentAt applies to items without their own.
    let batch = json!({"sentAt": "2026-11-28T13:00:10Z", "batch": [
        {"type": "track", "userId": "u1", "event": "E", "timestamp": "2026-11-28T13:00:05Z"}
    ]});
    h.check(
        post("/v1/batch").basic("wk_web:").json(batch).build(),
        200,
        json!({"success": true}),
    )
    .await;
    let stored = h.last_event().await.payload;
    assert_eq!(stored["timestamp"], "2026-11-28T11:59:55.000Z", "{stored}");
    assert_eq!(stored["sentAt"], "2026-11-28T13:00:10Z", "{stored}");

    // No sentAt: the client's timestamp stands. No timestamp: receivedAt.
    let no_sent_at = json!({"userId": "u1", "event": "E", "timestamp": "2020-01-01T00:00:00Z"});
    h.check(
        post("/v1/track").basic("wk_web:").json(no_sent_at).build(),
        200,
        json!({"success": true}),
    )
    .await;
    assert_eq!(
        h.last_event().await.payload["timestamp"],
        "2020-01-01T00:00:00.000Z"
    );
    h.check(
        post("/v1/track").basic("wk_web:").json(track()).build(),
        200,
        json!({"success": true}),
    )
    .await;
    let stored = h.last_event().await.payload;
    assert_eq!(stored["timestamp"], "2026-11-28T12:00:00.000Z");
    assert_eq!(stored["receivedAt"], "2026-11-28T12:00:00.000Z");
    assert!(stored.get("originalTimestamp").is_none(), "{stored}");

    // A client's receivedAt is the ingress's to set: not read, even when it is no time.
    for theirs in ["garbage", "2001-01-01T00:00:00Z"] {
        let message = json!({"userId": "u1", "event": "E", "receivedAt": theirs});
        h.check(
            post("/v1/track").basic("wk_web:").json(message).build(),
            200,
            json!({"success": true}),
        )
        .await;
        let stored = h.last_event().await.payload;
        assert_eq!(stored["receivedAt"], "2026-11-28T12:00:00.000Z", "{stored}");
        assert_eq!(stored["timestamp"], "2026-11-28T12:00:00.000Z", "{stored}");
    }
}

#[tokio::test]
async fn a_missing_message_id_is_generated_and_a_given_one_kept() {
    let h = Harness::new();
    let mut empty = track();
    empty["messageId"] = json!("");
    // None, and an empty one (which counts as none).
    for body in [track(), empty] {
        h.check(
            post("/v1/track").basic("wk_web:").json(body).build(),
            200,
            json!({"success": true}),
        )
        .await;
        let stored = h.last_event().await;
        let id = uuid::Uuid::parse_str(&stored.message_id).expect("a UUID");
        assert_eq!(id.get_version_num(), 4);
        assert_eq!(stored.payload["messageId"], stored.message_id);
    }

    let mut given = track();
    given["messageId"] = json!("ajs-next-1732795200000-5c1d");
    h.check(
        post("/v1/track").basic("wk_web:").json(given).build(),
        200,
        json!({"success": true}),
    )
    .await;
    assert_eq!(
        h.last_event().await.message_id,
        "ajs-next-1732795200000-5c1d"
    );
}

#[tokio::test]
async fn duplicates_are_answered_200_and_deduplicated_per_source() {
    let (h, _recording) = metered();
    let mut message = track_item();
    message["messageId"] = json!("m-1");
    for key in ["wk_web:", "wk_web:", "wk_app:"] {
        let request = post("/v1/track").basic(key).json(message.clone()).build();
        h.check(request, 200, json!({"success": true})).await;
    }
    let batch = json!({"batch": [message.clone(), {"type": "track", "userId": "u", "event": "E", "messageId": "m-2"}]});
    h.check(
        post("/v1/batch").basic("wk_web").json(batch).build(),
        200,
        json!({"success": true}),
    )
    .await;
    let events: Vec<_> = h
        .events()
        .await
        .into_iter()
        .map(|e| (e.source, e.message_id))
        .collect();
    let expected =
        [("web", "m-1"), ("app", "m-1"), ("web", "m-2")].map(|(s, m)| (s.to_owned(), m.to_owned()));
    assert_eq!(events, expected);

    let (_, text) = h.check(get("/metrics").build(), 200, Value::Null).await;
    let text = text.as_str().unwrap();
    for line in [
        r#"stipple_deduplicated_total{source="web",type="track"} 2"#,
        r#"stipple_accepted_total{source="web",type="track"} 2"#,
        r#"stipple_accepted_total{source="app",type="track"} 1"#,
        r#"stipple_received_total{source="web",type="track"} 4"#,
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
    }
}

#[tokio::test]
async fn the_dedup_window_is_the_configured_one() {
    // A window of zero turns deduplication off: a repeated messageId is stored again.
    let config = IngressConfig {
        dedup_window: Duration::ZERO,
        ..config()
    };
    let h = Harness::with(config, TestStore::default(), |s| s);
    let mut message = track();
    message["messageId"] = json!("m-again");
    for _ in 0..2 {
        let request = post("/v1/track")
            .basic("wk_web:")
            .json(message.clone())
            .build();
        h.check(request, 200, json!({"success": true})).await;
    }
    assert_eq!(h.events().await.len(), 2);
}

#[tokio::test]
async fn a_message_s_own_type_wins_over_its_path() {
    // Segment's Webhooks destination posts every call, whole, to the one URL it is given.
    let (h, _recording) = metered();
    let calls = [
        json!({"type": "identify", "userId": "u1", "traits": {"plan": "pro"}}),
        json!({"type": "group", "userId": "u1", "groupId": "g1"}),
        json!({"type": "alias", "userId": "u1", "previousId": "a1"}),
        json!({"type": "page", "anonymousId": "a1", "name": "Home"}),
        json!({"type": "track", "userId": "u1", "event": "Signed Up"}),
    ];
    for call in &calls {
        let request = post("/v1/track")
            .basic("wk_web:")
            .json(call.clone())
            .build();
        h.check(request, 200, json!({"success": true})).await;
    }
    let types: Vec<_> = h
        .events()
        .await
        .iter()
        .map(|e| e.payload["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(types, ["identify", "group", "alias", "page", "track"]);
    // Counted under the type it was taken as.
    let (_, text) = h.check(get("/metrics").build(), 200, Value::Null).await;
    let text = text.as_str().unwrap();
    for line in [
        r#"stipple_accepted_total{source="web",type="identify"} 1"#,
        r#"stipple_accepted_total{source="web",type="track"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
    }
}

#[tokio::test]
async fn an_invalid_single_message_is_400_and_kept() {
    let h = Harness::new();
    let cases = [
        (json!({"event": "No user"}), "no_user_anon_id"),
        (
            json!({"type": "bogus", "userId": "u1", "event": "E"}),
            "invalid_type",
        ),
        (json!({"userId": true, "event": "E"}), "invalid_message"),
        (json!("a string"), "invalid_message"),
        (json!([1]), "invalid_message"),
        (
            json!({"userId": "u1", "event": "E", "messageId": "x".repeat(100)}),
            "invalid_message_id",
        ),
    ];
    for (body, code) in &cases {
        let request = post("/v1/track")
            .basic("wk_web:")
            .json(body.clone())
            .build();
        let (_, answer) = h
            .check(request, 400, json!({"success": false, "code": code}))
            .await;
        assert!(!answer["message"].as_str().unwrap().is_empty());
    }
    assert!(h.events().await.is_empty());
    let rejected = h.rejected().await;
    assert_eq!(rejected.len(), cases.len());
    for (stored, (body, code)) in rejected.iter().zip(&cases) {
        assert_eq!(stored.input.code, *code);
        assert_eq!(stored.input.index, None);
        assert_eq!(stored.input.payload, body.to_string().as_bytes());
    }
    // The write key is kept out of the rejected input too, however its name is spelt
    // (JSON lets a `\u` escape stand for any letter of it), and the rest stays as sent:
    // the browser library sends its key in the body.
    for (raw, kept) in [
        (
            json!({"writeKey": "wk_web", "event": "E"}).to_string(),
            r#"{"event":"E"}"#,
        ),
        (
            r#"{"write\u004bey": "wk_web", "event": "E"}"#.to_owned(),
            r#"{ "event": "E"}"#,
        ),
        (
            r#"{"event":"E","writeKey":"wk_web","properties":{"n":123456789012345678901234567890,"f":1.10,"d":1,"d":2}}"#.to_owned(),
            r#"{"event":"E","properties":{"n":123456789012345678901234567890,"f":1.10,"d":1,"d":2}}"#,
        ),
    ] {
        let request = post("/v1/t")
            .header("content-type", "text/plain")
            .raw(raw)
            .build();
        h.check(request, 400, json!({"code": "no_user_anon_id"}))
            .await;
        let last = h.rejected().await.pop().unwrap();
        assert_eq!(String::from_utf8(last.input.payload).unwrap(), kept);
    }
}

/// Valid JSON that no message can hold (a number beyond a 64-bit float, as
/// analytics-python writes `10**400`; nesting deeper than serde_json reads) is a refused
/// message, kept as sent, as it is inside a batch: a client does not retry a 400.
#[tokio::test]
async fn well_formed_json_a_message_cannot_hold_is_400_and_kept() {
    let h = Harness::new();
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let bodies = [
        format!(
            r#"{{"userId":"u1","event":"E","properties":{{"n":1{}}}}}"#,
            "0".repeat(400)
        ),
        r#"{"userId":"u1","event":"E","properties":{"n":1e400}}"#.to_owned(),
        format!(r#"{{"userId":"u1","event":"E","properties":{{"deep":{deep}}}}}"#),
    ];
    for body in &bodies {
        invalid_json(&h, "/v1/track", body).await;
    }
    // With the write key in the body, the key is cut out and the rest kept as sent.
    let request = post("/v1/t")
        .header("content-type", "text/plain")
        .raw(r#"{"writeKey":"wk_web","userId":"u1","event":"E","properties":{"n":1e400}}"#)
        .build();
    h.check(request, 400, json!({"code": "invalid_json"})).await;
    assert!(h.events().await.is_empty());
    let kept: Vec<String> = h
        .rejected()
        .await
        .into_iter()
        .map(|r| String::from_utf8(r.input.payload).unwrap())
        .collect();
    let mut expected = bodies.to_vec();
    expected.push(r#"{"userId":"u1","event":"E","properties":{"n":1e400}}"#.to_owned());
    assert_eq!(kept, expected);
}

#[tokio::test]
async fn the_wrong_shape_for_the_endpoint_is_400() {
    let h = Harness::new();
    let cases = [
        (
            post("/v1/track").json(json!({"writeKey": "wk_web", "batch": []})),
            "wrong_shape",
        ),
        (
            post("/v1/batch").basic("wk_web:").json(track()),
            "wrong_shape",
        ),
        (
            post("/v1/batch").basic("wk_web:").json(json!({"batch": 5})),
            "invalid_batch",
        ),
    ];
    for (request, code) in cases {
        h.check(
            request.build(),
            400,
            json!({"success": false, "code": code}),
        )
        .await;
    }
    // An empty batch is fine.
    h.check(
        post("/v1/batch")
            .basic("wk_web:")
            .json(json!({"batch": []}))
            .build(),
        200,
        json!({"success": true}),
    )
    .await;
    assert!(h.rejected().await.is_empty());
}

#[tokio::test]
async fn a_store_failure_is_503_with_retry_after() {
    let h = with_flag(|s| &s.fail_append);
    for request in [
        post("/v1/track").basic("wk_web:").json(track()),
        post("/v1/batch")
            .basic("wk_web:")
            .json(json!({"batch": [track_item()]})),
        // Refused messages are stored too, so their answer waits for the store as well.
        post("/v1/track")
            .basic("wk_web:")
            .json(json!({"event": "E"})),
    ] {
        let (headers, answer) = h
            .check(
                request.build(),
                503,
                json!({"success": false, "code": "store_unavailable"}),
            )
            .await;
        assert_eq!(headers["retry-after"], "5");
        assert!(
            !answer["message"].as_str().unwrap().contains("disk"),
            "no internals: {answer}"
        );
    }
    h.store.fail_append.store(false, Ordering::SeqCst);
    h.check(
        post("/v1/track").basic("wk_web:").json(track()).build(),
        200,
        json!({"success": true}),
    )
    .await;
}

#[tokio::test]
async fn a_budget_of_exactly_one_batch_takes_a_batch_whatever_its_size() {
    // Neither is a whole number of the 1 KiB units the budget is counted in: both round
    // up alike, or every batch would find no room and be answered 503 for ever.
    for (budget, batch) in [(600_000, 600_000), (1000, 1000), (32 * 1024 + 1, 32 * 1024)] {
        let config = IngressConfig {
            max_in_flight_bytes: budget,
            max_batch_bytes: batch,
            max_message_bytes: batch,
            ..config()
        };
        let h = Harness::with(config, TestStore::default(), |s| s);
        // A batch of exactly the limit, as sent and gzipped (which takes the room of what
        // it inflates to, not of both).
        let mut item = track_item();
        let unpadded = json!({"batch": [item.clone()]}).to_string().len();
        item["properties"]["pad"] = json!("x".repeat(batch - unpadded - r#","pad":"""#.len()));
        let body = json!({"batch": [item]});
        assert_eq!(body.to_string().len(), batch);
        for (sent, gzip) in [(1, false), (2, true)] {
            let request = post("/v1/batch").basic("wk_web:").json(body.clone());
            let request = if gzip { request.gzip() } else { request };
            h.check(request.build(), 200, json!({"success": true}))
                .await;
            // Stored, not kept as rejected input (a message id each, so no duplicate).
            assert_eq!(h.events().await.len(), sent, "budget {budget}, gzip {gzip}");
        }
    }
}

/// [`track`] with a property of `kib` KiB: a body of a little more than that.
fn padded_track(kib: usize) -> Value {
    let mut item = track();
    item["properties"]["pad"] = json!("x".repeat(kib * 1024));
    item
}

#[tokio::test]
async fn overload_is_503_with_retry_after() {
    let store = TestStore {
        gate: Some(Gate::default()),
        ..TestStore::default()
    };
    // Room for 40 KiB of bodies; each request holds what its body holds.
    let config = IngressConfig {
        max_in_flight_bytes: 40 * 1024,
        max_batch_bytes: 40 * 1024,
        ..config()
    };
    let batch = |kib| {
        let mut item = padded_track(kib);
        item["type"] = json!("track");
        post("/v1/batch")
            .basic("wk_web:")
            .json(json!({"batch": [item]}))
            .build()
    };
    let h = Harness::with(config, store, |s| s);
    let first = {
        let router = h.router.clone();
        let request = post("/v1/track")
            .basic("wk_web:")
            .json(padded_track(25))
            .build();
        tokio::spawn(tower::ServiceExt::oneshot(router, request))
    };
    let gate = h.store.gate.as_ref().unwrap();
    gate.entered.notified().await;
    // A body announced too large for the room left is refused before any of it is read
    // (this one would never finish arriving).
    let announced = axum::http::Request::post("/v1/batch")
        .header("authorization", basic("wk_web:"))
        .header("content-type", "application/json")
        .header("content-length", "20000")
        .body(stalled_body(b""))
        .unwrap();
    let (status, _, body) = h.send(announced).await;
    assert_eq!(
        (status, &body["code"]),
        (503, &json!("overloaded")),
        "{body}"
    );
    // The 25 KiB in flight leave less than 20 KiB.
    let (headers, _) = h
        .check(
            batch(20),
            503,
            json!({"success": false, "code": "overloaded"}),
        )
        .await;
    assert_eq!(headers["retry-after"], "1");
    // A wrong key in the header is told so, room or none: it would never get any.
    h.check(
        post("/v1/batch")
            .basic("wk_nobody:")
            .json(json!({"batch": [track_item()]}))
            .build(),
        401,
        json!({"success": false}),
    )
    .await;
    gate.release.notify_one();
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(h.events().await.len(), 1);
    // Its room is back: the batch now fits, and while it is in flight 25 KiB do not.
    let second = tokio::spawn(tower::ServiceExt::oneshot(h.router.clone(), batch(20)));
    gate.entered.notified().await;
    h.check(
        post("/v1/track")
            .basic("wk_web:")
            .json(padded_track(25))
            .build(),
        503,
        json!({"success": false, "code": "overloaded"}),
    )
    .await;
    gate.release.notify_one();
    assert_eq!(second.await.unwrap().unwrap().status(), 200);
    assert_eq!(h.events().await.len(), 2);
}

#[tokio::test]
async fn a_stalled_upload_holds_only_the_room_of_what_it_sent() {
    // Room for 32 KiB of bodies, one message's limit.
    let config = IngressConfig {
        max_in_flight_bytes: 32 * 1024,
        max_batch_bytes: 32 * 1024,
        body_timeout: Duration::from_secs(60),
        ..config()
    };
    let h = Harness::with(config, TestStore::default(), |s| s);
    // A body-key client (the browser library's way) announces a full-size body, sends a
    // little of it and stalls: its key is unknown until the body is read.
    let stalled = stalled_body(b"{\"writeKey\":\"wk_web\",");
    let request = axum::http::Request::post("/v1/track")
        .header("content-type", "text/plain")
        .header("content-length", "32000")
        .body(stalled)
        .unwrap();
    let stalled = tokio::spawn(tower::ServiceExt::oneshot(h.router.clone(), request));
    // Until it has read what was sent (a few polls).
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    // Others are still taken.
    for _ in 0..3 {
        h.check(
            post("/v1/track").basic("wk_web:").json(track()).build(),
            200,
            json!({"success": true}),
        )
        .await;
    }
    assert!(!stalled.is_finished());
    stalled.abort();
}

#[tokio::test]
async fn cors_preflight_and_headers_on_every_answer_to_a_browser() {
    let h = Harness::new();
    let preflight = options("/v1/track")
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,authorization,x-retry-count,content-encoding,x-shop-tenant",
        )
        .build();
    let (headers, _) = h.check(preflight, 200, Value::Null).await;
    assert_eq!(headers["access-control-allow-origin"], "*");
    let methods = headers["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(methods.contains("post"), "{methods}");
    let allowed = headers["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for name in [
        "content-type",
        "authorization",
        "x-retry-count",
        "content-encoding",
        // A header of the site's own, added through analytics-next's settings.
        "x-shop-tenant",
    ] {
        assert!(allowed.contains(name), "{name} not in {allowed}");
    }

    for (request, status) in [
        (
            post("/v1/t")
                .header("origin", "https://shop.example")
                .basic("wk_web:")
                .json(track()),
            200,
        ),
        (
            post("/v1/t")
                .header("origin", "https://shop.example")
                .json(track()),
            401,
        ),
        (
            post("/v1/nope")
                .header("origin", "https://shop.example")
                .json(track()),
            404,
        ),
    ] {
        let (headers, _) = h.check(request.build(), status, Value::Null).await;
        assert_eq!(headers["access-control-allow-origin"], "*", "{status}");
    }
    // No `Origin`, not a browser: no CORS headers (and no CORS work).
    let (headers, _) = h
        .check(
            post("/v1/t").basic("wk_web:").json(track()).build(),
            200,
            Value::Null,
        )
        .await;
    assert!(
        !headers
            .keys()
            .any(|name| name.as_str().starts_with("access-control-")),
        "{headers:?}"
    );

    let listed = IngressConfig {
        cors_origins: vec!["https://shop.example".into()],
        ..config()
    };
    let h = Harness::with(listed, TestStore::default(), |s| s);
    let request = |origin: &str| {
        post("/v1/t")
            .header("origin", origin)
            .basic("wk_web:")
            .json(track())
            .build()
    };
    let (headers, _) = h
        .check(request("https://shop.example"), 200, Value::Null)
        .await;
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://shop.example"
    );
    let (headers, _) = h
        .check(request("https://evil.example"), 200, Value::Null)
        .await;
    assert!(headers.get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn unknown_paths_are_404() {
    let h = Harness::new();
    let (_, body) = h
        .check(
            post("/v1/nope").basic("wk_web:").json(track()).build(),
            404,
            json!({"code": "no_such_endpoint"}),
        )
        .await;
    // The answer names every path there is.
    let message = body["message"].as_str().unwrap();
    for name in [
        "batch", "track", "identify", "page", "screen", "group", "alias", "import", "b", "t", "i",
        "p", "s", "g", "a",
    ] {
        let path = format!("/v1/{name}");
        let named = message
            .match_indices(&path)
            .any(|(at, _)| matches!(message.as_bytes()[at + path.len()], b',' | b' ' | b')'));
        assert!(named, "{path} not in {message}");
    }
    h.check(
        post("/v2/track").basic("wk_web:").json(track()).build(),
        404,
        json!({"success": false}),
    )
    .await;
}

struct Down;

impl DestinationHealth for Down {
    fn status(&self) -> DestinationStatus {
        DestinationStatus {
            healthy: false,
            detail: "pointillist answered 401: check the api token".into(),
        }
    }
}

/// A harness over a [`TestStore`] with `flag` set (a failure switched on).
fn with_flag(flag: impl FnOnce(&TestStore) -> &AtomicBool) -> Harness {
    let store = TestStore::default();
    flag(&store).store(true, Ordering::SeqCst);
    Harness::with(config(), store, |s| s)
}

/// A router over `store` whose clock only moves when the test moves it.
fn router_on_manual_clock(store: Arc<TestStore>) -> (Arc<ManualClock>, axum::Router) {
    let clock = Arc::new(ManualClock::new(now()));
    let state = IngressState::new(config(), store)
        .expect("the test config is valid")
        .with_clock(clock.clone());
    (clock, stipple_ingress::router(state))
}

#[tokio::test]
async fn readyz_checks_the_store_at_most_once_a_second() {
    let store = Arc::new(TestStore::default());
    let (clock, router) = router_on_manual_clock(store.clone());
    let ready = || async {
        let request = get("/readyz").build();
        let answer = tower::ServiceExt::oneshot(router.clone(), request).await;
        answer.unwrap().status()
    };
    let checks = || store.writable_checks.load(Ordering::SeqCst);
    // A flood of probes within a second: one durable write.
    let probes: Vec<_> = (0..20).map(|_| ready()).collect();
    for status in futures::future::join_all(probes).await {
        assert_eq!(status, 200);
    }
    assert_eq!(checks(), 1);
    // A store that stops taking writes shows once the second is over.
    store.fail_writable.store(true, Ordering::SeqCst);
    assert_eq!(ready().await, 200);
    clock.advance(Duration::from_secs(1));
    assert_eq!(ready().await, 503);
    assert_eq!(ready().await, 503);
    assert_eq!(checks(), 2);
}

#[tokio::test]
async fn probes_that_wait_through_a_slow_check_take_its_answer() {
    let store = Arc::new(TestStore {
        writable_gate: Some(Gate::default()),
        ..TestStore::default()
    });
    let (clock, router) = router_on_manual_clock(store.clone());
    let ready = || {
        let router = router.clone();
        tokio::spawn(async move {
            let request = get("/readyz").build();
            let answer = tower::ServiceExt::oneshot(router, request).await;
            answer.unwrap().status()
        })
    };
    let gate = store.writable_gate.as_ref().unwrap();
    let first = ready();
    gate.entered.notified().await;
    // More probes queue behind the check, which takes two seconds (a slow fsync).
    let waiting: Vec<_> = (0..5).map(|_| ready()).collect();
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    clock.advance(Duration::from_secs(2));
    gate.release.notify_one();
    let wait = Duration::from_secs(5);
    let answered = async move {
        let mut statuses = vec![first.await.unwrap()];
        for probe in waiting {
            statuses.push(probe.await.unwrap());
        }
        statuses
    };
    let statuses = tokio::time::timeout(wait, answered)
        .await
        .expect("a probe made a check of its own after the slow one (it waits at the gate)");
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    // Timed from its end, the check still stands for them: each would otherwise have
    // waited for a check of its own, one after another.
    assert_eq!(store.writable_checks.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn healthz_and_readyz() {
    let h = Harness::new();
    h.check(get("/healthz").build(), 200, Value::Null).await;
    h.check(
        get("/readyz").build(),
        200,
        json!({"ready": true, "store": {"ok": true}, "destination": {"healthy": true}}),
    )
    .await;

    let h = Harness::with(config(), TestStore::default(), |s| {
        s.with_destination_health(Arc::new(Down))
    });
    h.check(get("/healthz").build(), 200, Value::Null).await;
    // Delivery paused: events are still accepted, so the instance stays in rotation.
    h.check(
        get("/readyz").build(),
        200,
        json!({"ready": true, "store": {"ok": true},
               "destination": {"healthy": false, "detail": "pointillist answered 401: check the api token"}}),
    )
    .await;

    let h = with_flag(|s| &s.fail_writable);
    h.check(
        get("/readyz").build(),
        503,
        json!({"ready": false, "store": {"ok": false}, "destination": {"healthy": true}}),
    )
    .await;
    // Not writable for now (a full disk) is not a reason to restart...
    h.check(get("/healthz").build(), 200, json!({"alive": true}))
        .await;

    // ...a store that only a restart can clear is.
    let h = with_flag(|s| &s.fatal);
    h.check(
        get("/healthz").build(),
        503,
        json!({"alive": false, "detail": "an fsync of the store's write-ahead log failed"}),
    )
    .await;
}

#[tokio::test]
async fn metrics_text_has_the_counters_and_the_store_gauges() {
    let (h, _recording) = metered();
    let body = json!({"batch": [
        {"type": "track", "userId": "u1", "event": "E"},
        {"type": "identify", "userId": "u1"},
        {"type": "track", "event": "no user"},
        "nonsense"
    ]});
    h.check(
        post("/v1/batch").basic("wk_app:").json(body).build(),
        200,
        Value::Null,
    )
    .await;
    h.check(post("/v1/track").json(track()).build(), 401, Value::Null)
        .await;
    let (headers, _) = h
        .check(
            get("/v1/track").build(),
            405,
            json!({"success": false, "code": "method_not_allowed",
                   "message": "GET is not allowed here: the Tracking API takes events by POST"}),
        )
        .await;
    assert_eq!(headers["allow"], "POST");

    let (headers, text) = h.check(get("/metrics").build(), 200, Value::Null).await;
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = text.as_str().unwrap();
    for line in [
        r#"stipple_received_total{source="app",type="track"} 2"#,
        r#"stipple_received_total{source="app",type="identify"} 1"#,
        r#"stipple_received_total{source="app",type="unknown"} 1"#,
        r#"stipple_accepted_total{source="app",type="track"} 1"#,
        r#"stipple_accepted_total{source="app",type="identify"} 1"#,
        r#"stipple_rejected_total{source="app",type="track",code="no_user_anon_id"} 1"#,
        r#"stipple_rejected_total{source="app",type="unknown",code="invalid_message"} 1"#,
        r#"stipple_ingress_requests_total{status="200"} 1"#,
        r#"stipple_ingress_requests_total{status="401"} 1"#,
        r#"stipple_ingress_requests_total{status="405"} 1"#,
        r#"stipple_ingress_requests_total{status="503"} 0"#,
        "stipple_queued 2",
        "stipple_dead_letters 0",
        "stipple_rejected_stored 2",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
    }

    let without = Harness::new();
    without
        .check(get("/metrics").build(), 404, Value::Null)
        .await;
}

#[tokio::test]
async fn a_stalled_body_is_answered_503_retry_after_and_frees_its_slot() {
    // Room for one request.
    let config = IngressConfig {
        max_in_flight_bytes: 32 * 1024,
        max_batch_bytes: 32 * 1024,
        body_timeout: Duration::from_millis(100),
        ..config()
    };
    let h = Harness::with(config, TestStore::default(), |s| s);
    // Half a message, then nothing: the client stalls mid-body.
    let stalled = stalled_body(b"{\"userId\":");
    let request = axum::http::Request::post("/v1/track")
        .header("authorization", basic("wk_web:"))
        .header("content-type", "application/json")
        .body(stalled)
        .unwrap();
    let (status, headers, body) = h.send(request).await;
    // Not a 4xx: Segment's libraries would drop the data rather than send it again.
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(body["code"], "body_timeout");
    // The one in-flight slot is free again.
    h.check(
        post("/v1/track").basic("wk_web:").json(track()).build(),
        200,
        json!({"success": true}),
    )
    .await;
}
