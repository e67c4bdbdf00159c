//! Rejected input as received, less its top-level `writeKey`: rejected input is listed to
//! people, and the key is a secret. Everything else stays byte for byte (key order,
//! duplicate keys, numbers as written, escapes, whitespace), so that what `stipple
//! rejected list` shows is what the client sent.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use serde_json::value::RawValue;

/// The key removed.
const WRITE_KEY: &str = "writeKey";

/// `raw` without the members of its top-level object named `writeKey` (however the name
/// is escaped); `raw` itself when it has none or is not a JSON object.
pub(crate) fn redacted(raw: &[u8]) -> Vec<u8> {
    // Only `\u` escapes can spell the key's name other than plainly (`write\u004bey`).
    if !raw.windows(8).any(|w| w == WRITE_KEY.as_bytes()) && !raw.windows(2).any(|w| w == b"\\u") {
        return raw.to_vec();
    }
    let Ok(text) = std::str::from_utf8(raw) else {
        return raw.to_vec();
    };
    match without_write_key(text) {
        Some(text) => text.into_bytes(),
        None => raw.to_vec(),
    }
}

/// `text`, a JSON object, without its `writeKey` members; `None` if it has none or is
/// not an object.
fn without_write_key(text: &str) -> Option<String> {
    let Members(members) = serde_json::from_str(text).ok()?;
    if !members.iter().any(|(key, _)| key == WRITE_KEY) {
        return None;
    }
    // A member's text runs from the end of the one before (or the object's `{`) to the end
    // of its value: whitespace, a `,` unless it is the first, its key, `:` and its value.
    let open = text.find('{')? + 1;
    let mut out = String::with_capacity(text.len());
    out.push_str(&text[..open]);
    let mut start = open;
    for (key, value) in &members {
        let end = offset_in(text, value.get())? + value.get().len();
        let member = &text[start..end];
        start = end;
        if key == WRITE_KEY {
            continue;
        }
        if out.len() == open {
            // The first member kept: without a separating `,` (the only `,` before its
            // key's opening quote), which it has when a member before it was removed.
            let quote = member.find('"')?;
            let (before, after) = member.split_at(quote);
            out.push_str(&before.replacen(',', "", 1));
            out.push_str(after);
        } else {
            out.push_str(member);
        }
    }
    out.push_str(&text[start..]);
    Some(out)
}

/// Where `part`, a slice of `text`, starts in it.
fn offset_in(text: &str, part: &str) -> Option<usize> {
    let offset = (part.as_ptr() as usize).checked_sub(text.as_ptr() as usize)?;
    (offset + part.len() <= text.len()).then_some(offset)
}

/// A JSON object's members in order, duplicates included, each value as its text.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;

        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    members.push((key, map.next_value::<&'de RawValue>()?));
                }
                Ok(Members(members))
            }
        }

        deserializer.deserialize_map(MembersVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redact(text: &str) -> String {
        String::from_utf8(redacted(text.as_bytes())).unwrap()
    }

    #[test]
    fn only_the_top_level_write_key_goes() {
        assert_eq!(redact(r#"{"a": 1}"#), r#"{"a": 1}"#);
        assert_eq!(redact(r#"{"writeKey":"k","a":1}"#), r#"{"a":1}"#);
        assert_eq!(redact(r#"{"a":1,"writeKey":"k"}"#), r#"{"a":1}"#);
        assert_eq!(
            redact(r#"{"a":1,"writeKey":"k","b":2}"#),
            r#"{"a":1,"b":2}"#
        );
        assert_eq!(redact(r#"{"writeKey":"k"}"#), r#"{}"#);
        assert_eq!(redact("{writeKey"), "{writeKey");
        assert_eq!(
            redact(r#"{"x": {"writeKey": "nested"}}"#),
            r#"{"x": {"writeKey": "nested"}}"#
        );
        assert_eq!(redact(r#"["writeKey"]"#), r#"["writeKey"]"#);
    }

    #[test]
    fn everything_else_stays_as_sent() {
        // Key order, duplicates, numbers as written, escapes (a lone surrogate too),
        // whitespace and a comma inside a string.
        let sent = concat!(
            "{ \"type\":\"track\",\n  \"writeKey\" : \"WK-secret\" ,\n",
            "  \"properties\":{\"big\":123456789012345678901234567890,\"f\":1.10,",
            "\"s\":\"\\u00e9\\ud800, x\",\"dup\":1,\"dup\":2} }"
        );
        assert_eq!(
            redact(sent),
            // (The space before the removed member's comma stays, with the next member.)
            concat!(
                "{ \"type\":\"track\" ,\n",
                "  \"properties\":{\"big\":123456789012345678901234567890,\"f\":1.10,",
                "\"s\":\"\\u00e9\\ud800, x\",\"dup\":1,\"dup\":2} }"
            )
        );
        // The key spelled with escapes, first and twice.
        assert_eq!(
            redact(" {\"write\\u004bey\": \"k\" , \"a\" :[1 ,2], \"writeKey\":null}"),
            " {  \"a\" :[1 ,2]}"
        );
    }
}
