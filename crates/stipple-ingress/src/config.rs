//! The ingress settings: sources and their write keys, limits, CORS origins.

use std::collections::HashSet;
use std::time::Duration;

use axum::http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use tower_http::cors::AllowOrigin;

/// One Segment source: a name (it travels with every event) and its write key.
///
/// `Debug` shows the name only; the write key is redacted.
#[derive(Debug, Clone)]
pub struct Source {
    /// The source's name, as stored with its events and shown in metrics labels.
    pub name: String,
    /// The write key clients send (as the Basic username or `writeKey` in the body).
    pub write_key: SecretString,
}

impl Source {
    /// A source named `name` with the write key `write_key`.
    pub fn new(name: impl Into<String>, write_key: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            write_key: SecretString::from(write_key.into()),
        }
    }
}

/// The ingress settings. [`IngressConfig::default`] has Segment's own limits and no
/// sources; [`crate::IngressState::new`] refuses a configuration without any.
#[derive(Debug, Clone)]
pub struct IngressConfig {
    /// The sources whose write keys are accepted.
    pub sources: Vec<Source>,
    /// A `messageId` seen on a source within this window is not queued again (24 h).
    pub dedup_window: Duration,
    /// Largest single-call body, and largest item inside a batch, in bytes (32 KiB).
    pub max_message_bytes: usize,
    /// Largest batch body after decompression, in bytes (500 KiB).
    pub max_batch_bytes: usize,
    /// Most items in one batch (2,500).
    pub max_batch_items: usize,
    /// Origins allowed by CORS; `"*"` (the default) allows any.
    pub cors_origins: Vec<String>,
    /// Longest a client may take to send a request body before it is answered 503 with
    /// `Retry-After` (30 s): bounds what a stalled client can hold.
    pub body_timeout: Duration,
    /// Memory for the bodies of the requests being read and stored at once, in bytes
    /// (64 MiB). Each request reserves its body's bytes as they arrive (in KiB, rounded
    /// up; a gzip body then what it inflates to, if more) until it is answered; one that finds no
    /// room is answered 503 with `Retry-After`. So a stalled upload holds only what it
    /// sent. At least `max_batch_bytes`, so that the largest batch always fits alone.
    pub max_in_flight_bytes: usize,
}

impl Default for IngressConfig {
    fn default() -> Self {
        Self {
            sources: Vec::new(),
            dedup_window: Duration::from_secs(24 * 60 * 60),
            max_message_bytes: 32 * 1024,
            max_batch_bytes: 500 * 1024,
            max_batch_items: 2500,
            cors_origins: vec!["*".to_owned()],
            max_in_flight_bytes: 64 * 1024 * 1024,
            body_timeout: Duration::from_secs(30),
        }
    }
}

/// Why an [`IngressConfig`] cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// No sources: every request would be refused.
    #[error("no sources are configured: add at least one source with a name and a write key")]
    NoSources,
    /// A source with an empty name.
    #[error("a source has an empty name: give every source a name")]
    EmptySourceName,
    /// A source with an empty write key.
    #[error("source {source_name:?} has an empty write key: set its write key")]
    EmptyWriteKey {
        /// The source at fault.
        source_name: String,
    },
    /// Two sources with the same name.
    #[error("two sources are named {0:?}: give each source its own name")]
    DuplicateSourceName(String),
    /// Two sources with the same write key: its events could not be told apart.
    #[error("sources {first:?} and {second:?} share a write key: give each source its own")]
    DuplicateWriteKey {
        /// The first source with the key.
        first: String,
        /// The second source with the key.
        second: String,
    },
    /// A CORS origin that is not a valid header value.
    #[error(
        "CORS origin {0:?} is not valid: use \"*\" or origins as browsers send them, like \
         \"https://example.com\" or \"http://localhost:3000\" (no path, no trailing /)"
    )]
    BadCorsOrigin(String),
    /// A limit set to zero.
    #[error("ingress.{0} is zero: set it to at least 1")]
    ZeroLimit(&'static str),
    /// An in-flight budget too small for the largest body: such a request could never be
    /// taken.
    #[error(
        "ingress.max_in_flight_bytes ({budget} bytes) is smaller than the largest request \
         body the ingress takes (a batch of {batch} bytes): set it to at least {batch}, \
         e.g. \"64MiB\""
    )]
    InFlightBelowBatch {
        /// The in-flight budget.
        budget: usize,
        /// The batch limit.
        batch: usize,
    },
}

impl IngressConfig {
    /// Checks the settings as [`crate::IngressState::new`] does, for a caller that wants
    /// to refuse bad ones before it opens anything.
    pub fn check(&self) -> Result<(), ConfigError> {
        self.validate().map(drop)
    }

    /// Checks the settings and builds the CORS origin rule.
    pub(crate) fn validate(&self) -> Result<AllowOrigin, ConfigError> {
        if self.sources.is_empty() {
            return Err(ConfigError::NoSources);
        }
        let mut names = HashSet::new();
        for (i, source) in self.sources.iter().enumerate() {
            if source.name.is_empty() {
                return Err(ConfigError::EmptySourceName);
            }
            if source.write_key.expose_secret().is_empty() {
                return Err(ConfigError::EmptyWriteKey {
                    source_name: source.name.clone(),
                });
            }
            if !names.insert(source.name.as_str()) {
                return Err(ConfigError::DuplicateSourceName(source.name.clone()));
            }
            // Startup only, so an ordinary comparison is fine here.
            if let Some(first) = self.sources[..i]
                .iter()
                .find(|s| s.write_key.expose_secret() == source.write_key.expose_secret())
            {
                return Err(ConfigError::DuplicateWriteKey {
                    first: first.name.clone(),
                    second: source.name.clone(),
                });
            }
        }
        for (name, value) in [
            ("max_message_bytes", self.max_message_bytes),
            ("max_batch_bytes", self.max_batch_bytes),
            ("max_batch_items", self.max_batch_items),
        ] {
            if value == 0 {
                return Err(ConfigError::ZeroLimit(name));
            }
        }
        if self.max_in_flight_bytes < self.max_batch_bytes.max(self.max_message_bytes) {
            return Err(ConfigError::InFlightBelowBatch {
                budget: self.max_in_flight_bytes,
                batch: self.max_batch_bytes.max(self.max_message_bytes),
            });
        }
        if self.body_timeout.is_zero() {
            return Err(ConfigError::ZeroLimit("body_timeout"));
        }
        if self.cors_origins.iter().any(|o| o.trim() == "*") {
            return Ok(AllowOrigin::any());
        }
        let origins = self
            .cors_origins
            .iter()
            .map(|o| {
                is_origin(o.trim())
                    .then(|| HeaderValue::from_str(o.trim()).ok())
                    .flatten()
                    .ok_or_else(|| ConfigError::BadCorsOrigin(o.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AllowOrigin::list(origins))
    }
}

/// Whether `text` is written as a browser writes an `Origin` header, which a CORS origin
/// must match exactly: `scheme://host[:port]`, nothing after (a trailing `/` would never
/// match), or `null`.
fn is_origin(text: &str) -> bool {
    if text == "null" {
        return true;
    }
    let Some((scheme, host)) = text.split_once("://") else {
        return false;
    };
    !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        && !host.is_empty()
        && !host.bytes().any(|b| {
            matches!(b, b'/' | b'?' | b'#' | b'@')
                || b.is_ascii_whitespace()
                || b.is_ascii_control()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(sources: Vec<Source>) -> IngressConfig {
        IngressConfig {
            sources,
            ..IngressConfig::default()
        }
    }

    #[test]
    fn debug_never_shows_the_write_key() {
        let text = format!("{:?}", config(vec![Source::new("web", "wk-secret-123")]));
        assert!(text.contains("web"), "{text}");
        assert!(!text.contains("wk-secret-123"), "{text}");
    }

    #[test]
    fn refuses_unusable_settings() {
        let check = |config: IngressConfig, expected: Option<ConfigError>| {
            assert_eq!(config.validate().err(), expected);
        };
        check(config(vec![Source::new("a", "k1")]), None);
        check(config(vec![]), Some(ConfigError::NoSources));
        check(
            config(vec![Source::new("", "k1")]),
            Some(ConfigError::EmptySourceName),
        );
        check(
            config(vec![Source::new("a", "")]),
            Some(ConfigError::EmptyWriteKey {
                source_name: "a".into(),
            }),
        );
        check(
            config(vec![Source::new("a", "k1"), Source::new("a", "k2")]),
            Some(ConfigError::DuplicateSourceName("a".into())),
        );
        check(
            config(vec![Source::new("a", "k1"), Source::new("b", "k1")]),
            Some(ConfigError::DuplicateWriteKey {
                first: "a".into(),
                second: "b".into(),
            }),
        );
        check(
            IngressConfig {
                max_in_flight_bytes: 0,
                ..config(vec![Source::new("a", "k1")])
            },
            Some(ConfigError::InFlightBelowBatch {
                budget: 0,
                batch: 500 * 1024,
            }),
        );
        check(
            IngressConfig {
                max_in_flight_bytes: 100_000,
                ..config(vec![Source::new("a", "k1")])
            },
            Some(ConfigError::InFlightBelowBatch {
                budget: 100_000,
                batch: 500 * 1024,
            }),
        );
        check(
            IngressConfig {
                cors_origins: vec!["https://ok.example".into(), "bad\norigin".into()],
                ..config(vec![Source::new("a", "k1")])
            },
            Some(ConfigError::BadCorsOrigin("bad\norigin".into())),
        );
        // As browsers write `Origin`, or refused by name.
        for (origin, taken) in [
            ("not an origin", false),
            ("https://ok.example/", false),
            ("ok.example", false),
            ("https://", false),
            ("://x", false),
            ("https://ok.example", true),
            ("http://localhost:3000", true),
            ("chrome-extension://abc", true),
            ("null", true),
        ] {
            check(
                IngressConfig {
                    cors_origins: vec![origin.into()],
                    ..config(vec![Source::new("a", "k1")])
                },
                (!taken).then(|| ConfigError::BadCorsOrigin(origin.into())),
            );
        }
    }
}
