//! The HTTP client: one event per `POST {endpoint}/event`, keep-alive connections,
//! bounded concurrency, and every answer classified into an [`Outcome`].

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{HeaderValue, RETRY_AFTER};
use secrecy::ExposeSecret;
use stipple_core::PointillistEvent;
use tokio::sync::Semaphore;
use tracing::debug;
use url::Url;

use crate::config::ClientConfig;
use crate::outcome::{Outcome, capped, parse_retry_after};
use crate::transport::{Answer, Settings, Transport};

/// Why a [`Client`] could not be built. Never contains the token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The endpoint cannot take `/event` (not http or https, or not a base URL).
    #[error(
        "pointillist endpoint {0:?} is not an http or https base url; set pointillist.endpoint to e.g. https://stream.pointillist.com"
    )]
    InvalidEndpoint(String),
    /// The token is empty.
    #[error("pointillist api token is empty; set pointillist.api_token")]
    EmptyToken,
    /// The token cannot travel in an HTTP header.
    #[error(
        "pointillist api token has surrounding whitespace or characters not allowed in an HTTP header; check pointillist.api_token"
    )]
    InvalidToken,
    /// The user agent cannot travel in an HTTP header.
    #[error("user agent {0:?} is not a valid HTTP header value")]
    InvalidUserAgent(String),
    /// `concurrency` is zero.
    #[error("pointillist concurrency must be at least 1")]
    ZeroConcurrency,
    /// `timeout` is zero.
    #[error("pointillist timeout must be longer than zero")]
    ZeroTimeout,
    /// The HTTP stack refused the settings (for example no TLS roots could be loaded).
    #[error("could not build the HTTP client: {0}")]
    Http(String),
}

/// An async Pointillist client. Cheap to clone; clones share the connection pool and
/// the concurrency limit. `Debug` never shows the token.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use stipple_mock::{MockConfig, MockServer};
/// use stipple_pointillist::{Client, ClientConfig, Outcome};
///
/// let mock = MockServer::start("127.0.0.1:0".parse()?, MockConfig::new("t0ken"))?;
/// let client = Client::new(ClientConfig::new(mock.url().parse()?, "t0ken".into()))?;
///
/// let event: stipple_core::PointillistEvent = serde_json::from_str(r#"{
///     "eventSource": "segment", "eventType": "identify",
///     "eventTime": "2026-11-28T12:00:00.123Z",
///     "actors": { "customer": { "userId": "u-1" } }
/// }"#)?;
/// assert_eq!(client.send(&event).await, Outcome::Delivered { status: 200 });
/// assert_eq!(mock.events().len(), 1);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    transport: Transport,
    settings: Settings,
    limit: Semaphore,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let settings = &self.inner.settings;
        f.debug_struct("Client")
            .field("event_url", &settings.event_url.as_str())
            .field("api_token", &"[REDACTED]")
            .field("timeout", &settings.timeout)
            .field("concurrency", &settings.pool)
            .field("user_agent", &settings.user_agent)
            .field("direct", &self.inner.transport.is_direct())
            .finish()
    }
}

impl Client {
    /// Checks the settings and builds the client (no request is made yet).
    pub fn new(config: ClientConfig) -> Result<Client, ClientError> {
        let event_url = event_url(&config.endpoint)?;
        let token = config.api_token.expose_secret();
        if token.is_empty() {
            return Err(ClientError::EmptyToken);
        }
        if token.trim() != token {
            return Err(ClientError::InvalidToken);
        }
        let mut token = HeaderValue::from_str(token).map_err(|_| ClientError::InvalidToken)?;
        token.set_sensitive(true);
        let user_agent = HeaderValue::from_str(&config.user_agent)
            .map_err(|_| ClientError::InvalidUserAgent(config.user_agent.clone()))?;
        if config.concurrency == 0 {
            return Err(ClientError::ZeroConcurrency);
        }
        if config.timeout.is_zero() {
            return Err(ClientError::ZeroTimeout);
        }
        let concurrency = config.concurrency.min(Semaphore::MAX_PERMITS);
        let settings = Settings {
            event_url,
            token,
            user_agent,
            timeout: config.timeout,
            pool: concurrency,
        };
        let transport = Transport::new(&settings)?;
        Ok(Client {
            inner: Arc::new(Inner {
                transport,
                settings,
                limit: Semaphore::new(concurrency),
            }),
        })
    }

    /// The URL events are posted to, `{endpoint}/event`.
    pub fn event_url(&self) -> &Url {
        &self.inner.settings.event_url
    }

    /// Most requests in flight at once.
    pub fn concurrency(&self) -> usize {
        self.inner.settings.pool
    }

    /// Sends one event.
    pub async fn send(&self, event: &PointillistEvent) -> Outcome {
        self.send_body(Bytes::from(event.to_json())).await
    }

    /// Sends one event already serialised to JSON. Waits for a free slot when
    /// `concurrency` requests are already in flight.
    pub async fn send_body(&self, body: Bytes) -> Outcome {
        let Ok(_slot) = self.inner.limit.acquire().await else {
            // Only a closed semaphore fails, and this one is never closed.
            return Outcome::Transient {
                status: None,
                reason: "the pointillist client is shut down".to_owned(),
                retry_after: None,
            };
        };
        let inner = &self.inner;
        let outcome = match inner.transport.post(&inner.settings, body).await {
            Ok(answer) => classify(answer),
            Err(failure) => Outcome::Transient {
                status: None,
                reason: failure.reason(inner.settings.timeout),
                retry_after: None,
            },
        };
        debug!(status = ?outcome.status(), %outcome, "pointillist request done");
        outcome
    }
}

/// `{endpoint}/event`, keeping any path prefix (`/prefix` and `/prefix/` both give
/// `/prefix/event`). A fragment is dropped; a query is kept.
fn event_url(endpoint: &Url) -> Result<Url, ClientError> {
    let invalid = || ClientError::InvalidEndpoint(redacted(endpoint));
    if !matches!(endpoint.scheme(), "http" | "https") || endpoint.host().is_none() {
        return Err(invalid());
    }
    let mut url = endpoint.clone();
    url.set_fragment(None);
    url.path_segments_mut()
        .map_err(|()| invalid())?
        .pop_if_empty()
        .push("event");
    Ok(url)
}

/// The endpoint for an error message, without any password in it.
fn redacted(endpoint: &Url) -> String {
    let mut shown = endpoint.clone();
    if shown.password().is_some() {
        // Only fails for URLs that cannot have credentials, which then have none.
        let _ = shown.set_password(Some("REDACTED"));
    }
    shown.to_string()
}

/// Classifies an answer (its body already read, which also let a fully read connection
/// go back to the pool).
fn classify(answer: Answer) -> Outcome {
    let retry_after = answer
        .headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    let body = capped(String::from_utf8_lossy(&answer.body).into_owned());
    Outcome::from_status(answer.status, retry_after, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(endpoint: &str, expected: Option<&str>) {
        let url: Url = endpoint.parse().unwrap();
        assert_eq!(
            event_url(&url).ok().as_ref().map(Url::as_str),
            expected,
            "{endpoint}"
        );
    }

    #[test]
    fn event_is_joined_onto_the_endpoint_path() {
        check(
            "https://stream.pointillist.com",
            Some("https://stream.pointillist.com/event"),
        );
        check(
            "https://stream.pointillist.com/",
            Some("https://stream.pointillist.com/event"),
        );
        check(
            "http://127.0.0.1:9/prefix",
            Some("http://127.0.0.1:9/prefix/event"),
        );
        check(
            "http://127.0.0.1:9/prefix/",
            Some("http://127.0.0.1:9/prefix/event"),
        );
        check("http://h/a/b?x=1#frag", Some("http://h/a/b/event?x=1"));
        check("ftp://h/", None);
        check("mailto:someone@example.com", None);
        check("file:///tmp/x", None);
    }

    #[test]
    fn an_endpoint_password_is_not_repeated_in_errors() {
        let url: Url = "ftp://user:hunter2@h/".parse().unwrap();
        let error = event_url(&url).unwrap_err().to_string();
        assert!(!error.contains("hunter2"), "{error}");
    }
}
