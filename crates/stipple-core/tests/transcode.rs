//! The fast mapping from stored JSON text (`Mapper::map_json`) against the reference
//! path (`Mapper::map_json_reference`: `Message`, `validate`, `map`, `to_json`): the
//! same bytes or the same error for every input, and the fast path really taken for
//! the messages the ingress stores.

#![allow(clippy::unwrap_used, reason = "test helpers fail loudly")]

use proptest::prelude::*;
use serde_json::Value;
use stipple_core::{MapConfig, Mapper, Message};

mod support;

use support::{json_value, rich_message, scrambled};

fn mapper() -> Mapper {
    Mapper::new(MapConfig::default())
}

/// What `map_json` answered, comparable: the body, or the error's text.
fn outcome(
    result: Result<Option<Vec<u8>>, stipple_core::MapError>,
) -> Result<Option<String>, String> {
    result
        .map(|body| body.map(|b| String::from_utf8(b).unwrap()))
        .map_err(|e| e.to_string())
}

fn assert_same(mapper: &Mapper, text: &str) {
    let reference = outcome(mapper.map_json_reference(text.as_bytes()));
    let fast = outcome(mapper.map_json(text.as_bytes()));
    assert_eq!(fast, reference, "input: {text}");
}

/// The message as the ingress stores it: read as a `Message`, written back.
fn stored(value: &Value) -> Option<String> {
    let message: Message = serde_json::from_value(value.clone()).ok()?;
    Some(serde_json::to_string(&message).unwrap())
}

/// Whether two keys of one attribute block of `message`, whatever their values, flatten
/// to the same path (`{"a": {"b": 1}, "a.b": 2}`): the fast path leaves those to the
/// reference.
fn collides(message: &Value) -> bool {
    fn flatten(value: &Value, path: &str, keys: &mut Vec<String>) {
        let Value::Object(map) = value else { return };
        for (key, value) in map {
            let full = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            flatten(value, &full, keys);
            keys.push(full);
        }
    }
    let context = &message["context"];
    [
        &message["properties"],
        &message["traits"],
        &context["traits"],
        &context["device"],
        &context["campaign"],
        &context["location"],
    ]
    .into_iter()
    .any(|block| {
        let mut keys = Vec::new();
        flatten(block, "", &mut keys);
        keys.sort();
        keys.windows(2).any(|w| w[0] == w[1])
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn stored_messages_map_the_same_and_fast(value in rich_message()) {
        let mapper = mapper();
        let Some(text) = stored(&value) else { return Ok(()) };
        assert_same(&mapper, &text);
        // On stored text the fast path declines only what the reference path refuses,
        // a block with an empty key, or one whose keys collide once flattened.
        if mapper.map_json_fast(&text).is_none() && !text.contains(r#""":"#) && !collides(&value) {
            prop_assert!(mapper.map_json_reference(text.as_bytes()).is_err(), "declined: {}", text);
        }
    }

    #[test]
    fn any_key_order_maps_the_same(value in rich_message(), seed in 1..u64::MAX) {
        let mut text = String::new();
        scrambled(&value, &mut { seed }, &mut text);
        assert_same(&mapper(), &text);
    }

    #[test]
    fn any_json_maps_the_same(value in json_value()) {
        assert_same(&mapper(), &value.to_string());
    }

    #[test]
    fn any_bytes_map_the_same(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let mapper = mapper();
        prop_assert_eq!(
            outcome(mapper.map_json(&bytes)),
            outcome(mapper.map_json_reference(&bytes))
        );
    }
}

#[test]
fn the_generator_reaches_the_fast_path() {
    // Guards the properties above: most generated messages must be mapped by the fast
    // path itself, or they would compare the reference path with itself.
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = rich_message();
    let mapper = mapper();
    let fast = (0..400)
        .filter_map(|_| stored(&strategy.new_tree(&mut runner).unwrap().current()))
        .filter(|text| matches!(mapper.map_json_fast(text), Some(Some(_))))
        .count();
    assert!(
        fast > 60,
        "only {fast} of 400 generated messages took the fast path"
    );
}

#[test]
fn keys_in_any_order_take_the_fast_path() {
    let mapper = mapper();
    for text in [
        // As a client sends them, or as stored: the fast path sorts what it reads.
        r#"{"type":"track","event":"E","userId":"u","timestamp":"2026-11-28T12:00:00.123Z","properties":{"z":1,"a":{"y":true,"b":"x"},"m":null,"c":[2,1]}}"#,
        // A context block and a property flatten to the same key: the property wins.
        r#"{"type":"page","userId":"u","name":"N","timestamp":"2026-11-28T12:00:00.123Z","context":{"device":{"id":"d"}},"properties":{"device.id":7,"name":"p"}}"#,
        // The primary actor type sorts before "account".
        r#"{"type":"group","groupId":12,"anonymousId":"a","timestamp":"2026-11-28T12:00:00.123Z","traits":{"n":[1,{"b":null}]}}"#,
    ] {
        assert!(mapper.map_json_fast(text).is_some(), "declined: {text}");
        assert_same(&mapper, text);
    }
}

#[test]
fn keys_that_collide_in_a_block_are_left_to_the_reference() {
    let mapper = mapper();
    for (text, label) in [
        // The reference flattens in a map's key order ("a" before "a.b"): "a.b" wins,
        // wherever it stands in the text.
        (
            r#"{"type":"track","event":"E","userId":"u","timestamp":"2026-11-28T12:00:00.123Z","properties":{"a":{"b":1},"a-c":true,"a.b":"x"}}"#,
            Some("x"),
        ),
        (
            r#"{"type":"track","event":"E","userId":"u","timestamp":"2026-11-28T12:00:00.123Z","properties":{"a.b":"x","a":{"b":1}}}"#,
            Some("x"),
        ),
        // A key repeated in one object: the last one stands, even a `null`.
        (
            r#"{"type":"track","event":"E","userId":"u","timestamp":"2026-11-28T12:00:00.123Z","properties":{"a":{"b":"y","b":null}}}"#,
            None,
        ),
    ] {
        assert!(mapper.map_json_fast(text).is_none(), "taken: {text}");
        assert_same(&mapper, text);
        let body: Value =
            serde_json::from_slice(&mapper.map_json(text.as_bytes()).unwrap().unwrap()).unwrap();
        assert_eq!(body["labels"]["a.b"].as_str(), label, "{text}");
    }
}

#[test]
fn a_primary_actor_named_account_replaces_the_group() {
    for actor_type in ["account", "aardvark", "zebra"] {
        let mapper = Mapper::new(MapConfig {
            actor_type: actor_type.into(),
            ..MapConfig::default()
        });
        let text =
            r#"{"type":"group","groupId":"g","userId":"u","timestamp":"2026-11-28T12:00:00.123Z"}"#;
        assert!(mapper.map_json_fast(text).is_some());
        assert_same(&mapper, text);
    }
}

/// A track message whose `properties` hold one object under a key of `key_len` bytes,
/// with `leaves` numbers: each leaf's label key repeats the long key.
fn amplified(key_len: usize, leaves: usize) -> String {
    let inner: serde_json::Map<String, Value> = (0..leaves)
        .map(|i| (format!("{i:04}"), Value::from(1)))
        .collect();
    let mut properties = serde_json::Map::new();
    properties.insert("k".repeat(key_len), Value::Object(inner));
    serde_json::json!({
        "type": "track", "event": "E", "userId": "u", "messageId": "m",
        "timestamp": "2026-11-28T12:00:00.000Z", "properties": properties,
    })
    .to_string()
}

#[test]
fn an_event_that_would_grow_past_the_limit_is_refused_on_both_paths() {
    let mapper = mapper();
    // 30 KB of input, 400 KB of labels: refused, and the fast path declines it early.
    let big = amplified(2_000, 200);
    assert!(big.len() < 32 * 1024);
    let refused = mapper.map_json(big.as_bytes()).unwrap_err().to_string();
    assert!(refused.contains("event_too_large"), "{refused}");
    assert!(mapper.map_json_fast(&big).is_none());
    assert_same(&mapper, &big);
    // Well under the limit (the fast path counts a nested key twice), both paths map it
    // alike, the fast one taking it.
    let fits = amplified(2_000, 60);
    let body = mapper.map_json(fits.as_bytes()).unwrap().unwrap();
    assert!(body.len() > 100 * 1024 && body.len() < stipple_core::MAX_ATTRIBUTE_BYTES);
    assert!(mapper.map_json_fast(&fits).is_some());
    assert_same(&mapper, &fits);
}

/// The `messageId` label is the message's own id: a property of that name never stands
/// in for it, on either path.
#[test]
fn a_property_named_message_id_is_never_the_message_id_label() {
    let mapper = mapper();
    let time = r#""timestamp":"2026-11-28T12:00:00.000Z""#;
    for (text, expected) in [
        (
            format!(
                r#"{{"type":"track","event":"E","userId":"u",{time},"properties":{{"messageId":"prop","n":1}}}}"#
            ),
            None,
        ),
        (
            format!(
                r#"{{"type":"track","event":"E","userId":"u","messageId":"","properties":{{"messageId":5}},{time}}}"#
            ),
            None,
        ),
        (
            format!(
                r#"{{"type":"identify","userId":"u","messageId":"m-1",{time},"traits":{{"messageId":"t"}}}}"#
            ),
            Some("m-1"),
        ),
    ] {
        assert!(mapper.map_json_fast(&text).is_some(), "declined: {text}");
        assert_same(&mapper, &text);
        let body: Value =
            serde_json::from_slice(&mapper.map_json(text.as_bytes()).unwrap().unwrap()).unwrap();
        assert_eq!(body["labels"]["messageId"].as_str(), expected, "{text}");
        assert!(body["numbers"].get("messageId").is_none(), "{text}");
    }
}

/// An empty key is a key: nested under it, a member's path starts with `.`, and never
/// lands on a key of the same name one level up.
#[test]
fn an_empty_key_keeps_its_place_in_the_path() {
    let mapper = mapper();
    let text = r#"{"type":"identify","userId":"u","messageId":"m","timestamp":"2026-11-28T12:00:00.000Z","traits":{"":{"b":2,"":{"q":1}},"b":"x"}}"#;
    assert_same(&mapper, text);
    let body: Value =
        serde_json::from_slice(&mapper.map_json(text.as_bytes()).unwrap().unwrap()).unwrap();
    assert_eq!(body["labels"]["b"], "x");
    assert_eq!(body["numbers"][".b"], 2);
    assert_eq!(body["numbers"]["..q"], 1);
}
