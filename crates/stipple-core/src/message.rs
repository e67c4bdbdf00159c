//! The Segment message model. Fields Stipple reads are typed; every other field is kept
//! in [`Message::other`] so a message survives a parse/serialise round trip unchanged.

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::JsonMap;

/// Reads the value of `$key` into the like-named field of `$m` when it is one of the
/// top-level keys that [`Message`] and the fast mapping's view both read as they are
/// (the type, ids, names and times); true when it was one. Both readers use this one
/// list, so that neither can take a key the other leaves.
macro_rules! read_plain_field {
    ($key:expr, $m:ident, $map:ident) => {
        read_plain_field!(@ $key, $m, $map;
            "type" => kind, "messageId" => message_id, "userId" => user_id,
            "anonymousId" => anonymous_id, "previousId" => previous_id, "groupId" => group_id,
            "event" => event, "name" => name, "category" => category, "timestamp" => timestamp,
            "originalTimestamp" => original_timestamp, "sentAt" => sent_at,
            "receivedAt" => received_at)
    };
    (@ $key:expr, $m:ident, $map:ident; $($name:literal => $field:ident),*) => {
        match $key {
            $($name => {
                $m.$field = $map.next_value()?;
                true
            })*
            _ => false,
        }
    };
}
pub(crate) use read_plain_field;

/// A string read from JSON: borrowed from the input when it has no escapes, owned
/// otherwise. (serde's own `Cow<str>` always allocates.)
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Text<'a>(pub(crate) std::borrow::Cow<'a, str>);

impl std::ops::Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(v.into()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(v.to_owned().into()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Text<'de>, E> {
                Ok(Text(v.into()))
            }
        }
        d.deserialize_str(TextVisitor)
    }
}

/// Fields kept verbatim as raw JSON: read without building a tree, written back as sent.
pub type RawMap = std::collections::BTreeMap<String, Box<serde_json::value::RawValue>>;

/// The `context` object. The blocks the mapping reads are parsed; every other key
/// (`library`, `page`, `userAgent`, …) is kept as raw JSON, which is what makes
/// reading a message cheaper than building a whole `serde_json::Value`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Context {
    /// `context.traits`: the user's traits.
    #[serde(skip_serializing_if = "absent")]
    pub traits: Option<serde_json::Value>,
    /// `context.device`.
    #[serde(skip_serializing_if = "absent")]
    pub device: Option<serde_json::Value>,
    /// `context.campaign` (UTM parameters).
    #[serde(skip_serializing_if = "absent")]
    pub campaign: Option<serde_json::Value>,
    /// `context.location`.
    #[serde(skip_serializing_if = "absent")]
    pub location: Option<serde_json::Value>,
    /// `context.personas`: present on Engage audience and computed-trait calls.
    #[serde(skip_serializing_if = "absent")]
    pub personas: Option<serde_json::Value>,
    /// Every other context key, verbatim.
    #[serde(flatten)]
    pub other: RawMap,
}

/// A context block that is not there or is `null` (and is not written): a `null` is kept
/// when read only so that a batch item's own `null` wins over the batch's `context`.
fn absent(block: &Option<serde_json::Value>) -> bool {
    block.as_ref().is_none_or(serde_json::Value::is_null)
}

impl Context {
    /// Adds the keys of `defaults` that this context lacks (a batch's top-level
    /// `context` merged into an item: the item's own keys win).
    pub fn merge_defaults(&mut self, defaults: &Context) {
        for (mine, theirs) in [
            (&mut self.traits, &defaults.traits),
            (&mut self.device, &defaults.device),
            (&mut self.campaign, &defaults.campaign),
            (&mut self.location, &defaults.location),
            (&mut self.personas, &defaults.personas),
        ] {
            if mine.is_none() {
                mine.clone_from(theirs);
            }
        }
        for (key, value) in &defaults.other {
            self.other
                .entry(key.clone())
                .or_insert_with(|| value.clone());
        }
    }
}

impl<'de> Deserialize<'de> for Context {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ContextVisitor;
        impl<'de> Visitor<'de> for ContextVisitor {
            type Value = Context;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a context object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Context, A::Error> {
                let mut c = Context::default();
                while let Some(Text(key)) = map.next_key()? {
                    match &*key {
                        // An explicit `null` is kept (`Some(Null)`), not read as absent:
                        // a batch item's own key wins over the batch's `context`.
                        "traits" => c.traits = Some(map.next_value()?),
                        "device" => c.device = Some(map.next_value()?),
                        "campaign" => c.campaign = Some(map.next_value()?),
                        "location" => c.location = Some(map.next_value()?),
                        "personas" => c.personas = Some(map.next_value()?),
                        _ => {
                            let value = map.next_value()?;
                            c.other.insert(key.into_owned(), value);
                        }
                    }
                }
                Ok(c)
            }
        }
        d.deserialize_map(ContextVisitor)
    }
}

/// The six Segment calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// Who the user is, with traits.
    Identify,
    /// Something the user did.
    Track,
    /// A web page view.
    Page,
    /// A mobile screen view.
    Screen,
    /// The user joins a group (an account).
    Group,
    /// Two user identities are the same person.
    Alias,
}

impl MessageType {
    /// Every call type, in Segment's documentation order.
    pub const ALL: [MessageType; 6] = [
        Self::Identify,
        Self::Track,
        Self::Page,
        Self::Screen,
        Self::Group,
        Self::Alias,
    ];

    /// Reads a `type` value.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "identify" => Self::Identify,
            "track" => Self::Track,
            "page" => Self::Page,
            "screen" => Self::Screen,
            "group" => Self::Group,
            "alias" => Self::Alias,
            _ => return None,
        })
    }

    /// The `type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Identify => "identify",
            Self::Track => "track",
            Self::Page => "page",
            Self::Screen => "screen",
            Self::Group => "group",
            Self::Alias => "alias",
        }
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An identifier (`userId`, `anonymousId`, `groupId`, `previousId`): clients send
/// strings, some send numbers. Kept as sent; [`Id::to_text`] gives the decimal text.
#[derive(Debug, Clone)]
pub enum Id {
    /// A string identifier.
    String(String),
    /// A numeric identifier, as the client wrote it (its JSON text): every digit of an
    /// integer too long for 64 bits is kept.
    Number(Box<RawValue>),
}

impl PartialEq for Id {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Id::String(a), Id::String(b)) => a == b,
            (Id::Number(a), Id::Number(b)) => a.get() == b.get(),
            _ => false,
        }
    }
}

impl Id {
    /// A numeric identifier from its JSON text; `None` when `json` is not a finite JSON
    /// number.
    pub fn number(json: &str) -> Option<Self> {
        if classify(json) != Ok(Raw::Number) {
            return None;
        }
        RawValue::from_string(json.to_owned()).ok().map(Id::Number)
    }

    /// The identifier as text; `None` when it is an empty string.
    pub fn to_text(&self) -> Option<String> {
        match self {
            Id::String(s) if s.is_empty() => None,
            Id::String(s) => Some(s.clone()),
            Id::Number(n) => Some(decimal_text(n.get()).into_owned()),
        }
    }

    /// Like [`Id::to_text`], consuming the identifier.
    pub fn into_text(self) -> Option<String> {
        match self {
            Id::String(s) if s.is_empty() => None,
            Id::String(s) => Some(s),
            Id::Number(n) => Some(decimal_text(n.get()).into_owned()),
        }
    }

    /// True for an empty string.
    pub fn is_empty(&self) -> bool {
        matches!(self, Id::String(s) if s.is_empty())
    }
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Id::String(v) => s.serialize_str(v),
            Id::Number(n) => n.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Id {
    /// Reads the value's JSON text (a copy: this works from a `serde_json::Value` too),
    /// so that a number keeps every digit the client sent.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(d)?;
        match classify(raw.get()).map_err(de::Error::custom)? {
            Raw::Number => Ok(Id::Number(raw)),
            // Kept in the copy already made.
            Raw::PlainString => {
                let mut text = String::from(Box::<str>::from(raw));
                text.pop();
                text.remove(0);
                Ok(Id::String(text))
            }
            Raw::EscapedString => serde_json::from_str(raw.get())
                .map(Id::String)
                .map_err(de::Error::custom),
        }
    }
}

/// What an identifier's JSON text holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Raw {
    /// A string without escapes: the text between its quotes is the string itself.
    PlainString,
    /// A string with escapes, to be read by serde_json.
    EscapedString,
    Number,
}

/// Sorts an identifier's JSON text (one valid JSON value, as serde_json captured it):
/// a string or a finite number; anything else is an error, worded as serde words a
/// value of the wrong type.
fn classify(json: &str) -> Result<Raw, String> {
    let wrong = |what: &str| {
        Err(format!(
            "invalid type: {what}, expected a string or a number"
        ))
    };
    match json.as_bytes().first() {
        Some(b'"') if json.contains('\\') => Ok(Raw::EscapedString),
        Some(b'"') => Ok(Raw::PlainString),
        // Finite whatever its digits, without reading it as a float (a 64-bit float
        // holds integers up to about 1.8e308).
        Some(_) if is_integer(json) && json.len() <= 300 => Ok(Raw::Number),
        Some(b'-' | b'0'..=b'9') => match json.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(Raw::Number),
            _ => Err("identifier is not a finite number".into()),
        },
        Some(b't' | b'f') => wrong(&format!("boolean `{json}`")),
        Some(b'[') => wrong("sequence"),
        Some(b'{') => wrong("map"),
        _ => wrong("null"),
    }
}

/// A numeric identifier as the contract has it, "its decimal text", from the number's
/// JSON text: an integer as written, every digit kept (JSON writes integers with no
/// sign but `-`, no leading zeros and no exponent); any other number as the shortest
/// decimal that reads back as the same 64-bit float, with no exponent: `1000` for `1e3`
/// or `1000.0`, `2.5` for `2.5`.
fn decimal_text(json: &str) -> std::borrow::Cow<'_, str> {
    if is_integer(json) {
        return json.into();
    }
    match json.parse::<f64>() {
        Ok(f) => format!("{f}").into(),
        // Not a number: `classify` lets none through.
        Err(_) => json.into(),
    }
}

/// Whether a JSON number's text is an integer (digits, after an optional `-`).
fn is_integer(json: &str) -> bool {
    let digits = json.strip_prefix('-').unwrap_or(json);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// An identifier as read by the fast paths: text borrowed from the input where
/// possible, or a number's JSON text. Reads JSON text only (`serde_json::from_str`).
pub(crate) enum IdText<'a> {
    Text(std::borrow::Cow<'a, str>),
    Number(&'a str),
}

impl<'a> IdText<'a> {
    /// [`Id::to_text`] without copying borrowed text.
    pub(crate) fn text(&self) -> Option<std::borrow::Cow<'a, str>> {
        match self {
            IdText::Text(s) if s.is_empty() => None,
            IdText::Text(s) => Some(s.clone()),
            IdText::Number(n) => Some(decimal_text(n)),
        }
    }
}

impl<'de> Deserialize<'de> for IdText<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <&'de RawValue>::deserialize(d)?.get();
        match classify(raw).map_err(de::Error::custom)? {
            Raw::Number => Ok(IdText::Number(raw)),
            Raw::PlainString => Ok(IdText::Text(raw[1..raw.len() - 1].into())),
            Raw::EscapedString => serde_json::from_str::<String>(raw)
                .map(|s| IdText::Text(s.into()))
                .map_err(de::Error::custom),
        }
    }
}

/// One Segment message, as a client sends it (before validation).
///
/// Reading is lenient: every field is optional, and [`Message::validate`] says what is
/// missing. Unknown fields (`version`, `_metadata`, …) are kept in `other`.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    /// `type`: identify, track, page, screen, group or alias.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Unique message id, used for deduplication.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// The known user's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Id>,
    /// The device or browser's anonymous id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anonymous_id: Option<Id>,
    /// alias: the id being merged into `userId`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_id: Option<Id>,
    /// group: the group (account) id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_id: Option<Id>,
    /// track: the event name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// page / screen: the page or screen name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// page: the page category.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// When the event happened (after clock-skew correction, once the ingress took it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    /// The `timestamp` the client sent, set by the ingress.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_timestamp: Option<String>,
    /// When the client sent the message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<String>,
    /// When the ingress received the message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub received_at: Option<String>,
    /// track / page / screen properties.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub properties: Option<JsonMap>,
    /// identify / group traits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traits: Option<JsonMap>,
    /// The `context` object (device, campaign, location, traits, personas, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<Context>,
    /// Per-destination switches: `{"All": false, "Pointillist": true}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub integrations: Option<JsonMap>,
    /// Every other field (`version`, `_metadata`, …), kept verbatim.
    #[serde(flatten)]
    pub other: RawMap,
}

impl Message {
    /// `context.personas`, present on Engage audience and computed-trait calls.
    pub fn personas(&self) -> Option<&JsonMap> {
        self.context.as_ref()?.personas.as_ref()?.as_object()
    }

    /// Whether this message is to be delivered to `destination` according to its
    /// `integrations` object: `"<destination>": false` turns it off, and so does
    /// `"All": false` unless the destination is named with `true` or an object of
    /// settings (Segment's way of enabling one destination with options). Any other value
    /// (`null`, a number, a string) names nothing: `"All"` decides.
    pub fn is_enabled_for(&self, destination: &str) -> bool {
        let Some(integrations) = &self.integrations else {
            return true;
        };
        routed(
            integrations.get(destination).and_then(destination_switch),
            integrations.get("All").is_some_and(is_false),
        )
    }
}

/// What a destination's entry in `integrations` says: `false` off; `true` or an object of
/// settings on; anything else nothing (the `"All"` entry decides).
pub(crate) fn destination_switch(value: &serde_json::Value) -> Option<bool> {
    match value {
        serde_json::Value::Bool(on) => Some(*on),
        serde_json::Value::Object(_) => Some(true),
        _ => None,
    }
}

/// The routing rule, shared by [`Message::is_enabled_for`] and the fast path: the
/// destination's own switch if it has one, else on unless `"All": false`.
pub(crate) fn routed(switch: Option<bool>, all_off: bool) -> bool {
    switch.unwrap_or(!all_off)
}

/// Whether an `integrations` entry is `false`.
pub(crate) fn is_false(value: &serde_json::Value) -> bool {
    matches!(value, serde_json::Value::Bool(false))
}

// Hand-written rather than derived: `#[serde(flatten)]` on deserialisation buffers the
// whole message, which costs a large share of the mapping's time.
impl<'de> Deserialize<'de> for Message {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MessageVisitor;
        impl<'de> Visitor<'de> for MessageVisitor {
            type Value = Message;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a Segment message (a JSON object)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Message, A::Error> {
                let mut m = Message::default();
                while let Some(Text(key)) = map.next_key()? {
                    if read_plain_field!(&*key, m, map) {
                        continue;
                    }
                    match &*key {
                        "properties" => m.properties = map.next_value()?,
                        "traits" => m.traits = map.next_value()?,
                        "context" => m.context = map.next_value()?,
                        "integrations" => m.integrations = map.next_value()?,
                        _ => {
                            let value = map.next_value()?;
                            m.other.insert(key.into_owned(), value);
                        }
                    }
                }
                Ok(m)
            }
        }
        d.deserialize_map(MessageVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let input = json!({
            "type": "track", "event": "E", "userId": 42, "anonymousId": "a",
            "version": 2, "_metadata": {"bundled": ["x"]}, "writeKey": "wk",
            "properties": {"a": [1, {"b": null}]}, "context": {"library": {"name": "x"}},
            "integrations": {"All": false}, "timestamp": "2026-01-01T00:00:00Z"
        });
        let message: Message = serde_json::from_value(input.clone()).unwrap();
        assert_eq!(message.user_id, Id::number("42"));
        assert!(message.user_id.is_some());
        assert_eq!(serde_json::to_value(&message).unwrap(), input);
    }

    #[test]
    fn wrong_field_types_are_errors_not_panics() {
        for bad in [
            json!({"userId": true}),
            json!({"properties": "x"}),
            json!([1]),
            json!(3),
        ] {
            assert!(serde_json::from_value::<Message>(bad).is_err());
        }
    }

    #[test]
    fn integrations_routing() {
        fn check(integrations: serde_json::Value, expected: bool) {
            let m = Message {
                integrations: integrations.as_object().cloned(),
                ..Message::default()
            };
            assert_eq!(m.is_enabled_for("Pointillist"), expected, "{integrations}");
        }
        check(json!(null), true);
        check(json!({}), true);
        check(json!({"Pointillist": false}), false);
        check(json!({"Pointillist": true}), true);
        check(json!({"All": false}), false);
        check(json!({"All": false, "Pointillist": true}), true);
        check(json!({"All": false, "Pointillist": {"setting": 1}}), true);
        check(json!({"All": true, "Pointillist": false}), false);
        check(json!({"All": false, "Amplitude": true}), false);
        check(json!({"Amplitude": false}), true);
        // Only `true` or settings name a destination on; other values leave it to "All".
        for neither in [json!(null), json!(0), json!(1), json!("no"), json!([true])] {
            check(json!({"All": false, "Pointillist": neither}), false);
            check(json!({"Pointillist": neither}), true);
            check(json!({"All": true, "Pointillist": neither}), true);
        }
    }
}
