//! The processes under test (`stipple mock` and `stipple serve`), their logs, and the
//! HTTP calls that drive and observe them. Every child is killed when its handle drops,
//! so an error or a panic anywhere leaves nothing running; every wait has a bound.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use reqwest::blocking::Client;
use serde_json::{Value, json};

/// How long a child may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Time limit of one HTTP request made by the harness.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Sleeps the current (non-async) thread. The workspace bans `std::thread::sleep`
/// because it blocks tokio workers; the e2e harness has no runtime and must wait.
#[allow(clippy::disallowed_methods)]
pub(crate) fn nap(duration: Duration) {
    std::thread::sleep(duration);
}

/// The state of something being waited for.
#[derive(Debug)]
pub(crate) enum Poll<T> {
    /// It happened, with this result.
    Ready(T),
    /// Not yet; the text says how things stand, for the timeout error.
    Pending(String),
}

/// Polls `probe` every 100 ms until it is ready, failing after `timeout` with what it
/// last said. A probe error counts as "not yet" (a server may be restarting) and is
/// reported if it is the last word.
pub(crate) fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> anyhow::Result<Poll<T>>,
) -> anyhow::Result<T> {
    let started = Instant::now();
    loop {
        let last = match probe() {
            Ok(Poll::Ready(value)) => return Ok(value),
            Ok(Poll::Pending(state)) => state,
            Err(e) => format!("error: {e:#}"),
        };
        if started.elapsed() >= timeout {
            bail!(
                "timed out after {:.0?} waiting for {what} (last state: {last})",
                timeout
            );
        }
        nap(Duration::from_millis(100));
    }
}

/// The last `lines` lines of a log file, for error messages.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    let mut out = all[start..].join("\n    ");
    if out.is_empty() {
        out = "(empty)".into();
    }
    format!("{} (last lines):\n    {out}", path.display())
}

/// Runs `command` to completion with a time limit, its output going to `log`. On
/// failure, the error says `what` could not be done and shows the end of the log.
pub(crate) fn run_logged(
    mut command: Command,
    what: &str,
    timeout: Duration,
    log: &Path,
) -> anyhow::Result<()> {
    let out = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let err = out.try_clone()?;
    let program = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .with_context(|| format!("{what}: cannot run {program}"))?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            if status.success() {
                return Ok(());
            }
            bail!("{what}: {program} failed ({status})\n  {}", tail(log, 15));
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{what}: {program} did not finish within {timeout:?}\n  {}",
                tail(log, 15)
            );
        }
        nap(Duration::from_millis(100));
    }
}

/// A child process; killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub(crate) struct Proc {
    name: String,
    child: Child,
    /// Where its stderr goes.
    pub(crate) stderr_log: PathBuf,
    /// Its stdout, line by line (also copied to a log file).
    lines: Receiver<String>,
}

impl Proc {
    /// Spawns `command` with stdout piped (read line by line) and stderr to a log file
    /// in `logs`, named after `name`.
    pub(crate) fn spawn(name: &str, mut command: Command, logs: &Path) -> anyhow::Result<Proc> {
        let stderr_log = logs.join(format!("{name}.stderr.log"));
        let stdout_log = logs.join(format!("{name}.stdout.log"));
        let stderr = File::create(&stderr_log)
            .with_context(|| format!("cannot create {}", stderr_log.display()))?;
        let mut stdout_copy = File::create(&stdout_log)
            .with_context(|| format!("cannot create {}", stdout_log.display()))?;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .with_context(|| format!("cannot start {name}: {command:?}"))?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(stdout_copy, "{line}");
                let _ = tx.send(line);
            }
        });
        Ok(Proc {
            name: name.to_owned(),
            child,
            stderr_log,
            lines,
        })
    }

    /// Waits for the stdout line starting with `prefix` and returns the rest of it.
    pub(crate) fn wait_line(&mut self, prefix: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return Ok(rest.trim().to_owned());
                    }
                }
                Err(RecvTimeoutError::Timeout) => bail!(
                    "{} did not print {prefix:?} within {timeout:?}\n  {}",
                    self.name,
                    tail(&self.stderr_log, 20)
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.wait_exit(Duration::from_secs(5)).ok().flatten();
                    bail!(
                        "{} exited ({}) before printing {prefix:?}\n  {}",
                        self.name,
                        status.map_or_else(|| "still running".to_owned(), |s| s.to_string()),
                        tail(&self.stderr_log, 20)
                    );
                }
            }
        }
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it still runs.
    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends a signal by name (`TERM`, `KILL`, ...) with kill(1).
    pub(crate) fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .context("cannot run kill(1)")?;
        if !status.success() {
            bail!("kill -{signal} {} failed ({status})", self.pid());
        }
        Ok(())
    }

    /// Waits up to `timeout` for it to exit; `None` if it is still running.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if started.elapsed() >= timeout {
                return Ok(None);
            }
            nap(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited after `grace`.
    pub(crate) fn stop(&mut self, grace: Duration) {
        if self.signal("TERM").is_ok() && matches!(self.wait_exit(grace), Ok(Some(_))) {
            return;
        }
        self.kill();
    }

    /// SIGKILL, then reap.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.is_running() {
            self.kill();
        }
    }
}

/// Removes the caller's `STIPPLE_*` and `RUST_LOG` settings: a run depends on its own
/// configuration only.
fn clean_env(command: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let name = key.to_string_lossy();
        if name.starts_with("STIPPLE_") || name == "RUST_LOG" {
            command.env_remove(&key);
        }
    }
}

/// The running system: the mock Pointillist, `stipple serve` (restartable on the same
/// store), and what is needed to talk to them.
#[derive(Debug)]
pub(crate) struct Harness {
    /// The `stipple` binary.
    bin: PathBuf,
    /// This run's directory (config, store, logs, client outputs).
    pub(crate) dir: PathBuf,
    /// A short random id: every messageId and user id of this run contains it.
    pub(crate) run_id: String,
    /// The write key of the source `web`.
    pub(crate) write_key: String,
    /// `http://127.0.0.1:PORT` of the mock.
    pub(crate) mock_url: String,
    mock: Proc,
    serve: Option<Proc>,
    /// `http://127.0.0.1:PORT` of the running `stipple serve` (the port changes on restart).
    pub(crate) serve_url: String,
    serve_starts: usize,
    config: PathBuf,
    /// An HTTP client for the harness's own calls (no proxy, bounded).
    pub(crate) http: Client,
}

impl Harness {
    /// Starts the mock and `stipple serve` (with a configuration written into `dir`).
    pub(crate) fn start(bin: &Path, dir: &Path) -> anyhow::Result<Harness> {
        let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        let token = format!("e2e-token-{run_id}");
        let write_key = format!("e2e-write-key-{run_id}");
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        std::fs::create_dir_all(dir.join("store"))?;

        let mut command = Command::new(bin);
        command.args(["mock", "--listen", "127.0.0.1:0", "--token", &token]);
        clean_env(&mut command);
        let mut mock = Proc::spawn("mock", command, &logs)?;
        let mock_url = mock.wait_line("mock Pointillist listening on ", START_TIMEOUT)?;
        eprintln!("mock Pointillist at {mock_url} (pid {})", mock.pid());

        let store = dir.join("store").join("stipple.db");
        let config = dir.join("stipple.toml");
        let text = format!(
            r#"# Written by `cargo xtask e2e`.
[pointillist]
api_token = "{token}"
endpoint = "{mock_url}"
timeout = "5s"
concurrency = 32

[ingress]
listen = "127.0.0.1:0"

[[sources]]
name = "web"
write_key = "{write_key}"

[store]
url = "sqlite://{store}"

[delivery]
backoff_min = "100ms"
backoff_max = "1s"
lease_for = "10s"

[log]
level = "info"
"#,
            store = store.display()
        );
        std::fs::write(&config, text)?;
        let http = Client::builder()
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .build()?;
        let mut harness = Harness {
            bin: bin.to_owned(),
            dir: dir.to_owned(),
            run_id,
            write_key,
            mock_url,
            mock,
            serve: None,
            serve_url: String::new(),
            serve_starts: 0,
            config,
            http,
        };
        harness.start_serve()?;
        Ok(harness)
    }

    /// Starts `stipple serve` on the run's configuration and store.
    pub(crate) fn start_serve(&mut self) -> anyhow::Result<()> {
        if let Some(mut old) = self.serve.take() {
            old.kill();
        }
        self.serve_starts += 1;
        let mut command = Command::new(&self.bin);
        command.arg("serve").arg("--config").arg(&self.config);
        clean_env(&mut command);
        let name = format!("serve-{}", self.serve_starts);
        let mut serve = Proc::spawn(&name, command, &self.dir.join("logs"))?;
        self.serve_url = serve.wait_line("stipple listening on ", START_TIMEOUT)?;
        eprintln!(
            "stipple serve at {} (pid {}, start #{})",
            self.serve_url,
            serve.pid(),
            self.serve_starts
        );
        self.serve = Some(serve);
        Ok(())
    }

    /// Starts `stipple serve` again unless it runs; used before each part so that one
    /// part's failure does not sink the next.
    pub(crate) fn ensure_serve(&mut self) -> anyhow::Result<()> {
        let running = self.serve.as_mut().is_some_and(Proc::is_running);
        if !running {
            eprintln!("stipple serve is not running: starting it");
            self.start_serve()?;
        }
        Ok(())
    }

    /// Whether the mock still runs.
    pub(crate) fn mock_running(&mut self) -> bool {
        self.mock.is_running()
    }

    /// `kill -9` the service.
    pub(crate) fn kill_serve(&mut self) -> anyhow::Result<()> {
        let serve = self
            .serve
            .as_mut()
            .context("stipple serve is not running")?;
        serve.signal("KILL")?;
        if serve.wait_exit(Duration::from_secs(10))?.is_none() {
            bail!(
                "stipple serve (pid {}) still runs 10 s after SIGKILL",
                serve.pid()
            );
        }
        self.serve = None;
        Ok(())
    }

    /// SIGTERM the service and wait up to `bound` for it to exit: its status and how long
    /// it took, or an error if it did not exit in time (it is then killed).
    pub(crate) fn terminate_serve(
        &mut self,
        bound: Duration,
    ) -> anyhow::Result<(ExitStatus, Duration, PathBuf)> {
        let mut serve = self.serve.take().context("stipple serve is not running")?;
        let started = Instant::now();
        serve.signal("TERM")?;
        match serve.wait_exit(bound)? {
            Some(status) => Ok((status, started.elapsed(), serve.stderr_log.clone())),
            None => {
                serve.kill();
                bail!(
                    "stipple serve did not exit within {bound:?} of SIGTERM (killed)\n  {}",
                    tail(&serve.stderr_log, 20)
                )
            }
        }
    }

    /// The stderr log of the current `stipple serve`.
    pub(crate) fn serve_log(&self) -> Option<&Path> {
        self.serve.as_ref().map(|s| s.stderr_log.as_path())
    }

    /// `serve_url` + `path`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.serve_url)
    }

    /// A messageId unique to this run: `e2e-<run>-<tag>-<n>`.
    pub(crate) fn id(&self, tag: &str, n: usize) -> String {
        format!("e2e-{}-{tag}-{n}", self.run_id)
    }

    // ----- the mock's control API -----

    /// Every event the mock accepted since its last reset.
    pub(crate) fn mock_events(&self) -> anyhow::Result<Vec<Value>> {
        let answer = self
            .http
            .get(format!("{}/mock/events", self.mock_url))
            .send()?
            .error_for_status()?;
        Ok(answer.json()?)
    }

    /// Forgets the mock's events and counters.
    pub(crate) fn mock_reset(&self) -> anyhow::Result<()> {
        self.http
            .delete(format!("{}/mock/events", self.mock_url))
            .send()?
            .error_for_status()?;
        Ok(())
    }

    /// Replaces the mock's faults (`{}` for none).
    pub(crate) fn set_faults(&self, faults: Value) -> anyhow::Result<()> {
        let answer = self
            .http
            .put(format!("{}/mock/faults", self.mock_url))
            .json(&faults)
            .send()?;
        let status = answer.status();
        if !status.is_success() {
            bail!(
                "PUT /mock/faults {faults} answered {status}: {}",
                answer.text().unwrap_or_default()
            );
        }
        Ok(())
    }

    /// No faults.
    pub(crate) fn clear_faults(&self) -> anyhow::Result<()> {
        self.set_faults(json!({}))
    }

    /// The mock's counters.
    pub(crate) fn mock_stats(&self) -> anyhow::Result<Value> {
        Ok(self
            .http
            .get(format!("{}/mock/stats", self.mock_url))
            .send()?
            .error_for_status()?
            .json()?)
    }

    /// `GET /mock/refusals`: each request a fault refused, `{message_id, status, at_ms}`.
    pub(crate) fn mock_refusals(&self) -> anyhow::Result<Vec<Value>> {
        Ok(self
            .http
            .get(format!("{}/mock/refusals", self.mock_url))
            .send()?
            .error_for_status()?
            .json()?)
    }

    /// One counter of the mock.
    pub(crate) fn mock_stat(&self, name: &str) -> anyhow::Result<u64> {
        self.mock_stats()?[name]
            .as_u64()
            .with_context(|| format!("mock stats have no {name}"))
    }

    // ----- the service's operations endpoints -----

    /// `GET /readyz`: status and body.
    pub(crate) fn readyz(&self) -> anyhow::Result<(u16, Value)> {
        let answer = self.http.get(self.url("/readyz")).send()?;
        let status = answer.status().as_u16();
        let body = answer.json().unwrap_or(Value::Null);
        Ok((status, body))
    }

    /// The value of the metric `name` in `/metrics`, summed over its label sets; `None`
    /// when it is absent.
    pub(crate) fn metric(&self, name: &str) -> anyhow::Result<Option<f64>> {
        let text = self
            .http
            .get(self.url("/metrics"))
            .send()?
            .error_for_status()?
            .text()?;
        Ok(metric_value(&text, name))
    }

    /// Waits until nothing is queued for delivery (`stipple_queued 0`).
    pub(crate) fn wait_drained(&self, timeout: Duration) -> anyhow::Result<()> {
        wait_for(
            "the delivery queue to be empty (stipple_queued 0)",
            timeout,
            || {
                Ok(match self.metric("stipple_queued")? {
                    Some(0.0) => Poll::Ready(()),
                    other => Poll::Pending(format!("stipple_queued = {other:?}")),
                })
            },
        )
    }

    /// Waits until the mock has accepted every messageId of `ids`; returns the mock's
    /// events at that moment.
    pub(crate) fn wait_delivered(
        &self,
        ids: &BTreeSet<String>,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Value>> {
        let what = format!("{} events to reach the mock", ids.len());
        wait_for(&what, timeout, || {
            let events = self.mock_events()?;
            let seen = by_message_id(&events);
            let missing: Vec<&String> = ids
                .iter()
                .filter(|id| !seen.contains_key(id.as_str()))
                .collect();
            if missing.is_empty() {
                Ok(Poll::Ready(events))
            } else {
                let sample: Vec<&&String> = missing.iter().take(5).collect();
                Ok(Poll::Pending(format!(
                    "{} of {} missing, e.g. {sample:?}",
                    missing.len(),
                    ids.len()
                )))
            }
        })
    }

    /// Posts `{"batch": messages}` to `/v1/batch` with Basic auth; the status.
    pub(crate) fn post_batch(&self, messages: &[Value]) -> anyhow::Result<u16> {
        let answer = self
            .http
            .post(self.url("/v1/batch"))
            .basic_auth(&self.write_key, Some(""))
            .json(&json!({ "batch": messages }))
            .send()?;
        Ok(answer.status().as_u16())
    }

    /// Before a part: nothing queued from earlier parts, no faults, an empty mock.
    pub(crate) fn fresh(&mut self) -> anyhow::Result<()> {
        if !self.mock_running() {
            bail!(
                "the mock Pointillist has exited\n  {}",
                tail(&self.mock.stderr_log, 20)
            );
        }
        self.ensure_serve()?;
        self.clear_faults()?;
        // Earlier parts may leave events in retry; they are not this part's business.
        if let Err(e) = self.wait_drained(Duration::from_secs(30)) {
            eprintln!("warning: {e:#}");
        }
        self.mock_reset()
    }
}

/// The value of metric `name` in Prometheus text, summed over its label sets.
pub(crate) fn metric_value(text: &str, name: &str) -> Option<f64> {
    let mut total = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let value = if rest.starts_with('{') {
            rest.rsplit_once('}').map(|(_, v)| v)
        } else if rest.starts_with(' ') {
            Some(rest)
        } else {
            None
        };
        if let Some(v) = value.and_then(|v| v.trim().parse::<f64>().ok()) {
            *total.get_or_insert(0.0) += v;
        }
    }
    total
}

/// The delivered events by their `messageId` label.
pub(crate) fn by_message_id(events: &[Value]) -> HashMap<&str, Vec<&Value>> {
    let mut map: HashMap<&str, Vec<&Value>> = HashMap::new();
    for event in events {
        if let Some(id) = event["labels"]["messageId"].as_str() {
            map.entry(id).or_default().push(event);
        }
    }
    map
}

#[cfg(test)]
mod tests {
    #[test]
    fn metric_values_are_summed_over_label_sets() {
        let text = "# HELP stipple_queued x\nstipple_queued 3\nstipple_queued_total 9\n\
                    stipple_accepted_total{source=\"web\",type=\"track\"} 2\nstipple_accepted_total{type=\"page\"} 5\n";
        assert_eq!(super::metric_value(text, "stipple_queued"), Some(3.0));
        assert_eq!(
            super::metric_value(text, "stipple_accepted_total"),
            Some(7.0)
        );
        assert_eq!(super::metric_value(text, "stipple_dead_letters"), None);
    }
}
