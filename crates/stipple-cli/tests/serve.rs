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
use std::time::{Duration, Instant};

struct Service {
    child: Child,
    ingress: String,
    mock: String,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path) -> Service {
    let config = dir.join("stipple.toml");
    std::fs::write(
        &config,
        format!(
            "[ingress]\nlisten = \"127.0.0.1:0\"\n[[sources]]\nname = \"web\"\nwrite_key = \"wk-web\"\n\
             [store]\nurl = \"sqlite://{}\"\n",
            dir.join("data/stipple.db").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_stipple"))
        .args(["serve", "--mock", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut ingress, mut mock) = (None, None);
    while ingress.is_none() || mock.is_none() {
        let line = lines.next().expect("stipple prints its addresses").unwrap();
        if let Some(url) = line.strip_prefix("stipple listening on ") {
            ingress = Some(url.to_owned());
        } else if let Some(url) = line.strip_prefix("mock Pointillist listening on ") {
            mock = Some(url.to_owned());
        }
    }
    Service {
        child,
        ingress: ingress.unwrap(),
        mock: mock.unwrap(),
    }
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

fn admin(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_stipple"))
        .args(args)
        .arg("--config")
        .arg(dir.join("stipple.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn serve_delivers_to_the_mock_stops_on_sigterm_and_keeps_rejected_input() {
    let dir = tempfile::tempdir().unwrap();
    let mut service = start(dir.path());
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

    let deadline = Instant::now() + Duration::from_secs(20);
    let events = loop {
        let events: Vec<serde_json::Value> =
            reqwest::blocking::get(format!("{}/mock/events", service.mock))
                .unwrap()
                .json()
                .unwrap();
        if events.len() >= 2 || Instant::now() > deadline {
            break events;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(events.len(), 2, "{events:?}");
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

    // The admin commands work beside the running service (they take no lock).
    let live: serde_json::Value =
        serde_json::from_str(&admin(dir.path(), &["status", "--json"])).unwrap();
    assert_eq!(live["rejected"], 1, "{live}");

    let status = Command::new("kill")
        .args(["-TERM", &service.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = service.child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "stipple did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit:?}");

    let status = admin(dir.path(), &["status", "--json"]);
    let stats: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(stats["queued"], 0);
    assert_eq!(stats["rejected"], 1);
    let rejected = admin(dir.path(), &["rejected", "list", "--json"]);
    let first: serde_json::Value = serde_json::from_str(rejected.lines().next().unwrap()).unwrap();
    assert_eq!(first["code"], "missing_event");
    assert_eq!(first["index"], 1);
    assert!(first["payload"].as_str().unwrap().contains("u-3"));
    assert!(admin(dir.path(), &["dead-letters", "list"]).contains("no dead letters"));
}
