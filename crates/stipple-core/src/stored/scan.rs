//! One scan of a message's text, the way [`super::split`] reads it: the plain fields
//! read as [`Message`](crate::Message) reads them (a string with nothing escaped taken
//! from between its quotes, any other value handed to `serde_json`); the blocks, the
//! unknown fields and the `context` keys the mapping does not read kept as their text.
//!
//! Why a scan of its own rather than `serde_json`'s deserializer with visitors, as this
//! path was first built: it reads the 1,000 messages of the `store_1000_messages`
//! benchmark faster, and measured at 256 connections the server spent less CPU a
//! request (see `docs/performance.md`).
//!
//! What is checked, so that the ingress refuses what the reference path refuses:
//! - blocks ([`Scan::block`]) as `serde_json` reads a `Value`: JSON's grammar, numbers
//!   within an `f64`'s range, string escapes that decode (no lone surrogate);
//! - unknown fields and other `context` keys as `serde_json` checks a `RawValue`: JSON's
//!   grammar, string escapes included, but not what numbers or escapes stand for.
//!
//! It declines ([`Declined`]) what the reference path would read otherwise or refuse: a
//! key repeated among the unknown fields or the `context` keys (the reference keeps the
//! last, this path would write both), nesting past `serde_json`'s recursion limit, a
//! plain field `serde_json` does not read, text that is not one JSON object.
//! [`super::split`] then declines the message and the reference path decides.

use std::borrow::Cow;
use std::ops::Range;

use serde::Deserialize;

use super::{Part, Split, SplitBatch, SplitItem, assemble, next_stop};
use crate::message::{Id, read_plain_field};

/// The scan cannot read this message as the reference path would: take that path.
#[derive(Debug)]
pub(super) struct Declined;

impl From<serde_json::Error> for Declined {
    fn from(_: serde_json::Error) -> Self {
        Declined
    }
}

/// `serde_json`'s recursion limit: what is left of it counts down from here, one for
/// each object or array entered.
const DEPTH: u8 = 128;

/// The `context` keys [`crate::Context`] reads as values, in its field order.
const CONTEXT_BLOCKS: [Cow<'static, str>; 5] = [
    Cow::Borrowed("traits"),
    Cow::Borrowed("device"),
    Cow::Borrowed("campaign"),
    Cow::Borrowed("location"),
    Cow::Borrowed("personas"),
];

/// Reads `text`, one JSON object, into `out` (a default [`Split`]) as [`super::split`]
/// does (see the module docs).
pub(super) fn message<'a>(text: &'a str, out: &mut Split<'a>) -> Result<(), Declined> {
    let mut scan = Scan { text, at: 0 };
    scan.message(DEPTH, text.len(), out)?;
    scan.whitespace();
    if scan.at != text.len() {
        return Err(Declined);
    }
    Ok(())
}

/// Reads `text`, a batch envelope, as [`super::split_batch`] does: each item of `batch`
/// read as [`message`] reads a whole text, `sentAt` as [`crate::Batch`] reads it. Declines
/// an envelope with `context` or `integrations` (which [`crate::Batch`] merges into
/// every item), a key of its own repeated (which [`crate::Batch`] refuses), an item it
/// declines or one holding a `batch` key (as [`super::split`] declines it), more than
/// `max_items` items, and anything that is not such an object.
pub(super) fn batch(text: &str, max_items: usize) -> Result<SplitBatch<'_>, Declined> {
    let mut scan = Scan { text, at: 0 };
    scan.whitespace();
    if scan.peek() != Some(b'{') {
        return Err(Declined);
    }
    scan.at += 1;
    let mut items = None;
    let mut sent_at = None;
    let mut write_key = false;
    scan.entries(|scan, key| {
        match &*key {
            "batch" if items.is_none() => items = Some(scan.batch_items(max_items)?),
            "sentAt" if sent_at.is_none() => sent_at = Some(scan.string_or_null()?),
            "writeKey" if !write_key => {
                scan.string_or_null()?;
                write_key = true;
            }
            "batch" | "sentAt" | "writeKey" | "context" | "integrations" => return Err(Declined),
            _ => {
                scan.raw()?;
            }
        }
        Ok(())
    })?;
    scan.whitespace();
    if scan.at != text.len() {
        return Err(Declined);
    }
    let sent_at = sent_at.flatten().map(Cow::into_owned);
    let mut items = items.ok_or(Declined)?;
    // As `Batch::split_item`: an item without a `sentAt` of its own takes the batch's.
    for item in &mut items {
        if item.split.plain.sent_at.is_none() {
            item.split.plain.sent_at.clone_from(&sent_at);
        }
    }
    Ok(SplitBatch { items, sent_at })
}

/// Room first made for the parts of a batch item, whose length is known only once read:
/// about what the realistic messages of the benchmarks take.
const ITEM_TEXT: usize = 1024;

/// A plain field's value, for [`read_plain_field`], which reads it with `next_value`:
/// its raw text, and the text between its quotes when it is a string with nothing
/// escaped in it (which the scan of its end found).
struct PlainValue<'a> {
    raw: &'a str,
    plain: Option<&'a str>,
}

impl<'a> PlainValue<'a> {
    /// A string with nothing escaped in it, the usual value of every plain field, is
    /// taken straight from the text between its quotes; anything else is read by
    /// `serde_json` (which reads that string the same: tests/stored.rs compares the two
    /// paths). `cargo xtask bench --only instructions`: 60,131 → 58,645 a `/v1/track`
    /// request, 33,286 → 31,760 a `/v1/batch` event (an id's `RawValue` copy and its
    /// `serde_json` reader, each field, are what it spares); knowing it from the scan of
    /// the string's end rather than looking for escapes again, 55,731 → 54,640 and
    /// 29,507 → 28,682.
    fn next_value<T: Deserialize<'a> + PlainString>(&mut self) -> Result<T, Declined> {
        if let Some(text) = self.plain {
            return Ok(T::from_plain_string(text));
        }
        let mut reader = serde_json::Deserializer::from_str(self.raw);
        let value = T::deserialize(&mut reader)?;
        reader.end()?;
        Ok(value)
    }
}

/// The type of a plain field, made from a JSON string with nothing escaped in it (the
/// text between its quotes) as `serde_json` would read that string into it.
trait PlainString {
    fn from_plain_string(text: &str) -> Self;
}

impl PlainString for Option<String> {
    fn from_plain_string(text: &str) -> Self {
        Some(text.to_owned())
    }
}

impl PlainString for Option<Id> {
    fn from_plain_string(text: &str) -> Self {
        Some(Id::String(text.to_owned()))
    }
}

/// Sorts `entries` by key, as a `BTreeMap<String, _>` orders them; declines when a key
/// is repeated (the reference path keeps the last).
fn sort_unique<T>(entries: &mut [(Cow<'_, str>, T)]) -> Result<(), Declined> {
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    if entries.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(Declined);
    }
    Ok(())
}

/// One level deeper, as `serde_json` counts it entering an object or an array.
fn enter(depth: u8) -> Result<u8, Declined> {
    match depth.checked_sub(1) {
        Some(0) | None => Err(Declined),
        Some(depth) => Ok(depth),
    }
}

/// A position in the text being read.
struct Scan<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Scan<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.at += 1;
        }
    }

    /// Steps over `byte` after any whitespace, or declines.
    fn expect(&mut self, byte: u8) -> Result<(), Declined> {
        self.whitespace();
        if self.peek() == Some(byte) {
            self.at += 1;
            Ok(())
        } else {
            Err(Declined)
        }
    }

    /// Steps over the entries of the object whose `{` was just passed, up to its `}`:
    /// reads each key, then hands it to `entry`, which reads the value.
    fn entries(
        &mut self,
        mut entry: impl FnMut(&mut Self, Cow<'a, str>) -> Result<(), Declined>,
    ) -> Result<(), Declined> {
        self.items(b'}', |scan| {
            scan.whitespace();
            if scan.peek() != Some(b'"') {
                return Err(Declined);
            }
            let key = scan.string()?;
            scan.expect(b':')?;
            entry(scan, key)
        })
    }

    /// Steps over the elements of the array whose `[` was just passed, up to its `]`.
    fn elements(
        &mut self,
        element: impl FnMut(&mut Self) -> Result<(), Declined>,
    ) -> Result<(), Declined> {
        self.items(b']', element)
    }

    /// Steps over the comma-separated items of an object or array whose opening byte
    /// was just passed, up to `close`; `item` reads each.
    fn items(
        &mut self,
        close: u8,
        mut item: impl FnMut(&mut Self) -> Result<(), Declined>,
    ) -> Result<(), Declined> {
        self.whitespace();
        if self.peek() == Some(close) {
            self.at += 1;
            return Ok(());
        }
        loop {
            item(self)?;
            self.whitespace();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(c) if c == close => {
                    self.at += 1;
                    return Ok(());
                }
                _ => return Err(Declined),
            }
        }
    }

    /// The message object here (after any whitespace), with `depth` left of the
    /// recursion limit, up to its closing `}`, read into `out` (a default [`Split`]:
    /// filled where it is, as a message is large to move); `text` is room first made
    /// for its parts.
    fn message(&mut self, depth: u8, text: usize, out: &mut Split<'a>) -> Result<(), Declined> {
        let Split { plain: m, rest } = out;
        rest.text.reserve(text);
        self.whitespace();
        if self.peek() != Some(b'{') {
            return Err(Declined);
        }
        let depth = enter(depth)?;
        self.at += 1;
        self.entries(|scan, key| {
            let out = &mut rest.text;
            // A repeated block is read again, the last one kept, as in `Message`.
            match &*key {
                "properties" => rest.properties = scan.object_or_null(depth, out)?,
                "traits" => rest.traits = scan.object_or_null(depth, out)?,
                "integrations" => rest.integrations = scan.object_or_null(depth, out)?,
                "context" => rest.context = scan.context(depth, out)?,
                _ => {
                    let mut value = scan.plain_value()?;
                    if !read_plain_field!(&*key, m, value) {
                        rest.other.push((key, value.raw));
                    }
                }
            }
            Ok(())
        })?;
        sort_unique(&mut rest.other)?;
        Ok(())
    }

    /// The items of the `batch` array here, each read as [`Scan::message`] reads a
    /// message, with its text; declines past `max_items` items.
    fn batch_items(&mut self, max_items: usize) -> Result<Vec<SplitItem<'a>>, Declined> {
        self.whitespace();
        if self.peek() != Some(b'[') {
            return Err(Declined);
        }
        self.at += 1;
        let mut items = Vec::new();
        self.elements(|scan| {
            // Past the limit, the reference path refuses the batch before it reads any
            // item: no reading (and no memory) for what is refused.
            if items.len() == max_items {
                return Err(Declined);
            }
            scan.whitespace();
            let start = scan.at;
            // Read where it is kept: an item is large to move.
            items.push(SplitItem::default());
            let item = items.last_mut().ok_or(Declined)?;
            // Two levels below the envelope's top, where `serde_json` counts the limit
            // from: declining sooner than it refuses is safe.
            scan.message(DEPTH - 2, ITEM_TEXT, &mut item.split)?;
            if item.split.rest.contains_other("batch") {
                return Err(Declined);
            }
            item.raw = &scan.text[start..scan.at];
            if items.len() == 1 {
                // Room for as many items as the first one's length says the body holds,
                // and a quarter more (items differ in length): the items are large, and
                // growing moves them.
                let count = (scan.text.len() - start) / (scan.at - start + 1);
                items.reserve((count + count / 4).min(max_items));
            }
            Ok(())
        })?;
        Ok(items)
    }

    /// A string or `null` here, read as `Option<String>` reads it; anything else declines.
    fn string_or_null(&mut self) -> Result<Option<Cow<'a, str>>, Declined> {
        if self.null() {
            return Ok(None);
        }
        if self.peek() != Some(b'"') {
            return Err(Declined);
        }
        self.string().map(Some)
    }

    /// Whether the value here is `null`, stepped over if so.
    fn null(&mut self) -> bool {
        self.whitespace();
        if self.text[self.at..].starts_with("null") {
            self.at += 4;
            true
        } else {
            false
        }
    }

    /// A top-level block, read as `Option<serde_json::Map>`: `null` is none, anything
    /// but an object declines. Its text is copied into `out` as it was sent, once
    /// checked ([`Scan::block`]); the answer is where.
    fn object_or_null(
        &mut self,
        depth: u8,
        out: &mut Vec<u8>,
    ) -> Result<Option<Range<usize>>, Declined> {
        if self.null() {
            return Ok(None);
        }
        if self.peek() != Some(b'{') {
            return Err(Declined);
        }
        Ok(Some(copy(out, self.block(depth)?)))
    }

    /// The `context` block read as `Option<Context>`: the blocks [`crate::Context`]
    /// parses as values, as sent once checked ([`Scan::block`]; a `null` one left out),
    /// in its field order, then every other key verbatim, sorted. Written into `out`;
    /// the answer is where.
    fn context(&mut self, depth: u8, out: &mut Vec<u8>) -> Result<Option<Range<usize>>, Declined> {
        if self.null() {
            return Ok(None);
        }
        if self.peek() != Some(b'{') {
            return Err(Declined);
        }
        let inner = enter(depth)?;
        self.at += 1;
        let start = out.len();
        let mut blocks: [Option<Range<usize>>; 5] = Default::default();
        let mut other: Vec<(Cow<'a, str>, &'a str)> = Vec::new();
        self.entries(|scan, key| {
            match CONTEXT_BLOCKS.iter().position(|name| **name == *key) {
                // A repeated one is read again, the last one kept, as in `Context`.
                Some(i) => {
                    blocks[i] = if scan.null() {
                        None
                    } else {
                        Some(copy(out, scan.block(inner)?))
                    };
                }
                None => other.push((key, scan.raw()?)),
            }
            Ok(())
        })?;
        sort_unique(&mut other)?;
        let typed = CONTEXT_BLOCKS.iter().zip(blocks);
        let typed = typed.filter_map(|(name, range)| Some((name, Part::Written(range?))));
        let raw = other.iter().map(|(key, text)| (key, Part::Raw(text)));
        assemble(out, start, typed.chain(raw))?;
        Ok(Some(start..out.len()))
    }

    /// The text of the block value here, as it was sent: checked as `serde_json` checks
    /// what it reads into a `Value`, so that it is refused here when the reference path
    /// would refuse it (a number out of range, an escape that decodes to no string).
    fn block(&mut self, depth: u8) -> Result<&'a str, Declined> {
        self.whitespace();
        let start = self.at;
        self.skip(depth, Check::Values)?;
        Ok(&self.text[start..self.at])
    }

    /// The value here, as [`Scan::raw`] reads it: a string's end found once, for its
    /// raw text and whether it holds an escape.
    fn plain_value(&mut self) -> Result<PlainValue<'a>, Declined> {
        self.whitespace();
        let start = self.at;
        if self.peek() != Some(b'"') {
            let raw = self.raw()?;
            return Ok(PlainValue { raw, plain: None });
        }
        let (close, escaped) = self.string_end()?;
        Ok(PlainValue {
            raw: &self.text[start..self.at],
            // Quotes are ASCII, so these are character boundaries.
            plain: (!escaped).then(|| &self.text[start + 1..close]),
        })
    }

    /// The raw text of the value here, checked as `serde_json` checks a `RawValue`.
    fn raw(&mut self) -> Result<&'a str, Declined> {
        self.whitespace();
        let start = self.at;
        self.skip(DEPTH, Check::Grammar)?;
        Ok(&self.text[start..self.at])
    }

    /// Steps over one value, checking it as `check` says. Nesting is bounded (a
    /// `RawValue` is not, but this scan recurses): past it, the reference path decides.
    fn skip(&mut self, depth: u8, check: Check) -> Result<(), Declined> {
        self.whitespace();
        match self.peek().ok_or(Declined)? {
            open @ (b'{' | b'[') => {
                let inner = enter(depth)?;
                self.at += 1;
                if open == b'{' {
                    self.entries(|scan, _| scan.skip(inner, check))
                } else {
                    self.elements(|scan| scan.skip(inner, check))
                }
            }
            // Decoded when it holds escapes: a lone surrogate decodes to no string.
            b'"' if check == Check::Values => self.string().map(|_| ()),
            b'"' => self.string_end().map(|_| ()),
            b'-' | b'0'..=b'9' => {
                let text = self.number()?;
                if check == Check::Values && may_be_out_of_range(text) {
                    serde_json::from_str::<serde_json::Number>(text)?;
                }
                Ok(())
            }
            _ => self.literal().map(|_| ()),
        }
    }

    /// `true`, `false` or `null`, stepped over.
    fn literal(&mut self) -> Result<&'static str, Declined> {
        let word = ["true", "false", "null"]
            .into_iter()
            .find(|word| self.text[self.at..].starts_with(word))
            .ok_or(Declined)?;
        self.at += word.len();
        Ok(word)
    }

    /// The end of the string at the opening quote, and whether it holds escapes, each
    /// checked as JSON allows them; the position is left after the closing quote.
    fn string_end(&mut self) -> Result<(usize, bool), Declined> {
        let bytes = self.text.as_bytes();
        let mut at = self.at + 1;
        let mut escaped = false;
        loop {
            at = next_stop(bytes, at);
            match bytes.get(at).copied().ok_or(Declined)? {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    at += match bytes.get(at + 1).copied().ok_or(Declined)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => 2,
                        b'u' if bytes
                            .get(at + 2..at + 6)
                            .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)) =>
                        {
                            6
                        }
                        _ => return Err(Declined),
                    };
                }
                // JSON refuses these unescaped.
                0..=0x1f => return Err(Declined),
                _ => at += 1,
            }
        }
        self.at = at + 1;
        Ok((at, escaped))
    }

    /// The string at the opening quote: borrowed when it holds no escape sequence,
    /// else decoded by `serde_json`.
    fn string(&mut self) -> Result<Cow<'a, str>, Declined> {
        let open = self.at;
        let (close, escaped) = self.string_end()?;
        // Quotes are ASCII, so these are character boundaries.
        if escaped {
            Ok(Cow::Owned(serde_json::from_str(&self.text[open..=close])?))
        } else {
            Ok(Cow::Borrowed(&self.text[open + 1..close]))
        }
    }

    /// The number here, stepped over, its grammar checked:
    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> Result<&'a str, Declined> {
        let bytes = self.text.as_bytes();
        let start = self.at;
        let mut at = start;
        let digits = |at: &mut usize| {
            let from = *at;
            while bytes.get(*at).is_some_and(u8::is_ascii_digit) {
                *at += 1;
            }
            *at > from
        };
        if bytes.get(at) == Some(&b'-') {
            at += 1;
        }
        match bytes.get(at) {
            Some(b'0') => at += 1,
            Some(b'1'..=b'9') => {
                digits(&mut at);
            }
            _ => return Err(Declined),
        }
        if bytes.get(at) == Some(&b'.') {
            at += 1;
            if !digits(&mut at) {
                return Err(Declined);
            }
        }
        if let Some(b'e' | b'E') = bytes.get(at) {
            at += 1;
            if let Some(b'+' | b'-') = bytes.get(at) {
                at += 1;
            }
            if !digits(&mut at) {
                return Err(Declined);
            }
        }
        self.at = at;
        Ok(&self.text[start..at])
    }
}

/// Whether a number's text may stand for more than an `f64` holds, which `serde_json`
/// refuses in a `Value`: only with an exponent, or with more than 300 digits (without
/// one, 300 digits stay under 10^300).
fn may_be_out_of_range(text: &str) -> bool {
    text.len() > 300 || text.bytes().any(|b| matches!(b, b'e' | b'E'))
}

/// Appends `text` to `out`; the answer is where.
fn copy(out: &mut Vec<u8>, text: &str) -> Range<usize> {
    let from = out.len();
    out.extend_from_slice(text.as_bytes());
    from..out.len()
}

/// How much [`Scan::skip`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// JSON's grammar, string escapes included, as `serde_json` checks a `RawValue`.
    Grammar,
    /// Also what the values stand for, as `serde_json` reads a `Value`: numbers within
    /// an `f64`'s range, escapes that decode to a string.
    Values,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain field reads as `serde_json` reads it, on the shortcut or off it.
    #[test]
    fn plain_values_read_as_serde_json_reads_them() {
        fn both<T>(raw: &str)
        where
            T: for<'a> Deserialize<'a> + PlainString + PartialEq + std::fmt::Debug,
        {
            // As a message's field is read: its value, then what follows it.
            let mut scan = Scan { text: raw, at: 0 };
            let value = scan.plain_value().ok();
            scan.whitespace();
            let ours = value
                .filter(|_| scan.at == raw.len())
                .and_then(|mut value| value.next_value::<T>().ok());
            let theirs = serde_json::from_str::<T>(raw).ok();
            assert_eq!(ours, theirs, "{raw}");
        }
        for raw in [
            r#""abc""#,
            "\"\"",
            r#""é 日本""#,
            r#""a\"b""#,
            r#""a\u0041\n""#,
            "null",
            "12",
            "1.5e3",
            "\"tab\there\"",
            "\"",
            r#""x" "#,
            "true",
        ] {
            both::<Option<String>>(raw);
            both::<Option<Id>>(raw);
        }
    }

    /// Whether `serde_json` reads `text` into a `Value` at `depth`.
    fn reference(text: &str, depth: u8) -> bool {
        // Wrap the value so that it is read at `depth`.
        let wraps = 128 - usize::from(depth);
        let wrapped = format!("{}{text}{}", "[".repeat(wraps), "]".repeat(wraps));
        serde_json::from_str::<serde_json::Value>(&wrapped).is_ok()
    }

    /// The block text [`Scan::block`] takes from `text` at `depth`, if it takes it.
    fn block(text: &str, depth: u8) -> Option<&str> {
        let mut scan = Scan { text, at: 0 };
        let block = scan.block(depth).ok()?;
        scan.whitespace();
        (scan.at == text.len()).then_some(block)
    }

    #[test]
    fn blocks_are_taken_as_sent_where_serde_json_reads_them() {
        for text in [
            r#"{"z": 1.50, "a": [3, {"y": "\u00e9", "b": 1e2}], "m": null, "t": true}"#,
            r#"{ "b" : "x\"y" , "a" : "\\" }"#,
            r#"{"k": "é ü 😀", "": 0, "n": -0, "i": -12, "big": 18446744073709551615}"#,
            r#"{"u": 12345678901234567890123, "l": -9223372036854775808, "f": -1.0e-3}"#,
            r#"[[], {}, [{}], "\ud83d\ude00", "\t", false]"#,
            r#"{"a": 1, "a": 2}"#,
            r#""just a string""#,
            "0",
            "-7",
            "1E+2",
            "1e-400",
        ] {
            assert!(reference(text, 127), "{text}");
            assert_eq!(block(text, 127), Some(text), "{text}");
        }
    }

    #[test]
    fn what_serde_json_refuses_is_declined() {
        let long = format!("{{\"a\": 1{}}}", "0".repeat(400));
        for text in [
            r#"{"a": "\ud800"}"#,
            r#"{"\udc00": 1}"#,
            r#"{"a": 1e400}"#,
            r#"[-1E+309]"#,
            &long,
            r#"{"a": 01}"#,
            r#"{"a": 1,}"#,
            r#"{"a" 1}"#,
            r#"{a: 1}"#,
            r#"[1 2]"#,
            r#"{"a": "unterminated}"#,
            "{\"a\": \"raw\ttab\"}",
            "tru",
            "nul",
            "-",
            "1 2",
            r#"{"a": 1}}"#,
        ] {
            assert!(!reference(text, 127), "{text}");
            assert!(block(text, 127).is_none(), "{text}");
        }
        assert!(block("", 127).is_none());
    }

    #[test]
    fn the_string_scan_stops_where_a_byte_at_a_time_would() {
        // Every length around the eight-byte steps, the byte to stop at in every place,
        // multi-byte characters around it.
        for len in 0..24 {
            for at in 0..len {
                for stop in ["\"", "\\n", "\\u", "\x01"] {
                    let mut body: Vec<String> = (0..len)
                        .map(|i| ["a", "é", "😀"][i % 3].to_owned())
                        .collect();
                    body[at] = stop.to_owned();
                    let text = format!("\"{}\"", body.concat());
                    let mut scan = Scan { text: &text, at: 0 };
                    let ended = scan.string_end();
                    let reference = serde_json::from_str::<String>(&text);
                    if stop == "\"" {
                        // The string ends at the quote placed inside it.
                        let end = 1 + body[..at].concat().len();
                        assert_eq!(ended.ok().map(|e| e.0), Some(end), "{text}");
                    } else {
                        assert_eq!(ended.is_ok(), reference.is_ok(), "{text}");
                    }
                }
            }
        }
    }

    #[test]
    fn only_numbers_that_may_overflow_are_read() {
        for (text, read) in [
            ("1", false),
            ("18.99", false),
            ("-0.5", false),
            ("1e2", true),
            ("1E-7", true),
        ] {
            assert_eq!(may_be_out_of_range(text), read, "{text}");
        }
        let digits = "9".repeat(300);
        assert!(!may_be_out_of_range(&digits));
        assert!(reference(&digits, 127), "300 digits stay in range");
        assert!(may_be_out_of_range(&format!("{digits}9")));
    }

    #[test]
    fn nesting_stops_where_serde_json_stops() {
        for depth in [1u8, 2, 3, 127] {
            for levels in 0..=usize::from(depth) {
                let text = format!("{}{}", "[".repeat(levels), "]".repeat(levels));
                let text = if levels == 0 { "1".to_owned() } else { text };
                assert_eq!(
                    block(&text, depth).is_some(),
                    reference(&text, depth),
                    "{levels} levels at depth {depth}"
                );
            }
        }
        assert!(block("[]", 1).is_none());
        assert!(block("[]", 2).is_some());
    }
}
