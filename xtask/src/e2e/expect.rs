//! What Pointillist should receive for a Segment message: the mapping table of
//! `shared/spec/pointillist.md`, written again here from the spec (not from
//! stipple-core), and the comparison of a delivered event with it.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde_json::{Map, Value};

/// When the event's `eventTime` must be.
#[derive(Debug, Clone)]
pub(crate) enum TimeRule {
    /// Exactly this instant (the client's `timestamp`, without `sentAt`).
    Exact(DateTime<Utc>),
    /// Within this range (a time the ingress derived from its own clock).
    Between(DateTime<Utc>, DateTime<Utc>),
}

/// The event Pointillist should receive for one message.
#[derive(Debug, Clone)]
pub(crate) struct Expected {
    pub(crate) message_id: String,
    event_type: String,
    /// actor type -> identifier -> value.
    actors: BTreeMap<String, BTreeMap<String, String>>,
    labels: BTreeMap<String, String>,
    numbers: BTreeMap<String, f64>,
    time: TimeRule,
}

/// The text of an identifier: a non-empty string, or a number's decimal text.
fn id_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Parses an ISO-8601 timestamp as the clients send it.
pub(crate) fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[derive(Default)]
struct Attributes {
    labels: BTreeMap<String, String>,
    numbers: BTreeMap<String, f64>,
}

impl Attributes {
    fn flatten(&mut self, prefix: &str, value: Option<&Value>) {
        let Some(Value::Object(map)) = value else {
            return;
        };
        for (key, value) in map {
            let key = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match value {
                Value::Null => {}
                Value::String(s) => self.label(key, s.clone()),
                Value::Bool(b) => self.label(key, b.to_string()),
                Value::Number(n) => {
                    self.labels.remove(&key);
                    self.numbers.insert(key, n.as_f64().unwrap_or(f64::NAN));
                }
                Value::Array(_) => self.label(key, value.to_string()),
                Value::Object(_) => self.flatten(&key, Some(value)),
            }
        }
    }

    fn label(&mut self, key: String, value: String) {
        self.numbers.remove(&key);
        self.labels.insert(key, value);
    }
}

impl Expected {
    /// The expected event for `message` as the ingress stores it (batch-level context
    /// already merged), whose `eventTime` must follow `time`.
    pub(crate) fn of(message: &Value, time: TimeRule) -> Expected {
        let kind = message["type"].as_str().unwrap_or_default();
        let mut customer = BTreeMap::new();
        let mut actors = BTreeMap::new();
        let mut attrs = Attributes::default();
        let ids: &[&str] = if kind == "alias" {
            &["userId", "previousId"]
        } else {
            &["userId", "anonymousId"]
        };
        for name in ids {
            if let Some(text) = id_text(&message[*name]) {
                customer.insert((*name).to_owned(), text);
            }
        }
        let context = &message["context"];
        let event_type = match kind {
            "identify" => {
                let traits = message
                    .get("traits")
                    .filter(|t| !t.is_null())
                    .or_else(|| context.get("traits"));
                attrs.flatten("", traits);
                kind.to_owned()
            }
            "group" => {
                let mut account = BTreeMap::new();
                if let Some(text) = id_text(&message["groupId"]) {
                    account.insert("groupId".to_owned(), text);
                }
                actors.insert("account".to_owned(), account);
                attrs.flatten("group", message.get("traits"));
                kind.to_owned()
            }
            "track" | "page" | "screen" => {
                attrs.flatten("trait", context.get("traits"));
                attrs.flatten("device", context.get("device"));
                attrs.flatten("campaign", context.get("campaign"));
                attrs.flatten("location", context.get("location"));
                attrs.flatten("", message.get("properties"));
                // Page and screen only: a track call has no name of its own.
                if let Some(name) = message["name"].as_str().filter(|_| kind != "track") {
                    attrs.label("name".into(), name.to_owned());
                }
                if let Some(category) = message["category"].as_str().filter(|_| kind == "page") {
                    attrs.label("category".into(), category.to_owned());
                }
                if kind == "track" {
                    message["event"].as_str().unwrap_or_default().to_owned()
                } else {
                    kind.to_owned()
                }
            }
            _ => kind.to_owned(),
        };
        let message_id = message["messageId"].as_str().unwrap_or_default().to_owned();
        attrs.label("messageId".into(), message_id.clone());
        actors.insert("customer".to_owned(), customer);
        Expected {
            message_id,
            event_type,
            actors,
            labels: attrs.labels,
            numbers: attrs.numbers,
            time,
        }
    }

    /// Compares a delivered event with this expectation. `exact` requires the labels and
    /// numbers to be exactly the expected ones (for messages the e2e wrote itself);
    /// otherwise the expected ones must be there and others are allowed (for messages a
    /// client library built, which add context the test does not control).
    pub(crate) fn compare(&self, event: &Value, exact: bool) -> Result<(), String> {
        let mut problems = Vec::new();
        let Some(object) = event.as_object() else {
            return Err(format!("not a JSON object: {event}"));
        };
        for key in object.keys() {
            if ![
                "eventSource",
                "eventType",
                "eventTime",
                "actors",
                "labels",
                "numbers",
            ]
            .contains(&key.as_str())
            {
                problems.push(format!("unexpected field {key:?}"));
            }
        }
        if event["eventSource"] != "segment" {
            problems.push(format!(
                "eventSource {} (expected \"segment\")",
                event["eventSource"]
            ));
        }
        if event["eventType"].as_str() != Some(self.event_type.as_str()) {
            problems.push(format!(
                "eventType {} (expected {:?})",
                event["eventType"], self.event_type
            ));
        }
        let actors: Option<BTreeMap<String, BTreeMap<String, String>>> =
            serde_json::from_value(event["actors"].clone()).ok();
        if actors.as_ref() != Some(&self.actors) {
            problems.push(format!(
                "actors {} (expected {:?})",
                event["actors"], self.actors
            ));
        }
        for (field, value) in [("labels", &event["labels"]), ("numbers", &event["numbers"])] {
            if let Some(map) = value.as_object() {
                if map.is_empty() {
                    problems.push(format!(
                        "{field} is sent as {{}}: empty fields must be left out"
                    ));
                }
            } else if !value.is_null() {
                problems.push(format!("{field} is not an object: {value}"));
            }
        }
        let empty = Map::new();
        let labels = event["labels"].as_object().unwrap_or(&empty);
        let numbers = event["numbers"].as_object().unwrap_or(&empty);
        for (key, want) in &self.labels {
            match labels.get(key) {
                Some(Value::String(got)) if got == want => {}
                got => problems.push(format!("label {key:?} = {got:?} (expected {want:?})")),
            }
        }
        for (key, want) in &self.numbers {
            match numbers.get(key).and_then(Value::as_f64) {
                Some(got) if got == *want => {}
                _ => problems.push(format!(
                    "number {key:?} = {:?} (expected {want})",
                    numbers.get(key)
                )),
            }
        }
        if exact {
            for key in labels.keys().filter(|k| !self.labels.contains_key(*k)) {
                problems.push(format!("unexpected label {key:?} = {}", labels[key]));
            }
            for key in numbers.keys().filter(|k| !self.numbers.contains_key(*k)) {
                problems.push(format!("unexpected number {key:?} = {}", numbers[key]));
            }
        }
        if let Err(e) = self.check_time(&event["eventTime"]) {
            problems.push(e);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "messageId {}: {}",
                self.message_id,
                problems.join("; ")
            ))
        }
    }

    fn check_time(&self, value: &Value) -> Result<(), String> {
        let text = value
            .as_str()
            .ok_or_else(|| format!("eventTime is not a string: {value}"))?;
        // RFC 3339, UTC, milliseconds: 2026-11-28T12:00:00.123Z
        let shape_ok = text.len() == 24
            && text.ends_with('Z')
            && text.as_bytes()[10] == b'T'
            && text.as_bytes()[19] == b'.'
            && text[20..23].bytes().all(|b| b.is_ascii_digit());
        let time = parse_time(text).filter(|_| shape_ok).ok_or_else(|| {
            format!("eventTime {text:?} is not RFC 3339 UTC with milliseconds (like 2026-11-28T12:00:00.123Z)")
        })?;
        match &self.time {
            TimeRule::Exact(want) => {
                let want = want.to_rfc3339_opts(SecondsFormat::Millis, true);
                if text != want {
                    return Err(format!("eventTime {text} (expected {want})"));
                }
            }
            TimeRule::Between(from, to) => {
                if time < *from || time > *to {
                    return Err(format!(
                        "eventTime {text} is not between {} and {}",
                        from.to_rfc3339_opts(SecondsFormat::Millis, true),
                        to.to_rfc3339_opts(SecondsFormat::Millis, true)
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A range of `slack` either side of `from..to`.
pub(crate) fn around(from: DateTime<Utc>, to: DateTime<Utc>, slack: TimeDelta) -> TimeRule {
    TimeRule::Between(from - slack, to + slack)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_track_maps_as_the_table_says() {
        let message = json!({"type": "track", "event": "Bought", "userId": 7, "anonymousId": "", "messageId": "m-1",
            "properties": {"price": 2.5, "tags": ["a"], "ok": true, "no": null, "addr": {"city": "Oslo"}},
            "context": {"traits": {"plan": "pro"}, "device": {"type": "ios"}, "ip": "192.0.2.1"}});
        let time = parse_time("2026-01-02T03:04:05.678+02:00").unwrap();
        let expected = Expected::of(&message, TimeRule::Exact(time));
        let delivered = json!({"eventSource": "segment", "eventType": "Bought", "eventTime": "2026-01-02T01:04:05.678Z",
            "actors": {"customer": {"userId": "7"}},
            "labels": {"tags": "[\"a\"]", "ok": "true", "addr.city": "Oslo", "trait.plan": "pro", "device.type": "ios",
                "messageId": "m-1"},
            "numbers": {"price": 2.5}});
        assert_eq!(expected.compare(&delivered, true), Ok(()));
        let mut wrong = delivered.clone();
        wrong["labels"]["extra"] = json!("x");
        wrong["eventTime"] = json!("2026-01-02T01:04:05Z");
        let problems = expected.compare(&wrong, true).unwrap_err();
        assert!(
            problems.contains("unexpected label \"extra\""),
            "{problems}"
        );
        assert!(problems.contains("eventTime"), "{problems}");
        assert!(expected.compare(&wrong["labels"], false).is_err());
    }

    #[test]
    fn group_and_alias_actors() {
        let group = json!({"type": "group", "userId": "u", "groupId": 42, "messageId": "g", "traits": {"n": 1}});
        let expected = Expected::of(&group, TimeRule::Between(Utc::now(), Utc::now()));
        assert_eq!(expected.actors["account"]["groupId"], "42");
        assert_eq!(expected.numbers["group.n"], 1.0);
        let alias = json!({"type": "alias", "userId": "u", "previousId": "p", "anonymousId": "a", "messageId": "m"});
        let expected = Expected::of(&alias, TimeRule::Between(Utc::now(), Utc::now()));
        assert_eq!(expected.actors["customer"].len(), 2);
        assert_eq!(expected.actors["customer"]["previousId"], "p");
        assert_eq!(expected.labels.len(), 1);
    }
}
