//! The HTTP side of the mock: `POST /event`, the `/mock/*` control routes, and the
//! ways to run them ([`MockServer`] in the background, [`serve`] in the foreground).

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::Rng;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::debug;

use crate::contract::check_event;
use crate::faults::{Faults, Injected};
use crate::listener::{Connection, DroppingListener};
use crate::state::{Counted, MockConfig, MockStats, Refusal, Shared};

/// The header that carries the API token.
const API_TOKEN: &str = "apitoken";

/// A mock Pointillist server running in the background on the current tokio runtime.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// use stipple_mock::{MockConfig, MockServer};
///
/// let mock = MockServer::start("127.0.0.1:0".parse().unwrap(), MockConfig::new("t0ken"))?;
/// let event = serde_json::json!({
///     "eventSource": "segment", "eventType": "identify",
///     "eventTime": "2026-11-28T12:00:00.123Z",
///     "actors": { "customer": { "userId": "u-1" } }
/// });
/// let answer = reqwest::Client::new()
///     .post(format!("{}/event", mock.url()))
///     .header("apiToken", "t0ken")
///     .json(&event)
///     .send()
///     .await
///     .unwrap();
/// assert_eq!(answer.status(), 200);
/// assert_eq!(mock.events(), vec![event]);
/// mock.shutdown().await
/// # }
/// ```
///
/// Dropping it also stops it, without waiting. `Debug` shows neither the token nor the
/// events.
pub struct MockServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<io::Result<()>>,
}

impl std::fmt::Debug for MockServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockServer")
            .field("addr", &self.addr)
            .field("stats", &self.shared.stats())
            .finish_non_exhaustive()
    }
}

impl MockServer {
    /// Binds `addr` (use port 0 for any free port) and serves on the current tokio
    /// runtime. Fails outside a runtime, when the address cannot be bound, or when the
    /// token or the actor type is empty.
    pub fn start(addr: SocketAddr, config: MockConfig) -> io::Result<MockServer> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            io::Error::other("MockServer::start must be called inside a tokio runtime")
        })?;
        let shared = Arc::new(Shared::new(config)?);
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let listener = {
            let _entered = runtime.enter();
            TcpListener::from_std(listener)?
        };
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = runtime.spawn(run(listener, Arc::clone(&shared), async move {
            // A send or the sender being dropped both mean stop.
            let _ = stopped.await;
        }));
        Ok(MockServer {
            addr,
            shared,
            stop,
            task,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL, `http://<addr>`, ready to be a Pointillist endpoint. An unspecified
    /// bind address (`0.0.0.0`, `::`) is given as loopback, which is reachable.
    pub fn url(&self) -> String {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}", SocketAddr::new(ip, self.addr.port()))
    }

    /// The accepted events, in arrival order (empty when not recording).
    pub fn events(&self) -> Vec<Value> {
        self.shared.events()
    }

    /// Forgets the recorded events and zeroes the counters; the faults stay.
    pub fn reset(&self) {
        self.shared.reset();
    }

    /// Replaces the faults; an `unauthorized_for` window starts now. Rates outside
    /// 0..=1 are taken as 0 or 1 (`PUT /mock/faults` refuses them instead).
    pub fn set_faults(&self, faults: Faults) {
        self.shared.set_faults(faults);
    }

    /// The faults in force; `unauthorized_for` is what is left of the window.
    pub fn faults(&self) -> Faults {
        self.shared.faults()
    }

    /// The counters.
    pub fn stats(&self) -> MockStats {
        self.shared.stats()
    }

    /// The requests injected faults refused since the start or the last reset, in order
    /// (also `GET /mock/refusals`).
    pub fn refusals(&self) -> Vec<Refusal> {
        self.shared.refusals()
    }

    /// Stops accepting, lets requests in flight finish, and waits for the server to end.
    pub async fn shutdown(self) -> io::Result<()> {
        // The server may have ended already; then there is nobody to tell.
        let _ = self.stop.send(());
        self.task
            .await
            .map_err(|e| io::Error::other(format!("the mock server task failed: {e}")))?
    }
}

/// Serves the mock on `listener` until `shutdown` completes, then lets requests in flight
/// finish. For running the mock in the foreground, as `stipple mock` does.
pub async fn serve(
    listener: TcpListener,
    config: MockConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let shared = Arc::new(Shared::new(config)?);
    run(listener, shared, shutdown).await
}

async fn run(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let app = router(shared).into_make_service_with_connect_info::<Connection>();
    axum::serve(DroppingListener::new(listener), app)
        .with_graceful_shutdown(shutdown)
        .await
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/event", post(post_event))
        .route("/mock/events", get(get_events).delete(delete_events))
        .route("/mock/faults", get(get_faults).put(put_faults))
        .route("/mock/stats", get(get_stats))
        .route("/mock/refusals", get(get_refusals))
        .with_state(shared)
}

/// Every answer `POST /event` can give, mapped to its status in one place.
#[derive(Debug)]
enum EventAnswer {
    Accepted,
    /// Reset the connection; the response below is never seen.
    Dropped,
    ServerError(StatusCode),
    Throttled {
        retry_after_secs: u64,
    },
    Unauthorized(&'static str),
    BadRequest(String),
    TooLarge(String),
}

impl EventAnswer {
    fn counted(&self) -> Counted {
        match self {
            EventAnswer::Accepted => Counted::Accepted,
            EventAnswer::Dropped => Counted::Dropped,
            EventAnswer::ServerError(_) => Counted::Error,
            EventAnswer::Throttled { .. } => Counted::Throttled,
            EventAnswer::Unauthorized(_) => Counted::Unauthorized,
            EventAnswer::BadRequest(_) | EventAnswer::TooLarge(_) => Counted::Rejected,
        }
    }
}

fn error_body(status: StatusCode, reason: &str) -> Response {
    (status, Json(json!({ "error": reason }))).into_response()
}

impl IntoResponse for EventAnswer {
    fn into_response(self) -> Response {
        match self {
            EventAnswer::Accepted => Json(json!({ "ok": true })).into_response(),
            EventAnswer::Dropped => error_body(
                StatusCode::INTERNAL_SERVER_ERROR,
                "injected fault: connection dropped",
            ),
            EventAnswer::ServerError(status) => error_body(status, "injected fault: server error"),
            EventAnswer::Throttled { retry_after_secs } => {
                let mut response =
                    error_body(StatusCode::TOO_MANY_REQUESTS, "injected fault: throttled");
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
                response
            }
            EventAnswer::Unauthorized(reason) => error_body(StatusCode::UNAUTHORIZED, reason),
            EventAnswer::BadRequest(reason) => error_body(StatusCode::BAD_REQUEST, &reason),
            EventAnswer::TooLarge(reason) => error_body(StatusCode::PAYLOAD_TOO_LARGE, &reason),
        }
    }
}

/// `POST /event`. Faults come first, as a real outage answers before it validates
/// anything: latency, then drop / 5xx / 429, then the `unauthorized_for` window; only
/// then the token (401), the content type, and the body (400).
async fn post_event(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(connection): ConnectInfo<Connection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> EventAnswer {
    let _in_flight = shared.count_request();
    let latency = shared.faults_now().0.latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    // Cheap (reference counted), for the refusals' log.
    let raw = body.as_ref().ok().cloned();
    let answer = answer_event(&shared, &headers, body);
    shared.count(answer.counted());
    let injected = match &answer {
        EventAnswer::Dropped => Some(0),
        EventAnswer::ServerError(status) => Some(status.as_u16()),
        EventAnswer::Throttled { .. } => Some(StatusCode::TOO_MANY_REQUESTS.as_u16()),
        EventAnswer::Unauthorized(reason) if *reason == UNAUTHORIZED_WINDOW => {
            Some(StatusCode::UNAUTHORIZED.as_u16())
        }
        _ => None,
    };
    if let Some(status) = injected {
        let message_id = raw
            .and_then(|raw| serde_json::from_slice::<Value>(&raw).ok())
            .and_then(|event| event["labels"]["messageId"].as_str().map(str::to_owned));
        shared.refused(message_id, status);
    }
    match &answer {
        EventAnswer::Accepted => {}
        EventAnswer::Dropped => connection.drop_without_answer(),
        other => debug!(answer = ?other, "event not accepted"),
    }
    answer
}

/// Why the `unauthorized_for` fault answers 401.
const UNAUTHORIZED_WINDOW: &str = "injected fault: unauthorized for a while";

fn answer_event(
    shared: &Shared,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> EventAnswer {
    let (faults, unauthorized) = shared.faults_now();
    match faults.pick(rand::rng().random::<f64>()) {
        Some(Injected::Drop) => return EventAnswer::Dropped,
        Some(Injected::Error) => {
            const STATUSES: [StatusCode; 3] = [
                StatusCode::INTERNAL_SERVER_ERROR,
                StatusCode::BAD_GATEWAY,
                StatusCode::SERVICE_UNAVAILABLE,
            ];
            let status = STATUSES[rand::rng().random_range(0..STATUSES.len())];
            return EventAnswer::ServerError(status);
        }
        Some(Injected::Throttle) => {
            return EventAnswer::Throttled {
                retry_after_secs: faults.retry_after_secs,
            };
        }
        None => {}
    }
    if unauthorized {
        return EventAnswer::Unauthorized(UNAUTHORIZED_WINDOW);
    }
    if let Err(answer) = check_token(shared.token(), headers) {
        return answer;
    }
    if let Err(reason) = check_content_type(headers) {
        return EventAnswer::BadRequest(reason);
    }
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return EventAnswer::TooLarge(rejection.body_text());
        }
        Err(rejection) => {
            return EventAnswer::BadRequest(format!(
                "could not read the body: {}",
                rejection.body_text()
            ));
        }
    };
    match check_event(&body, shared.actor_type()) {
        Ok(event) => {
            shared.record(event);
            EventAnswer::Accepted
        }
        Err(violation) => EventAnswer::BadRequest(violation.to_string()),
    }
}

fn check_token(token: &str, headers: &HeaderMap) -> Result<(), EventAnswer> {
    let mut sent = headers.get_all(API_TOKEN).iter();
    match (sent.next(), sent.next()) {
        (None, _) => Err(EventAnswer::Unauthorized("missing apiToken header")),
        (Some(_), Some(_)) => Err(EventAnswer::BadRequest(
            "the apiToken header is sent more than once".to_owned(),
        )),
        (Some(value), None) if value.as_bytes() == token.as_bytes() => Ok(()),
        (Some(_), None) => Err(EventAnswer::Unauthorized("wrong apiToken")),
    }
}

/// Exactly one `Content-Type`, `application/json`, optionally with `charset=utf-8`.
fn check_content_type(headers: &HeaderMap) -> Result<(), String> {
    let mut sent = headers.get_all(header::CONTENT_TYPE).iter();
    let value = match (sent.next(), sent.next()) {
        (None, _) => return Err("missing Content-Type header; send application/json".to_owned()),
        (Some(_), Some(_)) => {
            return Err("the Content-Type header is sent more than once".to_owned());
        }
        (Some(value), None) => value,
    };
    let text = value.to_str().unwrap_or_default();
    let mut parts = text.split(';').map(str::trim);
    let essence = parts.next().unwrap_or_default();
    let json = essence.eq_ignore_ascii_case("application/json");
    let parameters_ok = parts.all(|p| p.eq_ignore_ascii_case("charset=utf-8"));
    if json && parameters_ok {
        Ok(())
    } else {
        Err(format!(
            "Content-Type must be application/json, found {:?}",
            String::from_utf8_lossy(value.as_bytes())
        ))
    }
}

async fn get_events(State(shared): State<Arc<Shared>>) -> Json<Vec<Value>> {
    Json(shared.events())
}

async fn delete_events(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.reset();
    StatusCode::NO_CONTENT
}

async fn get_faults(State(shared): State<Arc<Shared>>) -> Json<Faults> {
    Json(shared.faults())
}

async fn put_faults(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let faults: Faults = match serde_json::from_slice(&body) {
        Ok(faults) => faults,
        Err(e) => {
            return error_body(
                StatusCode::BAD_REQUEST,
                &format!("body is not a valid faults object: {e}"),
            );
        }
    };
    if let Err(e) = faults.validate() {
        return error_body(StatusCode::BAD_REQUEST, &e.to_string());
    }
    shared.set_faults(faults);
    Json(shared.faults()).into_response()
}

async fn get_stats(State(shared): State<Arc<Shared>>) -> Json<MockStats> {
    Json(shared.stats())
}

/// `GET /mock/refusals`: the requests injected faults refused since the last reset, in
/// order.
async fn get_refusals(State(shared): State<Arc<Shared>>) -> Json<Vec<Refusal>> {
    Json(shared.refusals())
}
