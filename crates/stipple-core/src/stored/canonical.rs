//! A block's JSON text rewritten as `serde_json` writes the `Value` it reads from it,
//! by one scan of the text rather than through `serde`'s visitors.
//!
//! The blocks (`properties`, `traits`, `integrations`, the `context` blocks the mapping
//! reads) are most of a message's bytes. Reading them through the deserializer and
//! writing each part back as `serde_json` would cost most of the ingress's reading
//! time; measured at 256 connections, a scan of the text like this one does the same
//! with less code and less data in the cache. What it writes, byte for byte:
//! - objects with their keys sorted (as a `serde_json::Map` orders them), no spaces;
//! - strings without escape sequences as they are (`serde_json` reads and writes those
//!   unchanged: it refuses raw quotes and control characters), others decoded and
//!   written again by `serde_json`;
//! - integers that fit 64 bits as they are (`serde_json` writes the same digits), every
//!   other number read and written again by `serde_json` (`1.50` is `1.5`, `1e2` is
//!   `100.0`);
//! - `true`, `false`, `null` as they are.
//!
//! It declines ([`Declined`]) what `serde_json` would read otherwise or refuse: a key
//! repeated in one object (a `Map` keeps the last), an escape that decodes to no string
//! (a lone surrogate), a number out of range, nesting past `serde_json`'s recursion
//! limit, text that is not one JSON value. [`super::split`] then declines the message and
//! the reference path decides.

use std::borrow::Cow;
use std::ops::Range;

use super::{Part, assemble, sort_unique, write_str};

/// The scan cannot write this value as the reference path would: take that path.
#[derive(Debug)]
pub(super) struct Declined;

impl From<serde_json::Error> for Declined {
    fn from(_: serde_json::Error) -> Self {
        Declined
    }
}

/// Appends the canonical text of the one JSON value in `text` to `out`. `depth` is what
/// is left of `serde_json`'s recursion limit where the value is read (it counts down
/// from 128 at the top of the message, one for each object or array entered).
pub(super) fn write_value(text: &str, depth: u8, out: &mut Vec<u8>) -> Result<(), Declined> {
    let mut scan = Scan { text, at: 0 };
    scan.value(depth, out)?;
    scan.whitespace();
    if scan.at == text.len() {
        Ok(())
    } else {
        Err(Declined)
    }
}

/// A position in the text being rewritten.
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

    fn value(&mut self, depth: u8, out: &mut Vec<u8>) -> Result<(), Declined> {
        self.whitespace();
        match self.peek().ok_or(Declined)? {
            b'{' => self.object(depth, out),
            b'[' => self.array(depth, out),
            b'"' => write_str(out, &self.string()?).map_err(Declined::from),
            b't' => self.literal("true", out),
            b'f' => self.literal("false", out),
            b'n' => self.literal("null", out),
            b'-' | b'0'..=b'9' => self.number(out),
            _ => Err(Declined),
        }
    }

    fn literal(&mut self, word: &str, out: &mut Vec<u8>) -> Result<(), Declined> {
        if !self.text[self.at..].starts_with(word) {
            return Err(Declined);
        }
        self.at += word.len();
        out.extend_from_slice(word.as_bytes());
        Ok(())
    }

    /// One level deeper, as `serde_json` counts it entering an object or an array.
    fn enter(depth: u8) -> Result<u8, Declined> {
        match depth.checked_sub(1) {
            Some(0) | None => Err(Declined),
            Some(depth) => Ok(depth),
        }
    }

    /// An object: its entries' values are written one after another, then put together
    /// in key order where they were.
    fn object(&mut self, depth: u8, out: &mut Vec<u8>) -> Result<(), Declined> {
        let depth = Self::enter(depth)?;
        self.at += 1;
        let start = out.len();
        let mut entries: Vec<(Cow<'a, str>, Range<usize>)> = Vec::new();
        self.whitespace();
        if self.peek() == Some(b'}') {
            self.at += 1;
        } else {
            loop {
                self.whitespace();
                if self.peek() != Some(b'"') {
                    return Err(Declined);
                }
                let key = self.string()?;
                self.expect(b':')?;
                let from = out.len();
                self.value(depth, out)?;
                entries.push((key, from..out.len()));
                self.whitespace();
                match self.peek() {
                    Some(b',') => self.at += 1,
                    Some(b'}') => {
                        self.at += 1;
                        break;
                    }
                    _ => return Err(Declined),
                }
            }
        }
        sort_unique::<_, serde_json::Error>(&mut entries)?;
        let parts = entries
            .iter()
            .map(|(key, range)| (key, Part::Written(range.clone())));
        assemble(out, start, parts).map_err(Declined::from)
    }

    fn array(&mut self, depth: u8, out: &mut Vec<u8>) -> Result<(), Declined> {
        let depth = Self::enter(depth)?;
        self.at += 1;
        out.push(b'[');
        self.whitespace();
        if self.peek() == Some(b']') {
            self.at += 1;
        } else {
            loop {
                self.value(depth, out)?;
                self.whitespace();
                match self.peek() {
                    Some(b',') => {
                        self.at += 1;
                        out.push(b',');
                    }
                    Some(b']') => {
                        self.at += 1;
                        break;
                    }
                    _ => return Err(Declined),
                }
            }
        }
        out.push(b']');
        Ok(())
    }

    /// The string at the opening quote: borrowed when it holds no escape sequence,
    /// else decoded by `serde_json`.
    fn string(&mut self) -> Result<Cow<'a, str>, Declined> {
        let bytes = self.text.as_bytes();
        let open = self.at;
        let mut at = open + 1;
        let mut escaped = false;
        loop {
            match bytes.get(at).copied().ok_or(Declined)? {
                b'"' => break,
                // The byte after a backslash never ends the string (`\u` is followed by
                // four hex digits, which do not either).
                b'\\' => {
                    escaped = true;
                    at += 2;
                }
                // `serde_json` refuses these unescaped.
                0..=0x1f => return Err(Declined),
                _ => at += 1,
            }
        }
        self.at = at + 1;
        // Quotes are ASCII, so these are character boundaries.
        if escaped {
            Ok(Cow::Owned(serde_json::from_str(&self.text[open..=at])?))
        } else {
            Ok(Cow::Borrowed(&self.text[open + 1..at]))
        }
    }

    fn number(&mut self, out: &mut Vec<u8>) -> Result<(), Declined> {
        let bytes = self.text.as_bytes();
        let start = self.at;
        let mut end = start;
        while let Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') = bytes.get(end) {
            end += 1;
        }
        self.at = end;
        let text = &self.text[start..end];
        if is_plain_integer(text) {
            out.extend_from_slice(text.as_bytes());
        } else {
            let number: serde_json::Number = serde_json::from_str(text)?;
            serde_json::to_writer(out, &number)?;
        }
        Ok(())
    }
}

/// Whether `serde_json` reads `text` as a `u64` or an `i64` and writes it back the same:
/// digits without a leading zero, at most 19 (under 2^64), or a minus and at most 18
/// (over -2^63) that are not `-0` (which it reads as the float `-0.0`).
fn is_plain_integer(text: &str) -> bool {
    let (digits, most) = match text.strip_prefix('-') {
        Some(digits) => (digits, 18),
        None => (text, 19),
    };
    let bytes = digits.as_bytes();
    match bytes {
        [] => false,
        [b'0'] => digits.len() == text.len(),
        [b'0', ..] => false,
        _ => bytes.len() <= most && bytes.iter().all(u8::is_ascii_digit),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `serde_json` writes for the `Value` it reads from `text` at `depth`, or
    /// `None` when it refuses it.
    fn reference(text: &str, depth: u8) -> Option<Vec<u8>> {
        // Wrap the value so that it is read at `depth`, then unwrap what is written.
        let wraps = 128 - usize::from(depth);
        let wrapped = format!("{}{text}{}", "[".repeat(wraps), "]".repeat(wraps));
        let value: serde_json::Value = serde_json::from_str(&wrapped).ok()?;
        let written = serde_json::to_vec(&value).ok()?;
        Some(written[wraps..written.len() - wraps].to_vec())
    }

    fn canonical(text: &str, depth: u8) -> Option<Vec<u8>> {
        let mut out = b"prefix".to_vec();
        write_value(text, depth, &mut out).ok()?;
        assert!(out.starts_with(b"prefix"), "what was there before is kept");
        Some(out[6..].to_vec())
    }

    #[test]
    fn values_are_written_as_serde_json_writes_them() {
        for text in [
            r#"{"z": 1.50, "a": [3, {"y": "\u00e9", "b": 1e2}], "m": null, "t": true}"#,
            r#" { "b" : "x\"y" , "a" : "\\" } "#,
            r#"{"k": "é ü 😀", "": 0, "n": -0, "i": -12, "big": 18446744073709551615}"#,
            r#"{"u": 12345678901234567890123, "l": -9223372036854775808, "f": -1.0e-3}"#,
            r#"[[], {}, [{}], "\ud83d\ude00", "\t", false]"#,
            r#""just a string""#,
            "0",
            "-7",
            "1E+2",
        ] {
            assert_eq!(canonical(text, 127), reference(text, 127), "{text}");
            assert!(canonical(text, 127).is_some(), "{text}");
        }
    }

    #[test]
    fn what_serde_json_reads_otherwise_or_refuses_is_declined() {
        for text in [
            r#"{"a": 1, "a": 2}"#,
            r#"{"a": "\ud800"}"#,
            r#"{"a": 1e400}"#,
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
            "",
            r#"{"a": 1}}"#,
        ] {
            assert!(canonical(text, 127).is_none(), "{text}");
        }
    }

    #[test]
    fn nesting_stops_where_serde_json_stops() {
        for depth in [1u8, 2, 3, 127] {
            for levels in 0..=usize::from(depth) {
                let text = format!("{}{}", "[".repeat(levels), "]".repeat(levels));
                let text = if levels == 0 { "1".to_owned() } else { text };
                assert_eq!(
                    canonical(&text, depth),
                    reference(&text, depth),
                    "{levels} levels at depth {depth}"
                );
            }
        }
        assert!(canonical("[]", 1).is_none());
        assert!(canonical("[]", 2).is_some());
    }

    #[test]
    fn plain_integers_are_the_ones_serde_json_writes_back_unchanged() {
        for (text, plain) in [
            ("0", true),
            ("-0", false),
            ("7", true),
            ("-7", true),
            ("1234567890123456789", true),
            ("12345678901234567890", false),
            ("-123456789012345678", true),
            ("-1234567890123456789", false),
            ("01", false),
            ("1.0", false),
            ("1e2", false),
            ("-", false),
            ("", false),
        ] {
            assert_eq!(is_plain_integer(text), plain, "{text}");
        }
    }
}
