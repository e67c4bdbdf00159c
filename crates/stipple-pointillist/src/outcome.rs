//! What became of one request, classified the way the sender must react to it
//! (the response table of the wire contract).

use std::fmt;
use std::time::{Duration, SystemTime};

/// The most of a rejection's response body an [`Outcome::Rejected`] keeps, in bytes.
pub const MAX_KEPT_BODY: usize = 4096;

/// What became of one event.
///
/// | answer | outcome |
/// |---|---|
/// | 2xx | [`Delivered`](Outcome::Delivered) |
/// | 408, 429, 5xx, timeout, connection refused or reset, DNS failure | [`Transient`](Outcome::Transient) |
/// | 401, 403 | [`Credentials`](Outcome::Credentials) |
/// | other 4xx | [`Rejected`](Outcome::Rejected) |
/// | anything else (1xx, 3xx: redirects are not followed) | [`Transient`](Outcome::Transient) |
///
/// A redirect counts as transient rather than rejected: it means the endpoint is
/// misconfigured, which is no reason to dead-letter the event.
///
/// ```
/// use std::time::Duration;
/// use stipple_pointillist::Outcome;
///
/// let throttled = Outcome::from_status(429, Some(Duration::from_secs(5)), String::new());
/// assert!(throttled.is_transient());
/// assert_eq!(throttled.retry_after(), Some(Duration::from_secs(5)));
/// assert!(Outcome::from_status(403, None, String::new()).is_credentials());
/// assert!(Outcome::from_status(422, None, "bad".into()).is_rejected());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Pointillist took the event: done.
    Delivered {
        /// The 2xx status.
        status: u16,
    },
    /// Try again later, with backoff.
    Transient {
        /// The status, or `None` when no answer came (timeout, connection trouble).
        status: Option<u16>,
        /// What went wrong, for logs and health reports.
        reason: String,
        /// How long the server asked to wait (`Retry-After`), if it did.
        retry_after: Option<Duration>,
    },
    /// The token is wrong or revoked: pause the whole destination, keep the events.
    Credentials {
        /// 401 or 403.
        status: u16,
    },
    /// Pointillist refused this event: dead-letter it, carry on with the rest.
    Rejected {
        /// The 4xx status.
        status: u16,
        /// The start of the response body (at most [`MAX_KEPT_BODY`] bytes).
        body: String,
    },
}

impl Outcome {
    /// Classifies an HTTP answer; `body` is kept for rejections and quoted (briefly) in
    /// the reason of transient errors.
    pub fn from_status(status: u16, retry_after: Option<Duration>, body: String) -> Outcome {
        match status {
            200..=299 => Outcome::Delivered { status },
            401 | 403 => Outcome::Credentials { status },
            408 | 429 | 500..=599 => Outcome::Transient {
                status: Some(status),
                reason: answered(status, &body),
                retry_after,
            },
            400..=499 => Outcome::Rejected {
                status,
                body: capped(body),
            },
            _ => Outcome::Transient {
                status: Some(status),
                reason: format!("unexpected {}", answered(status, &body)),
                retry_after,
            },
        }
    }

    /// Whether the event was delivered.
    pub fn is_delivered(&self) -> bool {
        matches!(self, Outcome::Delivered { .. })
    }

    /// Whether to retry later.
    pub fn is_transient(&self) -> bool {
        matches!(self, Outcome::Transient { .. })
    }

    /// Whether the token was refused.
    pub fn is_credentials(&self) -> bool {
        matches!(self, Outcome::Credentials { .. })
    }

    /// Whether the event itself was refused.
    pub fn is_rejected(&self) -> bool {
        matches!(self, Outcome::Rejected { .. })
    }

    /// The HTTP status, when an answer came.
    pub fn status(&self) -> Option<u16> {
        match self {
            Outcome::Delivered { status }
            | Outcome::Credentials { status }
            | Outcome::Rejected { status, .. } => Some(*status),
            Outcome::Transient { status, .. } => *status,
        }
    }

    /// The wait the server asked for, on a transient outcome.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Outcome::Transient { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl fmt::Display for Outcome {
    /// One line for logs; a rejection's body is left out (it can be long).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Delivered { status } => write!(f, "delivered ({status})"),
            Outcome::Transient { reason, .. } => write!(f, "transient failure: {reason}"),
            Outcome::Credentials { status } => {
                write!(
                    f,
                    "api token refused ({status}); check pointillist.api_token"
                )
            }
            Outcome::Rejected { status, .. } => write!(f, "event rejected ({status})"),
        }
    }
}

/// `pointillist answered 503 Service Unavailable: <start of body>`.
fn answered(status: u16, body: &str) -> String {
    const QUOTED: usize = 200;
    let name = http_reason(status);
    let mut text = format!("pointillist answered {status}{name}");
    let body = body.trim();
    if !body.is_empty() {
        text.push_str(": ");
        match body.char_indices().nth(QUOTED) {
            Some((end, _)) => {
                text.push_str(&body[..end]);
                text.push_str("...");
            }
            None => text.push_str(body),
        }
    }
    text
}

fn http_reason(status: u16) -> String {
    reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .map(|r| format!(" {r}"))
        .unwrap_or_default()
}

/// `body` cut to at most [`MAX_KEPT_BODY`] bytes, on a character boundary.
pub(crate) fn capped(mut body: String) -> String {
    if body.len() > MAX_KEPT_BODY {
        let mut end = MAX_KEPT_BODY;
        while !body.is_char_boundary(end) {
            end -= 1;
        }
        body.truncate(end);
    }
    body
}

/// Parses `Retry-After`: delay seconds, or an HTTP date (a past date means now).
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // All digits but too large for u64: wait as long as can be said.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_fall_in_the_contract_classes() {
        fn class(status: u16) -> &'static str {
            match Outcome::from_status(status, None, "body".into()) {
                Outcome::Delivered { .. } => "delivered",
                Outcome::Transient { .. } => "transient",
                Outcome::Credentials { .. } => "credentials",
                Outcome::Rejected { .. } => "rejected",
            }
        }
        for (status, expected) in [
            (200, "delivered"),
            (202, "delivered"),
            (204, "delivered"),
            (408, "transient"),
            (429, "transient"),
            (500, "transient"),
            (503, "transient"),
            (599, "transient"),
            (401, "credentials"),
            (403, "credentials"),
            (400, "rejected"),
            (404, "rejected"),
            (413, "rejected"),
            (422, "rejected"),
            (301, "transient"),
            (101, "transient"),
            (600, "transient"),
        ] {
            assert_eq!(class(status), expected, "{status}");
        }
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        let now = httpdate::parse_http_date("Sat, 28 Nov 2026 12:00:00 GMT").unwrap();
        for (value, expected) in [
            ("120", Some(Duration::from_secs(120))),
            (" 0 ", Some(Duration::ZERO)),
            (
                "99999999999999999999999",
                Some(Duration::from_secs(u64::MAX)),
            ),
            (
                "Sat, 28 Nov 2026 12:01:30 GMT",
                Some(Duration::from_secs(90)),
            ),
            ("Sat, 28 Nov 2026 11:00:00 GMT", Some(Duration::ZERO)),
            ("-5", None),
            ("1.5", None),
            ("soon", None),
            ("", None),
        ] {
            assert_eq!(parse_retry_after(value, now), expected, "{value:?}");
        }
    }

    #[test]
    fn kept_bodies_are_capped_on_a_character_boundary() {
        assert_eq!(capped("short".into()), "short");
        let long = "é".repeat(MAX_KEPT_BODY);
        let kept = capped(long);
        assert!(kept.len() <= MAX_KEPT_BODY);
        assert!(kept.len() >= MAX_KEPT_BODY - 1);
        assert!(kept.chars().all(|c| c == 'é'));
    }

    #[test]
    fn transient_reasons_name_the_status_and_quote_the_body_briefly() {
        let outcome = Outcome::from_status(503, None, "x".repeat(1000));
        let Outcome::Transient { reason, .. } = outcome else {
            panic!("503 is transient");
        };
        assert!(reason.starts_with("pointillist answered 503 Service Unavailable: xxx"));
        assert!(reason.len() < 300);
    }
}
