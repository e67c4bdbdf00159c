//! The Tracking API over plain HTTP: every endpoint (long, short and with a trailing
//! slash), both ways of authenticating, `text/plain`, gzip, batches with bad items,
//! refusals, CORS, deduplication and routing; then what reached the mock, compared with
//! the mapping table event by event.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::time::Duration;

use base64::Engine as _;
use chrono::{SecondsFormat, TimeDelta, Utc};
use flate2::Compression;
use flate2::write::GzEncoder;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use super::check::Checks;
use super::expect::{Expected, TimeRule, around, parse_time};
use super::harness::{Harness, by_message_id};

/// How the request authenticates.
#[derive(Debug, Clone, Copy)]
enum Auth<'a> {
    /// `Authorization: Basic base64(key + ":")`.
    Basic(&'a str),
    /// `Authorization: Basic base64(key)`, no colon.
    BasicNoColon(&'a str),
    /// No header (the key, if any, is in the body).
    None,
}

/// One request's shape.
#[derive(Debug, Clone, Copy)]
struct Shape<'a> {
    auth: Auth<'a>,
    content_type: &'a str,
    gzip: bool,
    origin: Option<&'a str>,
}

impl<'a> Shape<'a> {
    fn basic(key: &'a str) -> Self {
        Shape {
            auth: Auth::Basic(key),
            content_type: "application/json",
            gzip: false,
            origin: None,
        }
    }

    /// As the browser library sends: `text/plain`, the key in the body, from another origin.
    fn browser() -> Self {
        Shape {
            auth: Auth::None,
            content_type: "text/plain",
            gzip: false,
            origin: Some("http://shop.example"),
        }
    }

    fn describe(&self) -> String {
        let auth = match self.auth {
            Auth::Basic(_) => "basic auth",
            Auth::BasicNoColon(_) => "basic auth without colon",
            Auth::None => "writeKey in body",
        };
        let gzip = if self.gzip { ", gzip" } else { "" };
        format!("{auth}, {}{gzip}", self.content_type)
    }
}

#[derive(Debug)]
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

fn gzip(bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes)?;
    Ok(encoder.finish()?)
}

fn post(h: &Harness, path: &str, shape: Shape<'_>, body: &[u8]) -> anyhow::Result<Answer> {
    let mut request = h
        .http
        .post(h.url(path))
        .header("Content-Type", shape.content_type);
    match shape.auth {
        Auth::Basic(key) => request = request.basic_auth(key, Some("")),
        Auth::BasicNoColon(key) => {
            let encoded = base64::engine::general_purpose::STANDARD.encode(key);
            request = request.header("Authorization", format!("Basic {encoded}"));
        }
        Auth::None => {}
    }
    if let Some(origin) = shape.origin {
        request = request.header("Origin", origin);
    }
    let body = if shape.gzip {
        request = request.header("Content-Encoding", "gzip");
        gzip(body)?
    } else {
        body.to_vec()
    };
    let answer = request.body(body).send()?;
    let status = answer.status().as_u16();
    let headers = answer.headers().clone();
    let text = answer.text()?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// The e2e's own view of what it sent: the expected events, and the messageIds that
/// must never reach Pointillist.
#[derive(Debug, Default)]
struct Ledger {
    expected: Vec<(String, Expected)>,
    absent: Vec<(String, String)>,
}

impl Ledger {
    fn expect(&mut self, case: &str, message: &Value, time: TimeRule) {
        self.expected
            .push((case.to_owned(), Expected::of(message, time)));
    }

    fn absent(&mut self, case: &str, message: &Value) {
        let id = message["messageId"].as_str().unwrap_or_default().to_owned();
        self.absent.push((case.to_owned(), id));
    }
}

/// Checks a 200 `{"success": true}` answer (with `rejected` only if `rejected` is true).
fn success(answer: &Answer, rejected: bool) -> Result<String, String> {
    let listed = answer.body.get("rejected").is_some();
    if answer.status == 200 && answer.body["success"] == true && listed == rejected {
        Ok(format!("200 {}", answer.body))
    } else {
        Err(format!("answered {} {}", answer.status, answer.body))
    }
}

/// Checks a refusal: `status` with a JSON body `{"success": false, "code": ...}`.
fn refused(answer: &Answer, status: u16) -> Result<String, String> {
    if answer.status == status && answer.body["success"] == false && answer.body["code"].is_string()
    {
        Ok(format!("{} {}", answer.status, answer.body["code"]))
    } else {
        Err(format!(
            "answered {} {} (expected {status} with a JSON error body)",
            answer.status, answer.body
        ))
    }
}

fn now_text() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub(crate) fn run(h: &mut Harness, checks: &mut Checks) -> anyhow::Result<()> {
    h.fresh()?;
    let key = h.write_key.clone();
    let r = h.run_id.clone();
    let mut n = 0;
    let mut id = || {
        n += 1;
        h.id("http", n)
    };
    let mut ledger = Ledger::default();

    // ----- 1. the six long endpoints, basic auth, JSON, the client's own timestamp -----
    let user = format!("http-user-{r}");
    let anon = format!("http-anon-{r}");
    let singles = [
        (
            "identify",
            json!({"userId": user, "anonymousId": anon, "messageId": id(),
                "timestamp": "2026-01-02T03:04:05.678+02:00",
                "traits": {"email": "ada@example.com", "plan": "pro", "age": 42, "vip": true,
                    "address": {"city": "Paris", "zip": "75001"}, "tags": ["a", "b"], "gone": null}}),
        ),
        (
            "track",
            json!({"userId": user, "anonymousId": anon, "messageId": id(), "event": "Order Completed",
                "timestamp": "2026-01-02T01:04:06Z",
                "properties": {"revenue": 9.99, "currency": "EUR", "items": [{"sku": "s-1"}], "coupon": null},
                "context": {"traits": {"email": "ada@example.com"}, "device": {"type": "ios", "id": "dev-1"},
                    "campaign": {"name": "spring", "source": "newsletter"},
                    "location": {"city": "Paris", "latitude": 48.85}, "ip": "192.0.2.1",
                    "library": {"name": "e2e", "version": "1"}}}),
        ),
        (
            "page",
            json!({"anonymousId": anon, "messageId": id(), "name": "Pricing", "category": "Docs",
                "timestamp": "2026-01-02T01:04:07.001Z",
                "properties": {"path": "/pricing", "title": "Pricing", "scroll": 0.5},
                "context": {"campaign": {"medium": "email"}}}),
        ),
        (
            "screen",
            json!({"userId": user, "messageId": id(), "name": "Home", "timestamp": "2026-01-02T01:04:08Z",
                "properties": {"variant": "b"}, "context": {"device": {"manufacturer": "Apple"}}}),
        ),
        (
            "group",
            json!({"userId": user, "messageId": id(), "groupId": format!("acme-{r}"),
                "timestamp": "2026-01-02T01:04:09Z", "traits": {"name": "Acme", "employees": 100}}),
        ),
        (
            "alias",
            json!({"userId": user, "previousId": anon, "messageId": id(), "timestamp": "2026-01-02T01:04:10Z"}),
        ),
    ];
    for (kind, message) in &singles {
        let path = format!("/v1/{kind}");
        let case = format!("POST {path} ({})", Shape::basic(&key).describe());
        let answer = post(h, &path, Shape::basic(&key), message.to_string().as_bytes())?;
        if checks.check(case.clone(), success(&answer, false)) {
            let mut stored = message.clone();
            stored["type"] = json!(kind);
            let time = parse_time(message["timestamp"].as_str().unwrap_or_default()).map_or_else(
                || TimeRule::Between(Utc::now() - TimeDelta::days(1), Utc::now()),
                TimeRule::Exact,
            );
            ledger.expect(&case, &stored, time);
        }
    }

    // A numeric userId, the trailing slash, and Basic auth without the colon.
    let numeric = json!({"userId": 1234567, "messageId": id(), "traits": {"n": 1}, "timestamp": "2026-01-02T01:05:00Z"});
    let shape = Shape {
        auth: Auth::BasicNoColon(&key),
        ..Shape::basic(&key)
    };
    let case = format!("POST /v1/identify/ (numeric userId, {})", shape.describe());
    let answer = post(h, "/v1/identify/", shape, numeric.to_string().as_bytes())?;
    if checks.check(case.clone(), success(&answer, false)) {
        let mut stored = numeric.clone();
        stored["type"] = json!("identify");
        ledger.expect(
            &case,
            &stored,
            TimeRule::Exact(parse_time("2026-01-02T01:05:00Z").unwrap_or_default()),
        );
    }

    // ----- 2. the browser's short paths: text/plain, key in the body, cross-origin -----
    let short = [
        (
            "i",
            "identify",
            json!({"anonymousId": anon, "traits": {"browser": true}}),
        ),
        (
            "t",
            "track",
            json!({"anonymousId": anon, "event": "Button Clicked", "properties": {"button": "buy"}}),
        ),
        (
            "p",
            "page",
            json!({"anonymousId": anon, "name": "Home", "properties": {"url": "http://shop.example/"}}),
        ),
        ("s", "screen", json!({"anonymousId": anon, "name": "Cart"})),
        (
            "g",
            "group",
            json!({"anonymousId": anon, "groupId": 42, "traits": {"tier": "gold"}}),
        ),
        (
            "a",
            "alias",
            json!({"userId": user, "previousId": format!("old-{r}")}),
        ),
    ];
    for (short_path, kind, mut message) in short {
        message["messageId"] = json!(id());
        message["type"] = json!(kind);
        message["writeKey"] = json!(key);
        message["sentAt"] = json!(now_text());
        let path = format!("/v1/{short_path}");
        let case = format!("POST {path} ({})", Shape::browser().describe());
        let before = Utc::now();
        let answer = post(h, &path, Shape::browser(), message.to_string().as_bytes())?;
        let after = Utc::now();
        let cors = answer
            .headers
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let result = success(&answer, false).and_then(|ok| {
            if cors == "*" || cors == "http://shop.example" {
                Ok(format!("{ok}, Access-Control-Allow-Origin: {cors}"))
            } else {
                Err(format!(
                    "no usable Access-Control-Allow-Origin header ({cors:?})"
                ))
            }
        });
        if checks.check(case.clone(), result) {
            message.as_object_mut().map(|m| m.remove("writeKey"));
            ledger.expect(
                &case,
                &message,
                around(before, after, TimeDelta::seconds(1)),
            );
        }
    }

    // ----- 3. batches -----
    // /v1/batch: all six types, batch-level context merged (the item's own keys win), and
    // a client clock one hour behind: eventTime = receivedAt - (sentAt - timestamp).
    let skewed = Utc::now() - TimeDelta::hours(1);
    let ts = (skewed - TimeDelta::seconds(10)).to_rfc3339_opts(SecondsFormat::Millis, true);
    let sent_at = skewed.to_rfc3339_opts(SecondsFormat::Millis, true);
    let items = vec![
        json!({"type": "track", "userId": user, "event": "Batched", "messageId": id(), "timestamp": ts,
            "context": {"campaign": {"name": "own"}}, "properties": {"n": 1}}),
        json!({"type": "identify", "userId": user, "messageId": id(), "timestamp": ts, "traits": {"batched": "yes"}}),
        json!({"type": "page", "anonymousId": anon, "messageId": id(), "timestamp": ts, "name": "Batch Page"}),
        json!({"type": "screen", "userId": user, "messageId": id(), "timestamp": ts, "name": "Batch Screen"}),
        json!({"type": "group", "userId": user, "groupId": "g-batch", "messageId": id(), "timestamp": ts}),
        json!({"type": "alias", "userId": user, "previousId": "batch-old", "messageId": id(), "timestamp": ts}),
    ];
    let top_context = json!({"traits": {"plan": "pro"}, "campaign": {"name": "top"}});
    let body = json!({"batch": items, "context": top_context, "sentAt": sent_at});
    let case =
        "POST /v1/batch (six types, batch context, clock skew; basic auth, application/json)";
    let before = Utc::now();
    let answer = post(
        h,
        "/v1/batch",
        Shape::basic(&key),
        body.to_string().as_bytes(),
    )?;
    let after = Utc::now();
    if checks.check(case, success(&answer, false)) {
        for item in &items {
            let mut stored = item.clone();
            // The batch-level context fills the keys the item does not have.
            let mut merged = item["context"].as_object().cloned().unwrap_or_default();
            for (k, v) in top_context.as_object().into_iter().flatten() {
                merged.entry(k.clone()).or_insert_with(|| v.clone());
            }
            stored["context"] = Value::Object(merged);
            let skew = TimeDelta::seconds(10);
            ledger.expect(
                case,
                &stored,
                around(before - skew, after - skew, TimeDelta::seconds(1)),
            );
        }
    }

    // /v1/import with the key in the body: batch-level integrations route items away.
    let routed = vec![
        json!({"type": "track", "userId": user, "event": "Routed Away", "messageId": id()}),
        json!({"type": "track", "userId": user, "event": "Routed Here", "messageId": id(),
            "integrations": {"Pointillist": true}}),
        json!({"type": "track", "userId": user, "event": "All Off But Pointillist", "messageId": id(),
            "integrations": {"All": false, "Pointillist": true}}),
    ];
    let body = json!({"batch": routed, "writeKey": key, "integrations": {"Pointillist": false}});
    let shape = Shape {
        auth: Auth::None,
        ..Shape::basic(&key)
    };
    let case = format!(
        "POST /v1/import (integrations routing; {})",
        shape.describe()
    );
    let before = Utc::now();
    let answer = post(h, "/v1/import", shape, body.to_string().as_bytes())?;
    let after = Utc::now();
    if checks.check(case.clone(), success(&answer, false)) {
        ledger.absent(
            &format!("{case}: \"Pointillist\": false from the batch"),
            &routed[0],
        );
        ledger.expect(
            &case,
            &routed[1],
            around(before, after, TimeDelta::seconds(1)),
        );
        ledger.expect(
            &case,
            &routed[2],
            around(before, after, TimeDelta::seconds(1)),
        );
    }
    let all_off = json!({"userId": user, "event": "All Off", "messageId": id(), "integrations": {"All": false}});
    let case = "POST /v1/track (integrations All: false)";
    let answer = post(
        h,
        "/v1/track",
        Shape::basic(&key),
        all_off.to_string().as_bytes(),
    )?;
    if checks.check(case, success(&answer, false)) {
        ledger.absent(case, &all_off);
    }

    // /v1/b, as the browser's batching mode sends it.
    let b_items = vec![
        json!({"type": "track", "anonymousId": anon, "event": "B One", "messageId": id()}),
        json!({"type": "page", "anonymousId": anon, "name": "B Two", "messageId": id()}),
    ];
    let body = json!({"batch": b_items, "writeKey": key, "sentAt": now_text()});
    let case = format!("POST /v1/b ({})", Shape::browser().describe());
    let before = Utc::now();
    let answer = post(h, "/v1/b", Shape::browser(), body.to_string().as_bytes())?;
    let after = Utc::now();
    if checks.check(case.clone(), success(&answer, false)) {
        for item in &b_items {
            ledger.expect(&case, item, around(before, after, TimeDelta::seconds(1)));
        }
    }

    // gzip bodies: a batch (with the trailing slash) and a single call.
    let gz_items = vec![
        json!({"type": "track", "userId": user, "event": "Gzipped", "messageId": id(), "properties": {"big": "x".repeat(2000)}}),
        json!({"type": "identify", "userId": user, "messageId": id(), "traits": {"gz": true}}),
    ];
    let shape = Shape {
        gzip: true,
        ..Shape::basic(&key)
    };
    let case = format!("POST /v1/batch/ ({})", shape.describe());
    let before = Utc::now();
    let answer = post(
        h,
        "/v1/batch/",
        shape,
        json!({ "batch": gz_items }).to_string().as_bytes(),
    )?;
    let after = Utc::now();
    if checks.check(case.clone(), success(&answer, false)) {
        for item in &gz_items {
            ledger.expect(&case, item, around(before, after, TimeDelta::seconds(1)));
        }
    }
    let gz_single =
        json!({"userId": user, "event": "Gzipped Single", "messageId": id(), "writeKey": key});
    let shape = Shape {
        gzip: true,
        ..Shape::browser()
    };
    let case = format!("POST /v1/track/ ({})", shape.describe());
    let before = Utc::now();
    let answer = post(h, "/v1/track/", shape, gz_single.to_string().as_bytes())?;
    let after = Utc::now();
    if checks.check(case.clone(), success(&answer, false)) {
        let mut stored = gz_single.clone();
        stored["type"] = json!("track");
        ledger.expect(&case, &stored, around(before, after, TimeDelta::seconds(1)));
    }

    // A batch with bad items: the good ones are stored, the bad ones listed.
    let mixed = vec![
        json!({"type": "track", "userId": user, "event": "Good One", "messageId": id()}),
        json!({"type": "track", "event": "No Ids", "messageId": id()}),
        json!({"type": "track", "userId": user, "messageId": id()}),
        json!({"type": "group", "userId": user, "messageId": id()}),
        json!({"type": "identify", "anonymousId": anon, "messageId": id(), "traits": {"good": "two"}}),
        json!({"type": "alias", "userId": user, "messageId": id()}),
        json!({"type": "bogus", "userId": user, "messageId": id()}),
    ];
    let case = "POST /v1/batch with bad items (answer lists them)";
    let before = Utc::now();
    let answer = post(
        h,
        "/v1/batch",
        Shape::basic(&key),
        json!({ "batch": mixed }).to_string().as_bytes(),
    )?;
    let after = Utc::now();
    let result = success(&answer, true).and_then(|_| {
        let listed: Vec<(u64, String)> = answer.body["rejected"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                (
                    r["index"].as_u64().unwrap_or(u64::MAX),
                    r["code"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        let indices: Vec<u64> = listed.iter().map(|(i, _)| *i).collect();
        if indices != [1, 2, 3, 5, 6] {
            return Err(format!(
                "rejected indices {indices:?}, expected [1, 2, 3, 5, 6]: {}",
                answer.body
            ));
        }
        if listed[0].1 != "no_user_anon_id" {
            return Err(format!(
                "item 1 (no userId/anonymousId) has code {:?}, expected no_user_anon_id",
                listed[0].1
            ));
        }
        Ok(format!("200, rejected {listed:?}"))
    });
    if checks.check(case, result) {
        ledger.expect(
            case,
            &mixed[0],
            around(before, after, TimeDelta::seconds(1)),
        );
        ledger.expect(
            case,
            &mixed[4],
            around(before, after, TimeDelta::seconds(1)),
        );
        for i in [1, 2, 3, 5, 6] {
            ledger.absent(&format!("{case}: bad item {i}"), &mixed[i]);
        }
    }

    // Deduplication: the same messageId twice is answered 200 twice, delivered once.
    let dup = json!({"userId": user, "event": "Sent Twice", "messageId": id()});
    let case = "POST /v1/track twice with one messageId (deduplicated)";
    let before = Utc::now();
    let first = post(
        h,
        "/v1/track",
        Shape::basic(&key),
        dup.to_string().as_bytes(),
    )?;
    let second = post(
        h,
        "/v1/track",
        Shape::basic(&key),
        dup.to_string().as_bytes(),
    )?;
    let after = Utc::now();
    if checks.check(
        case,
        success(&first, false).and_then(|_| success(&second, false)),
    ) {
        let mut stored = dup.clone();
        stored["type"] = json!("track");
        ledger.expect(case, &stored, around(before, after, TimeDelta::seconds(1)));
    }

    // ----- 4. refusals -----
    let refused_message = |h: &Harness, event: &str, n: usize| {
        let user = format!("refused-{}", h.run_id);
        json!({"userId": user, "event": event, "messageId": h.id("http-refused", n)})
    };
    let m = refused_message(h, "Wrong Basic Key", 1);
    let answer = post(
        h,
        "/v1/track",
        Shape::basic("not-a-key"),
        m.to_string().as_bytes(),
    )?;
    checks.check(
        "401 for an unknown key in basic auth",
        refused(&answer, 401),
    );
    ledger.absent("401 unknown basic key", &m);

    let m = refused_message(h, "Wrong Body Key", 2);
    let mut body = m.clone();
    body["writeKey"] = json!("not-a-key");
    let answer = post(h, "/v1/t", Shape::browser(), body.to_string().as_bytes())?;
    checks.check(
        "401 for an unknown writeKey in the body",
        refused(&answer, 401),
    );
    ledger.absent("401 unknown body key", &m);

    let m = refused_message(h, "No Key", 3);
    let answer = post(
        h,
        "/v1/track",
        Shape {
            auth: Auth::None,
            ..Shape::basic(&key)
        },
        m.to_string().as_bytes(),
    )?;
    checks.check("401 with no write key at all", refused(&answer, 401));
    ledger.absent("401 no key", &m);

    let m = refused_message(h, "Header Decides", 4);
    let mut body = json!({"batch": [m]});
    body["writeKey"] = json!(key);
    let answer = post(
        h,
        "/v1/batch",
        Shape::basic("not-a-key"),
        body.to_string().as_bytes(),
    )?;
    checks.check(
        "401 for an unknown basic key even with a good body writeKey",
        refused(&answer, 401),
    );
    ledger.absent("401 header decides", &m);

    let answer = post(
        h,
        "/v1/track",
        Shape::basic(&key),
        b"{\"userId\": \"u\", \"event\": ",
    )?;
    checks.check(
        "400 with a JSON error body for invalid JSON",
        refused(&answer, 400),
    );

    let m = json!({"userId": user, "messageId": h.id("http-refused", 5)});
    let answer = post(h, "/v1/track", Shape::basic(&key), m.to_string().as_bytes())?;
    checks.check(
        "400 for a single track without an event",
        refused(&answer, 400),
    );
    ledger.absent("400 track without event", &m);

    let answer = post(h, "/v1/nope", Shape::basic(&key), b"{}")?;
    checks.expect(
        "404 for an unknown path",
        answer.status == 404,
        format!("answered {} {}", answer.status, answer.body),
    );

    // ----- 5. CORS preflight and the operations endpoints -----
    let preflight = h
        .http
        .request(reqwest::Method::OPTIONS, h.url("/v1/t"))
        .header("Origin", "http://shop.example")
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "content-type")
        .send()?;
    let allow = preflight
        .headers()
        .get("access-control-allow-origin")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let methods = preflight
        .headers()
        .get("access-control-allow-methods")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    checks.expect(
        "OPTIONS /v1/t preflight answered with CORS headers",
        preflight.status().is_success() && !allow.is_empty() && methods.contains("POST"),
        format!(
            "{} allow-origin {allow:?} allow-methods {methods:?}",
            preflight.status()
        ),
    );
    let healthz = h.http.get(h.url("/healthz")).send()?.status();
    checks.expect("GET /healthz", healthz == 200, format!("{healthz}"));
    let (status, body) = h.readyz()?;
    checks.expect(
        "GET /readyz is 200 and ready",
        status == 200 && body["ready"] == true,
        format!("{status} {body}"),
    );

    // ----- 6. what reached Pointillist -----
    let ids: BTreeSet<String> = ledger
        .expected
        .iter()
        .map(|(_, e)| e.message_id.clone())
        .collect();
    let events = match h.wait_delivered(&ids, Duration::from_secs(30)) {
        Ok(events) => events,
        Err(e) => {
            checks.fail("every accepted event reaches the mock", format!("{e:#}"));
            h.mock_events()?
        }
    };
    // Let everything else that is going to be delivered be delivered, before looking
    // for what must not be.
    if let Err(e) = h.wait_drained(Duration::from_secs(30)) {
        checks.fail("the queue drains", format!("{e:#}"));
    }
    let events = h.mock_events().unwrap_or(events);
    let delivered = by_message_id(&events);
    let mut mapped_ok = 0;
    for (case, expected) in &ledger.expected {
        match delivered
            .get(expected.message_id.as_str())
            .map(Vec::as_slice)
        {
            None => {
                checks.fail(
                    format!("delivered: {case}"),
                    format!("messageId {} never reached the mock", expected.message_id),
                );
            }
            Some([event]) => match expected.compare(event, true) {
                Ok(()) => mapped_ok += 1,
                Err(e) => checks.fail(
                    format!("mapping: {case}"),
                    format!("{e}\n      delivered: {event}"),
                ),
            },
            Some(many) => checks.fail(
                format!("delivered once: {case}"),
                format!(
                    "messageId {} delivered {} times with no fault injected",
                    expected.message_id,
                    many.len()
                ),
            ),
        }
    }
    checks.expect(
        "every accepted event delivered once and mapped as the spec says",
        mapped_ok == ledger.expected.len(),
        format!("{mapped_ok} of {} events", ledger.expected.len()),
    );
    let mut leaked = Vec::new();
    for (case, id) in &ledger.absent {
        if delivered.contains_key(id.as_str()) {
            leaked.push(format!("{case} ({id})"));
        }
    }
    checks.expect(
        "nothing refused, routed away or duplicated reaches Pointillist",
        leaked.is_empty(),
        if leaked.is_empty() {
            format!(
                "{} messageIds absent as they should be",
                ledger.absent.len()
            )
        } else {
            leaked.join(", ")
        },
    );
    let expected_ids: BTreeSet<&str> = ledger
        .expected
        .iter()
        .map(|(_, e)| e.message_id.as_str())
        .collect();
    let extra: Vec<&&str> = delivered
        .keys()
        .filter(|id| !expected_ids.contains(**id))
        .collect();
    checks.expect(
        "the mock received nothing else",
        extra.is_empty(),
        format!(
            "{} events at the mock; unexpected messageIds: {extra:?}",
            events.len()
        ),
    );
    let rejected = h.mock_stat("rejected")?;
    checks.expect(
        "the mock found no contract violation",
        rejected == 0,
        format!("{rejected} requests rejected by the mock"),
    );
    let dead = h.metric("stipple_dead_letters")?;
    checks.expect(
        "no dead letters",
        dead == Some(0.0),
        format!("stipple_dead_letters {dead:?}"),
    );
    Ok(())
}
