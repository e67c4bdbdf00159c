//! The fast reading for storage (`stipple_core::split`, then `Rest::write`) against the
//! reference path (`Input::parse` into a `Message`, then `serde_json::to_vec`): where
//! the fast path takes a message, what it stores reads back as the message the reference
//! path stores and maps to the same Pointillist event; and it takes the messages clients
//! send. (It keeps the blocks as sent, where the reference writes them anew.)

#![allow(clippy::unwrap_used, reason = "test helpers fail loudly")]

use proptest::prelude::*;
use serde_json::{Value, json};
use stipple_core::{EnvelopeField, Input, MapConfig, Mapper, Message, split, split_batch};

mod support;

use support::{json_value, rich_message, scrambled};

/// The reference path's stored text, when it reads `text` as one message.
fn reference(text: &str) -> Option<Vec<u8>> {
    match Input::parse(text.as_bytes()).ok()? {
        Input::Message(message) => Some(serde_json::to_vec(&message).unwrap()),
        Input::Batch(_) => None,
    }
}

/// The fast path's stored text, `None` when it declines.
fn fast(text: &str) -> Option<Vec<u8>> {
    let split = split(text)?;
    Some(split.rest.write(&split.plain).unwrap())
}

/// Stored text as delivery's reference path reads it, written out again.
fn read_back(stored: &[u8]) -> String {
    let message: Message = serde_json::from_slice(stored).unwrap();
    String::from_utf8(serde_json::to_vec(&message).unwrap()).unwrap()
}

/// What delivery sends for stored text (its fast path, or the reference when that
/// declines), or why it cannot.
fn mapped(stored: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mapper = Mapper::new(MapConfig::default());
    mapper.map_json(stored).map_err(|e| e.to_string())
}

/// Where the fast path takes `text`, the reference path reads it too; the fast path's
/// text reads back as the reference's message, and maps to the same event.
fn assert_same(text: &str) -> Result<(), TestCaseError> {
    if let Some(fast) = fast(text) {
        let reference = reference(text);
        prop_assert!(reference.is_some(), "taken by the fast path only: {}", text);
        let reference = reference.unwrap();
        prop_assert_eq!(
            read_back(&fast),
            String::from_utf8(reference.clone()).unwrap(),
            "input: {}",
            text
        );
        // Against the input mapped as it is: the reference's stored text went through
        // `serde_json` once more, and its float reading may move a last digit.
        prop_assert_eq!(mapped(&fast), mapped(text.as_bytes()), "input: {}", text);
    }
    Ok(())
}

/// A stamped plain message writes as the reference path's stamped message does: the
/// stamping sees the same fields either way.
#[test]
fn stamping_the_plain_fields_stores_what_the_reference_stores() {
    let text = r#"{"type":"track","event":"Order Completed","userId":"u-1","writeKey":"k",
        "timestamp":"2026-11-28T12:00:00.123Z","sentAt":"2026-11-28T12:00:01.000Z",
        "properties":{"total":27.5,"coupon":"hasbros","currency":"USD"},
        "context":{"library":{"name":"analytics-node","version":"3.1.0"},"ip":"203.0.113.7"},
        "integrations":{}}"#;
    let received = chrono::DateTime::parse_from_rfc3339("2026-11-28T12:00:02Z")
        .unwrap()
        .to_utc();
    let stamp = |message: Message| {
        let mut valid = message.validate().unwrap();
        valid.ensure_message_id(|| "m-1".to_owned());
        valid.apply_received_at(received);
        valid.into_message()
    };
    let mut reference: Message = serde_json::from_str(text).unwrap();
    reference.other.remove("writeKey");
    let reference = serde_json::to_vec(&stamp(reference)).unwrap();
    let mut split = split(text).unwrap();
    split.rest.remove_other("writeKey");
    let fast = split.rest.write(&stamp(split.plain)).unwrap();
    assert_eq!(
        read_back(&fast),
        String::from_utf8(reference.clone()).unwrap()
    );
    assert_eq!(mapped(&fast), mapped(&reference));
    assert!(mapped(&fast).unwrap().is_some());
    assert!(
        Mapper::new(MapConfig::default())
            .map_json_fast(std::str::from_utf8(&fast).unwrap())
            .is_some()
    );
}

/// A message as analytics-node sends it (keys in its order, not sorted) takes the fast
/// path: the ingress's hot path is the one tested here.
#[test]
fn client_messages_take_the_fast_path() {
    let text = json!({
        "type": "track", "event": "Product Added", "userId": "u", "anonymousId": "a",
        "messageId": "m", "timestamp": "2026-11-28T12:00:00.123Z",
        "properties": {"sku": "G-32", "price": 18.99, "name": "Monopoly"},
        "context": {"library": {"name": "@segment/analytics-node", "version": "3.1.0"},
                    "traits": {"plan": "pro", "age": 3}},
        "integrations": {}, "_metadata": {"nodeVersion": "20"}
    })
    .to_string();
    assert!(fast(&text).is_some());
    assert_same(&text).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn messages_store_the_same(value in rich_message()) {
        let text = value.to_string();
        assert_same(&text)?;
        // Keys in JSON's order, no repeats: the fast path takes every message the
        // reference path reads.
        if reference(&text).is_some() {
            prop_assert!(fast(&text).is_some(), "declined: {}", text);
        }
    }

    #[test]
    fn any_key_order_and_repeats_store_the_same(value in rich_message(), seed in 1..u64::MAX) {
        let mut text = String::new();
        scrambled(&value, &mut { seed }, &mut text);
        assert_same(&text)?;
    }

    #[test]
    fn any_json_stores_the_same(value in json_value()) {
        assert_same(&value.to_string())?;
        let wrapped = json!({"type": "track", "properties": value.clone(), "context": {"traits": value.clone(), "x": value}});
        assert_same(&wrapped.to_string())?;
    }

    #[test]
    fn any_text_stores_the_same(text in ".{0,48}") {
        assert_same(&text)?;
    }
}

/// Blocks are stored as the client wrote them, keys unsorted, escapes and spaces kept:
/// delivery reads them as the reference path's sorted text.
#[test]
fn unsorted_escaped_and_spaced_blocks_are_stored_as_sent() {
    for (text, block) in [
        (
            r#"{"type":"track","event":"E","userId":"u","properties": {"b": "\u00e9\n", "a": -0, "c": 1E3, "d": 12345678901234567890123}}"#,
            r#"{"b": "\u00e9\n", "a": -0, "c": 1E3, "d": 12345678901234567890123}"#,
        ),
        (
            r#"{"type":"page","userId":"u","context": {"z": [1, 2], "traits": null, "device": {"y": 1, "x": [ {"b": 1, "a": 2} ]}}}"#,
            r#"{"y": 1, "x": [ {"b": 1, "a": 2} ]}"#,
        ),
        (
            r#"{"type":"identify","userId":"u","traits": {"": 1, "\u0000": 2}, "integrations": null}"#,
            r#"{"": 1, "\u0000": 2}"#,
        ),
        (
            r#"{"type":"track","event":"E","userId":"u","properties":{"a":{"b":1},"a.b":2}}"#,
            r#"{"a":{"b":1},"a.b":2}"#,
        ),
    ] {
        let stored = String::from_utf8(fast(text).expect(text)).unwrap();
        assert!(stored.contains(block), "{block} not in {stored}");
        assert_same(text).unwrap();
    }
    let stored = fast(r#"{ "zz" : { "b" : 1 , "a" : 2 } , "aa" : null, "type": null }"#).unwrap();
    assert_eq!(stored, br#"{"aa":null,"zz":{ "b" : 1 , "a" : 2 }}"#);
}

/// A numeric id is stored as the client wrote it, on both paths: every digit of one too
/// long for 64 bits, so that delivery maps it to its full decimal text.
#[test]
fn numeric_ids_are_stored_as_written() {
    let text = r#"{"type":"track","event":"E","userId":123456789012345678901234567890,
        "anonymousId":1e3,"groupId":-0,"previousId":2.50,"timestamp":"2026-11-28T12:00:00Z"}"#;
    assert_same(text).unwrap();
    let stored = String::from_utf8(fast(text).unwrap()).unwrap();
    for written in [
        r#""userId":123456789012345678901234567890"#,
        r#""anonymousId":1e3"#,
        r#""groupId":-0"#,
        r#""previousId":2.50"#,
    ] {
        assert!(stored.contains(written), "{written} not in {stored}");
    }
    let mapper = stipple_core::Mapper::new(stipple_core::MapConfig::default());
    let event: Value =
        serde_json::from_slice(&mapper.map_json(stored.as_bytes()).unwrap().unwrap()).unwrap();
    assert_eq!(
        event["actors"]["customer"],
        json!({"userId": "123456789012345678901234567890", "anonymousId": "1000"})
    );
}

/// An id of another JSON type is refused alike on both paths, with serde's wording.
#[test]
fn ids_of_other_types_are_refused() {
    for (id, wording) in [
        (
            "true",
            "invalid type: boolean `true`, expected a string or a number",
        ),
        (
            "[1]",
            "invalid type: sequence, expected a string or a number",
        ),
        (
            r#"{"a":1}"#,
            "invalid type: map, expected a string or a number",
        ),
        ("1e400", "identifier is not a finite number"),
    ] {
        let text = format!(r#"{{"type":"track","event":"E","userId":{id}}}"#);
        assert!(fast(&text).is_none(), "{text}");
        let error = Input::parse(text.as_bytes()).err().unwrap();
        assert!(error.message.contains(wording), "{text}: {}", error.message);
    }
}

/// Blocks nested as deep as `serde_json` reads are taken and stored alike; one level more
/// and both paths refuse the message (the fast path declines, the reference errs).
#[test]
fn nesting_is_taken_up_to_the_reference_paths_limit() {
    for (block, context) in [("properties", false), ("traits", true)] {
        let mut deepest = 0;
        for levels in 118..=130 {
            let value = format!("{}1{}", "[".repeat(levels), "]".repeat(levels));
            let text = if context {
                format!(
                    r#"{{"type":"identify","userId":"u","context":{{"{block}":{{"a":{value}}}}}}}"#
                )
            } else {
                format!(r#"{{"type":"track","event":"E","userId":"u","{block}":{{"a":{value}}}}}"#)
            };
            assert_same(&text).unwrap();
            assert_eq!(
                fast(&text).is_some(),
                reference(&text).is_some(),
                "{levels} levels"
            );
            if fast(&text).is_some() {
                deepest = levels;
            }
        }
        assert!(deepest > 118 && deepest < 130, "{block}: {deepest}");
    }
}

/// The batch scan's limit on items, as the ingress's default.
const LIMIT: usize = 2500;

/// The text each path stores for a split message.
fn written(split: &stipple_core::Split<'_>) -> Vec<u8> {
    split.rest.write(&split.plain).unwrap()
}

/// Where the batch scan (`split_batch`) takes a body, the reference path reads it as a
/// batch too, with the same `sentAt`, the same items' texts, and each item taken by
/// `Batch::split_item` and stored alike (the batch's `sentAt` inherited alike).
fn assert_same_batch(text: &str) -> Result<(), TestCaseError> {
    let Some(fast) = split_batch(text, LIMIT) else {
        return Ok(());
    };
    let reference = Input::parse_batch(text.as_bytes());
    let Ok(Input::Batch(batch)) = reference else {
        return Err(TestCaseError::fail(format!(
            "taken by the batch scan only ({reference:?}): {text}"
        )));
    };
    prop_assert!(
        !matches!(batch.sent_at, Some(EnvelopeField::Invalid(_))),
        "input: {}",
        text
    );
    prop_assert_eq!(fast.sent_at.as_deref(), batch.sent_at(), "input: {}", text);
    prop_assert_eq!(fast.items.len(), batch.batch.len(), "input: {}", text);
    for (index, item) in fast.items.iter().enumerate() {
        prop_assert_eq!(item.raw, batch.batch[index].get(), "input: {}", text);
        let Some(split) = batch.split_item(index) else {
            return Err(TestCaseError::fail(format!(
                "item {index} taken by the batch scan only: {text}"
            )));
        };
        prop_assert_eq!(written(&item.split), written(&split), "input: {}", text);
    }
    Ok(())
}

/// A batch body of `items`' texts, its keys in one of several orders, with spaces.
fn envelope(items: &[String], sent_at: Option<&str>, write_key: bool, order: u8) -> String {
    let mut keys = vec![format!(" \"batch\" :\n[ {} ]", items.join(" ,\n"))];
    if let Some(sent_at) = sent_at {
        keys.push(format!("\"sentAt\": {}", json!(sent_at)));
    }
    if write_key {
        keys.push(r#""writeKey":"wk_1""#.to_owned());
    }
    keys.push(r#""_metadata": {"n": [1, 2.5e3, "x\u00e9"]}"#.to_owned());
    let turn = usize::from(order) % keys.len();
    keys.rotate_left(turn);
    format!("{{ {} }}\n", keys.join(", "))
}

/// A batch as analytics-node sends it takes the scan, every item with it.
#[test]
fn client_batches_take_the_batch_scan() {
    let item = |n: u32| {
        json!({
            "type": "track", "event": "Product Added", "userId": format!("u{n}"),
            "messageId": format!("m{n}"), "timestamp": "2026-11-28T12:00:00.123Z",
            "properties": {"sku": "G-32", "price": 18.99},
            "context": {"library": {"name": "@segment/analytics-node", "version": "3.1.0"}},
            "integrations": {}, "_metadata": {"nodeVersion": "20"}
        })
        .to_string()
    };
    let items: Vec<String> = (0..3).map(item).collect();
    let text = envelope(&items, Some("2026-11-28T12:00:01.000Z"), true, 0);
    let fast = split_batch(&text, LIMIT).expect("taken");
    assert_eq!(fast.items.len(), 3);
    assert_eq!(fast.items[1].raw, items[1]);
    assert_eq!(
        fast.items[2].split.plain.sent_at.as_deref(),
        Some("2026-11-28T12:00:01.000Z")
    );
    assert_same_batch(&text).unwrap();
}

/// What the batch scan leaves to the reference path, which decides (its answers and
/// error messages stand): batch-level `context` or `integrations` to merge, a key of the
/// envelope twice, anything but an array of messages it takes, and what is not a batch.
#[test]
fn the_batch_scan_declines_what_the_reference_decides() {
    let good = r#"{"type":"track","event":"E","userId":"u"}"#;
    for text in [
        format!(r#"{{"batch":[{good}],"context":{{"ip":"203.0.113.7"}}}}"#),
        format!(r#"{{"batch":[{good}],"integrations":{{}}}}"#),
        format!(r#"{{"batch":[{good}],"context":null}}"#),
        format!(r#"{{"batch":[{good}],"batch":[{good}]}}"#),
        format!(r#"{{"batch":[{good}],"sentAt":"a","sentAt":"b"}}"#),
        format!(r#"{{"batch":[{good}],"sentAt":7}}"#),
        format!(r#"{{"batch":[{good}],"writeKey":["k"]}}"#),
        format!(r#"{{"batch":[{good}, 7]}}"#),
        format!(r#"{{"batch":[{good}, {{"batch":[]}}]}}"#),
        format!(r#"{{"batch":[{good}, {{"type":"track","userId":{{}}}}]}}"#),
        format!(r#"{{"batch":[{good},]}}"#),
        format!(r#"{{"batch":{good}}}"#),
        format!(r#"{{"batch":[{good}]}} x"#),
        good.to_owned(),
        "[]".to_owned(),
        String::new(),
    ] {
        assert!(split_batch(&text, LIMIT).is_none(), "taken: {text}");
    }
    // Refused items are the ingress's to answer, per item: the scan takes them.
    let refused = r#"{"type":"track","event":"E"}"#;
    let text = format!(r#"{{"batch":[{good},{refused}],"sentAt":null,"writeKey":null}}"#);
    assert_eq!(split_batch(&text, LIMIT).expect("taken").items.len(), 2);
    assert_same_batch(&text).unwrap();
    assert_same_batch(r#"{"batch":[]}"#).unwrap();
    // Up to the limit, not past it (the ingress refuses more before reading any item).
    let items = [good; 3].join(",");
    let text = format!(r#"{{"batch":[{items}]}}"#);
    assert_eq!(split_batch(&text, 3).expect("taken").items.len(), 3);
    assert!(split_batch(&text, 2).is_none());
    // A body of tiny items makes no room past the limit either.
    let text = format!(r#"{{"batch":[{}]}}"#, vec!["{}"; 10_000].join(","));
    assert!(split_batch(&text, 2).is_none());
    let text = format!(r#"{{"batch":[{good},{}]}}"#, vec!["{}"; 10_000].join(","));
    assert!(split_batch(&text, 5).is_none());
    assert!(split_batch(r#"{"batch":[]}"#, LIMIT).is_some());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn batches_store_the_same(
        values in prop::collection::vec(rich_message(), 0..5),
        sent_at in prop::option::of(prop::sample::select(vec![
            "2026-11-28T12:00:01.000Z", "2026-11-28T13:00:01+01:00", "é\n\u{1}", "",
        ])),
        write_key in any::<bool>(),
        order in any::<u8>(),
        seed in 1..u64::MAX,
    ) {
        let mut seed = seed;
        let items: Vec<String> = values
            .iter()
            .map(|value| {
                let mut text = String::new();
                scrambled(value, &mut seed, &mut text);
                text
            })
            .collect();
        let text = envelope(&items, sent_at, write_key, order);
        assert_same_batch(&text)?;
        // Items with their keys in JSON's order, which every one the reference path
        // reads is: the scan takes the batch whenever the reference takes each item.
        let plain: Vec<String> = values.iter().map(Value::to_string).collect();
        let text = envelope(&plain, sent_at, write_key, order);
        assert_same_batch(&text)?;
        if let Ok(Input::Batch(batch)) = Input::parse_batch(text.as_bytes()) {
            if (0..batch.batch.len()).all(|i| batch.split_item(i).is_some()) {
                prop_assert!(split_batch(&text, LIMIT).is_some(), "declined: {}", text);
            }
        }
    }

    #[test]
    fn any_json_in_a_batch_stores_the_same(values in prop::collection::vec(json_value(), 0..4)) {
        let items: Vec<String> = values.iter().map(Value::to_string).collect();
        assert_same_batch(&envelope(&items, None, false, 0))?;
        let wrapped = json!({"batch": values, "sentAt": "s"}).to_string();
        assert_same_batch(&wrapped)?;
    }

    #[test]
    fn any_text_in_a_batch_stores_the_same(text in ".{0,48}") {
        assert_same_batch(&format!(r#"{{"batch":[{text}]}}"#))?;
        assert_same_batch(&text)?;
    }
}
