//! Reading a message for storage in one pass over its text: the ingress hot path
//! behind [`split`].
//!
//! The ingress stores a message as `serde_json::to_vec(&message)` of the [`Message`] it
//! read, validated and stamped (the reference path). Only the plain fields (type, ids,
//! names, times) take part in validation and stamping; the blocks (`properties`,
//! `traits`, `context`, `integrations`) and the unknown fields are only read and written
//! back. Reading those into `serde_json` trees costs an allocation per key, per string
//! and per map node, and writing them walks the trees again. Here the plain fields are
//! read into a [`Message`] as the reference path reads them, and every other part is
//! written at once as the text the reference path would write for it: objects of a
//! `serde_json` map with their keys sorted, strings re-escaped, numbers as
//! `serde_json::Number` writes them, and verbatim text where the reference keeps raw
//! JSON (the unknown fields, and the `context` keys it does not read).
//!
//! The caller validates and stamps the plain [`Message`] with the same code as the
//! reference path, then [`Rest::write`] puts the parts back together: the output is the
//! reference path's, byte for byte. This path declines (`None`) what it does not read
//! the same way: invalid JSON, a part of the wrong JSON type, a key repeated inside one
//! object, a top-level `batch` key. The caller then takes the reference path, whose
//! answers and error messages stand. `tests/stored.rs` holds the two to the same bytes.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use serde::de::{self, DeserializeSeed, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::message::{Message, Text, read_plain_field};

mod canonical;

/// A message read by [`split`]: its plain fields, and the text of everything else.
#[derive(Debug)]
pub struct Split<'a> {
    /// The plain fields, read as [`Message`] reads them; no blocks and no unknown fields.
    pub plain: Message,
    /// Everything else, as the text the reference path writes for it.
    pub rest: Rest<'a>,
}

/// The blocks and unknown fields of a [`Split`] message, as text.
#[derive(Debug, Default)]
pub struct Rest<'a> {
    /// The blocks' text, one after another (one buffer: no allocation per block).
    text: Vec<u8>,
    properties: Option<Range<usize>>,
    traits: Option<Range<usize>>,
    context: Option<Range<usize>>,
    integrations: Option<Range<usize>>,
    /// The unknown top-level fields, sorted by key, each key once: raw JSON text.
    other: Vec<(Cow<'a, str>, &'a str)>,
}

/// Reads `text` on the fast path; `None` when it declines (see the module docs).
pub fn split(text: &str) -> Option<Split<'_>> {
    let mut reader = serde_json::Deserializer::from_str(text);
    let split = SplitSeed(text.len()).deserialize(&mut reader).ok()?;
    reader.end().ok()?;
    (!split.rest.contains_other("batch")).then_some(split)
}

impl Rest<'_> {
    /// Whether an unknown top-level field `key` is there.
    pub fn contains_other(&self, key: &str) -> bool {
        self.other.iter().any(|(k, _)| k == key)
    }

    /// Removes the unknown top-level field `key`.
    pub fn remove_other(&mut self, key: &str) {
        self.other.retain(|(k, _)| k != key);
    }

    /// The JSON text of `plain` with these parts: what `serde_json::to_vec` writes for
    /// the reference path's message. `plain` must hold no blocks and no unknown fields
    /// (as [`split`] gives it); else an error, rather than text with keys twice.
    pub fn write(&self, plain: &Message) -> serde_json::Result<Vec<u8>> {
        if plain.properties.is_some()
            || plain.traits.is_some()
            || plain.context.is_some()
            || plain.integrations.is_some()
            || !plain.other.is_empty()
        {
            return Err(serde::ser::Error::custom(
                "the plain message carries blocks or unknown fields of its own",
            ));
        }
        let blocks = [
            ("properties", &self.properties),
            ("traits", &self.traits),
            ("context", &self.context),
            ("integrations", &self.integrations),
        ];
        let others = self.other.iter().map(|(k, v)| k.len() + v.len() + 4);
        let mut out = Vec::with_capacity(256 + self.text.len() + others.sum::<usize>());
        serde_json::to_writer(&mut out, plain)?;
        // The plain fields' object, reopened: the parts follow them, as in `Message`.
        out.pop();
        let mut object = Object::reopen(&mut out);
        for (key, block) in blocks {
            if let Some(range) = block {
                object.entry(&Cow::Borrowed(key), &self.text[range.clone()])?;
            }
        }
        for (key, raw) in &self.other {
            object.entry(key, raw.as_bytes())?;
        }
        object.close();
        Ok(out)
    }
}

/// Writes a JSON object's entries, commas included.
struct Object<'o> {
    out: &'o mut Vec<u8>,
    first: bool,
}

impl<'o> Object<'o> {
    fn open(out: &'o mut Vec<u8>) -> Self {
        out.push(b'{');
        Self { out, first: true }
    }

    /// Continues the object `out` holds, all but its closing brace.
    fn reopen(out: &'o mut Vec<u8>) -> Self {
        let first = out.last() == Some(&b'{');
        Self { out, first }
    }

    /// Starts an entry: the value is written next.
    #[allow(clippy::ptr_arg, reason = "borrowed or owned says whether the text had escapes")]
    fn key(&mut self, key: &Cow<'_, str>) -> serde_json::Result<()> {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        write_str(self.out, key)?;
        self.out.push(b':');
        Ok(())
    }

    #[allow(clippy::ptr_arg, reason = "borrowed or owned says whether the text had escapes")]
    fn entry(&mut self, key: &Cow<'_, str>, value: &[u8]) -> serde_json::Result<()> {
        self.key(key)?;
        self.out.extend_from_slice(value);
        Ok(())
    }

    fn close(self) {
        self.out.push(b'}');
    }
}

/// Writes `text` as a JSON string, as `serde_json` writes a string. Borrowed text
/// (serde_json's reader borrows a string only when it held no escape sequence, and it
/// refuses unescaped quotes and control characters) needs no escaping: it is copied as
/// it is, sparing the scan for characters to escape.
#[allow(clippy::ptr_arg, reason = "borrowed or owned says whether the text had escapes")]
fn write_str(out: &mut Vec<u8>, text: &Cow<'_, str>) -> serde_json::Result<()> {
    match text {
        Cow::Borrowed(text) => {
            out.reserve(text.len() + 2);
            out.push(b'"');
            out.extend_from_slice(text.as_bytes());
            out.push(b'"');
            Ok(())
        }
        Cow::Owned(text) => serde_json::to_writer(out, text),
    }
}

/// Sorts `entries` by key, as a `BTreeMap<String, _>` orders them; an error when a key
/// is repeated (the reference path keeps the last; this path declines).
fn sort_unique<T, E: de::Error>(entries: &mut [(Cow<'_, str>, T)]) -> Result<(), E> {
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    if entries.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(E::custom("a key is repeated"));
    }
    Ok(())
}

/// Reads a [`Split`]; `.0` sizes its text buffer (the input's length).
struct SplitSeed(usize);

impl<'de> DeserializeSeed<'de> for SplitSeed {
    type Value = Split<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Split<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for SplitSeed {
    type Value = Split<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Segment message (a JSON object)")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Split<'de>, A::Error> {
        let mut m = Message::default();
        let mut rest = Rest {
            text: Vec::with_capacity(self.0),
            ..Rest::default()
        };
        while let Some(Text(key)) = map.next_key()? {
            if read_plain_field!(&*key, m, map) {
                continue;
            }
            // A repeated block is read again, the last one kept, as in `Message`.
            let text = &mut rest.text;
            match &*key {
                "properties" => rest.properties = map.next_value_seed(ObjectOrNull(text))?,
                "traits" => rest.traits = map.next_value_seed(ObjectOrNull(text))?,
                "context" => rest.context = map.next_value_seed(ContextOrNull(text))?,
                "integrations" => rest.integrations = map.next_value_seed(ObjectOrNull(text))?,
                _ => {
                    let raw: &'de RawValue = map.next_value()?;
                    rest.other.push((key, raw.get()));
                }
            }
        }
        sort_unique(&mut rest.other)?;
        Ok(Split { plain: m, rest })
    }
}

/// One entry's value while an object is put together: text written into the buffer,
/// or raw text from the input.
enum Part<'a> {
    Written(Range<usize>),
    Raw(&'a str),
}

/// Writes the object of `entries` (in their order) at `start` of `out`, in place of what
/// was written there from `start` on (the values, which it reads from): it is put
/// together after them and then moved down, so that no other buffer is needed.
fn assemble<'k>(
    out: &mut Vec<u8>,
    start: usize,
    entries: impl IntoIterator<Item = (&'k Cow<'k, str>, Part<'k>)>,
) -> serde_json::Result<()> {
    let end = out.len();
    let mut object = Object::open(out);
    for (key, part) in entries {
        object.key(key)?;
        match part {
            Part::Written(range) => object.out.extend_from_within(range),
            Part::Raw(text) => object.out.extend_from_slice(text.as_bytes()),
        }
    }
    object.close();
    out.copy_within(end.., start);
    out.truncate(out.len() - (end - start));
    Ok(())
}

/// Where a top-level block's value is read, in `serde_json`'s recursion count (128 at
/// the top, one less inside the message's object).
const BLOCK_DEPTH: u8 = 127;

/// Where a block inside `context` is read: one level further in.
const CONTEXT_BLOCK_DEPTH: u8 = BLOCK_DEPTH - 1;

/// A block read as `Option<serde_json::Map>`: `null` is none; anything but an object is
/// an error. Written into `.0` (see [`canonical`]); the answer is where.
struct ObjectOrNull<'o>(&'o mut Vec<u8>);

impl<'de> DeserializeSeed<'de> for ObjectOrNull<'_> {
    type Value = Option<Range<usize>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let raw = <&'de RawValue>::deserialize(d)?.get();
        if raw == "null" {
            return Ok(None);
        }
        if !raw.starts_with('{') {
            return Err(de::Error::custom("a block that is not an object"));
        }
        let start = self.0.len();
        canonical::write_value(raw, BLOCK_DEPTH, self.0).map_err(declined)?;
        Ok(Some(start..self.0.len()))
    }
}

/// A value inside `context` read as `Option<serde_json::Value>`: `null` is none.
/// Written into `.0` (see [`canonical`]); the answer is where.
struct ValueOrNull<'o>(&'o mut Vec<u8>);

impl<'de> DeserializeSeed<'de> for ValueOrNull<'_> {
    type Value = Option<Range<usize>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let raw = <&'de RawValue>::deserialize(d)?.get();
        if raw == "null" {
            return Ok(None);
        }
        let start = self.0.len();
        canonical::write_value(raw, CONTEXT_BLOCK_DEPTH, self.0).map_err(declined)?;
        Ok(Some(start..self.0.len()))
    }
}

fn declined<E: de::Error>(_: canonical::Declined) -> E {
    E::custom("a block the reference path reads otherwise")
}

/// The `context` block read as `Option<Context>`: the blocks [`crate::Context`] parses
/// as values, in its field order, then every other key verbatim, sorted. Written into
/// `.0`; the answer is where.
struct ContextOrNull<'o>(&'o mut Vec<u8>);

impl<'de> DeserializeSeed<'de> for ContextOrNull<'_> {
    type Value = Option<Range<usize>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

/// The `context` keys [`crate::Context`] reads as values, in its field order.
const CONTEXT_BLOCKS: [Cow<'static, str>; 5] = [
    Cow::Borrowed("traits"),
    Cow::Borrowed("device"),
    Cow::Borrowed("campaign"),
    Cow::Borrowed("location"),
    Cow::Borrowed("personas"),
];

impl<'de> Visitor<'de> for ContextOrNull<'_> {
    type Value = Option<Range<usize>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a context object")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let out = self.0;
        let start = out.len();
        let mut blocks: [Option<Range<usize>>; 5] = Default::default();
        let mut other: Vec<(Cow<'de, str>, &'de str)> = Vec::new();
        while let Some(Text(key)) = map.next_key()? {
            match CONTEXT_BLOCKS.iter().position(|name| **name == *key) {
                Some(i) => blocks[i] = map.next_value_seed(ValueOrNull(&mut *out))?,
                None => {
                    let raw: &'de RawValue = map.next_value()?;
                    other.push((key, raw.get()));
                }
            }
        }
        sort_unique(&mut other)?;
        let typed = CONTEXT_BLOCKS.iter().zip(blocks);
        let typed = typed.filter_map(|(name, range)| Some((name, Part::Written(range?))));
        let raw = other.iter().map(|(key, text)| (key, Part::Raw(text)));
        assemble(out, start, typed.chain(raw)).map_err(de::Error::custom)?;
        Ok(Some(start..out.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(text: &str) -> Vec<u8> {
        let message: Message = serde_json::from_str(text).unwrap();
        serde_json::to_vec(&message).unwrap()
    }

    fn fast(text: &str) -> Option<Vec<u8>> {
        let split = split(text)?;
        Some(split.rest.write(&split.plain).unwrap())
    }

    #[test]
    fn blocks_come_out_sorted_and_re_escaped_and_raw_parts_verbatim() {
        let text = r#"{"properties": {"z": 1.50, "a": [3, {"y": "\u00e9", "b": 1e2}]},
            "type": "track", "version" : 2, "_metadata": { "bundled": [ "x" ] },
            "context": {"userAgent": "Mozilla", "traits": {"b": null, "a": true},
                        "device": null, "library": {"name" : "x"}},
            "integrations": {}, "event": "E", "userId": 7}"#;
        let out = fast(text).unwrap();
        assert_eq!(out, reference(text));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"type":"track","userId":7,"event":"E","properties":{"a":[3,{"b":100.0,"y":"é"}],"z":1.5},"context":{"traits":{"a":true,"b":null},"library":{"name" : "x"},"userAgent":"Mozilla"},"integrations":{},"_metadata":{ "bundled": [ "x" ] },"version":2}"#
        );
    }

    #[test]
    fn what_reads_otherwise_is_declined() {
        for text in [
            r#"{"properties": {"a": 1, "a": 2}}"#,
            r#"{"x": 1, "x": 2}"#,
            r#"{"context": {"library": 1, "library": 2}}"#,
            r#"{"properties": [1]}"#,
            r#"{"context": "x"}"#,
            r#"{"batch": []}"#,
            r#"{"event": 1}"#,
            "[1]",
            "{",
        ] {
            assert!(fast(text).is_none(), "{text}");
        }
    }

    #[test]
    fn a_repeated_block_keeps_the_last_as_the_reference_does() {
        let text =
            r#"{"properties": {"a": 1}, "properties": {"b": 2}, "event": "x", "event": "y"}"#;
        assert_eq!(fast(text).unwrap(), reference(text));
    }

    #[test]
    fn a_plain_message_with_parts_of_its_own_is_an_error() {
        let split = split(r#"{"type": "track", "properties": {"a": 1}}"#).unwrap();
        let mut plain = split.plain;
        plain.properties = Some(crate::JsonMap::new());
        assert!(split.rest.write(&plain).is_err());
    }

    #[test]
    fn the_unknown_fields_can_be_looked_up_and_removed() {
        let mut split = split(r#"{"writeKey": "k", "type": "track"}"#).unwrap();
        assert!(split.rest.contains_other("writeKey"));
        split.rest.remove_other("writeKey");
        assert!(!split.rest.contains_other("writeKey"));
        assert_eq!(
            split.rest.write(&split.plain).unwrap(),
            br#"{"type":"track"}"#
        );
    }
}
