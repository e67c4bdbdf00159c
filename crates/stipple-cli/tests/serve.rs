//! `stipple serve --mock` as a user runs it: events in over HTTP, delivered to the
//! in-process mock, SIGTERM exits cleanly, and the admin commands read the store after.

#![allow(clippy::unwrap_used, reason = "test helpers fail loudly")]
#![allow(
    clippy::disallowed_methods,
    reason = "a blocking test, no tokio runtime here"
)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Service {
    child: Child,
    ingress: String,
    /// The in-process mock Pointillist's URL (`--mock` only).
    mock: Option<String>,
    /// Where probes and metrics are served apart (`ingress.ops_listen` only).
    ops: Option<String>,
}

impl Service {
    fn mock(&self) -> &str {
        self.mock.as_deref().expect("started with --mock")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_with(dir: &Path, extra: &str) -> Service {
    start(dir, extra, None)
}

/// Starts `stipple serve --mock` in `dir`, with `extra` appended to its configuration and,
/// when given, its soft limit on open files lowered to `soft_open_files` first.
fn start(dir: &Path, extra: &str, soft_open_files: Option<u64>) -> Service {
    launch(dir, extra, soft_open_files, true, &[])
}

/// Starts `stipple serve` in `dir` as [`start`] does, with `--mock` when `mock` says so
/// (else `extra` names the Pointillist endpoint and token), and `env` set.
fn launch(
    dir: &Path,
    extra: &str,
    soft_open_files: Option<u64>,
    mock: bool,
    env: &[(&str, &Path)],
) -> Service {
    let config = dir.join("stipple.toml");
    std::fs::write(
        &config,
        format!(
            "[ingress]\nlisten = \"127.0.0.1:0\"\n[[sources]]\nname = \"web\"\nwrite_key = \"wk-web\"\n\
             [store]\nurl = \"sqlite://{}\"\n{extra}",
            dir.join("data/stipple.db").display()
        ),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_stipple");
    let mut command = match soft_open_files {
        None => Command::new(bin),
        Some(limit) => {
            let mut sh = Command::new("sh");
            sh.args([
                "-c",
                &format!("ulimit -S -n {limit} && exec \"$0\" \"$@\""),
                bin,
            ]);
            sh
        }
    };
    command.arg("serve");
    if mock {
        command.arg("--mock");
    }
    let mut child = command
        .arg("--config")
        .arg(&config)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut ingress, mut mock_url, mut ops) = (None, None, None);
    while ingress.is_none() || (mock && mock_url.is_none()) {
        let line = lines.next().expect("stipple prints its addresses").unwrap();
        if let Some(url) = line.strip_prefix("stipple listening on ") {
            ingress = Some(url.to_owned());
        } else if let Some(url) = line.strip_prefix("mock Pointillist listening on ") {
            mock_url = Some(url.to_owned());
        } else if let Some(url) = line.strip_prefix("stipple ops endpoints on ") {
            ops = Some(url.to_owned());
        }
    }
    Service {
        child,
        ingress: ingress.unwrap(),
        mock: mock_url,
        ops,
    }
}

fn terminate(service: &mut Service) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .args(["-TERM", &service.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(exit) = service.child.try_wait().unwrap() {
            return exit;
        }
        assert!(Instant::now() < deadline, "stipple did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What the in-process mock took, once it holds `n` events (or after 20 s).
fn delivered(service: &Service, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let events = loop {
        let events: Vec<serde_json::Value> =
            reqwest::blocking::get(format!("{}/mock/events", service.mock()))
                .unwrap()
                .json()
                .unwrap();
        if events.len() >= n || Instant::now() > deadline {
            break events;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(events.len(), n, "{events:?}");
    events
}

/// A `RUST_LOG` that is no filter is refused, as a bad `log.level` is, before anything
/// starts.
#[test]
fn a_bad_rust_log_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stipple.toml");
    std::fs::write(&file, "[[sources]]\nname = \"web\"\nwrite_key = \"k\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stipple"))
        .args(["serve", "--mock", "--config"])
        .arg(&file)
        .current_dir(dir.path())
        .env("RUST_LOG", "stipple=verbose")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("RUST_LOG \"stipple=verbose\" is not a valid filter"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("stipple-data").exists(),
        "the store was created"
    );
}

#[test]
fn environment_variables_set_what_the_file_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("stipple.toml");
    // STIPPLE_CONFIG names the file (the command line's variable, not a setting).
    let service = launch(
        dir.path(),
        "",
        None,
        true,
        &[
            ("STIPPLE_POINTILLIST__EVENT_SOURCE", Path::new("web-app")),
            ("STIPPLE_POINTILLIST__ACTOR_TYPE", Path::new("visitor")),
            ("STIPPLE_CONFIG", &config),
            // A source only the environment names, and its key.
            ("STIPPLE_SOURCES__IOS__WRITE_KEY", Path::new("wk-ios")),
        ],
    );
    let (status, _) = post(
        &format!("{}/v1/track", service.ingress),
        r#"{"type":"track","event":"Signed Up","userId":"u-1"}"#,
    );
    assert_eq!(status, 200);
    let answer = reqwest::blocking::Client::new()
        .post(format!("{}/v1/track", service.ingress))
        .basic_auth("wk-ios", None::<&str>)
        .body(r#"{"event":"Opened","userId":"u-2"}"#)
        .send()
        .unwrap();
    assert_eq!(answer.status(), 200);
    let events = delivered(&service, 2);
    let signed_up = events
        .iter()
        .find(|e| e["eventType"] == "Signed Up")
        .unwrap();
    assert_eq!(signed_up["eventSource"], "web-app", "{events:?}");
    assert_eq!(
        signed_up["actors"]["visitor"]["userId"], "u-1",
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| e["eventType"] == "Opened"),
        "{events:?}"
    );
}

fn post(url: &str, body: &str) -> (u16, String) {
    let response = reqwest::blocking::Client::new()
        .post(url)
        .basic_auth("wk-web", None::<&str>)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .unwrap();
    (response.status().as_u16(), response.text().unwrap())
}

/// Runs `stipple ARGS --config DIR/stipple.toml`.
fn run_admin(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_stipple"))
        .args(args)
        .arg("--config")
        .arg(dir.join("stipple.toml"))
        .output()
        .unwrap()
}

/// An admin command's standard output; it must succeed.
fn admin(dir: &Path, args: &[&str]) -> String {
    let out = run_admin(dir, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// An admin command's standard error; it must fail.
fn admin_fails(dir: &Path, args: &[&str]) -> String {
    let out = run_admin(dir, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?}: {stderr}");
    stderr
}

#[test]
fn serve_delivers_to_the_mock_stops_on_sigterm_and_keeps_rejected_input() {
    delivers_stops_and_keeps_rejected_input("");
}

/// Each client connection takes a file: with the soft limit at 64 (as low as a shell's
/// 1024 is for a busy ingress), serve would stop accepting after about 50 connections.
/// It raises the soft limit to the hard one at start.
#[test]
fn serve_raises_a_low_open_files_limit() {
    const CONNECTIONS: usize = 300;
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    assert!(
        hard >= 2 * CONNECTIONS as u64,
        "this test needs a hard open-files limit of at least {} (it is {hard})",
        2 * CONNECTIONS
    );
    let dir = tempfile::tempdir().unwrap();
    let service = start(dir.path(), "", Some(64));
    let addr: std::net::SocketAddr = service
        .ingress
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    // Past the limit, connections are queued by the kernel but never accepted, and soon
    // not even queued: give up after a while rather than hang.
    let idle: Vec<std::net::TcpStream> = (0..CONNECTIONS)
        .map(|i| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("connection {i} of {CONNECTIONS}: {e}"))
        })
        .collect();
    let answer = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
        .post(format!("{}/v1/track", service.ingress))
        .basic_auth("wk-web", None::<&str>)
        .header("content-type", "application/json")
        .body(r#"{"type":"track","event":"Past the limit","userId":"u-1"}"#)
        .send();
    let status = answer.map(|a| a.status().as_u16());
    assert!(
        matches!(status, Ok(200)),
        "with {CONNECTIONS} connections open: {status:?}"
    );
    drop(idle);
}

#[test]
fn delivery_on_several_threads_works_alike() {
    delivers_stops_and_keeps_rejected_input("[delivery]\nthreads = 3\n");
}

fn delivers_stops_and_keeps_rejected_input(extra: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut service = start_with(dir.path(), extra);
    let (status, body) = post(
        &format!("{}/v1/track", service.ingress),
        r#"{"type":"track","event":"Order Completed","userId":"u-1","messageId":"m-1","properties":{"total":27.5}}"#,
    );
    assert_eq!((status, body.as_str()), (200, r#"{"success":true}"#));
    let (status, body) = post(
        &format!("{}/v1/batch", service.ingress),
        r#"{"batch":[{"type":"identify","userId":"u-2","messageId":"m-2","traits":{"plan":"pro"}},{"type":"track","userId":"u-3"}]}"#,
    );
    assert_eq!(status, 200);
    assert!(body.contains("missing_event"), "{body}");

    let events = delivered(&service, 2);
    let track = events
        .iter()
        .find(|e| e["labels"]["messageId"] == "m-1")
        .unwrap();
    assert_eq!(track["eventType"], "Order Completed");
    assert_eq!(track["numbers"]["total"], 27.5);
    let identify = events
        .iter()
        .find(|e| e["labels"]["messageId"] == "m-2")
        .unwrap();
    assert_eq!(identify["labels"]["plan"], "pro");

    // The store's group commit shows in /metrics: both appends committed and fsynced.
    let metrics = reqwest::blocking::get(format!("{}/metrics", service.ingress))
        .unwrap()
        .text()
        .unwrap();
    // So do the time each request, commit and fsync took.
    for name in [
        "stipple_store_commits_total",
        "stipple_store_fsyncs_total",
        "stipple_ingress_request_duration_seconds_count",
        "stipple_store_commit_seconds_count",
        "stipple_store_fsync_seconds_count",
    ] {
        let value: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} not in\n{metrics}"));
        assert!(value >= 1, "{name} {value}");
    }
    // The scrape's own connection, at least, is open.
    let open: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("stipple_ingress_connections ")?.parse().ok())
        .unwrap_or_else(|| panic!("stipple_ingress_connections not in\n{metrics}"));
    assert!(open >= 1.0, "stipple_ingress_connections {open}");
    // The answer times have buckets fine enough for a fast disk (the first at 100 µs).
    for name in [
        "stipple_ingress_request_duration_seconds",
        "stipple_store_fsync_seconds",
    ] {
        let bucket = format!("{name}_bucket{{le=\"0.0001\"}}");
        assert!(metrics.contains(&bucket), "{bucket} not in\n{metrics}");
    }
    // What alerts watch is there before the first one happens, at zero, and described.
    for line in [
        "stipple_dead_lettered_total{reason=\"rejected\"} 0",
        "stipple_dead_lettered_total{reason=\"retry_horizon\"} 0",
        "stipple_dead_lettered_total{reason=\"unmappable\"} 0",
        "stipple_delivery_paused 0",
        "stipple_ingress_requests_total{status=\"503\"} 0",
        "stipple_ingress_connection_limit_reached_total 0",
        "# HELP stipple_delivered_total Events Pointillist accepted",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in\n{metrics}"
        );
    }

    // The admin commands work beside the running service (they take no lock).
    let live: serde_json::Value =
        serde_json::from_str(&admin(dir.path(), &["status", "--json"])).unwrap();
    assert_eq!(live["rejected"], 1, "{live}");
    // A second refused item, for `list --limit`.
    let (status, body) = post(
        &format!("{}/v1/batch", service.ingress),
        r#"{"batch":[{"type":"track","userId":"u-4"}]}"#,
    );
    assert_eq!(status, 200);
    assert!(body.contains("missing_event"), "{body}");

    let exit = terminate(&mut service);
    assert!(exit.success(), "{exit:?}");

    let status = admin(dir.path(), &["status", "--json"]);
    let stats: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(stats["queued"], 0);
    assert_eq!(stats["rejected"], 2);
    let rejected = admin(dir.path(), &["rejected", "list", "--json"]);
    let first: serde_json::Value = serde_json::from_str(rejected.lines().next().unwrap()).unwrap();
    assert_eq!(first["code"], "missing_event");
    assert_eq!(first["index"], 1);
    assert!(first["payload"].as_str().unwrap().contains("u-3"));
    // A list cut short by --limit says how many it left out, on standard error.
    let out = run_admin(dir.path(), &["rejected", "list", "--limit", "1"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("1 more rejected input(s), newer than these: raise --limit"),
        "{stderr}"
    );
    let out = run_admin(dir.path(), &["rejected", "list"]);
    assert!(String::from_utf8_lossy(&out.stderr).is_empty());
    assert!(admin(dir.path(), &["dead-letters", "list"]).contains("no dead letters"));
    // Requeueing an id that names no dead letter says so, and fails.
    let stderr = admin_fails(dir.path(), &["dead-letters", "requeue", "424242"]);
    assert!(
        stderr.contains("1 of the ids named no dead letter"),
        "{stderr}"
    );
    // Purges: by age (nothing is a day old), then all; one of the two must be said.
    let purge = |what: &str, how: &[&str]| {
        let mut args = vec![what, "purge"];
        args.extend_from_slice(how);
        admin(dir.path(), &args)
    };
    assert_eq!(
        purge("rejected", &["--older-than", "1d"]),
        "deleted 0 rejected input(s)\n"
    );
    assert_eq!(
        purge("rejected", &["--all"]),
        "deleted 2 rejected input(s)\n"
    );
    assert_eq!(
        purge("dead-letters", &["--all"]),
        "deleted 0 dead letter(s)\n"
    );
    let stats: serde_json::Value =
        serde_json::from_str(&admin(dir.path(), &["status", "--json"])).unwrap();
    assert_eq!(stats["rejected"], 0);
    // The admin commands read only [store]: a sources' variable they do not check.
    let out = Command::new(env!("CARGO_BIN_EXE_stipple"))
        .args(["status", "--config"])
        .arg(dir.path().join("stipple.toml"))
        .env("STIPPLE_SOURCES__WEB__NAME", "not a setting")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stderr = admin_fails(dir.path(), &["rejected", "purge"]);
    assert!(
        stderr.contains("--older-than") && stderr.contains("--all"),
        "{stderr}"
    );
}

/// A certificate authority made for one test: `ca.pem` for clients to trust (through
/// `SSL_CERT_FILE`) and a server configuration with a certificate for `localhost` it
/// signed.
struct TestCa {
    file: std::path::PathBuf,
    server: Arc<rustls::ServerConfig>,
}

impl TestCa {
    fn new(dir: &Path) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "stipple test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let file = dir.join("ca.pem");
        std::fs::write(&file, ca.pem()).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone(), ca.der().clone()], key)
            .unwrap();
        TestCa {
            file,
            server: Arc::new(server),
        }
    }
}

/// A stream a stand-in server reads requests from and writes answers to.
trait Conn: std::io::Read + std::io::Write + Send {}
impl<T: std::io::Read + std::io::Write + Send> Conn for T {}

/// A stand-in HTTP server (an OTLP/HTTP collector, Pointillist): answers 200 to
/// everything and keeps each request's path and body; over TLS with `tls`'s
/// certificate, for `localhost`, when given.
fn recorder(tls: Option<&TestCa>) -> (String, std::sync::mpsc::Receiver<(String, Vec<u8>)>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let url = match tls {
        None => format!("http://127.0.0.1:{port}"),
        Some(_) => format!("https://localhost:{port}"),
    };
    let server = tls.map(|ca| Arc::clone(&ca.server));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let tx = tx.clone();
            let server = server.clone();
            std::thread::spawn(move || {
                let stream: Box<dyn Conn> = match server {
                    None => Box::new(stream),
                    Some(config) => Box::new(rustls::StreamOwned::new(
                        rustls::ServerConnection::new(config).unwrap(),
                        stream,
                    )),
                };
                let mut reader = BufReader::new(stream);
                loop {
                    let mut request_line = String::new();
                    // A client that hangs up, or refuses the certificate, ends here.
                    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut length = 0usize;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).is_err() {
                            return;
                        }
                        if line.trim().is_empty() {
                            break;
                        }
                        if let Some((name, value)) = line.split_once(':') {
                            if name.eq_ignore_ascii_case("content-length") {
                                length = value.trim().parse().unwrap();
                            }
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let path = request_line
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or_default()
                        .to_owned();
                    let _ = tx.send((path, body));
                    let writer = reader.get_mut();
                    if writer
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .and_then(|()| writer.flush())
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (url, rx)
}

#[test]
fn traces_reach_an_otlp_collector_when_one_is_configured() {
    traces_reach_the_collector(false);
}

#[test]
fn traces_reach_an_otlp_collector_over_https() {
    traces_reach_the_collector(true);
}

fn traces_reach_the_collector(https: bool) {
    let dir = tempfile::tempdir().unwrap();
    let ca = https.then(|| TestCa::new(dir.path()));
    let (collector, requests) = recorder(ca.as_ref());
    let extra =
        format!("[telemetry]\notlp_endpoint = \"{collector}\"\nservice_name = \"stipple-test\"\n");
    let env: Vec<(&str, &Path)> = ca
        .iter()
        .map(|ca| ("SSL_CERT_FILE", ca.file.as_path()))
        .collect();
    let mut service = launch(dir.path(), &extra, None, true, &env);
    let (status, _) = post(
        &format!("{}/v1/track", service.ingress),
        r#"{"type":"track","event":"Traced","userId":"u-1","messageId":"m-traced"}"#,
    );
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    while reqwest::blocking::get(format!("{}/mock/events", service.mock()))
        .unwrap()
        .json::<Vec<serde_json::Value>>()
        .unwrap()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the event was not delivered");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Shutting down flushes the spans still buffered.
    assert!(terminate(&mut service).success());
    let exported: Vec<(String, Vec<u8>)> = requests.try_iter().collect();
    assert!(!exported.is_empty(), "no OTLP export arrived");
    let paths: Vec<&str> = exported.iter().map(|(path, _)| path.as_str()).collect();
    assert!(paths.iter().all(|p| *p == "/v1/traces"), "{paths:?}");
    let bodies: Vec<u8> = exported
        .iter()
        .flat_map(|(_, body)| body.iter().copied())
        .collect();
    let contains = |needle: &str| bodies.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(contains("ingress.request"), "no ingress span exported");
    assert!(contains("delivery.send"), "no delivery span exported");
    assert!(
        contains("stipple-test"),
        "the service name is not on the resource"
    );
    assert!(
        contains("m-traced"),
        "the delivery span does not name the messageId"
    );
}

#[test]
fn delivery_over_https_trusts_only_a_known_authority() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path());
    let (pointillist, requests) = recorder(Some(&ca));
    let extra = format!("[pointillist]\napi_token = \"tok\"\nendpoint = \"{pointillist}\"\n");
    let track = |id: &str| {
        format!(r#"{{"type":"track","event":"Over TLS","userId":"u-1","messageId":"{id}"}}"#)
    };

    // The test CA is not trusted: nothing reaches the stand-in.
    let untrusted = dir.path().join("untrusted");
    std::fs::create_dir_all(&untrusted).unwrap();
    let other = TestCa::new(&untrusted);
    let mut service = launch(
        &untrusted,
        &extra,
        None,
        false,
        &[("SSL_CERT_FILE", other.file.as_path())],
    );
    let (status, _) = post(
        &format!("{}/v1/track", service.ingress),
        &track("m-untrusted"),
    );
    assert_eq!(status, 200);
    assert!(
        requests.recv_timeout(Duration::from_secs(3)).is_err(),
        "an event was sent to a server whose certificate no trusted authority signed"
    );
    assert!(terminate(&mut service).success());

    // Trusted (as a CA the system trusts would be): delivered over TLS.
    let mut service = launch(
        dir.path(),
        &extra,
        None,
        false,
        &[("SSL_CERT_FILE", ca.file.as_path())],
    );
    let (status, _) = post(&format!("{}/v1/track", service.ingress), &track("m-tls"));
    assert_eq!(status, 200);
    let (path, body) = requests
        .recv_timeout(Duration::from_secs(20))
        .expect("the event was not delivered over TLS");
    assert_eq!(path, "/event");
    let body = String::from_utf8(body).unwrap();
    assert!(body.contains("m-tls"), "{body}");
    assert!(terminate(&mut service).success());
}

/// A proxy the environment names (`HTTP_PROXY`, as curl reads it) carries delivery: the
/// stand-in, acting as the proxy, gets the request in absolute form for the endpoint.
#[test]
fn delivery_goes_through_the_proxy_the_environment_names() {
    let dir = tempfile::tempdir().unwrap();
    let (proxy, requests) = recorder(None);
    // A host that resolves nowhere: only the proxy reaches it.
    let extra = "[pointillist]\napi_token = \"tok\"\nendpoint = \"http://pointillist.invalid\"\n";
    let mut service = launch(
        dir.path(),
        extra,
        None,
        false,
        &[("HTTP_PROXY", Path::new(&proxy))],
    );
    let (status, _) = post(
        &format!("{}/v1/track", service.ingress),
        r#"{"type":"track","event":"Proxied","userId":"u-1","messageId":"m-proxied"}"#,
    );
    assert_eq!(status, 200);
    let (target, body) = requests
        .recv_timeout(Duration::from_secs(20))
        .expect("the event did not go through the proxy");
    assert_eq!(target, "http://pointillist.invalid/event");
    let body = String::from_utf8(body).unwrap();
    assert!(body.contains("m-proxied"), "{body}");
    assert!(terminate(&mut service).success());
}

/// A request whose client stalls mid-body when SIGTERM comes holds the stop for
/// `ingress.shutdown_grace` at most: it is then cut off unanswered (its client sends it
/// again), the threads that serve connections are stopped with it, and the service
/// still exits 0.
#[test]
fn a_request_stalled_past_the_grace_period_is_cut_off_and_serve_still_exits_cleanly() {
    use std::io::{Read as _, Write as _};
    let dir = tempfile::tempdir().unwrap();
    let mut service = launch(
        dir.path(),
        "",
        None,
        true,
        &[("STIPPLE_INGRESS__SHUTDOWN_GRACE", Path::new("1s"))],
    );
    let addr = service.ingress.strip_prefix("http://").unwrap().to_owned();
    let mut client = std::net::TcpStream::connect(&addr).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let head = |length: usize| {
        format!(
            "POST /v1/track HTTP/1.1\r\nhost: stipple\r\nauthorization: Basic d2std2ViOg==\r\n\
             content-type: application/json\r\ncontent-length: {length}\r\n\r\n"
        )
    };
    // One whole request first, so that the connection is surely being served.
    let body = r#"{"type":"track","event":"A","userId":"u-1"}"#;
    client
        .write_all(format!("{}{body}", head(body.len())).as_bytes())
        .unwrap();
    let mut answer = [0u8; 512];
    let n = client.read(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Then the head of a second and half its body; the rest never comes.
    client
        .write_all(format!("{}{{\"type\":", head(body.len())).as_bytes())
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));

    let status = terminate(&mut service);
    assert!(status.success(), "{status}");
    // Cut off: the connection closed with no answer to the stalled request.
    let mut rest = Vec::new();
    let read = client.read_to_end(&mut rest);
    assert!(
        read.is_ok_and(|n| n == 0) || rest.is_empty(),
        "the stalled request was answered: {}",
        String::from_utf8_lossy(&rest)
    );
}

#[test]
fn a_second_service_on_a_store_in_use_says_it_waits_then_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let _first = start_with(dir.path(), "");
    let second = Command::new(env!("CARGO_BIN_EXE_stipple"))
        .args(["serve", "--mock", "--config"])
        .arg(dir.path().join("stipple.toml"))
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    let waiting = stderr
        .find("held by another stipple service; waiting for it to stop")
        .unwrap_or_else(|| panic!("says it waits: {stderr}"));
    let refused = stderr
        .find("is in use by another stipple service")
        .unwrap_or_else(|| panic!("then refuses: {stderr}"));
    assert!(waiting < refused, "{stderr}");
}

/// Also: a SIGTERM sent as soon as the address is printed stops the service cleanly
/// (its handler was installed before; once in a few runs, it killed the process).
#[test]
fn a_memory_store_is_said_to_lose_what_it_holds_at_exit() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("stipple.toml");
    std::fs::write(
        &config,
        "[ingress]\nlisten = \"127.0.0.1:0\"\n[[sources]]\nname = \"web\"\nwrite_key = \"wk\"\n\
         [store]\nurl = \"memory://\"\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_stipple"))
        .args(["serve", "--mock", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while !lines
        .next()
        .expect("stipple prints its address")
        .unwrap()
        .starts_with("stipple listening on ")
    {}
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("store.url is memory://: what is accepted and not yet delivered is lost"),
        "{stderr}"
    );
}

/// With `ingress.ops_listen`, probes and scrapes have an address of their own: they are
/// answered while the clients' address is at `ingress.max_connections`.
#[test]
fn probes_on_the_ops_address_are_answered_while_clients_hold_every_connection() {
    let dir = tempfile::tempdir().unwrap();
    let service = launch(
        dir.path(),
        "",
        None,
        true,
        &[
            ("STIPPLE_INGRESS__OPS_LISTEN", Path::new("127.0.0.1:0")),
            ("STIPPLE_INGRESS__MAX_CONNECTIONS", Path::new("1")),
        ],
    );
    let ops = service.ops.clone().expect("stipple prints the ops address");
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    // A client takes the one connection there is, and keeps it.
    let _held =
        std::net::TcpStream::connect(service.ingress.trim_start_matches("http://")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = client
            .get(format!("{ops}/metrics"))
            .send()
            .unwrap()
            .text()
            .unwrap();
        if metrics
            .lines()
            .any(|l| l == "stipple_ingress_connections 1")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the connection was never taken:\n{metrics}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        client
            .get(format!("{}/healthz", service.ingress))
            .send()
            .is_err(),
        "the clients' address is at its limit"
    );
    for path in ["/healthz", "/readyz", "/metrics"] {
        let answer = client.get(format!("{ops}{path}")).send().unwrap();
        assert_eq!(answer.status(), 200, "{path}");
    }
    // The Tracking API is not served there.
    let answer = client
        .post(format!("{ops}/v1/track"))
        .basic_auth("wk-web", Some(""))
        .body(r#"{"type":"track","event":"E","userId":"u"}"#)
        .send()
        .unwrap();
    assert_eq!(answer.status(), 404);
}
