//! Segment's official client libraries against `stipple serve`: analytics-python,
//! analytics-node and analytics-next in headless Chromium. Each script (in
//! `tests/e2e/`) makes every kind of call with its own messageIds and prints a JSON
//! report of what the library built and whether it was delivered; the e2e then checks
//! that the mock received exactly those events, mapped as the spec says.
//!
//! The Python venv (under `.xtask/e2e/venv`) and `tests/e2e/node_modules` are installed
//! on first use and kept while their requirement files do not change.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chrono::TimeDelta;
use serde_json::Value;

use super::check::Checks;
use super::expect::{Expected, TimeRule, parse_time};
use super::harness::{Harness, Proc, by_message_id, run_logged, tail};

/// Time limit of `pip install` and `npm ci`.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);

/// Where the client scripts and their package files are.
pub(crate) fn scripts_dir(root: &Path) -> PathBuf {
    root.join("tests").join("e2e")
}

/// The Python interpreter of the cached venv with segment-analytics-python, installing
/// it when missing or when `requirements.txt` changed.
pub(crate) fn python_venv(root: &Path, logs: &Path) -> anyhow::Result<PathBuf> {
    let requirements = scripts_dir(root).join("requirements.txt");
    let wanted = std::fs::read_to_string(&requirements)
        .with_context(|| format!("cannot read {}", requirements.display()))?;
    let venv = root.join(".xtask").join("e2e").join("venv");
    let python = venv.join("bin").join("python");
    let stamp = venv.join("stipple-e2e-requirements.txt");
    if python.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        eprintln!("python venv: cached at {}", venv.display());
        return Ok(python);
    }
    eprintln!(
        "python venv: creating {} and installing {}",
        venv.display(),
        requirements.display()
    );
    if venv.exists() {
        std::fs::remove_dir_all(&venv)
            .with_context(|| format!("cannot remove {}", venv.display()))?;
    }
    std::fs::create_dir_all(venv.parent().context("venv has no parent")?)?;
    let python3 = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let mut command = Command::new(&python3);
    command.args(["-m", "venv"]).arg(&venv);
    run_logged(
        command,
        &format!(
            "could not create a Python venv with `{python3} -m venv` (is Python 3 installed, with the venv module? \
             on Debian: apt-get install -y python3 python3-venv)"
        ),
        Duration::from_secs(120),
        &logs.join("python-venv.log"),
    )?;
    let mut command = Command::new(venv.join("bin").join("pip"));
    command
        .args(["install", "--disable-pip-version-check", "--no-input", "-r"])
        .arg(&requirements)
        .env("PIP_NO_INPUT", "1");
    let what = format!(
        "pip could not install the Python client ({}) from PyPI: is the package registry reachable?",
        wanted
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Err(e) = run_logged(
        command,
        &what,
        INSTALL_TIMEOUT,
        &logs.join("pip-install.log"),
    ) {
        // A half-made venv must not pass for a cached one next time.
        let _ = std::fs::remove_dir_all(&venv);
        return Err(e);
    }
    std::fs::write(&stamp, &wanted)?;
    Ok(python)
}

/// Installs `tests/e2e/node_modules` from `package-lock.json` (`npm ci`) when missing or
/// when the lock file changed.
pub(crate) fn node_modules(root: &Path, logs: &Path) -> anyhow::Result<()> {
    let dir = scripts_dir(root);
    let lock = std::fs::read_to_string(dir.join("package-lock.json"))
        .with_context(|| format!("cannot read {}", dir.join("package-lock.json").display()))?;
    let stamp = dir.join("node_modules").join(".stipple-e2e-lock.json");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(lock.as_str()) {
        eprintln!(
            "node_modules: cached in {}",
            dir.join("node_modules").display()
        );
        return Ok(());
    }
    let node = Command::new("node").arg("--version").output();
    match node {
        Ok(out) if out.status.success() => {}
        _ => bail!(
            "node was not found: the JavaScript clients need Node.js 18 or later with npm (apt-get install -y nodejs npm)"
        ),
    }
    eprintln!("node_modules: npm ci in {}", dir.display());
    let mut command = Command::new("npm");
    command
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&dir)
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1");
    run_logged(
        command,
        "npm could not install @segment/analytics-node, @segment/analytics-next and playwright-core \
         (tests/e2e/package-lock.json) from the npm registry: is it reachable?",
        INSTALL_TIMEOUT,
        &logs.join("npm-ci.log"),
    )?;
    std::fs::write(&stamp, &lock)?;
    Ok(())
}

/// Runs a client script to completion (bounded) and parses the JSON report it prints.
fn run_script(
    h: &Harness,
    name: &str,
    mut command: Command,
    timeout: Duration,
) -> anyhow::Result<Value> {
    command
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost");
    let logs = h.dir.join("logs");
    let mut child = Proc::spawn(name, command, &logs)?;
    let started = Instant::now();
    let status = child.wait_exit(timeout)?;
    let Some(status) = status else {
        // SIGTERM first: the browser driver then closes Chromium itself.
        child.stop(Duration::from_secs(5));
        bail!(
            "the {name} script did not finish within {timeout:?}\n  {}",
            tail(&child.stderr_log, 20)
        );
    };
    let stdout = std::fs::read_to_string(logs.join(format!("{name}.stdout.log")))?;
    if !status.success() {
        bail!(
            "the {name} script failed ({status})\n  {}",
            tail(&child.stderr_log, 20)
        );
    }
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| {
            format!(
                "the {name} script printed no JSON report\n  {}",
                tail(&child.stderr_log, 20)
            )
        })?;
    eprintln!(
        "{name}: script ran in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    serde_json::from_str(line)
        .with_context(|| format!("the {name} script's report is not JSON: {line}"))
}

/// Checks a client's report and what the mock received: every call succeeded, no error
/// was reported, the mock has exactly the reported messageIds, each once, mapped right.
fn verify(
    h: &Harness,
    checks: &mut Checks,
    client: &str,
    report: &Value,
    prefix: &str,
) -> anyhow::Result<()> {
    let calls = report["calls"].as_array().cloned().unwrap_or_default();
    let failed: Vec<String> = calls
        .iter()
        .filter(|c| c["ok"] != true)
        .map(|c| {
            format!(
                "{} {}: {}",
                c["message"]["type"],
                c["message"]["messageId"],
                c.get("error").or(c.get("failed")).unwrap_or(&Value::Null)
            )
        })
        .collect();
    checks.expect(
        format!("{client}: every call reported delivered"),
        !calls.is_empty() && failed.is_empty(),
        if failed.is_empty() {
            format!("{} calls", calls.len())
        } else {
            failed.join("; ")
        },
    );
    let errors = report["errors"].as_array().map_or(0, Vec::len);
    checks.expect(
        format!("{client}: the library reported no error"),
        errors == 0,
        format!("errors: {}", report["errors"]),
    );
    if let Some(blocked) = report.get("blockedRequests") {
        let none = blocked.as_array().is_none_or(Vec::is_empty);
        checks.expect(
            format!("{client}: nothing fetched outside 127.0.0.1"),
            none,
            format!("blocked requests: {blocked}"),
        );
    }

    let mut expected = Vec::new();
    let mut bad_ids = Vec::new();
    for call in &calls {
        let message = &call["message"];
        let id = message["messageId"].as_str().unwrap_or_default();
        if !id.starts_with(prefix) {
            bad_ids.push(id.to_owned());
        }
        let time = match message["timestamp"].as_str().and_then(parse_time) {
            Some(t) => TimeRule::Between(t - TimeDelta::seconds(2), t + TimeDelta::seconds(10)),
            None => TimeRule::Between(
                chrono::Utc::now() - TimeDelta::minutes(5),
                chrono::Utc::now() + TimeDelta::minutes(1),
            ),
        };
        expected.push(Expected::of(message, time));
    }
    checks.expect(
        format!("{client}: the library kept the messageIds it was given"),
        bad_ids.is_empty(),
        if bad_ids.is_empty() {
            format!("all {} start with {prefix}", calls.len())
        } else {
            format!("unexpected {bad_ids:?}")
        },
    );
    let ids: BTreeSet<String> = expected.iter().map(|e| e.message_id.clone()).collect();
    if ids.len() != calls.len() {
        checks.fail(
            format!("{client}: unique messageIds"),
            format!("{} calls, {} distinct messageIds", calls.len(), ids.len()),
        );
    }
    if let Err(e) = h.wait_delivered(&ids, Duration::from_secs(30)) {
        checks.fail(
            format!("{client}: every event reaches the mock"),
            format!("{e:#}"),
        );
    }
    if let Err(e) = h.wait_drained(Duration::from_secs(30)) {
        checks.fail(format!("{client}: the queue drains"), format!("{e:#}"));
    }
    let events = h.mock_events()?;
    let delivered = by_message_id(&events);
    let extra: Vec<&&str> = delivered.keys().filter(|id| !ids.contains(**id)).collect();
    checks.expect(
        format!("{client}: the mock received exactly the client's events"),
        extra.is_empty() && events.len() == ids.len(),
        format!(
            "{} events at the mock for {} messageIds; unexpected: {extra:?}",
            events.len(),
            ids.len()
        ),
    );
    let mut problems = Vec::new();
    for e in &expected {
        match delivered.get(e.message_id.as_str()).map(Vec::as_slice) {
            Some([event]) => {
                if let Err(p) = e.compare(event, true) {
                    problems.push(format!("{p}\n      delivered: {event}"));
                }
            }
            Some(many) => problems.push(format!("{} delivered {} times", e.message_id, many.len())),
            None => problems.push(format!("{} not delivered", e.message_id)),
        }
    }
    checks.expect(
        format!("{client}: each event delivered once, mapped as the spec says"),
        problems.is_empty(),
        if problems.is_empty() {
            format!("{} events", expected.len())
        } else {
            problems.join("\n    ")
        },
    );
    Ok(())
}

/// segment-analytics-python in a venv.
pub(crate) fn python(root: &Path, h: &mut Harness, checks: &mut Checks) -> anyhow::Result<()> {
    h.fresh()?;
    let python = match python_venv(root, &h.dir.join("logs")) {
        Ok(python) => python,
        Err(e) => {
            checks.fail("analytics-python: install", format!("{e:#}"));
            return Ok(());
        }
    };
    checks.pass("analytics-python: installed", python.display().to_string());
    let prefix = format!("e2e-{}-py", h.run_id);
    let mut command = Command::new(python);
    command
        .arg(scripts_dir(root).join("python_client.py"))
        .arg(&h.serve_url)
        .arg(&h.write_key)
        .arg(&prefix);
    let report = run_script(h, "python-client", command, Duration::from_secs(90))?;
    verify(h, checks, "analytics-python", &report, &prefix)
}

/// @segment/analytics-node.
pub(crate) fn node(root: &Path, h: &mut Harness, checks: &mut Checks) -> anyhow::Result<()> {
    h.fresh()?;
    if let Err(e) = node_modules(root, &h.dir.join("logs")) {
        checks.fail("analytics-node: install", format!("{e:#}"));
        return Ok(());
    }
    let prefix = format!("e2e-{}-node", h.run_id);
    let mut command = Command::new("node");
    command
        .arg(scripts_dir(root).join("node_client.mjs"))
        .arg(&h.serve_url)
        .arg(&h.write_key)
        .arg(&prefix)
        .current_dir(scripts_dir(root));
    let report = run_script(h, "node-client", command, Duration::from_secs(90))?;
    verify(h, checks, "analytics-node", &report, &prefix)
}

/// @segment/analytics-next in headless Chromium, driven by playwright-core.
pub(crate) fn browser(
    root: &Path,
    chromium: &Path,
    h: &mut Harness,
    checks: &mut Checks,
) -> anyhow::Result<()> {
    h.fresh()?;
    if !chromium.exists() {
        checks.fail(
            "analytics-next: Chromium",
            format!(
                "no Chromium at {}: install it (apt-get update && apt-get install -y chromium) or give its path \
                 with --chromium",
                chromium.display()
            ),
        );
        return Ok(());
    }
    if let Err(e) = node_modules(root, &h.dir.join("logs")) {
        checks.fail("analytics-next: install", format!("{e:#}"));
        return Ok(());
    }
    let prefix = format!("e2e-{}-web", h.run_id);
    let profile = h.dir.join("chromium-profile");
    let mut command = Command::new("node");
    command
        .arg(scripts_dir(root).join("browser_client.mjs"))
        .arg(&h.serve_url)
        .arg(&h.write_key)
        .arg(&prefix)
        .arg(chromium)
        .arg(&profile)
        .current_dir(scripts_dir(root));
    let report = run_script(h, "browser-client", command, Duration::from_secs(180))?;
    // The library must have used its own endpoints: one short path per call type in the
    // default mode, /v1/b in batching mode, all text/plain (no CORS preflight needed).
    let posts: Vec<(String, String)> = report["ingressRequests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["method"] == "POST")
        .map(|r| {
            let path = r["path"].as_str().unwrap_or_default().to_owned();
            let content_type = r["contentType"].as_str().unwrap_or_default().to_owned();
            (path, content_type)
        })
        .collect();
    let paths: BTreeSet<&str> = posts.iter().map(|(p, _)| p.as_str()).collect();
    let wanted = ["/v1/a", "/v1/b", "/v1/g", "/v1/i", "/v1/p", "/v1/t"];
    let not_text: Vec<&(String, String)> = posts
        .iter()
        .filter(|(_, t)| !t.starts_with("text/plain"))
        .collect();
    checks.expect(
        "analytics-next: posted text/plain to /v1/i, /v1/t, /v1/p, /v1/g, /v1/a and /v1/b",
        wanted.iter().all(|w| paths.contains(w)) && not_text.is_empty(),
        format!(
            "{} POSTs to {paths:?}; not text/plain: {not_text:?}",
            posts.len()
        ),
    );
    verify(h, checks, "analytics-next", &report, &prefix)
}
