//! The fast mapping from stored JSON text (`Mapper::map_json`) against the reference
//! path (`Mapper::map_json_reference`: `Message`, `validate`, `map`, `to_json`): the
//! same bytes or the same error for every input, and the fast path really taken for
//! the messages the ingress stores.

#![allow(clippy::unwrap_used, reason = "test helpers fail loudly")]

use proptest::prelude::*;
use serde_json::{Value, json};
use stipple_core::{MapConfig, Mapper, Message};

mod support;

use support::{json_value, leaf};

fn mapper() -> Mapper {
    Mapper::new(MapConfig::default())
}

/// An attribute block: non-empty keys (an empty one sends the fast path to the
/// reference), dots in some, nested objects and arrays.
fn block() -> impl Strategy<Value = Value> {
    let value = leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            3 => prop::collection::btree_map("[ab_.-]{1,4}", inner.clone(), 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            1 => prop::collection::vec(inner, 0..3).prop_map(Value::Array),
        ]
    });
    // Some top-level keys collide with a context block's prefixed ones.
    prop::collection::btree_map("(trait\\.|device\\.)?[ab_.-]{1,3}", value, 0..6)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

/// An identifier: mostly present, sometimes a number, empty or null.
fn id() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => "[a-z0-9 ]{1,6}".prop_map(Value::String),
        1 => any::<u32>().prop_map(Value::from),
        1 => Just(json!("")),
        1 => Just(Value::Null),
    ]
}

/// Message-shaped values with every field the mapping reads, in all the forms that
/// change its result: ids as text, numbers or empty, nested and dotted keys that
/// collide once flattened, arrays, routing switches, each timestamp field.
fn rich_message() -> impl Strategy<Value = Value> {
    let time = prop::option::of(prop::sample::select(vec![
        json!("2026-11-28T12:00:00.123Z"),
        json!("2026-11-28T12:00:00.123Z"),
        json!("2026-11-28T12:00:00.123Z"),
        json!("2026-11-28T12:00:00+05:30"),
        json!("1999-01-01T00:00:00"),
        json!("not a time"),
    ]));
    let integrations = prop::option::of(prop::sample::select(vec![
        json!({}),
        json!({}),
        json!({"All": false}),
        json!({"All": false, "Pointillist": {"x": 1}}),
        json!({"Pointillist": false, "Amplitude": [1]}),
        json!(null),
        json!("x"),
    ]));
    (
        prop::sample::select(vec![
            "identify", "track", "page", "screen", "group", "alias", "x",
        ]),
        (id(), id(), id(), id()),
        (
            prop::option::of(".{0,6}"),
            prop::option::of(".{0,4}"),
            prop::option::of(".{0,4}"),
        ),
        (block(), block(), block(), block(), block(), block()),
        (time.clone(), time.clone(), time.clone(), time),
        (
            integrations,
            prop::option::of("[a-z0-9-]{0,4}"),
            json_value(),
        ),
    )
        .prop_map(
            |(
                kind,
                (user, anon, group, previous),
                (event, name, category),
                blocks,
                times,
                rest,
            )| {
                let (props, traits, ctx_traits, device, campaign, location) = blocks;
                let (ts, original, sent, received) = times;
                let (integrations, message_id, extra) = rest;
                let mut m = json!({
                    "type": kind, "userId": user, "anonymousId": anon, "groupId": group,
                    "previousId": previous, "event": event, "name": name, "category": category,
                    "properties": props, "traits": traits, "messageId": message_id,
                    "timestamp": ts, "originalTimestamp": original, "sentAt": sent,
                    "receivedAt": received, "integrations": integrations, "version": extra,
                    "context": { "traits": ctx_traits, "device": device, "campaign": campaign,
                                 "location": location, "library": {"name": "x"} }
                });
                // Absent rather than null for about half the optional fields.
                let obj = m.as_object_mut().unwrap();
                obj.retain(|_, v| !v.is_null());
                m
            },
        )
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

/// Renders `value` as JSON text with object keys in a pseudo-random order, some keys
/// repeated (with another value first), and some white space: text the fast path must
/// decline wherever the order matters, and otherwise map the same.
fn scrambled(value: &Value, seed: &mut u64, out: &mut String) {
    fn next(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            for i in (1..entries.len()).rev() {
                let j = usize::try_from(next(seed) % (i as u64 + 1)).unwrap();
                entries.swap(i, j);
            }
            out.push('{');
            let mut first = true;
            for (key, item) in entries {
                let dup = next(seed) % 8 == 0;
                for value in [dup.then_some(&Value::Bool(true)), Some(item)]
                    .into_iter()
                    .flatten()
                {
                    if !first {
                        out.push_str(if next(seed) % 4 == 0 { " , " } else { "," });
                    }
                    first = false;
                    out.push_str(&serde_json::to_string(key).unwrap());
                    out.push(':');
                    scrambled(value, seed, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                scrambled(item, seed, out);
            }
            out.push(']');
        }
        leaf => out.push_str(&leaf.to_string()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn stored_messages_map_the_same_and_fast(value in rich_message()) {
        let mapper = mapper();
        let Some(text) = stored(&value) else { return Ok(()) };
        assert_same(&mapper, &text);
        // On stored text the fast path declines only what the reference path refuses,
        // or a block with an empty key.
        if mapper.map_json_fast(&text).is_none() && !text.contains(r#""":"#) {
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
fn flattened_keys_that_collide_keep_the_last_written() {
    let mapper = mapper();
    for text in [
        // "a" sorts before "a.b": its "b" is written first, the top-level "a.b" wins.
        r#"{"type":"track","event":"E","userId":"u","timestamp":"2026-11-28T12:00:00.123Z","properties":{"a":{"b":1},"a-c":true,"a.b":"x"}}"#,
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
fn out_of_order_keys_are_declined_and_mapped_by_the_reference() {
    let mapper = mapper();
    let text = r#"{"type":"track","event":"E","userId":"u","timestamp":"2026-11-28T12:00:00.123Z","properties":{"a.b":"x","a":{"b":1}}}"#;
    assert!(mapper.map_json_fast(text).is_none());
    let body: Value =
        serde_json::from_slice(&mapper.map_json(text.as_bytes()).unwrap().unwrap()).unwrap();
    assert_eq!(body["labels"]["a.b"], "x");
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
