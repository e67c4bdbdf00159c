//! The client against real sockets: the mock for the contract and its faults, and tiny
//! axum handlers for the answers the mock does not give.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use bytes::Bytes;
use secrecy::SecretString;
use stipple_core::PointillistEvent;
use stipple_mock::{Faults, MockConfig, MockServer};
use stipple_pointillist::{Client, ClientConfig, ClientError, MAX_KEPT_BODY, Outcome};
use tokio::sync::{Mutex, watch};
use url::Url;

const TOKEN: &str = "s3cret-t0ken-value";

/// The event every test sends, as JSON: what must reach Pointillist, field for field.
const EVENT: &str = r#"{
    "eventSource": "segment",
    "eventType": "Order Completed",
    "eventTime": "2026-11-28T12:00:00.123Z",
    "actors": { "customer": { "userId": "u-1", "anonymousId": "a-1" } },
    "labels": { "messageId": "m-1", "currency": "EUR" },
    "numbers": { "total": 42.5 }
}"#;

fn event() -> PointillistEvent {
    serde_json::from_str(EVENT).expect("a valid event")
}

/// [`EVENT`] as a JSON value, to compare what was sent with (not the serialiser's output).
fn event_value() -> serde_json::Value {
    serde_json::from_str(EVENT).expect("valid JSON")
}

fn config(endpoint: &str) -> ClientConfig {
    ClientConfig::new(endpoint.parse().expect("a URL"), SecretString::from(TOKEN))
}

fn client(endpoint: &str) -> Client {
    Client::new(config(endpoint)).expect("a client")
}

fn mock(faults: Faults) -> MockServer {
    let addr = "127.0.0.1:0".parse().expect("an address");
    MockServer::start(
        addr,
        MockConfig {
            faults,
            ..MockConfig::new(TOKEN)
        },
    )
    .expect("the mock starts")
}

/// Serves `router` on a free port until the test's runtime ends.
async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free port");
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

#[tokio::test]
async fn an_event_is_delivered_to_the_mock_exactly_as_serialised() {
    let mock = mock(Faults::default());
    let client = client(&mock.url());
    assert_eq!(
        client.send(&event()).await,
        Outcome::Delivered { status: 200 }
    );
    assert_eq!(mock.events(), vec![event_value()]);
    mock.shutdown().await.unwrap();
}

#[tokio::test]
async fn each_status_lands_in_its_class() {
    async fn answer(Path(status): Path<u16>) -> impl IntoResponse {
        let status = StatusCode::from_u16(status).unwrap();
        (status, format!("status {}", status.as_u16()))
    }
    let addr = serve(Router::new().route("/{status}/event", post(answer))).await;
    let check = async |status: u16, expected: Outcome| {
        let client = client(&format!("http://{addr}/{status}"));
        assert_eq!(client.send(&event()).await, expected, "{status}");
    };
    for status in [200, 201, 202, 204] {
        check(status, Outcome::Delivered { status }).await;
    }
    for status in [401, 403] {
        check(status, Outcome::Credentials { status }).await;
    }
    for status in [400, 404, 409, 413, 422] {
        let body = format!("status {status}");
        check(status, Outcome::Rejected { status, body }).await;
    }
    for status in [408, 429, 500, 502, 503, 504, 301, 307] {
        let outcome = client(&format!("http://{addr}/{status}"))
            .send(&event())
            .await;
        let Outcome::Transient {
            status: got,
            reason,
            retry_after,
        } = outcome
        else {
            panic!("{status} must be transient, got {outcome:?}");
        };
        assert_eq!(got, Some(status));
        assert!(reason.contains(&status.to_string()), "{reason}");
        assert!(reason.contains(&format!("status {status}")), "{reason}");
        assert_eq!(retry_after, None);
    }
}

#[tokio::test]
async fn a_rejection_keeps_at_most_4_kib_of_the_body() {
    let addr = serve(Router::new().route(
        "/event",
        post(|| async { (StatusCode::UNPROCESSABLE_ENTITY, "x".repeat(100_000)) }),
    ))
    .await;
    let outcome = client(&format!("http://{addr}")).send(&event()).await;
    let Outcome::Rejected { status, body } = outcome else {
        panic!("422 is a rejection, got {outcome:?}");
    };
    assert_eq!(status, 422);
    assert_eq!(body.len(), MAX_KEPT_BODY);
}

#[tokio::test]
async fn retry_after_is_read_as_seconds_or_as_an_http_date() {
    async fn answer(Path(form): Path<String>) -> impl IntoResponse {
        let value = match form.as_str() {
            "seconds" => "7".to_owned(),
            "future" => httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120)),
            "past" => "Sat, 28 Nov 2020 12:00:00 GMT".to_owned(),
            _ => "whenever".to_owned(),
        };
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, value)],
        )
    }
    let addr = serve(Router::new().route("/{form}/event", post(answer))).await;
    let retry_after = async |form: &str| {
        let outcome = client(&format!("http://{addr}/{form}"))
            .send(&event())
            .await;
        assert!(outcome.is_transient(), "{outcome:?}");
        outcome.retry_after()
    };
    assert_eq!(retry_after("seconds").await, Some(Duration::from_secs(7)));
    let future = retry_after("future").await.expect("a date in the future");
    // Dates have whole seconds, so up to a second (plus the request's time) is lost.
    assert!(
        future > Duration::from_secs(100) && future <= Duration::from_secs(120),
        "{future:?}"
    );
    assert_eq!(retry_after("past").await, Some(Duration::ZERO));
    assert_eq!(retry_after("garbage").await, None);
}

#[tokio::test]
async fn mock_faults_come_out_as_the_contract_says() {
    let mock = mock(Faults::default());
    let client = client(&mock.url());
    let check = async |faults: Faults, what: &dyn Fn(&Outcome) -> bool| {
        mock.set_faults(faults);
        let outcome = client.send(&event()).await;
        assert!(what(&outcome), "{outcome:?}");
    };
    check(
        Faults {
            error_rate: 1.0,
            ..Faults::default()
        },
        &|o| o.is_transient() && matches!(o.status(), Some(500 | 502 | 503)),
    )
    .await;
    check(
        Faults {
            throttle_rate: 1.0,
            retry_after_secs: 7,
            ..Faults::default()
        },
        &|o| o.status() == Some(429) && o.retry_after() == Some(Duration::from_secs(7)),
    )
    .await;
    check(
        Faults {
            drop_rate: 1.0,
            ..Faults::default()
        },
        &|o| o.is_transient() && o.status().is_none(),
    )
    .await;
    check(
        Faults {
            unauthorized_for: Some(Duration::from_secs(3600)),
            ..Faults::default()
        },
        &|o| *o == Outcome::Credentials { status: 401 },
    )
    .await;
    check(Faults::default(), &Outcome::is_delivered).await;
    let stats = mock.stats();
    assert_eq!(
        (
            stats.errors,
            stats.throttled,
            stats.dropped,
            stats.unauthorized,
            stats.accepted
        ),
        (1, 1, 1, 1, 1)
    );
}

#[tokio::test]
async fn a_wrong_token_is_a_credentials_problem_and_a_bad_body_a_rejection() {
    let mock = mock(Faults::default());
    let wrong = Client::new(ClientConfig::new(
        mock.url().parse().unwrap(),
        SecretString::from("not-the-token"),
    ))
    .unwrap();
    assert_eq!(
        wrong.send(&event()).await,
        Outcome::Credentials { status: 401 }
    );

    let outcome = client(&mock.url())
        .send_body(Bytes::from_static(b"{}"))
        .await;
    let Outcome::Rejected { status, body } = outcome else {
        panic!("an empty object is a rejection, got {outcome:?}");
    };
    assert_eq!(status, 400);
    assert!(body.contains("missing field"), "{body}");
}

#[tokio::test]
async fn connection_refused_is_transient() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let outcome = client(&format!("http://{addr}")).send(&event()).await;
    let Outcome::Transient { status, reason, .. } = outcome else {
        panic!("connection refused is transient, got {outcome:?}");
    };
    assert_eq!(status, None);
    assert!(reason.contains("could not connect"), "{reason}");
}

#[tokio::test]
async fn a_name_that_does_not_resolve_is_transient() {
    let mut config = config("http://stipple-test.invalid");
    config.timeout = Duration::from_secs(5);
    let outcome = Client::new(config).unwrap().send(&event()).await;
    assert!(outcome.is_transient(), "{outcome:?}");
    assert_eq!(outcome.status(), None);
}

#[tokio::test]
async fn no_answer_within_the_timeout_is_transient() {
    let addr = serve(Router::new().route(
        "/event",
        post(|| async { std::future::pending::<StatusCode>().await }),
    ))
    .await;
    let mut config = config(&format!("http://{addr}"));
    config.timeout = Duration::from_millis(200);
    let outcome = Client::new(config).unwrap().send(&event()).await;
    let Outcome::Transient { status, reason, .. } = outcome else {
        panic!("a timeout is transient, got {outcome:?}");
    };
    assert_eq!(status, None);
    assert!(
        reason.contains("no answer from pointillist within 200ms"),
        "{reason}"
    );
}

#[derive(Clone)]
struct Gate {
    in_flight: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    open: watch::Sender<bool>,
}

async fn held_until_open(State(gate): State<Gate>) -> StatusCode {
    let now = gate.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    gate.most.fetch_max(now, Ordering::SeqCst);
    let mut open = gate.open.subscribe();
    let _ = open.wait_for(|open| *open).await;
    gate.in_flight.fetch_sub(1, Ordering::SeqCst);
    StatusCode::OK
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_is_limited_across_clones() {
    const LIMIT: usize = 3;
    let gate = Gate {
        in_flight: Arc::default(),
        most: Arc::default(),
        open: watch::Sender::new(false),
    };
    let addr = serve(
        Router::new()
            .route("/event", post(held_until_open))
            .with_state(gate.clone()),
    )
    .await;
    let mut config = config(&format!("http://{addr}"));
    config.concurrency = LIMIT;
    let client = Client::new(config).unwrap();
    let mut sends = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let client = client.clone();
        sends.spawn(async move { client.send(&event()).await });
    }
    // Wait (boundedly) until the limit is reached, then give a fourth request every
    // chance to slip through before checking that none did.
    for _ in 0..1_000 {
        if gate.in_flight.load(Ordering::SeqCst) == LIMIT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(gate.in_flight.load(Ordering::SeqCst), LIMIT);
    gate.open.send_replace(true);
    while let Some(outcome) = sends.join_next().await {
        assert!(outcome.unwrap().is_delivered());
    }
    assert_eq!(gate.most.load(Ordering::SeqCst), LIMIT);
}

#[tokio::test]
async fn the_headers_and_body_are_sent_exactly() {
    type Seen = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;
    async fn capture(State(seen): State<Seen>, headers: HeaderMap, body: Bytes) -> StatusCode {
        seen.lock().await.push((headers, body));
        StatusCode::OK
    }
    let seen = Seen::default();
    let addr = serve(
        Router::new()
            .route("/prefix/event", post(capture))
            .with_state(Arc::clone(&seen)),
    )
    .await;
    let endpoint = format!("http://{addr}/prefix");
    assert!(client(&endpoint).send(&event()).await.is_delivered());
    let mut custom = config(&endpoint);
    custom.user_agent = "stipple-test/9".to_owned();
    assert!(
        Client::new(custom)
            .unwrap()
            .send(&event())
            .await
            .is_delivered()
    );

    let seen = seen.lock().await;
    let expected_agents = [
        concat!("stipple/", env!("CARGO_PKG_VERSION")),
        "stipple-test/9",
    ];
    assert_eq!(seen.len(), 2);
    for ((headers, body), agent) in seen.iter().zip(expected_agents) {
        let all = |name: &str| -> Vec<&[u8]> {
            headers.get_all(name).iter().map(|v| v.as_bytes()).collect()
        };
        assert_eq!(all("apitoken"), [TOKEN.as_bytes()]);
        assert_eq!(all("content-type"), [b"application/json".as_slice()]);
        assert_eq!(all("user-agent"), [agent.as_bytes()]);
        let sent: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(sent, event_value());
    }
}

#[test]
fn the_token_never_shows_in_debug_output_or_errors() {
    let config = config("https://stream.pointillist.com");
    assert!(!format!("{config:?}").contains(TOKEN));
    let client = Client::new(config.clone()).unwrap();
    let shown = format!("{client:?}");
    assert!(!shown.contains(TOKEN), "{shown}");
    assert!(
        shown.contains("https://stream.pointillist.com/event"),
        "{shown}"
    );
    assert_eq!(
        client.event_url().as_str(),
        "https://stream.pointillist.com/event"
    );

    for bad in [
        format!("{TOKEN}\n"),
        format!(" {TOKEN}"),
        format!("{TOKEN}\u{7f}"),
    ] {
        let config = ClientConfig::new(config.endpoint.clone(), SecretString::from(bad));
        let error = Client::new(config).unwrap_err();
        assert!(matches!(error, ClientError::InvalidToken));
        assert!(!error.to_string().contains(TOKEN));
        assert!(!format!("{error:?}").contains(TOKEN));
    }
}

#[test]
fn bad_settings_are_refused() {
    let check = |config: ClientConfig, expected: &dyn Fn(&ClientError) -> bool| {
        let error = Client::new(config).unwrap_err();
        assert!(expected(&error), "{error:?}");
        let text = error.to_string();
        assert_eq!(text, text.trim_end_matches('.'));
        assert!(text.starts_with(char::is_lowercase), "{text}");
    };
    let base = config("https://stream.pointillist.com");
    check(
        ClientConfig {
            endpoint: Url::parse("ftp://x").unwrap(),
            ..base.clone()
        },
        &|e| matches!(e, ClientError::InvalidEndpoint(_)),
    );
    check(
        ClientConfig {
            api_token: SecretString::from(""),
            ..base.clone()
        },
        &|e| matches!(e, ClientError::EmptyToken),
    );
    check(
        ClientConfig {
            concurrency: 0,
            ..base.clone()
        },
        &|e| matches!(e, ClientError::ZeroConcurrency),
    );
    check(
        ClientConfig {
            timeout: Duration::ZERO,
            ..base.clone()
        },
        &|e| matches!(e, ClientError::ZeroTimeout),
    );
    check(
        ClientConfig {
            user_agent: "bad\nagent".to_owned(),
            ..base
        },
        &|e| matches!(e, ClientError::InvalidUserAgent(_)),
    );
}
