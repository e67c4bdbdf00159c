//! Finding the write key of a request and the source it names.
//!
//! The key comes from `Authorization: Basic base64("<writeKey>:")` (the colon may be
//! missing, a password is ignored) or else from `"writeKey"` in the JSON body. When the
//! header carries a key it decides alone: a body key is not a second chance. A guess is
//! compared with every source's key as keyed digests, in constant time, so timing tells
//! nothing about how much of a guess was right, nor how long a key is (comparing the
//! keys themselves stops at the first difference in length). Keys are never logged.
//!
//! The digest is SipHash-1-3 under a key drawn from the operating system's random source
//! when the sources are loaded (std's `RandomState`): a pseudo-random function to whoever
//! does not hold that key, computed in a time that depends only on the guess's length. A
//! digest that matches is confirmed by comparing the keys themselves, so a wrong key is
//! never taken, not even on a collision of the 64-bit digests (one chance in 2^64 a
//! guess, the only case where that comparison's timing could tell anything). SipHash
//! rather than a cryptographic hash such as SHA-256, which this code used before: it
//! costs about 150 instructions a request instead of 3,500, 5% of all a `/v1/track`
//! request costs (`cargo xtask bench --only instructions`).

use std::borrow::Cow;
use std::hash::{BuildHasher as _, Hasher as _, RandomState};

use axum::http::{HeaderMap, header};
use base64::DecodeSliceError;
use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use secrecy::ExposeSecret;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::config::Source;
use crate::error::IngressError;

/// Standard base64, with or without padding (clients differ).
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The sources and the keyed digests of their write keys, to find a source by its key.
/// `Debug` shows the sources (names only), not the digests nor their key.
pub(crate) struct Sources {
    sources: Vec<Source>,
    digests: Vec<u64>,
    /// The digests' secret key (see the module docs).
    keyed: RandomState,
}

impl Sources {
    pub(crate) fn new(sources: &[Source]) -> Self {
        let keyed = RandomState::new();
        Self {
            digests: sources
                .iter()
                .map(|s| digest(&keyed, s.write_key.expose_secret()))
                .collect(),
            sources: sources.to_vec(),
            keyed,
        }
    }
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.sources).finish()
    }
}

/// `key`'s SipHash-1-3 digest under `keyed`'s secret key. The bytes alone, without the
/// end marker `Hash for str` adds: only keys of the same kind are ever compared.
fn digest(keyed: &RandomState, key: &str) -> u64 {
    let mut hasher = keyed.build_hasher();
    hasher.write(key.as_bytes());
    hasher.finish()
}

/// The source named by the `Authorization: Basic` header; `None` when the header
/// carries no key, and the body is to be asked (see [`authenticate_body`]).
pub(crate) fn authenticate_header<'a>(
    sources: &'a Sources,
    headers: &HeaderMap,
) -> Result<Option<&'a Source>, IngressError> {
    let Some(credentials) = basic_credentials(headers)? else {
        return Ok(None);
    };
    // Decoded on the stack, without an allocation, when it fits (write keys are usually
    // 32 characters); into a vector when it does not.
    let mut buffer = [0; DECODED_ON_STACK];
    let decoded: Cow<'_, [u8]> = match BASE64.decode_slice(credentials, &mut buffer) {
        Ok(n) => Cow::Borrowed(&buffer[..n]),
        Err(DecodeSliceError::OutputSliceTooSmall) => Cow::Owned(
            BASE64
                .decode(credentials)
                .map_err(|_| IngressError::BadAuthorization)?,
        ),
        Err(DecodeSliceError::DecodeError(_)) => return Err(IngressError::BadAuthorization),
    };
    let decoded = std::str::from_utf8(&decoded).map_err(|_| IngressError::BadAuthorization)?;
    let username = decoded.split_once(':').map_or(decoded, |(u, _)| u);
    if username.is_empty() {
        // An empty username: the body may carry the key.
        return Ok(None);
    }
    known(find(sources, username)).map(Some)
}

/// Room for the decoded `user:password` of most Basic credentials.
const DECODED_ON_STACK: usize = 192;

/// The source named by `"writeKey"` in the JSON body.
pub(crate) fn authenticate_body<'a>(
    sources: &'a Sources,
    body: &[u8],
) -> Result<&'a Source, IngressError> {
    let key = body_write_key(body)?.ok_or(IngressError::MissingWriteKey)?;
    known(find(sources, &key))
}

fn known(found: Option<&Source>) -> Result<&Source, IngressError> {
    found.ok_or_else(|| {
        tracing::debug!("request with an unknown write key refused");
        IngressError::UnknownWriteKey
    })
}

/// The base64 credentials of an `Authorization: Basic` header; `None` without the
/// header or with another scheme.
fn basic_credentials(headers: &HeaderMap) -> Result<Option<&str>, IngressError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| IngressError::BadAuthorization)?
        .trim();
    let (scheme, credentials) = text.split_once(' ').unwrap_or((text, ""));
    if !scheme.eq_ignore_ascii_case("basic") {
        return Ok(None);
    }
    Ok(Some(credentials.trim()))
}

/// `"writeKey"` at the top level of the body (a message or a batch envelope).
fn body_write_key(body: &[u8]) -> Result<Option<String>, IngressError> {
    #[derive(Deserialize)]
    struct Probe<'a> {
        #[serde(rename = "writeKey", default, borrow)]
        write_key: Option<Cow<'a, str>>,
    }
    match serde_json::from_slice::<Probe<'_>>(body) {
        Ok(probe) => Ok(probe
            .write_key
            .filter(|k| !k.is_empty())
            .map(Cow::into_owned)),
        // Not an object, or a `writeKey` that is not a string: no key here.
        Err(e) if e.classify() == serde_json::error::Category::Data => Ok(None),
        Err(e) => Err(IngressError::InvalidJson(e.to_string())),
    }
}

/// The source with write key `key`, looking at every source whatever matches.
fn find<'a>(sources: &'a Sources, key: &str) -> Option<&'a Source> {
    let guess = digest(&sources.keyed, key);
    let mut found = None;
    for (source, digest) in sources.sources.iter().zip(&sources.digests) {
        let equal: bool = digest.ct_eq(&guess).into();
        // Only on a match of the digests: the key's own, or a collision (see the
        // module docs).
        if equal
            && bool::from(
                source
                    .write_key
                    .expose_secret()
                    .as_bytes()
                    .ct_eq(key.as_bytes()),
            )
        {
            found = Some(source);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn sources() -> Sources {
        Sources::new(&[Source::new("web", "wk_web"), Source::new("app", "wk_app")])
    }

    fn basic(credentials: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let value = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        );
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&value).unwrap(),
        );
        headers
    }

    fn check(headers: HeaderMap, body: &str, expected: Result<&str, &str>) {
        let sources = sources();
        let got = authenticate_header(&sources, &headers)
            .and_then(|found| match found {
                Some(source) => Ok(source),
                None => authenticate_body(&sources, body.as_bytes()),
            })
            .map(|s| s.name.as_str())
            .map_err(|e| e.code());
        assert_eq!(got, expected, "{headers:?} {body}");
    }

    #[test]
    fn debug_shows_names_not_keys_nor_digests() {
        let shown = format!("{:?}", sources());
        // The sources as they show themselves (their keys redacted), and nothing more.
        assert_eq!(shown, format!("{:?}", sources().sources));
        assert!(
            shown.contains("\"web\"") && !shown.contains("wk_"),
            "{shown}"
        );
    }

    #[test]
    fn a_key_too_long_for_the_stack_buffer_is_found_too() {
        let long = "k".repeat(DECODED_ON_STACK * 2);
        let sources = Sources::new(&[Source::new("web", "wk_web"), Source::new("big", &long)]);
        for credentials in [format!("{long}:"), long.clone(), format!("{long}:password")] {
            let found =
                authenticate_header(&sources, &basic(&credentials)).expect("a valid header");
            assert_eq!(found.map(|s| s.name.as_str()), Some("big"));
        }
        let wrong = format!("{}x:", &long[1..]);
        let found = authenticate_header(&sources, &basic(&wrong)).map(|s| s.map(|s| &s.name));
        assert!(
            matches!(found, Err(IngressError::UnknownWriteKey)),
            "{found:?}"
        );
        // Right at the edge of the buffer, both sides.
        for len in DECODED_ON_STACK - 2..DECODED_ON_STACK + 2 {
            let key = "e".repeat(len);
            let sources = Sources::new(&[Source::new("edge", &key)]);
            let found = authenticate_header(&sources, &basic(&format!("{key}:"))).expect("valid");
            assert_eq!(found.map(|s| s.name.as_str()), Some("edge"), "{len}");
        }
    }

    #[test]
    fn a_digest_collision_is_not_taken_for_the_key() {
        let mut colliding = sources();
        // As if "wk_other" had the digest of web's key: it matches, the keys do not.
        colliding.digests[0] = digest(&colliding.keyed, "wk_other");
        assert!(find(&colliding, "wk_other").is_none());
        assert_eq!(
            find(&colliding, "wk_app").map(|s| s.name.as_str()),
            Some("app")
        );
        // Each set of sources draws its own secret key.
        let (a, b) = (sources(), sources());
        assert_ne!(a.digests, b.digests);
    }

    #[test]
    fn finds_the_source() {
        let none = HeaderMap::new;
        check(basic("wk_web:"), "{}", Ok("web"));
        check(basic("wk_app"), "{}", Ok("app"));
        check(basic("wk_app:ignored-password"), "{}", Ok("app"));
        check(none(), r#"{"writeKey": "wk_web", "batch": []}"#, Ok("web"));
        check(
            none(),
            r#"{"type": "track", "writeKey": "wk_app"}"#,
            Ok("app"),
        );
        // The header decides when it has a key.
        check(
            basic("wk_nope:"),
            r#"{"writeKey": "wk_web"}"#,
            Err("unknown_write_key"),
        );
        check(basic(":"), r#"{"writeKey": "wk_web"}"#, Ok("web"));
        check(none(), "{}", Err("missing_write_key"));
        check(none(), r#"{"writeKey": ""}"#, Err("missing_write_key"));
        check(none(), r#"{"writeKey": 5}"#, Err("missing_write_key"));
        check(none(), "[1]", Err("missing_write_key"));
        check(none(), "{nope", Err("invalid_json"));
        check(none(), r#"{"writeKey": "wk_we"}"#, Err("unknown_write_key"));
        check(
            none(),
            r#"{"writeKey": "wk_web2"}"#,
            Err("unknown_write_key"),
        );
        let mut bearer = HeaderMap::new();
        bearer.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        check(bearer, r#"{"writeKey": "wk_web"}"#, Ok("web"));
        let mut garbage = HeaderMap::new();
        garbage.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        check(garbage, "{}", Err("bad_authorization"));
        let mut unpadded = HeaderMap::new();
        // base64("wk_web") without its padding.
        unpadded.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("basic d2tfd2Vi"),
        );
        check(unpadded, "{}", Ok("web"));
    }
}
