//! The normative Segment -> Pointillist mapping (`shared/spec/pointillist.md`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::JsonMap;
use crate::error::{ErrorCode, ValidationError};
use crate::event::{EventTime, PointillistEvent};
use crate::message::{Id, Message, MessageType};
use crate::transcode::map_text;
use crate::validate::ValidMessage;

/// The destination name used in a message's `integrations` object.
pub const POINTILLIST: &str = "Pointillist";

/// Most bytes of keys and values an event's labels and numbers may hold. A nested key is
/// its whole path (`a.b.c`), so a 32 KB message of one long key over many leaves would
/// map to megabytes; past this it is refused (`event_too_large`), not built.
pub const MAX_ATTRIBUTE_BYTES: usize = 256 * 1024;

/// What a number counts for toward [`MAX_ATTRIBUTE_BYTES`]: the most its text takes.
pub(crate) const NUMBER_TEXT_BYTES: usize = 24;

/// The mapping's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MapConfig {
    /// The `eventSource` of every event.
    pub event_source: String,
    /// The primary actor type.
    pub actor_type: String,
}

impl Default for MapConfig {
    fn default() -> Self {
        Self {
            event_source: "segment".into(),
            actor_type: "customer".into(),
        }
    }
}

/// Why [`Mapper::map_json`] gave no event.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// The text is not a readable message (not JSON, or a field of the wrong type).
    #[error("the message is not readable: {0}")]
    Unreadable(serde_json::Error),
    /// The message fails validation.
    #[error("the message is not valid: {0}")]
    Invalid(ValidationError),
    /// The message has no time to give the event.
    #[error("the message cannot be mapped: {0}")]
    Unmappable(ValidationError),
}

/// Maps validated Segment messages to Pointillist events.
#[derive(Debug, Clone)]
pub struct Mapper {
    config: MapConfig,
}

/// The secondary actor type of a group call, which the primary one (`actor_type`) must
/// not be.
pub const ACCOUNT: &str = "account";

impl Mapper {
    /// A mapper with the given settings.
    pub fn new(config: MapConfig) -> Self {
        Self { config }
    }

    /// The settings.
    pub fn config(&self) -> &MapConfig {
        &self.config
    }

    /// Maps one message. It fails only when the message has no usable time
    /// (`missing_timestamp`); routing (`integrations`) is the caller's decision, see
    /// [`crate::Message::is_enabled_for`].
    pub fn map(&self, valid: ValidMessage) -> Result<PointillistEvent, ValidationError> {
        let event_time = EventTime(valid.event_time()?);
        let kind = valid.kind();
        let m = valid.into_message();
        let mut attrs = Attributes::default();
        let mut customer = BTreeMap::new();
        let mut actors = BTreeMap::new();
        let event_type;

        match kind {
            MessageType::Alias => {
                insert_id(&mut customer, "userId", m.user_id);
                insert_id(&mut customer, "previousId", m.previous_id);
                event_type = kind.as_str().to_owned();
            }
            _ => {
                insert_id(&mut customer, "userId", m.user_id);
                insert_id(&mut customer, "anonymousId", m.anonymous_id);
                let context = m.context.unwrap_or_default();
                match kind {
                    MessageType::Identify => {
                        event_type = kind.as_str().to_owned();
                        let traits = m.traits.or_else(|| object(context.traits));
                        attrs.flatten(None, traits);
                    }
                    MessageType::Group => {
                        event_type = kind.as_str().to_owned();
                        let mut account = BTreeMap::new();
                        insert_id(&mut account, "groupId", m.group_id);
                        actors.insert(ACCOUNT.to_owned(), account);
                        attrs.flatten(Some("group"), m.traits);
                    }
                    MessageType::Track | MessageType::Page | MessageType::Screen => {
                        attrs.flatten(Some("trait"), object(context.traits));
                        attrs.flatten(Some("device"), object(context.device));
                        attrs.flatten(Some("campaign"), object(context.campaign));
                        attrs.flatten(Some("location"), object(context.location));
                        attrs.flatten(None, m.properties);
                        event_type = match kind {
                            MessageType::Track => m.event.unwrap_or_default(),
                            _ => kind.as_str().to_owned(),
                        };
                        // The call's own fields win over properties of the same name. A
                        // track call has no `name` of its own (the contract lists it for
                        // page and screen only): a stray one is not a label.
                        if let (false, Some(name)) = (kind == MessageType::Track, m.name) {
                            attrs.label("name".to_owned(), name);
                        }
                        if kind == MessageType::Page {
                            if let Some(category) = m.category {
                                attrs.label("category".to_owned(), category);
                            }
                        }
                    }
                    MessageType::Alias => unreachable!("handled above"),
                }
            }
        }
        match m.message_id {
            Some(id) => attrs.label("messageId".to_owned(), id),
            // The label is the message's id, which a property of that name is not.
            None => attrs.remove("messageId"),
        }
        actors.insert(self.config.actor_type.clone(), customer);
        if attrs.over() {
            return Err(ValidationError::new(
                ErrorCode::EventTooLarge,
                format!(
                    "its labels and numbers come to more than {} KiB (nested keys repeat their whole path)",
                    MAX_ATTRIBUTE_BYTES / 1024
                ),
            ));
        }
        Ok(PointillistEvent {
            event_source: self.config.event_source.clone(),
            event_type,
            event_time,
            actors,
            labels: attrs.labels,
            numbers: attrs.numbers,
        })
    }
}

impl Mapper {
    /// Maps one message from its JSON text to the JSON body of its Pointillist event:
    /// `Ok(None)` when its `integrations` turn Pointillist off.
    ///
    /// The same as reading a [`Message`], [`Message::validate`],
    /// [`Message::is_enabled_for`], [`Mapper::map`] and [`PointillistEvent::to_json`],
    /// in a fraction of the time for a message the ingress stored (see the
    /// `transcode` module); anything else takes that path itself.
    pub fn map_json(&self, json: &[u8]) -> Result<Option<Vec<u8>>, MapError> {
        if let Some(mapped) = std::str::from_utf8(json)
            .ok()
            .and_then(|text| self.map_json_fast(text))
        {
            return Ok(mapped);
        }
        self.map_json_reference(json)
    }

    /// The fast path of [`Mapper::map_json`] alone, for tests and benchmarks: `None`
    /// when it declines the message, else what `map_json` gives.
    pub fn map_json_fast(&self, text: &str) -> Option<Option<Vec<u8>>> {
        map_text(self, text)
    }

    /// [`Mapper::map_json`] through [`Message`] and [`PointillistEvent`]: the reference
    /// the fast path is held to.
    pub fn map_json_reference(&self, json: &[u8]) -> Result<Option<Vec<u8>>, MapError> {
        let message: Message = crate::from_json(json).map_err(MapError::Unreadable)?;
        let valid = message.validate().map_err(MapError::Invalid)?;
        if !valid.message().is_enabled_for(POINTILLIST) {
            return Ok(None);
        }
        let event = self.map(valid).map_err(MapError::Unmappable)?;
        Ok(Some(event.to_json()))
    }
}

fn insert_id(actor: &mut BTreeMap<String, String>, name: &str, id: Option<Id>) {
    if let Some(text) = id.and_then(Id::into_text) {
        actor.insert(name.to_owned(), text);
    }
}

/// A context block, when it is an object (anything else is not mapped).
fn object(block: Option<Value>) -> Option<JsonMap> {
    match block? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// Labels and numbers being built; a key lives in only one of the two, the last
/// written wins.
#[derive(Default)]
struct Attributes {
    labels: BTreeMap<String, String>,
    numbers: BTreeMap<String, serde_json::Number>,
    /// Bytes of keys and values written so far (overwritten ones too).
    bytes: usize,
}

impl Attributes {
    /// Whether `key` and a value of `value_len` bytes still fit; counts them.
    fn fits(&mut self, key: &str, value_len: usize) -> bool {
        self.bytes = self.bytes.saturating_add(key.len() + value_len);
        self.bytes <= MAX_ATTRIBUTE_BYTES
    }

    fn over(&self) -> bool {
        self.bytes > MAX_ATTRIBUTE_BYTES
    }

    fn label(&mut self, key: String, value: String) {
        if !self.fits(&key, value.len()) {
            return;
        }
        if !self.numbers.is_empty() {
            self.numbers.remove(&key);
        }
        self.labels.insert(key, value);
    }

    fn number(&mut self, key: String, value: serde_json::Number) {
        if !self.fits(&key, NUMBER_TEXT_BYTES) {
            return;
        }
        if !self.labels.is_empty() {
            self.labels.remove(&key);
        }
        self.numbers.insert(key, value);
    }

    /// Removes `key`, a label or a number.
    fn remove(&mut self, key: &str) {
        self.labels.remove(key);
        self.numbers.remove(key);
    }

    /// Flattens `object` under `prefix` (`None` for none): nested objects join keys with
    /// `.`, strings become labels, booleans the labels `"true"`/`"false"`, numbers
    /// numbers, arrays labels of their compact JSON, nulls nothing. An empty key is a
    /// key like any other: `{"": {"b": 1}}` is `.b`, never `b`.
    fn flatten(&mut self, prefix: Option<&str>, object: Option<JsonMap>) {
        if let Some(object) = object {
            self.flatten_into(prefix, object);
        }
    }

    fn flatten_into(&mut self, path: Option<&str>, object: JsonMap) {
        for (key, value) in object {
            let key = match path {
                None => key,
                Some(path) => {
                    let mut full = String::with_capacity(path.len() + 1 + key.len());
                    full.push_str(path);
                    full.push('.');
                    full.push_str(&key);
                    full
                }
            };
            match value {
                Value::Null => {}
                Value::String(s) => self.label(key, s),
                Value::Bool(b) => self.label(key, b.to_string()),
                Value::Number(n) => self.number(key, n),
                Value::Array(items) => {
                    let text = serde_json::to_string(&items).unwrap_or_default();
                    self.label(key, text);
                }
                Value::Object(inner) => self.flatten_into(Some(&key), inner),
            }
        }
    }
}
