//! Property tests: whatever JSON comes in, the mapper answers with an event or an error,
//! never a panic, and every event it produces keeps the Pointillist contract.

#![allow(clippy::unwrap_used, reason = "test helpers fail loudly")]

use proptest::prelude::*;
use serde_json::Value;
use stipple_core::{MapConfig, Mapper, Message, PointillistEvent};

mod support;

use support::{json_value, message};

fn assert_contract(event: &PointillistEvent) {
    let json: Value = serde_json::from_slice(&event.to_json()).unwrap();
    let obj = json.as_object().unwrap();
    for key in obj.keys() {
        assert!(
            [
                "eventSource",
                "eventType",
                "eventTime",
                "actors",
                "labels",
                "numbers"
            ]
            .contains(&key.as_str()),
            "unexpected field {key}"
        );
    }
    assert!(!obj["eventType"].as_str().unwrap().is_empty());
    let time = obj["eventTime"].as_str().unwrap();
    assert_eq!(time.len(), 24, "{time}");
    assert!(time.ends_with('Z') && time.as_bytes()[19] == b'.', "{time}");
    let actors = obj["actors"].as_object().unwrap();
    let customer = actors["customer"].as_object().unwrap();
    assert!(!customer.is_empty(), "the primary actor has no identifier");
    for actor in actors.values() {
        for value in actor.as_object().unwrap().values() {
            assert!(value.as_str().is_some_and(|s| !s.is_empty()));
        }
    }
    if let Some(labels) = obj.get("labels") {
        let labels = labels.as_object().unwrap();
        assert!(!labels.is_empty(), "labels sent as {{}}");
        assert!(labels.values().all(Value::is_string));
        assert_eq!(labels["messageId"], "m-1");
    }
    if let Some(numbers) = obj.get("numbers") {
        let numbers = numbers.as_object().unwrap();
        assert!(!numbers.is_empty(), "numbers sent as {{}}");
        assert!(
            numbers
                .values()
                .all(|n| n.as_f64().is_some_and(f64::is_finite))
        );
        if let Some(labels) = obj.get("labels").and_then(Value::as_object) {
            assert!(
                numbers.keys().all(|k| !labels.contains_key(k)),
                "a key is both label and number"
            );
        }
    }
}

fn map(value: Value) -> Option<PointillistEvent> {
    let message: Message = serde_json::from_value(value).ok()?;
    let valid = message.validate().ok()?;
    Mapper::new(MapConfig::default()).map(valid).ok()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_json_maps_or_errors_without_panicking(value in json_value()) {
        if let Some(event) = map(value) {
            assert_contract(&event);
        }
    }

    #[test]
    fn message_shaped_json_keeps_the_contract(value in message()) {
        if let Some(event) = map(value) {
            assert_contract(&event);
        }
    }

    #[test]
    fn bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(stipple_core::Input::Message(m)) = stipple_core::Input::parse(&bytes) {
            if let Ok(valid) = m.validate() {
                let _ = Mapper::new(MapConfig::default()).map(valid);
            }
        }
    }
}

#[test]
fn the_message_strategy_reaches_the_mapper() {
    // Guards the generator: if it stopped producing valid messages the property above
    // would pass without checking anything.
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = message();
    let mapped = (0..200)
        .filter(|_| map(strategy.new_tree(&mut runner).unwrap().current()).is_some())
        .count();
    assert!(
        mapped > 40,
        "only {mapped} of 200 generated messages mapped"
    );
}
