//! The load: realistic Segment track messages with unique `messageId`s, the HTTP/1.1
//! load generator that posts them (one keep-alive connection per worker), and the bare
//! Pointillist client of the delivery baseline.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper_util::rt::TokioIo;
use serde_json::json;
use serde_json::value::RawValue;
use tokio::task::JoinSet;

use super::procs::{TOKEN, WRITE_KEY};

/// Digits of the per-message counter in a `messageId`.
const COUNTER_DIGITS: usize = 12;
/// Stands for the counter in a template until a request fills it.
const COUNTER_MARK: &[u8; COUNTER_DIGITS] = b"############";
/// A worker gives up after this many transport errors in a row.
const MAX_ERRORS_IN_A_ROW: u32 = 20;

/// The next message number: every message the bench sends has its own `messageId`,
/// so the ingress's dedup never turns a stored event into a cheap duplicate.
static NEXT_MESSAGE: AtomicU64 = AtomicU64::new(0);

/// A request body with the counter part of each `messageId` left blank.
#[derive(Debug)]
pub(crate) struct Template {
    bytes: Vec<u8>,
    counters: Vec<usize>,
}

impl Template {
    fn new(value: &impl serde::Serialize) -> anyhow::Result<Template> {
        let bytes = serde_json::to_vec(value)?;
        let counters: Vec<usize> = bytes
            .windows(COUNTER_DIGITS)
            .enumerate()
            .filter(|(_, w)| *w == COUNTER_MARK)
            .map(|(i, _)| i)
            .collect();
        if counters.is_empty() {
            bail!("a bench template has no messageId to fill");
        }
        Ok(Template { bytes, counters })
    }

    /// A `/v1/batch` body of `events` track messages.
    pub(crate) fn batch(events: usize) -> anyhow::Result<Template> {
        let batch: Vec<_> = (0..events).map(track_message).collect();
        Template::new(
            &InOrder::new()
                .with("batch", batch)
                .with("sentAt", "2026-11-28T12:00:00.200Z"),
        )
    }

    /// A `/v1/track` body: one track message.
    pub(crate) fn track() -> anyhow::Result<Template> {
        Template::new(&track_message(0).with("sentAt", "2026-11-28T12:00:00.200Z"))
    }

    /// Messages per body.
    pub(crate) fn events(&self) -> u64 {
        self.counters.len() as u64
    }

    /// Bytes per body.
    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }

    /// A body whose messages are numbered from `first`.
    pub(crate) fn fill(&self, first: u64) -> Vec<u8> {
        let mut bytes = self.bytes.clone();
        for (i, &at) in self.counters.iter().enumerate() {
            let mut n = first + i as u64;
            for digit in bytes[at..at + COUNTER_DIGITS].iter_mut().rev() {
                *digit = b'0' + (n % 10) as u8;
                n /= 10;
            }
        }
        bytes
    }

    /// A body with fresh message numbers.
    pub(crate) fn next(&self) -> Vec<u8> {
        self.fill(NEXT_MESSAGE.fetch_add(self.events(), Ordering::Relaxed))
    }
}

/// A JSON object whose keys are written in the order given, as client libraries write
/// them. (`json!` sorts them, and a load of sorted messages would flatter any reading
/// whose cost depends on key order, as storing blocks verbatim did: see the session 6
/// note in #3.)
struct InOrder(Vec<(&'static str, Box<RawValue>)>);

impl InOrder {
    fn new() -> Self {
        InOrder(Vec::new())
    }

    fn with(mut self, key: &'static str, value: impl serde::Serialize) -> Self {
        let value = serde_json::value::to_raw_value(&value).expect("a JSON value");
        self.0.push((key, value));
        self
    }
}

impl serde::Serialize for InOrder {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// One track message as analytics-node sends it (about 500 bytes, keys in its order,
/// properties in the order a shop would write them), varied by `i`.
fn track_message(i: usize) -> InOrder {
    let run = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        & 0xffff_ffff;
    let mark = String::from_utf8_lossy(COUNTER_MARK);
    let (event, properties) = match i % 4 {
        0 => (
            "Product Added",
            InOrder::new()
                .with("product_id", "507f1f77bcf86cd799439011")
                .with("sku", "G-32")
                .with("category", "Games")
                .with("name", "Monopoly: 3rd Edition")
                .with("brand", "Hasbro")
                .with("price", 18.99)
                .with("quantity", 1),
        ),
        1 => (
            "Product Viewed",
            InOrder::new()
                .with("product_id", "505bd76785ebb509fc183733")
                .with("sku", "F-15")
                .with("category", "Books")
                .with("name", "Dune")
                .with("price", 9.5)
                .with("position", i % 12),
        ),
        2 => (
            "Checkout Started",
            InOrder::new()
                .with("order_id", format!("o-{i:06}"))
                .with("value", 30.0)
                .with("revenue", 25.0)
                .with("currency", "USD"),
        ),
        _ => (
            "Order Completed",
            InOrder::new()
                .with("order_id", format!("o-{i:06}"))
                .with("total", 27.5)
                .with("coupon", "hasbros")
                .with("currency", "USD"),
        ),
    };
    let library = InOrder::new()
        .with("name", "@segment/analytics-node")
        .with("version", "3.1.0");
    let context = InOrder::new()
        .with("library", library)
        .with("ip", "203.0.113.7")
        .with("locale", "en-US")
        .with(
            "userAgent",
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36",
        );
    InOrder::new()
        .with("type", "track")
        .with("event", event)
        .with("userId", format!("user-{:04}", i % 1000))
        .with("anonymousId", "5f0e1c2a-aaaa-4bbb-8ccc-123456789abc")
        .with("messageId", format!("bench-{run:08x}-{mark}"))
        .with("timestamp", "2026-11-28T12:00:00.123Z")
        .with("properties", properties)
        .with("context", context)
        .with("integrations", json!({}))
}

/// Where the load goes.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    pub(crate) path: &'static str,
}

impl Target {
    /// The target at `path` of the server at `url` (`http://127.0.0.1:PORT`).
    pub(crate) fn new(url: &str, path: &'static str) -> anyhow::Result<Target> {
        let addr = url.trim_start_matches("http://").trim_end_matches('/');
        let addr: SocketAddr = addr
            .parse()
            .with_context(|| format!("{url} is not http://IP:PORT"))?;
        if !addr.ip().is_loopback() {
            bail!("the bench loads 127.0.0.1 only, not {addr}");
        }
        Ok(Target { addr, path })
    }
}

/// How much load, and how.
#[derive(Debug, Clone)]
pub(crate) struct LoadPlan {
    pub(crate) template: Arc<Template>,
    /// Requests in all; the run ends when they are answered...
    pub(crate) requests: u64,
    /// ...or at this time, whichever comes first.
    pub(crate) max_time: Duration,
    /// Concurrent keep-alive connections, each with one request in flight.
    pub(crate) connections: usize,
}

/// What a load run saw.
#[derive(Debug, Clone, Default)]
pub(crate) struct LoadResult {
    /// Requests answered 200.
    pub(crate) ok_requests: u64,
    /// Messages in the requests answered 200.
    pub(crate) ok_events: u64,
    /// Other answers, by status.
    pub(crate) other_statuses: BTreeMap<u16, u64>,
    /// Requests that got no answer.
    pub(crate) transport_errors: u64,
    /// From the first request to the last answer.
    pub(crate) elapsed: Duration,
    /// The run hit `max_time` before all its requests were sent.
    pub(crate) capped: bool,
    /// Each answered request's time from sending to the end of its answer, in µs;
    /// sorted once the run has ended.
    pub(crate) latencies: Vec<u32>,
}

impl LoadResult {
    /// Counts one answer (`None`: no answer at all) of a request carrying `events`
    /// messages; true when too many requests in a row got no answer and the worker stops.
    fn record(
        &mut self,
        status: Option<u16>,
        events: u64,
        took: Duration,
        errors_in_a_row: &mut u32,
    ) -> bool {
        if status.is_some() {
            self.latencies
                .push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
        }
        match status {
            Some(200) => {
                *errors_in_a_row = 0;
                self.ok_requests += 1;
                self.ok_events += events;
            }
            Some(status) => {
                *errors_in_a_row = 0;
                *self.other_statuses.entry(status).or_default() += 1;
            }
            None => {
                self.transport_errors += 1;
                *errors_in_a_row += 1;
            }
        }
        *errors_in_a_row >= MAX_ERRORS_IN_A_ROW
    }

    fn merge(&mut self, other: LoadResult) {
        self.ok_requests += other.ok_requests;
        self.ok_events += other.ok_events;
        for (status, n) in other.other_statuses {
            *self.other_statuses.entry(status).or_default() += n;
        }
        self.transport_errors += other.transport_errors;
        self.capped |= other.capped;
        self.latencies.extend(other.latencies);
    }

    /// Ends a run that started at `start`, its workers' results merged: the time it
    /// took, and its answer times sorted once for [`LoadResult::latency_ms`].
    fn finish(&mut self, start: Instant) {
        self.elapsed = start.elapsed();
        self.latencies.sort_unstable();
    }

    /// The answer time that `quantile` (0 to 1) of the answered requests took at most,
    /// in milliseconds; `None` when none was answered.
    pub(crate) fn latency_ms(&self, quantile: f64) -> Option<f64> {
        let last = self.latencies.len().checked_sub(1)?;
        let at = ((last as f64) * quantile.clamp(0.0, 1.0)).round() as usize;
        Some(f64::from(self.latencies[at]) / 1000.0)
    }

    /// Requests answered other than 200, or not at all.
    pub(crate) fn failed(&self) -> u64 {
        self.other_statuses.values().sum::<u64>() + self.transport_errors
    }

    /// 200 answers per second.
    pub(crate) fn requests_per_sec(&self) -> f64 {
        self.ok_requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Messages in 200 answers per second.
    pub(crate) fn events_per_sec(&self) -> f64 {
        self.ok_events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// A short account of the failures, empty when there were none.
    pub(crate) fn failures(&self) -> String {
        let mut parts: Vec<String> = self
            .other_statuses
            .iter()
            .map(|(s, n)| format!("{n}x{s}"))
            .collect();
        if self.transport_errors > 0 {
            parts.push(format!("{} transport errors", self.transport_errors));
        }
        parts.join(", ")
    }
}

/// Posts `plan.requests` bodies to `target` over `plan.connections` keep-alive
/// connections (opened before the clock starts), each worker sending its next request
/// as soon as the previous one is answered.
pub(crate) async fn run(target: &Target, plan: &LoadPlan) -> anyhow::Result<LoadResult> {
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{WRITE_KEY}:"))
    );
    let headers = Arc::new(Headers {
        host: HeaderValue::from_str(&target.addr.to_string())?,
        auth: HeaderValue::from_str(&auth)?,
    });
    let mut connections = Vec::with_capacity(plan.connections);
    for _ in 0..plan.connections.max(1) {
        connections.push(connect(target.addr).await?);
    }
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + plan.max_time;
    let mut workers = JoinSet::new();
    for sender in connections {
        let worker = Worker {
            target: target.clone(),
            plan: plan.clone(),
            headers: headers.clone(),
            next: next.clone(),
            deadline,
        };
        workers.spawn(worker.run(sender));
    }
    let mut total = LoadResult::default();
    while let Some(done) = workers.join_next().await {
        total.merge(done.context("a load worker panicked")?);
    }
    total.finish(start);
    Ok(total)
}

#[derive(Debug)]
struct Headers {
    host: HeaderValue,
    auth: HeaderValue,
}

#[derive(Debug)]
struct Worker {
    target: Target,
    plan: LoadPlan,
    headers: Arc<Headers>,
    next: Arc<AtomicU64>,
    deadline: Instant,
}

impl Worker {
    async fn run(self, mut sender: SendRequest<Full<Bytes>>) -> LoadResult {
        let mut result = LoadResult::default();
        let mut errors_in_a_row = 0;
        loop {
            if Instant::now() >= self.deadline {
                result.capped = self.next.load(Ordering::Relaxed) < self.plan.requests;
                break;
            }
            if self.next.fetch_add(1, Ordering::Relaxed) >= self.plan.requests {
                break;
            }
            let body = Bytes::from(self.plan.template.next());
            let request = hyper::Request::post(self.target.path)
                .header(HOST, self.headers.host.clone())
                .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                .header(AUTHORIZATION, self.headers.auth.clone())
                .body(Full::new(body));
            let Ok(request) = request else {
                result.transport_errors += 1;
                break;
            };
            let sent = Instant::now();
            let answered = async {
                sender.ready().await?;
                let response = sender.send_request(request).await?;
                let status = response.status().as_u16();
                response.into_body().collect().await?;
                Ok::<_, hyper::Error>(status)
            };
            let answered = answered.await;
            let failed = answered.is_err();
            if result.record(
                answered.ok(),
                self.plan.template.events(),
                sent.elapsed(),
                &mut errors_in_a_row,
            ) {
                break;
            }
            // A request with no answer may have broken the connection: open a new one.
            if failed {
                match connect(self.target.addr).await {
                    Ok(fresh) => sender = fresh,
                    Err(_) => break,
                }
            }
        }
        result
    }
}

async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // Ends when the worker drops its sender or the server closes.
        let _ = connection.await;
    });
    Ok(sender)
}

/// The HTTP client a bare baseline posts Pointillist events with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BareClient {
    /// reqwest, as a bare client would most often be written.
    Reqwest,
    /// hyper's pooled client, the stack Stipple's own client sends with.
    Hyper,
}

impl BareClient {
    pub(crate) fn name(self) -> &'static str {
        match self {
            BareClient::Reqwest => "bare reqwest client",
            BareClient::Hyper => "bare hyper client",
        }
    }
}

/// One bare client, shared by the workers.
#[derive(Clone)]
enum Poster {
    Reqwest(reqwest::Client, Arc<str>),
    /// Shared: hyper's client is some 400 bytes.
    Hyper(Arc<(HyperClient, hyper::Uri)>),
}

type HyperClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

impl Poster {
    /// Posts one event and reads the whole answer: its status, or why there is none.
    async fn post(&self, body: Bytes) -> Option<u16> {
        match self {
            Poster::Reqwest(client, url) => {
                let response = client
                    .post(&**url)
                    .header("apiToken", TOKEN)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body)
                    .send()
                    .await
                    .ok()?;
                let status = response.status().as_u16();
                response.bytes().await.ok().map(|_| status)
            }
            Poster::Hyper(shared) => {
                let (client, uri) = &**shared;
                let request = hyper::Request::post(uri.clone())
                    .header("apiToken", TOKEN)
                    .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                    .body(Full::new(body))
                    .ok()?;
                let response = client.request(request).await.ok()?;
                let status = response.status().as_u16();
                response.into_body().collect().await.ok().map(|_| status)
            }
        }
    }
}

/// Posts `count` Pointillist events (cycling through `bodies`) to `{mock}/event` with
/// `with`, `concurrency` at a time over keep-alive connections, as a bare client would.
pub(crate) async fn post_events(
    with: BareClient,
    mock_url: &str,
    bodies: Arc<Vec<Bytes>>,
    count: u64,
    concurrency: usize,
    max_time: Duration,
) -> anyhow::Result<LoadResult> {
    if bodies.is_empty() {
        bail!("no Pointillist events to post");
    }
    let url = format!("{mock_url}/event");
    let poster = match with {
        BareClient::Reqwest => Poster::Reqwest(
            reqwest::Client::builder()
                .pool_max_idle_per_host(concurrency)
                .build()?,
            url.into(),
        ),
        BareClient::Hyper => Poster::Hyper(Arc::new((
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_max_idle_per_host(concurrency)
                .build_http(),
            url.parse()?,
        ))),
    };
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + max_time;
    let mut workers = JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (poster, bodies, next) = (poster.clone(), bodies.clone(), next.clone());
        workers.spawn(async move {
            let mut result = LoadResult::default();
            let mut errors_in_a_row = 0;
            loop {
                if Instant::now() >= deadline {
                    result.capped = next.load(Ordering::Relaxed) < count;
                    break;
                }
                let ticket = next.fetch_add(1, Ordering::Relaxed);
                if ticket >= count {
                    break;
                }
                let body = bodies[(ticket % bodies.len() as u64) as usize].clone();
                let started = Instant::now();
                let status = poster.post(body).await;
                if result.record(status, 1, started.elapsed(), &mut errors_in_a_row) {
                    break;
                }
            }
            result
        });
    }
    let mut total = LoadResult::default();
    while let Some(done) = workers.join_next().await {
        total.merge(done.context("a client worker panicked")?);
    }
    total.finish(start);
    Ok(total)
}

/// Segment messages, one JSON per line, as `stipple map` reads them: the same messages
/// the load sends, for the delivery baseline's Pointillist events.
pub(crate) fn messages_for_map(count: usize) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    for i in 0..count {
        let template = Template::new(&track_message(i))?;
        out.extend_from_slice(&template.next());
        out.push(b'\n');
    }
    Ok(out)
}
