//! Lone UTF-16 surrogates in JSON escapes, replaced before a body is read.
//!
//! JSON's grammar lets a string hold `\ud83d` without the low half that makes it a
//! character, and JavaScript writes one whenever a string was cut inside an emoji
//! (`JSON.stringify("😀".slice(0, 1))`): a page title trimmed by the browser library, say.
//! No Rust string can hold it, and `serde_json` refuses the whole text. Segment's own
//! API, like Go's `encoding/json`, reads such an escape as U+FFFD (the replacement
//! character), so a client's message is not lost for one broken character; so does
//! Stipple, by rewriting the escape's four digits to `FFFD` in place.

use std::borrow::Cow;

/// `json` with every escape of a lone surrogate (`\uD800`-`\uDFFF` not part of a
/// high-low pair) rewritten as `\uFFFD`; borrowed as it was when it holds none. Text
/// that is not JSON is only changed where it looks like such an escape.
pub fn replace_lone_surrogates(json: &[u8]) -> Cow<'_, [u8]> {
    let mut fixed: Option<Vec<u8>> = None;
    let mut at = 0;
    // Every backslash of valid JSON starts an escape inside a string: step from one to
    // the next, over what each escapes (so `\\ud800` is a backslash and text).
    while let Some(found) = json.get(at..).and_then(|rest| memchr::memchr(b'\\', rest)) {
        let slash = at + found;
        let Some(unit) = escaped_unit(json, slash) else {
            at = slash + 2;
            continue;
        };
        at = slash + 6;
        let lone = match unit {
            0xD800..=0xDBFF => match escaped_unit(json, at) {
                Some(0xDC00..=0xDFFF) => {
                    at += 6;
                    false
                }
                _ => true,
            },
            0xDC00..=0xDFFF => true,
            _ => false,
        };
        if lone {
            fixed.get_or_insert_with(|| json.to_vec())[slash + 2..slash + 6]
                .copy_from_slice(b"FFFD");
        }
    }
    fixed.map_or(Cow::Borrowed(json), Cow::Owned)
}

/// The code unit of the `\uXXXX` escape at `slash`, if there is one.
fn escaped_unit(json: &[u8], slash: usize) -> Option<u16> {
    let escape = json.get(slash..slash + 6)?;
    if escape[0] != b'\\' || escape[1] != b'u' {
        return None;
    }
    let digits = std::str::from_utf8(&escape[2..]).ok()?;
    if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u16::from_str_radix(digits, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fixed(json: &str) -> String {
        String::from_utf8(replace_lone_surrogates(json.as_bytes()).into_owned()).unwrap()
    }

    #[test]
    fn lone_halves_become_the_replacement_character_and_pairs_stay() {
        for (input, expected) in [
            (r#"{"t":"\ud83d"}"#, r#"{"t":"\uFFFD"}"#),
            (r#"{"t":"a\uDE00b"}"#, r#"{"t":"a\uFFFDb"}"#),
            (r#"{"t":"\ud83d\ude00"}"#, r#"{"t":"\ud83d\ude00"}"#),
            (
                r#"{"t":"\ud83d\ud83d\ude00"}"#,
                r#"{"t":"\uFFFD\ud83d\ude00"}"#,
            ),
            (r#"{"t":"\ude00\ud83d"}"#, r#"{"t":"\uFFFD\uFFFD"}"#),
            (r#"{"t":"\ud83dx\ude00"}"#, r#"{"t":"\uFFFDx\uFFFD"}"#),
            (r#"{"t":"\\ud83d"}"#, r#"{"t":"\\ud83d"}"#),
            (r#"{"t":"\\\ud83d"}"#, r#"{"t":"\\\uFFFD"}"#),
            (r#"{"t":"\u00e9\n\"\ud83d"}"#, r#"{"t":"\u00e9\n\"\uFFFD"}"#),
            (r#"{"t":"\ud83"}"#, r#"{"t":"\ud83"}"#),
            (r#"{"t":"\ud83d"#, r#"{"t":"\uFFFD"#),
            ("\\", "\\"),
        ] {
            assert_eq!(fixed(input), expected, "{input}");
        }
    }

    #[test]
    fn text_without_lone_halves_is_borrowed() {
        let json = br#"{"t":"\ud83d\ude00 \u00e9 \\ud800 caf\xc3\xa9"}"#;
        assert!(matches!(replace_lone_surrogates(json), Cow::Borrowed(_)));
    }

    proptest! {
        /// Any bytes: no panic, the same length, changed only in escapes' digits.
        #[test]
        fn any_text_keeps_its_length(bytes in proptest::collection::vec(
            prop_oneof![Just(b'\\'), Just(b'u'), Just(b'd'), Just(b'8'), any::<u8>()], 0..40)
        ) {
            let out = replace_lone_surrogates(&bytes);
            prop_assert_eq!(out.len(), bytes.len());
            for (i, (a, b)) in bytes.iter().zip(out.iter()).enumerate() {
                prop_assert!(a == b || (i >= 2 && b"FFFD".contains(b)));
            }
        }

        /// What serde_json reads from the rewritten text is the string with each lone
        /// half replaced, as `String::from_utf16_lossy` replaces them.
        #[test]
        fn reads_as_the_lossy_string(units in proptest::collection::vec(
            prop_oneof![0xD800u16..0xE000, 0u16..0x80, 0x80u16..0xD800, 0xE000u16..=0xFFFF], 0..12)
        ) {
            let escaped: String = units.iter().map(|u| format!("\\u{u:04x}")).collect();
            let json = format!("\"{escaped}\"");
            let read: String = serde_json::from_slice(&replace_lone_surrogates(json.as_bytes())).unwrap();
            prop_assert_eq!(read, String::from_utf16_lossy(&units));
        }
    }
}
