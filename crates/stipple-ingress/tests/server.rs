//! The HTTP server around the router (`stipple_ingress::serve`), over real TCP: the
//! header timeout, the connection limit and the graceful stop.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{Gate, Harness, TestStore, basic, config};
use stipple_ingress::{ServerConfig, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Far longer than anything here should take: only a broken server reaches it.
const HANG: Duration = Duration::from_secs(20);

/// A server on a free port: its address, the sender that stops it, and its task.
async fn start(
    config: ServerConfig,
) -> (
    SocketAddr,
    oneshot::Sender<()>,
    JoinHandle<std::io::Result<()>>,
) {
    start_with(config, Harness::new()).await
}

/// [`start`], serving `harness`'s router.
async fn start_with(
    config: ServerConfig,
    harness: Harness,
) -> (
    SocketAddr,
    oneshot::Sender<()>,
    JoinHandle<std::io::Result<()>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
    let addr = listener.local_addr().expect("its address");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, harness.ingress, config, async {
        let _ = stopped.await;
    }));
    (addr, stop, task)
}

/// A harness whose appends wait at a gate, so that a request is known to be in flight
/// (at the store) once it reaches it; and its store, which holds the gate.
fn gated() -> (Harness, Arc<TestStore>) {
    let store = TestStore {
        gate: Some(Gate::default()),
        ..TestStore::default()
    };
    let harness = Harness::with(config(), store, |s| s);
    let store = Arc::clone(&harness.store);
    (harness, store)
}

/// A one-event `/v1/track` request, keep-alive.
fn track_request() -> Vec<u8> {
    let body = r#"{"userId":"u1","event":"Signed Up"}"#;
    format!(
        "POST /v1/track HTTP/1.1\r\nhost: stipple\r\nauthorization: {}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        basic("wk_web:"),
        body.len()
    )
    .into_bytes()
}

/// Reads until the connection closes; what was read.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Waits for an answer on `stream` (at most [`HANG`], else fails with `missing`) and
/// checks that it is a 200.
async fn answered_200(stream: &mut TcpStream, missing: &str) {
    let answer = tokio::time::timeout(HANG, read_answer(stream))
        .await
        .expect(missing);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// Reads one answer's status line and headers (the bodies here are small and come with
/// them).
async fn read_answer(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0; 4096];
    while !out.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.expect("an answer");
        assert!(
            n > 0,
            "closed before an answer: {:?}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn headers_sent_too_slowly_or_not_at_all_close_the_connection() {
    let (addr, _stop, _task) = start(ServerConfig {
        header_timeout: Duration::from_millis(200),
        ..ServerConfig::default()
    })
    .await;
    // Half a request's headers, then nothing (a slowloris client).
    let mut trickling = TcpStream::connect(addr).await.unwrap();
    trickling
        .write_all(b"POST /v1/track HTTP/1.1\r\nhost: stipple\r\n")
        .await
        .unwrap();
    // Nothing at all.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    for stream in [&mut trickling, &mut silent] {
        let read = tokio::time::timeout(HANG, read_to_close(stream)).await;
        assert!(read.is_ok(), "a connection without headers was kept open");
    }
    // A keep-alive connection is served, then closed once idle for the timeout.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(&track_request()).await.unwrap();
    let answer = read_answer(&mut idle).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let read = tokio::time::timeout(HANG, read_to_close(&mut idle)).await;
    assert!(read.is_ok(), "an idle keep-alive connection was kept open");
}

#[tokio::test]
async fn the_header_timeout_counts_from_each_answer_and_never_cuts_off_a_request_being_served() {
    let timeout = Duration::from_millis(300);
    let (harness, store) = gated();
    let gate = store.gate.as_ref().expect("a gate");
    let (addr, _stop, _task) = start_with(
        ServerConfig {
            header_timeout: timeout,
            ..ServerConfig::default()
        },
        harness,
    )
    .await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // Requests every half timeout keep the connection open well past one timeout.
    for _ in 0..5 {
        tokio::time::sleep(timeout / 2).await;
        stream.write_all(&track_request()).await.unwrap();
        gate.entered.notified().await;
        gate.release.notify_one();
        let answer = read_answer(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    // A request held at the store for three timeouts is still answered.
    stream.write_all(&track_request()).await.unwrap();
    gate.entered.notified().await;
    tokio::time::sleep(timeout * 3).await;
    gate.release.notify_one();
    answered_200(&mut stream, "a request being served was cut off").await;
    // Then idle: closed.
    let read = tokio::time::timeout(HANG, read_to_close(&mut stream)).await;
    assert!(read.is_ok(), "an idle keep-alive connection was kept open");
}

#[tokio::test]
async fn a_client_that_stops_sending_after_its_request_still_gets_the_answer() {
    let (harness, store) = gated();
    let gate = store.gate.as_ref().expect("a gate");
    let (addr, _stop, _task) = start_with(ServerConfig::default(), harness).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&track_request()).await.unwrap();
    // Its write side closed (a half-close) while the request waits at the store: the
    // server must not take the end of its input for the client gone.
    stream.shutdown().await.unwrap();
    tokio::time::timeout(HANG, gate.entered.notified())
        .await
        .expect("the request was dropped before it reached the store");
    tokio::time::sleep(Duration::from_millis(200)).await;
    gate.release.notify_one();
    answered_200(&mut stream, "no answer").await;
    // Then the connection closes, its client having nothing more to send.
    let read = tokio::time::timeout(HANG, read_to_close(&mut stream)).await;
    assert!(read.is_ok(), "a half-closed connection was kept open");
}

/// A request refused for its body's size leaves that body unread: the answer says the
/// connection closes, and it does, where a refusal that read its small body keeps it.
#[tokio::test]
async fn a_body_refused_unread_closes_the_connection_and_says_so() {
    let (addr, _stop, _task) = start(ServerConfig::default()).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let body = format!(
        r#"{{"userId":"u1","event":"E","properties":{{"pad":"{}"}}}}"#,
        "x".repeat(40 * 1024)
    );
    let request = format!(
        "POST /v1/track HTTP/1.1\r\nhost: stipple\r\nauthorization: {}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        basic("wk_web:"),
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let answer = tokio::time::timeout(HANG, read_answer(&mut stream))
        .await
        .expect("no answer");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("message_too_large"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{answer}"
    );
    let read = tokio::time::timeout(HANG, read_to_close(&mut stream)).await;
    assert!(read.is_ok(), "the connection stayed open");

    // A wrong key, refused with its small body read: the connection serves on.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let wrong_key = String::from_utf8(track_request())
        .unwrap()
        .replace(&basic("wk_web:"), &basic("nobody:"));
    stream.write_all(wrong_key.as_bytes()).await.unwrap();
    let answer = tokio::time::timeout(HANG, read_answer(&mut stream))
        .await
        .expect("no answer");
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(
        !answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    stream.write_all(&track_request()).await.unwrap();
    answered_200(&mut stream, "no answer on the same connection").await;
}

#[tokio::test]
async fn at_the_connection_limit_a_new_connection_waits_for_one_to_close() {
    let (addr, _stop, _task) = start(ServerConfig {
        max_connections: 1,
        header_timeout: Duration::from_secs(60),
        ..ServerConfig::default()
    })
    .await;
    let mut first = TcpStream::connect(addr).await.unwrap();
    first.write_all(&track_request()).await.unwrap();
    assert!(read_answer(&mut first).await.starts_with("HTTP/1.1 200"));
    // The kernel completes the second connection, but the server does not take it.
    let mut second = TcpStream::connect(addr).await.unwrap();
    second.write_all(&track_request()).await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(300), read_answer(&mut second)).await;
    assert!(early.is_err(), "a connection past the limit was served");
    drop(first);
    answered_200(
        &mut second,
        "the waiting connection was not served once a slot was free",
    )
    .await;
}

#[tokio::test]
async fn stopping_finishes_the_request_in_flight_and_closes_idle_connections() {
    let (harness, store) = gated();
    let gate = store.gate.as_ref().expect("a gate");
    let (addr, stop, task) = start_with(ServerConfig::default(), harness).await;
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(&track_request()).await.unwrap();
    gate.entered.notified().await;
    gate.release.notify_one();
    assert!(read_answer(&mut idle).await.starts_with("HTTP/1.1 200"));
    // A request in flight (at the store) when the stop comes.
    let mut arriving = TcpStream::connect(addr).await.unwrap();
    arriving.write_all(&track_request()).await.unwrap();
    gate.entered.notified().await;
    stop.send(()).unwrap();
    let closed = tokio::time::timeout(HANG, read_to_close(&mut idle)).await;
    assert!(
        closed.is_ok(),
        "an idle connection was kept open after the stop"
    );
    gate.release.notify_one();
    answered_200(&mut arriving, "the request in flight was not answered").await;
    tokio::time::timeout(HANG, task)
        .await
        .expect("serve did not return once its connections closed")
        .expect("the serve task ran to its end")
        .expect("serve started its threads");
    assert!(TcpStream::connect(addr).await.is_err(), "still listening");
}

/// The headers of an answer as a sorted list, without `date` and the CORS headers.
fn headers_but_date_and_cors(answer: &str) -> Vec<String> {
    let mut headers: Vec<String> = answer
        .lines()
        .skip(1)
        .take_while(|line| !line.is_empty())
        .map(str::to_ascii_lowercase)
        .filter(|line| {
            !(line.starts_with("date:")
                || line.starts_with("vary:")
                || line.starts_with("access-control-"))
        })
        .collect();
    headers.sort();
    headers
}

/// A browser's request (with `Origin`) goes through the router and its CORS layer; a
/// server library's goes straight to the handler (`front.rs`). On the wire both answers
/// read the same but for CORS.
#[tokio::test]
async fn a_tracking_api_answer_reads_the_same_straight_or_through_the_router() {
    let (addr, _stop, _task) = start(ServerConfig::default()).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&track_request()).await.unwrap();
    let straight = read_answer(&mut stream).await;
    let mut browser = track_request();
    let at = browser.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
    browser.splice(at..at, b"origin: https://shop.example\r\n".iter().copied());
    stream.write_all(&browser).await.unwrap();
    let routed = read_answer(&mut stream).await;
    assert!(straight.starts_with("HTTP/1.1 200"), "{straight}");
    assert!(
        routed
            .to_ascii_lowercase()
            .contains("access-control-allow-origin"),
        "the browser's request went through CORS: {routed}"
    );
    assert!(
        !straight.to_ascii_lowercase().contains("access-control-"),
        "{straight}"
    );
    assert_eq!(
        headers_but_date_and_cors(&straight),
        headers_but_date_and_cors(&routed)
    );
    assert!(
        headers_but_date_and_cors(&straight).contains(&"content-length: 16".to_owned()),
        "{straight}"
    );
}
