//! Segment's batch envelope and the reading of "one message or one batch" input.

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::JsonMap;
use crate::error::ValidationError;
use crate::message::{Context, Message};
use crate::stored::Split;

/// The body of `/v1/batch`: items are kept raw so that one bad item is reported on its
/// own and the rest still go through. The envelope's own fields are read as
/// [`EnvelopeField`]s, so that one of the wrong type refuses each item (kept for
/// inspection, as every refused item is) rather than the whole request, with nothing
/// kept. Its `writeKey` is the ingress's to read, not this type's.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Batch {
    /// The messages, unparsed.
    pub batch: Vec<Box<RawValue>>,
    /// Merged into each item's `context` (the item's keys win).
    #[serde(default, deserialize_with = "EnvelopeField::read")]
    pub context: Option<EnvelopeField<Context>>,
    /// Merged into each item's `integrations` (the item's keys win).
    #[serde(default, deserialize_with = "EnvelopeField::read")]
    pub integrations: Option<EnvelopeField<JsonMap>>,
    /// When the client sent the batch; items without a `sentAt` inherit it.
    #[serde(default, deserialize_with = "EnvelopeField::read")]
    pub sent_at: Option<EnvelopeField<String>>,
}

/// A field of a batch envelope (not `null`): its value, or why it is not one.
#[derive(Debug)]
pub enum EnvelopeField<T> {
    /// Read as expected.
    Valid(T),
    /// Of the wrong type: `serde_json`'s reason (`invalid type: string "x", expected a map`).
    Invalid(String),
}

impl<T> EnvelopeField<T> {
    /// Reads a field as JSON text first, then as a `T` from that text.
    fn read<'de, D>(deserializer: D) -> Result<Option<Self>, D::Error>
    where
        D: Deserializer<'de>,
        T: serde::de::DeserializeOwned,
    {
        let Some(raw) = Option::<Box<RawValue>>::deserialize(deserializer)? else {
            return Ok(None);
        };
        Ok(Some(match serde_json::from_str(raw.get()) {
            Ok(value) => Self::Valid(value),
            Err(e) => {
                // Its place in the field's own text would mean nothing to the client.
                let why = e.to_string();
                Self::Invalid(match why.rsplit_once(" at line ") {
                    Some((why, _)) => why.to_owned(),
                    None => why,
                })
            }
        }))
    }

    /// The value, or the error every item of the batch is refused with.
    fn valid<'a>(field: &'a Option<Self>, name: &str) -> Result<Option<&'a T>, ValidationError> {
        match field {
            None => Ok(None),
            Some(Self::Valid(value)) => Ok(Some(value)),
            Some(Self::Invalid(why)) => Err(ValidationError::new(
                crate::ErrorCode::InvalidMessage,
                format!("the batch's {name}: {why}"),
            )),
        }
    }
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
        let context = EnvelopeField::valid(&self.context, "context")?;
        let integrations = EnvelopeField::valid(&self.integrations, "integrations")?;
        let sent_at = EnvelopeField::valid(&self.sent_at, "sentAt")?;
        let mut message: Message = ValidationError::read(raw.get().as_bytes())?;
        if let Some(defaults) = context {
            message
                .context
                .get_or_insert_with(Context::default)
                .merge_defaults(defaults);
        }
        merge(&mut message.integrations, integrations);
        inherit(&mut message, sent_at);
        Ok(message)
    }

    /// Item `index` on the fast path ([`crate::split`]), as [`Batch::item`] reads it:
    /// `None` when that path declines it, or when the batch has a `context` or
    /// `integrations` to merge or a `sentAt` of the wrong type (which only
    /// [`Batch::item`] deals with).
    pub fn split_item(&self, index: usize) -> Option<Split<'_>> {
        if self.context.is_some() || self.integrations.is_some() {
            return None;
        }
        let sent_at = EnvelopeField::valid(&self.sent_at, "sentAt").ok()?;
        let mut split = crate::split(self.batch.get(index)?.get())?;
        inherit(&mut split.plain, sent_at);
        Some(split)
    }

    /// The batch's `sentAt`, when it is a string.
    pub fn sent_at(&self) -> Option<&str> {
        match &self.sent_at {
            Some(EnvelopeField::Valid(sent_at)) => Some(sent_at),
            _ => None,
        }
    }
}

/// The batch's `sentAt` on an item that has none.
fn inherit(message: &mut Message, sent_at: Option<&String>) {
    if message.sent_at.is_none() {
        message.sent_at = sent_at.cloned();
    }
}

fn merge(item: &mut Option<JsonMap>, batch: Option<&JsonMap>) {
    let Some(batch) = batch else { return };
    let item = item.get_or_insert_with(JsonMap::new);
    for (key, value) in batch {
        if !item.contains_key(key) {
            item.insert(key.clone(), value.clone());
        }
    }
}

/// Whether `json` is one well-formed JSON value, read without holding its numbers or
/// limiting its depth (serde_json skips an ignored value on a loop of its own): true also
/// of JSON that no message can hold, such as `1e400`.
pub fn is_json(json: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(json).is_ok()
}

/// Reads `json` as a `T`. Text checked as UTF-8 once, as a whole, is read as `&str`:
/// serde_json then skips checking each string it reads (about a tenth of reading a
/// message). Other bytes are read as bytes, for the same error serde_json gives them.
pub fn from_json<'a, T: Deserialize<'a>>(json: &'a [u8]) -> serde_json::Result<T> {
    match std::str::from_utf8(json) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(json),
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
    /// Reads JSON text that is either a message or a batch envelope, in one pass when it
    /// is a good message (a batch envelope read as a message shows its `batch` key among
    /// the unknown ones, and is read again as a batch).
    pub fn parse(json: &[u8]) -> Result<Self, ValidationError> {
        Self::parse_as(json, |message: Message| {
            (!message.other.contains_key("batch")).then(|| Input::Message(Box::new(message)))
        })
    }

    /// Reads JSON text expected to be a batch envelope, in one pass when it is one; else
    /// as [`Input::parse`] would.
    pub fn parse_batch(json: &[u8]) -> Result<Self, ValidationError> {
        Self::parse_as(json, |batch: Batch| Some(Input::Batch(batch)))
    }

    /// One pass as a `T`, which `keep` turns into the answer; a syntax error is the
    /// answer too. Anything else (a `T` that `keep` refuses, JSON that is not a `T`) is
    /// read again by [`Input::parse_probed`], so that every reading answers alike.
    fn parse_as<'a, T: Deserialize<'a>>(
        json: &'a [u8],
        keep: impl FnOnce(T) -> Option<Self>,
    ) -> Result<Self, ValidationError> {
        match from_json::<T>(json) {
            Ok(value) => match keep(value) {
                Some(input) => Ok(input),
                None => Self::parse_probed(json),
            },
            Err(e) if !matches!(e.classify(), serde_json::error::Category::Data) => {
                Err(ValidationError::from_json(&e))
            }
            Err(_) => Self::parse_probed(json),
        }
    }

    /// Looks at the keys first, then reads the text as what they say it is.
    fn parse_probed(json: &[u8]) -> Result<Self, ValidationError> {
        // Probe the keys only: a map (not a struct) so that a JSON array is refused as
        // "not an object" rather than read as a tuple.
        let probe: std::collections::BTreeMap<std::borrow::Cow<'_, str>, serde::de::IgnoredAny> =
            serde_json::from_slice(json).map_err(|e| ValidationError::from_json(&e))?;
        if probe.contains_key("batch") {
            ValidationError::read(json).map(Input::Batch)
        } else {
            ValidationError::read(json).map(|m| Input::Message(Box::new(m)))
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
    fn an_item_s_own_null_block_wins_over_the_batch_s() {
        let body = json!({
            "batch": [
                {"type": "track", "event": "A", "userId": "u", "messageId": "a", "timestamp": "2026-01-01T00:00:00Z", "context": {"traits": null, "device": null}},
                {"type": "track", "event": "B", "userId": "u", "messageId": "b", "timestamp": "2026-01-01T00:00:00Z"}
            ],
            "context": {"traits": {"plan": "pro"}, "device": {"type": "ios"}},
        });
        let Input::Batch(batch) = Input::parse(body.to_string().as_bytes()).unwrap() else {
            panic!()
        };
        let mapper = crate::Mapper::new(crate::MapConfig::default());
        let labels = |index: usize| {
            let item = serde_json::to_vec(&batch.item(index).unwrap()).unwrap();
            let event = mapper.map_json(&item).unwrap().unwrap();
            let event: serde_json::Value = serde_json::from_slice(&event).unwrap();
            let mut keys: Vec<String> = event["labels"]
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| k.starts_with("trait.") || k.starts_with("device."))
                .cloned()
                .collect();
            keys.sort();
            keys
        };
        assert_eq!(labels(0), Vec::<String>::new());
        assert_eq!(labels(1), ["device.type", "trait.plan"]);
        // The null is not written where the item is stored, as it was not before.
        let stored = serde_json::to_value(batch.item(0).unwrap()).unwrap();
        assert_eq!(stored["context"], json!({}));
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
        let error = batch.item(2).unwrap_err();
        assert_eq!(error.code, crate::ErrorCode::InvalidMessage);
        assert!(
            error.message.starts_with("userId: invalid type: map"),
            "{}",
            error.message
        );
    }

    /// An envelope field of the wrong type refuses every item, saying which; `null` is
    /// no field at all.
    #[test]
    fn a_wrongly_typed_envelope_field_refuses_each_item() {
        let body = br#"{"batch":[{"type":"track","userId":"u","event":"E"},{"type":"identify","userId":"u"}],"context":"str","integrations":null}"#;
        let Input::Batch(batch) = Input::parse(body).unwrap() else {
            panic!()
        };
        for index in 0..2 {
            let error = batch.item(index).unwrap_err();
            assert_eq!(error.code, crate::ErrorCode::InvalidMessage);
            assert!(
                error
                    .message
                    .starts_with("the batch's context: invalid type: string \"str\""),
                "{}",
                error.message
            );
            assert!(!error.message.contains(" at line "), "{}", error.message);
            assert!(batch.split_item(index).is_none());
        }
        let body =
            br#"{"batch":[{"type":"track","userId":"u","event":"E"}],"sentAt":5,"context":null}"#;
        let Input::Batch(batch) = Input::parse_batch(body).unwrap() else {
            panic!()
        };
        assert!(batch.sent_at().is_none());
        assert!(batch.split_item(0).is_none(), "the fast path declines it");
        let error = batch.item(0).unwrap_err();
        assert!(
            error
                .message
                .starts_with("the batch's sentAt: invalid type: integer"),
            "{}",
            error.message
        );
    }

    /// A field of the wrong type is named, however deep; a body that is no object is
    /// said to be one.
    #[test]
    fn type_errors_name_the_field() {
        for (body, start) in [
            (
                r#"{"type":"track","userId":["u"]}"#,
                "userId: invalid type: sequence",
            ),
            (
                r#"{"type":"track","userId":"u","timestamp":5}"#,
                "timestamp: invalid type: integer",
            ),
            (
                r#"{"type":"track","userId":"u","context":5}"#,
                "context: invalid type: integer",
            ),
            ("[1]", "invalid type: sequence"),
        ] {
            let error = Input::parse(body.as_bytes()).unwrap_err();
            assert_eq!(error.code, crate::ErrorCode::InvalidMessage, "{body}");
            assert!(
                error.message.starts_with(start),
                "{body}: {}",
                error.message
            );
        }
    }

    /// The one-pass readings answer exactly as reading the keys first does.
    #[test]
    fn one_pass_and_probed_readings_agree() {
        let inputs: [&[u8]; 14] = [
            b"{\"type\":\"track\",\"userId\":\"\xff\"}",
            b"{\"batch\":[],\"sentAt\":\"\xc3\"}",
            br#"{"type":"track","event":"A","userId":"u"}"#,
            br#"{"batch":[{"type":"track"}],"sentAt":"2026-01-01T00:00:00Z"}"#,
            br#"{"batch":[],"context":{"ip":"1.1.1.1"}}"#,
            br#"{"batch":5}"#,
            br#"{"batch":[],"sentAt":5}"#,
            br#"{"userId":{"x":1}}"#,
            br#"{"userId":"u","batch":"not a list"}"#,
            b"[1]",
            b"5",
            b"{nope",
            br#"{"type":"track"} trailing"#,
            b"",
        ];
        let show = |r: Result<Input, ValidationError>| match r {
            Ok(Input::Message(m)) => format!("message {}", serde_json::to_string(&m).unwrap()),
            Ok(Input::Batch(b)) => format!("batch {b:?}"),
            Err(e) => format!("error {:?} {}", e.code, e.message),
        };
        for input in inputs {
            let probed = show(Input::parse_probed(input));
            let text = String::from_utf8_lossy(input);
            assert_eq!(show(Input::parse(input)), probed, "parse {text}");
            assert_eq!(
                show(Input::parse_batch(input)),
                probed,
                "parse_batch {text}"
            );
        }
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
