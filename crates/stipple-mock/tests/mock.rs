//! The mock seen from outside, through a real HTTP client: the contract checks, the
//! token, every fault, the control routes and the two ways to run it.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use stipple_mock::{Faults, MockConfig, MockServer, MockStats, Refusal, serve};

const TOKEN: &str = "test-token";

fn start(config: MockConfig) -> MockServer {
    let addr = "127.0.0.1:0".parse().expect("a socket address");
    MockServer::start(addr, config).expect("the mock starts")
}

fn valid_event() -> Value {
    json!({
        "eventSource": "segment",
        "eventType": "Order Completed",
        "eventTime": "2026-11-28T12:00:00.123Z",
        "actors": { "customer": { "userId": "u-1", "anonymousId": "a-1" } },
        "labels": { "messageId": "m-1", "currency": "EUR" },
        "numbers": { "total": 42.5 }
    })
}

/// Posts raw bytes to `/event` with the right token and content type.
async fn post(mock: &MockServer, body: &str) -> (StatusCode, Value) {
    post_with(mock, body, Some(TOKEN), Some("application/json")).await
}

async fn post_with(
    mock: &MockServer,
    body: &str,
    token: Option<&str>,
    content_type: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("{}/event", mock.url()))
        .body(body.to_owned());
    if let Some(token) = token {
        request = request.header("apiToken", token);
    }
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    let response = request.send().await.expect("the mock answers");
    let status = response.status();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// The event with `field` replaced (or removed, when `value` is `None`).
fn with(field: &str, value: Option<Value>) -> String {
    let mut event = valid_event();
    let map = event.as_object_mut().expect("an object");
    match value {
        Some(value) => map.insert(field.to_owned(), value),
        None => map.remove(field),
    };
    event.to_string()
}

#[tokio::test]
async fn contract_violations_are_answered_400_with_the_reason() {
    let mock = start(MockConfig::new(TOKEN));
    async fn check(mock: &MockServer, body: String, expected: &str) {
        let (status, answer) = post(mock, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let reason = answer["error"].as_str().unwrap_or_default();
        assert!(
            reason.contains(expected),
            "{body}: {reason:?} lacks {expected:?}"
        );
    }
    let cases: Vec<(String, &str)> = vec![
        ("not json".into(), "body is not valid JSON"),
        ("[]".into(), "body must be a JSON object, found an array"),
        (
            with("location", Some(json!({"city": "Oslo"}))),
            "unknown field `location`",
        ),
        (
            with("labels", Some(Value::Null)),
            "`labels` must not be null",
        ),
        (
            with("numbers", Some(Value::Null)),
            "`numbers` must not be null",
        ),
        (with("eventSource", None), "missing field `eventSource`"),
        (
            with("eventSource", Some(json!(5))),
            "`eventSource` must be a string, found a number",
        ),
        (
            with("eventSource", Some(json!(""))),
            "`eventSource` must not be empty",
        ),
        (with("eventType", None), "missing field `eventType`"),
        (
            with("eventType", Some(json!(""))),
            "`eventType` must not be empty",
        ),
        (
            with("eventType", Some(json!(["a"]))),
            "`eventType` must be a string",
        ),
        (with("eventTime", None), "missing field `eventTime`"),
        (
            with("eventTime", Some(json!(1_700_000_000))),
            "`eventTime` must be a string",
        ),
        (
            with("eventTime", Some(json!("2026-11-28T12:00:00Z"))),
            "YYYY-MM-DDTHH:MM:SS.mmmZ",
        ),
        (
            with("eventTime", Some(json!("2026-11-28T13:00:00.123+01:00"))),
            "YYYY-MM-DDTHH:MM:SS.mmmZ",
        ),
        (
            with("eventTime", Some(json!("2026-02-30T12:00:00.000Z"))),
            "not a valid date",
        ),
        (with("actors", None), "missing field `actors`"),
        (
            with("actors", Some(json!({}))),
            "`actors` must not be empty",
        ),
        (
            with("actors", Some(json!([]))),
            "`actors` must be an object",
        ),
        (
            with("actors", Some(json!({"customer": {}}))),
            "`actors.customer` must not be empty",
        ),
        (
            with("actors", Some(json!({"customer": "u-1"}))),
            "`actors.customer` must be an object",
        ),
        (
            with("actors", Some(json!({"customer": {"userId": 1}}))),
            "`actors.customer.userId` must be a string, found a number",
        ),
        (
            with("actors", Some(json!({"customer": {"userId": null}}))),
            "`actors.customer.userId` must be a string, found null",
        ),
        (
            with("actors", Some(json!({"customer": {"userId": ""}}))),
            "`actors.customer.userId` must not be empty",
        ),
        (
            with(
                "actors",
                Some(json!({"customer": {"userId": "u"}, "": {"userId": "u"}})),
            ),
            "empty actor type",
        ),
        (
            with("actors", Some(json!({"account": {"groupId": "g-1"}}))),
            "`actors` must hold the primary actor `customer`",
        ),
        (
            with("labels", Some(json!({}))),
            "`labels` must not be empty",
        ),
        (
            with("labels", Some(json!([]))),
            "`labels` must be an object",
        ),
        (
            with("labels", Some(json!({"plan": 1}))),
            "`labels.plan` must be a string, found a number",
        ),
        (
            with("labels", Some(json!({"plan": null}))),
            "`labels.plan` must be a string, found null",
        ),
        (
            with("labels", Some(json!({"tags": ["a"]}))),
            "`labels.tags` must be a string, found an array",
        ),
        (
            with("numbers", Some(json!({}))),
            "`numbers` must not be empty",
        ),
        (
            with("numbers", Some(json!({"total": "42"}))),
            "`numbers.total` must be a number, found a string",
        ),
        (
            with("numbers", Some(json!({"total": true}))),
            "`numbers.total` must be a number, found a boolean",
        ),
    ];
    for (body, expected) in cases {
        check(&mock, body, expected).await;
    }
    let stats = mock.stats();
    assert_eq!(stats.accepted, 0);
    assert_eq!(stats.rejected, stats.requests);
    assert!(mock.events().is_empty());
}

#[tokio::test]
async fn the_primary_actor_type_is_the_one_configured() {
    let mock = start(MockConfig {
        actor_type: "person".into(),
        ..MockConfig::new(TOKEN)
    });
    let mut event = valid_event();
    let (status, answer) = post(&mock, &event.to_string()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        answer["error"],
        "`actors` must hold the primary actor `person`"
    );
    event["actors"] = json!({ "person": { "userId": "u-1" } });
    let (status, _) = post(&mock, &event.to_string()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(mock.events(), vec![event]);
}

#[tokio::test]
async fn an_empty_primary_actor_type_is_refused() {
    let refused = MockServer::start(
        "127.0.0.1:0".parse().unwrap(),
        MockConfig {
            actor_type: String::new(),
            ..MockConfig::new(TOKEN)
        },
    );
    let error = refused.expect_err("an empty actor type is refused");
    assert!(error.to_string().contains("actor type"), "{error}");
}

#[tokio::test]
async fn the_content_type_must_be_json() {
    let mock = start(MockConfig::new(TOKEN));
    let body = valid_event().to_string();
    for (content_type, ok) in [
        (Some("application/json"), true),
        (Some("application/json; charset=utf-8"), true),
        (Some("Application/JSON"), true),
        (Some("text/plain"), false),
        (Some("application/json; charset=latin1"), false),
        (Some("application/x-www-form-urlencoded"), false),
        (None, false),
    ] {
        let (status, answer) = post_with(&mock, &body, Some(TOKEN), content_type).await;
        if ok {
            assert_eq!(status, StatusCode::OK, "{content_type:?}");
        } else {
            assert_eq!(status, StatusCode::BAD_REQUEST, "{content_type:?}");
            assert!(answer["error"].as_str().unwrap().contains("Content-Type"));
        }
    }
}

#[tokio::test]
async fn valid_events_are_accepted_and_recorded_in_order() {
    let mock = start(MockConfig::new(TOKEN));
    let mut sent = Vec::new();
    for i in 0..5 {
        let mut event = valid_event();
        event["eventType"] = json!(format!("event {i}"));
        sent.push(event);
    }
    // Optional fields may be left out, and secondary actors are fine.
    sent.push(json!({
        "eventSource": "segment", "eventType": "group",
        "eventTime": "2024-02-29T23:59:59.999Z",
        "actors": { "customer": { "userId": "u-1" }, "account": { "groupId": "g-1" } }
    }));
    for event in &sent {
        let (status, answer) = post(&mock, &event.to_string()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(answer, json!({ "ok": true }));
    }
    assert_eq!(mock.events(), sent);
    let stats = mock.stats();
    assert_eq!((stats.requests, stats.accepted, stats.recorded), (6, 6, 6));
    mock.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_missing_or_wrong_token_is_answered_401() {
    let mock = start(MockConfig::new(TOKEN));
    let body = valid_event().to_string();
    let json = Some("application/json");
    let (status, answer) = post_with(&mock, &body, None, json).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer["error"], "missing apiToken header");
    let (status, answer) = post_with(&mock, &body, Some("nope"), json).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer["error"], "wrong apiToken");
    // The token is checked before the body: a bad body with a bad token is still 401.
    let (status, _) = post_with(&mock, "{}", Some("nope"), json).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(mock.stats().unauthorized, 3);
    assert!(!answer.to_string().contains(TOKEN));
}

#[tokio::test]
async fn error_rate_one_answers_every_request_5xx_and_zero_none() {
    let mock = start(MockConfig {
        faults: Faults {
            error_rate: 1.0,
            ..Faults::default()
        },
        ..MockConfig::new(TOKEN)
    });
    let body = valid_event().to_string();
    for _ in 0..20 {
        let (status, _) = post(&mock, &body).await;
        assert!(
            [500, 502, 503].contains(&status.as_u16()),
            "unexpected {status}"
        );
    }
    mock.set_faults(Faults::default());
    for _ in 0..20 {
        assert_eq!(post(&mock, &body).await.0, StatusCode::OK);
    }
    let stats = mock.stats();
    assert_eq!((stats.errors, stats.accepted), (20, 20));
}

#[tokio::test]
async fn error_rate_is_a_share_of_requests() {
    let mock = start(MockConfig {
        faults: Faults {
            error_rate: 0.5,
            ..Faults::default()
        },
        record: false,
        ..MockConfig::new(TOKEN)
    });
    let body = valid_event().to_string();
    for _ in 0..200 {
        post(&mock, &body).await;
    }
    let stats = mock.stats();
    assert_eq!(stats.errors + stats.accepted, 200);
    // Binomial(200, 0.5): outside 40..=160 is about 8 standard deviations away.
    assert!((40..=160).contains(&stats.errors), "{stats:?}");
}

#[tokio::test]
async fn throttling_answers_429_with_retry_after() {
    let mock = start(MockConfig::new(TOKEN));
    mock.set_faults(Faults {
        throttle_rate: 1.0,
        retry_after_secs: 7,
        ..Faults::default()
    });
    let response = reqwest::Client::new()
        .post(format!("{}/event", mock.url()))
        .header("apiToken", TOKEN)
        .json(&valid_event())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "7");
    assert_eq!(mock.stats().throttled, 1);
    // Each refusal is logged with the event it carried, also over HTTP.
    let refusals: Vec<Refusal> = reqwest::get(format!("{}/mock/refusals", mock.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(refusals, mock.refusals());
    assert_eq!(refusals.len(), 1);
    assert_eq!(refusals[0].status, 429);
    assert_eq!(
        refusals[0].message_id.as_deref(),
        valid_event()["labels"]["messageId"].as_str()
    );
    mock.reset();
    assert!(mock.refusals().is_empty());
}

#[tokio::test]
async fn dropped_requests_get_a_connection_error_not_a_status() {
    let mock = start(MockConfig::new(TOKEN));
    mock.set_faults(Faults {
        drop_rate: 1.0,
        ..Faults::default()
    });
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let result = client
            .post(format!("{}/event", mock.url()))
            .header("apiToken", TOKEN)
            .json(&valid_event())
            .send()
            .await;
        let error = result.expect_err("a dropped request must not get an answer");
        assert!(error.status().is_none(), "{error:?}");
    }
    // The server itself carries on.
    mock.set_faults(Faults::default());
    assert_eq!(
        post(&mock, &valid_event().to_string()).await.0,
        StatusCode::OK
    );
    let stats = mock.stats();
    assert_eq!((stats.dropped, stats.accepted), (3, 1));
}

#[tokio::test]
async fn latency_delays_the_answer() {
    let mock = start(MockConfig::new(TOKEN));
    mock.set_faults(Faults {
        latency: Duration::from_secs(30),
        ..Faults::default()
    });
    let result = reqwest::Client::new()
        .post(format!("{}/event", mock.url()))
        .header("apiToken", TOKEN)
        .json(&valid_event())
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(result.expect_err("the answer comes too late").is_timeout());
    mock.set_faults(Faults::default());
    assert_eq!(
        post(&mock, &valid_event().to_string()).await.0,
        StatusCode::OK
    );
    // Not shut down gracefully: the delayed handler would hold it for the full latency.
}

#[tokio::test]
async fn counts_the_most_requests_held_at_once() {
    let mock = start(MockConfig::new(TOKEN));
    mock.set_faults(Faults {
        latency: Duration::from_millis(300),
        ..Faults::default()
    });
    let body = valid_event().to_string();
    let one = || post(&mock, &body);
    let answers = tokio::join!(one(), one(), one(), one(), one());
    assert_eq!(
        [
            answers.0.0,
            answers.1.0,
            answers.2.0,
            answers.3.0,
            answers.4.0
        ],
        [StatusCode::OK; 5]
    );
    assert_eq!(
        mock.stats().peak_in_flight,
        5,
        "all five waited out the latency together"
    );
    post(&mock, &body).await;
    assert_eq!(mock.stats().peak_in_flight, 5, "a peak is kept");
    mock.reset();
    mock.set_faults(Faults::default());
    post(&mock, &body).await;
    assert_eq!(mock.stats().peak_in_flight, 1, "a reset starts again");
}

#[tokio::test]
async fn the_unauthorized_period_ends_by_itself() {
    let mock = start(MockConfig::new(TOKEN));
    mock.set_faults(Faults {
        unauthorized_for: Some(Duration::from_millis(300)),
        ..Faults::default()
    });
    let body = valid_event().to_string();
    let (status, answer) = post(&mock, &body).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(answer["error"].as_str().unwrap().contains("injected"));
    let mut attempts = 0;
    loop {
        attempts += 1;
        assert!(attempts < 400, "still unauthorized after 20s");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (status, _) = post(&mock, &body).await;
        if status == StatusCode::OK {
            break;
        }
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(mock.faults().unauthorized_for, None);
    assert_eq!(mock.stats().accepted, 1);
}

#[tokio::test]
async fn the_control_routes_drive_a_mock_over_http() {
    let mock = start(MockConfig::new(TOKEN));
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", mock.url());

    let faults: Faults = http
        .get(url("/mock/faults"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(faults, Faults::default());

    let put = http
        .put(url("/mock/faults"))
        .json(&json!({ "error_rate": 1.0, "latency": "1ms", "unauthorized_for": "1h" }))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    let faults: Faults = http
        .get(url("/mock/faults"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(faults.error_rate, 1.0);
    assert_eq!(faults.latency, Duration::from_millis(1));
    let left = faults.unauthorized_for.unwrap();
    assert!(left <= Duration::from_secs(3600) && left > Duration::from_secs(3000));
    assert!((500..=503).contains(&post(&mock, &valid_event().to_string()).await.0.as_u16()));

    for (bad, expected) in [
        (json!({ "error_rate": 2.0 }), "error_rate"),
        (json!({ "drop_rate": -0.1 }), "drop_rate"),
        (json!({ "latency": "soon" }), "not a valid faults object"),
        (json!({ "errors": 1 }), "unknown field"),
    ] {
        let response = http
            .put(url("/mock/faults"))
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
        let answer: Value = response.json().await.unwrap();
        assert!(
            answer["error"].as_str().unwrap().contains(expected),
            "{answer}"
        );
    }
    // A refused PUT leaves the faults alone.
    assert_eq!(mock.faults().error_rate, 1.0);

    let put = http
        .put(url("/mock/faults"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    let event = valid_event();
    assert_eq!(post(&mock, &event.to_string()).await.0, StatusCode::OK);
    assert_eq!(post(&mock, "{}").await.0, StatusCode::BAD_REQUEST);

    let events: Vec<Value> = http
        .get(url("/mock/events"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(events, vec![event]);
    let stats: MockStats = http
        .get(url("/mock/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        stats,
        MockStats {
            requests: 3,
            accepted: 1,
            recorded: 1,
            rejected: 1,
            errors: 1,
            peak_in_flight: 1,
            ..MockStats::default()
        }
    );

    let deleted = http.delete(url("/mock/events")).send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let events: Vec<Value> = http
        .get(url("/mock/events"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(events.is_empty());
    assert_eq!(mock.stats(), MockStats::default());
    mock.shutdown().await.unwrap();
}

#[tokio::test]
async fn without_recording_events_are_only_counted() {
    let mock = start(MockConfig {
        record: false,
        ..MockConfig::new(TOKEN)
    });
    for _ in 0..5 {
        assert_eq!(
            post(&mock, &valid_event().to_string()).await.0,
            StatusCode::OK
        );
    }
    assert!(mock.events().is_empty());
    let stats = mock.stats();
    assert_eq!((stats.accepted, stats.recorded), (5, 0));
}

#[tokio::test]
async fn serve_runs_in_the_foreground_until_told_to_stop() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, MockConfig::new(TOKEN), async move {
        let _ = stopped.await;
    }));
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/event"))
        .header("apiToken", TOKEN)
        .json(&valid_event())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_empty_token_is_refused() {
    let error = MockServer::start("127.0.0.1:0".parse().unwrap(), MockConfig::new("")).unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
}

#[test]
fn start_needs_a_runtime() {
    let error =
        MockServer::start("127.0.0.1:0".parse().unwrap(), MockConfig::new(TOKEN)).unwrap_err();
    assert!(error.to_string().contains("tokio runtime"));
}

#[tokio::test]
async fn debug_output_does_not_show_the_token() {
    let config = MockConfig::new("s3cret-value");
    assert!(!format!("{config:?}").contains("s3cret-value"));
    let mock = start(config);
    assert!(!format!("{mock:?}").contains("s3cret-value"));
}

#[tokio::test]
async fn url_is_reachable_for_an_unspecified_bind_address() {
    let mock = MockServer::start("0.0.0.0:0".parse().unwrap(), MockConfig::new(TOKEN)).unwrap();
    assert!(mock.url().starts_with("http://127.0.0.1:"));
    assert_eq!(
        post(&mock, &valid_event().to_string()).await.0,
        StatusCode::OK
    );
}
