//! Delivery against the mock Pointillist and a memory store: every outcome class.

#![allow(clippy::unwrap_used, reason = "test helpers fail loudly")]

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use stipple_core::{MapConfig, Mapper};
use stipple_delivery::{Delivery, DeliveryConfig};
use stipple_mock::{Faults, MockConfig, MockServer};
use stipple_pointillist::{Backoff, Client, ClientConfig};
use stipple_store::{Append, DeadLetter, MemoryStore, NewEvent, Store};
use tokio::sync::oneshot;

const TOKEN: &str = "test-token";

fn fast_config() -> DeliveryConfig {
    DeliveryConfig {
        concurrency: 8,
        backoff: Backoff {
            min: Duration::from_millis(10),
            max: Duration::from_millis(50),
            multiplier: 2.0,
        },
        probe_backoff: Backoff {
            min: Duration::from_millis(20),
            max: Duration::from_millis(50),
            multiplier: 2.0,
        },
        idle_poll: Duration::from_millis(10),
        ..DeliveryConfig::default()
    }
}

fn message(i: usize, extra: &str) -> NewEvent {
    let payload = format!(
        r#"{{"type":"track","event":"Order Completed","userId":"u-{i}","messageId":"m-{i}","timestamp":"2026-11-28T12:00:00.000Z","properties":{{"n":{i}}}{extra}}}"#
    );
    NewEvent {
        source: "web".into(),
        message_id: format!("m-{i}"),
        payload: payload.into_bytes(),
    }
}

async fn queue(store: &Arc<dyn Store>, events: Vec<NewEvent>) {
    store
        .append(
            Append {
                events,
                rejected: vec![],
            },
            Duration::from_secs(3600),
        )
        .await
        .unwrap();
}

/// A memory store with `n` track messages queued.
async fn queued(n: usize) -> Arc<dyn Store> {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    queue(&store, (0..n).map(|i| message(i, "")).collect()).await;
    store
}

/// A mock Pointillist that answers every event 429 with this `Retry-After`.
fn throttling(retry_after_secs: u64) -> MockServer {
    mock_with(Faults {
        throttle_rate: 1.0,
        retry_after_secs,
        ..Faults::default()
    })
}

/// Delivers from `store` to `mock` with `retry_horizon` until `n` events are
/// dead-lettered; then stops and answers the dead letters.
async fn dead_lettered_within(
    store: &Arc<dyn Store>,
    mock: &MockServer,
    retry_horizon: Duration,
    n: u64,
) -> Vec<DeadLetter> {
    let config = DeliveryConfig {
        retry_horizon,
        ..fast_config()
    };
    let running = start(store.clone(), &mock.url(), config);
    eventually("they are dead-lettered", async || {
        store.stats().await.unwrap().dead_letters == n
    })
    .await;
    running.stop().await;
    store.dead_letters(10).await.unwrap()
}

/// A mock Pointillist on a free port with these faults.
fn mock_with(faults: Faults) -> MockServer {
    MockServer::start(
        "127.0.0.1:0".parse().unwrap(),
        MockConfig {
            faults,
            ..MockConfig::new(TOKEN)
        },
    )
    .unwrap()
}

struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    delivery: Delivery,
}

impl Running {
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("delivery stops")
            .unwrap();
    }
}

fn start(store: Arc<dyn Store>, endpoint: &str, config: DeliveryConfig) -> Running {
    let client = Client::new(ClientConfig::new(
        url::Url::parse(endpoint).unwrap(),
        SecretString::from(TOKEN),
    ))
    .unwrap();
    let delivery = Delivery::new(store, client, Mapper::new(MapConfig::default()), config);
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(delivery.clone().run(async move {
        let _ = rx.await;
    }));
    Running {
        stop: Some(tx),
        task,
        delivery,
    }
}

/// `n` events queued for a mock that refuses the token for the first 600 ms.
async fn queued_behind_a_refused_token(n: usize) -> (MockServer, Arc<dyn Store>) {
    let mock = mock_with(Faults {
        unauthorized_for: Some(Duration::from_millis(600)),
        ..Faults::default()
    });
    let store = queued(n).await;
    (mock, store)
}

/// The distinct `messageId`s among the events the mock took.
fn distinct_message_ids(events: &[serde_json::Value]) -> usize {
    let mut ids: Vec<_> = events
        .iter()
        .map(|e| e["labels"]["messageId"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    ids.len()
}

/// Polls `condition` every 10 ms for up to 10 s.
async fn eventually(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    for _ in 0..1000 {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test]
async fn delivers_every_event_mapped_and_empties_the_queue() {
    let mock = mock_with(Faults::default());
    let store = queued(50).await;
    let running = start(store.clone(), &mock.url(), fast_config());
    eventually("50 events arrive", async || mock.events().len() >= 50).await;
    eventually("the queue is empty", async || {
        store.stats().await.unwrap().queued == 0
    })
    .await;
    running.stop().await;
    let events = mock.events();
    assert_eq!(events.len(), 50, "no duplicates when nothing failed");
    assert_eq!(distinct_message_ids(&events), 50);
    let first = events
        .iter()
        .find(|e| e["labels"]["messageId"] == "m-7")
        .unwrap();
    assert_eq!(first["eventType"], "Order Completed");
    assert_eq!(first["actors"]["customer"]["userId"], "u-7");
    assert_eq!(first["numbers"]["n"], 7);
}

#[tokio::test]
async fn events_queued_while_delivery_idles_go_out_without_waiting_for_its_poll() {
    let mock = mock_with(Faults::default());
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let config = DeliveryConfig {
        idle_poll: Duration::from_secs(3600),
        ..fast_config()
    };
    let running = start(store.clone(), &mock.url(), config);
    for round in 0..3 {
        // Time for the pipeline to find the queue empty and wait.
        tokio::time::sleep(Duration::from_millis(50)).await;
        queue(
            &store,
            (round * 5..round * 5 + 5).map(|i| message(i, "")).collect(),
        )
        .await;
        eventually(
            "the events arrive, well before the hour's poll",
            async || mock.events().len() == (round + 1) * 5,
        )
        .await;
    }
    running.stop().await;
}

#[tokio::test]
async fn transient_failures_are_retried_until_pointillist_recovers() {
    let faults = Faults {
        error_rate: 1.0,
        ..Faults::default()
    };
    let mock = mock_with(faults);
    let store = queued(10).await;
    // Each event on its own backoff: no pause for an outage here (see the next test).
    let config = DeliveryConfig {
        outage_after: usize::MAX,
        ..fast_config()
    };
    let running = start(store.clone(), &mock.url(), config);
    eventually("every event failed at least twice", async || {
        mock.stats().errors >= 20
    })
    .await;
    assert!(mock.events().is_empty());
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.queued, stats.dead_letters), (10, 0));
    assert!(
        running.delivery.health().status().healthy,
        "5xx below outage_after is no reason to report unhealthy"
    );
    mock.set_faults(Faults::default());
    eventually("all 10 delivered", async || {
        store.stats().await.unwrap().queued == 0
    })
    .await;
    running.stop().await;
    assert_eq!(mock.events().len(), 10);
}

/// `events` queued for a mock failing `error_rate` of its requests with a 5xx, and
/// delivery to it with 4 workers, pausing after `outage_after` failures in a row.
async fn failing_share(
    error_rate: f64,
    events: usize,
    outage_after: usize,
) -> (MockServer, Arc<dyn Store>, Running) {
    let mock = mock_with(Faults {
        error_rate,
        ..Faults::default()
    });
    let store = queued(events).await;
    let config = DeliveryConfig {
        concurrency: 4,
        outage_after,
        ..fast_config()
    };
    let running = start(store.clone(), &mock.url(), config);
    (mock, store, running)
}

#[tokio::test]
async fn an_outage_pauses_delivery_to_probe_and_resumes_when_pointillist_answers() {
    let (mock, store, running) = failing_share(1.0, 200, 8).await;
    let health = running.delivery.health();
    eventually("delivery to pause for the outage", async || {
        !health.status().healthy
    })
    .await;
    let detail = health.status().detail;
    assert!(detail.contains("in a row"), "{detail}");
    // Paused: one probe per 20-50 ms, where 200 events on 10-50 ms backoffs would be
    // several thousand requests a second.
    let before = mock.stats().requests;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = mock.stats().requests - before;
    assert!(during <= 30, "{during} requests in 500 ms while paused");
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.queued, stats.dead_letters), (200, 0));

    mock.set_faults(Faults::default());
    eventually("all 200 delivered", async || {
        store.stats().await.unwrap().queued == 0
    })
    .await;
    assert!(health.status().healthy, "resumed");
    running.stop().await;
    assert_eq!(distinct_message_ids(&mock.events()), 200);
}

#[tokio::test]
async fn a_pause_s_probe_waits_out_the_retry_after_pointillist_gave() {
    // Every answer is 429 with Retry-After: 2 s; four in a row pause delivery.
    let mock = throttling(2);
    let store = queued(20).await;
    let config = DeliveryConfig {
        concurrency: 2,
        outage_after: 4,
        ..fast_config()
    };
    let running = start(store.clone(), &mock.url(), config);
    let health = running.delivery.health();
    eventually("delivery to pause for the outage", async || {
        !health.status().healthy
    })
    .await;
    // The probe backoff alone (20-50 ms) would send 20 or more requests meanwhile. What
    // may arrive: the one request still in flight when the other worker's answer paused
    // delivery (it reaches the mock late when the machine is loaded), and the probe, if
    // this test saw the pause late.
    let before = mock.stats().requests;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let during = mock.stats().requests - before;
    assert!(during <= 2, "{during} requests within the Retry-After");
    mock.set_faults(Faults::default());
    eventually("all 20 delivered", async || {
        store.stats().await.unwrap().queued == 0
    })
    .await;
    running.stop().await;
    assert_eq!(store.stats().await.unwrap().dead_letters, 0);
}

#[tokio::test]
async fn failures_between_deliveries_do_not_pause() {
    // One request in five fails: 20 failures in a row would take a 1 in 10^14 run.
    let (mock, store, running) = failing_share(0.2, 300, 20).await;
    let health = running.delivery.health();
    let mut paused = false;
    eventually("all 300 delivered", async || {
        paused |= !health.status().healthy;
        store.stats().await.unwrap().queued == 0
    })
    .await;
    running.stop().await;
    assert!(mock.stats().errors >= 20, "{:?}", mock.stats());
    assert!(
        !paused,
        "delivery paused though events were delivered in between"
    );
}

#[tokio::test]
async fn throttling_with_retry_after_is_honoured_and_recovers() {
    let mock = throttling(1);
    let store = queued(5).await;
    let running = start(store.clone(), &mock.url(), fast_config());
    eventually("every event was throttled", async || {
        mock.stats().throttled >= 5
    })
    .await;
    // Retry-After: 1 s holds each event back although the backoff alone would allow 50 ms.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        mock.stats().throttled < 10,
        "retried before Retry-After: {:?}",
        mock.stats()
    );
    mock.set_faults(Faults::default());
    eventually("all 5 delivered", async || {
        store.stats().await.unwrap().queued == 0
    })
    .await;
    running.stop().await;
    assert_eq!(mock.events().len(), 5);
}

#[tokio::test]
async fn a_retry_after_past_the_retry_horizon_dead_letters_at_the_horizon() {
    // Pointillist asks for a day; the horizon is half a second: the events are tried once
    // more as the horizon ends and then dead-lettered, not parked for a day.
    let mock = throttling(86_400);
    let store = queued(3).await;
    let dead = dead_lettered_within(&store, &mock, Duration::from_millis(500), 3).await;
    // Each was tried at least twice: once, and again as the horizon ended (more only if
    // a retry came due a hair before it).
    assert!(mock.stats().throttled >= 6, "{:?}", mock.stats());
    assert!(
        dead.iter()
            .all(|d| d.reason.status == Some(429) && d.reason.detail.contains("retry horizon")),
        "{dead:?}"
    );
}

#[tokio::test]
async fn a_refused_token_pauses_delivery_keeps_events_and_resumes_by_itself() {
    let (mock, store) = queued_behind_a_refused_token(20).await;
    let running = start(store.clone(), &mock.url(), fast_config());
    let health = running.delivery.health();
    eventually("delivery pauses", async || !health.status().healthy).await;
    assert!(
        health.status().detail.contains("401"),
        "{}",
        health.status().detail
    );
    let stats = store.stats().await.unwrap();
    assert_eq!(
        (stats.queued, stats.dead_letters),
        (20, 0),
        "nothing is dropped while paused"
    );
    eventually("all 20 delivered", async || {
        store.stats().await.unwrap().queued == 0
    })
    .await;
    assert!(health.status().healthy, "delivery resumed");
    // Paused, one probe at a time (50 ms apart at least): the 8 requests in flight when
    // the first 401 came, and about a dozen probes in 600 ms; each of 20 events retried
    // on its own 10-50 ms backoff would be hundreds.
    let refused = mock.stats().unauthorized;
    assert!(refused <= 40, "{refused} requests refused while paused");
    running.stop().await;
    assert_eq!(store.stats().await.unwrap().dead_letters, 0);
    assert_eq!(mock.events().len(), 20);
}

/// Serves `app`, a stand-in for Pointillist, on a free port; its URL.
async fn stand_in(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// A Pointillist stand-in that answers every request `down.0` (401 refuses the token,
/// 503 is an outage) for `down.1`, then answers the requests that follow with `then` in
/// order, then takes everything; with the events it took.
async fn scripted(
    (down, down_for): (u16, Duration),
    then: &[u16],
) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    let started = std::time::Instant::now();
    let script = Arc::new(std::sync::Mutex::new(then.to_vec()));
    let taken = Arc::new(std::sync::Mutex::new(Vec::new()));
    let took = taken.clone();
    let app = axum::Router::new().route(
        "/event",
        axum::routing::post(move |body: String| {
            let (script, took) = (script.clone(), took.clone());
            async move {
                let status = if started.elapsed() < down_for {
                    down
                } else {
                    let mut script = script.lock().unwrap();
                    if script.is_empty() {
                        200
                    } else {
                        script.remove(0)
                    }
                };
                if status == 200 {
                    took.lock().unwrap().push(body);
                }
                axum::http::StatusCode::from_u16(status).unwrap()
            }
        }),
    );
    (stand_in(app).await, taken)
}

#[tokio::test]
async fn time_paused_for_a_refused_token_does_not_count_toward_the_retry_horizon() {
    paused_time_does_not_count_toward_the_retry_horizon(401).await;
}

#[tokio::test]
async fn time_paused_for_an_outage_does_not_count_toward_the_retry_horizon() {
    paused_time_does_not_count_toward_the_retry_horizon(503).await;
}

async fn paused_time_does_not_count_toward_the_retry_horizon(down: u16) {
    // The token is refused, or every request fails, for longer than the horizon. Then
    // Pointillist fails a few requests: right as delivery resumes (200, 503, 503), or
    // while the pause's probe is still going (503, 503). Either way the events are
    // retried, not dead-lettered as if their horizon had run out while nothing could be
    // sent.
    for then in [&[200, 503, 503][..], &[503, 503]] {
        let (url, taken) = scripted((down, Duration::from_millis(400)), then).await;
        let store = queued(3).await;
        let config = DeliveryConfig {
            retry_horizon: Duration::from_millis(200),
            // Three failures in a row pause delivery, well within the horizon.
            outage_after: 3,
            ..fast_config()
        };
        let running = start(store.clone(), &url, config);
        eventually("all 3 delivered", async || {
            let stats = store.stats().await.unwrap();
            stats.queued == 0 || stats.dead_letters > 0
        })
        .await;
        running.stop().await;
        let dead = store.dead_letters(10).await.unwrap();
        assert!(dead.is_empty(), "after {then:?}: {dead:?}");
        assert_eq!(taken.lock().unwrap().len(), 3, "after {then:?}");
    }
}

/// A Pointillist stand-in that answers `status` with `answer` to every event whose body
/// holds `marker` and takes the others; with the events it took.
async fn refusing(
    marker: &'static str,
    status: axum::http::StatusCode,
    answer: &'static str,
) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    let taken = Arc::new(std::sync::Mutex::new(Vec::new()));
    let took = taken.clone();
    let app = axum::Router::new().route(
        "/event",
        axum::routing::post(move |body: String| {
            let took = took.clone();
            async move {
                if body.contains(marker) {
                    return (status, answer);
                }
                took.lock().unwrap().push(body);
                (axum::http::StatusCode::OK, "{}")
            }
        }),
    );
    (stand_in(app).await, taken)
}

/// One event Pointillist always fails, retried alone on a quiet queue, is no outage:
/// counted as one failing event however often it is retried, it never pauses delivery
/// (paused, it would be the only event probed, its horizon stopped, and every event
/// after it would wait for ever). It is dead-lettered at its horizon; the others go out.
#[tokio::test]
async fn one_event_that_always_fails_pauses_nothing() {
    // Every event whose `messageId` label starts with `bad` fails.
    let (url, taken) = refusing(
        r#""messageId":"bad"#,
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "",
    )
    .await;
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let mut bad = message(0, "");
    bad.message_id = "bad-0".into();
    bad.payload = String::from_utf8(bad.payload)
        .unwrap()
        .replace(r#""messageId":"m-0""#, r#""messageId":"bad-0""#)
        .into_bytes();
    queue(&store, vec![bad]).await;
    let config = DeliveryConfig {
        concurrency: 2,
        outage_after: 4,
        retry_horizon: Duration::from_millis(800),
        backoff: Backoff {
            min: Duration::from_millis(5),
            max: Duration::from_millis(10),
            multiplier: 2.0,
        },
        ..fast_config()
    };
    let running = start(store.clone(), &url, config);
    let health = running.delivery.health();
    // Dozens of retries of the one event meanwhile.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(health.status().healthy, "{}", health.status().detail);
    queue(&store, (1..6).map(|i| message(i, "")).collect()).await;
    eventually("the 5 good events are delivered", async || {
        taken.lock().unwrap().len() == 5
    })
    .await;
    eventually(
        "the failing one is dead-lettered at its horizon",
        async || store.stats().await.unwrap().dead_letters == 1,
    )
    .await;
    running.stop().await;
    assert_eq!(store.dead_letters(10).await.unwrap()[0].message_id, "bad-0");
}

#[tokio::test]
async fn a_rejected_event_alone_is_dead_lettered() {
    // A Pointillist stand-in that refuses one event with 422 and takes the rest.
    let (url, taken) = refusing(
        "poison",
        axum::http::StatusCode::UNPROCESSABLE_ENTITY,
        "eventType not allowed",
    )
    .await;
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let mut events: Vec<_> = (0..9).map(|i| message(i, "")).collect();
    events.push(message(99, r#","context":{"traits":{"tag":"poison"}}"#));
    queue(&store, events).await;
    let running = start(store.clone(), &url, fast_config());
    eventually("the queue drains", async || {
        store.stats().await.unwrap().queued == 0
    })
    .await;
    running.stop().await;
    let accepted = taken.lock().unwrap().len();
    assert_eq!(accepted, 9);
    let dead = store.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message_id, "m-99");
    assert_eq!(dead[0].reason.status, Some(422));
    assert!(dead[0].reason.detail.contains("eventType not allowed"));
}

#[tokio::test]
async fn transient_failures_past_the_retry_horizon_are_dead_lettered() {
    let faults = Faults {
        error_rate: 1.0,
        ..Faults::default()
    };
    let mock = mock_with(faults);
    let store = queued(3).await;
    let dead = dead_lettered_within(&store, &mock, Duration::ZERO, 3).await;
    assert!(
        dead.iter()
            .all(|d| d.reason.detail.contains("retry horizon")),
        "{dead:?}"
    );
}

#[tokio::test]
async fn messages_routed_away_from_pointillist_are_acknowledged_unsent() {
    let mock = mock_with(Faults::default());
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    queue(
        &store,
        vec![
            message(1, r#","integrations":{"Pointillist":false}"#),
            message(2, ""),
        ],
    )
    .await;
    let running = start(store.clone(), &mock.url(), fast_config());
    eventually("the queue drains", async || {
        store.stats().await.unwrap().queued == 0
    })
    .await;
    running.stop().await;
    let events = mock.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["labels"]["messageId"], "m-2");
}

#[tokio::test]
async fn an_unmappable_stored_event_alone_is_dead_lettered() {
    // Stored text that is not a message (a damaged row): mapping fails for it only.
    let mock = mock_with(Faults::default());
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let mut events: Vec<_> = (0..5).map(|i| message(i, "")).collect();
    events.insert(
        2,
        NewEvent {
            source: "web".into(),
            message_id: "m-broken".into(),
            payload: br#"{"type":"track","userId":"#.to_vec(),
        },
    );
    queue(&store, events).await;
    let running = start(store.clone(), &mock.url(), fast_config());
    eventually("the queue drains", async || {
        store.stats().await.unwrap().queued == 0
    })
    .await;
    running.stop().await;
    assert_eq!(distinct_message_ids(&mock.events()), 5);
    let dead = store.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].message_id, "m-broken");
    assert_eq!(dead[0].reason.status, None);
    assert!(!dead[0].reason.detail.is_empty());
}

#[tokio::test]
async fn events_leased_while_stopping_are_handed_back() {
    let mock = mock_with(Faults::default());
    let store = Arc::new(stipple_store::testing::TestStore {
        lease_gate: Some(stipple_store::testing::Gate::default()),
        ..Default::default()
    });
    let shared: Arc<dyn Store> = store.clone();
    queue(&shared, (0..10).map(|i| message(i, "")).collect()).await;
    let config = DeliveryConfig {
        lease_for: Duration::from_secs(3600),
        ..fast_config()
    };
    let running = start(shared.clone(), &mock.url(), config);
    // The first lease has taken every event and is held before the leaser gets them.
    let gate = store.lease_gate.as_ref().unwrap();
    tokio::time::timeout(Duration::from_secs(10), gate.entered.notified())
        .await
        .expect("the leaser leases");
    let stopping = tokio::spawn(running.stop());
    // Shutdown closes the workers' buffer meanwhile; then the lease returns.
    tokio::time::sleep(Duration::from_millis(100)).await;
    gate.release.notify_one();
    stopping.await.unwrap();
    assert!(mock.events().is_empty(), "nothing was sent");
    // Released, not left leased for an hour: all ten are due again at once.
    let due = store
        .inner
        .lease(100, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(due.len(), 10, "events left leased after shutdown");
}

/// A client of the Pointillist at `url` with `concurrency` requests in flight at most.
fn client_of(url: &str, concurrency: usize) -> Client {
    Client::new(ClientConfig {
        concurrency,
        ..ClientConfig::new(url::Url::parse(url).unwrap(), SecretString::from(TOKEN))
    })
    .unwrap()
}

/// Pipelines running each on a thread of its own, until stopped.
struct Shards {
    stop: tokio::sync::watch::Sender<bool>,
    stopped: Vec<oneshot::Receiver<()>>,
}

impl Shards {
    fn spawn(shards: impl IntoIterator<Item = Delivery>) -> Self {
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let stopped = shards
            .into_iter()
            .map(|shard| {
                let mut stopping = stopping.clone();
                shard
                    .spawn("shard", async move {
                        let _ = stopping.wait_for(|stop| *stop).await;
                    })
                    .unwrap()
            })
            .collect();
        Self { stop, stopped }
    }

    async fn stop(self) {
        self.stop.send(true).unwrap();
        for stopped in self.stopped {
            stopped.await.unwrap();
        }
    }
}

#[tokio::test]
async fn shards_on_their_own_threads_share_the_queue_and_the_pause() {
    let (mock, store) = queued_behind_a_refused_token(300).await;
    let client = |concurrency| client_of(&mock.url(), concurrency);
    let first = Delivery::new(
        store.clone(),
        client(4),
        Mapper::new(MapConfig::default()),
        DeliveryConfig {
            concurrency: 4,
            ..fast_config()
        },
    );
    let shards = [
        first.clone(),
        first.shard(client(3)),
        first.shard(client(1)),
    ];
    let health = first.health();
    let shards = Shards::spawn(shards);

    eventually("delivery pauses", async || !health.status().healthy).await;
    assert_eq!(
        store.stats().await.unwrap().queued,
        300,
        "nothing is dropped while paused"
    );
    eventually("all 300 delivered", async || {
        store.stats().await.unwrap().queued == 0
    })
    .await;
    assert!(health.status().healthy, "delivery resumed");
    shards.stop().await;
    let events = mock.events();
    assert_eq!(distinct_message_ids(&events), 300, "every event arrives");
    assert_eq!(
        events.len(),
        300,
        "and only once: shards never share an event"
    );
    assert_eq!(store.stats().await.unwrap().dead_letters, 0);
}

/// A slow Pointillist stand-in: it answers each request `latency` after it came, and
/// notes when each came.
struct Slow {
    url: String,
    arrivals: Arc<parking_lot::Mutex<Vec<tokio::time::Instant>>>,
}

impl Slow {
    async fn start(latency: Duration) -> Self {
        let arrivals = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let noted = arrivals.clone();
        let app = axum::Router::new().route(
            "/event",
            axum::routing::post(move || {
                noted.lock().push(tokio::time::Instant::now());
                async move {
                    tokio::time::sleep(latency).await;
                    axum::Json(serde_json::json!({"ok": true}))
                }
            }),
        );
        let url = stand_in(app).await;
        Self { url, arrivals }
    }

    /// How many requests came in each wave since the last call, waves being apart by
    /// more than `gap`.
    fn waves(&self, gap: Duration) -> Vec<usize> {
        let mut arrivals = std::mem::take(&mut *self.arrivals.lock());
        arrivals.sort();
        let mut waves: Vec<usize> = vec![];
        let mut last = None;
        for at in arrivals {
            match (last, waves.last_mut()) {
                (Some(last), Some(wave)) if at - last <= gap => *wave += 1,
                _ => waves.push(1),
            }
            last = Some(at);
        }
        waves
    }
}

#[tokio::test]
async fn a_burst_smaller_than_a_lease_is_shared_out_between_shards() {
    // Two shards of 4 slots and a Pointillist answering in 400 ms: each burst should go
    // out in waves of 8 requests, the whole concurrency, whichever shard leased first.
    let slow = Slow::start(Duration::from_millis(400)).await;
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let client = || client_of(&slow.url, 4);
    let first = Delivery::new(
        store.clone(),
        client(),
        Mapper::new(MapConfig::default()),
        DeliveryConfig {
            concurrency: 4,
            ..fast_config()
        },
    );
    let shards = Shards::spawn([first.clone(), first.shard(client())]);
    // Both shards idle, then bursts arrive: as many events as both have slots, and more,
    // but far fewer than the 256 a lease may take.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut sent = 0;
    for burst in [8, 16, 40] {
        queue(
            &store,
            (sent..sent + burst).map(|i| message(i, "")).collect(),
        )
        .await;
        sent += burst;
        eventually("the burst is delivered", async || {
            store.stats().await.unwrap().queued == 0
        })
        .await;
        assert_eq!(
            slow.waves(Duration::from_millis(200)),
            vec![8; burst / 8],
            "a burst of {burst}: 8 requests in flight at a time"
        );
    }
    shards.stop().await;
}
