//! Segment's batch envelope and the reading of "one message or one batch" input.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::JsonMap;
use crate::error::ValidationError;
use crate::message::{Context, Message};

/// The body of `/v1/batch`: items are kept raw so that one bad item is reported on its
/// own and the rest still go through.
#[derive(Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Batch {
    /// The messages, unparsed.
    pub batch: Vec<Box<RawValue>>,
    /// Merged into each item's `context` (the item's keys win).
    #[serde(default)]
    pub context: Option<Context>,
    /// Merged into each item's `integrations` (the item's keys win).
    #[serde(default)]
    pub integrations: Option<JsonMap>,
    /// When the client sent the batch; items without a `sentAt` inherit it.
    #[serde(default)]
    pub sent_at: Option<String>,
    /// The write key, when the client put it in the body.
    #[serde(default)]
    pub write_key: Option<String>,
}

impl Batch {
    /// Reads item `index` and merges the batch-level `context` and `integrations` into it.
    pub fn item(&self, index: usize) -> Result<Message, ValidationError> {
        let raw = self.batch.get(index).ok_or_else(|| {
            ValidationError::new(
                crate::ErrorCode::InvalidMessage,
                format!("no batch item {index}"),
            )
        })?;
        let mut message: Message =
            serde_json::from_str(raw.get()).map_err(|e| ValidationError::from_json(&e))?;
        if let Some(defaults) = &self.context {
            message
                .context
                .get_or_insert_with(Context::default)
                .merge_defaults(defaults);
        }
        merge(&mut message.integrations, &self.integrations);
        if message.sent_at.is_none() {
            message.sent_at.clone_from(&self.sent_at);
        }
        Ok(message)
    }
}

fn merge(item: &mut Option<JsonMap>, batch: &Option<JsonMap>) {
    let Some(batch) = batch else { return };
    let item = item.get_or_insert_with(JsonMap::new);
    for (key, value) in batch {
        if !item.contains_key(key) {
            item.insert(key.clone(), value.clone());
        }
    }
}

/// What a line of input (or a request body) holds: one message, or a batch.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "one per request or line, never stored in bulk"
)]
pub enum Input {
    /// A single message.
    Message(Box<Message>),
    /// A `{"batch": [...]}` envelope.
    Batch(Batch),
}

impl Input {
    /// Reads JSON text that is either a message or a batch envelope.
    pub fn parse(json: &[u8]) -> Result<Self, ValidationError> {
        // Probe the keys only: a map (not a struct) so that a JSON array is refused as
        // "not an object" rather than read as a tuple.
        let probe: std::collections::BTreeMap<std::borrow::Cow<'_, str>, serde::de::IgnoredAny> =
            serde_json::from_slice(json).map_err(|e| ValidationError::from_json(&e))?;
        if probe.contains_key("batch") {
            serde_json::from_slice(json)
                .map(Input::Batch)
                .map_err(|e| ValidationError::from_json(&e))
        } else {
            serde_json::from_slice(json)
                .map(|m| Input::Message(Box::new(m)))
                .map_err(|e| ValidationError::from_json(&e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn batch_level_context_and_integrations_merge_into_items() {
        let body = json!({
            "batch": [
                {"type": "track", "event": "A", "userId": "u", "context": {"ip": "1.1.1.1"}},
                {"type": "track", "event": "B", "userId": "u", "integrations": {"All": true}, "sentAt": "2026-01-01T00:00:01Z"}
            ],
            "context": {"ip": "9.9.9.9", "library": {"name": "analytics-python"}},
            "integrations": {"All": false},
            "sentAt": "2026-01-01T00:00:00Z"
        });
        let Input::Batch(batch) = Input::parse(body.to_string().as_bytes()).unwrap() else {
            panic!()
        };
        let a = batch.item(0).unwrap();
        let context = serde_json::to_value(a.context.as_ref().unwrap()).unwrap();
        assert_eq!(context["ip"], "1.1.1.1");
        assert_eq!(context["library"]["name"], "analytics-python");
        assert!(!a.is_enabled_for("Pointillist"));
        assert_eq!(a.sent_at.as_deref(), Some("2026-01-01T00:00:00Z"));
        let b = batch.item(1).unwrap();
        assert!(b.is_enabled_for("Pointillist"));
        assert_eq!(b.sent_at.as_deref(), Some("2026-01-01T00:00:01Z"));
    }

    #[test]
    fn a_bad_item_is_reported_alone() {
        let body = br#"{"batch": [{"type": "track"}, 5, {"userId": {"x": 1}}]}"#;
        let Input::Batch(batch) = Input::parse(body).unwrap() else {
            panic!()
        };
        assert!(batch.item(0).is_ok());
        assert_eq!(
            batch.item(1).unwrap_err().code,
            crate::ErrorCode::InvalidMessage
        );
        assert_eq!(
            batch.item(2).unwrap_err().code,
            crate::ErrorCode::InvalidMessage
        );
    }

    #[test]
    fn not_json_and_not_an_object() {
        assert_eq!(
            Input::parse(b"{nope").unwrap_err().code,
            crate::ErrorCode::InvalidJson
        );
        assert_eq!(
            Input::parse(b"[1]").unwrap_err().code,
            crate::ErrorCode::InvalidMessage
        );
        assert!(matches!(
            Input::parse(br#"{"type":"track"}"#).unwrap(),
            Input::Message(_)
        ));
    }
}
