//! How requests travel: hyper's pooled client over rustls, or reqwest's where the
//! environment names a proxy.
//!
//! Why hyper directly: reqwest wraps the same pooled client in layers that a POST to one
//! fixed URL does not use (a redirect layer that parses each request's URI back into a
//! `Url`, a retry layer, a timer and a `Url`→`Uri` conversion a request). Measured with
//! the bench's bare client against the mock, on one machine in alternated runs:
//! 10.1 µs of client CPU an event directly against 15.1 µs through reqwest, and
//! 71,000-98,000 events/s against 48,000-67,000 (docs/performance.md).
//!
//! What reqwest still does here: requests through a proxy named by the environment
//! (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, in either case, with `NO_PROXY`), which it
//! reads as curl does, and endpoints that carry a user name or password (sent as basic
//! authorization). [`Transport::new`] picks it for those; everything else goes direct.
//! Both trust the same roots: Mozilla's, built in, and the system's (its CA store, or
//! the file `SSL_CERT_FILE` names).

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderValue, USER_AGENT};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as PooledClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use url::Url;

use crate::client::ClientError;
use crate::outcome::MAX_KEPT_BODY;

/// The header that carries the API token.
const API_TOKEN: &str = "apiToken";

/// An answer's status, headers and the start of its body (at most [`MAX_KEPT_BODY`]
/// bytes; a body that breaks off halfway is kept as far as it came).
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Vec<u8>,
}

/// No answer: why, as one line with its causes (never the URL or the token).
#[derive(Debug)]
pub(crate) enum Failure {
    Timeout,
    Connect(String),
    Other(String),
}

/// One of the two ways a request travels (see the module docs).
#[derive(Debug)]
pub(crate) enum Transport {
    /// Boxed: hyper's client is some 400 bytes, reqwest's a pointer.
    Direct(Box<Direct>),
    Reqwest(reqwest::Client),
}

/// hyper's pooled client and the parts of every request built once.
#[derive(Debug)]
pub(crate) struct Direct {
    http: PooledClient<HttpsConnector<HttpConnector>, Full<Bytes>>,
    uri: Uri,
}

/// What every request carries, whichever way it travels, checked by the client.
/// `Debug` shows the token redacted (a sensitive `HeaderValue`).
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) event_url: Url,
    pub(crate) token: HeaderValue,
    pub(crate) user_agent: HeaderValue,
    pub(crate) timeout: Duration,
    /// Most requests in flight at once, and idle connections kept.
    pub(crate) pool: usize,
}

/// The proxy variables reqwest reads, in the order it reads them.
const PROXY_VARIABLES: [&str; 6] = [
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// Whether requests to `url` go through reqwest: a proxy variable is set (reqwest then
/// decides, `NO_PROXY` included, whether this URL uses it), or the URL carries
/// credentials.
fn needs_reqwest(url: &Url, env: impl Fn(&str) -> Option<String>) -> bool {
    let proxied = PROXY_VARIABLES
        .iter()
        .any(|name| env(name).is_some_and(|value| !value.trim().is_empty()));
    proxied || !url.username().is_empty() || url.password().is_some()
}

impl Transport {
    /// The transport for these settings, reading the proxy variables from the process's
    /// environment.
    pub(crate) fn new(settings: &Settings) -> Result<Transport, ClientError> {
        if needs_reqwest(&settings.event_url, |name| std::env::var(name).ok()) {
            Self::reqwest(settings)
        } else {
            Self::direct(settings)
        }
    }

    /// hyper's pooled client, over rustls for `https`.
    pub(crate) fn direct(settings: &Settings) -> Result<Transport, ClientError> {
        let uri: Uri = settings
            .event_url
            .as_str()
            .parse()
            .map_err(|_| ClientError::InvalidEndpoint(settings.event_url.to_string()))?;
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(settings.timeout));
        let tls = tls_config()?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(tcp);
        let http = PooledClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(settings.pool)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Ok(Transport::Direct(Box::new(Direct { http, uri })))
    }

    /// reqwest's client, which follows the environment's proxy variables.
    pub(crate) fn reqwest(settings: &Settings) -> Result<Transport, ClientError> {
        let http = reqwest::Client::builder()
            .user_agent(settings.user_agent.clone())
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .pool_max_idle_per_host(settings.pool)
            // A redirected POST would lose its body or method; report it instead.
            .redirect(reqwest::redirect::Policy::none())
            .tls_certs_merge(
                bundled_roots().filter_map(|der| reqwest::Certificate::from_der(der.as_ref()).ok()),
            )
            .build()
            .map_err(|e| ClientError::Http(e.to_string()))?;
        Ok(Transport::Reqwest(http))
    }

    /// Whether this transport is hyper's own (for tests and the client's `Debug`).
    pub(crate) fn is_direct(&self) -> bool {
        matches!(self, Transport::Direct(_))
    }

    /// Posts `body` as JSON with the settings' headers; the whole exchange, answer body
    /// included, within the settings' timeout.
    pub(crate) async fn post(&self, settings: &Settings, body: Bytes) -> Result<Answer, Failure> {
        match tokio::time::timeout(settings.timeout, self.exchange(settings, body)).await {
            Ok(answer) => answer,
            Err(_) => Err(Failure::Timeout),
        }
    }

    async fn exchange(&self, settings: &Settings, body: Bytes) -> Result<Answer, Failure> {
        match self {
            Transport::Direct(direct) => {
                let mut request = Request::new(Full::new(body));
                *request.method_mut() = Method::POST;
                *request.uri_mut() = direct.uri.clone();
                let headers = request.headers_mut();
                headers.insert(API_TOKEN, settings.token.clone());
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                headers.insert(USER_AGENT, settings.user_agent.clone());
                let response = direct.http.request(request).await.map_err(|error| {
                    if error.is_connect() {
                        Failure::Connect(causes(&error))
                    } else {
                        Failure::Other(causes(&error))
                    }
                })?;
                let (parts, mut incoming) = response.into_parts();
                let mut kept = Vec::new();
                while kept.len() < MAX_KEPT_BODY {
                    match incoming.frame().await {
                        Some(Ok(frame)) => {
                            if let Some(data) = frame.data_ref() {
                                kept.extend_from_slice(data);
                            }
                        }
                        Some(Err(_)) | None => break,
                    }
                }
                Ok(Answer {
                    status: parts.status.as_u16(),
                    headers: parts.headers,
                    body: kept,
                })
            }
            Transport::Reqwest(http) => {
                let sent = http
                    .post(settings.event_url.clone())
                    .header(API_TOKEN, settings.token.clone())
                    .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                    .body(body)
                    .send()
                    .await;
                let mut response = match sent {
                    Ok(response) => response,
                    // The URL is the client's own and known; leave it out of every message.
                    Err(error) if error.is_timeout() => return Err(Failure::Timeout),
                    Err(error) if error.is_connect() => {
                        return Err(Failure::Connect(causes(&error.without_url())));
                    }
                    Err(error) => return Err(Failure::Other(causes(&error.without_url()))),
                };
                let status = response.status().as_u16();
                let headers = std::mem::take(response.headers_mut());
                let mut kept = Vec::new();
                while kept.len() < MAX_KEPT_BODY {
                    match response.chunk().await {
                        Ok(Some(chunk)) => kept.extend_from_slice(&chunk),
                        Ok(None) | Err(_) => break,
                    }
                }
                Ok(Answer {
                    status,
                    headers,
                    body: kept,
                })
            }
        }
    }
}

/// The error's causes, each after `": "` (the error's own text is the caller's to say).
fn causes(error: &dyn std::error::Error) -> String {
    let mut text = String::new();
    let mut cause = error.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Mozilla's CA roots, bundled, trusted beside the system's: TLS to Pointillist works in
/// an image without a CA store, and a CA the system trusts (a TLS-inspecting proxy's,
/// or one named by `SSL_CERT_FILE`) is trusted too.
fn bundled_roots() -> impl Iterator<Item = &'static rustls::pki_types::CertificateDer<'static>> {
    webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter()
}

/// rustls trusting the bundled roots and the system's (the connector adds ALPN), built
/// once a process: every delivery thread's client shares it, and reading the system's
/// store is what takes time.
fn tls_config() -> Result<rustls::ClientConfig, ClientError> {
    static CONFIG: OnceLock<Result<rustls::ClientConfig, String>> = OnceLock::new();
    CONFIG
        .get_or_init(build_tls_config)
        .clone()
        .map_err(ClientError::Http)
}

fn build_tls_config() -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for der in bundled_roots() {
        // A root rustls cannot use is left out, as reqwest leaves it out.
        let _ = roots.add(der.clone());
    }
    // A system store that cannot be read (none in a minimal image) leaves the bundled
    // roots; certificates it holds that rustls cannot use are left out.
    let system = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(system.certs);
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

impl Failure {
    /// The reason a transient outcome gives for it.
    pub(crate) fn reason(&self, timeout: Duration) -> String {
        match self {
            Failure::Timeout => format!("no answer from pointillist within {timeout:?}"),
            Failure::Connect(causes) => format!("could not connect to pointillist{causes}"),
            Failure::Other(causes) => format!("request to pointillist failed{causes}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    /// Settings for posting to `url` (the mock's token) in a test.
    fn test_settings(url: &Url) -> Settings {
        Settings {
            event_url: url.clone(),
            token: HeaderValue::from_static("t0ken"),
            user_agent: HeaderValue::from_static("stipple/test"),
            timeout: Duration::from_secs(10),
            pool: 2,
        }
    }

    #[test]
    fn reqwest_carries_proxied_requests_and_credentials_hyper_the_rest() {
        let plain: Url = "https://stream.pointillist.com/event".parse().unwrap();
        assert!(!needs_reqwest(&plain, env(&[])));
        assert!(!needs_reqwest(
            &plain,
            env(&[("NO_PROXY", "*"), ("HTTPS_PROXY", " ")])
        ));
        for name in PROXY_VARIABLES {
            let vars: &'static [(&'static str, &'static str)] =
                Box::leak(vec![(name, "http://proxy:3128")].into_boxed_slice());
            assert!(needs_reqwest(&plain, env(vars)), "{name}");
        }
        let user: Url = "https://me@stream.pointillist.com/event".parse().unwrap();
        assert!(needs_reqwest(&user, env(&[])));
        let password: Url = "https://:pw@stream.pointillist.com/event".parse().unwrap();
        assert!(needs_reqwest(&password, env(&[])));
    }

    #[tokio::test]
    async fn both_transports_post_the_same_request() {
        let mock = stipple_mock::MockServer::start(
            "127.0.0.1:0".parse().unwrap(),
            stipple_mock::MockConfig::new("t0ken"),
        )
        .unwrap();
        let url: Url = format!("{}/event", mock.url()).parse().unwrap();
        let settings = test_settings(&url);
        let body = Bytes::from_static(
            br#"{"eventSource":"segment","eventType":"identify","eventTime":"2026-11-28T12:00:00.123Z","actors":{"customer":{"userId":"u-1"}}}"#,
        );
        let direct = Transport::direct(&settings).unwrap();
        assert!(direct.is_direct());
        let proxied = Transport::reqwest(&settings).unwrap();
        assert!(!proxied.is_direct());
        for transport in [direct, proxied] {
            for _ in 0..2 {
                let answer = transport.post(&settings, body.clone()).await.unwrap();
                assert_eq!(
                    answer.status,
                    200,
                    "{}",
                    String::from_utf8_lossy(&answer.body)
                );
            }
        }
        assert_eq!(mock.events().len(), 4);
    }

    #[tokio::test]
    async fn a_refused_connection_reads_as_one_line_with_its_cause() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url: Url = format!("http://{}/event", closed.local_addr().unwrap())
            .parse()
            .unwrap();
        drop(closed);
        let settings = test_settings(&url);
        for transport in [
            Transport::direct(&settings).unwrap(),
            Transport::reqwest(&settings).unwrap(),
        ] {
            let failure = transport
                .post(&settings, Bytes::from_static(b"{}"))
                .await
                .unwrap_err();
            let reason = failure.reason(settings.timeout);
            assert!(
                reason.starts_with("could not connect to pointillist: ")
                    && reason.contains("refused")
                    && !reason.contains(&url.port().unwrap().to_string()),
                "{reason}"
            );
        }
    }

    #[test]
    fn the_tls_settings_build_with_the_bundled_roots() {
        let config = tls_config().expect("tls config");
        assert!(
            config.alpn_protocols.is_empty(),
            "ALPN is set by the connector"
        );
    }
}
