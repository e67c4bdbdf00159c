//! Reading a message for storage in one pass over its text: the ingress hot path
//! behind [`split`].
//!
//! The reference path reads a [`Message`], validates and stamps it, and stores
//! `serde_json::to_vec(&message)`. Only the plain fields (type, ids, names, times) take
//! part in validation and stamping; the blocks (`properties`, `traits`, `context`,
//! `integrations`) and the unknown fields are only read and written back. Here one scan
//! of the text (`scan.rs`) reads the plain fields into a [`Message`] as the reference
//! path reads them, and keeps every other part as the client sent it, checked as the
//! reference path would check it: a block is refused where `serde_json` would refuse
//! it as a `Value`, an unknown field where it would refuse it as raw JSON.
//!
//! The caller validates and stamps the plain [`Message`] with the same code as the
//! reference path, then [`Rest::write`] puts the parts back together: the plain fields
//! as the reference path writes them, the blocks and the `context` keys the mapping does
//! not read as sent, the `context` blocks and the unknown fields in the reference's
//! order. The text differs from the reference's only inside blocks (key order, spaces,
//! escapes, how numbers are written, a key repeated) and reads back as the same
//! [`Message`]; delivery's fast mapping (`transcode.rs`) sorts what it reads, so the
//! blocks need not be sorted here. Why not write them as the reference does: that was a
//! tenth of the server's CPU a request at 256 connections (docs/performance.md),
//! where delivery sorts a block's keys for little more than it costs to check them.
//!
//! This path declines (`None`) what it does not read the same way: invalid JSON, a part
//! of the wrong JSON type, a key repeated among the unknown fields or the `context` keys,
//! a top-level `batch` key. The caller then takes the reference path, whose answers and
//! error messages stand. `tests/stored.rs` holds the two to the same message and the
//! same Pointillist event.

use std::borrow::Cow;
use std::ops::Range;

use crate::message::{Id, Message};

mod scan;

/// A message read by [`split`]: its plain fields, and the text of everything else.
#[derive(Debug, Default)]
pub struct Split<'a> {
    /// The plain fields, read as [`Message`] reads them; no blocks and no unknown fields.
    pub plain: Message,
    /// Everything else, as text (see the module docs).
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
    let mut split = Split::default();
    split_into(text, &mut split).then_some(split)
}

/// [`split`] into `out`, a [`Split::default()`] the caller keeps where it is (a message
/// is large: each move copies it): whether it was taken. When it was not, `out` holds
/// what was read before the scan declined, to be dropped.
pub fn split_into<'a>(text: &'a str, out: &mut Split<'a>) -> bool {
    scan::message(text, out).is_ok() && !out.rest.contains_other("batch")
}

/// A batch envelope read by [`split_batch`].
#[derive(Debug)]
pub struct SplitBatch<'a> {
    /// The items, in order.
    pub items: Vec<SplitItem<'a>>,
    /// The envelope's `sentAt`, as [`crate::Batch`] reads it.
    pub sent_at: Option<String>,
}

/// An item of a [`SplitBatch`].
#[derive(Debug, Default)]
pub struct SplitItem<'a> {
    /// Its text, as [`crate::Batch`] holds it (`RawValue::get`).
    pub raw: &'a str,
    /// Its parts, as [`crate::Batch::split_item`] gives them (the envelope's `sentAt`
    /// taken where the item has none).
    pub split: Split<'a>,
}

/// Reads `text`, a `/v1/batch` body, and every item in it on the fast path, in one scan;
/// `None` when it declines any part or the body holds more than `max_items` items (the
/// caller's limit, which it refuses a batch over: the scan stops there, so a body of many
/// tiny items costs no more than the limit's worth), and then
/// [`crate::Input::parse_batch`] and [`crate::Batch::item`] decide. Where it reads a
/// body, it reads what they read: the same items, each as [`crate::Batch::split_item`]
/// gives it, and the same `sentAt`.
/// Why: [`crate::Batch`] keeps its items as `RawValue`s, which `serde_json` finds the
/// end of by stepping over each item's text, before the scan reads that text again
/// (about a sixth of the instructions of an event in a batch, docs/performance.md).
pub fn split_batch(text: &str, max_items: usize) -> Option<SplitBatch<'_>> {
    scan::batch(text, max_items).ok()
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

    /// The JSON text of `plain` with these parts: text that reads back as the reference
    /// path's message (see the module docs). `plain` must hold no blocks and no unknown
    /// fields (as [`split`] gives it); else an error, rather than text with keys twice.
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
        let mut object = Object::open(&mut out);
        // The parts follow the plain fields, as in `Message`.
        write_plain(&mut object, plain)?;
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

/// Writes the plain fields of `plain` (its blocks and unknown fields are left to the
/// caller) as `serde_json::to_vec` writes them for a `Message`: in its field order, those
/// that are `None` left out, strings escaped as `serde_json` escapes them. A string with
/// nothing to escape (most ids and times) is copied as it is, found eight bytes at a
/// time, rather than handed to `serde_json`, which looks at each byte.
fn write_plain(object: &mut Object<'_>, plain: &Message) -> serde_json::Result<()> {
    // Every field named: one added to `Message` stops the build here until it is placed.
    let Message {
        kind,
        message_id,
        user_id,
        anonymous_id,
        previous_id,
        group_id,
        event,
        name,
        category,
        timestamp,
        original_timestamp,
        sent_at,
        received_at,
        properties: _,
        traits: _,
        context: _,
        integrations: _,
        other: _,
    } = plain;
    let text = |object: &mut Object<'_>, key: &'static str, text: Option<&str>| match text {
        Some(text) => object.str_entry(key, text),
        None => Ok(()),
    };
    text(object, "type", kind.as_deref())?;
    text(object, "messageId", message_id.as_deref())?;
    for (key, id) in [
        ("userId", user_id),
        ("anonymousId", anonymous_id),
        ("previousId", previous_id),
        ("groupId", group_id),
    ] {
        match id {
            Some(Id::String(id)) => text(object, key, Some(id))?,
            Some(Id::Number(number)) => {
                object.entry(&Cow::Borrowed(key), number.get().as_bytes())?
            }
            None => {}
        }
    }
    for (key, value) in [
        ("event", event),
        ("name", name),
        ("category", category),
        ("timestamp", timestamp),
        ("originalTimestamp", original_timestamp),
        ("sentAt", sent_at),
        ("receivedAt", received_at),
    ] {
        text(object, key, value.as_deref())?;
    }
    Ok(())
}

/// Whether `text` holds a byte `serde_json` escapes in a string.
fn needs_escape(text: &str) -> bool {
    next_stop(text.as_bytes(), 0) < text.len()
}

/// Where the first byte from `at` on stands that `serde_json` escapes in a string (a
/// quote, a backslash or a control character), or `bytes.len()` when there is none.
/// Eight bytes at a time, then the last few one by one.
fn next_stop(bytes: &[u8], mut at: usize) -> usize {
    while let Some(word) = bytes.get(at..at + 8) {
        // Always eight bytes; were it not, every lane would be flagged, which is safe.
        let flags = stops(u64::from_le_bytes(word.try_into().unwrap_or([0; 8])));
        if flags != 0 {
            return at + (flags.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    let tail = bytes.get(at..).unwrap_or_default();
    tail.iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .map_or(bytes.len(), |i| at + i)
}

/// A byte of value 1 in every lane of a word.
const LANES: u64 = u64::from_ne_bytes([1; 8]);
/// The high bit of every lane.
const HIGH_BITS: u64 = LANES << 7;

/// The high bit set in each lane of `word` (eight bytes of text, little-endian) that holds
/// a byte a string scan must look at, the ones `serde_json` escapes: a quote, a
/// backslash or a control character. Lanes above the lowest one set may be set wrongly
/// (a borrow between lanes); the lowest one is always right.
fn stops(word: u64) -> u64 {
    let zero_lanes = |v: u64| v.wrapping_sub(LANES) & !v & HIGH_BITS;
    let below_space = word.wrapping_sub(LANES * 0x20) & !word & HIGH_BITS;
    zero_lanes(word ^ (LANES * u64::from(b'"')))
        | zero_lanes(word ^ (LANES * u64::from(b'\\')))
        | below_space
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

    /// The comma before every entry but the first.
    fn separate(&mut self) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
    }

    /// Starts an entry: the value is written next.
    #[allow(
        clippy::ptr_arg,
        reason = "borrowed or owned says whether the text had escapes"
    )]
    fn key(&mut self, key: &Cow<'_, str>) -> serde_json::Result<()> {
        self.separate();
        write_str(self.out, key)?;
        self.out.push(b':');
        Ok(())
    }

    #[allow(
        clippy::ptr_arg,
        reason = "borrowed or owned says whether the text had escapes"
    )]
    fn entry(&mut self, key: &Cow<'_, str>, value: &[u8]) -> serde_json::Result<()> {
        self.key(key)?;
        self.out.extend_from_slice(value);
        Ok(())
    }

    /// An entry of `key`, a plain word (nothing in it to escape), and the string `text`,
    /// written as `serde_json` writes it: the plain fields' entries, in one step each.
    fn str_entry(&mut self, key: &str, text: &str) -> serde_json::Result<()> {
        self.out.reserve(key.len() + text.len() + 6);
        self.separate();
        let out = &mut *self.out;
        out.push(b'"');
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
        if needs_escape(text) {
            serde_json::to_writer(out, text)
        } else {
            out.push(b'"');
            out.extend_from_slice(text.as_bytes());
            out.push(b'"');
            Ok(())
        }
    }

    fn close(self) {
        self.out.push(b'}');
    }
}

/// Writes `text` as a JSON string, as `serde_json` writes a string. Borrowed text needs
/// no escaping and is copied as it is, sparing the search for characters to escape: the
/// scan (`scan.rs`) borrows a string only when it holds no escape sequence, and it
/// refuses unescaped control characters (a quote would have ended the string); the
/// names `Rest::write` passes are plain words.
#[allow(
    clippy::ptr_arg,
    reason = "borrowed or owned says whether the text had escapes"
)]
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

    /// The message `text` holds, as `serde_json` reads it (a map keeps the last of a
    /// repeated key; `1.50` and `1.5` are one number).
    fn read(text: &[u8]) -> serde_json::Value {
        serde_json::from_slice(text).unwrap()
    }

    #[test]
    fn blocks_are_kept_as_sent_and_the_rest_is_sorted() {
        let text = r#"{"properties": {"z": 1.50, "a": [3, {"y": "\u00e9", "b": 1e2}]},
            "type": "track", "version" : 2, "_metadata": { "bundled": [ "x" ] },
            "context": {"userAgent": "Mozilla", "traits": {"b": null, "a": true},
                        "device": null, "library": {"name" : "x"}},
            "integrations": {}, "event": "E", "userId": 7}"#;
        let out = fast(text).unwrap();
        assert_eq!(read(&out), read(&reference(text)));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"type":"track","userId":7,"event":"E","properties":{"z": 1.50, "a": [3, {"y": "\u00e9", "b": 1e2}]},"context":{"traits":{"b": null, "a": true},"library":{"name" : "x"},"userAgent":"Mozilla"},"integrations":{},"_metadata":{ "bundled": [ "x" ] },"version":2}"#
        );
    }

    #[test]
    fn what_reads_otherwise_is_declined() {
        for text in [
            r#"{"x": 1, "x": 2}"#,
            r#"{"context": {"library": 1, "library": 2}}"#,
            r#"{"properties": [1]}"#,
            r#"{"properties": {"a": 1e999}}"#,
            r#"{"context": {"device": "\ud800"}}"#,
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
    fn repeats_read_as_the_reference_reads_them() {
        for text in [
            r#"{"properties": {"a": 1}, "properties": {"b": 2}, "event": "x", "event": "y"}"#,
            r#"{"properties": {"a": 1, "a": 2}, "context": {"traits": {"b": 1, "b": 3}}}"#,
        ] {
            assert_eq!(read(&fast(text).unwrap()), read(&reference(text)), "{text}");
        }
    }

    #[test]
    fn the_plain_fields_are_written_as_serde_json_writes_them() {
        let long = "x".repeat(37);
        for text in [
            "plain".to_owned(),
            String::new(),
            "quote \" inside".to_owned(),
            "back\\slash".to_owned(),
            "tab\tand\u{1}".to_owned(),
            "é 😀 ünïcode".to_owned(),
            format!("{long}\n"),
            format!("{long}\""),
            long.clone(),
        ] {
            let message = Message {
                kind: Some("track".into()),
                message_id: Some(text.clone()),
                user_id: Some(Id::String(text.clone())),
                anonymous_id: Id::number("123456789012345678901234567890"),
                previous_id: Id::number("-2.50"),
                group_id: None,
                event: Some(text.clone()),
                name: None,
                category: Some(text.clone()),
                timestamp: Some("2026-12-05T12:00:00.000Z".into()),
                original_timestamp: Some(text.clone()),
                sent_at: None,
                received_at: Some(text.clone()),
                ..Message::default()
            };
            let written = Rest::default().write(&message).unwrap();
            assert_eq!(
                String::from_utf8(written).unwrap(),
                serde_json::to_string(&message).unwrap(),
                "{text:?}"
            );
        }
        assert_eq!(Rest::default().write(&Message::default()).unwrap(), b"{}");
    }

    #[test]
    fn escapes_are_found_wherever_they_stand() {
        for len in 0..20 {
            for at in 0..len {
                for byte in ['"', '\\', '\n', '\u{1f}'] {
                    let mut text: Vec<char> = vec!['a'; len];
                    text[at] = byte;
                    let text: String = text.into_iter().collect();
                    assert!(needs_escape(&text), "{text:?}");
                }
            }
            assert!(!needs_escape(&"é".repeat(len)));
        }
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
