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
