//! How a [`Client`](crate::Client) talks to Pointillist: endpoint, token, limits.

use std::time::Duration;

use secrecy::SecretString;
use url::Url;

/// Settings for a [`Client`](crate::Client).
///
/// `Debug` shows `api_token` redacted.
///
/// ```
/// use stipple_pointillist::ClientConfig;
///
/// let endpoint = ClientConfig::DEFAULT_ENDPOINT.parse().unwrap();
/// let config = ClientConfig::new(endpoint, "my-token".into());
/// assert_eq!(config.timeout, std::time::Duration::from_secs(10));
/// assert_eq!(config.concurrency, 32);
/// assert!(config.user_agent.starts_with("stipple/"));
/// assert!(!format!("{config:?}").contains("my-token"));
/// ```
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Base URL; events go to `{endpoint}/event`. It may carry a path prefix
    /// (`http://proxy/pointillist` posts to `/pointillist/event`).
    pub endpoint: Url,
    /// The Pointillist API token, sent as the `apiToken` header.
    pub api_token: SecretString,
    /// Longest wait for one request, from connecting to the end of the answer.
    pub timeout: Duration,
    /// Most requests in flight at once, shared by every clone of the client.
    pub concurrency: usize,
    /// The `User-Agent` header.
    pub user_agent: String,
}

impl ClientConfig {
    /// Pointillist's streaming endpoint.
    pub const DEFAULT_ENDPOINT: &'static str = "https://stream.pointillist.com";
    /// Default for [`timeout`](Self::timeout): 10 seconds.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
    /// Default for [`concurrency`](Self::concurrency): 32 requests.
    pub const DEFAULT_CONCURRENCY: usize = 32;

    /// Settings for `endpoint` and `api_token`, everything else at its default.
    pub fn new(endpoint: Url, api_token: SecretString) -> Self {
        ClientConfig {
            endpoint,
            api_token,
            timeout: Self::DEFAULT_TIMEOUT,
            concurrency: Self::DEFAULT_CONCURRENCY,
            user_agent: default_user_agent(),
        }
    }
}

/// `stipple/<version>`.
pub fn default_user_agent() -> String {
    concat!("stipple/", env!("CARGO_PKG_VERSION")).to_owned()
}
