//! Generators shared by the property tests: any JSON, and message-shaped JSON of which
//! many pass validation.

#![allow(dead_code, reason = "each test file uses its own share")]

use proptest::prelude::*;
use serde_json::{Map, Value, json};

pub(crate) fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,12}".prop_map(Value::String),
    ]
}

pub(crate) fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

pub(crate) fn object() -> impl Strategy<Value = Value> {
    prop::collection::btree_map("[a-zA-Z_.]{0,8}", json_value(), 0..6)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

pub(crate) fn id() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        ".{0,6}".prop_map(Value::String),
        any::<u32>().prop_map(Value::from)
    ]
}

/// Message-shaped values, so that many of them pass validation and reach the mapper.
pub(crate) fn message() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec!["identify", "track", "page", "screen", "group", "alias", "other"]),
        (id(), id(), id(), id()),
        prop::option::of(".{0,10}"),
        (object(), object(), object(), object(), object()),
        prop::option::of(prop::sample::select(vec![
            "2026-11-28T12:00:00.123Z",
            "2026-11-28T12:00:00+05:30",
            "1999-01-01T00:00:00",
            "not a time",
        ])),
    )
        .prop_map(|(kind, (user, anon, group, previous), event, (props, traits, ctx_traits, device, campaign), ts)| {
            json!({
                "type": kind, "userId": user, "anonymousId": anon, "groupId": group, "previousId": previous,
                "event": event, "name": "n", "properties": props, "traits": traits, "timestamp": ts,
                "receivedAt": "2026-11-28T12:00:01Z", "messageId": "m-1",
                "context": { "traits": ctx_traits, "device": device, "campaign": campaign, "location": { "city": "x" } }
            })
        })
}

/// An attribute block: non-empty keys (an empty one sends the fast path to the
/// reference), dots in some, nested objects and arrays.
pub(crate) fn block() -> impl Strategy<Value = Value> {
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
pub(crate) fn rich_id() -> impl Strategy<Value = Value> {
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
pub(crate) fn rich_message() -> impl Strategy<Value = Value> {
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
        (rich_id(), rich_id(), rich_id(), rich_id()),
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

/// Renders `value` as JSON text with object keys in a pseudo-random order, some keys
/// repeated (with another value first), and some white space: text the fast path must
/// decline wherever the order matters, and otherwise map the same.
pub(crate) fn scrambled(value: &Value, seed: &mut u64, out: &mut String) {
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
