//! Stipple's HTTP ingress: Segment's Tracking API, so that every Segment client library
//! works by changing only its host (`shared/spec/segment.md`).
//!
//! [`router`] serves `POST /v1/{identify,track,page,screen,group,alias,batch,import}`,
//! the browser's short forms `/v1/{i,t,p,s,g,a,b}` (each also with a trailing slash),
//! `GET /healthz`, `GET /readyz` and `GET /metrics`. Collaborators come in through
//! [`IngressState`]: the [`stipple_store::Store`], a [`Clock`], a [`DestinationHealth`]
//! and an optional Prometheus handle. [`serve`] serves an [`Ingress`]: the router with its
//! state, whose Tracking API requests without an `Origin` header skip the router's lookup
//! and layers on the way to the same handler (`front.rs`).
//!
//! Architecture invariants:
//! - A tracking request is answered 200 only after [`stipple_store::Store::append`]
//!   returned Ok for everything it carried; anything worth retrying is a 503 with
//!   `Retry-After`, never a 4xx (Segment's clients drop data on 4xx).
//! - Refused messages from an authenticated source are kept as
//!   [`stipple_store::RejectedInput`], never dropped; whole-request errors (no key,
//!   wrong content type, too large, not JSON) are not stored.
//! - Write keys are compared in constant time and never logged or stored.
//!
//! Where the spec is silent, the ingress decides:
//! - A missing `Content-Type` is read as JSON; other types than `application/json` and
//!   `text/plain` (any parameters) are 415, and so are encodings other than gzip.
//! - When the `Authorization: Basic` header carries a key it alone decides (an unknown
//!   header key is 401 even if the body's `writeKey` is known); a Basic password is
//!   ignored; other schemes are ignored and the body's `writeKey` is used.
//! - On a single-call endpoint a missing `type` is the path's; a message that names
//!   another of the six types is taken as that type (Segment's Webhooks destination
//!   posts every call to one URL).
//! - Single-call endpoints take one message and batch endpoints one envelope; the other
//!   shape is 400 `wrong_shape`.
//! - A batch whose items are all refused still answers 200, listing them.
//! - A batch's top-level `context` fills only the context keys an item lacks: an item's
//!   own `null` (`"traits": null`) is its own key, and wins.
//! - `writeKey` is removed from stored messages and rejected inputs.
//! - Limits answer 400 as Segment does (not 413), counted after decompression.
//! - CORS applies to requests with an `Origin` header (browsers send it on every
//!   cross-origin request and preflight); answers to others carry no CORS headers.
//! - A request reserves the bytes of its body (gzipped, then what they inflate to, if more) from
//!   [`IngressConfig::max_in_flight_bytes`] as they arrive, until it is answered, so that
//!   budget bounds the memory held by bodies; without room it is 503 with `Retry-After`.
//!   A client that stalls holds only what it sent, for at most `body_timeout`.
//! - [`serve`] bounds connections: a header-read timeout (idle keep-alive connections
//!   close after it too) and a limit on open connections. Connections are served on
//!   threads of their own, one single-threaded runtime each (see `threads.rs`).
//!
//! What is counted, and under which names, is in [`telemetry`].
#![forbid(unsafe_code)]

mod auth;
mod body;
mod capture;
mod config;
mod cors;
mod error;
mod front;
mod header_timeout;
mod ops;
mod redact;
mod server;
mod state;
pub mod telemetry;
mod threads;
mod wake_hold;

use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::extract::State;
use axum::http::{Method, StatusCode, header};
use axum::routing::{get, post};
use tower_http::cors::{AllowHeaders, CorsLayer};

pub use config::{ConfigError, IngressConfig, Source};
pub use error::IngressError;
pub use server::{ServerConfig, serve};
pub use state::{AlwaysHealthy, DestinationHealth, DestinationStatus, IngressState};
/// The clock the ingress stamps `receivedAt` with: the store's, so both agree.
pub use stipple_store::{Clock, ManualClock, SystemClock};

/// The ingress ready to [`serve`]: the [`router`] of a state, and that state, whose
/// Tracking API requests without an `Origin` header each connection serves without the
/// router's lookup and layers (the same handler, the same answers; `front.rs`).
#[derive(Debug, Clone)]
pub struct Ingress {
    router: Router,
    state: IngressState,
}

impl Ingress {
    /// The ingress of `state`.
    pub fn new(state: IngressState) -> Self {
        Self {
            router: router(state.clone()),
            state,
        }
    }

    /// Its routes, to serve or to nest in another server (all of it is there).
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    fn into_front(self) -> front::Front {
        front::Front::new(self.router, self.state)
    }
}

/// Only the operator's routes (`/healthz`, `/readyz`, `/metrics`), to serve on an address
/// of their own: probes and scrapes there never wait behind clients at the connection
/// limit, and the address need not face the clients' network.
pub fn ops_router(state: IngressState) -> Router {
    telemetry::describe_metrics();
    ops_routes(Router::new())
        .fallback(|| async { IngressError::NoSuchEndpoint })
        .with_state(state)
}

/// `routes` with the operator's routes added (`/healthz`, `/readyz`, `/metrics`).
fn ops_routes(routes: Router<IngressState>) -> Router<IngressState> {
    routes
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
}

/// The ingress's HTTP routes, CORS included, ready to serve.
pub fn router(state: IngressState) -> Router {
    telemetry::describe_metrics();
    let mut api = Router::new();
    for (name, endpoint) in capture::ENDPOINTS {
        let handler = post(move |State(state): State<IngressState>, request: Request| {
            capture::answer(state, endpoint, request)
        })
        .fallback(
            |State(state): State<IngressState>, method: Method| async move {
                state
                    .shared
                    .counters
                    .request(StatusCode::METHOD_NOT_ALLOWED);
                IngressError::MethodNotAllowed(method)
            },
        );
        api = api
            .route(&format!("/v1/{name}"), handler.clone())
            .route(&format!("/v1/{name}/"), handler);
    }
    let cors = CorsLayer::new()
        .allow_origin(state.shared.cors_origin.clone())
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        // Whatever headers the page asks for: analytics-next lets a site add its own
        // (`deliveryStrategy.config.headers`). Safe to mirror: credentials are never
        // allowed, and the write key, not the origin, is what admits a request.
        .allow_headers(AllowHeaders::mirror_request())
        .expose_headers([header::RETRY_AFTER])
        .max_age(Duration::from_secs(24 * 60 * 60));
    ops_routes(api)
        .fallback(|| async { IngressError::NoSuchEndpoint })
        .with_state(state)
        .layer(cors::BrowserCorsLayer::new(cors))
}
