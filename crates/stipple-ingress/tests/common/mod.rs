//! Shared test helpers: a router over a memory store with a fixed clock, a request
//! builder, and `check(request, status, body_subset)`.
// Each test binary uses some of these helpers, and none is reachable from outside.
#![allow(dead_code, unreachable_pub)]
// Helpers, not `#[test]`s, so clippy's allow-unwrap-in-tests does not reach them; a panic
// here is a failed test.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::Value;
use stipple_ingress::{Ingress, IngressConfig, IngressState, ManualClock, Source};
#[allow(
    unused_imports,
    reason = "some test binaries hold appends at a gate, others do not"
)]
pub use stipple_store::testing::{Gate, TestStore};
use stipple_store::{Store, StoredRejection};
use tower::ServiceExt as _;

/// The ingress clock in every test: 2026-11-28T12:00:00Z.
pub const NOW: &str = "2026-11-28T12:00:00Z";

pub fn now() -> DateTime<Utc> {
    NOW.parse().unwrap()
}

/// Two sources: `web` (key `wk_web`) and `app` (key `wk_app`).
pub fn config() -> IngressConfig {
    IngressConfig {
        sources: vec![Source::new("web", "wk_web"), Source::new("app", "wk_app")],
        ..IngressConfig::default()
    }
}

/// One stored event, read back.
#[derive(Debug, Clone)]
pub struct Stored {
    pub source: String,
    pub message_id: String,
    pub payload: Value,
    /// The payload as stored.
    pub text: String,
}

/// A router over a [`TestStore`] with the fixed clock, and the ingress it is part of.
pub struct Harness {
    pub router: Router,
    pub ingress: Ingress,
    pub store: Arc<TestStore>,
}

impl Harness {
    pub fn new() -> Self {
        Self::with(config(), TestStore::default(), |state| state)
    }

    pub fn with(
        config: IngressConfig,
        store: TestStore,
        customise: impl FnOnce(IngressState) -> IngressState,
    ) -> Self {
        let store = Arc::new(store);
        let state = IngressState::new(config, store.clone())
            .unwrap()
            .with_clock(Arc::new(ManualClock::new(now())));
        let ingress = Ingress::new(customise(state));
        Self {
            router: ingress.router(),
            ingress,
            store,
        }
    }

    /// Everything queued so far, oldest first.
    pub async fn events(&self) -> Vec<Stored> {
        // Leasing takes them out of the queue for a while; release them again.
        let leased = self
            .store
            .inner
            .lease(100_000, Duration::from_secs(60))
            .await
            .unwrap();
        let ids: Vec<_> = leased.iter().map(|l| l.id).collect();
        self.store.inner.release(&ids).await.unwrap();
        leased
            .into_iter()
            .map(|l| Stored {
                source: l.source,
                message_id: l.message_id,
                payload: serde_json::from_slice(&l.payload).unwrap(),
                text: String::from_utf8(l.payload).unwrap(),
            })
            .collect()
    }

    /// The last event queued.
    pub async fn last_event(&self) -> Stored {
        self.events().await.pop().expect("an event was stored")
    }

    pub async fn rejected(&self) -> Vec<StoredRejection> {
        self.store.inner.rejected(100_000).await.unwrap()
    }

    pub async fn send(&self, request: Request<Body>) -> (u16, HeaderMap, Value) {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, headers, body)
    }

    /// Sends `request` and asserts its status and that its JSON body contains `subset`
    /// (`Value::Null`: body not checked).
    pub async fn check(
        &self,
        request: Request<Body>,
        status: u16,
        subset: Value,
    ) -> (HeaderMap, Value) {
        let what = format!("{} {}", request.method(), request.uri());
        let (got_status, headers, body) = self.send(request).await;
        assert_eq!(got_status, status, "{what}: status; body {body}");
        assert!(
            subset.is_null() || contains(&body, &subset),
            "{what}: body {body} does not contain {subset}"
        );
        (headers, body)
    }
}

/// Whether `actual` holds everything in `expected`: objects by subset of keys, arrays
/// element by element with the same length, anything else equal.
pub fn contains(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => e
            .iter()
            .all(|(k, v)| a.get(k).is_some_and(|av| contains(av, v))),
        (Value::Array(a), Value::Array(e)) => {
            a.len() == e.len() && a.iter().zip(e).all(|(x, y)| contains(x, y))
        }
        _ => actual == expected,
    }
}

/// A body that sends `first` and then nothing, for ever: a client stalled mid-upload.
pub fn stalled_body(first: &'static [u8]) -> Body {
    use futures::StreamExt as _;
    let stream =
        futures::stream::once(
            async move { Ok::<_, std::io::Error>(bytes::Bytes::from_static(first)) },
        )
        .chain(futures::stream::pending());
    Body::from_stream(stream)
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

pub fn basic(credentials: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(credentials)
    )
}

/// A request under construction.
#[derive(Debug, Clone)]
pub struct Req {
    method: &'static str,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

pub fn post(path: &str) -> Req {
    Req {
        method: "POST",
        path: path.to_owned(),
        headers: Vec::new(),
        body: Vec::new(),
    }
}

pub fn get(path: &str) -> Req {
    Req {
        method: "GET",
        ..post(path)
    }
}

pub fn options(path: &str) -> Req {
    Req {
        method: "OPTIONS",
        ..post(path)
    }
}

impl Req {
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// `Authorization: Basic base64(credentials)`.
    pub fn basic(self, credentials: &str) -> Self {
        let value = basic(credentials);
        self.header("authorization", &value)
    }

    /// An `application/json` body.
    pub fn json(self, body: Value) -> Self {
        self.header("content-type", "application/json")
            .raw(body.to_string().into_bytes())
    }

    /// A body without a content type.
    pub fn raw(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Gzips the body and says so.
    pub fn gzip(mut self) -> Self {
        self.body = gzip(&self.body);
        self.header("content-encoding", "gzip")
    }

    pub fn build(self) -> Request<Body> {
        let mut builder = Request::builder().method(self.method).uri(&self.path);
        for (name, value) in &self.headers {
            builder = builder.header(name, value);
        }
        builder.body(Body::from(self.body)).unwrap()
    }
}
